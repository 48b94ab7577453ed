"""A plan as the graph the runtime walks: passes, each over every layer, each layer over the pass's chunks.

Torch-free and derived from the plan alone, so that the executor (``runtime/executor.py``), which runs it, and
the data-flow check (``runtime/dataflow.py``), which lists what that run must move, read one definition:

- passes: the prefill (pass 0, step 0: ``L_in`` new tokens per sequence at positions 0 ..) and one decode pass
  per further output token (step t = 1 .. L_out - 1: one new token at position L_in + t - 1);
- chunks: the prefill splits the batch into the plan's minibatches of B / n rows each; a decode pass is one chunk;
- layers: the first ``gpu_resident_layers`` run every sublayer on the GPU; the others follow the stage's policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from lia_model.plan import ALL_GPU, Device, Plan
from lia_model.sublayers import Stage


@dataclass(frozen=True)
class PassNode:
    """One forward pass over the model: its stage, step, new tokens per sequence and chunks."""

    index: int
    stage: Stage
    step: int
    pos0: int  # position of the first new token
    q: int  # new tokens per sequence
    chunks: tuple[tuple[int, int], ...]  # (first row, end row) of each chunk of the batch

    @property
    def valid(self) -> int:
        """Positions of the KV cache this pass's attention reads: the cached ones and its own."""
        return self.pos0 + self.q

    @property
    def chunk_rows(self) -> int:
        return self.chunks[0][1] - self.chunks[0][0]


def plan_passes(plan: Plan, batch: int, input_len: int, output_len: int) -> list[PassNode]:
    """The passes of generating ``output_len`` tokens for ``batch`` prompts of ``input_len`` tokens."""
    if output_len < 1 or input_len < 1 or batch < 1:
        raise ValueError("batch, input_len and output_len must be at least 1")
    n = plan.prefill_minibatches
    if batch % n:
        raise ValueError(f"the batch ({batch}) must be a multiple of the prefill minibatches ({n})")
    rows = batch // n
    nodes = [PassNode(0, Stage.PREFILL, 0, 0, input_len, tuple((c * rows, (c + 1) * rows) for c in range(n)))]
    for t in range(1, output_len):
        nodes.append(PassNode(t, Stage.DECODE, t, input_len + t - 1, 1, ((0, batch),)))
    return nodes


def is_resident(plan: Plan, layer: int) -> bool:
    """Whether ``layer`` keeps its weights on the GPU (the first ``gpu_resident_layers``)."""
    return layer < plan.gpu_resident_layers


def layer_policy(plan: Plan, stage: Stage, layer: int) -> tuple[Device, ...]:
    """Where each sublayer of ``layer`` runs in ``stage``: all on the GPU when resident, else the stage's policy."""
    if is_resident(plan, layer):
        return ALL_GPU
    return plan.prefill_policy if stage == Stage.PREFILL else plan.decode_policy
