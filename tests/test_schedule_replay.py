"""The one-step schedule replay (lia_model.schedule._replay_one_step, the optimiser's hot path) against the
general replay ``_replay`` it was written from (the arrays-over-steps path, kept as the reference): the same
float, to the last bit, on random layers with every option of the scheduler switched on or off."""

from __future__ import annotations

import numpy as np

from lia_model.costterms import ALL_POLICY_FEATURES
from lia_model.schedule import (
    ChunkDurations,
    _Durations,
    _replay,
    _replay_one_step,
    _replay_rows,
    _table_over_steps,
    simulate_all,
)
from lia_model.sublayers import NUM_SUBLAYERS

POLICIES = [[bool(b) for b in ALL_POLICY_FEATURES[p, :NUM_SUBLAYERS]] for p in range(64)]


def _random_table(rng: np.random.Generator) -> _Durations:
    """Durations over four orders of magnitude, about one in five zero; or (one layer in three) small whole
    numbers, so that ready times tie exactly and the tie rules (the oldest chunk first) decide."""
    grid = rng.random() < 1 / 3

    def some(size: int) -> np.ndarray:
        if grid:
            return rng.integers(0, 4, size).astype(float)
        return rng.random(size) * rng.choice([1e-3, 1.0, 10.0]) * (rng.random(size) < 0.8)

    def one() -> float:
        return float(some(1)[0])

    experts = (some(NUM_SUBLAYERS) * (rng.random() < 0.5)).tolist()
    v_cached = one()
    return _Durations(
        max,
        some(NUM_SUBLAYERS).tolist(),
        some(NUM_SUBLAYERS).tolist(),
        some(NUM_SUBLAYERS).tolist(),
        some(NUM_SUBLAYERS).tolist(),
        experts,
        one(),  # cached K (zero: nothing cached yet)
        v_cached,
        v_cached + one(),
        one() * float(rng.choice([0.0, 1.0])),
        tuple(x > 0 for x in experts),
        bool(rng.random() < 0.5),  # fused attention
        one() * 0.5,
        one() * 0.5,
        one() * float(rng.choice([0.0, 0.5])),  # feeder wait
        tuple(bool(x) for x in rng.random(NUM_SUBLAYERS) < 0.7),  # which CPU durations the DMA slows
        one() * float(rng.choice([0.0, 0.5])),  # wake-up
        one() * float(rng.choice([0.0, 0.5])),  # idle before a wake-up
    )


def test_the_one_step_replay_equals_the_general_replay_bit_for_bit():
    """200 random layers x 64 policy vectors (12,800 schedules), n = 1 .. 64 chunks, with and without the
    CPU slowdown, the weight stream (until), a start offset, fused attention, on-demand experts, feeder waits
    and wake-ups: ``_replay_one_step`` returns exactly ``_replay``'s float."""
    rng = np.random.default_rng(13)
    for _ in range(200):
        n = int(rng.choice([1, 2, 2, 3, 3, 4, 5, 8, 13, 16, 32, 64]))
        table = _random_table(rng)
        # whole or random start, CPU scale and stream end (whole ones keep the ties of whole durations)
        start = float(rng.choice([0.0, 1.0, rng.random()]))
        scale = float(rng.choice([1.0, 1.0, 2.0, 1.0 + rng.random()]))
        until = start + float(rng.choice([0.0, 1.0, 4.0, 10.0 * rng.random(), 100.0]))
        for bits in POLICIES:
            want = _replay(bits, n, table, start, scale, until)
            got = _replay_one_step(bits, n, table, start, scale, until)
            assert got == want, (n, bits, got, want)


def test_simulate_all_one_step_equals_the_general_replay():
    """Through the public entry point (memo included): one-step ChunkDurations at n = 16 and 64, each row
    with its own start, CPU scale and stream, against ``_replay`` on the same table."""
    rng = np.random.default_rng(14)
    for n in (16, 64):
        t = _random_table(rng)
        col = lambda v: np.asarray(v, dtype=float).reshape(NUM_SUBLAYERS, 1)  # noqa: E731
        d = ChunkDurations(
            col(t.cpu),
            col(t.gpu),
            col(t.cross_h2d),
            col(t.cross_d2h),
            np.array([t.k_cached]),
            np.array([t.v_cached]),
            np.array([t.v_fetch - t.v_cached]),
            np.array([t.kv_write]),
            col(t.experts),
            np.array([t.cpu_fused_delta]),
            np.array([t.gpu_fused_delta]),
            t.fused,
            copy_wait_s=t.copy_wait,
            cpu_slowed=t.cpu_slowed,
            cpu_wake_s=t.cpu_wake,
            cpu_idle_before_wake_s=t.cpu_idle,
        )
        starts, scales, streams = rng.random((64, 1)), 1.0 + rng.random((64, 1)), 10 * rng.random((64, 1))
        got = simulate_all(n, d, starts, ALL_POLICY_FEATURES[:, :NUM_SUBLAYERS], scales, streams)[:, 0]
        table = _Durations(**{**t.__dict__, "v_fetch": float(d.v_new_s[0] + d.v_cached_s[0])})
        want = [
            _replay(bits, n, table, float(s[0]), float(k[0]), float(s[0] + w[0]))
            for bits, s, k, w in zip(POLICIES, starts, scales, streams)
        ]
        assert got.tolist() == want


def _over_steps(t: _Durations, rng: np.random.Generator, steps: int) -> _Durations:
    """``t`` with each duration an array over ``steps`` (each step's value scaled apart, or repeated)."""

    def arr(v) -> np.ndarray:
        return np.asarray(v, dtype=float) * (1.0 + (rng.random(steps) if rng.random() < 0.5 else 0.0))

    lists = {f: [arr(v) for v in getattr(t, f)] for f in ("cpu", "gpu", "cross_h2d", "cross_d2h", "experts")}
    arrays = {f: arr(getattr(t, f)) for f in ("k_cached", "v_cached", "v_fetch", "kv_write")}
    deltas = {f: arr(getattr(t, f)) for f in ("cpu_fused_delta", "gpu_fused_delta")}
    return _Durations(**{**t.__dict__, **lists, **arrays, **deltas, "mx": np.maximum})


def test_the_replay_of_many_vectors_over_steps_equals_the_general_replay_bit_for_bit():
    """Decode (n = 1, arrays over steps): ``_replay_rows`` of the 64 policy vectors at once against ``_replay`` of
    each, on 150 random layers with every option of the scheduler (fused attention, on-demand experts, feeder
    waits, wake-ups, slowed CPU work), rows with and without a CPU scale, their own starts and stream ends."""
    rng = np.random.default_rng(15)
    bits = np.array(POLICIES)
    for _ in range(150):
        steps = int(rng.choice([2, 3, 7]))
        table = _over_steps(_random_table(rng), rng, steps)
        whole = rng.random() < 0.5  # whole starts keep the ties of whole durations
        start = np.floor(4 * rng.random((64, 1))).repeat(steps, axis=1) if whole else rng.random((64, steps))
        scaled = rng.random(64) < 0.5
        scale = np.where(scaled[:, None], 1.0 + rng.random((64, steps)), 1.0)
        until = start + float(rng.choice([0.0, 1.0, 4.0, 100.0])) * rng.random((64, steps))
        got = _replay_rows(bits, table, start, scale, until)
        for r, vector in enumerate(POLICIES):
            want = _replay(vector, 1, table, start[r], scale[r] if scaled[r] else 1.0, until[r])
            assert np.array_equal(got[r], want), (vector, got[r], want)


def test_simulate_all_over_steps_returns_the_replay():
    """The arrays-over-steps path (decode, n = 1) through the public entry point: each row ``_replay``'s array."""
    rng = np.random.default_rng(16)
    steps = 7
    rows = lambda: rng.random((NUM_SUBLAYERS, steps)) * (rng.random((NUM_SUBLAYERS, steps)) < 0.8)  # noqa: E731
    d = ChunkDurations(*(rows() for _ in range(4)), *(rng.random(steps) for _ in range(4)), rows())
    starts, scales, streams = rng.random((64, steps)), 1.0 + rng.random((64, steps)), rng.random((64, steps))
    got = simulate_all(1, d, starts, ALL_POLICY_FEATURES[:, :NUM_SUBLAYERS], scales, streams)
    zero = np.zeros(steps)
    table = _table_over_steps(d, tuple(bool(x) for x in np.any(d.expert_h2d_s > 0, axis=1)), zero, zero)
    want = [_replay(bits, 1, table, s, k, s + w) for bits, s, k, w in zip(POLICIES, starts, scales, streams)]
    assert np.array_equal(got, np.stack(want))
    few = [3, 17, 40, 63]  # below _ROWS_AT_ONCE: one replay each
    got = simulate_all(1, d, starts[few], ALL_POLICY_FEATURES[few, :NUM_SUBLAYERS], scales[few], streams[few])
    assert np.array_equal(got, np.stack(want)[few])
