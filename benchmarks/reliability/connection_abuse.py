"""The abuse part: `benchmarks.abuse`'s connection-abuse scenarios against the router, each judged by
`checks.abuse_checks`; skipped for a deployment whose URL is not loopback."""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

from benchmarks import abuse
from benchmarks.lib import target
from benchmarks.reliability.checks import CONTROL_P99_LIMIT_MS, ROUTER_RSS_LIMIT_MB, abuse_checks
from benchmarks.reliability.system import NOT_SAMPLED_RSS, ExistingSystem, test_images
from core.imaging import encode_image

SKIPPED_ABUSE = (
    "not run: the router's URL is not loopback, and the connection-abuse scenarios only run "
    "against this machine"
)


def control_image() -> bytes:
    """The control request's body: a valid PNG test image the router classifies."""
    return encode_image(test_images(1, seed=5)[0], "png")


def device_of(system) -> dict:
    """A router with its security on: the TLS context and key header every abuser and control uses
    (the run's CA, a client certificate under mutual TLS, the device key)."""
    options = {} if isinstance(system, ExistingSystem) else system.client_options()
    if not options:
        return {}
    ctx = ssl.create_default_context(cafile=options["verify"])
    if options.get("cert"):
        ctx.load_cert_chain(*options["cert"])
    return {"tls": ctx, "auth": options["headers"]}


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
        parts.port or (443 if parts.scheme == "https" else 80),
        router_pid=pid,
        control_body=control_image(),
        max_body_bytes=args.max_body_bytes,
        max_in_flight=args.max_in_flight,
        **device_of(system),
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
