"""Archives and the TorchServe handlers, in process (the live servers are tested in test_serving)."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from core import wire
from core.distortions import apply
from core.experts import standard_experts
from core.imaging import encode_image
from core.manifest import Manifest, ManifestError
from export.archive import extract
from export.pipeline import Pipeline
from handlers.classifier_handler import DistortionClassifierHandler
from handlers.cloud_handler import CloudExpertHandler
from handlers.edge_handler import EdgeExpertHandler
from handlers.runtime import EdgeExpert
from handlers.service import MANIFEST_NAME
from tests.conftest import textured_image

ROOT = Path(__file__).resolve().parents[1]

EXPERTS = standard_experts()


class RecordingMetrics:
    """TorchServe's metrics store as the handlers use it: records every emitted line."""

    def __init__(self):
        self.lines: list[tuple[str, str, float, dict]] = []

    def add_counter(self, name, value, idx=None, dimensions=()):
        self.lines.append(("counter", name, value, {d.name: d.value for d in dimensions}))

    def add_time(self, name, value, idx=None, unit="ms", dimensions=()):
        self.lines.append(("time", name, value, {d.name: d.value for d in dimensions}))

    def total(self, name, **dims) -> float:
        return sum(
            v
            for kind, n, v, d in self.lines
            if kind == "counter" and n == name and all(d.get(k) == x for k, x in dims.items())
        )


class FakeContext:
    """The parts of TorchServe's Context the handlers use."""

    def __init__(self, model_dir, headers=None):
        self.system_properties = {"model_dir": str(model_dir)}
        self.model_yaml_config = {"onnxruntime": {"intra_op_threads": 1}}
        self.headers = headers or {}
        self.status, self.response_headers, self.content_types = {}, {}, {}
        self.metrics = RecordingMetrics()

    def get_all_request_header(self, idx):
        return self.headers.get(idx, {})

    def set_response_status(self, code=200, phrase="", idx=0):
        assert "\n" not in phrase and len(phrase) < 60
        self.status[idx] = code

    def set_response_header(self, idx, key, value):
        self.response_headers.setdefault(idx, {})[key] = value

    def set_response_content_type(self, idx, value):
        self.content_types[idx] = value


@pytest.fixture(scope="module")
def unpacked(model_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("unpacked")
    return {mar.stem: extract(mar, root / mar.stem) for mar in model_store.glob("*.mar")}


def started(handler_cls, folder):
    h = handler_cls()
    h.initialize(FakeContext(folder))
    return h


def png(seed, level=0, kind="gaussian_blur"):
    im = textured_image(seed, 40)
    return encode_image(apply(im, kind, level, seed=seed) if level else im)


@pytest.mark.parametrize("expert", EXPERTS)
def test_archives_carry_what_their_handler_needs(model_store, expert):
    for role, handler in (("edge", "edge_handler.py"), ("cloud", "cloud_handler.py")):
        with zipfile.ZipFile(model_store / f"{role}_{expert}.mar") as zf:
            names = set(zf.namelist())
            manifest = Manifest.from_dict(json.loads(zf.read(MANIFEST_NAME)))
            config = yaml.safe_load(zf.read("model-config.yaml"))
        # the settings python -m export.archive was given (conftest builds with its defaults)
        assert config["batchSize"] == 8 and config["maxBatchDelay"] == 1
        assert config["onnxruntime"] == {"intra_op_threads": 1, "providers": ["CPUExecutionProvider"]}
        assert {
            handler,
            MANIFEST_NAME,
            "model-config.yaml",
            "MAR-INF/MANIFEST.json",
            "core/imaging.py",
            "core/wire.py",
            "core/exits.py",
            "handlers/runtime.py",
            "handlers/service.py",
            "handlers/metrics.py",
        } <= names
        assert [e.file for e in manifest.exits] == [f"{expert}/{e.name}.onnx" for e in manifest.exits]
        assert {e.file for e in manifest.exits} <= names
        assert set(manifest.files) <= names and all(s in names for s in manifest.stages)


def test_extract_refuses_paths_that_leave_the_folder(tmp_path):
    bad = tmp_path / "evil.mar"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(Exception, match="leaves the archive"):
        extract(bad, tmp_path / "x")
    assert not (tmp_path / "outside.txt").exists()


def test_serving_side_imports_no_torch():
    """The handlers and the router (with its classifier's archive loader) stay torch-free."""
    code = (
        "import sys; import handlers.edge_handler, handlers.cloud_handler, "
        "handlers.classifier_handler, core.wire, edge_router.__main__, export.archive; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_workers_torch_stand_in_satisfies_torchserves_codec_and_nothing_else():
    """What a TorchServe worker started by edge_router.torchserve imports as torch: enough for the
    worker's response codec (which only asks isinstance(answer, torch.Tensor)), nothing more."""
    from edge_router.torchserve import WORKER_ENV

    code = """
import torch, ts.protocol.otf_message_handler as codec
assert torch.__file__.startswith(WORKER_ENV) and torch.__version__ == "0+stub", torch.__file__
assert not isinstance(object(), torch.Tensor)
reply = codec.create_predict_response([b"bytes", {"k": 1}], {0: "a", 1: "b"}, "ok", 200)
assert b"bytes" in reply and b'"k": 1' in reply
for call in (lambda: torch.zeros(1), lambda: torch.save(1, "x")):
    try:
        call()
    except (AttributeError, RuntimeError) as exc:
        assert "worker_env" in str(exc) or "stand-in" in str(exc), exc
    else:
        raise AssertionError("the stand-in did something")
"""
    env = {**os.environ, "PYTHONPATH": f"{WORKER_ENV}{os.pathsep}{ROOT}"}
    code = f"WORKER_ENV = {str(WORKER_ENV)!r}\n{code}"
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_edge_batch_one_response_per_request_bad_ones_isolated(unpacked):
    h = started(EdgeExpertHandler, unpacked["edge_gaussian_blur"])
    images = [png(i, level=(i % 3) * 2) for i in range(6)]
    data = [
        {"body": images[0]},
        {"body": b"not an image"},
        {"body": images[1]},
        {"body": b""},
        {"body": images[2]},
        {"body": {"json": 1}},
        {"body": images[3]},
    ]
    headers = {
        0: {"X-Exit-Threshold": "0.001"},
        2: {"x-exit-threshold": "1.0"},
        4: {"X-Offload-Compression": "int8", "X-Exit-Threshold": "1"},
        6: {"X-Exit-Threshold": "7"},
    }
    ctx = FakeContext(unpacked["edge_gaussian_blur"], headers)
    out = h.handle(data, ctx)
    assert len(out) == len(data)
    assert {i: ctx.status[i] for i in ctx.status} == {1: 400, 3: 400, 5: 415, 6: 400}
    for i in (1, 3, 5, 6):
        assert "\n" not in out[i] and json.loads(out[i])["error"]
        assert ctx.content_types[i] == "application/json"
    # threshold 1.0 can never be met by a branch: the split tensor comes back in the wire format
    offloaded_bytes = 0
    for i, dtype in ((2, "FP32"), (4, "INT8")):
        assert ctx.content_types[i] == wire.CONTENT_TYPE
        msg = wire.decode(out[i], ctx.response_headers[i][wire.HEADER_LENGTH])
        assert msg.datatype == dtype and msg.name == "stage2" and msg.parameters["exited"] is False
        assert len(msg.parameters["branches"]) == 3
        offloaded_bytes += len(out[i]) - int(ctx.response_headers[i][wire.HEADER_LENGTH])
    # both paths happened in this one batch (0: every branch is confident at 0.001; 2 and 4
    # offloaded), and the metrics say so once the buffer is flushed
    assert json.loads(out[0])["exit"] == 0
    h.metrics.flush(ctx.metrics, force=True)
    m = ctx.metrics
    assert m.total("Offloads") == 2 and m.total("OffloadBytes") == offloaded_bytes
    assert m.total("ExitsByBranch") == 1
    assert {s: m.total("RequestErrors", Status=s) for s in ("400", "415")} == {"400": 3, "415": 1}
    assert any(kind == "time" and n == "HandlerTime" and v > 0 for kind, n, v, _ in m.lines)


def test_edge_handler_matches_runtime_per_sample(unpacked):
    folder = unpacked["edge_pristine"]
    h = started(EdgeExpertHandler, folder)
    runtime = EdgeExpert(Manifest.load(folder / MANIFEST_NAME), folder)
    images = [png(i, level=i % 4) for i in range(8)]
    ctx = FakeContext(folder, {i: {"X-Exit-Threshold": "0.35"} for i in range(8)})
    out = h.handle([{"data": b} for b in images], ctx)
    from core.imaging import decode_image

    x = np.stack([runtime.preprocessing.model_input(decode_image(b)) for b in images])
    ref = runtime.run_batch(x, 0.35)
    for j, body in enumerate(out):
        if ref.exit_index[j] >= 0:
            answer = json.loads(body)
            assert (answer["exit"], answer["class"]) == (ref.exit_index[j], ref.prediction[j])
        else:
            msg = wire.decode(body, ctx.response_headers[j][wire.HEADER_LENGTH])
            row = list(ref.offloaded).index(j)
            assert np.array_equal(msg.array[0], ref.split[row])


def test_cloud_handler_answers_split_tensors_and_refuses_wrong_contracts(unpacked):
    folder = unpacked["cloud_gaussian_noise"]
    h = started(CloudExpertHandler, folder)
    shape = Manifest.load(folder / MANIFEST_NAME).input.shape[1:]
    good, n = wire.encode(
        np.random.default_rng(0).normal(size=(3, *shape)), name="stage2", compression="fp16"
    )
    wrong, m = wire.encode(np.zeros((1, shape[0] + 1, *shape[1:])), name="stage2")
    ctx = FakeContext(folder, {0: {wire.HEADER_LENGTH: str(n)}, 1: {wire.HEADER_LENGTH: str(m)}, 2: {}})
    out = h.handle([{"body": good}, {"body": wrong}, {"body": good}], ctx)
    assert len(json.loads(out[0])["predictions"]) == 3
    assert ctx.status == {1: 400, 2: 400}
    assert "expected tensor stage2" in json.loads(out[1])["error"]
    assert "Inference-Header-Content-Length" in json.loads(out[2])["error"]


def test_classifier_handler_and_wrong_role_refused(unpacked):
    h = started(DistortionClassifierHandler, unpacked["distortion_classifier"])
    out = h.handle([{"body": png(1)}, {"body": png(2, 20, "gaussian_noise")}], FakeContext("."))
    for body in out:
        probs = json.loads(body)["probabilities"]
        assert set(probs) == {"pristine", "gaussian_blur", "gaussian_noise", "motion_blur"}
        assert abs(sum(probs.values()) - 1) < 1e-5
    with pytest.raises(RuntimeError, match="edge manifest"):
        started(CloudExpertHandler, unpacked["edge_pristine"])


def test_pipeline_from_archives_equals_pipeline_from_export(model_store, exported):
    images = [textured_image(i, 40) for i in range(6)]
    a = Pipeline(model_store).infer(images, 0.4)
    b = Pipeline(exported[0]).infer(images, 0.4)
    assert a == b


@pytest.mark.parametrize("legacy", [False, True])
def test_classifier_runtime_builds_the_input_its_manifest_names(exported, tiny_classifier, tmp_path, legacy):
    """The exported classifier sees the four default spectra (luma, chroma, luma_native,
    anisotropy); a manifest from before the chroma spectrum (no `spectra`, a 1-channel model) is
    still served with the luma spectrum alone."""
    import torch

    from core.manifest import sha256_file
    from export.segments import export_module
    from handlers.runtime import DistortionClassifierRuntime
    from training.classifier import ClassifierConfig, DistortionClassifier
    from training.eval_classifier import load_classifier

    folder = exported[0]
    manifest = Manifest.load(folder / "distortion_classifier.json")
    four = ("luma", "chroma", "luma_native", "anisotropy")
    assert manifest.preprocessing["spectra"] == list(four) and manifest.input.shape[1] == 4
    model, _ = load_classifier(tiny_classifier)
    if legacy:  # the same export, as the luma-only classifier of an earlier release would have it
        torch.manual_seed(0)
        model = DistortionClassifier(ClassifierConfig(**{**vars(model.config), "spectra": ("luma",)}))
        size, rel, folder = model.config.input_size, manifest.stages[0], tmp_path
        example = torch.rand(2, 1, size, size)
        export_module(model.eval(), example, folder / rel, input_name="spectrum", output_name="logits")
        d = json.loads(manifest.to_json())
        del d["preprocessing"]["spectra"]
        d.update(files={rel: sha256_file(folder / rel)})
        d["input"]["shape"] = [None, 1, size, size]
        manifest = Manifest.from_dict(d)
    if legacy:  # a manifest that names more spectra than the network takes is refused at load
        d["preprocessing"]["spectra"], d["input"]["shape"][1] = ["luma", "chroma"], 2
        with pytest.raises(ManifestError, match="takes 1 input channels"):
            DistortionClassifierRuntime(Manifest.from_dict(d), folder)
    runtime = DistortionClassifierRuntime(manifest, folder)
    assert runtime.spectra == model.config.spectra == (("luma",) if legacy else four)
    images = [textured_image(i, 50) for i in range(3)]
    x = torch.from_numpy(np.stack([model.config.model_input(im) for im in images]))
    with torch.no_grad():
        expected = torch.softmax(model.eval()(x), dim=1).numpy()
    np.testing.assert_allclose(runtime.probabilities(images), expected, atol=1e-5)
