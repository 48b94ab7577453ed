"""Instrumentation of a run: one ``OpRecord`` per timed operation, and the ``Recorder`` that stamps them.

GPU sublayers and copies are timed with CUDA events on their streams, CPU sublayers with host stamps taken
after their inputs are ready. Unprofiled runs (the timed repeats) skip per-sublayer GPU events, so their
wall time is not disturbed; copies and weight parts are always recorded (runtime/dataflow.py checks them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

from lia_model.plan import Device
from lia_model.sublayers import Stage
from runtime.backend import Backend, Event

if TYPE_CHECKING:
    from runtime.pinned_pool import PinnedPoolStats


@dataclass
class OpRecord:
    """One timed operation: a sublayer (kind "compute") or a copy (kind "copy")."""

    stage: Stage
    step: int  # 0 = prefill, t = decode step
    layer: int  # -1: embedding / LM head
    chunk: int  # prefill chunk (weight copies: the GPU buffer slot, 0 or 1)
    name: str  # sublayer name, or the copy's kind: weights, act, resid, kv_fetch, kv_writeback, head
    kind: str  # "compute" or "copy"
    device: Device  # compute: where it ran; copy: destination
    nbytes: int
    tokens: int  # rows of the product (b * q) for compute records
    layer_kind: str  # "resident", "streamed" or "-"
    detail: str = ""  # copies: the value or sublayer moved
    start: object = None
    end: object = None
    seconds: float = float("nan")


@dataclass
class RunResult:
    ttft_s: float
    tpot_s: list[float]
    latency_s: float
    batch: int
    tokens: torch.Tensor  # [B, L_out] generated token ids (CPU)
    logits: Optional[list[torch.Tensor]]  # per output position: [B, vocab] float32 (CPU)
    records: list[OpRecord]
    base: Optional[tuple[Event, float]] = None  # (event, perf_counter) at the run's start: the trace's time zero
    hidden: Optional[list[torch.Tensor]] = None  # keep_hidden: each layer's prefill output [B, L_in, h] (CPU)
    pinned_pool: Optional["PinnedPoolStats"] = None  # the Mover's pinned pool after the run (its counts: this run's)

    @property
    def output_len(self) -> int:
        return 1 + len(self.tpot_s)

    @property
    def throughput_tokens_per_s(self) -> float:
        return self.batch * self.output_len / self.latency_s


class Recorder:
    """Collects a run's OpRecords; ``profile`` decides whether GPU sublayers get events of their own."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.records: list[OpRecord] = []
        self.profile = True

    def reset(self, profile: bool) -> None:
        self.records = []
        self.profile = profile

    def copy(
        self,
        stage: Stage,
        step: int,
        li: int,
        c: int,
        name: str,
        dev: Device,
        nbytes: int,
        layer_kind: str,
        detail: str,
        start: object,
        end: object,
    ) -> None:
        """A copy of ``nbytes`` to ``dev`` between the events ``start`` and ``end``."""
        self.records.append(OpRecord(stage, step, li, c, name, "copy", dev, nbytes, 0, layer_kind, detail, start, end))

    def stamp(self, dev: Device) -> Optional[Event]:
        """A start/end mark on ``dev``: a CUDA event on the compute stream, or a host stamp (None for a GPU
        sublayer of an unprofiled run)."""
        cuda = self.backend.is_cuda and dev == Device.GPU
        if cuda and not self.profile:
            return None
        return Event(cuda).record(self.backend.compute if cuda else None)

    def compute(
        self,
        stage: Stage,
        step: int,
        li: int,
        c: int,
        name: str,
        dev: Device,
        tokens: int,
        layer_kind: str,
        start: Optional[Event],
        end: Optional[Event] = None,
    ) -> None:
        """A sublayer (or the embedding / head) that began at ``start`` and ends at ``end`` (default: now)."""
        if start is None:
            return
        end = end if end is not None else self.stamp(dev)
        self.records.append(OpRecord(stage, step, li, c, name, "compute", dev, 0, tokens, layer_kind, "", start, end))
