#!/usr/bin/env bash
# Create a virtual environment of the project and install its pinned Python dependencies.
# Usage: scripts/bootstrap.sh VENV_DIR [REQUIREMENTS] [MODULES]   (the Makefile re-runs it only when
# the requirements file changes). Defaults: the edge's .venv from requirements.txt; the KServe
# predictor's is `scripts/bootstrap.sh .venv-kserve requirements-kserve.txt "kserve, onnxruntime, cv2"`.
set -euo pipefail
VENV=${1:-.venv}
REQUIREMENTS=${2:-requirements.txt}
MODULES=${3:-torch, torchvision, onnxruntime, cv2, ts, skimage}

# torch 2.14.1 wheels exist for CPython 3.10-3.13; prefer 3.11, which this machine serves from disk.
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3.12 python3.13 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON=$candidate; break; fi
  done
fi
[ -n "$PYTHON" ] || { echo "error: no python3 found; install Python 3.10-3.13" >&2; exit 1; }
if ! "$PYTHON" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 13)))'; then
  echo "error: $PYTHON is $("$PYTHON" --version 2>&1); torch 2.14.1 needs Python 3.10-3.13" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtual environment $VENV with $("$PYTHON" --version)" >&2
  "$PYTHON" -m venv "$VENV"
fi
echo "installing $REQUIREMENTS into $VENV (the first run takes minutes)" >&2
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQUIREMENTS" 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
"$VENV/bin/python" -c "import $MODULES" \
  || { echo "error: the virtual environment is incomplete; see the pip output above" >&2; exit 1; }
touch "$VENV/.installed"
