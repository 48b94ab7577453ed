"""calibrate/gpu_chain.py (a layer's GPU linears timed chained, as the runtime runs them) and --refit's chained
entries: the chain runs on the CPU here (host stamps in place of CUDA events); the refit reads hand-written rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from lia_model.models import get_model

ROOT = Path(__file__).resolve().parents[1]
CAL = ROOT / "hwprofiles" / "calibration"
PROFILE = ROOT / "hwprofiles" / "systems" / "emr-h200-kernels.yaml"
OPT30 = get_model("opt-30b")


def test_layer_bytes_and_blocks_by_hand() -> None:
    """OPT-30B (h = 7168, f = 28672, biases, LayerNorm with bias): qkv 7168 x 21504 + 21504 + 2 x 7168, out_proj
    7168^2 + 7168, fc1 7168 x 28672 + 28672 + 2 x 7168, fc2 28672 x 7168 + 7168 = 616,655,872 values, 2 bytes each:
    1,233,311,744 bytes, the sum of the four weight copies of one streamed layer in the runtime's trace on the GPU host
    (runtime/validation/gpu-chain-probe/insitu/traces.tgz: 308,353,024 + 102,774,784 + 411,127,808 + 411,056,128).
    One layer exceeds 4 x 200 MiB, so the blocks cycled are the floor of 2."""
    from calibrate.gpu_chain import blocks_to_stream, layer_bytes

    values = (
        (7168 * 21504 + 21504 + 2 * 7168) + (7168**2 + 7168) + (7168 * 28672 + 28672 + 2 * 7168) + (28672 * 7168 + 7168)
    )
    assert values == 616_655_872
    assert 2 * values == 308_353_024 + 102_774_784 + 411_127_808 + 411_056_128
    assert layer_bytes(OPT30) == 2 * values
    assert blocks_to_stream(OPT30) == 2


def test_the_chain_feeds_each_linear_its_producers_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """out_proj reads qkv's Q with the layer input as residual, fc1 reads out_proj's output, fc2 reads fc1's with
    out_proj's as residual, and the next pass's qkv reads this pass's fc2 output; the layer blocks alternate; each
    pass yields one time per sublayer."""
    import torch

    from calibrate import gpu_chain
    from runtime import kernels

    calls: list[tuple] = []
    real = {name: getattr(kernels, name) for name in ("qkv", "out_proj", "fc1", "fc2")}

    def spy(name):
        def call(*args, **kwargs):
            out = real[name](*args, **kwargs)
            calls.append((name, args, out))
            return out

        return call

    for name in real:
        monkeypatch.setattr(kernels, name, spy(name))
    model = get_model("opt-30b")
    small = model.model_copy(update={"hidden_size": 64, "ffn_size": 256, "num_heads": 4, "num_kv_heads": 4})
    blocks = gpu_chain.layer_blocks(small, 2, device="cpu")
    chain = gpu_chain.Chain(small, 3, blocks, device="cpu")
    first_h = chain.h
    times = chain.run_passes(3)
    assert {k: len(v) for k, v in times.items()} == {"qkv": 3, "out_proj": 3, "fc1": 3, "fc2": 3}
    assert all(t >= 0 for v in times.values() for t in v)
    assert [c[0] for c in calls] == ["qkv", "out_proj", "fc1", "fc2"] * 3
    for i in range(3):
        qkv, out_proj, fc1, fc2 = calls[4 * i : 4 * i + 4]
        block = blocks[i % 2]
        assert qkv[1][1] is block[next(iter(block))]  # the pass's own block (qkv's parameters)
        assert qkv[1][0] is (first_h if i == 0 else calls[4 * i - 1][2])  # the layer input: the last fc2's output
        assert out_proj[1][0] is qkv[2][0] and out_proj[1][2] is qkv[1][0]  # Q, residual = the layer input
        assert fc1[1][0] is out_proj[2]
        assert fc2[1][0] is fc1[2] and fc2[1][2] is out_proj[2]
    assert blocks[0][next(iter(blocks[0]))]["w"].data_ptr() != blocks[1][next(iter(blocks[1]))]["w"].data_ptr()
    assert isinstance(chain.h, torch.Tensor) and chain.h is calls[-1][2]


def _row(sub: str, k: int, n: int, tokens: int, seconds: float, setup: str, timing: str | None) -> dict:
    row = {
        "host": "vm",
        "family": "linear",
        "device": "gpu",
        "model": "opt-30b",
        "sublayer": sub,
        "k": k,
        "n": n,
        "weight_dtype": "bf16",
        "tokens": tokens,
        "time_s": seconds,
        "setup": setup,
    }
    if timing:
        row["timing"] = timing
    return row


def test_chained_and_isolated_estimates_split_the_rows() -> None:
    from calibrate.kernel_tables import gpu_chained_estimates, gpu_linear_estimates

    rows = [
        _row("fc2", 10, 20, 2048, 1.0e-3, "s", "chained"),
        _row("fc2", 10, 20, 2048, 1.3e-3, "s", None),
        _row("fc2", 10, 20, 4096, 2.6e-3, "s", "isolated"),
    ]
    assert gpu_chained_estimates(rows) == {("fc2", 10, 20, 2048, "bf16"): 1.0e-3}
    assert gpu_linear_estimates(rows) == {("fc2", 10, 20, 2048, "bf16"): 1.3e-3, ("fc2", 10, 20, 4096, "bf16"): 2.6e-3}


@pytest.mark.usefixtures("grouped_gqa_decode")
def test_refit_puts_chained_entries_in_place_of_isolated_ones(tmp_path: Path) -> None:
    """Two chained runs timed OPT-30B fc2 at 2048 tokens (0.95 and 1.05 ms; median 1.00 ms) and one at 4096 (2.2 ms)
    and 64 (0.05 ms); the table's isolated entries at 2048 and 4096 give way to them; at 64 tokens (under
    MEMORY_BOUND_TOKENS, a launch-bound call) the isolated entry stays, as does every other entry and table; the note names the chained runs; a second refit makes the same table and one note."""
    import pandas as pd

    from calibrate.kernel_tables import refit

    profile = tmp_path / "p.yaml"
    shutil.copy(PROFILE, profile)
    before = yaml.safe_load(profile.read_text())["kernels"]
    setup = before["setup"]
    k, n = OPT30.ffn_size, OPT30.hidden_size
    runs = []
    for i, ms in enumerate((0.95, 1.05)):
        rows = [_row("fc2", k, n, 2048, ms * 1e-3, setup, "chained")]
        if i == 0:
            rows.append(_row("fc2", k, n, 4096, 2.2e-3, setup, "chained"))
            rows.append(_row("fc2", k, n, 64, 0.05e-3, setup, "chained"))  # launch-bound: the isolated entry stays
        runs.append(tmp_path / f"chained-{i}-kernels.csv")
        pd.DataFrame(rows).to_csv(runs[-1], index=False)
    main_csv = str(CAL / "emr-h200-kernels-kernels.csv")
    refit(str(profile), main_csv, True, tuple(str(r) for r in runs))
    after = yaml.safe_load(profile.read_text())["kernels"]

    def table(kernels: dict, sub: str, kk: int, nn: int) -> dict:
        return next(
            t
            for t in kernels["gpu_linear"]
            if (t["sublayer"], t["k"], t["n"], t.get("weight_dtype", "bf16")) == (sub, kk, nn, "bf16")
        )

    old, new = table(before, "fc2", k, n), table(after, "fc2", k, n)
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
    assert table(again, "fc2", k, n) == new
    assert again["source"]["gpu_linear"].count("chained entries set") == 1


@pytest.fixture
def grouped_gqa_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU GQA decode kernel the main raw CSV measured (a refit predicts the kernel the runtime runs)."""
    monkeypatch.setenv("LIA_GQA_DECODE", "grouped")


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
