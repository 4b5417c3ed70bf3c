"""Emulated WAN links between network namespaces (device -> edge -> cloud): their self-check.

    python -m benchmarks.netem check --json docs/results/netem_check.json
    python -m benchmarks.netem profiles

Topology (subnet 10.213.0.0/16, with a blackhole route for it in the root namespace first, so a
mistaken connection fails locally instead of leaving the machine):

    ee-dev 10.213.1.2 --veth (no shaping)-- 10.213.1.1 ee-edge 10.213.2.1 ==WAN== 10.213.2.2 ee-cloud

The WAN link has two backends, chosen automatically (`--backend` overrides):

- `netem`: a veth pair with `tc netem` (delay RTT/2 each way, jitter, loss, rate) where the kernel
  has it;
- `tun`: where it does not (this machine), one TUN device per side and a userspace delay line
  (this process, a thread per direction) that holds every packet for RTT/2 (+ jitter, - loss),
  with a `tbf` qdisc on each TUN device for the rate.

`Link` (`benchmarks.lib.netem`, with the profiles) is a context manager: everything it creates
(namespaces, devices, routes, the relay) is removed on exit, also on Ctrl-C or an exception, and a
link never outlives `max_seconds`. This module is the self-check that measures the links.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict

from benchmarks.lib import target
from benchmarks.lib.netem import ADDR, PROFILES, Link, load_profiles
from core.cli import command_line, write_json
from core.errors import UserInputError


# -- self-check ---------------------------------------------------------------------------------
def _python_probe(link: Link, what: str, server: list[str], client: list[str], timeout: float) -> float:
    """Run a probe server (Python snippet) in the cloud namespace and its client in the edge
    namespace; the client prints one number."""
    proc = subprocess.Popen(link.exec_args("cloud", [sys.executable, "-c", *server]), stdout=subprocess.PIPE)
    try:
        proc.stdout.readline()  # "ready"
        out = subprocess.run(
            link.exec_args("edge", [sys.executable, "-c", *client]),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if out.returncode != 0:
            raise RuntimeError(f"{what} probe failed: {out.stderr.strip()[-300:]}")
        return float(out.stdout.strip())
    finally:
        proc.kill()
        proc.wait()


def tcp_rtt_ms(link: Link, samples: int = 20) -> float:
    """Median RTT of 32-byte round trips on one warm TCP connection."""
    return _python_probe(
        link,
        "rtt",
        [_ECHO_SERVER, ADDR["cloud"]],
        [_ECHO_CLIENT, ADDR["cloud"], str(samples)],
        timeout=60 + samples * link.profile.rtt_ms / 100,
    )


def goodput_mbit(link: Link, seconds: float = 8.0, warmup: float = 3.0) -> float:
    """Bulk TCP goodput from cloud to edge on one connection, measured after a warm-up."""
    return _python_probe(
        link,
        "goodput",
        [_BULK_SERVER, ADDR["cloud"], str(seconds + warmup + 2)],
        [_BULK_CLIENT, ADDR["cloud"], str(warmup), str(seconds)],
        timeout=seconds + warmup + 60,
    )


def ping_rtt_ms(link: Link, count: int = 20) -> float:
    """Median RTT of `count` ICMP echoes from the edge to the cloud (Debian's ping)."""
    out = subprocess.run(
        link.exec_args("edge", ["ping", "-n", "-c", str(count), "-i", "0.2", ADDR["cloud"]]),
        capture_output=True,
        text=True,
        timeout=30 + count * (0.2 + link.profile.rtt_ms / 1000),
    )
    times = [float(t.split("=")[1]) for t in out.stdout.split() if t.startswith("time=")]
    if not times:
        raise RuntimeError(f"ping failed: {(out.stderr or out.stdout).strip()[-300:]}")
    return float(statistics.median(times[2:] if len(times) > 4 else times))


def iperf3_goodput_mbit(link: Link, seconds: float = 12.0, warmup: float = 3.0) -> float:
    """One TCP stream cloud -> edge with iperf3 (Debian's), the first `warmup` seconds omitted."""
    server = subprocess.Popen(
        link.exec_args("cloud", ["iperf3", "-s", "-1", "-B", ADDR["cloud"]]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        out = subprocess.run(
            link.exec_args(
                "edge", ["iperf3", "-c", ADDR["cloud"], "-R", "-J", "-t", f"{seconds:g}", "-O", f"{warmup:g}"]
            ),
            capture_output=True,
            text=True,
            timeout=seconds + warmup + 60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"iperf3 failed: {(out.stderr or out.stdout).strip()[-300:]}")
        return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        server.kill()
        server.wait()


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


_ECHO_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5201)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    b = c.recv(64)
    if not b: break
    c.sendall(b)
"""
_ECHO_CLIENT = r"""
import socket, sys, time, statistics
c = socket.create_connection((sys.argv[1], 5201), timeout=30)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
out = []
for i in range(int(sys.argv[2]) + 2):
    t = time.perf_counter(); c.sendall(b"x" * 32); n = 0
    while n < 32: n += len(c.recv(64))
    out.append((time.perf_counter() - t) * 1000)
print(statistics.median(out[2:]))
"""
_BULK_SERVER = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5202)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); end = time.time() + float(sys.argv[2]); buf = b"\0" * 65536
try:
    while time.time() < end: c.sendall(buf)
except OSError:
    pass
"""
_BULK_CLIENT = r"""
import socket, sys, time
c = socket.create_connection((sys.argv[1], 5202), timeout=30)
warm, dur = float(sys.argv[2]), float(sys.argv[3])
t0 = time.time(); got = 0; start = None
while True:
    b = c.recv(1 << 20)
    if not b: break
    now = time.time()
    if start is None and now - t0 >= warm: start, got = now, 0
    elif start is not None: got += len(b)
    if start is not None and now - start >= dur: break
print(got * 8 / (time.time() - start) / 1e6)
"""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.netem",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("action", choices=("check", "profiles"))
    p.add_argument("--profiles", nargs="+", default=list(PROFILES))
    p.add_argument("--profiles-file", default=None, help="JSON of extra profiles")
    target.add_backend_option(p)
    p.add_argument("--seconds", type=float, default=12.0, help="goodput measurement length")
    p.add_argument(
        "--probes",
        default="auto",
        choices=("auto", "debian", "python"),
        help="ping + iperf3 (Debian packages, as the paper) or small Python probes",
    )
    p.add_argument("--json", default=None)
    return p


def main(args: argparse.Namespace) -> dict:
    profiles = load_profiles(args.profiles_file)
    if args.action == "profiles":
        for p in profiles.values():
            print(json.dumps(asdict(p)))
        return {}
    unknown = [n for n in args.profiles if n not in profiles]
    if unknown:
        raise UserInputError(f"unknown profile(s) {', '.join(unknown)} (known: {', '.join(profiles)})")
    result = {"command": command_line(), "profiles": {}}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the context managers' cleanup
    for name in args.profiles:
        p = profiles[name]
        tools = args.probes == "debian" or (args.probes == "auto" and have("ping") and have("iperf3"))
        with Link(p, backend=args.backend, max_seconds=300, with_device=False) as link:
            if tools:
                rtt, goodput = ping_rtt_ms(link), iperf3_goodput_mbit(link, seconds=args.seconds)
            else:
                rtt, goodput = tcp_rtt_ms(link), goodput_mbit(link, seconds=args.seconds)
        row = {
            "backend": link.backend,
            "probes": "ping+iperf3" if tools else "python",
            "rtt_ms_configured": p.rtt_ms,
            "rtt_ms_measured": round(rtt, 2),
            "rate_mbit_configured": p.rate_mbit,
            "goodput_mbit_measured": round(goodput, 2),
            "rtt_error": round(rtt / p.rtt_ms - 1, 4) if p.rtt_ms else None,
            "goodput_error": round(goodput / p.rate_mbit - 1, 4),
        }
        result["profiles"][name] = row
        print(
            f"{name:10s} [{link.backend}] RTT {rtt:8.2f} ms (configured {p.rtt_ms:g})   goodput "
            f"{goodput:7.2f} Mbit/s (configured {p.rate_mbit:g})"
        )
    result["rtt_method"] = (
        "ping: median of 20 ICMP echoes, edge -> cloud (python: median of 20 "
        "32-byte round trips on one warm TCP connection)"
    )
    result["goodput_method"] = (
        f"iperf3 -R -t {args.seconds:g} -O 3: one TCP stream cloud -> edge, the "
        "first 3 s omitted (python: the same with a socket pair)"
    )
    if args.json:
        write_json(args.json, result)
    return result
