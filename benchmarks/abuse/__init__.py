"""Connection abuse: does the router keep answering while clients misbehave?

    python -m benchmarks.abuse --url http://127.0.0.1:8000 --router-pid 12345 --image some.png \\
        --seconds 20 --json run/abuse/abuse.json
    python -m benchmarks.abuse --url http://127.0.0.1:8000 --image some.png --only slowloris --scale 0.1

Each scenario holds its abuse for `--seconds` while a *control* client sends one ordinary request a
second (a fresh connection each time, 10 s timeout) and records its latency and status; when the
router's process id is given, a sampler records its thread count and RSS every 0.25 s. A router
that defends itself keeps the control answered with a latency near its usual one, and its threads
and RSS bounded, whatever the abusers do.

Scenarios (counts at `--scale 1`; every count is multiplied by the scale and rounded, at least 1):

- **slowloris**: 300 sockets send a request line, then one header byte every 2-4 s, never ending
  the headers;
- **idle_keepalive**: 1,000 connections each get one keep-alive GET /healthz answered, then stay
  idle;
- **slow_large_bodies**: 50 sockets POST with `Content-Length` one byte below the body limit and
  trickle the body at 1 KB every 0.5 s;
- **partial_uploads**: 1,000 connections POST with `Content-Length` at the body limit, send the
  first 64 KB and stall (a router that buffers bodies whole, or reserves them up front, grows by
  the declared sizes);
- **overload_burst**: 64 + `--max-in-flight` keep-alive clients POST the image as fast as they can,
  ignoring `Retry-After`, from a process of their own (so that the control's clock does not
  include waits for this process's GIL); every answer must be 200 or 503 (a 503 with
  `Retry-After`).

An abuse socket that the router closes is a defence, not an error: it is counted in
`dropped_by_server`. `without_answer` counts the control requests (and the burst's requests) that
got no HTTP answer at all: a timeout, a reset or a refused connection.

The abuse sockets are non-blocking and served by one `selectors` loop, so 1,000 of them cost the
client one thread; the process's soft RLIMIT_NOFILE is raised to its hard limit first. Only loopback
targets are accepted: this is a denial-of-service tool. Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import http.client
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from benchmarks.abuse.clients import Burst, SocketFlood, SocketPlan, raise_fd_limit
from benchmarks.abuse.measure import (
    CONTROL_TIMEOUT_S,
    ROUTER_DEFAULTS,
    SAMPLE_EVERY_S,  # noqa: F401 - re-exported (tests/test_abuse.py)
    Control,
    Sampler,
    Target,
    post_once,
)
from benchmarks.lib import target as target_urls
from core.cli import write_json
from core.errors import UserInputError
from core.imaging import image_format

SETUP_WAIT_S = 5.0  # the control starts once the abuse is in place, or after this at most
FD_MARGIN = 64  # descriptors beyond the abuse sockets: control, burst reconnects, files
PARTIAL_BODY_BYTES = 64 * 1024
TRICKLE_BYTES, TRICKLE_EVERY_S = 1024, 0.5
SETTLE_S = 1.0  # between scenarios: the router closes the previous one's sockets


def scaled(count: int, scale: float) -> int:
    """`count` at `scale`, rounded, at least 1."""
    return max(1, int(round(count * scale)))


# -- scenarios -------------------------------------------------------------------------------------
def _measure(name: str, t: Target, seconds: float, abuse, sockets: int) -> dict:
    """Run `abuse` (a SocketFlood or Burst) for `seconds` with the control and sampler beside it."""
    if seconds <= 0:
        raise UserInputError("seconds must be positive")
    raise_fd_limit(sockets + FD_MARGIN)
    sampler = Sampler(t.router_pid, seconds + SETUP_WAIT_S + CONTROL_TIMEOUT_S + 10)
    sampler.start()
    setup_started = time.monotonic()
    abuse.start()
    abuse.ready.wait(SETUP_WAIT_S)  # the control measures the abuse in place, not its ramp-up
    setup_s = time.monotonic() - setup_started
    control = Control(t, seconds)
    started = time.monotonic()
    control.start()
    try:
        time.sleep(seconds)  # the abuse is held for the whole duration ...
        # ... and until the last control request has its answer (a connect and a read: 2 timeouts)
        control.wait(2 * CONTROL_TIMEOUT_S + 2)
    finally:
        control.stop.set()
        held_s = time.monotonic() - started
        abuse.stop.set()
        abuse.join(CONTROL_TIMEOUT_S + 5)
        sampler.stop.set()
        sampler.join(2)
    try:  # does the router answer once the abuse is gone?
        status, ms, _ = post_once(t)
        after = {"status": status, "ms": round(ms, 1)}
    except (OSError, http.client.HTTPException) as exc:
        after = {"status": None, "error": type(exc).__name__}
    c = control.summary()
    out = {
        "scenario": name,
        "sockets": sockets,
        "seconds": seconds,
        "setup_s": round(setup_s, 2),
        "held_s": round(held_s, 2),
        "control": c,
        "without_answer": c["without_answer"],
        **sampler.summary(),
    }
    if isinstance(abuse, Burst):
        burst = abuse.summary(held_s)
        out.update(burst)
        out["without_answer"] += burst["burst_without_answer"]
        out["dropped_by_server"] = None  # not measured: burst clients reconnect and count errors
    else:
        out.update(abuse.summary())
    out["control_after"] = after
    return out


def _body(t: Target, n: int) -> bytes:
    """The first `n` bytes of a body that starts as the control image (a PNG header to sniff)."""
    head = t.control_body[:n]
    return head + bytes(n - len(head))


def _request_head(t: Target, content_length: int) -> bytes:
    return (
        f"POST {t.control_path} HTTP/1.1\r\nHost: {t.host_header}\r\nContent-Type: {t.content_type}\r\n"
        f"{t.auth_lines}Content-Length: {content_length}\r\n\r\n"
    ).encode()


def slowloris(t: Target, seconds: float, scale: float) -> dict:
    """Request lines whose headers never end: one more header byte every 2-4 s per socket."""
    count = scaled(300, scale)
    # header lines are never empty, so the bytes never contain the blank line that ends the headers
    headers = b"".join(b"X-Slow-%d: %d\r\n" % (i, i) for i in range(int(seconds / 2) + 2))
    plan = SocketPlan(
        initial=b"GET /healthz HTTP/1.1\r\n",
        trickle_source=headers,
        chunk=1,
        interval=lambda rng: rng.uniform(2.0, 4.0),
        trickle_limit=len(headers),
    )
    return _measure("slowloris", t, seconds, _flood(t, count, plan, seconds), count)


def idle_keepalive(t: Target, seconds: float, scale: float) -> dict:
    """Connections that get one keep-alive GET /healthz answered and then stay idle."""
    count = scaled(1000, scale)
    plan = SocketPlan(initial=f"GET /healthz HTTP/1.1\r\nHost: {t.host_header}\r\n\r\n".encode())
    out = _measure("idle_keepalive", t, seconds, _flood(t, count, plan, seconds), count)
    out["keepalive_answered"] = out["server_answers"].get("200", 0)
    return out


def slow_large_bodies(t: Target, seconds: float, scale: float) -> dict:
    """Bodies declared just under the limit, trickled at 1 KB every 0.5 s (never complete)."""
    count = scaled(50, scale)
    length = t.max_body_bytes - 1
    # never the last byte: the body stays incomplete however long the scenario runs
    limit = min(length - 1, int((seconds + SETUP_WAIT_S) / TRICKLE_EVERY_S + 2) * TRICKLE_BYTES)
    plan = SocketPlan(
        initial=_request_head(t, length),
        trickle_source=_body(t, limit),
        chunk=TRICKLE_BYTES,
        interval=lambda rng: TRICKLE_EVERY_S,
        trickle_limit=limit,
    )
    out = _measure("slow_large_bodies", t, seconds, _flood(t, count, plan, seconds), count)
    out["content_length"] = length
    return out


def partial_uploads(t: Target, seconds: float, scale: float) -> dict:
    """Bodies declared at the limit; the first 64 KB is sent, then nothing more."""
    count = scaled(1000, scale)
    part = min(PARTIAL_BODY_BYTES, t.max_body_bytes // 2)
    plan = SocketPlan(initial=_request_head(t, t.max_body_bytes) + _body(t, part))
    out = _measure("partial_uploads", t, seconds, _flood(t, count, plan, seconds), count)
    out.update(content_length=t.max_body_bytes, body_bytes_each=part)
    return out


def overload_burst(t: Target, seconds: float, scale: float) -> dict:
    """64 + max_in_flight keep-alive clients POSTing back to back: answers must be 200 or 503."""
    clients = scaled(64 + t.max_in_flight, scale)
    out = _measure("overload_burst", t, seconds, Burst(t, clients), clients)
    out["max_in_flight"] = t.max_in_flight
    return out


def _flood(t: Target, count: int, plan: SocketPlan, seconds: float) -> SocketFlood:
    # the hard bound covers set-up, the duration and the last control request's timeout
    return SocketFlood(t, count, plan, hard_seconds=seconds + SETUP_WAIT_S + CONTROL_TIMEOUT_S + 10)


SCENARIOS: dict[str, Callable[[Target, float, float], dict]] = {
    "slowloris": slowloris,
    "idle_keepalive": idle_keepalive,
    "slow_large_bodies": slow_large_bodies,
    "overload_burst": overload_burst,
    "partial_uploads": partial_uploads,
}


def run_scenario(name: str, target: Target, *, seconds: float = 20.0, scale: float = 1.0) -> dict:
    """One scenario's result (see the module docstring); ValueError for an unknown name."""
    if name not in SCENARIOS:
        raise UserInputError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    if scale <= 0:
        raise UserInputError("scale must be positive")
    return SCENARIOS[name](target, seconds, scale)


def run_all(
    target: Target, *, seconds: float = 20.0, scale: float = 1.0, names=None, progress=print
) -> list[dict]:
    """Every scenario in `names` (default: all, in SCENARIOS order); `progress` gets one line each."""
    names = list(names) if names else list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise UserInputError(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    results = []
    for i, name in enumerate(names):
        if i:
            time.sleep(SETTLE_S)
        result = run_scenario(name, target, seconds=seconds, scale=scale)
        results.append(result)
        if progress is not None:
            progress(summary_line(result))
    return results


def summary_line(r: dict) -> str:
    c = r["control"]
    line = (
        f"{r['scenario']}: {r['sockets']} sockets, control {c['answered']}/{c['sent']} answered "
        f"p50/p99/max {c['p50_ms']}/{c['p99_ms']}/{c['max_ms']} ms, "
        f"without_answer {r['without_answer']}, "
        f"router threads max {r['router_threads_max']}, RSS max {r['router_rss_mb_max']} MB"
    )
    if r["scenario"] == "overload_burst":
        return line + f", burst {r['status_counts']} ({r['with_retry_after']} with Retry-After)"
    refused = r["connect_refused"] + r["connect_timeout"]
    return (
        line
        + f", dropped_by_server {r['dropped_by_server']}"
        + (f", connects refused or timed out {refused}" if refused else "")
    )


# -- command line ----------------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    first, _, rest = __doc__.partition("\n\n")
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.abuse",
        description=first,
        epilog=rest,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--url",
        required=True,
        help="base URL of the running router (loopback only), e.g. http://127.0.0.1:8000",
    )
    p.add_argument(
        "--router-pid",
        type=int,
        default=None,
        help="the router's process id: its threads and RSS are sampled (default: not sampled)",
    )
    p.add_argument(
        "--image",
        required=True,
        help="a small PNG (or JPEG) the router classifies: the control request's body",
    )
    p.add_argument("--seconds", type=float, default=20.0, help="how long each scenario holds its abuse")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every socket and client count")
    p.add_argument(
        "--only",
        nargs="+",
        choices=list(SCENARIOS),
        default=None,
        metavar="SCENARIO",
        help=f"run only these ({', '.join(SCENARIOS)}); default: all",
    )
    p.add_argument(
        "--max-body-bytes", type=int, default=ROUTER_DEFAULTS.max_body_bytes, help="the router's body limit"
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=ROUTER_DEFAULTS.max_in_flight,
        help="the router's in-flight limit",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="write the results here")
    return p


def main(args: argparse.Namespace) -> list[dict]:
    url = target_urls.check_url(args.url, "--url", allow_remote=True)  # the loopback check is below
    parts = urlsplit(url)
    if not target_urls.is_loopback(parts.hostname):
        raise UserInputError(
            f"--url {url}: host {parts.hostname} is not loopback; the abuse scenarios "
            "only run against this machine (127.0.0.0/8, localhost, ::1)"
        )
    if parts.scheme != "http":
        raise UserInputError("--url: the abuse scenarios speak plain HTTP; give an http:// URL")
    host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
    if args.seconds <= 0 or args.scale <= 0:
        raise UserInputError("--seconds and --scale must be positive")
    body = Path(args.image).read_bytes()
    if image_format(body) is None:
        raise UserInputError(f"--image {args.image}: not a PNG or JPEG")
    if args.router_pid is not None and not psutil.pid_exists(args.router_pid):
        raise UserInputError(f"--router-pid {args.router_pid}: no such process")
    t = Target(
        host,
        parts.port or 80,
        args.router_pid,
        body,
        max_body_bytes=args.max_body_bytes,
        max_in_flight=args.max_in_flight,
    )
    target_urls.check_router_answers(url)  # one clear line, rather than five scenarios of refusals
    results = run_all(t, seconds=args.seconds, scale=args.scale, names=args.only)
    if args.json:
        write_json(
            args.json,
            {
                **target_urls.provenance("benchmarks.abuse", {"router": url}),
                "seconds": args.seconds,
                "scale": args.scale,
                "scenarios": results,
            },
        )
    return results
