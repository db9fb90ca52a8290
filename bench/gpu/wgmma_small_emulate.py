#!/usr/bin/env python3
"""Host emulation of flash_fwd_wgmma_small_kernel (src/attention/cuda/flash_fwd_wgmma_small.cuh,
D = 16 and 32) at the level of threads, registers, swizzled shared memory and wgmma descriptors,
against a float64 reference: the sibling of wgmma_emulate.py (D = 64 / 128), with the 64-byte
and 32-byte swizzles, the ones tile of the row sums and the lazy rescaling. It mirrors the kernel
by hand (keep the two in step), in float64 without bf16 rounding, so every case must match to
~1e-12; it also checks that every P fed to P V is <= 2^8 (finite in fp16) and counts the lazy
decisions (rows whose max moved, rows that kept a stale max) so both branches are exercised.

Usage: python3 bench/gpu/wgmma_small_emulate.py   (prints one line per case, then ALL OK)

Hardware model, written from the PTX ISA's matrix-descriptor section and CUTLASS's canonical GMMA
layouts (cute GmmaDescriptor, Layout_{K,MN}_{INTER,SW32,SW64,SW128}_Atom), independently of the
kernel's swz_offset:
  layout type (descriptor bits 62-63): 0 interleave, 1 = 128-byte, 2 = 64-byte, 3 = 32-byte
  swizzle of width W = 16 * 2^B bytes (B = 3, 2, 1; Swizzle<B,4,3> on byte addresses):
      a -> a ^ (((a >> 7) & (2^B - 1)) << 4)
  K-major, swizzled, rows x 16 k:  (r, k) at start + (r % 8) W + (r // 8) SBO + 2 k   (LBO unused)
  K-major, interleave:             (r, k) at start + (r % 8) 16 + (r // 8) SBO + 2 (k % 8)
                                                   + (k // 8) LBO
  MN-major, swizzled, 16 k x n:    (k, n) at start + 2 (n % (W / 2)) + (n // (W / 2)) LBO
                                                   + (k % 8) W + (k // 8) SBO
  accumulators and A registers: as wgmma_emulate.py (the mma.m16n8 fragments per warp).
Modes as in wgmma_emulate.py: reads_at_wait=True applies cp.async writes at issue and wgmma reads
at the wait; False applies cp.async writes at the wait and wgmma reads at issue.
"""
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wgmma_emulate import (INF, Smem, key_visible, reference, unmasked,  # noqa: E402
                           visible_key_blocks)

WIDTH = {1: 128, 2: 64, 3: 32}


def swz(a, mode):
    if mode == 0:
        return a
    b = {1: 3, 2: 2, 3: 1}[mode]
    return a ^ (((a >> 7) & ((1 << b) - 1)) << 4)


def desc(addr, lbo, sbo, mode):
    return (((addr >> 4) & 0x3FFF) | (((lbo >> 4) & 0x3FFF) << 16)
            | (((sbo >> 4) & 0x3FFF) << 32) | (mode << 62))


def decode(d):
    assert ((d >> 49) & 7) == 0, "base offset 0"
    return (d & 0x3FFF) << 4, ((d >> 16) & 0x3FFF) << 4, ((d >> 32) & 0x3FFF) << 4, d >> 62


def read_kmajor(sm, d, rows):
    start, lbo, sbo, mode = decode(d)
    out = np.zeros((rows, 16))
    for r in range(rows):
        for k in range(16):
            if mode == 0:
                a = start + (r % 8) * 16 + (r // 8) * sbo + 2 * (k % 8) + (k // 8) * lbo
            else:
                a = start + (r % 8) * WIDTH[mode] + (r // 8) * sbo + 2 * k
            out[r, k] = sm.v[swz(a, mode) // 2]
    return out


def read_mnmajor(sm, d, n):
    start, lbo, sbo, mode = decode(d)
    assert mode != 0
    w = WIDTH[mode]
    out = np.zeros((16, n))
    for k in range(16):
        for c in range(n):
            a = start + 2 * (c % (w // 2)) + (c // (w // 2)) * lbo + (k % 8) * w + (k // 8) * sbo
            out[k, c] = sm.v[swz(a, mode) // 2]
    return out


# ---- the kernel's own index math (mirrors flash_fwd_wgmma_small.cuh) ----
def swz_offset(D, row, chunk):
    row_bytes = 2 * D
    chunks = D // 8
    return row * row_bytes + ((chunk ^ (((row * row_bytes) >> 7) & (chunks - 1))) * 16)


def emulate(Q, K, V, D, BN, WG, double_p, m_block, left, right, scale, reads_at_wait, stats,
            raw_addr=0x410):
    nq, nk = Q.shape[0], K.shape[0]
    BM = 64 * WG
    T = 128 * WG
    row_bytes = 2 * D
    kQB = BM * row_bytes
    kKVB = BN * row_bytes
    kOnes = 512
    mode = 2 if D == 32 else 3
    group = 8 * row_bytes
    kVStages = 3 if double_p else 2
    sm = Smem(raw_addr + kQB + (2 + kVStages) * kKVB + kOnes + 1024 + 4096)
    sQ = (raw_addr + 1023) & ~1023
    sK = sQ + kQB
    sV = sK + 2 * kKVB
    sOnes = sV + kVStages * kKVB
    assert sOnes + kOnes <= raw_addr + kQB + (2 + kVStages) * kKVB + kOnes + 1024
    assert kQB % 1024 == 0 and kKVB % 1024 == 0
    scale_log2 = scale * 1.4426950408889634
    m0 = m_block * BM
    if m0 >= nq:
        return None
    diag = nk - nq
    lo, hi = m0, min(nq, m0 + BM) - 1
    b, e = visible_key_blocks(lo, hi, nk, diag, left, right, BN)
    nblocks = e - b
    nb_last = e - 1
    pending_copies = []

    def cp_async(addr, vals):
        if reads_at_wait:
            sm.write_chunk(addr, vals)
        else:
            pending_copies.append((addr, vals))

    def cp_wait_all():
        for a, v in pending_copies:
            sm.write_chunk(a, v)
        pending_copies.clear()

    def load_tile(dst, src, rows, row0, valid_rows):  # SwzTileLoader
        chunks = D // 8
        step = T // chunks
        assert step % 8 == 0
        iters = (rows + step - 1) // step
        for tid in range(T):
            r0, c = tid // chunks, tid % chunks
            dst_off = swz_offset(D, r0, c)
            for i in range(iters):
                r = r0 + i * step
                if rows % step == 0 or r < rows:
                    row = row0 + r
                    valid = row < valid_rows
                    vals = src[row, c * 8: c * 8 + 8] if valid else np.zeros(8)
                    to = dst + dst_off + i * step * 2 * D
                    assert to == dst + swz_offset(D, r, c)
                    cp_async(to, vals)

    s = np.zeros((T, BN // 2))
    o = np.zeros((T, D // 2))
    osum = np.zeros((T, 4))
    pas = [np.zeros((T, BN // 16, 4, 2)), np.zeros((T, BN // 16, 4, 2))]  # pa0, pa1
    row_max = np.full((T, 2), -INF)
    tids = np.arange(T)
    wg_of = tids // 128
    w_of = (tids % 128) // 32
    g_of = (tids % 32) // 4
    q_of = tids % 4
    local_row0 = wg_of * 64 + w_of * 16 + g_of
    qrow = np.stack([m0 + local_row0, m0 + local_row0 + 8], 1)

    q_desc = [desc(sQ + wg * 64 * row_bytes, 16, group, mode) for wg in range(WG)]
    ones_desc = desc(sOnes, 128, 256, 0)

    def to_acc(acc, tid, ncols):
        w, g, q = w_of[tid], g_of[tid], q_of[tid]
        vals = np.zeros(ncols // 2)
        for j in range(ncols // 8):
            for e4 in range(4):
                vals[4 * j + e4] = acc[16 * w + g + 8 * (e4 // 2), 8 * j + 2 * q + e4 % 2]
        return vals

    def gemm_s(stage):
        k_desc = desc(sK + stage * kKVB, 16, group, mode)
        ops = []
        for wg in range(WG):
            def op(wg=wg):
                acc = np.zeros((64, BN))
                for kk in range(D // 16):
                    A = read_kmajor(sm, q_desc[wg] + ((kk * 32) >> 4), 64)
                    B = read_kmajor(sm, k_desc + ((kk * 32) >> 4), BN)
                    assert not np.isnan(A).any() and not np.isnan(B).any(), "unwritten Q / K"
                    acc += A @ B.T
                for tid in range(wg * 128, wg * 128 + 128):
                    s[tid] = to_acc(acc, tid, BN)
            ops.append(op)
        return ops

    def gemm_pv(stage, buf):
        v_desc = desc(sV + stage * kKVB, BN * row_bytes, group, mode)
        at_issue = pas[buf].copy()
        assert at_issue.max() <= 256.0 * (1 + 1e-12), "P beyond 2^8 (fp16 safety)"
        ops = []
        for wg in range(WG):
            def op(wg=wg):
                # the A registers as they are when the wgmma reads them: at the wait in the
                # reads_at_wait mode (catches P packed into a buffer still being read)
                pa_snapshot = pas[buf]
                if reads_at_wait:
                    assert np.array_equal(pa_snapshot, at_issue), "P registers overwritten in flight"
                acc = np.zeros((64, D))
                acc_sum = np.zeros((64, 8))
                for kk in range(BN // 16):
                    A = np.zeros((64, 16))
                    for tid in range(wg * 128, wg * 128 + 128):
                        w, g, q = w_of[tid], g_of[tid], q_of[tid]
                        r0 = 16 * w + g
                        regs = pa_snapshot[tid, kk]
                        A[r0, 2 * q: 2 * q + 2] = regs[0]
                        A[r0 + 8, 2 * q: 2 * q + 2] = regs[1]
                        A[r0, 8 + 2 * q: 10 + 2 * q] = regs[2]
                        A[r0 + 8, 8 + 2 * q: 10 + 2 * q] = regs[3]
                    B = read_mnmajor(sm, v_desc + ((kk * 16 * row_bytes) >> 4), D)
                    assert not np.isnan(B).any(), "unwritten V"
                    acc += A @ B
                    ones = read_kmajor(sm, ones_desc, 8)  # B K-major: N rows x 16 k
                    assert np.all(ones == 1.0), "the ones tile"
                    acc_sum += A @ ones.T
                for tid in range(wg * 128, wg * 128 + 128):
                    o[tid] += to_acc(acc, tid, D)
                    osum[tid] += to_acc(acc_sum, tid, 8)
            ops.append(op)
        return ops

    groups = []  # committed wgmma groups not yet completed (reads_at_wait: not yet run)

    def commit(ops):
        if reads_at_wait:
            groups.append(ops)
        else:
            for op in ops:
                op()
            groups.append([])

    def wait_group(n):  # wgmma.wait_group n: groups complete in commit order
        while len(groups) > n:
            for op in groups.pop(0):
                op()

    def softmax(nb):
        n0 = nb * BN
        corr = np.ones((T, 2))
        if not unmasked(n0, BN, lo, hi, nk, diag, left, right):
            for tid in range(T):
                t = q_of[tid]
                for r in range(2):  # the kernel's per-row range [lo_c, hi_c) of visible c
                    qd = qrow[tid, r] + diag
                    lo_c = (qd - left if left >= 0 else 0) - n0 - 2 * t
                    hi_c = min(nk, qd + right + 1 if right >= 0 else nk) - n0 - 2 * t
                    for j in range(BN // 8):
                        for e in range(2):
                            c = 8 * j + e
                            vis = key_visible(n0 + 2 * t + c, qrow[tid, r], nk, diag, left, right)
                            assert vis == (lo_c <= c < hi_c), "mask range"
                            if not lo_c <= c < hi_c:
                                s[tid, 4 * j + 2 * r + e] = -INF
        for r in range(2):
            cols = [4 * j + 2 * r + e for j in range(BN // 8) for e in range(2)]
            mx = np.max(s[:, cols], axis=1)
            mx = mx.reshape(-1, 4).max(1).repeat(4)  # quad shuffles
            with np.errstate(invalid="ignore"):
                grow = (mx - row_max[:, r]) * scale_log2 > 8.0
                corr[:, r] = np.where(grow, np.exp2((row_max[:, r] - mx) * scale_log2), 1.0)
            stats["moved"] += int(grow[q_of == 0].sum())
            visible = mx > -INF
            stats["stale"] += int((~grow & visible & (row_max[:, r] > -INF)
                                   & (mx > row_max[:, r]))[q_of == 0].sum())
            row_max[:, r] = np.where(grow, mx, row_max[:, r])
            offset = np.where(row_max[:, r] == -INF, 0.0, row_max[:, r] * scale_log2)
            for j in range(BN // 8):
                for e in range(2):
                    idx = 4 * j + 2 * r + e
                    s[:, idx] = np.exp2(s[:, idx] * scale_log2 - offset)
        return corr

    def rescale_o(corr):  # O and the sums times corr, after every P V completed
        wait_group(0)
        for j in range(D // 8):
            for e4 in range(4):
                o[:, 4 * j + e4] *= corr[:, e4 // 2]
        for e4 in range(4):
            osum[:, e4] *= corr[:, e4 // 2]
        corr[:] = 1.0

    def pack(buf):
        for kk in range(BN // 16):
            for i in range(4):
                pas[buf][:, kk, i, 0] = s[:, 8 * kk + 2 * i]
                pas[buf][:, kk, i, 1] = s[:, 8 * kk + 2 * i + 1]

    class Cursor:  # SwzTileLoader: tiles from row row0 downwards, one tile per load_next
        def __init__(self, src, rows, row0):
            self.src, self.rows, self.row = src, rows, row0

        def load_next(self, dst, valid_rows):
            load_tile(dst, self.src, self.rows, self.row, valid_rows)
            self.row -= self.rows

    k_loader = Cursor(K, BN, nb_last * BN)
    v_loader = Cursor(V, BN, nb_last * BN)
    if nblocks > 0:
        for tid in range(kOnes // 4):  # st.shared, visible after the first barrier
            sm.v[(sOnes + 4 * tid) // 2: (sOnes + 4 * tid) // 2 + 2] = 1.0
        Cursor(Q, BM, m0).load_next(sQ, nq)
        k_loader.load_next(sK, nk)
        group0 = list(pending_copies)
        pending_copies.clear()
        if nblocks > 1:
            k_loader.load_next(sK + kKVB, nk)
        v_loader.load_next(sV, nk)
        for a, v in group0:
            sm.write_chunk(a, v)
        commit(gemm_s(0))
        wait_group(0)
        corr = softmax(nb_last)
        pack(0)
        corr[:] = 1.0  # O and the sums are still zero
        v_stage = 1
        for i in range(1, nblocks):  # step(i, ...)
            nb = nb_last - i
            stage = i & 1
            v_prev = kVStages - 1 if v_stage == 0 else v_stage - 1
            buf_cur, buf_prev = ((i & 1), ((i - 1) & 1)) if double_p else (0, 0)
            cp_wait_all()  # the barrier
            if double_p and np.any(corr != 1.0):  # __syncthreads_or over the CTA
                rescale_o(corr)
            commit(gemm_s(stage))
            commit(gemm_pv(v_prev, buf_prev))
            if i + 1 < nblocks:
                assert k_loader.row == (nb - 1) * BN
                k_loader.load_next(sK + (stage ^ 1) * kKVB, nk)
            assert v_loader.row == nb * BN
            v_loader.load_next(sV + v_stage * kKVB, nk)
            wait_group(1)
            corr = softmax(nb)
            if not double_p:
                wait_group(0)
                rescale_o(corr)  # the kernel skips warps whose corr are all 1 (a no-op)
            pack(buf_cur)
            v_stage = 0 if v_stage == kVStages - 1 else v_stage + 1
        cp_wait_all()
        if double_p and np.any(corr != 1.0):
            rescale_o(corr)
        v_last = kVStages - 1 if v_stage == 0 else v_stage - 1
        commit(gemm_pv(v_last, ((nblocks - 1) & 1) if double_p else 0))
        wait_group(0)

    out = np.full((nq, D), np.nan)
    lse = np.full(nq, np.nan)
    osm = np.full(BM * D, np.nan)
    for tid in range(T):
        for r in range(2):
            ssum = osum[tid, 2 * r]
            assert np.all(osum[tid, 2 * r: 2 * r + 2] == ssum)  # every column the row's sum
            anyv = ssum > 0
            inv = 1.0 / ssum if anyv else 0.0
            lr = local_row0[tid] + 8 * r
            for j in range(D // 8):
                off = swz_offset(D, lr, j) + 4 * q_of[tid]
                osm[off // 2] = o[tid, 4 * j + 2 * r] * inv
                osm[off // 2 + 1] = o[tid, 4 * j + 2 * r + 1] * inv
            if q_of[tid] == 0 and qrow[tid, r] < nq:
                lse[qrow[tid, r]] = ((row_max[tid, r] * scale_log2 + math.log2(ssum)) * math.log(2)
                                     if anyv else -INF)
    kdt = D // 8
    assert BM * kdt % T == 0
    for k in range(BM * kdt // T):
        for tid in range(T):
            idx = tid + k * T
            i, c = idx // kdt, idx % kdt
            m = m0 + i
            if m >= nq:
                continue
            off = swz_offset(D, i, c)
            out[m, c * 8: c * 8 + 8] = osm[off // 2: off // 2 + 8]
    return out, lse


def check(nq, nk, D, BN, WG, double_p, left, right, seed, reads_at_wait, gain=1.0):
    rng = np.random.default_rng(seed)
    Q = rng.standard_normal((nq, D)) * gain
    K = rng.standard_normal((nk, D))
    V = rng.standard_normal((nk, D))
    scale = 1 / math.sqrt(D)
    ref_o, ref_l = reference(Q, K, V, left, right, scale)
    BM = 64 * WG
    out = np.full((nq, D), np.nan)
    lse = np.full(nq, np.nan)
    stats = {"moved": 0, "stale": 0}
    for mb in range((nq + BM - 1) // BM):
        o_, l_ = emulate(Q, K, V, D, BN, WG, double_p, mb, left, right, scale, reads_at_wait,
                         stats)
        m0 = mb * BM
        out[m0: m0 + BM] = o_[m0: m0 + BM]
        lse[m0: m0 + BM] = l_[m0: m0 + BM]
    assert not np.isnan(out).any(), "unwritten output"
    err = np.abs(out - ref_o).max()
    with np.errstate(invalid="ignore"):
        both_minus_inf = np.isinf(ref_l) & np.isinf(lse) & (lse < 0)
        lse_ok = np.all(both_minus_inf | (np.abs(lse - ref_l) < 1e-9))
    print(f"nq={nq} nk={nk} D={D} BN={BN} WG={WG} double_p={double_p} window=({left},{right}) "
          f"gain={gain} "
          f"reads_at_wait={reads_at_wait}: max|O-ref|={err:.2e} lse_ok={lse_ok} "
          f"rows moved={stats['moved']} kept stale max={stats['stale']}", flush=True)
    assert err < 1e-9 and lse_ok
    return stats


if __name__ == "__main__":
    cases = [  # (nq, nk, D, left, right, gain)
        (300, 337, 32, -1, -1, 1.0),
        (300, 300, 16, -1, 0, 3.0),
        (200, 450, 32, 37, 5, 6.0),
        (300, 100, 16, -1, 0, 1.0),
        (100, 300, 32, 20, 0, 3.0),
        (129, 1, 16, -1, 0, 1.0),
        (129, 1, 32, -1, 0, 6.0),
        (260, 700, 32, 100, 0, 6.0),
        (130, 500, 16, -1, 3, 6.0),
        (200, 900, 16, -1, -1, 6.0),
        (200, 900, 32, -1, -1, 6.0),
    ]
    totals = {"moved": 0, "stale": 0}
    for i, (nq, nk, D, l, r, gain) in enumerate(cases):
        for wg, double_p in ((3, False), (2, True)):  # SQA_CUDA_FWD=wgmma, wgmma2
            for mode in (True, False):
                st = check(nq, nk, D, 128, wg, double_p, l, r, seed=i, reads_at_wait=mode,
                           gain=gain)
                for k in totals:
                    totals[k] += st[k]
    assert totals["moved"] > 0 and totals["stale"] > 0, "both lazy branches exercised"
    print(f"lazy decisions over all cases: {totals}")
    print("ALL OK")
