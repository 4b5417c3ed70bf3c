"""`python -m benchmarks.offload_tls`: the command line of `benchmarks.offload_tls`."""

import sys

from benchmarks.offload_tls import get_args_parser, main
from core.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
