"""`sqa dump` (the exchange format of bench/torch_reference.py compare), without torch:

- every tensor of the format is there with the right shape and metadata;
- the loss in the dump equals the masked mean cross-entropy recomputed here in float64 from the
  dumped float64-model logits (an independent check of the loss and the mask);
- the fp32 model agrees with the float64 model on logits and on every gradient;
- bad input is rejected with a message naming the value and the rule.

Weights come from a one-step `sqa train` run on real text (python3.11-doc), so the tensor names
are the checkpoint's. Run by ctest with SQA_TOOL=path/to/sqa."""

import json
import os
import subprocess

import numpy as np
import pytest

st = pytest.importorskip("safetensors.numpy")

SQA = os.environ.get("SQA_TOOL", "")
DOCS = "/usr/share/doc/python3.11/html/tutorial"

CONFIGS = {
    # rSQA in one layer, GQA inside a causal window in the other.
    "dense": {"name": "dump-dense", "vocab_size": 400, "hidden_size": 32,
              "num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 8,
              "intermediate_size": 48, "max_position_embeddings": 64,
              "layer_types": [{"attention_variant": "rsqa"},
                              {"num_query_heads": 4, "num_key_value_heads": 2,
                               "sliding_window": 8}]},
    "moe": {"name": "dump-moe", "vocab_size": 400, "hidden_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 4, "attention_variant": "sqa", "num_experts": 4,
            "num_experts_per_tok": 2, "moe_intermediate_size": 16,
            "max_position_embeddings": 64},
}


def run(*args, ok=True):
    p = subprocess.run([SQA, *args], capture_output=True, text=True)
    if ok and p.returncode != 0:
        raise AssertionError(f"sqa {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request, tmp_path_factory):
    if not SQA:
        pytest.skip("SQA_TOOL is not set")
    if not os.path.isdir(DOCS):
        pytest.fail(f"{DOCS} missing (install python3.11-doc)")
    d = tmp_path_factory.mktemp(request.param)
    config = d / "config.json"
    config.write_text(json.dumps(CONFIGS[request.param]))
    data = d / "data"
    data.mkdir()
    for name in ("controlflow.html", "introduction.html"):
        (data / name).write_bytes(open(os.path.join(DOCS, name), "rb").read())
    run("train", "--config", str(config), "--data", str(data), "--out", str(d / "run"),
        "--steps", "1", "--batch", "2", "--context", "16", "--ceiling-size", "64", "--quiet")
    rng = np.random.default_rng(7)
    B, T, V = 2, 24, CONFIGS[request.param]["vocab_size"]
    batch = {"tokens": rng.integers(0, V, (B, T)).astype(np.int32),
             "targets": rng.integers(0, V, (B, T)).astype(np.int32),
             "loss_mask": (rng.random((B, T)) < 0.7).astype(np.float32)}
    st.save_file(batch, str(d / "batch.safetensors"))
    dumps = {}
    for precision in ("fp32", "fp64"):
        out = d / f"dump-{precision}.safetensors"
        run("dump", "--config", str(config), "--weights", str(d / "run" / "model.safetensors"),
            "--batch", str(d / "batch.safetensors"), "--out", str(out),
            "--precision", precision)
        dumps[precision] = out
    return dict(dir=d, config=config, batch=batch, dumps=dumps, vocab=V,
                weights=st.load_file(str(d / "run" / "model.safetensors")))


def metadata(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n)).get("__metadata__", {})


def test_format(case):
    for precision, path in case["dumps"].items():
        dump = st.load_file(str(path))
        B, T = case["batch"]["tokens"].shape
        assert dump["logits"].shape == (B, T, case["vocab"])
        assert dump["loss"].shape == (1,) and dump["aux_loss"].shape == (1,)
        params = [n for n in case["weights"] if not n.startswith(("optim.", "adam"))]
        for name in params:
            assert dump["grad." + name].shape == case["weights"][name].shape, name
        assert metadata(path)["precision"] == precision


def test_loss_is_masked_cross_entropy(case):
    dump = st.load_file(str(case["dumps"]["fp64"]))
    logits = dump["logits"].astype(np.float64)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    tgt = case["batch"]["targets"]
    nll = -np.take_along_axis(logp, tgt[..., None].astype(np.int64), -1)[..., 0]
    mask = case["batch"]["loss_mask"].astype(np.float64)
    want = (nll * mask).sum() / mask.sum()
    assert abs(float(dump["loss"][0]) - want) <= 1e-5 * abs(want)


def test_fp32_matches_fp64(case):
    a = st.load_file(str(case["dumps"]["fp32"]))
    b = st.load_file(str(case["dumps"]["fp64"]))
    for name, ref in b.items():
        ref = ref.astype(np.float64)
        scale = max(np.abs(ref).max(), 1e-30)
        err = np.abs(a[name].astype(np.float64) - ref).max() / scale
        assert err < 1e-4, f"{name}: fp32 vs fp64 relative error {err:.2e}"


def test_bad_input_is_named(case):
    d = case["dir"]
    bad = dict(case["batch"])
    bad["tokens"] = bad["tokens"].copy()
    bad["tokens"][0, 3] = case["vocab"] + 5
    st.save_file(bad, str(d / "bad.safetensors"))
    p = run("dump", "--config", str(case["config"]), "--weights",
            str(d / "run" / "model.safetensors"), "--batch", str(d / "bad.safetensors"),
            "--out", str(d / "bad-dump.safetensors"), ok=False)
    assert p.returncode != 0
    assert f"({case['vocab'] + 5})" in p.stderr and "vocab_size" in p.stderr, p.stderr
    assert not (d / "bad-dump.safetensors").exists()
    p = run("dump", "--config", str(case["config"]), "--weights",
            str(d / "run" / "model.safetensors"), "--batch", str(d / "batch.safetensors"),
            "--out", str(d / "x.safetensors"), "--precision", "fp16", ok=False)
    assert "--precision (fp16) must be fp32 or fp64 on the CPU" in p.stderr, p.stderr
