"""``lia calibrate --quick`` end to end on this machine: the written profile validates, says what it could
not measure and why, its fitted tables are the cost model's own arithmetic, and plans predict on it."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from calibrate.fit import Measured, linear_bytes, predict_time_s
from calibrate.host import host_info
from calibrate.records import COLUMNS
from lia_model.baselines import baseline_plans
from lia_model.costmodel import predict
from lia_model.costterms import CostMode, StageContext, sublayer_times
from lia_model.models import get_model
from lia_model.plan import CpuIsa, HostTier
from lia_model.profiles import load_device, load_system
from lia_model.sublayers import SUBLAYERS, Sublayer
from lia_model.workload import make_workload

ROOT = Path(__file__).resolve().parents[1]
NAME = "ci-quick-calibrated"

torch = pytest.importorskip("torch", reason="the calibrator measures with torch")


def _fresh_process() -> None:
    """In the child before it runs: every CPU of the machine (the kernel keeps the cpuset's). An earlier test
    that ran the runtime in this process bound its main thread to one core (OpenMP, runtime/cpu_setup.py), and
    a child inherits that mask: the calibration would then measure one core."""
    os.sched_setaffinity(0, range(os.cpu_count() or 1))


def _run(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    # nor the OpenMP binding that cpu_setup.apply() put into this process's environment
    clean = {k: v for k, v in (env if env is not None else os.environ).items() if not k.startswith("OMP_")}
    return subprocess.run(
        [sys.executable, "-m", "lia_model.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean,
        preexec_fn=_fresh_process,
    )


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("calibration")
    proc = _run("calibrate", "--quick", "--out", str(out), "--name", NAME)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = out / f"{NAME}.yaml"
    return {
        "dir": out,
        "path": path,
        "csv": out / f"{NAME}.csv",
        "stdout": proc.stdout,
        "data": yaml.safe_load(path.read_text()),
        "rows": pd.read_csv(out / f"{NAME}.csv"),
    }


def test_profile_validates_and_is_self_contained(calibrated: dict) -> None:
    spec = load_system(str(calibrated["path"]))
    assert spec.name == NAME
    data = calibrated["data"]
    for device in ("cpu", "gpu", "link", "ddr"):
        assert isinstance(data[device], dict), f"{device} must be inline, not a profile name"
    prov = spec.provenance
    assert prov is not None and prov.host and prov.date.endswith("Z")
    assert prov.command.startswith("lia calibrate --quick") and f"--name {NAME}" in prov.command
    for key in ("torch", "python", "onednn", "cuda"):
        assert prov.versions.get(key), f"versions lack {key}"
    assert prov.versions["torch"] == torch.__version__
    stamp = f"calibrated on {prov.host} on {prov.date}"
    for field in ("cores", "memory_read_gbps", "op_overhead_us"):
        assert spec.cpu.source[field].startswith(stamp), spec.cpu.source[field]
    assert spec.ddr.source["read_gbps"].startswith(stamp)
    assert spec.ddr.capacity_gib == pytest.approx(host_info().ddr_capacity_bytes / 2**30, rel=1e-3)
    # the file survives a move: nothing in it refers to another file by path
    moved = calibrated["dir"] / "moved"
    moved.mkdir(exist_ok=True)
    (moved / "elsewhere.yaml").write_text(calibrated["path"].read_text())
    assert load_system(str(moved / "elsewhere.yaml")).cpu == spec.cpu


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU fallback")
def test_without_cuda_gpu_and_link_come_from_the_datasheet_with_the_reason(calibrated: dict) -> None:
    spec = load_system(str(calibrated["path"]))
    gpu, link = load_device("gpu", "h100-sxm-80gb"), load_device("link", "pcie5-x16")  # the defaults
    assert spec.gpu.hbm_gbps == gpu.hbm_gbps and spec.link.h2d_gbps == link.h2d_gbps
    for src in list(spec.gpu.source.values()) + list(spec.link.source.values()):
        assert src.startswith("not measured (") and "CUDA" in src and "hwprofiles/" in src, src
    assert any(n.startswith("gpu and link not measured:") for n in spec.provenance.notes)
    rows = calibrated["rows"]
    for family in ("gpu_matmul", "pcie", "contention"):
        skipped = rows[rows.family == family]
        assert len(skipped) == 1 and skipped.note.iloc[0].startswith("skipped: ") and "CUDA" in skipped.note.iloc[0]


@pytest.mark.skipif("amx_bf16" in host_info().flags, reason="this CPU has AMX")
def test_amx_is_absent_with_the_kernel_that_ran(calibrated: dict) -> None:
    amx = load_system(str(calibrated["path"])).cpu.isa[CpuIsa.AMX_BF16]
    assert not amx.present
    assert "no amx_bf16 kernel observed" in amx.absent_reason
    assert amx.kernel_observed and "amx" not in amx.kernel_observed  # what oneDNN ran instead


def test_present_isa_is_observed_and_its_tables_are_efficiencies(calibrated: dict) -> None:
    cpu = load_system(str(calibrated["path"])).cpu
    present = {isa: s for isa, s in cpu.isa.items() if s.present}
    assert present
    assert cpu.cores == host_info().physical_cores
    rows = calibrated["rows"]
    for isa, s in present.items():
        assert s.per_core_tflops > 0 and s.kernel_observed
        assert all(0 < p.efficiency <= 1 for p in s.matmul_efficiency + s.attention_efficiency)
        measured = rows[(rows.isa == isa.value) & (rows.family == "cpu_matmul") & rows.time_s.notna()]
        assert len(measured) > 0
        kernels = measured.kernel_observed
        token = {
            "amx_bf16": "amx",
            "avx512_bf16": "avx512_core_bf16",
            # fp32 may run in MKL's sgemm, whose verbose line names no ISA (seen on an AMX host, 2026-12-01)
            "avx512_fp32": "avx512|sgemm",
            "avx2_fp32": "sgemm|avx2",
        }[isa.value]
        assert kernels.str.contains(token, case=False).all(), kernels.tolist()
        # the peak is the best measured rate, so no point beats cores x per_core_tflops
        isa_rows = rows[(rows.isa == isa.value) & rows.family.isin(["cpu_matmul", "cpu_attention"])]
        best = (isa_rows.flops / isa_rows.time_s).max()
        assert best == pytest.approx(cpu.cores * s.per_core_tflops * 1e12, rel=1e-4)
    for s in cpu.isa.values():
        if not s.present:
            assert s.absent_reason


def test_csv_columns_and_families(calibrated: dict) -> None:
    rows = calibrated["rows"]
    assert list(rows.columns) == list(COLUMNS)
    assert {"cpu_matmul", "cpu_attention", "cpu_overhead", "host_memory"} <= set(rows.family)
    measured = rows[rows.time_s.notna()]
    assert (measured.time_s > 0).all() and (measured.samples >= 3).all()
    mem = rows[rows.family == "host_memory"]
    assert {"read", "copy", "chase", "attention_decode"} <= set(mem.op)
    assert (mem[mem.op == "read"].gbps > 0).all()
    headline = rows[(rows.family == "cpu_matmul") & (rows.label == "opt-30b.fc1") & rows.time_s.notna()]
    assert {1, 16, 256} <= set(headline.tokens.astype(int))


def test_fitted_times_are_the_cost_models_own(calibrated: dict) -> None:
    """pred_time_s in the CSV is what costterms.sublayer_times gives for OPT-30B fc1 on the written profile."""
    spec = load_system(str(calibrated["path"]))
    rows = calibrated["rows"]
    isa = next(i for i, s in spec.cpu.isa.items() if s.present)
    model = get_model("opt-30b")
    fc1 = SUBLAYERS.index(Sublayer.FC1)
    lin = rows[
        (rows.family == "cpu_matmul") & (rows.label == "opt-30b.fc1") & (rows.isa == isa.value) & rows.time_s.notna()
    ]
    assert len(lin) >= 3
    for r in lin.itertuples():
        tokens = int(r.tokens)
        ctx = StageContext(
            batch=tokens,
            q=1,
            contexts=(1,),
            minibatches=1,
            weight_tier=HostTier.DDR,
            kv_tier=HostTier.DDR,
            cpu_isa=isa,
            pinned_weights=True,
            overlap=True,
            mode=CostMode.OVERLAP,
        )
        cost_model_s = sublayer_times(spec, model, ctx, tokens).cpu_s[fc1, 0]
        assert cost_model_s == pytest.approx(r.pred_time_s, rel=0.01)  # bias/norm bytes are the only difference
        assert r.pred_time_s / r.time_s - 1 == pytest.approx(r.fit_error_rel, abs=1e-4)
        # and the same from the profile with the fit's formula
        s = spec.cpu.isa[isa]
        peak = spec.cpu.cores * s.per_core_tflops * 1e12
        bw = min(spec.cpu.memory_read_gbps, spec.ddr.read_gbps) * 1e9
        p = Measured(tokens, float(r.flops), linear_bytes(tokens, int(r.k), int(r.n)), float(r.time_s))
        assert predict_time_s(p, list(s.matmul_efficiency), peak, bw, spec.cpu.op_overhead_us * 1e-6) == pytest.approx(
            r.pred_time_s, rel=1e-4
        )


def test_plans_predict_on_the_calibrated_profile(calibrated: dict) -> None:
    system = load_system(str(calibrated["path"]))
    model = get_model("opt-30b")
    workload = make_workload(1, 32, 8)
    result = predict(system, model, workload, baseline_plans(system, model, workload)["ipex"])
    assert math.isfinite(result.latency_s) and result.latency_s > 0
    proc = _run(
        "predict",
        "--system",
        str(calibrated["path"]),
        "--model",
        "opt-30b",
        "--batch",
        "1",
        "--input",
        "32",
        "--output",
        "8",
        "--baseline",
        "ipex",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr


def test_headline_and_compare_scripts(calibrated: dict) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "calibrate.headline", str(calibrated["path"])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    table = out.stdout
    assert "| tokens | AMX bf16 | AVX-512 bf16 |" in table and "| 2048 |" in table
    line16 = next(line for line in table.splitlines() if line.startswith("| 16 |"))
    # a measured CPU figure at 16 tokens (bf16 on AVX-512 machines; AVX2 fp32 where there is no AVX-512)
    present = load_system(str(calibrated["path"])).cpu.isa
    # (column 2: AMX bf16, 3: AVX-512 bf16, 6: AVX2 fp32): each bf16 ISA this machine has, else AVX2
    bf16 = {CpuIsa.AMX_BF16: 2, CpuIsa.AVX512_BF16: 3}
    columns = [c for isa, c in bf16.items() if isa in present and present[isa].present] or [6]
    assert all(line16.split("|")[c].strip()[0].isdigit() for c in columns), line16
    assert table in calibrated["stdout"]  # the command prints the same table last
    cmp = subprocess.run(
        [sys.executable, "-m", "calibrate.compare", str(calibrated["path"]), str(calibrated["csv"])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cmp.returncode == 0, cmp.stderr
    assert "0 differ by more than 5%" in cmp.stdout and "+0.0%" in cmp.stdout


@pytest.mark.parametrize(
    "args, field",
    [
        (["--repeats", "0"], "--repeats"),
        (["--gpu-datasheet", "h100-80"], "--gpu-datasheet"),
        (["--name", "../evil"], "--name"),
    ],
)
def test_bad_input_is_one_error_line(args: list[str], field: str, tmp_path: Path) -> None:
    proc = _run("calibrate", "--quick", "--out", str(tmp_path), *args, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {field}") and "Traceback" not in proc.stderr, proc.stderr
    assert not list(tmp_path.glob("*.yaml"))


@pytest.mark.slow
def test_gpu_host_campaign_script_in_quick_mode(tmp_path: Path) -> None:
    env = dict(
        os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable, QUICK="1", REPEATS="2", NAME="campaign-quick"
    )
    proc = subprocess.run(
        ["bash", str(ROOT / "calibrate" / "gpu_host_campaign.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["calibrate.log", "campaign-quick.csv", "campaign-quick.yaml", "headline.md"]
    assert proc.stdout.rstrip().endswith((tmp_path / "out" / "headline.md").read_text().rstrip())
    spec = load_system(str(tmp_path / "out" / "campaign-quick.yaml"))
    assert "--repeats 2" in spec.provenance.command
    rows = pd.read_csv(tmp_path / "out" / "campaign-quick.csv")
    timed = rows[rows.family.isin(["cpu_matmul", "host_memory"]) & rows.time_s.notna()]
    # A point one run skipped when an ISA's time budget ran out (the quick budget on a machine with more ISAs
    # present, e.g. AMX, as on the 2026-12-01 VM) carries one repeat; each row's count matches its repeat times,
    # and most rows (the headline points always) have both.
    assert set(timed.repeats) <= {1, 2} and (timed.repeats == 2).mean() >= 0.5
    assert all(len(str(t).split(";")) == r for t, r in zip(timed.time_s_repeats, timed.repeats))
    assert timed.spread_rel.notna().all() and (timed[timed.repeats == 1].spread_rel == 0).all()
    assert any(n.startswith("repeats: 2 full runs averaged") for n in spec.provenance.notes)
