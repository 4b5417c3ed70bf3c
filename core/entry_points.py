"""The console scripts `pip install` makes (setup.cfg, `[options.entry_points]`): the commands an
operator types, each the same as its `python -m` form.

    edge-router ...        python -m edge_router ...              the devices' front door
    edge-torchserve ...    python -m edge_router.torchserve ...   start/stop/status of an instance
    edge-register ...      python -m edge_router.register ...     plug an expert in or out
    edge-devices ...       python -m edge_router.devices ...      device keys
    edge-pki ...           python -m edge_router.pki ...          a CA and certificates
    cloud-kserve ...       python -m cloud_kserve ...             the cloud segments on KServe

Each imports its module only when run, so one command never pays for another's dependencies.
"""

from __future__ import annotations

import importlib
import sys

from core.cli import run_cli


def _run(module: str) -> None:
    mod = importlib.import_module(module)
    sys.exit(run_cli(mod.main, mod.get_args_parser))


def router() -> None:
    _run("edge_router.__main__")


def torchserve() -> None:
    _run("edge_router.torchserve")


def register() -> None:
    _run("edge_router.register")


def devices() -> None:
    _run("edge_router.devices")


def pki() -> None:
    _run("edge_router.pki")


def kserve() -> None:
    _run("cloud_kserve.__main__")
