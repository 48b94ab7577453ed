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


def _run_wait(ratios, wait_s=100.0, every_s=10.0):
    from runtime.host_state import wait_until_steady

    now = [0.0]
    seen = iter(ratios)
    said = []

    def sleep(s):
        now[0] += s

    ok = wait_until_steady(lambda: next(seen), wait_s, every_s, clock=lambda: now[0], sleep=sleep, say=said.append)
    return ok, said, now[0]


def test_wait_until_steady_needs_three_probes_in_a_row_within_15_percent():
    # 1.40 off, 1.10 ok, 0.80 off (resets), then 1.05, 0.90, 1.14: steady at the sixth probe, 50 s in
    ok, said, t = _run_wait([1.40, 1.10, 0.80, 1.05, 0.90, 1.14])
    assert ok and len(said) == 6 and t == 50.0
    assert said[0].startswith("host probe at     0 s: 1.40x") and "(3 of 3 in a row within)" in said[-1]


def test_wait_until_steady_gives_up_after_the_wait():
    # probes at 0, 10, ..., 30 s; the next would start past 35 s: four probes, then False
    ok, said, t = _run_wait([1.5, 1.0, 1.0, 1.5, 1.0, 1.0, 1.0], wait_s=35.0)
    assert not ok and len(said) == 4 and t == 30.0


def test_host_state_cli_refuses_bad_input(capsys):
    from runtime.host_state import main

    assert main(["--system", "hwprofiles/systems/emr-h200-kernels.yaml", "--wait-s", "nan"]) == 2
    assert capsys.readouterr().err.startswith("error: --wait-s")
    assert main(["--system", "spr-a100", "--wait-s", "5"]) == 2  # a datasheet profile: no kernel tables
    assert "no CPU kernel tables" in capsys.readouterr().err
    assert main(["--system", "no-such-box"]) == 2
    assert capsys.readouterr().err.startswith("error: --system")
