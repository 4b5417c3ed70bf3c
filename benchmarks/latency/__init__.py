"""The paper's latency experiment, live, over emulated WAN links or against a running deployment.

Two modes:

    python -m benchmarks.latency --out docs/results/latency            # own stack, all profiles
    python -m benchmarks.latency --profiles paris --per-cell 10 --out /tmp/lat
    python -m benchmarks.latency --router http://127.0.0.1:8000 --per-cell 5 --max-minutes 5

**Own stack** (the default): for each profile the harness builds the namespaces
(`benchmarks.lib.netem`: device -> edge -> cloud) and starts the live system in them
(`benchmarks.lib.live`): the cloud TorchServe in the cloud namespace pinned to CPU 1, the edge
TorchServe and the router (which runs the distortion classifier itself) in the edge namespace
pinned to CPU 0 (the paper's edge container had one CPU). A client in the device namespace sends
test images through the router; everything is stopped and the namespaces removed at the end.

**Existing deployment** (`--router URL`): the same client runs here against a router that is
already running; nothing is created, started or stopped, and the network is whatever lies between
here and that router. Its records are the profile `existing` (`records_existing.csv`), in
`run/existing/latency` unless `--out` says otherwise; `run.json` records
`"mode": "existing deployment"` and the router URL. The `cloud_only` system needs the deployment's
cloud to serve `full_conventional`; without it those requests are counted as errors. Only
loopback URLs are accepted unless `--allow-remote` is given.

Every exit and offload decision is made live by the running system. Systems (router parameters):

- `expert`: the classifier routes each image to its expert (early exit, offload when unsure);
- `conventional`: the pristine-trained model for every image (expert=conventional);
- `edge_only`: experts, never offloading (mode=edge_only: the most confident branch answers);
- `cloud_only`: the image goes to the cloud, which runs the whole conventional model
  (mode=cloud_only, archive `full_conventional`).

Grid: every distortion type and level; p_tar 0.7 / 0.8 / 0.9 for the early-exit systems; offload
compression fp32 / fp16 / int8 for `expert` at p_tar 0.8. Per request: latency, exit, offloaded
bytes, correct or not (`records_<profile>.csv`). Per profile results are kept, so a rerun resumes
with the missing profiles (`--force` redoes them); `run.json` records, per profile, the command,
date and wall time of the invocation that produced its records, and lists every invocation.
Bounded by `--max-minutes` per profile. `python -m benchmarks.latency.report` (run at the end
automatically) writes the summary CSV, plots and Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.lib import target
from core import distortions
from core.cli import progress, write_json
from core.errors import UserInputError
from core.experts import CLASSIFIER

if TYPE_CHECKING:
    from benchmarks.lib.live import LiveSystem

CELLS = distortions.cells()  # every level of every type the classifier routes
RECORD_FIELDS = (
    "profile",
    "system",
    "p_tar",
    "compression",
    "distortion",
    "level",
    "index",
    "label",
    "status",
    "latency_ms",
    "class",
    "exit",
    "expert",
    "offloaded",
    "offloaded_bytes",
    "degraded",
    "correct",
)
EDGE_MODELS = [f"edge_{name}" for name in (*distortions.DISTORTION_CLASSES, "conventional")]
CLOUD_MODELS = [f"cloud_{name}" for name in (*distortions.DISTORTION_CLASSES, "conventional")] + [
    "full_conventional"
]
ROUTER_MODELS = [CLASSIFIER]  # run by the router itself, from the same model store
DEFAULT_PROFILES = ("lan", "sao_paulo", "fremont", "paris")
DEFAULT_OUT = "docs/results/latency"
EXISTING_OUT = "run/existing/latency"
OWN_STACK_OPTIONS = ("profiles", "profiles_file", "model_store", "run_dir", "backend")


def configs() -> list[dict]:
    out = []
    for p in (0.7, 0.8, 0.9):
        out.append({"system": "expert", "p_tar": p, "compression": "fp32"})
        out.append({"system": "conventional", "p_tar": p, "compression": "fp32"})
    out += [{"system": "expert", "p_tar": 0.8, "compression": c} for c in ("fp16", "int8")]
    out.append({"system": "edge_only", "p_tar": 0.8, "compression": "fp32"})
    out.append({"system": "cloud_only", "p_tar": None, "compression": "image"})
    return out


def params_for(cfg: dict) -> dict:
    if cfg["system"] == "cloud_only":
        return {"mode": "cloud_only", "expert": "conventional"}
    params = {"threshold": cfg["p_tar"], "compression": cfg["compression"]}
    if cfg["system"] == "conventional":
        params["expert"] = "conventional"
    if cfg["system"] == "edge_only":
        params["mode"] = "edge_only"
    return params


# -- the client (inside the device namespace, or here against an existing deployment) -------------
def client(args: argparse.Namespace, router: str, profile: str, records: str | Path) -> int:
    from benchmarks.lib.loadgen import LoadClient
    from core.imaging import encode_image
    from training.datasets import DistortionPolicy, distorted_image, load_source

    source = load_source("fashion-mnist", "test", limit=args.per_cell, data_root=args.data_root)
    stop_at = time.time() + 60 * args.max_minutes
    bodies = {}
    for name, level in CELLS:
        policy = DistortionPolicy(fixed=(name, level), seed=11)
        bodies[(name, level)] = [
            (encode_image(distorted_image(source, i, args.size, policy)[0], "png"), source.label(i))
            for i in range(len(source))
        ]
    with open(records, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RECORD_FIELDS)
        writer.writeheader()
        # warm every path once (connections, worker caches) before anything is timed
        for cfg in configs():
            LoadClient(router, bodies[CELLS[0]][:1], params=params_for(cfg)).run(seconds=30, max_requests=1)
        jobs = [(cfg, cell) for cfg in configs() for cell in CELLS]
        for cfg, (name, level) in progress(jobs, desc=profile, quiet=args.quiet):
            if time.time() > stop_at:
                print(f"time budget of {args.max_minutes:g} min spent: stopping", file=sys.stderr)
                return 0
            # one client, one request at a time, in order: record i is image i
            load = LoadClient(router, bodies[(name, level)], params=params_for(cfg))
            load.run(seconds=stop_at - time.time(), max_requests=len(bodies[(name, level)]))
            for i, rec in enumerate(load.records):
                answer = rec.answer or {}
                writer.writerow(
                    {
                        "profile": profile,
                        "system": cfg["system"],
                        "p_tar": cfg["p_tar"] or "",
                        "compression": cfg["compression"],
                        "distortion": name,
                        "level": level,
                        "index": i,
                        "label": rec.label,
                        "status": rec.status,
                        "latency_ms": round(rec.seconds * 1000, 3),
                        "class": answer.get("class", ""),
                        "exit": answer.get("exit", ""),
                        "expert": answer.get("expert", ""),
                        "offloaded": int(bool(answer.get("offloaded"))),
                        "offloaded_bytes": answer.get("offloaded_bytes", 0),
                        "degraded": int(bool(answer.get("degraded"))),
                        "correct": int(answer.get("class") == rec.label) if rec.status == 200 else "",
                    }
                )
            f.flush()
    return 0


# -- the orchestrator -----------------------------------------------------------------------------
@contextlib.contextmanager
def emulated_system(
    profile,
    *,
    model_store: str,
    run_dir: str | Path,
    backend: str = "auto",
    max_minutes: float = 20,
    cloud_engine: str = "torchserve",
    cloud_replicas: int = 1,
    router_options: list[str] | None = None,
    security: str = "off",
    edge_models: list[str] | None = None,
    cloud_models: list[str] | None = None,
) -> Iterator[LiveSystem]:
    """The live system (`benchmarks.lib.live.LiveSystem`) over one emulated profile, as the paper ran it.

    Cloud TorchServe (or `cloud_replicas` of `cloud_engine`) in the cloud namespace on CPU 1; edge
    TorchServe and the router in the edge namespace on CPU 0; the router listens on the edge's
    device-side address, with a deadline long enough for the slowest profile. Everything is
    stopped and the namespaces removed on exit, also on failure. `security`: LiveSystem's (TLS on
    the cloud hop and the router, device keys); the models default to this experiment's.
    """
    from benchmarks.lib import netem
    from benchmarks.lib.live import LiveSystem

    with (
        netem.Link(profile, backend=backend, max_seconds=60 * (max_minutes + 10)) as link,
        LiveSystem(
            model_store,
            Path(run_dir) / profile.name,
            link=link,
            cpus={"cloud": "1", "edge": "0", "router": "0"},
            router_options=["--deadline-ms", "10000", *(router_options or [])],
            edge_models=edge_models or EDGE_MODELS,
            cloud_models=cloud_models or CLOUD_MODELS,
            cloud_engine=cloud_engine,
            cloud_replicas=cloud_replicas,
            security=security,
        ) as system,
    ):
        yield system


def run_profile(profile, args, out: Path) -> tuple[Path, str]:
    """One emulated profile on the own stack; returns the records and the link backend used."""
    records = out / f"records_{profile.name}.csv"
    started = time.time()
    with emulated_system(
        profile,
        model_store=args.model_store or "model_store",
        run_dir=args.run_dir or "run/latency",
        backend=args.backend or "auto",
        max_minutes=args.max_minutes,
    ) as system:
        tmp_records = records.with_suffix(".partial")
        client_cmd = [
            sys.executable,
            "-m",
            "benchmarks.latency",
            "--client",
            "--client-router",
            system.url,
            "--profile",
            profile.name,
            "--per-cell",
            str(args.per_cell),
            "--records",
            str(tmp_records),
            "--max-minutes",
            str(args.max_minutes),
            "--size",
            str(args.size),
        ]
        if args.data_root:
            client_cmd += ["--data-root", args.data_root]
        if args.quiet:
            client_cmd.append("--quiet")
        subprocess.run(
            system.link.exec_args("dev", client_cmd),
            check=True,
            env=system.env,
            timeout=60 * (args.max_minutes + 5),
        )
        tmp_records.replace(records)
        backend = system.link.backend
    print(f"{profile.name}: done in {time.time() - started:.0f} s ({backend} backend)")
    return records, backend


def run_existing(router: str, args, out: Path) -> Path:
    """The client, here, against a router that is already running; starts or stops nothing."""
    records = out / f"records_{target.EXISTING}.csv"
    started = time.time()
    tmp_records = records.with_suffix(".partial")
    client(args, router, target.EXISTING, tmp_records)
    tmp_records.replace(records)
    print(f"{target.EXISTING}: done in {time.time() - started:.0f} s (existing deployment at {router})")
    return records


def get_args_parser() -> argparse.ArgumentParser:
    p = target.parser(
        "benchmarks.latency",
        __doc__,
        own="builds the namespaces, TorchServe and the router for each\n    emulated profile, runs "
        "the grid, then stops and removes everything.",
        existing="runs the same grid against a router that is already running;\n    nothing is "
        "created, started or stopped; loopback URLs only unless --allow-remote.",
    )
    p.add_argument("--per-cell", type=int, default=15, help="test images per distortion cell")
    p.add_argument("--size", type=int, default=64, help="image size sent (the models' input size)")
    p.add_argument("--max-minutes", type=float, default=20, help="time budget per profile")
    p.add_argument(
        "--out", default=None, help=f"results folder (default: {DEFAULT_OUT}; with --router: {EXISTING_OUT})"
    )
    p.add_argument("--force", action="store_true", help="redo profiles that already have records")
    p.add_argument("--data-root", default=None)
    p.add_argument("--quiet", action="store_true")
    own = p.add_argument_group("own stack (the default: namespaces, TorchServe and router started here)")
    own.add_argument(
        "--profiles",
        nargs="+",
        default=None,
        help=f"emulated profiles (default: {' '.join(DEFAULT_PROFILES)})",
    )
    own.add_argument("--profiles-file", default=None, help="extra profiles (see benchmarks.netem)")
    own.add_argument(
        "--model-store",
        default=None,
        help="archives incl. full_conventional (python -m export.archive --full; default: model_store)",
    )
    own.add_argument("--run-dir", default=None, help="working folders (default: run/latency)")
    target.add_backend_option(own, default=None)
    target.add_existing_options(p)
    target.add_client_half_options(p)
    p.add_argument("--profile", default=None, help=argparse.SUPPRESS)
    p.add_argument("--records", default=None, help=argparse.SUPPRESS)
    return p


def load_run_meta(path: Path) -> dict:
    """run.json of earlier invocations, in the current layout.

    A run.json written before per-profile provenance kept one command and the wall time of its
    last invocation only: that becomes the first invocation, and its profiles get
    `"produced_by": null` (which invocation made them is unknown).
    """
    meta = json.loads(path.read_text()) if path.is_file() else {}
    if "invocations" not in meta:
        legacy = {k: meta.pop(k) for k in ("command", "wall_time_s", "per_cell") if k in meta}
        meta["invocations"] = (
            [
                {
                    **legacy,
                    "profiles_run": None,
                    "note": "recorded before per-profile provenance: the profiles this "
                    "invocation ran are unknown",
                }
            ]
            if legacy
            else []
        )
    meta.setdefault("profiles", {})
    for entry in meta["profiles"].values():
        entry.setdefault("produced_by", None)
    return meta


def save_run_meta(out: Path, meta: dict, invocation: dict, started: float) -> None:
    """run.json, with the profiles whose records are still in `out`; the invocation's wall time so
    far goes to it and to each profile it produced."""
    invocation["wall_time_s"] = round(time.time() - started, 1)
    for name in invocation["profiles_run"]:
        meta["profiles"][name]["produced_by"]["invocation_wall_time_s"] = invocation["wall_time_s"]
    meta["profiles"] = {n: v for n, v in meta["profiles"].items() if (out / f"records_{n}.csv").is_file()}
    write_json(out / "run.json", meta)


def main(args: argparse.Namespace) -> int:
    if args.client:
        return client(args, args.client_router, args.profile, args.records)
    from benchmarks.latency import report as latency_report
    from benchmarks.lib import netem

    if args.per_cell < 1 or args.max_minutes <= 0:
        raise UserInputError("--per-cell and --max-minutes must be positive")
    targets = target.existing_targets(args, OWN_STACK_OPTIONS)
    if targets:
        names = [target.EXISTING]
        described = {
            target.EXISTING: {"name": target.EXISTING, "mode": target.MODE_EXISTING, "targets": targets}
        }
    else:
        profiles = netem.load_profiles(args.profiles_file)
        names = args.profiles or list(DEFAULT_PROFILES)
        unknown = [n for n in names if n not in profiles]
        if unknown:
            raise UserInputError(f"unknown profile(s): {', '.join(unknown)}")
        store = Path(args.model_store or "model_store")
        missing = [
            m for m in ROUTER_MODELS + EDGE_MODELS + CLOUD_MODELS if not (store / f"{m}.mar").is_file()
        ]
        if missing:
            raise UserInputError(f"{store} lacks {', '.join(missing)}: run python -m export.archive --full")
        described = {n: {**vars(profiles[n]), "mode": target.MODE_OWN} for n in names}
    out = Path(args.out or (EXISTING_OUT if targets else DEFAULT_OUT))
    out.mkdir(parents=True, exist_ok=True)
    meta = load_run_meta(out / "run.json")
    prov = target.provenance(
        "benchmarks.latency", targets, None if targets else (args.model_store or "model_store")
    )
    invocation = {
        **prov,
        "wall_time_s": None,
        "per_cell": args.per_cell,
        "profiles_run": [],
        "profiles_kept": [],
    }
    meta["invocations"].append(invocation)
    started = time.time()
    for name in names:
        if (out / f"records_{name}.csv").is_file() and not args.force:
            print(f"{name}: records exist, skipped (--force to redo)")
            invocation["profiles_kept"].append(name)
            meta["profiles"].setdefault(name, {**described[name], "produced_by": None})
            continue
        t0 = time.time()
        if targets:
            target.check_router_answers(targets["router"])
            run_existing(targets["router"], args, out)
            backend = None
        else:
            _, backend = run_profile(profiles[name], args, out)
        # a profile keeps its place in run.json (the report's order); a new one comes last
        meta["profiles"][name] = {
            **described[name],
            "produced_by": {
                **prov,
                "wall_time_s": round(time.time() - t0, 1),
                "invocation_wall_time_s": None,
                "per_cell": args.per_cell,
                "size": args.size,
                "max_minutes": args.max_minutes,
                **({"backend": backend} if backend else {}),
            },
        }
        invocation["profiles_run"].append(name)
        save_run_meta(out, meta, invocation, started)  # after every profile: an interruption keeps it
    save_run_meta(out, meta, invocation, started)
    latency_report.write_report(out)
    return 0
