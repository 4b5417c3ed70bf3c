"""`python -m edge_router`: run the edge router in front of the edge and cloud TorchServe.

    python -m edge_router --port 8000            # instances started by edge_router.torchserve

The TorchServe addresses and key files default to those `python -m edge_router.torchserve start`
uses (`run/edge`, `run/cloud`); the tokens are read from the key files and never logged.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from core.cli import run_cli
from core.errors import UserInputError
from edge_router.app import Router, RouterConfig, make_server
from edge_router.discovery import Discovery, Endpoint
from edge_router.torchserve import instance, read_keys


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address devices connect to")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--run-dir", default="run", help="working folders of the TorchServe instances")
    for role in ("edge", "cloud"):
        p.add_argument(f"--{role}-url", default=None, help=f"{role} inference API (default: local instance)")
        p.add_argument(f"--{role}-management-url", default=None, help=f"{role} management API")
        p.add_argument(f"--{role}-key-file", default=None, help=f"{role} key_file.json")
    p.add_argument("--threshold", type=float, default=0.8, help="default p_tar")
    p.add_argument("--deadline-ms", type=float, default=2000.0, help="default per-request deadline")
    p.add_argument("--refresh-s", type=float, default=5.0, help="expert discovery period")
    p.add_argument("--log-level", default="INFO")
    return p


def endpoint(role: str, args: argparse.Namespace) -> Endpoint:
    inst = instance(role, run_dir=args.run_dir)
    key_file = Path(getattr(args, f"{role}_key_file") or inst.key_file)
    keys = read_keys(key_file)
    return Endpoint(name=role, inference_url=getattr(args, f"{role}_url") or inst.inference_url,
                    management_url=getattr(args, f"{role}_management_url") or inst.management_url,
                    inference_token=keys["inference"], management_token=keys["management"])


def main(args: argparse.Namespace) -> int:
    if not 0 < args.threshold <= 1:
        raise UserInputError("--threshold must be in (0, 1]")
    if args.deadline_ms <= 0 or args.refresh_s <= 0:
        raise UserInputError("--deadline-ms and --refresh-s must be positive")
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    discovery = Discovery(endpoint("edge", args), endpoint("cloud", args), refresh_s=args.refresh_s)
    discovery.start()
    router = Router(discovery, RouterConfig(default_threshold=args.threshold,
                                            default_deadline_ms=args.deadline_ms))
    try:
        server = make_server(router, args.host, args.port)
    except OSError as exc:
        raise UserInputError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    # SIGTERM drains: no new connections, requests in progress are answered, then exit.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.drain, daemon=True).start())
    cat = discovery.catalogue
    logging.getLogger("edge_router").info(
        "listening on http://%s:%d; experts: %s; refused: %s", args.host, args.port,
        ", ".join(sorted(cat.experts)) or "none", ", ".join(sorted(cat.refused)) or "none")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        discovery.stop()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
