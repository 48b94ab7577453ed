"""Probe: a worker thread's torch ops beside a busy Python thread, under CPython's default GIL switch interval
(5 ms) and the CPU worker's (50 us, runtime/cpu_worker.py SWITCH_INTERVAL_S). No GPU needed.

    python tools/probe_gil_switch.py

A torch op releases the GIL while it computes, but the Python between a sublayer's ops needs it back; a thread that
holds it (the launching thread issuing GPU work) keeps it until the interval runs out, at every op.
"""

import statistics
import sys
import threading
import time

import torch

torch.set_num_threads(1)
a = torch.randn(256, 1024)
w = torch.randn(1024, 1024)


def op():  # several small torch ops, like a sublayer
    x = a @ w
    x = x + 1
    x = torch.relu(x)
    x = x @ w
    return x + a[:, :1]


for sw in (5e-3, 5e-5):
    sys.setswitchinterval(sw)
    stop = False

    def busy():
        n = 0
        while not stop:
            n += 1

    res = []

    def worker():
        for _ in range(30):
            t = time.perf_counter()
            op()
            res.append(time.perf_counter() - t)

    worker()
    base = statistics.median(res)
    res.clear()
    b = threading.Thread(target=busy)
    b.start()
    w_ = threading.Thread(target=worker)
    w_.start()
    w_.join()
    stop = True
    b.join()
    print(
        f"switch {sw * 1e6:.0f} us: op alone {base * 1e3:.2f} ms, beside a busy Python thread {statistics.median(res) * 1e3:.2f} ms"
    )
