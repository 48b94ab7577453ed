"""The scheduler of one layer's chunks (a decode step is one chunk, the prefill ``plan.prefill_minibatches``):
which chunk's next sublayer runs next.

The rule, repeated until every chunk has run its six sublayers (the loop of ``run_layer``):

1. Issue, chunk by chunk, every GPU sublayer whose predecessor has been issued or has run (asynchronous: the
   GPU's work is issued as soon as it can be, and the copies it needs go on their own streams).
2. Then run one CPU sublayer: the oldest chunk's whose inputs are ready now, or, when none is, the one whose
   inputs become ready first (polled; ties go to the oldest). A CPU sublayer's inputs are ready when they have
   landed in host memory (``cpu_inputs_ready``: a non-blocking query of the copies' events), for CPU attention
   including the write-back of the K and V it reads. With one chunk, or without CUDA, the oldest chunk's runs
   (it blocks on its inputs). attn_score and attn_context both on the CPU are one kernel: the CPU runs them
   back to back for that chunk.

So the CPU works on one chunk while the GPU and the copy engines work on others. With ``LIA_CPU_WORKER=thread``
(runtime/cpu_worker.py) step 2 hands the CPU sublayer to the worker thread instead of running it, and when it has
run, the next CPU sublayer (any chunk's whose inputs are ready then) is handed over before the GPU sublayers that
waited on the finished one are issued, so issuing GPU work is off the CPU's path. The CPU's order can then differ
from inline (with (1,0,1,0,0,0) in 4 minibatches: qkv of chunks 0 and 1 before chunk 0's attention); the results do
not, but the cost model's schedule (lia_model/schedule.py) replays the inline order. The cost model's overlap mode
replays the same rule on the operations' durations (lia_model/schedule.py, ``simulate_layer``). The layer's
set-up (its early copies and cached-KV fetches, the weight buffer it streams into) and end are the executor's
(runtime/executor.py); each sublayer is run by the ``SublayerDispatch`` (runtime/dispatch.py).
"""

from __future__ import annotations

import time
from typing import Optional

from lia_model.plan import Device
from lia_model.sublayers import SUBLAYERS, Sublayer
from runtime.backend import Backend
from runtime.cpu_worker import CpuJob, CpuWorker
from runtime.dispatch import SublayerDispatch
from runtime.layerpass import CTX, FC1, FC2, OUT, QKV, SCORE, Chunk, LayerPass
from runtime.mover import Mover


class Scheduler:
    """Runs one layer's chunks in the order of the rule above (one per executor)."""

    def __init__(
        self, backend: Backend, mover: Mover, dispatch: SublayerDispatch, worker: Optional[CpuWorker] = None
    ) -> None:
        self.backend = backend
        self.mover = mover
        self.dispatch = dispatch
        self.worker = worker  # None: CPU sublayers run inline on this thread
        self._job: Optional[CpuJob] = None  # the worker's job in flight

    def run_layer(self, lay: LayerPass, chunks: list[Chunk]) -> None:
        """Run every sublayer of every chunk of the layer (on the device ``lay``'s policy names); returns once
        the last has been issued (GPU) or has run (CPU)."""
        if self.worker is not None:
            self.dispatch.lock.acquire()
            try:
                self._run_layer_with_worker(lay, chunks, self.worker)
            finally:
                self._in_flight_done()  # a launching-thread error: let the worker's job end first
                self.dispatch.lock.release()
            return
        nxt = [0] * len(chunks)
        while True:
            self._issue_gpu(lay, chunks, nxt)
            # then one CPU sublayer: the oldest chunk's whose inputs are ready now, else the first chunk's to
            # become ready (the cost model's schedule, lia_model/schedule.py, makes the same choice)
            pending = self._pending_cpu(lay, chunks, nxt)
            if pending:
                ch = self.first_ready(lay, pending, nxt)
                nxt[ch.c] += self._cpu_sublayers(lay, ch, SUBLAYERS[nxt[ch.c]])
            elif all(i == 6 for i in nxt):
                break

    def _issue_gpu(self, lay: LayerPass, chunks: list[Chunk], nxt: list[int]) -> None:
        """Issue, chunk by chunk, every GPU sublayer whose predecessor has been issued or has run (asynchronous)."""
        for ch in chunks:
            while nxt[ch.c] < 6 and lay.policy[nxt[ch.c]] == Device.GPU:
                self.dispatch.run(lay, ch, SUBLAYERS[nxt[ch.c]], Device.GPU)
                nxt[ch.c] += 1

    @staticmethod
    def _pending_cpu(lay: LayerPass, chunks: list[Chunk], nxt: list[int]) -> list[Chunk]:
        """The chunks whose next sublayer runs on the CPU, oldest first."""
        return [ch for ch in chunks if nxt[ch.c] < 6 and lay.policy[nxt[ch.c]] == Device.CPU]

    def _cpu_sublayers(self, lay: LayerPass, ch: Chunk, sub: Sublayer) -> int:
        """Run ``ch``'s CPU sublayer ``sub`` (and attn_context with it when both attention halves run on the CPU:
        one kernel); returns how many sublayers ran."""
        self.dispatch.run(lay, ch, sub, Device.CPU)
        if sub == SCORE and lay.dev(CTX) == Device.CPU:  # fused attention: one kernel, not interrupted
            self.dispatch.run(lay, ch, CTX, Device.CPU)
            return 2
        return 1

    def _run_layer_with_worker(self, lay: LayerPass, chunks: list[Chunk], worker: CpuWorker) -> None:
        """``run_layer`` with the CPU sublayers on the worker thread (called holding the run's lock)."""
        nxt = [0] * len(chunks)
        job: Optional[CpuJob] = None

        def pending() -> list[Chunk]:
            return self._pending_cpu(lay, chunks, nxt)

        def hand_over(ch: Chunk) -> CpuJob:
            sub = SUBLAYERS[nxt[ch.c]]
            self._job = worker.submit(lambda: self._cpu_sublayers(lay, ch, sub), ch)
            return self._job

        while True:
            if job is None:  # the CPU first: a sublayer whose inputs are ready now goes to the worker at once
                ch = self.ready_now(lay, pending(), nxt)
                if ch is not None:
                    job = hand_over(ch)
            self._issue_gpu(lay, chunks, nxt)
            if job is None and pending():  # none was ready: the first to become ready (polled, as inline)
                job = hand_over(self.first_ready(lay, pending(), nxt))
            if job is not None:
                # without the lock: the worker sets up, runs and hands off the sublayer(s); it returns how many
                nxt[job.tag.c] += worker.wait(job)
                job = self._job = None
            elif all(i == 6 for i in nxt):
                break

    def _in_flight_done(self) -> None:
        """Wait (without the lock) for a job still in flight: when the launching thread raised, the worker must not
        go on writing into the run's records and buffers after the error has reached the caller."""
        job = self._job
        if job is not None:
            with self.dispatch.lock.unlocked():
                job.done.wait()
            self._job = None

    def ready_now(self, lay: LayerPass, pending: list[Chunk], nxt: list[int]) -> Optional[Chunk]:
        """The chunk ``first_ready`` would pick without polling, or None when it would poll (no pending chunk's
        inputs have landed yet)."""
        if not pending:
            return None
        if len(pending) == 1 or not self.backend.is_cuda:
            return pending[0]
        for ch in pending:
            if self.cpu_inputs_ready(lay, ch, SUBLAYERS[nxt[ch.c]]):
                return ch
        return None

    _CPU_INPUT = {QKV: "h", SCORE: "q", CTX: "scores", OUT: "ctx", FC1: "h_mid", FC2: "mid"}

    def cpu_inputs_ready(self, lay: LayerPass, ch: Chunk, sub: Sublayer) -> bool:
        """Whether every input a CPU sublayer of this chunk reads has landed in host memory by now (a
        non-blocking query of the copy events), including the write-back of the K/V that CPU attention reads."""
        name = self._CPU_INPUT[sub]
        if sub == CTX and lay.dev(SCORE) == Device.CPU:
            name = "q"  # fused attention reads Q (attn_score handed it on)
        copies = ch.values.get(name)
        if not copies:
            return False  # not produced yet
        placed = copies.get(Device.CPU)
        if placed is None:  # only on the GPU (e.g. the embedding): start its copy now, then poll it
            placed = copies[Device.CPU] = self.mover.move(
                next(iter(copies.values())), Device.CPU, lay.stage, lay.step, lay.li, ch.c, "act", name, lay.kind
            )
        if placed.ready is not None and not placed.ready.query():
            return False
        if sub in (SCORE, CTX):
            pending = lay.kv.written_for(ch.b0, ch.b1)
            if pending is not None and not pending.query():
                return False
        return True

    def first_ready(self, lay: LayerPass, pending: list[Chunk], nxt: list[int]) -> Chunk:
        """The chunk whose next (CPU) sublayer runs now: the oldest whose inputs are ready, else the first to
        become ready (polled; ties go to the oldest). One chunk, or no CUDA: the oldest (it blocks on its
        inputs as before)."""
        while True:
            ch = self.ready_now(lay, pending, nxt)
            if ch is not None:
                return ch
            time.sleep(0)  # yield; the copies complete on their own
