#!/usr/bin/env bash
# The main job (`make main`): the paper's comparison on the built-in default data —
# ML-100K (fetched) and default synthetic data — with interleaved, lfa, mvp and lagged on the
# HSTU backbone, 3 seeds each, then the summary tables. Sized to finish in about 15 minutes on
# a 2-core CPU; README's Results section uses 5 seeds and the full budget of configs/default.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/main}
causalgr=.venv/bin/causalgr

$causalgr data prepare ml-100k --max-len 200 --out "$OUT/data/ml-100k"
$causalgr data synth --users 1000 --max-len 200 --out "$OUT/data/synthetic"
for data in ml-100k synthetic; do
  $causalgr compare --data "$OUT/data/$data" --config configs/main.yaml \
    --formulations interleaved,lfa,mvp,lagged --backbone hstu --seeds 0,1,2 --out "$OUT/compare-$data"
done
for data in ml-100k synthetic; do
  echo "== $data: $OUT/compare-$data/report.md"
done
