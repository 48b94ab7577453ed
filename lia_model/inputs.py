"""Resolving command-line inputs (the I/O edge of the core): model names or config.json paths, systems."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from lia_model.errors import LiaInputError
from lia_model.hardware import SystemSpec
from lia_model.models import ModelSpec, get_model, model_from_hf_config


def resolve_model(name_or_path: str) -> ModelSpec:
    """A catalog name (``opt-175b``) or a path to a Hugging Face config.json (read locally, no network)."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.is_dir():
        if path.is_dir():
            path = path / "config.json"
        if not path.exists():
            raise LiaInputError("model", f"no such config file '{path}'", "give a path to an existing config.json")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise LiaInputError(str(path), f"malformed JSON at line {err.lineno}: {err.msg}",
                                'a config.json is a JSON object, e.g. {"hidden_size": 4096, ...}') from None
        if not isinstance(config, dict):
            raise LiaInputError(str(path), "the config is not a JSON object", 'e.g. {"hidden_size": 4096, ...}')
        return model_from_hf_config(config, name=path.parent.name or path.stem)
    return get_model(name_or_path)


def resolve_system(name_or_path: str, overrides: Iterable[str] = ()) -> SystemSpec:
    from hwprofiles import load_system

    return load_system(name_or_path, overrides)
