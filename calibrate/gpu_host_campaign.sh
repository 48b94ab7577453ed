#!/usr/bin/env bash
# GPU-host calibration campaign: one full calibration with two repeats (mean and spread), then the headline.
#
#   OUT=/path/to/out bash calibrate/gpu_host_campaign.sh            # run from the repository root
#
# Assumes PYTHONPATH already reaches pydantic (and the repository root is the working directory).
# Writes, flat under $OUT (4 files):
#   NAME.yaml      the calibrated system profile (self-contained; NAME is e.g. emr-h100-calibrated)
#   NAME.csv       every raw measurement (one row per point, mean and spread over the repeats)
#   calibrate.log  the run's log (stderr and stdout)
#   headline.md    the headline tables (also printed last)
# Bounded to 450 s with --time-limit-s (families that would start too late are skipped and say so).
# Environment knobs: QUICK=1 for the quick subset (a smoke test), REPEATS (default 2), TIME_LIMIT_S (450),
# NAME (default: derived from the CPU and GPU), PYTHON (default python3).
set -u
OUT="${OUT:?set OUT to the output directory}"
PYTHON="${PYTHON:-python3}"
REPEATS="${REPEATS:-2}"
TIME_LIMIT_S="${TIME_LIMIT_S:-450}"
mkdir -p "$OUT"
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
args=(--out "$OUT" --repeats "$REPEATS" --time-limit-s "$TIME_LIMIT_S")
[ "${QUICK:-0}" = "1" ] && args+=(--quick)
[ -n "${NAME:-}" ] && args+=(--name "$NAME")
{
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname): $PYTHON -m calibrate ${args[*]}"
  nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv 2>&1 || true
  lscpu 2>&1 | grep -E "Model name|^CPU\(s\)|Thread|Core|Socket|NUMA|L3" || true
  numactl --hardware 2>&1 | head -20 || true
  "$PYTHON" -m calibrate "${args[@]}"
} > "$OUT/calibrate.log" 2>&1
status=$?
profile="$(ls -t "$OUT"/*.yaml 2>/dev/null | head -1)"
if [ "$status" -ne 0 ] || [ -z "$profile" ]; then
  echo "calibration failed (exit $status); the end of $OUT/calibrate.log:"
  tail -40 "$OUT/calibrate.log"
  exit 1
fi
grep -E "^(profile|raw CSV|use it):" "$OUT/calibrate.log" || true
"$PYTHON" -m calibrate.headline "$profile" > "$OUT/headline.md" 2>&1
cat "$OUT/headline.md"
