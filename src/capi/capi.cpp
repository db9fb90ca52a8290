// The C API (include/sqa/sqa.h) over the C++ library. Each entry point converts the plain C
// structs into AttentionParams, runs the same validation and dispatch the C++ callers get, and
// turns exceptions into status codes with a per-thread message: no exception ever crosses the
// C boundary.
#include <cmath>
#include <exception>
#include <new>
#include <string>
#include <string_view>

#include "core/build_info.hpp"
#include "sqa/attention.hpp"
#include "sqa/error.hpp"
#include "sqa/spec.hpp"
#include "sqa/sqa.h"

#ifndef SQA_VERSION_STRING
#define SQA_VERSION_STRING "unknown"
#endif

namespace {

thread_local std::string last_error;

sqa_status fail(sqa_status status, std::string message) {
  last_error = std::move(message);
  return status;
}

// A rule that the caller broke is INVALID_ARGUMENT; a valid request this build cannot serve
// (CUDA not compiled in, f16 on the CPU, a kernel not implemented yet) is UNSUPPORTED, so callers
// can fall back instead of reporting a bug.
bool names_missing_support(std::string_view message) {
  return message.find("not built") != std::string_view::npos ||
         message.find("unsupported") != std::string_view::npos ||
         message.find("not supported") != std::string_view::npos ||
         message.find("not implemented") != std::string_view::npos ||
         message.find("CUDA-only") != std::string_view::npos;
}

template <typename Body>
sqa_status guarded(Body&& body) {
  try {
    body();
    return SQA_OK;
  } catch (const sqa::Error& e) {
    return fail(
        names_missing_support(e.what()) ? SQA_ERROR_UNSUPPORTED : SQA_ERROR_INVALID_ARGUMENT,
        e.what());
  } catch (const std::bad_alloc&) {
    return fail(SQA_ERROR_INTERNAL, "out of memory");
  } catch (const std::exception& e) {
    return fail(SQA_ERROR_INTERNAL, e.what());
  } catch (...) {
    return fail(SQA_ERROR_INTERNAL, "unknown exception inside sqa");
  }
}

sqa::AttentionSpec to_spec(const sqa_attention_spec& c) {
  sqa::AttentionSpec spec;
  spec.heads.num_query_heads = c.num_query_heads;
  spec.heads.num_kv_heads = c.num_kv_heads;
  spec.head_dim = c.head_dim;
  spec.softmax_scale = c.softmax_scale;
  spec.window.left = c.window_left;
  spec.window.right = c.window_right;
  return spec;
}

sqa::DType to_dtype(sqa_dtype d) {
  switch (d) {
    case SQA_F32:
      return sqa::DType::f32;
    case SQA_BF16:
      return sqa::DType::bf16;
    case SQA_F16:
      return sqa::DType::f16;
    case SQA_F64:
      return sqa::DType::f64;
  }
  throw sqa::Error(sqa::detail::concat("dtype (", static_cast<int>(d),
                                       ") must be SQA_F32, SQA_BF16, SQA_F16 or SQA_F64"));
}

sqa::Device to_device(sqa_device d) {
  switch (d) {
    case SQA_DEVICE_CPU:
      return sqa::Device::cpu;
    case SQA_DEVICE_CUDA:
      return sqa::Device::cuda;
  }
  throw sqa::Error(sqa::detail::concat("device (", static_cast<int>(d),
                                       ") must be SQA_DEVICE_CPU or SQA_DEVICE_CUDA"));
}

bool all_zero(const int64_t (&s)[3]) {
  return s[0] == 0 && s[1] == 0 && s[2] == 0;
}

// All-zero strides select the contiguous layout for that tensor alone, so a caller can pass a
// strided view for one tensor and leave the others contiguous.
void apply_strides(sqa::TensorStrides& target, const sqa::TensorStrides& contiguous,
                   const int64_t (&given)[3]) {
  target = all_zero(given) ? contiguous : sqa::TensorStrides{given[0], given[1], given[2]};
}

sqa::AttentionParams to_params(const sqa_attention_args& a) {
  sqa::AttentionParams p;
  p.spec = to_spec(a.spec);
  p.dtype = to_dtype(a.dtype);
  p.device = to_device(a.device);
  p.stream = a.stream;
  p.batch = a.batch;
  p.seqlen_q = a.seqlen_q;
  p.seqlen_k = a.seqlen_k;
  p.cu_seqlens_q = a.cu_seqlens_q;
  p.cu_seqlens_k = a.cu_seqlens_k;
  p.q = a.q;
  p.k = a.k;
  p.v = a.v;
  p.out = a.out;
  p.lse = a.lse;
  p.set_contiguous_strides();
  const sqa::AttentionParams contiguous = p;
  apply_strides(p.q_strides, contiguous.q_strides, a.q_strides);
  apply_strides(p.k_strides, contiguous.k_strides, a.k_strides);
  apply_strides(p.v_strides, contiguous.v_strides, a.v_strides);
  apply_strides(p.out_strides, contiguous.out_strides, a.out_strides);
  return p;
}

sqa::AttentionBackwardParams to_params(const sqa_attention_backward_args& a) {
  sqa::AttentionBackwardParams g;
  g.forward = to_params(a.forward);
  g.dout = a.dout;
  g.dq = a.dq;
  g.dk = a.dk;
  g.dv = a.dv;
  g.deterministic = a.deterministic != 0;
  // Gradients default to the layout of the tensor they belong to (which may itself be strided).
  apply_strides(g.dout_strides, g.forward.out_strides, a.dout_strides);
  apply_strides(g.dq_strides, g.forward.q_strides, a.dq_strides);
  apply_strides(g.dk_strides, g.forward.k_strides, a.dk_strides);
  apply_strides(g.dv_strides, g.forward.v_strides, a.dv_strides);
  return g;
}

template <typename Args>
void require_args(const Args* args) {
  sqa::require(args != nullptr, "args must be non-null");
}

// Asked once per process: the answer cannot change, and a device query on every call would
// add latency to small (decode) launches.
bool cuda_available_cached() {
  static const bool available = [] {
    try {
      return sqa::cuda::available();
    } catch (...) {
      return false;
    }
  }();
  return available;
}

// Reports a missing backend before any kernel is reached, with a message the user can act on.
void require_backend(sqa::Device device, sqa::DType dtype) {
  if (device == sqa::Device::cuda && !cuda_available_cached()) {
    throw sqa::Error(
        "device SQA_DEVICE_CUDA is not supported here: the CUDA backend is not built into this "
        "copy of sqa, or no CUDA device is visible");
  }
  if (device == sqa::Device::cpu && dtype == sqa::DType::f16) {
    throw sqa::Error("dtype f16 is not supported on the CPU (CUDA-only); use f32 or bf16");
  }
}

void require_reference(sqa::Device device, sqa::DType dtype) {
  sqa::require(device == sqa::Device::cpu,
               "the reference runs on the CPU: device must be "
               "SQA_DEVICE_CPU with host pointers");
  require_backend(device, dtype);
}

}  // namespace

extern "C" {

const char* sqa_version(void) {
  return SQA_VERSION_STRING;
}

const char* sqa_build_commit(void) {
  return sqa::build_info().commit.c_str();
}

const char* sqa_last_error(void) {
  return last_error.c_str();
}

int sqa_cuda_available(void) {
  return cuda_available_cached() ? 1 : 0;
}

const char* sqa_cuda_attention_backend(const sqa_attention_args* args, int32_t backward) {
  try {
    if (args == nullptr) throw sqa::Error("args is null");
    return sqa::cuda::chosen_backend(to_params(*args), backward != 0);
  } catch (const std::exception& e) {
    last_error = e.what();
    return nullptr;
  }
}

const char* sqa_cpu_simd_path(void) {
  try {
    return sqa::cpu::simd_path();
  } catch (...) {
    return "unknown";
  }
}

sqa_status sqa_preset(const char* name, int32_t num_baseline_heads, int32_t* num_query_heads,
                      int32_t* num_kv_heads) {
  return guarded([&] {
    sqa::require(name != nullptr, "preset name must be non-null");
    sqa::require(num_query_heads != nullptr && num_kv_heads != nullptr,
                 "num_query_heads and num_kv_heads outputs must be non-null");
    const sqa::HeadLayout layout = sqa::preset_layout(sqa::parse_variant(name), num_baseline_heads);
    *num_query_heads = layout.num_query_heads;
    *num_kv_heads = layout.num_kv_heads;
  });
}

sqa_status sqa_validate_spec(const sqa_attention_spec* spec) {
  return guarded([&] {
    sqa::require(spec != nullptr, "spec must be non-null");
    to_spec(*spec).validate();
  });
}

sqa_status sqa_attention_forward(const sqa_attention_args* args) {
  return guarded([&] {
    require_args(args);
    const sqa::AttentionParams p = to_params(*args);
    require_backend(p.device, p.dtype);
    // The fast CPU kernels take f32/bf16; f64 goes to the float64 oracle, which is exact for it,
    // so callers need not special-case double inputs.
    if (p.device == sqa::Device::cpu && p.dtype == sqa::DType::f64) {
      sqa::cpu::attention_forward_reference(p);
    } else {
      sqa::attention_forward(p);
    }
  });
}

sqa_status sqa_attention_backward(const sqa_attention_backward_args* args) {
  return guarded([&] {
    require_args(args);
    const sqa::AttentionBackwardParams g = to_params(*args);
    require_backend(g.forward.device, g.forward.dtype);
    if (g.forward.device == sqa::Device::cpu && g.forward.dtype == sqa::DType::f64) {
      sqa::cpu::attention_backward_reference(g);
    } else {
      sqa::attention_backward(g);
    }
  });
}

sqa_status sqa_attention_forward_reference(const sqa_attention_args* args) {
  return guarded([&] {
    require_args(args);
    const sqa::AttentionParams p = to_params(*args);
    require_reference(p.device, p.dtype);
    sqa::cpu::attention_forward_reference(p);
  });
}

sqa_status sqa_attention_backward_reference(const sqa_attention_backward_args* args) {
  return guarded([&] {
    require_args(args);
    const sqa::AttentionBackwardParams g = to_params(*args);
    require_reference(g.forward.device, g.forward.dtype);
    sqa::cpu::attention_backward_reference(g);
  });
}

double sqa_attention_forward_flops(const sqa_attention_spec* spec, int64_t batch, int64_t seqlen_q,
                                   int64_t seqlen_k) {
  double flops = -1.0;
  const sqa_status status = guarded([&] {
    sqa::require(spec != nullptr, "spec must be non-null");
    const sqa::AttentionSpec s = to_spec(*spec);
    s.validate();
    flops = sqa::attention_forward_flops(s, batch, seqlen_q, seqlen_k);
  });
  return status == SQA_OK ? flops : -1.0;
}

double sqa_attention_backward_flops(const sqa_attention_spec* spec, int64_t batch, int64_t seqlen_q,
                                    int64_t seqlen_k) {
  double flops = -1.0;
  const sqa_status status = guarded([&] {
    sqa::require(spec != nullptr, "spec must be non-null");
    const sqa::AttentionSpec s = to_spec(*spec);
    s.validate();
    flops = sqa::attention_backward_flops(s, batch, seqlen_q, seqlen_k);
  });
  return status == SQA_OK ? flops : -1.0;
}

}  // extern "C"
