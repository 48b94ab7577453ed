"""What the calibrator runs on: host name, CPU model and flags, cores in use, NUMA nodes, host memory.

Read from /proc and /sys only (no torch), so that it is cheap and testable. A NUMA node with memory and
no CPUs is a CXL expander (or another CPU-less memory device); nodes with CPUs form the DDR tier.
"""

from __future__ import annotations

import os
import platform
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from lia_model.units import BYTES_PER_GIB

NODE_ROOT = Path("/sys/devices/system/node")
CPU_ROOT = Path("/sys/devices/system/cpu")

# Intel family-6 model numbers of the Xeons this project cares about (Intel SDM, "CPUID signatures").
INTEL_CODENAMES = {143: "spr", 207: "emr", 173: "gnr", 174: "gnr"}


@dataclass(frozen=True)
class NumaNode:
    node: int
    cpus: tuple[int, ...]
    mem_total_bytes: int

    @property
    def is_cpu_less(self) -> bool:
        """Memory without CPUs: a CXL expander in the systems this project models."""
        return not self.cpus and self.mem_total_bytes > 0


@dataclass(frozen=True)
class HostInfo:
    hostname: str
    cpu_model: str
    vendor: str
    family: int
    model: int
    flags: frozenset[str]
    affinity: tuple[int, ...]  # logical CPUs this process may run on
    physical_cores: int  # distinct (package, core) pairs among them
    nodes: tuple[NumaNode, ...]
    mem_total_bytes: int  # /proc/meminfo MemTotal
    mem_available_bytes: int  # /proc/meminfo MemAvailable at start
    llc_bytes: int = 0  # last-level cache of one CPU (0 when /sys does not say)
    machine: str = field(default_factory=platform.machine)

    @property
    def has_amx(self) -> bool:
        return "amx_bf16" in self.flags and "amx_tile" in self.flags

    @property
    def cpu_nodes(self) -> tuple[NumaNode, ...]:
        return tuple(n for n in self.nodes if n.cpus)

    @property
    def cxl_nodes(self) -> tuple[NumaNode, ...]:
        return tuple(n for n in self.nodes if n.is_cpu_less)

    @property
    def local_node(self) -> int:
        """The node holding most of the CPUs this process runs on (its DDR is 'local')."""
        mine = set(self.affinity)
        best = max(self.cpu_nodes, key=lambda n: len(mine & set(n.cpus)), default=None)
        return best.node if best is not None else 0

    @property
    def codename(self) -> str:
        """Short CPU tag for profile names: 'emr', 'spr', 'gnr' for known Xeons, else vendor + brand word."""
        if self.vendor == "GenuineIntel" and self.family == 6 and self.model in INTEL_CODENAMES:
            return INTEL_CODENAMES[self.model]
        words = [w for w in re.split(r"[^a-z0-9]+", self.cpu_model.lower()) if w and w not in ("r", "tm", "cpu")]
        vendor = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(self.vendor, self.machine.lower())
        brand = next((w for w in words if w not in ("intel", "amd", "processor", "core", "with")), "cpu")
        return f"{vendor}-{brand}"

    @property
    def ddr_capacity_bytes(self) -> int:
        """Host memory the OS sees, less CPU-less (CXL) nodes."""
        return self.mem_total_bytes - sum(n.mem_total_bytes for n in self.cxl_nodes)

    @property
    def in_use_gib(self) -> float:
        return (self.mem_total_bytes - self.mem_available_bytes) / BYTES_PER_GIB


def parse_cpulist(text: str) -> tuple[int, ...]:
    """'0-3,8,10-11' -> (0, 1, 2, 3, 8, 10, 11)."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-")
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    return tuple(out)


def parse_meminfo_kb(text: str, key: str) -> int:
    """Bytes of one 'Key: N kB' entry of /proc/meminfo or a node's meminfo (0 when missing)."""
    match = re.search(rf"{re.escape(key)}:\s+(\d+)\s*kB", text)
    return int(match.group(1)) * 1024 if match else 0


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def numa_nodes(root: Path = NODE_ROOT) -> tuple[NumaNode, ...]:
    nodes = []
    for path in sorted(root.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
        cpus = parse_cpulist(_read(path / "cpulist"))
        mem = parse_meminfo_kb(_read(path / "meminfo"), "MemTotal")
        nodes.append(NumaNode(int(path.name[4:]), cpus, mem))
    return tuple(nodes)


def core_groups(cpus: tuple[int, ...], root: Path = CPU_ROOT) -> list[tuple[int, ...]]:
    """The logical CPUs grouped by physical core ((package, core) pair; SMT siblings together), ordered by
    each core's lowest CPU number. A CPU without topology files is a core of its own."""
    groups: dict[tuple[str, str], list[int]] = {}
    for cpu in sorted(cpus):
        topo = root / f"cpu{cpu}" / "topology"
        core, pkg = _read(topo / "core_id").strip(), _read(topo / "physical_package_id").strip()
        groups.setdefault((pkg, core) if core else ("cpu", str(cpu)), []).append(cpu)
    return sorted((tuple(g) for g in groups.values()), key=min)


def physical_cores(cpus: tuple[int, ...], root: Path = CPU_ROOT) -> int:
    """Distinct (package, core) pairs among logical CPUs: SMT siblings count once."""
    return max(1, len(core_groups(cpus, root)))


def last_level_cache_bytes(root: Path = CPU_ROOT, cpu: int = 0) -> int:
    """Size of the highest-level cache /sys lists for ``cpu`` ('32768K' -> 33554432)."""
    best_level, size = 0, 0
    for index in (root / f"cpu{cpu}" / "cache").glob("index[0-9]*"):
        level = _read(index / "level").strip()
        text = _read(index / "size").strip().upper()
        match = re.fullmatch(r"(\d+)([KMG]?)", text)
        if not level.isdigit() or not match:
            continue
        value = int(match.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match.group(2)]
        if int(level) > best_level:
            best_level, size = int(level), value
    return size


def _cpuinfo_field(text: str, key: str) -> str:
    match = re.search(rf"^{re.escape(key)}\s*:\s*(.*)$", text, re.MULTILINE)
    return match.group(1).strip() if match else ""


def host_info() -> HostInfo:
    cpuinfo = _read(Path("/proc/cpuinfo"))
    meminfo = _read(Path("/proc/meminfo"))
    affinity = (
        tuple(sorted(os.sched_getaffinity(0)))
        if hasattr(os, "sched_getaffinity")
        else tuple(range(os.cpu_count() or 1))
    )
    nodes = numa_nodes()
    if not nodes:  # no /sys NUMA view (containers may hide it): one node with everything
        nodes = (NumaNode(0, affinity, parse_meminfo_kb(meminfo, "MemTotal")),)

    def _int(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            return -1

    return HostInfo(
        hostname=socket.gethostname(),
        cpu_model=_cpuinfo_field(cpuinfo, "model name") or platform.processor() or platform.machine(),
        vendor=_cpuinfo_field(cpuinfo, "vendor_id"),
        family=_int(_cpuinfo_field(cpuinfo, "cpu family")),
        model=_int(_cpuinfo_field(cpuinfo, "model")),
        flags=frozenset(_cpuinfo_field(cpuinfo, "flags").split()),
        affinity=affinity,
        physical_cores=physical_cores(affinity),
        nodes=nodes,
        mem_total_bytes=parse_meminfo_kb(meminfo, "MemTotal"),
        mem_available_bytes=parse_meminfo_kb(meminfo, "MemAvailable"),
        llc_bytes=last_level_cache_bytes(cpu=affinity[0] if affinity else 0),
    )


def slug(text: str) -> str:
    """A file- and profile-name-safe lowercase form: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "unknown"
