"""Export every segment of the trained system to ONNX and check it against PyTorch.

One file per segment, single-file models (weights inside, `external_data=False`), dynamic batch
axis, explicit input and output names, opset `OPSET`:

    backbone/stage{0..3}.onnx          shared by every expert whose backbone hash matches
    <expert>/branch{0,1,2}.onnx        side-branch heads (edge)
    <expert>/final.onnx                the final exit (cloud)
    classifier/classifier.onnx         the distortion classifier (spectrum in, logits out)

Parity is checked at export time on real validation images: every segment's ONNX output is
compared with PyTorch's; logits may differ by at most `LOGIT_ATOL` (absolute) and no argmax may
differ, or the export fails.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from handlers.runtime import make_session

OPSET = 18
LOGIT_ATOL = 1e-3  # float32 ONNX vs eager: observed differences are ~1e-6
FEATURE_ATOL = 1e-3


class ExportParityError(RuntimeError):
    """An exported segment does not reproduce its PyTorch module."""


def ort_session(path: str | Path, *, threads: int = 1) -> ort.InferenceSession:
    """The serving side's session factory, so parity is checked under the same settings."""
    return make_session(Path(path), threads=threads)


def export_module(
    module: nn.Module, example: torch.Tensor, path: Path, *, input_name: str, output_name: str
) -> None:
    """Export `module` (eval mode) with a dynamic batch axis as one self-contained ONNX file, without
    the exporter's stack traces (`strip_stack_traces`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_shapes=({0: batch},),
            external_data=False,
            opset_version=OPSET,
            verbose=False,
        )
    model = onnx.load(str(path))
    strip_stack_traces(model)
    onnx.save(model, str(path))


# the exporter records, per node, the Python stack that made it: absolute paths of the machine and
# checkout that exported, so the shipped bytes (and every hash recorded against them) would depend
# on where the export ran. The other per-node records (module names, scopes) stay for debugging.
STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"


def strip_stack_traces(model: onnx.ModelProto) -> None:
    """Drop the exporter's per-node stack traces, in place: in the main graph, every subgraph (If,
    Loop, Scan bodies) and every local function the exporter emitted."""

    def nodes(node_list):
        for node in node_list:
            yield node
            for attr in node.attribute:
                for sub in [attr.g, *attr.graphs] if attr.HasField("g") else attr.graphs:
                    yield from nodes(sub.node)

    for node in [*nodes(model.graph.node), *(n for f in model.functions for n in nodes(f.node))]:
        kept = [p for p in node.metadata_props if p.key != STACK_TRACE_KEY]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)


@dataclass
class ParityReport:
    segment: str
    max_abs_diff: float
    argmax_mismatches: int | None
    n: int


def check_parity(
    module: nn.Module, path: Path, inputs: torch.Tensor, *, is_logits: bool, segment: str
) -> tuple[ParityReport, torch.Tensor]:
    """Run `inputs` through PyTorch and onnxruntime; raise ExportParityError on a mismatch.

    Returns the report and PyTorch's output (the next segment's input)."""
    with torch.no_grad():
        expected = module.eval()(inputs)
    session = ort_session(path)
    got = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]
    diff = float(np.abs(got - expected.numpy()).max())
    mismatches = None
    if is_logits:
        mismatches = int((got.argmax(axis=1) != expected.numpy().argmax(axis=1)).sum())
    report = ParityReport(
        segment=segment, max_abs_diff=diff, argmax_mismatches=mismatches, n=int(inputs.shape[0])
    )
    tolerance = LOGIT_ATOL if is_logits else FEATURE_ATOL
    if got.shape != tuple(expected.shape) or diff > tolerance or mismatches:
        raise ExportParityError(
            f"{segment}: ONNX differs from PyTorch (max |diff| {diff:.3g} > "
            f"{tolerance:g} or {mismatches} argmax mismatches of {len(inputs)})"
        )
    return report, expected
