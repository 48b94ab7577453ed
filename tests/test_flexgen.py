"""FlexGen's own policy search (lia_model.flexgen), the FlexGen and IPEX baselines built on it.

The pinned cases compare against numbers printed by FlexGen's own cost model. How they were obtained:
``pip download --no-deps flexgen==0.1.8`` (the PyPI wheel, which ships ``experimental/cost_model.py``),
unzipped into a scratch folder outside this repository together with ``attrs`` (``pip install --target``);
a ten-line driver there imported ``cost_model`` and, per case, set the fields of ``CostModelConfig``
(l, h1, h2, nh from ``flexgen.opt_config.get_opt_config(model)``; s, n; gmem, cmem; nmem = 0, i.e. FlexGen's
``--nvme-mem 0``; the hardware constants below, unlisted ones left at FlexGen's defaults), called
``cost_model.solve(config, cost_model.solve_lp, args)`` with no fixed percent (and ``gbs`` / ``num_gb`` where a
case fixes them) and printed the returned Policy (gpu_batch_size, num_gpu_batches, w_gpu_percent,
cache_gpu_percent, act_gpu_percent, which FlexGen's LP returns as fractions) and the throughput. FlexGen's
GB is 2**30 and its T is 1e12. FlexGen's code is not part of this repository.
"""

from __future__ import annotations

import numpy as np
import pytest

from lia_model.baselines import baselines, ipex_plan
from lia_model.costmodel import predict
from lia_model.costterms import CostMode, StageContext, head_time_s, sublayer_times
from lia_model.flexgen import (
    FLEXGEN_CPU_KV_PASSES,
    FlexGenHardware,
    FlexGenPolicy,
    FlexGenShape,
    flexgen_plan,
    search_fixed_batch,
    search_throughput,
    solve_policy_blocks,
    system_hardware,
)
from lia_model.memory import MemoryTier, memory_use
from lia_model.models import get_model
from lia_model.plan import ALL_GPU, ATTENTION_ON_CPU, CpuIsa, Device, HostTier, head_device
from lia_model.profiles import load_system
from lia_model.workload import Workload
from tests.toys import toy_model, toy_system

GB, T = 2.0**30, 1e12  # FlexGen's units

# Case A: FlexGen's default constants (fitted on a GCP T4), c1..c3 included: OPT-30B, s = 512, n = 32,
#   cost_model.py --model facebook/opt-30b --prompt-len 512 --gen-len 32 --gpu-mem 40 --cpu-mem 200 --nvme-mem 0
#   printed gbs 16, nb 11, wg 0.52499261, cg 0.0, hg 0.0, throughput 7.602653677108091 token/s.
CASE_A = (
    FlexGenShape.opt(48, 7168, 28672, 56, 512, 32),
    FlexGenHardware(
        40 * GB,
        200 * GB,
        12.89 * GB,
        0.97 * GB,
        4.82 * GB,
        21.24 * T,
        4.3 * T,
        9.97 * T,
        0.079 * T,
        0.0123 * T,
        c1=0.0168,
        c2=0.0328,
        c3=0.0621,
    ),
)
# Case B: A100-like constants (those system_hardware gives spr-a100 for OPT-30B at gbs 1, rounded), c1..c3 = 0,
#   OPT-30B, s = 256, n = 32, gmem 40 GB, cmem 512 GB, gbs = 1 and num_gb = 1 fixed (a B = 1 query): ctog 28e9,
#   gtoc_cache 10e9, gtoc_hidden 28e9, mm_p 186e12, mm_g 1.48e12, bmm_p 38.9e12, bmm_g 0.31e12, cpu 0.0415e12;
#   printed gbs 1, nb 1, wg 0.56122449, cg 0.0, hg 1.0, throughput 1.0256176533925783 token/s.
CASE_B = (
    FlexGenShape.opt(48, 7168, 28672, 56, 256, 32),
    FlexGenHardware(40 * GB, 512 * GB, 28e9, 10e9, 28e9, 186e12, 1.48e12, 38.9e12, 0.31e12, 0.0415e12),
)
# Case C: H100-like constants (spr-h100 for OPT-175B at gbs 16, rounded), c1..c3 = 0, OPT-175B, s = 512, n = 32,
#   gmem 80 GB, cmem 512 GB, full search: ctog 55e9, gtoc_cache 18e9, gtoc_hidden 55e9, mm_p 450e12,
#   mm_g 51.6e12, bmm_p 166e12, bmm_g 2.84e12, cpu 0.0525e12;
#   printed gbs 1, nb 60, wg 0.17979216, cg 0.0, hg 0.0, throughput 6.715300364193123 token/s.
CASE_C = (
    FlexGenShape.opt(96, 12288, 49152, 96, 512, 32),
    FlexGenHardware(80 * GB, 512 * GB, 55e9, 18e9, 55e9, 450e12, 51.6e12, 166e12, 2.84e12, 0.0525e12),
)


@pytest.mark.parametrize(
    "case, fixed_batch, expected",
    [
        (CASE_A, None, (16, 11, 0.52499261, 0.0, 0.0, 7.602653677108091)),
        (CASE_B, 1, (1, 1, 0.56122449, 0.0, 1.0, 1.0256176533925783)),
        (CASE_C, None, (1, 60, 0.17979216, 0.0, 0.0, 6.715300364193123)),
    ],
    ids=["A-t4-defaults-opt30b", "B-a100-like-opt30b-b1", "C-h100-like-opt175b"],
)
def test_policy_search_reproduces_flexgens_own_cost_model(case, fixed_batch, expected):
    shape, hw = case
    if fixed_batch is None:
        sol = search_throughput(shape, lambda gbs: hw)
    else:
        sol = search_fixed_batch(shape, lambda gbs: hw, fixed_batch)
    gbs, nb, wg, cg, hg, throughput = expected
    p = sol.policy
    assert (p.gpu_batch_size, p.num_gpu_batches) == (gbs, nb)
    assert (p.weights_gpu, p.cache_gpu, p.activations_gpu) == pytest.approx((wg, cg, hg), abs=1e-7)
    assert p.weights_gpu + p.weights_cpu == pytest.approx(1.0) and p.cache_cpu == pytest.approx(1.0 - cg)
    assert sol.throughput_tokens_per_s == pytest.approx(throughput, rel=1e-7)


def test_pulp_cbc_gives_flexgens_answer_too():
    """The same LP through PuLP's CBC (FlexGen's own solver) on case B."""
    shape, hw = CASE_B
    sol = search_fixed_batch(shape, lambda gbs: hw, 1, solver="cbc")
    assert sol.policy.weights_gpu == pytest.approx(0.56122449, abs=1e-7)
    assert sol.throughput_tokens_per_s == pytest.approx(1.0256176533925783, rel=1e-7)


def test_vertex_enumeration_matches_pulp_on_random_lps():
    """The exact vertex enumerator and PuLP/CBC agree on feasibility and on the optimal T of random LPs."""
    rng = np.random.default_rng(7)
    checked = infeasible = 0
    for _ in range(24):
        h1 = int(rng.choice([2048, 4096, 7168, 12288]))
        shape = FlexGenShape.opt(
            int(rng.integers(8, 97)), h1, 4 * h1, h1 // 128, int(rng.integers(16, 2048)), int(rng.integers(1, 257))
        )
        hw = FlexGenHardware(
            float(rng.uniform(8, 96)) * GB,
            float(rng.uniform(32, 768)) * GB,
            *(float(x) for x in rng.uniform(2e9, 60e9, 3)),
            *(float(x) for x in rng.uniform(1e12, 600e12, 4)),
            float(rng.uniform(5e9, 2e11)),
            c1=float(rng.uniform(0, 0.05)),
            c2=float(rng.uniform(0, 0.05)),
            c3=float(rng.uniform(0, 0.1)),
        )
        gbs = int(rng.choice([1, 2, 4, 8, 32]))
        blocks = [gbs * int(nb) for nb in rng.integers(1, 64, 2)]
        fast = solve_policy_blocks(shape, hw, blocks, gbs)
        slow = solve_policy_blocks(shape, hw, blocks, gbs, solver="cbc")
        for f, s in zip(fast, slow):
            assert (f is None) == (s is None)
            if f is None:
                infeasible += 1
                continue
            assert f.total_s == pytest.approx(s.total_s, rel=1e-6)
            assert f.gpu_peak_bytes <= hw.gpu_memory_bytes * 0.8 * (1 + 1e-9)
            assert f.cpu_peak_bytes <= hw.cpu_memory_bytes * 0.8 * (1 + 1e-9)
            checked += 1
    assert checked >= 20 and infeasible >= 1


def test_system_hardware_rates_are_our_cost_models_own_times():
    """FlexGen's compute terms with the fitted constants give our cost model's GPU and CPU times back:
    prefill of one GPU batch = the six GPU sublayer times; decode CPU attention = our fp32 attention with
    FLEXGEN_CPU_KV_PASSES over the cache, at the mean context s + n/2."""
    system, model = load_system("spr-a100"), get_model("opt-30b")
    s, n, gbs = 256, 32, 4
    hw = system_hardware(system, model, s, n)(gbs)
    shape = FlexGenShape.from_model(model, s, n)
    ctx = StageContext(
        batch=gbs,
        q=s,
        contexts=(s,),
        minibatches=1,
        weight_tier=HostTier.DDR,
        kv_tier=HostTier.DDR,
        cpu_isa=CpuIsa.AVX512_FP32,
        pinned_weights=True,
        overlap=True,
        mode=CostMode.OVERLAP,
    )
    ours = sublayer_times(system, model, ctx, gbs).gpu_s[:, 0].sum()
    flexgen = (
        gbs * s * shape.linear_flops_per_token / hw.mm_flops_prefill
        + gbs * s * s * shape.attention_flops_per_context / hw.bmm_flops_prefill
    )
    assert flexgen == pytest.approx(ours, rel=1e-12)
    dctx = StageContext(
        batch=gbs,
        q=1,
        contexts=(s + n / 2,),
        minibatches=1,
        weight_tier=HostTier.DDR,
        kv_tier=HostTier.DDR,
        cpu_isa=CpuIsa.AVX512_FP32,
        pinned_weights=True,
        overlap=True,
        mode=CostMode.OVERLAP,
        cpu_kv_passes=FLEXGEN_CPU_KV_PASSES,
    )
    cpu_attention = sublayer_times(system, model, dctx, gbs).cpu_s[1:3, 0].sum()
    assert gbs * (s + n / 2) * shape.attention_flops_per_context / hw.cpu_flops == pytest.approx(cpu_attention)
    assert hw.ctog_bytes_per_s == system.link.h2d_gbps * 1e9
    assert hw.gtoc_cache_bytes_per_s == system.link.pageable_d2h_gbps * 1e9
    assert hw.gpu_memory_bytes == system.gpu.memory_gib * GB


def test_kv_passes_multiply_the_cpu_attention_cache_reads():
    """Toy, decode step at s = 5, B = 1: attn_score on the CPU moves Q 2,048 B + scores 80 B + K 10,240 B at
    100 GB/s; with 5 passes over K: 2,048 + 80 + 51,200 = 53,328 B -> 0.53328 us (compute 10,240 FLOP at
    1 TFLOPS is 0.01 us, below it)."""
    system, model = toy_system(), toy_model()
    for passes, expected in ((1.0, 0.12368e-6), (5.0, 0.53328e-6)):
        ctx = StageContext(
            batch=1,
            q=1,
            contexts=(5,),
            minibatches=1,
            weight_tier=HostTier.DDR,
            kv_tier=HostTier.DDR,
            cpu_isa=CpuIsa.AMX_BF16,
            pinned_weights=True,
            overlap=True,
            mode=CostMode.OVERLAP,
            cpu_kv_passes=passes,
        )
        assert sublayer_times(system, model, ctx, 1).cpu_s[1, 0] == pytest.approx(expected, rel=1e-12)


def test_flexgen_plan_maps_weights_to_whole_resident_layers():
    system, model = load_system("spr-a100"), get_model("opt-30b")
    wl = Workload(batch=8, input_len=256, output_len=32)
    policy = FlexGenPolicy(4, 2, 0.5612, 0.4388, 0.2, 0.8, 1.0, 0.0)
    plan = flexgen_plan(system, model, wl, policy)
    assert plan.gpu_resident_layers == 26  # floor(0.5612 x 48)
    assert plan.decode_policy == ATTENTION_ON_CPU and plan.prefill_minibatches == 2
    assert plan.cpu_isa == CpuIsa.AVX512_FP32 and head_device(plan) == Device.GPU
    # more GPU weights than our memory model can hold as whole layers: as many as fit
    greedy = flexgen_plan(system, model, wl, FlexGenPolicy(4, 2, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0))
    assert 26 < greedy.gpu_resident_layers < 48
    assert all(u.fits for u in memory_use(system, model, wl, greedy).values())
    assert not all(
        u.fits
        for u in memory_use(
            system, model, wl, greedy.model_copy(update={"gpu_resident_layers": greedy.gpu_resident_layers + 1})
        ).values()
    )


def test_flexgens_cache_on_the_gpu_maps_to_streamed_kv_on_the_gpu_where_it_fits():
    """FlexGen's cache on the GPU (``3 97 100 0 100 0``, its choice for OPT-30B at B = 512 on the 40 GiB host):
    all-GPU decode with every streamed layer's cache in HBM; on the CPU: CPU attention over a DDR cache; a cache
    HBM cannot hold beside the streaming buffers stays in DDR; with every layer resident the flag is moot (off)."""
    system, model = load_system("emr-h100-calibrated", ["gpu.memory_gib=40"]), get_model("opt-30b")
    wl = Workload(batch=512, input_len=32, output_len=8)
    gpu_cache = flexgen_plan(system, model, wl, FlexGenPolicy(256, 2, 0.03, 0.97, 1.0, 0.0, 1.0, 0.0))
    assert gpu_cache.streamed_kv_on_gpu and gpu_cache.decode_policy == ALL_GPU
    assert gpu_cache.gpu_resident_layers == 1  # floor(0.03 x 48)
    mem = memory_use(system, model, wl, gpu_cache)
    assert mem[MemoryTier.HBM].components_bytes["streamed_kv"] == 47 * 2 * 512 * 40 * 7168 * 2
    cpu_cache = flexgen_plan(system, model, wl, FlexGenPolicy(256, 2, 0.03, 0.97, 0.0, 1.0, 1.0, 0.0))
    assert not cpu_cache.streamed_kv_on_gpu and cpu_cache.decode_policy == ATTENTION_ON_CPU
    too_big = Workload(batch=512, input_len=1024, output_len=8)  # 47 x 38.8 GB of cache
    assert not flexgen_plan(
        system, model, too_big, FlexGenPolicy(256, 2, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0)
    ).streamed_kv_on_gpu
    small = load_system("spr-h100")  # OPT-30B fits its 80 GB whole at B = 1
    whole = flexgen_plan(
        small, model, Workload(batch=1, input_len=32, output_len=8), FlexGenPolicy(1, 1, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0)
    )
    assert whole.gpu_resident_layers == 48 and not whole.streamed_kv_on_gpu


def test_flexgen_baseline_is_flexgens_own_choice_and_predicted_as_flexgen_runs_it():
    system, model = load_system("spr-a100"), get_model("opt-30b")
    wl = Workload(batch=1, input_len=256, output_len=32)
    base = baselines(system, model, wl)["flexgen"]
    p = base.flexgen.solution.policy
    assert (p.gpu_batch_size, p.num_gpu_batches) == (1, 1) and p.percent()[2:4] == (0, 100)
    assert base.plan.gpu_resident_layers == int(p.weights_gpu * 48) > 0  # not the old 0
    peer = base.predict(system, model)
    runtime = predict(system, model, wl, base.plan)
    assert peer.latency_s >= runtime.latency_s  # at B = 1 the weights' PCIe copy hides the CPU attention
    # under the throughput objective FlexGen runs at its own batch gbs x num_gpu_batches, where its fp32 copy of
    # the cache makes the CPU attention, and the layer, slower than this project's runtime on the same plan
    own = baselines(system, model, wl, choose_batch=True)["flexgen"]
    assert own.workload.batch == own.flexgen.solution.policy.block_size > 1
    assert own.plan.prefill_minibatches == own.flexgen.solution.policy.num_gpu_batches
    assert own.predict(system, model).latency_s > 1.2 * predict(system, model, own.workload, own.plan).latency_s


def test_ipex_runs_everything_on_the_cpu_and_uses_no_gpu_memory():
    """Toy, B = 1, L_in = 4, L_out = 2: the LM head on the CPU reads 2,048,000 B at 100 GB/s = 20.48 us (its
    2.048 MFLOP at 1 TFLOPS take 2.048 us), on the GPU at 1000 GB/s 2.048 us; it runs in prefill and in the
    one decode step, so the CPU head adds 2 x 18.432 us."""
    system, model = toy_system(), toy_model()
    wl = Workload(batch=1, input_len=4, output_len=2)
    plan = ipex_plan(system, model, wl)
    assert head_device(plan) == Device.CPU
    mem = memory_use(system, model, wl, plan)
    assert mem[MemoryTier.HBM].required_bytes == 0.0
    assert mem[MemoryTier.DDR].components_bytes["embeddings_and_head"] == 2 * (1000 * 1024 + 1024)
    assert head_time_s(system, model, 1, Device.CPU, CpuIsa.AMX_BF16) == pytest.approx(20.48e-6, rel=1e-12)
    assert head_time_s(system, model, 1) == pytest.approx(2.048e-6, rel=1e-12)
    on_gpu = predict(system, model, wl, plan.model_copy(update={"head_device": Device.GPU}))
    assert predict(system, model, wl, plan).latency_s - on_gpu.latency_s == pytest.approx(2 * 18.432e-6, rel=1e-9)
    assert on_gpu.memory[MemoryTier.HBM].required_bytes > 0
    # unset, the head follows the plan: on the CPU when nothing runs on the GPU, else on the GPU
    derived = plan.model_copy(update={"head_device": None})
    assert head_device(derived) == Device.CPU
    assert head_device(derived.model_copy(update={"gpu_resident_layers": 1})) == Device.GPU


def test_plan_json_reports_flexgens_own_prediction_beside_ours():
    from lia_model.cli.plan import run_plan
    from lia_model.query import Query

    out = run_plan(Query(system="spr-a100", model="opt-30b", solver="enumerate")).document
    fg = out["baselines"]["flexgen"]
    own = fg["flexgen"]["flexgen_predicted"]["throughput_tokens_per_s"]
    assert own == pytest.approx(1.0256, rel=0.02)  # FlexGen's LP at the fitted spr-a100 constants
    assert fg["throughput_tokens_per_s"] == pytest.approx(own, rel=0.05)
    assert fg["lia_runtime"]["throughput_tokens_per_s"] >= fg["throughput_tokens_per_s"]
    assert fg["plan"]["gpu_resident_layers"] == 26 and fg["flexgen"]["percent"][:2] == [56, 44]
    assert fg["speedup_of_optimum"] == pytest.approx(fg["latency_s"] / out["optimum"]["latency_s"])
    ipex = out["baselines"]["ipex"]
    assert ipex["memory_gb"]["hbm"] == 0.0 and ipex["plan"]["head_device"] == 1


def test_flexgens_batch_search_stops_at_the_largest_workload_batch():
    """FlexGen's own search has no cap. On a what-if GPU of 1e7 GiB it ran past any valid batch, and 'lia plan
    --objective throughput' failed on workload.batch, blaming a --batch the user never gave. Our copy stops at
    MAX_BATCH (2^20 sequences)."""
    from lia_model.flexgen import flexgen_choice
    from lia_model.inputs import resolve_model, resolve_system
    from lia_model.workload import MAX_BATCH, make_workload

    system = resolve_system("spr-h100", ["gpu.memory_gib=1e7"])
    model = resolve_model("opt-30b")
    choice = flexgen_choice(system, model, make_workload(1, 256, 32, model), choose_batch=True)
    assert choice is not None and 1 <= choice.workload.batch <= MAX_BATCH
