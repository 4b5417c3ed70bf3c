"""`python -m benchmarks.abuse`: the command line of `benchmarks.abuse`."""

import sys

from benchmarks.abuse import get_args_parser, main
from core.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
