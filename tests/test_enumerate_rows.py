"""The enumerator leaves out the N_res rows that no policy pair fits (host tiers, or HBM with the smallest pair)
before its [rows, pairs] evaluations (lia_model.optimizer.enumerate.best_in_combo). Checked against the
exhaustive evaluation, which keeps every row and every pair: the same point (latency, N_res, policies, K_cxl),
ties included, on every combo and ISA pair of real tables, with and without a TPOT bound and a TTFT bound (from
the fastest TTFT any plan reaches to above the unbounded optimum's), on systems with and without CXL, in the
overlap and additive models (the pipeline, weight-split and allowance branches), and with the memory shrunk at
random so that HBM and the host tiers rule out rows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lia_model.costmodel import predict
from lia_model.memory import MemoryTier
from lia_model.models import get_model
from lia_model.optimizer import fastest_ttft_s
from lia_model.optimizer.enumerate import best_in_combo, combo_arrays, enumerate_optimum, stage_constants
from lia_model.optimizer.space import build_tables
from lia_model.profiles import load_system
from lia_model.workload import make_workload


@pytest.mark.parametrize(
    "system, model, batch, input_len, output_len, mode",
    [
        ("spr-a100", "opt-175b", 8, 512, 32, "overlap"),  # no CXL: the prefill pipeline's branch; most N_res miss HBM
        ("gnr-h100-cxl", "llama-2-70b", 4, 128, 32, "overlap"),  # CXL: the weight split's branch
        ("spr-a100-cxl", "mixtral-8x7b", 16, 256, 8, "overlap"),  # MoE, CXL
        ("gh200", "opt-66b", 64, 128, 16, "overlap"),
        ("spr-a100", "opt-66b", 8, 512, 32, "additive"),  # no CXL, no pipeline: the bounds' allowance branch
    ],
)
def test_rows_left_out_change_no_point(system, model, batch, input_len, output_len, mode):
    spec = get_model(model)
    sys_spec, workload = load_system(system), make_workload(batch, input_len, output_len, spec)
    tables = build_tables(sys_spec, spec, workload, mode)
    consts = stage_constants(tables)
    fastest = fastest_ttft_s(sys_spec, spec, workload, mode)
    free = predict(sys_spec, spec, workload, enumerate_optimum(tables).plan, mode).ttft_s
    bounds = [(tpot, None) for tpot in (None, 0.05, 0.5)]
    bounds += [(None, ttft) for ttft in (fastest * (1 + 1e-9), (fastest + free) / 2, free * 1.5)]
    bounds += [(0.5, (fastest + free) / 2)]
    rng = np.random.default_rng(batch)
    checked = 0
    for combo in tables.combos:
        for isa_pre in tables.prefill_isas(combo):
            for isa_dec in tables.decode_isas(combo):
                arrays = combo_arrays(tables, combo, isa_pre, isa_dec)
                shrunk = dataclasses.replace(
                    arrays,
                    memory=dataclasses.replace(
                        arrays.memory,
                        available_bytes={
                            tier: v * float(rng.choice([0.2, 0.5, 0.9, 1.0]))
                            for tier, v in arrays.memory.available_bytes.items()
                        },
                    ),
                )
                for ca in (arrays, shrunk):
                    for tpot, ttft in bounds:
                        fast = best_in_combo(ca, consts, tpot, ttft_max_s=ttft)
                        full = best_in_combo(ca, consts, tpot, exhaustive=True, ttft_max_s=ttft)
                        assert fast == full, (combo, isa_pre, isa_dec, tpot, ttft, fast, full)
                        checked += fast is not None
    assert checked > 0
    assert MemoryTier.HBM in tables.memory[tables.combos[0].minibatches].available_bytes
