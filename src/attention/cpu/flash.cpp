// CPU fast path: planner and dispatcher. Validates, picks the SIMD path (runtime CPU detection,
// SQA_CPU_SIMD may force a lower one), cuts the work into items over (sequence, head, query
// block) for the forward and (sequence, KV head, key block) for the backward, and runs them with
// OpenMP. The per-ISA tile kernels live in flash_kernels.hpp.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "flash_plan.hpp"
#include "sqa/attention.hpp"
#include "sqa/error.hpp"

namespace sqa::cpu {
namespace {

using flash::kBlockK;
using flash::kBlockKB;
using flash::kBlockQ;
using flash::kBlockQB;

int rank(std::string_view path) {
  return path == "avx512" ? 2 : path == "avx2" ? 1 : 0;
}

const char* best_path() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("fma")) {
    return "avx512";
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "avx2";
  return "portable";
}

// Read at every call (cheap next to an attention call) so tests can switch paths in-process.
const flash::Kernels& select_kernels() {
  const char* best = best_path();
  std::string chosen = best;
  if (const char* env = std::getenv("SQA_CPU_SIMD"); env != nullptr && *env != '\0') {
    const std::string want = env;
    require(want == "portable" || want == "avx2" || want == "avx512", "SQA_CPU_SIMD (", want,
            ") must be portable, avx2 or avx512");
    require(rank(want) <= rank(best), "SQA_CPU_SIMD (", want, ") needs a CPU with ", want,
            "; this CPU supports up to ", best);
    chosen = want;
  }
  if (chosen == "avx512") return flash::avx512_kernels();
  if (chosen == "avx2") return flash::avx2_kernels();
  return flash::portable_kernels();
}

void check_dtype(DType t) {
  require(t == DType::f32 || t == DType::bf16, "dtype (", dtype_name(t),
          ") is not supported by the CPU fast path: it takes f32 or bf16 (f16 is CUDA-only)");
}

int padded(int head_dim, int width) {
  return (head_dim + width - 1) / width * width;
}

std::vector<flash::Sequence> sequences(const AttentionParams& p) {
  std::vector<flash::Sequence> out;
  for (int64_t b = 0; b < p.batch; ++b) {
    if (p.is_varlen()) {
      out.push_back({0, p.cu_seqlens_q[b], p.cu_seqlens_k[b],
                     static_cast<int64_t>(p.cu_seqlens_q[b + 1]) - p.cu_seqlens_q[b],
                     static_cast<int64_t>(p.cu_seqlens_k[b + 1]) - p.cu_seqlens_k[b],
                     p.cu_seqlens_q[b]});
    } else {
      out.push_back({b, 0, 0, p.seqlen_q, p.seqlen_k, b * p.seqlen_q});
    }
  }
  return out;
}

// 64-byte aligned per-thread scratch carved from one allocation.
struct Scratch {
  std::vector<float> storage;
  int64_t per_thread = 0;
  Scratch(int threads, int64_t floats) {
    per_thread = (floats + 15) / 16 * 16;
    storage.assign(static_cast<size_t>(per_thread * threads + 16), 0.0f);
  }
  float* thread(int t) {
    auto base = reinterpret_cast<uintptr_t>(storage.data());
    float* aligned = reinterpret_cast<float*>((base + 63) / 64 * 64);
    return aligned + per_thread * t;
  }
};

void store_out(const AttentionParams& p, int64_t offset, float x) {
  if (p.dtype == DType::bf16) {
    static_cast<bf16*>(p.out)[offset] = float_to_bf16(x);
  } else {
    static_cast<float*>(p.out)[offset] = x;
  }
}

int64_t lse_index(const AttentionParams& p, const flash::Sequence& s, int h, int64_t r) {
  return p.is_varlen() ? h * static_cast<int64_t>(p.cu_seqlens_q[p.batch]) + s.q_row0 + r
                       : (s.batch_index * p.spec.heads.num_attention_heads() + h) * p.seqlen_q + r;
}

// Decode (every sequence has at most kDecodeRows query rows): items are key slices of one
// sequence covering all heads; each thread streams its slices of the cache, then the slices are
// combined by log-sum-exp: m = max m_s, l = sum l_s 2^(m_s - m), O = sum O_s 2^(m_s - m) / l.
void decode_forward(const AttentionParams& p, const flash::Kernels& kernels, int dp,
                    const std::vector<flash::Sequence>& seqs) {
  constexpr int64_t kSlice = 8 * kBlockK;
  const int heads = p.spec.heads.num_attention_heads();
  const int threads = omp_get_max_threads();
  std::vector<flash::DecodeItem> items;
  std::vector<int64_t> first_slot(seqs.size()), slices(seqs.size());
  for (size_t b = 0; b < seqs.size(); ++b) {
    const flash::Sequence& s = seqs[b];
    first_slot[b] = static_cast<int64_t>(items.size());
    if (s.seqlen_q == 0) continue;
    const KeyRange first = visible_keys(p.spec.window, 0, s.seqlen_q, s.seqlen_k);
    const KeyRange last = visible_keys(p.spec.window, s.seqlen_q - 1, s.seqlen_q, s.seqlen_k);
    const int64_t lo = first.begin, hi = std::max(first.begin, last.end);
    const int64_t n = std::max<int64_t>(1, (hi - lo + kSlice - 1) / kSlice);
    slices[b] = n;
    for (int64_t sl = 0; sl < n; ++sl) {
      items.push_back({s, lo + sl * kSlice, std::min(hi, lo + (sl + 1) * kSlice),
                       static_cast<int64_t>(items.size())});
    }
  }
  const int partial_rows = heads * flash::kDecodeRows;
  const size_t slots = items.size();
  std::vector<float> partial_out(slots * static_cast<size_t>(partial_rows * dp));
  std::vector<float> partial_max(slots * static_cast<size_t>(partial_rows));
  std::vector<float> partial_sum(slots * static_cast<size_t>(partial_rows));
  const flash::ForwardContext ctx{
      &p, dp, partial_rows, partial_out.data(), partial_max.data(), partial_sum.data()};
  Scratch scratch(threads, flash::decode_scratch_floats(dp, heads, p.spec.heads.num_kv_heads));
  const int64_t n = static_cast<int64_t>(items.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) {
    kernels.decode_item(ctx, items[static_cast<size_t>(i)], scratch.thread(omp_get_thread_num()));
  }
  const int d = p.spec.head_dim;
  std::vector<float> row(static_cast<size_t>(d));
  for (size_t b = 0; b < seqs.size(); ++b) {
    const flash::Sequence& s = seqs[b];
    const int rows = static_cast<int>(s.seqlen_q);
    for (int h = 0; h < heads; ++h) {
      for (int i = 0; i < rows; ++i) {
        const int64_t e = h * rows + i;  // entry inside a slot
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t sl = 0; sl < slices[b]; ++sl)
          m = std::max(m,
                       partial_max[static_cast<size_t>((first_slot[b] + sl) * partial_rows + e)]);
        const float m_safe = std::isinf(m) ? 0.0f : m;
        float l = 0.0f;
        std::fill(row.begin(), row.end(), 0.0f);
        for (int64_t sl = 0; sl < slices[b]; ++sl) {
          const size_t at = static_cast<size_t>((first_slot[b] + sl) * partial_rows + e);
          const float w = std::exp2(partial_max[at] - m_safe);
          l += w * partial_sum[at];
          const float* po = &partial_out[at * static_cast<size_t>(dp)];
          for (int c = 0; c < d; ++c) row[static_cast<size_t>(c)] += w * po[c];
        }
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        const int64_t off = s.batch_index * p.out_strides.batch +
                            (s.q_row0 + i) * p.out_strides.row + h * p.out_strides.head;
        for (int c = 0; c < d; ++c) store_out(p, off + c, row[static_cast<size_t>(c)] * inv);
        if (p.lse) {
          p.lse[lse_index(p, s, h, i)] = l > 0.0f ? (m + std::log2(l)) * 0.6931471805599453f
                                                  : -std::numeric_limits<float>::infinity();
        }
      }
    }
  }
}

}  // namespace

namespace flash {
int64_t forward_scratch_floats(int dp) {
  return 2LL * dp * kBlockQ + kBlockK * kBlockQ + 2LL * kBlockK * dp + 5LL * kBlockQ;
}
int64_t decode_scratch_floats(int dp, int heads, int kv_heads) {
  const int64_t nr = static_cast<int64_t>(heads) * kDecodeRows;
  return 2 * nr * dp + nr * kBlockK + 2 * nr + (1LL + kBlockK) * kv_heads * dp + heads;
}
int64_t backward_scratch_floats(int dp) {
  return 3LL * dp * kBlockKB + 2LL * kBlockQB * dp + 2LL * kBlockQB * kBlockKB +
         2LL * kBlockKB * dp + dp + 4LL * kBlockQB;
}
}  // namespace flash

const char* simd_path() {
  return select_kernels().name;
}

void attention_forward(const AttentionParams& p) {
  p.validate();
  check_dtype(p.dtype);
  const flash::Kernels& kernels = select_kernels();
  const int dp = padded(p.spec.head_dim, kernels.width);
  const int heads = p.spec.heads.num_attention_heads();
  const int threads = omp_get_max_threads();

  const std::vector<flash::Sequence> seqs = sequences(p);
  bool decode = true;
  for (const flash::Sequence& s : seqs) decode = decode && s.seqlen_q <= flash::kDecodeRows;
  // Decode with a query-head group (G = H_q / H_kv >= kStackMinGroup) is compute-shaped: G
  // dot-product passes over each K row cost more than streaming it. Such groups become items
  // whose score columns are the G heads' rows (small GEMMs, K/V read once per group); the
  // split-KV below still spreads the keys over the threads. Smaller groups and MHA stay on the
  // key-major decode path, which streams every head's K/V row sequentially.
  const int group = p.spec.heads.is_reverse() ? 1 : p.spec.heads.group_size();
  const bool stack_heads = decode && group >= flash::kStackMinGroup;
  if (decode && !stack_heads) {
    decode_forward(p, kernels, dp, seqs);
    return;
  }

  std::vector<flash::ForwardItem> items;
  for (const flash::Sequence& s : seqs) {
    if (stack_heads) {
      if (s.seqlen_q == 0) continue;
      const int rows = static_cast<int>(s.seqlen_q);
      const KeyRange first = visible_keys(p.spec.window, 0, s.seqlen_q, s.seqlen_k);
      const KeyRange last = visible_keys(p.spec.window, rows - 1, s.seqlen_q, s.seqlen_k);
      // At most kBlockQ columns per item: a group larger than that is cut into head chunks.
      const int chunk = std::max(1, kBlockQ / rows);
      for (int h0 = 0, stacked = 0; h0 < heads; h0 += stacked) {
        stacked = std::min({group - h0 % group, chunk, heads - h0});
        items.push_back({s, h0, 0, rows, first.begin, std::max(first.begin, last.end), stacked});
      }
      continue;
    }
    // Head-major: consecutive items (and the heads of one GQA group, which are adjacent) reuse
    // the same K/V while it is in cache; all heads' K/V together may not fit in L3.
    for (int h = 0; h < heads; ++h) {
      for (int64_t i0 = 0; i0 < s.seqlen_q; i0 += kBlockQ) {
        const int rows = static_cast<int>(std::min<int64_t>(kBlockQ, s.seqlen_q - i0));
        // Rows' visible ranges are monotone, so the block's keys are [first.begin, last.end).
        const KeyRange first = visible_keys(p.spec.window, i0, s.seqlen_q, s.seqlen_k);
        const KeyRange last = visible_keys(p.spec.window, i0 + rows - 1, s.seqlen_q, s.seqlen_k);
        items.push_back({s, h, i0, rows, first.begin, std::max(first.begin, last.end)});
      }
    }
  }
  // Split-KV: with few items (decode, or few heads against a long cache) cut each key range into
  // slices so every thread streams its share of K and V.
  struct Group {
    int slices;
    flash::ForwardItem whole;
  };
  std::vector<Group> groups;
  const int64_t wanted = 8LL * threads;
  if (static_cast<int64_t>(items.size()) < wanted) {
    // Slice-major order: item (slice s, head h) follows (s, h - 1), so heads sharing a KV head
    // read the same slice while it is in cache.
    std::vector<std::vector<flash::ForwardItem>> by_slice;
    int64_t slot = 0;
    for (const flash::ForwardItem& it : items) {
      const int64_t keys = it.k_hi - it.k_lo;
      const int64_t tiles = (keys + kBlockK - 1) / kBlockK;
      const int64_t by_threads =
          (wanted + static_cast<int64_t>(items.size()) - 1) / static_cast<int64_t>(items.size());
      int64_t slices = std::min<int64_t>(by_threads, keys / (4 * kBlockK));
      slices = std::clamp<int64_t>(slices, 1, std::max<int64_t>(tiles, 1));
      if (static_cast<int64_t>(by_slice.size()) < slices)
        by_slice.resize(static_cast<size_t>(slices));
      if (slices == 1) {
        by_slice[0].push_back(it);
        continue;
      }
      groups.push_back({static_cast<int>(slices), it});
      for (int64_t sl = 0; sl < slices; ++sl) {
        flash::ForwardItem part = it;
        // Slice boundaries on tile multiples keep every slice's tiles full.
        part.k_lo = it.k_lo + tiles * sl / slices * kBlockK;
        part.k_hi = std::min(it.k_hi, it.k_lo + tiles * (sl + 1) / slices * kBlockK);
        part.partial = slot++;
        by_slice[static_cast<size_t>(sl)].push_back(part);
      }
    }
    items.clear();
    for (const auto& slice : by_slice) items.insert(items.end(), slice.begin(), slice.end());
  }
  // Slots are numbered per group in slice order: slot of (group, slice) = first slot + slice.
  std::vector<int64_t> group_first_slot;
  {
    int64_t slot = 0;
    for (const Group& g : groups) {
      group_first_slot.push_back(slot);
      slot += g.slices;
    }
  }
  std::vector<size_t> order(items.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  if (groups.empty()) {
    // Largest first (causal blocks differ in cost), so the dynamic schedule ends balanced.
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return (items[a].k_hi - items[a].k_lo) * items[a].columns() >
             (items[b].k_hi - items[b].k_lo) * items[b].columns();
    });
  }

  int64_t slots = 0;
  for (const Group& g : groups) slots += g.slices;
  int partial_rows = 1;  // entries per slot: decode needs a few columns, not a whole block
  for (const Group& g : groups) partial_rows = std::max(partial_rows, g.whole.columns());
  std::vector<float> partial_out(static_cast<size_t>(slots * partial_rows * dp));
  std::vector<float> partial_max(static_cast<size_t>(slots * partial_rows));
  std::vector<float> partial_sum(static_cast<size_t>(slots * partial_rows));
  const flash::ForwardContext ctx{
      &p, dp, partial_rows, partial_out.data(), partial_max.data(), partial_sum.data()};
  Scratch scratch(threads, flash::forward_scratch_floats(dp));
  const int64_t n = static_cast<int64_t>(items.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) {
    kernels.forward_item(ctx, items[order[static_cast<size_t>(i)]],
                         scratch.thread(omp_get_thread_num()));
  }

  // Combine the slices: m = max m_s, l = sum l_s 2^(m_s - m), O = sum O_s 2^(m_s - m) / l.
  const int d = p.spec.head_dim;
  std::vector<float> row(static_cast<size_t>(dp));
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const Group& g = groups[gi];
    const flash::ForwardItem& w = g.whole;
    const flash::Sequence& s = w.seq;
    for (int i = 0; i < w.columns(); ++i) {
      float m = -std::numeric_limits<float>::infinity();
      for (int sl = 0; sl < g.slices; ++sl) {
        const int64_t slot = group_first_slot[gi] + sl;
        m = std::max(m, partial_max[static_cast<size_t>(slot * partial_rows + i)]);
      }
      const float m_safe = std::isinf(m) ? 0.0f : m;
      float l = 0.0f;
      std::fill(row.begin(), row.end(), 0.0f);
      for (int sl = 0; sl < g.slices; ++sl) {
        const int64_t slot = group_first_slot[gi] + sl;
        const float weight =
            std::exp2(partial_max[static_cast<size_t>(slot * partial_rows + i)] - m_safe);
        l += weight * partial_sum[static_cast<size_t>(slot * partial_rows + i)];
        const float* po = &partial_out[static_cast<size_t>((slot * partial_rows + i) * dp)];
        for (int c = 0; c < d; ++c) row[static_cast<size_t>(c)] += weight * po[c];
      }
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      const int h = w.h + i / w.rows;  // column i = (head, row) as in the kernel
      const int64_t r = w.i0 + i % w.rows;
      const int64_t off = s.batch_index * p.out_strides.batch + (s.q_row0 + r) * p.out_strides.row +
                          h * p.out_strides.head;
      for (int c = 0; c < d; ++c) {
        const float x = row[static_cast<size_t>(c)] * inv;
        if (p.dtype == DType::bf16) {
          static_cast<bf16*>(p.out)[off + c] = float_to_bf16(x);
        } else {
          static_cast<float*>(p.out)[off + c] = x;
        }
      }
      if (p.lse) {
        p.lse[lse_index(p, s, h, r)] = l > 0.0f ? (m + std::log2(l)) * 0.6931471805599453f
                                                : -std::numeric_limits<float>::infinity();
      }
    }
  }
}

void attention_backward(const AttentionBackwardParams& g) {
  g.validate();
  const AttentionParams& p = g.forward;
  check_dtype(p.dtype);
  const flash::Kernels& kernels = select_kernels();
  const int d = p.spec.head_dim;
  const int dp = padded(d, kernels.width);
  const int heads = p.spec.heads.num_attention_heads();
  const int hq = p.spec.heads.num_query_heads;
  const int threads = omp_get_max_threads();
  const bool bf = p.dtype == DType::bf16;
  const std::vector<flash::Sequence> seqs = sequences(p);
  const int64_t total_rows = p.is_varlen() ? p.cu_seqlens_q[p.batch] : p.batch * p.seqlen_q;

  auto load = [bf](const void* base, int64_t i) {
    return bf ? bf16_to_float(static_cast<const bf16*>(base)[i])
              : static_cast<const float*>(base)[i];
  };
  // D = rowsum(dO * O) per attention head and row (FlashAttention-2).
  std::vector<float> delta(static_cast<size_t>(heads * std::max<int64_t>(total_rows, 1)));
  for (const flash::Sequence& s : seqs) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < s.seqlen_q; ++r) {
      for (int h = 0; h < heads; ++h) {
        const int64_t o = s.batch_index * p.out_strides.batch + (s.q_row0 + r) * p.out_strides.row +
                          h * p.out_strides.head;
        const int64_t go = s.batch_index * g.dout_strides.batch +
                           (s.q_row0 + r) * g.dout_strides.row + h * g.dout_strides.head;
        double acc = 0.0;
        for (int c = 0; c < d; ++c)
          acc += static_cast<double>(load(p.out, o + c)) * load(g.dout, go + c);
        delta[static_cast<size_t>(h * total_rows + s.global_row0 + r)] = static_cast<float>(acc);
      }
    }
  }

  std::vector<flash::BackwardItem> items;
  for (const flash::Sequence& s : seqs) {
    for (int kv = 0; kv < p.spec.heads.num_kv_heads; ++kv) {
      for (int64_t j0 = 0; j0 < s.seqlen_k; j0 += kBlockKB) {
        items.push_back(
            {s, kv, j0, static_cast<int>(std::min<int64_t>(kBlockKB, s.seqlen_k - j0))});
      }
    }
  }
  const int64_t dq_floats = std::max<int64_t>(total_rows, 1) * hq * dp;
  // One fp32 dQ accumulator per thread: several KV tiles (and, for rSQA, several attention
  // heads) add into the same dQ rows, so private sums replace atomics. Left uninitialised here:
  // each thread zeroes (and so first-touches) its own inside the parallel region.
  std::unique_ptr<float[]> dq_acc(new float[static_cast<size_t>(dq_floats * threads)]);
  const flash::BackwardContext ctx{&g, dp, delta.data(), total_rows};
  Scratch scratch(threads, flash::backward_scratch_floats(dp));
  const int64_t n = static_cast<int64_t>(items.size());
  int team = 1;
  // Deterministic: item i always goes to thread i % team and each thread adds its items in
  // order, so dQ (summed over threads in a fixed order below) is bit-identical run to run for a
  // given thread count; a dynamic schedule would let rounding depend on timing. Cyclic
  // assignment also balances causal masks, whose key blocks differ in cost.
#pragma omp parallel
  {
    const int t = omp_get_thread_num();
#pragma omp single
    team = omp_get_num_threads();
    float* acc = dq_acc.get() + dq_floats * t;
    std::fill(acc, acc + dq_floats, 0.0f);
#pragma omp for schedule(static, 1) nowait
    for (int64_t i = 0; i < n; ++i) {
      kernels.backward_item(ctx, items[static_cast<size_t>(i)], scratch.thread(t), acc);
    }
  }

  for (const flash::Sequence& s : seqs) {
#pragma omp parallel
    {
      std::vector<float> sum(static_cast<size_t>(d));
#pragma omp for schedule(static)
      for (int64_t r = 0; r < s.seqlen_q; ++r) {
        for (int h = 0; h < hq; ++h) {
          const float* src = dq_acc.get() + ((s.global_row0 + r) * hq + h) * dp;
          const int64_t off = s.batch_index * g.dq_strides.batch +
                              (s.q_row0 + r) * g.dq_strides.row + h * g.dq_strides.head;
          std::copy(src, src + d, sum.begin());
          for (int t = 1; t < team; ++t) {
            const float* part = src + dq_floats * t;
            for (int c = 0; c < d; ++c) sum[static_cast<size_t>(c)] += part[c];
          }
          if (bf) {
            bf16* dst = static_cast<bf16*>(g.dq) + off;
            for (int c = 0; c < d; ++c) dst[c] = float_to_bf16(sum[static_cast<size_t>(c)]);
          } else {
            std::copy(sum.begin(), sum.end(), static_cast<float*>(g.dq) + off);
          }
        }
      }
    }
  }
}

}  // namespace sqa::cpu
