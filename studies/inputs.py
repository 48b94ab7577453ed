"""Cached inputs of the sweeps: systems (with what-if overrides), models and workloads.

A sweep evaluates thousands of points on a handful of systems; loading and validating a profile takes
about 10 ms, so each worker process keeps what it has loaded. Overrides go through
``lia_model.profiles.load_system(name, overrides)``, the same path as the CLI's ``--set``.
"""

from __future__ import annotations

from functools import lru_cache

from lia_model.hardware import SystemSpec
from lia_model.models import ModelSpec, get_model
from lia_model.profiles import load_system
from lia_model.workload import Workload, make_workload


@lru_cache(maxsize=256)
def system(name: str, overrides: tuple[str, ...] = ()) -> SystemSpec:
    return load_system(name, list(overrides))


@lru_cache(maxsize=64)
def model(name: str) -> ModelSpec:
    return get_model(name)


def workload(model_name: str, batch: int, input_len: int, output_len: int) -> Workload:
    return make_workload(batch, input_len, output_len, model(model_name))
