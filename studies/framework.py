"""What a study is: a grid of points (data), a pure run function per point, and a plot function.

A study's grid is a frozen dataclass of sweep axes with a full size and a reduced CI size. ``points``
expands a grid into the list of points (frozen dataclasses, so they pickle to worker processes and to
Dask). ``run`` takes one point and returns its rows (plain dicts: most points give one row; a point
that compares plans gives one row per plan). ``plot`` reads the CSV the rows became and draws the
figure. Nothing here does I/O beyond the CSV/figure writers in ``output``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import pandas as pd

Row = dict[str, Any]


@dataclass(frozen=True)
class Study:
    """One named sweep."""

    name: str
    title: str
    description: str  # one sentence: what the figure shows
    full_grid: Any  # a frozen dataclass of sweep axes
    reduced_grid: Any  # the same type, CI-sized
    points: Callable[[Any], list[Any]]  # grid -> points
    run: Callable[[Any], list[Row]]  # point -> rows (pure)
    plot: Callable[[pd.DataFrame, Any], Any]  # (csv frame, grid) -> matplotlib Figure
    sort_by: tuple[str, ...]  # key columns: rows are sorted by these
    columns: tuple[str, ...]  # column order of the CSV
    # Optional: a study whose input may be absent (validation) says why it has nothing to do.
    unavailable: Optional[Callable[[Any], Optional[str]]] = None

    def grid(self, reduced: bool) -> Any:
        return self.reduced_grid if reduced else self.full_grid


def rows_to_frame(study: Study, rows: Sequence[Row]) -> pd.DataFrame:
    """Rows -> a frame with the study's column order, sorted by its key columns (deterministic order)."""
    frame = pd.DataFrame(list(rows))
    missing = [c for c in study.columns if c not in frame.columns]
    extra = [c for c in frame.columns if c not in study.columns]
    if missing or extra:
        # A programming error in a study module, not a user input problem.
        raise RuntimeError(f"study {study.name}: rows miss columns {missing} / carry unknown columns {extra}")
    frame = frame[list(study.columns)]
    return frame.sort_values(list(study.sort_by), kind="mergesort", na_position="first").reset_index(drop=True)
