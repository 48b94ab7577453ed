"""The batch search's per-batch solve (lia_model.optimizer.enumerate.lazy_optimum: tables whose streamed prefill
schedules are lower bounds, simulated only for the choices, and in them the policy vectors, that can win) against
the plain enumerator on fully simulated tables: the same plan and the same latency, to the last bit, on random
queries."""

from __future__ import annotations

import numpy as np

from lia_model.models import get_model
from lia_model.optimizer.enumerate import enumerate_optimum, lazy_optimum
from lia_model.optimizer.space import build_tables
from lia_model.profiles import load_system
from lia_model.workload import make_workload

SYSTEMS = ["spr-a100", "gnr-h100", "gh200", "spr-h100-cxl", "gnr-a100-cxl", "hwprofiles/systems/emr-h200-kernels.yaml"]
MODELS = ["opt-30b", "llama-2-70b", "mixtral-8x7b", "bloom-176b"]


def _random_query(rng: np.random.Generator):
    system = load_system(str(rng.choice(SYSTEMS)), [f"link.h2d_gbps={rng.choice([16, 28, 55, 128])}"])
    model = get_model(str(rng.choice(MODELS)))
    model = model.model_copy(update={"num_layers": int(rng.choice([3, 7, model.num_layers]))})
    batch = int(rng.choice([1, 4, 12, 30, 64, 96, 256]))  # many divisors: many minibatch counts to rule out
    workload = make_workload(batch, int(rng.choice([16, 128, 512])), int(rng.choice([1, 2, 8])), model)
    tpot = rng.choice([None, None, 0.05, 0.5])
    return system, model, workload, None if tpot is None else float(tpot)


def test_lazy_optimum_equals_the_enumerator_on_simulated_tables():
    """40 random queries (DDR, CXL and kernel-table systems, dense and MoE, with and without a TPOT bound): the
    same plan and latency as enumerate_optimum, every schedule bound <= its simulated schedule, and every combo's
    latency it reports <= the combo's optimum (to the last bits) (what solve_ilp's combo_bounds needs)."""
    rng = np.random.default_rng(13)
    ruled_out = in_part = 0
    for _ in range(40):
        system, model, workload, tpot = _random_query(rng)
        exact_tables = build_tables(system, model, workload)
        bound_tables = build_tables(system, model, workload, prefill_bound=True)
        for key, by_isa in exact_tables.prefill.items():
            for isa, terms in by_isa.items():
                bound = bound_tables.prefill[key][isa].schedule_s
                assert np.all(bound <= terms.schedule_s * (1 + 1e-12))
        exact = enumerate_optimum(exact_tables, tpot_max_s=tpot)
        lazy = lazy_optimum(bound_tables, tpot_max_s=tpot)
        if exact is None:
            assert lazy is None
            continue
        assert lazy is not None
        assert lazy.latency_s == exact.latency_s and lazy.plan == exact.plan
        in_part += sum(not vectors.all() for vectors in bound_tables.simulated.values())
        for combo, value in exact.combo_latency_s.items():
            assert lazy.combo_latency_s[combo] <= value * (1 + 1e-12)  # (bounds: other sums, last bits)
        ruled_out += sum(lazy.combo_latency_s[c] < v for c, v in exact.combo_latency_s.items())
    assert ruled_out > 0  # the bound did rule choices out (the test exercises the pruning)
    assert in_part > 0  # and choices were simulated for some policy vectors only
