"""The measured policy map's summary: speedups from hand-made runtime rows."""

import pandas as pd
import pytest

from studies.measured.policy_map import summarise


def test_speedup_is_best_paper_latency_over_the_optimum():
    rows = []
    for label, meas, pred in (
        ("optimal", 0.100, 0.090),  # plan_spec as in the points file
        ("lia_(0,0,0,0,0,0)", 0.300, 0.280),
        ("lia_(1,1,1,1,1,1)", 0.135, 0.120),
        ("lia_(0,1,1,0,0,0)", 0.150, 0.110),
    ):
        rows.append(
            {
                "batch": 1,
                "input_len": 64,
                "plan_spec": label,
                "plan_label": "optimum" if label == "optimal" else "lia_(0,0,0,0,0,0)",  # a reused row's label
                "gpu_resident_layers": 3,
                "plan_decode": "(0,1,1,1,0,1)",
                "measured_latency_s": meas,
                "predicted_latency_s": pred,
                "status": "ran",
            }
        )
    rows.append(
        {
            "batch": 8,
            "input_len": 64,
            "plan_spec": "lia_(1,1,1,1,1,1)",
            "plan_label": "lia_(1,1,1,1,1,1)",
            "gpu_resident_layers": 3,
            "plan_decode": "(1,1,1,1,1,1)",
            "measured_latency_s": 1.0,
            "predicted_latency_s": 1.0,
            "status": "ran",
        }
    )  # no optimum: skipped
    table = summarise(pd.DataFrame(rows))
    assert len(table) == 1
    row = table.iloc[0]
    assert row["best_paper_policy_measured"] == "lia_(1,1,1,1,1,1)"
    assert row["speedup_measured"] == pytest.approx(0.135 / 0.100)
    assert row["speedup_predicted"] == pytest.approx(0.110 / 0.090)


def test_the_summary_and_the_cpu_probe_never_overwrite_without_force(tmp_path, capsys):
    """Both refuse an existing output with one error line and exit 2, leaving it as it was."""
    from runtime.probe_cpu_insitu import main as probe_main
    from studies.measured.policy_map import main as map_main

    results = tmp_path / "results.csv"
    results.write_text("batch,input_len,status\n")
    (tmp_path / "measured-policy-map.csv").write_text("kept\n")
    assert map_main([str(results), "--out", str(tmp_path)]) == 2
    assert (tmp_path / "measured-policy-map.csv").read_text() == "kept\n"
    (tmp_path / "cpu_insitu_probe-x.csv").write_text("kept\n")
    assert probe_main(["--out", str(tmp_path), "--tag", "x", "--quick"]) == 2
    assert (tmp_path / "cpu_insitu_probe-x.csv").read_text() == "kept\n"
    err = capsys.readouterr().err
    assert err.count("error: --out") == 2 and "--force" in err
