"""The ``lia`` command: one module per job, thin over the typed core.

- ``main``: the typer app, ``lia profiles``, ``lia models``, ``lia predict``, and the commands registered by
  ``plan`` (``lia plan``, ``lia compare``) and by the calibrate, runtime and studies packages;
- ``plan``: ``lia plan`` and ``lia compare`` over ``run_plan(Query) -> PlanResult``;
- ``common``: the options (defaults and help from ``lia_model.query.Query``) and input helpers;
- ``report``: tables and JSON of predictions.

Nothing in the core imports this package (tests/test_layering.py). ``app`` and ``main`` are loaded on first
use, so that ``runtime.cli`` and the others can import ``lia_model.cli.common`` without building the app.
"""

from __future__ import annotations


def main() -> None:
    """The ``lia`` console script."""
    from lia_model.cli.main import main as run

    run()


def __getattr__(name: str):
    if name == "app":
        from lia_model.cli.main import app

        return app
    raise AttributeError(f"module 'lia_model.cli' has no attribute '{name}'")
