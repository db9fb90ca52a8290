// The cuDNN backend of the CUDA attention: cuDNN 9's fused flash attention (forward with stats,
// backward), reached through the backend graph API, for the layouts cuDNN supports (H_q a
// multiple of H_kv, dense batches, no mask / causal / causal sliding window). api.cpp calls the
// two *_if_chosen hooks first; they return false when this project's kernels should run.
#pragma once

#include <string>

#include "sqa/attention.hpp"

namespace sqa::cuda::detail {

// The explicit choice: params.cuda_backend, else SQA_CUDA_BACKEND (own, cudnn, auto or unset).
// Throws sqa::Error for another value of the variable.
CudaBackend requested_backend(const AttentionParams& params);

// Why cuDNN cannot serve this call ("" when it can, as far as the rules known in advance go;
// the plan build may still fail, which the auto path then remembers per shape).
std::string cudnn_unsupported_reason(const AttentionParams& params, bool backward,
                                     bool deterministic);

// Runs the forward / backward on cuDNN when the choice (explicit or automatic) says so and
// returns true; returns false when this project's kernels should run. An explicit cuDNN choice
// that cuDNN cannot serve throws sqa::Error naming the rule.
bool cudnn_forward_if_chosen(const AttentionParams& params);
bool cudnn_backward_if_chosen(const AttentionBackwardParams& params);

// Whether a call would run on cuDNN (builds and caches the plan when the choice is automatic).
bool cudnn_would_serve(const AttentionParams& params, bool backward, bool deterministic);

}  // namespace sqa::cuda::detail
