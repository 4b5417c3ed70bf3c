"""The benchmarks' existing-deployment mode (`--router URL`) and the provenance of their results.

Fast: no TorchServe, no namespaces. The load and latency clients run for real against a tiny HTTP
server on 127.0.0.1 that answers like the router.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks import latency, load, reliability
from benchmarks.latency import report as latency_report
from benchmarks.lib import target
from core.cli import run_cli

MODULES = {"latency": latency, "load": load, "reliability": reliability}


# -- a stand-in for the router ---------------------------------------------------------------------
ANSWER = {
    "class": 3,
    "class_name": "dress",
    "confidence": 0.93,
    "exit": 1,
    "exit_name": "branch1",
    "expert": "pristine",
    "distortion": "pristine",
    "distortion_probabilities": {"pristine": 1.0},
    "threshold": 0.8,
    "offloaded": False,
    "offloaded_bytes": 0,
    "compression": "fp32",
    "degraded": False,
    "timings_ms": {"total_ms": 1.0},
}


class FakeRouter(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the router
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall
    posts = 0
    lock = threading.Lock()

    def _send(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/healthz":
            self._send(200, {"status": "ok", "experts": ["pristine"]})
        else:
            self._send(404, {"error": "no such endpoint", "status": 404})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not self.path.startswith("/v1/classify"):
            return self._send(404, {"error": "no such endpoint", "status": 404})
        with FakeRouter.lock:
            FakeRouter.posts += 1
        self._send(200, ANSWER)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_router():
    FakeRouter.posts = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeRouter)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# -- argument parsing ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MODULES))
def test_existing_options_parse(name):
    module = MODULES[name]
    args = module.get_args_parser().parse_args(["--router", "http://127.0.0.1:8000/"])
    assert target.existing_targets(args, module.OWN_STACK_OPTIONS) == {"router": "http://127.0.0.1:8000"}
    own = module.get_args_parser().parse_args([])
    assert own.router is None and target.existing_targets(own, module.OWN_STACK_OPTIONS) is None
    remote = module.get_args_parser().parse_args(["--router", "http://10.1.2.3:8000", "--allow-remote"])
    assert target.existing_targets(remote, module.OWN_STACK_OPTIONS) == {"router": "http://10.1.2.3:8000"}
    # the internal client flag of the own-stack mode still parses (it takes namespace addresses)
    hidden = "--link-client" if name == "reliability" else "--client"
    internal = module.get_args_parser().parse_args([hidden, "--client-router", "http://10.213.1.1:8000"])
    assert internal.client_router == "http://10.213.1.1:8000" and internal.router is None


def test_reliability_cloud_options_parse(tmp_path):
    args = reliability.get_args_parser().parse_args(
        [
            "--router",
            "http://localhost:8000",
            "--cloud",
            "http://[::1]:8090",
            "--cloud-key-file",
            str(tmp_path / "key_file.json"),
            "--parts",
            "fuzz",
        ]
    )
    assert target.existing_targets(args, reliability.OWN_STACK_OPTIONS) == {
        "router": "http://localhost:8000",
        "cloud": "http://[::1]:8090",
    }
    assert args.cloud_key_file == str(tmp_path / "key_file.json")


def test_help_names_both_modes():
    for name, module in MODULES.items():
        text = module.get_args_parser().format_help()
        assert "own stack (the default)" in text and "existing deployment (--router URL)" in text, name
        assert "--router URL" in text and "--allow-remote" in text, name
        assert "--client-router" not in text, name


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.9.8.7", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("::1", True),
        ("[::1]", True),
        ("128.0.0.1", False),
        ("10.213.0.2", False),
        ("0.0.0.0", False),
        ("localhost.example.org", False),
        ("example.org", False),
        ("::", False),
        ("127.1", False),
    ],
)
def test_is_loopback(host, loopback):
    assert target.is_loopback(host) is loopback


# -- refusals: one line on stderr, exit 2, nothing started -----------------------------------------
@pytest.mark.parametrize("name", sorted(MODULES))
@pytest.mark.parametrize("url", ["http://10.0.0.5:8000", "http://example.org", "https://192.168.1.2:443"])
def test_non_loopback_router_is_refused(name, url, capsys, tmp_path):
    module = MODULES[name]
    code = run_cli(module.main, module.get_args_parser, ["--router", url, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: --router") and "not loopback" in err and "--allow-remote" in err
    assert not (tmp_path / "o").exists()


def test_non_loopback_cloud_is_refused(capsys):
    code = run_cli(
        reliability.main,
        reliability.get_args_parser,
        ["--router", "http://127.0.0.1:8000", "--cloud", "http://10.0.0.9:8090"],
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --cloud") and "not loopback" in err


@pytest.mark.parametrize(
    "name, argv, reason",
    [
        ("load", ["--router", "ftp://127.0.0.1/"], "http:// or https://"),
        ("load", ["--router", "http://127.0.0.1:8000", "--profiles", "lan"], "own-stack mode"),
        ("latency", ["--router", "http://127.0.0.1:8000", "--backend", "tun"], "own-stack mode"),
        ("reliability", ["--router", "http://127.0.0.1:8000", "--no-link-faults"], "own-stack mode"),
        ("reliability", ["--cloud", "http://127.0.0.1:8090"], "add --router"),
        ("load", ["--allow-remote"], "add --router"),
        ("reliability", ["--router", "http://127.0.0.1:8000", "--cloud-key-file", "k.json"], "needs --cloud"),
    ],
)
def test_mixed_modes_are_refused(name, argv, reason, capsys):
    module = MODULES[name]
    code = run_cli(module.main, module.get_args_parser, argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and reason in err, err


def test_no_router_answering_is_one_line(capsys, tmp_path):
    import socket

    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = run_cli(
        load.main,
        load.get_args_parser,
        ["--router", f"http://127.0.0.1:{port}", "--out", str(tmp_path), "--levels", "1"],
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: no router answers at"), err


# -- real runs against the stand-in ----------------------------------------------------------------
def test_load_against_an_existing_deployment(fake_router, fake_fashion_root, tmp_path, monkeypatch):
    monkeypatch.setattr(load, "plot", lambda report, out: None)  # matplotlib is not under test
    argv = [
        "--router",
        fake_router,
        "--levels",
        "1",
        "2",
        "--seconds",
        "0.5",
        "--max-requests",
        "200",
        "--data-root",
        str(fake_fashion_root),
        "--out",
        str(tmp_path),
    ]
    monkeypatch.setattr(sys, "argv", ["benchmarks/load/__main__.py", *argv])
    assert run_cli(load.main, load.get_args_parser, argv) == 0
    report = json.loads((tmp_path / "load.json").read_text())
    assert report["mode"] == "existing deployment" and report["targets"] == {"router": fake_router}
    assert report["command"] == "python -m benchmarks.load " + " ".join(argv) and report["date"]
    levels = report["profiles"]["existing"]["levels"]
    assert [r["concurrency"] for r in levels] == [1, 2]
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in levels)
    assert sum(r["requests"] for r in levels) == FakeRouter.posts
    assert all(r["requests"] <= 200 for r in levels)
    assert (
        report["profiles"]["existing"]["rss"] == {}
        and "not sampled" in report["profiles"]["existing"]["rss_note"]
    )
    summary = (tmp_path / "summary.md").read_text()
    assert fake_router in summary and "not sampled" in summary


def test_latency_against_an_existing_deployment_records_provenance(
    fake_router, fake_fashion_root, tmp_path, monkeypatch
):
    monkeypatch.setattr(latency_report, "plots", lambda *a: None)
    argv = [
        "--router",
        fake_router,
        "--per-cell",
        "1",
        "--max-minutes",
        "1",
        "--quiet",
        "--data-root",
        str(fake_fashion_root),
        "--out",
        str(tmp_path),
    ]
    monkeypatch.setattr(sys, "argv", ["benchmarks/latency/__main__.py", *argv])
    assert run_cli(latency.main, latency.get_args_parser, argv) == 0
    n_requests = FakeRouter.posts
    assert n_requests == len(latency.configs()) * (len(latency.CELLS) + 1)  # + one warm-up each
    meta = json.loads((tmp_path / "run.json").read_text())
    entry = meta["profiles"]["existing"]
    assert entry["mode"] == "existing deployment" and entry["targets"] == {"router": fake_router}
    by = entry["produced_by"]
    assert by["command"] == "python -m benchmarks.latency " + " ".join(argv)
    assert by["mode"] == "existing deployment" and by["per_cell"] == 1 and by["wall_time_s"] >= 0
    assert [i["profiles_run"] for i in meta["invocations"]] == [["existing"]]

    # a second invocation resumes: the records and their provenance are those of the first
    argv2 = [*argv[:4], "--max-minutes", "2", *argv[6:]]
    monkeypatch.setattr(sys, "argv", ["benchmarks/latency/__main__.py", *argv2])
    assert run_cli(latency.main, latency.get_args_parser, argv2) == 0
    assert FakeRouter.posts == n_requests
    meta2 = json.loads((tmp_path / "run.json").read_text())
    assert meta2["profiles"]["existing"]["produced_by"] == by
    assert len(meta2["invocations"]) == 2 and meta2["invocations"][1]["profiles_kept"] == ["existing"]
    assert meta2["invocations"][1]["command"].endswith(" ".join(argv2))
    assert by["command"] in (tmp_path / "summary.md").read_text()


def test_reliability_faults_are_skipped_against_an_existing_deployment(
    fake_router, tmp_path, monkeypatch, capsys
):
    argv = ["--router", fake_router, "--parts", "faults", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", ["benchmarks/reliability/__main__.py", *argv])
    assert run_cli(reliability.main, reliability.get_args_parser, argv) == 0
    assert FakeRouter.posts == 0  # nothing sent, nothing stopped
    assert "faults skipped" in capsys.readouterr().out
    result = json.loads((tmp_path / "reliability.json").read_text())
    assert [r["scenario"] for r in result["faults"]] == [
        *reliability.LOOPBACK_SCENARIOS,
        *reliability.KSERVE_SCENARIOS,
        *reliability.LINK_SCENARIOS,
    ]
    for row in result["faults"]:
        assert "existing deployment" in row["skipped"]
        assert row["produced_by"]["mode"] == "existing deployment"
        assert row["produced_by"]["targets"] == {"router": fake_router}
        assert row["produced_by"]["command"] == "python -m benchmarks.reliability " + " ".join(argv)
    assert "skipped" in (tmp_path / "reliability.md").read_text()


# -- provenance of results written before it was per profile / per part ----------------------------
def test_latency_legacy_run_json_keeps_its_invocation_and_unknown_profiles(tmp_path):
    (tmp_path / "run.json").write_text(
        json.dumps(
            {
                "command": "python -m benchmarks.latency --per-cell 20",
                "wall_time_s": 496.2,
                "per_cell": 20,
                "profiles": {"lan": {"name": "lan", "rtt_ms": 1.0}},
            }
        )
    )
    meta = latency.load_run_meta(tmp_path / "run.json")
    assert meta["invocations"][0]["command"] == "python -m benchmarks.latency --per-cell 20"
    assert meta["invocations"][0]["profiles_run"] is None
    assert meta["profiles"]["lan"]["produced_by"] is None and "command" not in meta
    lines = "\n".join(latency_report.provenance_lines(meta, ["lan"]))
    assert "lan: unknown" in lines


def test_reliability_legacy_command_is_attributed_only_to_the_parts_it_ran(tmp_path):
    row = {
        "sent": 1,
        "correct": 1,
        "wrong": 0,
        "degraded": 0,
        "errors": 0,
        "lost": 0,
        "error_statuses": [],
        "longest_s": 0.1,
        "deadline_s": 1.0,
    }
    legacy = {
        "command": "python -m benchmarks.reliability --parts fuzz faults --no-link-faults --quiet",
        "fuzz": {
            "inputs": 1,
            "router_inputs": 1,
            "cloud_inputs": 0,
            "status_5xx": 0,
            "worker_deaths": 0,
            "hung": 0,
            "statuses": {"400": 1},
            "still_correct_after": True,
            "examples_5xx": [],
        },
        "faults": [{**row, "scenario": "cloud_stopped"}, {**row, "scenario": "lossy_link_10pct"}],
        "soak": {
            "minutes": 10,
            "clients": 4,
            "requests": 5,
            "errors": 0,
            "degraded": 0,
            "per_minute": [],
            "rss": {},
            "rss_growth_max": None,
            "p99_first_last_ms": None,
        },
    }
    (tmp_path / "reliability.json").write_text(json.dumps(legacy))
    result = reliability.load_result(tmp_path / "reliability.json")
    assert "command" not in result and result["invocations"][0]["command"] == legacy["command"]
    assert result["fuzz"]["produced_by"]["command"] == legacy["command"]
    assert result["faults"][0]["produced_by"]["command"] == legacy["command"]
    assert result["faults"][1]["produced_by"] is None  # kept from an earlier run: unknown
    assert result["soak"]["produced_by"] is None
    reliability.write_markdown(result, tmp_path / "reliability.md")
    text = (tmp_path / "reliability.md").read_text()
    assert legacy["command"] in text and "unknown" in text


# -- reliability: connection abuse and what the results must show --------------------------------------
def test_reliability_abuse_against_an_existing_loopback_deployment(fake_router, tmp_path, monkeypatch):
    from benchmarks import abuse
    from benchmarks.reliability import connection_abuse
    from core.imaging import encode_image
    from tests.conftest import textured_image

    monkeypatch.setattr(connection_abuse, "control_image", lambda: encode_image(textured_image(0, 16)))
    monkeypatch.setattr(abuse, "SETTLE_S", 0.2)
    argv = [
        "--router",
        fake_router,
        "--parts",
        "abuse",
        "--abuse-seconds",
        "1",
        "--abuse-scale",
        "0.01",
        "--out",
        str(tmp_path),
    ]
    monkeypatch.setattr(sys, "argv", ["benchmarks/reliability/__main__.py", *argv])
    assert run_cli(reliability.main, reliability.get_args_parser, argv) == 0
    result = json.loads((tmp_path / "reliability.json").read_text())
    a = result["abuse"]
    assert [s["scenario"] for s in a["scenarios"]] == list(abuse.SCENARIOS)
    assert a["scale"] == 0.01 and a["seconds"] == 1 and "not sampled" in a["router_note"]
    assert a["produced_by"]["mode"] == "existing deployment"
    for s in a["scenarios"]:
        assert s["control"]["sent"] == 1 and s["without_answer"] == 0
        assert s["router_threads_max"] is None and s["router_rss_mb_max"] is None  # no pid of ours
        assert s["checks"]["router_measured"] is None and s["passed"], s["checks"]
    assert a["passed"] and result["checks"]["abuse_every_scenario_passed"] is True
    assert result["router_rss_mb_max_all"] is None
    assert result["checks"]["fuzz_100000_inputs_0_5xx_0_hung"] is None
    text = (tmp_path / "reliability.md").read_text()
    assert "## Connection abuse" in text and "at scale 0.01 (not the required counts)" in text
    assert "| partial_uploads | 10 | 1/1 |" in text


def test_reliability_abuse_is_skipped_for_a_remote_deployment(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(target, "check_router_answers", lambda url: None)
    argv = ["--router", "http://192.0.2.1:8000", "--allow-remote", "--parts", "abuse", "--out", str(tmp_path)]
    assert run_cli(reliability.main, reliability.get_args_parser, argv) == 0
    assert "abuse skipped" in capsys.readouterr().out
    result = json.loads((tmp_path / "reliability.json").read_text())
    assert "not loopback" in result["abuse"]["skipped"]
    assert result["checks"]["abuse_every_scenario_passed"] is None
    assert "Skipped: not run" in (tmp_path / "reliability.md").read_text()


def _scenario(name, *, p99=20.0, without=0, rss=150.0, threads=4, statuses=None, **extra):
    return {
        "scenario": name,
        "sockets": 300,
        "without_answer": without,
        "control": {
            "sent": 8,
            "answered": 8 - without,
            "status_counts": statuses or {"200": 8 - without},
            "p50_ms": 10.0,
            "p99_ms": p99,
            "max_ms": p99,
        },
        "router_threads_max": threads,
        "router_rss_mb_max": rss,
        "dropped_by_server": 0,
        "control_after": {"status": 200, "ms": 5.0},
        **extra,
    }


def test_reliability_abuse_checks_and_the_must_show():
    ok = _scenario("slowloris")
    assert all(reliability.abuse_checks(ok).values())
    # the burst's control mostly meets the in-flight limit: answered and fast is what counts
    burst = _scenario("overload_burst", statuses={"503": 8}, unexpected_status=0, without_retry_after_503=0)
    assert all(reliability.abuse_checks(burst).values())
    assert (
        reliability.abuse_checks({**burst, "without_retry_after_503": 3})["burst_200_or_503_with_retry_after"]
        is False
    )
    slow = reliability.abuse_checks(_scenario("idle_keepalive", p99=1200.0))
    assert slow["control_p99_under_1000ms"] is False
    assert reliability.abuse_checks(_scenario("x", without=1))["none_without_answer"] is False
    fat = reliability.abuse_checks(_scenario("partial_uploads", rss=320.0))
    assert fat["router_rss_under_300mb"] is False and fat["router_measured"] is True

    scenarios = [ok, _scenario("partial_uploads", rss=320.0)]
    for s in scenarios:
        s["checks"] = reliability.abuse_checks(s)
        s["passed"] = all(v is not False for v in s["checks"].values())
    r = {
        "abuse": {
            "scenarios": scenarios,
            "passed": False,
            "seconds": 20,
            "scale": 1.0,
            "max_in_flight": 32,
            "max_body_bytes": 8 << 20,
            "control_p99_limit_ms": 1000.0,
            "router_rss_limit_mb": 300.0,
        },
        "soak": {
            "errors": 0,
            "router_rss_mb_max": 200.0,
            "minutes": 60,
            "rss_growth_max": 0.04,
            "rss_growth_from_s": 300.0,
        },
        "faults": [
            {"scenario": n, "lost": 0, "router_rss_mb_max": 180.0}
            for n in reliability.LOOPBACK_SCENARIOS + reliability.KSERVE_SCENARIOS
        ],
        "fuzz": {
            "inputs": 100_000,
            "status_5xx": 0,
            "hung": 0,
            "router_rss_mb_max": None,
            "worker_deaths": 0,
            "still_correct_after": True,
            "control_after": {"edge": 200, "cloud": 200, "kserve": 200},
        },
    }
    r.update(reliability.router_rss_overall(r))
    assert r["router_rss_mb_max_all"] == 320.0 and r["router_rss_mb_max_all_in"] == "abuse/partial_uploads"
    assert r["router_rss_not_sampled_in"] == ["fuzz"]
    checks = reliability.must_show(r)
    assert checks["fuzz_100000_inputs_0_5xx_0_hung"] is True and checks["faults_0_lost"] is True
    assert checks["fuzz_0_worker_deaths_and_every_tier_answers_after"] is True
    assert checks["kserve_faults_0_lost"] is True
    assert checks["faults_all_scenarios_ran"] is False  # the emulated-link rows are missing
    assert checks["soak_0_errors"] is True and checks["abuse_every_scenario_passed"] is False
    assert (
        checks["soak_60_minutes"] is True
        and checks["soak_every_process_rss_within_10%_from_minute_5"] is True
    )
    assert checks["router_rss_under_300mb_throughout"] is False
    # each requirement fails on its own figure
    r["fuzz"] = {**r["fuzz"], "inputs": 99_999, "control_after": {"edge": 200, "kserve": 502}}
    r["soak"] = {**r["soak"], "minutes": 10, "rss_growth_max": 0.43}
    r["faults"][-1] = {**r["faults"][-1], "lost": 1}
    checks = reliability.must_show(r)
    assert checks["fuzz_100000_inputs_0_5xx_0_hung"] is False
    assert checks["fuzz_0_worker_deaths_and_every_tier_answers_after"] is False
    assert checks["kserve_faults_0_lost"] is False and checks["faults_0_lost"] is False
    assert (
        checks["soak_60_minutes"] is False
        and checks["soak_every_process_rss_within_10%_from_minute_5"] is False
    )


def test_reliability_fate_table_counts_every_request():
    from benchmarks.lib.loadgen import LOST, REFUSED, Record

    records = [
        Record(200, 0.1, 0, 3, {"class": 3, "degraded": False}),
        Record(200, 0.2, 0, 3, {"class": 4, "degraded": False}),
        Record(200, 0.3, 0, 3, {"class": 3, "degraded": True}),
        Record(503, 0.01, 0, 3),
        Record(LOST, 11.0, 0, 3),
        Record(REFUSED, 0.0, 0, 3),
    ]
    row = reliability.fate_table("x", records, 1000.0)
    assert row == {
        "scenario": "x",
        "sent": 6,
        "correct": 1,
        "wrong": 1,
        "degraded": 1,
        "errors": 2,
        "lost": 1,
        "error_statuses": ["503", "refused"],
        "longest_s": 11.0,
        "deadline_s": 1.0,
    }


def test_reliability_fuzz_is_replayed_exactly_by_its_seed_across_four_targets():
    import random

    from benchmarks.reliability import fuzz

    assert fuzz.count_planned(10) == {"router": 4, "edge": 2, "cloud": 2, "kserve": 2}

    class Stub:
        def auth(self, role, kind="inference"):
            return {"Authorization": f"Bearer {role}"}

    seeds = [b"\x89PNG\r\n\x1a\n" + bytes(range(64)), b"\xff\xd8\xff" + bytes(64)]
    models = {"edge": "edge_pristine", "cloud": "cloud_pristine"}

    def draw(seed):
        rng = random.Random(seed)
        return [
            fuzz.fuzz_request(fuzz.TARGET_CYCLE[i % 5], "http://t", rng, seeds, Stub(), models, (4, 2, 2))
            for i in range(200)
        ]

    first = draw(7)
    assert first == draw(7) and first != draw(8)
    urls = {r["url"] for r in first}
    assert urls == {
        "http://t/v1/classify",
        "http://t/predictions/edge_pristine",
        "http://t/predictions/cloud_pristine",
        "http://t/v2/models/cloud_pristine/infer",
    }
    kserve = [r for r in first if r["url"].endswith("/infer")]
    assert any(r["headers"].get("Content-Type") == "application/json" for r in kserve)  # JSON cases too


def test_reliability_report_has_the_fuzz_per_target_and_every_process_of_the_soak(tmp_path):
    proc = {"rss_mb": 100.0, "pss_mb": 60.0, "threads": 5, "open_files": 8}
    r = {
        "fuzz": {
            "inputs": 10,
            "seed": 3,
            "inputs_by_target": {"router": 4, "kserve": 6},
            "statuses_by_target": {"router": {"400": 3, "200": 1}, "kserve": {"400": 6}},
            "statuses": {"400": 9, "200": 1},
            "status_5xx": 0,
            "hung": 0,
            "worker_deaths": 0,
            "control_after": {"kserve": 200},
            "still_correct_after": True,
        },
        "soak": {
            "minutes": 2,
            "clients": 4,
            "requests": 100,
            "errors": 0,
            "p99_first_last_ms": [30.0, 31.0],
            "rss": {"cloud_kserve_0": {"after_warmup_mb": 100.0, "end_mb": 101.0, "growth": 0.01}},
            "rss_growth_max": 0.01,
            "rss_growth_from_s": 300.0,
            "offloaded_share": 0.25,
            "cloud_endpoints": {"cloud1": {"kind": "oip", "answered": 25, "failed": 0}},
            "processes_per_minute": [
                {"minute": 0, "processes": {"cloud_kserve_0": proc}},
                {"minute": 2, "processes": {"cloud_kserve_0": {**proc, "threads": 6}}},
            ],
            "plot": "soak.png",
        },
    }
    reliability.write_markdown(r, tmp_path / "reliability.md")
    text = (tmp_path / "reliability.md").read_text()
    assert "| target | inputs | 200 | 400 |" in text and "| kserve | 6 | 0 | 6 |" in text
    assert "seed 3" in text and "kserve 200" in text
    assert (
        "| cloud_kserve_0 | 100.0 -> 101.0 | +1.0 % | 100.0 / 100.0 | 60.0 / 60.0 | 5 / 6 | 8 / 8 |" in text
    )
    assert "25.0 % of the answers were offloaded" in text and "cloud1 (oip) 25 (0 failed)" in text
    assert "![every process over the soak](soak.png)" in text
