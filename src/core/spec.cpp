#include "sqa/spec.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "sqa/error.hpp"

namespace sqa {

HeadPair head_pair(const HeadLayout& layout, int attention_head) {
  if (layout.is_reverse()) {
    return {attention_head % layout.num_query_heads, attention_head};
  }
  return {attention_head, attention_head / layout.group_size()};
}

KeyRange visible_keys(const Window& window, int64_t row, int64_t seqlen_q, int64_t seqlen_k) {
  // Bottom-right alignment: the last query row lines up with the last key.
  const int64_t diagonal = row + (seqlen_k - seqlen_q);
  int64_t begin = window.left < 0 ? 0 : diagonal - window.left;
  int64_t end = window.right < 0 ? seqlen_k : diagonal + window.right + 1;
  begin = std::clamp<int64_t>(begin, 0, seqlen_k);
  end = std::clamp<int64_t>(end, 0, seqlen_k);
  if (end < begin) end = begin;
  return {begin, end};
}

int64_t visible_pairs(const Window& window, int64_t seqlen_q, int64_t seqlen_k) {
  if (window.is_none()) return seqlen_q * seqlen_k;
  int64_t pairs = 0;
  for (int64_t row = 0; row < seqlen_q; ++row) {
    const KeyRange r = visible_keys(window, row, seqlen_q, seqlen_k);
    pairs += r.end - r.begin;
  }
  return pairs;
}

float AttentionSpec::scale() const {
  return softmax_scale > 0.0f ? softmax_scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
}

void AttentionSpec::validate() const {
  const int hq = heads.num_query_heads;
  const int hkv = heads.num_kv_heads;
  require(hq >= 1, "num_query_heads (", hq, ") must be at least 1");
  require(hkv >= 1, "num_kv_heads (", hkv, ") must be at least 1");
  require(hq % hkv == 0 || hkv % hq == 0, "num_query_heads (", hq,
          ") must be a multiple of num_kv_heads (", hkv, "), or the reverse for rSQA");
  require(head_dim >= kMinHeadDim && head_dim <= kMaxHeadDim, "head_dim (", head_dim,
          ") must be in [", kMinHeadDim, ", ", kMaxHeadDim, "]");
  require(std::isfinite(softmax_scale) && softmax_scale >= 0.0f, "softmax_scale (", softmax_scale,
          ") must be finite and > 0, or 0 for the default 1/sqrt(head_dim)");
  require(window.left >= -1, "window left (", window.left,
          ") must be -1 (unbounded) or a non-negative number of tokens");
  require(window.right >= -1, "window right (", window.right,
          ") must be -1 (unbounded) or a non-negative number of tokens");
  require(num_baseline_heads >= 0, "num_baseline_heads (", num_baseline_heads,
          ") must be >= 0 (0 = unspecified)");
}

std::string AttentionSpec::to_string() const {
  std::ostringstream out;
  out << "H_q=" << heads.num_query_heads << " H_kv=" << heads.num_kv_heads << " d=" << head_dim
      << " scale=" << scale();
  if (window.is_causal()) {
    out << " causal";
  } else if (!window.is_none()) {
    out << " window=(" << window.left << "," << window.right << ")";
  }
  return out.str();
}

const std::vector<Variant>& all_variants() {
  static const std::vector<Variant> variants = {Variant::mha,   Variant::gqa,  Variant::mqa,
                                                Variant::sqa,   Variant::ssqa, Variant::xsqa,
                                                Variant::xsmqa, Variant::lsqa, Variant::rsqa};
  return variants;
}

std::string_view variant_name(Variant v) {
  switch (v) {
    case Variant::mha:
      return "mha";
    case Variant::gqa:
      return "gqa";
    case Variant::mqa:
      return "mqa";
    case Variant::sqa:
      return "sqa";
    case Variant::ssqa:
      return "ssqa";
    case Variant::xsqa:
      return "xsqa";
    case Variant::xsmqa:
      return "xsmqa";
    case Variant::lsqa:
      return "lsqa";
    case Variant::rsqa:
      return "rsqa";
  }
  return "?";
}

Variant parse_variant(std::string_view name) {
  for (Variant v : all_variants()) {
    if (variant_name(v) == name) return v;
  }
  throw Error(detail::concat("unknown variant '", name,
                             "': expected one of mha gqa mqa sqa ssqa xsqa xsmqa lsqa rsqa"));
}

HeadLayout preset_layout(Variant v, int h) {
  require(h >= 1, "baseline heads H (", h, ") must be at least 1");
  auto need = [&](int divisor) {
    require(h % divisor == 0, "variant ", variant_name(v), " needs baseline heads H (", h,
            ") divisible by ", divisor);
  };
  switch (v) {
    case Variant::mha:
      return {h, h};
    case Variant::gqa:
      need(4);
      return {h, h / 4};
    case Variant::mqa:
      return {h, 1};
    case Variant::sqa:
      need(4);
      return {h / 2, h / 4};
    case Variant::ssqa:
      need(2);
      return {h / 2, h / 2};
    case Variant::xsqa:
      need(4);
      return {h / 4, h / 4};
    case Variant::xsmqa:
      need(4);
      return {h / 4, 1};
    case Variant::lsqa:
      need(4);
      return {3 * h / 4, h / 4};
    case Variant::rsqa:
      need(4);
      return {h / 4, h / 2};
  }
  throw Error("unreachable variant");
}

AttentionSpec make_spec(Variant v, int num_baseline_heads, int head_dim, Window window) {
  AttentionSpec spec;
  spec.num_baseline_heads = num_baseline_heads;
  spec.heads = preset_layout(v, num_baseline_heads);
  spec.head_dim = head_dim;
  spec.window = window;
  spec.validate();
  return spec;
}

double attention_forward_flops(const AttentionSpec& spec, int64_t batch, int64_t seqlen_q,
                               int64_t seqlen_k) {
  return 4.0 * static_cast<double>(batch) *
         static_cast<double>(visible_pairs(spec.window, seqlen_q, seqlen_k)) *
         spec.heads.num_attention_heads() * spec.head_dim;
}

double attention_backward_flops(const AttentionSpec& spec, int64_t batch, int64_t seqlen_q,
                                int64_t seqlen_k) {
  return 2.5 * attention_forward_flops(spec, batch, seqlen_q, seqlen_k);
}

double projection_flops(const AttentionSpec& spec, int64_t tokens, int64_t d_model) {
  return 2.0 * static_cast<double>(tokens) * static_cast<double>(d_model) * spec.head_dim *
         (2.0 * spec.heads.num_query_heads + 2.0 * spec.heads.num_kv_heads);
}

}  // namespace sqa
