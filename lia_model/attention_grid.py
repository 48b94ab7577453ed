"""CPU prefill attention time read from the calibrator's measured grid (``KernelTables.cpu_attention_grid``).

The affine fit t = overhead + bytes + FLOPs (``AttentionFit``) is one form over the whole grid; at prefill it missed
its own grid points by up to 27% (OPT-30B B=8 s=512: 24.2 ms fitted against 32.0 ms measured), and those shapes
ran in situ as measured, not as fitted (runtime/validation/, the eighteenth session). So where a shape lies inside
the grid, its time comes from the measured points:

- per query row of a head: r = t / (batch x heads), at each measured sequence length s_j, linear in log r over
  log(batch x heads) between the points of that s_j;
- then linear in log r over log s between the two measured lengths around s.

Inside means s within the grid's lengths and batch x heads within the measured range at each of the (one or two)
lengths used: nothing is extrapolated, and outside the grid the fit serves. Points are matched on kernel kind,
query heads per KV head (1: MHA) and head_dim.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from lia_model.hardware import AttentionGridPoint


def _interp(x: float, xs: Sequence[float], ys: Sequence[float]) -> float:
    """y at x, linear between the (sorted, distinct) xs; x must lie within them (callers pass logs)."""
    for i in range(1, len(xs)):
        if x <= xs[i]:
            w = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
            return ys[i - 1] + w * (ys[i] - ys[i - 1])
    return ys[-1]


def _log_row_time_at(points: list[AttentionGridPoint], log_rows: float) -> Optional[float]:
    """log(seconds per query row of a head) at log(batch x heads) over one length's points; None outside them."""
    by_rows: dict[float, list[float]] = {}
    for p in points:
        rows = p.batch * p.heads
        by_rows.setdefault(math.log(rows), []).append(math.log(p.seconds / rows))
    xs = sorted(by_rows)
    if not xs or log_rows < xs[0] - 1e-12 or log_rows > xs[-1] + 1e-12:
        return None
    ys = [sum(by_rows[x]) / len(by_rows[x]) for x in xs]  # points at the same rows: their mean
    return ys[0] if len(xs) == 1 else _interp(log_rows, xs, ys)


def prefill_seconds(
    grid: Sequence[AttentionGridPoint], kind: str, batch: int, heads: int, kv_heads: int, head_dim: int, s: int
) -> Optional[float]:
    """The CPU prefill attention kernel's time at (batch, heads, s) from the grid (see module docstring), or None
    where the shape lies outside it (or no point matches kind, layout and head_dim)."""
    group = heads / kv_heads
    same = [p for p in grid if p.kind == kind and p.heads / p.kv_heads == group and p.head_dim == head_dim]
    lengths = sorted({p.s for p in same})
    if not lengths or s < lengths[0] or s > lengths[-1]:
        return None
    log_rows = math.log(batch * heads)
    above = next(L for L in lengths if L >= s)
    used = [above] if above == s else [lengths[lengths.index(above) - 1], above]
    logs = [_log_row_time_at([p for p in same if p.s == L], log_rows) for L in used]
    if any(v is None for v in logs):
        return None
    if len(used) == 1:
        log_r = logs[0]
    else:
        log_r = _interp(math.log(s), [math.log(L) for L in used], logs)
    return math.exp(log_r) * batch * heads
