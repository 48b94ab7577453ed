"""``lia run``: registered on the ``lia`` app by runtime/cli.py. Nothing slow is imported at import time."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import typer

from lia_model.errors import LiaInputError


def run_command(
    model: str = typer.Option(..., "--model", help="Local Hugging Face model folder (config.json, *.safetensors)."),
    prompt: Optional[List[str]] = typer.Option(
        None, "--prompt", help="Prompt text (repeatable), or token ids ('1 2 3') without a tokenizer or with --ids."
    ),
    prompts_file: Optional[Path] = typer.Option(None, "--prompts", help="File with one prompt per line."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Tokens to generate per prompt."),
    system: Optional[str] = typer.Option(
        None,
        "--system",
        help="System profile (name or .yaml); default: the "
        "newest calibrated profile in results/calibration/, else a datasheet one.",
    ),
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="What-if override FIELD=VALUE of the system."),
    objective: str = typer.Option(
        "latency",
        "--objective",
        help="latency (one batch of all prompts of a length) or throughput (the batch size is chosen too).",
    ),
    tpot_max_ms: Optional[float] = typer.Option(
        None, "--tpot-max-ms", help="Bound on the mean time per output token, in ms."
    ),
    solver: str = typer.Option("cbc", "--solver", help="cbc, highs or enumerate."),
    plan: Optional[str] = typer.Option(
        None, "--plan", help="Run this plan .json (e.g. from 'lia plan --json') instead of optimising."
    ),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy; > 0 samples."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (with --temperature > 0)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampler."),
    ids: bool = typer.Option(False, "--ids", help="Prompts are token ids and outputs are printed as ids."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Generate all --max-new-tokens even after EOS."),
    warmup: bool = typer.Option(
        False,
        "--warmup",
        help="One untimed generation of the same length first, so the measured times exclude start-up and "
        "first-shape costs (kernel JIT and graph builds for each new key length).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document (no streaming)."),
    trace: Optional[str] = typer.Option(
        None,
        "--trace",
        help="Also write a Chrome trace per batch into this new folder (one extra, untimed, profiled pass).",
    ),
    threads: Optional[int] = typer.Option(
        None,
        "--threads",
        help="CPU threads (default: one per physical core, less one kept for the weight feeder with a GPU).",
    ),
    gpu_memory_gib: Optional[float] = typer.Option(
        None, "--gpu-memory-gib", help="Plan for and enforce a GPU memory cap (GiB), e.g. to emulate a smaller GPU."
    ),
    weight_dtype: str = typer.Option(
        "bf16",
        "--weight-dtype",
        help="Store the linear weights as bf16, int8 or fp8_e4m3 (quantised per output channel as they load).",
    ),
    dtype: str = typer.Option("bfloat16", "--dtype", hidden=True, help="bfloat16, or float32 (tests)."),
    fake_gpu: bool = typer.Option(
        False,
        "--fake-gpu",
        hidden=True,
        help="Test mode: emulate the GPU on the CPU (data flow only; timings meaningless).",
    ),
) -> None:
    """Generate text from a local Hugging Face checkpoint with the optimal plan for this machine."""
    from runtime.generate import Sampling
    from runtime.run import RunOptions, run

    texts = list(prompt or [])
    if prompts_file is not None:
        if not prompts_file.is_file():
            problem = "is a folder" if prompts_file.is_dir() else "no such file"
            raise LiaInputError("--prompts", f"{problem}: '{prompts_file}'", "give a file with one prompt per line")
        try:
            text = prompts_file.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise LiaInputError("--prompts", f"cannot read '{prompts_file}': {err}", "give a UTF-8 text file") from None
        texts += [line for line in text.splitlines() if line.strip()]
    if not texts:
        raise LiaInputError("--prompt", "no prompt given", "give --prompt TEXT or --prompts FILE")
    given_plan = None
    if plan is not None:
        from lia_model.cli.common import load_plan

        given_plan = load_plan(plan)
    opts = RunOptions(
        model=model,
        prompts=texts,
        max_new_tokens=max_new_tokens,
        system=system,
        overrides=list(overrides or []),
        objective=objective,
        tpot_max_ms=tpot_max_ms,
        solver=solver,
        plan=given_plan,
        plan_source=f"--plan {plan}" if plan else "",
        sampling=Sampling(temperature, top_p, seed),
        ids=ids,
        ignore_eos=ignore_eos,
        warmup=warmup,
        fake_gpu=fake_gpu,
        dtype=dtype,
        weight_dtype=weight_dtype,
        stream=not as_json,
        threads=threads,
        gpu_memory_gib=gpu_memory_gib,
        trace_dir=trace,
    )

    def warn(message: str) -> None:
        typer.echo(f"warning: {message}", err=True)

    report = run(opts, out=sys.stdout, warn=warn, progress_factory=None if as_json else _progress)
    if as_json:
        from runtime.run import report_json

        typer.echo(json.dumps(report_json(report, texts), indent=2))
        return
    _print_summary(report, texts)


@contextmanager
def _progress(total: int) -> Iterator:
    """A byte progress bar on stderr while the weights load."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn("loading weights"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("load", total=total)

        def update(done: int, _total: int) -> None:
            bar.update(task, completed=done)

        yield update


def _print_summary(report, texts: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    from runtime.run import fmt_ms, plan_words

    console = Console(width=None if sys.stdout.isatty() else 160)
    for b in report.batches:
        if b.workload.batch > 1 or not texts:
            for i, out, text in zip(b.indices, b.outputs, b.texts):
                console.print(f"[bold]prompt {i + 1}[/bold]: {texts[i]}", markup=True, highlight=False)
                console.print(text if text is not None else " ".join(map(str, out)), markup=False, highlight=False)
    console.print(
        f"{report.model.name}: weights {report.load_gb:.2f} GB loaded in {report.load_s:.1f} s; "
        f"{report.backend}; {report.dtype}; tokenizer: {report.codec}; {report.sampling.describe()}; "
        f"predictions: {report.system_note}",
        markup=False,
        highlight=False,
    )
    table = Table(title="measured vs predicted (same plan, same number of tokens)")
    for col in (
        "prompts",
        "B",
        "L_in",
        "tokens",
        "plan",
        "TTFT meas / pred",
        "TPOT meas / pred",
        "tokens/s meas / pred",
    ):
        table.add_column(col)
    for b in report.batches:
        m, p = b.measured(), b.predicted()
        first, last = b.indices[0] + 1, b.indices[-1] + 1
        table.add_row(
            f"{first}"
            if first == last
            else f"{first}..{last}"
            if len(b.indices) == last - first + 1
            else ",".join(str(i + 1) for i in b.indices),
            str(b.workload.batch),
            str(b.workload.input_len),
            str(b.generated),
            f"{plan_words(b.plan)} [{b.plan_source}]",
            f"{fmt_ms(m['ttft_s'])} / {fmt_ms(p['ttft_s'])}",
            f"{fmt_ms(m['tpot_mean_s'])} / {fmt_ms(p['tpot_mean_s'])}",
            f"{m['tokens_per_s']:.2f} / {p['tokens_per_s']:.2f}",
        )
    console.print(table)
