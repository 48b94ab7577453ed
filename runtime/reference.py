"""A plain single-device forward with the same weights, for checking the executor's logits.

Written independently of executor.py/kernels.py: full-sequence causal attention through
``scaled_dot_product_attention`` (no KV cache, no chunks, no devices), in float32 by default. It is
teacher-forced with the tokens the executor generated, so the logits at every output position can be
compared even where a near-tie made the executor pick a different argmax than an exact computation would.

Quantised weights (int8, fp8; runtime/weights.py) are dequantised here in float32 (value x its row's scale),
so the reference computes the function the stored weights define and the tolerance below applies unchanged.

Tolerance (``LOGITS_RTOL``): the executor computes in bf16, whose round-to-nearest relative error is
2^-9 = 0.2% per stored value. A layer stores about ten intermediate tensors, errors add roughly as a
random walk over layers and are amplified by the norms, so a correct bf16 execution of a few layers lands
near 0.5-1.5% relative (Frobenius) error against float32; the executor's own variants (chunking, CPU vs
GPU kernels) move it by a similar amount. 3% leaves room for that and for deeper models while a wrong
data flow (stale KV, a missed copy, the wrong layer's weights) gives errors of order 10-100%: the tests
check both sides.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from lia_model.sublayers import Sublayer
from runtime.rope import inverse_frequencies
from runtime.weights import ModelWeights, embedding_positions_offset

LOGITS_RTOL = 3e-2


def _norm(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    if b is not None:
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + eps) * w + b
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def _rotate(x: torch.Tensor, positions: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, rotate-half convention, on x [B, heads, T, d] (``inv``: the model's inverse
    frequencies, runtime/rope.py; checked against Hugging Face transformers in tests/test_hf_models.py)."""
    d = x.shape[-1]
    ang = positions.to(torch.float64)[:, None] * inv.to(device=x.device, dtype=torch.float64)[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1).to(x.dtype)
    sin = torch.cat([ang.sin(), ang.sin()], -1).to(x.dtype)
    half = d // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


@torch.inference_mode()
def reference_logits(
    weights: ModelWeights,
    tokens: torch.Tensor,
    first: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    hidden: Optional[list[torch.Tensor]] = None,
) -> torch.Tensor:
    """Logits at positions first .. T-1 for ``tokens`` [B, T]: returns [T - first, B, vocab] (float32, CPU).
    ``hidden``: a list that receives every layer's output [B, T, h] (float32, CPU)."""
    m = weights.model
    emb = weights.embeddings
    B, T = tokens.shape
    ids = tokens.to(emb.tokens.device)
    h = emb.tokens[ids].to(device=device, dtype=dtype)
    positions = torch.arange(T, device=device)
    if emb.positions is not None:
        off = embedding_positions_offset(m)
        h = h + emb.positions[off : off + T].to(device=device, dtype=dtype)[None]
    H, KV, d = m.num_heads, m.num_kv_heads, m.head_dim
    eps = m.norm_eps
    inv = inverse_frequencies(m) if m.uses_rope else None

    def get(li: int, sub: Sublayer) -> dict[str, torch.Tensor]:
        stored = weights.host_views(li, sub)
        out = {k: v.to(device=device, dtype=dtype) for k, v in stored.items() if k != "w_scale"}
        if "w_scale" in stored:  # int8 or fp8 values, one bf16 scale per row: dequantised exactly in float32
            w32 = stored["w"].to(device=device, dtype=torch.float32)
            out["w"] = (w32 * stored["w_scale"].to(device=device, dtype=torch.float32)[:, None]).to(dtype)
        return out

    for li in range(m.num_layers):
        p = get(li, Sublayer.QKV)
        y = _norm(h, p["norm_w"], p.get("norm_b"), eps) @ p["w"].t()
        if "b" in p:
            y = y + p["b"]
        q = y[..., : m.q_dim].reshape(B, T, H, d).transpose(1, 2)
        k = y[..., m.q_dim : m.q_dim + m.kv_dim].reshape(B, T, KV, d).transpose(1, 2)
        v = y[..., m.q_dim + m.kv_dim :].reshape(B, T, KV, d).transpose(1, 2)
        if m.uses_rope:
            q, k = _rotate(q, positions, inv), _rotate(k, positions, inv)
        k = k.repeat_interleave(H // KV, dim=1)
        v = v.repeat_interleave(H // KV, dim=1)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / math.sqrt(d))
        att = att.transpose(1, 2).reshape(B, T, m.q_dim)
        p = get(li, Sublayer.OUT_PROJ)
        h = h + att @ p["w"].t() + (p["b"] if "b" in p else 0.0)
        p = get(li, Sublayer.FC1)
        u = _norm(h, p["norm_w"], p.get("norm_b"), eps) @ p["w"].t()
        if "b" in p:
            u = u + p["b"]
        if m.gated_mlp:
            a = F.silu(u[..., : m.ffn_size]) * u[..., m.ffn_size :]
        else:
            a = torch.relu(u)
        p = get(li, Sublayer.FC2)
        h = h + a @ p["w"].t() + (p["b"] if "b" in p else 0.0)
        if hidden is not None:
            hidden.append(h.float().cpu())
    x = _norm(
        h[:, first:],
        emb.norm_w.to(device=device, dtype=dtype),
        None if emb.norm_b is None else emb.norm_b.to(device=device, dtype=dtype),
        eps,
    )
    logits = x @ emb.lm_head.to(device=device, dtype=dtype).t()  # [B, T - first, vocab]
    return logits.transpose(0, 1).float().cpu()


def logits_error(run_logits: list[torch.Tensor], ref: torch.Tensor) -> float:
    """Relative Frobenius error ||run - ref|| / ||ref|| over every output position."""
    got = torch.stack(run_logits, dim=0)
    return float(torch.linalg.vector_norm(got - ref) / torch.linalg.vector_norm(ref))


def layer_errors(
    weights: ModelWeights, prompt: torch.Tensor, run_hidden: list[torch.Tensor], device: torch.device
) -> list[float]:
    """Relative Frobenius error of each layer's prefill output (the executor's ``keep_hidden``) against the
    reference's: where a data-flow or kernel bug enters shows as the first layer whose error jumps."""
    ref: list[torch.Tensor] = []
    reference_logits(weights, prompt, prompt.shape[1] - 1, device, hidden=ref)
    return [
        float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want))
        for got, want in zip(run_hidden, ref, strict=True)
    ]


def check_against_reference(
    weights: ModelWeights,
    prompt: torch.Tensor,
    run_tokens: torch.Tensor,
    run_logits: list[torch.Tensor],
    device: torch.device,
) -> dict[str, float]:
    """Teacher-forced reference on prompt + the run's tokens (all but the last); error and argmax agreement."""
    L_in = prompt.shape[1]
    full = torch.cat([prompt, run_tokens[:, :-1].to(prompt.dtype)], dim=1)
    ref = reference_logits(weights, full, L_in - 1, device)
    err = logits_error(run_logits, ref)
    match = float((ref.argmax(-1).transpose(0, 1) == run_tokens).float().mean())
    return {"logits_rel_err": err, "tokens_match_frac": match}
