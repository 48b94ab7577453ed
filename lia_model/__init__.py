"""LIA modeler core: specs, accounting, the cost model, the optimiser and baselines (no I/O, no torch)."""

from lia_model.costmodel import Prediction, predict
from lia_model.costterms import CostMode
from lia_model.errors import LiaInputError
from lia_model.hardware import SystemSpec
from lia_model.models import CATALOG, ModelSpec, get_model
from lia_model.plan import CpuIsa, Device, HostTier, Plan
from lia_model.sublayers import Stage, Sublayer
from lia_model.workload import Workload, make_workload

__all__ = [
    "CATALOG",
    "CostMode",
    "CpuIsa",
    "Device",
    "HostTier",
    "LiaInputError",
    "ModelSpec",
    "Plan",
    "Prediction",
    "Stage",
    "Sublayer",
    "SystemSpec",
    "Workload",
    "get_model",
    "make_workload",
    "predict",
]
