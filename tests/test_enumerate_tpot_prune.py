"""The enumerator's [rows, pairs] evaluations (the prefill pipeline's branch and the weight split's,
lia_model.optimizer.enumerate.best_in_combo) leave out, under a TPOT bound, the N_res rows where the bound rules out
every decode vector and the pairs of the decode vectors it rules out at every row, and with or without one the rows
whose lower bound exceeds the best latency of the rows of least bound. Checked against the exhaustive evaluation
(every row, every pair): the same point, ties included, and per prefill vector (``per_prefill``, what lazy_optimum
simulates by) the same least latency, or, where it lies in a row left out, a value at least that least latency,
which is above the best point's; on random times and bounds drawn by hypothesis around real tables (with and
without CXL; the decode sums the bound reads apart from the cost's, as in the batch search's relaxation), with the
memory shrunk at random."""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lia_model.costterms import NUM_POLICIES
from lia_model.models import get_model
from lia_model.optimizer.enumerate import best_in_combo, combo_arrays, stage_constants
from lia_model.optimizer.space import build_tables
from lia_model.profiles import load_system
from lia_model.workload import make_workload

CASES = [
    ("spr-a100", "opt-66b", 8, 512, 32),  # no CXL: the prefill pipeline's branch
    ("gnr-h100-cxl", "llama-2-70b", 4, 128, 32),  # CXL: the weight split's branch
    ("spr-a100-cxl", "mixtral-8x7b", 16, 256, 8),
]


@lru_cache(maxsize=None)
def _tables(case: int):
    system, model, batch, input_len, output_len = CASES[case]
    spec = get_model(model)
    tables = build_tables(load_system(system), spec, make_workload(batch, input_len, output_len, spec))
    return tables, stage_constants(tables)


def _jittered(values: dict, rng: np.random.Generator, spread: float) -> dict:
    """Each tier's [64] times scaled per vector by a factor in [1 - spread, 1 + spread], some made equal (ties)."""
    out = {}
    for tier, v in values.items():
        scaled = v * rng.uniform(1 - spread, 1 + spread, NUM_POLICIES)
        same = rng.random(NUM_POLICIES) < 0.2
        scaled[same] = scaled[np.flatnonzero(same)[0]] if same.any() else scaled[same]
        out[tier] = scaled
    return out


@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, len(CASES) - 1),
    st.integers(0, 2**32 - 1),
    st.sampled_from([0.0, 0.3, 0.9]),
    st.one_of(st.none(), st.floats(0.5, 3.0)),
    st.booleans(),
    st.sampled_from([0.3, 0.7, 1.0]),
)
def test_rows_and_pairs_left_out_change_nothing(case, seed, spread, tightness, apart, memory_scale):
    tables, consts = _tables(case)
    rng = np.random.default_rng(seed)
    combo = tables.combos[int(rng.integers(len(tables.combos)))]
    isa_pre = tables.prefill_isas(combo)[0]
    arrays = combo_arrays(tables, combo, isa_pre, tables.decode_isas(combo)[-1])
    dec = _jittered(arrays.dec, rng, spread)
    arrays = dataclasses.replace(
        arrays,
        pre=_jittered(arrays.pre, rng, spread),
        dec=dec,
        tpot_dec=_jittered(arrays.dec, rng, spread) if apart else dec,
        memory=dataclasses.replace(
            arrays.memory,
            available_bytes={tier: v * memory_scale for tier, v in arrays.memory.available_bytes.items()},
        ),
    )
    # a bound around the mean TPOT of streaming every layer with the median decode vector
    steps = consts.decode_steps
    typical = (consts.num_layers * float(np.median(arrays.tpot_dec[next(iter(arrays.tpot_dec))])) / steps) + (
        consts.tpot_head_s
    )
    tpot = None if tightness is None else typical * tightness
    fast_lower, full_lower = np.full(NUM_POLICIES, np.inf), np.full(NUM_POLICIES, np.inf)
    fast = best_in_combo(arrays, consts, tpot, per_prefill=fast_lower)
    full = best_in_combo(arrays, consts, tpot, exhaustive=True, per_prefill=full_lower)
    assert fast == full
    differ = fast_lower != full_lower
    assert np.all(fast_lower[differ] >= full_lower[differ])
    assert np.all(full_lower[differ] > full_lower.min() * (1 + 1e-10))
