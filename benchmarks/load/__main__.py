"""`python -m benchmarks.load`: the command line of `benchmarks.load`."""

import sys

from benchmarks.load import get_args_parser, main
from core.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
