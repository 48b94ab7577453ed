"""One query of the tool, declared once: what ``lia plan`` and ``lia compare`` ask the optimiser.

Every field has its default and its description here; the CLI's options take both from these fields
(``lia_model/cli/common.py``), ``run_plan`` takes a ``Query`` and ``lia plan --json`` writes its fields under
``query``. Names are what the user typed (a catalogued name or a path): they are resolved and checked, with one
clear error each, when the query runs (``lia_model.inputs``).
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_SYSTEM = "spr-h100"
DEFAULT_MODEL = "opt-175b"

Objective = Literal["latency", "throughput"]
Mode = Literal["overlap", "additive", "paper"]
Solver = Literal["cbc", "highs", "enumerate"]


class Query(BaseModel):
    """One optimisation query: a system, a model, a workload, what-if overrides, an objective with its bound, the
    cost model and the solver."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    system: str = Field(
        DEFAULT_SYSTEM, description="System profile name (lia profiles list) or path to a system .yaml."
    )
    model: str = Field(
        DEFAULT_MODEL,
        description="Catalog model (lia models list) or path to a Hugging Face config.json (or its folder).",
    )
    batch: int = Field(1, description="Batch size B (sequences processed together).")
    input_len: int = Field(256, description="Prompt tokens per sequence (L_in).")
    output_len: int = Field(32, description="Generated tokens per sequence (L_out), the first from prefill.")
    overrides: tuple[str, ...] = Field(
        (),
        description="What-if override FIELD=VALUE of the system, e.g. gpu.memory_gib=141 "
        "(repeatable; any field 'lia profiles show' prints).",
    )
    objective: Objective = Field(
        "latency",
        description="latency (one query of batch B), or throughput (the batch is chosen too, up to what memory allows).",
    )
    tpot_max_ms: Optional[float] = Field(
        None, description="Bound on the mean time per output token, in ms (needs --output 2 or more)."
    )
    ttft_max_ms: Optional[float] = Field(
        None,
        strict=True,  # a number, never a bool read as 1 ms
        description="Bound on the time to the first token (the prefill pass and its LM head), in ms.",
    )
    mode: Mode = Field(
        "overlap",
        description="Cost model: overlap (resources run side by side), additive (their serial sum) or "
        "paper (the LIA authors' released model; use it with a paper-* system).",
    )
    solver: Solver = Field(
        "cbc",
        description="cbc (the ILP, default), highs (the ILP on HiGHS), or enumerate (exact "
        "enumeration of the plan space, fastest).",
    )
    weight_dtype: Optional[str] = Field(
        None,
        description="How the weights are stored: bf16, fp8_e4m3, int8 or int4 "
        "(default: the checkpoint's quantization_config, else bf16).",
    )
    kv_dtype: Optional[str] = Field(None, description="How the KV cache is stored: bf16, fp8 or int8 (default bf16).")
    group_size: Optional[int] = Field(
        None,
        description="Weight elements along K per quantisation scale (int4 "
        "default 128; int8 and fp8 default: one per output channel).",
    )

    @classmethod
    def of(cls, **fields) -> "Query":
        """A query from CLI values: enum members become their values, a None list of overrides none; names
        that are not Query fields (a command's other options, e.g. from ``locals()``) are left out."""
        clean = {k: getattr(v, "value", v) for k, v in fields.items() if k in cls.model_fields}
        if clean.get("overrides") is None:
            clean.pop("overrides", None)
        else:
            clean["overrides"] = tuple(clean["overrides"])
        return cls(**clean)


def default(name: str):
    """The default of a Query field (for the CLI's options)."""
    return Query.model_fields[name].default


def describe(name: str) -> str:
    """The description of a Query field (the CLI's help text)."""
    return Query.model_fields[name].description or ""
