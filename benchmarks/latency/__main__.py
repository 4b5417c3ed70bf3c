"""`python -m benchmarks.latency`: the command line of `benchmarks.latency`."""

import sys

from benchmarks.latency import get_args_parser, main
from core.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
