"""Exact optimisation by enumeration of the plan space (the oracle the ILP is tested against).

For one batch it evaluates every (combo, prefill ISA, decode ISA, prefill policy, decode policy, N_res) of the
space, and the best weight split K_cxl, with the cost terms of ``SpaceTables``:

  latency = N_res (R_pre(n) + sum_t R_dec(t)) + (K - K_cxl) Q_ddr(p_pre, p_dec) + K_cxl Q_cxl(p_pre, p_dec) + head
            with Q_tier = S_pre,tier(p_pre, isa_pre) + sum_t S_dec,tier(p_dec, isa_dec, t), K = N - N_res
            (on a system without CXL the prefill part is the pipeline of costterms.prefill_pass_s instead:
             latency = pass(N_res R_pre(n), K, c(p_pre), W(p_pre), X(p_pre)) + N_res sum_t R_dec(t)
                       + K sum_t S_dec(p_dec, t) + head, evaluated for every (N_res, pair): 4096 N values)
  memory  = the formulas of lia_model.memory, where the policies enter only through c = p_pre AND p_dec
            (which sublayers need no GPU buffer) and whether any attention runs on the GPU; the host tiers
            only through K_cxl:  DDR: ws + (K - K_cxl) W + K KV [KV in DDR] <= A_ddr,
                                 CXL: K_cxl W + K KV [KV in CXL] <= A_cxl
            so each N_res allows an interval lo <= K_cxl <= hi (0 <= K_cxl <= K; only 0 without CXL)

  TTFT    = the prefill pass + the prefill's LM head, costmodel.predict's number (``PrefillSide.pass_s``):
            N_res R_pre(n) + (K - K_cxl) S_pre,ddr(p_pre) + K_cxl S_pre,cxl(p_pre) + head, or without CXL
            pass(N_res R_pre(n), K, c(p_pre), W(p_pre), X(p_pre)) + head; the decode policy does not enter it

At fixed other knobs the latency, the mean TPOT and the TTFT are affine in K_cxl and the memory constraints
bound it to an interval, so the best K_cxl is an end of the interval that the TPOT and TTFT bounds leave (the
minimum of an affine function over an integer interval sits at an end): evaluating both ends is exhaustive in
K_cxl.
The ISAs are a plan's (one per stage, for every layer), so each pair the tables keep is enumerated apart.

``exhaustive=True`` evaluates all 4096 policy pairs for every N_res (brute force, used by the tests with
tables that keep every ISA: ``brute_force_optimum``); otherwise, without CXL, the best pair of each memory
class c is found first (64 classes), or under a TPOT or TTFT bound the best pair of each (decode, class,
prefill) allowance, which gives the same optimum in a few milliseconds.

``best_in_combo`` is the enumeration of one combo over plain arrays; the batch search (``batch.py``) runs
it on relaxed arrays to bound the throughput of whole ranges of batches.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from lia_model.costterms import ALL_POLICY_FEATURES, NUM_POLICIES, StageTerms, pass_start_fill, prefill_pass_s
from lia_model.hardware import SystemSpec
from lia_model.memory import MemoryConstants, MemoryTier, memory_constants, workspace_bytes
from lia_model.models import ModelSpec
from lia_model.optimizer.space import (
    Combo,
    SpaceTables,
    divisors,
    minibatch_candidates,
    simulate_prefill,
    simulated_vectors,
    template_plan,
    tidy_plan,
    tier_candidates,
)
from lia_model.plan import CpuIsa, HostTier, Plan, policy_from_index
from lia_model.sublayers import NUM_SUBLAYERS
from lia_model.workload import Workload

_PP, _PD = np.divmod(np.arange(NUM_POLICIES * NUM_POLICIES), NUM_POLICIES)  # pair index -> (prefill, decode)
_PAIR_CLASS = _PP & _PD  # sublayers on the CPU in both stages
_ALL_PAIRS = np.arange(NUM_POLICIES * NUM_POLICIES)
_PRE_CLASS = _PP * NUM_POLICIES + _PAIR_CLASS  # (prefill vector, class): 3^6 = 729 distinct


def _first_min_per_key(key: np.ndarray, value: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """Per key 0 .. n_keys-1: the smallest value of the indices with that key, and the lowest index reaching it
    (the one np.argmin would pick; -1 for a key no index has)."""
    best = np.full(n_keys, np.inf)
    np.minimum.at(best, key, value)
    hit = np.flatnonzero(value == best[key])
    first = np.full(n_keys, -1)
    first[key[hit[::-1]]] = hit[::-1]
    return best, first


def _fastest_decode_per_class(dec_time: np.ndarray) -> np.ndarray:
    """Per (prefill vector, HBM class), the pair with the fastest decode vector (the lowest pair index among
    equals), in increasing pair index: the only pairs of a group that can be best when the decode vector enters
    the latency as K D(p_dec) with K >= 1 and the memory check through the class alone."""
    _, first = _first_min_per_key(_PRE_CLASS, dec_time[_PD], _ALL_PAIRS.size)
    return np.sort(first[first >= 0])


_ATTN_BITS = 0b110  # attn_score and attn_context
_EPS_LAYERS = 1e-9  # slack (in layers) when rounding the memory bounds on K_cxl


@dataclass(frozen=True)
class EnumeratedOptimum:
    plan: Plan
    latency_s: float
    tpot_mean_s: Optional[float]
    combo_latency_s: dict = field(default_factory=dict)  # the best latency reached with each combo (inf: none)


def _buffer_bytes_by_class(sublayer_weight_bytes: tuple[float, ...]) -> np.ndarray:
    """2 sum_i W_i over sublayers NOT on the CPU in both stages, for each class c (bit i = CPU in both)."""
    w = np.asarray(sublayer_weight_bytes)
    classes = np.arange(NUM_POLICIES)
    needs_buffer = ((classes[:, None] >> np.arange(NUM_SUBLAYERS)) & 1) == 0
    return 2.0 * needs_buffer @ w


def _attention_on_gpu_by_class() -> np.ndarray:
    classes = np.arange(NUM_POLICIES)
    return (classes & _ATTN_BITS) != _ATTN_BITS


_ATTN_GPU = _attention_on_gpu_by_class()


def cxl_weight_range(
    mem: MemoryConstants, kv_tier: HostTier, streamed: np.ndarray, has_cxl: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The K_cxl the host tiers allow for each streamed count K: lo <= K_cxl <= hi (lo > hi: none).

    DDR: ws + (K - K_cxl) W + K KV [KV in DDR] <= A_ddr  ->  K_cxl >= K - (A_ddr - ws - K KV [DDR]) / W
    CXL: K_cxl W + K KV [KV in CXL] <= A_cxl             ->  K_cxl <= (A_cxl - K KV [CXL]) / W"""
    avail, w = mem.available_bytes, mem.layer_weight_bytes
    kv_ddr = mem.kv_layer_bytes * (kv_tier == HostTier.DDR)
    kv_cxl = mem.kv_layer_bytes * (kv_tier == HostTier.CXL)
    ddr_room = avail[MemoryTier.DDR] - mem.host_workspace_bytes - streamed * kv_ddr
    lo = np.maximum(0.0, np.ceil(streamed - ddr_room / w - _EPS_LAYERS))
    # With no streamed layer only the workspace must fit DDR.
    lo = np.where(streamed > 0, lo, np.where(mem.host_workspace_bytes <= avail[MemoryTier.DDR], 0.0, np.inf))
    if has_cxl:
        hi = np.minimum(streamed, np.floor((avail[MemoryTier.CXL] - streamed * kv_cxl) / w + _EPS_LAYERS))
    else:
        hi = np.where(streamed * kv_cxl > 0, -1.0, 0.0)
    return lo, hi


def _hbm_base(mem: MemoryConstants, resident: np.ndarray) -> np.ndarray:
    return mem.embedding_bytes + mem.gpu_workspace_bytes + resident * (mem.layer_weight_bytes + mem.kv_layer_bytes)


def _class_extra_hbm(mem: MemoryConstants) -> np.ndarray:
    """HBM a streamed configuration adds, per class c: buffers + KV staging when attention is on the GPU."""
    return _buffer_bytes_by_class(mem.sublayer_weight_bytes) + _ATTN_GPU * mem.kv_layer_bytes


@dataclass(frozen=True)
class PrefillSide:
    """What one prefill pass reads: the resident layer's time R, a streamed layer's time S [64] per weight tier
    and, where the pass is the two-buffer pipeline of costterms.prefill_pass_s (no CXL), its (compute, copy,
    throughput) parts [64] each (None: the steady-state sum)."""

    resident_s: float
    streamed: dict[HostTier, np.ndarray]
    fill: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None

    def pass_s(self, resident, streamed, k_cxl, pp) -> np.ndarray:
        """The prefill pass of N_res = ``resident`` layers and K = ``streamed``, K_cxl = ``k_cxl`` of them with
        their weights in CXL, at the prefill vector(s) ``pp`` (indices, or a slice for all 64; arrays broadcast):
          pipeline:  prefill_pass_s(N_res R, K, c(pp), W(pp), X(pp))
          otherwise: N_res R + (K - K_cxl) S_ddr(pp) + K_cxl S_cxl(pp)
        in costmodel.predict's order of operations, so that TTFT = this + the head is predict()'s number."""
        if self.fill is not None:
            compute, copy, throughput = (v[pp] for v in self.fill)
            return prefill_pass_s(resident * self.resident_s, streamed, compute, copy, throughput)
        s_ddr = self.streamed[HostTier.DDR][pp]
        s_cxl = self.streamed.get(HostTier.CXL, self.streamed[HostTier.DDR])[pp]
        return resident * self.resident_s + ((streamed - k_cxl) * s_ddr + k_cxl * s_cxl)


@dataclass
class ComboArrays:
    """One combo's problem as arrays: per weight tier the streamed prefill and decode (summed over steps)
    time of every policy vector [64] for the cost, the decode sums the TPOT bound reads and the prefill the TTFT
    bound reads (the cost's own except in the batch search's relaxation)."""

    kv_tier: HostTier
    memory: MemoryConstants
    resident_prefill_s: float
    pre: dict[HostTier, np.ndarray]
    dec: dict[HostTier, np.ndarray]
    tpot_dec: dict[HostTier, np.ndarray]
    # (compute, copy, throughput) of a streamed prefill layer [64] each, where the prefill pass is the
    # two-buffer pipeline of costterms.prefill_pass_s (no CXL); None: the steady-state sum N_res R + K pre
    pre_fill: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None
    ttft_pre: Optional[PrefillSide] = None  # the prefill the TTFT bound reads (None: the cost's own, ``prefill``)

    @property
    def prefill(self) -> PrefillSide:
        """The cost's prefill."""
        return PrefillSide(self.resident_prefill_s, self.pre, self.pre_fill)

    @property
    def ttft_prefill(self) -> PrefillSide:
        return self.prefill if self.ttft_pre is None else self.ttft_pre


@dataclass(frozen=True)
class StageConstants:
    """What every combo shares: N, S, whether CXL exists, resident decode and head times (cost; TPOT side) and
    the prefill pass's head (TTFT side)."""

    num_layers: int
    decode_steps: int
    has_cxl: bool
    resident_decode_total_s: float
    head_total_s: float
    tpot_resident_decode_total_s: float
    tpot_head_s: float
    ttft_head_s: float


def best_in_combo(
    ca: ComboArrays,
    k: StageConstants,
    tpot_max_s: Optional[float] = None,
    exhaustive: bool = False,
    ttft_max_s: Optional[float] = None,
    per_prefill: Optional[np.ndarray] = None,
) -> Optional[tuple[float, int, int, int, int]]:
    """(latency, N_res, prefill policy, decode policy, K_cxl) of the best point of one combo, or None.
    ``ttft_max_s``: a bound on TTFT = ``ca.ttft_prefill.pass_s`` + ``k.ttft_head_s``. ``per_prefill`` ([64], or
    None): lowered to the least latency of the points with a streamed layer per prefill vector (inf: none fits),
    or to -inf where the enumeration does not price every vector apart (without the prefill pipeline and CXL);
    where a vector's least lies in rows that cannot hold the best point (``_rows_that_can_win`` leaves them out),
    to a value at least that least, which is above the best point's (with _BOUND_SLACK); the all-resident point
    reads no prefill vector and is left out."""
    n_layers, steps = k.num_layers, k.decode_steps
    resident = np.arange(n_layers + 1, dtype=float)
    streamed = n_layers - resident
    bounded = tpot_max_s is not None and steps > 0
    ttft_bounded = ttft_max_s is not None
    side = ca.ttft_prefill  # TTFT = side.pass_s(N_res, K, K_cxl, p_pre) + k.ttft_head_s
    mem = ca.memory
    hbm_avail = mem.available_bytes[MemoryTier.HBM]
    lo, hi = cxl_weight_range(mem, ca.kv_tier, streamed, k.has_cxl)
    hbm_base = _hbm_base(mem, resident)
    resident_time = resident * (ca.resident_prefill_s + k.resident_decode_total_s)
    extra = _class_extra_hbm(mem)
    # HBM a streamed pair adds: its class's buffers and KV staging, and its prefill policy's waiting chunks and
    # split attention (MemoryConstants.prefill_policy_bytes)
    policy_extra = np.asarray(mem.prefill_policy_bytes)
    pair_extra = extra[_PAIR_CLASS] + policy_extra[_PP]
    best: Optional[tuple[float, int, int, int, int]] = None

    # All layers resident (K = 0): no streaming, policies and ISAs do not matter.
    if lo[-1] <= hi[-1] and hbm_base[-1] <= hbm_avail:
        lat = float(resident_time[-1] + k.head_total_s)
        tpot_ok = (
            not bounded or (n_layers * k.tpot_resident_decode_total_s + k.tpot_head_s * steps) / steps <= tpot_max_s
        )
        ttft_ok = not ttft_bounded or float(side.pass_s(float(n_layers), 0.0, 0.0, 0)) + k.ttft_head_s <= ttft_max_s
        if tpot_ok and ttft_ok:
            best = (lat, n_layers, 0, 0, 0)

    rows = np.arange(n_layers)  # N_res = 0 .. N-1: at least one streamed layer
    pre_d, dec_d = ca.pre[HostTier.DDR], ca.dec[HostTier.DDR]
    pair_time = pre_d[_PP] + dec_d[_PD]
    candidate: Optional[tuple[float, int, int, int, int]] = None
    if (ca.pre_fill is not None or k.has_cxl) and not exhaustive:
        # The two [rows, pairs] evaluations below: a row that no pair fits (host tiers, or HBM even with the
        # smallest pair: a float sum is monotone in each term) holds only inf, so leaving it out keeps the first
        # minimum (what np.argmin picks) the same point; with large models most N_res do not fit HBM.
        # (``exhaustive`` keeps every row: the tests' oracle.)
        rows = rows[(lo[rows] <= hi[rows]) & (hbm_base[rows] + pair_extra.min() <= hbm_avail)]
    # The TPOT bound per (N_res, decode vector) [rows, 64], where every pair is priced (the pipeline and weight-split
    # branches): met or not, and in the weight split the K_cxl range it leaves
    cols, tpot_ok, tpot_range = _ALL_PAIRS, None, None
    if bounded and ca.pre_fill is not None:
        tpot_ok = _tpot_met(ca, k, resident[rows], streamed[rows], tpot_max_s)
    elif bounded and (k.has_cxl or exhaustive):
        tpot_range = _tpot_k_cxl_range(ca, k, resident[rows], streamed[rows], lo[rows], hi[rows], tpot_max_s)
        tpot_ok = tpot_range[0] <= tpot_range[1]
    if tpot_ok is not None and not exhaustive:
        # A point whose (N_res, decode vector) misses the bound is inf, so the rows where every decode vector misses
        # it and the pairs of the decode vectors that miss it at every row are left out: the first minimum (what
        # np.argmin picks) and the least latency per prefill vector stay the same. Under a tight bound few remain.
        keep = tpot_ok.any(axis=1)
        cols = _ALL_PAIRS[tpot_ok[keep].any(axis=0)[_PD]]
        rows, tpot_ok = rows[keep], tpot_ok[keep]
        tpot_range = None if tpot_range is None else (tpot_range[0][keep], tpot_range[1][keep])
    kk = streamed[rows, None]
    if rows.size == 0:
        pass  # no point with a streamed layer fits
    elif ca.pre_fill is not None:
        # The prefill pass is not K times a per-layer time (costterms.prefill_pass_s), so every (N_res, pair)
        # is evaluated: latency = pass(N_res, p_pre) + N_res R_dec + K D(p_dec) + head  [rows, pairs]
        pre_pass = ca.prefill.pass_s(resident[rows, None], kk, 0.0, slice(None))  # [rows, 64]
        # Without a TPOT bound or a CXL split a pair's row depends on its decode vector only through K D(p_dec)
        # (K >= 1) and through its HBM class: of the pairs with one (prefill vector, class) only the fastest
        # decode vector can be best, the first in index order among equals (the one np.argmin would pick), so
        # 729 pairs stand for the 4096 (``exhaustive`` evaluates all of them). A TTFT bound does not change
        # that: it reads the prefill vector, not the decode vector.
        if not (bounded or exhaustive or k.has_cxl):
            cols = _fastest_decode_per_class(dec_d)
        dec_cols = dec_d[_PD[cols]]
        if ttft_bounded:  # pass(N_res R_pre, K, c, W, X)(p_pre) + head <= X_ttft
            ttft_pass = pre_pass if ca.ttft_pre is None else side.pass_s(resident[rows, None], kk, 0.0, slice(None))

        def pipelined(at: np.ndarray) -> tuple[np.ndarray]:
            """The latency of the rows at positions ``at`` [at, pairs] (inf where a point does not fit)."""
            on = rows[at]
            # pass + N_res R_dec + K D(p_dec) + head, summed in that order in place ([rows, pairs] arrays are large)
            lat = pre_pass[at][:, _PP[cols]]
            lat += resident[on, None] * k.resident_decode_total_s
            lat += kk[at] * dec_cols[None, :]
            lat += k.head_total_s
            ok = (lo[on, None] <= hi[on, None]) & (hbm_base[on, None] + pair_extra[cols][None, :] <= hbm_avail)
            if bounded:  # per decode vector, then per pair (the same numbers as per pair, 64 times fewer)
                ok &= tpot_ok[at][:, _PD[cols]]
            if ttft_bounded:
                ok &= ttft_pass[at][:, _PP[cols]] + k.ttft_head_s <= ttft_max_s
            np.putmask(lat, ~ok, np.inf)
            return (lat,)

        # Per row: ((min pass + N_res R_dec) + K min D) + head, at most each latency of the row (every float
        # operation above is monotone in each operand)
        lower = pre_pass.min(axis=1) + resident[rows] * k.resident_decode_total_s
        lower += streamed[rows] * dec_cols.min()
        lower += k.head_total_s
        at, (lat,) = _rows_that_can_win(lower, pipelined, exhaustive)
        if per_prefill is not None:  # (``cols`` drops only pairs that a kept pair of the same prefill vector beats)
            _lower_per_prefill(per_prefill, cols, lat.min(axis=0))
        r, j = divmod(int(np.argmin(lat)), cols.size)
        pair = int(cols[j])
        candidate = (float(lat[r, j]), int(rows[at[r]]), int(_PP[pair]), int(_PD[pair]), 0)
    elif not k.has_cxl and not exhaustive and not bounded and not ttft_bounded:
        if per_prefill is not None:  # the best pair per memory key, not per prefill vector
            per_prefill[:] = -np.inf
        # Pairs with the same HBM (class, prefill-policy extra) are interchangeable but for their time: keep the best
        levels, level_of = np.unique(policy_extra, return_inverse=True)
        key = _PAIR_CLASS * levels.size + level_of[_PP]
        n_keys = NUM_POLICIES * levels.size
        best_time, best_pair = _first_min_per_key(key, pair_time, n_keys)
        key_extra = np.repeat(extra, levels.size) + np.tile(levels, NUM_POLICIES)
        lat = resident_time[rows, None] + kk * best_time[None, :] + k.head_total_s
        ok = (lo[rows, None] <= hi[rows, None]) & (hbm_base[rows, None] + key_extra[None, :] <= hbm_avail)
        lat = np.where(ok, lat, np.inf)
        r, col = divmod(int(np.argmin(lat)), n_keys)
        pair = int(best_pair[col])
        candidate = (float(lat[r, col]), int(rows[r]), int(_PP[pair]), int(_PD[pair]), 0)
    elif not k.has_cxl and not exhaustive:
        if per_prefill is not None:  # the best pair per allowance, not per prefill vector
            per_prefill[:] = -np.inf
        # Per N_res the TPOT bound allows the decode vectors with K D(p_dec) <= X S - N_res R_dec - S head, the
        # TTFT bound the prefill vectors with N_res R_pre + K S_pre(p_pre) + head <= X_ttft, and memory the pairs
        # with extra(pair) <= HBM left: each is "the k smallest" of a sorted list (the TTFT test is exact, and
        # monotone in S_pre(p_pre) under rounding too), so rows share few distinct (decode, class, prefill)
        # allowances; the best pair is found once per allowance.
        host_ok = lo[rows] <= hi[rows]
        ok_rows = rows[host_ok]
        if ok_rows.size:
            dec_tpot = ca.tpot_dec[HostTier.DDR]
            pre_ttft = side.streamed[HostTier.DDR]
            kr = streamed[ok_rows]
            dec_order, cls_order, pre_order = np.sort(dec_tpot), np.sort(pair_extra), np.sort(pre_ttft)
            n_dec = np.full(ok_rows.size, NUM_POLICIES)
            if bounded:
                room = tpot_max_s * steps - resident[ok_rows] * k.tpot_resident_decode_total_s - k.tpot_head_s * steps
                n_dec = np.searchsorted(dec_order, room / kr, side="right")
            n_cls = np.searchsorted(cls_order, hbm_avail - hbm_base[ok_rows], side="right")
            n_pre = np.full(ok_rows.size, NUM_POLICIES)
            if ttft_bounded:
                ttft = side.pass_s(resident[ok_rows, None], kr[:, None], 0.0, slice(None)) + k.ttft_head_s
                n_pre = np.count_nonzero(ttft <= ttft_max_s, axis=1)
            row_best = np.full(ok_rows.size, np.inf)
            row_pair = np.zeros(ok_rows.size, dtype=int)
            for nd, nc, npre in set(zip(n_dec.tolist(), n_cls.tolist(), n_pre.tolist())):
                if nd == 0 or nc == 0 or npre == 0:
                    continue
                allowed = (
                    (dec_tpot[_PD] <= dec_order[nd - 1])
                    & (pair_extra <= cls_order[nc - 1])
                    & (pre_ttft[_PP] <= pre_order[npre - 1])
                )
                masked = np.where(allowed, pair_time, np.inf)
                pair = int(np.argmin(masked))
                sel = (n_dec == nd) & (n_cls == nc) & (n_pre == npre)
                row_best[sel], row_pair[sel] = masked[pair], pair
            lat = resident_time[ok_rows] + kr * row_best + k.head_total_s
            r = int(np.argmin(lat))
            pair = int(row_pair[r])
            candidate = (float(lat[r]), int(ok_rows[r]), int(_PP[pair]), int(_PD[pair]), 0)
    else:
        pre_c, dec_c = (ca.pre[HostTier.CXL], ca.dec[HostTier.CXL]) if k.has_cxl else (pre_d, dec_d)
        pp, pd = _PP[cols], _PD[cols]
        q_ddr = pair_time[None, cols]  # [1, pairs]
        q_cxl = (pre_c[pp] + dec_c[pd])[None, :]
        dq = q_cxl - q_ddr  # latency slope in K_cxl

        def weight_split(at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """The latency [at, pairs] of the rows at positions ``at`` (inf where a point does not fit) and K_cxl."""
            on, kr = rows[at], kk[at]
            # (read-only views: the bounds below make new arrays)
            k_lo = np.broadcast_to(lo[on, None], (at.size, cols.size))
            k_hi = np.broadcast_to(hi[on, None], (at.size, cols.size))
            if bounded:  # the TPOT bound's K_cxl range per decode vector, taken per pair (the same numbers)
                k_lo, k_hi = tpot_range[0][at][:, pd], tpot_range[1][at][:, pd]
            if ttft_bounded:
                # N_res R_pre + K S_ddr + K_cxl (S_cxl - S_ddr) + head <= X_ttft (the chosen end checked exactly below)
                s_ddr = side.streamed[HostTier.DDR][pp][None, :]
                ds = side.streamed.get(HostTier.CXL, side.streamed[HostTier.DDR])[pp][None, :] - s_ddr
                room = ttft_max_s - k.ttft_head_s - resident[on, None] * side.resident_s - kr * s_ddr
                with np.errstate(divide="ignore", invalid="ignore"):
                    bound = room / ds
                k_hi = np.where(ds > 0, np.minimum(k_hi, np.floor(bound + _EPS_LAYERS)), k_hi)
                k_lo = np.where(ds < 0, np.maximum(k_lo, np.ceil(bound - _EPS_LAYERS)), k_lo)
            k_cxl = np.where(dq >= 0, k_lo, k_hi)
            # N_res (R_pre + R_dec) + K Q_ddr + K_cxl (Q_cxl - Q_ddr) + head, summed in that order in place
            lat = kr * q_ddr
            np.add(resident_time[on, None], lat, out=lat)
            lat += k_cxl * dq
            lat += k.head_total_s
            ok = hbm_base[on, None] + pair_extra[None, cols] <= hbm_avail
            if bounded or ttft_bounded or exhaustive:  # (otherwise every row kept has lo <= hi)
                ok &= k_lo <= k_hi
            if ttft_bounded:
                ok &= side.pass_s(resident[on, None], kr, k_cxl, pp[None, :]) + k.ttft_head_s <= ttft_max_s
            np.putmask(lat, ~ok, np.inf)
            return lat, k_cxl

        # Per row: N_res (R_pre + R_dec) + K min(Q_ddr, Q_cxl) + head, at most each latency of the row to rounding
        # (the latency is N_res (R_pre + R_dec) + (K - K_cxl) Q_ddr + K_cxl Q_cxl + head with 0 <= K_cxl <= K)
        lower = resident_time[rows] + streamed[rows] * min(q_ddr.min(), q_cxl.min()) + k.head_total_s
        at, (lat, k_cxl) = _rows_that_can_win(lower, weight_split, exhaustive)
        if per_prefill is not None:
            _lower_per_prefill(per_prefill, cols, lat.min(axis=0))
        r, j = divmod(int(np.argmin(lat)), cols.size)
        pair = int(cols[j])
        candidate = (float(lat[r, j]), int(rows[at[r]]), int(_PP[pair]), int(_PD[pair]), int(k_cxl[r, j]))
    if candidate is not None and np.isfinite(candidate[0]) and (best is None or candidate[0] < best[0]):
        best = candidate
    return best


# Rows of least lower bound a [rows, pairs] evaluation prices first (_rows_that_can_win)
_PROBE_ROWS = 2


def _rows_that_can_win(
    lower: np.ndarray, evaluate: Callable[[np.ndarray], tuple[np.ndarray, ...]], every_row: bool = False
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """The positions (increasing) of the rows that ``evaluate`` prices and its arrays for them ([positions, pairs]
    each, the latency first). ``lower`` [rows]: at most each latency of its row (to the last bits). First the
    _PROBE_ROWS rows of least bound, then every other row whose bound does not exceed the best latency found there
    (with _BOUND_SLACK); ``every_row``: all rows (the tests' oracle). A row left out holds only latencies above that
    best, so the first minimum over the rows kept is the first minimum over all, and a prefill vector's least
    latency over them is its least over all rows, or above that best, as the least over all rows then is."""
    if every_row:
        at = np.arange(lower.size)
        return at, evaluate(at)
    order = np.argsort(lower, kind="stable")
    probe = np.sort(order[:_PROBE_ROWS])
    first = evaluate(probe)
    best = first[0].min()
    rest = order[_PROBE_ROWS:]
    if np.isfinite(best):
        rest = rest[lower[rest] <= best * (1 + _BOUND_SLACK)]
    if rest.size == 0:
        return probe, first
    rest = np.sort(rest)
    at = np.sort(np.concatenate([probe, rest]))
    out = []
    for head, tail in zip(first, evaluate(rest)):
        merged = np.empty((at.size,) + head.shape[1:], dtype=head.dtype)
        merged[np.searchsorted(at, probe)] = head
        merged[np.searchsorted(at, rest)] = tail
        out.append(merged)
    return at, tuple(out)


def _tpot_met(ca: ComboArrays, k: StageConstants, resident: np.ndarray, streamed: np.ndarray, tpot_max_s: float):
    """Whether (N_res R_dec + K D(p_dec) + head S) / S <= X, per (N_res, decode vector) [rows, 64] (weights in DDR)."""
    steps = k.decode_steps
    tpot_total = (
        resident[:, None] * k.tpot_resident_decode_total_s
        + streamed[:, None] * ca.tpot_dec[HostTier.DDR][None, :]
        + k.tpot_head_s * steps
    )
    return tpot_total <= tpot_max_s * steps


def _tpot_k_cxl_range(
    ca: ComboArrays,
    k: StageConstants,
    resident: np.ndarray,
    streamed: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    tpot_max_s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The K_cxl range [lo, hi] (per N_res, from ``cxl_weight_range``) narrowed by the TPOT bound, per (N_res, decode
    vector) [rows, 64] each (lo > hi: none): (N_res R_dec + K D_ddr + K_cxl (D_cxl - D_ddr) + head S) / S <= X
    reads the decode vector only."""
    steps = k.decode_steps
    td_d = ca.tpot_dec[HostTier.DDR]
    td_c = ca.tpot_dec[HostTier.CXL] if k.has_cxl else td_d
    dd = (td_c - td_d)[None, :]
    room = (
        tpot_max_s * steps
        - resident[:, None] * k.tpot_resident_decode_total_s
        - streamed[:, None] * td_d[None, :]
        - k.tpot_head_s * steps
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = room / dd
    d_lo, d_hi = lo[:, None], hi[:, None]
    d_hi = np.where(dd > 0, np.minimum(d_hi, np.floor(bound + _EPS_LAYERS)), d_hi)
    d_lo = np.where(dd < 0, np.maximum(d_lo, np.ceil(bound - _EPS_LAYERS)), d_lo)
    d_hi = np.where((dd == 0) & (room < 0), -1.0, d_hi)
    return d_lo, d_hi


def _lower_per_prefill(per_prefill: np.ndarray, pairs: np.ndarray, latency: np.ndarray) -> None:
    """per_prefill[p] = min(per_prefill[p], the least ``latency`` of the ``pairs`` (in increasing order) with prefill
    vector p)."""
    per_vector = pairs.size // NUM_POLICIES
    product = per_vector > 0 and per_vector * NUM_POLICIES == pairs.size
    if product and (_PP[pairs].reshape(NUM_POLICIES, per_vector) == np.arange(NUM_POLICIES)[:, None]).all():
        # as many decode vectors with each prefill vector (pair = prefill vector x 64 + decode vector): by a reshape
        np.minimum(per_prefill, latency.reshape(NUM_POLICIES, per_vector).min(axis=1), out=per_prefill)
    else:
        np.minimum.at(per_prefill, _PP[pairs], latency)


def stage_constants(tables: SpaceTables) -> StageConstants:
    res_dec = float(tables.resident_decode_s.sum())
    return StageConstants(
        tables.num_layers,
        tables.decode_steps,
        HostTier.CXL in tables.weight_tiers,
        res_dec,
        tables.head_total_s,
        res_dec,
        tables.head_s,
        tables.head_s,
    )


def combo_arrays(tables: SpaceTables, combo: Combo, isa_pre: CpuIsa, isa_dec: CpuIsa) -> ComboArrays:
    pre, dec = {}, {}
    for wt in tables.weight_tiers:
        pre[wt] = tables.prefill[(combo, wt)][isa_pre].policy_layer_times[:, 0]
        if tables.decode_steps > 0:
            dec[wt] = _kept(tables, "decode_sum", tables.decode[combo.decode_key(wt)][isa_dec], _decode_sum)
        else:
            dec[wt] = np.zeros(NUM_POLICIES)
    terms = tables.prefill[(combo, tables.weight_tiers[0])][isa_pre]
    fill = None
    if pass_start_fill(tables.system, terms.context):
        fill = _kept(tables, "fill", terms, _fill_parts)
    return ComboArrays(
        combo.kv_tier,
        tables.memory[combo.minibatches],
        tables.resident_prefill_s[combo.minibatches],
        pre,
        dec,
        dec,
        fill,
    )


def _decode_sum(terms: StageTerms) -> np.ndarray:
    """A decode layer's time of each policy vector summed over the steps [64]."""
    return terms.policy_layer_times.sum(axis=1)


def _fill_parts(terms: StageTerms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A prefill layer's (compute, copy, throughput) parts of each policy vector [64] each."""
    return tuple(v[:, 0] for v in terms.fill_parts(ALL_POLICY_FEATURES))


def _kept(tables: SpaceTables, kind: str, terms: StageTerms, compute: Callable[[StageTerms], object]):
    """``compute(terms)``, kept in ``tables.derived`` for the next reader of the same terms object (the search reads
    a choice's arrays once per decode ISA and again in each simulation round). Terms are never altered
    (``simulate_prefill`` replaces them), so the kept value stays theirs; it holds them, so their id is not reused."""
    key = (kind, id(terms))
    hit = tables.derived.get(key)
    if hit is None:
        hit = tables.derived[key] = (terms, compute(terms))
    return hit[1]


def enumerate_optimum(
    tables: SpaceTables,
    tpot_max_s: Optional[float] = None,
    exhaustive: bool = False,
    ttft_max_s: Optional[float] = None,
) -> Optional[EnumeratedOptimum]:
    """The minimum-latency plan of the space (None when no plan fits memory and the TPOT and TTFT bounds)."""
    consts = stage_constants(tables)
    best: Optional[tuple] = None  # (latency, combo, n_res, pp, pd, k_cxl, isa_pre, isa_dec)
    per_combo: dict[Combo, float] = {}
    for combo in tables.combos:
        for isa_pre in tables.prefill_isas(combo):
            for isa_dec in tables.decode_isas(combo):
                arrays = combo_arrays(tables, combo, isa_pre, isa_dec)
                found = best_in_combo(arrays, consts, tpot_max_s, exhaustive, ttft_max_s)
                if found is None:
                    continue
                per_combo[combo] = min(per_combo.get(combo, np.inf), found[0])
                if best is None or found[0] < best[0]:
                    best = (found[0], combo, *found[1:], isa_pre, isa_dec)
    if best is None:
        return None
    value, combo, n_res, pp, pd, k_cxl, isa_pre, isa_dec = best
    return EnumeratedOptimum(plan_of(tables, combo, n_res, pp, pd, k_cxl, isa_pre, isa_dec), value, None, per_combo)


# Relative slack when ruling a choice out by a lower bound: the bound and the exact value sum the same terms in
# other orders, so they may differ in the last bits (a bound is not exact to the ulp).
_BOUND_SLACK = 1e-9


def lazy_optimum(tables: SpaceTables, tpot_max_s: Optional[float] = None) -> Optional[EnumeratedOptimum]:
    """``enumerate_optimum`` of tables built with ``prefill_bound`` (the streamed prefill schedules lower
    bounds, not simulated), simulating only the (combo, prefill ISA) choices, and in them the prefill policy
    vectors, that can be optimal.

    Exact: the latency of every point is non-decreasing in the prefill layer time and in the pipeline's compute
    part (prefill_pass_s), and neither memory nor the TPOT bound reads them, so ``best_in_combo`` on the bounded
    tables is a lower bound L(c, a) on the choice's optimum, and its ``per_prefill`` one L(c, a, p) per prefill
    vector p (or, for a vector whose points all lie in rows that cannot hold the choice's best, a value above that
    best, as its points are). Choices are simulated in increasing L; once L > the best exact latency found (with
    _BOUND_SLACK), no choice left can reach it. Inside a choice only the vectors that can reach the best latency are
    simulated (``_simulate_what_can_win``). Of equal optima the first in enumerate_optimum's order is returned, as
    there.
    ``combo_latency_s`` holds each combo's optimum, or for a combo whose choices were ruled out or simulated in
    part a lower bound on it (to the last bits: _BOUND_SLACK; solve_ilp's combo_bounds keeps a combo within 1e-9
    of the best)."""
    consts = stage_constants(tables)
    # per (combo, prefill ISA) in enumerate_optimum's order: the lower bound over its decode ISAs
    choices = [(combo, isa_pre) for combo in tables.combos for isa_pre in tables.prefill_isas(combo)]

    def best_of(combo: Combo, isa_pre: CpuIsa, per_prefill: np.ndarray) -> list[Optional[tuple]]:
        return [
            best_in_combo(combo_arrays(tables, combo, isa_pre, isa_dec), consts, tpot_max_s, per_prefill=per_prefill)
            for isa_dec in tables.decode_isas(combo)
        ]

    per_vector = [np.full(NUM_POLICIES, np.inf) for _ in choices]  # L(c, a, p) over the decode ISAs
    bounds = [_least(best_of(c, a, lower)) for (c, a), lower in zip(choices, per_vector)]
    values = list(bounds)  # each choice's optimum where simulated, else its lower bound
    best: Optional[tuple] = None  # (latency, order, combo, n_res, pp, pd, k_cxl, isa_pre, isa_dec)
    for k in sorted(range(len(choices)), key=lambda k: (bounds[k], k)):
        if not np.isfinite(bounds[k]) or (best is not None and bounds[k] > best[0] * (1 + _BOUND_SLACK)):
            break  # this bound and every later one exceed the best exact latency: nothing left can reach it
        combo, isa_pre = choices[k]
        incumbent = np.inf if best is None else best[0]
        exact = _simulate_what_can_win(tables, combo, isa_pre, per_vector[k], incumbent, best_of)
        values[k] = _least(exact)
        for j, (found, isa_dec) in enumerate(zip(exact, tables.decode_isas(combo))):
            if found is not None and (best is None or (found[0], (k, j)) < best[:2]):
                best = (found[0], (k, j), combo, *found[1:], isa_pre, isa_dec)
    if best is None:
        return None
    per_combo: dict[Combo, float] = {}
    for (combo, _), value in zip(choices, values):
        if np.isfinite(value):
            per_combo[combo] = min(per_combo.get(combo, np.inf), value)
    value, _, combo, n_res, pp, pd, k_cxl, isa_pre, isa_dec = best
    return EnumeratedOptimum(plan_of(tables, combo, n_res, pp, pd, k_cxl, isa_pre, isa_dec), value, None, per_combo)


# solve_ilp keeps the combos whose least latency is within this much of the best (relative; absolute, s)
COMBO_REL_TOL, COMBO_ABS_TOL = 1e-9, 1e-12


def within_best(value: float, best: float) -> bool:
    """Whether a combo whose least latency is ``value`` can reach the best latency ``best``: solve_ilp keeps its
    choices (the tolerance: the solvers' own, on an objective that sums the same terms in another order)."""
    return value <= best * (1 + COMBO_REL_TOL) + COMBO_ABS_TOL


def bound_exceeds(bound: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Where a lower bound (a sum of the same terms in another order: to the last bits) exceeds ``exact`` by more
    than rounding: there the value it bounds exceeds ``exact`` too. (|exact|: a column may sum to a last-bit
    negative zero, -1e-16.)"""
    return bound > exact + np.abs(exact) * _BOUND_SLACK


def exact_combo_latencies(
    tables: SpaceTables, found: EnumeratedOptimum, tpot_max_s: Optional[float] = None
) -> dict[Combo, float]:
    """``found.combo_latency_s`` (``lazy_optimum``'s, on these tables) made exact where solve_ilp's filter
    (``within_best``) reads it: every combo whose value, a lower bound to the last bits, may be within the best of
    it has its choices simulated in full and its least latency worked out as ``enumerate_optimum`` does; the other
    combos keep their bounds, which the filter rules out as it rules out their optima. So the filter keeps the
    combos it keeps on fully simulated tables, and their least (the optimum's combo is one of them) is the best."""
    consts = stage_constants(tables)
    exact = dict(found.combo_latency_s)
    for combo, bound in found.combo_latency_s.items():
        if not within_best(bound / (1 + 2 * _BOUND_SLACK), found.latency_s):
            continue
        for isa_pre in tables.prefill_isas(combo):
            simulate_prefill(tables, combo, isa_pre)
        exact[combo] = _least(
            [
                best_in_combo(combo_arrays(tables, combo, isa_pre, isa_dec), consts, tpot_max_s)
                for isa_pre in tables.prefill_isas(combo)
                for isa_dec in tables.decode_isas(combo)
            ]
        )
    return exact


def _least(found: list[Optional[tuple]]) -> float:
    """The least latency of ``best_in_combo`` results (inf: none)."""
    return min((f[0] for f in found if f is not None), default=np.inf)


def _simulate_what_can_win(
    tables: SpaceTables,
    combo: Combo,
    isa_pre: CpuIsa,
    lower: np.ndarray,
    incumbent: float,
    best_of: Callable[[Combo, CpuIsa, np.ndarray], list[Optional[tuple]]],
) -> list[Optional[tuple]]:
    """``best_of(combo, isa_pre)`` (one ``best_in_combo`` result per decode ISA) with the prefill schedules simulated
    for the policy vectors that can reach the best latency, where those results decide the search.

    ``lower`` [64]: L(p), a lower bound on the latency of the choice's points with prefill vector p, or, where it
    is not, above the value v of the evaluation that gave it (best_in_combo's per_prefill); ``incumbent``:
    the best exact latency of the choices before (inf: none). Rounds: simulate the vectors with
    L(p) <= reach, then evaluate the choice with those exact and the rest at their bounds, which gives a value v
    (<= its optimum) and new L(p) (exact for the simulated vectors), until no unsimulated vector has
    L(p) <= reach = min(v, incumbent) (1 + _BOUND_SLACK). Then every unsimulated point is worse than reach,
    hence than the best latency after this choice (<= min(v, incumbent): v is reached by a simulated point),
    and a decode ISA's result at or below reach is its exact result (its first minimum: the points at or below
    it are simulated ones, exact); one above reach is no exact result but cannot be the best, nor tie it."""
    reach = (incumbent if np.isfinite(incumbent) else lower.min()) * (1 + _BOUND_SLACK)
    wanted = (lower <= reach) & (lower < np.inf)  # (a vector with no point that fits needs no schedule)
    while True:
        simulate_prefill(tables, combo, isa_pre, wanted)
        lower = np.full(NUM_POLICIES, np.inf)
        found = best_of(combo, isa_pre, lower)
        value = min(_least(found), incumbent)
        if not np.isfinite(value):
            return found  # nothing fits (no simulation changes that: memory and the TPOT bound read no prefill)
        wanted = (lower <= value * (1 + _BOUND_SLACK)) & ~simulated_vectors(tables, combo, isa_pre)
        if not wanted.any():
            return found


def brute_force_optimum(
    tables: SpaceTables, tpot_max_s: Optional[float] = None, ttft_max_s: Optional[float] = None
) -> Optional[EnumeratedOptimum]:
    """The tests' oracle: every ISA pair the tables hold (build them with ``prune_isas=False``), every policy
    pair, N_res and combo evaluated (no class or allowance shortcut)."""
    return enumerate_optimum(tables, tpot_max_s, exhaustive=True, ttft_max_s=ttft_max_s)


def plan_of(
    tables: SpaceTables,
    combo: Combo,
    n_res: int,
    pp: int,
    pd: int,
    k_cxl: int,
    isa_pre: Optional[CpuIsa] = None,
    isa_dec: Optional[CpuIsa] = None,
) -> Plan:
    """The Plan of one point of the space (the weight split in its canonical form: all in CXL is
    weight_tier cxl, a part is cxl_weight_layers)."""
    streamed = tables.num_layers - n_res
    all_cxl = streamed > 0 and k_cxl == streamed
    plan = template_plan(tables.system).model_copy(
        update={
            "prefill_policy": policy_from_index(pp),
            "decode_policy": policy_from_index(pd),
            "gpu_resident_layers": n_res,
            "prefill_minibatches": combo.minibatches,
            "weight_tier": HostTier.CXL if all_cxl else HostTier.DDR,
            "cxl_weight_layers": 0 if all_cxl else k_cxl,
            "kv_tier": combo.kv_tier,
            "expert_fetch": combo.expert_fetch,
            "prefill_cpu_isa": isa_pre or tables.isas[0],
            "decode_cpu_isa": isa_dec or tables.isas[0],
        }
    )
    return tidy_plan(plan, streamed == 0, tables.decode_steps, tables.isas[0])


def least_footprint_memory(
    system: SystemSpec, model: ModelSpec, workload: Workload, relaxed: bool = False
) -> MemoryConstants:
    """The memory constants of the minibatch count with the smallest workspace (the largest n; taken as the
    minimum, so nothing rests on that): over the optimiser's counts (``minibatch_candidates``), or with
    ``relaxed`` over every divisor of B, beyond the cap too (n = B: one sequence per prefill chunk). The
    relaxed footprint only grows with B, which the bisection of ``largest_feasible_batch`` needs; a batch it
    admits may still fit no plan of the capped space, and then solves as infeasible."""
    counts = divisors(workload.batch) if relaxed else minibatch_candidates(workload.batch)
    # The GPU workspace is ws(n) + a constant (dequantisation) and the host's ws(n): the first n of the smallest
    # ws(n) is the first of the smallest (GPU, host) workspace pair, so only its constants are built.
    least_n = min(counts, key=lambda n: workspace_bytes(model, workload, n))
    least = memory_constants(system, model, workload, least_n)
    # A prefill policy's extras (waiting chunks, split attention) are >= 0 and smallest at some other n: dropped,
    # so this stays the smallest footprint of every (n, policy) the bounds built on it relax over
    zero = (0.0,) * len(least.waiting_chunks_bytes)
    return dataclasses.replace(least, waiting_chunks_bytes=zero, split_attention_bytes=zero)


def any_plan_fits_memory(
    system: SystemSpec, model: ModelSpec, workload: Workload, all_resident: bool = False, relaxed: bool = False
) -> bool:
    """Whether some plan of the space fits every tier (with ``all_resident``: some plan keeping every layer
    on the GPU). The policies' smallest footprint is all-CPU in both stages (no streaming buffers, no KV
    staging), and the workspace is smallest at one n (``least_footprint_memory``), so only N_res, the KV
    tier and the weight split need trying. ``relaxed``: minibatch counts beyond the optimiser's cap too
    (monotone in B; see ``least_footprint_memory``)."""
    n_layers = model.num_layers
    resident = np.arange(n_layers if all_resident else 0, n_layers + 1, dtype=float)
    streamed = n_layers - resident
    mem = least_footprint_memory(system, model, workload, relaxed)
    hbm_ok = _hbm_base(mem, resident) <= mem.available_bytes[MemoryTier.HBM]
    for kv in tier_candidates(system):
        lo, hi = cxl_weight_range(mem, kv, streamed, system.has_cxl)
        if ((lo <= hi) & hbm_ok).any():
            return True
    return False
