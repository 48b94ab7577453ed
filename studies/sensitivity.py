"""sensitivity: how the optimum's latency and throughput move when one hardware parameter changes.

Each parameter is scaled by factors from x0.5 to x1.5 through the what-if override machinery
(``lia_model.profiles.load_system(name, overrides)``, the path of the CLI's ``--set``), and the optimiser is rerun:
latency objective at B = 1, and throughput objective (it picks the batch). The tornado chart shows x0.5 and
x1.5; the factors in between locate where the optimal policy vectors flip. Every parameter is one where
more is better, so the optimum's throughput must not fall and its latency must not rise as the factor grows
(the tests check this on every row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pandas as pd

from lia_model.hardware import SystemSpec
from studies import inputs
from studies.framework import Row, Study
from studies.optimum import PLAN_COLUMNS, PREDICTION_COLUMNS, optimum, plan_fields, prediction_fields

# parameter -> (what it means, the override paths it scales); "cpu.isa.*" expands to every present ISA.
PARAMETERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pcie_bandwidth": ("PCIe bandwidth (H2D and D2H)", ("link.h2d_gbps", "link.d2h_gbps")),
    "cpu_matrix_throughput": ("CPU matrix throughput (every ISA)", ("cpu.isa.*.per_core_tflops",)),
    "cpu_cores": ("CPU core count", ("cpu.cores",)),
    "ddr_bandwidth": ("DDR bandwidth", ("ddr.read_gbps", "cpu.memory_read_gbps")),
    "gpu_memory": ("GPU memory capacity", ("gpu.memory_gib",)),
    "gpu_throughput": ("GPU bf16 throughput", ("gpu.bf16_peak_tflops",)),
    "cxl_bandwidth": ("CXL bandwidth", ("cxl.read_gbps",)),
}
INTEGER_FIELDS = {"cpu.cores"}
OBJECTIVES = ("latency", "throughput")


@dataclass(frozen=True)
class Grid:
    systems: tuple[str, ...]
    model: str
    input_len: int
    output_len: int
    factors: tuple[float, ...]
    parameters: tuple[str, ...] = tuple(PARAMETERS)
    objectives: tuple[str, ...] = OBJECTIVES


FULL = Grid(
    systems=("spr-h100-cxl", "gnr-a100-cxl"),
    model="opt-175b",
    input_len=256,
    output_len=32,
    factors=(0.5, 0.625, 0.75, 0.875, 1.0, 1.125, 1.25, 1.375, 1.5),
)
# Reduced (tests): four of the seven parameters (each throughput point is an exact batch search, seconds).
REDUCED = Grid(
    systems=("spr-a100-cxl",),
    model="opt-66b",
    input_len=256,
    output_len=32,
    factors=(0.5, 1.0, 1.5),
    parameters=("pcie_bandwidth", "cpu_matrix_throughput", "cpu_cores", "gpu_memory"),
)


@dataclass(frozen=True)
class Point:
    system: str
    model: str
    input_len: int
    output_len: int
    parameter: str
    factor: float
    objective: str


def points(grid: Grid) -> list[Point]:
    out = []
    for s in grid.systems:
        has_cxl = inputs.system(s).has_cxl
        for p in grid.parameters:
            if p == "cxl_bandwidth" and not has_cxl:
                continue
            out += [
                Point(s, grid.model, grid.input_len, grid.output_len, p, f, o)
                for f in grid.factors
                for o in grid.objectives
            ]
    return out


def _field(spec: SystemSpec, path: str) -> float:
    node = spec
    for part in path.split("."):
        node = (
            node[next(k for k in node if getattr(k, "value", k) == part)]
            if isinstance(node, dict)
            else getattr(node, part)
        )
    return node


def overrides(spec: SystemSpec, parameter: str, factor: float) -> tuple[str, ...]:
    """The --set strings that scale ``parameter`` of ``spec`` by ``factor``."""
    paths: list[str] = []
    for path in PARAMETERS[parameter][1]:
        if "*" in path:
            head, tail = path.split(".*.")
            paths += [f"{head}.{isa.value}.{tail}" for isa, s in spec.cpu.isa.items() if s.present]
        else:
            paths.append(path)
    out = []
    for path in paths:
        value = _field(spec, path) * factor
        text = str(max(1, int(round(value)))) if path in INTEGER_FIELDS else f"{value:.10g}"
        out.append(f"{path}={text}")
    return tuple(out)


def run(point: Point) -> list[Row]:
    base = inputs.system(point.system)
    sets = overrides(base, point.parameter, point.factor) if point.factor != 1.0 else ()
    system, model = inputs.system(point.system, sets), inputs.model(point.model)
    best = optimum(system, model, inputs.workload(point.model, 1, point.input_len, point.output_len), point.objective)
    fields = prediction_fields(best.prediction if best else None)
    metric = "latency_s" if point.objective == "latency" else "throughput_tokens_per_s"
    return [
        {
            "system": point.system,
            "model": point.model,
            "input_len": point.input_len,
            "output_len": point.output_len,
            "objective": point.objective,
            "parameter": point.parameter,
            "factor": point.factor,
            "overrides": ";".join(sets),
            "batch": best.workload.batch if best else None,
            **fields,
            "value": fields[metric],
            **plan_fields(best.plan if best else None),
        }
    ]


COLUMNS = (
    "system",
    "model",
    "input_len",
    "output_len",
    "objective",
    "parameter",
    "factor",
    "overrides",
    "batch",
    *PREDICTION_COLUMNS,
    "value",
    *PLAN_COLUMNS,
)


def policy_flips(frame: pd.DataFrame) -> pd.DataFrame:
    """Where the optimal (prefill, decode) policy pair changes between neighbouring factors."""
    out = []
    for (system, objective, parameter), part in frame.groupby(["system", "objective", "parameter"], sort=True):
        part = part.sort_values("factor")
        prev = None
        for _, row in part.iterrows():
            pair = (row["prefill_policy"], row["decode_policy"])
            if prev is not None and pair != prev[1]:
                out.append(
                    {
                        "system": system,
                        "objective": objective,
                        "parameter": parameter,
                        "from_factor": prev[0],
                        "to_factor": row["factor"],
                        "from_policy": f"{prev[1][0]} / {prev[1][1]}",
                        "to_policy": f"{pair[0]} / {pair[1]}",
                    }
                )
            prev = (row["factor"], pair)
    return pd.DataFrame(
        out, columns=["system", "objective", "parameter", "from_factor", "to_factor", "from_policy", "to_policy"]
    )


def _percent_change(value, base: float) -> float:
    """How far ``value`` is from ``base``, in percent (NaN where the point has no value)."""
    return (float(value) / base - 1.0) * 100.0 if value is not None and not pd.isna(value) else float("nan")


def plot(frame: pd.DataFrame, grid: Optional[Grid] = None):
    from studies.plotting import figure

    grid = grid or FULL
    systems = [s for s in grid.systems if s in set(frame["system"])] or sorted(frame["system"].unique())
    flips = policy_flips(frame)
    fig, axes = figure(len(systems), 2, 17.5, 3.6 * len(systems) + 1.3)
    lo_f, hi_f = frame["factor"].min(), frame["factor"].max()
    for r, system in enumerate(systems):
        for c, objective in enumerate(OBJECTIVES):
            ax = axes[r][c]
            part = frame[(frame["system"] == system) & (frame["objective"] == objective)]
            base = part[part["factor"] == 1.0]
            recs = []
            for parameter in part["parameter"].unique():
                p = part[part["parameter"] == parameter].set_index("factor")["value"]
                b = float(base[base["parameter"] == parameter]["value"].iloc[0])
                lo, hi = (p.get(lo_f), p.get(hi_f))
                recs.append((parameter, *(_percent_change(v, b) for v in (lo, hi))))
            recs.sort(key=lambda t: max(abs(t[1]) if t[1] == t[1] else 0, abs(t[2]) if t[2] == t[2] else 0))
            y = range(len(recs))
            ax.barh(list(y), [t[1] for t in recs], color="#d6604d", height=0.6, label=f"parameter x{lo_f:g}")
            ax.barh(list(y), [t[2] for t in recs], color="#4393c3", height=0.6, label=f"parameter x{hi_f:g}")
            ax.axvline(0, color="black", linewidth=0.8)
            ax.set_yticks(list(y), [PARAMETERS[t[0]][0] for t in recs], fontsize=8)
            ax.grid(axis="y", visible=False)
            span = max([abs(v) for t in recs for v in t[1:] if v == v] + [1.0])
            ax.set_xlim(-span * 1.3, span * 1.3)
            for k, (parameter, lo_v, hi_v) in enumerate(recs):
                for v in (lo_v, hi_v):
                    if v == v and abs(v) >= 0.05:
                        ax.text(
                            v + (span * 0.02 if v > 0 else -span * 0.02),
                            k,
                            f"{v:+.0f}%" if abs(v) >= 1 else f"{v:+.1f}%",
                            va="center",
                            ha="left" if v > 0 else "right",
                            fontsize=7,
                        )
                f = flips[
                    (flips["system"] == system) & (flips["objective"] == objective) & (flips["parameter"] == parameter)
                ]
                if all(not (v == v) or abs(v) < 0.05 for v in (lo_v, hi_v)):
                    ax.text(span * 0.03, k, "no effect", va="center", ha="left", fontsize=7, color="#666666")
                marks = ", ".join(f"{a:g}-{b:g}" for a, b in zip(f["from_factor"], f["to_factor"]))
                ax.annotate(
                    f"flips: x{marks}" if marks else "no flip",
                    xy=(1.03, k),
                    xycoords=("axes fraction", "data"),
                    va="center",
                    ha="left",
                    fontsize=7,
                    color="#333333",
                )
            b0 = float(base["value"].iloc[0]) if len(base) else float("nan")
            bb = base["batch"].iloc[0] if len(base) else None
            if objective == "latency":
                ax.set_xlabel("change of the optimum's latency at B = 1 (%; negative = faster)")
                ax.set_title(f"{system}: latency, B = 1 (base {b0:.3g} s)", fontsize=9.5)
            else:
                ax.set_xlabel("change of the optimum's throughput (%; positive = more tokens/s)")
                ax.set_title(f"{system}: best throughput (base {b0:.3g} tokens/s at B = {_int(bb)})", fontsize=9.5)
            if r == 0 and c == 0:
                ax.legend(loc="lower left", fontsize=7.5)
    steps = ", ".join(f"x{f:g}" for f in sorted(frame["factor"].unique()))
    fig.suptitle(
        f"Sensitivity of the optimum ({grid.model.upper()}, L_in = {grid.input_len}, L_out = "
        f"{grid.output_len}) to each hardware parameter scaled x{lo_f:g} and x{hi_f:g}\n"
        f"right of each panel: between which factors the optimal (prefill, decode) policy pair changes "
        f"(e.g. x0.5-0.625), on the grid {steps}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95), w_pad=2.0)
    return fig


def _int(value) -> str:
    return "?" if value is None or pd.isna(value) else f"{int(value)}"


STUDY = Study(
    name="sensitivity",
    title="Tornado: the optimum's latency and throughput vs each hardware parameter +-50%",
    description="How much the optimum's latency (B = 1) and best throughput change when PCIe, CPU matrix "
    "throughput, cores, DDR, GPU memory, GPU throughput or CXL bandwidth change by +-50%, and where "
    "the optimal policy flips.",
    full_grid=FULL,
    reduced_grid=REDUCED,
    points=points,
    run=run,
    plot=plot,
    sort_by=("system", "objective", "parameter", "factor"),
    columns=COLUMNS,
)
