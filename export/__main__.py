"""`python -m export`: every checkpoint to ONNX segments + manifests, parity-checked.

    python -m export --backbone models/torch/backbone.pt --experts models/torch/expert_*.pt \
        --classifier models/torch/classifier.pt --out exported

Writes `OUT/backbone/<hash>/stage{0..3}.onnx` (one set per distinct backbone), `OUT/<expert>/`
heads, `OUT/classifier/classifier.onnx`, one manifest per future archive (`edge_<expert>.json`,
`cloud_<expert>.json`, `distortion_classifier.json`) and `export_report.json` with the parity of
every segment. The conventional (pristine-trained) model is exported as expert `conventional`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import torch

from core import distortions, experts
from core.cli import command_line, run_cli, write_json
from core.errors import UserInputError
from core.imaging import Preprocessing
from core.manifest import EXPORT_REPORT, ExitSpec, Manifest, TensorSpec, sha256_file
from export.segments import OPSET, ExportParityError, check_parity, export_module
from training.checkpoints import default_experts, jpeg_classifier_path
from training.datasets import DistortionPolicy, distorted_image, load_source
from training.early_exit import EXIT_NAMES
from training.engine import load_early_exit
from training.eval_classifier import load_classifiers

DEFAULT_THRESHOLD = 0.8


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--backbone", default="models/torch/backbone.pt")
    p.add_argument(
        "--experts",
        nargs="+",
        default=None,
        help="expert checkpoints (default: expert_*.pt beside --backbone)",
    )
    p.add_argument("--classifier", default="models/torch/classifier.pt")
    p.add_argument(
        "--classifier-jpeg",
        default=None,
        help="a second classifier network that answers JPEG bodies (trained on JPEG round trips); "
        "default: classifier_jpeg.pt beside --classifier when it exists; 'none': one network for all",
    )
    p.add_argument("--data", default="fashion-mnist", help="where the parity images come from")
    p.add_argument("--data-root", default=None)
    p.add_argument(
        "--parity-images",
        type=int,
        default=64,
        help="validation images (mixed distortions) run through both runtimes",
    )
    p.add_argument(
        "--operating-images",
        type=int,
        default=None,
        help="validation images per expert for the operating-point tables (default: all; 0: none)",
    )
    p.add_argument("--out", default="exported")
    return p


def parity_images(
    args: argparse.Namespace, preprocessing: Preprocessing, classifier_config=None, *, split_seed: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validation images with random distortions: (model inputs, classifier spectra)."""
    source = load_source(
        args.data, "val", limit=args.parity_images, data_root=args.data_root, seed=split_seed
    )
    policy = DistortionPolicy(seed=99)
    images = [distorted_image(source, i, preprocessing.size, policy)[0] for i in range(len(source))]
    x = torch.from_numpy(np.stack([preprocessing.model_input(im) for im in images]))
    spectra = None
    if classifier_config is not None:
        spectra = torch.from_numpy(np.stack([classifier_config.model_input(im) for im in images]))
    return x, spectra


def main(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    conventional = load_early_exit(args.backbone, role="backbone")
    expert_paths = args.experts or default_experts(args.backbone)
    models = {experts.CONVENTIONAL: conventional}
    for path in expert_paths:
        model, payload = load_early_exit(path, role="expert")
        if payload["backbone_run_id"] != conventional[1]["run_id"]:
            raise UserInputError(f"{path} was fine-tuned from another backbone run")
        name = experts.check_expert_name(payload["expert"] + ("_adapt_bn" if payload["adapt_bn"] else ""))
        models[name] = (model, payload)
    preprocessing = Preprocessing.from_dict(conventional[1]["preprocessing"])
    classifier, classifier_jpeg = None, None
    if args.classifier != "none":  # with the network for JPEG bodies, refused unless it fits
        networks = load_classifiers(
            args.classifier, jpeg_classifier_path(args.classifier, args.classifier_jpeg)
        )
        classifier, classifier_jpeg = networks["any"], networks.get("jpeg")
    if args.parity_images < 2:
        raise UserInputError("--parity-images must be at least 2 (the batch axis is exported dynamic)")
    x, spectra = parity_images(
        args,
        preprocessing,
        classifier[0].config if classifier else None,
        split_seed=conventional[1].get("split_seed", 0),
    )
    exporter = {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "opset": OPSET,
        "command": command_line(),
    }
    report: dict = {"segments": [], "manifests": [], "exporter": exporter}

    stage_files: dict[str, list[str]] = {}
    for name, (model, payload) in models.items():
        h = payload["backbone_hash"]
        stage_outputs = []
        if h not in stage_files:
            stage_files[h] = []
            for k, stage in enumerate(model.stages):
                rel = f"backbone/{h[:16]}/stage{k}.onnx"
                inp = x if k == 0 else stage_outputs[-1]
                export_module(
                    stage, inp[:2], out / rel, input_name="input" if k else "image", output_name=f"stage{k}"
                )
                rep, y = check_parity(stage, out / rel, inp, is_logits=False, segment=rel)
                report["segments"].append(asdict(rep))
                stage_files[h].append(rel)
                stage_outputs.append(y)
        else:
            with torch.no_grad():
                h_in = x
                for stage in model.stages:
                    h_in = stage(h_in)
                    stage_outputs.append(h_in)
        head_files = []
        for k, head in enumerate(model.heads):
            rel = f"{name}/{EXIT_NAMES[k]}.onnx"
            export_module(head, stage_outputs[k][:2], out / rel, input_name=f"stage{k}", output_name="logits")
            rep, _ = check_parity(head, out / rel, stage_outputs[k], is_logits=True, segment=rel)
            report["segments"].append(asdict(rep))
            head_files.append(rel)
        split_shape = (None, *stage_outputs[2].shape[1:])
        for role in ("edge", "cloud"):
            manifest = _expert_manifest(
                role, name, payload, preprocessing, stage_files[h], head_files, split_shape, out, exporter
            )
            path = out / f"{experts.archive_name(role, name)}.json"
            path.write_text(manifest.to_json())
            report["manifests"].append(path.name)

    if classifier is not None:
        model, payload = classifier
        networks = [("any", "classifier/classifier.onnx", classifier)]
        if classifier_jpeg is not None:
            networks.append(("jpeg", "classifier/classifier_jpeg.onnx", classifier_jpeg))
        for _, rel, (net, _) in networks:
            export_module(net, spectra[:2], out / rel, input_name="spectrum", output_name="logits")
            rep, _ = check_parity(net, out / rel, spectra, is_logits=True, segment=rel)
            report["segments"].append(asdict(rep))
        size = model.config.input_size
        manifest = Manifest(
            role="classifier",
            name=experts.CLASSIFIER,
            distortion=None,
            class_names=tuple(payload["class_names"]),
            preprocessing={
                **Preprocessing(size=model.config.image_size).to_dict(),
                "spectrum_size": size,
                "spectra": list(model.config.spectra),
                # one network per body format; the run ids of all of them (the first is `run_id`)
                "formats": [fmt for fmt, _, _ in networks],
                "run_ids": [p["run_id"] for _, _, (_, p) in networks],
                # a network's offsets for JPEG bodies below a quality (training.route_bias)
                **quality_offsets(networks),
            },
            stages=tuple(rel for _, rel, _ in networks),
            exits=(),
            input=TensorSpec("spectrum", (None, len(model.config.spectra), size, size)),
            output=TensorSpec("logits", (None, len(payload["class_names"]))),
            backbone_hash="",
            run_id=payload["run_id"],
            files={rel: sha256_file(out / rel) for _, rel, _ in networks},
            exporter=exporter,
            fallbacks=distortions.fallbacks(payload["class_names"]),
        )
        (out / f"{experts.CLASSIFIER}.json").write_text(manifest.to_json())
        report["manifests"].append(f"{experts.CLASSIFIER}.json")
    write_json(out / EXPORT_REPORT, report)
    worst = max(s["max_abs_diff"] for s in report["segments"])
    print(
        f"exported {len(report['segments'])} segments and {len(report['manifests'])} manifests to "
        f"{out}; parity holds on {x.shape[0]} images (max |diff| {worst:.2e})"
    )
    if args.operating_images != 0:  # what each expert's exits are worth, into its edge manifest
        from export import operating_points

        operating_points.main(
            argparse.Namespace(
                exported=str(out),
                data=args.data,
                data_root=args.data_root,
                limit=args.operating_images,
                split_seed=conventional[1].get("split_seed", 0),
                batch_size=256,
                threads=4,
                quiet=True,
            )
        )
    return report


def quality_offsets(networks: list[tuple[str, str, tuple]]) -> dict:
    """{'quality_offsets': {format: band}} for the classifier networks whose checkpoint carries a
    low-quality band (`training.route_bias`), or nothing when none does (older manifests stay
    byte-identical)."""
    bands = {
        fmt: payload["route_bias"]["low_quality"]
        for fmt, _, (_, payload) in networks
        if payload.get("route_bias", {}).get("low_quality")
    }
    return {"quality_offsets": bands} if bands else {}


def _expert_manifest(
    role, name, payload, preprocessing, stage_files, head_files, split_shape, out, exporter
) -> Manifest:
    temps = payload["temperatures"]
    if role == "edge":
        stages, exit_idx = stage_files[:3], (0, 1, 2)
        inp = TensorSpec("image", (None, 3, preprocessing.size, preprocessing.size))
        output = TensorSpec("stage2", split_shape)
    else:
        stages, exit_idx = stage_files[3:], (3,)
        inp = TensorSpec("stage2", split_shape)
        output = TensorSpec("logits", (None, len(payload["class_names"])))
    exits = tuple(
        ExitSpec(
            index=k,
            name=EXIT_NAMES[k],
            file=head_files[k],
            temperature=float(temps[k]),
            threshold=DEFAULT_THRESHOLD,
        )
        for k in exit_idx
    )
    files = {f: sha256_file(out / f) for f in (*stages, *(e.file for e in exits))}
    distortion = payload.get("distortion")
    return Manifest(
        role=role,
        name=name,
        distortion=distortion if distortion in distortions.REGISTRY else None,
        class_names=tuple(payload["class_names"]),
        preprocessing=preprocessing.to_dict(),
        stages=tuple(stages),
        exits=exits,
        input=inp,
        output=output,
        backbone_hash=payload["backbone_hash"],
        run_id=payload["run_id"],
        files=files,
        exporter=exporter,
    )


def _run(argv=None) -> int:
    try:
        return run_cli(main, get_args_parser, argv)
    except ExportParityError as exc:
        print(f"error: export failed parity: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(_run())
