"""Weight streaming: a feeder thread that keeps at most ``depth`` weight pieces queued on the copy engine.

Why (measured on the GPU host, 2026-11-30, runtime/validation/wave2/traces.tgz): the host-to-device copy
engine serves the copies of every stream in the order they were queued. With the whole next layer's
weights (13 ms of DMA for OPT-30B qkv + fc1) queued at a layer's start, the small activation copy that the
layer's own GPU qkv needs waited behind all of it, so CPU work and weight streaming ran one after the other
(layer time = CPU + DMA instead of their max; overlap efficiency 0.08). The feeder enqueues one piece
(32 MiB, about 0.6 ms at 55 GB/s) whenever fewer than ``depth`` are in flight, so an activation copy waits
for at most ``depth`` pieces, while the launching thread is free to run CPU sublayers.

How the feeder waits matters as much (measured on the host, 2026-11-30, runtime/validation/wave2-a/traces.tgz):
its thread inherited the OpenMP master's single-core affinity and waited for each piece with a spinning
``cudaEventSynchronize``, so while weights streamed it time-shared the master's core. CPU attention of OPT-30B
at B=1 took 6-8 ms instead of 0.1 ms and out_proj 8 ms instead of 1.6 ms, exactly in the layers whose DMA ran
beside them; mixed plans measured 20-48% slower than predicted. The feeder now waits on blocking events
(it sleeps in the driver) and runs on a core of its own (``cpu_setup.place_helper_thread``; a floating
feeder was woken late while OpenMP kept every core busy: streaming fell to 90% of the calibrated H2D
bandwidth, runtime/validation/wave2-b2/).

Copies on the critical path go first (fifth session's traces, runtime/validation/wave2-b3/traces.tgz): even with
two pieces in flight, a layer's cached-K fetch or Q copy on the activation stream finished only when the whole
weight job beside it had ended (OPT-30B: a 0.53 ms fetch took 3.9-4.4 ms, ending 0.52 ms after each 514 MB
job; Llama-2-70B: 12 ms for a 1 MiB fetch). The feeder refilled the weight stream before it ever emptied, and
the copy engine kept serving it. So the executor hands each critical copy's end event to ``yield_to`` and the
feeder issues no new piece until that copy has finished (at most ``YIELD_S``, so a copy that itself waits on
the weights being streamed cannot deadlock the two): the copy then waits for at most the pieces in flight.
``LIA_FEEDER_YIELD=0`` turns this off. Measured on the host (sixth session, runtime/validation/probe-h2d/): a copy
on a second stream beside a 2 GiB job waited 35 ms (the job's remaining time), behind the feeder's pieces
0.93 ms; with the yield, the campaign's Q copies waited 0.8-1.2 ms (runtime/validation/wave2-b4/, wave2-a4/).
The cost model charges that wait (lia_model/weight_feeder.py, which owns the piece size and depth).

The launching thread gets a ``Job`` per prefetch: ``Job.ready()`` blocks until every piece is queued and
returns the event after the last one (a stream may only wait on an event once it is recorded). Without
CUDA (the fake and CPU backends, whose copies are synchronous) jobs run inline. ``LIA_WEIGHT_FEEDER=0``
turns the thread off (every piece is queued at once, as before).
"""

from __future__ import annotations

import collections
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from lia_model.weight_feeder import PIECE_BYTES, PIECES_IN_FLIGHT
from runtime.backend import Backend, Event

PIECE_ELEMS = PIECE_BYTES // 2  # 32 MiB of bf16 per piece (lia_model.weight_feeder: the cost model's copy)
DEPTH = PIECES_IN_FLIGHT  # pieces in flight on the copy engine
_clock = time.perf_counter  # (tests replace it)
YIELD_S = 0.005  # the longest the feeder holds its next piece for one critical copy (a lone 29 MB copy: 0.53 ms)


@dataclass
class Piece:
    dst: torch.Tensor
    src: torch.Tensor


@dataclass
class Part:
    """One sublayer's weights: its pieces, and a callback that records (start, end) events of the part."""

    pieces: list[Piece]
    on_done: Callable[[Event, Event], None]


@dataclass
class Job:
    waits: list[Optional[Event]]
    parts: list[Part]
    end: Optional[Event] = None
    error: Optional[BaseException] = None
    done: threading.Event = field(default_factory=threading.Event)

    def ready(self) -> Event:
        """Block until the job is fully queued; the event after its last copy."""
        self.done.wait()
        if self.error is not None:
            raise RuntimeError(f"weight prefetch failed: {self.error!r}") from self.error
        assert self.end is not None
        return self.end


def split(dst: torch.Tensor, src: torch.Tensor, piece_elems: int = PIECE_ELEMS) -> list[Piece]:
    d, s = dst.view(-1), src.view(-1)
    return [
        Piece(d[lo : min(lo + piece_elems, s.numel())], s[lo : min(lo + piece_elems, s.numel())])
        for lo in range(0, s.numel(), piece_elems)
    ]


def _threaded_wanted(backend: Backend) -> bool:
    return backend.is_cuda and os.environ.get("LIA_WEIGHT_FEEDER", "1") != "0"


def _yield_wanted() -> bool:
    return os.environ.get("LIA_FEEDER_YIELD", "1") != "0"


def _thread_text(where: str, depth: int, yields: bool) -> str:
    return f"feeder thread ({where}, blocking waits), {depth} x 32 MiB in flight" + (
        ", yields to critical copies" if yields else ""
    )


def feeder_mode(backend: Backend) -> str:
    """How weights will be streamed in this process (recorded in every validation row)."""
    if _threaded_wanted(backend):
        from runtime.cpu_setup import current

        setup = current()
        where = f"own core cpu {','.join(map(str, setup.feeder_cpus))}" if setup and setup.feeder_cpus else "floating"
        return _thread_text(where, DEPTH, _yield_wanted())
    return "all pieces queued at once" if backend.is_cuda else "synchronous copies (no CUDA)"


class WeightFeeder:
    def __init__(self, backend: Backend, depth: int = DEPTH, threaded: Optional[bool] = None) -> None:
        self.backend = backend
        self.depth = max(1, depth)
        if threaded is None:
            threaded = _threaded_wanted(backend)
        self.threaded = threaded
        self._queue: "queue.Queue[Optional[Job]]" = queue.Queue()
        self._critical: "collections.deque[tuple[Event, float]]" = collections.deque()
        self._critical_lock = threading.Lock()
        self.yields = threaded and _yield_wanted()
        self.affinity = "launching thread"
        self._thread: Optional[threading.Thread] = None
        if threaded:
            self._device = torch.cuda.current_device() if backend.is_cuda else None
            self._thread = threading.Thread(target=self._loop, name="lia-weight-feeder", daemon=True)
            self._thread.start()

    @property
    def description(self) -> str:
        if not self.threaded:
            return "all pieces queued at once"
        return _thread_text(self.affinity, self.depth, self.yields)

    def yield_to(self, copy_end: Optional[Event]) -> None:
        """A critical-path copy was just queued (its end event): queue no new weight piece before it ends.
        Entries past their deadline are dropped here too, so a run without weight jobs keeps none alive."""
        if not self.yields or copy_end is None:
            return
        now = _clock()
        with self._critical_lock:
            while self._critical and self._critical[0][1] <= now:
                self._critical.popleft()
            self._critical.append((copy_end, now + YIELD_S))

    def _hold_for_critical(self) -> None:
        """Before a piece: wait (sleeping 50 us at a time) for the pending critical copies, each up to its deadline."""
        while True:
            with self._critical_lock:
                if not self._critical:
                    return
                end, deadline = self._critical[0]
                if end.query() or _clock() >= deadline:
                    self._critical.popleft()
                    continue
            time.sleep(5e-5)

    def submit(self, waits: list[Optional[Event]], parts: list[Part]) -> Job:
        job = Job(waits, parts)
        if self.threaded:
            self._queue.put(job)
        else:
            self._run(job, throttle=False)
        return job

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self) -> None:
        from runtime.cpu_setup import place_helper_thread

        self.affinity = place_helper_thread()
        if self._device is not None:
            torch.cuda.set_device(self._device)
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._run(job, throttle=True)

    def _run(self, job: Job, throttle: bool) -> None:
        be = self.backend
        try:
            for ev in job.waits:
                be.wait(be.weights, ev)
            in_flight: list[Event] = []
            for part in job.parts:
                start = be.event(be.weights)
                for piece in part.pieces:
                    if throttle:
                        while len(in_flight) >= self.depth:
                            in_flight.pop(0).synchronize()
                        self._hold_for_critical()
                    be.copy(piece.dst, piece.src, be.weights)
                    if throttle:
                        in_flight.append(be.event(be.weights, blocking=True))
                part.on_done(start, be.event(be.weights))
            job.end = be.event(be.weights)
        except BaseException as err:  # noqa: BLE001 - handed to the launching thread by Job.ready()
            job.error = err
        finally:
            job.done.set()
