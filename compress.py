"""
FCoT-VL's visual-token compression for InternVL2: the compression module V_c (select), the student that
carries it, and the training-free baselines it is measured against (pool, FastV).

Each tile's pixel-shuffled token grid [tiles, h, w, C] (16 x 16 x 4096 for InternVL2-2B at 448 px) goes
through V_c, then through the student projector A_s (at first a copy of the teacher's mlp1):

  select  per image: keeps the 1/k of the image's tokens with the fewest near-duplicates (the
          largest mean distance to their 4 nearest tokens in the image: blank paper and the inside
          of a bar have hundreds of twins, a glyph few), in order, each at the position id it had
          in the uncompressed sequence, so the frozen LLM sees the teacher's own tokens where they
          were. The choice reads the ViT's tokens; then a learned part (zero at first) folds each
          kept token's left and right neighbours into it, so it can carry a dropped one. The default.
          Options: skip_thumbnail ranks a many-tile image's thumbnail below every tile token (on a
          page it is too coarse to read, but on a small crop, a word, it is the view that reads);
          rank_projected counts near-duplicates among A_s's outputs, what the LLM reads (the choice
          then follows A_s as it learns, though no gradient asks it to move)
  pool    the mean of each window of 1/ratio neighbouring tokens, no parameters: the training-free baseline
  fastv   FastV (Chen et al., 2024), the baseline inside the LLM: before decoder layer K it keeps the image
          tokens that the last prompt token attended to most in layer K-1, with their original position ids

Windows: ratio 0.5 merges horizontal pairs (text lines run horizontally), 0.25 merges 2 x 2; 1/k in
general takes the squarest k-cell window that tiles the grid (select keeps 1/k of the tokens under the
same rule, so that every tile count gives a whole number). The learned window merges (conv, dwconv, mlp,
gate) lost to select (DocVQA 47-53 against 93.6): they live in the last section, Ablations, for the
figures that cite them (python distill.py --compressor conv --ratio 0.5).

    from compress import build, make_student, apply
    student = make_student(teacher, "select", 0.5)  # shares the teacher's ViT and LLM
    apply(model, "fastv", 0.5)                      # in place: a training-free baseline
    model = M.load_model(folder, build_compressor=build)   # a saved student
    python compress.py --bench                      # weighted-merge kernel vs eager, torch.compile, copy
    python -m pytest tests/test_compress.py -q

Imports nothing but torch (and Triton if installed), not even model.py: it works on the model it is given
(make_student builds the student as type(teacher); FastV reads that model's decoder layers) through
model.py's two extension points (InternVLChat's compressor, LanguageModel.before_layer), so it serves
whichever copy of model.py the caller loaded and never imports a second one. The weighted merge (pool,
dwconv) runs as a Triton kernel on CUDA when Triton is installed, as a depthwise convolution through
torch_npu on Ascend NPUs, and in plain PyTorch elsewhere.
"""
import argparse
import copy
import math
import os
import time
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
    """(kh, kw) with kh * kw = 1 / ratio: the squarest window (kw >= kh) that tiles an h x w grid."""
    k = round(1 / ratio) if 0 < ratio < 1 else 0
    if k < 2 or abs(k * ratio - 1) > 1e-6:
        raise CompressError(f"invalid ratio {ratio}: use 1/k for an integer k >= 2, e.g. 0.5 or 0.25")
    for kh in sorted((d for d in range(1, math.isqrt(k) + 1) if k % d == 0), reverse=True):
        if h % kh == 0 and w % (k // kh) == 0:
            return kh, k // kh
    raise CompressError(f"ratio {ratio} needs windows of {k} tokens, and none tiles the {h}x{w} token grid: "
                        f"use 0.5 or 0.25")


# ----------------------------------------------------------------------------------------------
# model.py's extension point (see InternVLChat's docstring): 1/k of a tile's tokens reach the LLM

class Compressor(nn.Module):
    """A window merge's forward maps the token grid [N, h, w, C] to [N, h/kh, w/kw, C], handed on at
    consecutive position ids; select overrides compress to keep tokens at their own position ids."""

    def __init__(self, window, width):  # width: the learned subclasses' channel count
        super().__init__()
        self.window, self.window_size = window, window[0] * window[1]

    def tokens_per_tile(self, n):
        return n // self.window_size

    def compress(self, grid, tiles_per_image, projector):
        return self(grid).flatten(0, 2), None


# ----------------------------------------------------------------------------------------------
# select: V_c, FCoT-VL's compressor, and its options

class Select(Compressor):
    """Keeps, per image, the 1/k of its tokens with the fewest near-duplicates, then folds each kept
    token's horizontal neighbours into it (learned). model.py gives the kept tokens their original position
    ids, so the frozen LLM reads the teacher's own tokens where the teacher read them."""
    neighbours = 4  # rarity = mean distance to this many nearest tokens (2 to 8 choose alike; README)

    def __init__(self, window, width, skip_thumbnail=False, rank_projected=False):  # window: only its size k matters
        super().__init__(window, width)
        self.skip_thumbnail = skip_thumbnail  # rank a many-tile image's last tile (its thumbnail) last
        self.rank_projected = rank_projected  # measure rarity after the projector passed to forward
        self.norm = nn.LayerNorm(3 * width)
        self.fc1 = nn.Linear(3 * width, width)
        self.fc2 = nn.Linear(width, width)
        nn.init.zeros_(self.fc2.weight), nn.init.zeros_(self.fc2.bias)

    def rarity(self, image):
        """[n, C] -> [n]: each token's mean distance to its nearest others. Uniform regions (paper, a bar,
        sky) score near zero wherever they lie, so a chart's bars do not crowd out its labels."""
        x = image.float()
        distance = torch.cdist(x, x)  # one GEMM: real images have thousands of tokens
        k = min(self.neighbours, len(x) - 1)
        return distance.topk(k + 1, largest=False).values[:, 1:].mean(-1)  # the first is the token itself

    def forward(self, grid, tiles_per_image, projector=None):
        """grid [tiles, h, w, C], the images' tiles in order -> (tokens [kept, C], keep [kept]: each
        kept token's index in its image's uncompressed token sequence). projector: the model's (A_s), which
        rank_projected measures rarity after; model.py passes it."""
        if self.rank_projected and projector is None:
            raise CompressError("select with rank_projected needs the model's projector: call it as "
                                "compressor(grid, tiles_per_image, model.mlp1)")
        h, w = grid.shape[1:3]
        keep, flat, first = [], [], 0
        for n in tiles_per_image:
            image = grid[first:first + n].flatten(0, 2)
            with torch.no_grad():
                score = self.rarity(projector(image) if self.rank_projected else image)
            if self.skip_thumbnail and n > 1:  # at ratio <= 1/2 the tiles alone fill the budget
                score[-h * w:] = -1
            kept = score.topk(len(image) // self.window_size).indices.sort().values
            keep.append(kept)
            flat.append(kept + first * h * w)
            first += n
        flat = torch.cat(flat)  # index into grid.flatten(0, 2)
        tile, i, j = flat // (h * w), flat % (h * w) // w, flat % w
        padded = F.pad(grid, (0, 0, 1, 1))  # a zero token left and right of every row
        cells = torch.cat([padded[tile, i, j], padded[tile, i, j + 1], padded[tile, i, j + 2]], -1)  # left, self, right
        return grid[tile, i, j] + self.fc2(F.gelu(self.fc1(self.norm(cells)))), torch.cat(keep)

    def compress(self, grid, tiles_per_image, projector):  # the kept tokens and their indices: their position ids
        return self(grid, tiles_per_image, projector)


SELECT_OPTIONS = ("skip_thumbnail", "rank_projected")  # select's switches, off unless config.compressor has them


def select_options(config):
    """select's switches as config.compressor records them. The thumbnail is skipped only where images have one."""
    on = {k: config.compressor.get(k, False) for k in SELECT_OPTIONS}
    return on | {"skip_thumbnail": on["skip_thumbnail"] and config.use_thumbnail}


def spec(method, ratio, **options):
    """config.compressor of a student: {"method", "ratio"}, and select's options (SELECT_OPTIONS) that are on."""
    on = {k: True for k, v in options.items() if v}
    for k in on:
        if k not in SELECT_OPTIONS:
            raise CompressError(f"unknown compressor option {k!r}: choose from {', '.join(SELECT_OPTIONS)}")
        if method != "select":
            raise CompressError(f"{k} is an option of select, not of {method}: drop it or use select")
    return {"method": method, "ratio": ratio} | on


# ----------------------------------------------------------------------------------------------
# pool, the training-free baseline, and the weighted merge it runs on (dwconv too): y = the sum over a
# window's cells of weight[cell] * token (+ bias), on three backends

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
        # one program: one output token x BLOCK channels; the window's cells are gathered straight
        # from the input grid (no windowed copy), summed in fp32, written once
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
    if x.device.type == "cuda" and triton is not None and not needs_grad:
        return merge_triton
    if x.device.type == "npu":
        return merge_npu
    if x.device.type == "cpu" and triton is not None and os.environ.get("TRITON_INTERPRET") == "1":
        return merge_triton if not needs_grad else merge_torch  # Triton's interpreter: the tests' way in
    return merge_torch


def weighted_merge(x, window, weight, bias=None):
    """[N, h, w, C] -> [N, h/kh, w/kw, C], on the fastest backend for x's device."""
    return merge_backend(x, weight)(x, window, weight, bias)


class Pool(Compressor):
    """Each window's mean, no parameters: what every learned window merge (Ablations) starts as."""

    def forward(self, x):
        mean = torch.full((self.window_size, x.shape[-1]), 1 / self.window_size, device=x.device)
        return weighted_merge(x, self.window, mean)


# ----------------------------------------------------------------------------------------------
# the student and the training-free baselines

COMPRESSORS = {"select": Select, "pool": Pool}  # and the ablations, added at the end


def build(config):
    """The compressor config.compressor records (model.load_model's build_compressor)."""
    record = config.compressor
    method, ratio = record.get("method"), record.get("ratio")
    if method not in COMPRESSORS:
        raise CompressError(f"unknown compressor {method!r}: choose one of {', '.join(COMPRESSORS)}")
    grid = int(config.force_image_size // config.vision.patch_size * config.downsample_ratio)
    width = config.vision.hidden_size * round(1 / config.downsample_ratio) ** 2
    window = window_for(ratio, grid, grid)
    options = select_options(config) if method == "select" else {}
    return COMPRESSORS[method](window, width, **options)


def make_student(teacher, method="select", ratio=0.5, **options):
    """The FCoT-VL student: the teacher's ViT and LLM (shared, not copied), a new compressor V_c and
    a student projector A_s initialised as a copy of the teacher's mlp1. Saved by model.save_model
    as an ordinary checkpoint folder whose config.json records the compressor. options: select's."""
    config = replace(teacher.config, compressor=spec(method, ratio, **options))
    compressor = build(config)
    with torch.device("meta"):  # the ViT and LLM built here are replaced by the teacher's: free
        student = type(teacher)(config)
    student.vision_model, student.language_model = teacher.vision_model, teacher.language_model
    student.mlp1 = copy.deepcopy(teacher.mlp1)
    p = next(teacher.mlp1.parameters())
    student.compressor = compressor.to(p.device, p.dtype)
    student.img_context_token_id = teacher.img_context_token_id
    return student


def apply(model, method, ratio, fastv_layer=2, **options):
    """Training-free compression in place: pool (or an untrained conv/dwconv/mlp/gate, the same thing) or
    an untrained select before mlp1, or FastV inside the LLM. Returns the model."""
    record = spec(method, ratio, **options)  # select's options given to FastV fail here too
    if method == "fastv":
        model.language_model.before_layer = FastV(ratio, fastv_layer, len(model.language_model.model.layers))
        return model
    model.config = replace(model.config, compressor=record)
    p = next(model.mlp1.parameters())
    model.compressor = build(model.config).to(p.device, p.dtype)
    return model


# ----------------------------------------------------------------------------------------------
# FastV, as model.py's LanguageModel.before_layer

class FastV:
    """Before decoder layer K, keep round(ratio x n) of each row's n image tokens: those the last
    prompt token attends to most in layer K-1 (mean over heads). Text tokens all stay. Kept tokens
    keep their rotary cos/sin (gathered, not recomputed), so their position ids are the original
    ones. Rows of a batch keep different numbers of tokens: they are left-padded again, and the
    validity of the pruned prefix is kept for the decode steps of layers >= K."""

    def __init__(self, ratio, layer=2, n_layers=None):
        if not 0 < ratio <= 1:
            raise CompressError(f"invalid FastV ratio {ratio}: the share of image tokens kept, in (0, 1]")
        if layer < 1 or (n_layers is not None and layer >= n_layers):
            raise CompressError(f"FastV layer K={layer} must be in 1..{(n_layers or 2) - 1}: it prunes after layer K-1")
        self.ratio, self.layer = ratio, layer
        self.x_before, self.valid = None, None

    def __call__(self, lm, i, x, cos, sin, mask, image_mask):
        if i == self.layer - 1:
            self.x_before = x  # layer K-1's input: its attention picks the tokens
        if i != self.layer:
            return x, cos, sin, mask
        if image_mask is not None:
            return self.prune(lm.model.layers[i - 1], x, cos, sin, mask, image_mask)
        if x.shape[1] > 1 or self.valid is None:  # a text-only prompt: nothing to prune
            self.valid = None
            return x, cos, sin, mask
        # a decode step: layers >= K cache the pruned prefix, then one token per step
        self.valid = torch.cat([self.valid, self.valid.new_ones(x.shape[0], x.shape[1])], dim=1)
        return x, cos, sin, None if bool(self.valid.all()) else self.valid[:, None, None, :]

    def prune(self, layer, x, cos, sin, mask, image_mask):
        B, L, D = x.shape
        attn = layer.attention
        x_before, self.x_before = self.x_before, None  # not kept past the prefill: it is [B, L, D]
        q, k, _ = attn.project_qkv(layer.attention_norm(x_before), cos, sin)
        k = k.repeat_interleave(attn.group, dim=1)
        key_ok = mask[:, 0, -1, :] if mask is not None else torch.ones(B, L, dtype=torch.bool, device=x.device)
        scores = (q[:, :, -1:] @ k.transpose(-1, -2)).squeeze(2) / math.sqrt(attn.head_dim)  # [B, heads, L]
        received = scores.float().masked_fill(~key_ok[:, None], float("-inf")).softmax(-1).mean(1)
        n_keep = (image_mask.sum(1) * self.ratio).round().long()
        rank = received.masked_fill(~image_mask, float("-inf")).argsort(1, descending=True).argsort(1)
        keep = ~image_mask | (rank < n_keep[:, None])
        # kept positions in order, left-padded to the longest row (pads: -1, sorted first)
        pos = torch.where(keep, torch.arange(L, device=x.device), -1).sort(1).values
        pos = pos[:, -int(keep.sum(1).max()):]
        pad, pos = pos < 0, pos.clamp(min=0)
        Lk = pos.shape[1]
        x = x.gather(1, pos[..., None].expand(B, Lk, D))
        take = pos[:, None, :, None].expand(B, cos.shape[1], Lk, cos.shape[-1])
        cos, sin = cos.gather(2, take), sin.gather(2, take)
        self.valid = ~pad & key_ok.gather(1, pos)
        if bool(self.valid.all()):
            return x, cos, sin, None
        causal = torch.ones(Lk, Lk, dtype=torch.bool, device=x.device).tril()
        mask = (causal & self.valid[:, None, :]) | torch.eye(Lk, dtype=torch.bool, device=x.device)  # no empty row
        return x, cos, sin, mask[:, None]


# ----------------------------------------------------------------------------------------------
# Ablations: learned window merges that lost to select (DocVQA 47-53 against its 93.6), kept for the
# commands behind the figures that cite them (distill.py / bench.py --compressor conv). Each starts as pool.
#
#   conv    a learned linear map of the window's concatenated tokens (a strided convolution)
#   dwconv  a learned weight per window cell and channel (depthwise), on pool's weighted merge
#   mlp     the mean plus an MLP of the window's concatenated tokens (LayerNorm, k*C -> C, GELU, C -> C),
#           its last layer zero at first
#   gate    mlp with a learned softmax over the window's cells in place of the mean (score zero at first):
#           it can pass a pair's one text token through and drop the blank paper beside it

def windows(x, window):
    """[N, h, w, C] -> [N, h/kh, w/kw, kh*kw, C]: each window's tokens, row-major."""
    N, h, w, C = x.shape
    kh, kw = window
    return x.reshape(N, h // kh, kh, w // kw, kw, C).transpose(2, 3).flatten(3, 4)


class DWConv(Pool):
    def __init__(self, window, width):
        super().__init__(window, width)
        self.weight = nn.Parameter(torch.full((self.window_size, width), 1 / self.window_size))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x):
        return weighted_merge(x, self.window, self.weight, self.bias)


class Conv(Pool):
    def __init__(self, window, width):
        super().__init__(window, width)
        mean = torch.eye(width).repeat(1, self.window_size) / self.window_size  # [C, k*C]: starts as pool
        self.weight = nn.Parameter(mean)
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x):
        # a window's cells are contiguous in memory at ratio 0.5, so the concatenation is a view and
        # the merge one GEMM (cuBLAS; a hand-written kernel would not beat it)
        return F.linear(windows(x, self.window).flatten(-2), self.weight, self.bias)


class MLP(Pool):
    def __init__(self, window, width):
        super().__init__(window, width)
        self.norm = nn.LayerNorm(self.window_size * width)
        self.fc1 = nn.Linear(self.window_size * width, width)
        self.fc2 = nn.Linear(width, width)
        nn.init.zeros_(self.fc2.weight), nn.init.zeros_(self.fc2.bias)  # starts as pool

    def forward(self, x):
        # the mean plus a nonlinear correction from the whole window, both from one gather
        cells = windows(x, self.window)
        return cells.mean(-2) + self.fc2(F.gelu(self.fc1(self.norm(cells.flatten(-2)))))


class Gate(MLP):
    def __init__(self, window, width):
        super().__init__(window, width)
        self.score = nn.Linear(width, 1)  # zero at first: equal weights, so it starts as pool
        nn.init.zeros_(self.score.weight), nn.init.zeros_(self.score.bias)

    def forward(self, x):
        # a softmax over each window's cells picks what to keep: a text token beside blank paper
        # passes through nearly unchanged, where the mean would halve it into a token the frozen
        # LLM never saw; the MLP term then folds in what the weighted sum cannot carry
        cells = windows(x, self.window)
        keep = torch.softmax(self.score(F.layer_norm(cells, cells.shape[-1:])), dim=-2)
        return (keep * cells).sum(-2) + self.fc2(F.gelu(self.fc1(self.norm(cells.flatten(-2)))))


COMPRESSORS.update(conv=Conv, dwconv=DWConv, mlp=MLP, gate=Gate)


# ----------------------------------------------------------------------------------------------
# python compress.py --bench: the weighted merge's achieved bandwidth against eager PyTorch,
# torch.compile and a plain copy of the same bytes

def bench_ms(fn, rounds=50):
    """ms per call. CUDA: calls queued back to back between two events, as a pipeline runs them (a sync per
    call would time the launch, not the kernel); a CPU: the median call."""
    for _ in range(3):
        fn()
    if torch.cuda.is_available():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(rounds):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / rounds
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * sorted(times)[len(times) // 2]


def bench(tiles, grid, width, device, dtype):
    x = torch.randn(tiles, grid, grid, width, device=device, dtype=dtype)
    dst = torch.empty_like(x)
    copy_ms = bench_ms(lambda: dst.copy_(x))  # into a preallocated tensor: a clone's fresh pages would count too
    gbs = lambda nbytes, ms: nbytes / ms / 1e6
    print(f"{tiles} tiles x {grid}x{grid} tokens x {width} channels, {dtype}, {device}: "
          f"copy {gbs(2 * x.nbytes, copy_ms):.0f} GB/s ({copy_ms:.3f} ms)")
    print(f"{'ratio':>6} {'backend':>14} {'ms':>8} {'GB/s':>8} {'% of copy':>10}")
    for ratio in (0.5, 0.25):
        window = window_for(ratio, grid, grid)
        w = torch.rand(window[0] * window[1], width, device=device, dtype=dtype)
        b = torch.rand(width, device=device, dtype=dtype)
        nbytes = x.nbytes * (1 + ratio) + w.nbytes + b.nbytes  # read the grid once, write ratio of it
        ref = merge_torch(x, window, w, b)
        paths = {"eager": merge_torch, "compile": torch.compile(merge_torch), "npu-conv2d": merge_npu}
        if device == "cuda" and triton is not None:
            paths["triton"] = merge_triton
        for name, fn in paths.items():
            err = (fn(x, window, w, b).float() - ref.float()).abs().max().item()
            ms = bench_ms(lambda: fn(x, window, w, b))
            print(f"{ratio:>6} {name:>14} {ms:>8.3f} {gbs(nbytes, ms):>8.0f} {100 * copy_ms * (1 + ratio) / 2 / ms:>9.0f}%"
                  f"   max |diff| {err:.1e}")


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit code 2, as the other scripts (argparse prints its usage too)
        self.exit(2, f"{self.prog}: error: {message} (see python {self.prog} --help)\n")


if __name__ == "__main__":
    p = Parser(prog="compress.py", description="benchmark the weighted-merge backends")
    p.add_argument("--bench", action="store_true", required=True)
    p.add_argument("--tiles", type=int, default=13, help="12 tiles + the thumbnail")
    p.add_argument("--grid", type=int, default=16, help="tokens per side after pixel shuffle (16 at 448 px)")
    p.add_argument("--width", type=int, default=4096, help="channels after pixel shuffle (4 x 1024 for InternViT-300M)")
    args = p.parse_args()
    if min(args.tiles, args.grid, args.width) < 1:
        p.error(f"--tiles, --grid and --width must be >= 1 (got {args.tiles}, {args.grid}, {args.width})")
    on_gpu = torch.cuda.is_available()
    try:
        bench(args.tiles, args.grid, args.width, "cuda" if on_gpu else "cpu", torch.bfloat16 if on_gpu else torch.float32)
    except CompressError as e:  # a grid no window of 0.5 or 0.25 tiles
        p.error(f"--grid {args.grid}: {e}")
