"""The one bisection helper (lia_model.optimizer.infeasible.largest_feasible), against exhaustive search."""

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
