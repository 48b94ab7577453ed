"""The KV cache of a run: where each layer's K and V live, how new ones are written, and how GPU attention of a
streamed layer gets the cached ones.

- Resident layers: their own [B, kv_heads, S, head_dim] K and V on the GPU.
- Streamed layers: K and V in host memory (a carve of a KV arena, or page-locked tensors). A CPU qkv writes them
  directly; a GPU qkv writes its new K/V back with a pitched D2H copy (and into the GPU staging buffer).
  Where CPU attention of the same layer reads them next (the write-back is on the chain), the new K/V land
  contiguous in a page-locked buffer instead (one 1-D copy each) and the CPU scatters them into the cache before
  its first read. Measured on the host (2026-12-01, runtime/validation/wave2-q2/traces.tgz): OPT-30B at B = 8
  wrote 448 rows of 256 B per tensor with cudaMemcpy2DAsync in 0.15-0.27 ms (about 1 GB/s) between the GPU qkv
  and CPU attention; a contiguous 115 KB copy takes a few microseconds. Wide rows go pitched straight into the
  cache instead (``PITCHED_FULL_RATE_ROW_BYTES``): the host scatter is the host thread's work, on the chain
  between the CPU sublayers (OPT-30B B = 512 prefill, 16 chunks: about 1 ms of each ~3.1 ms chunk cycle,
  runtime/validation/peer-optimum-trace/README.md), while a pitched copy of 8 KB rows moves at the link's rate.
  ``LIA_KV_WRITEBACK=pitched`` keeps the pitched copy for narrow rows too (the runtime before 2026-12-01's
  thirteenth session), ``LIA_KV_WRITEBACK=contiguous`` lands wide rows too (the runtime before issue 10).
- Streamed layers of a plan with ``streamed_kv_on_gpu`` (FlexGen's cache on the GPU): their own GPU K and V, as a
  resident layer's; nothing is fetched, staged or written back (qkv and attention run on the GPU: lia_model.plan).
- Otherwise GPU attention of a streamed layer reads one shared GPU staging buffer: the cached positions (and new ones made
  by a CPU qkv) are fetched into it from the host cache, once per layer and chunk, on the H2D stream; the fetch is
  on the chain, so the weight feeder lets it go first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import torch

from lia_model.errors import LiaInputError
from lia_model.plan import Device
from runtime.backend import Backend, Event
from runtime.hostmem import HostArena
from runtime.layerpass import CTX, QKV, SCORE, Chunk, LayerPass
from runtime.pinned_pool import PinnedPool
from runtime.records import Recorder
from runtime.streamer import WeightFeeder


@dataclass
class LayerKV:
    host: Optional[dict[str, torch.Tensor]]  # streamed: {"k": [B,kv,S,d], "v": ...} in host memory; None: on GPU
    # resident, or streamed with the cache on the GPU: its own GPU cache; streamed: the shared staging buffer
    gpu: Optional[dict[str, torch.Tensor]]
    resident: bool
    # Latest D2H write-back into the host cache per batch-row range (prefill chunks, then the whole batch);
    # the D2H stream is in order, so a reader of some rows waits for the latest event among overlapping ranges.
    written: dict = field(default_factory=dict)
    # New K/V that landed contiguous on the host (row range -> ([2, rows, kv, q, d] page-locked, pos lo, pos hi)),
    # to be scattered into ``host`` before the CPU reads them (``KVStore.settle``).
    landed: dict = field(default_factory=dict)

    def written_for(self, b0: int, b1: int) -> Optional[Event]:
        latest = None
        for (r0, r1), (order, ev) in self.written.items():
            if r0 < b1 and b0 < r1 and (latest is None or order > latest[0]):
                latest = (order, ev)
        return latest[1] if latest else None


class KVStore:
    def __init__(
        self,
        backend: Backend,
        recorder: Recorder,
        feeder: WeightFeeder,
        kv_shape: tuple[int, int, int, int],
        resident: int,
        streamed: int,
        attention_on_gpu: bool,
        pool: PinnedPool,
        kv_arena: Optional[HostArena] = None,
        streamed_on_gpu: bool = False,
    ) -> None:
        self.backend = backend
        self.pool = pool  # the Mover's: lends the contiguous K/V landing buffers
        self.recorder = recorder
        self.feeder = feeder
        self.layers: list[LayerKV] = [
            LayerKV(None, {w: backend.empty(kv_shape, Device.GPU, zero=True) for w in "kv"}, True)
            for _ in range(resident)
        ]
        if streamed_on_gpu:  # every streamed layer's own GPU cache, as a resident layer's
            self.layers += [
                LayerKV(None, {w: backend.empty(kv_shape, Device.GPU, zero=True) for w in "kv"}, False)
                for _ in range(streamed)
            ]
            streamed = 0  # no host cache
        self.staging = (
            {w: backend.empty(kv_shape, Device.GPU, zero=True) for w in "kv"} if streamed and attention_on_gpu else None
        )
        per = kv_shape[0] * kv_shape[1] * kv_shape[2] * kv_shape[3]
        if streamed and kv_arena is not None and 2 * per * streamed > kv_arena.numel:
            raise LiaInputError(
                "host memory",
                f"the KV cache needs {2 * per * streamed * 2 / 1e9:.1f} GB but the "
                f"KV arena holds {kv_arena.numel * 2 / 1e9:.1f} GB",
                "size the arena for this point",
            )
        # No zeroing per run: positions at or past the valid length are masked, and the arena was zeroed when
        # it was made and has held only finite K/V since, so masked positions contribute exactly 0.
        for j in range(streamed):
            if kv_arena is not None:
                host = {w: kv_arena.view((2 * j + i) * per, per).view(kv_shape) for i, w in enumerate("kv")}
            else:
                host = {w: backend.empty(kv_shape, Device.CPU, pinned=True, zero=True) for w in "kv"}
            self.layers.append(LayerKV(host, self.staging, False))
        self.staging_free: Optional[Event] = None  # after the last reader of the staging buffer
        self._write_order = 0

    def __getitem__(self, li: int) -> LayerKV:
        return self.layers[li]

    def reset(self) -> None:
        """A new run: no write-back is pending."""
        for kv in self.layers:
            kv.written = {}
            kv.landed = {}
        self._write_order = 0
        self.staging_free = None

    def end_layer(self, done: Event) -> None:
        """A streamed layer has issued its last read of the staging buffer (``done``, on the compute stream)."""
        if self.staging is not None:
            self.staging_free = done

    def close(self) -> None:
        self.layers = []
        self.staging = None
        self.staging_free = None

    def write(self, lay: LayerPass, ch: Chunk, dev: Device, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the new K/V [rows, kv, q, d] that a qkv on ``dev`` made for positions pos0 .. valid."""
        lo, hi = lay.pos0, lay.valid
        kv = lay.kv
        if kv.host is None:  # resident, or the streamed cache on the GPU
            self._require_gpu(lay, dev, "qkv")
            kv.gpu["k"][ch.rows, :, lo:hi].copy_(k)
            kv.gpu["v"][ch.rows, :, lo:hi].copy_(v)
            return
        if dev == Device.CPU:
            kv.host["k"][ch.rows, :, lo:hi].copy_(k)
            kv.host["v"][ch.rows, :, lo:hi].copy_(v)
            return
        be = self.backend
        produced = be.event(be.compute)
        if self.staging is not None and (lay.dev(SCORE) == Device.GPU or lay.dev(CTX) == Device.GPU):
            self.staging["k"][ch.rows, :, lo:hi].copy_(k)
            self.staging["v"][ch.rows, :, lo:hi].copy_(v)
        # one pitched row: the new positions lo:hi of one sequence and KV head, contiguous in the cache
        row_bytes = k.shape[-2] * k.shape[-1] * k.element_size()
        land = contiguous_writeback(row_bytes) and Device.CPU in (lay.dev(SCORE), lay.dev(CTX))
        if land:  # CPU attention reads them next: contiguous landing, scattered on the host (settle)
            landing = self.pool.take("kv_landing", (2, *k.shape), k.dtype)
        be.wait(be.d2h, produced)
        start = be.event(be.d2h)
        if land:
            be.copy(landing[0], k, be.d2h)
            be.copy(landing[1], v, be.d2h)
        else:
            be.copy_2d(kv.host["k"][ch.rows, :, lo:hi], k, be.d2h)
            be.copy_2d(kv.host["v"][ch.rows, :, lo:hi], v, be.d2h)
        end = be.event(be.d2h)
        if land:
            self.pool.used(landing, end)
            kv.landed[(ch.b0, ch.b1)] = (landing, lo, hi)
        be.keep_alive(k, be.d2h)
        be.keep_alive(v, be.d2h)
        self._write_order += 1
        kv.written[(ch.b0, ch.b1)] = (self._write_order, end)
        nbytes = 2 * k.numel() * k.element_size()
        self.recorder.copy(
            lay.stage, lay.step, lay.li, ch.c, "kv_writeback", Device.CPU, nbytes, lay.kind, "k,v", start, end
        )

    def settle(self, kv: LayerKV, b0: int, b1: int) -> None:
        """Scatter new K/V that landed contiguous on the host (rows overlapping b0:b1) into the host cache, once
        their copy has finished (the caller waited for ``written_for``; this waits too, to be safe)."""
        for key in [key for key in kv.landed if key[0] < b1 and b0 < key[1]]:
            landing, lo, hi = kv.landed.pop(key)
            pending = kv.written_for(*key)
            if pending is not None:
                pending.synchronize()
            kv.host["k"][key[0] : key[1], :, lo:hi].copy_(landing[0])
            kv.host["v"][key[0] : key[1], :, lo:hi].copy_(landing[1])

    def fetch(self, lay: LayerPass, ch: Chunk, which: str) -> Optional[Event]:
        """Fetch the host-cache positions GPU attention needs into the staging buffer (once per layer/chunk)."""
        if lay.kv.host is None:
            return None  # resident, or the streamed cache on the GPU: nothing to fetch
        key = (which, ch.c)
        if key in lay.staged:
            return lay.staged[key]
        hi = lay.pos0 if lay.dev(QKV) == Device.GPU else lay.valid  # a GPU qkv already put new K/V in staging
        ev = None
        if hi > 0:
            be = self.backend
            self.settle(lay.kv, 0, lay.kv.host["k"].shape[0])  # no new K/V the fetch reads is left unscattered
            be.wait(be.h2d, self.staging_free)
            be.wait(be.h2d, lay.kv.written_for(ch.b0, ch.b1))
            src = lay.kv.host[which][ch.rows, :, 0:hi]
            start = be.event(be.h2d)
            be.copy_2d(self.staging[which][ch.rows, :, 0:hi], src, be.h2d)
            ev = be.event(be.h2d)
            self.feeder.yield_to(ev)
            nbytes = src.numel() * src.element_size()
            self.recorder.copy(
                lay.stage, lay.step, lay.li, ch.c, "kv_fetch", Device.GPU, nbytes, lay.kind, which, start, ev
            )
        lay.staged[key] = ev
        return ev

    def read(self, lay: LayerPass, ch: Chunk, which: str, dev: Device, width: Optional[int] = None) -> torch.Tensor:
        """K or V as attention on ``dev`` reads it: a view of the live prefix [:width] (default: every valid
        position) of the host cache (CPU), the resident cache or the staging buffer (GPU)."""
        kv = lay.kv
        width = lay.valid if width is None else width
        if kv.host is None:  # resident, or the streamed cache on the GPU
            self._require_gpu(lay, dev, "attention")
            return kv.gpu[which][ch.rows, :, :width]
        if dev == Device.CPU:
            pending = kv.written_for(ch.b0, ch.b1)
            if pending is not None:
                pending.synchronize()
            self.settle(kv, ch.b0, ch.b1)
            return kv.host[which][ch.rows, :, :width]
        ev = self.fetch(lay, ch, which)
        self.backend.wait(self.backend.compute, ev)
        return self.staging[which][ch.rows, :, :width]

    @staticmethod
    def _require_gpu(lay: LayerPass, dev: Device, what: str) -> None:
        """A cache on the GPU is written and read there only (the plan's validator keeps qkv and attention on
        the GPU when the streamed cache lives there)."""
        if dev != Device.GPU:
            raise LiaInputError(
                "plan.streamed_kv_on_gpu",
                f"layer {lay.li} keeps its KV cache on the GPU but its {what} runs on the CPU",
                "run qkv and attention on the GPU, or keep the streamed layers' KV in host memory",
            )


# A pitched D2H write-back whose rows (q positions x head_dim x element bytes) are this wide or wider moves at the
# link's rate, so it needs no contiguous landing and host scatter. Measured in situ on the GPU host (2026-12-02,
# runtime/validation/peer-optimum-trace/writeback-ab/ traces, OPT-30B B=512 prefill in 16 chunks: 8192 B rows of
# 32 positions): a chunk's K+V write-back of 29.4 MB took the D2H queue 0.594 ms pitched and 0.588 ms contiguous;
# 256 B rows (one decode position) ran at about 1 GB/s (wave2-q2 traces, above). Rows narrower than the widest
# measured at the full rate keep the landing.
PITCHED_FULL_RATE_ROW_BYTES = 8192


WRITEBACK_MODES = ("auto", "pitched", "contiguous")


def writeback_setting() -> str:
    """LIA_KV_WRITEBACK (default auto); anything else is refused with the three choices."""
    mode = os.environ.get("LIA_KV_WRITEBACK", "auto")
    if mode not in WRITEBACK_MODES:
        raise LiaInputError(
            "LIA_KV_WRITEBACK", f"unknown write-back mode {mode!r}", f"use one of: {', '.join(WRITEBACK_MODES)}"
        )
    return mode


def contiguous_writeback(row_bytes: int = 0) -> bool:
    """Whether a GPU qkv whose K/V CPU attention reads next lands them contiguous rather than pitched: rows of
    ``row_bytes`` narrower than ``PITCHED_FULL_RATE_ROW_BYTES`` (default), always (LIA_KV_WRITEBACK=contiguous) or
    never (LIA_KV_WRITEBACK=pitched)."""
    mode = writeback_setting()
    if mode == "pitched":
        return False
    if mode == "contiguous":
        return True
    return row_bytes < PITCHED_FULL_RATE_ROW_BYTES


def writeback_mode() -> str:
    """How new K/V of a GPU qkv reach the host cache (recorded in every validation row)."""
    mode = writeback_setting()
    if mode == "pitched":
        return "pitched (LIA_KV_WRITEBACK=pitched)"
    if mode == "contiguous":
        return "contiguous landing + host scatter where CPU attention reads next, else pitched (LIA_KV_WRITEBACK=contiguous)"
    return (
        f"contiguous landing + host scatter where CPU attention reads next and rows are under "
        f"{PITCHED_FULL_RATE_ROW_BYTES} B, else pitched"
    )
