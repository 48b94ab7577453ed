"""The host drift probe (runtime/host_state.py): which kernel it times, its ratio by hand, and when it flags."""

from __future__ import annotations

import pytest

from lia_model.profiles import load_system
from runtime.host_state import DRIFT_FLAG, HostProbe, ProbeShape, choose_shape, drift_columns, probe_wanted


def test_the_probe_times_opt30b_out_proj_of_the_profiles_own_table():
    tables = load_system("hwprofiles/systems/emr-h200-kernels.yaml").kernels
    shape = choose_shape(tables)
    entry = tables.linear("cpu", "out_proj", 7168, 7168)
    assert (shape.model, shape.sublayer) == ("opt-30b", "out_proj")
    assert shape.table_s == pytest.approx(entry.seconds[0])  # its time at 1 row, the table's first point


def test_no_kernel_tables_no_probe(monkeypatch):
    assert choose_shape(load_system("spr-a100").kernels) is None
    monkeypatch.setenv("LIA_HOST_PROBE", "0")
    assert not probe_wanted(True)
    monkeypatch.delenv("LIA_HOST_PROBE")
    assert probe_wanted(True) and not probe_wanted(False)


def test_the_ratio_is_the_median_call_over_the_table():
    """Calls of 3, 3, 9 ms in turn (a fake clock) against a 2 ms table: the median of 12 calls is 3 ms, ratio 1.5."""
    durations = [0.003, 0.003, 0.009]
    now = [0.0]
    calls_made = []

    def make_call(d):
        def call():
            calls_made.append(d)
            now[0] += d

        return call

    probe = HostProbe(ProbeShape("opt-30b", "out_proj", 0.002), clock=lambda: now[0])
    probe._make_calls = lambda: [make_call(d) for d in durations]
    assert probe.time_vs_table() == pytest.approx(1.5)
    assert len(calls_made) == 3 + 12  # one warm-up round over the copies, then the timed calls


@pytest.mark.parametrize(
    "before, after, flagged",
    [(1.0, 1.0, False), (1.0 + DRIFT_FLAG - 0.01, 0.9, False), (1.2, 1.0, True), (1.0, 0.8, True), (None, None, False)],
)
def test_a_point_is_flagged_when_either_probe_is_more_than_15_percent_off(before, after, flagged):
    cols = drift_columns(before, after)
    assert cols["host_drift_flag"] is flagged
    assert cols["host_cpu_time_vs_table_before"] == (None if before is None else round(before, 3))
