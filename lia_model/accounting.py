"""Sublayer accounting: FLOPs and bytes of each sublayer as plain functions of (model, B, q, s).

B: batch, q: new tokens per sequence in this pass (L_in in prefill, 1 in decode), s: cached tokens the
attention reads (L_in in prefill, L_in + t at decode step t). Activations are bf16; the weights' matrices and
the KV cache are stored at the workload's ``Precision`` (lia_model.precision: bytes per element, group scales);
biases, norms, embeddings and the LM head stay bf16. Every byte count of a weight or the KV cache comes from
the functions here.
FLOPs count multiply-adds as 2 and cover the matrix products; norms, biases, activations and softmax
ride with their neighbour and are not counted (they are < 1% at these shapes). Attention FLOPs count the
full q x s product a batched matmul computes (a causal mask does not skip work in a plain bmm).
attn_context is softmax then S V: the softmax reads the score matrix and writes the probabilities, which
the product reads again, so it moves the score matrix three times (act_in once, scratch twice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lia_model.models import ModelSpec
from lia_model.precision import BF16, Precision, kv_element_bytes, matrix_bytes
from lia_model.sublayers import SUBLAYERS, Sublayer
from lia_model.units import BF16_BYTES


@dataclass(frozen=True)
class SublayerWork:
    """What one sublayer of one layer does in one pass."""

    sublayer: Sublayer
    tokens: int  # rows of the product: B * q
    flops: "float | np.ndarray"  # arrays (one entry per decode step) for the attention sublayers
    weight_bytes: float  # stored weights of the sublayer (all experts)
    weight_bytes_read: float  # weights a pass actually touches (MoE: only routed experts)
    act_in_bytes: float
    act_out_bytes: float  # what crosses to the next sublayer
    kv_read_bytes: float
    kv_write_bytes: float
    scratch_bytes: "float | np.ndarray" = 0.0  # intermediate traffic inside the sublayer (softmax)
    weight_elements_read: float = 0.0  # matrix elements a pass touches (what a dequantising kernel unpacks)
    kv_elements_read: "float | np.ndarray" = 0.0  # cached K/V elements one pass over the cache reads
    gemms: tuple[tuple[float, "float | np.ndarray"], ...] = ()
    """The matrix products as (rows per product, FLOPs): the rows key the efficiency tables. A linear layer
    is one group at B*q rows; attention with group size G = heads / kv_heads multiplies G*q query rows by
    each KV head's cache; an MoE layer's experts each see the tokens routed to them, the shared expert and
    the router all tokens. The FLOPs of the groups sum to ``flops``."""

    @property
    def act_bytes(self) -> "float | np.ndarray":
        """Activation traffic in device memory: input, output and scratch."""
        return self.act_in_bytes + self.act_out_bytes + self.scratch_bytes

    @property
    def bytes_touched(self) -> "float | np.ndarray":
        return self.weight_bytes_read + self.act_bytes + self.kv_read_bytes + self.kv_write_bytes


def sublayer_params(model: ModelSpec) -> dict[Sublayer, int]:
    """Parameters of each sublayer in one decoder layer (norms ride with qkv and fc1)."""
    h = model.hidden_size
    qkv_out = model.q_dim + 2 * model.kv_dim
    norm = 2 * h if model.linear_bias else h  # LayerNorm has weight and bias; RMSNorm a weight only
    bias = 1 if model.linear_bias else 0
    return {
        Sublayer.QKV: h * qkv_out + bias * qkv_out + norm,
        Sublayer.ATTN_SCORE: 0,
        Sublayer.ATTN_CONTEXT: 0,
        Sublayer.OUT_PROJ: model.q_dim * h + bias * h,
        Sublayer.FC1: sum(mlp_params(model, Sublayer.FC1)) + norm,
        Sublayer.FC2: sum(mlp_params(model, Sublayer.FC2)),
    }


def mlp_params(model: ModelSpec, sub: Sublayer) -> tuple[int, int, int]:
    """Parameters of fc1 (gate+up) or fc2 (down), split as (routed experts, all of them; shared expert;
    router). Dense models are one expert with no router."""
    h, f, e, fs = model.hidden_size, model.ffn_size, model.num_experts, model.shared_ffn_size
    bias = 1 if model.linear_bias else 0
    if sub == Sublayer.FC1:
        mats = model.mlp_matrices
        return e * mats * (h * f + bias * f), mats * (h * fs + bias * fs), (h * e if model.is_moe else 0)
    return e * (f * h + bias * h), fs * h + (bias * h if fs else 0), 0


def sublayer_matrices(model: ModelSpec) -> dict[Sublayer, tuple[tuple[int, int], ...]]:
    """The weight matrices of each sublayer as (elements, K): qkv (h x (q_dim + 2 kv_dim)), out_proj (q_dim x h),
    fc1 (routed experts, shared expert, router; K = h), fc2 (routed, shared; K = f or f_shared). Everything else
    in sublayer_params (biases, norms) is a vector and stays bf16."""
    h, f, e, fs = model.hidden_size, model.ffn_size, model.num_experts, model.shared_ffn_size
    mats = model.mlp_matrices
    fc1 = [(e * mats * h * f, h)] + ([(mats * h * fs, h)] if fs else []) + ([(h * e, h)] if model.is_moe else [])
    fc2 = [(e * f * h, f)] + ([(fs * h, fs)] if fs else [])
    return {
        Sublayer.QKV: ((h * (model.q_dim + 2 * model.kv_dim), h),),
        Sublayer.ATTN_SCORE: (),
        Sublayer.ATTN_CONTEXT: (),
        Sublayer.OUT_PROJ: ((model.q_dim * h, model.q_dim),),
        Sublayer.FC1: tuple(fc1),
        Sublayer.FC2: tuple(fc2),
    }


def sublayer_weight_bytes(model: ModelSpec, precision: Precision = BF16) -> dict[Sublayer, float]:
    """Stored bytes of each sublayer of one layer: its matrices at the precision (lia_model.precision.matrix_bytes)
    plus its vectors (biases, norms) in bf16."""
    params = sublayer_params(model)
    out = {}
    for sub, matrices in sublayer_matrices(model).items():
        vectors = params[sub] - sum(e for e, _ in matrices)
        out[sub] = float(sum(matrix_bytes(precision, e, k) for e, k in matrices) + vectors * BF16_BYTES)
    return out


def routed_expert_bytes(model: ModelSpec, sub: Sublayer, precision: Precision = BF16) -> float:
    """Stored bytes of the routed experts of fc1 or fc2 (all of them; their matrices at the precision, their
    biases bf16): the part of an MoE sublayer only the routed tokens touch."""
    routed_params = mlp_params(model, sub)[0]
    elements, k = sublayer_matrices(model)[sub][0]
    return float(matrix_bytes(precision, elements, k) + (routed_params - elements) * BF16_BYTES)


def layer_params(model: ModelSpec) -> int:
    return sum(sublayer_params(model).values())


def layer_weight_bytes(model: ModelSpec, precision: Precision = BF16) -> float:
    return float(sum(sublayer_weight_bytes(model, precision).values()))


def embedding_params(model: ModelSpec) -> int:
    """Token embedding, learned positions, final norm and (untied) LM head."""
    h = model.hidden_size
    lm_head = 0 if model.tied_embeddings else model.vocab_size * h
    final_norm = 2 * h if model.linear_bias else h
    return model.vocab_size * h + model.learned_positions * h + final_norm + lm_head


def total_params(model: ModelSpec) -> int:
    return model.num_layers * layer_params(model) + embedding_params(model)


def embedding_weight_bytes(model: ModelSpec) -> float:
    return float(embedding_params(model) * BF16_BYTES)


def kv_bytes_per_token_per_layer(model: ModelSpec, precision: Precision = BF16) -> float:
    """K and V of one token in one layer: 2 * kv_dim * bytes per KV element (2 in bf16)."""
    return float(2 * model.kv_dim * kv_element_bytes(precision))


def kv_bytes_per_token(model: ModelSpec, precision: Precision = BF16) -> float:
    """K and V of one token across all layers."""
    return kv_bytes_per_token_per_layer(model, precision) * model.num_layers


def kv_cache_bytes_per_layer(model: ModelSpec, batch: int, context: int, precision: Precision = BF16) -> float:
    return kv_bytes_per_token_per_layer(model, precision) * batch * context


def expected_experts_touched(model: ModelSpec, tokens: float) -> float:
    """Experts a pass touches when ``tokens`` tokens each pick ``experts_per_token`` of ``num_experts``
    uniformly: E * (1 - (1 - k/E)^tokens). Dense models touch their one expert."""
    e, k = model.num_experts, model.experts_per_token
    if e == 1:
        return 1.0
    return e * (1.0 - (1.0 - k / e) ** tokens)


def sublayer_work(
    model: ModelSpec, batch: int, q: int, s: "int | np.ndarray", precision: Precision = BF16
) -> dict[Sublayer, SublayerWork]:
    """FLOPs and bytes of each sublayer of one layer for B = batch, q new tokens, s cached tokens, with weights
    and KV cache stored at ``precision``.

    ``s`` may be a numpy array of contexts (one per decode step); the attention fields are then arrays.
    """
    h, f, fs = model.hidden_size, model.ffn_size, model.shared_ffn_size
    heads, hd = model.num_heads, model.head_dim
    qd, kvd = model.q_dim, model.kv_dim
    k_act = model.experts_per_token
    group = heads // model.num_kv_heads
    m = batch * q
    stored_bytes = sublayer_weight_bytes(model, precision)
    matrices = sublayer_matrices(model)
    b = BF16_BYTES  # activations
    kvb = kv_element_bytes(precision)
    # MoE: tokens pick k of E experts uniformly; the experts a pass touches are read, each multiplying the
    # tokens routed to it: m k / E_touched rows on average (m k / E once every expert is touched; 1 at m = 1).
    touched_experts = expected_experts_touched(model, m)
    touched = touched_experts / model.num_experts
    expert_rows = m * k_act / touched_experts

    scores_bytes = 1.0 * batch * heads * q * s * b
    mlp_mid = float(m * (f * k_act + fs) * b)  # post-activation intermediate of the routed and shared experts
    attn_flops = 2.0 * batch * heads * q * s * hd
    out: dict[Sublayer, SublayerWork] = {}

    def linear(sub: Sublayer, flops: float, act_in: float, act_out: float, kv_write: float = 0.0) -> SublayerWork:
        stored = stored_bytes[sub]
        return SublayerWork(
            sub,
            m,
            flops,
            stored,
            stored,
            act_in,
            act_out,
            0.0,
            kv_write,
            gemms=((m, flops),),
            weight_elements_read=float(sum(e for e, _ in matrices[sub])),
        )

    def mlp(sub: Sublayer, act_in: float, act_out: float) -> SublayerWork:
        routed, shared, router = mlp_params(model, sub)
        stored = stored_bytes[sub]
        # only the touched experts' weights are read
        read = stored - routed_expert_bytes(model, sub, precision) * (1.0 - touched)
        elements = float(sum(e for e, _ in matrices[sub])) - matrices[sub][0][0] * (1.0 - touched)
        width = h * f * model.mlp_matrices if sub == Sublayer.FC1 else f * h
        shared_width = h * fs * model.mlp_matrices if sub == Sublayer.FC1 else fs * h
        gemms = [(expert_rows, 2.0 * m * width * k_act)]
        if fs:
            gemms.append((m, 2.0 * m * shared_width))
        if router:
            gemms.append((m, 2.0 * m * router))
        return SublayerWork(
            sub,
            m,
            sum(g[1] for g in gemms),
            stored,
            read,
            act_in,
            act_out,
            0.0,
            0.0,
            gemms=tuple(gemms),
            weight_elements_read=elements,
        )

    cache_elements = 1.0 * batch * s * kvd  # cached K (or V) elements one pass reads
    out[Sublayer.QKV] = linear(
        Sublayer.QKV, 2.0 * m * h * (qd + 2 * kvd), float(m * h * b), float(m * qd * b), float(2 * m * kvd * kvb)
    )
    out[Sublayer.ATTN_SCORE] = SublayerWork(
        Sublayer.ATTN_SCORE,
        m,
        attn_flops,
        0.0,
        0.0,
        float(m * qd * b),
        scores_bytes,
        cache_elements * kvb,
        0.0,
        gemms=((group * q, attn_flops),),
        kv_elements_read=cache_elements,
    )
    out[Sublayer.ATTN_CONTEXT] = SublayerWork(
        Sublayer.ATTN_CONTEXT,
        m,
        attn_flops,
        0.0,
        0.0,
        scores_bytes,
        float(m * qd * b),
        cache_elements * kvb,
        0.0,
        scratch_bytes=2.0 * scores_bytes,
        gemms=((group * q, attn_flops),),
        kv_elements_read=cache_elements,
    )
    out[Sublayer.OUT_PROJ] = linear(Sublayer.OUT_PROJ, 2.0 * m * qd * h, float(m * qd * b), float(m * h * b))
    out[Sublayer.FC1] = mlp(Sublayer.FC1, float(m * h * b), mlp_mid)
    out[Sublayer.FC2] = mlp(Sublayer.FC2, mlp_mid, float(m * h * b))
    assert tuple(out) == SUBLAYERS
    return out


def linear_shape(model: ModelSpec, sub: Sublayer) -> tuple[int, int]:
    """(K, N) of a linear sublayer's GEMM, weight stored N x K: qkv (h, q_dim + 2 kv_dim), out_proj
    (q_dim, h), fc1 (h, f x mlp_matrices: gate and up together when gated; one expert), fc2 (f, h)."""
    h, f = model.hidden_size, model.ffn_size
    return {
        Sublayer.QKV: (h, model.q_dim + 2 * model.kv_dim),
        Sublayer.OUT_PROJ: (model.q_dim, h),
        Sublayer.FC1: (h, f * model.mlp_matrices),
        Sublayer.FC2: (f, h),
    }[sub]


def attention_bytes_flops(
    model: ModelSpec, batch: int, q: int, s: "int | np.ndarray", kind: str, precision: Precision = BF16
) -> tuple["float | np.ndarray", "float | np.ndarray"]:
    """Bytes moved and FLOPs of the runtime's attention kernel of ``kind``: "score" and "context" as in
    ``sublayer_work`` (the split kernels, with the score matrix in memory), "fused" reads K, V and Q and
    writes the context without a score matrix in memory (SDPA / a grouped matmul pair)."""
    work = sublayer_work(model, batch, q, s, precision)
    score, ctx = work[Sublayer.ATTN_SCORE], work[Sublayer.ATTN_CONTEXT]
    if kind == "score":
        return score.kv_read_bytes + score.act_bytes, score.flops
    if kind == "context":
        return ctx.kv_read_bytes + ctx.act_bytes, ctx.flops
    if kind == "fused":
        return score.kv_read_bytes + ctx.kv_read_bytes + score.act_in_bytes + ctx.act_out_bytes, score.flops + ctx.flops
    raise ValueError(f"unknown attention kind {kind!r}")


def attention_rows(model: ModelSpec, batch: int, q: int) -> float:
    """Query rows an attention kernel iterates over: batch x heads x q."""
    return float(batch * model.num_heads * q)


def head_flops(model: ModelSpec, batch: int) -> float:
    """LM head over the last position of each sequence: 2 * B * h * vocab."""
    return 2.0 * batch * model.hidden_size * model.vocab_size
