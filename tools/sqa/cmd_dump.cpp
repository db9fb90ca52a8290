// `sqa dump`: one forward and backward of the model at given weights on a given batch, written
// in the exchange format of bench/torch_reference.py compare (docs/dev/torch-reference.md):
// logits, loss, aux_loss and grad.<parameter> for every parameter, as F32, with metadata
// "precision". It is how our model is checked against the PyTorch reference.
#include <cstdio>
#include <string>
#include <vector>

#include "sqa/args.hpp"
#include "sqa/commands.hpp"
#include "sqa/error.hpp"
#include "sqa/model.hpp"
#include "sqa/model_cuda.hpp"
#include "sqa/safetensors.hpp"

namespace sqa::cli {
namespace {

constexpr const char* kUsage =
    "usage: sqa dump --config FILE --weights FILE.safetensors --batch FILE.safetensors\n"
    "                --out FILE.safetensors [--precision fp32|fp64] [--device cpu|cuda]\n"
    "\n"
    "Runs forward and backward once (dropout off, zeroed gradients, no optimizer step) and\n"
    "writes logits (B, T, vocab), loss [1], aux_loss [1] and grad.<name> for every parameter,\n"
    "all F32, with metadata precision. --batch holds int tokens and targets (B, T) and an\n"
    "optional float loss_mask (B, T), as written by `bench/torch_reference.py make-case`.\n"
    "On the CPU, fp32 runs the training model and fp64 the float64 model used for gradient\n"
    "checks; --device cuda runs the GPU model (bf16 compute, fp32 master weights), precision\n"
    "bf16.\n";

struct DumpBatch {
  std::vector<int32_t> tokens, targets;
  std::vector<float> loss_mask;  // empty: every position counts
  int64_t batch = 0, seqlen = 0;
};

std::vector<int32_t> int_tensor(const SafeTensorsFile& f, const std::string& name,
                                const std::vector<int64_t>& shape, int64_t vocab) {
  const std::vector<int64_t> wide = f.at(name, shape).to_i64();
  std::vector<int32_t> out(wide.size());
  for (size_t i = 0; i < wide.size(); ++i) {
    require(wide[i] >= 0 && wide[i] < vocab, f.origin(), ": ", name, "[", i, "] (", wide[i],
            ") must be a token id in [0, vocab_size = ", vocab, ")");
    out[i] = static_cast<int32_t>(wide[i]);
  }
  return out;
}

DumpBatch read_batch(const std::string& path, int64_t vocab) {
  const SafeTensorsFile f = SafeTensorsFile::load(path);
  const TensorView& tokens = f.at("tokens");
  require(tokens.shape.size() == 2 && tokens.shape[0] > 0 && tokens.shape[1] > 0, path,
          ": 'tokens' must have shape (batch, seqlen) with both > 0");
  DumpBatch b;
  b.batch = tokens.shape[0];
  b.seqlen = tokens.shape[1];
  b.tokens = int_tensor(f, "tokens", tokens.shape, vocab);
  b.targets = int_tensor(f, "targets", tokens.shape, vocab);
  if (f.contains("loss_mask")) b.loss_mask = f.at("loss_mask", tokens.shape).to_f32();
  return b;
}

// Everything a dump holds, whichever model produced it.
struct DumpResult {
  std::vector<float> logits;  // (batch * seqlen, vocab)
  std::vector<float> grads;   // flat, parameter_specs() offsets
  LossStats stats;
};

std::vector<float> flat_weights(const ModelConfig& config, const SafeTensorsFile& weights) {
  std::vector<float> w(static_cast<size_t>(count_parameters(config)));
  for (const ParamSpec& p : parameter_specs(config)) {
    weights.at(p.name, p.shape).copy_to_f32(w.data() + p.offset);
  }
  return w;
}

const float* mask_of(const DumpBatch& b) {
  return b.loss_mask.empty() ? nullptr : b.loss_mask.data();
}

template <typename Real>
DumpResult run_cpu(const ModelConfig& config, const std::vector<float>& w, const DumpBatch& b) {
  Model<Real> model(config);
  for (size_t i = 0; i < w.size(); ++i) model.weights()[i] = static_cast<Real>(w[i]);
  model.zero_grad();
  DumpResult r;
  r.stats = model.forward(b.tokens.data(), b.targets.data(), mask_of(b), b.batch, b.seqlen,
                          /*training=*/true, /*dropout_seed=*/0, /*loss_scale=*/1.0);
  model.backward();
  const Real* logits = model.logits();
  r.logits.assign(logits, logits + b.batch * b.seqlen * config.vocab_size);
  r.grads.assign(model.grads().begin(), model.grads().end());
  return r;
}

DumpResult run_cuda(const ModelConfig& config, const std::vector<float>& w, const DumpBatch& b) {
  CudaModel model(config);
  model.set_weights(w.data());
  model.zero_grad();
  DumpResult r;
  r.stats = model.forward(b.tokens.data(), b.targets.data(), mask_of(b), b.batch, b.seqlen,
                          /*training=*/true, /*dropout_seed=*/0, /*loss_scale=*/1.0);
  model.backward();
  r.logits = model.logits();
  r.grads.resize(w.size());
  model.get_grads(r.grads.data());
  return r;
}

void write_dump(const ModelConfig& config, const DumpBatch& b, const DumpResult& r,
                const std::string& precision, const std::string& out) {
  SafeTensorsWriter writer;
  writer.add_f32("logits", {b.batch, b.seqlen, static_cast<int64_t>(config.vocab_size)}, r.logits);
  const float loss = static_cast<float>(r.stats.loss);
  const float aux = static_cast<float>(r.stats.aux_loss);
  writer.add_f32("loss", {1}, std::span<const float>(&loss, 1));
  writer.add_f32("aux_loss", {1}, std::span<const float>(&aux, 1));
  for (const ParamSpec& p : parameter_specs(config)) {
    writer.add_f32(
        "grad." + p.name, p.shape,
        std::span<const float>(r.grads.data() + p.offset, static_cast<size_t>(p.numel())));
  }
  writer.set_metadata("precision", precision);
  writer.set_metadata("config", config_to_json(config));
  writer.save(out);
  std::printf("dump: %s model, batch %lld x %lld, loss %.6f, aux_loss %.6f, %zu tensors -> %s\n",
              precision.c_str(), static_cast<long long>(b.batch), static_cast<long long>(b.seqlen),
              r.stats.loss, r.stats.aux_loss, writer.size(), out.c_str());
}

}  // namespace

int cmd_dump(const std::vector<std::string>& argv) {
  const Args a(argv, {"help"});
  a.reject_unknown({"config", "weights", "batch", "out", "precision", "device", "help"});
  if (a.flag("help")) {
    std::printf("%s", kUsage);
    return 0;
  }
  ModelConfig config = load_config(a.require("config"));
  // The gradient of the deterministic model: the exchange format has dropout off.
  config.ffn_dropout = 0.0;
  const SafeTensorsFile weights = SafeTensorsFile::load(a.require("weights"));
  const DumpBatch batch = read_batch(a.require("batch"), config.vocab_size);
  require(batch.seqlen <= config.max_seq_len, "the batch's seqlen (", batch.seqlen,
          ") must be at most max_position_embeddings (", config.max_seq_len, ")");
  const std::string device = a.get("device", "cpu");
  require(device == "cpu" || device == "cuda", "option --device (", device,
          ") must be cpu or cuda");
  const std::string precision = a.get("precision", device == "cuda" ? "bf16" : "fp32");
  const std::string out = a.require("out");
  const std::vector<float> w = flat_weights(config, weights);
  if (device == "cuda") {
    require(precision == "bf16", "option --precision (", precision,
            ") must be bf16 with --device cuda (the GPU model computes in bf16)");
    write_dump(config, batch, run_cuda(config, w, batch), precision, out);
  } else if (precision == "fp32") {
    write_dump(config, batch, run_cpu<float>(config, w, batch), precision, out);
  } else if (precision == "fp64") {
    write_dump(config, batch, run_cpu<double>(config, w, batch), precision, out);
  } else {
    throw Error("option --precision (" + precision + ") must be fp32 or fp64 on the CPU");
  }
  return 0;
}

}  // namespace sqa::cli
