"""One CPU setup for the runtime and the calibrator: threads, affinity and the allocator.

Both the runtime and the calibrator call ``apply()`` before their first CPU kernel, so the kernels the
calibrator times run under exactly the conditions the runtime runs them in, and every CSV row records the
setup (``describe()``).

- Threads: one per physical core of the process's affinity (hyper-threads share a core's matrix unit and
  its load ports; two threads on one core make long GEMVs slower and noisier), less one core kept for the
  weight feeder when a CUDA device is present (``LIA_FEEDER_CORE``: ``auto``, ``1`` or ``0``).
- The feeder's core (measured on the GPU host, 2026-11-30, runtime/validation/wave2-b2/): a feeder that may
  run on any CPU waits in the driver after every 32 MiB piece, and while the CPU sublayers keep every core
  busy it is woken late, the copy queue drains and weight streaming fell from 99% to 90% of the calibrated
  H2D bandwidth (CPU attention beside the DMA took 3-5x its calibrated time as the woken feeder preempted an
  OpenMP thread). Plans with CPU attention beside streamed GPU linears measured 5-19% slower than with the
  earlier spinning feeder. With a core of its own the feeder is woken at once and OpenMP is never preempted;
  the CPU sublayers run on one core fewer, which the calibrator measures too (same ``apply()``).
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
import threading
from dataclasses import dataclass
from typing import Optional

# The CPUs this process may use, as first imported: once OpenMP binds the launching thread to one core
# (OMP_PROC_BIND=close), threads it starts inherit that single core unless they widen their mask.
PROCESS_CPUS: frozenset[int] = frozenset(os.sched_getaffinity(0))

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
M_ARENA_MAX = -8
KEEP_BYTES = 1 << 30


@dataclass(frozen=True)
class CpuSetup:
    threads: int
    physical_cores: int
    bind: str  # "close/cores", "inherited (...)", or "none"
    allocator: str  # "glibc mallopt(no mmap, no trim)", "jemalloc (preloaded)", ...
    feeder_cpus: tuple[int, ...] = ()  # the core kept for the weight feeder; () = none kept

    def describe(self) -> str:
        from runtime.hostmem import hugepages_wanted, thp_mode

        feeder = f" feeder=cpu{','.join(map(str, self.feeder_cpus))}" if self.feeder_cpus else ""
        pages = f"weights={'hugepage-advised' if hugepages_wanted() else '4k'}/thp-{thp_mode()}"
        # the GQA decode kernel (runtime.kernels.gqa_decode_variant) is not the setup: the rows that ran it record it
        return f"threads={self.threads} bind={self.bind}{feeder} alloc={self.allocator} {pages}"


def allowed_cpus() -> frozenset[int]:
    """Every CPU the process's cpuset allows, asked from a fresh thread: the calling thread may already be
    bound to one core (OpenMP binds its master at the first parallel region), and so may PROCESS_CPUS if
    this module was imported after that."""
    found: list[frozenset[int]] = []

    def probe() -> None:
        try:
            os.sched_setaffinity(0, range(os.cpu_count() or 1))  # the kernel keeps the cpuset's CPUs
            found.append(frozenset(os.sched_getaffinity(0)))
        except (OSError, ValueError):
            found.append(PROCESS_CPUS)

    t = threading.Thread(target=probe, name="lia-cpu-probe")
    t.start()
    t.join()
    return found[0] if found and found[0] else PROCESS_CPUS


def _core_groups() -> list[tuple[int, ...]]:
    from calibrate.host import core_groups

    cpus = tuple(sorted(allowed_cpus()))
    return core_groups(cpus) or [cpus]


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (calibrate.host's count: SMT siblings once)."""
    return len(_core_groups())


def keep_feeder_core(cores: int, cuda: bool, setting: Optional[str] = None) -> bool:
    """Whether one physical core is kept out of OpenMP for the weight feeder.

    ``LIA_FEEDER_CORE``: ``auto`` (default) keeps one when a CUDA device is present (the feeder only runs
    there) and the process has at least 4 cores; ``1`` keeps one whenever there are 2 cores or more; ``0``
    never (the feeder then floats over every CPU)."""
    value = (setting if setting is not None else os.environ.get("LIA_FEEDER_CORE", "auto")).strip().lower()
    if value not in ("auto", "1", "0"):
        from lia_model.errors import LiaInputError

        raise LiaInputError("LIA_FEEDER_CORE", f"'{value}' is not auto, 1 or 0", "unset it or give auto, 1 or 0")
    if value == "0":
        return False
    if value == "1":
        return cores >= 2
    return cuda and cores >= 4


def place_helper_thread() -> str:
    """Put the calling helper thread (the weight feeder) on the core ``apply()`` kept for it, or, when none
    was kept, let it run on any of the process's CPUs (never only on the core its creator, the OpenMP
    master, is bound to: it would time-share that core with every CPU sublayer). Returns what was done."""
    cpus = _APPLIED.feeder_cpus if _APPLIED is not None else ()
    try:
        if cpus:
            os.sched_setaffinity(0, cpus)
            return f"own core (cpu {','.join(map(str, cpus))})"
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


def _mallopt(one_arena: bool = False) -> str:
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return "default (no libc found for mallopt)"
    settings = [(M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, KEEP_BYTES), (M_TOP_PAD, 64 << 20)]
    if one_arena:  # every thread allocates from the main arena (see worker_mode)
        settings.append((M_ARENA_MAX, 1))
    try:
        libc = ctypes.CDLL(libc_name)
        ok = all(libc.mallopt(opt, value) == 1 for opt, value in settings)
    except (OSError, AttributeError):
        return "default (mallopt unavailable)"
    if not ok:
        return "default (mallopt refused)"
    return "glibc mallopt(mmap off, trim 1 GiB" + (", one arena)" if one_arena else ")")


def worker_mode(setting: Optional[str] = None) -> str:
    """``LIA_CPU_WORKER``: ``inline`` (default: the launching thread runs the CPU sublayers) or ``thread`` (a worker
    thread runs them, runtime/cpu_worker.py).

    With ``thread``, ``apply()`` also limits glibc to one malloc arena: a thread other than the main one allocates
    from an arena of its own, whose heaps glibc gives back when they empty, so the worker's large temporaries
    page-faulted on every call again (prefill SDPA attention of B=8, 72 heads, 512 tokens, on the 2-core VM: 18,721
    minor faults a call on the worker, 0 on the main thread; 0 on the worker with one arena, in 8 of 8 runs;
    tools/probe_worker_faults.py). Not all of it: at B=4 one arena halved them (9,362 to 4,608 a call), and at B=2 x
    32 heads 8 MB were faulted a call in 1 of 8 runs; glibc's own heaps are not the only source, and the rest is not
    understood. The inline runtime and the calibrator keep their setup (its description is the kernel tables' key).
    The limit is set first thing in ``apply()``, before any thread it starts can make an arena of its own."""
    value = (setting if setting is not None else os.environ.get("LIA_CPU_WORKER", "inline")).strip().lower()
    if value not in ("inline", "thread"):
        from lia_model.errors import LiaInputError

        raise LiaInputError("LIA_CPU_WORKER", f"'{value}' is not inline or thread", "unset it or give inline or thread")
    return value


_APPLIED: Optional[CpuSetup] = None


def apply(threads: Optional[int] = None) -> CpuSetup:
    """Set threads, affinity (if still possible) and the allocator once per process; returns the setup."""
    global _APPLIED
    one_arena = worker_mode() == "thread"
    preloaded = _preloaded_allocator()
    # thread mode: glibc's one-arena limit first, before any thread this module starts (allowed_cpus' probe) can
    # make an arena of its own
    early = _mallopt(one_arena=True) if one_arena and not preloaded else None
    import torch

    groups = _core_groups()
    keep = keep_feeder_core(len(groups), torch.cuda.is_available())
    n = threads or int(os.environ.get("LIA_THREADS", "0") or 0) or len(groups) - int(keep)
    if _APPLIED is not None and _APPLIED.threads == n:
        return _APPLIED
    # The feeder's core: the last physical core, when OpenMP's threads leave it free.
    feeder_cpus = groups[-1] if keep and n < len(groups) else ()
    if "OMP_PROC_BIND" in os.environ:
        bind = f"inherited ({os.environ['OMP_PROC_BIND']}/{os.environ.get('OMP_PLACES', '-')})"
    else:
        # Only effective if OpenMP has not started its thread pool yet (true before the first parallel op).
        os.environ["OMP_PROC_BIND"] = "close"
        if feeder_cpus:  # OpenMP's places leave the feeder's core out
            os.environ["OMP_PLACES"] = ",".join("{" + ",".join(map(str, g)) + "}" for g in groups[:-1])
        else:
            os.environ["OMP_PLACES"] = "cores"
        bind = "close/cores (set in-process)"
    torch.set_num_threads(n)
    allocator = preloaded or early or _mallopt()
    _APPLIED = CpuSetup(
        threads=torch.get_num_threads(),
        physical_cores=len(groups),
        bind=bind,
        allocator=allocator,
        feeder_cpus=tuple(feeder_cpus),
    )
    return _APPLIED


def binding_in_effect() -> str:
    """Whether OpenMP's binding holds for the calling thread, read after a parallel region: ``bound to CPU(s) ...``
    or ``not in effect (...)``. ``apply()`` asks for it in-process, but the OpenMP runtime reads its environment when
    torch loads it, so it holds only when ``OMP_PROC_BIND`` / ``OMP_PLACES`` were set before Python started
    (runtime/validation/cpu-worker-probe/: every thread on CPUs 0-15 on the GPU host). Recorded beside the setup in
    every validation row; the setup string itself is the kernel tables' key and stays as it is."""
    import torch

    torch.ones(1 << 20).sum()  # a parallel region: the OpenMP runtime binds its master now if it binds at all
    cpus = sorted(os.sched_getaffinity(0))
    allowed = allowed_cpus()
    if len(cpus) < len(allowed):
        return f"bound to CPU(s) {','.join(map(str, cpus))}"
    return f"not in effect (the launching thread may run on all {len(cpus)} CPUs)"


def current() -> Optional[CpuSetup]:
    return _APPLIED
