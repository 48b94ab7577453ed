"""Every study at its reduced (CI) grid, and the invariants its CSV must satisfy.

- e2e, policy-map: the optimum is never worse than a baseline whose plan lies in the optimiser's space.
- cxl: adding CXL never lowers the largest batch or the optimum's throughput at any batch.
- sensitivity: when a hardware parameter only improves, the optimum's throughput never falls and its latency
  never rises.
- microbench: throughput never exceeds the profile's peak or its bandwidth, and the published sustained
  figures the profiles cite come back out of the roofline.
- cost: the cost column follows from prices.yaml; the tensor-parallel node respects its own bounds.
- validation: with no data it writes nothing; with data it pairs predicted and measured columns.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from lia_model.baselines import baseline_plans
from lia_model.costmodel import predict
from lia_model.models import get_model
from lia_model.workload import Workload
from studies import inputs
from studies.output import read_csv
from studies.registry import STUDIES
from studies.runner import run_study

REL = 1e-9  # float tolerance of "never worse": the optimiser and predict() compute the same sums


# The sensitivity study (21 throughput searches of OPT-66B on spr-a100-cxl) takes minutes on 2 cores: its
# invariants run in the slow tier, which .ci/run also runs.
SLOW_STUDIES = ("sensitivity",)


def _run_reduced(out, names) -> dict[str, pd.DataFrame]:
    """Run studies at their reduced grids (two local worker processes); frames read back from the CSVs."""
    frames = {}
    for name in names:
        result = run_study(STUDIES[name], out, reduced=True, workers=2, show_progress=False)
        if result.skipped_reason:
            continue
        for path in result.files:
            assert path.exists() and path.stat().st_size > 0, path
        frames[name] = read_csv(out / f"{name}.csv")
    return frames


@pytest.fixture(scope="module")
def reduced(tmp_path_factory) -> dict[str, pd.DataFrame]:
    """Every study but the slow ones, once, at its reduced grid."""
    return _run_reduced(tmp_path_factory.mktemp("studies"), [n for n in STUDIES if n not in SLOW_STUDIES])


@pytest.fixture(scope="module")
def reduced_slow(tmp_path_factory) -> dict[str, pd.DataFrame]:
    return _run_reduced(tmp_path_factory.mktemp("studies-slow"), SLOW_STUDIES)


def test_every_study_but_validation_writes_csv_and_figures(reduced):
    assert set(reduced) >= {"microbench", "e2e", "policy-map", "cxl", "cost"}
    for name, frame in reduced.items():
        assert len(frame) > 0, name
        assert list(frame.columns) == list(STUDIES[name].columns), name


# ---------------------------------------------------------------- e2e


def test_e2e_optimum_never_worse_than_baselines_in_its_space(reduced):
    frame = reduced["e2e"]
    keys = ["system", "model", "input_len", "output_len", "scenario"]
    checked = 0
    for _, group in frame.groupby(keys):
        opt = group[group["plan"] == "optimum"].iloc[0]
        for _, row in group[group["plan"] != "optimum"].iterrows():
            if not (row["feasible"] and row["in_optimizer_space"]):
                continue
            assert opt["feasible"], f"a baseline fits but the optimiser found nothing: {dict(row)}"
            if row["metric"] == "latency_s":
                assert opt["value"] <= row["value"] * (1 + REL), dict(row)
            else:
                assert opt["value"] >= row["value"] * (1 - REL), dict(row)
            assert row["speedup"] >= 1 - 1e-6
            checked += 1
    assert checked >= 20  # the reduced grid has plenty of in-space baselines (ipex, gpu_only, lia_*)


def test_e2e_infeasible_plans_carry_no_numbers_and_flexgen_is_flexgen(reduced):
    frame = reduced["e2e"]
    infeasible = frame[~frame["feasible"].astype(bool)]
    assert len(infeasible) > 0  # GPU-only cannot hold OPT-175B on one GPU
    assert infeasible[["latency_s", "throughput_tokens_per_s", "value", "speedup"]].isna().all().all()
    flexgen = frame[frame["plan"] == "flexgen"]
    # the CPU ISA is chosen per stage, so FlexGen's AVX-512 fp32 is in the optimiser's space; its five passes
    # over the KV cache are FlexGen's own cost, not a knob of this project's plans
    assert (flexgen["cpu_isa"] == "avx512_fp32").all()
    assert (flexgen["cpu_kv_passes"] == 5).all() and (frame[frame["plan"] == "ipex"]["head_device"] == "cpu").all()
    assert not frame[(frame["plan"] == "gpu_only") & (frame["model"] == "opt-175b")]["feasible"].any()


def test_e2e_rows_match_predict_for_the_stored_plan(reduced):
    """The CSV is what the cost model says about the plan it names (no number from elsewhere)."""
    frame = reduced["e2e"]
    row = frame[(frame["plan"] == "ipex") & (frame["scenario"] == "throughput_b64")].iloc[0]
    system, model = inputs.system(row["system"]), inputs.model(row["model"])
    wl = Workload(batch=int(row["batch"]), input_len=int(row["input_len"]), output_len=int(row["output_len"]))
    pred = predict(system, model, wl, baseline_plans(system, model, wl)["ipex"])
    assert row["throughput_tokens_per_s"] == pytest.approx(pred.throughput_tokens_per_s, rel=1e-5)


# ---------------------------------------------------------------- policy-map


def test_policy_map_optimum_beats_every_in_space_baseline(reduced):
    from studies.optimum import in_optimizer_space

    frame = reduced["policy-map"]
    checked = 0
    for _, row in frame.iterrows():
        system, model = inputs.system(row["system"]), inputs.model(row["model"])
        wl = Workload(batch=int(row["batch"]), input_len=int(row["input_len"]), output_len=int(row["output_len"]))
        for plan in baseline_plans(system, model, wl).values():
            if not in_optimizer_space(system, plan, wl.batch):
                continue
            pred = predict(system, model, wl, plan)
            if pred.feasible:
                assert row["feasible"], dict(row)
                assert row["latency_s"] <= pred.latency_s * (1 + 1e-5), (dict(row), plan.label)
                checked += 1
    assert checked > 0


def test_policy_map_marks_infeasible_cells_and_reads_policies_in_paper_notation(reduced):
    frame = reduced["policy-map"]
    assert not frame["feasible"].all()  # B = 4096 at L = 4096 does not fit any host
    assert frame["feasible"].any()
    feasible = frame[frame["feasible"].astype(bool)]
    assert feasible["prefill_policy"].str.fullmatch(r"\([01](,[01]){5}\)").all()
    assert frame[~frame["feasible"].astype(bool)]["prefill_policy"].isna().all()


# ---------------------------------------------------------------- cxl


def test_cxl_capacity_never_hurts(reduced):
    frame = reduced["cxl"]
    for _, part in frame.groupby(["base_system", "model"]):
        ddr, cxl = part[~part["cxl"].astype(bool)], part[part["cxl"].astype(bool)]

        def big(f, kind):
            return f[f["kind"] == kind].iloc[0]

        assert big(cxl, "largest_batch")["batch"] >= big(ddr, "largest_batch")["batch"]
        a = ddr[ddr["kind"] == "batch"].set_index("batch")
        b = cxl[cxl["kind"] == "batch"].set_index("batch")
        for batch in a.index:
            if a.loc[batch, "feasible"]:
                assert b.loc[batch, "feasible"]
                assert b.loc[batch, "throughput_tokens_per_s"] >= a.loc[batch, "throughput_tokens_per_s"] * (1 - REL)


def test_cxl_largest_batch_is_the_edge_of_feasibility(reduced):
    from lia_model.optimizer import InfeasibleError, optimize

    frame = reduced["cxl"]
    row = frame[(frame["kind"] == "largest_batch") & frame["cxl"].astype(bool)].iloc[0]
    system, model = inputs.system(row["system"]), inputs.model(row["model"])
    top = int(row["batch"])
    optimize(
        system,
        model,
        Workload(batch=top, input_len=int(row["input_len"]), output_len=int(row["output_len"])),
        solver="enumerate",
    )
    with pytest.raises(InfeasibleError):
        optimize(
            system,
            model,
            Workload(batch=top + 1, input_len=int(row["input_len"]), output_len=int(row["output_len"])),
            solver="enumerate",
        )


# ---------------------------------------------------------------- sensitivity


@pytest.mark.slow
def test_sensitivity_improving_hardware_never_hurts_the_optimum(reduced_slow):
    assert list(reduced_slow["sensitivity"].columns) == list(STUDIES["sensitivity"].columns)
    frame = reduced_slow["sensitivity"]
    groups = 0
    for (system, objective, parameter), part in frame.groupby(["system", "objective", "parameter"]):
        part = part.sort_values("factor")
        assert part["feasible"].all(), (system, parameter)
        values = part["value"].to_numpy(dtype=float)
        for lo, hi in zip(values, values[1:]):
            if objective == "throughput":
                assert hi >= lo * (1 - REL), (system, parameter, values)
            else:
                assert hi <= lo * (1 + REL), (system, parameter, values)
        groups += 1
    assert groups == 2 * 4  # two objectives x the reduced grid's four parameters


@pytest.mark.slow
def test_sensitivity_overrides_go_through_the_what_if_path(reduced_slow):
    """The row's override strings, given to load_system like --set, change exactly the named field."""
    from lia_model.profiles import load_system

    frame = reduced_slow["sensitivity"]
    row = frame[(frame["parameter"] == "cpu_cores") & (frame["factor"] == 0.5)].iloc[0]
    base = load_system(row["system"])
    changed = load_system(row["system"], row["overrides"].split(";"))
    assert changed.cpu.cores == round(base.cpu.cores * 0.5)
    assert "what-if" in changed.cpu.source["cores"]
    isa_row = frame[(frame["parameter"] == "cpu_matrix_throughput") & (frame["factor"] == 1.5)].iloc[0]
    scaled = load_system(isa_row["system"], isa_row["overrides"].split(";"))
    for isa, spec in base.cpu.isa.items():
        if spec.present:
            assert scaled.cpu.isa[isa].per_core_tflops == pytest.approx(spec.per_core_tflops * 1.5)


def test_policy_flips_are_found_where_the_policy_pair_changes():
    from studies.sensitivity import policy_flips

    frame = pd.DataFrame(
        {
            "system": "s",
            "objective": "latency",
            "parameter": "p",
            "factor": [0.5, 1.0, 1.5],
            "prefill_policy": ["(0,0,0,0,0,0)"] * 3,
            "decode_policy": ["(0,1,1,0,0,0)", "(0,1,1,0,0,0)", "(1,1,1,1,1,1)"],
        }
    )
    flips = policy_flips(frame)
    assert list(flips["to_factor"]) == [1.5] and list(flips["from_factor"]) == [1.0]


# ---------------------------------------------------------------- microbench


def test_microbench_respects_peaks_and_bandwidths(reduced):
    frame = reduced["microbench"]
    assert (frame["tflops"] <= frame["peak_tflops"] * (1 + 1e-9)).all()
    assert (frame["effective_gbps"] <= frame["bandwidth_gbps"] * (1 + 1e-9)).all()
    # A GEMV streams its weights: the datasheet profiles make it bandwidth-bound. (A calibrated profile folds
    # the measured GEMV speed into its efficiency at one row, so it may read as compute-bound there.)
    gemv = frame[(frame["rows"] == 1) & (frame["profile_kind"] == "datasheet")]
    assert len(gemv) > 0 and (gemv["bound"] == "memory").all()


@pytest.mark.parametrize(
    "profile,engine,published_tflops",
    [
        ("spr-8460h", "amx_bf16", 16.6),  # LIA paper: 16.6 TFLOPS AMX bf16 at realistic OPT FC1 shapes
        ("paper-h100", "bf16_tensor_core", 451),  # LIA paper's model: 451 TFLOPS sustained on H100
        ("h100-sxm-80gb", "bf16_tensor_core", 795),  # best bf16 linear on the GPU host's H100 80GB HBM3 (calibrated)
        ("a100-40gb-pcie", "bf16_tensor_core", 230),  # paper: 230 TFLOPS sustained on A100
    ],
)
def test_microbench_gemm_reproduces_published_sustained_throughput(reduced, profile, engine, published_tflops):
    frame = reduced["microbench"]
    row = frame[(frame["profile"] == profile) & (frame["engine"] == engine) & (frame["rows"] == 4096)].iloc[0]
    assert row["tflops"] == pytest.approx(published_tflops, rel=0.03)


# ---------------------------------------------------------------- cost


def test_cost_follows_from_prices_and_throughput(reduced):
    from studies.prices import HOURS_PER_YEAR, load_prices

    prices = load_prices()
    frame = reduced["cost"]
    for _, row in frame.iterrows():
        capex = sum(prices.parts[p].price_usd for p in prices.machines[row["machine"]])
        power_kw = sum(prices.parts[p].power_w for p in prices.machines[row["machine"]]) / 1000
        per_hour = (
            capex / (prices.amortisation_years * HOURS_PER_YEAR)
            + power_kw * prices.pue * prices.electricity_usd_per_kwh
        )
        assert row["cost_per_hour_usd"] == pytest.approx(per_hour, rel=1e-5)  # the CSV keeps 6 digits
        assert row["usd_per_million_tokens"] == pytest.approx(
            per_hour / (row["throughput_tokens_per_s"] * 3600) * 1e6, rel=1e-5
        )
    assert set(frame["machine"]) == {"spr-h100", "dgx-a100"}


def test_every_price_and_power_has_a_source():
    from studies.prices import load_prices

    prices = load_prices()
    for name, part in prices.parts.items():
        assert part.price_source.strip() and part.power_source.strip(), name
    assert prices.amortisation_years == 3


def test_tensor_parallel_decode_is_bounded_by_hbm_streaming():
    """At B = 1 a decode step must at least stream each GPU's 1/8 of the weights from HBM once, and an
    all-reduce-free roofline of the same bytes is within a small factor of it (overheads only)."""
    from lia_model.accounting import layer_weight_bytes
    from studies.tensor_parallel import load_node, predict_tp

    node = load_node()
    model = get_model("opt-175b")
    pred = predict_tp(node, model, Workload(batch=1, input_len=128, output_len=8))
    floor = model.num_layers * layer_weight_bytes(model) / node.gpus / (node.gpu.hbm_gbps * 1e9)
    assert floor <= pred.tpot_mean_s <= 2.0 * floor
    assert pred.memory_per_gpu_gb == pytest.approx(350 / 8, rel=0.06)  # OPT-175B: 350 GB of bf16 weights


def test_tensor_parallel_shard_refuses_indivisible_heads():
    from lia_model.errors import LiaInputError
    from studies.tensor_parallel import shard

    with pytest.raises(LiaInputError, match="num_heads"):
        shard(get_model("opt-30b"), 16)  # 56 heads do not split 16 ways


# ---------------------------------------------------------------- validation


def test_validation_without_data_writes_nothing(tmp_path):
    from studies.validation import STUDY, Grid

    study = dataclasses.replace(STUDY, full_grid=Grid(root=str(tmp_path)), reduced_grid=Grid(root=str(tmp_path)))
    result = run_study(study, tmp_path / "out", show_progress=False)
    assert result.skipped_reason and "no validation data" in result.skipped_reason
    assert not (tmp_path / "out").exists()


def test_validation_pairs_predicted_and_measured_columns(tmp_path):
    """The grid's validation CSV is read and paired (the data here is a test input); its per-sublayer columns are
    spelled as before the one row schema, and are read through runtime.report.upgrade_columns."""
    from studies.validation import STUDY, Grid

    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "runs.csv").write_text(
        "point_id,model,batch,status,predicted_ttft_s,measured_ttft_s,predicted_tpot_mean_s,measured_tpot_mean_s,"
        "decode_fc1_dev,decode_fc1_ms_predicted,decode_fc1_ms_measured\n"
        "p1,opt-tiny,1,ran,0.5,0.4,0.1,0.1,cpu,2.0,4.0\n"
        "p2,opt-tiny,8,skipped,0.9,,0.2,,gpu,1.0,\n"
    )
    study = dataclasses.replace(STUDY, full_grid=Grid(root=str(tmp_path), csv="validation/runs.csv"))
    result = run_study(study, tmp_path / "out", show_progress=False)
    frame = read_csv(tmp_path / "out" / "validation.csv").set_index("metric")
    assert result.rows == 3  # the skipped point has predictions only: nothing to compare
    assert frame.loc["ttft_s", "error_pct"] == pytest.approx(25.0)
    assert frame.loc["tpot_mean_s", "error_pct"] == pytest.approx(0.0)
    assert frame.loc["ttft_s", "source"] == "validation/runs.csv"
    fc1 = frame.loc["decode_fc1_ms"]
    assert (fc1["kind"], fc1["stage"], fc1["sublayer"], fc1["device"]) == ("sublayer", "decode", "fc1", "cpu")
    assert fc1["error_pct"] == pytest.approx(-50.0)


def test_cxl_bars_show_the_gain_at_print_size() -> None:
    """The CXL figure as bars (issue 16): two columns wide, nothing under 7 pt, and over each pair the gain
    with CXL, here hand-computed: largest batch 1302 / 1156 = x1.13, best throughput 300 / 250 = x1.20."""
    import pandas as pd

    from studies import cxl
    from studies.plotting import MIN_FONT_PT, TWO_COLUMN_IN

    rows = []
    for flag, largest, best in ((False, 1156, 250.0), (True, 1302, 300.0)):
        base = {"system": "spr-h100" + ("-cxl" if flag else ""), "base_system": "spr-h100", "cxl": flag}
        base |= {"model": "opt-30b", "feasible": True}
        rows.append(base | {"kind": "largest_batch", "batch": largest, "throughput_tokens_per_s": 1.0})
        rows.append(base | {"kind": "best_throughput", "batch": 512, "throughput_tokens_per_s": best})
    grid = cxl.Grid(systems=("spr-h100",), models=("opt-30b",), batches=(1,), input_len=256, output_len=32)
    fig = cxl.plot(pd.DataFrame(rows), grid)
    assert fig.get_size_inches()[0] <= TWO_COLUMN_IN
    texts = [t for t in fig.findobj(lambda o: hasattr(o, "get_fontsize") and hasattr(o, "get_text")) if t.get_text()]
    assert min(t.get_fontsize() for t in texts) >= MIN_FONT_PT
    labels = {t.get_text() for t in texts}
    assert {"x1.13", "x1.20"} <= labels


def test_e2e_bars_are_medians_with_min_max_whiskers_at_print_size() -> None:
    """The e2e figure as grouped bars (issue 16): two columns wide, nothing under 7 pt; a bar is the median of the
    optimum's speedup over the (L_in, L_out) where the baseline fits (2, 4 and 8 -> 4), its whisker runs from 2 to 8,
    and a baseline that fits nowhere is marked n/f."""
    import pandas as pd
    from matplotlib.collections import LineCollection
    from matplotlib.patches import Rectangle

    from studies import e2e
    from studies.plotting import MIN_FONT_PT, TWO_COLUMN_IN

    rows = []
    for i, (lin, speed) in enumerate(((32, 2.0), (128, 8.0), (512, 4.0))):
        base = {"system": "spr-h100", "model": "opt-66b", "input_len": lin, "output_len": 32}
        base |= {"scenario": "latency_b1"}
        rows.append(base | {"plan": "flexgen", "feasible": True, "speedup": speed})
        rows.append(base | {"plan": "ipex", "feasible": False, "speedup": float("nan")})
        rows.append(base | {"plan": "gpu_only", "feasible": i == 0, "speedup": 1.0})
        rows.append(base | {"plan": "optimum", "feasible": True, "speedup": float("nan")})
    grid = e2e.Grid(systems=("spr-h100",), models=("opt-66b",), lengths=((32, 32), (128, 32), (512, 32)))
    fig = e2e.plot(pd.DataFrame(rows), grid)
    assert fig.get_size_inches()[0] <= TWO_COLUMN_IN
    texts = [t for t in fig.findobj(lambda o: hasattr(o, "get_fontsize") and hasattr(o, "get_text")) if t.get_text()]
    assert min(t.get_fontsize() for t in texts) >= MIN_FONT_PT
    flexgen_ax, ipex_ax = fig.axes[0], fig.axes[1]
    bars = [p for p in flexgen_ax.patches if isinstance(p, Rectangle) and p.get_height() > 0]
    assert [round(b.get_height(), 9) for b in bars] == [4.0]
    (segment,) = [
        seg for coll in flexgen_ax.collections if isinstance(coll, LineCollection) for seg in coll.get_segments()
    ]
    assert sorted(segment[:, 1].tolist()) == [2.0, 8.0]
    assert "n/f" in {t.get_text() for t in ipex_ax.texts}
    assert any("GPU only fits at 1 of 3 points" in t.get_text() for t in fig.texts)
