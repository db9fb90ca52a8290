"""numpy attention in FlashAttention's calling conventions, over the C API.

Layouts (as FlashAttention):
  dense:  q (batch, seqlen_q, H_q, d), k and v (batch, seqlen_k, H_kv, d)
          -> out (batch, seqlen_q, H_attn, d), lse (batch, H_attn, seqlen_q) float32
  varlen: q (total_q, H_q, d), k and v (total_k, H_kv, d), cu_seqlens of length batch + 1
          -> out (total_q, H_attn, d), lse (H_attn, total_q) float32
with H_attn = max(H_q, H_kv). H_q < H_kv is reverse SQA, which FlashAttention does not accept.

Shapes that disagree with each other are checked here; every rule of the spec itself (head
ratios, head_dim range, window, cu_seqlens order) is checked by the library, and its message is
raised unchanged as ValueError.
"""

from __future__ import annotations

import ctypes
from typing import Optional, Sequence, Tuple

import ml_dtypes
import numpy as np

from . import _lib

bfloat16 = np.dtype(ml_dtypes.bfloat16)

_DTYPES = {
    np.dtype(np.float32): _lib.F32,
    bfloat16: _lib.BF16,
    np.dtype(np.float16): _lib.F16,
    np.dtype(np.float64): _lib.F64,
}


def _dtype_code(name: str, a: np.ndarray) -> int:
    code = _DTYPES.get(a.dtype)
    if code is None:
        raise ValueError(f"{name} dtype ({a.dtype}) must be float32, bfloat16 (ml_dtypes), "
                         "float16 or float64")
    return code


def _shape(a: np.ndarray) -> str:
    return "(" + ", ".join(str(s) for s in a.shape) + ")"


def _as_array(name: str, x, ndim: int, layout: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions {layout}, got shape {_shape(a)}")
    return a


def _strided(a: np.ndarray, head_dim: int) -> Tuple[np.ndarray, Tuple[int, int, int]]:
    """The array as the library can read it, and its (batch, row, head) strides in elements.

    Views are passed without a copy when each head's elements are contiguous (last axis stride 1)
    and rows and heads do not overlap; anything else (reversed, broadcast, misaligned) is copied.
    """
    item = a.itemsize
    st = a.strides
    ok = (a.flags.aligned and st[-1] == item and
          all(s >= 0 and s % item == 0 for s in st[:-1]) and
          all(s // item >= head_dim for s in st[-3:-1]))
    if not ok:
        a = np.ascontiguousarray(a)
        st = a.strides
    elems = tuple(s // item for s in st[:-1])
    if len(elems) == 2:  # varlen: no batch axis
        elems = (0,) + elems
    return a, elems


def _ptr(a: Optional[np.ndarray]) -> Optional[int]:
    return None if a is None else a.ctypes.data


def _window(causal: bool, window_size: Sequence[int]) -> Tuple[int, int]:
    try:
        left, right = (int(w) for w in window_size)
    except (TypeError, ValueError):
        raise ValueError(f"window_size ({window_size!r}) must be a pair (left, right) of ints, "
                         "-1 for unbounded") from None
    if causal:
        # FlashAttention's convention: causal is the window's right edge at the diagonal.
        right = 0
    return left, right


def _spec(num_query_heads: int, num_kv_heads: int, head_dim: int,
          softmax_scale: Optional[float], causal: bool,
          window_size: Sequence[int]) -> _lib.Spec:
    left, right = _window(causal, window_size)
    scale = 0.0 if softmax_scale is None else float(softmax_scale)
    if softmax_scale is not None and not scale > 0.0:
        raise ValueError(f"softmax_scale ({softmax_scale}) must be > 0, or None for "
                         "1/sqrt(head_dim)")
    return _lib.Spec(num_query_heads, num_kv_heads, head_dim, scale, left, right)


def _check_dropout(dropout_p: float) -> None:
    if dropout_p != 0.0:
        raise ValueError(f"dropout_p ({dropout_p}) must be 0: sqa has no attention dropout")


def _cu_seqlens(name: str, cu, total: int, rows_name: str) -> np.ndarray:
    a = np.asarray(cu)
    if a.ndim != 1 or a.shape[0] < 2:
        raise ValueError(f"{name} must be a 1-D array of batch + 1 >= 2 offsets, got shape "
                         f"{_shape(a)}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} dtype ({a.dtype}) must be an integer type")
    if a.min() < np.iinfo(np.int32).min or a.max() > np.iinfo(np.int32).max:
        raise ValueError(f"{name} values must fit in int32")
    if int(a[-1]) != total:
        raise ValueError(f"{name}[-1] ({int(a[-1])}) must equal the number of packed tokens, "
                         f"{rows_name} ({total})")
    return np.ascontiguousarray(a, dtype=np.int32)


class _Problem:
    """Checked q, k, v and the forward arguments of one call (dense or varlen)."""

    def __init__(self, q, k, v, softmax_scale, causal, window_size, cu_seqlens_q=None,
                 cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None):
        self.varlen = cu_seqlens_q is not None or cu_seqlens_k is not None
        if self.varlen:
            nd, layout = 3, "(total_tokens, num_heads, head_dim)"
        else:
            nd, layout = 4, "(batch, seqlen, num_heads, head_dim)"
        q = _as_array("q", q, nd, layout)
        k = _as_array("k", k, nd, layout)
        v = _as_array("v", v, nd, layout)
        if v.shape != k.shape:
            raise ValueError(f"v shape {_shape(v)} must equal k shape {_shape(k)}")
        if k.shape[-1] != q.shape[-1]:
            raise ValueError(f"head_dim of k ({k.shape[-1]}) must equal head_dim of q "
                             f"({q.shape[-1]})")
        if not (q.dtype == k.dtype == v.dtype):
            raise ValueError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, "
                             f"{v.dtype}")
        self.dtype_code = _dtype_code("q", q)
        self.dtype = q.dtype
        self.head_dim = q.shape[-1]
        self.num_query_heads = q.shape[-2]
        self.num_kv_heads = k.shape[-2]
        self.num_attention_heads = max(self.num_query_heads, self.num_kv_heads)
        self.spec = _spec(self.num_query_heads, self.num_kv_heads, self.head_dim, softmax_scale,
                          causal, window_size)
        if self.varlen:
            if cu_seqlens_q is None or cu_seqlens_k is None:
                raise ValueError("cu_seqlens_q and cu_seqlens_k must be given together")
            self.cu_q = _cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], "q.shape[0]")
            self.cu_k = _cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], "k.shape[0]")
            if self.cu_q.shape != self.cu_k.shape:
                raise ValueError(f"cu_seqlens_q (length {self.cu_q.shape[0]}) and cu_seqlens_k "
                                 f"(length {self.cu_k.shape[0]}) must both have batch + 1 "
                                 "entries")
            self.batch = self.cu_q.shape[0] - 1
            # None: the longest sequence (FlashAttention requires the number; it is a bound).
            self.seqlen_q = int(np.diff(self.cu_q).max() if max_seqlen_q is None else max_seqlen_q)
            self.seqlen_k = int(np.diff(self.cu_k).max() if max_seqlen_k is None else max_seqlen_k)
            self.out_shape = (q.shape[0], self.num_attention_heads, self.head_dim)
            self.lse_shape = (self.num_attention_heads, q.shape[0])
        else:
            if k.shape[0] != q.shape[0]:
                raise ValueError(f"batch of k ({k.shape[0]}) must equal batch of q "
                                 f"({q.shape[0]})")
            self.cu_q = self.cu_k = None
            self.batch, self.seqlen_q = q.shape[0], q.shape[1]
            self.seqlen_k = k.shape[1]
            self.out_shape = (q.shape[0], q.shape[1], self.num_attention_heads, self.head_dim)
            self.lse_shape = (q.shape[0], self.num_attention_heads, q.shape[1])
        self.q, self.q_strides = _strided(q, self.head_dim)
        self.k, self.k_strides = _strided(k, self.head_dim)
        self.v, self.v_strides = _strided(v, self.head_dim)

    def args(self, out: np.ndarray, lse: Optional[np.ndarray]) -> _lib.Args:
        a = _lib.Args()
        a.spec = self.spec
        a.dtype = self.dtype_code
        a.device = _lib.DEVICE_CPU
        a.batch = self.batch
        a.seqlen_q = self.seqlen_q
        a.seqlen_k = self.seqlen_k
        a.cu_seqlens_q = _ptr(self.cu_q)
        a.cu_seqlens_k = _ptr(self.cu_k)
        a.q, a.k, a.v = _ptr(self.q), _ptr(self.k), _ptr(self.v)
        a.out = _ptr(out)
        a.lse = _ptr(lse)
        a.q_strides[:] = self.q_strides
        a.k_strides[:] = self.k_strides
        a.v_strides[:] = self.v_strides
        out_strides = tuple(s // out.itemsize for s in out.strides[:-1])
        a.out_strides[:] = out_strides if len(out_strides) == 3 else (0,) + out_strides
        return a


def _backend(backend: str):
    h = _lib.lib()
    if backend == "auto":
        return h.sqa_attention_forward, h.sqa_attention_backward
    if backend == "reference":
        return h.sqa_attention_forward_reference, h.sqa_attention_backward_reference
    raise ValueError(f"backend ({backend!r}) must be 'auto' (fastest) or 'reference' (the "
                     "float64 oracle)")


def _run_forward(p: _Problem, return_lse: bool, backend: str):
    forward, _ = _backend(backend)
    out = np.empty(p.out_shape, dtype=p.dtype)
    lse = np.empty(p.lse_shape, dtype=np.float32)
    args = p.args(out, lse)
    _lib.check(forward(ctypes.byref(args)))
    return (out, lse) if return_lse else out


def _run_backward(p: _Problem, dout, out, lse, deterministic: bool, backend: str):
    _, backward = _backend(backend)
    dout = np.asarray(dout)
    out = np.asarray(out)
    lse = np.asarray(lse)
    for name, a in (("dout", dout), ("out", out)):
        if a.shape != p.out_shape:
            raise ValueError(f"{name} shape {_shape(a)} must be the forward output's shape "
                             f"{p.out_shape}")
        if a.dtype != p.dtype:
            raise ValueError(f"{name} dtype ({a.dtype}) must equal the dtype of q ({p.dtype})")
    if lse.shape != p.lse_shape:
        raise ValueError(f"lse shape {_shape(lse)} must be {p.lse_shape}")
    lse = np.ascontiguousarray(lse, dtype=np.float32)
    out, out_strides = _strided(out, p.head_dim)
    dout, dout_strides = _strided(dout, p.head_dim)
    dq = np.empty(p.q.shape, dtype=p.dtype)
    dk = np.empty(p.k.shape, dtype=p.dtype)
    dv = np.empty(p.v.shape, dtype=p.dtype)
    g = _lib.BackwardArgs()
    g.forward = p.args(out, lse)
    g.forward.out_strides[:] = out_strides
    g.dout = _ptr(dout)
    g.dq, g.dk, g.dv = _ptr(dq), _ptr(dk), _ptr(dv)
    g.dout_strides[:] = dout_strides
    for field, a in (("dq_strides", dq), ("dk_strides", dk), ("dv_strides", dv)):
        _, strides = _strided(a, p.head_dim)
        getattr(g, field)[:] = strides
    g.deterministic = 1 if deterministic else 0
    _lib.check(backward(ctypes.byref(g)))
    return dq, dk, dv


def flash_attn_func(q, k, v, softmax_scale: Optional[float] = None, causal: bool = False,
                    window_size: Sequence[int] = (-1, -1), return_lse: bool = False, *,
                    dropout_p: float = 0.0, backend: str = "auto"):
    """Attention over dense batches: softmax(q k^T * scale) v per attention head.

    q (batch, seqlen_q, H_q, d), k and v (batch, seqlen_k, H_kv, d) of float32, bfloat16 or
    float64. Returns out (batch, seqlen_q, max(H_q, H_kv), d) in q's dtype, and with
    return_lse=True also the row log-sum-exp (batch, max(H_q, H_kv), seqlen_q) float32.
    window_size=(left, right) as FlashAttention (-1 unbounded, aligned bottom-right when
    seqlen_q != seqlen_k); causal=True sets right = 0. backend="reference" runs the float64
    oracle instead of the fast kernels.
    """
    _check_dropout(dropout_p)
    p = _Problem(q, k, v, softmax_scale, causal, window_size)
    return _run_forward(p, return_lse, backend)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int,
                           max_seqlen_k: int, softmax_scale: Optional[float] = None,
                           causal: bool = False, window_size: Sequence[int] = (-1, -1),
                           return_lse: bool = False, *, dropout_p: float = 0.0,
                           backend: str = "auto"):
    """Attention over packed sequences: q (total_q, H_q, d), k and v (total_k, H_kv, d), with
    sequence b at rows [cu_seqlens_q[b], cu_seqlens_q[b+1]) of q (likewise k, v). Returns out
    (total_q, max(H_q, H_kv), d) and with return_lse=True lse (max(H_q, H_kv), total_q)."""
    _check_dropout(dropout_p)
    p = _Problem(q, k, v, softmax_scale, causal, window_size, cu_seqlens_q, cu_seqlens_k,
                 max_seqlen_q, max_seqlen_k)
    return _run_forward(p, return_lse, backend)


def flash_attn_backward(dout, q, k, v, out, lse, softmax_scale: Optional[float] = None,
                        causal: bool = False, window_size: Sequence[int] = (-1, -1),
                        deterministic: bool = False, *, backend: str = "auto"):
    """Gradients (dq, dk, dv) of flash_attn_func given dout, the forward's inputs, its out and
    its lse (return_lse=True). For H_q > H_kv, dk and dv sum over each KV head's query group;
    for rSQA, dq sums over the query repeats."""
    p = _Problem(q, k, v, softmax_scale, causal, window_size)
    return _run_backward(p, dout, out, lse, deterministic, backend)


def flash_attn_varlen_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                               max_seqlen_q: int, max_seqlen_k: int,
                               softmax_scale: Optional[float] = None, causal: bool = False,
                               window_size: Sequence[int] = (-1, -1),
                               deterministic: bool = False, *, backend: str = "auto"):
    """Gradients (dq, dk, dv) of flash_attn_varlen_func."""
    p = _Problem(q, k, v, softmax_scale, causal, window_size, cu_seqlens_q, cu_seqlens_k,
                 max_seqlen_q, max_seqlen_k)
    return _run_backward(p, dout, out, lse, deterministic, backend)
