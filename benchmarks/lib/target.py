"""What a benchmark measures: its own stack, or an existing deployment given by URL.

`benchmarks.latency`, `benchmarks.load` and `benchmarks.reliability` have two modes:

- **own stack** (the default): the benchmark builds what it measures (network namespaces,
  edge and cloud TorchServe, the router), runs its load and stops and removes everything at the end;
- **existing deployment** (`--router URL`): the benchmark sends its bounded load to a system that
  is already running. No namespace is created and no process is started, stopped or signalled;
  measurements that need that (fault injection, RSS of the processes, worker deaths) are skipped
  and the result says so.

Only loopback targets (127.0.0.0/8, localhost, ::1) are accepted unless `--allow-remote` is given:
a benchmark sends thousands of requests (the reliability fuzz sends malformed ones), which must not
reach someone else's server by a typo. Host names other than `localhost` are not resolved, so a
name that happens to resolve to a loopback address still needs `--allow-remote`.

Results written in the existing-deployment mode record `"mode": "existing deployment"` and the
target URLs; those of the own stack record `"mode": "own stack"`. Every result also records the
command and the UTC date of the invocation that produced it.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

from core.errors import UserInputError
from core.manifest import artifacts_entry

MODE_OWN = "own stack"
MODE_EXISTING = "existing deployment"
EXISTING = "existing"  # the profile name of an existing deployment's records
LOOPBACK_NOTE = (
    "only loopback hosts (127.0.0.0/8, localhost, ::1) are accepted unless --allow-remote is given"
)


def parser(module: str, doc: str, own: str, existing: str) -> argparse.ArgumentParser:
    """A benchmark's parser whose help names both modes: `own` and `existing` say what each does."""
    first, _, rest = doc.partition("\n\n")
    description = (
        f"{first}\n\nmodes:\n  own stack (the default): {own}\n"
        f"  existing deployment (--router URL): {existing}"
    )
    return argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=rest,
    )


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1; names other than localhost are never resolved."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, option: str, *, allow_remote: bool = False) -> str:
    """An http(s) base URL without a trailing slash; a non-loopback host needs `allow_remote`."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise UserInputError(f"{option} {url!r} is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserInputError(f"{option} {url!r}: give an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise UserInputError(f"{option} {url!r}: give the base URL, without a query or fragment")
    if not allow_remote and not is_loopback(parts.hostname):
        raise UserInputError(f"{option} {url}: host {parts.hostname} is not loopback; {LOOPBACK_NOTE}")
    return url.rstrip("/")


def add_existing_options(parser: argparse.ArgumentParser, *, cloud: bool = False) -> None:
    """The options of the existing-deployment mode, in their own help group."""
    g = parser.add_argument_group(
        "existing deployment (measure a system that is already running; nothing is started, "
        "stopped or created)"
    )
    g.add_argument(
        "--router",
        metavar="URL",
        default=None,
        help="base URL of a running edge router (e.g. http://127.0.0.1:8000); selects this mode",
    )
    if cloud:
        g.add_argument(
            "--cloud",
            metavar="URL",
            default=None,
            help="inference URL of the running cloud TorchServe (e.g. http://127.0.0.1:8090) "
            "for the cloud-tensor fuzz; without it that part is skipped",
        )
        g.add_argument(
            "--cloud-key-file",
            metavar="PATH",
            default=None,
            help="the cloud instance's key_file.json (e.g. run/cloud/key_file.json): its "
            "inference token is sent with the cloud fuzz, never printed",
        )
    g.add_argument(
        "--allow-remote",
        action="store_true",
        help="accept target hosts that are not loopback (by default only 127.0.0.0/8, localhost and ::1 are)",
    )


def existing_targets(args: argparse.Namespace, own_stack_options: tuple[str, ...] = ()) -> dict | None:
    """The checked target URLs ({"router": ..., maybe "cloud": ...}), or None in the own-stack mode.

    Refuses the options of the other mode: `--cloud`/`--cloud-key-file`/`--allow-remote` without
    `--router`, and with `--router` any of `own_stack_options` (argparse dests) that was given.
    """
    cloud = getattr(args, "cloud", None)
    key_file = getattr(args, "cloud_key_file", None)
    if args.router is None:
        extra = [
            o
            for o, v in (
                ("--cloud", cloud),
                ("--cloud-key-file", key_file),
                ("--allow-remote", args.allow_remote),
            )
            if v
        ]
        if extra:
            raise UserInputError(
                f"{', '.join(extra)} belong(s) to the existing-deployment mode: add --router URL"
            )
        return None
    given = ["--" + o.replace("_", "-") for o in own_stack_options if getattr(args, o, None) is not None]
    if given:
        raise UserInputError(f"{', '.join(given)} belong(s) to the own-stack mode, not to --router")
    if key_file and not cloud:
        raise UserInputError("--cloud-key-file needs --cloud")
    targets = {"router": check_url(args.router, "--router", allow_remote=args.allow_remote)}
    if cloud:
        targets["cloud"] = check_url(cloud, "--cloud", allow_remote=args.allow_remote)
    return targets


def check_router_answers(url: str, timeout: float = 10.0) -> None:
    """A one-line error unless the router at `url` answers /healthz with 200."""
    import requests

    try:
        r = requests.get(f"{url}/healthz", timeout=timeout)
    except requests.RequestException as exc:
        raise UserInputError(f"no router answers at {url}/healthz ({type(exc).__name__})") from None
    if r.status_code != 200:
        raise UserInputError(f"the router at {url} is not healthy: /healthz answered {r.status_code}")


def command_line(module: str, argv: list[str] | None = None) -> str:
    """The command as it was typed (`python -m <module> <arguments>`), quoted where needed."""
    return " ".join(["python -m " + module, shlex.join(sys.argv[1:] if argv is None else argv)]).rstrip()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def provenance(module: str, targets: dict | None, model_store: str | Path | None = None) -> dict:
    """Command, UTC date, mode, (existing deployment) targets and (own stack) the served models.

    In the own-stack mode `model_store` is the folder of the archives it serves: the SHA-256 of
    every model file in them is recorded (`artifacts`), the same values as the shipped manifests'.
    """
    out = {"command": command_line(module), "date": utc_now(), "mode": MODE_EXISTING if targets else MODE_OWN}
    if targets:
        out["targets"] = dict(targets)
    elif model_store is not None:
        out["artifacts"] = artifacts_entry(model_store)
    if os.environ.get("EE_PORT_OFFSET", "0") != "0":  # the harness's test ports moved (lib.live)
        out["port_offset"] = int(os.environ["EE_PORT_OFFSET"])
    return out


def describe(prov: dict | None) -> str:
    """One line for a Markdown report: the command, date and mode that produced a result."""
    if not prov:
        return "unknown (written before results recorded the command that produced them)"
    text = f"`{prov.get('command', '?')}`"
    details = [prov[k] for k in ("date",) if prov.get(k)]
    if prov.get("mode") == MODE_EXISTING:
        details.append(
            "existing deployment at " + ", ".join(f"{k} {v}" for k, v in prov.get("targets", {}).items())
        )
    if prov.get("inferred"):
        details.append(prov["inferred"])
    return text + (f" ({'; '.join(details)})" if details else "")


def add_backend_option(parser, *, default: str | None = "auto") -> None:
    """--backend: how an emulated link is made (`benchmarks.lib.netem.Link`)."""
    parser.add_argument(
        "--backend",
        default=default,
        choices=("auto", "netem", "tun"),
        help="link emulation: tc netem, or the user-space delay line over TUN (auto: netem if it works)",
    )


def add_client_half_options(parser: argparse.ArgumentParser) -> None:
    """The hidden options of a command's own-stack client half (it runs inside the device namespace)."""
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client-router", default=None, help=argparse.SUPPRESS)
