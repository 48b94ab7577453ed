"""least_footprint_memory picks its minibatch count by the workspace ws(n) alone and builds the memory constants of
that count only (lia_model.optimizer.enumerate). Checked against its definition: the constants of every count,
the first with the smallest (GPU workspace, host workspace), with the prefill policies' extras dropped; over
batches with many and few divisors, the optimiser's counts and every divisor (relaxed), bf16 and quantised
weights (a dequantisation piece on the GPU workspace)."""

from __future__ import annotations

import dataclasses

import pytest

from lia_model.memory import memory_constants
from lia_model.models import get_model
from lia_model.optimizer.enumerate import least_footprint_memory
from lia_model.optimizer.space import divisors, minibatch_candidates
from lia_model.precision import Precision, WeightDtype
from lia_model.profiles import load_system
from lia_model.workload import make_workload


def _by_definition(system, model, workload, relaxed):
    counts = divisors(workload.batch) if relaxed else minibatch_candidates(workload.batch)
    consts = [memory_constants(system, model, workload, n) for n in counts]
    least = min(consts, key=lambda m: (m.gpu_workspace_bytes, m.host_workspace_bytes))
    zero = (0.0,) * len(least.waiting_chunks_bytes)
    return dataclasses.replace(least, waiting_chunks_bytes=zero, split_attention_bytes=zero)


@pytest.mark.parametrize("relaxed", [False, True])
@pytest.mark.parametrize("weight_dtype", [WeightDtype.BF16, WeightDtype.INT8])
@pytest.mark.parametrize(
    "system, model, input_len, output_len",
    [
        ("spr-a100", "opt-30b", 512, 32),
        ("gnr-h100-cxl", "llama-2-70b", 128, 64),
        ("spr-a100-cxl", "mixtral-8x7b", 1024, 8),
    ],
)
def test_least_footprint_matches_definition(system, model, input_len, output_len, weight_dtype, relaxed):
    spec, sys_spec = get_model(model), load_system(system)
    precision = Precision(weight_dtype=weight_dtype)
    for batch in (1, 7, 12, 64, 97, 360, 720, 1024):
        workload = make_workload(batch, input_len, output_len, spec).model_copy(update={"precision": precision})
        assert least_footprint_memory(sys_spec, spec, workload, relaxed) == _by_definition(
            sys_spec, spec, workload, relaxed
        )
