"""A simple tensor-parallel model of an 8-GPU node (the DGX-A100 the cost study compares against).

Megatron-style tensor parallelism over P GPUs: each GPU holds 1/P of every layer (its share of the attention
heads and of the MLP's intermediate width) and 1/P of the embeddings, with all weights and the KV cache in
HBM; nothing crosses PCIe. Per layer and pass:

  T_layer = sum_i max(FLOPs_i / (peak x eff_i), bytes_i / hbm) + op overhead     (one GPU's shard)
            + 2 all-reduces of the hidden state (after out_proj and after fc2):
              2 (P - 1) / P x B q h x 2 bytes / nvlink_allreduce_gbps + allreduce_latency

FLOPs and bytes of the shard come from the cost model's own accounting (``sublayer_work`` of the model
with heads and ffn divided by P), the efficiencies from the GPU profile's tables, exactly as the
single-GPU cost model does for a GPU sublayer. TTFT = N T_layer(prefill) + head, TPOT(t) = N T_layer(decode,
s_t) + head, throughput = B L_out / latency. Memory per GPU: weights / P + KV / P + the prefill workspace
(the hidden state is replicated) must fit HBM less headroom. The LM head is split P ways too; the gather
of the logits is left out (a few MB).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from lia_model.accounting import (
    embedding_weight_bytes,
    head_flops,
    kv_cache_bytes_per_layer,
    layer_weight_bytes,
    sublayer_work,
)
from lia_model.errors import LiaInputError
from lia_model.hardware import GpuSpec, interpolate_efficiency
from lia_model.memory import workspace_bytes
from lia_model.models import ModelSpec
from lia_model.roofline import roofline_s
from lia_model.sublayers import ATTENTION_SUBLAYERS, SUBLAYERS
from lia_model.units import BF16_BYTES, BYTES_PER_GIB, BYTES_PER_S_PER_GBPS, FLOPS_PER_TFLOPS, S_PER_US
from lia_model.workload import Workload

BATCH_CAP = 1 << 16


@dataclass(frozen=True)
class TensorParallelNode:
    name: str
    gpus: int
    gpu: GpuSpec
    nvlink_allreduce_gbps: float
    allreduce_latency_us: float
    memory_headroom_fraction: float


def shard(model: ModelSpec, ways: int) -> ModelSpec:
    """One GPU's share of every layer: heads, KV heads and the MLP width divided ``ways`` ways."""
    for field, value in (
        ("num_heads", model.num_heads),
        ("num_kv_heads", model.num_kv_heads),
        ("ffn_size", model.ffn_size),
    ):
        if value % ways:
            raise LiaInputError(
                f"model.{field}",
                f"{model.name} has {field} = {value}, not divisible by {ways}",
                f"use a tensor-parallel degree that divides {value}",
            )
    return model.model_copy(
        update={
            "num_heads": model.num_heads // ways,
            "num_kv_heads": model.num_kv_heads // ways,
            "ffn_size": model.ffn_size // ways,
        }
    )


def layer_time_s(node: TensorParallelNode, model: ModelSpec, batch: int, q: int, contexts: np.ndarray) -> np.ndarray:
    """Time of one layer on the node, per step (contexts: cached tokens per step)."""
    part = shard(model, node.gpus)
    gpu = node.gpu
    work = sublayer_work(part, batch, q, contexts)
    hbm = gpu.hbm_gbps * BYTES_PER_S_PER_GBPS
    total = np.zeros(len(contexts))
    for sub in SUBLAYERS:
        w = work[sub]
        attention = sub in ATTENTION_SUBLAYERS
        table = gpu.attention_efficiency if attention else gpu.matmul_efficiency
        rate = gpu.bf16_peak_tflops * FLOPS_PER_TFLOPS * interpolate_efficiency(table, q if attention else w.tokens)
        nbytes = w.weight_bytes_read + w.kv_read_bytes + w.kv_write_bytes + w.act_in_bytes + w.act_out_bytes
        total = (
            total
            + np.maximum(np.asarray(w.flops, dtype=float) / rate, np.asarray(nbytes, dtype=float) / hbm)
            + gpu.op_overhead_us * S_PER_US
        )
    p = node.gpus
    message = batch * q * model.hidden_size * BF16_BYTES
    allreduce = (
        2.0 * (p - 1) / p * message / (node.nvlink_allreduce_gbps * BYTES_PER_S_PER_GBPS)
        + node.allreduce_latency_us * S_PER_US
    )
    return total + 2.0 * allreduce


def head_time_s(node: TensorParallelNode, model: ModelSpec, batch: int) -> float:
    gpu = node.gpu
    flops = head_flops(model, batch) / node.gpus
    nbytes = 2.0 * model.vocab_size * model.hidden_size / node.gpus
    rate = gpu.bf16_peak_tflops * FLOPS_PER_TFLOPS * interpolate_efficiency(gpu.matmul_efficiency, batch)
    return roofline_s(flops, rate, nbytes, gpu.hbm_gbps * BYTES_PER_S_PER_GBPS, gpu.op_overhead_us * S_PER_US)


def memory_per_gpu_bytes(node: TensorParallelNode, model: ModelSpec, workload: Workload) -> float:
    p = node.gpus
    weights = (model.num_layers * layer_weight_bytes(model) + embedding_weight_bytes(model)) / p
    kv = (
        model.num_layers * kv_cache_bytes_per_layer(model, workload.batch, workload.input_len + workload.output_len) / p
    )
    return weights + kv + workspace_bytes(model, workload, 1)


def available_per_gpu_bytes(node: TensorParallelNode) -> float:
    gpu = node.gpu
    return gpu.memory_gib * BYTES_PER_GIB * (1.0 - node.memory_headroom_fraction) - gpu.reserved_gib * BYTES_PER_GIB


def fits(node: TensorParallelNode, model: ModelSpec, workload: Workload) -> bool:
    return memory_per_gpu_bytes(node, model, workload) <= available_per_gpu_bytes(node)


@dataclass(frozen=True)
class TensorParallelPrediction:
    workload: Workload
    ttft_s: float
    tpot_mean_s: Optional[float]
    latency_s: float
    throughput_tokens_per_s: float
    memory_per_gpu_gb: float


def predict_tp(node: TensorParallelNode, model: ModelSpec, workload: Workload) -> TensorParallelPrediction:
    n = model.num_layers
    head = head_time_s(node, model, workload.batch)
    ttft = float(
        n
        * layer_time_s(node, model, workload.batch, workload.input_len, np.array([workload.input_len], dtype=float))[0]
        + head
    )
    contexts = np.array(workload.decode_contexts(), dtype=float)
    tpot = n * layer_time_s(node, model, workload.batch, 1, contexts) + head if len(contexts) else np.zeros(0)
    latency = ttft + float(np.sum(tpot))
    return TensorParallelPrediction(
        workload,
        ttft,
        float(np.mean(tpot)) if len(tpot) else None,
        latency,
        workload.batch * workload.output_len / latency,
        memory_per_gpu_bytes(node, model, workload) / 1e9,
    )


def within_bounds(
    pred: TensorParallelPrediction, tpot_max_s: Optional[float] = None, ttft_max_s: Optional[float] = None
) -> bool:
    """Whether the mean TPOT is at most tpot_max_s and the TTFT at most ttft_max_s (None: no bound)."""
    if tpot_max_s is not None and (pred.tpot_mean_s is None or pred.tpot_mean_s > tpot_max_s):
        return False
    return ttft_max_s is None or pred.ttft_s <= ttft_max_s


def best_at_batch(
    node: TensorParallelNode,
    model: ModelSpec,
    workload: Workload,
    tpot_max_s: Optional[float] = None,
    ttft_max_s: Optional[float] = None,
) -> Optional[TensorParallelPrediction]:
    """The node at the workload's own batch (the latency objective), or None when it does not fit memory or
    misses a bound (mean TPOT over tpot_max_s, TTFT over ttft_max_s)."""
    if not fits(node, model, workload):
        return None
    pred = predict_tp(node, model, workload)
    return pred if within_bounds(pred, tpot_max_s, ttft_max_s) else None


def best_throughput(
    node: TensorParallelNode,
    model: ModelSpec,
    input_len: int,
    output_len: int,
    tpot_max_s: Optional[float] = None,
    ttft_max_s: Optional[float] = None,
) -> Optional[TensorParallelPrediction]:
    """Highest throughput over every batch from 1 to the largest that fits (as the LIA optimiser's
    throughput objective searches every batch), among those whose mean TPOT is at most tpot_max_s and TTFT at
    most ttft_max_s; None when no batch qualifies."""
    from lia_model.optimizer.infeasible import largest_feasible

    def ok(b: int) -> bool:
        return fits(node, model, Workload(batch=b, input_len=input_len, output_len=output_len))

    top = largest_feasible(1, BATCH_CAP, ok)
    if top is None:
        return None
    best: Optional[TensorParallelPrediction] = None
    for b in range(1, top + 1):
        pred = predict_tp(node, model, Workload(batch=b, input_len=input_len, output_len=output_len))
        if not within_bounds(pred, tpot_max_s, ttft_max_s):
            continue
        if best is None or pred.throughput_tokens_per_s > best.throughput_tokens_per_s:
            best = pred
    return best
