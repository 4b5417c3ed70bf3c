"""The fuzz part: random and mutated images against the router, random or mutated binary tensors
with lying headers against the cloud handler, then a check that the servers still answer correctly."""

from __future__ import annotations

import json
import random
import struct
import zlib

import numpy as np
import requests

from benchmarks.live import LiveSystem
from benchmarks.reliability.system import HUNG_S, cloud_headers, cloud_url, test_images
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


def run_fuzz(system, args, reference) -> dict:
    """The fuzz; `reference` is the in-process pipeline, or None to compare the router's answers
    after the fuzz with its answers before it (an existing deployment, whose archives are unknown)."""
    rng = random.Random(args.seed)  # noqa: S311 - reproducible fuzz inputs, not secrets
    images = test_images(24, seed=3)
    seeds = [encode_image(im, rng.choice(["png", "jpeg"])) for im in images]
    expert, shape = split_of(system)
    cloud_model = archive_name("cloud", expert)
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
