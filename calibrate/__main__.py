"""``python -m calibrate [options]``: the calibrator without the rest of the ``lia`` CLI (for hosts that
lack the optimiser's dependencies). Same options as ``lia calibrate``."""

from __future__ import annotations

import typer

from calibrate.cli import calibrate_command
from lia_model.cli.common import run_guarded


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(calibrate_command)
    run_guarded(app, prog_name="python -m calibrate")


if __name__ == "__main__":
    main()
