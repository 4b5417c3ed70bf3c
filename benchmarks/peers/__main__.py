"""`python -m benchmarks.peers`: the command line of `benchmarks.peers`."""

import sys

from benchmarks.peers import get_args_parser, main
from core.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
