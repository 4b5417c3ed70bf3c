"""The connection-abuse scenarios (`benchmarks.abuse`), each run tiny against a local test server.

Fast: no TorchServe. The server stands in for a router that defends itself simply: a read that
waits 0.8 s closes the connection (so idle abusers and slowloris are dropped, but a body trickled
every 0.5 s is not: the weakness of a per-read timeout) and it answers 503 with `Retry-After`
beyond one request in flight. The assertions are on what was measured: every control
request answered, counts equal to what was sent, every abuse socket accounted for.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks import abuse
from core.cli import run_cli
from core.imaging import encode_image
from tests.conftest import textured_image

IDLE_TIMEOUT_S = 0.8  # > the 0.5 s trickle of slow_large_bodies, < slowloris' 2 s per byte
SECONDS = 1.5  # two control requests, at 0 and 1 s
SCALE = 0.02  # slowloris 6, idle 20, slow bodies 1, burst 2, partial uploads 20
MAX_BODY = 1 << 20  # a small limit: the test server reserves what a client declares


class DefendingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT_S  # a read that waits longer closes the connection
    in_flight = threading.BoundedSemaphore(1)

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(200 if self.path == "/healthz" else 404, {"status": "ok"})

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        if n > MAX_BODY:
            self.close_connection = True
            return self._send(413, {"error": "too large"})
        if len(self.rfile.read(n)) < n:  # the client gave up mid-body: nothing to answer
            self.close_connection = True
            return
        if not DefendingHandler.in_flight.acquire(blocking=False):
            return self._send(503, {"error": "busy"}, {"Retry-After": "1"})
        try:
            time.sleep(0.005)  # long enough for two burst clients to overlap now and then
            self._send(200, {"class": 3})
        finally:
            DefendingHandler.in_flight.release()

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # every abuse socket connects at once


@pytest.fixture(scope="module")
def server():
    srv = Server(("127.0.0.1", 0), DefendingHandler)
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    th.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    th.join(5)


@pytest.fixture(scope="module")
def png() -> bytes:
    return encode_image(textured_image(0, 16))


@pytest.fixture(scope="module")
def target(server, png) -> abuse.Target:
    # the test process stands in for the router's process: its threads and RSS are sampled
    return abuse.Target(
        "127.0.0.1", server.server_address[1], os.getpid(), png, max_body_bytes=MAX_BODY, max_in_flight=32
    )


@pytest.fixture(scope="module")
def results(target) -> dict[str, dict]:
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(abuse, "SETTLE_S", 0.2)  # the test server needs no time to settle
        out = abuse.run_all(target, seconds=SECONDS, scale=SCALE, progress=lines.append)
    assert [line.split(":")[0] for line in lines] == list(abuse.SCENARIOS)
    return {r["scenario"]: r for r in out}


@pytest.mark.parametrize("name", list(abuse.SCENARIOS))
def test_every_scenario_reports_the_control_and_the_router(results, name):
    r = results[name]
    assert r["seconds"] == SECONDS
    c = r["control"]
    assert c["sent"] == 2 and c["answered"] == 2 and r["control"]["without_answer"] == 0
    assert sum(c["status_counts"].values()) == 2
    assert set(c["status_counts"]) <= {"200", "503"}  # 503: the burst holds the one slot
    assert 0 < c["p50_ms"] <= c["p99_ms"] <= c["max_ms"] < 10_000
    assert r["router_threads_max"] >= 1 and r["router_rss_mb_max"] >= r["router_rss_mb_start"] > 0
    assert r["router_samples"] >= SECONDS / abuse.SAMPLE_EVERY_S - 2
    assert r["control_after"]["status"] in (200, 503)
    assert r["without_answer"] == 0


@pytest.mark.parametrize("name,count", [("slowloris", 6), ("idle_keepalive", 20), ("partial_uploads", 20)])
def test_socket_scenarios_count_what_the_server_dropped(results, name, count):
    r = results[name]
    assert r["sockets"] == count
    assert r["connected"] == count and r["connect_refused"] == 0 and r["connect_timeout"] == 0
    # the server closes a connection whose read waits 0.8 s: these abusers are all dropped
    assert r["dropped_by_server"] == count and r["open_at_end"] == 0
    assert IDLE_TIMEOUT_S * 0.9 <= r["dropped_after_s"]["min"] <= r["dropped_after_s"]["max"] < SECONDS
    assert r["bytes_sent"] > 0


def test_a_trickled_body_outlives_a_per_read_timeout(results, target):
    r = results["slow_large_bodies"]
    assert r["sockets"] == r["connected"] == 1
    assert r["dropped_by_server"] == 0 and r["dropped_after_s"] is None and r["open_at_end"] == 1
    assert r["content_length"] == MAX_BODY - 1 and r["server_answers"] == {}
    # the headers, then 1 KB every 0.5 s for the ~1.5 s the scenario held it
    trickled = r["bytes_sent"] - len(abuse._request_head(target, MAX_BODY - 1))
    assert trickled % abuse.TRICKLE_BYTES == 0 and 2 <= trickled // abuse.TRICKLE_BYTES <= 4


def test_scenario_specifics(results, target):
    assert results["idle_keepalive"]["keepalive_answered"] == 20  # one /healthz each, then idle
    assert results["idle_keepalive"]["server_answers"] == {"200": 20}
    assert results["slowloris"]["server_answers"] == {}  # headers never ended
    assert results["slowloris"]["bytes_sent"] == 6 * len(b"GET /healthz HTTP/1.1\r\n")  # next byte: 2 s
    partial = results["partial_uploads"]
    assert partial["content_length"] == MAX_BODY and partial["body_bytes_each"] == 64 * 1024
    assert partial["bytes_sent"] == 20 * (len(abuse._request_head(target, MAX_BODY)) + 64 * 1024)


def test_overload_burst_counts_every_answer(results):
    r = results["overload_burst"]
    assert r["clients"] == r["sockets"] == 2 and r["max_in_flight"] == 32
    assert r["requests_sent"] > 20 and r["requests_sent"] == r["answered"] + r["burst_without_answer"]
    assert r["burst_without_answer"] == 0 and r["errors"] == {}
    assert sum(r["status_counts"].values()) == r["answered"] and r["unexpected_status"] == 0
    assert r["status_counts"].get("200", 0) > 0
    assert r["with_retry_after"] == r["status_counts"].get("503", 0) and r["without_retry_after_503"] == 0


def test_scale_rounds_to_at_least_one():
    assert abuse.scaled(300, 0.001) == 1 and abuse.scaled(1000, 0.02) == 20
    assert abuse.scaled(64 + 32, 1.0) == 96


@pytest.mark.parametrize("host", ["10.0.0.1", "example.com", "localhost.example", "0.0.0.0"])
def test_only_loopback_targets(host, png):
    with pytest.raises(ValueError, match="loopback"):
        abuse.Target(host, 8000, None, png)
    assert abuse.Target("::1", 8000, None, png).host_header == "[::1]:8000"
    assert abuse.Target("127.0.0.2", 8000, None, png).host == "127.0.0.2"


def test_unknown_scenario_is_refused(png):
    with pytest.raises(ValueError, match="unknown scenario"):
        abuse.run_scenario("nope", abuse.Target("127.0.0.1", 8000, None, png), seconds=1)


def test_cli(server, png, tmp_path, capsys):
    image = tmp_path / "x.png"
    image.write_bytes(png)
    out = tmp_path / "abuse.json"
    url = f"http://127.0.0.1:{server.server_address[1]}"
    code = run_cli(
        abuse.main,
        abuse.get_args_parser,
        [
            "--url",
            url,
            "--image",
            str(image),
            "--seconds",
            "1",
            "--scale",
            "0.01",
            "--only",
            "slowloris",
            "--max-body-bytes",
            str(MAX_BODY),
            "--json",
            str(out),
        ],
    )
    assert code == 0
    line = capsys.readouterr().out.strip().splitlines()
    assert len(line) == 1 and line[0].startswith("slowloris: 3 sockets, control 1/1 answered")
    saved = json.loads(out.read_text())
    assert saved["mode"] == "existing deployment" and saved["targets"] == {"router": url}
    [r] = saved["scenarios"]
    assert r["control"]["answered"] == 1 and r["router_threads_max"] is None  # no --router-pid
    # a remote URL is refused before anything is sent
    assert (
        run_cli(abuse.main, abuse.get_args_parser, ["--url", "http://192.0.2.1:8000", "--image", str(image)])
        == 2
    )
    assert "not loopback" in capsys.readouterr().err


def test_too_few_file_descriptors_is_a_clear_error():
    with pytest.raises(ValueError, match="RLIMIT_NOFILE"):
        abuse.raise_fd_limit(10**12)
    assert abuse.raise_fd_limit(16) >= 16
