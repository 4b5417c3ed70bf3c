"""Reliability: fuzzing the live endpoints, fault injection, a soak run and connection abuse.

Two modes:

    python -m benchmarks.reliability --out docs/results                        # own stack, everything
    python -m benchmarks.reliability --parts fuzz --fuzz-inputs 2000 --out /tmp/rel
    python -m benchmarks.reliability --parts abuse --abuse-seconds 8 --out /tmp/rel
    python -m benchmarks.reliability --router http://127.0.0.1:8000 --cloud http://127.0.0.1:8090 \\
        --cloud-key-file run/cloud/key_file.json --parts fuzz soak --fuzz-inputs 2000 --soak-minutes 2

**Own stack** (the default): starts the live system (`benchmarks.lib.live.LiveSystem`) on loopback
test ports and stops it at the end. Fuzz, soak and abuse run against the whole system: the router
(which runs the distortion classifier itself), edge TorchServe, and a cloud pool of one TorchServe
instance and two KServe replicas (`python -m cloud_kserve`, from `.venv-kserve`: `make kserve`).
The fault scenarios each get the system they break: edge and cloud TorchServe alone for the
TorchServe ones, two KServe replicas for the KServe ones, and for the slow and lossy cloud an
emulated link (`benchmarks.latency.emulated_system`). The router gets `--deadline-ms`,
`--max-in-flight` and `--max-body-bytes` as given here. All load is sent by the one load client,
`benchmarks.lib.loadgen.LoadClient`.

**Existing deployment** (`--router URL`, optionally `--cloud URL` and `--cloud-key-file`): sends
the same bounded fuzz, soak and (loopback only) connection abuse to a system that is already
running; nothing is created, started, stopped or signalled. What needs more than that is skipped,
and the result says so:

- the edge-handler and KServe shares of the fuzz (no URLs of theirs are given), and the
  cloud-tensor share without `--cloud`;
- worker deaths (the deployment's TorchServe processes are not this run's) and the check against
  the in-process reference pipeline (the deployment's archives are not known): the fuzz instead
  checks that the router answers 12 images after the fuzz as it did before;
- every fault scenario (each stops, restarts or kills a process, or needs an emulated link);
- the RSS and thread samples of the router and the other processes (soak, abuse);
- the connection abuse unless the router's URL is loopback (it is a denial-of-service tool); its
  sizes follow `--max-in-flight` and `--max-body-bytes`, which should then be the deployment's.

Results go to `run/existing/reliability` unless `--out` says otherwise; each part records
`"mode": "existing deployment"` and the target URLs. Only loopback URLs are accepted unless
`--allow-remote` is given.

Parts:

- **fuzz**: random and mutated images (bit flips, truncations, lying PNG/JPEG headers with huge
  dimensions), wrong content types and query strings against the router and the edge handler, and
  random or mutated binary tensors with lying headers (and malformed JSON requests) against the
  cloud handler and the KServe predictor (`benchmarks.reliability.fuzz`: 40 % router, 20 % each
  other tier; seeded by `--seed`, replayed exactly by the same command). Counts statuses per
  target, 5xx, hung requests (no answer within 10 s) and worker deaths (TorchServe workers and
  KServe processes that changed), then checks that each tier answers a valid request and that the
  router's answers are still correct (against the in-process pipeline).
- **faults** (own stack only): the cloud stopped; the cloud restarted mid-run; an edge worker killed
  mid-load (TorchServe restarts it); the router restarted (SIGTERM: it drains); the cloud slowed
  past the deadline and a lossy link (emulated); with two KServe replicas, one killed under load and
  restarted, one refusing connections throughout, one frozen (SIGSTOP) past the deadline. Every
  request must end as a correct answer, a degraded edge answer or a clear error within its deadline;
  `lost` counts the rest.
- **soak**: steady concurrent load (4 clients, edge exits and offloads mixed) on the router for
  `--soak-minutes`; errors, p99 and offloads per minute, RSS growth of every process after
  `--soak-warmup-minutes`, and every process's RSS, PSS, threads and open files each minute
  (plotted in `soak.png`).
- **abuse**: the connection-abuse scenarios of `benchmarks.abuse`, each held for `--abuse-seconds`:
  slowloris (300 sockets trickling headers), 1,000 idle keep-alive connections, slow large bodies
  from 50 sockets, an overload burst (64 clients above the in-flight limit) and 1,000 partial
  uploads at the body-size limit. During each, one control request a second: its p50/p99/max, the
  requests without an answer, and the router's maximum threads and RSS. A scenario passes with
  control p99 under 1 s, 0 requests without an answer and the router's RSS under 300 MB (in the
  burst the control mostly gets the 503 of the in-flight limit: it is judged on being answered,
  and fast; the burst's own answers must be 200 or a 503 with `Retry-After`).

On the own stack the router's RSS and threads are sampled during every part (every 0.5 s; the
abuse part every 0.25 s); `router_rss_mb_max_all` is the largest RSS over every part sampled, and
`checks` says, for each requirement, whether the parts in the file meet it.

Writes `reliability.json` and `reliability.md` into `--out`. A rerun replaces the parts it runs
and keeps the others; every part (every fault row) records the command, date and mode of the
invocation that produced it (`produced_by`), and `invocations` lists every invocation. Bounded in
requests and time.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
from pathlib import Path

from benchmarks.lib import target
from benchmarks.reliability.checks import must_show, router_rss_overall
from benchmarks.reliability.connection_abuse import run_abuse
from benchmarks.reliability.faults import (
    KSERVE_SCENARIOS,
    LINK_SCENARIOS,
    LOOPBACK_SCENARIOS,
    link_client,
    run_faults,
    run_kserve_faults,
    run_link_faults,
)
from benchmarks.reliability.fuzz import run_fuzz
from benchmarks.reliability.report import write_markdown
from benchmarks.reliability.soak import run_soak
from benchmarks.reliability.system import (
    CLOUD_MODELS,
    EDGE_MODELS,
    ROUTER_MODELS,
    ExistingSystem,
    own_system,
    sampling_router,
)
from core.cli import write_json
from core.errors import UserInputError
from core.imaging import DEFAULT_MAX_BYTES
from edge_router.app import RouterConfig

PARTS = ("fuzz", "faults", "soak", "abuse")
DEFAULT_OUT = "docs/results"
EXISTING_OUT = "run/existing/reliability"
OWN_STACK_OPTIONS = ("model_store", "run_dir", "no_link_faults", "security")
SKIPPED_FAULT = (
    "not run against an existing deployment: the scenario stops, restarts or kills its "
    "processes (or needs an emulated link), which this run did not start and leaves alone"
)


def get_args_parser() -> argparse.ArgumentParser:
    p = target.parser(
        "benchmarks.reliability",
        __doc__,
        own="starts TorchServe and the router on loopback test ports (and an\n    emulated link for "
        "two fault scenarios), runs fuzz, faults, soak and connection abuse,\n    then stops everything.",
        existing="fuzz, soak and (loopback only) connection abuse against a\n    system that is already "
        "running; nothing is created, started, stopped or signalled, so\n    the fault scenarios are "
        "skipped (and the cloud fuzz without --cloud); loopback URLs only\n    unless --allow-remote.",
    )
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument(
        "--fuzz-inputs",
        type=int,
        default=100_000,
        help="in all: 40 %% to the router, 20 %% each to the edge handler, the cloud handler and KServe",
    )
    p.add_argument("--soak-minutes", type=float, default=60.0)
    p.add_argument(
        "--soak-warmup-minutes",
        type=float,
        default=5.0,
        help="RSS growth is measured from this minute of the soak to its end (a JVM's heap and a "
        "worker's allocator settle in the first minutes)",
    )
    p.add_argument("--abuse-seconds", type=float, default=20.0, help="how long each abuse scenario is held")
    p.add_argument(
        "--abuse-scale",
        type=float,
        default=1.0,
        help="multiplies every abuse socket and client count (1: the required counts)",
    )
    p.add_argument("--deadline-ms", type=float, default=1000.0)
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=RouterConfig().max_in_flight,
        help="the router's in-flight limit: given to the own stack's router; with --router, the "
        "deployment's (sizes the overload burst)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        help="the router's body-size limit: given to the own stack's router; with --router, the "
        "deployment's (sizes the slow and partial uploads)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", default=None, help=f"results folder (default: {DEFAULT_OUT}; with --router: {EXISTING_OUT})"
    )
    p.add_argument("--quiet", action="store_true")
    own = p.add_argument_group("own stack (the default: TorchServe and router started here)")
    own.add_argument("--model-store", default=None, help="archives (default: model_store)")
    own.add_argument("--run-dir", default=None, help="working folders (default: run/reliability)")
    own.add_argument(
        "--security",
        choices=("off", "tls", "mtls"),
        default=None,
        help="the system with its security on (benchmarks.lib.live_security): the cloud tiers and the "
        "router on HTTPS, device keys; every request, abuser and fuzz input speaks TLS and the "
        "router's inputs carry the device key (default: off)",
    )
    own.add_argument(
        "--no-link-faults",
        action="store_true",
        default=None,
        help="skip the emulated-link scenarios (their rows of an earlier run are kept)",
    )
    target.add_existing_options(p, cloud=True)
    # the client half of the emulated-link scenarios (runs inside the device namespace)
    p.add_argument("--link-client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--client-router", default=None, help=argparse.SUPPRESS)
    p.add_argument("--plan", default=None, help=argparse.SUPPRESS)
    return p


def main(args: argparse.Namespace) -> dict | int:
    if args.link_client:
        return link_client(args)
    if min(args.fuzz_inputs, args.soak_minutes, args.deadline_ms, args.abuse_seconds, args.abuse_scale) <= 0:
        raise UserInputError(
            "--fuzz-inputs, --soak-minutes, --deadline-ms, --abuse-seconds and --abuse-scale must be positive"
        )
    if args.max_in_flight < 1 or args.max_body_bytes < 2:
        raise UserInputError("--max-in-flight must be at least 1 and --max-body-bytes at least 2")
    targets = target.existing_targets(args, OWN_STACK_OPTIONS)
    if not targets:
        from benchmarks import latency

        store = Path(args.model_store or "model_store")
        needed = ROUTER_MODELS + EDGE_MODELS + CLOUD_MODELS
        if "faults" in args.parts and not args.no_link_faults:  # the emulated system serves these
            needed += [m for m in latency.EDGE_MODELS + latency.CLOUD_MODELS if m not in needed]
        missing = [m for m in needed if not (store / f"{m}.mar").is_file()]
        if missing:
            raise UserInputError(f"{store} lacks {', '.join(missing)}: run python -m export.archive --full")
    out = Path(args.out or (EXISTING_OUT if targets else DEFAULT_OUT))
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "reliability.json"
    result = load_result(result_path)
    prov = target.provenance("benchmarks.reliability", targets, None if targets else store)
    result["invocations"].append({**prov, "parts": list(args.parts)})
    if targets:
        run_existing(ExistingSystem(targets, args.cloud_key_file), args, result, prov)
    else:
        run_own_stack(store, args, result, prov, out)
    result.update(router_rss_overall(result))
    result["checks"] = must_show(result)
    write_json(result_path, result)
    write_markdown(result, out / "reliability.md")
    return result


def run_fuzz_sampled(system, args, reference, prov: dict) -> dict:
    with sampling_router(system) as sampler:
        fuzz = run_fuzz(system, args, reference)
    fuzz = {**fuzz, **sampler.summary(), "produced_by": prov}
    print(json.dumps({k: v for k, v in fuzz.items() if k not in ("examples_5xx", "produced_by")}))
    return fuzz


def run_own_stack(store: Path, args, result: dict, prov: dict, out_dir: Path) -> None:
    from export.pipeline import Pipeline

    run_dir = Path(args.run_dir or "run/reliability").resolve()
    whole = [p for p in args.parts if p in ("fuzz", "soak", "abuse")]
    with contextlib.ExitStack() as stack:
        system = (
            stack.enter_context(own_system(store, run_dir / "whole", args, kserve_replicas=2))
            if whole
            else None
        )
        if "fuzz" in args.parts:
            result["fuzz"] = run_fuzz_sampled(system, args, Pipeline(store), prov)
        if "soak" in args.parts:
            result["soak"] = {**run_soak(system, args, out_dir), "produced_by": prov}
        if "abuse" in args.parts:
            result["abuse"] = {**run_abuse(system, args), "produced_by": prov}
    if "faults" not in args.parts:
        return
    kept = [f for f in result.get("faults", []) if f["scenario"] in LINK_SCENARIOS]
    with own_system(store, run_dir / "loopback", args) as system:
        result["faults"] = [{**row, "produced_by": prov} for row in run_faults(system, args)]
    with own_system(store, run_dir / "kserve", args, cloud_engine="kserve", cloud_replicas=2) as system:
        result["faults"] += [{**row, "produced_by": prov} for row in run_kserve_faults(system, args)]
    if args.no_link_faults:  # keep the emulated-link rows of an earlier run (and their provenance)
        result["faults"] += kept
    else:
        result["faults"] += [{**row, "produced_by": prov} for row in run_link_faults(store, run_dir, args)]


def run_existing(system: ExistingSystem, args, result: dict, prov: dict) -> None:
    """Fuzz, soak and abuse against a running deployment; the fault scenarios are recorded as skipped."""
    target.check_router_answers(system.url)
    if "fuzz" in args.parts:
        result["fuzz"] = run_fuzz_sampled(system, args, None, prov)
    if "faults" in args.parts:
        result["faults"] = [
            {"scenario": name, "skipped": SKIPPED_FAULT, "produced_by": prov}
            for name in LOOPBACK_SCENARIOS + KSERVE_SCENARIOS + LINK_SCENARIOS
        ]
        print(f"faults skipped: {SKIPPED_FAULT}", flush=True)
    if "soak" in args.parts:
        result["soak"] = {**run_soak(system, args), "produced_by": prov}
    if "abuse" in args.parts:
        result["abuse"] = {**run_abuse(system, args), "produced_by": prov}


def load_result(path: Path) -> dict:
    """reliability.json of earlier invocations, each part naming the invocation that produced it.

    A file written before per-part provenance had one `command`, that of its last invocation; the
    parts that command ran (read from its --parts and --no-link-faults) are attributed to it, the
    others get `"produced_by": null` (unknown).
    """
    result = json.loads(path.read_text()) if path.is_file() else {}
    if "invocations" in result:
        return result
    command = result.pop("command", None)
    result["invocations"] = (
        [{"command": command, "date": None, "note": "the last invocation before per-part provenance"}]
        if command
        else []
    )
    made = legacy_parts(command)
    by = {
        "command": command,
        "date": None,
        "mode": target.MODE_OWN,
        "inferred": "attributed from the one command of a file written before per-part provenance",
    }
    for part in ("fuzz", "soak"):
        if part in result:
            result[part].setdefault("produced_by", by if part in made else None)
    for row in result.get("faults", []):
        made_it = ("link" if row["scenario"] in LINK_SCENARIOS else "faults") in made
        row.setdefault("produced_by", by if made_it else None)
    return result


def legacy_parts(command: str | None) -> set[str]:
    """What an old invocation wrote: its --parts, and "link" when it ran the emulated-link faults."""
    prefix = ["python", "-m", "benchmarks.reliability"]
    try:
        words = shlex.split(command or "")
    except ValueError:
        return set()
    if words[:3] != prefix:
        return set()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            old = get_args_parser().parse_args(words[3:])
    except SystemExit:
        return set()
    parts = set(old.parts)
    if "faults" in parts and not old.no_link_faults:
        parts.add("link")
    return parts
