"""sqa.torch: the autograd wrapper against the numpy float64 oracle, on the CPU and (when the
loaded libsqa.so has the CUDA backend and torch sees a GPU) on CUDA. Skipped without torch."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sqa  # noqa: E402
import sqa.torch  # noqa: E402
import oracle  # noqa: E402

# (out, lse, grad) relative error tolerances by dtype, as in test_attention.py.
TOLERANCES = {
    torch.float32: (5e-5, 5e-5, 2e-4),
    torch.bfloat16: (1.5e-2, 5e-3, 3e-2),
    torch.float16: (4e-3, 1e-3, 1e-2),
}

DEVICES = ["cpu"]
if torch.cuda.is_available() and sqa.cuda_available():
    DEVICES.append("cuda")


def scale_of(head_dim: int) -> float:
    return float(np.float32(1.0) / np.sqrt(np.float32(head_dim)))


def rel_err(x: torch.Tensor, ref: np.ndarray) -> float:
    x = x.detach().to("cpu", torch.float64).numpy()
    assert np.all(np.isfinite(x))
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))


def lse_err(x: torch.Tensor, ref: np.ndarray) -> float:
    x = x.detach().to("cpu", torch.float64).numpy()
    empty = np.isneginf(ref)
    assert np.all(np.isneginf(x[empty]))
    diff = np.linalg.norm(x[~empty] - ref[~empty])
    return float(diff / max(np.linalg.norm(ref[~empty]), math.sqrt(ref.size)))


def leaf(gen, shape, dtype, device):
    """Fresh random leaf tensor, and the exact float64 values the library reads."""
    x = torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)
    x64 = x.to(torch.float64).numpy()
    return x.to(device).requires_grad_(True), x64


def dtypes_for(device):
    # The CUDA backend takes bf16 and fp16 (fp32 in, fp32 out is the CPU engine's).
    return [torch.bfloat16, torch.float16] if device == "cuda" else [torch.float32, torch.bfloat16]


# Head dims the CUDA kernels are built for (sqa::cuda; the CPU engine takes 8..256).
CUDA_HEAD_DIMS = (16, 32, 64, 128, 256)


CASES = [  # (H_q, H_kv, d, N_q, N_k, causal, window)
    (4, 4, 16, 17, 17, False, (-1, -1)),
    (8, 2, 32, 33, 33, True, (-1, -1)),
    (2, 4, 16, 20, 20, True, (-1, -1)),   # rSQA
    (4, 1, 64, 9, 40, True, (-1, -1)),    # MQA, N_q != N_k
    (6, 3, 8, 25, 25, False, (4, 2)),     # sliding window
    (2, 8, 128, 1, 50, True, (16, -1)),   # decode, rSQA, causal window
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}x{c[1]}-d{c[2]}" for c in CASES])
def test_forward_backward(device, case):
    hq, hkv, d, nq, nk, causal, window = case
    if device == "cuda" and d not in CUDA_HEAD_DIMS:
        pytest.skip(f"head_dim {d} is CPU-only")
    for dtype in dtypes_for(device):
        gen = torch.Generator().manual_seed(hq * 1000 + hkv * 100 + d)
        q, q64 = leaf(gen, (2, nq, hq, d), dtype, device)
        k, k64 = leaf(gen, (2, nk, hkv, d), dtype, device)
        v, v64 = leaf(gen, (2, nk, hkv, d), dtype, device)
        ha = max(hq, hkv)
        dout = torch.randn((2, nq, ha, d), generator=gen).to(dtype)
        out, lse = sqa.torch.flash_attn_func(q, k, v, causal=causal, window_size=window,
                                             return_lse=True)
        assert out.shape == (2, nq, ha, d) and out.dtype == dtype and out.device == q.device
        assert lse.shape == (2, ha, nq) and lse.dtype == torch.float32
        out.backward(dout.to(device))
        left, right = (window[0], 0) if causal else window
        ref_out, ref_lse, (dq, dk, dv) = oracle.dense(q64, k64, v64, scale_of(d), left, right,
                                                      dout.to(torch.float64).numpy())
        tol_out, tol_lse, tol_grad = TOLERANCES[dtype]
        assert rel_err(out, ref_out) <= tol_out, (dtype, rel_err(out, ref_out))
        assert lse_err(lse, ref_lse) <= tol_lse, (dtype, lse_err(lse, ref_lse))
        for name, t, r in (("dq", q, dq), ("dk", k, dk), ("dv", v, dv)):
            assert t.grad.shape == t.shape and t.grad.dtype == dtype
            assert rel_err(t.grad, r) <= tol_grad, (dtype, name, rel_err(t.grad, r))


@pytest.mark.parametrize("device", DEVICES)
def test_varlen(device):
    gen = torch.Generator().manual_seed(99)
    hq, hkv, d = 4, 2, 32
    cu_q = torch.tensor([0, 7, 19, 20], dtype=torch.int32)
    cu_k = torch.tensor([0, 9, 21, 30], dtype=torch.int32)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q, q64 = leaf(gen, (20, hq, d), dtype, device)
    k, k64 = leaf(gen, (30, hkv, d), dtype, device)
    v, v64 = leaf(gen, (30, hkv, d), dtype, device)
    dout = torch.randn((20, hq, d), generator=gen).to(dtype)
    out = sqa.torch.flash_attn_varlen_func(q, k, v, cu_q.to(device), cu_k.to(device), 12, 12,
                                           causal=True)
    out.backward(dout.to(device))
    ref_out, _, (dq, dk, dv) = oracle.varlen(q64, k64, v64, cu_q.numpy(), cu_k.numpy(),
                                             scale_of(d), -1, 0, dout.to(torch.float64).numpy())
    tol_out, _, tol_grad = TOLERANCES[dtype]
    assert rel_err(out, ref_out) <= tol_out
    for t, r in ((q, dq), (k, dk), (v, dv)):
        assert rel_err(t.grad, r) <= tol_grad


@pytest.mark.parametrize("device", DEVICES)
def test_inference_skips_lse(device):
    """Under no_grad (or with inputs that need no gradient) the forward asks the library for no
    lse; the output must still match the oracle, masked or not, and the grad path's output."""
    gen = torch.Generator().manual_seed(123)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    for hq, hkv, d, causal in ((8, 8, 64, False), (8, 2, 128, False), (4, 4, 64, True)):
        q, q64 = leaf(gen, (2, 130, hq, d), dtype, device)
        k, k64 = leaf(gen, (2, 160, hkv, d), dtype, device)
        v, v64 = leaf(gen, (2, 160, hkv, d), dtype, device)
        with torch.no_grad():
            out = sqa.torch.flash_attn_func(q, k, v, causal=causal)
        plain = sqa.torch.flash_attn_func(q.detach(), k.detach(), v.detach(), causal=causal)
        assert not out.requires_grad and not plain.requires_grad
        ref_out, _ = oracle.dense(q64, k64, v64, scale_of(d), -1, 0 if causal else -1)
        for o in (out, plain):
            assert rel_err(o, ref_out) <= TOLERANCES[dtype][0], rel_err(o, ref_out)
        trained = sqa.torch.flash_attn_func(q, k, v, causal=causal)
        assert trained.requires_grad
        assert rel_err(trained, out.to(torch.float64).cpu().numpy()) <= TOLERANCES[dtype][0]


def test_gradcheck_float64_cpu():
    gen = torch.Generator().manual_seed(5)
    q = torch.randn((1, 5, 2, 4), generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn((1, 6, 4, 4), generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn((1, 6, 4, 4), generator=gen, dtype=torch.float64, requires_grad=True)
    # lse is float32 by contract, so the analytic gradient carries ~1e-7 relative error.
    assert torch.autograd.gradcheck(
        lambda q, k, v: sqa.torch.flash_attn_func(q, k, v, causal=True), (q, k, v), eps=1e-6,
        atol=1e-5, rtol=1e-4)


def test_strided_views_match_contiguous():
    gen = torch.Generator().manual_seed(8)
    qkv = torch.randn((2, 11, 8, 16), generator=gen)
    q, k, v = qkv[:, :, :4], qkv[:, :, 4:6], qkv[:, :, 6:]
    bhnd = torch.randn((2, 4, 11, 16), generator=gen)  # (B, H, N, d) transposed to (B, N, H, d)
    for qq in (q, bhnd.transpose(1, 2)):
        a = sqa.torch.flash_attn_func(qq, k, v, causal=True)
        b = sqa.torch.flash_attn_func(qq.contiguous(), k.contiguous(), v.contiguous(),
                                      causal=True)
        assert torch.equal(a, b)


def test_errors():
    q = torch.randn(1, 4, 6, 8)
    k = torch.randn(1, 4, 4, 8)
    with pytest.raises(ValueError, match=r"num_query_heads \(6\) must be a multiple of "
                                         r"num_kv_heads \(4\)"):
        sqa.torch.flash_attn_func(q, k, k)
    with pytest.raises(ValueError, match=r"head_dim of k \(4\) must equal head_dim of q \(8\)"):
        sqa.torch.flash_attn_func(q, k[..., :4], k[..., :4])
    with pytest.raises(ValueError, match=r"must share one dtype"):
        sqa.torch.flash_attn_func(q, k.double(), k)
    with pytest.raises(ValueError, match=r"cu_seqlens_q dtype \(torch.int64\) must be "
                                         r"torch.int32"):
        sqa.torch.flash_attn_varlen_func(q[0], k[0], k[0], torch.tensor([0, 4]),
                                         torch.tensor([0, 4], dtype=torch.int32), 4, 4)
    with pytest.raises(sqa.UnsupportedError):
        sqa.torch.flash_attn_func(k.half(), k.half(), k.half())


@pytest.mark.skipif(not torch.cuda.is_available() or sqa.cuda_available(),
                    reason="needs a GPU and a libsqa.so without the CUDA backend")
def test_cuda_tensors_without_cuda_backend_are_unsupported():
    q = torch.randn(1, 4, 2, 8, device="cuda")
    with pytest.raises(sqa.UnsupportedError, match=r"CUDA"):
        sqa.torch.flash_attn_func(q, q, q)
