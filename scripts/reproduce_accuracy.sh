#!/usr/bin/env bash
# The accuracy experiment of issue 3 on the embedded default (Fashion-MNIST, 64 px), end to end:
# conventional early-exit model, three experts (plus BN-adapted blur and noise experts),
# evaluation with the distortion classifier. A benchmark, not a test.
#
# Usage: scripts/reproduce_accuracy.sh [train|eval|all]      (default: all)
# Environment (all optional):
#   PYTHON            interpreter (default .venv/bin/python)
#   CHECKPOINTS       folder of the checkpoints (default checkpoints/); existing ones are reused
#   TRAIN_ARGS        extra options for every trainer, e.g. "--device cuda --workers 12"
#   BACKBONE_EPOCHS / EXPERT_EPOCHS / BATCH_SIZE
#   BACKBONE_MINUTES / EXPERT_MINUTES   wall-time budgets per training run (--max-minutes)
#   RESULTS           output folder of the evaluation (default docs/results)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CK=${CHECKPOINTS:-checkpoints}
STEP=${1:-all}
read -r -a EXTRA <<< "${TRAIN_ARGS:-}"
BE=${BACKBONE_EPOCHS:-15}
EE=${EXPERT_EPOCHS:-5}
BS=${BATCH_SIZE:-128}
budget() { [ -n "${1:-}" ] && echo "--max-minutes $1" || true; }
mkdir -p "$CK"

if [ "$STEP" = train ] || [ "$STEP" = all ]; then
  # No ImageNet weights offline: from random initialisation the prototype's backbone rate of
  # 1.5e-4 is far too slow, so both parameter groups use 1e-3.
  [ -f "$CK/backbone.pt" ] || $PY -m training.train_backbone --out "$CK/backbone.pt" \
    --weights "${WEIGHTS:-none}" --epochs "$BE" --cosine-t "$BE" --batch-size "$BS" \
    --lr-backbone 1e-3 --lr-heads 1e-3 $(budget "${BACKBONE_MINUTES:-}") "${EXTRA[@]}"
  for spec in gaussian_blur gaussian_noise pristine gaussian_blur:adapt gaussian_noise:adapt; do
    d=${spec%%:*}; out="$CK/expert_$d.pt"; flags=()
    if [ "$spec" != "$d" ]; then out="$CK/expert_${d}_adapt_bn.pt"; flags=(--adapt-bn); fi
    [ -f "$out" ] || $PY -m training.train_expert --backbone "$CK/backbone.pt" --distortion "$d" \
      --out "$out" --epochs "$EE" --cosine-t "$EE" --batch-size "$BS" --lr-heads 1e-3 \
      $(budget "${EXPERT_MINUTES:-}") "${flags[@]}" "${EXTRA[@]}"
  done
fi

if [ "$STEP" = eval ] || [ "$STEP" = all ]; then
  [ -f "$CK/classifier.pt" ] || $PY -m training.train_classifier --out "$CK/classifier.pt"
  $PY -m training.evaluate --backbone "$CK/backbone.pt" --classifier "$CK/classifier.pt" \
    --experts "$CK"/expert_*.pt --out "${RESULTS:-docs/results}" ${EVAL_ARGS:-}
fi
