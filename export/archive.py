"""`python -m export.archive`: the exported segments to TorchServe archives in the model store.

    python -m export.archive --exported exported --model-store model_store

One archive per manifest written by `python -m export`: `edge_<expert>.mar`, `cloud_<expert>.mar`,
`distortion_classifier.mar` (and with `--full`, `full_<expert>.mar`: every stage of one expert, the
cloud-only baseline of the latency benchmark). Each holds its ONNX files at the paths its manifest names, the
manifest as `model_manifest.json`, the handler of its role, the torch-free `core` package and the
handler support modules (so the serving side runs exactly the preprocessing the models were
trained with), and a `model-config.yaml` with the worker, batching and onnxruntime settings.
Archives are built with TorchServe's own `torch-model-archiver`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

from core import experts
from core.cli import run_cli
from core.errors import UserInputError
from core.manifest import Manifest
from handlers.service import MANIFEST_NAME

ROOT = Path(__file__).resolve().parent.parent
HANDLERS = {
    "edge": "edge_handler.py",
    "cloud": "cloud_handler.py",
    "classifier": "classifier_handler.py",
    "full": "full_handler.py",
}
SUPPORT_MODULES = (
    "handlers/__init__.py",
    "handlers/metrics.py",
    "handlers/runtime.py",
    "handlers/service.py",
)
MAX_EXTRACTED_BYTES = 512 * 1024 * 1024


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--exported", default="exported", help="folder written by python -m export")
    p.add_argument("--model-store", default="model_store", help="where the .mar files go")
    p.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="archive names to build (e.g. edge_gaussian_blur); default all",
    )
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads per worker")
    p.add_argument("--batch-size", type=int, default=8, help="TorchServe batch size")
    p.add_argument(
        "--max-batch-delay",
        type=int,
        default=1,
        help="ms TorchServe waits to fill a batch (every lone request waits it: 1 ms keeps "
        "most of batching's throughput, docs/results/edge_hop.md)",
    )
    p.add_argument("--workers", type=int, default=1, help="workers per model")
    p.add_argument(
        "--full",
        action="store_true",
        help="also build full_<expert>.mar (every stage in one archive: the cloud-only baseline)",
    )
    p.add_argument(
        "--archiver",
        default=None,
        help="torch-model-archiver executable (default: the one beside this Python)",
    )
    return p


def unpack_store(store: Path, root: Path, *, role: str | None = None) -> experts.Registry:
    """Every archive of a model store (or those of one role) unpacked under `root`, filed by manifest."""
    registry = experts.Registry()
    for mar in sorted(Path(store).glob("*.mar")):
        parsed = experts.parse_archive_name(mar.stem)
        if role is not None and (parsed is None or parsed[0] != role):
            continue
        folder = extract(mar, root / mar.stem)
        registry.add(mar.stem, Manifest.load(folder / MANIFEST_NAME), folder)
    return registry


def model_config(args: argparse.Namespace) -> str:
    """The archive's model-config.yaml: TorchServe's worker and batching keys, our onnxruntime ones."""
    config = {
        "minWorkers": args.workers,
        "maxWorkers": args.workers,
        "batchSize": args.batch_size,
        "maxBatchDelay": args.max_batch_delay,
        "responseTimeout": 30,
        "onnxruntime": {"intra_op_threads": args.threads, "providers": ["CPUExecutionProvider"]},
    }
    return yaml.safe_dump(config, sort_keys=False)


def stage(name: str, manifest: Manifest, exported: Path, folder: Path, cloud: Manifest | None = None) -> None:
    """Lay out one archive's extra files under `folder`, at the paths the handler expects."""
    files = dict(manifest.files)
    if cloud is not None:  # a full archive: the cloud half too
        files.update(cloud.files)
        (folder / "cloud_manifest.json").write_text(cloud.to_json())
    for rel in files:
        dst = folder / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(exported / rel, dst)
    (folder / MANIFEST_NAME).write_text(manifest.to_json())
    (folder / "core").mkdir()
    for src in sorted((ROOT / "core").glob("*.py")):
        shutil.copy2(src, folder / "core" / src.name)
    (folder / "handlers").mkdir()
    for rel in SUPPORT_MODULES:
        shutil.copy2(ROOT / rel, folder / rel)


def build(name: str, manifest: Manifest, args: argparse.Namespace, cloud: Manifest | None = None) -> Path:
    store = Path(args.model_store)
    archiver = args.archiver or str(Path(sys.executable).parent / "torch-model-archiver")
    with tempfile.TemporaryDirectory(prefix=f"mar_{name}_") as tmp:
        extra = Path(tmp) / "extra"
        extra.mkdir()
        stage(name, manifest, Path(args.exported), extra, cloud)
        config = Path(tmp) / "model-config.yaml"
        config.write_text(model_config(args))
        cmd = [
            archiver,
            "--model-name",
            name,
            "--version",
            "1.0",
            "--handler",
            str(ROOT / "handlers" / HANDLERS["full" if cloud else manifest.role]),
            "--extra-files",
            str(extra),
            "--config-file",
            str(config),
            "--export-path",
            str(store),
            "--force",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(
                f"torch-model-archiver failed for {name}: {(done.stderr or done.stdout).strip()[-500:]}"
            )
    return store / f"{name}.mar"


def extract(mar: Path, dest: Path) -> Path:
    """Unpack an archive safely (no absolute paths, no '..', bounded size); returns its folder."""
    with zipfile.ZipFile(mar) as zf:
        total = 0
        for info in zf.infolist():
            parts = Path(info.filename).parts
            if Path(info.filename).is_absolute() or ".." in parts:
                raise UserInputError(f"{mar}: member {info.filename!r} leaves the archive")
            total += info.file_size
        if total > MAX_EXTRACTED_BYTES:
            raise UserInputError(f"{mar}: {total} bytes unpacked exceeds {MAX_EXTRACTED_BYTES}")
        zf.extractall(dest)
    if not (dest / MANIFEST_NAME).is_file():
        raise UserInputError(f"{mar} carries no {MANIFEST_NAME}: not one of our archives")
    return dest


def main(args: argparse.Namespace) -> list[str]:
    for key in ("threads", "batch_size", "workers"):
        if getattr(args, key) < 1:
            raise UserInputError(f"--{key.replace('_', '-')} must be at least 1")
    if args.max_batch_delay < 1 and args.batch_size > 1:
        # measured: TorchServe 0.12 reads a maxBatchDelay of 0 as unset and waits its default
        # 100 ms for every batch (a 110-ms edge hop instead of 7)
        raise UserInputError(
            "--max-batch-delay must be at least 1 ms when --batch-size > 1 "
            "(TorchServe reads 0 as its default, 100 ms)"
        )
    if args.max_batch_delay < 0:
        raise UserInputError("--max-batch-delay must not be negative")
    registry = experts.from_export(Path(args.exported), verify=True)
    found = {name: manifest for name, (manifest, _) in registry.manifests().items()}
    if not found:
        raise UserInputError(f"no manifests in {args.exported}: run python -m export first")
    wanted = args.only if args.only else list(found)
    unknown = [n for n in wanted if n not in found]
    if unknown:
        raise UserInputError(f"no manifest for {', '.join(unknown)} (have: {', '.join(found)})")
    Path(args.model_store).mkdir(parents=True, exist_ok=True)
    built = []
    jobs = [(name, found[name], None) for name in wanted]
    if args.full:
        jobs += [
            (experts.archive_name("full", name), edge[0], cloud[0])
            for name, (edge, cloud) in registry.pairs().items()
        ]
    for name, manifest, cloud in jobs:
        path = build(name, manifest, args, cloud)
        built.append(str(path))
        print(f"{path}  ({path.stat().st_size / 1e6:.1f} MB)")
    return built


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
