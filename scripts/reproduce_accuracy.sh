#!/usr/bin/env bash
# The accuracy experiment of issue 3 on the embedded default (Fashion-MNIST, 64 px), end to end:
# conventional early-exit model, three experts, evaluation with the distortion classifier.
# A benchmark, not a test: hours on 2 CPU cores (see README for measured wall times).
# Usage: scripts/reproduce_accuracy.sh [extra args for train_backbone]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CK=${CHECKPOINTS:-checkpoints}

# From random initialisation (no ImageNet weights offline), the prototype's backbone rate of
# 1.5e-4 is far too slow; these rates train MobileNetV2 from scratch in a few epochs.
[ -f "$CK/backbone.pt" ] || $PY -m training.train_backbone --out "$CK/backbone.pt" \
  --epochs "${BACKBONE_EPOCHS:-5}" --batch-size 64 --lr-backbone 1e-3 --lr-heads 1e-3 \
  --cosine-t "${BACKBONE_EPOCHS:-5}" "$@"
for d in pristine gaussian_blur gaussian_noise; do
  [ -f "$CK/expert_$d.pt" ] || $PY -m training.train_expert --backbone "$CK/backbone.pt" \
    --distortion "$d" --out "$CK/expert_$d.pt" --epochs "${EXPERT_EPOCHS:-3}" --batch-size 64 \
    --lr-heads 1e-3 --cosine-t "${EXPERT_EPOCHS:-3}"
done
[ -f "$CK/classifier.pt" ] || $PY -m training.train_classifier --out "$CK/classifier.pt"
$PY -m training.evaluate --backbone "$CK/backbone.pt" --classifier "$CK/classifier.pt" \
  --experts "$CK"/expert_pristine.pt "$CK"/expert_gaussian_blur.pt "$CK"/expert_gaussian_noise.pt \
  --out docs/results
