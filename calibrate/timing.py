"""Timing with warm-up, a per-point time budget and a median.

One warm-up call (JIT kernel generation, first-touch page faults, cuBLAS heuristics) is never timed. Then
samples are taken until ``budget_s`` is spent, with at least ``min_samples`` and at most ``max_samples``.
Calls shorter than ``min_sample_s`` are repeated inside one sample so that the clock's resolution and the
sync cost do not dominate; the per-call time is the sample time divided by the calls in it. The figure
reported is the median per-call time; min and max are kept to show the spread.

GPU work is timed with CUDA events on the current stream (the kernels' own time, launches overlapped); the host's
time to issue each call (``issue_s``: Python and launches, between the two events) is kept beside it. Host work and
synchronous copies are timed with ``time.perf_counter``.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class Timing:
    median_s: float
    min_s: float
    max_s: float
    samples: int  # timed samples
    calls_per_sample: int
    issue_s: Optional[float] = None  # time_cuda: median host seconds to issue one call (launches, Python)

    @property
    def spread_rel(self) -> float:
        return (self.max_s - self.min_s) / self.median_s if self.median_s > 0 else 0.0


def _plan(first_s: float, budget_s: float, min_samples: int, max_samples: int, min_sample_s: float) -> tuple[int, int]:
    inner = max(1, math.ceil(min_sample_s / max(first_s, 1e-9))) if first_s < min_sample_s else 1
    samples = int(budget_s / max(first_s * inner, 1e-9))
    return inner, max(min_samples, min(max_samples, samples))


def time_host(
    fn: Callable[[], object],
    budget_s: float = 0.15,
    min_samples: int = 3,
    max_samples: int = 30,
    min_sample_s: float = 2e-3,
    warmup: bool = True,
) -> Timing:
    """Median wall-clock time of one call of ``fn`` (host work, or GPU work that ``fn`` synchronises)."""
    if warmup:
        fn()
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    inner, samples = _plan(first, budget_s, min_samples, max_samples, min_sample_s)
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return Timing(statistics.median(times), min(times), max(times), len(times), inner)


def time_cuda(
    fn: Callable[[], object],
    budget_s: float = 0.05,
    min_samples: int = 3,
    max_samples: int = 30,
    min_sample_s: float = 1e-3,
    warmup: bool = True,
    stream: Optional["object"] = None,
) -> Timing:
    """Median per-call GPU time of ``fn`` between CUDA events on ``stream`` (default: the current stream)."""
    import torch

    stream = stream or torch.cuda.current_stream()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    issued: list[float] = []  # host seconds per call spent issuing (the launch queue is far from full here)

    def sample(calls: int) -> float:
        start.record(stream)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        issued.append((time.perf_counter() - t0) / calls)
        end.record(stream)
        end.synchronize()
        return start.elapsed_time(end) * 1e-3 / calls

    if warmup:
        fn()
        torch.cuda.synchronize()
    first = sample(1)
    inner, samples = _plan(first, budget_s, min_samples, max_samples, min_sample_s)
    times = [sample(inner) for _ in range(samples)]
    issue = statistics.median(issued[1:])  # the timed samples' issue time, not the first call's
    return Timing(statistics.median(times), min(times), max(times), len(times), inner, issue)
