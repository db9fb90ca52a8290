#!/usr/bin/env python3
"""The sqa transformer in plain PyTorch: the correctness oracle for our model and the in-run
peer for the whole-model throughput benchmarks (issue 4, issue 5 Table 3).

It reads the same HF-style config.json as src/model/config.cpp (same keys, defaults and rules)
and builds an nn.Module whose state_dict names and shapes are our safetensors names
(include/sqa/model.hpp), so `model.load_state_dict(safetensors.torch.load_file(path))` works
both ways.

Modes (python3 bench/torch_reference.py MODE --help for all options):

  selfcheck   parameter counts of configs/paper/*.json against the paper's figures, state_dict
              names/shapes against the C++ layout, a safetensors round trip, and a tiny
              forward/backward of every architecture option (CPU; GPU bf16 too if present).
  make-case   writes a test case: config.json, weights.safetensors (PyTorch default init,
              seeded), batch.safetensors (tokens, targets) and torch.safetensors (float64
              logits, loss and first-step gradients), for our side to load and dump.
  compare     our dump (logits, loss, grad.<param>) against this model in float64, with the
              same model in fp32 (CPU) and bf16 autocast (GPU if present) as the tolerance scale.
  bench       forward and training-step throughput on the GPU (bf16 autocast, SDPA), JSON out.

Exchange format of `compare` (all safetensors; see docs/dev/torch-reference.md):
  --weights W   the model's parameters under their names (F32/BF16/F64); other tensors ignored.
  --batch B     "tokens" (batch, seqlen) int32/int64, optional "targets" (batch, seqlen) and
                "loss_mask" (batch, seqlen) float. May instead be inside the dump.
  --dump D      "logits" (batch, seqlen, vocab) or (batch*seqlen, vocab); optional "loss" and
                "aux_loss" (scalars or 1-element); "grad.<param name>" for each parameter: the
                gradient of loss + aux_loss at the weights W (dropout off, loss_scale 1).
                Metadata "precision": "fp32" (default) or "bf16" picks the tolerance.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("torch_reference.py needs PyTorch: pip install torch safetensors numpy")


class ConfigError(ValueError):
    """A config.json that our loader would reject; the message names the field and the rule."""


# ---- config.json (mirror of src/model/config.cpp) ---------------------------------------------

KNOWN_KEYS = {
    "model_type", "name", "architecture", "vocab_size", "hidden_size", "num_hidden_layers",
    "num_attention_heads", "head_dim", "attention_variant", "num_query_heads",
    "num_key_value_heads", "sliding_window", "layer_types", "intermediate_size", "hidden_act",
    "max_position_embeddings", "rope_theta", "rms_norm_eps", "ffn_dropout", "final_norm",
    "tie_word_embeddings", "lm_head_bias", "num_experts", "num_experts_per_tok",
    "moe_intermediate_size", "router_aux_loss", "router_aux_loss_coef", "initializer",
    "initializer_range", "parameter_count"}
LAYER_KEYS = {"attention_variant", "num_query_heads", "num_key_value_heads", "sliding_window"}
MAX_HEAD_DIM = 256  # kMaxHeadDim in include/sqa/spec.hpp

# Variant presets (src/core/spec.cpp preset_layout): name -> (divisor of H, H -> (H_q, H_kv)).
PRESETS = {
    "mha": (1, lambda h: (h, h)),
    "gqa": (4, lambda h: (h, h // 4)),
    "mqa": (1, lambda h: (h, 1)),
    "sqa": (4, lambda h: (h // 2, h // 4)),
    "ssqa": (2, lambda h: (h // 2, h // 2)),
    "xsqa": (4, lambda h: (h // 4, h // 4)),
    "xsmqa": (4, lambda h: (h // 4, 1)),
    "lsqa": (4, lambda h: (3 * h // 4, h // 4)),
    "rsqa": (4, lambda h: (h // 4, h // 2)),
}

# The paper's parameter counts (paper.md, "The paper's model"), keyed by configs/paper name.
PAPER_COUNTS = {
    "dense-mha": 11_966_224, "dense-gqa": 11_179_792, "dense-mqa": 10_983_184,
    "dense-sqa": 10_655_504, "dense-ssqa": 10_917_648, "dense-xsqa": 10_393_360,
    "dense-xsmqa": 10_196_752, "moe-gqa": 8_666_248,
}


@dataclasses.dataclass
class LayerConfig:
    num_query_heads: int
    num_kv_heads: int
    sliding_window: int = 0  # 0 = full attention

    @property
    def num_attention_heads(self) -> int:  # heads that run attention: max(H_q, H_kv)
        return max(self.num_query_heads, self.num_kv_heads)


@dataclasses.dataclass
class ModelConfig:
    vocab_size: int
    d_model: int
    num_layers: int
    num_baseline_heads: int
    head_dim: int
    max_seq_len: int
    layers: list
    causal: bool = True
    ff_dim: int = 0
    activation: str = "swiglu"
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    ffn_dropout: float = 0.1
    final_norm: bool = False
    tie_word_embeddings: bool = False
    lm_head_bias: bool = True
    num_experts: int = 0
    top_k: int = 2
    expert_ff_dim: int = 0
    aux_loss: str = "paper"
    aux_loss_coef: float = 0.01
    init: str = "pytorch"
    init_std: float = 0.02
    name: str = ""

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0


def _get_int(j, key, origin):
    v = j[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{origin}: field '{key}' ({json.dumps(v)}) must be an integer")
    if v < -1 or v > (1 << 30):
        raise ConfigError(f"{origin}: field '{key}' ({v}) is out of range [-1, 2^30]")
    return v


def _get_num(j, key, origin):
    v = j[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{origin}: field '{key}' ({json.dumps(v)}) must be a number")
    return float(v)


def _get_bool(j, key, origin):
    v = j[key]
    if not isinstance(v, bool):
        raise ConfigError(f"{origin}: field '{key}' ({json.dumps(v)}) must be true or false")
    return v


def _get_str(j, key, origin):
    v = j[key]
    if not isinstance(v, str):
        raise ConfigError(f"{origin}: field '{key}' ({json.dumps(v)}) must be a string")
    return v


def _parse_layer(j, base: LayerConfig, h: int, origin: str) -> LayerConfig:
    layer = dataclasses.replace(base)
    has_q, has_kv = "num_query_heads" in j, "num_key_value_heads" in j
    if "attention_variant" in j and (has_q or has_kv):
        raise ConfigError(f"{origin}: give either 'attention_variant' or "
                          "'num_query_heads'/'num_key_value_heads', not both")
    if "attention_variant" in j:
        name = _get_str(j, "attention_variant", origin)
        if name not in PRESETS:
            raise ConfigError(f"{origin}: field 'attention_variant': unknown variant '{name}': "
                              f"expected one of {' '.join(PRESETS)}")
        divisor, layout = PRESETS[name]
        if h % divisor != 0:
            raise ConfigError(f"{origin}: field 'attention_variant': variant {name} needs "
                              f"baseline heads H ({h}) divisible by {divisor}")
        layer.num_query_heads, layer.num_kv_heads = layout(h)
    if has_q:
        layer.num_query_heads = _get_int(j, "num_query_heads", origin)
    if has_kv:
        layer.num_kv_heads = _get_int(j, "num_key_value_heads", origin)
    if "sliding_window" in j:
        layer.sliding_window = 0 if j["sliding_window"] is None else _get_int(
            j, "sliding_window", origin)
    return layer


def validate_config(c: ModelConfig, origin: str = "config") -> None:
    """The rules of ModelConfig::validate(); each error names the field, the value, the rule."""
    def need(cond, msg):
        if not cond:
            raise ConfigError(f"{origin}: {msg}")
    need(c.vocab_size >= 2, f"vocab_size ({c.vocab_size}) must be at least 2")
    need(c.d_model >= 1, f"hidden_size ({c.d_model}) must be at least 1")
    need(c.num_layers >= 1, f"num_hidden_layers ({c.num_layers}) must be at least 1")
    need(c.num_baseline_heads >= 1,
         f"num_attention_heads ({c.num_baseline_heads}) must be at least 1")
    need(2 <= c.head_dim <= MAX_HEAD_DIM and c.head_dim % 2 == 0,
         f"head_dim ({c.head_dim}) must be even (RoPE rotates channel pairs) and in "
         f"[2, {MAX_HEAD_DIM}]")
    need(c.max_seq_len >= 1, f"max_position_embeddings ({c.max_seq_len}) must be at least 1")
    need(len(c.layers) == c.num_layers,
         f"layer_types has {len(c.layers)} entries but num_hidden_layers is {c.num_layers}")
    for i, l in enumerate(c.layers):
        hq, hkv = l.num_query_heads, l.num_kv_heads
        need(hq >= 1 and hkv >= 1, f"layer {i}: num_query_heads ({hq}) and "
             f"num_key_value_heads ({hkv}) must be at least 1")
        need(hq % hkv == 0 or hkv % hq == 0, f"layer {i}: num_query_heads ({hq}) must be a "
             f"multiple of num_key_value_heads ({hkv}), or the reverse for rSQA")
        need(l.sliding_window >= 0, f"layer {i}: sliding_window ({l.sliding_window}) must be "
             ">= 1 tokens, or 0/null for full attention")
    need(c.rope_theta > 0, f"rope_theta ({c.rope_theta}) must be > 0")
    need(c.norm_eps > 0, f"rms_norm_eps ({c.norm_eps}) must be > 0")
    need(0 <= c.ffn_dropout < 1, f"ffn_dropout ({c.ffn_dropout}) must be in [0, 1)")
    need(c.init_std > 0, f"initializer_range ({c.init_std}) must be > 0")
    if c.is_moe:
        need(1 <= c.top_k <= c.num_experts, f"num_experts_per_tok ({c.top_k}) must be in "
             f"[1, num_experts ({c.num_experts})]")
        need(c.expert_ff_dim >= 1, f"moe_intermediate_size ({c.expert_ff_dim}) must be at "
             "least 1 with num_experts > 0")
        need(c.aux_loss_coef >= 0, f"router_aux_loss_coef ({c.aux_loss_coef}) must be >= 0")
    else:
        need(c.num_experts == 0, f"num_experts ({c.num_experts}) must be >= 0")
        need(c.ff_dim >= 1, f"intermediate_size ({c.ff_dim}) must be at least 1")


def parse_config(j, origin: str = "config") -> ModelConfig:
    if not isinstance(j, dict):
        raise ConfigError(f"{origin}: the top level must be a JSON object")
    for key in j:
        if key not in KNOWN_KEYS:
            raise ConfigError(f"{origin}: unknown field '{key}' (see include/sqa/model.hpp "
                              "for the keys)")
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "max_position_embeddings"):
        if key not in j:
            raise ConfigError(f"{origin}: missing required field '{key}'")
    if "model_type" in j and _get_str(j, "model_type", origin) != "sqa":
        raise ConfigError(f"{origin}: model_type ('{j['model_type']}') must be 'sqa'")
    causal = True
    if "architecture" in j:
        a = _get_str(j, "architecture", origin)
        if a not in ("decoder", "encoder"):
            raise ConfigError(f"{origin}: architecture ('{a}') must be 'decoder' (causal) or "
                              "'encoder' (bidirectional)")
        causal = a == "decoder"
    h = _get_int(j, "num_attention_heads", origin)
    if h < 1:
        raise ConfigError(f"{origin}: num_attention_heads ({h}) must be at least 1")
    d = _get_int(j, "hidden_size", origin)
    if "head_dim" in j:
        dh = _get_int(j, "head_dim", origin)
    else:
        if d % h != 0:
            raise ConfigError(f"{origin}: hidden_size ({d}) must be divisible by "
                              f"num_attention_heads ({h}) when head_dim is not given")
        dh = d // h
    c = ModelConfig(vocab_size=_get_int(j, "vocab_size", origin), d_model=d,
                    num_layers=_get_int(j, "num_hidden_layers", origin), num_baseline_heads=h,
                    head_dim=dh, max_seq_len=_get_int(j, "max_position_embeddings", origin),
                    layers=[], causal=causal)
    if "name" in j:
        c.name = _get_str(j, "name", origin)
    if "num_experts" in j:
        c.num_experts = _get_int(j, "num_experts", origin)
    if "intermediate_size" in j:
        c.ff_dim = _get_int(j, "intermediate_size", origin)
    elif c.num_experts <= 0:
        raise ConfigError(f"{origin}: missing required field 'intermediate_size' (dense FFN, "
                          "num_experts = 0)")
    if "hidden_act" in j:
        c.activation = _get_str(j, "hidden_act", origin)
        if c.activation not in ("swiglu", "gelu"):
            raise ConfigError(f"{origin}: hidden_act ('{c.activation}') must be 'swiglu' or "
                              "'gelu'")
    for key, attr in (("rope_theta", "rope_theta"), ("rms_norm_eps", "norm_eps"),
                      ("ffn_dropout", "ffn_dropout"), ("initializer_range", "init_std")):
        if key in j:
            setattr(c, attr, _get_num(j, key, origin))
    for key in ("final_norm", "tie_word_embeddings", "lm_head_bias"):
        if key in j:
            setattr(c, key, _get_bool(j, key, origin))
    if c.num_experts > 0:
        if "moe_intermediate_size" not in j:
            raise ConfigError(f"{origin}: missing required field 'moe_intermediate_size' "
                              "(num_experts > 0)")
        c.expert_ff_dim = _get_int(j, "moe_intermediate_size", origin)
        if "num_experts_per_tok" in j:
            c.top_k = _get_int(j, "num_experts_per_tok", origin)
        if "router_aux_loss" in j:
            c.aux_loss = _get_str(j, "router_aux_loss", origin)
            if c.aux_loss not in ("paper", "switch", "none"):
                raise ConfigError(f"{origin}: router_aux_loss ('{c.aux_loss}') must be "
                                  "'paper', 'switch' or 'none'")
        if "router_aux_loss_coef" in j:
            c.aux_loss_coef = _get_num(j, "router_aux_loss_coef", origin)
    if "initializer" in j:
        c.init = _get_str(j, "initializer", origin)
        if c.init not in ("pytorch", "normal"):
            raise ConfigError(f"{origin}: initializer ('{c.init}') must be 'pytorch' or "
                              "'normal'")
    # Default layer: MHA with the baseline heads unless a preset or explicit counts are given.
    base = _parse_layer(j, LayerConfig(h, h), h, origin)
    c.layers = [dataclasses.replace(base) for _ in range(max(c.num_layers, 0))]
    if "layer_types" in j:
        lt = j["layer_types"]
        if not isinstance(lt, list):
            raise ConfigError(f"{origin}: field 'layer_types' must be an array of objects")
        if len(lt) != c.num_layers:
            raise ConfigError(f"{origin}: layer_types has {len(lt)} entries but "
                              f"num_hidden_layers is {c.num_layers}")
        for i, entry in enumerate(lt):
            where = f"{origin}: layer_types[{i}]"
            if not isinstance(entry, dict):
                raise ConfigError(f"{where} must be an object")
            for key in entry:
                if key not in LAYER_KEYS:
                    raise ConfigError(f"{where}: unknown field '{key}' (expected "
                                      "attention_variant, num_query_heads, "
                                      "num_key_value_heads, sliding_window)")
            c.layers[i] = _parse_layer(entry, base, h, where)
    validate_config(c, origin)
    if "parameter_count" in j and j["parameter_count"] != count_parameters(c):
        raise ConfigError(f"{origin}: parameter_count ({j['parameter_count']}) does not match "
                          f"the architecture ({count_parameters(c)})")
    return c


def load_config(path: str) -> ModelConfig:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot open config file '{path}': {e.strerror}") from None
    try:
        j = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    return parse_config(j, path)


def config_to_json(c: ModelConfig) -> dict:
    """The explicit form (per-layer heads), as config_to_json in config.cpp writes it."""
    j = {"model_type": "sqa"}
    if c.name:
        j["name"] = c.name
    j.update({"architecture": "decoder" if c.causal else "encoder", "vocab_size": c.vocab_size,
              "hidden_size": c.d_model, "num_hidden_layers": c.num_layers,
              "num_attention_heads": c.num_baseline_heads, "head_dim": c.head_dim,
              "max_position_embeddings": c.max_seq_len,
              "layer_types": [{"num_query_heads": l.num_query_heads,
                               "num_key_value_heads": l.num_kv_heads,
                               "sliding_window": l.sliding_window} for l in c.layers]})
    if not c.is_moe:
        j["intermediate_size"] = c.ff_dim
    j.update({"hidden_act": c.activation, "rope_theta": c.rope_theta,
              "rms_norm_eps": c.norm_eps, "ffn_dropout": c.ffn_dropout,
              "final_norm": c.final_norm, "tie_word_embeddings": c.tie_word_embeddings,
              "lm_head_bias": c.lm_head_bias})
    if c.is_moe:
        j.update({"num_experts": c.num_experts, "num_experts_per_tok": c.top_k,
                  "moe_intermediate_size": c.expert_ff_dim, "router_aux_loss": c.aux_loss,
                  "router_aux_loss_coef": c.aux_loss_coef})
    j.update({"initializer": c.init, "initializer_range": c.init_std,
              "parameter_count": count_parameters(c)})
    return j


def parameter_specs(c: ModelConfig) -> list:
    """(name, shape) in the order of parameter_specs() in config.cpp: the safetensors layout."""
    specs = []
    d, dh = c.d_model, c.head_dim
    specs.append(("embed.weight", (c.vocab_size, d)))

    def ffn(prefix, ff):
        fc1_out = 2 * ff if c.activation == "swiglu" else ff
        specs.extend([(prefix + "fc1.weight", (fc1_out, d)), (prefix + "fc1.bias", (fc1_out,)),
                      (prefix + "fc2.weight", (d, ff)), (prefix + "fc2.bias", (d,))])

    for i, l in enumerate(c.layers):
        p = f"layers.{i}."
        specs.extend([(p + "attn_norm.weight", (d,)),
                      (p + "attn.q_proj.weight", (l.num_query_heads * dh, d)),
                      (p + "attn.k_proj.weight", (l.num_kv_heads * dh, d)),
                      (p + "attn.v_proj.weight", (l.num_kv_heads * dh, d)),
                      (p + "attn.o_proj.weight", (d, l.num_attention_heads * dh)),
                      (p + "attn.o_proj.bias", (d,)), (p + "ffn_norm.weight", (d,))])
        if c.is_moe:
            specs.append((p + "ffn.router.weight", (c.num_experts, d)))
            for e in range(c.num_experts):
                ffn(p + f"ffn.experts.{e}.", c.expert_ff_dim)
        else:
            ffn(p + "ffn.", c.ff_dim)
    if c.final_norm:
        specs.append(("final_norm.weight", (d,)))
    if not c.tie_word_embeddings:
        specs.append(("lm_head.weight", (c.vocab_size, d)))
    if c.lm_head_bias:
        specs.append(("lm_head.bias", (c.vocab_size,)))
    return specs


def count_parameters(c: ModelConfig) -> int:
    return sum(math.prod(shape) for _, shape in parameter_specs(c))


# ---- the model --------------------------------------------------------------------------------

def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: float64 stays float64 (the oracle), everything else runs in fp32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * w, weights only (no bias), computed in fp32 or fp64."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.to(_acc_dtype(x))
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(xf.dtype)).to(x.dtype)


def rope_tables(seqlen: int, head_dim: int, theta: float, device, dtype):
    """cos, sin of shape (seqlen, head_dim / 2): angle t * theta^(-2i/d), in float64 as the C++
    code does (positions up to 2e5 times the frequencies lose fp32 precision)."""
    i = torch.arange(head_dim // 2, dtype=torch.float64, device=device)
    freq = theta ** (-2.0 * i / head_dim)
    angle = torch.arange(seqlen, dtype=torch.float64, device=device)[:, None] * freq[None, :]
    return angle.cos().to(dtype), angle.sin().to(dtype)


def apply_rope(x, cos, sin):
    """x (B, T, H, d): rotate the ADJACENT channel pairs (x[2i], x[2i+1]) by angle t * f_i."""
    xf = x.to(_acc_dtype(x))
    pairs = xf.unflatten(-1, (-1, 2))  # (B, T, H, d/2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    c = cos[None, :, None, :].to(xf.dtype)
    s = sin[None, :, None, :].to(xf.dtype)
    out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)
    return out.to(x.dtype)


def window_mask(seqlen: int, window: int, causal: bool, device):
    """Boolean (T, T) mask, True = visible. Decoder: i sees [i - w + 1, i]; encoder: w - 1
    tokens either side (ModelConfig::attention_spec in config.cpp)."""
    i = torch.arange(seqlen, device=device)[:, None]
    j = torch.arange(seqlen, device=device)[None, :]
    if causal:
        return (j <= i) & (j > i - window)
    return (j - i).abs() <= window - 1


_FLEX_COMPILED = None


def _flex_attention():
    global _FLEX_COMPILED
    if _FLEX_COMPILED is None:
        from torch.nn.attention.flex_attention import flex_attention
        # flex_attention is only fast (and only fits in memory at long N) when compiled.
        _FLEX_COMPILED = torch.compile(flex_attention, dynamic=False)
    return _FLEX_COMPILED


def flex_block_mask(seqlen: int, window: int, causal: bool, device):
    from torch.nn.attention.flex_attention import create_block_mask

    if causal:
        def mask_mod(b, h, q, k):
            return (k <= q) & (k > q - window)
    else:
        def mask_mod(b, h, q, k):
            return (k - q <= window - 1) & (q - k <= window - 1)
    import warnings
    try:  # _compile avoids materialising the (T, T) mask at long T on older releases
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return create_block_mask(mask_mod, None, None, seqlen, seqlen, device=device,
                                     _compile=True)
    except TypeError:
        return create_block_mask(mask_mod, None, None, seqlen, seqlen, device=device)


class Attention(nn.Module):
    """SQA-family attention. H_q >= H_kv: query head i reads KV head i / G (enable_gqa order).
    rSQA (H_q < H_kv): the queries are tiled q0..q_{Hq-1}, q0.. up to H_kv heads, so KV head j
    pairs with query head j mod H_q (spec.hpp head_pair)."""

    def __init__(self, c: ModelConfig, layer: LayerConfig):
        super().__init__()
        self.hq, self.hkv, self.dh = layer.num_query_heads, layer.num_kv_heads, c.head_dim
        self.window, self.causal = layer.sliding_window, c.causal
        d = c.d_model
        self.q_proj = nn.Linear(d, self.hq * self.dh, bias=False)
        self.k_proj = nn.Linear(d, self.hkv * self.dh, bias=False)
        self.v_proj = nn.Linear(d, self.hkv * self.dh, bias=False)
        self.o_proj = nn.Linear(layer.num_attention_heads * self.dh, d, bias=True)

    def forward(self, x, cos, sin, impl: str = "sdpa", block_mask=None):
        B, T, _ = x.shape
        q = apply_rope(self.q_proj(x).view(B, T, self.hq, self.dh), cos, sin).transpose(1, 2)
        k = apply_rope(self.k_proj(x).view(B, T, self.hkv, self.dh), cos, sin).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.hkv, self.dh).transpose(1, 2)
        if self.hq < self.hkv:
            q = q.repeat(1, self.hkv // self.hq, 1, 1)  # tiling, not repeat_interleave
        gqa = q.shape[1] != self.hkv
        if self.window > 0 and impl == "flex":
            if block_mask is None:
                block_mask = flex_block_mask(T, self.window, self.causal, x.device)
            out = _flex_attention()(q, k, v, block_mask=block_mask, enable_gqa=gqa)
        elif self.window > 0:
            mask = window_mask(T, self.window, self.causal, x.device)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, enable_gqa=gqa)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class FFN(nn.Module):
    """SwiGLU: fc1 -> [value; gate], value * SiLU(gate), fc2 (biases on both). GELU: erf form."""

    def __init__(self, d: int, ff: int, activation: str):
        super().__init__()
        self.swiglu = activation == "swiglu"
        self.fc1 = nn.Linear(d, 2 * ff if self.swiglu else ff, bias=True)
        self.fc2 = nn.Linear(ff, d, bias=True)

    def forward(self, x):
        h = self.fc1(x)
        if self.swiglu:
            value, gate = h.chunk(2, dim=-1)
            a = value * F.silu(gate)
        else:
            a = F.gelu(h)
        return self.fc2(a)


class MoE(nn.Module):
    """Router linear (no bias) -> softmax -> top-k -> renormalise the k weights to sum 1.
    Aux losses (coefficient included), over all N token rows:
      paper:  E / N * sum_t sum_{e chosen by t} p_te  (= E * sum_e frac_e * mean p of choosers)
      switch: E * sum_e f_e * P_e, f_e = |{t chose e}| / N (no gradient), P_e = mean_t p_te."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.E, self.K = c.num_experts, c.top_k
        self.aux_kind, self.aux_coef = c.aux_loss, c.aux_loss_coef
        self.router = nn.Linear(c.d_model, c.num_experts, bias=False)
        self.experts = nn.ModuleList(
            FFN(c.d_model, c.expert_ff_dim, c.activation) for _ in range(c.num_experts))

    def forward(self, x):  # x (N, d) -> (N, d), aux
        N = x.shape[0]
        acc = _acc_dtype(x)
        probs = F.softmax(self.router(x).to(acc), dim=-1)  # (N, E)
        top_p, top_e = probs.topk(self.K, dim=-1)  # (N, K), descending
        gate = top_p / top_p.sum(-1, keepdim=True)
        y = torch.zeros(N, x.shape[1], dtype=acc, device=x.device)
        for e, expert in enumerate(self.experts):
            rows, slot = (top_e == e).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            out = expert(x[rows]).to(acc)
            y = y.index_add(0, rows, out * gate[rows, slot, None])
        if self.aux_kind == "paper":
            aux = self.aux_coef * self.E / N * top_p.sum()
        elif self.aux_kind == "switch":
            frac = torch.bincount(top_e.flatten(), minlength=self.E).to(acc) / N
            aux = self.aux_coef * self.E * (frac * probs.mean(0)).sum()
        else:
            aux = probs.new_zeros(())
        return y.to(x.dtype), aux


class Block(nn.Module):
    """Pre-norm: x_mid = x + attn(RMSNorm(x)); x_out = x_mid + dropout(ffn(RMSNorm(x_mid)))."""

    def __init__(self, c: ModelConfig, layer: LayerConfig):
        super().__init__()
        self.attn_norm = RMSNorm(c.d_model, c.norm_eps)
        self.attn = Attention(c, layer)
        self.ffn_norm = RMSNorm(c.d_model, c.norm_eps)
        self.ffn = MoE(c) if c.is_moe else FFN(c.d_model, c.ff_dim, c.activation)
        self.dropout = nn.Dropout(c.ffn_dropout)

    def forward(self, x, cos, sin, impl, block_mask):
        x = x + self.attn(self.attn_norm(x), cos, sin, impl, block_mask)
        n = self.ffn_norm(x)
        if isinstance(self.ffn, MoE):
            h, aux = self.ffn(n.reshape(-1, n.shape[-1]))
            h = h.view_as(n)
        else:
            h, aux = self.ffn(n), None
        return x + self.dropout(h), aux


class HeadBias(nn.Module):
    """lm_head.bias alone, for tied embeddings with lm_head_bias."""

    def __init__(self, vocab: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab))


class SQATransformer(nn.Module):
    """The whole model. Attribute order follows parameter_specs(), so state_dict() lists the
    tensors in the safetensors order."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.config = c
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.layers = nn.ModuleList(Block(c, l) for l in c.layers)
        self.final_norm = RMSNorm(c.d_model, c.norm_eps) if c.final_norm else None
        if not c.tie_word_embeddings:
            self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=c.lm_head_bias)
        else:
            self.lm_head = HeadBias(c.vocab_size) if c.lm_head_bias else None
        self.attention_impl = "sdpa"  # "flex": sliding-window layers through flex_attention
        if c.lm_head_bias and c.tie_word_embeddings:
            # nn.Linear's default bias init, as the C++ init does (fan_in = d_model).
            bound = 1.0 / math.sqrt(c.d_model)
            nn.init.uniform_(self.lm_head.bias, -bound, bound)

    def block_masks(self, seqlen: int, device):
        """flex block masks per distinct window; build them outside a compiled region."""
        masks = {}
        for l in self.config.layers:
            if l.sliding_window > 0 and l.sliding_window not in masks:
                masks[l.sliding_window] = flex_block_mask(seqlen, l.sliding_window,
                                                          self.config.causal, device)
        return masks

    def forward(self, tokens, targets=None, loss_mask=None, return_logits=True,
                block_masks=None):
        """tokens (B, T) -> dict with logits (B, T, V); with targets also loss (mean
        cross-entropy over mask-weighted tokens), aux_loss (MoE, summed over layers) and
        total = loss + aux_loss, the quantity our backward differentiates."""
        c = self.config
        B, T = tokens.shape
        x = self.embed(tokens)  # (B, T, d)
        cos, sin = rope_tables(T, c.head_dim, c.rope_theta, x.device, _acc_dtype(x))
        aux_total = None
        for block, l in zip(self.layers, c.layers):
            bm = (block_masks or {}).get(l.sliding_window)
            x, aux = block(x, cos, sin, self.attention_impl, bm)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
        if self.final_norm is not None:
            x = self.final_norm(x)
        if c.tie_word_embeddings:
            bias = self.lm_head.bias if self.lm_head is not None else None
            logits = F.linear(x, self.embed.weight, bias)
        else:
            logits = self.lm_head(x)
        out = {"logits": logits if return_logits else None}
        if targets is None:
            out["aux_loss"] = aux_total
            return out
        acc = _acc_dtype(self.embed.weight)
        ce = F.cross_entropy(logits.reshape(-1, c.vocab_size).to(acc), targets.reshape(-1),
                             reduction="none")
        if loss_mask is None:
            loss = ce.mean()
        else:
            m = loss_mask.reshape(-1).to(acc)
            loss = (ce * m).sum() / m.sum().clamp_min(torch.finfo(acc).tiny)
        aux_total = aux_total if aux_total is not None else loss.new_zeros(())
        out.update(loss=loss, aux_loss=aux_total, total=loss + aux_total)
        return out


def init_weights(model: SQATransformer, seed: int) -> None:
    """Fresh weights with a fixed seed: PyTorch's default init (the config's "pytorch"), or
    N(0, initializer_range) with zero biases and unit norms ("normal")."""
    torch.manual_seed(seed)
    c = model.config
    for name, p in model.named_parameters():
        with torch.no_grad():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif c.init == "normal":
                if name.endswith(".bias"):
                    p.zero_()
                else:
                    p.normal_(0.0, c.init_std)
            elif name == "embed.weight":
                p.normal_(0.0, 1.0)
            else:  # nn.Linear: U(+-1/sqrt(fan_in)) for weight and bias
                fan_in = p.shape[1] if p.dim() == 2 else (
                    c.d_model if name == "lm_head.bias" else
                    dict(model.named_parameters())[name[:-5] + ".weight"].shape[1])
                bound = 1.0 / math.sqrt(fan_in)
                p.uniform_(-bound, bound)


def build_model(c: ModelConfig, device="cpu", dtype=torch.float32) -> SQATransformer:
    return SQATransformer(c).to(device=device, dtype=dtype)


# ---- safetensors exchange ---------------------------------------------------------------------

def _st():
    try:
        import safetensors.torch as st
    except ImportError:
        sys.exit("torch_reference.py needs safetensors: pip install safetensors")
    return st


def load_weights(model: SQATransformer, path: str) -> list:
    """Loads our checkpoint's parameters by name; returns the names of tensors it ignored
    (e.g. optimizer state). Missing parameters and wrong shapes are errors naming them."""
    tensors = _st().load_file(path)
    specs = dict(parameter_specs(model.config))
    missing = [n for n in specs if n not in tensors]
    if missing:
        raise ValueError(f"{path}: missing {len(missing)} model tensors, e.g. "
                         f"{', '.join(missing[:5])}")
    for n, shape in specs.items():
        if tuple(tensors[n].shape) != tuple(shape):
            raise ValueError(f"{path}: tensor '{n}' has shape {list(tensors[n].shape)}, the "
                             f"config needs {list(shape)}")
    ref = next(model.parameters())
    state = {n: tensors[n].to(device=ref.device, dtype=ref.dtype) for n in specs}
    model.load_state_dict(state, strict=True)
    return sorted(set(tensors) - set(specs))


def save_weights(model: SQATransformer, path: str, metadata=None) -> None:
    state = {n: t.detach().float().contiguous().cpu() for n, t in model.state_dict().items()}
    _st().save_file(state, path, metadata=metadata)


# ---- selfcheck --------------------------------------------------------------------------------

def _tiny_configs() -> dict:
    """Small configs covering every architecture option, for CPU checks."""
    base = {"model_type": "sqa", "vocab_size": 37, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 8, "head_dim": 8, "intermediate_size": 24,
            "max_position_embeddings": 64, "ffn_dropout": 0.1}
    return {
        "mha": {**base, "attention_variant": "mha"},
        "gqa": {**base, "attention_variant": "gqa"},
        "xsmqa": {**base, "attention_variant": "xsmqa"},
        "rsqa": {**base, "attention_variant": "rsqa"},
        "mixed-window": {**base, "layer_types": [
            {"num_query_heads": 2, "num_key_value_heads": 4, "sliding_window": 5},
            {"attention_variant": "sqa", "sliding_window": None}]},
        "encoder-gelu": {**base, "architecture": "encoder", "hidden_act": "gelu",
                         "attention_variant": "ssqa", "sliding_window": 4},
        "final-norm-tied": {**base, "attention_variant": "xsqa", "final_norm": True,
                            "tie_word_embeddings": True},
        "tied-nobias": {**base, "tie_word_embeddings": True, "lm_head_bias": False},
        "moe-paper": {**base, "attention_variant": "gqa", "num_experts": 4,
                      "num_experts_per_tok": 2, "moe_intermediate_size": 16},
        "moe-switch-gelu": {**base, "attention_variant": "sqa", "num_experts": 5,
                            "num_experts_per_tok": 3, "moe_intermediate_size": 12,
                            "router_aux_loss": "switch", "hidden_act": "gelu"},
    }


def rel_err(a, ref) -> float:
    """max |a - ref| / max |ref|: relative to the tensor's scale, so zeros do not blow up."""
    a = a.detach().to(torch.float64).cpu()
    ref = ref.detach().to(torch.float64).cpu()
    denom = ref.abs().max().item()
    num = (a - ref).abs().max().item()
    return num / denom if denom > 0 else num


def _forward_backward(model, tokens, targets, mask=None, autocast=None):
    model.zero_grad(set_to_none=True)
    if autocast is not None:
        with torch.autocast(device_type=autocast, dtype=torch.bfloat16):
            out = model(tokens, targets, mask)
    else:
        out = model(tokens, targets, mask)
    out["total"].backward()
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
             for n, p in model.named_parameters()}
    return out, grads


def cmd_selfcheck(args) -> int:
    failures = []

    def check(cond, msg):
        print(("ok    " if cond else "FAIL  ") + msg)
        if not cond:
            failures.append(msg)

    paper_dir = os.path.join(REPO_ROOT, "configs", "paper")
    paths = sorted(glob.glob(os.path.join(paper_dir, "*.json")))
    check(len(paths) > 0, f"found {len(paths)} configs in {paper_dir}")
    for path in paths:
        c = load_config(path)
        name = os.path.splitext(os.path.basename(path))[0]
        with torch.device("meta"):
            model = SQATransformer(c)
        n_model = sum(p.numel() for p in model.parameters())
        n_spec = count_parameters(c)
        sd = [(n, tuple(t.shape)) for n, t in model.state_dict().items()]
        check(sd == [(n, tuple(s)) for n, s in parameter_specs(c)],
              f"{name}: state_dict names, shapes and order equal the C++ parameter_specs")
        msg = f"{name}: {n_model:,} parameters (layout {n_spec:,}"
        if name in PAPER_COUNTS:
            msg += f", paper {PAPER_COUNTS[name]:,}"
        check(n_model == n_spec and n_model == PAPER_COUNTS.get(name, n_model), msg + ")")
        if args.sqa:
            try:
                out = subprocess.run([args.sqa, "info", "--config", path], capture_output=True,
                                     text=True, timeout=60).stdout
                line = [l for l in out.splitlines() if l.startswith("parameters:")]
                theirs = int(line[0].split()[1].replace(",", "")) if line else None
                check(theirs == n_model, f"{name}: `sqa info` says {theirs}")
            except (OSError, subprocess.SubprocessError, ValueError) as e:
                check(False, f"{name}: `sqa info` failed: {e}")

    # Tiny models: every option runs forward/backward in float64 with finite results, and the
    # weights survive a safetensors round trip bit for bit.
    import tempfile
    torch.manual_seed(0)
    for name, j in _tiny_configs().items():
        c = parse_config(j, name)
        model = build_model(c, dtype=torch.float64)
        init_weights(model, seed=1)
        model.eval()
        tokens = torch.randint(c.vocab_size, (2, 11))
        targets = torch.randint(c.vocab_size, (2, 11))
        out, grads = _forward_backward(model, tokens, targets)
        finite = torch.isfinite(out["logits"]).all().item() and all(
            torch.isfinite(g).all().item() for g in grads.values())
        nonzero = all(g.abs().max().item() > 0 for g in grads.values())
        check(finite and nonzero, f"tiny {name}: forward/backward finite, every gradient "
              f"non-zero (loss {out['loss'].item():.4f}, aux {out['aux_loss'].item():.4g})")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "w.safetensors")
            save_weights(model, path)
            twin = build_model(c, dtype=torch.float32)
            load_weights(twin, path)
            same = all(torch.equal(a.float(), b) for a, b in
                       zip(model.state_dict().values(), twin.state_dict().values()))
            check(same, f"tiny {name}: safetensors round trip")
        # Precision ladder: fp32 (and bf16 autocast on a GPU) against float64.
        m32 = build_model(c, dtype=torch.float32)
        m32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
        m32.eval()
        o32, g32 = _forward_backward(m32, tokens, targets)
        e_log = rel_err(o32["logits"], out["logits"])
        e_grad = max(rel_err(g32[n], grads[n]) for n in grads)
        check(e_log < 1e-5 and e_grad < 1e-4,
              f"tiny {name}: fp32 vs float64 logits {e_log:.1e}, worst gradient {e_grad:.1e}")
        if torch.cuda.is_available():
            mg = build_model(c, device="cuda", dtype=torch.float32)
            mg.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
            mg.eval()
            ob, gb = _forward_backward(mg, tokens.cuda(), targets.cuda(), autocast="cuda")
            e_log = rel_err(ob["logits"], out["logits"])
            e_grad = max(rel_err(gb[n], grads[n]) for n in grads)
            print(f"info  tiny {name}: bf16 autocast (cuda) vs float64 logits {e_log:.1e}, "
                  f"worst gradient {e_grad:.1e}")
    # Bad configs fail with the field named.
    for bad, needle in (({"vocab_size": 10}, "missing required field"),
                        ({**_tiny_configs()["mha"], "num_query_heads": 3},
                         "not both"),
                        ({**_tiny_configs()["mha"], "attention_variant": "nope"}, "unknown variant"),
                        ({**_tiny_configs()["mha"], "typo_key": 1}, "unknown field 'typo_key'")):
        try:
            parse_config(bad, "bad")
            check(False, f"bad config rejected ({needle})")
        except ConfigError as e:
            check(needle in str(e), f"bad config rejected: {e}")
    print(f"\nselfcheck: {len(failures)} failure(s)")
    return 1 if failures else 0


# ---- make-case and compare --------------------------------------------------------------------

def _device(arg: str) -> str:
    if arg == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if arg == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible to PyTorch")
    return arg


def cmd_make_case(args) -> int:
    c = load_config(args.config)
    os.makedirs(args.out, exist_ok=True)
    if args.seqlen > c.max_seq_len:
        sys.exit(f"--seqlen ({args.seqlen}) exceeds max_position_embeddings ({c.max_seq_len})")
    model = build_model(c, dtype=torch.float64)
    init_weights(model, args.seed)
    model.eval()  # dropout off: the comparison is deterministic
    g = torch.Generator().manual_seed(args.seed + 1)
    tokens = torch.randint(c.vocab_size, (args.batch, args.seqlen), generator=g,
                           dtype=torch.int32)
    targets = torch.randint(c.vocab_size, (args.batch, args.seqlen), generator=g,
                            dtype=torch.int32)
    batch = {"tokens": tokens, "targets": targets}
    if args.mask:
        batch["loss_mask"] = (torch.rand(args.batch, args.seqlen, generator=g) > 0.25).float()
    out, grads = _forward_backward(model, tokens.long(), targets.long(),
                                   batch.get("loss_mask"))
    st = _st()
    with open(os.path.join(args.out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config_to_json(c), f, indent=2)
        f.write("\n")
    save_weights(model, os.path.join(args.out, "weights.safetensors"),
                 metadata={"seed": str(args.seed), "producer": "bench/torch_reference.py"})
    st.save_file(batch, os.path.join(args.out, "batch.safetensors"))
    dump = {"logits": out["logits"].float().contiguous(), "loss": out["loss"].float().reshape(1),
            "aux_loss": out["aux_loss"].float().reshape(1)}
    dump.update({"grad." + n: gr.float().contiguous() for n, gr in grads.items()})
    st.save_file(dump, os.path.join(args.out, "torch.safetensors"),
                 metadata={"precision": "fp64"})
    print(f"wrote {args.out}/config.json, weights.safetensors, batch.safetensors, "
          f"torch.safetensors (loss {out['loss'].item():.6f}, aux {out['aux_loss'].item():.6g})")
    return 0


def cmd_compare(args) -> int:
    st = _st()
    c = load_config(args.config)
    dump = st.load_file(args.dump)
    with open(args.dump, "rb") as f:  # metadata lives in the JSON header
        header_len = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(header_len)).get("__metadata__", {}) or {}
    precision = args.precision or meta.get("precision", "fp32")
    if precision not in ("fp32", "bf16", "fp64"):
        sys.exit(f"precision '{precision}' must be fp32, bf16 or fp64")
    batch = st.load_file(args.batch) if args.batch else dump
    if "tokens" not in batch:
        sys.exit(f"{args.batch or args.dump}: no 'tokens' tensor (batch, seqlen)")
    tokens = batch["tokens"].long()
    if tokens.dim() != 2:
        sys.exit(f"'tokens' has shape {list(tokens.shape)}, expected (batch, seqlen)")
    targets = batch["targets"].long() if "targets" in batch else None
    mask = batch["loss_mask"].float() if "loss_mask" in batch else None
    B, T = tokens.shape
    if T > c.max_seq_len:
        sys.exit(f"seqlen ({T}) exceeds max_position_embeddings ({c.max_seq_len})")
    if "logits" not in dump:
        sys.exit(f"{args.dump}: no 'logits' tensor")
    if dump["logits"].numel() != B * T * c.vocab_size:
        sys.exit(f"{args.dump}: 'logits' has shape {list(dump['logits'].shape)}, expected "
                 f"({B}, {T}, {c.vocab_size})")

    def run(device, dtype, autocast):
        m = build_model(c, device=device, dtype=dtype)
        ignored = load_weights(m, args.weights)
        m.eval()
        tk, tg = tokens.to(device), targets.to(device) if targets is not None else None
        mk = mask.to(device) if mask is not None else None
        if tg is None:
            with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16,
                                                 enabled=autocast):
                return m(tk), {}, ignored
        if autocast:
            out, grads = _forward_backward(m, tk, tg, mk, autocast=device)
        else:
            out, grads = _forward_backward(m, tk, tg, mk)
        return out, grads, ignored

    ref_out, ref_grads, ignored = run("cpu", torch.float64, False)
    if ignored:
        print(f"note: ignored {len(ignored)} non-model tensors in {args.weights}, e.g. "
              f"{', '.join(ignored[:3])}")
    # The same model at the dump's precision sets the scale of the tolerance.
    if precision == "bf16":
        dev = _device(args.device)
        peer_out, peer_grads, _ = run(dev, torch.float32, True)
        peer_name = f"torch bf16 autocast ({dev})"
        floor = args.tol_bf16
    else:
        peer_out, peer_grads, _ = run("cpu", torch.float32, False)
        peer_name = "torch fp32 (cpu)"
        floor = args.tol_fp32
    factor = args.factor
    if precision == "fp64":  # a float64 model: a fixed floor (dumps are often F32-rounded)
        floor, factor = args.tol_fp64, 0.0

    rows = []

    def add(name, ours, ref, peer):
        e_ours, e_peer = rel_err(ours, ref), rel_err(peer, ref)
        tol = max(floor, factor * e_peer)
        rows.append({"tensor": name, "ours": e_ours, "peer": e_peer, "tol": tol,
                     "pass": e_ours <= tol})

    add("logits", dump["logits"].reshape(B, T, -1), ref_out["logits"], peer_out["logits"])
    if targets is not None:
        for key in ("loss", "aux_loss"):
            if key in dump:
                add(key, dump[key].reshape(()), ref_out[key], peer_out[key])
        have = [n for n in ref_grads if "grad." + n in dump]
        missing = [n for n in ref_grads if "grad." + n not in dump]
        for n in have:
            add("grad." + n, dump["grad." + n].reshape(ref_grads[n].shape), ref_grads[n],
                peer_grads[n])
        if missing and not args.allow_missing_grads:
            for n in missing:
                rows.append({"tensor": "grad." + n, "ours": float("nan"), "peer": float("nan"),
                             "tol": float("nan"), "pass": False, "missing": True})
    print(f"compare {args.dump} ({precision}) against torch float64 (cpu); peer: {peer_name}")
    print(f"tolerance per tensor = max({floor:g}, {factor:g} x peer error); error = "
          "max|x - ref| / max|ref|")
    print(f"{'tensor':48s} {'ours':>10s} {'peer':>10s} {'tol':>10s}")
    for r in rows:
        flag = "" if r["pass"] else ("  MISSING" if r.get("missing") else "  FAIL")
        print(f"{r['tensor']:48s} {r['ours']:10.2e} {r['peer']:10.2e} {r['tol']:10.2e}{flag}")
    bad = [r for r in rows if not r["pass"]]
    worst = max((r for r in rows if not r.get("missing")), key=lambda r: r["ours"])
    print(f"\n{len(rows)} tensors, {len(bad)} failing; worst: {worst['tensor']} "
          f"{worst['ours']:.2e}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"dump": args.dump, "precision": precision, "peer": peer_name,
                       "rows": rows}, f, indent=1)
    return 1 if bad else 0


# ---- bench ------------------------------------------------------------------------------------

DEFAULT_VARIANTS = ["xsqa", "sqa", "ssqa", "sw-sqa", "mqa", "gqa", "mha", "xsmqa"]
PAPER_SIZES = [(1024, 128), (4096, 32), (32768, 4), (131072, 1), (200000, 1)]
QUICK_SIZES = [(1024, 128), (32768, 4)]


def _parse_sizes(text: str) -> list:
    sizes = []
    for part in text.split(","):
        try:
            n, b = part.lower().split("x")
            sizes.append((int(n), int(b)))
        except ValueError:
            sys.exit(f"size '{part}' must be LENGTHxBATCH, e.g. 1024x128")
    return sizes


def _bench_configs(args) -> list:
    """(label, ModelConfig, path). Variants name configs/paper/dense-<v>.json; "sw-sqa" is
    --sw-base with sliding_window --sw-window on every layer."""
    out = []
    if args.configs:
        for path in args.configs:
            c = load_config(path)
            out.append((c.name or os.path.basename(path), c, path))
        return out
    for v in args.variants.split(","):
        if v == "sw-sqa":
            c = load_config(args.sw_base)
            for l in c.layers:
                l.sliding_window = args.sw_window
            c.name = f"sw-sqa{args.sw_window}"
            out.append(("sw-sqa", c, args.sw_base + f" + sliding_window {args.sw_window}"))
        else:
            path = os.path.join(REPO_ROOT, "configs", "paper", f"dense-{v}.json")
            if not os.path.exists(path):
                sys.exit(f"variant '{v}': no config {path}")
            out.append((v, load_config(path), path))
    return out


def _time(fn, warmup: int, iters: int, budget_s: float, device: str) -> list:
    """Per-iteration times (seconds) after warm-up: CUDA events around each call, synchronised
    before the next (CPU: perf_counter). The iteration count shrinks so that one measurement
    takes about budget_s, but never below 3."""
    cuda = device == "cuda"
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    n, i = iters, 0
    while i < n:
        if cuda:
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        if i == 0:
            n = max(3, min(iters, int(budget_s / max(times[0], 1e-6))))
        i += 1
    return times


def _sdpa_context(backend: str):
    import contextlib
    if backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    names = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    return sdpa_kernel([names[backend]])


def cmd_bench(args) -> int:
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        sys.exit("bench needs a CUDA GPU (torch.cuda.is_available() is False); --device cpu "
                 "runs a smoke test of this script with tiny --sizes")
    if args.quick:
        sizes = _parse_sizes(args.sizes) if args.sizes else QUICK_SIZES
        train_sizes = _parse_sizes(args.train_sizes) if args.train_sizes else QUICK_SIZES
        warmup, iters, budget = 2, args.iters or 5, 1.0
        kinds = args.kinds or "forward,train_eager"
    else:
        sizes = _parse_sizes(args.sizes) if args.sizes else PAPER_SIZES
        train_sizes = _parse_sizes(args.train_sizes) if args.train_sizes else [(1024, 128)]
        warmup, iters, budget = 3, args.iters or 10, 4.0
        kinds = args.kinds or "forward,train_eager,train_compile"
    kinds = kinds.split(",")
    for k in kinds:
        if k not in ("forward", "train_eager", "train_compile"):
            sys.exit(f"--kinds: '{k}' must be forward, train_eager or train_compile")
    configs = _bench_configs(args)
    try:
        commit = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    report = {
        "tool": "bench/torch_reference.py bench",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu: " + platform.processor(),
        "host": platform.node(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(), "commit": commit,
        "settings": {"autocast": "bf16", "sdpa_backend": args.sdpa_backend,
                     "forward_mode": args.forward_mode, "sliding_window_impl": "flex_attention",
                     "optimizer": "AdamW fused, lr 5e-4, weight_decay 0.01",
                     "grad_clip": 1.0, "warmup": warmup, "max_iters": iters,
                     "timing": "CUDA events per iteration, synchronised; median",
                     "quick": bool(args.quick)},
        "results": [],
    }

    def save():
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            tmp = args.out + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=1)
            os.replace(tmp, args.out)

    def record(label, c, path, kind, T, B, fn):
        entry = {"variant": label, "config": path, "name": c.name, "kind": kind, "seqlen": T,
                 "batch": B, "num_query_heads": c.layers[0].num_query_heads,
                 "num_kv_heads": c.layers[0].num_kv_heads,
                 "sliding_window": c.layers[0].sliding_window,
                 "parameters": count_parameters(c),
                 "attention": "flex" if c.layers[0].sliding_window > 0 else "sdpa"}
        t0 = time.time()
        try:
            with _sdpa_context(args.sdpa_backend):
                times = fn()
            med = statistics.median(times)
            entry.update(median_s=med, min_s=min(times), times_s=times,
                         tokens_per_s=T * B / med)
            msg = f"{med * 1e3:9.2f} ms  {T * B / med / 1e6:7.3f} M tok/s  ({len(times)} iters)"
        except Exception as e:  # one failing cell must not lose the others
            entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            msg = "ERROR " + entry["error"]
        entry["wall_s"] = time.time() - t0
        print(f"{label:8s} {kind:14s} {T:>7d}x{B:<4d} {msg}", flush=True)
        report["results"].append(entry)
        save()
        if dev == "cuda":
            torch.cuda.empty_cache()

    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), {report['gpu']}; "
          f"kinds {kinds}", flush=True)
    for label, c, path in configs:
        max_len = max([T for T, _ in sizes] + [T for T, _ in train_sizes])
        # RoPE has no learned positions: the benchmark may run past max_position_embeddings.
        c = dataclasses.replace(c, max_seq_len=max(c.max_seq_len, max_len))
        torch.manual_seed(0)
        model = build_model(c, device=dev)
        if any(l.sliding_window > 0 for l in c.layers):
            model.attention_impl = "flex"
        if "forward" in kinds:
            model.train(args.forward_mode == "train")
            for T, B in sizes:
                tokens = torch.randint(c.vocab_size, (B, T), device=dev)
                masks = model.block_masks(T, dev) if model.attention_impl == "flex" else None

                def fwd():
                    with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16):
                        model(tokens, block_masks=masks)
                record(label, c, path, "forward", T, B,
                       lambda: _time(fwd, warmup, iters, budget, dev))
                tokens = masks = None  # free before the next size
        for kind in ("train_eager", "train_compile"):
            if kind not in kinds:
                continue
            model.train()
            if kind == "train_compile":
                torch._dynamo.reset()
                runner = torch.compile(model)
            else:
                runner = model
            opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01,
                                    fused=dev == "cuda")
            for T, B in train_sizes:
                tokens = torch.randint(c.vocab_size, (B, T), device=dev)
                targets = torch.randint(c.vocab_size, (B, T), device=dev)
                masks = model.block_masks(T, dev) if model.attention_impl == "flex" else None

                def step():
                    with torch.autocast(dev, dtype=torch.bfloat16):
                        out = runner(tokens, targets, return_logits=False, block_masks=masks)
                    out["total"].backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                # Compilation happens in the first warm-up step; give it one more.
                w = warmup + (1 if kind == "train_compile" else 0)
                record(label, c, path, kind, T, B, lambda: _time(step, w, iters, budget, dev))
                tokens = targets = masks = None
            opt = runner = None
        model = None
        if dev == "cuda":
            torch.cuda.empty_cache()
    save()
    print_tables(report)
    return 1 if any("error" in r for r in report["results"]) and args.strict else 0


def print_tables(report) -> None:
    res = report["results"]
    variants = list(dict.fromkeys(r["variant"] for r in res))

    def find(kind, T, B, v):
        for r in res:
            if (r["kind"], r["seqlen"], r["batch"], r["variant"]) == (kind, T, B, v):
                return r
        return None

    def cell(kind, T, B, v):
        r = find(kind, T, B, v)
        if r is None:
            return "-"
        if "error" in r:
            return "error"
        if kind == "forward":
            return f"{r['median_s']:.4f}"
        return f"{r['tokens_per_s'] / 1e6:.3f}"

    def speedup(kind, T, B):
        x, m = find(kind, T, B, "xsqa"), find(kind, T, B, "mha")
        if x and m and "error" not in x and "error" not in m:
            return f"{m['median_s'] / x['median_s']:.2f}x"
        return "-"

    def table(kind, title):
        sizes = list(dict.fromkeys((r["seqlen"], r["batch"]) for r in res if r["kind"] == kind))
        if not sizes:
            return
        print(f"\n{title}")
        print(f"{'N x batch':>12s} " + " ".join(f"{v:>9s}" for v in variants) +
              f" {'xSQA/MHA':>9s}")
        for T, B in sizes:
            print(f"{f'{T}x{B}':>12s} " + " ".join(f"{cell(kind, T, B, v):>9s}"
                                                   for v in variants) +
                  f" {speedup(kind, T, B):>9s}")

    print(f"\n{report['gpu']}, torch {report['torch']}, {report['date']}")
    table("forward", "Forward (bf16 autocast, no grad), seconds per step (median):")
    table("train_eager", "Training step, eager (AdamW fused, clip 1.0), M tokens/s:")
    table("train_compile", "Training step, torch.compile (AdamW fused, clip 1.0), M tokens/s:")
    errors = [r for r in res if "error" in r]
    for r in errors:
        print(f"error: {r['variant']} {r['kind']} {r['seqlen']}x{r['batch']}: {r['error']}")


# ---- command line -----------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)

    s = sub.add_parser("selfcheck", help="parameter counts, names, tiny forward/backward")
    s.add_argument("--sqa", help="path to the sqa binary: also compare `sqa info` counts")

    s = sub.add_parser("make-case", help="write config, weights, batch and float64 results")
    s.add_argument("--config", required=True)
    s.add_argument("--out", required=True, help="directory to write")
    s.add_argument("--batch", type=int, default=2)
    s.add_argument("--seqlen", type=int, default=64)
    s.add_argument("--seed", type=int, default=1234)
    s.add_argument("--mask", action="store_true", help="also write a random loss_mask")

    s = sub.add_parser("compare", help="check our logits/gradients against this model")
    s.add_argument("--config", required=True)
    s.add_argument("--weights", required=True, help="safetensors with the model's parameters")
    s.add_argument("--dump", required=True, help="our logits, loss, aux_loss, grad.<name>")
    s.add_argument("--batch", help="tokens/targets/loss_mask (default: read from --dump)")
    s.add_argument("--precision", choices=["fp32", "bf16", "fp64"],
                   help="precision of the dump (default: its metadata, else fp32)")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="device of the bf16 autocast peer")
    s.add_argument("--tol-fp32", type=float, default=1e-4)
    s.add_argument("--tol-bf16", type=float, default=2e-2)
    s.add_argument("--tol-fp64", type=float, default=1e-6)
    s.add_argument("--factor", type=float, default=4.0,
                   help="tolerance = max(floor, factor x the torch peer's own error)")
    s.add_argument("--allow-missing-grads", action="store_true")
    s.add_argument("--json", help="write the per-tensor errors here")

    s = sub.add_parser("bench", help="GPU throughput: forward and training step")
    s.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help="comma list of dense-<variant> names and sw-sqa")
    s.add_argument("--configs", nargs="+", help="explicit config files instead of --variants")
    s.add_argument("--sw-base", default=os.path.join(REPO_ROOT, "configs", "paper",
                                                     "dense-sqa.json"))
    s.add_argument("--sw-window", type=int, default=128)
    s.add_argument("--sizes", help="forward sizes, e.g. 1024x128,4096x32")
    s.add_argument("--train-sizes", help="training-step sizes")
    s.add_argument("--kinds", help="comma list of forward, train_eager, train_compile")
    s.add_argument("--quick", action="store_true",
                   help="1024x128 and 32768x4, forward and eager training step, few iterations")
    s.add_argument("--iters", type=int, help="timed iterations per cell (upper bound)")
    s.add_argument("--sdpa-backend", default="auto",
                   choices=["auto", "flash", "cudnn", "efficient", "math"])
    s.add_argument("--forward-mode", default="train", choices=["train", "eval"],
                   help="module mode of the no-grad forward (train = dropout on, as anchors.md)")
    s.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu: a smoke test of the script itself (use tiny --sizes)")
    s.add_argument("--out", help="JSON file (rewritten after every cell)")
    s.add_argument("--strict", action="store_true", help="exit 1 if any cell failed")

    args = p.parse_args(argv)
    try:
        return {"selfcheck": cmd_selfcheck, "make-case": cmd_make_case, "compare": cmd_compare,
                "bench": cmd_bench}[args.mode](args)
    except (ConfigError, ValueError) as e:
        print(f"torch_reference.py: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
