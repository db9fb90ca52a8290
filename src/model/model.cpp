// The CPU transformer: forward, backward and KV-cache decoding over the layer kernels of
// src/nn and the attention kernels of src/attention. Shapes: B batch, T seqlen, BT = B * T
// token rows, d = d_model, dh = head_dim.
//
// Block (pre-norm):  x_mid = x + o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1)))
//                    x_out = x_mid + dropout(ffn(n2)),  n1 = rmsnorm(x), n2 = rmsnorm(x_mid)
// MoE FFN: probs = softmax(router(n2)); each token's top-k experts, weights renormalised to sum
// 1; ffn(n2) = sum_j w_j expert_j(n2). Aux losses (scaled by router_aux_loss_coef):
//   paper:  E * sum_e frac_e * mean_{t chose e} p_te, frac_e = |{t chose e}| / BT, which
//           equals E / BT * sum_t sum_{e chosen by t} p_te (the paper's formula read
//           literally);
//   switch: E * sum_e f_e * P_e, f_e = |{t chose e}| / BT (sums to top_k, as HF's
//           load_balancing_loss_func), P_e = mean_t p_te.
#include "sqa/model.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "model/offsets.hpp"
#include "sqa/attention.hpp"
#include "sqa/error.hpp"
#include "sqa/nn.hpp"

namespace sqa {
namespace {

template <typename Real>
DType dtype_of() {
  return sizeof(Real) == 8 ? DType::f64 : DType::f32;
}

template <typename Real>
void resize(std::vector<Real>& v, int64_t n) {
  v.resize(static_cast<size_t>(n));
}

// Offsets of one FFN (dense, or one expert) in the flat buffer.
using detail::FfnOffsets;
using detail::LayerOffsets;

// Activations of one FFN application (dense: all rows; MoE: one expert's rows).
template <typename Real>
struct FfnActs {
  std::vector<int32_t> rows;  // MoE: token * top_k + slot of each gathered row
  std::vector<Real> in;       // MoE: gathered inputs (n, d); dense uses the norm output
  std::vector<Real> h;        // fc1 output (n, 2 ff) or (n, ff)
  std::vector<Real> a;        // activation output (n, ff)
  std::vector<Real> y;        // fc2 output (n, d)
};

template <typename Real>
struct LayerActs {
  std::vector<Real> xn1, rstd1, q, k, v, att;
  std::vector<float> lse;
  std::vector<Real> x_mid, xn2, rstd2;
  FfnActs<Real> dense;
  std::vector<Real> probs, gate_w;  // MoE: (BT, E), (BT, top_k)
  std::vector<int32_t> sel;         // (BT, top_k)
  std::vector<FfnActs<Real>> experts;
};

uint64_t layer_seed(uint64_t seed, int layer) {
  return nn::mix64(seed ^ nn::mix64(0x5eed0000ULL + static_cast<uint64_t>(layer)));
}

}  // namespace

template <typename Real>
struct Model<Real>::State {
  std::vector<LayerOffsets> layers;
  int64_t embed = 0, final_norm = -1, head_w = 0, head_b = -1;

  int64_t B = 0, T = 0;
  bool training = false, has_targets = false;
  uint64_t dropout_seed = 0;
  double loss_scale = 1.0, ce_weight = 0.0;
  std::vector<int32_t> tokens;
  std::vector<std::vector<Real>> xs;  // L + 1 residual streams (BT, d)
  std::vector<LayerActs<Real>> acts;
  std::vector<Real> xf, rstdf, logits, dlogits;

  // Backward scratch.
  std::vector<Real> dx, dxf, dtmp, dn, datt, dq, dk, dv, dff_h, dff_a, dff_y;

  // Decoding.
  int64_t cache_len = 0, cache_max = 0;
  std::vector<std::vector<Real>> kcache, vcache;
  LayerActs<Real> scratch;
  std::vector<Real> dec_x, dec_tmp, dec_logits, dec_q;
};

template <typename Real>
Model<Real>::Model(const ModelConfig& config)
    : config_(config), params_(parameter_specs(config)), state_(std::make_unique<State>()) {
  config_.validate();
  int64_t total = 0;
  for (const ParamSpec& p : params_) total += p.numel();
  weights_.assign(static_cast<size_t>(total), Real(0));
  grads_.assign(static_cast<size_t>(total), Real(0));
  State& s = *state_;
  detail::ModelOffsets m = detail::model_offsets(config_, params_);
  s.layers = std::move(m.layers);
  s.embed = m.embed;
  s.final_norm = m.final_norm;
  s.head_w = m.head_w;
  s.head_b = m.head_b;
}

template <typename Real>
Model<Real>::~Model() = default;

template <typename Real>
const ParamSpec& Model<Real>::param(const std::string& name) const {
  for (const ParamSpec& p : params_) {
    if (p.name == name) return p;
  }
  throw Error(detail::concat("no parameter named '", name, "' in this model"));
}

template <typename Real>
Real* Model<Real>::weight(const std::string& name) {
  return weights_.data() + param(name).offset;
}

template <typename Real>
void Model<Real>::init_weights(uint64_t seed) {
  for (const ParamSpec& p : params_) {
    Real* w = weights_.data() + p.offset;
    const int64_t n = p.numel();
    // Counter-based: element i of parameter p depends only on (seed, name, i).
    uint64_t name_hash = 1469598103934665603ULL;
    for (char c : p.name)
      name_hash = (name_hash ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
    const uint64_t pseed = nn::mix64(seed ^ name_hash);
    auto uniform = [&](int64_t i, uint64_t stream) {
      const uint64_t r = nn::mix64(pseed ^ nn::mix64(static_cast<uint64_t>(i) * 2 + stream));
      return (static_cast<double>(r >> 11) + 0.5) * 0x1.0p-53;  // (0, 1)
    };
    auto normal = [&](int64_t i) {  // Box-Muller
      return std::sqrt(-2.0 * std::log(uniform(i, 0))) *
             std::cos(6.283185307179586 * uniform(i, 1));
    };
    const bool is_norm = p.name.find("norm.weight") != std::string::npos;
    const bool is_bias = p.name.size() > 5 && p.name.compare(p.name.size() - 5, 5, ".bias") == 0;
    const bool is_embed = p.name == "embed.weight";
    if (is_norm) {
      std::fill(w, w + n, Real(1));
      continue;
    }
    if (config_.init == Init::normal) {
      for (int64_t i = 0; i < n; ++i) {
        w[i] = is_bias ? Real(0) : static_cast<Real>(config_.init_std * normal(i));
      }
      continue;
    }
    if (is_embed) {
      for (int64_t i = 0; i < n; ++i) w[i] = static_cast<Real>(normal(i));  // nn.Embedding
      continue;
    }
    // nn.Linear: weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)). A bias's fan_in is its
    // weight's second dimension.
    int64_t fan_in = 0;
    if (is_bias) {
      fan_in = param(p.name.substr(0, p.name.size() - 5) + ".weight").shape[1];
    } else {
      fan_in = p.shape[1];
    }
    const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
    for (int64_t i = 0; i < n; ++i) w[i] = static_cast<Real>(bound * (2.0 * uniform(i, 0) - 1.0));
  }
}

template <typename Real>
void Model<Real>::zero_grad() {
  std::fill(grads_.begin(), grads_.end(), Real(0));
}

template <typename Real>
const Real* Model<Real>::logits() const {
  return state_->logits.data();
}

// ---------------------------------------------------------------------------------------------
// Shared pieces for training and decoding.

namespace {

template <typename Real>
void ffn_forward(const ModelConfig& c, const Real* W, const FfnOffsets& o, FfnActs<Real>& a,
                 const Real* in, int64_t n, int64_t ff) {
  const int64_t d = c.d_model;
  const bool swiglu = c.activation == Activation::swiglu;
  const int64_t h_dim = swiglu ? 2 * ff : ff;
  resize(a.h, n * h_dim);
  resize(a.a, n * ff);
  resize(a.y, n * d);
  nn::linear_forward(a.h.data(), in, W + o.fc1_w, W + o.fc1_b, n, d, h_dim);
  if (swiglu) {
    nn::swiglu_forward(a.a.data(), a.h.data(), n, ff);
  } else {
    nn::gelu_forward(a.a.data(), a.h.data(), n * ff);
  }
  nn::linear_forward(a.y.data(), a.a.data(), W + o.fc2_w, W + o.fc2_b, n, ff, d);
}

// din (n, d) overwritten. dy (n, d).
template <typename Real>
void ffn_backward(const ModelConfig& c, const Real* W, Real* G, const FfnOffsets& o,
                  const FfnActs<Real>& a, const Real* in, const Real* dy, Real* din, int64_t n,
                  int64_t ff, std::vector<Real>& da, std::vector<Real>& dh) {
  const int64_t d = c.d_model;
  const bool swiglu = c.activation == Activation::swiglu;
  const int64_t h_dim = swiglu ? 2 * ff : ff;
  resize(da, n * ff);
  resize(dh, n * h_dim);
  nn::linear_backward(da.data(), G + o.fc2_w, G + o.fc2_b, dy, a.a.data(), W + o.fc2_w, n, ff, d,
                      false);
  if (swiglu) {
    nn::swiglu_backward(dh.data(), da.data(), a.h.data(), n, ff);
  } else {
    nn::gelu_backward(dh.data(), da.data(), a.h.data(), n * ff);
  }
  nn::linear_backward(din, G + o.fc1_w, G + o.fc1_b, dh.data(), in, W + o.fc1_w, n, d, h_dim,
                      false);
}

// MoE forward over `rows` tokens of xn (rows, d) into out (rows, d). Returns the aux loss.
template <typename Real>
double moe_forward(const ModelConfig& c, const Real* W, const LayerOffsets& lo, LayerActs<Real>& a,
                   const Real* xn, Real* out, int64_t rows) {
  const int64_t d = c.d_model, E = c.num_experts, K = c.top_k;
  resize(a.probs, rows * E);
  resize(a.gate_w, rows * K);
  a.sel.resize(static_cast<size_t>(rows * K));
  nn::linear_forward<Real>(a.probs.data(), xn, W + lo.router, nullptr, rows, d, E);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < rows; ++t) {
    Real* p = a.probs.data() + t * E;
    const Real m = *std::max_element(p, p + E);
    Real sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += (p[e] = std::exp(p[e] - m));
    for (int64_t e = 0; e < E; ++e) p[e] /= sum;
    // Top-k by descending probability; ties go to the lower expert index.
    int32_t* sel = a.sel.data() + t * K;
    Real chosen = 0;
    for (int64_t j = 0; j < K; ++j) {
      int32_t best = -1;
      for (int64_t e = 0; e < E; ++e) {
        bool taken = false;
        for (int64_t i = 0; i < j; ++i) taken = taken || sel[i] == e;
        if (!taken && (best < 0 || p[e] > p[best])) best = static_cast<int32_t>(e);
      }
      sel[j] = best;
      chosen += p[best];
    }
    for (int64_t j = 0; j < K; ++j) a.gate_w[static_cast<size_t>(t * K + j)] = p[sel[j]] / chosen;
  }
  a.experts.resize(static_cast<size_t>(E));
  for (auto& ex : a.experts) ex.rows.clear();
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t j = 0; j < K; ++j) {
      a.experts[static_cast<size_t>(a.sel[static_cast<size_t>(t * K + j)])].rows.push_back(
          static_cast<int32_t>(t * K + j));
    }
  }
  std::fill(out, out + rows * d, Real(0));
  for (int64_t e = 0; e < E; ++e) {
    FfnActs<Real>& ex = a.experts[static_cast<size_t>(e)];
    const int64_t n = static_cast<int64_t>(ex.rows.size());
    resize(ex.in, n * d);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; ++r) {
      const int64_t t = ex.rows[static_cast<size_t>(r)] / K;
      std::copy(xn + t * d, xn + (t + 1) * d, ex.in.data() + r * d);
    }
    ffn_forward(c, W, lo.experts[static_cast<size_t>(e)], ex, ex.in.data(), n, c.expert_ff_dim);
    // A token picks an expert at most once, so the rows of one expert hit distinct tokens.
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; ++r) {
      const int64_t slot = ex.rows[static_cast<size_t>(r)];
      const int64_t t = slot / K;
      const Real w = a.gate_w[static_cast<size_t>(slot)];
      for (int64_t i = 0; i < d; ++i) out[t * d + i] += w * ex.y[static_cast<size_t>(r * d + i)];
    }
  }
  if (c.aux_loss == AuxLoss::none || rows == 0) return 0.0;
  double aux = 0.0;
  if (c.aux_loss == AuxLoss::paper) {
    for (int64_t t = 0; t < rows; ++t) {
      for (int64_t j = 0; j < K; ++j) {
        aux += a.probs[static_cast<size_t>(t * E + a.sel[static_cast<size_t>(t * K + j)])];
      }
    }
    aux *= static_cast<double>(E) / static_cast<double>(rows);
  } else {
    for (int64_t e = 0; e < E; ++e) {
      double pe = 0;
      for (int64_t t = 0; t < rows; ++t) pe += a.probs[static_cast<size_t>(t * E + e)];
      const double fe = static_cast<double>(a.experts[static_cast<size_t>(e)].rows.size()) / rows;
      aux += fe * pe / rows;
    }
    aux *= static_cast<double>(E);
  }
  return c.aux_loss_coef * aux;
}

// MoE backward: dout (rows, d) -> dxn (rows, d) overwritten; router and expert grads
// accumulated. aux_scale multiplies the aux-loss gradient.
template <typename Real>
void moe_backward(const ModelConfig& c, const Real* W, Real* G, const LayerOffsets& lo,
                  LayerActs<Real>& a, const Real* xn, const Real* dout, Real* dxn, int64_t rows,
                  double aux_scale, std::vector<Real>& dy, std::vector<Real>& din,
                  std::vector<Real>& da, std::vector<Real>& dh) {
  const int64_t d = c.d_model, E = c.num_experts, K = c.top_k;
  std::vector<Real> dgate(static_cast<size_t>(rows * K), Real(0));
  std::fill(dxn, dxn + rows * d, Real(0));
  for (int64_t e = 0; e < E; ++e) {
    FfnActs<Real>& ex = a.experts[static_cast<size_t>(e)];
    const int64_t n = static_cast<int64_t>(ex.rows.size());
    resize(dy, n * d);
    resize(din, n * d);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; ++r) {
      const int64_t slot = ex.rows[static_cast<size_t>(r)];
      const int64_t t = slot / K;
      const Real w = a.gate_w[static_cast<size_t>(slot)];
      Real dot = 0;
      for (int64_t i = 0; i < d; ++i) {
        dot += dout[t * d + i] * ex.y[static_cast<size_t>(r * d + i)];
        dy[static_cast<size_t>(r * d + i)] = w * dout[t * d + i];
      }
      dgate[static_cast<size_t>(slot)] = dot;
    }
    ffn_backward(c, W, G, lo.experts[static_cast<size_t>(e)], ex, ex.in.data(), dy.data(),
                 din.data(), n, c.expert_ff_dim, da, dh);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; ++r) {
      const int64_t t = ex.rows[static_cast<size_t>(r)] / K;
      for (int64_t i = 0; i < d; ++i) dxn[t * d + i] += din[static_cast<size_t>(r * d + i)];
    }
  }
  // Through the renormalisation w_j = p_j / S, then the aux loss, then the softmax.
  std::vector<Real> dlogit(static_cast<size_t>(rows * E));
  std::vector<double> switch_f(static_cast<size_t>(E), 0.0);
  for (int64_t e = 0; e < E; ++e) {
    switch_f[static_cast<size_t>(e)] =
        static_cast<double>(a.experts[static_cast<size_t>(e)].rows.size()) / rows;
  }
  const double aux_g = aux_scale * c.aux_loss_coef * static_cast<double>(E) / rows;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < rows; ++t) {
    const Real* p = a.probs.data() + t * E;
    const int32_t* sel = a.sel.data() + t * K;
    const Real* w = a.gate_w.data() + t * K;
    const Real* dw = dgate.data() + t * K;
    std::vector<Real> dp(static_cast<size_t>(E), Real(0));
    Real S = 0, wdw = 0;
    for (int64_t j = 0; j < K; ++j) {
      S += p[sel[j]];
      wdw += w[j] * dw[j];
    }
    for (int64_t j = 0; j < K; ++j) dp[static_cast<size_t>(sel[j])] = (dw[j] - wdw) / S;
    if (c.aux_loss == AuxLoss::paper) {
      for (int64_t j = 0; j < K; ++j) dp[static_cast<size_t>(sel[j])] += static_cast<Real>(aux_g);
    } else if (c.aux_loss == AuxLoss::switch_) {
      for (int64_t e = 0; e < E; ++e) {
        dp[static_cast<size_t>(e)] += static_cast<Real>(aux_g * switch_f[static_cast<size_t>(e)]);
      }
    }
    Real pdp = 0;
    for (int64_t e = 0; e < E; ++e) pdp += p[e] * dp[static_cast<size_t>(e)];
    for (int64_t e = 0; e < E; ++e) {
      dlogit[static_cast<size_t>(t * E + e)] = p[e] * (dp[static_cast<size_t>(e)] - pdp);
    }
  }
  nn::linear_backward<Real>(dxn, G + lo.router, nullptr, dlogit.data(), xn, W + lo.router, rows, d,
                            E, true);
}

template <typename Real>
AttentionParams attention_params(const ModelConfig& c, int layer, int64_t batch, int64_t nq,
                                 int64_t nk, const Real* q, const Real* k, const Real* v, Real* out,
                                 float* lse) {
  AttentionParams p;
  p.spec = c.attention_spec(layer);
  p.dtype = dtype_of<Real>();
  p.batch = batch;
  p.seqlen_q = nq;
  p.seqlen_k = nk;
  p.q = q;
  p.k = k;
  p.v = v;
  p.out = out;
  p.lse = lse;
  p.set_contiguous_strides();
  return p;
}

// float runs the fast kernels; double (gradient checks) the float64 oracle.
template <typename Real>
void run_attention(const AttentionParams& p) {
  if constexpr (sizeof(Real) == 8) {
    cpu::attention_forward_reference(p);
  } else {
    cpu::attention_forward(p);
  }
}
// Exact resume needs a bit-reproducible backward. The fast CPU backward sums per-thread dQ
// partials whose split follows a dynamic schedule, so with several threads dQ can differ in the
// last bit from run to run. Deterministic mode therefore hands whole sequences to threads
// (static schedule): each sequence's backward runs on one thread (the kernel's own parallel
// region is nested, hence serial), and its result depends on nothing else.
template <typename Real>
void run_attention_backward(AttentionBackwardParams& g, bool deterministic) {
  g.deterministic = deterministic;
  if constexpr (sizeof(Real) == 8) {
    cpu::attention_backward_reference(g);
  } else {
    if (!deterministic) {
      cpu::attention_backward(g);
      return;
    }
    const AttentionParams& f = g.forward;
    const int64_t heads = f.spec.heads.num_attention_heads();
    auto at = [](const void* base, int64_t offset) {
      return static_cast<const void*>(static_cast<const float*>(base) + offset);
    };
    auto at_mut = [](void* base, int64_t offset) {
      return static_cast<void*>(static_cast<float*>(base) + offset);
    };
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < f.batch; ++b) {
      AttentionBackwardParams one = g;
      AttentionParams& o = one.forward;
      o.batch = 1;
      o.q = at(f.q, b * f.q_strides.batch);
      o.k = at(f.k, b * f.k_strides.batch);
      o.v = at(f.v, b * f.v_strides.batch);
      o.out = at_mut(f.out, b * f.out_strides.batch);
      o.lse = f.lse + b * heads * f.seqlen_q;
      one.dout = at(g.dout, b * g.dout_strides.batch);
      one.dq = at_mut(g.dq, b * g.dq_strides.batch);
      one.dk = at_mut(g.dk, b * g.dk_strides.batch);
      one.dv = at_mut(g.dv, b * g.dv_strides.batch);
      cpu::attention_backward(one);
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------

template <typename Real>
LossStats Model<Real>::forward(const int32_t* tokens, const int32_t* targets,
                               const float* loss_mask, int64_t B, int64_t T, bool training,
                               uint64_t dropout_seed, double loss_scale) {
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
  s.tokens.assign(tokens, tokens + BT);
  const Real* W = weights_.data();

  s.xs.resize(static_cast<size_t>(c.num_layers + 1));
  s.acts.resize(static_cast<size_t>(c.num_layers));
  for (auto& x : s.xs) resize(x, BT * d);
    // (BT, d) embedding lookup.
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < BT; ++i) {
    const Real* row = W + s.embed + static_cast<int64_t>(tokens[i]) * d;
    std::copy(row, row + d, s.xs[0].data() + i * d);
  }
  LossStats stats;
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerOffsets& lo = s.layers[static_cast<size_t>(l)];
    LayerActs<Real>& a = s.acts[static_cast<size_t>(l)];
    const HeadLayout& hl = c.layers[static_cast<size_t>(l)].heads;
    const int64_t hq = hl.num_query_heads, hkv = hl.num_kv_heads, ha = hl.num_attention_heads();
    const Real* x = s.xs[static_cast<size_t>(l)].data();
    Real* x_out = s.xs[static_cast<size_t>(l + 1)].data();
    resize(a.xn1, BT * d);
    resize(a.rstd1, BT);
    resize(a.q, BT * hq * dh);
    resize(a.k, BT * hkv * dh);
    resize(a.v, BT * hkv * dh);
    resize(a.att, BT * ha * dh);
    a.lse.resize(static_cast<size_t>(B * ha * T));
    resize(a.x_mid, BT * d);
    resize(a.xn2, BT * d);
    resize(a.rstd2, BT);

    nn::rmsnorm_forward(a.xn1.data(), a.rstd1.data(), x, W + lo.attn_norm, BT, d, c.norm_eps);
    nn::linear_forward<Real>(a.q.data(), a.xn1.data(), W + lo.q, nullptr, BT, d, hq * dh);
    nn::linear_forward<Real>(a.k.data(), a.xn1.data(), W + lo.k, nullptr, BT, d, hkv * dh);
    nn::linear_forward<Real>(a.v.data(), a.xn1.data(), W + lo.v, nullptr, BT, d, hkv * dh);
    nn::rope_apply(a.q.data(), B, T, hq, dh, c.rope_theta, 0, false);
    nn::rope_apply(a.k.data(), B, T, hkv, dh, c.rope_theta, 0, false);
    run_attention<Real>(attention_params<Real>(c, l, B, T, T, a.q.data(), a.k.data(), a.v.data(),
                                               a.att.data(), a.lse.data()));
    nn::linear_forward(a.x_mid.data(), a.att.data(), W + lo.o_w, W + lo.o_b, BT, ha * dh, d);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < BT * d; ++i) a.x_mid[static_cast<size_t>(i)] += x[i];

    nn::rmsnorm_forward(a.xn2.data(), a.rstd2.data(), a.x_mid.data(), W + lo.ffn_norm, BT, d,
                        c.norm_eps);
    if (c.is_moe()) {
      stats.aux_loss += moe_forward(c, W, lo, a, a.xn2.data(), x_out, BT);
    } else {
      ffn_forward(c, W, lo.ffn, a.dense, a.xn2.data(), BT, c.ff_dim);
      std::copy(a.dense.y.begin(), a.dense.y.end(), x_out);
    }
    if (training) nn::dropout_apply(x_out, BT * d, c.ffn_dropout, layer_seed(dropout_seed, l));
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < BT * d; ++i) x_out[i] += a.x_mid[static_cast<size_t>(i)];
  }

  const Real* xl = s.xs.back().data();
  if (c.final_norm) {
    resize(s.xf, BT * d);
    resize(s.rstdf, BT);
    nn::rmsnorm_forward(s.xf.data(), s.rstdf.data(), xl, W + s.final_norm, BT, d, c.norm_eps);
  }
  const Real* xfin = c.final_norm ? s.xf.data() : xl;
  resize(s.logits, BT * V);
  nn::linear_forward<Real>(s.logits.data(), xfin, W + s.head_w,
                           s.head_b >= 0 ? W + s.head_b : nullptr, BT, d, V);
  if (targets) {
    double weight = 0;
    for (int64_t i = 0; i < BT; ++i) weight += loss_mask ? loss_mask[i] : 1.0;
    s.ce_weight = weight;
    // The gradient of the loss is only needed for a training step (evaluation skips it).
    if (training) resize(s.dlogits, BT * V);
    const nn::CrossEntropyResult ce =
        nn::cross_entropy(training ? s.dlogits.data() : nullptr, s.logits.data(), targets,
                          loss_mask, BT, V, weight > 0 ? loss_scale / weight : 0.0);
    stats.loss = weight > 0 ? ce.loss_sum / weight : 0.0;
    stats.tokens = ce.weight_sum;
    stats.correct = ce.correct;
  }
  return stats;
}

template <typename Real>
void Model<Real>::backward() {
  const ModelConfig& c = config_;
  State& s = *state_;
  require(s.has_targets && s.training && s.B > 0,
          "backward() needs a forward() with targets and training = true first");
  const int64_t B = s.B, T = s.T, BT = B * T, d = c.d_model, dh = c.head_dim, V = c.vocab_size;
  const Real* W = weights_.data();
  Real* G = grads_.data();

  resize(s.dx, BT * d);
  const Real* xl = s.xs.back().data();
  const Real* xfin = c.final_norm ? s.xf.data() : xl;
  if (c.final_norm) {
    resize(s.dxf, BT * d);
    nn::linear_backward(s.dxf.data(), G + s.head_w, s.head_b >= 0 ? G + s.head_b : nullptr,
                        s.dlogits.data(), xfin, W + s.head_w, BT, d, V, false);
    std::fill(s.dx.begin(), s.dx.end(), Real(0));
    nn::rmsnorm_backward(s.dx.data(), G + s.final_norm, s.dxf.data(), xl, W + s.final_norm,
                         s.rstdf.data(), BT, d);
  } else {
    nn::linear_backward(s.dx.data(), G + s.head_w, s.head_b >= 0 ? G + s.head_b : nullptr,
                        s.dlogits.data(), xfin, W + s.head_w, BT, d, V, false);
  }

  resize(s.dtmp, BT * d);
  resize(s.dn, BT * d);
  for (int l = c.num_layers - 1; l >= 0; --l) {
    const LayerOffsets& lo = s.layers[static_cast<size_t>(l)];
    LayerActs<Real>& a = s.acts[static_cast<size_t>(l)];
    const HeadLayout& hl = c.layers[static_cast<size_t>(l)].heads;
    const int64_t hq = hl.num_query_heads, hkv = hl.num_kv_heads, ha = hl.num_attention_heads();
    // dx holds d x_out. FFN branch: x_out = x_mid + dropout(ffn(xn2)).
    std::copy(s.dx.begin(), s.dx.end(), s.dtmp.begin());
    if (s.training) {
      nn::dropout_apply(s.dtmp.data(), BT * d, c.ffn_dropout, layer_seed(s.dropout_seed, l));
    }
    if (c.is_moe()) {
      moe_backward(c, W, G, lo, a, a.xn2.data(), s.dtmp.data(), s.dn.data(), BT, s.loss_scale,
                   s.dff_y, s.dq, s.dff_a, s.dff_h);
    } else {
      ffn_backward(c, W, G, lo.ffn, a.dense, a.xn2.data(), s.dtmp.data(), s.dn.data(), BT, c.ff_dim,
                   s.dff_a, s.dff_h);
    }
    // dx becomes d x_mid: the residual plus the norm's input gradient.
    nn::rmsnorm_backward(s.dx.data(), G + lo.ffn_norm, s.dn.data(), a.x_mid.data(), W + lo.ffn_norm,
                         a.rstd2.data(), BT, d);
    // Attention branch: x_mid = x + o_proj(att).
    resize(s.datt, BT * ha * dh);
    nn::linear_backward(s.datt.data(), G + lo.o_w, G + lo.o_b, s.dx.data(), a.att.data(),
                        W + lo.o_w, BT, ha * dh, d, false);
    resize(s.dq, BT * hq * dh);
    resize(s.dk, BT * hkv * dh);
    resize(s.dv, BT * hkv * dh);
    AttentionBackwardParams g;
    g.forward = attention_params<Real>(c, l, B, T, T, a.q.data(), a.k.data(), a.v.data(),
                                       a.att.data(), a.lse.data());
    g.dout = s.datt.data();
    g.dq = s.dq.data();
    g.dk = s.dk.data();
    g.dv = s.dv.data();
    g.set_contiguous_strides();
    run_attention_backward<Real>(g, deterministic_);
    nn::rope_apply(s.dq.data(), B, T, hq, dh, c.rope_theta, 0, true);
    nn::rope_apply(s.dk.data(), B, T, hkv, dh, c.rope_theta, 0, true);
    nn::linear_backward<Real>(s.dn.data(), G + lo.q, nullptr, s.dq.data(), a.xn1.data(), W + lo.q,
                              BT, d, hq * dh, false);
    nn::linear_backward<Real>(s.dn.data(), G + lo.k, nullptr, s.dk.data(), a.xn1.data(), W + lo.k,
                              BT, d, hkv * dh, true);
    nn::linear_backward<Real>(s.dn.data(), G + lo.v, nullptr, s.dv.data(), a.xn1.data(), W + lo.v,
                              BT, d, hkv * dh, true);
    nn::rmsnorm_backward(s.dx.data(), G + lo.attn_norm, s.dn.data(),
                         s.xs[static_cast<size_t>(l)].data(), W + lo.attn_norm, a.rstd1.data(), BT,
                         d);
  }
  // Embedding: scatter-add rows; threaded over columns so each sum runs in token order.
  Real* dE = G + s.embed;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < d; ++i) {
    for (int64_t t = 0; t < BT; ++t) {
      dE[static_cast<int64_t>(s.tokens[static_cast<size_t>(t)]) * d + i] +=
          s.dx[static_cast<size_t>(t * d + i)];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// KV-cache decoding (batch 1).

template <typename Real>
void Model<Real>::decode_reset(int64_t max_len) {
  const ModelConfig& c = config_;
  require(max_len >= 1 && max_len <= c.max_seq_len, "decode length (", max_len,
          ") must be in [1, max_position_embeddings (", c.max_seq_len, ")]");
  State& s = *state_;
  s.cache_len = 0;
  s.cache_max = max_len;
  s.kcache.resize(static_cast<size_t>(c.num_layers));
  s.vcache.resize(static_cast<size_t>(c.num_layers));
  for (int l = 0; l < c.num_layers; ++l) {
    const int64_t w = c.layers[static_cast<size_t>(l)].heads.num_kv_heads * c.head_dim;
    resize(s.kcache[static_cast<size_t>(l)], max_len * w);
    resize(s.vcache[static_cast<size_t>(l)], max_len * w);
  }
}

template <typename Real>
const Real* Model<Real>::decode_step(const int32_t* tokens, int64_t n) {
  const ModelConfig& c = config_;
  State& s = *state_;
  require(s.cache_max > 0, "decode_step() needs decode_reset() first");
  require(n >= 1 && s.cache_len + n <= s.cache_max, "decoding ", n, " tokens after ", s.cache_len,
          " would exceed the cache length (", s.cache_max, ")");
  const int64_t d = c.d_model, dh = c.head_dim, V = c.vocab_size, pos = s.cache_len;
  const int64_t nk = pos + n;
  const Real* W = weights_.data();
  LayerActs<Real>& a = s.scratch;
  resize(s.dec_x, n * d);
  resize(s.dec_tmp, n * d);
  for (int64_t i = 0; i < n; ++i) {
    require(tokens[i] >= 0 && tokens[i] < V, "token id ", tokens[i],
            " is outside the vocabulary [0, ", V, ")");
    const Real* row = W + s.embed + static_cast<int64_t>(tokens[i]) * d;
    std::copy(row, row + d, s.dec_x.data() + i * d);
  }
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerOffsets& lo = s.layers[static_cast<size_t>(l)];
    const HeadLayout& hl = c.layers[static_cast<size_t>(l)].heads;
    const int64_t hq = hl.num_query_heads, hkv = hl.num_kv_heads, ha = hl.num_attention_heads();
    Real* kc = s.kcache[static_cast<size_t>(l)].data();
    Real* vc = s.vcache[static_cast<size_t>(l)].data();
    resize(a.xn1, n * d);
    resize(a.rstd1, n);
    resize(a.q, n * hq * dh);
    resize(a.att, n * ha * dh);
    resize(a.xn2, n * d);
    resize(a.rstd2, n);
    nn::rmsnorm_forward(a.xn1.data(), a.rstd1.data(), s.dec_x.data(), W + lo.attn_norm, n, d,
                        c.norm_eps);
    nn::linear_forward<Real>(a.q.data(), a.xn1.data(), W + lo.q, nullptr, n, d, hq * dh);
    // New keys and values go straight into the cache rows [pos, pos + n).
    nn::linear_forward<Real>(kc + pos * hkv * dh, a.xn1.data(), W + lo.k, nullptr, n, d, hkv * dh);
    nn::linear_forward<Real>(vc + pos * hkv * dh, a.xn1.data(), W + lo.v, nullptr, n, d, hkv * dh);
    nn::rope_apply(a.q.data(), 1, n, hq, dh, c.rope_theta, pos, false);
    nn::rope_apply(kc + pos * hkv * dh, 1, n, hkv, dh, c.rope_theta, pos, false);
    // Bottom-right aligned mask (spec.hpp): the n new queries are the last n positions.
    run_attention<Real>(
        attention_params<Real>(c, l, 1, n, nk, a.q.data(), kc, vc, a.att.data(), nullptr));
    nn::linear_forward(s.dec_tmp.data(), a.att.data(), W + lo.o_w, W + lo.o_b, n, ha * dh, d);
    for (int64_t i = 0; i < n * d; ++i)
      s.dec_x[static_cast<size_t>(i)] += s.dec_tmp[static_cast<size_t>(i)];
    nn::rmsnorm_forward(a.xn2.data(), a.rstd2.data(), s.dec_x.data(), W + lo.ffn_norm, n, d,
                        c.norm_eps);
    if (c.is_moe()) {
      moe_forward(c, W, lo, a, a.xn2.data(), s.dec_tmp.data(), n);
    } else {
      ffn_forward(c, W, lo.ffn, a.dense, a.xn2.data(), n, c.ff_dim);
      std::copy(a.dense.y.begin(), a.dense.y.end(), s.dec_tmp.begin());
    }
    for (int64_t i = 0; i < n * d; ++i)
      s.dec_x[static_cast<size_t>(i)] += s.dec_tmp[static_cast<size_t>(i)];
  }
  s.cache_len += n;
  // Only the last token's logits are needed.
  const Real* last = s.dec_x.data() + (n - 1) * d;
  std::vector<Real> normed;
  if (c.final_norm) {
    normed.resize(static_cast<size_t>(d));
    Real r;
    nn::rmsnorm_forward(normed.data(), &r, last, W + s.final_norm, 1, d, c.norm_eps);
    last = normed.data();
  }
  resize(s.dec_logits, V);
  nn::linear_forward<Real>(s.dec_logits.data(), last, W + s.head_w,
                           s.head_b >= 0 ? W + s.head_b : nullptr, 1, d, V);
  return s.dec_logits.data();
}

template class Model<float>;
template class Model<double>;

}  // namespace sqa
