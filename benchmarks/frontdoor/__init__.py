"""Which async stack for the router's front door: server x pooled upstream client, by measurement.

    python -m benchmarks.frontdoor --json docs/results/frontdoor.json --markdown docs/results/frontdoor.md

The router receives an image POST and makes one or two HTTP calls to TorchServe. The issue asks
that its server stack and its pooled upstream client be chosen by measurement; the router uses
Starlette under uvicorn (httptools, uvloop) with an aiohttp.ClientSession, and this module measures
that choice beside the alternatives so it stays backed by numbers.

All on 127.0.0.1, free ports: a stub upstream (aiohttp.web, a ~200-byte JSON answer, no compute)
stands in for TorchServe. For each server {starlette+uvicorn, aiohttp.web} x client {httpx,
aiohttp} a front-door process serves POST /v1/classify: read a ~2 KB PNG-like body, make one
upstream call, answer JSON. The front door is pinned to one CPU, the upstream and the load client
(`benchmarks.lib.loadgen`'s keep-alive clients) to another, so the front door's own cost is what is compared.
1 client gives p50/p99, 16 clients throughput and p99; the front door's RSS is read after the run.
Rounds interleave the combinations (order reversed every other round) so machine noise hits all
alike, and each row gives the median over rounds. Bounded by --requests per measurement and
--max-seconds overall; every process started is stopped, also on failure.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil

from benchmarks.lib.loadgen import LoadClient
from core.cli import command_line, write_json
from core.errors import UserInputError

HOST, PATH, UPSTREAM_PATH = "127.0.0.1", "/v1/classify", "/predictions/x"
SERVERS, CLIENTS = ("starlette+uvicorn", "aiohttp.web"), ("httpx", "aiohttp")
CHOSEN = ("starlette+uvicorn", "aiohttp")  # what edge_router ships
PAYLOAD = b"\x89PNG\r\n\x1a\n" + random.Random(0).randbytes(2040)  # noqa: S311 - same bytes every run
ANSWER = json.dumps(
    {  # ~200 bytes, like a TorchServe answer
        "prediction": 3,
        "confidence": 0.91,
        "exit": 1,
        "model": "expert_pristine",
        "version": "1.0",
        "probabilities": [0.01, 0.02, 0.01, 0.91, 0.01, 0.01, 0.01, 0.01, 0.0, 0.01],
    }
).encode()
HEADERS = {"Content-Type": "application/octet-stream"}
POOL = 64  # upstream connections: more than the 16 clients, so the pool never queues
NAN = float("nan")


# -- the processes under test (run with --serve) -----------------------------------------------------


def make_caller(kind: str, url: str) -> tuple[Callable[[bytes], Awaitable[dict]], Callable]:
    """One pooled keep-alive client and its close; called inside the running loop (aiohttp needs it)."""
    if kind == "httpx":
        import httpx

        hc = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL), timeout=10
        )

        async def call_httpx(body: bytes) -> dict:
            r = await hc.post(url, content=body, headers=HEADERS)
            r.raise_for_status()
            return json.loads(r.content)

        return call_httpx, hc.aclose
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=POOL), timeout=aiohttp.ClientTimeout(total=10)
    )

    async def call_aiohttp(body: bytes) -> dict:
        async with session.post(url, data=body, headers=HEADERS) as r:
            r.raise_for_status()
            return json.loads(await r.read())

    return call_aiohttp, session.close


def answer(body: bytes, up: dict) -> bytes:
    return json.dumps(
        {"prediction": up["prediction"], "confidence": up["confidence"], "exit": "edge", "bytes": len(body)}
    ).encode()


def serve(kind: str, port: int, client: str, upstream: str) -> None:
    import uvloop  # both servers get uvloop, so the server code is what differs

    state: dict = {}
    if kind == "starlette+uvicorn":
        from contextlib import asynccontextmanager

        import uvicorn
        from starlette.applications import Starlette
        from starlette.responses import Response
        from starlette.routing import Route

        @asynccontextmanager
        async def lifespan(app: Starlette):
            state["call"], close = make_caller(client, upstream)
            yield
            await close()

        async def classify(request) -> Response:
            body = await request.body()
            return Response(answer(body, await state["call"](body)), media_type="application/json")

        app = Starlette(routes=[Route(PATH, classify, methods=["POST"])], lifespan=lifespan)
        uvicorn.run(
            app,
            host=HOST,
            port=port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )  # idle keep-alives must not hold it
        return
    from aiohttp import web

    async def predict(request: web.Request) -> web.Response:  # the stub upstream
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=answer(body, await state["call"](body)), content_type="application/json")

    async def pooled(app: web.Application):
        state["call"], close = make_caller(client, upstream)
        yield
        await close()

    app = web.Application()
    if kind == "upstream":
        app.router.add_post(UPSTREAM_PATH, predict)
    else:
        app.cleanup_ctx.append(pooled)
        app.router.add_post(PATH, forward)
    web.run_app(
        app,
        host=HOST,
        port=port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
        shutdown_timeout=2,
    )  # not 60 s: idle keep-alives must not hold SIGTERM


# -- the measurement ---------------------------------------------------------------------------------


def start(procs: list[subprocess.Popen], cpu: int | None, args: list[str]) -> tuple[subprocess.Popen, int]:
    """A `--serve` process on a free port, pinned to `cpu`, answering before `start` returns."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "benchmarks.frontdoor", "--port", str(port), *args]
    p = subprocess.Popen(
        ["taskset", "-c", str(cpu), *cmd] if cpu is not None else cmd,
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.DEVNULL,
    )
    procs.append(p)  # taskset execs python: p.pid is the server itself
    path, end = UPSTREAM_PATH if args[1] == "upstream" else PATH, time.monotonic() + 30
    while time.monotonic() < end and p.poll() is None:
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        try:
            conn.request("POST", path, PAYLOAD, HEADERS)
            if conn.getresponse().status == 200:
                return p, port
        except (OSError, http.client.HTTPException):
            pass  # not listening yet
        finally:
            conn.close()
        time.sleep(0.1)
    raise UserInputError(f"{' '.join(args)} did not answer within 30 s (exit code {p.poll()})")


def load(port: int, clients: int, n: int, deadline: float) -> dict:
    """`clients` keep-alive connections POSTing PAYLOAD (`benchmarks.lib.loadgen`, the project's one
    load client) until `n` requests went out or `deadline`."""
    client = LoadClient(
        f"http://{HOST}:{port}",
        [PAYLOAD],
        clients=clients,
        path=PATH,
        headers=HEADERS,
        keep_answers=False,
        timeout_s=10,
    )
    r = client.run(seconds=max(0.0, deadline - time.monotonic()), max_requests=n)
    ms = [rec.seconds * 1000 for rec in client.records if rec.status == 200]
    return {
        "ok": r["ok"],
        "errors": r["requests"] - r["ok"],
        "wall": r["seconds"],
        "p50": r["p50_ms"] if ms else NAN,
        "p99": r["p99_ms"] if ms else NAN,
        "rps": r["throughput_rps"],
    }


def summarize(server: str, client: str, clients: int, runs: list[dict]) -> dict:
    """The median over rounds: the machine is shared, and one disturbed round must not decide."""

    def med(k: str, nd: int | None) -> float | None:
        v = [r[k] for r in runs if r[k] == r[k]]  # a round without one answer has no percentiles (NaN)
        return round(statistics.median(v), nd) if v else None

    return {
        "server": server,
        "client": client,
        "clients": clients,
        "requests": sum(r["ok"] + r["errors"] for r in runs),
        "p50_ms": med("p50", 3),
        "p99_ms": med("p99", 3),
        "throughput_rps": med("rps", 1),
        "throughput_rounds": [round(r["rps"], 1) for r in runs],
        "rss_mb": max(r["rss_mb"] for r in runs),
        "frontdoor_cpu_pct": med("cpu_pct", None),
        "cpu_us_per_req": med("cpu_us", None),
        "errors": sum(r["errors"] for r in runs),
    }


def measure(args: argparse.Namespace, deadline: float) -> tuple[list[dict], bool, bool]:
    cpus = sorted(os.sched_getaffinity(0))
    pinned = len(cpus) >= 2 and shutil.which("taskset") is not None
    fd_cpu, rest_cpu = (cpus[0], cpus[1]) if pinned else (None, None)
    combos, runs = list(itertools.product(SERVERS, CLIENTS)), {}
    procs: list[subprocess.Popen] = []
    own = os.sched_getaffinity(0)
    try:
        if pinned:
            os.sched_setaffinity(0, {rest_cpu})  # the load threads inherit it: they share upstream's CPU
        _, up_port = start(procs, rest_cpu, ["--serve", "upstream"])
        for rnd in range(args.rounds):
            for server, client in combos if rnd % 2 == 0 else combos[::-1]:
                if time.monotonic() >= deadline:
                    break
                fd, port = start(
                    procs,
                    fd_cpu,
                    [
                        "--serve",
                        server,
                        "--via",
                        client,
                        "--upstream",
                        f"http://{HOST}:{up_port}{UPSTREAM_PATH}",
                    ],
                )
                load(port, max(args.clients), min(200, args.requests), deadline)  # warm pools and caches
                ps = psutil.Process(fd.pid)
                for c in args.clients:
                    cpu0 = sum(ps.cpu_times()[:2])
                    r = load(port, c, args.requests, deadline)
                    cpu = sum(ps.cpu_times()[:2]) - cpu0  # the front door's own cost, whatever else runs
                    r["cpu_pct"], r["cpu_us"] = 100 * cpu / r["wall"], 1e6 * cpu / r["ok"] if r["ok"] else NAN
                    r["rss_mb"] = round(ps.memory_info().rss / 2**20, 1)
                    runs.setdefault((server, client, c), []).append(r)
                fd.terminate()
                fd.wait(10)
                procs.remove(fd)
        complete = time.monotonic() < deadline
        return [summarize(*k, v) for k, v in sorted(runs.items(), key=lambda kv: kv[0][2])], pinned, complete
    finally:
        os.sched_setaffinity(0, own)
        for p in reversed(procs):  # front door first: the upstream then has no clients left
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def pick(rows: list[dict], clients: int, key: str, best: Callable) -> dict | None:
    level = [r for r in rows if r["clients"] == clients and r["p50_ms"] is not None]  # answered
    w = best(level, key=lambda r: r[key]) if level else None
    return w and {"server": w["server"], "client": w["client"], "clients": clients, key: w[key]}


def table(rows: list[dict]) -> list[str]:
    return [
        "| server | client | clients | requests | p50 ms | p99 ms | req/s (per round) | RSS MB "
        "| front-door CPU % | CPU µs/req | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ] + [
        f"| {r['server']} | {r['client']} | {r['clients']} | {r['requests']} | {r['p50_ms']} | {r['p99_ms']} "
        f"| {r['throughput_rps']} ({', '.join(map(str, r['throughput_rounds']))}) | {r['rss_mb']} "
        f"| {r['frontdoor_cpu_pct']} | {r['cpu_us_per_req']} | {r['errors']} |"
        for r in rows
    ]


def summary_text(rows: list[dict], choice: dict, top: int) -> str:
    """What the table shows, in numbers: the winners and how far the shipped combination is from them."""
    name = lambda w: f"{w['server']} + {w['client']}" if w else "none"  # noqa: E731
    mine = {r["clients"]: r for r in rows if (r["server"], r["client"]) == CHOSEN}
    p50, tp = choice["by_single_client_p50"], choice["by_throughput"]
    parts = [
        f"Fastest by single-client p50: **{name(p50)}**; by {top}-client throughput: **{name(tp)}**; "
        f"cheapest in front-door CPU per request: **{name(choice['by_cpu_per_request'])}**."
    ]
    if p50 and tp and 1 in mine and top in mine:
        parts.append(
            f"The shipped {CHOSEN[0]} + {CHOSEN[1]} has p50 {mine[1]['p50_ms']} ms (best "
            f"{p50['p50_ms']}) and {mine[top]['throughput_rps']} req/s "
            f"(best {tp['throughput_rps']})."
        )
    ranked = sorted(
        (r for r in rows if r["clients"] == top and r["p50_ms"] is not None),
        key=lambda r: -r["throughput_rps"],
    )
    if len(ranked) > 1:  # is the throughput winner ahead in every round, or only in the median?
        w, r2 = ranked[:2]
        clear = min(w["throughput_rounds"]) > max(r2["throughput_rounds"])
        parts.append(
            f"The runner-up by throughput, {name(r2)} ({r2['throughput_rps']} req/s), is "
            + ("below it in every round." if clear else "within the rounds' spread of it.")
        )
    for axis, values in (("client", CLIENTS), ("server", SERVERS)):  # which choice matters more
        cost = {v: [r["cpu_us_per_req"] for r in ranked if r[axis] == v] for v in values}
        parts.append(
            f"Front-door CPU per request at {top} clients, mean by {axis}: "
            + ", ".join(f"{v} {sum(x) / len(x):.0f} µs" for v, x in cost.items() if x)
            + "."
        )
    starved = [name(r) for r in ranked if r["frontdoor_cpu_pct"] < 80]
    if starved:  # the front door should be the bottleneck; if it idled, something else was
        parts.append(
            f"At {top} clients the front door used under 80% of its CPU in {', '.join(starved)}: "
            "there the machine's other work, not the stack, limited throughput; CPU per request "
            "is the steadier comparison."
        )
    parts.append("Two shared cores: absolute numbers are noisy; the per-round throughputs show by how much.")
    return " ".join(parts)


def main(args: argparse.Namespace) -> dict:
    if args.serve:
        serve(args.serve, args.port, args.via, args.upstream)
        return {}
    if args.requests < 1 or args.rounds < 1 or args.max_seconds <= 0 or min(args.clients) < 1:
        raise UserInputError("--requests, --rounds, --clients and --max-seconds must be positive")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the servers
    rows, pinned, complete = measure(args, time.monotonic() + args.max_seconds)
    top = max(args.clients)
    choice = {
        "by_single_client_p50": pick(rows, 1, "p50_ms", min),
        "by_throughput": pick(rows, top, "throughput_rps", max),
        "by_cpu_per_request": pick(rows, top, "cpu_us_per_req", min),  # steadier under contention
        "shipped": {"server": CHOSEN[0], "client": CHOSEN[1]},
        "command": command_line(),
    }
    where = (
        "front door pinned to one CPU, upstream and load client to another"
        if pinned
        else "not pinned (needs taskset and 2 CPUs)"
    )
    report = {
        "setup": f"loopback; {where}; {args.rounds} interleaved rounds of {args.requests} requests "
        f"per measurement; ~2 KB body, ~200 B upstream answer; rows give the median over rounds"
        + ("" if complete else "; STOPPED EARLY by --max-seconds"),
        "rows": rows,
        "choice": choice,
        "summary": summary_text(rows, choice, top),
    }
    print("\n".join(table(rows)), "", report["summary"], sep="\n")
    if args.json:
        write_json(args.json, report)
    if args.markdown:  # the same table, with the command, the setup and what it shows
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(
            "\n".join(
                [
                    "# Front door: server stack x upstream client",
                    "",
                    f"Command: `{choice['command']}`",
                    "",
                    f"Setup: {report['setup']}.",
                    "",
                    *table(rows),
                    "",
                    report["summary"],
                    "",
                ]
            )
        )
    return report


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.frontdoor",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--requests", type=int, default=2000, help="requests per measurement and round")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 16], help="concurrency levels")
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of every combination")
    p.add_argument("--max-seconds", type=float, default=600, help="bound on the whole run")
    p.add_argument("--json", default=None, help="write the rows and the choice here")
    p.add_argument("--markdown", default=None, help="write the table and a summary here")
    # the processes under test: this module runs itself with these
    p.add_argument("--serve", choices=("upstream", *SERVERS), default=None, help=argparse.SUPPRESS)
    p.add_argument("--via", choices=CLIENTS, default="aiohttp", help=argparse.SUPPRESS)
    p.add_argument("--upstream", default="", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return p
