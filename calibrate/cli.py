"""``lia calibrate``: measure this machine into a system profile (imports torch only when it runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lia_model.errors import LiaInputError

DEFAULT_OUT = Path("results/calibration")


def calibrate_command(
    quick: bool = typer.Option(False, "--quick", help="A representative subset (under a minute on a 2-core CPU)."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", help="Directory for NAME.yaml (the profile) and NAME.csv (raw)."),
    name: Optional[str] = typer.Option(
        None, "--name", help="Profile name; default CPU-GPU-calibrated, e.g. emr-h100-calibrated."
    ),
    gpu_datasheet: str = typer.Option(
        "h100-sxm-80gb",
        "--gpu-datasheet",
        help="GPU profile (or system) whose GPU and link values are used when no GPU can be measured.",
    ),
    link_datasheet: str = typer.Option(
        "pcie5-x16", "--link-datasheet", help="Link profile used with a GPU profile when the link cannot be measured."
    ),
    repeats: int = typer.Option(
        1,
        "--repeats",
        help="Run every measurement N times; the CSV and profile hold the mean, the CSV and notes the spread.",
    ),
    time_limit_s: Optional[float] = typer.Option(
        None, "--time-limit-s", help="Bound the whole run: families that would start too late are skipped and say so."
    ),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: one per physical core)."),
    bind: bool = typer.Option(True, "--bind/--no-bind", help="Bind the matmul workers' threads to cores."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Overwrite an existing NAME.yaml / NAME.csv (also one of the shipped profiles under hwprofiles/).",
    ),
) -> None:
    """Measure this machine (CPU ISAs, host memory per NUMA node, PCIe, GPU) into a calibrated profile.

    The profile loads directly: lia plan --system results/calibration/NAME.yaml
    """
    _require_torch()
    from calibrate.headline import headline_markdown, load_rows
    from calibrate.runner import Options, calibrate

    if name is None:
        name = _default_name()
    _check_target(out, name, force)
    opts = Options(
        quick=quick,
        out_dir=out,
        name=name,
        gpu_datasheet=gpu_datasheet,
        link_datasheet=link_datasheet,
        repeats=repeats,
        time_limit_s=time_limit_s,
        threads=threads,
        bind=bind,
    )
    result = calibrate(opts)
    typer.echo(f"profile: {result.profile_path}")
    typer.echo(f"raw CSV: {result.csv_path}")
    typer.echo(f"use it:  lia plan --system {result.profile_path}")
    typer.echo("")
    # From the CSV as written (6 significant digits), so the table is the one `python -m calibrate.headline`
    # prints for this profile: from the in-memory rows a figure on a rounding boundary could differ in its last digit.
    typer.echo(headline_markdown(load_rows(result.csv_path)))


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise LiaInputError(
            "lia calibrate", "PyTorch is not installed (the measurements run on it)", "pip install -e '.[torch]'"
        ) from None


def _default_name() -> str:
    """The runner's default profile name (CPU codename and GPU), worked out before anything runs so that
    an existing file can be refused up front."""
    import torch

    from calibrate.host import host_info
    from calibrate.runner import default_name

    gpu_name = None
    try:
        if torch.version.cuda is not None and torch.cuda.is_available():
            gpu_name = torch.cuda.get_device_name(0)
    except RuntimeError:
        gpu_name = None
    return default_name(host_info(), gpu_name)


def _check_target(out: Path, name: str, force: bool) -> None:
    """Refuse to overwrite a profile (or its CSV), and to write into the shipped hwprofiles/, without --force."""
    from lia_model.profiles import PROFILE_DIR

    if force:
        return
    if out.resolve().is_relative_to(PROFILE_DIR.resolve()):
        raise LiaInputError(
            "--out",
            f"'{out}' is inside the shipped profiles (hwprofiles/)",
            "write elsewhere (the default is results/calibration), or add --force",
        )
    for path in (out / f"{name}.yaml", out / f"{name}.csv"):
        if path.exists():
            raise LiaInputError(
                "--name", f"'{path}' exists", "choose another --name or --out, or add --force to overwrite it"
            )


CALIBRATE_EXAMPLES = (
    "Examples:\n\n  lia calibrate --quick\n\n  lia calibrate --out results/calibration --name "
    "my-host\n\n  lia calibrate --repeats 2 --time-limit-s 900\n\n  lia plan --system "
    "results/calibration/my-host.yaml"
)


def register(app: typer.Typer) -> None:
    app.command("calibrate", epilog=CALIBRATE_EXAMPLES)(calibrate_command)
