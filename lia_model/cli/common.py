"""Options and input helpers shared by the CLI modules (kept apart so no CLI module imports another)."""

from __future__ import annotations

import math
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from lia_model.errors import LiaInputError
from lia_model.query import default, describe  # every query option's default and help: declared once there

console = Console(width=None if sys.stdout.isatty() else 160)


class ModeChoice(str, Enum):
    overlap = "overlap"
    additive = "additive"
    paper = "paper"


class ObjectiveChoice(str, Enum):
    latency = "latency"
    throughput = "throughput"


class SolverChoice(str, Enum):
    cbc = "cbc"
    highs = "highs"
    enumerate = "enumerate"


# Defaults and help come from the Query's fields (lia_model/query.py), declared once there.
SystemOpt = typer.Option(default("system"), "--system", help=describe("system"))
ModelOpt = typer.Option(default("model"), "--model", help=describe("model"))
BatchOpt = typer.Option(default("batch"), "--batch", help=describe("batch"))
InputOpt = typer.Option(default("input_len"), "--input", help=describe("input_len"))
OutputOpt = typer.Option(default("output_len"), "--output", help=describe("output_len"))
SetOpt = typer.Option(None, "--set", help=describe("overrides"))
ModeOpt = typer.Option(ModeChoice(default("mode")), "--mode", case_sensitive=False, help=describe("mode"))
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of tables.")
WeightDtypeOpt = typer.Option(default("weight_dtype"), "--weight-dtype", help=describe("weight_dtype"))
KvDtypeOpt = typer.Option(default("kv_dtype"), "--kv-dtype", help=describe("kv_dtype"))
GroupSizeOpt = typer.Option(default("group_size"), "--group-size", help=describe("group_size"))


def examples(*lines: str) -> str:
    """A command's help epilog: its examples, one per line."""
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


def parse_mode(mode):
    from lia_model.costterms import CostMode

    try:
        return CostMode(getattr(mode, "value", mode))
    except ValueError:
        raise LiaInputError(
            "--mode",
            f"unknown cost mode '{mode}'",
            "use overlap, additive, or paper (the LIA authors' model, with a paper-* system)",
        ) from None


def finite_positive(option: str, value: Optional[float], example: str, largest: float) -> Optional[float]:
    """None, or a finite number in (0, largest]; anything else is an input error naming the option."""
    if value is None:
        return None
    if not math.isfinite(value) or value <= 0 or value > largest:
        raise LiaInputError(
            option, f"must be a number above 0 and at most {largest:g}, got {value:g}", f"e.g. {option} {example}"
        )
    return value


def resolve_precision(
    model, weight_dtype: Optional[str] = None, kv_dtype: Optional[str] = None, group_size: Optional[int] = None
):
    """The workload's precision: what the options give, the rest from the model's checkpoint (its
    quantization_config), else bf16. A new --weight-dtype drops the checkpoint's group size."""
    from lia_model.precision import BF16, make_precision

    base = model.checkpoint_precision or BF16
    if weight_dtype is None and kv_dtype is None and group_size is None:
        return base
    weights = weight_dtype if weight_dtype is not None else base.weight_dtype.value
    group = group_size if group_size is not None else (base.weight_group_size if weight_dtype is None else None)
    return make_precision(weights, kv_dtype if kv_dtype is not None else base.kv_dtype.value, group)


def load_inputs(
    system: str,
    model: str,
    batch: int,
    input_len: int,
    output_len: int,
    overrides,
    weight_dtype: Optional[str] = None,
    kv_dtype: Optional[str] = None,
    group_size: Optional[int] = None,
):
    from lia_model.inputs import resolve_model, resolve_system
    from lia_model.workload import make_workload

    spec = resolve_system(system, overrides or [])
    mspec = resolve_model(model)
    precision = resolve_precision(mspec, weight_dtype, kv_dtype, group_size)
    workload = make_workload(batch, input_len, output_len, mspec, precision)
    return spec, mspec, workload


def load_plan(path: str):
    """A Plan from a file: a plan object, a prediction (its "plan"), or a whole 'lia plan --json' output (its
    "optimum.plan")."""
    from pydantic import ValidationError

    from lia_model.errors import from_validation_error
    from lia_model.inputs import parse_json, read_text
    from lia_model.plan import Plan

    fix = "give a plan .json written by 'lia plan --json > plan.json'"
    data = parse_json(read_text(Path(path), "--plan", fix), path, fix)
    if isinstance(data, dict) and isinstance(data.get("optimum"), dict) and "plan" in data["optimum"]:
        data = data["optimum"]["plan"]  # the whole 'lia plan --json' output
    elif isinstance(data, dict) and isinstance(data.get("plan"), dict):
        data = data["plan"]  # one prediction
    if not isinstance(data, dict):
        raise LiaInputError(path, "the file holds no plan object", fix)
    try:
        return Plan.model_validate(data)
    except ValidationError as err:
        raise from_validation_error(err, path, Plan) from None


def plan_query(path: str) -> Optional[dict]:
    """What a plan file says it was made for: system, model, workload, precision and overrides from a whole
    'lia plan --json' output ("query"), or system, model and workload from one prediction; None for a bare plan
    object. ``load_plan`` has already checked the file."""
    from lia_model.inputs import parse_json, read_text

    data = parse_json(read_text(Path(path), "--plan", ""), path, "")
    if not isinstance(data, dict):
        return None
    q, w = data.get("query"), data.get("workload")
    if isinstance(q, dict) and isinstance(data.get("optimum"), dict):  # a whole 'lia plan --json' output
        source, sizes, precision = q, q, q.get("precision") or {}
    elif isinstance(data.get("plan"), dict) and isinstance(w, dict):  # one prediction
        source, sizes, precision = data, w, w.get("precision") or {}
    else:
        return None
    made_for = {
        "--system": source.get("system"),
        "--model": source.get("model"),
        "--batch": sizes.get("batch"),
        "--input": sizes.get("input_len"),
        "--output": sizes.get("output_len"),
        "--weight-dtype": precision.get("weight_dtype"),
        "--kv-dtype": precision.get("kv_dtype"),
        "--group-size": precision.get("weight_group_size"),
    }
    if source is q:  # only the query records the --set overrides
        made_for["--set"] = list(q.get("overrides") or [])
    return made_for


def reconcile_with_plan(path: str, given: dict, defaults: dict) -> dict:
    """The query options to predict a plan file under: an option left at its default takes the file's value;
    one given that differs from the file's is an input error (the plan was made for something else)."""
    made_for = plan_query(path)
    if made_for is None:
        return given
    out = dict(given)
    for option, value in given.items():
        theirs = made_for.get(option)
        if theirs is None or (option == "--set" and not theirs and not value):
            continue
        if value == defaults.get(option) or (option == "--set" and not value):
            out[option] = theirs
        elif value != theirs:
            raise LiaInputError(
                option,
                f"the plan in {path} was made for {option} {theirs}, not {value}",
                f"drop {option} to predict the plan's own query, or make a plan for this one with 'lia plan --json'",
            )
    return out


def _usage_line(err) -> str:
    """A click usage error as one line: what is wrong and where to read the options."""
    message = " ".join(err.format_message().replace("Value error, ", "").split())
    ctx = getattr(err, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return f"{message}{where}"


def _click_exceptions() -> list:
    """The exception modules of the click that typer runs on: typer >= 0.20 vendors it as typer._click,
    older typers use click itself."""
    import importlib

    modules = []
    for name in ("typer._click.exceptions", "typer.exceptions", "click.exceptions"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            continue
    return modules


def printable(text: str) -> str:
    """The message with every non-printable character (user input echoed back may hold any) escaped, so
    that it prints as the lines it was written as: one, or one per problem."""
    return "\n".join("".join(c if c.isprintable() else repr(c)[1:-1] for c in line) for line in text.split("\n"))


def run_guarded(app: typer.Typer, prog_name: str = "lia") -> None:
    """Run a typer app. Bad input (ours or a usage error) ends with one ``error:`` line and exit code 2,
    never a traceback; Ctrl-C ends with one line and exit code 130."""
    mods = _click_exceptions()

    def classes(name: str) -> tuple:
        return tuple(getattr(m, name) for m in mods if hasattr(m, name))

    no_args, usage, click_error = classes("NoArgsIsHelpError"), classes("UsageError"), classes("ClickException")
    abort = classes("Abort") + (KeyboardInterrupt,)
    try:
        code = app(standalone_mode=False, prog_name=prog_name)
    except LiaInputError as err:
        typer.echo(f"error: {printable(str(err))}", err=True)
        sys.exit(2)
    except no_args as err:
        typer.echo(err.ctx.get_help())
        sys.exit(0)
    except usage as err:
        typer.echo(f"error: {printable(_usage_line(err))}", err=True)
        sys.exit(2)
    except click_error as err:
        typer.echo(f"error: {printable(' '.join(err.format_message().split()))}", err=True)
        sys.exit(err.exit_code or 1)
    except abort:
        code = 130
    if code == 130:  # typer turns Ctrl-C into exit code 130 (older typers and click raise Abort)
        typer.echo("error: interrupted", err=True)
    sys.exit(code if isinstance(code, int) else 0)
