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

Quantised weights (``weight_dtype`` int8 or fp8_e4m3, per output channel: lia_model.precision): each W is stored
as one byte per value, followed by its scales ``w_scale`` [N] in bf16, then the bf16 vectors as above. The
flat block stays in bf16 units (two stored bytes per unit: an int8 W of N x K values takes N K / 2 units), so
streaming, the GPU buffers and resident copies move bytes unchanged; views reinterpret them. Each region is
padded to 16 bytes (cuBLAS needs aligned fp8 operands); the stored bytes equal
``lia_model.accounting.sublayer_weight_bytes`` at that precision up to that padding. int4 and group-wise scales
are not run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from lia_model.accounting import sublayer_params, sublayer_weight_bytes
from lia_model.errors import LiaInputError
from lia_model.models import ModelSpec
from lia_model.plan import Device
from lia_model.precision import Precision, WeightDtype
from lia_model.sublayers import SUBLAYERS, WEIGHTED_SUBLAYERS, Sublayer
from runtime.backend import Backend
from runtime.hostmem import HostArena

WEIGHTED_ORDER: tuple[Sublayer, ...] = tuple(s for s in SUBLAYERS if s in WEIGHTED_SUBLAYERS)


# Stored dtype of a part: bf16 (two bytes, one unit of the flat block) or one byte per value.
PART_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "int8": torch.int8,
    "fp8_e4m3": torch.float8_e4m3fn,
}
RUNNABLE_WEIGHT_DTYPES = (WeightDtype.BF16, WeightDtype.INT8, WeightDtype.FP8_E4M3)
UNIT_BYTES = 2  # the flat block's element: bf16
ALIGN_UNITS = 8  # 16 bytes


@dataclass(frozen=True)
class Part:
    name: str
    shape: tuple[int, ...]
    offset: int  # units (bf16 elements) from the start of the sublayer's region
    dtype: str = "bf16"

    @property
    def numel(self) -> int:
        """Units of the flat block the part occupies (its bytes over 2, rounded up)."""
        nbytes = math.prod(self.shape) * PART_DTYPES[self.dtype].itemsize
        return -(-nbytes // UNIT_BYTES)


@dataclass(frozen=True)
class Region:
    sublayer: Sublayer
    offset: int  # elements from the start of the layer block
    numel: int
    parts: tuple[Part, ...]

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named views of one sublayer region (``flat`` is exactly this region, 1-D), in each part's dtype."""
        out = {}
        for p in self.parts:
            units = flat[p.offset : p.offset + p.numel]
            if p.dtype != "bf16":
                units = units.view(torch.uint8)[: math.prod(p.shape)].view(PART_DTYPES[p.dtype])
            out[p.name] = units.view(p.shape)
        return out


@dataclass(frozen=True)
class LayerLayout:
    regions: dict[Sublayer, Region]
    numel: int
    weight_dtype: WeightDtype = WeightDtype.BF16

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


def check_runnable(precision: Precision) -> None:
    """The precisions the runtime executes: bf16, int8 or fp8 weights per output channel, bf16 KV cache."""
    if precision.weight_dtype not in RUNNABLE_WEIGHT_DTYPES:
        raise LiaInputError(
            "--weight-dtype",
            f"the runtime does not run {precision.weight_dtype.value} weights (the cost model prices them)",
            "run int8, fp8_e4m3 or bf16 weights, or plan without running",
        )
    if precision.weight_group_size is not None:
        raise LiaInputError(
            "--group-size",
            f"the runtime quantises per output channel, not in groups of {precision.weight_group_size}",
            "drop --group-size to run",
        )
    if precision.kv_dtype.value != "bf16":
        raise LiaInputError(
            "--kv-dtype",
            f"the runtime keeps the KV cache in bf16, not {precision.kv_dtype.value}",
            "use --kv-dtype bf16 to run",
        )


def layer_layout(model: ModelSpec, weight_dtype: WeightDtype = WeightDtype.BF16) -> LayerLayout:
    check_supported(model)
    weight_dtype = WeightDtype(weight_dtype)
    check_runnable(Precision(weight_dtype=weight_dtype))
    quantised = weight_dtype != WeightDtype.BF16
    h, f = model.hidden_size, model.ffn_size
    qkv_out = model.q_dim + 2 * model.kv_dim
    mf = model.mlp_matrices * f
    bias = model.linear_bias

    def parts(items: list[tuple[str, tuple[int, ...], bool]]) -> tuple[Part, ...]:
        out, off = [], 0
        for name, shape, present in items:
            if not present:
                continue
            if name == "w" and quantised:
                out.append(Part("w", shape, off, weight_dtype.value))
                off += out[-1].numel
                out.append(Part("w_scale", (shape[0],), off))
            else:
                out.append(Part(name, shape, off))
            off += out[-1].numel
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
        if quantised:
            n = -(-n // ALIGN_UNITS) * ALIGN_UNITS  # the next region's W starts 16-byte aligned
        regions[sub] = Region(sub, off, n, specs[sub])
        off += n
    if quantised:
        expected_bytes = sublayer_weight_bytes(model, Precision(weight_dtype=weight_dtype))
        for sub, region in regions.items():
            assert 0 <= region.numel * UNIT_BYTES - expected_bytes[sub] < ALIGN_UNITS * UNIT_BYTES + 2, (sub, region)
    else:
        expected = sublayer_params(model)
        for sub, region in regions.items():
            assert region.numel == expected[sub], (sub, region.numel, expected[sub])
    return LayerLayout(regions, off, weight_dtype)


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
        weight_dtype: WeightDtype = WeightDtype.BF16,
    ) -> None:
        self.model = model
        self.layout = layer_layout(model, weight_dtype)
        self.weight_dtype = self.layout.weight_dtype
        self.arena = arena
        self.dtype = arena.dtype
        if self.weight_dtype != WeightDtype.BF16 and self.dtype != torch.bfloat16:
            raise LiaInputError(
                "--weight-dtype",
                f"{self.weight_dtype.value} weights are stored in a bf16 weight arena, not {self.dtype}",
                "run quantised weights with the default bfloat16 compute dtype",
            )
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
        if arena.holds_quantised:
            # another model's int8/fp8 bytes would read as garbage bf16 (NaN, inf) in this model's biases, norms or
            # bf16 matrices, whose layout differs: the random fill first
            arena.refill()
        arena.holds_quantised = self.weight_dtype != WeightDtype.BF16
        for i in range(self.distinct_layers):
            self._write_norms(self.host_layers[i], seed * 7919 + i)
            if self.weight_dtype != WeightDtype.BF16:
                self._write_quantised(self.host_layers[i], seed * 7919 + i, arena.bound, backend)
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

    def _write_quantised(self, flat_layer: torch.Tensor, seed: int, bound: float, backend: Backend) -> None:
        """Random quantised matrices whose dequantised values spread over [-bound, bound] like the bf16 fill:
        int8 uniform in [-127, 127] (fp8: uniform in [-448, 448], rounded to e4m3), each row's scale
        bound / qmax x U(0.9, 1.1). Drawn on the GPU when there is one (a 70B model's int8 weights are tens of GB),
        in pieces."""
        device = backend.torch_device(Device.GPU) if backend.is_cuda else torch.device("cpu")
        gen = torch.Generator(device=device).manual_seed(seed + 101)
        fp8 = self.weight_dtype == WeightDtype.FP8_E4M3
        qmax = 448.0 if fp8 else 127.0
        for sub in WEIGHTED_ORDER:
            v = self.layout.views(flat_layer, sub)
            rows = v["w"].shape[0]
            scale = torch.empty(rows, dtype=torch.float32, device=device).uniform_(0.9, 1.1, generator=gen)
            v["w_scale"].copy_((scale * (bound / qmax)).to(torch.bfloat16))
            step = max(1, (64 << 20) // v["w"].shape[1])  # about 64 MB per piece
            for lo in range(0, rows, step):
                hi = min(rows, lo + step)
                shape = (hi - lo, v["w"].shape[1])
                if fp8:
                    piece = torch.empty(shape, dtype=torch.float32, device=device).uniform_(-qmax, qmax, generator=gen)
                    piece = piece.to(torch.float8_e4m3fn)
                else:
                    piece = torch.randint(-127, 128, shape, dtype=torch.int8, device=device, generator=gen)
                v["w"][lo:hi].copy_(piece)

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
