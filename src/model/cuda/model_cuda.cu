// The CUDA model (include/sqa/model_cuda.hpp): the forward and backward of src/model/model.cpp
// with bf16 activations, cuBLAS matmuls (bf16 in, fp32 accumulate), the project's CUDA
// attention, and the kernels of kernels.cuh (MoE: moe_kernels.cuh). Shapes: B batch, T seqlen,
// BT = B * T token rows, d = d_model, dh = head_dim, W_qkv = (H_q + 2 H_kv) dh.
//
// Q, K and V come from ONE matmul: parameter_specs() stores q_proj, k_proj and v_proj
// back to back, so their rows form one (W_qkv, d) weight (and gradient) and the attention reads
// q, k, v as strided views of the fused (BT, W_qkv) output.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "model/cuda/decode_kernels.cuh"
#include "model/cuda/kernels.cuh"
#include "model/cuda/moe_kernels.cuh"
#include "model/offsets.hpp"
#include "sqa/attention.hpp"
#include "sqa/error.hpp"
#include "sqa/model_cuda.hpp"

namespace sqa {
namespace {

using cuda_model::bfloat;
namespace k = cuda_model;

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw Error(detail::concat("CUDA model: ", what, ": ", cudaGetErrorString(status)));
  }
}
void check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw Error(detail::concat("CUDA model: ", what, ": cuBLAS status ", static_cast<int>(status)));
  }
}
void check_launch(const char* what) {
  check(cudaGetLastError(), what);
}

// A device buffer that only grows (reallocated when a larger batch arrives).
template <typename T>
struct DeviceArray {
  T* ptr = nullptr;
  size_t count = 0;
  DeviceArray() = default;
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  DeviceArray(DeviceArray&& o) noexcept : ptr(o.ptr), count(o.count) {
    o.ptr = nullptr;
    o.count = 0;
  }
  ~DeviceArray() {
    if (ptr) (void)cudaFree(ptr);
  }
  T* ensure(int64_t n) {
    const size_t want = static_cast<size_t>(n > 0 ? n : 1);
    if (want > count) {
      if (ptr) check(cudaFree(ptr), "cudaFree");
      ptr = nullptr;
      check(cudaMalloc(&ptr, want * sizeof(T)), "cudaMalloc");
      count = want;
    }
    return ptr;
  }
};

// Same function as layer_seed() in src/model/model.cpp (per-layer dropout seed); the
// CPU-GPU agreement test runs with dropout on, so a divergence fails it.
uint64_t layer_seed(uint64_t seed, int layer) {
  return k::mix64(seed ^ k::mix64(0x5eed0000ULL + static_cast<uint64_t>(layer)));
}

// Offsets of one FFN (dense, or one expert) in the flat buffer.
using detail::FfnOffsets;
using detail::LayerOffsets;

struct LayerActs {
  DeviceArray<float> x, rstd1, lse, x_mid, rstd2;
  // h, a: the FFN's fc1 and activation outputs; MoE: of all N = BT * top_k routed rows, in
  // expert order.
  DeviceArray<bfloat> xn1, qkv, att, xn2, h, a;
  // MoE (moe_kernels.cuh): probs (BT, E) fp32, sel / gate_w (BT, K), chosen (BT), the counting
  // sort's row_slot / slot_row (N) and offsets (E + 1, also on the host, where the per-expert
  // matmuls need the row counts), the gathered inputs xin (N, d) and expert outputs y (N, d).
  DeviceArray<float> probs, gate_w, chosen, y;
  DeviceArray<int32_t> sel, row_slot, slot_row, offsets;
  DeviceArray<bfloat> xin;
  std::vector<int32_t> host_offsets;
};

}  // namespace

struct CudaModel::State {
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  std::vector<LayerOffsets> layers;
  int64_t embed = 0, final_norm = -1, head_w = 0, head_b = -1;

  DeviceArray<float> w, g, m, v;  // fp32 master weights, grads, AdamW moments
  DeviceArray<bfloat> wb;         // bf16 copy of w (same offsets)
  int64_t adam_steps = 0;

  int64_t B = 0, T = 0;
  bool training = false, has_targets = false;
  uint64_t dropout_seed = 0;
  double loss_scale = 1.0;  // scales the aux-loss gradient (the CE one is in dlogits)
  std::vector<LayerActs> acts;
  DeviceArray<int32_t> tokens, targets;
  DeviceArray<float> mask, x_last, rstdf, row_loss, row_hit, tmp, dx, dn, partial, partial2;
  DeviceArray<bfloat> xf, logits, dlogits, dy, da, dh, datt, dqkv;
  // The LM-head bias gradient's per-chunk column sums, written by the forward's cross entropy
  // (which reads dlogits as it makes them) and added into the gradient by backward().
  DeviceArray<float> head_partial;
  int64_t head_chunks = 0;           // 0: backward() sums the columns of dlogits itself
  DeviceArray<double> norm_partial;  // sum_squares' partials, then the norm
  DeviceArray<float> clip_scale;     // clip_grad_norm's factor, for the AdamW kernel
  DeviceArray<double> loss_sums;     // forward(): sum w loss, sum w, sum w hit
  // MoE scratch: counting-sort counts and bases (chunks, E), aux-loss column sums (E + 1); the
  // backward's dgate (N), routed output gradients dyr (N, d) fp32 and bf16, expert input
  // gradients din (N, d) and router logit gradients dlogit (BT, E).
  DeviceArray<int32_t> moe_counts, moe_base;
  DeviceArray<float> moe_sums, dgate, dyr, din;
  DeviceArray<bfloat> dyr_bf, dlogit;
  DeviceArray<float2> rope_table;
  int64_t rope_T = 0;

  // KV-cache decoding (decode_reset / decode_step): dec_B sequences of at most dec_max tokens,
  // dec_len fed so far. Per layer K and V caches (dec_B, dec_max, H_kv, dh) in bf16; the rope
  // table of positions [0, dec_rope_len); one layer's worth of activations (dec), shared by
  // all layers since only the caches outlive a layer; the final rows (dec_xf), each sequence's
  // last one (dec_last) and its logits on the device and the host.
  int64_t dec_B = 0, dec_max = 0, dec_len = 0, dec_rope_len = 0;
  std::vector<DeviceArray<bfloat>> k_cache, v_cache;
  DeviceArray<float2> dec_rope;
  LayerActs dec;
  DeviceArray<int32_t> dec_tokens;
  DeviceArray<float> dec_tmp, dec_rstdf, dec_logits;
  DeviceArray<bfloat> dec_xf, dec_last;
  std::vector<float> dec_host_logits;

  // Row-major C (M, N) = op(A) op(B) (+ C when accumulate): A, B bf16, C bf16 or fp32, fp32
  // accumulation. cuBLAS is column-major, so this computes C^T = op(B)^T op(A)^T.
  void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const bfloat* A, const bfloat* B,
            void* C, bool c_f32, bool accumulate) {
    if (M == 0 || N == 0) return;
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    check(cublasGemmEx(blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                       static_cast<int>(N), static_cast<int>(M), static_cast<int>(K), &alpha, B,
                       CUDA_R_16BF, static_cast<int>(tb ? K : N), A, CUDA_R_16BF,
                       static_cast<int>(ta ? M : K), &beta, C, c_f32 ? CUDA_R_32F : CUDA_R_16BF,
                       static_cast<int>(N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
          "cublasGemmEx");
  }

  // out[c] += sum over chunks of partial (chunks, cols).
  void finish(float* out, const float* p, int64_t chunks, int64_t cols) {
    k::column_finish<<<static_cast<unsigned>((cols + 31) / 32), dim3(32, 32), 0, stream>>>(
        p, static_cast<int>(chunks), static_cast<int>(cols), out);
    check_launch("column sums");
  }

  // out[c] += column sums of a bf16 or fp32 (rows, cols) matrix.
  template <typename T>
  void column_sums(float* out, const T* a, int64_t rows, int cols) {
    if (rows == 0) return;
    const int col_blocks = (cols + 255) / 256;
    int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(rows / 64, 1024 / col_blocks));
    const int64_t per_chunk = (rows + chunks - 1) / chunks;
    chunks = (rows + per_chunk - 1) / per_chunk;
    float* p = partial.ensure(chunks * cols);
    k::column_partial<T><<<dim3(col_blocks, static_cast<unsigned>(chunks)), 256, 0, stream>>>(
        a, rows, cols, per_chunk, p);
    check_launch("column sums");
    finish(out, p, chunks, cols);
  }

  // k::rmsnorm_backward over a.rows rows, then its column sums into dw_out (norm weight
  // gradient, when a.dy is set) and e_out (with a.e; null: e has no bias to take them).
  // Chunks of rows per block are fixed by the shape alone, so the gradients do not depend on
  // the device.
  void norm_backward(k::NormBackward a, float* dw_out, float* e_out) {
    const int64_t d = a.d;
    int64_t blocks = 0;
    if (d % 8 == 0 && d <= 4 * 256) {
      // 512 chunks of 8 warps: one wave at 4 blocks per SM on an H200 (132 SMs), and the
      // finish reads only 512 d floats (at BT = 131072 each warp takes 32 rows).
      const int64_t chunks = std::min<int64_t>((a.rows + 7) / 8, 512);
      a.rows_per_chunk = (a.rows + chunks - 1) / chunks;
      blocks = (a.rows + a.rows_per_chunk - 1) / a.rows_per_chunk;
      a.dw_partial = partial.ensure(blocks * d);
      a.e_partial = partial2.ensure(blocks * d);
      const unsigned grid = static_cast<unsigned>(blocks);
      if (d <= 256) {
        k::rmsnorm_backward_vec<1><<<grid, 256, 0, stream>>>(a);
      } else if (d <= 512) {
        k::rmsnorm_backward_vec<2><<<grid, 256, 0, stream>>>(a);
      } else {
        k::rmsnorm_backward_vec<4><<<grid, 256, 0, stream>>>(a);
      }
    } else {
      // Two (warps, d) fp32 accumulators per block; fewer warps where d is wide.
      const int64_t max_smem = 200 * 1024;
      const int64_t warps = std::min<int64_t>(8, max_smem / (2 * d * 4));
      require(warps >= 1, "d_model (", d,
              ") is too wide for the CUDA model's norm backward (at most ", max_smem / 8, ")");
      // Many short chunks: the blocks spread evenly over the SMs (few rows left for a last,
      // partly idle wave), and the finish reads only (chunks, d) floats.
      const int64_t chunks = std::min<int64_t>((a.rows + warps - 1) / warps, 4096);
      a.rows_per_chunk = (a.rows + chunks - 1) / chunks;
      blocks = (a.rows + a.rows_per_chunk - 1) / a.rows_per_chunk;
      a.dw_partial = partial.ensure(blocks * d);
      a.e_partial = partial2.ensure(blocks * d);
      const size_t smem = static_cast<size_t>(2 * warps * d) * sizeof(float);
      if (smem > 48 * 1024) {
        check(
            cudaFuncSetAttribute(&k::rmsnorm_backward, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(smem)),
            "cudaFuncSetAttribute(norm backward)");
      }
      k::rmsnorm_backward<<<static_cast<unsigned>(blocks), static_cast<unsigned>(warps * 32), smem,
                            stream>>>(a);
    }
    check_launch("norm backward");
    if (a.dy != nullptr) finish(dw_out, a.dw_partial, blocks, d);
    if (a.e != nullptr && e_out != nullptr) finish(e_out, a.e_partial, blocks, d);
  }

  // The activation's backward into dh with the fc1 bias gradient added into db.
  template <bool kSwiglu, int W>
  void act_backward(const bfloat* da, const bfloat* h, const float* b, bfloat* dh, float* db,
                    int64_t rows, int64_t ff) {
    const int64_t tiles = (ff + 32 * W - 1) / (32 * W);
    // About 4096 blocks of 8 row lanes (an even spread over the SMs), fixed by the shape so
    // the sums do not depend on the device.
    const int64_t chunks =
        std::max<int64_t>(1, std::min<int64_t>((4096 + tiles - 1) / tiles, (rows + 7) / 8));
    const int64_t per_chunk = (rows + chunks - 1) / chunks;
    const int64_t blocks = (rows + per_chunk - 1) / per_chunk;
    const int64_t h_dim = kSwiglu ? 2 * ff : ff;
    float* p = partial.ensure(blocks * h_dim);
    k::act_backward<kSwiglu, W>
        <<<dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(blocks)), dim3(32, 8), 0,
           stream>>>(da, h, b, dh, p, rows, per_chunk, static_cast<int>(ff));
    check_launch("activation backward");
    finish(db, p, blocks, h_dim);
  }

  template <bool kSwiglu, int W>
  void bias_act(const bfloat* h, const float* b, bfloat* a, int64_t rows, int64_t ff) {
    const int64_t tiles = (ff + 32 * W - 1) / (32 * W);
    // About 4096 blocks of 8 row lanes in all: enough to fill the SMs, few enough that each
    // thread's bias registers serve many rows.
    const int64_t groups =
        std::max<int64_t>(1, std::min<int64_t>((4096 + tiles - 1) / tiles, (rows + 7) / 8));
    k::bias_act<kSwiglu, W><<<dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(groups)),
                              dim3(32, 8), 0, stream>>>(h, b, a, rows, static_cast<int>(ff));
    check_launch("activation");
  }

  // Cross entropy (+ LM-head bias) over the logits; with dlogits, also the bias gradient's
  // partial column sums for backward() when the fused path runs.
  template <int kVecs>
  void cross_entropy_rows(const bfloat* logits, const float* bias, const float* mask,
                          bfloat* dlogits, int64_t rows, int vocab, float grad_scale) {
    // 264 chunks: two blocks on each of an H200's 132 SMs, one wave of long chunks (the row
    // prefetch starts once per chunk), and the finish reads 264 rows of partial sums.
    const int64_t chunks = std::min<int64_t>(rows, 264);
    const int64_t per_chunk = (rows + chunks - 1) / chunks;
    const int64_t blocks = (rows + per_chunk - 1) / per_chunk;
    float* bp = nullptr;
    head_chunks = 0;
    if (dlogits != nullptr && bias != nullptr) {
      bp = head_partial.ensure(blocks * vocab);
      head_chunks = blocks;
    }
    auto* kernel = &k::cross_entropy_rows<kVecs>;
    const size_t smem =
        static_cast<size_t>(kVecs) * 8 * 256 * sizeof(float) * (bp != nullptr ? 2 : 1);
    // The kernel's static shared memory counts against the same 48 KiB default limit.
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem)),
          "cudaFuncSetAttribute(cross entropy)");
    kernel<<<static_cast<unsigned>(blocks), 256, smem, stream>>>(
        logits, bias, targets.ptr, mask, dlogits, bp, row_loss.ptr, row_hit.ptr, rows, per_chunk,
        vocab, grad_scale);
    check_launch("cross entropy");
  }

  // a = act(h + fc1 bias): (rows, h_dim) -> (rows, ff); h keeps no bias (bias_act). 16-byte
  // accesses when ff keeps every row start aligned.
  void bias_activation(bool swiglu, const bfloat* h, const float* b, bfloat* a, int64_t rows,
                       int64_t ff) {
    if (rows == 0) return;
    if (swiglu) {
      ff % 8 == 0 ? bias_act<true, 8>(h, b, a, rows, ff) : bias_act<true, 1>(h, b, a, rows, ff);
    } else {
      ff % 8 == 0 ? bias_act<false, 8>(h, b, a, rows, ff) : bias_act<false, 1>(h, b, a, rows, ff);
    }
  }
  // The activation's backward: da (rows, ff) -> dh (rows, h_dim), h the saved fc1 output
  // without its bias b; the fc1 bias gradient is added into db.
  void activation_backward(bool swiglu, const bfloat* da, const bfloat* h, const float* b,
                           bfloat* dh, float* db, int64_t rows, int64_t ff) {
    if (rows == 0) return;
    if (swiglu) {
      ff % 8 == 0 ? act_backward<true, 8>(da, h, b, dh, db, rows, ff)
                  : act_backward<true, 1>(da, h, b, dh, db, rows, ff);
    } else {
      ff % 8 == 0 ? act_backward<false, 8>(da, h, b, dh, db, rows, ff)
                  : act_backward<false, 1>(da, h, b, dh, db, rows, ff);
    }
  }

  // out = x + dropout(y + b), xn = rmsnorm(out) * w (k::residual_rmsnorm): the vectorised
  // kernel where d allows, on a fixed grid of warps striding over the rows.
  void residual_norm(const float* x, const float* y, const float* b, float* out, const float* w,
                     bfloat* xn, float* rstd, int64_t rows, int64_t d, float eps, double p,
                     uint64_t seed, bool drop) {
    const int di = static_cast<int>(d);
    if (d % 8 == 0 && d <= 4 * 256) {
      const unsigned grid = static_cast<unsigned>(std::min<int64_t>((rows + 7) / 8, 2048));
      auto* kernel = d <= 256   ? &k::residual_rmsnorm_vec<1>
                     : d <= 512 ? &k::residual_rmsnorm_vec<2>
                                : &k::residual_rmsnorm_vec<4>;
      kernel<<<grid, 256, 0, stream>>>(x, y, b, out, w, xn, rstd, rows, di, eps, p, seed, drop);
    } else {
      k::residual_rmsnorm<<<static_cast<unsigned>((rows * 32 + 255) / 256), 256, 0, stream>>>(
          x, y, b, out, w, xn, rstd, rows, di, eps, p, seed, drop);
    }
    check_launch("residual norm");
  }

  // Layer l's FFN of xn2 (rows, d) into out (rows, d) fp32, h and act in the layer's buffers
  // `a`. Returns the fc2 bias for the following residual_norm to add (nullptr for MoE, whose
  // expert biases are inside out already) and the MoE aux loss through aux.
  const float* ffn_forward(const ModelConfig& c, int l, int64_t rows, const bfloat* xn2, float* out,
                           LayerActs& a, double& aux) {
    if (c.is_moe()) {
      aux += moe_forward(c, l, rows, out, &a);
      return nullptr;
    }
    const LayerOffsets& lo = layers[static_cast<size_t>(l)];
    const bool swiglu = c.activation == Activation::swiglu;
    const int64_t d = c.d_model, ff = c.ff_dim, h_dim = swiglu ? 2 * ff : ff;
    const bfloat* Wb = wb.ptr;
    bfloat* h = a.h.ensure(rows * h_dim);
    bfloat* act = a.a.ensure(rows * ff);
    gemm(false, true, rows, h_dim, d, xn2, Wb + lo.ffn.fc1_w, h, false, false);
    bias_activation(swiglu, h, w.ptr + lo.ffn.fc1_b, act, rows, ff);
    gemm(false, true, rows, d, ff, act, Wb + lo.ffn.fc2_w, out, true, false);
    return w.ptr + lo.ffn.fc2_b;
  }

  // The MoE FFN of layer l (definitions below the struct). acts_in: buffers to use instead of
  // layer l's training activations (decoding's scratch).
  double moe_forward(const ModelConfig& c, int l, int64_t BT, float* out,
                     LayerActs* acts_in = nullptr);
  void moe_backward(const ModelConfig& c, int l, int64_t BT, const bfloat* dout, float* dxn);
};

// MoE FFN (moe_forward in model.cpp) of layer l over xn2 (BT, d) into out (BT, d) fp32: the
// gate-weighted sum of the chosen experts' outputs, fc2 biases included. Returns the aux loss.
//
// Routing and the counting sort run on the device; then ONE host sync per layer reads the
// expert row offsets (E + 1 ints, with the aux loss's column sums), because cuBLAS takes matrix
// shapes from the host. The backward reuses these host offsets and never syncs.
//
// Experts run as one cublasGemmEx each over their contiguous rows rather than a padded strided
// batch or a grouped GEMM: padding every expert to the largest count wastes the load imbalance
// (large early in training), a grouped GEMM needs the same host-side shapes and only saves
// launches, and with the paper's 12 experts each matmul is thousands of rows, big enough to
// run well alone.
double CudaModel::State::moe_forward(const ModelConfig& c, int l, int64_t BT, float* out,
                                     LayerActs* acts_in) {
  const LayerOffsets& lo = layers[static_cast<size_t>(l)];
  LayerActs& a = acts_in != nullptr ? *acts_in : acts[static_cast<size_t>(l)];
  const int64_t d = c.d_model, E = c.num_experts, K = c.top_k, N = BT * K;
  require(N <= std::numeric_limits<int32_t>::max(), "batch * seqlen * num_experts_per_tok (", N,
          ") must fit in int32 on CUDA (the routed-row indices)");
  const bool swiglu = c.activation == Activation::swiglu;
  const int64_t ff = c.expert_ff_dim, h_dim = swiglu ? 2 * ff : ff;
  const float* W = w.ptr;
  const bfloat* Wb = wb.ptr;
  cudaStream_t st = stream;

  // Router logits (BT, E) in fp32, then softmax and top-k in place.
  float* probs = a.probs.ensure(BT * E);
  gemm(false, true, BT, E, d, a.xn2.ptr, Wb + lo.router, probs, true, false);
  int32_t* sel = a.sel.ensure(N);
  float* gate_w = a.gate_w.ensure(N);
  float* chosen = a.chosen.ensure(BT);
  k::moe_route<<<k::blocks_for(BT), 256, 0, st>>>(probs, sel, gate_w, chosen, BT,
                                                  static_cast<int>(E), static_cast<int>(K));
  check_launch("moe route");

  // Counting sort of the N slots by expert (token order within an expert).
  const int64_t chunks = (BT + k::kMoeChunk - 1) / k::kMoeChunk;
  const size_t e_bytes = static_cast<size_t>(E) * sizeof(int32_t);
  int32_t* counts = moe_counts.ensure(chunks * E);
  int32_t* base = moe_base.ensure(chunks * E);
  int32_t* offsets = a.offsets.ensure(E + 1);
  int32_t* row_slot = a.row_slot.ensure(N);
  int32_t* slot_row = a.slot_row.ensure(N);
  k::moe_count<<<static_cast<unsigned>(chunks), k::kMoeChunk, e_bytes, st>>>(
      sel, BT, static_cast<int>(E), static_cast<int>(K), counts);
  k::moe_offsets<<<1, 256, e_bytes, st>>>(counts, chunks, static_cast<int>(E), base, offsets);
  k::moe_scatter<<<static_cast<unsigned>(chunks), k::kMoeChunk,
                   static_cast<size_t>(k::kMoeChunk * K) * sizeof(int32_t), st>>>(
      sel, BT, static_cast<int>(K), static_cast<int>(E), base, row_slot, slot_row);
  check_launch("moe counting sort");

  // Aux-loss sums: sum_t p_te per expert (switch) and sum_t S_t (paper, S_t = the chosen mass).
  float* sums = moe_sums.ensure(E + 1);
  const bool aux = c.aux_loss != AuxLoss::none;
  if (aux) {
    check(cudaMemsetAsync(sums, 0, static_cast<size_t>(E + 1) * sizeof(float), st), "cudaMemset");
    column_sums<float>(sums, probs, BT, static_cast<int>(E));
    column_sums<float>(sums + E, chosen, BT, 1);
  }
  a.host_offsets.resize(static_cast<size_t>(E + 1));
  std::vector<float> host_sums(static_cast<size_t>(E + 1), 0.0f);
  check(cudaMemcpyAsync(a.host_offsets.data(), offsets,
                        static_cast<size_t>(E + 1) * sizeof(int32_t), cudaMemcpyDeviceToHost, st),
        "copy expert offsets");
  if (aux) {
    check(cudaMemcpyAsync(host_sums.data(), sums, static_cast<size_t>(E + 1) * sizeof(float),
                          cudaMemcpyDeviceToHost, st),
          "copy aux sums");
  }
  check(cudaStreamSynchronize(st), "cudaStreamSynchronize");
  const std::vector<int32_t>& off = a.host_offsets;

  // Experts over their rows of the gathered inputs.
  bfloat* xin = a.xin.ensure(N * d);
  bfloat* h = a.h.ensure(N * h_dim);
  bfloat* act = a.a.ensure(N * ff);
  float* y = a.y.ensure(N * d);
  k::moe_gather<<<k::blocks_for(N * d), 256, 0, st>>>(a.xn2.ptr, row_slot, xin, N,
                                                      static_cast<int>(d), static_cast<int>(K));
  check_launch("moe gather");
  for (int64_t e = 0; e < E; ++e) {
    const FfnOffsets& o = lo.experts[static_cast<size_t>(e)];
    const int64_t r0 = off[static_cast<size_t>(e)], n = off[static_cast<size_t>(e + 1)] - r0;
    if (n == 0) continue;
    gemm(false, true, n, h_dim, d, xin + r0 * d, Wb + o.fc1_w, h + r0 * h_dim, false, false);
    bias_activation(swiglu, h + r0 * h_dim, W + o.fc1_b, act + r0 * ff, n, ff);
    gemm(false, true, n, d, ff, act + r0 * ff, Wb + o.fc2_w, y + r0 * d, true, false);
    k::bias_add_f32<<<k::blocks_for(n * d), 256, 0, st>>>(y + r0 * d, W + o.fc2_b, n,
                                                          static_cast<int>(d));
    check_launch("expert bias");
  }
  k::moe_combine<<<k::blocks_for(BT * d), 256, 0, st>>>(y, gate_w, slot_row, out, BT,
                                                        static_cast<int>(d), static_cast<int>(K));
  check_launch("moe combine");

  // The aux losses of model.cpp from the sums (double, as the CPU).
  if (!aux) return 0.0;
  const double rows = static_cast<double>(BT), experts = static_cast<double>(E);
  double value = 0.0;
  if (c.aux_loss == AuxLoss::paper) {
    value = experts / rows * host_sums[static_cast<size_t>(E)];
  } else {
    for (int64_t e = 0; e < E; ++e) {
      const double fe = (off[static_cast<size_t>(e + 1)] - off[static_cast<size_t>(e)]) / rows;
      value += fe * host_sums[static_cast<size_t>(e)] / rows;
    }
    value *= experts;
  }
  return c.aux_loss_coef * value;
}

// moe_backward in model.cpp: dout (BT, d) bf16 (after the dropout's backward) -> dxn (BT, d)
// overwritten; router and expert gradients accumulated, the aux loss's scaled by loss_scale.
void CudaModel::State::moe_backward(const ModelConfig& c, int l, int64_t BT, const bfloat* dout,
                                    float* dxn) {
  const LayerOffsets& lo = layers[static_cast<size_t>(l)];
  LayerActs& a = acts[static_cast<size_t>(l)];
  const int64_t d = c.d_model, E = c.num_experts, K = c.top_k, N = BT * K;
  const bool swiglu = c.activation == Activation::swiglu;
  const int64_t ff = c.expert_ff_dim, h_dim = swiglu ? 2 * ff : ff;
  const float* W = w.ptr;
  const bfloat* Wb = wb.ptr;
  float* G = g.ptr;
  cudaStream_t st = stream;
  const std::vector<int32_t>& off = a.host_offsets;

  float* dg = dgate.ensure(N);
  float* dy_f = dyr.ensure(N * d);
  bfloat* dy_b = dyr_bf.ensure(N * d);
  k::moe_dispatch_grad<<<static_cast<unsigned>((N * 32 + 255) / 256), 256, 0, st>>>(
      dout, a.y.ptr, a.gate_w.ptr, a.slot_row.ptr, dg, dy_f, dy_b, N, static_cast<int>(d),
      static_cast<int>(K));
  check_launch("moe dispatch grad");
  bfloat* da_buf = da.ensure(N * ff);
  bfloat* dh_buf = dh.ensure(N * h_dim);
  float* din_buf = din.ensure(N * d);
  for (int64_t e = 0; e < E; ++e) {
    const FfnOffsets& o = lo.experts[static_cast<size_t>(e)];
    const int64_t r0 = off[static_cast<size_t>(e)], n = off[static_cast<size_t>(e + 1)] - r0;
    if (n == 0) continue;
    column_sums<float>(G + o.fc2_b, dy_f + r0 * d, n, static_cast<int>(d));
    gemm(true, false, d, ff, n, dy_b + r0 * d, a.a.ptr + r0 * ff, G + o.fc2_w, true, true);
    gemm(false, false, n, ff, d, dy_b + r0 * d, Wb + o.fc2_w, da_buf + r0 * ff, false, false);
    // h holds no fc1 bias (bias_act): the backward adds the expert's own, and takes its
    // gradient on the way.
    activation_backward(swiglu, da_buf + r0 * ff, a.h.ptr + r0 * h_dim, W + o.fc1_b,
                        dh_buf + r0 * h_dim, G + o.fc1_b, n, ff);
    gemm(true, false, h_dim, d, n, dh_buf + r0 * h_dim, a.xin.ptr + r0 * d, G + o.fc1_w, true,
         true);
    gemm(false, false, n, d, h_dim, dh_buf + r0 * h_dim, Wb + o.fc1_w, din_buf + r0 * d, true,
         false);
  }
  k::moe_combine_grad<<<k::blocks_for(BT * d), 256, 0, st>>>(
      din_buf, a.slot_row.ptr, dxn, BT, static_cast<int>(d), static_cast<int>(K));
  check_launch("moe combine grad");

  // Router: through the renormalisation, the aux loss and the softmax, then its linear.
  const int aux_kind = c.aux_loss == AuxLoss::paper ? 1 : c.aux_loss == AuxLoss::switch_ ? 2 : 0;
  const float aux_g = static_cast<float>(loss_scale * c.aux_loss_coef * static_cast<double>(E) /
                                         static_cast<double>(BT));
  bfloat* dl = dlogit.ensure(BT * E);
  k::moe_router_backward<<<k::blocks_for(BT), 256, 0, st>>>(
      a.probs.ptr, a.sel.ptr, a.gate_w.ptr, a.chosen.ptr, dg, a.offsets.ptr, dl, BT,
      static_cast<int>(E), static_cast<int>(K), aux_kind, aux_g);
  check_launch("moe router backward");
  gemm(true, false, E, d, BT, dl, a.xn2.ptr, G + lo.router, true, true);
  gemm(false, false, BT, d, E, dl, Wb + lo.router, dxn, true, true);
}

bool CudaModel::available() {
  return cuda::available();
}

CudaModel::CudaModel(const ModelConfig& config)
    : config_(config), params_(parameter_specs(config)), state_(std::make_unique<State>()) {
  config_.validate();
  require(config_.head_dim % 8 == 0, "head_dim (", config_.head_dim,
          ") must be a multiple of 8 on CUDA (16-byte rows for the attention and rope kernels)");
  if (config_.is_moe()) {
    // Shared-memory sizes of the counting sort (moe_kernels.cuh), far above any real config.
    require(config_.num_experts <= 4096, "num_experts (", config_.num_experts,
            ") must be at most 4096 on CUDA (per-expert counters live in shared memory)");
    require(config_.top_k <= 32, "num_experts_per_tok (", config_.top_k,
            ") must be at most 32 on CUDA (a chunk's choices live in shared memory)");
  }
  require(available(), "--device cuda: no CUDA device is present");
  for (const ParamSpec& p : params_) num_params_ += p.numel();
  State& s = *state_;
  detail::ModelOffsets m = detail::model_offsets(config_, params_);
  for (size_t i = 0; i < m.layers.size(); ++i) {
    require(m.layers[i].qkv_adjacent, "internal: q_proj, k_proj and v_proj of layer ", i,
            " are not adjacent in the parameter layout (the CUDA model fuses them)");
  }
  s.layers = std::move(m.layers);
  s.embed = m.embed;
  s.final_norm = m.final_norm;
  s.head_w = m.head_w;
  s.head_b = m.head_b;
  check(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking), "cudaStreamCreate");
  check(cublasCreate(&s.blas), "cublasCreate");
  check(cublasSetStream(s.blas, s.stream), "cublasSetStream");
  s.w.ensure(num_params_);
  s.g.ensure(num_params_);
  s.m.ensure(num_params_);
  s.v.ensure(num_params_);
  s.wb.ensure(num_params_);
  const size_t bytes = static_cast<size_t>(num_params_) * sizeof(float);
  check(cudaMemsetAsync(s.w.ptr, 0, bytes, s.stream), "cudaMemset");
  check(cudaMemsetAsync(s.g.ptr, 0, bytes, s.stream), "cudaMemset");
  check(cudaMemsetAsync(s.m.ptr, 0, bytes, s.stream), "cudaMemset");
  check(cudaMemsetAsync(s.v.ptr, 0, bytes, s.stream), "cudaMemset");
  s.acts.resize(static_cast<size_t>(config_.num_layers));
}

CudaModel::~CudaModel() {
  if (state_) {
    if (state_->stream) (void)cudaStreamSynchronize(state_->stream);
    if (state_->blas) (void)cublasDestroy(state_->blas);
    if (state_->stream) (void)cudaStreamDestroy(state_->stream);
  }
}

void CudaModel::set_weights(const float* host) {
  State& s = *state_;
  check(cudaMemcpyAsync(s.w.ptr, host, static_cast<size_t>(num_params_) * sizeof(float),
                        cudaMemcpyHostToDevice, s.stream),
        "copy weights to the device");
  k::cast_to_bf16<<<k::blocks_for(num_params_), 256, 0, s.stream>>>(s.w.ptr, s.wb.ptr, num_params_);
  check_launch("cast weights");
  synchronize();
}

namespace {
void copy_to_host(float* host, const float* dev, int64_t n, cudaStream_t stream) {
  check(cudaMemcpyAsync(host, dev, static_cast<size_t>(n) * sizeof(float), cudaMemcpyDeviceToHost,
                        stream),
        "copy to the host");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
}
}  // namespace

void CudaModel::get_weights(float* host) const {
  copy_to_host(host, state_->w.ptr, num_params_, state_->stream);
}
void CudaModel::get_grads(float* host) const {
  copy_to_host(host, state_->g.ptr, num_params_, state_->stream);
}
void CudaModel::set_optimizer_state(const float* exp_avg, const float* exp_avg_sq, int64_t steps) {
  State& s = *state_;
  const size_t bytes = static_cast<size_t>(num_params_) * sizeof(float);
  check(cudaMemcpyAsync(s.m.ptr, exp_avg, bytes, cudaMemcpyHostToDevice, s.stream), "copy m");
  check(cudaMemcpyAsync(s.v.ptr, exp_avg_sq, bytes, cudaMemcpyHostToDevice, s.stream), "copy v");
  s.adam_steps = steps;
  synchronize();
}
void CudaModel::get_optimizer_state(float* exp_avg, float* exp_avg_sq) const {
  copy_to_host(exp_avg, state_->m.ptr, num_params_, state_->stream);
  copy_to_host(exp_avg_sq, state_->v.ptr, num_params_, state_->stream);
}
int64_t CudaModel::optimizer_steps() const {
  return state_->adam_steps;
}

void CudaModel::zero_grad() {
  check(cudaMemsetAsync(state_->g.ptr, 0, static_cast<size_t>(num_params_) * sizeof(float),
                        state_->stream),
        "cudaMemset(grads)");
}

void CudaModel::synchronize() const {
  check(cudaStreamSynchronize(state_->stream), "cudaStreamSynchronize");
}

namespace {

// RoPE's (cos, sin) per (position, pair) for positions [0, positions), angles in double as
// nn::rope_apply, uploaded into `table`; the forward and decoding share it.
void upload_rope_table(const ModelConfig& c, int64_t positions, DeviceArray<float2>& table,
                       cudaStream_t stream) {
  const int64_t dh = c.head_dim, half = dh / 2;
  std::vector<float2> host(static_cast<size_t>(positions * half));
  for (int64_t t = 0; t < positions; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const double freq = std::pow(c.rope_theta, -2.0 * static_cast<double>(i) / dh);
      const double a = static_cast<double>(t) * freq;
      host[static_cast<size_t>(t * half + i)] =
          make_float2(static_cast<float>(std::cos(a)), static_cast<float>(std::sin(a)));
    }
  }
  check(cudaMemcpyAsync(table.ensure(positions * half), host.data(), host.size() * sizeof(float2),
                        cudaMemcpyHostToDevice, stream),
        "copy rope table");
  check(cudaStreamSynchronize(stream), "sync");  // the host table goes out of scope
}

// Attention over the fused qkv buffer (rows of W_qkv elements) into att (B, T, H_attn, dh).
AttentionParams attention_params(const ModelConfig& c, int layer, int64_t B, int64_t T,
                                 const bfloat* qkv, bfloat* att, float* lse, cudaStream_t stream) {
  const HeadLayout& hl = c.layers[static_cast<size_t>(layer)].heads;
  const int64_t dh = c.head_dim, hq = hl.num_query_heads, hkv = hl.num_kv_heads;
  const int64_t ha = hl.num_attention_heads(), width = (hq + 2 * hkv) * dh;
  AttentionParams p;
  p.spec = c.attention_spec(layer);
  p.dtype = DType::bf16;
  p.device = Device::cuda;
  p.stream = stream;
  p.batch = B;
  p.seqlen_q = T;
  p.seqlen_k = T;
  p.q = qkv;
  p.k = qkv + hq * dh;
  p.v = qkv + (hq + hkv) * dh;
  p.out = att;
  p.lse = lse;
  p.q_strides = p.k_strides = p.v_strides = {T * width, width, dh};
  p.out_strides = {T * ha * dh, ha * dh, dh};
  return p;
}

}  // namespace

LossStats CudaModel::forward(const int32_t* tokens, const int32_t* targets, const float* loss_mask,
                             int64_t B, int64_t T, bool training, uint64_t dropout_seed,
                             double loss_scale) {
  const ModelConfig& c = config_;
  State& s = *state_;
  validate_batch(c, tokens, targets, B, T);
  const int64_t BT = B * T, d = c.d_model, dh = c.head_dim, V = c.vocab_size;
  s.B = B;
  s.T = T;
  s.training = training;
  s.has_targets = targets != nullptr;
  s.dropout_seed = dropout_seed;
  s.loss_scale = loss_scale;
  cudaStream_t st = s.stream;
  const float* W = s.w.ptr;
  const bfloat* Wb = s.wb.ptr;

  check(cudaMemcpyAsync(s.tokens.ensure(BT), tokens, BT * sizeof(int32_t), cudaMemcpyHostToDevice,
                        st),
        "copy tokens");
  if (s.rope_T != T) {
    upload_rope_table(c, T, s.rope_table, st);
    s.rope_T = T;
  }

  float* x0 = s.acts.empty() ? s.x_last.ensure(BT * d) : s.acts[0].x.ensure(BT * d);
  k::embed_forward<<<k::blocks_for(BT * d), 256, 0, st>>>(s.tokens.ptr, W + s.embed, x0, BT,
                                                          static_cast<int>(d));
  check_launch("embedding");
  const unsigned row_blocks = static_cast<unsigned>((BT * 32 + 255) / 256);
  const float eps = static_cast<float>(c.norm_eps);
  LossStats stats;
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerOffsets& lo = s.layers[static_cast<size_t>(l)];
    LayerActs& a = s.acts[static_cast<size_t>(l)];
    const HeadLayout& hl = c.layers[static_cast<size_t>(l)].heads;
    const int64_t hq = hl.num_query_heads, hkv = hl.num_kv_heads, ha = hl.num_attention_heads();
    const int64_t width = (hq + 2 * hkv) * dh;
    float* x = a.x.ensure(BT * d);
    float* x_out = l + 1 < c.num_layers ? s.acts[static_cast<size_t>(l + 1)].x.ensure(BT * d)
                                        : s.x_last.ensure(BT * d);
    bfloat* xn1 = a.xn1.ensure(BT * d);
    float* rstd1 = a.rstd1.ensure(BT);
    bfloat* qkv = a.qkv.ensure(BT * width);
    bfloat* att = a.att.ensure(BT * ha * dh);
    float* lse = a.lse.ensure(B * ha * T);
    float* x_mid = a.x_mid.ensure(BT * d);
    bfloat* xn2 = a.xn2.ensure(BT * d);
    float* rstd2 = a.rstd2.ensure(BT);
    float* tmp = s.tmp.ensure(BT * d);

    // Layer 0 normalises the embedding; every later layer's xn1 comes from the residual
    // kernel that ends the layer before.
    if (l == 0) {
      k::rmsnorm_forward<<<row_blocks, 256, 0, st>>>(x, W + lo.attn_norm, xn1, rstd1, BT,
                                                     static_cast<int>(d), eps);
    }
    // q_proj, k_proj and v_proj are adjacent (checked at construction): one matmul from lo.q.
    s.gemm(false, true, BT, width, d, xn1, Wb + lo.q, qkv, false, false);
    k::rope<<<k::blocks_for(BT * (hq + hkv) * dh / 8), 256, 0, st>>>(
        qkv, BT, width, static_cast<int>(hq + hkv), static_cast<int>(dh), static_cast<int>(T),
        s.rope_table.ptr, false);
    check_launch("rope");
    cuda::attention_forward(attention_params(c, l, B, T, qkv, att, lse, st));
    s.gemm(false, true, BT, d, ha * dh, att, Wb + lo.o_w, tmp, true, false);
    s.residual_norm(x, tmp, W + lo.o_b, x_mid, W + lo.ffn_norm, xn2, rstd2, BT, d, eps, 0.0, 0,
                    false);
    const float* ffn_bias = s.ffn_forward(c, l, BT, xn2, tmp, a, stats.aux_loss);
    // x_out = x_mid + dropout(fc2 + b), normalised for the next layer's attention (or by the
    // final norm, or only cast to bf16 for the LM head).
    const bool last = l + 1 == c.num_layers;
    const float* next_w = last ? (c.final_norm ? W + s.final_norm : nullptr)
                               : W + s.layers[static_cast<size_t>(l + 1)].attn_norm;
    LayerActs* next = last ? nullptr : &s.acts[static_cast<size_t>(l + 1)];
    bfloat* next_xn = last ? s.xf.ensure(BT * d) : next->xn1.ensure(BT * d);
    float* next_rstd =
        last ? (c.final_norm ? s.rstdf.ensure(BT) : nullptr) : next->rstd1.ensure(BT);
    s.residual_norm(x_mid, tmp, ffn_bias, x_out, next_w, next_xn, next_rstd, BT, d, eps,
                    c.ffn_dropout, layer_seed(dropout_seed, l), training && c.ffn_dropout > 0);
    check_launch("layer kernels");
  }

  bfloat* xf = s.xf.ensure(BT * d);
  // The LM-head bias is not added here: the cross entropy adds it as it reads the logits (a
  // whole pass over (BT, V) saved), and logits() adds it on the host.
  bfloat* logits = s.logits.ensure(BT * V);
  s.gemm(false, true, BT, V, d, xf, Wb + s.head_w, logits, false, false);
  const float* head_bias = s.head_b >= 0 ? W + s.head_b : nullptr;
  if (targets) {
    double weight = 0;
    for (int64_t i = 0; i < BT; ++i) weight += loss_mask ? loss_mask[i] : 1.0;
    check(cudaMemcpyAsync(s.targets.ensure(BT), targets, BT * sizeof(int32_t),
                          cudaMemcpyHostToDevice, st),
          "copy targets");
    float* mask = nullptr;
    if (loss_mask) {
      mask = s.mask.ensure(BT);
      check(cudaMemcpyAsync(mask, loss_mask, BT * sizeof(float), cudaMemcpyHostToDevice, st),
            "copy loss mask");
    }
    bfloat* dlogits = training ? s.dlogits.ensure(BT * V) : nullptr;
    const float grad_scale = static_cast<float>(weight > 0 ? loss_scale / weight : 0.0);
    s.row_loss.ensure(BT);
    s.row_hit.ensure(BT);
    const int vocab = static_cast<int>(V);
    const int64_t vecs = (V + 2047) / 2048;  // 16-byte vectors per thread of 256
    s.head_chunks = 0;
    if (V % 8 != 0 || vecs > 8) {
      k::cross_entropy<256><<<static_cast<unsigned>(BT), 256, 0, st>>>(
          logits, head_bias, s.targets.ptr, mask, dlogits, s.row_loss.ptr, s.row_hit.ptr, vocab,
          grad_scale);
      check_launch("cross entropy");
    } else if (vecs == 1) {
      s.cross_entropy_rows<1>(logits, head_bias, mask, dlogits, BT, vocab, grad_scale);
    } else if (vecs == 2) {
      s.cross_entropy_rows<2>(logits, head_bias, mask, dlogits, BT, vocab, grad_scale);
    } else if (vecs == 3) {
      s.cross_entropy_rows<3>(logits, head_bias, mask, dlogits, BT, vocab, grad_scale);
    } else if (vecs == 4) {
      s.cross_entropy_rows<4>(logits, head_bias, mask, dlogits, BT, vocab, grad_scale);
    } else if (vecs == 5) {
      s.cross_entropy_rows<5>(logits, head_bias, mask, dlogits, BT, vocab, grad_scale);
    } else {
      s.cross_entropy_rows<8>(logits, head_bias, mask, dlogits, BT, vocab, grad_scale);
    }
    double* sums = s.loss_sums.ensure(3);
    k::loss_sums<<<1, 1024, 0, st>>>(s.row_loss.ptr, s.row_hit.ptr, mask, BT, sums);
    check_launch("loss sums");
    double host[3] = {0.0, 0.0, 0.0};
    check(cudaMemcpyAsync(host, sums, sizeof(host), cudaMemcpyDeviceToHost, st), "copy losses");
    synchronize();
    const double loss_sum = host[0];
    stats.tokens = host[1];
    stats.correct = host[2];
    stats.loss = weight > 0 ? loss_sum / weight : 0.0;
  }
  return stats;
}

void CudaModel::backward() {
  const ModelConfig& c = config_;
  State& s = *state_;
  require(s.has_targets && s.training && s.B > 0,
          "backward() needs a forward() with targets and training = true first");
  const int64_t B = s.B, T = s.T, BT = B * T, d = c.d_model, dh = c.head_dim, V = c.vocab_size;
  cudaStream_t st = s.stream;
  const float* W = s.w.ptr;
  const bfloat* Wb = s.wb.ptr;
  float* G = s.g.ptr;
  const bool swiglu = c.activation == Activation::swiglu;
  const int64_t ff = c.ff_dim, h_dim = swiglu ? 2 * ff : ff;
  const int L = c.num_layers;

  // LM head: dW += dlogits^T xf, db += column sums (partials from the forward's cross
  // entropy), d xfin = dlogits W.
  float* dx = s.dx.ensure(BT * d);
  float* dn = s.dn.ensure(BT * d);
  bfloat* dy = s.dy.ensure(BT * std::max<int64_t>(d, 1));
  const bfloat* dlogits = s.dlogits.ptr;
  s.gemm(true, false, V, d, BT, dlogits, s.xf.ptr, G + s.head_w, true, true);
  if (s.head_b >= 0) {
    if (s.head_chunks > 0) {
      s.finish(G + s.head_b, s.head_partial.ptr, s.head_chunks, V);
    } else {
      s.column_sums(G + s.head_b, dlogits, BT, static_cast<int>(V));
    }
  }
  // Every norm backward also emits the gradient entering the layer below: the top layer's FFN
  // output through its dropout (bf16 into dy, bias column sums into its fc2 bias).
  // A dense FFN's fc2 bias takes the emitted gradient's column sums; an MoE FFN has none
  // shared (its experts' biases are summed per expert in moe_backward).
  auto fc2_bias_grad = [&](int layer) -> float* {
    return c.is_moe() ? nullptr : G + s.layers[static_cast<size_t>(layer)].ffn.fc2_b;
  };
  auto emit_ffn_output = [&](k::NormBackward& a, int layer) {
    a.e = dy;
    a.p = c.ffn_dropout;
    a.seed = layer_seed(s.dropout_seed, layer);
    a.drop = s.training && c.ffn_dropout > 0;
  };
  {
    k::NormBackward a;
    a.dx = dx;
    a.rows = BT;
    a.d = static_cast<int>(d);
    if (c.final_norm) {
      s.gemm(false, false, BT, d, V, dlogits, Wb + s.head_w, dn, true, false);
      a.dy = dn;
      a.x = s.x_last.ptr;
      a.w = W + s.final_norm;
      a.rstd = s.rstdf.ptr;
      a.dx_zero = true;
    } else {
      s.gemm(false, false, BT, d, V, dlogits, Wb + s.head_w, dx, true, false);
    }
    emit_ffn_output(a, L - 1);
    s.norm_backward(a, c.final_norm ? G + s.final_norm : nullptr, fc2_bias_grad(L - 1));
  }

  for (int l = L - 1; l >= 0; --l) {
    const LayerOffsets& lo = s.layers[static_cast<size_t>(l)];
    LayerActs& a = s.acts[static_cast<size_t>(l)];
    const HeadLayout& hl = c.layers[static_cast<size_t>(l)].heads;
    const int64_t hq = hl.num_query_heads, hkv = hl.num_kv_heads, ha = hl.num_attention_heads();
    const int64_t width = (hq + 2 * hkv) * dh;
    // FFN branch: x_out = x_mid + dropout(FFN(xn2)); dy holds the gradient of the FFN output
    // (dropout applied; a dense FFN's fc2 bias gradient already added).
    if (c.is_moe()) {
      s.moe_backward(c, l, BT, dy, dn);
    } else {
      s.gemm(true, false, d, ff, BT, dy, a.a.ptr, G + lo.ffn.fc2_w, true, true);
      bfloat* da = s.da.ensure(BT * ff);
      s.gemm(false, false, BT, ff, d, dy, Wb + lo.ffn.fc2_w, da, false, false);
      bfloat* dh_buf = s.dh.ensure(BT * h_dim);
      s.activation_backward(swiglu, da, a.h.ptr, W + lo.ffn.fc1_b, dh_buf, G + lo.ffn.fc1_b, BT,
                            ff);
      s.gemm(true, false, h_dim, d, BT, dh_buf, a.xn2.ptr, G + lo.ffn.fc1_w, true, true);
      s.gemm(false, false, BT, d, h_dim, dh_buf, Wb + lo.ffn.fc1_w, dn, true, false);
    }
    // dx becomes d x_mid (the residual plus the norm's input gradient), which is also the
    // o_proj output's gradient: bf16 into dy, its column sums into the o_proj bias.
    {
      k::NormBackward nb;
      nb.dy = dn;
      nb.x = a.x_mid.ptr;
      nb.w = W + lo.ffn_norm;
      nb.rstd = a.rstd2.ptr;
      nb.dx = dx;
      nb.e = dy;
      nb.rows = BT;
      nb.d = static_cast<int>(d);
      s.norm_backward(nb, G + lo.ffn_norm, G + lo.o_b);
    }
    // Attention branch: x_mid = x + o_proj(att).
    s.gemm(true, false, d, ha * dh, BT, dy, a.att.ptr, G + lo.o_w, true, true);
    bfloat* datt = s.datt.ensure(BT * ha * dh);
    s.gemm(false, false, BT, ha * dh, d, dy, Wb + lo.o_w, datt, false, false);
    bfloat* dqkv = s.dqkv.ensure(BT * width);
    AttentionBackwardParams g;
    g.forward = attention_params(c, l, B, T, a.qkv.ptr, a.att.ptr, a.lse.ptr, st);
    g.dout = datt;
    g.dq = dqkv;
    g.dk = dqkv + hq * dh;
    g.dv = dqkv + (hq + hkv) * dh;
    g.dout_strides = g.forward.out_strides;
    g.dq_strides = g.dk_strides = g.dv_strides = g.forward.q_strides;
    cuda::attention_backward(g);
    k::rope<<<k::blocks_for(BT * (hq + hkv) * dh / 8), 256, 0, st>>>(
        dqkv, BT, width, static_cast<int>(hq + hkv), static_cast<int>(dh), static_cast<int>(T),
        s.rope_table.ptr, true);
    check_launch("rope backward");
    s.gemm(true, false, width, d, BT, dqkv, a.xn1.ptr, G + lo.q, true, true);
    s.gemm(false, false, BT, d, width, dqkv, Wb + lo.q, dn, true, false);
    // dx becomes d x (the layer's input); below layer 0 it feeds the next FFN's dropout.
    {
      k::NormBackward nb;
      nb.dy = dn;
      nb.x = a.x.ptr;
      nb.w = W + lo.attn_norm;
      nb.rstd = a.rstd1.ptr;
      nb.dx = dx;
      nb.rows = BT;
      nb.d = static_cast<int>(d);
      float* fc2_b = nullptr;
      if (l > 0) {
        emit_ffn_output(nb, l - 1);
        fc2_b = fc2_bias_grad(l - 1);
      }
      s.norm_backward(nb, G + lo.attn_norm, fc2_b);
    }
  }
  k::embed_backward<<<k::blocks_for(BT * d), 256, 0, st>>>(s.tokens.ptr, dx, G + s.embed, BT,
                                                           static_cast<int>(d));
  check_launch("embedding backward");
}

std::vector<float> CudaModel::logits() const {
  const State& s = *state_;
  const int64_t V = config_.vocab_size, n = s.B * s.T * V;
  std::vector<bfloat> raw(static_cast<size_t>(n));
  check(cudaMemcpyAsync(raw.data(), s.logits.ptr, n * sizeof(bfloat), cudaMemcpyDeviceToHost,
                        s.stream),
        "copy logits");
  // The device keeps the logits without the LM-head bias (the cross entropy adds it); add it
  // here with the same bf16 rounding.
  std::vector<float> bias;
  if (s.head_b >= 0) {
    bias.resize(static_cast<size_t>(V));
    check(cudaMemcpyAsync(bias.data(), s.w.ptr + s.head_b, V * sizeof(float),
                          cudaMemcpyDeviceToHost, s.stream),
          "copy lm_head bias");
  }
  synchronize();
  std::vector<float> out(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    const float z = __bfloat162float(raw[i]);
    out[i] = bias.empty() ? z : __bfloat162float(__float2bfloat16(z + bias[i % bias.size()]));
  }
  return out;
}

double CudaModel::optimizer_step(const CudaAdamW& o) {
  State& s = *state_;
  constexpr int kBlocks = 1024;
  // The norm and the clip factor stay on the device, so AdamW is enqueued behind them and the
  // step syncs once, at its end, to return the norm.
  double* partial = s.norm_partial.ensure(kBlocks + 1);
  float* clip = s.clip_scale.ensure(1);
  k::sum_squares<<<kBlocks, 256, 0, s.stream>>>(s.g.ptr, num_params_, partial);
  k::grad_norm_clip<<<1, 1024, 0, s.stream>>>(partial, kBlocks, o.grad_clip, partial + kBlocks,
                                              clip);
  check_launch("gradient norm");
  ++s.adam_steps;
  const double t = static_cast<double>(s.adam_steps);
  const double bc1 = 1.0 - std::pow(o.beta1, t), bc2 = 1.0 - std::pow(o.beta2, t);
  k::adamw<<<k::blocks_for(num_params_), 256, 0, s.stream>>>(
      s.w.ptr, s.g.ptr, s.m.ptr, s.v.ptr, s.wb.ptr, num_params_, clip, static_cast<float>(o.beta1),
      static_cast<float>(o.beta2), static_cast<float>(1.0 - o.lr * o.weight_decay),
      static_cast<float>(o.lr / bc1), static_cast<float>(1.0 / std::sqrt(bc2)),
      static_cast<float>(o.eps));
  check_launch("adamw");
  double norm = 0;
  check(cudaMemcpyAsync(&norm, partial + kBlocks, sizeof(double), cudaMemcpyDeviceToHost, s.stream),
        "copy norm");
  synchronize();
  return norm;
}

// ---------------------------------------------------------------------------------------------
// KV-cache decoding: Model<Real>::decode_step (model.cpp) for dec_B sequences in lockstep, with
// the forward's kernels over the n new rows of each sequence. The new K and V go through the
// same bf16 matmul and RoPE as the forward's, then into the cache; the attention reads the
// cache directly, its mask aligned bottom-right (spec.hpp), so the n new queries sit at
// positions [dec_len, dec_len + n) and a sliding window counts back from each of them.

void CudaModel::decode_reset(int64_t batch, int64_t max_len) {
  const ModelConfig& c = config_;
  require(c.causal, "KV-cache decoding needs a decoder (causal) model; this config is an encoder");
  require(batch >= 1 && batch <= 65535, "decode batch (", batch,
          ") must be in [1, 65535] (the CUDA attention's grid)");
  require(max_len >= 1 && max_len <= c.max_seq_len, "decode length (", max_len,
          ") must be in [1, max_position_embeddings (", c.max_seq_len, ")]");
  State& s = *state_;
  const size_t L = static_cast<size_t>(c.num_layers);
  s.k_cache.resize(L);
  s.v_cache.resize(L);
  for (size_t l = 0; l < L; ++l) {
    const int64_t n = batch * max_len * c.layers[l].heads.num_kv_heads * c.head_dim;
    s.k_cache[l].ensure(n);
    s.v_cache[l].ensure(n);
  }
  if (s.dec_rope_len < max_len) {
    upload_rope_table(c, max_len, s.dec_rope, s.stream);
    s.dec_rope_len = max_len;
  }
  s.dec_B = batch;
  s.dec_max = max_len;
  s.dec_len = 0;
}

int64_t CudaModel::decode_length() const {
  return state_->dec_len;
}

const float* CudaModel::decode_step(const int32_t* tokens, int64_t n) {
  const ModelConfig& c = config_;
  State& s = *state_;
  require(s.dec_max > 0, "decode_step() needs decode_reset() first");
  const int64_t B = s.dec_B, pos = s.dec_len, max_len = s.dec_max;
  require(n >= 1, "decode_step: count (", n, ") must be at least 1 token per sequence");
  if (pos == 0) {
    require(n <= max_len, "the prompt (", n, " tokens) is longer than the KV cache (max_len ",
            max_len, " from decode_reset)");
  } else {
    require(pos + n <= max_len, "decode_step: positions [", pos, ", ", pos + n,
            ") reach past the KV cache: positions must stay below max_len (", max_len,
            ") from decode_reset");
  }
  const int64_t rows = B * n, d = c.d_model, dh = c.head_dim, V = c.vocab_size;
  for (int64_t i = 0; i < rows; ++i) {
    require(tokens[i] >= 0 && tokens[i] < V, "token id ", tokens[i], " of sequence ", i / n,
            " at position ", pos + i % n, " is outside the vocabulary [0, ", V, ")");
  }
  cudaStream_t st = s.stream;
  const float* W = s.w.ptr;
  const bfloat* Wb = s.wb.ptr;
  LayerActs& a = s.dec;
  check(cudaMemcpyAsync(s.dec_tokens.ensure(rows), tokens, rows * sizeof(int32_t),
                        cudaMemcpyHostToDevice, st),
        "copy tokens");
  float* x = a.x.ensure(rows * d);
  float* x_mid = a.x_mid.ensure(rows * d);
  bfloat* xn1 = a.xn1.ensure(rows * d);
  float* rstd1 = a.rstd1.ensure(rows);
  bfloat* xn2 = a.xn2.ensure(rows * d);
  float* rstd2 = a.rstd2.ensure(rows);
  float* tmp = s.dec_tmp.ensure(rows * d);
  bfloat* xf = s.dec_xf.ensure(rows * d);
  k::embed_forward<<<k::blocks_for(rows * d), 256, 0, st>>>(s.dec_tokens.ptr, W + s.embed, x, rows,
                                                            static_cast<int>(d));
  check_launch("embedding");
  const unsigned row_blocks = static_cast<unsigned>((rows * 32 + 255) / 256);
  const float eps = static_cast<float>(c.norm_eps);
  k::rmsnorm_forward<<<row_blocks, 256, 0, st>>>(x, W + s.layers[0].attn_norm, xn1, rstd1, rows,
                                                 static_cast<int>(d), eps);
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerOffsets& lo = s.layers[static_cast<size_t>(l)];
    const HeadLayout& hl = c.layers[static_cast<size_t>(l)].heads;
    const int64_t hq = hl.num_query_heads, hkv = hl.num_kv_heads, ha = hl.num_attention_heads();
    const int64_t width = (hq + 2 * hkv) * dh, kv_width = hkv * dh;
    bfloat* qkv = a.qkv.ensure(rows * width);
    bfloat* att = a.att.ensure(rows * ha * dh);
    bfloat* kc = s.k_cache[static_cast<size_t>(l)].ptr;
    bfloat* vc = s.v_cache[static_cast<size_t>(l)].ptr;
    s.gemm(false, true, rows, width, d, xn1, Wb + lo.q, qkv, false, false);
    // Row r is position pos + r % n: the table from position pos on.
    k::rope<<<k::blocks_for(rows * (hq + hkv) * dh / 8), 256, 0, st>>>(
        qkv, rows, width, static_cast<int>(hq + hkv), static_cast<int>(dh), static_cast<int>(n),
        s.dec_rope.ptr + pos * (dh / 2), false);
    k::kv_cache_append<<<k::blocks_for(rows * 2 * kv_width / 8), 256, 0, st>>>(
        qkv, rows, static_cast<int>(n), width, hq * dh, static_cast<int>(kv_width), kc, vc, max_len,
        pos);
    check_launch("rope and cache append");
    AttentionParams p;
    p.spec = c.attention_spec(l);
    p.dtype = DType::bf16;
    p.device = Device::cuda;
    p.stream = st;
    p.batch = B;
    p.seqlen_q = n;
    p.seqlen_k = pos + n;
    p.q = qkv;
    p.k = kc;
    p.v = vc;
    p.out = att;
    p.q_strides = {n * width, width, dh};
    p.k_strides = p.v_strides = {max_len * kv_width, kv_width, dh};
    p.out_strides = {n * ha * dh, ha * dh, dh};
    cuda::attention_forward(p);
    s.gemm(false, true, rows, d, ha * dh, att, Wb + lo.o_w, tmp, true, false);
    s.residual_norm(x, tmp, W + lo.o_b, x_mid, W + lo.ffn_norm, xn2, rstd2, rows, d, eps, 0.0, 0,
                    false);
    double aux = 0.0;  // decoding has no loss
    const float* ffn_bias = s.ffn_forward(c, l, rows, xn2, tmp, a, aux);
    // x = x_mid + FFN, normalised for the next layer (into xn1) or the LM head (into xf), as
    // in forward() without dropout.
    const bool last = l + 1 == c.num_layers;
    const float* next_w = last ? (c.final_norm ? W + s.final_norm : nullptr)
                               : W + s.layers[static_cast<size_t>(l + 1)].attn_norm;
    bfloat* next_xn = last ? xf : xn1;
    float* next_rstd = last ? (c.final_norm ? s.dec_rstdf.ensure(rows) : nullptr) : rstd1;
    s.residual_norm(x_mid, tmp, ffn_bias, x, next_w, next_xn, next_rstd, rows, d, eps, 0.0, 0,
                    false);
  }
  // Only each sequence's last row reaches the LM head. The logits stay fp32 (the forward's
  // are bf16 for the cross entropy's bandwidth), bias added on the device.
  bfloat* last_rows = s.dec_last.ensure(B * d);
  const size_t row_bytes = static_cast<size_t>(d) * sizeof(bfloat);
  check(
      cudaMemcpy2DAsync(last_rows, row_bytes, xf + (n - 1) * d, static_cast<size_t>(n) * row_bytes,
                        row_bytes, static_cast<size_t>(B), cudaMemcpyDeviceToDevice, st),
      "gather last rows");
  float* logits = s.dec_logits.ensure(B * V);
  s.gemm(false, true, B, V, d, last_rows, Wb + s.head_w, logits, true, false);
  if (s.head_b >= 0) {
    k::bias_add_f32<<<k::blocks_for(B * V), 256, 0, st>>>(logits, W + s.head_b, B,
                                                          static_cast<int>(V));
    check_launch("lm_head bias");
  }
  s.dec_host_logits.resize(static_cast<size_t>(B * V));
  check(cudaMemcpyAsync(s.dec_host_logits.data(), logits, B * V * sizeof(float),
                        cudaMemcpyDeviceToHost, st),
        "copy logits");
  synchronize();
  s.dec_len += n;
  return s.dec_host_logits.data();
}

}  // namespace sqa
