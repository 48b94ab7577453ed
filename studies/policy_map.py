"""policy-map: the optimal prefill and decode policy vectors over batch B and prompt length L.

For every (system, B, L) the optimiser's latency objective for one batch of B sequences of L_in = L prompt
tokens and L_out generated tokens (at a fixed batch the lowest latency is also the highest throughput).
The model is Llama-3.1-70B: OPT's 2048-token context cannot reach L = 4096, and a 70B model leaves room
for large batches in host memory. Cells where no plan fits are "nothing fits"; cells where every layer
is GPU-resident have no streamed layer, so their policy vectors are moot ("all layers GPU-resident").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

from studies import inputs
from studies.framework import Row, Study
from studies.optimum import PLAN_COLUMNS, PREDICTION_COLUMNS, optimum, plan_fields, prediction_fields

NOTHING_FITS = "nothing fits"
ALL_RESIDENT = "all layers GPU-resident"


def log_grid(lo: int, hi: int, per_octave: int) -> tuple[int, ...]:
    """Integers spaced evenly in log2 from lo to hi (both included), per_octave steps per doubling."""
    octaves = np.log2(hi / lo)
    values = np.rint(lo * 2.0 ** (np.arange(int(round(octaves * per_octave)) + 1) / per_octave)).astype(int)
    return tuple(sorted(set(int(v) for v in values)))


@dataclass(frozen=True)
class Grid:
    systems: tuple[str, ...]
    model: str
    batches: tuple[int, ...]
    input_lens: tuple[int, ...]
    output_len: int
    modes: tuple[str, ...] = ("overlap", "additive")  # the cost model the optimiser minimises


FULL = Grid(
    systems=("spr-a100", "spr-h100", "gnr-a100", "gnr-h100"),
    model="llama-3.1-70b",
    batches=log_grid(1, 4096, 2),
    input_lens=log_grid(16, 4096, 2),
    output_len=32,
)
REDUCED = Grid(
    systems=("spr-a100", "gnr-h100"),
    model="llama-3.1-70b",
    batches=(1, 16, 256, 4096),
    input_lens=(16, 256, 4096),
    output_len=32,
    modes=("overlap",),
)


@dataclass(frozen=True)
class Point:
    system: str
    model: str
    batch: int
    input_len: int
    output_len: int
    mode: str = "overlap"


def points(grid: Grid) -> list[Point]:
    return [
        Point(s, grid.model, b, n, grid.output_len, m)
        for m in grid.modes
        for s in grid.systems
        for b in grid.batches
        for n in grid.input_lens
    ]


def cpu_linear_weight_share(model, policy, resident_layers: int) -> float:
    """Share of the model's linear-layer weight bytes (qkv, out_proj, fc1, fc2 of every layer) that the CPU
    computes on: sum over the linear sublayers s with policy[s] = CPU of w_s x (N - N_res), over N x sum_s w_s.
    GPU-resident layers run everything on the GPU."""
    from lia_model.accounting import sublayer_work
    from lia_model.plan import Device
    from lia_model.sublayers import ATTENTION_SUBLAYERS, SUBLAYERS

    work = sublayer_work(model, 1, 1, np.array([1.0]))
    linear = [
        (k, float(work[sub].weight_bytes_read)) for k, sub in enumerate(SUBLAYERS) if sub not in ATTENTION_SUBLAYERS
    ]
    total = sum(w for _, w in linear)
    on_cpu = sum(w for k, w in linear if policy[k] == Device.CPU)
    streamed = (model.num_layers - resident_layers) / model.num_layers
    return on_cpu / total * streamed


def run(point: Point) -> list[Row]:
    system, model = inputs.system(point.system), inputs.model(point.model)
    best = optimum(
        system, model, inputs.workload(point.model, point.batch, point.input_len, point.output_len), mode=point.mode
    )
    plan = best.plan if best else None
    shares = {"cpu_linear_share_prefill": None, "cpu_linear_share_decode": None}
    if plan is not None:
        shares = {
            "cpu_linear_share_prefill": cpu_linear_weight_share(model, plan.prefill_policy, plan.gpu_resident_layers),
            "cpu_linear_share_decode": cpu_linear_weight_share(model, plan.decode_policy, plan.gpu_resident_layers),
        }
    return [
        {
            "mode": point.mode,
            "system": point.system,
            "model": point.model,
            "batch": point.batch,
            "input_len": point.input_len,
            "output_len": point.output_len,
            **prediction_fields(best.prediction if best else None),
            **plan_fields(plan),
            **shares,
            "num_layers": model.num_layers,
        }
    ]


COLUMNS = (
    "mode",
    "system",
    "model",
    "batch",
    "input_len",
    "output_len",
    *PREDICTION_COLUMNS,
    *PLAN_COLUMNS,
    "cpu_linear_share_prefill",
    "cpu_linear_share_decode",
    "num_layers",
)


def cell_category(row: pd.Series, stage_column: str) -> str:
    if not bool(row["feasible"]):
        return NOTHING_FITS
    if int(row["gpu_resident_layers"]) == int(row["num_layers"]):
        return ALL_RESIDENT
    return str(row[stage_column])


def _edges(values: np.ndarray) -> np.ndarray:
    """Cell edges halfway (in log space) between grid values."""
    logs = np.log2(values.astype(float))
    mids = (logs[1:] + logs[:-1]) / 2
    first = logs[0] - (mids[0] - logs[0]) if len(logs) > 1 else logs[0] - 0.5
    last = logs[-1] + (logs[-1] - mids[-1]) if len(logs) > 1 else logs[-1] + 0.5
    return 2.0 ** np.concatenate([[first], mids, [last]])


PAPER_REGIMES = (
    ("(0,0,0,0,0,0)", "all on GPU", "white", "-"),
    ("(1,1,1,1,1,1)", "all on CPU", "#d62728", "-"),
    ("(0,1,1,0,0,0)", "attention on CPU", "black", "--"),
)


def _outline(ax, mask: np.ndarray, xe: np.ndarray, ye: np.ndarray, color: str, style: str) -> None:
    """Draw the cell edges between cells in ``mask`` and cells outside it (and the grid border)."""
    rows, cols = mask.shape
    padded = np.zeros((rows + 2, cols + 2), dtype=bool)
    padded[1:-1, 1:-1] = mask
    segs = []
    for i in range(rows):
        for j in range(cols):
            if not mask[i, j]:
                continue
            # mask[i, j] is padded[i + 1, j + 1]
            if not padded[i + 1, j]:  # left neighbour
                segs.append(((xe[j], ye[i]), (xe[j], ye[i + 1])))
            if not padded[i + 1, j + 2]:  # right
                segs.append(((xe[j + 1], ye[i]), (xe[j + 1], ye[i + 1])))
            if not padded[i, j + 1]:  # below
                segs.append(((xe[j], ye[i]), (xe[j + 1], ye[i])))
            if not padded[i + 2, j + 1]:  # above
                segs.append(((xe[j], ye[i + 1]), (xe[j + 1], ye[i + 1])))
    if segs:
        from matplotlib.collections import LineCollection

        ax.add_collection(LineCollection(segs, colors=color, linewidths=1.1, linestyles=style, zorder=3))


def plot(frame: pd.DataFrame, grid: Optional[Grid] = None):
    import matplotlib
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from studies.plotting import TWO_COLUMN_IN, figure, grid_ticks

    grid = grid or FULL
    frame = frame.copy()
    if "mode" not in frame.columns:
        frame["mode"] = "overlap"
    systems = [s for s in grid.systems if s in set(frame["system"])] or sorted(frame["system"].unique())
    modes = [m for m in ("overlap", "additive", "paper") if m in set(frame["mode"])]
    batches = np.array(sorted(frame["batch"].unique()))
    lens = np.array(sorted(frame["input_len"].unique()))
    xe, ye = _edges(lens), _edges(batches)
    panels = [(mode, stage) for stage in ("decode", "prefill") for mode in modes]
    width = TWO_COLUMN_IN
    cell_w = (width - 0.9) / len(systems)
    fig, axes = figure(len(panels), len(systems), width, cell_w * 0.8 * len(panels) + 1.3, sharex=True, sharey=True)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#f0f0f0")
    mesh = None
    for r, (mode, stage) in enumerate(panels):
        for c, sysname in enumerate(systems):
            ax = axes[r][c]
            part = frame[(frame["system"] == sysname) & (frame["mode"] == mode)]
            share = (
                part.pivot(index="batch", columns="input_len", values=f"cpu_linear_share_{stage}")
                .reindex(index=batches, columns=lens)
                .to_numpy(dtype=float)
            )
            policy = part.pivot(index="batch", columns="input_len", values=f"{stage}_policy").reindex(
                index=batches, columns=lens
            )
            resident = (
                part.pivot(index="batch", columns="input_len", values="gpu_resident_layers")
                .reindex(index=batches, columns=lens)
                .to_numpy(dtype=float)
            )
            layers = (
                part.pivot(index="batch", columns="input_len", values="num_layers")
                .reindex(index=batches, columns=lens)
                .to_numpy(dtype=float)
            )
            mesh = ax.pcolormesh(
                xe,
                ye,
                np.ma.masked_invalid(share),
                cmap=cmap,
                vmin=0,
                vmax=1,
                edgecolors="face",
                linewidth=0,
                rasterized=True,
            )
            streamed = ~(resident == layers)
            for vector, _, color, style in PAPER_REGIMES:
                mask = (policy.to_numpy() == vector) & streamed
                _outline(ax, mask, xe, ye, color, style)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log", base=2)
            ax.set_xlim(xe[0], xe[-1])
            ax.set_ylim(ye[0], ye[-1])
            ax.grid(False)
            grid_ticks(ax, "x", lens, most=4)
            grid_ticks(ax, "y", batches, most=5)
            if r == 0:
                ax.set_title(sysname)
            if c == 0:
                ax.set_ylabel(f"{mode}, {stage}\nbatch B")
            if r == len(panels) - 1:
                ax.set_xlabel("prompt L_in")
    cbar = fig.colorbar(mesh, ax=axes, location="right", fraction=0.03, pad=0.02)
    cbar.set_label("share of linear weight bytes computed on the CPU")
    handles = [
        Line2D(
            [0],
            [0],
            color=color if color != "white" else "#bbbbbb",
            linestyle=style,
            linewidth=1.5,
            label=f"{vector} {words}",
        )
        for vector, words, color, style in PAPER_REGIMES
    ]
    handles.append(Patch(facecolor="#f0f0f0", edgecolor="#999999", label="nothing fits"))
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=2,
        frameon=False,
        title="outlined: the optimum is one of the paper's three policies (1 = CPU, 0 = GPU; order qkv, "
        "attn_score, attn_context, out_proj, fc1, fc2)",
        bbox_to_anchor=(0.45, -0.005),
    )
    fig.suptitle(
        f"Optimal placement of {grid.model}, L_out = {grid.output_len}: overlap model vs the paper's "
        f"serial (additive) model",
        y=0.995,
    )
    fig.subplots_adjust(left=0.11, right=0.86, top=0.94, bottom=0.1 + 0.25 / len(panels), hspace=0.12, wspace=0.08)
    return fig


STUDY = Study(
    name="policy-map",
    title="Optimal prefill and decode policy over batch and prompt length",
    description="The share of linear weight bytes the optimum computes on the CPU, in decode and prefill, over "
    "B = 1..4096 and L_in = 16..4096 for each system, under the overlap model and the paper's serial "
    "(additive) model, with the paper's three policies outlined.",
    full_grid=FULL,
    reduced_grid=REDUCED,
    points=points,
    run=run,
    plot=plot,
    sort_by=("mode", "system", "batch", "input_len"),
    columns=COLUMNS,
)
