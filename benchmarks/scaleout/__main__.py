"""`python -m benchmarks.scaleout`: the command line of `benchmarks.scaleout`."""

import sys

from benchmarks.scaleout import get_args_parser, main
from core.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
