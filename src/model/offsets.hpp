// Where each parameter of parameter_specs() starts in the model's flat weight buffer, by role.
// The one place that maps the PyTorch tensor names to offsets; the CPU model (model.cpp) and the
// CUDA model (cuda/model_cuda.cu) both index their weights, gradients and AdamW moments with it.
#pragma once

#include <cstdint>
#include <vector>

#include "sqa/model.hpp"

namespace sqa::detail {

struct FfnOffsets {
  int64_t fc1_w = 0, fc1_b = 0, fc2_w = 0, fc2_b = 0;
};

struct LayerOffsets {
  int64_t attn_norm = 0, q = 0, k = 0, v = 0, o_w = 0, o_b = 0, ffn_norm = 0;
  int64_t router = -1;              // MoE only
  FfnOffsets ffn;                   // dense only
  std::vector<FfnOffsets> experts;  // MoE only
  // k follows q and v follows k with nothing between: one (H_q + 2 H_kv) x d matmul can
  // project all three (the CUDA model relies on it).
  bool qkv_adjacent = false;
};

struct ModelOffsets {
  int64_t embed = 0, final_norm = -1, head_w = 0, head_b = -1;  // -1: the model has none
  std::vector<LayerOffsets> layers;
};

// params must be parameter_specs(config).
ModelOffsets model_offsets(const ModelConfig& config, const std::vector<ParamSpec>& params);

}  // namespace sqa::detail
