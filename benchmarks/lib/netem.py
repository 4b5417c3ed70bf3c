"""The emulated links: the namespaces and addresses, a link's `Profile`, the shipped `PROFILES`
(`load_profiles` adds a user's), and `Link`, which builds them and shapes the edge-cloud WAN with
`tc netem` or, where the kernel lacks it, with TUN devices and the userspace `DelayLine`. The
experiments use it; `python -m benchmarks.netem check` (the emulator's self-check) measures it."""

from __future__ import annotations

import fcntl
import json
import os
import random
import select
import shlex
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserInputError

SUBNET = "10.213.0.0/16"
NS = {"dev": "ee-dev", "edge": "ee-edge", "cloud": "ee-cloud"}
ADDR = {"dev": "10.213.1.2", "edge_dev": "10.213.1.1", "edge": "10.213.2.1", "cloud": "10.213.2.2"}


@dataclass(frozen=True)
class Profile:
    name: str
    rate_mbit: float
    rtt_ms: float
    jitter_ms: float = 0.0
    loss: float = 0.0  # fraction of packets dropped per direction

    def validate(self) -> None:
        if not (self.rate_mbit > 0 and self.rtt_ms >= 0 and self.jitter_ms >= 0 and 0 <= self.loss < 1):
            raise UserInputError(f"profile {self.name}: rate > 0, rtt >= 0, jitter >= 0, 0 <= loss < 1")


# The paper's three edge-cloud distances (Sao Paulo, Fremont, Paris) and a local link.
PROFILES = {
    "lan": Profile("lan", 100.0, 1.0),  # a campus link; the userspace line tops out near 400 Mbit/s
    "sao_paulo": Profile("sao_paulo", 93.6, 10.0),
    "fremont": Profile("fremont", 73.3, 180.0),
    "paris": Profile("paris", 60.0, 216.0),
}


def load_profiles(path: str | None) -> dict[str, Profile]:
    """The built-in profiles plus a user's JSON file: {"name": {"rate_mbit": .., "rtt_ms": ..}}."""
    profiles = dict(PROFILES)
    if path:
        try:
            data = json.loads(Path(path).read_text())
            for name, spec in data.items():
                profiles[name] = Profile(name=name, **spec)
        except (OSError, ValueError, TypeError) as exc:
            raise UserInputError(f"profiles file {path}: {exc}") from None
    for p in profiles.values():
        p.validate()
    return profiles


def sh(cmd: str, *, check: bool = True, ns: str | None = None) -> subprocess.CompletedProcess:
    """Run a fixed command (never built from request data) in the root or a named namespace."""
    args = shlex.split(cmd)
    if ns:
        args = ["ip", "netns", "exec", ns, *args]
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {(done.stderr or done.stdout).strip()}")
    return done


def netem_available() -> bool:
    probe = "ee-probe0"
    sh(f"ip link del {probe}", check=False)
    try:
        sh(f"ip link add {probe} type dummy")
        return sh(f"tc qdisc add dev {probe} root netem delay 1ms", check=False).returncode == 0
    except RuntimeError:
        return False
    finally:
        sh(f"ip link del {probe}", check=False)


def namespaces_available() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    try:
        sh("ip netns del ee-probe", check=False)  # a leftover of an interrupted probe
        sh("ip netns add ee-probe")
        sh("ip netns del ee-probe")
    except (RuntimeError, FileNotFoundError, subprocess.TimeoutExpired) as exc:
        return False, f"cannot create a network namespace: {exc}"
    return True, ""


# -- the userspace delay line --------------------------------------------------------------------
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


class DelayLine:
    """Holds every packet read from one TUN fd for `delay` seconds, then writes it to the other.

    FIFO per direction (jitter never reorders: a packet leaves no earlier than its predecessor),
    independent loss per packet. The rate is the tbf qdisc's job on the sending device.
    """

    def __init__(self, fd_a: int, fd_b: int, profile: Profile, *, seed: int = 0):
        self.fds = (fd_a, fd_b)
        self.delay = profile.rtt_ms / 2000.0
        self.jitter = profile.jitter_ms / 1000.0
        self.loss = profile.loss
        self.rng = random.Random(seed)  # noqa: S311 - reproducible link jitter, not secrets
        self.stop = threading.Event()
        self.queues = (deque(), deque())
        self.cv = (threading.Condition(), threading.Condition())
        self.threads = []
        # How late the writer is on average (wake-up latency, the write itself): subtracted from
        # the delay of the next packets so the delivered delay matches the profile.
        self.lateness = [0.0002, 0.0002]

    def start(self) -> None:
        for d in (0, 1):
            for target in (self._reader, self._writer):
                t = threading.Thread(target=target, args=(d,), daemon=True, name=f"delay-{d}")
                t.start()
                self.threads.append(t)

    def close(self) -> None:
        """Stop and join every thread: only then may the caller close the fds (a late write to a
        closed, reused fd number would land in some other file)."""
        self.stop.set()
        for cv in self.cv:
            with cv:
                cv.notify_all()
        for t in self.threads:
            t.join(timeout=5)

    def _reader(self, d: int) -> None:
        fd, q, cv = self.fds[d], self.queues[d], self.cv[d]
        last = 0.0
        while not self.stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            try:
                packet = os.read(fd, 65536)
            except OSError:
                return
            now = time.monotonic()
            if self.loss and self.rng.random() < self.loss:
                continue
            jitter = self.rng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0
            release = max(last, now + max(0.0, self.delay + jitter - self.lateness[d]))
            last = release
            with cv:
                q.append((release, packet))
                cv.notify()

    def _writer(self, d: int) -> None:
        fd, q, cv = self.fds[1 - d], self.queues[d], self.cv[d]
        while not self.stop.is_set():
            with cv:
                while not q and not self.stop.is_set():
                    cv.wait(0.2)
                if self.stop.is_set():
                    return
                release, packet = q[0]
            slept = False
            while not self.stop.is_set() and (wait := release - time.monotonic()) > 0:
                time.sleep(min(wait, 0.05))
                slept = True
            if self.stop.is_set():
                return
            with cv:
                q.popleft()
            try:
                os.write(fd, packet)
            except OSError:
                pass  # the far side went away (teardown)
            late = time.monotonic() - release
            if slept and 0 <= late < 0.002:  # only wake-up latency, never queueing
                self.lateness[d] = 0.95 * self.lateness[d] + 0.05 * late


# -- the link ----------------------------------------------------------------------------------
class Link:
    """Namespaces dev/edge/cloud with `profile` on the edge-cloud link (a context manager)."""

    def __init__(
        self, profile: Profile, *, backend: str = "auto", max_seconds: float = 1800, with_device: bool = True
    ):
        if backend not in ("auto", "netem", "tun"):
            raise UserInputError("--backend must be auto, netem or tun")
        profile.validate()
        self.profile = profile
        self.backend = backend
        self.max_seconds = max_seconds
        self.with_device = with_device
        self.delay_line: DelayLine | None = None
        self._fds: list[int] = []
        self._timer: threading.Timer | None = None
        self._blackholed = False

    # public helpers
    def exec_args(self, role: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", NS[role], *argv]

    def __enter__(self) -> Link:
        ok, why = namespaces_available()
        if not ok:
            raise UserInputError(why)
        if self.backend == "auto":
            self.backend = "netem" if netem_available() else "tun"
        self._cleanup_leftovers()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        self._timer = threading.Timer(self.max_seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _expire(self) -> None:
        print(f"netem: link time limit of {self.max_seconds:.0f} s reached, tearing down", file=sys.stderr)
        self.close()

    def _cleanup_leftovers(self) -> None:
        for ns in NS.values():
            sh(f"ip netns del {ns}", check=False)
        for dev in ("ee-tune", "ee-tunc", "ee-wan-e", "ee-dev-e"):
            sh(f"ip link del {dev}", check=False)

    def _build(self) -> None:
        # safety first: nothing addressed to the namespace subnet may leave the root namespace
        if sh(f"ip route add blackhole {SUBNET}", check=False).returncode == 0:
            self._blackholed = True
        for ns in NS.values():
            sh(f"ip netns add {ns}")
            sh("ip link set lo up", ns=ns)
        if self.with_device:
            sh("ip link add ee-dev-e type veth peer name ee-dev-d")
            sh(f"ip link set ee-dev-e netns {NS['edge']}")
            sh(f"ip link set ee-dev-d netns {NS['dev']}")
            sh(f"ip addr add {ADDR['edge_dev']}/24 dev ee-dev-e", ns=NS["edge"])
            sh(f"ip addr add {ADDR['dev']}/24 dev ee-dev-d", ns=NS["dev"])
            sh("ip link set ee-dev-e up", ns=NS["edge"])
            sh("ip link set ee-dev-d up", ns=NS["dev"])
        p = self.profile
        if self.backend == "netem":
            sh("ip link add ee-wan-e type veth peer name ee-wan-c")
            sh(f"ip link set ee-wan-e netns {NS['edge']}")
            sh(f"ip link set ee-wan-c netns {NS['cloud']}")
            pairs = (("ee-wan-e", "edge"), ("ee-wan-c", "cloud"))
            for dev, role in pairs:
                ns = NS[role]
                sh(f"ip addr add {ADDR[role]}/24 dev {dev}", ns=ns)
                sh(f"ip link set {dev} up", ns=ns)
                jitter = f" {p.jitter_ms / 2:g}ms" if p.jitter_ms else ""
                loss = f" loss {100 * p.loss:g}%" if p.loss else ""
                sh(
                    f"tc qdisc add dev {dev} root netem delay {p.rtt_ms / 2:g}ms{jitter}{loss} "
                    f"rate {p.rate_mbit:g}mbit limit 100000",
                    ns=ns,
                )
        else:
            fd_e, fd_c = open_tun("ee-tune"), open_tun("ee-tunc")
            self._fds = [fd_e, fd_c]
            for dev, role, peer in (("ee-tune", "edge", "cloud"), ("ee-tunc", "cloud", "edge")):
                ns = NS[role]
                sh(f"ip link set {dev} netns {ns}")
                sh(f"ip addr add {ADDR[role]} peer {ADDR[peer]} dev {dev}", ns=ns)
                sh(f"ip link set {dev} mtu 1500 up", ns=ns)
                # queue of about a second of data at the rate, burst of a few packets
                burst = max(4 * 1514, int(p.rate_mbit * 1e6 / 8 / 250))
                limit = max(64 * 1514, int(p.rate_mbit * 1e6 / 8 * max(0.2, p.rtt_ms / 1000)))
                sh(
                    f"tc qdisc add dev {dev} root tbf rate {p.rate_mbit:g}mbit burst {burst} limit {limit}",
                    ns=ns,
                )
            self.delay_line = DelayLine(fd_e, fd_c, p)
            self.delay_line.start()

    def change(self, profile: Profile) -> None:
        """Give the running link another profile (delay, jitter, loss, rate) without a restart: the
        open connections and the live system stay, as when a real path changes under them."""
        profile.validate()
        p = profile
        if self.backend == "netem":
            jitter = f" {p.jitter_ms / 2:g}ms" if p.jitter_ms else ""
            loss = f" loss {100 * p.loss:g}%" if p.loss else ""
            for dev, role in (("ee-wan-e", "edge"), ("ee-wan-c", "cloud")):
                sh(
                    f"tc qdisc change dev {dev} root netem delay {p.rtt_ms / 2:g}ms{jitter}{loss} "
                    f"rate {p.rate_mbit:g}mbit limit 100000",
                    ns=NS[role],
                )
        else:
            for dev, role in (("ee-tune", "edge"), ("ee-tunc", "cloud")):
                burst = max(4 * 1514, int(p.rate_mbit * 1e6 / 8 / 250))
                limit = max(64 * 1514, int(p.rate_mbit * 1e6 / 8 * max(0.2, p.rtt_ms / 1000)))
                tbf = f"tbf rate {p.rate_mbit:g}mbit burst {burst} limit {limit}"
                sh(f"tc qdisc change dev {dev} root {tbf}", ns=NS[role])
            line = self.delay_line
            line.delay, line.jitter, line.loss = p.rtt_ms / 2000.0, p.jitter_ms / 1000.0, p.loss
        self.profile = profile

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.delay_line is not None:
            self.delay_line.close()
            self.delay_line = None
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []
        for ns in NS.values():
            sh(f"ip netns del {ns}", check=False)
        if self._blackholed:
            sh(f"ip route del blackhole {SUBNET}", check=False)
            self._blackholed = False
