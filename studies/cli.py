"""``lia study NAME|all``: run a sweep and write NAME.csv, NAME.png and NAME.svg.

Registered on the ``lia`` app by lia_model.cli. Nothing slow is imported at module import time: the
studies (numpy, pandas, matplotlib, the optimiser) load inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command(
        "study",
        epilog=(
            "Examples:\n\n  lia study all --out figures --force\n\n  lia study e2e --reduced --out "
            "results/studies\n\n  lia study policy-map --replot --out figures --force\n\n  lia study "
            "cxl --executor dask --scheduler tcp://10.0.0.5:8786\n\n  lia study cost --systems spr-h100,gh200,dgx-a100 "
            "--models llama-3.1-70b --out results/mine\n\n  lia study policy-map --grid "
            "my-grid.yaml --out results/mine"
        ),
    )(study)


def _check_out(out: Path, create: bool) -> None:
    """The output folder must be a writable folder: said before the sweep runs, not after."""
    import os

    from lia_model.errors import LiaInputError

    if out.exists() and not out.is_dir():
        raise LiaInputError("--out", f"'{out}' is a file, not a folder", "e.g. --out results/studies")
    if create:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise LiaInputError(
                "--out", f"cannot create '{out}' ({err.strerror})", "give a writable folder, e.g. --out results/studies"
            ) from None
        if not os.access(out, os.W_OK):
            raise LiaInputError(
                "--out", f"'{out}' is not writable", "give a writable folder, e.g. --out results/studies"
            )


def study(
    name: str = typer.Argument(
        ..., help="A study (microbench, e2e, policy-map, cxl, sensitivity, cost, validation) or 'all'."
    ),
    out: Path = typer.Option(Path("results/studies"), "--out", help="Folder for NAME.csv, NAME.png, NAME.svg."),
    reduced: bool = typer.Option(False, "--reduced", help="The small CI-sized grid instead of the full one."),
    executor: str = typer.Option("local", "--executor", help="local (processes on this machine) or dask."),
    scheduler: Optional[str] = typer.Option(
        None, "--scheduler", help="Address of a running Dask scheduler (with --executor dask)."
    ),
    workers: Optional[int] = typer.Option(
        None, "--workers", help="Parallel workers (default: all cores, or the cluster's threads)."
    ),
    replot: bool = typer.Option(False, "--replot", help="Only redraw the figure from an existing NAME.csv."),
    force: bool = typer.Option(False, "--force", help="Replace NAME.csv and its figures where they exist."),
    systems: Optional[str] = typer.Option(
        None, "--systems", help="Comma-separated systems instead of the grid's (e.g. spr-h100,gh200)."
    ),
    models: Optional[str] = typer.Option(
        None, "--models", help="Comma-separated models instead of the grid's (one for the studies with a single model)."
    ),
    grid_file: Optional[Path] = typer.Option(
        None,
        "--grid",
        help="A YAML mapping of grid fields to replace, "
        "e.g. 'batches: [1, 8, 64]' (docs/studies.md lists each study's "
        "fields).",
    ),
) -> None:
    """Run a named sweep (or all of them) and write its CSV and figure."""
    from rich.console import Console

    from studies.registry import STUDIES
    from studies.runner import get_study, plot_study, run_study

    console = Console(stderr=True)
    from studies.gridspec import custom_grid

    names = list(STUDIES) if name == "all" else [get_study(name).name]
    custom = systems is not None or models is not None or grid_file is not None
    if custom and name == "all":
        from lia_model.errors import LiaInputError

        raise LiaInputError(
            "--systems/--models/--grid",
            "each study has its own grid",
            "give one study by name, e.g. lia study cxl --systems spr-h100",
        )
    if custom and replot:
        from lia_model.errors import LiaInputError

        raise LiaInputError("--replot", "a redraw reads the CSV as it is", "drop --systems/--models/--grid")
    grids = {}
    for study_name in names:
        spec = STUDIES[study_name]
        grids[study_name] = (
            custom_grid(spec, spec.grid(reduced), systems=systems, models=models, grid_file=grid_file)
            if custom
            else None
        )
    _check_out(out, create=not replot)
    if not force:
        # a redraw replaces the figures only; a run the CSV as well
        suffixes = (".png", ".svg") if replot else (".csv", ".png", ".svg")
        taken = [out / f"{n}{x}" for n in names for x in suffixes if (out / f"{n}{x}").exists()]
        if taken:
            from lia_model.errors import LiaInputError

            more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
            raise LiaInputError(
                "--out", f"'{taken[0]}' exists{more}", "pass --force to replace it, or choose another --out"
            )
    for study_name in names:
        spec = STUDIES[study_name]
        if replot:
            reason = spec.unavailable(spec.full_grid) if spec.unavailable is not None else None
            if reason and not (out / f"{spec.name}.csv").exists():
                console.print(f"{spec.name}: nothing to redraw: {reason}")
                continue
            files = plot_study(spec, out / f"{spec.name}.csv")
            console.print(f"{spec.name}: redrew {', '.join(str(f) for f in files)}")
            continue
        result = run_study(
            spec, out, reduced=reduced, executor=executor, scheduler=scheduler, workers=workers, grid=grids[study_name]
        )
        if result.skipped_reason:
            console.print(f"{spec.name}: nothing written: {result.skipped_reason}")
        else:
            console.print(
                f"{spec.name}: {result.points} points, {result.rows} rows -> {', '.join(str(f) for f in result.files)}"
            )
