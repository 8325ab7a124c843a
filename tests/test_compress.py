"""compress.py: windows, the three compressors and their backends, the student, FastV."""
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import compress as C
import model as M

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = os.path.join(ROOT, "data", "tokenizer")


@pytest.fixture(scope="module")
def tok():
    return M.load_tokenizer(TOK)


def tiny(tok, seed=0, image_size=56):
    """The tiny config at 56 px (a 2x2 token grid per tile), weights large enough that outputs depend on inputs."""
    torch.manual_seed(seed)
    m = M.InternVLChat(M.tiny_config(tok.vocab_size, image_size))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 1.5 / p.shape[-1] ** 0.5)
    m.img_context_token_id = tok.token_to_id(M.IMG_CONTEXT)
    return m.eval()


def test_window_for():
    assert C.window_for(0.5, 16, 16) == (1, 2)  # horizontal pairs: text lines run horizontally
    assert C.window_for(0.25, 16, 16) == (2, 2)
    assert C.window_for(0.125, 16, 16) == (2, 4)
    assert C.window_for(1 / 9, 18, 18) == (3, 3)
    assert C.window_for(0.25, 2, 8) == (2, 2) and C.window_for(0.25, 3, 8) == (1, 4)
    for bad in (0.3, 1.0, 0.0, -0.5, 2):
        with pytest.raises(C.CompressError, match="invalid ratio"):
            C.window_for(bad, 16, 16)
    with pytest.raises(C.CompressError, match="16x16 token grid"):
        C.window_for(1 / 3, 16, 16)


def test_pool_is_the_mean_of_neighbours_and_untrained_learners_equal_it():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 4, 8)
    pairs = (x[:, :, 0::2] + x[:, :, 1::2]) / 2
    quads = (x[:, 0::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 0::2] + x[:, 1::2, 1::2]) / 4
    for ratio, want in ((0.5, pairs), (0.25, quads)):
        window = C.window_for(ratio, 4, 4)
        for cls in (C.Pool, C.Conv, C.DWConv, C.MLP, C.Gate):
            got = cls(window, 8)(x)
            assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6), (cls, ratio)


def test_learned_compressors_train():
    torch.manual_seed(0)
    x, target = torch.randn(4, 4, 4, 8), torch.randn(4, 4, 2, 8)
    for cls in (C.Conv, C.DWConv, C.MLP, C.Gate):
        m = cls((1, 2), 8)
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        first = None
        for _ in range(30):
            loss = (m(x) - target).pow(2).mean()
            first = first or loss.item()
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < 0.8 * first, cls


def test_gate_passes_the_window_token_it_scores_highest():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 4, 8)
    x[:, :, 1::2, 0] += 10  # the right cell of every horizontal pair stands out in channel 0
    gate = C.Gate((1, 2), 8)
    with torch.no_grad():
        gate.score.weight[0, 0] = 20.0  # scores read channel 0 (after LayerNorm)
    assert torch.allclose(gate(x), x[:, :, 1::2], atol=1e-4)


def test_backends_agree():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 100)  # 100 channels: not a power of two, the kernel masks the tail
    for window in ((1, 2), (2, 2), (2, 4)):
        w, b = torch.rand(window[0] * window[1], 100), torch.rand(100)
        for bias in (None, b):
            ref = C.merge_torch(x, window, w, bias)
            assert torch.allclose(C.merge_npu(x, window, w, bias), ref, atol=1e-5)
    assert C.merge_backend(x, w) is C.merge_torch  # a plain CPU run
    # gradients can only come from the PyTorch path: the kernel is forward-only
    assert C.merge_backend(x, w.requires_grad_()) is C.merge_torch


def test_triton_kernel_in_the_interpreter(triton_interpreter):
    """The Triton kernel itself, run by Triton's CPU interpreter, against the PyTorch path."""
    code = """
import torch, compress as C
assert C.merge_backend(torch.zeros(1), torch.zeros(1)) is C.merge_triton
torch.manual_seed(0)
for shape, window in (((2, 4, 8, 100), (1, 2)), ((1, 4, 4, 64), (2, 2)), ((3, 2, 8, 48), (2, 4))):
    x = torch.randn(shape)
    w, b = torch.rand(window[0] * window[1], shape[-1]), torch.rand(shape[-1])
    for bias in (None, b):
        got, ref = C.merge_triton(x, window, w, bias), C.merge_torch(x, window, w, bias)
        assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-5), (shape, window)
print("ok")
"""
    triton_interpreter(code)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled kernel needs a GPU; the interpreter test runs it here")
def test_triton_kernel_on_cuda():
    """The compiled kernel on a GPU against the PyTorch path, fp32 and bf16, odd channel counts."""
    pytest.importorskip("triton")
    torch.manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        for shape, window in (((2, 4, 8, 100), (1, 2)), ((13, 16, 16, 4096), (2, 2)), ((3, 2, 8, 48), (2, 4))):
            x = torch.randn(shape, device="cuda", dtype=dtype)
            w = torch.rand(window[0] * window[1], shape[-1], device="cuda", dtype=dtype)
            b = torch.rand(shape[-1], device="cuda", dtype=dtype)
            assert C.merge_backend(x, w) is C.merge_triton
            for bias in (None, b):
                got, ref = C.merge_triton(x, window, w, bias), C.merge_torch(x.float(), window, w.float(),
                                                                             None if bias is None else bias.float())
                assert got.dtype == dtype and torch.allclose(got.float(), ref, atol=tol, rtol=tol), (dtype, shape, window)


@pytest.mark.parametrize("argv, words", [(["--bench", "--grid", "abc"], "argument --grid: invalid int value: 'abc'"),
                                         ([], "required: --bench"), (["--bench", "--grid", "3"], "--grid 3: ratio 0.5")])
def test_bench_flag_errors_are_one_line(argv, words):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "compress.py"), *argv], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("compress.py: error: "), r.stderr
    assert words in r.stderr


def prompt_ids(model, tok, n_tiles, question="What is the total?"):
    return tok.encode(M.chat_prompt(question, n_tiles * model.num_image_token, model.config.template))


@pytest.mark.parametrize("method", ["conv", "mlp", "gate"])
def test_student_shares_the_teacher_and_saves_as_a_checkpoint(tok, tmp_path, method):
    teacher = tiny(tok)
    student = C.make_student(teacher, method, 0.5)
    assert student.vision_model is teacher.vision_model and student.language_model is teacher.language_model
    assert student.mlp1 is not teacher.mlp1 and torch.equal(student.mlp1[1].weight, teacher.mlp1[1].weight)
    assert teacher.num_image_token == 4 and student.num_image_token == 2 and teacher.compressor is None
    torch.manual_seed(1)
    pv = torch.randn(3, 3, 56, 56)
    ids = torch.tensor([prompt_ids(student, tok, 3)])
    pooled = C.apply(tiny(tok), "pool", 0.5)  # an untrained student is the pooling baseline
    assert torch.allclose(student(pv, ids), pooled(pv, ids), atol=1e-5)
    with torch.no_grad():
        for p in student.compressor.parameters():
            p.add_(0.01 * torch.randn_like(p))
    M.save_model(student, str(tmp_path), tokenizer_dir=TOK)
    cfg = json.load(open(tmp_path / "config.json"))
    assert cfg["compressor"] == {"method": method, "ratio": 0.5}
    with pytest.raises(M.ModelLoadError, match="compress.build"):
        M.load_model(str(tmp_path))
    loaded = M.load_model(str(tmp_path), build_compressor=C.build)
    assert loaded.num_image_token == 2 and torch.allclose(loaded(pv, ids), student(pv, ids), atol=1e-5)
    assert not torch.allclose(loaded(pv, ids), pooled(pv, ids), atol=1e-3)  # the perturbation was saved
    assert "compressor" not in json.load(open(M.save_model(teacher, str(tmp_path / "t")) or tmp_path / "t" / "config.json"))


def test_build_errors(tok):
    teacher = tiny(tok)
    with pytest.raises(C.CompressError, match="unknown compressor 'tome'"):
        C.make_student(teacher, "tome", 0.5)
    with pytest.raises(C.CompressError, match="2x2 token grid"):
        C.make_student(teacher, "conv", 0.125)  # 8 tokens per window: more than the tiny tile has
    with pytest.raises(C.CompressError, match="FastV layer"):
        C.apply(teacher, "fastv", 0.5, fastv_layer=0)


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
        C.apply(model, "fastv", ratio, fastv_layer=1)
        got = model(pv, ids)[0, -1]
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got, full, atol=1e-2)  # something was pruned


def cached_logits(model, pv, ids, mask, steps=3):
    """Prefill then greedy decode steps with a KV cache, as generate does: the logits of each step."""
    caches = M.new_caches(model.config.llm, ids.shape[0], ids.shape[1] + steps, torch.float32, "cpu")
    out = [model(pv, ids, mask, caches=caches, last_only=True)[:, -1]]
    for _ in range(steps - 1):
        mask = torch.cat([mask, torch.ones(mask.shape[0], 1, dtype=mask.dtype)], 1)
        out.append(model(None, out[-1].argmax(-1, keepdim=True), mask, caches=caches)[:, -1])
    return torch.stack(out, 1)


def padded_batch(model, tok, seed):
    """Two images of 2 and 5 tiles with questions of different lengths, left-padded: (pixels, ids, mask)."""
    torch.manual_seed(seed)
    pvs = [torch.randn(2, 3, 56, 56), torch.randn(5, 3, 56, 56)]
    rows = [prompt_ids(model, tok, 2, "Name?"), prompt_ids(model, tok, 5, "What is the total amount due?")]
    L = max(map(len, rows))
    ids = torch.tensor([[0] * (L - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
    return pvs, ids, mask


@torch.no_grad()
def batch_matches_one_by_one(model, pvs, ids, mask):
    """cached_logits of the padded batch against each row alone; returns the batch's."""
    batched = cached_logits(model, torch.cat(pvs), ids, mask)
    for b, pv in enumerate(pvs):
        alone = ids[b, mask[b].bool()][None]
        assert torch.allclose(batched[b], cached_logits(model, pv, alone, torch.ones_like(alone))[0], atol=1e-4), b
    return batched


def test_fastv_batch_with_padding_matches_one_by_one(tok):
    """Rows with different tile counts keep different numbers of tokens: re-padded, then decoded."""
    model = C.apply(tiny(tok), "fastv", 0.5, fastv_layer=1)
    pvs, ids, mask = padded_batch(model, tok, seed=3)
    batch_matches_one_by_one(model, pvs, ids, mask)
    # ratio 1 keeps everything: FastV is then the plain model, cache and all
    plain, kept = tiny(tok), C.apply(tiny(tok), "fastv", 1.0, fastv_layer=1)
    with torch.no_grad():
        assert torch.allclose(cached_logits(plain, torch.cat(pvs), ids, mask),
                              cached_logits(kept, torch.cat(pvs), ids, mask), atol=1e-5)


def test_fastv_and_pool_through_batch_chat(tok):
    for method in ("fastv", "pool"):
        model = C.apply(tiny(tok), method, 0.5, fastv_layer=1)
        stats = {}
        answers = model.batch_chat(tok, [torch.randn(3, 3, 56, 56), None], ["a?", "b?"], max_new_tokens=4, stats=stats)
        assert len(answers) == 2 and stats["prefill_s"] > 0


def test_select_keeps_the_tokens_with_the_fewest_near_duplicates():
    torch.manual_seed(0)
    grid = torch.randn(3, 2, 2, 8) * 0.01  # two images: 2 tiles and 1 tile of 4 tokens, nearly blank
    grid[0, 1, 0] += 5  # token 2 of image 0
    grid[1, 0, 1] -= 4  # token 5 of image 0
    grid[2, 0, 0] += 6  # token 0 of image 1
    tokens, keep = C.Select((1, 4), 8)(grid, [2, 1])
    assert keep.tolist() == [2, 5, 0]  # in order within each image
    assert torch.equal(tokens, torch.stack([grid[0, 1, 0], grid[1, 0, 1], grid[2, 0, 0]]))  # fold is zero at first


def test_select_ranks_the_thumbnail_last(tok):
    """The last tile of a many-tile image is its thumbnail: with the option its rarest token gives way to a
    tile's (a single-tile image has no thumbnail), and the student's config records the option."""
    torch.manual_seed(0)
    grid = torch.randn(4, 2, 2, 8) * 0.01  # image 0: 2 tiles and the thumbnail; image 1: one tile
    for token, channel, value in [(3, 0, 5), (4, 1, 6), (7, 2, 7), (8, 3, 9), (14, 4, 5)]:
        grid.view(-1, 8)[token, channel] += value  # token 8, the thumbnail's first, is image 0's rarest
    _, keep = C.Select((1, 4), 8, skip_thumbnail=True)(grid, [3, 1])
    assert keep.tolist() == [3, 4, 7, 2]  # 3 of image 0's 12 tokens, 1 of image 1's 4
    _, keep = C.Select((1, 4), 8)(grid, [3, 1])
    assert keep.tolist() == [4, 7, 8, 2]
    student = C.make_student(tiny(tok), "select", 0.5, skip_thumbnail=True)
    assert student.config.compressor == {"method": "select", "ratio": 0.5, "skip_thumbnail": True}
    assert student.compressor.skip_thumbnail  # the record builds it back, as load_model does
    assert not C.build(replace(student.config, use_thumbnail=False)).skip_thumbnail
    assert not C.make_student(tiny(tok), "select", 0.5).compressor.skip_thumbnail  # off by default
    with pytest.raises(C.CompressError, match="option of select"):
        C.make_student(tiny(tok), "pool", 0.5, skip_thumbnail=True)


def test_select_can_rank_tokens_as_the_projector_maps_them(tok):
    """rank_projected measures near-duplicates after the projector it is given: a channel the projector
    ignores makes no token rare. The student's config records the option and the model passes its mlp1."""
    torch.manual_seed(0)
    grid = torch.randn(1, 2, 4, 8) * 0.01  # one tile of 8 tokens, nearly blank
    grid[0, 0, 1, 0] += 9  # token 1: rare in channel 0, which the projector drops
    grid[0, 1, 2, 1] += 3  # token 6: rare in channel 1, which it keeps
    projector = torch.nn.Linear(8, 8, bias=False)
    with torch.no_grad():
        projector.weight.copy_(torch.diag(torch.tensor([0.] + [1.] * 7)))
    assert C.Select((1, 8), 8)(grid, [1])[1].tolist() == [1]
    tokens, keep = C.Select((1, 8), 8, rank_projected=True)(grid, [1], projector)
    assert keep.tolist() == [6] and torch.equal(tokens, grid[0, 1, 2][None])  # the ViT's token, not the projected one
    with pytest.raises(C.CompressError, match="needs the model's projector"):
        C.Select((1, 8), 8, rank_projected=True)(grid, [1])
    student = C.make_student(tiny(tok), "select", 0.5, skip_thumbnail=True, rank_projected=True)
    assert student.config.compressor == {"method": "select", "ratio": 0.5, "skip_thumbnail": True, "rank_projected": True}
    assert student.compressor.rank_projected and not C.make_student(tiny(tok), "select", 0.5).compressor.rank_projected
    seen = []
    student.compressor.register_forward_hook(lambda module, args, out: seen.append(args[2]))
    student.extract_feature(torch.randn(3, 3, 56, 56))
    assert seen == [student.mlp1]  # A_s: at first the teacher's mlp1
    with pytest.raises(C.CompressError, match="unknown compressor option 'skip'"):
        C.spec("select", 0.5, skip=True)
    with pytest.raises(C.CompressError, match="rank_projected is an option of select, not of fastv"):
        C.apply(tiny(tok), "fastv", 0.5, rank_projected=True)


def test_select_drops_a_uniform_region_far_from_the_median():
    """A chart: blank paper, a bar (five like tokens, far from the median) and two labels. The labels
    stay; the bar's inside goes with the paper, as the farthest-from-the-median rule would not do."""
    torch.manual_seed(0)
    image = torch.randn(16, 8) * 0.01
    image[[1, 2, 3, 4, 5]] += 5  # the bar
    image[9, 0] += 3  # a label
    image[14, 1] += 3  # another
    _, keep = C.Select((1, 8), 8)(image.reshape(1, 4, 4, 8), [1])
    assert keep.tolist() == [9, 14]
    median_rule = (image - image.median(0).values).norm(dim=-1).topk(2).indices
    assert set(median_rule.tolist()) <= {1, 2, 3, 4, 5}  # the bar, which the old rule kept


def test_select_matches_masking_reference(tok):
    """The untrained select student is the teacher with the dropped image tokens masked out as keys at
    every layer, at the teacher's own position ids."""
    teacher = tiny(tok)
    student = C.make_student(teacher, "select", 0.5)
    torch.manual_seed(4)
    pv = torch.randn(3, 3, 56, 56)
    ids = torch.tensor([prompt_ids(student, tok, 3)])
    full = torch.tensor([prompt_ids(teacher, tok, 3)])
    with torch.no_grad():
        got = student(pv, ids)[0]
        _, keep = student.compressor(teacher.visual_grid(pv), [3])
        is_img = (full[0] == teacher.img_context_token_id).nonzero()[:, 0]
        kept = torch.ones(full.shape[1], dtype=torch.bool)
        kept[is_img] = False
        kept[is_img[keep]] = True
        want = teacher(pv, full, kept[None].long(), position_ids=torch.arange(full.shape[1])[None])[0, kept]
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(got[-1], teacher(pv, full)[0, -1], atol=1e-2)  # something was dropped


def test_select_batch_with_padding_matches_one_by_one(tok):
    """The skipped position ids carry into the decode steps, eager and static, rows padded or not."""
    model = C.make_student(tiny(tok), "select", 0.5)
    with torch.no_grad():
        for p in model.compressor.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pvs, ids, mask = padded_batch(model, tok, seed=5)
    batched = batch_matches_one_by_one(model, pvs, ids, mask)
    with torch.no_grad():
        caches = M.new_caches(model.config.llm, 2, ids.shape[1] + 3, torch.float32, "cpu")
        first = model(torch.cat(pvs), ids, mask, caches=caches, last_only=True)[:, -1]
        step = M.decode_step(model.language_model, caches, mask, graph=False)
        second = step(first.argmax(-1))
        assert torch.allclose(second, batched[:, 1], atol=1e-4)
