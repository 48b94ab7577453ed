"""The batch search shares streamed layers' terms between its relaxed bounds and its exact solves
(lia_model.optimizer.space.shared_layer_terms): tables built through a cache that the relaxed bounds filled hold
the same numbers, to the last bit, as tables built alone, and so do the relaxed bounds."""

from __future__ import annotations

import numpy as np
import pytest

from lia_model.costterms import ALL_POLICY_FEATURES, CostMode
from lia_model.models import get_model
from lia_model.optimizer.batch import flat_matmul_system, relaxed_batch
from lia_model.optimizer.space import build_tables, pass_start_fill
from lia_model.profiles import load_system
from lia_model.workload import make_workload

CASES = [  # (system, model, lo, hi, input, output): DDR, CXL, GH200 and a kernel-table profile; dense and MoE
    ("spr-a100", "opt-30b", 17, 32, 128, 32),
    ("gnr-h100-cxl", "llama-2-70b", 1, 64, 512, 8),
    ("gh200", "mixtral-8x7b", 5, 12, 256, 16),
    ("hwprofiles/systems/emr-h200-kernels.yaml", "opt-30b", 8, 16, 128, 8),
]


def _numbers(system, terms) -> list[np.ndarray]:
    """What the solvers read of a streamed layer's terms (and its schedule)."""
    out = [terms.policy_layer_times, terms.schedule_s]
    if pass_start_fill(system, terms.context):
        out += list(terms.fill_parts(ALL_POLICY_FEATURES))
    return out


@pytest.mark.parametrize("system_name, model_name, lo, hi, input_len, output_len", CASES)
def test_tables_through_the_relaxed_bounds_cache_equal_tables_built_alone(
    system_name, model_name, lo, hi, input_len, output_len
):
    system, model = load_system(system_name), get_model(model_name)
    at = lambda b: make_workload(b, input_len, output_len, model)  # noqa: E731
    pre_sys = flat_matmul_system(system, input_len, hi * input_len)
    dec_sys = flat_matmul_system(system, lo, hi)
    cache: dict = {}
    shared_cost = relaxed_batch(pre_sys, dec_sys, model, at(hi), CostMode.OVERLAP, cache)
    alone_cost = relaxed_batch(pre_sys, dec_sys, model, at(hi), CostMode.OVERLAP)
    for side in ("prefill", "decode"):
        for key, by_tier in getattr(alone_cost, side).items():
            for tier, values in by_tier.items():
                assert np.array_equal(getattr(shared_cost, side)[key][tier], values)
    from_bounds = {id(terms) for terms in cache.values()}
    shared = build_tables(system, model, at(hi), prefill_bound=True, terms_cache=cache)
    alone = build_tables(system, model, at(hi), prefill_bound=True)
    reused = 0
    for side in ("prefill", "decode"):
        for key, by_isa in getattr(alone, side).items():
            assert list(getattr(shared, side)[key]) == list(by_isa)
            for isa, terms in by_isa.items():
                got = getattr(shared, side)[key][isa]
                reused += id(got) in from_bounds
                for a, b in zip(_numbers(system, got), _numbers(system, terms)):
                    assert np.array_equal(a, b)
    assert reused > 0  # the cache served some terms (the test exercises the sharing)
