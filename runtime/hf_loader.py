"""Load a local Hugging Face checkpoint (config.json + *.safetensors, sharded with an index or single) into the
runtime's layout: one flat host block per layer ([qkv | out_proj | fc1 | fc2], runtime/weights.py) in a
page-locked ``HostArena``, and the embeddings, final norm and LM head on the GPU (or the CPU without one).

Every tensor is read with ``safetensors.safe_open(..., framework="pt")`` slices of at most
``CHUNK_BYTES`` and copied (converted to the runtime's dtype) straight into its place in the arena, so memory
peaks at one copy of the weights plus one chunk. Nothing is read from the network.

Name mapping (checkpoint -> runtime region and rows):

  OPT (prefix ``model.decoder.``)           Llama-2/3, Mistral (prefix ``model.``)
  qkv.w   q_proj | k_proj | v_proj rows     q_proj | k_proj | v_proj rows
  qkv.b   q_proj | k_proj | v_proj biases   -
  qkv.norm self_attn_layer_norm (w, b)      input_layernorm (w)
  out_proj out_proj (w, b)                  o_proj (w)
  fc1.w   fc1                               gate_proj rows [0, f) | up_proj rows [f, 2f)
  fc1.norm final_layer_norm (w, b)          post_attention_layernorm (w)
  fc2     fc2 (w, b)                        down_proj (w)
  embeddings embed_tokens, embed_positions (learned, index = position + 2), final_layer_norm
                                            embed_tokens, norm
  LM head ``lm_head.weight``, or the token embedding when tied.

A tensor the mapping does not use (other than cached rotary tables) is an error: it means the checkpoint has
something the runtime would silently drop.
"""

from __future__ import annotations

import json
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from lia_model.errors import LiaInputError
from lia_model.hf_arch import runtime_model, sliding_window
from lia_model.models import ModelSpec
from lia_model.plan import Device
from lia_model.precision import WeightDtype
from lia_model.sublayers import Sublayer
from runtime import kernels
from runtime.backend import Backend
from runtime.hostmem import HostArena
from runtime.weights import Embeddings, ModelWeights, layer_layout

CHUNK_BYTES = 64 * 2**20  # largest slice read at once
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # cached RoPE tables some older Llama checkpoints carry

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass(frozen=True)
class Piece:
    """One checkpoint tensor and where it goes: ``part`` of ``sub`` in layer ``layer`` from row ``row0``
    (layer -1: an embedding-side tensor, part names the Embeddings field)."""

    name: str
    layer: int
    sub: Optional[Sublayer]
    part: str
    row0: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    config: dict
    model: ModelSpec
    files: dict[str, Path]  # tensor name -> shard
    pieces: tuple[Piece, ...]
    source_bytes: int  # bytes of the tensors read
    sliding_window: Optional[int]
    eos_token_ids: tuple[int, ...]
    bos_token_id: Optional[int]

    @property
    def layer_pieces(self) -> list[Piece]:
        return [p for p in self.pieces if p.layer >= 0]


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise LiaInputError(str(path), f"cannot read the {what} ({err.strerror})", "check the path") from None
    except json.JSONDecodeError as err:
        raise LiaInputError(
            str(path),
            f"malformed JSON at line {err.lineno}: {err.msg}",
            f"restore the {what} written by save_pretrained",
        ) from None
    if not isinstance(data, dict):
        raise LiaInputError(str(path), "not a JSON object", f"restore the {what} written by save_pretrained")
    return data


def _token_ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


def _shards(folder: Path) -> dict[str, Path]:
    index = folder / INDEX
    if index.exists():
        weight_map = _read_json(index, "safetensors index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise LiaInputError(str(index), "has no weight_map", "restore the index written by save_pretrained")
        files = {name: folder / file for name, file in weight_map.items()}
        missing = sorted({str(p.name) for p in files.values() if not p.exists()})
        if missing:
            raise LiaInputError(
                str(folder),
                f"shard {missing[0]} named in {INDEX} is missing"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                "copy every *.safetensors shard of the checkpoint into the folder",
            )
        return files
    single = folder / SINGLE
    if single.exists():
        with _safe_open()(str(single), framework="pt") as f:
            return dict.fromkeys(f.keys(), single)
    others = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
    hint = (
        (
            f"the folder has {', '.join(others[:3])}: save it as safetensors (model.save_pretrained(folder) with "
            "transformers >= 4.35 does)"
        )
        if others
        else "give a folder written by save_pretrained"
    )
    raise LiaInputError("--model", f"no {SINGLE} or {INDEX} in {folder}", hint)


def _safe_open():
    try:
        from safetensors import safe_open
    except ImportError:
        raise LiaInputError("safetensors", "the package is not installed", "pip install 'lia-modeler[hf]'") from None
    return safe_open


def _prefix(names: set[str], candidates: tuple[str, ...]) -> str:
    for p in candidates:
        if any(n.startswith(f"{p}layers.0.") for n in names):
            return p
    raise LiaInputError(
        "checkpoint",
        f"no tensor named {candidates[0]}layers.0.* (or {', '.join(candidates[1:])}layers.0.*)",
        "give a checkpoint written by transformers' save_pretrained",
    )


def _pieces(model: ModelSpec, mtype: str, names: set[str]) -> list[Piece]:
    h, qd, kvd, f = model.hidden_size, model.q_dim, model.kv_dim, model.ffn_size
    layout = layer_layout(model)
    out: list[Piece] = []

    def add(name: str, li: int, sub: Optional[Sublayer], part: str, row0: int, shape: tuple[int, ...]) -> None:
        out.append(Piece(name, li, sub, part, row0, shape))

    QKV, OUT, FC1, FC2 = Sublayer.QKV, Sublayer.OUT_PROJ, Sublayer.FC1, Sublayer.FC2
    if mtype == "opt":
        p = _prefix(names, ("model.decoder.", "decoder."))
        for li in range(model.num_layers):
            a = f"{p}layers.{li}."
            for kind in ("weight", "bias"):
                part, rows = ("w", lambda n: (n, h)) if kind == "weight" else ("b", lambda n: (n,))
                add(f"{a}self_attn.q_proj.{kind}", li, QKV, part, 0, rows(qd))
                add(f"{a}self_attn.k_proj.{kind}", li, QKV, part, qd, rows(kvd))
                add(f"{a}self_attn.v_proj.{kind}", li, QKV, part, qd + kvd, rows(kvd))
            add(f"{a}self_attn_layer_norm.weight", li, QKV, "norm_w", 0, (h,))
            add(f"{a}self_attn_layer_norm.bias", li, QKV, "norm_b", 0, (h,))
            add(f"{a}self_attn.out_proj.weight", li, OUT, "w", 0, (h, qd))
            add(f"{a}self_attn.out_proj.bias", li, OUT, "b", 0, (h,))
            add(f"{a}fc1.weight", li, FC1, "w", 0, (f, h))
            add(f"{a}fc1.bias", li, FC1, "b", 0, (f,))
            add(f"{a}final_layer_norm.weight", li, FC1, "norm_w", 0, (h,))
            add(f"{a}final_layer_norm.bias", li, FC1, "norm_b", 0, (h,))
            add(f"{a}fc2.weight", li, FC2, "w", 0, (h, f))
            add(f"{a}fc2.bias", li, FC2, "b", 0, (h,))
        add(f"{p}embed_tokens.weight", -1, None, "tokens", 0, (model.vocab_size, h))
        add(f"{p}embed_positions.weight", -1, None, "positions", 0, (model.learned_positions, h))
        add(f"{p}final_layer_norm.weight", -1, None, "norm_w", 0, (h,))
        add(f"{p}final_layer_norm.bias", -1, None, "norm_b", 0, (h,))
    else:
        p = _prefix(names, ("model.", ""))
        for li in range(model.num_layers):
            a = f"{p}layers.{li}."
            add(f"{a}self_attn.q_proj.weight", li, QKV, "w", 0, (qd, h))
            add(f"{a}self_attn.k_proj.weight", li, QKV, "w", qd, (kvd, h))
            add(f"{a}self_attn.v_proj.weight", li, QKV, "w", qd + kvd, (kvd, h))
            add(f"{a}input_layernorm.weight", li, QKV, "norm_w", 0, (h,))
            add(f"{a}self_attn.o_proj.weight", li, OUT, "w", 0, (h, qd))
            add(f"{a}mlp.gate_proj.weight", li, FC1, "w", 0, (f, h))
            add(f"{a}mlp.up_proj.weight", li, FC1, "w", f, (f, h))
            add(f"{a}post_attention_layernorm.weight", li, FC1, "norm_w", 0, (h,))
            add(f"{a}mlp.down_proj.weight", li, FC2, "w", 0, (h, f))
        add(f"{p}embed_tokens.weight", -1, None, "tokens", 0, (model.vocab_size, h))
        add(f"{p}norm.weight", -1, None, "norm_w", 0, (h,))
    if not model.tied_embeddings:
        add("lm_head.weight", -1, None, "lm_head", 0, (model.vocab_size, h))
    # Every layer piece lands inside its part: the layout and the mapping agree (a programming check).
    for piece in out:
        if piece.sub is not None:
            part = next(x for x in layout.regions[piece.sub].parts if x.name == piece.part)
            assert piece.row0 + piece.shape[0] <= part.shape[0] and piece.shape[1:] == part.shape[1:], piece
    return out


def open_checkpoint(folder: str | Path) -> Checkpoint:
    """Read config.json and the safetensors headers (no weights); LiaInputError for anything that would stop
    the load: an architecture the runtime cannot run, a missing shard or tensor, a shape that does not match."""
    path = Path(folder)
    if not path.is_dir():
        raise LiaInputError(
            "--model",
            f"'{folder}' is not a folder",
            "give a local Hugging Face model folder (config.json and *.safetensors)",
        )
    if not (path / "config.json").exists():
        raise LiaInputError("--model", f"no config.json in {path}", "give the folder written by save_pretrained")
    config = _read_json(path / "config.json", "config")
    model = runtime_model(config, name=path.resolve().name)
    files = _shards(path)
    safe_open = _safe_open()

    shapes: dict[str, tuple[tuple[int, ...], int]] = {}
    by_file: dict[Path, list[str]] = {}
    for name, file in files.items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        with safe_open(str(file), framework="pt") as f:
            present = set(f.keys())
            for name in names:
                if name not in present:
                    raise LiaInputError(
                        str(file),
                        f"tensor '{name}' named in {INDEX} is not in the shard",
                        "re-copy the shard; it is incomplete or from another checkpoint",
                    )
                sl = f.get_slice(name)
                shapes[name] = (tuple(int(x) for x in sl.get_shape()), _itemsize(sl.get_dtype(), name, file))
    mtype = str(config.get("model_type", "")).lower()
    pieces = _pieces(model, mtype, set(files))
    needed = {pc.name for pc in pieces}
    for pc in pieces:
        if pc.name not in shapes:
            raise LiaInputError(
                "checkpoint",
                f"tensor '{pc.name}' is missing from {path}",
                "the checkpoint is incomplete or is not a " + mtype + " checkpoint",
            )
        got = shapes[pc.name][0]
        if got != pc.shape:
            raise LiaInputError(
                "checkpoint",
                f"tensor '{pc.name}' has shape {list(got)} but config.json implies {list(pc.shape)}",
                "the config and the weights belong to different models",
            )
    unused = sorted(
        n
        for n in shapes
        if n not in needed
        and not n.endswith(_IGNORED_SUFFIXES)
        and not (n == "lm_head.weight" and model.tied_embeddings)
    )
    if unused:
        raise LiaInputError(
            "checkpoint",
            f"{len(unused)} tensor(s) the runtime has no place for, e.g. '{unused[0]}'",
            "the checkpoint has parts this architecture's mapping does not know (biases, extra "
            "norms, quantisation scales): it cannot run as is",
        )
    gen = path / "generation_config.json"
    gen_cfg = _read_json(gen, "generation config") if gen.exists() else {}
    eos = _token_ids(gen_cfg.get("eos_token_id", config.get("eos_token_id")))
    bos = gen_cfg.get("bos_token_id", config.get("bos_token_id"))
    source_bytes = sum(math.prod(shapes[n][0]) * shapes[n][1] for n in needed)
    return Checkpoint(
        path,
        config,
        model,
        files,
        tuple(pieces),
        source_bytes,
        sliding_window(config),
        eos,
        None if bos is None else int(bos),
    )


_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


def _itemsize(dtype: str, name: str, file: Path) -> int:
    if dtype not in _ITEMSIZE:
        raise LiaInputError(
            str(file),
            f"tensor '{name}' is stored as {dtype}",
            "the runtime loads float32, float16 and bfloat16 checkpoints (no quantised weights)",
        )
    return _ITEMSIZE[dtype]


def _copy_rows(sl, dst: torch.Tensor, rows: int, cols: int, itemsize: int, tick: Callable[[int], None]) -> None:
    """dst[:rows] <- the slice, CHUNK_BYTES at a time (converted to dst's dtype)."""
    step = max(1, CHUNK_BYTES // max(1, cols * itemsize))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        dst[r0:r1].copy_(sl[r0:r1])
        tick((r1 - r0) * cols * itemsize)


def load_checkpoint(
    ckpt: Checkpoint,
    backend: Backend,
    progress: Optional[Progress] = None,
    workers: int = 4,
    head_dev: Optional[Device] = None,
    weight_dtype: WeightDtype = WeightDtype.BF16,
) -> ModelWeights:
    """Weights of ``ckpt`` in a page-locked host arena (layers) and the embeddings and LM head on ``head_dev``
    (default: the GPU when there is one; runtime.executor.head_device says where a plan wants them).
    ``weight_dtype`` int8 or fp8_e4m3: each linear's matrix is quantised per output channel as it is loaded
    (``kernels.quantize_rows``); norms, biases, embeddings and the head stay bf16."""
    safe_open = _safe_open()

    model = ckpt.model
    layout = layer_layout(model, weight_dtype)
    done = [0]
    lock = threading.Lock()

    def tick(n: int) -> None:
        with lock:
            done[0] += n
            if progress is not None:
                progress(done[0], ckpt.source_bytes)

    if progress is not None:
        progress(0, ckpt.source_bytes)
    arena = HostArena(backend, layout.numel * model.num_layers, pinned=True, random_fill=False)
    if head_dev is None:
        head_dev = Device.GPU if backend.has_gpu else Device.CPU
    device = backend.torch_device(head_dev)
    dtype = backend.dtype
    handles: dict[Path, object] = {}

    def handle(file: Path):
        with lock:
            if file not in handles:
                handles[file] = safe_open(str(file), framework="pt")
            return handles[file]

    emb: dict[str, torch.Tensor] = {}
    for pc in ckpt.pieces:
        if pc.layer < 0:
            sl = handle(ckpt.files[pc.name]).get_slice(pc.name)
            t = torch.empty(pc.shape, dtype=dtype)
            _copy_rows(sl, t, pc.shape[0], math.prod(pc.shape[1:]), _itemsize(sl.get_dtype(), pc.name, ckpt.path), tick)
            emb[pc.part] = t.to(device)
    tokens = emb["tokens"]
    embeddings = Embeddings(
        tokens=tokens,
        positions=emb.get("positions"),
        norm_w=emb["norm_w"],
        norm_b=emb.get("norm_b"),
        lm_head=emb.get("lm_head", tokens),
        dev=head_dev,
    )
    weights = ModelWeights(model, arena, backend, seed=None, embeddings=embeddings, weight_dtype=weight_dtype)

    def copy(pc: Piece) -> None:
        sl = handle(ckpt.files[pc.name]).get_slice(pc.name)
        views = weights.host_views(pc.layer, pc.sub)
        rows = slice(pc.row0, pc.row0 + pc.shape[0])
        itemsize = _itemsize(sl.get_dtype(), pc.name, ckpt.path)
        if pc.part == "w" and "w_scale" in views:  # quantised per row as it lands, CHUNK_BYTES of bf16 rows at a time
            cols = math.prod(pc.shape[1:])
            step = max(1, CHUNK_BYTES // (2 * cols))
            dense = torch.empty((min(step, pc.shape[0]), cols), dtype=torch.bfloat16)
            for r0 in range(0, pc.shape[0], step):
                r1 = min(pc.shape[0], r0 + step)
                part = dense[: r1 - r0]
                part.copy_(sl[r0:r1])
                tick((r1 - r0) * cols * itemsize)
                values, scales = kernels.quantize_rows(part, views["w"].dtype)
                views["w"][pc.row0 + r0 : pc.row0 + r1].copy_(values)
                views["w_scale"][pc.row0 + r0 : pc.row0 + r1].copy_(scales)
            return
        _copy_rows(sl, views[pc.part][rows], pc.shape[0], math.prod(pc.shape[1:]), itemsize, tick)

    layer_pieces = ckpt.layer_pieces
    # Every element of every layer block is written exactly once (the arena starts zeroed, so a gap would
    # silently stay 0): the pieces tile the layout (at bf16; quantised layouts add the scales and padding).
    covered = sum(math.prod(pc.shape) for pc in layer_pieces)
    values = sum(math.prod(p.shape) for r in layout.regions.values() for p in r.parts if p.name != "w_scale")
    assert covered == values * model.num_layers, (covered, values * model.num_layers)  # scales: from the "w" pieces
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(copy, layer_pieces))
    handles.clear()
    return weights


__all__ = ["Checkpoint", "Piece", "open_checkpoint", "load_checkpoint", "CHUNK_BYTES"]
