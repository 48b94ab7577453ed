"""The ``lia`` command line. Bad input ends with one ``error:`` line and exit code 2, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from lia_model.cli_common import (
    BatchOpt, InputOpt, JsonOpt, ModeOpt, ModelOpt, OutputOpt, SetOpt, SystemOpt, console, load_inputs, load_plan,
    parse_mode, run_guarded,
)
from lia_model.errors import LiaInputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="LIA modeler: measure, model, optimise and validate CPU-GPU cooperative LLM inference.")
profiles_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Hardware profiles.")
models_app = typer.Typer(add_completion=False, no_args_is_help=True, help="The model catalog.")
app.add_typer(profiles_app, name="profiles")
app.add_typer(models_app, name="models")

# ---------------------------------------------------------------- profiles and models


@profiles_app.command("list")
def profiles_list() -> None:
    """List the hardware profiles by kind."""
    from hwprofiles import list_profiles, system_dict

    table = Table(title="hardware profiles (hwprofiles/)")
    table.add_column("kind")
    table.add_column("name")
    table.add_column("description")
    for kind, names in list_profiles().items():
        for name in names:
            if kind == "system":
                desc = system_dict(name).get("description", "")
            else:
                from hwprofiles import PROFILE_DIR, _read_yaml

                desc = _read_yaml(PROFILE_DIR / kind / f"{name}.yaml").get("description", "")
            table.add_row(kind, name, str(desc))
    console.print(table)


@profiles_app.command("show")
def profiles_show(name: str = typer.Argument(..., help="A system or device name."),
                  overrides: Optional[List[str]] = SetOpt, as_json: bool = JsonOpt) -> None:
    """Show one profile with the source of every number (systems are shown composed)."""
    import yaml

    from hwprofiles import DEVICE_KINDS, list_profiles, load_device, load_system

    known = list_profiles()
    if name in known["system"] or Path(name).suffix in (".yaml", ".yml"):
        spec = load_system(name, overrides or [])
    else:
        kind = next((k for k in DEVICE_KINDS if name in known[k]), None)
        if kind is None:
            every = sorted(n for names in known.values() for n in names)
            raise LiaInputError("profile", f"unknown profile '{name}'", f"known: {', '.join(every)}")
        spec = load_device(kind, name)
    data = spec.model_dump(mode="json")
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(yaml.safe_dump(data, sort_keys=False, width=120))


@models_app.command("list")
def models_list(as_json: bool = JsonOpt) -> None:
    """List the model catalog with parameter counts and KV bytes per token."""
    from lia_model.accounting import kv_bytes_per_token, layer_weight_bytes, total_params
    from lia_model.models import CATALOG

    if as_json:
        typer.echo(json.dumps({n: m.model_dump() for n, m in CATALOG.items()}, indent=2))
        return
    table = Table(title="model catalog")
    for col in ("name", "layers", "hidden", "ffn", "heads", "kv heads", "experts", "params (1e9)",
                "layer weights (GB)", "KV per token (MB)", "max context"):
        table.add_column(col, justify="right" if col != "name" else "left")
    for name, m in CATALOG.items():
        experts = f"{m.experts_per_token}/{m.num_experts}" if m.is_moe else "-"
        table.add_row(name, str(m.num_layers), str(m.hidden_size), str(m.ffn_size), str(m.num_heads),
                      str(m.num_kv_heads), experts, f"{total_params(m) / 1e9:.1f}",
                      f"{layer_weight_bytes(m) / 1e9:.3f}", f"{kv_bytes_per_token(m) / 1e6:.3f}", str(m.max_context))
    console.print(table)


# ---------------------------------------------------------------- predict


@app.command()
def predict(
    system: str = SystemOpt, model: str = ModelOpt, batch: int = BatchOpt, input_len: int = InputOpt,
    output_len: int = OutputOpt, overrides: Optional[List[str]] = SetOpt, mode: str = ModeOpt,
    plan: Optional[str] = typer.Option(None, "--plan", help="A plan .json (e.g. from 'lia plan --json')."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="A baseline plan by name."),
    as_json: bool = JsonOpt,
) -> None:
    """Predict one plan (a file or a baseline); without either, every baseline."""
    from lia_model.baselines import baselines
    from lia_model.costmodel import predict as run_predict
    from lia_model.report import prediction_json, prediction_table

    spec, mspec, workload = load_inputs(system, model, batch, input_len, output_len, overrides)
    cost_mode = parse_mode(mode)
    peers = baselines(spec, mspec, workload)
    if plan is not None:
        results = {"plan": run_predict(spec, mspec, workload, load_plan(plan), cost_mode)}
    elif baseline is not None:
        if baseline not in peers:
            raise LiaInputError("--baseline", f"unknown baseline '{baseline}'", f"choose one of {', '.join(peers)}")
        results = {baseline: peers[baseline].predict(spec, mspec, cost_mode)}
    else:
        results = {name: b.predict(spec, mspec, cost_mode) for name, b in peers.items()}
    if as_json:
        typer.echo(json.dumps({name: prediction_json(r) for name, r in results.items()}, indent=2))
        return
    for name, r in results.items():
        prediction_table(console, r, title=f"{name}: {mspec.name} on {spec.name}, B={batch} L_in={input_len} "
                                           f"L_out={output_len} ({cost_mode.value})")


def _register_optional_commands() -> None:
    """Commands of the other packages, when present (none imports torch at import time)."""
    import importlib

    for module in ("lia_model.plan_cli", "calibrate.cli", "runtime.cli", "studies.cli"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name == module:
                continue
            raise
        mod.register(app)


_register_optional_commands()


def main() -> None:
    run_guarded(app)


if __name__ == "__main__":
    main()
