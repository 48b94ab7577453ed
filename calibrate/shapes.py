"""The shapes the calibrator measures: the catalog's linear sublayers and attention, per mode.

A linear sublayer is a product of (tokens x K) activations with a (K x N) weight (``F.linear`` with the
weight stored N x K, as a runtime keeps it). Its (K, N) come from the model catalog: qkv (h, q_dim +
2 kv_dim), out_proj (q_dim, h), fc1 (h, f x mlp_matrices; gate and up together when gated; one expert for
MoE), fc2 (f, h). Attention is a batched matmul over B x heads: score (q x head_dim) @ (head_dim x s),
context softmax(scores) (q x s) @ (s x head_dim); decode has q = 1, prefill q = s.

Priorities order the work so that a time budget cuts the least important points: the headline shape
(OPT-30B fc1 at tokens 1, 16, 256, 2048) first, then OPT-30B's four sublayers over all token counts, then
every other catalog shape at a few token counts. A FLOP cap per call keeps slow ISAs from spending their
budget on a few huge products (the headline points are exempt).
"""

from __future__ import annotations

from dataclasses import dataclass

from lia_model.accounting import linear_shape
from lia_model.models import CATALOG, ModelSpec
from lia_model.sublayers import Sublayer

HEADLINE_MODEL = "opt-30b"
HEADLINE_SUBLAYER = Sublayer.FC1
HEADLINE_TOKENS = (1, 16, 256, 2048)
FULL_TOKENS = tuple(2**k for k in range(13))  # 1 .. 4096

LINEAR_SUBLAYERS = (Sublayer.QKV, Sublayer.OUT_PROJ, Sublayer.FC1, Sublayer.FC2)


@dataclass(frozen=True)
class LinearShape:
    label: str  # "opt-30b.fc1" (the first catalog model with this (K, N))
    k: int
    n: int


@dataclass(frozen=True)
class MatmulPoint:
    shape: LinearShape
    tokens: int
    priority: int  # 0 headline, 1 core (OPT-30B), 2 other catalog shapes

    @property
    def flops(self) -> float:
        return 2.0 * self.tokens * self.shape.k * self.shape.n


@dataclass(frozen=True)
class AttentionPoint:
    batch: int
    heads: int
    q: int
    s: int
    head_dim: int

    @property
    def label(self) -> str:
        return f"B{self.batch}.q{self.q}.s{self.s}"

    @property
    def flops(self) -> float:
        """One of score or context: 2 B heads q s head_dim (the cost model's count)."""
        return 2.0 * self.batch * self.heads * self.q * self.s * self.head_dim


def catalog_shapes(models: dict[str, ModelSpec] = CATALOG) -> list[LinearShape]:
    """Distinct (K, N) of the catalog's linear sublayers, OPT-30B first, in catalog order."""
    order = [HEADLINE_MODEL] + [m for m in models if m != HEADLINE_MODEL]
    seen: dict[tuple[int, int], LinearShape] = {}
    for name in order:
        for sub in LINEAR_SUBLAYERS:
            k, n = linear_shape(models[name], sub)
            seen.setdefault((k, n), LinearShape(f"{name}.{sub.value}", k, n))
    return list(seen.values())


def headline_shape() -> LinearShape:
    k, n = linear_shape(CATALOG[HEADLINE_MODEL], HEADLINE_SUBLAYER)
    return LinearShape(f"{HEADLINE_MODEL}.{HEADLINE_SUBLAYER.value}", k, n)


def matmul_plan(
    quick: bool, flop_cap: float = float("inf"), extra_tokens: tuple[int, ...] = (1, 256), max_tokens: int = 4096
) -> list[MatmulPoint]:
    """Points in priority order. ``flop_cap`` (FLOPs per call) drops big non-headline points."""
    head = headline_shape()
    if quick:
        small = next(s for s in catalog_shapes() if s.label == "mixtral-8x7b.out_proj")
        points = [MatmulPoint(head, t, 0) for t in (1, 16, 256)]
        points += [MatmulPoint(small, t, 1) for t in (1, 16, 64, 256)]
        return points
    points = [MatmulPoint(head, t, 0) for t in HEADLINE_TOKENS]
    core = [s for s in catalog_shapes() if s.label.startswith(HEADLINE_MODEL + ".")]
    for shape in core:
        for t in FULL_TOKENS:
            if t > max_tokens or (shape == head and t in HEADLINE_TOKENS):
                continue
            points.append(MatmulPoint(shape, t, 1))
    for shape in catalog_shapes():
        if shape in core:
            continue
        points += [MatmulPoint(shape, t, 2) for t in extra_tokens if t <= max_tokens]
    return [p for p in points if p.priority == 0 or p.flops <= flop_cap]


def attention_plan(quick: bool) -> list[AttentionPoint]:
    """Decode (q = 1) over batch and context, and prefill (q = s) over prompt length, OPT-30B heads."""
    model = CATALOG[HEADLINE_MODEL]
    heads, hd = model.num_heads, model.head_dim
    if quick:
        return [AttentionPoint(4, heads, 1, 512, hd), AttentionPoint(1, heads, 128, 128, hd)]
    decode = [
        AttentionPoint(b, heads, 1, s, hd) for b, s in ((8, 2048), (1, 512), (32, 2048), (1, 2048), (8, 512), (32, 512))
    ]
    prefill = [AttentionPoint(1, heads, s, s, hd) for s in (512, 128, 2048, 32)]
    # interleaved, so that a budget cut leaves both decode (q = 1) and prefill (q = s) points
    return [p for pair in zip(decode, prefill + [None] * len(decode)) for p in pair if p is not None]


def gpu_attention_plan(quick: bool) -> list[AttentionPoint]:
    model = CATALOG[HEADLINE_MODEL]
    heads, hd = model.num_heads, model.head_dim
    if quick:
        return attention_plan(True)
    decode = [AttentionPoint(b, heads, 1, s, hd) for b in (1, 8, 32, 64) for s in (512, 2048)]
    prefill = [AttentionPoint(b, heads, s, s, hd) for b in (1, 4) for s in (32, 128, 512, 2048)]
    return decode + prefill


def gpu_matmul_plan(quick: bool) -> list[MatmulPoint]:
    """Every catalog shape over every token count (a GPU does them all in seconds); quick: the CPU set."""
    if quick:
        return matmul_plan(True)
    head = headline_shape()
    points = [MatmulPoint(head, t, 0) for t in HEADLINE_TOKENS]
    for shape in catalog_shapes():
        points += [
            MatmulPoint(shape, t, 1 if shape.label.startswith(HEADLINE_MODEL + ".") else 2)
            for t in FULL_TOKENS
            if not (shape == head and t in HEADLINE_TOKENS)
        ]
    return points
