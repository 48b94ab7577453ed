"""One CPU setup for the runtime and the calibrator: threads, affinity and the allocator.

Both the runtime and the calibrator call ``apply()`` before their first CPU kernel, so the kernels the
calibrator times run under exactly the conditions the runtime runs them in, and every CSV row records the
setup (``describe()``).

- Threads: one per physical core of the process's affinity (hyper-threads share a core's matrix unit and
  its load ports; two threads on one core make long GEMVs slower and noisier).
- Affinity: ``OMP_PROC_BIND=close`` and ``OMP_PLACES=cores`` when the OpenMP runtime has not started yet
  (it reads them once, at its first parallel region); ``bind_env()`` gives them to a child process.
- Allocator: glibc serves large blocks with fresh ``mmap`` calls and returns them on free, so every large
  temporary (attention scores, a prefill chunk's activations) page-faults on every call. ``mallopt`` turns
  that off (``M_MMAP_MAX = 0``: large blocks come from the heap; ``M_TRIM_THRESHOLD`` and ``M_TOP_PAD``
  large: freed memory stays mapped and is reused). jemalloc or tcmalloc preloaded by the user are detected
  and left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass
from typing import Optional

# The CPUs this process may use, as first imported: once OpenMP binds the launching thread to one core
# (OMP_PROC_BIND=close), threads it starts inherit that single core unless they widen their mask.
PROCESS_CPUS: frozenset[int] = frozenset(os.sched_getaffinity(0))

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
KEEP_BYTES = 1 << 30


@dataclass(frozen=True)
class CpuSetup:
    threads: int
    physical_cores: int
    bind: str  # "close/cores", "inherited (...)", or "none"
    allocator: str  # "glibc mallopt(no mmap, no trim)", "jemalloc (preloaded)", ...

    def describe(self) -> str:
        return f"threads={self.threads} bind={self.bind} alloc={self.allocator}"


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (calibrate.host's count: SMT siblings once)."""
    from calibrate.host import physical_cores as count

    cpus = tuple(sorted(os.sched_getaffinity(0)))
    return max(1, count(cpus))


def float_this_thread() -> str:
    """Let the calling helper thread run on any of the process's CPUs (not only the core its creator, the
    OpenMP master, is bound to), so that it never time-shares that core with the CPU sublayers' master
    thread. Returns what was done, for the CSV's setup string."""
    try:
        # every CPU of the machine: the kernel keeps those the process's cpuset allows
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    except (OSError, ValueError) as err:
        return f"kept inherited affinity ({err})"
    return f"any of {len(os.sched_getaffinity(0))} CPUs"


def bind_env(threads: int) -> dict[str, str]:
    """Environment for a child process that should run with this setup."""
    return {"OMP_NUM_THREADS": str(threads), "OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}


def _preloaded_allocator() -> Optional[str]:
    pre = os.environ.get("LD_PRELOAD", "")
    for name in ("jemalloc", "tcmalloc", "mimalloc"):
        if name in pre:
            return f"{name} (preloaded)"
    return None


def _mallopt() -> str:
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return "default (no libc found for mallopt)"
    try:
        libc = ctypes.CDLL(libc_name)
        ok = all(
            libc.mallopt(opt, value) == 1
            for opt, value in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, KEEP_BYTES), (M_TOP_PAD, 64 << 20))
        )
    except (OSError, AttributeError):
        return "default (mallopt unavailable)"
    return "glibc mallopt(mmap off, trim 1 GiB)" if ok else "default (mallopt refused)"


_APPLIED: Optional[CpuSetup] = None


def apply(threads: Optional[int] = None) -> CpuSetup:
    """Set threads, affinity (if still possible) and the allocator once per process; returns the setup."""
    global _APPLIED
    import torch

    cores = physical_cores()
    n = threads or int(os.environ.get("LIA_THREADS", "0") or 0) or cores
    if _APPLIED is not None and _APPLIED.threads == n:
        return _APPLIED
    if "OMP_PROC_BIND" in os.environ:
        bind = f"inherited ({os.environ['OMP_PROC_BIND']}/{os.environ.get('OMP_PLACES', '-')})"
    else:
        # Only effective if OpenMP has not started its thread pool yet (true before the first parallel op).
        os.environ["OMP_PROC_BIND"], os.environ["OMP_PLACES"] = "close", "cores"
        bind = "close/cores (set in-process)"
    torch.set_num_threads(n)
    allocator = _preloaded_allocator() or _mallopt()
    _APPLIED = CpuSetup(threads=torch.get_num_threads(), physical_cores=cores, bind=bind, allocator=allocator)
    return _APPLIED


def current() -> Optional[CpuSetup]:
    return _APPLIED
