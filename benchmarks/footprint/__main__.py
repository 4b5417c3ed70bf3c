"""`python -m benchmarks.footprint`: the command line of `benchmarks.footprint`."""

import sys

from benchmarks.footprint import get_args_parser, main
from core.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
