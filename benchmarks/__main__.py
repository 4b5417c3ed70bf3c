"""`python -m benchmarks`: every experiment, one line each, and how to run it.

The floor plan of `benchmarks/` (as vLLM's `vllm.benchmarks`):

- `benchmarks/lib/`: what the experiments share: the harness that starts the live system
  (`live`), the load client (`loadgen`), the link emulator (`netem`) and the target helpers
  (`target`); nothing there is an experiment;
- one subpackage per experiment, `benchmarks/<name>/`, run as `python -m benchmarks.<name>`: the
  experiment in `__init__.py` (with `get_args_parser` and `main`), its command line in
  `__main__.py`, and its own helpers beside them (`latency/report.py`, `peers/measure.py`, ...).

The list is read from each experiment's docstring (its first paragraph, on one line) without
importing the experiment, so it needs neither PyTorch nor a running system.
"""

from __future__ import annotations

import argparse
import ast
import pkgutil
import sys
from pathlib import Path

from core.cli import run_cli

HERE = Path(__file__).resolve().parent
SHARED = ("lib",)  # subpackages that are not experiments


def summary(docstring: str) -> str:
    """The first paragraph of a docstring, on one line."""
    return " ".join(docstring.strip().split("\n\n")[0].split())


def experiments() -> dict[str, str]:
    """{name: one-line summary} of every experiment subpackage, sorted by name."""
    found = {}
    for module in pkgutil.iter_modules([str(HERE)]):
        if module.ispkg and module.name not in SHARED:
            tree = ast.parse((HERE / module.name / "__init__.py").read_text())
            found[module.name] = summary(ast.get_docstring(tree) or "")
    return dict(sorted(found.items()))


def get_args_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(args: argparse.Namespace) -> int:
    rows = experiments()
    width = max(map(len, rows))
    print("Experiments: `python -m benchmarks.<name>` runs one, `python -m benchmarks.<name> --help`")
    print("says what it measures and takes.\n")
    for name, line in rows.items():
        print(f"  {name:<{width}}  {line}")
    print(
        "\nShared by them (not experiments): benchmarks.lib (the live system's harness, the load "
        "client,\nthe link emulator, the target helpers). What each experiment writes: docs/benchmarks.md."
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
