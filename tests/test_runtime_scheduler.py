"""The scheduler's readiness rule (runtime/scheduler.py) on stand-ins: with CUDA the CPU takes the oldest chunk whose
inputs have landed, else polls until one has. The rule's polling is reached only with a CUDA backend (the fake GPU's
events are always complete), so these tests give it one that says it is CUDA, and events whose completion they set."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from lia_model.plan import Device
from lia_model.sublayers import Stage
from runtime.backend import Placed
from runtime.kvstore import LayerKV
from runtime.layerpass import CTX, QKV, SCORE, Chunk, LayerPass
from runtime.scheduler import Scheduler

CPU_ATTENTION = (Device.GPU, Device.CPU, Device.CPU, Device.GPU, Device.GPU, Device.GPU)


class Flag:
    """An event that completes after ``polls`` queries (never when None)."""

    def __init__(self, polls: int | None = 0) -> None:
        self.polls, self.queries = polls, 0

    def query(self) -> bool:
        self.queries += 1
        return self.polls is not None and self.queries > self.polls


class Mover:
    def __init__(self, ready: Flag) -> None:
        self.ready, self.moves = ready, []

    def move(self, src, dev, stage, step, li, c, kind, detail, layer_kind):
        self.moves.append((li, c, kind, detail, dev))
        return Placed(src.t, dev, self.ready)


def _lay(policy=CPU_ATTENTION) -> LayerPass:
    kv = LayerKV(host=None, gpu=None, resident=False)
    return LayerPass(Stage.PREFILL, 0, 0, 3, False, policy, 0, 4, kv)


def _chunk(c: int, name: str, ready: Flag | None, dev: Device = Device.CPU) -> Chunk:
    return Chunk(c, 2 * c, 2 * c + 2, {name: {dev: Placed(torch.zeros(1), dev, ready)}})


def _scheduler(cuda: bool = True, mover: Mover | None = None) -> Scheduler:
    return Scheduler(SimpleNamespace(is_cuda=cuda), mover or Mover(Flag()), dispatch=None)


def test_the_cpu_takes_the_oldest_chunk_whose_inputs_have_landed():
    lay = _lay()
    late, landed = _chunk(0, "q", Flag(None)), _chunk(1, "q", Flag())
    nxt = [1, 1]  # both chunks' next sublayer is attn_score (on the CPU)
    assert _scheduler().first_ready(lay, [late, landed], nxt) is landed
    both = [_chunk(0, "q", Flag()), _chunk(1, "q", Flag())]
    assert _scheduler().first_ready(lay, both, nxt) is both[0]


def test_it_polls_until_one_lands_and_without_cuda_takes_the_oldest():
    lay = _lay()
    chunks = [_chunk(0, "q", Flag(None)), _chunk(1, "q", Flag(3))]
    assert _scheduler().first_ready(lay, chunks, [1, 1]) is chunks[1]
    assert chunks[1].values["q"][Device.CPU].ready.queries == 4
    never = [_chunk(0, "q", Flag(None)), _chunk(1, "q", Flag(None))]
    assert _scheduler(cuda=False).first_ready(lay, never, [1, 1]) is never[0]
    assert _scheduler().first_ready(lay, never[:1], [1]) is never[0]  # one chunk: it blocks on its inputs


def test_cpu_attention_waits_for_the_kv_write_back():
    lay = _lay()
    ch = _chunk(0, "q", Flag())
    lay.kv.written[(0, 2)] = (0, Flag(None))  # the K/V write-back of rows 0..2 still in flight
    assert not _scheduler().cpu_inputs_ready(lay, ch, SCORE)
    lay.kv.written[(0, 2)] = (1, Flag())
    assert _scheduler().cpu_inputs_ready(lay, ch, SCORE)


def test_an_input_only_on_the_gpu_is_copied_then_polled():
    lay = _lay((Device.CPU,) * 6)
    mover = Mover(Flag(None))
    ch = _chunk(0, "h", None, Device.GPU)  # the embedding, on the GPU
    assert not _scheduler(mover=mover).cpu_inputs_ready(lay, ch, QKV)
    assert mover.moves == [(3, 0, "act", "h", Device.CPU)] and Device.CPU in ch.values["h"]
    assert not _scheduler(mover=mover).cpu_inputs_ready(lay, ch, QKV)
    assert len(mover.moves) == 1  # started once
    assert not _scheduler().cpu_inputs_ready(lay, Chunk(1, 2, 4, {}), QKV)  # not produced yet


def test_fused_cpu_attention_reads_q():
    lay = _lay((Device.GPU, Device.CPU, Device.CPU, Device.GPU, Device.GPU, Device.GPU))
    ch = _chunk(0, "q", Flag())  # attn_context of a fused pair: its input is Q, "scores" does not exist
    assert _scheduler().cpu_inputs_ready(lay, ch, CTX)
