"""Kernel tables (one kernel truth): interpolation, the cost model reading the runtime's measured kernels,
the attention fit, and a quick measurement run of the runtime's own kernels on this machine.

Hand numbers: every expected value below is computed in the test from the formula in the docstring of the
function under test (lia_model.hardware.table_seconds, costterms._apply_kernel_tables), not read back from
the code."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from lia_model.accounting import attention_bytes_flops, attention_rows, sublayer_work
from lia_model.costmodel import predict
from lia_model.costterms import CostMode, StageContext, streamed_layer_terms, sublayer_times
from lia_model.hardware import LinearTable, SystemSpec, table_seconds
from lia_model.models import get_model
from lia_model.plan import ALL_CPU, CpuIsa, Device, HostTier, Plan
from lia_model.profiles import system_dict
from lia_model.sublayers import SUBLAYERS, Sublayer
from lia_model.workload import make_workload

ROOT = Path(__file__).resolve().parents[1]
OPT30 = get_model("opt-30b")


@pytest.fixture
def grouped_gqa_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime's CPU GQA decode kernel set to the grouped pair, the only one the committed raw CSVs before the
    sixteenth session measured (a refit predicts the kernel the runtime runs)."""
    monkeypatch.setenv("LIA_GQA_DECODE", "grouped")


def test_table_interpolation_is_log_linear_with_hand_numbers() -> None:
    t = LinearTable(sublayer="fc2", k=8, n=8, tokens=[1, 4, 16], seconds=[1e-3, 2e-3, 8e-3])
    assert table_seconds(t, 1) == pytest.approx(1e-3)
    assert table_seconds(t, 2) == pytest.approx(1e-3 * math.sqrt(2))  # halfway in log tokens: geometric mean
    assert table_seconds(t, 8) == pytest.approx(math.sqrt(2e-3 * 8e-3))
    assert table_seconds(t, 64) == pytest.approx(8e-3 * 4)  # past the table: proportional
    assert table_seconds(t, 0.5) == pytest.approx(1e-3)  # below: the first point


def test_a_malformed_table_is_rejected() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        LinearTable(sublayer="fc2", k=8, n=8, tokens=[4, 1], seconds=[1e-3, 2e-3])
    with pytest.raises(ValueError, match="positive and finite|finite number"):  # every profile number is finite
        LinearTable(sublayer="fc2", k=8, n=8, tokens=[1, 4], seconds=[1e-3, float("nan")])


FUSED = {"overhead_s": 1e-4, "s_per_byte": 1e-11, "s_per_flop": 0.0, "s_per_row": 1e-8}
SPLIT = {"overhead_s": 2e-4, "s_per_byte": 2e-11, "s_per_flop": 0.0, "s_per_row": 0.0}


def _system_with_tables(slowdown: float = 1.5, **extra: float) -> SystemSpec:
    data = system_dict("spr-h100")
    fc2_k, fc2_n = OPT30.ffn_size, OPT30.hidden_size
    qkv_n = OPT30.q_dim + 2 * OPT30.kv_dim
    fits = []
    for kind, coef in (("fused", FUSED), ("score", SPLIT), ("context", SPLIT)):
        for phase in ("decode", "prefill"):
            fits.append(
                {
                    "kind": kind,
                    "phase": phase,
                    "heads": "mha",
                    **coef,
                    "fit_median_rel_err": 0.0,
                    "fit_max_rel_err": 0.0,
                    "points": 4,
                }
            )
    data["kernels"] = {
        "cpu_isa": "amx_bf16",
        "setup": "test",
        "cpu_linear": [
            {"sublayer": "fc2", "k": fc2_k, "n": fc2_n, "tokens": [1, 64], "seconds": [0.010, 0.020]},
            {"sublayer": "qkv", "k": OPT30.hidden_size, "n": qkv_n, "tokens": [1, 64], "seconds": [0.004, 0.008]},
        ],
        "gpu_linear": [{"sublayer": "fc2", "k": fc2_k, "n": fc2_n, "tokens": [1, 64], "seconds": [1e-5, 2e-4]}],
        "cpu_attention": fits,
        "gpu_attention": fits,
        "gpu_dispatch_us": 50.0,
        "cpu_slowdown_beside_dma": slowdown,
        **extra,
        "source": {
            k: "test"
            for k in (
                "cpu_linear",
                "gpu_linear",
                "cpu_attention",
                "gpu_attention",
                "gpu_dispatch_us",
                "cpu_slowdown_beside_dma",
                *extra,
            )
        },
    }
    return SystemSpec.model_validate(data)


def _ctx(batch: int, q: int, contexts: tuple[int, ...]) -> StageContext:
    return StageContext(
        batch=batch,
        q=q,
        contexts=contexts,
        minibatches=1,
        weight_tier=HostTier.DDR,
        kv_tier=HostTier.DDR,
        cpu_isa=CpuIsa.AMX_BF16,
        pinned_weights=True,
        overlap=True,
        mode=CostMode.OVERLAP,
    )


def test_sublayer_times_read_the_tables() -> None:
    system = _system_with_tables()
    ctx = _ctx(16, 1, (100,))
    t = sublayer_times(system, OPT30, ctx, 16)
    i_fc2, i_qkv, i_out = (SUBLAYERS.index(s) for s in (Sublayer.FC2, Sublayer.QKV, Sublayer.OUT_PROJ))
    # CPU fc2 at 16 tokens: log-linear between (1, 10 ms) and (64, 20 ms): 10 ms * 2^(log(16)/log(64)) = 10 * 2^(2/3)
    want = 0.010 * 2 ** (math.log(16) / math.log(64))
    assert t.cpu_s[i_fc2, 0] == pytest.approx(want)
    # GPU fc2: the table (1e-5 .. 2e-4) interpolated is below the 50 us dispatch floor at 1 token only
    assert sublayer_times(system, OPT30, _ctx(1, 1, (100,)), 1).gpu_s[i_fc2, 0] == pytest.approx(50e-6)
    g16 = 1e-5 * 20 ** (math.log(16) / math.log(64))
    assert t.gpu_s[i_fc2, 0] == pytest.approx(max(g16, 50e-6))
    # out_proj has no table: the roofline (unchanged), which differs from any table value above
    base = sublayer_times(SystemSpec.model_validate(system_dict("spr-h100")), OPT30, ctx, 16)
    assert t.cpu_s[i_out, 0] == pytest.approx(base.cpu_s[i_out, 0])
    assert t.cpu_s[i_qkv, 0] != pytest.approx(base.cpu_s[i_qkv, 0])


def test_fused_attention_is_one_kernel_when_score_and_context_share_a_device() -> None:
    system = _system_with_tables()
    b, s = 16, 100
    t = sublayer_times(system, OPT30, _ctx(b, 1, (s,)), b)
    by, fl = attention_bytes_flops(OPT30, b, 1, np.asarray([float(s)]), "fused")
    rows = attention_rows(OPT30, b, 1)
    fused = FUSED["overhead_s"] + FUSED["s_per_byte"] * by[0] + FUSED["s_per_row"] * rows
    work = sublayer_work(OPT30, b, 1, np.asarray([float(s)]))
    score_b = work[Sublayer.ATTN_SCORE].kv_read_bytes + work[Sublayer.ATTN_SCORE].act_bytes
    ctx_b = work[Sublayer.ATTN_CONTEXT].kv_read_bytes + work[Sublayer.ATTN_CONTEXT].act_bytes
    split_score = SPLIT["overhead_s"] + SPLIT["s_per_byte"] * float(np.asarray(score_b).ravel()[0])
    split_ctx = SPLIT["overhead_s"] + SPLIT["s_per_byte"] * float(np.asarray(ctx_b).ravel()[0])
    i_s, i_c = SUBLAYERS.index(Sublayer.ATTN_SCORE), SUBLAYERS.index(Sublayer.ATTN_CONTEXT)
    assert t.cpu_s[i_s, 0] == pytest.approx(split_score) and t.cpu_s[i_c, 0] == pytest.approx(split_ctx)
    assert t.cpu_s[i_s, 0] + t.cpu_s[i_c, 0] + t.cpu_fused_delta_s[0] == pytest.approx(fused)
    # the breakdown as the runtime records it: score 0, context the fused kernel (both on the CPU)
    both_cpu = (Device.GPU, Device.CPU, Device.CPU, Device.GPU, Device.GPU, Device.GPU)
    assert t.compute_s(i_s, both_cpu)[0] == 0.0 and t.compute_s(i_c, both_cpu)[0] == pytest.approx(fused)
    split = (Device.GPU, Device.CPU, Device.GPU, Device.GPU, Device.GPU, Device.GPU)
    assert t.compute_s(i_s, split)[0] == pytest.approx(split_score)
    # the affine forms charge the same: CPU busy time of (0,1,1,0,0,0) minus that of (0,1,0,0,0,0)
    terms = streamed_layer_terms(system, OPT30, _ctx(b, 1, (s,)))
    from lia_model.costterms import policy_features

    cpu_busy = terms.resources[next(r for r in terms.resources if r.value == "cpu")]
    assert cpu_busy.evaluate(policy_features(both_cpu))[0] == pytest.approx(fused)
    assert cpu_busy.evaluate(policy_features(split))[0] == pytest.approx(split_score)


def test_cpu_work_beside_weight_dma_is_charged_with_the_calibrated_slowdown() -> None:
    """Decode at B = 64 (memory-bound CPU kernels): qkv, attention and fc2 on the CPU, out_proj and fc1 streamed
    (W > 0). With s = 2 the CPU's n cpu_c seconds grow by min((s - 1) n cpu_c, (1 - 1/s) W), so the layer takes
    at least cpu + min(cpu, W / 2), and the scale the schedule applies is 1 + that / cpu."""
    system = _system_with_tables(slowdown=2.0)
    ctx = _ctx(64, 1, (40,))
    terms = streamed_layer_terms(system, OPT30, ctx)
    from lia_model.costterms import policy_features
    from lia_model.plan import policy_index

    p = (Device.CPU, Device.CPU, Device.CPU, Device.GPU, Device.GPU, Device.CPU)
    f = policy_features(p)
    cpu = terms.resources[next(r for r in terms.resources if r.value == "cpu")].evaluate(f)[0]
    w = float(
        terms.weight_h2d_s[SUBLAYERS.index(Sublayer.OUT_PROJ)] + terms.weight_h2d_s[SUBLAYERS.index(Sublayer.FC1)]
    )
    extra = min(cpu, 0.5 * w)
    assert extra > 0
    assert terms.cpu_scale[policy_index(p), 0] == pytest.approx(1.0 + extra / cpu)
    assert terms.layer_time(f)[0] >= cpu + extra - 1e-12
    # without tables the CPU is not slowed (datasheet profiles keep their roofline model)
    plain = streamed_layer_terms(SystemSpec.model_validate(system_dict("spr-h100")), OPT30, ctx)
    assert np.all(plain.cpu_scale == 1.0)


def test_compute_bound_cpu_kernels_keep_their_speed_beside_the_weight_dma() -> None:
    """Prefill of 512 tokens: the CPU linears are compute-bound (their rows >= 256), so the calibrated slowdown
    beside the weight DMA, which contends for DDR bandwidth, leaves them alone: the layer time of qkv on the CPU
    with the rest streamed is the same at s = 1 and s = 3. In decode at B = 64 (memory-bound) it is not, and
    neither for CPU attention in the same prefill (no measurement exempts attention)."""
    from lia_model.costterms import policy_features

    p = (Device.CPU, Device.GPU, Device.GPU, Device.GPU, Device.GPU, Device.GPU)
    f = policy_features(p)
    prefill = _ctx(1, 512, (512,))
    fast, slow = (streamed_layer_terms(_system_with_tables(slowdown=s), OPT30, prefill) for s in (1.0, 3.0))
    assert fast.times.cpu_compute_bound[0, 0]
    assert slow.layer_time(f)[0] == pytest.approx(fast.layer_time(f)[0], rel=1e-12)
    decode = _ctx(64, 1, (40,))
    fast, slow = (streamed_layer_terms(_system_with_tables(slowdown=s), OPT30, decode) for s in (1.0, 3.0))
    assert not fast.times.cpu_compute_bound[0, 0]
    assert slow.layer_time(f)[0] > fast.layer_time(f)[0]
    # the schedule's scale of each vector's slowed CPU work: 1 for qkv alone on the CPU, above 1 for attention
    slow = streamed_layer_terms(_system_with_tables(slowdown=3.0), OPT30, prefill)
    assert slow.cpu_scale[0b000001, 0] == 1.0
    assert slow.cpu_scale[0b000110, 0] > 1.0


def test_fit_attention_recovers_known_coefficients() -> None:
    """Rows generated exactly from t = 2e-5 + 3e-11 bytes + 4e-14 FLOPs + 5e-8 rows: NNLS gets them back."""
    from calibrate.kernel_tables import fit_attention

    llama = get_model("llama-2-70b")
    rows = []
    for b, s in ((1, 64), (4, 512), (16, 128), (64, 1024), (8, 2048), (2, 256)):
        for kind in ("fused", "score", "context"):
            by, fl = attention_bytes_flops(llama, b, 1, s, kind)
            t = 2e-5 + 3e-11 * float(by) + 4e-14 * float(fl) + 5e-8 * attention_rows(llama, b, 1)
            rows.append(
                {
                    "family": "attention",
                    "device": "cpu",
                    "model": llama.name,
                    "kind": kind,
                    "phase": "decode",
                    "batch": b,
                    "q": 1,
                    "s": s,
                    "group": 8,
                    "time_s": t,
                }
            )
    fits = fit_attention(rows, "cpu", {llama.name: llama})
    assert {(f["kind"], f["heads"]) for f in fits} == {("fused", "gqa"), ("score", "gqa"), ("context", "gqa")}
    for f in fits:
        assert f["fit_max_rel_err"] < 1e-6
        assert f["overhead_s"] == pytest.approx(2e-5, rel=1e-4) and f["s_per_byte"] == pytest.approx(3e-11, rel=1e-4)


def _tiny_configs(tmp: Path) -> tuple[Path, Path]:
    opt = tmp / "tiny-opt"
    opt.mkdir()
    (opt / "config.json").write_text(
        json.dumps(
            {
                "model_type": "opt",
                "hidden_size": 128,
                "ffn_dim": 512,
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "vocab_size": 256,
                "max_position_embeddings": 512,
                "word_embed_proj_dim": 128,
            }
        )
    )
    llama = tmp / "tiny-llama"
    llama.mkdir()
    (llama / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 128,
                "intermediate_size": 256,
                "num_attention_heads": 8,
                "num_key_value_heads": 2,
                "num_hidden_layers": 2,
                "vocab_size": 256,
                "max_position_embeddings": 2048,
            }
        )
    )
    return opt / "config.json", llama / "config.json"


@pytest.mark.slow  # 16 s on 2 cores (two calibrator processes); the default tier was at its 5-minute goal
def test_quick_run_times_the_runtimes_kernels_and_writes_a_valid_profile(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    opt, llama = _tiny_configs(tmp_path)
    models = f"{opt},{llama}"
    cmd = [
        sys.executable,
        "-m",
        "calibrate.kernel_tables",
        "--base",
        "spr-h100",
        "--name",
        "kt-ci",
        "--out",
        str(tmp_path / "out"),
        "--models",
        models,
        "--attn-models",
        models,
        "--quick",
        "--no-gpu",
        "--weight-dtypes",
        "bf16,int8",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from lia_model.profiles import load_system

    spec = load_system(str(tmp_path / "out" / "kt-ci.yaml"))
    k = spec.kernels
    assert k is not None and k.gpu_linear == [] and k.cpu_slowdown_beside_dma == 1.0
    assert {t.sublayer for t in k.cpu_linear} == {"qkv", "out_proj", "fc1", "fc2"}
    assert all(t.tokens == [1, 16, 256] for t in k.cpu_linear)
    # --weight-dtypes bf16,int8: each shape twice, the int8 one the runtime's int8 kernel, and an int8 workload
    # is priced from it (a bf16 one from the bf16 table)
    assert sorted(t.weight_dtype for t in k.cpu_linear).count("int8") == len(k.cpu_linear) // 2
    assert k.weight_dtypes() == {"bf16", "int8"}
    assert {(f.kind, f.heads) for f in k.cpu_attention} >= {("fused", "mha"), ("fused", "gqa")}
    assert "threads=" in k.setup and "alloc=" in k.setup
    # the profile predicts, and a second run without --force refuses to overwrite it
    from lia_model.inputs import resolve_model

    model = resolve_model(str(opt))
    pred = predict(
        spec,
        model,
        make_workload(2, 16, 4, model),
        Plan(prefill_policy=ALL_CPU, decode_policy=ALL_CPU, gpu_resident_layers=0),
    )
    assert pred.latency_s > 0
    from lia_model.precision import make_precision

    pred8 = predict(
        spec,
        model,
        make_workload(2, 16, 4, model, make_precision("int8")),
        Plan(prefill_policy=ALL_CPU, decode_policy=ALL_CPU, gpu_resident_layers=0),
    )
    assert pred8.latency_s > 0 and pred8.latency_s != pred.latency_s
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and again.stderr.startswith("error: --name") and "--force" in again.stderr
    raw = yaml.safe_load((tmp_path / "out" / "kt-ci.yaml").read_text())
    assert raw["kernels"]["source"]["cpu_linear"].startswith("calibrated on ")
    assert k.cpu_wake_us >= 0 and "sleep" in raw["kernels"]["source"]["cpu_wake_us"]
    assert k.cpu_attention_slowdown_beside_dma is None  # no GPU: no DMA to be slowed by
    # checkpointing: the partial CSV is gone after a complete run; resuming from the raw CSV (every block
    # measured under this setup) measures nothing and writes the same tables
    assert not (tmp_path / "out" / "kt-ci-kernels.partial.csv").exists()
    at = cmd.index("--out") + 1
    resumed = [
        *cmd[:at],
        str(tmp_path / "resumed"),
        *cmd[at + 1 :],
        "--resume-from",
        str(tmp_path / "out" / "kt-ci-kernels.csv"),
    ]
    proc = subprocess.run(resumed, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count(": resumed") == 6  # linear (bf16 and int8) and attention of both models
    again_spec = load_system(str(tmp_path / "resumed" / "kt-ci.yaml"))
    assert again_spec.kernels.cpu_linear == k.cpu_linear and again_spec.kernels.cpu_attention == k.cpu_attention
    bad = subprocess.run([*resumed[:-1], str(tmp_path / "nope.csv")], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --resume-from")
    # the profile names the GQA decode kernel it measured (the default, SDPA) on its GQA fit; resumed under the
    # other kernel, the GQA model's CPU attention grid is measured again (the MHA model's is kept)
    assert k.gqa_decode == "sdpa"
    assert {f.gqa_decode for f in k.cpu_attention if (f.kind, f.phase, f.heads) == ("fused", "decode", "gqa")} == {
        "sdpa"
    }
    other = [*resumed[:at], str(tmp_path / "grouped"), *resumed[at + 1 :]]
    proc = subprocess.run(
        other, cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "LIA_GQA_DECODE": "grouped"}
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    kept = [line for line in proc.stderr.splitlines() if line.endswith(": resumed")]
    assert len(kept) == 5 and not any("llama" in line and "attention" in line for line in kept)
    assert "ran another GQA decode kernel than grouped; measured again" in proc.stderr
    assert load_system(str(tmp_path / "grouped" / "kt-ci.yaml")).kernels.gqa_decode == "grouped"


@pytest.mark.parametrize("batch, waits", [(1, True), (64, False)])
def test_the_chain_pays_the_dma_slowdown_and_the_feeder_wait_by_hand(batch: int, waits: bool) -> None:
    """Decode, policy (1,1,1,1,0,1): CPU qkv, fused attention and out_proj, then the copy out_proj -> fc1 (H2D), GPU
    fc1, the copy fc1 -> fc2 (D2H), CPU fc2; only fc1's weights stream (W). With slowdown s = 2 the CPU runs
    sigma = 1 + min(s - 1, (1 - 1/s) W / cpu) times slower on the chain; the H2D copy, ready after the first
    sigma (cpu - cpu_fc2) seconds, waits 1.5 x 32 MiB / H2D rate if the weights still stream then. So
        chain = sigma cpu + h2d(out) + [wait] + gpu(fc1) + d2h(fc1)
    and the layer time is the max of that chain and the other terms. At B = 1 the copy is ready while fc1's
    weights stream (it waits); at B = 64 the CPU work outlasts the stream (it does not)."""
    from lia_model.costterms import policy_features
    from lia_model.weight_feeder import critical_copy_wait_s

    system = _system_with_tables(slowdown=2.0)
    terms = streamed_layer_terms(system, OPT30, _ctx(batch, 1, (40,)))
    p = (Device.CPU, Device.CPU, Device.CPU, Device.CPU, Device.GPU, Device.CPU)
    f = policy_features(p)
    i_out, i_fc1, i_fc2 = (SUBLAYERS.index(s) for s in (Sublayer.OUT_PROJ, Sublayer.FC1, Sublayer.FC2))
    cpu = terms.resources[next(r for r in terms.resources if r.value == "cpu")].evaluate(f)[0]
    w = float(terms.weight_h2d_s[i_fc1])
    sigma = 1.0 + min(1.0, 0.5 * w / cpu)
    wait = critical_copy_wait_s(system.link.h2d_gbps * 1e9)
    ready = sigma * (cpu - terms.times.cpu_s[i_fc2, 0])
    chain = (
        sigma * cpu
        + terms.cross_h2d_s[i_out, 0]
        + (wait if ready < w else 0.0)
        + terms.times.gpu_s[i_fc1, 0]
        + terms.cross_d2h_s[i_fc1, 0]
    )
    others = max(form.evaluate(f)[0] for _, form in terms.terms.values())
    assert 1.0 < sigma < 2.0  # the DMA covers part of the CPU work: the case worth checking
    assert (ready < w) == waits
    assert terms.layer_time(f)[0] == pytest.approx(max(chain, others), rel=1e-12)
    assert chain > others  # the chain decides this layer, so the line above checked the chain


def test_the_chain_pays_the_cpu_wake_up_where_the_cpu_waited_by_hand() -> None:
    """The chain of the test above at B = 64 (policy (1,1,1,1,0,1), no feeder wait): CPU qkv, attention and
    out_proj run back to back, fc2 waits for the GPU's fc1: with a wake-up of 2 ms the chain is 2 ms longer and
    decides the layer (qkv starts the layer after the previous layer's CPU fc2: no wake-up there). A wake-up
    threshold above that wait spares it. All on the CPU nothing waits: the layer time does not change."""
    from lia_model.costterms import policy_features

    ctx = _ctx(64, 1, (40,))
    base = streamed_layer_terms(_system_with_tables(slowdown=2.0), OPT30, ctx)
    woken = streamed_layer_terms(_system_with_tables(slowdown=2.0, cpu_wake_us=2000.0), OPT30, ctx)
    patient = streamed_layer_terms(
        _system_with_tables(slowdown=2.0, cpu_wake_us=2000.0, cpu_idle_before_wake_us=1e5), OPT30, ctx
    )
    f = policy_features((Device.CPU, Device.CPU, Device.CPU, Device.CPU, Device.GPU, Device.CPU))
    others = max(form.evaluate(f)[0] for _, form in woken.terms.values())
    assert base.layer_time(f)[0] > others  # the chain decides
    assert woken.layer_time(f)[0] == pytest.approx(base.layer_time(f)[0] + 2e-3, rel=1e-12)
    assert patient.layer_time(f)[0] == pytest.approx(base.layer_time(f)[0], rel=1e-12)
    everything = policy_features((Device.CPU,) * 6)
    assert woken.layer_time(everything)[0] == pytest.approx(base.layer_time(everything)[0], rel=1e-12)


def test_attention_beside_the_dma_slows_by_its_own_calibrated_factor() -> None:
    """With cpu_attention_slowdown_beside_dma = a and the linears' s: a vector with only attention on the CPU
    is scaled as if the one slowdown were a; one with only a memory-bound linear (decode qkv, B = 64) as if it
    were s; both on the CPU, by (a A + s M) / (A + M) in min(s' - 1, (1 - 1/s') W / cpu) (hand numbers from the
    resources)."""
    from lia_model.costterms import policy_features
    from lia_model.plan import policy_index

    ctx = _ctx(64, 1, (40,))
    mixed = streamed_layer_terms(_system_with_tables(slowdown=1.2, cpu_attention_slowdown_beside_dma=2.0), OPT30, ctx)
    as_attn = streamed_layer_terms(_system_with_tables(slowdown=2.0), OPT30, ctx)
    as_lin = streamed_layer_terms(_system_with_tables(slowdown=1.2), OPT30, ctx)
    attn = (Device.GPU, Device.CPU, Device.CPU, Device.GPU, Device.GPU, Device.GPU)
    qkv = (Device.CPU, Device.GPU, Device.GPU, Device.GPU, Device.GPU, Device.GPU)
    for p, same in ((attn, as_attn), (qkv, as_lin)):
        assert mixed.cpu_scale[policy_index(p), 0] == pytest.approx(same.cpu_scale[policy_index(p), 0], rel=1e-12)
        assert mixed.cpu_scale[policy_index(p), 0] > 1.0
    both = (Device.CPU, Device.CPU, Device.CPU, Device.GPU, Device.GPU, Device.GPU)
    cpu_of = lambda t, p: t.resources[next(r for r in t.resources if r.value == "cpu")].evaluate(policy_features(p))[0]  # noqa: E731
    a, m = cpu_of(mixed, attn), cpu_of(mixed, qkv)
    s_eff = (2.0 * a + 1.2 * m) / (a + m)
    w = float(sum(mixed.weight_h2d_s[i] for i in range(6) if both[i] == Device.GPU))
    extra = min((s_eff - 1.0) * (a + m), (1.0 - 1.0 / s_eff) * w)
    assert cpu_of(mixed, both) == pytest.approx(a + m, rel=1e-12)
    assert mixed.cpu_scale[policy_index(both), 0] == pytest.approx(1.0 + extra / (a + m), rel=1e-12)


def test_wake_and_idle_by_hand() -> None:
    """Extras (s) after sleeps of 0.05 / 0.2 / 0.5 / 2 ms: the wake-up is the 2 ms extra; the idle threshold is the
    longest gap up to which every extra stays below half of it; a negative 2 ms extra is no wake-up."""
    from calibrate.kernel_tables import wake_and_idle

    assert wake_and_idle({0.05: 1e-6, 0.2: 20e-6, 0.5: 90e-6, 2.0: 100e-6}) == (100e-6, 0.2)
    assert wake_and_idle({0.05: 60e-6, 0.2: 20e-6, 2.0: 100e-6}) == (100e-6, 0.0)  # the first gap already wakes
    assert wake_and_idle({0.05: 1e-6, 0.2: 70e-6, 0.5: 10e-6, 2.0: 100e-6}) == (100e-6, 0.05)  # stops at 0.2
    assert wake_and_idle({0.05: 1e-6, 2.0: -5e-6}) == (0.0, 0.0)


def test_the_wake_up_measurement_runs_the_runtimes_attention_after_each_sleep() -> None:
    """cpu_wake --quick on this machine: one row per sleep, each extra its time minus the back-to-back time,
    and the returned wake-up and threshold those rows' rule (wake_and_idle)."""
    pytest.importorskip("torch")
    from calibrate.kernel_tables import QUICK_WAKE_CASES, WAKE_GAPS_MS, cpu_wake, wake_and_idle

    wake_us, idle_us, rows = cpu_wake("test", quick=True)
    assert [r["gap_ms"] for r in rows] == list(WAKE_GAPS_MS) * len(QUICK_WAKE_CASES)
    for r in rows:
        assert r["family"] == "cpu_wake" and r["time_s"] > 0 and r["back_to_back_s"] > 0
        assert r["extra_s"] == pytest.approx(r["time_s"] - r["back_to_back_s"], abs=1e-15)
    wake, idle = wake_and_idle({r["gap_ms"]: r["extra_s"] for r in rows})
    assert (wake_us, idle_us) == pytest.approx((wake * 1e6, idle * 1e3))


def test_round_robin_spreads_the_compute_bound_calls_over_the_rounds() -> None:
    """Every round times every memory-bound item; the others fall one each into rounds i % rounds."""
    from calibrate.kernel_tables import _round_robin

    assert _round_robin(["a", "b"], [1, 2, 3, 4, 5], 3) == [["a", "b", 1, 4], ["a", "b", 2, 5], ["a", "b", 3]]
    assert _round_robin([], [1, 2], 1) == [[1, 2]]


def test_cpu_linears_in_rounds_hold_the_median_of_the_rounds_medians(tmp_path: Path, monkeypatch) -> None:
    """linear_rows(rounds=3) on a tiny OPT: memory-bound calls (<= 256 rows) are timed once per round, and
    their table time is the median of the rounds' medians (a stub timer returns 1, 2, 6 ms in turn: median 2 ms,
    where their mean would say 3); larger calls are timed once; rounds=1 keeps one timing."""
    pytest.importorskip("torch")
    import calibrate.timing as timing
    from calibrate.kernel_tables import linear_rows
    from lia_model.inputs import resolve_model

    opt, _ = _tiny_configs(tmp_path)
    model = resolve_model(str(opt))
    calls: list[str] = []
    seen: dict = {}

    def fake(fn, budget_s, min_samples=3, warmup=True):  # each case's k-th timing: 1, 2, 6 ms
        calls.append("warm" if warmup else "cold")
        seen[fn] = seen.get(fn, -1) + 1
        v = (1e-3, 2e-3, 6e-3)[seen[fn] % 3]
        return timing.Timing(v, v / 2, v * 2, 4, 1)

    monkeypatch.setattr(timing, "time_host", fake)
    rows = linear_rows([model], "cpu", (1, 256, 1024), 64 << 20, 0.01, "test", rounds=3)
    assert {r["sublayer"] for r in rows} == {"qkv", "out_proj", "fc1", "fc2"}
    small = [r for r in rows if r["tokens"] <= 256]
    large = [r for r in rows if r["tokens"] > 256]
    assert all(r["rounds"] == 3 and r["time_s"] == pytest.approx(2e-3) for r in small)
    assert all(r["round_medians_s"] == "0.001 0.002 0.006" for r in small)
    assert all(len(r["model_round_vmstat"].split()) == 3 for r in rows)  # one reading per round
    assert all(r["rounds"] == 1 and r["min_s"] == r["time_s"] / 2 for r in large)
    assert len(calls) == 8 * 3 + 4  # 8 memory-bound cases x 3 rounds, 4 large ones once
    assert calls[:8] == ["warm"] * 8 and "warm" not in calls[8 + 2 :]  # round 0 warms up, later rounds do not
    seen.clear()
    single = linear_rows([model], "cpu", (1,), 64 << 20, 0.01, "test")
    assert [r["rounds"] for r in single] == [1] * 4 and all(r["time_s"] == 1e-3 for r in single)


@pytest.mark.usefixtures("grouped_gqa_decode")
def test_refit_takes_each_cpu_linear_entry_as_the_median_over_calibration_runs(tmp_path: Path) -> None:
    """--refit PROFILE CSV EARLIER...: OPT-66B fc1 at 256 rows was timed in 8 rounds by the two 2026-12-01 runs
    (medians of their rounds 63.5 and 61.65 ms, from the raw CSVs: (63.0 + 64.0) / 2 and (61.4 + 61.9) / 2 at 0.1 ms)
    and once, 40.27 ms, on 2026-11-30: the table holds the median of the three, about 61.65 ms. OPT-66B out_proj at 1024
    rows, timed once per run (78.09, 61.49, 44.02 ms): 61.49 ms. A run of another CPU setup is refused."""
    import shutil

    from calibrate.kernel_tables import refit

    cal = ROOT / "hwprofiles" / "calibration"
    own, earlier = cal / "emr-h200-kernels-kernels.csv", cal / "emr-h200-kernels-2026-12-01T1251-kernels.csv"
    oldest = cal / "emr-h200-kernels-2026-11-30-kernels.csv"
    profile = tmp_path / "p.yaml"
    shutil.copy(ROOT / "hwprofiles" / "systems" / "emr-h200-kernels.yaml", profile)
    refit(str(profile), str(own), True, (str(earlier), str(oldest)))
    k = yaml.safe_load(profile.read_text())["kernels"]

    def entry(sub: str, k_: int, tokens: int) -> float:
        t = next(t for t in k["cpu_linear"] if t["sublayer"] == sub and t["k"] == k_)
        return t["seconds"][t["tokens"].index(tokens)]

    assert entry("fc1", 9216, 256) == pytest.approx(61.65e-3, abs=0.1e-3)
    assert entry("out_proj", 9216, 1024) == pytest.approx(61.49e-3, abs=0.01e-3)
    assert (
        k["source"]["cpu_linear"].count("re-estimated") == 1
        and "the runs that measured it, of 3 calibration runs" in k["source"]["cpu_linear"]
    )
    other = tmp_path / "other.csv"
    other.write_text(earlier.read_text().replace("threads=15", "threads=7"))
    from lia_model.errors import LiaInputError

    with pytest.raises(LiaInputError, match="not this profile's setup"):
        refit(str(profile), str(own), True, (str(other),))
    with pytest.raises(LiaInputError, match="--force"):
        refit(str(profile), str(own), False)


@pytest.mark.usefixtures("grouped_gqa_decode")
def test_refit_takes_each_cpu_attention_point_as_the_median_over_distinct_runs(tmp_path: Path) -> None:
    """The CPU attention grid the refit fits on: OPT-30B fused decode attention at B = 32, s = 512 took 5.900 ms on
    2026-12-01T15:10Z, 10.204 ms on 2026-11-30 and 6.669 ms on 2026-12-01T08:10Z (the raw CSVs); the 12:51Z CSV holds
    the 2026-11-30 value again (resumed, not measured), which counts once: the median is 6.669 ms, not 10.204 ms.
    median_over_runs by hand: {1, 1, 4} is the runs {1, 4}, median 2.5."""
    import shutil

    import pandas as pd

    from calibrate.kernel_tables import cpu_attention_times, median_over_runs, refit

    cal = ROOT / "hwprofiles" / "calibration"
    names = ("2026-12-01T1510", "2026-11-30", "2026-12-01", "2026-12-01T1251")
    csvs = [cal / f"emr-h200-kernels-{n}-kernels.csv" for n in names]
    runs = [cpu_attention_times(pd.read_csv(c, low_memory=False).to_dict("records")) for c in csvs]
    key = ("opt-30b", "fused", "decode", "32.0", "56.0", "56.0", "1.0", "1.0", "512.0", "")  # "": MHA, one kernel
    assert [round(r[key] * 1e3, 3) for r in runs] == [5.9, 10.204, 6.669, 10.204]
    assert median_over_runs(runs, key) == pytest.approx(6.669e-3, abs=1e-6)
    assert median_over_runs([{"a": 1.0}, {"a": 1.0}, {"a": 4.0}, {}], "a") == 2.5
    # the 2026-11-30 run's Llama-2-70B out_proj at 256 rows as its CSV and as the 08:10Z CSV's resumed copy hold it
    assert median_over_runs([{"a": 0.00891942699999504}, {"a": 0.008919426999995}, {"a": 1.0}], "a") == pytest.approx(
        (0.008919427 + 1.0) / 2
    )
    profile = tmp_path / "p.yaml"
    shutil.copy(ROOT / "hwprofiles" / "systems" / "emr-h200-kernels.yaml", profile)
    refit(str(profile), str(csvs[0]), True, tuple(str(c) for c in csvs[1:]))
    kernels = yaml.safe_load(profile.read_text())["kernels"]
    source = kernels["source"]
    # the 15:10Z CSV is a stopped run's partial CSV (its GPU rows named "cuda"): the GPU attention is still fitted
    assert len(kernels["gpu_attention"]) == 12 and len(kernels["cpu_attention"]) == 12
    assert "median over 3 distinct calibration runs" in source["cpu_attention"]
    # the measured prefill grid the cost model interpolates in: OPT-30B fused at B = 8, s = 256 took 8.119 ms
    # (15:10Z), 7.806 ms (2026-11-30, and its resumed copy at 12:51Z) and 7.521 ms (08:10Z): median 7.806 ms, 3 runs
    grid = {(g["kind"], g["heads"], g["batch"], g["s"]): g for g in kernels["cpu_attention_grid"]}
    point = grid[("fused", 56, 8, 256)]
    assert point["seconds"] == pytest.approx(7.805606e-3, rel=1e-5) and point["runs"] == 3
    assert {g["kind"] for g in kernels["cpu_attention_grid"]} == {"fused", "score", "context"}
    assert "cpu_attention_grid" in source
    linears_only = tmp_path / "linears.csv"
    raw = pd.read_csv(csvs[0], low_memory=False)
    raw[raw["family"] == "linear"].to_csv(linears_only, index=False)
    from lia_model.errors import LiaInputError

    with pytest.raises(LiaInputError, match="holds no CPU attention grid"):
        refit(str(profile), str(linears_only), True)
    assert source["cpu_attention"].count("refitted") == 1 and "median over" not in source["gpu_attention"]


def test_int8_workloads_read_the_int8_tables_and_other_precisions_are_refused() -> None:
    """A profile with int8 tables beside its bf16 ones (calibrate.kernel_tables --weight-dtypes bf16,int8): an int8
    workload's CPU fc2 at 16 tokens is the int8 table interpolated by hand (5 ms at 1, 8 ms at 64 tokens:
    5 ms x 1.6^(2/3)), the bf16 workload keeps the bf16 table; fp8 (not measured) and an int8 KV cache are refused
    with the dtypes the tables hold."""
    from lia_model.costterms import check_precision
    from lia_model.errors import LiaInputError
    from lia_model.precision import make_precision

    data = _system_with_tables().model_dump(mode="json")
    fc2_k, fc2_n = OPT30.ffn_size, OPT30.hidden_size
    data["kernels"]["cpu_linear"].append(
        {
            "sublayer": "fc2",
            "k": fc2_k,
            "n": fc2_n,
            "weight_dtype": "int8",
            "tokens": [1, 64],
            "seconds": [0.005, 0.008],
        }
    )
    data["kernels"]["gpu_linear"].append(
        {"sublayer": "fc2", "k": fc2_k, "n": fc2_n, "weight_dtype": "int8", "tokens": [1, 64], "seconds": [2e-4, 3e-4]}
    )
    qkv = next(t for t in data["kernels"]["cpu_linear"] if t["sublayer"] == "qkv")
    without_qkv = SystemSpec.model_validate(data)  # qkv's int8 kernel not measured yet
    data["kernels"]["cpu_linear"].append({**qkv, "weight_dtype": "int8", "seconds": [0.003, 0.005]})
    system = SystemSpec.model_validate(data)
    assert system.kernels.weight_dtypes() == {"bf16", "int8"}
    i_fc2 = SUBLAYERS.index(Sublayer.FC2)
    int8 = dataclasses.replace(_ctx(16, 1, (100,)), precision=make_precision("int8"))
    t8 = sublayer_times(system, OPT30, int8, 16)
    assert t8.cpu_s[i_fc2, 0] == pytest.approx(0.005 * 1.6 ** (math.log(16) / math.log(64)))
    assert t8.gpu_s[i_fc2, 0] == pytest.approx(2e-4 * 1.5 ** (math.log(16) / math.log(64)))
    t16 = sublayer_times(system, OPT30, _ctx(16, 1, (100,)), 16)
    assert t16.cpu_s[i_fc2, 0] == pytest.approx(0.010 * 2 ** (math.log(16) / math.log(64)))
    for bad in (make_precision("fp8_e4m3"), make_precision("int8", kv_dtype="int8")):
        with pytest.raises(LiaInputError, match="tables of bf16, int8 weights"):
            check_precision(system, bad)
    # a shape whose bf16 kernel is measured but whose int8 kernel is not: refused by name, not priced by the roofline
    with pytest.raises(LiaInputError, match=r"qkv \(7168x21504\) on the CPU in bf16 but not in int8"):
        sublayer_times(without_qkv, OPT30, int8, 16)


@pytest.mark.usefixtures("grouped_gqa_decode")
def test_refit_adds_the_row_counts_only_an_earlier_run_measured(tmp_path: Path) -> None:
    """A --cpu-linears-only run of extra row counts, given to --refit as an earlier run: Llama-2-70B fc2 at 48 rows
    (absent from the profile's grid) joins its table at that run's value, 14.1 ms, between the 32 and 64 row
    entries; the entries both runs hold stay the median over the runs."""
    import shutil

    import pandas as pd

    from calibrate.kernel_tables import refit

    cal = ROOT / "hwprofiles" / "calibration"
    own = cal / "emr-h200-kernels-kernels.csv"
    raw = pd.read_csv(own, low_memory=False)
    fc2 = raw[(raw["family"] == "linear") & (raw["device"] == "cpu") & (raw["model"] == "llama-2-70b")]
    fc2 = fc2[(fc2["sublayer"] == "fc2") & (fc2["tokens"] == 16)]  # this run timed bf16 weights only
    extra = fc2.assign(tokens=48, time_s=14.1e-3, round_medians_s=float("nan"))
    extra_csv = tmp_path / "rows-kernels.csv"
    extra.to_csv(extra_csv, index=False)
    profile = tmp_path / "p.yaml"
    shutil.copy(ROOT / "hwprofiles" / "systems" / "emr-h200-kernels.yaml", profile)
    before = yaml.safe_load(profile.read_text())["kernels"]["cpu_linear"]
    refit(str(profile), str(own), True, (str(extra_csv),))
    table = next(
        t
        for t in yaml.safe_load(profile.read_text())["kernels"]["cpu_linear"]
        if t["sublayer"] == "fc2" and t["k"] == 28672 and t["n"] == 8192 and t.get("weight_dtype", "bf16") == "bf16"
    )
    assert 48 in table["tokens"] and table["seconds"][table["tokens"].index(48)] == pytest.approx(14.1e-3)
    assert table["tokens"] == sorted(table["tokens"])
    old = next(
        t for t in before if t["sublayer"] == "fc2" and t["k"] == 28672 and t.get("weight_dtype", "bf16") == "bf16"
    )
    assert 48 not in old["tokens"]


@pytest.mark.parametrize(
    "args, field",
    [
        (["--cpu-linears-only", "2,x", "--name", "n"], "error: --cpu-linears-only"),
        (["--cpu-linears-only", "0,8", "--name", "n"], "error: --cpu-linears-only"),
        (["--cpu-linears-only", "8"], "error: --name"),
    ],
)
def test_cpu_linears_only_refuses_bad_input(args, field, tmp_path, capsys) -> None:
    from calibrate.kernel_tables import main

    assert main([*args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(field) and err.count("\n") == 1
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("d", [1.25, 2.0])
def test_the_weight_dma_slows_beside_memory_bound_cpu_work_by_hand(d: float) -> None:
    """Decode at B = 64: qkv, attention and fc2 on the CPU (all memory-bound: their rows < 256), out_proj and fc1
    streamed. The H2D term is W + (activation copies) without the DMA's slowdown; with d it grows by exactly
    (1 - 1/d) x the CPU's memory-bound work, here all its work cpu_c (by hand: d = 1.25 -> 0.2 cpu_c, d = 2 ->
    0.5 cpu_c). An all-GPU layer, with no CPU work beside its stream, keeps its H2D term."""
    from lia_model.costterms import policy_features

    p = (Device.CPU, Device.CPU, Device.CPU, Device.GPU, Device.GPU, Device.CPU)
    f = policy_features(p)
    ctx = _ctx(64, 1, (40,))
    base = streamed_layer_terms(_system_with_tables(slowdown=1.0), OPT30, ctx)
    slowed = streamed_layer_terms(_system_with_tables(slowdown=1.0, dma_slowdown_beside_cpu=d), OPT30, ctx)
    cpu = base.resources[next(r for r in base.resources if r.value == "cpu")].evaluate(f)[0]
    assert all(not base.times.cpu_compute_bound[i, 0] for i in (0, 1, 2, 5))  # every CPU sublayer memory-bound
    h2d_base, h2d_slowed = (t.terms["h2d"][1].evaluate(f)[0] for t in (base, slowed))
    assert h2d_base == pytest.approx(
        base.resources[next(r for r in base.resources if r.value == "pcie_h2d")].evaluate(f)[0]
    )
    assert h2d_slowed - h2d_base == pytest.approx({1.25: 0.2, 2.0: 0.5}[d] * cpu, rel=1e-12)
    assert slowed.layer_time(f)[0] >= h2d_slowed - 1e-15
    # an all-GPU layer has no CPU work beside its stream: the term is the same
    g = policy_features((Device.GPU,) * 6)
    assert slowed.terms["h2d"][1].evaluate(g)[0] == pytest.approx(base.terms["h2d"][1].evaluate(g)[0], rel=1e-12)


def test_dma_slowdown_is_the_median_rate_ratio_over_the_beside_dma_pairs() -> None:
    """By hand: 54/50 = 1.08, 55/50 = 1.10, 52/52 = 1.00 (and a resumed copy of the 1.08 pair, counted once): median
    1.08 over 3 pairs; a row without rates and other families are ignored; a DMA faster beside the CPU counts as 1."""
    from calibrate.kernel_tables import dma_slowdown

    pair = {"family": "cpu_beside_dma", "dma_solo_gbps": 54.0, "dma_gbps": 50.0}
    rows = [
        pair,
        dict(pair),
        {"family": "cpu_beside_dma", "dma_solo_gbps": 55.0, "dma_gbps": 50.0},
        {"family": "cpu_beside_dma", "dma_solo_gbps": 52.0, "dma_gbps": 52.0},
        {"family": "cpu_beside_dma", "dma_solo_gbps": float("nan"), "dma_gbps": 50.0},
        {"family": "linear", "dma_solo_gbps": 99.0, "dma_gbps": 1.0},
    ]
    d, pairs = dma_slowdown(rows)
    assert d == pytest.approx(1.08) and pairs == 3
    assert dma_slowdown([{"family": "cpu_beside_dma", "dma_solo_gbps": 40.0, "dma_gbps": 50.0}]) == (1.0, 1)
    assert dma_slowdown([{"family": "linear"}]) is None


@pytest.mark.usefixtures("grouped_gqa_decode")
def test_refit_fits_on_every_attention_point_any_run_measured(tmp_path: Path) -> None:
    """A run of a wider CPU attention grid (PREFILL_GRID's later points), given to --refit as an earlier run: the
    OPT-30B fused prefill fit then counts its 16 x 256 point beside the primary CSV's six (7 points), and a point
    only that run holds is fitted at its own time (the fit passes within its reported max error of it)."""
    import shutil

    import pandas as pd

    from calibrate.kernel_tables import refit
    from lia_model.accounting import attention_bytes_flops, attention_rows
    from lia_model.hardware import AttentionFit
    from lia_model.inputs import resolve_model

    cal = ROOT / "hwprofiles" / "calibration"
    own = cal / "emr-h200-kernels-2026-12-01T1721-kernels.csv"
    raw = pd.read_csv(own, low_memory=False)
    cpu_prefill = raw[(raw["family"] == "attention") & (raw["device"] == "cpu") & (raw["phase"] == "prefill")]
    base = cpu_prefill[(cpu_prefill["batch"] == 8) & (cpu_prefill["q"] == 256)]
    # 16 x 256: twice the 8 x 256 point's work, timed at 2.6x its time (the in-situ ratio of the chunked points)
    wider = base.assign(batch=16.0, time_s=base["time_s"] * 2.6)
    wider_csv = tmp_path / "wider-kernels.csv"
    pd.concat([raw[raw["family"] == "linear"].head(0), wider]).to_csv(wider_csv, index=False)
    for extra, points in (((), 6), ((str(wider_csv),), 7)):
        profile = tmp_path / "p.yaml"
        shutil.copy(ROOT / "hwprofiles" / "systems" / "emr-h200-kernels.yaml", profile)
        refit(str(profile), str(own), True, extra)
        fits = yaml.safe_load(profile.read_text())["kernels"]["cpu_attention"]
        fused = next(f for f in fits if (f["kind"], f["phase"], f["heads"]) == ("fused", "prefill", "mha"))
        assert fused["points"] == points
    model = resolve_model("opt-30b")
    nbytes, flops = attention_bytes_flops(model, 16, 256, 256, "fused")
    fitted = AttentionFit(**fused).seconds(nbytes, flops, attention_rows(model, 16, 256))
    measured = float(wider[wider["kind"] == "fused"]["time_s"].iloc[0])
    assert abs(fitted / measured - 1) <= fused["fit_max_rel_err"] + 5e-5  # the profile holds it to 4 digits


@pytest.mark.usefixtures("grouped_gqa_decode")
def test_refit_leaves_out_a_run_the_host_probe_flagged(tmp_path: Path) -> None:
    """A --cpu-linears-only run whose rows record host_drift_flag (its probe more than 15% off the tables before or
    after) adds nothing: the 21:59Z rows run's 2-row entries join the table when steady and are absent when its rows
    carry the flag, and the profile's note names the run left out. As the primary CSV a flagged run is refused."""
    import shutil

    import pandas as pd

    from calibrate.kernel_tables import refit
    from lia_model.errors import LiaInputError

    cal = ROOT / "hwprofiles" / "calibration"
    own = cal / "emr-h200-kernels-2026-12-01T1721-kernels.csv"
    rows_run = pd.read_csv(cal / "emr-h200-kernels-2026-12-01T2159-rows-kernels.csv")
    steady, flagged = tmp_path / "steady-kernels.csv", tmp_path / "flagged-kernels.csv"
    rows_run.assign(
        host_cpu_time_vs_table_before=1.02, host_cpu_time_vs_table_after=0.97, host_drift_flag=False
    ).to_csv(steady, index=False)
    rows_run.assign(host_cpu_time_vs_table_before=3.4, host_cpu_time_vs_table_after=1.3, host_drift_flag=True).to_csv(
        flagged, index=False
    )
    tokens = {}
    for name, extra in (("steady", steady), ("flagged", flagged)):
        profile = tmp_path / f"{name}.yaml"
        shutil.copy(ROOT / "hwprofiles" / "systems" / "emr-h200-kernels.yaml", profile)
        refit(str(profile), str(own), True, (str(extra),))
        kernels = yaml.safe_load(profile.read_text())["kernels"]
        fc2 = next(
            t
            for t in kernels["cpu_linear"]
            if (t["sublayer"], t["k"], t["n"], t.get("weight_dtype", "bf16")) == ("fc2", 28672, 7168, "bf16")
        )
        tokens[name] = fc2["tokens"]
        assert ("left out" in kernels["source"]["cpu_linear"]) == (name == "flagged")
    assert 2 in tokens["steady"] and 2 not in tokens["flagged"]
    with pytest.raises(LiaInputError, match="15% off its tables"):
        refit(str(tmp_path / "steady.yaml"), str(flagged), True)


def test_cpu_linears_only_records_the_host_probe_around_the_run(tmp_path: Path, monkeypatch) -> None:
    """With a probe (--probe-against), every row holds the ratio before (1.30, the first read) and after (0.98) and
    the flag, set by the 15% rule (|1.30 - 1| > 0.15); the linears themselves are the calibrator's (stubbed here:
    one fake row, so the test times nothing)."""
    import pandas as pd

    import calibrate.kernel_tables as kt

    monkeypatch.setattr(kt, "linear_rows", lambda *a, **k: [{"family": "linear", "device": "cpu", "time_s": 1e-3}])
    reads = iter([1.30, 0.98])
    path = kt.measure_linears(["opt-30b"], (2,), (), tmp_path, "probed", False, ("bf16",), lambda: next(reads))
    row = pd.read_csv(path).iloc[0]
    assert (row["host_cpu_time_vs_table_before"], row["host_cpu_time_vs_table_after"]) == (1.3, 0.98)
    assert bool(row["host_drift_flag"]) is True
    assert kt.drifted(pd.read_csv(path).to_dict("records"))


def test_probe_against_refuses_a_profile_without_cpu_tables(tmp_path: Path, capsys) -> None:
    from calibrate.kernel_tables import main

    args = ["--cpu-linears-only", "2", "--name", "n", "--out", str(tmp_path)]
    assert main([*args, "--probe-against", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.startswith("error: --probe-against: ")
    no_tables = ROOT / "hwprofiles" / "systems" / "emr-h100-calibrated.yaml"
    assert main([*args, "--probe-against", str(no_tables)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --probe-against: ") and "no CPU kernel tables" in err and err.count("\n") == 1
    assert main(["--base", "b", "--name", "n", "--out", str(tmp_path), "--probe-against", str(no_tables)]) == 2
    assert "add --cpu-linears-only" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_refit_fits_each_gqa_decode_kernel_apart_and_the_profile_predicts_the_runtimes(tmp_path: Path) -> None:
    """A raw CSV holding Llama-2-70B's CPU fused decode attention under both GQA decode kernels (the 22:15Z run's
    grouped rows, and the same points marked gqa_decode=sdpa at half their time): --refit fits the two apart, the
    profile names the runtime's kernel (sdpa, the default), and the cost model reads its fit. NNLS is linear in
    the times, so the sdpa fit is the grouped fit halved: at every grid point its time is half the grouped fit's
    (to the fits' 6 significant digits). A row run from before the gqa_decode column is predicted with the grouped
    fit; a kernel the profile never measured is refused. Under the default, a CSV of grouped rows only is refused."""
    import shutil

    import pandas as pd

    from calibrate.kernel_tables import refit, row_gqa_decode
    from lia_model.errors import LiaInputError
    from runtime.validate import system_running

    cal = ROOT / "hwprofiles" / "calibration"
    raw = pd.read_csv(cal / "emr-h200-kernels-2026-12-01T2215-kernels.csv", low_memory=False)
    gqa = raw[
        (raw["family"] == "attention")
        & (raw["device"] == "cpu")
        & (raw["kind"] == "fused")
        & (raw["phase"] == "decode")
        & (raw["group"] > 1)
    ]
    assert len(gqa) >= 4 and all(row_gqa_decode(r) == "grouped" for r in gqa.to_dict("records"))
    sdpa = gqa.assign(gqa_decode="sdpa", time_s=gqa["time_s"] / 2)
    both = tmp_path / "both.csv"
    pd.concat([raw, sdpa]).to_csv(both, index=False)
    profile = tmp_path / "p.yaml"
    shutil.copy(ROOT / "hwprofiles" / "systems" / "emr-h200-kernels.yaml", profile)
    refit(str(profile), str(both), True)
    system = SystemSpec.model_validate(yaml.safe_load(profile.read_text()))
    tables = system.kernels
    assert tables.gqa_decode == "sdpa"
    fits = [f for f in tables.cpu_attention if (f.kind, f.phase, f.heads) == ("fused", "decode", "gqa")]
    assert sorted(str(f.gqa_decode) for f in fits) == ["grouped", "sdpa"]
    fast = tables.attention("cpu", "fused", "decode", "gqa")
    slow = tables.with_gqa_decode("grouped").attention("cpu", "fused", "decode", "gqa")
    assert (fast.gqa_decode, slow.gqa_decode) == ("sdpa", "grouped")
    llama = get_model("llama-2-70b")
    for r in gqa.to_dict("records"):
        b, s = int(r["batch"]), int(r["s"])
        nbytes, flops = attention_bytes_flops(llama, b, 1, s, "fused")
        rows = attention_rows(llama, b, 1)
        assert fast.seconds(nbytes, flops, rows) == pytest.approx(slow.seconds(nbytes, flops, rows) / 2, rel=1e-4)
    # MHA fits and the split kinds ran one kernel: untagged, the same whichever GQA decode kernel runs
    as_grouped = tables.with_gqa_decode("grouped")
    for kind, heads in (("fused", "mha"), ("score", "gqa"), ("context", "gqa")):
        fit = tables.attention("cpu", kind, "decode", heads)
        assert fit is not None and fit.gqa_decode is None and fit == as_grouped.attention("cpu", kind, "decode", heads)
    assert system_running(system, float("nan")).kernels.gqa_decode == "grouped"  # a row from before the column
    assert system_running(system, "sdpa") is system
    grouped_only = system.model_copy(
        update={
            "kernels": tables.model_copy(
                update={
                    "cpu_attention": [f for f in tables.cpu_attention if f.gqa_decode != "sdpa"],
                    "gqa_decode": "grouped",
                }
            )
        }
    )
    with pytest.raises(LiaInputError, match="no attention table of it"):
        system_running(grouped_only, "sdpa")
    with pytest.raises(
        LiaInputError, match="no run measured the CPU GQA decode attention with the runtime's kernel 'sdpa'"
    ):
        refit(str(profile), str(cal / "emr-h200-kernels-2026-12-01T2215-kernels.csv"), True)


def test_a_gpu_kernel_slower_to_issue_than_bf16s_adds_the_difference_to_the_dispatch() -> None:
    """t_gpu = max(t_table(tokens), dispatch + issue_dtype - issue_bf16) (costterms.extra_issue_s). OPT-30B fc2 at
    16 tokens, dispatch 50 us. The bf16 table (10 us at 1, 200 us at 64 tokens: 10 us x 20^(2/3) = 73.7 us at 16)
    issues in 20 us; an int8 table of 100 us flat issues in 250 us: max(100, 50 + 250 - 20) = 280 us. bf16 stays
    max(73.7, 50) = 73.7 us. An int8 kernel quicker to issue than bf16's adds nothing (max(100, 50) = 100 us), and so
    does one without an issue measurement."""
    from lia_model.costterms import extra_issue_s
    from lia_model.precision import make_precision

    fc2_k, fc2_n = OPT30.ffn_size, OPT30.hidden_size
    i_fc2 = SUBLAYERS.index(Sublayer.FC2)
    int8 = dataclasses.replace(_ctx(16, 1, (100,)), precision=make_precision("int8"))

    def system(int8_issue_s, bf16_issue_s=20e-6) -> SystemSpec:
        data = _system_with_tables().model_dump(mode="json")
        data["kernels"]["gpu_linear"][0]["issue_s"] = bf16_issue_s
        for dev, seconds in (("cpu", [0.005, 0.008]), ("gpu", [1e-4, 1e-4])):
            for t in [t for t in data["kernels"][f"{dev}_linear"] if t["weight_dtype"] == "bf16"]:
                extra = {"issue_s": int8_issue_s} if dev == "gpu" and t["sublayer"] == "fc2" else {}
                data["kernels"][f"{dev}_linear"].append({**t, "weight_dtype": "int8", "seconds": seconds, **extra})
        return SystemSpec.model_validate(data)

    slow = system(250e-6)
    assert extra_issue_s(slow.kernels, slow.kernels.linear("gpu", "fc2", fc2_k, fc2_n, "int8")) == pytest.approx(230e-6)
    assert sublayer_times(slow, OPT30, int8, 16).gpu_s[i_fc2, 0] == pytest.approx(280e-6)
    bf16_fc2 = 1e-5 * 20 ** (math.log(16) / math.log(64))
    assert sublayer_times(slow, OPT30, _ctx(16, 1, (100,)), 16).gpu_s[i_fc2, 0] == pytest.approx(bf16_fc2)
    assert sublayer_times(system(10e-6), OPT30, int8, 16).gpu_s[i_fc2, 0] == pytest.approx(100e-6)
    assert sublayer_times(system(None), OPT30, int8, 16).gpu_s[i_fc2, 0] == pytest.approx(100e-6)


@pytest.mark.usefixtures("grouped_gqa_decode")
def test_refit_sets_each_gpu_table_s_issue_time_as_the_median_over_tokens_then_runs(tmp_path: Path) -> None:
    """Two runs' GPU linear rows with an issue_s column (the 22:15Z CSV's rows, issue times set by hand): OPT-30B fc2
    bf16 issued in 20, 30 and 40 us at three token counts in one run (median 30 us) and 50 us at every count in the
    other: the table's issue_s is the median of the two runs' medians, 40 us. A table no run timed keeps none."""

    import pandas as pd

    from calibrate.kernel_tables import refit

    cal = ROOT / "hwprofiles" / "calibration"
    raw = pd.read_csv(cal / "emr-h200-kernels-2026-12-01T2215-kernels.csv", low_memory=False)
    fc2 = (
        (raw["family"] == "linear")
        & raw["device"].isin(["gpu", "cuda"])
        & (raw["model"] == "opt-30b")
        & (raw["sublayer"] == "fc2")
        & (raw.get("weight_dtype", pd.Series("bf16", index=raw.index)).fillna("bf16") == "bf16")
    )
    tokens = sorted(raw.loc[fc2, "tokens"].unique())[:3]
    first = raw.assign(issue_s=float("nan"))
    for t, us in zip(tokens, (20, 30, 40)):
        first.loc[fc2 & (raw["tokens"] == t), "issue_s"] = us * 1e-6
    second = raw.assign(issue_s=float("nan"))
    second.loc[fc2, "issue_s"] = 50e-6
    second["time_s"] = second["time_s"] * 1.001  # another run's measurements, not a resumed copy
    paths = []
    for name, df in (("first", first), ("second", second)):
        paths.append(tmp_path / f"{name}.csv")
        df.to_csv(paths[-1], index=False)
    profile = tmp_path / "p.yaml"
    data = yaml.safe_load((ROOT / "hwprofiles" / "systems" / "emr-h200-kernels.yaml").read_text())
    for t in data["kernels"]["gpu_linear"]:
        t.pop("issue_s", None)  # as before the column
    profile.write_text(yaml.safe_dump(data, sort_keys=False))
    refit(str(profile), str(paths[0]), True, (str(paths[1]),))
    kernels = SystemSpec.model_validate(yaml.safe_load(profile.read_text())).kernels
    table = kernels.linear("gpu", "fc2", OPT30.ffn_size, OPT30.hidden_size)
    assert table.issue_s == pytest.approx(40e-6)
    assert kernels.linear("gpu", "fc1", OPT30.hidden_size, OPT30.ffn_size).issue_s is None
    assert "issue_s" in yaml.safe_load(profile.read_text())["kernels"]["source"]["gpu_linear"]
