"""
Train the embedded teacher: a tiny model of the InternVL2 architecture that reads the small text of
multi-tile synthetic pages, on a CPU or a GPU. A plain question -> answer recipe does not learn to
read on a CPU (../shared/docs/teacher-feasibility.md), so the recipe is staged, with training-only
supervision that the generator's glyph boxes make possible:

  glyphs: the ViT alone. A per-patch head names the characters whose centres lie in the left and
          right half of each 14 px patch. Dense, local, cheap: no decoder.
  read:   the whole model, ViT from the glyph stage and frozen. Transcription and extractive QA, plus
          a pointer loss: head 0 of the last decoder layers must attend to the visual token that holds
          the glyph of each answer token it is about to write (in two hops where the question names a
          key printed after its value: the layers before the last to the key, the last to the value).
          Optionally (--pair-layer L) a pair loss: head 0 of layer L, from the token of each such key's
          last glyph, must attend to its value's tokens, so that the key's token holds the value.
          Optionally (--table-frac) chart conversations that write the chart's values as a table, a row per
          category and a column per series: each value bound to both (chart derendering, as DePlot and MatCha
          pretrain).
          Optionally (--colour-weight) a colour term: a fixed linear readout of each projector token must give the
          mean colour of the pixels it covers, so that a bar's colour reaches the LLM (the series of a grouped bar
          is told only by it).
          Optionally (--legend-hop) a series question's first hop is its series' name in the legend, whose swatch
          gives the colour of the bars to look for.

The commands that make the shipped checkpoint. First the shipped family's chain, docs/teacher.md's first block
(glyphs, then read six times, the last on one H100), whose result was checkpoints/tiny until 2026-12-05 (`git show
0f432fd:checkpoints/tiny/model.safetensors`; runs/teacher-gpu below). Then data/wide.py's training family, mixed
30/70 with the shipped one (--family mix): the glyph stage on its 13 fonts four times, the read stage five times. Some
runs started from a bf16 export (docs/teacher.md), so a rerun lands near the shipped model, not on it:

    python teacher.py --stage glyphs --vision-from checkpoints/teacher-wip/glyphs2.safetensors --out runs/wide-glyphs \
        --steps 3000 --micro-batch 1 --glyph-tiles 48 --glyph-crops 4 --lr 8e-4 --warmup 50 --threads 2 \
        --seed-offset 30000 --eval-every 250 --save-every 250 --family mix
    python teacher.py --stage glyphs --vision-from runs/wide-glyphs --out runs/wide-glyphs2 --steps 7000 \
        --micro-batch 1 --glyph-tiles 48 --glyph-crops 4 --lr 6e-4 --warmup 50 --threads 2 --seed-offset 40000 \
        --eval-every 500 --save-every 250 --family mix        # -> checkpoints/teacher-wip/wide-glyphs.safetensors
    python teacher.py --stage glyphs --vision-from checkpoints/teacher-wip/wide-glyphs.safetensors \
        --out runs/wide-glyphs3 --steps 10000 --micro-batch 1 --glyph-tiles 48 --glyph-crops 4 --lr 6e-4 --warmup 50 \
        --threads 2 --seed-offset 50000 --eval-every 500 --save-every 250 --family mix   # -> .../wide-glyphs3.safetensors
    torchrun --standalone --nproc_per_node 2 teacher.py --stage read --init runs/teacher-gpu \
        --vision-from checkpoints/teacher-wip/wide-glyphs.safetensors --out runs/wide-read --steps 5000 --micro-batch 4 \
        --lr 3e-4 --warmup 50 --threads 1 --qa-turns 5 --transcribe-frac 0.3 --crop-frac 0.15 --seed-offset 500000000 \
        --kinds doc,table,chart,chart,info,info,scene --eval-every 500 --family mix   # from teacher-gpu's bf16 export
    torchrun --standalone --nproc_per_node 2 teacher.py --stage read --init runs/wide-read \
        --vision-from checkpoints/teacher-wip/wide-glyphs3.safetensors --out runs/wide-read2 --steps 5000 --micro-batch 4 \
        --lr 3e-4 --warmup 50 --threads 1 --qa-turns 5 --transcribe-frac 0.3 --crop-frac 0.15 --seed-offset 600000000 \
        --kinds doc,table,chart,chart,chart,info,info,scene --eval-every 500 --family mix
    torchrun --standalone --nproc_per_node 2 teacher.py --stage read --init runs/wide-read2 --out runs/wide-read3 \
        --steps 3500 --micro-batch 4 --lr 2e-4 --warmup 50 --threads 1 --qa-turns 5 --transcribe-frac 0.3 \
        --crop-frac 0.15 --seed-offset 700000000 --kinds doc,table,chart,chart,chart,info,info,scene \
        --eval-every 500 --family mix
    python -c "import torch, model as M; M.save_model(M.load_model('runs/wide-read3', dtype=torch.bfloat16), \
        'runs/wide-read3-bf16', tokenizer_dir='runs/wide-read3')"   # checkpoints/tiny until stage 5 (8f16db6)
    python teacher.py --stage glyphs --vision-from checkpoints/teacher-wip/wide-glyphs3.safetensors \
        --out runs/wide-glyphs4 --steps 5000 --micro-batch 1 --glyph-tiles 48 --glyph-crops 4 --lr 6e-4 --warmup 50 \
        --threads 2 --seed-offset 70000 --eval-every 500 --save-every 250 --family mix   # -> .../wide-glyphs4.safetensors
    torchrun --standalone --nproc_per_node 2 teacher.py --stage read --init runs/wide-read3-bf16 \
        --vision-from checkpoints/teacher-wip/wide-glyphs4.safetensors --out runs/wide-read4 --steps 5000 \
        --micro-batch 4 --lr 2e-4 --warmup 50 --threads 1 --qa-turns 5 --transcribe-frac 0.3 --crop-frac 0.15 \
        --seed-offset 800000000 --kinds doc,table,chart,chart,chart,info,info,scene --eval-every 500 --family mix
    torchrun --standalone --nproc_per_node 2 teacher.py --stage read --init runs/wide-read4 --out runs/wide-read5 \
        --steps 1200 --micro-batch 4 --grad-accum 4 --lr 3e-4 --warmup 50 --threads 1 --qa-turns 8 \
        --transcribe-frac 0.2 --crop-frac 0.15 --seed-offset 900000000 \
        --kinds doc,table,chart,chart,chart,chart,info,info,scene --eval-every 200 --family mix --shipped-share 0.1
    python -c "import torch, model as M; M.save_model(M.load_model('runs/wide-read5', dtype=torch.bfloat16), \
        'checkpoints/tiny', tokenizer_dir='runs/wide-read5')"     # the bf16 export: checkpoints/tiny, byte for byte
    (add --resume to continue an interrupted stage; the other flags are posttrain.py's: python teacher.py --help)
    python -m pytest tests/test_teacher.py -q

Each stage runs posttrain.train (checkpoints, resume, DDP, log.jsonl). The auxiliary head and the
pointer loss exist only here: what ships is the plain InternVL2 architecture.
"""
import copy
import json
import math
import os
import random
import re
import string
import sys
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

import cli
import model as M
import posttrain as P
from cli import Error
from data.build import CROP_QUESTION, KIE_SUFFIX, OCRB_TYPES, crop_run
from tokenizer import load_tokenizer
from data.synth import KINDS, Config
from data import wide
from data.wide import make_sample
from evaluate import PROMPT, TASKS

CHARS = string.printable[:95]  # digits, letters, punctuation, space; class 0 = no glyph centre here
CHAR_ID = {c: i + 1 for i, c in enumerate(CHARS)}
KIND_TASK = {"doc": "docvqa", "table": "docvqa", "chart": "chartqa", "info": "infovqa", "scene": "textvqa"}
TASK_MAX_NUM = {kind: TASKS[task].max_num for kind, task in KIND_TASK.items()}  # train at the tiles each is evaluated at
TRAIN_MAX_NUM = (6, 12, TASKS["ocrbench"].max_num)  # and at these: OCRBench asks about every kind at 24 tiles
KEY_QUESTION = re.compile(r"^What (?:is the value for|percentage) (.+)\?$")  # a value asked for by the key printed below it
EVAL_SEEDS = range(10**9 - 2000, 10**9 - 1960)  # held out: training seeds stay below 10**9 - 2000
S = 112  # tile size
WIDENINGS = ("glyph_vary", "more_fonts", "synonyms", "arrangements", "legends",
             "series_order")  # flags that change the training family's samples


@dataclass
class TeacherConfig(P.TrainConfig):
    # posttrain.py's settings with the teacher's defaults
    trainable: str = ""  # what learns ('': all in the glyph stage; projector,llm in the read stage, the ViT frozen)
    qa_turns: int = 3  # QA turns about one image per conversation (read)
    # the teacher's own
    stage: str = ""  # glyphs | read
    vision_from: str = ""  # the ViT (and, for glyphs, its head) from a glyph stage's run folder or its .safetensors
    eval_every: int = 250  # steps between evaluations on held-out images (OUT/eval.jsonl)
    transcribe_frac: float = 0.4  # share of transcription conversations (read)
    pointer_weight: float = 1.0  # weight of the pointer loss (read)
    pointer_layers: int = 2  # the last this many decoder layers point (read)
    pair_layer: int = -1  # decoder layer of the pair loss (-1: none)
    pair_weight: float = 1.0  # weight of the pair loss
    glyph_tiles: int = 48  # tiles per glyph-stage micro-batch
    glyph_crops: int = 0  # of them, OCRBench-style word crops
    crop_frac: float = 0.0  # share of word-crop conversations (read)
    family: str = "shipped"  # training images: shipped, train or mix (data/wide.py; never the held-out family)
    shipped_share: float = 0.3  # with --family mix: the share of the shipped family's images (a multiple of 0.1)
    glyph_vary: float = 0.0  # share of the training family's images drawn with reshaped glyphs (wide.vary_glyphs)
    more_fonts: bool = False  # the training family also draws in data/wide.py's MORE_FONTS
    synonyms: bool = False  # the training family also asks in data/wide.py's SYNONYM_PHRASES (read)
    arrangements: bool = False  # the training family also draws data/wide.py's ARRANGEMENTS (chart, info layouts)
    legends: bool = False  # the training family's two-series legends also run against the bars' order, or in a column
    series_order: bool = False  # the training family's pairs of series names also in the other order and colours
    table_frac: float = 0.0  # share of chart conversations that write the chart's values as a table (read)
    colour_weight: float = 0.0  # weight of the colour term on the projector's tokens (read; colour_readout)
    legend_hop: bool = False  # a series question's first hop is its series' name in the legend, not the category (read)
    grow_layers: int = 0  # decoder layers added to --init's, outputs unchanged (grow_decoder); --pair-layer counts them


READ_STAGE_FLAGS = ("tokenizer", "trainable", "kinds", "qa_turns", "max_len", "transcribe_frac", "crop_frac",
                    "table_frac", "colour_weight", "legend_hop", "pointer_weight", "pointer_layers", "pair_layer",
                    "pair_weight", "synonyms", "grow_layers")  # glyphs: the whole ViT, every kind
GLYPH_STAGE_FLAGS = ("glyph_tiles", "glyph_crops")


def parse_args(argv=None):
    # posttrain.py's flags for conversations from a file and for the tiny model's shape: not this script's (its
    # conversations are its own, its shape teacher_config's)
    skip = ("data", "image_root", "p_transcribe", "p_qa", "p_reason", "cot_frac", "image_size", "model_config")
    cfg = cli.parse(TeacherConfig, argv, "teacher.py", __doc__, skip, choices=dict(stage=["glyphs", "read"]), **P.BOUNDS,
                    eval_every=1, qa_turns=1, glyph_tiles=1, glyph_crops=0, pointer_layers=1, pair_layer=-1,
                    grow_layers=0, transcribe_frac=0, crop_frac=0, table_frac=0, colour_weight=0, pointer_weight=0,
                    pair_weight=0, glyph_vary=0)
    if not cfg.stage:
        raise Error("the following arguments are required: --stage (see python teacher.py --help)")
    if cfg.stage == "glyphs" and cfg.init != TeacherConfig.init:
        raise Error("--init is the read stage's: the glyph stage trains the ViT alone (continue one with --vision-from)")
    other = READ_STAGE_FLAGS if cfg.stage == "glyphs" else GLYPH_STAGE_FLAGS  # unused here, so refused
    if flag := next((k for k in other if getattr(cfg, k) != getattr(TeacherConfig, k)), None):
        raise Error(f"--{flag.replace('_', '-')} is the {'read' if cfg.stage == 'glyphs' else 'glyph'} stage's, "
                    f"unused by --stage {cfg.stage}: drop it")
    return cfg


@dataclass(frozen=True)
class Images:
    """The synthetic images a run draws: --family's, with --shipped-share and the WIDENINGS flags. mix draws
    shipped_tenths / 10 of them from synth.py's shipped family and the rest from data/wide.py's training family, by
    seed, so a resumed run sees the same images. Training never asks for the held-out family; the probes do."""
    family: str = "shipped"  # shipped, train, mix (or heldout, for the probes)
    shipped_tenths: int = 3  # mix: the images whose seed ends in 0 .. shipped_tenths - 1 are the shipped family's
    widen: tuple = ()  # (synth.Config field, value) of each widening flag a run sets

    def sample(self, kind, seed):
        family = self.family if self.family != "mix" else ("shipped" if seed % 10 < self.shipped_tenths else "train")
        return make_sample(kind, seed, Config(family=family, **dict(self.widen)))

    def probe(self):  # the probes are never widened: a widened run is probed on the same images as its control
        return replace(self, widen=())


SHIPPED = Images()


def teacher_config(vocab_size):
    """The embedded teacher: InternViT + pixel shuffle + mlp1 + InternLM2, 16 visual tokens per 112 px tile."""
    return M.InternVLConfig(
        vision=M.VisionConfig(image_size=S, hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
                              intermediate_size=768),
        llm=M.LLMConfig(vocab_size=vocab_size, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=704, max_position_embeddings=4096),
        force_image_size=S, max_dynamic_patch=18)


def tile_grid(image, max_num):
    """(cols, rows, x scale, y scale) of the tile grid dynamic_preprocess resizes the image to."""
    cols, rows = M.find_grid(*image.size, 1, max_num, S)
    return cols, rows, cols * S / image.size[0], rows * S / image.size[1]


def glyph_centre(box, cols, sx, sy):
    """(tile, x, y) of a glyph's centre in tile pixels."""
    x, y = (box[0] + box[2]) / 2 * sx, (box[1] + box[3]) / 2 * sy
    return int(y // S) * cols + int(x // S), x % S, y % S


CROP_KINDS = OCRB_TYPES[0][2]  # the pages OCRBench's word images are cut from


def word_crop(seed, rng, images=SHIPPED):
    """(word, image, its glyph boxes in the image): an OCRBench-style word cut from a synthetic page.
    Upscaled 4-12x into tiles, its glyphs are whole only in the thumbnail."""
    for k in range(100):
        s = images.sample(CROP_KINDS[seed % len(CROP_KINDS)], seed + k * 10**8)
        r = crop_run(s, rng)
        if r:
            word, b, chars = r
            return word, s["image"].convert("RGB").crop(b), [[c["box"][0] - b[0], c["box"][1] - b[1], c["box"][2] - b[0],
                                                                c["box"][3] - b[1]] for c in chars]
    raise RuntimeError(f"no word to crop near seed {seed}")


# ----------------------------------------------------------------------------------------------
# stage glyphs

def glyph_slot(x, y):
    """(patch, half) label slot of a glyph centred at (x, y) in tile pixels."""
    return int(y // 14) * (S // 14) + int(x // 14), int(x % 14 >= 7)


def glyph_tiles(seed, crops=0, images=SHIPPED):
    """The tiles of one synthetic image that hold text, with two labels per 14 px patch: the characters
    whose centres lie in its left and right half (glyphs are 8-14 px wide: one label would drop some);
    then the thumbnails of `crops` word crops (glyphs 1-2x wider and 3-5x taller than on a page)."""
    rng = random.Random(seed)
    kind = KINDS[seed % len(KINDS)]
    s = images.sample(kind, seed)
    image = s["image"].convert("RGB")
    max_num = rng.choice([6, 12, TASK_MAX_NUM[kind]])
    tiles = M.dynamic_preprocess(image, max_num=max_num, image_size=S, use_thumbnail=False)  # thumbnail glyphs: too small
    cols, _, sx, sy = tile_grid(image, max_num)
    g = S // 14
    labels = torch.zeros(len(tiles), g * g, 2, dtype=torch.long)
    for ch in s["chars"]:
        t, x, y = glyph_centre(ch["box"], cols, sx, sy)
        if ch["char"] in CHAR_ID and t < len(tiles):
            labels[(t, *glyph_slot(x, y))] = CHAR_ID[ch["char"]]
    keep = [i for i in range(len(tiles)) if labels[i].any()]
    x, y = [M.to_tensor(tiles[i], S) for i in keep], [labels[i] for i in keep]
    for k in range(crops):
        xk, yk = crop_tile(seed * 10 + k, rng, images)
        x.append(xk)
        y.append(yk)
    return torch.stack(x), torch.stack(y)


def crop_tile(seed, rng, images=SHIPPED):
    """A word crop's thumbnail, the one tile that shows its glyphs whole, and its glyph labels."""
    word, crop, boxes = word_crop(seed, rng, images)
    g = S // 14
    labels = torch.zeros(g * g, 2, dtype=torch.long)
    for ch, box in zip(word.replace(" ", ""), boxes):
        cx, cy = (box[0] + box[2]) / 2 * S / crop.width, (box[1] + box[3]) / 2 * S / crop.height
        if ch in CHAR_ID:
            labels[glyph_slot(cx, cy)] = CHAR_ID[ch]
    return M.to_tensor(M.dynamic_preprocess(crop, max_num=1, image_size=S, use_thumbnail=False)[0], S), labels


class GlyphReader(nn.Module):
    """The ViT plus a training-only linear head on each patch token: [tiles, patches, 2 slots, classes]."""

    def __init__(self, cfg):
        super().__init__()
        self.vision_model = M.InternViT(cfg.vision)
        self.glyph_head = nn.Linear(cfg.vision.hidden_size, 2 * (len(CHARS) + 1))

    def forward(self, pixel_values):
        return self.glyph_head(self.vision_model(pixel_values)[:, 1:]).unflatten(-1, (2, len(CHARS) + 1))


def glyph_batch(first_seed, n_tiles, crops=0, images=SHIPPED):
    xs, ys, seed = [], [], first_seed
    while sum(len(x) for x in xs) < n_tiles:
        x, y = glyph_tiles(seed, crops, images)
        xs.append(x)
        ys.append(y)
        seed += 1
    x, y = torch.cat(xs)[:n_tiles], torch.cat(ys)[:n_tiles]
    return dict(pixel_values=x, labels=y, n_labels=int((y > 0).sum()), n_tokens=y.numel(), truncated=0,
                convs=[None] * len(x))


GLYPH_WEIGHT = torch.ones(len(CHARS) + 1)
GLYPH_WEIGHT[0] = 0.2  # most slots hold no glyph centre: down-weighted so "none" does not win by default


def glyph_loss(model, batch):
    """Weighted CE over all slots; char_acc = glyph slots read right, both / the global glyph count."""
    logits, y = model(batch["pixel_values"]), batch["labels"]
    ce = F.cross_entropy(logits.flatten(0, 2), y.flatten(), weight=GLYPH_WEIGHT.to(y.device), reduction="none")
    n = batch["n_labels_global"]
    has = y > 0
    return ce.sum() / n, dict(char_acc=(logits.argmax(-1)[has] == y[has]).sum().item() / n)


def glyph_eval(model, images):
    def read(family):  # (predicted, true) slots of held-out images of a family
        batch = glyph_batch(EVAL_SEEDS[0], 256, images=Images(family))
        with torch.no_grad():
            return model(batch["pixel_values"]).argmax(-1), batch["labels"]
    pred, y = read("shipped")
    pred_other, y_other = read("heldout")  # fonts and layouts never trained on
    has, has_other = y > 0, y_other > 0
    rng = random.Random(0)
    x, y_crop = map(torch.stack, zip(*[crop_tile(seed, rng, images.probe()) for seed in EVAL_SEEDS]))
    with torch.no_grad():
        pred_crop = model(x).argmax(-1)
    has_crop = y_crop > 0
    return dict(eval_char_acc=(pred[has] == y[has]).float().mean().item(), eval_none_acc=(pred[~has] == 0).float().mean().item(),
                eval_heldout_char_acc=(pred_other[has_other] == y_other[has_other]).float().mean().item(),
                eval_crop_char_acc=(pred_crop[has_crop] == y_crop[has_crop]).float().mean().item())


# ----------------------------------------------------------------------------------------------
# stage read

def short_answer(question, rng):
    """The question with the eval prompt: after a space as the InternVL repo, or a newline as OCRBench."""
    return question + ("\n" if rng.random() < 0.25 else " ") + PROMPT


TABLE_QUESTION = "Write the chart's data as a table."
SERIES_REWORDED = wide.PHRASES["series"][1][0]  # "In {c}, what is {s}?": every series question's rewording


def series_name(qa):
    """The series a data/wide.py series question asks about, as its legend prints it."""
    return wide.phrased(SERIES_REWORDED, qa["reworded"])["s"]


def chart_table(qa):
    """[(cell, is_printed)] of a chart's values as a table, a header row and a row per category in its drawn order,
    a column per series in its bars' order; None where the chart has no value question per bar (synth.py's charts)."""
    cells = {}  # (category's place, series) -> (category, value)
    for q in qa:
        if q.get("form") not in ("value", "series"):
            continue
        if q["pos"] is None:  # synth.py's chart in a wide family's fonts
            return None
        series = series_name(q) if q["form"] == "series" else "Value"
        cells[q["pos"][0], series] = q["key"], q["answer"]
    if not cells:
        return None
    names = list(dict.fromkeys(s for _, s in cells))  # first asked, first bar
    places = sorted({i for i, _ in cells})
    rows = [[("Category", False)] + [(s, s != "Value") for s in names]]
    rows += [[(cells[i, names[0]][0], True)] + [(cells[i, s][1], True) for s in names] for i in places]
    return rows


def read_conversation(seed, transcribe_frac, qa_turns, kinds=KINDS, crop_frac=0.0, images=SHIPPED, table_frac=0.0,
                      legend_hop=False):
    """A conversation about one synthetic image, and for each answer two glyph indices per character:
    where the last pointer layer must look (the glyph itself) and where the layers before it must
    (the same glyph, or the key's last glyph when the question names one, see KEY_QUESTION: its token has
    seen the whole key, where a first glyph like the "2" of "2013" is on every year of a chart);
    -1: a space, or a text that occurs twice on the page, so where to look is unclear.
    kinds: the image kinds cycled through by seed; repeat a kind to see more of it.
    crop_frac: the share of conversations that are OCRBench's word-recognition question on a word crop.
    table_frac: the share of chart conversations that write the chart's values as a table, each bound to its category
    and series (decided by a stream of its own, so that the other conversations are those of a run without it).
    legend_hop: a series question's first hop is the first glyph of its series' name where the legend prints it, beside
    the swatch whose colour marks the series' bars, kept even where the legend comes first in the token sequence
    (hop_kept): the value's token must fetch the colour before it can find the bar."""
    rng = random.Random(seed)
    if crop_frac and rng.random() < crop_frac:
        return crop_conversation(seed, rng, images)
    kind = kinds[seed % len(kinds)]
    s = images.sample(kind, seed)
    text, index = s["transcription"], s["char_index"]

    def glyphs(span):  # glyph index of each character of a text that occurs once on the page
        at = text.find(span)
        return index[at:at + len(span)] if at >= 0 and text.find(span, at + 1) < 0 else [-1] * len(span)

    if rng.random() < transcribe_frac or not s["qa"]:
        turns = [(P.TRANSCRIBE, text, index, index, False)]
    else:
        turns = []
        for qa in rng.sample(s["qa"], min(qa_turns, len(s["qa"]))):
            q, a = qa["question"], qa["answer"]
            # Two hops where the value comes first in the token sequence (a bar's label above its category):
            # the causal decoder can carry a value into its key's token, never a key into its value's.
            key = qa.get("key") or (m.group(1) if (m := KEY_QUESTION.match(q)) else None)  # pointers() keeps the hop
            hop1 = [next((g for g in reversed(glyphs(key)) if g >= 0), -1)] * len(a) if key else glyphs(a)  # if needed
            kept = False
            if legend_hop and qa.get("form") == "series" and qa.get("pos") is not None \
                    and (first := glyphs(series_name(qa))[0]) >= 0:
                hop1, kept = [first] * len(a), True
            if kind in ("doc", "table") and rng.random() < 0.25:
                q += KIE_SUFFIX  # OCRBench's key-information prompt
            turns.append((short_answer(q, rng), a, glyphs(a), hop1, kept))
    # a table replaces the turns drawn above, not their draws: rng's later ones (max_num) stay a run's without it
    if table_frac and kind == "chart" and random.Random(f"table:{seed}").random() < table_frac \
            and (rows := chart_table(s["qa"])):
        answer, where = "", []
        for r, row in enumerate(rows):
            for c, (cell, printed) in enumerate(row):
                sep = "\n" if r and not c else " | " if c else ""
                answer += sep + cell
                where += [-1] * len(sep) + (glyphs(cell) if printed else [-1] * len(cell))
        turns = [(TABLE_QUESTION, answer, where, where, False)]
    turns[0] = ("<image>\n" + turns[0][0], *turns[0][1:])
    pairs = [(key[-1], value) for qa in s["qa"] if (m := KEY_QUESTION.match(qa["question"]))
             for key, value in [(glyphs(m.group(1)), glyphs(qa["answer"]))] if key[-1] >= 0 and min(value) >= 0]
    return dict(image=s["image"].convert("RGB"), sample=s, max_num=rng.choice([*TRAIN_MAX_NUM, TASK_MAX_NUM[kind]]),
                conversations=[{"from": w, "value": v} for q, a, *_ in turns for w, v in (("human", q), ("gpt", a))],
                glyphs=[t[2] for t in turns], hop1=[t[3] for t in turns], hop_kept=[t[4] for t in turns], pairs=pairs)


def crop_conversation(seed, rng, images=SHIPPED):
    """What is written on a word crop; its pointers go into the thumbnail (`thumbnail`)."""
    word, crop, boxes = word_crop(seed, rng, images)
    chars = [dict(char=c, box=b) for c, b in zip(word.replace(" ", ""), boxes)]
    glyph, k = [], 0
    for c in word:  # glyph index of each character, -1 for a space
        glyph.append(-1 if c == " " else k)
        k += c != " "
    question = "<image>\n" + short_answer(CROP_QUESTION, rng)
    return dict(image=crop, sample=dict(chars=chars), max_num=rng.choice([*TRAIN_MAX_NUM, TASKS["ocrbench"].max_num]),
                thumbnail=True, conversations=[{"from": "human", "value": question}, {"from": "gpt", "value": word}],
                glyphs=[glyph], hop1=[glyph], hop_kept=[False], pairs=[])


def piece_spans(tok, ids):
    """[begin, end) character span of each sentencepiece id in the text it encodes (ASCII text)."""
    spans, pos = [], 0
    for i in ids:
        n = 1 if tok.sp.is_byte(i) else len(tok.sp.id_to_piece(i))
        spans.append((pos, pos + n))
        pos += n
    return spans


def glyph_place(conv, ids, img_context):
    """glyph index -> position of the visual token that holds it (-1: outside the tiles): in the tiles, as a
    page's thumbnail is too small to read, or in a word crop's thumbnail."""
    cols, rows, sx, sy = tile_grid(conv["image"], conv["max_num"])
    first_img = ids.index(img_context)

    def visual_position(g):
        box = conv["sample"]["chars"][g]["box"]
        if conv.get("thumbnail"):  # after the grid's tiles, unless the grid is one tile (then no thumbnail)
            t = cols * rows if cols * rows > 1 else 0
            x, y = (box[0] + box[2]) / 2 * S / conv["image"].width, (box[1] + box[3]) / 2 * S / conv["image"].height
        else:
            t, x, y = glyph_centre(box, cols, sx, sy)
            if t >= cols * rows:
                return -1
        return first_img + t * 16 + int(y // 28) * 4 + int(x // 28)
    return visual_position


def pointers(conv, ids, labels, tok, img_context):
    """(query position, key position in the last pointer layer, key position in the layers before it):
    the position that predicts an answer token, and the visual tokens holding the glyphs it must look at."""
    visual_position = glyph_place(conv, ids, img_context)
    out, pos, end = [], 0, tok.token_to_id(M.STOP_TOKEN)
    for glyphs, hop1, kept in zip(conv["glyphs"], conv["hop1"], conv["hop_kept"]):
        while labels[pos] == -100:
            pos += 1
        start = pos
        while ids[pos] != end:
            pos += 1
        for (b, e), p in zip(piece_spans(tok, ids[start:pos]), range(start, pos)):
            g = next((g for g in glyphs[b:e] if g >= 0), -1)
            h = next((h for h in hop1[b:e] if h >= 0), -1)
            k, k1 = visual_position(g) if g >= 0 else -1, visual_position(h) if h >= 0 else -1
            if 0 <= k1 < k and not kept:  # a key printed before its value: the value's token has seen it, one hop will do
                k1 = k
            if k >= 0 and k1 >= 0:
                out.append((p - 1, k, k1))
        pos += 1
    return out


PAIR_WIDTH = 8  # at most this many value tokens per pair (the tensor's padded width)


def pair_pointers(conv, ids, img_context, width=PAIR_WIDTH):
    """(key position, value positions padded with -1 to `width`): for each value printed above its key, the visual
    token of the key's last glyph and those of the value's glyphs, which come earlier in the sequence."""
    visual_position, out = glyph_place(conv, ids, img_context), []
    for key, value in conv["pairs"]:
        q = visual_position(key)
        targets = sorted({t for g in value if 0 <= (t := visual_position(g)) < q})[:width]
        if q >= 0 and targets:
            out.append((q, *targets, *[-1] * (width - len(targets))))
    return out


def read_batch(convs, tok, model, cfg, with_pairs=False):
    """posttrain.collate plus the pointer targets, and with_pairs the pair loss's (the loss reads them only then)."""
    batch = P.collate(convs, tok, model, cfg)
    ids = [batch["input_ids"][b].tolist() for b in range(len(convs))]
    ptr = [(b, *p) for b, conv in enumerate(convs)
           for p in pointers(conv, ids[b], batch["labels"][b].tolist(), tok, model.img_context_token_id)]
    batch["pointers"] = torch.tensor(ptr, dtype=torch.long).view(-1, 4)
    if with_pairs:
        pairs = [(b, *p) for b, conv in enumerate(convs) for p in pair_pointers(conv, ids[b], model.img_context_token_id)]
        batch["pair_pointers"] = torch.tensor(pairs, dtype=torch.long).view(-1, 2 + PAIR_WIDTH)
    return batch


class AttentionInputs:
    """Forward hooks that keep the inputs of some decoder attentions (`layers`: their indices), to recompute one
    head's attention map for the pointer losses without touching model.py."""

    def __init__(self, model, layers):
        self.seen = []
        for layer in [model.language_model.model.layers[i] for i in layers]:
            layer.attention.register_forward_hook(lambda mod, args, out: self.seen.append((mod, *args[:3])))


def head0_log_attention(seen, b, q_pos):
    """[n, L] log attention of head 0 (it reads kv head 0) from position q_pos[i] of sequence b[i], recomputed
    from one layer's attention input (AttentionInputs)."""
    attn, x, cos, sin = seen
    q, k, _ = attn.project_qkv(x, cos, sin)
    q, k = q[:, 0], k[:, 0]
    scores = torch.einsum("nd,nld->nl", q[b, q_pos], k[b]) / math.sqrt(attn.head_dim)
    return scores.masked_fill(torch.arange(k.shape[1], device=k.device)[None] > q_pos[:, None], float("-inf")).log_softmax(-1)


def pointer_nll(seen, ptr):
    """Summed over pointers, averaged over layers: -log(attention of head 0 from query to key); and hits.
    The last layer points at column 2 of ptr, the layers before it at column 3 (the first hop)."""
    b, q_pos = ptr[:, 0], ptr[:, 1]
    nll, hits = 0.0, 0.0
    for i, layer in enumerate(seen):
        k_pos = ptr[:, 2] if i == len(seen) - 1 else ptr[:, 3]
        logp = head0_log_attention(layer, b, q_pos)
        nll = nll - logp[torch.arange(len(b), device=logp.device), k_pos].sum()
        hits += (logp.argmax(-1) == k_pos).sum().item()
    return nll / len(seen), hits / len(seen)


def pair_nll(seen, pairs):
    """Summed over pairs: -log(the attention of head 0 from a key's token to all of its value's tokens); and hits
    (the most attended position is one of them)."""
    targets = pairs[:, 2:]
    logp = head0_log_attention(seen, pairs[:, 0], pairs[:, 1])
    on = torch.zeros_like(logp, dtype=torch.bool).scatter_(1, targets.clamp(min=0), targets >= 0)
    nll = -logp.masked_fill(~on, float("-inf")).logsumexp(-1).sum()
    return nll, on.gather(1, logp.argmax(-1, keepdim=True)).sum().item()


def colour_readout(width):
    """[width, 3]: fixed orthonormal directions (seeded) along which the colour term reads a projector token's colour.
    Fixed, so the term adds no weight to train or save: the projector must lay the colour along them."""
    return torch.linalg.qr(torch.randn(width, 3, generator=torch.Generator().manual_seed(0)))[0]


def token_colours(pixel_values, token_px):
    """[tiles, 3, S, S] normalised pixels -> [tiles x tokens, 3]: the mean of the pixels each visual token covers
    (token_px square), in the projector's token order (tile, row, column)."""
    return F.avg_pool2d(pixel_values.float(), token_px).permute(0, 2, 3, 1).flatten(0, 2)


def make_read_loss(model, pointer_weight, layers, pair_layer=-1, pair_weight=1.0, colour_weight=0.0):
    """LM loss + pointer loss on the last `layers` decoder layers; with pair_layer >= 0, also a pair loss there;
    with colour_weight, also the colour term on the projector's tokens (their mean squared error per channel)."""
    n_layers = model.config.llm.num_hidden_layers
    if layers > n_layers:
        raise Error(f"--pointer-layers {layers}: must be at most the decoder's {n_layers} layers")
    if pair_layer >= n_layers - layers:
        raise Error(f"--pair-layer {pair_layer}: must be below the {layers} pointer layers (0..{n_layers - layers - 1})")
    probe = AttentionInputs(model, [*([pair_layer] if pair_layer >= 0 else []), *range(n_layers - layers, n_layers)])
    projected = {}  # mlp1's output of the last forward: the visual tokens the LLM reads
    if colour_weight:
        model.mlp1.register_forward_hook(lambda mod, args, out: projected.update(tokens=out))
        readout = colour_readout(model.config.llm.hidden_size).to(next(model.parameters()).device)
        token_px = round(model.config.vision.patch_size / model.config.downsample_ratio)

    def read_loss(net, batch):
        probe.seen.clear()
        logits = net(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        n = batch["n_labels_global"]
        lm = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), reduction="sum") / n
        loss, stats, seen = lm, dict(lm=lm.item(), ptr=0.0, ptr_hits=0.0), probe.seen
        if pair_layer >= 0:  # the same keys on every process: DDP sums them
            seen, pairs = seen[1:], batch["pair_pointers"]
            stats.update(pair=0.0, pair_hits=0.0, pairs=float(len(pairs)))
            if len(pairs):
                nll, hits = pair_nll(probe.seen[0], pairs)
                loss = loss + pair_weight * nll / n
                stats.update(pair=nll.item() / n, pair_hits=float(hits))
        if len(batch["pointers"]):
            ptr, hits = pointer_nll(seen, batch["pointers"])
            loss = loss + pointer_weight * ptr / n
            stats.update(ptr=ptr.item() / n, ptr_hits=hits / n)
        if colour_weight:  # a sample's mean over its tokens; the step's micro-batches sum to the mean over samples
            err = (projected["tokens"].float() @ readout - token_colours(batch["pixel_values"], token_px)).pow(2).mean()
            colour = err * len(batch["convs"]) / batch["n_samples_global"]
            loss = loss + colour_weight * colour
            stats.update(colour=colour.item())
        return loss, stats

    return read_loss


def grow_decoder(model, n, keep_last=0):
    """Deepen the LLM by n decoder layers, one after each of its first n, each a copy of the layer before it with
    its two output projections (attention wo, feed-forward w2) zeroed: the new layers add nothing to the residual
    stream, so the model answers as before, and learn from there (LLaMA Pro's block expansion). The last keep_last
    layers (the pointer layers) stay the trained ones, so n is at most the layers before them."""
    layers, cfg = model.language_model.model.layers, model.config.llm
    if not 0 < n <= len(layers) - keep_last:
        raise Error(f"--grow-layers {n}: from 1 to the {len(layers) - keep_last} decoder layers before the "
                    f"{keep_last} pointer layers")
    grown = []
    for i, layer in enumerate(layers):
        grown.append(layer)
        if i < n:
            new = copy.deepcopy(layer)
            for w in (new.attention.wo.weight, new.feed_forward.w2.weight):
                nn.init.zeros_(w)
            grown.append(new)
    model.language_model.model.layers = nn.ModuleList(grown)
    cfg.num_hidden_layers = len(grown)  # the config save_model writes, and the KV caches' count


def read_eval(model, tok, images):
    """Greedy ANLS / exact match on two extractive questions of each held-out image, asked as evaluate.py does;
    exact match on held-out word crops, asked as OCRBench does."""
    from metrics import anls
    model.eval()
    items, other = [], []  # the shipped family's images, then the held-out family's (never trained on)
    for family, into in (("shipped", items), ("heldout", other)):
        for seed in EVAL_SEEDS:
            kind = KINDS[seed % len(KINDS)]
            s = make_sample(kind, seed, Config(family=family))
            pv = M.load_image(s["image"], max_num=TASK_MAX_NUM[kind], image_size=S)
            into += [(pv, qa["question"] + P.SHORT, qa["answer"]) for qa in s["qa"][:2]]
    rng = random.Random(0)
    crops = [word_crop(seed, rng, images.probe())[:2] for seed in EVAL_SEEDS[:24]]
    crops = [(M.load_image(c, max_num=TASKS["ocrbench"].max_num, image_size=S), CROP_QUESTION + "\n" + PROMPT, w) for w, c in crops]
    preds, asked = [], items + crops + other
    for i in range(0, len(asked), 8):
        chunk = asked[i:i + 8]
        preds += model.batch_chat(tok, [c[0] for c in chunk], [c[1] for c in chunk], max_new_tokens=16, min_new_tokens=1)
    model.train()
    preds, crop_preds, other_preds = preds[:len(items)], preds[len(items):len(items) + len(crops)], preds[len(items) + len(crops):]
    keyed = [p == c[2] for p, c in zip(preds, items) if KEY_QUESTION.match(c[1][:-len(P.SHORT)])]
    return dict(eval_anls=100 * sum(anls(p, [c[2]]) for p, c in zip(preds, items)) / len(items),
                eval_heldout_anls=100 * sum(anls(p, [c[2]]) for p, c in zip(other_preds, other)) / len(other),
                eval_em=100 * sum(p == c[2] for p, c in zip(preds, items)) / len(items),
                eval_key_em=100 * sum(keyed) / max(1, len(keyed)),  # the value-before-key questions alone
                eval_crop_em=100 * sum(p == c[2] for p, c in zip(crop_preds, crops)) / len(crops),  # OCRBench's word crops
                eval_example=f"{items[0][2]!r} -> {preds[0]!r}")


# ----------------------------------------------------------------------------------------------

def run(cfg):
    if cfg.family not in ("shipped", "train", "mix"):
        raise Error(f"--family {cfg.family!r}: one of shipped, train, mix (the held-out family is never trained on)")
    tenths = 10 * cfg.shipped_share
    if not (0 <= tenths <= 10 and abs(tenths - round(tenths)) < 1e-9):  # NaN fails too
        raise Error(f"--shipped-share {cfg.shipped_share}: a multiple of 0.1 from 0 to 1 (the shipped family's "
                    "images are those whose seed ends in a digit below 10 x the share)")
    if cfg.family != "mix" and cfg.shipped_share != TeacherConfig.shipped_share:
        raise Error(f"--shipped-share applies to --family mix only, not {cfg.family}")
    if cfg.glyph_vary > 1:
        raise Error(f"--glyph-vary {cfg.glyph_vary:g}: a share, from 0 to 1")
    if cfg.family == "shipped" and (widening := next((f for f in WIDENINGS if getattr(cfg, f)), None)):
        raise Error(f"--{widening.replace('_', '-')} changes the training family's samples: add --family train or mix")
    if cfg.grow_layers and cfg.init == "tiny":
        raise Error("--grow-layers deepens a trained model: pass its folder as --init")
    if cfg.synonyms and cfg.pair_layer >= 0:  # read_conversation finds its pairs by the question's words (KEY_QUESTION)
        raise Error("--pair-layer finds its pairs by the questions' wording, which --synonyms changes: drop one of them")
    top = cfg.seed_offset + cfg.steps * int(os.environ.get("WORLD_SIZE", 1)) * cfg.micro_batch * cfg.grad_accum
    if cfg.stage == "glyphs":  # glyph_batch: 10**3 seeds a micro-batch, and crop_tile 10 seeds for each of those
        top = ((top + cfg.grad_accum) * 10**3) * (10 if cfg.glyph_crops else 1)
    if top > EVAL_SEEDS[0]:  # the stage's sample seeds stay below top
        raise Error(f"--seed-offset {cfg.seed_offset}: this stage would draw images at seeds up to {top}, past "
                    f"{EVAL_SEEDS[0]}, where its probe's images and the evaluation sets' seeds begin: pass a lower one")
    images = Images(cfg.family, round(tenths), tuple((f, getattr(cfg, f)) for f in WIDENINGS if getattr(cfg, f)))
    kinds = cfg.kinds.split(",")
    if not set(kinds) <= set(KINDS):
        raise Error(f"--kinds {cfg.kinds!r}: each must be one of {','.join(KINDS)}")
    device = P.setup(cfg)
    if cfg.stage == "read":
        cfg = replace(cfg, trainable=cfg.trainable or "projector,llm")  # the glyph-trained ViT stays frozen: 3x cheaper
    os.makedirs(cfg.out, exist_ok=True)
    log = None  # OUT/eval.jsonl, cut on the first step to the evaluations before it (a resumed run makes the rest)
    rank, world = P.dist_info()
    per_step = cfg.micro_batch * cfg.grad_accum  # as posttrain.micro_batches: the same samples on any split
    first_seed = lambda step: cfg.seed_offset + (step * world + rank) * per_step

    def after_step(step, rec, evaluate):
        nonlocal log
        log = log or P.log_until(os.path.join(cfg.out, "eval.jsonl"), step - 1)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            r = dict(step=step, **evaluate())
            print(json.dumps(r), flush=True)
            log.write(json.dumps(r) + "\n")
            log.flush()

    src = cfg.vision_from  # a glyph stage's run folder, or its weights file
    fix = "pass a glyph stage's run folder or its .safetensors"
    glyph_weights = src if not src or src.endswith(".safetensors") else os.path.join(src, "checkpoint", "model.safetensors")
    try:
        P.check(cfg)
        if glyph_weights and not os.path.isfile(glyph_weights):
            raise Error(f"--vision-from {src}: {glyph_weights} not found; {fix}")
        if cfg.stage == "glyphs":
            net = GlyphReader(teacher_config(1)).to(device)
            if glyph_weights:  # continue a glyph stage: its ViT and head
                try:
                    net.load_state_dict(P.read_weights(glyph_weights, fix))
                except RuntimeError as e:
                    raise Error(f"--vision-from {src}: not a glyph stage's ViT and head ({str(e).splitlines()[0]}); "
                                f"{fix}") from None
            P.train(replace(cfg, trainable="all"), net, None,
                    lambda step: [glyph_batch((first_seed(step) + a) * 10**3, cfg.glyph_tiles, cfg.glyph_crops, images)
                                  for a in range(cfg.grad_accum)],
                    glyph_loss, lambda s, r: after_step(s, r, lambda: glyph_eval(net, images)))
            return
        if cfg.init != "tiny":  # continue from a checkpoint folder, e.g. checkpoints/tiny
            model, tok = M.load_model(cfg.init, device), load_tokenizer(cfg.init)
            cfg = replace(cfg, tokenizer=cfg.init)
        else:
            tok = load_tokenizer(cfg.tokenizer)
            model = M.InternVLChat(teacher_config(tok.vocab_size))
            model.img_context_token_id = tok.token_to_id(M.IMG_CONTEXT)
        if cfg.grow_layers:  # before P.train, which resumes a grown run's weights onto it
            grow_decoder(model, cfg.grow_layers, cfg.pointer_layers)
        model.to(device)
        if glyph_weights:
            vit = {k: v for k, v in P.read_weights(glyph_weights, fix).items() if k.startswith("vision_model.")}
            if missing := sorted(set(k for k in model.state_dict() if k.startswith("vision_model.")) - set(vit)):
                raise Error(f"--vision-from {src}: no {missing[0]} (and {len(missing) - 1} more ViT weights) in "
                            f"{glyph_weights}; {fix}")
            try:
                model.load_state_dict(vit, strict=False)  # the ViT alone: projector and LLM stay as they are
            except RuntimeError as e:
                raise Error(f"--vision-from {src}: another ViT's shapes ({str(e).splitlines()[-1].strip()}); pass "
                            "this teacher's glyph stage") from None
        batches = lambda step: [read_batch([read_conversation(first_seed(step) + a * cfg.micro_batch + i,
                                                              cfg.transcribe_frac, cfg.qa_turns, kinds, cfg.crop_frac,
                                                              images, cfg.table_frac, cfg.legend_hop)
                                            for i in range(cfg.micro_batch)], tok, model, cfg, cfg.pair_layer >= 0)
                                for a in range(cfg.grad_accum)]
        step = P.train(cfg, model, tok, batches, make_read_loss(model, cfg.pointer_weight, cfg.pointer_layers,
                                                                cfg.pair_layer, cfg.pair_weight, cfg.colour_weight),
                       lambda s, r: after_step(s, r, lambda: read_eval(model, tok, images)))
        if rank == 0 and step >= cfg.steps:
            M.save_model(model, cfg.out, tokenizer_dir=cfg.tokenizer)
    finally:
        if P.dist.is_initialized():
            P.dist.destroy_process_group()


def main(argv=None):
    sys.exit(cli.run_main("teacher.py", lambda: run(parse_args(argv)), M.ModelLoadError))


if __name__ == "__main__":
    main()
