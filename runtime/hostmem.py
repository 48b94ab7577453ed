"""Host memory for weights and KV caches: arenas allocated and page-locked once, carved per model.

Creating 60 GB of random bf16 weights is the slow part of a validation run, so it happens once per
process: one weight arena is filled with seeded random values and every model's layers are views into it
(layer i of a model takes block i; when a model needs more blocks than the arena holds, layer i reuses
block i mod k, which the run records). Weights are uniform in [-a, a] with a = sqrt(3 / fan_in), i.e. unit
variance outputs for a unit-variance input of width fan_in (the hidden size of the model the arena is made
for; attention then has O(1) scores, so a wrong K or V changes the logits visibly); norms are overwritten
with their own values per model (see weights.py).

Fill: with CUDA, the values are drawn on the GPU (seeded) and copied into the pinned arena at PCIe speed;
without CUDA, CPU threads draw disjoint chunks with their own seeded generators. Page-locking uses
cudaHostRegister on the already-touched memory, so the arena is not rounded up to a power of two as the
caching host allocator would do.

CXL: a NUMA node with memory and no CPUs is a CXL (or other memory-only) expander. Arenas for a CXL tier
are bound to such a node through libnuma; on a machine without one the run is refused with a message
that names the missing resource.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import mmap
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from lia_model.errors import LiaInputError
from lia_model.plan import HostTier
from runtime.backend import Backend, cpu_threads

DEFAULT_FAN_IN = 8192
_FILL_CHUNK_ELEMS = 64 * 2**20  # 128 MiB of bf16 per fill step


@dataclass(frozen=True)
class NumaNode:
    node: int
    cpus: str
    mem_total_gib: float

    @property
    def memory_only(self) -> bool:
        return self.cpus.strip() == "" and self.mem_total_gib > 0


def numa_nodes(sysfs: Path = Path("/sys/devices/system/node")) -> list[NumaNode]:
    """The machine's NUMA nodes from sysfs (empty list when sysfs has none, e.g. in some containers)."""
    nodes = []
    for path in sorted(sysfs.glob("node[0-9]*")):
        try:
            cpus = (path / "cpulist").read_text().strip()
            total_kib = 0.0
            for line in (path / "meminfo").read_text().splitlines():
                if "MemTotal" in line:
                    total_kib = float(line.split()[-2])
            nodes.append(NumaNode(int(path.name[4:]), cpus, total_kib / 2**20))
        except (OSError, ValueError, IndexError):
            continue
    return nodes


def cxl_node(sysfs: Path = Path("/sys/devices/system/node")) -> Optional[int]:
    """The first memory-only NUMA node (a CXL expander), or None."""
    for node in numa_nodes(sysfs):
        if node.memory_only:
            return node.node
    return None


def require_tier(tier: HostTier, what: str, sysfs: Path = Path("/sys/devices/system/node")) -> Optional[int]:
    """The NUMA node to place ``what`` on for ``tier`` (None = default DDR); refuse a CXL tier without CXL."""
    if tier == HostTier.DDR:
        return None
    node = cxl_node(sysfs)
    if node is None:
        found = (
            ", ".join(f"node{n.node} (cpus {n.cpus or 'none'}, {n.mem_total_gib:.0f} GiB)" for n in numa_nodes(sysfs))
            or "no NUMA information"
        )
        raise LiaInputError(
            "CXL memory",
            f"the plan puts the {what} in CXL but this machine has no memory-only NUMA node (found: {found})",
            "run on a host with a CXL expander, or use a plan with weight_tier/kv_tier ddr",
        )
    return node


def _numa_alloc(nbytes: int, node: int) -> torch.Tensor:
    """Host memory bound to one NUMA node through libnuma (kept alive by the returned tensor's buffer)."""
    name = ctypes.util.find_library("numa")
    if name is None:
        raise LiaInputError(
            "CXL memory",
            f"NUMA node {node} exists but libnuma is not installed",
            "install libnuma (apt-get install libnuma1)",
        )
    lib = ctypes.CDLL(name)
    lib.numa_alloc_onnode.restype = ctypes.c_void_p
    lib.numa_alloc_onnode.argtypes = [ctypes.c_size_t, ctypes.c_int]
    ptr = lib.numa_alloc_onnode(nbytes, node)
    if not ptr:
        raise LiaInputError(
            "CXL memory",
            f"could not allocate {nbytes / 1e9:.1f} GB on NUMA node {node}",
            "use a smaller model or batch, or weight_tier/kv_tier ddr",
        )
    buf = (ctypes.c_uint8 * nbytes).from_address(ptr)
    return torch.frombuffer(buf, dtype=torch.uint8)


@dataclass
class ArenaStats:
    bytes: int
    touch_s: float = 0.0
    pin_s: float = 0.0
    fill_s: float = 0.0
    pinned: bool = False
    numa_node: Optional[int] = None
    notes: list[str] = field(default_factory=list)


class HostArena:
    """One flat host buffer of the backend's dtype (bf16), optionally page-locked and randomly filled, carved into views."""

    def __init__(
        self,
        backend: Backend,
        numel: int,
        *,
        pinned: bool,
        random_fill: bool,
        seed: int = 0,
        numa_node: Optional[int] = None,
        fan_in: int = DEFAULT_FAN_IN,
    ) -> None:
        self.backend = backend
        self.numel = int(numel)
        self.bound = math.sqrt(3.0 / fan_in)
        self.dtype = backend.dtype
        nbytes = self.numel * self.dtype.itemsize
        self.stats = ArenaStats(bytes=nbytes, numa_node=numa_node)
        t0 = time.perf_counter()
        if numa_node is None:
            self.data = _anonymous(nbytes).view(self.dtype)
        else:
            self.data = _numa_alloc(nbytes, numa_node).view(self.dtype)
        # One registration for the whole (page-aligned) mapping: a copy whose source spans two separately
        # registered ranges fails with "invalid argument" (seen on the GPU host, torch 2.11 / CUDA 13).
        base, total = self.data.data_ptr(), nbytes
        self._ranges = [(base, total)] if total else []
        # Touch every page (zero_ runs on all intra-op threads; the OS backs memory lazily).
        self.data.zero_()
        self.stats.touch_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if pinned and backend.is_cuda:
            done = []
            for ptr, size in self._ranges:
                if not backend.register_host(ptr, size):
                    break
                done.append((ptr, size))
            self.stats.pinned = len(done) == len(self._ranges)
            if not self.stats.pinned:
                for ptr, _ in done:
                    backend.unregister_host(ptr)
                self.stats.notes.append("cudaHostRegister failed: this arena is pageable")
        self.stats.pin_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.seed = seed
        self.holds_quantised = False  # runtime/weights.py: a quantised model wrote int8/fp8 bytes over the fill
        if random_fill:
            self._fill(seed)
        self.stats.fill_s = time.perf_counter() - t0

    @property
    def pinned(self) -> bool:
        return self.stats.pinned

    def _fill(self, seed: int) -> None:
        a = self.bound
        if self.backend.is_cuda:
            gen = torch.Generator(device=self.backend.gpu_device).manual_seed(seed)
            scratch = torch.empty(min(_FILL_CHUNK_ELEMS, self.numel), dtype=self.dtype, device=self.backend.gpu_device)
            for lo, hi in _chunks(self.numel, _FILL_CHUNK_ELEMS):
                part = scratch[: hi - lo]
                part.uniform_(-a, a, generator=gen)
                self.data[lo:hi].copy_(part)
            del scratch
            torch.cuda.empty_cache()
        else:

            def fill(index_lo_hi: tuple[int, int, int]) -> None:
                index, lo, hi = index_lo_hi
                gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
                self.data[lo:hi].uniform_(-a, a, generator=gen)

            work = [(i, lo, hi) for i, (lo, hi) in enumerate(_chunks(self.numel, _FILL_CHUNK_ELEMS // 16))]
            with ThreadPoolExecutor(max_workers=cpu_threads()) as pool:
                list(pool.map(fill, work))

    def refill(self) -> None:
        """The random fill again (the seed it was made with), over whatever was written since."""
        self._fill(self.seed)
        self.holds_quantised = False

    def set_pinned(self, pinned: bool) -> None:
        """Page-lock or unlock the whole arena in place (a plan with pinned_weights=False streams from
        pageable memory; unlocking avoids a second 60 GB copy)."""
        if not self.backend.is_cuda or pinned == self.stats.pinned:
            return
        t0 = time.perf_counter()
        for ptr, size in self._ranges:
            if pinned:
                if not self.backend.register_host(ptr, size):
                    raise RuntimeError("cudaHostRegister failed while re-pinning the weight arena")
            else:
                self.backend.unregister_host(ptr)
        self.stats.pinned = pinned
        self.stats.notes.append(f"{'pinned' if pinned else 'unpinned'} in {time.perf_counter() - t0:.1f} s")

    def view(self, offset: int, numel: int) -> torch.Tensor:
        if offset + numel > self.numel:
            raise ValueError(f"arena view [{offset}, {offset + numel}) past its end {self.numel}")
        return self.data[offset : offset + numel]

    def zero(self, offset: int, numel: int) -> None:
        self.data[offset : offset + numel].zero_()

    def release(self) -> None:
        if self.stats.pinned:
            for ptr, _ in self._ranges:
                self.backend.unregister_host(ptr)
            self.stats.pinned = False
        self.data = torch.empty(0, dtype=self.dtype)

    def __del__(self) -> None:
        # A mapping freed while still registered leaves its address range registered: the next arena
        # mapped there fails with "part or all of the requested memory range is already mapped".
        try:
            self.release()
        except Exception:  # interpreter shutdown: CUDA may already be gone
            pass


THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode(path: Path = THP_ENABLED) -> str:
    """The kernel's transparent-huge-page mode: 'always', 'madvise', 'never', or 'unknown'."""
    try:
        text = path.read_text()
    except OSError:
        return "unknown"
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else "unknown"


def hugepages_wanted() -> bool:
    """Advise 2 MiB pages for host weights and KV caches unless LIA_HUGEPAGES=0."""
    return os.environ.get("LIA_HUGEPAGES", "1") != "0"


def _anonymous(nbytes: int) -> torch.Tensor:
    """Private anonymous memory (page-aligned, so it can be page-locked in place), as a uint8 tensor.

    Huge pages are advised (MADV_HUGEPAGE; a no-op when the kernel's THP mode is 'never', already the
    default when it is 'always'): a CPU GEMV streams hundreds of MB of weights, and with 4 KiB pages every
    page is a TLB miss and a boundary the hardware prefetcher does not cross. The calibrator's kernel tables
    hold their weights in this same memory (calibrate/kernel_tables.py), so the times they measure are the
    runtime's."""
    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hugepages_wanted() and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buf.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # a kernel without THP: 4 KiB pages
            pass
    return torch.frombuffer(buf, dtype=torch.uint8)


def host_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zeroed host tensor in the memory the runtime keeps weights in (anonymous, huge pages advised, every
    page touched), for the calibrator's weight copies. Not page-locked: locking pins the pages the CPU reads
    but does not change how it reads them, and an unpinned mapping can be freed like any tensor."""
    numel = math.prod(shape)
    t = _anonymous(numel * dtype.itemsize).view(dtype).view(shape)
    t.zero_()
    return t


SMAPS = Path("/proc/self/smaps")


def huge_page_fraction(tensors: list[torch.Tensor], smaps: Optional[str] = None) -> Optional[float]:
    """The share of the tensors' resident host memory the kernel backs with transparent huge pages
    (AnonHugePages over Rss of the mappings that hold them, from /proc/self/smaps), or None where that file
    cannot be read. A GEMV over 4 KiB pages misses the TLB on every page: the calibrator records this beside
    each CPU linear's time, since the same kernel ran up to 2x apart between runs on the GPU host
    (runtime/validation/beside-dma-probe/)."""
    if smaps is None:
        try:
            smaps = SMAPS.read_text()
        except OSError:
            return None
    starts = {t.data_ptr() for t in tensors if t.device.type == "cpu" and t.numel()}
    rss = huge = 0
    lo = hi = -1
    counted = False
    for line in smaps.splitlines():
        head = line.split(maxsplit=1)[0] if line.strip() else ""
        if "-" in head and ":" not in head:  # a mapping's first line: "start-end perms ..."
            a, _, b = head.partition("-")
            try:
                lo, hi = int(a, 16), int(b, 16)
            except ValueError:
                lo = hi = -1
            counted = any(lo <= p < hi for p in starts)
        elif counted and line.startswith("Rss:"):
            rss += int(line.split()[1])
        elif counted and line.startswith("AnonHugePages:"):
            huge += int(line.split()[1])
    return huge / rss if rss else None


VMSTAT = Path("/proc/vmstat")
# Kernel memory-management work that takes CPU time from whatever runs on the core it lands on: direct compaction
# stalls, pages migrated by compaction, and huge pages khugepaged collapsed. The calibrator records their deltas
# per round (the OPT-66B block of two calibrations ran up to 2x slow in some rounds after ~8 GB of fresh
# huge-page allocations: runtime/validation/wave2-l2/README.md).
VMSTAT_COUNTERS = ("compact_stall", "pgmigrate_success", "thp_collapse_alloc")


def vmstat_counters(text: Optional[str] = None) -> dict[str, int]:
    """The VMSTAT_COUNTERS from /proc/vmstat (``text``: its content, for tests); {} where it cannot be read."""
    if text is None:
        try:
            text = VMSTAT.read_text()
        except OSError:
            return {}
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in VMSTAT_COUNTERS and value.strip().isdigit():
            out[name] = int(value)
    return out


def vmstat_delta(before: dict[str, int], after: dict[str, int]) -> str:
    """'name=delta;...' over the counters both readings hold (empty when neither could be read)."""
    return ";".join(f"{k}={after[k] - before[k]}" for k in VMSTAT_COUNTERS if k in before and k in after)


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + size, n)) for lo in range(0, n, size)]
