"""The calibration run: every family of measurements, N repeats, the fit, the profile and the raw CSV.

Order within a repeat: the CPU ISA workers (subprocesses, before this process touches CUDA), the CPU op
overhead, host memory per node, then (with a GPU) the GPU, PCIe and contention. Each family has a time
budget; ``time_limit_s`` bounds the whole command (a family that would start too late is skipped and says
so, and the profile falls back as for an unmeasurable number). A family that fails is logged, written into
the profile's notes, and treated like an unmeasurable one: one broken benchmark never loses the others.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from calibrate.host import HostInfo, host_info, slug
from calibrate.records import aggregate, row, write_csv
from lia_model.errors import LiaInputError

FULL_BUDGET_S = {"amx_bf16": 40.0, "avx512_bf16": 40.0, "avx512_fp32": 30.0, "avx2_fp32": 30.0, "gpu": 25.0}
QUICK_BUDGET_S = {"amx_bf16": 6.0, "avx512_bf16": 6.0, "avx512_fp32": 6.0, "avx2_fp32": 6.0, "gpu": 6.0}
# Rough seconds the fixed-size families take on the reference host (used only against --time-limit-s).
FIXED_FAMILY_S = {"host_memory": 12.0, "pcie": 15.0, "contention": 12.0}
WRITE_RESERVE_S = 15.0


@dataclass(frozen=True)
class Options:
    quick: bool
    out_dir: Path
    name: Optional[str]
    gpu_datasheet: str
    link_datasheet: str
    repeats: int
    time_limit_s: Optional[float]
    threads: Optional[int]
    bind: bool

    def command(self, name: str) -> str:
        parts = ["lia calibrate"]
        if self.quick:
            parts.append("--quick")
        parts += [
            f"--out {self.out_dir}",
            f"--name {name}",
            f"--repeats {self.repeats}",
            f"--gpu-datasheet {self.gpu_datasheet}",
            f"--link-datasheet {self.link_datasheet}",
        ]
        if self.time_limit_s is not None:
            parts.append(f"--time-limit-s {self.time_limit_s:g}")
        if self.threads is not None:
            parts.append(f"--threads {self.threads}")
        if not self.bind:
            parts.append("--no-bind")
        return " ".join(parts)


@dataclass(frozen=True)
class Result:
    profile_path: Path
    csv_path: Path
    profile: dict[str, Any]
    rows: list[dict[str, Any]]


def log(message: str) -> None:
    print(f"[calibrate {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- inputs


def _datasheets(gpu_name: str, link_name: str) -> tuple[dict, str, dict, str]:
    """The datasheet GPU and link used when they cannot be measured. ``gpu_name`` may name a GPU profile or a
    system (whose GPU and link are then used)."""
    from lia_model.profiles import PROFILE_DIR, list_profiles, load_device, read_yaml, system_dict

    known = list_profiles()
    if gpu_name in known["gpu"]:
        load_device("gpu", gpu_name)  # validates
        gpu = read_yaml(PROFILE_DIR / "gpu" / f"{gpu_name}.yaml")
        gpu_where = f"hwprofiles/gpu/{gpu_name}.yaml"
        if link_name not in known["link"]:
            raise LiaInputError(
                "--link-datasheet", f"unknown link profile '{link_name}'", f"choose one of {', '.join(known['link'])}"
            )
        load_device("link", link_name)
        link = read_yaml(PROFILE_DIR / "link" / f"{link_name}.yaml")
        return gpu, gpu_where, link, f"hwprofiles/link/{link_name}.yaml"
    if gpu_name in known["system"]:
        data = system_dict(gpu_name)
        where = f"hwprofiles/systems/{gpu_name}.yaml"
        return data["gpu"], where + " (gpu)", data["link"], where + " (link)"
    raise LiaInputError(
        "--gpu-datasheet",
        f"unknown GPU profile '{gpu_name}'",
        f"choose a GPU ({', '.join(known['gpu'])}) or a system ({', '.join(known['system'])})",
    )


def validate_options(opts: Options) -> None:
    if not 1 <= opts.repeats <= 10:
        raise LiaInputError("--repeats", f"must be 1 to 10, got {opts.repeats}", "e.g. --repeats 2")
    if opts.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", opts.name):
        raise LiaInputError(
            "--name",
            f"'{opts.name}' is not a plain file name",
            "use letters, digits, '.', '_' and '-', e.g. --name emr-h100-calibrated",
        )
    if opts.threads is not None and opts.threads < 1:
        raise LiaInputError("--threads", f"must be at least 1, got {opts.threads}", "e.g. --threads 16")
    if opts.time_limit_s is not None and opts.time_limit_s < 30:
        raise LiaInputError(
            "--time-limit-s",
            f"{opts.time_limit_s:g} s is too short for any measurement",
            "give at least 30, e.g. --time-limit-s 450",
        )
    try:
        opts.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LiaInputError(
            "--out",
            f"cannot create '{opts.out_dir}' ({err.strerror})",
            "give a writable directory, e.g. --out results/calibration",
        ) from None
    if not os.access(opts.out_dir, os.W_OK):
        raise LiaInputError("--out", f"'{opts.out_dir}' is not writable", "give a writable directory")


# ---------------------------------------------------------------- versions


def _driver_version() -> str:
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", text)
        if match:
            return match.group(1)
    except OSError:
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def versions(isa_results: dict[str, dict], cuda_ok: bool) -> dict[str, str]:
    import numpy
    import torch

    config = torch.__config__.show()
    onednn = next(
        (r["probe"]["onednn_version"] for r in isa_results.values() if r.get("probe", {}).get("onednn_version")), ""
    )
    if not onednn:
        match = re.search(r"(?:MKL-DNN|oneDNN)\s+v([\w.]+)", config)
        onednn = match.group(1) if match else "not visible"
    mkl = re.search(r"Math Kernel Library Version\s+(\S+)", config)
    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "onednn": onednn,
        "mkl": mkl.group(1) if mkl else "not visible",
        "cuda": str(torch.version.cuda),
        "os": platform.platform(),
    }
    ipex = next((r.get("ipex") for r in isa_results.values() if r.get("ipex")), None)
    out["ipex"] = ipex.get("version", "not available") if ipex and ipex.get("available") else "not available"
    if cuda_ok:
        out["cudnn"] = str(torch.backends.cudnn.version())
        out["nvidia_driver"] = _driver_version()
    return out


def _pcie_words() -> str:
    """'PCIe 32.0 GT/s x16' from /sys for GPU 0, or ''."""
    import torch

    try:
        props = torch.cuda.get_device_properties(0)
        bdf = f"{props.pci_domain_id:04x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
        base = Path("/sys/bus/pci/devices") / bdf
        speed = (base / "current_link_speed").read_text().strip()
        width = (base / "current_link_width").read_text().strip()
        return f"over PCIe link {speed} x{width}"
    except (AttributeError, OSError, RuntimeError):
        return ""


# ---------------------------------------------------------------- the run


class Clock:
    """Time left under --time-limit-s."""

    def __init__(self, limit_s: Optional[float]) -> None:
        self.start = time.perf_counter()
        self.limit_s = limit_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return float("inf") if self.limit_s is None else self.limit_s - WRITE_RESERVE_S - self.elapsed()


def _guard(family: str, fn: Callable[[], Any], notes: list[str], fallback: Any) -> Any:
    try:
        return fn()
    except LiaInputError:
        raise
    except Exception as err:  # one failing family must not lose the others
        log(f"{family} FAILED: {err!r}\n{traceback.format_exc()}")
        notes.append(f"{family}: measurement failed ({type(err).__name__}: {err}); see the log")
        return fallback


def _skip_rows(family: str, reason: str) -> list[dict]:
    return [row(family, "skipped", note=f"skipped: {reason}")]


@dataclass
class RunState:
    """What the calibration's repeats learn and share: per-ISA results (the best of the repeats), whether and
    why the GPU is measured, and the notes of the memory and PCIe families."""

    cuda_ok: bool
    gpu_skip_reason: str
    isa_results: dict[str, dict] = field(default_factory=dict)
    gpu_info: Optional[dict] = None
    gpu_info_failed: bool = False
    link_description: str = ""
    mem_notes: list[str] = field(default_factory=list)
    pcie_notes: list[str] = field(default_factory=list)


def run_once(
    opts: Options, host: HostInfo, threads: int, repeat: int, clock: Clock, state: RunState, notes: list[str]
) -> list[dict]:
    from calibrate import cpu, gpu, hostmem, pcie

    budgets = QUICK_BUDGET_S if opts.quick else FULL_BUDGET_S
    rows: list[dict] = []
    tag = f"repeat {repeat + 1}/{opts.repeats}"
    for isa in cpu.ISAS:
        if isa in cpu.FALLBACK_ISAS and any(
            r.get("present") for i, r in state.isa_results.items() if i not in cpu.FALLBACK_ISAS
        ):
            continue
        budget = min(budgets[isa], clock.left() - 30)
        if budget < 3:
            rows += _skip_rows("cpu_matmul", f"--time-limit-s reached before {isa} ({tag})")
            state.isa_results.setdefault(isa, {"present": False, "absent_reason": "not measured: time limit"})
            continue
        log(f"{tag}: CPU {isa} (budget {budget:.0f} s)")
        result = _guard(
            f"cpu {isa}",
            lambda: cpu.run_isa(isa, threads, budget, opts.quick, host.llc_bytes, opts.bind, log),
            notes,
            {"isa": isa, "present": False, "rows": [], "absent_reason": "not measured: the worker failed"},
        )
        rows += result.pop("rows", [])
        if not result.get("present"):
            rows.append(
                row(
                    "cpu_matmul",
                    "absent",
                    isa=isa,
                    kernel_observed=result.get("probe_kernel"),
                    note=f"absent: {result.get('absent_reason')}",
                )
            )
        prev = state.isa_results.get(isa)
        if prev is None or (not prev.get("present") and result.get("present")):
            state.isa_results[isa] = result
        log(f"{tag}: CPU {isa}: " + ("present" if result.get("present") else f"absent: {result.get('absent_reason')}"))
    rows.append(_guard("cpu_overhead", lambda: cpu.op_overhead_row(threads), notes, row("cpu_overhead", "skipped")))
    if clock.left() > FIXED_FAMILY_S["host_memory"]:
        log(f"{tag}: host memory")
        mem_rows, mem_notes = _guard("host_memory", lambda: hostmem.measure(host, threads, opts.quick), notes, ([], []))
        rows += mem_rows
        state.mem_notes = mem_notes
    else:
        rows += _skip_rows("host_memory", f"--time-limit-s reached ({tag})")
    if state.cuda_ok:
        if state.gpu_info is None and not state.gpu_info_failed:

            def info() -> dict:
                return gpu.device_info()

            state.gpu_info = _guard("gpu_info", info, notes, None)
            if state.gpu_info is None:
                state.gpu_info_failed = True
                state.gpu_skip_reason = "the CUDA device could not be initialised (see notes)"
            else:
                rows += gpu.info_rows(state.gpu_info)
                state.link_description = _pcie_words()
        if state.gpu_info is not None:
            budget = min(budgets["gpu"], clock.left() - FIXED_FAMILY_S["pcie"] - FIXED_FAMILY_S["contention"])
            if budget >= 3:
                log(f"{tag}: GPU (budget {budget:.0f} s)")
                rows += _guard("gpu", lambda: gpu.measure(opts.quick, budget), notes, [])
            else:
                rows += _skip_rows("gpu_matmul", f"--time-limit-s reached ({tag})")
            if clock.left() > FIXED_FAMILY_S["pcie"]:
                log(f"{tag}: PCIe")
                pcie_rows, pcie_notes = _guard("pcie", lambda: pcie.measure(host, opts.quick), notes, ([], []))
                rows += pcie_rows
                state.pcie_notes = pcie_notes
            else:
                rows += _skip_rows("pcie", f"--time-limit-s reached ({tag})")
            if clock.left() > FIXED_FAMILY_S["contention"]:
                log(f"{tag}: contention")
                rows += _guard("contention", lambda: pcie.contention(threads, host.llc_bytes, opts.quick), notes, [])
            else:
                rows += _skip_rows("contention", f"--time-limit-s reached ({tag})")
    else:
        for family in ("gpu_matmul", "pcie", "contention"):
            rows += _skip_rows(family, state.gpu_skip_reason)
    return rows


def default_name(host: HostInfo, gpu_name: Optional[str]) -> str:
    gpu_tag = "nogpu"
    if gpu_name:
        match = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", gpu_name.replace("NVIDIA", ""))
        gpu_tag = match.group(1).lower() if match else slug(gpu_name)
    return f"{host.codename}-{gpu_tag}-calibrated"


def _summaries(rows: list[dict], repeats: int) -> list[str]:
    notes = []
    if repeats > 1:
        spreads = [r["spread_rel"] for r in rows if isinstance(r.get("spread_rel"), float) and r.get("repeats", 0) > 1]
        if spreads:
            spreads.sort()
            notes.append(
                f"repeats: {repeats} full runs averaged; spread (max - min) / mean of a point's time over "
                f"the runs: median {100 * spreads[len(spreads) // 2]:.1f}%, max {100 * spreads[-1]:.1f}% "
                f"over {len(spreads)} points (per point in the CSV column spread_rel)"
            )
    for r in rows:
        if r["family"] == "contention" and isinstance(r.get("slowdown"), float):
            notes.append(
                f"contention: {r['op']} ({r['label']}): {r['time_s'] * 1e3:.2f} ms vs "
                f"{r['solo_time_s'] * 1e3:.2f} ms alone, slowdown {r['slowdown']:.3f}x"
            )
    return notes


def calibrate(opts: Options) -> Result:
    validate_options(opts)
    gpu_ds, gpu_where, link_ds, link_where = _datasheets(opts.gpu_datasheet, opts.link_datasheet)
    clock = Clock(opts.time_limit_s)
    host = host_info()
    threads = opts.threads or host.physical_cores
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    log(
        f"host {host.hostname}: {host.cpu_model}, {host.physical_cores} physical cores in affinity "
        f"({len(host.affinity)} logical), {len(host.nodes)} NUMA node(s), using {threads} threads"
    )
    import torch

    from calibrate import gpu

    torch.set_num_threads(threads)
    cuda_ok, cuda_reason = gpu.cuda_status()
    state = RunState(cuda_ok=cuda_ok, gpu_skip_reason=cuda_reason)
    notes: list[str] = []
    runs = []
    for repeat in range(opts.repeats):
        runs.append(run_once(opts, host, threads, repeat, clock, state, notes))
    rows = aggregate(runs)
    gpu_info = state.gpu_info
    name = opts.name or default_name(host, gpu_info["name"] if gpu_info else None)
    from calibrate.profile import Context, system_profile

    isa_results = {isa: {k: v for k, v in res.items() if k != "rows"} for isa, res in state.isa_results.items()}
    ctx_notes = [
        (
            f"threads: {threads} (torch.set_num_threads; one per physical core of affinity CPUs "
            f"{_ranges(host.affinity)}); binding: "
            + ("OMP_PROC_BIND=close OMP_PLACES=cores in the matmul workers" if opts.bind else "none (--no-bind)")
        ),
        (
            f"mode: {'quick (a representative subset of shapes and sizes)' if opts.quick else 'full'}; "
            f"{opts.repeats} repeat(s); total {clock.elapsed():.0f} s"
        ),
        *state.mem_notes,
        *state.pcie_notes,
    ]
    if not cuda_ok or gpu_info is None:
        ctx_notes.append(
            f"gpu and link not measured: {state.gpu_skip_reason}; values from {gpu_where} and {link_where}"
        )
    for isa, res in isa_results.items():
        if not res.get("present"):
            ctx_notes.append(f"{isa} absent: {res.get('absent_reason')}")
        if res.get("ipex") and not res["ipex"].get("available"):
            ctx_notes.append(f"ipex ({isa}): not measured: {res['ipex'].get('reason')}")
        elif res.get("ipex"):
            ctx_notes.append(
                f"ipex ({isa}): {res['ipex'].get('version')} measured at the headline points "
                f"(CSV rows with backend 'ipex ...'); the profile's tables use stock PyTorch"
            )
    ctx_notes += notes
    ctx_notes += _summaries(rows, opts.repeats)
    ctx_notes.append(
        f"raw measurements: {name}.csv (written beside this file by the calibrator; "
        f"hwprofiles/calibration/{name}.csv when committed)"
    )
    ctx = Context(
        host=host,
        name=name,
        date=date,
        command=opts.command(name),
        threads=threads,
        isa_results=isa_results,
        gpu_info=gpu_info,
        gpu_skip_reason=state.gpu_skip_reason,
        gpu_datasheet=gpu_ds,
        link_datasheet=link_ds,
        gpu_datasheet_where=gpu_where,
        link_datasheet_where=link_where,
        versions=versions(isa_results, cuda_ok),
        notes=ctx_notes,
        link_description=state.link_description,
    )
    profile = system_profile(ctx, rows)
    profile_path = opts.out_dir / f"{name}.yaml"
    csv_path = opts.out_dir / f"{name}.csv"
    write_csv(rows, csv_path)
    profile_path.write_text(
        f"# Calibrated system profile, written by `{ctx.command}`.\n"
        f"# Raw measurements: {name}.csv. Load with: lia plan --system {profile_path}\n"
        + yaml.safe_dump(_plain(profile), sort_keys=False, width=120, allow_unicode=True)
    )
    from lia_model.profiles import load_system

    load_system(str(profile_path))  # the written file must validate; raises LiaInputError if not
    log(f"wrote {profile_path} and {csv_path} ({clock.elapsed():.0f} s)")
    return Result(profile_path, csv_path, profile, rows)


def _plain(obj: Any) -> Any:
    """Plain YAML types: str subclasses (torch's version string) and numpy scalars become str/float/int."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if hasattr(obj, "item"):
        return _plain(obj.item())
    return obj


def _ranges(cpus: tuple[int, ...]) -> str:
    out, start = [], None
    for i, c in enumerate(cpus):
        if start is None:
            start = c
        if i + 1 == len(cpus) or cpus[i + 1] != c + 1:
            out.append(f"{start}-{c}" if c != start else str(c))
            start = None
    return ",".join(out)
