"""``lia study NAME --systems --models --grid``: your own grid on top of the built-in one."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest

from lia_model.cli import app
from lia_model.cli.common import run_guarded
from lia_model.errors import LiaInputError
from studies import cost, cxl, policy_map
from studies.gridspec import custom_grid
from studies.registry import STUDIES


def run_lia(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["lia", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run_guarded(app)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def test_systems_models_and_file_replace_exactly_their_fields(tmp_path: Path):
    f = tmp_path / "g.yaml"
    f.write_text("batches: [1, 8, 64]\ninput_len: 128\n")
    g = custom_grid(STUDIES["cxl"], cxl.FULL, systems="spr-h100, gnr-a100", models="opt-66b", grid_file=f)
    assert g == cxl.Grid(
        systems=("spr-h100", "gnr-a100"),
        models=("opt-66b",),
        batches=(1, 8, 64),
        input_len=128,
        output_len=cxl.FULL.output_len,
    )
    # the cost study's systems are its machines; a single-model study takes one model
    c = custom_grid(STUDIES["cost"], cost.REDUCED, systems="gh200,dgx-a100")
    assert c.machines == ("gh200", "dgx-a100") and c.models == cost.REDUCED.models
    f.write_text("lengths: [[256, 32], [1024, 128]]\n")
    assert custom_grid(STUDIES["cost"], cost.REDUCED, grid_file=f).lengths == ((256, 32), (1024, 128))
    p = custom_grid(STUDIES["policy-map"], policy_map.REDUCED, models="opt-30b")
    assert p.model == "opt-30b"


@pytest.mark.parametrize(
    "kwargs, text, words",
    [
        ({"systems": "nope-x"}, None, ["--systems", "unknown system 'nope-x'"]),
        ({"models": "opt-9b"}, None, ["--models", "unknown model 'opt-9b'"]),
        ({"systems": "gh200"}, None, ["no 'gh200-cxl'"]),
        ({}, "batchez: [1]\n", ["batchez", "no field", "batches"]),
        ({}, "batches: [0, 8]\n", ["batches", "at least 1"]),
        ({}, "batches: 8\n", ["batches", "non-empty list"]),
        ({}, "input_len: big\n", ["input_len", "whole number"]),
        ({}, "- 1\n- 2\n", ["no mapping"]),
    ],
)
def test_bad_grids_name_the_field(tmp_path: Path, kwargs, text, words):
    f = None
    if text is not None:
        f = tmp_path / "g.yaml"
        f.write_text(text)
    with pytest.raises(LiaInputError) as err:
        custom_grid(STUDIES["cxl"], cxl.FULL, grid_file=f, **kwargs)
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize(
    "text, words",
    [
        ("lengths: [[32]]\n", ["lengths", "each entry must have 2 values", "[32]"]),
        ("lengths: [[32, 32, 32]]\n", ["lengths", "each entry must have 2 values"]),
        ("lengths: [[256, 0]]\n", ["lengths", "at least 1"]),
        ("scenarios: [foo]\n", ["scenarios", "unknown value 'foo'", "latency_b1"]),
    ],
)
def test_bad_e2e_grids_name_the_field_before_any_worker_runs(tmp_path: Path, text, words):
    """(These reached the study's workers as a KeyError or an unpacking ValueError: tracebacks.)"""
    from studies import e2e

    f = tmp_path / "g.yaml"
    f.write_text(text)
    with pytest.raises(LiaInputError) as err:
        custom_grid(STUDIES["e2e"], e2e.REDUCED, grid_file=f)
    for w in words:
        assert w in str(err.value)
    f.write_text("lengths: [[256, 32], [1024, 128]]\nscenarios: [latency_b1]\n")
    g = custom_grid(STUDIES["e2e"], e2e.REDUCED, grid_file=f)
    assert g.lengths == ((256, 32), (1024, 128)) and g.scenarios == ("latency_b1",)


def test_single_model_study_refuses_two_models_and_microbench_has_no_systems():
    with pytest.raises(LiaInputError, match="takes one model"):
        custom_grid(STUDIES["policy-map"], policy_map.FULL, models="opt-30b,opt-66b")
    code, _, err = run_lia(["study", "microbench", "--systems", "spr-h100", "--out", "/tmp/unused-dir"])
    assert code == 2 and err.startswith("error: --systems: the microbench study has no systems axis")
    code, _, err = run_lia(["study", "all", "--models", "opt-30b"])
    assert code == 2 and err.count("\n") == 1


def test_a_custom_grid_runs_end_to_end(tmp_path: Path):
    f = tmp_path / "g.yaml"
    f.write_text("batches: [1, 4]\ninput_lens: [64]\noutput_len: 8\n")
    code, _, err = run_lia(
        [
            "study",
            "policy-map",
            "--systems",
            "spr-h100",
            "--models",
            "opt-30b",
            "--grid",
            str(f),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0, err
    import pandas as pd

    frame = pd.read_csv(tmp_path / "out" / "policy-map.csv")
    assert set(frame["system"]) == {"spr-h100"} and set(frame["batch"]) == {1, 4}
    assert set(frame["input_len"]) == {64} and set(frame["model"]) == {"opt-30b"}
    assert (tmp_path / "out" / "policy-map.png").exists()
