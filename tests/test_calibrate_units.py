"""The calibrator's pure parts: the efficiency-table fit, kernel-report parsing, repeat aggregation, the
shape plan, host parsing and the headline figures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from calibrate.cpu_worker import accepts
from calibrate.fit import (
    Measured,
    attention_bytes,
    fit_errors,
    fit_table,
    linear_bytes,
    peak_rate,
    point_efficiency,
    predict_time_s,
)
from calibrate.headline import figures, headline_markdown
from calibrate.host import HostInfo, NumaNode, parse_cpulist, parse_meminfo_kb, physical_cores
from calibrate.records import aggregate, row
from calibrate.runner import default_name
from calibrate.shapes import HEADLINE_TOKENS, catalog_shapes, headline_shape, matmul_plan
from calibrate.tensors import copies_to_stream
from calibrate.verbose import mkl_isa_tag, parse_verbose
from lia_model.accounting import sublayer_work
from lia_model.hardware import EfficiencyPoint
from lia_model.models import CATALOG, ModelSpec
from lia_model.sublayers import Sublayer

# ---------------------------------------------------------------- the fit

PEAK = 8e12  # FLOP/s
BW = 100e9  # bytes/s
OVERHEAD = 1e-6  # s
TRUE_TABLE = [
    EfficiencyPoint(tokens=1, efficiency=0.02),
    EfficiencyPoint(tokens=16, efficiency=0.3),
    EfficiencyPoint(tokens=256, efficiency=0.8),
    EfficiencyPoint(tokens=2048, efficiency=0.9),
]
SHAPES = [(7168, 28672), (7168, 7168), (4096, 14336), (12288, 49152)]


def _synthetic(table: list[EfficiencyPoint], peak: float = PEAK, scale: dict | None = None) -> list[Measured]:
    """Times from the cost model's formula itself (optionally slowed per shape by ``scale``)."""
    points = []
    for p in table:
        for k, n in SHAPES:
            flops = 2.0 * p.tokens * k * n
            nbytes = linear_bytes(p.tokens, k, n)
            t = max(flops / (peak * p.efficiency), nbytes / BW) + OVERHEAD
            points.append(Measured(p.tokens, flops, nbytes, t * (scale or {}).get((k, n), 1.0)))
    return points


def test_a_table_fitted_from_times_of_known_efficiencies_reproduces_them() -> None:
    points = _synthetic(TRUE_TABLE)
    peak = peak_rate(points)
    assert peak <= PEAK * 0.9  # the best achieved rate, not the (unmeasurable) true peak
    table = fit_table(points, peak, BW, OVERHEAD)
    assert [p.tokens for p in table] == [1, 16, 256, 2048]
    assert all(0 < p.efficiency <= 1 for p in table)
    errors = fit_errors(points, table, peak, BW, OVERHEAD)
    assert max(abs(e) for e in errors) < 1e-3
    # compute-bound entries scale with the peak: e_fit = e_true x PEAK / peak
    assert table[2].efficiency == pytest.approx(0.8 * PEAK / peak, rel=1e-3)


def test_memory_bound_points_are_reproduced_by_the_memory_term() -> None:
    points = [p for p in _synthetic(TRUE_TABLE) if p.tokens == 1]
    assert all(p.bytes / BW > p.flops / (PEAK * 0.02) for p in points)  # all GEMV: memory-bound
    big = _synthetic([EfficiencyPoint(tokens=2048, efficiency=0.9)])
    peak = peak_rate(points + big)
    table = fit_table(points, peak, BW, OVERHEAD)
    for p in points:
        assert predict_time_s(p, table, peak, BW, OVERHEAD) == pytest.approx(p.time_s, rel=1e-5)  # 6-digit table


def test_shapes_that_disagree_at_one_token_count_split_the_difference_in_relative_terms() -> None:
    table = [EfficiencyPoint(tokens=256, efficiency=0.8)]
    points = _synthetic(table, scale={(7168, 7168): 1.5})  # one shape 50% slower
    peak = peak_rate(points)
    fitted = fit_table(points, peak, BW, OVERHEAD)
    errors = fit_errors(points, fitted, peak, BW, OVERHEAD)
    logs = np.log1p(errors)
    assert abs(logs.sum()) < 1e-2  # least squares in log space: balanced
    slow = errors[SHAPES.index((7168, 7168))]
    assert slow < -0.2 and all(e > 0 for i, e in enumerate(errors) if i != SHAPES.index((7168, 7168)))


def test_point_efficiency_edges() -> None:
    p = Measured(1, 2e6, 1e3, 5e-7)
    assert point_efficiency(p, PEAK, OVERHEAD) == 1.0  # faster than the overhead: all overhead
    q = Measured(256, 1e12, 1e6, 1.0)
    assert point_efficiency(q, 2e12, 0.0) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        peak_rate([])


def test_bytes_are_the_cost_models_accounting() -> None:
    mha = ModelSpec(
        name="t",
        num_layers=1,
        hidden_size=56 * 128,
        ffn_size=4 * 56 * 128,
        num_heads=56,
        num_kv_heads=56,
        head_dim=128,
        vocab_size=8,
        max_context=4096,
        linear_bias=False,
    )
    for batch, q, s in ((8, 1, 2048), (1, 512, 512)):
        work = sublayer_work(mha, batch, q, s)
        for sub in (Sublayer.ATTN_SCORE, Sublayer.ATTN_CONTEXT):
            fitted = attention_bytes(batch, 56, q, s, 128, softmax=sub == Sublayer.ATTN_CONTEXT)
            assert fitted == pytest.approx(work[sub].bytes_touched, rel=1e-12)
    opt = CATALOG["opt-30b"]
    for tokens in (1, 256):
        w = sublayer_work(opt, tokens, 1, 1)[Sublayer.FC1]
        assert linear_bytes(tokens, opt.hidden_size, opt.ffn_size) == pytest.approx(w.bytes_touched, rel=1e-3)
        assert 2.0 * tokens * opt.hidden_size * opt.ffn_size == pytest.approx(w.flops)


# ---------------------------------------------------------------- kernel reports

ONEDNN_V1 = """onednn_verbose,v1,info,oneDNN v3.7.1 (commit abc)
onednn_verbose,v1,info,cpu,isa:Intel AVX-512 with float16, Intel DL Boost and bfloat16 support and Intel AMX with bfloat16 and 8-bit integer support
onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx512_core_amx,undef,src:bf16::blocked:ab::f0 wei:bf16::blocked:ba::f0 dst:bf16::blocked:ab::f0,,,256x7168:7168x28672,40.1
onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx512_core_amx,undef,src:bf16::blocked:ab::f0,,,1x7168:7168x28672,5.2
"""
ONEDNN_OLD = "onednn_verbose,primitive,exec,cpu,matmul,brg:avx512_core_bf16,undef,src_bf16::blocked:ab:f0,,,64x1024:1024x1024,0.2\n"
MKL = (
    "MKL_VERBOSE oneMKL 2024.0 Product build 20231011 for Intel(R) 64 architecture Intel(R) Advanced Vector "
    "Extensions 512 (Intel(R) AVX-512) with support for INT8, BF16, FP16 (limited) instructions, and Intel(R) "
    "Advanced Matrix Extensions (Intel(R) AMX) with INT8 and BF16, Lnx 2.10GHz lp64 gnu_thread\n"
    "MKL_VERBOSE SGEMM(T,N,1024,64,1024,0x1,0x2,1024,0x3,1024,0x4,0x5,1024) 3.00ms CNR:OFF Dyn:1 FastMM:1 TID:0\n"
)


def test_parse_onednn_verbose_and_accept_amx() -> None:
    report = parse_verbose(ONEDNN_V1)
    assert report.onednn_kernels == ("brg_matmul:avx512_core_amx",) * 2
    assert report.onednn_version == "3.7.1" and "AMX" in report.onednn_isa_info
    assert report.summary == "brg_matmul:avx512_core_amx"
    assert accepts("amx_bf16", report)[0] and not accepts("avx512_bf16", report)[0]
    old = parse_verbose(ONEDNN_OLD)
    assert old.onednn_kernels == ("brg:avx512_core_bf16",)
    assert accepts("avx512_bf16", old)[0] and not accepts("amx_bf16", old)[0]


def test_parse_mkl_verbose_and_the_fp32_path() -> None:
    report = parse_verbose(MKL)
    assert report.mkl_calls == ("SGEMM",) and mkl_isa_tag(report.mkl_dispatch) == "avx512_amx"
    assert report.summary == "mkl:sgemm:avx512_amx"
    assert accepts("avx512_fp32", report)[0]
    generic = parse_verbose(
        MKL.replace(
            "Intel(R) Advanced Vector Extensions 512 (Intel(R) AVX-512) with support for "
            "INT8, BF16, FP16 (limited) instructions, and Intel(R) Advanced Matrix "
            "Extensions (Intel(R) AMX) with INT8 and BF16",
            "Intel(R) Architecture processors",
        )
    )
    ok, seen = accepts("avx512_fp32", generic)
    assert not ok and "Intel(R) Architecture processors" in seen
    assert not accepts("amx_bf16", parse_verbose(""))[0]


# ---------------------------------------------------------------- records, shapes, host


def test_aggregate_means_the_repeats_and_reports_the_spread() -> None:
    def r(t: float) -> dict:
        return row(
            "cpu_matmul",
            "linear",
            label="x",
            isa="avx512_bf16",
            tokens=16,
            k=4,
            n=4,
            flops=1e9,
            bytes=1e6,
            time_s=t,
            time_s_min=t * 0.9,
            time_s_max=t * 1.1,
            samples=5,
            kernel_observed="brg",
        )

    out = aggregate([[r(1.0)], [r(1.2)]])
    assert len(out) == 1
    a = out[0]
    assert a["time_s"] == pytest.approx(1.1) and a["repeats"] == 2 and a["samples"] == 10
    assert a["spread_rel"] == pytest.approx(0.2 / 1.1)
    assert a["time_s_min"] == pytest.approx(0.9) and a["time_s_max"] == pytest.approx(1.32)
    assert a["tflops"] == pytest.approx(1e9 / 1.1 / 1e12) and a["kernel_observed"] == "brg"
    with pytest.raises(KeyError):
        row("cpu_matmul", "linear", not_a_column=1)


def test_shape_plan_covers_the_catalog_and_puts_the_headline_first() -> None:
    head = headline_shape()
    assert (head.k, head.n) == (7168, 28672)
    shapes = catalog_shapes()
    assert shapes[0].label.startswith("opt-30b.") and len({(s.k, s.n) for s in shapes}) == len(shapes)
    assert (8192, 2 * 28672) in {(s.k, s.n) for s in shapes}  # llama's gated fc1: gate and up together
    plan = matmul_plan(False, flop_cap=1e11)
    assert [(p.shape, p.tokens) for p in plan[:4]] == [(head, t) for t in HEADLINE_TOKENS]
    assert all(p.flops <= 1e11 for p in plan if p.priority > 0)
    assert any(p.tokens == 2048 and p.flops > 1e11 for p in plan)  # the headline is exempt from the cap
    assert max(p.tokens for p in matmul_plan(False)) == 4096


def test_host_parsing(tmp_path: Path) -> None:
    assert parse_cpulist("0-3,8,10-11\n") == (0, 1, 2, 3, 8, 10, 11)
    assert parse_meminfo_kb("Node 0 MemTotal:  1024 kB\n", "MemTotal") == 1024 * 1024
    for cpu, core in ((0, 0), (1, 1), (2, 0), (3, 1)):  # two cores with two SMT siblings each
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "core_id").write_text(str(core))
        (topo / "physical_package_id").write_text("0")
    assert physical_cores((0, 1, 2, 3), tmp_path) == 2
    emr = HostInfo(
        "h",
        "INTEL(R) XEON(R) PLATINUM 8562Y+",
        "GenuineIntel",
        6,
        207,
        frozenset({"amx_bf16", "amx_tile"}),
        (0, 1),
        2,
        (NumaNode(0, (0, 1), 100), NumaNode(1, (), 50)),
        150,
        100,
    )
    assert emr.codename == "emr" and emr.has_amx
    assert [n.node for n in emr.cxl_nodes] == [1] and emr.ddr_capacity_bytes == 100
    assert default_name(emr, "NVIDIA H100 80GB HBM3") == "emr-h100-calibrated"
    assert default_name(emr, "NVIDIA H200") == "emr-h200-calibrated"
    assert default_name(emr, None) == "emr-nogpu-calibrated"
    assert copies_to_stream(100, 0) == 1 and copies_to_stream(100, 100) == 4 and copies_to_stream(1, 10**9) == 64


def test_headline_figures_from_rows() -> None:
    head = headline_shape()
    rows = []
    for isa, tflops in (("amx_bf16", 4.0), ("avx512_bf16", 1.0)):
        for t in HEADLINE_TOKENS:
            flops = 2.0 * t * head.k * head.n
            rows.append(
                dict(
                    row(
                        "cpu_matmul",
                        "linear",
                        label=head.label,
                        isa=isa,
                        tokens=t,
                        k=head.k,
                        n=head.n,
                        backend="torch",
                        flops=flops,
                        time_s=flops / (tflops * 1e12),
                    ),
                    spread_rel=0.02,
                )
            )
    rows.append(
        row(
            "pcie",
            "h2d",
            pinned="pinned",
            size_bytes=64 << 20,
            numa_node=0,
            bytes=float(64 << 20),
            time_s=(64 << 20) / 50e9,
        )
    )
    rows.append(row("contention", "gemm_during_h2d", label="g", flops=1e12, time_s=1.2, solo_time_s=1.0, slowdown=1.2))
    fig = figures(rows)
    assert fig[f"gemm {head.label} 256 tokens amx_bf16 TFLOPS"][0] == pytest.approx(4.0)
    assert fig["pinned h2d 64 MiB GB/s"][0] == pytest.approx(50.0)
    assert fig["pageable h2d 1 GiB GB/s"][0] is None
    assert fig["contention gemm_during_h2d slowdown"][0] == pytest.approx(1.2)
    text = headline_markdown(rows)
    assert "| 256 | 4 (±1.0%) | 1 (±1.0%) | 4.00x | n/m | n/m |" in text
    assert "| 64 MiB | 50 | n/m | n/m | n/m |" in text
    assert math.isclose(float(text.split("gemm during h2d (g) | ")[1].split(" TFLOPS")[0]), 1.0)
