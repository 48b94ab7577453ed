"""``lia plan`` and ``lia compare``: the optimum beside every baseline, for one query or many.

JSON schema of ``lia plan --json`` (stable; ``schema`` names its version):
  {
    "schema": "lia.plan/2",
    "query": {"system", "model", "batch", "input_len", "output_len", "objective", "tpot_max_s", "mode",
              "solver", "overrides": [..], "precision": {"weight_dtype", "weight_group_size", "kv_dtype"}},
    "optimum": <prediction>,            # see below; its "plan" round-trips into lia_model.plan.Plan
    "solve_time_s": float,
    "batches_tried": [int, ...],        # batches solved exactly
    "batch_search": null | {"largest_fitting_batch", "batches_solved", "gap_bound"},  # throughput only:
                                        # no batch of 1..largest_fitting_batch beats the optimum by more than
                                        # gap_bound (a fraction; 0.0 = proven best batch; null = not proven)
    "baselines": {label: <prediction> + {"speedup_of_optimum": float | null}},
                 # "flexgen" also has "flexgen": FlexGen's own policy and its own cost model's prediction
                 # (lia_model.flexgen.FlexGenChoice.as_json, null when FlexGen finds no policy) and
                 # "lia_runtime": our prediction of this project's runtime executing the same plan
  }
  <prediction> = {"system", "model", "workload": {batch, input_len, output_len, precision}, "mode", "plan": {...} (a Plan:
                  since lia.plan/2 with prefill_cpu_isa and decode_cpu_isa instead of lia.plan/1's cpu_isa),
                  "plan_in_words": {"prefill", "decode"}, "feasible", "ttft_s", "tpot_mean_s", "latency_s",
                  "throughput_tokens_per_s", "memory_gb": {tier: GB}, "memory_available_gb": {tier: GB},
                  "shortfalls": [{tier, required_gb, available_gb, shortfall_gb}], "bound_resource":
                  {"prefill", "decode"}, "tpot_s": [per step], "breakdown": [rows]}
Speedup of the optimum over a baseline: baseline latency / optimum latency for the latency objective,
optimum throughput / baseline throughput for the throughput objectives; null when the baseline does not fit.
Baselines run at the optimum's batch, except FlexGen under the throughput objectives, which runs at the batch
of its own search (gbs x num_gpu_batches; its <prediction>'s "workload" says which). A baseline's
<prediction> is of its peer running the plan (FlexGen's CPU attention makes more passes over the cache).
"""

from __future__ import annotations

import json
from typing import List, Optional

import typer
from rich.table import Table

from lia_model.cli_common import (
    BatchOpt, GroupSizeOpt, InputOpt, JsonOpt, KvDtypeOpt, ModeChoice, ModeOpt, ModelOpt, ObjectiveChoice, OutputOpt,
    SetOpt, SolverChoice, SystemOpt, WeightDtypeOpt, console, examples, finite_positive, load_inputs, parse_mode,
)
from lia_model.errors import LiaInputError

SCHEMA = "lia.plan/2"
MAX_TPOT_MS = 1e7  # about 2.8 hours per token: any larger bound is a typo

ObjectiveOpt = typer.Option(ObjectiveChoice.latency, "--objective", case_sensitive=False,
                            help="latency (one query of batch B), or throughput (the batch is chosen too, "
                                 "up to what memory allows).")
TpotOpt = typer.Option(None, "--tpot-max-ms", help="Bound on the mean time per output token, in ms (needs "
                       "--output 2 or more).")
SolverOpt = typer.Option(SolverChoice.cbc, "--solver", case_sensitive=False,
                         help="cbc (the ILP, default), highs (the ILP on HiGHS), or enumerate (exact "
                              "enumeration of the plan space, fastest).")


def speedup(objective: str, optimum, baseline) -> Optional[float]:
    if not baseline.feasible:
        return None
    if objective == "latency":
        return baseline.latency_s / optimum.latency_s
    return optimum.throughput_tokens_per_s / baseline.throughput_tokens_per_s


def check_tpot_bound(tpot_max_ms: Optional[float], output_len: int) -> Optional[float]:
    """The bound in seconds (None without one); an error when it is not a sane number or has no decode
    step to bound."""
    finite_positive("--tpot-max-ms", tpot_max_ms, "500", MAX_TPOT_MS)
    if tpot_max_ms is not None and output_len < 2:
        raise LiaInputError("--tpot-max-ms", f"with --output {output_len} there is no decode step, so no time per "
                            "output token to bound", "use --output 2 or more, or drop --tpot-max-ms")
    return None if tpot_max_ms is None else tpot_max_ms * 1e-3


def run_plan(system: str, model: str, batch: int, input_len: int, output_len: int, overrides, objective,
             tpot_max_ms: Optional[float], mode, solver, weight_dtype: Optional[str] = None,
             kv_dtype: Optional[str] = None, group_size: Optional[int] = None) -> dict:
    """Optimise one query and predict every baseline at the same batch: the dict of the JSON schema."""
    from lia_model.baselines import baselines as all_baselines
    from lia_model.costmodel import predict
    from lia_model.optimizer import optimize, parse_objective
    from lia_model.report import prediction_json

    obj = parse_objective(getattr(objective, "value", objective))
    cost_mode = parse_mode(mode)
    solver = getattr(solver, "value", solver)
    tpot_max_s = check_tpot_bound(tpot_max_ms, output_len)
    spec, mspec, workload = load_inputs(system, model, batch, input_len, output_len, overrides, weight_dtype, kv_dtype,
                                        group_size)
    result = optimize(spec, mspec, workload, obj, tpot_max_s=tpot_max_s, solver=solver, mode=cost_mode)
    chosen = result.workload
    baselines = {}
    for label, base in all_baselines(spec, mspec, chosen, choose_batch=obj.value != "latency").items():
        pred = base.predict(spec, mspec, cost_mode)
        row = prediction_json(pred, breakdown=False)
        row["speedup_of_optimum"] = speedup(obj.value, result.prediction, pred)
        if label == "flexgen":
            row["flexgen"] = base.flexgen.as_json() if base.flexgen else None
            if not base.runs:
                row["flexgen_does_not_run"] = base.why_not
            ours = predict(spec, mspec, base.workload, base.plan, cost_mode)
            row["lia_runtime"] = {"throughput_tokens_per_s": ours.throughput_tokens_per_s,
                                  "latency_s": ours.latency_s, "feasible": ours.feasible}
        baselines[label] = row
    return {
        "schema": SCHEMA,
        "query": {"system": spec.name, "model": mspec.name, "batch": chosen.batch, "input_len": input_len,
                  "output_len": output_len, "objective": obj.value, "tpot_max_s": tpot_max_s,
                  "mode": cost_mode.value, "solver": solver, "overrides": list(overrides or []),
                  "precision": workload.precision.model_dump(mode="json")},
        "optimum": prediction_json(result.prediction),
        "solve_time_s": result.solve_time_s,
        "batches_tried": list(result.batches_tried),
        "batch_search": None if obj.value == "latency" else {
            "largest_fitting_batch": result.largest_fitting_batch,
            "batches_solved": list(result.batches_tried),
            "gap_bound": result.batch_gap_bound},
        "baselines": baselines,
        "_prediction": result.prediction,
    }


def _fmt_speedup(value: Optional[float]) -> str:
    return "does not fit" if value is None else f"{value:.2f}x"


def batch_words(out: dict) -> str:
    """How the batch was chosen (throughput objectives)."""
    search = out.get("batch_search")
    if not search:
        return ""
    top = search["largest_fitting_batch"]
    if search["gap_bound"] is None:
        return (f" (the best of {len(search['batches_solved'])} batches solved in 1..{top}; not proven best: the "
                f"profile's kernel tables give no bound)")
    if search["gap_bound"] == 0.0:
        return f" (the best batch of 1..{top})"
    return (f" (no batch of 1..{top} is more than {search['gap_bound'] * 100:.2g}% better; "
            f"{len(search['batches_solved'])} batches solved)")


def print_plan(out: dict) -> None:
    from lia_model.report import HEADLINE_COLUMNS, fmt_s, headline_row, prediction_table

    q = out["query"]
    pred = out["_prediction"]
    bound = f", mean TPOT <= {q['tpot_max_s'] * 1e3:g} ms" if q["tpot_max_s"] else ""
    title = (f"optimal plan: {q['model']} on {q['system']}, B={q['batch']}{batch_words(out)}, L_in={q['input_len']}, "
             f"L_out={q['output_len']}, {pred.workload.precision.label()}, objective {q['objective']}{bound} "
             f"({q['mode']} model, {q['solver']}, "
             f"solved in {out['solve_time_s'] * 1e3:.0f} ms)")
    prediction_table(console, pred, title=title)
    flexgen_batch = out["baselines"]["flexgen"]["workload"]["batch"]
    table = Table(title="the optimum beside the baselines (same batch" + (
        f"; FlexGen at its own batch {flexgen_batch}" if flexgen_batch != q["batch"] else "") + ")")
    table.add_column("plan")
    table.add_column("prefill / decode policy")
    for col in HEADLINE_COLUMNS:
        table.add_column(col)
    table.add_column("speedup of optimum")
    table.add_row("optimum", f"{out['optimum']['plan_in_words']['prefill'].split()[0]} / "
                  f"{out['optimum']['plan_in_words']['decode'].split()[0]}", *headline_row(pred), "1.00x")
    for label, row in out["baselines"].items():
        mem = " ".join(f"{t.upper()} {row['memory_gb'][t]:.0f}/{row['memory_available_gb'][t]:.0f}"
                       for t in row["memory_gb"])
        fits = "yes" if row["feasible"] else "NO: " + ", ".join(
            f"{s['tier'].upper()} short {s['shortfall_gb']:.1f} GB" for s in row["shortfalls"])
        words = f"{row['plan_in_words']['prefill'].split()[0]} / {row['plan_in_words']['decode'].split()[0]}"
        table.add_row(label, words,
                      fmt_s(row["ttft_s"]), fmt_s(row["tpot_mean_s"]), fmt_s(row["latency_s"]),
                      f"{row['throughput_tokens_per_s']:.2f}", mem,
                      " / ".join(row["bound_resource"].values()), fits, _fmt_speedup(row["speedup_of_optimum"]))
    console.print(table)
    fg = out["baselines"]["flexgen"].get("flexgen")
    if fg:
        pct = " ".join(str(p) for p in fg["percent"])
        console.print(
            f"flexgen: FlexGen's own LP search chose gpu_batch_size {fg['gpu_batch_size']} x num_gpu_batches "
            f"{fg['num_gpu_batches']}, --percent {pct} (weights on the GPU = {fg['weights_gpu_layers']:.1f} of "
            f"the layers); FlexGen's cost model predicts {fg['flexgen_predicted']['throughput_tokens_per_s']:.2f} "
            f"tokens/s, ours {out['baselines']['flexgen']['throughput_tokens_per_s']:.2f} tokens/s "
            f"(CPU attention {fg['cpu_attention']['isa']}, {fg['cpu_attention']['kv_passes']:g} passes over the KV "
            f"cache; this project's runtime on the same plan: "
            f"{out['baselines']['flexgen']['lia_runtime']['throughput_tokens_per_s']:.2f} tokens/s)")


PLAN_EXAMPLES = examples(
    "lia plan",
    "lia plan --model opt-30b --system gnr-a100 --batch 64 --input 1024 --output 32",
    "lia plan --objective throughput --tpot-max-ms 2000",
    "lia plan --set gpu.memory_gib=141 --set link.h2d_gbps=64",
    "lia plan --model path/to/config.json --system my-system.yaml",
    "lia plan --json > plan.json ; lia predict --plan plan.json --mode additive",
    "lia plan --model opt-175b --system spr-a100 --weight-dtype int8 --kv-dtype fp8",
    "lia plan --weight-dtype int4 --group-size 64",
)


def plan(system: str = SystemOpt, model: str = ModelOpt, batch: int = BatchOpt, input_len: int = InputOpt,
         output_len: int = OutputOpt, objective: ObjectiveChoice = ObjectiveOpt,
         tpot_max_ms: Optional[float] = TpotOpt, overrides: Optional[List[str]] = SetOpt,
         mode: ModeChoice = ModeOpt, solver: SolverChoice = SolverOpt, weight_dtype: Optional[str] = WeightDtypeOpt,
         kv_dtype: Optional[str] = KvDtypeOpt, group_size: Optional[int] = GroupSizeOpt,
         as_json: bool = JsonOpt) -> None:
    """The optimal plan for one query beside every baseline (default: OPT-175B on spr-h100, B=1, 256 in,
    32 out, latency, bf16)."""
    out = run_plan(system, model, batch, input_len, output_len, overrides, objective, tpot_max_ms, mode, solver,
                   weight_dtype, kv_dtype, group_size)
    if as_json:
        out.pop("_prediction")
        typer.echo(json.dumps(out, indent=2, allow_nan=False))
    else:
        print_plan(out)


def _names(option: str, text: str, example: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names:
        raise LiaInputError(option, f"no names given ('{text}')", f"e.g. {option} {example}")
    return names


COMPARE_EXAMPLES = examples(
    "lia compare",
    "lia compare --systems spr-a100,spr-h100,gnr-a100,gnr-h100 --models opt-66b,opt-175b",
    "lia compare --systems spr-h100,spr-h100-cxl --models opt-30b --objective throughput",
    "lia compare --models a/config.json,b/config.json --json",
)


def compare(systems: str = typer.Option("spr-a100,spr-h100,gnr-a100,gnr-h100", "--systems",
                                        help="Comma-separated systems (names or .yaml paths)."),
            models: str = typer.Option("opt-175b", "--models", help="Comma-separated models (names or "
                                       "config.json paths)."),
            batch: int = BatchOpt, input_len: int = InputOpt, output_len: int = OutputOpt,
            objective: ObjectiveChoice = ObjectiveOpt, tpot_max_ms: Optional[float] = TpotOpt,
            overrides: Optional[List[str]] = SetOpt, mode: ModeChoice = ModeOpt, solver: SolverChoice = SolverOpt,
            as_json: bool = JsonOpt) -> None:
    """The optimum and the baselines for a list of systems and/or models, side by side."""
    from lia_model.optimizer import InfeasibleError
    from lia_model.report import fmt_s

    system_names = _names("--systems", systems, "spr-a100,spr-h100")
    model_names = _names("--models", models, "opt-66b,opt-175b")
    check_tpot_bound(tpot_max_ms, output_len)
    objective = getattr(objective, "value", objective)
    rows = []
    for s in system_names:
        for m in model_names:
            try:
                out = run_plan(s, m, batch, input_len, output_len, overrides, objective, tpot_max_ms, mode, solver)
                out.pop("_prediction")
                out["query"]["model_given"] = m
                rows.append(out)
            except InfeasibleError as err:
                rows.append({"query": {"system": s, "model": m, "model_given": m}, "infeasible": str(err)})
    # Two models with one name (e.g. two config.json files): show what was given instead.
    shown = [r["query"]["model"] for r in rows]
    for r in rows:
        if shown.count(r["query"]["model"]) > len(system_names):
            r["query"]["model"] = r["query"]["model_given"]
    if as_json:
        typer.echo(json.dumps({"schema": "lia.compare/2", "results": rows}, indent=2, allow_nan=False))
        return
    metric = "latency_s" if objective == "latency" else "throughput_tokens_per_s"
    labels = ["optimum"] + next((list(r["baselines"]) for r in rows if "baselines" in r), [])
    batch_text = f"B={batch}" if objective == "latency" else "B chosen per row (the batch column)"
    table = Table(title=f"{objective}: {batch_text}, L_in={input_len}, L_out={output_len} "
                        f"({'s' if metric == 'latency_s' else 'tokens/s'}; speedup of the optimum in brackets)")
    table.add_column("system")
    table.add_column("model")
    table.add_column("optimal policy (prefill / decode)")
    table.add_column("batch")
    for label in labels:
        table.add_column(label)
    for out in rows:
        q = out["query"]
        if "infeasible" in out:
            table.add_row(q["system"], q["model"], "no plan fits", "-", *["-"] * len(labels))
            continue
        opt = out["optimum"]
        cells = [fmt_s(opt[metric]) if metric == "latency_s" else f"{opt[metric]:.2f}"]
        for label in labels[1:]:
            row = out["baselines"].get(label)
            if row is None or not row["feasible"]:
                cells.append("does not fit")
                continue
            value = fmt_s(row[metric]) if metric == "latency_s" else f"{row[metric]:.2f}"
            cells.append(f"{value} ({_fmt_speedup(row['speedup_of_optimum'])})")
        policy = f"{opt['plan_in_words']['prefill'].split()[0]} / {opt['plan_in_words']['decode'].split()[0]}"
        table.add_row(q["system"], q["model"], policy, str(q["batch"]), *cells)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("plan", epilog=PLAN_EXAMPLES)(plan)
    app.command("compare", epilog=COMPARE_EXAMPLES)(compare)
