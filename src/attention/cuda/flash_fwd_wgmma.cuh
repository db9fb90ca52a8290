// Hopper (sm_90a) prefill forward with warpgroup MMA (wgmma.mma_async): FlashAttention-3 style,
// simplified. The default at head_dim 64 and 128 is its ping-pong schedule (SQA_CUDA_FWD=wgmmapp
// or unset); SQA_CUDA_FWD=wgmma selects the in-step schedule (kSched, below;
// flash_fwd_launch.cuh).
//
// Design
//   CTA = kWarpGroups warpgroups of 128 threads; each owns 64 query rows (the wgmma M), so
//   BM = 64 * kWarpGroups, and visits the key blocks of BN keys that its rows can see.
//   S = Q K^T: wgmma m64nBNk16, A = Q and B = K from shared memory (both K-major).
//   Online softmax in base 2 on the fp32 S accumulators, in registers; a row's max and sum need
//   only the 4 lanes of a quad. O += P V: wgmma m64nDk16 with A = P from registers (the S
//   accumulators rounded to 16 bits are the A fragments; see wgmma_sm90.cuh) and B = V from
//   shared memory, MN-major (the transpose bit), so V is stored as it comes from memory.
//   Shared tiles use the 128-byte swizzle ([D / 64][rows][64], wgmma_sm90.cuh), written by
//   cp.async from every thread (no producer warp, no TMA).
//   Pipeline, one __syncthreads per key block: K and V have two buffers each. After the barrier
//   of block i, each warpgroup issues S(i) = Q K(i)^T and then O += P(i - 1) V(i - 1) as two
//   wgmma groups, then the copies of K(i + 1) and V(i) into the other buffers; it waits for S(i)
//   only and runs block i's softmax while the tensor cores still work on P(i - 1) V(i - 1)
//   (FA3's intra-warpgroup overlap). Then it waits for P V, rescales O and packs P(i). Across
//   the warpgroups of a CTA the overlap comes by itself: one's softmax runs while the other's
//   wgmmas do. In SASS, though, ptxas places the wait for P(i - 1) V(i - 1) (WARPGROUP.DEPBAR
//   gsb0 0) before the exponentials, since it interleaves them with the packs of P(i), which
//   overwrite the registers that P(i - 1) V(i - 1) reads; so the intra-warpgroup overlap does
//   not happen, and the barrier per block pulls both warpgroups into step: their wgmmas enter
//   the tensor pipe together, then both run their softmax while it idles.
//   Ping-pong (kWgmmaSchedPingPong, SQA_CUDA_FWD=wgmmapp; FA3's inter-warpgroup schedule): the
//   two warpgroups take turns issuing their wgmmas of a block under two named barriers (ids 1
//   and 2, bar.sync by the warpgroup whose turn it is, bar.arrive by the other after its issue),
//   so the tensor pipe holds one warpgroup's S(i) and P(i - 1) V(i - 1) while the other runs its
//   softmax. The CTA-wide barrier per block would undo that, so the loads change: three K and
//   three V buffers, each warpgroup waits for its own copies before its bar.sync, and the
//   named barriers carry both the "landed" and the "no longer read" conditions (the key loop
//   spells out each hazard). The intra-warpgroup order is kept (ptxas still waits for P V before
//   the exponentials; with the ping-pong the other warpgroup's products fill that time).
//   A third schedule with two P register buffers (so that the exponentials of block i sit
//   between the issue of P(i - 1) V(i - 1) and its wait in SASS) ran 4-10% slower than this
//   in-step one at D = 64 on the H200 (run 19) and was removed.
// Tiles: BM = 128 (2 warpgroups), BN = 128, for D = 64 and 128; 1 CTA per SM.
//   Registers per thread: S 64 + O D / 2 + P 32 (P(i - 1) stays live while S(i) is computed);
//   ptxas: 194 (D = 64) and 248 (D = 128) registers, no spills; ping-pong 210 and 250, no spills
//   (and "16 barriers": the named barrier id is a register operand).
//   Shared memory: Q 16 / 32 KB, K and V 2 x 16 / 32 KB each: 80 KB at D = 64, 160 KB at 128;
//   ping-pong 3 x each: 112 KB and 224 KB (+ 1 KB alignment; the sm_90 limit is 227 KB).
// Semantics are those of flash_fwd_kernel.cuh (the same rules, from flash_common.cuh's helpers):
// head layouts (GQA family: KV head h / G; rSQA: query head h % H_q, KV head h), varlen,
// N_q != N_k with bottom-right aligned windows, the grid order (heads fastest, longest causal row
// blocks first), key blocks hidden from every row skipped, blocks cut by the window masked per
// element, lse in natural log, rows without a visible key give O = 0 and lse = -inf.
// Prefill only: pack = 1 and num_splits = 1 (decode takes the FA2 kernel; the launcher checks).
// TMA producer form (kWgmmaSchedTma, SQA_CUDA_FWD=wgmmatma, opt-in until an H200 run shows it
// faster; dense batches): FA3's warp specialisation on top of the ping-pong. A third warpgroup
// (threads 256 .. 383) gives its registers back (setmaxnreg.dec 24) and one of its threads issues
// every TMA load of the CTA: Q (one mbarrier), then K(j) and V(j) of each key block into stage
// j % 3, each on its stage's full mbarrier (arrive.expect_tx of the tile's bytes, complete_tx by
// the TMA unit), after waiting on the stage's empty mbarrier for the release of block j - 3.
// The consumers (setmaxnreg.inc 240) issue no copies: they wait on the full phases, and lane 0
// of each consumer warp arrives on the empty one once the wgmma reading the tile completed
// (8 arrivals per phase). The named barriers keep only the turn order; the epilogue's CTA
// barrier becomes named barrier 3 over the 256 consumers (the producer has exited). Why: the
// cp.async address arithmetic and issue leave the consumers' instruction stream (FA3 reaches
// ~610-690 TF/s at D = 128 non-causal on the H200 with this layout, the ping-pong 514-559).
// ptxas (CUDA 13): 168 registers at launch, no spills, no stack at D = 64 and 128; in SASS the
// consumers stay in R0..R186 (D = 64) / R0..R226 (D = 128) under 240 and the producer in
// R0..R2 (uniform registers otherwise) under 24. Shared memory as the ping-pong + 104 bytes of
// mbarriers: 112.1 / 224.1 KB (+ 1 KB alignment). bench/gpu/wgmma_emulate.py tma checks it
// (producer and consumers as separate programs under 7 interleavings, both timing modes),
// tma-mutations its failure modes. Not yet run on a GPU.
// Three consumer warpgroups (SQA_CUDA_FWD=wgmmatma3, D = 64 only, opt-in until an H200 run):
// the TMA form with BM = 192 (FlashAttention-3's tile at D = 64: the tensor pipe is fed by two
// warpgroups' products while the third runs its softmax, and each K / V tile serves 192 rows),
// the turns a round robin 0 -> 1 -> 2 -> 0 over named barriers 1..3 (the epilogue's barrier
// becomes id 4), 12 arrivals per empty phase, 512 threads with 128 registers each at launch,
// setmaxnreg 24 / 160; its consumers wait for S(i) and P(i - 1) V(i - 1) together before the
// softmax (see the key loop). ptxas (CUDA 13): 128 registers at launch, no spills, no stack; in
// SASS the consumers stay in R0..R151 under 160, the producer in R0..R3 under 24. Shared memory:
// Q 24 KB + 3 x (16 + 16) KB + 104 bytes = 120.1 KB (+ 1 KB alignment).
// bench/gpu/wgmma_emulate.py tma3 / tma3-mutations check it. Not yet run on a GPU.
// Not done yet (FA3 has these): the intra-warpgroup overlap in SASS at D = 128
// (two P register buffers would need 32 more registers than the 255 limit leaves), stmatrix /
// TMA stores in the epilogue, a persistent grid, tile shapes tuned per head dim and mask
// (e.g. BN = 176 at D = 128 without a mask), fp8, FA4's lazy rescaling here. The ping-pong
// passed its tests on the H200 at its first run (run 19) after bench/gpu/wgmma_emulate.py
// wgmmapp had checked its buffer and barrier logic on the host; it ran at 0.90-1.05x cuDNN
// there, against 0.71-0.83x for the in-step schedule.
#pragma once

#include <cuda.h>  // CUtensorMap (a type only: the library does not link libcuda)
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "flash_common.cuh"
#include "flash_params.hpp"
#include "wgmma_sm90.cuh"

namespace sqa::cuda::detail {

// Schedules of the key loop (the kSched template argument of the kernel).
//   kWgmmaSchedDefault (SQA_CUDA_FWD=wgmma; not the default any more): one __syncthreads per
//     key block, two K and two V buffers, both warpgroups in step.
//   kWgmmaSchedPingPong (wgmmapp, the default): FlashAttention-3's inter-warpgroup ping-pong;
//     three K and three V buffers, no CTA-wide barrier in the key loop (see the kernel's key loop).
//   kWgmmaSchedTma (wgmmatma, opt-in; dense batches): the ping-pong with FlashAttention-3's warp
//     specialisation: a third, producer warpgroup loads Q, K and V by TMA into the same three
//     stages, full / empty mbarriers per stage (flash_fwd_wgmma_tma_kernel); with three
//     consumer warpgroups (wgmmatma3, D = 64) their turns go round robin.
enum : int { kWgmmaSchedDefault = 0, kWgmmaSchedPingPong = 1, kWgmmaSchedTma = 2 };

template <typename T, int D, int BN, int kWarpGroups, int kSched = kWgmmaSchedDefault>
struct WgmmaFwdTile {
  static constexpr int kThreads = 128 * kWarpGroups;  // the MMA (consumer) warpgroups
  static constexpr bool kTma = kSched == kWgmmaSchedTma;
  // kTma: the producer warpgroup (threads kThreads ..) after the consumers.
  static constexpr int kCtaThreads = kThreads + (kTma ? 128 : 0);
  static constexpr int BM = 64 * kWarpGroups;  // query rows of the CTA
  static constexpr int kQBytes = BM * D * 2;
  static constexpr int kKVBytes = BN * D * 2;  // one K or one V buffer
  static constexpr int kKStages = kSched == kWgmmaSchedDefault ? 2 : 3;
  static constexpr int kVStages = kKStages;
  // kTma: mbarriers after the V buffers: Q's full, then full K / full V / empty K / empty V per
  // stage (8 bytes each).
  static constexpr int kBarBytes = kTma ? (1 + 2 * (kKStages + kVStages)) * 8 : 0;
  // Q, the K and V buffers, (kTma) the mbarriers, and 1024 bytes to align the start to a swizzle
  // atom (the alignment of dynamic shared memory is not guaranteed to be that large).
  static constexpr int kSmemBytes = kQBytes + (kKStages + kVStages) * kKVBytes + kBarBytes + 1024;
  static_assert(sizeof(T) == 2, "16-bit inputs");
  static_assert(D == 64 || D == 128, "wgmma wrappers exist for N = 64 and 128 (O += P V)");
  static_assert(BN == 64 || BN == 128, "wgmma wrappers exist for N = 64 and 128 (S = Q K^T)");
  static_assert(kSmemBytes <= 227 * 1024, "the sm_90 limit of dynamic shared memory per CTA");
  // The ping-pong of two warpgroups; the TMA form also as a round robin of three (wgmmatma3, D =
  // 64: 192-row tiles, FlashAttention-3's shape there; the register budget of 160 per consumer
  // thread that 512 threads leave does not hold the D = 128 accumulators).
  static_assert(kSched == kWgmmaSchedDefault || kWarpGroups == 2 ||
                    (kSched == kWgmmaSchedTma && kWarpGroups == 3 && D == 64),
                "ping-pong of two warpgroups, or the TMA round robin of three at D = 64");
};

// Copies kRows rows of D elements (row r at base + r * row_stride, from row0 on) into the swizzled
// tile at shared address dst; rows at or past valid_rows become zeros (never garbage that could
// turn 0 * x into NaN). Thread tid copies 16-byte chunk tid % (D / 8) of rows tid / (D / 8) +
// i * kRowStep: kRowStep is a multiple of 8, so the swizzled chunk is the same for every i and
// the destination advances by a constant.
template <typename T, int D, int kRows, int kThreads>
__device__ __forceinline__ void load_tile_sw128(uint32_t dst, const T* base, int64_t row_stride,
                                                int row0, int valid_rows, int tid) {
  constexpr int kChunks = D / 8;
  static_assert(kThreads % kChunks == 0, "each thread copies one fixed chunk column");
  constexpr int kRowStep = kThreads / kChunks;
  static_assert(kRowStep % 8 == 0 && kRows % kRowStep == 0, "whole swizzle atoms per step");
  const int r = tid / kChunks, c = tid % kChunks;
  const T* src = base + static_cast<int64_t>(row0 + r) * row_stride + c * 8;
  const uint32_t to = dst + sw128_offset<kRows>(r, c);
#pragma unroll
  for (int i = 0; i < kRows / kRowStep; ++i) {
    const bool valid = row0 + r + i * kRowStep < valid_rows;
    cp_async_16(to + static_cast<uint32_t>(i * kRowStep * 128), valid ? src : base, valid);
    src += kRowStep * row_stride;
  }
}

// Reduces v[0 .. 2 kHalf) with op as a tree (log2 dependent steps instead of 2 kHalf - 1) and
// returns the result; v is overwritten. Written as a template so that every level's trip count is
// a compile-time constant (nested loops with a run-time inner bound left the array in local
// memory).
template <int kHalf, int N, typename Op>
__device__ __forceinline__ float tree_reduce(float (&v)[N], Op op) {
#pragma unroll
  for (int i = 0; i < kHalf; ++i) v[i] = op(v[i], v[i + kHalf]);
  if constexpr (kHalf > 1) {
    return tree_reduce<kHalf / 2>(v, op);
  } else {
    return v[0];
  }
}

// The kernels' body: flash_fwd_wgmma_kernel (tm_* null) and flash_fwd_wgmma_tma_kernel (kTma:
// tm_q, tm_k, tm_v are the generic addresses of its __grid_constant__ tensor maps).
template <typename T, int D, int BN, int kWarpGroups, int kSched>
__device__ __forceinline__ void fwd_wgmma_body(const FwdKernelParams& p,
                                               [[maybe_unused]] const void* tm_q,
                                               [[maybe_unused]] const void* tm_k,
                                               [[maybe_unused]] const void* tm_v) {
  using Tile = WgmmaFwdTile<T, D, BN, kWarpGroups, kSched>;
  constexpr int BM = Tile::BM;
  constexpr int kThreads = Tile::kThreads;
  constexpr int kNT = BN / 8;        // 8-column tiles of S
  constexpr int kDT = D / 8;         // 8-column tiles of O (16-byte chunks of an output row)
  constexpr int kQKSteps = D / 16;   // k-steps of S = Q K^T
  constexpr int kPVSteps = BN / 16;  // k-steps of O += P V
  using GemmS = Wgmma<T, BN>;
  using GemmO = Wgmma<T, D>;

  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t raw_addr = smem_addr(smem_raw);
  const uint32_t sQ = (raw_addr + 1023u) & ~1023u;  // [D / 64][BM][64], swizzled
  unsigned char* const smem_q = smem_raw + (sQ - raw_addr);
  const uint32_t sK = sQ + Tile::kQBytes;                    // [kKStages][D / 64][BN][64]
  const uint32_t sV = sK + Tile::kKStages * Tile::kKVBytes;  // [kVStages][D / 64][BN][64]

  const int tid = threadIdx.x;
  // wgmmatma3: broadcast from lane 0 so that ptxas knows the warpgroup (and the named barrier
  // ids, Q descriptor and row offsets from it) to be warp-uniform and keeps them in uniform
  // registers: the consumers then peak at 152 of their 160 registers (156 with tid / 128). The
  // two-warpgroup kernels keep their code as it was.
  const int warpgroup = kWarpGroups == 3 && kSched == kWgmmaSchedTma
                            ? __shfl_sync(0xffffffffu, tid / 128, 0)
                            : tid / 128;
  const int warp_in_group = (tid % 128) / 32;
  const int lane = tid % 32;
  const int g = lane / 4;
  const int t = lane % 4;

  const FwdTileCoords tile = fwd_tile_coords(p);
  const int b = tile.b;
  const int h = tile.head_group;  // pack = 1: the CTA's one attention head
  const SeqSpan span = seq_span(p, b);
  const int nq = span.nq, nk = span.nk;
  const int m0 = tile.m_block * BM;
  if (m0 >= nq) return;

  const int diag = nk - nq;
  const int left = p.window_left, right = p.window_right;
  const int qrow_lo = m0, qrow_hi = min(nq, m0 + BM) - 1;
  const KeyBlocks blocks = visible_key_blocks(qrow_lo, qrow_hi, nk, diag, left, right, BN);
  const int num_blocks = blocks.end - blocks.begin;
  // Key blocks run from the last to the first (as in flash_fwd_kernel.cuh): block i of the loop
  // is key block nb_last - i; its K and V sit in buffer i % 2.
  const int nb_last = blocks.end - 1;

  const int q_head = p.reverse ? h % p.num_query_heads : h;
  const int kv_head = p.reverse ? h : h / p.group_size;

  // kTma: the mbarriers (after the V buffers) and the producer warpgroup (see the key loop).
  [[maybe_unused]] const uint32_t sBar = sV + Tile::kVStages * Tile::kKVBytes;
  [[maybe_unused]] const uint32_t bar_q_full = sBar;
  [[maybe_unused]] auto k_full = [sBar](int stage) { return sBar + 8u + 8u * stage; };
  [[maybe_unused]] auto v_full = [sBar](int stage) { return sBar + 32u + 8u * stage; };
  [[maybe_unused]] auto k_empty = [sBar](int stage) { return sBar + 56u + 8u * stage; };
  [[maybe_unused]] auto v_empty = [sBar](int stage) { return sBar + 80u + 8u * stage; };
  if constexpr (Tile::kTma) {
    static_assert(Tile::kKStages == 3 && Tile::kVStages == 3 && Tile::kBarBytes == 104,
                  "the mbarrier offsets above");
    if (tid == 0) {
      mbar_init(bar_q_full, 1);  // the producer's arrive.expect_tx; the bytes by complete_tx
#pragma unroll
      for (int i = 0; i < 3; ++i) {
        mbar_init(k_full(i), 1);
        mbar_init(v_full(i), 1);
        mbar_init(k_empty(i), 4 * kWarpGroups);  // lane 0 of each consumer warp
        mbar_init(v_empty(i), 4 * kWarpGroups);
      }
      mbar_fence_init();
    }
    __syncthreads();  // the only CTA-wide barrier: the mbarriers are initialised
    if (tid >= kThreads) {
      // Producer: one thread issues every TMA load of the CTA, in the consumers' order of use;
      // the rest of the warpgroup only gives its registers back.
      setmaxnreg_dec<24>();
      if (tid == kThreads && num_blocks > 0) {
        // Boxes of 64 columns x 1 head x 128 rows x 1 batch entry, coordinates (column, head,
        // row, batch); rows past the sequence arrive as zeros (load_tile_sw128's rule).
        mbar_arrive_expect_tx(bar_q_full, Tile::kQBytes);
#pragma unroll
        for (int c = 0; c < D / 64; ++c) {
          tma_load_4d(sQ + c * BM * 128, tm_q, bar_q_full, c * 64, q_head, m0, b);
        }
        for (int j = 0; j < num_blocks; ++j) {
          const int stage = j % 3;
          const uint32_t parity = (j / 3) & 1;
          const int row = (nb_last - j) * BN;
          // Block j - 3 read this stage; its release completed empty phase j / 3 - 1.
          if (j >= 3) mbar_wait(k_empty(stage), parity ^ 1);
          mbar_arrive_expect_tx(k_full(stage), Tile::kKVBytes);
#pragma unroll
          for (int c = 0; c < D / 64; ++c) {
            tma_load_4d(sK + stage * Tile::kKVBytes + c * BN * 128, tm_k, k_full(stage), c * 64,
                        kv_head, row, b);
          }
          if (j >= 3) mbar_wait(v_empty(stage), parity ^ 1);
          mbar_arrive_expect_tx(v_full(stage), Tile::kKVBytes);
#pragma unroll
          for (int c = 0; c < D / 64; ++c) {
            tma_load_4d(sV + stage * Tile::kKVBytes + c * BN * 128, tm_v, v_full(stage), c * 64,
                        kv_head, row, b);
          }
        }
      }
      return;
    }
    // 384 threads: 168 registers each at launch, 240 for the consumers (128 x 24 + 256 x 240 =
    // 64512 of the 65536); 512 threads (three consumer warpgroups): 128 at launch, 160 for the
    // consumers (128 x 24 + 384 x 160 = 64512).
    setmaxnreg_inc<kWarpGroups == 2 ? 240 : 160>();
  }
  const T* q_base = static_cast<const T*>(p.q) + b * p.q_batch + span.q_row0 * p.q_row +
                    static_cast<int64_t>(q_head) * p.q_head;
  const T* k_base = static_cast<const T*>(p.k) + b * p.k_batch + span.k_row0 * p.k_row +
                    static_cast<int64_t>(kv_head) * p.k_head;
  const T* v_base = static_cast<const T*>(p.v) + b * p.v_batch + span.k_row0 * p.v_row +
                    static_cast<int64_t>(kv_head) * p.v_head;
  // (kTma: no cp.async copies; the 384 consumer threads of wgmmatma3 would not split a tile.)
  auto load_k = [&](int stage, int nb) {
    if constexpr (!Tile::kTma) {
      load_tile_sw128<T, D, BN, kThreads>(sK + stage * Tile::kKVBytes, k_base, p.k_row, nb * BN, nk,
                                          tid);
    }
  };
  auto load_v = [&](int stage, int nb) {
    if constexpr (!Tile::kTma) {
      load_tile_sw128<T, D, BN, kThreads>(sV + stage * Tile::kKVBytes, v_base, p.v_row, nb * BN, nk,
                                          tid);
    }
  };
  // Every thread's copies (all but the kPending most recent groups) have landed and are visible
  // to the wgmma reads (async proxy) of every warpgroup; also, every warpgroup is past its
  // earlier wgmma waits, so the buffers those read are free.
  auto copies_landed_barrier = [](auto pending) {
    cp_async_wait<decltype(pending)::value>();
    fence_proxy_async_shared();
    __syncthreads();
  };
  using AllGroups = std::integral_constant<int, 0>;

  // This thread's rows of the CTA tile (accumulator rows g and g + 8 of its warp).
  const int local_row0 = warpgroup * 64 + warp_in_group * 16 + g;
  const int qrow[2] = {m0 + local_row0, m0 + local_row0 + 8};

  // s: S, then P (fp32), column tile j in s[4 j .. 4 j + 3] (wgmma accumulator layout);
  // o: O, likewise; pa: P rounded to 16 bits, the A fragments of the k-steps of O += P V.
  float s[BN / 2];
  float o[D / 2];
  uint32_t pa[kPVSteps][4];
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) s[i] = 0.0f;  // the first S wgmma overwrites; defined anyway
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < kPVSteps; ++kk)
#pragma unroll
    for (int e = 0; e < 4; ++e) pa[kk][e] = 0u;
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.0f, 0.0f};  // per-thread partial; reduced over the quad at the end
  const float scale_log2 = p.scale_log2;

  // This warpgroup's 64 rows of Q; K and V buffers. K-major operands: leading offset unused.
  const uint64_t q_desc = wgmma_desc_sw128(sQ + warpgroup * 64 * 128, 16, 1024);
  auto issue_s = [&](int stage) {
    const uint64_t k_desc = wgmma_desc_sw128(sK + stage * Tile::kKVBytes, 16, 1024);
#pragma unroll
    for (int kk = 0; kk < kQKSteps; ++kk) {
      // k-step kk: atom column kk / 4, 32 bytes per k-step inside the 128-byte row.
      const uint32_t q_off = (kk / 4) * BM * 128 + (kk % 4) * 32;
      const uint32_t k_off = (kk / 4) * BN * 128 + (kk % 4) * 32;
      GemmS::ss(s, wgmma_desc_advance(q_desc, q_off), wgmma_desc_advance(k_desc, k_off),
                kk > 0 ? 1 : 0);
    }
    wgmma_commit_group();
  };
  auto issue_pv = [&](int stage) {
    // V is MN-major for B: atom columns of 64 dims BN * 128 bytes apart (leading offset), 8-key
    // groups 1024 bytes apart (stride); k-step kk starts at key 16 kk.
    const uint64_t v_desc = wgmma_desc_sw128(sV + stage * Tile::kKVBytes, BN * 128, 1024);
#pragma unroll
    for (int kk = 0; kk < kPVSteps; ++kk) {
      GemmO::rs_mn(o, pa[kk], wgmma_desc_advance(v_desc, kk * 16 * 128));
    }
    wgmma_commit_group();
  };

  // Masks block nb where the window or the sequence end cuts it for some row of the tile, then
  // the online softmax (base 2): s becomes P with the new running max; corr is the factor for
  // the rows' sums and O (applied to O by the caller, once P(i - 1) V(i - 1) has completed).
  auto softmax = [&](int nb, float(&corr)[2]) {
    const int n0 = nb * BN;
    if (!key_block_unmasked(n0, BN, qrow_lo, qrow_hi, nk, diag, left, right)) {
#pragma unroll
      for (int j = 0; j < kNT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = n0 + j * 8 + 2 * t + (e & 1);
          if (!key_visible(col, qrow[e / 2], nk, diag, left, right)) s[4 * j + e] = -INFINITY;
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float part[kNT];  // a tree, not a serial chain of kNT dependent instructions
#pragma unroll
      for (int j = 0; j < kNT; ++j) part[j] = fmaxf(s[4 * j + 2 * r], s[4 * j + 2 * r + 1]);
      float mx = fmaxf(row_max[r],
                       tree_reduce<kNT / 2>(part, [](float a, float c) { return fmaxf(a, c); }));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      // A row that has seen no visible key yet keeps max -inf; offset 0 makes its p exactly 0.
      const float m_use = mx == -INFINITY ? 0.0f : mx;
      const float offset = m_use * scale_log2;
      corr[r] = fast_exp2(row_max[r] * scale_log2 - offset);
      row_max[r] = mx;
#pragma unroll
      for (int j = 0; j < kNT; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[4 * j + 2 * r + e];
          x = fast_exp2(fmaf(x, scale_log2, -offset));
        }
        part[j] = s[4 * j + 2 * r] + s[4 * j + 2 * r + 1];
      }
      row_sum[r] =
          row_sum[r] * corr[r] + tree_reduce<kNT / 2>(part, [](float a, float c) { return a + c; });
    }
  };
  // Online softmax: O rescaled by the max's growth; then P as the A fragments of k-step kk
  // (accumulator column tiles 2 kk and 2 kk + 1, rows g and g + 8).
  auto rescale_o = [&](const float(&corr)[2]) {
#pragma unroll
    for (int j = 0; j < kDT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[4 * j + e] *= corr[e / 2];
  };
  auto pack_p = [&](uint32_t(&a)[kPVSteps][4]) {
#pragma unroll
    for (int kk = 0; kk < kPVSteps; ++kk) {
      a[kk][0] = Mma<T>::pack(s[8 * kk + 0], s[8 * kk + 1]);
      a[kk][1] = Mma<T>::pack(s[8 * kk + 2], s[8 * kk + 3]);
      a[kk][2] = Mma<T>::pack(s[8 * kk + 4], s[8 * kk + 5]);
      a[kk][3] = Mma<T>::pack(s[8 * kk + 6], s[8 * kk + 7]);
    }
  };
  auto rescale_o_pack_p = [&](const float(&corr)[2]) {
    rescale_o(corr);
    pack_p(pa);
  };
  // Key block 0 (nb_last) once Q and K(0) landed: S(0), its softmax, P(0) packed (O is still
  // zero, so its rescale is a no-op). The same in both schedules.
  auto first_block = [&](float(&corr)[2]) {
    wgmma_fence();
    issue_s(0);
    wgmma_wait_group<0>();
    fence_registers(s);
    softmax(nb_last, corr);
    rescale_o_pack_p(corr);
  };

  if constexpr (kSched == kWgmmaSchedDefault) {
    if (num_blocks > 0) {
      // Q and K(0) first; K(1) and V(0) stream in while S(0) and its softmax run.
      load_tile_sw128<T, D, BM, kThreads>(sQ, q_base, p.q_row, m0, nq, tid);
      load_k(0, nb_last);
      cp_async_commit();
      if (num_blocks > 1) load_k(1, nb_last - 1);
      load_v(0, nb_last);
      cp_async_commit();
      copies_landed_barrier(std::integral_constant<int, 1>{});  // Q and K(0)
      float corr[2];
      first_block(corr);
      for (int i = 1; i < num_blocks; ++i) {
        const int nb = nb_last - i;
        const int stage = i & 1;
        // K(i) and V(i - 1) landed; every warpgroup finished S(i - 1) and P(i - 2) V(i - 2), so
        // K(i + 1) may overwrite K(i - 1) and V(i) may overwrite V(i - 2).
        copies_landed_barrier(AllGroups{});
        wgmma_fence();  // O was rescaled and P packed by ordinary instructions
        issue_s(stage);
        issue_pv(stage ^ 1);
        // The copies are issued behind the wgmmas, so the tensor cores start without waiting for
        // them; they fill the other buffers (K(i + 1) and V(i)), which no wgmma in flight reads.
        if (i + 1 < num_blocks) load_k(stage ^ 1, nb - 1);
        load_v(stage, nb);
        cp_async_commit();
        wgmma_wait_group<1>();  // S(i) done; P(i - 1) V(i - 1) may still run
        fence_registers(s);
        softmax(nb, corr);
        wgmma_wait_group<0>();
        fence_registers(o);
        fence_registers(pa);
        rescale_o_pack_p(corr);
      }
      copies_landed_barrier(AllGroups{});  // V(last) landed
      wgmma_fence();
      issue_pv((num_blocks - 1) & 1);
      wgmma_wait_group<0>();
      fence_registers(o);
      fence_registers(pa);
    }
  } else if constexpr (kSched == kWgmmaSchedPingPong) {
    // Ping-pong (FlashAttention-3): the two warpgroups take turns issuing their wgmmas. Each step
    // of warpgroup w is: wait for its own copies, then bar.sync on its named barrier kBarWg0 + w
    // (256 threads: its 128 sync, the other warpgroup's 128 arrive), issue S(i) and
    // P(i - 1) V(i - 1), bar.arrive on the other warpgroup's barrier, issue its share of the next
    // copies, then the softmax of block i. So warpgroup 0's wgmmas of block i enter the tensor
    // pipe before warpgroup 1's, which enter before warpgroup 0's of block i + 1, and while one
    // warpgroup runs its softmax the tensor cores work on the other's products. No CTA-wide
    // barrier stands in the loop (it would pull the warpgroups back into step).
    // Copies: every thread copies its chunks of every K and V tile (as load_tile_sw128 splits a
    // tile over the CTA's 256 threads), but the warpgroups run half a step apart: at its step i,
    // warpgroup 0 copies its share of K(i + 1) and V(i), warpgroup 1 its share of K(i + 2) and
    // V(i + 1) (it can run one block further ahead, see below). Block j sits in K and V stage
    // j % 3.
    // Full: before its bar.sync of step i a warpgroup waits for all its copies (cp.async
    // wait_group 0: those of its step i - 1) and fences them to the async proxy; bar.arrive
    // releases them to the other warpgroup, bar.sync acquires the other's and its own
    // warpgroup's. Warpgroup 0 at step i needs K(i), V(i - 1): its own share from its step
    // i - 1, warpgroup 1's from warpgroup 1's step i - 2, waited before warpgroup 1's bar.sync
    // of step i - 1, hence before its arrive of step i - 1 that this bar.sync pairs with.
    // Warpgroup 1 at step i: its own share from its step i - 2, warpgroup 0's from warpgroup 0's
    // step i - 1, waited before warpgroup 0's arrive of step i.
    // Empty: when warpgroup 0 passes its bar.sync of step i, warpgroup 1 has completed S(i - 2)
    // and P(i - 3) V(i - 3) (its waits of step i - 2 precede its arrive of step i - 1); so K(i + 1)
    // may overwrite K(i - 2) and V(i) may overwrite V(i - 3) (3 stages). When warpgroup 1 passes
    // its bar.sync of step i, warpgroup 0 has completed S(i - 1) and P(i - 2) V(i - 2) (its
    // waits of step i - 1 precede its arrive of step i); so K(i + 2) may overwrite K(i - 1) and
    // V(i + 1) may overwrite V(i - 2). Each warpgroup's own earlier wgmmas are complete by its
    // own waits.
    // The barriers alternate strictly (warpgroup 1's arrive of step i needs its bar.sync of step
    // i, which needs warpgroup 0's arrive of step i, which follows warpgroup 0's bar.sync of
    // step i, which consumed warpgroup 1's arrive of step i - 1), so no arrive can run into the
    // next generation of a barrier. Warpgroup 1's arrive after its block-0 softmax opens the
    // first turn; both barriers end balanced (each completes num_blocks times).
    if (num_blocks > 0) {
      constexpr uint32_t kBarWg0 = 1;  // named barrier ids 1 and 2 (0 is __syncthreads)
      const uint32_t bar_mine = kBarWg0 + warpgroup;
      const uint32_t bar_other = kBarWg0 + 1 - warpgroup;
      const int ahead = 1 + warpgroup;  // copies at step i: K(i + ahead), V(i + ahead - 1)
      auto stage3 = [](int j) { return j % 3; };
      auto copy_ahead = [&](int i) {
        const int jk = i + ahead, jv = i + ahead - 1;
        if (jk < num_blocks) load_k(stage3(jk), nb_last - jk);
        if (jv < num_blocks) load_v(stage3(jv), nb_last - jv);
        cp_async_commit();
      };
      auto copies_landed = [] {  // all of this thread's copies, fenced to the async proxy
        cp_async_wait<0>();
        fence_proxy_async_shared();
      };
      // Q and K(0) (group 0); K(1) and V(0) (group 1: warpgroup 0's copies of step 0 and
      // warpgroup 1's of step -1); warpgroup 1 also its copies of step 0 (group 2).
      load_tile_sw128<T, D, BM, kThreads>(sQ, q_base, p.q_row, m0, nq, tid);
      load_k(0, nb_last);
      cp_async_commit();
      if (num_blocks > 1) load_k(1, nb_last - 1);
      load_v(0, nb_last);
      cp_async_commit();
      if (warpgroup == 1) {
        copy_ahead(0);
        cp_async_wait<2>();
      } else {
        cp_async_wait<1>();
      }
      fence_proxy_async_shared();
      __syncthreads();  // Q and K(0) landed for everyone
      float corr[2];
      first_block(corr);
      if (warpgroup == 1) {
        // Its K(1) and V(0) landed (warpgroup 0 needs them at its step 1); warpgroup 0's first
        // turn.
        cp_async_wait<1>();
        fence_proxy_async_shared();
        named_barrier_arrive(kBarWg0, 256);
      }
      for (int i = 1; i < num_blocks; ++i) {
        const int nb = nb_last - i;
        copies_landed();
        named_barrier_sync(bar_mine, 256);
        wgmma_fence();  // O was rescaled and P packed by ordinary instructions
        issue_s(stage3(i));
        issue_pv(stage3(i - 1));
        named_barrier_arrive(bar_other, 256);  // the other warpgroup's turn
        copy_ahead(i);
        wgmma_wait_group<1>();  // S(i) done; P(i - 1) V(i - 1) may still run
        fence_registers(s);
        softmax(nb, corr);
        wgmma_wait_group<0>();
        fence_registers(o);
        fence_registers(pa);
        rescale_o_pack_p(corr);
      }
      // The last P V, in turn too: V(last) landed; warpgroup 0's arrive balances warpgroup 1's
      // last bar.sync.
      copies_landed();
      named_barrier_sync(bar_mine, 256);
      wgmma_fence();
      issue_pv(stage3(num_blocks - 1));
      if (warpgroup == 0) named_barrier_arrive(bar_other, 256);
      wgmma_wait_group<0>();
      fence_registers(o);
      fence_registers(pa);
    }
  } else {
    // kTma: the ping-pong above with the producer warpgroup's TMA loads. Block j sits in K and V
    // stage j % 3 (as above) and is the (j / 3)-th use of that stage, so its full and empty
    // phases have parity (j / 3) & 1. Full: a consumer waits for K(i)'s and V(i - 1)'s full
    // phase before its bar.sync of step i (the completed phase makes the TMA writes visible to
    // this thread and its wgmmas: no proxy fence, no copies of its own). Empty: each consumer
    // warp releases K(i) once S(i) completed (wgmma.wait_group 1) and V(i - 1) once
    // P(i - 1) V(i - 1) completed (wait_group 0), lane 0 arriving for the warp (4 kWarpGroups
    // arrivals per phase); the producer refills a stage only after that phase. The named
    // barriers now only order the wgmma issues (the turns), and the consumers issue no loads at
    // all. Deadlock-free: the producer's loads of block j wait only for the releases of block
    // j - 3 (at steps j - 3 and j - 2), which need no load past block j - 2.
    // Three warpgroups (wgmmatma3): the turns go round robin, warpgroup w bar.syncs on barrier
    // kBarWg0 + w (its 128 threads and the 128 of warpgroup w - 1 mod 3, which arrive after
    // their issue) and arrives on barrier kBarWg0 + (w + 1) % 3 after its own, so the issue
    // order is 0, 1, 2, 0, 1, 2, ... and the tensor pipe holds one or two warpgroups' products
    // while the third runs its softmax. The last warpgroup opens the first turn (after its
    // block-0 softmax) and skips the arrive after its last P V (no turn follows); each barrier
    // then completes num_blocks times. No arrive can reach the next generation of a barrier:
    // warpgroup w's arrive on barrier w + 1 follows its own bar.sync of that step, which
    // follows (through the chain of turns, the two other warpgroups' issues in between) the
    // bar.sync of warpgroup w + 1 that consumed w's previous arrive. The stage logic is
    // unchanged: every warpgroup releases block j's K and V in its own steps j and j + 1, and
    // the producer waits for all 12 warps.
    if (num_blocks > 0) {
      constexpr uint32_t kBarWg0 = 1;
      const uint32_t bar_mine = kBarWg0 + warpgroup;
      // (1 - warpgroup with two, as before; the same barrier)
      const uint32_t bar_other =
          kWarpGroups == 2 ? kBarWg0 + 1 - warpgroup : kBarWg0 + (warpgroup + 1) % kWarpGroups;
      auto stage3 = [](int j) { return j % 3; };
      auto parity3 = [](int j) { return static_cast<uint32_t>((j / 3) & 1); };
      auto release = [lane](uint32_t empty) {
        __syncwarp();  // every lane of the warp is past the wgmma wait
        if (lane == 0) mbar_arrive(empty);
      };
      mbar_wait(bar_q_full, 0);
      mbar_wait(k_full(0), 0);
      float corr[2];
      first_block(corr);
      release(k_empty(0));
      // Warpgroup 0's first turn (as above, without copies to wait for), from the last warpgroup.
      if (warpgroup == kWarpGroups - 1) named_barrier_arrive(kBarWg0, 256);
      for (int i = 1; i < num_blocks; ++i) {
        const int nb = nb_last - i;
        mbar_wait(k_full(stage3(i)), parity3(i));
        mbar_wait(v_full(stage3(i - 1)), parity3(i - 1));
        named_barrier_sync(bar_mine, 256);
        wgmma_fence();  // O was rescaled and P packed by ordinary instructions
        issue_s(stage3(i));
        issue_pv(stage3(i - 1));
        named_barrier_arrive(bar_other, 256);  // the next warpgroup's turn
        if constexpr (kWarpGroups == 3) {
          // Both groups before the softmax: P(i - 1) (32 registers) is dead during it then, which
          // keeps S, O and the softmax's temporaries under the 160-register cap without spills
          // (with P live through the softmax, ptxas spilled ~100 bytes). The two-warpgroup
          // kernel's SASS waits for P V before the exponentials anyway (see the top), and here
          // the two other warpgroups' products keep the tensor pipe busy meanwhile. Both stages
          // are released at once.
          wgmma_wait_group<0>();
          fence_registers(s);
          fence_registers(o);
          fence_registers(pa);
          release(k_empty(stage3(i)));
          release(v_empty(stage3(i - 1)));
          softmax(nb, corr);
        } else {
          wgmma_wait_group<1>();  // S(i) done; P(i - 1) V(i - 1) may still run
          fence_registers(s);
          release(k_empty(stage3(i)));
          softmax(nb, corr);
          wgmma_wait_group<0>();
          fence_registers(o);
          fence_registers(pa);
          release(v_empty(stage3(i - 1)));
        }
        rescale_o_pack_p(corr);
      }
      // The last P V, in turn. V(last) is not released: no load follows it. Every warpgroup but
      // the last passes the turn on (the test written as before for two warpgroups).
      mbar_wait(v_full(stage3(num_blocks - 1)), parity3(num_blocks - 1));
      named_barrier_sync(bar_mine, 256);
      wgmma_fence();
      issue_pv(stage3(num_blocks - 1));
      const bool turn_follows = kWarpGroups == 2 ? warpgroup == 0 : warpgroup < kWarpGroups - 1;
      if (turn_follows) named_barrier_arrive(bar_other, 256);
      wgmma_wait_group<0>();
      fence_registers(o);
      fence_registers(pa);
    }
  }

  // Epilogue: normalise, write lse, and write O through shared memory (16-byte global stores).
  // Each warpgroup writes only its own 64 rows of the Q tile, which only its own wgmmas read and
  // which have all completed, so no barrier is needed before the writes.
  const int64_t total_q = span.total_q;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = row_sum[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const bool any = sum > 0.0f;
    const float inv = any ? 1.0f / sum : 0.0f;
    const int local_row = local_row0 + 8 * r;
#pragma unroll
    for (int j = 0; j < kDT; ++j) {
      *reinterpret_cast<uint32_t*>(smem_q + sw128_offset<BM>(local_row, j) + 4 * t) =
          Mma<T>::pack(o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv);
    }
    if (p.lse != nullptr && t == 0 && qrow[r] < nq) {
      // lse = ln(sum_j exp(scale s_j)) = (max * scale_log2 + log2(sum)) * ln 2.
      p.lse[lse_row(p, b, h, span.q_row0, qrow[r], total_q)] =
          any ? (row_max[r] * scale_log2 + __log2f(sum)) * 0.69314718055994531f : -INFINITY;
    }
  }
  if constexpr (Tile::kTma) {
    // The consumers only (the producer warpgroup has exited); the id after the turn barriers.
    named_barrier_sync(1 + kWarpGroups, kThreads);
  } else {
    __syncthreads();
  }
  T* o_base = static_cast<T*>(p.out) + b * p.o_batch + span.q_row0 * p.o_row +
              static_cast<int64_t>(h) * p.o_head;
  static_assert(BM * kDT % kThreads == 0, "whole output chunks per thread");
#pragma unroll
  for (int k = 0; k < BM * kDT / kThreads; ++k) {
    const int idx = tid + k * kThreads;
    const int i = idx / kDT, c = idx % kDT;
    const int m = m0 + i;
    if (m >= nq) continue;
    *reinterpret_cast<uint4*>(o_base + static_cast<int64_t>(m) * p.o_row + c * 8) =
        *reinterpret_cast<const uint4*>(smem_q + sw128_offset<BM>(i, c));
  }
}

template <typename T, int D, int BN, int kWarpGroups, int kSched = kWgmmaSchedDefault>
__global__ void __launch_bounds__(128 * kWarpGroups, 1)
    flash_fwd_wgmma_kernel(const FwdKernelParams p) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // wgmma needs sm_90a (CMakeLists.txt builds only that)
#else
  static_assert(kSched != kWgmmaSchedTma, "the TMA form is flash_fwd_wgmma_tma_kernel");
  fwd_wgmma_body<T, D, BN, kWarpGroups, kSched>(p, nullptr, nullptr, nullptr);
#endif
}

// SQA_CUDA_FWD=wgmmatma (dense batches): the ping-pong with a TMA producer warpgroup (384
// threads; setmaxnreg: 24 registers for the producer, 240 for the consumers). tm_q, tm_k, tm_v:
// 4-D tensor maps (head_dim, heads, seqlen, batch) with 64 x 1 x BM x 1 (Q) and 64 x 1 x 128 x 1
// (K, V) boxes and the 128-byte swizzle (encode_qdo_tensor_map, tma_host.cpp), so a box lands as
// one atom column of the [D / 64][rows][64] swizzled tiles the descriptors read.
// kWarpGroups = 3 (SQA_CUDA_FWD=wgmmatma3, D = 64): three consumer warpgroups in a round robin,
// BM = 192, 512 threads (setmaxnreg: 24 for the producer, 160 for the consumers).
template <typename T, int D, int kWarpGroups = 2>
__global__ void __launch_bounds__(128 * (kWarpGroups + 1), 1)
    flash_fwd_wgmma_tma_kernel(const FwdKernelParams p, const __grid_constant__ CUtensorMap tm_q,
                               const __grid_constant__ CUtensorMap tm_k,
                               const __grid_constant__ CUtensorMap tm_v) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();
#else
  static_assert(WgmmaFwdTile<T, D, 128, kWarpGroups, kWgmmaSchedTma>::kCtaThreads ==
                128 * (kWarpGroups + 1));
  fwd_wgmma_body<T, D, 128, kWarpGroups, kWgmmaSchedTma>(p, &tm_q, &tm_k, &tm_v);
#endif
}

}  // namespace sqa::cuda::detail
