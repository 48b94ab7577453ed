#!/usr/bin/env bash
# Measured policy map (issue 16, deliverable 4): ONE device command on the GPU host, about 9 minutes.
#
#   OUT=... bash studies/measured/run_policy_map.sh [PROFILE]
#
# Measures the points of studies/measured/policy-map-points.yaml with the runtime (lia validate: 3 timed
# repeats, 1 profiled run per point), then writes under $OUT: results.csv (the runtime's rows),
# measured-policy-map.csv (per (B, L_in): measured and predicted latency of the optimum and of each paper
# policy, and the optimum's speedup over the best paper policy) and measured-policy-map.png, and prints the
# table. PROFILE defaults to the kernel-table profile of the GPU host.
set -uo pipefail
OUT=${OUT:-./measured-policy-map}
PROFILE=${1:-hwprofiles/systems/emr-h200-kernels.yaml}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
HARD_LIMIT_S=${HARD_LIMIT_S:-560}
LEFT=$((HARD_LIMIT_S - SECONDS - 30))
timeout -s INT "$LEFT" "$PY" -m lia_model validate --points studies/measured/policy-map-points.yaml \
    --system "$PROFILE" --out "$OUT" --repeats 3 --profiled-runs 1 --max-point-s 30 --time-budget-s "$((LEFT - 20))" \
    --title "measured policy map: Llama-2-70B, 8 layers, 10 GiB" 2>&1 | grep --line-buffered -v '^USDT'
"$PY" -m studies.measured.policy_map "$OUT/results.csv" --out "$OUT"
