#!/usr/bin/env bash
# The demo on the embedded default data (Fashion-MNIST from Debian), small enough for a laptop:
#   1. a contact sheet of the paper's distortions and the classifier's spectra,
#   2. a distorted copy of part of the test split on disk (the paper's dataset generator),
#   3. the distortion classifier trained on a subset (a few minutes on 2 cores),
#   4. its evaluation on the test split and on held-out natural photos, printed as tables.
# Outputs go to demo_runs/ (ignored by git). `make demo` runs this inside the project's venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${DEMO_OUT:-demo_runs}
mkdir -p "$OUT"
started=$(date +%s)

step() { printf '\n=== %s\n' "$*"; }

step "1/4 distortions: contact sheet of every type and level, with the classifier's spectra"
$PY -m training.preview --index 0 --spectra --out "$OUT/distortions.png"

step "2/4 dataset generator: 200 test images at every blur level (ImageFolder tree per level)"
$PY -m training.distort --split test --limit 200 --distortion-type gaussian_blur --out "$OUT/distorted" --quiet

step "3/4 distortion classifier: training on a 10,000-image subset plus natural-photo crops"
$PY -m training.train_classifier --train-limit 10000 --samples-per-epoch 6000 --epochs 6 --input-size 128 \
  --val-limit 1000 --val-photo-crops 400 --quiet --out "$OUT/classifier.pt"

step "4/4 evaluation: 2,000 test images and crops of held-out photos"
$PY -m training.eval_classifier --checkpoint "$OUT/classifier.pt" --limit 2000 --photo-crops 900 \
  --quiet --json "$OUT/classifier.json"

$PY - "$OUT" "$started" <<'PYEOF'
import json, sys, time
out, started = sys.argv[1], int(sys.argv[2])
r = json.load(open(f"{out}/classifier.json"))
worst = min((acc, f"{t} {lvl}") for t, cells in r["per_level"].items() for lvl, acc in cells.items())
print("\n=== summary")
print(f"distortion classifier (demo-sized training): {100 * r['accuracy']:.1f} % on "
      f"{r['n']} Fashion-MNIST test draws, weakest cell {worst[1]} at {100 * worst[0]:.1f} %")
if "photos" in r:
    print(f"held-out natural photos: {100 * r['photos']['accuracy']:.1f} % on {r['photos']['n']} crops")
print(f"artifacts: {out}/distortions.png, {out}/distorted/, {out}/classifier.pt, {out}/classifier.json")
print("the full-size classifier and its committed results: see README, 'Distortion classifier'")
print(f"demo wall time: {time.time() - started:.0f} s")
PYEOF
