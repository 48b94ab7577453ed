"""Your own grid for a study: ``lia study NAME --systems a,b --models x,y --grid FILE.yaml``.

Each study's grid is a frozen dataclass of sweep axes (its ``Grid``). The built-in full (or, with --reduced,
reduced) grid is the start; ``--grid FILE.yaml`` replaces any of its fields (a mapping of field -> value,
e.g. ``batches: [1, 8, 64]`` or ``lengths: [[256, 32], [1024, 128]]``), then ``--systems`` and ``--models``
replace the grid's systems (``systems``, or ``machines`` in the cost study) and models (``models``, or the
one ``model``). Values are checked against the type of the built-in value; systems and models must exist.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from lia_model.errors import LiaInputError

SYSTEM_FIELDS = ("systems", "machines")
MODEL_FIELDS = ("models", "model")
MAX_AXIS = 100_000


def _coerce(field: str, value: Any, like: Any, where: str, record: bool = False) -> Any:
    """``value`` (from YAML) in the shape of the built-in ``like``: tuples for lists, ints, floats, strings. An
    axis (a list of values) may have any length; a ``record`` (one value that is itself a tuple, such as an
    (L_in, L_out) pair) must have the built-in's length."""

    def bad(what: str) -> LiaInputError:
        return LiaInputError(f"{where}: {field}", f"{what}, got {value!r}", f"e.g. {field}: {_example(like)}")

    if isinstance(like, tuple):
        if not isinstance(value, (list, tuple)) or not value:
            raise bad("must be a non-empty list")
        if record:
            if len(value) != len(like):
                raise bad(f"each entry must have {len(like)} values, like {_example(like)}")
            return tuple(_coerce(field, v, w, where) for v, w in zip(value, like))
        if len(value) > MAX_AXIS:
            raise bad(f"has more than {MAX_AXIS} entries")
        inner = like[0] if like else value[0]
        return tuple(_coerce(field, v, inner, where, record=isinstance(inner, tuple)) for v in value)
    if isinstance(like, bool):
        if not isinstance(value, bool):
            raise bad("must be true or false")
        return value
    if isinstance(like, int):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad("must be a whole number of at least 1")
        return value
    if isinstance(like, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < 1e6):
            raise bad("must be a number above 0")
        return float(value)
    if isinstance(like, str):
        if not isinstance(value, str) or not value.strip():
            raise bad("must be a name")
        return value.strip()
    raise bad("cannot be set from a file")


def _example(like: Any) -> str:
    if isinstance(like, tuple):
        return "[" + ", ".join(_example(v) for v in like[:3]) + "]"
    return repr(like) if isinstance(like, str) else str(like)


def _names(option: str, text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    if not names:
        raise LiaInputError(option, f"no names given ('{text}')", f"e.g. {option} spr-h100,gnr-a100")
    return names


def _check_systems(names: tuple[str, ...], option: str, study: str) -> None:
    from studies import inputs

    for name in names:
        if study == "cost" and name == "dgx-a100":
            continue
        try:
            inputs.system(name)
        except LiaInputError as err:
            raise LiaInputError(option, err.problem, err.fix or "see 'lia profiles list'") from None
        if study == "cxl":
            try:
                inputs.system(f"{name}-cxl")
            except LiaInputError:
                raise LiaInputError(
                    option,
                    f"the cxl study pairs each system with its -cxl twin; there is no '{name}-cxl'",
                    "use a system with a -cxl twin, e.g. spr-h100",
                ) from None


def _check_models(names: tuple[str, ...], option: str) -> None:
    from studies import inputs

    for name in names:
        try:
            inputs.model(name)
        except LiaInputError as err:
            raise LiaInputError(option, err.problem, err.fix or "see 'lia models list'") from None


def read_grid_file(path: Path) -> dict[str, Any]:
    import yaml

    from lia_model.inputs import read_text

    fix = "give a YAML mapping of grid fields, e.g. 'batches: [1, 8, 64]'"
    text = read_text(path, "--grid", fix)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        raise LiaInputError(str(path), "not valid YAML", fix) from None
    if not isinstance(data, dict) or not data:
        raise LiaInputError(str(path), "the file holds no mapping of grid fields", fix)
    return data


def custom_grid(
    study, base: Any, *, systems: Optional[str] = None, models: Optional[str] = None, grid_file: Optional[Path] = None
) -> Any:
    """``base`` with the fields of ``grid_file`` and the ``--systems`` / ``--models`` lists replaced."""
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    metadata = {f.name: f.metadata for f in dataclasses.fields(base)}  # "choices": the values a field may hold
    changes: dict[str, Any] = {}
    settable = [n for n in fields if n != "root"]
    if grid_file is not None:
        where = str(grid_file)
        for key, value in read_grid_file(grid_file).items():
            if key not in settable:
                raise LiaInputError(
                    f"{where}: {key}",
                    f"the {study.name} grid has no field '{key}'",
                    f"its fields: {', '.join(settable) or 'none'}",
                )
            changes[key] = _coerce(key, value, fields[key], where)
            choices = metadata[key].get("choices")
            unknown = [v for v in changes[key] if v not in choices] if choices else []
            if unknown:
                raise LiaInputError(
                    f"{where}: {key}", f"unknown value '{unknown[0]}'", f"choose from {', '.join(choices)}"
                )
    if systems is not None:
        field = next((f for f in SYSTEM_FIELDS if f in fields), None)
        if field is None:
            raise LiaInputError(
                "--systems",
                f"the {study.name} study has no systems axis",
                f"drop --systems (its grid fields: {', '.join(settable) or 'none'})",
            )
        changes[field] = _names("--systems", systems)
    if models is not None:
        field = next((f for f in MODEL_FIELDS if f in fields), None)
        if field is None:
            raise LiaInputError(
                "--models",
                f"the {study.name} study has no models axis",
                f"drop --models (its grid fields: {', '.join(settable) or 'none'})",
            )
        names = _names("--models", models)
        if field == "model":
            if len(names) != 1:
                raise LiaInputError(
                    "--models", f"the {study.name} study takes one model, got {len(names)}", f"e.g. --models {names[0]}"
                )
            changes[field] = names[0]
        else:
            changes[field] = names
    for field in SYSTEM_FIELDS:
        if field in changes:
            _check_systems(changes[field], "--systems" if systems is not None else f"{grid_file}: {field}", study.name)
    for field in MODEL_FIELDS:
        if field in changes:
            value = changes[field]
            _check_models(
                value if isinstance(value, tuple) else (value,),
                "--models" if models is not None else f"{grid_file}: {field}",
            )
    return dataclasses.replace(base, **changes)
