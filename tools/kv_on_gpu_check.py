"""What the optimiser gives up by not searching ``streamed_kv_on_gpu`` (FlexGen's cache on the GPU), on a few queries.

    python tools/kv_on_gpu_check.py

For each query: the optimum's latency (the exact enumerator), and the fastest plan with every streamed layer's KV
cache in GPU memory that this script finds: every prefill and decode vector with qkv and attention on the GPU (8 x
8 pairs, what the plan's validator allows), one prefill chunk or the optimum's count, the most resident layers that
fit (not searched below that), the optimum's other knobs. A ratio over 1 means the optimum is faster. It is a
check, not the optimiser: a plan it misses (fewer resident layers) could still be faster.
"""

from __future__ import annotations

import itertools

from lia_model.baselines import max_resident_layers
from lia_model.costmodel import predict
from lia_model.memory import plan_fits
from lia_model.models import get_model
from lia_model.optimizer import optimize
from lia_model.plan import KV_SUBLAYERS, HostTier, policy_from_index
from lia_model.profiles import load_system
from lia_model.sublayers import SUBLAYERS
from lia_model.workload import make_workload

QUERIES = [
    ("emr-h100-calibrated", ["gpu.memory_gib=40"], "opt-30b", 512, 32, 8),
    ("emr-h100-calibrated", ["gpu.memory_gib=40"], "opt-30b", 64, 128, 32),
    ("spr-a100", [], "opt-30b", 64, 128, 32),
    ("spr-h100", [], "opt-66b", 32, 512, 64),
    ("spr-h100", [], "llama-2-70b", 64, 256, 64),
    ("gnr-h100", [], "opt-175b", 16, 256, 32),
    ("spr-a100", [], "llama-2-70b", 128, 128, 128),
]
# policy indices with qkv, attn_score and attn_context on the GPU (bit i = sublayer i on the CPU)
_KV_MASK = sum(1 << i for i, s in enumerate(SUBLAYERS) if s in KV_SUBLAYERS)
GPU_KV_POLICIES = [k for k in range(1 << len(SUBLAYERS)) if not k & _KV_MASK]


def best_kv_on_gpu(system, model, workload, optimum):
    best = None
    for pre, dec in itertools.product(GPU_KV_POLICIES, GPU_KV_POLICIES):
        for n in sorted({1, optimum.prefill_minibatches}):
            plan = optimum.model_copy(
                update=dict(
                    prefill_policy=policy_from_index(pre),
                    decode_policy=policy_from_index(dec),
                    prefill_minibatches=n,
                    streamed_kv_on_gpu=True,
                    kv_tier=HostTier.DDR,
                    cxl_weight_layers=0,
                    gpu_resident_layers=0,
                    label="kv-on-gpu",
                )
            )
            if not plan_fits(system, model, workload, plan):
                continue
            plan = plan.model_copy(update={"gpu_resident_layers": max_resident_layers(system, model, workload, plan)})
            if plan.gpu_resident_layers >= model.num_layers:
                continue  # no streamed layer: the cache's home does not matter
            pred = predict(system, model, workload, plan)
            if pred.feasible and (best is None or pred.latency_s < best[0]):
                best = (pred.latency_s, plan)
    return best


def main() -> None:
    print("system, model, B, L_in/L_out: optimum latency s | best KV-on-GPU plan found s | optimum's speed over it")
    for name, overrides, model_name, batch, lin, lout in QUERIES:
        system, model = load_system(name, overrides), get_model(model_name)
        wl = make_workload(batch, lin, lout, model)
        optimum = optimize(system, model, wl, solver="enumerate").plan
        opt_s = predict(system, model, wl, optimum).latency_s
        best = best_kv_on_gpu(system, model, wl, optimum)
        found = f"{best[0]:.3f}" if best else "none fits"
        ratio = f"{best[0] / opt_s:.2f}x" if best else "-"
        print(
            f"{name}{' ' + ' '.join(overrides) if overrides else ''}, {model_name}, B={batch}, {lin}/{lout}: "
            f"{opt_s:.3f} | {found} | {ratio}",
            flush=True,
        )


if __name__ == "__main__":
    main()
