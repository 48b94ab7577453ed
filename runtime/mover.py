"""Activation copies between host and GPU, each on its own copy stream and recorded.

Host -> device: a fresh GPU tensor filled on the H2D stream; the copy is on the chain, so the weight feeder is
told to let it go first (runtime/streamer.py, ``WeightFeeder.yield_to``). Device -> host: a page-locked
buffer of the Mover's ``PinnedPool`` (runtime/pinned_pool.py) filled on the D2H stream after the producer (issued on
the compute stream). The pool also lends the KV store its landing buffers and the executor the CPU outputs that
cross to the GPU; every copy that reads or writes a pool buffer reports its end event to the pool.
"""

from __future__ import annotations

from lia_model.plan import Device
from lia_model.sublayers import Stage
from runtime.backend import Backend, Placed
from runtime.pinned_pool import PinnedPool
from runtime.records import Recorder
from runtime.streamer import WeightFeeder


class Mover:
    def __init__(self, backend: Backend, recorder: Recorder, feeder: WeightFeeder) -> None:
        self.backend = backend
        self.recorder = recorder
        self.feeder = feeder
        self.pool = PinnedPool(backend)  # page-locked host buffers of one hand-off (D2H, K/V landing, CPU outputs)

    def move(
        self,
        src: Placed,
        dev: Device,
        stage: Stage,
        step: int,
        li: int,
        c: int,
        kind: str,
        detail: str,
        layer_kind: str,
    ) -> Placed:
        """``src`` on ``dev`` (itself when it is there already); the result's ``ready`` is the copy's end."""
        if src.dev == dev:
            return src
        be = self.backend
        nbytes = src.t.numel() * src.t.element_size()
        if dev == Device.GPU:  # host -> device
            with be.on_stream(be.h2d):
                dst = be.empty(tuple(src.t.shape), Device.GPU)
            start = be.event(be.h2d)
            be.copy(dst, src.t, be.h2d)
            end = be.event(be.h2d)
            self.pool.used(src.t, end)  # a pool buffer (a CPU output) is not lent again before its copy ends
            self.feeder.yield_to(end)  # on the chain: no new weight piece before it lands
            be.keep_alive(dst, be.compute)
        else:  # device -> host
            dst = self.pool.take("act_d2h", tuple(src.t.shape))
            # Order after the producer (issued on the compute stream); an event recorded now also covers it.
            be.wait(be.d2h, src.ready if src.ready is not None else be.event(be.compute))
            start = be.event(be.d2h)
            be.copy(dst, src.t, be.d2h)
            end = be.event(be.d2h)
            self.pool.used(dst, end)
            be.keep_alive(src.t, be.d2h)
        self.recorder.copy(stage, step, li, c, kind, dev, nbytes, layer_kind, detail, start, end)
        return Placed(dst, dev, end)
