"""The precision study (issue 12): one row per weight precision, speedups over bf16 by their definition, and the
capacity effect checked by hand."""

from __future__ import annotations

import pytest

from lia_model.accounting import layer_weight_bytes
from lia_model.models import get_model
from lia_model.precision import make_precision
from studies.precision import Point, run


def test_llama31_70b_on_gnr_h100_latency_rows():
    """Llama-3.1-70B, B = 1, 256/32 on gnr-h100 (an 80 GB H100): int8 weights (80 layers x 0.86 GB = 69 GB, by
    lia_model.accounting) fit every layer in HBM where bf16's 138 GB cannot, so the int8 optimum keeps all 80
    layers resident and bf16 fewer; each speedup is bf16's latency over the row's own."""
    model = get_model("llama-3.1-70b")
    int8_gb = 80 * layer_weight_bytes(model, make_precision("int8")) / 1e9
    bf16_gb = 80 * layer_weight_bytes(model) / 1e9
    assert 68 < int8_gb < 70 and 135 < bf16_gb < 140
    rows = {
        r["weight_dtype"]: r
        for r in run(Point("gnr-h100", "llama-3.1-70b", 256, 32, "latency_b1", ("bf16", "int8", "fp8_e4m3")))
    }
    assert rows["int8"]["gpu_resident_layers"] == 80 and rows["bf16"]["gpu_resident_layers"] < 80
    for dtype in ("int8", "fp8_e4m3"):
        assert rows[dtype]["speedup_vs_bf16"] == pytest.approx(rows["bf16"]["latency_s"] / rows[dtype]["latency_s"])
        assert rows[dtype]["speedup_vs_bf16"] > 1
    assert rows["bf16"]["speedup_vs_bf16"] == 1.0 and rows["int8"]["usd_per_million_tokens"] is None  # latency rows


def test_a_precision_the_system_cannot_run_is_a_row_that_says_why():
    rows = {
        r["weight_dtype"]: r for r in run(Point("spr-a100", "opt-175b", 256, 32, "latency_b1", ("bf16", "fp8_e4m3")))
    }
    fp8 = rows["fp8_e4m3"]
    assert not fp8["feasible"] and fp8["latency_s"] is None and fp8["speedup_vs_bf16"] is None
    assert "fp8 tensor cores" in fp8["refused"] and "a100" in fp8["refused"]
    assert rows["bf16"]["feasible"] and rows["bf16"]["refused"] is None
