"""microbench: GEMM and GEMV throughput of each CPU ISA and each GPU, computed from the profiles.

The numbers come from the profile tables through the cost model's roofline (``lia_model.costterms``):
time = max(FLOPs / (peak x efficiency(rows)), bytes / bandwidth) + op overhead, where a CPU's peak is
cores x per_core_tflops of the ISA and its bandwidth cpu.memory_read_gbps, a GPU's peak bf16_peak_tflops
and its bandwidth hbm_gbps. FLOPs and bytes are the cost model's own (``accounting.sublayer_work``) for
the reference shape: OPT-175B's fc1 (12288 x 49152, the paper's "realistic OPT FC1 shape") over M rows.
GEMV is M = 1. Datasheet profiles are hwprofiles/cpu and hwprofiles/gpu; calibrated profiles are the
systems hwprofiles/systems/*calibrated*.yaml (self-contained, measured on a named host) and are drawn
next to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pandas as pd

from lia_model.accounting import sublayer_work
from lia_model.hardware import CpuSpec, GpuSpec, interpolate_efficiency
from lia_model.models import get_model
from lia_model.profiles import PROFILE_DIR, load_device, load_system
from lia_model.roofline import roofline_s
from lia_model.sublayers import Sublayer
from lia_model.units import BYTES_PER_S_PER_GBPS, FLOPS_PER_TFLOPS, S_PER_US
from studies.framework import Row, Study

REFERENCE_MODEL = "opt-175b"
REFERENCE_SUBLAYER = Sublayer.FC1
GEMM_ROWS = 4096  # the GEMM bar: a large prefill chunk (B x L_in rows)
GEMV_ROWS = 1  # the GEMV bar: one decode token


@dataclass(frozen=True)
class Grid:
    rows: tuple[int, ...]  # M values of the throughput-vs-rows curve


FULL = Grid(rows=tuple(2**k for k in range(0, 14)))  # 1 .. 8192
REDUCED = Grid(rows=(1, 16, 256, 4096))


@dataclass(frozen=True)
class Point:
    profile_kind: str  # "datasheet" or "calibrated"
    profile: str  # device profile name, or the calibrated system file
    device_kind: str  # "cpu" or "gpu"
    engine: str  # the CPU ISA, or "bf16_tensor_core" for a GPU
    rows: tuple[int, ...]


def _calibrated_systems() -> list[str]:
    return sorted(p.name for p in (PROFILE_DIR / "systems").glob("*calibrated*.yaml"))


def points(grid: Grid) -> list[Point]:
    rows = tuple(sorted(set(grid.rows) | {GEMM_ROWS, GEMV_ROWS}))
    out: list[Point] = []
    for name in sorted(p.stem for p in (PROFILE_DIR / "cpu").glob("*.yaml")):
        cpu = load_device("cpu", name)
        out += [Point("datasheet", name, "cpu", isa.value, rows) for isa, s in cpu.isa.items() if s.present]
    for name in sorted(p.stem for p in (PROFILE_DIR / "gpu").glob("*.yaml")):
        out.append(Point("datasheet", name, "gpu", "bf16_tensor_core", rows))
    for file in _calibrated_systems():
        spec = load_system(str(PROFILE_DIR / "systems" / file))
        out += [Point("calibrated", file, "cpu", isa.value, rows) for isa, s in spec.cpu.isa.items() if s.present]
        out.append(Point("calibrated", file, "gpu", "bf16_tensor_core", rows))
    return out


def _device(point: Point) -> tuple[Any, str]:
    """The CPU or GPU spec of a point, and a display name."""
    if point.profile_kind == "calibrated":
        spec = load_system(str(PROFILE_DIR / "systems" / point.profile))
        device = spec.cpu if point.device_kind == "cpu" else spec.gpu
        kind = f"{spec.cpu.cores}-core CPU" if point.device_kind == "cpu" else "GPU"
        return device, f"{spec.name.replace('-calibrated', '')} {kind} (calibrated)"
    device = load_device(point.device_kind, point.profile)
    return device, f"{device.name} (datasheet)"


def roofline(device: CpuSpec | GpuSpec, engine: str, rows: int) -> dict[str, Any]:
    """The cost model's time of the reference linear layer over ``rows`` rows on one engine."""
    work = sublayer_work(get_model(REFERENCE_MODEL), rows, 1, 1)[REFERENCE_SUBLAYER]
    flops = float(work.flops)
    nbytes = float(work.weight_bytes_read + work.act_in_bytes + work.act_out_bytes)
    if isinstance(device, CpuSpec):
        isa = next(spec for key, spec in device.isa.items() if key.value == engine)
        peak = device.cores * isa.per_core_tflops
        eff = interpolate_efficiency(isa.matmul_efficiency, rows)
        bandwidth = device.memory_read_gbps
    else:
        peak, eff, bandwidth = (
            device.bf16_peak_tflops,
            interpolate_efficiency(device.matmul_efficiency, rows),
            device.hbm_gbps,
        )
    compute_s = flops / (peak * eff * FLOPS_PER_TFLOPS)
    memory_s = nbytes / (bandwidth * BYTES_PER_S_PER_GBPS)
    time_s = roofline_s(
        flops, peak * eff * FLOPS_PER_TFLOPS, nbytes, bandwidth * BYTES_PER_S_PER_GBPS, device.op_overhead_us * S_PER_US
    )
    return {
        "flops": flops,
        "bytes": nbytes,
        "time_s": time_s,
        "tflops": flops / time_s / FLOPS_PER_TFLOPS,
        "effective_gbps": nbytes / time_s / BYTES_PER_S_PER_GBPS,
        "peak_tflops": peak,
        "bandwidth_gbps": bandwidth,
        "efficiency": eff,
        "bound": "compute" if compute_s >= memory_s else "memory",
    }


def run(point: Point) -> list[Row]:
    device, label = _device(point)
    out = []
    for rows in point.rows:
        out.append(
            {
                "profile_kind": point.profile_kind,
                "profile": point.profile,
                "device": label,
                "device_kind": point.device_kind,
                "engine": point.engine,
                "rows": rows,
                **roofline(device, point.engine, rows),
            }
        )
    return out


COLUMNS = (
    "profile_kind",
    "profile",
    "device",
    "device_kind",
    "engine",
    "rows",
    "flops",
    "bytes",
    "time_s",
    "tflops",
    "effective_gbps",
    "peak_tflops",
    "bandwidth_gbps",
    "efficiency",
    "bound",
)

ENGINE_NAMES = {
    "amx_bf16": "AMX bf16",
    "avx512_bf16": "AVX-512 bf16",
    "avx512_fp32": "AVX-512 fp32",
    "sve2_bf16": "SVE2 bf16",
    "bf16_tensor_core": "tensor cores bf16",
}
ENGINE_STYLE = {"amx_bf16": "-", "avx512_bf16": "--", "avx512_fp32": ":", "sve2_bf16": "-.", "bf16_tensor_core": "-"}


def _calibrated_on(file: str) -> str:
    path = PROFILE_DIR / "systems" / file
    if not path.exists():
        return file
    spec = load_system(str(path))
    return f"{spec.name} on {spec.provenance.host}, {spec.provenance.date[:10]}" if spec.provenance else spec.name


def _label(row: pd.Series) -> str:
    name = str(row["device"]).replace(" (datasheet)", "")
    return f"{name}: {ENGINE_NAMES.get(row['engine'], row['engine'])}"


def plot(frame: pd.DataFrame, grid: Optional[Grid] = None):
    import matplotlib.pyplot as plt

    from studies.plotting import STYLE

    plt.rcParams.update(STYLE)
    fig = plt.figure(figsize=(15, 11.5))
    grid_spec = fig.add_gridspec(2, 2, height_ratios=[1, 1.1])
    curve = fig.add_subplot(grid_spec[0, :])
    gemm_ax, gemv_ax = fig.add_subplot(grid_spec[1, 0]), fig.add_subplot(grid_spec[1, 1])
    frame = frame.copy()
    frame["label"] = frame.apply(_label, axis=1)
    series = frame.groupby(["device_kind", "device", "engine"], sort=True)
    cmap = __import__("matplotlib").colormaps["tab10"]
    colors = {dev: cmap(k % 10) for k, dev in enumerate(sorted(frame["device"].unique()))}
    for (_, device, engine), part in series:
        part = part.sort_values("rows")
        calibrated = part["profile_kind"].iloc[0] == "calibrated"
        curve.plot(
            part["rows"],
            part["tflops"],
            ENGINE_STYLE.get(engine, "-"),
            color=colors[device],
            marker="o" if calibrated else None,
            markersize=3.5,
            linewidth=1.6,
            label=part["label"].iloc[0],
        )
    curve.set_xscale("log", base=2)
    curve.set_yscale("log")
    curve.set_xlabel("rows M of the product (batch x new tokens)")
    curve.set_ylabel("achieved throughput (TFLOPS)")
    curve.set_title("linear layer 12288 x 49152 (OPT-175B fc1) over M rows: bf16, except AVX-512 fp32")
    curve.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7.5, ncol=1, frameon=False)

    def bars(ax, rows: int, column: str, xlabel: str, title: str, fmt: str) -> None:
        part = frame[frame["rows"] == rows].sort_values(["device_kind", column], ascending=[True, True])
        y = np.arange(len(part))
        hatches = ["//" if k == "calibrated" else "" for k in part["profile_kind"]]
        ax.barh(y, part[column], color=[colors[d] for d in part["device"]], hatch=hatches, edgecolor="white")
        ax.set_yticks(y, part["label"], fontsize=7.5)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.grid(axis="y", visible=False)
        for yy, value in zip(y, part[column]):
            ax.text(value * 1.08, yy, fmt.format(value), va="center", fontsize=6.5)
        ax.set_xlim(part[column].min() / 2, part[column].max() * 4)

    bars(gemm_ax, GEMM_ROWS, "tflops", "throughput (TFLOPS, log)", f"GEMM: {GEMM_ROWS} rows", "{:.3g}")
    bars(
        gemv_ax,
        GEMV_ROWS,
        "effective_gbps",
        "bytes moved per second (GB/s, log)",
        "GEMV: 1 row (decode, B = 1)",
        "{:,.0f}",
    )
    if (frame["profile_kind"] == "calibrated").any():
        dates = ", ".join(
            sorted(_calibrated_on(p) for p in frame.loc[frame["profile_kind"] == "calibrated", "profile"].unique())
        )
        note = f"hatched bars and curves with markers: calibrated profiles ({dates}); the rest: datasheet profiles"
    else:
        note = "no calibrated profile (hwprofiles/systems/*calibrated*.yaml) yet: datasheet profiles only"
    fig.suptitle("Microbenchmarks from the hardware profiles, through the cost model's roofline\n" + note, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


STUDY = Study(
    name="microbench",
    title="GEMM and GEMV throughput of AMX, AVX-512 and the GPUs",
    description="GEMM and GEMV throughput that the cost model assigns to each CPU ISA and GPU profile "
    "(datasheet and calibrated), on log axes.",
    full_grid=FULL,
    reduced_grid=REDUCED,
    points=points,
    run=run,
    plot=plot,
    sort_by=("device_kind", "profile_kind", "profile", "engine", "rows"),
    columns=COLUMNS,
)
