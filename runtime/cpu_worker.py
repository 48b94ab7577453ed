"""The CPU worker: a thread that runs the CPU sublayers, so that the thread launching GPU work never blocks on them.

``LIA_CPU_WORKER``:

- ``inline`` (default): the launching thread runs each CPU sublayer itself (the schedule the kernel tables were
  calibrated under, and the one every committed validation point ran).
- ``thread``: the scheduler (runtime/scheduler.py) hands each CPU sublayer to this worker and goes on; when it
  ends, the next CPU sublayer is handed over before the GPU sublayers waiting on the finished one are issued, so
  issuing GPU work is off the CPU's critical path.

One lock (``RuntimeLock``) keeps the run's bookkeeping (the chunks' values, the copy pools, the records, the KV
store) single-threaded: the launching thread holds it while it issues work and lets go only while it waits for
the worker; the worker holds it while it sets a sublayer up and hands it off, and lets go around the kernel
itself and around its waits for input copies (``unlocked``). So at most one thread touches Python state, and
the kernel runs beside the launches. Handing a job over waits until the worker first lets go of the lock
(``CpuJob.started``): at its kernel, or earlier at a wait for an input copy, after which the rest of its set-up
waits for the lock behind the launching thread's issue loop.

The worker becomes the OpenMP master of the CPU sublayers' team (a team of its own, at its first parallel region,
with the thread count torch was set to), and allocates from glibc's main arena (``cpu_setup.worker_mode``: a malloc
arena of its own page-faulted its temporaries on every call). The launching thread keeps its affinity: moving it to the core kept for
the weight feeder (the first version) made every CPU sublayer 1.2-1.8x slower and the weight stream slower on the
GPU host (runtime/validation/wave2-x/run1/): the launcher then shares the feeder's core, and
tools/probe_cpu_worker.py showed one more way it goes wrong: a thread started while the launcher sits on that core
inherits it, and its whole OpenMP team with it (fc1 of OPT-30B 7.3x slower).

The GIL: a torch op lets go of it while it computes, but the Python between a sublayer's ops needs it back, and
the launching thread, issuing GPU work in Python, keeps it until CPython's switch interval (5 ms by default) runs
out. With the default, prefill CPU sublayers of several minibatches ran 2-3.6x slower on the worker than inline
(OPT-66B out_proj at 256 tokens 40 vs 11 ms, wave2-x/run2 traces); ``tools/probe_gil_switch.py`` shows it on any
machine (a sublayer-like chain of ops 5x slower beside a busy Python thread at 5 ms, 1.07x at 50 us). While any
worker lives the interval is ``SWITCH_INTERVAL_S``; the last one to close puts the old one back.
"""

from __future__ import annotations

import queue
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

from runtime.cpu_setup import worker_mode

__all__ = ["CpuJob", "CpuWorker", "RuntimeLock", "SWITCH_INTERVAL_S", "worker_mode"]
# CPython's GIL switch interval while any worker lives (default 5 ms): see the module docstring
SWITCH_INTERVAL_S = 5e-5
_LIVE = {"workers": 0, "switch_s": 0.0}  # how many workers live, and the interval before the first
_LIVE_LOCK = threading.Lock()


def _worker_started() -> None:
    with _LIVE_LOCK:
        if _LIVE["workers"] == 0:
            _LIVE["switch_s"] = sys.getswitchinterval()
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        _LIVE["workers"] += 1


def _worker_closed() -> None:
    with _LIVE_LOCK:
        _LIVE["workers"] -= 1
        if _LIVE["workers"] == 0:
            sys.setswitchinterval(_LIVE["switch_s"])


class RuntimeLock:
    """The lock over the run's Python state; ``unlocked`` lets go of it where a thread holding it may."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: Optional[int] = None
        self.worker_ident: Optional[int] = None  # the worker thread's: its first let-go of a job is signalled
        self.handoff: Optional[threading.Event] = None  # set when the worker first lets go during its job

    def acquire(self) -> None:
        self._lock.acquire()
        self._owner = threading.get_ident()

    def release(self) -> None:
        self._owner = None
        self._lock.release()

    @property
    def held_here(self) -> bool:
        return self._owner == threading.get_ident()

    @contextmanager
    def unlocked(self) -> Iterator[None]:
        """Let go of the lock for the block when this thread holds it (else a no-op: inline mode)."""
        if not self.held_here:
            yield
            return
        self.release()
        if self.handoff is not None and threading.get_ident() == self.worker_ident:
            self.handoff.set()  # the launching thread may issue now
        try:
            yield
        finally:
            self.acquire()


class CpuJob:
    """One CPU sublayer (or a fused pair) handed to the worker."""

    def __init__(self, fn: Callable[[], Any], tag: Any) -> None:
        import torch

        self.fn = fn
        self.tag = tag  # what the scheduler needs back (its chunk)
        # torch's inference and grad modes are per thread: the job runs under the launching thread's
        self.inference = torch.is_inference_mode_enabled()
        self.grad = torch.is_grad_enabled()
        self.started = threading.Event()  # the worker set the job up and let go of the lock (or finished)
        self.done = threading.Event()
        self.error: Optional[BaseException] = None
        self.result: Any = None  # what ``fn`` returned


class CpuWorker:
    """The thread that runs CPU jobs one at a time, each under the run's lock."""

    def __init__(self, lock: RuntimeLock, threads: int) -> None:
        self.lock = lock
        self._jobs: "queue.SimpleQueue[Optional[CpuJob]]" = queue.SimpleQueue()
        self._threads = threads
        _worker_started()
        self._open = True
        self._thread = threading.Thread(target=self._loop, name="lia-cpu-worker", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        import torch

        torch.set_num_threads(self._threads)  # OpenMP's thread count is per master thread
        self.lock.worker_ident = threading.get_ident()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self.lock.handoff = job.started
            self.lock.acquire()
            try:
                with torch.inference_mode(job.inference), torch.set_grad_enabled(job.grad):
                    job.result = job.fn()
            except BaseException as err:  # handed to the launching thread, which raises it
                job.error = err
            finally:
                self.lock.handoff = None
                self.lock.release()
                job.started.set()
                job.done.set()

    def submit(self, fn: Callable[[], Any], tag: Any) -> CpuJob:
        """Hand ``fn`` to the worker and wait (without the lock) until it has set the job up and first let go of the
        lock (or finished): it needs the lock for that."""
        if not self._open or not self._thread.is_alive():
            raise RuntimeError("the CPU worker thread is closed or has died: build a new Executor")
        job = CpuJob(fn, tag)
        self._jobs.put(job)
        with self.lock.unlocked():
            job.started.wait()
        return job

    def wait(self, job: CpuJob) -> Any:
        """Wait (without the lock) until ``job`` has run; return what it returned, or raise what it raised."""
        with self.lock.unlocked():
            job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def close(self) -> None:
        """Stop the thread (after the job it runs, if any) and, with the last worker, put the GIL switch interval
        back."""
        if not self._open:
            return
        self._open = False
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        _worker_closed()
