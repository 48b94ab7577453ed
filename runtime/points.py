"""Validation points: a YAML file of workload groups, each run with one or more plans.

    description: free text
    defaults:                      # merged into every group (a group's own keys win)
      output_len: 8
      plans: all
    groups:
      - id: opt30b-48L-cap40-b1-l32
        model: opt-30b             # catalog name, path to a Hugging Face config.json, or inline ModelSpec fields
        num_layers: 48             # optional: run a truncated model (same layer shapes, fewer layers)
        gpu_memory_gib: 40         # optional: GPU memory cap for this group (else --gpu-memory-gib)
        batch: 1
        input_len: 32
        output_len: 8
        plans: all                 # "all" = optimal + every baseline; or a list of: optimal, a baseline label
                                   # (flexgen, ipex, gpu_only, "lia_(0,0,0,0,0,0)", ...), a plan .json path,
                                   # or an inline plan mapping (Plan fields, optional label)
        check: false               # also check the logits against the reference forward
        repeats: 2                 # optional per-group override of --repeats

Every (group, plan) pair is one point with id "<group id>/<plan label>".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lia_model.errors import LiaInputError, from_validation_error
from lia_model.hardware import SystemSpec
from lia_model.models import ModelSpec
from lia_model.plan import CpuIsa, Plan
from lia_model.workload import Workload, make_workload

OPTIMAL = "optimal"


class GroupSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Unique name of the workload group.", examples=["opt30b-48L-cap40-b1-l32"])
    model: Union[str, dict[str, Any]] = Field(
        description="Catalog name, config.json path or ModelSpec fields.", examples=["opt-30b"]
    )
    num_layers: Optional[int] = Field(None, ge=1, description="Run only the first k layers.", examples=[4])
    batch: int = Field(ge=1, examples=[8])
    input_len: int = Field(ge=1, examples=[256])
    output_len: int = Field(ge=1, examples=[8])
    gpu_memory_gib: Optional[float] = Field(None, gt=0, description="GPU memory cap.", examples=[40])
    plans: Union[Literal["all"], list[Union[str, dict[str, Any]]]] = Field("all", examples=[["optimal", "flexgen"]])
    weight_dtype: Optional[str] = Field(
        None,
        description="Stored weights: bf16, int8 or fp8_e4m3, per output channel (lia_model.precision); default: the "
        "model's checkpoint precision, else bf16.",
        examples=["int8"],
    )
    check: bool = Field(False, description="Compare logits with the reference forward.")
    repeats: Optional[int] = Field(None, ge=1, examples=[2])
    note: str = ""


class PointsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    defaults: dict[str, Any] = Field(default_factory=dict)
    groups: list[GroupSpec]


def load_points_file(path: str | Path) -> list[GroupSpec]:
    p = Path(path)
    if not p.exists():
        raise LiaInputError("--points", f"no such file '{path}'", "give a points .yaml (see docs/runtime.md)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise LiaInputError(str(p), f"malformed YAML: {str(err).splitlines()[0]}", "check the file") from None
    if not isinstance(data, dict) or "groups" not in data:
        raise LiaInputError(
            str(p),
            "a points file is a mapping with a 'groups' list",
            "e.g. groups: [{id: g1, model: opt-30b, batch: 1, input_len: 32, output_len: 8}]",
        )
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict) or not isinstance(data["groups"], list):
        raise LiaInputError(str(p), "'defaults' must be a mapping and 'groups' a list", "see docs/runtime.md")
    merged = dict(data)
    merged["groups"] = [{**defaults, **g} if isinstance(g, dict) else g for g in data["groups"]]
    try:
        parsed = PointsFile.model_validate(merged)
    except ValidationError as err:
        raise from_validation_error(err, str(p), PointsFile) from None
    ids = [g.id for g in parsed.groups]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise LiaInputError(str(p), f"group ids must be unique; repeated: {', '.join(dupes)}", "rename the groups")
    base = p.parent
    out = []
    for g in parsed.groups:
        if isinstance(g.plans, list):
            plans = [_relative(x, base) if isinstance(x, str) and x.endswith(".json") else x for x in g.plans]
            g = g.model_copy(update={"plans": plans})
        if isinstance(g.model, str) and g.model.endswith(".json"):
            g = g.model_copy(update={"model": _relative(g.model, base)})
        out.append(g)
    return out


def _relative(path: str, base: Path) -> str:
    p = Path(path)
    if p.is_absolute() or p.exists():
        return str(p)
    return str(base / p)


def group_model(group: GroupSpec) -> tuple[ModelSpec, int]:
    """The (possibly truncated) model of a group and the full model's layer count."""
    from lia_model.inputs import resolve_model

    if isinstance(group.model, dict):
        try:
            model = ModelSpec.model_validate(group.model)
        except ValidationError as err:
            raise from_validation_error(err, f"group {group.id}: model", ModelSpec) from None
    else:
        model = resolve_model(group.model)
    full = model.num_layers
    if group.num_layers is not None:
        if group.num_layers > full:
            raise LiaInputError(
                f"group {group.id}: num_layers",
                f"{group.num_layers} > {model.name}'s {full} layers",
                f"use 1 to {full}",
            )
        model = model.model_copy(update={"num_layers": group.num_layers})
    return model, full


def group_workload(group: GroupSpec, model: ModelSpec) -> Workload:
    precision = None
    if group.weight_dtype is not None:
        from lia_model.precision import make_precision

        try:
            precision = make_precision(group.weight_dtype)
        except LiaInputError as err:
            raise LiaInputError(f"group {group.id}: weight_dtype", err.problem, err.fix) from None
    return make_workload(group.batch, group.input_len, group.output_len, model, precision)


def plan_entries(group: GroupSpec, baseline_labels: list[str]) -> list[Union[str, dict[str, Any]]]:
    return [OPTIMAL, *baseline_labels] if group.plans == "all" else list(group.plans)


def entry_name(entry: Union[str, dict[str, Any]], index: int) -> str:
    if isinstance(entry, str):
        return Path(entry).stem if entry.endswith(".json") else entry
    return str(entry.get("label") or f"plan{index}")


def optimal_plan(system: SystemSpec, model: ModelSpec, workload: Workload) -> Plan:
    """The optimiser's latency-optimal plan (lia_model.optimizer, the exact enumerator)."""
    from lia_model.optimizer import optimize

    result = optimize(system, model, workload, objective="latency", solver="enumerate")
    plan = result.plan
    return plan if plan.label else plan.model_copy(update={"label": OPTIMAL})


def resolve_entry(
    entry: Union[str, dict[str, Any]],
    system: SystemSpec,
    model: ModelSpec,
    workload: Workload,
    baselines: dict[str, Plan],
) -> Plan:
    if isinstance(entry, dict):
        data = dict(entry.get("plan", entry))
        try:
            return Plan.model_validate(data)
        except ValidationError as err:
            raise from_validation_error(err, "inline plan", Plan) from None
    if entry == OPTIMAL:
        return optimal_plan(system, model, workload)
    if entry.endswith(".json"):
        try:
            data = json.loads(Path(entry).read_text())
        except OSError as err:
            raise LiaInputError("plan", f"cannot read '{entry}' ({err.strerror})", "check the path") from None
        except json.JSONDecodeError as err:
            raise LiaInputError(entry, f"malformed JSON at line {err.lineno}: {err.msg}", "check the file") from None
        if isinstance(data, dict) and isinstance(data.get("plan"), dict):
            data = data["plan"]
        try:
            return Plan.model_validate(data)
        except ValidationError as err:
            raise from_validation_error(err, entry, Plan) from None
    if entry in baselines:
        return baselines[entry]
    raise LiaInputError(
        "plan",
        f"unknown plan '{entry}'",
        f"use optimal, a baseline ({', '.join(baselines)}), a .json plan or an inline mapping",
    )


@dataclass(frozen=True)
class IsaChoice:
    run: Optional[CpuIsa]
    why: str


def runnable_system(system: SystemSpec, isa: IsaChoice) -> SystemSpec:
    """The system with only the ISA this process's oneDNN runs marked present.

    oneDNN fixes its matrix ISA per process, so the runtime cannot run prefill on one ISA and decode on another.
    Restricted this way, the optimiser chooses among plans the runtime can execute and every prediction uses
    the ISA (and, with kernel tables, the measured kernels) that really runs. Unchanged when the runtime ISA is
    unknown or absent from the profile."""
    if isa.run is None or isa.run not in system.cpu.isa or not system.cpu.isa[isa.run].present:
        return system
    isas = {k: v if k == isa.run else v.model_copy(update={"present": False}) for k, v in system.cpu.isa.items()}
    return system.model_copy(update={"cpu": system.cpu.model_copy(update={"isa": isas})})


def runtime_isa(cpuinfo: str | None = None, env_cap: str | None = None) -> IsaChoice:
    """The matrix ISA oneDNN will use for bf16 CPU sublayers in this process."""
    import os

    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    cap = (env_cap if env_cap is not None else os.environ.get("ONEDNN_MAX_CPU_ISA", "")).upper()
    amx_ok = "amx_bf16" in flags and (not cap or "AMX" in cap or cap in ("ALL", "DEFAULT"))
    if amx_ok:
        return IsaChoice(CpuIsa.AMX_BF16, "cpu flag amx_bf16")
    if "avx512_bf16" in flags and (not cap or "BF16" in cap or "AMX" in cap or cap in ("ALL", "DEFAULT")):
        return IsaChoice(CpuIsa.AVX512_BF16, "cpu flag avx512_bf16" + (f", ONEDNN_MAX_CPU_ISA={cap}" if cap else ""))
    if "avx512f" in flags:
        return IsaChoice(CpuIsa.AVX512_FP32, "cpu flag avx512f (no bf16 matrix instructions)")
    return IsaChoice(None, "no x86 AVX-512 flags found")
