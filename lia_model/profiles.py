"""Loading hardware profiles: the YAML files of the data package ``hwprofiles`` (one per device in cpu/, gpu/,
link/, memory/ and one per system in systems/).

A system file names its devices (``cpu: spr-8460h``), gives their files by path (``gpu: my-gpu.yaml``, relative
to the system file) or holds them inline (calibrated profiles do, so that one file says everything about the
host it measured). ``load_system`` composes, applies what-if overrides (``gpu.memory_gib=141``) and validates
the result with the same schema as the files. ``load_profile`` loads any profile, a device or a system, by
name or path. This module and ``inputs`` are the file-reading edge of lia_model; ``hwprofiles`` holds data only
and is located here without being imported (``tests/test_layering.py``).
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import typing
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from lia_model.errors import LiaInputError, from_validation_error
from lia_model.hardware import CpuSpec, GpuSpec, LinkSpec, MemoryTierSpec, SystemSpec
from lia_model.inputs import read_text


def _profile_dir() -> Path:
    spec = importlib.util.find_spec("hwprofiles")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise LiaInputError(
            "hwprofiles",
            "the profile folder is not installed",
            "install the project (pip install -e .) or run from the repository root",
        )
    return Path(next(iter(spec.submodule_search_locations))).resolve()


PROFILE_DIR = _profile_dir()
DEVICE_KINDS: dict[str, type[BaseModel]] = {"cpu": CpuSpec, "gpu": GpuSpec, "link": LinkSpec, "memory": MemoryTierSpec}
SYSTEM_DEVICE_FIELDS = {"cpu": "cpu", "gpu": "gpu", "link": "link", "ddr": "memory", "cxl": "memory"}


def read_yaml(path: Path) -> dict[str, Any]:
    """A profile file as a mapping, or one clear error (unreadable, malformed YAML, not a mapping)."""
    text = read_text(path, "profile", "give a profile .yaml (see 'lia profiles show h100-80gb')")
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise LiaInputError(
            str(path),
            "the YAML is nested too deeply to be a profile",
            "a profile is a mapping of fields, e.g. 'hbm_gbps: 3350'",
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise LiaInputError(
            str(path), f"malformed YAML{where}: {problem}", "each line is 'field: value', e.g. 'hbm_gbps: 3350'"
        ) from None
    if not isinstance(data, dict):
        raise LiaInputError(
            str(path), "the file is not a mapping of fields", "a profile starts with e.g. 'name: h100-sxm-80gb'"
        )
    return data


def list_profiles() -> dict[str, list[str]]:
    """Names of the profiles on disk by kind (cpu, gpu, link, memory, system)."""
    out = {kind: sorted(p.stem for p in (PROFILE_DIR / kind).glob("*.yaml")) for kind in DEVICE_KINDS}
    out["system"] = sorted(p.stem for p in (PROFILE_DIR / "systems").glob("*.yaml"))
    return out


def _is_path(name: str) -> bool:
    return Path(name).suffix in (".yaml", ".yml")


def _device_path(kind: str, name: str, base: "Path | None" = None) -> Path:
    """A device profile by catalog name, or by path (relative to ``base``, the folder of the system file
    that names it, when given)."""
    if _is_path(name):
        path = Path(name)
        if not path.is_absolute() and base is not None:
            path = base / path
        if not path.exists():
            raise LiaInputError(
                kind,
                f"no such {kind} profile file '{path}'",
                "give a path to an existing .yaml (relative to the system file) or a catalog name",
            )
        return path
    path = PROFILE_DIR / kind / f"{name}.yaml"
    if not path.exists():
        known = list_profiles()[kind]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise LiaInputError(f"{kind}", f"unknown {kind} profile '{name}'", f"{hint}known: {', '.join(known)}")
    return path


def _where(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROFILE_DIR.parent))
    except ValueError:
        return str(path)


def load_device(kind: str, name: str, overrides: Iterable[str] = ()) -> BaseModel:
    path = _device_path(kind, name)
    overrides = list(overrides)
    data = apply_overrides(read_yaml(path), overrides, DEVICE_KINDS[kind])
    where = _where(path) + (f" with --set {' '.join(overrides)}" if overrides else "")
    return _validate(DEVICE_KINDS[kind], data, where)


def profile_kind(name_or_path: str) -> str:
    """'system' or the device kind of a profile given by catalog name or path."""
    known = list_profiles()
    if not _is_path(name_or_path):
        if name_or_path in known["system"]:
            return "system"
        kind = next((k for k in DEVICE_KINDS if name_or_path in known[k]), None)
        if kind is None:
            every = sorted(n for names in known.values() for n in names)
            close = difflib.get_close_matches(name_or_path, every, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise LiaInputError(
                "profile",
                f"unknown profile '{name_or_path}'",
                f"{hint}known: {', '.join(every)}; or give a path to a .yaml",
            )
        return kind
    data = read_yaml(_device_path("profile", name_or_path))
    kind = data.get("kind")
    if kind in DEVICE_KINDS or kind == "system":
        return str(kind)
    if any(k in data for k in SYSTEM_DEVICE_FIELDS):
        return "system"
    # a device file without 'kind': its distinctive field says which
    for field, kind in (("isa", "cpu"), ("hbm_gbps", "gpu"), ("h2d_gbps", "link"), ("tier", "memory")):
        if field in data:
            return kind
    raise LiaInputError(
        name_or_path,
        "cannot tell which kind of profile this is",
        "add 'kind: cpu' (or gpu, link, memory, system) to the file",
    )


def load_profile(name_or_path: str, overrides: Iterable[str] = ()) -> tuple[str, BaseModel]:
    """(kind, validated spec) of any profile by name or path, with what-if overrides applied."""
    kind = profile_kind(name_or_path)
    if kind == "system":
        return kind, load_system(name_or_path, overrides)
    return kind, load_device(kind, name_or_path, overrides)


def profile_path(name_or_path: str) -> Path:
    """The file of a profile given by catalog name or path."""
    kind = profile_kind(name_or_path)
    return system_path(name_or_path) if kind == "system" else _device_path(kind, name_or_path)


def _validate(cls: type[BaseModel], data: dict[str, Any], where: str) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise from_validation_error(err, where, cls) from None


def system_path(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if _is_path(name_or_path):
        if not candidate.exists():
            raise LiaInputError(
                "system",
                f"no such system file '{name_or_path}'",
                "give a path to an existing system .yaml, or a name from 'lia profiles list'",
            )
        return candidate
    path = PROFILE_DIR / "systems" / f"{name_or_path}.yaml"
    if not path.exists():
        known = list_profiles()["system"]
        close = difflib.get_close_matches(name_or_path, known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise LiaInputError(
            "system",
            f"unknown system '{name_or_path}'",
            f"{hint}choose one of {', '.join(known)} or give a path to a system .yaml",
        )
    return path


def system_dict(name_or_path: str) -> dict[str, Any]:
    """The composed system as plain data (devices inlined), before validation."""
    path = system_path(name_or_path)
    data = read_yaml(path)
    for field, kind in SYSTEM_DEVICE_FIELDS.items():
        value = data.get(field)
        if isinstance(value, str):
            data[field] = read_yaml(_device_path(kind, value, base=path.parent))
    return data


def apply_overrides(
    data: dict[str, Any], overrides: Iterable[str], schema: type[BaseModel] = SystemSpec
) -> dict[str, Any]:
    """Apply ``FIELD=VALUE`` what-ifs (dotted paths into the composed system, or into one device's fields
    with ``schema`` its class). Values are YAML scalars."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise LiaInputError("--set", f"'{item}' is not FIELD=VALUE", "e.g. --set gpu.memory_gib=141")
        path, raw = item.split("=", 1)
        path = path.strip()
        try:
            value = yaml.safe_load(raw)
        except (yaml.YAMLError, RecursionError):
            value = raw
        parts = path.split(".")
        if not path or any(not p for p in parts):
            raise LiaInputError("--set", f"'{item}' has no field name before '='", "e.g. --set gpu.memory_gib=141")
        node: Any = data
        cls: Any = schema
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if not isinstance(node, dict):
                raise LiaInputError(
                    f"--set {path}", f"'{'.'.join(parts[:depth])}' has no sub-fields", "e.g. --set link.h2d_gbps=64"
                )
            fields = getattr(cls, "model_fields", None)
            if part not in node and (fields is None or part not in fields):
                valid = sorted(fields) if fields else sorted(node)
                close = difflib.get_close_matches(part, valid, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                where = ".".join(parts[:depth]) or "the system"
                raise LiaInputError(
                    f"--set {path}", f"{where} has no field '{part}'", f"{hint}valid fields: {', '.join(valid)}"
                )
            if last:
                node[part] = value
                break
            if node.get(part) is None:
                raise LiaInputError(
                    f"--set {path}",
                    f"'{'.'.join(parts[: depth + 1])}' is absent in this system",
                    "pick a system that has it (e.g. a -cxl system for cxl.*)",
                )
            node = node[part]
            if fields is not None and part in fields:
                ann = fields[part].annotation
                cls = next((c for c in (ann, *typing.get_args(ann)) if hasattr(c, "model_fields")), None)
            else:
                cls = None
        # the source of an overridden number is the command line
        owner = data
        for depth in range(len(parts) - 1, -1, -1):
            candidate = _get(data, parts[:depth])
            if isinstance(candidate, dict) and "source" in candidate:
                owner = candidate
                rel = ".".join(parts[depth:])
                owner.setdefault("source", {})[rel] = f"what-if: --set {item}"
                break
    return data


def _get(data: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def load_system(name_or_path: str, overrides: Iterable[str] = ()) -> SystemSpec:
    """Load, compose, override and validate a system."""
    overrides = list(overrides)
    data = apply_overrides(system_dict(name_or_path), overrides)
    where = f"{name_or_path} with --set {' '.join(overrides)}" if overrides else str(name_or_path)
    return _validate(SystemSpec, data, where)
