"""Precision (issue 12): bytes, memory, PCIe, compute per dtype, errors and HF configs, against hand arithmetic."""

import json

import pytest

from lia_model.accounting import kv_bytes_per_token_per_layer, layer_weight_bytes, sublayer_weight_bytes, sublayer_work
from lia_model.costmodel import predict
from lia_model.costterms import CostMode, StageContext, check_precision, streamed_layer_terms, sublayer_times
from lia_model.errors import LiaInputError
from lia_model.inputs import resolve_system
from lia_model.memory import MemoryTier, memory_use
from lia_model.models import get_model, model_from_hf_config
from lia_model.plan import CpuIsa, HostTier, Plan
from lia_model.precision import BF16, KvDtype, Precision, WeightDtype, make_precision
from lia_model.sublayers import Sublayer
from lia_model.workload import make_workload

INT8 = make_precision("int8")
INT4 = make_precision("int4")  # group 128 by default
H, F = 7168, 28672  # OPT-30B


def _decode_context(precision: Precision) -> StageContext:
    """One decode step of one sequence at 300 cached tokens, weights and KV in DDR, AMX, overlap."""
    return StageContext(
        batch=1,
        q=1,
        contexts=(300,),
        minibatches=1,
        weight_tier=HostTier.DDR,
        kv_tier=HostTier.DDR,
        cpu_isa=CpuIsa.AMX_BF16,
        pinned_weights=True,
        overlap=True,
        mode=CostMode.OVERLAP,
        precision=precision,
    )


def test_opt30b_qkv_bytes_by_hand():
    """qkv of OPT-30B: a 21504 x 7168 matrix (154,140,672 elements), bias 21504 and LayerNorm 2 x 7168 (bf16)."""
    qkv = {p: sublayer_weight_bytes(get_model("opt-30b"), p)[Sublayer.QKV] for p in (BF16, INT8, INT4)}
    vectors = (21504 + 2 * 7168) * 2  # 71,680 bytes of bias and norm
    assert qkv[BF16] == 154_140_672 * 2 + vectors == 308_353_024
    # int8: 1 byte each + one bf16 scale per output row (21504 rows)
    assert qkv[INT8] == 154_140_672 + 21504 * 2 + vectors == 154_255_360
    # int4, group 128: 0.5 byte each + per group (21504 rows x 7168/128 = 56 groups) a bf16 scale and a 4-bit zero
    assert qkv[INT4] == 154_140_672 // 2 + 21504 * 56 * 2.5 + vectors == 80_152_576


def test_opt30b_layer_bytes_and_kv_by_hand():
    model = get_model("opt-30b")
    # out_proj 7168x7168 (+7168 scales, +bias 7168); fc1 28672x7168 (+28672 scales, +bias 28672, +norm 14336);
    # fc2 7168x28672 (+7168 scales, +bias 7168)
    out_proj = 51_380_224 + 7168 * 2 + 7168 * 2
    fc1 = 205_520_896 + 28672 * 2 + (28672 + 14336) * 2
    fc2 = 205_520_896 + 7168 * 2 + 7168 * 2
    assert layer_weight_bytes(model, INT8) == 154_255_360 + out_proj + fc1 + fc2 == 616_878_080
    assert layer_weight_bytes(model, BF16) == 1_233_311_744  # tests/test_physics.py's figure
    assert kv_bytes_per_token_per_layer(model, make_precision(kv_dtype="fp8")) == 2 * 7168 * 1
    assert kv_bytes_per_token_per_layer(model, make_precision(kv_dtype="int8")) == 2 * 7168 * 1
    assert kv_bytes_per_token_per_layer(model) == 2 * 7168 * 2


def test_group_size_not_dividing_k_rounds_groups_up():
    """A row of K = 7168 in groups of 100 has ceil(71.68) = 72 groups."""
    p = make_precision("int4", group_size=100)
    vectors = (21504 + 2 * 7168) * 2
    assert sublayer_weight_bytes(get_model("opt-30b"), p)[Sublayer.QKV] == 154_140_672 / 2 + 21504 * 72 * 2.5 + vectors


def test_memory_footprint_all_cpu_plan_int8_weights_fp8_kv():
    """Every layer streamed from DDR, nothing on the GPU: DDR = embeddings (bf16) + 48 layers at int8 + the KV
    of 48 layers at 1 byte + the workspace."""
    system, model = resolve_system("spr-a100"), get_model("opt-30b")
    wl = make_workload(2, 256, 32, model, make_precision("int8", "fp8"))
    plan = Plan.model_validate(
        {
            "prefill_policy": "111111",
            "decode_policy": "111111",
            "gpu_resident_layers": 0,
            "prefill_cpu_isa": "amx_bf16",
            "decode_cpu_isa": "amx_bf16",
        }
    )
    ddr = memory_use(system, model, wl, plan)[MemoryTier.DDR].components_bytes
    assert ddr["streamed_weights"] == 48 * 616_878_080
    assert ddr["streamed_kv"] == 48 * (2 * 7168 * 1) * 2 * (256 + 32)
    embeddings = (50272 * 7168 + 2050 * 7168 + 2 * 7168) * 2  # tied head; bf16 in every precision
    assert ddr["embeddings_and_head"] == embeddings
    bf16 = memory_use(system, model, make_workload(2, 256, 32, model), plan)[MemoryTier.DDR].components_bytes
    assert bf16["workspace"] == ddr["workspace"]  # activations stay bf16


def test_pcie_weight_time_halves_at_int8():
    """A streamed all-GPU decode on spr-a100 is PCIe-bound: each sublayer's weight copy is bytes / H2D + latency,
    and the decode step's time falls to about half (int8 bytes / bf16 bytes = 0.50025 per layer)."""
    system, model = resolve_system("spr-a100"), get_model("opt-30b")
    lat = system.link.transfer_latency_us * 1e-6
    bw = min(system.link.h2d_gbps, system.ddr.read_gbps) * 1e9
    terms = {p: streamed_layer_terms(system, model, _decode_context(p)) for p in (BF16, INT8)}
    assert terms[INT8].weight_h2d_s[0] == pytest.approx(154_255_360 / bw + lat, rel=1e-12)
    assert terms[BF16].weight_h2d_s[0] == pytest.approx(308_353_024 / bw + lat, rel=1e-12)
    plan = Plan.model_validate(
        {
            "prefill_policy": "000000",
            "decode_policy": "000000",
            "gpu_resident_layers": 0,
            "prefill_cpu_isa": "amx_bf16",
            "decode_cpu_isa": "amx_bf16",
        }
    )
    tpot = {p: predict(system, model, make_workload(1, 256, 32, model, p), plan).tpot_mean_s for p in (BF16, INT8)}
    pred = predict(system, model, make_workload(1, 256, 32, model, INT8), plan)
    assert pred.bound_resource["decode"] == "pcie_h2d"
    assert tpot[INT8] / tpot[BF16] == pytest.approx(616_878_080 / 1_233_311_744, abs=0.01)


def test_compute_per_dtype_by_hand():
    """fp8 on spr-h100's H100 PCIe runs its GEMMs at 1513 instead of 756 TFLOPS; AMX int8 at 4.5056 instead of 2.2528
    TOPS per core; an int4 CPU linear adds weight elements / 1280 Gelem/s of dequantisation to its FLOP time."""
    model = get_model("opt-30b")
    base = dict(
        batch=64,
        q=256,
        contexts=(256,),
        minibatches=1,
        weight_tier=HostTier.DDR,
        kv_tier=HostTier.DDR,
        cpu_isa=CpuIsa.AMX_BF16,
        pinned_weights=True,
        overlap=True,
        mode=CostMode.OVERLAP,
    )
    h100 = resolve_system("spr-h100")
    m = 64 * 256
    flops = 2.0 * m * H * F  # fc1, compute-bound at m = 16384 rows
    eff = h100.gpu.matmul_efficiency[-1].efficiency  # the plateau (m past the table's end)
    overhead = h100.gpu.op_overhead_us * 1e-6
    for p, peak in ((BF16, 756e12), (make_precision("fp8_e4m3"), 1513e12)):
        t = sublayer_times(h100, model, StageContext(**base, precision=p), 64)
        assert t.gpu_s[4, 0] - overhead == pytest.approx(flops / (peak * eff), rel=1e-9)
    spr = resolve_system("spr-a100")
    cpu_eff = spr.cpu.isa[CpuIsa.AMX_BF16].matmul_efficiency[-1].efficiency
    cpu_overhead = spr.cpu.op_overhead_us * 1e-6
    t8 = sublayer_times(spr, model, StageContext(**base, precision=INT8), 64)
    assert t8.cpu_s[4, 0] - cpu_overhead == pytest.approx(flops / (40 * 4.5056e12 * cpu_eff), rel=1e-9)
    t4 = sublayer_times(spr, model, StageContext(**base, precision=INT4), 64)
    assert t4.cpu_s[4, 0] - cpu_overhead == pytest.approx(
        flops / (40 * 2.2528e12 * cpu_eff) + 205_520_896 / 1280e9, rel=1e-9
    )


def test_decode_is_memory_bound_so_int8_weights_halve_a_cpu_linear():
    """At B = 1 a CPU fc1 reads its weights from DDR: max(FLOPs, bytes / 265 GB/s); int8 halves the bytes."""
    spr, model = resolve_system("spr-a100"), get_model("opt-30b")
    for p, nbytes in ((BF16, sublayer_weight_bytes(model)[Sublayer.FC1]), (INT8, 205_664_256)):
        t = sublayer_times(spr, model, _decode_context(p), 1)
        assert t.cpu_memory_s[4, 0] == pytest.approx((nbytes + 2 * (H + F)) / 265e9, rel=1e-9)  # + activations


def test_fp8_weights_on_an_a100_are_one_clear_error():
    with pytest.raises(LiaInputError) as err:
        check_precision(resolve_system("spr-a100"), make_precision("fp8_e4m3"))
    assert err.value.field == "--weight-dtype" and "fp8 tensor cores" in err.value.problem
    assert "int8" in err.value.fix and "spr-h100" in err.value.fix
    check_precision(resolve_system("spr-h100"), make_precision("fp8_e4m3", "fp8"))  # Hopper runs it
    with pytest.raises(LiaInputError, match="paper mode"):
        check_precision(resolve_system("paper-spr-a100"), INT8, CostMode.PAPER)


def test_precision_round_trips_and_rejects_groups_on_bf16():
    p = make_precision("int4", "int8", 64)
    assert Precision.model_validate_json(p.model_dump_json()) == p
    assert p.label() == "weights int4 (g64), KV int8"
    with pytest.raises(LiaInputError, match="--group-size"):
        make_precision("bf16", group_size=64)
    with pytest.raises(LiaInputError, match="--kv-dtype"):
        make_precision(kv_dtype="int4")


QWEN2_72B = dict(
    model_type="qwen2",
    hidden_size=8192,
    num_hidden_layers=80,
    num_attention_heads=64,
    num_key_value_heads=8,
    intermediate_size=29568,
    vocab_size=152064,
    max_position_embeddings=32768,
    torch_dtype="float16",
    tie_word_embeddings=False,
)


@pytest.mark.parametrize(
    "qc, expected",
    [
        (
            {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm", "zero_point": True},
            Precision(weight_dtype=WeightDtype.INT4, weight_group_size=128),
        ),
        (
            {"quant_method": "awq", "w_bit": 4, "q_group_size": 64},
            Precision(weight_dtype=WeightDtype.INT4, weight_group_size=64),
        ),
        (
            {"quant_method": "gptq", "bits": 4, "group_size": -1, "desc_act": False},
            Precision(weight_dtype=WeightDtype.INT4, weight_group_size=None),
        ),
        (
            {"quant_method": "gptq", "bits": 8, "group_size": 128},
            Precision(weight_dtype=WeightDtype.INT8, weight_group_size=128),
        ),
        (
            {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]},
            Precision(weight_dtype=WeightDtype.FP8_E4M3, weight_group_size=128 * 128),
        ),
        ({"quant_method": "bitsandbytes", "load_in_8bit": True}, Precision(weight_dtype=WeightDtype.INT8)),
        (
            {
                "quant_method": "compressed-tensors",
                "config_groups": {"group_0": {"weights": {"num_bits": 8, "type": "float"}}},
                "kv_cache_scheme": {"num_bits": 8, "type": "float"},
            },
            Precision(weight_dtype=WeightDtype.FP8_E4M3, kv_dtype=KvDtype.FP8),
        ),
        (None, None),
    ],
)
def test_hf_quantization_config(qc, expected):
    cfg = dict(QWEN2_72B, **({"quantization_config": qc} if qc else {}))
    assert model_from_hf_config(cfg, "qwen2-72b").checkpoint_precision == expected


def test_torch_dtype_fp8_and_unknown():
    assert model_from_hf_config(dict(QWEN2_72B, torch_dtype="float8_e4m3fn")).checkpoint_precision == Precision(
        weight_dtype=WeightDtype.FP8_E4M3
    )
    with pytest.raises(LiaInputError, match="torch_dtype"):
        model_from_hf_config(dict(QWEN2_72B, torch_dtype="complex64"))


def test_qwen2_72b_awq_config_plans_with_int4_weights(tmp_path):
    """The issue's case: a Qwen2-72B-AWQ config was sized as bf16; now its layers are int4 (g128) and the
    workload carries that precision unless --weight-dtype overrides it."""
    from lia_model.cli.common import load_inputs

    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(dict(QWEN2_72B, quantization_config={"quant_method": "awq", "bits": 4, "group_size": 128}))
    )
    _, model, wl = load_inputs("gnr-h100", str(path), 1, 256, 32, [])
    assert wl.precision == Precision(weight_dtype=WeightDtype.INT4, weight_group_size=128)
    # qkv: 8192 x (8192 + 2 x 1024) at 0.5 B + 10240 rows x 64 groups x 2.5 B; Qwen2 qkv has a bias (10240)
    # only where the config says attention_bias; this config does not, so: the RMSNorm (8192) in bf16
    assert sublayer_weight_bytes(model, wl.precision)[Sublayer.QKV] == 8192 * 10240 / 2 + 10240 * 64 * 2.5 + 8192 * 2
    _, _, override = load_inputs("gnr-h100", str(path), 1, 256, 32, [], weight_dtype="int8")
    assert override.precision == INT8


def test_attention_over_an_fp8_cache_reads_half_the_bytes():
    model = get_model("llama-3.1-70b")
    work = {p: sublayer_work(model, 4, 1, 1000, p) for p in (BF16, make_precision(kv_dtype="fp8"))}
    for sub in (Sublayer.ATTN_SCORE, Sublayer.ATTN_CONTEXT):
        assert float(work[BF16][sub].kv_read_bytes) == 4 * 1000 * 1024 * 2
        assert float(work[make_precision(kv_dtype="fp8")][sub].kv_read_bytes) == 4 * 1000 * 1024
    assert work[make_precision(kv_dtype="fp8")][Sublayer.QKV].kv_write_bytes == 2 * 4 * 1024


def test_optimiser_places_for_the_given_precision():
    """The optimum at int8 is never slower than at bf16 (same plan space, every byte smaller or equal) and its
    workload keeps the precision it was given."""
    from lia_model.optimizer import optimize

    system, model = resolve_system("spr-a100"), get_model("opt-30b")
    lat = {}
    for p in (BF16, INT8):
        result = optimize(system, model, make_workload(1, 128, 8, model, p), "latency", solver="enumerate")
        assert result.workload.precision == p and result.prediction.workload.precision == p
        lat[p] = result.prediction.latency_s
    assert lat[INT8] < lat[BF16]
