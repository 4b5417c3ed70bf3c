"""`python -m benchmarks.onnx_vs_eager`: the command line of `benchmarks.onnx_vs_eager`."""

import sys

from benchmarks.onnx_vs_eager import get_args_parser, main
from core.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
