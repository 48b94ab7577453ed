"""Probe: page faults and time of one CPU sublayer-sized op (prefill SDPA attention) on the launching thread and on a
worker thread, under the runtime's CPU setup (runtime/cpu_setup.py). No GPU needed.

    python tools/probe_worker_faults.py                          # LIA_CPU_WORKER unset: inline setup
    LIA_CPU_WORKER=thread python tools/probe_worker_faults.py    # the worker's setup (one malloc arena)

Prints one line per thread: median ms and minor page faults per call (getrusage of the process, the other threads
idle). A thread other than the main one allocates from a glibc arena of its own unless the setup limits glibc to one.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import threading
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=72)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args(argv)

    from runtime import cpu_setup

    setup = cpu_setup.apply()
    import torch
    import torch.nn.functional as F

    shape = (args.batch, args.heads, args.tokens, 128)
    q, k, v = (torch.randn(shape, dtype=torch.bfloat16) for _ in range(3))

    def op() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def measure() -> tuple[float, float]:
        op()
        times, faults = [], []
        for _ in range(args.calls):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            op()
            times.append(time.perf_counter() - t0)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        return statistics.median(times) * 1e3, statistics.median(faults)

    print(f"setup: {setup.describe()}")
    with torch.inference_mode():
        ms, faults = measure()
    print(f"main   {ms:8.1f} ms  {faults:8.0f} faults/call")
    box: dict = {}

    def worker() -> None:
        torch.set_num_threads(setup.threads)
        with torch.inference_mode():
            box["r"] = measure()

    th = threading.Thread(target=worker, name="probe-worker")
    th.start()
    th.join()
    print(f"worker {box['r'][0]:8.1f} ms  {box['r'][1]:8.0f} faults/call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
