"""`python -m benchmarks.edge_hop`: the command line of `benchmarks.edge_hop`."""

import os
import sys

from benchmarks.edge_hop import get_args_parser, main
from core.cli import run_cli

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(run_cli(main, get_args_parser))
