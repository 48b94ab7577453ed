"""runtime.graph: the passes, chunks and per-layer policies of a plan, against hand-written lists."""

from __future__ import annotations

import pytest

from lia_model.plan import ALL_GPU, Device, Plan
from lia_model.sublayers import Stage
from runtime.graph import is_resident, layer_policy, plan_passes

C, G = Device.CPU, Device.GPU
PRE, DEC = (G, C, C, G, G, G), (C, G, G, G, G, C)


def test_passes_chunks_and_positions_by_hand():
    """B = 8 prompts of 16 tokens, 3 output tokens, 4 prefill minibatches: the prefill is 4 chunks of 2 rows over
    positions 0-15; decode steps 1 and 2 are one chunk of 8 rows, one token at positions 16 and 17."""
    plan = Plan(prefill_policy=PRE, decode_policy=DEC, gpu_resident_layers=2, prefill_minibatches=4)
    nodes = plan_passes(plan, batch=8, input_len=16, output_len=3)
    assert [(n.index, n.stage, n.step, n.pos0, n.q, n.valid) for n in nodes] == [
        (0, Stage.PREFILL, 0, 0, 16, 16),
        (1, Stage.DECODE, 1, 16, 1, 17),
        (2, Stage.DECODE, 2, 17, 1, 18),
    ]
    assert nodes[0].chunks == ((0, 2), (2, 4), (4, 6), (6, 8)) and nodes[0].chunk_rows == 2
    assert nodes[1].chunks == ((0, 8),) and nodes[1].chunk_rows == 8
    assert len(plan_passes(plan, 8, 16, 1)) == 1  # one output token: the prefill alone
    with pytest.raises(ValueError, match="multiple of the prefill minibatches"):
        plan_passes(plan, 6, 16, 3)


def test_resident_layers_run_on_the_gpu_and_the_rest_follow_the_stage():
    plan = Plan(prefill_policy=PRE, decode_policy=DEC, gpu_resident_layers=2)
    assert [is_resident(plan, li) for li in range(4)] == [True, True, False, False]
    assert layer_policy(plan, Stage.PREFILL, 1) == ALL_GPU and layer_policy(plan, Stage.DECODE, 0) == ALL_GPU
    assert layer_policy(plan, Stage.PREFILL, 2) == PRE and layer_policy(plan, Stage.DECODE, 3) == DEC
