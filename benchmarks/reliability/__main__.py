"""`python -m benchmarks.reliability`: the command line of `benchmarks.reliability.cli`."""

import sys

from benchmarks.reliability.cli import get_args_parser, main
from core.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
