// Hopper (sm_90a) prefill forward with warpgroup MMA for the small head dims D = 16 and 32:
// SQA_CUDA_FWD=wgmma (kDoubleP = false, 3 warpgroups) or wgmma2 (kDoubleP = true, 2 warpgroups)
// selects it there (flash_fwd_launch.cuh). The sibling of flash_fwd_wgmma.cuh
// (D = 64 / 128), whose pipeline it keeps; what differs is the layout of the narrow rows, the
// tile shape, the row sums and FlashAttention-4's lazy rescaling.
//
// At D <= 32 the limit is the exponential unit (MUFU: 16 ex2 per clock and SM, ~530 TF/s at
// D = 32 and ~267 at D = 16 on the H200), not the tensor cores: wgmma takes the MMA issue off
// the warps (a few instructions per block instead of 72 HMMA per 64 keys in the mma.sync
// kernel), and the softmax keeps ~3.5 instructions per score: max, FFMA, ex2, half a pack.
//
// Design
//   CTA = kWarpGroups warpgroups (3: 384 threads, BM = 192 query rows), 64 rows each; key blocks
//   of BN = 128 keys. S = Q K^T: wgmma m64n128k16 (D / 16 k-steps), Q and K K-major from shared
//   memory. O += P V: wgmma m64nDk16 per 16 keys, A = P from registers, V MN-major (transpose).
//   Row sums: per 16 keys one more wgmma m64n8k16 of the same P fragments with a 16 x 8 tile of
//   ones in shared memory (exact fp32 sums of the rounded P that feeds P V, as sum2's MMA
//   ones tile; no FADD per score, no quad shuffle at the end): every column of that accumulator
//   holds the row's sum.
//   Lazy rescaling (FlashAttention-4): each row keeps its running max m unless the block's max
//   exceeds it by more than kLazyLog2 = 8 in log2 units; the exponentials use offset m, so every
//   P <= 2^8 (finite in fp16; the fp32 sums and O stay far from overflow), and O, the sums and m
//   are rescaled only for rows where m moved (warp-uniform branch; rare after the first blocks).
//   The test is per row on the block max before the exponentials (the quad's 4 threads agree),
//   so a block never needs its S recomputed and no warpgroup-wide vote is needed. A row that has
//   seen no visible key keeps m = -inf and offset 0 (its masked scores give p = 0); the first
//   visible key moves m (inf > 8), with correction exp2(-inf) = 0 on the zero O and sums.
//   Pipeline (as flash_fwd_wgmma.cuh): one __syncthreads per key block, two K buffers; S(i) is
//   issued before P(i - 1) V(i - 1), so the softmax of block i can run while the tensor cores do
//   P(i - 1) V(i - 1). With one P register buffer (wgmma) O is rescaled and P(i) packed after
//   that group completes; ptxas then schedules the wait before the exponentials (see step), so
//   only the other warpgroups overlap it. kDoubleP (wgmma2) keeps two P buffers and three V
//   buffers, needs no wait before the packs and defers the O rescale to the next barrier.
// Shared layout (wgmma_sm90.cuh's wgmma_desc): rows of D 16-bit elements = 2 D bytes, stored
//   [rows][D] with the 2D-byte swizzle (D = 32: 64-byte swizzle, layout type 2; D = 16: 32-byte,
//   type 3): the 16-byte chunk c of row r sits at chunk c ^ ((r * 2 D / 128) % (D / 8)), i.e.
//   the hardware XORs address bits 4.. with bits 7.. (swz_offset). Tiles start at multiples of
//   8 rows (8 * 2 D bytes: the pattern's period), so the base offset is 0.
//   K-major Q and K (A and B of S = Q K^T): an 8-row core group is 8 * 2 D bytes (stride byte
//   offset); the k16 slice is 32 bytes inside the row (leading offset unused), k-step kk at
//   +32 kk bytes (D = 32 has two).
//   MN-major V (B of O += P V): the N = D columns of a key row are one swizzle row (2 D bytes), so
//   V has the same [keys][D] swizzled layout as K; 8-key groups are 8 * 2 D bytes apart (stride
//   byte offset), the leading offset (next atom column along N) is unused with N = D; k-step kk
//   (16 keys) at +16 * 2 D bytes.
//   Ones tile (B of the row sums, K-major, no swizzle): 256 bytes of ones, leading offset 128
//   (the second 8-column core matrix along K); every address it can touch holds a one.
// Registers per thread: S 64 + P 32 (P(i - 1) stays live while S(i) runs; kDoubleP: + 32 for
//   P(i - 2) until S(i) completes) + O D / 2 + sums 4. ptxas: wgmma 168 (d32) / 160 (d16), 1 CTA
//   of 12 warps per SM; wgmma2 206 / 192, 1 CTA of 8 warps; no spills.
// Semantics are those of flash_fwd_kernel.cuh / flash_fwd_wgmma.cuh (flash_common.cuh's
// helpers): head layouts, varlen, N_q != N_k with bottom-right aligned windows, grid order,
// masked blocks, lse in natural log, O = 0 and lse = -inf for rows without a visible key.
// Prefill only: pack = 1 and num_splits = 1.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "flash_common.cuh"
#include "flash_fwd_wgmma.cuh"  // tree_reduce
#include "flash_params.hpp"
#include "wgmma_sm90.cuh"

namespace sqa::cuda::detail {

template <typename T, int D, int BN, int kWarpGroups, bool kDoubleP>
struct WgmmaSmallFwdTile {
  static constexpr int kThreads = 128 * kWarpGroups;
  static constexpr int BM = 64 * kWarpGroups;  // query rows of the CTA
  static constexpr int kRowBytes = 2 * D;      // one swizzle row
  static constexpr int kQBytes = BM * kRowBytes;
  static constexpr int kKVBytes = BN * kRowBytes;  // one K or one V buffer
  static constexpr int kOnesBytes = 512;
  static constexpr int kVStages = kDoubleP ? 3 : 2;
  // Q, two K and kVStages V buffers, the ones tile, and 1024 bytes to align the start.
  static constexpr int kSmemBytes = kQBytes + (2 + kVStages) * kKVBytes + kOnesBytes + 1024;
  // wgmma layout type: 64-byte swizzle at D = 32, 32-byte at D = 16.
  static constexpr uint32_t kLayoutType = D == 32 ? 2u : 3u;
  static_assert(sizeof(T) == 2, "16-bit inputs");
  static_assert(D == 16 || D == 32, "the small-head-dim kernel (D = 64 / 128: flash_fwd_wgmma)");
  static_assert(BN == 128, "the S wgmma wrapper is m64n128k16");
  static_assert(kQBytes % 1024 == 0 && kKVBytes % 1024 == 0, "tiles keep the 1024-byte alignment");
};

// Byte offset of 16-byte chunk `chunk` (0 .. D / 8 - 1) of row `row` in a [rows][D] tile with the
// 2D-byte swizzle (D = 16: 32-byte, D = 32: 64-byte; D = 64 would be sw128_offset's 128-byte):
// address bits 4 .. 3 + log2(D / 8) XOR bits 7 .. 6 + log2(D / 8) of the row's byte offset.
template <int D>
__device__ __forceinline__ uint32_t swz_offset(int row, int chunk) {
  constexpr int kRowBytes = 2 * D;
  constexpr int kChunks = D / 8;
  return static_cast<uint32_t>(row * kRowBytes +
                               ((chunk ^ (((row * kRowBytes) >> 7) & (kChunks - 1))) * 16));
}

// Copies consecutive tiles of kRows rows of D elements (row r at base + r * row_stride), from a
// first tile downwards (the key loop runs from the last block to the first), into swizzled
// [kRows][D] tiles with cp.async; rows at or past valid_rows become zeros (never garbage that
// could turn 0 * x into NaN). Thread tid copies chunk c = tid % (D / 8) of rows r0 + i * kRowStep,
// r0 = tid / (D / 8): kRowStep is a multiple of 8 rows (the swizzle's period), so every i's
// destination is the first one plus a constant. A cursor walks down one tile per load: two 64-bit
// adds per tile instead of a 64-bit multiply per copy (which cost ~80 instructions per key block
// at D = 32, a sixth of the block's issue budget).
template <typename T, int D, int kRows, int kThreads>
struct SwzTileLoader {
  static constexpr int kChunks = D / 8;
  static constexpr int kRowStep = kThreads / kChunks;
  static constexpr int kIters = (kRows + kRowStep - 1) / kRowStep;
  static_assert(kThreads % kChunks == 0, "each thread copies one fixed chunk column");
  static_assert(kRowStep % 8 == 0, "the swizzle repeats every 8 rows");
  const T* base;
  const T* cur;  // this thread's chunk of row `row`, its first row in the next tile
  int64_t row_stride;
  int row;
  uint32_t dst_off;  // swizzled offset of (r0, c) in a tile

  // The first tile to load starts at row row0.
  __device__ __forceinline__ SwzTileLoader(const T* base_, int64_t stride, int row0, int tid)
      : base(base_),
        cur(base_ + static_cast<int64_t>(row0 + tid / kChunks) * stride + (tid % kChunks) * 8),
        row_stride(stride),
        row(row0 + tid / kChunks),
        dst_off(swz_offset<D>(tid / kChunks, tid % kChunks)) {}

  // The next tile into the tile at shared address dst; then the cursor moves to the tile below.
  __device__ __forceinline__ void load_next(uint32_t dst, int valid_rows) {
    const int r0 = static_cast<int>(threadIdx.x) / kChunks;
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      if (kRows % kRowStep == 0 || r0 + i * kRowStep < kRows) {
        const bool valid = row + i * kRowStep < valid_rows;
        cp_async_16(dst + dst_off + static_cast<uint32_t>(i * kRowStep * 2 * D),
                    valid ? cur + static_cast<int64_t>(i * kRowStep) * row_stride : base, valid);
      }
    }
    cur -= static_cast<int64_t>(kRows) * row_stride;
    row -= kRows;
  }
};

template <typename T, int D, int BN, int kWarpGroups, bool kDoubleP>
__global__ void __launch_bounds__(128 * kWarpGroups, 1)
    flash_fwd_wgmma_small_kernel(const FwdKernelParams p) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // wgmma needs sm_90a (CMakeLists.txt builds only that)
#else
  using Tile = WgmmaSmallFwdTile<T, D, BN, kWarpGroups, kDoubleP>;
  constexpr int kVStages = Tile::kVStages;
  constexpr int BM = Tile::BM;
  constexpr int kThreads = Tile::kThreads;
  constexpr int kRowBytes = Tile::kRowBytes;
  constexpr int kNT = BN / 8;        // 8-column tiles of S
  constexpr int kDT = D / 8;         // 8-column tiles of O (16-byte chunks of an output row)
  constexpr int kQKSteps = D / 16;   // k-steps of S = Q K^T
  constexpr int kPVSteps = BN / 16;  // k-steps of O += P V
  constexpr float kLazyLog2 = 8.0f;  // the running max lags the true one by at most 2^8 in P
  using GemmS = Wgmma<T, BN>;
  using GemmO = WgmmaRS<T, D, 1>;    // B = V, MN-major
  using GemmSum = WgmmaRS<T, 8, 0>;  // B = the ones tile, K-major

  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t raw_addr = smem_addr(smem_raw);
  const uint32_t sQ = (raw_addr + 1023u) & ~1023u;  // [BM][D], swizzled
  unsigned char* const smem_q = smem_raw + (sQ - raw_addr);
  const uint32_t sK = sQ + Tile::kQBytes;       // [2][BN][D]
  const uint32_t sV = sK + 2 * Tile::kKVBytes;  // [kVStages][BN][D]
  const uint32_t sOnes = sV + kVStages * Tile::kKVBytes;

  const int tid = threadIdx.x;
  const int warpgroup = tid / 128;
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
  // Key blocks run from the last to the first; block i of the loop is key block nb_last - i, its
  // K and V sit in buffer i % 2.
  const int nb_last = blocks.end - 1;

  const int q_head = p.reverse ? h % p.num_query_heads : h;
  const int kv_head = p.reverse ? h : h / p.group_size;
  const T* q_base = static_cast<const T*>(p.q) + b * p.q_batch + span.q_row0 * p.q_row +
                    static_cast<int64_t>(q_head) * p.q_head;
  const T* k_base = static_cast<const T*>(p.k) + b * p.k_batch + span.k_row0 * p.k_row +
                    static_cast<int64_t>(kv_head) * p.k_head;
  const T* v_base = static_cast<const T*>(p.v) + b * p.v_batch + span.k_row0 * p.v_row +
                    static_cast<int64_t>(kv_head) * p.v_head;
  // K and V tiles from key block nb_last downwards, one block per load.
  SwzTileLoader<T, D, BN, kThreads> k_loader(k_base, p.k_row, nb_last * BN, tid);
  SwzTileLoader<T, D, BN, kThreads> v_loader(v_base, p.v_row, nb_last * BN, tid);
  // As in flash_fwd_wgmma.cuh: this thread's copies (all but the `pending` most recent groups)
  // landed and are visible to the async proxy; then every thread of the CTA.
  auto copies_landed_barrier = [](auto pending) {
    cp_async_wait<decltype(pending)::value>();
    fence_proxy_async_shared();
    __syncthreads();
  };
  using AllGroups = std::integral_constant<int, 0>;

  // This thread's rows of the CTA tile (accumulator rows g and g + 8 of its warp).
  const int local_row0 = warpgroup * 64 + warp_in_group * 16 + g;
  const int qrow[2] = {m0 + local_row0, m0 + local_row0 + 8};

  // s: S, then P (fp32), column tile j in s[4 j .. 4 j + 3]; o: O; osum: the row sums (m64n8
  // accumulator: osum[0], osum[1] row g, osum[2], osum[3] row g + 8, all columns equal); pa: P
  // rounded to 16 bits, the A fragments of the k-steps of O += P V.
  float s[BN / 2];
  float o[D / 2];
  float osum[4];
  // kDoubleP: P(j) in pa0 for even j, pa1 for odd j; otherwise always pa0.
  uint32_t pa0[kPVSteps][4], pa1[kPVSteps][4];
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) s[i] = 0.0f;
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) osum[i] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < kPVSteps; ++kk)
#pragma unroll
    for (int e = 0; e < 4; ++e) pa0[kk][e] = pa1[kk][e] = 0u;  // pa1 unused without kDoubleP
  float row_max[2] = {-INFINITY, -INFINITY};
  const float scale_log2 = p.scale_log2;

  // Descriptors. K-major Q and K: stride = one 8-row group (8 * kRowBytes), leading unused (16).
  constexpr uint32_t kGroupBytes = 8 * kRowBytes;
  const uint64_t q_desc =
      wgmma_desc(sQ + warpgroup * 64 * kRowBytes, 16, kGroupBytes, Tile::kLayoutType);
  const uint64_t ones_desc = wgmma_desc(sOnes, 128, 256, 0u);
  auto issue_s = [&](int stage) {
    const uint64_t k_desc =
        wgmma_desc(sK + stage * Tile::kKVBytes, 16, kGroupBytes, Tile::kLayoutType);
#pragma unroll
    for (int kk = 0; kk < kQKSteps; ++kk) {
      // k-step kk: 16 elements = 32 bytes further inside the swizzle row.
      GemmS::ss(s, wgmma_desc_advance(q_desc, kk * 32), wgmma_desc_advance(k_desc, kk * 32),
                kk > 0 ? 1 : 0);
    }
    wgmma_commit_group();
  };
  auto issue_pv = [&](int stage, const uint32_t(&pa)[kPVSteps][4]) {
    // V MN-major: 8-key groups kGroupBytes apart (stride), leading (next N atom) unused with N = D;
    // k-step kk starts at key 16 kk.
    const uint64_t v_desc =
        wgmma_desc(sV + stage * Tile::kKVBytes, BN * kRowBytes, kGroupBytes, Tile::kLayoutType);
#pragma unroll
    for (int kk = 0; kk < kPVSteps; ++kk) {
      GemmO::run(o, pa[kk], wgmma_desc_advance(v_desc, kk * 16 * kRowBytes));
      GemmSum::run(osum, pa[kk], ones_desc);
    }
    wgmma_commit_group();
  };

  // Masks block nb where the window or the sequence end cuts it for some row of the tile, then
  // the lazy online softmax (base 2): s becomes P with offset = the row's running max, which
  // moves only when the block's max exceeds it by more than kLazyLog2; corr is the factor for
  // O and the sums of the rows (1 where the max stayed), applied by the caller once P(i - 1)
  // V(i - 1) has completed.
  auto softmax = [&](int nb, float(&corr)[2]) {
    const int n0 = nb * BN;
    if (!key_block_unmasked(n0, BN, qrow_lo, qrow_hi, nk, diag, left, right)) {
      // key_visible as a range per row: key n0 + 2 t + c is visible iff lo <= c < hi (two
      // compares per score; the per-element key_visible held ~20 more registers at the peak).
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int qd = qrow[r] + diag;
        const int lo = (left >= 0 ? qd - left : 0) - n0 - 2 * t;
        const int hi = min(nk, right >= 0 ? qd + right + 1 : nk) - n0 - 2 * t;
#pragma unroll
        for (int j = 0; j < kNT; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int c = 8 * j + e;
            if (c < lo || c >= hi) s[4 * j + 2 * r + e] = -INFINITY;
          }
      }
    }
    // The row maxima as kChains independent chains per row (a full tree would hold kNT more
    // registers next to S and P(i - 1), past the 168 of 3 warpgroups).
    constexpr int kChains = 4;
    float part[2][kChains];
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int c = 0; c < kChains; ++c) part[r][c] = fmaxf(s[4 * c + 2 * r], s[4 * c + 2 * r + 1]);
#pragma unroll
    for (int j = kChains; j < kNT; ++j)
#pragma unroll
      for (int r = 0; r < 2; ++r)
        part[r][j % kChains] =
            fmaxf(part[r][j % kChains], fmaxf(s[4 * j + 2 * r], s[4 * j + 2 * r + 1]));
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = tree_reduce<kChains / 2>(part[r], [](float a, float c) { return fmaxf(a, c); });
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      // The same decision in the quad's 4 threads. False when both are -inf (NaN > 8) and when
      // the block has nothing visible for the row; true at the row's first visible key.
      corr[r] = 1.0f;
      if ((mx - row_max[r]) * scale_log2 > kLazyLog2) {
        corr[r] = fast_exp2((row_max[r] - mx) * scale_log2);
        row_max[r] = mx;
      }
      // A row that has seen no visible key yet keeps max -inf; offset 0 makes its p exactly 0.
      const float offset = row_max[r] == -INFINITY ? 0.0f : row_max[r] * scale_log2;
#pragma unroll
      for (int j = 0; j < kNT; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[4 * j + 2 * r + e];
          x = fast_exp2(fmaf(x, scale_log2, -offset));
        }
    }
  };
  // O and the sums times corr (the rows whose max moved in the last softmax), once every P V
  // issued so far has completed; corr back to 1. Called under a CTA-uniform condition (the
  // wait is warpgroup-collective), rarely after the first blocks.
  auto rescale_o = [&](float(&corr)[2]) {
    wgmma_wait_group<0>();
    fence_registers(o);
    fence_registers(osum);
#pragma unroll
    for (int j = 0; j < kDT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[4 * j + e] *= corr[e / 2];
#pragma unroll
    for (int e = 0; e < 4; ++e) osum[e] *= corr[e / 2];
    corr[0] = corr[1] = 1.0f;
  };
  // P as the A fragments of k-step kk (accumulator column tiles 2 kk and 2 kk + 1).
  auto pack_p = [&](uint32_t(&pa)[kPVSteps][4]) {
#pragma unroll
    for (int kk = 0; kk < kPVSteps; ++kk) {
      pa[kk][0] = Mma<T>::pack(s[8 * kk + 0], s[8 * kk + 1]);
      pa[kk][1] = Mma<T>::pack(s[8 * kk + 2], s[8 * kk + 3]);
      pa[kk][2] = Mma<T>::pack(s[8 * kk + 4], s[8 * kk + 5]);
      pa[kk][3] = Mma<T>::pack(s[8 * kk + 6], s[8 * kk + 7]);
    }
  };
  // The barrier of a key block: this thread's copies landed and are visible to the async proxy,
  // every thread is here; returns whether any thread has a pending O rescale.
  auto barrier_any_rescale = [](const float(&corr)[2]) {
    cp_async_wait<0>();
    fence_proxy_async_shared();
    return __syncthreads_or((corr[0] != 1.0f) | (corr[1] != 1.0f)) != 0;
  };
  // Block i (key block nb) of the loop: S(i) into s, P(i - 1) V(i - 1) from pa_prev, then the
  // softmax of block i and P(i) into pa_cur. K(j) sits in K stage j % 2, V(j) in V stage
  // j % kVStages (v_stage: block i's).
  // kDoubleP (two P buffers, three V buffers): groups complete in commit order, so after this
  // step's wait_group 1 (S(i)) also P(i - 2) V(i - 2) has completed: P(i) may overwrite its
  // registers, and after the next barrier V(i + 1) may overwrite V(i - 2) while P(i - 1) V(i - 1)
  // may still run. No wait for P V stands before the packs, so ptxas keeps the softmax ahead of
  // it and the softmax overlaps P(i - 1) V(i - 1); O is rescaled (when a max moved) after the
  // next barrier, which tells every thread whether any thread needs it. Costs 32 registers: 2
  // warpgroups.
  // Otherwise (one P buffer, 2 V buffers): wait_group 0 after the softmax, then the rescale and
  // the packs. ptxas schedules that wait before the exponentials (it interleaves them with the
  // packs, which must follow it), so P(i - 1) V(i - 1) overlaps only other warpgroups' work.
  auto step = [&](int i, int v_stage, float(&corr)[2], uint32_t(&pa_cur)[kPVSteps][4],
                  const uint32_t(&pa_prev)[kPVSteps][4]) {
    const int nb = nb_last - i;
    const int stage = i & 1;
    const int v_prev = v_stage == 0 ? kVStages - 1 : v_stage - 1;
    if constexpr (kDoubleP) {
      // K(i) and V(i - 1) landed; every warpgroup finished S(i - 1) and P(i - 3) V(i - 3).
      if (barrier_any_rescale(corr)) rescale_o(corr);
    } else {
      // K(i) and V(i - 1) landed; every warpgroup finished S(i - 1) and P(i - 2) V(i - 2).
      copies_landed_barrier(AllGroups{});
    }
    wgmma_fence();  // O rescaled, P packed by ordinary instructions
    issue_s(stage);
    issue_pv(v_prev, pa_prev);
    if (i + 1 < num_blocks) k_loader.load_next(sK + (stage ^ 1) * Tile::kKVBytes, nk);  // K(i+1)
    v_loader.load_next(sV + v_stage * Tile::kKVBytes, nk);                              // V(i)
    cp_async_commit();
    wgmma_wait_group<1>();  // S(i) done; P(i - 1) V(i - 1) may still run
    fence_registers(s);
    softmax(nb, corr);
    if constexpr (!kDoubleP) {
      wgmma_wait_group<0>();
      fence_registers(o);
      fence_registers(osum);
      fence_registers(pa_cur);
      // Warp-uniform: after the first blocks the max rarely moves by more than 2^8.
      if (__any_sync(0xffffffffu, (corr[0] != 1.0f) | (corr[1] != 1.0f))) {
#pragma unroll
        for (int j = 0; j < kDT; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) o[4 * j + e] *= corr[e / 2];
#pragma unroll
        for (int e = 0; e < 4; ++e) osum[e] *= corr[e / 2];
      }
      corr[0] = corr[1] = 1.0f;
    }
    pack_p(pa_cur);
  };

  if (num_blocks > 0) {
    // The ones tile (covered by the first barrier's proxy fence), Q and K(0); K(1) and V(0)
    // stream in while S(0) and its softmax run.
    static_assert(Tile::kOnesBytes / 4 <= kThreads, "one 32-bit store per thread");
    if (tid < Tile::kOnesBytes / 4) {
      const uint32_t one2 = Mma<T>::pack(1.0f, 1.0f);
      asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(sOnes + 4 * tid), "r"(one2) : "memory");
    }
    SwzTileLoader<T, D, BM, kThreads>(q_base, p.q_row, m0, tid).load_next(sQ, nq);
    k_loader.load_next(sK, nk);  // K(0)
    cp_async_commit();
    if (num_blocks > 1) k_loader.load_next(sK + Tile::kKVBytes, nk);  // K(1)
    v_loader.load_next(sV, nk);                                       // V(0)
    cp_async_commit();
    copies_landed_barrier(std::integral_constant<int, 1>{});  // ones, Q and K(0)
    float corr[2];
    wgmma_fence();
    issue_s(0);
    wgmma_wait_group<0>();
    fence_registers(s);
    softmax(nb_last, corr);
    pack_p(pa0);
    corr[0] = corr[1] = 1.0f;  // O and the sums are still zero
    auto next_v = [](int v) { return v == kVStages - 1 ? 0 : v + 1; };
    int v_stage = 1;
    if constexpr (kDoubleP) {
      // Unrolled by two so that the P buffers are fixed registers.
      int i = 1;
      for (; i + 1 < num_blocks; i += 2) {
        step(i, v_stage, corr, pa1, pa0);
        v_stage = next_v(v_stage);
        step(i + 1, v_stage, corr, pa0, pa1);
        v_stage = next_v(v_stage);
      }
      if (i < num_blocks) {
        step(i, v_stage, corr, pa1, pa0);
        v_stage = next_v(v_stage);
      }
      // V(last) landed; the last block's rescale.
      if (barrier_any_rescale(corr)) rescale_o(corr);
    } else {
      for (int i = 1; i < num_blocks; ++i) {
        step(i, v_stage, corr, pa0, pa0);
        v_stage = next_v(v_stage);
      }
      copies_landed_barrier(AllGroups{});  // V(last) landed
    }
    wgmma_fence();
    const int v_last = v_stage == 0 ? kVStages - 1 : v_stage - 1;
    if (kDoubleP && ((num_blocks - 1) & 1)) {
      issue_pv(v_last, pa1);
    } else {
      issue_pv(v_last, pa0);
    }
    wgmma_wait_group<0>();
    fence_registers(o);
    fence_registers(osum);
    fence_registers(pa0);
    if constexpr (kDoubleP) fence_registers(pa1);
  }

  // Epilogue: normalise, write lse, and write O through this warpgroup's rows of the Q tile
  // (only its own, completed wgmmas read them), then 16-byte global stores.
  const int64_t total_q = span.total_q;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float sum = osum[2 * r];  // the whole row's sum (the ones tile summed all columns)
    const bool any = sum > 0.0f;
    const float inv = any ? 1.0f / sum : 0.0f;
    const int local_row = local_row0 + 8 * r;
#pragma unroll
    for (int j = 0; j < kDT; ++j) {
      *reinterpret_cast<uint32_t*>(smem_q + swz_offset<D>(local_row, j) + 4 * t) =
          Mma<T>::pack(o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv);
    }
    if (p.lse != nullptr && t == 0 && qrow[r] < nq) {
      // lse = ln(sum_j exp(scale s_j)) = (max * scale_log2 + log2(sum)) * ln 2.
      p.lse[lse_row(p, b, h, span.q_row0, qrow[r], total_q)] =
          any ? (row_max[r] * scale_log2 + __log2f(sum)) * 0.69314718055994531f : -INFINITY;
    }
  }
  __syncthreads();
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
        *reinterpret_cast<const uint4*>(smem_q + swz_offset<D>(i, c));
  }
#endif
}

}  // namespace sqa::cuda::detail
