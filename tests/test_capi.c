/* The C API seen from plain C: include/sqa/sqa.h must compile as C, libsqa.so must link
 * without C++, the fast path must match the float64 reference through the API (dense, varlen,
 * strided views), and a bad spec must fail with a status and a message that names the value
 * and the rule. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sqa/sqa.h"

static int failures = 0;

#define CHECK(cond, ...)                                                       \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                            \
      fprintf(stderr, "\n");                                                   \
      ++failures;                                                              \
    }                                                                          \
  } while (0)

/* Fixed-seed generator so failures reproduce; values in [-1, 1), never all zero. */
static uint64_t rng_state = 0x5eed5eedULL;
static float next_uniform(void) {
  rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
  return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float* random_buffer(size_t n) {
  float* p = (float*)malloc(n * sizeof(float));
  for (size_t i = 0; i < n; ++i) p[i] = next_uniform();
  return p;
}

static float* poisoned_buffer(size_t n) {
  float* p = (float*)malloc(n * sizeof(float));
  for (size_t i = 0; i < n; ++i) p[i] = NAN;
  return p;
}

/* Relative error in the max norm: max |a - b| / max(max |b|, tiny). NaN anywhere fails. */
static double relative_error(const float* a, const float* b, size_t n) {
  double diff = 0.0, scale = 1e-30;
  for (size_t i = 0; i < n; ++i) {
    if (isnan(a[i]) || isnan(b[i])) return INFINITY;
    const double d = fabs((double)a[i] - (double)b[i]);
    if (d > diff) diff = d;
    if (fabs((double)b[i]) > scale) scale = fabs((double)b[i]);
  }
  return diff / scale;
}

/* Forward and backward of one spec, fast path vs reference, all through the C API. q, k and v
 * are strided views into one fused (B, N, H_q + 2 H_kv, d) buffer when `fused` is set. */
static void check_dense(int32_t hq, int32_t hkv, int32_t d, int64_t batch, int64_t nq, int64_t nk,
                        int32_t left, int32_t right, int fused) {
  const int64_t ha = hq > hkv ? hq : hkv;
  const size_t nout = (size_t)(batch * nq * ha * d), nlse = (size_t)(batch * ha * nq);
  const int64_t fused_heads = hq + 2 * hkv;
  float *q, *k, *v, *qkv = NULL;
  sqa_attention_args args;
  memset(&args, 0, sizeof(args));
  if (fused) {
    /* Self-attention only: one row count for q and k/v. */
    nk = nq;
    qkv = random_buffer((size_t)(batch * nq * fused_heads * d));
    q = qkv;
    k = qkv + hq * d;
    v = qkv + (hq + hkv) * d;
    const int64_t strides[3] = {nq * fused_heads * d, fused_heads * d, d};
    memcpy(args.q_strides, strides, sizeof(strides));
    memcpy(args.k_strides, strides, sizeof(strides));
    memcpy(args.v_strides, strides, sizeof(strides));
  } else {
    q = random_buffer((size_t)(batch * nq * hq * d));
    k = random_buffer((size_t)(batch * nk * hkv * d));
    v = random_buffer((size_t)(batch * nk * hkv * d));
  }
  const size_t nq_elems = (size_t)(batch * nq * hq * d), nk_elems = (size_t)(batch * nk * hkv * d);
  float* out = poisoned_buffer(nout);
  float* out_ref = poisoned_buffer(nout);
  float* lse = poisoned_buffer(nlse);
  float* lse_ref = poisoned_buffer(nlse);

  args.spec.num_query_heads = hq;
  args.spec.num_kv_heads = hkv;
  args.spec.head_dim = d;
  args.spec.window_left = left;
  args.spec.window_right = right;
  args.dtype = SQA_F32;
  args.device = SQA_DEVICE_CPU;
  args.batch = batch;
  args.seqlen_q = nq;
  args.seqlen_k = nk;
  args.q = q;
  args.k = k;
  args.v = v;

  args.out = out;
  args.lse = lse;
  sqa_status st = sqa_attention_forward(&args);
  CHECK(st == SQA_OK, "forward failed: %s", sqa_last_error());
  args.out = out_ref;
  args.lse = lse_ref;
  st = sqa_attention_forward_reference(&args);
  CHECK(st == SQA_OK, "reference forward failed: %s", sqa_last_error());
  double err = relative_error(out, out_ref, nout);
  CHECK(err < 2e-5, "forward out rel err %g (hq %d hkv %d d %d window %d,%d fused %d)", err, hq,
        hkv, d, left, right, fused);
  err = relative_error(lse, lse_ref, nlse);
  CHECK(err < 2e-5, "forward lse rel err %g", err);

  /* Backward from the reference forward's out/lse, with fresh dout. */
  float* dout = random_buffer(nout);
  float *dq = poisoned_buffer(nq_elems), *dk = poisoned_buffer(nk_elems),
        *dv = poisoned_buffer(nk_elems);
  float *dq_ref = poisoned_buffer(nq_elems), *dk_ref = poisoned_buffer(nk_elems),
        *dv_ref = poisoned_buffer(nk_elems);
  sqa_attention_backward_args bwd;
  memset(&bwd, 0, sizeof(bwd));
  bwd.forward = args;
  bwd.dout = dout;
  /* Gradients are contiguous even when q/k/v are fused views. */
  const int64_t dq_strides[3] = {nq * hq * d, hq * d, d};
  const int64_t dk_strides[3] = {nk * hkv * d, hkv * d, d};
  memcpy(bwd.dq_strides, dq_strides, sizeof(dq_strides));
  memcpy(bwd.dk_strides, dk_strides, sizeof(dk_strides));
  memcpy(bwd.dv_strides, dk_strides, sizeof(dk_strides));
  bwd.dq = dq;
  bwd.dk = dk;
  bwd.dv = dv;
  st = sqa_attention_backward(&bwd);
  CHECK(st == SQA_OK, "backward failed: %s", sqa_last_error());
  bwd.dq = dq_ref;
  bwd.dk = dk_ref;
  bwd.dv = dv_ref;
  st = sqa_attention_backward_reference(&bwd);
  CHECK(st == SQA_OK, "reference backward failed: %s", sqa_last_error());
  err = relative_error(dq, dq_ref, nq_elems);
  CHECK(err < 1e-4, "dq rel err %g", err);
  err = relative_error(dk, dk_ref, nk_elems);
  CHECK(err < 1e-4, "dk rel err %g", err);
  err = relative_error(dv, dv_ref, nk_elems);
  CHECK(err < 1e-4, "dv rel err %g", err);

  if (fused) {
    free(qkv);
  } else {
    free(q);
    free(k);
    free(v);
  }
  free(out);
  free(out_ref);
  free(lse);
  free(lse_ref);
  free(dout);
  free(dq);
  free(dk);
  free(dv);
  free(dq_ref);
  free(dk_ref);
  free(dv_ref);
}

/* Two sequences of different lengths packed with cu_seqlens, N_q != N_k in each. */
static void check_varlen(void) {
  const int32_t hq = 2, hkv = 4, d = 16; /* rSQA */
  const int32_t cu_q[3] = {0, 3, 8};
  const int32_t cu_k[3] = {0, 6, 13};
  const int64_t total_q = 8, total_k = 13, ha = 4;
  float* q = random_buffer((size_t)(total_q * hq * d));
  float* k = random_buffer((size_t)(total_k * hkv * d));
  float* v = random_buffer((size_t)(total_k * hkv * d));
  const size_t nout = (size_t)(total_q * ha * d), nlse = (size_t)(ha * total_q);
  float *out = poisoned_buffer(nout), *out_ref = poisoned_buffer(nout);
  float *lse = poisoned_buffer(nlse), *lse_ref = poisoned_buffer(nlse);
  sqa_attention_args args;
  memset(&args, 0, sizeof(args));
  args.spec.num_query_heads = hq;
  args.spec.num_kv_heads = hkv;
  args.spec.head_dim = d;
  args.spec.window_left = -1;
  args.spec.window_right = 0;
  args.batch = 2;
  args.seqlen_q = 5;
  args.seqlen_k = 7;
  args.cu_seqlens_q = cu_q;
  args.cu_seqlens_k = cu_k;
  args.q = q;
  args.k = k;
  args.v = v;
  args.out = out;
  args.lse = lse;
  CHECK(sqa_attention_forward(&args) == SQA_OK, "varlen forward: %s", sqa_last_error());
  args.out = out_ref;
  args.lse = lse_ref;
  CHECK(sqa_attention_forward_reference(&args) == SQA_OK, "varlen reference: %s", sqa_last_error());
  double err = relative_error(out, out_ref, nout);
  CHECK(err < 2e-5, "varlen out rel err %g", err);
  err = relative_error(lse, lse_ref, nlse);
  CHECK(err < 2e-5, "varlen lse rel err %g", err);

  /* A max_seqlen smaller than a packed sequence is a user error naming the sequence. */
  args.seqlen_q = 4;
  CHECK(sqa_attention_forward(&args) == SQA_ERROR_INVALID_ARGUMENT, "short max_seqlen accepted");
  CHECK(strstr(sqa_last_error(), "max_seqlen") != NULL, "message: %s", sqa_last_error());
  free(q);
  free(k);
  free(v);
  free(out);
  free(out_ref);
  free(lse);
  free(lse_ref);
}

static void expect_error(const sqa_attention_args* args, sqa_status want, const char* needle1,
                         const char* needle2) {
  const sqa_status st = sqa_attention_forward(args);
  CHECK(st == want, "status %d, want %d (%s)", (int)st, (int)want, sqa_last_error());
  CHECK(strstr(sqa_last_error(), needle1) != NULL, "message '%s' lacks '%s'", sqa_last_error(),
        needle1);
  if (needle2) {
    CHECK(strstr(sqa_last_error(), needle2) != NULL, "message '%s' lacks '%s'", sqa_last_error(),
          needle2);
  }
}

static void check_errors(void) {
  float buf[6 * 8 * 4];
  for (int i = 0; i < 6 * 8 * 4; ++i) buf[i] = next_uniform();
  sqa_attention_args args;
  memset(&args, 0, sizeof(args));
  args.spec.num_query_heads = 6;
  args.spec.num_kv_heads = 4;
  args.spec.head_dim = 8;
  args.spec.window_left = -1;
  args.spec.window_right = -1;
  args.batch = 1;
  args.seqlen_q = 1;
  args.seqlen_k = 1;
  args.q = args.k = args.v = buf;
  args.out = buf;
  expect_error(&args, SQA_ERROR_INVALID_ARGUMENT, "num_query_heads (6)", "num_kv_heads (4)");
  CHECK(sqa_validate_spec(&args.spec) == SQA_ERROR_INVALID_ARGUMENT, "validate accepted 6/4");

  args.spec.num_query_heads = 4;
  args.spec.head_dim = 300;
  expect_error(&args, SQA_ERROR_INVALID_ARGUMENT, "head_dim (300)", "[1, 256]");

  args.spec.head_dim = 8;
  args.spec.window_left = -3;
  expect_error(&args, SQA_ERROR_INVALID_ARGUMENT, "window left (-3)", NULL);

  args.spec.window_left = -1;
  args.seqlen_k = 0;
  expect_error(&args, SQA_ERROR_INVALID_ARGUMENT, "seqlen_k (0)", NULL);

  args.seqlen_k = 1;
  args.v = NULL;
  expect_error(&args, SQA_ERROR_INVALID_ARGUMENT, "non-null", NULL);
  args.v = buf;

  /* Strides that split a head are rejected: the elements of one head must be contiguous. */
  args.q_strides[0] = 32;
  args.q_strides[1] = 4;
  args.q_strides[2] = 4;
  expect_error(&args, SQA_ERROR_INVALID_ARGUMENT, "q strides", "head_dim (8)");
  memset(args.q_strides, 0, sizeof(args.q_strides));

  args.dtype = SQA_F16;
  expect_error(&args, SQA_ERROR_UNSUPPORTED, "f16", NULL);
  args.dtype = SQA_F32;

  if (!sqa_cuda_available()) {
    args.device = SQA_DEVICE_CUDA;
    expect_error(&args, SQA_ERROR_UNSUPPORTED, "CUDA", NULL);
    args.device = SQA_DEVICE_CPU;
  }

  CHECK(sqa_attention_forward(NULL) == SQA_ERROR_INVALID_ARGUMENT, "NULL args accepted");
  CHECK(strstr(sqa_last_error(), "non-null") != NULL, "message: %s", sqa_last_error());

  /* A good call after the failures succeeds. */
  args.spec.num_query_heads = 4;
  args.spec.num_kv_heads = 4;
  args.spec.head_dim = 8;
  float out[4 * 8];
  args.out = out;
  CHECK(sqa_attention_forward(&args) == SQA_OK, "good call failed: %s", sqa_last_error());
}

static void check_presets_and_flops(void) {
  int32_t hq = 0, hkv = 0;
  CHECK(sqa_preset("sqa", 16, &hq, &hkv) == SQA_OK && hq == 8 && hkv == 4, "sqa 16 -> %d/%d", hq,
        hkv);
  CHECK(sqa_preset("rsqa", 16, &hq, &hkv) == SQA_OK && hq == 4 && hkv == 8, "rsqa 16 -> %d/%d", hq,
        hkv);
  CHECK(sqa_preset("nope", 16, &hq, &hkv) == SQA_ERROR_INVALID_ARGUMENT, "unknown preset");
  CHECK(strstr(sqa_last_error(), "'nope'") != NULL, "message: %s", sqa_last_error());
  CHECK(sqa_preset("sqa", 6, &hq, &hkv) == SQA_ERROR_INVALID_ARGUMENT, "sqa with H=6");
  CHECK(strstr(sqa_last_error(), "(6)") != NULL, "message: %s", sqa_last_error());

  sqa_attention_spec spec = {8, 4, 64, 0.0f, -1, -1};
  /* 4 * N_q * N_k * H_attn * d multiply-adds x2 per pair of matmuls. */
  const double flops = sqa_attention_forward_flops(&spec, 2, 128, 256);
  CHECK(fabs(flops - 4.0 * 2 * 128 * 256 * 8 * 64) < 1.0, "forward flops %g", flops);
  const double bflops = sqa_attention_backward_flops(&spec, 2, 128, 256);
  CHECK(fabs(bflops - 2.5 * flops) < 1.0, "backward flops %g", bflops);
  spec.num_query_heads = 3;
  CHECK(sqa_attention_forward_flops(&spec, 1, 1, 1) < 0.0, "flops of a bad spec");
  CHECK(strstr(sqa_last_error(), "num_query_heads (3)") != NULL, "message: %s", sqa_last_error());
}

int main(void) {
  CHECK(strlen(sqa_version()) > 0, "empty version");
  CHECK(strlen(sqa_build_commit()) > 0, "empty build commit");
  CHECK(strlen(sqa_cpu_simd_path()) > 0, "empty SIMD path");
  /* MHA, GQA, MQA, SQA, rSQA; none, causal, sliding window; N_q != N_k; a fused QKV view. */
  check_dense(4, 4, 8, 2, 5, 7, -1, -1, 0);
  check_dense(4, 2, 16, 1, 9, 9, -1, 0, 0);
  check_dense(4, 1, 32, 2, 3, 11, 2, 0, 0);
  check_dense(2, 4, 8, 1, 6, 6, 3, 1, 0);
  check_dense(8, 4, 64, 1, 1, 17, -1, 0, 0);
  check_dense(4, 2, 16, 2, 7, 7, -1, 0, 1);
  check_dense(2, 4, 8, 1, 5, 5, -1, -1, 1);
  check_varlen();
  check_errors();
  check_presets_and_flops();
  if (failures) {
    fprintf(stderr, "test_capi: %d check(s) failed\n", failures);
    return 1;
  }
  printf("test_capi: all checks passed\n");
  return 0;
}
