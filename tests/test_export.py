"""ONNX export: every segment of every expert, parity, manifests, a broken segment fails."""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from core.experts import standard_experts
from core.manifest import Manifest, ManifestError, check_pair
from export.segments import (
    STACK_TRACE_KEY,
    ExportParityError,
    check_parity,
    export_module,
    ort_session,
    strip_stack_traces,
)
from training.early_exit import EXIT_NAMES

EXPERTS = standard_experts()
SEGMENTS = EXIT_NAMES  # the model definition's, which export writes into the manifests


def test_report_covers_every_segment(exported):
    out, report = exported
    names = {s["segment"] for s in report["segments"]}
    # experts with BN frozen share the conventional model's backbone: one stage set only
    assert sum(n.startswith("backbone/") for n in names) == 4
    for expert in EXPERTS:
        for seg in SEGMENTS:
            assert f"{expert}/{seg}.onnx" in names
    assert "classifier/classifier.onnx" in names
    for s in report["segments"]:
        assert s["max_abs_diff"] < 1e-3 and not s["argmax_mismatches"]


@pytest.mark.parametrize("expert", EXPERTS)
def test_manifests_validate_and_pair(exported, expert):
    out, _ = exported
    edge = Manifest.load(out / f"edge_{expert}.json")
    cloud = Manifest.load(out / f"cloud_{expert}.json")
    check_pair(edge, cloud)
    edge.verify_files(out)
    cloud.verify_files(out)
    assert [e.name for e in edge.exits] == ["branch0", "branch1", "branch2"]
    assert [e.name for e in cloud.exits] == ["final"]
    assert edge.output.shape[0] is None and edge.output.shape[1] == 160
    assert all(e.temperature > 0 for e in (*edge.exits, *cloud.exits))
    assert edge.preprocessing["size"] == 32


@pytest.mark.parametrize("expert", EXPERTS)
@pytest.mark.parametrize("segment", SEGMENTS)
def test_segment_runs_any_batch_without_nan(exported, expert, segment):
    out, _ = exported
    sess = ort_session(out / f"{expert}/{segment}.onnx")
    shape = [d if isinstance(d, int) else 3 for d in sess.get_inputs()[0].shape]
    y = sess.run(None, {sess.get_inputs()[0].name: np.random.rand(*shape).astype(np.float32)})[0]
    assert y.shape == (3, 10) and np.isfinite(y).all()


def test_mismatched_pair_is_refused(exported):
    out, _ = exported
    edge = Manifest.load(out / "edge_gaussian_blur.json")
    cloud = Manifest.load(out / "cloud_gaussian_noise.json")
    with pytest.raises(ManifestError, match="run ids differ"):
        check_pair(edge, cloud)


def test_tampered_file_and_malformed_manifest(exported, tmp_path):
    out, _ = exported
    data = json.loads((out / "edge_pristine.json").read_text())
    bad = dict(data, exits=data["exits"][:1])
    (tmp_path / "m.json").write_text(json.dumps(bad))
    with pytest.raises(ManifestError, match="3 exits"):
        Manifest.load(tmp_path / "m.json")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not readable JSON"):
        Manifest.load(tmp_path / "m.json")
    m = Manifest.load(out / "edge_pristine.json")
    with pytest.raises(ManifestError, match="missing"):
        m.verify_files(tmp_path)
    escaping = dict(data, files={**data["files"], "../../etc/passwd": "0" * 64})
    (tmp_path / "m.json").write_text(json.dumps(escaping))
    with pytest.raises(ManifestError, match="leaves the archive folder"):
        Manifest.load(tmp_path / "m.json")


def test_broken_segment_fails_parity(tmp_path):
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)).eval()
    x = torch.randn(6, 3, 2, 2)
    path = tmp_path / "head.onnx"
    export_module(module, x[:2], path, input_name="x", output_name="logits")
    check_parity(module, path, x, is_logits=True, segment="head")  # the honest export passes
    with torch.no_grad():
        module[1].weight[0, 0] += 0.5  # the PyTorch model moved on: the ONNX file is now stale
    with pytest.raises(ExportParityError, match="head: ONNX differs"):
        check_parity(module, path, x, is_logits=True, segment="head")


class _Scaled(torch.nn.Module):
    """Defined here, so the exporter's stack traces would name this file's absolute path."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x) * 2.0


def test_exported_bytes_name_no_path_of_the_machine(tmp_path, monkeypatch):
    import export.segments as segments

    paths = (Path(__file__).resolve().parents[1], Path(sys.prefix), Path(torch.__file__).parent)
    raw, path = tmp_path / "raw.onnx", tmp_path / "scaled.onnx"
    with monkeypatch.context() as m:  # the exporter as it is: it does write traces with paths
        m.setattr(segments, "strip_stack_traces", lambda model: None)
        export_module(_Scaled().eval(), torch.randn(2, 4), raw, input_name="x", output_name="logits")
    assert str(paths[0]).encode() in raw.read_bytes()
    export_module(_Scaled().eval(), torch.randn(2, 4), path, input_name="x", output_name="logits")
    data = path.read_bytes()
    for where in paths:
        assert str(where).encode() not in data
    keys = {p.key for node in onnx.load(str(path)).graph.node for p in node.metadata_props}
    assert STACK_TRACE_KEY not in keys
    assert "namespace" in keys  # only the traces go: the module names stay for debugging


def test_stack_traces_go_from_subgraphs_and_functions():
    from onnx import TensorProto, helper

    def traced(node):
        helper.set_metadata_props(node, {STACK_TRACE_KEY: "File /somewhere", "namespace": "kept"})
        return node

    branch = helper.make_graph(
        [traced(helper.make_node("Identity", ["x"], ["y"]))],
        "branch",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    cond = traced(helper.make_node("If", ["c"], ["out"], then_branch=branch, else_branch=branch))
    func = helper.make_function(
        "local", "f", ["a"], ["b"], [traced(helper.make_node("Relu", ["a"], ["b"]))], []
    )
    graph = helper.make_graph(
        [cond],
        "main",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, functions=[func])
    strip_stack_traces(model)
    nodes = [model.graph.node[0], *model.graph.node[0].attribute[0].g.node]
    nodes += [*model.graph.node[0].attribute[1].g.node, *model.functions[0].node]
    assert len(nodes) == 4
    for node in nodes:
        assert {p.key: p.value for p in node.metadata_props} == {"namespace": "kept"}


def test_pipeline_matches_pytorch_and_answers_images(
    exported, backbone, experts, tiny_classifier, fake_fashion_root, tmp_path
):
    from core.imaging import encode_image
    from export import pipeline as pipeline_cli
    from tests.conftest import textured_image

    out, _ = exported
    args = pipeline_cli.get_args_parser().parse_args(
        [
            "--exported",
            str(out),
            "--compare-pytorch",
            "--checkpoints",
            str(backbone.parent),
            "--data-root",
            str(fake_fashion_root),
            "--limit",
            "40",
            "--quiet",
            "--json",
            str(tmp_path / "parity.json"),
        ]
    )
    result = pipeline_cli.main(args)
    assert result["n"] == 40 and result["agreement"] == 1.0, result["disagreements"][:3]
    written = json.loads((tmp_path / "parity.json").read_text())
    assert written["p_tar"] == 0.8
    # the result names the exact model files it used, as the manifests record them
    from core.manifest import export_file_hashes

    assert written["artifacts"]["sha256"] == export_file_hashes(out)
    assert set(written["artifacts"]["checkpoints"]) >= {str(backbone), str(tiny_classifier), *experts}

    pipe = pipeline_cli.Pipeline(out)
    images = [textured_image(i, 40) for i in range(5)]
    for p_tar in (0.0001, 1.0):
        answers = pipe.infer(images, p_tar)
        assert len(answers) == 5
        assert all(0 <= a["class"] < 10 and a["expert"] in pipe.edge for a in answers)
    # a threshold nothing can miss: every image exits at the first branch
    assert all(a["exit"] == 0 and not a["offloaded"] for a in pipe.infer(images, 0.0001))
    # a threshold of 1.0 is out of reach of an undertrained 10-class softmax: all offloaded
    assert all(a["offloaded"] for a in pipe.infer(images, 1.0))
    path = tmp_path / "img.png"
    path.write_bytes(encode_image(images[0]))
    one = pipeline_cli.main(
        pipeline_cli.get_args_parser().parse_args(
            ["--exported", str(out), "--images", str(path), "--expert", "gaussian_noise"]
        )
    )
    assert one[0]["expert"] == "gaussian_noise"


def test_archives_carry_the_export_hashes(exported, model_store):
    """A result made over the archives names the same files and hashes as one over the export."""
    from core.manifest import archive_file_hashes, artifacts_entry, export_file_hashes

    assert archive_file_hashes(model_store) == export_file_hashes(exported[0])
    assert artifacts_entry(model_store)["sha256"] == artifacts_entry(exported[0])["sha256"]
