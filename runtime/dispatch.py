"""The six-way sublayer dispatch: which kernel runs for each of qkv, attn_score, attn_context, out_proj, fc1 and
fc2 on each device, with the inputs it reads (copied to its device once, ``need``), the weights it reads (resident,
host or streamed views), the RoPE tables and attention masks it shares with the pass (cached per device), and the
hand-off of its output (``finish``: recorded, and copied to the host right behind it when a CPU sublayer reads it
next).

The executor (runtime/executor.py) owns one ``SublayerDispatch``; the scheduler (runtime/scheduler.py) calls
``run`` for the sublayer it picks. ``run_sublayer`` is the dispatch itself (a seam tests may patch), ``run`` adds
dropping the chunk's values that are dead once the sublayer has been issued.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch

from lia_model.models import ModelSpec
from lia_model.plan import Device, Plan
from lia_model.sublayers import Sublayer
from runtime import kernels
from runtime.backend import Backend, Event, Placed
from runtime.cpu_worker import RuntimeLock
from runtime.graph import is_resident, layer_policy
from runtime.kvstore import KVStore
from runtime.layerpass import CTX, FC1, FC2, OUT, QKV, SCORE, SUBLAYER_INDEX, Chunk, LayerPass
from runtime.mover import Mover
from runtime.records import Recorder
from runtime.weight_stream import WeightStreamer
from runtime.weights import ModelWeights


class SublayerDispatch:
    """Runs one sublayer of one chunk of one layer on the device it is given (one per executor)."""

    def __init__(
        self,
        backend: Backend,
        weights: ModelWeights,
        plan: Plan,
        head_dev: Device,
        rec: Recorder,
        mover: Mover,
        kv: KVStore,
        streamer: WeightStreamer,
        resident_flat: list[torch.Tensor],
    ) -> None:
        self.backend = backend
        self.weights = weights
        self.model: ModelSpec = weights.model
        self.plan = plan
        self.L = self.model.num_layers
        self.head_dev = head_dev
        self.rec = rec
        self.mover = mover
        self.kv = kv
        self.streamer = streamer
        self.resident_flat = resident_flat  # resident layers' GPU copies (the GpuLayerCache's)
        self._rope_cache: dict = {}
        self._mask_cache: dict = {}
        # the run's lock when CPU sublayers run on the worker thread (runtime/cpu_worker.py): a CPU sublayer lets
        # go of it around its kernel and its waits for input copies; inline, nothing holds it and nothing changes
        self.lock = RuntimeLock()

    def close(self) -> None:
        """Drop the resident layers' GPU copies and the cached RoPE tables and masks."""
        self.resident_flat = []
        self._rope_cache.clear()
        self._mask_cache.clear()

    def _params(self, lay: LayerPass, sub: Sublayer, dev: Device) -> dict[str, torch.Tensor]:
        if lay.resident:
            params = self.weights.layout.views(self.resident_flat[lay.li], sub)
        elif dev == Device.CPU:
            params = self.weights.host_views(lay.li, sub)
        else:
            params = self.streamer.views(lay, sub)
        want = self.backend.torch_device(dev).type
        for name, t in params.items():  # every weight a sublayer consumes lives where it runs
            if t.device.type != want:
                raise RuntimeError(
                    f"data-flow bug: {sub.value} of layer {lay.li} on the {dev.name} got weight '{name}' on {t.device}"
                )
        return params

    # ================================================================== data movement

    def _consumers(self, lay: LayerPass, name: str) -> list[Device]:
        """Devices that will read value ``name`` of this layer (for page-locking CPU outputs)."""
        if name == "h_out":
            if lay.li + 1 < self.L:
                pol = layer_policy(self.plan, lay.stage, lay.li + 1)
                return [pol[SUBLAYER_INDEX[QKV]], pol[SUBLAYER_INDEX[OUT]]]
            return [self.head_dev]
        users = {"q": [SCORE], "scores": [CTX], "ctx": [OUT], "h_mid": [FC1, FC2], "mid": [FC2]}[name]
        return [lay.dev(s) for s in users]

    def _out(self, lay: LayerPass, name: str, shape: tuple[int, ...]) -> Optional[torch.Tensor]:
        """Page-locked output buffer (the Mover's pool) for a CPU op whose result crosses to the GPU (None
        otherwise)."""
        if self.backend.is_cuda and Device.GPU in self._consumers(lay, name):
            return self.mover.pool.take("cpu_out", shape)
        return None

    def _need(self, lay: LayerPass, ch: Chunk, name: str, dev: Device, kind: str) -> torch.Tensor:
        """Value ``name`` on ``dev``, copying it there (once) if it lives elsewhere; waits until it is valid."""
        copies = ch.values[name]
        p = copies.get(dev)
        if p is None:
            src = next(iter(copies.values()))
            p = self.mover.move(src, dev, lay.stage, lay.step, lay.li, ch.c, kind, name, lay.kind)
            copies[dev] = p
        if p.ready is not None:
            if dev == Device.CPU:
                with self.lock.unlocked():
                    p.ready.synchronize()
            else:
                self.backend.wait(self.backend.compute, p.ready)
        return p.on(dev)

    def ship_early(self, lay: LayerPass, ch: Chunk, name: str, consumer: Sublayer, producer_consumer: Sublayer) -> None:
        """Start copying a residual input to ``consumer``'s device now, unless the sublayer that reads it
        first (``producer_consumer``) will copy it there anyway."""
        copies = ch.values[name]
        dev = lay.dev(consumer)
        if dev in copies or lay.dev(producer_consumer) == dev:
            return
        src = next(iter(copies.values()))
        copies[dev] = self.mover.move(src, dev, lay.stage, lay.step, lay.li, ch.c, "resid", name, lay.kind)

    # ================================================================== sublayers

    @contextmanager
    def _timed(self, dev: Device) -> Iterator[list[Optional[Event]]]:
        """Stamp a kernel's start and end on ``dev`` ([start, end]); a CPU kernel runs without the run's lock
        (the launching thread issues GPU work meanwhile when CPU sublayers run on the worker thread)."""
        marks: list[Optional[Event]] = [None, None]
        if dev == Device.CPU:
            with self.lock.unlocked():
                marks[0] = self.rec.stamp(dev)
                yield marks
                marks[1] = self.rec.stamp(dev)
        else:
            marks[0] = self.rec.stamp(dev)
            yield marks
            marks[1] = self.rec.stamp(dev)

    def _rope(self, dev: Device, pos0: int, q: int):
        if not self.model.uses_rope:
            return None
        key = (dev, pos0, q)
        if key not in self._rope_cache:
            if len(self._rope_cache) > 64:
                self._rope_cache.clear()
            positions = torch.arange(pos0, pos0 + q)
            self._rope_cache[key] = kernels.rope_tables(positions, self.model, self.backend.torch_device(dev))
        return self._rope_cache[key]

    def _mask(self, dev: Device, q: int, pos0: int, valid: int, width: int) -> torch.Tensor:
        """Attention mask, shared by every layer of a pass (built once per pass and device)."""
        m = self.model
        key = (dev, q, pos0, valid, width)
        if key not in self._mask_cache:
            if len(self._mask_cache) > 16:
                self._mask_cache.clear()
            self._mask_cache[key] = kernels.attention_mask(
                q, m.num_heads // m.num_kv_heads, pos0, valid, width, self.backend.torch_device(dev)
            )
        return self._mask_cache[key]

    # Values of a chunk that are dead once a sublayer has been issued: their last reader in the layer. Dropping
    # them then lets the caching allocator hand their blocks to the next chunk (on the same stream; copies on
    # other streams hold theirs through Backend.keep_alive). Held until the layer's end instead, every chunk's
    # activations and fc1 output were live at once: with 4 prefill minibatches Llama-2-70B ran out of GPU memory
    # 1.3 GB above the memory model (runtime/validation/wave2-g/).
    _DEAD_AFTER = {CTX: ("q", "scores"), OUT: ("h", "ctx"), FC2: ("h_mid", "mid")}

    def run(self, lay: LayerPass, ch: Chunk, sub: Sublayer, dev: Device) -> None:
        self.run_sublayer(lay, ch, sub, dev)
        for name in self._DEAD_AFTER.get(sub, ()):
            ch.values.pop(name, None)

    def run_sublayer(self, lay: LayerPass, ch: Chunk, sub: Sublayer, dev: Device) -> None:
        m = self.model
        b, q = ch.b1 - ch.b0, lay.q
        if sub == QKV:
            h = self._need(lay, ch, "h", dev, "act")
            p = self._params(lay, sub, dev)
            rope = self._rope(dev, lay.pos0, q)
            if dev == Device.CPU:
                pinned = self._out(lay, "q", (b, q, m.q_dim))
                with self._timed(dev) as marks:
                    q_out, k, v = kernels.qkv(h, p, m, rope)
                    if pinned is not None:
                        q_out = pinned.copy_(q_out)
                    self.kv.write(lay, ch, dev, k, v)  # into the host cache: part of the CPU qkv's time
                self._finish(lay, ch, sub, dev, "q", q_out, marks, b * q)
            else:
                with self._timed(dev) as marks:
                    q_out, k, v = kernels.qkv(h, p, m, rope)
                # the GPU qkv's record ends with its kernels (its events used to cover issuing the K/V write-back
                # too: 0.4-0.9 ms against a 0.16 ms kernel, wave2-q2 traces); Q's copy to a CPU reader goes first
                self._finish(lay, ch, sub, dev, "q", q_out, marks, b * q)
                self.kv.write(lay, ch, dev, k, v)
        elif sub == SCORE:
            if lay.dev(CTX) == dev:
                # Fused with attn_context on this device (kernels.attention): hand Q on, untimed.
                ch.values["scores"] = ch.values["q"]
                self.rec.compute(lay.stage, lay.step, lay.li, ch.c, sub.value, dev, q, lay.kind, self.rec.stamp(dev))
                return
            q_in = self._need(lay, ch, "q", dev, "act")
            self._kv_written(lay, ch, dev)
            keys = self.kv.read(lay, ch, "k", dev)
            out = (
                self._out(lay, "scores", (b, m.num_kv_heads, m.num_heads // m.num_kv_heads * q, keys.shape[2]))
                if dev == Device.CPU
                else None
            )
            mask = self._mask(dev, q, lay.pos0, lay.valid, keys.shape[2]) if q > 1 else None
            with self._timed(dev) as marks:
                scores = kernels.attn_score(q_in, keys, m, mask, out=out)
            self._finish(lay, ch, sub, dev, "scores", scores, marks, q)
        elif sub == CTX:
            out = self._out(lay, "ctx", (b, q, m.q_dim)) if dev == Device.CPU else None
            if lay.dev(SCORE) == dev:
                q_in = self._need(lay, ch, "q", dev, "act")  # fused: attn_score handed Q on
                self._kv_written(lay, ch, dev)
                keys = self.kv.read(lay, ch, "k", dev)
                values = self.kv.read(lay, ch, "v", dev)
                with self._timed(dev) as marks:
                    ctx = kernels.attention(q_in, keys, values, m, lay.pos0, out=out)
            else:
                scores = self._need(lay, ch, "scores", dev, "act")
                self._kv_written(lay, ch, dev)
                values = self.kv.read(lay, ch, "v", dev, width=scores.shape[-1])
                with self._timed(dev) as marks:
                    ctx = kernels.attn_context(scores, values, m, q, out=out)
            self._finish(lay, ch, sub, dev, "ctx", ctx, marks, q)
        elif sub == OUT:
            ctx = self._need(lay, ch, "ctx", dev, "act")
            resid = self._need(lay, ch, "h", dev, "resid")
            p = self._params(lay, sub, dev)
            out = self._out(lay, "h_mid", (b, q, m.hidden_size)) if dev == Device.CPU else None
            with self._timed(dev) as marks:
                h_mid = kernels.out_proj(ctx, p, resid, out=out)
            self._finish(lay, ch, sub, dev, "h_mid", h_mid, marks, b * q)
            self.ship_early(lay, ch, "h_mid", consumer=FC2, producer_consumer=FC1)
        elif sub == FC1:
            h_mid = self._need(lay, ch, "h_mid", dev, "act")
            p = self._params(lay, sub, dev)
            out = self._out(lay, "mid", (b, q, m.ffn_size)) if dev == Device.CPU else None
            with self._timed(dev) as marks:
                mid = kernels.fc1(h_mid, p, m, out=out)
            self._finish(lay, ch, sub, dev, "mid", mid, marks, b * q)
        else:
            mid = self._need(lay, ch, "mid", dev, "act")
            resid = self._need(lay, ch, "h_mid", dev, "resid")
            p = self._params(lay, sub, dev)
            out = self._out(lay, "h_out", (b, q, m.hidden_size)) if dev == Device.CPU else None
            with self._timed(dev) as marks:
                h_out = kernels.fc2(mid, p, resid, out=out)
            self._finish(lay, ch, sub, dev, "h_out", h_out, marks, b * q)

    def _kv_written(self, lay: LayerPass, ch: Chunk, dev: Device) -> None:
        """CPU attention: wait (without the run's lock) for the write-back of the K/V it reads."""
        if dev == Device.CPU and lay.kv.host is not None:
            pending = lay.kv.written_for(ch.b0, ch.b1)
            if pending is not None:
                with self.lock.unlocked():
                    pending.synchronize()

    def _finish(
        self,
        lay: LayerPass,
        ch: Chunk,
        sub: Sublayer,
        dev: Device,
        name: str,
        value: torch.Tensor,
        marks: list[Optional[Event]],
        tokens: int,
    ) -> None:
        self.rec.compute(lay.stage, lay.step, lay.li, ch.c, sub.value, dev, tokens, lay.kind, marks[0], marks[1])
        # A GPU value that a CPU sublayer reads next is copied on the D2H stream, which must wait for it.
        ready = None
        consumers = self._consumers(lay, name)
        if dev == Device.GPU and self.backend.is_cuda and Device.CPU in consumers:
            ready = self.backend.event(self.backend.compute)
        ch.values[name] = {dev: Placed(value, dev, ready)}
        # The sublayer that reads it next (the first consumer; the others read it as a residual) on the CPU:
        # copied to the host right behind its producer, as the cost model's schedule assumes.
        # A layer's output is the next layer's input "h" (its copy is recorded as that layer's, as runtime/dataflow.py
        # expects); the last layer's goes to the head, which copies only the last position.
        last_layer = name == "h_out" and lay.li + 1 == self.L
        if ready is not None and consumers[0] == Device.CPU and not last_layer:
            li, detail = (lay.li + 1, "h") if name == "h_out" else (lay.li, name)
            kind = "resident" if is_resident(self.plan, li) else "streamed"
            ch.values[name][Device.CPU] = self.mover.move(
                ch.values[name][dev], Device.CPU, lay.stage, lay.step, li, ch.c, "act", detail, kind
            )
