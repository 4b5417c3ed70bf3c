"""`python -m benchmarks.frontdoor`: the command line of `benchmarks.frontdoor`."""

import sys

from benchmarks.frontdoor import get_args_parser, main
from core.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
