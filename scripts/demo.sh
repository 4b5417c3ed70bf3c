#!/usr/bin/env bash
# The demo on the embedded default data (Fashion-MNIST from Debian): the whole system, small enough
# for a 2-core laptop (about 10 minutes):
#   1. a contact sheet of the paper's distortions and the classifier's spectra,
#   2. a distortion classifier, a conventional early-exit MobileNetV2 and three experts trained on
#      subsets (demo-sized: the committed full-size results are in docs/results, see README),
#   3. ONNX export with parity checks, TorchServe archives,
#   4. edge and cloud TorchServe instances and the edge router on loopback,
#   5. a stream of pristine, blurred and noisy test images through the router, with a table of
#      accuracy, exits, offload rate, latency and expert per distortion and level,
#   6. everything it started is stopped again (also on Ctrl-C or failure).
# Outputs go to demo_runs/ (ignored by git). `make demo` runs this inside the project's venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${DEMO_OUT:-demo_runs}
RUN="$OUT/run"
PORT=${DEMO_ROUTER_PORT:-8000}
mkdir -p "$OUT"
started=$(date +%s)
step() { printf '\n=== %s\n' "$*"; }

router_pid=""
cleanup() {
  [ -n "$router_pid" ] && kill "$router_pid" 2>/dev/null && wait "$router_pid" 2>/dev/null || true
  $PY -m edge_router.torchserve stop edge --run-dir "$RUN" >/dev/null 2>&1 || true
  $PY -m edge_router.torchserve stop cloud --run-dir "$RUN" >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "1/6 distortions: contact sheet of every type and level, with the classifier's spectra"
$PY -m training.preview --index 0 --spectra --out "$OUT/distortions.png"

step "2/6 training (demo-sized): distortion classifier, conventional model, three experts"
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

step "3/6 ONNX export (parity-checked) and TorchServe archives"
$PY -m export --backbone "$CK/backbone.pt" --experts "$CK"/expert_*.pt --classifier "$CK/classifier.pt" \
  --parity-images 32 --out "$OUT/exported"
$PY -m export.archive --exported "$OUT/exported" --model-store "$OUT/model_store"

step "4/6 edge and cloud TorchServe (token auth, loopback), then the edge router on :$PORT"
$PY -m edge_router.torchserve start edge --run-dir "$RUN" --model-store "$OUT/model_store" \
  --models distortion_classifier edge_pristine edge_gaussian_blur edge_gaussian_noise
$PY -m edge_router.torchserve start cloud --run-dir "$RUN" --model-store "$OUT/model_store" \
  --models cloud_pristine cloud_gaussian_blur cloud_gaussian_noise
$PY -m edge_router --run-dir "$RUN" --port "$PORT" --log-level WARNING &
router_pid=$!
get() {  # GET a router URL with Python (no curl needed); prints the body, fails on non-2xx
  $PY -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())" "$1"
}
for _ in $(seq 1 60); do
  get "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.5
done
get "http://127.0.0.1:$PORT/healthz" || { echo "error: the router did not become healthy" >&2; exit 1; }
echo

step "5/6 a stream of test images through the router (live exits and offloads, p_tar 0.8)"
$PY -m benchmarks.stream --router "http://127.0.0.1:$PORT" --per-cell 40 --max-seconds 300 --quiet \
  --json "$OUT/stream.json"
echo
echo "router metrics (excerpt):"
get "http://127.0.0.1:$PORT/metrics" | grep -E '^edge_router_(requests|offloads|degraded)_total' || true

step "6/6 stopping the router and both TorchServe instances"
cleanup
router_pid=""
echo "artifacts: $OUT/distortions.png, $OUT/checkpoints/, $OUT/exported/, $OUT/model_store/, $OUT/stream.json"
echo "logs: $RUN/edge/logs, $RUN/cloud/logs"
echo "demo wall time: $(( $(date +%s) - started )) s"
