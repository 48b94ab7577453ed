"""The executor runs int8 and fp8 weights (per output channel, issue 12): its stored bytes are the cost model's,
and every placement computes the function the stored weights define (CPU; the "fake" backend stands the GPU in
with separate CPU allocations, so streamed quantised weights are really copied)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from lia_model.accounting import sublayer_weight_bytes  # noqa: E402
from lia_model.errors import LiaInputError  # noqa: E402
from lia_model.models import get_model  # noqa: E402
from lia_model.plan import ALL_CPU, ALL_GPU, Plan, policy_from_index  # noqa: E402
from lia_model.precision import WeightDtype, make_precision  # noqa: E402
from lia_model.sublayers import Sublayer  # noqa: E402
from lia_model.workload import Workload  # noqa: E402
from runtime import kernels  # noqa: E402
from runtime.backend import Backend  # noqa: E402
from runtime.executor import Executor, random_prompt  # noqa: E402
from runtime.hostmem import HostArena  # noqa: E402
from runtime.reference import LOGITS_RTOL, check_against_reference  # noqa: E402
from runtime.weights import ModelWeights, check_runnable, layer_layout  # noqa: E402
from tests.toys import toy_decoder  # noqa: E402

TINY = dict(layers=3, hidden=64, heads=4, head_dim=16, vocab=128, context=64)
TINY_OPT = toy_decoder("tiny-opt", ffn=256, kv_heads=4, **TINY)
TINY_LLAMA = toy_decoder("tiny-llama", ffn=160, kv_heads=2, llama=True, **TINY)
CPU = torch.device("cpu")
PLANS = (
    Plan(prefill_policy=ALL_CPU, decode_policy=ALL_CPU, gpu_resident_layers=0),
    Plan(prefill_policy=ALL_GPU, decode_policy=ALL_GPU, gpu_resident_layers=1),
    # prefill (0,1,0,1,1,0) and decode (1,0,1,0,0,1) with 2 prefill chunks: every crossing, streamed weights
    Plan(
        prefill_policy=policy_from_index(0b011010),
        decode_policy=policy_from_index(0b100101),
        gpu_resident_layers=0,
        prefill_minibatches=2,
    ),
)


def _weights(model, weight_dtype: str, seed: int = 3) -> ModelWeights:
    backend = Backend("fake")
    layout = layer_layout(model, WeightDtype(weight_dtype))
    arena = HostArena(
        backend, layout.numel * model.num_layers, pinned=True, random_fill=True, seed=seed, fan_in=model.hidden_size
    )
    return ModelWeights(model, arena, backend, seed=seed, weight_dtype=WeightDtype(weight_dtype))


def _run(weights: ModelWeights, plan: Plan, weight_dtype: str):
    workload = Workload(batch=4, input_len=7, output_len=4, precision=make_precision(weight_dtype))
    ex = Executor(Backend("fake"), weights, plan, workload)
    prompt = random_prompt(weights.model, workload, seed=1)
    result = ex.generate(prompt, keep_logits=True)
    return check_against_reference(weights, prompt, result.tokens, result.logits, CPU)


def test_opt30b_int8_qkv_region_holds_the_hand_counted_bytes():
    """OPT-30B (h = 7168) qkv in int8: W 3h x h at one byte, 3h bf16 scales, 3h bf16 biases and the LayerNorm's
    2h bf16 values: 3h^2 + 16h = 154,255,360 bytes (a multiple of 16: no padding), the cost model's figure."""
    m = get_model("opt-30b")
    h = 7168
    region = layer_layout(m, WeightDtype.INT8).regions[Sublayer.QKV]
    assert region.numel * 2 == 3 * h * h + 16 * h == 154_255_360
    assert sublayer_weight_bytes(m, make_precision("int8"))[Sublayer.QKV] == 154_255_360


@pytest.mark.parametrize("name", ["opt-30b", "llama-2-70b", "opt-175b"])
@pytest.mark.parametrize("weight_dtype", ["int8", "fp8_e4m3"])
def test_quantised_layout_stores_the_cost_models_bytes(name: str, weight_dtype: str):
    """Every region's stored bytes are lia_model.accounting's at that precision, plus under 16 bytes of alignment;
    the layer is about half its bf16 size."""
    m = get_model(name)
    layout = layer_layout(m, WeightDtype(weight_dtype))
    expected = sublayer_weight_bytes(m, make_precision(weight_dtype))
    for sub, region in layout.regions.items():
        assert 0 <= region.numel * 2 - expected[sub] < 16
    assert 0.50 < layout.numel / layer_layout(m).numel < 0.51


def test_quantised_views_have_their_dtypes_and_dequantise_near_the_bf16_spread():
    weights = _weights(TINY_LLAMA, "int8")
    v = weights.host_views(0, Sublayer.FC1)
    assert v["w"].dtype == torch.int8 and v["w"].shape == (320, 64) and v["w_scale"].dtype == torch.bfloat16
    assert v["w_scale"].shape == (320,) and int(v["w"].abs().max()) <= 127
    bound = (3.0 / 64) ** 0.5
    dense = v["w"].float() * v["w_scale"].float()[:, None]
    assert 0.8 * bound < float(dense.abs().max()) < 1.15 * bound  # the bf16 fill's U(-a, a), a = sqrt(3 / fan_in)
    f = _weights(TINY_OPT, "fp8_e4m3").host_views(1, Sublayer.QKV)
    assert f["w"].dtype == torch.float8_e4m3fn and f["w"].shape == (192, 64) and f["norm_b"].shape == (64,)


@pytest.mark.parametrize("model", [TINY_OPT, TINY_LLAMA], ids=["opt", "llama"])
@pytest.mark.parametrize("weight_dtype", ["int8", "fp8_e4m3"])
def test_every_placement_computes_the_dequantised_function(model, weight_dtype: str):
    weights = _weights(model, weight_dtype)
    for plan in PLANS:
        check = _run(weights, plan, weight_dtype)
        assert check["logits_rel_err"] < LOGITS_RTOL, (plan, check)
        assert check["tokens_match_frac"] == 1.0


def test_a_five_percent_wrong_scale_is_caught(monkeypatch):
    """The check can fail: int8 linears that apply their scales 5% too large (logits error about 6%) fall outside the
    tolerance that the correct run meets."""
    weights = _weights(TINY_OPT, "int8")
    right = _run(weights, PLANS[0], "int8")["logits_rel_err"]
    real = kernels.linear_int8
    monkeypatch.setattr(kernels, "linear_int8", lambda x, q, s, b, **kw: real(x, q, s * 1.05, b, **kw))
    wrong = _run(weights, PLANS[0], "int8")["logits_rel_err"]
    assert right < LOGITS_RTOL < wrong


def test_what_the_runtime_cannot_run_is_refused_clearly():
    with pytest.raises(LiaInputError, match="does not run int4"):
        check_runnable(make_precision("int4"))
    with pytest.raises(LiaInputError, match="per output channel"):
        check_runnable(make_precision("int8", group_size=128))
    with pytest.raises(LiaInputError, match="KV cache in bf16"):
        check_runnable(make_precision("int8", kv_dtype="fp8"))
    bf16 = _weights(TINY_OPT, "bf16")
    workload = Workload(batch=4, input_len=7, output_len=4, precision=make_precision("int8"))
    with pytest.raises(LiaInputError, match="stored in bf16"):
        Executor(Backend("fake"), bf16, PLANS[0], workload)


def test_gpu_dequantisation_runs_in_pieces_and_gives_the_same_product(monkeypatch):
    """A dequantising linear over pieces of rows (each bf16 piece at most DEQUANT_PIECE_BYTES) equals the
    one-piece product exactly: the same bf16 GEMM per output element."""
    from runtime.kernels import dequantize_int8, linear, linear_int8, quantize_int8_per_channel

    g = torch.Generator().manual_seed(4)
    w = torch.randn(96, 64, generator=g).to(torch.bfloat16)
    x = torch.randn(2, 3, 64, generator=g).to(torch.bfloat16)
    b = torch.randn(96, generator=g).to(torch.bfloat16)
    resid = torch.randn(2, 3, 96, generator=g).to(torch.bfloat16)
    q, s = quantize_int8_per_channel(w)
    whole = linear_int8(x, q, s, b, resid=resid, fused=False)
    assert torch.equal(whole, linear(x, dequantize_int8(q, s), b, resid=resid))
    monkeypatch.setattr(kernels, "DEQUANT_PIECE_BYTES", 64 * 2 * 10)  # 10 rows of K = 64 in bf16 per piece
    pieces = linear_int8(x, q, s, b, resid=resid, fused=False)
    assert torch.equal(pieces, whole)


def test_the_memory_model_charges_the_quantisation_piece():
    """HBM workspace at int8 or fp8 = the bf16 workspace + 32 MiB (runtime/kernels.py's largest temporary of a
    quantised linear: a dequantised weight piece, or an fp8 GEMM's activation piece); the host workspace is
    unchanged."""
    from lia_model.memory import DEQUANT_PIECE_BYTES, memory_constants
    from lia_model.profiles import load_system

    system, model = load_system("spr-h100"), get_model("opt-30b")

    def ws(dtype: str):
        c = memory_constants(
            system, model, Workload(batch=8, input_len=64, output_len=8, precision=make_precision(dtype)), 1
        )
        return c.gpu_workspace_bytes, c.host_workspace_bytes

    assert DEQUANT_PIECE_BYTES == 32 * 2**20
    assert ws("int8")[0] - ws("bf16")[0] == 32 * 2**20 and ws("int8")[1] == ws("bf16")[1]
    assert ws("fp8_e4m3")[0] - ws("bf16")[0] == 32 * 2**20 and ws("fp8_e4m3")[1] == ws("bf16")[1]


def test_validation_runs_quantised_points_and_refills_the_arena_for_a_bf16_model_after_them():
    """lia validate's point runner (fake GPU, datasheet profile spr-h100): an int8 and an fp8 group of one toy
    model and a bf16 group of another share one weight arena; each runs its optimum, matches the reference forward,
    and records its weight dtype. The bf16 model runs after the quantised ones wrote int8/fp8 bytes over the
    arena's fill, so it sees a refilled arena (else its weights would read as garbage and its logits check fail)."""
    from lia_model.profiles import load_system
    from runtime.points import GroupSpec, runtime_isa
    from runtime.validate import Options, resolve_points, run_points

    a = TINY_OPT.model_copy(update={"name": "a-tiny"}).model_dump()
    b = TINY_OPT.model_copy(update={"name": "b-tiny"}).model_dump()
    common = dict(batch=2, input_len=6, output_len=3, plans=["optimal"], check=True, repeats=1)
    groups = [
        GroupSpec(id="a-int8", model=a, weight_dtype="int8", **common),
        GroupSpec(id="a-fp8", model=a, weight_dtype="fp8_e4m3", **common),
        GroupSpec(id="b-bf16", model=b, **common),
    ]
    system = load_system("spr-h100")
    points = resolve_points(groups, system, Options(), runtime_isa(), has_gpu=True)
    rows = {r["group_id"]: r for r in run_points(points, system, Options(), echo=lambda _: None, fake_gpu=True)}
    assert {g: r["weight_dtype"] for g, r in rows.items()} == {"a-int8": "int8", "a-fp8": "fp8_e4m3", "b-bf16": "bf16"}
    for g, r in rows.items():
        assert r["status"] == "ran", (g, r.get("skip_reason"))
        assert r["logits_rel_err"] < LOGITS_RTOL, g


def test_a_points_file_with_an_unknown_weight_dtype_names_the_group():
    from runtime.points import GroupSpec, group_model, group_workload

    g = GroupSpec(id="g1", model="opt-30b", batch=1, input_len=8, output_len=2, weight_dtype="int3")
    with pytest.raises(LiaInputError, match="group g1: weight_dtype: unknown weight dtype 'int3'"):
        group_workload(g, group_model(g)[0])


def test_two_quantised_models_in_a_row_and_the_data_flow_check():
    """Two different toy models, both int8, one after the other on one arena (lia validate's order): the second
    sees a refilled arena, not the first's int8 bytes read as its bf16 biases (NaN before the fix); and the data-flow
    check (runtime/dataflow.py) expects the quantised layout's copy bytes: no problem on a streaming plan."""
    from lia_model.profiles import load_system
    from runtime.points import GroupSpec, runtime_isa
    from runtime.validate import Options, resolve_points, run_points

    a = TINY_OPT.model_copy(update={"name": "a-tiny"}).model_dump()
    b = TINY_LLAMA.model_copy(update={"name": "b-tiny"}).model_dump()
    c = TINY_OPT.model_copy(update={"name": "c-tiny"}).model_dump()
    plan = PLANS[2].model_dump(mode="json")
    common = dict(batch=2, input_len=6, output_len=3, plans=[plan], check=True, repeats=1, weight_dtype="int8")
    groups = [GroupSpec(id=f"{m['name']}-int8", model=m, **common) for m in (a, b, c)]
    system = load_system("spr-h100")
    points = resolve_points(groups, system, Options(), runtime_isa(), has_gpu=True)
    rows = run_points(points, system, Options(), echo=lambda _: None, fake_gpu=True)
    for r in rows:
        assert r["status"] == "ran", r.get("skip_reason")
        assert r["logits_rel_err"] < LOGITS_RTOL, r["group_id"]
        assert r["dataflow_problems"] == 0, r["group_id"]


def test_a_group_the_runtime_cannot_run_is_skipped_with_its_name():
    """weight_dtype int4 is priced by the cost model but not run: that group alone is skipped, naming it."""
    from lia_model.profiles import load_system
    from runtime.points import GroupSpec, runtime_isa
    from runtime.validate import Options, resolve_points

    g = GroupSpec(id="g4", model="opt-30b", num_layers=2, batch=1, input_len=8, output_len=2, weight_dtype="int4")
    (point,) = resolve_points([g], load_system("spr-h100"), Options(), runtime_isa(), has_gpu=True)
    assert point.skip_reason.startswith("group g4: weight_dtype: the runtime does not run int4")


def test_fp8_gemm_quantises_activations_in_pieces_with_the_same_result(monkeypatch):
    """linear_fp8 through torch._scaled_mm (it runs on this torch's CPU too) over pieces of 2 rows equals the
    one-piece product exactly (each row's activation scale is its own), and is within the stated 8% (Frobenius) of
    the dequantised-weight bf16 product (tests/test_runtime_lowp.py's tolerance for per-token e4m3 activations)."""
    from runtime.kernels import _dequantised_piece, linear, linear_fp8, quantize_fp8_rows_bf16_scales

    g = torch.Generator().manual_seed(5)
    w = torch.randn(48, 64, generator=g)
    x = torch.randn(7, 64, generator=g).to(torch.bfloat16)
    b = torch.randn(48, generator=g).to(torch.bfloat16)
    resid = torch.randn(7, 48, generator=g).to(torch.bfloat16)
    q, s = quantize_fp8_rows_bf16_scales(w)
    try:
        whole = linear_fp8(x, q, s, b, resid=resid, scaled_mm=True)
    except (RuntimeError, NotImplementedError):
        pytest.skip("this torch has no _scaled_mm on the CPU")
    monkeypatch.setattr(kernels, "DEQUANT_PIECE_BYTES", 64 * 5 * 2)  # 2 rows of K = 64 (fp32 + e4m3) per piece
    assert torch.equal(linear_fp8(x, q, s, b, resid=resid, scaled_mm=True), whole)
    ref = linear(x, _dequantised_piece(q, s, torch.bfloat16), b, resid=resid)
    assert float((whole.float() - ref.float()).norm() / ref.float().norm()) < 0.08
