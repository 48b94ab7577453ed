"""The math of the six sublayers (DESIGN.md section 2), on whatever device the tensors live on.

Shapes: b sequences in the chunk, q new tokens each, s valid key positions, S the width of the key tensor
(S = s on the GPU; on the CPU the whole preallocated cache width, see below), h hidden, H heads,
G = H / kv_heads query heads per KV head, d head_dim.

  qkv           h [b,q,h] -> norm -> fused [b,q,q_dim+2 kv_dim] (+ RoPE) -> Q [b,q,q_dim], K/V [b,kv,q,d]
  attn_score    Q -> Qh [b,kv,G q,d] * d^-1/2 ; scores = Qh K^T [b,kv,G q,S], masked (causal and >= s)
  attn_context  softmax(scores) V -> ctx [b,q,q_dim]
  out_proj      h_mid = h + ctx W_o^T + b_o                       (residual rides here)
  fc1           mid = act(norm(h_mid) W_1^T + b_1)                (ReLU, or SiLU(gate) * up)
  fc2           h_out = h_mid + mid W_2^T + b_2                   (residual rides here)

Why the CPU attention reads the whole cache width S: oneDNN's bf16 batched matmul copies any operand whose
batch stride is not packed, and a prefix [:s] of a [b,kv,S_max,d] cache is not packed. Reading all S_max
positions (masked) costs (S_max - s)/s extra work, a few percent when L_out << L_in, instead of a full copy
of K and V every step. The cache is zero-initialised so masked positions are finite.

CPU outputs can be written into a caller-provided tensor (``out``), e.g. page-locked memory when the result
crosses to the GPU next, so the host-to-device copy is asynchronous DMA.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from lia_model.models import ModelSpec
from runtime.rope import inverse_frequencies

NORM_EPS = 1e-5  # default only: a model's own epsilon is ModelSpec.norm_eps (read from its config)


def norm(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], eps: float = NORM_EPS) -> torch.Tensor:
    """LayerNorm when the model has biases (OPT, Bloom), RMSNorm otherwise (Llama)."""
    if b is not None:
        return F.layer_norm(x, (x.shape[-1],), w, b, eps)
    return F.rms_norm(x, (x.shape[-1],), w, eps)


def linear(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], *, resid: Optional[torch.Tensor] = None,
           out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[..., in] -> [..., out_features] = resid + x W^T + b, one GEMM (addmm) on 2-D views."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    n_out = w.shape[0]
    if out is None:
        out = torch.empty((*lead, n_out), dtype=x.dtype, device=x.device)
    o2 = out.view(-1, n_out)
    if resid is not None:
        torch.addmm(resid.reshape(-1, n_out), x2, w.t(), out=o2)
        if b is not None:
            o2.add_(b)
    elif b is not None:
        torch.addmm(b, x2, w.t(), out=o2)
    else:
        torch.mm(x2, w.t(), out=o2)
    return out


def rope_tables(positions: torch.Tensor, model: ModelSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [q, d/2] for the rotate-half convention (pairs i and i + d/2), with the model's RoPE base and
    scaling (runtime/rope.py)."""
    inv = inverse_frequencies(model, device)
    angles = positions.to(device=device, dtype=torch.float32)[:, None] * inv[None, :]
    return angles.cos(), angles.sin()


def apply_rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """In place on x [b, q, heads, d]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()   # views, not copies, when x is float32
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    first, second = x1 * c - x2 * s, x2 * c + x1 * s            # both before either half is overwritten
    x[..., :half] = first.to(x.dtype)
    x[..., half:] = second.to(x.dtype)


def qkv(h: torch.Tensor, p: dict[str, torch.Tensor], model: ModelSpec,
        rope: Optional[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input norm + fused projection (+ RoPE). Returns Q [b,q,q_dim] and K, V [b,kv,q,d], all contiguous."""
    b, q, _ = h.shape
    x = norm(h, p["norm_w"], p.get("norm_b"), model.norm_eps)
    fused = linear(x, p["w"], p.get("b"))
    qd, kvd, kvh, d = model.q_dim, model.kv_dim, model.num_kv_heads, model.head_dim
    if rope is not None:
        apply_rope_(fused[..., :qd].view(b, q, model.num_heads, d), *rope)
        apply_rope_(fused[..., qd:qd + kvd].view(b, q, kvh, d), *rope)
    q_out = fused[..., :qd].contiguous()
    k = fused[..., qd:qd + kvd].view(b, q, kvh, d).transpose(1, 2).contiguous()
    v = fused[..., qd + kvd:].view(b, q, kvh, d).transpose(1, 2).contiguous()
    return q_out, k, v


def attention_mask(q: int, groups: int, pos0: int, valid: int, width: int, device: torch.device) -> torch.Tensor:
    """True where a score must be masked: key j > query position, or j >= valid. Rows are g * q + i."""
    query_pos = pos0 + torch.arange(q, device=device).repeat(groups)          # [G q]
    keys = torch.arange(width, device=device)                                # [S]
    return (keys[None, :] > query_pos[:, None]) | (keys[None, :] >= valid)


def attn_score(q_in: torch.Tensor, k: torch.Tensor, model: ModelSpec, mask: torch.Tensor,
               out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Q [b,q,q_dim], K [b,kv,S,d] -> masked scores [b,kv,G q,S] (``mask`` from ``attention_mask``)."""
    b, q, _ = q_in.shape
    kvh, d = model.num_kv_heads, model.head_dim
    g = model.num_heads // kvh
    qh = (q_in.view(b, q, kvh, g, d).permute(0, 2, 3, 1, 4).reshape(b, kvh, g * q, d)) * (1.0 / math.sqrt(d))
    width = k.shape[2]
    if out is None:
        out = torch.empty((b, kvh, g * q, width), dtype=q_in.dtype, device=q_in.device)
    torch.matmul(qh, k.transpose(-1, -2), out=out)
    out.masked_fill_(mask, float("-inf"))
    return out


def attn_context(scores: torch.Tensor, v: torch.Tensor, model: ModelSpec, q: int,
                 out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(scores) [b,kv,G q,S] @ V [b,kv,S,d] -> ctx [b,q,q_dim]."""
    b, kvh, gq, width = scores.shape
    g, d = gq // q, model.head_dim
    probs = torch.softmax(scores, dim=-1)
    ctx = torch.matmul(probs, v)                                             # [b, kv, G q, d]
    ctx = ctx.view(b, kvh, g, q, d).permute(0, 3, 1, 2, 4)                    # [b, q, kv, G, d]
    if out is None:
        return ctx.reshape(b, q, model.q_dim)
    out.view(b, q, kvh, g, d).copy_(ctx)
    return out


def out_proj(ctx: torch.Tensor, p: dict[str, torch.Tensor], resid: torch.Tensor,
             out: Optional[torch.Tensor] = None) -> torch.Tensor:
    return linear(ctx, p["w"], p.get("b"), resid=resid, out=out)


def fc1(h_mid: torch.Tensor, p: dict[str, torch.Tensor], model: ModelSpec,
        out: Optional[torch.Tensor] = None) -> torch.Tensor:
    x = norm(h_mid, p["norm_w"], p.get("norm_b"), model.norm_eps)
    if model.gated_mlp:
        u = linear(x, p["w"], p.get("b"))
        f = model.ffn_size
        gate, up = u[..., :f], u[..., f:]
        if out is None:
            return F.silu(gate) * up
        torch.mul(F.silu(gate), up, out=out)
        return out
    u = linear(x, p["w"], p.get("b"), out=out)
    return torch.relu_(u)


def fc2(mid: torch.Tensor, p: dict[str, torch.Tensor], resid: torch.Tensor,
        out: Optional[torch.Tensor] = None) -> torch.Tensor:
    return linear(mid, p["w"], p.get("b"), resid=resid, out=out)


def final_logits(x_last: torch.Tensor, norm_w: torch.Tensor, norm_b: Optional[torch.Tensor],
                 lm_head: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """[B, h] -> logits [B, vocab] (final norm + LM head)."""
    return norm(x_last, norm_w, norm_b, eps) @ lm_head.t()
