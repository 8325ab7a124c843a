"""The teacher recipe's supervision is only as good as its labels: check where they point.
python -m pytest tests/test_teacher.py"""
import json
import math
import os
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import model as M
import posttrain as P
import teacher as T
from conftest import run_main
from tokenizer import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(os.path.join(ROOT, "data", "tokenizer"))


def ink(pixels):
    """Dark-on-light or light-on-dark: a glyph makes the region's brightness vary."""
    return float(np.asarray(pixels, dtype=np.float32).std())


def test_glyph_labels_sit_on_ink():
    for seed in range(5):  # one image of each kind, and two word crops' thumbnails after its tiles
        x, y = T.glyph_tiles(seed, crops=2)
        img = (x * torch.tensor(M.IMAGENET_STD)[:, None, None] + torch.tensor(M.IMAGENET_MEAN)[:, None, None]).mean(1)
        g = T.S // 14
        for t, p, slot in (y > 0).nonzero().tolist()[:40]:
            r, c = divmod(p, g)
            half = img[t, r * 14:(r + 1) * 14, c * 14 + 7 * slot:c * 14 + 7 * slot + 7]
            assert ink(half) > 0.02, (seed, t, p, slot)
        assert (y > 0).sum() > 5 and (y[-2:] > 0).sum(dim=(1, 2)).min() >= 3  # crops hold words of 3+ letters


def test_piece_spans_rebuild_the_text(tok):
    for seed in range(10):
        text = T.make_sample(T.KINDS[seed % 5], seed)["transcription"]
        ids = tok.encode(text, bos=False)
        spans = T.piece_spans(tok, ids)
        assert spans[-1][1] == len(text)
        assert all(tok.decode([i]) in (text[b:e], "") for i, (b, e) in zip(ids, spans) if not tok.sp.is_byte(i))


@pytest.mark.parametrize("family", ["shipped", "mix"])
def test_pointers_land_on_the_glyph(tok, family):
    cfg = P.TrainConfig(max_len=4096)
    model = M.InternVLChat(T.teacher_config(tok.vocab_size))
    model.img_context_token_id = tok.token_to_id(M.IMG_CONTEXT)
    convs = [T.read_conversation(seed, transcribe_frac=0.5, qa_turns=2, crop_frac=0.3, images=T.Images(family))
             for seed in range(8)]
    assert 0 < sum(c.get("thumbnail", False) for c in convs) < 8
    batch = T.read_batch(convs, tok, model, cfg)
    assert len(batch["pointers"]) > 20
    ids, labels = batch["input_ids"], batch["labels"]
    tiles = torch.split(batch["pixel_values"], batch["num_tiles"])
    for b, q, *keys in batch["pointers"].tolist():
        assert labels[b, q + 1] != -100
        for k in keys:
            assert ids[b, k] == model.img_context_token_id
            first = (ids[b] == model.img_context_token_id).nonzero()[0].item()
            t, v = divmod(k - first, 16)
            r, c = divmod(v, 4)
            assert not convs[b].get("thumbnail") or t == len(tiles[b]) - 1  # a word crop: its thumbnail
            region = tiles[b][t].mean(0)[r * 28:(r + 1) * 28, c * 28:(c + 1) * 28]
            assert ink(region) > 0.05  # the visual token pointed at holds ink


def test_key_questions_point_first_at_the_key_then_at_the_value():
    seen = 0
    for seed in range(12):
        conv = T.read_conversation(seed, 0.0, 5, kinds=["chart", "info"])
        chars = conv["sample"]["chars"]
        questions = [m["value"] for m in conv["conversations"] if m["from"] == "human"]
        answers = [m["value"] for m in conv["conversations"] if m["from"] == "gpt"]
        for q, a, glyphs, hop1 in zip(questions, answers, conv["glyphs"], conv["hop1"]):
            key = T.KEY_QUESTION.match(q.removeprefix("<image>\n").split(T.PROMPT)[0].rstrip())
            if glyphs[0] < 0:
                continue  # an answer printed twice: no pointer at all
            assert "".join(chars[g]["char"] for g in glyphs if g >= 0) == a.replace(" ", "")
            if key and hop1[0] >= 0:
                assert set(hop1) == {hop1[0]} and chars[hop1[0]]["char"] == key.group(1)[-1]
                seen += 1
            elif not key:
                assert hop1 == glyphs
    assert seen > 20


def test_pointer_and_pair_nll_are_the_attention_of_head_0(tok):
    torch.manual_seed(0)
    model = M.InternVLChat(M.tiny_config(vocab_size=tok.vocab_size, image_size=56)).eval()
    n = model.config.llm.num_hidden_layers
    probe = T.AttentionInputs(model, [0, n - 2, n - 1])  # layer 0: the pair loss's
    ids = torch.randint(10, 900, (2, 12))
    ptr = torch.tensor([[0, 5, 2, 4], [1, 11, 0, 3], [1, 7, 7, 1]])  # batch, query, last layer's key, first hop's key
    pairs = torch.tensor([[0, 9, 2, 5, *[-1] * 6], [1, 11, 4, *[-1] * 7]])  # batch, key's token, value's tokens

    def eager_attention(attn, x, cos, sin):  # an independent eager attention of head 0, from the layer's own input
        d, H = attn.head_dim, x.shape[-1]
        W = attn.wqkv.weight.view(attn.n_kv, attn.group + 2, d, H)
        q, k = x @ W[0, 0].T, x @ W[0, attn.group].T
        rot = lambda t: t * cos[:, 0] + torch.cat([-t[..., d // 2:], t[..., :d // 2]], -1) * sin[:, 0]
        scores = (rot(q) @ rot(k).transpose(1, 2)) / math.sqrt(d)
        return scores.masked_fill(torch.ones(12, 12, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)

    with torch.no_grad():
        model(None, ids)
        p0, p1, p2 = (eager_attention(*seen) for seen in probe.seen)
        nll, _ = T.pointer_nll(probe.seen[1:], ptr)
        pair, hits = T.pair_nll(probe.seen[0], pairs)
    want = -sum(math.log(p1[b, q, k1]) + math.log(p2[b, q, k]) for b, q, k, k1 in ptr.tolist()) / 2
    assert abs(nll.item() - want) < 1e-4
    # a pair: -log of the attention summed over its value's tokens
    want = -sum(math.log(sum(p0[b, q, k] for k in ks if k >= 0)) for b, q, *ks in pairs.tolist())
    assert abs(pair.item() - want) < 1e-4
    assert hits == sum(p0[b, q].argmax().item() in ks for b, q, *ks in pairs.tolist())


def test_pairs_point_from_a_key_to_the_value_printed_above_it(tok):
    cfg = P.TrainConfig(max_len=4096)
    model = M.InternVLChat(T.teacher_config(tok.vocab_size))
    model.img_context_token_id = tok.token_to_id(M.IMG_CONTEXT)
    convs = [T.read_conversation(seed, 0.5, 2, kinds=["chart", "info", "doc"]) for seed in range(6)]
    for conv in convs:  # every key question of a chart or infographic, whatever the conversation asks
        chars = conv["sample"]["chars"]
        keyed = {(m.group(1), qa["answer"]) for qa in conv["sample"]["qa"] if (m := T.KEY_QUESTION.match(qa["question"]))}
        got = {(chars[k]["char"], "".join(chars[g]["char"] for g in v)) for k, v in conv["pairs"]}
        assert got <= {(key[-1], value.replace(" ", "")) for key, value in keyed} and len(got) >= len(keyed) // 2
    batch = T.read_batch(convs, tok, model, cfg, with_pairs=True)
    pairs, ids = batch["pair_pointers"], batch["input_ids"]
    assert len(pairs) > 10 and set(pairs[:, 0].tolist()) <= {0, 1, 3, 4}  # no pairs on documents
    for b, q, *targets in pairs.tolist():
        targets = [t for t in targets if t >= 0]
        assert targets and max(targets) < q  # the value comes first: the key's token can see it
        assert all(ids[b, t] == model.img_context_token_id for t in [q, *targets])


def test_wide_family_keys_point_at_the_printed_key():
    """--family mix: 30% shipped images, 70% data/wide.py's training family (never the held-out one); a keyed
    question's first hop is the key's last glyph where the key is printed after its value, else the value."""
    mix = T.Images("mix")
    families = [mix.sample("doc", seed).get("family", "shipped") for seed in range(20)]
    assert families.count("shipped") == 6 and set(families) == {"shipped", "train"}
    tenth = T.Images("mix", shipped_tenths=1)  # --shipped-share 0.1: the seeds ending in 0
    assert [tenth.sample("chart", seed).get("family", "shipped") for seed in range(20)].count("shipped") == 2
    two_hop = 0
    for seed in range(3, 40):
        if seed % 10 < 3:
            continue
        conv = T.read_conversation(seed, 0.0, 5, kinds=["chart", "info", "table"], images=mix)
        chars, qas = conv["sample"]["chars"], {qa["answer"]: qa for qa in conv["sample"]["qa"]}
        answers = [m["value"] for m in conv["conversations"] if m["from"] == "gpt"]
        for a, glyphs, hop1 in zip(answers, conv["glyphs"], conv["hop1"]):
            key = qas[a]["key"]
            if glyphs[0] < 0 or not key or hop1[0] < 0:
                continue
            assert set(hop1) == {hop1[0]} and chars[hop1[0]]["char"] == key.replace(" ", "")[-1]
            two_hop += 1
    assert two_hop > 30


def test_kinds_choose_the_images_and_bad_kinds_are_refused():
    charts = [T.read_conversation(seed, 0.0, 2, kinds=["chart", "info"]) for seed in range(4)]
    assert [c["sample"]["kind"] for c in charts] == ["chart", "info", "chart", "info"]
    r = run_main(T.main, "--stage", "read", "--kinds", "doc,charts",
                        "--out", "unused", "--steps", "1")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == ["teacher.py: error: --kinds 'doc,charts': each must be one of doc,table,chart,info,scene"]
    r = run_main(T.main, "--stage", "read", "--family", "heldout",
                        "--out", "unused", "--steps", "1")
    assert r.returncode == 2 and "the held-out family is never trained on" in r.stderr.strip(), r.stderr
    r = run_main(T.main, "--stage", "read", "--family", "mix",
                        "--shipped-share", "0.25", "--out", "unused", "--steps", "1")
    assert r.returncode == 2 and r.stderr.strip().startswith("teacher.py: error: --shipped-share 0.25: a multiple of 0.1")


@pytest.mark.parametrize("argv,words", [
    (["--stage", "glyphs", "--glyph-tiles", "0"], "--glyph-tiles 0: must be >= 1"),
    (["--stage", "read", "--pointer-layers", "0"], "--pointer-layers 0: must be >= 1"),
    (["--stage", "read", "--init", "checkpoints/tiny", "--pointer-layers", "9"], "at most the decoder's 4 layers"),
    (["--stage", "read", "--transcribe-frac", "-0.5"], "--transcribe-frac -0.5: must be >= 0"),
    (["--stage", "glyphs", "--glyph-vary", "-0.1"], "--glyph-vary -0.1: must be >= 0"),
    (["--stage", "glyphs", "--glyph-vary", "1.5"], "--glyph-vary 1.5: a share, from 0 to 1"),
    (["--stage", "glyphs", "--seed-offset", "999997"], "this stage would draw images at seeds up to 1000002000, past"),
    (["--stage", "glyphs", "--seed-offset", "99999", "--glyph-crops", "4"], "at seeds up to 1000040000, past 999998000"),
    (["--stage", "glyphs", "--glyph-vary", "0.5"], "--glyph-vary changes the training family's samples: add --family"),
    (["--stage", "glyphs", "--more-fonts"], "--more-fonts changes the training family's samples: add --family"),
    (["--stage", "read", "--synonyms"], "--synonyms changes the training family's samples: add --family"),
    (["--stage", "read", "--arrangements"], "--arrangements changes the training family's samples: add --family"),
    (["--stage", "read", "--legends"], "--legends changes the training family's samples: add --family"),
    (["--stage", "read", "--series-order"], "--series-order changes the training family's samples: add --family"),
    (["--stage", "read", "--synonyms", "--family", "mix", "--pair-layer", "0", "--pointer-layers", "1"],
     "--pair-layer finds its pairs by the questions' wording, which --synonyms changes"),
    (["--stage", "glyphs", "--synonyms", "--family", "mix"], "--synonyms is the read stage's, unused by --stage glyphs"),
    (["--stage", "read", "--seed-offset", "999997999"], "past 999998000"),
    (["--stage", "glyphs", "--kinds", "chart"], "--kinds is the read stage's, unused by --stage glyphs"),
    (["--stage", "glyphs", "--table-frac", "0.5"], "--table-frac is the read stage's, unused by --stage glyphs"),
    (["--stage", "read", "--table-frac", "-1"], "--table-frac -1: must be >= 0"),
    (["--stage", "glyphs", "--colour-weight", "1"], "--colour-weight is the read stage's, unused by --stage glyphs"),
    (["--stage", "read", "--colour-weight", "-1"], "--colour-weight -1: must be >= 0"),
    (["--stage", "glyphs", "--legend-hop"], "--legend-hop is the read stage's, unused by --stage glyphs"),
    (["--stage", "glyphs", "--trainable", "llm"], "--trainable is the read stage's"),
    (["--stage", "read", "--glyph-tiles", "2"], "--glyph-tiles is the glyph stage's, unused by --stage read"),
    (["--stage", "read", "--grow-layers", "-1"], "--grow-layers -1: must be >= 0"),
    (["--stage", "read", "--init", "checkpoints/tiny", "--grow-layers", "3"],
     "--grow-layers 3: from 1 to the 2 decoder layers before the 2 pointer layers"),
    (["--stage", "read", "--grow-layers", "1"], "--grow-layers deepens a trained model: pass its folder as --init"),
    (["--stage", "glyphs", "--grow-layers", "2"], "--grow-layers is the read stage's, unused by --stage glyphs"),
])
def test_bad_flags_are_one_line(argv, words, tmp_path):
    r = run_main(T.main, *argv, "--out", tmp_path / "out", "--steps", "1")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and words in err[0], err


def test_grown_decoder_answers_as_before_and_saves_its_depth(tmp_path):
    """grow_decoder's new layers add nothing to the residual stream: the same logits, the trained layers last (where
    the pointer loss looks), and a config that loads back at the new depth."""
    torch.manual_seed(0)
    model = M.InternVLChat(M.tiny_config()).eval()
    embeds, pos = torch.randn(2, 12, 64), torch.arange(12).expand(2, 12)
    with torch.no_grad():
        before = model.language_model(embeds, pos)
    trained = list(model.language_model.model.layers)
    with pytest.raises(T.Error, match="from 1 to the 1 decoder layers before the 1 pointer layers"):
        T.grow_decoder(model, 2, keep_last=1)
    T.grow_decoder(model, 1, keep_last=1)
    layers = model.language_model.model.layers
    assert len(layers) == 3 and layers[0] is trained[0] and layers[2] is trained[1] and layers[1] is not trained[0]
    with torch.no_grad():
        assert torch.equal(model.language_model(embeds, pos), before)
    assert torch.equal(layers[1].attention.wqkv.weight, trained[0].attention.wqkv.weight)  # learns from a copy
    M.save_model(model, tmp_path / "grown")
    assert len(M.load_model(tmp_path / "grown").language_model.model.layers) == 3


def test_unreadable_weights_are_one_line(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    r = run_main(T.main, "--stage", "glyphs", "--vision-from", tmp_path / "junk.safetensors", "--out", tmp_path / "o",
                 "--steps", "1")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "junk.safetensors is not a readable safetensors file" in err[0], err


def test_the_probes_are_drawn_unwidened(monkeypatch):
    """glyph_eval and read_eval draw their word crops from images.probe(), the run's family unwidened: a widened run
    is probed on the same images as its control."""
    seen = []

    class Drawn(Exception):
        pass

    def record(seed, rng, images):
        seen.append(images)
        raise Drawn  # the images asked for are all this test needs
    monkeypatch.setattr(T, "crop_tile", record)
    monkeypatch.setattr(T, "word_crop", record)
    grid = (T.S // 14) ** 2
    monkeypatch.setattr(T, "glyph_batch", lambda *a, **k: dict(pixel_values=torch.zeros(1, 3, T.S, T.S),
                                                               labels=torch.zeros(1, grid, 2, dtype=torch.long)))
    monkeypatch.setattr(T, "make_sample", lambda kind, seed, cfg: dict(image=Image.new("RGB", (8, 8)), qa=[]))
    widened = T.Images("mix", widen=(("more_fonts", True),))
    with pytest.raises(Drawn):
        T.glyph_eval(lambda x: torch.zeros(len(x), grid, 2, len(T.CHARS) + 1), widened)
    with pytest.raises(Drawn):
        T.read_eval(SimpleNamespace(eval=lambda: None), None, widened)
    assert seen == [T.Images("mix")] * 2


def test_glyph_vary_and_more_fonts_change_the_training_crops():
    crops = lambda images: [T.word_crop(seed, random.Random(0), images)[1].tobytes() for seed in T.EVAL_SEEDS[:8]]
    plain = crops(T.Images("mix"))
    for flag, value in (("glyph_vary", 1.0), ("more_fonts", True)):
        assert crops(T.Images("mix", widen=((flag, value),))) != plain, flag


def test_synonyms_reword_the_training_draws():
    questions = lambda images: [q["question"] for seed in T.EVAL_SEEDS[:6] for q in images.sample("doc", seed)["qa"]]
    assert questions(T.Images("train", widen=(("synonyms", True),))) != questions(T.Images("train"))


def test_chart_widenings_redraw_the_training_charts():
    charts = lambda images: [images.sample("chart", seed)["image"].tobytes() for seed in T.EVAL_SEEDS[:8]]
    plain = charts(T.Images("train"))
    for widening in ("arrangements", "legends", "series_order"):
        assert charts(T.Images("train", widen=((widening, True),))) != plain, widening


def test_a_resumed_stage_keeps_the_evaluations_before_its_checkpoint_once(tmp_path, monkeypatch):
    """eval.jsonl, like log.jsonl, is cut to the checkpoint's step on --resume: the steps after it are evaluated
    again, and each step appears once."""
    monkeypatch.chdir(ROOT)
    calls, batches, real_batch = iter(range(100)), iter(range(100)), T.glyph_batch
    monkeypatch.setattr(T, "glyph_eval", lambda net, images: {"eval_call": next(calls)})  # the probe is not tested here

    def batch_or_crash(*args):  # the run dies building step 4's batch: step 3 was evaluated, its checkpoint is step 2
        if next(batches) == 3:
            raise T.Error("preempted")
        return real_batch(*args)

    monkeypatch.setattr(T, "glyph_batch", batch_or_crash)
    for more, code in (((), 2), (("--resume",), 0)):
        r = run_main(T.main, "--stage", "glyphs", "--out", tmp_path / "o", "--steps", "5", "--eval-every", "1",
                     "--glyph-tiles", "1", "--glyph-crops", "0", "--save-every", "2", "--threads", "1", *more)
        assert r.returncode == code, r.stderr[-2000:]
    evals = [json.loads(line) for line in open(tmp_path / "o" / "eval.jsonl")]
    assert [r["step"] for r in evals] == [1, 2, 3, 4, 5] and evals[2]["eval_call"] == 3  # step 3's second evaluation


@pytest.mark.parametrize("layout", ["vgroup", "hgroup"])
def test_chart_tables_bind_each_value_to_its_category_and_series(monkeypatch, layout):
    """Where the table says a value is series j's for category c, it is drawn there: nearest to c's label along the
    category axis, and in the j-th bar of c's group; its pointers spell it."""
    monkeypatch.setattr(T.wide, "choose_layout", lambda rng, kind, family, **_: (rng.random(), layout)[1])
    images, axis = T.Images("train", widen=(("series_order", True),)), 0 if layout == "vgroup" else 1
    centre = lambda glyphs, chars: sum(chars[g]["box"][axis] + chars[g]["box"][axis + 2] for g in glyphs) / 2 / len(glyphs)
    checked, turned = 0, 0
    for seed in range(30):
        conv = T.read_conversation(seed, 0.0, 3, ["chart"], images=images, table_frac=1.0)
        answer, where, chars = conv["conversations"][1]["value"], conv["glyphs"][0], conv["sample"]["chars"]
        assert conv["conversations"][0]["value"] == "<image>\n" + T.TABLE_QUESTION
        assert all(chars[g]["char"] == a for a, g in zip(answer, where) if g >= 0)
        lines, at = answer.split("\n"), 0
        header = lines[0].split(" | ")
        turned += header[1:] != [n for pair in T.wide.SERIES for n in pair if n in header[1:]]
        spans = []  # per line, per cell: its glyph indices
        for line in lines:
            spans.append([where[at + b:at + b + len(cell)] for b, cell in
                          zip(np.cumsum([0] + [len(c) + 3 for c in line.split(" | ")[:-1]]), line.split(" | "))])
            at += len(line) + 1
        cats = {line.split(" | ")[0]: centre(cells[0], chars) for line, cells in zip(lines[1:], spans[1:])
                if min(cells[0]) >= 0}
        for line, cells in zip(lines[1:], spans[1:]):
            values = [centre(g, chars) if min(g) >= 0 else None for g in cells[1:]]
            for v in values:
                if v is not None and len(cats) == len(lines) - 1:
                    assert min(cats, key=lambda c: abs(cats[c] - v)) == line.split(" | ")[0], (seed, line)
                    checked += 1
            if None not in values:
                assert values[0] < values[1], (seed, line)  # the first column is the first bar
    assert checked > 100 and turned > 3


def test_table_conversations_replace_chart_conversations_only():
    """--table-frac draws from a stream of its own: every other conversation is the one drawn without it."""
    kinds, images = ["doc", "chart", "info", "chart"], T.Images("mix")
    tables = 0
    for seed in range(40):
        plain = T.read_conversation(seed, 0.2, 3, kinds, 0.15, images)
        conv = T.read_conversation(seed, 0.2, 3, kinds, 0.15, images, table_frac=0.5)
        assert conv["max_num"] == plain["max_num"] and conv["image"].tobytes() == plain["image"].tobytes()
        if conv["conversations"][0]["value"].endswith(T.TABLE_QUESTION):
            tables += 1
            assert kinds[seed % len(kinds)] == "chart" and T.chart_table(conv["sample"]["qa"])
        else:
            assert conv["conversations"] == plain["conversations"] and conv["glyphs"] == plain["glyphs"]
    assert 3 <= tables <= 12


def test_token_colours_follow_the_projectors_token_order():
    """Each visual token's colour is the mean of its pixels, in the order pixel_shuffle lays the tokens out."""
    torch.manual_seed(0)
    pixels = torch.randn(3, 3, 56, 56)
    patches = torch.nn.functional.avg_pool2d(pixels, 14).permute(0, 2, 3, 1)  # [tiles, 4, 4, 3]: the ViT's patch grid
    shuffled = M.pixel_shuffle(patches)  # [tiles, 2, 2, 4 x 3]: a token's four patches, each its three channels
    want = shuffled.unflatten(-1, (4, 3)).mean(-2).flatten(0, 2)
    assert torch.allclose(T.token_colours(pixels, 28), want, atol=1e-6)


def test_colour_term_is_the_readouts_squared_error(tok):
    """The colour term: mlp1's tokens read along fixed orthonormal directions, against their pixels' mean colour."""
    torch.manual_seed(0)
    model = M.InternVLChat(M.tiny_config(vocab_size=tok.vocab_size, image_size=56)).eval()
    model.img_context_token_id = 7
    pixels = torch.randn(2, 3, 56, 56)
    ids = torch.tensor([[11, *[7] * 8, 12, 13, 14]])  # two tiles of four tokens
    batch = dict(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids,
                 n_labels_global=4.0, n_samples_global=4.0, convs=[{}], pointers=torch.zeros(0, 4, dtype=torch.long))
    loss_fn = T.make_read_loss(model, 1.0, 2, colour_weight=3.0)
    with torch.no_grad():
        loss, stats = loss_fn(model, batch)
        plain, _ = T.make_read_loss(model, 1.0, 2)(model, batch)
        tokens = model.mlp1(model.visual_grid(pixels).flatten(0, 2))
    readout = T.colour_readout(model.config.llm.hidden_size)
    assert torch.allclose(readout.T @ readout, torch.eye(3), atol=1e-5)
    colours = torch.stack([pixels[t, :, 28 * r:28 * r + 28, 28 * c:28 * c + 28].mean((1, 2))
                           for t in range(2) for r in range(2) for c in range(2)])
    want = ((tokens @ readout - colours) ** 2).mean().item() / 4  # one sample of the global batch's four
    assert abs(stats["colour"] - want) < 1e-5 and abs(loss.item() - plain.item() - 3 * want) < 1e-4


def test_legend_hop_points_series_questions_at_the_series_name_first(tok, monkeypatch):
    """--legend-hop: a series question's layers before the last look at its series' name, printed in the legend before
    the bars, and keep looking there though it comes first in the sequence; the conversation itself is unchanged."""
    monkeypatch.setattr(T.wide, "choose_layout", lambda rng, kind, family, **_: (rng.random(), "vgroup")[1])
    images = T.Images("train", widen=(("series_order", True),))
    model = M.InternVLChat(T.teacher_config(tok.vocab_size))
    model.img_context_token_id = tok.token_to_id(M.IMG_CONTEXT)
    cfg = T.TeacherConfig(max_len=4096)
    hops, before = 0, {"plain": 0, "hop": 0}
    for seed in range(12):
        plain = T.read_conversation(seed, 0.0, 4, ["chart"], images=images)
        conv = T.read_conversation(seed, 0.0, 4, ["chart"], images=images, legend_hop=True)
        assert conv["conversations"] == plain["conversations"] and conv["glyphs"] == plain["glyphs"]
        chars, text = conv["sample"]["chars"], conv["sample"]["transcription"]
        questions = [m["value"].removeprefix("<image>\n") for m in conv["conversations"] if m["from"] == "human"]
        for q, hop, kept, plain_hop in zip(questions, conv["hop1"], conv["hop_kept"], plain["hop1"]):
            series = next((n for pair in T.wide.SERIES for n in pair if f" {n} " in f" {q} ".replace("?", " ")), None)
            if not kept:
                assert hop == plain_hop
                continue
            at = conv["sample"]["char_index"][text.find(series)]
            assert set(hop) == {at} and chars[at]["char"] == series[0]
            hops += 1
        for c, n in ((plain, "plain"), (conv, "hop")):  # first hops printed before their value: only kept ones
            ptr = T.read_batch([c], tok, model, cfg)["pointers"]
            before[n] += int((ptr[:, 3] < ptr[:, 2]).sum())
    assert hops > 10 and before["plain"] == 0 and before["hop"] > 10
