// CUDA backend entry points: validation (the CPU engine's rules plus what the kernels need),
// head-layout and tile decisions, and dispatch to the per-head-dim kernels.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention/cuda/cudnn_backend.hpp"
#include "attention/cuda/flash_fwd.hpp"
#include "sqa/attention.hpp"
#include "sqa/error.hpp"

namespace sqa::cuda {
namespace detail {

void check_cuda(int status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " +
                             cudaGetErrorString(static_cast<cudaError_t>(status)));
  }
}

FwdVariant fwd_variant() {
  // Read on every call (cheap next to a launch) so a benchmark can switch paths in one process.
  const char* mode = std::getenv("SQA_CUDA_FWD");
  if (mode == nullptr || *mode == '\0') return FwdVariant::automatic;
  const std::string m(mode);
  if (m == "base") return FwdVariant::base;
  if (m == "ilp") return FwdVariant::ilp;
  if (m == "occ") return FwdVariant::occ;
  if (m == "pipe") return FwdVariant::pipe;
  if (m == "sum2") return FwdVariant::sum2;
  if (m == "sum2occ") return FwdVariant::sum2occ;
  if (m == "sum2occq") return FwdVariant::sum2occq;
  if (m == "wgmma") return FwdVariant::wgmma;
  if (m == "wgmmapp") return FwdVariant::wgmmapp;
  if (m == "wgmmatma") return FwdVariant::wgmmatma;
  if (m == "wgmmatma3") return FwdVariant::wgmmatma3;
  throw Error(sqa::detail::concat("SQA_CUDA_FWD (", m,
                                  ") must be base, ilp, occ, pipe, sum2, sum2occ, sum2occq, "
                                  "wgmma, wgmmapp, wgmmatma or wgmmatma3, or unset"));
}

BwdVariant bwd_variant() {
  const char* mode = std::getenv("SQA_CUDA_BWD");
  if (mode == nullptr || *mode == '\0') return BwdVariant::automatic;
  const std::string m(mode);
  if (m == "base") return BwdVariant::base;
  if (m == "occ") return BwdVariant::occ;
  if (m == "occ2") return BwdVariant::occ2;
  if (m == "wgmma") return BwdVariant::wgmma;
  if (m == "wgmmatma") return BwdVariant::wgmmatma;
  throw Error(sqa::detail::concat("SQA_CUDA_BWD (", m,
                                  ") must be base, occ, occ2, wgmma or wgmmatma, or unset"));
}

bool bwd_dkdv_wgmma(int head_dim) {
  const BwdVariant variant = bwd_variant();
  const bool named = variant == BwdVariant::wgmma || variant == BwdVariant::wgmmatma;
  // D = 32: only when named (not yet measured against the mma.sync default there).
  if (head_dim == 32) return named;
  return (head_dim == 64 || head_dim == 128) && (variant == BwdVariant::automatic || named);
}

namespace {

int multiprocessor_count() {
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  static std::mutex mutex;
  static std::vector<int> counts;
  std::lock_guard<std::mutex> lock(mutex);
  if (counts.size() <= static_cast<size_t>(device)) counts.resize(device + 1, 0);
  if (counts[device] == 0) {
    check_cuda(cudaDeviceGetAttribute(&counts[device], cudaDevAttrMultiProcessorCount, device),
               "cudaDeviceGetAttribute(multiprocessor count)");
  }
  return counts[device];
}

// Grid raster (flash_params.hpp raster_heads / raster_units): SQA_CUDA_RASTER = N takes N heads
// (backward: N (KV head, split) units) at a time in the wgmma forward and the dK/dV kernels; 0
// interleaves all of them. Unset: the forward interleaves all heads and the backward follows
// backward_raster below. For A/B timing of the L2 locality.
std::optional<int> raster_override() {
  const char* env = std::getenv("SQA_CUDA_RASTER");
  if (env == nullptr || *env == '\0') return std::nullopt;
  char* end = nullptr;
  const long v = std::strtol(env, &end, 10);
  if (*end != '\0' || v < 0 || v > (1 << 20)) {
    throw Error(sqa::detail::concat(
        "SQA_CUDA_RASTER (", env, ") must be a non-negative integer (heads at a time), or unset"));
  }
  return static_cast<int>(v);
}

// The dK/dV raster by default: with more than 8 (KV head, split) units, 4 at a time. Every dK/dV
// CTA sweeps its head's Q, dO and dQ rows; with all heads interleaved the CTAs on the GPU at once
// spread over all heads, whose rows then stream from DRAM (Nsight, d = 128 MHA at 8k: L2 hits
// 85%, 550 GB/s of DRAM traffic; cuDNN's kernel 96%, 159 GB/s). H200, fwd+bwd at N = 32k
// (bench/results/2026-11-29-h200-raster): 32 units +9% (d128 MHA, 423 -> 460 TF/s, with the
// forward at its old order the backward alone ~13% faster), 16 units +2% (d64 MHA), 8 units
// -1 to -2% (d128 xSQA 8/8, SQA 16/8 causal): those keep all units interleaved. Run 29 then
// measured the d128 non-causal MHA row at +2% in the harness and causal MHA and d64 MHA within
// 1% either way. Only the wgmma dK/dV kernel (D = 64, 128) was measured, so the mma.sync one
// (D = 16, 32) keeps the old order; the wgmma kernel at D = 32 (SQA_CUDA_BWD=wgmma) follows the
// D = 64 rule.
int backward_raster(int units, int head_dim) {
  return bwd_dkdv_wgmma(head_dim) && units > 8 && units % 4 == 0 ? 4 : 0;
}

// The forward raster by default (the wgmma kernels' grid, fwd_tile_coords): 2 heads at a time at
// D = 128 when the GPU would otherwise hold few CTAs per KV head (32 or more KV heads) with K / V
// past L2 (above 64 MiB), or when a sequence's K / V pass 256 MiB; else all heads interleaved.
// With all of d128 MHA 32/32's heads interleaved at N = 32k, the four CTAs of a head on the GPU
// at once do not share their K / V tiles in L2 (Nsight Compute, 2026-11-30 calls 1-3 in
// bench/results/2026-11-30-h200-{det-tma,ncu,raster-tma}: 121 GB of DRAM reads and 30% L2 hits
// for 512 MB of K / V; cuDNN's persistent kernel 0.96 GB); 2 heads at a time read 2.8 GB (96%
// hits). Timed (rounds interleaved): 32/32 32k non-causal forward 559-571 -> 585-681 TF/s,
// fwd+bwd 460 -> 500 (the DRAM-bound forward also slowed the backward after it), causal 630 ->
// 632; 32/32 at 8k +7%, 64/64 at 8k +11%, 32/32 at 16k +2% (call 6, 2026-11-30-h200-fwd3).
// Fewer KV heads keep the interleaved order: 16/16 at 32k (256 MiB) lost 1.4% with 2 at a time,
// GQA 32/8 (8 KV heads, 128 MiB) 9%; d64 rows did not move.
int forward_raster(const FwdKernelParams& p, int head_dim) {
  if (head_dim != 128) return 0;
  const int64_t kv_bytes = int64_t{p.num_kv_heads} * p.seqlen_k * head_dim * 2 * 2;
  const bool many_kv_heads = p.num_kv_heads >= 32 && kv_bytes > (int64_t{64} << 20);
  return many_kv_heads || kv_bytes > (int64_t{256} << 20) ? 2 : 0;
}

// dK/dV head splits (flash_params.hpp) for a dense backward: enough CTAs for ~8 waves, at most
// one per query head of the group. A wave is three 64-key CTAs per SM for the mma.sync dK/dV
// kernel, one 128-key CTA per SM for the wgmma one (the default at D = 64 and 128, both
// schemes, and SQA_CUDA_BWD=wgmma at D = 32; flash_bwd_wgmma.cuh). SQA_CUDA_BWD_SPLITS caps them (1
// turns them off), so tests and A/B runs can take either path. The splits are summed in a fixed
// order, so the deterministic scheme uses them too.
int dkdv_splits(const FwdKernelParams& p, int head_dim) {
  if (p.reverse || p.group_size <= 1) return 1;
  int64_t cap = p.group_size;
  if (const char* env = std::getenv("SQA_CUDA_BWD_SPLITS"); env != nullptr && *env != '\0') {
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    if (*end != '\0' || v < 1) {
      throw Error(sqa::detail::concat("SQA_CUDA_BWD_SPLITS (", env,
                                      ") must be a positive integer, or unset"));
    }
    cap = std::min<int64_t>(cap, v);
  }
  const bool wgmma = bwd_dkdv_wgmma(head_dim);
  const int64_t key_block = wgmma ? 128 : 64;  // WgmmaBwdTile::BN, BwdDkDvTile::BN
  const int64_t per_sm = wgmma ? 1 : 3;
  const int64_t ctas = (p.seqlen_k + key_block - 1) / key_block * p.num_kv_heads * p.batch;
  const int64_t target = 8LL * per_sm * multiprocessor_count();
  const int64_t want = (target + ctas - 1) / std::max<int64_t>(ctas, 1);
  return static_cast<int>(std::clamp<int64_t>(want, 1, cap));
}

void require_device_pointer(const void* ptr, const char* name) {
  cudaPointerAttributes attributes{};
  const cudaError_t status = cudaPointerGetAttributes(&attributes, ptr);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();  // not a CUDA pointer at all: clear the error, report below
    attributes.type = cudaMemoryTypeUnregistered;
  }
  require(attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged, name,
          " must point to CUDA device memory for the CUDA backend (it is host memory)");
}

void require_aligned(const void* ptr, const char* name) {
  require(reinterpret_cast<uintptr_t>(ptr) % 16 == 0, name,
          " must be 16-byte aligned for the CUDA kernels (address ", ptr, ")");
}

void require_strides(const TensorStrides& s, const char* name, bool varlen) {
  // The kernels move 16-byte chunks (8 elements of 16 bits): every row start must stay aligned.
  const bool ok = (varlen || s.batch % 8 == 0) && s.row % 8 == 0 && s.head % 8 == 0;
  require(ok, name, " strides (batch ", s.batch, ", row ", s.row, ", head ", s.head,
          ") must be multiples of 8 elements (16 bytes) for the CUDA kernels");
}

FwdLauncher launcher_for(int head_dim) {
  switch (head_dim) {
    case 16:
      return run_flash_fwd_hdim16;
    case 32:
      return run_flash_fwd_hdim32;
    case 64:
      return run_flash_fwd_hdim64;
    case 128:
      return run_flash_fwd_hdim128;
    case 256:
      return run_flash_fwd_hdim256;
    default:
      break;
  }
  throw Error(sqa::detail::concat("head_dim (", head_dim,
                                  ") is not supported by the CUDA forward: it takes 16, 32, 64, "
                                  "128 or 256"));
}

struct StreamBuffer {
  void* ptr = nullptr;
  cudaStream_t stream = nullptr;
  StreamBuffer(size_t bytes, cudaStream_t s) : stream(s) {
    check_cuda(cudaMallocAsync(&ptr, bytes, stream), "cudaMallocAsync(split-KV workspace)");
  }
  ~StreamBuffer() { (void)cudaFreeAsync(ptr, stream); }
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;
};

// Pointers, strides, shapes and head layout of the forward, in the kernels' form.
FwdKernelParams kernel_params(const AttentionParams& params) {
  const AttentionSpec& spec = params.spec;
  const HeadLayout& heads = spec.heads;
  const bool varlen = params.is_varlen();
  FwdKernelParams p;
  p.q = params.q;
  p.k = params.k;
  p.v = params.v;
  p.out = params.out;
  p.lse = params.lse;
  // Varlen tensors are packed over tokens: the batch stride is unused.
  p.q_batch = varlen ? 0 : params.q_strides.batch;
  p.k_batch = varlen ? 0 : params.k_strides.batch;
  p.v_batch = varlen ? 0 : params.v_strides.batch;
  p.o_batch = varlen ? 0 : params.out_strides.batch;
  p.q_row = params.q_strides.row;
  p.k_row = params.k_strides.row;
  p.v_row = params.v_strides.row;
  p.o_row = params.out_strides.row;
  p.q_head = params.q_strides.head;
  p.k_head = params.k_strides.head;
  p.v_head = params.v_strides.head;
  p.o_head = params.out_strides.head;
  p.cu_seqlens_q = params.cu_seqlens_q;
  p.cu_seqlens_k = params.cu_seqlens_k;
  p.batch = static_cast<int>(params.batch);
  p.seqlen_q = static_cast<int>(params.seqlen_q);
  p.seqlen_k = static_cast<int>(params.seqlen_k);
  p.num_query_heads = heads.num_query_heads;
  p.num_kv_heads = heads.num_kv_heads;
  p.num_attention_heads = heads.num_attention_heads();
  p.group_size = heads.group_size();
  p.reverse = heads.is_reverse() ? 1 : 0;
  p.window_left = spec.window.left;
  p.window_right = spec.window.right;
  p.scale_log2 = spec.scale() * 1.4426950408889634f;
  p.pack = 1;
  p.num_head_groups = p.num_attention_heads;
  p.raster_heads = raster_override().value_or(forward_raster(p, spec.head_dim));
  // 192-row tiles (three consumer warpgroups) need enough of them: the d64 route sweeps of
  // 2026-11-30 (bench/results/2026-11-30-h200-fwd3-default/route.txt, 2 vs 3 warpgroups) had 3
  // faster from 1024 tiles of 128 rows (+7-21%: 683 CTAs of 192 rows, 5 waves) and 2 faster up to
  // 256 (-10 to -25% for 3: too few CTAs); 512 was a tie.
  const int64_t tiles192 = params.batch * p.num_attention_heads * ((params.seqlen_q + 191) / 192);
  p.three_warpgroups = tiles192 >= 4LL * multiprocessor_count() ? 1 : 0;
  return p;
}

}  // namespace
}  // namespace detail

bool available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return count > 0;
}

void attention_forward(const AttentionParams& params) {
  using namespace detail;
  params.validate();
  require(params.device == Device::cuda, "cuda::attention_forward needs device = cuda");
  require(params.dtype == DType::bf16 || params.dtype == DType::f16, "dtype (",
          dtype_name(params.dtype), ") is not supported by the CUDA forward: it takes bf16 or f16");
  if (cudnn_forward_if_chosen(params)) return;  // cudnn_backend.hpp: explicit choice or auto
  const AttentionSpec& spec = params.spec;
  const FwdLauncher launch = launcher_for(spec.head_dim);
  const bool varlen = params.is_varlen();
  require(params.seqlen_q <= INT32_MAX / 64 && params.seqlen_k <= INT32_MAX / 64, "seqlen_q (",
          params.seqlen_q, ") and seqlen_k (", params.seqlen_k,
          ") must stay below 2^25 for the CUDA kernels");
  require(params.batch <= 65535, "batch (", params.batch, ") must be at most 65535 on CUDA");
  require_strides(params.q_strides, "q", varlen);
  require_strides(params.k_strides, "k", varlen);
  require_strides(params.v_strides, "v", varlen);
  require_strides(params.out_strides, "out", varlen);
  const void* pointers[] = {params.q, params.k, params.v, params.out};
  const char* names[] = {"q", "k", "v", "out"};
  for (int i = 0; i < 4; ++i) {
    require_aligned(pointers[i], names[i]);
    require_device_pointer(pointers[i], names[i]);
  }
  if (params.lse != nullptr) require_device_pointer(params.lse, "lse");
  if (varlen) {
    require_device_pointer(params.cu_seqlens_q, "cu_seqlens_q");
    require_device_pointer(params.cu_seqlens_k, "cu_seqlens_k");
  }

  FwdKernelParams p = kernel_params(params);
  const HeadLayout& heads = spec.heads;

  // Decode (a few query rows against a long cache): pack the G query heads of a KV head into
  // the tile's rows so the cache is read once per KV head, use 1-warp tiles, and split the keys
  // over CTAs so the whole chip streams the cache.
  const int G = heads.group_size();
  p.pack = (!heads.is_reverse() && G > 1 && params.seqlen_q * G <= 64) ? G : 1;
  p.num_head_groups = p.num_attention_heads / p.pack;
  const bool decode = params.seqlen_q * p.pack <= 64;
  const int block_m = fwd_block_m(spec.head_dim, decode);
  const int64_t m_blocks = (params.seqlen_q * p.pack + block_m - 1) / block_m;
  const int64_t ctas = m_blocks * p.num_head_groups * params.batch;
  const int64_t key_blocks =
      (params.seqlen_k + fwd_block_n(spec.head_dim) - 1) / fwd_block_n(spec.head_dim);
  int splits = 1;
  if (decode && !varlen) {
    // ~8 one-warp CTAs per SM; SQA_CUDA_DECODE_CTAS_PER_SM overrides it (benchmark sweeps).
    const char* per_sm_env = std::getenv("SQA_CUDA_DECODE_CTAS_PER_SM");
    const int64_t per_sm = per_sm_env ? std::clamp<int64_t>(std::atoll(per_sm_env), 1, 64) : 8;
    const int64_t target = per_sm * multiprocessor_count();
    const int64_t want = (target + ctas - 1) / ctas;
    splits = static_cast<int>(std::clamp<int64_t>(std::min(want, key_blocks / 4), 1, kMaxSplits));
  }
  p.num_splits = splits;
  auto stream = static_cast<cudaStream_t>(params.stream);
  if (splits > 1) {
    p.accum_rows = params.batch * p.num_attention_heads * params.seqlen_q;
    const size_t accum_floats = static_cast<size_t>(splits * p.accum_rows);
    StreamBuffer workspace(accum_floats * (spec.head_dim + 1) * sizeof(float), stream);
    p.out_accum = static_cast<float*>(workspace.ptr);
    p.lse_accum = p.out_accum + accum_floats * spec.head_dim;
    launch(p, params.dtype == DType::f16, decode, stream);
    return;
  }
  launch(p, params.dtype == DType::f16, decode, stream);
}

void attention_backward(const AttentionBackwardParams& params) {
  using namespace detail;
  params.validate();
  const AttentionParams& f = params.forward;
  require(f.device == Device::cuda, "cuda::attention_backward needs device = cuda");
  require(f.dtype == DType::bf16 || f.dtype == DType::f16, "dtype (", dtype_name(f.dtype),
          ") is not supported by the CUDA backward: it takes bf16 or f16");
  if (cudnn_backward_if_chosen(params)) return;
  const AttentionSpec& spec = f.spec;
  BwdLauncher launch = nullptr;
  switch (spec.head_dim) {
    case 16:
      launch = run_flash_bwd_hdim16;
      break;
    case 32:
      launch = run_flash_bwd_hdim32;
      break;
    case 64:
      launch = run_flash_bwd_hdim64;
      break;
    case 128:
      launch = run_flash_bwd_hdim128;
      break;
    default:
      throw Error(sqa::detail::concat("head_dim (", spec.head_dim,
                                      ") is not supported by the CUDA backward: it takes 16, 32, "
                                      "64 or 128"));
  }
  const bool varlen = f.is_varlen();
  require(f.seqlen_q <= INT32_MAX / 64 && f.seqlen_k <= INT32_MAX / 64, "seqlen_q (", f.seqlen_q,
          ") and seqlen_k (", f.seqlen_k, ") must stay below 2^25 for the CUDA kernels");
  require(f.batch <= 65535, "batch (", f.batch, ") must be at most 65535 on CUDA");
  const TensorStrides* strides[] = {&f.q_strides,       &f.k_strides,         &f.v_strides,
                                    &f.out_strides,     &params.dout_strides, &params.dq_strides,
                                    &params.dk_strides, &params.dv_strides};
  const void* pointers[] = {f.q, f.k, f.v, f.out, params.dout, params.dq, params.dk, params.dv};
  const char* names[] = {"q", "k", "v", "out", "dout", "dq", "dk", "dv"};
  for (int i = 0; i < 8; ++i) {
    require_strides(*strides[i], names[i], varlen);
    require_aligned(pointers[i], names[i]);
    require_device_pointer(pointers[i], names[i]);
  }
  require_device_pointer(f.lse, "lse");
  if (varlen) {
    require_device_pointer(f.cu_seqlens_q, "cu_seqlens_q");
    require_device_pointer(f.cu_seqlens_k, "cu_seqlens_k");
  }

  BwdKernelParams g;
  g.fwd = kernel_params(f);
  g.dout = params.dout;
  g.dq = params.dq;
  g.dk = params.dk;
  g.dv = params.dv;
  g.do_batch = varlen ? 0 : params.dout_strides.batch;
  g.dq_batch = varlen ? 0 : params.dq_strides.batch;
  g.dk_batch = varlen ? 0 : params.dk_strides.batch;
  g.dv_batch = varlen ? 0 : params.dv_strides.batch;
  g.do_row = params.dout_strides.row;
  g.dq_row = params.dq_strides.row;
  g.dk_row = params.dk_strides.row;
  g.dv_row = params.dv_strides.row;
  g.do_head = params.dout_strides.head;
  g.dq_head = params.dq_strides.head;
  g.dk_head = params.dk_strides.head;
  g.dv_head = params.dv_strides.head;
  g.scale = spec.scale();
  auto stream = static_cast<cudaStream_t>(f.stream);
  // The lse layout's row count: dense B * H_attn * N_q; varlen H_attn * total_q (read once from
  // the device, since cu_seqlens live there).
  int64_t rows = f.batch * g.fwd.num_attention_heads * f.seqlen_q;
  if (varlen) {
    int32_t total_q = 0;
    check_cuda(cudaMemcpyAsync(&total_q, f.cu_seqlens_q + f.batch, sizeof(total_q),
                               cudaMemcpyDeviceToHost, stream),
               "cudaMemcpyAsync(cu_seqlens_q[batch])");
    check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    rows = static_cast<int64_t>(g.fwd.num_attention_heads) * total_q;
  }
  g.lse_rows = rows;
  // Scheme (flash_bwd_kernel.cuh): deterministic runs the separate dQ kernel; the default adds
  // dQ with fp32 atomics into a workspace of (rows / H_attn) * H_q rows of head_dim floats.
  g.deterministic = params.deterministic ? 1 : 0;
  g.dq_rows = g.deterministic ? 0 : rows / g.fwd.num_attention_heads * g.fwd.num_query_heads;
  g.dkdv_splits = varlen ? 1 : dkdv_splits(g.fwd, spec.head_dim);
  const std::optional<int> raster = raster_override();
  g.raster_units =
      raster ? *raster : backward_raster(g.fwd.num_kv_heads * g.dkdv_splits, spec.head_dim);
  const size_t dkdv_floats = g.dkdv_splits > 1
                                 ? static_cast<size_t>(g.dkdv_splits) * f.batch *
                                       g.fwd.num_kv_heads * f.seqlen_k * 2 * spec.head_dim
                                 : 0;
  const size_t dsum_floats = static_cast<size_t>(std::max<int64_t>(rows, 1));
  const size_t dq_floats = static_cast<size_t>(g.dq_rows) * spec.head_dim;
  StreamBuffer workspace((dkdv_floats + dq_floats + dsum_floats) * sizeof(float), stream);
  // cudaMallocAsync aligns the start; the dK/dV rows (2 * head_dim floats, a multiple of 32)
  // keep dQ's rows 16-byte aligned after them.
  g.dkdv_accum = static_cast<float*>(workspace.ptr);
  g.dq_accum = g.dkdv_accum + dkdv_floats;
  g.dsum = g.dq_accum + dq_floats;
  launch(g, f.dtype == DType::f16, stream);
}

}  // namespace sqa::cuda
