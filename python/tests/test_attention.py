"""The sqa package against an independent numpy float64 oracle (oracle.py).

Random specs sweep every preset and extra H_q/H_kv ratios (rSQA included), head dims 1..256,
no mask / causal / sliding windows, dense and varlen batches with N_q != N_k, and float32,
bfloat16 and float64. Inputs are fresh random values from fixed seeds. Errors are relative
(Frobenius) with tolerances by dtype.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

import sqa
import oracle
from conftest import small_scale

BF16 = sqa.bfloat16
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)

# (out, lse, grad). Inputs are identical for the library and the oracle, so the error comes
# from fp32 accumulation and from rounding the outputs to the dtype (bf16: 2^-9 relative).
TOLERANCES = {
    F32: (5e-5, 5e-5, 2e-4),
    BF16: (1.5e-2, 5e-3, 3e-2),
    # float64 runs the oracle's arithmetic, but lse is float32 by contract, and the backward
    # rebuilds P from that lse: both carry float32 rounding (~1e-7 relative).
    F64: (1e-12, 1e-6, 5e-6),
}

PAPER_LAYOUTS_H16 = {  # paper.md "Variant family" at H = 16
    "mha": (16, 16), "gqa": (16, 4), "mqa": (16, 1), "sqa": (8, 4), "ssqa": (8, 8),
    "xsqa": (4, 4), "xsmqa": (4, 1), "lsqa": (12, 4), "rsqa": (4, 8),
}


# ---- helpers -----------------------------------------------------------------------------------

def rel_err(x, ref) -> float:
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert x.shape == ref.shape, (x.shape, ref.shape)
    assert np.all(np.isfinite(x)), "non-finite values in the result"
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))


def lse_err(x, ref) -> float:
    """lse: -inf exactly where no key is visible; elsewhere relative to max(||ref||, sqrt(n))."""
    x = np.asarray(x, dtype=np.float64)
    assert x.shape == ref.shape, (x.shape, ref.shape)
    empty = np.isneginf(ref)
    assert np.all(np.isneginf(x[empty])), "lse must be -inf for rows without visible keys"
    assert np.all(np.isfinite(x[~empty])), "non-finite lse for a row with visible keys"
    diff = np.linalg.norm(x[~empty] - ref[~empty])
    return float(diff / max(np.linalg.norm(ref[~empty]), math.sqrt(max(ref.size, 1))))


def random_tensor(rng, shape, dtype):
    """Fresh random values in `dtype`, and the exact float64 values the library will read."""
    x = rng.standard_normal(shape).astype(np.float32).astype(dtype)
    return x, x.astype(np.float64)


def scale_of(softmax_scale, head_dim) -> float:
    """The scale the library applies: the spec holds it as float32 (sqa_attention_spec), and the
    default is computed in float32 as 1/sqrt(head_dim)."""
    if softmax_scale is None:
        return float(np.float32(1.0) / np.sqrt(np.float32(head_dim)))
    return float(np.float32(softmax_scale))


def window_of(causal, window_size):
    left, right = window_size
    return (left, 0) if causal else (left, right)


def check_forward_backward(q, k, v, out, lse, grads, ref, dtype):
    ref_out, ref_lse, ref_grads = ref
    tol_out, tol_lse, tol_grad = TOLERANCES[dtype]
    assert out.dtype == dtype and lse.dtype == np.float32
    assert rel_err(out, ref_out) <= tol_out, f"out rel err {rel_err(out, ref_out)}"
    assert lse_err(lse, ref_lse) <= tol_lse, f"lse rel err {lse_err(lse, ref_lse)}"
    for name, g, r, src in zip(("dq", "dk", "dv"), grads, ref_grads, (q, k, v)):
        assert g.shape == src.shape and g.dtype == dtype
        assert rel_err(g, r) <= tol_grad, f"{name} rel err {rel_err(g, r)}"


def random_layout(rng):
    if rng.random() < 0.7:
        variant = str(rng.choice(sqa.presets))
        return sqa.preset(variant, int(rng.choice([4, 8, 16])))
    ratios = [(3, 1), (1, 3), (2, 6), (6, 2), (5, 5), (1, 1), (4, 2), (2, 4)]
    return ratios[int(rng.integers(len(ratios)))]


def random_mask(rng, seqlen):
    kind = int(rng.integers(5))
    if kind == 0:
        return False, (-1, -1)
    if kind == 1:
        return True, (-1, -1)
    if kind == 2:  # causal sliding window
        return True, (int(rng.integers(0, max(seqlen, 1) + 1)), -1)
    if kind == 3:  # two-sided window
        return False, (int(rng.integers(0, 8)), int(rng.integers(0, 8)))
    return False, (-1, int(rng.integers(0, 4)))  # right-bounded only


def random_head_dim(rng, budget_ok):
    for _ in range(20):
        d = int(rng.choice([1, 8, 16, 24, 32, 40, 64, 96, 128, 256]))
        if budget_ok(d):
            return d
    return 8


# ---- random sweeps -----------------------------------------------------------------------------

DENSE_CASES = 12 if small_scale() else 48
VARLEN_CASES = 6 if small_scale() else 24
MAX_WORK = 3e6  # batch * N_q * N_k * H_attn * d per case: keeps the oracle quick


def random_seqlen(rng):
    """Mostly short, sometimes past the CPU kernels' 64-row tiles (and not a multiple)."""
    return int(rng.integers(1, 48)) if rng.random() < 0.6 else int(rng.integers(48, 200))


@pytest.mark.parametrize("seed", range(DENSE_CASES))
def test_dense_random(seed):
    rng = np.random.default_rng(1000 + seed)
    dtype = (F32, BF16, F64)[seed % 3]
    hq, hkv = random_layout(rng)
    ha = max(hq, hkv)
    batch = int(rng.integers(1, 4))
    nq = random_seqlen(rng)
    nk = nq if rng.random() < 0.5 else random_seqlen(rng)
    d = random_head_dim(rng, lambda d: batch * nq * nk * ha * d <= MAX_WORK)
    causal, window = random_mask(rng, nk)
    scale = None if rng.random() < 0.6 else float(rng.uniform(0.05, 0.5))

    q, q64 = random_tensor(rng, (batch, nq, hq, d), dtype)
    k, k64 = random_tensor(rng, (batch, nk, hkv, d), dtype)
    v, v64 = random_tensor(rng, (batch, nk, hkv, d), dtype)
    dout, dout64 = random_tensor(rng, (batch, nq, ha, d), dtype)

    out, lse = sqa.flash_attn_func(q, k, v, softmax_scale=scale, causal=causal,
                                   window_size=window, return_lse=True)
    grads = sqa.flash_attn_backward(dout, q, k, v, out, lse, softmax_scale=scale, causal=causal,
                                    window_size=window)
    left, right = window_of(causal, window)
    ref = oracle.dense(q64, k64, v64, scale_of(scale, d), left, right, dout64)
    check_forward_backward(q, k, v, out, lse, grads, ref, dtype)


@pytest.mark.parametrize("seed", range(VARLEN_CASES))
def test_varlen_random(seed):
    rng = np.random.default_rng(2000 + seed)
    dtype = (F32, BF16, F64)[seed % 3]
    hq, hkv = random_layout(rng)
    ha = max(hq, hkv)
    batch = int(rng.integers(1, 5))
    longest = 33 if rng.random() < 0.6 else 150
    lens_q = rng.integers(1, longest, size=batch)
    same = rng.random() < 0.4
    lens_k = lens_q.copy() if same else rng.integers(1, longest, size=batch)
    cu_q = np.concatenate([[0], np.cumsum(lens_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(lens_k)]).astype(np.int32)
    work = int((lens_q * lens_k).sum()) * ha
    d = random_head_dim(rng, lambda d: work * d <= MAX_WORK)
    causal, window = random_mask(rng, int(lens_k.max()))

    q, q64 = random_tensor(rng, (int(cu_q[-1]), hq, d), dtype)
    k, k64 = random_tensor(rng, (int(cu_k[-1]), hkv, d), dtype)
    v, v64 = random_tensor(rng, (int(cu_k[-1]), hkv, d), dtype)
    dout, dout64 = random_tensor(rng, (int(cu_q[-1]), ha, d), dtype)
    # max_seqlen is an upper bound: sometimes pass a loose one.
    max_q = int(lens_q.max()) + int(rng.integers(0, 3))
    max_k = int(lens_k.max()) + int(rng.integers(0, 3))

    out, lse = sqa.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, causal=causal,
                                          window_size=window, return_lse=True)
    assert out.shape == (q.shape[0], ha, d) and lse.shape == (ha, q.shape[0])
    grads = sqa.flash_attn_varlen_backward(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k,
                                           causal=causal, window_size=window)
    left, right = window_of(causal, window)
    ref = oracle.varlen(q64, k64, v64, cu_q, cu_k, scale_of(None, d), left, right, dout64)
    check_forward_backward(q, k, v, out, lse, grads, ref, dtype)


# ---- every preset, decode, layouts -------------------------------------------------------------

@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
@pytest.mark.parametrize("variant", sqa.presets)
def test_every_preset(variant, dtype):
    rng = np.random.default_rng(zlib.crc32(f"{variant}-{dtype}".encode()))
    hq, hkv = sqa.preset(variant, 8)
    ha = max(hq, hkv)
    d, nq = 16, 19
    q, q64 = random_tensor(rng, (2, nq, hq, d), dtype)
    k, k64 = random_tensor(rng, (2, nq, hkv, d), dtype)
    v, v64 = random_tensor(rng, (2, nq, hkv, d), dtype)
    dout, dout64 = random_tensor(rng, (2, nq, ha, d), dtype)
    out, lse = sqa.flash_attn_func(q, k, v, causal=True, return_lse=True)
    assert out.shape == (2, nq, ha, d)
    grads = sqa.flash_attn_backward(dout, q, k, v, out, lse, causal=True)
    ref = oracle.dense(q64, k64, v64, scale_of(None, d), -1, 0, dout64)
    check_forward_backward(q, k, v, out, lse, grads, ref, dtype)


def test_presets_match_the_paper():
    assert set(sqa.presets) == set(PAPER_LAYOUTS_H16)
    for name, layout in PAPER_LAYOUTS_H16.items():
        assert sqa.preset(name, 16) == layout, name


def test_decode_one_query_against_a_long_cache():
    rng = np.random.default_rng(7)
    hq, hkv = sqa.preset("sqa", 16)
    d, nk = 64, 700
    q, q64 = random_tensor(rng, (2, 1, hq, d), F32)
    k, k64 = random_tensor(rng, (2, nk, hkv, d), F32)
    v, v64 = random_tensor(rng, (2, nk, hkv, d), F32)
    # Causal decode sees the whole cache (bottom-right alignment), a window only its tail.
    for causal, window in ((True, (-1, -1)), (True, (127, -1))):
        out, lse = sqa.flash_attn_func(q, k, v, causal=causal, window_size=window,
                                       return_lse=True)
        left, right = window_of(causal, window)
        ref_out, ref_lse = oracle.dense(q64, k64, v64, scale_of(None, d), left, right)
        assert rel_err(out, ref_out) <= TOLERANCES[F32][0]
        assert lse_err(lse, ref_lse) <= TOLERANCES[F32][1]


def test_strided_views_and_copies():
    """Fused QKV views, (B, H, N, d) transposes and a strided last axis all give the oracle's
    answer; the first two without a copy, the last through one."""
    rng = np.random.default_rng(11)
    b, n, hq, hkv, d = 2, 13, 4, 2, 16
    qkv, qkv64 = random_tensor(rng, (b, n, hq + 2 * hkv, d), F32)
    q, k, v = qkv[:, :, :hq], qkv[:, :, hq:hq + hkv], qkv[:, :, hq + hkv:]
    q64, k64, v64 = qkv64[:, :, :hq], qkv64[:, :, hq:hq + hkv], qkv64[:, :, hq + hkv:]
    ref_out, ref_lse = oracle.dense(q64, k64, v64, scale_of(None, d), -1, 0)
    out, lse = sqa.flash_attn_func(q, k, v, causal=True, return_lse=True)
    assert rel_err(out, ref_out) <= TOLERANCES[F32][0]

    bhnd = [np.ascontiguousarray(x.transpose(0, 2, 1, 3)) for x in (q, k, v)]
    views = [x.transpose(0, 2, 1, 3) for x in bhnd]
    assert not views[0].flags.c_contiguous
    out2 = sqa.flash_attn_func(*views, causal=True)
    assert rel_err(out2, ref_out) <= TOLERANCES[F32][0]

    wide, _ = random_tensor(rng, (b, n, hq, 2 * d), F32)
    wide[..., ::2] = q
    out3 = sqa.flash_attn_func(wide[..., ::2], k, v, causal=True)
    assert rel_err(out3, ref_out) <= TOLERANCES[F32][0]

    # Backward with strided dout/out views.
    dout, dout64 = random_tensor(rng, (b, n, hq, d), F32)
    big = np.stack([out, out])
    grads = sqa.flash_attn_backward(dout, q, k, v, big[1], lse, causal=True)
    ref = oracle.dense(q64, k64, v64, scale_of(None, d), -1, 0, dout64)
    for g, r in zip(grads, ref[2]):
        assert rel_err(g, r) <= TOLERANCES[F32][2]


def test_varlen_with_empty_sequences():
    rng = np.random.default_rng(5)
    hq, hkv, d = 2, 4, 8
    cu_q = np.array([0, 4, 4, 9], dtype=np.int32)    # sequence 1 has no queries
    cu_k = np.array([0, 6, 11, 11], dtype=np.int32)  # sequence 2 has no keys
    q, q64 = random_tensor(rng, (9, hq, d), F32)
    k, k64 = random_tensor(rng, (11, hkv, d), F32)
    v, v64 = random_tensor(rng, (11, hkv, d), F32)
    dout, dout64 = random_tensor(rng, (9, 4, d), F32)
    out, lse = sqa.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 6, 6, return_lse=True)
    grads = sqa.flash_attn_varlen_backward(dout, q, k, v, out, lse, cu_q, cu_k, 6, 6)
    ref = oracle.varlen(q64, k64, v64, cu_q, cu_k, scale_of(None, d), -1, -1, dout64)
    assert np.all(out[4:] == 0) and np.all(np.isneginf(lse[:, 4:]))
    check_forward_backward(q, k, v, out, lse, grads, ref, F32)


def test_reference_backend_and_float64_are_exact():
    rng = np.random.default_rng(3)
    q, q64 = random_tensor(rng, (1, 9, 2, 8), F64)
    k, k64 = random_tensor(rng, (1, 12, 6, 8), F64)
    v, v64 = random_tensor(rng, (1, 12, 6, 8), F64)
    ref_out, ref_lse = oracle.dense(q64, k64, v64, scale_of(0.3, 8), 3, 2)
    for backend in ("auto", "reference"):
        out, lse = sqa.flash_attn_func(q, k, v, softmax_scale=0.3, window_size=(3, 2),
                                       return_lse=True, backend=backend)
        assert out.dtype == F64
        assert rel_err(out, ref_out) <= 1e-12
        assert lse_err(lse, ref_lse) <= 1e-6  # lse is stored as float32


def test_flops_count_the_visible_area():
    for causal, window, nq, nk in ((False, (-1, -1), 64, 80), (True, (-1, -1), 64, 64),
                                   (False, (5, 3), 30, 50)):
        left, right = window_of(causal, window)
        pairs = int(oracle.visible_mask(nq, nk, left, right).sum())
        fwd = sqa.attention_flops(4, 8, 32, nq, nk, batch=3, causal=causal, window_size=window)
        assert fwd == 4.0 * 3 * pairs * 8 * 32
        bwd = sqa.attention_flops(4, 8, 32, nq, nk, batch=3, causal=causal, window_size=window,
                                  backward=True)
        assert bwd == pytest.approx(2.5 * fwd)


def test_version_and_backends():
    assert sqa.version() == sqa.__version__
    assert isinstance(sqa.cuda_available(), bool)
    assert sqa.cpu_simd_path() in ("avx512", "avx2", "portable")


# ---- errors name the value and the rule --------------------------------------------------------

def _qkv(hq=4, hkv=2, d=8, n=5, nk=None, dtype=F32, batch=1):
    rng = np.random.default_rng(17)
    nk = n if nk is None else nk
    return (random_tensor(rng, (batch, n, hq, d), dtype)[0],
            random_tensor(rng, (batch, nk, hkv, d), dtype)[0],
            random_tensor(rng, (batch, nk, hkv, d), dtype)[0])


@pytest.mark.parametrize("hq,hkv", [(6, 4), (4, 6), (3, 2), (2, 3)])
def test_error_head_ratio_both_ways(hq, hkv):
    with pytest.raises(ValueError, match=rf"num_query_heads \({hq}\) must be a multiple of "
                                         rf"num_kv_heads \({hkv}\), or the reverse for rSQA"):
        sqa.flash_attn_func(*_qkv(hq, hkv))


def test_error_head_dim():
    q, k, v = _qkv(d=8)
    with pytest.raises(ValueError, match=r"head_dim of k \(16\) must equal head_dim of q \(8\)"):
        sqa.flash_attn_func(q, np.concatenate([k, k], -1), np.concatenate([v, v], -1))
    with pytest.raises(ValueError, match=r"head_dim \(300\) must be in \[1, 256\]"):
        sqa.flash_attn_func(*_qkv(hq=1, hkv=1, d=300, n=1))


def test_error_shapes_and_dtypes():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"q must have 4 dimensions .* got shape \(5, 4, 8\)"):
        sqa.flash_attn_func(q[0], k, v)
    with pytest.raises(ValueError, match=r"v shape \(1, 4, 2, 8\) must equal k shape"):
        sqa.flash_attn_func(q, k, v[:, :4])
    q2, k2, v2 = _qkv(batch=2)
    with pytest.raises(ValueError, match=r"batch of k \(1\) must equal batch of q \(2\)"):
        sqa.flash_attn_func(q2, k, v)
    with pytest.raises(ValueError, match=r"must share one dtype"):
        sqa.flash_attn_func(q, k.astype(np.float64), v)
    with pytest.raises(ValueError, match=r"q dtype \(int32\) must be float32"):
        sqa.flash_attn_func(q.astype(np.int32), k.astype(np.int32), v.astype(np.int32))
    with pytest.raises(ValueError, match=r"seqlen_k \(0\) must be at least 1"):
        sqa.flash_attn_func(q, k[:, :0], v[:, :0])
    with pytest.raises(ValueError, match=r"window left \(-3\)"):
        sqa.flash_attn_func(q, k, v, window_size=(-3, 0))
    with pytest.raises(ValueError, match=r"window_size \(5\) must be a pair"):
        sqa.flash_attn_func(q, k, v, window_size=5)
    with pytest.raises(ValueError, match=r"softmax_scale \(-1.0\) must be > 0"):
        sqa.flash_attn_func(q, k, v, softmax_scale=-1.0)
    with pytest.raises(ValueError, match=r"dropout_p \(0.1\) must be 0"):
        sqa.flash_attn_func(q, k, v, dropout_p=0.1)
    with pytest.raises(ValueError, match=r"backend \('fast'\) must be"):
        sqa.flash_attn_func(q, k, v, backend="fast")


def test_error_float16_is_cuda_only():
    q, k, v = _qkv(dtype=np.dtype(np.float16))
    with pytest.raises(sqa.UnsupportedError, match=r"f16"):
        sqa.flash_attn_func(q, k, v)


def test_error_backward_shapes():
    q, k, v = _qkv()
    out, lse = sqa.flash_attn_func(q, k, v, return_lse=True)
    with pytest.raises(ValueError, match=r"dout shape \(1, 5, 2, 8\) must be the forward "
                                         r"output's shape \(1, 5, 4, 8\)"):
        sqa.flash_attn_backward(out[:, :, :2], q, k, v, out, lse)
    with pytest.raises(ValueError, match=r"lse shape \(1, 4, 4\) must be \(1, 4, 5\)"):
        sqa.flash_attn_backward(out, q, k, v, out, lse[:, :, :4])


def test_error_cu_seqlens():
    rng = np.random.default_rng(23)
    q = random_tensor(rng, (10, 2, 8), F32)[0]
    k = random_tensor(rng, (12, 2, 8), F32)[0]
    good_q, good_k = np.array([0, 4, 10]), np.array([0, 5, 12])
    with pytest.raises(ValueError, match=r"cu_seqlens_q\[-1\] \(9\) must equal the number of "
                                         r"packed tokens, q.shape\[0\] \(10\)"):
        sqa.flash_attn_varlen_func(q, k, k, np.array([0, 4, 9]), good_k, 6, 7)
    with pytest.raises(ValueError, match=r"cu_seqlens_q must be non-decreasing, but "
                                         r"cu_seqlens_q\[2\] \(3\) < cu_seqlens_q\[1\] \(7\)"):
        sqa.flash_attn_varlen_func(q, k, k, np.array([0, 7, 3, 10]), np.array([0, 5, 6, 12]),
                                   10, 10)
    with pytest.raises(ValueError, match=r"cu_seqlens_k\[0\] \(1\) must be 0"):
        sqa.flash_attn_varlen_func(q, k, k, good_q, np.array([1, 5, 12]), 6, 7)
    with pytest.raises(ValueError, match=r"sequence 1 has length 6 from cu_seqlens_q, more than "
                                         r"the max_seqlen \(5\)"):
        sqa.flash_attn_varlen_func(q, k, k, good_q, good_k, 5, 7)
    with pytest.raises(ValueError, match=r"cu_seqlens_q \(length 3\) and cu_seqlens_k "
                                         r"\(length 4\) must both have batch \+ 1"):
        sqa.flash_attn_varlen_func(q, k, k, good_q, np.array([0, 5, 6, 12]), 6, 7)
    with pytest.raises(ValueError, match=r"cu_seqlens_k dtype \(float64\) must be an integer"):
        sqa.flash_attn_varlen_func(q, k, k, good_q, good_k.astype(np.float64), 6, 7)
    with pytest.raises(ValueError, match=r"cu_seqlens_q must be a 1-D array"):
        sqa.flash_attn_varlen_func(q, k, k, np.array([0]), np.array([0]), 6, 7)


def test_error_messages_are_per_thread():
    """The C API keeps its last error per thread: concurrent failures never swap messages."""
    import threading

    failures = []

    def worker(hq, hkv):
        q, k, v = _qkv(hq, hkv, n=3)
        for _ in range(200):
            try:
                sqa.flash_attn_func(q, k, v)
                failures.append("no error")
            except ValueError as e:
                if f"num_query_heads ({hq})" not in str(e):
                    failures.append(str(e))

    threads = [threading.Thread(target=worker, args=a) for a in ((6, 4), (5, 3), (7, 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
