"""The fuzz part: random and mutated inputs against every tier that parses untrusted bytes, then a
check that the servers still answer correctly.

Targets, interleaved in a fixed cycle (`TARGET_CYCLE`: 40 % router, 20 % each of the others):

- `router`: images (random bytes, mutated PNG/JPEG, lying headers with huge dimensions) with odd
  content types and query strings, `POST /v1/classify`;
- `edge`: the same images straight to the edge TorchServe handler with odd `X-Exit-Threshold` and
  `X-Offload-Compression` headers;
- `cloud`: random or mutated binary tensors with lying framing to the cloud TorchServe handler;
- `kserve`: the same tensors, and malformed JSON requests, to the KServe predictor.

Every input is drawn from one `random.Random(--seed)` in order, so a run is replayed exactly by
the same `--seed` and `--fuzz-inputs`; each 5xx example records its input's index. A target this
run cannot reach (an existing deployment gives only the router and, with `--cloud`, the cloud)
is skipped and its share not sent."""

from __future__ import annotations

import json
import random
import struct
import zlib

import numpy as np
import requests

from benchmarks.lib.live import LiveSystem
from benchmarks.reliability.system import (
    HUNG_S,
    client_options,
    cloud_headers,
    cloud_url,
    test_images,
    with_options,
)
from core import wire
from core.cli import progress
from core.errors import UserInputError
from core.experts import archive_name
from core.imaging import encode_image

NOT_OBSERVED_WORKERS = "not observed: the existing deployment's TorchServe processes are not this run's"


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


TARGET_CYCLE = ("router", "edge", "router", "cloud", "kserve")
EDGE_HEADERS = {
    "X-Exit-Threshold": ["0", "-1", "1.5", "nan", "inf", "abc", "0.5", "", "1e-300"],
    "X-Offload-Compression": ["fp16", "int8", "fp64", "", "INT8", "x" * 300],
}


def fuzz_edge_case(rng: random.Random, seeds: list[bytes]) -> tuple[bytes, dict]:
    body, _, headers = fuzz_router_case(rng, seeds)
    for name, values in EDGE_HEADERS.items():
        if rng.random() < 0.3:
            headers[name] = rng.choice(values)
    return body, headers


def fuzz_oip_json_case(rng: random.Random, shape: tuple[int, ...]) -> bytes:
    """An Open Inference Protocol JSON request with one field made wrong (or none)."""
    n = rng.randint(1, 2)
    spec = {
        "name": "stage2",
        "shape": [n, *shape],
        "datatype": rng.choice(["FP32", "FP16", "INT8"]),
        "data": [rng.randint(-3, 3) for _ in range(n * int(np.prod(shape)))],
    }
    request: dict = {"inputs": [spec]}
    kind = rng.randrange(6)
    if kind == 1:
        spec["data"] = spec["data"][: rng.randrange(len(spec["data"]))]
    elif kind == 2:
        spec[rng.choice(["shape", "datatype", "name", "data", "parameters"])] = rng.choice(
            [[0, *shape], [-1], "BYTES", 7, None, {"a": [1]}, [[1, 2], [3]], ["x"], [10**6] * 4]
        )
    elif kind == 3:
        request[rng.choice(["outputs", "id", "parameters", "extra"])] = rng.choice([5, "x", [1], {"a": None}])
    elif kind == 4:
        spec["data"][rng.randrange(len(spec["data"]))] = rng.choice([1e300, -1e40, 1000, True, "1"])
    body = json.dumps(request).encode()
    if kind == 5:
        body = mutate(body, rng)
    return body


def fuzz_urls(system) -> dict[str, str | None]:
    """Each target's base URL, None where this run cannot reach it."""
    if isinstance(system, LiveSystem):
        kserve = system.kserve_urls[0] if system.kserve_urls else None
        return {
            "router": system.url,
            "edge": system.insts["edge"].inference_url,
            "cloud": cloud_url(system),
            "kserve": kserve,
        }
    return {"router": system.url, "edge": None, "cloud": cloud_url(system), "kserve": None}


def fuzz_request(target: str, url: str, rng: random.Random, seeds, system, models, shape) -> dict:
    """The `requests.post` arguments of the next input for `target`."""
    if target == "router":
        body, params, headers = fuzz_router_case(rng, seeds)
        return {"url": f"{url}/v1/classify", "data": body, "params": params, "headers": headers}
    if target == "edge":
        body, headers = fuzz_edge_case(rng, seeds)
        return {
            "url": f"{url}/predictions/{models['edge']}",
            "data": body,
            "headers": {**system.auth("edge"), **headers},
        }
    if target == "kserve" and rng.random() < 0.2:
        return {
            "url": f"{url}/v2/models/{models['cloud']}/infer",
            "data": fuzz_oip_json_case(rng, shape),
            "headers": {"Content-Type": "application/json"},
        }
    body, n = fuzz_cloud_case(rng, shape)
    if target == "cloud":
        return {
            "url": f"{url}/predictions/{models['cloud']}",
            "data": body,
            "headers": cloud_headers(system.auth("cloud"), n),
        }
    return {
        "url": f"{url}/v2/models/{models['cloud']}/infer",
        "data": body,
        "headers": {wire.HEADER_LENGTH: n},
    }


def run_fuzz(system, args, reference) -> dict:
    """The fuzz; `reference` is the in-process pipeline, or None to compare the router's answers
    after the fuzz with its answers before it (an existing deployment, whose archives are unknown)."""
    rng = random.Random(args.seed)  # noqa: S311 - reproducible fuzz inputs, not secrets
    images = test_images(24, seed=3)
    seeds = [encode_image(im, rng.choice(["png", "jpeg"])) for im in images]
    expert, shape = split_of(system)
    models = {role: archive_name(role, expert) for role in ("edge", "cloud")}
    urls = fuzz_urls(system)
    planned = count_planned(args.fuzz_inputs)
    skipped = {t: planned[t] for t, u in urls.items() if u is None}
    for t, n in skipped.items():
        print(f"{t} fuzz skipped: this run cannot reach it ({n} inputs not sent)", flush=True)
    if urls["cloud"] is not None and reference is None:
        check_cloud_answers(system, models["cloud"], shape)
    before = None if reference is not None else answers(system, images[:12])
    processes_before = watched_pids(system)
    statuses: dict[str, dict[str, int]] = {t: {} for t in urls if urls[t] is not None}
    options = {t: client_options(system, "cloud" if t == "kserve" else t) for t in urls}
    status_5xx = hung = 0
    examples = []
    session = requests.Session()
    for i in progress(range(args.fuzz_inputs), desc="fuzz", quiet=args.quiet):
        target = TARGET_CYCLE[i % len(TARGET_CYCLE)]
        if urls[target] is None:
            continue
        request = fuzz_request(target, urls[target], rng, seeds, system, models, shape)
        request = with_options(request, options[target])
        try:
            r = session.post(**request, timeout=HUNG_S)
            code = r.status_code
        except requests.Timeout:
            hung += 1
            code = "hung"
            session = requests.Session()
        except requests.ConnectionError:
            code = "connection_error"
            session = requests.Session()
        statuses[target][str(code)] = statuses[target].get(str(code), 0) + 1
        if isinstance(code, int) and code >= 500:
            status_5xx += 1
            if len(examples) < 10:
                examples.append({"input": i, "target": target, "status": code, "body": r.text[:200]})
    processes_after = watched_pids(system)
    sent = {t: sum(c.values()) for t, c in statuses.items()}
    total: dict[str, int] = {}
    for counts in statuses.values():
        for code, n in counts.items():
            total[code] = total.get(code, 0) + n
    out = {
        "inputs": sum(sent.values()),
        "seed": args.seed,
        "inputs_by_target": sent,
        "statuses_by_target": statuses,
        "status_5xx": status_5xx,
        "hung": hung,
        "statuses": total,
        "examples_5xx": examples,
    }
    if skipped:
        out["skipped_targets"] = {
            t: f"{n} inputs not sent: this run cannot reach it" for t, n in skipped.items()
        }
    if processes_before is None:
        out.update(worker_deaths=None, worker_deaths_note=NOT_OBSERVED_WORKERS)
    else:
        out["worker_deaths"] = len(processes_before - processes_after)
    out["control_after"] = control_after(system, urls, models, shape)
    if reference is not None:
        mismatches = still_correct_mismatches(system, reference, images[:12])
        out["still_correct_after"] = not mismatches
        if mismatches:
            out["still_correct_mismatches"] = mismatches
        out["still_correct_checked_against"] = "the in-process reference pipeline (model store)"
    else:
        out["still_correct_after"] = before is not None and answers(system, images[:12]) == before
        out["still_correct_checked_against"] = "the router's answers to the same 12 images before the fuzz"
    return out


def count_planned(n: int) -> dict[str, int]:
    """How many of `n` inputs each target gets in the cycle."""
    out: dict[str, int] = {}
    for i in range(n):
        target = TARGET_CYCLE[i % len(TARGET_CYCLE)]
        out[target] = out.get(target, 0) + 1
    return out


def watched_pids(system) -> set[int] | None:
    """TorchServe workers of edge and cloud and the KServe processes; None: not ours to watch."""
    if not isinstance(system, LiveSystem):
        return None
    pids = system.workers("edge") | system.workers("cloud")
    return pids | {p.pid for p in system.kserve if p is not None and p.poll() is None}


def control_after(system, urls: dict, models: dict, shape) -> dict[str, int | str]:
    """Each direct target's status for one valid request after the fuzz (200 expected)."""
    body, n = wire.encode(np.zeros((1, *shape), np.float32), name="stage2", compression="fp32")
    png = encode_image(test_images(1, seed=5)[0], "png")
    asks = {
        "edge": (f"{urls['edge']}/predictions/{models['edge']}", png, system.auth("edge")),
        "cloud": (
            f"{urls['cloud']}/predictions/{models['cloud']}",
            body,
            cloud_headers(system.auth("cloud"), n),
        ),
        "kserve": (f"{urls['kserve']}/v2/models/{models['cloud']}/infer", body, {wire.HEADER_LENGTH: str(n)}),
    }
    out: dict[str, int | str] = {}
    for target, (url, data, headers) in asks.items():
        if urls[target] is None:
            continue
        request = with_options(
            {"headers": headers}, client_options(system, "cloud" if target == "kserve" else target)
        )
        try:
            out[target] = requests.post(url, data=data, timeout=30, **request).status_code
        except requests.RequestException as exc:
            out[target] = type(exc).__name__
    return out


def split_of(system) -> tuple[str, list[int]]:
    """An expert the router uses (pristine if it has it) and the per-sample shape of its split tensor."""
    experts = requests.get(f"{system.url}/v1/experts", timeout=10, **client_options(system)).json()["experts"]
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
            **client_options(system, "cloud"),
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
                **client_options(system),
            )
            a = r.json() if r.status_code == 200 else None
        except (requests.RequestException, ValueError):
            a = None
        if a is None:
            return None
        out.append((a.get("class"), a.get("exit"), a.get("expert")))
    return out


def still_correct_mismatches(system: LiveSystem, reference, images) -> list[dict]:
    """Where the router's answer after the fuzz differs from the reference pipeline's: each image's
    (class, exit, expert) both ways, or the status of a request that failed."""
    expected = reference.infer(images, 0.8)
    out = []
    for i, (im, ref) in enumerate(zip(images, expected, strict=True)):
        r = requests.post(
            f"{system.url}/v1/classify",
            data=encode_image(im, "png"),
            params={"threshold": 0.8},
            timeout=30,
            **client_options(system),
        )
        if r.status_code != 200:
            out.append({"image": i, "status": r.status_code, "reason": r.text[:200]})
            continue
        got = r.json()
        want = (ref["class"], ref["exit"], ref["expert"])
        if (got["class"], got["exit"], got["expert"]) != want:
            out.append(
                {
                    "image": i,
                    "got": [got["class"], got["exit"], got["expert"]],
                    "expected": list(want),
                    "degraded_reason": got.get("degraded_reason"),
                }
            )
    return out
