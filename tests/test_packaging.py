"""The version the CLI prints and the pins of constraints.txt agree with pyproject.toml."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lia_model.cli import app

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"constraints.txt: '{line}' is not an exact pin (NAME==VERSION)"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_lia_version_is_the_project_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"lia {PROJECT['version']}"


def test_constraints_agree_with_the_exact_pins_of_pyproject():
    pins = _pins()
    exact = [r for extra in PROJECT["optional-dependencies"].values() for r in extra if "==" in r]
    assert exact, "pyproject pins some test packages exactly (torch, ruff, ...)"
    for requirement in exact:
        name, version = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==([^;\s]+)", requirement).groups()
        pinned = pins[re.sub(r"[-_.]+", "-", name).lower()]
        assert pinned.split("+")[0] == version, f"{name}: pyproject {version}, constraints.txt {pinned}"
    assert "lia-modeler" not in pins, "the project itself is not a constraint"
