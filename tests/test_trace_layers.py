"""tools/trace_layers.py on a hand-made trace: two warm decode steps' layer 1 (streamed) by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import trace_layers  # noqa: E402


def _ev(name: str, tid: int, ts_us: float, dur_us: float, step: int, layer: int, kind: str = "streamed") -> dict:
    return {
        "name": name,
        "ph": "X",
        "tid": tid,
        "ts": ts_us,
        "dur": dur_us,
        "args": {"stage": "decode", "step": step, "layer": layer, "layer_kind": kind},
    }


def _step(step: int, t0: float) -> list[dict]:
    """Layer 1: weights 3 ms + 4 ms; GPU qkv at t0 for 0.5 ms, CPU attention 2 ms from t0 + 1, GPU fc2 1 ms from
    t0 + 4; layer 2's qkv at t0 + 6. So period 6, stream 7, chain 5 (t0 .. t0 + 5), cpu 2, gpu 1.5, gaps 1.5."""
    return [
        _ev("weights qkv L1", 2, t0 - 8000, 3000, step, 1),
        _ev("weights fc2 L1", 2, t0 - 5000, 4000, step, 1),
        _ev("qkv L1", 1, t0, 500, step, 1),
        _ev("attn_context L1", 0, t0 + 1000, 2000, step, 1),
        _ev("fc2 L1", 1, t0 + 4000, 1000, step, 1),
        _ev("qkv L2", 1, t0 + 6000, 500, step, 2),
        _ev("qkv L0", 1, t0 - 1000, 100, step, 0, kind="resident"),
    ]


def test_layer_rows_by_hand(tmp_path: Path, capsys) -> None:
    events = [e for s, t0 in ((1, 0.0), (2, 20_000.0), (3, 40_000.0), (4, 60_000.0)) for e in _step(s, t0)]
    rows = trace_layers.layer_rows(events)
    # steps 1 and 2 are skipped as warm-up; layer 0 is resident, layer 2 has no next layer
    assert [(r["step"], r["layer"]) for r in rows] == [(3, 1), (4, 1)]
    assert rows[0]["period_ms"] == pytest.approx(6.0) and rows[0]["stream_ms"] == pytest.approx(7.0)
    assert rows[0]["chain_ms"] == pytest.approx(5.0) and rows[0]["gaps_ms"] == pytest.approx(1.5)
    assert rows[0]["cpu_ms"] == pytest.approx(2.0) and rows[0]["gpu_ms"] == pytest.approx(1.5)
    path = tmp_path / "p.trace.json"
    path.write_text(json.dumps({"traceEvents": events}))
    assert trace_layers.main([str(path)]) == 0
    assert "   6.00    7.00    5.00    2.00    1.50    1.50" in capsys.readouterr().out
    assert trace_layers.main([str(tmp_path / "missing.json")]) == 2
    for name, text in (
        ("list.json", "[1, 2]"),
        ("obj.json", '{"a": 1}'),
        ("nostep.json", '[{"ph": "X", "args": {"stage": "decode"}}]'),
    ):
        (tmp_path / name).write_text(text)
        assert trace_layers.main([str(tmp_path / name)]) == 2
    assert capsys.readouterr().err.count("error: ") == 4
