"""The prefill pass as a two-buffer weight pipeline (lia_model.costterms.prefill_pass_s): its closed form against a
hand-derived timeline, against the pipeline's event recurrence for many inputs, and in predict() on the toy."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lia_model.costmodel import predict
from lia_model.costterms import CostMode, prefill_pass_s
from lia_model.plan import ALL_GPU, Plan
from lia_model.workload import Workload
from tests.toys import toy_model, toy_system


def _pipeline_by_events(resident_s: float, streamed: int, compute_s: float, copy_s: float) -> float:
    """The runtime's schedule (runtime/weight_stream.py) event by event: the copies of the first two streamed
    layers are queued at the pass start, one copy engine runs them in order, the copy of layer k (k >= 2)
    waits for layer k - 2 to free its buffer, and layer k computes after layer k - 1 (the resident layers
    before the first) and after its own copy."""
    if streamed == 0:
        return resident_s
    copy_end: list[float] = []
    compute_end: list[float] = []
    for k in range(streamed):
        start = copy_end[-1] if copy_end else 0.0
        if k >= 2:
            start = max(start, compute_end[k - 2])
        copy_end.append(start + copy_s)
        previous = compute_end[-1] if compute_end else resident_s
        compute_end.append(max(previous, copy_end[k]) + compute_s)
    return compute_end[-1]


def test_a_hand_derived_timeline():
    """R T_res = 10, K = 3, c = 2, W = 5: copies 0-5 and 5-10; layer 0 computes 10-12 (after the resident
    layers); copy 2 waits for buffer 0 (free at 12) and runs 12-17; layer 1 computes 12-14, layer 2 17-19.
    The steady-state sum R T_res + K max(c, W) says 25."""
    assert prefill_pass_s(10.0, 3, 2.0, 5.0, 0.0) == pytest.approx(19.0)
    assert _pipeline_by_events(10.0, 3, 2.0, 5.0) == pytest.approx(19.0)
    # no resident layers: the first copy delays every compute (W + K c = 11 < K W + c = 17)
    assert prefill_pass_s(0.0, 3, 2.0, 5.0, 0.0) == pytest.approx(17.0)
    # compute-bound: the first copy, then every layer's compute: 5 + 3 x 8 = 29 (the sum says 24)
    assert prefill_pass_s(0.0, 3, 8.0, 5.0, 0.0) == pytest.approx(29.0)
    # host memory bounds the pass at K X
    assert prefill_pass_s(0.0, 3, 2.0, 5.0, 7.0) == pytest.approx(21.0)
    # nothing streamed: the resident layers alone
    assert prefill_pass_s(4.0, 0, 2.0, 5.0, 7.0) == pytest.approx(4.0)


@settings(max_examples=400, deadline=None)
@given(
    resident=st.floats(0.0, 50.0),
    streamed=st.integers(0, 12),
    compute=st.floats(0.0, 10.0),
    copy=st.floats(0.0, 10.0),
)
def test_the_closed_form_is_the_longest_path_of_the_event_schedule(resident, streamed, compute, copy):
    """Every path of the pipeline's event graph is one of the five forms (module docstring of costterms): the
    closed form equals the event-by-event schedule for any times and any number of streamed layers."""
    closed = float(prefill_pass_s(resident, streamed, compute, copy, 0.0))
    assert closed == pytest.approx(_pipeline_by_events(resident, streamed, compute, copy), rel=1e-9, abs=1e-9)


def test_the_closed_form_broadcasts_over_resident_counts_and_policies():
    resident = np.arange(4.0)[:, None]
    streamed = 3 - resident
    compute, copy = np.array([[1.0, 4.0]]), np.array([[3.0, 2.0]])
    table = prefill_pass_s(resident * 2.0, streamed, compute, copy, np.zeros((1, 2)))
    for r in range(4):
        for p in range(2):
            expected = _pipeline_by_events(2.0 * r, 3 - r, compute[0, p], copy[0, p])
            assert table[r, p] == pytest.approx(expected)


def test_predict_prices_the_toy_prefill_as_the_pipeline():
    """The toy of test_costmodel's hand-computed serial sum, all-GPU, 2 streamed layers, overlap mode. Each
    layer: weights 25,169,920 B over the 10 GB/s link, W = 2.516992 ms; GPU compute c = 25.334784 us (the
    K/V write-back is on the D2H queue, off the chain); DDR 25,169,920 B at 100 GB/s = 0.2516992 ms. The
    pass is K W + c = 5.059318784 ms (the last layer computes after the last copy), plus the LM head
    2.048 us: TTFT 5.061366784 ms. The steady-state sum K max(c, W) + head gave 5.036032 ms."""
    plan = Plan(prefill_policy=ALL_GPU, decode_policy=ALL_GPU)
    pred = predict(toy_system(), toy_model(), Workload(batch=1, input_len=4, output_len=2), plan, CostMode.OVERLAP)
    assert pred.ttft_s == pytest.approx(5.061366784e-3, rel=1e-12)


def test_a_system_with_cxl_keeps_the_steady_state_sum():
    """With CXL the pass-start fill is not modelled (a split stream is not one pipeline): TTFT = K max(...) + head."""
    plan = Plan(prefill_policy=ALL_GPU, decode_policy=ALL_GPU)
    pred = predict(
        toy_system(cxl=True), toy_model(), Workload(batch=1, input_len=4, output_len=2), plan, CostMode.OVERLAP
    )
    assert pred.ttft_s == pytest.approx(2 * 2.516992e-3 + 2.048e-6, rel=1e-12)
