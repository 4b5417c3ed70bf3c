"""`python -m benchmarks.stream`: the command line of `benchmarks.stream`."""

import sys

from benchmarks.stream import get_args_parser, main
from core.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
