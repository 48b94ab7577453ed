"""The memory model's prefill chunks waiting for the CPU (issue 10: no out-of-memory on a plan the model accepts),
against hand-derived byte counts, and the optimiser's plans against the memory model."""

import pytest

from lia_model.memory import MemoryTier, memory_use, waiting_chunk_bytes
from lia_model.models import get_model
from lia_model.optimizer import optimize
from lia_model.plan import ALL_CPU, ALL_GPU, Device, Plan
from lia_model.profiles import load_system
from lia_model.workload import Workload, make_workload

G, C = Device.GPU, Device.CPU
LLAMA = get_model("llama-2-70b")  # h = 8192, q_dim = 64 x 128 = 8192, f = 28672, 64 heads
TOKENS = 96 * 32  # one chunk of wave2-g's B = 384, L_in = 32, 4 minibatches: 3072 tokens


@pytest.mark.parametrize(
    ("policy", "width"),
    [
        ((G, G, G, G, G, G), 0),  # no CPU sublayer: the chunks run one after another on the GPU stream
        ((C, C, C, C, C, C), 0),  # nothing on the GPU
        # CPU attention: waits at attn_score holding the GPU Q (8192); the input's GPU copy is the hidden
        # term's (fc2 on the GPU); fused attention, so no separate scores
        ((G, C, C, G, G, G), 8192),
        # CPU fc2: waits holding h_mid (out_proj on the GPU, 8192) and mid (fc1 on the GPU, 28672)
        ((G, G, G, G, G, C), 8192 + 28672),
        # CPU attn_context only: waits holding Q (8192) and the scores apart from Q (64 heads x 32 keys)
        ((G, G, C, G, G, G), 8192 + 64 * 32),
        # CPU qkv and out_proj (fc2 on the GPU): at qkv nothing of its own on the GPU (the input copy is the
        # hidden term's); at out_proj the GPU context (8192)
        ((C, G, G, C, G, G), 8192),
        # CPU qkv and fc2: at qkv the input's own GPU copy for out_proj (8192, fc2 ran on the CPU); at fc2
        # h_mid + mid (8192 + 28672), the larger
        ((C, G, G, G, G, C), 8192 + 28672),
    ],
)
def test_waiting_chunk_bytes_by_hand(policy, width):
    assert waiting_chunk_bytes(LLAMA, 96, 32, policy) == TOKENS * width * 2


def test_memory_use_charges_n_minus_one_waiting_chunks_only_with_streamed_layers():
    system = load_system("hwprofiles/systems/emr-h200-kernels.yaml")
    wl = Workload(batch=384, input_len=32, output_len=6)
    model = LLAMA.model_copy(update={"num_layers": 8})
    fc2_cpu = (G, G, G, G, G, C)
    streamed = Plan(prefill_policy=fc2_cpu, decode_policy=ALL_GPU, gpu_resident_layers=2, prefill_minibatches=4)
    hbm = memory_use(system, model, wl, streamed)[MemoryTier.HBM].components_bytes
    assert hbm["waiting_chunks"] == 3 * TOKENS * (8192 + 28672) * 2  # (n - 1) chunks of 3072 tokens: 679.5 MB
    one = streamed.model_copy(update={"prefill_minibatches": 1})
    assert memory_use(system, model, wl, one)[MemoryTier.HBM].components_bytes["waiting_chunks"] == 0.0
    resident = streamed.model_copy(update={"gpu_resident_layers": 8})
    assert memory_use(system, model, wl, resident)[MemoryTier.HBM].components_bytes["waiting_chunks"] == 0.0
    gpu_prefill = streamed.model_copy(update={"prefill_policy": ALL_GPU})
    assert memory_use(system, model, wl, gpu_prefill)[MemoryTier.HBM].components_bytes["waiting_chunks"] == 0.0
    all_cpu = streamed.model_copy(update={"prefill_policy": ALL_CPU, "decode_policy": ALL_CPU})
    assert memory_use(system, model, wl, all_cpu)[MemoryTier.HBM].components_bytes["waiting_chunks"] == 0.0


@pytest.mark.parametrize("solver", ["enumerate", "cbc"])
@pytest.mark.parametrize("batch", [30, 40])
def test_the_optimisers_plans_fit_the_memory_model_with_waiting_chunks(solver, batch):
    """OPT-30B on spr-a100, 512/32, latency: the optimum prefills with CPU attention in several chunks. Without
    the waiting chunks the optimiser picked 6 chunks at B = 30 and 5 at B = 40, plans whose waiting chunks do
    not fit in HBM; now both solvers return a plan that fits every tier of memory_use, at the same latency."""
    system, model = load_system("spr-a100"), get_model("opt-30b")
    wl = make_workload(batch, 512, 32, model)
    result = optimize(system, model, wl, "latency", solver=solver)
    assert result.plan.prefill_minibatches > 1 and Device.CPU in result.plan.prefill_policy  # the term applies
    use = memory_use(system, model, wl, result.plan)
    assert use[MemoryTier.HBM].components_bytes["waiting_chunks"] > 0
    assert all(t.fits for t in use.values()), {k.value: (t.required_gb, t.available_gb) for k, t in use.items()}
    other = optimize(system, model, wl, "latency", solver="enumerate" if solver == "cbc" else "cbc")
    assert result.prediction.latency_s == pytest.approx(other.prediction.latency_s, rel=1e-6)


def test_sublayer_live_elements_by_hand():
    """Per-token peaks of runtime/kernels.py's sublayers, in bf16 elements. Llama-2-70B: h = q = 8192, kv = 1024,
    f = 28672, RoPE, 64 heads over 8 KV heads."""
    from lia_model.memory import sublayer_live_elements
    from lia_model.sublayers import Sublayer as S

    live = sublayer_live_elements(LLAMA, 32, decode=False, split_attention=False)
    assert live[S.QKV] == 8192 + (8192 + 2 * 1024) + 4.5 * 8192  # normed, fused, RoPE's fp32 halves and results
    assert live[S.ATTN_SCORE] == 0 and live[S.ATTN_CONTEXT] == 3 * 8192  # fused (SDPA)
    assert live[S.OUT_PROJ] == 8192 + 8192
    assert live[S.FC1] == 2 * 8192 + 2 * 28672 + 2 * 28672  # h_mid, normed, gate + up, SiLU(gate), product
    assert live[S.FC2] == 8192 + 28672
    grouped = sublayer_live_elements(LLAMA, 38, decode=True, split_attention=False)
    assert grouped[S.ATTN_CONTEXT] == 3 * 8192 + 2 * 64 * 38  # grouped decode: scores and probabilities
    split = sublayer_live_elements(LLAMA, 32, decode=False, split_attention=True)
    assert split[S.ATTN_SCORE] == 2 * 8192 + 64 * 32 and split[S.ATTN_CONTEXT] == 2 * 64 * 32 + 2 * 8192
    opt = sublayer_live_elements(get_model("opt-30b"), 32, decode=False, split_attention=False)
    assert opt[S.QKV] == 7168 + 3 * 7168 + 3 * 7168  # no RoPE: the contiguous Q, K, V copies
    assert opt[S.FC1] == 2 * 7168 + 28672  # ReLU in place


def test_split_attention_costs_its_scores_only_for_policies_that_split_it():
    """OPT-30B, B = 1, a 2016-token prompt: split attention holds scores and probabilities, 2 x 56 x 2016 per
    token, and ctx twice: 240128 elements per token against the fused largest (qkv, 50176): (240128 - 50176)
    x 2016 tokens x 2 bytes = 765,886,464 bytes, charged only when attn_score and attn_context are apart."""
    system = load_system("hwprofiles/systems/emr-h200-kernels.yaml")
    model = get_model("opt-30b").model_copy(update={"num_layers": 4})
    wl = Workload(batch=1, input_len=2016, output_len=4)
    split = Plan(prefill_policy=(G, G, C, G, G, G), decode_policy=ALL_GPU, gpu_resident_layers=1)
    hbm = memory_use(system, model, wl, split)[MemoryTier.HBM].components_bytes
    assert hbm["split_attention"] == (240128 - 50176) * 2016 * 2
    fused = split.model_copy(update={"prefill_policy": (G, C, C, G, G, G)})
    assert memory_use(system, model, wl, fused)[MemoryTier.HBM].components_bytes["split_attention"] == 0.0
