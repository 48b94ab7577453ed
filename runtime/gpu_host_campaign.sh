#!/usr/bin/env bash
# The validation campaign on the GPU host (issue 5), one part per device command, each under 9 minutes.
#
#   bash runtime/gpu_host_campaign.sh PART [PROFILE]
#
#   PART 1: OPT-30B with all 48 layers (59.2 GB of pinned random bf16 weights, made once), GPU capped at
#           40 and 80 GiB, optimal plan + every baseline           (runtime/campaign/opt30b-48L.yaml)
#   PART 2: the CUDA tests, logits checked against the reference at OPT-30B shapes over 4 layers,
#           OPT-66B (8 of 64 layers) and OPT-175B (6 of 96 layers)  (runtime/campaign/subsets.yaml)
#   PROFILE: the calibrated system profile of this host (default hwprofiles/systems/emr-h100-calibrated.yaml;
#           falls back to spr-h100, with a warning, when the file is missing)
#
# Writes, flat under $OUT (or ./campaign-out): results.csv, pred_vs_meas.png, pred_vs_meas.svg, summary.md,
# summary.json, campaign.log, overhead.json (the runtime's per-sublayer cost, used through --set). The summary table is printed last. Merge the two parts afterwards with
#   lia validate --from-csv part1/results.csv --from-csv part2/results.csv --out runtime/validation
set -uo pipefail

PART=${1:?usage: runtime/gpu_host_campaign.sh PART(1|2) [PROFILE]}
PROFILE=${2:-hwprofiles/systems/emr-h100-calibrated.yaml}
OUT=${OUT:-./campaign-out}
HARD_LIMIT_S=${HARD_LIMIT_S:-530}   # the validate step is stopped here; the summary is then made from the CSV
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
LIA=("$PY" -m lia_model)

main() {
echo "== campaign part $PART on $(hostname) at $(date -u +%FT%TZ)"
if [ ! -f "$PROFILE" ]; then
    echo "WARNING: calibrated profile '$PROFILE' not found: falling back to spr-h100 (datasheet and paper"
    echo "WARNING: numbers for a 40-core SPR, not this host). Errors then measure that profile, not the model."
    PROFILE=spr-h100
fi
echo "profile: $PROFILE"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

case "$PART" in
    1)
        POINTS=runtime/campaign/opt30b-48L.yaml
        MAX_POINT_S=30
        TITLE="OPT-30B, 48 layers, GPU capped at 40 / 80 GiB"
        ;;
    2)
        POINTS=runtime/campaign/subsets.yaml
        MAX_POINT_S=20
        TITLE="OPT-30B (4 layers, logits checked), OPT-66B (8 L), OPT-175B (6 L)"
        if [ "${SKIP_GPU_TESTS:-0}" != "1" ]; then
            echo "== CUDA tests of the runtime"
            timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_runtime_gpu.py 2>&1 | tail -n 25
        fi
        ;;
    *)
        echo "unknown part '$PART' (use 1 or 2)"; return 2
        ;;
esac

POINTS=${CAMPAIGN_POINTS:-$POINTS}   # dry runs elsewhere may point at another file

# The runtime's own fixed cost per sublayer, measured apart from every validation point (runtime/overhead.py);
# predictions use it through --set, so the model charges what this runtime's dispatch costs.
SETS=()
if [ "${SKIP_OVERHEAD:-0}" != "1" ]; then
    echo "== runtime overhead per sublayer (tiny model, separate runs)"
    "$PY" -m runtime.overhead --out "$OUT/overhead.json" | grep -A3 '"overrides"'
    while read -r kv; do SETS+=(--set "$kv"); done < <("$PY" -c "
import json; d = json.load(open('$OUT/overhead.json'))['overrides']
print('\n'.join(f'{k}={v}' for k, v in d.items()))")
    echo "predicting with: ${SETS[*]}"
fi

# Time left for validate, with ~20 s for imports and CUDA start; validate skips points past its budget.
LEFT=$((HARD_LIMIT_S - SECONDS))
BUDGET=$((LEFT - 30))
echo "== lia validate ($POINTS), budget ${BUDGET} s, hard stop in ${LEFT} s"
timeout -s INT "$LEFT" "${LIA[@]}" validate --points "$POINTS" --system "$PROFILE" --out "$OUT" \
    --repeats 2 --max-point-s "$MAX_POINT_S" --time-budget-s "$BUDGET" --title "$TITLE" "${SETS[@]}" 2>&1 \
    | grep --line-buffered -v '^USDT'
RC=${PIPESTATUS[0]}
if [ "$RC" -ne 0 ] && [ -f "$OUT/results.csv" ]; then
    echo "== validate ended with code $RC: summarising the points written so far"
    "${LIA[@]}" validate --from-csv "$OUT/results.csv" --out "$OUT" --force --title "$TITLE (partial)" >/dev/null 2>&1 || true
fi
echo "== done in ${SECONDS} s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
echo
[ -f "$OUT/summary.md" ] && cat "$OUT/summary.md"
return 0
}

main 2>&1 | tee "$OUT/campaign.log"
