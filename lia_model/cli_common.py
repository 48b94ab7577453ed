"""Options and input helpers shared by the CLI modules (kept apart so no CLI module imports another)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from lia_model.errors import LiaInputError

console = Console(width=None if sys.stdout.isatty() else 160)

DEFAULT_MODEL = "opt-175b"
DEFAULT_SYSTEM = "spr-h100"

SystemOpt = typer.Option(DEFAULT_SYSTEM, "--system", help="System profile name or path to a system .yaml.")
ModelOpt = typer.Option(DEFAULT_MODEL, "--model", help="Catalog model or path to a Hugging Face config.json.")
BatchOpt = typer.Option(1, "--batch", help="Batch size B.")
InputOpt = typer.Option(256, "--input", help="Prompt tokens per sequence (L_in).")
OutputOpt = typer.Option(32, "--output", help="Generated tokens per sequence (L_out).")
SetOpt = typer.Option(None, "--set", help="What-if override FIELD=VALUE of the system (repeatable).")
ModeOpt = typer.Option("overlap", "--mode", help="Cost model mode: overlap, additive, or paper (the LIA authors' "
                       "released model; use it with a paper-* system).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of tables.")


def parse_mode(mode: str):
    from lia_model.costterms import CostMode

    try:
        return CostMode(mode)
    except ValueError:
        raise LiaInputError("--mode", f"unknown cost mode '{mode}'",
                            "use overlap, additive, or paper (the LIA authors' model, with a paper-* system)") from None


def load_inputs(system: str, model: str, batch: int, input_len: int, output_len: int, overrides):
    from lia_model.inputs import resolve_model, resolve_system
    from lia_model.workload import make_workload

    spec = resolve_system(system, overrides or [])
    mspec = resolve_model(model)
    workload = make_workload(batch, input_len, output_len, mspec)
    return spec, mspec, workload


def load_plan(path: str):
    from pydantic import ValidationError

    from lia_model.errors import from_validation_error
    from lia_model.plan import Plan

    p = Path(path)
    if not p.exists():
        raise LiaInputError("--plan", f"no such file '{path}'", "give a plan .json written by 'lia plan --json'")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise LiaInputError(path, f"malformed JSON at line {err.lineno}: {err.msg}", "check the file") from None
    if isinstance(data, dict) and "plan" in data and isinstance(data["plan"], dict):
        data = data["plan"]  # accept the whole 'lia plan --json' output
    try:
        return Plan.model_validate(data)
    except ValidationError as err:
        raise from_validation_error(err, path, Plan) from None




def run_guarded(app: typer.Typer) -> None:
    """Run a typer app; bad input ends with one ``error:`` line and exit code 2, never a traceback."""
    try:
        app()
    except LiaInputError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
