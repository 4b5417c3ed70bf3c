"""`python -m benchmarks.overhead`: the command line of `benchmarks.overhead`."""

import sys

from benchmarks.overhead import get_args_parser, main
from core.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
