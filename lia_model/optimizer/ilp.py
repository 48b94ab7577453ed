"""The integer linear program (PuLP; CBC by default, HiGHS through highspy).

For one batch B it chooses the prefill and decode policy vectors, the number of GPU-resident layers,
the prefill minibatch count and the weight and KV tiers, minimising end-to-end latency
(optionally under a bound on the mean time per output token). The cost coefficients are the affine
forms of lia_model.costterms (see SpaceTables), so the ILP optimises exactly what predict() evaluates.

Notation: p[i] / d[i] in {0,1}: sublayer i runs on the CPU in prefill / decode (paper notation).
N = num_layers, K = N - N_res streamed layers, S = L_out - 1 decode steps, c indexes the combos
(n, weight tier, KV tier), z[c] in {0,1} selects one.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pulp

from lia_model.costterms import ALL_POLICY_FEATURES, CPU, D2H, H2D, NUM_FEATURES, QKV_CPU_CTX_GPU, Affine
from lia_model.errors import LiaInputError
from lia_model.memory import MemoryTier
from lia_model.optimizer.space import Combo, SpaceTables, template_plan, tidy_plan
from lia_model.plan import CpuIsa, Device, HostTier, Plan
from lia_model.sublayers import NUM_SUBLAYERS

_SCORE, _CTX = 1, 2
# Units inside the ILP: milliseconds and GB. Solver tolerances are absolute (around 1e-7 to 1e-6), so
# latencies of tens of ms written in seconds would sit at the tolerance; bytes would make rows of 1e10.
MS_PER_S = 1e3
GB_PER_BYTE = 1e-9


@dataclass(frozen=True)
class IlpSolution:
    plan: object
    objective_s: float          # the ILP's objective value (latency in seconds)
    solve_time_s: float
    variables: int
    constraints: int


_BANNER_LOCK = threading.Lock()
_banner_done = False


def _swallow_highs_banner() -> None:
    """highspy prints a banner to the process's stdout (the C-level file descriptor 1) when the first Highs
    object of the process is made, whatever the options; made once here with fd 1 pointing at /dev/null,
    later objects print nothing, so ``lia plan --solver highs --json`` stays pure JSON."""
    global _banner_done
    with _BANNER_LOCK:
        if _banner_done:
            return
        try:
            import highspy
        except ImportError:
            return
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 1)
                highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        _banner_done = True


def _solve_quietly(prob: pulp.LpProblem, solver) -> int:
    if isinstance(solver, pulp.HiGHS):
        _swallow_highs_banner()
    return prob.solve(solver)


def make_solver(name: str, time_limit_s: Optional[float] = None, warm_start: bool = False):
    name = name.lower()
    if name == "cbc":
        # The LP bound of this model is already within ~1% at the root, so cut generation, primal
        # heuristics and deep strong branching cost more than they save: over the benchmark's 50 queries the
        # median CBC solve fell from 99 ms (defaults) to 67 ms with these options (2-core dev machine).
        # They change the search, not the answer (gap 0).
        return pulp.PULP_CBC_CMD(msg=False, gapRel=0.0, gapAbs=0.0, timeLimit=time_limit_s, warmStart=warm_start,
                                 options=["cuts off", "heur off", "strong 3"])
    if name == "highs":
        solver = pulp.HiGHS(msg=False, gapRel=0.0, gapAbs=0.0, timeLimit=time_limit_s)
        if not solver.available():
            raise LiaInputError("--solver", "HiGHS needs the highspy package, which is not installed",
                                "pip install highspy, or use --solver cbc")
        return solver
    raise LiaInputError("--solver", f"unknown solver '{name}'", "use cbc, highs or enumerate")


def _upper_bound(const: float, coef: np.ndarray) -> float:
    """Largest value of const + coef . x over the 64 policy vectors' features: a valid big-M for a gated
    term, since the gate only has to switch the constraint off at integer points."""
    return float(np.max(const + ALL_POLICY_FEATURES @ coef))


def step_blocks(forms: list[Affine]) -> list[tuple[int, int]]:
    """Split the decode steps into blocks [start, end) inside which, for every one of the 64 policy
    vectors, one and the same term is the largest at every step.

    Within such a block  sum_t max_r f_r(x, t) = max_r sum_t f_r(x, t)  at every integer point, so one
    epigraph variable over the block's summed forms is exact (this keeps the ILP small for long outputs)."""
    values = np.stack([f.const[None, :] + ALL_POLICY_FEATURES @ f.coef for f in forms])  # [terms, 64, S]
    steps = values.shape[2]
    top = values.max(axis=0)                                                          # [64, S]
    is_max = values >= top[None] - 1e-12 * np.maximum(1.0, np.abs(top[None]))       # [terms, 64, S]
    blocks: list[tuple[int, int]] = []
    start = 0
    common = is_max[:, :, 0]
    for t in range(1, steps):
        nxt = common & is_max[:, :, t]
        if nxt.any(axis=0).all():
            common = nxt
            continue
        blocks.append((start, t))
        start, common = t, is_max[:, :, t]
    if steps:
        blocks.append((start, steps))
    return blocks


def _block_form(form: Affine, start: int, end: int) -> Affine:
    return Affine(form.const[start:end].sum(keepdims=True), form.coef[:, start:end].sum(axis=1, keepdims=True))


def _nondominated(forms: list[Affine], step: int) -> list[int]:
    """Indices of the terms at one step that can bind for some policy vector.

    A term whose value is <= another term's for all 64 policy vectors never sets the max; dropping its
    constraint leaves the integer optimum unchanged (it is implied at every integer point)."""
    values = np.stack([f.const[step] + ALL_POLICY_FEATURES @ f.coef[:, step] for f in forms])  # [terms, 64]
    keep: list[int] = []
    for r in range(len(forms)):
        dominated = any(
            other != r and np.all(values[r] <= values[other]) and (np.any(values[r] < values[other]) or other < r)
            for other in range(len(forms))
        )
        if not dominated:
            keep.append(r)
    return keep


class _Features:
    """Binary policy bits of one stage and the AND/XOR features built from them (costterms' features).

      h2d[j] = p_j AND NOT p_{j+1}:  h2d[j] >= p_j - p_{j+1},  h2d[j] <= p_j,  h2d[j] <= 1 - p_{j+1}
      d2h[j] = NOT p_j AND p_{j+1}:  d2h[j] >= p_{j+1} - p_j,  d2h[j] <= p_{j+1},  d2h[j] <= 1 - p_j
      so h2d[j] + d2h[j] = p_j XOR p_{j+1}: a device boundary between sublayers j and j+1.
      qc = p_qkv AND NOT p_context: qc >= p_0 - p_2,  qc <= p_0,  qc <= 1 - p_2
    """

    def __init__(self, prob: pulp.LpProblem, prefix: str) -> None:
        self.bits = [pulp.LpVariable(f"{prefix}_cpu_{i}", cat="Binary") for i in range(NUM_SUBLAYERS)]
        self.vars: dict[int, pulp.LpVariable] = {CPU[i]: self.bits[i] for i in range(NUM_SUBLAYERS)}
        for j in range(NUM_SUBLAYERS):
            a, b = self.bits[j], self.bits[(j + 1) % NUM_SUBLAYERS]
            self.vars[H2D[j]] = self._and_not(prob, f"{prefix}_h2d_{j}", a, b)
            self.vars[D2H[j]] = self._and_not(prob, f"{prefix}_d2h_{j}", b, a)
        self.vars[QKV_CPU_CTX_GPU] = self._and_not(prob, f"{prefix}_qc", self.bits[0], self.bits[_CTX])

    @staticmethod
    def _and_not(prob: pulp.LpProblem, name: str, a, b) -> pulp.LpVariable:
        u = pulp.LpVariable(name, lowBound=0, upBound=1)
        prob += u >= a - b
        prob += u <= a
        prob += u <= 1 - b
        return u

    def expr(self, coef: np.ndarray) -> list[tuple[pulp.LpVariable, float]]:
        return [(self.vars[k], float(coef[k])) for k in range(NUM_FEATURES) if coef[k] != 0.0]


def _gated(prob: pulp.LpProblem, epigraph, form_const: float, form_coef: np.ndarray, feats: _Features,
           gate_terms: list, name: str) -> None:
    """epigraph >= const + coef . x - M (1 - gate)   with M the term's upper bound.

    gate_terms: the z variables whose sum is 1 exactly when this term's combo is chosen."""
    big_m = _upper_bound(form_const, form_coef)
    if big_m <= 0:
        return
    terms = [(epigraph, 1.0)] + [(v, -c) for v, c in feats.expr(form_coef)] + [(z, -big_m) for z in gate_terms]
    prob += pulp.LpConstraint(pulp.LpAffineExpression(terms), pulp.LpConstraintGE, rhs=form_const - big_m, name=name)


def _prefill_choices(tables: SpaceTables) -> list[tuple[Combo, CpuIsa]]:
    """The (combo, prefill ISA) choices that can be optimal. (c1, i1) dominates (c2, i2) when both have the
    same tiers and (c1, i1) is no worse in the streamed prefill time of any of the 64 policy vectors, in the
    resident prefill time and in the workspace: swapping it in changes nothing else (decode, TPOT and the
    other memory terms do not depend on n or the prefill ISA). Dropping dominated choices is exact; of equal
    choices the first is kept."""
    kept: list[tuple[Combo, CpuIsa]] = []
    for tiers in tables.tier_pairs:
        items = [(c, isa) for c in tables.combos if c.tiers == tiers for isa in tables.prefill[c]]
        mem = [tables.memory[c.minibatches] for c, _ in items]
        values = np.hstack([
            np.stack([tables.prefill[c][isa].layer_time(ALL_POLICY_FEATURES)[:, 0] for c, isa in items]),
            np.array([[tables.resident_prefill_s[c.minibatches], m.gpu_workspace_bytes, m.host_workspace_bytes]
                      for (c, _), m in zip(items, mem)]),
        ])                                                                   # [k, 64 + 3]
        no_worse = np.all(values[:, None, :] <= values[None, :, :], axis=2)  # [j, i]: j no worse than i
        equal = no_worse & no_worse.T
        k = len(items)
        earlier = np.arange(k)[:, None] < np.arange(k)[None, :]
        # i is dropped when some j is no worse and (strictly better somewhere, or equal and earlier)
        beats = no_worse & (~equal | earlier)
        np.fill_diagonal(beats, False)
        kept += [item for i, item in enumerate(items) if not beats[:, i].any()]
    return kept


def _decode_choices(tables: SpaceTables) -> list[tuple[tuple[HostTier, HostTier], CpuIsa]]:
    return [(tiers, isa) for tiers in tables.decode for isa in tables.decode[tiers]]


def _name(*parts) -> str:
    return "_".join(str(getattr(p, "value", p)) for p in parts)


def solve_ilp(tables: SpaceTables, tpot_max_s: Optional[float] = None, solver: str = "cbc",
              time_limit_s: Optional[float] = None, warm_plan: Optional[Plan] = None,
              combo_bounds: Optional[dict] = None) -> Optional[IlpSolution]:
    """Minimum-latency plan for the batch in ``tables`` (None when no plan is feasible).

    ``warm_plan``: a feasible plan to start CBC's search from (its integer variables; CBC completes the rest
    and checks it). It changes where the search starts, not what it proves: the result is still the
    ILP's own optimum.

    ``combo_bounds``: the least latency any plan reaches with each combo (the enumerator's per-combo optimum,
    ``EnumeratedOptimum.combo_latency_s``); choices whose combo cannot reach the warm plan's latency are left
    out of the model. Both must come from the same tables; without them every choice is in."""
    t0 = time.perf_counter()
    n_layers = tables.num_layers
    steps = tables.decode_steps
    prob = pulp.LpProblem("lia_plan", pulp.LpMinimize)
    fp, fd = _Features(prob, "pre"), _Features(prob, "dec")

    # One prefill choice (n, weight tier, KV tier, prefill ISA):  sum_c z[c] = 1
    choices = _prefill_choices(tables)
    if combo_bounds is not None and warm_plan is not None:
        target = min(combo_bounds.values())
        choices = [ch for ch in choices if combo_bounds.get(ch[0], np.inf) <= target * (1 + 1e-9) + 1e-12]
    z = {ch: pulp.LpVariable(_name("z", ch[0].minibatches, ch[0].weight_tier, ch[0].kv_tier, ch[1]), cat="Binary")
         for ch in choices}
    prob += pulp.lpSum(z.values()) == 1
    sizes = sorted({c.minibatches for c, _ in choices})
    m = {n: [z[ch] for ch in choices if ch[0].minibatches == n] for n in sizes}
    w_cxl = [z[ch] for ch in choices if ch[0].weight_tier == HostTier.CXL]
    kv_cxl = [z[ch] for ch in choices if ch[0].kv_tier == HostTier.CXL]
    # One decode ISA with the same tiers:  sum_isa u[tiers, isa] = sum of z[c] with those tiers
    u = {}
    if steps > 0:
        u = {dc: pulp.LpVariable(_name("u", dc[0][0], dc[0][1], dc[1]), cat="Binary") for dc in _decode_choices(tables)}
        for tiers in tables.decode:
            prob += (pulp.lpSum(v for dc, v in u.items() if dc[0] == tiers)
                     == pulp.lpSum(v for ch, v in z.items() if ch[0].tiers == tiers))

    # Streamed-layer times. Prefill:  T_pre >= term_c(x_pre) - M (1 - z[c])  for each term of each choice.
    # Bounds from the 64 policy vectors: lo <= T_pre <= hi over every choice (valid at integer points).
    pre_times = {ch: MS_PER_S * tables.prefill[ch[0]][ch[1]].layer_time(ALL_POLICY_FEATURES)[:, 0] for ch in choices}
    ub_pre = max(float(v.max()) for v in pre_times.values())
    t_pre = pulp.LpVariable("T_pre", lowBound=min(float(v.min()) for v in pre_times.values()))
    for ch in choices:
        forms = [form.scaled(MS_PER_S) for _, form in tables.prefill[ch[0]][ch[1]].terms.values()]
        for r in _nondominated(forms, 0):
            _gated(prob, t_pre, float(forms[r].const[0]), forms[r].coef[:, 0], fp, [z[ch]],
                   _name("pre", ch[0].minibatches, ch[0].weight_tier, ch[0].kv_tier, ch[1], r))
    # Decode, per block of steps (see step_blocks; a block is often the whole decode):
    #   T_dec[b] >= sum_{t in b} term_{tiers,isa,t}(x_dec) - M (1 - u[tiers, isa])
    # Each (tier pair, ISA) has its own blocks, so the epigraph variables are per decode choice; the unchosen
    # choices' variables fall to their lower bound 0.
    dec_times = {dc: MS_PER_S * tables.decode[dc[0]][dc[1]].layer_time(ALL_POLICY_FEATURES) for dc in u}  # [64, S]
    ub_dec = float(np.max([v.sum(axis=1).max() for v in dec_times.values()])) if u else 0.0
    lo_dec = float(np.min([v.sum(axis=1).min() for v in dec_times.values()])) if u else 0.0
    t_dec = []
    for dc, gate in u.items():
        (wt, kv), isa = dc
        forms = [form.scaled(MS_PER_S) for _, form in tables.decode[(wt, kv)][isa].terms.values()]
        for start, end in step_blocks(forms):
            epi = pulp.LpVariable(_name("T_dec", wt, kv, isa, start), lowBound=0)
            t_dec.append(epi)
            block = [_block_form(f, start, end) for f in forms]
            for r in _nondominated(block, 0):
                _gated(prob, epi, float(block[r].const[0]), block[r].coef[:, 0], fd, [gate],
                       _name("dec", wt, kv, isa, start, r))

    # K = N - N_res in binary:  K = sum_j 2^j b[j] <= N;  sigma = [K >= 1]:  K >= sigma,  K <= N sigma
    bits = max(1, n_layers.bit_length())
    b = [pulp.LpVariable(f"k_bit_{j}", cat="Binary") for j in range(bits)]
    streamed = pulp.lpSum((2**j) * b[j] for j in range(bits))
    prob += streamed <= n_layers
    sigma = pulp.LpVariable("sigma", cat="Binary")
    prob += streamed >= sigma
    prob += streamed <= n_layers * sigma
    resident = n_layers - streamed

    # K * Q with Q = T_pre + sum_t T_dec[t]:  w[j] >= Q - U (1 - b[j]),  w[j] >= 0,  K Q = sum_j 2^j w[j]
    q_total = t_pre + pulp.lpSum(t_dec)
    u_q = ub_pre + ub_dec
    w = [pulp.LpVariable(f"kq_{j}", lowBound=0) for j in range(bits)]
    for j in range(bits):
        prob += w[j] >= q_total - u_q * (1 - b[j])
    # McCormick cuts on K Q (valid, they only tighten the LP relaxation), with lo <= Q <= U:
    #   K Q >= lo K,   K Q >= N Q + U K - N U
    kq = pulp.lpSum((2**j) * w[j] for j in range(bits))
    lo_q = float(t_pre.lowBound) + lo_dec
    prob += kq >= lo_q * streamed
    prob += kq >= n_layers * q_total + u_q * streamed - n_layers * u_q

    # Resident layers run n chunks in prefill: r[n] = N_res * m[n] (integer x binary, exact):
    #   r[n] <= N m[n],  r[n] <= N_res,  r[n] >= N_res - N (1 - m[n]),  r[n] >= 0
    r = {}
    for n, zs in m.items():
        r[n] = pulp.LpVariable(f"res_n{n}", lowBound=0)
        mn = pulp.lpSum(zs)
        prob += r[n] <= n_layers * mn
        prob += r[n] <= resident
        prob += r[n] >= resident - n_layers * (1 - mn)
    res_decode_total = MS_PER_S * float(tables.resident_decode_s.sum())
    res_prefill = {n: MS_PER_S * t for n, t in tables.resident_prefill_s.items()}

    # Objective: latency = N_res sum_t R_dec(t) + sum_n r[n] R_pre(n) + sum_j 2^j w[j] + head
    prob += (res_decode_total * resident + pulp.lpSum(res_prefill[n] * r[n] for n in r)
             + kq + MS_PER_S * tables.head_total_s)

    # Memory. c[i] = p[i] AND d[i] (CPU in both stages: no GPU buffer):
    #   c[i] >= p[i] + d[i] - 1,  c[i] <= p[i],  c[i] <= d[i]
    # gamma[i] = sigma AND NOT c[i] (buffer pair needed):  gamma[i] >= sigma - c[i], gamma[i] >= 0
    # alpha = sigma AND (attention on the GPU in some stage):  alpha >= sigma - p[i], alpha >= sigma - d[i]
    mem0 = next(iter(tables.memory.values()))
    gb = GB_PER_BYTE
    avail = {t: v * gb for t, v in mem0.available_bytes.items()}
    layer_w, layer_kv = mem0.layer_weight_bytes * gb, mem0.kv_layer_bytes * gb
    gamma = []
    for i in range(NUM_SUBLAYERS):
        if mem0.sublayer_weight_bytes[i] == 0:
            gamma.append(None)
            continue
        both = pulp.LpVariable(f"cpu_both_{i}", lowBound=0, upBound=1)
        prob += both >= fp.bits[i] + fd.bits[i] - 1
        prob += both <= fp.bits[i]
        prob += both <= fd.bits[i]
        g = pulp.LpVariable(f"buffer_{i}", lowBound=0, upBound=1)
        prob += g >= sigma - both
        gamma.append(g)
    alpha = pulp.LpVariable("kv_staging", lowBound=0, upBound=1)
    for i in (_SCORE, _CTX):
        prob += alpha >= sigma - fp.bits[i]
        prob += alpha >= sigma - fd.bits[i]
    # HBM: emb + N_res (W + KV) + 2 sum_i W_i gamma[i] + KV alpha + sum_n ws(n) m[n] <= avail_hbm
    prob += (mem0.embedding_bytes * gb + resident * (layer_w + layer_kv)
             + pulp.lpSum(2.0 * mem0.sublayer_weight_bytes[i] * gb * g for i, g in enumerate(gamma) if g is not None)
             + layer_kv * alpha
             + pulp.lpSum(tables.memory[n].gpu_workspace_bytes * gb * pulp.lpSum(zs) for n, zs in m.items())
             <= avail[MemoryTier.HBM]), "hbm_capacity"
    # v = K * [tier is CXL] (integer x binary):  v <= N o,  v <= K,  v >= K - N (1 - o),  v >= 0
    v_w = _int_times_binary(prob, "streamed_w_cxl", streamed, pulp.lpSum(w_cxl), n_layers)
    v_k = _int_times_binary(prob, "streamed_kv_cxl", streamed, pulp.lpSum(kv_cxl), n_layers)
    # DDR: W (K - v_w) + KV (K - v_k) + sum_n ws(n) m[n] <= avail_ddr
    prob += (layer_w * (streamed - v_w) + layer_kv * (streamed - v_k)
             + pulp.lpSum(tables.memory[n].host_workspace_bytes * gb * pulp.lpSum(zs) for n, zs in m.items())
             <= avail[MemoryTier.DDR]), "ddr_capacity"
    # CXL: W v_w + KV v_k <= avail_cxl
    if w_cxl or kv_cxl:
        prob += layer_w * v_w + layer_kv * v_k <= avail[MemoryTier.CXL], "cxl_capacity"

    # Mean TPOT bound:  (N_res sum_t R_dec(t) + K D + head S) / S <= X   with D = sum_t T_dec[t],
    #   K D = sum_j 2^j y[j],  y[j] >= D - U_D (1 - b[j]),  y[j] >= 0
    if tpot_max_s is not None and steps > 0:
        d_total = pulp.lpSum(t_dec)
        y = [pulp.LpVariable(f"kd_{j}", lowBound=0) for j in range(bits)]
        for j in range(bits):
            prob += y[j] >= d_total - ub_dec * (1 - b[j])
        prob += (res_decode_total * resident + pulp.lpSum((2**j) * y[j] for j in range(bits))
                 + MS_PER_S * tables.head_s * steps <= MS_PER_S * tpot_max_s * steps), "tpot_bound"

    warm = warm_plan is not None and _set_start(warm_plan, tables, fp, fd, z, u, b, sigma)
    status = _solve_quietly(prob, make_solver(solver, time_limit_s, warm_start=warm))
    elapsed = time.perf_counter() - t0
    if pulp.LpStatus[status] != "Optimal":
        return None

    k_value = int(round(sum((2**j) * b[j].value() for j in range(bits))))
    combo, pre_isa = max(choices, key=lambda ch: z[ch].value())
    dec_isa = max(u, key=lambda dc: u[dc].value())[1] if u else pre_isa
    pre = tuple(Device(int(round(v.value()))) for v in fp.bits)
    dec = tuple(Device(int(round(v.value()))) for v in fd.bits)
    plan = template_plan(tables.system).model_copy(update={
        "prefill_policy": pre,
        "decode_policy": dec,
        "gpu_resident_layers": n_layers - k_value,
        "prefill_minibatches": combo.minibatches,
        "weight_tier": combo.weight_tier,
        "kv_tier": combo.kv_tier,
        "prefill_cpu_isa": pre_isa,
        "decode_cpu_isa": dec_isa,
    })
    plan = tidy_plan(plan, k_value == 0, steps, tables.isas[0])
    return IlpSolution(plan, float(pulp.value(prob.objective)) / MS_PER_S, elapsed, prob.numVariables(),
                       prob.numConstraints())


def _set_start(plan: Plan, tables: SpaceTables, fp: _Features, fd: _Features, z: dict, u: dict, b: list,
               sigma) -> bool:
    """Initial values of the integer variables for ``plan``; False when the plan's choices are not among
    the ILP's (e.g. a dominated (n, ISA) choice), and then no start is given."""
    combo = Combo(plan.prefill_minibatches, plan.weight_tier, plan.kv_tier)
    pre_key = (combo, plan.prefill_cpu_isa)
    dec_key = ((plan.weight_tier, plan.kv_tier), plan.decode_cpu_isa)
    if pre_key not in z or (u and dec_key not in u):
        return False
    for bits, policy in ((fp.bits, plan.prefill_policy), (fd.bits, plan.decode_policy)):
        for var, device in zip(bits, policy):
            var.setInitialValue(int(device))
    for key, var in z.items():
        var.setInitialValue(1 if key == pre_key else 0)
    for key, var in u.items():
        var.setInitialValue(1 if key == dec_key else 0)
    streamed = tables.num_layers - plan.gpu_resident_layers
    for j, var in enumerate(b):
        var.setInitialValue((streamed >> j) & 1)
    sigma.setInitialValue(1 if streamed > 0 else 0)
    return True


def _int_times_binary(prob: pulp.LpProblem, name: str, integer, binary, upper: int) -> pulp.LpVariable:
    v = pulp.LpVariable(name, lowBound=0)
    prob += v <= upper * binary
    prob += v <= integer
    prob += v >= integer - upper * (1 - binary)
    return v
