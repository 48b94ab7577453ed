"""Activation copies between host and GPU, each on its own copy stream and recorded.

Host -> device: a fresh GPU tensor filled on the H2D stream; the copy is on the chain, so the weight feeder is
told to let it go first (runtime/streamer.py, ``WeightFeeder.yield_to``). Device -> host: a page-locked
tensor filled on the D2H stream after the producer (issued on the compute stream).
"""

from __future__ import annotations

from lia_model.plan import Device
from lia_model.sublayers import Stage
from runtime.backend import Backend, Placed
from runtime.records import Recorder
from runtime.streamer import WeightFeeder


class Mover:
    def __init__(self, backend: Backend, recorder: Recorder, feeder: WeightFeeder) -> None:
        self.backend = backend
        self.recorder = recorder
        self.feeder = feeder

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
            self.feeder.yield_to(end)  # on the chain: no new weight piece before it lands
            be.keep_alive(dst, be.compute)
        else:  # device -> host
            dst = be.empty(tuple(src.t.shape), Device.CPU, pinned=True)
            # Order after the producer (issued on the compute stream); an event recorded now also covers it.
            be.wait(be.d2h, src.ready if src.ready is not None else be.event(be.compute))
            start = be.event(be.d2h)
            be.copy(dst, src.t, be.d2h)
            end = be.event(be.d2h)
            be.keep_alive(src.t, be.d2h)
        self.recorder.copy(stage, step, li, c, kind, dev, nbytes, layer_kind, detail, start, end)
        return Placed(dst, dev, end)
