"""tools/ab_compare.py: passes of one campaign under two runtime modes, compared by hand numbers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tools.ab_compare import load, main, table


def _pass(root: Path, name: str, latency_s: float, predicted_s: float, attn_ms: float, attn_pred_ms: float) -> Path:
    d = root / name
    d.mkdir()
    pd.DataFrame(
        [
            {
                "point_id": "p/optimal",
                "status": "ran",
                "measured_ttft_s": 0.1,
                "predicted_ttft_s": 0.1,
                "measured_tpot_mean_s": latency_s / 10,
                "predicted_tpot_mean_s": predicted_s / 10,
                "measured_latency_s": latency_s,
                "predicted_latency_s": predicted_s,
                "measured_decode_attn_context_ms": attn_ms,
                "predicted_decode_attn_context_ms": attn_pred_ms,
            }
        ]
    ).to_csv(d / "results.csv", index=False)
    return d


def test_each_mode_is_the_median_of_its_passes_and_is_predicted_by_its_own_passes(tmp_path: Path, capsys) -> None:
    """Part T: sdpa passes measured 1.0 s and 1.2 s (median 1.1 s), the grouped pass 1.32 s: ratio 1.1 / 1.32 =
    0.8333. Each mode's error uses that mode's prediction: sdpa predicted 1.21 s -> +10%; grouped 1.188 s -> -10%.
    The decode attention (ms per call): sdpa 2 and 4 (median 3) predicted 3.3 -> +10%; grouped 6 predicted 6."""
    dirs = [
        _pass(tmp_path, "t1-sdpa", 1.0, 1.21, 2.0, 3.3),
        _pass(tmp_path, "t2-grouped", 1.32, 1.188, 6.0, 6.0),
        _pass(tmp_path, "t3-sdpa", 1.2, 1.21, 4.0, 3.3),
    ]
    t = table(load([str(d) for d in dirs])).iloc[0]
    assert t["latency_sdpa_ms"] == pytest.approx(1100.0)
    assert t["latency_sdpa/grouped"] == pytest.approx(1.1 / 1.32)
    assert t["latency_err_sdpa"] == pytest.approx(0.10)
    assert t["latency_err_grouped"] == pytest.approx(-0.10)
    assert t["decode_attn_sdpa_ms"] == pytest.approx(3.0) and t["decode_attn_err_sdpa"] == pytest.approx(0.10)
    assert t["decode_attn_err_grouped"] == pytest.approx(0.0)
    assert main([str(d) for d in dirs]) == 0
    assert "latency_sdpa/grouped 0.833" in capsys.readouterr().out


def test_a_folder_not_named_as_a_pass_is_one_error_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "results").mkdir()
    assert main([str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "<part><N>-<mode>" in err and err.count("\n") == 1
