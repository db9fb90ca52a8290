"""Interop of sqa's file formats with the reference Python packages.

safetensors: files written by `safetensors.numpy` are read and rewritten by sqa (`sqa-data
st-copy`), and the rewritten file reads back identical in safetensors; BF16 written by sqa is
checked bit for bit against numpy's own rounding.

tokenizers: a tokenizer.json trained by sqa loads in Hugging Face `tokenizers` and gives the same
ids on real and adversarial text; a tokenizer trained by `tokenizers` loads in sqa and gives the
same ids.

Needs: pip install numpy safetensors tokenizers pytest. The tool comes from SQA_DATA_TOOL (set
by ctest) or build/sqa-data.
"""
import json
import os
import pathlib
import random
import subprocess

import pytest

np = pytest.importorskip("numpy")

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOOL = os.environ.get("SQA_DATA_TOOL", str(ROOT / "build" / "sqa-data"))
DOCS = pathlib.Path(os.environ.get("SQA_TEXT_DIR", "/usr/share/doc/python3.11/html"))


def run_tool(*args):
    result = subprocess.run([TOOL, *map(str, args)], capture_output=True)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


@pytest.fixture(scope="module")
def tool():
    if not os.path.exists(TOOL):
        pytest.skip(f"sqa-data not built at {TOOL}")
    return TOOL


# ----------------------------------------------------------------------------------------------
# safetensors


def test_safetensors_numpy_to_sqa_and_back(tool, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(7)
    tensors = {
        "embed.weight": rng.standard_normal((17, 8)).astype(np.float32),
        "layers.0.attn.o_proj.bias": rng.standard_normal(8).astype(np.float16),
        "scalar": np.array(3.5, dtype=np.float64),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "steps": rng.integers(-2**40, 2**40, size=(3, 2), dtype=np.int64),
        "ids": rng.integers(-2**30, 2**30, size=5, dtype=np.int32),
        "bytes": rng.integers(0, 256, size=11, dtype=np.uint8),
        "mask": rng.integers(0, 2, size=4).astype(bool),
    }
    src = tmp_path / "from_python.safetensors"
    st.save_file(tensors, str(src), metadata={"format": "pt", "note": "interop"})
    info = json.loads(run_tool("st-info", src))
    assert info["metadata"] == {"format": "pt", "note": "interop"}
    assert info["tensors"]["embed.weight"] == {"dtype": "F32", "shape": [17, 8], "nbytes": 17 * 8 * 4}
    out = tmp_path / "from_sqa.safetensors"
    run_tool("st-copy", src, out)
    back = st.load_file(str(out))
    assert set(back) == set(tensors)
    for name, value in tensors.items():
        assert back[name].dtype == value.dtype, name
        assert back[name].shape == value.shape, name
        np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_sqa_bf16_and_f16_match_numpy_rounding(tool, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(8)
    values = (rng.standard_normal(4096) * 10.0 ** rng.integers(-6, 5, 4096)).astype(np.float32)
    src = tmp_path / "f32.safetensors"
    st.save_file({"w": values}, str(src))
    half = tmp_path / "f16.safetensors"
    run_tool("st-copy", src, half, "--dtype", "F16")
    np.testing.assert_array_equal(st.load_file(str(half))["w"], values.astype(np.float16))
    bf = tmp_path / "bf16.safetensors"
    run_tool("st-copy", src, bf, "--dtype", "BF16")
    raw = bf.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    assert header["w"]["dtype"] == "BF16" and header["w"]["shape"] == [4096]
    begin, end = header["w"]["data_offsets"]
    got = np.frombuffer(raw[8 + n + begin:8 + n + end], dtype=np.uint16)
    bits = values.view(np.uint32).astype(np.uint64)
    expected = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # nearest even
    np.testing.assert_array_equal(got, expected)


def test_corrupt_file_is_a_clear_error(tool, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    src = tmp_path / "ok.safetensors"
    st.save_file({"w": np.ones((4, 4), dtype=np.float32)}, str(src))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(src.read_bytes()[:-5])
    result = subprocess.run([tool, "st-info", str(cut)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "cut.safetensors" in result.stderr and "'w'" in result.stderr, result.stderr


# ----------------------------------------------------------------------------------------------
# tokenizer.json


def real_text(limit_pages=12):
    pages = sorted((DOCS / "tutorial").glob("*.html"))[:limit_pages]
    if not pages:
        pytest.skip(f"no documentation pages under {DOCS} (install python3.11-doc)")
    return pages


def adversarial_texts():
    rng = random.Random(9)
    pieces = ["a", "Z", " ", "  ", "\n", "\t", "\r\n", "'", "'s", "'ll", "'RE", "0", "42", ".",
              "!?", "é", "ß", "Ω", "ж", "中文", "٣", "½", "Ⅻ", "\u00a0", "\u2003", "\u3000", "😀",
              "—", "“", "e\u0301", "<|endoftext|>", "<pad>", "don't", "x  y", "\n\n  z"]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 60))) for _ in range(120)]


def test_hf_tokenizers_loads_ours_with_same_ids(tool, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    pages = real_text()
    corpus = tmp_path / "pages"
    corpus.mkdir()
    for page in pages:
        (corpus / page.name).write_bytes(page.read_bytes())
    tok_path = tmp_path / "tokenizer.json"
    run_tool("tokenizer", "--data", corpus, "--vocab", 1500, "--out", tok_path)
    hf = tokenizers.Tokenizer.from_file(str(tok_path))
    assert hf.get_vocab_size() == 1500
    texts = adversarial_texts()
    # Real text: the plain-text rendering sqa itself uses, via the corpus command.
    text_file = tmp_path / "docs.txt"
    run_tool("corpus", "--html", corpus, "--out", text_file)
    texts.append(text_file.read_text(encoding="utf-8"))
    for i, text in enumerate(texts):
        sample = tmp_path / "sample.txt"
        sample.write_text(text, encoding="utf-8", newline="")
        ours = json.loads(run_tool("encode", "--tokenizer", tok_path, "--text", sample))
        theirs = hf.encode(text).ids
        assert ours == theirs, f"text {i}: {text[:80]!r}"
        assert hf.decode(ours, skip_special_tokens=False) == text


def test_ours_loads_hf_trained_tokenizer(tool, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    texts = [p.read_text(encoding="utf-8") for p in real_text(6)]
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer)
    path = tmp_path / "hf_tokenizer.json"
    hf.save(str(path))
    for i, text in enumerate(adversarial_texts()[:100] + [texts[0][:20000]]):
        sample = tmp_path / "sample.txt"
        sample.write_text(text, encoding="utf-8", newline="")
        ours = json.loads(run_tool("encode", "--tokenizer", path, "--text", sample))
        assert ours == hf.encode(text).ids, f"text {i}: {text[:80]!r}"
        ids_file = tmp_path / "ids.json"
        ids_file.write_text(json.dumps(ours))
        assert run_tool("decode", "--tokenizer", path, "--ids", ids_file).decode("utf-8") == text
