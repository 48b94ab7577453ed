#!/usr/bin/env bash
# The merged validation summary (runtime/validation/{results.csv,summary.md,summary.json,pred_vs_meas.*}): every
# campaign part's results in the order they were measured, re-predicted with one profile. A later CSV's row replaces
# an earlier one of the same point id (the newest measurement of a point counts); nothing is chosen by its error.
#
#   bash tools/merged_summary.sh [PROFILE] [OUT]     # defaults: hwprofiles/systems/emr-h200-kernels.yaml, runtime/validation
#
# Each part's README (or the top-level README's session notes) says how and when it was measured.
set -euo pipefail
PROFILE=${1:-hwprofiles/systems/emr-h200-kernels.yaml}
OUT=${2:-runtime/validation}
V=runtime/validation
PARTS=(
    $(for p in a5 b5 c d e f g i j l; do echo "$V/wave2-$p/results.csv"; done)
    "$V/wave2-r1/results-relabelled.csv" "$V/wave2-r2/results-relabelled.csv"
    "$V/wave2-m/results.csv" "$V/wave2-l2/results.csv" "$V/wave2-h2/results.csv"
    "$V/wave2-q/results.csv" "$V/wave2-q2/results.csv" "$V/wave2-s/run2/s2-new/results.csv"
    "$V/wave2-q3/results.csv" "$V/wave2-s/run3/s1-new/results.csv"
    "$V/wave2-r3/run1/results.csv" "$V/wave2-r4/results.csv" "$V/wave2-r5/results.csv"
    "$V/wave2-t/t1-sdpa/results.csv" "$V/wave2-t/t3-sdpa/results.csv" "$V/pool-check/results.csv"
    "$V/peer-optimum-trace/results.csv" "$V/peer-optimum-trace/writeback-ab/ab-auto/results.csv"
    "$V/wave2-w/run1-w1/results.csv" "$V/wave2-w/run2-w2/results.csv" "$V/wave2-w/run3-w1/results.csv"
    "$V/wave2-x/run1/x2-inline/results.csv" "$V/wave2-x/run2/x2-inline/results.csv" "$V/wave2-x/run3/x2-inline/results.csv"
    ${EXTRA_PARTS:-}
)
ARGS=()
for p in "${PARTS[@]}"; do ARGS+=(--from-csv "$p"); done
PY=${PYTHON:-python}
"$PY" -m lia_model validate "${ARGS[@]}" --repredict-with "$PROFILE" --out "$OUT" --force
