"""Reliability: fuzzing the live endpoints, fault injection, a soak run and connection abuse.

Two modes:

    python -m benchmarks.reliability --out docs/results                        # own stack, everything
    python -m benchmarks.reliability --parts fuzz --fuzz-inputs 2000 --out /tmp/rel
    python -m benchmarks.reliability --parts abuse --abuse-seconds 8 --out /tmp/rel
    python -m benchmarks.reliability --router http://127.0.0.1:8000 --cloud http://127.0.0.1:8090 \\
        --cloud-key-file run/cloud/key_file.json --parts fuzz soak --fuzz-inputs 2000 --soak-minutes 2

**Own stack** (the default): starts the live system (`benchmarks.live.LiveSystem`: edge and cloud
TorchServe and the router, which runs the distortion classifier itself) on loopback test ports
(and, for the slow and lossy cloud, over an emulated link: `benchmarks.latency.emulated_system`),
and stops it at the end. The router gets `--deadline-ms`, `--max-in-flight` and `--max-body-bytes`
as given here. All load is sent by the one load client, `benchmarks.loadgen.LoadClient`.

**Existing deployment** (`--router URL`, optionally `--cloud URL` and `--cloud-key-file`): sends
the same bounded fuzz, soak and (loopback only) connection abuse to a system that is already
running; nothing is created, started, stopped or signalled. What needs more than that is skipped,
and the result says so:

- the cloud-tensor fuzz without `--cloud`;
- worker deaths (the deployment's TorchServe processes are not this run's) and the check against
  the in-process reference pipeline (the deployment's archives are not known): the fuzz instead
  checks that the router answers 12 images after the fuzz as it did before;
- every fault scenario (each stops, restarts or kills a process, or needs an emulated link);
- the RSS and thread samples of the router and the other processes (soak, abuse);
- the connection abuse unless the router's URL is loopback (it is a denial-of-service tool); its
  sizes follow `--max-in-flight` and `--max-body-bytes`, which should then be the deployment's.

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
  mid-load (TorchServe restarts it); the router restarted (SIGTERM: it drains); the cloud slowed
  past the deadline and a lossy link (emulated). Every request must end as a correct answer, a
  degraded edge answer or a clear error within its deadline; `lost` counts the rest.
- **soak**: steady concurrent load on the router for `--soak-minutes`; errors, p99 per minute and
  RSS growth of every process after warm-up.
- **abuse**: the connection-abuse scenarios of `benchmarks.abuse`, each held for `--abuse-seconds`:
  slowloris (300 sockets trickling headers), 1,000 idle keep-alive connections, slow large bodies
  from 50 sockets, an overload burst (64 clients above the in-flight limit) and 1,000 partial
  uploads at the body-size limit. During each, one control request a second: its p50/p99/max, the
  requests without an answer, and the router's maximum threads and RSS. A scenario passes with
  control p99 under 1 s, 0 requests without an answer and the router's RSS under 300 MB (in the
  burst the control mostly gets the 503 of the in-flight limit: it is judged on being answered,
  and fast; the burst's own answers must be 200 or a 503 with `Retry-After`).

On the own stack the router's RSS and threads are sampled during every part (every 0.5 s; the
abuse part every 0.25 s); `router_rss_mb_max_all` is the largest RSS over every part sampled, and
`checks` says, for each requirement, whether the parts in the file meet it.

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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import psutil
import requests

from benchmarks import abuse, target
from benchmarks.live import LiveSystem
from benchmarks.loadgen import LOST, LoadClient, Record
from core import wire
from core.cli import progress, run_cli, write_json
from core.errors import UserInputError
from core.imaging import DEFAULT_MAX_BYTES, encode_image
from edge_router.app import RouterConfig

EDGE_MODELS = ["edge_pristine", "edge_gaussian_blur", "edge_gaussian_noise"]
CLOUD_MODELS = ["cloud_pristine", "cloud_gaussian_blur", "cloud_gaussian_noise"]
ROUTER_MODELS = ["distortion_classifier"]  # run by the router itself, from the same model store
HUNG_S = 10.0
LOOPBACK_SCENARIOS = ("cloud_stopped", "cloud_restarted_mid_run", "edge_worker_killed", "router_restarted")
LINK_SCENARIOS = ("cloud_slowed_past_deadline", "lossy_link_10pct")
PARTS = ("fuzz", "faults", "soak", "abuse")
DEFAULT_OUT = "docs/results"
EXISTING_OUT = "run/existing/reliability"
OWN_STACK_OPTIONS = ("model_store", "run_dir", "no_link_faults")
SKIPPED_FAULT = (
    "not run against an existing deployment: the scenario stops, restarts or kills its "
    "processes (or needs an emulated link), which this run did not start and leaves alone"
)
SKIPPED_ABUSE = (
    "not run: the router's URL is not loopback, and the connection-abuse scenarios only run "
    "against this machine"
)
NOT_OBSERVED_WORKERS = "not observed: the existing deployment's TorchServe processes are not this run's"
NOT_SAMPLED_RSS = "not sampled: the existing deployment's processes are not this run's"
# what the results must show (issue #12)
MIN_FUZZ_INPUTS = 10_000
CONTROL_P99_LIMIT_MS = 1000.0
ROUTER_RSS_LIMIT_MB = 300.0
SAMPLE_EVERY_S = 0.5


# -- the system: our own (benchmarks.live.LiveSystem) or an existing deployment ----------------------
def own_system(store: Path, run_dir: Path, args) -> LiveSystem:
    """The live system on loopback test ports, its router with this run's deadline and limits."""
    return LiveSystem(
        store,
        run_dir,
        edge_models=EDGE_MODELS,
        cloud_models=CLOUD_MODELS,
        router_options=[
            "--deadline-ms",
            str(args.deadline_ms),
            "--max-in-flight",
            str(args.max_in_flight),
            "--max-body-bytes",
            str(args.max_body_bytes),
        ],
    )


class ExistingSystem:
    """A deployment that is already running: reached by URL, never started, stopped or signalled.

    The small part of `LiveSystem`'s interface this module uses: `url`, `workers`, `processes`,
    `auth`, `router` (None: no process of ours) and the cloud's inference URL (`cloud_url`)."""

    router = None

    def __init__(self, targets: dict, cloud_key_file: str | None):
        from edge_router.torchserve import read_keys

        self.url = targets["router"]
        self.cloud_url = targets.get("cloud")
        self._token = read_keys(Path(cloud_key_file))["inference"] if cloud_key_file else None

    def workers(self, role: str) -> None:
        return None  # its processes are not ours to watch

    def processes(self) -> dict[str, psutil.Process]:
        return {}

    def auth(self, role: str, kind: str = "inference") -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if role == "cloud" and self._token else {}


def cloud_url(system) -> str | None:
    """The cloud TorchServe's inference URL (None: an existing deployment given without --cloud)."""
    return system.cloud_url if isinstance(system, ExistingSystem) else system.insts["cloud"].inference_url


def cloud_headers(auth: dict, n: int | str) -> dict:
    return {**auth, wire.HEADER_LENGTH: str(n)}


class RouterSampler(threading.Thread):
    """The router process's RSS and thread count every 0.5 s while a part runs (own stack only).

    The process is looked up at each sample, so a router restarted by a fault scenario is followed;
    against an existing deployment (no process of ours) nothing is sampled. Bounded by `max_s`."""

    def __init__(self, system, max_s: float = 4 * 3600):
        super().__init__(daemon=True, name="router-sampler")
        self.system, self.max_samples = system, int(max_s / SAMPLE_EVERY_S) + 1
        self.halt = threading.Event()
        self.rss_mb: list[float] = []
        self.threads: list[int] = []
        self._proc: psutil.Process | None = None

    def sample(self) -> None:
        popen = self.system.router
        if popen is None or popen.poll() is not None:
            return
        try:
            if self._proc is None or self._proc.pid != popen.pid:
                self._proc = psutil.Process(popen.pid)
            with self._proc.oneshot():
                self.rss_mb.append(self._proc.memory_info().rss / 2**20)
                self.threads.append(self._proc.num_threads())
        except psutil.Error:
            self._proc = None

    def run(self) -> None:
        if isinstance(self.system, ExistingSystem):
            return
        for _ in range(self.max_samples):
            self.sample()
            if self.halt.wait(SAMPLE_EVERY_S):
                break
        self.sample()

    def summary(self) -> dict:
        if isinstance(self.system, ExistingSystem):
            return {}
        return {
            "router_rss_mb_max": round(max(self.rss_mb), 1) if self.rss_mb else None,
            "router_threads_max": max(self.threads) if self.threads else None,
            "router_samples": len(self.rss_mb),
        }


@contextmanager
def sampling_router(system: LiveSystem) -> Iterator[RouterSampler]:
    sampler = RouterSampler(system)
    sampler.start()
    try:
        yield sampler
    finally:
        sampler.halt.set()
        sampler.join(5)


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
    rng = random.Random(args.seed)  # noqa: S311 - reproducible fuzz inputs, not secrets
    images = test_images(24, seed=3)
    seeds = [encode_image(im, rng.choice(["png", "jpeg"])) for im in images]
    expert, shape = split_of(system)
    cloud_model = f"cloud_{expert}"
    n_cloud = args.fuzz_inputs // 4
    first = 0
    cloud = cloud_url(system)
    auth = system.auth("cloud")
    if cloud is None:
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
                    f"{cloud}/predictions/{cloud_model}",
                    data=body,
                    headers=cloud_headers(auth, n),
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
    cloud = cloud_url(system)
    try:
        r = requests.post(
            f"{cloud}/predictions/{model}",
            data=body,
            headers=cloud_headers(system.auth("cloud"), n),
            timeout=30,
        )
    except requests.RequestException as exc:
        raise UserInputError(f"no cloud answers at {cloud} ({type(exc).__name__})") from None
    if r.status_code != 200:
        hint = " (give --cloud-key-file)" if r.status_code in (401, 403) else ""
        raise UserInputError(
            f"the cloud at {cloud} answered {r.status_code} to a valid tensor for {model}{hint}"
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


def check_still_correct(system: LiveSystem, reference, images) -> bool:
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
def fault_load(
    url: str, bodies: list[tuple[bytes, int]], deadline_ms: float, *, clients: int = 2, threshold: float = 0.8
) -> LoadClient:
    """Background clients sending labelled images with a deadline; every request's fate is recorded.

    A request without an HTTP answer within its deadline plus 10 s is `lost`, as is one whose
    connection dropped after it went out; a refused connection is a clear error."""
    return LoadClient(
        url,
        bodies,
        clients=clients,
        params={"threshold": threshold, "deadline_ms": deadline_ms},
        timeout_s=deadline_ms / 1000 + HUNG_S,
    )


def fate_table(name: str, records: list[Record], deadline_ms: float) -> dict:
    """How every request of a scenario ended: correct, wrong, degraded, clear error or lost."""
    ok = [r for r in records if r.status == 200]

    def degraded(r: Record) -> bool:
        return bool((r.answer or {}).get("degraded"))

    def correct(r: Record) -> bool:
        return (r.answer or {}).get("class") == r.label

    return {
        "scenario": name,
        "sent": len(records),
        "correct": sum(1 for r in ok if correct(r) and not degraded(r)),
        "wrong": sum(1 for r in ok if not correct(r) and not degraded(r)),
        "degraded": sum(1 for r in ok if degraded(r)),
        "errors": sum(1 for r in records if r.status not in (200, LOST)),
        "lost": sum(1 for r in records if r.status == LOST),
        "error_statuses": sorted({str(r.status) for r in records if r.status not in (200, LOST)}),
        "longest_s": round(max((r.seconds for r in records), default=0.0), 3),
        "deadline_s": deadline_ms / 1000,
    }


def labelled_bodies(n: int, seed: int) -> list[tuple[bytes, int]]:
    from training.datasets import load_source

    source = load_source("fashion-mnist", "test", limit=n)
    return [(encode_image(im, "png"), source.label(i)) for i, im in enumerate(test_images(n, seed=seed))]


def run_faults(system: LiveSystem, args) -> list[dict]:
    bodies = labelled_bodies(40, seed=9)
    out = []

    def scenario(name: str, action, threshold: float = 0.8, seconds: float = 12.0) -> None:
        with (
            sampling_router(system) as sampler,
            fault_load(system.url, bodies, args.deadline_ms, threshold=threshold) as load,
        ):
            time.sleep(2)
            action()
            time.sleep(seconds)
        row = {**fate_table(name, load.records, args.deadline_ms), **sampler.summary()}
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


def run_link_faults(store: Path, run_dir: Path, args) -> list[dict]:
    """The cloud slowed past the deadline, and a lossy link: over the emulated WAN
    (`benchmarks.latency.emulated_system`), the client in the device namespace."""
    from benchmarks import netem
    from benchmarks.latency import emulated_system

    rows = []
    for name, profile in (
        ("cloud_slowed_past_deadline", netem.Profile("slow", 60.0, 3000.0)),
        ("lossy_link_10pct", netem.Profile("lossy", 60.0, 60.0, loss=0.10)),
    ):
        with (
            emulated_system(
                profile, model_store=str(store), run_dir=run_dir / "link", max_minutes=10
            ) as system,
            sampling_router(system) as sampler,
        ):
            plan = {"deadline_ms": args.deadline_ms, "seconds": 20, "threshold": 0.95}
            result = subprocess.run(
                system.link.exec_args(
                    "dev",
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.reliability",
                        "--link-client",
                        "--client-router",
                        system.url,
                        "--plan",
                        json.dumps(plan),
                    ],
                ),
                capture_output=True,
                text=True,
                env=system.env,
                timeout=300,
            )
            if result.returncode != 0:
                raise RuntimeError(f"{name}: client failed: {result.stderr[-400:]}")
        row = {**json.loads(result.stdout.strip().splitlines()[-1]), **sampler.summary()}
        row["scenario"] = name
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def link_client(args) -> int:
    plan = json.loads(args.plan)
    bodies = labelled_bodies(40, seed=9)
    with fault_load(args.client_router, bodies, plan["deadline_ms"], threshold=plan["threshold"]) as load:
        time.sleep(plan["seconds"])
    print(json.dumps(fate_table("link", load.records, plan["deadline_ms"])))
    return 0


# -- soak ------------------------------------------------------------------------------------------
def run_soak(system, args) -> dict:
    bodies = labelled_bodies(60, seed=4)
    rss: dict[str, list[float]] = {}
    minutes: list[dict] = []
    warmup_s = 60.0
    with (
        sampling_router(system) as sampler,
        fault_load(system.url, bodies, args.deadline_ms, clients=4) as load,
    ):
        started = time.time()
        end = started + 60 * args.soak_minutes
        next_minute, seen = started + 60, 0
        while time.time() < end:
            time.sleep(min(5, max(0.0, end - time.time())))
            for name, proc in system.processes().items():
                try:
                    rss.setdefault(name, []).append((time.time() - started, proc.memory_info().rss / 2**20))
                except psutil.Error:
                    pass
            if time.time() >= next_minute or time.time() >= end:
                recs = load.records[seen:]
                seen += len(recs)
                lat = [r.seconds * 1000 for r in recs if r.status == 200]
                minutes.append(
                    {
                        "minute": len(minutes) + 1,
                        "requests": len(recs),
                        "errors": sum(1 for r in recs if r.status != 200),
                        "p50_ms": round(float(np.median(lat)), 2) if lat else None,
                        "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat else None,
                    }
                )
                print(json.dumps(minutes[-1]), flush=True)
                next_minute += 60
    table = fate_table("soak", load.records, args.deadline_ms)
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
    note = {}
    if isinstance(system, ExistingSystem):
        note["rss_note"] = NOT_SAMPLED_RSS
    elif not growth:
        note["rss_note"] = f"growth not measured: the soak is shorter than its {warmup_s:.0f}-s warm-up"
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
        **sampler.summary(),
    }


# -- connection abuse ------------------------------------------------------------------------------
def control_image() -> bytes:
    """The control request's body: a valid PNG test image the router classifies."""
    return encode_image(test_images(1, seed=5)[0], "png")


def run_abuse(system, args) -> dict:
    """`benchmarks.abuse.run_all` against the router, with the pass/fail of each scenario.

    On the own stack the router's process is sampled (threads, RSS); against an existing
    deployment only a loopback URL is abused, and nothing is sampled."""
    parts = urlsplit(system.url)
    existing = isinstance(system, ExistingSystem)
    if existing and not target.is_loopback(parts.hostname or ""):
        print(f"abuse skipped: {SKIPPED_ABUSE}", flush=True)
        return {"skipped": SKIPPED_ABUSE}
    host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
    pid = None if existing else system.router.pid
    t = abuse.Target(
        host,
        parts.port or 80,
        router_pid=pid,
        control_body=control_image(),
        max_body_bytes=args.max_body_bytes,
        max_in_flight=args.max_in_flight,
    )
    scenarios = abuse.run_all(t, seconds=args.abuse_seconds, scale=args.abuse_scale, progress=print)
    for s in scenarios:
        s["checks"] = abuse_checks(s)
        s["passed"] = all(v is not False for v in s["checks"].values())
    out = {
        "seconds": args.abuse_seconds,
        "scale": args.abuse_scale,
        "max_in_flight": args.max_in_flight,
        "max_body_bytes": args.max_body_bytes,
        "control_p99_limit_ms": CONTROL_P99_LIMIT_MS,
        "router_rss_limit_mb": ROUTER_RSS_LIMIT_MB,
        "scenarios": scenarios,
        "passed": all(s["passed"] for s in scenarios),
    }
    if existing:
        out["router_note"] = NOT_SAMPLED_RSS
    return out


def abuse_checks(s: dict) -> dict:
    """One scenario against the requirements: True, False, or None where it was not measured."""
    c = s["control"]
    rss = s.get("router_rss_mb_max")
    checks = {
        f"control_p99_under_{CONTROL_P99_LIMIT_MS:g}ms": c["p99_ms"] is not None
        and c["p99_ms"] < CONTROL_P99_LIMIT_MS,
        "none_without_answer": s["without_answer"] == 0,
        "router_measured": None
        if s.get("router_note")
        else (s.get("router_threads_max") is not None and rss is not None and not s.get("router_gone")),
        f"router_rss_under_{ROUTER_RSS_LIMIT_MB:g}mb": None if rss is None else rss < ROUTER_RSS_LIMIT_MB,
        "answers_afterwards": s["control_after"].get("status") is not None,
    }
    if s["scenario"] == "overload_burst":
        # over the in-flight limit: 200, or an immediate 503 with Retry-After, nothing else
        checks["burst_200_or_503_with_retry_after"] = (
            s["unexpected_status"] == 0 and s["without_retry_after_503"] == 0
        )
    return checks


# -- what the results must show --------------------------------------------------------------------
def router_rss_overall(r: dict) -> dict:
    """The router's largest RSS over every part in `r` where it was sampled, and where."""
    sources: list[tuple[str, float | None]] = []
    if "fuzz" in r:
        sources.append(("fuzz", r["fuzz"].get("router_rss_mb_max")))
    for row in r.get("faults", []):
        if "skipped" not in row:
            sources.append((f"faults/{row['scenario']}", row.get("router_rss_mb_max")))
    if "soak" in r:
        sources.append(("soak", r["soak"].get("router_rss_mb_max")))
    for s in r.get("abuse", {}).get("scenarios", []):
        sources.append((f"abuse/{s['scenario']}", s.get("router_rss_mb_max")))
    sampled = [(k, v) for k, v in sources if v is not None]
    top = max(sampled, key=lambda kv: kv[1]) if sampled else (None, None)
    return {
        "router_rss_mb_max_all": top[1],
        "router_rss_mb_max_all_in": top[0],
        "router_rss_sampled_in": [k for k, _ in sampled],
        "router_rss_not_sampled_in": [k for k, v in sources if v is None],
    }


def must_show(r: dict) -> dict:
    """Each requirement on reliability.json: True, False, or None (its part is absent or skipped)."""
    out: dict[str, bool | None] = {}
    f = r.get("fuzz")
    out[f"fuzz_{MIN_FUZZ_INPUTS}_inputs_0_5xx_0_hung"] = (
        None if f is None else (f["inputs"] >= MIN_FUZZ_INPUTS and f["status_5xx"] == 0 and f["hung"] == 0)
    )
    ran = [x for x in r.get("faults", []) if "skipped" not in x]
    out["faults_0_lost"] = all(x["lost"] == 0 for x in ran) if ran else None
    names = {x["scenario"] for x in ran}
    out["faults_all_scenarios_ran"] = set(LOOPBACK_SCENARIOS + LINK_SCENARIOS) <= names if ran else None
    out["soak_0_errors"] = None if "soak" not in r else r["soak"]["errors"] == 0
    a = r.get("abuse")
    out["abuse_every_scenario_passed"] = None if a is None or "skipped" in a else a["passed"]
    top = r.get("router_rss_mb_max_all")
    out[f"router_rss_under_{ROUTER_RSS_LIMIT_MB:g}mb_throughout"] = (
        None if top is None else (top < ROUTER_RSS_LIMIT_MB and not r.get("router_rss_not_sampled_in"))
    )
    return out


# -- CLI -------------------------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    p = target.parser(
        "benchmarks.reliability",
        __doc__,
        own="starts TorchServe and the router on loopback test ports (and an\n    emulated link for "
        "two fault scenarios), runs fuzz, faults, soak and connection abuse,\n    then stops everything.",
        existing="fuzz, soak and (loopback only) connection abuse against a\n    system that is already "
        "running; nothing is created, started, stopped or signalled, so\n    the fault scenarios are "
        "skipped (and the cloud fuzz without --cloud); loopback URLs only\n    unless --allow-remote.",
    )
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--fuzz-inputs", type=int, default=10000, help="in all; a quarter go to the cloud handler")
    p.add_argument("--soak-minutes", type=float, default=10.0)
    p.add_argument("--abuse-seconds", type=float, default=20.0, help="how long each abuse scenario is held")
    p.add_argument(
        "--abuse-scale",
        type=float,
        default=1.0,
        help="multiplies every abuse socket and client count (1: the required counts)",
    )
    p.add_argument("--deadline-ms", type=float, default=1000.0)
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=RouterConfig().max_in_flight,
        help="the router's in-flight limit: given to the own stack's router; with --router, the "
        "deployment's (sizes the overload burst)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        help="the router's body-size limit: given to the own stack's router; with --router, the "
        "deployment's (sizes the slow and partial uploads)",
    )
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
    if min(args.fuzz_inputs, args.soak_minutes, args.deadline_ms, args.abuse_seconds, args.abuse_scale) <= 0:
        raise UserInputError(
            "--fuzz-inputs, --soak-minutes, --deadline-ms, --abuse-seconds and --abuse-scale must be positive"
        )
    if args.max_in_flight < 1 or args.max_body_bytes < 2:
        raise UserInputError("--max-in-flight must be at least 1 and --max-body-bytes at least 2")
    targets = target.existing_targets(args, OWN_STACK_OPTIONS)
    if not targets:
        from benchmarks import latency

        store = Path(args.model_store or "model_store")
        needed = ROUTER_MODELS + EDGE_MODELS + CLOUD_MODELS
        if "faults" in args.parts and not args.no_link_faults:  # the emulated system serves these
            needed += [m for m in latency.EDGE_MODELS + latency.CLOUD_MODELS if m not in needed]
        missing = [m for m in needed if not (store / f"{m}.mar").is_file()]
        if missing:
            raise UserInputError(f"{store} lacks {', '.join(missing)}: run python -m export.archive --full")
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
    result.update(router_rss_overall(result))
    result["checks"] = must_show(result)
    write_json(result_path, result)
    write_markdown(result, out / "reliability.md")
    return result


def run_fuzz_sampled(system, args, reference, prov: dict) -> dict:
    with sampling_router(system) as sampler:
        fuzz = run_fuzz(system, args, reference)
    fuzz = {**fuzz, **sampler.summary(), "produced_by": prov}
    print(json.dumps({k: v for k, v in fuzz.items() if k not in ("examples_5xx", "produced_by")}))
    return fuzz


def run_own_stack(store: Path, args, result: dict, prov: dict) -> None:
    from export.pipeline import Pipeline

    run_dir = Path(args.run_dir or "run/reliability").resolve()
    with own_system(store, run_dir / "loopback", args) as system:
        if "fuzz" in args.parts:
            result["fuzz"] = run_fuzz_sampled(system, args, Pipeline(store), prov)
        if "faults" in args.parts:
            kept = [f for f in result.get("faults", []) if f["scenario"] in LINK_SCENARIOS]
            result["faults"] = [{**row, "produced_by": prov} for row in run_faults(system, args)]
            if args.no_link_faults:  # keep the emulated-link rows of an earlier run (and their provenance)
                result["faults"] += kept
        if "soak" in args.parts:
            result["soak"] = {**run_soak(system, args), "produced_by": prov}
        if "abuse" in args.parts:
            result["abuse"] = {**run_abuse(system, args), "produced_by": prov}
    if "faults" in args.parts and not args.no_link_faults:
        result["faults"] += [{**row, "produced_by": prov} for row in run_link_faults(store, run_dir, args)]


def run_existing(system: ExistingSystem, args, result: dict, prov: dict) -> None:
    """Fuzz, soak and abuse against a running deployment; the fault scenarios are recorded as skipped."""
    target.check_router_answers(system.url)
    if "fuzz" in args.parts:
        result["fuzz"] = run_fuzz_sampled(system, args, None, prov)
    if "faults" in args.parts:
        result["faults"] = [
            {"scenario": name, "skipped": SKIPPED_FAULT, "produced_by": prov}
            for name in LOOPBACK_SCENARIOS + LINK_SCENARIOS
        ]
        print(f"faults skipped: {SKIPPED_FAULT}", flush=True)
    if "soak" in args.parts:
        result["soak"] = {**run_soak(system, args), "produced_by": prov}
    if "abuse" in args.parts:
        result["abuse"] = {**run_abuse(system, args), "produced_by": prov}


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
        "# Reliability: fuzzing, faults, soak and connection abuse against the live system",
        "",
        f"Invocations that wrote this file: {len(r.get('invocations', []))} (listed in reliability.json); "
        "each part names the one that produced it.",
        "",
    ]
    if "checks" in r:
        lines += ["## Requirements", "", "| requirement | met |", "|---|---|"]
        lines += [f"| {k} | {_yes_no(v)} |" for k, v in r["checks"].items()]
        top = r.get("router_rss_mb_max_all")
        lines += [
            "",
            (
                f"Router RSS, largest over every part sampled: **{top} MB** "
                f"(in {r.get('router_rss_mb_max_all_in')})"
                if top is not None
                else "Router RSS: not sampled"
            )
            + (
                f"; not sampled in: {', '.join(r['router_rss_not_sampled_in'])}"
                if r.get("router_rss_not_sampled_in")
                else ""
            )
            + ".",
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
            + "."
            + _router_line(f),
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
                "longest (s) | deadline (s) | error statuses | router RSS max (MB) | run |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {x['scenario']} | {x['sent']} | {x['correct']} | {x['wrong']} | {x['degraded']} | "
                f"{x['errors']} | {x['lost']} | {x['longest_s']} | {x['deadline_s']} | "
                f"{', '.join(x['error_statuses'])} | {_dash(x.get('router_rss_mb_max'))} | "
                f"[{runs.index(x.get('produced_by')) + 1}] |"
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
            f"**{s['errors']} errors**, {rss}, p99 first/last minute {s['p99_first_last_ms']} ms."
            + _router_line(s),
            "",
        ]
        lines += [
            f"- {k}: {v['after_warmup_mb']} -> {v['end_mb']} MB ({100 * v['growth']:+.1f} %)"
            for k, v in s["rss"].items()
        ]
        lines.append("")
    if "abuse" in r:
        lines += abuse_markdown(r["abuse"])
    path.write_text("\n".join(lines))


def abuse_markdown(a: dict) -> list[str]:
    lines = ["## Connection abuse", "", f"Produced by: {target.describe(a.get('produced_by'))}", ""]
    if "skipped" in a:
        return [*lines, f"Skipped: {a['skipped']}", ""]
    scale = "" if a["scale"] == 1 else f" at scale {a['scale']:g} (not the required counts)"
    lines += [
        f"Each scenario held for {a['seconds']:g} s{scale}; router limits {a['max_in_flight']} requests in "
        f"flight, {a['max_body_bytes']} body bytes. One control request a second (a fresh connection, "
        f"10 s timeout). Passes with control p99 under {a['control_p99_limit_ms']:g} ms, 0 requests without "
        f"an answer, the router's threads and RSS measured and its RSS under {a['router_rss_limit_mb']:g} MB "
        "(the burst: every answer 200 or a 503 with Retry-After). "
        + (f"Router threads and RSS {a['router_note']}. " if a.get("router_note") else "")
        + f"All passed: {_yes_no(a['passed'])}.",
        "",
        "| scenario | abusers | control answered | control statuses | control p50 / p99 / max (ms) | "
        "without answer | router threads max | router RSS max (MB) | dropped by server | passed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in a["scenarios"]:
        c = s["control"]
        failed = [k for k, v in s["checks"].items() if v is False]
        lines.append(
            f"| {s['scenario']} | {s['sockets']} | {c['answered']}/{c['sent']} | "
            f"{', '.join(f'{k}: {v}' for k, v in c['status_counts'].items()) or '-'} | "
            f"{_dash(c['p50_ms'])} / {_dash(c['p99_ms'])} / {_dash(c['max_ms'])} | {s['without_answer']} | "
            f"{_dash(s.get('router_threads_max'))} | {_dash(s.get('router_rss_mb_max'))} | "
            f"{_dash(s.get('dropped_by_server'))} | {_yes_no(s['passed'])}"
            + (f" (failed: {', '.join(failed)})" if failed else "")
            + " |"
        )
    burst = next((s for s in a["scenarios"] if s["scenario"] == "overload_burst"), None)
    if burst:
        lines += [
            "",
            f"Overload burst: {burst['clients']} clients, {burst['requests_sent']} requests, answers "
            f"{burst['status_counts']} ({burst['with_retry_after']} 503 with Retry-After), "
            f"{burst['burst_without_answer']} without an answer.",
        ]
    lines.append("")
    return lines


def _dash(v) -> str:
    return "-" if v is None else str(v)


def _yes_no(v) -> str:
    return {True: "yes", False: "**no**", None: "not measured"}[v]


def _router_line(part: dict) -> str:
    if part.get("router_rss_mb_max") is None:
        return ""
    return (
        f" Router: RSS max {part['router_rss_mb_max']} MB, threads max {part['router_threads_max']} "
        f"({part.get('router_samples')} samples)."
    )


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
