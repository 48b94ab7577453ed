"""Run a study end to end: expand its grid, run the points (in parallel), write NAME.csv, .png and .svg."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lia_model.errors import LiaInputError
from studies.executors import run_points
from studies.framework import Study, rows_to_frame
from studies.output import read_csv, save_figure, write_csv


@dataclass(frozen=True)
class StudyResult:
    name: str
    points: int
    rows: int
    files: tuple[Path, ...]
    skipped_reason: Optional[str] = None  # set when the study had nothing to do (e.g. no validation data)


def get_study(name: str) -> Study:
    from studies.registry import STUDIES

    if name not in STUDIES:
        raise LiaInputError("study", f"unknown study '{name}'", f"choose one of {', '.join(STUDIES)} or all")
    return STUDIES[name]


def run_study(
    study: Study,
    out_dir: Path,
    *,
    reduced: bool = False,
    executor: str = "local",
    scheduler: Optional[str] = None,
    workers: Optional[int] = None,
    show_progress: bool = True,
    plot: bool = True,
    grid=None,
) -> StudyResult:
    """``grid``: a grid of the study's own Grid type (studies.gridspec.custom_grid) instead of the built-in
    full or reduced one."""
    grid = grid if grid is not None else study.grid(reduced)
    if study.unavailable is not None:
        reason = study.unavailable(grid)
        if reason:
            return StudyResult(study.name, 0, 0, (), reason)
    points = study.points(grid)
    if show_progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn(f"[bold]{study.name}[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("points"),
            TimeElapsedColumn(),
            transient=False,
        ) as bar:
            task = bar.add_task(study.name, total=len(points))
            rows = run_points(
                study.run,
                points,
                executor=executor,
                scheduler=scheduler,
                workers=workers,
                progress=lambda n: bar.advance(task, n),
            )
    else:
        rows = run_points(study.run, points, executor=executor, scheduler=scheduler, workers=workers)
    frame = rows_to_frame(study, rows)
    stem = out_dir / study.name
    csv_path = stem.with_suffix(".csv")
    write_csv(frame, csv_path)
    files = [csv_path]
    if plot:
        files += plot_study(study, csv_path, grid)
    return StudyResult(study.name, len(points), len(frame), tuple(files))


def plot_study(study: Study, csv_path: Path, grid=None) -> list[Path]:
    """Draw the figure from the CSV alone (so a figure can be redrawn without re-running the sweep)."""
    if not csv_path.exists():
        raise LiaInputError(str(csv_path), "no such CSV", f"run 'lia study {study.name}' first")
    frame = read_csv(csv_path)
    return save_figure(study.plot(frame, grid if grid is not None else study.full_grid), csv_path.with_suffix(""))
