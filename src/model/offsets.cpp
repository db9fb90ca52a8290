#include "model/offsets.hpp"

#include <map>
#include <string>

#include "sqa/error.hpp"

namespace sqa::detail {

ModelOffsets model_offsets(const ModelConfig& config, const std::vector<ParamSpec>& params) {
  std::map<std::string, const ParamSpec*> by_name;
  for (const ParamSpec& p : params) by_name[p.name] = &p;
  auto spec = [&](const std::string& name) -> const ParamSpec& {
    const auto it = by_name.find(name);
    require(it != by_name.end(), "internal: no parameter named '", name, "' in the layout");
    return *it->second;
  };
  auto at = [&](const std::string& name) { return spec(name).offset; };
  auto ffn = [&](const std::string& p) {
    return FfnOffsets{at(p + "fc1.weight"), at(p + "fc1.bias"), at(p + "fc2.weight"),
                      at(p + "fc2.bias")};
  };
  ModelOffsets m;
  m.embed = at("embed.weight");
  if (config.final_norm) m.final_norm = at("final_norm.weight");
  m.head_w = config.tie_word_embeddings ? m.embed : at("lm_head.weight");
  if (config.lm_head_bias) m.head_b = at("lm_head.bias");
  for (int i = 0; i < config.num_layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    LayerOffsets l;
    l.attn_norm = at(p + "attn_norm.weight");
    l.q = at(p + "attn.q_proj.weight");
    l.k = at(p + "attn.k_proj.weight");
    l.v = at(p + "attn.v_proj.weight");
    l.qkv_adjacent = l.k == l.q + spec(p + "attn.q_proj.weight").numel() &&
                     l.v == l.k + spec(p + "attn.k_proj.weight").numel();
    l.o_w = at(p + "attn.o_proj.weight");
    l.o_b = at(p + "attn.o_proj.bias");
    l.ffn_norm = at(p + "ffn_norm.weight");
    if (config.is_moe()) {
      l.router = at(p + "ffn.router.weight");
      for (int e = 0; e < config.num_experts; ++e) {
        l.experts.push_back(ffn(p + "ffn.experts." + std::to_string(e) + "."));
      }
    } else {
      l.ffn = ffn(p + "ffn.");
    }
    m.layers.push_back(std::move(l));
  }
  return m;
}

}  // namespace sqa::detail
