"""The math of the six sublayers (docs/design.md section 2), on whatever device the tensors live on.

Shapes: b sequences in the chunk, q new tokens each, s valid key positions, h hidden, H heads,
G = H / kv_heads query heads per KV head, d head_dim.

  qkv           h [b,q,h] -> norm -> fused [b,q,q_dim+2 kv_dim] (+ RoPE) -> Q [b,q,q_dim], K/V [b,kv,q,d]
  attn_score    Q -> Qh [b,kv,G q,d] * d^-1/2 ; scores = Qh K^T [b,kv,G q,s], causally masked in prefill
  attn_context  softmax(scores) V -> ctx [b,q,q_dim]     (fused with attn_score on one device: ``attention``)
  out_proj      h_mid = h + ctx W_o^T + b_o                       (residual rides here)
  fc1           mid = act(norm(h_mid) W_1^T + b_1)                (ReLU, or SiLU(gate) * up)
  fc2           h_out = h_mid + mid W_2^T + b_2                   (residual rides here)

Attention reads the live prefix [:s] of the preallocated [b,kv,S_max,d] cache as a view (no copy, no
masked tail). When attn_score and attn_context run on the same device they are one fused kernel
(``attention``: SDPA, or a grouped matmul pair for GQA decode), timed under attn_context while attn_score
only hands Q on; when the plan splits them across devices, ``attn_score`` and ``attn_context`` run apart and
the score matrix crosses PCIe. The calibrator (calibrate/kernel_tables.py) times these same functions.

CPU outputs can be written into a caller-provided tensor (``out``), e.g. page-locked memory when the result
crosses to the GPU next, so the host-to-device copy is asynchronous DMA.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from lia_model.memory import DEQUANT_PIECE_BYTES
from lia_model.models import ModelSpec
from runtime.rope import inverse_frequencies

# The scaled_dot_product_attention kernels attention() may use: flash (the CPU's, and on CUDA), memory-efficient,
# math. Not cuDNN, which on Hopper builds one graph per new key length, so that every decode step of a fresh run
# (each step's key length is new) would pay a build. Seen on the H200 in `lia run` of OPT-30B (4 layers, all
# resident, B=1): 66 ms per decode token in the timed run against 5 ms in the traced run that followed it with
# the same shapes (runtime/validation/hf-cuda/bench-opt30b-traced/); Llama decode (grouped matmul, no SDPA) did
# not show it. cuDNN as the cause is a diagnosis by elimination, to be confirmed by the next run on the host.
# The calibrator times repeated shapes, so it would never see the build.
SDPA_BACKENDS = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)

NORM_EPS = 1e-5  # default only: a model's own epsilon is ModelSpec.norm_eps (read from its config)

# CPU decode attention with GQA (q = 1, G > 1): "sdpa" (the default) runs scaled_dot_product_attention with a KV
# group's G query heads as G query positions of one head, unmasked (the same sums: every head of the group attends to
# every cached position); "grouped" is one matmul pair over [b,kv,G,d], the kernel every table and campaign before the
# sixteenth session ran. On the GPU host SDPA was 1.12-3.64x as fast over the calibrator's decode grid for
# Llama-2-70B, median 1.92x (python -m runtime.probe_gqa_decode, runtime/validation/gqa-decode-probe/). The kernel
# tables record the variant in each attention row (gqa_decode) and the profile names the one the runtime runs
# (KernelTables.gqa_decode), so a table of one variant never predicts the other.
GQA_DECODE_VARIANTS = ("grouped", "sdpa")
GQA_DECODE_DEFAULT = "sdpa"


def gqa_decode_variant() -> str:
    """LIA_GQA_DECODE: "sdpa" (default) or "grouped"; anything else is a clear error."""
    from lia_model.errors import LiaInputError

    value = os.environ.get("LIA_GQA_DECODE", GQA_DECODE_DEFAULT)
    if value not in GQA_DECODE_VARIANTS:
        raise LiaInputError("LIA_GQA_DECODE", f"'{value}' is not a GQA decode kernel", "use grouped or sdpa")
    return value


def norm(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], eps: float = NORM_EPS) -> torch.Tensor:
    """LayerNorm when the model has biases (OPT, Bloom), RMSNorm otherwise (Llama)."""
    if b is not None:
        return F.layer_norm(x, (x.shape[-1],), w, b, eps)
    return F.rms_norm(x, (x.shape[-1],), w, eps)


def linear(
    x: torch.Tensor,
    w: torch.Tensor,
    b: Optional[torch.Tensor],
    *,
    resid: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
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
    x1, x2 = x[..., :half].float(), x[..., half:].float()  # views, not copies, when x is float32
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    first, second = x1 * c - x2 * s, x2 * c + x1 * s  # both before either half is overwritten
    x[..., :half] = first.to(x.dtype)
    x[..., half:] = second.to(x.dtype)


def qkv(
    h: torch.Tensor, p: dict[str, torch.Tensor], model: ModelSpec, rope: Optional[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input norm + fused projection (+ RoPE). Returns Q [b,q,q_dim] and K, V [b,kv,q,d], all contiguous."""
    b, q, _ = h.shape
    x = norm(h, p["norm_w"], p.get("norm_b"), model.norm_eps)
    fused = project(x, p)
    qd, kvd, kvh, d = model.q_dim, model.kv_dim, model.num_kv_heads, model.head_dim
    if rope is not None:
        apply_rope_(fused[..., :qd].view(b, q, model.num_heads, d), *rope)
        apply_rope_(fused[..., qd : qd + kvd].view(b, q, kvh, d), *rope)
    q_out = fused[..., :qd].contiguous()
    k = fused[..., qd : qd + kvd].view(b, q, kvh, d).transpose(1, 2).contiguous()
    v = fused[..., qd + kvd :].view(b, q, kvh, d).transpose(1, 2).contiguous()
    return q_out, k, v


def attention_mask(q: int, groups: int, pos0: int, valid: int, width: int, device: torch.device) -> torch.Tensor:
    """True where a score must be masked: key j > query position, or j >= valid. Rows are g * q + i."""
    query_pos = pos0 + torch.arange(q, device=device).repeat(groups)  # [G q]
    keys = torch.arange(width, device=device)  # [S]
    return (keys[None, :] > query_pos[:, None]) | (keys[None, :] >= valid)


def _scaled_groups(q_in: torch.Tensor, model: ModelSpec) -> torch.Tensor:
    """Q [b,q,q_dim] -> [b,kv,G q,d] scaled by d^-1/2 (head = kv_index * G + g)."""
    b, q, _ = q_in.shape
    kvh, d = model.num_kv_heads, model.head_dim
    g = model.num_heads // kvh
    return (q_in.view(b, q, kvh, g, d).permute(0, 2, 3, 1, 4).reshape(b, kvh, g * q, d)) * (1.0 / math.sqrt(d))


def attention(
    q_in: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    model: ModelSpec,
    pos0: int,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Fused attention (score and context on one device): Q [b,q,q_dim] over the live prefix of the cache.

    ``k``, ``v`` [b,kv,W,d] with W = pos0 + q valid positions (a prefix view of the preallocated cache: no
    copy, no masked tail). Decode with GQA (q = 1, G > 1) on the CPU is SDPA over a group's heads as query rows
    or one grouped matmul pair over [b,kv,G,d] (``gqa_decode_variant``; on the GPU always the pair); every
    other case is ``scaled_dot_product_attention`` (causal in prefill), which never materialises the whole
    score tensor in memory on the CPU (flash kernel) and uses the flash/efficient kernels on the GPU (never
    cuDNN's: ``SDPA_BACKENDS``).
    Returns ctx [b,q,q_dim] (written into ``out`` when given)."""
    b, q, _ = q_in.shape
    kvh, d, heads = model.num_kv_heads, model.head_dim, model.num_heads
    g = heads // kvh
    valid = k.shape[2]
    if q == 1 and g > 1:
        qh = _scaled_groups(q_in, model)  # [b,kv,G,d]
        if q_in.device.type == "cpu" and gqa_decode_variant() == "sdpa":
            with sdpa_kernel(list(SDPA_BACKENDS)):  # the G heads as G unmasked query rows over [b,kv,s,d]
                ctx = F.scaled_dot_product_attention(qh, k, v, scale=1.0)
        else:
            scores = torch.matmul(qh, k.transpose(-1, -2))  # [b,kv,G,s]
            probs = torch.softmax(scores, dim=-1)
            ctx = torch.matmul(probs, v)  # [b,kv,G,d]
        if out is None:
            return ctx.reshape(b, 1, model.q_dim)
        out.view(b, kvh, g, d).copy_(ctx)
        return out
    qh = q_in.view(b, q, heads, d).transpose(1, 2)  # [b,H,q,d] (a view)
    with sdpa_kernel(list(SDPA_BACKENDS)):
        if q > 1 and pos0 > 0:
            mask = ~attention_mask(q, 1, pos0, valid, valid, q_in.device)  # True = attend
            o = F.scaled_dot_product_attention(qh, k, v, attn_mask=mask, enable_gqa=g > 1)
        else:
            o = F.scaled_dot_product_attention(qh, k, v, is_causal=q > 1, enable_gqa=g > 1)
    o = o.transpose(1, 2)  # [b,q,H,d]
    if out is None:
        return o.reshape(b, q, model.q_dim)
    out.view(b, q, heads, d).copy_(o)
    return out


def attn_score(
    q_in: torch.Tensor,
    k: torch.Tensor,
    model: ModelSpec,
    mask: Optional[torch.Tensor],
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Split attention, first half (score and context on different devices): Q [b,q,q_dim], K [b,kv,s,d]
    (the live prefix) -> scores [b,kv,G q,s], causally masked when ``mask`` (from ``attention_mask``) is
    given (prefill); decode (q = 1) needs no mask."""
    b, q, _ = q_in.shape
    kvh = model.num_kv_heads
    g = model.num_heads // kvh
    qh = _scaled_groups(q_in, model)
    width = k.shape[2]
    if out is None:
        out = torch.empty((b, kvh, g * q, width), dtype=q_in.dtype, device=q_in.device)
    torch.matmul(qh, k.transpose(-1, -2), out=out)
    if mask is not None:
        out.masked_fill_(mask, float("-inf"))
    return out


def attn_context(
    scores: torch.Tensor, v: torch.Tensor, model: ModelSpec, q: int, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Split attention, second half: softmax(scores) [b,kv,G q,s] @ V [b,kv,s,d] (live prefix) -> ctx [b,q,q_dim]."""
    b, kvh, gq, width = scores.shape
    g, d = gq // q, model.head_dim
    probs = torch.softmax(scores, dim=-1)
    ctx = torch.matmul(probs, v)  # [b, kv, G q, d]
    ctx = ctx.view(b, kvh, g, q, d).permute(0, 3, 1, 2, 4)  # [b, q, kv, G, d]
    if out is None:
        return ctx.reshape(b, q, model.q_dim)
    out.view(b, q, kvh, g, d).copy_(ctx)
    return out


def out_proj(
    ctx: torch.Tensor, p: dict[str, torch.Tensor], resid: torch.Tensor, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    return project(ctx, p, resid=resid, out=out)


def fc1(
    h_mid: torch.Tensor, p: dict[str, torch.Tensor], model: ModelSpec, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    x = norm(h_mid, p["norm_w"], p.get("norm_b"), model.norm_eps)
    if model.gated_mlp:
        u = project(x, p)
        f = model.ffn_size
        gate, up = u[..., :f], u[..., f:]
        if out is None:
            return F.silu(gate) * up
        torch.mul(F.silu(gate), up, out=out)
        return out
    u = project(x, p, out=out)
    return torch.relu_(u)


def fc2(
    mid: torch.Tensor, p: dict[str, torch.Tensor], resid: torch.Tensor, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    return project(mid, p, resid=resid, out=out)


def final_logits(
    x_last: torch.Tensor,
    norm_w: torch.Tensor,
    norm_b: Optional[torch.Tensor],
    lm_head: torch.Tensor,
    eps: float = NORM_EPS,
) -> torch.Tensor:
    """[B, h] -> logits [B, vocab] (final norm + LM head)."""
    return norm(x_last, norm_w, norm_b, eps) @ lm_head.t()


# ---- low-precision linears (issue 12): new functions beside ``linear``, which ``project`` picks by the weight's dtype.
#
# int8 weight-only, per output channel, symmetric: s_n = max_k |W[n, k]| / 127 rounded to bf16, Wq = round(W / s_n)
# clamped to [-127, 127]; the linear computes x (s * Wq)^T + b with bf16 activations: torch's fused
# ``_weight_int8pack_mm`` on a CPU that has it (it dequantises inside the GEMM), else (the GPU) dequantise-then-matmul.
# fp8 (e4m3, Hopper): weights scaled per output channel and activations per token into e4m3 (|max| 448), the
# product through ``torch._scaled_mm`` with fp32 scales; elsewhere the dequantised weight in a bf16 GEMM.

INT8_MAX = 127.0
FP8_E4M3_MAX = 448.0


def quantize_int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W [N, K] -> (Wq int8 [N, K], scales bf16 [N]); each |W - s Wq| <= s / 2 (+ bf16 rounding of W)."""
    w32 = w.float()
    scales = (w32.abs().amax(dim=1) / INT8_MAX).clamp_min(torch.finfo(torch.float32).tiny).to(torch.bfloat16)
    q = torch.round(w32 / scales.float()[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """s_n * Wq[n, k] in ``dtype`` (the reference the int8 linear is checked against)."""
    return (q.float() * scales.float()[:, None]).to(dtype)


@functools.lru_cache(maxsize=None)
def int8pack_available(device: torch.device) -> bool:
    """Whether torch's fused weight-only int8 GEMM runs on this device (bf16 activations); asked once per device."""
    if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        return False
    try:
        x = torch.zeros((1, 32), dtype=torch.bfloat16, device=device)
        torch.ops.aten._weight_int8pack_mm(
            x, torch.zeros((8, 32), dtype=torch.int8, device=device), torch.ones(8, dtype=torch.bfloat16, device=device)
        )
        return True
    except (RuntimeError, NotImplementedError):
        return False


def linear_int8(
    x: torch.Tensor,
    q: torch.Tensor,
    scales: torch.Tensor,
    b: Optional[torch.Tensor],
    *,
    resid: Optional[torch.Tensor] = None,
    fused: Optional[bool] = None,
) -> torch.Tensor:
    """[..., K] -> [..., N] = resid + x (s Wq)^T + b with int8 weights. ``fused``: None picks
    ``_weight_int8pack_mm`` on a CPU where it runs, True demands it, False dequantises then runs ``linear``."""
    if fused is None:  # torch's CUDA _weight_int8pack_mm is a row-at-a-time kernel: on the H200 0.34 ms per row of a
        # 7168x21504 weight, 1.4 s for 4096 rows (calibration 2026-12-01T14:51Z), so the GPU dequantises instead
        fused = x.device.type == "cpu" and int8pack_available(x.device)
    if not fused:
        return _dequantised_linear(x, q, scales, b, resid)
    lead = x.shape[:-1]
    y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.shape[-1]).contiguous(), q, scales.to(x.dtype))
    if b is not None:
        y = y + b
    if resid is not None:
        y = y + resid.reshape(y.shape)
    return y.reshape(*lead, q.shape[0])


def _dequantised_piece(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """s_n * Wq[n, k] in ``dtype``. With scales already in ``dtype`` (the runtime's bf16 row scales) one ``dtype``
    temporary, multiplied in place: the same values as dequantising through fp32 (an int8 or e4m3 value and a
    bf16 scale are exact in fp32, and both round the product once)."""
    if scales.dtype == dtype:
        w = q.to(dtype)
        return w.mul_(scales.reshape(-1, 1))
    return (q.float() * scales.float().reshape(-1, 1)).to(dtype)


def _dequantised_linear(
    x: torch.Tensor,
    q: torch.Tensor,
    scales: torch.Tensor,
    b: Optional[torch.Tensor],
    resid: Optional[torch.Tensor],
) -> torch.Tensor:
    """resid + x (s Wq)^T + b through bf16 GEMMs over pieces of rows of W, each dequantised into at most
    DEQUANT_PIECE_BYTES (lia_model.memory: the one temporary the memory model charges for it), not the whole
    matrix (a Llama-2-70B fc1 would need a 0.94 GB temporary)."""
    n, k = q.shape
    rows = max(1, DEQUANT_PIECE_BYTES // (k * x.element_size()))
    if rows >= n:
        return linear(x, _dequantised_piece(q, scales, x.dtype), b, resid=resid)
    lead = x.shape[:-1]
    out = torch.empty((*lead, n), dtype=x.dtype, device=x.device)
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        piece = linear(
            x,
            _dequantised_piece(q[lo:hi], scales[lo:hi], x.dtype),
            None if b is None else b[lo:hi],
            resid=None if resid is None else resid[..., lo:hi],
        )
        out[..., lo:hi] = piece
    return out


def quantize_fp8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W [N, K] -> (Wq float8_e4m3fn [N, K], scales fp32 [N, 1]) with W ~ s Wq."""
    w32 = w.float()
    scales = (w32.abs().amax(dim=1, keepdim=True) / FP8_E4M3_MAX).clamp_min(torch.finfo(torch.float32).tiny)
    return (w32 / scales).clamp_(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn), scales


def quantize_fp8_rows_bf16_scales(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W [N, K] -> (Wq float8_e4m3fn [N, K], scales bf16 [N]) as the runtime stores fp8 weights
    (runtime/weights.py): each row's scale max|w| / 448 rounded to bf16 first, so Wq = w / s stays in range."""
    w32 = w.float()
    scales = (w32.abs().amax(dim=1) / FP8_E4M3_MAX).clamp_min(torch.finfo(torch.float32).tiny).to(torch.bfloat16)
    q = (w32 / scales.float()[:, None]).clamp_(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scales


def quantize_rows(w: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """W [N, K] -> (values in ``dtype`` (int8 or float8_e4m3fn), bf16 scale per row): how the runtime stores a
    quantised matrix (a checkpoint's bf16 weights quantised when loaded)."""
    if dtype == torch.int8:
        return quantize_int8_per_channel(w)
    return quantize_fp8_rows_bf16_scales(w)


def dequantize_fp8(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return (q.float() * scales).to(dtype)


@functools.lru_cache(maxsize=None)
def scaled_mm_available(device: torch.device) -> bool:
    """Whether ``torch._scaled_mm`` runs fp8 GEMMs here: a CUDA device of compute capability 8.9 or more (Ada,
    Hopper); elsewhere fp8 weights are dequantised into a bf16 GEMM."""
    return device.type == "cuda" and hasattr(torch, "_scaled_mm") and torch.cuda.get_device_capability(device) >= (8, 9)


def project(
    x: torch.Tensor,
    p: dict[str, torch.Tensor],
    *,
    resid: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """[..., K] -> [..., N] = resid + x W^T + b with the sublayer's stored weights (runtime/weights.py): bf16
    through ``linear``; int8 with per-row scales through ``linear_int8`` (torch's fused weight-only GEMM where the
    device has it: the CPU; else dequantised); fp8 through ``linear_fp8`` (fp8 tensor cores where
    ``scaled_mm_available``; else dequantised)."""
    w = p["w"]
    if w.dtype == torch.bfloat16 or "w_scale" not in p:
        return linear(x, w, p.get("b"), resid=resid, out=out)
    if w.dtype == torch.int8:
        y = linear_int8(x, w, p["w_scale"], p.get("b"), resid=resid)
    else:  # the bf16 row scales as stored: _scaled_mm takes them as fp32, the dequantising path as they are
        y = linear_fp8(x, w, p["w_scale"], p.get("b"), resid=resid, scaled_mm=scaled_mm_available(x.device))
    if out is None:
        return y
    out.copy_(y)
    return out


def linear_fp8(
    x: torch.Tensor,
    q: torch.Tensor,
    scales: torch.Tensor,
    b: Optional[torch.Tensor],
    *,
    resid: Optional[torch.Tensor] = None,
    scaled_mm: bool = True,
) -> torch.Tensor:
    """[..., K] -> [..., N] = resid + x (s Wq)^T + b with fp8 weights. ``scaled_mm``: quantise x per token to
    e4m3 and run ``torch._scaled_mm`` (fp8 tensor cores on Hopper); False: the dequantised weight in bf16."""
    if not scaled_mm:
        return _dequantised_linear(x, q, scales, b, resid)
    lead, k = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, k)
    y = torch.empty((x2.shape[0], q.shape[0]), dtype=x.dtype, device=x.device)
    scale_b = scales.float().reshape(1, -1)
    bias = None if b is None else b.to(x.dtype)
    # activations quantised in pieces of rows whose fp32 and e4m3 temporaries fit DEQUANT_PIECE_BYTES (the memory
    # model's charge), not the whole prefill chunk at once
    rows = max(1, DEQUANT_PIECE_BYTES // (k * 5))
    for lo in range(0, x2.shape[0], rows):
        part = x2[lo : lo + rows]
        xs = (part.abs().amax(dim=1, keepdim=True).float() / FP8_E4M3_MAX).clamp_min(torch.finfo(torch.float32).tiny)
        xq = (part.float() / xs).clamp_(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
        y[lo : lo + rows] = torch._scaled_mm(xq, q.t(), scale_a=xs, scale_b=scale_b, out_dtype=x.dtype, bias=bias)
    if resid is not None:
        y = y + resid.reshape(y.shape)
    return y.reshape(*lead, q.shape[0])
