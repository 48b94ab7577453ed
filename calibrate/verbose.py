"""Which kernel actually ran: oneDNN's and MKL's verbose output, captured around one call.

oneDNN prints one line per primitive execution when verbose is on, e.g.
``onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx512_core_amx,undef,src:bf16::...``
(older releases: ``onednn_verbose,primitive,exec,cpu,matmul,brg:avx512_core_amx,...`` or ``dnnl_verbose``).
The implementation field (3 after ``exec``) names the kernel and its ISA. MKL prints a header naming the
code path it dispatched (``... Intel(R) Advanced Vector Extensions 512 (Intel(R) AVX-512) ...``) and one
line per BLAS call. Verbose mode slows every call, so it is switched on (``torch.backends.mkldnn.verbose``,
``torch.backends.mkl.verbose``) only around the warm-up call of each point; both libraries print to the C
stdout, which is captured through file descriptor 1.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import tempfile
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Callable

_LIBC = ctypes.CDLL(None)


def capture_stdout(fn: Callable[[], object]) -> str:
    """Run ``fn`` with the process's C-level stdout redirected; return what was printed."""
    sys.stdout.flush()
    _LIBC.fflush(None)
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            fn()
        finally:
            _LIBC.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
        tmp.seek(0)
        return tmp.read().decode(errors="replace")


@dataclass(frozen=True)
class KernelReport:
    onednn_kernels: tuple[str, ...]  # implementation fields of executed primitives, in order
    onednn_isa_info: str  # "isa:..." info line: the most capable ISA oneDNN may use
    onednn_version: str
    mkl_dispatch: str  # MKL's code path line, "" when MKL did not run
    mkl_calls: tuple[str, ...]  # BLAS routine names MKL ran (SGEMM, SGEMM_BATCH, ...)

    @property
    def summary(self) -> str:
        """The main kernel: the most frequent oneDNN implementation, else MKL's routine and code path."""
        if self.onednn_kernels:
            return Counter(self.onednn_kernels).most_common(1)[0][0]
        if self.mkl_calls:
            return f"mkl:{Counter(self.mkl_calls).most_common(1)[0][0].lower()}:{mkl_isa_tag(self.mkl_dispatch)}"
        return ""


def parse_verbose(text: str) -> KernelReport:
    kernels: list[str] = []
    isa_info = version = dispatch = ""
    mkl_calls: list[str] = []
    for line in text.splitlines():
        if line.startswith(("onednn_verbose", "dnnl_verbose")):
            fields = line.split(",")
            if "exec" in fields:
                i = fields.index("exec")
                if len(fields) > i + 3 and fields[i + 1] == "cpu":
                    kernels.append(fields[i + 3])
            elif "info" in fields:
                isa = re.search(r",isa:(.*)$", line)  # the ISA text may itself hold commas
                if isa:
                    isa_info = isa.group(1).strip()
                match = re.search(r"oneDNN v([\w.]+)", line)
                if match:
                    version = match.group(1)
        elif line.startswith("MKL_VERBOSE"):
            body = line[len("MKL_VERBOSE") :].strip()
            call = re.match(r"([A-Z][A-Z0-9_]+)\(", body)
            if call:
                mkl_calls.append(call.group(1))
            elif "build" in body or "architecture" in body:
                dispatch = body
    return KernelReport(tuple(kernels), isa_info, version, dispatch, tuple(mkl_calls))


def mkl_isa_tag(dispatch: str) -> str:
    """A short tag of MKL's code path: 'avx512_amx', 'avx512', 'avx2', or 'generic'."""
    text = dispatch.lower()
    if "avx-512" in text or "avx512" in text:
        return "avx512_amx" if "amx" in text else "avx512"
    if "avx2" in text:
        return "avx2"
    return "generic" if text else ""


def observe(fn: Callable[[], object]) -> KernelReport:
    """Run ``fn`` once with oneDNN and MKL verbose on; report the kernels that ran."""
    import torch

    def run() -> None:
        with ExitStack() as stack:
            for manager in (
                torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON),
                torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON),
            ):
                try:
                    stack.enter_context(manager)
                except (AssertionError, RuntimeError, AttributeError):
                    pass  # a build without that library's verbose mode: its kernels stay unobserved
            fn()

    return parse_verbose(capture_stdout(run))
