"""``lia plan`` and ``lia compare``: the optimum beside every baseline, for one query or many.

JSON schema of ``lia plan --json`` (stable; ``schema`` names its version):
  {
    "schema": "lia.plan/1",
    "query": {"system", "model", "batch", "input_len", "output_len", "objective", "tpot_max_s", "mode",
              "solver", "overrides": [..]},
    "optimum": <prediction>,            # see below; its "plan" round-trips into lia_model.plan.Plan
    "solve_time_s": float,
    "batches_tried": [int, ...],
    "baselines": {label: <prediction> + {"speedup_of_optimum": float | null}},
                 # "flexgen" also has "flexgen": FlexGen's own policy and its own cost model's prediction
                 # (lia_model.flexgen.FlexGenChoice.as_json, null when FlexGen finds no policy) and
                 # "lia_runtime": our prediction of this project's runtime executing the same plan
  }
  <prediction> = {"system", "model", "workload": {batch, input_len, output_len}, "mode", "plan": {...},
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
    BatchOpt, InputOpt, JsonOpt, ModeOpt, ModelOpt, OutputOpt, SetOpt, SystemOpt, console, load_inputs, parse_mode,
)

SCHEMA = "lia.plan/1"

ObjectiveOpt = typer.Option("latency", "--objective", help="latency, or throughput (the batch is chosen too).")
TpotOpt = typer.Option(None, "--tpot-max-ms", help="Bound on the mean time per output token, in ms.")
SolverOpt = typer.Option("cbc", "--solver", help="cbc (default), highs, or enumerate (exact, fastest).")


def speedup(objective: str, optimum, baseline) -> Optional[float]:
    if not baseline.feasible:
        return None
    if objective == "latency":
        return baseline.latency_s / optimum.latency_s
    return optimum.throughput_tokens_per_s / baseline.throughput_tokens_per_s


def run_plan(system: str, model: str, batch: int, input_len: int, output_len: int, overrides, objective: str,
             tpot_max_ms: Optional[float], mode: str, solver: str) -> dict:
    """Optimise one query and predict every baseline at the same batch: the dict of the JSON schema."""
    from lia_model.baselines import baselines as all_baselines
    from lia_model.costmodel import predict
    from lia_model.optimizer import optimize, parse_objective
    from lia_model.report import prediction_json

    spec, mspec, workload = load_inputs(system, model, batch, input_len, output_len, overrides)
    obj = parse_objective(objective)
    cost_mode = parse_mode(mode)
    tpot_max_s = None if tpot_max_ms is None else tpot_max_ms * 1e-3
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
                  "mode": cost_mode.value, "solver": solver, "overrides": list(overrides or [])},
        "optimum": prediction_json(result.prediction),
        "solve_time_s": result.solve_time_s,
        "batches_tried": list(result.batches_tried),
        "baselines": baselines,
        "_prediction": result.prediction,
    }


def _fmt_speedup(value: Optional[float]) -> str:
    return "does not fit" if value is None else f"{value:.2f}x"


def print_plan(out: dict) -> None:
    from lia_model.report import HEADLINE_COLUMNS, fmt_s, headline_row, prediction_table

    q = out["query"]
    pred = out["_prediction"]
    bound = f", mean TPOT <= {q['tpot_max_s'] * 1e3:g} ms" if q["tpot_max_s"] else ""
    title = (f"optimal plan: {q['model']} on {q['system']}, B={q['batch']}, L_in={q['input_len']}, "
             f"L_out={q['output_len']}, objective {q['objective']}{bound} ({q['mode']} model, {q['solver']}, "
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
        table.add_row(label, f"{row['plan_in_words']['prefill'].split()[0]} / {row['plan_in_words']['decode'].split()[0]}",
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


def plan(system: str = SystemOpt, model: str = ModelOpt, batch: int = BatchOpt, input_len: int = InputOpt,
         output_len: int = OutputOpt, objective: str = ObjectiveOpt, tpot_max_ms: Optional[float] = TpotOpt,
         overrides: Optional[List[str]] = SetOpt, mode: str = ModeOpt, solver: str = SolverOpt,
         as_json: bool = JsonOpt) -> None:
    """The optimal plan for one query (default: OPT-175B on spr-h100, B=1, 256 in, 32 out, latency)."""
    out = run_plan(system, model, batch, input_len, output_len, overrides, objective, tpot_max_ms, mode, solver)
    if as_json:
        out.pop("_prediction")
        typer.echo(json.dumps(out, indent=2))
    else:
        print_plan(out)


def compare(systems: str = typer.Option("spr-a100,spr-h100,gnr-a100,gnr-h100", "--systems",
                                        help="Comma-separated systems."),
            models: str = typer.Option("opt-175b", "--models", help="Comma-separated models."),
            batch: int = BatchOpt, input_len: int = InputOpt, output_len: int = OutputOpt,
            objective: str = ObjectiveOpt, tpot_max_ms: Optional[float] = TpotOpt,
            overrides: Optional[List[str]] = SetOpt, mode: str = ModeOpt, solver: str = SolverOpt,
            as_json: bool = JsonOpt) -> None:
    """The optimum and the baselines for a list of systems and/or models, side by side."""
    from lia_model.optimizer import InfeasibleError
    from lia_model.report import fmt_s

    rows = []
    for s in [x.strip() for x in systems.split(",") if x.strip()]:
        for m in [x.strip() for x in models.split(",") if x.strip()]:
            try:
                out = run_plan(s, m, batch, input_len, output_len, overrides, objective, tpot_max_ms, mode, solver)
                out.pop("_prediction")
                rows.append(out)
            except InfeasibleError as err:
                rows.append({"query": {"system": s, "model": m}, "infeasible": str(err)})
    if as_json:
        typer.echo(json.dumps({"schema": "lia.compare/1", "results": rows}, indent=2))
        return
    metric = "latency_s" if objective == "latency" else "throughput_tokens_per_s"
    labels = ["optimum", "flexgen", "ipex", "gpu_only", "lia_(0,0,0,0,0,0)", "lia_(1,1,1,1,1,1)", "lia_(0,1,1,0,0,0)"]
    table = Table(title=f"{objective}: B={batch}, L_in={input_len}, L_out={output_len} "
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
            row = out["baselines"][label]
            if not row["feasible"]:
                cells.append("does not fit")
                continue
            value = fmt_s(row[metric]) if metric == "latency_s" else f"{row[metric]:.2f}"
            cells.append(f"{value} ({_fmt_speedup(row['speedup_of_optimum'])})")
        policy = f"{opt['plan_in_words']['prefill'].split()[0]} / {opt['plan_in_words']['decode'].split()[0]}"
        table.add_row(q["system"], q["model"], policy, str(q["batch"]), *cells)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
    app.command("compare")(compare)

