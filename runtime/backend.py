"""Where tensors live and how they move between host and GPU memory.

Three backends share one interface so that the executor has a single code path:

- ``cuda``: the real thing. GPU tensors on ``cuda:0``; four CUDA streams (compute, weight prefetch,
  activation/KV host-to-device, device-to-host); CUDA events for ordering and timing; pinned host memory.
- ``fake``: a CPU stand-in for the GPU, for tests on machines without CUDA. "GPU" tensors are separate CPU
  allocations, every crossing is a real copy and every stream/event is synchronous, so a missing copy,
  a stale buffer or a missed KV write-back shows up as wrong logits. Timings in this mode mean nothing.
- ``cpu``: no GPU at all; only plans with every sublayer on the CPU (and no resident layers) can run.

Values flowing between sublayers are wrapped in ``Placed`` (a tensor plus the plan ``Device`` it lives on),
so a sublayer that receives data from the wrong device fails loudly in every backend.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from lia_model.errors import LiaInputError
from lia_model.plan import Device
from runtime import cudart

DTYPE = torch.bfloat16


@dataclass
class Placed:
    """A tensor, the plan device (CPU = host memory, GPU = device memory) it lives on, and the event after
    which its contents are valid (None: valid now, e.g. the output of a synchronous CPU op)."""

    t: torch.Tensor
    dev: Device
    ready: Optional["Event"] = None

    def on(self, dev: Device) -> torch.Tensor:
        if self.dev != dev:
            raise RuntimeError(f"data-flow bug: a {dev.name} sublayer received a tensor that lives on {self.dev.name}")
        return self.t


class _NullStream:
    """Stream stand-in for the synchronous backends."""

    def wait_event(self, event: "Event") -> None:  # noqa: D401 - mirrors torch.cuda.Stream
        return None

    def synchronize(self) -> None:
        return None


class Event:
    """A point in a stream: ordering (``wait``) and timing (``seconds_since``)."""

    def __init__(self, cuda: bool, blocking: bool = False) -> None:
        # blocking: synchronize() sleeps in the driver instead of spinning a core (cudaEventBlockingSync)
        self._cuda = torch.cuda.Event(enable_timing=True, blocking=blocking) if cuda else None
        self._stamp: Optional[float] = None
        self._issued: Optional[float] = None

    def record(self, stream) -> "Event":
        if self._cuda is not None:
            self._issued = time.perf_counter()
            self._cuda.record(stream)
        else:
            self._stamp = time.perf_counter()
        return self

    @property
    def issued_at(self) -> Optional[float]:
        """perf_counter when a CUDA event was queued by the host (None for host events): with its time on the
        GPU, how long the stream ran behind the launching thread (a lag near 0: the GPU waited for the host)."""
        return self._issued

    def synchronize(self) -> None:
        if self._cuda is not None:
            self._cuda.synchronize()

    def query(self) -> bool:
        return self._cuda.query() if self._cuda is not None else True

    @property
    def host_stamp(self) -> Optional[float]:
        """perf_counter when a host event was recorded (None for CUDA events)."""
        return self._stamp

    def seconds_since(self, start: "Event") -> float:
        """Elapsed seconds from ``start`` to this event (both recorded and completed)."""
        if self._cuda is not None:
            return start._cuda.elapsed_time(self._cuda) * 1e-3
        assert self._stamp is not None and start._stamp is not None
        return self._stamp - start._stamp


class Backend:
    """Device placement, memory, streams, events and copies."""

    def __init__(self, kind: str, dtype: torch.dtype = DTYPE) -> None:
        if kind not in ("cuda", "fake", "cpu"):
            raise ValueError(kind)
        self.kind = kind
        if kind == "cuda":
            # Before CUDA starts: segments that grow in place, so a cap the memory model fits is not lost to
            # fragmentation between points of different shapes (a user's own setting is kept).
            os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        # Element type of weights, activations and KV (bf16; float32 lets tests compare token for token
        # with an exact implementation).
        self.dtype = dtype
        self.is_cuda = kind == "cuda"
        self.has_gpu = kind in ("cuda", "fake")
        self.gpu_device = torch.device("cuda", torch.cuda.current_device()) if self.is_cuda else torch.device("cpu")
        if self.is_cuda:
            self.compute = torch.cuda.Stream()
            self.weights = torch.cuda.Stream()
            self.h2d = torch.cuda.Stream()
            self.d2h = torch.cuda.Stream()
        else:
            self.compute = self.weights = self.h2d = self.d2h = _NullStream()
        self.memcpy2d = cudart.Memcpy2D() if self.is_cuda else None  # pitched copies (KV cache slices)

    # ------------------------------------------------------------------ construction

    @classmethod
    def detect(cls, fake_gpu: bool = False, dtype: torch.dtype = DTYPE) -> "Backend":
        if fake_gpu:
            return cls("fake", dtype)
        return cls("cuda", dtype) if torch.cuda.is_available() else cls("cpu", dtype)

    @property
    def description(self) -> str:
        if self.is_cuda:
            props = torch.cuda.get_device_properties(self.gpu_device)
            return f"{props.name} ({props.total_memory / 2**30:.1f} GiB), torch {torch.__version__}"
        if self.kind == "fake":
            return f"CPU only, GPU emulated on the CPU (data-flow test mode; timings meaningless), torch {torch.__version__}"
        return f"CPU only (no CUDA device), torch {torch.__version__}"

    # ------------------------------------------------------------------ placement

    def torch_device(self, dev: Device) -> torch.device:
        return self.gpu_device if dev == Device.GPU else torch.device("cpu")

    def empty(self, shape, dev: Device, pinned: bool = False, zero: bool = False, dtype=None) -> torch.Tensor:
        """A new tensor on ``dev``; host tensors are page-locked when ``pinned`` and CUDA is present."""
        dtype = self.dtype if dtype is None else dtype
        if dev == Device.GPU and not self.has_gpu:
            raise LiaInputError(
                "GPU",
                "the plan needs GPU memory but this machine has no CUDA device",
                "run on a machine with an NVIDIA GPU, or use an all-CPU plan (e.g. the ipex baseline)",
            )
        pin = pinned and dev == Device.CPU and self.is_cuda
        maker = torch.zeros if zero else torch.empty
        return maker(shape, dtype=dtype, device=self.torch_device(dev), pin_memory=pin)

    # ------------------------------------------------------------------ streams and events

    @contextmanager
    def on_stream(self, stream) -> Iterator[None]:
        if self.is_cuda:
            with torch.cuda.stream(stream):
                yield
        else:
            with nullcontext():
                yield

    def event(self, stream, blocking: bool = False) -> Event:
        """Record a new event on ``stream`` now (``blocking``: its synchronize() sleeps rather than spins)."""
        return Event(self.is_cuda, blocking).record(stream if self.is_cuda else None)

    def wait(self, stream, event: Optional[Event]) -> None:
        """``stream`` waits (on the device) until ``event`` has happened."""
        if event is not None and self.is_cuda:
            stream.wait_event(event._cuda)

    def synchronize(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.gpu_device)

    def keep_alive(self, tensor: torch.Tensor, stream) -> None:
        """Tell the caching allocator that ``stream`` uses ``tensor`` (GPU tensors only)."""
        if self.is_cuda and tensor.is_cuda:
            tensor.record_stream(stream)

    # ------------------------------------------------------------------ copies

    def copy(self, dst: torch.Tensor, src: torch.Tensor, stream) -> None:
        """dst <- src on ``stream`` (asynchronous on CUDA when the host side is pinned)."""
        with self.on_stream(stream):
            dst.copy_(src, non_blocking=self.is_cuda)

    def copy_2d(self, dst: torch.Tensor, src: torch.Tensor, stream) -> None:
        """dst <- src for [rows..., cols..., d] views whose rows are evenly pitched (KV cache slices).

        PyTorch gathers a strided host tensor through a pageable temporary before a host-device copy;
        a pitched cudaMemcpy2DAsync moves the rows directly. Either side may be strided.
        """
        if self.memcpy2d is not None and dst.is_cuda != src.is_cuda:
            pitch = cudart.pitched(dst, src)
            if pitch is not None and self.memcpy2d.available:
                with self.on_stream(stream):
                    self.memcpy2d(dst, src, pitch, stream)
                return
        self.copy(dst, src, stream)

    # ------------------------------------------------------------------ pinning

    def register_host(self, ptr: int, nbytes: int) -> bool:
        """Page-lock host memory in place (cudaHostRegister); False when not possible."""
        if not self.is_cuda or nbytes == 0:
            return False
        return cudart.host_register(ptr, nbytes)

    def unregister_host(self, ptr: int) -> None:
        if self.is_cuda:
            cudart.host_unregister(ptr)


def cpu_threads() -> int:
    """Threads PyTorch uses for CPU sublayers (the process's CPU affinity, physical cores not guessed)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
