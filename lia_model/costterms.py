"""Cost terms of one layer in one stage: affine forms over boolean features of the policy vector, and the
simulated schedule of the layer's chunks as a table over the 64 policy vectors.

This module is the single source of the cost model's arithmetic. ``predict()`` evaluates a stage's terms on
one plan's features, the exhaustive enumerator on all 64 policy vectors at once, and the ILP reads the same
64 layer times (StageTerms.layer_time at every vector) as the coefficients of one-hot policy variables.
That is what makes the optimiser exact with respect to the cost model: all three read the same numbers.

Features of a policy vector p (paper notation, p_i = 1 means sublayer i runs on the CPU), DERIVED_FEATURES:
  cpu[i]          = p_i                              i = 0..5
  h2d[j]          = p_j AND NOT p_{j+1}              boundary j: sublayer j (CPU) -> j+1 (GPU), H2D copy
  d2h[j]          = NOT p_j AND p_{j+1}              boundary j: sublayer j (GPU) -> j+1 (CPU), D2H copy
                    (boundary 5 is fc2 -> next layer's qkv; h2d[j] + d2h[j] = p_j XOR p_{j+1})
  qkv_cpu_ctx_gpu = p_0 AND NOT p_2                  new V made on the CPU must reach GPU attention
  qkv_gpu_ctx_cpu = p_2 AND NOT p_0                  (the paper mode's model only)
  qkv_xor_out     = p_0 XOR p_3                      (the paper mode's model only: residual copies)
  out_xor_fc2     = p_3 XOR p_5

Every time below is an affine function  const + sum_k coef_k * feature_k  (per decode step), except the
schedule, which is simulated for each of the 64 vectors. A layer's time in a stage is the max of its terms.

Terms for a streamed (non-resident) layer, prefill in n equal chunks (decode: n = 1):
  X_c      in {cpu_c, gpu_c, h2dx_c, d2h_c}: per-chunk busy time of CPU, GPU, PCIe H2D (not weights), D2H,
           including the cached K/V fetched for GPU attention and the new K/V written back from a GPU qkv
  W        = sum_i (1 - p_i) w_i                  weight prefetch of GPU sublayers, once per layer
  overlap mode:
    T >= schedule(p)                              the runtime's schedule of the n chunks on CPU, GPU and the
                                                  two copy queues (lia_model.schedule), simulated for each
                                                  policy vector: exact for the runtime's scheduler, where no
                                                  affine form is (with n > 1 the order of CPU work depends
                                                  on the times; a chunk's write-back and fetches race with
                                                  its compute)
    T >= W + n h2dx_c                             the H2D link carries weights and activations (with kernel
                                                  tables, + (1 - 1/d) n cpu_m: the DMA runs d times slower
                                                  beside the CPU's memory-bound work, calibrated)
    T >= n d2h_c                                  the D2H link (the K/V write-back is off the chain where no
                                                  CPU attention reads it, but it occupies the link)
    T >= ddr_bytes / ddr_bw,  T >= cxl_bytes / cxl_bw     CPU reads and DMA share host memory
    (without overlap or pinning, W is added to the schedule: the copy does not run beside compute)
    T >= n cpu_c                                  the CPU's busy time
    with kernel tables, the schedule itself runs the CPU work cpu_m that the DMA slows (attention, and the linears
                      whose roofline memory term binds) min(s, 1 + (1 - 1/s) W / (n cpu_m)) times slower beside
                      the weight DMA (calibrated slowdown s; compute-bound linears keep their speed), and a critical H2D
                      copy that finds the copy queue idle while the weights stream (the layer's first W
                      seconds) waits behind the feeder's pieces (lia_model.weight_feeder). (Until the eighth
                      session every CPU kernel was slowed, and T >= n cpu_c + (1 - 1/s) W was a term of its own.)
  additive mode (a serial sum of our terms):
    T  = n (cpu_c + gpu_c + h2dx_c + d2h_c) + W
  paper mode: the LIA authors' released model term for term (lia_model.paper), with the profile's numbers.
A resident layer runs all-GPU with its weights and KV in HBM: T = n sum_i gpu_i (overlap and additive).

Attention reads its KV cache kv_pass_factor times (a property of the device's kernel in the profile: 1 is
one pass, the paper's model uses 3.5, a calibrated profile measures it); CPU attention that of a peer which
converts the cache first, ``cpu_kv_passes`` times more (StageContext; 1 for this project's runtime, see
lia_model.flexgen). MoE experts of GPU sublayers are either all prefetched with the layer's weights, or
(ExpertFetch.ROUTED) only the routed ones, fetched on the chain once the router has run. The LM head
(``head_time_s``) runs on the device the plan's embeddings live on.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Optional

import numpy as np

from lia_model.accounting import (
    SublayerWork,
    attention_bytes_flops,
    attention_rows,
    head_flops,
    linear_shape,
    routed_expert_bytes,
    sublayer_work,
)
from lia_model.attention_grid import prefill_seconds
from lia_model.errors import LiaInputError
from lia_model.hardware import (
    AttentionFit,
    KernelTables,
    LinearTable,
    SystemSpec,
    interpolate_efficiency,
    table_seconds,
)
from lia_model.models import ModelSpec
from lia_model.plan import CpuIsa, Device, ExpertFetch, HostTier, policy_from_index
from lia_model.precision import BF16, KvDtype, Precision, WeightDtype, kv_element_bytes
from lia_model.roofline import roofline_s
from lia_model.schedule import ChunkDurations, simulate_all
from lia_model.sublayers import ATTENTION_SUBLAYERS, NUM_SUBLAYERS, SUBLAYERS, Sublayer
from lia_model.units import BYTES_PER_S_PER_GBPS, ELEMS_PER_GELEMS, FLOPS_PER_TFLOPS, S_PER_US
from lia_model.weight_feeder import critical_copy_wait_s

NUM_POLICIES = 2**NUM_SUBLAYERS

# Feature indices.
CPU = tuple(range(0, 6))
H2D = tuple(range(6, 12))
D2H = tuple(range(12, 18))
QKV_CPU_CTX_GPU = 18
QKV_GPU_CTX_CPU = 19
QKV_XOR_OUT = 20
OUT_XOR_FC2 = 21
NUM_FEATURES = 22

_QKV, _SCORE, _CTX, _OUT, _FC1, _FC2 = range(6)

AND_NOT, XOR = "and_not", "xor"
# Every feature beyond cpu[i] as (feature, operation, a, b): AND_NOT is p_a AND NOT p_b, XOR is p_a XOR p_b.
# policy_features() and the ILP both build the features from this table.
DERIVED_FEATURES: tuple[tuple[int, str, int, int], ...] = (
    *((H2D[j], AND_NOT, j, (j + 1) % NUM_SUBLAYERS) for j in range(NUM_SUBLAYERS)),
    *((D2H[j], AND_NOT, (j + 1) % NUM_SUBLAYERS, j) for j in range(NUM_SUBLAYERS)),
    (QKV_CPU_CTX_GPU, AND_NOT, _QKV, _CTX),
    (QKV_GPU_CTX_CPU, AND_NOT, _CTX, _QKV),
    (QKV_XOR_OUT, XOR, _QKV, _OUT),
    (OUT_XOR_FC2, XOR, _OUT, _FC2),
)


class CostMode(str, Enum):
    OVERLAP = "overlap"
    ADDITIVE = "additive"
    PAPER = "paper"  # the LIA authors' released model (lia_model.paper); use with a paper-* profile


class Resource(str, Enum):
    """What bounds a layer's time: the dependency chain or one resource's total busy time."""

    CHAIN = "chain"  # the serial chain of compute and copies of one chunk
    CPU = "cpu"
    GPU = "gpu"
    PCIE_H2D = "pcie_h2d"
    PCIE_D2H = "pcie_d2h"
    DDR = "ddr"
    CXL = "cxl"


def policy_features(p: tuple[Device, ...]) -> np.ndarray:
    """The feature vector of one policy."""
    bits = [int(d) for d in p]
    f = np.zeros(NUM_FEATURES)
    for i in range(NUM_SUBLAYERS):
        f[CPU[i]] = bits[i]
    for feature, op, a, b in DERIVED_FEATURES:
        f[feature] = bits[a] * (1 - bits[b]) if op == AND_NOT else bits[a] ^ bits[b]
    return f


ALL_POLICY_FEATURES: np.ndarray = np.stack([policy_features(policy_from_index(k)) for k in range(NUM_POLICIES)])


@dataclass
class Affine:
    """const[S] + coef[F, S] . features  (S = decode steps, 1 for prefill)."""

    const: np.ndarray
    coef: np.ndarray

    @classmethod
    def zero(cls, steps: int) -> "Affine":
        return cls(np.zeros(steps), np.zeros((NUM_FEATURES, steps)))

    def __add__(self, other: "Affine") -> "Affine":
        return Affine(self.const + other.const, self.coef + other.coef)

    def scaled(self, k: float) -> "Affine":
        return Affine(self.const * k, self.coef * k)

    def add_feature(self, feature: int, value: np.ndarray | float) -> "Affine":
        """+ value * feature."""
        self.coef[feature] = self.coef[feature] + value
        return self

    def add_not_cpu(self, i: int, value: np.ndarray | float) -> "Affine":
        """+ value * (1 - p_i), i.e. value when sublayer i runs on the GPU."""
        self.const = self.const + value
        self.coef[CPU[i]] = self.coef[CPU[i]] - value
        return self

    def add_const(self, value: np.ndarray | float) -> "Affine":
        self.const = self.const + value
        return self

    def evaluate(self, features: np.ndarray) -> np.ndarray:
        """features [..., F] -> values [..., S]."""
        return self.const + features @ self.coef


@dataclass(frozen=True)
class StageContext:
    """Everything fixed while the policy varies: the coefficients depend on these and nothing else."""

    batch: int
    q: int  # new tokens per sequence
    contexts: tuple[int, ...]  # cached tokens s per step (one entry for prefill)
    minibatches: int
    weight_tier: HostTier
    kv_tier: HostTier
    cpu_isa: CpuIsa
    pinned_weights: bool
    overlap: bool
    mode: CostMode
    expert_fetch: ExpertFetch = ExpertFetch.ALL
    # Passes a CPU attention makes over the cached K/V bytes relative to this project's kernel (1: our runtime,
    # whose kernel's own passes are the profile's kv_pass_factor). A peer that converts the cache first reads
    # and writes it more often (lia_model.flexgen.FLEXGEN_CPU_KV_PASSES).
    cpu_kv_passes: float = 1.0
    precision: Precision = BF16  # how weights and KV are stored (the workload's; lia_model.precision)
    # The streamed layers' KV cache lives in HBM (plan.streamed_kv_on_gpu): GPU attention fetches nothing over
    # PCIe and a GPU qkv writes nothing back (qkv and attention then run on the GPU: lia_model.plan)
    kv_on_gpu: bool = False


@dataclass
class SublayerTimes:
    """Per-sublayer times of one chunk on each device, arrays over steps.

    With calibrated kernel tables, attn_score and attn_context on one device run as one fused kernel:
    ``*_fused_delta_s`` is (fused time - split score time - split context time) on that device, charged
    when both sit there: on the CPU by p_score AND p_context = p_score - h2d[score], on the GPU by
    NOT p_score AND NOT p_context = (1 - p_score) - d2h[score] (zero without tables)."""

    cpu_s: np.ndarray  # [6, S] incl. op overhead
    gpu_s: np.ndarray  # [6, S] weights in HBM
    cpu_compute_bound: np.ndarray  # [6, S] bool: FLOPs term >= memory term
    gpu_compute_bound: np.ndarray
    cpu_memory_s: np.ndarray  # [6, S] memory part of the CPU time
    gpu_memory_s: np.ndarray
    cpu_fused_delta_s: np.ndarray = None  # [S]
    gpu_fused_delta_s: np.ndarray = None  # [S]
    fused_attention: bool = False  # kernel tables: score + context on one device run as one kernel
    work: Optional[dict[Sublayer, SublayerWork]] = None  # the chunk's sublayer_work these times were priced from

    def __post_init__(self) -> None:
        steps = self.cpu_s.shape[1]
        if self.cpu_fused_delta_s is None:
            self.cpu_fused_delta_s = np.zeros(steps)
        if self.gpu_fused_delta_s is None:
            self.gpu_fused_delta_s = np.zeros(steps)

    def compute_s(self, i: int, policy: tuple) -> np.ndarray:
        """Sublayer i's time under ``policy`` as the runtime records it: with fused attention, attn_score
        takes no time of its own and attn_context the whole fused kernel when both sit on one device."""
        cpu = policy[i] == Device.CPU
        base = self.cpu_s if cpu else self.gpu_s
        if not self.fused_attention or i not in (_SCORE, _CTX) or policy[_SCORE] != policy[_CTX]:
            return base[i]
        if i == _SCORE:
            return np.zeros_like(base[i])
        return base[_SCORE] + base[_CTX] + (self.cpu_fused_delta_s if cpu else self.gpu_fused_delta_s)

    def all_gpu_s(self) -> np.ndarray:
        """One chunk with every sublayer on the GPU (fused attention included)."""
        return self.gpu_s.sum(axis=0) + self.gpu_fused_delta_s


@dataclass
class StageTerms:
    """The epigraph terms of a streamed layer and the components behind them."""

    context: StageContext
    terms: dict[str, tuple[Resource, Affine]]
    times: SublayerTimes
    weight_h2d_s: np.ndarray  # [6] prefetch time of each sublayer's weights
    cross_h2d_s: np.ndarray  # [6, S] copy at boundary j when j on CPU and j+1 on GPU (one chunk)
    cross_d2h_s: np.ndarray  # [6, S]
    kv_copy_s: np.ndarray  # [6, S] KV copies a sublayer causes when it runs on the GPU (one chunk)
    resources: dict[Resource, Affine] = field(default_factory=dict)  # whole-layer busy time per resource
    cpu_scale: Optional[np.ndarray] = None  # [64, S] the slowdown beside the weight DMA of the CPU work it slows
    # (overlap mode: 1 without kernel tables; None in additive mode): what such an in-situ CPU sublayer is expected
    # to take over its solo time
    cpu_slowed: tuple[bool, ...] = (True,) * NUM_SUBLAYERS  # per sublayer: whether cpu_scale applies to it
    schedule_s: Optional[np.ndarray] = None  # [64, S] the simulated schedule of each policy vector (overlap
    # mode; where the serial sum of a vector's operations is within its other terms, that sum: see below)

    def _values(self, features: np.ndarray) -> tuple[list[Resource], np.ndarray]:
        """Every term's value: [terms, ..., S]; the schedule is looked up by the vector's CPU bits."""
        labels = [res for res, _ in self.terms.values()]
        values = [form.evaluate(features) for _, form in self.terms.values()]
        if self.schedule_s is not None:
            index = (features[..., list(CPU)] @ (2 ** np.arange(NUM_SUBLAYERS))).round().astype(int)
            labels.append(Resource.CHAIN)
            values.append(self.schedule_s[index])
        return labels, np.stack(values, axis=0)

    def layer_time(self, features: np.ndarray) -> np.ndarray:
        """Layer time: max over the terms. features [..., F] -> [..., S]."""
        return self._values(features)[1].max(axis=0)

    @functools.cached_property
    def policy_layer_times(self) -> np.ndarray:
        """``layer_time`` of each of the 64 policy vectors [64, S], worked out once and read-only: the optimiser
        reads a stage's table once for every combo and ISA pair that shares it."""
        out = self.layer_time(ALL_POLICY_FEATURES)
        out.setflags(write=False)
        return out

    def fill_parts(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The layer's time split for ``prefill_pass_s``: (compute, copy, throughput), each [..., S].

        compute = max(chain, CPU busy, D2H link)           the layer's work once its weights are in HBM
        copy    = the H2D link term (its weights and activations)   what the prefetch of the layer puts on it
        throughput = max(DDR, CXL)                             host-memory traffic, a per-layer rate bound
        so that layer_time = max(compute, copy, throughput). Needs the schedule simulated for every vector
        (``streamed_layer_terms(..., simulate_every=True)``): elsewhere the table may hold a serial sum."""
        labels, values = self._values(features)
        zero = np.zeros(values.shape[1:])

        def pick(kinds: tuple[Resource, ...]) -> np.ndarray:
            rows = [values[k] for k, label in enumerate(labels) if label in kinds]
            return np.max(rows, axis=0) if rows else zero

        return (
            pick((Resource.CHAIN, Resource.CPU, Resource.PCIE_D2H)),
            pick((Resource.PCIE_H2D,)),
            pick((Resource.DDR, Resource.CXL)),
        )

    def bound(self, features: np.ndarray) -> list[Resource]:
        """Which term binds at each step, for one feature vector."""
        labels, values = self._values(features)
        return [labels[k] for k in values.argmax(axis=0)]


def pass_start_fill(system: SystemSpec, ctx: StageContext) -> bool:
    """Whether a prefill pass is timed by ``prefill_pass_s`` (the double-buffered prefetch from the pass start)
    rather than the steady-state sum N_res T_res + K T: overlap mode, weights pinned and copied beside
    compute, and a system without CXL (a stream split between DDR and CXL layers is not a homogeneous
    pipeline; there the sum stays, an over-estimate by at most the hidden fill)."""
    return ctx.mode == CostMode.OVERLAP and ctx.overlap and ctx.pinned_weights and system.cxl is None


def prefill_pass_s(resident_s, streamed, compute_s, copy_s, throughput_s) -> np.ndarray:
    """One prefill pass of R resident layers (``resident_s`` = R T_res in all) then K = ``streamed`` layers
    whose weights stream into two GPU buffers, the first two queued at the pass start (runtime/weight_stream.py:
    a layer's GPU work waits for its whole copy; the copy of layer k+2 waits for layer k to free its buffer).
    With c = compute, W = copy, X = throughput of one streamed layer (StageTerms.fill_parts) the pass is the
    longest path of that two-buffer pipeline, for K >= 1:
      F1 = R T_res + K c                      the resident layers, then every layer's compute
      F2 = W + K c                            the first copy, then every compute
      F3 = K W + c                            every copy back to back, then the last compute
      F4 = R T_res + 2 c + (K - 2) W  (K >= 2)  the first compute frees buffer 0; copies 2..K-1, the last compute
      F5 = K X                                host memory carries K layers' traffic
    pass = max(F1..F5); K = 0: R T_res. (Every other path mixes these per-layer costs, c or W per layer,
    with the same entries and exits, so it is no longer than one of them.) The steady-state sum R T_res +
    K max(c, W, X) charged the resident layers and the stream in series: the first two copies run under the
    resident layers (over-estimate), while the first copy's wait before any streamed compute was missing
    (under-estimate at R = 0). Arrays broadcast."""
    r = np.asarray(resident_s, dtype=float)
    k = np.asarray(streamed, dtype=float)
    c, w, x = (np.asarray(v, dtype=float) for v in (compute_s, copy_s, throughput_s))
    f1 = r + k * c
    f2 = w + k * c
    f3 = k * w + c
    f4 = np.where(k >= 2, r + 2.0 * c + (k - 2.0) * w, -np.inf)
    f5 = k * x
    longest = functools.reduce(np.maximum, (f1, f2, f3, f4, f5))
    return np.where(k >= 1, longest, r + 0.0 * longest)


def _over_steps(value: np.ndarray | float, steps: int) -> np.ndarray:
    """``value`` (one number, or an array over the steps) as an array over the steps (a copy of a number;
    np.broadcast_to gives the same values at several times the cost)."""
    values = np.asarray(value, dtype=float)
    return values if values.shape == (steps,) else np.full(steps, values)


def _bw(gbps: float) -> float:
    return gbps * BYTES_PER_S_PER_GBPS


def _cpu_rate(system: SystemSpec, isa: CpuIsa, tokens: float, attention: bool, int8: bool = False) -> float:
    """FLOP/s of the CPU's ISA at ``tokens`` rows; ``int8``: the AMX int8 tiles (amx_int8) instead of bf16, with
    the same efficiency table (the same tile unit)."""
    spec = system.cpu.isa.get(isa)
    if spec is None or not spec.present:
        from lia_model.errors import LiaInputError

        present = ", ".join(i.value for i, s in system.cpu.isa.items() if s.present)
        raise LiaInputError("plan.cpu_isa", f"{system.cpu.name} has no {isa.value}", f"use one of: {present}")
    table = spec.attention_efficiency if attention else spec.matmul_efficiency
    per_core = system.cpu.amx_int8_per_core_tops if int8 else spec.per_core_tflops
    return system.cpu.cores * per_core * FLOPS_PER_TFLOPS * interpolate_efficiency(table, tokens)


def cpu_kv_passes(system: SystemSpec, ctx: StageContext) -> float:
    """Passes CPU attention makes over the KV cache it reads: the peer's ``ctx.cpu_kv_passes`` (1 for this
    project's runtime) x the kv_pass_factor of the plan's ISA's kernel (1 where the ISA is absent: the rate
    lookup reports that)."""
    spec = system.cpu.isa.get(ctx.cpu_isa)
    return ctx.cpu_kv_passes * (spec.kv_pass_factor if spec is not None else 1.0)


def _gpu_rate(system: SystemSpec, tokens: float, attention: bool, fp8: bool = False) -> float:
    """FLOP/s of the GPU at ``tokens`` rows: the bf16 peak, or with ``fp8`` the fp8 tensor-core peak, times
    the efficiency table."""
    table = system.gpu.attention_efficiency if attention else system.gpu.matmul_efficiency
    peak = system.gpu.fp8_peak_tflops if fp8 else system.gpu.bf16_peak_tflops
    return peak * FLOPS_PER_TFLOPS * interpolate_efficiency(table, tokens)


@dataclass(frozen=True)
class LinearKernel:
    """How a linear sublayer runs at a weight precision on one device.

    low_precision: the GEMM itself runs in the weights' precision (fp8 tensor cores on the GPU; AMX int8 tiles
        on the CPU with the activations quantised per token on the fly, IPEX's weight-only quantisation with
        lowp_mode INT8); its FLOPs go at that unit's peak.
    dequantises: a weight-only kernel: it unpacks each weight element to bf16 (scale, zero point) and runs the
        bf16 GEMM; the unpacking costs weight_elements_read / dequant rate of the device, on top of the FLOPs
        (it competes with them for the ALUs, not with the memory term: fused kernels read the packed bytes).
    """

    low_precision: bool
    dequantises: bool


def linear_kernel(
    system: SystemSpec, device: Device, precision: Precision, isa: Optional[CpuIsa] = None
) -> LinearKernel:
    """The kernel a linear sublayer uses (see LinearKernel); a precision the device cannot run is an error.

    bf16            bf16 GEMM on either device
    fp8_e4m3        GPU: fp8 tensor cores (needs gpu.fp8_peak_tflops: Hopper and later); CPU: weight-only
    int8            CPU with ISA amx_bf16 and cpu.amx_int8_per_core_tops: AMX int8; otherwise weight-only
    int4            weight-only on both (AWQ / GPTQ kernels dequantise on the fly)
    """
    w = precision.weight_dtype
    if w == WeightDtype.BF16:
        return LinearKernel(False, False)
    if device == Device.GPU:
        if w == WeightDtype.FP8_E4M3:
            if system.gpu.fp8_peak_tflops is None:
                raise LiaInputError(
                    "--weight-dtype",
                    f"fp8_e4m3 weights need fp8 tensor cores, which {system.gpu.name} "
                    f"(system {system.name}) does not have",
                    "use --weight-dtype int8 or bf16 on this system, or a Hopper system (e.g. spr-h100, gnr-h100)",
                )
            return LinearKernel(True, False)
        return _weight_only(system.gpu.dequant_gelems_per_s, "gpu", system.gpu.name, w)
    if w == WeightDtype.INT8 and isa == CpuIsa.AMX_BF16 and system.cpu.amx_int8_per_core_tops is not None:
        return LinearKernel(True, False)
    return _weight_only(system.cpu.dequant_gelems_per_s, "cpu", system.cpu.name, w)


def _weight_only(rate: Optional[float], device: str, name: str, dtype: WeightDtype) -> LinearKernel:
    if rate is None:
        raise LiaInputError(
            f"{device}.dequant_gelems_per_s",
            f"{dtype.value} weights run in a dequantising kernel on {name}, whose profile gives no dequantisation rate",
            f"add {device}.dequant_gelems_per_s to the profile (e.g. --set "
            f"{device}.dequant_gelems_per_s=1000), or use --weight-dtype bf16",
        )
    return LinearKernel(False, True)


def dequant_rate(system: SystemSpec, device: Device) -> Optional[float]:
    """Elements per second the device's dequantising kernels unpack (None: the profile does not say)."""
    gelems = system.gpu.dequant_gelems_per_s if device == Device.GPU else system.cpu.dequant_gelems_per_s
    return None if gelems is None else gelems * ELEMS_PER_GELEMS


def check_precision(system: SystemSpec, precision: Precision, mode: "CostMode | str" = "overlap") -> None:
    """One clear error when the system cannot run (or this model cannot price) the precision: fp8 weights
    without fp8 tensor cores, a dequantising kernel without a rate, calibrated kernel tables (measured in bf16),
    the paper mode (the authors' model is bf16)."""
    if precision.is_bf16:
        return
    if CostMode(mode) == CostMode.PAPER:
        raise LiaInputError(
            "--weight-dtype",
            "the paper mode is the LIA authors' bf16 model",
            "use --mode overlap or additive for other precisions",
        )
    if system.kernels is not None:
        measured = system.kernels.weight_dtypes()
        if (
            precision.weight_dtype.value not in measured
            or precision.weight_group_size is not None
            or precision.kv_dtype != KvDtype.BF16
        ):
            raise LiaInputError(
                "--weight-dtype",
                f"system {system.name} prices kernels from calibrated tables of {', '.join(sorted(measured))} weights "
                "per output channel with a bf16 KV cache, which say nothing of "
                f"{precision.label()}",
                "calibrate that dtype (python -m calibrate.kernel_tables --weight-dtypes ...), use a datasheet profile "
                "(e.g. spr-h100), or --weight-dtype bf16 --kv-dtype bf16",
            )
        return  # the tables are the measured kernels of that precision (no roofline rates needed)
    linear_kernel(system, Device.GPU, precision)
    linear_kernel(system, Device.CPU, precision, CpuIsa.AVX512_FP32)  # the weight-only path's rate
    if precision.kv_dtype != KvDtype.BF16:
        for device, name in ((Device.GPU, "gpu"), (Device.CPU, "cpu")):
            if dequant_rate(system, device) is None:
                raise LiaInputError(
                    f"{name}.dequant_gelems_per_s",
                    f"a {precision.kv_dtype.value} KV cache is "
                    "dequantised by attention, and the profile gives no dequantisation rate",
                    f"add {name}.dequant_gelems_per_s to the profile, or use --kv-dtype bf16",
                )


def chunk_work(model: ModelSpec, ctx: StageContext, chunk_batch: int) -> dict[Sublayer, SublayerWork]:
    """``sublayer_work`` of one chunk of ``chunk_batch`` sequences in the stage context (its q, contexts and
    precision: the same for every ISA and tier)."""
    return sublayer_work(model, chunk_batch, ctx.q, np.asarray(ctx.contexts, dtype=float), ctx.precision)


def _linear_kernels(system: SystemSpec, precision: Precision, isa: Optional[CpuIsa]) -> dict[Device, LinearKernel]:
    """The linear kernels ``sublayer_times`` prices on each device (see ``linear_kernel``)."""
    if system.kernels is not None and not precision.is_bf16:
        # calibrated tables of this precision (check_precision): the roofline below is only the fallback for
        # shapes the tables miss, priced as a bf16 GEMM over the stored bytes
        return {Device.CPU: LinearKernel(False, False), Device.GPU: LinearKernel(False, False)}
    return {
        Device.CPU: linear_kernel(system, Device.CPU, precision, isa),
        Device.GPU: linear_kernel(system, Device.GPU, precision),
    }


def _flop_s(
    system: SystemSpec,
    w: SublayerWork,
    rate: Callable[[float], float],
    device: Device,
    kernel: LinearKernel,
    kv_quantised: bool,
    kv_pass: float,
) -> np.ndarray | float:
    """A sublayer's FLOP time on one device: each group of products at its own rows (GQA: G*q; MoE experts: tokens
    per expert, see SublayerWork) at ``rate(rows)``, plus the dequantisation: weight elements of a weight-only
    kernel, K/V elements of attention over a quantised cache. (Scalars where a sublayer's work is the same every
    step: the rows of ``sublayer_times`` broadcast them over the steps.)"""
    flop_s = sum(np.asarray(f, dtype=float) / rate(rows) for rows, f in w.gemms)
    if kernel.dequantises or kv_quantised:
        elements = (w.weight_elements_read if kernel.dequantises else 0.0) + (
            kv_pass * np.asarray(w.kv_elements_read, dtype=float) if kv_quantised else 0.0
        )
        if np.any(elements > 0):
            flop_s = flop_s + elements / dequant_rate(system, device)
    return flop_s


def gpu_sublayer_times(
    system: SystemSpec, ctx: StageContext, work: dict[Sublayer, SublayerWork]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The GPU half of ``sublayer_times`` before kernel tables: each sublayer's time, whether its FLOPs term binds,
    and its memory time, [6, S] each. It reads the chunk's work and the context's precision, not its CPU ISA or host
    tiers: contexts that differ only in those can share it (``sublayer_times``' ``gpu``)."""
    precision = ctx.precision
    check_precision(system, precision, ctx.mode)
    kernel = _linear_kernels(system, precision, ctx.cpu_isa)[Device.GPU]
    kv_quantised = precision.kv_dtype != KvDtype.BF16
    hbm = _bw(system.gpu.hbm_gbps)
    shape = (NUM_SUBLAYERS, len(ctx.contexts))
    gpu_s, gpu_mem, gpu_cb = np.zeros(shape), np.zeros(shape), np.zeros(shape, dtype=bool)
    for i, sub in enumerate(SUBLAYERS):
        w: SublayerWork = work[sub]
        attention = sub in ATTENTION_SUBLAYERS
        rate = functools.partial(_gpu_rate, system, attention=attention, fp8=not attention and kernel.low_precision)
        flop_s = _flop_s(system, w, rate, Device.GPU, kernel, kv_quantised, system.gpu.kv_pass_factor)
        kv_read = np.asarray(w.kv_read_bytes, dtype=float)
        act_bytes = np.asarray(w.act_bytes, dtype=float)
        mem = (w.weight_bytes_read + system.gpu.kv_pass_factor * kv_read + w.kv_write_bytes + act_bytes) / hbm
        gpu_s[i] = np.maximum(flop_s, mem) + system.gpu.op_overhead_us * S_PER_US
        gpu_mem[i] = mem
        gpu_cb[i] = flop_s >= mem
    return gpu_s, gpu_cb, gpu_mem


def sublayer_times(
    system: SystemSpec,
    model: ModelSpec,
    ctx: StageContext,
    chunk_batch: int,
    work: Optional[dict[Sublayer, SublayerWork]] = None,
    gpu: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None,
) -> SublayerTimes:
    """Time of each sublayer for one chunk. With calibrated kernel tables (``system.kernels``): the measured
    time of the runtime's own sublayer function at that shape (linears) or the attention fit; otherwise the
    roofline max(sum over its products of FLOPs / rate(rows) + dequant, bytes / bandwidth) + overhead, where
    attention reads its KV cache cpu_kv_passes x the kernel's kv_pass_factor times (see the module docstring).

    Precision (ctx.precision): bytes are the stored bytes (lia_model.accounting); a linear's rate and its
    dequantisation follow ``linear_kernel`` (dequant = weight_elements_read / the device's dequant rate in a
    weight-only kernel); attention over an fp8 / int8 cache dequantises every K/V element it reads
    (kv passes x kv_elements_read / dequant rate) and computes in bf16.

    ``work``: the chunk's ``sublayer_work`` where the caller already has it (the same call's result); ``gpu``: its
    ``gpu_sublayer_times`` likewise (copied here: kernel tables write into the times)."""
    contexts = np.asarray(ctx.contexts, dtype=float)
    steps = len(contexts)
    precision = ctx.precision
    check_precision(system, precision, ctx.mode)
    if work is None:
        work = chunk_work(model, ctx, chunk_batch)
    gpu_s, gpu_cb, gpu_mem = gpu_sublayer_times(system, ctx, work) if gpu is None else (a.copy() for a in gpu)
    kernel = _linear_kernels(system, precision, ctx.cpu_isa)[Device.CPU]
    kv_quantised = precision.kv_dtype != KvDtype.BF16
    ddr = system.ddr
    w_tier = system.tier(ctx.weight_tier)
    kv_tier = system.tier(ctx.kv_tier)
    cpu_bw_w = _bw(min(system.cpu.memory_read_gbps, w_tier.read_gbps))
    cpu_bw_kv = _bw(min(system.cpu.memory_read_gbps, kv_tier.read_gbps))
    cpu_bw_act = _bw(min(system.cpu.memory_read_gbps, ddr.read_gbps))
    cpu_kv_pass = cpu_kv_passes(system, ctx)
    cpu_s, cpu_mem_s = np.zeros((NUM_SUBLAYERS, steps)), np.zeros((NUM_SUBLAYERS, steps))
    cpu_cb = np.zeros((NUM_SUBLAYERS, steps), dtype=bool)
    for i, sub in enumerate(SUBLAYERS):
        w: SublayerWork = work[sub]
        attention = sub in ATTENTION_SUBLAYERS
        rate = functools.partial(
            _cpu_rate, system, ctx.cpu_isa, attention=attention, int8=not attention and kernel.low_precision
        )
        flop_s = _flop_s(system, w, rate, Device.CPU, kernel, kv_quantised, cpu_kv_pass)
        kv_read = np.asarray(w.kv_read_bytes, dtype=float)
        act_bytes = np.asarray(w.act_bytes, dtype=float)
        mem = (
            w.weight_bytes_read / cpu_bw_w
            + (cpu_kv_pass * kv_read + w.kv_write_bytes) / cpu_bw_kv
            + act_bytes / cpu_bw_act
        )
        cpu_s[i] = np.maximum(flop_s, mem) + system.cpu.op_overhead_us * S_PER_US
        cpu_mem_s[i] = mem
        cpu_cb[i] = flop_s >= mem
    times = SublayerTimes(cpu_s, gpu_s, cpu_cb, gpu_cb, cpu_mem_s, gpu_mem, work=work)
    if system.kernels is not None:
        _apply_kernel_tables(system, model, ctx, chunk_batch, work, times, cpu_bw_w, cpu_bw_kv)
    return times


def _check_dtype_coverage(tables, model: ModelSpec, sub: Sublayer, k: int, n: int, dtype: str, use_cpu: bool) -> None:
    """A quantised workload on a shape whose bf16 kernel the tables hold but whose ``dtype`` kernel they do not is
    refused (its roofline fallback would price a kernel nobody measured beside measured ones)."""
    for device in ("gpu", "cpu") if use_cpu else ("gpu",):
        if tables.linear(device, sub.value, k, n) is not None and tables.linear(device, sub.value, k, n, dtype) is None:
            raise LiaInputError(
                "--weight-dtype",
                f"the kernel tables hold {model.name}'s {sub.value} ({k}x{n}) on the {device.upper()} in bf16 but not "
                f"in {dtype}",
                f"calibrate it: python -m calibrate.kernel_tables --weight-dtypes bf16,{dtype} --models {model.name} ...",
            )


def extra_issue_s(tables: KernelTables, table: LinearTable) -> float:
    """The host's extra time to issue a GPU linear of ``table``'s weight dtype over the bf16 kernel of the same shape:
    issue_dtype - issue_bf16 (>= 0; 0 without both measurements).

    The dispatch figure (``gpu_dispatch_us``) is an executor step's host time per sublayer with bf16 kernels. A kernel
    whose own issue takes longer (int8 and fp8 quantise, scale and dequantise in several launches) adds the
    difference; when the host is the slower side its sublayer lasts the whole issue time:
        t_gpu = max(t_table(tokens), dispatch + issue_dtype - issue_bf16)."""
    if table.issue_s is None or table.weight_dtype == "bf16":
        return 0.0
    base = tables.linear("gpu", table.sublayer, table.k, table.n, "bf16")
    if base is None or base.issue_s is None:
        return 0.0
    return max(0.0, table.issue_s - base.issue_s)


def _apply_kernel_tables(
    system: SystemSpec,
    model: ModelSpec,
    ctx: StageContext,
    chunk_batch: int,
    work: dict,
    times: SublayerTimes,
    cpu_bw_w: float,
    cpu_bw_kv: float,
) -> None:
    """Replace roofline times by the calibrated times of the runtime's kernels where the tables cover them.

    Linear sublayer at (K, N) with a table: t(tokens) interpolated (``table_seconds``); on the CPU at least the
    weight bytes over the weight tier's bandwidth (the table was measured from DDR; a CXL tier can be slower).
    GPU sublayer: max(device time, dispatch time): launches overlap the GPU's execution, so the host's
    launch cost bounds a sublayer only when it is the longer of the two (a kernel slower to issue than bf16's
    adds its difference to the dispatch: ``extra_issue_s``). Attention: the fits of the split
    kernels for attn_score / attn_context, and the fused kernel's fit through the fused delta."""
    tables = system.kernels
    contexts = np.asarray(ctx.contexts, dtype=float)
    dispatch_s = tables.gpu_dispatch_us * S_PER_US
    use_cpu = tables.cpu_isa == ctx.cpu_isa
    for i, sub in enumerate(SUBLAYERS):
        if sub in ATTENTION_SUBLAYERS or model.is_moe:
            continue
        w = work[sub]
        k, n = linear_shape(model, sub)
        dtype = ctx.precision.weight_dtype.value
        if dtype != "bf16":
            _check_dtype_coverage(tables, model, sub, k, n, dtype, use_cpu)
        t_gpu = tables.linear("gpu", sub.value, k, n, dtype)
        if t_gpu is not None:
            times.gpu_s[i] = max(table_seconds(t_gpu, w.tokens), dispatch_s + extra_issue_s(tables, t_gpu))
            times.gpu_compute_bound[i] = w.tokens >= 256
        t_cpu = tables.linear("cpu", sub.value, k, n, dtype) if use_cpu else None
        if t_cpu is not None:
            times.cpu_s[i] = max(table_seconds(t_cpu, w.tokens), w.weight_bytes_read / cpu_bw_w)
            times.cpu_compute_bound[i] = w.tokens >= 256
    phase = "decode" if ctx.q == 1 else "prefill"
    kinds = {"score": SUBLAYERS.index(Sublayer.ATTN_SCORE), "context": SUBLAYERS.index(Sublayer.ATTN_CONTEXT)}
    for device, arr, delta_name, enabled in (
        ("cpu", times.cpu_s, "cpu_fused_delta_s", use_cpu),
        ("gpu", times.gpu_s, "gpu_fused_delta_s", True),
    ):
        layout = "gqa" if model.num_heads != model.num_kv_heads else "mha"
        fits = {kind: tables.attention(device, kind, phase, layout) for kind in ("score", "context", "fused")}
        if not enabled or any(f is None for f in fits.values()):
            continue
        split = {}
        for kind, i in kinds.items():
            split[kind] = _attention_seconds(tables, fits[kind], device, phase, model, chunk_batch, ctx.q, contexts)
            if device == "cpu":  # KV in a slower tier than DDR: at least the KV bytes over that tier
                kv = work[SUBLAYERS[i]].kv_read_bytes
                split[kind] = np.maximum(split[kind], kv / cpu_bw_kv)
            else:
                split[kind] = np.maximum(split[kind], dispatch_s)
            arr[i] = split[kind]
        fused = _attention_seconds(tables, fits["fused"], device, phase, model, chunk_batch, ctx.q, contexts)
        if device == "cpu":
            kv = work[Sublayer.ATTN_SCORE].kv_read_bytes + work[Sublayer.ATTN_CONTEXT].kv_read_bytes
            fused = np.maximum(fused, kv / cpu_bw_kv)
        else:
            fused = np.maximum(fused, dispatch_s)
        setattr(times, delta_name, fused - split["score"] - split["context"])
        times.fused_attention = True


def _attention_seconds(
    tables: KernelTables,
    fit: AttentionFit,
    device: str,
    phase: str,
    model: ModelSpec,
    chunk_batch: int,
    q: int,
    contexts: np.ndarray,
) -> np.ndarray:
    """One attention kernel's time per context: on the CPU in prefill the measured grid where the shape lies
    inside it (lia_model/attention_grid.py), else the fit t = overhead + bytes + FLOPs + rows."""
    if device == "cpu" and phase == "prefill" and tables.cpu_attention_grid:
        measured = [
            prefill_seconds(
                tables.cpu_attention_grid,
                fit.kind,
                chunk_batch,
                model.num_heads,
                model.num_kv_heads,
                model.head_dim,
                int(c),
            )
            for c in contexts
        ]
        if all(t is not None for t in measured):
            return np.asarray(measured, dtype=float)
    nbytes, flops = attention_bytes_flops(model, chunk_batch, q, contexts, fit.kind)
    return fit.seconds(nbytes, flops, attention_rows(model, chunk_batch, q))


def streamed_layer_terms(
    system: SystemSpec,
    model: ModelSpec,
    ctx: StageContext,
    simulate_every: bool = False,
    times: Optional[SublayerTimes] = None,
    schedule_bound: bool | np.ndarray = False,
) -> StageTerms:
    """The epigraph terms (see module docstring) of one streamed layer in one stage. ``times``: the chunk's
    ``sublayer_times`` where the caller already has them (the same call's result). ``schedule_bound``: no
    vector is simulated and ``schedule_s`` holds a lower bound on each vector's schedule (see below), for
    callers that prune with it or do not read the schedule (lia_model.optimizer); a [64] bool array: the
    vectors it marks get that bound, the others what they get without it."""
    if ctx.mode == CostMode.PAPER:
        from lia_model.paper import paper_layer_terms

        return paper_layer_terms(system, model, ctx)
    n = ctx.minibatches
    b = ctx.batch // n
    steps = len(ctx.contexts)
    contexts = np.asarray(ctx.contexts, dtype=float)
    times = sublayer_times(system, model, ctx, b) if times is None else times
    # the chunk's work: the one its times were priced from, where they carry it
    work = times.work if times.work is not None else chunk_work(model, ctx, b)
    link = system.link
    lat = link.transfer_latency_us * S_PER_US
    w_tier, kv_tier, ddr = system.tier(ctx.weight_tier), system.tier(ctx.kv_tier), system.ddr
    w_link = link.h2d_gbps if ctx.pinned_weights else link.pageable_h2d_gbps
    bw_w_h2d = _bw(min(w_link, w_tier.read_gbps))
    bw_act_h2d, bw_act_d2h = _bw(min(link.h2d_gbps, ddr.read_gbps)), _bw(min(link.d2h_gbps, ddr.read_gbps))
    bw_kv_h2d, bw_kv_d2h = _bw(min(link.h2d_gbps, kv_tier.read_gbps)), _bw(min(link.d2h_gbps, kv_tier.read_gbps))

    def copy_s(nbytes: np.ndarray | float, bw: float) -> np.ndarray:
        """The copy time of ``nbytes`` per step ([S], or rows [..., S]); nothing to copy takes no time."""
        nbytes = nbytes if np.ndim(nbytes) == 2 else _over_steps(nbytes, steps)
        return np.where(nbytes > 0, nbytes / bw + lat, 0.0)

    # Weights: prefetched once per layer (all experts of an MoE layer), or, with on-demand experts, the
    # routed experts of the GPU MLP sublayers fetched after routing, on the chain (per chunk).
    weight_bytes = np.array([work[s].weight_bytes for s in SUBLAYERS])
    on_demand = np.zeros(NUM_SUBLAYERS)  # bytes fetched after routing, per chunk
    if model.is_moe and ctx.expert_fetch == ExpertFetch.ROUTED:
        for i in (_FC1, _FC2):
            routed = routed_expert_bytes(model, SUBLAYERS[i], ctx.precision)
            on_demand[i] = routed - (work[SUBLAYERS[i]].weight_bytes - work[SUBLAYERS[i]].weight_bytes_read)
            weight_bytes[i] -= routed
    weight_h2d_s = np.where(weight_bytes > 0, weight_bytes / bw_w_h2d + lat, 0.0)
    expert_h2d_s = copy_s(np.repeat(on_demand[:, None], steps, axis=1), bw_w_h2d)  # [6, S]

    # Activation crossing at boundary j (what sublayer j hands to j+1), one chunk.
    kv_width_bytes = 1.0 * b * ctx.q * model.kv_dim * kv_element_bytes(ctx.precision)  # new K (or new V)
    cross_bytes = np.stack([_over_steps(work[s].act_out_bytes, steps) for s in SUBLAYERS])
    cross_bytes_h2d = cross_bytes.copy()
    cross_bytes_h2d[_QKV] = cross_bytes_h2d[_QKV] + kv_width_bytes  # qkv on CPU -> score on GPU also ships new K
    cross_h2d_s = cross_bytes_h2d / bw_act_h2d + lat
    cross_d2h_s = cross_bytes / bw_act_d2h + lat

    # KV cache of streamed layers lives in the host tier: GPU attention fetches the cached part, and a GPU qkv
    # writes its new K and V back. With the cache in HBM (ctx.kv_on_gpu) neither crosses PCIe:
    #   k_cached = [KV in host] b (s - q) kv_dim e,   kv_write = [KV in host] 2 b q kv_dim e
    kv_in_host = 0.0 if ctx.kv_on_gpu else 1.0
    cached = np.maximum(contexts - ctx.q, 0.0)
    k_cached_bytes = kv_in_host * b * cached * model.kv_dim * kv_element_bytes(ctx.precision)
    k_cached_s = copy_s(k_cached_bytes, bw_kv_h2d)
    v_new_s = copy_s(kv_width_bytes, bw_kv_h2d)
    kv_write_bytes = kv_in_host * 2.0 * kv_width_bytes
    kv_write_s = copy_s(kv_write_bytes, bw_kv_d2h)

    def cpu_work_of(included: tuple[bool, ...]) -> Affine:
        """Per-chunk CPU time of the included sublayers that run on the CPU. Fused attention (kernel tables),
        both on the CPU: p_score - h2d[score] times the fused delta (counted with attn_context)."""
        work = Affine.zero(steps)
        for i in range(NUM_SUBLAYERS):
            if included[i]:
                work.add_feature(CPU[i], times.cpu_s[i])
        if included[_CTX]:
            work.add_feature(CPU[_SCORE], times.cpu_fused_delta_s).add_feature(H2D[_SCORE], -times.cpu_fused_delta_s)
        return work

    # the CPU work the weight DMA slows (see cpu_scale below): attention, and the linears whose roofline memory
    # term binds (the first step decides; a decode linear's rows do not change over the steps). A compute-bound
    # linear (an AMX GEMM of 256 and more rows) keeps its speed; attention has no such measurement and keeps the
    # calibrated slowdown.
    slowed = tuple(
        SUBLAYERS[i] in ATTENTION_SUBLAYERS or not bool(times.cpu_compute_bound[i, 0]) for i in range(NUM_SUBLAYERS)
    )
    # Per-chunk busy time of each resource (everything the chunk puts on it).
    cpu_c, cpu_m = cpu_work_of((True,) * NUM_SUBLAYERS), cpu_work_of(slowed)
    gpu_c = Affine.zero(steps)
    h2dx_c, d2h_c = Affine.zero(steps), Affine.zero(steps)
    for i in range(NUM_SUBLAYERS):
        gpu_c.add_not_cpu(i, times.gpu_s[i])
        h2dx_c.add_feature(H2D[i], cross_h2d_s[i])
        h2dx_c.add_not_cpu(i, expert_h2d_s[i])  # (1 - p_i) * routed experts fetched on demand
        d2h_c.add_feature(D2H[i], cross_d2h_s[i])
    # Fused attention, both on the GPU: (1 - p_score) - d2h[score] times the GPU's fused delta.
    gpu_c.add_not_cpu(_SCORE, times.gpu_fused_delta_s).add_feature(D2H[_SCORE], -times.gpu_fused_delta_s)
    h2dx_c.add_not_cpu(_SCORE, k_cached_s)  # (1 - p_score) * cached K
    h2dx_c.add_not_cpu(_CTX, k_cached_s)  # (1 - p_context) * cached V (same size as K)
    h2dx_c.add_feature(QKV_CPU_CTX_GPU, v_new_s)  # p_qkv (1 - p_context) * new V
    d2h_c.add_not_cpu(_QKV, kv_write_s)  # (1 - p_qkv) * new K and V written back to the host cache

    weights = Affine.zero(steps)
    for i in range(NUM_SUBLAYERS):
        if weight_h2d_s[i] > 0:
            weights.add_not_cpu(i, weight_h2d_s[i])

    # Host-memory traffic (bytes), per layer: CPU reads per chunk, weight DMA once, copies per chunk.
    cpu_kv_pass = cpu_kv_passes(system, ctx)
    tier_bytes = {HostTier.DDR: Affine.zero(steps), HostTier.CXL: Affine.zero(steps)}
    for i, sub in enumerate(SUBLAYERS):
        w = work[sub]
        tier_bytes[ctx.weight_tier].add_feature(CPU[i], n * w.weight_bytes_read)
        tier_bytes[ctx.weight_tier].add_not_cpu(i, weight_bytes[i] + n * on_demand[i])
        act = _over_steps(w.act_bytes, steps)
        tier_bytes[HostTier.DDR].add_feature(CPU[i], n * act)
        kv = _over_steps(cpu_kv_pass * w.kv_read_bytes + w.kv_write_bytes, steps)
        tier_bytes[ctx.kv_tier].add_feature(CPU[i], n * kv)
        tier_bytes[HostTier.DDR].add_feature(H2D[i], n * cross_bytes_h2d[i])
        tier_bytes[HostTier.DDR].add_feature(D2H[i], n * cross_bytes[i])
    tier_bytes[ctx.kv_tier].add_not_cpu(_SCORE, n * k_cached_bytes)
    tier_bytes[ctx.kv_tier].add_not_cpu(_CTX, n * k_cached_bytes)
    tier_bytes[ctx.kv_tier].add_feature(QKV_CPU_CTX_GPU, n * kv_width_bytes)
    tier_bytes[ctx.kv_tier].add_not_cpu(_QKV, n * kv_write_bytes)
    ddr_s = tier_bytes[HostTier.DDR].scaled(1.0 / _bw(ddr.read_gbps))

    resources = {
        Resource.CPU: cpu_c.scaled(n),
        Resource.GPU: gpu_c.scaled(n),
        Resource.PCIE_H2D: weights + h2dx_c.scaled(n),
        Resource.PCIE_D2H: d2h_c.scaled(n),
        Resource.DDR: ddr_s,
    }
    if system.cxl is not None:
        resources[Resource.CXL] = tier_bytes[HostTier.CXL].scaled(1.0 / _bw(system.cxl.read_gbps))

    terms: dict[str, tuple[Resource, Affine]] = {}
    schedule_s = None
    cpu_scale = None
    if ctx.mode == CostMode.ADDITIVE:
        # every operation of every chunk in series, the weight copy included
        terms["serial"] = (Resource.CHAIN, (cpu_c + gpu_c + h2dx_c + d2h_c).scaled(n) + weights)
    else:
        serial_weights = not (ctx.overlap and ctx.pinned_weights)
        # a profile of this project's runtime (kernel tables) whose weights stream beside compute: its CPU work
        # slows beside the DMA, and its critical H2D copies wait behind the weight feeder (lia_model.weight_feeder)
        runtime_beside_dma = system.kernels is not None and not serial_weights
        copy_wait_s = critical_copy_wait_s(bw_w_h2d) if runtime_beside_dma else 0.0
        # this project's runtime (kernel tables): a CPU call after the CPU waited pays the calibrated wake-up
        wake_s = system.kernels.cpu_wake_us * S_PER_US if system.kernels is not None else 0.0
        idle_s = system.kernels.cpu_idle_before_wake_us * S_PER_US if system.kernels is not None else 0.0
        # CPU busy time (its slowdown beside the weight DMA is on the chain below, which always exceeds this)
        terms["cpu"] = (Resource.CPU, cpu_c.scaled(n))
        # The H2D link: weights and activations,  T >= W + n h2dx_c  (Resource.PCIE_H2D's busy time); for this
        # project's runtime, also the weight DMA's own slowdown d beside the CPU's memory-bound work cpu_m
        # (calibrated: the feeder's rate alone over its rate beside a CPU GEMV or attention, 1.04-1.15 on the
        # GPU host). While the CPU runs, the stream moves 1/d as many bytes per second, so a stream that outlasts
        # the CPU work takes
        #     T >= W + n h2dx_c + (1 - 1/d) n cpu_m
        # (the CPU work's window taken at its unslowed length: a lower bound of its window beside the DMA). Where
        # the CPU work outlasts the stream, the CPU term T >= n cpu_c >= n cpu_m binds instead, and
        # max(c, W + (1 - 1/d) c) = max(c, min(W + (1 - 1/d) c, d W)) for c = n cpu_m: the same layer time as the
        # exact stretch, with an affine form the ILP can read.
        h2d_form = resources[Resource.PCIE_H2D]
        dma_slow = system.kernels.dma_slowdown_beside_cpu if runtime_beside_dma else 1.0
        if dma_slow > 1.0:
            h2d_form = h2d_form + cpu_m.scaled(n * (1.0 - 1.0 / dma_slow))
        terms["h2d"] = (Resource.PCIE_H2D, h2d_form)
        terms["d2h"] = (Resource.PCIE_D2H, resources[Resource.PCIE_D2H])
        terms["ddr"] = (Resource.DDR, ddr_s)
        if Resource.CXL in resources:
            terms["cxl"] = (Resource.CXL, resources[Resource.CXL])
        # The chunks' schedule on CPU, GPU and the copy queues, simulated for each policy vector (after the
        # weight copy when it cannot run beside compute). A schedule never exceeds the serial sum of its
        # operations; where even that sum is within the other terms, the vector is not simulated and the
        # table holds the sum (the layer time, the max of the terms, is the same either way).
        durations = ChunkDurations(
            times.cpu_s,
            times.gpu_s,
            cross_h2d_s,
            cross_d2h_s,
            k_cached_s,
            k_cached_s,
            v_new_s,
            kv_write_s,
            expert_h2d_s,
            times.cpu_fused_delta_s,
            times.gpu_fused_delta_s,
            times.fused_attention,
            copy_wait_s=copy_wait_s,
            cpu_slowed=slowed,
            cpu_wake_s=wake_s,
            cpu_idle_before_wake_s=idle_s,
        )
        start = weights.evaluate(ALL_POLICY_FEATURES) if serial_weights else np.zeros((NUM_POLICIES, steps))
        # The runtime's CPU work and critical copies beside the next layer's weight stream (kernel tables only):
        #   cpu_scale = 1 + min(s - 1, (1 - 1/s) W / (n cpu_m))   the mean slowdown of the CPU work the DMA slows,
        #       cpu_m (attention and the memory-bound linears: ``cpu_slowed``): during the DMA's W seconds it runs
        #       s times slower (calibrated: a bf16 GEMV beside pinned H2D), so its n cpu_m seconds grow by
        #       (s - 1) n cpu_m if the DMA outlasts it, else by (1 - 1/s) W. Compute-bound CPU linears (256 and
        #       more rows) keep their speed: they read DDR far below its bandwidth (the calibrator's contention
        #       probe, README "Contention": an AMX GEMM at 256 tokens beside H2D 1.01x; on the host, Llama-2-70B
        #       qkv at B = 256 ran at its solo time beside the stream, runtime/validation/wave2-f traces)
        #   stream_s  = W                                         the weights stream from the layer's start
        #   s = (s_attn A + s_lin M) / (A + M)   where the profile measured attention's own slowdown s_attn
        #       (cpu_attention_slowdown_beside_dma) beside the linears' s_lin: the work-weighted mean over the
        #       vector's slowed CPU attention A and memory-bound CPU linears M; else s = s_lin
        # (the slowdown was a layer bound only; on the chain, between GPU sublayers and copies, it was missed:
        # wave2-a4/, wave2-b4/ traces)
        cpu_slowed_work = cpu_m.scaled(n).evaluate(ALL_POLICY_FEATURES)
        stream_s = np.zeros((NUM_POLICIES, steps)) if serial_weights else weights.evaluate(ALL_POLICY_FEATURES)
        cpu_scale = np.ones((NUM_POLICIES, steps))
        extra = np.zeros((NUM_POLICIES, steps))
        if runtime_beside_dma:
            slow = system.kernels.cpu_slowdown_beside_dma
            slow_attn = system.kernels.cpu_attention_slowdown_beside_dma
            if slow_attn is not None:
                attn_only = tuple(slowed[i] and SUBLAYERS[i] in ATTENTION_SUBLAYERS for i in range(NUM_SUBLAYERS))
                attn_work = cpu_work_of(attn_only).scaled(n).evaluate(ALL_POLICY_FEATURES)
                some = cpu_slowed_work > 0
                weighted = slow_attn * attn_work + slow * (cpu_slowed_work - attn_work)
                slow = np.where(some, weighted / np.where(some, cpu_slowed_work, 1.0), slow)
            extra = np.minimum((slow - 1.0) * cpu_slowed_work, (1.0 - 1.0 / slow) * stream_s)
            has = cpu_slowed_work > 0
            cpu_scale = np.where(has, 1.0 + extra / np.where(has, cpu_slowed_work, 1.0), 1.0)
        bounded = np.broadcast_to(np.asarray(schedule_bound, dtype=bool), (NUM_POLICIES,))
        if bounded.any():
            # A schedule is never shorter than its GPU queue, which runs the n chunks' GPU sublayers one after
            # another:  schedule >= n gpu_c  (float sums in another order: callers leave a margin)
            lower_s = gpu_c.scaled(n).evaluate(ALL_POLICY_FEATURES)
        if bounded.all():
            schedule_s = lower_s
        else:
            # A schedule never exceeds the serial sum of its operations (with the slowed CPU work, a feeder wait
            # for each host-to-device copy: at most 6 per chunk, so 10 n is a safe over-count, and a wake-up for
            # each CPU sublayer of each chunk at most).
            cpu_calls = ALL_POLICY_FEATURES[:, list(CPU)].sum(axis=1)[:, None]
            schedule_s = (
                start
                + cpu_c.scaled(n).evaluate(ALL_POLICY_FEATURES)
                + extra
                + (gpu_c + h2dx_c + d2h_c).scaled(n).evaluate(ALL_POLICY_FEATURES)
                + 10 * n * copy_wait_s
                + n * wake_s * cpu_calls
            )
            others = np.stack([form.evaluate(ALL_POLICY_FEATURES) for _, form in terms.values()]).max(axis=0)
            busy = np.flatnonzero((np.any(schedule_s > others, axis=1) | simulate_every) & ~bounded)
            if busy.size:
                schedule_s[busy] = simulate_all(
                    n,
                    durations,
                    start[busy],
                    ALL_POLICY_FEATURES[busy, :NUM_SUBLAYERS],
                    cpu_scale=cpu_scale[busy],
                    stream_s=stream_s[busy],
                )
            if bounded.any():
                schedule_s[bounded] = lower_s[bounded]
    kv_copy_s = np.zeros((NUM_SUBLAYERS, steps))
    kv_copy_s[_QKV] = kv_write_s
    kv_copy_s[_SCORE] = k_cached_s
    kv_copy_s[_CTX] = k_cached_s
    kv_copy_s[_FC1] = expert_h2d_s[_FC1]
    kv_copy_s[_FC2] = expert_h2d_s[_FC2]
    return StageTerms(
        ctx, terms, times, weight_h2d_s, cross_h2d_s, cross_d2h_s, kv_copy_s, resources, cpu_scale, slowed, schedule_s
    )


def resident_layer_time(
    system: SystemSpec, model: ModelSpec, ctx: StageContext, times: Optional[SublayerTimes] = None
) -> tuple[np.ndarray, SublayerTimes]:
    """A GPU-resident layer: all sublayers on the GPU with weights and KV in HBM, n chunks in series.
    ``times``: the chunk's ``sublayer_times`` where the caller already has them."""
    if ctx.mode == CostMode.PAPER:
        from lia_model.paper import paper_resident_layer_s

        return paper_resident_layer_s(system, model, ctx)
    n = ctx.minibatches
    times = sublayer_times(system, model, ctx, ctx.batch // n) if times is None else times
    return n * times.all_gpu_s(), times


def head_time_s(
    system: SystemSpec, model: ModelSpec, batch: int, device: Device = Device.GPU, cpu_isa: CpuIsa | None = None
) -> float:
    """LM head for the last position of each sequence, on the device holding the embeddings (the plan's
    ``head_device``): max(FLOPs / rate(B), weight bytes / bandwidth) + launch overhead, with the weights in
    HBM on the GPU, or in DDR read at min(CPU read, DDR read) with the plan's ISA on the CPU. The last
    hidden state (B h bf16) that may cross PCIe to reach it is not charged (under 0.1 ms at B = 1024)."""
    flops = head_flops(model, batch)
    weight_bytes = 2.0 * model.vocab_size * model.hidden_size
    if device == Device.CPU:
        isa = cpu_isa if cpu_isa is not None else system.cpu.best_isa()
        return roofline_s(
            flops,
            _cpu_rate(system, isa, batch, attention=False),
            weight_bytes,
            _bw(min(system.cpu.memory_read_gbps, system.ddr.read_gbps)),
            system.cpu.op_overhead_us * S_PER_US,
        )
    return roofline_s(
        flops,
        _gpu_rate(system, batch, attention=False),
        weight_bytes,
        _bw(system.gpu.hbm_gbps),
        system.gpu.op_overhead_us * S_PER_US,
    )
