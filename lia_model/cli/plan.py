"""``lia plan`` and ``lia compare``: the optimum beside every baseline, for one query or many.

JSON schema of ``lia plan --json`` (stable; ``schema`` names its version):
  {
    "schema": "lia.plan/2",
    "query": {"system", "model", "batch", "input_len", "output_len", "objective", "tpot_max_s", "ttft_max_s",
              "mode", "solver", "overrides": [..], "precision": {"weight_dtype", "weight_group_size", "kv_dtype"}},
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer
from rich.table import Table

from lia_model.cli.common import (
    BatchOpt,
    GroupSizeOpt,
    InputOpt,
    JsonOpt,
    KvDtypeOpt,
    ModeChoice,
    ModelOpt,
    ModeOpt,
    ObjectiveChoice,
    OutputOpt,
    SetOpt,
    SolverChoice,
    SystemOpt,
    WeightDtypeOpt,
    console,
    examples,
    finite_positive,
    load_inputs,
    parse_mode,
)
from lia_model.errors import LiaInputError
from lia_model.query import Query, default, describe

if TYPE_CHECKING:
    from lia_model.costmodel import Prediction

SCHEMA = "lia.plan/2"
MAX_TPOT_MS = 1e7  # about 2.8 hours per token: any larger bound is a typo
MAX_TTFT_MS = 1e8  # about 28 hours to the first token: any larger bound is a typo

ObjectiveOpt = typer.Option(
    ObjectiveChoice(default("objective")), "--objective", case_sensitive=False, help=describe("objective")
)
TpotOpt = typer.Option(default("tpot_max_ms"), "--tpot-max-ms", help=describe("tpot_max_ms"))
TtftOpt = typer.Option(default("ttft_max_ms"), "--ttft-max-ms", help=describe("ttft_max_ms"))
SolverOpt = typer.Option(SolverChoice(default("solver")), "--solver", case_sensitive=False, help=describe("solver"))


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
        raise LiaInputError(
            "--tpot-max-ms",
            f"with --output {output_len} there is no decode step, so no time per output token to bound",
            "use --output 2 or more, or drop --tpot-max-ms",
        )
    return None if tpot_max_ms is None else tpot_max_ms * 1e-3


def check_ttft_bound(ttft_max_ms: Optional[float]) -> Optional[float]:
    """The TTFT bound in seconds (None without one); an error when it is not a sane number."""
    if isinstance(ttft_max_ms, bool):
        raise LiaInputError("--ttft-max-ms", f"must be a number, got {ttft_max_ms}", "e.g. --ttft-max-ms 5000")
    finite_positive("--ttft-max-ms", ttft_max_ms, "5000", MAX_TTFT_MS)
    return None if ttft_max_ms is None else ttft_max_ms * 1e-3


@dataclass(frozen=True)
class PlanResult:
    """What ``run_plan`` answers: the JSON document of ``lia plan --json`` and the optimum's Prediction."""

    document: dict
    prediction: Prediction


def run_plan(query: Query) -> PlanResult:
    """Optimise one query and predict every baseline at the same batch."""
    from lia_model.baselines import baselines as all_baselines
    from lia_model.cli.report import prediction_json
    from lia_model.costmodel import predict
    from lia_model.optimizer import optimize, parse_objective

    q = query
    obj = parse_objective(q.objective)
    cost_mode = parse_mode(q.mode)
    solver = q.solver
    input_len, output_len, overrides = q.input_len, q.output_len, list(q.overrides)
    tpot_max_s = check_tpot_bound(q.tpot_max_ms, output_len)
    ttft_max_s = check_ttft_bound(q.ttft_max_ms)
    spec, mspec, workload = load_inputs(
        q.system, q.model, q.batch, input_len, output_len, overrides, q.weight_dtype, q.kv_dtype, q.group_size
    )
    result = optimize(
        spec, mspec, workload, obj, tpot_max_s=tpot_max_s, ttft_max_s=ttft_max_s, solver=solver, mode=cost_mode
    )
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
            row["lia_runtime"] = {
                "throughput_tokens_per_s": ours.throughput_tokens_per_s,
                "latency_s": ours.latency_s,
                "feasible": ours.feasible,
            }
        baselines[label] = row
    document = {
        "schema": SCHEMA,
        "query": {
            "system": spec.name,
            "model": mspec.name,
            "batch": chosen.batch,
            "input_len": input_len,
            "output_len": output_len,
            "objective": obj.value,
            "tpot_max_s": tpot_max_s,
            "ttft_max_s": ttft_max_s,
            "mode": cost_mode.value,
            "solver": solver,
            "overrides": list(overrides or []),
            "precision": workload.precision.model_dump(mode="json"),
        },
        "optimum": prediction_json(result.prediction),
        "solve_time_s": result.solve_time_s,
        "batches_tried": list(result.batches_tried),
        "batch_search": None
        if obj.value == "latency"
        else {
            "largest_fitting_batch": result.largest_fitting_batch,
            "batches_solved": list(result.batches_tried),
            "gap_bound": result.batch_gap_bound,
        },
        "baselines": baselines,
    }
    return PlanResult(document, result.prediction)


def _fmt_speedup(value: Optional[float]) -> str:
    return "does not fit" if value is None else f"{value:.2f}x"


def batch_words(out: dict) -> str:
    """How the batch was chosen (throughput objectives)."""
    search = out.get("batch_search")
    if not search:
        return ""
    top = search["largest_fitting_batch"]
    if search["gap_bound"] is None:
        return (
            f" (the best of {len(search['batches_solved'])} batches solved in 1..{top}; not proven best: the "
            f"profile's kernel tables give no bound)"
        )
    if search["gap_bound"] == 0.0:
        return f" (the best batch of 1..{top})"
    return (
        f" (no batch of 1..{top} is more than {search['gap_bound'] * 100:.2g}% better; "
        f"{len(search['batches_solved'])} batches solved)"
    )


def print_plan(result: PlanResult) -> None:
    from lia_model.cli.report import HEADLINE_COLUMNS, fmt_s, headline_row, prediction_table

    out = result.document
    q = out["query"]
    pred = result.prediction
    bound = f", mean TPOT <= {q['tpot_max_s'] * 1e3:g} ms" if q["tpot_max_s"] else ""
    bound += f", TTFT <= {q['ttft_max_s'] * 1e3:g} ms" if q["ttft_max_s"] else ""
    title = (
        f"optimal plan: {q['model']} on {q['system']}, B={q['batch']}{batch_words(out)}, L_in={q['input_len']}, "
        f"L_out={q['output_len']}, {pred.workload.precision.label()}, objective {q['objective']}{bound} "
        f"({q['mode']} model, {q['solver']}, "
        f"solved in {out['solve_time_s'] * 1e3:.0f} ms)"
    )
    prediction_table(console, pred, title=title)
    flexgen_batch = out["baselines"]["flexgen"]["workload"]["batch"]
    table = Table(
        title="the optimum beside the baselines (same batch"
        + (f"; FlexGen at its own batch {flexgen_batch}" if flexgen_batch != q["batch"] else "")
        + ")"
    )
    table.add_column("plan")
    table.add_column("prefill / decode policy")
    for col in HEADLINE_COLUMNS:
        table.add_column(col)
    table.add_column("speedup of optimum")
    table.add_row(
        "optimum",
        f"{out['optimum']['plan_in_words']['prefill'].split()[0]} / "
        f"{out['optimum']['plan_in_words']['decode'].split()[0]}",
        *headline_row(pred),
        "1.00x",
    )
    for label, row in out["baselines"].items():
        mem = " ".join(
            f"{t.upper()} {row['memory_gb'][t]:.0f}/{row['memory_available_gb'][t]:.0f}" for t in row["memory_gb"]
        )
        fits = (
            "yes"
            if row["feasible"]
            else "NO: " + ", ".join(f"{s['tier'].upper()} short {s['shortfall_gb']:.1f} GB" for s in row["shortfalls"])
        )
        words = f"{row['plan_in_words']['prefill'].split()[0]} / {row['plan_in_words']['decode'].split()[0]}"
        table.add_row(
            label,
            words,
            fmt_s(row["ttft_s"]),
            fmt_s(row["tpot_mean_s"]),
            fmt_s(row["latency_s"]),
            f"{row['throughput_tokens_per_s']:.2f}",
            mem,
            " / ".join(row["bound_resource"].values()),
            fits,
            _fmt_speedup(row["speedup_of_optimum"]),
        )
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
            f"{out['baselines']['flexgen']['lia_runtime']['throughput_tokens_per_s']:.2f} tokens/s)"
        )


PLAN_EXAMPLES = examples(
    "lia plan",
    "lia plan --model opt-30b --system gnr-a100 --batch 64 --input 1024 --output 32",
    "lia plan --objective throughput --tpot-max-ms 2000",
    "lia plan --objective throughput --tpot-max-ms 500 --ttft-max-ms 20000",
    "lia plan --set gpu.memory_gib=141 --set link.h2d_gbps=64",
    "lia plan --model path/to/config.json --system my-system.yaml",
    "lia plan --json > plan.json ; lia predict --plan plan.json --mode additive",
    "lia plan --model opt-175b --system spr-a100 --weight-dtype int8 --kv-dtype fp8",
    "lia plan --weight-dtype int4 --group-size 64",
)


def plan(
    system: str = SystemOpt,
    model: str = ModelOpt,
    batch: int = BatchOpt,
    input_len: int = InputOpt,
    output_len: int = OutputOpt,
    objective: ObjectiveChoice = ObjectiveOpt,
    tpot_max_ms: Optional[float] = TpotOpt,
    ttft_max_ms: Optional[float] = TtftOpt,
    overrides: Optional[List[str]] = SetOpt,
    mode: ModeChoice = ModeOpt,
    solver: SolverChoice = SolverOpt,
    weight_dtype: Optional[str] = WeightDtypeOpt,
    kv_dtype: Optional[str] = KvDtypeOpt,
    group_size: Optional[int] = GroupSizeOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The optimal plan for one query beside every baseline (default: OPT-175B on spr-h100, B=1, 256 in,
    32 out, latency, bf16)."""
    result = run_plan(Query.of(**locals()))  # the options named as the Query's fields
    if as_json:
        typer.echo(json.dumps(result.document, indent=2, allow_nan=False))
    else:
        print_plan(result)


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
    "lia compare --prices studies/prices.yaml --rank cost_per_mtok --models opt-175b,llama-3.1-70b "
    "--tp-node studies/dgx_a100.yaml",
    "lia compare --prices studies/prices.yaml --tpot-max-ms 200 --ttft-max-ms 5000 --csv ranked.csv",
)


def _check_out_file(path: Optional[Path], force: bool) -> None:
    if path is None:
        return
    if path.exists() and path.is_dir():
        raise LiaInputError("--csv", f"'{path}' is a folder", "give a file name, e.g. --csv ranked.csv")
    if path.exists() and not force:
        raise LiaInputError("--csv", f"'{path}' exists", "choose another file name, or add --force to overwrite it")
    if not path.parent.exists():
        raise LiaInputError(
            "--csv", f"the folder '{path.parent}' does not exist", "create it first, or give another path"
        )


def _single_gpu_row(query: Query) -> dict:
    """The optimum of the query's (system, model) as a ranked-table row (no prices yet); a precision the system
    cannot run is the row's why_not."""
    from lia_model.optimizer import InfeasibleError, optimize
    from lia_model.plan import policy_notation

    q = query
    objective, solver, mode = q.objective, q.solver, parse_mode(q.mode)
    tpot_max_s = check_tpot_bound(q.tpot_max_ms, q.output_len)
    ttft_max_s = check_ttft_bound(q.ttft_max_ms)
    spec, mspec, workload = load_inputs(
        q.system,
        q.model,
        q.batch,
        q.input_len,
        q.output_len,
        list(q.overrides),
        q.weight_dtype,
        q.kv_dtype,
        q.group_size,
    )
    row = {"model": mspec.name, "machine": spec.name, "execution": "LIA, CPU + 1 GPU"}
    try:
        result = optimize(
            spec, mspec, workload, objective, tpot_max_s=tpot_max_s, ttft_max_s=ttft_max_s, solver=solver, mode=mode
        )
    except InfeasibleError as err:
        return {**row, "feasible": False, "why_not": str(err).split(" -- ")[0]}
    except LiaInputError as err:
        if not _is_precision_error(err):
            raise
        return {**row, "feasible": False, "why_not": f"cannot run {workload.precision.label()}: {err.problem}"}
    pred, plan = result.prediction, result.plan
    return {
        **row,
        "feasible": True,
        "batch": result.workload.batch,
        # throughput: no batch beats this one by more than this fraction (0 = proven best; None = not proven)
        "batch_gap_bound": result.batch_gap_bound if objective == "throughput" else 0.0,
        "prefill_policy": policy_notation(plan.prefill_policy),
        "decode_policy": policy_notation(plan.decode_policy),
        "gpu_resident_layers": plan.gpu_resident_layers,
        "ttft_s": pred.ttft_s,
        "tpot_mean_s": pred.tpot_mean_s,
        "latency_s": pred.latency_s,
        "throughput_tokens_per_s": pred.throughput_tokens_per_s,
    }


def _is_precision_error(err: LiaInputError) -> bool:
    """Whether an error says the system cannot run the requested precision (lia_model.costterms.check_precision)."""
    return err.field in ("--weight-dtype", "--kv-dtype") or err.field.endswith("dequant_gelems_per_s")


def _tp_row(
    node,
    model: str,
    batch: int,
    input_len: int,
    output_len: int,
    objective: str,
    tpot_max_s: Optional[float],
    ttft_max_s: Optional[float] = None,
) -> dict:
    """A tensor-parallel node (lia_model.tensor_parallel) as a ranked-table row: the node at the batch (latency),
    or at its best batch (throughput), within the bounds."""
    from lia_model.inputs import resolve_model
    from lia_model.tensor_parallel import best_at_batch, best_throughput
    from lia_model.workload import make_workload

    mspec = resolve_model(model)
    workload = make_workload(batch, input_len, output_len, mspec)
    row = {"model": mspec.name, "machine": node.name, "execution": f"tensor parallel, {node.gpus} GPUs"}
    if objective == "latency":
        pred = best_at_batch(node, mspec, workload, tpot_max_s, ttft_max_s)
    else:
        pred = best_throughput(node, mspec, input_len, output_len, tpot_max_s, ttft_max_s)
    if pred is None:
        bounds = " and ".join(name for name, value in (("TPOT", tpot_max_s), ("TTFT", ttft_max_s)) if value is not None)
        why = "no batch fits its HBM" + (f" within the {bounds} bound" if bounds else "")
        if objective == "latency":
            why = f"B={batch} does not fit its HBM" + (f" or the {bounds} bound" if bounds else "")
        return {**row, "feasible": False, "why_not": why}
    return {
        **row,
        "feasible": True,
        "batch": pred.workload.batch,
        "batch_gap_bound": 0.0,  # best_throughput tries every batch
        "ttft_s": pred.ttft_s,
        "tpot_mean_s": pred.tpot_mean_s,
        "latency_s": pred.latency_s,
        "throughput_tokens_per_s": pred.throughput_tokens_per_s,
    }


def _priced(row: dict, prices) -> dict:
    """Add power, price, $/h and $/Mtok (lia_model.prices) and whether the row qualifies for a rank."""
    from lia_model.cli.report import RANKED_COLUMNS

    out = {c: None for c in RANKED_COLUMNS}
    out.update(row)
    why = row.get("why_not")  # the optimiser met the bounds, or says here why no plan does
    out["why_not"] = why
    out["qualifies"] = bool(row["feasible"]) and why is None
    if prices is not None:
        machine = row["machine"]
        out["power_w"] = prices.power_w(machine)
        out["capex_usd"] = prices.capex_usd(machine)
        out["cost_per_hour_usd"] = prices.cost_per_hour_usd(machine)
        if row["feasible"]:
            out["usd_per_million_tokens"] = prices.usd_per_million_tokens(machine, row["throughput_tokens_per_s"])
    out.pop("feasible", None)
    return out


def batch_cell(batch: object, gap_bound: object) -> str:
    """The batch, with how close the batch search came to proving it the best: nothing when proven (or a
    fixed batch), "<=x% gap" when bounded, "gap unknown" when no bound exists."""
    if batch is None:
        return "-"
    if gap_bound is None:
        return f"{batch} (gap unknown)"
    if gap_bound > 0.0:
        return f"{batch} (<={gap_bound * 100:.2g}% gap)"
    return str(batch)


def _fmt_cell(value, kind: str) -> str:
    from lia_model.cli.report import fmt_s

    if value is None:
        return "-"
    if kind == "s":
        return fmt_s(value)
    if kind == "usd":
        return f"{value:,.2f}" if value < 1000 else f"{value:,.0f}"
    if kind == "kw":
        return f"{value / 1000:.2f}"
    if kind == "tok":
        return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"
    return str(value)


def _ranked_compare(
    query: Query,
    objective: Optional[str],
    system_names: list[str],
    model_names: list[str],
    tp_nodes: list[str],
    prices_path: Optional[str],
    rank: Optional[str],
    csv_path,
    force: bool,
    as_json: bool,
) -> None:
    """The ranked purchase table. ``query`` holds the workload, bounds, cost mode, solver and precision (its
    system and model are set per row); ``objective`` is None when the rank decides it."""
    import csv as csv_module

    batch, input_len, output_len, overrides = query.batch, query.input_len, query.output_len, list(query.overrides)
    tpot_max_ms, ttft_max_ms, mode, solver = query.tpot_max_ms, query.ttft_max_ms, query.mode, query.solver
    precision = (query.weight_dtype, query.kv_dtype, query.group_size)

    from lia_model.cli.report import RANKED_COLUMNS, RANKS, rank_rows
    from lia_model.inputs import load_prices, load_tp_node

    if rank is None:
        rank = "cost_per_mtok" if prices_path else ("latency" if objective == "latency" else "tokens_per_s")
    if rank not in RANKS:
        raise LiaInputError("--rank", f"unknown rank '{rank}'", f"use one of {', '.join(RANKS)}")
    if rank == "cost_per_mtok" and prices_path is None:
        raise LiaInputError(
            "--rank",
            "cost_per_mtok needs prices",
            "add --prices FILE, e.g. --prices studies/prices.yaml (its schema: lia_model/prices.py)",
        )
    if objective is None:
        objective = "latency" if rank == "latency" else "throughput"
    query = query.model_copy(update={"objective": objective})  # decided: every row solves this objective
    cost_mode = parse_mode(mode)
    tpot_max_s = check_tpot_bound(tpot_max_ms, output_len)
    ttft_max_s = check_ttft_bound(ttft_max_ms)
    _check_out_file(csv_path, force)
    prices = load_prices(prices_path) if prices_path is not None else None
    nodes = [load_tp_node(p) for p in tp_nodes]
    if prices is not None:  # every machine must be priced: said before anything is solved
        for name in [
            load_inputs(s, model_names[0], batch, input_len, output_len, overrides)[0].name for s in system_names
        ] + [n.name for n in nodes]:
            prices.capex_usd(name)
    rows = []
    for m in model_names:
        for s in system_names:
            rows.append(_single_gpu_row(query.model_copy(update={"system": s, "model": m})))
        for node in nodes:
            if any(p is not None for p in precision):
                from lia_model.inputs import resolve_model

                name = resolve_model(m).name
                row = {"model": name, "machine": node.name, "execution": f"tensor parallel, {node.gpus} GPUs"}
                rows.append({**row, "feasible": False, "why_not": "tensor-parallel nodes are modelled in bf16 only"})
                continue
            rows.append(_tp_row(node, m, batch, input_len, output_len, objective, tpot_max_s, ttft_max_s))
    ranked = rank_rows([_priced(r, prices) for r in rows], rank)
    header = {
        "rank": rank,
        "objective": objective,
        "batch": batch if objective == "latency" else "chosen per row (up to what memory allows)",
        "input_len": input_len,
        "output_len": output_len,
        "mode": cost_mode.value,
        "solver": solver,
        "tpot_max_s": tpot_max_s,
        "ttft_max_s": ttft_max_s,
        "overrides": list(overrides or []),
        "prices": prices_path,
        "tp_nodes": list(tp_nodes),
        "amortisation_years": prices.amortisation_years if prices else None,
        "electricity_usd_per_kwh": prices.electricity_usd_per_kwh if prices else None,
        "pue": prices.pue if prices else None,
        "precision": {"weight_dtype": precision[0], "kv_dtype": precision[1], "group_size": precision[2]},
    }
    if csv_path is not None:
        try:
            with open(csv_path, "w", newline="") as fh:
                writer = csv_module.writer(fh, lineterminator="\n")
                writer.writerow(RANKED_COLUMNS)
                for r in ranked:
                    writer.writerow(["" if r[c] is None else r[c] for c in RANKED_COLUMNS])
        except OSError as err:
            raise LiaInputError(
                "--csv", f"cannot write '{csv_path}' ({err.strerror})", "give a writable path"
            ) from None
    if as_json:
        typer.echo(
            json.dumps(
                {"schema": "lia.compare.ranked/1", "header": header, "results": ranked}, indent=2, allow_nan=False
            )
        )
        return
    lines = [
        f"ranked by {rank} (winner first), objective {objective}, "
        + (f"B={batch}" if objective == "latency" else "batch chosen per row")
        + f", L_in={input_len}, L_out={output_len}, {cost_mode.value} model, solver {solver}"
        + (
            f", weights {precision[0] or 'bf16'}"
            + (f" (groups of {precision[2]})" if precision[2] else "")
            + f", KV {precision[1] or 'bf16'}"
            if any(p is not None for p in precision)
            else ""
        )
    ]
    bounds = [
        f"mean TPOT <= {tpot_max_ms:g} ms (optimiser constraint)" if tpot_max_ms is not None else "",
        f"TTFT <= {ttft_max_ms:g} ms (optimiser constraint)" if ttft_max_ms is not None else "",
    ]
    lines.append("bounds: " + ("; ".join(b for b in bounds if b) or "none"))
    lines.append(
        "what-if overrides: "
        + (
            ", ".join(overrides) + " (on every single-GPU system; not on tensor-parallel nodes; prices unchanged)"
            if overrides
            else "none"
        )
    )
    if prices is not None:
        lines.append(
            f"prices: {prices_path} ({prices.amortisation_years:g}-year amortisation, "
            f"{prices.electricity_usd_per_kwh:g} USD/kWh, PUE {prices.pue:g}, busy 100% of the time; "
            f"power is the sum of component TDPs)"
        )
    if nodes:
        lines.append("tensor-parallel nodes: " + ", ".join(f"{n.name} ({p})" for n, p in zip(nodes, tp_nodes)))
    for line in lines:
        console.print(line, markup=False, highlight=False)
    for model in dict.fromkeys(r["model"] for r in ranked):
        table = Table(title=f"{model}: ranked by {rank}")
        cols = [
            ("#", "rank", "raw"),
            ("machine", "machine", "raw"),
            ("execution", "execution", "raw"),
            ("batch", "batch", "raw"),
            ("policy prefill / decode", None, "policy"),
            ("TTFT", "ttft_s", "s"),
            ("TPOT mean", "tpot_mean_s", "s"),
            ("latency", "latency_s", "s"),
            ("tokens/s", "throughput_tokens_per_s", "tok"),
        ]
        if prices is not None:
            cols += [
                ("power kW", "power_w", "kw"),
                ("price USD", "capex_usd", "usd"),
                ("USD/h", "cost_per_hour_usd", "usd"),
                ("USD/Mtok", "usd_per_million_tokens", "usd"),
            ]
        cols.append(("note", "why_not", "raw"))
        for title, _, kind in cols:
            table.add_column(title, justify="right" if kind in ("s", "tok", "kw", "usd") else "left")
        for r in (r for r in ranked if r["model"] == model):
            cells = []
            for _, key, kind in cols:
                if kind == "policy":
                    cells.append(f"{r['prefill_policy']} / {r['decode_policy']}" if r["prefill_policy"] else "-")
                elif key == "batch":
                    cells.append(batch_cell(r["batch"], r.get("batch_gap_bound", 0.0)))
                else:
                    cells.append(_fmt_cell(r[key], kind))
            table.add_row(*cells)
        console.print(table)
    if csv_path is not None:
        console.print(f"wrote {csv_path}", markup=False, highlight=False)


def compare(
    systems: str = typer.Option(
        "spr-a100,spr-h100,gnr-a100,gnr-h100", "--systems", help="Comma-separated systems (names or .yaml paths)."
    ),
    models: str = typer.Option("opt-175b", "--models", help="Comma-separated models (names or config.json paths)."),
    batch: int = BatchOpt,
    input_len: int = InputOpt,
    output_len: int = OutputOpt,
    objective: Optional[ObjectiveChoice] = typer.Option(
        None,
        "--objective",
        case_sensitive=False,
        help="latency (batch B) or throughput (batch chosen). Default: latency, or with a ranking "
        "throughput unless --rank latency.",
    ),
    tpot_max_ms: Optional[float] = TpotOpt,
    overrides: Optional[List[str]] = SetOpt,
    mode: ModeChoice = ModeOpt,
    solver: SolverChoice = SolverOpt,
    as_json: bool = JsonOpt,
    prices: Optional[str] = typer.Option(
        None,
        "--prices",
        help="A price file (schema of "
        "studies/prices.yaml): adds power, USD/h and USD per million "
        "generated tokens, and ranks the machines.",
    ),
    rank: Optional[str] = typer.Option(
        None,
        "--rank",
        help="Rank the machines per model, winner first: cost_per_mtok (needs --prices), tokens_per_s or latency.",
    ),
    ttft_max_ms: Optional[float] = TtftOpt,
    tp_node: Optional[List[str]] = typer.Option(
        None,
        "--tp-node",
        help="A tensor-parallel node file to rank beside the systems, e.g. studies/dgx_a100.yaml (repeatable).",
    ),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Also write the ranked table as CSV."),
    force: bool = typer.Option(False, "--force", help="Overwrite the --csv file if it exists."),
    weight_dtype: Optional[str] = WeightDtypeOpt,
    kv_dtype: Optional[str] = KvDtypeOpt,
    group_size: Optional[int] = GroupSizeOpt,
) -> None:
    """The optimum and the baselines for a list of systems and/or models, side by side; with --rank,
    --prices, --ttft-max-ms, --tp-node or --csv, a ranked purchase table (the optimum per machine)."""
    from lia_model.cli.report import fmt_s
    from lia_model.optimizer import InfeasibleError
    from lia_model.precision import make_precision

    system_names = _names("--systems", systems, "spr-a100,spr-h100")
    model_names = _names("--models", models, "opt-66b,opt-175b")
    # the names once, up front: an unknown dtype is the user's error, not one box's inability (each row says that)
    make_precision(weight_dtype or "bf16", kv_dtype or "bf16")
    check_tpot_bound(tpot_max_ms, output_len)
    check_ttft_bound(ttft_max_ms)
    objective = getattr(objective, "value", objective)
    # the options named as the Query's fields; system and model are set per row, the objective by the rank
    query = Query.of(**{**locals(), "objective": objective or "latency"})
    if rank is not None or prices is not None or ttft_max_ms is not None or tp_node or csv_path is not None:
        _ranked_compare(
            query,
            objective,
            system_names,
            model_names,
            tp_node or [],
            prices,
            rank,
            csv_path,
            force,
            as_json,
        )
        return
    if force:
        raise LiaInputError("--force", "there is no --csv file to overwrite", "add --csv FILE, or drop --force")
    objective = query.objective
    rows = []
    for s in system_names:
        for m in model_names:
            try:
                out = run_plan(query.model_copy(update={"system": s, "model": m})).document
                out["query"]["model_given"] = m
                rows.append(out)
            except InfeasibleError as err:
                rows.append({"query": {"system": s, "model": m, "model_given": m}, "infeasible": str(err)})
            except LiaInputError as err:  # this system cannot run the precision: say so in its row
                if not _is_precision_error(err):
                    raise
                rows.append({"query": {"system": s, "model": m, "model_given": m}, "cannot_run": err.problem})
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
    batch_text = (
        f"B={batch}"
        if objective == "latency"
        else "B chosen per row (the batch column; a gap: no batch is more than that much better)"
    )
    table = Table(
        title=f"{objective}: {batch_text}, L_in={input_len}, L_out={output_len} "
        f"({'s' if metric == 'latency_s' else 'tokens/s'}; speedup of the optimum in brackets)"
    )
    table.add_column("system")
    table.add_column("model")
    table.add_column("optimal policy (prefill / decode)")
    table.add_column("batch")
    for label in labels:
        table.add_column(label)
    for out in rows:
        q = out["query"]
        if "infeasible" in out or "cannot_run" in out:
            why = "no plan fits" if "infeasible" in out else f"cannot run: {out['cannot_run']}"
            table.add_row(q["system"], q["model"], why, "-", *["-"] * len(labels))
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
        search = out.get("batch_search") or {}
        table.add_row(q["system"], q["model"], policy, batch_cell(q["batch"], search.get("gap_bound", 0.0)), *cells)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("plan", epilog=PLAN_EXAMPLES)(plan)
    app.command("compare", epilog=COMPARE_EXAMPLES)(compare)
