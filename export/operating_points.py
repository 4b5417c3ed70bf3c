"""`python -m export.operating_points`: what each expert's exits are worth, written into its edge manifest.

    python -m export.operating_points --exported models/onnx             # every edge manifest
    python -m export.operating_points --exported exported --limit 500    # a quicker, rougher table

For every edge manifest of an export folder: the validation split (the split the training run held
out, by its seed), each image distorted the way the expert was trained (its distortion at a
uniformly drawn level; pristine for the pristine and conventional experts), run through the
exported ONNX segments with the same runners the servers use (`handlers.runtime`), every side
branch and the final exit; the table of `core.operating_points` goes into the manifest as
`operating_points`. Only the manifests change: the ONNX files and their hashes stay as they are.
`python -m export` runs the same step at the end of every export.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from core import experts, operating_points
from core.cli import progress, run_cli
from core.errors import UserInputError
from core.imaging import Preprocessing
from core.manifest import Manifest
from handlers.runtime import CloudExpert, EdgeExpert

POLICY_SEED = 7  # the distortion draws of the tables (a fixed, reproducible set)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--exported", default="exported", help="folder written by python -m export")
    p.add_argument("--data", default="fashion-mnist", help="the data the experts were trained on")
    p.add_argument("--data-root", default=None)
    p.add_argument("--limit", type=int, default=None, help="validation images per expert (default: all)")
    p.add_argument(
        "--split-seed", type=int, default=0, help="the training run's split seed (its checkpoint's)"
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=4, help="onnxruntime threads")
    p.add_argument("--quiet", action="store_true")
    return p


def exit_outputs(
    edge: EdgeExpert, cloud: CloudExpert, x: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) confidences and classes of every exit (side branches, then the final one)."""
    conf, pred = [], []
    for i in range(0, len(x), batch_size):
        result = edge.run_batch(x[i : i + batch_size], 2.0)  # a threshold no branch reaches: all offload
        final_conf, final_pred = cloud.run_batch(result.split)
        conf.append(np.column_stack([result.branch_confidence, final_conf]))
        pred.append(np.column_stack([result.branch_prediction, final_pred]))
    return np.concatenate(conf), np.concatenate(pred)


def validation_set(
    args: argparse.Namespace, manifest: Manifest, split_seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The expert's validation images (its own distortion, every level) as model inputs, and labels."""
    from training.datasets import DistortionPolicy, distorted_image, load_source

    source = load_source(args.data, "val", limit=args.limit, data_root=args.data_root, seed=split_seed)
    preprocessing = Preprocessing.from_dict(manifest.preprocessing)
    policy = DistortionPolicy(types=(manifest.distortion or "pristine",), seed=POLICY_SEED)
    x = np.stack(
        [
            preprocessing.model_input(distorted_image(source, i, preprocessing.size, policy)[0])
            for i in range(len(source))
        ]
    )
    return x, np.array([source.label(i) for i in range(len(source))])


def measure(
    args: argparse.Namespace, folder: Path, registry: experts.Registry, split_seed: int
) -> dict[str, dict]:
    """Expert -> its operating-point entry."""
    out = {}
    for name, ((edge_m, edge_dir), (cloud_m, cloud_dir)) in progress(
        list(registry.pairs().items()), desc="operating points", quiet=args.quiet
    ):
        edge = EdgeExpert(edge_m, edge_dir, threads=args.threads)
        cloud = CloudExpert(cloud_m, cloud_dir, threads=args.threads)
        x, labels = validation_set(args, edge_m, split_seed)
        conf, pred = exit_outputs(edge, cloud, x, args.batch_size)
        out[name] = {
            "data": args.data,
            "split": "val",
            "split_seed": split_seed,
            "distortion": edge_m.distortion or "pristine",
            "policy_seed": POLICY_SEED,
            "samples": int(len(labels)),
            "table": operating_points.table(conf, pred, labels),
        }
    return out


def main(args: argparse.Namespace) -> dict[str, dict]:
    folder = Path(args.exported)
    registry = experts.from_export(folder, verify=True)
    if not registry.edge:
        raise UserInputError(f"no edge manifests in {folder}: run python -m export first")
    if args.batch_size < 1 or args.threads < 1:
        raise UserInputError("--batch-size and --threads must be at least 1")
    points = measure(args, folder, registry, args.split_seed)
    for name, entry in points.items():
        updated = dataclasses.replace(registry.edge[name][0], operating_points=entry)
        updated.validate()
        path = folder / f"{experts.archive_name('edge', name)}.json"
        path.write_text(updated.to_json())
        best = max(entry["table"], key=lambda r: r["accuracy"])
        if not args.quiet:
            print(
                f"{path}: {entry['samples']} images; best accuracy {best['accuracy']:.4f} at threshold "
                f"{best['threshold']}, edge alone {best['accuracy_no_offload']:.4f}"
            )
    return points


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
