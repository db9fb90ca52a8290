#include <gtest/gtest.h>

#include <set>
#include <string>

#include "sqa/error.hpp"
#include "sqa/spec.hpp"
#include "test_util.hpp"

namespace sqa {
namespace {

using test::expect_error;

TEST(Spec, PresetsMatchPaperTableForH16) {
  struct Row {
    Variant v;
    int hq, hkv;
  };
  for (Row r : {Row{Variant::mha, 16, 16}, Row{Variant::gqa, 16, 4}, Row{Variant::mqa, 16, 1},
                Row{Variant::sqa, 8, 4}, Row{Variant::ssqa, 8, 8}, Row{Variant::xsqa, 4, 4},
                Row{Variant::xsmqa, 4, 1}, Row{Variant::lsqa, 12, 4}, Row{Variant::rsqa, 4, 8}}) {
    const HeadLayout l = preset_layout(r.v, 16);
    EXPECT_EQ(l.num_query_heads, r.hq) << variant_name(r.v);
    EXPECT_EQ(l.num_kv_heads, r.hkv) << variant_name(r.v);
    EXPECT_EQ(parse_variant(variant_name(r.v)), r.v);
  }
}

TEST(Spec, HeadPairGroupsConsecutiveQueryHeads) {
  const HeadLayout sqa{8, 4};
  for (int h = 0; h < 8; ++h) {
    EXPECT_EQ(head_pair(sqa, h).query_head, h);
    EXPECT_EQ(head_pair(sqa, h).kv_head, h / 2);
  }
}

TEST(Spec, HeadPairTilesQueriesForReverseSqa) {
  const HeadLayout rsqa{4, 8};
  EXPECT_EQ(rsqa.num_attention_heads(), 8);
  std::set<int> seen;
  for (int h = 0; h < 8; ++h) {
    EXPECT_EQ(head_pair(rsqa, h).kv_head, h);
    EXPECT_EQ(head_pair(rsqa, h).query_head, h % 4);  // q0..q3, q0..q3
    seen.insert(head_pair(rsqa, h).query_head);
  }
  EXPECT_EQ(seen.size(), 4u);
}

TEST(Spec, WindowVisibleKeys) {
  // Causal, square: row i sees [0, i].
  for (int i = 0; i < 5; ++i) {
    const KeyRange r = visible_keys(Window::causal(), i, 5, 5);
    EXPECT_EQ(r.begin, 0);
    EXPECT_EQ(r.end, i + 1);
  }
  // Decode: one query against 7 keys sees all of them (bottom-right alignment).
  EXPECT_EQ(visible_keys(Window::causal(), 0, 1, 7).end, 7);
  // Sliding window of 3: row 4 sees [2, 4].
  const KeyRange w = visible_keys(Window::sliding(3), 4, 6, 6);
  EXPECT_EQ(w.begin, 2);
  EXPECT_EQ(w.end, 5);
  EXPECT_EQ(visible_pairs(Window::causal(), 4, 4), 10);
  EXPECT_EQ(visible_pairs(Window::none(), 3, 5), 15);
}

TEST(Spec, FlopsFollowPaperFormula) {
  const AttentionSpec mha = make_spec(Variant::mha, 16, 16);
  const AttentionSpec xsqa = make_spec(Variant::xsqa, 16, 16);
  EXPECT_DOUBLE_EQ(attention_forward_flops(mha, 1, 1024, 1024), 4.0 * 1024 * 1024 * 16 * 16);
  EXPECT_DOUBLE_EQ(
      attention_forward_flops(mha, 1, 1024, 1024) / attention_forward_flops(xsqa, 1, 1024, 1024),
      4.0);
  EXPECT_DOUBLE_EQ(attention_backward_flops(mha, 2, 64, 64),
                   2.5 * attention_forward_flops(mha, 2, 64, 64));
  // 2 N d_model d_head (2 H_q + 2 H_kv)
  EXPECT_DOUBLE_EQ(projection_flops(mha, 10, 256), 2.0 * 10 * 256 * 16 * 64);
}

TEST(SpecValidation, HeadRatioRuleNamesBothValues) {
  AttentionSpec s;
  s.heads = {6, 4};
  s.head_dim = 64;
  expect_error([&] { s.validate(); },
               {"num_query_heads (6)", "multiple of num_kv_heads (4)", "rSQA"});
}

TEST(SpecValidation, HeadCountsMustBePositive) {
  AttentionSpec s;
  s.heads = {0, 1};
  s.head_dim = 64;
  expect_error([&] { s.validate(); }, {"num_query_heads (0)", "at least 1"});
  s.heads = {4, 0};
  expect_error([&] { s.validate(); }, {"num_kv_heads (0)", "at least 1"});
}

TEST(SpecValidation, HeadDimRange) {
  AttentionSpec s;
  s.heads = {4, 4};
  s.head_dim = 300;
  expect_error([&] { s.validate(); }, {"head_dim (300)", "[1, 256]"});
}

TEST(SpecValidation, WindowAndScale) {
  AttentionSpec s;
  s.heads = {4, 4};
  s.head_dim = 64;
  s.window = {-5, 0};
  expect_error([&] { s.validate(); }, {"window left (-5)"});
  s.window = {3, -2};
  expect_error([&] { s.validate(); }, {"window right (-2)"});
  s.window = Window::none();
  s.softmax_scale = -1.0f;
  expect_error([&] { s.validate(); }, {"softmax_scale (-1)"});
}

TEST(SpecValidation, PresetDivisibilityAndNames) {
  expect_error([] { preset_layout(Variant::sqa, 6); }, {"sqa", "H (6)", "divisible by 4"});
  expect_error([] { parse_variant("foo"); }, {"'foo'", "mha gqa"});
}

}  // namespace
}  // namespace sqa
