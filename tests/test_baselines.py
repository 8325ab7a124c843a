"""baselines.py: FastV and pdrop against masking references, padded batches against each row alone; divprune,
random, visionzip and fewer tiles, each against another way of computing it."""
import math
import random
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import baselines as B
import compress as C
import model as M
from test_compress import TOK, batch_matches_one_by_one, cached_logits, padded_batch, prompt_ids, tiny, tok  # noqa: F401


def test_apply_refuses_a_bad_fastv_layer(tok):
    with pytest.raises(C.CompressError, match="FastV layer"):
        B.apply(tiny(tok), "fastv", 0.5, fastv_layer=0)


def test_an_applied_subset_saves_and_loads_through_baselines_build(tok, tmp_path):
    """compress.build knows V_c's compressors only, and says where the baselines' are."""
    model = B.apply(tiny(tok), "random", 0.5, seed=3)
    M.save_model(model, str(tmp_path), tokenizer_dir=TOK)
    with pytest.raises(C.CompressError, match="build_compressor=baselines.build"):
        M.load_model(str(tmp_path), build_compressor=C.build)
    loaded = M.load_model(str(tmp_path), build_compressor=B.build)
    assert type(loaded.compressor) is B.Random and loaded.compressor.seed == 3
    record = dict(loaded.config.compressor, method="pool")  # a key pool does not take: one line, not a TypeError
    with pytest.raises(C.CompressError, match=r"has \['seed'\], which pool does not take"):
        B.build(replace(loaded.config, compressor=record))


def reference_fastv_logits(model, pv, ids, ratio, K):
    """FastV written another way: no tokens removed, the dropped ones masked out as keys from layer K on."""
    lm = model.language_model
    feats = model.extract_feature(pv)
    is_img = ids == model.img_context_token_id
    x = lm.model.tok_embeddings(ids).masked_scatter(is_img[..., None], feats)
    L = ids.shape[1]
    cos, sin = M.rope_cos_sin(lm.config, torch.arange(L)[None], L, x.dtype)
    for layer in lm.model.layers[:K - 1]:
        x = layer(x, cos, sin, None, None)
    attn = lm.model.layers[K - 1].attention
    q, k, _ = attn.project_qkv(lm.model.layers[K - 1].attention_norm(x), cos, sin)
    k = k.repeat_interleave(attn.group, dim=1)
    probs = torch.softmax(q[0, :, -1:] @ k[0].transpose(-1, -2) / attn.head_dim ** 0.5, -1).mean(0)[0]  # [L]
    img = is_img[0].nonzero().flatten()
    dropped = img[probs[img].argsort(descending=True)[round(len(img) * ratio):]]
    x = lm.model.layers[K - 1](x, cos, sin, None, None)
    mask = torch.ones(L, L, dtype=torch.bool).tril()
    mask[:, dropped] = False
    mask |= torch.eye(L, dtype=torch.bool)
    for layer in lm.model.layers[K:]:
        x = layer(x, cos, sin, mask[None, None], None)
    return lm.output(lm.model.norm(x))[0, -1]


@pytest.mark.parametrize("ratio", [0.5, 0.25])
def test_fastv_matches_masking_reference(tok, ratio):
    model = tiny(tok)
    torch.manual_seed(2)
    pv = torch.randn(4, 3, 56, 56)
    ids = torch.tensor([prompt_ids(model, tok, 4)])
    with torch.no_grad():
        want = reference_fastv_logits(model, pv, ids, ratio, K=1)
        full = model(pv, ids)[0, -1]
        B.apply(model, "fastv", ratio, fastv_layer=1)
        got = model(pv, ids)[0, -1]
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, full, atol=1e-2)  # something was pruned


def test_fastv_batch_with_padding_matches_one_by_one(tok):
    """Rows with different tile counts keep different numbers of tokens: re-padded, then decoded."""
    model = B.apply(tiny(tok), "fastv", 0.5, fastv_layer=1)
    pvs, ids, mask = padded_batch(model, tok, seed=3)
    batch_matches_one_by_one(model, pvs, ids, mask)
    # ratio 1 keeps everything: FastV is then the plain model, cache and all
    plain, kept = tiny(tok), B.apply(tiny(tok), "fastv", 1.0, fastv_layer=1)
    with torch.no_grad():
        assert torch.allclose(cached_logits(plain, torch.cat(pvs), ids, mask),
                              cached_logits(kept, torch.cat(pvs), ids, mask), atol=1e-5)


def test_fastv_and_pool_through_batch_chat(tok):
    for method in ("fastv", "pool"):
        model = B.apply(tiny(tok), method, 0.5, fastv_layer=1)
        stats = {}
        answers = model.batch_chat(tok, [torch.randn(3, 3, 56, 56), None], ["a?", "b?"], max_new_tokens=4, stats=stats)
        assert len(answers) == 2 and stats["prefill_s"] > 0


# ----------------------------------------------------------------------------------------------
# every compressor baseline

def kept_by(model):
    """The positions model.compressor.compress returns, call by call (a spy, left in place)."""
    calls, compress = [], model.compressor.compress

    def spy(*args):
        out = compress(*args)
        calls.append(out[1])
        return out
    model.compressor.compress = spy
    return calls


@pytest.mark.parametrize("method", ["divprune", "random", "visionzip"])
def test_compressors_keep_selects_count_and_decode_in_batches(tok, method):
    """len(image) // k per image as select; a padded batch decodes as each row alone; batch_chat with a text row."""
    for ratio, k in ((0.5, 2), (0.25, 4)):
        model = B.apply(tiny(tok), method, ratio)
        assert model.num_image_token == 4 // k
        calls = kept_by(model)
        with torch.no_grad():
            model.extract_feature(torch.randn(3, 3, 56, 56))
        assert len(calls[0]) == 12 // k and calls[0].tolist() == sorted(set(calls[0].tolist()))
    pvs, ids, mask = padded_batch(model, tok, seed=3)
    batch_matches_one_by_one(model, pvs, ids, mask)
    answers = model.batch_chat(tok, [torch.randn(3, 3, 56, 56), None], ["a?", "b?"], max_new_tokens=3)
    assert len(answers) == 2
    with pytest.raises(C.CompressError, match="option of select"):
        B.apply(tiny(tok), method, 0.5, skip_thumbnail=True)


@pytest.mark.parametrize("method", ["divprune", "random"])
def test_subsets_match_masking_reference(tok, method):
    """A subset at its own position ids is the teacher with the dropped image tokens masked out as keys."""
    teacher = tiny(tok)
    student = B.apply(tiny(tok), method, 0.5)
    calls = kept_by(student)
    torch.manual_seed(4)
    pv = torch.randn(3, 3, 56, 56)
    ids, full = torch.tensor([prompt_ids(student, tok, 3)]), torch.tensor([prompt_ids(teacher, tok, 3)])
    with torch.no_grad():
        got = student(pv, ids)[0]
        is_img = (full[0] == teacher.img_context_token_id).nonzero()[:, 0]
        kept = torch.ones(full.shape[1], dtype=torch.bool)
        kept[is_img] = False
        kept[is_img[calls[0]]] = True
        want = teacher(pv, full, kept[None].long(), position_ids=torch.arange(full.shape[1])[None])[0, kept]
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-4)


def test_baselines_are_applied_not_trained(tok):
    """make_student refuses a training-free method; apply refuses tiles, and a seed given to another method than
    random. The plain attributes of FastV (evaluate.py's run key reads them) are its two, as before the schedule."""
    for method in B.TRAINING_FREE:
        with pytest.raises(C.CompressError, match=f"unknown compressor '{method}' for a student"):
            C.make_student(tiny(tok), method, 0.5)
    with pytest.raises(C.CompressError, match="tiles changes the input"):
        B.apply(tiny(tok), "tiles", 0.5)
    with pytest.raises(C.CompressError, match="seed is an option of random, not of divprune"):
        B.apply(tiny(tok), "divprune", 0.5, seed=1)
    plain = lambda o: {k: v for k, v in vars(o).items() if isinstance(v, (bool, int, float, str, tuple))}
    fastv = B.apply(tiny(tok), "fastv", 0.5, fastv_layer=1).language_model.before_layer
    assert plain(fastv) == dict(layer=1, ratio=0.5)
    pdrop = B.apply(tiny(tok, layers=4), "pdrop", 0.125).language_model.before_layer
    assert plain(pdrop) == dict(schedule=((1, 0.5), (2, 0.25), (3, 0.125)))


# ----------------------------------------------------------------------------------------------
# divprune

def divprune_by_hand(rows, b):
    """DivPrune's greedy on lists: the first pick the token farthest from its nearest other, then the token whose
    distance to the nearest picked one is largest (re-taken over the picked set each step); first index on ties."""
    n = len(rows)
    unit = [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in rows]
    d = [[1 - sum(a * c for a, c in zip(unit[i], unit[j])) for j in range(n)] for i in range(n)]
    first = max(range(n), key=lambda i: min(d[i][j] for j in range(n) if j != i))
    picked = [first]
    while len(picked) < b:
        picked.append(max((i for i in range(n) if i not in picked), key=lambda i: min(d[i][p] for p in picked)))
    return sorted(picked)


def test_divprune_matches_a_plain_greedy():
    torch.manual_seed(0)
    for n, b in ((20, 10), (24, 6), (9, 1), (13, 12)):
        x = torch.randn(n, 8, dtype=torch.float64)
        kept = B.max_min(1 - F.normalize(x, dim=-1) @ F.normalize(x, dim=-1).T, b)
        assert kept.tolist() == divprune_by_hand(x.tolist(), b), (n, b)
    # exact duplicates: distances 0, yet no token is picked twice
    x = torch.randn(3, 8).repeat(4, 1)
    assert len(set(B.max_min(1 - F.normalize(x, dim=-1) @ F.normalize(x, dim=-1).T, 6).tolist())) == 6


def test_divprune_measures_after_the_projector():
    """A token that stands out only in a channel the projector drops is not diverse."""
    torch.manual_seed(0)
    grid = torch.ones(1, 2, 4, 8) + 0.01 * torch.randn(1, 2, 4, 8)
    grid[0, 0, 1, 0] += 9  # token 1: apart in channel 0, which the projector drops
    grid[0, 1, 2, 1] += 3  # token 6: apart in channel 1, which it keeps
    projector = torch.nn.Linear(8, 8, bias=False)
    with torch.no_grad():
        projector.weight.copy_(torch.diag(torch.tensor([0.] + [1.] * 7)))
    d = B.DivPrune((1, 4), 8)
    assert 1 in d.compress(grid, [1], torch.nn.Identity())[1].tolist()
    tokens, keep = d.compress(grid, [1], projector)
    assert 6 in keep.tolist() and 1 not in keep.tolist()
    assert torch.equal(tokens, projector(grid.flatten(0, 2)[keep]))  # handed on through the projector


# ----------------------------------------------------------------------------------------------
# random

def test_random_is_the_same_for_an_image_in_any_batch(tok):
    torch.manual_seed(5)
    a, b = torch.randn(3, 3, 56, 56), torch.randn(2, 3, 56, 56)
    keeps = {}
    for seed in (0, 1, 2):
        model = B.apply(tiny(tok), "random", 0.5, seed=seed)
        calls = kept_by(model)
        with torch.no_grad():
            for pv, tiles in ((a, [3]), (torch.cat([b, a]), [2, 3]), (torch.cat([a, b]), [3, 2])):
                model.project(model.visual_grid(pv), tiles)  # the ViT's run records the pixels' checksums
        alone, second, first = calls
        assert len(alone) == 6 and len(second) == len(first) == 10
        assert torch.equal(alone, second[4:]) and torch.equal(alone, first[:6])
        keeps[seed] = alone.tolist()
    assert len({tuple(v) for v in keeps.values()}) == 3  # seeds differ
    assert model.compressor.seed == 2 and model.config.compressor == {"method": "random", "ratio": 0.5, "seed": 2}


def test_random_checksum_is_exact_and_batch_free():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 56, 56)
    sums = B.tile_sums(x)
    assert torch.equal(sums[2:], B.tile_sums(x[2:])) and len(set(sums.tolist())) == 4
    y = x.clone()
    y[1, 0, 0, 0] = torch.nextafter(y[1, 0, 0, 0], torch.tensor(10.0))  # one bit of one pixel
    assert (B.tile_sums(y) != sums).tolist() == [False, True, False, False]
    assert B.tile_sums(x.bfloat16()).dtype == torch.int64


# ----------------------------------------------------------------------------------------------
# fewer tiles

def test_budget_max_num_is_the_largest_that_fits():
    rng = random.Random(0)
    sizes = [(rng.randint(20, 4000), rng.randint(20, 4000)) for _ in range(300)] + [(300, 300), (448, 448), (900, 60)]
    count = lambda w, h, m: B.tile_count(w, h, m, M.find_grid)
    for w, h in sizes:
        for max_num in (1, 6, 12):
            for ratio in (0.5, 0.25):
                m = B.budget_max_num(w, h, max_num, ratio, M.find_grid)
                budget = ratio * count(w, h, max_num)
                assert 1 <= m <= max_num
                assert all(count(w, h, bigger) > budget for bigger in range(m + 1, max_num + 1))
                assert count(w, h, m) <= budget or m == 1, (w, h, max_num, ratio)  # one tile is the least
    assert count(300, 300, 12) == 1 and B.budget_max_num(300, 300, 12, 0.5, M.find_grid) == 1  # stays one tile
    assert count(2000, 2000, 12) == 10 and B.budget_max_num(2000, 2000, 12, 0.5, M.find_grid) == 8  # 2x2 + 1
    assert B.budget_max_num(2000, 2000, 12, 0.25, M.find_grid) == 3 and count(2000, 2000, 3) == 1


def test_tile_count_is_what_load_image_makes():
    for w, h, m in ((1700, 2200, 12), (800, 600, 6), (300, 300, 12), (1000, 250, 5), (900, 60, 12), (200, 900, 2)):
        assert len(M.load_image(Image.new("RGB", (w, h)), max_num=m, image_size=56)) == \
            B.tile_count(w, h, m, M.find_grid, image_size=56), (w, h, m)


# ----------------------------------------------------------------------------------------------
# visionzip

@pytest.mark.parametrize("qk_norm", [False, True])
def test_visionzip_reads_the_cls_row_of_the_last_layers_attention(tok, qk_norm):
    """The hook's scores against the last block's attention written out as softmax(QK^T / sqrt(d)), which
    (times V, projected) is the block's attention output."""
    model = B.apply(tiny(tok, qk_norm=qk_norm), "visionzip", 0.5)
    vit = model.vision_model
    pv = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        model.visual_grid(pv)
        got = B.recorded(model.compressor.scores, 3)
        x = vit.embeddings(pv)
        for block in vit.encoder.layers[:-1]:
            x = block(x)
        attn, h = vit.encoder.layers[-1].attn, vit.encoder.layers[-1].norm1(x)
        q, k, v = attn.qkv(h).split(h.shape[-1], dim=-1)
        if qk_norm:
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k, v = (t.view(3, 17, attn.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)  # [3, heads, 17, 17]
        assert torch.allclose(attn.proj((probs @ v).transpose(1, 2).reshape(3, 17, -1)), attn(h), atol=1e-5)
    assert got.shape == (3, 16) and torch.allclose(got, probs[:, :, 0, 1:].mean(1), atol=1e-6)


def test_visionzip_token_scores_sum_the_patches_pixel_shuffle_folds():
    """pixel_shuffle run on patch indices says which patches each token holds; the fold sums exactly those."""
    g, T = 8, 2
    index = torch.arange(g * g, dtype=torch.float32).view(1, g, g, 1).repeat(T, 1, 1, 1)
    holds = M.pixel_shuffle(index).flatten(1, 2).long()  # [T, 16 tokens, the 4 patches each holds]
    patch = torch.rand(T, g * g)
    z = B.VisionZip((1, 2), 4)
    z.scores = [patch]
    z.pick = lambda image, b, tiles, projector: (image[:b], torch.arange(b))
    z.compress(torch.zeros(T, 4, 4, 4), [T], torch.nn.Identity())
    assert torch.allclose(z.token_scores, patch.gather(1, holds.flatten(1)).view(T, 16, 4).sum(-1))


def visionzip_by_hand(image, scores, b, dominant=54 / 64):
    """VisionZip's choice on lists: the top scores stay; targets evenly spaced among the rest in order; each
    other remaining token joins its most cosine-similar target; each group's mean sits at its target."""
    n_ctx = max(1, round(b * (1 - dominant))) if b > 1 else 0
    top = sorted(range(len(image)), key=lambda i: -scores[i])[:b - n_ctx]
    rest = [i for i in range(len(image)) if i not in top]
    targets = rest[::max(1, len(rest) // n_ctx)][:n_ctx] if n_ctx else []
    cos = lambda a, c: sum(u * v for u, v in zip(a, c)) / math.sqrt(sum(u * u for u in a) * sum(v * v for v in c))
    groups = {t: [t] for t in targets}
    for i in rest:
        if targets and i not in targets:  # no targets (b = 1): the rest is dropped
            groups[max(targets, key=lambda t: cos(image[i], image[t]))].append(i)
    out = {i: image[i] for i in top} | {t: [sum(col) / len(g) for col in zip(*(image[j] for j in g))]
                                         for t, g in groups.items()}
    return sorted(out), [out[i] for i in sorted(out)]


def test_visionzip_matches_a_plain_merge():
    torch.manual_seed(0)
    T, h, w, Cw = 3, 4, 4, 6
    grid, patch_scores = torch.randn(T, h, w, Cw), torch.rand(T, (2 * h) ** 2)
    for ratio, k in ((0.5, 2), (0.25, 4), (1 / 16, 16)):
        z = B.VisionZip(C.window_for(ratio, 16, 16), Cw)
        z.scores = [patch_scores]
        tokens, keep = z.compress(grid, [2, 1], torch.nn.Identity())
        token_scores = patch_scores.view(T, h, 2, w, 2).sum((2, 4)).flatten()
        first = [(0, 32), (32, 48)]
        want_keep, want_tokens = [], []
        for a, e in first:
            kp, tk = visionzip_by_hand(grid.flatten(0, 2)[a:e].tolist(), token_scores[a:e].tolist(), (e - a) // k)
            want_keep += kp
            want_tokens += tk
        assert keep.tolist() == want_keep and len(keep) == 48 // k
        assert torch.allclose(tokens, torch.tensor(want_tokens), atol=1e-6)
        assert z.scores == []  # read once


def test_a_blank_image_keeps_its_count_and_gives_no_nan():
    """Blank paper: every token alike. Targets are then as like each other as the rest: each still holds itself,
    so no group is empty (a 0 / 0 mean); DivPrune's distances are all 0, yet no token is picked twice."""
    grid = torch.ones(2, 4, 4, 6)
    for cls in (B.VisionZip, B.DivPrune):
        m = cls((1, 2), 6)
        m.scores = [torch.ones(2, 64)]
        tokens, keep = m.compress(grid, [2], torch.nn.Identity())  # visionzip: 14 dominant, 2 contextual
        assert len(keep) == len(set(keep.tolist())) == 16 and torch.equal(tokens, torch.ones(16, 6)), cls


def test_visionzip_needs_its_hook(tok):
    z = B.VisionZip((1, 2), 128)
    with pytest.raises(C.CompressError, match="install it"):
        z.compress(torch.zeros(1, 2, 2, 128), [1], torch.nn.Identity())
    model = B.apply(tiny(tok), "visionzip", 0.5)
    hook = model.compressor.hook
    B.apply(model, "pool", 0.5)  # the earlier hook goes
    assert hook.id not in model.vision_model.encoder.layers[-1].attn._forward_pre_hooks


# ----------------------------------------------------------------------------------------------
# FastV with a schedule, and pdrop

def test_schedule():
    assert B.pdrop_schedule(0.125, 32) == {8: 0.5, 16: 0.25, 24: 0.125}  # PyramidDrop's LLaVA setting
    assert list(B.pdrop_schedule(0.5, 24)) == [6, 12, 18] and list(B.pdrop_schedule(0.5, 4)) == [1, 2, 3]
    assert B.pdrop_schedule(0.25, 2) == {1: 0.25}
    assert B.image_tokens_per_layer(256, {2: 0.5}, 4) == [256, 256, 128, 128]  # FastV: mean 0.75
    per = B.image_tokens_per_layer(256, B.pdrop_schedule(0.5, 4), 4)
    assert per == [256, 203, 161, 128] and per[-1] == 128
    with pytest.raises(C.CompressError, match="cannot keep more"):
        B.FastV(0.5, schedule={1: 0.5, 2: 0.7}, n_layers=4)
    with pytest.raises(C.CompressError, match="FastV layer K=4 must be in 1..3"):
        B.FastV(0.5, schedule={4: 0.5}, n_layers=4)


@torch.no_grad()
def reference_pdrop(model, pv, ids, schedule, steps=4):
    """PyramidDrop written another way: no token removed. At each stage K, the image tokens still allowed are
    ranked by the last prompt token's attention in layer K-1 (under that layer's mask) and the lowest masked out
    as keys from layer K on. Decoding re-runs the whole sequence without a cache. -> (greedy tokens, logits)."""
    lm, layers = model.language_model, model.language_model.model.layers
    is_img = ids[0] == model.img_context_token_id
    feats, L = model.extract_feature(pv), ids.shape[1]
    allowed, inputs = [], []

    def run(seq, record):
        T = seq.shape[1]
        x = lm.model.tok_embeddings(seq)
        x[:, :L] = x[:, :L].masked_scatter(is_img[None, :, None], feats)
        cos, sin = M.rope_cos_sin(lm.config, torch.arange(T)[None], T, x.dtype)
        allow = torch.ones(L, dtype=torch.bool)
        for i, layer in enumerate(layers):
            if record and i in schedule:
                attn, before = layers[i - 1].attention, allowed[i - 1]
                q, k, _ = attn.project_qkv(layers[i - 1].attention_norm(inputs[i - 1]), cos, sin)
                k = k.repeat_interleave(attn.group, dim=1)
                probs = (q[0, :, -1:] @ k[0].transpose(-1, -2))[:, 0] / attn.head_dim ** 0.5  # [heads, L]
                probs = probs.masked_fill(~before, -math.inf)
                probs = probs.softmax(-1).mean(0)
                img = (is_img & before).nonzero()[:, 0]
                allow = before.clone()
                allow[img[probs[img].argsort(descending=True)[round(int(is_img.sum()) * schedule[i]):]]] = False
            if record:
                allowed.append(allow)
                inputs.append(x)
            keys = torch.cat([allowed[i], torch.ones(T - L, dtype=torch.bool)])
            mask = (torch.ones(T, T, dtype=torch.bool).tril() & keys) | torch.eye(T, dtype=torch.bool)
            x = layer(x, cos, sin, mask[None, None], None)
        return lm.output(lm.model.norm(x))[0, -1]

    seq, logits = ids, [run(ids, True)]
    for _ in range(steps - 1):
        seq = torch.cat([seq, logits[-1].argmax().view(1, 1)], 1)
        logits.append(run(seq, False))
    return torch.stack(logits).argmax(-1), torch.stack(logits)


@pytest.mark.parametrize("ratio", [0.5, 0.25])
def test_pdrop_matches_masking_reference(tok, ratio):
    model = B.apply(tiny(tok, layers=4), "pdrop", ratio)
    schedule = B.pdrop_schedule(ratio, 4)
    assert model.language_model.before_layer.stages == schedule
    torch.manual_seed(2)
    pv = torch.randn(5, 3, 56, 56)
    ids = torch.tensor([prompt_ids(model, tok, 5)])
    want_tokens, want = reference_pdrop(model, pv, ids, schedule)
    with torch.no_grad():
        got = cached_logits(model, pv, ids, torch.ones_like(ids), steps=4)[0]
        full = tiny(tok, layers=4)(pv, ids)[0, -1]
    assert torch.equal(got.argmax(-1), want_tokens) and torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got[0], full, atol=1e-2)  # something was pruned
    ids_out = model.generate(pv, ids, max_new_tokens=4)[0]
    assert ids_out == want_tokens.tolist()[:len(ids_out)]


def test_pdrop_batch_with_padding_matches_one_by_one(tok):
    """Rows with 2 and 5 images' tiles keep different counts at each stage: re-padded three times, then decoded;
    and a text-only row beside an image row."""
    model = B.apply(tiny(tok, layers=4), "pdrop", 0.25)
    pvs, ids, mask = padded_batch(model, tok, seed=3)
    batch_matches_one_by_one(model, pvs, ids, mask)
    answers = model.batch_chat(tok, [torch.randn(3, 3, 56, 56), None], ["a?", "b?"], max_new_tokens=4)
    alone = model.batch_chat(tok, [None], ["b?"], max_new_tokens=4)
    assert answers[1] == alone[0]
