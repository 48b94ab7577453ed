"""The few CUDA runtime calls PyTorch does not expose, through ctypes on the libcudart it already loaded:
pitched 2-D copies (``cudaMemcpy2DAsync``: a KV cache slice moves row by row without a gathered temporary) and
page-locking memory in place (``cudaHostRegister``)."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Optional

import torch


def host_register(ptr: int, nbytes: int) -> bool:
    """Page-lock ``nbytes`` at ``ptr`` in place; False when CUDA refuses (the error state is cleared)."""
    fn = getattr(torch.cuda.cudart(), "cudaHostRegister", None)
    if fn is not None:
        try:
            ok = error_code(fn(ptr, nbytes, 0)) == 0
            if not ok:
                clear_error()
            return ok
        except TypeError:
            pass
    lib = find_cudart()
    if lib is None:
        return False
    lib.cudaHostRegister.restype = ctypes.c_int
    lib.cudaHostRegister.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
    ok = lib.cudaHostRegister(ctypes.c_void_p(ptr), nbytes, 0) == 0
    if not ok:
        clear_error()
    return ok


def host_unregister(ptr: int) -> None:
    fn = getattr(torch.cuda.cudart(), "cudaHostUnregister", None)
    if fn is not None:
        try:
            fn(ptr)
            return
        except TypeError:
            pass
    lib = find_cudart()
    if lib is not None:
        lib.cudaHostUnregister.restype = ctypes.c_int
        lib.cudaHostUnregister.argtypes = [ctypes.c_void_p]
        lib.cudaHostUnregister(ctypes.c_void_p(ptr))


def clear_error() -> None:
    """Reset CUDA's last-error state after a failed runtime call made outside PyTorch: otherwise the next
    kernel launch PyTorch checks reports that stale error as its own."""
    lib = find_cudart()
    if lib is not None:
        lib.cudaGetLastError.restype = ctypes.c_int
        lib.cudaGetLastError()


def error_code(result) -> int:
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
class Pitch:
    rows: int
    width_bytes: int
    dst_pitch_bytes: int
    src_pitch_bytes: int


def row_pitch(t: torch.Tensor) -> Optional[tuple[int, int, int]]:
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


def pitched(dst: torch.Tensor, src: torch.Tensor) -> Optional[Pitch]:
    if dst.shape != src.shape or dst.dtype != src.dtype:
        return None
    a, b = row_pitch(dst), row_pitch(src)
    if a is None or b is None or a[0] != b[0] or a[1] != b[1]:
        return None
    if a[1] > a[2] or b[1] > b[2]:
        return None
    return Pitch(rows=a[0], width_bytes=a[1], dst_pitch_bytes=a[2], src_pitch_bytes=b[2])


class Memcpy2D:
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
            lib = find_cudart()
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

    def __call__(self, dst: torch.Tensor, src: torch.Tensor, p: Pitch, stream) -> None:
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
        host = torch.randn(3, 2, 7, 4).to(torch.bfloat16).pin_memory()
        dev = torch.zeros(3, 2, 9, 4, dtype=torch.bfloat16, device="cuda")
        p = pitched(dev[:, :, 1:8], host)
        if p is None:
            self.reason = "pitch computation failed"
            return False
        with torch.cuda.stream(stream):
            self(dev[:, :, 1:8], host, p, stream)
        back = torch.zeros(3, 2, 9, 4, dtype=torch.bfloat16).pin_memory()
        p2 = pitched(back[:, :, 1:8], dev[:, :, 1:8])
        with torch.cuda.stream(stream):
            self(back[:, :, 1:8], dev[:, :, 1:8], p2, stream)
        stream.synchronize()
        return bool(torch.equal(dev[:, :, 1:8].cpu(), host)) and bool(torch.equal(back[:, :, 1:8], host))


def find_cudart() -> Optional[ctypes.CDLL]:
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
