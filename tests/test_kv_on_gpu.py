"""The streamed layers' KV cache in GPU memory (plan.streamed_kv_on_gpu, FlexGen's cache on the GPU; issue 9):
what it removes from PCIe and adds to HBM, by hand, and the plans it refuses."""

import pytest

from lia_model.costmodel import predict, stage_context
from lia_model.costterms import CostMode, Resource, policy_features, streamed_layer_terms
from lia_model.errors import LiaInputError
from lia_model.memory import MemoryTier, memory_use
from lia_model.models import get_model
from lia_model.plan import ALL_GPU, ATTENTION_ON_CPU, HostTier, Plan, policy_from_index
from lia_model.profiles import load_system
from lia_model.sublayers import Stage
from lia_model.units import BYTES_PER_GB, S_PER_US
from lia_model.workload import make_workload

OPT30B_KV_DIM = 7168  # 56 heads x 128


def _setup(batch=64, input_len=32, output_len=8):
    system, model = load_system("spr-a100"), get_model("opt-30b")
    return system, model, make_workload(batch, input_len, output_len, model)


def _resource(system, model, wl, plan, stage, resource):
    ctx = stage_context(wl, plan, stage, CostMode.OVERLAP)
    terms = streamed_layer_terms(system, model, ctx)
    policy = plan.prefill_policy if stage == Stage.PREFILL else plan.decode_policy
    return terms.resources[resource].evaluate(policy_features(policy)), ctx


def test_decode_with_the_cache_on_the_gpu_fetches_no_kv_and_writes_none_back_by_hand():
    """OPT-30B, B = 64, all-GPU decode at context s: a host cache costs the link, per streamed layer and step,
    K and V of the s - 1 cached positions (64 (s - 1) 7168 x 2 B each) H2D and the new K and V (2 x 64 x 7168 x 2 B)
    D2H, each copy with the link's latency. The cache on the GPU costs neither; the weights are unchanged."""
    system, model, wl = _setup()
    host = Plan(prefill_policy=ALL_GPU, decode_policy=ALL_GPU)
    gpu = host.model_copy(update={"streamed_kv_on_gpu": True})
    h2d_host, ctx = _resource(system, model, wl, host, Stage.DECODE, Resource.PCIE_H2D)
    h2d_gpu, _ = _resource(system, model, wl, gpu, Stage.DECODE, Resource.PCIE_H2D)
    d2h_host, _ = _resource(system, model, wl, host, Stage.DECODE, Resource.PCIE_D2H)
    d2h_gpu, _ = _resource(system, model, wl, gpu, Stage.DECODE, Resource.PCIE_D2H)
    lat = system.link.transfer_latency_us * S_PER_US
    h2d_bps = min(system.link.h2d_gbps, system.ddr.read_gbps) * BYTES_PER_GB
    d2h_bps = min(system.link.d2h_gbps, system.ddr.read_gbps) * BYTES_PER_GB
    for t, s in enumerate(ctx.contexts):
        fetch = 2 * (64 * (s - 1) * OPT30B_KV_DIM * 2 / h2d_bps + lat)
        assert h2d_host[t] - h2d_gpu[t] == pytest.approx(fetch, rel=1e-12)
        assert d2h_host[t] - d2h_gpu[t] == pytest.approx(2 * 64 * OPT30B_KV_DIM * 2 / d2h_bps + lat, rel=1e-12)
    assert all(d2h_gpu == 0.0)  # all-GPU decode with the cache there: nothing crosses back


def test_prefill_with_the_cache_on_the_gpu_writes_no_kv_back():
    """All-GPU prefill of B = 64 x 32 tokens: a host cache takes the new K and V back (2 x 64 x 32 x 7168 x 2 B)."""
    system, model, wl = _setup()
    host = Plan(prefill_policy=ALL_GPU, decode_policy=ALL_GPU)
    gpu = host.model_copy(update={"streamed_kv_on_gpu": True})
    d2h_host, _ = _resource(system, model, wl, host, Stage.PREFILL, Resource.PCIE_D2H)
    d2h_gpu, _ = _resource(system, model, wl, gpu, Stage.PREFILL, Resource.PCIE_D2H)
    d2h_bps = min(system.link.d2h_gbps, system.ddr.read_gbps) * BYTES_PER_GB
    lat = system.link.transfer_latency_us * S_PER_US
    assert d2h_host[0] - d2h_gpu[0] == pytest.approx(2 * 64 * 32 * OPT30B_KV_DIM * 2 / d2h_bps + lat, rel=1e-12)


def test_the_cache_moves_from_the_host_to_hbm_with_no_staging_buffer():
    """K streamed layers' cache: K x 2 (K and V) x B (L_in + L_out) x 7168 x 2 B, in HBM instead of DDR; the one
    staging buffer a host cache needs for GPU attention goes."""
    system, model, wl = _setup(batch=8, input_len=128, output_len=32)
    host = Plan(prefill_policy=ALL_GPU, decode_policy=ALL_GPU, gpu_resident_layers=10)
    gpu = host.model_copy(update={"streamed_kv_on_gpu": True})
    per_layer = 2 * 8 * (128 + 32) * OPT30B_KV_DIM * 2
    mh, mg = memory_use(system, model, wl, host), memory_use(system, model, wl, gpu)
    assert mh[MemoryTier.DDR].components_bytes["streamed_kv"] == 38 * per_layer
    assert "streamed_kv" not in mg[MemoryTier.DDR].components_bytes
    assert mg[MemoryTier.HBM].components_bytes["streamed_kv"] == 38 * per_layer
    assert mh[MemoryTier.HBM].components_bytes["kv_staging"] == per_layer
    assert mg[MemoryTier.HBM].components_bytes["kv_staging"] == 0.0
    assert mg[MemoryTier.HBM].required_bytes - mh[MemoryTier.HBM].required_bytes == 37 * per_layer
    pred_host, pred_gpu = predict(system, model, wl, host), predict(system, model, wl, gpu)
    assert pred_gpu.tpot_mean_s < pred_host.tpot_mean_s


@pytest.mark.parametrize(
    "prefill,decode,named",
    [
        (ALL_GPU, ATTENTION_ON_CPU, "attn_score, attn_context"),
        (policy_from_index(0b000001), ALL_GPU, "qkv"),
    ],
)
def test_a_gpu_cache_with_its_writer_or_reader_on_the_cpu_is_refused(prefill, decode, named):
    with pytest.raises(ValueError, match=f"runs {named} on the CPU"):
        Plan(prefill_policy=prefill, decode_policy=decode, streamed_kv_on_gpu=True)


def test_a_gpu_cache_has_no_host_tier():
    with pytest.raises(ValueError, match="use kv_tier ddr"):
        Plan(prefill_policy=ALL_GPU, decode_policy=ALL_GPU, streamed_kv_on_gpu=True, kv_tier=HostTier.CXL)


def test_a_plan_file_says_it_in_words():
    plan = Plan(prefill_policy=ALL_GPU, decode_policy=ALL_GPU, streamed_kv_on_gpu=True)
    assert "KV in HBM" in plan.describe()
    assert Plan.model_validate(plan.model_dump(mode="json")) == plan
    with pytest.raises(ValueError):
        Plan.model_validate({**plan.model_dump(mode="json"), "streamed_kv_on_gpu": "yes"})


def test_the_runtime_refuses_a_cpu_reader_of_a_gpu_cache():
    """The runtime's own guard (the validator stops such a plan first): one error line naming the field."""
    from types import SimpleNamespace

    from lia_model.plan import Device
    from runtime.kvstore import KVStore

    with pytest.raises(LiaInputError, match="plan.streamed_kv_on_gpu"):
        KVStore._require_gpu(SimpleNamespace(li=3), Device.CPU, "attention")
