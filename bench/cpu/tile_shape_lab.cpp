// Register-tile lab (a program, not a test): the vector-FMA rate of the CPU fast path's GEMM
// tile shape (A broadcast from memory, B rows of NV vectors, MR x NV accumulators; see
// gemm_tile in src/attention/cpu/flash_kernels.hpp) for several MR x NV, on one core, with
// every operand in L1. It shows why stacked MQA decode cannot reach the FMA peak: its score
// GEMM S^T = K Q^T has one 16-head vector per key (NV = 1), so each FMA needs its own broadcast
// load, while P V has NV = 4. It also times the alternative, transposing each 64 x 64 K tile so
// that the score GEMM gets the 6 x 4 shape (S = Q K^T). In isolation that tile is ~20% faster;
// inside the decode kernel (with the softmax along rows of keys and the prefetch pacing) the
// whole MQA decode was 5-10% slower (2026-11-29), so the kernel keeps S^T = K Q^T.
// Third, the one-vector tile as two 8-wide halves with 8-wide broadcasts from memory: on AMD
// Zen 4 a 16-wide broadcast (from a register or embedded in the FMA) costs a shuffle, an 8-wide
// broadcast from memory is a plain load, so this tile runs at the 6 x 4 tile's rate. Put into
// the decode kernel (2026-11-29, later) it left MQA decode unchanged (warm cache 0.81 vs 0.83 ms,
// cold 1.00-1.03 ms both): the score tile's FMA rate is not what bounds that decode.
//   tile_shape_lab [--reps R]
#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

constexpr int W = 16;  // floats per zmm vector
typedef float vf __attribute__((vector_size(4 * W)));
typedef float vf_u __attribute__((vector_size(4 * W), aligned(4), may_alias));

inline vf vload(const float* p) {
  return *reinterpret_cast<const vf_u*>(p);
}
inline void vstore(float* p, vf v) {
  *reinterpret_cast<vf_u*>(p) = v;
}

// C (MR x NV W) = A (MR x K, a[m * sam + k]) B (K x NV W, rows ldb): the fast path's tile.
template <int MR, int NV>
__attribute__((noinline)) void tile(int k_steps, const float* a, int sam, const float* b, int ldb,
                                    float* c, int ldc) {
  vf acc[MR][NV];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[m][v] = vf{};
  for (int k = 0; k < k_steps; ++k) {
    vf bv[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) bv[v] = vload(b + k * ldb + v * W);
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      const vf am = vf{} + a[m * sam + k];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[m][v] += am * bv[v];
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) vstore(c + m * ldc + v * W, acc[m][v]);
}

// The one-vector tile (16 floats per row) as two 8-wide halves, A broadcast 8 wide from memory.
template <int MR>
__attribute__((noinline)) void tile_halves(int k_steps, const float* a, int sam, const float* b,
                                           int ldb, float* c, int ldc) {
  __m256 acc[MR][2];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
  for (int k = 0; k < k_steps; ++k) {
    const __m256 b0 = _mm256_loadu_ps(b + k * ldb), b1 = _mm256_loadu_ps(b + k * ldb + 8);
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      const __m256 am = _mm256_broadcast_ss(a + m * sam + k);
      acc[m][0] = _mm256_fmadd_ps(am, b0, acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(am, b1, acc[m][1]);
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) {
    _mm256_storeu_ps(c + m * ldc, acc[m][0]);
    _mm256_storeu_ps(c + m * ldc + 8, acc[m][1]);
  }
}

// A 64 x 64 tile pass as the decode item runs it (64 reduction steps), repeated; returns
// vector FMAs per nanosecond.
template <int MR, int NV, bool kHalves = false>
double rate(int reps) {
  constexpr int kRows = 64 / MR * MR, kSteps = 64;
  static float a[64 * 64], b[64 * 64], c[64 * 64];
  for (int i = 0; i < 64 * 64; ++i) {
    a[i] = 0.001f * static_cast<float>(i % 7);
    b[i] = 0.002f * static_cast<float>(i % 5);
  }
  double best = 0.0;
  for (int round = 0; round < 3; ++round) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r)
      for (int m0 = 0; m0 < kRows; m0 += MR) {
        if constexpr (kHalves) {
          tile_halves<MR>(kSteps, a + m0 * 64, 64, b, 64, c, 64);
        } else {
          tile<MR, NV>(kSteps, a + m0 * 64, 64, b, 64, c, 64);
        }
      }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double fmas = static_cast<double>(reps) * kRows * NV * kSteps;
    best = fmas / s / 1e9 > best ? fmas / s / 1e9 : best;
  }
  return best;
}

// 16 x 16 block transpose (rows ls / ld floats apart) in four shuffle stages.
void transpose16(const float* src, int ls, float* dst, int ld) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ls);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
    const __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 2; ++j) {
      const int a = i + 8 * j, b = i + 4 + 8 * j;
      t[a] = _mm512_shuffle_f32x4(r[a], r[b], 0x88);
      t[b] = _mm512_shuffle_f32x4(r[a], r[b], 0xdd);
    }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ld, r[i]);
}

// Nanoseconds per 64-key score tile of MQA decode (16 heads, d = 64), best of three rounds:
// as the fast path computes it (S^T = K Q^T, 6 x 1 tiles), and with K transposed first
// (S = Q K^T, 6 x 4 tiles).
void score_tile_alternatives(int reps, double& direct_ns, double& transposed_ns) {
  static float k[64 * 64], kt[64 * 64], q[16 * 64], qt[64 * 16], st[64 * 64];
  for (int i = 0; i < 64 * 64; ++i) k[i] = 0.001f * static_cast<float>(i % 13);
  for (int h = 0; h < 16; ++h)
    for (int d = 0; d < 64; ++d)
      q[h * 64 + d] = qt[d * 16 + h] = 0.01f * static_cast<float>((h + d) % 7);
  direct_ns = transposed_ns = 1e30;
  for (int round = 0; round < 3; ++round) {
    auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r) {
      int m0 = 0;
      for (; m0 + 6 <= 64; m0 += 6) tile<6, 1>(64, k + m0 * 64, 64, qt, 16, st + m0 * 16, 16);
      tile<4, 1>(64, k + m0 * 64, 64, qt, 16, st + m0 * 16, 16);
    }
    auto t1 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r) {
      for (int bi = 0; bi < 4; ++bi)
        for (int bj = 0; bj < 4; ++bj)
          transpose16(k + bi * 16 * 64 + bj * 16, 64, kt + bj * 16 * 64 + bi * 16, 64);
      tile<6, 4>(64, q, 64, kt, 64, st, 64);
      tile<6, 4>(64, q + 6 * 64, 64, kt, 64, st + 6 * 64, 64);
      tile<4, 4>(64, q + 12 * 64, 64, kt, 64, st + 12 * 64, 64);
    }
    auto t2 = std::chrono::steady_clock::now();
    const double a = std::chrono::duration<double>(t1 - t0).count() / reps * 1e9;
    const double b = std::chrono::duration<double>(t2 - t1).count() / reps * 1e9;
    direct_ns = a < direct_ns ? a : direct_ns;
    transposed_ns = b < transposed_ns ? b : transposed_ns;
  }
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 100000;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
      reps = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: tile_shape_lab [--reps R] (R > 0)\n");
      return 2;
    }
  }
  if (reps <= 0) {
    std::fprintf(stderr, "tile_shape_lab: --reps (%d) must be > 0\n", reps);
    return 2;
  }
  struct Row {
    const char* what;
    int mr, nv;
    double rate;
  } rows[] = {{"stacked-decode scores (S^T = K Q^T)", 6, 1, rate<6, 1>(reps)},
              {"same, taller tile", 16, 1, rate<16, 1>(reps)},
              {"same as two 8-wide halves", 6, 1, rate<6, 1, true>(reps)},
              {"P V and prefill (the default tile)", 6, 4, rate<6, 4>(reps)},
              {"two vectors", 8, 2, rate<8, 2>(reps)}};
  double peak = 0.0;
  for (const Row& r : rows) peak = r.rate > peak ? r.rate : peak;
  std::printf("one core, operands in L1, 64 reduction steps per tile pass\n");
  std::printf("%-38s %4s %4s %14s %8s\n", "tile", "MR", "NV", "vector FMA/ns", "of best");
  for (const Row& r : rows)
    std::printf("%-38s %4d %4d %14.2f %7.0f%%\n", r.what, r.mr, r.nv, r.rate, 100 * r.rate / peak);
  double direct = 0.0, transposed = 0.0;
  score_tile_alternatives(reps, direct, transposed);
  std::printf(
      "\nMQA decode score tile (64 keys, 16 heads, d = 64), ns: K Q^T with 6 x 1 tiles %.0f; "
      "transpose K, then Q K^T with 6 x 4 tiles %.0f\n",
      direct, transposed);
  return 0;
}
