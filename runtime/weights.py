"""Weights (random bf16 with a model's real shapes, or a checkpoint's), packed per sublayer so one copy moves
one sublayer.

Each decoder layer is one flat block of host memory: [qkv | out_proj | fc1 | fc2], and each sublayer's
region holds its matrix, its bias and the norm that rides with it (docs/design.md section 2):

  qkv       W [q_dim + 2 kv_dim, h], b [q_dim + 2 kv_dim]*, norm_w [h], norm_b [h]*   (input norm)
  out_proj  W [h, q_dim], b [h]*
  fc1       W [m f, h], b [m f]*, norm_w [h], norm_b [h]*                            (post-attention norm)
  fc2       W [h, f], b [h]*

(* only when the model has biases; such models use LayerNorm, the others RMSNorm. m = 2 for a gated MLP:
rows [0, f) are the gate and rows [f, 2f) the up projection.) The element counts equal
``lia_model.accounting.sublayer_params``, so the bytes the runtime streams are the bytes the cost model
charges. Mixture-of-experts layers are not supported by the runtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from lia_model.accounting import sublayer_params
from lia_model.errors import LiaInputError
from lia_model.models import ModelSpec
from lia_model.plan import Device
from lia_model.sublayers import SUBLAYERS, WEIGHTED_SUBLAYERS, Sublayer
from runtime.backend import Backend
from runtime.hostmem import HostArena

WEIGHTED_ORDER: tuple[Sublayer, ...] = tuple(s for s in SUBLAYERS if s in WEIGHTED_SUBLAYERS)


@dataclass(frozen=True)
class Part:
    name: str
    shape: tuple[int, ...]
    offset: int  # elements from the start of the sublayer's region

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Region:
    sublayer: Sublayer
    offset: int  # elements from the start of the layer block
    numel: int
    parts: tuple[Part, ...]

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named views of one sublayer region (``flat`` is exactly this region, 1-D)."""
        return {p.name: flat[p.offset : p.offset + p.numel].view(p.shape) for p in self.parts}


@dataclass(frozen=True)
class LayerLayout:
    regions: dict[Sublayer, Region]
    numel: int

    def region_of(self, flat_layer: torch.Tensor, sub: Sublayer) -> torch.Tensor:
        r = self.regions[sub]
        return flat_layer[r.offset : r.offset + r.numel]

    def views(self, flat_layer: torch.Tensor, sub: Sublayer) -> dict[str, torch.Tensor]:
        return self.regions[sub].views(self.region_of(flat_layer, sub))


def check_supported(model: ModelSpec) -> None:
    if model.is_moe:
        raise LiaInputError(
            "model",
            f"{model.name} is a mixture-of-experts model ({model.num_experts} experts); the runtime "
            "executes dense decoder layers only",
            "validate a dense model, e.g. opt-30b or llama-2-70b",
        )


def layer_layout(model: ModelSpec) -> LayerLayout:
    check_supported(model)
    h, f = model.hidden_size, model.ffn_size
    qkv_out = model.q_dim + 2 * model.kv_dim
    mf = model.mlp_matrices * f
    bias = model.linear_bias

    def parts(items: list[tuple[str, tuple[int, ...], bool]]) -> tuple[Part, ...]:
        out, off = [], 0
        for name, shape, present in items:
            if present:
                out.append(Part(name, shape, off))
                off += math.prod(shape)
        return tuple(out)

    specs = {
        Sublayer.QKV: parts(
            [("w", (qkv_out, h), True), ("b", (qkv_out,), bias), ("norm_w", (h,), True), ("norm_b", (h,), bias)]
        ),
        Sublayer.OUT_PROJ: parts([("w", (h, model.q_dim), True), ("b", (h,), bias)]),
        Sublayer.FC1: parts([("w", (mf, h), True), ("b", (mf,), bias), ("norm_w", (h,), True), ("norm_b", (h,), bias)]),
        Sublayer.FC2: parts([("w", (h, f), True), ("b", (h,), bias)]),
    }
    regions, off = {}, 0
    for sub in WEIGHTED_ORDER:
        n = sum(p.numel for p in specs[sub])
        regions[sub] = Region(sub, off, n, specs[sub])
        off += n
    expected = sublayer_params(model)
    for sub, region in regions.items():
        assert region.numel == expected[sub], (sub, region.numel, expected[sub])
    return LayerLayout(regions, off)


@dataclass
class Embeddings:
    """Token (and learned position) embeddings, final norm and LM head, on the GPU when there is one."""

    tokens: torch.Tensor  # [vocab, h]
    positions: "torch.Tensor | None"  # [learned_positions, h] (OPT: index = position + 2)
    norm_w: torch.Tensor
    norm_b: "torch.Tensor | None"
    lm_head: torch.Tensor  # [vocab, h] (the token embedding when tied)
    dev: Device


class ModelWeights:
    """Host weights of every layer (views into a ``HostArena``) and the embeddings.

    Random weights (``seed`` given): the arena's random fill, norms written here, random embeddings; when the
    arena holds fewer layers than the model, later layers reuse earlier blocks. A checkpoint (``seed=None``,
    ``runtime/hf_loader.py``): every layer has its own block, which the loader fills, and ``embeddings`` are given.
    """

    def __init__(
        self,
        model: ModelSpec,
        arena: HostArena,
        backend: Backend,
        seed: Optional[int] = 0,
        embeddings: Optional[Embeddings] = None,
    ) -> None:
        self.model = model
        self.layout = layer_layout(model)
        self.arena = arena
        self.dtype = arena.dtype
        blocks = arena.numel // self.layout.numel
        size = self.dtype.itemsize
        if blocks < (1 if seed is not None else model.num_layers):
            need = self.layout.numel * (1 if seed is not None else model.num_layers)
            raise LiaInputError(
                "host memory",
                f"the weight arena ({arena.numel * size / 1e9:.2f} GB) is smaller "
                f"than {'one' if seed is not None else 'every'} {model.name} layer "
                f"({need * size / 1e9:.2f} GB)",
                "give the run more host memory for weights",
            )
        self.distinct_layers = min(blocks, model.num_layers)
        self.host_layers = [
            arena.view((i % self.distinct_layers) * self.layout.numel, self.layout.numel)
            for i in range(model.num_layers)
        ]
        if seed is None:
            if embeddings is None:
                raise ValueError("weights from a checkpoint need their embeddings")
            self.embeddings = embeddings
            return
        for i in range(self.distinct_layers):
            self._write_norms(self.host_layers[i], seed * 7919 + i)
        self.embeddings = self._make_embeddings(backend, seed)

    @property
    def layers_share_weights(self) -> bool:
        return self.distinct_layers < self.model.num_layers

    def _write_norms(self, flat_layer: torch.Tensor, seed: int) -> None:
        """Norm weights near 1 and biases near 0, written (not transformed) so rewriting is idempotent."""
        gen = torch.Generator().manual_seed(seed)
        for sub in (Sublayer.QKV, Sublayer.FC1):
            v = self.layout.views(flat_layer, sub)
            v["norm_w"].copy_(1.0 + 0.1 * (2 * torch.rand(v["norm_w"].shape, generator=gen) - 1))
            if "norm_b" in v:
                v["norm_b"].copy_(0.1 * (2 * torch.rand(v["norm_b"].shape, generator=gen) - 1))

    def _make_embeddings(self, backend: Backend, seed: int) -> Embeddings:
        m = self.model
        dev = Device.GPU if backend.has_gpu else Device.CPU
        device = backend.torch_device(dev)
        gen = torch.Generator(device=device).manual_seed(seed + 17)
        bound = math.sqrt(3.0 / m.hidden_size)

        def rand(*shape: int, lo: float = -bound, hi: float = bound) -> torch.Tensor:
            return torch.empty(shape, dtype=self.dtype, device=device).uniform_(lo, hi, generator=gen)

        tokens = rand(m.vocab_size, m.hidden_size)
        positions = rand(m.learned_positions, m.hidden_size) if m.learned_positions else None
        norm_w = rand(m.hidden_size, lo=0.9, hi=1.1)
        norm_b = rand(m.hidden_size, lo=-0.1, hi=0.1) if m.linear_bias else None
        lm_head = tokens if m.tied_embeddings else rand(m.vocab_size, m.hidden_size)
        return Embeddings(tokens, positions, norm_w, norm_b, lm_head, dev)

    def embeddings_on(self, dev: Device, backend: Backend) -> Embeddings:
        """The embeddings and LM head on ``dev`` (copied there once when they live elsewhere)."""
        emb = self.embeddings
        if emb.dev == dev:
            return emb
        cache = self.__dict__.setdefault("_emb_copies", {})
        if dev not in cache:
            device = backend.torch_device(dev)

            def move(t: "torch.Tensor | None") -> "torch.Tensor | None":
                return None if t is None else t.to(device)

            tokens = move(emb.tokens)
            lm_head = tokens if emb.lm_head is emb.tokens else move(emb.lm_head)
            cache[dev] = Embeddings(tokens, move(emb.positions), move(emb.norm_w), move(emb.norm_b), lm_head, dev)
        return cache[dev]

    def sublayer_host(self, layer: int, sub: Sublayer) -> torch.Tensor:
        return self.layout.region_of(self.host_layers[layer], sub)

    def host_views(self, layer: int, sub: Sublayer) -> dict[str, torch.Tensor]:
        return self.layout.views(self.host_layers[layer], sub)


def embedding_positions_offset(model: ModelSpec) -> int:
    """OPT's learned position table starts at index 2 (Hugging Face OPTLearnedPositionalEmbedding)."""
    return 2 if model.learned_positions >= model.max_context + 2 else 0
