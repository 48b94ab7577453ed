"""FlexGen's own policy search, reimplemented: the peer's choice of where weights, KV cache and activations live.

FlexGen (Sheng et al., "FlexGen: High-Throughput Generative Inference of Large Language Models with a Single
GPU", ICML 2023, section 4; the LP of its ``experimental/cost_model.py``, read to learn it, not copied) picks
its policy with a linear program per (block size bls, GPU batch size gbs), bls = gbs x num_gpu_batches.

Variables: the fractions of the weights (w), the KV cache (c) and the activations ("hidden", h) that live on
the GPU (g) and on the CPU (c). FlexGen also has a disk tier; our systems have none, so its disk fractions are
zero here (exactly FlexGen's LP run with ``--nvme-mem 0``). The LP minimises the time per generated sequence,
T / bls, with (per layer; l layers, s prompt tokens, n generated tokens, wi the weight bytes of one layer):

  T      = l Tpre + l (n - 1) Tgen
  Tpre  >= ctogp,  Tpre >= gtocp,  Tpre >= compp                     prefill: copies overlap compute
  Tgen  >= ctogg + gtocg,  Tgen >= ctogg + compg                     decode: the weight copy does not overlap
  ctogp  = (wi wc + H s bls hc) / ctog_bw                            weights and hidden states CPU -> GPU
  gtocp  = KV (s + 1) bls cc / gtoc_cache_bw + H s bls hc / gtoc_hidden_bw      new cache and hidden GPU -> CPU
  compp  = bls s F_lin / mm_p + bls s^2 F_att / bmm_p                GPU linears and attention
  ctogg  = (wi wc + H bls hc) / ctog_bw
  gtocg  = H bls hc / gtoc_hidden_bw
  compg  = bls F_lin / mm_g + bls (s + n/2) F_att cg / bmm_g + bls (s + n/2) F_att cc / cpu_real
with H the hidden bytes of one token (2 h1 for OPT), KV the K and V bytes of one token in one layer (4 h1),
F_lin the linear FLOPs of one token in one layer (8 h1^2 + 4 h1 h2) and F_att the attention FLOPs per token
per cached token (4 h1). cpu_real is FlexGen's CPU attention rate corrected for small gbs and h1:
  cpu_real = cpu_flops max(0.1, 1 + c1 a b - c2 a - c3 b),  a = max(0, log2(64 / gbs)),  b = max(0, log2(4096 / h1))
(FlexGen's CPU attention runs only on the cache it keeps on the CPU: its ``cpu_cache_compute``.)
Memory, each at most alpha (0.8 in FlexGen) of the device: the GPU and the CPU at the peak of prefill and of
decode (the formulas are at each constraint in ``solve_policy_lp``).

The search (FlexGen's ``solve``): gbs runs over 1, 2, 3, 4, 8, 16, ...; for each, the largest feasible number
of GPU batches nb_ub is found by doubling and bisection, then nb = 1 .. nb_ub is solved until the throughput
drops; the best throughput wins, and the search ends at the first gbs that does not fit at all. For a fixed
batch B (a latency query) FlexGen's user gives gbs and nb: here every gbs of that sequence dividing B is tried
with nb = B / gbs.

``system_hardware`` turns one of our systems into FlexGen's hardware constants, the way FlexGen asks its users
to fit them to their device: each rate is our cost model's own time for that work (at the GPU batch size the
search is trying), so FlexGen's LP sees the same machine the optimiser sees. ``flexgen_plan`` maps a FlexGen
policy onto a Plan: the weights FlexGen keeps on the GPU become whole resident layers of the same bytes, the
prefill runs on the GPU in num_gpu_batches chunks, decode attention runs on the CPU where FlexGen keeps the
cache there, with AVX-512 in fp32 and FLEXGEN_CPU_KV_PASSES passes over the cache.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional

import numpy as np

from lia_model.accounting import kv_bytes_per_token_per_layer, layer_weight_bytes, sublayer_work
from lia_model.costterms import CostMode, StageContext, sublayer_times
from lia_model.hardware import SystemSpec
from lia_model.models import ModelSpec
from lia_model.plan import ALL_GPU, ATTENTION_ON_CPU, CpuIsa, Device, HostTier, Plan
from lia_model.sublayers import ATTENTION_SUBLAYERS, SUBLAYERS, WEIGHTED_SUBLAYERS
from lia_model.units import BF16_BYTES, BYTES_PER_GIB, BYTES_PER_S_PER_GBPS
from lia_model.workload import MAX_BATCH, Workload

# FlexGen's CPU attention ("cpu_cache_compute", FlexGen 0.1.8 flex_opt.py load_cache path 1 and
# pytorch_backend.py mha_gen) first copies the cached K and V (fp16, 2 bytes per element) into an fp32
# workspace, then runs torch.bmm on the fp32 copy. Per cached element that moves 2 (read fp16) + 4 (write fp32)
# + 4 (read fp32 in the product) = 10 bytes, five times the 2 bytes of one bf16 read. The permute/reshape views
# it takes of the workspace keep their shapes, so they make no further copy.
FLEXGEN_CPU_KV_PASSES = 5.0
FLEXGEN_MEMORY_FRACTION = 0.8  # FlexGen's alpha_g = alpha_c: the LP may use 80 % of each device
_LINEAR = tuple(i for i, s in enumerate(SUBLAYERS) if s in WEIGHTED_SUBLAYERS)
_ATTENTION = tuple(i for i, s in enumerate(SUBLAYERS) if s in ATTENTION_SUBLAYERS)


@dataclass(frozen=True)
class FlexGenShape:
    """The model and workload as FlexGen's cost model sees them: one decoder layer, fp16/bf16 bytes."""

    num_layers: int  # l
    prompt_len: int  # s
    gen_len: int  # n
    hidden_size: int  # h1
    ffn_size: int  # h2
    num_heads: int  # nh
    layer_weight_bytes: float  # wi: 8 h1^2 + 4 h1 h2 for OPT (FlexGen leaves out biases and norms)
    linear_flops_per_token: float  # F_lin: 8 h1^2 + 4 h1 h2
    attention_flops_per_context: float  # F_att: 4 h1 (Q K^T and S V, per token per cached token)
    kv_bytes_per_token: float  # KV: 4 h1 (K and V of one token in one layer)
    hidden_bytes_per_token: float  # H: 2 h1

    @classmethod
    def opt(
        cls, num_layers: int, hidden_size: int, ffn_size: int, num_heads: int, prompt_len: int, gen_len: int
    ) -> "FlexGenShape":
        """FlexGen's own formulas for an OPT model (what its cost_model.py computes from the OPT config)."""
        h1, h2 = hidden_size, ffn_size
        return cls(
            num_layers,
            prompt_len,
            gen_len,
            h1,
            h2,
            num_heads,
            layer_weight_bytes=8.0 * h1**2 + 4.0 * h1 * h2,
            linear_flops_per_token=8.0 * h1**2 + 4.0 * h1 * h2,
            attention_flops_per_context=4.0 * h1,
            kv_bytes_per_token=4.0 * h1,
            hidden_bytes_per_token=2.0 * h1,
        )

    @classmethod
    def from_model(cls, model: ModelSpec, prompt_len: int, gen_len: int) -> "FlexGenShape":
        """The same quantities from this project's accounting: the weight bytes are those a Plan moves (biases
        and norms included), GQA shrinks the KV bytes, gated and MoE MLPs change F_lin; for OPT every other
        quantity equals FlexGen's formula."""
        one = sublayer_work(model, 1, 1, 1)
        return cls(
            model.num_layers,
            prompt_len,
            gen_len,
            model.hidden_size,
            model.ffn_size,
            model.num_heads,
            layer_weight_bytes=layer_weight_bytes(model),
            linear_flops_per_token=float(sum(one[SUBLAYERS[i]].flops for i in _LINEAR)),
            attention_flops_per_context=float(sum(one[SUBLAYERS[i]].flops for i in _ATTENTION)),
            kv_bytes_per_token=kv_bytes_per_token_per_layer(model),
            hidden_bytes_per_token=float(model.hidden_size * BF16_BYTES),
        )


@dataclass(frozen=True)
class FlexGenHardware:
    """The constants of FlexGen's cost model (its CostModelConfig), in SI units: bytes, bytes/s, FLOP/s."""

    gpu_memory_bytes: float  # gmem
    cpu_memory_bytes: float  # cmem
    ctog_bytes_per_s: float  # ctog_bdw: CPU -> GPU (weights, hidden states)
    gtoc_cache_bytes_per_s: float  # gtoc_bdw_cache: new KV GPU -> CPU
    gtoc_hidden_bytes_per_s: float  # gtoc_bdw_hidden
    mm_flops_prefill: float  # mm_flops_p: GPU linears in prefill
    mm_flops_decode: float  # mm_flops_g
    bmm_flops_prefill: float  # bmm_flops_p: GPU attention in prefill
    bmm_flops_decode: float  # bmm_flops_g
    cpu_flops: float  # cpu_flops: CPU attention in decode
    c1: float = 0.0  # FlexGen's small-batch / small-h1 correction of cpu_flops
    c2: float = 0.0
    c3: float = 0.0
    gpu_memory_fraction: float = FLEXGEN_MEMORY_FRACTION  # alpha_g
    cpu_memory_fraction: float = FLEXGEN_MEMORY_FRACTION  # alpha_c

    def cpu_flops_real(self, gpu_batch_size: int, hidden_size: int) -> float:
        """cpu_flops max(0.1, 1 + c1 a b - c2 a - c3 b), a = max(0, log2(64 / gbs)), b = max(0, log2(4096 / h1))."""
        a = max(0.0, math.log2(64 / gpu_batch_size))
        b = max(0.0, math.log2(4096 / hidden_size))
        return self.cpu_flops * max(0.1, 1.0 + self.c1 * a * b - self.c2 * a - self.c3 * b)


@dataclass(frozen=True)
class FlexGenPolicy:
    """FlexGen's policy (its Policy class without the fixed switches): batch and placement fractions (0..1)."""

    gpu_batch_size: int
    num_gpu_batches: int
    weights_gpu: float
    weights_cpu: float
    cache_gpu: float
    cache_cpu: float
    activations_gpu: float
    activations_cpu: float

    @property
    def block_size(self) -> int:
        """bls: sequences that share one pass of the weights."""
        return self.gpu_batch_size * self.num_gpu_batches

    def percent(self) -> tuple[int, int, int, int, int, int]:
        """FlexGen's ``--percent``: whole percents of weights, cache, activations on GPU and CPU. The GPU share
        is rounded down (never more GPU memory than the LP allowed), the CPU takes the rest."""
        out: list[int] = []
        for on_gpu in (self.weights_gpu, self.cache_gpu, self.activations_gpu):
            g = int(math.floor(100.0 * on_gpu + 1e-6))
            out += [g, 100 - g]
        return tuple(out)  # type: ignore[return-value]


@dataclass(frozen=True)
class FlexGenSolution:
    """FlexGen's LP at one (bls, gbs): the policy and FlexGen's own predicted times."""

    policy: FlexGenPolicy
    gen_len: int  # n
    total_s: float  # T: prefill and decode of one block of bls sequences
    prefill_s: float  # l Tpre
    decode_s: float  # l (n - 1) Tgen
    gpu_peak_bytes: float  # max(prefill, decode) GPU peak in FlexGen's accounting
    cpu_peak_bytes: float

    @property
    def throughput_tokens_per_s(self) -> float:
        """bls n / T, FlexGen's predicted generation throughput."""
        return self.policy.block_size * self.gen_len / self.total_s


# The LP in the placement x = (wg, cg, hg): with no disk, wc = 1 - wg, cc = 1 - cg, hc = 1 - hg, and every
# quantity of FlexGen's LP is an affine form const + coef . x. ``_lp_forms`` builds them once (for an array of
# block sizes at one gbs); the PuLP model and the vertex enumerator both read them.
_X = ("wg", "cg", "hg")
_TIME_FORMS = ("ctogp", "gtocp", "compp", "ctogg", "gtocg", "compg")
_GPU_ROWS = ("gpu_prefill", "gpu_decode")
_CPU_ROWS = ("cpu_prefill", "cpu_decode")


@dataclass(frozen=True)
class _Forms:
    """Affine forms over x = (wg, cg, hg), one row per block size: const[name] [K], coef[name] [K, 3]."""

    block_sizes: np.ndarray
    const: dict[str, np.ndarray]
    coef: dict[str, np.ndarray]
    gpu_cap_bytes: float
    cpu_cap_bytes: float

    def value(self, name: str, x: np.ndarray) -> np.ndarray:
        """Form ``name`` at points x [K, ..., 3] -> [K, ...]."""
        c = self.coef[name].reshape((len(self.block_sizes),) + (1,) * (x.ndim - 2) + (3,))
        return self.const[name].reshape((-1,) + (1,) * (x.ndim - 2)) + (x * c).sum(axis=-1)


def _lp_forms(shape: FlexGenShape, hw: FlexGenHardware, block_sizes: np.ndarray, gpu_batch_size: int) -> _Forms:
    l, s, n = shape.num_layers, shape.prompt_len, shape.gen_len
    h1, h2, nh = shape.hidden_size, shape.ffn_size, shape.num_heads
    wi, f_lin, f_att = shape.layer_weight_bytes, shape.linear_flops_per_token, shape.attention_flops_per_context
    kv, hid, half_kv = shape.kv_bytes_per_token, shape.hidden_bytes_per_token, shape.kv_bytes_per_token / 2.0
    bls = np.asarray(block_sizes, dtype=float)
    gbs = float(gpu_batch_size)
    zero = np.zeros_like(bls)
    const: dict[str, np.ndarray] = {}
    coef: dict[str, np.ndarray] = {}

    def form(name: str, c0, c_wg=0.0, c_cg=0.0, c_hg=0.0) -> None:
        const[name] = zero + c0
        coef[name] = np.stack([zero + c_wg, zero + c_cg, zero + c_hg], axis=-1)

    ctog, gtoc_c, gtoc_h = hw.ctog_bytes_per_s, hw.gtoc_cache_bytes_per_s, hw.gtoc_hidden_bytes_per_s
    # ctogp = (wi wc + H s bls hc) / ctog_bw:  the CPU's weights and hidden states come to the GPU (prefill)
    form("ctogp", (wi + hid * s * bls) / ctog, c_wg=-wi / ctog, c_hg=-hid * s * bls / ctog)
    # gtocp = KV (s + 1) bls cc / gtoc_cache_bw + H s bls hc / gtoc_hidden_bw:  new cache and hidden go out
    form(
        "gtocp",
        kv * (s + 1) * bls / gtoc_c + hid * s * bls / gtoc_h,
        c_cg=-kv * (s + 1) * bls / gtoc_c,
        c_hg=-hid * s * bls / gtoc_h,
    )
    # compp = bls s F_lin / mm_p + bls s^2 F_att / bmm_p:  all prefill compute is on the GPU
    form("compp", bls * s * f_lin / hw.mm_flops_prefill + bls * s * s * f_att / hw.bmm_flops_prefill)
    # ctogg = (wi wc + H bls hc) / ctog_bw  (decode, per token)
    form("ctogg", (wi + hid * bls) / ctog, c_wg=-wi / ctog, c_hg=-hid * bls / ctog)
    # gtocg = H bls hc / gtoc_hidden_bw
    form("gtocg", hid * bls / gtoc_h, c_hg=-hid * bls / gtoc_h)
    # compg = bls F_lin / mm_g + bls (s + n/2) F_att cg / bmm_g + bls (s + n/2) F_att cc / cpu_real:
    # decode attention runs where the cache lives (FlexGen's cpu_cache_compute)
    cpu_real = hw.cpu_flops_real(gpu_batch_size, h1)
    att = bls * (s + n / 2.0) * f_att
    form("compg", bls * f_lin / hw.mm_flops_decode + att / cpu_real, c_cg=att / hw.bmm_flops_decode - att / cpu_real)

    # GPU peak, prefill:  home = wi l wg + H s bls hg + KV (s + n) bls l cg;
    #   working = 2 wi (1 - wg) + H s gbs (1 - hg) + inter_p, with FlexGen's largest intermediate set
    #   inter_p = 8 gbs s h1 + gbs (2 s h1 + 2 nh s^2) + 2 gbs s h1 + 4 gbs s h1 + 2 gbs s h2 + 2 gbs s h1
    inter_p = (
        8 * gbs * s * h1
        + gbs * (2 * s * h1 + 2 * nh * s * s)
        + gbs * 2 * s * h1
        + 4 * gbs * s * h1
        + 2 * gbs * s * h2
        + 2 * gbs * s * h1
    )
    form(
        "gpu_prefill",
        2 * wi + hid * s * gbs + inter_p,
        c_wg=wi * l - 2 * wi,
        c_cg=kv * (s + n) * bls * l,
        c_hg=hid * s * bls - hid * s * gbs,
    )
    # GPU peak, decode:  home = wi l wg + H bls hg + KV (s + n) bls l cg;
    #   working = 2 wi (1 - wg) + H gbs (1 - hg) + KV gbs (s + n) cg + inter_g, with
    #   inter_g = 8 gbs h1 + gbs (2 h1 + (KV/2)(s + n) + 2 nh (s + n)) cg + gbs ((KV/2)(s + n) + 2 h1) cg
    #             + 4 gbs h1 + 2 gbs h2 + 2 gbs h1          (KV/2 = 2 h1 for OPT: K or V of one token)
    inter_g0 = 8 * gbs * h1 + 4 * gbs * h1 + 2 * gbs * h2 + 2 * gbs * h1
    inter_g_cg = gbs * (2 * h1 + half_kv * (s + n) + 2 * nh * (s + n)) + gbs * (half_kv * (s + n) + 2 * h1)
    form(
        "gpu_decode",
        2 * wi + hid * gbs + inter_g0,
        c_wg=wi * l - 2 * wi,
        c_cg=kv * (s + n) * bls * l + kv * gbs * (s + n) + inter_g_cg,
        c_hg=hid * bls - hid * gbs,
    )
    # CPU peak, prefill:  home = wi l wc + H s bls hc + KV s bls l cc;  working = wi (1 - wg) + H s gbs (1 - hg)
    form(
        "cpu_prefill",
        wi * l + hid * s * bls + kv * s * bls * l + wi + hid * s * gbs,
        c_wg=-wi * l - wi,
        c_cg=-kv * s * bls * l,
        c_hg=-hid * s * bls - hid * s * gbs,
    )
    # CPU peak, decode:  home = wi l wc + H bls hc + KV (s + n) bls l cc;  working = 2 nh (s + n) gbs + H gbs
    form(
        "cpu_decode",
        wi * l + hid * bls + kv * (s + n) * bls * l + 2 * nh * (s + n) * gbs + hid * gbs,
        c_wg=-wi * l,
        c_cg=-kv * (s + n) * bls * l,
        c_hg=-hid * bls,
    )
    # Capacities: home + working <= alpha gmem on the GPU, <= alpha cmem on the CPU
    return _Forms(
        bls, const, coef, hw.gpu_memory_bytes * hw.gpu_memory_fraction, hw.cpu_memory_bytes * hw.cpu_memory_fraction
    )


def _total_time(forms: _Forms, shape: FlexGenShape, x: np.ndarray) -> np.ndarray:
    """T = l max(ctogp, gtocp, compp) + l (n - 1) (ctogg + max(gtocg, compg)), at points x [K, ..., 3]."""
    v = {k: forms.value(k, x) for k in _TIME_FORMS}
    t_pre = np.maximum(np.maximum(v["ctogp"], v["gtocp"]), v["compp"])
    t_gen = v["ctogg"] + np.maximum(v["gtocg"], v["compg"])
    return shape.num_layers * t_pre + shape.num_layers * (shape.gen_len - 1) * t_gen


def _solutions(
    shape: FlexGenShape, forms: _Forms, x: np.ndarray, found: np.ndarray, gpu_batch_size: int
) -> list[Optional[FlexGenSolution]]:
    """The solutions at the placements x [K, 3] (None where ``found`` is False), all blocks at once."""
    x = np.clip(np.where(found[:, None], x, 0.0), 0.0, 1.0)
    pts = x[:, None, :]  # [K, 1, 3]
    v = {name: forms.value(name, pts)[:, 0] for name in (*_TIME_FORMS, *_GPU_ROWS, *_CPU_ROWS)}
    l, n = shape.num_layers, shape.gen_len
    t_pre = np.maximum(np.maximum(v["ctogp"], v["gtocp"]), v["compp"])
    t_gen = v["ctogg"] + np.maximum(v["gtocg"], v["compg"])
    gpu_peak = np.maximum(v["gpu_prefill"], v["gpu_decode"])
    cpu_peak = np.maximum(v["cpu_prefill"], v["cpu_decode"])
    out: list[Optional[FlexGenSolution]] = []
    for k in range(len(found)):
        if not found[k]:
            out.append(None)
            continue
        wg, cg, hg = (float(c) for c in x[k])
        policy = FlexGenPolicy(
            gpu_batch_size, int(forms.block_sizes[k]) // gpu_batch_size, wg, 1.0 - wg, cg, 1.0 - cg, hg, 1.0 - hg
        )
        out.append(
            FlexGenSolution(
                policy,
                n,
                total_s=float(l * t_pre[k] + l * (n - 1) * t_gen[k]),
                prefill_s=float(l * t_pre[k]),
                decode_s=float(l * (n - 1) * t_gen[k]),
                gpu_peak_bytes=float(gpu_peak[k]),
                cpu_peak_bytes=float(cpu_peak[k]),
            )
        )
    return out


def _solve_pulp(shape: FlexGenShape, forms: _Forms, k: int, solver: str) -> Optional[np.ndarray]:
    """The LP of block k in PuLP: minimise T / bls over x in [0, 1]^3 with the epigraph variables
    Tpre >= ctogp, gtocp, compp;  Tgen >= ctogg + gtocg, ctogg + compg;  each memory row <= its capacity."""
    import pulp

    prob = pulp.LpProblem("flexgen_policy", pulp.LpMinimize)
    x = [pulp.LpVariable(name, lowBound=0, upBound=1) for name in _X]
    tpre, tgen = pulp.LpVariable("Tpre", lowBound=0), pulp.LpVariable("Tgen", lowBound=0)

    def expr(name: str):
        return float(forms.const[name][k]) + pulp.lpSum(float(c) * v for c, v in zip(forms.coef[name][k], x))

    l, n, bls = shape.num_layers, shape.gen_len, float(forms.block_sizes[k])
    prob += (l * tpre + l * (n - 1) * tgen) * (1.0 / bls)  # T / bls,  T = l Tpre + l (n - 1) Tgen
    for name in ("ctogp", "gtocp", "compp"):  # Tpre >= max(ctogp, gtocp, compp)
        prob += tpre >= expr(name)
    prob += tgen >= expr("ctogg") + expr("gtocg")  # Tgen >= ctogg + max(gtocg, compg)
    prob += tgen >= expr("ctogg") + expr("compg")
    for name in _GPU_ROWS:  # GPU peaks <= alpha_g gmem
        prob += expr(name) <= forms.gpu_cap_bytes
    for name in _CPU_ROWS:  # CPU peaks <= alpha_c cmem
        prob += expr(name) <= forms.cpu_cap_bytes
    if solver == "cbc":
        backend = pulp.PULP_CBC_CMD(msg=False)
    else:
        backend = pulp.HiGHS(msg=False)
        if not backend.available():
            raise ValueError("the highs solver needs the highspy package; use cbc or enumerate")
    status = prob.solve(backend)
    if pulp.LpStatus[status] != "Optimal":
        return None
    return np.asarray([float(v.value()) for v in x])


# Planes whose triple intersections hold every vertex of the LP in x: the box, the memory rows at capacity,
# and the breakpoints of the two maxima (where two terms of Tpre, or gtocg and compg, are equal).
_BREAKS = (("ctogp", "gtocp"), ("ctogp", "compp"), ("gtocp", "compp"), ("gtocg", "compg"))
_TRIPLES = np.asarray(
    [
        t
        for t in itertools.combinations(range(6 + 4 + len(_BREAKS)), 3)
        if not any(2 * i in t and 2 * i + 1 in t for i in range(3))
    ]
)  # x_i = 0 with x_i = 1: parallel


def _solve_vertices(shape: FlexGenShape, forms: _Forms) -> tuple[np.ndarray, np.ndarray]:
    """Exact LP optimum of every block at once by vertex enumeration: T is convex and piecewise affine in x
    and the feasible set a polytope, so a minimum lies where three of the planes above meet (in 3-D, a vertex
    of the arrangement). Returns (T [K], inf where nothing fits; x [K, 3]). Among equal T the placement with
    the most weights, then cache, then activations on the GPU is kept."""
    k = len(forms.block_sizes)
    normals, offsets = [], []  # plane: normal . x = offset, arrays [K, 3] and [K]
    for i in range(3):
        e = np.zeros((k, 3))
        e[:, i] = 1.0
        normals += [e, e]
        offsets += [np.zeros(k), np.ones(k)]
    for name, cap in [(r, forms.gpu_cap_bytes) for r in _GPU_ROWS] + [(r, forms.cpu_cap_bytes) for r in _CPU_ROWS]:
        normals.append(forms.coef[name])
        offsets.append(cap - forms.const[name])
    for a, b in _BREAKS:
        normals.append(forms.coef[a] - forms.coef[b])
        offsets.append(forms.const[b] - forms.const[a])
    nrm = np.stack(normals, axis=1)  # [K, P, 3]
    off = np.stack(offsets, axis=1)  # [K, P]
    scale = np.linalg.norm(nrm, axis=-1)
    scale = np.where(scale > 0, scale, 1.0)
    nrm, off = nrm / scale[..., None], off / scale
    a = nrm[:, _TRIPLES]  # [K, V, 3, 3]
    rhs = off[:, _TRIPLES]  # [K, V, 3]
    det = np.linalg.det(a)
    ok = np.abs(det) > 1e-9
    a = np.where(ok[..., None, None], a, np.eye(3))
    pts = np.linalg.solve(a, rhs[..., None])[..., 0]  # [K, V, 3]
    tol = 1e-9
    feasible = ok & np.all(pts >= -tol, axis=-1) & np.all(pts <= 1 + tol, axis=-1)
    pts = np.clip(pts, 0.0, 1.0)
    for rows, cap in ((_GPU_ROWS, forms.gpu_cap_bytes), (_CPU_ROWS, forms.cpu_cap_bytes)):
        for name in rows:
            feasible &= forms.value(name, pts) <= cap * (1 + 1e-12) + 1.0  # within a byte
    t = np.where(feasible, _total_time(forms, shape, pts), np.inf)
    best_t = t.min(axis=1)
    # Tie-break: lexicographically most on the GPU among the vertices within 1e-12 of the best T.
    near = t <= best_t[:, None] * (1 + 1e-12)
    key = np.where(near, pts[..., 0] * 4 + pts[..., 1] * 2 + pts[..., 2], -np.inf)
    choice = np.argmax(key, axis=1)
    return best_t, pts[np.arange(k), choice]


def solve_policy_blocks(
    shape: FlexGenShape, hw: FlexGenHardware, block_sizes, gpu_batch_size: int, solver: str = "enumerate"
) -> list[Optional[FlexGenSolution]]:
    """FlexGen's LP for several block sizes bls at one gbs (None where nothing fits memory).

    ``solver``: "enumerate" (exact vertex enumeration of the LP, vectorised over the blocks: the default, a
    millisecond for hundreds of blocks), "cbc" (PuLP's CBC, FlexGen's own solver) or "highs" (PuLP's HiGHS).
    All give the same optimum T; where several placements reach it they may return different ones.
    """
    bls = np.asarray(list(block_sizes), dtype=int)
    if bls.size == 0:
        return []
    if np.any(bls < 1) or gpu_batch_size < 1 or np.any(bls % gpu_batch_size):
        raise ValueError(f"block sizes {bls.tolist()} must be positive multiples of gpu batch size {gpu_batch_size}")
    forms = _lp_forms(shape, hw, bls, gpu_batch_size)
    if solver == "enumerate":
        t, x = _solve_vertices(shape, forms)
        return _solutions(shape, forms, x, np.isfinite(t), gpu_batch_size)
    if solver not in ("cbc", "highs"):
        raise ValueError(f"unknown solver '{solver}': use enumerate, cbc or highs")
    found = [_solve_pulp(shape, forms, k, solver) for k in range(len(bls))]
    x = np.asarray([f if f is not None else np.zeros(3) for f in found])
    return _solutions(shape, forms, x, np.asarray([f is not None for f in found]), gpu_batch_size)


def solve_policy_lp(
    shape: FlexGenShape, hw: FlexGenHardware, block_size: int, gpu_batch_size: int, solver: str = "enumerate"
) -> Optional[FlexGenSolution]:
    """FlexGen's LP for one (bls, gbs): the placement minimising T / bls, or None when nothing fits memory."""
    return solve_policy_blocks(shape, hw, [block_size], gpu_batch_size, solver)[0]


HardwareAt = Callable[[int], FlexGenHardware]  # FlexGen's constants at a GPU batch size


def _better(best: Optional[FlexGenSolution], new: Optional[FlexGenSolution]) -> Optional[FlexGenSolution]:
    """FlexGen keeps the first policy unless a later one has strictly higher throughput."""
    if new is None:
        return best
    if best is None or new.throughput_tokens_per_s > best.throughput_tokens_per_s:
        return new
    return best


def gpu_batch_sizes():
    """FlexGen's sequence of GPU batch sizes: 1, 2, 3, 4, then doubling."""
    gbs = 1
    while True:
        yield gbs
        gbs = gbs + 1 if gbs < 4 else gbs * 2


def _largest_num_gpu_batches(fits: Callable[[int], bool]) -> int:
    """FlexGen's nb_ub: double nb while it fits, bisect between the last two, and return the largest that fits
    (0 when nb = 1 does not)."""
    nb = 1
    while fits(nb):
        nb *= 2
    left, right = max(nb // 2, 1), nb
    while left < right:
        mid = (left + right) // 2
        if fits(mid):
            left = mid + 1
        else:
            right = mid
    return left - 1


def search_throughput(
    shape: FlexGenShape, hardware_at: HardwareAt, solver: str = "enumerate", max_block_size: Optional[int] = None
) -> Optional[FlexGenSolution]:
    """FlexGen's search for the highest throughput (its ``solve`` without --gbs / --num-gb); None when not even
    one sequence fits. ``max_block_size`` caps bls (FlexGen has no cap)."""
    best: Optional[FlexGenSolution] = None
    for gbs in gpu_batch_sizes():
        if max_block_size is not None and gbs > max_block_size:
            break
        hw = hardware_at(gbs)
        cache: dict[int, Optional[FlexGenSolution]] = {}

        def solve(nbs: list[int]) -> None:
            todo = [nb for nb in nbs if nb not in cache]
            too_big = [nb for nb in todo if max_block_size is not None and gbs * nb > max_block_size]
            cache.update({nb: None for nb in too_big})
            todo = [nb for nb in todo if nb not in too_big]
            cache.update(zip(todo, solve_policy_blocks(shape, hw, [gbs * nb for nb in todo], gbs, solver)))

        def fits(nb: int) -> bool:
            solve([nb])
            return cache[nb] is not None

        nb_ub = _largest_num_gpu_batches(fits)
        if nb_ub == 0:
            break
        previous, nb, chunk, stop = 0.0, 1, 8, False
        while nb <= nb_ub and not stop:
            last = min(nb + chunk, nb_ub + 1)
            solve(list(range(nb, last)))  # a growing chunk of nb at once (vectorised)
            for k in range(nb, last):
                sol = cache[k]
                assert sol is not None  # memory is monotone in bls: every nb up to nb_ub fits
                if sol.throughput_tokens_per_s < previous:  # FlexGen stops at the first drop
                    stop = True
                    break
                previous = sol.throughput_tokens_per_s
                best = _better(best, sol)
            nb, chunk = last, min(2 * chunk, 512)
    return best


def search_fixed_batch(
    shape: FlexGenShape, hardware_at: HardwareAt, batch: int, solver: str = "enumerate"
) -> Optional[FlexGenSolution]:
    """FlexGen's policy for exactly ``batch`` sequences: each gbs of FlexGen's sequence that divides the batch,
    with nb = batch / gbs (what its --gpu-batch-size / --num-gpu-batches give), the best throughput kept."""
    best: Optional[FlexGenSolution] = None
    for gbs in gpu_batch_sizes():
        if gbs > batch:
            break
        if batch % gbs == 0:
            best = _better(best, solve_policy_lp(shape, hardware_at(gbs), batch, gbs, solver))
    return best


# ----------------------------------------------------------------------------------------------------------
# Our systems in FlexGen's terms, and FlexGen's policy as a Plan.


def flexgen_cpu_isa(system: SystemSpec) -> CpuIsa:
    """FlexGen's CPU attention runs PyTorch fp32 kernels: AVX-512 fp32 where present, else AVX2 fp32, else
    the CPU's best ISA."""
    for isa in (CpuIsa.AVX512_FP32, CpuIsa.AVX2_FP32):
        spec = system.cpu.isa.get(isa)
        if spec is not None and spec.present:
            return isa
    return system.cpu.best_isa()


def _stage(system: SystemSpec, model: ModelSpec, batch: int, q: int, context: float, isa: CpuIsa, passes: float):
    ctx = StageContext(
        batch=batch,
        q=q,
        contexts=(context,),
        minibatches=1,
        weight_tier=HostTier.DDR,  # type: ignore[arg-type]
        kv_tier=HostTier.DDR,
        cpu_isa=isa,
        pinned_weights=True,
        overlap=True,
        mode=CostMode.OVERLAP,
        cpu_kv_passes=passes,
    )
    return sublayer_times(system, model, ctx, batch)


def system_hardware(system: SystemSpec, model: ModelSpec, prompt_len: int, gen_len: int) -> HardwareAt:
    """FlexGen's constants for one of our systems, as FlexGen would fit them on it: each rate is the work of
    one GPU batch of gbs sequences divided by our cost model's time for it (roofline and launch overhead
    included) at that gbs; the CPU attention rate is that of FlexGen's fp32 attention over the cache
    (FLEXGEN_CPU_KV_PASSES) at the mean decode context s + n/2. Weights cross PCIe pinned (FlexGen pins
    them), the KV cache pageable (FlexGen does not pin it). Memory: the whole GPU and the DDR, of which
    FlexGen's LP uses 80 %."""
    shape = FlexGenShape.from_model(model, prompt_len, gen_len)
    isa = flexgen_cpu_isa(system)
    s, mean_ctx = prompt_len, prompt_len + gen_len / 2.0
    link = system.link
    cache: dict[int, FlexGenHardware] = {}

    def at(gbs: int) -> FlexGenHardware:
        if gbs not in cache:
            pre = _stage(system, model, gbs, s, s, isa, 1.0)
            dec = _stage(system, model, gbs, 1, mean_ctx, isa, FLEXGEN_CPU_KV_PASSES)

            def linears(times) -> float:
                return float(sum(times.gpu_s[i, 0] for i in _LINEAR))

            def attention(times, on_cpu: bool) -> float:
                # score + context, one fused kernel where calibrated kernel tables say so (the delta)
                arr, delta = (
                    (times.cpu_s, times.cpu_fused_delta_s) if on_cpu else (times.gpu_s, times.gpu_fused_delta_s)
                )
                return float(sum(arr[i, 0] for i in _ATTENTION) + delta[0])

            att_pre = gbs * s * s * shape.attention_flops_per_context
            att_dec = gbs * mean_ctx * shape.attention_flops_per_context
            cache[gbs] = FlexGenHardware(
                gpu_memory_bytes=system.gpu.memory_gib * BYTES_PER_GIB,
                cpu_memory_bytes=system.ddr.capacity_gib * BYTES_PER_GIB,
                ctog_bytes_per_s=link.h2d_gbps * BYTES_PER_S_PER_GBPS,
                gtoc_cache_bytes_per_s=link.pageable_d2h_gbps * BYTES_PER_S_PER_GBPS,
                gtoc_hidden_bytes_per_s=link.d2h_gbps * BYTES_PER_S_PER_GBPS,
                mm_flops_prefill=gbs * s * shape.linear_flops_per_token / linears(pre),
                mm_flops_decode=gbs * shape.linear_flops_per_token / linears(dec),
                bmm_flops_prefill=att_pre / attention(pre, on_cpu=False),
                bmm_flops_decode=att_dec / attention(dec, on_cpu=False),
                cpu_flops=att_dec / attention(dec, on_cpu=True),
            )
        return cache[gbs]

    return at


@dataclass(frozen=True)
class FlexGenChoice:
    """FlexGen's own choice for a query, and the Plan that carries it in our terms."""

    solution: FlexGenSolution
    plan: Plan
    workload: Workload  # batch = gbs x num_gpu_batches
    weights_gpu_layers: float  # wg x num_layers: FlexGen's GPU weights in whole-layer units
    cpu_kv_passes: float = FLEXGEN_CPU_KV_PASSES

    def as_json(self) -> dict:
        p = self.solution.policy
        return {
            "gpu_batch_size": p.gpu_batch_size,
            "num_gpu_batches": p.num_gpu_batches,
            "block_size": p.block_size,
            "fractions": {
                "weights_gpu": p.weights_gpu,
                "weights_cpu": p.weights_cpu,
                "cache_gpu": p.cache_gpu,
                "cache_cpu": p.cache_cpu,
                "activations_gpu": p.activations_gpu,
                "activations_cpu": p.activations_cpu,
            },
            "percent": list(p.percent()),
            "weights_gpu_layers": self.weights_gpu_layers,
            "cpu_attention": {"isa": self.plan.cpu_isa.value, "kv_passes": self.cpu_kv_passes},
            "flexgen_predicted": {
                "throughput_tokens_per_s": self.solution.throughput_tokens_per_s,
                "latency_s": self.solution.total_s,
                "prefill_s": self.solution.prefill_s,
                "decode_s": self.solution.decode_s,
            },
        }


def flexgen_plan(system: SystemSpec, model: ModelSpec, workload: Workload, policy: FlexGenPolicy) -> Plan:
    """FlexGen's policy in our terms: weights on the GPU as the first floor(wg l) whole resident layers (fewer
    if our memory model cannot hold them), prefill all-GPU in num_gpu_batches chunks; where most of the cache
    lives on the CPU, decode attention there (AVX-512 fp32) with the cache in DDR, else all-GPU decode with every
    layer's cache in GPU memory (``streamed_kv_on_gpu``; in DDR, fetched for each layer, only when our memory
    model cannot hold it there); weights in DDR, pinned, prefetched. Our Plan has one KV home for all streamed
    layers, so a cache FlexGen splits is placed by its majority."""
    from lia_model.baselines import max_resident_layers
    from lia_model.memory import plan_fits

    cache_on_cpu = policy.cache_cpu >= 0.5
    base = Plan(
        prefill_policy=ALL_GPU,
        decode_policy=ATTENTION_ON_CPU if cache_on_cpu else ALL_GPU,
        gpu_resident_layers=0,
        prefill_minibatches=policy.num_gpu_batches,
        weight_tier=HostTier.DDR,
        kv_tier=HostTier.DDR,
        streamed_kv_on_gpu=not cache_on_cpu,
        pinned_weights=True,
        overlap=True,
        cpu_isa=flexgen_cpu_isa(system),
        head_device=Device.GPU,
        label="flexgen",
    )
    if base.streamed_kv_on_gpu and not plan_fits(system, model, workload, base):
        base = base.model_copy(update={"streamed_kv_on_gpu": False})
    wanted = int(math.floor(policy.weights_gpu * model.num_layers + 1e-6))
    resident = min(wanted, max_resident_layers(system, model, workload, base))
    # every layer resident: no streamed layer whose cache has a home to choose (the plan says so)
    kv_on_gpu = base.streamed_kv_on_gpu and resident < model.num_layers
    return base.model_copy(update={"gpu_resident_layers": resident, "streamed_kv_on_gpu": kv_on_gpu})


def flexgen_choice(
    system: SystemSpec,
    model: ModelSpec,
    workload: Workload,
    choose_batch: bool = False,
    max_batch: Optional[int] = None,
) -> Optional[FlexGenChoice]:
    """FlexGen's own policy for the query: at the workload's batch, or (``choose_batch``, the throughput
    objective) at the batch FlexGen's search picks. None when FlexGen's LP finds nothing that fits."""
    return _cached_choice(
        system.model_dump_json(),
        model.model_dump_json(),
        workload.batch,
        workload.input_len,
        workload.output_len,
        choose_batch,
        max_batch,
    )


@lru_cache(maxsize=256)
def _cached_choice(
    system_json: str,
    model_json: str,
    batch: int,
    input_len: int,
    output_len: int,
    choose_batch: bool,
    max_batch: Optional[int],
) -> Optional[FlexGenChoice]:
    system = SystemSpec.model_validate(json.loads(system_json))
    model = ModelSpec.model_validate(json.loads(model_json))
    shape = FlexGenShape.from_model(model, input_len, output_len)
    hardware_at = system_hardware(system, model, input_len, output_len)
    if choose_batch:
        # FlexGen's own search has no cap; ours stops at the largest batch a Workload holds (MAX_BATCH), so a
        # machine with a huge memory (a what-if) cannot make it search without end or return an invalid batch
        cap = MAX_BATCH if max_batch is None else min(max_batch, MAX_BATCH)
        sol = search_throughput(shape, hardware_at, max_block_size=cap)
    else:
        sol = search_fixed_batch(shape, hardware_at, batch)
    if sol is None:
        return None
    wl = Workload(batch=sol.policy.block_size, input_len=input_len, output_len=output_len)
    plan = flexgen_plan(system, model, wl, sol.policy)
    return FlexGenChoice(sol, plan, wl, sol.policy.weights_gpu * model.num_layers)
