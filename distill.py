"""
Stage I of FCoT-VL: re-alignment by self-distillation. The student is the teacher with fewer visual
tokens per image: the same ViT and LLM (frozen), a compression module V_c and a student projector A_s
(a copy of the teacher's mlp1 at first), and only V_c and A_s learn. The ViT runs once per batch and
feeds both branches; the loss on the answer tokens is

    T^2 KL(teacher_T || student_T) + lambda CE(student, answer)     (_T: softmax at temperature T)

except on answers with a rationale (--p-reason, --cot-frac), learnt by CE alone: the teacher never
wrote rationales, so it does not even read those conversations. Stage II goes on from a stage-I
student with its LLM learning too (--student, --trainable compressor,projector,llm; results.py runs it).

    python distill.py --ratio 0.5                # the embedded teacher on synthetic pairs (CPU, minutes),
                                                 # then teacher / pool / FastV / student on DocVQA-format,
                                                 # shipped and held-out pages
    python distill.py --ratio 0.25 --temperature 2 --ce-weight 0.5   # the KL at T = 2, the CE at lambda = 0.5
    python distill.py --ratio 0.25 --skip-thumbnail    # select: a page's thumbnail gives its budget to the tiles
    python distill.py --ratio 0.25 --skip-thumbnail --rank-projected   # and rarity is measured after A_s
    python distill.py --budget auto --ratio 0.5   # one student for every ratio in --ratio-range (one drawn per
                                                  # batch), then evaluate.py --budget auto: each image keeps its
                                                  # tokens above a rarity threshold set on the training images
    python distill.py --ratio 0.5 --student runs/distill-select0.5 --trainable compressor,projector,llm --lr 5e-4 \
        --lr-llm 1.5e-4 --out runs/stage2-select0.5   # stage II: the student's LLM learns too (a copy: the
                                                      # teacher's stays as it is)
    torchrun --standalone --nproc_per_node 8 distill.py --teacher /models/InternVL2-2B --ratio 0.5 \
        --data pairs.jsonl --image-root /data/images --micro-batch 2 --grad-accum 4 --lr 1e-4 \
        --steps 2000 --grad-checkpointing --eval-task docvqa --eval-data /data/docvqa/val
    (add --resume to continue; python distill.py --help lists every flag: posttrain.py's, distillation's defaults)
    python -m pytest tests/test_distill.py -q

On GPUs the frozen teacher is held in bf16 and V_c, A_s in fp32 (AdamW on fp32 weights, bf16
autocast), replicated by DDP: only V_c and A_s (tens of millions of parameters for the 8B) have
gradients and optimizer state, so the 8B fits one 80 GB GPU per process without FSDP. Checkpoints
under OUT/checkpoint/ hold only those two parts; OUT/ ends as an ordinary InternVL2 checkpoint folder
whose config.json records the compressor, which evaluate.py and model.load_model(build_compressor=
compress.build) load as it is. OUT/results.md holds the comparison table: visual tokens per image, the
LLM's prefill FLOPs relative to the teacher's (from the model config and each prompt's length; FastV: the
full prompt up to layer K, the kept one after), the score on the shipped set and on the held-out family's
(data/eval-heldout: fonts, layouts and phrasings the teacher never trained on). Wall-clock speed at scale is
bench.py's: at this size the ViT, which every row runs in full, dominates a prefill's time.
"""
import copy
import json
import math
import os
import random
import sys
import zlib
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

import baselines
import cli
import compress as C
import evaluate as E
import model as M
import posttrain as P
from cli import Error
from tokenizer import load_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class DistillConfig(P.TrainConfig):
    # posttrain.py's settings with distillation's defaults
    out: str = ""  # run folder: the student, log.jsonl, checkpoint/, results.md ('': runs/distill-<compressor><ratio>)
    seed_offset: int = 500_000_000  # synthetic sample i has seed seed_offset + i (apart from posttrain's)
    p_transcribe: float = 0.4  # share of transcription conversations (the three shares are normalised)
    p_qa: float = 0.6  # share of extractive QA, with the official short-answer prompt
    p_reason: float = 0.0  # share of multi-fact reasoning questions
    qa_turns: int = 3  # pack up to this many QA turns about one image into a conversation
    trainable: str = ""  # what learns: compressor, projector and, for stage II, llm ('': compressor,projector, or
                         # compressor for a student with its own A_s, --budget auto's: V_c holds it)
    lr: float = 1e-3  # peak learning rate
    micro_batch: int = 8  # conversations per forward pass per process
    save_every: int = 100  # steps between checkpoints in OUT/checkpoint (0: only at the end)
    # distillation's own
    teacher: str = os.path.join(HERE, "checkpoints", "tiny")  # the uncompressed model (checkpoint folder)
    ratio: float = 0.5  # share of visual tokens kept: 0.5, 0.25 or 1/k (--budget auto: any, the comparison's)
    compressor: str = "select"  # V_c: select | pool (compress.py)
    temperature: float = 1.0  # T of the KL term
    ce_weight: float = 0.5  # lambda of the cross-entropy term
    eval_task: str = "docvqa"  # the task of the closing comparison ('': none)
    eval_data: str = ""  # its annotation file or folder ('': the shipped set)
    eval_heldout: str = E.HELDOUT_SETS  # the held-out family's sets: the task's too ('': not)
    eval_limit: int = 0  # first N questions only (0: all)
    eval_batch_size: int = 8  # questions per generate call in the comparison
    fastv_layer: int = 2  # K of the FastV baseline
    student: str = ""  # start from this student folder (same compressor and ratio) instead of a new V_c and A_s
    skip_thumbnail: bool = False  # select: rank a many-tile image's thumbnail last (README: pages gain, word crops lose)
    rank_projected: bool = False  # select: count near-duplicates among A_s's outputs, not the ViT's (README)
    budget: str = "fixed"  # fixed: a student for --ratio; auto: for every ratio in --ratio-range, and by content
    ratio_range: str = "0.125,1"  # with --budget auto: LO,HI of the ratios drawn, log-uniform, one per micro-batch
    calibration_images: int = 64  # with --budget auto: training images the rarity thresholds are set on

    # --resume may change these too: FastV's K is the closing comparison's; the rest are no flags here (init: teacher)
    RESUME_MAY_CHANGE = P.TrainConfig.RESUME_MAY_CHANGE + ("fastv_layer", "init", "tokenizer", "model_config",
                                                           "image_size")

    def __post_init__(self):
        self.init = self.teacher  # the model the run starts from
        tag = "auto" if self.budget == "auto" else f"{self.ratio:g}"
        self.out = self.out or os.path.join("runs", f"distill-{self.compressor}{tag}")


def parse_args(argv=None, **defaults):
    """The command line's DistillConfig; `defaults` replace the fields' own (results.py's settings under its flags).
    posttrain's flags that build a model from scratch are not offered: the student starts as the teacher."""
    return cli.parse(DistillConfig, argv, "distill.py", __doc__, skip=("init", "tokenizer", "model_config", "image_size"),
                     defaults=defaults, choices=dict(budget=["fixed", "auto"]), **P.BOUNDS,
                     temperature=(0, float("inf")), ce_weight=0, eval_limit=0, eval_batch_size=1, calibration_images=1,
                     ratio=(0, 1))


def ratio_range(cfg):
    """--ratio-range as (lo, hi), 0 < lo < hi <= 1, holding --ratio."""
    try:
        lo, hi = (float(x) for x in cfg.ratio_range.split(","))
    except ValueError:
        raise Error(f"--ratio-range {cfg.ratio_range}: give two shares LO,HI, e.g. 0.125,1") from None
    if not 0 < lo < hi <= 1 or not lo <= cfg.ratio <= hi:
        raise Error(f"--ratio-range {cfg.ratio_range} with --ratio {cfg.ratio:g}: need 0 < LO <= ratio <= HI <= 1")
    if not C.calibrated_shares(lo):
        raise Error(f"--ratio-range {cfg.ratio_range}: the budget by content is calibrated for mean shares above LO, "
                    f"up to {C.THRESHOLD_SHARES[-1]:g}: pass a lower LO")
    return lo, hi


def draw_ratio(convs, lo, hi):
    """A ratio in [lo, hi], log-uniform (each halving as likely), drawn from the conversations' text: the same
    micro-batch draws the same ratio in any process, worker or resume."""
    rng = random.Random(zlib.crc32(json.dumps([c["conversations"] for c in convs]).encode()))
    return lo * (hi / lo) ** rng.random()


def select_flags(cfg):
    """The select options given on the command line (compress.SELECT_OPTIONS)."""
    return {k: getattr(cfg, k) for k in C.SELECT_OPTIONS}


def has_rationale(conv):
    return any(P.COT_SEP in turn["value"] for turn in conv["conversations"] if turn["from"] == "gpt")


def pair_collate(teacher, ratios=None):
    """posttrain.collate for the student, plus, for the teacher, the conversations whose answers it has targets
    for (those without a rationale: the teacher never wrote rationales) with its own image tokens:
    teacher_ids, teacher_mask, teacher_labels, and teacher_tiles (their tiles' indices in pixel_values).
    ratios (lo, hi): the student's prompt keeps a share drawn from them (draw_ratio) of each tile's tokens."""
    def collate(convs, tok, student, cfg):
        per_tile = None
        if ratios:
            per_tile = max(1, round(draw_ratio(convs, *ratios) * teacher.num_image_token))
        batch = P.collate(convs, tok, student, cfg, tile_tokens=per_tile)
        tiles = batch["pixel_values"].split(batch["num_tiles"])  # the images are loaded once
        own = torch.tensor([has_rationale(c) for c in convs])
        kept = (~own).nonzero()[:, 0].tolist()
        if not kept:
            return dict(batch, own=own)
        full = P.collate([convs[i] for i in kept], tok, teacher, cfg, pixels=[tiles[i] for i in kept])
        if full["n_labels"] != int((batch["labels"][~own] != -100).sum()):
            raise Error(f"--max-len {cfg.max_len} cuts answers from the teacher's longer sequences: raise it")
        tile_ids = torch.arange(len(batch["pixel_values"])).split(batch["num_tiles"])
        return dict(batch, own=own, teacher_ids=full["input_ids"], teacher_mask=full["attention_mask"],
                    teacher_labels=full["labels"], teacher_tiles=torch.cat([tile_ids[i] for i in kept]))
    return collate


def make_loss(teacher, T, ce_weight):
    def distill_loss(student, batch):
        n = batch["n_labels_global"]
        with torch.no_grad():
            grid = teacher.visual_grid(batch["pixel_values"])  # once, for both projectors
        at = P.answer_positions(batch["labels"])
        s_logits = student(None, batch["input_ids"], batch["attention_mask"], grid=grid, logits_mask=at,
                           tiles_per_image=batch.get("num_tiles")).float()  # needed where r varies
        # answers with a rationale (--p-reason, --cot-frac; row flag `own`) are learnt from their text alone;
        # the others from the teacher, whose answers come in the same order: row i of both is the same token
        own = batch["own"][at.nonzero()[:, 0]]
        ce = F.cross_entropy(s_logits, batch["labels"][:, 1:][at[:, :-1]], reduction="none")
        kl, agree = s_logits.new_zeros(()), 0
        if "teacher_ids" in batch:
            with torch.no_grad():
                t_logits = teacher(None, batch["teacher_ids"], batch["teacher_mask"], grid=grid[batch["teacher_tiles"]],
                                   logits_mask=P.answer_positions(batch["teacher_labels"])).float()
            s = s_logits[~own]
            kl = (F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t_logits / T, -1), log_target=True,
                           reduction="none").sum(-1) * T * T).sum()
            agree = (s.argmax(-1) == t_logits.argmax(-1)).sum().item()
        loss = kl + ce_weight * ce[~own].sum() + ce[own].sum()
        # per answer token, all of them: rationale tokens add no KL and no agreement
        return loss / n, dict(kl=kl.item() / n, ce=ce.sum().item() / n, agree=agree / n)
    return distill_loss


def start_student(cfg, teacher, device, dtype, own_llm):
    """A new student (make_student), or the one in --student. The ViT is the teacher's (one ViT runs for
    both); so is the LLM while the student's equals it and does not learn: a copy when it learns, so that
    the teacher's targets stay those of the uncompressed model."""
    if not cfg.student:
        student = C.make_student(teacher, cfg.compressor, cfg.ratio, **select_flags(cfg),
                                 ratio_range=ratio_range(cfg) if cfg.budget == "auto" else None)
    else:
        student = M.load_model(cfg.student, device, dtype, build_compressor=C.build)
        record = student.config.compressor
        if not record:
            raise Error(f"--student {cfg.student} has no compressor: pass a folder distill.py wrote (a teacher is "
                        "--teacher)")
        want = {"method": cfg.compressor, "ratio": cfg.ratio}
        if {k: record[k] for k in want} != want:
            raise Error(f"--student {cfg.student} has compressor {record}, not {want}: pass its --compressor and --ratio")
        if record.get("ratio_range") != (list(ratio_range(cfg)) if cfg.budget == "auto" else None):
            raise Error(f"--student {cfg.student} was trained for ratios {record.get('ratio_range') or cfg.ratio}: "
                        "pass --budget auto and its --ratio-range for a range, --budget fixed for one ratio")
        on = {k: True for k, v in select_flags(cfg).items() if v}
        if on:  # options switched on for a student trained without them
            student.config = replace(student.config, compressor=dict(record) | on)
            for k, v in C.select_options(student.config).items():
                setattr(student.compressor, k, v)
        same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
        if not same(student.vision_model, teacher.vision_model):
            raise Error(f"--student {cfg.student}: its ViT differs from the teacher's, and distillation runs "
                               "the teacher's ViT for both")
        student.vision_model = teacher.vision_model
        if same(student.language_model, teacher.language_model):
            student.language_model = teacher.language_model
    if own_llm and student.language_model is teacher.language_model:
        student.language_model = copy.deepcopy(teacher.language_model)
    return student


def calibrate_thresholds(cfg, teacher, student, records):
    """--budget auto's rarity thresholds (compress.calibrate), set on the run's first --calibration-images training
    images, into the student's config.compressor["thresholds"]."""
    p = next(teacher.parameters())
    with torch.no_grad(), torch.autocast(p.device.type, torch.bfloat16, enabled=p.device.type == "cuda"):
        grids = [teacher.visual_grid(P.load_tiles(P.conversation_at(i, cfg, records), teacher, cfg).to(
            p.device, p.dtype)) for i in range(cfg.calibration_images)]  # as in training: autocast on GPUs
        table = C.calibrate(student.compressor, grids, student.mlp1)
    student.config = replace(student.config, compressor=dict(student.config.compressor, thresholds=table))


def heldout_set(cfg):
    """The held-out family's annotation of the comparison's task, or None (--eval-heldout '', or --eval-data given:
    the comparison is then on the user's set alone)."""
    if cfg.eval_data and cfg.eval_heldout not in ("", DistillConfig.eval_heldout):
        raise Error("--eval-data and --eval-heldout: the comparison runs on the user's set alone; drop --eval-heldout")
    if not cfg.eval_heldout or cfg.eval_data:
        return None
    if not os.path.isdir(path := os.path.join(cfg.eval_heldout, cfg.eval_task)):
        raise Error(f"--eval-heldout {cfg.eval_heldout} has no {cfg.eval_task}/ set; python data/build.py "
                    "--heldout-family writes it, or pass --eval-heldout ''")
    return path


def pool_fits(ratio, side):
    """Whether pool's windows of 1/ratio tokens tile a side x side token grid."""
    try:
        return bool(C.window_for(ratio, side, side))
    except C.CompressError:
        return False


def compare(cfg, student_dir):
    """Teacher, the training-free baselines at the same ratio and the student on one task, on the shipped set (or
    --eval-data) and the held-out family's: a table."""
    stage = "stage I+II" if "llm" in cfg.trainable.split(",") else "stage I"  # stage II: the LLM learns too
    rows = [("teacher", cfg.teacher, "none", None, "fixed"), (f"pool {cfg.ratio:g}", cfg.teacher, "pool", cfg.ratio,
            "fixed"), (f"FastV {cfg.ratio:g} (K={cfg.fastv_layer})", cfg.teacher, "fastv", cfg.ratio, "fixed"),
            (f"FCoT {stage} ({cfg.compressor} {cfg.ratio:g})", student_dir, "none", None, "fixed")]
    if cfg.budget == "auto":
        rows.append((f"FCoT {stage} auto ({cfg.compressor}, mean {cfg.ratio:g} on training images)", student_dir,
                     "none", cfg.ratio, "auto"))
    results, heldout, side = [], heldout_set(cfg), None
    for name, folder, method, ratio, budget in rows:
        if method == "pool" and not pool_fits(ratio, side):  # a ranged student's ratio need not be 1/k
            continue
        base = E.EvalConfig(task=cfg.eval_task, model=folder, limit=cfg.eval_limit or None, method=method, ratio=ratio,
                            batch_size=cfg.eval_batch_size, budget=budget, fastv_layer=cfg.fastv_layer)
        model, tok, ran = E.load_model(base), load_tokenizer(folder), []
        side = side or math.isqrt(model.num_image_token)  # the teacher's (the first row's) token grid
        for data, tag in ((cfg.eval_data or None, ""), (heldout, "_heldout"))[:1 + bool(heldout)]:
            ecfg = replace(base, data=data, out=os.path.join(
                cfg.out, "eval", f"{cfg.eval_task}{tag}_{name.split(' (')[0].replace(' ', '_')}.jsonl"))
            ran.append(E.evaluate(model, tok, cfg.eval_task, **asdict(ecfg)))
            if method == "fastv":  # the LLM's input keeps every token; layers >= K see `ratio` of them
                ran[-1]["visual_tokens_after_k"] = ran[-1]["visual_tokens_per_image"] * ratio
        results.append(dict(name=name, **ran[0], **({"heldout": ran[1]} if heldout else {})))
    t = results[0]
    pct = lambda r, t: f"{r['score']:.1f} | {100 * r['score'] / max(t['score'], 1e-9):.1f}%"
    lines = [f"| {cfg.eval_task} | visual tokens / image | LLM prefill FLOPs vs teacher | {t['metric']} | % of teacher |"
             + (f" {t['metric']}, held-out family | % of teacher |" if heldout else ""),
             "|---|---|---|---|---|" + "---|---|" * bool(heldout)]
    for r in results:
        tokens = f"{r['visual_tokens_per_image']:.0f}" + (f" -> {r['visual_tokens_after_k']:.0f} after layer "
                                                           f"{cfg.fastv_layer}" if "visual_tokens_after_k" in r else "")
        flops = "-" if None in (r["llm_prefill_gflops"], t["llm_prefill_gflops"]) else \
            f"{r['llm_prefill_gflops'] / t['llm_prefill_gflops']:.2f}x"
        lines.append(f"| {r['name']} | {tokens} | {flops} | {pct(r, t)} |"
                     + (f" {pct(r['heldout'], t['heldout'])} |" if heldout else ""))
    table = "\n".join(lines)
    cli.write_json(os.path.join(cfg.out, "results.json"), dict(config=asdict(cfg), rows=results))
    cli.write_text(os.path.join(cfg.out, "results.md"), table + "\n")
    print(table)
    return results


def run(cfg):
    """Train the student (stage I; stage II with llm in cfg.trainable) into cfg.out, then compare it on cfg.eval_task."""
    try:
        device = P.setup(cfg)
        rank, world = P.dist_info()
        P.check(cfg)
        if not set(cfg.trainable.split(",")) <= {"", "compressor", "projector", "llm"}:  # the ViT runs once, for both
            raise Error(f"--trainable {cfg.trainable}: distillation trains compressor, projector and, "
                        "optionally, llm (the ViT is the teacher's own; train it with posttrain.py)")
        if cfg.budget == "auto":
            if cfg.compressor != "select":
                raise Error(f"--budget auto is select's (its ranking does not depend on the ratio), not "
                            f"{cfg.compressor}'s")
            shares = C.calibrated_shares(ratio_range(cfg)[0])  # a bad range fails now, not after training
            if cfg.eval_task:
                try:  # the comparison runs the budget by content at --ratio
                    C.check_calibrated(cfg.ratio, shares)
                except C.CompressError as e:
                    raise Error(f"{e}, or --eval-task '' for no comparison") from None
        elif (cfg.ratio_range, cfg.calibration_images) != (DistillConfig.ratio_range, DistillConfig.calibration_images):
            raise Error("--ratio-range and --calibration-images are --budget auto's: add it or drop them")
        if cfg.eval_task and cfg.eval_task not in E.TASKS:
            raise Error(f"--eval-task {cfg.eval_task}: choose one of {', '.join(E.TASKS)} or '' for none")
        if cfg.eval_task:  # a missing or unanswered set fails now, not after training
            for data in (cfg.eval_data or os.path.join(E.HERE, "data", "eval", cfg.eval_task), heldout_set(cfg)):
                if data and E.read_questions(cfg.eval_task, data)[1][0]["answers"] is None:
                    raise Error(f"{data} has questions without answers (a test split): the comparison scores the "
                                "student, so pass --eval-data with a validation set, or --eval-task '' for none")
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        teacher = M.load_model(cfg.teacher, device, dtype)
        tok = load_tokenizer(cfg.teacher)
        student = start_student(cfg, teacher, device, dtype, "llm" in cfg.trainable.split(","))
        own = student.compressor.projector is not None  # V_c holds its own A_s (--budget auto's)
        if own and "projector" in cfg.trainable.split(","):
            raise Error(f"--trainable {cfg.trainable}: this student's A_s is V_c's own (compressor), and the model's "
                        "mlp1 stays the teacher's so that with nothing dropped it is the teacher: drop projector")
        cfg.trainable = cfg.trainable or ("compressor" if own else "compressor,projector")
        # a bad K fails now, not after training
        baselines.FastV(cfg.ratio, cfg.fastv_layer, teacher.config.llm.num_hidden_layers)
        student.compressor.float(), student.mlp1.float()  # the parts that may learn keep fp32 weights
        if student.language_model is not teacher.language_model:
            student.language_model.float()
        records = P.read_jsonl(cfg.data, cfg.image_root or os.path.dirname(cfg.data)) if cfg.data else None
        collate = pair_collate(teacher, ratio_range(cfg) if cfg.budget == "auto" else None)
        step = P.train(cfg, student, tok,
                       lambda s: P.micro_batches(s, cfg, tok, student, records, rank, world, collate),
                       make_loss(teacher, cfg.temperature, cfg.ce_weight))
        if rank == 0 and step >= cfg.steps:
            if cfg.budget == "auto":
                calibrate_thresholds(cfg, teacher, student, records)
            M.save_model(student, cfg.out, tokenizer_dir=cfg.teacher)
            print(f"saved the student to {cfg.out} (log: {os.path.join(cfg.out, 'log.jsonl')})", file=sys.stderr)
        P.leave_group()  # before the evaluation: rank 0 evaluates alone, the others exit
        if rank == 0 and step >= cfg.steps and cfg.eval_task:
            del teacher, student
            compare(cfg, cfg.out)
    finally:
        if P.dist.is_initialized():  # an error: no barrier, a peer may never reach it
            P.dist.destroy_process_group()


def main(argv=None):
    sys.exit(cli.run_main("distill.py", lambda: run(parse_args(argv)), M.ModelLoadError, C.CompressError))


if __name__ == "__main__":
    main()
