"""Offload when it pays, measured live: fixed p_tar against accuracy targets and the network-aware rule.

    python -m benchmarks.adaptive --out docs/results/adaptive          # every profile + the link switch
    python -m benchmarks.adaptive --profiles lan --per-family 30 --out /tmp/adaptive   # a quick look

For each emulated link (`benchmarks.lib.netem`: lan, sao_paulo, fremont, paris) the live system starts
in its namespaces (`benchmarks.latency.emulated_system`: edge TorchServe + router on CPU 0, cloud
TorchServe on CPU 1), and one client in the device namespace sends the same test images, one at a
time, under each configuration (router query parameters; every exit and offload decision is made
live by the router):

- `fixed@p`: the paper's rule at p_tar p (on lan a grid of p, the fixed system's accuracy/offload
  curve; on every link p = 0.8);
- `target@a`: `min_accuracy=a`, thresholds from the experts' operating-point tables (offloading
  when the table says the target needs it); `target@a+net`: the same with `offload=adaptive`;
- `net@0.8`: `offload=adaptive` at p_tar 0.8 (offload only when the offload can finish in time and
  its expected gain is worth its expected time);
- `fixed@0.8/150ms`, `net@0.8/150ms`: the two rules with `deadline_ms=150`.

Images: Fashion-MNIST test images, `--per-family` of each distortion family (pristine, blur, noise;
each image at a uniformly drawn level), the same for every configuration and link.

**The link switch**: the system starts on lan; a client sends pristine test images under `net@0.95`
and, after `--switch-at` requests, the link becomes paris under it (`netem.Link.change`); the
router's offload rate is plotted over the request index.

Results: `records_<profile>.csv`, `switch.csv`, then `benchmarks.adaptive.report` writes
`adaptive.json`, `adaptive.md` and the plots.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.lib import target
from core.cli import command_line, progress, write_json
from core.errors import UserInputError

FAMILIES = ("pristine", "gaussian_blur", "gaussian_noise")
DEFAULT_PROFILES = ("lan", "sao_paulo", "fremont", "paris")
FIXED_GRID = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)  # the fixed system's curve (on lan)
TARGETS = (0.85, 0.90, 0.92)  # the two, and one the edge alone cannot reach for pristine
SWITCH_TO = "paris"
FIELDS = (
    "profile",
    "config",
    "family",
    "level",
    "index",
    "label",
    "status",
    "latency_ms",
    "class",
    "correct",
    "expert",
    "threshold",
    "offloaded",
    "degraded",
    "degraded_reason",
    "reason",
    "expected_ms",
)


def configs(profile: str) -> dict[str, dict]:
    """Configuration name -> router query parameters, for one link."""
    out = {f"fixed@{p:g}": {"threshold": p} for p in (FIXED_GRID if profile == "lan" else (0.8,))}
    for a in TARGETS:
        out[f"target@{a:g}"] = {"min_accuracy": a}
        out[f"target@{a:g}+net"] = {"min_accuracy": a, "offload": "adaptive"}
    out["net@0.8"] = {"threshold": 0.8, "offload": "adaptive"}
    out["fixed@0.8/150ms"] = {"threshold": 0.8, "deadline_ms": 150}
    out["net@0.8/150ms"] = {"threshold": 0.8, "offload": "adaptive", "deadline_ms": 150}
    return out


def images(per_family: int, families=FAMILIES, data_root: str | None = None, size: int = 64) -> list[tuple]:
    """(family, level, index, label, PNG bytes): each test image of a family at a drawn level."""
    from core.imaging import encode_image
    from training.datasets import DistortionPolicy, distorted_image, load_source

    source = load_source("fashion-mnist", "test", limit=per_family * len(families), data_root=data_root)
    out = []
    for f, family in enumerate(families):
        policy = DistortionPolicy(types=(family,), seed=23)
        for i in range(f * per_family, (f + 1) * per_family):
            image, _, level = distorted_image(source, i, size, policy)
            out.append((family, level, i, source.label(i), encode_image(image, "png")))
    return out


def record(profile: str, config: str, item: tuple, status: int, seconds: float, answer: dict) -> dict:
    family, level, index, label, _ = item
    decision = answer.get("offload_decision") or {}
    return {
        "profile": profile,
        "config": config,
        "family": family,
        "level": level,
        "index": index,
        "label": label,
        "status": status,
        "latency_ms": round(1000 * seconds, 3),
        "class": answer.get("class", ""),
        "correct": int(answer.get("class") == label) if status == 200 else "",
        "expert": answer.get("expert", ""),
        "threshold": answer.get("threshold", ""),
        "offloaded": int(bool(answer.get("offloaded"))),
        "degraded": int(bool(answer.get("degraded"))),
        "degraded_reason": answer.get("degraded_reason", ""),
        "reason": decision.get("reason", ""),
        "expected_ms": decision.get("expected_ms", ""),
    }


def send(session, url: str, params: dict, body: bytes) -> tuple[int, float, dict]:
    started = time.perf_counter()
    try:
        r = session.post(f"{url}/v1/classify", params=params, data=body, timeout=30)
        status, answer = r.status_code, (r.json() if r.status_code == 200 else {})
    except Exception as exc:  # noqa: BLE001 - a failed request is a record, not the end of the run
        status, answer = 0, {"error": type(exc).__name__}
    return status, time.perf_counter() - started, answer


# -- the client halves (inside the device namespace) -------------------------------------------------
def client(args: argparse.Namespace) -> int:
    import requests

    items = images(args.per_family, data_root=args.data_root)
    stop_at = time.time() + 60 * args.max_minutes
    with requests.Session() as session, open(args.records, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for params in configs(args.profile).values():  # warm every path first
            for item in items[:: max(1, len(items) // 6)]:
                send(session, args.client_router, params, item[4])
        for name, params in progress(
            list(configs(args.profile).items()), desc=args.profile, quiet=args.quiet
        ):
            for item in items:
                if time.time() > stop_at:
                    print(f"time budget of {args.max_minutes:g} min spent: stopping", file=sys.stderr)
                    return 0
                status, seconds, answer = send(session, args.client_router, params, item[4])
                writer.writerow(record(args.profile, name, item, status, seconds, answer))
            f.flush()
    return 0


def switch_client(args: argparse.Namespace) -> int:
    """Pristine images one at a time under net@0.95, each record flushed as it comes (the
    orchestrator counts them to switch the link)."""
    import requests

    items = images(args.switch_requests, families=("pristine",), data_root=args.data_root)
    params = {"threshold": 0.95, "offload": "adaptive"}
    with requests.Session() as session, open(args.records, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        f.flush()
        for item in items:
            status, seconds, answer = send(session, args.client_router, params, item[4])
            writer.writerow(record("lan->paris", "net@0.95", item, status, seconds, answer))
            f.flush()
    return 0


# -- the orchestrator --------------------------------------------------------------------------------
def client_command(args: argparse.Namespace, url: str, records: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "benchmarks.adaptive", "--client", "--client-router", url]
    cmd += ["--records", str(records), "--per-family", str(args.per_family)]
    cmd += ["--switch-requests", str(args.switch_requests), "--max-minutes", str(args.max_minutes)]
    cmd += [
        *(["--data-root", args.data_root] if args.data_root else []),
        *(["--quiet"] if args.quiet else []),
    ]
    return [*cmd, *extra]


def run_profile(profile, args: argparse.Namespace, out: Path) -> None:
    from benchmarks.latency import emulated_system

    records = out / f"records_{profile.name}.csv"
    started = time.time()
    with emulated_system(
        profile,
        model_store=args.model_store,
        run_dir=args.run_dir,
        backend=args.backend,
        max_minutes=args.max_minutes,
    ) as system:
        partial = records.with_suffix(".partial")
        cmd = client_command(args, system.url, partial, "--profile", profile.name)
        subprocess.run(
            system.link.exec_args("dev", cmd), check=True, env=system.env, timeout=60 * (args.max_minutes + 5)
        )
        partial.replace(records)
    print(f"{profile.name}: done in {time.time() - started:.0f} s")


def run_switch(profiles: dict, args: argparse.Namespace, out: Path) -> None:
    from benchmarks.latency import emulated_system

    records = out / "switch.csv"
    with emulated_system(
        profiles["lan"],
        model_store=args.model_store,
        run_dir=args.run_dir,
        backend=args.backend,
        max_minutes=args.max_minutes,
    ) as system:
        records.unlink(missing_ok=True)  # an old run's rows must not count toward the switch
        cmd = client_command(args, system.url, records, "--switch")
        proc = subprocess.Popen(system.link.exec_args("dev", cmd), env=system.env)
        switched_after = None
        switched = threading.Event()
        deadline = time.time() + 60 * args.max_minutes
        while proc.poll() is None and time.time() < deadline:
            if not switched.is_set() and records.is_file():
                done = sum(1 for _ in records.open()) - 1  # minus the header
                if done >= args.switch_at:
                    system.link.change(profiles[SWITCH_TO])
                    switched.set()
                    switched_after = done
                    print(f"switch: the link is {SWITCH_TO} after request {done}")
            time.sleep(0.005)
        if proc.poll() is None:
            proc.kill()
        if proc.wait() != 0:
            raise RuntimeError("the switch client failed")
    write_json(
        out / "switch_meta.json",
        {"switch_at": switched_after, "to": SWITCH_TO, "requests": args.switch_requests},
    )


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.adaptive",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--profiles", nargs="+", default=list(DEFAULT_PROFILES), help="emulated links")
    p.add_argument("--per-family", type=int, default=150, help="test images per distortion family")
    p.add_argument("--switch-requests", type=int, default=300, help="requests of the link-switch run")
    p.add_argument("--switch-at", type=int, default=150, help="the request after which lan becomes paris")
    p.add_argument("--no-switch", action="store_true", help="skip the link-switch run")
    p.add_argument("--model-store", default="model_store")
    p.add_argument("--run-dir", default="run/adaptive")
    p.add_argument("--data-root", default=None)
    p.add_argument("--max-minutes", type=float, default=20.0, help="time budget per profile")
    p.add_argument("--out", default="docs/results/adaptive")
    p.add_argument("--quiet", action="store_true")
    target.add_backend_option(p)
    target.add_client_half_options(p)
    p.add_argument("--switch", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--profile", default=None, help=argparse.SUPPRESS)
    p.add_argument("--records", default=None, help=argparse.SUPPRESS)
    return p


def main(args: argparse.Namespace) -> int:
    if args.client:
        return switch_client(args) if args.switch else client(args)
    from benchmarks.adaptive import report as adaptive_report
    from benchmarks.lib import netem

    if args.per_family < 1 or args.switch_requests < 2 or not 0 < args.switch_at < args.switch_requests:
        raise UserInputError("--per-family >= 1 and 0 < --switch-at < --switch-requests")
    profiles = netem.load_profiles(None)
    unknown = [p for p in args.profiles if p not in profiles]
    if unknown:
        raise UserInputError(f"unknown profile(s) {', '.join(unknown)} (have: {', '.join(profiles)})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    for name in args.profiles:
        run_profile(profiles[name], args, out)
    if not args.no_switch:
        run_switch(profiles, args, out)
    write_json(out / "run.json", {"command": command_line(), "seconds": round(time.time() - started, 1)})
    adaptive_report.main(adaptive_report.get_args_parser().parse_args(["--out", str(out)]))
    return 0
