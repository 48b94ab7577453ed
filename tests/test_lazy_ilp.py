"""The ILP on tables whose prefill schedules are bounds simulated in part (build_tables(prefill_bound=True), then
enumerate.lazy_optimum and enumerate.exact_combo_latencies; solve_ilp simulates what its model reads) is the ILP
on fully simulated tables with the plain enumerator's combo bounds: the same constraints, coefficient for
coefficient and to the last bit, the same objective and so the same solution, on random queries; and most
(combo, ISA) choices stay unsimulated."""

from __future__ import annotations

import numpy as np
import pytest

from lia_model.models import get_model
from lia_model.optimizer import ilp
from lia_model.optimizer.enumerate import bound_exceeds, enumerate_optimum, exact_combo_latencies, lazy_optimum
from lia_model.optimizer.space import build_tables, simulated_vectors
from lia_model.profiles import load_system
from lia_model.workload import make_workload
from tests.test_lazy_optimum import _random_query


class _Built(Exception):
    """Raised in place of the solve: the test reads the model, not its solution."""


def _model(tables, tpot, combo_bounds, monkeypatch) -> tuple:
    """solve_ilp's model as plain values: every constraint's terms, constant and sense, and the objective."""

    def capture(prob, solver):
        raise _Built(prob)

    monkeypatch.setattr(ilp, "_solve_quietly", capture)
    with pytest.raises(_Built) as built:
        ilp.solve_ilp(tables, tpot_max_s=tpot, combo_bounds=combo_bounds)
    prob = built.value.args[0]

    def terms(expr) -> list:
        return [(v.name, v.cat, v.lowBound, v.upBound, c) for v, c in expr.items()]

    rows = [(name, terms(c), c.constant, c.sense) for name, c in prob.constraints.items()]
    return rows, terms(prob.objective), prob.objective.constant


def test_the_lazy_tables_give_the_same_model(monkeypatch):
    rng = np.random.default_rng(29)
    left_out = 0
    for _ in range(30):
        system, model, workload, tpot = _random_query(rng)
        full = build_tables(system, model, workload)
        exact = enumerate_optimum(full, tpot_max_s=tpot)
        bound = build_tables(system, model, workload, prefill_bound=True)
        lazy = lazy_optimum(bound, tpot_max_s=tpot)
        if exact is None:
            assert lazy is None
            continue
        combo_bounds = exact_combo_latencies(bound, lazy, tpot)
        assert min(combo_bounds.values()) == min(exact.combo_latency_s.values()) == exact.latency_s
        expected = _model(full, tpot, exact.combo_latency_s, monkeypatch)
        assert _model(bound, tpot, combo_bounds, monkeypatch) == expected
        left_out += sum(not simulated_vectors(bound, c, a).all() for c in bound.combos for a in bound.prefill_isas(c))
    assert left_out > 0  # choices the ILP did not read stayed bounded (the test exercises the shortcut)


def test_bounded_choice_rows_are_at_most_the_exact_ones():
    """The premise of the dominance screen (ilp._simulate_what_the_model_reads): every column ilp._prefill_choices
    compares of a bounded choice is at most the fully simulated one (to the last bits)."""
    rng = np.random.default_rng(37)
    for _ in range(20):
        system, model, workload, _ = _random_query(rng)
        full = build_tables(system, model, workload)
        bound = build_tables(system, model, workload, prefill_bound=True)
        for combo in full.combos:
            for isa in full.prefill_isas(combo):
                exact = ilp._choice_row(full, combo, isa)
                assert not bound_exceeds(ilp._choice_row(bound, combo, isa), exact).any()


def test_the_screen_simulates_the_choices_that_may_dominate(monkeypatch):
    """ilp._simulate_what_the_model_reads on made-up rows: a choice of the kept combo's group whose bounded row
    is nowhere above a kept choice's exact row beyond rounding is simulated; one above it somewhere, or in another
    group, is not."""
    spec = get_model("opt-30b")
    tables = build_tables(load_system("spr-a100-cxl"), spec, make_workload(4, 128, 8, spec), prefill_bound=True)
    kept_combo = tables.combos[0]
    group = [
        c for c in tables.combos[1:] if (c.kv_tier, c.expert_fetch) == (kept_combo.kv_tier, kept_combo.expert_fetch)
    ]
    other = [c for c in tables.combos if c.kv_tier != kept_combo.kv_tier]
    assert len(group) >= 2 and other
    exact_row = np.array([1.0, 2.0, 3.0])
    rows = {
        kept_combo: exact_row,
        group[0]: exact_row * (1 + 1e-12),  # equal but for rounding: may dominate -> simulated
        group[1]: exact_row + [0.0, 0.5, 0.0],  # above in one column: cannot dominate
        other[0]: exact_row * 0.5,  # below everywhere, but another KV tier: not compared
    }
    simulated = []
    monkeypatch.setattr(ilp, "_choice_row", lambda t, combo, isa: rows.get(combo, exact_row + 1.0))
    monkeypatch.setattr(ilp, "simulate_prefill", lambda t, combo, isa: simulated.append(combo))
    monkeypatch.setattr(ilp, "simulated_vectors", lambda t, combo, isa: np.zeros(64, dtype=bool))
    ilp._simulate_what_the_model_reads(tables, {kept_combo})
    assert kept_combo in simulated and group[0] in simulated
    assert group[1] not in simulated and other[0] not in simulated


def test_linear_builds_what_lpsum_builds():
    """ilp._linear: the same expression as pulp.lpSum of the products (terms, order, coefficients and their types,
    constant), and PuLP's refusal of a non-finite coefficient."""
    import pulp

    y = [pulp.LpVariable(f"y_{k}", cat="Binary") for k in range(6)]
    values = [0.0, 1.5, -2.25, 0.0, 3e-9, 7.0]
    fast = ilp._linear((y[k], float(v)) for k, v in enumerate(values) if v != 0.0)
    slow = pulp.lpSum(float(v) * y[k] for k, v in enumerate(values) if v != 0.0)
    assert [(v.name, c, type(c)) for v, c in fast.items()] == [(v.name, c, type(c)) for v, c in slow.items()]
    assert (fast.constant, type(fast.constant)) == (slow.constant, type(slow.constant))
    ones = ilp._linear((y[k], 1) for k in (1, 3))
    assert [(v.name, c, type(c)) for v, c in ones.items()] == [
        (v.name, c, type(c)) for v, c in pulp.lpSum(y[k] for k in (1, 3)).items()
    ]
    with pytest.raises(pulp.PulpError):
        ilp._linear([(y[0], float("inf"))])
