"""The six sublayers of a decoder layer, in execution order (docs/design.md section 2)."""

from __future__ import annotations

from enum import Enum


class Sublayer(str, Enum):
    QKV = "qkv"
    ATTN_SCORE = "attn_score"
    ATTN_CONTEXT = "attn_context"
    OUT_PROJ = "out_proj"
    FC1 = "fc1"
    FC2 = "fc2"


SUBLAYERS: tuple[Sublayer, ...] = tuple(Sublayer)
NUM_SUBLAYERS = len(SUBLAYERS)

# Sublayers that own weights (streamed over PCIe when they run on the GPU in a non-resident layer).
WEIGHTED_SUBLAYERS: frozenset[Sublayer] = frozenset({Sublayer.QKV, Sublayer.OUT_PROJ, Sublayer.FC1, Sublayer.FC2})
ATTENTION_SUBLAYERS: frozenset[Sublayer] = frozenset({Sublayer.ATTN_SCORE, Sublayer.ATTN_CONTEXT})


class Stage(str, Enum):
    PREFILL = "prefill"
    DECODE = "decode"
