// Register-tile lab (a program, not a test): the vector-FMA rate of the CPU fast path's GEMM
// tile shape (A broadcast from memory, B rows of NV vectors, MR x NV accumulators; see
// gemm_tile in src/attention/cpu/flash_kernels.hpp) for several MR x NV, on one core, with
// every operand in L1. It shows why stacked MQA decode cannot reach the FMA peak: its score
// GEMM S^T = K Q^T has one 16-head vector per key (NV = 1), so each FMA needs its own broadcast
// load, while P V has NV = 4.
//   tile_shape_lab [--reps R]
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

// A 64 x 64 tile pass as the decode item runs it (64 reduction steps), repeated; returns
// vector FMAs per nanosecond.
template <int MR, int NV>
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
      for (int m0 = 0; m0 < kRows; m0 += MR) tile<MR, NV>(kSteps, a + m0 * 64, 64, b, 64, c, 64);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double fmas = static_cast<double>(reps) * kRows * NV * kSteps;
    best = fmas / s / 1e9 > best ? fmas / s / 1e9 : best;
  }
  return best;
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
              {"P V and prefill (the default tile)", 6, 4, rate<6, 4>(reps)},
              {"two vectors", 8, 2, rate<8, 2>(reps)}};
  double peak = 0.0;
  for (const Row& r : rows) peak = r.rate > peak ? r.rate : peak;
  std::printf("one core, operands in L1, 64 reduction steps per tile pass\n");
  std::printf("%-38s %4s %4s %14s %8s\n", "tile", "MR", "NV", "vector FMA/ns", "of best");
  for (const Row& r : rows)
    std::printf("%-38s %4d %4d %14.2f %7.0f%%\n", r.what, r.mr, r.nv, r.rate, 100 * r.rate / peak);
  return 0;
}
