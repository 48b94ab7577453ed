#!/usr/bin/env bash
# Real FlexGen 0.1.8 beside this project's runtime on the GPU host, in one device command (issue 9).
#
#   OUT=$OUT bash peers/flexgen/run_host.sh [PROFILE]
#
# Needs the wheels flexgen-0.1.8, attrs and tqdm in $WHEELS (default .whl at the repository root; see
# peers/flexgen/README.md for the pip download command); torch and numpy come from the host. OPT-30B with
# dummy weights, GPU capped at 40 GiB, four workloads (B=1 with L_in 32 and 512, FlexGen's own throughput
# batch at L_in 32, B=1 with a 1920-token prompt; 8 generated tokens each):
#   1. FlexGen's own policy per workload (its LP search on the calibrated PROFILE, GPU capped): policies.json
#   2. real FlexGen with that policy, one process per workload (python -m flexgen.flex_opt --path _DUMMY_)
#   3. our runtime (lia validate) on our optimum and on the flexgen baseline plan, same workloads
#   4. one CSV with the measured tokens/s of each, and a table
# Writes under $OUT (6 files): peers.csv, policies.json, flexgen.json, flexgen_runs.log, runtime_results.csv,
# run.log. Stops itself before HARD_LIMIT_S (default 465 s). SKIP_FLEXGEN=1 or SKIP_RUNTIME=1 leaves out step 2
# or 3 (to split the campaign over two device commands; rerun the report locally on both parts' files).
set -uo pipefail

PROFILE=${1:-hwprofiles/systems/emr-h100-calibrated.yaml}
OUT=${OUT:-./peers-out}
WHEELS=${WHEELS:-.whl}
CAP_GIB=40
HARD_LIMIT_S=${HARD_LIMIT_S:-465}
FLEXGEN_BUDGET_S=${FLEXGEN_BUDGET_S:-230}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/flexgen-peer.XXXXXX")
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

main() {
echo "== real FlexGen vs this runtime on $(hostname) at $(date -u +%FT%TZ); profile $PROFILE; GPU cap $CAP_GIB GiB"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

echo "== installing the carried wheels into $WORK/site"
shopt -s nullglob
wheels=("$WHEELS"/flexgen-0.1.8-*.whl "$WHEELS"/attrs-*.whl "$WHEELS"/tqdm-*.whl)
if [ "${#wheels[@]}" -lt 3 ]; then
    echo "ERROR: need flexgen-0.1.8, attrs and tqdm wheels in '$WHEELS' (found: ${wheels[*]:-none});"
    echo "ERROR: see peers/flexgen/README.md for the pip download command"
    return 2
fi
"$PY" -m pip install --quiet --no-index --no-deps --target "$WORK/site" "${wheels[@]}" || return 2
PYTHONPATH="$WORK/site" "$PY" -c "import flexgen, attr, tqdm; print('flexgen from', flexgen.__file__)" || return 2

echo "== FlexGen's own policies (lia_model.flexgen on $PROFILE, GPU capped at $CAP_GIB GiB)"
"$PY" peers/flexgen/host.py plan --profile "$PROFILE" --cap-gib "$CAP_GIB" --out "$OUT/policies.json" \
    --points "$WORK/points.yaml" || return 2

if [ "${SKIP_FLEXGEN:-0}" != "1" ]; then
    echo "== real FlexGen, one process per workload (budget $FLEXGEN_BUDGET_S s)"
    "$PY" peers/flexgen/host.py flexgen --policies "$OUT/policies.json" --site "$WORK/site" --work "$WORK" \
        --out "$OUT/flexgen.json" --log "$OUT/flexgen_runs.log" --budget-s "$FLEXGEN_BUDGET_S"
fi

LEFT=$((HARD_LIMIT_S - SECONDS - 15))
BUDGET=$((LEFT - 25))
echo "== this runtime: lia validate on our optimum and the flexgen plan (budget $BUDGET s, hard stop in $LEFT s)"
if [ "${SKIP_RUNTIME:-0}" = "1" ]; then
    echo "skipped (SKIP_RUNTIME=1)"
elif [ "$BUDGET" -gt 30 ]; then
    timeout -s INT "$LEFT" "$PY" -m lia_model validate --points "$WORK/points.yaml" --system "$PROFILE" \
        --out "$WORK/validate" --gpu-memory-gib "$CAP_GIB" --repeats 1 --host-weights-gib 16 \
        --time-budget-s "$BUDGET" --title "OPT-30B beside real FlexGen, GPU capped at $CAP_GIB GiB" 2>&1 \
        | grep --line-buffered -v '^USDT' | grep --line-buffered -E '^\[|^system|skip|error|Error' || true
    [ -f "$WORK/validate/results.csv" ] && cp "$WORK/validate/results.csv" "$OUT/runtime_results.csv"
else
    echo "no time left for the runtime"
fi

echo "== report"
"$PY" peers/flexgen/host.py report --policies "$OUT/policies.json" --flexgen "$OUT/flexgen.json" \
    --runtime "$OUT/runtime_results.csv" --out "$OUT/peers.csv"
echo "== done in ${SECONDS} s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
}

main 2>&1 | tee "$OUT/run.log"
rm -rf "$WORK"
