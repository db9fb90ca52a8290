// The attention spec: one value type that describes a layer's attention (paper.md, "The
// mechanism"). Every backend, the model and the benchmarks take their head counts, mask and
// FLOP counts from here.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sqa {

// Head counts of one attention layer.
//   num_query_heads  = H_q
//   num_kv_heads     = H_kv
// Either H_q % H_kv == 0 (MHA/GQA/MQA/SQA family, G = H_q / H_kv query heads share one KV head)
// or H_kv % H_q == 0 (reverse SQA, queries repeated to H_kv heads).
struct HeadLayout {
  int num_query_heads = 0;
  int num_kv_heads = 0;

  bool is_reverse() const { return num_query_heads < num_kv_heads; }
  // Heads that actually run attention: max(H_q, H_kv). Output has this many heads.
  int num_attention_heads() const {
    return num_query_heads > num_kv_heads ? num_query_heads : num_kv_heads;
  }
  // G = H_q / H_kv for the forward family; 1 for rSQA.
  int group_size() const { return is_reverse() ? 1 : num_query_heads / num_kv_heads; }
  // rSQA: how many times each query head is repeated (H_kv / H_q); 1 otherwise.
  int query_repeats() const { return is_reverse() ? num_kv_heads / num_query_heads : 1; }
};

// The single home of the head-group mapping. Attention head h (0 <= h < num_attention_heads)
// reads query head `query_head` and KV head `kv_head`:
//   H_q >= H_kv: query_head = h, kv_head = h / G       (repeat_interleave order, as enable_gqa)
//   H_q <  H_kv: query_head = h % H_q, kv_head = h     (rSQA tiling q0..q_{Hq-1}, q0.., ...)
struct HeadPair {
  int query_head;
  int kv_head;
};
HeadPair head_pair(const HeadLayout& layout, int attention_head);

// Sliding window in FlashAttention's convention: a query at row i (aligned to the bottom-right
// corner when N_q != N_k, so that decode sees the whole cache) sees keys j with
//   i + (N_k - N_q) - left <= j <= i + (N_k - N_q) + right.
// -1 means unbounded on that side. (-1, -1) is no mask, (-1, 0) is causal.
struct Window {
  int left = -1;
  int right = -1;

  bool is_none() const { return left < 0 && right < 0; }
  bool is_causal() const { return left < 0 && right == 0; }
  static Window none() { return {-1, -1}; }
  static Window causal() { return {-1, 0}; }
  // Causal sliding window of w tokens: token i sees [i - w + 1, i].
  static Window sliding(int w) { return {w - 1, 0}; }
};

// Range of visible keys [begin, end) for query row `row`; empty when begin >= end.
struct KeyRange {
  int64_t begin;
  int64_t end;
};
KeyRange visible_keys(const Window& window, int64_t row, int64_t seqlen_q, int64_t seqlen_k);
// Number of visible (query, key) pairs: the exact mask area, used for FLOP counts.
int64_t visible_pairs(const Window& window, int64_t seqlen_q, int64_t seqlen_k);

inline constexpr int kMinHeadDim = 1;
inline constexpr int kMaxHeadDim = 256;

struct AttentionSpec {
  int num_baseline_heads = 0;  // H of the comparable MHA; 0 = unspecified (use num_attention_heads)
  HeadLayout heads;
  int head_dim = 0;            // d_head
  float softmax_scale = 0.0f;  // 0 = default 1/sqrt(head_dim)
  Window window;

  float scale() const;
  // Throws sqa::Error naming the value and the rule when the spec is invalid.
  void validate() const;
  std::string to_string() const;
};

// Variant presets (paper.md "Variant family"), derived from the baseline head count H.
enum class Variant { mha, gqa, mqa, sqa, ssqa, xsqa, xsmqa, lsqa, rsqa };
const std::vector<Variant>& all_variants();
std::string_view variant_name(Variant v);
Variant parse_variant(std::string_view name);  // throws sqa::Error listing the valid names
// H_q and H_kv for a preset. Throws when H does not divide as the preset needs (e.g. sqa
// needs H % 4 == 0).
HeadLayout preset_layout(Variant v, int num_baseline_heads);
AttentionSpec make_spec(Variant v, int num_baseline_heads, int head_dim,
                        Window window = Window::none());

// The single home of FLOP counting (multiply-add = 2 FLOPs).
//   forward: 4 * visible_pairs * num_attention_heads * d  (QK^T and PV)
//   backward: 2.5x forward (dS, dP, dQ, dK, dV matmuls)
//   projections: 2 * N * d_model * d_head * (2 H_q + 2 H_kv)   (paper.md)
double attention_forward_flops(const AttentionSpec& spec, int64_t batch, int64_t seqlen_q,
                               int64_t seqlen_k);
double attention_backward_flops(const AttentionSpec& spec, int64_t batch, int64_t seqlen_q,
                                int64_t seqlen_k);
double projection_flops(const AttentionSpec& spec, int64_t tokens, int64_t d_model);

}  // namespace sqa
