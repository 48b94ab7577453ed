"""GPU linears timed as the runtime runs them: a layer's four linears chained, each reading the output its producer
has just written (``python -m calibrate.kernel_tables --gpu-linears-chained TOKENS``).

Why (issue 10; runtime/validation/gpu-chain-probe/): the calibrator timed each GPU linear alone, the same call back to
back over the same input. In the runtime a layer's GPU linears run one after the other (qkv, out_proj, fc1, fc2), each
on the activations the one before has just written. On the GPU host the same kernels ran 10-25% faster that way
(OPT-30B fc2 at 2016 tokens: 1.09-1.19 ms alone, 0.99 ms chained over a few passes, 0.97 ms in situ; chained for a
minute on end it slowed to 1.19 ms: the GPU's busy state), and the validation's GPU prefill linears ran at 0.78-0.89x
their tables. The operand data, the stream, inference mode, the weights' layout and the
allocator were each ruled out (``tools/probe_gpu_burst.py --data``, ``--context``).

Each pass runs ``qkv -> out_proj -> fc1 -> fc2`` of one layer block with the runtime's kernels (runtime/kernels.py),
CUDA events between them, over layer blocks laid out as the runtime's weights (runtime/weights.py ``layer_layout``),
in turn, enough of them that their weights exceed 4x ``GPU_CACHE_BYTES``. Q stands in for attention's output (both
[tokens, q_dim]; attention is timed by its own grid), and each pass's fc2 output is
the next pass's input, as a layer's output is the next layer's. Beside the passes the next layer's weights are copied
host -> GPU, and each pass waits for that copy (``WeightStream``), as a streamed layer waits for its weights: the GPU
runs at a streamed layer's duty cycle, not back to back (the difference the probes found). Passes are timed in ``rounds`` interleaved over the
token counts; an entry is the median of its rounds' medians, as the CPU's memory-bound entries
(kernel_tables.ROUND_ESTIMATE). Rows are the raw CSV's linear rows with ``timing = "chained"``; ``--refit`` puts them
in the GPU linear tables in place of the isolated timings of the same (shape, tokens).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Optional

CHAINED = "chained"  # the ``timing`` column of a chained row (isolated rows: absent or "isolated")
GPU_CACHE_BYTES = 200 << 20  # as kernel_tables.linear_rows: GPU weights cycle beyond 4x this
PASSES = 7  # timed passes per round and token count (each spaced by a layer's weight copy: 20-70 ms)


def layer_blocks(model: Any, count: int, device: str = "cuda") -> list[dict]:
    """``count`` layer blocks on ``device`` (the GPU; the CPU in tests), each {sublayer: parameter views} into one flat
    block laid out as the runtime's weights, filled as the runtime fills random weights (uniform +-sqrt(3 / hidden)),
    norms 1, biases 0."""
    import torch

    from lia_model.sublayers import Sublayer
    from runtime.weights import layer_layout

    layout = layer_layout(model)
    bound = math.sqrt(3.0 / model.hidden_size)
    blocks = []
    for _ in range(count):
        flat = torch.empty(layout.numel, dtype=torch.bfloat16, device=device).uniform_(-bound, bound)
        block = {}
        for sub in (Sublayer.QKV, Sublayer.OUT_PROJ, Sublayer.FC1, Sublayer.FC2):
            p = layout.views(flat, sub)
            if "norm_w" in p:
                p["norm_w"].fill_(1.0)
            for name in ("b", "norm_b"):
                if name in p:
                    p[name].zero_()
            block[sub] = p
        blocks.append(block)
    return blocks


def blocks_to_stream(model: Any) -> int:
    """Layer blocks to cycle so that their weights exceed 4x GPU_CACHE_BYTES (at least 2)."""
    from calibrate.tensors import copies_to_stream

    return max(2, copies_to_stream(layer_bytes(model), GPU_CACHE_BYTES, cap=8))


class _HostEvent:
    """A perf_counter stamp with the CUDA event's interface (``elapsed_time`` in ms): the chain on the CPU, in tests."""

    def record(self) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end: "_HostEvent") -> float:
        return (end.t - self.t) * 1e3


class Chain:
    """One model's chained passes at one token count: ``run_passes`` times them, per sublayer, in seconds."""

    def __init__(
        self, model: Any, tokens: int, blocks: list[dict], device: str = "cuda", stream: Optional["WeightStream"] = None
    ) -> None:
        import torch

        from runtime import kernels

        self.model, self.tokens, self.blocks, self.device, self.stream = model, tokens, blocks, device, stream
        dev = torch.device(device)
        self.rope = kernels.rope_tables(torch.arange(0, tokens), model, dev) if model.uses_rope else None
        self.h = torch.randn(1, tokens, model.hidden_size, dtype=torch.bfloat16, device=dev)
        self.i = 0

    def run_passes(self, passes: int) -> dict[str, list[float]]:
        import torch

        from lia_model.sublayers import Sublayer
        from runtime import kernels

        m = self.model
        out: dict[str, list[float]] = {
            s.value: [] for s in (Sublayer.QKV, Sublayer.OUT_PROJ, Sublayer.FC1, Sublayer.FC2)
        }
        with torch.inference_mode():
            for _ in range(passes):
                p = self.blocks[self.i % len(self.blocks)]
                self.i += 1
                if self.stream is not None:  # this layer waits for its weights; the next layer's copy starts
                    self.stream.next_layer()
                ev = [torch.cuda.Event(enable_timing=True) if self.device == "cuda" else _HostEvent() for _ in range(5)]
                ev[0].record()
                q, _k, _v = kernels.qkv(self.h, p[Sublayer.QKV], m, self.rope)
                ev[1].record()
                h_mid = kernels.out_proj(q, p[Sublayer.OUT_PROJ], self.h)
                ev[2].record()
                mid = kernels.fc1(h_mid, p[Sublayer.FC1], m)
                ev[3].record()
                self.h = kernels.fc2(mid, p[Sublayer.FC2], h_mid)
                ev[4].record()
                ev[4].synchronize()
                for i, name in enumerate(out):
                    out[name].append(ev[i].elapsed_time(ev[i + 1]) * 1e-3)
        return out


class WeightStream:
    """A layer's weights copied host -> GPU (page-locked, on a stream of their own) beside the chained passes, as the
    runtime streams the next layer's weights while a layer computes: pass i waits for the copy issued during pass
    i - 1, and its own copy runs beside it. The passes are then spaced as a streamed layer's are in situ (the copy
    of a layer takes longer than its GPU linears up to several thousand tokens), and the GPU works at that duty cycle
    with its copy engine busy, where calls back to back kept it busy and warmer: 10-20% slower on the GPU host
    (runtime/validation/gpu-chain-probe/)."""

    def __init__(self, layer_bytes: int) -> None:
        import torch

        numel = layer_bytes // 2
        self.host = torch.empty(numel, dtype=torch.bfloat16, pin_memory=True)
        self.host.fill_(0.01)
        self.gpu = torch.empty(numel, dtype=torch.bfloat16, device="cuda")
        self.copy_stream = torch.cuda.Stream()
        self.done = None

    def next_layer(self) -> None:
        import torch

        if self.done is not None:
            torch.cuda.current_stream().wait_event(self.done)
        with torch.cuda.stream(self.copy_stream):
            self.gpu.copy_(self.host, non_blocking=True)
            self.done = torch.cuda.Event()
            self.done.record(self.copy_stream)


def layer_bytes(model: Any) -> int:
    """Bytes of one layer's bf16 weights (the four linears, biases and norms)."""
    from lia_model.accounting import sublayer_params

    return 2 * sum(sublayer_params(model).values())


def chained_linear_rows(models: list, tokens_list: tuple[int, ...], rounds: int, setup: str, log=print) -> list[dict]:
    """The raw CSV rows of ``models``' GPU linears timed chained at ``tokens_list`` (one row per sublayer and token
    count; ``time_s`` the median of ``rounds`` rounds' medians)."""
    import torch

    from lia_model.accounting import linear_shape
    from lia_model.sublayers import Sublayer

    rows: list[dict] = []
    for model in models:
        blocks = layer_blocks(model, blocks_to_stream(model))
        stream = WeightStream(layer_bytes(model))
        chains = {t: Chain(model, t, blocks, stream=stream) for t in tokens_list}
        for chain in chains.values():  # warm-up: cuBLAS heuristics, allocator, first touch (untimed)
            chain.run_passes(2)
        per_round: dict[tuple[int, str], list[list[float]]] = {}
        for _ in range(rounds):
            for t, chain in chains.items():
                chain.run_passes(1)  # untimed: the first pass after another token count's
                got = chain.run_passes(PASSES)
                for name, times in got.items():
                    per_round.setdefault((t, name), []).append(times)
        for sub in (Sublayer.QKV, Sublayer.OUT_PROJ, Sublayer.FC1, Sublayer.FC2):
            k, n = linear_shape(model, sub)
            for t in tokens_list:
                rounds_s = per_round[(t, sub.value)]
                medians = [statistics.median(r) for r in rounds_s]
                median_s = statistics.median(medians)
                every = [x for r in rounds_s for x in r]
                rows.append(
                    {
                        "family": "linear",
                        "device": "gpu",
                        "model": model.name,
                        "sublayer": sub.value,
                        "k": k,
                        "n": n,
                        "weight_dtype": "bf16",
                        "tokens": t,
                        "time_s": median_s,
                        "min_s": min(every),
                        "max_s": max(every),
                        "samples": len(every),
                        "rounds": len(rounds_s),
                        "round_medians_s": " ".join(f"{x:.6g}" for x in medians),
                        "weight_copies": len(blocks),
                        "gbps_weights": 2 * k * n / median_s / 1e9,
                        "tflops": 2.0 * t * k * n / median_s / 1e12,
                        "timing": CHAINED,
                        "setup": setup,
                    }
                )
            log(
                f"gpu chained {model.name} {sub.value} ({k}x{n}): "
                + ", ".join(f"{r['tokens']}:{r['time_s'] * 1e3:.3f}ms" for r in rows[-len(tokens_list) :])
            )
        torch.cuda.synchronize()
        del chains, blocks, stream
        torch.cuda.empty_cache()
    return rows


def is_chained(row: dict) -> bool:
    """A raw row timed chained (this module) rather than alone (kernel_tables.linear_rows)."""
    return row.get("timing") == CHAINED
