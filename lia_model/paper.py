"""The paper mode: the LIA authors' released cost model, term for term, as affine forms over the policy features.

Source: ece-fast-lab/ISCA-2025-LIA, policy_search/policy_search.py (commit cf48e133), whose equations are
restated here (its code is not used). With a paper-* profile (hwprofiles/systems/paper-*.yaml: one CPU and
one GPU throughput at every size, one PCIe bandwidth, no overheads, a KV-pass factor of 3.5) this mode gives
that model's numbers; tests/test_paper_mode.py pins them against the script's own output.

Per layer, B sequences, q new tokens, s cached tokens (prefill q = s = L_in; decode q = 1, s = context),
h hidden, p_i = 1 when sublayer i runs on the CPU (the script writes 1 for the GPU; the equations below are
in the paper's notation). Byte counts are bf16 and, as in the script, without biases or norms:
  W      = qkv h (q_dim + 2 kv_dim), out_proj q_dim h, fc1 h f (gate+up: x2), fc2 f h   (x 2 bytes)
  KV     = B s kv_dim x 2 bytes (K for attn_score, V for attn_context)
  act_i  = B q h x 2 bytes for i = 0..4, B q f x 2 bytes for fc2 (its input)
  time of sublayer i on device d = FLOPs_i / throughput_d + (act_i + W_i) / bandwidth_d, and for the two
  attention sublayers (act_i + kappa_d KV) / bandwidth_d (kappa = kv_pass_factor)
  layer = sum_i [p_i cpu_i + (1 - p_i) gpu_i]
        + sum_{i in qkv, out_proj, fc1, fc2} (1 - p_i) W_i / pcie                       weights to the GPU
        + prefill: sum_{i in score, ctx} (1 - p_i) KV / pcie                             cache to the GPU
        + prefill: KV (p_1 (1 - p_0) + p_2 (1 - p_0)) / pcie                             cache back to the host
        + act_0 (1 - p_0) / pcie + sum_{i >= 1} act_i (p_{i-1} XOR p_i) / pcie           activations
        + sum_{i in score, ctx} (1 - p_i) KV / pcie                                      cache to the GPU (again)
        + (1 - p_5) act_0 / pcie + act_0 ((p_0 XOR p_3) + (p_3 XOR p_5)) / pcie           output and residuals
Host-to-device copies use the link's h2d bandwidth, device-to-host its d2h bandwidth (one figure in the
paper profiles); the residual copies use h2d. There is no overlap and no minibatching: the whole batch is
one pass whatever the plan's minibatch count. A resident layer is the script's all-GPU layer without
transfers. Dense models only (the script covers OPT).
"""

from __future__ import annotations

import numpy as np

from lia_model.accounting import sublayer_work
from lia_model.costterms import (
    CPU,
    D2H,
    H2D,
    OUT_XOR_FC2,
    QKV_GPU_CTX_CPU,
    QKV_XOR_OUT,
    Affine,
    Resource,
    StageContext,
    StageTerms,
    SublayerTimes,
    _bw,
    _cpu_rate,
    _gpu_rate,
    cpu_kv_passes,
)
from lia_model.errors import LiaInputError
from lia_model.hardware import SystemSpec
from lia_model.models import ModelSpec
from lia_model.sublayers import ATTENTION_SUBLAYERS, NUM_SUBLAYERS, SUBLAYERS
from lia_model.units import BF16_BYTES

_QKV, _SCORE, _CTX, _OUT, _FC1, _FC2 = range(6)


def _check(model: ModelSpec) -> None:
    if model.is_moe:
        raise LiaInputError(
            "--mode paper",
            f"the paper's released model covers dense layers; {model.name} is a mixture of experts",
            "use --mode overlap or additive for MoE models",
        )


def paper_sublayer_times(system: SystemSpec, model: ModelSpec, ctx: StageContext) -> SublayerTimes:
    """FLOPs / throughput + bytes / bandwidth of each sublayer on each device, whole batch, arrays over steps."""
    _check(model)
    contexts = np.asarray(ctx.contexts, dtype=float)
    steps = len(contexts)
    work = sublayer_work(model, ctx.batch, ctx.q, contexts)
    weights, kv, act = _bytes(model, ctx)
    cpu_bw = {i: _bw(min(system.cpu.memory_read_gbps, system.tier(ctx.weight_tier).read_gbps)) for i in range(6)}
    for i in (_SCORE, _CTX):
        cpu_bw[i] = _bw(min(system.cpu.memory_read_gbps, system.tier(ctx.kv_tier).read_gbps))
    hbm = _bw(system.gpu.hbm_gbps)
    kappa_cpu, kappa_gpu = cpu_kv_passes(system, ctx), system.gpu.kv_pass_factor
    out = {k: np.zeros((NUM_SUBLAYERS, steps)) for k in ("cpu", "gpu", "cpu_mem", "gpu_mem")}
    cpu_cb = np.zeros((NUM_SUBLAYERS, steps), dtype=bool)
    gpu_cb = np.zeros((NUM_SUBLAYERS, steps), dtype=bool)
    for i, sub in enumerate(SUBLAYERS):
        attention = sub in ATTENTION_SUBLAYERS
        flops = np.broadcast_to(np.asarray(work[sub].flops, dtype=float), (steps,))
        rows = ctx.q if attention else work[sub].tokens
        cpu_bytes = act[i] + (kappa_cpu * kv if attention else weights[i])
        gpu_bytes = act[i] + (kappa_gpu * kv if attention else weights[i])
        out["cpu_mem"][i], out["gpu_mem"][i] = cpu_bytes / cpu_bw[i], gpu_bytes / hbm
        cpu_flop_s, gpu_flop_s = (
            flops / _cpu_rate(system, ctx.cpu_isa, rows, attention),
            flops / _gpu_rate(system, rows, attention),
        )
        out["cpu"][i], out["gpu"][i] = cpu_flop_s + out["cpu_mem"][i], gpu_flop_s + out["gpu_mem"][i]
        cpu_cb[i], gpu_cb[i] = cpu_flop_s >= out["cpu_mem"][i], gpu_flop_s >= out["gpu_mem"][i]
    return SublayerTimes(out["cpu"], out["gpu"], cpu_cb, gpu_cb, out["cpu_mem"], out["gpu_mem"])


def _bytes(model: ModelSpec, ctx: StageContext) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The script's byte counts: weights [6], one cache (K or V) [S], activations [6]."""
    h, f, qd, kvd = model.hidden_size, model.ffn_size, model.q_dim, model.kv_dim
    b = BF16_BYTES
    m = ctx.batch * ctx.q
    weights = np.array([h * (qd + 2 * kvd), 0, 0, qd * h, h * f * model.mlp_matrices, f * h], dtype=float) * b
    kv = 1.0 * ctx.batch * np.asarray(ctx.contexts, dtype=float) * kvd * b
    act = np.array([m * h] * 5 + [m * f], dtype=float) * b
    return weights, kv, act


def paper_layer_terms(system: SystemSpec, model: ModelSpec, ctx: StageContext) -> StageTerms:
    """The script's layer latency as one serial affine term (see the module docstring)."""
    times = paper_sublayer_times(system, model, ctx)
    steps = len(ctx.contexts)
    weights, kv, act = _bytes(model, ctx)
    link = system.link
    h2d, d2h = _bw(link.h2d_gbps), _bw(link.d2h_gbps)
    prefill = len(ctx.contexts) == 1 and ctx.contexts[0] == ctx.q  # prefill: q = s = L_in
    form = Affine.zero(steps)
    weight_h2d_s = np.zeros(NUM_SUBLAYERS)
    cross_h2d = np.zeros((NUM_SUBLAYERS, steps))
    cross_d2h = np.zeros((NUM_SUBLAYERS, steps))
    kv_copy = np.zeros((NUM_SUBLAYERS, steps))
    for i in range(NUM_SUBLAYERS):
        form.add_feature(CPU[i], times.cpu_s[i])
        form.add_not_cpu(i, times.gpu_s[i])
        if i in (_SCORE, _CTX):
            # cache to the GPU (prefill: twice); none when it lives there (plan.streamed_kv_on_gpu)
            copies = 0.0 * kv if ctx.kv_on_gpu else (2.0 if prefill else 1.0) * kv / h2d
            form.add_not_cpu(i, copies)
            kv_copy[i] = copies
        else:
            weight_h2d_s[i] = weights[i] / h2d
            form.add_not_cpu(i, weight_h2d_s[i])
        if i == 0:
            form.add_not_cpu(0, act[0] / h2d)  # the layer input to a GPU qkv
        else:
            cross_h2d[i - 1], cross_d2h[i - 1] = act[i] / h2d, act[i] / d2h
            form.add_feature(H2D[i - 1], cross_h2d[i - 1])  # p_{i-1} (1 - p_i)
            form.add_feature(D2H[i - 1], cross_d2h[i - 1])  # (1 - p_{i-1}) p_i
    if prefill and not ctx.kv_on_gpu:
        form.add_feature(D2H[_QKV], kv / d2h)  # p_1 (1 - p_0): K back to the host
        form.add_feature(QKV_GPU_CTX_CPU, kv / d2h)  # p_2 (1 - p_0): V back to the host
    form.add_not_cpu(_FC2, act[0] / d2h)  # (1 - p_5): the output back to the host
    form.add_feature(QKV_XOR_OUT, act[0] / h2d)  # residual of out_proj
    form.add_feature(OUT_XOR_FC2, act[0] / h2d)  # residual of fc2
    resources = {Resource.CHAIN: form}
    return StageTerms(
        ctx, {"serial": (Resource.CHAIN, form)}, times, weight_h2d_s, cross_h2d, cross_d2h, kv_copy, resources
    )


def paper_resident_layer_s(system: SystemSpec, model: ModelSpec, ctx: StageContext) -> tuple[np.ndarray, SublayerTimes]:
    """The script's all-GPU layer (layer_latency_gpu): the GPU times summed, no transfers."""
    times = paper_sublayer_times(system, model, ctx)
    return times.gpu_s.sum(axis=0), times
