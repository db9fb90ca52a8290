// cuDNN backend of the CUDA attention (see cudnn_backend.hpp).
//
// cuDNN's fused flash-attention engines are reached through the backend graph API
// (cudnn_graph.h): we describe scaled dot-product attention as an operation graph of matmuls,
// pointwise ops and reductions, and cuDNN's heuristics recognise the pattern and return the
// fused engine. The graphs below follow the pattern cuDNN's engines are written for (the one
// NVIDIA's frontend library emits for SDPA with stats): the same ops, in the same order, with
// the same intermediate types. Building a graph and its plan costs milliseconds, so plans are
// cached per shape, strides, mask, scale, dtype and device.
//
// Layout mapping: our tensors are (B, N, H, d) with strides in elements; cuDNN takes 4-D
// (B, H, N, d) views, so the dims are reordered and the strides carried over. The LSE ("stats")
// is (B, H_attn, N_q) float32 in both, natural log, of the scaled scores: our own backward can
// use cuDNN's forward stats and the other way round.
#include "attention/cuda/cudnn_backend.hpp"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>

#include "sqa/error.hpp"

#if SQA_HAVE_CUDNN
#include <cudnn_graph.h>

#include <array>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <utility>
#include <vector>
#endif

namespace sqa::cuda::detail {

using sqa::detail::concat;

CudaBackend requested_backend(const AttentionParams& params) {
  if (params.cuda_backend != CudaBackend::automatic) return params.cuda_backend;
  // Read on every call (cheap next to a launch) so a benchmark can switch in one process.
  const char* mode = std::getenv("SQA_CUDA_BACKEND");
  if (mode == nullptr || *mode == '\0') return CudaBackend::automatic;
  const std::string m(mode);
  if (m == "own") return CudaBackend::own;
  if (m == "cudnn") return CudaBackend::cudnn;
  if (m == "auto") return CudaBackend::automatic;
  throw Error(concat("SQA_CUDA_BACKEND (", m, ") must be own, cudnn or auto, or unset"));
}

namespace {

// Automatic routing, from H200 measurements. cuDNN's fused attention beats our kernels at
// head_dim 64 and 128 in the backward (ours 0.75-0.93x on large grids, more on small ones,
// bench/results/2026-11-29-h200-fwd-tma-default/route.txt) and ours win at 16 and 32 (exp-bound,
// where our kernels pack work) and for decode (split-KV). The forward at 64 and 128 (the wgmma
// ping-pong fed by a TMA producer warpgroup) depends on the grid: with few query tiles, i.e. few
// heads or short sequences, ours is faster (1.1-1.8x), and at d128 with a mask it is never
// slower (1.00-1.79x over 2k-32k tokens and 4-32 heads), nor at d64 with a mask since the
// 3-warpgroup forward (2026-11-30); with many tiles and no mask cuDNN is as fast or faster
// (d64 0.90-0.97x, d128 0.91-1.07x: a tie at large grids). Tiles = batch x H_q x ceil(N_q / 128),
// the CTAs of our kernel.
constexpr int kAutoMinHeadDim = 64;
constexpr int64_t kAutoMinQueryRows = 128;

// The largest tile count for which the automatic forward takes our kernel at head_dim 64 / 128
// (the route sweep above, run 36: up to these counts ours was at least 0.98x cuDNN on every row
// and faster on most; d128 masked: every row). Masked means causal or a causal sliding window
// (only those reach cuDNN); windows were not measured separately and go with causal, whose
// tiles also see only part of the keys.
[[maybe_unused]] int64_t own_forward_max_tiles(int head_dim, bool masked) {
  // Masked, both head dims: ours at any size. d64 since the 3-warpgroup forward (2026-11-30,
  // bench/results/2026-11-30-h200-fwd3-default/route.txt: 1.07-1.22x cuDNN from 256 tiles up;
  // up to 1024 tiles the 2-warpgroup kernel, 1.00-1.46x in the same sweep).
  if (masked) return std::numeric_limits<int64_t>::max();
  return head_dim >= 128 ? 512 : 128;
}

[[maybe_unused]] bool auto_prefers_cudnn(const AttentionParams& p, bool backward) {
  if (p.spec.head_dim < kAutoMinHeadDim || p.seqlen_q < kAutoMinQueryRows) return false;
  // The forward at head_dim 256 is our mma.sync kernel (no wgmma there): cuDNN.
  if (backward || (p.spec.head_dim != 64 && p.spec.head_dim != 128)) return true;
  const int64_t tiles = p.batch * p.spec.heads.num_query_heads * ((p.seqlen_q + 127) / 128);
  return tiles > own_forward_max_tiles(p.spec.head_dim, !p.spec.window.is_none());
}

[[maybe_unused]] std::string strides_reason(const TensorStrides& s, const char* name) {
  if (s.batch % 8 == 0 && s.row % 8 == 0 && s.head % 8 == 0) return "";
  return concat(name, " strides (batch ", s.batch, ", row ", s.row, ", head ", s.head,
                ") must be multiples of 8 elements (16 bytes) for the cuDNN backend");
}

}  // namespace

#if !SQA_HAVE_CUDNN

std::string cudnn_unsupported_reason(const AttentionParams&, bool, bool) {
  return "this copy of sqa was built without cuDNN (CMake found no cudnn_graph.h / libcudnn)";
}

bool cudnn_would_serve(const AttentionParams& params, bool, bool) {
  if (requested_backend(params) == CudaBackend::cudnn) {
    throw Error(cudnn_unsupported_reason(params, false, false));
  }
  return false;
}

bool cudnn_forward_if_chosen(const AttentionParams& params) {
  return cudnn_would_serve(params, false, false);
}

bool cudnn_backward_if_chosen(const AttentionBackwardParams& params) {
  return cudnn_would_serve(params.forward, true, params.deterministic);
}

#else  // SQA_HAVE_CUDNN

namespace {

void check_cudnn(cudnnStatus_t status, const char* what) {
  if (status == CUDNN_STATUS_SUCCESS) return;
  char message[512] = {0};
  cudnnGetLastErrorString(message, sizeof(message));
  throw std::runtime_error(concat(what, ": ", cudnnGetErrorString(status),
                                  message[0] ? concat(" (", message, ")") : std::string()));
}

void check_cuda_status(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw std::runtime_error(concat(what, ": ", cudaGetErrorString(status)));
}

// One backend descriptor, destroyed with its owner.
class Descriptor {
 public:
  explicit Descriptor(cudnnBackendDescriptorType_t type) {
    check_cudnn(cudnnBackendCreateDescriptor(type, &desc_), "cudnnBackendCreateDescriptor");
  }
  ~Descriptor() {
    if (desc_ != nullptr) (void)cudnnBackendDestroyDescriptor(desc_);
  }
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;

  cudnnBackendDescriptor_t get() const { return desc_; }
  Descriptor& set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count,
                  const void* values) {
    check_cudnn(cudnnBackendSetAttribute(desc_, name, type, count, values),
                "cudnnBackendSetAttribute");
    return *this;
  }
  Descriptor& set(cudnnBackendAttributeName_t name, cudnnBackendDescriptor_t value) {
    return set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &value);
  }
  Descriptor& set_int(cudnnBackendAttributeName_t name, int64_t value) {
    return set(name, CUDNN_TYPE_INT64, 1, &value);
  }
  Descriptor& set_type(cudnnBackendAttributeName_t name, cudnnDataType_t value) {
    return set(name, CUDNN_TYPE_DATA_TYPE, 1, &value);
  }
  void finalize(const char* what) { check_cudnn(cudnnBackendFinalize(desc_), what); }

 private:
  cudnnBackendDescriptor_t desc_ = nullptr;
};
using DescriptorPtr = std::shared_ptr<Descriptor>;

struct Tensor {
  DescriptorPtr desc;
  int64_t uid = 0;
  std::vector<int64_t> dims, strides;
};

// A scalar passed by value: the variant pack points at this host copy.
struct ScalarValue {
  int64_t uid = 0;
  std::array<unsigned char, 4> bytes{};
};

// A float tensor of ours in the workspace after cuDNN's own (softmax_sum, dQ accumulator).
struct WorkspaceTensor {
  int64_t uid = 0;
  int64_t offset = 0;  // bytes from the start of our part
};

// A finalized execution plan and what its variant pack needs.
struct Plan {
  std::vector<DescriptorPtr> keep;  // tensors, ops, graph, config: alive as long as the plan
  DescriptorPtr plan;
  int64_t cudnn_workspace = 0;
  std::vector<ScalarValue> scalars;
  std::vector<WorkspaceTensor> workspace_tensors;
  int64_t own_workspace = 0;
  std::string engine;  // "engine <global index>" for logs
};

// Fixed uids of the tensors the caller supplies.
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV, kFirstInternal = 100 };

// Builds one operation graph (ops appended in data-flow order) and its plan.
class GraphBuilder {
 public:
  Tensor tensor(std::vector<int64_t> dims, std::vector<int64_t> strides, cudnnDataType_t type,
                int64_t uid, bool is_virtual, bool by_value = false) {
    Tensor t;
    t.desc = std::make_shared<Descriptor>(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    t.uid = uid;
    t.dims = std::move(dims);
    t.strides = std::move(strides);
    const int64_t alignment = 16;
    t.desc->set_type(CUDNN_ATTR_TENSOR_DATA_TYPE, type)
        .set(CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, static_cast<int64_t>(t.dims.size()),
             t.dims.data())
        .set(CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, static_cast<int64_t>(t.strides.size()),
             t.strides.data())
        .set_int(CUDNN_ATTR_TENSOR_UNIQUE_ID, uid)
        .set_int(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, alignment)
        .set(CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
    if (by_value) t.desc->set(CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value);
    t.desc->finalize("tensor descriptor");
    keep_.push_back(t.desc);
    return t;
  }
  Tensor virtual_like(const std::vector<int64_t>& dims, const std::vector<int64_t>& strides,
                      cudnnDataType_t type = CUDNN_DATA_FLOAT) {
    return tensor(dims, strides, type, next_uid_++, true);
  }
  Tensor workspace_tensor(const std::vector<int64_t>& dims, const std::vector<int64_t>& strides) {
    Tensor t = tensor(dims, strides, CUDNN_DATA_FLOAT, next_uid_++, false);
    int64_t elements = 1;
    for (size_t i = 0; i < dims.size(); ++i) elements += (dims[i] - 1) * strides[i];
    workspace_tensors_.push_back({t.uid, own_workspace_});
    own_workspace_ += (elements * 4 + 255) / 256 * 256;
    return t;
  }
  template <typename T>
  Tensor scalar(T value, cudnnDataType_t type) {
    static_assert(sizeof(T) == 4, "by-value scalars here are 4 bytes");
    const std::vector<int64_t> one = {1, 1, 1, 1};
    Tensor t = tensor(one, one, type, next_uid_++, false, true);
    ScalarValue s;
    s.uid = t.uid;
    std::memcpy(s.bytes.data(), &value, sizeof(T));
    scalars_.push_back(s);
    return t;
  }
  Tensor scalar(float value) { return scalar(value, CUDNN_DATA_FLOAT); }
  Tensor scalar(int32_t value) { return scalar(value, CUDNN_DATA_INT32); }

  // y = mode(x[, b[, t]]); axis is GEN_INDEX's (and ignored by the others).
  void pointwise(cudnnPointwiseMode_t mode, const Tensor& x, const Tensor* b, const Tensor* t,
                 const Tensor& y, cudnnDataType_t math = CUDNN_DATA_FLOAT, int64_t axis = -1) {
    auto pw = std::make_shared<Descriptor>(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    pw->set(CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    pw->set_type(CUDNN_ATTR_POINTWISE_MATH_PREC, math);
    if (axis >= 0) pw->set_int(CUDNN_ATTR_POINTWISE_AXIS, axis);
    pw->finalize("pointwise descriptor");
    auto op = std::make_shared<Descriptor>(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    op->set(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw->get());
    op->set(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x.desc->get());
    if (b != nullptr) op->set(CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b->desc->get());
    if (t != nullptr) op->set(CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t->desc->get());
    op->set(CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y.desc->get());
    op->finalize("pointwise operation");
    keep_.push_back(pw);
    ops_.push_back(op);
  }
  // Virtual output shaped like x.
  Tensor pointwise(cudnnPointwiseMode_t mode, const Tensor& x, const Tensor* b = nullptr,
                   cudnnDataType_t out = CUDNN_DATA_FLOAT, cudnnDataType_t math = CUDNN_DATA_FLOAT,
                   int64_t axis = -1) {
    Tensor y = virtual_like(x.dims, x.strides, out);
    pointwise(mode, x, b, nullptr, y, math, axis);
    return y;
  }
  void matmul(const Tensor& a, const Tensor& b, const Tensor& c) {
    auto mm = std::make_shared<Descriptor>(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    mm->set_type(CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_DATA_FLOAT);
    mm->finalize("matmul descriptor");
    auto op = std::make_shared<Descriptor>(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    op->set(CUDNN_ATTR_OPERATION_MATMUL_ADESC, a.desc->get())
        .set(CUDNN_ATTR_OPERATION_MATMUL_BDESC, b.desc->get())
        .set(CUDNN_ATTR_OPERATION_MATMUL_CDESC, c.desc->get())
        .set(CUDNN_ATTR_OPERATION_MATMUL_DESC, mm->get());
    op->finalize("matmul operation");
    keep_.push_back(mm);
    ops_.push_back(op);
  }
  void reduction(cudnnReduceTensorOp_t mode, const Tensor& x, const Tensor& y) {
    auto red = std::make_shared<Descriptor>(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    red->set(CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode);
    red->set_type(CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_DATA_FLOAT);
    red->finalize("reduction descriptor");
    auto op = std::make_shared<Descriptor>(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    op->set(CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x.desc->get())
        .set(CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y.desc->get())
        .set(CUDNN_ATTR_OPERATION_REDUCTION_DESC, red->get());
    op->finalize("reduction operation");
    keep_.push_back(red);
    ops_.push_back(op);
  }
  void reshape(const Tensor& x, const Tensor& y) {
    auto op = std::make_shared<Descriptor>(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
    op->set(CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x.desc->get())
        .set(CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y.desc->get());
    op->finalize("reshape operation");
    ops_.push_back(op);
  }

  // cuDNN's fused SDPA forward operation (descriptor type 41, cuDNN >= 9.13). The attribute
  // names are the header's when it has them; they are named by value so that this file also
  // builds against an older cudnn_graph.h (the loaded library's version is checked at run time).
  void sdpa_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                    const Tensor& scale, const Tensor* stats) {
    constexpr auto kSdpaFwd = static_cast<cudnnBackendDescriptorType_t>(41);
    constexpr auto kQDesc = static_cast<cudnnBackendAttributeName_t>(2800);
    constexpr auto kKDesc = static_cast<cudnnBackendAttributeName_t>(2801);
    constexpr auto kVDesc = static_cast<cudnnBackendAttributeName_t>(2802);
    constexpr auto kODesc = static_cast<cudnnBackendAttributeName_t>(2803);
    constexpr auto kStatsDesc = static_cast<cudnnBackendAttributeName_t>(2804);
    constexpr auto kScaleDesc = static_cast<cudnnBackendAttributeName_t>(2805);
    auto op = std::make_shared<Descriptor>(kSdpaFwd);
    op->set(kQDesc, q.desc->get())
        .set(kKDesc, k.desc->get())
        .set(kVDesc, v.desc->get())
        .set(kODesc, o.desc->get())
        .set(kScaleDesc, scale.desc->get());
    if (stats != nullptr) op->set(kStatsDesc, stats->desc->get());
    op->finalize("SDPA forward operation");
    ops_.push_back(op);
  }

  // Finalizes the graph, asks the heuristics, and keeps the first engine config that builds.
  std::shared_ptr<Plan> build(cudnnHandle_t handle) {
    auto plan = std::make_shared<Plan>();
    auto graph = std::make_shared<Descriptor>(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    std::vector<cudnnBackendDescriptor_t> raw;
    for (const auto& op : ops_) raw.push_back(op->get());
    graph->set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
               static_cast<int64_t>(raw.size()), raw.data());
    // The graph's handle attribute (800) is deprecated in newer headers but still needed by the
    // 9.x libraries we run on (9.14 on the H200); named by value to keep -Werror quiet.
    graph->set(static_cast<cudnnBackendAttributeName_t>(800), CUDNN_TYPE_HANDLE, 1, &handle);
    graph->finalize("operation graph (no cuDNN engine matches this attention graph)");

    std::vector<DescriptorPtr> configs;
    for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
      auto heur = std::make_shared<Descriptor>(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
      heur->set(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph->get());
      heur->set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
      if (cudnnBackendFinalize(heur->get()) != CUDNN_STATUS_SUCCESS) continue;
      int64_t count = 0;
      check_cudnn(cudnnBackendGetAttribute(heur->get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                           CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr),
                  "cudnnBackendGetAttribute(heuristics result count)");
      if (count <= 0) continue;
      std::vector<DescriptorPtr> found;
      std::vector<cudnnBackendDescriptor_t> found_raw;
      for (int64_t i = 0; i < count; ++i) {
        found.push_back(std::make_shared<Descriptor>(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
        found_raw.push_back(found.back()->get());
      }
      int64_t returned = 0;
      check_cudnn(cudnnBackendGetAttribute(heur->get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                           CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &returned,
                                           found_raw.data()),
                  "cudnnBackendGetAttribute(heuristics results)");
      found.resize(static_cast<size_t>(std::min(returned, count)));
      configs.insert(configs.end(), found.begin(), found.end());
      plan->keep.push_back(heur);
    }
    std::string last_error = "the heuristics returned no engine config";
    for (const auto& config : configs) {
      auto candidate = std::make_shared<Descriptor>(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
      candidate->set(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
      candidate->set(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, config->get());
      const cudnnStatus_t status = cudnnBackendFinalize(candidate->get());
      if (status != CUDNN_STATUS_SUCCESS) {
        char message[256] = {0};
        cudnnGetLastErrorString(message, sizeof(message));
        last_error = concat(cudnnGetErrorString(status), " ", message);
        continue;
      }
      int64_t workspace = 0, returned = 0;
      check_cudnn(
          cudnnBackendGetAttribute(candidate->get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                   CUDNN_TYPE_INT64, 1, &returned, &workspace),
          "cudnnBackendGetAttribute(workspace size)");
      plan->plan = candidate;
      plan->cudnn_workspace = workspace;
      plan->keep.insert(plan->keep.end(), keep_.begin(), keep_.end());
      plan->keep.insert(plan->keep.end(), ops_.begin(), ops_.end());
      plan->keep.push_back(graph);
      plan->keep.push_back(config);
      plan->scalars = scalars_;
      plan->workspace_tensors = workspace_tensors_;
      plan->own_workspace = own_workspace_;
      return plan;
    }
    throw std::runtime_error(concat("no cuDNN engine builds this attention graph (", configs.size(),
                                    " configs tried; last: ", last_error, ")"));
  }

 private:
  std::vector<DescriptorPtr> keep_;
  std::vector<DescriptorPtr> ops_;
  std::vector<ScalarValue> scalars_;
  std::vector<WorkspaceTensor> workspace_tensors_;
  int64_t own_workspace_ = 0;
  int64_t next_uid_ = kFirstInternal;
};

// ---- the attention graphs -----------------------------------------------------------------

struct Shape {
  int64_t b, hq, hkv, sq, sk, d;
  cudnnDataType_t io;
  std::vector<int64_t> score_dims() const { return {b, hq, sq, sk}; }
  std::vector<int64_t> score_strides() const { return {hq * sq * sk, sq * sk, sk, 1}; }
  std::vector<int64_t> row_dims() const { return {b, hq, sq, 1}; }
  std::vector<int64_t> row_strides() const { return {hq * sq, sq, 1, 1}; }
};

Shape shape_of(const AttentionParams& p) {
  const HeadLayout& heads = p.spec.heads;
  return {p.batch,
          heads.num_query_heads,
          heads.num_kv_heads,
          p.seqlen_q,
          p.seqlen_k,
          p.spec.head_dim,
          p.dtype == DType::bf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF};
}

// (B, N, H, d) storage as a (B, H, N, d) view; transposed: (B, H, d, N).
Tensor bhsd(GraphBuilder& g, const Shape& s, const TensorStrides& st, int64_t heads, int64_t rows,
            int64_t uid, bool transposed = false) {
  if (transposed)
    return g.tensor({s.b, heads, s.d, rows}, {st.batch, st.head, 1, st.row}, s.io, uid, false);
  return g.tensor({s.b, heads, rows, s.d}, {st.batch, st.head, st.row, 1}, s.io, uid, false);
}

// Our masks, bottom-right aligned (the last query row sees the last key): key j is visible from
// row i when j <= i + (N_k - N_q) (causal) and, with a window, j >= i + (N_k - N_q) - left.
Tensor apply_mask(GraphBuilder& g, const Shape& s, const Window& w, Tensor score) {
  if (w.is_none()) return score;
  Tensor row =
      g.pointwise(CUDNN_POINTWISE_GEN_INDEX, score, nullptr, CUDNN_DATA_INT32, CUDNN_DATA_FLOAT, 2);
  Tensor col =
      g.pointwise(CUDNN_POINTWISE_GEN_INDEX, score, nullptr, CUDNN_DATA_INT32, CUDNN_DATA_FLOAT, 3);
  if (s.sk != s.sq) {
    const Tensor sk = g.scalar(static_cast<int32_t>(s.sk));
    const Tensor sq = g.scalar(static_cast<int32_t>(s.sq));
    row = g.pointwise(CUDNN_POINTWISE_ADD, row, &sk, CUDNN_DATA_INT32, CUDNN_DATA_INT32);
    row = g.pointwise(CUDNN_POINTWISE_SUB, row, &sq, CUDNN_DATA_INT32, CUDNN_DATA_INT32);
  }
  const Tensor keep =
      g.pointwise(CUDNN_POINTWISE_CMP_GE, row, &col, CUDNN_DATA_BOOLEAN, CUDNN_DATA_BOOLEAN);
  const Tensor lowest = g.scalar(std::numeric_limits<float>::lowest());
  Tensor masked = g.virtual_like(score.dims, score.strides);
  g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, score, &lowest, &keep, masked);
  if (w.left < 0) return masked;
  // Left edge: keep col + (left + 1) - (N_k - N_q) > row.
  const Tensor row2 = g.pointwise(CUDNN_POINTWISE_GEN_INDEX, masked, nullptr, CUDNN_DATA_FLOAT,
                                  CUDNN_DATA_FLOAT, 2);
  Tensor col2 = g.pointwise(CUDNN_POINTWISE_GEN_INDEX, masked, nullptr, CUDNN_DATA_FLOAT,
                            CUDNN_DATA_FLOAT, 3);
  const Tensor shift = g.scalar(static_cast<float>(w.left + 1 - s.sk + s.sq));
  col2 = g.pointwise(CUDNN_POINTWISE_ADD, col2, &shift, CUDNN_DATA_FLOAT, CUDNN_DATA_FLOAT, 3);
  const Tensor inside =
      g.pointwise(CUDNN_POINTWISE_CMP_GT, col2, &row2, CUDNN_DATA_BOOLEAN, CUDNN_DATA_BOOLEAN);
  const Tensor far = g.scalar(-1024.0f * 1024.0f * 1024.0f);
  Tensor windowed = g.virtual_like(score.dims, score.strides);
  g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, masked, &far, &inside, windowed);
  return windowed;
}

// The composite forward graph: matmul, scale, mask, softmax as max / sub / exp / sum / div, matmul.
// cuDNN's heuristics recognise the pattern (the one NVIDIA's frontend emits) and return its fused
// engine. Without stats (inference) the LSE is a virtual tensor, as in the frontend's graph.
std::shared_ptr<Plan> build_composite_forward(cudnnHandle_t handle, const AttentionParams& p,
                                              bool with_stats) {
  const Shape s = shape_of(p);
  GraphBuilder g;
  const Tensor q = bhsd(g, s, p.q_strides, s.hq, s.sq, kQ);
  const Tensor kt = bhsd(g, s, p.k_strides, s.hkv, s.sk, kK, true);
  const Tensor v = bhsd(g, s, p.v_strides, s.hkv, s.sk, kV);
  const Tensor o = bhsd(g, s, p.out_strides, s.hq, s.sq, kO);
  const Tensor stats =
      with_stats ? g.tensor(s.row_dims(), s.row_strides(), CUDNN_DATA_FLOAT, kStats, false)
                 : g.virtual_like(s.row_dims(), s.row_strides());

  Tensor score = g.virtual_like(s.score_dims(), s.score_strides());
  g.matmul(q, kt, score);
  const Tensor scale = g.scalar(p.spec.scale());
  score = g.pointwise(CUDNN_POINTWISE_MUL, score, &scale);
  score = apply_mask(g, s, p.spec.window, score);

  // Softmax with stats = max + log(sum exp(score - max)).
  const Tensor max = g.virtual_like(s.row_dims(), s.row_strides());
  g.reduction(CUDNN_REDUCE_TENSOR_MAX, score, max);
  const Tensor centered = g.pointwise(CUDNN_POINTWISE_SUB, score, &max);
  const Tensor exp = g.pointwise(CUDNN_POINTWISE_EXP, centered);
  const Tensor sum = g.virtual_like(s.row_dims(), s.row_strides());
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, exp, sum);
  const Tensor log = g.pointwise(CUDNN_POINTWISE_LOG, sum);
  g.pointwise(CUDNN_POINTWISE_ADD, max, &log, nullptr, stats);
  // The probabilities feed the second matmul in the input type (what the engines expect).
  const Tensor probs = g.virtual_like(s.score_dims(), s.score_strides(), s.io);
  g.pointwise(CUDNN_POINTWISE_DIV, exp, &sum, nullptr, probs);
  g.matmul(probs, v, o);
  return g.build(handle);
}

// The unified forward graph: one SDPA_FWD operation (cuDNN >= 9.13.1) with Q, the literal K (not
// K^T), V, O, the scale by value and, for training, the stats. It has its own engines: NVIDIA's
// frontend picks it whenever it can (cudnn-frontend 1.18, the one in PyTorch 2.11, does so for
// unmasked attention), and on the H200 its engine ran the unmasked d = 128 MHA forward at 685
// TFLOP/s where the composite graph's ran at 602-606 (bench/results/2026-11-29-h200-gpu-run24).
// Masks need cuDNN 9.21's bounds, so masked calls stay on the composite graph.
std::shared_ptr<Plan> build_unified_forward(cudnnHandle_t handle, const AttentionParams& p,
                                            bool with_stats) {
  const Shape s = shape_of(p);
  GraphBuilder g;
  const Tensor q = bhsd(g, s, p.q_strides, s.hq, s.sq, kQ);
  const Tensor k = bhsd(g, s, p.k_strides, s.hkv, s.sk, kK);
  const Tensor v = bhsd(g, s, p.v_strides, s.hkv, s.sk, kV);
  const Tensor o = bhsd(g, s, p.out_strides, s.hq, s.sq, kO);
  const Tensor scale = g.scalar(p.spec.scale());
  std::optional<Tensor> stats;
  if (with_stats) stats = g.tensor(s.row_dims(), s.row_strides(), CUDNN_DATA_FLOAT, kStats, false);
  g.sdpa_forward(q, k, v, o, scale, stats ? &*stats : nullptr);
  return g.build(handle);
}

std::shared_ptr<Plan> build_backward(cudnnHandle_t handle, const AttentionBackwardParams& bp) {
  const AttentionParams& p = bp.forward;
  const Shape s = shape_of(p);
  GraphBuilder g;
  const Tensor q = bhsd(g, s, p.q_strides, s.hq, s.sq, kQ);
  const Tensor kt = bhsd(g, s, p.k_strides, s.hkv, s.sk, kK, true);
  const Tensor vt = bhsd(g, s, p.v_strides, s.hkv, s.sk, kV, true);
  const Tensor o = bhsd(g, s, p.out_strides, s.hq, s.sq, kO);
  const Tensor stats = g.tensor(s.row_dims(), s.row_strides(), CUDNN_DATA_FLOAT, kStats, false);
  const Tensor dout = bhsd(g, s, bp.dout_strides, s.hq, s.sq, kDO);
  const Tensor dq = bhsd(g, s, bp.dq_strides, s.hq, s.sq, kDQ);
  const Tensor dk = bhsd(g, s, bp.dk_strides, s.hkv, s.sk, kDK);
  const Tensor dv = bhsd(g, s, bp.dv_strides, s.hkv, s.sk, kDV);
  const Tensor scale = g.scalar(p.spec.scale());
  const Tensor one = g.scalar(1.0f);

  // D_i = dO_i . O_i (softmax_sum), kept in the workspace.
  const Tensor do_o =
      g.virtual_like({s.b, s.hq, s.sq, s.d}, {s.hq * s.sq * s.d, s.sq * s.d, s.hq * s.d, 1});
  g.pointwise(CUDNN_POINTWISE_MUL, dout, &o, nullptr, do_o);
  const Tensor dot = g.virtual_like(s.row_dims(), s.row_strides());
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, do_o, dot);
  const Tensor softmax_sum = g.workspace_tensor(s.row_dims(), s.row_strides());
  g.pointwise(CUDNN_POINTWISE_MUL, dot, &one, nullptr, softmax_sum);

  // P = exp(scale * Q K^T - stats), masked.
  Tensor score = g.virtual_like(s.score_dims(), s.score_strides());
  g.matmul(q, kt, score);
  score = g.pointwise(CUDNN_POINTWISE_MUL, score, &scale);
  score = g.pointwise(CUDNN_POINTWISE_SUB, score, &stats);
  score = apply_mask(g, s, p.spec.window, score);
  const Tensor probs = g.pointwise(CUDNN_POINTWISE_EXP, score);

  // P^T and dS^T as (B, H_q, N_k, N_q) views; with GQA the per-query-head dK, dV are summed
  // over each group by a reduction.
  const std::vector<int64_t> t_dims = {s.b, s.hq, s.sk, s.sq};
  const std::vector<int64_t> t_strides = {s.hq * s.sq * s.sk, s.sq * s.sk, 1, s.sk};
  const std::vector<int64_t> full_dims = {s.b, s.hq, s.sk, s.d};
  const std::vector<int64_t> full_strides = {s.hq * s.sk * s.d, s.sk * s.d, s.d, 1};
  auto grad_kv = [&](const Tensor& transposed, const Tensor& rhs, const Tensor& out) {
    if (s.hq == s.hkv) {
      g.matmul(transposed, rhs, out);
      return;
    }
    const Tensor full = g.virtual_like(full_dims, full_strides, s.io);
    g.matmul(transposed, rhs, full);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, full, out);
  };
  const Tensor probs_t = g.virtual_like(t_dims, t_strides, s.io);
  g.reshape(probs, probs_t);
  grad_kv(probs_t, dout, dv);

  // dS = scale * P * (dO V^T - D).
  Tensor dp = g.virtual_like(s.score_dims(), s.score_strides());
  g.matmul(dout, vt, dp);
  dp = g.pointwise(CUDNN_POINTWISE_SUB, dp, &softmax_sum);
  dp = g.pointwise(CUDNN_POINTWISE_MUL, dp, &probs);
  const Tensor ds = g.pointwise(CUDNN_POINTWISE_MUL, dp, &scale);
  const Tensor ds_t = g.virtual_like(t_dims, t_strides, s.io);
  g.reshape(ds, ds_t);
  grad_kv(ds_t, q, dk);

  // dQ = dS K, accumulated in fp32 in the workspace, then converted.
  const Tensor k = g.virtual_like({s.b, s.hkv, s.sk, s.d},
                                  {kt.strides[0], kt.strides[1], kt.strides[3], kt.strides[2]});
  g.reshape(kt, k);
  const Tensor dq_accum =
      g.workspace_tensor({s.b, s.hq, s.sq, s.d}, {s.hq * s.sq * s.d, s.sq * s.d, s.d, 1});
  g.matmul(ds, k, dq_accum);
  g.pointwise(CUDNN_POINTWISE_IDENTITY, dq_accum, nullptr, nullptr, dq);
  return g.build(handle);
}

// Which forward graph describes a call to cuDNN: SQA_CUDNN_FWD_GRAPH = auto (or unset), unified
// or composite, read on every call so a benchmark can compare them in one process. auto takes the
// unified SDPA operation where it can serve the call (no mask, cuDNN >= 9.13.1) and falls back to
// the composite graph when the unified one finds no engine; the explicit choices do not fall back.
enum class ForwardGraph { automatic, unified, composite };

constexpr size_t kUnifiedForwardMinVersion = 91301;

ForwardGraph requested_forward_graph(const AttentionParams& p) {
  const char* env = std::getenv("SQA_CUDNN_FWD_GRAPH");
  const std::string mode = env != nullptr ? env : "";
  const bool masked = !p.spec.window.is_none();
  const size_t version = cudnnGetVersion();
  if (mode.empty() || mode == "auto") {
    return !masked && version >= kUnifiedForwardMinVersion ? ForwardGraph::automatic
                                                           : ForwardGraph::composite;
  }
  if (mode == "composite") return ForwardGraph::composite;
  if (mode == "unified") {
    if (masked) {
      throw Error(concat("SQA_CUDNN_FWD_GRAPH=unified takes unmasked attention only (window left ",
                         p.spec.window.left, ", right ", p.spec.window.right,
                         "): the mask bounds of cuDNN's SDPA operation need cuDNN 9.21"));
    }
    if (version < kUnifiedForwardMinVersion) {
      throw Error(concat("SQA_CUDNN_FWD_GRAPH=unified needs cuDNN 9.13.1 or newer (this is ",
                         version, ")"));
    }
    return ForwardGraph::unified;
  }
  throw Error(
      concat("SQA_CUDNN_FWD_GRAPH (", mode, ") must be auto, unified or composite, or unset"));
}

// ---- handles, plan cache, execution -------------------------------------------------------

std::mutex& cudnn_mutex() {
  static std::mutex mutex;
  return mutex;
}

// One handle per device, created on first use (callers hold cudnn_mutex()).
cudnnHandle_t handle_for(int device) {
  static std::map<int, cudnnHandle_t> handles;
  auto it = handles.find(device);
  if (it != handles.end()) return it->second;
  cudnnHandle_t handle = nullptr;
  check_cudnn(cudnnCreate(&handle), "cudnnCreate");
  handles[device] = handle;
  return handle;
}

struct CacheEntry {
  std::shared_ptr<Plan> plan;  // null when the build failed
  std::string error;
};

void append_strides(std::string& key, const TensorStrides& s) {
  key += concat(s.batch, ",", s.row, ",", s.head, ";");
}

std::string plan_key(int device, const AttentionParams& p, const AttentionBackwardParams* bp) {
  const AttentionSpec& spec = p.spec;
  std::string key =
      concat(bp ? "bwd" : "fwd", ";", device, ";", static_cast<int>(p.dtype), ";", p.batch, ";",
             spec.heads.num_query_heads, ";", spec.heads.num_kv_heads, ";", p.seqlen_q, ";",
             p.seqlen_k, ";", spec.head_dim, ";", spec.window.left, ";", spec.window.right, ";");
  const float scale = spec.scale();
  uint32_t scale_bits = 0;
  std::memcpy(&scale_bits, &scale, sizeof(scale));
  key += concat(scale_bits, ";");
  for (const TensorStrides* s : {&p.q_strides, &p.k_strides, &p.v_strides, &p.out_strides}) {
    append_strides(key, *s);
  }
  if (bp != nullptr) {
    for (const TensorStrides* s :
         {&bp->dout_strides, &bp->dq_strides, &bp->dk_strides, &bp->dv_strides}) {
      append_strides(key, *s);
    }
  }
  return key;
}

// The cached plan for this call (built on first use); null with `error` set when cuDNN has no
// engine for it. Callers hold cudnn_mutex().
// A forward plan has stats (the LSE output) when the caller passes an lse buffer; without one
// (inference) the stats stay inside the graph.
const CacheEntry& cached_plan(const AttentionParams& p, const AttentionBackwardParams* bp) {
  int device = 0;
  check_cuda_status(cudaGetDevice(&device), "cudaGetDevice");
  static std::map<std::string, CacheEntry> cache;
  const ForwardGraph graph = bp != nullptr ? ForwardGraph::composite : requested_forward_graph(p);
  const bool with_stats = bp != nullptr || p.lse != nullptr;
  const std::string key = concat(plan_key(device, p, bp), static_cast<int>(graph), ";",
                                 with_stats ? "stats" : "no-stats");
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  CacheEntry entry;
  try {
    cudnnHandle_t handle = handle_for(device);
    if (bp != nullptr) {
      entry.plan = build_backward(handle, *bp);
    } else if (graph == ForwardGraph::composite) {
      entry.plan = build_composite_forward(handle, p, with_stats);
    } else {
      try {
        entry.plan = build_unified_forward(handle, p, with_stats);
      } catch (const std::exception&) {
        if (graph == ForwardGraph::unified) throw;
        entry.plan = build_composite_forward(handle, p, with_stats);
      }
    }
  } catch (const std::exception& e) {
    entry.error = e.what();
  }
  return cache.emplace(key, std::move(entry)).first->second;
}

void require_aligned(const void* ptr, const char* name) {
  require(reinterpret_cast<uintptr_t>(ptr) % 16 == 0, name,
          " must be 16-byte aligned for the cuDNN backend (address ", ptr, ")");
}

// The workspace, kept per device and grown on demand: a stream-ordered allocation per call would
// go back to the driver at every synchronisation (the default pool keeps nothing), which costs
// more than the attention at small sizes. Calls are serialised by cudnn_mutex(); a call on
// another stream waits for the previous user's event, so reuse across streams is safe.
struct Workspace {
  void* ptr = nullptr;
  size_t bytes = 0;
  cudaEvent_t last_use = nullptr;
};

void* workspace_for(int device, size_t bytes, cudaStream_t stream, Workspace** out) {
  static std::map<int, Workspace> workspaces;
  Workspace& w = workspaces[device];
  if (w.last_use == nullptr) {
    check_cuda_status(cudaEventCreateWithFlags(&w.last_use, cudaEventDisableTiming),
                      "cudaEventCreate(cuDNN workspace)");
  }
  if (bytes > w.bytes) {
    check_cuda_status(cudaEventSynchronize(w.last_use), "cudaEventSynchronize(cuDNN workspace)");
    if (w.ptr != nullptr) check_cuda_status(cudaFree(w.ptr), "cudaFree(cuDNN workspace)");
    w.ptr = nullptr;
    w.bytes = 0;
    check_cuda_status(cudaMalloc(&w.ptr, bytes), "cudaMalloc(cuDNN workspace)");
    w.bytes = bytes;
  }
  check_cuda_status(cudaStreamWaitEvent(stream, w.last_use, 0), "cudaStreamWaitEvent");
  *out = &w;
  return w.ptr;
}

void execute(const Plan& plan, const std::vector<std::pair<int64_t, void*> >& tensors,
             cudaStream_t stream) {
  int device = 0;
  check_cuda_status(cudaGetDevice(&device), "cudaGetDevice");
  cudnnHandle_t handle = handle_for(device);
  check_cudnn(cudnnSetStream(handle, stream), "cudnnSetStream");
  const int64_t cudnn_bytes = (plan.cudnn_workspace + 255) / 256 * 256;
  const size_t bytes = static_cast<size_t>(cudnn_bytes + plan.own_workspace);
  Workspace* ws = nullptr;
  void* workspace = bytes > 0 ? workspace_for(device, bytes, stream, &ws) : nullptr;
  std::vector<int64_t> uids;
  std::vector<void*> pointers;
  for (const auto& [uid, ptr] : tensors) {
    uids.push_back(uid);
    pointers.push_back(ptr);
  }
  for (const ScalarValue& scalar : plan.scalars) {
    uids.push_back(scalar.uid);
    pointers.push_back(const_cast<unsigned char*>(scalar.bytes.data()));
  }
  for (const WorkspaceTensor& t : plan.workspace_tensors) {
    uids.push_back(t.uid);
    pointers.push_back(static_cast<char*>(workspace) + cudnn_bytes + t.offset);
  }
  Descriptor pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  pack.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, static_cast<int64_t>(uids.size()),
           uids.data());
  pack.set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
           static_cast<int64_t>(pointers.size()), pointers.data());
  pack.set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
  pack.finalize("variant pack");
  const cudnnStatus_t status = cudnnBackendExecute(handle, plan.plan->get(), pack.get());
  // Mark the workspace busy until this stream is past the call, even when the launch failed.
  if (ws != nullptr) {
    check_cuda_status(cudaEventRecord(ws->last_use, stream), "cudaEventRecord(cuDNN workspace)");
  }
  check_cudnn(status, "cudnnBackendExecute");
}

// Decides whether this call runs on cuDNN; returns its plan then (else null). An explicit cuDNN
// choice that cannot be served throws.
std::shared_ptr<Plan> choose(const AttentionParams& p, const AttentionBackwardParams* bp) {
  const CudaBackend requested = requested_backend(p);
  if (requested == CudaBackend::own) return nullptr;
  const bool backward = bp != nullptr;
  const bool deterministic = bp != nullptr && bp->deterministic;
  std::string reason = cudnn_unsupported_reason(p, backward, deterministic);
  if (reason.empty() && bp != nullptr) {
    const TensorStrides* strides[] = {&bp->dout_strides, &bp->dq_strides, &bp->dk_strides,
                                      &bp->dv_strides};
    const char* names[] = {"dout", "dq", "dk", "dv"};
    for (int i = 0; i < 4 && reason.empty(); ++i) reason = strides_reason(*strides[i], names[i]);
  }
  if (requested == CudaBackend::automatic &&
      (!reason.empty() || !auto_prefers_cudnn(p, backward))) {
    return nullptr;
  }
  if (!reason.empty()) throw Error(concat("cuDNN backend requested, but ", reason));
  std::lock_guard<std::mutex> lock(cudnn_mutex());
  const CacheEntry& entry = cached_plan(p, bp);
  if (entry.plan) return entry.plan;
  if (requested == CudaBackend::automatic) return nullptr;  // remembered: ours serve this shape
  throw Error(concat("cuDNN backend: ", entry.error));
}

}  // namespace

std::string cudnn_unsupported_reason(const AttentionParams& p, bool backward, bool deterministic) {
  const HeadLayout& heads = p.spec.heads;
  const size_t version = cudnnGetVersion();
  if (version < 90000) {
    return concat("cuDNN ", version, " is loaded; the cuDNN backend needs cuDNN 9 or newer");
  }
  if (p.dtype != DType::bf16 && p.dtype != DType::f16) {
    return concat("dtype (", dtype_name(p.dtype),
                  ") is not supported by the cuDNN backend: it takes bf16 or f16");
  }
  if (p.is_varlen()) {
    return "varlen batches (cu_seqlens) are not supported by the cuDNN backend: it takes dense "
           "batches";
  }
  if (heads.is_reverse()) {
    return concat("H_q (", heads.num_query_heads, ") < H_kv (", heads.num_kv_heads,
                  ") (rSQA) is not supported by the cuDNN backend: it needs H_q to be a multiple "
                  "of H_kv");
  }
  const int d = p.spec.head_dim;
  const int max_d = backward ? 128 : 256;
  if (d % 8 != 0 || d > max_d) {
    return concat("head_dim (", d, ") is not supported by the cuDNN ",
                  backward ? "backward" : "forward", ": it takes multiples of 8 up to ", max_d);
  }
  const Window& w = p.spec.window;
  if (!w.is_none() && w.right != 0) {
    return concat("window (left ", w.left, ", right ", w.right,
                  ") is not supported by the cuDNN backend: it takes none, causal, or a causal "
                  "sliding window (right = 0)");
  }
  if (!w.is_none() && p.seqlen_q > p.seqlen_k) {
    return concat("seqlen_q (", p.seqlen_q, ") > seqlen_k (", p.seqlen_k,
                  ") with a mask leaves query rows without keys, which the cuDNN backend does "
                  "not handle: it needs seqlen_q <= seqlen_k");
  }
  const TensorStrides* strides[] = {&p.q_strides, &p.k_strides, &p.v_strides, &p.out_strides};
  const char* names[] = {"q", "k", "v", "out"};
  for (int i = 0; i < 4; ++i) {
    std::string reason = strides_reason(*strides[i], names[i]);
    if (!reason.empty()) return reason;
  }
  if (backward && deterministic) {
    return "deterministic = true is not offered by the cuDNN backward (it sums dQ with atomics)";
  }
  // Before 9.16 the backward engines need N_k % 128 == 0 unless given a padding mask.
  if (backward && version < 91600 && p.seqlen_k % 128 != 0) {
    return concat("seqlen_k (", p.seqlen_k,
                  ") must be a multiple of 128 for the backward of "
                  "cuDNN before 9.16 (this is ",
                  version, ")");
  }
  return "";
}

bool cudnn_would_serve(const AttentionParams& params, bool backward, bool deterministic) {
  if (!backward) return choose(params, nullptr) != nullptr;
  AttentionBackwardParams bp;
  bp.forward = params;
  bp.deterministic = deterministic;
  bp.set_contiguous_strides();
  return choose(params, &bp) != nullptr;
}

bool cudnn_forward_if_chosen(const AttentionParams& params) {
  const std::shared_ptr<Plan> plan = choose(params, nullptr);
  if (!plan) return false;
  const void* pointers[] = {params.q, params.k, params.v, params.out};
  const char* names[] = {"q", "k", "v", "out"};
  for (int i = 0; i < 4; ++i) require_aligned(pointers[i], names[i]);
  // The plan has stats exactly when there is an lse buffer (cached_plan).
  std::vector<std::pair<int64_t, void*> > tensors = {{kQ, const_cast<void*>(params.q)},
                                                     {kK, const_cast<void*>(params.k)},
                                                     {kV, const_cast<void*>(params.v)},
                                                     {kO, params.out}};
  if (params.lse != nullptr) tensors.emplace_back(kStats, params.lse);
  std::lock_guard<std::mutex> lock(cudnn_mutex());
  execute(*plan, tensors, static_cast<cudaStream_t>(params.stream));
  return true;
}

bool cudnn_backward_if_chosen(const AttentionBackwardParams& params) {
  const std::shared_ptr<Plan> plan = choose(params.forward, &params);
  if (!plan) return false;
  const AttentionParams& f = params.forward;
  const void* pointers[] = {f.q, f.k, f.v, f.out, params.dout, params.dq, params.dk, params.dv};
  const char* names[] = {"q", "k", "v", "out", "dout", "dq", "dk", "dv"};
  for (int i = 0; i < 8; ++i) require_aligned(pointers[i], names[i]);
  std::lock_guard<std::mutex> lock(cudnn_mutex());
  execute(*plan,
          {{kQ, const_cast<void*>(f.q)},
           {kK, const_cast<void*>(f.k)},
           {kV, const_cast<void*>(f.v)},
           {kO, f.out},
           {kStats, f.lse},
           {kDO, const_cast<void*>(params.dout)},
           {kDQ, params.dq},
           {kDK, params.dk},
           {kDV, params.dv}},
          static_cast<cudaStream_t>(f.stream));
  return true;
}

#endif  // SQA_HAVE_CUDNN

}  // namespace sqa::cuda::detail

namespace sqa::cuda {

const char* chosen_backend(const AttentionParams& params, bool backward) {
  return detail::cudnn_would_serve(params, backward, false) ? "cudnn" : "own";
}

}  // namespace sqa::cuda
