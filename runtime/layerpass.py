"""What one layer of one pass works on: the layer's context (``LayerPass``) and one chunk of the batch
(``Chunk``, a decode step or one of the prefill minibatches) with the values it has produced, by device."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lia_model.plan import Device
from lia_model.sublayers import SUBLAYERS, Stage, Sublayer
from runtime.backend import Placed

if TYPE_CHECKING:
    from runtime.kvstore import LayerKV

SUBLAYER_INDEX = {s: i for i, s in enumerate(SUBLAYERS)}
QKV, SCORE, CTX, OUT, FC1, FC2 = SUBLAYERS


@dataclass
class LayerPass:
    """Per-layer context of one pass."""

    stage: Stage
    step: int
    pass_index: int
    li: int
    resident: bool
    policy: tuple[Device, ...]
    pos0: int
    q: int
    kv: "LayerKV"
    slot: int = -1
    staged: dict = field(default_factory=dict)  # (which, chunk) -> Event of the H2D fetch into staging
    weights_waited: bool = False  # the compute stream waits for the layer's streamed weights (WeightStreamer.views)

    @property
    def valid(self) -> int:
        return self.pos0 + self.q

    @property
    def kind(self) -> str:
        return "resident" if self.resident else "streamed"

    def dev(self, sub: Sublayer) -> Device:
        return self.policy[SUBLAYER_INDEX[sub]]


@dataclass
class Chunk:
    c: int
    b0: int
    b1: int
    values: dict[str, dict[Device, Placed]]

    @property
    def rows(self) -> slice:
        return slice(self.b0, self.b1)
