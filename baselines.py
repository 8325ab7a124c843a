"""
The training-free baselines FCoT-VL's select is measured against (results.py's rows), and apply(), which puts any
of them, pool or an untrained select on a model in place. divprune, random and visionzip keep, as select does, 1/k of
each image's tokens at their own position ids, so that a comparison with select isolates which tokens are kept;
fastv and pdrop prune inside the LLM; tiles gives an image fewer tiles:

  divprune   DivPrune (Alvar et al., CVPR 2025): the tokens that greedily maximise their least cosine distance
             to each other, measured after the projector
  random     a uniformly random subset, drawn from (seed, the image's pixels): report the mean of seeds 0, 1, 2
  visionzip  VisionZip (Yang et al., CVPR 2025): the tokens the ViT's CLS token attends to most, and a few more
             that each average a group of the rest
  tiles      not a compressor: the largest max_num whose tiles fit the ratio (budget_max_num; evaluate.py)
  fastv      FastV (Chen et al., 2024): before decoder layer K it keeps the image tokens that the last prompt
             token attended to most in layer K-1, with their original position ids
  pdrop      PyramidDrop (Xing et al., 2025): FastV at three layers, each keeping fewer (pdrop_schedule)

    import baselines, model as M
    baselines.apply(model, "fastv", 0.5)             # in place; "select" is the untrained select, "pool" pool
    model = M.load_model(folder, build_compressor=baselines.build)  # a model apply() changed, then saved
    python -m pytest tests/test_baselines.py -q

Imports torch and compress.py (the subsets are compress.Subset's), not model.py: the subsets plug into model.py's
compressor, fastv and pdrop into its other extension point, LanguageModel.before_layer.
"""
import math
from dataclasses import replace

import torch
import torch.nn.functional as F

import compress as C


# divprune: greedy max-min diversity

def max_min(d, b):
    """Greedy max-min diversity on distances d [n, n] -> b indices, sorted. First the token farthest from its
    nearest other token, then again and again the token farthest from the picked set (its distance to the
    nearest picked token); ties go to the lowest index (argmax). far[i]: i's distance to the picked set, updated
    in O(n) per pick; a picked token's is -inf, so even exact duplicates never get picked twice."""
    n = len(d)
    score = d.masked_fill(torch.eye(n, dtype=torch.bool, device=d.device), float("inf")).min(1).values
    far, picked = torch.full_like(score, float("inf")), torch.empty(b, dtype=torch.long, device=d.device)
    for s in range(b):  # no host sync: the pick stays a tensor
        i = score.argmax().view(1)
        picked[s:s + 1] = i
        far = torch.minimum(far, d.index_select(0, i)[0]).index_fill_(0, i, float("-inf"))
        score = far
    return picked.sort().values


class DivPrune(C.Subset):
    """Per image, max_min on 1 - cosine similarity of the projected tokens (what the LLM reads, as DivPrune on
    LLaVA's projected features); a zero token is at distance 1 from all."""

    def pick(self, image, b, tiles, projector):
        x = F.normalize((image if projector is None else projector(image)).float(), dim=-1)
        kept = max_min(1 - x @ x.T, b)
        return image[kept], kept


# random: a subset drawn from (seed, the pixels)

def recorded(records, tiles):
    """The last `tiles` rows a hook recorded (the ViT may run in chunks, or for a teacher that shares it), or None
    if fewer; the records are cleared: a compressor reads each ViT run once."""
    rows = torch.cat(records)[-tiles:] if records else None
    records.clear()
    return rows if rows is not None and len(rows) == tiles else None


def tile_sums(x):
    """[tiles, ...] -> [tiles] int64: an exact weighted sum of each tile's bytes (read as int16). Integer sums are
    the same on every device in every order, so a tile's checksum is its own whatever batch it came in."""
    bits = x.detach().contiguous().view(len(x), -1).view(torch.int16).int()
    w = torch.arange(bits.shape[1], device=x.device, dtype=torch.int32) % 32749 + 1  # |bits x w| < 2^30
    return (bits * w).sum(1)


class Random(C.Subset):
    """A uniformly random subset per image, drawn from a generator seeded by (seed, the checksums of the image's
    tiles): the same image keeps the same tokens in any batch, in any order, on a resume. install() records the
    pixels' checksums (the ViT's output can change in its last bits with the batch); without it, the grid's."""

    def __init__(self, window, width, seed=0):
        super().__init__(window, width)
        self.seed, self.sums = seed, []

    def install(self, model):
        self.hook = model.vision_model.register_forward_pre_hook(lambda vit, args: self.sums.append(tile_sums(args[0])))

    def compress(self, grid, tiles_per_image, projector, counts=None):
        sums = recorded(self.sums, len(grid))
        self.checksums = (tile_sums(grid) if sums is None else sums).tolist()  # one host sync per batch
        return super().compress(grid, tiles_per_image, projector, counts)

    def pick(self, image, b, tiles, projector):
        key = self.seed
        for s in self.checksums[tiles]:
            key = (key * 1000003 + s) % 2**63
        kept = torch.randperm(len(image), generator=torch.Generator().manual_seed(key))[:b].sort().values
        kept = kept.to(image.device)
        return image[kept], kept


# visionzip: what the CLS token attends to, and a few merged leftovers

@torch.no_grad()
def cls_attention(attn, x):
    """The attention a ViT block's CLS token pays each patch, mean over heads: x [tiles, 1 + P, C] (the block's
    norm1 output, attn's input) -> [tiles, P]. Only the CLS query and the keys are computed."""
    C, H = x.shape[-1], attn.n_heads
    w, b = attn.qkv.weight, attn.qkv.bias
    q = F.linear(x[:, :1], w[:C], None if b is None else b[:C])
    k = F.linear(x, w[C:2 * C], None if b is None else b[C:2 * C])
    if hasattr(attn, "q_norm"):  # InternViT-6B normalises q and k over the full width
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = (t.float().view(len(x), -1, H, C // H).transpose(1, 2) for t in (q, k))
    return (q @ k.transpose(-1, -2) / math.sqrt(C // H)).softmax(-1).mean(1)[:, 0, 1:]


class VisionZip(C.Subset):
    """Per image, of its b tokens: the dominant ~54/64 (VisionZip's 54 of 64) are those the CLS token attended
    to most in the ViT layer the features come from (a token's score: the sum over the patches the pixel shuffle
    folded into it), at their own position ids; the other ~10/64 are contextual: targets evenly spaced among the
    remaining tokens in order, each the mean of its group (itself and the remaining tokens most like it by cosine),
    at the target's position id. install() hooks the layer's attention (needed)."""

    def __init__(self, window, width):
        super().__init__(window, width)
        self.dominant, self.scores = 54 / 64, []

    def install(self, model):
        layers, s = model.vision_model.encoder.layers, model.config.select_layer
        attn = layers[s if s < 0 else s - 1].attn  # the last layer run (select_layer -1: the last)
        self.hook = attn.register_forward_pre_hook(lambda attn, args: self.scores.append(cls_attention(attn, args[0])))

    def compress(self, grid, tiles_per_image, projector, counts=None):
        scores = recorded(self.scores, len(grid))
        if scores is None:
            raise C.CompressError("visionzip reads the ViT's CLS attention: install it with apply(model, 'visionzip', "
                                "ratio), and run the ViT before the compressor (model.forward does)")
        (T, h, w), g = grid.shape[:3], math.isqrt(scores.shape[1])
        r = g // h  # pixel shuffle folds each r x r block of patches into one token, row-major
        self.token_scores = scores.view(T, h, r, w, r).sum((2, 4)).flatten(1)  # [tiles, h * w]
        return super().compress(grid, tiles_per_image, projector, counts)

    def pick(self, image, b, tiles, projector):
        n_ctx = max(1, round(b * (1 - self.dominant))) if b > 1 else 0
        top = self.token_scores[tiles].flatten().topk(b - n_ctx).indices
        rest = torch.ones(len(image), dtype=torch.bool, device=image.device).index_fill_(0, top, False).nonzero()[:, 0]
        kept, tokens = top, image[top]
        if n_ctx:
            targets = torch.arange(0, len(rest), max(1, len(rest) // n_ctx), device=image.device)[:n_ctx]
            x = F.normalize(image[rest].float(), dim=-1)
            group = (x @ x[targets].T).argmax(1).index_copy_(0, targets, torch.arange(n_ctx, device=image.device))
            total = torch.zeros(n_ctx, image.shape[1], device=image.device).index_add_(0, group, image[rest].float())
            mean = total / torch.bincount(group, minlength=n_ctx)[:, None]
            kept, tokens = torch.cat([top, rest[targets]]), torch.cat([tokens, mean.to(image.dtype)])
        order = kept.argsort()
        return tokens[order], kept[order]


# fewer tiles: lower resolution at the same token budget (evaluate.py's --method tiles; find_grid is model.py's)

def tile_count(width, height, max_num, find_grid, image_size=448, use_thumbnail=True):
    """The tiles load_image(max_num=max_num) makes of a width x height image: the grid, and a thumbnail if > 1."""
    cols, rows = find_grid(width, height, 1, max_num, image_size)
    return cols * rows + int(use_thumbnail and cols * rows > 1)


def budget_max_num(width, height, max_num, ratio, find_grid, image_size=448, use_thumbnail=True):
    """The largest m <= max_num whose tiling has at most ratio x the tiles of max_num's (thumbnails counted). 1 if
    none has: one tile is the least an image gets, so an image whose full tiling has fewer than 1/ratio tiles keeps
    one, more than its budget (its tokens say so: evaluate.py counts the tiles made)."""
    tiles = lambda m: tile_count(width, height, m, find_grid, image_size, use_thumbnail)
    budget = ratio * tiles(max_num) + 1e-9
    return next((m for m in range(max_num, 0, -1) if tiles(m) <= budget), 1)


# FastV and PyramidDrop, as model.py's LanguageModel.before_layer

class FastV:
    """schedule {K: keep}: before each decoder layer K, keep round(keep x n) of each row's n image tokens (n: the
    prompt's, before any stage), those among the image tokens still there that the last prompt token attended to
    most in layer K-1 (mean over heads). FastV is one stage, {layer: ratio}; PyramidDrop several (pdrop_schedule).
    Text tokens all stay. Kept tokens keep their rotary cos/sin (gathered, not recomputed), so their position ids
    are the original ones. Rows of a batch keep different numbers of tokens: each stage drops the padding and
    left-pads them again, and keeps its validity for the decode steps of its layers."""

    def __init__(self, ratio, layer=2, n_layers=None, schedule=None):
        self.stages = dict(sorted((schedule or {layer: ratio}).items()))
        top = n_layers - 1 if n_layers else max(self.stages)
        for k, keep in self.stages.items():
            if not 0 < keep <= 1:
                raise C.CompressError(f"invalid FastV ratio {keep}: the share of image tokens kept, in (0, 1]")
            if not 1 <= k <= top:
                raise C.CompressError(f"FastV layer K={k} must be in 1..{top}: it prunes after layer K-1")
        if list(self.stages.values()) != sorted(self.stages.values(), reverse=True):
            raise C.CompressError(f"pdrop schedule {self.stages}: a later stage cannot keep more image tokens")
        if len(self.stages) == 1:  # plain attributes are what evaluate.py's run key reads: FastV's, as before
            (self.layer, self.ratio), = self.stages.items()
        else:
            self.schedule = tuple(self.stages.items())
        self.x_before, self.image_mask, self.n_image, self.valid = None, None, None, {}

    def __call__(self, lm, i, x, cos, sin, mask, image_mask):
        if i in self.stages:
            if image_mask is not None:  # the prefill of a prompt with images
                if i == min(self.stages):
                    self.image_mask, self.n_image, self.valid = image_mask, image_mask.sum(1), {}
                x, cos, sin, mask = self.prune(i, lm.model.layers[i - 1], x, cos, sin, mask)
            elif x.shape[1] > 1 or i not in self.valid:  # a text-only prompt: nothing to prune
                self.valid = {}
            else:  # a decode step: layers >= K cache the pruned prefix, then one token per step
                valid = self.valid[i] = torch.cat([self.valid[i], self.valid[i].new_ones(x.shape[0], 1)], dim=1)
                mask = None if bool(valid.all()) else valid[:, None, None, :]
        if i + 1 in self.stages and image_mask is not None:
            self.x_before = x  # layer K-1's input: its attention picks the tokens
        return x, cos, sin, mask

    def prune(self, i, layer, x, cos, sin, mask):
        B, L, D = x.shape
        attn = layer.attention
        x_before, self.x_before = self.x_before, None  # not kept past the prefill: it is [B, L, D]
        q, k, _ = attn.project_qkv(layer.attention_norm(x_before), cos, sin)
        k = k.repeat_interleave(attn.group, dim=1)
        key_ok = mask[:, 0, -1, :] if mask is not None else torch.ones(B, L, dtype=torch.bool, device=x.device)
        scores = (q[:, :, -1:] @ k.transpose(-1, -2)).squeeze(2) / math.sqrt(attn.head_dim)  # [B, heads, L]
        received = scores.float().masked_fill(~key_ok[:, None], float("-inf")).softmax(-1).mean(1)
        n_keep = (self.n_image.double() * self.stages[i]).round().long()
        rank = received.masked_fill(~self.image_mask, float("-inf")).argsort(1, descending=True).argsort(1)
        keep = key_ok & (~self.image_mask | (rank < n_keep[:, None]))  # padding goes too
        # kept positions in order, left-padded to the longest row (pads: -1, sorted first)
        pos = torch.where(keep, torch.arange(L, device=x.device), -1).sort(1).values
        pos = pos[:, -int(keep.sum(1).max()):]
        pad, pos = pos < 0, pos.clamp(min=0)
        Lk = pos.shape[1]
        x = x.gather(1, pos[..., None].expand(B, Lk, D))
        take = pos[:, None, :, None].expand(B, cos.shape[1], Lk, cos.shape[-1])
        cos, sin = cos.gather(2, take), sin.gather(2, take)
        self.image_mask, self.valid[i] = self.image_mask.gather(1, pos) & ~pad, ~pad
        if not bool(pad.any()):
            return x, cos, sin, None
        causal = torch.ones(Lk, Lk, dtype=torch.bool, device=x.device).tril()
        mask = (causal & ~pad[:, None, :]) | torch.eye(Lk, dtype=torch.bool, device=x.device)  # no empty row
        return x, cos, sin, mask[:, None]


def pdrop_schedule(ratio, n_layers, stages=3):
    """PyramidDrop's stages for an n-layer LLM: layers round(j n / (stages + 1)) (6, 12, 18 of 24; 8, 16, 24 of 32
    as PyramidDrop's LLaVA; 1, 2, 3 of 4), keeping ratio^(j / stages) of the image tokens after stage j, so ratio
    after the last. Stages that fall on one layer (a 2-layer LLM) become one: the later, smaller share."""
    return {min(n_layers - 1, max(1, round(j * n_layers / (stages + 1)))): ratio ** (j / stages)
            for j in range(1, stages + 1)}


def image_tokens_per_layer(n, schedule, n_layers):
    """The image tokens each decoder layer sees when the prompt has n: the layer-mean is the accounting that
    SparseVLM and PyramidDrop report (FastV K=2, 0.5, 4 layers: [n, n, n/2, n/2], mean 0.75 n)."""
    stages, keep, out = dict(schedule), 1.0, []
    for i in range(n_layers):
        keep = stages.get(i, keep)
        out.append(round(n * keep))
    return out


# apply: a baseline in place

SUBSETS = {"divprune": DivPrune, "random": Random, "visionzip": VisionZip}
TRAINING_FREE = (*SUBSETS, "tiles", "fastv", "pdrop")  # never a student (pool can be one, and select is)


def build(config):
    """compress.build, knowing the subsets too (model.load_model's build_compressor for a model apply() changed)."""
    return C.build(config, C.COMPRESSORS | SUBSETS)


def apply(model, method, ratio, fastv_layer=2, seed=None, **options):
    """Training-free compression in place -> the model: pool, an untrained select, divprune, random (seed) or
    visionzip before mlp1; fastv (before layer fastv_layer) or pdrop inside the LLM. options: select's."""
    if seed is not None and method != "random":
        raise C.CompressError(f"seed is an option of random, not of {method}: drop it or use random")
    record = C.spec(method, ratio, **options) | ({"seed": seed or 0} if method == "random" else {})  # options: select's
    if method == "tiles":
        raise C.CompressError("tiles changes the input, not the model: load_image(max_num=budget_max_num(...)), "
                              "as evaluate.py --method tiles does")
    if method in ("fastv", "pdrop"):
        n = len(model.language_model.model.layers)
        schedule = {fastv_layer: ratio} if method == "fastv" else pdrop_schedule(ratio, n)
        model.language_model.before_layer = FastV(ratio, n_layers=n, schedule=schedule)
        return model
    if model.compressor is not None:
        model.compressor.remove()  # the hook an earlier apply installed
    model.config = replace(model.config, compressor=record)
    p = next(model.mlp1.parameters())
    model.compressor = build(model.config).to(p.device, p.dtype)
    model.compressor.install(model)
    return model
