"""Why some CPU linears run slower inside the runtime than in the kernel tables (made for the GPU host).

Why: in the fourteenth session's re-runs (runtime/validation/wave2-r3/, steady host) Llama-2-70B fc2 on the CPU at
32 decode rows took 19.3-19.4 ms in situ against 12.3 ms predicted (its table time times the calibrated slowdown
beside the DMA), and OPT-30B qkv at 1 row 7.0-7.2 ms against 4.7 ms; the spread of each was 4-7%, so it is not
the host's drift. The calibrator times ``runtime.kernels`` on weights it allocates itself
(``calibrate.kernel_tables.cold_calls``: anonymous memory, huge pages advised, several copies in turn). The runtime
reads each layer's weights from its page-locked ``HostArena`` (``runtime.weights.ModelWeights``), while the weight
DMA of the GPU sublayers streams beside, after the OpenMP workers waited for a copy.

This probe times the same call of the same kernel, per case, in these modes, interleaved in rounds (each round
runs every mode once over all copies, so a swing of the host's memory speed lands on every mode alike):

- ``table``: the calibrator's calls (``cold_calls``), back to back;
- ``arena``: the runtime's weights (``ModelWeights`` views of a pinned ``HostArena``, one layer per copy);
- ``arena-unpinned``: the same arena not page-locked;
- ``table+dma`` / ``arena+dma``: as ``table`` / ``arena`` while the runtime's ``WeightFeeder`` streams pinned host
  memory to the GPU (CUDA only);
- ``arena+sleep``: as ``arena`` with the process asleep ``--gap-ms`` before each call (the OpenMP workers park).

    python -m runtime.probe_linear_insitu --out DIR [--rounds 5] [--gap-ms 2] [--quick] [--force]

It writes ``linear_insitu_probe.csv`` (one row per case, mode and round) and prints the median per mode with its
ratio to ``table``.
"""

from __future__ import annotations

import math
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import pandas as pd
import torch

# (model, sublayer, rows): the two slow shapes of the re-runs and two controls that ran near their tables
CASES = (
    ("llama-2-70b", "fc2", 32),
    ("opt-30b", "qkv", 1),
    ("opt-30b", "fc1", 1),
    ("llama-2-70b", "qkv", 32),
)
QUICK_CASES = (("opt-30b", "out_proj", 1),)
CSV_NAME = "linear_insitu_probe.csv"


def arena_calls(model_name: str, sub_name: str, rows: int, layers: int, pinned: bool):
    """(arena, calls): the executor's call of ``sub`` on the host weights of ``layers`` layers of the runtime's own
    weight store (a ``HostArena`` filled as a validation run fills it). Release the arena when done."""
    from calibrate.kernel_tables import _sublayer_call
    from lia_model.models import get_model
    from lia_model.sublayers import Sublayer
    from runtime.backend import Backend
    from runtime.hostmem import HostArena
    from runtime.weights import ModelWeights, layer_layout

    model = get_model(model_name)
    sub = Sublayer(sub_name)
    backend = Backend("cuda" if torch.cuda.is_available() else "cpu")
    arena = HostArena(
        backend,
        layer_layout(model).numel * layers,
        pinned=pinned and backend.is_cuda,
        random_fill=True,
        seed=1,
        fan_in=model.hidden_size,
    )
    weights = ModelWeights(model, arena, backend, seed=1)  # layer i is block i of the arena (i < layers)
    return arena, [_sublayer_call(model, sub, weights.host_views(i, sub), rows, "cpu") for i in range(layers)]


@contextmanager
def weight_dma() -> Iterator[None]:
    """The runtime's WeightFeeder streaming 256 MiB jobs of pinned host memory to the GPU until the block ends."""
    from runtime.backend import Backend
    from runtime.streamer import Part, WeightFeeder, split

    piece = 128 << 20  # bf16 elements: 256 MiB
    host = torch.empty(4 * piece, dtype=torch.bfloat16).pin_memory()
    dev = torch.empty(piece, dtype=torch.bfloat16, device="cuda")
    feeder = WeightFeeder(Backend("cuda"))
    stop = threading.Event()

    def loop() -> None:
        i = 0
        while not stop.is_set():
            part = Part(split(dev, host[(i % 4) * piece : (i % 4 + 1) * piece]), lambda start, end: None)
            end = feeder.submit([], [part]).ready()
            while not end.query():
                time.sleep(1e-4)
            i += 1

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    time.sleep(0.05)  # the stream is running before the first timed call
    try:
        yield
    finally:
        stop.set()
        th.join()
        feeder.close()


def timed(calls: list[Callable], gap_s: float = 0.0) -> list[float]:
    out = []
    for call in calls:
        if gap_s:
            time.sleep(gap_s)
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def probe(cases, rounds: int, gap_ms: float) -> pd.DataFrame:
    from calibrate.host import host_info
    from calibrate.kernel_tables import LLC_DEFAULT, cold_calls
    from calibrate.tensors import copies_to_stream
    from lia_model.accounting import linear_shape
    from lia_model.models import get_model
    from lia_model.sublayers import Sublayer

    cuda = torch.cuda.is_available()
    rows_out = []
    for name, sub, rows in cases:
        model = get_model(name)
        k, n = linear_shape(model, Sublayer(sub))
        copies = copies_to_stream(2 * k * n, host_info().llc_bytes or LLC_DEFAULT, cap=16)  # as the tables do
        table, _, huge = cold_calls(model, (sub, rows, 0), copies=copies)
        arena, in_arena = arena_calls(name, sub, rows, max(copies, 2), pinned=True)
        loose, unpinned = arena_calls(name, sub, rows, max(copies, 2), pinned=False)
        modes: dict[str, Callable[[], list[float]]] = {
            "table": lambda: timed(table),
            "arena": lambda: timed(in_arena),
            "arena-unpinned": lambda: timed(unpinned),
            "arena+sleep": lambda: timed(in_arena, gap_ms / 1e3),
        }
        timed(table + in_arena + unpinned)  # first touch, untimed
        for r in range(rounds):
            results = {mode: fn() for mode, fn in modes.items()}
            if cuda:
                with weight_dma():
                    results["table+dma"] = timed(table)
                    results["arena+dma"] = timed(in_arena)
            for mode, ts in results.items():
                rows_out.append(
                    {
                        "model": name,
                        "sublayer": sub,
                        "rows": rows,
                        "k": k,
                        "n": n,
                        "mode": mode,
                        "round": r,
                        "median_s": statistics.median(ts),
                        "calls": len(ts),
                        "copies": len(ts),
                        "weights_gbps": 2.0 * k * n / statistics.median(ts) / 1e9,
                        "table_huge_page_fraction": huge,
                    }
                )
        arena.release()
        loose.release()
        table = in_arena = unpinned = arena = loose = None
    return pd.DataFrame(rows_out)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Median over rounds per case and mode, and its ratio to the same case's ``table``."""
    med = df.groupby(["model", "sublayer", "rows", "mode"], sort=False)["median_s"].median().reset_index()
    table = med[med["mode"] == "table"].set_index(["model", "sublayer", "rows"])["median_s"]
    med["vs_table"] = [
        s / table.get((m, sub, r), math.nan)
        for m, sub, r, s in zip(med["model"], med["sublayer"], med["rows"], med["median_s"])
    ]
    return med


def main(argv: list[str] | None = None) -> int:
    from runtime.probe_io import output_refused, probe_parser, save

    ap = probe_parser(__doc__, "One small shape (a test run).")
    ap.add_argument("--rounds", type=int, default=5, help="Rounds of every mode (interleaved).")
    ap.add_argument("--gap-ms", type=float, default=2.0, help="Idle time before each call in arena+sleep (ms).")
    args = ap.parse_args(argv)
    if output_refused(args.out / CSV_NAME, args.force):
        return 2
    if not (args.gap_ms >= 0 and math.isfinite(args.gap_ms)) or args.rounds < 1:
        print("error: --gap-ms must be a finite number >= 0 and --rounds >= 1", file=sys.stderr)
        return 2
    from runtime import cpu_setup

    setup = cpu_setup.apply().describe()
    df = probe(QUICK_CASES if args.quick else CASES, args.rounds, args.gap_ms)
    df = save(df, setup, args.out / CSV_NAME)
    print(f"{'case':28s} {'mode':15s} {'median ms':>9s} {'x table':>8s}")
    for _, r in summary(df).iterrows():
        case = f"{r['model']} {r['sublayer']} x{r['rows']}"
        print(f"{case:28s} {r['mode']:15s} {r['median_s'] * 1e3:9.3f} {r['vs_table']:8.2f}")
    print(f"wrote {args.out / CSV_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
