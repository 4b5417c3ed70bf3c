#!/usr/bin/env bash
# The KServe predictor's own virtual environment (requirements-kserve.txt), apart from the edge's.
# Usage: scripts/bootstrap_kserve.sh VENV_DIR   (make test / make kserve; re-run when the file changes)
set -euo pipefail
VENV=${1:-.venv-kserve}
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3.12 python3.13 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON=$candidate; break; fi
  done
fi
[ -n "$PYTHON" ] || { echo "error: no python3 found; install Python 3.10-3.13" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
echo "installing KServe's pinned dependencies into $VENV" >&2
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements-kserve.txt 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
"$VENV/bin/python" -c "import kserve, onnxruntime, cv2" \
  || { echo "error: $VENV is incomplete; see the pip output above" >&2; exit 1; }
touch "$VENV/.installed"
