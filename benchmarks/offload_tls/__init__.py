"""What TLS costs the offload, on every emulated link: the same offloads with the cloud hop (and the
router's front door) plain and over TLS, side by side.

    python -m benchmarks.offload_tls --out docs/results/latency            # all four profiles
    python -m benchmarks.offload_tls --profiles lan paris --offloads 40 --out /tmp/tls

For each profile (`benchmarks.lib.netem`: device -> edge -> cloud) the live system is started twice
over the same link (`benchmarks.latency.emulated_system`): security off, then on
(`LiveSystem(security="tls")`: a throwaway CA, the cloud TorchServe on HTTPS verified by the
router, the router on HTTPS with a device key). A client in the device namespace sends the same
images, one at a time on one keep-alive connection, forced to offload (expert `pristine`, p_tar 1),
and reads from every answer the router's own measure of the offload (`timings_ms.cloud_ms`: edge
tensor out, cloud answer in) and its end-to-end time. The first offload is reported apart: the
router's pooled connection to the cloud may or may not be open when it comes (the router probes
the cloud every second), so the handshake is also measured directly: from the edge namespace, fresh
connections to the cloud's inference port, TCP alone and TCP plus the TLS handshake with
certificate verification, a median of ten each.

Writes `tls.json` and `tls.md`: per profile the offload p50 plain and with TLS, the difference in
ms and in %, the end-to-end p50s, the first offloads and the handshake. The requirements: with
keep-alive, TLS within 1 ms of plain on `lan` and within 2 % on `paris`.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import statistics
import subprocess
import sys
import time
from pathlib import Path

from core.cli import command_line, progress, write_json
from core.errors import UserInputError

DEFAULT_PROFILES = ("lan", "sao_paulo", "fremont", "paris")
EDGE_MODELS = ["edge_pristine"]
CLOUD_MODELS = ["cloud_pristine"]
LAN_LIMIT_MS = 1.0
PARIS_LIMIT = 0.02


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.offload_tls",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--profiles", nargs="+", default=list(DEFAULT_PROFILES))
    p.add_argument("--offloads", type=int, default=60, help="timed offloads per profile and mode")
    p.add_argument("--model-store", default="model_store")
    p.add_argument("--run-dir", default="run/offload_tls")
    p.add_argument("--out", default="docs/results/latency")
    p.add_argument("--quiet", action="store_true")
    # the halves that run inside the namespaces
    p.add_argument("--client", default=None, help=argparse.SUPPRESS)  # JSON plan: device side
    p.add_argument("--handshake", default=None, help=argparse.SUPPRESS)  # JSON plan: edge side
    return p


# -- inside the namespaces ------------------------------------------------------------------------------
def client(plan: dict) -> dict:
    """Device side: `n` + 1 offloads on one keep-alive session; the router's measures of each."""
    import requests

    from benchmarks.reliability.system import test_images
    from core.imaging import encode_image
    from edge_router.tls import verified_session

    options = plan["options"]
    session = (
        verified_session(options["verify"], headers=options["headers"]) if options else requests.Session()
    )
    bodies = [encode_image(im, "png") for im in test_images(8, seed=21)]
    cloud_ms, total_ms, degraded = [], [], 0
    for i in range(plan["n"] + 1):
        started = time.perf_counter()
        r = session.post(
            plan["url"] + "/v1/classify",
            data=bodies[i % len(bodies)],
            params={"expert": "pristine", "threshold": 1.0, "deadline_ms": 20000},
            timeout=60,
        )
        elapsed = 1000 * (time.perf_counter() - started)
        answer = r.json() if r.status_code == 200 else {}
        if r.status_code != 200 or answer.get("degraded") or not answer.get("offloaded"):
            degraded += 1
            continue
        cloud_ms.append(answer["timings_ms"]["cloud_ms"])
        total_ms.append(elapsed)
    return {"cloud_ms": cloud_ms, "total_ms": total_ms, "not_offloaded": degraded}


def handshake(plan: dict) -> dict:
    """Edge side: fresh connections to the cloud, TCP alone and TCP + TLS (verified), ms each."""
    host, port = plan["host"], plan["port"]
    tcp, tls = [], []
    ctx = ssl.create_default_context(cafile=plan["ca"]) if plan.get("ca") else None
    for _ in range(plan.get("n", 10)):
        started = time.perf_counter()
        with socket.create_connection((host, port), timeout=30) as sock:
            tcp.append(1000 * (time.perf_counter() - started))
            if ctx is not None:
                with ctx.wrap_socket(sock, server_hostname=host):
                    tls.append(1000 * (time.perf_counter() - started))
    return {"tcp_connect_ms": tcp, "tcp_and_tls_handshake_ms": tls}


# -- the orchestrator -----------------------------------------------------------------------------------
def measure(profile, mode: str, args) -> dict:
    from benchmarks.latency import emulated_system

    with emulated_system(
        profile,
        model_store=args.model_store,
        run_dir=Path(args.run_dir) / mode,
        max_minutes=10,
        security=mode,
        edge_models=EDGE_MODELS,
        cloud_models=CLOUD_MODELS,
    ) as system:
        plan = {"url": system.url, "n": args.offloads, "options": system.client_options()}
        out = run_inside(system, "dev", "--client", plan)
        cloud = system.insts["cloud"]
        probe = {
            "host": cloud.host,
            "port": cloud.ports.inference,
            "ca": system.secured.ca if system.secured else None,
        }
        out.update(run_inside(system, "edge", "--handshake", probe))
    return out


def run_inside(system, role: str, flag: str, plan: dict) -> dict:
    argv = [sys.executable, "-m", "benchmarks.offload_tls", flag, json.dumps(plan)]
    r = subprocess.run(
        system.link.exec_args(role, argv), env=system.env, capture_output=True, text=True, timeout=900
    )
    if r.returncode != 0:
        raise RuntimeError(f"{flag} in {role} failed: {r.stderr.strip()[-400:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def p50(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def summarize(name: str, plain: dict, secure: dict) -> dict:
    a, b = p50(plain["cloud_ms"][1:]), p50(secure["cloud_ms"][1:])  # steady: after the first
    row = {
        "profile": name,
        "offloads": [len(plain["cloud_ms"]), len(secure["cloud_ms"])],
        "not_offloaded": [plain["not_offloaded"], secure["not_offloaded"]],
        "offload_p50_ms": {"plain": a, "tls": b},
        "offload_p50_diff_ms": None if a is None or b is None else round(b - a, 3),
        "offload_p50_diff_pct": None if not a or b is None else round(100 * (b - a) / a, 2),
        "end_to_end_p50_ms": {"plain": p50(plain["total_ms"][1:]), "tls": p50(secure["total_ms"][1:])},
        "first_offload_ms": {
            "plain": plain["cloud_ms"][0] if plain["cloud_ms"] else None,
            "tls": secure["cloud_ms"][0] if secure["cloud_ms"] else None,
        },
        "handshake_ms": {
            "tcp_connect_p50": p50(secure["tcp_connect_ms"]),
            "tcp_and_tls_p50": p50(secure["tcp_and_tls_handshake_ms"]),
        },
    }
    hs = row["handshake_ms"]
    if hs["tcp_connect_p50"] is not None and hs["tcp_and_tls_p50"] is not None:
        hs["tls_extra_p50"] = round(hs["tcp_and_tls_p50"] - hs["tcp_connect_p50"], 3)
    return row


def checks(rows: dict) -> dict:
    lan, paris = rows.get("lan"), rows.get("paris")
    return {
        f"lan_tls_within_{LAN_LIMIT_MS:g}ms": None
        if lan is None or lan["offload_p50_diff_ms"] is None
        else lan["offload_p50_diff_ms"] <= LAN_LIMIT_MS,
        f"paris_tls_within_{100 * PARIS_LIMIT:g}pct": None
        if paris is None or paris["offload_p50_diff_pct"] is None
        else paris["offload_p50_diff_pct"] <= 100 * PARIS_LIMIT,
    }


def write_markdown(result: dict, path: Path) -> None:
    lines = [
        "# TLS on the offload hop: what it costs, per emulated link",
        "",
        f"Produced by: `{result['command']}` ({result['date']}); {result['offloads']} offloads per profile "
        "and mode, one keep-alive connection each (forced: expert pristine, p_tar 1).",
        "",
        "| profile | offload p50 plain (ms) | with TLS (ms) | difference | end-to-end p50 plain / TLS (ms) "
        "| first offload plain / TLS (ms) | TCP connect p50 (ms) | + TLS handshake p50 (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["profiles"].values():
        hs = r["handshake_ms"]
        lines.append(
            f"| {r['profile']} | {r['offload_p50_ms']['plain']} | {r['offload_p50_ms']['tls']} | "
            f"{r['offload_p50_diff_ms']:+.3f} ms ({r['offload_p50_diff_pct']:+.2f} %) | "
            f"{r['end_to_end_p50_ms']['plain']} / {r['end_to_end_p50_ms']['tls']} | "
            f"{r['first_offload_ms']['plain']} / {r['first_offload_ms']['tls']} | "
            f"{hs['tcp_connect_p50']} | {hs.get('tls_extra_p50')} |"
        )
    lines += ["", "| requirement | met |", "|---|---|"]
    lines += [
        f"| {k} | {'not measured' if v is None else ('yes' if v else '**no**')} |"
        for k, v in result["checks"].items()
    ]
    from benchmarks.lib import netem

    costs = []
    for r in result["profiles"].values():
        extra, profile = r["handshake_ms"].get("tls_extra_p50"), netem.PROFILES.get(r["profile"])
        if extra is not None and profile is not None:
            costs.append(f"{r['profile']} {extra:.0f} ms = {extra / profile.rtt_ms:.1f} RTT")
    lines += [
        "",
        "The offload is the router's own measure (`timings_ms.cloud_ms`). The handshake columns are fresh "
        "connections from the edge namespace to the cloud: TCP alone, and the TLS handshake with "
        "certificate verification on top (" + "; ".join(costs) + "). It is paid once per connection: "
        "the router keeps its connections to the cloud open, so the steady offloads above do not pay "
        "it, and the first offload pays it only when no probe opened the connection before (the "
        "router probes an idle cloud every second).",
        "",
    ]
    path.write_text("\n".join(lines))


def main(args: argparse.Namespace) -> int | dict:
    if args.client:
        print(json.dumps(client(json.loads(args.client))))
        return 0
    if args.handshake:
        print(json.dumps(handshake(json.loads(args.handshake))))
        return 0
    from benchmarks.lib import netem

    if args.offloads < 2:
        raise UserInputError("--offloads must be at least 2")
    unknown = [p for p in args.profiles if p not in netem.PROFILES]
    if unknown:
        raise UserInputError(f"unknown profile {', '.join(unknown)}: {', '.join(netem.PROFILES)}")
    missing = [m for m in EDGE_MODELS + CLOUD_MODELS if not (Path(args.model_store) / f"{m}.mar").is_file()]
    if missing:
        raise UserInputError(f"{args.model_store} lacks {', '.join(missing)}: python -m export.archive")
    rows = {}
    for name in progress(args.profiles, desc="profiles", quiet=args.quiet):
        plain = measure(netem.PROFILES[name], "off", args)
        secure = measure(netem.PROFILES[name], "tls", args)
        rows[name] = summarize(name, plain, secure)
        print(json.dumps(rows[name]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "command": command_line(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "offloads": args.offloads,
        "profiles": rows,
    }
    result["checks"] = checks(rows)
    write_json(out / "tls.json", result)
    write_markdown(result, out / "tls.md")
    return result
