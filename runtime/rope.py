"""Rotary position embedding frequencies of a model, RoPE scaling included (read from its config, never assumed).

Inverse frequency of the pair (i, i + d/2), i = 0 .. d/2 - 1, for head_dim d and base theta (``rope_theta``):

  inv_i = theta ^ (-2 i / d)                                               (RoFormer; Llama-2, Mistral)

Scaling (``ModelSpec.rope_scaling``):

- ``linear``: inv_i / factor (positions interpolated by ``factor``).
- ``llama3`` (Llama-3.1): with wavelength w_i = 2 pi / inv_i, L0 = original_max_position_embeddings and
  low / high the two frequency factors,
    w_i > L0 / low   (low frequencies)   ->  inv_i / factor
    w_i < L0 / high  (high frequencies)  ->  inv_i
    otherwise                            ->  (1 - s) inv_i / factor + s inv_i,  s = (L0 / w_i - low) / (high - low)
  so the interpolation weight s runs from 0 at w = L0 / low to 1 at w = L0 / high.

Computed in float32 (as the checkpoints' reference implementation does), on the device that uses them.
"""

from __future__ import annotations

import math

import torch

from lia_model.models import ModelSpec


def inverse_frequencies(model: ModelSpec, device: torch.device | str = "cpu") -> torch.Tensor:
    """[head_dim / 2] float32 inverse frequencies of ``model``'s rotary embedding."""
    d = model.head_dim
    inv = 1.0 / (model.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d))
    sc = model.rope_scaling
    if sc is None:
        return inv
    if sc.rope_type == "linear":
        return inv / sc.factor
    wavelength = 2 * math.pi / inv
    l0 = float(sc.original_max_position_embeddings)
    s = (l0 / wavelength - sc.low_freq_factor) / (sc.high_freq_factor - sc.low_freq_factor)
    between = (1 - s) * inv / sc.factor + s * inv
    return torch.where(
        wavelength > l0 / sc.low_freq_factor,
        inv / sc.factor,
        torch.where(wavelength < l0 / sc.high_freq_factor, inv, between),
    )
