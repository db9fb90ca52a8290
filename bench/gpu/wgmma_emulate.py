#!/usr/bin/env python3
"""Host emulation of flash_fwd_wgmma_kernel (src/attention/cuda/flash_fwd_wgmma.cuh) at the level
of threads, registers, swizzled shared memory and wgmma descriptors, against a float64
reference: a check of the kernel's index math, descriptors, fragment hand-over and buffer
pipeline that needs no GPU. It mirrors the kernel by hand (keep the two in step), in float64
without bf16 rounding, so every case must match to ~1e-14.

Usage: python3 bench/gpu/wgmma_emulate.py [wgmma] [wgmmapp] [tma] [tma-mutations] [tma3]
[tma3-mutations]   (wgmma and wgmmapp by default; prints one line per case, then ALL OK).
wgmmapp: the ping-pong schedule (emulate_pingpong), the two warpgroups as separate programs
interleaved by several policies, with PTX named-barrier semantics. tma / tma3: the TMA producer
form with two (wgmmatma) or three (wgmmatma3, round robin of turns) consumer warpgroups
(emulate_tma); -mutations: its failure modes, each of which must be caught.

Hardware model (PTX ISA / CUTLASS canonical GMMA layouts, 128-byte swizzle):
  swizzle: byte address a -> a ^ (((a >> 7) & 7) << 4)   (Swizzle<3,4,3>)
  K-major operand, rows x 16 k: element (r, k) at start + (r % 8) * 128 + (r // 8) * SBO + 2 k
  MN-major operand, 16 k x n:   element (k, n) at start + (k % 8) * 128 + (k // 8) * SBO
                                                 + 2 (n % 64) + (n // 64) * LBO
  accumulator m64nN: thread (w, g, q) d[4j + e] = D[16 w + g + 8 (e // 2), 8 j + 2 q + e % 2]
  A registers m64k16: a0 = (g, 2q..), a1 = (g + 8, 2q..), a2 = (g, 8 + 2q..), a3 = (g + 8, 8 + 2q..)
Modes: reads_at_wait=True applies cp.async writes at issue and wgmma reads at the wait (catches
a buffer overwritten while a wgmma may still read it); False applies cp.async writes at the
cp.async wait and wgmma reads at issue (catches a read before the data landed).
"""
import math
import sys

import numpy as np

INF = float("inf")


def swz(a):
    return a ^ (((a >> 7) & 7) << 4)


def desc(addr, lbo, sbo):
    return (((addr >> 4) & 0x3FFF) | (((lbo >> 4) & 0x3FFF) << 16)
            | (((sbo >> 4) & 0x3FFF) << 32) | (1 << 62))


def decode(d):
    assert (d >> 62) == 1, "128-byte swizzle"
    assert ((d >> 49) & 7) == 0
    return (d & 0x3FFF) << 4, ((d >> 16) & 0x3FFF) << 4, ((d >> 32) & 0x3FFF) << 4


def sw128_offset(rows, row, chunk):
    return (chunk // 8) * rows * 128 + row * 128 + (((chunk % 8) ^ (row % 8)) * 16)


class Smem:
    def __init__(self, size):
        self.v = np.full(size // 2, np.nan)

    def write_chunk(self, addr, vals):
        assert addr % 16 == 0
        self.v[addr // 2: addr // 2 + 8] = vals


def read_kmajor(sm, d, rows):
    start, lbo, sbo = decode(d)
    out = np.zeros((rows, 16))
    for r in range(rows):
        for k in range(16):
            a = start + (r % 8) * 128 + (r // 8) * sbo + 2 * k
            out[r, k] = sm.v[swz(a) // 2]
    return out


def read_mnmajor(sm, d, n):
    start, lbo, sbo = decode(d)
    out = np.zeros((16, n))
    for k in range(16):
        for c in range(n):
            a = start + (k % 8) * 128 + (k // 8) * sbo + 2 * (c % 64) + (c // 64) * lbo
            out[k, c] = sm.v[swz(a) // 2]
    return out


def key_visible(key, qrow, nk, diag, left, right):
    qd = qrow + diag
    return key < nk and (left < 0 or key >= qd - left) and (right < 0 or key <= qd + right)


def visible_key_blocks(lo, hi, nk, diag, left, right, bn):
    kb, ke = 0, nk
    if left >= 0:
        kb = max(0, lo + diag - left)
    if right >= 0:
        ke = min(nk, hi + diag + right + 1)
    b = kb // bn
    e = (ke + bn - 1) // bn if ke > kb else b
    return b, e


def unmasked(n0, bn, lo, hi, nk, diag, left, right):
    return (n0 + bn <= nk and (left < 0 or n0 >= hi + diag - left)
            and (right < 0 or n0 + bn - 1 <= lo + diag + right))


def emulate(Q, K, V, D, BN, WG, m_block, left, right, scale, reads_at_wait, raw_addr=0x410):
    nq, nk = Q.shape[0], K.shape[0]
    BM = 64 * WG
    T = 128 * WG
    kQB = BM * D * 2
    kKVB = BN * D * 2
    smem_size = raw_addr + kQB + 4 * kKVB + 1024 + 64
    sm = Smem(smem_size + 4096)
    sQ = (raw_addr + 1023) & ~1023
    assert sQ + kQB + 4 * kKVB <= raw_addr + kQB + 4 * kKVB + 1024
    sK = sQ + kQB
    sV = sK + 2 * kKVB
    scale_log2 = scale * 1.4426950408889634
    m0 = m_block * BM
    if m0 >= nq:
        return None
    diag = nk - nq
    lo, hi = m0, min(nq, m0 + BM) - 1
    b, e = visible_key_blocks(lo, hi, nk, diag, left, right, BN)
    nblocks = e - b
    nb_last = e - 1
    pending_copies = []  # (addr, values)

    def cp_async(addr, vals):
        if reads_at_wait:
            sm.write_chunk(addr, vals)
        else:
            pending_copies.append((addr, vals))

    def cp_wait_all():
        for a, v in pending_copies:
            sm.write_chunk(a, v)
        pending_copies.clear()

    def load_tile(dst, src, rows, row0, valid_rows):
        kchunks = D // 8
        step = T // kchunks
        assert step % 8 == 0 and rows % step == 0
        for tid in range(T):
            r, c = tid // kchunks, tid % kchunks
            to = dst + sw128_offset(rows, r, c)
            for i in range(rows // step):
                row = row0 + r + i * step
                valid = row < valid_rows
                vals = src[row, c * 8: c * 8 + 8] if valid else np.zeros(8)
                # the code advances `to` by i * step * 128: check it equals the true offset
                assert to + i * step * 128 == dst + sw128_offset(rows, r + i * step, c)
                cp_async(to + i * step * 128, vals)

    # thread state
    s = np.zeros((T, BN // 2))
    o = np.zeros((T, D // 2))
    pa = np.zeros((T, BN // 16, 4, 2))
    row_max = np.full((T, 2), -INF)
    row_sum = np.zeros((T, 2))
    tids = np.arange(T)
    wg_of = tids // 128
    w_of = (tids % 128) // 32
    g_of = (tids % 32) // 4
    q_of = tids % 4
    local_row0 = wg_of * 64 + w_of * 16 + g_of
    qrow = np.stack([m0 + local_row0, m0 + local_row0 + 8], 1)

    q_desc = [desc(sQ + wg * 64 * 128, 16, 1024) for wg in range(WG)]

    def gemm_s(stage):
        """Returns a closure that performs the reads + math (for a given warpgroup)."""
        k_desc = desc(sK + stage * kKVB, 16, 1024)
        ops = []
        for wg in range(WG):
            def op(wg=wg):
                acc = np.zeros((64, BN))
                for kk in range(D // 16):
                    qo = (kk // 4) * BM * 128 + (kk % 4) * 32
                    ko = (kk // 4) * BN * 128 + (kk % 4) * 32
                    A = read_kmajor(sm, q_desc[wg] + (qo >> 4), 64)
                    B = read_kmajor(sm, k_desc + (ko >> 4), BN)
                    acc += A @ B.T
                for tid in range(wg * 128, wg * 128 + 128):
                    w, g, q = w_of[tid], g_of[tid], q_of[tid]
                    for j in range(BN // 8):
                        for e4 in range(4):
                            row, col = 16 * w + g + 8 * (e4 // 2), 8 * j + 2 * q + e4 % 2
                            s[tid, 4 * j + e4] = acc[row, col]
            ops.append(op)
        return ops

    def gemm_pv(stage):
        v_desc = desc(sV + stage * kKVB, BN * 128, 1024)
        pa_snapshot = pa.copy()  # registers as at issue (the fences keep them until the wait)
        ops = []
        for wg in range(WG):
            def op(wg=wg):
                acc = np.zeros((64, D))
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
                    B = read_mnmajor(sm, v_desc + ((kk * 16 * 128) >> 4), D)
                    acc += A @ B
                for tid in range(wg * 128, wg * 128 + 128):
                    w, g, q = w_of[tid], g_of[tid], q_of[tid]
                    for j in range(D // 8):
                        for e4 in range(4):
                            row, col = 16 * w + g + 8 * (e4 // 2), 8 * j + 2 * q + e4 % 2
                            o[tid, 4 * j + e4] += acc[row, col]
            ops.append(op)
        return ops

    def run_now_or_later(ops, later):
        if reads_at_wait:
            later.extend(ops)
        else:
            for op in ops:
                op()

    def softmax(nb):
        n0 = nb * BN
        corr = np.zeros((T, 2))
        if not unmasked(n0, BN, lo, hi, nk, diag, left, right):
            for tid in range(T):
                for j in range(BN // 8):
                    for e4 in range(4):
                        col = n0 + j * 8 + 2 * q_of[tid] + (e4 & 1)
                        if not key_visible(col, qrow[tid, e4 // 2], nk, diag, left, right):
                            s[tid, 4 * j + e4] = -INF
        for r in range(2):
            cols = [4 * j + 2 * r + e for j in range(BN // 8) for e in range(2)]
            part = np.max(s[:, cols], axis=1)
            mx = np.maximum(row_max[:, r], part)
            mx = mx.reshape(-1, 4).max(1).repeat(4)  # quad shuffles
            m_use = np.where(mx == -INF, 0.0, mx)
            offset = m_use * scale_log2
            with np.errstate(invalid="ignore"):
                corr[:, r] = np.exp2(row_max[:, r] * scale_log2 - offset)
            row_max[:, r] = mx
            for j in range(BN // 8):
                for e in range(2):
                    idx = 4 * j + 2 * r + e
                    s[:, idx] = np.exp2(s[:, idx] * scale_log2 - offset)
            part = sum(s[:, 4 * j + 2 * r] + s[:, 4 * j + 2 * r + 1] for j in range(BN // 8))
            row_sum[:, r] = row_sum[:, r] * corr[:, r] + part
        return corr

    def rescale_pack(corr):
        for j in range(D // 8):
            for e4 in range(4):
                o[:, 4 * j + e4] *= corr[:, e4 // 2]
        for kk in range(BN // 16):
            for i in range(4):
                pa[:, kk, i, 0] = s[:, 8 * kk + 2 * i]
                pa[:, kk, i, 1] = s[:, 8 * kk + 2 * i + 1]

    def barrier():
        cp_wait_all()

    if nblocks > 0:
        load_tile(sQ, Q, BM, m0, nq)
        load_tile(sK + 0 * kKVB, K, BN, nb_last * BN, nk)
        group0 = list(pending_copies); pending_copies.clear()
        if nblocks > 1:
            load_tile(sK + 1 * kKVB, K, BN, (nb_last - 1) * BN, nk)
        load_tile(sV + 0 * kKVB, V, BN, nb_last * BN, nk)
        for a, v in group0:  # wait_group 1: only the first group is known to have landed
            sm.write_chunk(a, v)
        later = []
        run_now_or_later(gemm_s(0), later)
        for op in later:
            op()
        corr = softmax(nb_last)
        rescale_pack(corr)
        for i in range(1, nblocks):
            nb = nb_last - i
            stage = i & 1
            barrier()
            later_s, later_pv = [], []
            run_now_or_later(gemm_s(stage), later_s)
            run_now_or_later(gemm_pv(stage ^ 1), later_pv)
            if i + 1 < nblocks:
                load_tile(sK + (stage ^ 1) * kKVB, K, BN, (nb - 1) * BN, nk)
            load_tile(sV + stage * kKVB, V, BN, nb * BN, nk)
            for op in later_s:  # wait<1>
                op()
            corr = softmax(nb)
            for op in later_pv:  # wait<0>
                op()
            rescale_pack(corr)
        barrier()
        later = []
        run_now_or_later(gemm_pv((nblocks - 1) & 1), later)
        for op in later:
            op()

    # epilogue
    out = np.full((nq, D), np.nan)
    lse = np.full(nq, np.nan)
    tot = row_sum.copy()
    for r in range(2):
        tot[:, r] = tot[:, r].reshape(-1, 4).sum(1).repeat(4)
    osm = np.full(BM * D, np.nan)  # the Q region, element-addressed (offset / 2)
    for tid in range(T):
        for r in range(2):
            ssum = tot[tid, r]
            anyv = ssum > 0
            inv = 1.0 / ssum if anyv else 0.0
            lr = local_row0[tid] + 8 * r
            for j in range(D // 8):
                off = sw128_offset(BM, lr, j) + 4 * q_of[tid]
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
            off = sw128_offset(BM, i, c)
            out[m, c * 8: c * 8 + 8] = osm[off // 2: off // 2 + 8]
    return out, lse


class PingPongConsumers:
    """The MMA warpgroups' registers and wgmma work of the ping-pong key loop (WG = 2, or 3 for
    wgmmatma3's round robin), shared by emulate_pingpong (wgmmapp: cp.async loads) and
    emulate_tma (wgmmatma / wgmmatma3: a TMA producer): S, O,
    the packed P, the running max and sum per thread; the S and P V wgmmas from the swizzled
    tiles at sQ / sK / sV (descriptors as the kernel builds them); wgmma groups per warpgroup
    (reads_at_wait: a group's shared-memory and A-register reads run at the wait that completes
    it, else at its issue); the masked online softmax; the epilogue."""

    def __init__(self, sm, nq, nk, D, BN, m0, left, right, scale, reads_at_wait, sQ, sK, sV,
                 WG=2):
        T = 128 * WG
        self.T = T
        self.sm, self.nq, self.nk, self.D, self.BN, self.m0 = sm, nq, nk, D, BN, m0
        self.left, self.right, self.reads_at_wait = left, right, reads_at_wait
        self.sQ, self.sK, self.sV = sQ, sK, sV
        self.BM, self.kKVB = 64 * WG, BN * D * 2
        self.scale_log2 = scale * 1.4426950408889634
        self.diag = nk - nq
        self.lo, self.hi = m0, min(nq, m0 + self.BM) - 1
        self.s = np.zeros((T, BN // 2))
        self.o = np.zeros((T, D // 2))
        self.pa = np.zeros((T, BN // 16, 4, 2))
        self.row_max = np.full((T, 2), -INF)
        self.row_sum = np.zeros((T, 2))
        tids = np.arange(T)
        self.w_of = (tids % 128) // 32
        self.g_of = (tids % 32) // 4
        self.q_of = tids % 4
        local_row0 = (tids // 128) * 64 + self.w_of * 16 + self.g_of
        self.qrow = np.stack([m0 + local_row0, m0 + local_row0 + 8], 1)
        # committed wgmma groups per warpgroup (lists of ops)
        self.mma_groups = [[] for _ in range(WG)]

    def gemm_s(self, wg, stage):
        D, BN, BM, sm = self.D, self.BN, self.BM, self.sm
        k_desc = desc(self.sK + stage * self.kKVB, 16, 1024)
        q_desc = desc(self.sQ + wg * 64 * 128, 16, 1024)

        def op():
            acc = np.zeros((64, BN))
            for kk in range(D // 16):
                qo = (kk // 4) * BM * 128 + (kk % 4) * 32
                ko = (kk // 4) * BN * 128 + (kk % 4) * 32
                A = read_kmajor(sm, q_desc + (qo >> 4), 64)
                B = read_kmajor(sm, k_desc + (ko >> 4), BN)
                acc += A @ B.T
            for tid in range(wg * 128, wg * 128 + 128):
                w, g, q = self.w_of[tid], self.g_of[tid], self.q_of[tid]
                for j in range(BN // 8):
                    for e4 in range(4):
                        self.s[tid, 4 * j + e4] = acc[16 * w + g + 8 * (e4 // 2),
                                                      8 * j + 2 * q + e4 % 2]
        return op

    def gemm_pv(self, wg, stage):
        D, BN, sm = self.D, self.BN, self.sm
        v_desc = desc(self.sV + stage * self.kKVB, BN * 128, 1024)

        def op():
            snap = self.pa  # the A registers, read when the op runs (issue or wait)
            acc = np.zeros((64, D))
            for kk in range(BN // 16):
                A = np.zeros((64, 16))
                for tid in range(wg * 128, wg * 128 + 128):
                    w, g, q = self.w_of[tid], self.g_of[tid], self.q_of[tid]
                    r0 = 16 * w + g
                    regs = snap[tid, kk]
                    A[r0, 2 * q: 2 * q + 2] = regs[0]
                    A[r0 + 8, 2 * q: 2 * q + 2] = regs[1]
                    A[r0, 8 + 2 * q: 10 + 2 * q] = regs[2]
                    A[r0 + 8, 8 + 2 * q: 10 + 2 * q] = regs[3]
                B = read_mnmajor(sm, v_desc + ((kk * 16 * 128) >> 4), D)
                acc += A @ B
            for tid in range(wg * 128, wg * 128 + 128):
                w, g, q = self.w_of[tid], self.g_of[tid], self.q_of[tid]
                for j in range(D // 8):
                    for e4 in range(4):
                        self.o[tid, 4 * j + e4] += acc[16 * w + g + 8 * (e4 // 2),
                                                       8 * j + 2 * q + e4 % 2]
        return op

    def mma_commit(self, wg, op):
        if self.reads_at_wait:
            self.mma_groups[wg].append([op])
        else:
            op()
            self.mma_groups[wg].append([])

    def mma_wait(self, wg, n):  # groups complete in commit order
        while len(self.mma_groups[wg]) > n:
            for op in self.mma_groups[wg].pop(0):
                op()

    def softmax(self, wg, nb):
        s, row_max, row_sum, q_of, qrow = self.s, self.row_max, self.row_sum, self.q_of, self.qrow
        BN, nk, diag, left, right = self.BN, self.nk, self.diag, self.left, self.right
        sl = slice(wg * 128, wg * 128 + 128)
        n0 = nb * BN
        corr = np.zeros((128, 2))
        if not unmasked(n0, BN, self.lo, self.hi, nk, diag, left, right):
            for tid in range(wg * 128, wg * 128 + 128):
                for j in range(BN // 8):
                    for e4 in range(4):
                        col = n0 + j * 8 + 2 * q_of[tid] + (e4 & 1)
                        if not key_visible(col, qrow[tid, e4 // 2], nk, diag, left, right):
                            s[tid, 4 * j + e4] = -INF
        for r in range(2):
            cols = [4 * j + 2 * r + e for j in range(BN // 8) for e in range(2)]
            mx = np.maximum(row_max[sl, r], np.max(s[sl][:, cols], axis=1))
            mx = mx.reshape(-1, 4).max(1).repeat(4)
            offset = np.where(mx == -INF, 0.0, mx) * self.scale_log2
            with np.errstate(invalid="ignore"):
                corr[:, r] = np.exp2(row_max[sl, r] * self.scale_log2 - offset)
            row_max[sl, r] = mx
            for idx in cols:
                s[sl, idx] = np.exp2(s[sl, idx] * self.scale_log2 - offset)
            part = sum(s[sl, 4 * j + 2 * r] + s[sl, 4 * j + 2 * r + 1] for j in range(BN // 8))
            row_sum[sl, r] = row_sum[sl, r] * corr[:, r] + part
        return corr

    def rescale_pack(self, wg, corr):
        sl = slice(wg * 128, wg * 128 + 128)
        for j in range(self.D // 8):
            for e4 in range(4):
                self.o[sl, 4 * j + e4] *= corr[:, e4 // 2]
        for kk in range(self.BN // 16):
            for i in range(4):
                self.pa[sl, kk, i, 0] = self.s[sl, 8 * kk + 2 * i]
                self.pa[sl, kk, i, 1] = self.s[sl, 8 * kk + 2 * i + 1]

    def epilogue(self):
        """O normalised and lse (natural log) per query row of the sequence; rows outside the
        tile stay NaN."""
        nq, D, q_of = self.nq, self.D, self.q_of
        out = np.full((nq, D), np.nan)
        lse = np.full(nq, np.nan)
        tot = self.row_sum.copy()
        for r in range(2):
            tot[:, r] = tot[:, r].reshape(-1, 4).sum(1).repeat(4)
        for tid in range(self.T):
            for r in range(2):
                ssum = tot[tid, r]
                anyv = ssum > 0
                inv = 1.0 / ssum if anyv else 0.0
                row = self.qrow[tid, r]
                if row < nq:
                    for j in range(D // 8):
                        out[row, 8 * j + 2 * q_of[tid]] = self.o[tid, 4 * j + 2 * r] * inv
                        out[row, 8 * j + 2 * q_of[tid] + 1] = self.o[tid, 4 * j + 2 * r + 1] * inv
                    if q_of[tid] == 0:
                        lse[row] = ((self.row_max[tid, r] * self.scale_log2 + math.log2(ssum))
                                    * math.log(2) if anyv else -INF)
        return out, lse


def emulate_pingpong(Q, K, V, D, BN, m_block, left, right, scale, reads_at_wait, policy,
                     raw_addr=0x410):
    """SQA_CUDA_FWD=wgmmapp (kSched = kWgmmaSchedPingPong). The two warpgroups run as separate
    programs (generators) that yield at every barrier and between their steps; a scheduler
    interleaves them by `policy` ("wg0" / "wg1": run that warpgroup while it can, else the other;
    "rand<seed>": a random runnable one at every yield), with named barriers as in PTX: bar.sync
    counts 128 and blocks until 256 arrived, bar.arrive counts 128. Copies and wgmma groups are
    per warpgroup; timing modes as emulate()'s (reads_at_wait: copies land at issue, wgmma reads
    at the wait; otherwise copies land at the cp.async wait, wgmma reads at issue). In
    reads_at_wait mode P V also reads its A registers (the packed P) at the wait, so a pack into
    registers that an unfinished P V still reads shows up as a wrong result."""
    import random
    WG = 2
    nq, nk = Q.shape[0], K.shape[0]
    BM = 64 * WG
    T = 128 * WG
    kQB = BM * D * 2
    kKVB = BN * D * 2
    kKStages = 3
    kVStages = 3
    smem_size = raw_addr + kQB + (kKStages + kVStages) * kKVB + 1024 + 64
    assert kQB + (kKStages + kVStages) * kKVB + 1024 <= 227 * 1024
    sm = Smem(smem_size + 4096)
    sQ = (raw_addr + 1023) & ~1023
    sK = sQ + kQB
    sV = sK + kKStages * kKVB
    m0 = m_block * BM
    if m0 >= nq:
        return None
    diag = nk - nq
    lo, hi = m0, min(nq, m0 + BM) - 1
    b, e = visible_key_blocks(lo, hi, nk, diag, left, right, BN)
    nblocks = e - b
    nb_last = e - 1
    C = PingPongConsumers(sm, nq, nk, D, BN, m0, left, right, scale, reads_at_wait, sQ, sK, sV)
    gemm_s, gemm_pv, mma_commit, mma_wait = C.gemm_s, C.gemm_pv, C.mma_commit, C.mma_wait
    softmax, rescale_pack, mma_groups = C.softmax, C.rescale_pack, C.mma_groups

    # per-warpgroup asynchronous state
    cp_groups = [[[]] for _ in range(WG)]  # committed groups + the open one (last)

    def load_tile(wg, dst, src, rows, row0, valid_rows):
        kchunks = D // 8
        step = T // kchunks
        assert step % 8 == 0 and rows % step == 0
        for tid in range(wg * 128, wg * 128 + 128):
            r, c = tid // kchunks, tid % kchunks
            for i in range(rows // step):
                row = row0 + r + i * step
                vals = src[row, c * 8: c * 8 + 8] if row < valid_rows else np.zeros(8)
                addr = dst + sw128_offset(rows, r + i * step, c)
                if reads_at_wait:
                    sm.write_chunk(addr, vals)
                else:
                    cp_groups[wg][-1].append((addr, vals))

    def cp_commit(wg):
        cp_groups[wg].append([])

    def cp_wait(wg, n):  # all but the n most recent committed groups landed
        committed = cp_groups[wg][:-1]
        for grp in committed[:len(committed) - n]:
            for a, v in grp:
                sm.write_chunk(a, v)
            grp.clear()

    def load_k(wg, stage, nb):
        load_tile(wg, sK + stage * kKVB, K, BN, nb * BN, nk)

    def load_v(wg, stage, nb):
        load_tile(wg, sV + stage * kKVB, V, BN, nb * BN, nk)

    kBarWg0 = 1

    def program(wg):  # mirrors the kernel's ping-pong branch, for warpgroup wg
        bar_mine, bar_other = kBarWg0 + wg, kBarWg0 + 1 - wg
        ahead = 1 + wg

        def copy_ahead(i):
            jk, jv = i + ahead, i + ahead - 1
            if jk < nblocks:
                load_k(wg, jk % 3, nb_last - jk)
            if jv < nblocks:
                load_v(wg, jv % 3, nb_last - jv)
            cp_commit(wg)

        # Q over all threads: this warpgroup's threads' chunks
        load_tile(wg, sQ, Q, BM, m0, nq)
        load_k(wg, 0, nb_last)
        cp_commit(wg)
        if nblocks > 1:
            load_k(wg, 1, nb_last - 1)
        load_v(wg, 0, nb_last)
        cp_commit(wg)
        if wg == 1:
            copy_ahead(0)
            cp_wait(wg, 2)
        else:
            cp_wait(wg, 1)
        yield ("sync", 0, 256)
        mma_commit(wg, gemm_s(wg, 0))
        mma_wait(wg, 0)
        rescale_pack(wg, softmax(wg, nb_last))
        if wg == 1:
            cp_wait(wg, 1)
            yield ("arrive", kBarWg0, 256)
        for i in range(1, nblocks):
            nb = nb_last - i
            cp_wait(wg, 0)
            yield ("sync", bar_mine, 256)
            mma_commit(wg, gemm_s(wg, i % 3))
            yield ("step",)
            mma_commit(wg, gemm_pv(wg, (i - 1) % 3))
            yield ("arrive", bar_other, 256)
            copy_ahead(i)
            yield ("step",)
            mma_wait(wg, 1)
            corr = softmax(wg, nb)
            yield ("step",)
            mma_wait(wg, 0)
            rescale_pack(wg, corr)
        cp_wait(wg, 0)
        yield ("sync", bar_mine, 256)
        mma_commit(wg, gemm_pv(wg, (nblocks - 1) % 3))
        if wg == 0:
            yield ("arrive", bar_other, 256)
        yield ("step",)
        mma_wait(wg, 0)

    if nblocks > 0:
        rng = random.Random(int(policy[4:]) if policy.startswith("rand") else 0)
        progs = [program(0), program(1)]
        done = [False, False]
        blocked = [None, None]  # barrier id a warpgroup waits on
        count = {}               # threads arrived in the current generation, per barrier id
        waiting = {}             # warpgroups blocked in bar.sync, per barrier id
        completions = {}

        def count_in(bar, n, wg, sync):
            c = count.get(bar, 0) + 128
            assert c <= n, f"barrier {bar} over-arrived"
            if sync:
                waiting.setdefault(bar, []).append(wg)
                blocked[wg] = bar
            if c == n:
                count[bar] = 0
                completions[bar] = completions.get(bar, 0) + 1
                for w in waiting.pop(bar, []):
                    blocked[w] = None
            else:
                count[bar] = c

        while not all(done):
            runnable = [w for w in range(2) if not done[w] and blocked[w] is None]
            assert runnable, "deadlock"
            if policy in ("wg0", "wg1"):
                pref = int(policy[2])
                wg = pref if pref in runnable else runnable[0]
            else:
                wg = rng.choice(runnable)
            try:
                ev = next(progs[wg])
            except StopIteration:
                done[wg] = True
                continue
            if ev[0] == "sync":
                count_in(ev[1], ev[2], wg, True)
            elif ev[0] == "arrive":
                count_in(ev[1], ev[2], wg, False)
        assert all(v == 0 for v in count.values()), f"unbalanced named barriers {count}"
        assert completions.get(1, 0) == nblocks and completions.get(2, 0) == nblocks
        assert all(not g for g in mma_groups)

    return C.epilogue()


# ---- SQA_CUDA_FWD=wgmmatma: flash_fwd_wgmma_tma_kernel (fwd_wgmma_body, kWgmmaSchedTma) ---------
# The mbarrier, named-barrier, TMA-box and scheduler models are the backward emulator's
# (wgmma_bwd_emulate.py): one home for the hardware model of the TMA pipelines.
TMA_MUTATIONS = [
    "full_parity",      # consumers wait for the full phases with the wrong parity
    "q_no_wait",        # consumers skip Q's full wait
    "no_v_full_wait",   # consumers skip V's full waits
    "empty_parity",     # the producer waits for the empty phases with the wrong parity
    "no_empty_arrive",  # consumers never release V stages
    "early_empty",      # consumers release K(i) / V(i - 1) before the wgmma that reads them completed
    "expect_tx_short",  # K's expect_tx one box (half the tile at D = 64) short
    "expect_tx_long",   # K's expect_tx 16 bytes too many
    "swizzle64",        # K / V boxes with the 64-byte swizzle pattern
    "box_row",          # K / V box row coordinate one row off
    "box_col",          # K / V box column coordinate 0 for both atom columns (D = 128)
    "box_head",         # K / V boxes from the query head
    "box_batch",        # K / V boxes from batch entry 0
    "k_stage_off",      # the producer writes K(j) into stage (j + 1) % 3
    "v_stage_off",      # consumers read V(i - 1) from stage i % 3
]
# wgmmatma3 (three consumer warpgroups, round robin of turns): the mutations above (box_col needs
# D = 128, which has no 3-warpgroup kernel) and these.
TMA3_MUTATIONS = [
    "skip_turn",        # warpgroup 1 skips its turn waits (bar.sync) in the key loop
    "next_bar_off",     # warpgroup 1 passes the turn to warpgroup 0's barrier, not warpgroup 2's
    "empty_count_8",    # the empty mbarriers count 8 arrivals (two warpgroups), 12 warps arrive
    "last_arrive_wg0",  # after the last P V only warpgroup 0 passes the turn (the 2-wg test)
]


def emulate_tma(q4, k4, v4, reverse, group, b, h, BN, m_block, left, right, scale,
                reads_at_wait, policy, rng, mut=frozenset(), raw_addr=0x410, WG=2):
    """One CTA of flash_fwd_wgmma_tma_kernel<T, D, WG> (attention head h of batch entry b, rows
    m_block * 64 WG ..): the producer thread and the WG consumer warpgroups as separate programs
    under an interleaving `policy` (wgmma_bwd_emulate.run_programs: 'random', 'producer',
    'consumers', 'c0' / 'c1' / 'c2' (greedy for one consumer), 'late', 'c1-late'). The TMA boxes
    (complete_tx on their mbarrier) land whenever the scheduler picks them; wgmma groups per the
    timing mode. WG = 3 (wgmmatma3): 192-row tiles, the turns a round robin over the three
    warpgroups (barrier 1 + w synced by w, arrived on by w - 1 mod 3), 12 arrivals per empty
    phase; the order of the turns' wgmma issues is checked (0, 1, .., WG - 1 per step).
    q4: [B, N_q, H_q, D], k4 / v4: [B, N_k, H_kv, D], as the tensor maps see them. mut: mutations
    of the kernel (each must be caught). Returns (O, lse) of the head, rows outside the tile NaN,
    or None for a tile past the sequence."""
    from wgmma_bwd_emulate import MBarrier, NamedBarrier, run_programs, tma_box_write
    B, nq, Hq, D = q4.shape
    nk = k4.shape[1]
    BM, kStages = 64 * WG, 3
    kQB, kKVB = BM * D * 2, BN * D * 2
    kBarBytes = (1 + 4 * kStages) * 8
    smem_bytes = kQB + 2 * kStages * kKVB + kBarBytes + 1024  # WgmmaFwdTile::kSmemBytes
    assert smem_bytes <= 227 * 1024, smem_bytes
    sm = Smem(raw_addr + smem_bytes + 64)
    sQ = (raw_addr + 1023) & ~1023
    sK = sQ + kQB
    sV = sK + kStages * kKVB
    sBar = sV + kStages * kKVB
    assert sBar % 8 == 0 and sBar + kBarBytes <= raw_addr + smem_bytes
    assert all(a % 1024 == 0 for a in (sQ, sK, sV)) and kKVB % 1024 == 0
    m0 = m_block * BM
    if m0 >= nq:
        return None
    q_head = h % Hq if reverse else h
    kv_head = h if reverse else h // group
    diag = nk - nq
    lo, hi = m0, min(nq, m0 + BM) - 1
    kb, ke = visible_key_blocks(lo, hi, nk, diag, left, right, BN)
    nblocks = ke - kb
    nb_last = ke - 1
    C = PingPongConsumers(sm, nq, nk, D, BN, m0, left, right, scale, reads_at_wait, sQ, sK, sV,
                          WG)

    q_full = MBarrier(1)
    k_full = [MBarrier(1) for _ in range(kStages)]
    v_full = [MBarrier(1) for _ in range(kStages)]
    n_empty = 8 if "empty_count_8" in mut else 4 * WG  # lane 0 of each consumer warp
    k_empty = [MBarrier(n_empty) for _ in range(kStages)]
    v_empty = [MBarrier(n_empty) for _ in range(kStages)]
    bars = {1 + w: NamedBarrier(2) for w in range(WG)}  # kBarWg0 + warpgroup
    issues = []  # (step, warpgroup) of each turn's wgmma issue, in the order they happen
    inflight = []

    def box(dst, ten, coords, bar, rows, sw=128):
        dims = (ten.shape[3], ten.shape[2], ten.shape[1], ten.shape[0])  # innermost first

        def op():
            bar.complete_tx(tma_box_write(sm, dst, ten, dims, coords, sw, rows))
        inflight.append(op)

    def producer():  # thread kThreads (256) of the CTA
        if nblocks == 0:
            return
        q_full.arrive_expect_tx(kQB)
        for c in range(D // 64):
            box(sQ + c * BM * 128, q4, (c * 64, q_head, m0, b), q_full, BM)
        yield None
        for j in range(nblocks):
            stage, parity = j % 3, (j // 3) & 1
            row = (nb_last - j) * BN
            for name, full, empty, ten, base in (("k", k_full, k_empty, k4, sK),
                                                 ("v", v_full, v_empty, v4, sV)):
                if j >= 3:
                    par = parity if "empty_parity" in mut else parity ^ 1
                    yield lambda e=empty[stage], par=par: e.done(par)
                nbytes = kKVB
                if name == "k" and "expect_tx_short" in mut:
                    nbytes -= min(kKVB // 2, 64 * BN * 2)
                if name == "k" and "expect_tx_long" in mut:
                    nbytes += 16
                full[stage].arrive_expect_tx(nbytes)
                dst_stage = (stage + 1) % 3 if (name == "k" and "k_stage_off" in mut) else stage
                for c in range(D // 64):
                    coords = (0 if "box_col" in mut else c * 64,
                              q_head if "box_head" in mut else kv_head,
                              row + (1 if "box_row" in mut else 0),
                              0 if "box_batch" in mut else b)
                    box(base + dst_stage * kKVB + c * BN * 128, ten, coords, full[stage], BN,
                        64 if "swizzle64" in mut else 128)
                yield None

    def consumer(wg):  # threads 128 wg .. 128 wg + 127
        if nblocks == 0:
            return
        nxt = (wg + 2) % WG if ("next_bar_off" in mut and wg == 1) else (wg + 1) % WG
        bar_mine, bar_other = bars[1 + wg], bars[1 + nxt]
        skip_turn = "skip_turn" in mut and wg == 1

        def full_wait(bar, j):
            par = ((j // 3) & 1) ^ (1 if "full_parity" in mut else 0)
            return lambda: bar.done(par)

        def release(bar):  # lane 0 of each of the warpgroup's 4 warps
            for _ in range(4):
                bar.arrive()
                yield None

        if "q_no_wait" not in mut:
            yield full_wait(q_full, 0)
        yield full_wait(k_full[0], 0)
        C.mma_commit(wg, C.gemm_s(wg, 0))
        C.mma_wait(wg, 0)
        C.rescale_pack(wg, C.softmax(wg, nb_last))
        yield from release(k_empty[0])
        if wg == WG - 1:
            bars[1].arrive()  # warpgroup 0's first turn
        for i in range(1, nblocks):
            nb = nb_last - i
            yield full_wait(k_full[i % 3], i)
            if "no_v_full_wait" not in mut:
                yield full_wait(v_full[(i - 1) % 3], i - 1)
            if not skip_turn:
                yield from bar_mine.sync()
            issues.append((i, wg))
            C.mma_commit(wg, C.gemm_s(wg, i % 3))
            yield None
            C.mma_commit(wg, C.gemm_pv(wg, i % 3 if "v_stage_off" in mut else (i - 1) % 3))
            bar_other.arrive()
            if "early_empty" in mut:
                yield from release(k_empty[i % 3])
                yield from release(v_empty[(i - 1) % 3])
            yield None
            if WG == 3:
                # wgmmatma3: both groups complete before the softmax (P(i - 1) dead during it, for
                # the 160-register cap), then both stages released.
                C.mma_wait(wg, 0)
                if "early_empty" not in mut:
                    yield from release(k_empty[i % 3])
                    if "no_empty_arrive" not in mut:
                        yield from release(v_empty[(i - 1) % 3])
                corr = C.softmax(wg, nb)
                yield None
                C.rescale_pack(wg, corr)
                continue
            C.mma_wait(wg, 1)  # S(i) done
            if "early_empty" not in mut:
                yield from release(k_empty[i % 3])
            corr = C.softmax(wg, nb)
            yield None
            C.mma_wait(wg, 0)  # P(i - 1) V(i - 1) done
            if "early_empty" not in mut and "no_empty_arrive" not in mut:
                yield from release(v_empty[(i - 1) % 3])
            C.rescale_pack(wg, corr)
        if "no_v_full_wait" not in mut:
            yield full_wait(v_full[(nblocks - 1) % 3], nblocks - 1)
        yield from bar_mine.sync()
        issues.append((nblocks, wg))
        C.mma_commit(wg, C.gemm_pv(wg, (nblocks - 1) % 3))
        if (wg == 0) if "last_arrive_wg0" in mut else (wg < WG - 1):
            bar_other.arrive()
        yield None
        C.mma_wait(wg, 0)

    progs = {"producer": producer()}
    progs.update({f"c{w}": consumer(w) for w in range(WG)})
    run_programs(progs, inflight, rng, policy)
    assert not inflight and not any(C.mma_groups)
    assert all(nb.arrived == 0 and nb.gen == nblocks for nb in bars.values()), \
        "named barriers unbalanced"
    if nblocks > 0:
        # The turns: warpgroup 0, 1, .., WG - 1 issue their wgmmas of each step in that order.
        assert issues == [(i, w) for i in range(1, nblocks + 1) for w in range(WG)], \
            "turns out of order"
    return C.epilogue()


def check_tma(B, Hq, Hkv, reverse, nq, nk, D, left, right, seed, reads_at_wait, policy,
              sched_seed, mut=frozenset(), gain=1.0, quiet=False, WG=2):
    """Every CTA of a dense batch (all attention heads, batch entries and row blocks) through
    emulate_tma (WG consumer warpgroups: 2 for wgmmatma, 3 for wgmmatma3), against the float64
    reference of each head (head_pair semantics: GQA family query head h, KV head h / G; rSQA
    query head h % H_q, KV head h)."""
    rng = np.random.default_rng(seed)
    q4 = rng.standard_normal((B, nq, Hq, D)) * gain
    k4 = rng.standard_normal((B, nk, Hkv, D))
    v4 = rng.standard_normal((B, nk, Hkv, D))
    scale = 1 / math.sqrt(D)
    heads = Hkv if reverse else Hq
    group = 1 if reverse else Hq // Hkv
    BM = 64 * WG
    err = 0.0
    for b in range(B):
        for h in range(heads):
            qh, kvh = (h % Hq, h) if reverse else (h, h // group)
            ref_o, ref_l = reference(q4[b, :, qh], k4[b, :, kvh], v4[b, :, kvh], left, right, scale)
            out = np.full((nq, D), np.nan)
            lse = np.full(nq, np.nan)
            for mb in range((nq + BM - 1) // BM):
                o_, l_ = emulate_tma(q4, k4, v4, reverse, group, b, h, 128, mb, left, right,
                                     scale, reads_at_wait, policy,
                                     np.random.default_rng([sched_seed, b, h, mb]), mut,
                                     WG=WG)
                m0 = mb * BM
                out[m0: m0 + BM] = o_[m0: m0 + BM]
                lse[m0: m0 + BM] = l_[m0: m0 + BM]
            assert not np.isnan(out).any(), "unwritten or NaN output"
            err = max(err, np.abs(out - ref_o).max())
            with np.errstate(invalid="ignore"):
                both_minus_inf = np.isinf(ref_l) & np.isinf(lse) & (lse < 0)
                lse_ok = np.all(both_minus_inf | (np.abs(lse - ref_l) < 1e-9))
            assert lse_ok, f"lse wrong (b={b} h={h})"
    if not quiet:
        layout = f"Hq={Hq} Hkv={Hkv}{' rSQA' if reverse else ''}"
        name = "wgmmatma" if WG == 2 else f"wgmmatma{WG}"
        print(f"{name} B={B} {layout} nq={nq} nk={nk} D={D} window=({left},{right}) "
              f"reads_at_wait={reads_at_wait} policy={policy}/{sched_seed}: "
              f"max|O-ref|={err:.2e}", flush=True)
    assert err < 1e-9, err
    return err


def reference(Q, K, V, left, right, scale):
    nq, nk = Q.shape[0], K.shape[0]
    diag = nk - nq
    S = Q @ K.T * scale
    out = np.zeros((nq, V.shape[1]))
    lse = np.full(nq, -INF)
    for i in range(nq):
        vis = np.array([key_visible(j, i, nk, diag, left, right) for j in range(nk)])
        if not vis.any():
            continue
        row = S[i, vis]
        mx = row.max()
        p = np.exp(row - mx)
        out[i] = p @ V[vis] / p.sum()
        lse[i] = mx + math.log(p.sum())
    return out, lse


def check(nq, nk, D, BN, WG, left, right, seed, reads_at_wait, gain=1.0, policy=None):
    rng = np.random.default_rng(seed)
    Q = rng.standard_normal((nq, D)) * gain
    K = rng.standard_normal((nk, D))
    V = rng.standard_normal((nk, D))
    scale = 1 / math.sqrt(D)
    ref_o, ref_l = reference(Q, K, V, left, right, scale)
    BM = 64 * WG
    out = np.full((nq, D), np.nan)
    lse = np.full(nq, np.nan)
    for mb in range((nq + BM - 1) // BM):
        if policy is None:
            r = emulate(Q, K, V, D, BN, WG, mb, left, right, scale, reads_at_wait)
        else:
            r = emulate_pingpong(Q, K, V, D, BN, mb, left, right, scale, reads_at_wait, policy)
        o_, l_ = r
        m0 = mb * BM
        out[m0: m0 + BM] = o_[m0: m0 + BM]
        lse[m0: m0 + BM] = l_[m0: m0 + BM]
    assert not np.isnan(out).any(), "unwritten output"
    err = np.abs(out - ref_o).max()
    with np.errstate(invalid="ignore"):
        both_minus_inf = np.isinf(ref_l) & np.isinf(lse) & (lse < 0)
        lse_ok = np.all(both_minus_inf | (np.abs(lse - ref_l) < 1e-9))
    print(f"nq={nq} nk={nk} D={D} BN={BN} WG={WG} window=({left},{right}) "
          f"reads_at_wait={reads_at_wait}{'' if policy is None else f' pp {policy}'}: "
          f"max|O-ref|={err:.2e} lse_ok={lse_ok}", flush=True)
    assert err < 1e-9 and lse_ok
    return err


if __name__ == "__main__":
    cases = [
        (300, 337, 64, -1, -1),
        (300, 300, 128, -1, 0),
        (200, 450, 64, 37, 5),
        (300, 100, 128, -1, 0),
        (100, 300, 64, 20, 0),
        (129, 1, 128, -1, 0),
        (260, 260, 128, 100, 0),
        (130, 500, 64, -1, 3),
    ]
    # Longer key ranges (7-8 blocks) for the ping-pong: the three K / V stages wrap around twice.
    pp_cases = [
        (130, 1000, 64, -1, -1),
        (140, 900, 128, -1, 7),
    ]
    which = sys.argv[1:] or ["wgmma", "wgmmapp"]
    # wgmmatma (dense): (B, H_q, H_kv, rSQA, N_q, N_k, D, left, right)
    tma_cases = [
        (1, 2, 2, False, 300, 337, 64, -1, -1),   # MHA, N_q != N_k, padded rows
        (2, 2, 1, False, 140, 900, 128, -1, 7),   # GQA, batch 2, 8 blocks: stages wrap twice
        (1, 1, 2, True, 130, 1000, 64, -1, -1),   # rSQA (KV head h, query head h % H_q), 8 blocks
        (2, 2, 2, False, 200, 450, 128, 37, 5),   # sliding window, batch 2
        (1, 2, 1, False, 129, 1, 128, -1, 0),     # one key: a row block without visible keys
        (1, 1, 1, False, 300, 100, 64, -1, 0),    # causal, N_q > N_k
    ]
    tma_policies = [("random", 1), ("random", 2), ("producer", 3), ("consumers", 4),
                    ("late", 5), ("c0", 6), ("c1", 7)]
    if "tma" in which:
        for i, (B, Hq, Hkv, rev, nq, nk, D, l, r) in enumerate(tma_cases):
            for mode in (True, False):
                for pol, ss in tma_policies:
                    check_tma(B, Hq, Hkv, rev, nq, nk, D, l, r, seed=200 + i, reads_at_wait=mode,
                              policy=pol, sched_seed=ss, gain=2.0 if i % 2 else 1.0)
        print("ALL OK (wgmmatma)")
    def run_tma_mutations(mutations, mcases, policies, WG):
        # each mutation must fail (wrong or NaN result, a failed assertion, or a deadlock) under
        # at least one interleaving / timing mode.
        from wgmma_bwd_emulate import Deadlock
        for m in mutations:
            caught = None
            for B, Hq, Hkv, rev, nq, nk, D, l, r in mcases:
                if caught or (m == "box_col" and D == 64) or (m == "box_batch" and B == 1):
                    continue
                for mode in (True, False):
                    for pol, ss in policies:
                        try:
                            check_tma(B, Hq, Hkv, rev, nq, nk, D, l, r, seed=300,
                                      reads_at_wait=mode, policy=pol, sched_seed=ss,
                                      mut=frozenset([m]), quiet=True, WG=WG)
                        except (AssertionError, Deadlock) as e:
                            caught = (f"D={D} reads_at_wait={mode} policy={pol}: "
                                      f"{type(e).__name__} {str(e)[:60]}")
                            break
                    if caught:
                        break
            print(f"mutation {m}: {'CAUGHT ' + caught if caught else 'NOT CAUGHT'}", flush=True)
            assert caught, m

    if "tma-mutations" in which:
        # Cases: rSQA D = 64 with 8 key blocks (KV head != query head, stages reused twice), GQA
        # D = 128 batch 2 (two atom columns, b = 1).
        run_tma_mutations(TMA_MUTATIONS, [(1, 1, 2, True, 130, 1000, 64, -1, -1),
                                          (2, 2, 1, False, 140, 900, 128, -1, 7)],
                          tma_policies, 2)
        print("ALL MUTATIONS CAUGHT (wgmmatma)")
    # wgmmatma3 (flash_fwd_wgmma_tma_kernel<T, 64, 3>): the dense cases above at D = 64 (the only
    # head dim of the 3-warpgroup kernel; 192-row tiles: 300 = 192 + 108 rows, 140 and 130 in
    # one partial tile, 129 rows against one key), and one with three tiles; interleavings
    # greedy for each of the three consumers instead of c0 / c1.
    tma3_cases = [c[:6] + (64,) + c[7:] for c in tma_cases] + [
        (2, 2, 1, False, 500, 700, 64, -1, 0),   # GQA causal, batch 2, 3 tiles (the last of 116)
    ]
    tma3_policies = [("random", 1), ("random", 2), ("producer", 3), ("consumers", 4),
                     ("late", 5), ("c0", 6), ("c1", 7), ("c2", 8), ("c1-late", 9)]
    if "tma3" in which:
        for i, (B, Hq, Hkv, rev, nq, nk, D, l, r) in enumerate(tma3_cases):
            for mode in (True, False):
                for pol, ss in tma3_policies:
                    check_tma(B, Hq, Hkv, rev, nq, nk, D, l, r, seed=200 + i, reads_at_wait=mode,
                              policy=pol, sched_seed=ss, gain=2.0 if i % 2 else 1.0, WG=3)
        print("ALL OK (wgmmatma3)")
    if "tma3-mutations" in which:
        # rSQA with 8 key blocks in one tile; GQA batch 2 with 7 key blocks over 3 tiles.
        run_tma_mutations([m for m in TMA_MUTATIONS if m != "box_col"] + TMA3_MUTATIONS,
                          [(1, 1, 2, True, 130, 1000, 64, -1, -1),
                           (2, 2, 1, False, 400, 900, 64, -1, 7)],
                          tma3_policies, 3)
        print("ALL MUTATIONS CAUGHT (wgmmatma3)")
    for i, (nq, nk, D, l, r) in enumerate(cases):
        if "wgmma" not in which and "wgmmapp" not in which:
            break
        for mode in (True, False):
            if "wgmma" in which:
                check(nq, nk, D, 128, 2, l, r, seed=i, reads_at_wait=mode,
                      gain=3.0 if i % 2 else 1.0)
            if "wgmmapp" in which:
                for policy in ("wg0", "wg1", f"rand{i}", f"rand{100 + i}"):
                    check(nq, nk, D, 128, 2, l, r, seed=i, reads_at_wait=mode,
                          gain=3.0 if i % 2 else 1.0, policy=policy)
    if "wgmmapp" in which:
        for i, (nq, nk, D, l, r) in enumerate(pp_cases):
            for mode in (True, False):
                for policy in ("wg0", "wg1", f"rand{i}", f"rand{100 + i}", f"rand{200 + i}"):
                    check(nq, nk, D, 128, 2, l, r, seed=50 + i, reads_at_wait=mode, gain=2.0,
                          policy=policy)
    if "wgmma" in which or "wgmmapp" in which:
        print("ALL OK")
