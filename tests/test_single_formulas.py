"""The single copies of shared formulas: the bisection (lia_model.optimizer.infeasible.largest_feasible) against
exhaustive search, and the roofline (lia_model.roofline.roofline_s) on hand-derived numbers."""

from lia_model.optimizer.infeasible import largest_feasible


def test_largest_feasible_matches_a_linear_scan_for_every_threshold():
    for lo in range(0, 4):
        for hi in range(lo - 1, 20):
            for threshold in range(lo - 2, hi + 3):
                calls: list[int] = []

                def fits(x: int) -> bool:
                    calls.append(x)
                    return x <= threshold

                expected = max((x for x in range(lo, hi + 1) if x <= threshold), default=None)
                assert largest_feasible(lo, hi, fits) == expected, (lo, hi, threshold)
                assert all(lo <= x <= hi for x in calls)
                assert len(calls) <= 1 + max(hi - lo + 1, 1).bit_length()  # logarithmic, not a scan


def test_roofline_is_the_slower_of_compute_and_memory_plus_overhead():
    import numpy as np

    from lia_model.roofline import roofline_s

    assert roofline_s(10.0, 2.0, 3.0, 1.0, 0.5) == 5.5  # compute-bound: 10 / 2 + 0.5
    assert roofline_s(1.0, 2.0, 3.0, 1.0, 0.5) == 3.5  # memory-bound: 3 / 1 + 0.5
    assert isinstance(roofline_s(1.0, 2.0, 3.0, 1.0, 0.5), float)
    assert roofline_s(np.array([10.0, 1.0]), 2.0, np.array([3.0, 3.0]), 1.0, 0.5).tolist() == [5.5, 3.5]
