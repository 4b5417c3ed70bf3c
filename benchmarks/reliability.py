"""Reliability: fuzzing the live endpoints, fault injection and a soak run, with nothing lost.

Two modes:

    python -m benchmarks.reliability --out docs/results                        # own stack, everything
    python -m benchmarks.reliability --parts fuzz --fuzz-inputs 2000 --out /tmp/rel
    python -m benchmarks.reliability --router http://127.0.0.1:8000 --cloud http://127.0.0.1:8090 \\
        --cloud-key-file run/cloud/key_file.json --parts fuzz soak --fuzz-inputs 2000 --soak-minutes 2

**Own stack** (the default): starts real TorchServe instances and the router on loopback test
ports (and, for the slow and lossy cloud, an emulated link from `benchmarks.netem`), and stops
them at the end.

**Existing deployment** (`--router URL`, optionally `--cloud URL` and `--cloud-key-file`): sends
the same bounded fuzz and soak to a system that is already running; nothing is created, started,
stopped or signalled. What needs more than that is skipped, and the result says so:

- the cloud-tensor fuzz without `--cloud`;
- worker deaths (the deployment's TorchServe processes are not this run's) and the check against
  the in-process reference pipeline (the deployment's archives are not known): the fuzz instead
  checks that the router answers 12 images after the fuzz as it did before;
- every fault scenario (each stops, restarts or kills a process, or needs an emulated link);
- the soak's RSS samples.

Results go to `run/existing/reliability` unless `--out` says otherwise; each part records
`"mode": "existing deployment"` and the target URLs. Only loopback URLs are accepted unless
`--allow-remote` is given.

Parts:

- **fuzz**: random and mutated images (bit flips, truncations, lying PNG/JPEG headers with huge
  dimensions), wrong content types and query strings against the router, and random or mutated
  binary tensors with lying headers against the cloud handler (a quarter of `--fuzz-inputs`).
  Counts 5xx, hung requests (no answer within 10 s) and worker deaths (TorchServe worker processes
  that changed), then checks that the servers still answer correctly (against the in-process
  pipeline).
- **faults** (own stack only): the cloud stopped; the cloud restarted mid-run; an edge worker killed
  mid-load (TorchServe restarts it); the router restarted; the cloud slowed past the deadline and a
  lossy link (emulated). Every request must end as a correct answer, a degraded edge answer or a
  clear error within its deadline; `lost` counts the rest.
- **soak**: steady concurrent load on the router for `--soak-minutes`; errors, p99 per minute and
  RSS growth of every process after warm-up.

Writes `reliability.json` and `reliability.md` into `--out`. A rerun replaces the parts it runs
and keeps the others; every part (every fault row) records the command, date and mode of the
invocation that produced it (`produced_by`), and `invocations` lists every invocation. Bounded in
requests and time.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import shlex
import struct
import subprocess
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import requests

from benchmarks import target
from core import wire
from core.cli import progress, run_cli, write_json
from core.errors import UserInputError
from core.imaging import encode_image
from edge_router.app import wait_until_healthy

EDGE_MODELS = ["distortion_classifier", "edge_pristine", "edge_gaussian_blur", "edge_gaussian_noise"]
CLOUD_MODELS = ["cloud_pristine", "cloud_gaussian_blur", "cloud_gaussian_noise"]
PORTS = {"edge": (18380, 18381, 18382, 17370, 17371), "cloud": (18390, 18391, 18392, 17390, 17391)}
ROUTER_PORT = 18300
HUNG_S = 10.0
LOOPBACK_SCENARIOS = ("cloud_stopped", "cloud_restarted_mid_run", "edge_worker_killed", "router_restarted")
LINK_SCENARIOS = ("cloud_slowed_past_deadline", "lossy_link_10pct")
DEFAULT_OUT = "docs/results"
EXISTING_OUT = "run/existing/reliability"
OWN_STACK_OPTIONS = ("model_store", "run_dir", "no_link_faults")
SKIPPED_FAULT = (
    "not run against an existing deployment: the scenario stops, restarts or kills its "
    "processes (or needs an emulated link), which this run did not start and leaves alone"
)
NOT_OBSERVED_WORKERS = "not observed: the existing deployment's TorchServe processes are not this run's"
NOT_SAMPLED_RSS = "not sampled: the existing deployment's processes are not this run's"


# -- the system on loopback ------------------------------------------------------------------------
class LoopbackSystem:
    def __init__(self, store: Path, run_dir: Path, deadline_ms: float):
        from edge_router.torchserve import Ports, instance

        self.store, self.run_dir, self.deadline_ms = store, run_dir, deadline_ms
        self.insts = {r: instance(r, run_dir=run_dir, ports=Ports(*PORTS[r])) for r in ("edge", "cloud")}
        self.router: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{ROUTER_PORT}"
        self.cloud_url = self.insts["cloud"].inference_url

    def start_ts(self, role: str) -> None:
        from edge_router.torchserve import start

        start(self.insts[role], self.store, EDGE_MODELS if role == "edge" else CLOUD_MODELS, wait_s=240)

    def stop_ts(self, role: str) -> None:
        from edge_router.torchserve import stop

        stop(self.insts[role])

    def start_router(self) -> None:
        args = [
            sys.executable,
            "-m",
            "edge_router",
            "--port",
            str(ROUTER_PORT),
            "--run-dir",
            str(self.run_dir),
            "--log-level",
            "WARNING",
            "--refresh-s",
            "1",
            "--deadline-ms",
            str(self.deadline_ms),
        ]
        for role, inst in self.insts.items():
            args += [f"--{role}-url", inst.inference_url, f"--{role}-management-url", inst.management_url]
        self.router = subprocess.Popen(args)
        wait_until_healthy(self.url, proc=self.router)

    def stop_router(self) -> None:
        if self.router is not None:
            self.router.terminate()
            try:
                self.router.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.router.kill()
            self.router = None

    def workers(self, role: str) -> set[int]:
        pid_file = self.insts[role].workdir / "tmp" / ".model_server.pid"
        try:
            frontend = psutil.Process(int(pid_file.read_text()))
            return {c.pid for c in frontend.children(recursive=True)}
        except (OSError, ValueError, psutil.Error):
            return set()

    def processes(self) -> dict[str, psutil.Process]:
        out = {}
        if self.router is not None:
            out["router"] = psutil.Process(self.router.pid)
        for role in self.insts:
            pid_file = self.insts[role].workdir / "tmp" / ".model_server.pid"
            try:
                frontend = psutil.Process(int(pid_file.read_text()))
            except (OSError, ValueError, psutil.Error):
                continue
            out[f"{role}_frontend_java"] = frontend
            for i, c in enumerate(sorted(frontend.children(recursive=True), key=lambda p: p.pid)):
                out[f"{role}_worker_{i}"] = c
        return out

    def cloud_headers(self, n: int | str) -> dict:
        return {
            "Authorization": f"Bearer {self.insts['cloud'].keys()['inference']}",
            wire.HEADER_LENGTH: str(n),
        }


class ExistingSystem:
    """A deployment that is already running: reached by URL, never started, stopped or signalled."""

    def __init__(self, targets: dict, cloud_key_file: str | None):
        from edge_router.torchserve import read_keys

        self.url = targets["router"]
        self.cloud_url = targets.get("cloud")
        self._token = read_keys(Path(cloud_key_file))["inference"] if cloud_key_file else None

    def workers(self, role: str) -> None:
        return None  # its processes are not ours to watch

    def processes(self) -> dict[str, psutil.Process]:
        return {}

    def cloud_headers(self, n: int | str) -> dict:
        headers = {wire.HEADER_LENGTH: str(n)}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers


@contextmanager
def loopback_system(store: Path, run_dir: Path, deadline_ms: float):
    system = LoopbackSystem(store, run_dir, deadline_ms)
    try:
        system.start_ts("cloud")
        system.start_ts("edge")
        system.start_router()
        yield system
    finally:
        system.stop_router()
        for role in ("edge", "cloud"):
            system.stop_ts(role)


def test_images(n: int, seed: int = 0) -> list[np.ndarray]:
    from training.datasets import DistortionPolicy, distorted_image, load_source

    source = load_source("fashion-mnist", "test", limit=n)
    policy = DistortionPolicy(seed=seed)
    return [distorted_image(source, i, 64, policy)[0] for i in range(n)]


# -- fuzz ------------------------------------------------------------------------------------------
def png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression-bomb shape) with a tiny body."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0 and b:  # bit flips
        for _ in range(rng.randint(1, 20)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncation
        b = b[: rng.randrange(len(b) + 1)]
    elif kind == 2 and b:  # overwrite a run
        i = rng.randrange(len(b))
        b[i : i + rng.randint(1, 64)] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == 3:  # insert garbage
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 256)))
    else:  # duplicate a slice
        i = rng.randrange(len(b) + 1)
        b[i:i] = b[: rng.randint(0, 512)]
    return bytes(b)


def fuzz_router_case(rng: random.Random, seeds: list[bytes]) -> tuple[bytes, dict, dict]:
    kind = rng.randrange(8)
    headers = {
        "Content-Type": rng.choice(
            [
                "image/png",
                "image/jpeg",
                "application/json",
                "text/plain",
                "application/octet-stream",
                "multipart/form-data",
            ]
        )
    }
    params = {}
    if rng.random() < 0.3:
        params = rng.choice(
            [
                {"threshold": rng.choice(["0", "-1", "1.5", "nan", "inf", "abc", "0.5"])},
                {"compression": rng.choice(["fp64", "", "INT8", "fp16"])},
                {"expert": rng.choice(["../x", "pristine", "a" * 100, "gaussian_blur"])},
                {"deadline_ms": rng.choice(["0", "1", "-5", "1e9", "x"])},
                {"mode": rng.choice(["cloud_only", "edge_only", "bogus"])},
                {"unknown": "1"},
            ]
        )
    if kind == 0:
        body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 4096)))
    elif kind in (1, 2, 3):
        body = mutate(rng.choice(seeds), rng)
    elif kind == 4:
        body = rng.choice(seeds)[: rng.randint(0, 300)]
    elif kind == 5:
        body = png_with_size(
            rng.choice([0, 1, 70000, 2**31 - 1, 100000]), rng.choice([0, 1, 50000, 2**31 - 1])
        )
    elif kind == 6:
        body = b"\xff\xd8\xff" + bytes(rng.randrange(256) for _ in range(rng.randint(0, 2000)))
    else:
        body = rng.choice(seeds)  # a valid image with odd headers or parameters
    return body, params, headers


def fuzz_cloud_case(rng: random.Random, shape: tuple[int, ...]) -> tuple[bytes, str]:
    x = np.random.default_rng(rng.randrange(2**31)).normal(0, 3, (rng.randint(1, 3), *shape))
    body, n = wire.encode(
        x.astype(np.float32), name="stage2", compression=rng.choice(["fp32", "fp16", "int8"])
    )
    kind = rng.randrange(5)
    if kind == 0:
        body = mutate(body, rng)
    elif kind == 1:
        n = rng.choice([0, -1, 1, n - 1, n + 1, len(body), 10**9])
    elif kind == 2:
        header = json.loads(body[:n])
        spec = header["inputs"][0]
        spec[rng.choice(["shape", "datatype", "name", "parameters"])] = rng.choice(
            [[1, 160, 2, 2 * rng.randint(1, 4)], "FP64", "", {"binary_data_size": -1}, [10**6] * 4, None]
        )
        head = json.dumps(header).encode()
        body, n = head + body[n:], len(head)
    elif kind == 3:
        body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 3000)))
    return body, str(n)


def run_fuzz(system, args, reference) -> dict:
    """The fuzz; `reference` is the in-process pipeline, or None to compare the router's answers
    after the fuzz with its answers before it (an existing deployment, whose archives are unknown)."""
    rng = random.Random(args.seed)
    images = test_images(24, seed=3)
    seeds = [encode_image(im, rng.choice(["png", "jpeg"])) for im in images]
    expert, shape = split_of(system)
    cloud_model = f"cloud_{expert}"
    n_cloud = args.fuzz_inputs // 4
    first = 0
    if system.cloud_url is None:
        first = n_cloud  # the cloud share is not sent
        print(f"cloud-tensor fuzz skipped: no --cloud given ({n_cloud} inputs not sent)", flush=True)
    elif reference is None:
        check_cloud_answers(system, cloud_model, shape)
    before = None if reference is not None else answers(system, images[:12])
    workers_before = {r: system.workers(r) for r in ("edge", "cloud")}
    statuses: dict[str, int] = {}
    status_5xx = hung = 0
    examples = []
    session = requests.Session()
    for i in progress(range(first, args.fuzz_inputs), desc="fuzz", quiet=args.quiet):
        try:
            if i < n_cloud:
                body, n = fuzz_cloud_case(rng, shape)
                r = session.post(
                    f"{system.cloud_url}/predictions/{cloud_model}",
                    data=body,
                    headers=system.cloud_headers(n),
                    timeout=HUNG_S,
                )
            else:
                body, params, headers = fuzz_router_case(rng, seeds)
                r = session.post(
                    f"{system.url}/v1/classify", data=body, params=params, headers=headers, timeout=HUNG_S
                )
            code = r.status_code
        except requests.Timeout:
            hung += 1
            code = "hung"
            session = requests.Session()
        except requests.ConnectionError:
            code = "connection_error"
            session = requests.Session()
        statuses[str(code)] = statuses.get(str(code), 0) + 1
        if isinstance(code, int) and code >= 500:
            status_5xx += 1
            if len(examples) < 10:
                examples.append({"input": i, "status": code, "body": r.text[:200]})
    workers_after = {r: system.workers(r) for r in ("edge", "cloud")}
    out = {
        "inputs": args.fuzz_inputs - first,
        "router_inputs": args.fuzz_inputs - n_cloud,
        "cloud_inputs": n_cloud - first,
        "status_5xx": status_5xx,
        "hung": hung,
        "statuses": statuses,
        "examples_5xx": examples,
    }
    if first:
        out["cloud_note"] = "cloud-tensor fuzz skipped: no --cloud given"
    if workers_before["edge"] is None:
        out.update(worker_deaths=None, worker_deaths_note=NOT_OBSERVED_WORKERS)
    else:
        out["worker_deaths"] = sum(len(workers_before[r] - workers_after[r]) for r in workers_before)
    if reference is not None:
        out["still_correct_after"] = check_still_correct(system, reference, images[:12])
        out["still_correct_checked_against"] = "the in-process reference pipeline (model store)"
    else:
        out["still_correct_after"] = before is not None and answers(system, images[:12]) == before
        out["still_correct_checked_against"] = "the router's answers to the same 12 images before the fuzz"
    return out


def split_of(system) -> tuple[str, list[int]]:
    """An expert the router uses (pristine if it has it) and the per-sample shape of its split tensor."""
    experts = requests.get(f"{system.url}/v1/experts", timeout=10).json()["experts"]
    if not experts:
        raise UserInputError(f"the router at {system.url} has no experts")
    name = "pristine" if "pristine" in experts else sorted(experts)[0]
    return name, experts[name]["split"]["shape"][1:]


def check_cloud_answers(system, model: str, shape: list[int]) -> None:
    """A one-line error unless the cloud handler answers a valid tensor (token, model present)."""
    body, n = wire.encode(np.zeros((1, *shape), np.float32), name="stage2", compression="fp32")
    try:
        r = requests.post(
            f"{system.cloud_url}/predictions/{model}", data=body, headers=system.cloud_headers(n), timeout=30
        )
    except requests.RequestException as exc:
        raise UserInputError(f"no cloud answers at {system.cloud_url} ({type(exc).__name__})") from None
    if r.status_code != 200:
        hint = " (give --cloud-key-file)" if r.status_code in (401, 403) else ""
        raise UserInputError(
            f"the cloud at {system.cloud_url} answered {r.status_code} to a valid tensor for {model}{hint}"
        )


def answers(system, images) -> list | None:
    """(class, exit, expert) of the router's answer to each image at p_tar 0.8; None on any error."""
    out = []
    for im in images:
        try:
            r = requests.post(
                f"{system.url}/v1/classify",
                data=encode_image(im, "png"),
                params={"threshold": 0.8},
                timeout=30,
            )
            a = r.json() if r.status_code == 200 else None
        except (requests.RequestException, ValueError):
            a = None
        if a is None:
            return None
        out.append((a.get("class"), a.get("exit"), a.get("expert")))
    return out


def check_still_correct(system: LoopbackSystem, reference, images) -> bool:
    expected = reference.infer(images, 0.8)
    for im, ref in zip(images, expected, strict=True):
        r = requests.post(
            f"{system.url}/v1/classify", data=encode_image(im, "png"), params={"threshold": 0.8}, timeout=30
        )
        if r.status_code != 200:
            return False
        got = r.json()
        if (got["class"], got["exit"], got["expert"]) != (ref["class"], ref["exit"], ref["expert"]):
            return False
    return True


# -- faults ----------------------------------------------------------------------------------------
class Load:
    """Background clients sending images; every request's fate is recorded."""

    def __init__(
        self,
        url: str,
        bodies: list[tuple[bytes, int]],
        deadline_ms: float,
        clients: int = 2,
        threshold: float = 0.8,
    ):
        self.url, self.bodies, self.deadline_ms = url, bodies, deadline_ms
        self.threshold = threshold
        self.records: list[dict] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(k, clients), daemon=True) for k in range(clients)
        ]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def _run(self, k: int, step: int) -> None:
        session = requests.Session()
        i = k
        while not self.stop.is_set():
            body, label = self.bodies[i % len(self.bodies)]
            i += step
            t = time.perf_counter()
            rec = {"label": label}
            try:
                r = session.post(
                    f"{self.url}/v1/classify",
                    data=body,
                    params={"threshold": self.threshold, "deadline_ms": self.deadline_ms},
                    timeout=self.deadline_ms / 1000 + HUNG_S,
                )
                rec["status"] = r.status_code
                if r.status_code == 200:
                    a = r.json()
                    rec.update(correct=a["class"] == label, degraded=a["degraded"])
                else:
                    rec["reason"] = (
                        r.json().get("error", "")[:120]
                        if r.headers.get("Content-Type", "").startswith("application/json")
                        else ""
                    )
            except requests.Timeout:
                rec["status"] = "lost"
            except requests.ConnectionError as exc:
                # refused before anything was sent is a clear error; a connection dropped after the
                # request went out (reset, remote closed) is a lost request
                refused = "Connection refused" in str(exc)
                rec["status"] = "refused" if refused else "lost"
                session = requests.Session()
                if refused:
                    time.sleep(0.05)  # a client backs off instead of spinning on a closed port
            rec["seconds"] = time.perf_counter() - t
            with self.lock:
                self.records.append(rec)

    def table(self, name: str) -> dict:
        recs = self.records
        ok = [r for r in recs if r["status"] == 200]
        return {
            "scenario": name,
            "sent": len(recs),
            "correct": sum(1 for r in ok if r["correct"] and not r["degraded"]),
            "wrong": sum(1 for r in ok if not r["correct"] and not r["degraded"]),
            "degraded": sum(1 for r in ok if r["degraded"]),
            "errors": sum(1 for r in recs if r["status"] not in (200, "lost")),
            "lost": sum(1 for r in recs if r["status"] == "lost"),
            "error_statuses": sorted({str(r["status"]) for r in recs if r["status"] not in (200, "lost")}),
            "longest_s": round(max((r["seconds"] for r in recs), default=0.0), 3),
            "deadline_s": self.deadline_ms / 1000,
        }


def run_faults(system: LoopbackSystem, args) -> list[dict]:
    from training.datasets import load_source

    source = load_source("fashion-mnist", "test", limit=40)
    bodies = [(encode_image(im, "png"), source.label(i)) for i, im in enumerate(test_images(40, seed=9))]
    out = []

    def scenario(name: str, action, threshold: float = 0.8, seconds: float = 12.0) -> None:
        with Load(system.url, bodies, args.deadline_ms, threshold=threshold) as load:
            time.sleep(2)
            action()
            time.sleep(seconds)
        row = load.table(name)
        out.append(row)
        print(json.dumps(row), flush=True)

    scenario("cloud_stopped", lambda: system.stop_ts("cloud"), threshold=0.95)
    system.start_ts("cloud")
    time.sleep(3)

    def restart_cloud():
        system.stop_ts("cloud")
        system.start_ts("cloud")

    scenario("cloud_restarted_mid_run", restart_cloud, threshold=0.95)

    def kill_edge_worker():
        workers = sorted(system.workers("edge"))
        if workers:
            psutil.Process(workers[-1]).kill()

    scenario("edge_worker_killed", kill_edge_worker)

    def restart_router():
        system.stop_router()
        time.sleep(1)
        system.start_router()

    scenario("router_restarted", restart_router)
    return out


def run_link_faults(args) -> list[dict]:
    """The cloud slowed past the deadline, and a lossy link: over the emulated WAN."""
    from benchmarks import netem
    from benchmarks.latency import live_system
    from training.datasets import load_source

    source = load_source("fashion-mnist", "test", limit=40)
    rows = []
    for name, profile in (
        ("cloud_slowed_past_deadline", netem.Profile("slow", 60.0, 3000.0)),
        ("lossy_link_10pct", netem.Profile("lossy", 60.0, 60.0, loss=0.10)),
    ):
        with live_system(
            profile, model_store=args.model_store, run_dir=Path(args.run_dir) / "link", max_minutes=10
        ) as (link, url, _, env, _router):
            plan = {"deadline_ms": args.deadline_ms, "seconds": 20, "threshold": 0.95}
            result = subprocess.run(
                link.exec_args(
                    "dev",
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.reliability",
                        "--link-client",
                        "--client-router",
                        url,
                        "--plan",
                        json.dumps(plan),
                    ],
                ),
                capture_output=True,
                text=True,
                env=env,
                timeout=300,
            )
            if result.returncode != 0:
                raise RuntimeError(f"{name}: client failed: {result.stderr[-400:]}")
            row = json.loads(result.stdout.strip().splitlines()[-1])
            row["scenario"] = name
            rows.append(row)
            print(json.dumps(row), flush=True)
    del source
    return rows


def link_client(args) -> int:
    from training.datasets import load_source

    plan = json.loads(args.plan)
    source = load_source("fashion-mnist", "test", limit=40)
    bodies = [(encode_image(im, "png"), source.label(i)) for i, im in enumerate(test_images(40, seed=9))]
    with Load(args.client_router, bodies, plan["deadline_ms"], threshold=plan["threshold"]) as load:
        time.sleep(plan["seconds"])
    print(json.dumps(load.table("link")))
    return 0


# -- soak ------------------------------------------------------------------------------------------
def run_soak(system, args) -> dict:
    from training.datasets import load_source

    source = load_source("fashion-mnist", "test", limit=60)
    bodies = [(encode_image(im, "png"), source.label(i)) for i, im in enumerate(test_images(60, seed=4))]
    rss: dict[str, list[float]] = {}
    minutes: list[dict] = []
    warmup_s = 60.0
    with Load(system.url, bodies, args.deadline_ms, clients=4) as load:
        started = time.time()
        end = started + 60 * args.soak_minutes
        next_minute, seen = started + 60, 0
        while time.time() < end:
            time.sleep(5)
            for name, proc in system.processes().items():
                try:
                    rss.setdefault(name, []).append((time.time() - started, proc.memory_info().rss / 2**20))
                except psutil.Error:
                    pass
            if time.time() >= next_minute:
                with load.lock:
                    recs = load.records[seen:]
                    seen = len(load.records)
                lat = [r["seconds"] * 1000 for r in recs if r["status"] == 200]
                minutes.append(
                    {
                        "minute": len(minutes) + 1,
                        "requests": len(recs),
                        "errors": sum(1 for r in recs if r["status"] != 200),
                        "p50_ms": round(float(np.median(lat)), 2) if lat else None,
                        "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat else None,
                    }
                )
                print(json.dumps(minutes[-1]), flush=True)
                next_minute += 60
    table = load.table("soak")
    growth = {}
    for name, samples in rss.items():
        after = [v for t, v in samples if t >= warmup_s]
        if len(after) >= 2:
            growth[name] = {
                "after_warmup_mb": round(after[0], 1),
                "end_mb": round(after[-1], 1),
                "growth": round(after[-1] / after[0] - 1, 4),
            }
    p99s = [m["p99_ms"] for m in minutes if m["p99_ms"] is not None]
    note = {"rss_note": NOT_SAMPLED_RSS} if isinstance(system, ExistingSystem) else {}
    return {
        **note,
        "minutes": args.soak_minutes,
        "clients": 4,
        "requests": table["sent"],
        "errors": table["errors"] + table["lost"],
        "degraded": table["degraded"],
        "per_minute": minutes,
        "rss": growth,
        "rss_growth_max": max((g["growth"] for g in growth.values()), default=None),
        "p99_first_last_ms": [p99s[0], p99s[-1]] if p99s else None,
    }


# -- CLI -------------------------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    p = target.parser(
        "benchmarks.reliability",
        __doc__,
        own="starts TorchServe and the router on loopback test ports (and an\n    emulated link for "
        "two fault scenarios), runs fuzz, faults and soak, then stops everything.",
        existing="fuzz and soak against a system that is already running;\n    nothing is created, "
        "started, stopped or signalled, so the fault scenarios are skipped (and\n    the cloud fuzz "
        "without --cloud); loopback URLs only unless --allow-remote.",
    )
    p.add_argument(
        "--parts", nargs="+", default=["fuzz", "faults", "soak"], choices=("fuzz", "faults", "soak")
    )
    p.add_argument("--fuzz-inputs", type=int, default=10000, help="in all; a quarter go to the cloud handler")
    p.add_argument("--soak-minutes", type=float, default=10.0)
    p.add_argument("--deadline-ms", type=float, default=1000.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", default=None, help=f"results folder (default: {DEFAULT_OUT}; with --router: {EXISTING_OUT})"
    )
    p.add_argument("--quiet", action="store_true")
    own = p.add_argument_group("own stack (the default: TorchServe and router started here)")
    own.add_argument("--model-store", default=None, help="archives (default: model_store)")
    own.add_argument("--run-dir", default=None, help="working folders (default: run/reliability)")
    own.add_argument(
        "--no-link-faults",
        action="store_true",
        default=None,
        help="skip the emulated-link scenarios (their rows of an earlier run are kept)",
    )
    target.add_existing_options(p, cloud=True)
    # the client half of the emulated-link scenarios (runs inside the device namespace)
    p.add_argument("--link-client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--client-router", default=None, help=argparse.SUPPRESS)
    p.add_argument("--plan", default=None, help=argparse.SUPPRESS)
    return p


def main(args: argparse.Namespace) -> dict | int:
    if args.link_client:
        return link_client(args)
    if args.fuzz_inputs < 1 or args.soak_minutes <= 0 or args.deadline_ms <= 0:
        raise UserInputError("--fuzz-inputs, --soak-minutes and --deadline-ms must be positive")
    targets = target.existing_targets(args, OWN_STACK_OPTIONS)
    if not targets:
        store = Path(args.model_store or "model_store")
        missing = [m for m in EDGE_MODELS + CLOUD_MODELS if not (store / f"{m}.mar").is_file()]
        if missing:
            raise UserInputError(f"{store} lacks {', '.join(missing)}: run python -m export.archive")
    out = Path(args.out or (EXISTING_OUT if targets else DEFAULT_OUT))
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "reliability.json"
    result = load_result(result_path)
    prov = target.provenance("benchmarks.reliability", targets, None if targets else store)
    result["invocations"].append({**prov, "parts": list(args.parts)})
    if targets:
        run_existing(ExistingSystem(targets, args.cloud_key_file), args, result, prov)
    else:
        run_own_stack(store, args, result, prov)
    write_json(result_path, result)
    write_markdown(result, out / "reliability.md")
    return result


def run_own_stack(store: Path, args, result: dict, prov: dict) -> None:
    from export.pipeline import Pipeline

    run_dir = Path(args.run_dir or "run/reliability").resolve()
    with loopback_system(store, run_dir / "loopback", args.deadline_ms) as system:
        if "fuzz" in args.parts:
            result["fuzz"] = {**run_fuzz(system, args, Pipeline(store)), "produced_by": prov}
            print(json.dumps({k: v for k, v in result["fuzz"].items() if k != "examples_5xx"}))
        if "faults" in args.parts:
            kept = [f for f in result.get("faults", []) if f["scenario"] in LINK_SCENARIOS]
            result["faults"] = [{**row, "produced_by": prov} for row in run_faults(system, args)]
            if args.no_link_faults:  # keep the emulated-link rows of an earlier run (and their provenance)
                result["faults"] += kept
        if "soak" in args.parts:
            result["soak"] = {**run_soak(system, args), "produced_by": prov}
    if "faults" in args.parts and not args.no_link_faults:
        result["faults"] += [{**row, "produced_by": prov} for row in run_link_faults(args)]


def run_existing(system: ExistingSystem, args, result: dict, prov: dict) -> None:
    """Fuzz and soak against a running deployment; the fault scenarios are recorded as skipped."""
    target.check_router_answers(system.url)
    if "fuzz" in args.parts:
        result["fuzz"] = {**run_fuzz(system, args, None), "produced_by": prov}
        print(json.dumps({k: v for k, v in result["fuzz"].items() if k != "examples_5xx"}))
    if "faults" in args.parts:
        result["faults"] = [
            {"scenario": name, "skipped": SKIPPED_FAULT, "produced_by": prov}
            for name in LOOPBACK_SCENARIOS + LINK_SCENARIOS
        ]
        print(f"faults skipped: {SKIPPED_FAULT}", flush=True)
    if "soak" in args.parts:
        result["soak"] = {**run_soak(system, args), "produced_by": prov}


def load_result(path: Path) -> dict:
    """reliability.json of earlier invocations, each part naming the invocation that produced it.

    A file written before per-part provenance had one `command`, that of its last invocation; the
    parts that command ran (read from its --parts and --no-link-faults) are attributed to it, the
    others get `"produced_by": null` (unknown).
    """
    result = json.loads(path.read_text()) if path.is_file() else {}
    if "invocations" in result:
        return result
    command = result.pop("command", None)
    result["invocations"] = (
        [{"command": command, "date": None, "note": "the last invocation before per-part provenance"}]
        if command
        else []
    )
    made = legacy_parts(command)
    by = {
        "command": command,
        "date": None,
        "mode": target.MODE_OWN,
        "inferred": "attributed from the one command of a file written before per-part provenance",
    }
    for part in ("fuzz", "soak"):
        if part in result:
            result[part].setdefault("produced_by", by if part in made else None)
    for row in result.get("faults", []):
        made_it = ("link" if row["scenario"] in LINK_SCENARIOS else "faults") in made
        row.setdefault("produced_by", by if made_it else None)
    return result


def legacy_parts(command: str | None) -> set[str]:
    """What an old invocation wrote: its --parts, and "link" when it ran the emulated-link faults."""
    prefix = ["python", "-m", "benchmarks.reliability"]
    try:
        words = shlex.split(command or "")
    except ValueError:
        return set()
    if words[:3] != prefix:
        return set()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            old = get_args_parser().parse_args(words[3:])
    except SystemExit:
        return set()
    parts = set(old.parts)
    if "faults" in parts and not old.no_link_faults:
        parts.add("link")
    return parts


def write_markdown(r: dict, path: Path) -> None:
    lines = [
        "# Reliability: fuzzing, faults and soak against the live system",
        "",
        f"Invocations that wrote this file: {len(r.get('invocations', []))} (listed in reliability.json); "
        "each part names the one that produced it.",
        "",
    ]
    if "fuzz" in r:
        f = r["fuzz"]
        deaths = (
            f"{f['worker_deaths']} worker deaths"
            if f.get("worker_deaths") is not None
            else f"worker deaths {f.get('worker_deaths_note', 'not observed')}"
        )
        lines += [
            "## Fuzz",
            "",
            f"Produced by: {target.describe(f.get('produced_by'))}",
            "",
            f"{f['inputs']} inputs ({f['router_inputs']} to the router, {f['cloud_inputs']} "
            f"to the cloud handler{'; ' + f['cloud_note'] if f.get('cloud_note') else ''}): "
            f"**{f['status_5xx']} 5xx, {deaths}, {f['hung']} hung**; statuses {f['statuses']}; "
            f"servers still correct afterwards: **{f['still_correct_after']}**"
            + (f" (against {against})" if (against := f.get("still_correct_checked_against")) else "")
            + ".",
            "",
        ]
    if "faults" in r:
        ran = [x for x in r["faults"] if "skipped" not in x]
        skipped = [x for x in r["faults"] if "skipped" in x]
        runs: list = []
        for x in r["faults"]:
            if x.get("produced_by") not in runs:
                runs.append(x.get("produced_by"))
        lines += ["## Faults", ""]
        if ran:
            lines += [
                "| scenario | sent | correct | wrong | degraded | clear errors | lost | "
                "longest (s) | deadline (s) | error statuses | run |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {x['scenario']} | {x['sent']} | {x['correct']} | {x['wrong']} | {x['degraded']} | "
                f"{x['errors']} | {x['lost']} | {x['longest_s']} | {x['deadline_s']} | "
                f"{', '.join(x['error_statuses'])} | [{runs.index(x.get('produced_by')) + 1}] |"
                for x in ran
            ]
            lines += [
                "",
                "`wrong` are answers whose class is not the label: the model's own error, not a fault.",
                "",
            ]
        for x in skipped:
            lines.append(
                f"- {x['scenario']}: skipped [{runs.index(x.get('produced_by')) + 1}]: {x['skipped']}"
            )
        if skipped:
            lines.append("")
        lines += [f"[{i + 1}] {target.describe(by)}  " for i, by in enumerate(runs)]
        lines.append("")
    if "soak" in r:
        s = r["soak"]
        rss = (
            f"RSS growth after warm-up at most **{100 * (s['rss_growth_max'] or 0):.1f} %**"
            if s["rss"]
            else f"RSS {s.get('rss_note', 'not sampled')}"
        )
        lines += [
            "## Soak",
            "",
            f"Produced by: {target.describe(s.get('produced_by'))}",
            "",
            f"{s['minutes']} min, {s['clients']} clients, {s['requests']} requests: "
            f"**{s['errors']} errors**, {rss}, p99 first/last minute {s['p99_first_last_ms']} ms.",
            "",
        ]
        lines += [
            f"- {k}: {v['after_warmup_mb']} -> {v['end_mb']} MB ({100 * v['growth']:+.1f} %)"
            for k, v in s["rss"].items()
        ]
        lines.append("")
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
