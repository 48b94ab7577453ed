"""The cost model: a hand-computed serial sum, the overlap invariants, memory and infeasibility."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lia_model.costmodel import predict
from lia_model.costterms import CostMode
from lia_model.errors import LiaInputError
from lia_model.memory import MemoryTier
from lia_model.models import get_model
from lia_model.plan import ALL_GPU, Device, HostTier, Plan, policy_from_index
from lia_model.profiles import load_system
from lia_model.sublayers import Stage
from lia_model.workload import Workload, make_workload
from tests.toys import toy_model, toy_system


def test_additive_mode_reproduces_a_hand_computed_serial_sum():
    """All-GPU streamed plan on the toy system (see tests/toys.py), B=1, L_in=4, L_out=2.

    Each GPU sublayer is memory-bound: time = bytes / 1000 GB/s. Decode (q=1, s=5), bytes per sublayer:
      qkv   6,293,504 W + 2,048 in + 2,048 Q + 4,096 new KV = 6,301,696   -> 6.301696 us
      score 2,048 Q + 80 scores + 10,240 K                  =    12,368   -> 0.012368 us
      ctx   80 + 2,048 + 10,240 V + 160 softmax scratch      =    12,528   -> 0.012528 us
      out   2,097,152 + 2,048 + 2,048                        = 2,101,248   -> 2.101248 us
      fc1   8,390,656 + 2,048 + 8,192                        = 8,400,896   -> 8.400896 us
      fc2   8,388,608 + 8,192 + 2,048                        = 8,398,848   -> 8.398848 us
    (the softmax reads the 80 B score matrix and writes the probabilities: 2 x 80 B of scratch)
    sum 25.227584 us. KV over the 10 GB/s link: cached K and V (4 tokens x 2,048 B) 0.8192 us each,
    new K and V written back (4,096 B) 0.4096 us: chain 27.275584 us. Weights 25,169,920 B at 10 GB/s:
    2.516992 ms. Layer 2.544267584 ms; two layers plus the LM head (2,048,000 B: 2.048 us):
    TPOT = 5.090583168 ms.
    Prefill (q = s = 4): bytes 6,326,272 / 16,640 / 17,152 / 2,113,536 / 8,431,616 / 8,429,568
    -> 25.334784 us, new K and V written back 16,384 B -> 1.6384 us, no cached KV: chain 26.973184 us,
    layer 2.543965184 ms, TTFT = 2 x + 2.048 us = 5.089978368 ms.
    """
    plan = Plan(prefill_policy=ALL_GPU, decode_policy=ALL_GPU)
    pred = predict(toy_system(), toy_model(), Workload(batch=1, input_len=4, output_len=2), plan, CostMode.ADDITIVE)
    assert pred.tpot_s == pytest.approx((5.090583168e-3,), rel=1e-12)
    assert pred.ttft_s == pytest.approx(5.089978368e-3, rel=1e-12)
    assert pred.latency_s == pytest.approx(5.089978368e-3 + 5.090583168e-3, rel=1e-12)
    assert pred.throughput_tokens_per_s == pytest.approx(2 / (5.089978368e-3 + 5.090583168e-3), rel=1e-12)


def test_all_cpu_decode_is_ddr_bound_as_hand_computed():
    """All-CPU decode on the toy: each sublayer moves the same bytes as on the GPU (weights, activations,
    K/V read, the new K/V written and the softmax scratch: 25,227,584 B in all, see above) at min(CPU 100, DDR 100) = 100 GB/s,
    a tenth of the HBM rate: 252.27584 us, and no copies or weight prefetch at all."""
    plan = Plan(prefill_policy=ALL_GPU, decode_policy=(Device.CPU,) * 6)
    pred = predict(toy_system(), toy_model(), Workload(batch=1, input_len=4, output_len=2), plan, CostMode.ADDITIVE)
    layer = pred.stages[Stage.DECODE].streamed_layer_s[0]
    assert layer == pytest.approx(25.227584e-6 * 10, rel=1e-12)


SYSTEMS = ["spr-a100", "spr-h100-cxl", "gnr-a100-cxl", "gnr-h100", "gh200"]
MODELS = ["opt-30b", "opt-175b", "llama-3.1-70b", "mixtral-8x7b", "bloom-176b"]


@st.composite
def random_queries(draw):
    system = load_system(draw(st.sampled_from(SYSTEMS)))
    model = get_model(draw(st.sampled_from(MODELS)))
    batch = draw(st.sampled_from([1, 2, 3, 8, 16, 64, 256]))
    input_len = draw(st.integers(1, 1024))
    output_len = draw(st.integers(1, 40))
    workload = make_workload(batch, input_len, output_len, model)
    tiers = [HostTier.DDR, HostTier.CXL] if system.has_cxl else [HostTier.DDR]
    isas = [isa for isa, spec in system.cpu.isa.items() if spec.present]
    n = draw(st.sampled_from([k for k in (1, 2, 4, 8) if batch % k == 0]))
    plan = Plan(
        prefill_policy=policy_from_index(draw(st.integers(0, 63))),
        decode_policy=policy_from_index(draw(st.integers(0, 63))),
        gpu_resident_layers=draw(st.integers(0, model.num_layers)),
        prefill_minibatches=n,
        weight_tier=draw(st.sampled_from(tiers)),
        kv_tier=draw(st.sampled_from(tiers)),
        pinned_weights=draw(st.booleans()),
        overlap=draw(st.booleans()),
        cpu_isa=draw(st.sampled_from(isas)),
    )
    return system, model, workload, plan


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(random_queries())
def test_overlap_is_never_slower_than_additive_nor_faster_than_its_slowest_resource(query):
    system, model, workload, plan = query
    overlap = predict(system, model, workload, plan, CostMode.OVERLAP)
    additive = predict(system, model, workload, plan, CostMode.ADDITIVE)
    assert overlap.latency_s <= additive.latency_s * (1 + 1e-12)
    for stage, rep in overlap.stages.items():
        add = additive.stages[stage]
        assert np.all(rep.streamed_layer_s <= add.streamed_layer_s * (1 + 1e-12))
        for resource, busy in rep.resource_busy_s.items():
            assert np.all(rep.streamed_layer_s >= busy * (1 - 1e-12)), (stage, resource)


def test_prefetch_overlap_hides_transfer_behind_compute():
    """Turning weight prefetch off adds the weight copy to the chain: never faster, and slower when the
    layer was not purely transfer-bound."""
    system, model = load_system("spr-h100"), get_model("opt-30b")
    wl = make_workload(64, 512, 8, model)
    on = Plan(prefill_policy=ALL_GPU, decode_policy=ALL_GPU)
    off = on.model_copy(update={"overlap": False})
    assert predict(system, model, wl, off).ttft_s > predict(system, model, wl, on).ttft_s


def test_minibatches_pipeline_cpu_and_gpu_work():
    """With attention on the CPU and linears on the GPU, prefill chunks overlap CPU and GPU: 4 chunks beat 1."""
    system, model = load_system("spr-h100"), get_model("opt-30b")
    wl = make_workload(16, 512, 2, model)
    one = Plan(prefill_policy=(0, 1, 1, 0, 0, 0), decode_policy=ALL_GPU, prefill_minibatches=1)
    four = one.model_copy(update={"prefill_minibatches": 4})
    t1, t4 = predict(system, model, wl, one).ttft_s, predict(system, model, wl, four).ttft_s
    assert t4 < t1


def test_a_plan_that_does_not_fit_is_infeasible_with_tier_and_shortfall():
    system, model = load_system("spr-a100"), get_model("opt-175b")
    wl = make_workload(1, 256, 32, model)
    plan = Plan(prefill_policy=ALL_GPU, decode_policy=ALL_GPU, gpu_resident_layers=96)
    pred = predict(system, model, wl, plan)
    assert not pred.feasible
    (short,) = pred.shortfalls
    assert short.tier == MemoryTier.HBM
    # 96 layers x 3.624 GB + embeddings 0.64 GB + KV 96 x 288 tok x 49,152 B ... against 40 GiB x 0.95 - 1 GiB
    expected_required = 96 * 3.624198144e9 + 2 * 50272 * 12288 + 2 * 2050 * 12288 + 2 * 2 * 12288 + 4718592 * 288
    assert short.required_gb == pytest.approx(expected_required / 1e9, rel=0.01)
    assert short.shortfall_gb == pytest.approx(short.required_gb - (40 * 0.95 - 1) * 2**30 / 1e9, rel=1e-9)


def test_kv_in_cxl_slows_cpu_attention():
    system, model = load_system("spr-h100-cxl"), get_model("opt-30b")
    wl = make_workload(64, 1024, 16, model)
    ddr = Plan(prefill_policy=ALL_GPU, decode_policy=(0, 1, 1, 0, 0, 0), kv_tier=HostTier.DDR)
    cxl = ddr.model_copy(update={"kv_tier": HostTier.CXL})
    assert predict(system, model, wl, cxl).tpot_mean_s > 1.5 * predict(system, model, wl, ddr).tpot_mean_s


def test_plan_round_trips_through_json():
    plan = Plan(
        prefill_policy="011000",
        decode_policy=[1, 1, 1, 1, 1, 1],
        gpu_resident_layers=7,
        prefill_minibatches=4,
        weight_tier="cxl",
        kv_tier="ddr",
        label="x",
    )
    assert Plan.model_validate_json(plan.model_dump_json()) == plan
    assert plan.model_dump(mode="json")["prefill_policy"] == [0, 1, 1, 0, 0, 0]
    assert plan.prefill_policy[1] == Device.CPU


def test_plan_rejects_a_bad_policy_with_an_example():
    with pytest.raises(ValueError, match="6 entries.*example: \\(0,1,1,0,0,0\\)"):
        Plan(prefill_policy="0110", decode_policy=ALL_GPU)


def test_plan_on_a_system_without_cxl_names_the_missing_tier():
    system, model = load_system("spr-h100"), get_model("opt-30b")
    plan = Plan(prefill_policy=ALL_GPU, decode_policy=ALL_GPU, kv_tier=HostTier.CXL)
    with pytest.raises(LiaInputError, match="has no CXL"):
        predict(system, model, make_workload(1, 8, 2, model), plan)
