#!/usr/bin/env bash
# The default profile's kernel tables from its raw calibration CSVs (no measurement): the --refit command that writes
# hwprofiles/systems/emr-h200-kernels.yaml, with every raw CSV it uses, in order (the first is the run that made
# the profile; each later one joins as an earlier run: see calibrate/kernel_tables.py refit).
#
#   bash tools/refit_default_profile.sh [PROFILE]     # default: hwprofiles/systems/emr-h200-kernels.yaml (rewritten)
#
# Run on the committed files it reproduces the committed profile byte for byte (the date in its notes aside).
set -euo pipefail
PROFILE=${1:-hwprofiles/systems/emr-h200-kernels.yaml}
C=hwprofiles/calibration/emr-h200-kernels
CSVS=(
    "$C-2026-12-01T1510-kernels.csv" "$C-2026-12-01T1721-kernels.csv" "$C-2026-12-01T1251-kernels.csv"
    "$C-2026-11-30-kernels.csv" "$C-2026-12-01-kernels.csv" "$C-2026-12-01T2159-rows-kernels.csv"
    "$C-2026-12-01T2215-kernels.csv" "$C-2026-12-02T0054-kernels.csv" "$C-2026-12-02T0114-kernels.csv"
    "$C-2026-12-02T1020-gpu-kernels.csv" "$C-2026-12-02T1020-gpuq-kernels.csv" "$C-2026-12-02T1353-streamed-kernels.csv"
    ${EXTRA_CSVS:-}
)
LIA_GQA_DECODE=sdpa "${PYTHON:-python}" -m calibrate.kernel_tables --refit "$PROFILE" "${CSVS[@]}" --force
