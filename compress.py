"""
FCoT-VL's visual-token compression for InternVL2: the compression module V_c (select) and the student that carries
it. Each tile's pixel-shuffled token grid [tiles, h, w, C] (16 x 16 x 4096 for InternVL2-2B at 448 px) goes through
V_c, then through the student projector A_s (at first a copy of the teacher's mlp1):

  select     per image, the 1/k of its tokens with the fewest near-duplicates, each at the position id it had
             in the uncompressed sequence, plus a learned fold of its two neighbours (Select): the default.
             One student for every ratio (ratio_range) has its own A_s, and leaves the teacher's projector to
             the tokens whose neighbours all stayed: with nothing dropped it is the teacher
  pool       the mean of each window of 1/ratio neighbouring tokens, no parameters (a V_c too, and a baseline)

Windows (window_for): ratio 0.5 merges horizontal pairs (text lines run horizontally), 0.25 merges 2 x 2.
The learned window merges (conv, dwconv, mlp, gate) lost to select (DocVQA 47-53 against 93.6) and left
after 3d91e24: git checkout 3d91e24 && python distill.py --compressor conv --ratio 0.5
The training-free baselines select is measured against (DivPrune, random, VisionZip, FastV, PyramidDrop, fewer
tiles) are baselines.py's, built on the classes here.

    from compress import build, make_student
    student = make_student(teacher, "select", 0.5)  # shares the teacher's ViT and LLM
    model = M.load_model(folder, build_compressor=build)   # a saved student
    python bench.py --kernels                       # merge's and select's kernels vs eager, torch.compile
    python -m pytest tests/test_compress.py -q

Imports nothing but torch (and Triton if installed), not even model.py: it works on the model it is given
through model.py's extension point (InternVLChat's compressor), so it serves any copy of model.py whose
compressor hands on projected features (since 2026-12-06). Pool's weighted merge runs as a Triton kernel on CUDA,
as a depthwise convolution through torch_npu on Ascend NPUs, and in plain PyTorch elsewhere. Select's rarity and
gather likewise: Triton kernels on CUDA, a matmul formulation on NPUs, PyTorch elsewhere, in O(n) memory. The choice
between them (the top k, or the tokens above a threshold) stays torch.topk and a comparison on every device: one call
over n scalars, beside rarity's 2 n^2 C FLOPs and the gather's reads, so a kernel of its own would save nothing.
"""
import copy
import inspect
import math
import os
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the PyTorch path
    triton = None


class CompressError(ValueError):
    """An invalid ratio, method or grid: one line naming the fix."""


def window_for(ratio, h, w):
    """(kh, kw) with kh * kw = 1 / ratio: the squarest window (kw >= kh) that tiles an h x w grid. select keeps
    1/k of the tokens under the same rule, so that every tile count gives a whole number."""
    k = round(1 / ratio) if 0 < ratio < 1 else 0
    if k < 2 or abs(k * ratio - 1) > 1e-6:
        raise CompressError(f"invalid ratio {ratio}: use 1/k for an integer k >= 2, e.g. 0.5 or 0.25")
    if k > h * w:  # before the divisor search, which a tiny ratio (1e-20) makes endless
        raise CompressError(f"ratio {ratio} keeps 1 of {k} tokens, more than the {h}x{w} token grid holds: use 0.5 or 0.25")
    for kh in sorted((d for d in range(1, math.isqrt(k) + 1) if k % d == 0), reverse=True):
        if h % kh == 0 and w % (k // kh) == 0:
            return kh, k // kh
    raise CompressError(f"ratio {ratio} needs windows of {k} tokens, and none tiles the {h}x{w} token grid: "
                        f"use 0.5 or 0.25")


# ----------------------------------------------------------------------------------------------
# model.py's extension point (see InternVLChat's docstring): 1/k of a tile's tokens reach the LLM

class Compressor(nn.Module):
    """Pool's forward maps the token grid [N, h, w, C] to [N, h/kh, w/kw, C], handed on at consecutive position
    ids; the subsets keep tokens at their own position ids. compress hands on what is kept through the projector.
    install(model): baselines.apply's call, for a compressor that reads the model's ViT through a hook; remove()
    takes the hook off again."""
    hook = None  # what install() hooked on the model, if anything

    def __init__(self, window, width):  # width: the token's channels, for the learned parts
        super().__init__()
        self.window, self.window_size = window, window[0] * window[1]
        self.projector = None  # its own A_s, if any (select for every ratio: build sets it, compress weighs it)

    def tokens_per_tile(self, n):
        return n // self.window_size

    def compress(self, grid, tiles_per_image, projector, counts=None):
        return projector(self(grid).flatten(0, 2)), None

    def install(self, model):
        pass

    def remove(self):
        if self.hook is not None:
            self.hook.remove()
            self.hook = None


class Subset(Compressor):
    """Keeps, per image, b of its tokens at the position ids they had (b: the image's count in the prompt, or
    len(image) // k): pick(image [n, C], b, tiles: the image's slice of the grid's tiles, projector) -> (tokens
    [b, C], their indices in the image [b], sorted). compress chooses without grad: the training-free subsets
    learn nothing (select, which does, has its own)."""

    def subsets(self, grid, tiles_per_image, projector, counts=None):
        tokens, keep, first = [], [], 0
        for i, n in enumerate(tiles_per_image):
            image = grid[first:first + n].flatten(0, 2)
            b = len(image) // self.window_size if counts is None else counts[i]
            t, kept = self.pick(image, b, slice(first, first + n), projector)
            tokens.append(t)
            keep.append(kept)
            first += n
        return torch.cat(tokens), torch.cat(keep)

    def compress(self, grid, tiles_per_image, projector, counts=None):
        with torch.no_grad():
            tokens, keep = self.subsets(grid, tiles_per_image, projector, counts)
        return projector(tokens), keep


# ----------------------------------------------------------------------------------------------
# select: V_c, FCoT-VL's compressor, and its options
#
# select's kernel path: rarity (k nearest distances, blockwise) and the fold's gather, on three backends. Rarity is
# each token's mean Euclidean distance to its k nearest others, in fp32, in O(n) memory: an image of 25 tiles has
# 6,400 tokens, whose n x n distances would take 164 MB. A lone token (n = 1, k = 0) scores 0 on every backend; the
# old whole-matrix cdist gave NaN there (a mean of nothing), which never mattered: its one token is kept or not.

def rarity_torch(x, k, block=1024):
    """[n, C] -> [n]: torch.cdist over row blocks, the simplest reference. O(block x n) memory."""
    x = x.float()
    return torch.cat([torch.cdist(x[a:a + block], x).topk(k + 1, largest=False).values[:, 1:].sum(-1) / max(k, 1)
                      for a in range(0, len(x), block)])  # the smallest (the token itself, or a twin at 0) dropped


def rarity_npu(x, k, block=1024):
    """rarity_torch as addmm, elementwise ops and topk only, ops torch_npu maps to CANN kernels (written for Ascend,
    tested here on the CPU as plain PyTorch). Squared distances |a|^2 + |b|^2 - 2 a.b, sqrt only of the k+1 kept."""
    x = x.float()
    sq = x.square().sum(-1)
    out = []
    for a in range(0, len(x), block):
        d = torch.addmm(sq[None], x[a:a + block], x.T, alpha=-2).add_(sq[a:a + block, None]).clamp_(min=0)
        out.append(d.topk(k + 1, largest=False).values[:, 1:].sqrt().sum(-1) / max(k, 1))
    return torch.cat(out)


if triton is not None:
    @triton.jit
    def _rarity_kernel(x_ptr, part_ptr, n, C, span, K: tl.constexpr, KP: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        # one program: BLOCK_M rows against its range of columns [lo, hi), keeping each row's K+1 smallest squared
        # distances in registers, [BLOCK_M, KP]: slots past K sit at -inf, never the maximum an insertion replaces
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        slot = tl.arange(0, KP)[None, :]
        best = tl.where(slot <= K, float("inf"), float("-inf")) + tl.zeros([BLOCK_M, KP], tl.float32)
        lo = tl.program_id(1) * span
        hi = tl.minimum(lo + span, n)
        for start in range(lo, hi, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            dot = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            na, nb = tl.zeros([BLOCK_M], tl.float32), tl.zeros([BLOCK_N], tl.float32)
            for c0 in range(0, C, BLOCK_C):  # channel blocks, the tail masked to 0: any C
                c = c0 + tl.arange(0, BLOCK_C)[None, :]
                a = tl.load(x_ptr + rows[:, None].to(tl.int64) * C + c, mask=(rows[:, None] < n) & (c < C), other=0.0)
                b = tl.load(x_ptr + cols[:, None].to(tl.int64) * C + c, mask=(cols[:, None] < hi) & (c < C), other=0.0)
                dot = tl.dot(a, tl.trans(b), dot, input_precision="tf32x3")  # near fp32 for fp32 x; bf16 ignores it
                na += tl.sum(a.to(tl.float32) * a.to(tl.float32), 1)
                nb += tl.sum(b.to(tl.float32) * b.to(tl.float32), 1)
            d = tl.maximum(na[:, None] + nb[None, :] - 2 * dot, 0.0)
            d = tl.where(cols[None, :] < hi, d, float("inf"))
            for _ in tl.static_range(K + 1):  # the tile's K+1 smallest per row, each replacing the row's max if smaller
                m = tl.min(d, 1)
                d = tl.where(tl.arange(0, BLOCK_N)[None, :] == tl.argmin(d, 1)[:, None], float("inf"), d)
                top = (slot == tl.argmax(best, 1)[:, None]) & (m < tl.max(best, 1))[:, None]
                best = tl.where(top, m[:, None], best)
        out = part_ptr + (rows[:, None].to(tl.int64) * tl.num_programs(1) + tl.program_id(1)) * KP + slot
        tl.store(out, tl.where(slot <= K, best, float("inf")), mask=rows[:, None] < n)

    @triton.jit
    def _gather_kernel(x_ptr, tile_ptr, i_ptr, j_ptr, y_ptr, H, W, C, BLOCK: tl.constexpr):
        # one program: one kept token x BLOCK channels of its left, own and right cells, zeros past the row's ends
        tok = tl.program_id(0).to(tl.int64)
        c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        t, i, j = tl.load(tile_ptr + tok), tl.load(i_ptr + tok), tl.load(j_ptr + tok)  # int64: gather_triton's
        for dj in tl.static_range(3):
            jj = j + dj - 1
            # past the row's ends, no channels: one vector mask (the interpreter rejects scalar & vector)
            width = tl.where((jj >= 0) & (jj < W), C, 0)
            v = tl.load(x_ptr + ((t * H + i) * W + jj) * C + c, mask=c < width, other=0.0)
            tl.store(y_ptr + (tok * 3 + dj) * C + c, v, mask=c < C)


def rarity_triton(x, k, split=None):
    """The Triton kernel: O(n k) memory. The columns run in `split` ranges (default: enough programs to fill the
    GPU, as n / 64 row blocks alone would not), whose K+1 smallest per row one topk merges."""
    x = x.contiguous()
    n, C = x.shape
    if split is None:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 1
        split = max(1, 2 * sms // triton.cdiv(n, 64))
    span = triton.cdiv(triton.cdiv(n, split), 64) * 64  # whole column blocks per range
    kp = triton.next_power_of_2(k + 1)
    part = torch.empty(n, triton.cdiv(n, span), kp, dtype=torch.float32, device=x.device)
    _rarity_kernel[(triton.cdiv(n, 64), part.shape[1])](x, part, n, C, span, K=k, KP=kp, BLOCK_M=64, BLOCK_N=64,
                                                        BLOCK_C=min(64, max(16, triton.next_power_of_2(C))))
    return part.view(n, -1).topk(k + 1, largest=False).values[:, 1:].sqrt().sum(-1) / max(k, 1)


def gather_torch(grid, tile, i, j):
    """grid [tiles, h, w, C] -> [kept, 3C]: each kept token's left neighbour, itself and its right neighbour (zeros
    past the row's ends)."""
    padded = F.pad(grid, (0, 0, 1, 1))  # a zero token left and right of every row
    return torch.cat([padded[tile, i, j], padded[tile, i, j + 1], padded[tile, i, j + 2]], -1)


def gather_triton(grid, tile, i, j):
    """The Triton kernel (forward only: training takes the PyTorch path, which autograd can follow)."""
    T, H, W, C = grid.shape
    y = torch.empty(len(tile), 3 * C, dtype=grid.dtype, device=grid.device)
    block = min(1024, triton.next_power_of_2(C))
    tile, i, j = (v.long().contiguous() for v in (tile, i, j))
    _gather_kernel[(len(tile), triton.cdiv(C, block))](grid.contiguous(), tile, i, j, y, H, W, C, BLOCK=block)
    return y


def triton_runs(x):
    """Whether the Triton kernels run on x: on CUDA, or on the CPU under TRITON_INTERPRET=1 (the tests' way in)."""
    interpret = x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    return triton is not None and (x.device.type == "cuda" or interpret)


def rarity_backend(x):  # no grad rule: rarity is a ranking, always run without grad
    return rarity_triton if triton_runs(x) else rarity_npu if x.device.type == "npu" else rarity_torch


def gather_backend(grid):
    needs_grad = torch.is_grad_enabled() and grid.requires_grad
    return gather_triton if triton_runs(grid) and not needs_grad else gather_torch


class Select(Subset):
    """Keeps, per image, the 1/k of its tokens with the fewest near-duplicates (the largest mean distance to
    their nearest tokens: blank paper and the inside of a bar have hundreds of twins, a glyph few), then folds
    each kept token's horizontal neighbours into it (learned). Options: skip_thumbnail ranks a many-tile
    image's thumbnail below every tile token (on a page it is too coarse to read, but on a small crop, a word,
    it is the view that reads); rank_projected counts near-duplicates among mlp1's outputs, what the LLM reads
    (the choice then follows A_s as it learns, though no gradient asks it to move).
    A student trained for a range of ratios (set_budget) keeps `ratio` of each tile's tokens, any share, or with
    a threshold each image's tokens whose rarity is above it (at least `floor` of them): a budget by content.
    Such a student has its own A_s, weighed per token by the neighbours dropped (compress)."""
    neighbours = 4  # rarity = mean distance to this many nearest tokens (2 to 8 choose alike; README)
    # a ranged student's budget (budget() sets them on the instance; a fixed select keeps 1/k and hashes as before)
    ratio, threshold, floor = None, None, 0.0

    def __init__(self, window, width, skip_thumbnail=False, rank_projected=False):  # window: only its size k counts
        super().__init__(window, width)
        self.skip_thumbnail, self.rank_projected = skip_thumbnail, rank_projected
        self.norm = nn.LayerNorm(3 * width)
        self.fc1 = nn.Linear(3 * width, width)
        self.fc2 = nn.Linear(width, width)
        nn.init.zeros_(self.fc2.weight), nn.init.zeros_(self.fc2.bias)

    def rarity(self, image):
        """[n, C] -> [n]: each token's mean distance to its nearest others. Uniform regions (paper, a bar,
        sky) score near zero wherever they lie, so a chart's bars do not crowd out its labels. O(n) memory, on
        the fastest backend for the image's device (rarity_backend)."""
        return rarity_backend(image)(image, min(self.neighbours, len(image) - 1))

    def tokens_per_tile(self, n):
        if self.threshold is not None:
            return None
        return n // self.window_size if self.ratio is None else max(1, round(self.ratio * n))

    @torch.no_grad()
    def score(self, image, tiles, projector):
        """What pick ranks by: rarity (of mlp1's outputs with rank_projected), a skipped thumbnail at -1."""
        score = self.rarity(projector(image) if self.rank_projected else image)
        n = tiles.stop - tiles.start
        if self.skip_thumbnail and n > 1:  # the last tile; at ratio <= 1/2 the tiles alone fill the budget
            score[-(len(image) // n):] = -1
        return score

    def pick(self, image, b, tiles, projector):
        kept = self.score(image, tiles, projector).topk(b).indices.sort().values  # in torch: n scalars
        return image[kept], kept

    def least(self, n):
        """The fewest tokens an image of n keeps under a threshold: floor of them, at least one."""
        return max(1, math.ceil(self.floor * n))

    def counts(self, grid, tiles_per_image, projector):
        """Each image's tokens scoring above the threshold, at least floor of them (model.py's extension point;
        compress ranks again and keeps as many: the same tokens, but for ties at the threshold)."""
        counts, first = [], 0
        for n in tiles_per_image:
            image = grid[first:first + n].flatten(0, 2)
            above = int((self.score(image, slice(first, first + n), projector) > self.threshold).sum())
            counts.append(min(len(image), max(self.least(len(image)), above)))
            first += n
        return counts

    def forward(self, grid, tiles_per_image, projector=None, counts=None):
        """grid [tiles, h, w, C], the images' tiles in order -> (tokens [kept, C], keep [kept]: each
        kept token's index in its image's uncompressed token sequence), the fold added to every token (compress
        weighs it for a student with its own A_s). projector: the model's mlp1, which rank_projected measures rarity
        after; model.py passes it. counts: each image's tokens to keep (model.py passes its prompt's; default:
        tokens_per_tile's, or by content with a threshold)."""
        tokens, keep, cells, _ = self.choose(grid, tiles_per_image, projector, counts)
        return tokens + self.fold(cells), keep

    def choose(self, grid, tiles_per_image, projector=None, counts=None):
        """forward's choice before the fold -> (tokens, keep, cells [kept, 3C]: each token's left neighbour, itself
        and its right neighbour, flat [kept]: each token's index in grid.flatten(0, 2))."""
        if self.rank_projected and projector is None:
            raise CompressError("select with rank_projected needs the model's projector: call it as "
                                "compressor(grid, tiles_per_image, model.mlp1)")
        h, w = grid.shape[1:3]
        if counts is None:
            counts = self.counts(grid, tiles_per_image, projector) if self.threshold is not None else \
                [t * self.tokens_per_tile(h * w) for t in tiles_per_image]
        tokens, keep = self.subsets(grid, tiles_per_image, projector, counts)
        n = torch.as_tensor(tiles_per_image, device=keep.device)  # flat: the index into grid.flatten(0, 2)
        flat = keep + ((n.cumsum(0) - n) * h * w).repeat_interleave(torch.as_tensor(counts, device=keep.device))
        tile, i, j = flat // (h * w), flat % (h * w) // w, flat % w
        cells = gather_backend(grid)(grid, tile, i, j)  # left, self, right
        return tokens, keep, cells, flat

    def fold(self, cells):
        return self.fc2(F.gelu(self.fc1(self.norm(cells))))

    def compress(self, grid, tiles_per_image, projector, counts=None):
        """The kept tokens through the projector, and their position ids. A student for every ratio has its own A_s
        (self.projector) and leaves projector, the model's mlp1, the teacher's: with g the share of a token's two
        row neighbours dropped,

            features = (1 - g) projector(x) + g A_s(x + fold(left, x, right))

        so a token whose neighbours stayed reads as the teacher's, and with nothing dropped the student is the
        teacher."""
        if self.projector is None:
            tokens, keep = self(grid, tiles_per_image, projector, counts)
            return projector(tokens), keep
        tokens, keep, cells, flat = self.choose(grid, tiles_per_image, projector, counts)
        dropped = dropped_share(flat, grid.shape[2], grid.shape[:3].numel())
        own = self.projector(tokens + self.fold(cells))
        return torch.lerp(projector(tokens), own, dropped[:, None].to(own.dtype)), keep


def dropped_share(flat, w, n):
    """[kept]: the share of each kept token's two row neighbours that were dropped (0, 1/2 or 1; past a row's end
    there is nothing to drop). flat: the kept tokens' indices in the flattened grid of n tokens, w wide."""
    kept = torch.zeros(n + 2, dtype=torch.bool, device=flat.device)  # one slot of padding each side
    kept[flat + 1] = True
    j = flat % w
    left = (j > 0) & ~kept[flat]
    right = (j < w - 1) & ~kept[flat + 2]
    return (left.float() + right.float()) / 2


SELECT_OPTIONS = ("skip_thumbnail", "rank_projected")  # select's switches, off unless config.compressor has them
SELECT_RECORD = ("method", "ratio", *SELECT_OPTIONS, "ratio_range", "gated", "budget", "thresholds")  # its keys


def select_options(config):
    """select's switches as config.compressor records them (a record with a key select does not take, or a switch
    that is not true or false, is refused). The thumbnail is skipped only where images have one."""
    if extra := sorted(set(config.compressor) - set(SELECT_RECORD)):
        raise CompressError(f"config.json's compressor record has {extra}, which select does not take: remove them "
                            f"(it takes {', '.join(SELECT_RECORD)})")
    if bad := next((k for k in (*SELECT_OPTIONS, "gated") if not isinstance(config.compressor.get(k, False), bool)),
                   None):
        raise CompressError(f"config.json's compressor record has {bad}: {config.compressor[bad]!r}, not true or false")
    on = {k: config.compressor.get(k, False) for k in SELECT_OPTIONS}
    return on | {"skip_thumbnail": on["skip_thumbnail"] and config.use_thumbnail}


# ----------------------------------------------------------------------------------------------
# pool, and the weighted merge it runs on: y = the sum over a window's cells of weight[cell] * token (+ bias), on
# three backends

def merge_torch(x, window, weight, bias=None):
    # cell by cell over strided views: no [.., k, C] intermediate, one multiply-add pass per cell
    kh, kw = window
    w = weight.to(x.dtype)
    y = x[:, 0::kh, 0::kw] * w[0] if bias is None else torch.addcmul(bias.to(x.dtype), x[:, 0::kh, 0::kw], w[0])
    for i in range(1, kh * kw):
        y = y.addcmul(x[:, i // kw::kh, i % kw::kw], w[i])
    return y


def merge_npu(x, window, weight, bias=None):
    """A depthwise strided convolution: one native kernel on Ascend (torch_npu maps conv2d to CANN)."""
    C = x.shape[-1]
    kernel = weight.to(x.dtype).view(*window, C).permute(2, 0, 1)[:, None]  # [C, 1, kh, kw]
    y = F.conv2d(x.permute(0, 3, 1, 2), kernel, None if bias is None else bias.to(x.dtype), stride=window, groups=C)
    return y.permute(0, 2, 3, 1)


if triton is not None:
    @triton.jit
    def _merge_kernel(x_ptr, w_ptr, b_ptr, y_ptr, H, W, C, KH: tl.constexpr, KW: tl.constexpr,
                      HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
        # one program: one output token x BLOCK channels, its window's cells read from the grid, summed in fp32
        tok = tl.program_id(0).to(tl.int64)
        c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = c < C
        Wo = W // KW
        n, i, j = tok // ((H // KH) * Wo), (tok // Wo) % (H // KH), tok % Wo
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for dy in tl.static_range(KH):
            for dx in tl.static_range(KW):
                row = (n * H + i * KH + dy) * W + j * KW + dx
                xv = tl.load(x_ptr + row * C + c, mask=inside, other=0.0).to(tl.float32)
                wv = tl.load(w_ptr + (dy * KW + dx) * C + c, mask=inside, other=0.0).to(tl.float32)
                acc += xv * wv
        if HAS_BIAS:
            acc += tl.load(b_ptr + c, mask=inside, other=0.0).to(tl.float32)
        tl.store(y_ptr + tok * C + c, acc.to(y_ptr.dtype.element_ty), mask=inside)


def merge_triton(x, window, weight, bias=None):
    """The Triton kernel (forward only: training takes the PyTorch path, which autograd can follow)."""
    N, H, W, C = x.shape
    x = x.contiguous()
    y = torch.empty(N, H // window[0], W // window[1], C, dtype=x.dtype, device=x.device)
    block = min(1024, triton.next_power_of_2(C))
    grid = (y.numel() // C, triton.cdiv(C, block))
    w = weight.contiguous()
    _merge_kernel[grid](x, w, w if bias is None else bias.contiguous(), y, H, W, C, KH=window[0], KW=window[1],
                        HAS_BIAS=bias is not None, BLOCK=block)
    return y


def merge_backend(x, weight):
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    interpret = x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"  # the tests' way to the kernel
    if triton is not None and (x.device.type == "cuda" or interpret) and not needs_grad:
        return merge_triton
    return merge_npu if x.device.type == "npu" else merge_torch


class Pool(Compressor):
    """Each window's mean, no parameters."""

    def forward(self, x):  # [N, h, w, C] -> [N, h/kh, w/kw, C], on the fastest backend for x's device
        mean = torch.full((self.window_size, x.shape[-1]), 1 / self.window_size, device=x.device)
        return merge_backend(x, mean)(x, self.window, mean)


# ----------------------------------------------------------------------------------------------
# the student

COMPRESSORS = {"select": Select, "pool": Pool}  # V_c's; baselines.build adds the training-free subsets


def spec(method, ratio, **options):
    """config.compressor of a compressed model: {"method", "ratio"} and select's options (SELECT_OPTIONS) that are
    on. Any other key a record holds is its compressor's keyword argument (build; random's seed: baselines.apply)."""
    on = {k: True for k, v in options.items() if v}
    for k in on:
        if k not in SELECT_OPTIONS:
            raise CompressError(f"unknown compressor option {k!r}: choose from {', '.join(SELECT_OPTIONS)}")
        if method != "select":
            raise CompressError(f"{k} is an option of select, not of {method}: drop it or use select")
    return {"method": method, "ratio": ratio} | on


def is_number(x):  # a finite JSON number: bool is an int to isinstance, and json reads NaN and Infinity
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def token_grid(config):
    """The side of a tile's token grid after the pixel shuffle (16 for InternVL2's 448 px tiles)."""
    return int(config.force_image_size // config.vision.patch_size * config.downsample_ratio)


def token_width(config):
    """A token's channels after the pixel shuffle: the ViT's, 4x at ratio 0.5 (4096 for InternViT-300M)."""
    return config.vision.hidden_size * round(1 / config.downsample_ratio) ** 2


def build(config, compressors=COMPRESSORS):
    """The compressor config.compressor records (model.load_model's build_compressor). compressors: method -> class
    (baselines.build passes these and its own)."""
    if not isinstance(config.compressor, dict):
        raise CompressError(f"config.json's compressor is {config.compressor!r}: a record such as "
                            '{"method": "select", "ratio": 0.5}, as compress.spec writes it')
    method, ratio = config.compressor.get("method"), config.compressor.get("ratio")
    if method not in compressors:
        raise CompressError(f"unknown compressor {method!r}: choose one of {', '.join(compressors)}"
                            + ("; a model that baselines.apply changed loads with build_compressor=baselines.build"
                               if compressors is COMPRESSORS else ""))
    if not is_number(ratio) or not 0 < ratio <= 1:
        raise CompressError(f"config.json's compressor record {config.compressor} needs a ratio in (0, 1]: the share "
                            "of visual tokens kept, as compress.spec writes it")
    grid, width = token_grid(config), token_width(config)
    ranged = "ratio_range" in config.compressor
    if (ranged and method != "select") or (config.compressor.get("gated") and not ranged):
        raise CompressError(f"config.json's compressor record {config.compressor.get('method')!r} has "
                            f"{'ratio_range' if ranged else 'gated'} without {'select' if ranged else 'ratio_range'}: "
                            "only a select student for every ratio (distill.py --budget auto) records them")
    window = (1, 1) if ranged else window_for(ratio, grid, grid)  # a ranged select keeps any share, no window
    options = select_options(config) if method == "select" else \
        {k: v for k, v in config.compressor.items() if k not in ("method", "ratio")}
    try:  # bind first, so that only a key the class does not take is this line, not any TypeError inside it
        inspect.signature(compressors[method]).bind(window, width, **options)
    except TypeError:
        raise CompressError(f"config.json's compressor record {config.compressor} has {sorted(options)}, which "
                            f"{method} does not take: remove them") from None
    compressor = compressors[method](window, width, **options)
    if ranged:
        budget(compressor, config.compressor)
        if config.compressor.get("gated"):  # its own A_s, in mlp1's shape (model.py)
            D = config.llm.hidden_size
            compressor.projector = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, D), nn.GELU(), nn.Linear(D, D))
    return compressor


# one student for every ratio, and a budget by content (distill.py --budget auto)

THRESHOLD_SHARES = tuple(round(0.05 * i, 2) for i in range(1, 20))  # the mean shares calibrate() sets thresholds for


def budget(select, record):
    """Set a ranged select from its config.compressor record: ratio, floor and, with "budget": "auto", the
    threshold interpolated (linearly in the share) from the calibrated table."""
    lo, hi = ranged_record(record)
    ratio = record["ratio"]
    if not lo <= ratio <= hi:
        raise CompressError(f"ratio {ratio:g} is outside the range this student was trained for, {lo:g} to {hi:g}: "
                            "pass a ratio inside it")
    select.ratio, select.floor, select.threshold = ratio, lo, None
    if record.get("budget") == "auto":
        table = record.get("thresholds")
        if not table:
            raise CompressError("this student has no calibrated thresholds: train it with distill.py --budget auto")
        if not all(isinstance(p, list) and len(p) == 2 and all(is_number(x) for x in p) for p in table) or \
                any(a[0] >= b[0] or a[1] < b[1] for a, b in zip(table, table[1:])):
            raise CompressError(f"config.json's compressor thresholds {str(table)[:60]}... are not [share, threshold] "
                                "pairs with the share rising and the threshold falling, as distill.py --budget auto "
                                "calibrates them: train the student again")
        shares = [s for s, _ in table]
        check_calibrated(ratio, shares)
        i = max(j for j in range(len(shares)) if shares[j] <= ratio)
        (s0, t0), (s1, t1) = table[i], table[min(i + 1, len(table) - 1)]
        select.threshold = t0 if s1 == s0 else t0 + (t1 - t0) * (ratio - s0) / (s1 - s0)
    return select


def ranged_record(record):
    """A ranged select's record checked -> its (lo, hi); one line naming config.json's field where it is malformed."""
    lo_hi = record.get("ratio_range")
    if not (isinstance(lo_hi, list) and len(lo_hi) == 2 and all(map(is_number, lo_hi))
            and 0 < lo_hi[0] < lo_hi[1] <= 1):
        raise CompressError(f"config.json's compressor ratio_range {lo_hi!r} is not [LO, HI] with 0 < LO < HI <= 1, "
                            "as distill.py --budget auto writes it: mend it or train the student again")
    if record.get("budget") not in (None, "auto") or not is_number(record.get("ratio")):
        raise CompressError(f"config.json's compressor record has budget {record.get('budget')!r} and ratio "
                            f"{record.get('ratio')!r}: a ranged student records a ratio and, by content, \"auto\"")
    return tuple(lo_hi)


def calibrated_shares(floor, shares=THRESHOLD_SHARES):
    """The mean shares a ranged select with this floor (its lowest ratio) gets thresholds for: at or below it none
    reaches."""
    return [s for s in shares if s > floor]


def check_calibrated(ratio, shares):
    """The budget by content runs only at a mean share its thresholds were calibrated for."""
    if not shares or not shares[0] <= ratio <= shares[-1]:
        span = f"{shares[0]:g} to {shares[-1]:g}" if shares else "none"
        raise CompressError(f"--budget auto at {ratio:g}: thresholds are calibrated for mean shares {span}; "
                            "pass a ratio inside them")


def set_budget(model, ratio, auto=False):
    """A student of distill.py --budget auto, in place, at `ratio`: each tile keeps that share of its tokens, or,
    with auto, each image its tokens above the threshold that kept that share of the training images' tokens."""
    record = model.config.compressor
    if "ratio_range" not in record and ratio == record.get("ratio") and not auto:
        return model  # a fixed student at its own ratio
    if "ratio_range" not in record:
        raise CompressError(f"this student keeps {record.get('ratio')} of the tokens only: drop --ratio and "
                            f"--budget, or train one for a range of ratios (distill.py --budget auto)")
    record = {k: v for k, v in record.items() if k != "budget"} | {"ratio": ratio} | ({"budget": "auto"} if auto else {})
    budget(model.compressor, record)
    model.config = replace(model.config, compressor=record)
    return model


@torch.no_grad()
def calibrate(select, grids, projector, shares=THRESHOLD_SHARES):
    """Thresholds for the budget by content, set on training images (never an evaluation set): for each share s,
    the rarity threshold at which grids' images ([tiles, h, w, C] each) keep s of their tokens on average, each at
    least select.floor of its own -> [[s, threshold], ...], by bisection (the kept share falls as it rises)."""
    scores = [select.score(g.flatten(0, 2), slice(0, len(g)), projector).float() for g in grids]
    floor = [select.least(len(s)) / len(s) for s in scores]

    def kept(t):
        return sum(max(f, (s > t).float().mean().item()) for s, f in zip(scores, floor)) / len(scores)

    table, low, high = [], min(s.min().item() for s in scores) - 1, max(s.max().item() for s in scores)
    for share in calibrated_shares(select.floor, shares):
        a, b = low, high
        for _ in range(50):
            a, b = ((a + b) / 2, b) if kept((a + b) / 2) > share else (a, (a + b) / 2)
        table.append([share, b])
    return table


def make_student(teacher, method="select", ratio=0.5, ratio_range=None, **options):
    """The FCoT-VL student: the teacher's ViT and LLM (shared, not copied), a new compressor V_c and
    a student projector A_s initialised as a copy of the teacher's mlp1. Saved by model.save_model
    as an ordinary checkpoint folder whose config.json records the compressor. options: select's.
    ratio_range (lo, hi): a select student for every ratio in it, at `ratio` until set_budget says otherwise."""
    if method not in COMPRESSORS:
        raise CompressError(f"unknown compressor {method!r} for a student: train select or pool (the training-free "
                            "baselines are applied, not trained: baselines.apply)")
    if ratio_range and method != "select":
        raise CompressError(f"a range of ratios is select's (its ranking does not depend on the ratio), not {method}'s")
    config = replace(teacher.config, compressor=spec(method, ratio, **options)
                     | ({"ratio_range": list(ratio_range), "gated": True} if ratio_range else {}))
    compressor = build(config)
    with torch.device("meta"):  # the ViT and LLM built here are replaced by the teacher's: free
        student = type(teacher)(config)
    student.vision_model, student.language_model = teacher.vision_model, teacher.language_model
    student.mlp1 = copy.deepcopy(teacher.mlp1)  # A_s, or, for a student with its own, the teacher's kept as it is
    if compressor.projector is not None:
        compressor.projector.load_state_dict(teacher.mlp1.state_dict())
    p = next(teacher.mlp1.parameters())
    student.compressor = compressor.to(p.device, p.dtype)
    student.img_context_token_id = teacher.img_context_token_id
    return student
