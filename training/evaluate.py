"""The paper's accuracy experiment: conventional early exit vs expert branches, per distortion.

For every distortion type and level (level 0 = pristine) the test split is distorted on the fly
(seeded) and sent on each image wire of `--wires` (`png`; `jpeg:90`, as a camera encodes it), every
model's four exits are computed once, and the exit rule of `core.exits` is replayed for each p_tar.
Models:

- `conventional`: the pristine-trained early-exit network for every input;
- `expert_oracle`: the expert of the image's true distortion type;
- `expert_routed`: the expert the distortion classifier picks from the image's spectrum (the
  live system's behaviour: a JPEG wire is routed by the classifier network for JPEG bodies when
  there is one);
- `expert_fallback`: on the cells of a type with a fallback (`core.distortions`: motion blur's is
  Gaussian blur), the fallback type's expert: what the edge answers while the type's own expert is
  not registered;
- with `--adapt-bn` experts (own BN statistics) the same rows again, suffixed `_adapt_bn`.

Experts that share the conventional model's backbone (BN frozen) are evaluated from one pass of
the shared stages. Writes `accuracy.csv` (one row per model, wire, distortion, level, p_tar), `accuracy.md`
(the seed's table form, plus calibration) and plots into `--out`.

    python -m training.evaluate --backbone checkpoints/backbone.pt \
        --experts checkpoints/expert_*.pt --classifier checkpoints/classifier.pt --out docs/results
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from core import distortions
from core.cli import command_line, parse_wires, progress, run_cli, write_json
from core.errors import UserInputError
from core.exits import confidence_and_class, decide
from core.imaging import ImageWire, Preprocessing
from core.manifest import Manifest, artifacts_entry
from training import engine
from training.checkpoints import default_experts, jpeg_classifier_path
from training.datasets import DistortedDataset, DistortionPolicy, load_source
from training.eval_classifier import for_wire, load_classifiers

P_TARS = (0.7, 0.75, 0.8, 0.85, 0.9)
CSV_COLUMNS = (
    "model",
    "wire",
    "distortion",
    "level",
    "p_tar",
    "n",
    "exit_rate_0",
    "exit_rate_1",
    "exit_rate_2",
    "exit_rate_3",
    "p_edge",
    "edge_acc",
    "cloud_acc",
    "overall_acc",
    "routing_acc",
)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--backbone", default="models/torch/backbone.pt", help="the conventional model")
    p.add_argument(
        "--experts",
        nargs="+",
        default=None,
        help="expert checkpoints (default: the backbone's folder's expert_*.pt)",
    )
    p.add_argument(
        "--classifier",
        default="models/torch/classifier.pt",
        help="distortion classifier for the routed rows ('none' to skip them)",
    )
    p.add_argument(
        "--classifier-jpeg",
        default=None,
        help="the classifier network that routes JPEG wires, as the router picks it by the body's "
        "format; default: classifier_jpeg.pt beside --classifier when it exists; 'none': one for all",
    )
    p.add_argument(
        "--models",
        default=None,
        help="the ONNX export made from these checkpoints (e.g. models/onnx): its file "
        "hashes are recorded in the results, and its run ids must match",
    )
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--limit", type=int, default=None, help="first N images of the split")
    p.add_argument("--p-tar", type=float, nargs="+", default=P_TARS)
    p.add_argument(
        "--wires",
        nargs="+",
        default=["png", "jpeg:90"],
        help="wires every distorted image is sent on, each a set of rows: png, jpeg:QUALITY "
        "(4:2:0, as cameras encode) or jpeg:QUALITY:444",
    )
    p.add_argument("--seed", type=int, default=2021, help="seed of the distortion draws")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="docs/results", help="folder for CSV, Markdown and plots")
    p.add_argument(
        "--cells",
        choices=("all", "pristine"),
        default="all",
        help="'pristine': only the undistorted test images (e.g. each exit's plain accuracy)",
    )
    p.add_argument("--quiet", action="store_true")
    return p


@torch.no_grad()
def all_exit_logits(
    models: dict[str, tuple], loader: DataLoader, device: torch.device, desc: str | None
) -> tuple[dict[str, list[np.ndarray]], np.ndarray]:
    """Every model's exit logits on `loader`; models with one backbone hash share one stage pass."""
    groups: dict[str, list[str]] = {}
    for name, (_, payload) in models.items():
        groups.setdefault(payload["backbone_hash"], []).append(name)
    out = {name: [[] for _ in range(4)] for name in models}
    labels = []
    for x, y, _, _ in progress(loader, desc=desc, quiet=desc is None):
        x = x.to(device)
        labels.append(y.numpy())
        for members in groups.values():
            stages = models[members[0]][0].stages
            h = x
            for k, stage in enumerate(stages):
                h = stage(h)
                for name in members:
                    out[name][k].append(models[name][0].heads[k](h).float().cpu().numpy())
    return {n: [np.concatenate(z) for z in per] for n, per in out.items()}, np.concatenate(labels)


@torch.no_grad()
def classifier_routes(
    classifier, source, policy: DistortionPolicy, image_size: int, args, wire: ImageWire
) -> np.ndarray:
    if classifier.config.image_size != image_size:
        raise UserInputError(
            f"the classifier was trained on {classifier.config.image_size}-px images, "
            f"the experts on {image_size}-px images"
        )
    ds = DistortedDataset.for_classifier(source, classifier.config, policy, wire=wire)
    loader = DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers)
    return np.concatenate([classifier(x).argmax(dim=1).numpy() for x, _, _, _ in loader])


def metrics(conf: np.ndarray, pred: np.ndarray, labels: np.ndarray, p_tar: float) -> dict:
    d = decide(conf, pred, p_tar)
    correct = d.prediction == labels
    edge, cloud = d.at_edge, ~d.at_edge
    row = {f"exit_rate_{k}": float((d.exit_index == k).mean()) for k in range(conf.shape[1])}
    row.update(
        {
            "n": int(len(labels)),
            "p_edge": float(edge.mean()),
            "edge_acc": float(correct[edge].mean()) if edge.any() else None,
            "cloud_acc": float(correct[cloud].mean()) if cloud.any() else None,
            "overall_acc": float(correct.mean()),
        }
    )
    return row


def confidences(logits: list[np.ndarray], temperatures: list[float]) -> tuple[np.ndarray, np.ndarray]:
    pairs = [confidence_and_class(z, t) for z, t in zip(logits, temperatures, strict=True)]
    return np.stack([c for c, _ in pairs], axis=1), np.stack([p for _, p in pairs], axis=1)


def load_models(args) -> tuple[dict[str, tuple], dict[str, dict[str, str]]]:
    """{'conventional': (model, payload), 'expert:<type>[:adapt_bn]': ...} and expert names by kind."""
    models = {"conventional": engine.load_early_exit(args.backbone, role="backbone")}
    expert_paths = args.experts or default_experts(args.backbone)
    if not expert_paths:
        raise UserInputError(f"no expert checkpoints given (--experts) or found beside {args.backbone}")
    experts: dict[str, dict[str, str]] = {"": {}, "_adapt_bn": {}}
    run_id = models["conventional"][1]["run_id"]
    for path in expert_paths:
        model, payload = engine.load_early_exit(path, role="expert")
        if payload["backbone_run_id"] != run_id:
            raise UserInputError(
                f"{path} was fine-tuned from another backbone run "
                f"({payload['backbone_run_id']}, expected {run_id})"
            )
        suffix = "_adapt_bn" if payload["adapt_bn"] else ""
        key = f"expert:{payload['distortion']}{suffix}"
        models[key] = (model, payload)
        experts[suffix][payload["distortion"]] = key
    # BN adaptation on pristine data would reproduce the backbone's own statistics, so an
    # adapt-bn set may borrow the frozen-BN expert of a type it lacks (the pristine one, usually).
    if experts["_adapt_bn"]:
        for kind, key in experts[""].items():
            if kind not in experts["_adapt_bn"]:
                experts["_adapt_bn"][kind] = key
                engine.log(f"adapt-bn experts: using the frozen-BN {kind} expert for {kind} images")
    return models, {s: e for s, e in experts.items() if e}


def check_experts_cover(experts: dict[str, dict[str, str]], classes: list[str]) -> None:
    """Every set of experts has one for each class evaluated (experts of other types may be there
    too: an expert trained before its type is a class of the classifier)."""
    for suffix, by_type in experts.items():
        missing = set(classes) - set(by_type)
        if missing:
            raise UserInputError(f"experts{suffix or ''} missing for: {', '.join(sorted(missing))}")


def check_export_matches(models: dict[str, tuple], classifier_runs: list[str] | None, export: str) -> None:
    """Refuse to record an export's hashes for results that came from other checkpoints."""
    exported = {Manifest.load(p).run_id for p in Path(export).glob("edge_*.json")}
    for name, (_, payload) in models.items():
        if payload["run_id"] not in exported:
            raise UserInputError(
                f"{export} holds no export of {name} (run {payload['run_id']}): "
                f"re-run python -m export on these checkpoints"
            )
    if classifier_runs is not None:
        manifest = Manifest.load(Path(export) / "distortion_classifier.json")
        shipped = manifest.preprocessing.get("run_ids", [manifest.run_id])
        if shipped != classifier_runs:
            raise UserInputError(f"{export} holds classifier runs {shipped}, not {classifier_runs}")


def main(args: argparse.Namespace) -> list[dict]:
    started = time.time()
    wires = parse_wires(args.wires)
    device = engine.device_from_arg(args.device)
    models, experts = load_models(args)
    for model, _ in models.values():
        model.to(device).eval()
    conventional = models["conventional"][1]
    preprocessing = Preprocessing.from_dict(conventional["preprocessing"])
    classifiers, classifier_runs, jpeg_path = None, None, None
    if args.classifier != "none":
        jpeg_path = jpeg_classifier_path(args.classifier, args.classifier_jpeg)
        classifiers = load_classifiers(args.classifier, jpeg_path)
        classifier_runs = [p["run_id"] for _, p in classifiers.values()]
    if args.models is not None:
        check_export_matches(models, classifier_runs, args.models)
    source = load_source(
        args.data,
        args.split,
        limit=args.limit,
        data_root=args.data_root,
        seed=conventional.get("split_seed", 0),
    )
    # the classifier's own classes, in its output order (a route is an index into them)
    classes = list(classifiers["any"][0].config.classes if classifiers else distortions.DISTORTION_CLASSES)
    check_experts_cover(experts, classes)  # its cells: every level of every class it routes

    rows, exit_accuracy = [], {}
    todo = [
        (w, c)
        for w in wires
        for c in (distortions.cells(classes) if args.cells == "all" else [("pristine", 0)])
    ]
    for wire, (name, level) in todo:
        policy = DistortionPolicy(fixed=(name, level), seed=args.seed)
        loader = engine.image_loader(
            source,
            policy,
            preprocessing,
            batch_size=args.batch_size,
            workers=args.workers,
            shuffle=False,
            wire=wire,
        )
        desc = None if args.quiet else f"{wire} {name} {level:g}"
        logits, labels = all_exit_logits(models, loader, device, desc)
        conf = {k: confidences(z, models[k][1]["temperatures"]) for k, z in logits.items()}
        exit_accuracy.setdefault(str(wire), {})[f"{name}:{level:g}"] = {
            k: engine.exit_accuracies(z, labels) for k, z in logits.items()
        }
        routes = (
            classifier_routes(for_wire(classifiers, wire)[0], source, policy, preprocessing.size, args, wire)
            if classifiers is not None
            else None
        )
        variants = [("conventional", conf["conventional"], None)]
        fallback = distortions.fallbacks(classes).get(name)
        for suffix, by_type in experts.items():
            variants.append((f"expert_oracle{suffix}", conf[by_type[name]], None))
            if fallback is not None:  # what the edge answers while this type's expert is away
                variants.append((f"expert_fallback{suffix}", conf[by_type[fallback]], None))
            if routes is not None:
                stacked_c = np.stack([conf[by_type[c]][0] for c in classes])  # (classes, N, K)
                stacked_p = np.stack([conf[by_type[c]][1] for c in classes])
                n = np.arange(len(labels))
                variants.append(
                    (
                        f"expert_routed{suffix}",
                        (stacked_c[routes, n], stacked_p[routes, n]),
                        float((routes == classes.index(name)).mean()),
                    )
                )
        for model_name, (c, p), routing_acc in variants:
            for p_tar in args.p_tar:
                rows.append(
                    {
                        "model": model_name,
                        "wire": str(wire),
                        "distortion": name,
                        "level": level,
                        "p_tar": p_tar,
                        **metrics(c, p, labels, p_tar),
                        "routing_acc": routing_acc,
                    }
                )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "accuracy.csv", rows)
    summary = {
        "command": command_line(),
        "wall_time_s": round(time.time() - started, 1),
        "n_images": int(len(source)),
        "split": args.split,
        "wires": [str(w) for w in wires],
        "artifacts": artifacts_entry(
            args.models,
            [
                args.backbone,
                *(args.experts or default_experts(args.backbone)),
                *([args.classifier] if args.classifier != "none" else []),
                *([jpeg_path] if jpeg_path else []),
            ],
        ),
        "exit_accuracy": exit_accuracy,
        "models": {
            k: {
                "run_id": p["run_id"],
                "checkpoint_command": p["command"],
                "temperatures": p["temperatures"],
                "calibration": p["calibration"],
                "val_accuracy": p["val_accuracy"],
            }
            for k, (_, p) in models.items()
        },
    }
    write_json(out / "accuracy_run.json", summary)
    from training.report import write_accuracy_report  # matplotlib only when reporting

    write_accuracy_report(rows, summary, out)
    engine.log(f"wrote {out}/accuracy.csv, accuracy.md and plots ({summary['wall_time_s']:.0f} s)")
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {
                    k: ("" if r.get(k) is None else f"{r[k]:.6f}" if isinstance(r[k], float) else r[k])
                    for k in CSV_COLUMNS
                }
            )


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
