#!/usr/bin/env bash
# The demo on the embedded default data (Fashion-MNIST from Debian): the whole live system.
#
# By default it serves the SHIPPED models (models/onnx, the ones behind docs/results), in about
# a minute and a half on 2 cores:
#   1. TorchServe archives built from the shipped exports,
#   2. edge and cloud TorchServe instances and the edge router on loopback,
#   3. a stream of 100 test images per routed type (pristine included) and level through the
#      router, sent twice: as PNG and as JPEG quality 90 (how cameras send them, DEMO_WIRES to
#      change), with a table of accuracy, routing, exits, offload rate and latency per wire and
#      cell, and beside each live accuracy the value docs/results/accuracy.csv holds for the same
#      models, wire and p_tar; the demo fails if a cell is more than three binomial standard
#      errors away,
#   4. each type whose classifier manifest names a fallback (motion blur: Gaussian blur) is
#      unplugged live through the management API (its frames then answered by the fallback's
#      expert, compared with the CSV's expert_fallback rows) and plugged in again (its own expert,
#      expert_routed rows), with no restart,
#   5. everything it started is stopped again (also on Ctrl-C or failure).
# DEMO_MODELS serves another export instead of models/onnx (DEMO_EXPECTED= skips the comparison
# with the CSV, which holds the shipped models' figures).
# DEMO_TRAIN=1 (`make demo-train`, about 7 minutes) first trains demo-sized models on subsets
# (a contact sheet of the distortions, classifier, conventional model, an expert per type, ONNX export
# with parity checks) and serves those instead; their accuracy is not compared with the CSV.
# DEMO_SECURITY=tls (or mtls) runs the whole system with its security on: a throwaway CA made at
# start (demo_runs/run/security), the cloud TorchServe and the router on verified HTTPS, device
# keys at the router (and with mtls device certificates); every request of the demo is a device's.
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
SECURITY=${DEMO_SECURITY:-off}
ROUTER="http://127.0.0.1:$PORT"
DEVICE=()  # what a device sends besides the image: nothing, or the run's CA and its key
if [ "$SECURITY" != off ]; then
  ROUTER="https://127.0.0.1:$PORT"
  DEVICE=(--security-dir "$RUN/security")
fi
mkdir -p "$OUT"
started=$(date +%s)
step() { printf '\n=== %s\n' "$*"; }

cleanup() {  # the router (drained by SIGTERM) and both TorchServe instances
  $PY -m benchmarks.lib.live down --run-dir "$RUN" --port "$PORT" >/dev/null 2>&1 || true
}
trap cleanup EXIT

if [ "$TRAIN" = 1 ]; then
  MODELS="$OUT/exported"
  step "training demo-sized models (DEMO_TRAIN=1): contact sheet, classifier, conventional model, an expert per type"
  $PY -m training.preview --index 0 --spectra --out "$OUT/distortions.png"
  CK="$OUT/checkpoints"
  mkdir -p "$CK"
  $PY -m training.train_classifier --train-limit 10000 --samples-per-epoch 6000 --epochs 6 --input-size 128 \
    --val-limit 1000 --val-photo-crops 400 --quiet --out "$CK/classifier.pt"
  $PY -m training.train_backbone --weights none --train-limit 8000 --val-limit 1000 --epochs 3 --cosine-t 3 \
    --batch-size 64 --lr-backbone 1e-3 --lr-heads 1e-3 --quiet --out "$CK/backbone.pt"
  routed=$($PY -c "from core.distortions import DISTORTION_CLASSES as c; print(' '.join(c))")  # fails the script if it fails
  for d in $routed; do
    $PY -m training.train_expert --backbone "$CK/backbone.pt" --distortion "$d" --train-limit 4000 \
      --val-limit 1000 --epochs 2 --cosine-t 2 --batch-size 64 --lr-heads 1e-3 --quiet --out "$CK/expert_$d.pt"
  done
  $PY -m export --backbone "$CK/backbone.pt" --experts "$CK"/expert_*.pt --classifier "$CK/classifier.pt" \
    --parity-images 32 --out "$MODELS"
  EXPECTED=()
  CELLS=(pristine:0 gaussian_blur:1 gaussian_blur:3 gaussian_blur:5 gaussian_noise:10 gaussian_noise:20 gaussian_noise:40
    motion_blur:11 motion_blur:27)
else
  MODELS=${DEMO_MODELS:-models/onnx}
  [ -f "$MODELS/distortion_classifier.json" ] || { echo "error: no shipped models in $MODELS" >&2; exit 1; }
  EXPECTED=(--expected "${DEMO_EXPECTED-docs/results/accuracy.csv}")
  [ -n "${DEMO_EXPECTED-docs/results/accuracy.csv}" ] || EXPECTED=()
  # every level of every type the shipped classifier routes (core.distortions.DISTORTION_CLASSES)
  read -r -a CELLS <<< "$($PY -c "from core import distortions as d
print(' '.join(f'{n}:{v:g}' for n, v in d.cells()))")"
fi
# the experts served: one per class of the classifier in $MODELS; and the types its manifest names
# a fallback for (each is unplugged and plugged in again live in step 4)
read -r -a TYPES <<< "$($PY -c "import json, sys; print(' '.join(json.load(open(sys.argv[1]))['class_names']))" "$MODELS/distortion_classifier.json")"
read -r -a PLUGGABLE <<< "$($PY -c "import json, sys; print(' '.join(json.load(open(sys.argv[1])).get('fallbacks', {})))" "$MODELS/distortion_classifier.json")"

step "1/5 TorchServe archives from $MODELS"
$PY -m export.archive --exported "$MODELS" --model-store "$OUT/model_store"

step "2/5 edge and cloud TorchServe (token auth, loopback), then the edge router at $ROUTER (classifier inside; security: $SECURITY)"
$PY -m benchmarks.lib.live up --run-dir "$RUN" --model-store "$OUT/model_store" --port "$PORT" \
  --edge-models "${TYPES[@]/#/edge_}" --cloud-models "${TYPES[@]/#/cloud_}" --security "$SECURITY"
get() {  # GET a router URL as a device (no curl needed); prints the body, fails on non-2xx
  $PY -c "import sys, requests
from benchmarks.lib.live_security import device_options
o = device_options(sys.argv[2]) if sys.argv[2] != 'off' else {}
s = requests.Session(); s.trust_env = not o
r = s.get(sys.argv[1], timeout=5, **o); r.raise_for_status(); sys.stdout.write(r.text)" "$1" "$([ "$SECURITY" = off ] && echo off || echo "$RUN/security")"
}
serving() {  # wait until the router's experts do (yes) or do not (no) include $1
  for _ in $(seq 60); do
    if get "$ROUTER/v1/experts" | $PY -c "import json, sys; sys.exit(('$1' in json.load(sys.stdin)['experts']) != ('$2' == 'yes'))"; then return 0; fi
    sleep 0.5
  done
  echo "error: the router did not $([ "$2" = yes ] && echo pick up || echo drop) $1 within 30 s" >&2; return 1
}

step "3/5 $PER_CELL test images per cell through the router, sent as ${WIRES[*]} (live exits and offloads, p_tar 0.8)"
[ ${#EXPECTED[@]} -gt 0 ] && echo "csv %: docs/results/accuracy.csv (expert_routed, same wire, p_tar 0.8, same models); 3 SE: three binomial standard errors of a cell of this size; ok: live within that band; routed %: answers the classifier routed to the true distortion (its expert, or its fallback where that answered: said after the expert); gap: accuracy minus the PNG run's on the same images"
status=0
$PY -m benchmarks.stream --router "$ROUTER" ${DEVICE[@]+"${DEVICE[@]}"} --threshold 0.8 --per-cell "$PER_CELL" \
  --cells "${CELLS[@]}" --wires "${WIRES[@]}" --max-seconds 300 --quiet --json "$OUT/stream.json" "${EXPECTED[@]}" || status=$?

for type in ${PLUGGABLE[@]+"${PLUGGABLE[@]}"}; do
  step "4/5 $type unplugged and plugged in again while everything runs (management API, no restart)"
  read -r -a PLUG_CELLS <<< "$($PY -c "from core import distortions as d; print(' '.join(f'$type:{v:g}' for v in d.get('$type').levels))")"
  $PY -m edge_router.register remove "$type" --run-dir "$RUN"
  serving "$type" no
  echo "without its expert: answered by the fallback the classifier's manifest names (csv: expert_fallback rows)"
  $PY -m benchmarks.stream --router "$ROUTER" ${DEVICE[@]+"${DEVICE[@]}"} --threshold 0.8 --per-cell "$PER_CELL" \
    --cells "${PLUG_CELLS[@]}" --wires png --max-seconds 120 --quiet --json "$OUT/stream_${type}_fallback.json" \
    ${EXPECTED[@]+"${EXPECTED[@]}" --expected-model expert_fallback} || status=$?
  $PY -m edge_router.register add "$type" --run-dir "$RUN"
  serving "$type" yes
  echo "its own expert again (csv: expert_routed rows)"
  $PY -m benchmarks.stream --router "$ROUTER" ${DEVICE[@]+"${DEVICE[@]}"} --threshold 0.8 --per-cell "$PER_CELL" \
    --cells "${PLUG_CELLS[@]}" --wires png --max-seconds 120 --quiet --json "$OUT/stream_${type}_plugged.json" \
    ${EXPECTED[@]+"${EXPECTED[@]}"} || status=$?
done
echo
echo "router metrics (excerpt):"
get "$ROUTER/metrics" | grep -E '^edge_router_(requests|offloads|degraded)_total' || true

step "5/5 stopping the router and both TorchServe instances"
cleanup
echo "artifacts: $MODELS/, $OUT/model_store/, $OUT/stream.json; logs: $RUN/edge/logs, $RUN/cloud/logs"
echo "demo wall time: $(( $(date +%s) - started )) s"
exit "$status"
