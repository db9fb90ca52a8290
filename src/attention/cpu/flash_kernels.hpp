// Tile kernels of the CPU fast path, written once over GCC vector extensions and compiled once
// per SIMD path (flash_avx512.cpp, flash_avx2.cpp, flash_portable.cpp) with that path's -m
// flags. Each including file defines:
//   SQA_SIMD_WIDTH  floats per vector (16, 8, 4)
//   SQA_SIMD_MR     rows of a register tile
//   SQA_SIMD_NV     vectors (columns / width) of a register tile
// Everything here has internal linkage, so code built for one ISA never leaks into another.
//
// Forward (FlashAttention-2 order): per item, one query block is packed once, transposed and
// pre-scaled by scale * log2(e) (scores then live in the log2 domain and exp becomes exp2).
// For each key tile the scores are computed TRANSPOSED, S^T = K Q^T (keys x queries): the
// online-softmax statistics (row max m, row sum l) of all query rows are then plain vector
// max/add over key rows, with no horizontal reductions. O += P V reads P^T as broadcasts.
//
// Backward (FlashAttention-2): per item, one KV tile is packed (K^T, V^T, K) once and reused for
// every query block of every attention head that reads this KV head; dK and dV accumulate in
// the item's scratch (no races), dQ goes to the calling thread's accumulator.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "flash_plan.hpp"

#if SQA_SIMD_WIDTH == 16
#include <immintrin.h>
#endif

#if !defined(SQA_SIMD_WIDTH) || !defined(SQA_SIMD_MR) || !defined(SQA_SIMD_NV)
#error "define SQA_SIMD_WIDTH, SQA_SIMD_MR and SQA_SIMD_NV before including flash_kernels.hpp"
#endif

namespace sqa::cpu::flash {
namespace {

constexpr int W = SQA_SIMD_WIDTH;
constexpr int kMR = SQA_SIMD_MR;
constexpr int kNV = SQA_SIMD_NV;
static_assert(kBlockQ % W == 0 && kBlockK % W == 0 && kBlockKB % W == 0, "tiles need full vectors");

typedef float vf __attribute__((vector_size(4 * W)));
typedef int32_t vi __attribute__((vector_size(4 * W)));
typedef uint32_t vu __attribute__((vector_size(4 * W)));
typedef uint16_t vh __attribute__((vector_size(2 * W)));
// Unaligned, aliasing views for loads and stores through float / uint16 pointers.
typedef float vf_u __attribute__((vector_size(4 * W), aligned(4), may_alias));
typedef int32_t vi_u __attribute__((vector_size(4 * W), aligned(4), may_alias));
typedef uint16_t vh_u __attribute__((vector_size(2 * W), aligned(2), may_alias));

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

inline int64_t min64(int64_t a, int64_t b) {
  return a < b ? a : b;
}
inline int round_up(int x, int m) {
  return (x + m - 1) / m * m;
}

inline vf vload(const float* p) {
  return *reinterpret_cast<const vf_u*>(p);
}
inline void vstore(float* p, vf v) {
  *reinterpret_cast<vf_u*>(p) = v;
}
inline vi vload_i(const int32_t* p) {
  return *reinterpret_cast<const vi_u*>(p);
}
// x - 0 is x for every float (x + 0 is not: -0 + 0 = +0), so the compiler folds the subtraction
// and a broadcast from memory remains; vf{} + x left an extra scalar add in every GEMM step.
inline vf vsplat(float x) {
  return x - vf{};
}
inline vi vsplat_i(int32_t x) {
  return vi{} + x;
}
inline vf vmax(vf a, vf b) {
  return a > b ? a : b;
}
inline vf vneg_inf() {
  return vsplat(-__builtin_inff());
}
inline vf vload_bf16(const uint16_t* p) {
#if SQA_SIMD_WIDTH == 16
  // GCC splits the generic widening below into two 256-bit halves plus an insert; one
  // vpmovzxwd from memory does it (bf16 decode is bound by this conversion). The zero-masked
  // form (and a vector-extension shift): the unmasked intrinsics trip GCC 12's
  // -Wmaybe-uninitialized inside its own header.
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m512i wide = _mm512_maskz_cvtepu16_epi32(static_cast<__mmask16>(0xffff), h);
  return reinterpret_cast<vf>(reinterpret_cast<vu>(wide) << 16);
#else
  const vh h = *reinterpret_cast<const vh_u*>(p);
  return reinterpret_cast<vf>(__builtin_convertvector(h, vu) << 16);
#endif
}

// 2^x for x <= 0 (and a little above): split x = n + f with n integer and |f| <= 1/2, a
// degree-6 polynomial for 2^f (relative error ~1.2e-7) and n added into the exponent field.
// Arguments below -126 (including -inf from masks) give exactly 0.
inline vf vexp2(vf x) {
  const vi underflow = x < -126.0f;
  x = x < -126.0f ? vsplat(-126.0f) : x;
  x = x > 127.0f ? vsplat(127.0f) : x;
  const vf shifter = vsplat(12582912.0f);  // 1.5 * 2^23: adding it rounds x to an integer
  const vf t = x + shifter;
  const vf n = t - shifter;
  const vf f = x - n;
  vf p = vsplat(1.5403530393381606e-4f);
  p = p * f + 1.3333558146428443e-3f;
  p = p * f + 9.6181291076284772e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  p = p * f + 1.0f;
  const vi exponent = (reinterpret_cast<vi>(t) - reinterpret_cast<vi>(shifter)) << 23;
  const vf out = reinterpret_cast<vf>(reinterpret_cast<vi>(p) + exponent);
  return underflow ? vf{} : out;
}

// Horizontal sum (decode dot products).
inline float vsum(vf v) {
#if SQA_SIMD_WIDTH == 16
  v += __builtin_shuffle(v, vi{8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
  v += __builtin_shuffle(v, vi{4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11});
  v += __builtin_shuffle(v, vi{2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13});
  v += __builtin_shuffle(v, vi{1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14});
#elif SQA_SIMD_WIDTH == 8
  v += __builtin_shuffle(v, vi{4, 5, 6, 7, 0, 1, 2, 3});
  v += __builtin_shuffle(v, vi{2, 3, 0, 1, 6, 7, 4, 5});
  v += __builtin_shuffle(v, vi{1, 0, 3, 2, 5, 4, 7, 6});
#else
  v += __builtin_shuffle(v, vi{2, 3, 0, 1});
  v += __builtin_shuffle(v, vi{1, 0, 3, 2});
#endif
  return v[0];
}

// 0, 1, ..., W - 1: key offsets of a vector's lanes (masks).
template <int... K>
constexpr vi lane_index(std::integer_sequence<int, K...>) {
  return vi{K...};
}
constexpr vi kLanes = lane_index(std::make_integer_sequence<int, W>{});

// ---- GEMM on packed tiles ---------------------------------------------------------------------
// C (M x N) (+)= A (M x K) B (K x N), with A(m, k) = a[m * sam + k * sak] read as broadcast
// scalars (so transposed views of a tile cost nothing), B rows of N floats at stride ldb and C
// rows at stride ldc. N is a multiple of W. One register tile is MR rows x NV vectors.

// A GEMM calls its hook every kHookSteps steps of the reduction loop: stacked decode's
// PrefetchPacer spreads the next tile's prefetches over the FMAs with it. Every few steps rather
// than every step, so the hook's counters live outside the FMA loop's registers.
constexpr int kHookSteps = 8;
struct NoHook {
  void operator()() {}
};

template <int MR, int NV, bool kAccumulate, class Hook = NoHook>
inline void gemm_tile(int K, const float* a, int64_t sam, int64_t sak, const float* b, int64_t ldb,
                      float* c, int64_t ldc, Hook& hook_state) {
  // A local copy keeps the hook's counters in registers (through the reference GCC stores
  // them to memory every step).
  Hook hook = hook_state;
  vf acc[MR][NV];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[m][v] = kAccumulate ? vload(c + m * ldc + v * W) : vf{};
  }
  // NoHook (every GEMM but stacked decode's) runs the reduction as one slice.
  constexpr bool kHooked = !std::is_same_v<Hook, NoHook>;
  for (int k0 = 0; k0 < K; k0 += kHooked ? kHookSteps : K) {
    const int k1 = kHooked && k0 + kHookSteps < K ? k0 + kHookSteps : K;
    for (int k = k0; k < k1; ++k) {
      vf bv[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) bv[v] = vload(b + k * ldb + v * W);
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        const vf am = vsplat(a[m * sam + k * sak]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[m][v] += am * bv[v];
      }
    }
    hook();
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) vstore(c + m * ldc + v * W, acc[m][v]);
  }
  hook_state = hook;
}

template <int NV, bool kAccumulate, class Hook>
inline void gemm_rows(int M, int K, const float* a, int64_t sam, int64_t sak, const float* b,
                      int64_t ldb, float* c, int64_t ldc, Hook& hook) {
  int m0 = 0;
  for (; m0 + kMR <= M; m0 += kMR)
    gemm_tile<kMR, NV, kAccumulate>(K, a + m0 * sam, sam, sak, b, ldb, c + m0 * ldc, ldc, hook);
  const float* at = a + m0 * sam;
  float* ct = c + m0 * ldc;
  switch (M - m0) {
    case 0:
      break;
    case 1:
      gemm_tile<1, NV, kAccumulate>(K, at, sam, sak, b, ldb, ct, ldc, hook);
      break;
    case 2:
      gemm_tile<2, NV, kAccumulate>(K, at, sam, sak, b, ldb, ct, ldc, hook);
      break;
    case 3:
      gemm_tile<3, NV, kAccumulate>(K, at, sam, sak, b, ldb, ct, ldc, hook);
      break;
    case 4:
      gemm_tile<4, NV, kAccumulate>(K, at, sam, sak, b, ldb, ct, ldc, hook);
      break;
    case 5:
      gemm_tile<5, NV, kAccumulate>(K, at, sam, sak, b, ldb, ct, ldc, hook);
      break;
    case 6:
      gemm_tile<6, NV, kAccumulate>(K, at, sam, sak, b, ldb, ct, ldc, hook);
      break;
    case 7:
      gemm_tile<7, NV, kAccumulate>(K, at, sam, sak, b, ldb, ct, ldc, hook);
      break;
    default:
      break;
  }
}

template <bool kAccumulate, class Hook = NoHook>
inline void gemm(int M, int N, int K, const float* a, int64_t sam, int64_t sak, const float* b,
                 int64_t ldb, float* c, int64_t ldc, Hook&& hook = Hook{}) {
  static_assert(kMR <= 8, "gemm_rows handles row tails up to 7");
  int n0 = 0;
  for (; n0 + kNV * W <= N; n0 += kNV * W)
    gemm_rows<kNV, kAccumulate>(M, K, a, sam, sak, b + n0, ldb, c + n0, ldc, hook);
  switch ((N - n0) / W) {
    case 0:
      break;
    case 1:
      gemm_rows<1, kAccumulate>(M, K, a, sam, sak, b + n0, ldb, c + n0, ldc, hook);
      break;
    case 2:
      gemm_rows<2, kAccumulate>(M, K, a, sam, sak, b + n0, ldb, c + n0, ldc, hook);
      break;
    case 3:
      gemm_rows<3, kAccumulate>(M, K, a, sam, sak, b + n0, ldb, c + n0, ldc, hook);
      break;
    default:
      break;
  }
}

// ---- prefetch ----------------------------------------------------------------------------------

// Walks the cache lines of `rows` key rows of `row_bytes` bytes each, `stride` bytes apart,
// prefetching one line per step into L2 (into L1 they evict the tile being computed: measured
// 6-10% slower).
struct LineWalk {
  const char* row = nullptr;
  int64_t stride = 0, row_bytes = 1;
  int row_lines = 0;  // one more than the row's lines when it may straddle an extra one
  int rows = 0, x = 0;

  LineWalk() = default;
  LineWalk(const char* first, int64_t stride_bytes, int64_t bytes, int nrows)
      : row(first), stride(stride_bytes), row_bytes(bytes), rows(nrows) {
    const bool aligned = (reinterpret_cast<uintptr_t>(first) | static_cast<uint64_t>(stride_bytes) |
                          static_cast<uint64_t>(bytes)) %
                             64 ==
                         0;
    row_lines = static_cast<int>((bytes + 63) / 64) + (aligned ? 0 : 1);
  }
  int64_t lines() const { return int64_t{rows} * row_lines; }
  void step() {
    if (rows <= 0) return;
    const int64_t at = x * int64_t{64} < row_bytes ? x * int64_t{64} : row_bytes - 1;
    __builtin_prefetch(row + at, 0, 2);
    if (++x < row_lines) return;
    x = 0;
    row += stride;
    --rows;
  }
};

// A GEMM hook that spreads a LineWalk evenly over the GEMM's `steps` hook calls. Decode with a
// large query group does ~G FMAs per cache byte; without prefetching the core alternates between
// waiting on memory and computing instead of overlapping them (the hardware prefetcher stops at
// every 4 KiB page). Evenly, because a burst of hundreds of prefetches at the tile start fills
// the miss queues and stalls the core like plain loads (measured: no gain); with a fixed period,
// so the branch stays predictable.
struct PrefetchPacer {
  LineWalk walk;
  int period = 1, per_step = 0, countdown = 1;

  PrefetchPacer() = default;
  PrefetchPacer(const LineWalk& w, int64_t steps) : walk(w) {
    const int64_t n = w.lines();
    if (n == 0 || steps <= 0) return;
    period = static_cast<int>(steps >= n ? steps / n : 1);
    per_step = static_cast<int>(steps >= n ? 1 : (n + steps - 1) / steps);
    countdown = period;
  }
  __attribute__((always_inline)) void operator()() {
    if (--countdown > 0) return;
    countdown = period;
    for (int i = 0; i < per_step; ++i) walk.step();
  }
};

// Calls of its hook that gemm(M, N, K) makes.
inline int64_t gemm_steps(int M, int N, int K) {
  return int64_t{(M + kMR - 1) / kMR} * ((N / W + kNV - 1) / kNV) *
         ((K + kHookSteps - 1) / kHookSteps);
}

// ---- element access ---------------------------------------------------------------------------

// Offset of (row, head) of a sequence in a tensor with strides st.
inline int64_t row_offset(const TensorStrides& st, const Sequence& s, int64_t row0, int64_t r,
                          int64_t h) {
  return s.batch_index * st.batch + (row0 + r) * st.row + h * st.head;
}

// dst[0..n) = scale * src[offset..offset+n) converted to fp32, zeros in dst[n..padded).
inline void load_row(const void* base, bool bf16, int64_t offset, int n, int padded, float scale,
                     float* dst) {
  int c = 0;
  if (bf16) {
    const uint16_t* src = static_cast<const uint16_t*>(base) + offset;
    for (; c + W <= n; c += W) vstore(dst + c, vload_bf16(src + c) * scale);
    for (; c < n; ++c) {
      const uint32_t wide = static_cast<uint32_t>(src[c]) << 16;
      float x;
      std::memcpy(&x, &wide, 4);
      dst[c] = x * scale;
    }
  } else {
    const float* src = static_cast<const float*>(base) + offset;
    for (; c + W <= n; c += W) vstore(dst + c, vload(src + c) * scale);
    for (; c < n; ++c) dst[c] = src[c] * scale;
  }
  for (; c < padded; ++c) dst[c] = 0.0f;
}

inline uint16_t to_bf16_bits(float x) {
  uint32_t wide;
  std::memcpy(&wide, &x, 4);
  if ((wide & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((wide >> 16) | 0x40);
  return static_cast<uint16_t>((wide + 0x7fffu + ((wide >> 16) & 1u)) >> 16);
}

// dst[offset..offset+n) = scale * src[0..n), rounded to the dtype.
inline void store_row(void* base, bool bf16, int64_t offset, int n, float scale, const float* src) {
  if (bf16) {
    uint16_t* dst = static_cast<uint16_t*>(base) + offset;
    for (int c = 0; c < n; ++c) dst[c] = to_bf16_bits(src[c] * scale);
  } else {
    float* dst = static_cast<float*>(base) + offset;
    int c = 0;
    for (; c + W <= n; c += W) vstore(dst + c, vload(src + c) * scale);
    for (; c < n; ++c) dst[c] = src[c] * scale;
  }
}

// ---- forward ----------------------------------------------------------------------------------

void forward_item(const ForwardContext& ctx, const ForwardItem& it, float* scratch) {
  const AttentionParams& p = *ctx.params;
  const int d = p.spec.head_dim;
  const int dp = ctx.padded_dim;
  const bool bf = p.dtype == DType::bf16;
  // Every stacked head reads the same KV head (the planner only stacks a KV head's group).
  const int kv_head = head_pair(p.spec.heads, it.h).kv_head;
  const Sequence& s = it.seq;
  const int rows = it.columns();     // score columns: (head, query row) pairs
  const int nb = round_up(rows, W);  // score columns in use (padded)
  // Decode-shaped items (one or two query rows of one head) take dot products along head_dim
  // instead of a GEMM whose query dimension would be mostly padding.
  const bool dot = rows <= 2;
  const float qscale = p.spec.scale() * kLog2e;

  float* qt = scratch;                                  // gemm: d x kBlockQ; dot: rows x dp
  float* st = qt + static_cast<int64_t>(dp) * kBlockQ;  // kBlockK x kBlockQ, S^T then P^T
  float* o = st + kBlockK * kBlockQ;                    // kBlockQ x dp
  float* kp = o + static_cast<int64_t>(kBlockQ) * dp;   // kBlockK x dp
  float* vp = kp + static_cast<int64_t>(kBlockK) * dp;  // kBlockK x dp
  float* m = vp + static_cast<int64_t>(kBlockK) * dp;   // running max (log2 domain)
  float* l = m + kBlockQ;                               // running sum
  float* alpha = l + kBlockQ;                           // rescale factor of this tile
  int32_t* begin = reinterpret_cast<int32_t*>(alpha + kBlockQ);  // visible keys [begin, end)
  int32_t* end = begin + kBlockQ;

  // Pack the query block (pre-scaled) and the visible key range of each column.
  float* row_buf = kp;  // free until the first key tile
  for (int c = 0; c < rows; ++c) {
    const int64_t r = it.i0 + c % it.rows;
    const int qh = head_pair(p.spec.heads, it.h + c / it.rows).query_head;
    const int64_t off = row_offset(p.q_strides, s, s.q_row0, r, qh);
    if (dot) {
      load_row(p.q, bf, off, d, dp, qscale, qt + c * dp);
    } else {
      load_row(p.q, bf, off, d, d, qscale, row_buf);
      for (int x = 0; x < d; ++x) qt[x * kBlockQ + c] = row_buf[x];
    }
    const KeyRange kr = visible_keys(p.spec.window, r, s.seqlen_q, s.seqlen_k);
    begin[c] = static_cast<int32_t>(kr.begin);
    end[c] = static_cast<int32_t>(kr.end);
  }
  for (int i = rows; i < nb; ++i) {
    if (!dot)
      for (int c = 0; c < d; ++c) qt[c * kBlockQ + i] = 0.0f;
    begin[i] = end[i] = 0;  // padding columns see nothing
  }
  for (int i = 0; i < nb; ++i) {
    m[i] = -__builtin_inff();
    l[i] = 0.0f;
  }
  for (int64_t i = 0; i < static_cast<int64_t>(rows) * dp; ++i) o[i] = 0.0f;
  // The dot path writes only the real columns of S^T; keep the padding columns finite.
  if (dot)
    for (int i = 0; i < kBlockK * kBlockQ; ++i) st[i] = 0.0f;
  // Keys visible to every column of the block: tiles inside need no mask.
  int64_t full_lo = begin[0], full_hi = end[0];
  for (int c = 1; c < rows; ++c) {
    full_lo = full_lo > begin[c] ? full_lo : begin[c];
    full_hi = full_hi < end[c] ? full_hi : end[c];
  }

  const int64_t kstride = p.k_strides.row, vstride = p.v_strides.row;
  const bool k_in_place = !bf && (!dot || d % W == 0);
  const bool v_in_place = !bf && d % W == 0;
  const int64_t esize = bf ? 2 : 4;
  auto k_bytes = [&](int64_t j) {
    return static_cast<const char*>(p.k) + row_offset(p.k_strides, s, s.k_row0, j, kv_head) * esize;
  };
  auto v_bytes = [&](int64_t j) {
    return static_cast<const char*>(p.v) + row_offset(p.v_strides, s, s.k_row0, j, kv_head) * esize;
  };
  constexpr int kTlbAhead = 4;
  for (int64_t j0 = it.k_lo; j0 < it.k_hi; j0 += kBlockK) {
    const int bc = static_cast<int>(min64(kBlockK, it.k_hi - j0));
    // Stacked decode streams the cache once: fetch the next tile's K during this tile's scores
    // and its V during this tile's P V, and touch one line per 4 KiB page of the tile
    // kTlbAhead tiles on, so that page's walk is done before its lines are fetched (the walks
    // otherwise stall the paced prefetches: MQA decode 10% faster).
    PrefetchPacer k_pacer, v_pacer;
    if (it.heads > 1 && j0 + kBlockK < it.k_hi) {
      const int next = static_cast<int>(min64(kBlockK, it.k_hi - j0 - kBlockK));
      k_pacer = PrefetchPacer(LineWalk(k_bytes(j0 + kBlockK), kstride * esize, d * esize, next),
                              dot ? 0 : gemm_steps(bc, nb, d));
      v_pacer = PrefetchPacer(LineWalk(v_bytes(j0 + kBlockK), vstride * esize, d * esize, next),
                              gemm_steps(rows, dp, bc));
    }
    if (it.heads > 1 && j0 + kTlbAhead * kBlockK < it.k_hi) {
      const int64_t jt = j0 + kTlbAhead * kBlockK, nt = min64(kBlockK, it.k_hi - jt);
      for (int64_t x = 0; x < (nt - 1) * kstride * esize + d * esize; x += 4096)
        __builtin_prefetch(k_bytes(jt) + x, 0, 2);
      for (int64_t x = 0; x < (nt - 1) * vstride * esize + d * esize; x += 4096)
        __builtin_prefetch(v_bytes(jt) + x, 0, 2);
    }
    const float* ka;
    int64_t lda;
    if (k_in_place) {
      ka = static_cast<const float*>(p.k) + row_offset(p.k_strides, s, s.k_row0, j0, kv_head);
      lda = kstride;
    } else {
      for (int j = 0; j < bc; ++j)
        load_row(p.k, bf, row_offset(p.k_strides, s, s.k_row0, j0 + j, kv_head), d, dp, 1.0f,
                 kp + j * dp);
      ka = kp;
      lda = dp;
    }
    // S^T (bc x nb), log2 domain.
    if (dot) {
      for (int j = 0; j < bc; ++j) {
        const float* kr = ka + j * lda;
        for (int i = 0; i < rows; ++i) {
          vf acc = vf{};
          for (int c = 0; c < dp; c += W) acc += vload(kr + c) * vload(qt + i * dp + c);
          st[j * kBlockQ + i] = vsum(acc);
        }
      }
    } else {
      gemm<false>(bc, nb, d, ka, lda, 1, qt, kBlockQ, st, kBlockQ, k_pacer);
    }
    const bool full = j0 >= full_lo && j0 + bc <= full_hi;
    if (!full) {
      for (int j = 0; j < bc; ++j) {
        const vi key = vsplat_i(static_cast<int32_t>(j0 + j));
        for (int i = 0; i < nb; i += W) {
          const vi hidden = (key < vload_i(begin + i)) | (key >= vload_i(end + i));
          vstore(st + j * kBlockQ + i, hidden ? vneg_inf() : vload(st + j * kBlockQ + i));
        }
      }
    }
    // Online softmax: rescale the running sum when the max grows (FlashAttention-2).
    for (int i = 0; i < nb; i += W) {
      vf tile_max = vneg_inf();
      for (int j = 0; j < bc; ++j) tile_max = vmax(tile_max, vload(st + j * kBlockQ + i));
      const vf m_old = vload(m + i);
      const vf m_new = vmax(m_old, tile_max);
      // A row with nothing visible yet keeps max -inf; subtract 0 so exp2 gives 0, not NaN.
      const vf m_safe = m_new == vneg_inf() ? vf{} : m_new;
      const vf a = vexp2(m_old - m_safe);
      vf sum = vf{};
      for (int j = 0; j < bc; ++j) {
        const vf e = vexp2(vload(st + j * kBlockQ + i) - m_safe);
        vstore(st + j * kBlockQ + i, e);
        sum += e;
      }
      vstore(l + i, vload(l + i) * a + sum);
      vstore(m + i, m_new);
      vstore(alpha + i, a);
    }
    for (int i = 0; i < rows; ++i) {
      if (alpha[i] == 1.0f) continue;
      const vf a = vsplat(alpha[i]);
      for (int c = 0; c < dp; c += W) vstore(o + i * dp + c, vload(o + i * dp + c) * a);
    }
    const float* vb;
    int64_t ldb;
    if (v_in_place) {
      vb = static_cast<const float*>(p.v) + row_offset(p.v_strides, s, s.k_row0, j0, kv_head);
      ldb = vstride;
    } else {
      for (int j = 0; j < bc; ++j)
        load_row(p.v, bf, row_offset(p.v_strides, s, s.k_row0, j0 + j, kv_head), d, dp, 1.0f,
                 vp + j * dp);
      vb = vp;
      ldb = dp;
    }
    // O (rows x dp) += P (rows x bc) V (bc x dp), P read from the transposed tile.
    gemm<true>(rows, dp, bc, st, 1, kBlockQ, vb, ldb, o, dp, v_pacer);
  }

  if (it.partial >= 0) {
    // Split-KV: the planner combines the slices by log-sum-exp.
    const int64_t slot = it.partial * ctx.partial_rows;
    float* po = ctx.partial_out + slot * dp;
    for (int64_t i = 0; i < static_cast<int64_t>(rows) * dp; ++i) po[i] = o[i];
    for (int i = 0; i < rows; ++i) {
      ctx.partial_max[slot + i] = m[i];
      ctx.partial_sum[slot + i] = l[i];
    }
    return;
  }
  const int heads = p.spec.heads.num_attention_heads();
  for (int i = 0; i < rows; ++i) {
    const int h = it.h + i / it.rows;
    const int64_t r = it.i0 + i % it.rows;
    const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;  // no visible key: output 0
    store_row(p.out, bf, row_offset(p.out_strides, s, s.q_row0, r, h), d, inv, o + i * dp);
    if (p.lse) {
      const int64_t index = p.is_varlen()
                                ? h * static_cast<int64_t>(p.cu_seqlens_q[p.batch]) + s.q_row0 + r
                                : (s.batch_index * heads + h) * p.seqlen_q + r;
      p.lse[index] = l[i] > 0.0f ? (m[i] + std::log2(l[i])) * kLn2 : -__builtin_inff();
    }
  }
}

// ---- decode -----------------------------------------------------------------------------------

// The decode's per-key dot product of a K row (load(c): lanes c .. c + W - 1) with a
// pre-scaled query row over dp lanes (a multiple of W), in two accumulator chains: with one,
// each FMA waits on the one before it and the dot is latency-bound.
template <typename Load>
inline float decode_dot(Load load, const float* q, int dp) {
  vf a0 = vf{}, a1 = vf{};
  int c = 0;
  for (; c + 2 * W <= dp; c += 2 * W) {
    a0 += load(c) * vload(q + c);
    a1 += load(c + W) * vload(q + c + W);
  }
  if (c < dp) a0 += load(c) * vload(q + c);
  return vsum(a0 + a1);
}

void decode_item(const ForwardContext& ctx, const DecodeItem& it, float* scratch) {
  const AttentionParams& p = *ctx.params;
  const int d = p.spec.head_dim;
  const int dp = ctx.padded_dim;
  const bool bf = p.dtype == DType::bf16;
  const Sequence& s = it.seq;
  const int rows = static_cast<int>(s.seqlen_q);
  const int heads = p.spec.heads.num_attention_heads();
  const int kv_heads = p.spec.heads.num_kv_heads;
  const int nr = heads * rows;  // score rows: (head, query row)
  const float qscale = p.spec.scale() * kLog2e;

  float* q = scratch;                             // [nr][dp], pre-scaled
  float* o = q + static_cast<int64_t>(nr) * dp;   // [nr][dp]
  float* sc = o + static_cast<int64_t>(nr) * dp;  // [nr][kBlockK] scores, then P
  float* m = sc + static_cast<int64_t>(nr) * kBlockK;
  float* l = m + nr;
  float* krow = l + nr;                                      // [kv_heads][dp] converted K row
  float* vbuf = krow + static_cast<int64_t>(kv_heads) * dp;  // [kBlockK][kv_heads][dp]
  int32_t* kvh = reinterpret_cast<int32_t*>(vbuf + static_cast<int64_t>(kBlockK) * kv_heads * dp);
  int64_t begin[kDecodeRows], end[kDecodeRows];

  for (int h = 0; h < heads; ++h) {
    const HeadPair pair = head_pair(p.spec.heads, h);
    kvh[h] = pair.kv_head;
    for (int i = 0; i < rows; ++i) {
      load_row(p.q, bf, row_offset(p.q_strides, s, s.q_row0, i, pair.query_head), d, dp, qscale,
               q + (h * rows + i) * dp);
    }
  }
  for (int i = 0; i < rows; ++i) {
    const KeyRange r = visible_keys(p.spec.window, i, s.seqlen_q, s.seqlen_k);
    begin[i] = r.begin;
    end[i] = r.end;
  }
  for (int64_t x = 0; x < static_cast<int64_t>(nr) * dp; ++x) o[x] = 0.0f;
  for (int r = 0; r < nr; ++r) {
    m[r] = -__builtin_inff();
    l[r] = 0.0f;
  }
  // K/V rows are read in place when they are fp32 with whole vectors per head.
  const bool in_place = !bf && d % W == 0;
  const bool bf_in_place = bf && d % W == 0;
  const int64_t kstride = p.k_strides.row;
  const int64_t esize = bf ? 2 : 4;
  const int64_t kspan = (kv_heads - 1) * p.k_strides.head + d;  // elements of one key's K row
  const int64_t vspan = (kv_heads - 1) * p.v_strides.head + d;
  const int64_t k_ahead = (2048 + esize * kspan - 1) / (esize * kspan);  // keys in ~2 KB of K
  const bool k_prefetch = heads >= 4 * kv_heads;
  // Key tile: the V rows fetched during a tile's scores must still be in L2 for its P V, while
  // the K stream passes through the same cache; cap a tile's V at ~128 KB.
  const int64_t tile_cap = (128 * 1024) / (esize * vspan) / W * W;
  const int tile = static_cast<int>(tile_cap < W ? W : min64(kBlockK, tile_cap));
  for (int64_t j0 = it.k_lo; j0 < it.k_hi; j0 += tile) {
    const int bc = static_cast<int>(min64(tile, it.k_hi - j0));
    const int nbc = round_up(bc, W);
    for (int j = 0; j < bc; ++j) {
      // Fetch this key's V row (all heads) now, in the same sequential order as K, and the K row
      // k_ahead keys on when the K loads would otherwise wait on memory: with a query group of 4
      // or more (the group's dot products keep the core busy long enough per key that the
      // hardware prefetcher falls behind: G = 4 decode 10-15% faster, G = 2 8% slower with it),
      // and always for bf16, whose rows are converted as soon as they are loaded (25-30% faster).
      const float* kr;
      if (in_place) {
        kr = static_cast<const float*>(p.k) + row_offset(p.k_strides, s, s.k_row0, j0 + j, 0);
        const float* vr =
            static_cast<const float*>(p.v) + row_offset(p.v_strides, s, s.k_row0, j0 + j, 0);
        for (int64_t x = 0; x < vspan; x += 16) __builtin_prefetch(vr + x);
        if (k_prefetch && j0 + j + k_ahead < it.k_hi)
          for (int64_t x = 0; x < kspan; x += 16) __builtin_prefetch(kr + k_ahead * kstride + x);
      } else {
        const char* vr =
            static_cast<const char*>(p.v) + row_offset(p.v_strides, s, s.k_row0, j0 + j, 0) * esize;
        for (int64_t x = 0; x < vspan * esize; x += 64) __builtin_prefetch(vr + x);
        if (j0 + j + k_ahead < it.k_hi) {
          const char* kn = static_cast<const char*>(p.k) +
                           row_offset(p.k_strides, s, s.k_row0, j0 + j + k_ahead, 0) * esize;
          for (int64_t x = 0; x < kspan * esize; x += 64) __builtin_prefetch(kn + x);
        }
        if (bf_in_place) {
          // bf16 with whole vectors per head: widen inside the dot products below instead of
          // converting the row to a buffer first.
          const uint16_t* kb =
              static_cast<const uint16_t*>(p.k) + row_offset(p.k_strides, s, s.k_row0, j0 + j, 0);
          for (int h = 0; h < heads; ++h) {
            const uint16_t* kk = kb + kvh[h] * p.k_strides.head;
            for (int i = 0; i < rows; ++i) {
              const float* qq = q + (h * rows + i) * dp;
              sc[(h * rows + i) * kBlockK + j] =
                  decode_dot([kk](int c) { return vload_bf16(kk + c); }, qq, dp);
            }
          }
          continue;
        }
        for (int g = 0; g < kv_heads; ++g)
          load_row(p.k, bf, row_offset(p.k_strides, s, s.k_row0, j0 + j, g), d, dp, 1.0f,
                   krow + g * dp);
        kr = krow;
      }
      const int64_t kh_stride = in_place ? p.k_strides.head : dp;
      for (int h = 0; h < heads; ++h) {
        const float* kk = kr + kvh[h] * kh_stride;
        for (int i = 0; i < rows; ++i) {
          const float* qq = q + (h * rows + i) * dp;
          sc[(h * rows + i) * kBlockK + j] =
              decode_dot([kk](int c) { return vload(kk + c); }, qq, dp);
        }
      }
    }
    // Online softmax along the keys of each (head, row), masked by the row's visible range.
    for (int r = 0; r < nr; ++r) {
      const int i = r % rows;
      float* row = sc + r * kBlockK;
      const vi b = vsplat_i(static_cast<int32_t>(begin[i] - j0));
      const vi e = vsplat_i(static_cast<int32_t>(min64(end[i], j0 + bc) - j0));
      vf tile_max = vneg_inf();
      for (int j = 0; j < nbc; j += W) {
        const vi key = kLanes + j;
        const vf x = ((key < b) | (key >= e)) ? vneg_inf() : vload(row + j);
        vstore(row + j, x);
        tile_max = vmax(tile_max, x);
      }
      float mt = tile_max[0];
      for (int lane = 1; lane < W; ++lane) mt = mt > tile_max[lane] ? mt : tile_max[lane];
      const float m_new = m[r] > mt ? m[r] : mt;
      const float m_safe = m_new == -__builtin_inff() ? 0.0f : m_new;
      const float alpha = std::exp2(m[r] - m_safe);
      vf sum = vf{};
      for (int j = 0; j < nbc; j += W) {
        const vf pj = vexp2(vload(row + j) - m_safe);
        vstore(row + j, pj);
        sum += pj;
      }
      l[r] = l[r] * alpha + vsum(sum);
      m[r] = m_new;
      if (alpha != 1.0f)
        for (int c = 0; c < dp; c += W) vstore(o + r * dp + c, vload(o + r * dp + c) * alpha);
    }
    // O += P V per head as a small GEMM over the tile (O stays in registers across the keys).
    // The V rows were prefetched key-major during the scores, so this reads from cache.
    const float* vt;
    int64_t vrow_stride, vhead_stride;
    if (in_place) {
      vt = static_cast<const float*>(p.v) + row_offset(p.v_strides, s, s.k_row0, j0, 0);
      vrow_stride = p.v_strides.row;
      vhead_stride = p.v_strides.head;
    } else {
      for (int j = 0; j < bc; ++j)
        for (int g = 0; g < kv_heads; ++g)
          load_row(p.v, bf, row_offset(p.v_strides, s, s.k_row0, j0 + j, g), d, dp, 1.0f,
                   vbuf + (static_cast<int64_t>(j) * kv_heads + g) * dp);
      vt = vbuf;
      vrow_stride = static_cast<int64_t>(kv_heads) * dp;
      vhead_stride = dp;
    }
    // The heads of one KV head are adjacent (its G query heads), so their P rows form one
    // GEMM's A: V is read once per group with G * rows broadcasts per key.
    for (int h = 0; h < heads;) {
      int h_end = h + 1;
      while (h_end < heads && kvh[h_end] == kvh[h]) ++h_end;
      gemm<true>((h_end - h) * rows, dp, bc, sc + h * rows * kBlockK, kBlockK, 1,
                 vt + kvh[h] * vhead_stride, vrow_stride, o + static_cast<int64_t>(h) * rows * dp,
                 dp);
      h = h_end;
    }
  }
  const int64_t slot = it.slot * ctx.partial_rows;
  for (int64_t x = 0; x < static_cast<int64_t>(nr) * dp; ++x) ctx.partial_out[slot * dp + x] = o[x];
  for (int r = 0; r < nr; ++r) {
    ctx.partial_max[slot + r] = m[r];
    ctx.partial_sum[slot + r] = l[r];
  }
}

// ---- backward ---------------------------------------------------------------------------------

// First query row whose visible range ends after key j (rows' ranges are monotone in the row).
inline int64_t first_row_seeing_from(const Window& w, int64_t key, int64_t nq, int64_t nk) {
  int64_t lo = 0, hi = nq;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (visible_keys(w, mid, nq, nk).end > key) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}
// One past the last query row whose visible range begins at or before key j.
inline int64_t end_row_seeing_upto(const Window& w, int64_t key, int64_t nq, int64_t nk) {
  int64_t lo = 0, hi = nq;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (visible_keys(w, mid, nq, nk).begin <= key) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

void backward_item(const BackwardContext& ctx, const BackwardItem& it, float* scratch,
                   float* dq_acc) {
  const AttentionBackwardParams& g = *ctx.params;
  const AttentionParams& p = g.forward;
  const int d = p.spec.head_dim;
  const int dp = ctx.padded_dim;
  const bool bf = p.dtype == DType::bf16;
  const Sequence& s = it.seq;
  const int bc = it.keys;
  const int nbk = round_up(bc, W);
  const float scale = p.spec.scale();
  const int hq = p.spec.heads.num_query_heads;
  const int heads = p.spec.heads.num_attention_heads();
  constexpr int BK = kBlockKB, BQ = kBlockQB;

  float* kt = scratch;                                  // d x BK, scaled by scale * log2(e)
  float* vt = kt + static_cast<int64_t>(d) * BK;        // d x BK
  float* kp = vt + static_cast<int64_t>(d) * BK;        // BK x dp
  float* qp = kp + static_cast<int64_t>(BK) * dp;       // BQ x dp
  float* dop = qp + static_cast<int64_t>(BQ) * dp;      // BQ x dp
  float* sp = dop + static_cast<int64_t>(BQ) * dp;      // BQ x BK: S, then P
  float* dsp = sp + BQ * BK;                            // BQ x BK: dP, then dS
  float* dk = dsp + BQ * BK;                            // BK x dp
  float* dv = dk + static_cast<int64_t>(BK) * dp;       // BK x dp
  float* row_buf = dv + static_cast<int64_t>(BK) * dp;  // dp
  float* lse2 = row_buf + dp;                           // BQ
  float* delta = lse2 + BQ;                             // BQ
  int32_t* begin = reinterpret_cast<int32_t*>(delta + BQ);
  int32_t* end = begin + BQ;

  const float kscale = scale * kLog2e;
  for (int j = 0; j < nbk; ++j) {
    if (j < bc) {
      load_row(p.k, bf, row_offset(p.k_strides, s, s.k_row0, it.j0 + j, it.kv_head), d, dp, 1.0f,
               kp + j * dp);
      for (int c = 0; c < d; ++c) kt[c * BK + j] = kp[j * dp + c] * kscale;
      load_row(p.v, bf, row_offset(p.v_strides, s, s.k_row0, it.j0 + j, it.kv_head), d, d, 1.0f,
               row_buf);
      for (int c = 0; c < d; ++c) vt[c * BK + j] = row_buf[c];
    } else {
      for (int c = 0; c < d; ++c) kt[c * BK + j] = vt[c * BK + j] = 0.0f;
    }
  }
  for (int64_t i = 0; i < static_cast<int64_t>(BK) * dp; ++i) dk[i] = dv[i] = 0.0f;

  const int64_t row_lo = first_row_seeing_from(p.spec.window, it.j0, s.seqlen_q, s.seqlen_k);
  const int64_t row_hi = end_row_seeing_upto(p.spec.window, it.j0 + bc - 1, s.seqlen_q, s.seqlen_k);
  // The attention heads that read this KV head: its G query heads (adjacent), or one for rSQA.
  // Query blocks outside, heads inside: the G heads' Q, dO and dQ rows of a block are adjacent
  // in memory, so the group streams through them together instead of once per head.
  const int group = p.spec.heads.is_reverse() ? 1 : p.spec.heads.group_size();
  const int h_first = p.spec.heads.is_reverse() ? it.kv_head : it.kv_head * group;
  for (int64_t i0 = row_lo; i0 < row_hi; i0 += BQ) {
    for (int h = h_first; h < h_first + group; ++h) {
      const HeadPair pair = head_pair(p.spec.heads, h);
      const int br = static_cast<int>(min64(BQ, row_hi - i0));
      bool full = true;
      for (int i = 0; i < br; ++i) {
        const int64_t r = i0 + i;
        load_row(p.q, bf, row_offset(p.q_strides, s, s.q_row0, r, pair.query_head), d, dp, 1.0f,
                 qp + i * dp);
        load_row(g.dout, bf, row_offset(g.dout_strides, s, s.q_row0, r, h), d, dp, 1.0f,
                 dop + i * dp);
        const int64_t li = p.is_varlen()
                               ? h * static_cast<int64_t>(p.cu_seqlens_q[p.batch]) + s.q_row0 + r
                               : (s.batch_index * heads + h) * p.seqlen_q + r;
        // A row with no visible key has lse = -inf: +inf here makes its P exactly 0.
        const float lse = p.lse[li];
        lse2[i] = lse == -__builtin_inff() ? __builtin_inff() : lse * kLog2e;
        delta[i] = ctx.delta[h * ctx.total_rows + s.global_row0 + r];
        const KeyRange kr = visible_keys(p.spec.window, r, s.seqlen_q, s.seqlen_k);
        begin[i] = static_cast<int32_t>(kr.begin - it.j0);  // relative to the tile
        end[i] = static_cast<int32_t>(min64(kr.end, it.j0 + bc) - it.j0);
        full = full && begin[i] <= 0 && end[i] >= nbk;
      }
      // S = Q K^T (log2 domain), P = 2^(S - lse).
      gemm<false>(br, nbk, d, qp, dp, 1, kt, BK, sp, BK);
      for (int i = 0; i < br; ++i) {
        const vf shift = vsplat(lse2[i]);
        const vi b = vsplat_i(begin[i]), e = vsplat_i(end[i]);
        for (int j = 0; j < nbk; j += W) {
          vf x = vload(sp + i * BK + j) - shift;
          if (!full) {
            vi key = vsplat_i(j);
            for (int lane = 0; lane < W; ++lane) key[lane] += lane;
            x = ((key < b) | (key >= e)) ? vneg_inf() : x;
          }
          vstore(sp + i * BK + j, vexp2(x));
        }
      }
      // dP = dO V^T, then dS = scale * P * (dP - D).
      gemm<false>(br, nbk, d, dop, dp, 1, vt, BK, dsp, BK);
      for (int i = 0; i < br; ++i) {
        const vf dl = vsplat(delta[i]);
        for (int j = 0; j < nbk; j += W)
          vstore(dsp + i * BK + j, vload(sp + i * BK + j) * (vload(dsp + i * BK + j) - dl) * scale);
      }
      // dV += P^T dO;  dK += dS^T Q;  dQ += dS K (into this thread's accumulator).
      gemm<true>(bc, dp, br, sp, 1, BK, dop, dp, dv, dp);
      gemm<true>(bc, dp, br, dsp, 1, BK, qp, dp, dk, dp);
      float* dq_rows = dq_acc + ((s.global_row0 + i0) * hq + pair.query_head) * dp;
      gemm<true>(br, dp, bc, dsp, BK, 1, kp, dp, dq_rows, static_cast<int64_t>(hq) * dp);
    }
  }
  for (int j = 0; j < bc; ++j) {
    store_row(g.dk, bf, row_offset(g.dk_strides, s, s.k_row0, it.j0 + j, it.kv_head), d, 1.0f,
              dk + j * dp);
    store_row(g.dv, bf, row_offset(g.dv_strides, s, s.k_row0, it.j0 + j, it.kv_head), d, 1.0f,
              dv + j * dp);
  }
}

}  // namespace
}  // namespace sqa::cpu::flash
