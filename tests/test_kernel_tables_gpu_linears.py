"""--gpu-linears-only and --refit's GPU linear entries (calibrate/kernel_tables.py): no GPU needed (the GPU rows are
written by hand, the measurement is stubbed, and without CUDA the mode is refused)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import yaml

from lia_model.hardware import SystemSpec, table_seconds
from lia_model.models import get_model

ROOT = Path(__file__).resolve().parents[1]
CAL = ROOT / "hwprofiles" / "calibration"
PROFILE = ROOT / "hwprofiles" / "systems" / "emr-h200-kernels.yaml"
OPT30 = get_model("opt-30b")
OPT66 = get_model("opt-66b")


def _gpu_row(model, sub: str, k: int, n: int, tokens: int, seconds: float, setup: str, dtype: str = "bf16") -> dict:
    """One raw GPU linear row as a --gpu-linears-only run writes it (linear_rows' columns that the refit reads)."""
    return {
        "host": "vm",
        "family": "linear",
        "device": "gpu",
        "model": model.name,
        "sublayer": sub,
        "k": k,
        "n": n,
        "weight_dtype": dtype,
        "tokens": tokens,
        "time_s": seconds,
        "rounds": 1,
        "round_medians_s": f"{seconds:.6g}",
        "issue_s": 50e-6,
        "setup": setup,
    }


def _chained_row(sub: str, k: int, n: int, tokens: int, seconds: float, setup: str) -> dict:
    """One raw GPU linear row as --gpu-linears-chained writes it (calibrate/gpu_chain.py: no issue time)."""
    row = _gpu_row(OPT30, sub, k, n, tokens, seconds, setup)
    del row["issue_s"]
    return {**row, "timing": "chained"}


def _profile_copy(tmp_path: Path) -> tuple[Path, dict]:
    """A copy of the default profile to refit, and its kernels section as it was."""
    profile = tmp_path / "p.yaml"
    shutil.copy(PROFILE, profile)
    return profile, yaml.safe_load(profile.read_text())["kernels"]


def _table(kernels: dict, sub: str, k: int, n: int, dtype: str = "bf16") -> dict:
    return next(
        t
        for t in kernels["gpu_linear"]
        if (t["sublayer"], t["k"], t["n"], t.get("weight_dtype", "bf16")) == (sub, k, n, dtype)
    )


@pytest.fixture
def grouped_gqa_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU GQA decode kernel the main raw CSV below measured (a refit predicts the kernel the runtime runs)."""
    monkeypatch.setenv("LIA_GQA_DECODE", "grouped")


@pytest.mark.usefixtures("grouped_gqa_decode")
def test_refit_adds_gpu_entries_only_earlier_runs_measured_and_keeps_the_rest(tmp_path: Path) -> None:
    """Three --gpu-linears-only runs timed OPT-30B fc2 (bf16, 28672 x 7168) at 3072 tokens, which the profile's run
    did not: 1.70, 2.10 and 1.76 ms; the table gains 3072 tokens at their median, 1.76 ms, between its 2048 and 4096
    entries. The first run also timed 1024 tokens (5.0 ms): the profile's 1024 entry stays as it was, and so does
    every other entry and table. It also timed OPT-66B fc2 in int8 (36864 x 9216, no such table in the profile) at
    3072 tokens, 0.5 ms: a new table of that one entry, model opt-66b. (3072 tokens: a count the profile holds
    for no table, whatever earlier refits added.) Issue times count only at the profile's run's token counts (the first run's
    1024-token row); at 3072 tokens (large calls) they are left out, so the new table has none."""
    import pandas as pd

    from calibrate.kernel_tables import refit

    profile, before = _profile_copy(tmp_path)
    setup = before["setup"]
    k, n = OPT30.ffn_size, OPT30.hidden_size
    runs = []
    for i, ms in enumerate((1.70, 2.10, 1.76)):
        rows = [_gpu_row(OPT30, "fc2", k, n, 3072, ms * 1e-3, setup)]
        if i == 0:
            rows.append(_gpu_row(OPT30, "fc2", k, n, 1024, 5.0e-3, setup))
            rows.append(_gpu_row(OPT66, "fc2", OPT66.ffn_size, OPT66.hidden_size, 3072, 0.5e-3, setup, "int8"))
        runs.append(tmp_path / f"gpu-{i}-kernels.csv")
        pd.DataFrame(rows).to_csv(runs[-1], index=False)
    refit(str(profile), str(CAL / "emr-h200-kernels-kernels.csv"), True, tuple(str(r) for r in runs))
    after = yaml.safe_load(profile.read_text())["kernels"]

    old, new = _table(before, "fc2", k, n), _table(after, "fc2", k, n)
    assert new["tokens"] == sorted(old["tokens"] + [3072])
    assert new["seconds"][new["tokens"].index(3072)] == pytest.approx(1.76e-3)
    for t, s in zip(old["tokens"], old["seconds"]):  # every entry the profile held, 1024 tokens included
        assert new["seconds"][new["tokens"].index(t)] == s
    assert new["model"] == old["model"] == "opt-30b"
    # every other table as it was but for issue_s (the median over the runs, as before); the new one at the end
    assert len(after["gpu_linear"]) == len(before["gpu_linear"]) + 1
    for o, a in zip(before["gpu_linear"], after["gpu_linear"]):
        if o is not old:
            assert {**a, "issue_s": None} == {**o, "issue_s": None}
    assert after["gpu_linear"][-1] == {
        "sublayer": "fc2",
        "k": OPT66.ffn_size,
        "n": OPT66.hidden_size,
        "model": "opt-66b",
        "weight_dtype": "int8",
        "tokens": [3072],
        "seconds": [0.5e-3],
    }
    note = after["source"]["gpu_linear"]
    assert "entries added" in note and "(3072; 2 entries)" in note
    assert "gpu-0-kernels.csv, gpu-1-kernels.csv, gpu-2-kernels.csv" in note
    # the GPU-only runs hold no CPU entry: the CPU note names the runs that did
    assert "gpu-0-kernels.csv" not in after["source"]["cpu_linear"]
    # 3500 tokens by hand: log-log between 3072 (1.76 ms) and 4096 (the profile's entry)
    s4096 = old["seconds"][old["tokens"].index(4096)]
    w = math.log(3500 / 3072) / math.log(4096 / 3072)
    table = SystemSpec.model_validate(yaml.safe_load(profile.read_text())).kernels.linear("gpu", "fc2", k, n)
    assert table_seconds(table, 3500) == pytest.approx(1.76e-3 * (s4096 / 1.76e-3) ** w)
    # a refit again replaces its note, and the added entry is the same median
    refit(str(profile), str(CAL / "emr-h200-kernels-kernels.csv"), True, tuple(str(r) for r in runs))
    again = yaml.safe_load(profile.read_text())["kernels"]
    assert _table(again, "fc2", k, n) == _table(after, "fc2", k, n)
    assert again["source"]["gpu_linear"].count("entries added") == 1


@pytest.mark.usefixtures("grouped_gqa_decode")
def test_refit_refuses_a_gpu_only_run_of_another_cpu_setup(tmp_path: Path) -> None:
    import pandas as pd

    from calibrate.kernel_tables import refit
    from lia_model.errors import LiaInputError

    profile = tmp_path / "p.yaml"
    shutil.copy(PROFILE, profile)
    other = tmp_path / "gpu-kernels.csv"
    pd.DataFrame([_gpu_row(OPT30, "fc2", OPT30.ffn_size, OPT30.hidden_size, 2048, 1e-3, "threads=7")]).to_csv(
        other, index=False
    )
    with pytest.raises(LiaInputError, match="measured its GPU kernels under"):
        refit(str(profile), str(CAL / "emr-h200-kernels-kernels.csv"), True, (str(other),))


def test_gpu_linear_estimates_are_the_rows_times() -> None:
    """A finished run's rows ("gpu") and a partial CSV's ("cuda") alike; CPU rows are not GPU entries."""
    from calibrate.kernel_tables import gpu_linear_estimates

    rows = [
        {**_gpu_row(OPT30, "fc2", 10, 20, 2048, 1.5e-3, "s"), "device": "cuda"},
        _gpu_row(OPT30, "qkv", 30, 40, 512, 0.25e-3, "s", "fp8_e4m3"),
        {**_gpu_row(OPT30, "fc2", 10, 20, 2048, 9.0, "s"), "device": "cpu"},
    ]
    assert gpu_linear_estimates(rows) == {
        ("fc2", 10, 20, 2048, "bf16"): 1.5e-3,
        ("qkv", 30, 40, 512, "fp8_e4m3"): 0.25e-3,
    }


def test_gpu_linears_only_times_the_full_runs_gpu_linears(tmp_path: Path, monkeypatch) -> None:
    """With CUDA (stubbed here, with the measurement): linear_rows on "cuda" at the given tokens, in one round under
    the full run's budget and setup, once per weight dtype, sharing one set of measured shapes; the CSV names the
    GPU "gpu" as a finished run's does. Without --force an existing CSV is refused."""
    import pandas as pd
    import torch

    import calibrate.kernel_tables as kt
    from lia_model.errors import LiaInputError

    calls = []

    def fake_rows(models, device, tokens, llc, budget, setup, seen, rounds, dtype):
        calls.append((device, tokens, budget, rounds, dtype, id(seen)))
        return [{"family": "linear", "device": device, "weight_dtype": dtype, "time_s": 1e-3, "setup": setup}]

    monkeypatch.setattr(kt, "linear_rows", fake_rows)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "fake GPU")
    path = kt.measure_linears(["opt-30b"], (), (512, 2048), tmp_path, "g", False, ("bf16", "int8"))
    assert [c[:5] for c in calls] == [("cuda", (512, 2048), 0.08, 1, "bf16"), ("cuda", (512, 2048), 0.08, 1, "int8")]
    assert calls[0][5] == calls[1][5]
    frame = pd.read_csv(path)
    assert list(frame["device"]) == ["gpu", "gpu"] and list(frame["weight_dtype"]) == ["bf16", "int8"]
    assert frame["setup"].nunique() == 1
    with pytest.raises(LiaInputError, match="exists"):
        kt.measure_linears(["opt-30b"], (), (512,), tmp_path, "g", False)


@pytest.mark.parametrize("extra", [[], ["--cpu-linears-only", "2,8"]])
def test_gpu_linears_only_without_cuda_is_one_error_line(extra, tmp_path: Path, capsys) -> None:
    pytest.importorskip("torch")
    import torch

    from calibrate.kernel_tables import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["--gpu-linears-only", "512,2048", *extra, "--name", "n", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --gpu-linears-only: ") and "CUDA" in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written


@pytest.mark.parametrize(
    "args, field",
    [
        (["--gpu-linears-only", "0", "--name", "n"], "error: --gpu-linears-only: '0' is not a list of token counts"),
        (["--gpu-linears-only", "abc", "--name", "n"], "error: --gpu-linears-only: 'abc'"),
        (["--gpu-linears-only", "nan", "--name", "n"], "error: --gpu-linears-only: 'nan'"),
        (["--gpu-linears-only", "512,-4", "--name", "n"], "error: --gpu-linears-only: '512,-4'"),
        (["--gpu-linears-only", "", "--name", "n"], "error: --gpu-linears-only: ''"),
        (["--gpu-linears-only", "512", "--cpu-linears-only", "x", "--name", "n"], "error: --cpu-linears-only: 'x'"),
        (["--gpu-linears-only", "512"], "error: --name: "),
    ],
)
def test_gpu_linears_only_refuses_bad_input(args, field, tmp_path: Path, capsys) -> None:
    from calibrate.kernel_tables import main

    assert main([*args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(field) and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.usefixtures("grouped_gqa_decode")
def test_a_run_of_only_extra_token_counts_adds_no_issue_time(tmp_path: Path) -> None:
    """A --gpu-linears-only run at 3072 tokens alone (issue time 0.3 ms, of large calls) leaves every table's
    issue_s as a refit without it makes it."""
    import pandas as pd

    from calibrate.kernel_tables import refit

    setup = yaml.safe_load(PROFILE.read_text())["kernels"]["setup"]
    row = _gpu_row(OPT30, "fc2", OPT30.ffn_size, OPT30.hidden_size, 3072, 1.76e-3, setup)
    extra = tmp_path / "gpu-kernels.csv"
    pd.DataFrame([{**row, "issue_s": 3e-4}]).to_csv(extra, index=False)
    issue = {}
    for name, earlier in (("without", ()), ("with", (str(extra),))):
        profile = tmp_path / f"{name}.yaml"
        shutil.copy(PROFILE, profile)
        refit(str(profile), str(CAL / "emr-h200-kernels-kernels.csv"), True, earlier)
        tables = yaml.safe_load(profile.read_text())["kernels"]["gpu_linear"]
        issue[name] = [t.get("issue_s") for t in tables]
    assert issue["with"] == issue["without"]


# ----------------------------------------------------------------- chained entries (--gpu-linears-chained)


def test_chained_and_isolated_estimates_split_the_rows() -> None:
    from calibrate.kernel_tables import gpu_linear_estimates

    rows = [
        _chained_row("fc2", 10, 20, 2048, 1.0e-3, "s"),
        _gpu_row(OPT30, "fc2", 10, 20, 2048, 1.3e-3, "s"),
        {**_gpu_row(OPT30, "fc2", 10, 20, 4096, 2.6e-3, "s"), "timing": "isolated"},
    ]
    assert gpu_linear_estimates(rows, chained=True) == {("fc2", 10, 20, 2048, "bf16"): 1.0e-3}
    assert gpu_linear_estimates(rows) == {("fc2", 10, 20, 2048, "bf16"): 1.3e-3, ("fc2", 10, 20, 4096, "bf16"): 2.6e-3}


@pytest.mark.usefixtures("grouped_gqa_decode")
def test_refit_puts_chained_entries_in_place_of_isolated_ones(tmp_path: Path) -> None:
    """Two chained runs timed OPT-30B fc2 at 2048 tokens (0.95 and 1.05 ms; median 1.00 ms) and one at 4096 (2.2 ms)
    and 64 (0.05 ms); the table's isolated entries at 2048 and 4096 give way to them; at 64 tokens (under
    MEMORY_BOUND_TOKENS, a launch-bound call) the isolated entry stays, as does every other entry and table; the note names the chained runs; a second refit makes the same table and one note."""
    import pandas as pd

    from calibrate.kernel_tables import refit

    profile, before = _profile_copy(tmp_path)
    setup = before["setup"]
    k, n = OPT30.ffn_size, OPT30.hidden_size
    runs = []
    for i, ms in enumerate((0.95, 1.05)):
        rows = [_chained_row("fc2", k, n, 2048, ms * 1e-3, setup)]
        if i == 0:
            rows.append(_chained_row("fc2", k, n, 4096, 2.2e-3, setup))
            rows.append(_chained_row("fc2", k, n, 64, 0.05e-3, setup))  # launch-bound: the isolated entry stays
        runs.append(tmp_path / f"chained-{i}-kernels.csv")
        pd.DataFrame(rows).to_csv(runs[-1], index=False)
    main_csv = str(CAL / "emr-h200-kernels-kernels.csv")
    refit(str(profile), main_csv, True, tuple(str(r) for r in runs))
    after = yaml.safe_load(profile.read_text())["kernels"]

    old, new = _table(before, "fc2", k, n), _table(after, "fc2", k, n)
    assert new["tokens"] == old["tokens"]
    for t, s in zip(old["tokens"], old["seconds"]):
        expected = {2048: 1.00e-3, 4096: 2.2e-3}.get(t, s)
        assert new["seconds"][new["tokens"].index(t)] == pytest.approx(expected)
    for o, a in zip(before["gpu_linear"], after["gpu_linear"]):
        if o is not old:
            assert {**a, "issue_s": None} == {**o, "issue_s": None}
    note = after["source"]["gpu_linear"]
    assert "chained entries set" in note and "2 bf16 entries at 256 tokens and more (token counts 2048, 4096)" in note
    assert "chained-0-kernels.csv, chained-1-kernels.csv" in note
    refit(str(profile), main_csv, True, tuple(str(r) for r in runs))
    again = yaml.safe_load(profile.read_text())["kernels"]
    assert _table(again, "fc2", k, n) == new
    assert again["source"]["gpu_linear"].count("chained entries set") == 1


def test_gpu_linears_chained_without_cuda_is_one_error_line(tmp_path: Path, capsys) -> None:
    import torch

    from calibrate.kernel_tables import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["--gpu-linears-chained", "256,2048", "--name", "n", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --gpu-linears-chained: ") and "CUDA" in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("value", ["0", "abc", "nan", "", "256,-1"])
def test_gpu_linears_chained_refuses_bad_token_counts(value: str, tmp_path: Path, capsys) -> None:
    from calibrate.kernel_tables import main

    assert main(["--gpu-linears-chained", value, "--name", "n", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --gpu-linears-chained: '{value}'") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())
