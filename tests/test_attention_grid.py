"""CPU prefill attention read from the calibrator's measured grid (lia_model/attention_grid.py): hand-derived
log-log interpolation, nothing extrapolated, and the cost model reading it in place of the fit inside the grid."""

from __future__ import annotations

import math

import pytest

from lia_model.attention_grid import prefill_seconds
from lia_model.costterms import sublayer_times
from lia_model.hardware import AttentionGridPoint, SystemSpec
from lia_model.sublayers import SUBLAYERS, Sublayer
from tests.test_kernel_tables import OPT30, _ctx, _system_with_tables


def _pt(batch: int, s: int, seconds: float, kind: str = "fused", heads: int = 4, kv_heads: int = 4, d: int = 128):
    return AttentionGridPoint(
        kind=kind, batch=batch, heads=heads, kv_heads=kv_heads, s=s, head_dim=d, seconds=seconds, runs=1
    )


# 4 heads: at s = 100 rows 4 and 16 take 2.5e-4 and 5e-4 s per row; at s = 400 1e-3 and 4e-3 s per row
GRID = [_pt(1, 100, 1e-3), _pt(4, 100, 8e-3), _pt(1, 400, 4e-3), _pt(4, 400, 64e-3)]


def test_a_measured_point_is_its_own_time() -> None:
    assert prefill_seconds(GRID, "fused", 4, 4, 4, 128, 400) == pytest.approx(64e-3)
    assert prefill_seconds(GRID, "fused", 1, 4, 4, 128, 100) == pytest.approx(1e-3)


def test_log_log_in_rows_then_in_s_by_hand() -> None:
    # batch 2 (8 rows) at s = 100: halfway in log rows between 4 and 16: r = sqrt(2.5e-4 * 5e-4), t = 8 r
    assert prefill_seconds(GRID, "fused", 2, 4, 4, 128, 100) == pytest.approx(8 * math.sqrt(2.5e-4 * 5e-4))
    # s = 200, halfway in log s between 100 and 400: r = (2.5e-4 * 5e-4 * 1e-3 * 4e-3) ** (1/4) = 8.409e-4
    want = 8 * (2.5e-4 * 5e-4 * 1e-3 * 4e-3) ** 0.25
    assert want == pytest.approx(6.7272e-3, rel=1e-4)
    assert prefill_seconds(GRID, "fused", 2, 4, 4, 128, 200) == pytest.approx(want)


@pytest.mark.parametrize(
    "kind, batch, heads, kv_heads, d, s",
    [
        ("fused", 2, 4, 4, 128, 50),  # shorter than the grid
        ("fused", 2, 4, 4, 128, 800),  # longer
        ("fused", 8, 4, 4, 128, 100),  # 32 rows: more than any point at s = 100
        ("fused", 8, 4, 4, 128, 200),  # ... and at the lengths around 200
        ("fused", 2, 4, 1, 128, 100),  # GQA: the grid is MHA
        ("fused", 2, 8, 1, 128, 100),  # 8 query heads per KV head, none measured
        ("fused", 2, 4, 4, 64, 100),  # another head_dim
        ("score", 2, 4, 4, 128, 100),  # a kernel the grid lacks
    ],
)
def test_outside_the_grid_nothing_is_extrapolated(kind, batch, heads, kv_heads, d, s) -> None:
    assert prefill_seconds(GRID, kind, batch, heads, kv_heads, d, s) is None


def test_gqa_points_serve_only_their_own_group_size() -> None:
    grid = [_pt(1, 100, 1e-3, heads=8, kv_heads=2), _pt(1, 400, 4e-3, heads=8, kv_heads=2)]
    assert prefill_seconds(grid, "fused", 1, 8, 2, 128, 200) == pytest.approx(2e-3)  # sqrt(1e-3 * 4e-3)
    assert prefill_seconds(grid, "fused", 2, 4, 2, 128, 200) is None  # same rows, 2 query heads per KV head
    assert prefill_seconds(grid, "fused", 1, 8, 8, 128, 200) is None  # MHA


def _with_grid(points: list[dict]) -> SystemSpec:
    system = _system_with_tables()
    kernels = system.kernels.model_copy(update={"cpu_attention_grid": [AttentionGridPoint(**p) for p in points]})
    return system.model_copy(update={"kernels": kernels})


def test_the_cost_model_reads_the_grid_inside_it_and_the_fit_outside() -> None:
    """OPT-30B prefill at B = 2, s = 64: the fused kernel's grid time (both attention sublayers on the CPU) and the
    split kernels' where the grid has them; at s = 128, outside this grid, the fit's times as without a grid."""
    heads, d = OPT30.num_heads, OPT30.head_dim
    shape = {"heads": heads, "kv_heads": OPT30.num_kv_heads, "head_dim": d, "runs": 3}
    points = [
        {"kind": "fused", "batch": 1, "s": 64, "seconds": 0.010, **shape},
        {"kind": "fused", "batch": 4, "s": 64, "seconds": 0.080, **shape},
        {"kind": "score", "batch": 2, "s": 64, "seconds": 0.006, **shape},
        {"kind": "context", "batch": 2, "s": 64, "seconds": 0.005, **shape},
    ]
    with_grid, without = _with_grid(points), _system_with_tables()
    i_s, i_c = SUBLAYERS.index(Sublayer.ATTN_SCORE), SUBLAYERS.index(Sublayer.ATTN_CONTEXT)
    t = sublayer_times(with_grid, OPT30, _ctx(2, 64, (64,)), 2)
    assert t.cpu_s[i_s, 0] == pytest.approx(0.006) and t.cpu_s[i_c, 0] == pytest.approx(0.005)
    # fused at batch 2: halfway in log rows between 0.010 / (1 x heads) and 0.080 / (4 x heads) per row
    fused = 2 * heads * math.sqrt(0.010 / heads * 0.080 / (4 * heads))
    assert t.cpu_s[i_s, 0] + t.cpu_s[i_c, 0] + t.cpu_fused_delta_s[0] == pytest.approx(fused)
    # the GPU's attention is not read from the CPU grid
    base = sublayer_times(without, OPT30, _ctx(2, 64, (64,)), 2)
    assert t.gpu_s[i_s, 0] == pytest.approx(base.gpu_s[i_s, 0])
    assert base.cpu_s[i_s, 0] != pytest.approx(0.006)
    # decode (q = 1) and a prefill outside the grid keep the fit
    for q, s in ((1, 64), (128, 128)):
        a, b = (sublayer_times(x, OPT30, _ctx(2, q, (s,)), 2) for x in (with_grid, without))
        assert a.cpu_s[i_s, 0] == pytest.approx(b.cpu_s[i_s, 0]) and a.cpu_s[i_c, 0] == pytest.approx(b.cpu_s[i_c, 0])
