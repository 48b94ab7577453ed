"""Resolving command-line inputs (the I/O edge of the core): model names or config.json paths, systems."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from lia_model.errors import LiaInputError
from lia_model.hardware import SystemSpec
from lia_model.models import ModelSpec, get_model, model_from_hf_config

# The largest input file read (a profile, a config.json, a plan): real ones are a few kB to a few MB.
MAX_INPUT_BYTES = 64 * 2**20


def read_text(path: Path, what: str, fix: str) -> str:
    """The text of a small input file, or one clear error (missing, a folder, unreadable, too big, binary)."""
    if not path.exists():
        raise LiaInputError(what, f"no such file '{path}'", fix)
    if path.is_dir():
        raise LiaInputError(what, f"'{path}' is a folder, not a file", fix)
    try:
        size = path.stat().st_size
        if size > MAX_INPUT_BYTES:
            raise LiaInputError(str(path), f"the file has {size / 2**20:.0f} MiB; an input file this large is "
                                f"not a profile, plan or config", fix)
        raw = path.read_bytes()
    except OSError as err:
        raise LiaInputError(str(path), f"cannot read the file ({err.strerror})", "check the path and permissions") \
            from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise LiaInputError(str(path), f"not a text file (byte {err.start} is not UTF-8)", fix) from None


def parse_json(text: str, where: str, fix: str) -> object:
    """JSON with one clear error for malformed, too deeply nested or non-standard (NaN, Infinity) input."""
    def no_constants(name: str) -> object:
        raise ValueError(f"{name} is not a number JSON allows")

    try:
        return json.loads(text, parse_constant=no_constants)
    except json.JSONDecodeError as err:
        raise LiaInputError(where, f"malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}", fix) \
            from None
    except ValueError as err:
        raise LiaInputError(where, f"malformed JSON: {err}", fix) from None
    except RecursionError:
        raise LiaInputError(where, "the JSON is nested too deeply to be a plan or a config", fix) from None




def resolve_model(name_or_path: str) -> ModelSpec:
    """A catalog name (``opt-175b``) or a path to a Hugging Face config.json or its folder (read locally, no
    network). A config is named after its file (``mixtral.json`` -> mixtral), or after its folder when the
    file is called config.json."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.is_dir():
        if path.is_dir():
            path = path / "config.json"
        fix = 'give a Hugging Face config.json, e.g. {"hidden_size": 4096, "num_hidden_layers": 32, ...}'
        config = parse_json(read_text(path, "--model", fix), str(path), fix)
        if not isinstance(config, dict):
            raise LiaInputError(str(path), "the config is not a JSON object", fix)
        stem = path.stem
        name = (path.resolve().parent.name or stem) if stem == "config" else stem
        return model_from_hf_config(config, name=name)
    return get_model(name_or_path)


def resolve_system(name_or_path: str, overrides: Iterable[str] = ()) -> SystemSpec:
    from lia_model.profiles import load_system

    return load_system(name_or_path, overrides)
