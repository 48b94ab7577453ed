#!/usr/bin/env bash
# Issue 11 on the GPU host: `lia run` on Hugging Face checkpoints with real CUDA.
#
#   OUT=$OUT bash runtime/hf_gpu_campaign.sh tests   # the transformers comparison (tests/test_hf_models.py) on the GPU, ~2 min
#   OUT=$OUT bash runtime/hf_gpu_campaign.sh bench   # real-shaped 4-layer checkpoints: tokens/s measured vs predicted, ~8 min
#
# Needs transformers 5.24.0 and safetensors 0.8.0 (the test extra). The host has no network: when they are missing
# and a folder wheels/ (pip download -d wheels transformers==5.24.0 safetensors==0.8.0 pytest, made on a machine
# with network) is in the repository root, they are installed from it. Checkpoints are written to
# ${LIA_HF_WORK:-/tmp/lia-hf} (several GB), never under $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-results/hf_gpu}
mkdir -p "$OUT"
if ! $PY -c "import transformers, safetensors" 2>/dev/null; then
  if [ -d wheels ]; then
    $PY -m pip install -q --no-index --find-links wheels transformers safetensors pytest
  else
    echo "transformers/safetensors missing and no wheels/ folder: see the header of this script" >&2
    exit 2
  fi
fi
case "${1:-tests}" in
  tests)
    LIA_TEST_GPU_BACKEND=cuda $PY -m pytest tests/test_hf_models.py -q -p no:cacheprovider -rA 2>&1 \
      | tee "$OUT/hf_cuda_tests.log" | tail -n 80
    ;;
  bench)
    $PY -m runtime.hf_bench --work "${LIA_HF_WORK:-/tmp/lia-hf}" --out "$OUT" --trace \
      --system "${LIA_HF_SYSTEM:-hwprofiles/systems/emr-h200-kernels.yaml}" ${LIA_HF_MODELS:+--models "$LIA_HF_MODELS"}
    # The device returns at most 8 files: the per-point JSON, logs, prompts and traces travel as one tarball.
    if [ -d "$OUT/hf_bench" ]; then
      tar czf "$OUT/hf_bench_points.tgz" -C "$OUT" hf_bench && rm -rf "$OUT/hf_bench"
    fi
    ;;
  *)
    echo "usage: OUT=\$OUT bash runtime/hf_gpu_campaign.sh tests|bench" >&2
    exit 2
    ;;
esac
