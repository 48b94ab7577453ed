"""The Query is declared once (lia_model/query.py): the CLI's options take their defaults from it, run_plan takes
it, and lia plan --json writes it back."""

from __future__ import annotations

import pydantic
import pytest
import typer

from lia_model.query import DEFAULT_MODEL, DEFAULT_SYSTEM, Query

# CLI option -> Query field
OPTIONS = {
    "system": "system",
    "model": "model",
    "batch": "batch",
    "input_len": "input_len",
    "output_len": "output_len",
    "objective": "objective",
    "tpot_max_ms": "tpot_max_ms",
    "ttft_max_ms": "ttft_max_ms",
    "mode": "mode",
    "solver": "solver",
    "weight_dtype": "weight_dtype",
    "kv_dtype": "kv_dtype",
    "group_size": "group_size",
}


def _params(name: str) -> dict:
    from lia_model.cli import app

    command = typer.main.get_command(app).commands[name]
    return {p.name: p for p in command.params}


@pytest.mark.parametrize("command", ["plan", "compare"])
def test_the_commands_options_take_the_querys_defaults_and_help(command: str) -> None:
    params = _params(command)
    checked = 0
    for option, field in OPTIONS.items():
        if option not in params or command == "compare" and option in ("system", "model", "objective"):
            continue  # compare takes lists of systems and models, and picks its objective from --rank
        info = Query.model_fields[field]
        got = params[option].default
        assert getattr(got, "value", got) == info.default, option
        assert params[option].help == info.description, option
        checked += 1
    assert checked >= 9


def test_the_query_is_frozen_and_refuses_unknown_fields() -> None:
    q = Query()
    assert (q.system, q.model, q.batch, q.input_len, q.output_len) == (DEFAULT_SYSTEM, DEFAULT_MODEL, 1, 256, 32)
    with pytest.raises(pydantic.ValidationError):
        Query(batchsize=4)  # a typo is not silently ignored
    with pytest.raises(pydantic.ValidationError):
        q.batch = 2  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        Query(objective="fastest")
    with pytest.raises(pydantic.ValidationError):
        Query(ttft_max_ms=True)  # a bool is not read as 1 ms
    assert Query(ttft_max_ms=5000).ttft_max_ms == 5000.0


def test_run_plan_answers_the_query_it_was_given() -> None:
    """lia plan --json's query section is the Query (names resolved), and the optimum's prediction rides beside
    the document instead of inside it under a private key."""
    from lia_model.cli.plan import run_plan

    q = Query.of(
        system="spr-a100",
        model="opt-30b",
        batch=4,
        input_len=64,
        output_len=8,
        overrides=["gpu.memory_gib=40"],
        solver="enumerate",
    )
    result = run_plan(q)
    doc = result.document["query"]
    assert (doc["system"], doc["model"], doc["batch"], doc["input_len"], doc["output_len"]) == (
        "spr-a100",
        "opt-30b",
        4,
        64,
        8,
    )
    assert doc["overrides"] == ["gpu.memory_gib=40"] and doc["solver"] == "enumerate"
    assert "_prediction" not in result.document
    assert result.prediction.latency_s == pytest.approx(result.document["optimum"]["latency_s"])
