"""The in-process reference pipeline: exactly what the live system does, without any server.

spectrum -> distortion classifier -> expert choice -> edge stages with per-sample exits ->
split tensor -> cloud segment -> final-exit rule -> answer, over the exported ONNX files and their
manifests, with the same runners (`handlers.runtime`) the TorchServe handlers use. It is the
correctness reference the live servers are held against and the speed baseline of the serving
benchmarks.

    python -m export.pipeline --exported exported --images photo.jpg --p-tar 0.8
    python -m export.pipeline --exported exported --compare-pytorch --limit 2000 \
        --json docs/results/parity.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from core import experts
from core.cli import progress, run_cli, write_json
from core.errors import UserInputError
from core.exits import decide
from core.imaging import Preprocessing, decode_image
from core.manifest import artifacts_entry
from handlers.runtime import CloudExpert, DistortionClassifierRuntime, EdgeExpert


class Pipeline:
    """Classifier + every expert pair, from an export folder or from a model store's archives."""

    def __init__(self, folder: str | Path, *, threads: int = 1):
        """`folder`: written by `python -m export`, or a model store of .mar archives."""
        folder = Path(folder)
        self._unpacked = None
        if (folder / f"{experts.CLASSIFIER}.json").is_file():
            registry = experts.from_export(folder)
        elif (folder / f"{experts.CLASSIFIER}.mar").is_file():
            from export.archive import unpack_store

            self._unpacked = tempfile.TemporaryDirectory(prefix="pipeline_")
            registry = unpack_store(folder, Path(self._unpacked.name))
        else:
            raise UserInputError(
                f"{folder} holds neither an export ({experts.CLASSIFIER}.json) nor "
                f"archives ({experts.CLASSIFIER}.mar): run python -m export"
            )
        found = registry.manifests()
        # What a result made with this pipeline names as its models (the runners check each hash).
        self.artifacts = {
            "models": str(folder),
            "sha256": dict(
                sorted(
                    (name, digest)
                    for manifest, _ in found.values()
                    for name, digest in manifest.files.items()
                )
            ),
        }
        manifest, where = registry.classifier
        self.classifier = DistortionClassifierRuntime(manifest, where, threads=threads)
        self.edge: dict[str, EdgeExpert] = {}
        self.cloud: dict[str, CloudExpert] = {}
        for name, ((edge_m, edge_dir), (cloud_m, cloud_dir)) in registry.pairs().items():
            self.edge[name] = EdgeExpert(edge_m, edge_dir, threads=threads)
            self.cloud[name] = CloudExpert(cloud_m, cloud_dir, threads=threads)
        self.distortions = self.classifier.manifest.class_names
        missing = [d for d in self.distortions if d not in self.edge]
        if missing:
            raise UserInputError(f"no exported expert for {', '.join(missing)}")

    def infer(self, images: list[np.ndarray], p_tar: float = 0.8, *, expert: str | None = None) -> list[dict]:
        """Answers for RGB uint8 images; `expert` forces one expert instead of routing."""
        probs = self.classifier.probabilities(images)
        routes = (
            [expert] * len(images)
            if expert is not None
            else [self.distortions[k] for k in probs.argmax(axis=1)]
        )
        answers: list[dict] = [{} for _ in images]
        for name in sorted(set(routes)):
            if name not in self.edge:
                raise UserInputError(f"unknown expert {name!r} (known: {', '.join(self.edge)})")
            idx = [i for i, r in enumerate(routes) if r == name]
            edge = self.edge[name]
            x = np.stack([edge.preprocessing.model_input(images[i]) for i in idx])
            result = edge.run_batch(x, p_tar)
            exit_index, prediction, confidence = result.exit_index, result.prediction, result.confidence
            offloaded = set(result.offloaded.tolist())
            if result.offloaded.size:
                cloud_conf, cloud_pred = self.cloud[name].run_batch(result.split)
                off = result.offloaded
                conf = np.column_stack([result.branch_confidence[off], cloud_conf])
                pred = np.column_stack([result.branch_prediction[off], cloud_pred])
                d = decide(conf, pred, p_tar)
                exit_index[off], prediction[off], confidence[off] = d.exit_index, d.prediction, d.confidence
            for j, i in enumerate(idx):
                answers[i] = {
                    "class": int(prediction[j]),
                    "class_name": edge.manifest.class_names[int(prediction[j])],
                    "confidence": float(confidence[j]),
                    "exit": int(exit_index[j]),
                    "offloaded": j in offloaded,
                    "expert": name,
                    "distortion": routes[i] if expert is None else None,
                    "distortion_probabilities": dict(
                        zip(self.distortions, map(float, probs[i]), strict=True)
                    ),
                }
        return answers


def compare_with_pytorch(args: argparse.Namespace, pipeline: Pipeline) -> dict:
    """Agreement (same exit, same class) with the PyTorch early-exit evaluation at one p_tar."""
    import torch

    from training import evaluate
    from training.datasets import DistortionPolicy, distorted_image, load_source
    from training.engine import load_early_exit
    from training.eval_classifier import load_classifier

    folder = Path(args.checkpoints)
    conventional = load_early_exit(folder / "backbone.pt", role="backbone")
    classifier, _ = load_classifier(folder / "classifier.pt")
    classes = classifier.config.classes  # its routes index these, in its output order
    experts = {name: load_early_exit(folder / f"expert_{name}.pt", role="expert") for name in classes}
    source = load_source(
        args.data,
        "test",
        limit=args.limit,
        data_root=args.data_root,
        seed=conventional[1].get("split_seed", 0),
    )
    pre = Preprocessing.from_dict(conventional[1]["preprocessing"])
    size = pre.size
    policy = DistortionPolicy(types=classes, seed=args.seed)
    agree, n, disagreements = 0, 0, []
    batch = 64
    for start in progress(range(0, len(source), batch), desc="parity", quiet=args.quiet):
        idx = range(start, min(start + batch, len(source)))
        images = [distorted_image(source, i, size, policy)[0] for i in idx]
        live = pipeline.infer(images, args.p_tar)
        with torch.no_grad():
            spectra = torch.from_numpy(np.stack([classifier.config.model_input(im) for im in images]))
            routes = classifier(spectra).argmax(dim=1).numpy()
            x = torch.from_numpy(np.stack([pre.model_input(im) for im in images]))
            for j, i in enumerate(idx):
                name = classes[routes[j]]
                model, payload = experts[name]
                logits = [z.numpy() for z in model(x[j : j + 1])]
                conf, pred = evaluate.confidences(logits, payload["temperatures"])
                d = decide(conf, pred, args.p_tar)
                same = (
                    live[j]["exit"] == int(d.exit_index[0])
                    and live[j]["class"] == int(d.prediction[0])
                    and live[j]["expert"] == name
                )
                agree += same
                n += 1
                if not same and len(disagreements) < 50:
                    disagreements.append(
                        {
                            "index": i,
                            "pytorch": {
                                "exit": int(d.exit_index[0]),
                                "class": int(d.prediction[0]),
                                "expert": name,
                            },
                            "onnx": {k: live[j][k] for k in ("exit", "class", "expert")},
                        }
                    )
    used = [
        folder / "backbone.pt",
        folder / "classifier.pt",
        *(folder / f"expert_{name}.pt" for name in classes),
    ]
    return {
        "agreement": agree / max(n, 1),
        "n": n,
        "p_tar": args.p_tar,
        "artifacts": {**pipeline.artifacts, **artifacts_entry(None, used)},
        "disagreements": disagreements,
    }


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--exported",
        default="models/onnx",
        help="folder written by python -m export, or a model store of .mar archives",
    )
    p.add_argument("--images", nargs="*", default=[], help="JPEG/PNG files to answer")
    p.add_argument("--p-tar", type=float, default=0.8)
    p.add_argument("--expert", default=None, help="force this expert instead of routing")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument(
        "--compare-pytorch",
        action="store_true",
        help="agreement with the PyTorch evaluation on the test split",
    )
    p.add_argument(
        "--checkpoints",
        default="models/torch",
        help="folder of the PyTorch checkpoints to compare with (backbone.pt, "
        "classifier.pt and the frozen-BN expert_<distortion>.pt)",
    )
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--json", default=None, help="write the output here")
    p.add_argument("--quiet", action="store_true")
    return p


def main(args: argparse.Namespace) -> dict | list:
    if not 0 < args.p_tar <= 1:
        raise UserInputError("--p-tar must be in (0, 1]")
    pipeline = Pipeline(args.exported, threads=args.threads)
    started = time.time()
    if args.compare_pytorch:
        from core.cli import command_line

        result = compare_with_pytorch(args, pipeline)
        result.update({"command": command_line(), "wall_time_s": round(time.time() - started, 1)})
        print(
            f"agreement {100 * result['agreement']:.2f} % of {result['n']} images at p_tar "
            f"{args.p_tar} ({len(result['disagreements'])} disagreements listed)"
        )
    else:
        if not args.images:
            raise UserInputError("give --images or --compare-pytorch")
        images = []
        for path in args.images:
            try:
                images.append(decode_image(Path(path).read_bytes()))
            except UserInputError as exc:
                raise UserInputError(f"{path}: {exc}") from None
        result = pipeline.infer(images, args.p_tar, expert=args.expert)
        for path, answer in zip(args.images, result, strict=True):
            print(json.dumps({"image": path, **answer}))
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
