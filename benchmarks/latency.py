"""The paper's latency experiment, live, over emulated WAN links.

    python -m benchmarks.latency --out docs/results/latency            # all profiles
    python -m benchmarks.latency --profiles paris --per-cell 10 --out /tmp/lat

For each profile the harness builds the namespaces (`benchmarks.netem`: device -> edge -> cloud),
starts the cloud TorchServe in the cloud namespace pinned to CPU 1, the edge TorchServe and the
router in the edge namespace pinned to CPU 0 (the paper's edge container had one CPU), and runs a
client in the device namespace that sends test images through the router. Every exit and offload
decision is made live by the running system. Systems (router parameters):

- `expert`: the classifier routes each image to its expert (early exit, offload when unsure);
- `conventional`: the pristine-trained model for every image (expert=conventional);
- `edge_only`: experts, never offloading (mode=edge_only: the most confident branch answers);
- `cloud_only`: the image goes to the cloud, which runs the whole conventional model
  (mode=cloud_only, archive `full_conventional`).

Grid: every distortion type and level; p_tar 0.7 / 0.8 / 0.9 for the early-exit systems; offload
compression fp32 / fp16 / int8 for `expert` at p_tar 0.8. Per request: latency, exit, offloaded
bytes, correct or not (`records_<profile>.csv`). Per profile results are kept, so a rerun resumes
with the missing profiles (`--force` redoes them). Bounded by `--max-minutes` per profile.
`python -m benchmarks.latency_report` (run at the end automatically) writes the summary CSV,
plots and Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

from core.cli import progress, run_cli, write_json
from core.errors import UserInputError

CELLS = [("pristine", 0)] + [("gaussian_blur", v) for v in (1, 2, 3, 4, 5)] + \
    [("gaussian_noise", v) for v in (5, 10, 20, 30, 40)]
RECORD_FIELDS = ("profile", "system", "p_tar", "compression", "distortion", "level", "index", "label",
                 "status", "latency_ms", "class", "exit", "expert", "offloaded", "offloaded_bytes",
                 "degraded", "correct")
EDGE_MODELS = ["distortion_classifier", "edge_pristine", "edge_gaussian_blur", "edge_gaussian_noise",
               "edge_conventional"]
CLOUD_MODELS = ["cloud_pristine", "cloud_gaussian_blur", "cloud_gaussian_noise", "cloud_conventional",
                "full_conventional"]


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


# -- the client (runs inside the device namespace) ------------------------------------------------
def client(args: argparse.Namespace) -> int:
    import numpy as np  # noqa: F401 - imported here so the orchestrator stays light
    import requests

    from core.imaging import encode_image
    from training.datasets import DistortionPolicy, distorted_image, load_source

    source = load_source("fashion-mnist", "test", limit=args.per_cell, data_root=args.data_root)
    session = requests.Session()
    stop_at = time.time() + 60 * args.max_minutes
    bodies = {}
    for name, level in CELLS:
        policy = DistortionPolicy(fixed=(name, level), seed=11)
        bodies[(name, level)] = [encode_image(distorted_image(source, i, args.size, policy)[0], "png")
                                 for i in range(len(source))]
    with open(args.records, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RECORD_FIELDS)
        writer.writeheader()
        # warm every path once (connections, worker caches) before anything is timed
        for cfg in configs():
            session.post(f"{args.router}/v1/classify", data=bodies[CELLS[0]][0], params=params_for(cfg),
                         timeout=30)
        jobs = [(cfg, cell) for cfg in configs() for cell in CELLS]
        for cfg, (name, level) in progress(jobs, desc=args.profile, quiet=args.quiet):
            for i, body in enumerate(bodies[(name, level)]):
                if time.time() > stop_at:
                    print(f"time budget of {args.max_minutes:g} min spent: stopping", file=sys.stderr)
                    return 0
                t = time.perf_counter()
                try:
                    r = session.post(f"{args.router}/v1/classify", data=body, params=params_for(cfg),
                                     timeout=30)
                    status = r.status_code
                    answer = r.json() if status == 200 else {}
                except (requests.RequestException, ValueError):
                    status, answer = 0, {}
                latency = (time.perf_counter() - t) * 1000
                label = source.label(i)
                writer.writerow({
                    "profile": args.profile, "system": cfg["system"], "p_tar": cfg["p_tar"] or "",
                    "compression": cfg["compression"], "distortion": name, "level": level, "index": i,
                    "label": label, "status": status, "latency_ms": round(latency, 3),
                    "class": answer.get("class", ""), "exit": answer.get("exit", ""),
                    "expert": answer.get("expert", ""), "offloaded": int(bool(answer.get("offloaded"))),
                    "offloaded_bytes": answer.get("offloaded_bytes", 0),
                    "degraded": int(bool(answer.get("degraded"))),
                    "correct": int(answer.get("class") == label) if status == 200 else "",
                })
            f.flush()
    return 0


# -- the orchestrator -----------------------------------------------------------------------------
@contextlib.contextmanager
def live_system(profile, *, model_store: str, run_dir: str, backend: str = "auto",
                max_minutes: float = 20):
    """The live system over one emulated profile; yields (link, router URL, run dir, env, router).

    Cloud TorchServe in the cloud namespace on CPU 1; edge TorchServe and the router in the edge
    namespace on CPU 0; the router listens on the edge's device-side address. Everything is
    stopped and the namespaces removed on exit, also on failure.
    """
    from benchmarks import netem

    run_dir = Path(run_dir).resolve() / profile.name
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    with netem.Link(profile, backend=backend, max_seconds=60 * (max_minutes + 10)) as link:

        def ts(role: str, action: str, host: str, cpu: str, models: list[str]) -> None:
            cmd = [py, "-m", "edge_router.torchserve", action, role, "--run-dir", str(run_dir),
                   "--host", host]
            if action == "start":
                cmd += ["--model-store", str(Path(model_store).resolve()), "--wait-s", "300",
                        "--models", *models]
            subprocess.run(link.exec_args(role, ["taskset", "-c", cpu, *cmd]), check=action == "start",
                           env=env, timeout=400)

        router = None
        try:
            ts("cloud", "start", netem.ADDR["cloud"], "1", CLOUD_MODELS)
            ts("edge", "start", "127.0.0.1", "0", EDGE_MODELS)
            router = subprocess.Popen(link.exec_args("edge", [
                "taskset", "-c", "0", py, "-m", "edge_router", "--host", netem.ADDR["edge_dev"],
                "--port", "8000", "--run-dir", str(run_dir), "--log-level", "WARNING",
                "--cloud-url", f"http://{netem.ADDR['cloud']}:8090",
                "--cloud-management-url", f"http://{netem.ADDR['cloud']}:8091",
                "--deadline-ms", "10000"]), env=env)
            url = f"http://{netem.ADDR['edge_dev']}:8000"
            # polled from the device namespace, the only place that reaches the router's address
            wait = subprocess.run(link.exec_args("dev", [py, "-c", _WAIT_HEALTHY, url]), env=env,
                                  timeout=120)
            if wait.returncode != 0:
                raise RuntimeError(f"the router in the edge namespace did not become healthy "
                                   f"({profile.name})")
            yield link, url, run_dir, env, router
        finally:
            if router is not None:
                router.terminate()
                try:
                    router.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    router.kill()
            ts("edge", "stop", "127.0.0.1", "0", [])
            ts("cloud", "stop", netem.ADDR["cloud"], "1", [])


def run_profile(profile, args, out: Path) -> Path:
    records = out / f"records_{profile.name}.csv"
    started = time.time()
    with live_system(profile, model_store=args.model_store, run_dir=args.run_dir, backend=args.backend,
                     max_minutes=args.max_minutes) as (link, url, _, env, _router):
        tmp_records = records.with_suffix(".partial")
        client_cmd = [sys.executable, "-m", "benchmarks.latency", "--client", "--router", url,
                      "--profile", profile.name, "--per-cell", str(args.per_cell), "--records",
                      str(tmp_records), "--max-minutes", str(args.max_minutes), "--size", str(args.size)]
        if args.data_root:
            client_cmd += ["--data-root", args.data_root]
        if args.quiet:
            client_cmd.append("--quiet")
        subprocess.run(link.exec_args("dev", client_cmd), check=True, env=env,
                       timeout=60 * (args.max_minutes + 5))
        tmp_records.replace(records)
        backend = link.backend
    print(f"{profile.name}: done in {time.time() - started:.0f} s ({backend} backend)")
    return records


_WAIT_HEALTHY = ("import sys; from edge_router.app import wait_until_healthy; "
                 "wait_until_healthy(sys.argv[1], timeout=100)")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--profiles", nargs="+", default=["lan", "sao_paulo", "fremont", "paris"])
    p.add_argument("--profiles-file", default=None)
    p.add_argument("--per-cell", type=int, default=15, help="test images per distortion cell")
    p.add_argument("--size", type=int, default=64, help="image size sent (the models' input size)")
    p.add_argument("--model-store", default="model_store",
                   help="archives incl. full_conventional (python -m export.archive --full)")
    p.add_argument("--run-dir", default="run/latency")
    p.add_argument("--backend", default="auto", choices=("auto", "netem", "tun"))
    p.add_argument("--max-minutes", type=float, default=20, help="per profile")
    p.add_argument("--out", default="docs/results/latency")
    p.add_argument("--force", action="store_true", help="redo profiles that already have records")
    p.add_argument("--data-root", default=None)
    p.add_argument("--quiet", action="store_true")
    # the client half (runs inside the device namespace)
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--router", default=None, help=argparse.SUPPRESS)
    p.add_argument("--profile", default=None, help=argparse.SUPPRESS)
    p.add_argument("--records", default=None, help=argparse.SUPPRESS)
    return p


def main(args: argparse.Namespace) -> int:
    if args.client:
        return client(args)
    from benchmarks import latency_report, netem

    profiles = netem.load_profiles(args.profiles_file)
    unknown = [n for n in args.profiles if n not in profiles]
    if unknown:
        raise UserInputError(f"unknown profile(s): {', '.join(unknown)}")
    store = Path(args.model_store)
    missing = [m for m in EDGE_MODELS + CLOUD_MODELS if not (store / f"{m}.mar").is_file()]
    if missing:
        raise UserInputError(f"{store} lacks {', '.join(missing)}: run python -m export.archive --full")
    if args.per_cell < 1 or args.max_minutes <= 0:
        raise UserInputError("--per-cell and --max-minutes must be positive")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    for name in args.profiles:
        if (out / f"records_{name}.csv").is_file() and not args.force:
            print(f"{name}: records exist, skipped (--force to redo)")
            continue
        run_profile(profiles[name], args, out)
    meta = {"command": " ".join(["python -m benchmarks.latency", *sys.argv[1:]]),
            "wall_time_s": round(time.time() - started, 1), "per_cell": args.per_cell,
            "profiles": {n: vars(profiles[n]) for n in args.profiles}}
    write_json(out / "run.json", meta)
    latency_report.write_report(out)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
