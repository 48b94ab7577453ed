"""Weights of streamed layers: two alternating GPU buffers and the prefetch schedule that fills them.

The GPU sublayers' weights of a streamed layer are copied into one of two GPU buffers, sized for the sublayers
that are on the GPU in either stage. With ``plan.overlap`` the next streamed layer (across the pass boundary
too: the next pass's first streamed layer) is queued while this one computes, and every copy waits for the last
use of its buffer. The copies themselves are jobs of the weight feeder (runtime/streamer.py), which keeps only a
few 32 MiB pieces ahead of the activation and KV copies on the copy engine.

The streamed layer after the next one is queued when a layer has issued its last use of its buffer (``end``),
not when the next layer begins: its copies wait on the GPU for that last use anyway, and queued early the feeder
starts them the moment the buffer frees instead of after the launching thread's work between two layers (the
wave2-q2 traces show the next-but-one layer's first weight piece starting 0.4-0.8 ms after the buffer freed).
``LIA_EARLY_PREFETCH=0`` queues it in ``begin`` of the next layer, as before.

The compute stream waits for a layer's weights when its first GPU linear asks for them (``views``), not when
the layer begins: waiting needs the job fully queued (its last piece on the copy engine), and a layer that
starts on the CPU (Llama-2-70B's (1,0,0,0,0,1): CPU qkv) then held its CPU qkv until then (wave2-q2 traces:
1.95 ms from one layer's CPU fc2 to the next layer's CPU qkv). ``LIA_LAZY_WEIGHT_WAIT=0`` waits in ``begin``.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from lia_model.plan import Device, Plan
from lia_model.sublayers import Stage, Sublayer
from runtime.backend import Backend, Event
from runtime.layerpass import SUBLAYER_INDEX, LayerPass
from runtime.records import Recorder
from runtime.streamer import Job, Part, WeightFeeder, split
from runtime.weights import WEIGHTED_ORDER, ModelWeights


class WeightStreamer:
    def __init__(
        self,
        backend: Backend,
        weights: ModelWeights,
        plan: Plan,
        policy: dict[Stage, tuple[Device, ...]],
        recorder: Recorder,
        feeder: WeightFeeder,
    ) -> None:
        self.backend = backend
        self.weights = weights
        self.plan = plan
        self.policy = policy
        self.recorder = recorder
        self.feeder = feeder
        self.L = weights.model.num_layers
        self.R = plan.gpu_resident_layers
        streamed = self.L - self.R
        on_gpu = (
            [s for s in WEIGHTED_ORDER if any(p[SUBLAYER_INDEX[s]] == Device.GPU for p in policy.values())]
            if streamed
            else []
        )
        self.buffer_views: list[dict[Sublayer, dict[str, torch.Tensor]]] = [{}, {}]
        self.buffer_flat: list[dict[Sublayer, torch.Tensor]] = [{}, {}]
        if on_gpu:
            total = sum(weights.layout.regions[s].numel for s in on_gpu)
            for slot in (0, 1):
                flat = backend.empty((total,), Device.GPU)
                off = 0
                for s in on_gpu:
                    n = weights.layout.regions[s].numel
                    self.buffer_flat[slot][s] = flat[off : off + n]
                    self.buffer_views[slot][s] = weights.layout.regions[s].views(flat[off : off + n])
                    off += n
        self.passes: list[tuple[Stage, int]] = []
        self._pieces: dict[tuple[int, int, Sublayer], list] = {}  # (layer, slot, sublayer) -> its copy pieces
        self.reset([])

    @property
    def active(self) -> bool:
        """Whether any weight is streamed (some streamed layer has a GPU sublayer)."""
        return bool(self.buffer_flat[0])

    def reset(self, passes: list[tuple[Stage, int]]) -> None:
        """A new run over ``passes``: both buffers empty and free."""
        self.passes = passes
        self.slot_label: list[Optional[tuple[int, int]]] = [None, None]
        self.slot_ready: list[Optional[Job]] = [None, None]
        self.slot_free: list[Optional[Event]] = [None, None]
        self.slot_counter = 0

    def start(self) -> None:
        """Before the first pass: queue the first streamed layer (with overlap)."""
        if self.L > self.R and self.plan.overlap and self.active:
            self.prefetch(self.R, 0, slot=0)

    def drain(self) -> None:
        """Block until every queued prefetch is on the copy engine (the feeder thread is idle)."""
        for job in self.slot_ready:
            if job is not None:
                job.ready()

    def close(self) -> None:
        self._pieces = {}
        self.slot_ready = [None, None]
        self.slot_free = [None, None]
        self.buffer_views = [{}, {}]
        self.buffer_flat = [{}, {}]

    def next_streamed(self, li: int, p_index: int) -> Optional[tuple[int, int]]:
        """The streamed layer after layer ``li`` of pass ``p_index``: the next layer, or the next pass's first."""
        if li + 1 < self.L:
            return li + 1, p_index
        if p_index + 1 < len(self.passes):
            return self.R, p_index + 1
        return None

    def begin(self, lay: LayerPass) -> int:
        """The buffer slot of streamed layer ``lay``: its weights are queued if they are not yet, the compute
        stream waits for them, and (with overlap) the next streamed layer is queued into the other slot."""
        slot = self.slot_counter % 2
        self.slot_counter += 1
        if not self.active:
            return slot
        if self.slot_label[slot] != (lay.li, lay.pass_index):
            self.prefetch(lay.li, lay.pass_index, slot)
        lay.slot = slot
        if not lazy_weight_wait():
            self._wait_weights(lay)
        if self.plan.overlap:
            nxt = self.next_streamed(lay.li, lay.pass_index)
            if nxt is not None and self.slot_label[slot ^ 1] != nxt:  # (queued by the last layer's end already)
                self.prefetch(nxt[0], nxt[1], slot ^ 1)
        return slot

    def end(self, slot: int, done: Event, lay: Optional[LayerPass] = None) -> None:
        """The layer in ``slot`` (``lay``) has issued its last use of the buffer (``done``, on the compute stream).
        With overlap, the streamed layer after the next one is queued into this buffer now (module docstring)."""
        self.slot_free[slot] = done
        if lay is None or not (self.plan.overlap and self.active and early_prefetch()):
            return
        nxt = self.next_streamed(lay.li, lay.pass_index)
        after = self.next_streamed(*nxt) if nxt is not None else None
        if after is not None and self.slot_label[slot] != after:
            self.prefetch(after[0], after[1], slot)

    def prefetch(self, li: int, p_index: int, slot: int) -> None:
        """Queue layer li's GPU-sublayer weights (for pass p_index's stage) into buffer ``slot``."""
        stage, step = self.passes[p_index]
        policy = self.policy[stage]
        waits = [self.slot_free[slot]]
        if not self.plan.overlap:
            waits.append(self.slot_free[slot ^ 1])  # no overlap: wait for the previous layer too
        parts = []
        for sub in WEIGHTED_ORDER:
            if policy[SUBLAYER_INDEX[sub]] != Device.GPU:
                continue
            src = self.weights.sublayer_host(li, sub)

            def done(
                start: Event, end: Event, sub: Sublayer = sub, nbytes: int = src.numel() * src.element_size()
            ) -> None:
                self.recorder.copy(
                    stage, step, li, slot, "weights", Device.GPU, nbytes, "streamed", sub.value, start, end
                )

            key = (li, slot, sub)
            if key not in self._pieces:
                self._pieces[key] = split(self.buffer_flat[slot][sub], src)
            parts.append(Part(self._pieces[key], done))
        self.slot_ready[slot] = self.feeder.submit(waits, parts)
        self.slot_label[slot] = (li, p_index)

    def _wait_weights(self, lay: LayerPass) -> None:
        """The compute stream waits for layer ``lay``'s weights (blocks until its job is fully queued)."""
        if not lay.weights_waited and self.active:
            self.backend.wait(self.backend.compute, self.slot_ready[lay.slot].ready())
        lay.weights_waited = True

    def views(self, lay: LayerPass, sub: Sublayer) -> dict[str, torch.Tensor]:
        """The GPU weights of ``sub`` for streamed layer ``lay`` (checked to be that layer's); the compute stream
        waits for them before their first use (module docstring)."""
        if self.slot_label[lay.slot] != (lay.li, lay.pass_index):
            raise RuntimeError(
                f"weight buffer {lay.slot} holds {self.slot_label[lay.slot]}, not layer {lay.li} of pass {lay.pass_index}"
            )
        self._wait_weights(lay)
        return self.buffer_views[lay.slot][sub]


def early_prefetch() -> bool:
    """Whether the streamed layer after the next is queued at a layer's end (default) or at the next one's begin."""
    return os.environ.get("LIA_EARLY_PREFETCH", "1") != "0"


def lazy_weight_wait() -> bool:
    """Whether the compute stream waits for a layer's weights at its first GPU sublayer (default) or at its begin."""
    return os.environ.get("LIA_LAZY_WEIGHT_WAIT", "1") != "0"


def handoff_mode() -> str:
    """When the next-but-one layer is queued and where a layer waits for its weights (recorded in every validation
    row, after the feeder's own mode)."""
    queued = "next-but-one layer queued at a layer's end" if early_prefetch() else "next layer queued at its begin"
    waited = "weights awaited at the first GPU sublayer" if lazy_weight_wait() else "weights awaited at begin"
    return f"{queued}; {waited}"
