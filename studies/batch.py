"""The largest batch that fits, by bisection.

Every memory term grows with the batch (KV cache, workspace) and none shrinks, so "some plan of this
kind fits at batch B" is monotone in B and bisection finds the largest such B in about log2(cap) probes.
"""

from __future__ import annotations

from typing import Callable, Optional


def largest_feasible_batch(feasible: Callable[[int], bool], cap: int) -> Optional[int]:
    """Largest B in [1, cap] with feasible(B), or None when even B = 1 does not fit."""
    if not feasible(1):
        return None
    if feasible(cap):
        return cap
    lo, hi = 1, cap          # feasible(lo) and not feasible(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if feasible(mid):
            lo = mid
        else:
            hi = mid
    return lo
