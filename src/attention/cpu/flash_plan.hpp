// The contract between the fast path's planner (flash.cpp, baseline ISA) and its per-ISA tile
// kernels (flash_kernels.hpp compiled once per SIMD path). The planner validates, cuts the work
// into items, owns every buffer and runs the OpenMP loops; a kernel processes one item with raw
// pointers only. Keeping std:: containers out of the ISA translation units means no inline
// library function compiled with -mavx512f can be picked by the linker for baseline code.
#pragma once

#include <cstdint>

#include "sqa/attention.hpp"

namespace sqa::cpu::flash {

// Tile sizes. kBlockQ query rows share one packed, transposed Q block; kBlockK keys form one
// tile of the score matrix. Both multiples of 16 (the widest SIMD vector).
inline constexpr int kBlockQ = 64;
inline constexpr int kBlockK = 64;
// Backward: kBlockKB keys per item (their dK/dV stay in cache), kBlockQB query rows per step.
// 128 keys per item halve the Q, dO and dQ bytes streamed per FLOP against 64 (each query
// block's loads and dQ update serve twice the keys); the item's tiles (~260 KB at d = 64) still
// fit in L2.
inline constexpr int kBlockKB = 128;
inline constexpr int kBlockQB = 64;

// One sequence of the batch (dense: b-th entry; varlen: rows from cu_seqlens).
struct Sequence {
  int64_t batch_index;  // for dense batch strides; 0 in varlen mode
  int64_t q_row0, k_row0;
  int64_t seqlen_q, seqlen_k;
  int64_t global_row0;  // first row in the (all sequences) row numbering used by lse, D and dQ
};

// Forward item: attention heads [h, h + heads), query rows [i0, i0 + rows) of one sequence, keys
// [k_lo, k_hi) (a slice of the visible range when the keys are split across threads for
// decode). The score tile's columns are the (head, row) pairs, column c = (c / rows, c % rows),
// rows * heads <= kBlockQ. heads > 1 stacks the G query heads of one KV head (they must share
// it): a decode step then reads each K/V tile once for the whole group and its scores and P V
// are small GEMMs instead of G separate dot-product passes.
struct ForwardItem {
  Sequence seq;
  int h;
  int64_t i0;
  int rows;
  int64_t k_lo, k_hi;
  int heads = 1;
  // Split-KV: >= 0 selects the partial slot that receives the unnormalised O, the row max m and
  // the row sum l (log2 domain) of each column; -1 writes out and lse directly.
  int64_t partial = -1;
  int columns() const { return rows * heads; }
};

struct ForwardContext {
  const AttentionParams* params;
  int padded_dim;      // head_dim rounded up to the SIMD width of the kernel
  int partial_rows;    // entries per split-KV slot (the most columns of any split item)
  float* partial_out;  // [slot][partial_rows][padded_dim]
  float* partial_max;  // [slot][partial_rows]
  float* partial_sum;  // [slot][partial_rows]
};

// Decode item: every attention head and every query row (at most kDecodeRows) of one sequence
// against keys [k_lo, k_hi). The cache is read key-major (all heads of a key row, which are
// adjacent in memory) so the reads stream sequentially instead of striding head by head.
// Results go to partial slot `slot` ([heads][rows] entries) and are combined by log-sum-exp.
inline constexpr int kDecodeRows = 2;
// Decode stacks a KV head's query heads into one item's score columns from this group size on.
// Below it the stacked GEMM wastes most SIMD lanes of the score tile (columns padded to the
// vector width) and the key-major dot-product path is faster (measured: G = 4 took 2x longer).
inline constexpr int kStackMinGroup = 8;
struct DecodeItem {
  Sequence seq;
  int64_t k_lo, k_hi;
  int64_t slot;
};

// Backward item: KV head kv, keys [j0, j0 + keys) of one sequence.
struct BackwardItem {
  Sequence seq;
  int kv_head;
  int64_t j0;
  int keys;
};

struct BackwardContext {
  const AttentionBackwardParams* params;
  int padded_dim;
  const float* delta;  // D = rowsum(dO * O): [attention head][global row]
  int64_t total_rows;  // rows of the global numbering (lse, D)
};

// Per-thread scratch sizes in floats (the planner allocates, 64-byte aligned).
int64_t forward_scratch_floats(int padded_dim);
int64_t backward_scratch_floats(int padded_dim);
int64_t decode_scratch_floats(int padded_dim, int attention_heads, int kv_heads);

struct Kernels {
  const char* name;
  int width;  // floats per SIMD vector
  void (*forward_item)(const ForwardContext&, const ForwardItem&, float* scratch);
  // Uses ctx.partial_* with partial_rows = heads * kDecodeRows entries per slot.
  void (*decode_item)(const ForwardContext&, const DecodeItem&, float* scratch);
  // dq_accumulator: this thread's fp32 dQ, [global row][num_query_heads][padded_dim].
  void (*backward_item)(const BackwardContext&, const BackwardItem&, float* scratch,
                        float* dq_accumulator);
};

const Kernels& avx512_kernels();
const Kernels& avx2_kernels();
const Kernels& portable_kernels();

}  // namespace sqa::cpu::flash
