"""The schedule of one streamed layer's chunks on CPU, GPU and the two copy directions, simulated exactly.

The cost model's overlap mode times a streamed layer by replaying the runtime's scheduler
(runtime/executor.py ``_layer``) on the durations of the layer's operations. One chunk (a decode step,
or one of the n prefill minibatches) is the six sublayers in order, each on the device its policy bit
names, with the copies between them. The resources are four in-order queues: the GPU compute stream, the
host-to-device copy stream, the device-to-host copy stream, and the host thread that runs CPU sublayers
synchronously.

The scheduler, per layer:

1. Early copies: for every chunk whose qkv runs on the GPU, the cached K (for a GPU attn_score) and then
   the cached V (for a GPU attn_context) are fetched from the host cache, in chunk order.
2. Loop: issue, chunk by chunk, every GPU sublayer whose predecessor has been issued or has run
   (asynchronous; each with its input copy on the H2D stream, and after a GPU qkv the write-back of the
   new K and V on the D2H stream); the output of a GPU sublayer that a CPU sublayer reads next is copied
   to the host on the D2H stream right behind it. Then run one CPU sublayer: the oldest chunk's whose
   inputs are ready now, or, when none is, the one whose inputs are ready first (ties: the oldest).
   A CPU attention sublayer's inputs include the write-back of the K and V it reads. MoE experts fetched
   on demand are copied once the GPU fc1 / fc2's input is ready (the routing is known), before it runs.
3. The layer ends when every chunk's fc2 output has reached the device of the next layer's qkv.

Start times are the max of the queue's previous end and the operation's inputs; nothing else waits.
The write-back of new K/V and the fetches count toward their copy queue's busy time, and delay what queues
behind them, but a chunk only waits for them where it reads them (the write-back is off the chain unless
attention runs on the CPU). The weight prefetch is not part of this schedule: the cost model bounds the
layer by the H2D link's whole busy time (weights and activations) separately.

With n = 1 (decode) there is no choice, and the durations may be arrays over decode steps. With n > 1
the choice of CPU sublayer depends on the times, so the durations must be one step (prefill).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from lia_model.sublayers import NUM_SUBLAYERS

_QKV, _SCORE, _CTX, _FC2 = 0, 1, 2, 5


@dataclass(frozen=True)
class ChunkDurations:
    """Durations of one chunk's operations, each an array over steps [S] (rows: sublayers or boundaries).

    cross_h2d_s[j] / cross_d2h_s[j]: the copy at boundary j (what sublayer j hands to j + 1; j = 5 is fc2 to
    the next layer's qkv) when j is on the CPU and j + 1 on the GPU / the reverse."""

    cpu_s: np.ndarray          # [6, S]
    gpu_s: np.ndarray          # [6, S]
    cross_h2d_s: np.ndarray    # [6, S]
    cross_d2h_s: np.ndarray    # [6, S]
    k_cached_s: np.ndarray     # [S] cached K to a GPU attn_score
    v_cached_s: np.ndarray     # [S] cached V to a GPU attn_context
    v_new_s: np.ndarray        # [S] new V made by a CPU qkv, to a GPU attn_context
    kv_write_s: np.ndarray     # [S] new K and V from a GPU qkv, written back to the host cache
    expert_h2d_s: np.ndarray   # [6, S] MoE experts fetched on demand for a GPU fc1 / fc2, once routed


def simulate_layer(cpu_bits: tuple[int, ...], n: int, d: ChunkDurations,
                   start_s: Optional[np.ndarray] = None) -> np.ndarray:
    """Makespan [S] of n identical chunks under the scheduler above (cpu_bits[i] = 1: sublayer i on the CPU).

    ``start_s`` delays everything (the weight copy when it cannot run beside compute)."""
    steps = d.cpu_s.shape[1]
    start = np.zeros(steps) if start_s is None else np.asarray(start_s, dtype=float) + np.zeros(steps)
    return _Simulator(n, d).run(cpu_bits, start)


def simulate_all(n: int, d: ChunkDurations, starts: np.ndarray, policies: np.ndarray) -> np.ndarray:
    """simulate_layer for each row of ``policies`` [P, 6] (CPU bits) with its start [P, S]: [P, S]."""
    sim = _Simulator(n, d)
    return np.stack([sim.run(tuple(int(x) for x in bits), starts[k]) for k, bits in enumerate(policies)])


class _Simulator:
    """The durations in the form the replay reads (floats for one step, arrays for several)."""

    def __init__(self, n: int, d: ChunkDurations) -> None:
        steps = d.cpu_s.shape[1]
        if n > 1 and steps != 1:
            raise ValueError("a pipelined layer (n > 1) is simulated one step at a time")
        self.n, self.steps = n, steps
        if steps == 1:        # one step: plain floats (the same arithmetic, an order of magnitude faster)
            self.mx = max
            self.cpu_s, self.gpu_s = d.cpu_s[:, 0].tolist(), d.gpu_s[:, 0].tolist()
            self.cross_h2d, self.cross_d2h = d.cross_h2d_s[:, 0].tolist(), d.cross_d2h_s[:, 0].tolist()
            self.experts = d.expert_h2d_s[:, 0].tolist()
            self.k_cached, self.v_cached = float(d.k_cached_s[0]), float(d.v_cached_s[0])
            self.v_fetch, self.kv_write = float(d.v_new_s[0] + d.v_cached_s[0]), float(d.kv_write_s[0])
        else:
            self.mx = np.maximum
            self.cpu_s, self.gpu_s = d.cpu_s, d.gpu_s
            self.cross_h2d, self.cross_d2h, self.experts = d.cross_h2d_s, d.cross_d2h_s, d.expert_h2d_s
            self.k_cached, self.v_cached, self.kv_write = d.k_cached_s, d.v_cached_s, d.kv_write_s
            self.v_fetch = d.v_new_s + d.v_cached_s
        self.has_experts = [bool(np.any(d.expert_h2d_s[i] > 0)) for i in range(NUM_SUBLAYERS)]

    def run(self, cpu_bits: tuple[int, ...], start: np.ndarray) -> np.ndarray:
        n, steps, mx = self.n, self.steps, self.mx
        cpu_s, gpu_s, cross_h2d, cross_d2h = self.cpu_s, self.gpu_s, self.cross_h2d, self.cross_d2h
        experts = self.experts
        k_cached, v_cached, v_fetch, kv_write = self.k_cached, self.v_cached, self.v_fetch, self.kv_write
        has_experts = self.has_experts
        on_cpu = [bool(b) for b in cpu_bits]
        zero = float(start[0]) if steps == 1 else start
        now, gpu_free, h2d_free, d2h_free = zero, zero, zero, zero

        def h2d(ready, dur):
            nonlocal h2d_free
            h2d_free = mx(h2d_free, ready) + dur
            return h2d_free

        def d2h(ready, dur):
            nonlocal d2h_free
            d2h_free = mx(d2h_free, ready) + dur
            return d2h_free

        qkv_gpu = not on_cpu[_QKV]
        fetch_k: list = [None] * n
        fetch_v: list = [None] * n
        if qkv_gpu:                                        # 1. early fetches of the cached K and V
            for c in range(n):
                if not on_cpu[_SCORE]:
                    fetch_k[c] = h2d(zero, k_cached)
                if not on_cpu[_CTX]:
                    fetch_v[c] = h2d(zero, v_cached)

        nxt = [0] * n
        value_end = [zero] * n                  # when the chunk's latest sublayer finished (on its device)
        to_cpu = [zero] * n                     # when the copy of a GPU output a CPU sublayer reads has landed
        written: list = [None] * n              # end of the K/V write-back of a GPU qkv
        chunk_end = [zero] * n

        def finish(c: int, i: int, end) -> None:
            """After sublayer i of chunk c: the copy to the next sublayer's device (fc2: the next layer's qkv)."""
            value_end[c] = end
            following = (i + 1) % NUM_SUBLAYERS
            if on_cpu[i] and not on_cpu[following]:
                if i == _FC2:
                    end = h2d(end, cross_h2d[i])        # the next layer's GPU qkv reads it
                # otherwise the GPU sublayer that reads it issues the copy (below), when it is issued
            elif not on_cpu[i] and on_cpu[following]:
                end = d2h(end, cross_d2h[i])            # eager copy right behind the producer
                to_cpu[c] = end
            if i == _FC2:
                chunk_end[c] = end

        def issue_gpu(c: int, i: int) -> None:
            nonlocal gpu_free
            ready = value_end[c]
            if i > 0 and on_cpu[i - 1]:
                ready = h2d(mx(value_end[c], now), cross_h2d[i - 1])
            if i == _SCORE:
                ready = mx(ready, fetch_k[c] if qkv_gpu else h2d(now, k_cached))
            if i == _CTX:
                ready = mx(ready, fetch_v[c] if qkv_gpu else h2d(now, v_fetch))
            if has_experts[i]:
                ready = h2d(ready, experts[i])            # the routed experts, once its input (the routing) is ready
            gpu_free = mx(gpu_free, ready) + gpu_s[i]
            end = gpu_free
            if i == _QKV:
                written[c] = d2h(end, kv_write)
            finish(c, i, end)

        def cpu_ready(c: int):
            i = nxt[c]
            ready = value_end[c]
            if i > 0 and not on_cpu[i - 1]:
                ready = to_cpu[c]
            if i in (_SCORE, _CTX) and written[c] is not None:
                ready = mx(ready, written[c])
            return ready

        while True:
            for c in range(n):                             # 2. issue every GPU sublayer that can be issued
                while nxt[c] < NUM_SUBLAYERS and not on_cpu[nxt[c]]:
                    issue_gpu(c, nxt[c])
                    nxt[c] += 1
            waiting = [c for c in range(n) if nxt[c] < NUM_SUBLAYERS]
            if not waiting:
                break
            ready = {c: cpu_ready(c) for c in waiting}
            if n == 1:
                pick = waiting[0]
            else:                                          # one step: floats
                now_ready = [c for c in waiting if ready[c] <= now]
                pick = now_ready[0] if now_ready else min(waiting, key=lambda c: (ready[c], c))
            i = nxt[pick]
            now = mx(now, ready[pick]) + cpu_s[i]
            finish(pick, i, now)
            nxt[pick] += 1
        out = chunk_end[0]
        for c in range(1, n):
            out = mx(out, chunk_end[c])
        return np.asarray(out, dtype=float).reshape(steps)
