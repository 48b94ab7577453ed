"""runtime.rerun_flagged: the points file of the flagged points, its split into parts, and the relabelling of a
re-run's rows with the original point ids, on hand-made results tables."""

from __future__ import annotations

import json

import pandas as pd
import yaml

from runtime.points import load_points_file
from runtime.rerun_flagged import flagged_groups, main, relabel, split

PLAN = {"prefill_policy": [0, 1, 1, 0, 0, 0], "decode_policy": [0, 1, 1, 0, 0, 0], "gpu_resident_layers": 2}


def _row(group, point, label, flag, wall, plan=PLAN, status="ran"):
    return {
        "point_id": f"{group}/{point}",
        "group_id": group,
        "status": status,
        "spread_flag": flag,
        "plan_label": label,
        "plan_json": json.dumps({**plan, "label": label}),
        "model": "opt-30b",
        "num_layers": 4,
        "batch": 2,
        "input_len": 32,
        "output_len": 4,
        "gpu_memory_gib": 6.0,
        "point_wall_s": wall,
    }


def _table() -> pd.DataFrame:
    other = {**PLAN, "decode_policy": [1, 1, 1, 1, 1, 1]}
    return pd.DataFrame(
        [
            _row("A", "optimal", "optimum", True, 10.0),  # an optimum run as "optimal", labelled "optimum"
            _row("A", "flexgen", "flexgen", False, 5.0, other),
            _row("B", "lia", "lia", True, 30.0),
            _row("B", "x", "x", True, 1.0, other, status="skipped"),
            _row("C", "lia", "lia", True, 20.0),
        ]
    )


def test_flagged_points_become_inline_plans_with_their_point_ids(tmp_path):
    groups = flagged_groups(_table())
    assert [g["id"] for g in groups] == ["A", "C", "B"]  # by measured wall time of the flagged points
    a = groups[0]
    assert [p["label"] for p in a["plans"]] == ["optimal"]  # the point id's label, so a re-run replaces it
    assert a["plans"][0]["decode_policy"] == [0, 1, 1, 0, 0, 0] and a["gpu_memory_gib"] == 6.0
    parts = split(groups, 2)  # largest first to the lighter part: B (30) | C (20) then A (10)
    assert [[g["id"] for g in p] for p in parts] == [["B"], ["A", "C"]]
    src = tmp_path / "results.csv"
    _table().to_csv(src, index=False)
    out = tmp_path / "points.yaml"
    assert main(["--from-csv", str(src), "--out", str(out), "--parts", "2", "--part", "2"]) == 0
    loaded = load_points_file(out)  # the runtime's own loader accepts it
    assert [g.id for g in loaded] == ["A", "C"]
    assert "nothing is chosen by its error" in yaml.safe_load(out.read_text())["description"]
    assert main(["--from-csv", str(src), "--out", str(out)]) == 2  # no overwrite without --force


def test_relabel_gives_rerun_rows_the_original_point_ids():
    original = _table()
    rerun = pd.DataFrame([_row("A", "optimum", "optimum", False, 9.0), _row("C", "lia", "lia", False, 9.0)])
    fixed, changed = relabel(rerun, original)
    assert changed == 1
    assert list(fixed["point_id"]) == ["A/optimal", "C/lia"]
    assert list(fixed["point_wall_s"]) == [9.0, 9.0]  # measurements untouched


def test_bad_inputs_get_one_error_line(tmp_path, capsys):
    """A binary file, an empty one and a table without the result columns: exit 2 and one error line each."""
    binary, empty, other = tmp_path / "bin.csv", tmp_path / "empty.csv", tmp_path / "other.csv"
    binary.write_bytes(b"\x00\x01\xff\xfe")
    empty.write_text("")
    other.write_text("a,b\n1,2\n")
    for argv in (
        ["--from-csv", str(binary), "--out", str(tmp_path / "p.yaml")],
        ["--from-csv", str(empty), "--out", str(tmp_path / "p.yaml")],
        ["--from-csv", str(other), "--out", str(tmp_path / "p.yaml")],
        ["--relabel", str(binary), "--against", str(other), "--out", str(tmp_path / "r.csv")],
        ["--relabel", str(other), "--against", str(other), "--out", str(tmp_path / "r.csv")],
        ["--relabel", str(other), "--out", str(tmp_path / "r.csv")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")
    assert not (tmp_path / "p.yaml").exists() and not (tmp_path / "r.csv").exists()


def test_a_flagged_point_keeps_its_weight_dtype(tmp_path):
    """A point that ran int8 weights is re-run with int8 weights (its plan is priced at the dtype it ran), and the
    runtime's loader reads the dtype back; a results file without the column still works (test above)."""
    table = _table()
    table["weight_dtype"] = ["bf16", "bf16", "int8", "int8", "fp8_e4m3"]
    groups = {g["id"]: g for g in flagged_groups(table)}
    assert groups["A"]["weight_dtype"] == "bf16" and groups["B"]["weight_dtype"] == "int8"
    assert groups["C"]["weight_dtype"] == "fp8_e4m3"
    src, out = tmp_path / "results.csv", tmp_path / "points.yaml"
    table.to_csv(src, index=False)
    assert main(["--from-csv", str(src), "--out", str(out)]) == 0
    assert {g.id: g.weight_dtype for g in load_points_file(out)} == {"A": "bf16", "C": "fp8_e4m3", "B": "int8"}


def test_before_wide_pitched_lists_prefill_writebacks_run_before_the_rule():
    """--select before-wide-pitched: a GPU qkv with CPU prefill attention (score or context) whose row does not
    record the 8192 B pitched rule; a CPU qkv, GPU attention or a row with the rule is left out."""
    rule = "contiguous landing + host scatter where CPU attention reads next and rows are under 8192 B, else pitched"
    old = "contiguous landing + host scatter where CPU attention reads next, else pitched"

    def row(group, qkv, score, ctx, writeback):
        r = _row(group, "p", "p", False, 1.0)
        r.update(
            plan_prefill_qkv_device=qkv,
            plan_prefill_attn_score_device=score,
            plan_prefill_attn_context_device=ctx,
            kv_writeback=writeback,
        )
        return r

    table = pd.DataFrame(
        [
            row("old-score", "gpu", "cpu", "cpu", old),
            row("no-column-yet", "gpu", "cpu", "cpu", None),  # written before the column existed
            row("old-context", "gpu", "gpu", "cpu", old),
            row("new", "gpu", "cpu", "cpu", rule),
            row("cpu-qkv", "cpu", "cpu", "cpu", old),
            row("gpu-attention", "gpu", "gpu", "gpu", old),
        ]
    )
    ids = sorted(g["id"] for g in flagged_groups(table, "before-wide-pitched"))
    assert ids == ["no-column-yet", "old-context", "old-score"]
    assert [g["id"] for g in flagged_groups(table)] == []  # none flagged
