"""How long a layer's small host-to-device copies wait while the weight feeder streams (GPU host only).

Why: the wave-2 traces of the fifth session (runtime/validation/wave2-b3/traces.tgz) show the copies on a
mixed plan's critical path finishing only when the weight job streaming beside them ends: OPT-30B's cached-K
fetch (28.9 MB, 0.53 ms alone) took 3.9-4.4 ms and ended 0.52 ms after each 514 MB weight job; Llama-2-70B's
1.1 MB fetch and its Q copy waited up to 12 ms, to the end of a 940 MB job. The feeder keeps only two 32 MiB
pieces in flight (runtime/streamer.py), so a first-come copy engine would make them wait about 1.2 ms.

This probe times each kind of copy the executor issues on its activation stream (``backend.h2d``) -- a fresh
GPU tensor plus a 1-D copy (``Mover.move``), a 1-D copy into a preallocated tensor, and pitched 2-D copies
of a host KV cache slice (``Backend.copy_2d``) -- first with the copy engine idle, then while the feeder
streams a long weight job, and once more with the copy issued on the feeder's own stream instead. Each
latency is from issue (host clock) to the copy's end event. It writes ``h2d_probe.csv`` and prints a table.

    python -m runtime.probe_h2d --out DIR [--repeats 12]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from runtime.backend import Backend
from runtime.streamer import Part, WeightFeeder, split

MiB = 2**20


def _cases(be: Backend) -> dict[str, tuple[callable, int]]:
    """name -> (issue(stream) -> end event, bytes). Host sides are pinned, as the runtime's are."""
    act_host = torch.randn(64 * 1024 // 2, dtype=torch.bfloat16).pin_memory()  # 64 KiB: a decode Q / hidden
    act_dev = torch.empty_like(act_host, device="cuda")
    big_host = torch.randn(29 * MiB // 2, dtype=torch.bfloat16).pin_memory()
    big_dev = torch.empty_like(big_host, device="cuda")
    # Host KV caches [b, kv, S_max, d] and the slices [:, :, :s] that GPU attention fetches.
    small_kv = torch.randn(1, 8, 4096, 128, dtype=torch.bfloat16).pin_memory()  # Llama-2-70B, s = 512: 1 MiB
    small_dst = torch.empty(1, 8, 4096, 128, dtype=torch.bfloat16, device="cuda")
    large_kv = torch.randn(1, 56, 4096, 128, dtype=torch.bfloat16).pin_memory()  # OPT-30B, s = 2016: 29 MiB
    large_dst = torch.empty(1, 56, 4096, 128, dtype=torch.bfloat16, device="cuda")

    def fresh(stream):
        with be.on_stream(stream):
            dst = torch.empty_like(act_host, device="cuda")
        be.copy(dst, act_host, stream)
        return be.event(stream)

    def into(dst, src):
        def issue(stream):
            be.copy(dst, src, stream)
            return be.event(stream)

        return issue

    def pitched(dst, src, s):
        def issue(stream):
            be.copy_2d(dst[:, :, :s], src[:, :, :s], stream)
            return be.event(stream)

        return issue

    return {
        "act 64 KiB, new GPU tensor": (fresh, act_host.nbytes),
        "act 64 KiB, preallocated": (into(act_dev, act_host), act_host.nbytes),
        "contiguous 29 MiB": (into(big_dev, big_host), big_host.nbytes),
        "KV 2-D 8 x 512 x 128 (1 MiB)": (pitched(small_dst, small_kv, 512), 8 * 512 * 128 * 2),
        "KV 2-D 56 x 2016 x 128 (29 MiB)": (pitched(large_dst, large_kv, 2016), 56 * 2016 * 128 * 2),
    }


def probe(repeats: int, stream_gib: float) -> pd.DataFrame:
    be = Backend("cuda")
    feeder = WeightFeeder(be)
    host = torch.empty(int(stream_gib * 2**30) // 2, dtype=torch.bfloat16).pin_memory()
    dev = torch.empty(256 * MiB // 2, dtype=torch.bfloat16, device="cuda")
    parts = [
        Part(split(dev, host[i : i + dev.numel()]), lambda start, end: None)
        for i in range(0, host.numel() - dev.numel() + 1, dev.numel())
    ]
    rows = []
    cases = _cases(be)
    torch.cuda.synchronize()
    for name, (issue, nbytes) in cases.items():
        for mode in ("idle", "beside feeder", "on the feeder's stream"):
            for rep in range(repeats):
                job = None
                if mode != "idle":
                    job = feeder.submit([], parts)
                    time.sleep(0.004)  # the feeder has pieces in flight
                stream = be.weights if mode == "on the feeder's stream" else be.h2d
                t0 = time.perf_counter()
                end = issue(stream)
                end.synchronize()
                latency = time.perf_counter() - t0
                job_left = None
                if job is not None:
                    job_end = job.ready()
                    job_end.synchronize()
                    job_left = time.perf_counter() - t0  # from the copy's issue to the weight job's end
                rows.append(
                    {
                        "case": name,
                        "mode": mode,
                        "repeat": rep,
                        "bytes": nbytes,
                        "latency_s": latency,
                        "weight_job_left_s": job_left,
                    }
                )
        torch.cuda.synchronize()
    feeder.close()
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--stream-gib", type=float, default=2.0, help="Weight job streamed beside each copy (GiB).")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: CUDA: this probe needs an NVIDIA GPU -- run it on the GPU host", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    df = probe(args.repeats, args.stream_gib)
    df.insert(0, "host", f"{torch.cuda.get_device_name()} torch {torch.__version__}")
    df.to_csv(args.out / "h2d_probe.csv", index=False)
    print(f"{'case':34s} {'mode':24s} {'median ms':>9s} {'max ms':>8s} {'job left ms':>11s}")
    for (case, mode), g in df.groupby(["case", "mode"], sort=False):
        left = g["weight_job_left_s"].dropna()
        print(
            f"{case:34s} {mode:24s} {statistics.median(g['latency_s']) * 1e3:9.3f} {g['latency_s'].max() * 1e3:8.3f} "
            f"{(statistics.median(left) * 1e3 if len(left) else float('nan')):11.1f}"
        )
    print(f"wrote {args.out / 'h2d_probe.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
