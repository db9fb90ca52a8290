"""ctypes mirror of include/sqa/sqa.h and the loader of libsqa.so.

The library is found, in order, at $SQA_LIBRARY, next to this file (the installed wheel), or in
a build folder of the source tree (build*/src/capi/libsqa.so) when the package runs from source
with PYTHONPATH=python.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading

# sqa_status
OK = 0
ERROR_INVALID_ARGUMENT = 1
ERROR_UNSUPPORTED = 2
ERROR_INTERNAL = 3

# sqa_dtype
F32 = 0
BF16 = 1
F16 = 2
F64 = 3

# sqa_device
DEVICE_CPU = 0
DEVICE_CUDA = 1

_i64x3 = ctypes.c_int64 * 3


class Spec(ctypes.Structure):
    _fields_ = [
        ("num_query_heads", ctypes.c_int32),
        ("num_kv_heads", ctypes.c_int32),
        ("head_dim", ctypes.c_int32),
        ("softmax_scale", ctypes.c_float),
        ("window_left", ctypes.c_int32),
        ("window_right", ctypes.c_int32),
    ]


class Args(ctypes.Structure):
    _fields_ = [
        ("spec", Spec),
        ("dtype", ctypes.c_int),
        ("device", ctypes.c_int),
        ("stream", ctypes.c_void_p),
        ("batch", ctypes.c_int64),
        ("seqlen_q", ctypes.c_int64),
        ("seqlen_k", ctypes.c_int64),
        ("cu_seqlens_q", ctypes.c_void_p),
        ("cu_seqlens_k", ctypes.c_void_p),
        ("q", ctypes.c_void_p),
        ("k", ctypes.c_void_p),
        ("v", ctypes.c_void_p),
        ("out", ctypes.c_void_p),
        ("lse", ctypes.c_void_p),
        ("q_strides", _i64x3),
        ("k_strides", _i64x3),
        ("v_strides", _i64x3),
        ("out_strides", _i64x3),
    ]


class BackwardArgs(ctypes.Structure):
    _fields_ = [
        ("forward", Args),
        ("dout", ctypes.c_void_p),
        ("dq", ctypes.c_void_p),
        ("dk", ctypes.c_void_p),
        ("dv", ctypes.c_void_p),
        ("dout_strides", _i64x3),
        ("dq_strides", _i64x3),
        ("dk_strides", _i64x3),
        ("dv_strides", _i64x3),
        ("deterministic", ctypes.c_int32),
    ]


class UnsupportedError(NotImplementedError):
    """A valid request that this build cannot serve (no CUDA backend, f16 on the CPU, ...)."""


def _candidates() -> list[str]:
    env = os.environ.get("SQA_LIBRARY")
    if env:
        # An explicit choice is never second-guessed: a wrong path should fail loudly.
        return [env]
    here = os.path.dirname(os.path.abspath(__file__))
    found = [os.path.join(here, "libsqa.so")]
    repo = os.path.dirname(os.path.dirname(here))
    # Running from source: the most recently built library of the tree's build folders.
    builds = glob.glob(os.path.join(repo, "build*", "src", "capi", "libsqa.so"))
    found += sorted(builds, key=os.path.getmtime, reverse=True)
    return found


_lock = threading.Lock()
_handle = None


def lib() -> ctypes.CDLL:
    """The loaded libsqa.so with its prototypes set (loaded once, on first use)."""
    global _handle
    if _handle is not None:
        return _handle
    with _lock:
        if _handle is None:
            _handle = _load()
    return _handle


def _load() -> ctypes.CDLL:
    tried = []
    for path in _candidates():
        if not os.path.exists(path):
            tried.append(f"{path} (missing)")
            continue
        handle = ctypes.CDLL(path)
        _declare(handle)
        return handle
    raise ImportError(
        "sqa: libsqa.so not found; tried " + ", ".join(tried) +
        ". Install the package with `pip install ./python` or set SQA_LIBRARY=/path/to/libsqa.so")


def _declare(h: ctypes.CDLL) -> None:
    c_status = ctypes.c_int
    h.sqa_version.restype = ctypes.c_char_p
    h.sqa_version.argtypes = []
    h.sqa_last_error.restype = ctypes.c_char_p
    h.sqa_last_error.argtypes = []
    h.sqa_cuda_available.restype = ctypes.c_int
    h.sqa_cuda_available.argtypes = []
    h.sqa_cpu_simd_path.restype = ctypes.c_char_p
    h.sqa_cpu_simd_path.argtypes = []
    h.sqa_preset.restype = c_status
    h.sqa_preset.argtypes = [ctypes.c_char_p, ctypes.c_int32, ctypes.POINTER(ctypes.c_int32),
                             ctypes.POINTER(ctypes.c_int32)]
    h.sqa_validate_spec.restype = c_status
    h.sqa_validate_spec.argtypes = [ctypes.POINTER(Spec)]
    for name in ("sqa_attention_forward", "sqa_attention_forward_reference"):
        fn = getattr(h, name)
        fn.restype = c_status
        fn.argtypes = [ctypes.POINTER(Args)]
    for name in ("sqa_attention_backward", "sqa_attention_backward_reference"):
        fn = getattr(h, name)
        fn.restype = c_status
        fn.argtypes = [ctypes.POINTER(BackwardArgs)]
    for name in ("sqa_attention_forward_flops", "sqa_attention_backward_flops"):
        fn = getattr(h, name)
        fn.restype = ctypes.c_double
        fn.argtypes = [ctypes.POINTER(Spec), ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]


def last_error() -> str:
    return lib().sqa_last_error().decode("utf-8", "replace")


def check(status: int) -> None:
    """Raises the Python exception of a failed C call, carrying the library's message."""
    if status == OK:
        return
    message = last_error()
    if status == ERROR_INVALID_ARGUMENT:
        raise ValueError(message)
    if status == ERROR_UNSUPPORTED:
        raise UnsupportedError(message)
    raise RuntimeError(f"sqa internal error: {message}")
