"""Independent float64 attention in numpy: the oracle of the Python tests.

Written from the definitions in paper.md, not from the library: the KV heads are repeated G
times (repeat_interleave order) for H_q >= H_kv, and the query heads are tiled H_kv / H_q times
(q0..q_{H_q-1}, q0, ...) for reverse SQA. Gradients are the analytic softmax backward over the
expanded heads, then summed back onto the shared heads.
"""

from __future__ import annotations

import numpy as np


def visible_mask(seqlen_q: int, seqlen_k: int, left: int, right: int) -> np.ndarray:
    """Boolean (seqlen_q, seqlen_k): FlashAttention's window aligned to the bottom-right."""
    i = np.arange(seqlen_q)[:, None] + (seqlen_k - seqlen_q)
    j = np.arange(seqlen_k)[None, :]
    ok = np.ones((seqlen_q, seqlen_k), dtype=bool)
    if left >= 0:
        ok &= j >= i - left
    if right >= 0:
        ok &= j <= i + right
    return ok


def _expand(q, k, v):
    hq, hkv = q.shape[1], k.shape[1]
    if hq >= hkv:
        g = hq // hkv
        return q, np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    r = hkv // hq
    return np.tile(q, (1, r, 1)), k, v


def _reduce(dq_e, dk_e, dv_e, hq, hkv):
    nq, _, d = dq_e.shape
    nk = dk_e.shape[0]
    if hq >= hkv:
        g = hq // hkv
        return dq_e, dk_e.reshape(nk, hkv, g, d).sum(2), dv_e.reshape(nk, hkv, g, d).sum(2)
    r = hkv // hq
    return dq_e.reshape(nq, r, hq, d).sum(1), dk_e, dv_e


def sequence(q, k, v, scale, left, right, dout=None):
    """One sequence: q (N_q, H_q, d), k/v (N_k, H_kv, d) as float64.

    Returns out (N_q, H_attn, d), lse (H_attn, N_q) and, with dout, (dq, dk, dv)."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    hq, hkv = q.shape[1], k.shape[1]
    nq, nk = q.shape[0], k.shape[0]
    qe, ke, ve = _expand(q, k, v)
    mask = visible_mask(nq, nk, left, right)[None]
    s = np.einsum("ihd,jhd->hij", qe, ke) * scale
    s = np.where(mask, s, -np.inf)
    any_visible = mask.any(-1)  # (1, N_q)
    m = np.where(any_visible, s.max(-1, initial=-np.inf), 0.0)
    e = np.where(mask, np.exp(s - m[..., None]), 0.0)
    total = e.sum(-1)
    p = e / np.where(total > 0, total, 1.0)[..., None]
    with np.errstate(divide="ignore"):
        lse = np.where(any_visible, m + np.log(np.where(total > 0, total, 1.0)), -np.inf)
    out = np.einsum("hij,jhd->ihd", p, ve)
    if dout is None:
        return out, lse
    do = np.asarray(dout, dtype=np.float64)
    dv_e = np.einsum("hij,ihd->jhd", p, do)
    dp = np.einsum("ihd,jhd->hij", do, ve)
    delta = np.einsum("ihd,ihd->hi", do, out)
    ds = p * (dp - delta[..., None])
    dq_e = scale * np.einsum("hij,jhd->ihd", ds, ke)
    dk_e = scale * np.einsum("hij,ihd->jhd", ds, qe)
    return out, lse, _reduce(dq_e, dk_e, dv_e, hq, hkv)


def dense(q, k, v, scale, left, right, dout=None):
    """Batched (B, N, H, d) version of `sequence`; lse (B, H_attn, N_q)."""
    results = [sequence(q[b], k[b], v[b], scale, left, right,
                        None if dout is None else dout[b]) for b in range(q.shape[0])]
    out = np.stack([r[0] for r in results])
    lse = np.stack([r[1] for r in results])
    if dout is None:
        return out, lse
    grads = tuple(np.stack([r[2][t] for r in results]) for t in range(3))
    return out, lse, grads


def varlen(q, k, v, cu_q, cu_k, scale, left, right, dout=None):
    """Packed (total, H, d) version; lse (H_attn, total_q)."""
    hattn = max(q.shape[1], k.shape[1])
    out = np.zeros((q.shape[0], hattn, q.shape[2]))
    lse = np.full((hattn, q.shape[0]), -np.inf)
    dq, dk, dv = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)
    for b in range(len(cu_q) - 1):
        qs, ks = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        if cu_q[b + 1] == cu_q[b]:
            continue
        if cu_k[b + 1] == cu_k[b]:
            # No keys at all: out stays 0, lse -inf, no gradient flows.
            continue
        r = sequence(q[qs], k[ks], v[ks], scale, left, right,
                     None if dout is None else dout[qs])
        out[qs] = r[0]
        lse[:, qs] = r[1]
        if dout is not None:
            dq[qs], dk[ks], dv[ks] = r[2]
    if dout is None:
        return out, lse
    return out, lse, (dq, dk, dv)
