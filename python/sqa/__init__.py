"""sqa: Sparse Query Attention (arXiv 2510.01817) for every SQA head layout.

numpy in, numpy out, with FlashAttention's calling conventions so that code can swap imports:

    import sqa
    out = sqa.flash_attn_func(q, k, v, causal=True)          # q (B, N, H_q, d), k/v (B, N, H_kv, d)
    out, lse = sqa.flash_attn_func(q, k, v, return_lse=True)
    dq, dk, dv = sqa.flash_attn_backward(dout, q, k, v, out, lse)

Unlike FlashAttention, H_q < H_kv (reverse SQA) is allowed; the output then has H_kv heads.
PyTorch users: `sqa.torch.flash_attn_func` is an autograd function over CPU or CUDA tensors.
Errors in the arguments raise ValueError with a message naming the value and the rule.
"""

from __future__ import annotations

import ctypes
from typing import Sequence, Tuple

from . import _lib
from ._lib import UnsupportedError
from .attention import (bfloat16, flash_attn_backward, flash_attn_func,
                        flash_attn_varlen_backward, flash_attn_varlen_func)

__version__ = "0.1.0"

# Preset names, derived from the baseline head count H (see sqa.preset).
presets: Tuple[str, ...] = ("mha", "gqa", "mqa", "sqa", "ssqa", "xsqa", "xsmqa", "lsqa", "rsqa")


def version() -> str:
    """Version of the loaded libsqa.so."""
    return _lib.lib().sqa_version().decode()


def cuda_available() -> bool:
    """True when the loaded libsqa.so has the CUDA backend and sees a device."""
    return bool(_lib.lib().sqa_cuda_available())


def cpu_simd_path() -> str:
    """SIMD path of the fast CPU kernels on this machine: avx512, avx2 or portable."""
    return _lib.lib().sqa_cpu_simd_path().decode()


def preset(name: str, num_baseline_heads: int) -> Tuple[int, int]:
    """(H_q, H_kv) of a preset for H baseline heads, e.g. preset("sqa", 16) == (8, 4)."""
    hq = ctypes.c_int32()
    hkv = ctypes.c_int32()
    _lib.check(_lib.lib().sqa_preset(str(name).encode(), int(num_baseline_heads),
                                     ctypes.byref(hq), ctypes.byref(hkv)))
    return hq.value, hkv.value


def attention_flops(num_query_heads: int, num_kv_heads: int, head_dim: int, seqlen_q: int,
                    seqlen_k: int | None = None, batch: int = 1, causal: bool = False,
                    window_size: Sequence[int] = (-1, -1), backward: bool = False) -> float:
    """FLOPs (multiply-add = 2) of the attention core, forward or backward, counting the exact
    visible area of the mask (the library's single FLOP count)."""
    from .attention import _spec

    spec = _spec(int(num_query_heads), int(num_kv_heads), int(head_dim), None, causal,
                 window_size)
    seqlen_k = seqlen_q if seqlen_k is None else seqlen_k
    h = _lib.lib()
    fn = h.sqa_attention_backward_flops if backward else h.sqa_attention_forward_flops
    flops = fn(ctypes.byref(spec), int(batch), int(seqlen_q), int(seqlen_k))
    if flops < 0:
        raise ValueError(_lib.last_error())
    return flops


def __getattr__(name: str):
    # sqa.torch is imported on first use: torch is optional and slow to import.
    if name == "torch":
        import importlib

        return importlib.import_module(".torch", __name__)
    raise AttributeError(f"module 'sqa' has no attribute {name!r}")


__all__ = [
    "UnsupportedError", "attention_flops", "bfloat16", "cpu_simd_path", "cuda_available",
    "flash_attn_backward", "flash_attn_func", "flash_attn_varlen_backward",
    "flash_attn_varlen_func", "preset", "presets", "version",
]
