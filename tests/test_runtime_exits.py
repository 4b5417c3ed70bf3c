"""The served exit rule in `handlers.runtime`, on hand-made ONNX segments with known logits.

Each stage is an identity and side branch k's head picks row k of the input, so a test writes the
logits every branch sees into the input itself. The expected outcomes are the rule written out
here on those logits (with two live classes a confidence is 1 / (1 + exp(-margin / T))), not core.exits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from core.manifest import ExitSpec, Manifest, TensorSpec, sha256_file
from handlers.runtime import CloudExpert, EdgeExpert

TEMPERATURES = (2.0, 0.5, 1.0)  # side branches: one softens, one sharpens, one leaves as is
CLOUD_TEMPERATURE = 2.0
CLASSES = ("a", "b", "c", "d")
FLAT = (0.0, 0.0, 0.0, 0.0)  # a confidence of exactly 0.25 at any temperature
TIE = (0.0, 0.0, -100.0, -100.0)  # exactly 0.5: exp(-100 / T) vanishes next to 2 in float64


def row(margin: float) -> tuple[float, ...]:
    """Logits of two live classes `margin` apart (class 0 ahead when margin > 0)."""
    return (margin, 0.0, -100.0, -100.0)


def confidence(margin: float, temperature: float) -> float:
    """The rule written out for `row(margin)`: max softmax of (margin, 0) / T."""
    return 1.0 / (1.0 + np.exp(-abs(margin) / temperature))


def save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime this project supports
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def identity(path: Path, shape: list) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    save(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y]), path)


def pick_row(path: Path, k: int) -> None:
    """(N, 3, 4) -> the (N, 4) logits of row k."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    k_const = helper.make_tensor("k", TensorProto.INT64, [], [k])
    node = helper.make_node("Gather", ["x", "k"], ["y"], axis=1)
    save(helper.make_graph([node], f"branch{k}", [x], [y], initializer=[k_const]), path)


def manifest(folder: Path, role: str, stages: list[str], exits: list[ExitSpec], shape: tuple) -> Manifest:
    m = Manifest(
        role=role,
        name="toy",
        distortion=None,
        class_names=CLASSES,
        preprocessing={"size": 2, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
        stages=tuple(stages),
        exits=tuple(exits),
        input=TensorSpec("x", (None, *shape)),
        output=TensorSpec("y", (None, *shape)),
        backbone_hash="toy",
        run_id="toy",
        files={f: sha256_file(folder / f) for f in (*stages, *(e.file for e in exits))},
    )
    m.validate()
    return m


@pytest.fixture(scope="module")
def edge(tmp_path_factory) -> EdgeExpert:
    folder = tmp_path_factory.mktemp("toy_edge")
    stages, exits = [], []
    for k, t in enumerate(TEMPERATURES):
        identity(folder / f"stage{k}.onnx", ["N", 3, 4])
        pick_row(folder / f"branch{k}.onnx", k)
        stages.append(f"stage{k}.onnx")
        exits.append(ExitSpec(k, f"branch{k}", f"branch{k}.onnx", t, 0.8))
    return EdgeExpert(manifest(folder, "edge", stages, exits, (3, 4)), folder)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory) -> CloudExpert:
    folder = tmp_path_factory.mktemp("toy_cloud")
    identity(folder / "stage3.onnx", ["N", 4])
    identity(folder / "final.onnx", ["N", 4])
    final = ExitSpec(3, "final", "final.onnx", CLOUD_TEMPERATURE, 0.8)
    return CloudExpert(manifest(folder, "cloud", ["stage3.onnx"], [final], (4,)), folder)


# (logits of branch0, branch1, branch2), the sample's p_tar, and the exit and class by hand
# (-1: offloaded); the comments give each branch's confidence at its temperature, and at T = 1
SAMPLES = [
    ((TIE, FLAT, FLAT), 0.5, 0, 0),  # branch0 exactly at p_tar answers: the rule is inclusive
    ((row(2), row(-1), FLAT), 0.8, 1, 1),  # 0.731 (0.881), then 0.881 (0.731) answers class 1
    ((row(-1), row(0.3), row(3)), 0.7, 2, 0),  # 0.622 (0.731), 0.646 (0.574), 0.953 answers
    ((FLAT, FLAT, TIE), 0.5, 2, 0),  # two below p_tar, then branch2 exactly at it answers
    ((row(1), row(2), row(4)), 0.99, -1, -1),  # 0.622, 0.982, 0.982: none reaches 0.99
    ((TIE, FLAT, FLAT), 0.5 + 1e-9, -1, -1),  # sample 0's logits, a threshold a hair above 0.5
]


def test_edge_runtime_decides_per_sample_with_temperatures_and_an_inclusive_threshold(edge):
    x = np.array([s[0] for s in SAMPLES], dtype=np.float32)
    result = edge.run_batch(x, np.array([s[1] for s in SAMPLES]))
    assert list(result.exit_index) == [s[2] for s in SAMPLES]
    assert list(result.prediction) == [s[3] for s in SAMPLES]
    np.testing.assert_allclose(
        result.confidence[:4], [0.5, confidence(-1, 0.5), confidence(3, 1.0), 0.5], rtol=1e-6
    )
    assert np.isnan(result.confidence[4:]).all()
    # branches a sample never reached stay unset; those it reached carry their scaled confidence
    assert np.isnan(result.branch_confidence[0, 1:]).all() and (result.branch_prediction[0, 1:] == -1).all()
    np.testing.assert_allclose(
        result.branch_confidence[4], [confidence(1, 2.0), confidence(2, 0.5), confidence(4, 1.0)], rtol=1e-6
    )
    assert list(result.offloaded) == [4, 5]
    assert np.array_equal(result.split, x[4:])


def test_edge_runtime_takes_one_threshold_for_the_batch(edge):
    x = np.array([s[0] for s in SAMPLES[:3]], dtype=np.float32)
    assert list(edge.run_batch(x, 0.5).exit_index) == [0, 0, 0]  # every two-class branch >= 0.5
    assert list(edge.run_batch(x, 0.8).exit_index) == [-1, 1, 2]


def test_cloud_runtime_applies_the_final_temperature(cloud):
    conf, cls = cloud.run_batch(np.array([row(2), row(-1)], np.float32))
    np.testing.assert_allclose(conf, [confidence(2, CLOUD_TEMPERATURE), confidence(1, CLOUD_TEMPERATURE)])
    assert list(cls) == [0, 1]
