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
            raise LiaInputError(
                str(path),
                f"the file has {size / 2**20:.0f} MiB; an input file this large is not a profile, plan or config",
                fix,
            )
        raw = path.read_bytes()
    except OSError as err:
        raise LiaInputError(
            str(path), f"cannot read the file ({err.strerror})", "check the path and permissions"
        ) from None
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
        raise LiaInputError(where, f"malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}", fix) from None
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


def load_prices(path: str):
    """A price file (the schema of ``lia_model.prices.Prices``, e.g. studies/prices.yaml), or one clear error."""
    import yaml
    from pydantic import ValidationError

    from lia_model.errors import from_validation_error
    from lia_model.prices import Prices

    fix = "give a YAML price file like studies/prices.yaml (currency, amortisation, electricity, parts, machines)"
    text = read_text(Path(path), "--prices", fix)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise LiaInputError(path, f"not valid YAML{where}", fix) from None
    if not isinstance(data, dict):
        raise LiaInputError(path, "the file holds no mapping of fields", fix)
    try:
        return Prices.model_validate(data).located(path)
    except ValidationError as err:
        raise from_validation_error(err, path, Prices) from None


TP_NODE_FIELDS = (
    "gpus",
    "gpu_profile",
    "hbm_gbps",
    "nvlink_allreduce_gbps",
    "allreduce_latency_us",
    "memory_headroom_fraction",
)


def load_tp_node(path: str):
    """A tensor-parallel node file (e.g. studies/dgx_a100.yaml: name, gpus, gpu_profile, hbm_gbps,
    nvlink_allreduce_gbps, allreduce_latency_us, memory_headroom_fraction, each with a source), or one clear
    error."""
    import math

    import yaml

    from lia_model.profiles import load_device
    from lia_model.tensor_parallel import TensorParallelNode

    fix = "give a node file like studies/dgx_a100.yaml (name, gpus, gpu_profile, hbm_gbps, ..., source:)"
    text = read_text(Path(path), "--tp-node", fix)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        raise LiaInputError(path, "not valid YAML", fix) from None
    if not isinstance(data, dict):
        raise LiaInputError(path, "the file holds no mapping of fields", fix)
    known = {"name", "description", "source", *TP_NODE_FIELDS}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise LiaInputError(f"{path}: {unknown[0]}", "unknown field", f"a node file has {', '.join(sorted(known))}")
    missing = [f for f in ("name",) + TP_NODE_FIELDS if f not in data]
    sources = data.get("source")
    unsourced = [f for f in TP_NODE_FIELDS if not isinstance(sources, dict) or not sources.get(f)]
    if missing or unsourced:
        raise LiaInputError(
            path,
            f"missing fields {missing} or sources {unsourced}",
            "every field needs a value and an entry under source:",
        )
    examples = {
        "hbm_gbps": 2039,
        "nvlink_allreduce_gbps": 240,
        "allreduce_latency_us": 20,
        "memory_headroom_fraction": 0.05,
    }
    numbers = {}
    for f in TP_NODE_FIELDS[2:]:
        v = data[f]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise LiaInputError(f"{path}: {f}", f"must be a finite number >= 0, got {v!r}", f"e.g. {f}: {examples[f]}")
        numbers[f] = float(v)
    gpus = data["gpus"]
    if isinstance(gpus, bool) or not isinstance(gpus, int) or not 1 <= gpus <= 1024:
        raise LiaInputError(f"{path}: gpus", f"must be a whole number of GPUs from 1 to 1024, got {gpus!r}", "e.g. 8")
    for f, ok, rule in (
        ("hbm_gbps", numbers["hbm_gbps"] > 0, "must be above 0"),
        ("nvlink_allreduce_gbps", numbers["nvlink_allreduce_gbps"] > 0, "must be above 0"),
        ("memory_headroom_fraction", numbers["memory_headroom_fraction"] < 1, "must be below 1"),
    ):
        if not ok:
            raise LiaInputError(f"{path}: {f}", f"{rule}, got {data[f]!r}", f"e.g. {f}: {examples[f]}")
    gpu = load_device("gpu", str(data["gpu_profile"])).model_copy(update={"hbm_gbps": numbers["hbm_gbps"]})
    return TensorParallelNode(
        str(data["name"]),
        gpus,
        gpu,
        numbers["nvlink_allreduce_gbps"],
        numbers["allreduce_latency_us"],
        numbers["memory_headroom_fraction"],
    )
