"""The ``lia`` command line. Bad input ends with one ``error:`` line and exit code 2, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

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
    OutputOpt,
    SetOpt,
    SystemOpt,
    WeightDtypeOpt,
    console,
    examples,
    load_inputs,
    load_plan,
    parse_mode,
    run_guarded,
)
from lia_model.errors import LiaInputError
from lia_model.query import default

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="LIA modeler: measure, model, optimise and validate CPU-GPU cooperative LLM inference.",
    epilog=examples(
        "lia plan",
        "lia plan --objective throughput --tpot-max-ms 2000",
        "lia compare --models opt-66b,opt-175b",
        "lia profiles list",
        "lia calibrate --quick",
        "lia COMMAND --help",
    ),
)
profiles_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Hardware profiles.",
    epilog=examples(
        "lia profiles list", "lia profiles show spr-h100-cxl", "lia profiles new --from h100-pcie-80gb my-gpu"
    ),
)
models_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="The model catalog.",
    epilog=examples("lia models list", "lia models list --json"),
)
app.add_typer(profiles_app, name="profiles")
app.add_typer(models_app, name="models")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("lia-modeler")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"lia {_version()}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """LIA modeler: measure, model, optimise and validate CPU-GPU cooperative LLM inference."""


# ---------------------------------------------------------------- profiles and models


@profiles_app.command("list", epilog=examples("lia profiles list"))
def profiles_list() -> None:
    """List the hardware profiles by kind."""
    from lia_model.profiles import PROFILE_DIR, list_profiles, read_yaml, system_dict

    table = Table(title="hardware profiles (hwprofiles/)")
    table.add_column("kind")
    table.add_column("name")
    table.add_column("description")
    for kind, names in list_profiles().items():
        for name in names:
            if kind == "system":
                desc = system_dict(name).get("description", "")
            else:
                desc = read_yaml(PROFILE_DIR / kind / f"{name}.yaml").get("description", "")
            table.add_row(kind, name, str(desc))
    console.print(table)


@profiles_app.command(
    "show",
    epilog=examples(
        "lia profiles show spr-h100",
        "lia profiles show h100-pcie-80gb --json",
        "lia profiles show spr-h100 --set gpu.memory_gib=141",
        "lia profiles show ./my-gpu.yaml",
    ),
)
def profiles_show(
    name: str = typer.Argument(..., help="A system or device name, or a path to a profile .yaml."),
    overrides: Optional[List[str]] = SetOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Show one profile with the source of every number (systems are shown composed, --set applied)."""
    import yaml

    from lia_model.profiles import load_profile

    _, spec = load_profile(name, overrides or [])
    data = spec.model_dump(mode="json")
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(yaml.safe_dump(data, sort_keys=False, width=120))


@profiles_app.command(
    "new",
    epilog=examples(
        "lia profiles new --from h100-pcie-80gb my-gpu",
        "lia profiles new --from spr-h100 my-system --out profiles/",
        "lia plan --system profiles/my-system.yaml",
    ),
)
def profiles_new(
    name: str = typer.Argument(..., help="Name of the new profile (also its file name, NAME.yaml)."),
    source: str = typer.Option(..., "--from", help="The profile to copy: a system or device name, or a path."),
    out: Path = typer.Option(Path("."), "--out", help="Folder for NAME.yaml."),
    force: bool = typer.Option(False, "--force", help="Overwrite NAME.yaml if it exists."),
) -> None:
    """Write an editable copy of a profile. A system copy keeps naming its devices (catalog names, or files
    relative to it): copy a device too and point the system at it, e.g. 'gpu: my-gpu.yaml'."""
    import re

    from lia_model.profiles import PROFILE_DIR, profile_kind, profile_path

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or name.endswith((".yaml", ".yml")):
        raise LiaInputError(
            "NAME",
            f"'{name}' is not a plain profile name",
            "use letters, digits, '.', '_' and '-', without .yaml, e.g. my-gpu",
        )
    kind = profile_kind(source)
    src = profile_path(source)
    target = out / f"{name}.yaml"
    if target.exists() and not force:
        raise LiaInputError(str(target), "the file exists", "choose another NAME or --out, or add --force")
    if target.resolve().is_relative_to(PROFILE_DIR.resolve()) and not force:
        raise LiaInputError(
            str(target),
            "this is inside the shipped profiles (hwprofiles/)",
            "write the copy elsewhere with --out, or add --force",
        )
    text = src.read_text()
    new_text, count = re.subn(r"(?m)^name:.*$", f"name: {name}", text, count=1)
    if count == 0:
        new_text = f"name: {name}\n" + text
    if kind == "system":  # device files named relative to the source system stay found from the copy

        def absolute(match: "re.Match[str]") -> str:
            path = Path(match.group(2))
            return f"{match.group(1)}: {path if path.is_absolute() else (src.parent / path).resolve()}"

        new_text = re.sub(r"(?m)^(cpu|gpu|link|ddr|cxl):\s*(\S+\.ya?ml)\s*$", absolute, new_text)
    header = (
        f"# Copy of {source} ({kind} profile), made by 'lia profiles new'. Edit freely; give every number a source.\n"
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
        target.write_text(header + new_text)
    except OSError as err:
        raise LiaInputError(str(target), f"cannot write the file ({err.strerror})", "choose another --out") from None
    typer.echo(
        f"wrote {target} (a {kind} profile; use it with: "
        f"{'lia plan --system ' + str(target) if kind == 'system' else 'lia profiles show ' + str(target)})"
    )


@models_app.command("list", epilog=examples("lia models list", "lia models list --json"))
def models_list(as_json: bool = JsonOpt) -> None:
    """List the model catalog with parameter counts and KV bytes per token."""
    from lia_model.accounting import kv_bytes_per_token, layer_weight_bytes, total_params
    from lia_model.models import CATALOG

    if as_json:
        typer.echo(json.dumps({n: m.model_dump() for n, m in CATALOG.items()}, indent=2))
        return
    table = Table(title="model catalog")
    for col in (
        "name",
        "layers",
        "hidden",
        "ffn",
        "heads",
        "kv heads",
        "experts",
        "params (1e9)",
        "layer weights (GB)",
        "KV per token (MB)",
        "max context",
    ):
        table.add_column(col, justify="right" if col != "name" else "left")
    for name, m in CATALOG.items():
        experts = f"{m.experts_per_token}/{m.num_experts}" if m.is_moe else "-"
        table.add_row(
            name,
            str(m.num_layers),
            str(m.hidden_size),
            str(m.ffn_size),
            str(m.num_heads),
            str(m.num_kv_heads),
            experts,
            f"{total_params(m) / 1e9:.1f}",
            f"{layer_weight_bytes(m) / 1e9:.3f}",
            f"{kv_bytes_per_token(m) / 1e6:.3f}",
            str(m.max_context),
        )
    console.print(table)


# ---------------------------------------------------------------- predict

BASELINE_LABELS = "flexgen, ipex, gpu_only, lia_(0,0,0,0,0,0), lia_(1,1,1,1,1,1), lia_(0,1,1,0,0,0)"


@app.command(
    epilog=examples(
        "lia predict",
        "lia predict --baseline flexgen --batch 8",
        "lia plan --json > plan.json ; lia predict --plan plan.json --mode additive",
    )
)
def predict(
    system: str = SystemOpt,
    model: str = ModelOpt,
    batch: int = BatchOpt,
    input_len: int = InputOpt,
    output_len: int = OutputOpt,
    overrides: Optional[List[str]] = SetOpt,
    mode: ModeChoice = ModeOpt,
    plan: Optional[str] = typer.Option(
        None,
        "--plan",
        help="A plan .json: the output of 'lia plan --json', one prediction from it, or a bare plan object. "
        "The query the file was made for (system, model, workload, precision, --set) is used for options left at "
        "their defaults; an option that contradicts it is an error.",
    ),
    baseline: Optional[str] = typer.Option(None, "--baseline", help=f"A baseline plan by label: {BASELINE_LABELS}."),
    weight_dtype: Optional[str] = WeightDtypeOpt,
    kv_dtype: Optional[str] = KvDtypeOpt,
    group_size: Optional[int] = GroupSizeOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Predict one plan (a file or a baseline); without either, every baseline."""
    from lia_model.baselines import baselines
    from lia_model.cli.report import prediction_json, prediction_table
    from lia_model.costmodel import predict as run_predict

    if plan is not None and baseline is not None:
        raise LiaInputError(
            "--plan",
            "--plan and --baseline each choose the plan to predict",
            "give one of them (or neither, for every baseline)",
        )
    cost_mode = parse_mode(mode)
    chosen_plan = load_plan(plan) if plan is not None else None
    if chosen_plan is not None:
        from lia_model.cli.common import reconcile_with_plan

        given = {
            "--system": system,
            "--model": model,
            "--batch": batch,
            "--input": input_len,
            "--output": output_len,
            "--weight-dtype": weight_dtype,
            "--kv-dtype": kv_dtype,
            "--group-size": group_size,
            "--set": list(overrides or []),
        }
        defaults = {
            "--system": default("system"),
            "--model": default("model"),
            "--batch": default("batch"),
            "--input": default("input_len"),
            "--output": default("output_len"),
            "--weight-dtype": None,
            "--kv-dtype": None,
            "--group-size": None,
        }
        q = reconcile_with_plan(plan, given, defaults)
        system, model, batch, input_len, output_len = (
            q[o] for o in ("--system", "--model", "--batch", "--input", "--output")
        )
        weight_dtype, kv_dtype, group_size, overrides = (
            q[o] for o in ("--weight-dtype", "--kv-dtype", "--group-size", "--set")
        )
    spec, mspec, workload = load_inputs(
        system, model, batch, input_len, output_len, overrides, weight_dtype, kv_dtype, group_size
    )
    if chosen_plan is not None:
        results = {"plan": run_predict(spec, mspec, workload, chosen_plan, cost_mode)}
    elif baseline is not None:
        peers = baselines(spec, mspec, workload)
        if baseline not in peers:
            raise LiaInputError("--baseline", f"unknown baseline '{baseline}'", f"choose one of {', '.join(peers)}")
        results = {baseline: peers[baseline].predict(spec, mspec, cost_mode)}
    else:
        results = {name: b.predict(spec, mspec, cost_mode) for name, b in baselines(spec, mspec, workload).items()}
    if as_json:
        typer.echo(json.dumps({name: prediction_json(r) for name, r in results.items()}, indent=2, allow_nan=False))
        return
    for name, r in results.items():
        prediction_table(
            console,
            r,
            title=f"{name}: {mspec.name} on {spec.name}, B={batch} L_in={input_len} "
            f"L_out={output_len} ({cost_mode.value})",
        )


def _register_optional_commands() -> None:
    """Commands of the other packages, when present (none imports torch at import time)."""
    import importlib

    for module in ("lia_model.cli.plan", "calibrate.cli", "runtime.cli", "studies.cli"):
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
