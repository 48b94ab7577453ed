#!/usr/bin/env bash
# Wave-2 GPU-host campaign (issue 10), one part per device command, each under 9.5 minutes.
#
#   bash runtime/wave2_host_campaign.sh k     # kernel tables of the runtime only (4 models: about 8-9 minutes;
#                                             # KT_RESUME=PARTIAL_CSV resumes a run a time limit stopped)
#   bash runtime/wave2_host_campaign.sh p     # copy-engine probe only (runtime/probe_h2d.py, about 1 minute)
#   bash runtime/wave2_host_campaign.sh 1     # kernel tables of the runtime -> profile, then campaign part A
#   bash runtime/wave2_host_campaign.sh 2 [PROFILE]   # campaign part B with the committed kernel-table profile
#   bash runtime/wave2_host_campaign.sh a [PROFILE]   # campaign part A with the committed kernel-table profile
#                                                     # (no new kernel tables: the bf16 kernels are unchanged)
#   bash runtime/wave2_host_campaign.sh c [PROFILE]   # part C (about 5-6 minutes): on the workloads where the chain
#                                                     # terms changed the optimum, the new one beside the old one
#   bash runtime/wave2_host_campaign.sh d [PROFILE]   # part D (about 6-8 minutes): new workloads on the truncated
#                                                     # models, out of sample for the prefill pipeline model
#   bash runtime/wave2_host_campaign.sh e [PROFILE]   # part E (about 7-9 minutes): OPT-30B 48 layers and
#                                                     # Llama-2-70B 16 layers, new workloads
#   bash runtime/wave2_host_campaign.sh f [PROFILE]   # part F (about 3 minutes): the workloads where the optimum
#                                                     # lost, measured again
#   bash runtime/wave2_host_campaign.sh g [PROFILE]   # part G (about 3 minutes): compute-bound CPU kernels
#                                                     # beside the weight stream
#   bash runtime/wave2_host_campaign.sh h [PROFILE]   # part H (about 4 minutes): the memory model at the edge of
#                                                     # the GPU cap, and part G's two out-of-memory plans again
#   bash runtime/wave2_host_campaign.sh i [PROFILE]   # part I (about 3 minutes): part H's plans again after the
#                                                     # live-set workspace, each at the new model's cap edge
#   bash runtime/wave2_host_campaign.sh j [PROFILE]   # part J (about 3 minutes): new CPU-attention workloads
#   bash runtime/wave2_host_campaign.sh l [PROFILE]   # part L (about 3-4 minutes): new small-batch CPU-attention
#                                                     # workloads (run with REMEASURE_INSITU=1)
#   bash runtime/wave2_host_campaign.sh m [PROFILE]   # part M (about 6-8 minutes): the points that never ran on the
#                                                     # current runtime (part A's budget skips, part G's OOMs)
#   bash runtime/wave2_host_campaign.sh q PROFILE     # part Q (issue 12, about 4-6 minutes): int8 and fp8 weights,
#                                                     # with a profile holding tables of those dtypes (first:
#                                                     # KT_RESUME=<the committed raw CSV> KT_ARGS="--weight-dtypes
#                                                     # bf16,int8,fp8_e4m3 --models opt-30b,llama-2-70b" ... k,
#                                                     # then --refit with the earlier raw CSVs: wave2-q.yaml)
#   bash runtime/wave2_host_campaign.sh s [PROFILE]   # part S (issue 10, about 7-9 minutes): the runtime's hand-offs,
#                                                     # new against legacy on the same points, passes alternating
#                                                     # (S_PASSES, default "new legacy new"); python tools/ab_compare.py
#   bash runtime/wave2_host_campaign.sh t [PROFILE]   # part T (issue 10, about 8-9 minutes): Llama-2-70B points with
#                                                     # CPU decode attention under the GQA decode kernels SDPA and
#                                                     # grouped, passes alternating (T_PASSES, default "sdpa grouped
#                                                     # sdpa"); needs a profile with fits of both (--refit)
#   bash runtime/wave2_host_campaign.sh x [PROFILE]   # part X (issue 10, about 8-9 minutes): CPU sublayers on the
#                                                     # worker thread against inline (LIA_CPU_WORKER), passes
#                                                     # alternating (X_PASSES, default "thread inline thread");
#                                                     # AB_POINTS=FILE (parts s, t, x): another points file
#   bash runtime/wave2_host_campaign.sh r1 [PROFILE]  # the flagged points (spread above 5%) of the merged results
#   bash runtime/wave2_host_campaign.sh r2 [PROFILE]  # again, in two halves (runtime/campaign/rerun-flagged-*.yaml,
#                                                     # written by python -m runtime.rerun_flagged; about 8 minutes)
#   bash runtime/wave2_host_campaign.sh rows          # the CPU linears at the row counts the grid lacks (2, 8, 32, 128,
#                                                     # 384; ROWS=...), for --refit to add (about 2-4 minutes)
#   bash runtime/wave2_host_campaign.sh gqa           # CPU GQA decode attention, grouped matmul vs SDPA, interleaved
#                                                     # (runtime/probe_gqa_decode.py; about 2-4 minutes)
#   bash runtime/wave2_host_campaign.sh r3 [PROFILE]  # r3, r4, r5: the flagged points of the thirteenth session's
#                                                     # merged results, in three parts (about 5 minutes each)
#   bash runtime/wave2_host_campaign.sh w1 [PROFILE]  # w1, w2: the points whose prefill writes a GPU qkv's K/V back
#                                                     # for CPU attention, run before the wide rows' pitched
#                                                     # write-back (runtime/campaign/rerun-writeback-*.yaml, written by
#                                                     # python -m runtime.rerun_flagged --select before-wide-pitched;
#                                                     # about 8-9 minutes each)
# REMEASURE_DMA=1 (parts a and 2) first measures only the CPU-beside-DMA slowdown again into $OUT/<profile name>
# (python -m calibrate.kernel_tables --remeasure-beside-dma) and predicts with that copy.
# REMEASURE_INSITU=1 (any validation part) does the same with --remeasure-insitu: the linears' and attention's
# slowdowns beside the DMA and the CPU wake-up after a wait, re-measured at the campaign's start.
# WAIT_STEADY_S=N (validation parts) first waits at most N s for the host drift probe to read its table within 15%
# three times in a row (python -m runtime.host_state), then measures either way.
# PRE_TESTS=1 first runs the CUDA executor tests (tests/test_runtime_gpu.py, log in $OUT/gpu_tests.log).
#
# Part 1 writes $OUT/emr-h200-kernels.yaml (base: hwprofiles/systems/emr-h100-calibrated.yaml + the kernels
# section) and its raw CSV, then runs runtime/campaign/wave2-a.yaml predicted with that profile. Part 2 runs
# runtime/campaign/wave2-b.yaml. Each part writes results.csv, summary.md, summary.json, campaign.log and a
# tarball of one Chrome trace per point (traces.tgz) under $OUT and prints the summary last.
set -uo pipefail
PART=${1:?usage: runtime/wave2_host_campaign.sh PART(k|rows|gqa|p|1|2|a|c|d|e|f|g|h|i|j|l|m|q|r1..r5|w1|w2|s|t|x) [PROFILE]}
OUT=${OUT:-./campaign-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
HARD_LIMIT_S=${HARD_LIMIT_S:-560}

main() {
echo "== wave-2 campaign part $PART on $(hostname) at $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
lscpu | grep -E 'Model name|^CPU\(s\)|Thread' || true
SETUP=$("$PY" -c "from runtime import cpu_setup; print(cpu_setup.apply().describe())" 2>&1 | grep -v '^USDT' | tail -n 1)
echo "cpu setup: $SETUP"
THREADS=$(echo "$SETUP" | sed -n 's/^threads=\([0-9]*\).*/\1/p')
if [ -z "$THREADS" ] || [ "$THREADS" -lt $(( $(nproc) / 2 )) ]; then
    echo "the CPU setup uses ${THREADS:-?} threads of $(nproc) CPUs: the topology was misread; set LIA_THREADS"
    return 1
fi
if [ "${PRE_TESTS:-0}" = "1" ]; then
    echo "== CUDA executor tests (tests/test_runtime_gpu.py)"
    timeout 150 "$PY" -m pytest tests/test_runtime_gpu.py -q -x -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -n 15
fi
case "$PART" in
    k)
        # kernel tables only (all four models' shapes by default), the whole command's time for them
        timeout "${KT_LIMIT_S:-$((HARD_LIMIT_S - 20))}" "$PY" -m calibrate.kernel_tables \
            --base hwprofiles/systems/emr-h100-calibrated.yaml --name emr-h200-kernels --out "$OUT" --force ${KT_ARGS:-} \
            ${KT_RESUME:+--resume-from "$KT_RESUME"} 2>&1 | grep --line-buffered -v '^USDT'
        [ -f "$OUT/emr-h200-kernels.yaml" ] || {
            echo "kernel tables not finished: copy \$OUT/emr-h200-kernels-kernels.partial.csv into the repository and"
            echo "run part k again with KT_RESUME=<that path> (the blocks it holds are not measured again)"
            return 1
        }
        echo "== done in ${SECONDS} s; files: $(ls "$OUT" | tr '\n' ' ')"
        return 0
        ;;
    rows)
        # the CPU linears at the row counts the campaigns decode with and the grid lacks, for --refit to add
        # (calibrate.kernel_tables --cpu-linears-only; the fourteenth session found Llama-2-70B fc2 at 32 rows 1.24x
        # its interpolated table: runtime/validation/linear-insitu-probe/), with the host probe before and after; the run
        # records its own probe before and after in every row (--probe-against) and --refit leaves it out when drifted
        "$PY" -m runtime.host_state --system hwprofiles/systems/emr-h200-kernels.yaml --wait-s "${WAIT_STEADY_S:-60}" \
            --every-s 10 2>&1 | grep --line-buffered -v '^USDT'
        timeout "${KT_LIMIT_S:-$((HARD_LIMIT_S - 90))}" "$PY" -m calibrate.kernel_tables --cpu-linears-only \
            "${ROWS:-2,8,32,128,384}" --models "${KT_MODELS:-opt-30b,opt-66b,opt-175b,llama-2-70b}" \
            --probe-against hwprofiles/systems/emr-h200-kernels.yaml \
            --name "emr-h200-kernels-$(date -u +%Y-%m-%dT%H%M)-rows" --out "$OUT" 2>&1 | grep --line-buffered -v '^USDT'
        "$PY" -m runtime.host_state --system hwprofiles/systems/emr-h200-kernels.yaml --wait-s 1 --every-s 1 2>&1 \
            | grep --line-buffered -v '^USDT'
        echo "== done in ${SECONDS} s; then: python -m calibrate.kernel_tables --refit <the profile's --refit command> \$OUT/*-rows-kernels.csv"
        return 0
        ;;
    gqa)
        # CPU decode attention for GQA models, the grouped matmul pair against SDPA over a group's heads as query rows
        # (runtime/probe_gqa_decode.py, LIA_GQA_DECODE), interleaved on the calibrator's decode grid
        timeout "${KT_LIMIT_S:-$((HARD_LIMIT_S - 20))}" "$PY" -m runtime.probe_gqa_decode --out "$OUT" \
            --rounds "${GQA_ROUNDS:-3}" 2>&1 | grep --line-buffered -v '^USDT'
        return 0
        ;;
    p)
        # the copy-engine probe (runtime/probe_h2d.py): small critical-path copies beside the weight feeder
        timeout 150 "$PY" -m runtime.probe_h2d --out "$OUT" 2>&1 | grep --line-buffered -v '^USDT'
        return 0
        ;;
    a)
        PROFILE=${2:-hwprofiles/systems/emr-h200-kernels.yaml}
        POINTS=${POINTS_A:-runtime/campaign/wave2-a.yaml}; MAX_POINT_S=${MAX_POINT_S:-60}
        TITLE="OPT-30B, 48 layers, GPU capped at 40 GiB (wave 2, kernel tables)"
        ;;
    1)
        timeout "${KT_LIMIT_S:-330}" "$PY" -m calibrate.kernel_tables --base hwprofiles/systems/emr-h100-calibrated.yaml \
            --name emr-h200-kernels --out "$OUT" --force ${KT_ARGS:-} 2>&1 | grep --line-buffered -v '^USDT'
        PROFILE="$OUT/emr-h200-kernels.yaml"
        [ -f "$PROFILE" ] || { echo "kernel tables failed"; return 1; }
        cp "$PROFILE" /tmp/emr-h200-kernels.yaml
        POINTS=${POINTS_A:-runtime/campaign/wave2-a.yaml}; MAX_POINT_S=${MAX_POINT_S:-60}
        TITLE="OPT-30B, 48 layers, GPU capped at 40 GiB (wave 2, kernel tables)"
        ;;
    2|c|d|e|f|g|h|i|j|l|m|q|q2)
        # runtime/campaign/wave2-<part>.yaml (part 2 is B) with the committed kernel-table profile
        PROFILE=${2:-hwprofiles/systems/emr-h200-kernels.yaml}
        POINTS=runtime/campaign/wave2-$([ "$PART" = 2 ] && echo b || echo "$PART").yaml
        case "$PART" in
            2) DEFAULT_POINT_S=30; TITLE="OPT-30B/66B/175B and Llama-2-70B subsets (wave 2, kernel tables)" ;;
            c) DEFAULT_POINT_S=60; TITLE="The chain terms' new optimum beside the one chosen before them (wave 2, kernel tables)" ;;
            d) DEFAULT_POINT_S=40; TITLE="New workloads on the truncated models, prefill pipeline model (wave 2, kernel tables)" ;;
            e) DEFAULT_POINT_S=90; TITLE="OPT-30B full depth and Llama-2-70B 16 layers, new workloads, prefill pipeline model (wave 2)" ;;
            f) DEFAULT_POINT_S=60; TITLE="The workloads where the optimum lost, measured again (wave 2, kernel tables)" ;;
            g) DEFAULT_POINT_S=40; TITLE="Compute-bound CPU kernels beside the weight stream (wave 2, kernel tables)" ;;
            h) DEFAULT_POINT_S=45; TITLE="The memory model at the edge of the GPU cap (wave 2, kernel tables)" ;;
            i) DEFAULT_POINT_S=45; TITLE="The memory model at the edge of the GPU cap, live-set workspace (wave 2)" ;;
            j) DEFAULT_POINT_S=45; TITLE="Attention tables over cold caches: new CPU-attention workloads (wave 2)" ;;
            l) DEFAULT_POINT_S=45; TITLE="CPU wake-up and attention beside the DMA: new small-batch workloads (wave 2)" ;;
            m) DEFAULT_POINT_S=60; TITLE="Points that never ran on the current runtime (wave 2)" ;;
            q) DEFAULT_POINT_S=60; TITLE="int8 and fp8 weights, run and predicted from tables of their dtype (wave 2, issue 12)" ;;
            q2) DEFAULT_POINT_S=60; TITLE="The same workloads at bf16, int8 and fp8: measured speedups beside predicted ones (wave 2, issue 12)" ;;
        esac
        MAX_POINT_S=${MAX_POINT_S:-$DEFAULT_POINT_S}
        ;;
    s|t|x)
        # the same points under two runtime modes, passes alternating: part s the new hand-offs against the legacy ones
        # (runtime/campaign/wave2-s.yaml), part t the CPU GQA decode kernels SDPA against the grouped pair
        # (runtime/campaign/wave2-t.yaml; each pass predicts with the profile's fit of its kernel), part x the CPU
        # sublayers on the worker thread against inline (runtime/campaign/wave2-x.yaml, LIA_CPU_WORKER)
        PROFILE=${2:-hwprofiles/systems/emr-h200-kernels.yaml}
        if [ "$PART" = s ]; then PASSES=${S_PASSES:-new legacy new}; WHAT="Runtime hand-offs"
        elif [ "$PART" = x ]; then PASSES=${X_PASSES:-thread inline thread}; WHAT="CPU sublayers on a worker thread"
        else PASSES=${T_PASSES:-sdpa grouped sdpa}; WHAT="CPU GQA decode kernel"; fi
        i=0
        for mode in $PASSES; do
            i=$((i + 1)); DIR="$OUT/$PART$i-$mode"
            LEFT=$((HARD_LIMIT_S - SECONDS))
            [ "$LEFT" -lt 90 ] && { echo "== pass $i ($mode) skipped: ${LEFT} s left"; break; }
            case "$mode" in
                legacy) ENVS="LIA_KV_WRITEBACK=pitched LIA_EARLY_PREFETCH=0 LIA_LAZY_WEIGHT_WAIT=0" ;;
                sdpa|grouped) ENVS="LIA_GQA_DECODE=$mode" ;;
                thread|inline) ENVS="LIA_CPU_WORKER=$mode" ;;
                *) ENVS="" ;;
            esac
            echo "== pass $i: $mode ${ENVS:+($ENVS)}, ${LEFT} s left"
            env $ENVS timeout -s INT "$((LEFT - 10))" "$PY" -m lia_model validate --points "${AB_POINTS:-runtime/campaign/wave2-$PART.yaml}" \
                --system "$PROFILE" --out "$DIR" --repeats 5 --profiled-runs 3 --trace "$DIR/traces" --max-point-s 40 \
                --time-budget-s "$((LEFT - 40))" --title "$WHAT, pass $i ($mode)" 2>&1 \
                | grep --line-buffered -v '^USDT' | grep --line-buffered -E '^\[|^error|^setup|Traceback|Error'
            [ -d "$DIR/traces" ] && "$PY" tools/trace_layers.py "$DIR/traces" && tar czf "$DIR/traces.tgz" -C "$DIR" traces \
                && rm -rf "$DIR/traces"
            rm -f "$DIR/pred_vs_meas.svg" "$DIR/pred_vs_meas.png"
        done
        "$PY" tools/ab_compare.py "$OUT"/"$PART"[0-9]*-*
        echo "== done in ${SECONDS} s"
        return 0
        ;;
    r[1-5])
        PROFILE=${2:-hwprofiles/systems/emr-h200-kernels.yaml}
        POINTS=runtime/campaign/rerun-flagged-${PART#r}.yaml; MAX_POINT_S=${MAX_POINT_S:-60}
        TITLE="The flagged points (latency spread above 5%) measured again, part ${PART#r} (wave 2)"
        ;;
    w[1-2])
        PROFILE=${2:-hwprofiles/systems/emr-h200-kernels.yaml}
        POINTS=runtime/campaign/rerun-writeback-${PART#w}.yaml; MAX_POINT_S=${MAX_POINT_S:-60}
        TITLE="Prefill K/V write-backs for CPU attention measured again on the wide rows' pitched write-back, part ${PART#w} (wave 2)"
        ;;
    *) echo "unknown part '$PART'"; return 2 ;;
esac
REMEASURE=""  # --remeasure-insitu measures the DMA slowdown too, so it stands for both
[ "${REMEASURE_DMA:-0}" = "1" ] && REMEASURE="--remeasure-beside-dma" && REMEASURE_S=120
[ "${REMEASURE_INSITU:-0}" = "1" ] && REMEASURE="--remeasure-insitu" && REMEASURE_S=150
if [ -n "$REMEASURE" ]; then
    echo "== $REMEASURE: measured again into a copy of $PROFILE"
    timeout "$REMEASURE_S" "$PY" -m calibrate.kernel_tables "$REMEASURE" "$PROFILE" --out "$OUT" --force 2>&1 \
        | grep --line-buffered -v '^USDT'
    NEW="$OUT/$(basename "$PROFILE")"
    [ -f "$NEW" ] && PROFILE="$NEW" || { echo "re-measurement failed"; return 1; }
fi
if [ "${WAIT_STEADY_S:-0}" -gt 0 ]; then  # wait (at most WAIT_STEADY_S) for the host's CPU GEMV to be at its table
    echo "== waiting for the host's CPU to be within 15% of its tables (at most ${WAIT_STEADY_S} s)"
    "$PY" -m runtime.host_state --system "$PROFILE" --wait-s "$WAIT_STEADY_S" --every-s 10 2>&1 | grep -v '^USDT'
    [ "${PIPESTATUS[0]}" = "0" ] || echo "== the host did not settle; measuring anyway (the drift probe flags the points)"
fi
LEFT=$((HARD_LIMIT_S - SECONDS)); BUDGET=$((LEFT - 40))
echo "== lia validate ($POINTS) with $PROFILE, budget ${BUDGET} s"
timeout -s INT "$LEFT" "$PY" -m lia_model validate --points "$POINTS" --system "$PROFILE" --out "$OUT" \
    --repeats 5 --profiled-runs 3 --trace "$OUT/traces" --max-point-s "$MAX_POINT_S" --time-budget-s "$BUDGET" \
    --title "$TITLE" 2>&1 | grep --line-buffered -v '^USDT'
if [ ! -f "$OUT/summary.md" ] && [ -f "$OUT/results.csv" ]; then
    "$PY" -m lia_model validate --from-csv "$OUT/results.csv" --out "$OUT" --force --title "$TITLE (partial)" >/dev/null 2>&1 || true
fi
[ -d "$OUT/traces" ] && tar czf "$OUT/traces.tgz" -C "$OUT" traces && rm -rf "$OUT/traces"
rm -f "$OUT/pred_vs_meas.svg"
echo "== done in ${SECONDS} s; files: $(ls "$OUT" | tr '\n' ' ')"
[ -f "$OUT/summary.md" ] && cat "$OUT/summary.md"
return 0
}
main "$@" 2>&1 | tee "$OUT/campaign.log"
