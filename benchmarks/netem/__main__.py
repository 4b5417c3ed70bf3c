"""`python -m benchmarks.netem`: the command line of `benchmarks.netem`."""

import sys

from benchmarks.netem import get_args_parser, main
from core.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
