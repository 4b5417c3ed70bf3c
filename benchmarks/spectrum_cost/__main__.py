"""`python -m benchmarks.spectrum_cost`: the command line of `benchmarks.spectrum_cost`."""

import sys

from benchmarks.spectrum_cost import get_args_parser, main
from core.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
