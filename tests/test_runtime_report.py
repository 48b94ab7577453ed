"""The CSV / plot / summary writer on a synthetic predicted-vs-measured table, statistics checked by hand."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from lia_model.cli import app
from lia_model.errors import LiaInputError
from runtime.report import add_errors, one_per_point, summarize, summary_markdown, write_outputs


def _row(group, plan, pred_lat, meas_lat, pred_ttft, meas_ttft, pred_tpot, meas_tpot, status="ran"):
    return {
        "point_id": f"{group}/{plan}",
        "group_id": group,
        "model": "opt-30b",
        "num_layers": 48,
        "batch": 1,
        "input_len": 32,
        "output_len": 8,
        "gpu_memory_gib": 40.0,
        "plan_spec": plan,
        "plan_label": plan,
        "status": status,
        "skip_reason": "" if status == "ran" else "predicted too long",
        "predicted_latency_s": pred_lat,
        "measured_latency_s": meas_lat,
        "predicted_ttft_s": pred_ttft,
        "measured_ttft_s": meas_ttft,
        "predicted_tpot_mean_s": pred_tpot,
        "measured_tpot_mean_s": meas_tpot,
        "predicted_latency_additive_s": 2 * pred_lat,
        "weight_h2d_vs_calibrated": 0.9,
        "cpu_linear_eff_vs_calibrated": 0.8 if plan == "ipex" else None,
    }


@pytest.fixture()
def table() -> pd.DataFrame:
    return pd.DataFrame(
        [
            # latency errors: +10%, -20%, +5%, 0%, +12.5%; TTFT errors: +30%, 0, 0, 0, 0; TPOT: -10%, 0, 0, 0, 0
            _row("A", "optimal", 1.10, 1.00, 0.13, 0.10, 0.09, 0.10),
            _row("A", "flexgen", 1.60, 2.00, 0.20, 0.20, 0.25, 0.25),
            _row("A", "ipex", 3.15, 3.00, 1.00, 1.00, 0.30, 0.30),
            _row("B", "optimal", 0.50, 0.50, 0.05, 0.05, 0.06, 0.06),
            _row("B", "flexgen", 0.45, 0.40, 0.04, 0.04, 0.05, 0.05),
            _row("B", "ipex", 9.0, float("nan"), 1.0, float("nan"), 1.0, float("nan"), status="skipped"),
        ]
    )


def test_summary_statistics_match_hand_computation(table):
    s = summarize(add_errors(table))
    by = {m["metric"]: m for m in s["metrics"]}
    lat = by["latency"]
    assert lat["n"] == 5
    assert lat["mean_abs_err"] == pytest.approx((0.10 + 0.20 + 0.05 + 0.0 + 0.125) / 5)  # 9.5%
    assert lat["median_abs_err"] == pytest.approx(0.10)
    assert lat["max_abs_err"] == pytest.approx(0.20) and lat["worst_point"] == "A/flexgen"
    assert lat["mean_signed_err"] == pytest.approx((0.10 - 0.20 + 0.05 + 0.0 + 0.125) / 5)
    assert lat["met"] is False  # mean 9.5% > 5% (issue 10's goal)
    ttft = by["ttft"]
    assert ttft["max_abs_err"] == pytest.approx(0.30) and ttft["mean_abs_err"] == pytest.approx(0.06)
    assert ttft["met"] is False  # max 30% > 15%
    assert by["tpot_mean"]["mean_abs_err"] == pytest.approx(0.02) and by["tpot_mean"]["met"] is True
    assert by["latency_additive"]["goal"] is False  # shown for reference, not a goal
    regret = {r["group_id"]: r for r in s["regret"]}
    assert regret["A"]["regret"] == pytest.approx(0.0) and regret["A"]["best_plan"] == "optimal"
    assert regret["B"]["regret"] == pytest.approx(0.25) and regret["B"]["best_plan"] == "flexgen"
    assert regret["A"]["met"] and not regret["B"]["met"]
    assert s["points_ran"] == 5 and s["skipped"] == [{"point_id": "B/ipex", "reason": "predicted too long"}]
    assert s["consistency"]["cpu_linear"]["min"] == pytest.approx(0.8)
    assert s["consistency"]["cpu_linear"]["met"] is False
    assert s["consistency"]["weight_streaming"]["met"] is True


def test_outputs_are_written_and_the_csv_round_trips(table, tmp_path):
    summary = write_outputs(table, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "pred_vs_meas.png",
        "pred_vs_meas.svg",
        "results.csv",
        "summary.json",
        "summary.md",
    ]
    assert (tmp_path / "pred_vs_meas.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (tmp_path / "pred_vs_meas.svg").read_text()
    assert "<svg" in svg and "measured (s)" in svg and "±5% (mean goal)" in svg and "±15% (max goal)" in svg
    back = pd.read_csv(tmp_path / "results.csv")
    assert list(back["err_latency"].round(4)[:5]) == [0.1, -0.2, 0.05, 0.0, 0.125]
    assert json.loads((tmp_path / "summary.json").read_text())["regret"][1]["regret"] == pytest.approx(0.25)
    md = (tmp_path / "summary.md").read_text()
    assert "| latency | 5 | 9.5% | 10.0% | 20.0% |" in md
    assert "- B/ipex: predicted too long" in md
    assert summary["metrics"] == summarize(back)["metrics"]


def _merge_one_and_two(tmp_path):
    """`lia validate --from-csv` of the folders one/ and two/ under tmp_path into merged/."""
    one, two = (str(tmp_path / name / "results.csv") for name in ("one", "two"))
    return CliRunner().invoke(
        app, ["validate", "--from-csv", one, "--from-csv", two, "--out", str(tmp_path / "merged")]
    )


def test_merging_csvs_from_two_campaign_commands(table, tmp_path):
    write_outputs(table.iloc[:3], tmp_path / "one")
    write_outputs(table.iloc[3:], tmp_path / "two")
    result = _merge_one_and_two(tmp_path)
    assert result.exit_code == 0, result.output
    merged = json.loads((tmp_path / "merged" / "summary.json").read_text())
    assert merged["metrics"] == summarize(add_errors(table))["metrics"]
    assert "plan regret" in result.output


def test_markdown_marks_missed_goals(table):
    md = summary_markdown(summarize(add_errors(table)))
    assert "| TTFT | 5 | 6.0% | 0.0% | 30.0% | 6.0% | NO | A/optimal |" in md
    assert "| B | opt-30b (48 layers) | B=1 L_in=32 L_out=8 | 40 | 2 | 0.500 | flexgen | 0.400 | 25.0% | NO |" in md


def test_merging_into_a_folder_with_results_needs_force(table, tmp_path):
    """The merge rewrites results.csv and the summaries; a folder that already holds them is left alone unless
    --force is given (the fourth session's merge overwrote runtime/validation/ silently)."""
    write_outputs(table.iloc[:3], tmp_path / "one")
    before = (tmp_path / "one" / "results.csv").read_bytes()
    args = ["validate", "--from-csv", str(tmp_path / "one" / "results.csv"), "--out", str(tmp_path / "one")]
    refused = CliRunner().invoke(app, args)
    assert isinstance(refused.exception, LiaInputError)  # lia's entry point prints it as one error: line, exit 2
    assert "already holds results.csv" in str(refused.exception) and "--force" in str(refused.exception)
    assert (tmp_path / "one" / "results.csv").read_bytes() == before
    forced = CliRunner().invoke(app, args + ["--force"])
    assert forced.exit_code == 0, forced.output
    assert pd.read_csv(tmp_path / "one" / "results.csv")["point_id"].tolist() == table["point_id"].iloc[:3].tolist()


def test_merge_names_points_measured_in_two_files_and_keeps_the_last(table, tmp_path):
    """Two files with the same point (a re-run): the later file's row is kept and the merge says which points it
    replaced (the seventh session's part C re-measured seven optimum points of parts A and B)."""
    write_outputs(table.iloc[:3], tmp_path / "one")
    rerun = table.iloc[1:3].copy()
    rerun["measured_latency_s"] = rerun["measured_latency_s"] * 2
    write_outputs(rerun, tmp_path / "two")
    result = _merge_one_and_two(tmp_path)
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "2 point(s) appear in more than one file" in flat
    for pid in table["point_id"].iloc[1:3]:
        assert pid in flat
    merged = pd.read_csv(tmp_path / "merged" / "results.csv").set_index("point_id")
    assert len(merged) == 3
    for pid, lat in zip(rerun["point_id"], rerun["measured_latency_s"]):
        assert merged.loc[pid, "measured_latency_s"] == pytest.approx(lat)


def test_in_situ_cpu_check_applies_the_dma_slowdown_only_where_the_model_does():
    """Hand numbers: prefill qkv on the CPU, 10 ms predicted solo and 10 ms measured, not slowed (a compute-bound
    linear); decode fc1 on the CPU, 10 ms solo, 12.5 ms measured, slowed 1.25x beside the DMA. Expected in situ
    10 + 12.5 = 22.5 ms over 22.5 measured: 100%. Without the mask columns (older rows) every CPU sublayer is
    taken as slowed: (12.5 + 12.5) / 22.5."""
    import pandas as pd

    from runtime.report import _CPU_LINEARS, _in_situ_efficiency

    row = {"status": "ran"}
    for stage in ("prefill", "decode"):
        for sub in ("qkv", "attn_score", "attn_context", "out_proj", "fc1", "fc2"):
            row[f"plan_{stage}_{sub}_device"] = "gpu"
        row[f"predicted_cpu_slowdown_{stage}"] = 1.25
    row.update({"plan_prefill_qkv_device": "cpu", "predicted_prefill_qkv_ms": 10.0, "measured_prefill_qkv_ms": 10.0})
    row.update({"plan_decode_fc1_device": "cpu", "predicted_decode_fc1_ms": 10.0, "measured_decode_fc1_ms": 12.5})
    masked = dict(row, predicted_cpu_slowed_prefill="(0,1,1,0,0,0)", predicted_cpu_slowed_decode="(1,1,1,1,1,1)")
    assert _in_situ_efficiency(pd.DataFrame([masked]), _CPU_LINEARS).iloc[0] == pytest.approx(1.0)
    assert _in_situ_efficiency(pd.DataFrame([row]), _CPU_LINEARS).iloc[0] == pytest.approx(25.0 / 22.5)
    # the solo check (the summary's "CPU linear / calibrated solo"): 20 ms solo over 22.5 ms measured, whatever the
    # slowdown columns say, and it wins over the run's own per-call column (which a re-prediction cannot update)
    assert _in_situ_efficiency(pd.DataFrame([row]), _CPU_LINEARS, beside_dma=False).iloc[0] == pytest.approx(20 / 22.5)
    from runtime.report import consistency

    checked = consistency(pd.DataFrame([dict(masked, cpu_linear_eff_vs_calibrated=0.5)]))
    assert checked["cpu_linear"]["min"] == pytest.approx(20 / 22.5)


def test_gpu_memory_check_by_hand():
    """Peaks 9 and 11 GB against a 10 GB requirement: max 110%, median 100%, missed. Of two points that ran out
    of memory, only the one the model accepted (predicted_feasible) counts."""
    from runtime.report import gpu_memory_check

    df = pd.DataFrame(
        {
            "point_id": ["a", "b", "c", "d"],
            "status": ["ran", "ran", "skipped", "skipped"],
            "skip_reason": ["", "", "FAILED: CUDA out of memory under the 10 GiB cap", "FAILED: CUDA out of memory"],
            "predicted_feasible": [True, True, True, False],
            "predicted_hbm_bytes": [10e9, 10e9, 9e9, 12e9],
            "measured_gpu_peak_allocated_bytes": [9e9, 11e9, None, None],
        }
    )
    c = gpu_memory_check(df)
    assert c["n"] == 2 and c["worst_point"] == "b"
    assert c["max_peak_over_predicted"] == pytest.approx(1.1) and c["median_peak_over_predicted"] == pytest.approx(1.0)
    assert c["out_of_memory"] == ["c"] and not c["met"]
    rows = pd.DataFrame([_row("A", p, 1.0, 1.0, 0.1, 0.1, 0.1, 0.1) for p in ("a", "b")])
    md = summary_markdown(summarize(pd.concat([rows.iloc[:0], df], ignore_index=True).fillna({"group_id": "A"})))
    assert "| out of GPU memory on a plan the model accepts | - | - | - | none | NO: c |" in md
    fine = df.iloc[:1]
    assert gpu_memory_check(fine)["met"] and gpu_memory_check(fine)["out_of_memory"] == []


def test_regret_compares_the_plans_of_the_command_that_measured_the_optimum():
    """Merged campaigns: command 1 measured the optimum at 1.00 s and flexgen at 1.02 s; command 2, on another day,
    measured flexgen again at 0.90 s (newest point kept for the errors). The regret compares command 1's plans:
    0%, not 1.00 / 0.90 - 1 = 11.1%. When the optimum is measured again too (command 3: optimum 1.00, ipex 0.95),
    the newest command with the optimum decides: 5.3%. Without run_at_utc (one campaign) every plan counts."""
    rows = [
        {**_row("A", "optimal", 1.0, 1.00, 0.1, 0.1, 0.1, 0.1), "run_at_utc": "2026-12-01T03:00:00Z"},
        {**_row("A", "flexgen", 1.0, 1.02, 0.1, 0.1, 0.1, 0.1), "run_at_utc": "2026-12-01T03:00:00Z"},
        {**_row("A", "flexgen", 1.0, 0.90, 0.1, 0.1, 0.1, 0.1), "run_at_utc": "2026-12-01T10:00:00Z"},
    ]
    measured = pd.DataFrame(rows)
    newest = measured.drop_duplicates(subset="point_id", keep="last")
    assert summarize(add_errors(newest))["regret"][0]["regret"] == pytest.approx(1.0 / 0.9 - 1)  # across days
    by_command = summarize(add_errors(newest), measured)["regret"][0]
    assert by_command["regret"] == pytest.approx(0.0) and by_command["run_at_utc"] == "2026-12-01T03:00:00Z"
    assert by_command["plans"] == 2
    third = [
        {**_row("A", "optimal", 1.0, 1.00, 0.1, 0.1, 0.1, 0.1), "run_at_utc": "2026-12-01T11:00:00Z"},
        {**_row("A", "ipex", 1.0, 0.95, 0.1, 0.1, 0.1, 0.1), "run_at_utc": "2026-12-01T11:00:00Z"},
    ]
    measured = pd.DataFrame(rows + third)
    newest = measured.drop_duplicates(subset="point_id", keep="last")
    r = summarize(add_errors(newest), measured)["regret"][0]
    assert r["regret"] == pytest.approx(1.0 / 0.95 - 1) and r["best_plan"] == "ipex"
    # command 4 measures the optimum again while the host drift probe flags it (optimum 1.10, flexgen 0.98): its
    # optimum measurement has the worse quality, so command 3 still decides (5.3%), not 1.10 / 0.98 - 1 = 12.2%
    drifted = [
        {**_row("A", p, 1.0, m, 0.1, 0.1, 0.1, 0.1), "run_at_utc": "2026-12-01T12:00:00Z", "host_drift_flag": True}
        for p, m in (("optimal", 1.10), ("flexgen", 0.98))
    ]
    measured = pd.DataFrame(rows + third + drifted)
    r = summarize(add_errors(one_per_point(measured)), measured)["regret"][0]
    assert r["regret"] == pytest.approx(1.0 / 0.95 - 1) and r["run_at_utc"] == "2026-12-01T11:00:00Z"


def test_steady_points_are_summarised_apart_from_the_flagged_ones(table):
    """Flag A/flexgen (its latency error -20%): over the 4 other points that ran, the latency errors are +10%, +5%, 0%
    and +12.5%: mean 6.875%, max 12.5% (worst B/flexgen). The goals stay on all 5 points; summary.md shows both."""
    flagged = table.assign(spread_flag=[False, True, False, False, False, False])
    s = summarize(add_errors(flagged))
    steady = {m["metric"]: m for m in s["metrics_steady"]}
    assert steady["latency"]["n"] == 4
    assert steady["latency"]["mean_abs_err"] == pytest.approx((0.10 + 0.05 + 0.0 + 0.125) / 4)
    assert steady["latency"]["max_abs_err"] == pytest.approx(0.125) and steady["latency"]["worst_point"] == "B/flexgen"
    assert {m["metric"]: m for m in s["metrics"]}["latency"]["n"] == 5
    md = summary_markdown(s)
    assert "steady points" in md and "| latency | 4 | 6.9% |" in md
    assert summarize(add_errors(table))["metrics_steady"] == []  # no spread column: no second table


def test_points_measured_in_host_drift_are_summarised_apart(table):
    """The drift probe ran for every point but A/ipex (an older row: no probe columns there); it flagged A/flexgen
    (latency error -20%). Over the 3 probed, unflagged points that ran (A/optimal +10%, B/optimal 0%, B/flexgen
    +12.5%) the latency error's mean is 7.5% and its max 12.5%; the goals stay on all 5 points."""
    df = table.assign(
        host_cpu_time_vs_table_before=[1.02, 1.40, None, 0.97, 1.05, None],
        host_cpu_time_vs_table_after=[1.01, 1.10, None, 1.00, 0.99, None],
        host_drift_flag=[False, True, None, False, False, None],
    )
    s = summarize(add_errors(df))
    undrifted = {m["metric"]: m for m in s["metrics_undrifted"]}
    assert s["points_probed"] == 4 and s["points_host_drift"] == 1
    assert undrifted["latency"]["n"] == 3
    assert undrifted["latency"]["mean_abs_err"] == pytest.approx((0.10 + 0.0 + 0.125) / 3)
    assert undrifted["latency"]["max_abs_err"] == pytest.approx(0.125)
    md = summary_markdown(s)
    assert "Of the 4 points with the host drift probe" in md and "| latency | 3 | 7.5% |" in md
    assert summarize(add_errors(table))["metrics_undrifted"] == []  # never probed: no such table


def test_quantised_points_are_reported_apart_by_weight_dtype(table):
    """With an int8 point among bf16 ones (and rows from before the weight_dtype column, read as bf16), the summary
    gives each dtype's metrics: the int8 point's latency error by hand, 1.2 / 1.0 - 1 = +20%."""
    df = table.copy()
    df["weight_dtype"] = None  # runs before the column
    int8 = _row("g9", "optimal", 1.2, 1.0, 0.1, 0.1, 0.1, 0.1)
    int8["weight_dtype"] = "int8"
    df = pd.concat([df, pd.DataFrame([int8])], ignore_index=True)
    s = summarize(df)
    by = s["metrics_by_weight_dtype"]
    assert list(by) == ["bf16", "int8"]
    lat8 = next(m for m in by["int8"] if m["metric"] == "latency")
    assert lat8["n"] == 1 and lat8["mean_signed_err"] == pytest.approx(0.2) and not lat8["met"]
    assert next(m for m in by["bf16"] if m["metric"] == "latency")["n"] == 5  # the five bf16 points that ran
    md = summary_markdown(s)
    assert "| int8: latency | 1 | 20.0% |" in md
    assert summarize(table)["metrics_by_weight_dtype"] == {}  # all bf16: no per-dtype table
    assert "per stored weight dtype" not in summary_markdown(summarize(table))


def test_speedup_over_bf16_pairs_the_same_workload_by_hand():
    """bf16 point: predicted 2.0 s, measured 2.5 s; int8 of the same workload: predicted 1.0 s, measured 1.0 s, so
    predicted speedup 2.0x, measured 2.5x, error 2.0 / 2.5 - 1 = -20%. An fp8 point of another batch has no bf16
    partner and is left out; a run at bf16 before the weight_dtype column (empty) is the bf16 reference."""
    bf16 = _row("W", "optimal", 2.0, 2.5, 0.1, 0.1, 0.1, 0.1)
    bf16["weight_dtype"] = None
    int8 = {**_row("W8", "optimal", 1.0, 1.0, 0.1, 0.1, 0.1, 0.1), "weight_dtype": "int8"}
    fp8 = {**_row("X8", "optimal", 1.0, 1.0, 0.1, 0.1, 0.1, 0.1), "weight_dtype": "fp8_e4m3", "batch": 4}
    s = summarize(pd.DataFrame([bf16, int8, fp8]))
    (pair,) = s["weight_dtype_speedups"]
    assert (pair["point_id"], pair["bf16_point_id"], pair["weight_dtype"]) == ("W8/optimal", "W/optimal", "int8")
    assert pair["predicted_speedup"] == pytest.approx(2.0) and pair["measured_speedup"] == pytest.approx(2.5)
    assert pair["speedup_err"] == pytest.approx(-0.2)
    assert "| W8/optimal | W/optimal | 2.00x | 2.50x | -20.0% |" in summary_markdown(s)
    assert summarize(pd.DataFrame([bf16]))["weight_dtype_speedups"] == []


def test_old_results_columns_are_read_in_the_one_row_schema():
    """A results CSV written before the one row schema (issue 14) names the per-sublayer columns <stage>_<sub>_dev,
    _ms_predicted, _ms_measured and _spread_measured: upgrade_columns gives the plan_ / predicted_ / measured_ names,
    leaves a column that already has its new name, and --from-csv reads it so."""
    from runtime.report import sublayer_column, upgrade_columns

    old = pd.DataFrame(
        [
            {
                "decode_fc1_dev": "cpu",
                "decode_fc1_ms_predicted": 2.0,
                "decode_fc1_ms_measured": 4.0,
                "decode_fc1_spread_measured": 0.1,
                "prefill_attn_score_ms_predicted": 1.0,
                "tpot_steps_measured_s_json": "[0.1]",
                "predicted_decode_qkv_ms": 3.0,
                "decode_qkv_ms_predicted": 9.0,  # both spellings: the new one is kept, the old one left alone
            }
        ]
    )
    new = upgrade_columns(old)
    assert list(new.columns) == [
        "plan_decode_fc1_device",
        "predicted_decode_fc1_ms",
        "measured_decode_fc1_ms",
        "measured_decode_fc1_spread",
        "predicted_prefill_attn_score_ms",
        "measured_tpot_steps_s_json",
        "predicted_decode_qkv_ms",
        "decode_qkv_ms_predicted",
    ]
    assert new.loc[0, "predicted_decode_qkv_ms"] == 3.0
    assert sublayer_column("device", "decode", "fc1") == "plan_decode_fc1_device"
    assert sublayer_column("measured_spread", "prefill", "out_proj") == "measured_prefill_out_proj_spread"


def test_one_per_point_keeps_the_last_measurement_of_the_best_quality():
    """By hand. Quality: steady 2, spread-flagged 1, drift-flagged or not run 0.
    a: steady, then spread-flagged -> the steady row; b: spread-flagged, then steady -> the steady re-run;
    c: spread-flagged, then drift-flagged -> the spread-flagged one (the host was off its tables in the re-run);
    d: steady twice -> the last; e: skipped, then spread-flagged -> the run; f: drift-flagged, then drift- and
    spread-flagged -> the last (both 0). Rows keep the input's order."""
    from runtime.report import measurement_quality, one_per_point

    rows = [
        ("a", "ran", False, "", 1),
        ("b", "ran", True, "", 2),
        ("c", "ran", True, "", 3),
        ("d", "ran", False, "False", 4),
        ("e", "skipped", "", "", 5),
        ("f", "ran", False, "True", 6),
        ("a", "ran", True, "False", 7),
        ("b", "ran", False, "False", 8),
        ("c", "ran", False, "True", 9),
        ("d", "ran", False, "False", 10),
        ("e", "ran", True, "", 11),
        ("f", "ran", True, "True", 12),
    ]
    df = pd.DataFrame(rows, columns=["point_id", "status", "spread_flag", "host_drift_flag", "row"])
    assert measurement_quality(df).tolist() == [2, 1, 1, 2, 0, 0, 1, 2, 0, 2, 1, 0]
    kept = one_per_point(df)
    assert kept["row"].tolist() == [1, 3, 8, 10, 11, 12]
    assert sorted(kept["point_id"]) == ["a", "b", "c", "d", "e", "f"]
    assert list(kept.columns) == list(df.columns)
    # without the drift probe's columns (rows before 2026-12-01) only the spread decides: c's re-run (row 9) and
    # f's first run (row 6) are steady then
    assert one_per_point(df.drop(columns="host_drift_flag"))["row"].tolist() == [1, 6, 8, 9, 10, 11]


def test_points_over_the_max_error_goal_are_listed_with_their_largest_sublayer_gap(table):
    """The fixture's errors by hand: A/optimal TTFT +30% (over 15%), A/flexgen latency -20% (over), the others
    within 15% (A/ipex +5%, B/optimal 0%, B/flexgen +12.5%; B/ipex did not run). Largest first: +30%, then -20%.
    A/optimal's decode: fc2 on the CPU predicted 10 ms, measured 14 ms (gap 4 ms) beats qkv 1 / 3 ms (gap 2 ms);
    its prefill has no per-sublayer columns. Its repeats were 8% apart (spread flag)."""
    t = table.copy()
    t.loc[0, ["plan_decode_fc2_device", "plan_decode_qkv_device"]] = ["cpu", "gpu"]
    t.loc[0, ["predicted_decode_fc2_ms", "measured_decode_fc2_ms"]] = [10.0, 14.0]
    t.loc[0, ["predicted_decode_qkv_ms", "measured_decode_qkv_ms"]] = [1.0, 3.0]
    t["spread_flag"] = [True, False, False, False, False, False]
    t["measured_latency_spread_frac"] = [0.08, 0.01, 0.01, 0.01, 0.01, None]
    s = summarize(add_errors(t))
    over = s["over_goal"]
    assert [p["point_id"] for p in over] == ["A/optimal", "A/flexgen"]
    assert over[0]["errors"]["ttft"] == pytest.approx(0.30)
    assert over[1]["errors"]["latency"] == pytest.approx(-0.20)
    assert over[0]["largest_gap"]["decode"] == {
        "sublayer": "fc2",
        "device": "cpu",
        "predicted_ms": 10.0,
        "measured_ms": 14.0,
    }
    assert over[0]["largest_gap"]["prefill"] is None and over[1]["largest_gap"]["decode"] is None
    assert over[0]["spread_flag"] and not over[1]["spread_flag"]
    md = summary_markdown(s)
    assert "| A/optimal | +30.0% | -10.0% | +10.0% | repeats 8.0% apart | - | fc2 (cpu): 10.00 / 14.00 |" in md
    assert "| A/flexgen | +0.0% | +0.0% | -20.0% | steady | - | - |" in md
    json.dumps(s, allow_nan=False)  # the summary stays valid JSON
