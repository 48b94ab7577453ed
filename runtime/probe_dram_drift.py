"""Is a CPU linear's run-to-run spread the kernel's, its pages', or the host's? One kernel, timed for minutes.

Why: on the GPU host the same CPU linear alone took 6.7-13.5 ms in runs two minutes apart
(runtime/validation/beside-dma-probe/, Llama-2-70B fc2 at 1 row), which bounds what any model of it can predict.
Three candidate causes, each recorded per round here so the data can tell them apart:

- the host's memory bandwidth (a virtual machine shares its memory controllers with other tenants): a plain
  read of a 1 GiB buffer (``torch.sum``), timed beside the kernel in the same round;
- the kernel's pages: weight copies are re-allocated every ``--realloc-every`` rounds and the share of them on
  transparent huge pages (``runtime.hostmem.huge_page_fraction``) is recorded;
- the hypervisor taking the CPUs: steal time from /proc/stat over the round.

Each round times the runtime's own CPU sublayer call (``calibrate.kernel_tables._sublayer_call``, the executor's
call, over cold weight copies in the runtime's host memory) at 1 and 32 rows, under the runtime's CPU setup.
CPU only: needs no GPU, but means something only on the host whose numbers it explains.

    python -m runtime.probe_dram_drift --out DIR [--seconds 240] [--model llama-2-70b] [--sublayer fc2] [--force]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import pandas as pd

READ_BYTES = 1 << 30
# what --plot and summary() read from a probe CSV
PLOT_COLUMNS = (
    "t_s",
    "linear_1row_ms",
    "linear_32row_ms",
    "read_gbps",
    "weights_huge_page_fraction",
    "steal_frac",
    "model",
    "sublayer",
    "k",
    "n",
)


def steal_jiffies(stat: str | None = None) -> tuple[int, int]:
    """(steal, total) jiffies of the whole machine from /proc/stat's first line, or (0, 0) where unreadable."""
    if stat is None:
        try:
            stat = Path("/proc/stat").read_text()
        except OSError:
            return 0, 0
    fields = stat.splitlines()[0].split()
    if not fields or fields[0] != "cpu":
        return 0, 0
    values = [int(v) for v in fields[1:]]
    steal = values[7] if len(values) > 7 else 0
    return steal, sum(values[:8])


def _median_time(fn: Callable[[], object], calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def probe(
    seconds: float, model_name: str, sub_name: str, realloc_every: int, copies: int, threads: tuple[int, ...] = ()
) -> pd.DataFrame:
    """Rounds until ``seconds`` pass; each round times the read and the linear at every count in ``threads``
    (default: the CPU setup's own), one row per (round, thread count)."""
    import torch

    from calibrate.kernel_tables import _params, _sublayer_call
    from calibrate.tensors import fill_varied
    from lia_model.accounting import linear_shape
    from lia_model.models import get_model
    from lia_model.sublayers import Sublayer
    from runtime import cpu_setup
    from runtime.hostmem import host_tensor, huge_page_fraction

    applied = cpu_setup.apply()
    setup, setup_threads = applied.describe(), applied.threads
    thread_counts = threads or (setup_threads,)
    model = get_model(model_name)
    sub = Sublayer(sub_name)
    k, n = linear_shape(model, sub)
    weight_bytes = 2 * k * n
    big = fill_varied(host_tensor((READ_BYTES // 2,), torch.bfloat16))
    big_huge = huge_page_fraction([big])
    rows: list[dict] = []
    params: list[dict] = []
    calls: dict[int, list[Callable[[], object]]] = {}
    huge = None
    t_start = time.perf_counter()
    round_no = 0
    while time.perf_counter() - t_start < seconds:
        if round_no % realloc_every == 0:
            del params, calls
            params = _params(model, sub, "cpu", copies)
            huge = huge_page_fraction([p["w"] for p in params])
            calls = {t: [_sublayer_call(model, sub, p, t, "cpu") for p in params] for t in (1, 32)}
            for fns in calls.values():
                fns[0]()
        for threads in thread_counts:
            torch.set_num_threads(threads)
            steal0, total0 = steal_jiffies()
            t0 = time.perf_counter()
            read_s = _median_time(lambda: torch.sum(big), 3)
            per_rows = {}
            for t, fns in calls.items():
                it = iter(fns * 2)
                per_rows[t] = _median_time(lambda it=it: next(it)(), len(fns))
            steal1, total1 = steal_jiffies()
            rows.append(
                {
                    "round": round_no,
                    "t_s": t0 - t_start,
                    "threads": threads,
                    "read_gbps": READ_BYTES / read_s / 1e9,
                    "linear_1row_ms": per_rows[1] * 1e3,
                    "linear_32row_ms": per_rows[32] * 1e3,
                    "linear_1row_gbps": weight_bytes / per_rows[1] / 1e9,
                    "weights_huge_page_fraction": huge,
                    "read_buffer_huge_page_fraction": big_huge,
                    "steal_frac": (steal1 - steal0) / (total1 - total0) if total1 > total0 else float("nan"),
                    "model": model_name,
                    "sublayer": sub_name,
                    "k": k,
                    "n": n,
                    "setup": setup,
                }
            )
        torch.set_num_threads(setup_threads)
        round_no += 1
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame, window_s: float = 30.0) -> str:
    """Per-window medians, and how the linear's time moves with the read bandwidth, its pages and steal; with
    several thread counts, one line per count instead of the windows."""
    if "threads" in df.columns and df["threads"].nunique() > 1:
        lines = [
            f"{'threads':>7s} {'rounds':>6s} {'1-row ms: min':>13s} {'median':>7s} {'mean':>6s} {'max':>6s} {'32-row ms: median':>17s} {'mean':>6s}"
        ]
        for threads, part in df.groupby("threads"):
            one, many = part["linear_1row_ms"], part["linear_32row_ms"]
            lines.append(
                f"{threads:7d} {len(part):6d} {one.min():13.2f} {one.median():7.2f} {one.mean():6.2f} {one.max():6.2f} "
                f"{many.median():17.2f} {many.mean():6.2f}"
            )
        return "\n".join(lines)
    w = (df["t_s"] // window_s).astype(int)
    g = df.groupby(w)
    lines = [
        f"{'window s':>9s} {'rounds':>6s} {'read GB/s':>9s} {'1-row ms':>8s} {'32-row ms':>9s} {'huge':>5s} {'steal':>6s}"
    ]
    for key, part in g:
        lines.append(
            f"{key * window_s:9.0f} {len(part):6d} {part['read_gbps'].median():9.1f} "
            f"{part['linear_1row_ms'].median():8.2f} {part['linear_32row_ms'].median():9.2f} "
            f"{part['weights_huge_page_fraction'].median():5.2f} {part['steal_frac'].median():6.3f}"
        )
    one = df["linear_1row_ms"]
    lines.append(
        f"1-row linear: min {one.min():.2f} ms, median {one.median():.2f}, max {one.max():.2f} "
        f"(max/min {one.max() / one.min():.2f}); read bandwidth {df['read_gbps'].min():.1f}-{df['read_gbps'].max():.1f} GB/s"
    )
    for col in ("read_gbps", "weights_huge_page_fraction", "steal_frac"):
        if df[col].nunique() > 1:
            rho = df["linear_1row_ms"].corr(df[col], method="spearman")
            lines.append(f"Spearman rank correlation of the 1-row time with {col}: {rho:+.2f}")
        else:
            lines.append(f"{col} did not vary ({df[col].iloc[0]})")
    lines.append("(a host whose memory bandwidth drifts makes the first negative: slower reads, slower linear)")
    return "\n".join(lines)


def plot(df: pd.DataFrame, path: Path) -> None:
    """The 1-row and 32-row linear times and the plain read bandwidth against time, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    groups = df.groupby("threads") if "threads" in df.columns and df["threads"].nunique() > 1 else [(None, df)]
    for threads, part in groups:
        tag = "" if threads is None else f", {threads} threads"
        top.plot(part["t_s"], part["linear_1row_ms"], ".", ms=3, label=f"1 row{tag}")
        if threads is None:
            top.plot(part["t_s"], part["linear_32row_ms"], ".", ms=3, label="32 rows")
    top.set_ylabel("CPU linear, ms")
    top.set_title(f"{df['model'].iloc[0]} {df['sublayer'].iloc[0]} ({df['k'].iloc[0]}x{df['n'].iloc[0]}), alone")
    top.legend(loc="upper right")
    bottom.plot(df["t_s"], df["read_gbps"], ".", ms=3, color="tab:green")
    bottom.set_ylabel("plain 1 GiB read, GB/s")
    bottom.set_xlabel("seconds since start")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seconds", type=float, default=240.0, help="how long to keep timing (default 240)")
    ap.add_argument("--model", default="llama-2-70b")
    ap.add_argument("--sublayer", default="fc2", choices=["qkv", "out_proj", "fc1", "fc2"])
    ap.add_argument("--realloc-every", type=int, default=10, help="rounds between fresh weight copies (default 10)")
    ap.add_argument("--copies", type=int, default=4, help="cold weight copies cycled per round (default 4)")
    ap.add_argument("--threads", default="", help="comma-separated thread counts to alternate (default: the setup's)")
    ap.add_argument("--force", action="store_true", help="replace an existing CSV")
    ap.add_argument("--plot", type=Path, help="only plot this probe CSV into --out (no timing)")
    args = ap.parse_args(argv)
    if args.plot is not None:
        png = args.out / (args.plot.stem + ".png")
        if png.exists() and not args.force:
            print(f"error: --out: '{png}' exists -- pass --force to replace it", file=sys.stderr)
            return 2
        try:
            df = pd.read_csv(args.plot)
            missing = set(PLOT_COLUMNS) - set(df.columns)
        except (OSError, ValueError) as err:
            print(
                f"error: --plot: cannot read '{args.plot}' ({str(err).strip().splitlines()[0]}) -- give a probe_dram_drift CSV",
                file=sys.stderr,
            )
            return 2
        if missing or df.empty:
            print(
                f"error: --plot: '{args.plot}' lacks {sorted(missing) or 'rows'} -- give a probe_dram_drift CSV",
                file=sys.stderr,
            )
            return 2
        args.out.mkdir(parents=True, exist_ok=True)
        plot(df, png)
        print(summary(df))
        print(f"wrote {png}")
        return 0
    target = args.out / "probe_dram_drift.csv"
    if target.exists() and not args.force:
        print(f"error: --out: '{target}' exists -- pass --force to replace it", file=sys.stderr)
        return 2
    for name, value, lo in (
        ("--seconds", args.seconds, 1.0),
        ("--realloc-every", args.realloc_every, 1),
        ("--copies", args.copies, 1),
    ):
        if not value >= lo or value != value or value == float("inf"):
            print(f"error: {name}: {value} is not a finite number >= {lo} -- give one", file=sys.stderr)
            return 2
    try:
        threads = tuple(int(v) for v in args.threads.split(",") if v.strip())
    except ValueError:
        threads = (0,)
    if any(t < 1 for t in threads):
        print(
            f"error: --threads: '{args.threads}' is not a list of positive integers -- give e.g. 15,8,4",
            file=sys.stderr,
        )
        return 2
    from lia_model.errors import LiaInputError
    from lia_model.models import get_model

    try:
        get_model(args.model)
        df = probe(args.seconds, args.model, args.sublayer, args.realloc_every, args.copies, threads)
    except LiaInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(target, index=False)
    print(summary(df))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
