"""bench.py at the tiny CPU shape: every (tiles, ratio) row, the students' visual tokens, the FLOP-ideal
speedups, the transformers peer's logits against ours (the converter), and the run without transformers.

    python -m pytest tests/test_bench.py -q
"""
import contextlib
import io
import json
import math
import re
import sys
from dataclasses import replace

import pytest
import torch

import bench as B

ARGV = ["--shape", "tiny", "--device", "cpu", "--tiles", "1", "2", "--repeats", "1", "--steps", "2",
        "--distill-batches", "1", "2", "--threads", "1"]


def run(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        res = B.main([*ARGV, *argv])
    return res, out.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    res, text = run("--json", str(path))
    return res, text, path


def test_every_tiles_and_ratio_row_is_printed(tiny):
    res, text, _ = tiny
    ours = text.split("transformers peer")[0]
    for n in (1, 2):
        for r in ("1.00", "0.50", "0.25"):
            figures = r"\s+[\d.]+" * 5 + r"\s+-"  # ViT, prefill, TTFT, b1, b8; no peak memory on a CPU
            assert re.search(rf"^\s+{n}\s+{r}\s+\d+{figures}\s+x[\d.]+ / x[\d.]+ / \d+%$", ours, re.M), \
                f"no row for {n} tiles at ratio {r} in:\n{ours}"
    assert [(r["tiles"], r["ratio"]) for r in res["rows"]] == [(n, r) for n in (1, 2) for r in (1.0, 0.5, 0.25)]
    assert "stage-I distillation step" in text and "decode step at ratio 1.0" in text and "device's copy" in text
    assert list(res["bandwidth"]["modes"]) == ["eager_b1", "eager_b8"]  # graph and compile: CUDA only
    assert re.search(r"^\s+eager\s+8\s+[\d.]+\s+[\d.]+\s+\d+\s+[\d.]+$", text, re.M)
    assert [(r["ratio"], r["batch"]) for r in res["distill"]] == [(0.5, 1), (0.5, 2), (0.25, 1), (0.25, 2)]
    assert all(r["step_ms"] > 0 and r["peak_gb"] is None for r in res["distill"])


def test_students_have_half_and_a_quarter_of_the_visual_tokens(tiny):
    rows = {(r["tiles"], r["ratio"]): r for r in tiny[0]["rows"]}
    # 112 px: 8 x 8 patches, 4 x 4 tokens after the pixel shuffle; 2 tiles come with the thumbnail
    assert rows[1, 1.0]["visual_tokens"] == 16 and rows[2, 1.0]["visual_tokens"] == 48
    for n in (1, 2):
        full = rows[n, 1.0]["visual_tokens"]
        assert rows[n, 0.5]["visual_tokens"] * 2 == full and rows[n, 0.25]["visual_tokens"] * 4 == full
        assert rows[n, 0.5]["seq_len"] == full // 2 + 64  # the students' prompts are shorter by the same


def test_ideal_speedup_is_above_1_and_below_1_over_ratio(tiny):
    for r in tiny[0]["rows"]:
        if r["ratio"] == 1:
            assert r["ideal"] == 1 and r["speedup"] == 1
        else:  # the ViT's cost stays: never the full 1/ratio
            assert 1 < r["ideal"] < 1 / r["ratio"], r


def test_json_holds_what_was_printed(tiny):
    res, _, path = tiny
    saved = json.loads(path.read_text())
    assert saved["rows"] == json.loads(json.dumps(res["rows"])) and saved["bandwidth"] == res["bandwidth"]
    assert not list(path.parent.glob("*.tmp"))


def test_flops_match_the_parameter_count():
    """flops() against 2 x (matmul parameters) x tokens + attention, the parameters counted on the 2B model."""
    cfg = B.SHAPES["2b"]
    with torch.device("meta"):
        m = B.M.InternVLChat(cfg)
    count = lambda mod, skip=(): sum(p.numel() for k, p in mod.named_parameters() if p.dim() > 1 and k not in skip)
    D, V, N = cfg.llm.hidden_size, cfg.llm.vocab_size, 1025
    vit = 2 * N * count(m.vision_model, ("embeddings.class_embedding", "embeddings.position_embedding")) \
        + 24 * 4 * N * N * 1024
    assert math.isclose(B.flops(cfg, 1, 0, 0, 1.0) - 2 * D * V, vit, rel_tol=2e-3)
    L = 1000
    llm = 2 * L * count(m.language_model.model, ("tok_embeddings.weight",)) + 24 * 2 * D * L * (L + 1) + 2 * D * V
    assert math.isclose(B.flops(cfg, 0, 0, L, 1.0), llm, rel_tol=1e-9)
    mlp1 = B.flops(cfg, 1, 256, 0, 1.0) - B.flops(cfg, 1, 0, 256, 1.0)  # the same sequence, with or without images
    assert math.isclose(mlp1, 2 * 256 * count(m.mlp1), rel_tol=1e-9)


def test_compressor_flops_match_the_parameter_count():
    """A kept token costs 2 x select's matrix parameters, plus its T x T x W distance GEMM."""
    cfg, tiles, kept = B.SHAPES["2b"], 13, 128  # 13 tiles at ratio 0.5: 3,328 tokens, 1,664 kept
    W = 4096
    student = B.C.build(replace(cfg, compressor={"method": "select", "ratio": 0.5}))
    matrices = sum(p.numel() for p in student.parameters() if p.dim() > 1)
    cost = B.flops(cfg, tiles, kept, 0, 0.5) - B.flops(cfg, tiles, kept, 0, 1.0)
    assert math.isclose(cost, 2 * tiles * kept * matrices + 2 * (tiles * 256) ** 2 * W, rel_tol=1e-9)


def test_peer_logits_equal_ours(tiny):
    pytest.importorskip("transformers")
    res, text, _ = tiny
    assert res["peer_logits_max_abs_diff"] < 1e-4
    assert [r["tiles"] for r in res["peer"]] == [1, 2] and "logits max |diff| vs ours" in text


def test_converter_shares_weights_and_a_wrong_weight_shows():
    pytest.importorskip("transformers")
    model = B.build(B.SHAPES["tiny"], "cpu", torch.float32, seed=1)
    hf = B.to_transformers(model)
    args = B.parse_args(ARGV)
    pv, ids = B.inputs(model.config, 2, model.num_image_token, args)  # 2 tiles + the thumbnail
    diff = lambda: (hf(input_ids=ids, pixel_values=pv).logits - model(pv, ids)).abs().max().item()
    with torch.no_grad():
        assert diff() < 1e-4
        qkv = model.vision_model.encoder.layers[0].attn.qkv.weight
        assert hf.model.vision_tower.encoder.layer[0].attention.k_proj.weight.data_ptr() == qkv[64:].data_ptr()
        k = hf.model.language_model.layers[1].self_attn.k_proj.weight  # unpacked from wqkv: a copy
        k.data = k.data.roll(32, 0)  # the two kv heads swapped
        assert diff() > 1e-2


def test_without_transformers_the_peer_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
    res, text = run("--tiles", "1", "--distill-batches", "1")
    assert "transformers: not installed" in text and res["peer"] == [] and res["transformers"] is None


def test_kernels_agree_with_eager_and_are_put_against_a_copy(monkeypatch, capsys):
    """bench.py --kernels on a CPU (torch.compile left out: it takes a minute here): every backend matches the eager
    one, and the gather is put against a copy that reads and writes as many bytes as it does."""
    monkeypatch.setattr(torch, "compile", lambda fn: fn)
    copies = []
    copy_gb_s = B.copy_gb_s
    monkeypatch.setattr(B, "copy_gb_s", lambda nbytes, *a: copies.append(nbytes) or copy_gb_s(nbytes, *a))
    res = B.main(["--kernels", "--shape", "tiny", "--device", "cpu", "--tiles", "2", "--threads", "1"])
    out = capsys.readouterr().out
    rows = res["kernels"]
    assert [r["kernel"] for r in rows] == ["merge"] * 6 + ["rarity"] * 3 + ["gather"], rows
    assert max(r["max_diff"] for r in rows) < 1e-4 and out.count("max |diff|") == len(rows), out
    # 2 tiles + the thumbnail of tiny's 4 x 4 grid of 256 channels: half the 48 tokens kept, 3 cells each, fp32
    gather_bytes = 2 * 3 * (3 * 4 * 4 // 2) * 256 * 4
    assert f"{gather_bytes} bytes read and written" in out and copies[-1] * 2 == gather_bytes, (out, copies)
    assert copies[0] == 3 * 4 * 4 * 256 * 4 and "% of copy" in out  # the merge's: the grid
    assert (res["tiles"], res["grid"], res["width"], res["device"]) == (3, 4, 256, "cpu") and rows[0]["copy_gb_s"] > 0


def test_model_flags_are_refused_with_kernels(capsys):
    with pytest.raises(SystemExit) as e:
        B.main(["--kernels", "--steps", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err == ["bench.py: error: --steps is the model benchmark's, unused by --kernels: drop "
                                         "it (see python bench.py --help)"], err


def test_no_compile_is_refused_with_kernels_by_its_own_name(capsys):
    with pytest.raises(SystemExit):
        B.main(["--kernels", "--no-compile"])
    assert "--no-compile is the model benchmark's" in capsys.readouterr().err
