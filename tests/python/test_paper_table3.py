"""bench/paper/speed_to_table3.py and report.py's Table 3 on a synthetic model_speed run: the
cells keep their numbers, names and kinds, and every cell's speed-up over MHA is computed
from the same row."""
import io
import json
import os
import re
import sys
import tarfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench", "paper"))
import report  # noqa: E402
import speed_to_table3  # noqa: E402

DATE = "2031-01-02"


def sqa_run(name: str, seqlen: int, batch: int, part: str, seconds: float) -> dict:
    tokens = seqlen * batch
    return {"name": f"dense-{name}", "config": f"configs/paper/dense-{name}.json",
            "seqlen": seqlen, "batch": batch, "parameters": 1000,
            part: {"median_s": seconds, "min_s": seconds * 0.99, "tokens_per_s": tokens / seconds,
                   "mfu": 0.2, "iters": 3}}


def torch_cell(variant: str, kind: str, seqlen: int, batch: int, seconds: float) -> dict:
    return {"variant": variant, "kind": kind, "seqlen": seqlen, "batch": batch,
            "median_s": seconds, "tokens_per_s": seqlen * batch / seconds}


def write_tgz(path: str, files: dict) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in files.items():
            data = json.dumps(obj).encode()
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_speed_run_becomes_table3_cells(tmp_path):
    head = {"tool": "t", "date": f"{DATE}T00:00:00+00:00", "gpu": "H200", "settings": {}}
    files = {
        "train-mha.json": sqa_run("mha", 1024, 128, "train", 0.040),
        "train-xsqa.json": sqa_run("xsqa", 1024, 128, "train", 0.025),
        "fwd200k-mha.json": sqa_run("mha", 200000, 1, "forward", 1.2),
        "fwd200k-xsqa.json": sqa_run("xsqa", 200000, 1, "forward", 0.3),
        "fwd200k-swsqa.json": sqa_run("swsqa", 200000, 1, "forward", 0.015),
        "torch-compile.json": dict(head, results=[
            torch_cell("mha", "train_compile", 1024, 128, 0.070),
            torch_cell("xsqa", "train_compile", 1024, 128, 0.042)]),
        "torch-forward.json": dict(head, results=[
            torch_cell("mha", "forward", 200000, 1, 1.5),
            torch_cell("xsqa", "forward", 200000, 1, 0.36),
            torch_cell("sw-sqa", "forward", 200000, 1, 0.0375)]),
    }
    tgz = tmp_path / "speed-json.tgz"
    write_tgz(str(tgz), files)
    out = tmp_path / "results"
    out.mkdir()
    assert speed_to_table3.main([str(tgz), "--results-dir", str(out)]) == 0

    sqa = json.load(open(out / f"{DATE}-table3-sqa-speed-h200.json"))
    ref = json.load(open(out / f"{DATE}-table3-torch-speed-h200.json"))
    cells = {(c["variant"], c["kind"], c["seqlen"]): c for c in sqa["results"]}
    assert set(cells) == {("mha", "train", 1024), ("xsqa", "train", 1024),
                          ("mha", "forward", 200000), ("xsqa", "forward", 200000),
                          ("swsqa", "forward", 200000)}
    assert cells[("xsqa", "train", 1024)]["median_s"] == 0.025
    assert cells[("mha", "forward", 200000)]["batch"] == 1
    assert len(ref["results"]) == 5  # both torch parts, nothing dropped

    text = report.table3_section([str(out / f"{DATE}-table3-sqa-speed-h200.json")],
                                 [str(out / f"{DATE}-table3-torch-speed-h200.json")], False)
    lines = text.split("\n")
    row = next(x for x in lines if x.startswith("| 200,000 × 1 | sqa (H200)"))
    assert "0.3000 (4.00x)" in row and "1.2000 (1.00x)" in row and "0.0150 (80.00x)" in row
    assert row.rstrip().endswith("| 4.00x |")
    torch_row = next(x for x in lines if x.startswith("| 200,000 × 1 | PyTorch (H200)"))
    assert "0.0375 (40.00x)" in torch_row  # sw-sqa matched to the SW-SQA column
    train_lines = text.split("Training step")[1].split("\n")
    train = next(x for x in train_lines if x.startswith("| 1,024 × 128 | sqa (H200)"))
    # tokens/s: MHA 3.2768M, xSQA 5.24288M -> 1.60x
    assert re.search(r"5\.243 \(1\.60x\)", train) and "3.277 (1.00x)" in train
    compile_row = next(x for x in lines if x.startswith("| 1,024 × 128 | PyTorch compile"))
    assert "1.872 (1.00x)" in compile_row
    assert "paper (A100)" in text  # the paper's rows stay


def test_missing_parts_are_an_error(tmp_path, capsys):
    tgz = tmp_path / "speed-json.tgz"
    write_tgz(str(tgz), {"train-mha.json": sqa_run("mha", 1024, 128, "train", 0.04)})
    assert speed_to_table3.main([str(tgz), "--results-dir", str(tmp_path)]) == 1
    assert "needs train-*/fwd200k-* and torch-*.json" in capsys.readouterr().err
