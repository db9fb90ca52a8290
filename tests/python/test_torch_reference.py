"""CPU checks of bench/torch_reference.py (the PyTorch oracle of our model). Not part of CI:
torch is not installed there. Run: python3 -m pytest tests/python/test_torch_reference.py

The attention and RoPE checks re-derive the semantics with explicit per-head loops in float64,
so the oracle itself is tested against a second, plainer reading of paper.md."""

import math
import os
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
import torch_reference as tr  # noqa: E402


def test_paper_parameter_counts():
    for name, want in tr.PAPER_COUNTS.items():
        c = tr.load_config(os.path.join(tr.REPO_ROOT, "configs", "paper", name + ".json"))
        with torch.device("meta"):
            model = tr.SQATransformer(c)
        assert sum(p.numel() for p in model.parameters()) == want, name
        assert [(n, tuple(t.shape)) for n, t in model.state_dict().items()] == \
            [(n, tuple(s)) for n, s in tr.parameter_specs(c)], name


def naive_attention(layer, x, causal, window, theta):
    """Per attention head h: query head and KV head from spec.hpp head_pair (H_q >= H_kv:
    (h, h / G); rSQA: (h % H_q, h)), explicit mask and softmax."""
    B, T, _ = x.shape
    hq, hkv, dh = layer.hq, layer.hkv, layer.dh
    q = (x @ layer.q_proj.weight.T).view(B, T, hq, dh)
    k = (x @ layer.k_proj.weight.T).view(B, T, hkv, dh)
    v = (x @ layer.v_proj.weight.T).view(B, T, hkv, dh)

    def rope(t):  # adjacent pairs as complex numbers: (x0 + i x1) * e^{i pos f}
        out = torch.empty_like(t)
        for pos in range(T):
            for i in range(dh // 2):
                ang = pos * theta ** (-2.0 * i / dh)
                z = torch.complex(t[:, pos, :, 2 * i], t[:, pos, :, 2 * i + 1]) * \
                    complex(math.cos(ang), math.sin(ang))
                out[:, pos, :, 2 * i], out[:, pos, :, 2 * i + 1] = z.real, z.imag
        return out

    q, k = rope(q), rope(k)
    ha = max(hq, hkv)
    out = torch.zeros(B, T, ha, dh, dtype=x.dtype)
    for h in range(ha):
        qh, kh = (h, h // (hq // hkv)) if hq >= hkv else (h % hq, h)
        for i in range(T):
            visible = [j for j in range(T)
                       if (not causal or j <= i) and (window == 0 or abs(i - j) <= window - 1)]
            s = torch.stack([(q[:, i, qh] * k[:, j, kh]).sum(-1) for j in visible], -1)
            p = torch.softmax(s / math.sqrt(dh), -1)
            out[:, i, h] = sum(p[:, n, None] * v[:, j, kh] for n, j in enumerate(visible))
    return out.reshape(B, T, -1) @ layer.o_proj.weight.T + layer.o_proj.bias


@pytest.mark.parametrize("hq,hkv,window,causal", [
    (4, 4, 0, True), (4, 2, 0, True), (4, 1, 0, False), (2, 4, 0, True), (1, 4, 3, True),
    (4, 2, 3, False), (2, 2, 5, True)])
def test_attention_matches_naive(hq, hkv, window, causal):
    torch.manual_seed(hq * 100 + hkv * 10 + window)
    c = tr.parse_config({"vocab_size": 11, "hidden_size": 16, "num_hidden_layers": 1,
                         "num_attention_heads": 4, "head_dim": 6, "intermediate_size": 8,
                         "max_position_embeddings": 32, "num_query_heads": hq,
                         "num_key_value_heads": hkv, "sliding_window": window,
                         "architecture": "decoder" if causal else "encoder"})
    attn = tr.Attention(c, c.layers[0]).double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    cos, sin = tr.rope_tables(9, c.head_dim, c.rope_theta, "cpu", torch.float64)
    got = attn(x, cos, sin)
    want = naive_attention(attn, x, causal, window, c.rope_theta)
    assert tr.rel_err(got, want) < 1e-12


def test_moe_matches_per_token_loop():
    torch.manual_seed(5)
    j = dict(tr._tiny_configs()["moe-paper"])
    c = tr.parse_config(j)
    moe = tr.MoE(c).double()
    x = torch.randn(13, c.d_model, dtype=torch.float64)
    y, aux = moe(x)
    probs = torch.softmax(x @ moe.router.weight.T, -1)
    want = torch.zeros_like(y)
    aux_want = 0.0
    for t in range(13):
        order = sorted(range(c.num_experts), key=lambda e: -probs[t, e].item())[:c.top_k]
        wsum = sum(probs[t, e] for e in order)
        for e in order:
            want[t] += probs[t, e] / wsum * moe.experts[e](x[t:t + 1])[0]
            aux_want += probs[t, e].item()
    assert tr.rel_err(y, want) < 1e-12
    assert abs(aux.item() - c.aux_loss_coef * c.num_experts / 13 * aux_want) < 1e-12


def test_bad_configs_name_the_field():
    base = tr._tiny_configs()["mha"]
    for bad, needle in (({**base, "head_dim": 7}, "head_dim (7)"),
                        ({**base, "num_query_heads": 3}, "not both"),
                        ({**base, "attention_variant": None, "num_query_heads": 3},
                         "num_query_heads (3) must be a multiple"),
                        ({**base, "hidden_act": "relu"}, "hidden_act ('relu')"),
                        ({k: v for k, v in base.items() if k != "intermediate_size"},
                         "intermediate_size")):
        bad = {k: v for k, v in bad.items() if v is not None}
        with pytest.raises(tr.ConfigError) as err:
            tr.parse_config(bad, "t")
        assert needle in str(err.value)
