"""runtime/kernels.py's int8 and fp8 linears against a dequantised reference (CPU; small shapes).

Tolerances (stated): an int8 linear's bf16 output is within 1 % of max |reference| of x (s Wq)^T + b computed
in fp32 (bf16 keeps 8 significant bits: 0.4 % per element); int8 per-channel quantisation of Gaussian weights
moves the product by under 2 % (Frobenius, relative; the step max|w| / 127 gives about 0.7 %); fp8 with per-token
activation scaling is within 8 % (Frobenius) of the dequantised-weight bf16 product (e4m3 keeps 3 mantissa bits).
"""

import pytest

torch = pytest.importorskip("torch")

from runtime.kernels import (  # noqa: E402
    dequantize_fp8,
    dequantize_int8,
    int8pack_available,
    linear,
    linear_fp8,
    linear_int8,
    quantize_fp8_per_channel,
    quantize_int8_per_channel,
)


def _case(seed: int = 0, n: int = 96, k: int = 256, rows: int = 5):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g).to(torch.bfloat16)
    x = torch.randn(2, rows, k, generator=g).to(torch.bfloat16)
    b = torch.randn(n, generator=g).to(torch.bfloat16)
    resid = torch.randn(2, rows, n, generator=g).to(torch.bfloat16)
    return w, x, b, resid


def _rel_fro(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_int8_quantisation_error_is_at_most_half_a_step():
    w, *_ = _case()
    q, s = quantize_int8_per_channel(w)
    assert q.dtype == torch.int8 and s.dtype == torch.bfloat16 and q.abs().max() <= 127
    err = (w.float() - q.float() * s.float()[:, None]).abs()
    assert bool((err <= s.float()[:, None] / 2 + 1e-6).all())
    assert int(q.abs().amax(dim=1).min()) >= 126  # each row's largest weight lands near +-127


@pytest.mark.parametrize("fused", [False, True])
def test_int8_linear_matches_the_dequantised_reference(fused):
    if fused and not int8pack_available(torch.device("cpu")):
        pytest.skip("this torch has no CPU _weight_int8pack_mm")
    w, x, b, resid = _case()
    q, s = quantize_int8_per_channel(w)
    ref = resid.float() + x.float() @ dequantize_int8(q, s, torch.float32).t() + b.float()
    y = linear_int8(x, q, s, b, resid=resid, fused=fused)
    assert y.shape == ref.shape and y.dtype == torch.bfloat16
    assert float((y.float() - ref).abs().max()) <= 0.01 * float(ref.abs().max())
    exact = linear(x, w, b, resid=resid)  # the bf16 weights themselves
    assert _rel_fro(y, exact) < 0.02


def test_int8_linear_without_bias_or_residual():
    w, x, _, _ = _case(seed=1, n=64, k=128, rows=1)
    q, s = quantize_int8_per_channel(w)
    ref = x.float() @ dequantize_int8(q, s, torch.float32).t()
    for fused in [False, True] if int8pack_available(torch.device("cpu")) else [False]:
        y = linear_int8(x, q, s, None, fused=fused)
        assert float((y.float() - ref).abs().max()) <= 0.01 * float(ref.abs().max())


def test_fp8_linear_against_the_dequantised_reference():
    w, x, b, resid = _case(seed=2)
    q, s = quantize_fp8_per_channel(w)
    assert q.dtype == torch.float8_e4m3fn
    deq = dequantize_fp8(q, s, torch.float32)
    assert _rel_fro(deq, w) < 0.05  # e4m3 rounding of the weights
    ref = resid.float() + x.float() @ deq.t() + b.float()
    plain = linear_fp8(x, q, s, b, resid=resid, scaled_mm=False)
    assert float((plain.float() - ref).abs().max()) <= 0.01 * float(ref.abs().max())
    try:
        y = linear_fp8(x, q, s, b, resid=resid)
    except (RuntimeError, NotImplementedError) as err:  # a torch without CPU _scaled_mm
        pytest.skip(f"torch._scaled_mm does not run here: {err}")
    assert y.shape == ref.shape and _rel_fro(y, ref) < 0.08
