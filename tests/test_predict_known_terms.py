"""predict() reads the streamed layers' terms the optimiser's tables already hold (``known_terms``,
``SpaceTables.exact_streamed_terms``) instead of pricing them again: the same prediction, field by field, for the
optimum and for other plans of the space, on DDR, CXL and kernel-table systems; and the tables offer no prefill
terms whose schedules are still lower bounds."""

from __future__ import annotations

import numpy as np
import pytest

from lia_model.costmodel import predict
from lia_model.models import get_model
from lia_model.optimizer.enumerate import enumerate_optimum, lazy_optimum, plan_of
from lia_model.optimizer.space import build_tables, simulated_vectors
from lia_model.profiles import load_system
from lia_model.workload import make_workload


@pytest.mark.parametrize(
    "system, model, batch, input_len, output_len",
    [
        ("spr-a100", "opt-66b", 8, 512, 32),
        ("gnr-h100-cxl", "llama-2-70b", 4, 128, 32),
        ("spr-a100-cxl", "mixtral-8x7b", 16, 256, 8),
        ("hwprofiles/systems/emr-h200-kernels.yaml", "opt-30b", 16, 128, 8),
    ],
)
def test_known_terms_give_the_same_prediction(system, model, batch, input_len, output_len):
    spec = get_model(model)
    sys_spec, workload = load_system(system), make_workload(batch, input_len, output_len, spec)
    tables = build_tables(sys_spec, spec, workload)
    known = tables.exact_streamed_terms()
    rng = np.random.default_rng(batch)
    plans = [enumerate_optimum(tables).plan]
    for _ in range(6):  # other points of the space: any combo, ISAs, policies, N_res and weight split
        combo = tables.combos[int(rng.integers(len(tables.combos)))]
        n_res = int(rng.integers(tables.num_layers))
        k_cxl = int(rng.integers(tables.num_layers - n_res + 1)) if sys_spec.has_cxl else 0
        isa_pre = tables.prefill_isas(combo)[int(rng.integers(len(tables.prefill_isas(combo))))]
        isa_dec = tables.decode_isas(combo)[-1]
        pp, pd = (int(v) for v in rng.integers(64, size=2))
        plans.append(plan_of(tables, combo, n_res, pp, pd, k_cxl, isa_pre, isa_dec))
    for plan in plans:
        alone = predict(sys_spec, spec, workload, plan)
        read = predict(sys_spec, spec, workload, plan, known_terms=known)
        assert repr(read) == repr(alone)


def test_bounded_prefill_terms_are_not_offered():
    spec = get_model("opt-30b")
    sys_spec, workload = load_system("spr-a100"), make_workload(64, 256, 8, spec)
    tables = build_tables(sys_spec, spec, workload, prefill_bound=True)
    prefill = {t.context for by_isa in tables.prefill.values() for t in by_isa.values()}
    assert not prefill & set(tables.exact_streamed_terms())  # nothing simulated yet: no prefill terms
    found = lazy_optimum(tables)
    offered = set(tables.exact_streamed_terms())
    for (combo, _), by_isa in tables.prefill.items():
        for isa, terms in by_isa.items():
            assert (terms.context in offered) == bool(simulated_vectors(tables, combo, isa).all())
    alone = predict(sys_spec, spec, workload, found.plan)
    assert repr(predict(sys_spec, spec, workload, found.plan, known_terms=tables.exact_streamed_terms())) == repr(alone)
