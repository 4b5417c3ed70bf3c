"""`handlers.runtime` where its mutants showed it unpinned (docs/results/mutation.md): the session
options, the constructors' checks, the edge loop's ends, and the distortion classifier's runtime
(one network per body format, JPEG quality offsets) on hand-made ONNX networks whose logits this
test computes itself from `core.spectrum.classifier_input`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from core.imaging import ImageWire, Preprocessing
from core.manifest import ExitSpec, Manifest, ManifestError, TensorSpec, sha256_file
from core.spectrum import classifier_input
from handlers.runtime import CloudExpert, DistortionClassifierRuntime, EdgeExpert, make_session
from tests.conftest import textured_image
from tests.test_runtime_exits import FLAT, TIE, identity, manifest, pick_row, row, save

# -- sessions and the experts' constructors ------------------------------------------------------


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Manifest, Manifest]:
    """(folder, edge manifest, cloud manifest) of the identity/pick-row toy of test_runtime_exits."""
    folder = tmp_path_factory.mktemp("toy_mutation")
    stages, exits = [], []
    for k in range(3):
        identity(folder / f"stage{k}.onnx", ["N", 3, 4])
        pick_row(folder / f"branch{k}.onnx", k)
        stages.append(f"stage{k}.onnx")
        exits.append(ExitSpec(k, f"branch{k}", f"branch{k}.onnx", 1.0, 0.8))
    edge = manifest(folder, "edge", stages, exits, (3, 4))
    identity(folder / "stage3.onnx", ["N", 4])
    identity(folder / "final.onnx", ["N", 4])
    cloud = manifest(folder, "cloud", ["stage3.onnx"], [ExitSpec(3, "final", "final.onnx", 1.0, 0.8)], (4,))
    return folder, edge, cloud


def options_of(session) -> tuple[int, int, int]:
    o = session.get_session_options()
    return o.intra_op_num_threads, o.inter_op_num_threads, o.log_severity_level


def test_sessions_state_their_threads_and_providers(toy):
    folder, _, _ = toy
    session = make_session(folder / "stage0.onnx")
    assert options_of(session) == (1, 1, 3) and session.get_providers() == ["CPUExecutionProvider"]
    assert options_of(make_session(folder / "stage0.onnx", threads=3)) == (3, 1, 3)


def test_the_experts_pass_their_threads_on(toy):
    folder, edge_m, cloud_m = toy
    for expert in (EdgeExpert(edge_m, folder), CloudExpert(cloud_m, folder)):
        assert {options_of(s)[0] for s in (*expert.stages, *expert.heads)} == {1}
    for expert in (EdgeExpert(edge_m, folder, threads=2), CloudExpert(cloud_m, folder, threads=2)):
        assert {options_of(s)[0] for s in (*expert.stages, *expert.heads)} == {2}


def test_the_edge_expert_keeps_its_manifest_and_preprocessing(toy):
    folder, edge_m, _ = toy
    edge = EdgeExpert(edge_m, folder)
    assert edge.manifest is edge_m
    assert edge.preprocessing == Preprocessing.from_dict(edge_m.preprocessing)


def test_a_manifest_of_another_role_is_refused_with_its_reason(toy):
    folder, edge_m, cloud_m = toy
    with pytest.raises(ManifestError) as info:
        EdgeExpert(cloud_m, folder)
    assert str(info.value) == "toy: a cloud manifest, not edge"


def test_files_are_verified_unless_told_otherwise(toy):
    folder, edge_m, _ = toy
    lying = replace(edge_m, files={**edge_m.files, "stage0.onnx": "0" * 64})
    with pytest.raises(ManifestError):
        EdgeExpert(lying, folder)
    assert EdgeExpert(lying, folder, verify=False).manifest is lying


def test_an_edge_manifest_with_a_stage_more_than_its_branches_fails_to_run(toy):
    folder, edge_m, _ = toy
    identity(folder / "stage_extra.onnx", ["N", 3, 4])
    extra = replace(
        edge_m,
        stages=(*edge_m.stages, "stage_extra.onnx"),
        files={**edge_m.files, "stage_extra.onnx": sha256_file(folder / "stage_extra.onnx")},
    )
    with pytest.raises(ValueError):
        EdgeExpert(extra, folder).run_batch(np.array([(FLAT, FLAT, FLAT)], np.float32), 0.9)


def test_a_lone_sample_goes_on_until_a_branch_answers(toy):
    folder, edge_m, _ = toy
    edge = EdgeExpert(edge_m, folder)
    result = edge.run_batch(np.array([(FLAT, FLAT, row(4))], np.float32), 0.9)
    assert list(result.exit_index) == [2] and result.split is None and result.offloaded.size == 0
    result = edge.run_batch(np.array([(TIE, FLAT, FLAT), (FLAT, FLAT, row(4))], np.float32), 0.5)
    assert list(result.exit_index) == [0, 2] and result.split is None


# -- the distortion classifier ---------------------------------------------------------------------
CLASSES = ("pristine", "gaussian_blur", "gaussian_noise")
SPECTRA = ("luma", "chroma")
SPECTRUM_SIZE, IMAGE_SIZE = 8, 16
WEIGHTS = {  # per network: (2 x 3 weights on the mean of each spectrum, 3 biases)
    "net_any.onnx": (np.float32([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]]), np.float32([0.1, 0.0, -0.1])),
    "net_jpeg.onnx": (np.float32([[-1.0, 2.0, 1.0], [1.5, 0.0, 0.5]]), np.float32([0.0, 0.3, 0.0])),
}
BAND = {"below": 85, "offsets": [0.0, -0.5, 0.75]}  # the JPEG network's low-quality offsets


def linear_network(path: Path, channels: int, weights: np.ndarray, bias: np.ndarray) -> None:
    """(N, C, S, S) -> (N, 3): the mean of each channel, times `weights`, plus `bias`."""
    x = helper.make_tensor_value_info(
        "spectrum", TensorProto.FLOAT, ["N", channels, SPECTRUM_SIZE, SPECTRUM_SIZE]
    )
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])
    w = helper.make_tensor("w", TensorProto.FLOAT, list(weights.shape), weights.ravel().tolist())
    b = helper.make_tensor("b", TensorProto.FLOAT, [3], bias.tolist())
    nodes = [
        helper.make_node("ReduceMean", ["spectrum"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["mw"]),
        helper.make_node("Add", ["mw", "b"], ["logits"]),
    ]
    save(helper.make_graph(nodes, "classifier", [x], [y], initializer=[w, b]), path)


def classifier_manifest(
    folder: Path, stages: tuple[str, ...], formats: list[str], **preprocessing
) -> Manifest:
    m = Manifest(
        role="classifier",
        name="distortion_classifier",
        distortion=None,
        class_names=CLASSES,
        preprocessing={
            "size": IMAGE_SIZE,
            "spectrum_size": SPECTRUM_SIZE,
            "spectra": list(SPECTRA),
            "formats": formats,
            "mean": [0.0, 0.0, 0.0],
            "std": [1.0, 1.0, 1.0],
            **preprocessing,
        },
        stages=stages,
        exits=(),
        input=TensorSpec("spectrum", (None, len(SPECTRA), SPECTRUM_SIZE, SPECTRUM_SIZE)),
        output=TensorSpec("logits", (None, 3)),
        backbone_hash="",
        run_id="toy",
        files={f: sha256_file(folder / f) for f in stages},
    )
    m.validate()
    return m


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("toy_classifier")
    for name, (w, b) in WEIGHTS.items():
        linear_network(folder / name, len(SPECTRA), w, b)
    return folder


@pytest.fixture(scope="module")
def runtime(classifier_folder) -> DistortionClassifierRuntime:
    m = classifier_manifest(
        classifier_folder, ("net_any.onnx", "net_jpeg.onnx"), ["any", "jpeg"], quality_offsets={"jpeg": BAND}
    )
    return DistortionClassifierRuntime(m, classifier_folder)


def expected_probabilities(image: np.ndarray, network: str, offsets=(0.0, 0.0, 0.0)) -> np.ndarray:
    """The classifier written out: spectrum means, the network's affine map, offsets, softmax."""
    x = classifier_input(image, SPECTRUM_SIZE, image_size=IMAGE_SIZE, spectra=SPECTRA).astype(np.float64)
    w, b = WEIGHTS[network]
    logits = x.mean(axis=(1, 2)) @ w.astype(np.float64) + b + np.asarray(offsets)
    e = np.exp(logits - logits.max())
    return e / e.sum()


IMAGES = [textured_image(seed, size) for seed, size in ((1, 24), (2, 40), (3, 16), (4, 32))]


def test_the_classifier_answers_each_body_with_its_formats_network(runtime):
    wires = [None, ImageWire("jpeg", 50, None), ImageWire("png"), ImageWire("jpeg", 90, None)]
    got = runtime.probabilities(IMAGES, wires)
    expected = [
        expected_probabilities(IMAGES[0], "net_any.onnx"),
        expected_probabilities(IMAGES[1], "net_jpeg.onnx", BAND["offsets"]),  # below quality 85
        expected_probabilities(IMAGES[2], "net_any.onnx"),  # png has no network of its own
        expected_probabilities(IMAGES[3], "net_jpeg.onnx"),  # at or above 85: no offsets
    ]
    np.testing.assert_allclose(got, np.array(expected), rtol=1e-5, atol=1e-6)
    assert got.shape == (4, 3)


def test_without_wires_every_image_goes_to_the_first_network(runtime):
    np.testing.assert_allclose(
        runtime.probabilities(IMAGES[:2]),
        np.array([expected_probabilities(im, "net_any.onnx") for im in IMAGES[:2]]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_the_classifiers_answer_names_the_most_likely_distortion(runtime):
    wires = [None, ImageWire("jpeg", 50, None)]
    answers = runtime.distortions(IMAGES[:2], wires)
    probabilities = runtime.probabilities(IMAGES[:2], wires)
    for (name, by_class), p in zip(answers, probabilities, strict=True):
        assert name == CLASSES[int(p.argmax())]
        assert list(by_class) == list(CLASSES)
        assert all(type(v) is float for v in by_class.values())
        np.testing.assert_allclose(list(by_class.values()), p)
    assert (
        runtime.distortions(IMAGES[:1])[0][0] == CLASSES[int(runtime.probabilities(IMAGES[:1])[0].argmax())]
    )


def test_the_classifier_runtime_reads_its_manifest(runtime):
    assert (runtime.size, runtime.image_size, runtime.spectra) == (SPECTRUM_SIZE, IMAGE_SIZE, SPECTRA)
    assert len(runtime.sessions) == 2 and runtime.manifest.name == "distortion_classifier"


def test_the_classifier_runtime_passes_its_threads_on(classifier_folder):
    m = classifier_manifest(classifier_folder, ("net_any.onnx",), ["any"])
    for kwargs, threads in (({}, 1), ({"threads": 2}, 2)):
        runtime = DistortionClassifierRuntime(m, classifier_folder, **kwargs)
        assert {options_of(s)[0] for s in runtime.sessions} == {threads}


def test_the_classifier_runtime_refuses_other_manifests(classifier_folder, toy):
    folder, edge_m, _ = toy
    with pytest.raises(ManifestError) as info:
        DistortionClassifierRuntime(edge_m, folder)
    assert str(info.value) == "toy: not a classifier manifest"
    m = classifier_manifest(classifier_folder, ("net_any.onnx",), ["any"])
    lying = replace(m, files={"net_any.onnx": "0" * 64})
    with pytest.raises(ManifestError):
        DistortionClassifierRuntime(lying, classifier_folder)
    assert DistortionClassifierRuntime(lying, classifier_folder, verify=False).manifest is lying


def test_a_network_of_the_wrong_width_is_refused_at_load(classifier_folder):
    linear_network(
        classifier_folder / "net_three.onnx", 3, np.ones((3, 3), np.float32), np.zeros(3, np.float32)
    )
    m = classifier_manifest(classifier_folder, ("net_any.onnx", "net_three.onnx"), ["any", "jpeg"])
    with pytest.raises(ManifestError) as info:
        DistortionClassifierRuntime(m, classifier_folder)
    assert str(info.value) == (
        "distortion_classifier: net_three.onnx takes 3 input channels, the manifest names 2 spectra "
        "(luma, chroma)"
    )
