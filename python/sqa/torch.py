"""PyTorch autograd wrappers: drop-in for flash_attn.flash_attn_func / flash_attn_varlen_func.

    import sqa.torch
    out = sqa.torch.flash_attn_func(q, k, v, causal=True)   # (B, N, H, d) tensors
    out.sum().backward()                                     # dq, dk, dv via sqa's backward

Tensors live on the CPU or on a CUDA device (the backend follows the device); CUDA calls run on
torch's current stream of that device. dtypes: float32, bfloat16, float16 (CUDA only) and
float64 (CPU, through the float64 oracle). Each head's elements must be contiguous; other views
are passed with their strides, anything else is copied. Unlike FlashAttention, H_q < H_kv
(reverse SQA) is allowed.

On CUDA, cu_seqlens are device memory and are not checked (as in FlashAttention): they must
start at 0, never decrease, end at the number of packed rows, and no sequence may be longer
than max_seqlen. On the CPU they are checked and violations raise ValueError.
"""

from __future__ import annotations

import ctypes
from typing import Optional, Sequence

import torch

from . import _lib
from .attention import _check_dropout, _spec

__all__ = ["flash_attn_func", "flash_attn_varlen_func"]

_DTYPES = {
    torch.float32: _lib.F32,
    torch.bfloat16: _lib.BF16,
    torch.float16: _lib.F16,
    torch.float64: _lib.F64,
}


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _device_code(t: torch.Tensor) -> int:
    if t.device.type == "cpu":
        return _lib.DEVICE_CPU
    if t.device.type == "cuda":
        return _lib.DEVICE_CUDA
    raise ValueError(f"tensors must be on the CPU or a CUDA device, got {t.device}")


def _strided(t: torch.Tensor, head_dim: int):
    """The tensor as the library can read it and its (batch, row, head) strides in elements."""
    st = t.stride()
    ok = st[-1] == 1 and all(s >= 0 for s in st) and all(s >= head_dim for s in st[-3:-1])
    if not ok:
        t = t.contiguous()
        st = t.stride()
    el = tuple(st[:-1])
    return t, ((0,) + el if len(el) == 2 else el)


class _Call:
    """Checked tensors and the C arguments of one forward (dense or varlen)."""

    def __init__(self, q, k, v, softmax_scale, causal, window_size, cu_seqlens_q=None,
                 cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None):
        self.varlen = cu_seqlens_q is not None or cu_seqlens_k is not None
        nd = 3 if self.varlen else 4
        layout = ("(total_tokens, num_heads, head_dim)" if self.varlen else
                  "(batch, seqlen, num_heads, head_dim)")
        for name, t in (("q", q), ("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != nd:
                raise ValueError(f"{name} must have {nd} dimensions {layout}, got shape "
                                 f"{_shape(t)}")
        if v.shape != k.shape:
            raise ValueError(f"v shape {_shape(v)} must equal k shape {_shape(k)}")
        if k.shape[-1] != q.shape[-1]:
            raise ValueError(f"head_dim of k ({k.shape[-1]}) must equal head_dim of q "
                             f"({q.shape[-1]})")
        if not (q.dtype == k.dtype == v.dtype):
            raise ValueError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, "
                             f"{v.dtype}")
        if not (q.device == k.device == v.device):
            raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, "
                             f"{v.device}")
        if q.dtype not in _DTYPES:
            raise ValueError(f"q dtype ({q.dtype}) must be float32, bfloat16, float16 or "
                             "float64")
        self.device = q.device
        self.device_code = _device_code(q)
        self.dtype = q.dtype
        self.head_dim = q.shape[-1]
        hq, hkv = q.shape[-2], k.shape[-2]
        self.num_attention_heads = max(hq, hkv)
        self.spec = _spec(hq, hkv, self.head_dim, softmax_scale, causal, window_size)
        if self.varlen:
            self.cu_q = self._cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], "q.shape[0]")
            self.cu_k = self._cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], "k.shape[0]")
            if self.cu_q.shape != self.cu_k.shape:
                raise ValueError(f"cu_seqlens_q (length {self.cu_q.shape[0]}) and cu_seqlens_k "
                                 f"(length {self.cu_k.shape[0]}) must both have batch + 1 "
                                 "entries")
            if max_seqlen_q is None or max_seqlen_k is None:
                raise ValueError("max_seqlen_q and max_seqlen_k must be given with cu_seqlens")
            self.batch = self.cu_q.shape[0] - 1
            self.seqlen_q, self.seqlen_k = int(max_seqlen_q), int(max_seqlen_k)
            self.out_shape = (q.shape[0], self.num_attention_heads, self.head_dim)
            self.lse_shape = (self.num_attention_heads, q.shape[0])
        else:
            if k.shape[0] != q.shape[0]:
                raise ValueError(f"batch of k ({k.shape[0]}) must equal batch of q "
                                 f"({q.shape[0]})")
            self.cu_q = self.cu_k = None
            self.batch, self.seqlen_q, self.seqlen_k = q.shape[0], q.shape[1], k.shape[1]
            self.out_shape = (q.shape[0], q.shape[1], self.num_attention_heads, self.head_dim)
            self.lse_shape = (q.shape[0], self.num_attention_heads, q.shape[1])
        self.q, self.q_strides = _strided(q, self.head_dim)
        self.k, self.k_strides = _strided(k, self.head_dim)
        self.v, self.v_strides = _strided(v, self.head_dim)

    def _cu_seqlens(self, name, cu, total, rows_name):
        if not isinstance(cu, torch.Tensor) or cu.dim() != 1 or cu.shape[0] < 2:
            raise ValueError(f"{name} must be a 1-D tensor of batch + 1 >= 2 offsets")
        if cu.dtype != torch.int32:
            raise ValueError(f"{name} dtype ({cu.dtype}) must be torch.int32")
        if cu.device != self.device:
            raise ValueError(f"{name} must be on the device of q ({self.device}), got "
                             f"{cu.device}")
        cu = cu.contiguous()
        if cu.device.type == "cpu" and int(cu[-1]) != total:
            raise ValueError(f"{name}[-1] ({int(cu[-1])}) must equal the number of packed "
                             f"tokens, {rows_name} ({total})")
        return cu

    def stream(self) -> Optional[int]:
        if self.device_code != _lib.DEVICE_CUDA:
            return None
        return torch.cuda.current_stream(self.device).cuda_stream

    def args(self, out: torch.Tensor, lse: Optional[torch.Tensor], out_strides) -> _lib.Args:
        a = _lib.Args()
        a.spec = self.spec
        a.dtype = _DTYPES[self.dtype]
        a.device = self.device_code
        a.stream = self.stream()
        a.batch, a.seqlen_q, a.seqlen_k = self.batch, self.seqlen_q, self.seqlen_k
        if self.varlen:
            a.cu_seqlens_q = self.cu_q.data_ptr()
            a.cu_seqlens_k = self.cu_k.data_ptr()
        a.q, a.k, a.v = self.q.data_ptr(), self.k.data_ptr(), self.v.data_ptr()
        a.out = out.data_ptr()
        a.lse = lse.data_ptr() if lse is not None else None
        a.q_strides[:] = self.q_strides
        a.k_strides[:] = self.k_strides
        a.v_strides[:] = self.v_strides
        a.out_strides[:] = out_strides
        return a

    def forward(self, want_lse: bool = True):
        """out and lse; without want_lse (inference) the library is not asked for the lse, which
        lets the cuDNN backend run its graph without the stats output, and lse is None."""
        out = torch.empty(self.out_shape, dtype=self.dtype, device=self.device)
        lse = (torch.empty(self.lse_shape, dtype=torch.float32, device=self.device)
               if want_lse else None)
        _, out_strides = _strided(out, self.head_dim)
        args = self.args(out, lse, out_strides)
        with _on_device(self.device):
            _lib.check(_lib.lib().sqa_attention_forward(ctypes.byref(args)))
        return out, lse

    def backward(self, dout, out, lse, deterministic):
        out, out_strides = _strided(out, self.head_dim)
        dout, dout_strides = _strided(dout.to(self.dtype), self.head_dim)
        dq = torch.empty(self.q.shape, dtype=self.dtype, device=self.device)
        dk = torch.empty(self.k.shape, dtype=self.dtype, device=self.device)
        dv = torch.empty(self.v.shape, dtype=self.dtype, device=self.device)
        g = _lib.BackwardArgs()
        g.forward = self.args(out, lse, out_strides)
        g.dout = dout.data_ptr()
        g.dq, g.dk, g.dv = dq.data_ptr(), dk.data_ptr(), dv.data_ptr()
        g.dout_strides[:] = dout_strides
        g.dq_strides[:] = _strided(dq, self.head_dim)[1]
        g.dk_strides[:] = _strided(dk, self.head_dim)[1]
        g.dv_strides[:] = _strided(dv, self.head_dim)[1]
        g.deterministic = 1 if deterministic else 0
        with _on_device(self.device):
            _lib.check(_lib.lib().sqa_attention_backward(ctypes.byref(g)))
        return dq, dk, dv


class _on_device:
    """Makes the tensors' CUDA device current for the library call (no-op on the CPU)."""

    def __init__(self, device: torch.device):
        self.ctx = torch.cuda.device(device) if device.type == "cuda" else None

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)
        return False


def _needs_grad(*tensors) -> bool:
    """Whether autograd will want the backward (else the forward skips the lse)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class _FlashAttn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, softmax_scale, causal, window_size, deterministic, cu_seqlens_q,
                cu_seqlens_k, max_seqlen_q, max_seqlen_k):
        call = _Call(q, k, v, softmax_scale, causal, window_size, cu_seqlens_q, cu_seqlens_k,
                     max_seqlen_q, max_seqlen_k)
        out, lse = call.forward()
        ctx.save_for_backward(call.q, call.k, call.v, out, lse)
        ctx.call_args = (softmax_scale, causal, window_size, cu_seqlens_q, cu_seqlens_k,
                         max_seqlen_q, max_seqlen_k)
        ctx.deterministic = deterministic
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        scale, causal, window, cu_q, cu_k, max_q, max_k = ctx.call_args
        call = _Call(q, k, v, scale, causal, window, cu_q, cu_k, max_q, max_k)
        dq, dk, dv = call.backward(dout, out, lse, ctx.deterministic)
        return dq, dk, dv, None, None, None, None, None, None, None, None


def flash_attn_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    softmax_scale: Optional[float] = None, causal: bool = False,
                    window_size: Sequence[int] = (-1, -1), return_lse: bool = False, *,
                    dropout_p: float = 0.0, deterministic: bool = False):
    """Differentiable attention: q (B, N_q, H_q, d), k and v (B, N_k, H_kv, d) ->
    out (B, N_q, max(H_q, H_kv), d) [, lse (B, max(H_q, H_kv), N_q) float32]."""
    _check_dropout(dropout_p)
    if not return_lse and not _needs_grad(q, k, v):
        return _Call(q, k, v, softmax_scale, causal, window_size, None, None, None,
                     None).forward(want_lse=False)[0]
    out, lse = _FlashAttn.apply(q, k, v, softmax_scale, causal, window_size,
                                deterministic, None, None, None, None)
    return (out, lse) if return_lse else out


def flash_attn_varlen_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                           max_seqlen_q: int, max_seqlen_k: int,
                           softmax_scale: Optional[float] = None, causal: bool = False,
                           window_size: Sequence[int] = (-1, -1), return_lse: bool = False, *,
                           dropout_p: float = 0.0, deterministic: bool = False):
    """Differentiable attention over packed sequences: q (total_q, H_q, d), k and v
    (total_k, H_kv, d), int32 cu_seqlens of length batch + 1 on q's device ->
    out (total_q, max(H_q, H_kv), d) [, lse (max(H_q, H_kv), total_q) float32]."""
    _check_dropout(dropout_p)
    if cu_seqlens_q is None or cu_seqlens_k is None:
        raise ValueError("cu_seqlens_q and cu_seqlens_k must both be given")
    if not return_lse and not _needs_grad(q, k, v):
        return _Call(q, k, v, softmax_scale, causal, window_size, cu_seqlens_q, cu_seqlens_k,
                     max_seqlen_q, max_seqlen_k).forward(want_lse=False)[0]
    out, lse = _FlashAttn.apply(q, k, v, softmax_scale, causal, window_size,
                                deterministic, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                max_seqlen_k)
    return (out, lse) if return_lse else out
