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

import ctypes
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from lia_model.errors import LiaInputError
from lia_model.plan import Device

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

    def record(self, stream) -> "Event":
        if self._cuda is not None:
            self._cuda.record(stream)
        else:
            self._stamp = time.perf_counter()
        return self

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
        self._memcpy2d = _CudaMemcpy2D() if self.is_cuda else None

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
        if self._memcpy2d is not None and dst.is_cuda != src.is_cuda:
            pitched = _pitched(dst, src)
            if pitched is not None and self._memcpy2d.available:
                with self.on_stream(stream):
                    self._memcpy2d(dst, src, pitched, stream)
                return
        self.copy(dst, src, stream)

    # ------------------------------------------------------------------ pinning

    def register_host(self, ptr: int, nbytes: int) -> bool:
        """Page-lock host memory in place (cudaHostRegister); False when not possible."""
        if not self.is_cuda or nbytes == 0:
            return False
        ok = False
        fn = getattr(torch.cuda.cudart(), "cudaHostRegister", None)
        if fn is not None:
            try:
                ok = _cuda_error_code(fn(ptr, nbytes, 0)) == 0
                if not ok:
                    _clear_cuda_error()
                return ok
            except TypeError:
                pass
        lib = _find_cudart()
        if lib is None:
            return False
        lib.cudaHostRegister.restype = ctypes.c_int
        lib.cudaHostRegister.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
        ok = lib.cudaHostRegister(ctypes.c_void_p(ptr), nbytes, 0) == 0
        if not ok:
            _clear_cuda_error()
        return ok

    def unregister_host(self, ptr: int) -> None:
        if not self.is_cuda:
            return
        fn = getattr(torch.cuda.cudart(), "cudaHostUnregister", None)
        if fn is not None:
            try:
                fn(ptr)
                return
            except TypeError:
                pass
        lib = _find_cudart()
        if lib is not None:
            lib.cudaHostUnregister.restype = ctypes.c_int
            lib.cudaHostUnregister.argtypes = [ctypes.c_void_p]
            lib.cudaHostUnregister(ctypes.c_void_p(ptr))


def _clear_cuda_error() -> None:
    """Reset CUDA's last-error state after a failed runtime call made outside PyTorch: otherwise the next
    kernel launch PyTorch checks reports that stale error as its own."""
    lib = _find_cudart()
    if lib is not None:
        lib.cudaGetLastError.restype = ctypes.c_int
        lib.cudaGetLastError()


def _cuda_error_code(result) -> int:
    if isinstance(result, int):
        return result
    value = getattr(result, "value", None)
    if value is not None:
        return int(value)
    try:
        return int(result)
    except (TypeError, ValueError):
        return 0 if "success" in str(result).lower() else 1


@dataclass(frozen=True)
class _Pitch:
    rows: int
    width_bytes: int
    dst_pitch_bytes: int
    src_pitch_bytes: int


def _row_pitch(t: torch.Tensor) -> Optional[tuple[int, int, int]]:
    """(rows, width_bytes, pitch_bytes) when ``t`` is rows of contiguous bytes at an even pitch."""
    if t.dim() < 2:
        return None
    es = t.element_size()
    # The trailing block [.., s, d] must be contiguous: the last dim stride 1, next stride = size of last.
    if t.stride(-1) != 1 or (t.dim() >= 2 and t.size(-1) > 0 and t.stride(-2) != t.size(-1)):
        return None
    width = t.size(-1) * t.size(-2) * es
    lead = t.shape[:-2]
    strides = t.stride()[:-2]
    if not lead:
        return 1, width, width
    # Leading dims must merge into one evenly pitched dimension.
    pitch = strides[-1]
    for k in range(len(lead) - 1, 0, -1):
        if strides[k - 1] != strides[k] * lead[k]:
            return None
    rows = 1
    for n in lead:
        rows *= n
    return rows, width, pitch * es


def _pitched(dst: torch.Tensor, src: torch.Tensor) -> Optional[_Pitch]:
    if dst.shape != src.shape or dst.dtype != src.dtype:
        return None
    a, b = _row_pitch(dst), _row_pitch(src)
    if a is None or b is None or a[0] != b[0] or a[1] != b[1]:
        return None
    if a[1] > a[2] or b[1] > b[2]:
        return None
    return _Pitch(rows=a[0], width_bytes=a[1], dst_pitch_bytes=a[2], src_pitch_bytes=b[2])


class _CudaMemcpy2D:
    """cudaMemcpy2DAsync from the CUDA runtime PyTorch already loaded (found in /proc/self/maps).

    Checked once on a small pitched copy against PyTorch's own copy; when anything is off, ``available``
    is False and callers fall back to PyTorch's (correct, slower) copy.
    """

    def __init__(self) -> None:
        self.available = False
        self.reason = ""
        self._fn = None
        try:
            torch.cuda.init()
            lib = _find_cudart()
            if lib is None:
                self.reason = "libcudart not found in the process"
                return
            fn = lib.cudaMemcpy2DAsync
            fn.restype = ctypes.c_int
            fn.argtypes = [
                ctypes.c_void_p,
                ctypes.c_size_t,
                ctypes.c_void_p,
                ctypes.c_size_t,
                ctypes.c_size_t,
                ctypes.c_size_t,
                ctypes.c_int,
                ctypes.c_void_p,
            ]
            self._fn = fn
            self.available = self._self_test()
            if not self.available and not self.reason:
                self.reason = "self-test mismatch"
        except (OSError, AttributeError, RuntimeError) as err:
            self.reason = f"{type(err).__name__}: {err}"
            self.available = False

    def __call__(self, dst: torch.Tensor, src: torch.Tensor, p: _Pitch, stream) -> None:
        kind = 1 if dst.is_cuda else 2  # cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2
        code = self._fn(
            ctypes.c_void_p(dst.data_ptr()),
            p.dst_pitch_bytes,
            ctypes.c_void_p(src.data_ptr()),
            p.src_pitch_bytes,
            p.width_bytes,
            p.rows,
            kind,
            ctypes.c_void_p(stream.cuda_stream),
        )
        if code != 0:
            raise RuntimeError(f"cudaMemcpy2DAsync failed with CUDA error {code}")

    def _self_test(self) -> bool:
        stream = torch.cuda.Stream()
        host = torch.randn(3, 2, 7, 4).to(DTYPE).pin_memory()
        dev = torch.zeros(3, 2, 9, 4, dtype=DTYPE, device="cuda")
        p = _pitched(dev[:, :, 1:8], host)
        if p is None:
            self.reason = "pitch computation failed"
            return False
        with torch.cuda.stream(stream):
            self(dev[:, :, 1:8], host, p, stream)
        back = torch.zeros(3, 2, 9, 4, dtype=DTYPE).pin_memory()
        p2 = _pitched(back[:, :, 1:8], dev[:, :, 1:8])
        with torch.cuda.stream(stream):
            self(back[:, :, 1:8], dev[:, :, 1:8], p2, stream)
        stream.synchronize()
        return bool(torch.equal(dev[:, :, 1:8].cpu(), host)) and bool(torch.equal(back[:, :, 1:8], host))


def _find_cudart() -> Optional[ctypes.CDLL]:
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "libcudart" in line and "/" in line}
    except OSError:
        paths = set()
    for path in sorted(paths):
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def cpu_threads() -> int:
    """Threads PyTorch uses for CPU sublayers (the process's CPU affinity, physical cores not guessed)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
