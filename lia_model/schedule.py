"""The schedule of one streamed layer's chunks on CPU, GPU and the two copy directions, simulated exactly.

The cost model's overlap mode times a streamed layer by replaying the runtime's scheduler (the layer's
early copies in runtime/executor.py ``Executor._layer``, then runtime/scheduler.py ``Scheduler.run_layer``)
on the durations of the layer's operations. One chunk (a decode step, or one of the n prefill minibatches)
is the six sublayers in order, each on the device its policy bit names, with the copies between them. The
resources are four in-order queues: the GPU compute stream, the host-to-device copy stream, the
device-to-host copy stream, and the host thread that runs CPU sublayers synchronously.

The scheduler, per layer:

1. Early copies: for every chunk whose qkv runs on the GPU, the cached K (for a GPU attn_score) and then
   the cached V (for a GPU attn_context) are fetched from the host cache, in chunk order.
2. Loop: issue, chunk by chunk, every GPU sublayer whose predecessor has been issued or has run
   (asynchronous; each with its input copy on the H2D stream, and after a GPU qkv the write-back of the
   new K and V on the D2H stream); the output of a GPU sublayer that a CPU sublayer reads next is copied
   to the host on the D2H stream right behind it. Then run one CPU sublayer: the oldest chunk's whose
   inputs are ready now, or, when none is, the one whose inputs are ready first (ties: the oldest).
   A CPU attention sublayer's inputs include the write-back of the K and V it reads. With fused attention
   (kernel tables) attn_score and attn_context on one device are one kernel. MoE experts fetched
   on demand are copied once the GPU fc1 / fc2's input is ready (the routing is known), before it runs.
3. The layer ends when every chunk's fc2 output has reached the device of the next layer's qkv.

Start times are the max of the queue's previous end and the operation's inputs; nothing else waits, except:

- The weight feeder (runtime with kernel tables only; lia_model/weight_feeder.py): while the next layer's
  weights stream, from the layer's start for ``stream_s`` seconds, a host-to-device copy that finds no other
  critical copy ahead of it first waits ``copy_wait_s`` for the feeder's queued pieces (a zero-length copy is
  not issued and waits for nothing; the yields that stretch the stream beyond ``stream_s`` are not modelled).
  ``ready >= h2d_free`` (the copy queue idle)  and  ``ready < start + stream_s``  =>  begin = ready + copy_wait_s
- CPU work beside the weight DMA runs ``cpu_scale`` times slower on average (each memory-bound CPU duration is
  scaled, ``ChunkDurations.cpu_slowed``; the cost model derives the scale from the calibrated slowdown,
  lia_model.costterms).
- A CPU sublayer that starts after the CPU waited pays ``cpu_wake_s`` first (runtime with kernel tables only:
  the OpenMP workers parked and the cores idled while the host thread waited for a copy; calibrated,
  ``KernelTables.cpu_wake_us``). The CPU waited when its inputs were ready later than it was free, by more
  than ``cpu_idle_before_wake_s``; at the layer's start, when its first CPU sublayer follows a GPU fc2 (the
  previous layer's tail ran on the GPU while the CPU idled).
  ``first - now > idle_s``  or  (first CPU call of the layer and fc2 on the GPU)  =>  end = max(now, first) + wake + cpu
The write-back of new K/V and the fetches count toward their copy queue's busy time, and delay what queues
behind them, but a chunk only waits for them where it reads them (the write-back is off the chain unless
attention runs on the CPU). The weight prefetch is not part of this schedule: the cost model bounds the
layer by the H2D link's whole busy time (weights and activations) separately.

With n = 1 (decode) there is no choice, and the durations may be arrays over decode steps. With n > 1
the choice of CPU sublayer depends on the times, so the durations must be one step (prefill). ``_replay``
handles both; one step runs ``_replay_one_step``, the same replay transcribed for plain floats (the optimiser's
hot path), which returns the same float, and steps run ``_replay_rows``, the same replay of every policy vector
at once as arrays [vectors, steps], which returns the same arrays (tests/test_schedule_replay.py).
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

    cpu_s: np.ndarray  # [6, S]
    gpu_s: np.ndarray  # [6, S]
    cross_h2d_s: np.ndarray  # [6, S]
    cross_d2h_s: np.ndarray  # [6, S]
    k_cached_s: np.ndarray  # [S] cached K to a GPU attn_score
    v_cached_s: np.ndarray  # [S] cached V to a GPU attn_context
    v_new_s: np.ndarray  # [S] new V made by a CPU qkv, to a GPU attn_context
    kv_write_s: np.ndarray  # [S] new K and V from a GPU qkv, written back to the host cache
    expert_h2d_s: np.ndarray  # [6, S] MoE experts fetched on demand for a GPU fc1 / fc2, once routed
    cpu_fused_delta_s: Optional[np.ndarray] = None  # [S] fused attention (kernel tables): with attn_score and
    gpu_fused_delta_s: Optional[np.ndarray] = None  # attn_context on one device, one kernel of score + context
    fused_attention: bool = False  # + delta time, which no other chunk's work interrupts
    copy_wait_s: float = 0.0  # a critical H2D copy's wait behind the weight feeder's pieces (docstring above)
    cpu_slowed: tuple[bool, ...] = (True,) * NUM_SUBLAYERS  # per sublayer: whether ``cpu_scale`` applies to its
    # CPU duration (a memory-bound CPU kernel shares DDR with the weight DMA; a compute-bound one does not slow)
    cpu_wake_s: float = 0.0  # a CPU call after the CPU waited pays this first (docstring above)
    cpu_idle_before_wake_s: float = 0.0  # ... when it waited longer than this


def simulate_layer(
    cpu_bits: tuple[int, ...], n: int, d: ChunkDurations, start_s: Optional[np.ndarray] = None
) -> np.ndarray:
    """Makespan [S] of n identical chunks under the scheduler above (cpu_bits[i] = 1: sublayer i on the CPU).

    ``start_s`` delays everything (the weight copy when it cannot run beside compute)."""
    steps = d.cpu_s.shape[1]
    start = np.zeros((1, steps)) if start_s is None else np.asarray(start_s, dtype=float).reshape(1, steps)
    return simulate_all(n, d, start, np.asarray([cpu_bits]))[0]


def simulate_all(
    n: int,
    d: ChunkDurations,
    starts: np.ndarray,
    policies: np.ndarray,
    cpu_scale: Optional[np.ndarray] = None,
    stream_s: Optional[np.ndarray] = None,
) -> np.ndarray:
    """The makespan [P, S] of each policy vector (rows of ``policies`` [P, 6], CPU bits), each starting at its
    row of ``starts`` [P, S]. ``cpu_scale`` [P, S] (default 1) scales the CPU durations of each vector;
    ``stream_s`` [P, S] (default 0) is how long the next layer's weights stream from the layer's start."""
    steps = d.cpu_s.shape[1]
    shape = (len(starts), steps)
    cpu_scale = np.ones(shape) if cpu_scale is None else np.broadcast_to(np.asarray(cpu_scale, dtype=float), shape)
    stream_s = np.zeros(shape) if stream_s is None else np.broadcast_to(np.asarray(stream_s, dtype=float), shape)
    if n > 1 and steps != 1:
        raise ValueError("a pipelined layer (n > 1) is simulated one step at a time")
    has_experts = tuple(bool(x) for x in np.any(d.expert_h2d_s > 0, axis=1))
    zero = np.zeros(steps)
    cpu_delta = zero if d.cpu_fused_delta_s is None else np.asarray(d.cpu_fused_delta_s, dtype=float)
    gpu_delta = zero if d.gpu_fused_delta_s is None else np.asarray(d.gpu_fused_delta_s, dtype=float)
    if steps == 1:  # one step: plain floats (the same arithmetic, much faster than arrays of one)
        table = _Durations(
            max,
            d.cpu_s[:, 0].tolist(),
            d.gpu_s[:, 0].tolist(),
            d.cross_h2d_s[:, 0].tolist(),
            d.cross_d2h_s[:, 0].tolist(),
            d.expert_h2d_s[:, 0].tolist(),
            float(d.k_cached_s[0]),
            float(d.v_cached_s[0]),
            float(d.v_new_s[0] + d.v_cached_s[0]),
            float(d.kv_write_s[0]),
            has_experts,
            d.fused_attention,
            float(cpu_delta[0]),
            float(gpu_delta[0]),
            float(d.copy_wait_s),
            tuple(d.cpu_slowed),
            float(d.cpu_wake_s),
            float(d.cpu_idle_before_wake_s),
        )
        key = (
            n,
            d.fused_attention,
            tuple(d.cpu_s[:, 0]),
            tuple(d.gpu_s[:, 0]),
            tuple(d.cross_h2d_s[:, 0]),
            tuple(d.cross_d2h_s[:, 0]),
            tuple(d.expert_h2d_s[:, 0]),
            table.k_cached,
            table.v_cached,
            table.v_fetch,
            table.kv_write,
            table.cpu_fused_delta,
            table.gpu_fused_delta,
            table.copy_wait,
            table.cpu_slowed,
            table.cpu_wake,
            table.cpu_idle,
        )
        return np.array(
            [
                [_replay_memo(tuple(bits), n, table, float(start[0]), key, float(scale[0]), float(until[0]))]
                for bits, start, scale, until in zip(
                    np.asarray(policies, dtype=bool).tolist(), starts, cpu_scale, np.asarray(starts) + stream_s
                )
            ]
        )
    table = _table_over_steps(d, has_experts, cpu_delta, gpu_delta)
    if len(starts) < _ROWS_AT_ONCE:  # a few vectors: one replay each (arrays over steps) is quicker
        # (a vector whose CPU work is not slowed replays with the scale 1.0, what _compute_durations then skips)
        scaled = np.any(cpu_scale != 1.0, axis=1).tolist()
        return np.stack(
            [
                _replay(bits, n, table, np.asarray(start, dtype=float), scale if slowed else 1.0, start + stream)
                for bits, start, scale, stream, slowed in zip(
                    np.asarray(policies, dtype=bool).tolist(),
                    np.asarray(starts, dtype=float),
                    cpu_scale,
                    stream_s,
                    scaled,
                )
            ]
        )
    # one chunk (n = 1): every vector's replay at once, row by row the same floats (``_replay_rows``)
    return _replay_rows(
        np.asarray(policies, dtype=bool),
        table,
        np.asarray(starts, dtype=float),
        np.asarray(cpu_scale, dtype=float),
        np.asarray(starts, dtype=float) + stream_s,
    )


# From this many policy vectors on, simulate_all replays one chunk over steps for all of them at once
# (``_replay_rows``, arrays [vectors, steps]); below, one vector at a time (``_replay``: the same floats).
# Measured on the 2-core dev machine: at 16 vectors x 127 steps the two take the same time, at 4 x 31 one at a
# time is 2.4 times quicker, at 64 x 31 all at once 3.5 times.
_ROWS_AT_ONCE = 12

# One-step replays, memoised: the optimiser prices the same chunk durations under several weight tiers, KV
# tiers and ISAs that leave them unchanged (OPT-66B at B = 760 on spr-a100-cxl: 3000 replays, 1280 distinct).
# The replay is a pure function of its arguments, so the memo changes no number.
_MEMO: dict[tuple, float] = {}
_MEMO_LIMIT = 200_000


def _replay_memo(
    bits: tuple[bool, ...], n: int, table: "_Durations", start: float, key: tuple, cpu_scale: float, until: float
) -> float:
    return _bounded_memo(
        _MEMO,
        _MEMO_LIMIT,
        (bits, start, key, cpu_scale, until),
        lambda: _replay_one_step(list(bits), n, table, start, cpu_scale, until),
    )


def _bounded_memo(memo: dict, limit: int, full: tuple, compute):
    """``memo[full]``, computed by ``compute()`` on a miss; the memo is emptied when it holds ``limit`` entries."""
    hit = memo.get(full)
    if hit is None:
        if len(memo) >= limit:
            memo.clear()
        hit = memo[full] = compute()
    return hit


@dataclass(frozen=True)
class _Durations:
    """ChunkDurations as the replay reads them: per-sublayer lists of floats (one step) or arrays (steps)."""

    mx: object
    cpu: list
    gpu: list
    cross_h2d: list
    cross_d2h: list
    experts: list
    k_cached: object
    v_cached: object
    v_fetch: object  # new + cached V, fetched for a GPU attn_context after a CPU qkv
    kv_write: object
    has_experts: tuple[bool, ...] = ()
    fused: bool = False
    cpu_fused_delta: object = 0.0
    gpu_fused_delta: object = 0.0
    copy_wait: float = 0.0
    cpu_slowed: tuple[bool, ...] = (True,) * NUM_SUBLAYERS
    cpu_wake: float = 0.0
    cpu_idle: float = 0.0


def _table_over_steps(
    d: ChunkDurations, has_experts: tuple[bool, ...], cpu_delta: np.ndarray, gpu_delta: np.ndarray
) -> _Durations:
    """``d`` as ``_replay`` and ``_replay_rows`` read it over its steps: per-sublayer lists of arrays [S]
    (``simulate_all``'s fused deltas and which sublayers fetch experts)."""
    return _Durations(
        np.maximum,
        list(d.cpu_s),
        list(d.gpu_s),
        list(d.cross_h2d_s),
        list(d.cross_d2h_s),
        list(d.expert_h2d_s),
        d.k_cached_s,
        d.v_cached_s,
        d.v_new_s + d.v_cached_s,
        d.kv_write_s,
        has_experts,
        d.fused_attention,
        cpu_delta,
        gpu_delta,
        float(d.copy_wait_s),
        tuple(d.cpu_slowed),
        float(d.cpu_wake_s),
        float(d.cpu_idle_before_wake_s),
    )


def _compute_durations(on_cpu: list[bool], t: _Durations, cpu_scale) -> tuple[list, list, bool]:
    """Each sublayer's CPU and GPU time under this policy vector, and whether its attention runs fused:
    the CPU times the weight DMA slows scaled by ``cpu_scale``; with fused attention (score and context on one
    device) the fused kernel's extra time rides on attn_context."""
    cpu_s, gpu_s = t.cpu, t.gpu
    cpu_fused_delta = t.cpu_fused_delta
    if (cpu_scale != 1.0) if isinstance(cpu_scale, float) else np.any(cpu_scale != 1.0):
        slowed = t.cpu_slowed
        cpu_s = [c * cpu_scale if slowed[i] else c for i, c in enumerate(cpu_s)]
        if slowed[_CTX]:
            cpu_fused_delta = cpu_fused_delta * cpu_scale
    fused = t.fused and on_cpu[_SCORE] == on_cpu[_CTX]
    if fused:  # one kernel: its extra time rides on attn_context
        if on_cpu[_CTX]:
            cpu_s = list(cpu_s)
            cpu_s[_CTX] = cpu_s[_CTX] + cpu_fused_delta
        else:
            gpu_s = list(gpu_s)
            gpu_s[_CTX] = gpu_s[_CTX] + t.gpu_fused_delta
    return cpu_s, gpu_s, fused


def _replay(on_cpu: list[bool], n: int, t: _Durations, start, cpu_scale=1.0, until=None):
    """One policy vector's schedule (see the module docstring); times are floats or arrays over steps.
    ``cpu_scale`` scales the CPU durations; weights stream until ``until`` (default: not at all)."""
    mx = t.mx
    cross_h2d, cross_d2h, experts = t.cross_h2d, t.cross_d2h, t.experts
    cpu_s, gpu_s, fused = _compute_durations(on_cpu, t, cpu_scale)
    wait = t.copy_wait if until is not None else 0.0
    has_experts = t.has_experts
    last = NUM_SUBLAYERS - 1
    now = gpu_free = h2d_free = d2h_free = start

    def h2d_begin(ready, dur):
        """When a critical H2D copy of ``dur`` seconds ready at ``ready`` starts: behind the copy queue, and behind
        the weight feeder's queued pieces if it finds the queue idle while weights stream. A copy ready exactly
        when the previous critical copy ends counts as finding the queue idle (the feeder resumes then); a
        zero-length copy (nothing cached yet) is not issued, so it waits for nothing."""
        begin = mx(h2d_free, ready)
        if wait:
            begin = begin + wait * ((ready >= h2d_free) & (ready < until) & (dur > 0))
        return begin

    qkv_gpu = not on_cpu[_QKV]
    fetch_k, fetch_v = [start] * n, [start] * n
    if qkv_gpu:  # 1. early fetches of the cached K and V, chunk by chunk
        for c in range(n):
            if not on_cpu[_SCORE]:
                h2d_free = fetch_k[c] = h2d_begin(start, t.k_cached) + t.k_cached
            if not on_cpu[_CTX]:
                h2d_free = fetch_v[c] = h2d_begin(start, t.v_cached) + t.v_cached
    nxt = [0] * n
    value_end = [start] * n  # when the chunk's latest sublayer finished (on its device)
    to_cpu = [start] * n  # when the copy of a GPU output that a CPU sublayer reads has landed
    written = [None] * n  # end of the K/V write-back of a GPU qkv
    chunk_end = [start] * n

    def finish(c: int, i: int, end) -> None:
        """After sublayer i of chunk c: the copy to the next sublayer's device (fc2: the next layer's qkv)."""
        nonlocal h2d_free, d2h_free
        value_end[c] = end
        nxt_cpu = on_cpu[i + 1] if i < last else on_cpu[_QKV]
        if on_cpu[i] and not nxt_cpu:
            if i == last:  # the next layer's GPU qkv reads it (inside the layer, the
                h2d_free = end = h2d_begin(end, cross_h2d[i]) + cross_h2d[i]  # GPU consumer copies it when issued)
        elif not on_cpu[i] and nxt_cpu:
            d2h_free = end = mx(d2h_free, end) + cross_d2h[i]  # eager copy right behind the producer
            to_cpu[c] = end
        if i == last:
            chunk_end[c] = end

    def cpu_ready(c: int):
        i = nxt[c]
        ready = to_cpu[c] if i > 0 and not on_cpu[i - 1] else value_end[c]
        if (i == _SCORE or i == _CTX) and written[c] is not None:
            ready = mx(ready, written[c])
        return ready

    cpu_at = [i for i in range(NUM_SUBLAYERS) if on_cpu[i]]
    wake, idle = t.cpu_wake, t.cpu_idle
    # the CPU idled through the previous layer's tail when its fc2 ran on the GPU (the first CPU call wakes it)
    woken = on_cpu[last]
    dirty = list(range(n))
    open_from = 0  # every chunk before it has run all its sublayers
    while True:
        for c in dirty:  # 2. issue every GPU sublayer that can be issued
            while nxt[c] < NUM_SUBLAYERS and not on_cpu[nxt[c]]:
                i = nxt[c]
                ready = value_end[c]
                if i > 0 and on_cpu[i - 1]:
                    h2d_free = ready = h2d_begin(mx(ready, now), cross_h2d[i - 1]) + cross_h2d[i - 1]
                if i == _SCORE:
                    if not qkv_gpu:  # a CPU qkv: fetched when the attention is issued
                        h2d_free = fetch_k[c] = h2d_begin(now, t.k_cached) + t.k_cached
                    ready = mx(ready, fetch_k[c])
                elif i == _CTX:
                    if not qkv_gpu:
                        h2d_free = fetch_v[c] = h2d_begin(now, t.v_fetch) + t.v_fetch
                    ready = mx(ready, fetch_v[c])
                if has_experts[i]:  # the routed experts, once its input (the routing) is ready
                    h2d_free = ready = h2d_begin(ready, experts[i]) + experts[i]
                gpu_free = end = mx(gpu_free, ready) + gpu_s[i]
                if i == _QKV:
                    d2h_free = written[c] = mx(d2h_free, end) + t.kv_write
                finish(c, i, end)
                nxt[c] = i + 1
        if not cpu_at:
            break
        # 3. one CPU sublayer: the oldest chunk ready now, else the first to be ready (ties: the oldest)
        pick, first = -1, None
        while open_from < n and nxt[open_from] == NUM_SUBLAYERS:
            open_from += 1
        for c in range(open_from, n):
            if nxt[c] < NUM_SUBLAYERS:
                r = cpu_ready(c)
                if n == 1 or r <= now:  # (n > 1: one step, floats)
                    pick, first = c, r
                    break
                if first is None or r < first:
                    pick, first = c, r
        if pick < 0:
            break
        # the chunk keeps the CPU for its next CPU sublayers while they are ready and no older chunk is (the
        # pick would choose it again, and nothing else changes in between)
        while True:
            i = nxt[pick]
            if wake:
                waited = (first - now > idle) if woken else True
                woken = True
                now = mx(now, first) + cpu_s[i] + wake * waited
            else:
                now = mx(now, first) + cpu_s[i]
            finish(pick, i, now)
            nxt[pick] = i + 1
            if i + 1 == NUM_SUBLAYERS or not on_cpu[i + 1]:
                break
            first = cpu_ready(pick)
            if fused and i == _SCORE:  # the fused kernel is not interrupted
                continue
            if n > 1 and (
                first > now or any(nxt[c] < NUM_SUBLAYERS and cpu_ready(c) <= now for c in range(open_from, pick))
            ):
                break
        dirty = [pick]
    out = chunk_end[0]
    for c in range(1, n):
        out = mx(out, chunk_end[c])
    return out


def _replay_one_step(on_cpu: list[bool], n: int, t: _Durations, start: float, cpu_scale: float, until: float) -> float:
    """``_replay`` for one step (floats), the optimiser's hot path (prefill with up to 64 chunks). The same
    schedule with the same arithmetic in the same order, so the same float: the helpers are inlined
    (max(a, b) spelled ``b if b > a else a``, which returns the same operand), each chunk's CPU-ready time is
    kept beside it (only the chunk's own sublayers change it) instead of recomputed at every pick, and the
    oldest chunks' earliest ready time is carried from the pick instead of rescanned (they do not change while
    the picked chunk keeps the CPU). tests/test_schedule_replay.py checks it against ``_replay``."""
    cross_h2d, cross_d2h, experts, has_experts = t.cross_h2d, t.cross_d2h, t.experts, t.has_experts
    cpu_s, gpu_s, fused = _compute_durations(on_cpu, t, cpu_scale)
    wait = t.copy_wait if until is not None else 0.0
    k_cached, v_cached, v_fetch, kv_write = t.k_cached, t.v_cached, t.v_fetch, t.kv_write
    last = NUM_SUBLAYERS - 1
    # per sublayer: whether the sublayer after it (fc2: the next layer's qkv) runs on the CPU
    next_cpu = [on_cpu[i + 1] if i < last else on_cpu[_QKV] for i in range(NUM_SUBLAYERS)]
    now = gpu_free = h2d_free = d2h_free = start
    qkv_gpu = not on_cpu[_QKV]
    fetch_k, fetch_v = [start] * n, [start] * n
    if qkv_gpu:  # 1. early fetches of the cached K and V, chunk by chunk
        for c in range(n):
            if not on_cpu[_SCORE]:
                begin = start if start > h2d_free else h2d_free
                if wait and start >= h2d_free and start < until and k_cached > 0:
                    begin = begin + wait
                h2d_free = fetch_k[c] = begin + k_cached
            if not on_cpu[_CTX]:
                begin = start if start > h2d_free else h2d_free
                if wait and start >= h2d_free and start < until and v_cached > 0:
                    begin = begin + wait
                h2d_free = fetch_v[c] = begin + v_cached
    nxt = [0] * n
    value_end = [start] * n
    to_cpu = [start] * n
    written = [None] * n
    chunk_end = [start] * n
    ready_at = [start] * n  # when the chunk's next (CPU) sublayer's inputs are ready
    active = list(range(n))  # the chunks with sublayers left, oldest first
    any_cpu = any(on_cpu)
    wake, idle = t.cpu_wake, t.cpu_idle
    woken = on_cpu[last]
    dirty = list(range(n))
    while True:
        for c in dirty:  # 2. issue every GPU sublayer that can be issued
            i = nxt[c]
            while i < NUM_SUBLAYERS and not on_cpu[i]:
                ready = value_end[c]
                if i > 0 and on_cpu[i - 1]:
                    x = cross_h2d[i - 1]
                    r = now if now > ready else ready
                    begin = r if r > h2d_free else h2d_free
                    if wait and r >= h2d_free and r < until and x > 0:
                        begin = begin + wait
                    h2d_free = ready = begin + x
                if i == _SCORE or i == _CTX:
                    fetch = fetch_k if i == _SCORE else fetch_v
                    if not qkv_gpu:  # a CPU qkv: fetched when the attention is issued
                        x = k_cached if i == _SCORE else v_fetch
                        begin = now if now > h2d_free else h2d_free
                        if wait and now >= h2d_free and now < until and x > 0:
                            begin = begin + wait
                        h2d_free = fetch[c] = begin + x
                    f = fetch[c]
                    ready = f if f > ready else ready
                if has_experts[i]:
                    x = experts[i]
                    begin = ready if ready > h2d_free else h2d_free
                    if wait and ready >= h2d_free and ready < until and x > 0:
                        begin = begin + wait
                    h2d_free = ready = begin + x
                gpu_free = end = (ready if ready > gpu_free else gpu_free) + gpu_s[i]
                if i == _QKV:
                    d2h_free = written[c] = (end if end > d2h_free else d2h_free) + kv_write
                value_end[c] = end
                if next_cpu[i]:  # eager copy right behind the producer
                    d2h_free = end = (end if end > d2h_free else d2h_free) + cross_d2h[i]
                    to_cpu[c] = end
                if i == last:
                    chunk_end[c] = end
                i += 1
            nxt[c] = i
            if i == NUM_SUBLAYERS:
                active.remove(c)
            else:
                ready = to_cpu[c] if i > 0 and not on_cpu[i - 1] else value_end[c]
                w = written[c]
                if (i == _SCORE or i == _CTX) and w is not None:
                    ready = w if w > ready else ready
                ready_at[c] = ready
        if not any_cpu or not active:
            break
        # 3. one CPU sublayer: the oldest chunk ready now, else the first to be ready (ties: the oldest);
        # ``older``: the earliest ready time of the chunks older than the pick (None: there are none)
        pick, first, older = -1, None, None
        for c in active:
            r = ready_at[c]
            if n == 1 or r <= now:
                pick, first, older = c, r, first
                break
            if first is None or r < first:
                pick, first, older = c, r, first
        while True:  # the chunk keeps the CPU (see _replay)
            i = nxt[pick]
            if wake:
                waited = (first - now > idle) if woken else True
                woken = True
                now = (first if first > now else now) + cpu_s[i] + wake * waited
            else:
                now = (first if first > now else now) + cpu_s[i]
            end = value_end[pick] = now
            if i == last:
                if not on_cpu[_QKV]:  # the next layer's GPU qkv reads it
                    x = cross_h2d[last]
                    begin = end if end > h2d_free else h2d_free
                    if wait and end >= h2d_free and end < until and x > 0:
                        begin = begin + wait
                    h2d_free = end = begin + x
                chunk_end[pick] = end
            i += 1
            nxt[pick] = i
            if i == NUM_SUBLAYERS or not on_cpu[i]:
                break
            first = now  # the chunk's previous sublayer ran on the CPU
            w = written[pick]
            if (i == _SCORE or i == _CTX) and w is not None:
                first = w if w > first else first
            ready_at[pick] = first
            if fused and i == _CTX:  # the fused kernel is not interrupted
                continue
            if n > 1 and (first > now or (older is not None and older <= now)):
                break
        dirty = [pick]
    return max(chunk_end)


def _replay_rows(on_cpu: np.ndarray, t: _Durations, start: np.ndarray, cpu_scale: np.ndarray, until: np.ndarray):
    """``_replay`` of one chunk (n = 1, decode) for many policy vectors at once: row r of ``on_cpu`` [P, 6] (CPU
    bits), ``start``, ``cpu_scale`` and ``until`` [P, S] is one vector's replay over the steps, and row r of the
    result [P, S] is ``_replay(on_cpu[r], 1, t, start[r], cpu_scale[r], until[r])``, to the last bit.

    Why the same floats: with one chunk there is no choice to make, so the replay is one pass over the sublayers
    in order, each on the GPU (issued) or on the CPU (run), and what it does at a sublayer depends on the bits
    only. Here each step of that pass is worked out for every row, with each operation of ``_replay`` in its
    order on its operands, and a row takes it only where its bits take that branch (np.where picks operands, it
    does no arithmetic). The CPU scale multiplies a row's slowed CPU times as there (a row not slowed has scale
    1.0, and x * 1.0 == x)."""
    mx = np.maximum
    rows = on_cpu.shape[0]
    cpu_s = [np.asarray(c) * cpu_scale if t.cpu_slowed[i] else np.asarray(c) for i, c in enumerate(t.cpu)]
    gpu_s = list(t.gpu)
    cpu_delta = t.cpu_fused_delta * cpu_scale if t.cpu_slowed[_CTX] else t.cpu_fused_delta
    fused = t.fused & (on_cpu[:, _SCORE] == on_cpu[:, _CTX])  # [P]: one kernel, its extra time on attn_context
    if t.fused:
        cpu_s[_CTX] = np.where((fused & on_cpu[:, _CTX])[:, None], cpu_s[_CTX] + cpu_delta, cpu_s[_CTX])
        gpu_s[_CTX] = np.where((fused & ~on_cpu[:, _CTX])[:, None], gpu_s[_CTX] + t.gpu_fused_delta, gpu_s[_CTX])
    wait = t.copy_wait
    zero = np.zeros_like(start)
    now = gpu_free = h2d_free = d2h_free = start

    def h2d_begin(ready, dur):  # _replay's h2d_begin, reading the h2d_free of the moment
        begin = mx(h2d_free, ready)
        if wait:
            begin = begin + wait * ((ready >= h2d_free) & (ready < until) & (dur > 0))
        return begin

    def take(where: np.ndarray, new, old):
        """``new`` in the rows ``where`` [P] marks, ``old`` elsewhere."""
        return np.where(where[:, None], new, old)

    cpu_qkv = on_cpu[:, _QKV]
    fetch_k = fetch_v = start
    # 1. early fetches of the cached K and V (GPU qkv)
    early_k = ~cpu_qkv & ~on_cpu[:, _SCORE]
    fetch_k = take(early_k, h2d_begin(start, t.k_cached) + t.k_cached, fetch_k)
    h2d_free = take(early_k, fetch_k, h2d_free)
    early_v = ~cpu_qkv & ~on_cpu[:, _CTX]
    fetch_v = take(early_v, h2d_begin(start, t.v_cached) + t.v_cached, fetch_v)
    h2d_free = take(early_v, fetch_v, h2d_free)
    value_end = to_cpu = chunk_end = written = start + zero  # (written: read only where qkv ran on the GPU)
    woken = on_cpu[:, NUM_SUBLAYERS - 1]
    last = NUM_SUBLAYERS - 1
    for i in range(NUM_SUBLAYERS):
        gpu, cpu = ~on_cpu[:, i], on_cpu[:, i]
        prev_cpu = on_cpu[:, i - 1] if i > 0 else np.zeros(rows, dtype=bool)
        # 2. on the GPU: issued
        ready = value_end
        if i > 0:
            x = t.cross_h2d[i - 1]
            crossed = gpu & prev_cpu
            ready = take(crossed, h2d_begin(mx(ready, now), x) + x, ready)
            h2d_free = take(crossed, ready, h2d_free)
        if i == _SCORE or i == _CTX:
            x = t.k_cached if i == _SCORE else t.v_fetch
            late = gpu & cpu_qkv  # a CPU qkv: fetched when the attention is issued
            fetch = fetch_k if i == _SCORE else fetch_v
            fetch = take(late, h2d_begin(now, x) + x, fetch)
            h2d_free = take(late, fetch, h2d_free)
            ready = mx(ready, fetch)
        if t.has_experts[i]:
            x = t.experts[i]
            ready = take(gpu, h2d_begin(ready, x) + x, ready)
            h2d_free = take(gpu, ready, h2d_free)
        gpu_end = mx(gpu_free, ready) + gpu_s[i]
        gpu_free = take(gpu, gpu_end, gpu_free)
        if i == _QKV:
            written = take(gpu, mx(d2h_free, gpu_end) + t.kv_write, written)
            d2h_free = take(gpu, written, d2h_free)
        # 3. on the CPU: run when its inputs are ready (a GPU predecessor's output copied to the host)
        first = take(prev_cpu, value_end, to_cpu) if i > 0 else value_end
        if i == _SCORE or i == _CTX:
            first = take(~cpu_qkv, mx(first, written), first)
        if t.cpu_wake:
            waited = np.where(woken[:, None], first - now > t.cpu_idle, True)
            cpu_end = mx(now, first) + cpu_s[i] + t.cpu_wake * waited
            woken = woken | cpu
        else:
            cpu_end = mx(now, first) + cpu_s[i]
        now = take(cpu, cpu_end, now)
        end = take(cpu, cpu_end, gpu_end)
        # finish: the copy to the next sublayer's device (fc2: the next layer's qkv)
        value_end = end
        next_cpu = on_cpu[:, i + 1] if i < last else on_cpu[:, _QKV]
        if i == last:
            x = t.cross_h2d[i]
            to_gpu = cpu & ~next_cpu
            end = take(to_gpu, h2d_begin(end, x) + x, end)
            h2d_free = take(to_gpu, end, h2d_free)
        to_host = gpu & next_cpu
        copied = mx(d2h_free, end) + t.cross_d2h[i]
        d2h_free = take(to_host, copied, d2h_free)
        to_cpu = take(to_host, copied, to_cpu)
        end = take(to_host, copied, end)
        if i == last:
            chunk_end = end
    return chunk_end
