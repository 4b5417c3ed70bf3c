"""`python -m benchmarks.adaptive`: the command line of `benchmarks.adaptive`."""

import sys

from benchmarks.adaptive import get_args_parser, main
from core.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
