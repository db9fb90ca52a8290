// Model configuration: HF-style config.json parsing with errors that name the field, the value
// and the rule; the parameter layout; parameter and FLOP counts.
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "sqa/error.hpp"
#include "sqa/model.hpp"

namespace sqa {
namespace {

using json = nlohmann::json;

const char* activation_name(Activation a) {
  return a == Activation::gelu ? "gelu" : "swiglu";
}
const char* aux_loss_name(AuxLoss a) {
  switch (a) {
    case AuxLoss::none:
      return "none";
    case AuxLoss::paper:
      return "paper";
    case AuxLoss::switch_:
      return "switch";
  }
  return "?";
}

// Reads an integer field, naming the field and the origin on a type error.
int get_int(const json& j, const std::string& key, const std::string& origin) {
  const json& v = j.at(key);
  require(v.is_number_integer(), origin, ": field '", key, "' (", v.dump(), ") must be an integer");
  const auto x = v.get<int64_t>();
  require(x >= -1 && x <= (int64_t{1} << 30), origin, ": field '", key, "' (", x,
          ") is out of range [-1, 2^30]");
  return static_cast<int>(x);
}
double get_double(const json& j, const std::string& key, const std::string& origin) {
  const json& v = j.at(key);
  require(v.is_number(), origin, ": field '", key, "' (", v.dump(), ") must be a number");
  return v.get<double>();
}
bool get_bool(const json& j, const std::string& key, const std::string& origin) {
  const json& v = j.at(key);
  require(v.is_boolean(), origin, ": field '", key, "' (", v.dump(), ") must be true or false");
  return v.get<bool>();
}
std::string get_string(const json& j, const std::string& key, const std::string& origin) {
  const json& v = j.at(key);
  require(v.is_string(), origin, ": field '", key, "' (", v.dump(), ") must be a string");
  return v.get<std::string>();
}

// Head layout and window of one layer from `j` (the top level or one layer_types entry),
// falling back to `base`.
LayerConfig parse_layer(const json& j, const LayerConfig& base, int baseline_heads,
                        const std::string& origin) {
  LayerConfig layer = base;
  const bool has_variant = j.contains("attention_variant");
  const bool has_q = j.contains("num_query_heads");
  const bool has_kv = j.contains("num_key_value_heads");
  require(!(has_variant && (has_q || has_kv)), origin,
          ": give either 'attention_variant' or 'num_query_heads'/'num_key_value_heads', not "
          "both");
  if (has_variant) {
    const std::string name = get_string(j, "attention_variant", origin);
    try {
      layer.heads = preset_layout(parse_variant(name), baseline_heads);
    } catch (const Error& e) {
      throw Error(detail::concat(origin, ": field 'attention_variant': ", e.what()));
    }
  }
  if (has_q) layer.heads.num_query_heads = get_int(j, "num_query_heads", origin);
  if (has_kv) layer.heads.num_kv_heads = get_int(j, "num_key_value_heads", origin);
  if (j.contains("sliding_window")) {
    layer.sliding_window =
        j.at("sliding_window").is_null() ? 0 : get_int(j, "sliding_window", origin);
  }
  return layer;
}

const std::set<std::string> kKnownKeys = {"model_type",
                                          "name",
                                          "architecture",
                                          "vocab_size",
                                          "hidden_size",
                                          "num_hidden_layers",
                                          "num_attention_heads",
                                          "head_dim",
                                          "attention_variant",
                                          "num_query_heads",
                                          "num_key_value_heads",
                                          "sliding_window",
                                          "layer_types",
                                          "intermediate_size",
                                          "hidden_act",
                                          "max_position_embeddings",
                                          "rope_theta",
                                          "rms_norm_eps",
                                          "ffn_dropout",
                                          "final_norm",
                                          "tie_word_embeddings",
                                          "lm_head_bias",
                                          "num_experts",
                                          "num_experts_per_tok",
                                          "moe_intermediate_size",
                                          "router_aux_loss",
                                          "router_aux_loss_coef",
                                          "initializer",
                                          "initializer_range",
                                          "parameter_count"};
const std::set<std::string> kLayerKeys = {"attention_variant", "num_query_heads",
                                          "num_key_value_heads", "sliding_window"};

}  // namespace

int64_t ParamSpec::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

AttentionSpec ModelConfig::attention_spec(int layer) const {
  const LayerConfig& l = layers.at(static_cast<size_t>(layer));
  AttentionSpec spec;
  spec.num_baseline_heads = num_baseline_heads;
  spec.heads = l.heads;
  spec.head_dim = head_dim;
  if (l.sliding_window > 0) {
    // Decoder: token i sees [i - w + 1, i]. Encoder: w - 1 tokens either side.
    spec.window = causal ? Window::sliding(l.sliding_window)
                         : Window{l.sliding_window - 1, l.sliding_window - 1};
  } else {
    spec.window = causal ? Window::causal() : Window::none();
  }
  return spec;
}

void ModelConfig::validate() const {
  require(vocab_size >= 2, "vocab_size (", vocab_size, ") must be at least 2");
  require(d_model >= 1, "hidden_size (", d_model, ") must be at least 1");
  require(num_layers >= 1, "num_hidden_layers (", num_layers, ") must be at least 1");
  require(num_baseline_heads >= 1, "num_attention_heads (", num_baseline_heads,
          ") must be at least 1");
  require(head_dim >= 2 && head_dim % 2 == 0 && head_dim <= kMaxHeadDim, "head_dim (", head_dim,
          ") must be even (RoPE rotates channel pairs) and in [2, ", kMaxHeadDim, "]");
  require(max_seq_len >= 1, "max_position_embeddings (", max_seq_len, ") must be at least 1");
  require(static_cast<int>(layers.size()) == num_layers, "layer_types has ", layers.size(),
          " entries but num_hidden_layers is ", num_layers);
  for (int i = 0; i < num_layers; ++i) {
    const LayerConfig& l = layers[static_cast<size_t>(i)];
    const int hq = l.heads.num_query_heads, hkv = l.heads.num_kv_heads;
    require(hq >= 1 && hkv >= 1, "layer ", i, ": num_query_heads (", hq,
            ") and num_key_value_heads (", hkv, ") must be at least 1");
    require(hq % hkv == 0 || hkv % hq == 0, "layer ", i, ": num_query_heads (", hq,
            ") must be a multiple of num_key_value_heads (", hkv, "), or the reverse for rSQA");
    require(l.sliding_window >= 0, "layer ", i, ": sliding_window (", l.sliding_window,
            ") must be >= 1 tokens, or 0/null for full attention");
    attention_spec(i).validate();
  }
  require(rope_theta > 0, "rope_theta (", rope_theta, ") must be > 0");
  require(norm_eps > 0, "rms_norm_eps (", norm_eps, ") must be > 0");
  require(ffn_dropout >= 0 && ffn_dropout < 1, "ffn_dropout (", ffn_dropout, ") must be in [0, 1)");
  require(init_std > 0, "initializer_range (", init_std, ") must be > 0");
  if (is_moe()) {
    require(top_k >= 1 && top_k <= num_experts, "num_experts_per_tok (", top_k,
            ") must be in [1, num_experts (", num_experts, ")]");
    require(expert_ff_dim >= 1, "moe_intermediate_size (", expert_ff_dim,
            ") must be at least 1 with num_experts > 0");
    require(aux_loss_coef >= 0, "router_aux_loss_coef (", aux_loss_coef, ") must be >= 0");
  } else {
    require(num_experts == 0, "num_experts (", num_experts, ") must be >= 0");
    require(ff_dim >= 1, "intermediate_size (", ff_dim, ") must be at least 1");
  }
}

ModelConfig parse_config(const std::string& text, const std::string& origin) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(detail::concat(origin, ": not valid JSON: ", e.what()));
  }
  require(j.is_object(), origin, ": the top level must be a JSON object");
  for (const auto& item : j.items()) {
    require(kKnownKeys.count(item.key()) > 0, origin, ": unknown field '", item.key(),
            "' (see include/sqa/model.hpp for the keys)");
  }
  for (const char* key : {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                          "max_position_embeddings"}) {
    require(j.contains(key), origin, ": missing required field '", key, "'");
  }
  if (j.contains("model_type")) {
    const std::string t = get_string(j, "model_type", origin);
    require(t == "sqa", origin, ": model_type ('", t, "') must be 'sqa'");
  }
  ModelConfig c;
  if (j.contains("name")) c.name = get_string(j, "name", origin);
  if (j.contains("architecture")) {
    const std::string a = get_string(j, "architecture", origin);
    require(a == "decoder" || a == "encoder", origin, ": architecture ('", a,
            "') must be 'decoder' (causal) or 'encoder' (bidirectional)");
    c.causal = a == "decoder";
  }
  c.vocab_size = get_int(j, "vocab_size", origin);
  c.d_model = get_int(j, "hidden_size", origin);
  c.num_layers = get_int(j, "num_hidden_layers", origin);
  c.num_baseline_heads = get_int(j, "num_attention_heads", origin);
  c.max_seq_len = get_int(j, "max_position_embeddings", origin);
  require(c.num_baseline_heads >= 1, origin, ": num_attention_heads (", c.num_baseline_heads,
          ") must be at least 1");
  if (j.contains("head_dim")) {
    c.head_dim = get_int(j, "head_dim", origin);
  } else {
    require(c.d_model % c.num_baseline_heads == 0, origin, ": hidden_size (", c.d_model,
            ") must be divisible by num_attention_heads (", c.num_baseline_heads,
            ") when head_dim is not given");
    c.head_dim = c.d_model / c.num_baseline_heads;
  }
  if (j.contains("num_experts")) c.num_experts = get_int(j, "num_experts", origin);
  if (j.contains("intermediate_size")) c.ff_dim = get_int(j, "intermediate_size", origin);
  require(c.num_experts > 0 || j.contains("intermediate_size"), origin,
          ": missing required field 'intermediate_size' (dense FFN, num_experts = 0)");
  if (j.contains("hidden_act")) {
    const std::string a = get_string(j, "hidden_act", origin);
    require(a == "swiglu" || a == "gelu", origin, ": hidden_act ('", a,
            "') must be 'swiglu' or 'gelu'");
    c.activation = a == "gelu" ? Activation::gelu : Activation::swiglu;
  }
  if (j.contains("rope_theta")) c.rope_theta = get_double(j, "rope_theta", origin);
  if (j.contains("rms_norm_eps")) c.norm_eps = get_double(j, "rms_norm_eps", origin);
  if (j.contains("ffn_dropout")) c.ffn_dropout = get_double(j, "ffn_dropout", origin);
  if (j.contains("final_norm")) c.final_norm = get_bool(j, "final_norm", origin);
  if (j.contains("tie_word_embeddings")) {
    c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", origin);
  }
  if (j.contains("lm_head_bias")) c.lm_head_bias = get_bool(j, "lm_head_bias", origin);
  if (c.num_experts > 0) {
    require(j.contains("moe_intermediate_size"), origin,
            ": missing required field 'moe_intermediate_size' (num_experts > 0)");
    c.expert_ff_dim = get_int(j, "moe_intermediate_size", origin);
    if (j.contains("num_experts_per_tok")) c.top_k = get_int(j, "num_experts_per_tok", origin);
    if (j.contains("router_aux_loss")) {
      const std::string a = get_string(j, "router_aux_loss", origin);
      require(a == "paper" || a == "switch" || a == "none", origin, ": router_aux_loss ('", a,
              "') must be 'paper', 'switch' or 'none'");
      c.aux_loss = a == "paper" ? AuxLoss::paper : a == "switch" ? AuxLoss::switch_ : AuxLoss::none;
    }
    if (j.contains("router_aux_loss_coef")) {
      c.aux_loss_coef = get_double(j, "router_aux_loss_coef", origin);
    }
  }
  if (j.contains("initializer")) {
    const std::string a = get_string(j, "initializer", origin);
    require(a == "pytorch" || a == "normal", origin, ": initializer ('", a,
            "') must be 'pytorch' or 'normal'");
    c.init = a == "normal" ? Init::normal : Init::pytorch;
  }
  if (j.contains("initializer_range")) c.init_std = get_double(j, "initializer_range", origin);

  // Default layer: MHA with the baseline heads unless a preset or explicit counts are given.
  LayerConfig base;
  base.heads = {c.num_baseline_heads, c.num_baseline_heads};
  base = parse_layer(j, base, c.num_baseline_heads, origin);
  c.layers.assign(static_cast<size_t>(std::max(c.num_layers, 0)), base);
  if (j.contains("layer_types")) {
    const json& lt = j.at("layer_types");
    require(lt.is_array(), origin, ": field 'layer_types' must be an array of objects");
    require(static_cast<int>(lt.size()) == c.num_layers, origin, ": layer_types has ", lt.size(),
            " entries but num_hidden_layers is ", c.num_layers);
    for (size_t i = 0; i < lt.size(); ++i) {
      const std::string where = detail::concat(origin, ": layer_types[", i, "]");
      require(lt[i].is_object(), where, " must be an object");
      for (const auto& item : lt[i].items()) {
        require(kLayerKeys.count(item.key()) > 0, where, ": unknown field '", item.key(),
                "' (expected attention_variant, num_query_heads, num_key_value_heads, "
                "sliding_window)");
      }
      c.layers[i] = parse_layer(lt[i], base, c.num_baseline_heads, where);
    }
  }
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(detail::concat(origin, ": ", e.what()));
  }
  if (j.contains("parameter_count")) {
    // Informative field written by config_to_json; a mismatch means the file was hand-edited
    // inconsistently, which is worth stopping for.
    const int64_t want = j.at("parameter_count").get<int64_t>();
    require(want == count_parameters(c), origin, ": parameter_count (", want,
            ") does not match the architecture (", count_parameters(c), ")");
  }
  return c;
}

ModelConfig load_config(const std::string& path) {
  std::ifstream in(path);
  require(static_cast<bool>(in), "cannot open config file '", path, "'");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_config(ss.str(), path);
}

std::string config_to_json(const ModelConfig& c) {
  json j;
  j["model_type"] = "sqa";
  if (!c.name.empty()) j["name"] = c.name;
  j["architecture"] = c.causal ? "decoder" : "encoder";
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.d_model;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_baseline_heads;
  j["head_dim"] = c.head_dim;
  j["max_position_embeddings"] = c.max_seq_len;
  json layers = json::array();
  for (const LayerConfig& l : c.layers) {
    layers.push_back({{"num_query_heads", l.heads.num_query_heads},
                      {"num_key_value_heads", l.heads.num_kv_heads},
                      {"sliding_window", l.sliding_window}});
  }
  j["layer_types"] = layers;
  if (!c.is_moe()) j["intermediate_size"] = c.ff_dim;
  j["hidden_act"] = activation_name(c.activation);
  j["rope_theta"] = c.rope_theta;
  j["rms_norm_eps"] = c.norm_eps;
  j["ffn_dropout"] = c.ffn_dropout;
  j["final_norm"] = c.final_norm;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["lm_head_bias"] = c.lm_head_bias;
  if (c.is_moe()) {
    j["num_experts"] = c.num_experts;
    j["num_experts_per_tok"] = c.top_k;
    j["moe_intermediate_size"] = c.expert_ff_dim;
    j["router_aux_loss"] = aux_loss_name(c.aux_loss);
    j["router_aux_loss_coef"] = c.aux_loss_coef;
  }
  j["initializer"] = c.init == Init::normal ? "normal" : "pytorch";
  j["initializer_range"] = c.init_std;
  j["parameter_count"] = count_parameters(c);
  return j.dump(2) + "\n";
}

std::vector<ParamSpec> parameter_specs(const ModelConfig& c) {
  std::vector<ParamSpec> specs;
  int64_t offset = 0;
  auto add = [&](std::string name, std::vector<int64_t> shape) {
    ParamSpec p{std::move(name), std::move(shape), offset};
    offset += p.numel();
    specs.push_back(std::move(p));
  };
  const int64_t d = c.d_model, dh = c.head_dim;
  add("embed.weight", {c.vocab_size, d});
  auto add_ffn = [&](const std::string& prefix, int64_t ff) {
    const int64_t fc1_out = c.activation == Activation::swiglu ? 2 * ff : ff;
    add(prefix + "fc1.weight", {fc1_out, d});
    add(prefix + "fc1.bias", {fc1_out});
    add(prefix + "fc2.weight", {d, ff});
    add(prefix + "fc2.bias", {d});
  };
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    const HeadLayout& h = c.layers[static_cast<size_t>(i)].heads;
    add(p + "attn_norm.weight", {d});
    add(p + "attn.q_proj.weight", {h.num_query_heads * dh, d});
    add(p + "attn.k_proj.weight", {h.num_kv_heads * dh, d});
    add(p + "attn.v_proj.weight", {h.num_kv_heads * dh, d});
    add(p + "attn.o_proj.weight", {d, h.num_attention_heads() * dh});
    add(p + "attn.o_proj.bias", {d});
    add(p + "ffn_norm.weight", {d});
    if (c.is_moe()) {
      add(p + "ffn.router.weight", {c.num_experts, d});
      for (int e = 0; e < c.num_experts; ++e) {
        add_ffn(p + "ffn.experts." + std::to_string(e) + ".", c.expert_ff_dim);
      }
    } else {
      add_ffn(p + "ffn.", c.ff_dim);
    }
  }
  if (c.final_norm) add("final_norm.weight", {d});
  if (!c.tie_word_embeddings) add("lm_head.weight", {c.vocab_size, d});
  if (c.lm_head_bias) add("lm_head.bias", {c.vocab_size});
  return specs;
}

int64_t count_parameters(const ModelConfig& config) {
  int64_t n = 0;
  for (const ParamSpec& p : parameter_specs(config)) n += p.numel();
  return n;
}

int64_t count_active_parameters(const ModelConfig& c) {
  int64_t n = 0;
  for (const ParamSpec& p : parameter_specs(c)) {
    if (p.name.find(".experts.") != std::string::npos) continue;
    n += p.numel();
  }
  if (c.is_moe()) {
    const int64_t fc1_out =
        c.activation == Activation::swiglu ? 2 * c.expert_ff_dim : c.expert_ff_dim;
    const int64_t expert = fc1_out * (c.d_model + 1) + c.d_model * c.expert_ff_dim + c.d_model;
    n += static_cast<int64_t>(c.num_layers) * c.top_k * expert;
  }
  return n;
}

double forward_flops(const ModelConfig& c, int64_t batch, int64_t seqlen) {
  // Matmul parameters: everything except the embedding table (a lookup); with tied
  // embeddings the table is also the LM head, which is a matmul.
  const double embed = c.tie_word_embeddings ? 0.0 : static_cast<double>(c.vocab_size) * c.d_model;
  const double matmul_params = static_cast<double>(count_active_parameters(c)) - embed;
  double flops = 2.0 * matmul_params * static_cast<double>(batch * seqlen);
  for (int i = 0; i < c.num_layers; ++i) {
    flops += attention_forward_flops(c.attention_spec(i), batch, seqlen, seqlen);
  }
  return flops;
}

double training_flops(const ModelConfig& c, int64_t batch, int64_t seqlen) {
  const double embed = c.tie_word_embeddings ? 0.0 : static_cast<double>(c.vocab_size) * c.d_model;
  const double matmul_params = static_cast<double>(count_active_parameters(c)) - embed;
  double flops = 6.0 * matmul_params * static_cast<double>(batch * seqlen);
  for (int i = 0; i < c.num_layers; ++i) {
    const AttentionSpec spec = c.attention_spec(i);
    flops += attention_forward_flops(spec, batch, seqlen, seqlen) +
             attention_backward_flops(spec, batch, seqlen, seqlen);
  }
  return flops;
}

void validate_batch(const ModelConfig& config, const int32_t* tokens, const int32_t* targets,
                    int64_t batch, int64_t seqlen) {
  require(batch >= 1 && seqlen >= 1, "batch (", batch, ") and seqlen (", seqlen,
          ") must be at least 1");
  require(seqlen <= config.max_seq_len, "seqlen (", seqlen, ") exceeds max_position_embeddings (",
          config.max_seq_len, ")");
  const int64_t n = batch * seqlen, vocab = config.vocab_size;
  for (int64_t i = 0; i < n; ++i) {
    require(tokens[i] >= 0 && tokens[i] < vocab, "token id ", tokens[i], " at position ", i,
            " is outside the vocabulary [0, ", vocab, ")");
    if (targets) {
      require(targets[i] >= 0 && targets[i] < vocab, "target id ", targets[i], " at position ", i,
              " is outside the vocabulary [0, ", vocab, ")");
    }
  }
}

}  // namespace sqa
