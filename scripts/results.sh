#!/usr/bin/env bash
# Every comparison behind README's Results, in the order the choices need them (issue 10):
#
#   select-ml-100k   dropout and learning rate on ML-100K, by validation loss (seeds 0–2)
#   select-synthetic learning rate on the synthetic data, by validation loss (seeds 0–2)
#   ml-100k          the final ML-100K table (5 seeds), its capacity controls and the depth study
#   synthetic        the same on the synthetic data
#   softmax          ML-100K on the softmax backbone (5 seeds)
#
#   bash scripts/results.sh select-ml-100k      # or any of the names above; no name = all of them
#
# Each step is a `causalgr compare`; a finished run is skipped and an interrupted one resumed, so
# the script can be stopped and started again. One torch thread per run (configs/main.yaml): two
# steps can run side by side on a 2-core machine. A choice reads validation loss only
# (`scripts/paired_change.py`); test loss is read for the final tables alone.
set -euo pipefail
cd "$(dirname "$0")/.."
causalgr=${CAUSALGR:-.venv/bin/causalgr}
RUNS=${RUNS:-runs}
ALL=interleaved,lfa,mvp,summed,lagged

compare() {  # compare DATA OUT [--set …]…
  local data=$1 out=$2
  shift 2
  $causalgr compare --data "$RUNS/data/$data" --config configs/main.yaml --formulations "${FORMULATIONS:-$ALL}" \
    --seeds "${SEEDS:-0,1,2,3,4}" --out "$RUNS/$out" --set train.progress=false "$@"
}

data() {
  [ -f "$RUNS/data/ml-100k/meta.json" ] || $causalgr data prepare ml-100k --out "$RUNS/data/ml-100k"
  [ -f "$RUNS/data/synth5000/meta.json" ] || $causalgr data synth --users 5000 --out "$RUNS/data/synth5000"
}

select_ml_100k() {
  SEEDS=0,1,2 compare ml-100k results/ml-100k-hstu
  SEEDS=0,1,2 compare ml-100k select/ml-100k/dropout-0.1 --set model.dropout=0.1
  SEEDS=0,1,2 compare ml-100k select/ml-100k/lr-2e-3 --set optim.lr=2e-3
  SEEDS=0,1,2 compare ml-100k select/ml-100k/dropout-0.3 --set model.dropout=0.3
  SEEDS=0,1,2 compare ml-100k select/ml-100k/lr-5e-4 --set optim.lr=5e-4
}

select_synthetic() {
  SEEDS=0,1,2 compare synth5000 results/synthetic5000-hstu --set optim.lr=2e-3
  SEEDS=0,1,2 compare synth5000 select/synth5000/lr-1e-3 --set optim.lr=1e-3
  SEEDS=0,1,2 compare synth5000 select/synth5000/lr-4e-3 --set optim.lr=4e-3
}

final() {  # final DATA NAME [--set …]…: the table, the parameter-matched controls, 4 layers
  local data=$1 name=$2
  shift 2
  compare "$data" "results/$name-hstu" "$@"
  FORMULATIONS=interleaved,summed compare "$data" "results/$name-hstu-layers-3" --set model.layers=3 "$@"
  SEEDS=0,1,2 compare "$data" "results/$name-hstu-layers-4" --set model.layers=4 "$@"
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(select-ml-100k select-synthetic ml-100k synthetic softmax)
data
for step in "${steps[@]}"; do
  case $step in
    select-ml-100k) select_ml_100k ;;
    select-synthetic) select_synthetic ;;
    ml-100k) final ml-100k ml-100k ;;
    synthetic) final synth5000 synthetic5000 --set optim.lr=2e-3 ;;
    softmax) compare ml-100k results/ml-100k-softmax --set model.backbone=softmax ;;
    *) echo "unknown step '$step' (select-ml-100k, select-synthetic, ml-100k, synthetic, softmax)" >&2; exit 2 ;;
  esac
done
