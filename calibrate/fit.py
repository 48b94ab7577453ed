"""Efficiency tables that make the cost model reproduce measured times (pure: numpy, no torch).

The cost model (``lia_model.costterms.sublayer_times``) times a product of F FLOPs touching B bytes as

    t(F, B, m) = max(F / (P * e(m)), B / W) + o                                          (1)

with P the device's peak (CPU: cores x per_core_tflops of the ISA; GPU: bf16_peak_tflops), e(m) the
efficiency table interpolated linearly in log2(m) and clamped at its ends (m = tokens B*q for a linear
layer, q for attention), W the bandwidth (CPU: min(cpu.memory_read_gbps, tier.read_gbps); GPU: hbm_gbps)
and o the op overhead. Given measured times t_i of points (m_i, F_i, B_i), the calibrator chooses P and e:

1. Peak: P = max_i F_i / t_i, the best rate achieved at any measured point (overhead included, so that
   no tiny, overhead-dominated point can inflate it). P is a real achieved number, and every e <= 1.
2. One point: solving (1) for e with t = t_i gives e_i = F_i / (P (t_i - o)) when the compute term is the
   larger. Then (1) reproduces t_i exactly whenever B_i / W <= t_i - o. When B_i / W > t_i - o (the point
   ran faster than the memory roofline: W is underestimated or the data was cached) no e reproduces it:
   the memory term alone predicts it, too slow. When t_i <= o the point is all overhead and e_i is 1.
3. One table entry per m: several shapes share a token count but the table has one e(m). e(m) minimises
   sum_i log(t_pred_i(e) / t_i)^2 over the points at m (relative errors: big and small shapes count
   alike). The objective is piecewise smooth in e; it is evaluated on the candidates e_i plus a dense
   log-spaced grid on [min e_i, 1], ties going to the candidate nearest the median e_i.
4. The table's keys are exactly the measured m, so at every measured point (1) uses the fitted entry
   itself; between them the cost model interpolates in log2 m, beyond them it clamps.
With one shape per m, step 3 returns e_i, and (1) reproduces every compute-bound time exactly; with several
it is the best single e in the relative least-squares sense. ``fit_errors`` reports what is left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lia_model.hardware import EfficiencyPoint, interpolate_efficiency
from lia_model.roofline import roofline_s

MIN_EFFICIENCY = 1e-6
GRID_POINTS = 600


@dataclass(frozen=True)
class Measured:
    """One measured product: its table key, FLOPs and bytes (as the cost model counts them) and time."""

    tokens: int
    flops: float
    bytes: float
    time_s: float


def peak_rate(points: list[Measured]) -> float:
    """Best achieved FLOP/s over the points (step 1)."""
    if not points:
        raise ValueError("no measured points to take a peak from")
    return max(p.flops / p.time_s for p in points)


def point_efficiency(p: Measured, peak: float, overhead_s: float) -> float:
    """e_i of step 2, clamped to (0, 1]."""
    compute_s = p.time_s - overhead_s
    if compute_s <= 0:
        return 1.0
    return float(min(1.0, max(MIN_EFFICIENCY, p.flops / (peak * compute_s))))


def _predict(
    flops: np.ndarray, nbytes: np.ndarray, e: np.ndarray, peak: float, bandwidth: float, overhead_s: float
) -> np.ndarray:
    """(1) for arrays: points along axis -1, candidate efficiencies along axis 0."""
    return roofline_s(flops, peak * e, nbytes, bandwidth, overhead_s)


def fit_table(
    points: list[Measured], peak: float, bandwidth: float, overhead_s: float, digits: int = 6
) -> list[EfficiencyPoint]:
    """The efficiency table (step 3), keyed by the measured token counts, values rounded to ``digits``."""
    if not points:
        raise ValueError("no measured points to fit")
    table = []
    for m in sorted({p.tokens for p in points}):
        at = [p for p in points if p.tokens == m]
        flops = np.array([p.flops for p in at])
        nbytes = np.array([p.bytes for p in at])
        times = np.array([p.time_s for p in at])
        e_i = np.array([point_efficiency(p, peak, overhead_s) for p in at])
        lo = max(MIN_EFFICIENCY, float(e_i.min()))
        candidates = np.unique(np.concatenate([e_i, np.geomspace(lo, 1.0, GRID_POINTS)]))
        pred = _predict(flops[None, :], nbytes[None, :], candidates[:, None], peak, bandwidth, overhead_s)
        loss = (np.log(pred / times[None, :]) ** 2).sum(axis=1)
        # ties (a flat optimum: memory-bound points) go to the candidate nearest the median e_i
        tied = np.flatnonzero(loss <= loss.min() * (1 + 1e-9) + 1e-24)
        centre = float(np.median(np.log(e_i)))
        best = float(candidates[tied[np.argmin(np.abs(np.log(candidates[tied]) - centre))]])
        table.append(EfficiencyPoint(tokens=m, efficiency=float(f"{best:.{digits}g}")))
    return table


def predict_time_s(
    p: Measured, table: list[EfficiencyPoint], peak: float, bandwidth: float, overhead_s: float
) -> float:
    """(1) with the cost model's own interpolation."""
    e = interpolate_efficiency(table, p.tokens)
    return roofline_s(p.flops, peak * e, p.bytes, bandwidth, overhead_s)


def fit_errors(
    points: list[Measured], table: list[EfficiencyPoint], peak: float, bandwidth: float, overhead_s: float
) -> list[float]:
    """Relative error (predicted - measured) / measured of each point."""
    return [predict_time_s(p, table, peak, bandwidth, overhead_s) / p.time_s - 1.0 for p in points]


def error_summary(errors: list[float]) -> str:
    if not errors:
        return "no points"
    abs_err = sorted(abs(e) for e in errors)
    median = abs_err[len(abs_err) // 2]
    return f"median |error| {100 * median:.1f}%, max {100 * abs_err[-1]:.1f}% over {len(errors)} points"


def linear_bytes(tokens: int, k: int, n: int) -> float:
    """Bytes the cost model counts for a linear layer: bf16 weight, input and output."""
    return 2.0 * (k * n + tokens * (k + n))


def attention_bytes(batch: int, heads: int, q: int, s: int, head_dim: int, softmax: bool = False) -> float:
    """Bytes the cost model counts for one of score or context (MHA, bf16): K (or V), Q (or the output)
    and the score matrix, which the context (softmax, then S V) moves three times
    (``lia_model.accounting.sublayer_work``)."""
    score_passes = 3 if softmax else 1
    return 2.0 * (batch * s * heads * head_dim + batch * q * heads * head_dim + score_passes * batch * heads * q * s)


def rounded(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}") if math.isfinite(x) else x
