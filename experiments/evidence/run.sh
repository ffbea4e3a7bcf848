#!/usr/bin/env bash
# Issue 12 evidence grid: paper-b and the negative-feedback methods on one dataset, 3 seeds.
#   experiments/evidence/run.sh DATA_DIR OUT_DIR [extra --set overrides...]
# Budget for every run: at most 20 epochs, early stopping with patience 3, one CPU thread.
set -euo pipefail
data=$1 out=$2
shift 2
here=$(dirname "$0")
common=(--data "$data" --seeds 3 --no-plots --set train.epochs=20 train.patience=3 train.threads=1 train.progress=false "$@")
negrec-fast experiment --grid paper-b --out "$out/paper-b" "${common[@]}"
for grid in nf_penalty nf_models nf_pnfrec_gate; do
  negrec-fast experiment --grid "$here/$grid.toml" --out "$out/$grid" "${common[@]}"
done
negrec-fast report "$out"/*/runs/* --out "$out/report" --base loss.nce_weight=0
