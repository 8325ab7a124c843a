"""compress.py: windows, select and pool and the merge backends, select's kernels, the student for one ratio or
every ratio and the budget by content, each against another way of computing it (the baselines: test_baselines.py)."""
import json
import math
import os
import re
from dataclasses import replace

import pytest
import torch

import baselines as B
import compress as C
import model as M
from tokenizer import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = os.path.join(ROOT, "data", "tokenizer")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TOK)


def tiny(tok, seed=0, image_size=56, layers=None, qk_norm=False):
    """The tiny config at 56 px (a 2x2 token grid per tile), weights large enough that outputs depend on inputs.
    layers: the LLM's (default 2); qk_norm: the ViT's qk-normalization (InternViT-6B's)."""
    torch.manual_seed(seed)
    cfg = M.tiny_config(tok.vocab_size, image_size)
    cfg = replace(cfg, llm=replace(cfg.llm, num_hidden_layers=layers or cfg.llm.num_hidden_layers),
                  vision=replace(cfg.vision, qk_normalization=qk_norm))
    m = M.InternVLChat(cfg)
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
    with pytest.raises(C.CompressError, match="more than the 16x16 token grid holds"):
        C.window_for(1e-20, 16, 16)  # at once: the divisor search would take years


def test_pool_is_the_mean_of_neighbours():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 4, 8)
    pairs = (x[:, :, 0::2] + x[:, :, 1::2]) / 2
    quads = (x[:, 0::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 0::2] + x[:, 1::2, 1::2]) / 4
    for ratio, want in ((0.5, pairs), (0.25, quads)):
        got = C.Pool(C.window_for(ratio, 4, 4), 8)(x)
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6), ratio


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


def prompt_ids(model, tok, n_tiles, question="What is the total?"):
    return tok.encode(M.chat_prompt(question, n_tiles * model.num_image_token, model.config.template))


def test_student_shares_the_teacher_and_saves_as_a_checkpoint(tok, tmp_path):
    teacher = tiny(tok)
    student = C.make_student(teacher, "select", 0.5)
    assert student.vision_model is teacher.vision_model and student.language_model is teacher.language_model
    assert student.mlp1 is not teacher.mlp1 and torch.equal(student.mlp1[1].weight, teacher.mlp1[1].weight)
    assert teacher.num_image_token == 4 and student.num_image_token == 2 and teacher.compressor is None
    torch.manual_seed(1)
    pv = torch.randn(3, 3, 56, 56)
    ids = torch.tensor([prompt_ids(student, tok, 3)])
    untrained = B.apply(tiny(tok), "select", 0.5)  # an untrained student is the training-free select
    assert torch.allclose(student(pv, ids), untrained(pv, ids), atol=1e-5)
    with torch.no_grad():
        for p in student.compressor.parameters():
            p.add_(0.01 * torch.randn_like(p))
    M.save_model(student, str(tmp_path), tokenizer_dir=TOK)
    cfg = json.load(open(tmp_path / "config.json"))
    assert cfg["compressor"] == {"method": "select", "ratio": 0.5}
    with pytest.raises(M.ModelLoadError, match="compress.build"):
        M.load_model(str(tmp_path))
    loaded = M.load_model(str(tmp_path), build_compressor=C.build)
    assert loaded.num_image_token == 2 and torch.allclose(loaded(pv, ids), student(pv, ids), atol=1e-5)
    assert not torch.allclose(loaded(pv, ids), untrained(pv, ids), atol=1e-3)  # the perturbation was saved
    assert "compressor" not in json.load(open(M.save_model(teacher, str(tmp_path / "t")) or tmp_path / "t" / "config.json"))


def test_build_errors(tok):
    teacher = tiny(tok)
    with pytest.raises(C.CompressError, match="unknown compressor 'tome'"):
        C.make_student(teacher, "tome", 0.5)
    with pytest.raises(C.CompressError, match="2x2 token grid"):
        C.make_student(teacher, "pool", 0.125)  # 8 tokens per window: more than the tiny tile has


def test_build_passes_on_a_type_error_from_inside_a_compressor(tok):
    """Only a key the class does not take becomes build's one line; a bug inside the constructor stays a bug."""
    class Broken(C.Pool):
        def __init__(self, window, width):
            raise TypeError("a bug inside the constructor")
    config = replace(tiny(tok).config, compressor=C.spec("pool", 0.5))
    with pytest.raises(TypeError, match="a bug inside"):
        C.build(config, {"pool": Broken})
    with pytest.raises(C.CompressError, match=r"has \['seed'\], which pool does not take"):
        C.build(replace(config, compressor=config.compressor | {"seed": 1}), {"pool": Broken})


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
        B.apply(tiny(tok), "fastv", 0.5, rank_projected=True)


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


# ----------------------------------------------------------------------------------------------
# select's kernel path: rarity and the fold's gather on each backend

def whole_matrix_rarity(x, k):
    """The formulation the blockwise paths replace (n x n memory)."""
    return torch.cdist(x, x).topk(k + 1, largest=False).values[:, 1:].mean(-1)


@pytest.mark.parametrize("n", [1, 2, 5, 257, 1300])  # 1300: more than one 1024-row block
def test_rarity_torch_and_npu_equal_the_whole_matrix(n):
    """Random tokens, and tokens with many exact twins (blank paper: distances of 0)."""
    torch.manual_seed(n)
    for c in (3, 24, 100):
        x = torch.randn(n, c)
        for x in (x, x[torch.randint(0, max(1, n // 8), (n,))]):
            for k in {min(1, n - 1), min(C.Select.neighbours, n - 1)}:
                want = whole_matrix_rarity(x, k) if n > 1 else torch.zeros(1)  # a lone token: 0 (the old gave NaN)
                for fn in (C.rarity_torch, C.rarity_npu):
                    # |a|^2 + |b|^2 - 2 a.b errs by ~eps |a|^2, which the sqrt lifts near 0 to ~1e-3 sqrt(C)
                    got = fn(x, k)
                    assert got.shape == (n,) and torch.allclose(got, want, rtol=1e-5, atol=1e-3 * c ** 0.5), (fn, c, k)
    assert C.rarity_backend(x) is C.rarity_torch and C.gather_backend(x[None, None]) is C.gather_torch  # a plain CPU


def test_rarity_holds_a_block_of_distance_rows_at_a_time(monkeypatch):
    """An image of 25 tiles (6,400 tokens): never its 6,400 x 6,400 distances, at most 1,024 rows of them."""
    sizes = []

    def spy(real):
        def call(*args, **kwargs):
            out = real(*args, **kwargs)
            sizes.append(out.numel())
            return out
        return call

    monkeypatch.setattr(torch, "cdist", spy(torch.cdist))
    monkeypatch.setattr(torch, "addmm", spy(torch.addmm))
    torch.manual_seed(0)
    x = torch.randn(6400, 8)
    a, b = C.rarity_torch(x, 4), C.rarity_npu(x, 4)
    assert len(sizes) == 2 * 7 and max(sizes) == 1024 * 6400 and torch.allclose(a, b, atol=1e-4)


def test_select_kernels_in_the_interpreter(triton_interpreter):
    """The rarity and gather kernels, run by Triton's CPU interpreter, against the PyTorch paths: channels not a
    power of two, an image of 1 tile and of 41 (4 x 4 token grids: the interpreter is slow), twins, the columns in
    several ranges, a lone token, and kept tokens at both ends of their rows."""
    code = """
import torch, compress as C
x = torch.zeros(1, 1)
assert C.rarity_backend(x) is C.rarity_triton and C.gather_backend(x[None, None]) is C.gather_triton
assert C.gather_backend(x[None, None].requires_grad_()) is C.gather_torch  # training: autograd's path
torch.manual_seed(0)
for tiles, c, twins, split, ks in ((1, 24, False, None, (1, 4)), (1, 100, True, 2, (1, 4)),
                                   (41, 100, False, None, (4,)), (41, 24, True, 3, (1,))):
    n = tiles * 16
    x = torch.randn(n, c)
    x = x[torch.randint(0, n // 8, (n,))] if twins else x
    for k in ks:
        got, want = C.rarity_triton(x, k, split), C.rarity_torch(x, k)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-3 * c ** 0.5), (tiles, c, twins, split, k)
assert C.rarity_triton(torch.randn(1, 24), 0).tolist() == [0.0]
x = torch.randn(2, 24)
assert torch.allclose(C.rarity_triton(x, 1), C.rarity_torch(x, 1))
grid = torch.randn(41, 4, 4, 100)
flat = torch.arange(0, 41 * 16, 3)
tile, i, j = flat // 16, flat % 16 // 4, flat % 4
assert (j == 0).any() and (j == 3).any()
assert torch.equal(C.gather_triton(grid, tile, i, j), C.gather_torch(grid, tile, i, j))
print("ok")
"""
    triton_interpreter(code)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled kernels need a GPU; the interpreter test runs them here")
def test_select_kernels_on_cuda():
    """The compiled kernels on a GPU, picked by the backends, against the PyTorch paths: fp32 and bf16, odd sizes,
    and an image of 25 tiles of InternVL2-2B's tokens."""
    pytest.importorskip("triton")
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for n, c in ((1, 24), (5, 100), (1300, 100), (6400, 4096)):
            x = torch.randn(n, c, device="cuda").to(dtype)
            k = min(C.Select.neighbours, n - 1)
            assert C.rarity_backend(x) is C.rarity_triton
            got, want = C.rarity_triton(x, k), C.rarity_torch(x, k)
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-3 * c ** 0.5), (dtype, n, c)
        grid = torch.randn(25, 16, 16, 4096, device="cuda").to(dtype)
        flat = torch.randperm(25 * 256, device="cuda")[:3200].sort().values
        tile, i, j = flat // 256, flat % 256 // 16, flat % 16
        with torch.no_grad():
            assert C.gather_backend(grid) is C.gather_triton
            assert torch.equal(C.gather_triton(grid, tile, i, j), C.gather_torch(grid, tile, i, j))


# ----------------------------------------------------------------------------- one select for every ratio, by content

def ranged_select(width=8, floor=0.125):
    s = C.Select((1, 1), width)
    s.ratio, s.floor = 0.5, floor
    return s


def test_a_ranged_select_keeps_any_share_of_each_tile():
    torch.manual_seed(0)
    grid = torch.randn(5, 4, 4, 8)
    s = ranged_select()
    for ratio in (0.125, 0.3, 0.5, 0.8, 1.0):
        s.ratio = ratio
        per_tile = max(1, round(ratio * 16))
        tokens, keep = s(grid, [2, 3])
        assert s.tokens_per_tile(16) == per_tile and len(tokens) == len(keep) == 5 * per_tile
        first = keep[:2 * per_tile]  # image 0's: its per_tile x 2 rarest, by the whole-image ranking
        assert first.tolist() == sorted(s.rarity(grid[:2].flatten(0, 2)).topk(2 * per_tile).indices.tolist())


def test_counts_keep_every_token_above_the_threshold_and_the_floor():
    torch.manual_seed(1)
    grid = torch.randn(6, 4, 4, 8)
    grid[:3] = 0.01 * grid[:3]  # image 0 nearly blank: its rarity is small everywhere
    s = ranged_select(floor=0.25)
    scores = [s.rarity(grid[a:b].flatten(0, 2)) for a, b in ((0, 3), (3, 6))]
    s.threshold = float(scores[1].median())
    counts = s.counts(grid, [3, 3], None)
    assert counts[0] == 12 and counts[1] == int((scores[1] > s.threshold).sum())  # the floor: 1/4 of 48 tokens
    assert s.tokens_per_tile(16) is None
    tokens, keep = s(grid, [3, 3])  # no counts given: the threshold's
    assert len(tokens) == sum(counts)
    assert set(keep[counts[0]:].tolist()) == set((scores[1] > s.threshold).nonzero()[:, 0].tolist())


def test_calibrate_hits_each_mean_share_on_its_images():
    torch.manual_seed(2)
    grids = [torch.randn(n, 4, 4, 8) * scale for n, scale in ((1, 1), (3, 0.2), (5, 3))]
    s = ranged_select()
    table = C.calibrate(s, grids, None, shares=(0.1, 0.3, 0.5, 0.9))
    assert [x for x, _ in table] == [0.3, 0.5, 0.9]  # below the floor no threshold reaches
    for share, t in table:  # the brute-force mean over images of max(floor, kept share) at that threshold
        kept = [max(math.ceil(0.125 * g.numel() // 8) / (g.numel() // 8),
                    (s.rarity(g.flatten(0, 2)) > t).float().mean().item()) for g in grids]
        assert sum(kept) / len(kept) == pytest.approx(share, abs=0.02)


def test_set_budget_interpolates_and_refuses_what_it_cannot_do(tok):
    teacher = tiny(tok)
    student = C.make_student(teacher, "select", 0.5, ratio_range=(0.125, 1))
    student.config = replace(student.config, compressor=dict(student.config.compressor,
                                                             thresholds=[[0.2, 4.0], [0.3, 2.0], [0.5, 1.0]]))
    C.set_budget(student, 0.25)
    assert student.compressor.ratio == 0.25 and student.compressor.threshold is None
    assert student.num_image_token == 1 and student.config.compressor["ratio"] == 0.25  # of a tile's 2 x 2
    C.set_budget(student, 0.4, auto=True)
    assert student.compressor.threshold == pytest.approx(1.5) and student.num_image_token is None
    assert student.config.compressor["budget"] == "auto"
    again = C.build(student.config)  # a saved record builds the same budget
    assert (again.ratio, again.threshold, again.floor) == (0.4, student.compressor.threshold, 0.125)
    with pytest.raises(C.CompressError, match="outside the range"):
        C.set_budget(student, 0.05)
    with pytest.raises(C.CompressError, match="calibrated for mean shares 0.2 to 0.5"):
        C.set_budget(student, 0.9, auto=True)
    fixed = C.make_student(teacher, "select", 0.5)
    assert C.set_budget(fixed, 0.5) is fixed  # its own ratio: nothing to do
    with pytest.raises(C.CompressError, match="keeps 0.5 of the tokens only"):
        C.set_budget(fixed, 0.25)
    with pytest.raises(C.CompressError, match="a range of ratios is select's"):
        C.make_student(teacher, "pool", 0.5, ratio_range=(0.25, 1))


@pytest.mark.parametrize("field, words", [
    (dict(ratio_range=[0.125, 0.5, 1]), "ratio_range [0.125, 0.5, 1] is not [LO, HI]"),
    (dict(ratio_range=0.125), "ratio_range 0.125 is not [LO, HI]"),
    (dict(ratio_range=["0.125", "1"]), "is not [LO, HI]"),
    (dict(ratio_range=[1, 0.125]), "is not [LO, HI] with 0 < LO < HI <= 1"),
    (dict(budget="Auto"), "budget 'Auto'"),
    (dict(thresholds=[[0.2], [0.5]]), "are not [share, threshold] pairs"),
    (dict(thresholds=[[0.2, 1.0], [0.5, 2.0]]), "the threshold falling"),  # would keep every token
    (dict(thresholds=[[0.5, 1.0], [0.2, 2.0]]), "the share rising"),
    (dict(thresholds=[[0.2, float("nan")], [0.5, 1.0]]), "are not [share, threshold] pairs"),  # passed every order test
    (dict(ratio_range=[0.125, float("inf")]), "is not [LO, HI]"),
    (dict(method="pool"), "has ratio_range without select"),
])
def test_a_malformed_ranged_record_is_one_clear_error(tok, field, words):
    """A config.json edited by hand or by another tool: refused by name, never run as something else."""
    student = C.make_student(tiny(tok), "select", 0.5, ratio_range=(0.125, 1))
    record = student.config.compressor | {"budget": "auto", "thresholds": [[0.2, 4.0], [0.5, 1.0]]} | field
    with pytest.raises(C.CompressError, match=re.escape(words)):
        C.build(replace(student.config, compressor=record))
    gated_alone = {"method": "select", "ratio": 0.5, "gated": True}
    with pytest.raises(C.CompressError, match="gated without ratio_range"):
        C.build(replace(student.config, compressor=gated_alone))


def test_dropped_share_counts_each_kept_tokens_dropped_row_neighbours():
    torch.manual_seed(0)
    for tiles, h, w in ((1, 1, 1), (3, 2, 5), (2, 7, 3)):
        n = tiles * h * w
        flat = torch.randperm(n)[:max(1, n // 3)].sort().values
        kept = set(flat.tolist())
        j = flat % w
        want = [sum(0 <= c + d < w and f + d not in kept for d in (-1, 1)) / 2
                for f, c in zip(flat.tolist(), j.tolist())]
        assert C.dropped_share(flat, w, n).tolist() == want


def test_a_ranged_student_with_every_token_is_the_teacher(tok, tmp_path):
    """A student for every ratio has its own A_s, weighed per token by its dropped neighbours: at ratio 1 it is the
    teacher whatever it learnt; without its own A_s (a record from before it had one) the fold changes every token."""
    teacher = tiny(tok)
    student = C.make_student(teacher, "select", 1.0, ratio_range=(0.25, 1))
    assert student.config.compressor["gated"] and C.build(student.config).projector is not None
    assert torch.equal(student.compressor.projector[1].weight, teacher.mlp1[1].weight)  # A_s starts as mlp1
    with torch.no_grad():
        for p in student.compressor.parameters():
            p.add_(0.5 * torch.randn_like(p))
    torch.manual_seed(1)
    pv = torch.randn(3, 3, 56, 56)
    ids = torch.tensor([prompt_ids(student, tok, 3)])
    assert torch.equal(student(pv, ids), teacher(pv, ids))
    M.save_model(student, str(tmp_path / "gated"), tokenizer_dir=TOK)
    loaded = M.load_model(str(tmp_path / "gated"), build_compressor=C.build)
    C.set_budget(loaded, 0.5)  # half dropped: its own A_s acts
    half = torch.tensor([prompt_ids(loaded, tok, 3)])
    assert not torch.allclose(loaded(pv, half), B.apply(tiny(tok), "select", 0.5)(pv, half), atol=1e-3)
    old = replace(student.config, compressor={k: v for k, v in student.config.compressor.items() if k != "gated"})
    fold_only = C.build(old)  # the fold on every token, through the model's mlp1
    fold_only.load_state_dict(student.compressor.state_dict(), strict=False)
    assert fold_only.projector is None
    student.compressor = fold_only
    assert not torch.allclose(student(pv, ids), teacher(pv, ids), atol=1e-3)


def test_a_subset_hands_on_its_tokens_through_the_projector_with_grad():
    grid, projector = torch.randn(2, 4, 4, 8), torch.nn.Linear(8, 6)
    for m in (B.DivPrune((1, 2), 8), C.Select((1, 2), 8)):
        features, keep = m.compress(grid, [2], projector)
        assert features.shape == (16, 6) and features.requires_grad  # mlp1 can learn through it
