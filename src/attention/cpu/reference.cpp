// float64 reference attention: the oracle every fast path is checked against. Straightforward
// softmax(Q K^T * scale) V per (sequence, attention head), no tiling, no shortcuts.
#include <cmath>
#include <limits>
#include <vector>

#include "sqa/attention.hpp"
#include "tensor_access.hpp"

namespace sqa::cpu {

using detail::load;
using detail::offset;
using detail::sequence_span;
using detail::SequenceSpan;
using detail::store;

namespace {

// Row-wise probabilities P = softmax(S) for one (sequence, head), S = scale * Q K^T over the
// visible keys. Returns per-row lse; rows with no visible key get lse = -inf and P = 0.
void probabilities(const AttentionParams& p, const SequenceSpan& s, int h, std::vector<double>& P,
                   std::vector<double>& lse) {
  const int d = p.spec.head_dim;
  const double scale = p.spec.scale();
  const HeadPair pair = head_pair(p.spec.heads, h);
  P.assign(static_cast<size_t>(s.seqlen_q * s.seqlen_k), 0.0);
  lse.assign(static_cast<size_t>(s.seqlen_q), -std::numeric_limits<double>::infinity());
  for (int64_t i = 0; i < s.seqlen_q; ++i) {
    const KeyRange keys = visible_keys(p.spec.window, i, s.seqlen_q, s.seqlen_k);
    if (keys.begin >= keys.end) continue;
    double* row = &P[static_cast<size_t>(i * s.seqlen_k)];
    double max_score = -std::numeric_limits<double>::infinity();
    const int64_t qo = offset(p.q_strides, s, s.q_row0, i, pair.query_head);
    for (int64_t j = keys.begin; j < keys.end; ++j) {
      const int64_t ko = offset(p.k_strides, s, s.k_row0, j, pair.kv_head);
      double dot = 0.0;
      for (int c = 0; c < d; ++c) dot += load(p.q, p.dtype, qo + c) * load(p.k, p.dtype, ko + c);
      row[j] = dot * scale;
      max_score = std::max(max_score, row[j]);
    }
    double sum = 0.0;
    for (int64_t j = keys.begin; j < keys.end; ++j) {
      row[j] = std::exp(row[j] - max_score);
      sum += row[j];
    }
    for (int64_t j = keys.begin; j < keys.end; ++j) row[j] /= sum;
    lse[static_cast<size_t>(i)] = max_score + std::log(sum);
  }
}

}  // namespace

void attention_forward_reference(const AttentionParams& p) {
  p.validate();
  const int d = p.spec.head_dim;
  std::vector<double> P, lse;
  for (int64_t b = 0; b < p.batch; ++b) {
    const SequenceSpan s = sequence_span(p, b);
    for (int h = 0; h < p.spec.heads.num_attention_heads(); ++h) {
      probabilities(p, s, h, P, lse);
      const int kv = head_pair(p.spec.heads, h).kv_head;
      for (int64_t i = 0; i < s.seqlen_q; ++i) {
        std::vector<double> acc(static_cast<size_t>(d), 0.0);
        for (int64_t j = 0; j < s.seqlen_k; ++j) {
          const double pij = P[static_cast<size_t>(i * s.seqlen_k + j)];
          if (pij == 0.0) continue;
          const int64_t vo = offset(p.v_strides, s, s.k_row0, j, kv);
          for (int c = 0; c < d; ++c) acc[c] += pij * load(p.v, p.dtype, vo + c);
        }
        const int64_t oo = offset(p.out_strides, s, s.q_row0, i, h);
        for (int c = 0; c < d; ++c) store(p.out, p.dtype, oo + c, acc[c]);
        if (p.lse) p.lse[detail::lse_index(p, s, h, i)] = static_cast<float>(lse[i]);
      }
    }
  }
}

// Backward of O = P V, P = softmax(S), S = scale Q K^T:
//   dV = P^T dO;  dP = dO V^T;  dS = P * (dP - rowsum(dO * O));  dQ = scale dS K;
//   dK = scale dS^T Q.
// Several attention heads can share one query head (rSQA) or one KV head (GQA family): their
// contributions are summed into the shared gradient. The reference recomputes P in float64
// instead of trusting the forward's lse and out.
void attention_backward_reference(const AttentionBackwardParams& g) {
  g.validate();
  const AttentionParams& p = g.forward;
  const int d = p.spec.head_dim;
  const double scale = p.spec.scale();
  const DType t = p.dtype;

  std::vector<double> P, lse;
  for (int64_t b = 0; b < p.batch; ++b) {
    const SequenceSpan s = sequence_span(p, b);
    const size_t nq = static_cast<size_t>(s.seqlen_q), nk = static_cast<size_t>(s.seqlen_k);
    // Accumulate in double per sequence, store once at the end so bf16 rounds once.
    std::vector<double> dq(nq * p.spec.heads.num_query_heads * d, 0.0);
    std::vector<double> dk(nk * p.spec.heads.num_kv_heads * d, 0.0);
    std::vector<double> dv(nk * p.spec.heads.num_kv_heads * d, 0.0);
    for (int h = 0; h < p.spec.heads.num_attention_heads(); ++h) {
      probabilities(p, s, h, P, lse);
      const HeadPair pair = head_pair(p.spec.heads, h);
      for (size_t i = 0; i < nq; ++i) {
        const int64_t ro = offset(g.dout_strides, s, s.q_row0, static_cast<int64_t>(i), h);
        std::vector<double> dout(static_cast<size_t>(d));
        for (int c = 0; c < d; ++c) dout[c] = load(g.dout, t, ro + c);
        // dP_ij = dO_i . V_j, and D_i = sum_j P_ij dP_ij (= dO_i . O_i in exact arithmetic).
        std::vector<double> dP(nk, 0.0);
        double D = 0.0;
        for (size_t j = 0; j < nk; ++j) {
          const double pij = P[i * nk + j];
          if (pij == 0.0) continue;
          const int64_t vo =
              offset(p.v_strides, s, s.k_row0, static_cast<int64_t>(j), pair.kv_head);
          double dot = 0.0;
          for (int c = 0; c < d; ++c) dot += dout[c] * load(p.v, t, vo + c);
          dP[j] = dot;
          D += pij * dot;
        }
        const int64_t qo =
            offset(p.q_strides, s, s.q_row0, static_cast<int64_t>(i), pair.query_head);
        for (size_t j = 0; j < nk; ++j) {
          const double pij = P[i * nk + j];
          if (pij == 0.0) continue;
          const double dS = pij * (dP[j] - D) * scale;
          const int64_t ko =
              offset(p.k_strides, s, s.k_row0, static_cast<int64_t>(j), pair.kv_head);
          double* dq_row = &dq[(i * p.spec.heads.num_query_heads + pair.query_head) * d];
          double* dk_row = &dk[(j * p.spec.heads.num_kv_heads + pair.kv_head) * d];
          double* dv_row = &dv[(j * p.spec.heads.num_kv_heads + pair.kv_head) * d];
          for (int c = 0; c < d; ++c) {
            dq_row[c] += dS * load(p.k, t, ko + c);
            dk_row[c] += dS * load(p.q, t, qo + c);
            dv_row[c] += pij * dout[c];
          }
        }
      }
    }
    for (size_t i = 0; i < nq; ++i)
      for (int h = 0; h < p.spec.heads.num_query_heads; ++h)
        for (int c = 0; c < d; ++c)
          store(g.dq, t, offset(g.dq_strides, s, s.q_row0, static_cast<int64_t>(i), h) + c,
                dq[(i * p.spec.heads.num_query_heads + h) * d + c]);
    for (size_t j = 0; j < nk; ++j)
      for (int h = 0; h < p.spec.heads.num_kv_heads; ++h)
        for (int c = 0; c < d; ++c) {
          const size_t idx = (j * p.spec.heads.num_kv_heads + h) * d + c;
          store(g.dk, t, offset(g.dk_strides, s, s.k_row0, static_cast<int64_t>(j), h) + c,
                dk[idx]);
          store(g.dv, t, offset(g.dv_strides, s, s.k_row0, static_cast<int64_t>(j), h) + c,
                dv[idx]);
        }
  }
}

}  // namespace sqa::cpu
