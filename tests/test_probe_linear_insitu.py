"""runtime.probe_linear_insitu: the per-mode medians over rounds and their ratio to the calibrator's calls, by hand,
and its bad-input lines."""

from __future__ import annotations

import pandas as pd

from runtime.probe_linear_insitu import main, summary


def test_summary_is_the_median_over_rounds_against_the_table_mode():
    rows = []
    for r, (table, arena) in enumerate([(10.0, 15.0), (12.0, 19.0), (11.0, 14.0)]):
        rows.append({"model": "m", "sublayer": "fc2", "rows": 32, "mode": "table", "round": r, "median_s": table})
        rows.append({"model": "m", "sublayer": "fc2", "rows": 32, "mode": "arena", "round": r, "median_s": arena})
    med = summary(pd.DataFrame(rows)).set_index("mode")
    assert med.loc["table", "median_s"] == 11.0 and med.loc["arena", "median_s"] == 15.0
    assert med.loc["table", "vs_table"] == 1.0 and abs(med.loc["arena", "vs_table"] - 15.0 / 11.0) < 1e-12


def test_bad_inputs_get_one_error_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--rounds", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --gap-ms must be")
    assert main(["--out", str(tmp_path), "--gap-ms", "nan"]) == 2
    (tmp_path / "linear_insitu_probe.csv").write_text("x\n")
    assert main(["--out", str(tmp_path)]) == 2
    assert "pass --force" in capsys.readouterr().err
