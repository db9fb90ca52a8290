/* sqa C API: plain C types, stable ABI. Every function returns an sqa_status; on failure
 * sqa_last_error() returns a message that names the offending value and the rule (the message
 * is per thread and stays valid until the next failing call on that thread).
 *
 * Layouts (strides in elements; pass all-zero strides for contiguous tensors):
 *   dense:  q (B, N_q, H_q, d)   k, v (B, N_k, H_kv, d)   out (B, N_q, H_attn, d)
 *           lse (B, H_attn, N_q) float32
 *   varlen: q (total_q, H_q, d)  k, v (total_k, H_kv, d)  out (total_q, H_attn, d)
 *           lse (H_attn, total_q) float32, with cu_seqlens_q/k of length batch + 1
 * H_attn = max(H_q, H_kv). H_q < H_kv is reverse SQA (queries tiled over the KV heads).
 * Pointers are host memory for SQA_DEVICE_CPU and device memory for SQA_DEVICE_CUDA
 * (cu_seqlens too), where `stream` is a cudaStream_t (NULL: the default stream). */
#ifndef SQA_SQA_H_
#define SQA_SQA_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SQA_API __attribute__((visibility("default")))

typedef enum {
  SQA_OK = 0,
  SQA_ERROR_INVALID_ARGUMENT = 1, /* bad shape, spec, pointer or option */
  SQA_ERROR_UNSUPPORTED = 2,      /* valid, but this build/backend does not do it */
  SQA_ERROR_INTERNAL = 3          /* a CUDA or library failure */
} sqa_status;

typedef enum { SQA_F32 = 0, SQA_BF16 = 1, SQA_F16 = 2, SQA_F64 = 3 } sqa_dtype;
typedef enum { SQA_DEVICE_CPU = 0, SQA_DEVICE_CUDA = 1 } sqa_device;

typedef struct {
  int32_t num_query_heads; /* H_q */
  int32_t num_kv_heads;    /* H_kv */
  int32_t head_dim;        /* d */
  float softmax_scale;     /* 0: 1/sqrt(head_dim) */
  int32_t window_left;     /* -1: unbounded. causal = (-1, 0) */
  int32_t window_right;    /* -1: unbounded */
} sqa_attention_spec;

typedef struct {
  sqa_attention_spec spec;
  sqa_dtype dtype;
  sqa_device device;
  void* stream;
  int64_t batch;
  int64_t seqlen_q;            /* varlen: max_seqlen_q */
  int64_t seqlen_k;            /* varlen: max_seqlen_k */
  const int32_t* cu_seqlens_q; /* NULL for dense batches */
  const int32_t* cu_seqlens_k;
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;           /* may be NULL in the forward */
  int64_t q_strides[3]; /* batch, row, head; all zero = contiguous */
  int64_t k_strides[3];
  int64_t v_strides[3];
  int64_t out_strides[3];
} sqa_attention_args;

typedef struct {
  sqa_attention_args forward; /* q, k, v, out, lse of the forward; lse required */
  const void* dout;
  void* dq;
  void* dk;
  void* dv;
  int64_t dout_strides[3];
  int64_t dq_strides[3];
  int64_t dk_strides[3];
  int64_t dv_strides[3];
  int32_t deterministic;
} sqa_attention_backward_args;

SQA_API const char* sqa_version(void);
/* The git commit this library was built from ("-dirty" with local changes), or "unknown": what
   benchmark records name as the code they measured. */
SQA_API const char* sqa_build_commit(void);
SQA_API const char* sqa_last_error(void);
SQA_API int sqa_cuda_available(void);
/* The CUDA implementation a call with these args runs on: "cudnn" or "own" ("none" without
   CUDA, NULL on an error, see sqa_last_error). backward != 0 asks about the backward. The
   choice: SQA_CUDA_BACKEND=own|cudnn|auto in the environment; auto (default) takes cuDNN's
   fused attention where it is faster (head_dim >= 64 prefill; for the forward at 64 and 128
   only with many query tiles, since sqa's kernels win on small grids). */
SQA_API const char* sqa_cuda_attention_backend(const sqa_attention_args* args, int32_t backward);
SQA_API const char* sqa_cpu_simd_path(void);

/* Head counts of a preset (mha gqa mqa sqa ssqa xsqa xsmqa lsqa rsqa) for H baseline heads. */
SQA_API sqa_status sqa_preset(const char* name, int32_t num_baseline_heads,
                              int32_t* num_query_heads, int32_t* num_kv_heads);
SQA_API sqa_status sqa_validate_spec(const sqa_attention_spec* spec);

/* Fastest backend for args->device (on the CPU, dtype f64 runs the float64 reference). */
SQA_API sqa_status sqa_attention_forward(const sqa_attention_args* args);
SQA_API sqa_status sqa_attention_backward(const sqa_attention_backward_args* args);
/* CPU float64 oracle (dtype f32, bf16 or f64; host memory only). */
SQA_API sqa_status sqa_attention_forward_reference(const sqa_attention_args* args);
SQA_API sqa_status sqa_attention_backward_reference(const sqa_attention_backward_args* args);

/* FLOPs (multiply-add = 2) of the attention core; exact mask area for windows. An invalid spec
 * returns a negative value and sets sqa_last_error(). */
SQA_API double sqa_attention_forward_flops(const sqa_attention_spec* spec, int64_t batch,
                                           int64_t seqlen_q, int64_t seqlen_k);
SQA_API double sqa_attention_backward_flops(const sqa_attention_spec* spec, int64_t batch,
                                            int64_t seqlen_q, int64_t seqlen_k);

#ifdef __cplusplus
}
#endif

#endif /* SQA_SQA_H_ */
