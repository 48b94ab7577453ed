"""The runtime's fixed cost of one sublayer, measured on its own (separate from any validation point).

A sublayer of this runtime is several framework calls (norm, matmul, bias, reshape, residual, the
bookkeeping of the executor), not one kernel, so its launch cost is larger than the calibrator's single
tiny op. This benchmark runs the executor itself on a tiny model (hidden 64: the work is negligible) at two
layer counts and takes the slope of the decode step time over layers, divided by six sublayers:

    op_overhead = (TPOT(layers_hi) - TPOT(layers_lo)) / ((layers_hi - layers_lo) * 6)

once all-GPU with every layer resident (GPU sublayers) and once all-CPU (CPU sublayers). Embedding and
LM head costs cancel in the difference. The results are written as ``--set`` overrides
(``gpu.op_overhead_us=...``, ``cpu.op_overhead_us=...``) for ``lia validate`` to predict with.

    python -m runtime.overhead [--out overhead.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from lia_model.models import ModelSpec
from lia_model.plan import ALL_CPU, ALL_GPU, Plan
from lia_model.workload import Workload

LAYERS = (4, 16)
WORKLOAD = Workload(batch=1, input_len=4, output_len=17)


def tiny_model(layers: int) -> ModelSpec:
    return ModelSpec(
        name=f"overhead-probe-{layers}L",
        num_layers=layers,
        hidden_size=64,
        ffn_size=256,
        num_heads=2,
        num_kv_heads=2,
        head_dim=32,
        vocab_size=128,
        max_context=64,
        learned_positions=66,
    )


def decode_step_s(backend, plan_for, layers: int, repeats: int = 5) -> float:
    from runtime.executor import Executor, random_prompt
    from runtime.hostmem import HostArena
    from runtime.weights import ModelWeights, layer_layout

    model = tiny_model(layers)
    arena = HostArena(
        backend,
        layer_layout(model).numel * layers,
        pinned=backend.is_cuda,
        random_fill=True,
        seed=1,
        fan_in=model.hidden_size,
    )
    weights = ModelWeights(model, arena, backend, seed=1)
    with Executor(backend, weights, plan_for(layers), WORKLOAD) as ex:
        prompt = random_prompt(model, WORKLOAD, seed=1)
        ex.generate(prompt, profile=False)
        steps = []
        for _ in range(repeats):
            steps.extend(ex.generate(prompt, profile=False).tpot_s)
    arena.release()
    return statistics.median(steps)


def measure(backend) -> dict[str, float]:
    lo, hi = LAYERS
    out: dict[str, float] = {}
    cases = [("cpu", lambda n: Plan(prefill_policy=ALL_CPU, decode_policy=ALL_CPU, gpu_resident_layers=0))]
    if backend.has_gpu:
        cases.append(("gpu", lambda n: Plan(prefill_policy=ALL_GPU, decode_policy=ALL_GPU, gpu_resident_layers=n)))
    for dev, plan_for in cases:
        t_lo, t_hi = decode_step_s(backend, plan_for, lo), decode_step_s(backend, plan_for, hi)
        out[f"{dev}.op_overhead_us"] = max(0.0, (t_hi - t_lo) / ((hi - lo) * 6) * 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure the runtime's fixed cost per sublayer.")
    parser.add_argument("--out", default=None, help="write the overrides as JSON here")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    args = parser.parse_args()
    import torch

    from runtime.backend import Backend

    mode = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    result = measure(Backend(mode))
    record = {
        "overrides": {k: round(v, 2) for k, v in result.items()},
        "method": "slope of the decode step time of the runtime on a hidden-64 model at 4 and 16 layers, "
        "per sublayer (runtime/overhead.py)",
        "device_mode": mode,
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "host": __import__("platform").node(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
    }
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
