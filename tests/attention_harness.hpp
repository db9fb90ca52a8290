// Op-level attention harness, in the spirit of ggml's test-backend-ops: draw random cases over
// the spec space, fill host buffers with fresh random values, poison every output with NaN, run
// a backend through a callable that receives HOST pointers, and compare with the float64
// reference (cpu::attention_*_reference) run on exactly the same (rounded) values.
//
// A backend plugs in through ForwardFn / BackwardFn. A GPU backend copies the host buffers to
// the device, runs, and copies the results back into the same host pointers (the strides are
// element strides, so a device copy with the same extent keeps them valid). The case generator
// is restricted through CaseLimits (e.g. head dims 16..256 in powers of two, bf16/f16 only).
//
// Error metric: relative error ||x - ref|| / ||ref|| per tensor, tolerance by dtype. The lse is
// compared where the reference is finite (rows with no visible key must give -inf), every output
// element must be finite (a NaN left from the poison means an element was never written), and
// the padding between rows/heads of strided outputs must stay untouched.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "sqa/attention.hpp"
#include "sqa/dtype.hpp"
#include "sqa/spec.hpp"

namespace sqa::testing {

// SQA_TEST_SCALE=small shrinks sweeps (the sanitizer build in CI uses it).
inline bool small_scale() {
  const char* s = std::getenv("SQA_TEST_SCALE");
  return s != nullptr && std::string(s) == "small";
}

// ---- f16 conversions (only the harness needs them: the CPU kernels do not take f16) ----------

inline uint16_t float_to_f16_bits(float x) {
  uint32_t f;
  std::memcpy(&f, &x, 4);
  const uint32_t sign = (f >> 16) & 0x8000u;
  const uint32_t absf = f & 0x7fffffffu;
  if (absf > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
  if (absf >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (absf < 0x38800000u) {
    // Subnormal half: round abs value to a multiple of 2^-24 (ties to even by nearbyint).
    float a;
    std::memcpy(&a, &absf, 4);
    const float q = std::nearbyint(a * 16777216.0f);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(q));
  }
  const uint32_t rounded = absf + 0x0fffu + ((absf >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
}

inline float f16_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  float out;
  if (exp == 0) {
    out = std::ldexp(static_cast<float>(man), -24);
    if (sign) out = -out;
    return out;
  }
  const uint32_t bits =
      exp == 31 ? (sign | 0x7f800000u | (man << 13)) : (sign | ((exp + 112u) << 23) | (man << 13));
  std::memcpy(&out, &bits, 4);
  return out;
}

// A host tensor in one dtype, stored as raw bytes.
struct HostTensor {
  DType dtype = DType::f32;
  std::vector<unsigned char> bytes;

  void resize(DType t, int64_t n) {
    dtype = t;
    bytes.assign(static_cast<size_t>(n) * static_cast<size_t>(dtype_size(t)), 0);
  }
  int64_t size() const { return static_cast<int64_t>(bytes.size()) / dtype_size(dtype); }
  void* data() { return bytes.data(); }
  double get(int64_t i) const {
    switch (dtype) {
      case DType::f32:
        return reinterpret_cast<const float*>(bytes.data())[i];
      case DType::f64:
        return reinterpret_cast<const double*>(bytes.data())[i];
      case DType::bf16:
        return bf16_to_float(reinterpret_cast<const bf16*>(bytes.data())[i]);
      case DType::f16:
        return f16_bits_to_float(reinterpret_cast<const uint16_t*>(bytes.data())[i]);
    }
    return 0.0;
  }
  // Stores x rounded to the dtype and returns the value actually stored.
  double set(int64_t i, double x) {
    switch (dtype) {
      case DType::f32:
        reinterpret_cast<float*>(bytes.data())[i] = static_cast<float>(x);
        break;
      case DType::f64:
        reinterpret_cast<double*>(bytes.data())[i] = x;
        break;
      case DType::bf16:
        reinterpret_cast<bf16*>(bytes.data())[i] = float_to_bf16(static_cast<float>(x));
        break;
      case DType::f16:
        reinterpret_cast<uint16_t*>(bytes.data())[i] = float_to_f16_bits(static_cast<float>(x));
        break;
    }
    return get(i);
  }
  void fill_nan() {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (int64_t i = 0; i < size(); ++i) set(i, nan);
  }
};

// ---- cases ------------------------------------------------------------------------------------

struct HarnessCase {
  AttentionSpec spec;
  DType dtype = DType::f32;
  int64_t batch = 1;
  int64_t seqlen_q = 1;  // dense length, or max over the sequences when varlen
  int64_t seqlen_k = 1;
  bool varlen = false;
  std::vector<int32_t> lengths_q, lengths_k;  // per sequence, varlen only
  int padding = 0;      // extra elements after each head and row (strided views); 0 = contiguous
  double q_gain = 1.0;  // >1 makes the softmax peaky (exercises the online rescaling)
  uint64_t seed = 0;

  std::string describe() const {
    std::ostringstream o;
    o << spec.to_string() << " dtype=" << dtype_name(dtype) << " B=" << batch;
    if (varlen) {
      o << " varlen q=[";
      for (size_t i = 0; i < lengths_q.size(); ++i) o << (i ? "," : "") << lengths_q[i];
      o << "] k=[";
      for (size_t i = 0; i < lengths_k.size(); ++i) o << (i ? "," : "") << lengths_k[i];
      o << "]";
    } else {
      o << " N_q=" << seqlen_q << " N_k=" << seqlen_k;
    }
    if (padding) o << " padding=" << padding;
    if (q_gain != 1.0) o << " q_gain=" << q_gain;
    o << " seed=" << seed;
    return o.str();
  }
  // Work of one reference forward, in (query, key, head, dim) multiply-adds.
  double work() const {
    double pairs = 0;
    if (varlen) {
      for (size_t b = 0; b < lengths_q.size(); ++b)
        pairs += static_cast<double>(visible_pairs(spec.window, lengths_q[b], lengths_k[b]));
    } else {
      pairs = static_cast<double>(batch) *
              static_cast<double>(visible_pairs(spec.window, seqlen_q, seqlen_k));
    }
    return pairs * spec.heads.num_attention_heads() * spec.head_dim;
  }
};

// What a backend supports; the generator draws only inside these limits.
struct CaseLimits {
  std::vector<int> head_dims;  // empty: any in [8, 256]
  std::vector<DType> dtypes = {DType::f32, DType::bf16};
  int64_t max_seqlen = 2048;
  bool allow_varlen = true;
  bool allow_reverse = true;  // rSQA (H_q < H_kv)
  bool allow_padding = true;  // non-contiguous strides
  bool allow_custom_scale = true;
  // Upper bound on HarnessCase::work(), so the float64 reference stays quick. 0 = by scale.
  double max_work = 0;
};

inline double default_max_work() {
  return small_scale() ? 1.5e6 : 2.5e7;
}

namespace detail {

inline int64_t log_uniform(std::mt19937_64& rng, int64_t lo, int64_t hi) {
  std::uniform_real_distribution<double> u(std::log(static_cast<double>(lo)),
                                           std::log(static_cast<double>(hi) + 1.0));
  return std::clamp<int64_t>(static_cast<int64_t>(std::exp(u(rng))), lo, hi);
}

template <typename T>
const T& pick(std::mt19937_64& rng, const std::vector<T>& v) {
  return v[std::uniform_int_distribution<size_t>(0, v.size() - 1)(rng)];
}

}  // namespace detail

// Draws `count` random cases. The first cases are fixed corners (decode, N_q != N_k, every
// preset) so that even a small sweep covers them; the rest are random.
inline std::vector<HarnessCase> generate_cases(const CaseLimits& limits, int count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const double max_work = limits.max_work > 0 ? limits.max_work : default_max_work();
  const std::vector<Variant>& variants = all_variants();
  std::vector<HarnessCase> cases;
  int attempts = 0;
  while (static_cast<int>(cases.size()) < count && attempts < count * 50) {
    ++attempts;
    const int index = static_cast<int>(cases.size());
    HarnessCase c;
    c.seed = rng();
    // Heads: presets (cycled so every preset appears early) or explicit ratios.
    HeadLayout heads;
    if (index < static_cast<int>(variants.size()) || rng() % 3 != 0) {
      const Variant v = variants[static_cast<size_t>(index) % variants.size()];
      const int h = detail::pick(rng, std::vector<int>{4, 8, 16});
      heads = preset_layout(v, h);
      c.spec.num_baseline_heads = h;
    } else if (limits.allow_reverse && rng() % 4 == 0) {
      const int hq = detail::pick(rng, std::vector<int>{1, 2, 3});
      heads = {hq, hq * detail::pick(rng, std::vector<int>{2, 3, 4})};
    } else {
      const int hkv = detail::pick(rng, std::vector<int>{1, 2, 3, 4});
      heads = {hkv * detail::pick(rng, std::vector<int>{1, 2, 3, 4, 6}), hkv};
    }
    if (!limits.allow_reverse && heads.is_reverse()) continue;
    c.spec.heads = heads;
    c.spec.head_dim = limits.head_dims.empty() ? static_cast<int>(detail::log_uniform(rng, 8, 256))
                                               : detail::pick(rng, limits.head_dims);
    if (limits.allow_custom_scale && rng() % 4 == 0) {
      c.spec.softmax_scale = std::uniform_real_distribution<float>(0.05f, 0.5f)(rng);
    }
    switch (rng() % 6) {
      case 0:
        c.spec.window = Window::none();
        break;
      case 1:
        c.spec.window = Window::causal();
        break;
      case 2:
        c.spec.window = Window::sliding(static_cast<int>(detail::log_uniform(rng, 1, 300)));
        break;
      case 3:
        c.spec.window = {static_cast<int>(detail::log_uniform(rng, 1, 300)) - 1,
                         static_cast<int>(detail::log_uniform(rng, 1, 300)) - 1};
        break;
      case 4:
        c.spec.window = {-1, static_cast<int>(detail::log_uniform(rng, 1, 100))};
        break;
      default:
        c.spec.window = {static_cast<int>(detail::log_uniform(rng, 1, 100)), -1};
        break;
    }
    c.dtype = detail::pick(rng, limits.dtypes);
    c.q_gain = rng() % 3 == 0 ? 4.0 : 1.0;
    c.padding = limits.allow_padding && rng() % 4 == 0 ? static_cast<int>(1 + rng() % 5) : 0;
    // Shapes: the first corners are decode (N_q = 1) and cross attention (N_q != N_k).
    const int64_t max_n = limits.max_seqlen;
    c.varlen = limits.allow_varlen && index >= 2 && rng() % 3 == 0;
    if (c.varlen) {
      c.batch = 1 + static_cast<int64_t>(rng() % 4);
      for (int64_t b = 0; b < c.batch; ++b) {
        // Empty sequences are legal in a packed batch.
        const bool empty = rng() % 8 == 0;
        c.lengths_q.push_back(empty ? 0 : static_cast<int32_t>(detail::log_uniform(rng, 1, max_n)));
        c.lengths_k.push_back(rng() % 2 ? c.lengths_q.back()
                                        : static_cast<int32_t>(detail::log_uniform(rng, 1, max_n)));
      }
      c.seqlen_q = std::max<int64_t>(1, *std::max_element(c.lengths_q.begin(), c.lengths_q.end()));
      c.seqlen_k = std::max<int64_t>(1, *std::max_element(c.lengths_k.begin(), c.lengths_k.end()));
    } else {
      c.batch = 1 + static_cast<int64_t>(rng() % 3);
      if (index == 0) {
        c.seqlen_q = 1;
        c.seqlen_k = detail::log_uniform(rng, 64, max_n);
      } else if (index == 1) {
        c.seqlen_q = detail::log_uniform(rng, 2, max_n / 2);
        c.seqlen_k = std::min<int64_t>(max_n, c.seqlen_q * 2 + 7);
      } else {
        c.seqlen_q = detail::log_uniform(rng, 1, max_n);
        c.seqlen_k = rng() % 2 ? c.seqlen_q : detail::log_uniform(rng, 1, max_n);
      }
    }
    // Shrink to the work budget: batch first, then the longer sequence, then head_dim.
    while (c.work() > max_work) {
      if (!c.varlen && c.batch > 1) {
        --c.batch;
      } else if (!c.varlen && std::max(c.seqlen_q, c.seqlen_k) > 16) {
        if (c.seqlen_q >= c.seqlen_k)
          c.seqlen_q = (c.seqlen_q + 1) / 2;
        else
          c.seqlen_k = (c.seqlen_k + 1) / 2;
      } else if (c.varlen && c.batch > 1) {
        --c.batch;
        c.lengths_q.pop_back();
        c.lengths_k.pop_back();
      } else if (c.varlen && std::max(c.lengths_q[0], c.lengths_k[0]) > 16) {
        int32_t& longer = c.lengths_q[0] >= c.lengths_k[0] ? c.lengths_q[0] : c.lengths_k[0];
        longer = (longer + 1) / 2;
      } else {
        break;
      }
    }
    if (c.work() > max_work) continue;
    if (c.varlen) {
      c.seqlen_q = std::max<int64_t>(1, *std::max_element(c.lengths_q.begin(), c.lengths_q.end()));
      c.seqlen_k = std::max<int64_t>(1, *std::max_element(c.lengths_k.begin(), c.lengths_k.end()));
    }
    c.spec.validate();
    cases.push_back(c);
  }
  return cases;
}

// ---- buffers for one case ---------------------------------------------------------------------

// Every tensor of one case: backend copies in the case dtype, reference copies in f64 holding the
// same (rounded) values, plus the reference results.
struct CaseBuffers {
  HarnessCase c;
  std::vector<int32_t> cu_q, cu_k;
  int64_t rows_q = 0, rows_k = 0;             // rows per batch entry (dense) or total rows (varlen)
  int64_t real_rows_q = 0, real_rows_k = 0;   // as rows_*, but 0 for an all-empty varlen batch
  int64_t batch_dim = 1;                      // leading dim: batch when dense, 1 when varlen
  HostTensor q, k, v, out, dout, dq, dk, dv;  // backend dtype
  HostTensor q64, k64, v64, out64, dout64, dq64, dk64, dv64;  // reference, f64
  std::vector<float> lse, lse_ref;
  TensorStrides q_st, kv_st, out_st;  // the same strides serve the gradients
  int64_t lse_count = 0;

  explicit CaseBuffers(const HarnessCase& hc) : c(hc) {
    const int d = c.spec.head_dim;
    const int hq = c.spec.heads.num_query_heads, hkv = c.spec.heads.num_kv_heads;
    const int ha = c.spec.heads.num_attention_heads();
    if (c.varlen) {
      cu_q.push_back(0);
      cu_k.push_back(0);
      for (int64_t b = 0; b < c.batch; ++b) {
        cu_q.push_back(cu_q.back() + c.lengths_q[static_cast<size_t>(b)]);
        cu_k.push_back(cu_k.back() + c.lengths_k[static_cast<size_t>(b)]);
      }
      real_rows_q = cu_q.back();
      real_rows_k = cu_k.back();
      rows_q = std::max<int64_t>(1, real_rows_q);  // keep buffers non-empty (non-null pointers)
      rows_k = std::max<int64_t>(1, real_rows_k);
      batch_dim = 1;
      lse_count = static_cast<int64_t>(ha) * cu_q.back();
    } else {
      rows_q = real_rows_q = c.seqlen_q;
      rows_k = real_rows_k = c.seqlen_k;
      batch_dim = c.batch;
      lse_count = c.batch * ha * c.seqlen_q;
    }
    auto strides = [&](int64_t rows, int heads) {
      TensorStrides s;
      s.head = d + c.padding;
      s.row = heads * s.head + c.padding;
      s.batch = c.varlen ? 0 : rows * s.row + c.padding;
      return s;
    };
    q_st = strides(rows_q, hq);
    kv_st = strides(rows_k, hkv);
    out_st = strides(rows_q, ha);
    const int64_t nq = c.varlen ? rows_q * q_st.row : batch_dim * q_st.batch;
    const int64_t nk = c.varlen ? rows_k * kv_st.row : batch_dim * kv_st.batch;
    const int64_t no = c.varlen ? rows_q * out_st.row : batch_dim * out_st.batch;

    std::mt19937_64 rng(c.seed);
    std::normal_distribution<double> normal(0.0, 1.0);
    auto fill = [&](HostTensor& t, HostTensor& t64, int64_t n, double gain) {
      t.resize(c.dtype, n);
      t64.resize(DType::f64, n);
      for (int64_t i = 0; i < n; ++i) t64.set(i, t.set(i, gain * normal(rng)));
    };
    fill(q, q64, nq, c.q_gain);
    fill(k, k64, nk, 1.0);
    fill(v, v64, nk, 1.0);
    fill(dout, dout64, no, 1.0);
    out.resize(c.dtype, no);
    out64.resize(DType::f64, no);
    dq.resize(c.dtype, nq);
    dk.resize(c.dtype, nk);
    dv.resize(c.dtype, nk);
    dq64.resize(DType::f64, nq);
    dk64.resize(DType::f64, nk);
    dv64.resize(DType::f64, nk);
    lse.assign(static_cast<size_t>(std::max<int64_t>(1, lse_count)), 0.0f);
    lse_ref = lse;
  }

  AttentionParams params(bool reference) {
    AttentionParams p;
    p.spec = c.spec;
    p.dtype = reference ? DType::f64 : c.dtype;
    p.batch = c.batch;
    p.seqlen_q = c.seqlen_q;
    p.seqlen_k = c.seqlen_k;
    if (c.varlen) {
      p.cu_seqlens_q = cu_q.data();
      p.cu_seqlens_k = cu_k.data();
    }
    p.q = reference ? q64.data() : q.data();
    p.k = reference ? k64.data() : k.data();
    p.v = reference ? v64.data() : v.data();
    p.out = reference ? out64.data() : out.data();
    p.lse = reference ? lse_ref.data() : lse.data();
    p.q_strides = q_st;
    p.k_strides = kv_st;
    p.v_strides = kv_st;
    p.out_strides = out_st;
    return p;
  }

  AttentionBackwardParams backward_params(bool reference) {
    AttentionBackwardParams g;
    g.forward = params(reference);
    g.dout = reference ? dout64.data() : dout.data();
    g.dq = reference ? dq64.data() : dq.data();
    g.dk = reference ? dk64.data() : dk.data();
    g.dv = reference ? dv64.data() : dv.data();
    g.dout_strides = out_st;
    g.dq_strides = q_st;
    g.dk_strides = kv_st;
    g.dv_strides = kv_st;
    return g;
  }

  // Element indices that belong to a tensor (not to padding), visiting (row, head, c).
  template <typename Fn>
  void for_each_element(const TensorStrides& st, int64_t rows, int heads, Fn fn) const {
    for (int64_t b = 0; b < batch_dim; ++b)
      for (int64_t r = 0; r < rows; ++r)
        for (int h = 0; h < heads; ++h)
          for (int e = 0; e < c.spec.head_dim; ++e) fn(b * st.batch + r * st.row + h * st.head + e);
  }
};

// ---- comparison -------------------------------------------------------------------------------

struct Tolerances {
  double out, lse, grad;
};
// Defaults by dtype. Inputs are identical for backend and reference, so the error comes from
// fp32 accumulation and from rounding the outputs to the dtype (bf16: 2^-9 relative).
inline Tolerances default_tolerances(DType t) {
  switch (t) {
    case DType::f32:
      return {2e-5, 2e-5, 1e-4};
    case DType::f16:
      return {4e-3, 1e-3, 1e-2};
    case DType::bf16:
      return {1.5e-2, 5e-3, 3e-2};
    case DType::f64:
      return {1e-10, 1e-10, 1e-10};
  }
  return {0, 0, 0};
}

struct CheckResult {
  bool ok = true;
  std::string message;  // the case and every failed check
  double err_out = 0, err_lse = 0, err_dq = 0, err_dk = 0, err_dv = 0;
};

namespace detail {

// Relative error of one tensor over its real elements; also fails for non-finite elements
// (unwritten NaN poison) and for a touched padding element (still NaN poison expected).
inline double compare_tensor(const CaseBuffers& cb, const char* name, const HostTensor& got,
                             const HostTensor& ref, const TensorStrides& st, int64_t rows,
                             int heads, double tol, double floor, CheckResult& r) {
  double diff2 = 0, ref2 = 0;
  int64_t non_finite = 0, first_bad = -1;
  std::vector<char> real(static_cast<size_t>(got.size()), 0);
  cb.for_each_element(st, rows, heads, [&](int64_t i) {
    real[static_cast<size_t>(i)] = 1;
    const double x = got.get(i), y = ref.get(i);
    if (!std::isfinite(x)) {
      if (first_bad < 0) first_bad = i;
      ++non_finite;
      return;
    }
    diff2 += (x - y) * (x - y);
    ref2 += y * y;
  });
  int64_t touched_padding = 0;
  for (int64_t i = 0; i < got.size(); ++i)
    if (!real[static_cast<size_t>(i)] && !std::isnan(got.get(i))) ++touched_padding;
  int64_t count = 0;
  for (char x : real) count += x;
  const double err =
      std::sqrt(diff2) /
      std::max({std::sqrt(ref2), floor * std::sqrt(static_cast<double>(count)), 1e-30});
  std::ostringstream o;
  if (non_finite > 0) {
    o << "\n  " << name << ": " << non_finite << " non-finite elements (unwritten?), first at "
      << first_bad;
  }
  if (touched_padding > 0)
    o << "\n  " << name << ": wrote " << touched_padding << " padding elements";
  if (!(err <= tol)) o << "\n  " << name << ": relative error " << err << " > tolerance " << tol;
  if (!o.str().empty()) {
    r.ok = false;
    r.message += o.str();
  }
  return err;
}

inline void poison_nan(HostTensor& t) {
  t.fill_nan();
}

}  // namespace detail

// Gradients are compared relative to max(||ref||, kGradientFloor * sqrt(n)): a gradient that
// cancels to ~0 (a row with one visible key has dS = P (dP - D) = 0 exactly) is then judged in
// absolute terms instead of as an infinite relative error of rounding noise.
inline constexpr double kGradientFloor = 1e-2;

using ForwardFn = std::function<void(const AttentionParams&)>;
using BackwardFn = std::function<void(const AttentionBackwardParams&)>;

// Runs the backend forward and checks out and lse against the float64 reference.
inline CheckResult check_forward(const HarnessCase& hc, const ForwardFn& backend,
                                 const Tolerances* tolerances = nullptr) {
  CaseBuffers cb(hc);
  const Tolerances tol = tolerances ? *tolerances : default_tolerances(hc.dtype);
  CheckResult r;
  r.message = hc.describe();
  cpu::attention_forward_reference(cb.params(true));
  detail::poison_nan(cb.out);
  std::fill(cb.lse.begin(), cb.lse.end(), std::numeric_limits<float>::quiet_NaN());
  backend(cb.params(false));
  const int ha = hc.spec.heads.num_attention_heads();
  r.err_out = detail::compare_tensor(cb, "out", cb.out, cb.out64, cb.out_st, cb.real_rows_q, ha,
                                     tol.out, 0.0, r);
  double diff2 = 0, ref2 = 0;
  int64_t bad = 0;
  for (int64_t i = 0; i < cb.lse_count; ++i) {
    const double x = cb.lse[static_cast<size_t>(i)], y = cb.lse_ref[static_cast<size_t>(i)];
    if (std::isinf(y)) {
      if (!(std::isinf(x) && x < 0)) ++bad;  // no visible key: lse must be -inf
      continue;
    }
    if (!std::isfinite(x)) {
      ++bad;
      continue;
    }
    diff2 += (x - y) * (x - y);
    ref2 += y * y;
  }
  // lse is O(log N) and can be near 0: normalise by max(||ref||, sqrt(count)).
  r.err_lse =
      std::sqrt(diff2) /
      std::max(std::sqrt(ref2), std::sqrt(static_cast<double>(std::max<int64_t>(1, cb.lse_count))));
  if (bad > 0) {
    r.ok = false;
    r.message +=
        "\n  lse: " + std::to_string(bad) + " entries non-finite or not -inf where expected";
  }
  if (!(r.err_lse <= tol.lse)) {
    r.ok = false;
    r.message += "\n  lse: relative error " + std::to_string(r.err_lse) + " > tolerance " +
                 std::to_string(tol.lse);
  }
  return r;
}

// Runs the backend backward on the reference's out and lse (rounded to the case dtype) and checks
// dQ, dK and dV against the float64 reference backward.
inline CheckResult check_backward(const HarnessCase& hc, const BackwardFn& backend,
                                  const Tolerances* tolerances = nullptr) {
  CaseBuffers cb(hc);
  const Tolerances tol = tolerances ? *tolerances : default_tolerances(hc.dtype);
  CheckResult r;
  r.message = hc.describe();
  cpu::attention_forward_reference(cb.params(true));
  for (int64_t i = 0; i < cb.out.size(); ++i) cb.out.set(i, cb.out64.get(i));
  cb.lse = cb.lse_ref;
  cpu::attention_backward_reference(cb.backward_params(true));
  detail::poison_nan(cb.dq);
  detail::poison_nan(cb.dk);
  detail::poison_nan(cb.dv);
  backend(cb.backward_params(false));
  const int hq = hc.spec.heads.num_query_heads, hkv = hc.spec.heads.num_kv_heads;
  r.err_dq = detail::compare_tensor(cb, "dq", cb.dq, cb.dq64, cb.q_st, cb.real_rows_q, hq, tol.grad,
                                    kGradientFloor, r);
  r.err_dk = detail::compare_tensor(cb, "dk", cb.dk, cb.dk64, cb.kv_st, cb.real_rows_k, hkv,
                                    tol.grad, kGradientFloor, r);
  r.err_dv = detail::compare_tensor(cb, "dv", cb.dv, cb.dv64, cb.kv_st, cb.real_rows_k, hkv,
                                    tol.grad, kGradientFloor, r);
  return r;
}

}  // namespace sqa::testing
