"""Register, list and unregister experts on the edge and cloud TorchServe instances.

    python -m edge_router.register add gaussian_blur      # edge_gaussian_blur.mar + cloud_gaussian_blur.mar
    python -m edge_router.register list
    python -m edge_router.register remove gaussian_blur

Both archives must already be in each instance's model store: registration names an archive file
of the store, never a URL (the instances refuse URLs; see config.properties). The router picks a
newly registered expert up at its next discovery refresh, and stops using a removed one.
"""

from __future__ import annotations

import argparse
import sys

import requests

from core import experts
from core.cli import run_cli
from core.errors import UserInputError
from edge_router.__main__ import endpoint


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("action", choices=("add", "list", "remove"))
    p.add_argument("expert", nargs="?", default=None, help="expert name, e.g. gaussian_blur")
    p.add_argument("--run-dir", default="run")
    for role in ("edge", "cloud"):
        p.add_argument(f"--{role}-url", default=None)
        p.add_argument(f"--{role}-management-url", default=None)
        p.add_argument(f"--{role}-key-file", default=None)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--timeout-s", type=float, default=120.0)
    return p


def _check(r: requests.Response, what: str) -> dict:
    if r.status_code >= 400:
        try:
            reason = r.json().get("message", r.reason)
        except ValueError:
            reason = r.reason
        raise UserInputError(f"{what}: {r.status_code} {' '.join(str(reason).split())[:200]}")
    try:
        return r.json()
    except ValueError:
        return {}


def main(args: argparse.Namespace) -> dict:
    if args.action != "list":
        if not args.expert:
            raise UserInputError(f"{args.action} needs an expert name, e.g. gaussian_blur")
        experts.check_expert_name(args.expert)
    eps = {role: endpoint(role, args) for role in ("edge", "cloud")}
    out: dict = {}
    for role, ep in eps.items():
        # an HTTPS cloud: verified against its CA, never skipped
        with ep.tls.session() if ep.tls else requests.Session() as s:
            model = experts.archive_name(role, args.expert) if args.expert else ""
            url, headers = f"{ep.management_url}/models", ep.auth("management")
            if args.action == "add":
                params = {
                    "url": f"{model}.mar",
                    "model_name": model,
                    "initial_workers": args.workers,
                    "synchronous": "true",
                }
                out[model] = _check(
                    s.post(url, params=params, headers=headers, timeout=args.timeout_s),
                    f"registering {model} on the {role}",
                )
                print(f"{role}: registered {model}")
            elif args.action == "remove":
                out[model] = _check(
                    s.delete(f"{url}/{model}", headers=headers, timeout=args.timeout_s),
                    f"unregistering {model} from the {role}",
                )
                print(f"{role}: unregistered {model}")
            else:
                models = _check(
                    s.get(url, headers=headers, params={"limit": 1000}, timeout=30),
                    f"listing the {role}'s models",
                )
                out[role] = sorted(m["modelName"] for m in models.get("models", []))
                print(f"{role}: {', '.join(out[role]) or 'no models'}")
    return out


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
