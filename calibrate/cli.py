"""``lia calibrate``: measure this machine into a system profile (imports torch only when it runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

DEFAULT_OUT = Path("results/calibration")


def calibrate_command(
    quick: bool = typer.Option(False, "--quick", help="A representative subset (under a minute on a 2-core CPU)."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", help="Directory for NAME.yaml (the profile) and NAME.csv (raw)."),
    name: Optional[str] = typer.Option(None, "--name", help="Profile name; default CPU-GPU-calibrated, e.g. "
                                                             "emr-h100-calibrated."),
    gpu_datasheet: str = typer.Option("h100-sxm-80gb", "--gpu-datasheet", help="GPU profile (or system) whose GPU "
                                      "and link values are used when no GPU can be measured."),
    link_datasheet: str = typer.Option("pcie5-x16", "--link-datasheet", help="Link profile used with a GPU "
                                       "profile when the link cannot be measured."),
    repeats: int = typer.Option(1, "--repeats", help="Run every measurement N times; the CSV and profile hold "
                                "the mean, the CSV and notes the spread."),
    time_limit_s: Optional[float] = typer.Option(None, "--time-limit-s", help="Bound the whole run: families "
                                                 "that would start too late are skipped and say so."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: one per physical core)."),
    bind: bool = typer.Option(True, "--bind/--no-bind", help="Bind the matmul workers' threads to cores."),
) -> None:
    """Measure this machine (CPU ISAs, host memory per NUMA node, PCIe, GPU) into a calibrated profile.

    The profile loads directly: lia plan --system results/calibration/NAME.yaml
    """
    from calibrate.headline import headline_markdown
    from calibrate.runner import Options, calibrate

    opts = Options(quick=quick, out_dir=out, name=name, gpu_datasheet=gpu_datasheet, link_datasheet=link_datasheet,
                   repeats=repeats, time_limit_s=time_limit_s, threads=threads, bind=bind)
    result = calibrate(opts)
    typer.echo(f"profile: {result.profile_path}")
    typer.echo(f"raw CSV: {result.csv_path}")
    typer.echo(f"use it:  lia plan --system {result.profile_path}")
    typer.echo("")
    typer.echo(headline_markdown(result.rows))


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_command)
