#!/usr/bin/env python3
"""Host emulation of flash_bwd_dkdv_wgmma_kernel (src/attention/cuda/flash_bwd_wgmma.cuh, the
SQA_CUDA_BWD=wgmma dK/dV kernel, the default at D = 64 / 128) at the level of threads, registers,
swizzled shared memory and wgmma descriptors, against a float64 reference backward: a check of the
kernel's index math, descriptors (K-major and MN-major, A and B), fragment hand-overs, the dS^T
tile, the dQ tile and its bulk reduce-adds, the head / query-block loop, the head splits and the
buffer order, without a GPU. It mirrors the kernel by hand (keep the two in step), in float64
without 16-bit rounding, so every case must match to ~1e-12.

Usage: python3 bench/gpu/wgmma_bwd_emulate.py [quick]   (one line per case, then ALL OK)
       python3 bench/gpu/wgmma_bwd_emulate.py [quick] tma   (SQA_CUDA_BWD=wgmmatma, dense cases)
       python3 bench/gpu/wgmma_bwd_emulate.py tma-mutations (each mutation must be caught)
       python3 bench/gpu/wgmma_bwd_emulate.py d32-mutations (the D = 32 layout; each caught)
D = 32 (SQA_CUDA_BWD=wgmma there; cp.async-only form): K, V, Q, dO in [rows][32] tiles with the
64-byte swizzle (layout type 2, SBO 512; TileGeometry), S^T / dP^T over two K-major k-steps, dV /
dK m64n32, dQ m64n16 per warpgroup (warpgroup 1's B 32 bytes into the rows); the dS^T tile keeps
the 128-byte swizzle. The hardware model below takes the swizzle width from the descriptor's
layout type.
wgmmatma (flash_bwd_dkdv_wgmma_tma_kernel; emulate_cta_tma): the producer warp and the two
consumer warpgroups as separate programs under six interleavings (two random, producer-greedy,
consumer-greedy, async-late, consumer warpgroup 1 late), with mbarriers (phase bit, arrival
count, transaction bytes; a wait that can never complete is reported as a deadlock), TMA boxes
writing the 128-byte swizzle with zero fill past the map's extent, the producer's lse / D
cp.asyncs with their noinc arrivals, the consumers' K / V cp.asyncs as the PTX ISA defines them
(each copy lands at any time after its issue; cp.async.wait_group N covers only committed
groups, so a wait_group 0 with nothing committed waits for nothing: mutation kv_wait_group, the
kernel of the first H200 run, whose first steps read K / V before they landed at 8k-32k
tokens), and named barrier 1 / 2 over the consumers. In both schemes (kDq = false: the
deterministic form, SQA_CUDA_BWD=wgmmatma only; its step releases the stage after the wait for
its dV / dK group); tma-mutations has four mutations of its own (det_*).
Both instantiations: kDq = true (the default scheme): dQ split over its columns, through a shared
fp32 tile and bulk reduce-adds: the tile's padded rows and 8-byte stores (bank-conflict-free,
checked), one cp.reduce.async.bulk per row by lanes 0 .. 7 of each warp (16-byte alignment and
size checked; rows past the sequence not issued), issued at the next step's barrier 1 (after the
S^T / dP^T issue) or after the loop, and the per-thread bulk groups' wait_group.read before
barrier 2; and kDq = false (deterministic): dK / dV only (no dS^T tile, dQ tile, bulk adds or
barrier 2; the step ends with the wait for its dV / dK group; dQ is left to flash_bwd_dq_kernel,
not emulated, and must stay untouched). In both, the copies of the block kStages - 1 ahead go
out after the S^T / dP^T issue, and dV's first 4 k-steps at D = 32 and 64, 3 at D = 128
(kDvEarly) are issued before the wait for dP^T in their own wgmma group, the rest of dV and dK
after.

Layouts checked (hardware model as bench/gpu/wgmma_emulate.py; a W-byte swizzle maps byte
address a -> a ^ (((a >> 7) & (W / 16 - 1)) << 4), rows of W bytes in an atom; W = 128 below, 64
for K / V / Q / dO at D = 32):
  K-major A (K, V for S^T = K Q^T, dP^T = V dO^T) and K-major B (Q, dO): element (r, k) at
      start + (r % 8) * 128 + (r // 8) * SBO + 2 k, k-steps +32 bytes inside an atom, +R * 128
      bytes to the next atom column (D = 128);
  MN-major B (dO, Q for dV += P^T dO, dK += dS^T Q; K for dQ = dS K): element (k, n) at
      start + (k % 8) * 128 + (k // 8) * SBO + 2 (n % 64) + (n // 64) * LBO; for dQ at D = 64
      warpgroup 1's B starts 64 bytes into the atom (N = 32 columns each);
  MN-major A (dS for dQ, the dS^T tile as stored): element (m, k) at start + (k % 8) * 128 +
      (k // 8) * SBO + 2 (m % 64) + (m // 64) * LBO (the canonical MN-major layout, as for B);
  accumulators m64nN: thread (w, g, t) d[4 j + e] = D[16 w + g + 8 (e // 2), 8 j + 2 t + e % 2];
  A registers m64k16 from accumulator column tiles 2 kk, 2 kk + 1 (a0..a3 as the forward).
Timing modes: reads_at_wait=True lands cp.async copies at issue and runs wgmma reads (shared
memory and A registers) at the wait that completes them (catches a buffer overwritten while a
wgmma may still read it); False lands copies at the cp.async wait and runs wgmma at issue
(catches a read before the data landed). Unwritten shared memory is NaN. The bulk reduce-adds
read their shared rows at the thread's wait_group.read when reads_at_wait=True (catches the tile
rewritten before the wait) and at issue when False (catches an issue before the tile is written).
"""
import math
import sys

import numpy as np

INF = float("inf")
LOG2E = 1.4426950408889634


# wgmma layout types (descriptor bits 62-63) -> swizzle width W in bytes: the hardware XORs the
# 16-byte chunk index (address bits 4 .. 3 + log2(W / 16)) with address bits 7 .. 6 + log2(W / 16)
# of the absolute address; atoms are 8 rows of W bytes.
SWIZZLE_BYTES = {1: 128, 2: 64, 3: 32}


def swz(a, W=128):
    return a ^ (((a >> 7) & (W // 16 - 1)) << 4)


def desc(addr, lbo, sbo, layout=1):
    return (((addr >> 4) & 0x3FFF) | (((lbo >> 4) & 0x3FFF) << 16)
            | (((sbo >> 4) & 0x3FFF) << 32) | (layout << 62))


def advance(d, nbytes):
    assert nbytes % 16 == 0
    return d + (nbytes >> 4)


def decode(d):
    """(start, leading, stride, swizzle width W) of a descriptor with a swizzling layout type."""
    assert (d >> 62) in SWIZZLE_BYTES, "a swizzled layout (128, 64 or 32 bytes)"
    W = SWIZZLE_BYTES[d >> 62]
    assert ((d >> 49) & 7) == 0, "base offset 0"
    start = (d & 0x3FFF) << 4
    # base offset 0 is right only if the start is 8 W-aligned or offset by < W bytes inside
    # a row of an aligned atom (the XOR source bits of the start are those of the atom's first row)
    assert ((start >> 7) & (W // 16 - 1)) == 0, f"start {start:#x}: base offset would be nonzero"
    return start, ((d >> 16) & 0x3FFF) << 4, ((d >> 32) & 0x3FFF) << 4, W


def sw128_offset(rows, row, chunk):
    return (chunk // 8) * rows * 128 + row * 128 + (((chunk % 8) ^ (row % 8)) * 16)


class TileGeometry:
    """WgmmaBwdTile's layout of the K, V, Q and dO tiles and the kernel's descriptors on them
    (kSwBytes, desc, kstep_offset, sw64_offset / sw128_offset, the dQ B start). D >= 64:
    [D / 64][rows][64] with the 128-byte swizzle (layout type 1, 8-row groups 1024 bytes apart);
    D = 32: [rows][32] with the 64-byte swizzle (layout type 2, 8-row groups 512 bytes apart).
    mut: the kernel's side written wrong (each must be caught); the hardware model (decode,
    read_kmajor, read_mnmajor) stays right."""

    def __init__(self, D, mut=frozenset()):
        self.D, self.mut = D, mut
        self.sw = 64 if D == 32 else 128   # kSwBytes
        self.elems = self.sw // 2          # kSwElems
        self.layout = 2 if D == 32 else 1
        self.sbo = 8 * self.sw
        if "layout_type" in mut:           # the 128-byte swizzle's type at D = 32
            self.layout = 1
        if "sbo" in mut:                   # D = 64's 8-row group stride
            self.sbo = 1024

    def desc(self, addr, lbo):
        return desc(addr, lbo, self.sbo, self.layout)

    def kstep_offset(self, rows, kk):
        """K-major k-step kk (16 elements): +32 bytes inside a row, the next atom column every
        kSwBytes / 32 k-steps."""
        per = self.sw // 32
        inner = 64 if "kstep_kmajor" in self.mut else 32
        return (kk // per) * rows * self.sw + (kk % per) * inner

    def mn_kstep(self, kk):
        """MN-major k-step kk: 16 rows of kSwBytes."""
        return kk * 16 * (128 if "kstep_mn" in self.mut else self.sw)

    def offset(self, rows, row, chunk):
        """sw64_offset (D = 32) / sw128_offset: chunk `chunk` of row `row` in a tile."""
        if self.D == 32:
            sel = (row & 3) if "swizzle_bit" in self.mut else ((row >> 1) & 3)
            return row * 64 + ((chunk ^ sel) * 16)
        return sw128_offset(rows, row, chunk)

    def kt_start(self, sK, c0, BN):
        """The dQ B operand (K read MN-major) from dQ column c0 on."""
        inner = (c0 % self.elems) * (4 if "dq_col" in self.mut else 2)
        return sK + (c0 // self.elems) * BN * self.sw + inner


class Smem:
    def __init__(self, size):
        self.v = np.full(size // 2, np.nan)   # 16-bit elements
        self.f = np.full(size // 4, np.nan)   # 32-bit words (lse, D)

    def write_chunk(self, addr, vals):
        assert addr % 16 == 0
        self.v[addr // 2: addr // 2 + 8] = vals

    def write16(self, addr, val):
        assert addr % 2 == 0
        self.v[addr // 2] = val

    def write32f(self, addr, val):
        assert addr % 4 == 0
        self.f[addr // 4] = val


def read_kmajor(sm, d, rows):
    """Operand of `rows` rows (M or N) x 16 k, K-major (rows of W bytes in an atom)."""
    start, _, sbo, W = decode(d)
    r = np.arange(rows)[:, None]
    k = np.arange(16)[None, :]
    a = start + (r % 8) * W + (r // 8) * sbo + 2 * k
    return sm.v[swz(a, W) // 2]


def read_mnmajor(sm, d, n):
    """Operand 16 k x n, MN-major (B of m64nNk16 with the transpose bit; A transposed: m = n):
    W / 2 columns per atom column, the next one LBO on."""
    start, lbo, sbo, W = decode(d)
    k = np.arange(16)[:, None]
    c = np.arange(n)[None, :]
    a = start + (k % 8) * W + (k // 8) * sbo + 2 * (c % (W // 2)) + (c // (W // 2)) * lbo
    return sm.v[swz(a, W) // 2]


def key_visible(key, qrow, nk, diag, left, right):
    qd = qrow + diag
    return (key < nk) & ((left < 0) | (key >= qd - left)) & ((right < 0) | (key <= qd + right))


# ---- thread geometry of one warpgroup (128 threads) --------------------------------------------
TID = np.arange(128)
W_OF, G_OF, T_OF = TID // 32, (TID % 32) // 4, TID % 4


def acc_index(n):
    """(rows, cols) of accumulator element i of thread tid: arrays [128, n // 2]."""
    i = np.arange(n // 2)[None, :]
    j, e = i // 4, i % 4
    rows = 16 * W_OF[:, None] + G_OF[:, None] + 8 * (e // 2)
    cols = 8 * j + 2 * T_OF[:, None] + e % 2
    return rows, cols


def regs_from(acc, n):
    rows, cols = acc_index(n)
    return acc[rows, cols]


def a_from_regs(pa_kk):
    """A (64 x 16) from the A registers of one k-step: pa_kk[128, 4, 2]."""
    A = np.full((64, 16), np.nan)
    r0 = 16 * W_OF + G_OF
    for i, (dr, dc) in enumerate(((0, 0), (8, 0), (0, 8), (8, 8))):
        for h in range(2):
            A[r0 + dr, dc + 2 * T_OF + h] = pa_kk[:, i, h]
    return A


def pack(x):
    """A fragments from accumulators x[128, 32] (64 x 64): [128, 4 k-steps, 4, 2]."""
    out = np.zeros((128, 4, 4, 2))
    for kk in range(4):
        for i in range(4):
            out[:, kk, i, 0] = x[:, 8 * kk + 2 * i]
            out[:, kk, i, 1] = x[:, 8 * kk + 2 * i + 1]
    return out


class Problem:
    """Tensors in the kernel's flat element layout, dense (B, N, H, D) or varlen (total, H, D)."""

    def __init__(self, rng, D, Hq, Hkv, reverse, lens_q, lens_k, left, right, varlen, gain=1.0):
        self.D, self.Hq, self.Hkv, self.reverse = D, Hq, Hkv, reverse
        self.G = 1 if reverse else Hq // Hkv
        self.Ha = Hkv if reverse else Hq
        self.left, self.right = left, right
        self.varlen = varlen
        self.B = len(lens_q)
        self.lens_q, self.lens_k = lens_q, lens_k
        self.scale = 1 / math.sqrt(D)
        if varlen:
            self.cu_q = np.concatenate([[0], np.cumsum(lens_q)]).astype(int)
            self.cu_k = np.concatenate([[0], np.cumsum(lens_k)]).astype(int)
            self.Nq, self.Nk = max(lens_q), max(lens_k)
            rows_q, rows_k = self.cu_q[-1], self.cu_k[-1]
        else:
            assert len(set(lens_q)) == 1 and len(set(lens_k)) == 1
            self.Nq, self.Nk = lens_q[0], lens_k[0]
            rows_q, rows_k = self.B * self.Nq, self.B * self.Nk
        self.rows_q, self.rows_k = rows_q, rows_k
        # (rows, heads, D) arrays; flat views below (row stride H * D, head stride D)
        self.q = rng.standard_normal((rows_q, Hq, D)) * gain
        self.k = rng.standard_normal((rows_k, Hkv, D))
        self.v = rng.standard_normal((rows_k, Hkv, D))
        self.do = rng.standard_normal((rows_q, self.Ha, D))
        self.dq = np.zeros_like(self.q)
        self.dk = np.zeros_like(self.k)
        self.dv = np.zeros_like(self.v)
        # lse / D in the lse layout: dense (B, H_attn, N_q), varlen (H_attn, total_q)
        self.lse = np.full(self.B * self.Ha * self.Nq if not varlen else self.Ha * rows_q, np.nan)
        self.dsum = np.full_like(self.lse, np.nan)
        self.reference()

    def span(self, b):
        if self.varlen:
            return (self.cu_q[b], self.cu_k[b], self.cu_q[-1], self.lens_q[b], self.lens_k[b])
        return (b * self.Nq, b * self.Nk, 0, self.Nq, self.Nk)

    def lse_row(self, b, h, r):
        if self.varlen:
            return h * self.cu_q[-1] + self.cu_q[b] + r
        return (b * self.Ha + h) * self.Nq + r

    def reference(self):
        for b in range(self.B):
            q0, k0, _, nq, nk = self.span(b)
            diag = nk - nq
            vis = key_visible(np.arange(nk)[None, :], np.arange(nq)[:, None], nk, diag,
                              self.left, self.right)
            for h in range(self.Ha):
                qh = h % self.Hq if self.reverse else h
                kvh = h if self.reverse else h // self.G
                Q = self.q[q0:q0 + nq, qh]
                K = self.k[k0:k0 + nk, kvh]
                V = self.v[k0:k0 + nk, kvh]
                dO = self.do[q0:q0 + nq, h]
                S = Q @ K.T * self.scale
                S = np.where(vis, S, -INF)
                mx = S.max(1, initial=-INF)
                any_ = np.isfinite(mx)
                P = np.where(vis, np.exp(S - np.where(any_, mx, 0)[:, None]), 0.0)
                den = P.sum(1)
                P = np.where(any_[:, None], P / np.where(any_, den, 1)[:, None], 0.0)
                lse = np.where(any_, mx + np.log(np.where(any_, den, 1)), -INF)
                O = P @ V
                Dq = (dO * O).sum(1)
                dP = dO @ V.T
                dS = P * (dP - Dq[:, None])
                self.dv[k0:k0 + nk, kvh] += P.T @ dO
                self.dk[k0:k0 + nk, kvh] += self.scale * dS.T @ Q
                self.dq[q0:q0 + nq, qh] += self.scale * dS @ K
                for r in range(nq):
                    self.lse[self.lse_row(b, h, r)] = lse[r]
                    self.dsum[self.lse_row(b, h, r)] = Dq[r]


def dkdv_queries(P, n0, nq, nk, kv_head, split, splits, BN=128, BM=64):
    """flash_bwd_kernel.cuh's dkdv_queries: the CTA's heads (h_first, h_count; rSQA's query head)
    and its query blocks (qb_begin, nqb), n_iter = h_count * nqb steps."""
    diag, left, right = nk - nq, P.left, P.right
    G = P.G
    group_lo = split * G // splits
    group_hi = (split + 1) * G // splits
    h_first = kv_head if P.reverse else kv_head * G + group_lo
    h_count = 1 if P.reverse else group_hi - group_lo
    rsqa_qh = kv_head % P.Hq if P.reverse else 0
    last_key = min(n0 + BN, nk) - 1
    q_lo, q_hi = 0, nq
    if right >= 0:
        q_lo = max(0, n0 - diag - right)
    if left >= 0:
        q_hi = min(nq, last_key - diag + left + 1)
    qb_begin = q_lo // BM
    nqb = (q_hi + BM - 1) // BM - qb_begin if q_hi > q_lo else 0
    return h_first, h_count, rsqa_qh, qb_begin, nqb, h_count * nqb


def store_dkdv(P, out, wgs, nk, k_row0, kv_head, split, splits, b):
    """The kernels' epilogue: each warpgroup's dK (times the scale) and dV accumulators to the
    output rows of its keys, or to the split's fp32 partial rows when the group is split."""
    D = P.D
    for wg in range(2):
        S = wgs[wg]
        for tt in range(128):
            for r in range(2):
                key = S["key"][tt, r]
                if key >= nk:
                    continue
                for j in range(D // 8):
                    c = j * 8 + 2 * T_OF[tt]
                    dkv = S["dk"][tt, 4 * j + 2 * r: 4 * j + 2 * r + 2] * P.scale
                    dvv = S["dv"][tt, 4 * j + 2 * r: 4 * j + 2 * r + 2]
                    if splits > 1:
                        out["partial"][split, b, kv_head, key, c: c + 2] = dkv
                        out["partial"][split, b, kv_head, key, D + c: D + c + 2] = dvv
                    else:
                        out["dk"][k_row0 + key, kv_head, c: c + 2] = dkv
                        out["dv"][k_row0 + key, kv_head, c: c + 2] = dvv


def smem_layout(D, raw_addr, kStages, with_dq, tma, BN=128, BM=64):
    """WgmmaBwdTile's shared memory from the (1024-byte aligned) base: K, V, kStages Q and dO
    stages, the dS^T tile and the padded fp32 dQ tile (with_dq), lse and D stages, and (tma) the
    full / empty mbarriers. Byte sizes and addresses by name; "bytes" is the dynamic size."""
    kKV, kQ, kStat = BN * D * 2, BM * D * 2, BM * 4
    kDs = BN * BM * 2 if with_dq else 0
    kDqRow = D * 4 + 32  # WgmmaBwdTile::kDqRowBytes
    kDq = BM * kDqRow if with_dq else 0
    assert kDqRow % 128 == 32 and kDqRow % 16 == 0
    kBar = 2 * kStages * 8 if tma else 0
    L = {"kQ": kQ, "kStat": kStat, "kDqRow": kDqRow,
         "bytes": 2 * kKV + 2 * kStages * kQ + kDs + 2 * kStages * kStat + kDq + kBar + 1024}
    assert L["bytes"] <= 227 * 1024
    L["sK"] = (raw_addr + 1023) & ~1023
    L["sV"] = L["sK"] + kKV
    L["sQ"] = L["sV"] + kKV
    L["sdO"] = L["sQ"] + kStages * kQ
    L["sdS"] = L["sdO"] + kStages * kQ
    assert L["sdS"] % 1024 == 0, "the dS^T tile (128-byte swizzle) 1024-byte aligned"
    L["sStat"] = L["sdS"] + kDs
    L["sDq"] = L["sStat"] + 2 * kStages * kStat
    assert L["sDq"] % 16 == 0
    L["sFull"] = L["sDq"] + kDq
    L["sEmpty"] = L["sFull"] + kStages * 8
    end = L["sEmpty"] + kStages * 8 if tma else L["sDq"] + kDq
    assert L["sFull"] % 8 == 0 and end <= raw_addr + L["bytes"]
    return L


def warpgroup_state(wg, n0, geo, sK, sV, sdS, BN=128):
    """A consumer warpgroup's registers (keys, dK / dV / S^T / dP^T / dQ accumulators) and its
    wgmma descriptors: K / V rows of its 64 keys, the dS^T tile and its dQ column half of K."""
    D = geo.D
    key_local0 = wg * 64 + W_OF * 16 + G_OF
    c0 = wg * (D // 2)
    return {
        "key_local0": key_local0,
        "key": np.stack([n0 + key_local0, n0 + key_local0 + 8], 1),
        "dk": np.zeros((128, D // 2)), "dv": np.zeros((128, D // 2)),
        "st": np.zeros((128, 32)), "dpt": np.zeros((128, 32)),
        "dq": np.zeros((128, D // 4)),
        "k_desc": geo.desc(sK + wg * 64 * geo.sw, 16),
        "v_desc": geo.desc(sV + wg * 64 * geo.sw, 16),
        "dq_col0": c0,
        "ds_desc": desc(sdS, BN * 128, 1024),  # the dS^T tile: 128-byte swizzle at every D
        "kt_desc": geo.desc(geo.kt_start(sK, c0, BN), BN * geo.sw),
    }


class WgmmaOps:
    """The warpgroup-MMA model shared by emulate_cta and emulate_cta_tma: each warpgroup's
    committed groups run at their wait (reads_at_wait: operands read late, the async order's
    worst case) or at once, and the kernel's products S^T / dP^T = K Q^T / V dO^T, dV += P^T dO
    and dK += dS^T Q (A from registers), and dQ = dS K into the warpgroup's half. BN = 128 keys,
    BM = 64 query rows per step; wgs[wg] holds the descriptors and accumulators."""

    BN, BM = 128, 64

    def __init__(self, sm, wgs, geo, reads_at_wait):
        self.sm, self.wgs, self.geo, self.reads_at_wait = sm, wgs, geo, reads_at_wait
        D = self.D = geo.D
        self.dq_n = D // 2             # dQ columns per warpgroup
        self.dq_steps = self.BN // 16  # k-steps of dQ
        self.groups = [[], []]

    def commit(self, wg, op):
        if self.reads_at_wait:
            self.groups[wg].append(op)
        else:
            op()
            self.groups[wg].append(None)

    def wait(self, wg, n):
        while len(self.groups[wg]) > n:
            op = self.groups[wg].pop(0)
            if op is not None:
                op()

    def st(self, wg, q_stage, which):
        sm, wgs, D, BN, BM, geo = self.sm, self.wgs, self.D, self.BN, self.BM, self.geo
        a_desc0 = wgs[wg]["k_desc" if which == "st" else "v_desc"]
        b_desc0 = geo.desc(q_stage, 16)

        def op():
            acc = np.zeros((64, 64))
            for kk in range(D // 16):
                a_off = geo.kstep_offset(BN, kk)
                b_off = geo.kstep_offset(BM, kk)
                A = read_kmajor(sm, advance(a_desc0, a_off), 64)
                B = read_kmajor(sm, advance(b_desc0, b_off), 64)
                acc += A @ B.T
            wgs[wg][which][:] = regs_from(acc, 64)
        return op

    def kv(self, wg, do_stage, q_stage, pa, da, dv_steps=range(64 // 16)):
        """dV += P^T dO over dv_steps (pa not None) and dK += dS^T Q (da not None), in one
        group."""
        sm, wgs, D, BM, geo = self.sm, self.wgs, self.D, self.BM, self.geo
        dob = geo.desc(do_stage, BM * geo.sw)
        qbd = geo.desc(q_stage, BM * geo.sw)
        todo = [x for x in ((pa, dob, "dv", dv_steps), (da, qbd, "dk", range(BM // 16)))
                if x[0] is not None]

        def op():
            for regs, bdesc, name, steps in todo:
                acc = np.zeros((64, D))
                for kk in steps:
                    A = a_from_regs(regs[:, kk])
                    B = read_mnmajor(sm, advance(bdesc, geo.mn_kstep(kk)), D)
                    acc += A @ B
                wgs[wg][name] += regs_from(acc, D)
        return op

    def dq(self, wg):
        sm, wgs, dq_n, geo = self.sm, self.wgs, self.dq_n, self.geo

        def op():
            acc = np.zeros((64, dq_n))
            for kk in range(self.dq_steps):
                At = read_mnmajor(sm, advance(wgs[wg]["ds_desc"], kk * 16 * 128), 64)  # [k, m]
                B = read_mnmajor(sm, advance(wgs[wg]["kt_desc"], geo.mn_kstep(kk)), dq_n)
                acc += At.T @ B
            wgs[wg]["dq"][:] = regs_from(acc, dq_n)
        return op


def emulate_cta(P, out, n_block, kv_head, split, splits, b, reads_at_wait, with_dq=True,
                raw_addr=0x410, mut=frozenset()):
    """One CTA of flash_bwd_dkdv_wgmma_kernel<T, D, kDq = with_dq> (both warpgroups, in step as
    the barriers keep them). out: dict with dq_accum (flat, dq layout rows x D), dk, dv (like
    P.dk) or partial [splits, B, Hkv, Nk, 2D]. mut: TileGeometry mutations (D = 32)."""
    D = P.D
    geo = TileGeometry(D, mut)
    BN, BM, kStages, T = 128, 64, 3, 256
    dv_early = 4 if D <= 64 else 3  # WgmmaBwdTile::kDvEarly
    L = smem_layout(D, raw_addr, kStages, with_dq, tma=False)
    sm = Smem(raw_addr + L["bytes"] + 64)
    kQ, kStat, kDqRow = L["kQ"], L["kStat"], L["kDqRow"]
    sK, sV, sQ, sdO, sdS, sStat, sDq = (L[k] for k in ("sK", "sV", "sQ", "sdO", "sdS", "sStat",
                                                      "sDq"))

    q_row0, k_row0, total_q, nq, nk = P.span(b)
    n0 = n_block * BN
    if n0 >= nk:
        return
    diag, left, right = nk - nq, P.left, P.right
    h_first, h_count, rsqa_qh, qb_begin, nqb, n_iter = dkdv_queries(P, n0, nq, nk, kv_head,
                                                                    split, splits)

    groups = [[]]  # cp.async groups of this CTA (the current, uncommitted one last)

    def cp_async(addr, vals, f32=False):
        op = (addr, vals, f32)
        if reads_at_wait:
            land(op)
        else:
            groups[-1].append(op)

    def land(op):
        addr, vals, f32 = op
        if f32:
            sm.write32f(addr, vals)
        else:
            sm.write_chunk(addr, vals)

    def commit():
        groups.append([])

    def cp_wait(n):
        committed = groups[:-1]
        for grp in committed[:max(0, len(committed) - n)]:
            for op in grp:
                land(op)
            grp.clear()

    def load_tile(dst, arr, rows, row0, valid_rows):
        """load_bwd_tile<T, D, rows, 256> (load_tile_sw128 at D >= 64): arr is the [seq rows, D]
        view of the head."""
        kch = D // 8
        step = T // kch
        assert step % 8 == 0 and rows % step == 0
        for tid in range(T):
            r, c = tid // kch, tid % kch
            to = dst + geo.offset(rows, r, c)
            for i in range(rows // step):
                row = row0 + r + i * step
                assert to + i * step * geo.sw == dst + geo.offset(rows, r + i * step, c)
                vals = arr[row, c * 8: c * 8 + 8] if row < valid_rows else np.zeros(8)
                cp_async(to + i * step * geo.sw, vals)

    Kh = P.k[k_row0:k_row0 + nk, kv_head]
    Vh = P.v[k_row0:k_row0 + nk, kv_head]
    load_tile(sK, Kh, BN, n0, nk)
    load_tile(sV, Vh, BN, n0, nk)
    lse_head = total_q if P.varlen else P.Nq
    lse_base = q_row0 if P.varlen else b * P.Ha * P.Nq
    dq_base = q_row0 if P.varlen else b * P.Hq * P.Nq

    def load_q_block(stage, h, m0):
        qh = rsqa_qh if P.reverse else h
        load_tile(sQ + stage * kQ, P.q[q_row0:q_row0 + nq, qh], BM, m0, nq)
        load_tile(sdO + stage * kQ, P.do[q_row0:q_row0 + nq, h], BM, m0, nq)
        for tid in range(2 * BM):
            i, is_d = tid % BM, tid >= BM
            valid = m0 + i < nq
            row = lse_base + h * lse_head + m0 + i
            src = P.dsum if is_d else P.lse
            cp_async(sStat + ((kStages if is_d else 0) + stage) * kStat + i * 4,
                     src[row] if valid else 0.0, f32=True)

    load_state = {"h": h_first, "qb": 0}

    def load_next(stage):
        load_q_block(stage, load_state["h"], (qb_begin + load_state["qb"]) * BM)
        load_state["qb"] += 1
        if load_state["qb"] == nqb:
            load_state["qb"] = 0
            load_state["h"] += 1

    for j in range(kStages - 1):
        if j < n_iter:
            load_next(j)
        commit()

    # per-warpgroup register state
    wgs = [warpgroup_state(wg, n0, geo, sK, sV, sdS) for wg in range(2)]

    ops = WgmmaOps(sm, wgs, geo, reads_at_wait)
    mma_groups, dq_n = ops.groups, ops.dq_n
    mma_commit, mma_wait, gemm_st, gemm_kv, gemm_dq = ops.commit, ops.wait, ops.st, ops.kv, ops.dq

    # kDq: the pending tile (dq_accum row of its row 0, rows in the sequence) and the bulk
    # groups of each issuing thread (lanes 0 .. 7 of warp w issue row 8 w + lane)
    pend = {"row": 0, "rows": 0}
    bulk_groups = {}  # tid -> list of (global row, smem address)
    dq_accum = out["dq_accum"]

    def bulk_apply(grow, saddr):
        vals = sm.f[saddr // 4: saddr // 4 + D].copy()
        assert not np.isnan(vals).any(), "bulk reduce reads unwritten tile words"
        dq_accum[grow] += vals

    def issue_dq_bulk():
        for tid in range(T):
            lane, warp = tid % 32, tid // 32
            row = warp * 8 + lane
            if lane < 8 and row < pend["rows"]:
                grow = pend["row"] + row
                saddr = sDq + row * kDqRow
                nbytes = D * 4
                assert saddr % 16 == 0 and nbytes % 16 == 0 and (grow * D * 4) % 16 == 0
                if reads_at_wait:
                    bulk_groups.setdefault(tid, []).append((grow, saddr))
                else:
                    bulk_apply(grow, saddr)

    def bulk_wait_read():  # every thread: wait_group.read 0 on its own bulk groups
        for tid in list(bulk_groups):
            for grow, saddr in bulk_groups.pop(tid):
                bulk_apply(grow, saddr)

    def store_dq_tile(wg, dq):
        c0 = wgs[wg]["dq_col0"]
        for w in range(4):
            for j in range(dq_n // 8):
                for half_row in (0, 8):  # the two float2 stores of tile j
                    words = []
                    for lane in range(32):
                        tt = w * 32 + lane
                        g, t = lane // 4, lane % 4
                        r = w * 16 + g + half_row
                        col = c0 + 8 * j + 2 * t
                        addr = sDq + r * kDqRow + col * 4
                        assert addr % 8 == 0
                        e0 = 2 if half_row else 0
                        sm.write32f(addr, dq[tt, 4 * j + e0] * P.scale)
                        sm.write32f(addr + 4, dq[tt, 4 * j + e0 + 1] * P.scale)
                        words.append((addr // 4, addr // 4 + 1))
                    for hw in range(2):  # 8-byte stores: two half-warp wavefronts
                        banks = [wd % 32 for pair in words[16 * hw: 16 * hw + 16] for wd in pair]
                        assert len(set(banks)) == 32, "dQ tile store bank conflict"

    qb, h = 0, h_first
    for it in range(n_iter):
        stage = it % kStages
        m0 = (qb_begin + qb) * BM
        qh = rsqa_qh if P.reverse else h
        cp_wait(kStages - 2)
        # barrier 1 (the copies go out after the S^T / dP^T issue)
        q_stage, do_stage = sQ + stage * kQ, sdO + stage * kQ
        for wg in range(2):
            mma_commit(wg, gemm_st(wg, q_stage, "st"))
            mma_commit(wg, gemm_st(wg, do_stage, "dpt"))
        if with_dq:
            issue_dq_bulk()  # the previous block's tile (stored before barrier 1)
        if it + kStages - 1 < n_iter:
            load_next((it + kStages - 1) % kStages)
        commit()
        q_last = min(m0 + BM, nq) - 1
        pas, das = [None, None], [None, None]
        for wg in range(2):
            S = wgs[wg]
            wg_key0 = n0 + wg * 64
            full = (wg_key0 + 64 <= nk and m0 + BM <= nq
                    and (left < 0 or wg_key0 >= q_last + diag - left)
                    and (right < 0 or wg_key0 + 63 <= m0 + diag + right))
            mma_wait(wg, 1)
            st = S["st"]
            l_tile = sStat + stage * kStat
            d_tile = sStat + (kStages + stage) * kStat
            i = np.arange(32)[None, :]
            col = 8 * (i // 4) + 2 * T_OF[:, None] + (i % 2)     # query column in the block
            lval = sm.f[(l_tile + 4 * col) // 4]
            with np.errstate(over="ignore", invalid="ignore"):
                st[:] = np.exp2(st * (P.scale * LOG2E) - lval * LOG2E)
            if not full:
                qrow = m0 + col
                keyv = S["key"][np.arange(128)[:, None], (i // 2) % 2]
                ok = (qrow < nq) & key_visible(keyv, qrow, nk, diag, left, right)
                st[:] = np.where(ok, st, 0.0)
            else:
                assert np.all(m0 + col < nq)
            assert not np.isnan(st).any()
            # P^T's first dv_early k-steps packed (the rest stay NaN until the dS^T loop),
            # their dV issued in its own group; dP^T's wait leaves it running
            pas[wg] = np.full((128, 4, 4, 2), np.nan)
            pas[wg][:, :dv_early] = pack(st)[:, :dv_early]
            mma_commit(wg, gemm_kv(wg, do_stage, q_stage, pas[wg], None, range(dv_early)))
            mma_wait(wg, 1)
            dpt = S["dpt"]
            dval = sm.f[(d_tile + 4 * col) // 4]
            dpt[:] = st * (dpt - dval)
            assert not np.isnan(dpt).any()
            # the dS^T loop packs P^T's remaining k-steps (in the emulated group the early op,
            # when run at its wait, still sees only its own k-steps' fragments)
            late = np.array(pas[wg])
            late[:, dv_early:] = pack(st)[:, dv_early:]
            pas[wg] = late
            das[wg] = pack(dpt)
            if with_dq:
                # the dS^T tile takes the dS^T fragment registers: a_i of k-step kk is row
                # g + 8 (i % 2), column tile 2 kk + i / 2
                for kk in range(4):
                    for i in range(4):
                        row = S["key_local0"] + 8 * (i % 2)
                        for tt in range(128):
                            off = sw128_offset(BN, row[tt], 2 * kk + i // 2) + 4 * T_OF[tt]
                            sm.write16(sdS + off, das[wg][tt, kk, i, 0])
                            sm.write16(sdS + off + 2, das[wg][tt, kk, i, 1])
            mma_commit(wg, gemm_kv(wg, do_stage, q_stage, pas[wg], das[wg],
                                   range(dv_early, BM // 16)))
        if not with_dq:
            # kDq = false: each warpgroup waits for its dV / dK group (no barrier 2); barrier 1
            # of the next step follows before its copies refill this stage
            for wg in range(2):
                mma_wait(wg, 0)
            qb += 1
            if qb == nqb:
                qb = 0
                h += 1
            continue
        bulk_wait_read()
        # barrier 2
        for wg in range(2):
            mma_commit(wg, gemm_dq(wg))
            mma_wait(wg, 0)
            store_dq_tile(wg, wgs[wg]["dq"])
        pend["row"] = dq_base + qh * lse_head + m0
        pend["rows"] = min(BM, nq - m0)
        qb += 1
        if qb == nqb:
            qb = 0
            h += 1
    cp_wait(0)
    if with_dq and n_iter > 0:
        issue_dq_bulk()  # after a CTA barrier: the last block's tile
        bulk_wait_read()  # wait_group 0
    assert not bulk_groups
    assert all(not gq for gq in mma_groups)

    store_dkdv(P, out, wgs, nk, k_row0, kv_head, split, splits, b)


# ---- SQA_CUDA_BWD=wgmmatma: flash_bwd_dkdv_wgmma_tma_kernel (dkdv_wgmma_body, kTma) ------------
class Deadlock(Exception):
    pass


class MBarrier:
    """mbarrier (PTX): a phase completes when `count` arrivals were made and the transaction count
    is zero; then the phase bit flips and the pending count resets. try_wait.parity(p) succeeds iff
    the phase with parity p completed, i.e. the current phase's parity differs from p (so a wait
    on the parity of the phase in progress blocks until it completes)."""

    def __init__(self, count):
        self.count, self.pending, self.tx, self.phase = count, count, 0, 0

    def _check(self):
        assert self.pending >= 0, "mbarrier: more arrivals than the count in one phase"
        if self.pending == 0 and self.tx == 0:
            self.phase ^= 1
            self.pending = self.count

    def arrive(self):
        self.pending -= 1
        self._check()

    def arrive_expect_tx(self, nbytes):
        self.tx += nbytes
        self.pending -= 1
        self._check()

    def complete_tx(self, nbytes):
        self.tx -= nbytes
        self._check()

    def done(self, parity):
        return self.phase != parity


class NamedBarrier:
    """bar.sync / bar.arrive id, 256 over the two consumer warpgroups (each a unit here); gen
    counts the completed generations."""

    def __init__(self, parties):
        self.parties, self.arrived, self.gen = parties, 0, 0

    def arrive(self):  # bar.arrive: counts this unit without waiting
        self.arrived += 1
        assert self.arrived <= self.parties, "named barrier over-arrived"
        if self.arrived == self.parties:
            self.arrived, self.gen = 0, self.gen + 1

    def sync(self):
        gen = self.gen
        self.arrived += 1
        if self.arrived == self.parties:
            self.arrived, self.gen = 0, self.gen + 1
        else:
            yield lambda: self.gen != gen


def tma_box_write(sm, dst, tensor, dims, coords, swizzle=128, rows=64):
    """cp.async.bulk.tensor.4d with a CU_TENSOR_MAP_SWIZZLE_128B map over (D, heads, rows, batch),
    box (64, 1, rows, 1): `rows` lines of 128 bytes, 16-byte chunk j of line r at chunk j ^ (r % 8)
    (the TMA swizzle pattern, relative to a 1024-byte-aligned destination); elements at
    coordinates past the extent `dims` are zeros. tensor[batch, row, head, col]. Returns the
    bytes counted by complete_tx (the whole box). The backward's boxes have 64 rows, the
    forward's (wgmma_emulate.py tma) 128."""
    assert dst % 1024 == 0, "128-byte swizzle: destination 1024-byte aligned"
    assert rows <= 256, "a TMA box dimension is at most 256"
    c0, h, r0, bb = coords
    Dd, H, N, B = dims
    for r in range(rows):
        row = r0 + r
        for j in range(8):
            col = c0 + 8 * j
            inside = 0 <= h < H and 0 <= bb < B and 0 <= row < N and 0 <= col and col + 8 <= Dd
            vals = tensor[bb, row, h, col:col + 8] if inside else np.zeros(8)
            if swizzle == 128:
                jj = j ^ (r % 8)
            elif swizzle == 64:  # mutation: the 64-byte pattern
                jj = j ^ ((r % 8) >> 1)
            else:
                jj = j
            sm.write_chunk(dst + r * 128 + jj * 16, vals)
    return rows * 64 * 2


def run_programs(progs, inflight, rng, policy, producers=("producer",)):
    """Runs programs (generators that yield None where another one may run, or a predicate that
    must hold before they go on) and pending asynchronous operations (callables in `inflight`,
    removed when they land) under an interleaving `policy`: 'random' (any runnable program or
    pending operation next), 'consumers' (greedy for the programs not in `producers`), the name
    of a program (greedy for it), 'late' (operations land only when no program can run), 'c1-late'
    (program c1 runs only when nothing else can: a consumer warpgroup held back, so the other
    one runs ahead as far as the barriers let it). No runnable program and nothing in flight with
    a program unfinished = Deadlock."""
    progs = dict(progs)
    waits = {name: None for name in progs}
    while progs:
        ready = [n for n in progs if waits[n] is None or waits[n]()]
        if not ready and not inflight:
            raise Deadlock(f"deadlock: {sorted(progs)} blocked, nothing in flight")
        if policy == "consumers":
            favoured = [n for n in ready if n not in producers]
        else:
            favoured = [n for n in ready if n == policy]
        if policy == "late":  # async operations land only when no program can run
            options = ready or ["async"]
        elif policy == "c1-late":
            options = [n for n in ready if n != "c1"] + (["async"] if inflight else []) or ready
        elif favoured and not (inflight and rng.random() < 0.3):  # greedy for one side
            options = favoured
        else:
            options = ready + (["async"] if inflight else [])
        pick = options[rng.integers(len(options))]
        if pick == "async":
            inflight.pop(rng.integers(len(inflight)))()
            continue
        try:
            waits[pick] = next(progs[pick])
        except StopIteration:
            del progs[pick]


def emulate_cta_tma(P, out, n_block, kv_head, split, splits, b, reads_at_wait, rng, policy,
                    mut=frozenset(), raw_addr=0x410, with_dq=True):
    """One CTA of flash_bwd_dkdv_wgmma_tma_kernel<T, D, kDq = with_dq> (dense): the producer warp
    and the two consumer warpgroups as separate programs (generators that yield at every point
    where another one may run), run under an interleaving `policy`: 'random' (any runnable
    program or pending async operation next), 'producer' / 'consumers' (greedy: that side
    first), 'late' (async operations land only when no program can run), 'c1-late' (consumer
    warpgroup 1 only when nothing else can run). Async operations (TMA boxes with complete_tx,
    each producer lane's lse / D cp.asyncs with their noinc arrival, the consumers' K / V
    cp.asyncs, wgmma groups and bulk reduce-adds per the timing mode) land when the scheduler
    picks them. No runnable program and nothing in flight with a program unfinished = deadlock.
    mut: mutations of the kernel (each must be caught). with_dq = False (deterministic): the
    consumers' step has no dS^T tile, dQ tile, bulk adds or barrier 2 and ends with the wait for
    its dV / dK group, then releases the stage."""
    assert not P.varlen
    D = P.D
    assert D >= 64, "the TMA producer form exists for D = 64 and 128 only"
    geo = TileGeometry(D)
    BN, BM, kStages, T = 128, 64, 3, 256
    dv_early = 4 if D == 64 else 2  # WgmmaBwdTile<T, D, kDq, true>::kDvEarly (either kDq)
    L = smem_layout(D, raw_addr, kStages, with_dq, tma=True)
    sm = Smem(raw_addr + L["bytes"] + 64)
    kQ, kStat, kDqRow = L["kQ"], L["kStat"], L["kDqRow"]
    sK, sV, sQ, sdO, sdS, sStat, sDq, sFull, sEmpty = (
        L[k] for k in ("sK", "sV", "sQ", "sdO", "sdS", "sStat", "sDq", "sFull", "sEmpty"))

    q_row0, k_row0, total_q, nq, nk = P.span(b)
    n0 = n_block * BN
    if n0 >= nk:
        return
    diag, left, right = nk - nq, P.left, P.right
    h_first, h_count, rsqa_qh, qb_begin, nqb, n_iter = dkdv_queries(P, n0, nq, nk, kv_head,
                                                                    split, splits)
    lse_head, lse_base, dq_base = P.Nq, b * P.Ha * P.Nq, b * P.Hq * P.Nq

    # the global tensors as the tensor maps see them: [batch, row, head, col]
    q4 = P.q.reshape(P.B, P.Nq, P.Hq, D)
    do4 = P.do.reshape(P.B, P.Nq, P.Ha, D)
    full = [MBarrier(33) for _ in range(kStages)]
    empty = [MBarrier(8) for _ in range(kStages)]
    inflight = []  # async operations not landed yet (callables)

    # ---- consumers' own asynchronous work (per warpgroup) ----
    # cp.async as the PTX ISA defines it: a copy may land at any time after its issue (each one
    # is an async operation the scheduler may pick); cp.async.commit_group closes the thread's
    # current group; cp.async.wait_group N lands every committed group but the N most recent and
    # does NOT cover copies not yet committed (cp.async.wait_all = commit_group + wait_group 0).
    cp_state = [{"committed": [], "open": []} for _ in range(2)]

    def cp_async(wg, addr, vals):
        done = []

        def kv_copy():
            if not done:
                done.append(True)
                sm.write_chunk(addr, vals)
        cp_state[wg]["open"].append(kv_copy)
        inflight.append(kv_copy)

    def cp_commit(wg):
        st = cp_state[wg]
        st["committed"].append(st["open"])
        st["open"] = []

    def cp_wait_group(wg, n):
        st = cp_state[wg]
        keep = len(st["committed"]) - n
        for grp in st["committed"][:max(keep, 0)]:
            for op in grp:
                if op in inflight:
                    inflight.remove(op)
                op()
        st["committed"] = st["committed"][max(keep, 0):]

    def load_tile(wg, dst, arr, rows, row0, valid_rows):
        """load_tile_sw128<T, D, rows, 256>: this warpgroup's threads' share."""
        kch = D // 8
        step = T // kch
        for tid in range(128 * wg, 128 * wg + 128):
            r, c = tid // kch, tid % kch
            to = dst + sw128_offset(rows, r, c)
            for i in range(rows // step):
                row = row0 + r + i * step
                vals = arr[row, c * 8: c * 8 + 8] if row < valid_rows else np.zeros(8)
                cp_async(wg, to + i * step * 128, vals)

    wgs = [warpgroup_state(wg, n0, geo, sK, sV, sdS) for wg in range(2)]
    for S in wgs:
        S["pend"] = {"row": 0, "rows": 0}
    ops = WgmmaOps(sm, wgs, geo, reads_at_wait)
    mma_groups, dq_n = ops.groups, ops.dq_n
    mma_commit, mma_wait, gemm_st, gemm_kv, gemm_dq = ops.commit, ops.wait, ops.st, ops.kv, ops.dq

    bulk_groups = {}  # tid -> [(global row, smem address)]
    dq_accum = out["dq_accum"]

    def bulk_apply(grow, saddr):
        vals = sm.f[saddr // 4: saddr // 4 + D].copy()
        assert not np.isnan(vals).any(), "bulk reduce reads unwritten tile words"
        dq_accum[grow] += vals

    def issue_dq_bulk(wg):
        pend = wgs[wg]["pend"]
        for tid in range(128 * wg, 128 * wg + 128):
            lane, warp = tid % 32, tid // 32
            row = warp * 8 + lane  # dq_issue_row
            if lane < 8 and row < pend["rows"]:
                grow, saddr = pend["row"] + row, sDq + row * kDqRow
                if reads_at_wait:
                    bulk_groups.setdefault(tid, []).append((grow, saddr))
                else:
                    bulk_apply(grow, saddr)

    def bulk_wait_read(wg):
        for tid in [t for t in bulk_groups if t // 128 == wg]:
            for grow, saddr in bulk_groups.pop(tid):
                bulk_apply(grow, saddr)

    def store_dq_tile(wg):
        dq, c0 = wgs[wg]["dq"], wgs[wg]["dq_col0"]
        for tt in range(128):
            w, lane = tt // 32, tt % 32
            g, t = lane // 4, lane % 4
            for j in range(dq_n // 8):
                for half_row in (0, 8):
                    r = w * 16 + g + half_row
                    addr = sDq + r * kDqRow + (c0 + 8 * j + 2 * t) * 4
                    e0 = 2 if half_row else 0
                    sm.write32f(addr, dq[tt, 4 * j + e0] * P.scale)
                    sm.write32f(addr + 4, dq[tt, 4 * j + e0 + 1] * P.scale)

    bar1, bar2 = NamedBarrier(2), NamedBarrier(2)

    # ---- the producer warp (threads 256 .. 287) ----
    def producer():
        h, qb = h_first, 0
        for it in range(n_iter):
            stage = it % kStages
            fb = full[stage]
            if it >= kStages:
                par = ((it // kStages) & 1) ^ (0 if "empty_parity" in mut else 1)
                yield lambda e=empty[stage], par=par: e.done(par)
            m0 = (qb_begin + qb) * BM
            qh = rsqa_qh if P.reverse else h
            nbytes = 2 * kQ + (16 if "expect_tx_long" in mut else 0)
            if "expect_tx_short" in mut:
                nbytes = kQ
            fb.arrive_expect_tx(nbytes)
            for c in range(D // 64):
                col = 0 if "box_col" in mut else c * 64
                row = m0 + (1 if "box_row" in mut else 0)
                head_q = h if "box_head" in mut else qh
                sw = 64 if "swizzle64" in mut else 128
                for dst, ten, hh in ((sQ + stage * kQ + c * BM * 128, q4, head_q),
                                     (sdO + stage * kQ + c * BM * 128, do4, h)):
                    def box(dst=dst, ten=ten, hh=hh, col=col, row=row, sw=sw, fb=fb):
                        # the map's extent (D, heads, seqlen_q, batch), innermost first
                        dims = (ten.shape[3], ten.shape[2], ten.shape[1], ten.shape[0])
                        fb.complete_tx(tma_box_write(sm, dst, ten, dims, (col, hh, row, b), sw))
                    inflight.append(box)
                yield None
            for lane in range(32):
                copies = []
                for i in range(2 * BM // 32):
                    c = lane + 32 * i
                    r, is_d = c % BM, c >= BM
                    valid = m0 + r < nq
                    src = P.dsum if is_d else P.lse
                    val = src[lse_base + h * lse_head + m0 + r] if valid else 0.0
                    copies.append((sStat + ((kStages if is_d else 0) + stage) * kStat + r * 4,
                                   val))

                def lane_op(copies=copies, fb=fb):
                    for addr, val in copies:
                        sm.write32f(addr, val)
                    fb.arrive()  # cp.async.mbarrier.arrive.noinc
                inflight.append(lane_op)
                if lane % 8 == 7:
                    yield None
            qb += 1
            if qb == nqb:
                qb, h = 0, h + 1
        # cp.async.wait_all: the lanes' copies landed before the warp exits
        yield lambda: not any(getattr(op, "__name__", "") == "lane_op" for op in inflight)

    # ---- a consumer warpgroup (threads 128 wg .. 128 wg + 127) ----
    def consumer(wg):
        S = wgs[wg]
        load_tile(wg, sK, P.k[k_row0:k_row0 + nk, kv_head], BN, n0, nk)
        load_tile(wg, sV, P.v[k_row0:k_row0 + nk, kv_head], BN, n0, nk)
        if "kv_wait_group" in mut:
            # the kernel before the fix: cp_async_wait<0> (wait_group 0) with the K / V copies
            # never committed, so it waited for nothing
            cp_wait_group(wg, 0)
        else:
            cp_commit(wg)  # cp_async_wait_all: commit_group + wait_group 0 (+ the fence;
            cp_wait_group(wg, 0)  # barrier 1 of step 0 publishes K / V to both warpgroups)
        yield None
        qb, h = 0, h_first
        for it in range(n_iter):
            stage = it % kStages
            m0 = (qb_begin + qb) * BM
            qh = rsqa_qh if P.reverse else h
            if "no_full_wait" not in mut:
                flip = "full_parity" in mut or ("det_full_parity" in mut and not with_dq)
                par = ((it // kStages) & 1) ^ (1 if flip else 0)
                yield lambda fb=full[stage], par=par: fb.done(par)
            if "det_no_bar1" not in mut:
                yield from bar1.sync()
            q_stage, do_stage = sQ + stage * kQ, sdO + stage * kQ
            mma_commit(wg, gemm_st(wg, q_stage, "st"))
            mma_commit(wg, gemm_st(wg, do_stage, "dpt"))
            if with_dq:
                issue_dq_bulk(wg)
            yield None
            q_last = min(m0 + BM, nq) - 1
            wg_key0 = n0 + wg * 64
            fullb = (wg_key0 + 64 <= nk and m0 + BM <= nq
                     and (left < 0 or wg_key0 >= q_last + diag - left)
                     and (right < 0 or wg_key0 + 63 <= m0 + diag + right))
            mma_wait(wg, 1)
            st = S["st"]
            i = np.arange(32)[None, :]
            col = 8 * (i // 4) + 2 * T_OF[:, None] + (i % 2)
            lval = sm.f[(sStat + stage * kStat + 4 * col) // 4]
            with np.errstate(over="ignore", invalid="ignore"):
                st[:] = np.exp2(st * (P.scale * LOG2E) - lval * LOG2E)
            if not fullb:
                qrow = m0 + col
                keyv = S["key"][np.arange(128)[:, None], (i // 2) % 2]
                ok = (qrow < nq) & key_visible(keyv, qrow, nk, diag, left, right)
                st[:] = np.where(ok, st, 0.0)
            assert not np.isnan(st).any(), "P^T from unlanded Q / K / lse"
            pa = np.full((128, 4, 4, 2), np.nan)
            pa[:, :dv_early] = pack(st)[:, :dv_early]
            mma_commit(wg, gemm_kv(wg, do_stage, q_stage, pa, None, range(dv_early)))
            yield None
            mma_wait(wg, 1)
            dpt = S["dpt"]
            dval = sm.f[(sStat + (kStages + stage) * kStat + 4 * col) // 4]
            dpt[:] = st * (dpt - dval)
            assert not np.isnan(dpt).any(), "dS^T from unlanded dO / V / D"
            late = np.array(pa)
            late[:, dv_early:] = pack(st)[:, dv_early:]
            da = pack(dpt)
            for kk in range(4 if with_dq else 0):  # kDq = false: no dS^T tile
                for ii in range(4):
                    row = S["key_local0"] + 8 * (ii % 2)
                    for tt in range(128):
                        off = sw128_offset(BN, row[tt], 2 * kk + ii // 2) + 4 * T_OF[tt]
                        sm.write16(sdS + off, da[tt, kk, ii, 0])
                        sm.write16(sdS + off + 2, da[tt, kk, ii, 1])
            mma_commit(wg, gemm_kv(wg, do_stage, q_stage, late, da, range(dv_early, BM // 16)))
            if not with_dq:
                # kDq = false: the step ends with the wait for its dV / dK group (the only wait
                # that retires the wgmmas reading Q / dO of the stage), then releases the stage
                if "det_early_empty" in mut:  # released while dV / dK may still read it
                    for _ in range(4):
                        empty[stage].arrive()
                    yield None
                mma_wait(wg, 0)
                if "det_early_empty" not in mut and "no_empty_arrive" not in mut:
                    for _ in range(4):  # lane 0 of each of the warpgroup's 4 warps
                        empty[stage].arrive()
                        yield None
                qb += 1
                if qb == nqb:
                    qb, h = 0, h + 1
                continue
            if "early_empty" in mut:  # release before the wgmmas reading the stage completed
                for _ in range(4):
                    empty[stage].arrive()
            yield None
            bulk_wait_read(wg)
            yield from bar2.sync()
            mma_commit(wg, gemm_dq(wg))
            mma_wait(wg, 0)
            if "early_empty" not in mut and "no_empty_arrive" not in mut:
                for _ in range(4):  # lane 0 of each of the warpgroup's 4 warps
                    empty[stage].arrive()
                    yield None
            store_dq_tile(wg)
            S["pend"]["row"] = dq_base + qh * lse_head + m0
            S["pend"]["rows"] = min(BM, nq - m0)
            qb += 1
            if qb == nqb:
                qb, h = 0, h + 1
        if with_dq and n_iter > 0:
            yield from bar1.sync()  # consumer_barrier before the last tile's adds
            issue_dq_bulk(wg)
            bulk_wait_read(wg)
        assert not mma_groups[wg]

    run_programs({"producer": producer(), "c0": consumer(0), "c1": consumer(1)}, inflight, rng,
                 policy)
    assert not inflight and not bulk_groups

    store_dkdv(P, out, wgs, nk, k_row0, kv_head, split, splits, b)


def run_case(D, Hq, Hkv, reverse, lens_q, lens_k, left, right, varlen, splits, seed,
             reads_at_wait, gain=1.0, with_dq=True, tma=None, mut=frozenset()):
    """tma: None (the wgmma kernel, with TileGeometry mutations mut) or (policy, schedule seed,
    mutations) for wgmmatma."""
    rng = np.random.default_rng(seed)
    P = Problem(rng, D, Hq, Hkv, reverse, lens_q, lens_k, left, right, varlen, gain)
    assert splits == 1 or (not varlen and not reverse)
    rows_dq = P.Hq * P.rows_q
    out = {"dq_accum": np.zeros((rows_dq, D)),
           "dk": np.full_like(P.dk, np.nan), "dv": np.full_like(P.dv, np.nan),
           "partial": np.full((splits, P.B, Hkv, P.Nk, 2 * D), np.nan)}
    n_blocks = (P.Nk + 127) // 128
    for b in range(P.B):
        for x in range(n_blocks * Hkv * splits):
            per_block = Hkv * splits
            if tma is not None:
                policy, sched_seed, mut = tma
                emulate_cta_tma(P, out, x // per_block, x % per_block // splits, x % splits,
                                splits, b, reads_at_wait,
                                np.random.default_rng([sched_seed, b, x]), policy, mut,
                                with_dq=with_dq)
            else:
                emulate_cta(P, out, x // per_block, x % per_block // splits, x % splits, splits,
                            b, reads_at_wait, with_dq, mut=mut)
    if splits > 1:  # flash_bwd_dkdv_reduce_kernel (dense)
        tot = out["partial"].sum(0)  # [B, Hkv, Nk, 2D]
        for b in range(P.B):
            out["dk"][b * P.Nk:(b + 1) * P.Nk] = tot[b, :, :, :D].transpose(1, 0, 2)
            out["dv"][b * P.Nk:(b + 1) * P.Nk] = tot[b, :, :, D:].transpose(1, 0, 2)
    # dq_accum rows -> dQ (flash_bwd_dq_convert_kernel's row mapping)
    dq = np.full_like(P.dq, np.nan)
    for rid in range(rows_dq):
        if varlen:
            tq = P.cu_q[-1]
            dq[rid % tq, rid // tq] = out["dq_accum"][rid]
        else:
            qrow, qh, b = rid % P.Nq, (rid // P.Nq) % P.Hq, rid // (P.Nq * P.Hq)
            dq[b * P.Nq + qrow, qh] = out["dq_accum"][rid]
    errs = []
    if with_dq:
        checks = (("dQ", dq, P.dq), ("dK", out["dk"], P.dk), ("dV", out["dv"], P.dv))
    else:
        # kDq = false leaves dQ to flash_bwd_dq_kernel: the workspace must stay untouched
        assert not out["dq_accum"].any(), "kDq = false wrote dq_accum"
        errs.append(0.0)
        checks = (("dK", out["dk"], P.dk), ("dV", out["dv"], P.dv))
    for name, got, ref in checks:
        assert not np.isnan(got).any(), f"{name}: unwritten elements"
        errs.append(np.abs(got - ref).max() / max(1.0, np.abs(ref).max()))
    layout = f"Hq={Hq} Hkv={Hkv}{' rSQA' if reverse else ''}"
    variant = "" if tma is None else f"wgmmatma policy={tma[0]}/{tma[1]} "
    print(f"{variant}D={D} {layout} lens_q={lens_q} lens_k={lens_k} window=({left},{right}) "
          f"varlen={varlen} splits={splits} reads_at_wait={reads_at_wait}"
          f"{'' if with_dq else ' kDq=false'}: "
          f"rel err dQ {errs[0]:.1e}{'' if with_dq else ' (not computed)'} dK {errs[1]:.1e} "
          f"dV {errs[2]:.1e}", flush=True)
    assert max(errs) < 1e-12, errs


if __name__ == "__main__":
    quick = "quick" in sys.argv[1:]
    # (D, Hq, Hkv, reverse, lens_q, lens_k, left, right, varlen, splits)
    cases = [
        (64, 2, 2, False, [150], [200], -1, -1, False, 1),    # MHA, N_q != N_k
        (128, 2, 2, False, [200], [130], -1, 0, False, 1),    # causal, N_q > N_k
        (64, 4, 1, False, [130], [130], -1, 0, False, 1),     # MQA (one KV head, 4 heads)
        (128, 4, 2, False, [100], [300], 37, 5, False, 1),    # GQA, window
        (64, 2, 4, True, [140], [170], -1, -1, False, 1),     # rSQA (H_kv multiple of H_q)
        (128, 1, 3, True, [90], [90], 20, 0, False, 1),       # rSQA, sliding causal
        (64, 4, 1, False, [129], [1], -1, 0, False, 1),       # one key
        (128, 6, 2, False, [70], [260], -1, 3, False, 2),     # GQA G = 3, 2 splits (uneven)
        (64, 8, 2, False, [150], [150], -1, 0, False, 3),     # G = 4, 3 splits (uneven)
        (64, 4, 2, False, [70, 0, 150], [100, 60, 150], -1, 0, True, 1),   # varlen, empty q
        (128, 2, 4, True, [65, 130], [200, 1], -1, -1, True, 1),           # varlen rSQA
        (64, 2, 2, False, [100, 100], [300, 300], 50, 50, False, 1),        # batch 2, window
        # D = 32 (SQA_CUDA_BWD=wgmma only): 64-byte swizzled K / V / Q / dO, m64n32 dV / dK,
        # m64n16 dQ per warpgroup
        (32, 2, 2, False, [150], [200], -1, -1, False, 1),    # MHA, N_q != N_k
        (32, 4, 2, False, [200], [130], -1, 0, False, 1),     # GQA causal, N_q > N_k
        (32, 2, 4, True, [140], [170], 20, 0, False, 1),      # rSQA, sliding causal
        (32, 4, 1, False, [100], [300], 37, 5, False, 1),     # MQA, window
        (32, 6, 2, False, [70], [260], -1, 3, False, 2),      # G = 3, 2 splits (uneven)
        (32, 4, 2, False, [70, 0, 150], [100, 60, 150], -1, 0, True, 1),   # varlen, empty q
    ]
    if quick:
        cases = cases[:3] + [c for c in cases if c[0] == 32][:2]
    if "tma" in sys.argv[1:] or "tma-mutations" in sys.argv[1:]:
        # wgmmatma (dense cases): the producer and consumer programs under 6 interleavings
        # (two random schedules, producer-greedy, consumer-greedy, async-late, consumer
        # warpgroup 1 late), both timing modes
        policies = [("random", 1), ("random", 2), ("producer", 3), ("consumers", 4), ("late", 5),
                    ("c1-late", 6)]
        if "tma" in sys.argv[1:]:
            for i, (D, Hq, Hkv, rev, lq, lk, l, r, vl, sp) in enumerate(cases):
                if vl or D == 32:  # the TMA form: dense batches, D = 64 and 128
                    continue
                for mode in (True, False):
                    # kDq = true (atomic dQ) and false (deterministic, SQA_CUDA_BWD=wgmmatma)
                    for with_dq in (True, False):
                        for pol, ss in policies:
                            run_case(D, Hq, Hkv, rev, lq, lk, l, r, vl, sp, seed=i,
                                     reads_at_wait=mode, gain=2.0 if i % 2 else 1.0,
                                     with_dq=with_dq, tma=(pol, ss, frozenset()))
            print("ALL OK (wgmmatma, both schemes)")
        if "tma-mutations" in sys.argv[1:]:
            # each mutation must fail (wrong or NaN result, a failed assertion, or a deadlock)
            # under at least one interleaving / timing mode; cases: MQA causal (12 steps through
            # 3 stages), rSQA D = 128 (Q head != dO head, two column halves)
            mcases = [(64, 4, 1, False, [130], [130], -1, 0, False, 1, 2),
                      (128, 2, 4, True, [140], [170], -1, -1, False, 1, 4)]
            # det_*: the deterministic form (kDq = false), run only in that scheme: the stage
            # released before the wait for its dV / dK group (the wgmmas reading Q / dO), the
            # wrong phase parity of the full barrier, barrier 1 left out (K / V copied by the
            # other warpgroup not yet landed, as the step no longer has barrier 2 either);
            # det_no_empty_arrive: the deterministic step never releases its stage
            mutations = ["full_parity", "no_full_wait", "empty_parity", "no_empty_arrive",
                         "early_empty", "expect_tx_short", "expect_tx_long", "swizzle64",
                         "box_row", "box_col", "box_head", "kv_wait_group",
                         "det_early_empty", "det_full_parity", "det_no_bar1",
                         "det_no_empty_arrive"]
            for m in mutations:
                caught = None
                with_dq = not m.startswith("det_")
                km = m[len("det_"):] if m == "det_no_empty_arrive" else m
                for D, Hq, Hkv, rev, lq, lk, l, r, vl, sp, i in mcases:
                    if caught or (m in ("box_col", "box_head") and D == 64):
                        continue
                    for mode in (True, False):
                        for pol, ss in policies:
                            try:
                                import contextlib
                                import io
                                with contextlib.redirect_stdout(io.StringIO()):
                                    run_case(D, Hq, Hkv, rev, lq, lk, l, r, vl, sp, seed=i,
                                             reads_at_wait=mode, with_dq=with_dq,
                                             tma=(pol, ss, frozenset([km])))
                            except (AssertionError, Deadlock) as e:
                                caught = (f"D={D} reads_at_wait={mode} policy={pol}: "
                                          f"{type(e).__name__} {str(e)[:70]}")
                                break
                        if caught:
                            break
                print(f"mutation {m}: {'CAUGHT ' + caught if caught else 'NOT CAUGHT'}",
                      flush=True)
                assert caught, m
            print("ALL MUTATIONS CAUGHT (wgmmatma)")
        sys.exit(0)
    if "d32-mutations" in sys.argv[1:]:
        # the D = 32 layout written wrong on the kernel's side (TileGeometry); each must fail
        # (a wrong result or a failed assertion) in some case, timing mode and scheme: the
        # loader's swizzle on bits 6-7 instead of 7-8, SBO 1024 (D = 64's), layout type 1
        # (128-byte swizzle), K-major k-steps of 64 bytes, MN-major k-steps of 16 x 128 bytes,
        # warpgroup 1's dQ columns 64 bytes (not 32) into the rows
        mcases = [(32, 2, 2, False, [150], [200], -1, -1, False, 1, 0),
                  (32, 4, 2, False, [200], [130], -1, 0, False, 1, 1)]
        mutations = ["swizzle_bit", "sbo", "layout_type", "kstep_kmajor", "kstep_mn", "dq_col"]
        for m in mutations:
            caught = None
            for D, Hq, Hkv, rev, lq, lk, l, r, vl, sp, i in mcases:
                for mode in (True, False):
                    for with_dq in (True, False):
                        if caught:
                            break
                        try:
                            import contextlib
                            import io
                            with contextlib.redirect_stdout(io.StringIO()):
                                run_case(D, Hq, Hkv, rev, lq, lk, l, r, vl, sp, seed=i,
                                         reads_at_wait=mode, with_dq=with_dq,
                                         mut=frozenset([m]))
                        except AssertionError as e:
                            caught = (f"D={D} reads_at_wait={mode} kDq={with_dq}: "
                                      f"{str(e)[:70]}")
            print(f"mutation {m}: {'CAUGHT ' + caught if caught else 'NOT CAUGHT'}", flush=True)
            assert caught, m
        print("ALL MUTATIONS CAUGHT (D = 32)")
        sys.exit(0)
    for i, (D, Hq, Hkv, rev, lq, lk, l, r, vl, sp) in enumerate(cases):
        for mode in (True, False):
            # kDq = true (the default scheme) and false (deterministic: dK / dV only)
            for with_dq in (True, False):
                run_case(D, Hq, Hkv, rev, lq, lk, l, r, vl, sp, seed=i, reads_at_wait=mode,
                         gain=2.0 if i % 2 else 1.0, with_dq=with_dq)
    print("ALL OK")
