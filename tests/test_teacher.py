"""The teacher recipe's supervision is only as good as its labels: check where they point.
python -m pytest tests/test_teacher.py"""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import model as M
import posttrain as P
import teacher as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tok():
    return M.load_tokenizer(os.path.join(ROOT, "data", "tokenizer"))


def ink(pixels):
    """Dark-on-light or light-on-dark: a glyph makes the region's brightness vary."""
    return float(np.asarray(pixels, dtype=np.float32).std())


def test_glyph_labels_sit_on_ink():
    for seed in range(5):  # one image of each kind
        x, y = T.glyph_tiles(seed)
        img = (x * torch.tensor(M.IMAGENET_STD)[:, None, None] + torch.tensor(M.IMAGENET_MEAN)[:, None, None]).mean(1)
        g = T.S // 14
        for t, p, slot in (y > 0).nonzero().tolist()[:40]:
            r, c = divmod(p, g)
            half = img[t, r * 14:(r + 1) * 14, c * 14 + 7 * slot:c * 14 + 7 * slot + 7]
            assert ink(half) > 0.02, (seed, t, p, slot)
        assert (y > 0).sum() > 5


def test_piece_spans_rebuild_the_text(tok):
    for seed in range(10):
        text = T.make_sample(T.KINDS[seed % 5], seed)["transcription"]
        ids = tok.encode(text, bos=False)
        spans = T.piece_spans(tok, ids)
        assert spans[-1][1] == len(text)
        assert all(tok.decode([i]) in (text[b:e], "") for i, (b, e) in zip(ids, spans) if not tok.sp.is_byte(i))


def test_pointers_land_on_the_glyph(tok):
    cfg = P.Config(max_len=4096)
    model = M.InternVLChat(T.teacher_config(tok.vocab_size))
    model.img_context_token_id = tok.token_to_id(M.IMG_CONTEXT)
    convs = [T.read_conversation(seed, transcribe_frac=0.5, qa_turns=2) for seed in range(6)]
    batch = T.read_batch(convs, tok, model, cfg)
    assert len(batch["pointers"]) > 20
    ids, labels = batch["input_ids"], batch["labels"]
    tiles = torch.split(batch["pixel_values"], batch["num_tiles"])
    for b, q, k in batch["pointers"].tolist():
        assert ids[b, k] == model.img_context_token_id and labels[b, q + 1] != -100
        first = (ids[b] == model.img_context_token_id).nonzero()[0].item()
        t, v = divmod(k - first, 16)
        r, c = divmod(v, 4)
        region = tiles[b][t].mean(0)[r * 28:(r + 1) * 28, c * 28:(c + 1) * 28]
        assert ink(region) > 0.05  # the visual token pointed at holds ink


def test_pointer_nll_is_the_attention_of_head_0(tok):
    torch.manual_seed(0)
    model = M.InternVLChat(M.tiny_config(vocab_size=tok.vocab_size, image_size=56)).eval()
    probe = T.AttentionInputs(model, 1)
    ids = torch.randint(10, 900, (2, 12))
    ptr = torch.tensor([[0, 5, 2], [1, 11, 0], [1, 7, 7]])
    with torch.no_grad():
        model(None, ids)
        nll, _ = T.pointer_nll(probe.seen, ptr)
        # an independent eager attention of layer -1, head 0, from the layer's own input
        attn, x, cos, sin = probe.seen[0]
        d, H = attn.head_dim, x.shape[-1]
        W = attn.wqkv.weight.view(attn.n_kv, attn.group + 2, d, H)
        q, k = x @ W[0, 0].T, x @ W[0, attn.group].T
        rot = lambda t: t * cos[:, 0] + torch.cat([-t[..., d // 2:], t[..., :d // 2]], -1) * sin[:, 0]
        scores = (rot(q) @ rot(k).transpose(1, 2)) / math.sqrt(d)
        scores = scores.masked_fill(torch.ones(12, 12, dtype=torch.bool).triu(1), float("-inf"))
        p = scores.softmax(-1)
        want = -sum(math.log(p[b, qp, kp]) for b, qp, kp in ptr.tolist())
    assert abs(nll.item() - want) < 1e-4


def test_kinds_choose_the_images_and_bad_kinds_are_refused():
    charts = [T.read_conversation(seed, 0.0, 2, kinds=["chart", "info"]) for seed in range(4)]
    assert [c["sample"]["kind"] for c in charts] == ["chart", "info", "chart", "info"]
    r = subprocess.run([sys.executable, os.path.join(ROOT, "teacher.py"), "--stage", "read", "--kinds", "doc,charts",
                        "--out", "unused", "--steps", "1"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == ["teacher.py: error: --kinds 'doc,charts': each must be one of doc,table,chart,info,scene"]
