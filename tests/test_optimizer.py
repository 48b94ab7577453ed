"""The ILP is exact: on random (system, model, workload) cases it finds the brute-force optimum."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwprofiles import load_system
from lia_model.costmodel import predict
from lia_model.models import get_model
from lia_model.optimizer import InfeasibleError, batch_candidates, optimize
from lia_model.optimizer.enumerate import enumerate_optimum
from lia_model.optimizer.ilp import solve_ilp
from lia_model.optimizer.space import build_tables
from lia_model.workload import make_workload

DDR_SYSTEMS = ["spr-a100", "spr-h100", "gnr-a100", "gnr-h100", "gh200"]
CXL_SYSTEMS = ["spr-a100-cxl", "spr-h100-cxl", "gnr-a100-cxl", "gnr-h100-cxl"]
MODELS = ["opt-30b", "opt-66b", "opt-175b", "llama-2-70b", "llama-3.1-70b", "bloom-176b", "mixtral-8x7b"]


@st.composite
def cases(draw):
    """A random query on a catalog system with random what-ifs that move the binding tier around."""
    name = draw(st.sampled_from(DDR_SYSTEMS + CXL_SYSTEMS))
    overrides = [f"gpu.memory_gib={draw(st.sampled_from([16, 40, 80, 141]))}",
                 f"ddr.capacity_gib={draw(st.sampled_from([96, 192, 512, 1024]))}",
                 f"link.h2d_gbps={draw(st.sampled_from([16, 28, 55, 128]))}"]
    if name in CXL_SYSTEMS:
        overrides.append(f"cxl.capacity_gib={draw(st.sampled_from([64, 256, 1024]))}")
    system = load_system(name, overrides)
    model = get_model(draw(st.sampled_from(MODELS)))
    layers = draw(st.sampled_from([None, 4, 17]))
    if layers is not None:
        model = model.model_copy(update={"num_layers": layers})
    batch = draw(st.sampled_from([1, 2, 4, 6, 8, 32, 96, 256]))
    input_len = draw(st.sampled_from([1, 16, 128, 512, 1024]))
    output_len = draw(st.sampled_from([1, 2, 8, 33]))
    workload = make_workload(batch, input_len, output_len, model)
    objective = draw(st.sampled_from(["latency", "latency", "throughput"]))
    tpot = draw(st.sampled_from([None, None, 0.05, 0.5, 5.0]))
    max_batch = draw(st.sampled_from([16, 256])) if objective == "throughput" else None
    return system, model, workload, objective, tpot, max_batch


def oracle(system, model, workload, objective, tpot, max_batch):
    """Brute force over the whole plan space (every policy pair, every N_res, every combo, every batch)."""
    batches = [workload.batch] if objective == "latency" else batch_candidates(system, model, workload, max_batch)
    best = None
    for b in batches:
        wl = workload.model_copy(update={"batch": b})
        found = enumerate_optimum(build_tables(system, model, wl), tpot_max_s=tpot, exhaustive=True)
        if found is None:
            continue
        value = found.latency_s if objective == "latency" else b * wl.output_len / found.latency_s
        better = best is None or (value < best[0] if objective == "latency" else value > best[0])
        if better:
            best = (value, found.plan, wl)
    return best


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(cases())
def test_ilp_matches_exhaustive_enumeration(case):
    system, model, workload, objective, tpot, max_batch = case
    expected = oracle(system, model, workload, objective, tpot, max_batch)
    if expected is None:
        with pytest.raises(InfeasibleError):
            optimize(system, model, workload, objective, tpot_max_s=tpot, solver="cbc", max_batch=max_batch)
        return
    result = optimize(system, model, workload, objective, tpot_max_s=tpot, solver="cbc", max_batch=max_batch)
    assert result.objective_value == pytest.approx(expected[0], rel=1e-6)
    # the ILP's own objective is the latency at the batch it chose
    assert result.solver_objective_s == pytest.approx(result.prediction.latency_s, rel=1e-6)
    # predict() of the ILP's plan gives the same number
    again = predict(system, model, result.workload, result.plan)
    value = again.latency_s if objective == "latency" else again.throughput_tokens_per_s
    assert value == pytest.approx(expected[0], rel=1e-6)
    assert again.feasible
    if tpot is not None and again.tpot_mean_s is not None:
        assert again.tpot_mean_s <= tpot * (1 + 1e-9)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_fast_enumerator_and_highs_agree_with_brute_force(case):
    system, model, workload, _, _, _ = case
    tables = build_tables(system, model, workload)
    brute = enumerate_optimum(tables, exhaustive=True)
    fast = enumerate_optimum(tables)
    highs = solve_ilp(tables, solver="highs")
    if brute is None:
        assert fast is None and highs is None
        return
    assert fast.latency_s == pytest.approx(brute.latency_s, rel=1e-9)
    assert predict(system, model, workload, highs.plan).latency_s == pytest.approx(brute.latency_s, rel=1e-6)


def test_optimum_is_never_worse_than_the_lia_fixed_policies():
    from lia_model.baselines import baseline_plans

    system, model = load_system("spr-a100"), get_model("opt-175b")
    for batch, input_len in ((1, 32), (64, 256), (8, 1024)):
        wl = make_workload(batch, input_len, 16, model)
        best = optimize(system, model, wl, solver="cbc").prediction.latency_s
        for label, plan in baseline_plans(system, model, wl).items():
            if label.startswith("lia_") or label == "ipex":
                pred = predict(system, model, wl, plan)
                if pred.feasible:
                    assert best <= pred.latency_s * (1 + 1e-9), label
