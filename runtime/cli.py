"""``lia validate``: registered on the ``lia`` app by lia_model.cli. Nothing slow is imported at import time."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from lia_model.errors import LiaInputError
from lia_model.query import DEFAULT_SYSTEM, describe

SET_HELP = describe("overrides")


def register(app: typer.Typer) -> None:
    from runtime.run_cli import run_command

    app.command("validate")(validate)
    app.command("run")(run_command)


def validate(
    points: Optional[List[str]] = typer.Option(None, "--points", help="Points .yaml file (repeatable)."),
    system: str = typer.Option(
        DEFAULT_SYSTEM,
        "--system",
        help="System profile name or path to a system .yaml (use the calibrated profile of the host you run on).",
    ),
    out: Optional[str] = typer.Option(
        None, "--out", help="Folder for results.csv, pred_vs_meas.png/.svg, summary.md and summary.json."
    ),
    gpu_memory_gib: Optional[float] = typer.Option(
        None, "--gpu-memory-gib", help="Cap GPU memory (GiB) for points that do not set their own cap."
    ),
    repeats: int = typer.Option(
        5,
        "--repeats",
        help="Timed unprofiled repeats per point (after one short warm-up); headline times are their medians.",
    ),
    profiled_runs: int = typer.Option(
        3, "--profiled-runs", help="Runs with per-sublayer events; per-sublayer times are their medians."
    ),
    trace: Optional[str] = typer.Option(
        None,
        "--trace",
        help="Folder for one Chrome-trace JSON per point (CPU sublayers, GPU kernels and copies per layer).",
    ),
    max_point_s: Optional[float] = typer.Option(
        None, "--max-point-s", help="Skip points whose predicted time with warm-up and repeats exceeds this."
    ),
    time_budget_s: Optional[float] = typer.Option(
        None, "--time-budget-s", help="Start no point that would end past this many seconds of running."
    ),
    predict_only: bool = typer.Option(
        False,
        "--predict-only",
        help="Resolve plans, predict and estimate run times (assuming a GPU is present); run nothing.",
    ),
    from_csv: Optional[List[str]] = typer.Option(
        None, "--from-csv", help="Merge existing results CSVs and rewrite the plot and summary (runs nothing)."
    ),
    overrides: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights and prompts."),
    host_weights_gib: Optional[float] = typer.Option(
        None,
        "--host-weights-gib",
        help="Cap the host weight arena; layers beyond it reuse earlier layers' host weights.",
    ),
    fake_gpu: bool = typer.Option(
        False,
        "--fake-gpu",
        hidden=True,
        help="Test mode: emulate the GPU on the CPU (data flow only; timings meaningless).",
    ),
    title: str = typer.Option("", "--title", help="Plot title."),
    repredict_with: Optional[str] = typer.Option(
        None,
        "--repredict-with",
        help="With --from-csv: recompute the "
        "predicted columns of the measured rows under this system profile "
        "(measurements untouched).",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite results already in the --out folder."),
) -> None:
    """Run validation points for real and report predicted vs measured TTFT, TPOT and latency."""
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)

    def echo(msg: str) -> None:
        typer.echo(msg)
        sys.stdout.flush()

    if from_csv:
        _merge(from_csv, out, console, title, repredict_with, force)
        return
    if not points:
        raise LiaInputError("--points", "no points file given", "e.g. --points runtime/campaign/opt30b-48L.yaml")
    from lia_model.cli.common import finite_positive

    finite_positive("--gpu-memory-gib", gpu_memory_gib, "40", 1e5)
    finite_positive("--max-point-s", max_point_s, "60", 1e6)
    finite_positive("--time-budget-s", time_budget_s, "540", 1e7)
    finite_positive("--host-weights-gib", host_weights_gib, "16", 1e5)
    if out is None and not predict_only:
        raise LiaInputError("--out", "no output folder given", "e.g. --out results/validation")
    if out is not None and not predict_only:
        _check_out_folder(Path(out), force)

    from lia_model.profiles import load_system
    from runtime.kernels import gqa_decode_variant
    from runtime.points import load_points_file, runtime_isa
    from runtime.validate import Options, plan_table_rows, resolve_points, system_running

    spec = load_system(system, overrides or [])
    spec = system_running(spec, gqa_decode_variant())  # predict the CPU GQA decode kernel this run will run
    groups = [g for path in points for g in load_points_file(path)]
    ids = [g.id for g in groups]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise LiaInputError("--points", f"group ids repeat across files: {', '.join(dupes)}", "rename them")
    if profiled_runs < 1:
        raise LiaInputError("--profiled-runs", f"must be at least 1, got {profiled_runs}", "e.g. --profiled-runs 3")
    opts = Options(
        repeats=repeats,
        profiled_runs=profiled_runs,
        trace_dir=trace,
        gpu_memory_gib=gpu_memory_gib,
        max_point_s=max_point_s,
        time_budget_s=time_budget_s,
        seed=seed,
        host_weights_gib=host_weights_gib,
    )
    if repeats < 1:
        raise LiaInputError("--repeats", f"must be at least 1, got {repeats}", "e.g. --repeats 2")
    isa = runtime_isa()
    has_gpu = True if predict_only else (fake_gpu or _cuda_available())
    resolved = resolve_points(groups, spec, opts, isa, has_gpu=has_gpu)
    echo(
        f"system {spec.name}; CPU ISA for CPU sublayers: {isa.run.value if isa.run else 'unknown'} ({isa.why}); "
        f"{len(resolved)} points, {sum(1 for p in resolved if not p.skip_reason and not p.duplicate_of)} to run"
    )
    if predict_only:
        _print_plan(console, resolved, plan_table_rows(resolved))
        return

    import pandas as pd

    from runtime.report import print_summary, write_outputs
    from runtime.validate import run_points

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)

    def progress(rows) -> None:
        pd.DataFrame(rows).to_csv(out_dir / "results.csv", index=False)

    rows = run_points(resolved, spec, opts, echo, fake_gpu=fake_gpu, on_progress=progress)
    summary = write_outputs(pd.DataFrame(rows), out_dir, title)
    print_summary(console, summary)
    echo(f"wrote {Path(out) / 'results.csv'}, pred_vs_meas.png/.svg, summary.md, summary.json")
    if summary["points_ran"] == 0:
        reasons = "; ".join(f"{s['point_id']}: {s['reason']}" for s in summary["skipped"][:3])
        raise LiaInputError("points", f"no point ran ({reasons})", "see the skipped list above")


def _check_out_folder(out_dir: Path, force: bool) -> None:
    """Refuse to overwrite a folder's validation outputs (results.csv, the plot, the summaries) without --force."""
    from runtime.report import OUTPUT_NAMES

    if out_dir.exists() and not out_dir.is_dir():
        raise LiaInputError("--out", f"'{out_dir}' is a file", "give a folder")
    present = [name for name in OUTPUT_NAMES if (out_dir / name).exists()]
    if present and not force:
        raise LiaInputError(
            "--out",
            f"'{out_dir}' already holds {', '.join(present)}",
            "choose another --out folder, or add --force to overwrite them",
        )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _print_plan(console, resolved, rows) -> None:
    from rich.table import Table

    t = Table(title="validation plan (predicted; est = warm-up + repeats, before any measured/predicted slowdown)")
    for col in ("point", "plan: prefill decode R n", "TTFT s", "TPOT s", "latency s", "est s", "status"):
        t.add_column(col)
    for r in rows:
        t.add_row(*r)
    console.print(t)
    run = [p for p in resolved if not p.skip_reason and not p.duplicate_of]
    total = sum(p.est_s for p in run)
    console.print(
        f"{len(run)} points to run, {sum(1 for p in resolved if p.duplicate_of)} reuse an identical plan, "
        f"{sum(1 for p in resolved if p.skip_reason)} skipped; predicted run time {total:.0f} s "
        f"(plus weight creation and per-point setup)"
    )


# Columns a results CSV needs for the summary, the regret table and the plot.
MERGE_COLUMNS = (
    "point_id",
    "group_id",
    "status",
    "plan_spec",
    "plan_label",
    "model",
    "num_layers",
    "batch",
    "input_len",
    "output_len",
)


def _model_layers(name: object) -> int:
    """The catalogued model's layer count (a truncated run has at most that many); 2^31 for an unknown name."""
    from lia_model.inputs import resolve_model

    try:
        return resolve_model(str(name)).num_layers
    except LiaInputError:
        return 2**31


def _read_results_csv(path: str):
    """One results CSV, checked: text, a header, the needed columns, and for every point that ran finite,
    positive predicted and measured times."""
    import io
    import math

    import pandas as pd

    from lia_model.inputs import read_text
    from runtime.report import METRICS, upgrade_columns

    fix = "give a results.csv written by lia validate"
    text = read_text(Path(path), "--from-csv", fix)
    if not text.strip():
        raise LiaInputError(path, "the file is empty", fix)
    try:
        df = upgrade_columns(pd.read_csv(io.StringIO(text)))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise LiaInputError(path, f"not a readable CSV ({' '.join(str(err).split())[:120]})", fix) from None
    needed = MERGE_COLUMNS + tuple(c for _, p, m, _ in METRICS for c in (p, m))
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise LiaInputError(path, f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}", fix)
    ran = df[df["status"] == "ran"]
    for _, pcol, mcol, label in METRICS:
        for col in (pcol, mcol):
            values = pd.to_numeric(ran[col], errors="coerce")
            bad = [(pid, v) for pid, v in zip(ran["point_id"], values) if not (math.isfinite(v) and v > 0)]
            if bad:
                pid, v = bad[0]
                more = f"; {len(bad) - 1} more such points" if len(bad) > 1 else ""
                raise LiaInputError(
                    f"{path}: {col}",
                    f"point '{pid}' ran but its {label} is {v!r} (a time must be a finite number above 0){more}",
                    "fix or drop those rows",
                )
    # the workload of every point that ran: whole numbers of at least 1 (a model's layers: at most its own)
    layers_of = {model: _model_layers(model) for model in ran["model"].unique()}
    for col in ("batch", "input_len", "output_len", "num_layers"):
        if col not in ran.columns:
            continue
        raw = ran[col].astype(str).str.strip()
        values = pd.to_numeric(raw.where(~raw.str.lower().isin(("true", "false"))), errors="coerce")
        for pid, model, raw_v, v in zip(ran["point_id"], ran["model"], ran[col], values):
            top = layers_of[model] if col == "num_layers" else 2**31
            if not (math.isfinite(v) and v == int(v) and 1 <= v <= top):
                rule = f"from 1 to {top}" if top < 2**31 else "of at least 1"
                raise LiaInputError(
                    f"{path}: {col}",
                    f"point '{pid}' ran with {col} '{raw_v}' (a whole number {rule})",
                    "fix or drop that row",
                )
    if "gpu_memory_gib" in ran.columns:
        caps = pd.to_numeric(ran["gpu_memory_gib"], errors="coerce")
        for pid, raw, v in zip(ran["point_id"], ran["gpu_memory_gib"], caps):
            if not pd.isna(raw) and not (math.isfinite(v) and v > 0):
                raise LiaInputError(
                    f"{path}: gpu_memory_gib",
                    f"point '{pid}' ran with a GPU cap of '{raw}' GiB (a number above 0, or empty for no cap)",
                    "fix or drop that row",
                )
    return df


def _merge(
    paths: List[str],
    out: Optional[str],
    console,
    title: str,
    repredict_with: Optional[str] = None,
    force: bool = False,
) -> None:
    import pandas as pd

    from runtime.report import one_per_point, print_summary, write_outputs

    if out is None:
        raise LiaInputError("--out", "no output folder given", "e.g. --out runtime/validation")
    _check_out_folder(Path(out), force)
    frames = [_read_results_csv(path) for path in paths]
    df = pd.concat(frames, ignore_index=True)
    # The same point_id in several files: the last row of the best measurement quality wins
    # (runtime.report.one_per_point: steady > spread-flagged > drift-flagged or not run). Two measurements of
    # one point are not averaged; say which were replaced.
    repeated = df.loc[df.duplicated(subset="point_id", keep="last"), "point_id"]
    if len(repeated):
        console.print(
            f"{len(repeated)} point(s) appear in more than one file; the last row of the best quality (steady, "
            "then spread-flagged, then drift-flagged) is kept: " + ", ".join(sorted(set(repeated)))
        )
    measured = df  # every measurement: the regret compares the plans of one command (runtime.report.regret_table)
    df = one_per_point(df)
    if not (df["status"] == "ran").any():
        raise LiaInputError(
            "--from-csv",
            f"no point in {', '.join(paths)} ran (status 'ran'): nothing was measured",
            "give results of a campaign that ran points",
        )
    if repredict_with:
        from lia_model.profiles import load_system
        from runtime.validate import repredict

        df = repredict(df, load_system(repredict_with))
    summary = write_outputs(df, Path(out), title, measured)
    print_summary(console, summary)
