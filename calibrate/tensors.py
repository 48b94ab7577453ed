"""Operands for the benchmarks: filled fast with varied values, and cycled so that they stream from memory."""

from __future__ import annotations

from typing import Any, Callable


def fill_varied(tensor: Any) -> Any:
    """Fill with varied values at memcpy speed: a small random block tiled (a random fill of GBs is slow)."""
    import torch

    flat = tensor.view(-1)
    block = torch.empty(min(flat.numel(), 1 << 16), dtype=tensor.dtype, device=tensor.device).uniform_(-1, 1)
    full, rest = divmod(flat.numel(), block.numel())
    if full:
        flat[: full * block.numel()].view(full, block.numel()).copy_(block.expand(full, -1))
    if rest:
        flat[full * block.numel() :].copy_(block[:rest])
    return tensor


def copies_to_stream(nbytes: int, cache_bytes: int, cap: int = 64) -> int:
    """Copies of an operand to cycle through so that together they exceed 4x the cache (1 if unknown)."""
    if cache_bytes <= 0 or nbytes <= 0:
        return 1
    return max(1, min(cap, -(-4 * cache_bytes // nbytes)))


def cycling(fns: list[Callable[[], Any]]) -> Callable[[], Any]:
    """One callable that runs the next of ``fns`` on each call."""
    state = {"i": 0}

    def call() -> Any:
        fn = fns[state["i"]]
        state["i"] = (state["i"] + 1) % len(fns)
        return fn()

    return call
