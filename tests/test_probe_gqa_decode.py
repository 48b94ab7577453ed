"""runtime/probe_gqa_decode.py on the CPU: both GQA decode variants timed, interleaved, and checked to agree."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from tests.toys import toy_decoder

TINY_GQA = toy_decoder(
    "tiny-gqa", ffn=160, kv_heads=2, llama=True, layers=1, hidden=64, heads=4, head_dim=16, vocab=64, context=64
)


def test_both_variants_are_timed_at_every_point_in_alternating_order():
    """Two points x two rounds x two variants = 8 rows; the round order alternates (grouped first in round 0,
    sdpa first in round 1); the summary's ratio is grouped / sdpa of the medians; LIA_GQA_DECODE is restored."""
    from runtime.probe_gqa_decode import probe, summary

    before = os.environ.get("LIA_GQA_DECODE")
    df = probe(TINY_GQA, ((1, 8), (2, 12)), rounds=2, cache_bytes=1 << 16, budget_s=0.005)
    assert os.environ.get("LIA_GQA_DECODE") == before
    assert len(df) == 8 and set(df["variant"]) == {"grouped", "sdpa"}
    first = df[df["batch"] == 1].groupby("round")["variant"].first()
    assert list(first) == ["grouped", "sdpa"]
    kv_bytes = 2 * 2 * 2 * 12 * 16 * 2  # K and V, batch 2, 2 KV heads, 12 positions, d = 16, bf16
    row = df[df["batch"] == 2].iloc[0]
    assert row["kv_gbps"] == pytest.approx(kv_bytes / row["time_s"] / 1e9)
    s = summary(df)
    one = s[s["batch"] == 1].iloc[0]
    assert one["grouped_over_sdpa"] == pytest.approx(one["grouped"] / one["sdpa"])


def test_a_model_without_grouped_heads_and_an_existing_csv_are_refused(tmp_path: Path, capsys):
    from runtime.probe_gqa_decode import CSV_NAME, main

    assert main(["--out", str(tmp_path), "--model", "opt-30b", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --model: opt-30b has no grouped query heads") and err.count("\n") == 1
    (tmp_path / CSV_NAME).write_text("x\n")
    assert main(["--out", str(tmp_path), "--quick"]) == 2
    assert capsys.readouterr().err.startswith("error: --out: ")
    assert pd.read_csv(tmp_path / CSV_NAME).columns.tolist() == ["x"]  # not overwritten
