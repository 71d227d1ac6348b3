#!/usr/bin/env bash
# Every comparison behind README's Results, in the order the choices need them (issue 10):
#
#   select-ml-100k   dropout and learning rate on ML-100K, by validation loss (seeds 0–2)
#   select-synthetic learning rate on the synthetic data, by validation loss (seeds 0–2)
#   ml-100k          the final ML-100K table (5 seeds), its capacity controls and the depth study
#   synthetic        the same on the synthetic data
#   softmax          ML-100K on the softmax backbone (5 seeds), with ML-100K's adopted settings
#
# The final steps run the configuration that `scripts/paired_change.py --adopted` picks by the
# rule (README, "Choosing the defaults"): its own folder, extended from seeds 0–2 to 0–4.
#
#   bash scripts/results.sh select-ml-100k      # or any of the names above; no name = all of them
#
# Each step is a `causalgr compare`; a finished run is skipped and an interrupted one resumed, so
# the script can be stopped and started again. One torch thread per run (configs/main.yaml): two
# steps can run side by side on a 2-core machine. A choice reads validation loss only
# (`scripts/paired_change.py`); test loss is read for the final tables alone. README's capacity
# and depth tables read the final steps' folders: `scripts/paired_tables.py capacity|depth`.
set -euo pipefail
cd "$(dirname "$0")/.."
causalgr=${CAUSALGR:-.venv/bin/causalgr}
python=${PYTHON:-.venv/bin/python}
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

# Each variant: its folder under select/DATA/ and the one setting it changes.
ML_100K_VARIANTS=(dropout-0.1:model.dropout=0.1 lr-2e-3:optim.lr=2e-3 dropout-0.3:model.dropout=0.3 lr-5e-4:optim.lr=5e-4)
SYNTHETIC_VARIANTS=(lr-1e-3:optim.lr=1e-3 lr-4e-3:optim.lr=4e-3)

select_variants() {  # select_variants DATA VARIANT…: each variant, seeds 0–2
  local data=$1 variant
  shift
  for variant in "$@"; do
    SEEDS=0,1,2 compare "$data" "select/$data/${variant%%:*}" --set "${variant#*:}"
  done
}

adopted() {  # adopted DATA BASE VARIANT…: "FOLDER --set …" of the configuration the rule adopts
  local data=$1 base=$2 variant paths=()
  shift 2
  for variant in "$@"; do paths+=("$RUNS/select/$data/${variant%%:*}/results.json"); done
  $python scripts/paired_change.py "$RUNS/$base/results.json" "${paths[@]}" --adopted
}

final() {  # final DATA NAME FOLDER [--set …]…: the table (FOLDER to 5 seeds), the parameter-matched controls, 4 layers
  local data=$1 name=$2 folder=${3#"$RUNS"/}
  shift 3
  compare "$data" "$folder" "$@"
  FORMULATIONS=interleaved,summed compare "$data" "results/$name-hstu-layers-3" "$@" --set model.layers=3
  SEEDS=0,1,2 compare "$data" "results/$name-hstu-layers-4" "$@" --set model.layers=4
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(select-ml-100k select-synthetic ml-100k synthetic softmax)
data
for step in "${steps[@]}"; do
  case $step in
    select-ml-100k) SEEDS=0,1,2 compare ml-100k results/ml-100k-hstu  # the base: the defaults
                    select_variants ml-100k "${ML_100K_VARIANTS[@]}" ;;
    select-synthetic) SEEDS=0,1,2 compare synth5000 results/synthetic5000-hstu --set optim.lr=2e-3
                      select_variants synth5000 "${SYNTHETIC_VARIANTS[@]}" ;;
    ml-100k) read -r -a chosen <<< "$(adopted ml-100k results/ml-100k-hstu "${ML_100K_VARIANTS[@]}")"
             final ml-100k ml-100k "${chosen[@]}" ;;
    synthetic) read -r -a chosen <<< "$(adopted synth5000 results/synthetic5000-hstu "${SYNTHETIC_VARIANTS[@]}")"
               final synth5000 synthetic5000 "${chosen[@]}" ;;
    softmax) read -r -a chosen <<< "$(adopted ml-100k results/ml-100k-hstu "${ML_100K_VARIANTS[@]}")"
             compare ml-100k results/ml-100k-softmax "${chosen[@]:1}" --set model.backbone=softmax ;;
    *) echo "unknown step '$step' (select-ml-100k, select-synthetic, ml-100k, synthetic, softmax)" >&2; exit 2 ;;
  esac
done
