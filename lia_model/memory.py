"""Memory accounting per tier (HBM, DDR, CXL) with explicit headroom.

With K = num_layers - N_res streamed layers, sigma = [K > 0], g_i = 1 when sublayer i runs on the GPU in
prefill or decode, and a = 1 when any attention sublayer runs on the GPU:

  HBM  = e embeddings + N_res (W_layer + KV_layer) + sigma 2 sum_i g_i W_i + sigma a KV_layer [KV in host]
         + K KV_layer [KV on GPU] + u workspace_gpu(n) + sigma u [(n - 1) waiting(p_pre) + split(p_pre)]
  DDR  = (1 - e) embeddings + (K - K_cxl) W_layer + K KV_layer [KV in DDR] + workspace_host(n)
  CXL  = K_cxl W_layer + K KV_layer [KV in CXL]

[KV on GPU] = plan.streamed_kv_on_gpu (the streamed layers' KV cache in HBM: no staging copy, no host cache);
[KV in host] = 1 - [KV on GPU], and then the cache is in the plan's kv_tier.

e = 1 when the embeddings and LM head live on the GPU (lia_model.plan.head_device), u = 1 when the plan uses
the GPU at all (a GPU sublayer, a resident layer or the head there): a plan with everything on the CPU uses
no HBM. K_cxl: streamed layers whose weights are in CXL (all K with weight_tier cxl, plan.cxl_weight_layers
with a split, else 0).

W_i: stored weights of sublayer i; W_layer = sum_i W_i; KV_layer = K and V of B * (L_in + L_out) tokens; both
at the workload's precision (lia_model.accounting: bytes per element and group scales), the embeddings in bf16.
The 2 sum_i g_i W_i term is the pair of alternating streaming buffers; sigma a KV_layer stages one streamed
layer's KV on the GPU for GPU attention. The workspace is the prefill hidden state of the whole batch
(input and output, 2 B L_in h) plus the largest sublayer peak of one chunk or decode step
(``sublayer_live_elements``: each kernel's live buffers and temporaries).

With n > 1 prefill chunks and a prefill policy p that runs some sublayer on the CPU, the runtime issues every
chunk's GPU sublayers up to its next CPU sublayer, so n - 1 chunks can wait there while the CPU works on one.
HBM then also holds sigma u (n - 1) waiting(p): ``waiting_chunk_bytes``, the largest set of one chunk's values
on the GPU at a CPU sublayer it waits for (runtime/executor.py drops each value after its last reader).
split(p): a prefill policy with attn_score and attn_context on different devices materialises the scores
(``split_attention_bytes``); fused attention (SDPA) does not.
With quantised weights the GPU workspace also holds DEQUANT_PIECE_BYTES: the runtime dequantises int8 (int4)
weights into bf16 pieces of at most that size, and quantises an fp8 GEMM's activations in pieces of rows of that
size (runtime/kernels.py). It is charged with the workspace, whenever the plan uses the GPU (at most 32 MiB too
much for a plan whose GPU runs attention or the head only).
Available per tier = capacity (1 - headroom) - reserved (CUDA context on the GPU, OS on the host).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

from lia_model.accounting import (
    embedding_weight_bytes,
    kv_cache_bytes_per_layer,
    layer_weight_bytes,
    sublayer_weight_bytes,
)
from lia_model.hardware import SystemSpec
from lia_model.models import ModelSpec
from lia_model.plan import Device, HostTier, Plan, head_device, policy_from_index, policy_index
from lia_model.precision import WeightDtype
from lia_model.sublayers import ATTENTION_SUBLAYERS, NUM_SUBLAYERS, SUBLAYERS, Sublayer
from lia_model.units import BF16_BYTES, BYTES_PER_GB, BYTES_PER_GIB
from lia_model.workload import Workload

# The temporary of a quantised GPU linear: the runtime unpacks int8 (int4) weights piece by piece into at most this
# many bf16 bytes (runtime/kernels.py _dequantised_linear), and quantises an fp8 GEMM's activations in pieces of rows
# whose fp32 and e4m3 copies fit it (linear_fp8), never a whole matrix.
DEQUANT_PIECE_BYTES = 32 * 2**20


class MemoryTier(str, Enum):
    HBM = "hbm"
    DDR = "ddr"
    CXL = "cxl"


@dataclass(frozen=True)
class MemoryConstants:
    """The coefficients of the memory formulas above for one (system, model, workload, n)."""

    embedding_bytes: float
    layer_weight_bytes: float
    sublayer_weight_bytes: tuple[float, ...]
    kv_layer_bytes: float
    gpu_workspace_bytes: float
    host_workspace_bytes: float
    available_bytes: dict[MemoryTier, float]
    # (n - 1) waiting(p) of every prefill policy p (by policy_index): HBM of the chunks waiting for the CPU
    waiting_chunks_bytes: tuple[float, ...] = (0.0,) * (1 << NUM_SUBLAYERS)
    # split_attention_bytes for the prefill policies p with attn_score and attn_context apart, else 0
    split_attention_bytes: tuple[float, ...] = (0.0,) * (1 << NUM_SUBLAYERS)

    @property
    def prefill_policy_bytes(self) -> tuple[float, ...]:
        """What HBM a streamed prefill policy adds to ws(n): its waiting chunks and its split attention."""
        return tuple(w + s for w, s in zip(self.waiting_chunks_bytes, self.split_attention_bytes))


def available_bytes(system: SystemSpec) -> dict[MemoryTier, float]:
    keep = 1.0 - system.memory_headroom_fraction
    out = {
        MemoryTier.HBM: system.gpu.memory_gib * BYTES_PER_GIB * keep - system.gpu.reserved_gib * BYTES_PER_GIB,
        MemoryTier.DDR: system.ddr.capacity_gib * BYTES_PER_GIB * keep - system.host_reserved_gib * BYTES_PER_GIB,
        MemoryTier.CXL: (system.cxl.capacity_gib * BYTES_PER_GIB * keep) if system.cxl is not None else 0.0,
    }
    return out


def sublayer_live_elements(model: ModelSpec, keys: int, decode: bool, split_attention: bool) -> dict[Sublayer, float]:
    """bf16 elements per token that one chunk's sublayer holds at its peak in runtime/kernels.py, beyond the
    chunk's input and output (in the hidden term); ``keys``: the positions attention reads. Widths: h hidden,
    q = q_dim, kv = kv_dim, f = ffn_size, S = num_heads x keys (scores per token).

      qkv          h + (q + 2 kv) + max(9/2 q [RoPE], q + 2 kv)  normed input, fused output; then RoPE's fp32
                                                                 halves and results, or the contiguous Q, K, V
      attention    3 q (+ 2 S: GQA decode)                       Q, SDPA's output, its [b, q, H d] copy
                                                                 (grouped decode: scores and probabilities too)
      split        score: 2 q + S; context: 2 S + 2 q            Q and its scaled groups, scores; probabilities,
                                                                 ctx and its permuted copy
      out_proj     q + h                                         ctx, h_mid
      fc1          2 h + m f (+ 2 f gated)                       h_mid, normed input, up (and gate), SiLU(gate)
                                                                 and the product
      fc2          h + f                                         h_mid, mid

    Measured on the GPU host: with input + output per sublayer and fc1's temporaries only, the runtime's peak ran
    up to 4.2% above the model (runtime/validation/wave2-h/; the contiguous Q, K, V copies, RoPE, and the
    embedding output the runtime then kept); with this form and the runtime freeing the embedding output, at
    most 0.4% above it (wave2-i/)."""
    h, q, kv, f = model.hidden_size, model.q_dim, model.kv_dim, model.ffn_size
    scores = model.num_heads * keys
    grouped_decode = decode and model.num_heads > model.num_kv_heads
    out = {
        Sublayer.QKV: h + (q + 2 * kv) + max(4.5 * q if model.uses_rope else 0.0, q + 2 * kv),
        Sublayer.ATTN_SCORE: 2 * q + scores if split_attention else 0.0,
        Sublayer.ATTN_CONTEXT: 2 * scores + 2 * q if split_attention else 3 * q + (2 * scores if grouped_decode else 0),
        Sublayer.OUT_PROJ: q + h,
        Sublayer.FC1: 2 * h + model.mlp_matrices * f + (2 * f if model.gated_mlp else 0),
        Sublayer.FC2: h + f,
    }
    return {k: float(v) for k, v in out.items()}


def _largest_live_bytes(model: ModelSpec, workload: Workload, chunk: int, split_prefill: bool) -> float:
    """The largest sublayer peak of one prefill chunk or of a decode step (split attention in decode counted
    always: small; in prefill only for ``split_prefill``)."""
    tokens, keys = chunk * workload.input_len, workload.input_len
    prefill = max(sublayer_live_elements(model, keys, False, split_prefill).values()) * tokens
    decode = max(sublayer_live_elements(model, keys + workload.output_len, True, True).values()) * workload.batch
    return max(prefill, decode) * BF16_BYTES


def workspace_bytes(model: ModelSpec, workload: Workload, minibatches: int) -> float:
    """ws(n) = 2 B L_in h (the whole batch's prefill input and output) + the largest sublayer peak of one chunk
    (``sublayer_live_elements``, attention fused in prefill), all bf16."""
    hidden = 2.0 * workload.batch * workload.input_len * model.hidden_size * BF16_BYTES
    return hidden + _largest_live_bytes(model, workload, workload.batch // minibatches, split_prefill=False)


def split_attention_bytes(model: ModelSpec, workload: Workload, minibatches: int) -> float:
    """What a prefill policy with attn_score and attn_context on different devices adds to ws(n): its split
    attention's peak over the fused one's largest, or 0."""
    chunk = workload.batch // minibatches
    return _largest_live_bytes(model, workload, chunk, True) - _largest_live_bytes(model, workload, chunk, False)


# What a prefill chunk holds between sublayers, by the sublayer it waits for (runtime/executor.py drops q and the
# scores after attn_context, h and ctx after out_proj, h_mid and mid after fc2):
#   qkv {h}, attn_score {h, q}, attn_context {h, q, scores}, out_proj {h, ctx}, fc1 {h_mid}, fc2 {h_mid, mid}
_LIVE_BEFORE: dict[Sublayer, tuple[str, ...]] = {
    Sublayer.QKV: ("h",),
    Sublayer.ATTN_SCORE: ("h", "q"),
    Sublayer.ATTN_CONTEXT: ("h", "q", "scores"),
    Sublayer.OUT_PROJ: ("h", "ctx"),
    Sublayer.FC1: ("h_mid",),
    Sublayer.FC2: ("h_mid", "mid"),
}
# A value is (at most) on the GPU when a GPU sublayer produces or reads it: its producer and readers
_TOUCHED_BY: dict[str, tuple[Sublayer, ...]] = {
    "h": (Sublayer.QKV, Sublayer.OUT_PROJ),  # the layer input: a GPU copy beyond the hidden term's (below)
    "q": (Sublayer.QKV, Sublayer.ATTN_SCORE),
    "scores": (Sublayer.ATTN_SCORE, Sublayer.ATTN_CONTEXT),
    "ctx": (Sublayer.ATTN_CONTEXT, Sublayer.OUT_PROJ),
    "h_mid": (Sublayer.OUT_PROJ, Sublayer.FC1, Sublayer.FC2),
    "mid": (Sublayer.FC1, Sublayer.FC2),
}


def _splits_attention(policy: tuple[Device, ...]) -> bool:
    """attn_score and attn_context on different devices: two kernels and the scores between them."""
    dev = dict(zip(SUBLAYERS, policy))
    return dev[Sublayer.ATTN_SCORE] != dev[Sublayer.ATTN_CONTEXT]


def waiting_chunk_bytes(model: ModelSpec, chunk: int, input_len: int, prefill_policy: tuple[Device, ...]) -> float:
    """waiting(p): the GPU bytes of one prefill chunk (``chunk`` sequences of ``input_len`` tokens, bf16
    activations) waiting at a CPU sublayer of ``prefill_policy``, the largest over its CPU sublayers; 0 with
    no CPU sublayer (the chunks run one after another on the GPU stream). The scores exist apart from Q only
    when attn_score and attn_context run on different devices (else one fused kernel)."""
    width = _waiting_width(
        model.hidden_size, model.q_dim, model.num_heads, model.ffn_size, input_len, tuple(prefill_policy)
    )
    return float(chunk * input_len * width * BF16_BYTES)


@lru_cache(maxsize=8192)  # a pure function of its arguments: memory_constants asks it for 64 vectors per call
def _waiting_width(
    hidden: int, q_dim: int, heads: int, ffn: int, input_len: int, prefill_policy: tuple[Device, ...]
) -> int:
    """The elements per token that ``waiting_chunk_bytes`` counts (its docstring)."""
    dev = dict(zip(SUBLAYERS, prefill_policy))
    width = {
        "h": hidden,
        "q": q_dim,
        "scores": heads * input_len if _splits_attention(prefill_policy) else 0,
        "ctx": q_dim,
        "h_mid": hidden,
        "mid": ffn,
    }
    on_gpu = {v: any(dev[s] == Device.GPU for s in subs) for v, subs in _TOUCHED_BY.items()}
    # The input's GPU copy is the hidden term's when the previous layer's fc2 ran on the GPU (a streamed layer
    # follows a streamed layer of the same policy, or a resident layer); a copy of its own only after a CPU fc2
    on_gpu["h"] = on_gpu["h"] and dev[Sublayer.FC2] == Device.CPU
    held = [sum(width[v] for v in _LIVE_BEFORE[s] if on_gpu[v]) for s in SUBLAYERS if dev[s] == Device.CPU]
    return max(held, default=0)


# Every policy vector by index (policy_from_index), and whether it splits attention: read by memory_constants
# for all 64 vectors on every call (built once; policy_from_index makes six enum values per call).
_ALL_POLICIES: tuple[tuple[Device, ...], ...] = tuple(policy_from_index(k) for k in range(1 << NUM_SUBLAYERS))
_SPLITS_BY_POLICY: tuple[bool, ...] = tuple(_splits_attention(p) for p in _ALL_POLICIES)


def memory_constants(system: SystemSpec, model: ModelSpec, workload: Workload, minibatches: int) -> MemoryConstants:
    precision = workload.precision
    per_sublayer = sublayer_weight_bytes(model, precision)
    ws = workspace_bytes(model, workload, minibatches)
    dequant = DEQUANT_PIECE_BYTES if precision.weight_dtype != WeightDtype.BF16 else 0.0
    split = split_attention_bytes(model, workload, minibatches)
    return MemoryConstants(
        embedding_bytes=embedding_weight_bytes(model),
        layer_weight_bytes=layer_weight_bytes(model, precision),
        sublayer_weight_bytes=tuple(per_sublayer[s] for s in SUBLAYERS),
        kv_layer_bytes=kv_cache_bytes_per_layer(
            model, workload.batch, workload.input_len + workload.output_len, precision
        ),
        gpu_workspace_bytes=ws + dequant,
        host_workspace_bytes=ws,
        available_bytes=available_bytes(system),
        waiting_chunks_bytes=tuple(
            (minibatches - 1) * waiting_chunk_bytes(model, workload.batch // minibatches, workload.input_len, policy)
            for policy in _ALL_POLICIES
        ),
        split_attention_bytes=tuple(split if splits else 0.0 for splits in _SPLITS_BY_POLICY),
    )


@dataclass(frozen=True)
class TierUse:
    tier: MemoryTier
    components_bytes: dict[str, float]
    available_bytes: float

    @property
    def required_bytes(self) -> float:
        return sum(self.components_bytes.values())

    @property
    def shortfall_bytes(self) -> float:
        return max(0.0, self.required_bytes - self.available_bytes)

    @property
    def fits(self) -> bool:
        return self.required_bytes <= self.available_bytes

    @property
    def required_gb(self) -> float:
        return self.required_bytes / BYTES_PER_GB

    @property
    def available_gb(self) -> float:
        return self.available_bytes / BYTES_PER_GB

    @property
    def shortfall_gb(self) -> float:
        return self.shortfall_bytes / BYTES_PER_GB


def gpu_buffer_flags(plan: Plan) -> tuple[bool, ...]:
    """g_i: sublayer i needs a GPU streaming buffer (it runs on the GPU in prefill or decode)."""
    return tuple(p == Device.GPU or d == Device.GPU for p, d in zip(plan.prefill_policy, plan.decode_policy))


def attention_on_gpu(plan: Plan) -> bool:
    return any(
        pol[i] == Device.GPU
        for pol in (plan.prefill_policy, plan.decode_policy)
        for i, s in enumerate(SUBLAYERS)
        if s in ATTENTION_SUBLAYERS
    )


def memory_use(system: SystemSpec, model: ModelSpec, workload: Workload, plan: Plan) -> dict[MemoryTier, TierUse]:
    c = memory_constants(system, model, workload, plan.prefill_minibatches)
    resident = plan.gpu_resident_layers
    streamed = model.num_layers - resident
    sigma = 1.0 if streamed > 0 else 0.0
    buffers = 2.0 * sum(w for w, g in zip(c.sublayer_weight_bytes, gpu_buffer_flags(plan)) if g)
    head_on_gpu = head_device(plan) == Device.GPU
    uses_gpu = head_on_gpu or resident > 0 or any(gpu_buffer_flags(plan))
    hbm = {
        "embeddings_and_head": c.embedding_bytes if head_on_gpu else 0.0,
        "resident_weights": resident * c.layer_weight_bytes,
        "resident_kv": resident * c.kv_layer_bytes,
        "streaming_buffers": sigma * buffers,
        "kv_staging": sigma * (c.kv_layer_bytes if attention_on_gpu(plan) and not plan.streamed_kv_on_gpu else 0.0),
        "workspace": c.gpu_workspace_bytes if uses_gpu else 0.0,
        "waiting_chunks": sigma * c.waiting_chunks_bytes[policy_index(plan.prefill_policy)] if uses_gpu else 0.0,
        "split_attention": sigma * c.split_attention_bytes[policy_index(plan.prefill_policy)] if uses_gpu else 0.0,
    }
    if plan.streamed_kv_on_gpu:
        hbm["streamed_kv"] = streamed * c.kv_layer_bytes
    host: dict[HostTier, dict[str, float]] = {HostTier.DDR: {}, HostTier.CXL: {}}
    if not head_on_gpu:
        host[HostTier.DDR]["embeddings_and_head"] = c.embedding_bytes
    in_cxl = plan.cxl_weight_layer_count(streamed)
    host[HostTier.DDR]["streamed_weights"] = (streamed - in_cxl) * c.layer_weight_bytes
    if in_cxl:
        host[HostTier.CXL]["streamed_weights"] = in_cxl * c.layer_weight_bytes
    if not plan.streamed_kv_on_gpu:
        host[plan.kv_tier]["streamed_kv"] = streamed * c.kv_layer_bytes
    host[HostTier.DDR]["workspace"] = c.host_workspace_bytes
    out = {
        MemoryTier.HBM: TierUse(MemoryTier.HBM, hbm, c.available_bytes[MemoryTier.HBM]),
        MemoryTier.DDR: TierUse(MemoryTier.DDR, host[HostTier.DDR], c.available_bytes[MemoryTier.DDR]),
    }
    if system.cxl is not None or host[HostTier.CXL]:
        out[MemoryTier.CXL] = TierUse(MemoryTier.CXL, host[HostTier.CXL], c.available_bytes[MemoryTier.CXL])
    return out


def plan_fits(system: SystemSpec, model: ModelSpec, workload: Workload, plan: Plan) -> bool:
    """Every memory tier holds what the plan puts in it (``memory_use``)."""
    return all(u.fits for u in memory_use(system, model, workload, plan).values())
