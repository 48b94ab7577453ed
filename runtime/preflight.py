"""Checks that run before anything is allocated: the model, the plan, the devices and the memory.

The GPU memory cap (``--gpu-memory-gib``) lets a large GPU stand in for a smaller one: the plan is checked
with ``lia_model.memory.memory_use`` on the system profile with ``gpu.memory_gib`` set to the cap, and the
CUDA caching allocator is limited to the cap with ``torch.cuda.set_per_process_memory_fraction``.
"""

from __future__ import annotations

from typing import Optional

from lia_model.errors import LiaInputError
from lia_model.hardware import SystemSpec
from lia_model.memory import memory_use
from lia_model.models import ModelSpec
from lia_model.plan import Device, Plan, check_plan_against, policy_notation
from lia_model.workload import Workload, make_workload
from runtime.hostmem import require_tier
from runtime.weights import check_supported


def capped_system(system: SystemSpec, gpu_memory_gib: Optional[float]) -> SystemSpec:
    """The system profile with the GPU memory set to the cap (unchanged when no cap is given)."""
    if gpu_memory_gib is None:
        return system
    if gpu_memory_gib <= 0:
        raise LiaInputError("--gpu-memory-gib", f"must be positive, got {gpu_memory_gib}", "e.g. --gpu-memory-gib 40")
    gpu = system.gpu.model_copy(
        update={
            "memory_gib": float(gpu_memory_gib),
            "source": {**system.gpu.source, "memory_gib": f"runtime cap: --gpu-memory-gib {gpu_memory_gib:g}"},
        }
    )
    return system.model_copy(update={"gpu": gpu})


def plan_uses_gpu(plan: Plan, model: ModelSpec) -> bool:
    streamed = model.num_layers - plan.gpu_resident_layers
    on_gpu = any(d == Device.GPU for p in (plan.prefill_policy, plan.decode_policy) for d in p)
    return plan.gpu_resident_layers > 0 or (streamed > 0 and on_gpu)


def preflight(
    system: SystemSpec,
    model: ModelSpec,
    workload: Workload,
    plan: Plan,
    *,
    has_gpu: bool,
    gpu_memory_gib: Optional[float] = None,
) -> None:
    """Raise LiaInputError for anything that would make the run fail or lie; allocate nothing."""
    check_supported(model)
    make_workload(workload.batch, workload.input_len, workload.output_len, model)
    check_plan_against(plan, model.num_layers, workload.batch)
    if plan_uses_gpu(plan, model) and not has_gpu:
        raise LiaInputError(
            "GPU",
            f"the plan runs sublayers on the GPU (prefill {policy_notation(plan.prefill_policy)}, decode "
            f"{policy_notation(plan.decode_policy)}, {plan.gpu_resident_layers} resident layers) but this machine "
            "has no CUDA device",
            "run it on a machine with an NVIDIA GPU, or use an all-CPU plan with no resident layers (the ipex baseline)",
        )
    if model.num_layers > plan.gpu_resident_layers:
        if plan.cxl_weight_layers:  # the model and the optimiser price a split; the runtime has one weight arena
            raise LiaInputError(
                "plan.cxl_weight_layers",
                f"the plan keeps {plan.cxl_weight_layers} streamed layers' weights in CXL and the rest in DDR, but "
                "the runtime places every streamed layer's weights in one tier (weight_tier)",
                "run it with cxl_weight_layers 0 (weight_tier ddr or cxl), or only predict the split (lia predict)",
            )
        require_tier(plan.weight_tier, "streamed weights")
        require_tier(plan.kv_tier, "KV cache")
    capped = capped_system(system, gpu_memory_gib)
    cap_text = f" with the GPU capped at {gpu_memory_gib:g} GiB" if gpu_memory_gib is not None else ""
    for tier, use in memory_use(capped, model, workload, plan).items():
        if not use.fits:
            parts = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in use.components_bytes.items() if v > 0)
            raise LiaInputError(
                f"memory.{tier.value}",
                f"the plan needs {use.required_gb:.1f} GB of {tier.value.upper()} ({parts} GB) but "
                f"{use.available_gb:.1f} GB is available{cap_text}: short by {use.shortfall_gb:.1f} GB",
                "use fewer GPU-resident layers, fewer GPU sublayers, a smaller batch or shorter sequences, "
                "or a larger --gpu-memory-gib"
                if tier.value == "hbm"
                else "use a smaller batch or shorter sequences, or a host with more memory",
            )


def apply_gpu_cap(gpu_memory_gib: Optional[float]) -> Optional[float]:
    """Limit the CUDA caching allocator to the cap; returns the GiB actually enforced (None without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return None
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    torch.cuda.empty_cache()
    if gpu_memory_gib is None:
        torch.cuda.set_per_process_memory_fraction(1.0)
        return total / 2**30
    fraction = min(1.0, gpu_memory_gib * 2**30 / total)
    torch.cuda.set_per_process_memory_fraction(fraction)
    return fraction * total / 2**30
