"""The integer linear program (PuLP; CBC by default, HiGHS through highspy).

For one batch B it chooses the prefill and decode policy vectors, the number of GPU-resident layers,
the prefill minibatch count, the CPU ISA of each stage, the KV tier, how many streamed layers keep their
weights in CXL and (MoE) how experts are fetched, minimising end-to-end latency (optionally under a bound on
the mean time per output token and one on the time to the first token). The cost coefficients are the layer
times that lia_model.costterms gives each of the 64 policy vectors (see SpaceTables): the ILP optimises exactly
what predict() evaluates.

Notation: y[pi] / x[pi] in {0,1}: the prefill / decode policy vector is pi (one-hot over the 64 vectors);
p[i] = sum_pi pi_i y[pi] and d[i] = sum_pi pi_i x[pi]: sublayer i runs on the CPU in prefill / decode (paper
notation). N = num_layers, K = N - N_res streamed layers, K_t of them with their weights in tier t (DDR,
and CXL where the system has it), S = L_out - 1 decode steps, c indexes the combos (n, KV tier, expert
fetch); z[c, a] in {0,1} selects a combo and the prefill ISA a, u[kv, e, a] the decode ISA a (for the
combo's KV tier and expert fetch).
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pulp

from lia_model.costterms import ALL_POLICY_FEATURES, NUM_POLICIES, pass_start_fill
from lia_model.errors import LiaInputError
from lia_model.memory import MemoryTier
from lia_model.optimizer.enumerate import bound_exceeds, plan_of, within_best
from lia_model.optimizer.space import (
    Combo,
    SpaceTables,
    simulate_every_prefill,
    simulate_prefill,
    simulated_vectors,
)
from lia_model.plan import CpuIsa, HostTier
from lia_model.sublayers import NUM_SUBLAYERS

_SCORE, _CTX = 1, 2
# Units inside the ILP: milliseconds and GB. Solver tolerances are absolute (around 1e-7 to 1e-6), so
# latencies of tens of ms written in seconds would sit at the tolerance; bytes would make rows of 1e10.
MS_PER_S = 1e3
GB_PER_BYTE = 1e-9
_BITS = ALL_POLICY_FEATURES[:, :NUM_SUBLAYERS]  # [64, 6] the CPU bits of each policy vector


@dataclass(frozen=True)
class IlpSolution:
    plan: object
    objective_s: float  # the ILP's own objective value (latency in seconds)
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


def make_solver(name: str, time_limit_s: Optional[float] = None):
    name = name.lower()
    if name == "cbc":
        # The LP bound of this model is already within ~1% at the root, so cut generation, primal
        # heuristics and deep strong branching cost more than they save: over the benchmark's 50 queries the
        # median CBC solve fell from 99 ms (defaults) to 67 ms with these options (2-core dev machine).
        # They change the search, not the answer (gap 0).
        return pulp.PULP_CBC_CMD(
            msg=False, gapRel=0.0, gapAbs=0.0, timeLimit=time_limit_s, options=["cuts off", "heur off", "strong 3"]
        )
    if name == "highs":
        solver = pulp.HiGHS(msg=False, gapRel=0.0, gapAbs=0.0, timeLimit=time_limit_s)
        if not solver.available():
            raise LiaInputError(
                "--solver",
                "HiGHS needs the highspy package, which is not installed",
                "pip install highspy, or use --solver cbc",
            )
        return solver
    raise LiaInputError("--solver", f"unknown solver '{name}'", "use cbc, highs or enumerate")


def _linear(terms) -> pulp.LpAffineExpression:
    """sum coef var over the (var, coef) pairs ``terms`` (distinct variables): the expression pulp.lpSum(coef * var
    for ...) builds, the same terms in the same order with the same coefficients, without one expression per product
    (PuLP's refusal of a non-finite coefficient kept)."""
    terms = list(terms)
    for _, coef in terms:
        if not math.isfinite(coef):
            raise pulp.PulpError("Cannot multiply variables with NaN/inf values")
    return pulp.LpAffineExpression(terms)


def _one_hot(prob: pulp.LpProblem, prefix: str) -> tuple[list[pulp.LpVariable], list]:
    """y[pi] binary, sum_pi y[pi] = 1; returns y and the CPU bits p[i] = sum_pi pi_i y[pi] (expressions)."""
    y = [pulp.LpVariable(f"{prefix}_{k}", cat="Binary") for k in range(NUM_POLICIES)]
    prob += pulp.lpSum(y) == 1
    bits = [_linear((y[k], 1) for k in range(NUM_POLICIES) if _BITS[k, i]) for i in range(NUM_SUBLAYERS)]
    return y, bits


def _gated_table(
    prob: pulp.LpProblem, epigraph, values: np.ndarray, y: list, gate: list, lower: float, name: str
) -> None:
    """epigraph >= sum_pi values[pi] y[pi] - M (1 - sum(gate)),  M = max(values) - lower: exact at the
    chosen vector when the gate is on, below the epigraph's lower bound when it is off."""
    big_m = max(float(values.max()) - lower, 0.0)
    prob += (
        (
            epigraph
            >= _linear((y[k], float(v)) for k, v in enumerate(values) if v != 0.0) - big_m * (1 - pulp.lpSum(gate))
        ),
        name,
    )


def _gated_epigraph(prob: pulp.LpProblem, name: str, tables: dict, y: list, gates: dict) -> tuple:
    """One variable v >= the chosen table at the one-hot y, for each key's table gated by ``gates[key]`` (a list
    of binaries summing to 1 when that key is chosen): v >= sum_pi values_key[pi] y[pi] - M (1 - gate_key).
    Keys are tuples of enums and Combos (they name the constraints). Returns (v, lo, hi), lo and hi the smallest
    and largest table entry (v's lower bound, a product's bounds)."""
    lo = min(float(v.min()) for v in tables.values())
    hi = max(float(v.max()) for v in tables.values())
    var = pulp.LpVariable(name, lowBound=lo)
    for key, values in tables.items():
        label = "_".join(getattr(k, "label", None) or k.value for k in key)  # Combo.label, enums' values
        _gated_table(prob, var, values, y, gates[key], lo, f"{name}_{label}")
    return var, lo, hi


def _times_integer(prob: pulp.LpProblem, name: str, bits: list, value, lo: float, hi: float, n_layers: int):
    """K * Q for K = sum_j 2^j b[j] (0 <= K <= N) and lo <= Q <= hi, exactly:
    w[j] >= Q - hi (1 - b[j]),  w[j] >= 0,  K Q = sum_j 2^j w[j]  (minimised, so w[j] = b[j] Q);
    McCormick cuts (valid, they only tighten the relaxation): K Q >= lo K,  K Q >= N Q + hi K - N hi."""
    w = [pulp.LpVariable(f"{name}_{j}", lowBound=0) for j in range(len(bits))]
    for j, b in enumerate(bits):
        prob += w[j] >= value - hi * (1 - b)
    product = pulp.lpSum((2**j) * w[j] for j in range(len(bits)))
    count = pulp.lpSum((2**j) * b for j, b in enumerate(bits))
    prob += product >= lo * count
    prob += product >= n_layers * value + hi * count - n_layers * hi
    return product


def _fills(tables: SpaceTables) -> bool:
    """Whether the prefill pass is the two-buffer pipeline (costterms.prefill_pass_s) in these tables."""
    first = next(iter(tables.prefill.values()))
    return pass_start_fill(tables.system, next(iter(first.values())).context)


def _prefill_columns(terms, tables: SpaceTables) -> np.ndarray:
    """What the prefill cost reads of one (combo, ISA) streamed layer, per policy vector: its layer time, or
    (pipeline) its compute, copy and throughput parts, each of which the pass is non-decreasing in."""
    if _fills(tables):
        return np.concatenate([v[:, 0] for v in terms.fill_parts(ALL_POLICY_FEATURES)])
    return terms.policy_layer_times[:, 0]


def _choice_row(tables: SpaceTables, combo: Combo, isa: CpuIsa) -> np.ndarray:
    """What ``_prefill_choices`` compares of one (combo, prefill ISA) choice: its prefill columns with each weight
    tier, its resident prefill time and its workspaces (GPU, host)."""
    mem = tables.memory[combo.minibatches]
    times = [_prefill_columns(tables.prefill[(combo, t)][isa], tables) for t in tables.weight_tiers]
    scalars = [tables.resident_prefill_s[combo.minibatches], mem.gpu_workspace_bytes, mem.host_workspace_bytes]
    return np.concatenate([*times, scalars])


def _simulate_what_the_model_reads(tables: SpaceTables, combos: set[Combo]) -> None:
    """On tables whose prefill schedules are lower bounds where not simulated (build_tables(prefill_bound=True),
    simulated in part by enumerate.lazy_optimum): simulate every choice of ``combos`` (the combos the model keeps)
    and every other choice that may be no worse than one of those (``_prefill_choices``' dominance), so that the
    model keeps the choices it keeps on fully simulated tables. A bounded column is at most its exact value; where
    it exceeds a kept choice's exact column beyond rounding (``bound_exceeds``), so does the exact one: the choice
    is no worse than that one in neither table."""
    kept = [(c, a) for c in tables.combos if c in combos for a in tables.prefill_isas(c)]
    for combo, isa in kept:
        simulate_prefill(tables, combo, isa)
    rows = {choice: _choice_row(tables, *choice) for choice in kept}
    for combo in tables.combos:
        group = (combo.kv_tier, combo.expert_fetch)
        for isa in tables.prefill_isas(combo):
            if (combo, isa) in kept or simulated_vectors(tables, combo, isa).all():
                continue
            row = _choice_row(tables, combo, isa)
            if any(
                (c.kv_tier, c.expert_fetch) == group and not bound_exceeds(row, exact).any()
                for (c, _), exact in rows.items()
            ):
                simulate_prefill(tables, combo, isa)


def _prefill_choices(tables: SpaceTables) -> list[tuple[Combo, CpuIsa]]:
    """The (combo, prefill ISA) choices that can be optimal. (c1, a1) dominates (c2, a2) when both have the
    same KV tier and expert fetch and (c1, a1) is no worse in the streamed prefill time of any of the 64 policy
    vectors with either weight tier, in the resident prefill time and in the workspace: swapping it in changes
    nothing else (decode, TPOT and the other memory terms do not depend on n or the prefill ISA), and the
    latency and the TTFT are non-decreasing in each of those times. Dropping dominated choices is exact; of equal
    choices the first is kept."""
    kept: list[tuple[Combo, CpuIsa]] = []
    groups = dict.fromkeys((c.kv_tier, c.expert_fetch) for c in tables.combos)
    for group in groups:
        items = [(c, a) for c in tables.combos if (c.kv_tier, c.expert_fetch) == group for a in tables.prefill_isas(c)]
        values = np.stack([_choice_row(tables, c, a) for c, a in items])
        no_worse = np.all(values[:, None, :] <= values[None, :, :], axis=2)  # [j, i]: j no worse than i
        equal = no_worse & no_worse.T
        earlier = np.arange(len(items))[:, None] < np.arange(len(items))[None, :]
        beats = no_worse & (~equal | earlier)  # i drops when some j is no worse: strictly somewhere, or earlier
        np.fill_diagonal(beats, False)
        kept += [item for i, item in enumerate(items) if not beats[:, i].any()]
    return kept


def solve_ilp(
    tables: SpaceTables,
    tpot_max_s: Optional[float] = None,
    solver: str = "cbc",
    time_limit_s: Optional[float] = None,
    combo_bounds: Optional[dict] = None,
    ttft_max_s: Optional[float] = None,
) -> Optional[IlpSolution]:
    """Minimum-latency plan for the batch in ``tables`` (None when no plan is feasible), under the bounds given:
    mean TPOT <= ``tpot_max_s``, TTFT <= ``ttft_max_s``.

    ``combo_bounds``: the least latency any plan reaches with each combo (the enumerator's per-combo optimum,
    ``EnumeratedOptimum.combo_latency_s``, from the same tables); choices whose combo cannot reach the best
    of them are left out of the model. Without it every choice is in.

    Tables built with ``prefill_bound`` (bounded prefill schedules, simulated in part) are simulated where the
    model reads them first; ``combo_bounds`` must then be exact wherever they are ``within_best`` of the best, and
    lower bounds elsewhere (``enumerate.exact_combo_latencies``): the model is the one of fully simulated tables."""
    t0 = time.perf_counter()
    n_layers = tables.num_layers
    steps = tables.decode_steps
    tiers = tables.weight_tiers
    prob = pulp.LpProblem("lia_plan", pulp.LpMinimize)
    y_pre, p = _one_hot(prob, "pre")
    y_dec, d = _one_hot(prob, "dec")

    # One combo (n, KV tier, expert fetch) and prefill ISA:  sum_{c,a} z[c, a] = 1
    target = min(combo_bounds.values()) if combo_bounds else None
    if tables.prefill_bound and target is not None:
        _simulate_what_the_model_reads(tables, {c for c, v in combo_bounds.items() if within_best(v, target)})
    elif tables.prefill_bound:
        simulate_every_prefill(tables)
    choices = _prefill_choices(tables)
    if target is not None:
        choices = [ch for ch in choices if within_best(combo_bounds.get(ch[0], np.inf), target)]
    z = {ch: pulp.LpVariable(f"z_{ch[0].label}_{ch[1].value}", cat="Binary") for ch in choices}
    prob += pulp.lpSum(z.values()) == 1
    sizes = sorted({c.minibatches for c, _ in choices})
    m = {n: [z[ch] for ch in choices if ch[0].minibatches == n] for n in sizes}
    kv_cxl = [z[ch] for ch in choices if ch[0].kv_tier == HostTier.CXL]
    # One decode ISA for the chosen KV tier and expert fetch:  sum_a u[kv, e, a] = sum of z[c, .] with (kv, e)
    groups = list(dict.fromkeys((c.kv_tier, c.expert_fetch) for c, _ in choices))
    u = {}
    if steps > 0:
        for kv, ef in groups:
            combo = next(c for c, _ in choices if (c.kv_tier, c.expert_fetch) == (kv, ef))
            for a in tables.decode_isas(combo):
                u[(kv, ef, a)] = pulp.LpVariable(f"u_{kv.value}_{ef.value}_{a.value}", cat="Binary")
            prob += pulp.lpSum(v for key, v in u.items() if key[:2] == (kv, ef)) == pulp.lpSum(
                v for ch, v in z.items() if (ch[0].kv_tier, ch[0].expert_fetch) == (kv, ef)
            )

    # Streamed-layer times per weight tier t (ms), from the layer time of every policy vector:
    #   T_pre[t] >= sum_pi P_{c,t}(pi) y_pre[pi] - M (1 - z[c])                      for each combo c
    #   D[t]     >= sum_pi D_{k,t}(pi) y_dec[pi] - M (1 - sum of z[c] with key(c) = k)  for each decode key k
    # with D = the decode layer time summed over the steps; Q[t] = T_pre[t] + D[t] per layer.
    # (Pipeline prefill, no CXL: T_pre is not used; its three parts c, W, X get the same gated epigraphs below.)
    fills = _fills(tables)
    q_of, d_of, p_of, bounds = {}, {}, {}, {}
    for t in tiers:
        lo_pre = hi_pre = 0.0
        t_pre = 0.0
        if not fills:
            pre = {ch: MS_PER_S * tables.prefill[(ch[0], t)][ch[1]].policy_layer_times[:, 0] for ch in choices}
            t_pre, lo_pre, hi_pre = _gated_epigraph(prob, f"T_pre_{t.value}", pre, y_pre, {ch: [z[ch]] for ch in pre})
        lo_dec = hi_dec = 0.0
        t_dec = 0.0
        if steps > 0:
            dec = {
                key: MS_PER_S * tables.decode[(key[0], key[1], t)][key[2]].policy_layer_times.sum(axis=1) for key in u
            }
            t_dec, lo_dec, hi_dec = _gated_epigraph(prob, f"D_{t.value}", dec, y_dec, {key: [u[key]] for key in dec})
        q_of[t], d_of[t], p_of[t] = t_pre + t_dec, t_dec, (t_pre, lo_pre, hi_pre)
        bounds[t] = (lo_pre + lo_dec, hi_pre + hi_dec, lo_dec, hi_dec)

    # K_t in binary:  K_t = sum_j 2^j b_t[j];  K = sum_t K_t <= N;  sigma = [K >= 1]:  K >= sigma,  K <= N sigma
    width = max(1, n_layers.bit_length())
    b = {t: [pulp.LpVariable(f"k_{t.value}_bit_{j}", cat="Binary") for j in range(width)] for t in tiers}
    count = {t: pulp.lpSum((2**j) * v for j, v in enumerate(b[t])) for t in tiers}
    streamed = pulp.lpSum(count.values())
    prob += streamed <= n_layers
    sigma = pulp.LpVariable("sigma", cat="Binary")
    prob += streamed >= sigma
    prob += streamed <= n_layers * sigma
    resident = n_layers - streamed

    # sum_t K_t Q[t], each product exact through the binary expansion of K_t (pipeline prefill: Q = D)
    kq = {
        t: _times_integer(prob, f"kq_{t.value}", b[t], q_of[t], bounds[t][0], bounds[t][1], n_layers)
        for t in tiers
        if steps > 0 or not fills
    }

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

    resident_prefill = pulp.lpSum(res_prefill[n] * r[n] for n in r)  # N_res R_pre(n)
    prefill = resident_prefill
    if fills:
        prefill = _pipeline_prefill(prob, tables, choices, z, y_pre, b[tiers[0]], streamed, sigma, resident_prefill)

    # Objective: latency = N_res sum_t R_dec(t) + sum_n r[n] R_pre(n) + sum_t K_t Q[t] + head
    #   (pipeline prefill: N_res sum_t R_dec(t) + P + K D + head, P the prefill pass below)
    prob += res_decode_total * resident + prefill + pulp.lpSum(kq.values()) + MS_PER_S * tables.head_total_s

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
        prob += both >= p[i] + d[i] - 1
        prob += both <= p[i]
        prob += both <= d[i]
        g = pulp.LpVariable(f"buffer_{i}", lowBound=0, upBound=1)
        prob += g >= sigma - both
        gamma.append(g)
    alpha = pulp.LpVariable("kv_staging", lowBound=0, upBound=1)
    for i in (_SCORE, _CTX):
        prob += alpha >= sigma - p[i]
        prob += alpha >= sigma - d[i]
    # omega = what the streamed prefill policy adds to ws(n), with sigma (lia_model.memory prefill_policy_bytes):
    #   Wt_n(pi) = (n - 1) waiting_n(pi) + split_n(pi), the chunks waiting for the CPU and split attention's scores
    #   omega >= sum_pi Wt_n(pi) y_pre[pi] - max_pi Wt_n(pi) (2 - m[n] - sigma)   for each n,  omega >= 0
    omega = pulp.LpVariable("prefill_policy_gb", lowBound=0)
    for n, zs in m.items():
        policy_extra = np.asarray(tables.memory[n].prefill_policy_bytes) * gb
        if policy_extra.max() > 0:
            prob += omega >= (
                _linear((y_pre[k], float(w)) for k, w in enumerate(policy_extra) if w > 0)
                - float(policy_extra.max()) * (2 - pulp.lpSum(zs) - sigma)
            )
    # HBM: emb + N_res (W + KV) + 2 sum_i W_i gamma[i] + KV alpha + sum_n ws(n) m[n] + omega <= avail_hbm
    prob += (
        (
            mem0.embedding_bytes * gb
            + resident * (layer_w + layer_kv)
            + pulp.lpSum(2.0 * mem0.sublayer_weight_bytes[i] * gb * g for i, g in enumerate(gamma) if g is not None)
            + layer_kv * alpha
            + pulp.lpSum(tables.memory[n].gpu_workspace_bytes * gb * pulp.lpSum(zs) for n, zs in m.items())
            + omega
            <= avail[MemoryTier.HBM]
        ),
        "hbm_capacity",
    )
    # v = K * [KV tier is CXL] (integer x binary):  v <= N o,  v <= K,  v >= K - N (1 - o),  v >= 0
    v_k = _int_times_binary(prob, "streamed_kv_cxl", streamed, pulp.lpSum(kv_cxl), n_layers)
    k_cxl = count.get(HostTier.CXL, 0)
    # DDR: W K_ddr + KV (K - v) + sum_n ws(n) m[n] <= avail_ddr
    prob += (
        (
            layer_w * count[HostTier.DDR]
            + layer_kv * (streamed - v_k)
            + pulp.lpSum(tables.memory[n].host_workspace_bytes * gb * pulp.lpSum(zs) for n, zs in m.items())
            <= avail[MemoryTier.DDR]
        ),
        "ddr_capacity",
    )
    # CXL: W K_cxl + KV v <= avail_cxl
    if HostTier.CXL in tiers:
        prob += layer_w * k_cxl + layer_kv * v_k <= avail[MemoryTier.CXL], "cxl_capacity"

    # Mean TPOT bound:  (N_res sum_t R_dec(t) + sum_t K_t D[t] + head S) / S <= X, each K_t D[t] exact as above
    if tpot_max_s is not None and steps > 0:
        kd = [_times_integer(prob, f"kd_{t.value}", b[t], d_of[t], bounds[t][2], bounds[t][3], n_layers) for t in tiers]
        prob += (
            (
                res_decode_total * resident + pulp.lpSum(kd) + MS_PER_S * tables.head_s * steps
                <= MS_PER_S * tpot_max_s * steps
            ),
            "tpot_bound",
        )

    # TTFT bound:  N_res R_pre(n) + sum_t K_t T_pre[t] + head <= X, each K_t T_pre[t] exact as above
    #   (pipeline prefill: P + head <= X, P the prefill pass, which bounds F1..F5 from above)
    if ttft_max_s is not None:
        ttft = prefill + MS_PER_S * tables.head_s
        if not fills:
            ttft += pulp.lpSum(_times_integer(prob, f"kp_{t.value}", b[t], *p_of[t], n_layers) for t in tiers)
        prob += ttft <= MS_PER_S * ttft_max_s, "ttft_bound"

    status = _solve_quietly(prob, make_solver(solver, time_limit_s))
    elapsed = time.perf_counter() - t0
    if pulp.LpStatus[status] != "Optimal":
        return None

    k_value = {t: int(round(sum((2**j) * v.value() for j, v in enumerate(b[t])))) for t in tiers}
    combo, isa_pre = max(choices, key=lambda ch: z[ch].value())
    isa_dec = max(u, key=lambda key: u[key].value())[2] if u else isa_pre
    pp = max(range(NUM_POLICIES), key=lambda k: y_pre[k].value())
    pd = max(range(NUM_POLICIES), key=lambda k: y_dec[k].value())
    plan = plan_of(
        tables, combo, n_layers - sum(k_value.values()), pp, pd, k_value.get(HostTier.CXL, 0), isa_pre, isa_dec
    )
    return IlpSolution(
        plan, float(pulp.value(prob.objective)) / MS_PER_S, elapsed, prob.numVariables(), prob.numConstraints()
    )


def _pipeline_prefill(
    prob: pulp.LpProblem, tables: SpaceTables, choices, z, y_pre, bits, streamed, sigma, resident_prefill
):
    """The prefill pass P (ms) of costterms.prefill_pass_s, exact at the optimum (P is minimised and every
    constraint is a lower bound that is tight at the chosen plan):
      c, W, X >= the chosen (combo, ISA)'s compute, copy and throughput parts at y_pre   (gated tables)
      P >= N_res R_pre + K c                                   F1
      P >= W + K c             - M_W (1 - sigma)               F2  (only with K >= 1)
      P >= K W + c             - M_c (1 - sigma)               F3  (only with K >= 1)
      P >= N_res R_pre + 2 c + K W - 2 W - M_4 (1 - g2)        F4  (only with K >= 2)
      P >= K X                                                 F5
    with sigma = [K >= 1] (the model's own, solve_ilp) and g2 = [K >= 2] (K >= 2 g2, K <= 1 + N g2); each
    product K v exact through the binary expansion of K (_times_integer). The big-Ms bound what a form can
    reach when its gate is off: W, c, and N R_pre + 2 c (K <= 1 makes K W - 2 W <= 0)."""
    n_layers = tables.num_layers
    t = tables.weight_tiers[0]
    parts = {
        ch: [MS_PER_S * v[:, 0] for v in tables.prefill[(ch[0], t)][ch[1]].fill_parts(ALL_POLICY_FEATURES)]
        for ch in choices
    }
    gates = {ch: [z[ch]] for ch in choices}
    (c, _, hi_c), (w, _, hi_w), _ = epigraphs = [
        _gated_epigraph(prob, f"pre_{name}", {ch: v[j] for ch, v in parts.items()}, y_pre, gates)
        for j, name in enumerate(("c", "W", "X"))
    ]
    kc, kw, kx = (
        _times_integer(prob, f"k{name}", bits, v, lo, hi, n_layers) for name, (v, lo, hi) in zip("cwx", epigraphs)
    )
    g2 = pulp.LpVariable("pre_g2", cat="Binary")  # [K >= 2]
    prob += streamed >= 2 * g2
    prob += streamed <= 1 + n_layers * g2
    res_max = n_layers * MS_PER_S * max(tables.resident_prefill_s.values())
    p = pulp.LpVariable("prefill_pass", lowBound=0)
    prob += p >= resident_prefill + kc, "prefill_F1"
    prob += p >= w + kc - hi_w * (1 - sigma), "prefill_F2"
    prob += p >= kw + c - hi_c * (1 - sigma), "prefill_F3"
    prob += p >= resident_prefill + 2 * c + kw - 2 * w - (res_max + 2 * hi_c) * (1 - g2), "prefill_F4"
    prob += p >= kx, "prefill_F5"
    return p


def _int_times_binary(prob: pulp.LpProblem, name: str, integer, binary, upper: int) -> pulp.LpVariable:
    v = pulp.LpVariable(name, lowBound=0)
    prob += v <= upper * binary
    prob += v <= integer
    prob += v >= integer - upper * (1 - binary)
    return v
