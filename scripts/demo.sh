#!/usr/bin/env bash
# The demo on the embedded default data (Fashion-MNIST from Debian): the whole live system.
#
# By default it serves the SHIPPED models (models/onnx, the ones behind docs/results), in about
# a minute and a half on 2 cores:
#   1. TorchServe archives built from the shipped exports,
#   2. edge and cloud TorchServe instances and the edge router on loopback,
#   3. a stream of 100 pristine, blurred and noisy test images per type and level through the
#      router, sent twice: as PNG and as JPEG quality 90 (how cameras send them, DEMO_WIRES to
#      change), with a table of accuracy, routing, exits, offload rate and latency per wire and
#      cell, and beside each live accuracy the value docs/results/accuracy.csv holds for the same
#      models, wire and p_tar; the demo fails if a cell is more than three binomial standard
#      errors away,
#   4. everything it started is stopped again (also on Ctrl-C or failure).
# DEMO_TRAIN=1 (`make demo-train`, about 7 minutes) first trains demo-sized models on subsets
# (a contact sheet of the distortions, classifier, conventional model, three experts, ONNX export
# with parity checks) and serves those instead; their accuracy is not compared with the CSV.
# Outputs go to demo_runs/ (ignored by git). `make demo` runs this inside the project's venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${DEMO_OUT:-demo_runs}
RUN="$OUT/run"
PORT=${DEMO_ROUTER_PORT:-8000}
PER_CELL=${DEMO_PER_CELL:-100}
read -r -a WIRES <<< "${DEMO_WIRES:-png jpeg:90}"
TRAIN=${DEMO_TRAIN:-0}
mkdir -p "$OUT"
started=$(date +%s)
step() { printf '\n=== %s\n' "$*"; }

cleanup() {  # the router (drained by SIGTERM) and both TorchServe instances
  $PY -m benchmarks.live down --run-dir "$RUN" --port "$PORT" >/dev/null 2>&1 || true
}
trap cleanup EXIT

if [ "$TRAIN" = 1 ]; then
  MODELS="$OUT/exported"
  step "training demo-sized models (DEMO_TRAIN=1): contact sheet, classifier, conventional model, three experts"
  $PY -m training.preview --index 0 --spectra --out "$OUT/distortions.png"
  CK="$OUT/checkpoints"
  mkdir -p "$CK"
  $PY -m training.train_classifier --train-limit 10000 --samples-per-epoch 6000 --epochs 6 --input-size 128 \
    --val-limit 1000 --val-photo-crops 400 --quiet --out "$CK/classifier.pt"
  $PY -m training.train_backbone --weights none --train-limit 8000 --val-limit 1000 --epochs 3 --cosine-t 3 \
    --batch-size 64 --lr-backbone 1e-3 --lr-heads 1e-3 --quiet --out "$CK/backbone.pt"
  for d in pristine gaussian_blur gaussian_noise; do
    $PY -m training.train_expert --backbone "$CK/backbone.pt" --distortion "$d" --train-limit 4000 \
      --val-limit 1000 --epochs 2 --cosine-t 2 --batch-size 64 --lr-heads 1e-3 --quiet --out "$CK/expert_$d.pt"
  done
  $PY -m export --backbone "$CK/backbone.pt" --experts "$CK"/expert_*.pt --classifier "$CK/classifier.pt" \
    --parity-images 32 --out "$MODELS"
  EXPECTED=()
  CELLS=(pristine:0 gaussian_blur:1 gaussian_blur:3 gaussian_blur:5 gaussian_noise:10 gaussian_noise:20 gaussian_noise:40)
else
  MODELS=models/onnx
  [ -f "$MODELS/distortion_classifier.json" ] || { echo "error: no shipped models in $MODELS" >&2; exit 1; }
  EXPECTED=(--expected docs/results/accuracy.csv)
  CELLS=(pristine:0 gaussian_blur:1 gaussian_blur:2 gaussian_blur:3 gaussian_blur:4 gaussian_blur:5
         gaussian_noise:5 gaussian_noise:10 gaussian_noise:20 gaussian_noise:30 gaussian_noise:40)
fi

step "1/4 TorchServe archives from $MODELS"
$PY -m export.archive --exported "$MODELS" --model-store "$OUT/model_store"

step "2/4 edge and cloud TorchServe (token auth, loopback), then the edge router on :$PORT (classifier inside)"
$PY -m benchmarks.live up --run-dir "$RUN" --model-store "$OUT/model_store" --port "$PORT" \
  --edge-models edge_pristine edge_gaussian_blur edge_gaussian_noise \
  --cloud-models cloud_pristine cloud_gaussian_blur cloud_gaussian_noise
get() {  # GET a router URL with Python (no curl needed); prints the body, fails on non-2xx
  $PY -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())" "$1"
}

step "3/4 $PER_CELL test images per cell through the router, sent as ${WIRES[*]} (live exits and offloads, p_tar 0.8)"
[ ${#EXPECTED[@]} -gt 0 ] && echo "csv %: docs/results/accuracy.csv (expert_routed, same wire, p_tar 0.8, same models); 3 SE: three binomial standard errors of a cell of this size; ok: live within that band; routed %: answers from the expert of the true distortion; gap: accuracy minus the PNG run's on the same images"
status=0
$PY -m benchmarks.stream --router "http://127.0.0.1:$PORT" --threshold 0.8 --per-cell "$PER_CELL" \
  --cells "${CELLS[@]}" --wires "${WIRES[@]}" --max-seconds 300 --quiet --json "$OUT/stream.json" "${EXPECTED[@]}" || status=$?
echo
echo "router metrics (excerpt):"
get "http://127.0.0.1:$PORT/metrics" | grep -E '^edge_router_(requests|offloads|degraded)_total' || true

step "4/4 stopping the router and both TorchServe instances"
cleanup
echo "artifacts: $MODELS/, $OUT/model_store/, $OUT/stream.json; logs: $RUN/edge/logs, $RUN/cloud/logs"
echo "demo wall time: $(( $(date +%s) - started )) s"
exit "$status"
