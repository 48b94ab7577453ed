"""Numeric precision of a workload: how the weights and the KV cache are stored (pure; no I/O).

The optimiser places sublayers for a given precision; it never chooses one. Set by the user
(``--weight-dtype``, ``--kv-dtype``) or read from a checkpoint's ``quantization_config``.

Storage (bytes per element), the one place these numbers live:
  weights (the matrices of qkv, out_proj, fc1, fc2 and the MoE router; biases, norms, the embeddings and
  the LM head stay bf16, as AWQ, GPTQ and fp8 checkpoints keep them):
    bf16        2
    fp8_e4m3    1   + one bf16 scale per group along K (default group: a whole row, i.e. per output channel)
    int8        1   + one bf16 scale per group (symmetric; default: per output channel)
    int4        0.5 + one bf16 scale and one 4-bit zero point per group (AWQ / GPTQ layout; default group 128)
  so an N x K matrix (E = N K elements) in groups of g along K holds
      E x value_bytes + N ceil(K / g) x (scale_bytes + zero_bytes).
  KV cache: bf16 2, fp8 1, int8 1 (one scale per layer tensor: a few bytes per layer, not counted).
Activations stay bf16 everywhere (an fp8 GEMM quantises its input inside the kernel).
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lia_model.units import BF16_BYTES

MAX_GROUP_SIZE = 1 << 20


class WeightDtype(str, Enum):
    BF16 = "bf16"
    FP8_E4M3 = "fp8_e4m3"
    INT8 = "int8"
    INT4 = "int4"


class KvDtype(str, Enum):
    BF16 = "bf16"
    FP8 = "fp8"
    INT8 = "int8"


# Bytes of one stored value, and of the scale and zero point each group carries (see the module docstring).
WEIGHT_VALUE_BYTES = {WeightDtype.BF16: 2.0, WeightDtype.FP8_E4M3: 1.0, WeightDtype.INT8: 1.0, WeightDtype.INT4: 0.5}
WEIGHT_GROUP_OVERHEAD_BYTES = {
    WeightDtype.BF16: 0.0,
    WeightDtype.FP8_E4M3: 2.0,
    WeightDtype.INT8: 2.0,
    WeightDtype.INT4: 2.0 + 0.5,
}  # bf16 scale (+ 4-bit zero point for int4)
KV_VALUE_BYTES = {KvDtype.BF16: 2.0, KvDtype.FP8: 1.0, KvDtype.INT8: 1.0}
DEFAULT_INT4_GROUP_SIZE = 128


class Precision(BaseModel):
    """How weights and KV cache are stored. ``weight_group_size``: elements along K sharing one scale; None
    means one group per output channel (a whole row of K), the default of fp8 and int8; int4 defaults to 128."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weight_dtype: WeightDtype = Field(WeightDtype.BF16, description="Storage of the linear layers' matrices.")
    weight_group_size: Optional[int] = Field(
        None,
        ge=1,
        le=MAX_GROUP_SIZE,
        description="Elements along K per scale (int4, int8, fp8); None: per output channel.",
        examples=[128],
    )
    kv_dtype: KvDtype = Field(KvDtype.BF16, description="Storage of the KV cache.")

    @model_validator(mode="after")
    def _group_only_when_quantised(self) -> "Precision":
        if self.weight_dtype == WeightDtype.BF16 and self.weight_group_size is not None:
            raise ValueError("bf16 weights have no quantisation groups: drop weight_group_size")
        return self

    @property
    def is_bf16(self) -> bool:
        return self.weight_dtype == WeightDtype.BF16 and self.kv_dtype == KvDtype.BF16

    @property
    def weights_quantised(self) -> bool:
        return self.weight_dtype != WeightDtype.BF16

    def label(self) -> str:
        """Short words, e.g. 'weights int4 (g128), KV fp8'."""
        group = ""
        if self.weight_dtype == WeightDtype.INT4 or (self.weights_quantised and self.weight_group_size):
            group = f" (g{self.weight_group_size})" if self.weight_group_size else " (per channel)"
        return f"weights {self.weight_dtype.value}{group}, KV {self.kv_dtype.value}"


BF16 = Precision()


def make_precision(weight_dtype: str = "bf16", kv_dtype: str = "bf16", group_size: Optional[int] = None) -> Precision:
    """A Precision from CLI-style strings, with clear errors (int4 takes group 128 unless given)."""
    from lia_model.errors import LiaInputError

    try:
        w = WeightDtype(str(weight_dtype).strip().lower())
    except ValueError:
        raise LiaInputError(
            "--weight-dtype",
            f"unknown weight dtype '{weight_dtype}'",
            f"use one of {', '.join(d.value for d in WeightDtype)}",
        ) from None
    try:
        kv = KvDtype(str(kv_dtype).strip().lower())
    except ValueError:
        raise LiaInputError(
            "--kv-dtype", f"unknown KV dtype '{kv_dtype}'", f"use one of {', '.join(d.value for d in KvDtype)}"
        ) from None
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, int) or not 1 <= group_size <= MAX_GROUP_SIZE:
            raise LiaInputError(
                "--group-size",
                f"must be a whole number from 1 to {MAX_GROUP_SIZE}, got {group_size!r}",
                "e.g. --group-size 128",
            )
        if w == WeightDtype.BF16:
            raise LiaInputError(
                "--group-size",
                "bf16 weights are not quantised, so they have no groups",
                "drop --group-size, or give --weight-dtype int4 (or int8, fp8_e4m3)",
            )
    if w == WeightDtype.INT4 and group_size is None:
        group_size = DEFAULT_INT4_GROUP_SIZE
    return Precision(weight_dtype=w, weight_group_size=group_size, kv_dtype=kv)


def matrix_bytes(precision: Precision, elements: float, inner_dim: int) -> float:
    """Stored bytes of a weight matrix of ``elements`` values whose rows are ``inner_dim`` (K) long:
    E x value_bytes + N ceil(K / g) x group overhead (N = E / K rows; g = weight_group_size, or K: per output
    channel)."""
    w = precision.weight_dtype
    group = precision.weight_group_size or inner_dim
    groups = elements / inner_dim * math.ceil(inner_dim / group)  # N rows x ceil(K / g) groups each
    return elements * WEIGHT_VALUE_BYTES[w] + groups * WEIGHT_GROUP_OVERHEAD_BYTES[w]


def kv_element_bytes(precision: Precision) -> float:
    return KV_VALUE_BYTES[precision.kv_dtype]


ACT_BYTES = float(BF16_BYTES)
