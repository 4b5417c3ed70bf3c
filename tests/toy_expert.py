"""A hand-made "toy" expert with known logits, served like any other: edge_toy.mar and cloud_toy.mar.

Its edge manifest preprocesses an image to 2x2 pixels scaled to [0, 1] (mean 0, std 1), so a 2x2 PNG
(or a 4x4 one of 2x2 blocks: an exact area resize) is the model input itself, pixel / 255. Stages
0-2 and the cloud's stage 3 are identities on the (N, 3, 2, 2) tensor (the split tensor is the
input: 12 floats), and every head is one MatMul of the flattened input with a known matrix:

- side branch k (k = 0, 1, 2): logits (8 (a_k - b_k), 0, -1024 s, -1024 s), where a_k and b_k are
  colour channel k of the top-left and top-right pixels;
- the final exit: (-1024 s, -1024 s, 8 (a_3 - b_3), 0), where a_3 and b_3 are the red and green
  channels of the bottom-left pixel;
- s is the red channel of the bottom-right pixel: at 255 two classes are live (a confidence is at
  least 0.5, exactly 0.5 when a == b), at 0 all four are (a confidence can fall to 0.25).

The scales are powers of two (exact products in float32, so equal pixels give a margin of exactly
0 whatever order a kernel sums in), and every exit has its own temperature. `logits` is this math
in numpy; the tests write out the exit rule on it themselves.

    python -m tests.toy_expert OUT STORE    # the toy export in OUT, its two archives in STORE
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from core.manifest import ExitSpec, Manifest, TensorSpec, check_pair, sha256_file

NAME = "toy"
RUN_ID = "toy-run"
CLASSES = ("a", "b", "c", "d")
TEMPERATURES = (0.5, 2.0, 1.0, 1.5)  # branch0 sharpens, branch1 softens, branch2 as is; the final
SCALE, DEAD = 8.0, 1024.0
SHAPE = (3, 2, 2)  # the model input, the split tensor and what every stage passes on
FEATURES = int(np.prod(SHAPE))


def flat(c: int, i: int, j: int) -> int:
    """Index of channel c, pixel (i, j) in the flattened (3, 2, 2) input."""
    return c * 4 + i * 2 + j


SWITCH = flat(0, 1, 1)  # s: bottom-right red


def weights(k: int) -> np.ndarray:
    """The (12, 4) matrix of exit k (0-2 side branches, 3 the final exit)."""
    w = np.zeros((FEATURES, len(CLASSES)), dtype=np.float32)
    if k < 3:
        live, dead = 0, (2, 3)
        a, b = flat(k, 0, 0), flat(k, 0, 1)
    else:
        live, dead = 2, (0, 1)
        a, b = flat(0, 1, 0), flat(1, 1, 0)
    w[a, live], w[b, live] = SCALE, -SCALE
    for d in dead:
        w[SWITCH, d] = -DEAD
    return w


def model_input(image: np.ndarray) -> np.ndarray:
    """The (3, 2, 2) float32 input of a 2x2 RGB uint8 image: pixel / 255, as the manifest says."""
    assert image.shape == (2, 2, 3) and image.dtype == np.uint8
    return (image.astype(np.float32) * np.float32(1.0 / 255.0)).transpose(2, 0, 1)


def logits(image: np.ndarray) -> np.ndarray:
    """(4, 4) float64 logits of exits 0-3 for a 2x2 RGB uint8 image: the toy model's math."""
    x = model_input(image).reshape(-1).astype(np.float64)
    return np.stack([x @ weights(k).astype(np.float64) for k in range(4)])


def image(margins: tuple[int, int, int, int], two_class: bool) -> np.ndarray:
    """A 2x2 RGB image whose exit k sees a_k - b_k = `margins[k]` pixel levels (|margin| <= 254;
    the pair centred on 128) and the switch s at 255 (`two_class`) or 0."""
    im = np.zeros((2, 2, 3), dtype=np.uint8)
    places = [((0, 0, k), (0, 1, k)) for k in range(3)] + [((1, 0, 0), (1, 0, 1))]
    for d, (a, b) in zip(margins, places, strict=True):
        im[a] = 128 + d // 2
        im[b] = 128 + d // 2 - d
    im[1, 1, :] = 255 if two_class else 0
    return im


def blocks(image: np.ndarray) -> np.ndarray:
    """The same image at 4x4, each pixel a 2x2 block (an area resize to 2x2 gives it back)."""
    return np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)


# -- the ONNX files, manifests and archives ----------------------------------------------------
def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime this project supports
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _identity(path: Path) -> None:
    shape = ["N", *SHAPE]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    _save(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y]), path)


def _head(path: Path, k: int) -> None:
    """(N, 3, 2, 2) -> (N, 4): Flatten, then MatMul with `weights(k)`."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *SHAPE])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", len(CLASSES)])
    w = helper.make_tensor("w", TensorProto.FLOAT, [FEATURES, len(CLASSES)], weights(k).ravel().tolist())
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "w"], ["y"]),
    ]
    _save(helper.make_graph(nodes, f"head{k}", [x], [y], initializer=[w]), path)


def _manifest(folder: Path, role: str, stages: list[str], exits: list[ExitSpec], tensor_in: str) -> Manifest:
    split = TensorSpec("split", (None, *SHAPE))
    m = Manifest(
        role=role,
        name=NAME,
        distortion=None,
        class_names=CLASSES,
        preprocessing={"size": 2, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
        stages=tuple(stages),
        exits=tuple(exits),
        input=split if role == "cloud" else TensorSpec(tensor_in, (None, *SHAPE)),
        output=split if role == "edge" else TensorSpec("logits", (None, len(CLASSES))),
        backbone_hash="toy",
        run_id=RUN_ID,
        files={f: sha256_file(folder / f) for f in (*stages, *(e.file for e in exits))},
        exporter={"command": "tests/toy_expert.py"},
    )
    m.validate()
    return m


def write_export(folder: Path) -> tuple[Manifest, Manifest]:
    """The toy's ONNX files and its edge_toy.json / cloud_toy.json, as `python -m export` lays out."""
    folder.mkdir(parents=True, exist_ok=True)
    sub = folder / NAME
    sub.mkdir(exist_ok=True)
    stages, exits = [], []
    for k in range(3):
        _identity(sub / f"stage{k}.onnx")
        _head(sub / f"branch{k}.onnx", k)
        stages.append(f"{NAME}/stage{k}.onnx")
        exits.append(ExitSpec(k, f"branch{k}", f"{NAME}/branch{k}.onnx", TEMPERATURES[k], 0.8))
    edge = _manifest(folder, "edge", stages, exits, "image")
    _identity(sub / "stage3.onnx")
    _head(sub / "final.onnx", 3)
    final = ExitSpec(3, "final", f"{NAME}/final.onnx", TEMPERATURES[3], 0.8)
    cloud = _manifest(folder, "cloud", [f"{NAME}/stage3.onnx"], [final], "split")
    check_pair(edge, cloud)
    (folder / f"edge_{NAME}.json").write_text(edge.to_json())
    (folder / f"cloud_{NAME}.json").write_text(cloud.to_json())
    return edge, cloud


def build_archives(folder: Path, store: Path) -> list[str]:
    """edge_toy.mar and cloud_toy.mar in `store`, by `python -m export.archive` over the toy export."""
    from export import archive

    write_export(folder)
    args = archive.get_args_parser().parse_args(["--exported", str(folder), "--model-store", str(store)])
    return archive.main(args)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="build edge_toy.mar and cloud_toy.mar")
    p.add_argument("out")
    p.add_argument("store")
    a = p.parse_args()
    build_archives(Path(a.out), Path(a.store))
