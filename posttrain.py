"""
Supervised post-training of InternVL2 on image conversations. Its TrainConfig and train() are the one
training loop of this repository: distill.py (stages I and II of FCoT-VL) and teacher.py extend them.

    # the tiny model from scratch on synthetic documents, tables, charts, infographics and signs
    python posttrain.py --init tiny --out runs/sft-tiny --steps 300
    # a released checkpoint on your data in InternVL's fine-tuning format; projector + LLM learn
    python posttrain.py --init /path/to/InternVL2-2B --data train.jsonl --image-root /data/images --out runs/sft-2b \
        --trainable projector,llm --lr 1e-5 --micro-batch 2 --grad-accum 8 --grad-checkpointing --workers 8
    # several GPUs, or CPU processes (gloo): the global batch is micro-batch x grad-accum x processes
    torchrun --standalone --nproc_per_node 4 posttrain.py --init tiny --out runs/sft-ddp
    # continue an interrupted run from OUT/checkpoint/ (same flags plus --resume)
    python posttrain.py --init tiny --out runs/sft-tiny --steps 300 --resume
    python -m pytest tests/test_posttrain.py -q

Sample i of a run is a function of i alone (synthetic sample seed_offset + i as one conversation, or line i mod N of
--data, shuffled per epoch): any number of processes, a resume, or --workers building batches ahead take the same
steps. OUT/ ends as an InternVL2 checkpoint folder with log.jsonl (the loss curve) and checkpoint/ (no pickle).
"""
import contextlib, functools, glob, json, math, os, random, shutil, sys, time, warnings
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

import cli
import compress
import model as M
from cli import Error
from data import synth
from evaluate import COT_ANSWER as EVAL_COT_ANSWER, PROMPT as EVAL_PROMPT, model_identity
from tokenizer import load_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
TRANSCRIBE = "Transcribe all the text in the image."
SHORT = " " + EVAL_PROMPT  # the official eval prompt, after a space as InternVL's eval script
COT_SEP = "\n" + EVAL_COT_ANSWER  # a chain-of-thought target is rationale + COT_SEP + answer (what evaluate.py scores)
PARTS = {"vision": "vision_model.", "projector": "mlp1.", "llm": "language_model.", "compressor": None}


@dataclass
class TrainConfig:
    init: str = "tiny"  # a checkpoint folder, or tiny: tiny_config from scratch
    tokenizer: str = os.path.join(HERE, "data", "tokenizer")  # tokenizer folder of --init tiny
    model_config: str = ""  # JSON overriding tiny_config, e.g. {"vision": {"hidden_size": 64}, "llm": {...}}
    image_size: int = 224  # tile size of --init tiny
    out: str = "runs/posttrain"  # run folder: the final checkpoint, log.jsonl, checkpoint/
    data: str = ""  # InternVL fine-tuning JSONL ('': synthetic conversations)
    image_root: str = ""  # folder the JSONL image paths are relative to ('': the folder of --data)
    seed_offset: int = 0  # synthetic sample i has seed seed_offset + i (training seeds stay < 10**9)
    kinds: str = ",".join(synth.KINDS)  # synthetic image kinds, cycled by seed
    p_transcribe: float = 0.2  # share of transcription conversations (the three shares are normalised)
    p_qa: float = 0.5  # share of extractive QA, with the official short-answer prompt
    p_reason: float = 0.3  # share of multi-fact reasoning questions
    cot_frac: float = 0.5  # share of reasoning answered as rationale + "\nAnswer: " + answer
    qa_turns: int = 1  # pack up to this many QA turns about one image into a conversation
    max_num: int = 0  # most dynamic tiles, a thumbnail added (0: the model's max_dynamic_patch)
    max_len: int = 2048  # longer conversations are cut (counted in the log's "truncated")
    trainable: str = "all"  # comma list of vision, projector, compressor, llm, all
    lr: float = 3e-4  # peak learning rate
    lr_vision: float = 0.0  # peak lr of vision_model (0: --lr)
    lr_projector: float = 0.0  # of mlp1 (0: --lr)
    lr_llm: float = 0.0  # of language_model (0: --lr)
    lr_compressor: float = 0.0  # of parameters named *compressor* (0: --lr)
    min_lr_frac: float = 0.1  # the cosine ends at this fraction of the peak
    warmup: int = 20  # linear warmup steps
    weight_decay: float = 0.05  # AdamW's, not on 1-D tensors (norms, biases)
    grad_clip: float = 1.0  # clip the global gradient norm (0: off)
    steps: int = 300  # optimizer steps
    micro_batch: int = 4  # conversations per forward pass per process
    grad_accum: int = 1  # micro-batches per step; global batch = micro-batch x grad-accum x processes
    grad_checkpointing: bool = False  # recompute ViT blocks and decoder layers in the backward pass
    save_every: int = 50  # steps between checkpoints in OUT/checkpoint (0: only at the end)
    stop_at: int = 0  # leave after this step with a checkpoint, as a preempted job would
    resume: bool = False  # continue the run in OUT from its checkpoint
    seed: int = 0  # model init and the JSONL shuffle
    device: str = ""  # cpu or cuda ('': cuda if available)
    threads: int = 0  # CPU threads per process (0: cores / processes on this machine)
    workers: int = 0  # processes per training process that build batches ahead (0: built in the loop)

    # what --resume may change: how the run runs, not what it learns (the global batch is checked apart), and the
    # evaluations along the way (eval_*); a class attribute, not a flag
    RESUME_MAY_CHANGE = ("out", "resume", "stop_at", "save_every", "threads", "workers", "device", "micro_batch",
                         "grad_accum", "grad_checkpointing")


SYNTHETIC_FLAGS = ("seed_offset", "kinds", "p_transcribe", "p_qa", "p_reason", "cot_frac", "qa_turns")  # unused with --data

# the flags' ranges, checked as they are parsed (distill.py's and teacher.py's too)
BOUNDS = dict(image_size=28, seed_offset=0, max_num=(-1, cli.MAX_TILES), lr=(0, float("inf")), lr_vision=0,
              lr_projector=0, lr_llm=0, lr_compressor=0, min_lr_frac=0, weight_decay=0, grad_clip=0, save_every=0,
              stop_at=0, threads=0, workers=0, p_transcribe=0, p_qa=0, p_reason=0)


def parse_args(argv=None):
    return cli.parse(TrainConfig, argv, "posttrain.py", __doc__, **BOUNDS)


def make_conversation(sample, rng, cfg):
    """A synth sample -> {"image", "conversations": [{"from": "human" | "gpt", "value"}, ...], "sample"}."""
    r = rng.random() * (cfg.p_transcribe + cfg.p_qa + cfg.p_reason)
    if r >= cfg.p_transcribe + cfg.p_qa and sample["reasoning"]:
        q = rng.choice(sample["reasoning"])
        turns = [(q["question"], q["rationale"] + COT_SEP + q["answer"]) if rng.random() < cfg.cot_frac
                 else (q["question"] + SHORT, q["answer"])]
    elif r >= cfg.p_transcribe and sample["qa"]:
        qa = rng.sample(sample["qa"], rng.randint(1, min(cfg.qa_turns, len(sample["qa"]))))
        turns = [(q["question"] + SHORT, q["answer"]) for q in qa]
    else:
        turns = [(TRANSCRIBE, sample["transcription"])]
    turns[0] = ("<image>\n" + turns[0][0], turns[0][1])
    conv = [{"from": who, "value": text} for q, a in turns for who, text in (("human", q), ("gpt", a))]
    return {"image": sample["image"], "conversations": conv, "sample": sample}


def read_jsonl(path, image_root):
    """InternVL's fine-tuning format, one object a line (the errors below spell it out)."""
    if not os.path.isfile(path):
        raise Error(f"--data {path} does not exist")
    records = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{path} line {n}"
            try:
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                r = json.loads(line)
                json.dumps(r, ensure_ascii=False).encode("utf-8")  # an unpaired surrogate escape fails here
            except UnicodeDecodeError as e:
                raise Error(f"{where} is not UTF-8 text ({e.reason}): save the file as UTF-8") from None
            except UnicodeEncodeError:
                raise Error(f"{where} holds an unpaired surrogate escape (\\ud800 to \\udfff): fix that string") \
                    from None
            except json.JSONDecodeError as e:
                raise Error(f"{where} is not valid JSON ({e.msg}): write one JSON object per line") from None
            if not isinstance(r, dict) or not isinstance(r.get("image"), str):
                raise Error(f'{where} has no "image" path: each line needs '
                            f'{{"image": "rel/path.png", "conversations": [...]}}')
            turns = r.get("conversations")
            if not (isinstance(turns, list) and turns and len(turns) % 2 == 0 and all(
                    isinstance(t, dict) and t.get("from") == ("human", "gpt")[i % 2] and isinstance(t.get("value"), str)
                    for i, t in enumerate(turns))):
                raise Error(f'{where}: "conversations" must alternate {{"from": "human", "value": ...}} and '
                            f'{{"from": "gpt", "value": ...}}, starting with human')
            if any(M.IMG_CONTEXT in t["value"] for t in turns):  # the tokenizer reads it as an image feature's slot
                raise Error(f"{where} contains {M.IMG_CONTEXT}, the token that marks image features: remove it "
                            "(the image goes in as <image>)")
            image = os.path.join(image_root, r["image"])
            if not os.path.isfile(image):
                raise Error(f"{where}: image {image} not found: fix the path or --image-root")
            records.append({"image": image, "conversations": turns, "line": n})
    if not records:
        raise Error(f"--data {path} holds no conversations")
    return records


@functools.lru_cache(maxsize=2)
def _epoch_order(n, seed, epoch):
    order = list(range(n))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


def conversation_at(index, cfg, records=None):
    """Sample `index` of the run: a function of the index alone (any process, any resume)."""
    if records is not None:
        epoch, j = divmod(index, len(records))
        return records[_epoch_order(len(records), cfg.seed, epoch)[j]]
    seed = cfg.seed_offset + index
    kinds = cfg.kinds.split(",")
    return make_conversation(synth.make_sample(kinds[seed % len(kinds)], seed), random.Random(f"conv:{seed}"), cfg)


def next_turn_text(question, template):
    """What chat_prompt puts between one answer's <|im_end|> and the next answer (the template stays in model.py)."""
    head = M.chat_prompt("", None, template) + M.STOP_TOKEN
    return M.chat_prompt(question, None, template, history=[("", "")])[len(head):]


def load_tiles(conv, model, cfg):
    """A conversation's image as tiles [n, 3, S, S]."""
    mc = model.config
    try:  # a conversation may carry its own tile budget, as InternVL's per-dataset max_dynamic_patch
        return M.load_image(conv["image"], conv.get("max_num") or cfg.max_num or mc.max_dynamic_patch,
                            mc.force_image_size, use_thumbnail=mc.use_thumbnail)
    except ValueError as e:
        raise Error(f"{e}: replace the file or drop its line") from None


def collate(convs, tok, model, cfg, pixels=None, tile_tokens=None):
    """Conversations (pixels: their tiles, if already loaded) -> a right-padded batch: input_ids, labels (-100 but on
    answers), attention_mask, pixel_values, num_tiles, n_labels, n_tokens, truncated, convs. The first prompt is
    chat_prompt's text with its IMG_CONTEXT tokens, tile_tokens per tile (default: model.num_image_token); each
    answer is encoded alone plus <|im_end|>, as decoded."""
    mc, end, img = model.config, tok.token_to_id(M.STOP_TOKEN), model.img_context_token_id
    per_tile = tile_tokens or model.num_image_token
    if per_tile is None:
        raise Error("this student's visual tokens follow the content (--budget auto): train it through distill.py")
    rows, truncated = [], 0
    for conv, pv in zip(convs, pixels or [None] * len(convs)):
        pv = load_tiles(conv, model, cfg) if pv is None else pv
        ids, labels, turns = [], [], conv["conversations"]
        for t in range(0, len(turns), 2):
            q, a = turns[t]["value"], turns[t + 1]["value"]
            prompt = tok.encode(M.chat_prompt(q, len(pv) * per_tile, mc.template)) if t == 0 \
                else tok.encode(next_turn_text(q, mc.template), bos=False)
            answer = tok.encode(a, bos=False) + [end]
            ids += prompt + answer
            labels += [-100] * len(prompt) + answer
        if len(ids) > cfg.max_len:
            truncated += 1
            ids, labels = ids[:cfg.max_len], labels[:cfg.max_len]
            if ids.count(img) < len(pv) * per_tile:
                raise Error(f"--max-len {cfg.max_len} cuts into the image tokens ({len(pv)} tiles x "
                            f"{per_tile}): raise --max-len or lower --max-num")
        rows.append((ids, labels, pv))
    L = max(len(r[0]) for r in rows)
    input_ids = torch.tensor([ids + [0] * (L - len(ids)) for ids, _, _ in rows])
    labels = torch.tensor([lab + [-100] * (L - len(lab)) for _, lab, _ in rows])
    attention_mask = torch.tensor([[1] * len(ids) + [0] * (L - len(ids)) for ids, _, _ in rows])
    return dict(input_ids=input_ids, labels=labels, attention_mask=attention_mask,
                pixel_values=torch.cat([pv for _, _, pv in rows]), num_tiles=[len(pv) for _, _, pv in rows],
                n_labels=int((labels != -100).sum()), n_tokens=int(attention_mask.sum()), truncated=truncated,
                convs=convs)


def micro_batches(step, cfg, tok, model, records, rank, world, collate=collate):
    """This process's micro-batches of optimizer step `step`: its slice of the step's global samples, in order."""
    start = (step * world + rank) * cfg.micro_batch * cfg.grad_accum
    return [collate([conversation_at(start + a * cfg.micro_batch + j, cfg, records) for j in range(cfg.micro_batch)],
                    tok, model, cfg) for a in range(cfg.grad_accum)]


def build_model(cfg, device):
    """-> (model in train mode, tokenizer, tokenizer folder)."""
    if cfg.init != "tiny":
        model = M.load_model(cfg.init, device, build_compressor=compress.build)  # a distilled student too
        return model.train(), load_tokenizer(cfg.init), cfg.init
    tok = load_tokenizer(cfg.tokenizer)
    mc = M.tiny_config(vocab_size=tok.vocab_size, image_size=cfg.image_size)
    if cfg.model_config:
        try:
            with open(cfg.model_config, encoding="utf-8") as f:
                overrides = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise Error(f"cannot read --model-config {cfg.model_config}: {e}") from None
        for key, value in overrides.items():
            obj, items = (getattr(mc, key), value.items()) if key in ("vision", "llm") else (mc, [(key, value)])
            for k, v in items:
                if not hasattr(obj, k):
                    raise Error(f"--model-config {cfg.model_config}: unknown field {k if obj is mc else key + '.' + k}")
                setattr(obj, k, v)
    torch.manual_seed(cfg.seed)
    model = M.InternVLChat(mc)
    with torch.no_grad():  # GPT-2 style init: matrices N(0, 0.02), biases 0, norms and layer scales 1
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02)
            elif name.endswith(".bias"):
                p.zero_()
    model.img_context_token_id = tok.token_to_id(M.IMG_CONTEXT)
    return model.to(device).train(), tok, cfg.tokenizer


def part_of(name):
    if "compressor" in name:
        return "compressor"
    return next((part for part, prefix in PARTS.items() if prefix and name.startswith(prefix)), "other")


def set_trainable(model, spec):
    parts = set(spec.split(","))
    if parts - set(PARTS) - {"all"}:
        raise Error(f"--trainable {spec}: choose from {', '.join([*PARTS, 'all'])}")
    for name, p in model.named_parameters():
        p.requires_grad_("all" in parts or part_of(name) in parts)
    if not any(p.requires_grad for p in model.parameters()):
        raise Error(f"--trainable {spec} selects no parameter of this model")


def build_optimizer(model, cfg):
    """AdamW over the trainable parameters: a group per (part, decay); no weight decay on 1-D tensors."""
    groups = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            part, decay = part_of(name), p.ndim >= 2
            g = groups.setdefault((part, decay), {"params": [], "name": part + ("" if decay else ".no_decay"),
                                                  "base_lr": getattr(cfg, f"lr_{part}", 0.0) or cfg.lr,
                                                  "weight_decay": cfg.weight_decay if decay else 0.0})
            g["params"].append(p)
    return torch.optim.AdamW(list(groups.values()), lr=cfg.lr, betas=(0.9, 0.95))


def lr_at(step, cfg):
    """Multiplier of the groups' base lr at step `step` (0-based): linear warmup, then cosine to min_lr_frac."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t))


def enable_grad_checkpointing(model):
    """Recompute each ViT block and decoder layer in the backward pass (model.py stays as it is)."""
    from torch.utils.checkpoint import checkpoint
    for block in [*model.vision_model.encoder.layers, *model.language_model.model.layers]:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def answer_positions(labels):
    """[B, L] bool: the positions whose logits predict a label token (the one after them)."""
    at = torch.zeros_like(labels, dtype=torch.bool)
    at[:, :-1] = labels[:, 1:] != -100
    return at


def default_lm_loss(model, batch):
    """Summed next-token cross-entropy on the label tokens / the label tokens of the whole global batch."""
    at = answer_positions(batch["labels"])
    logits = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], logits_mask=at)
    loss = F.cross_entropy(logits.float(), batch["labels"][:, 1:][at[:, :-1]], reduction="sum")
    return loss / batch["n_labels_global"], {}


def save_checkpoint(path, model, opt, state):
    """Replace folder `path` atomically: model/optimizer/rng .safetensors + state.json (step, param groups, ...)."""
    tmp, old = path + ".tmp", path + ".old"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    # trainable weights only: frozen ones are --init's (a distillation checkpoint skips the whole ViT and LLM)
    save_file({k: p.detach().cpu().contiguous() for k, p in model.named_parameters() if p.requires_grad},
              os.path.join(tmp, "model.safetensors"))
    sd = opt.state_dict()
    save_file({f"{i}.{k}": v.cpu().contiguous() for i, s in sd["state"].items() for k, v in s.items()},
              os.path.join(tmp, "optimizer.safetensors"))
    rng = {"torch": torch.get_rng_state()}  # the data seeds its own generators; nothing draws from random or numpy
    if torch.cuda.is_available():
        rng["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    save_file(rng, os.path.join(tmp, "rng.safetensors"))
    with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as f:
        json.dump(dict(state, param_groups=sd["param_groups"]), f)
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(path):
        os.replace(path, old)
    os.replace(tmp, path)  # a kill between the two renames leaves path.old, which load_checkpoint takes
    shutil.rmtree(old, ignore_errors=True)


def read_weights(path, fix):
    """load_file(path), or one line saying the file is no readable safetensors file and how to `fix` that."""
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise Error(f"{path} is not a readable safetensors file ({e}): {fix}") from None


# what a run learns from: a resume needs the same bytes
INPUTS = ("init", "teacher", "student", "vision_from", "data", "model_config", "tokenizer")


def input_identities(cfg, known=None):
    """{flag: evaluate.model_identity} of the run's INPUTS that are files or checkpoint folders; an identity in `known`
    is reused while its files' stamps hold."""
    known, out = known or {}, {}
    for k in INPUTS:
        path = getattr(cfg, k, "")
        if k == "tokenizer" and (getattr(cfg, "init", "") != "tiny" or getattr(cfg, "teacher", "")):
            continue  # the tokenizer folder is read only by a model built from scratch
        if not path or not os.path.exists(path):
            continue
        if os.path.isdir(path) and k == "vision_from":  # a glyph stage's run folder: teacher.py reads its checkpoint
            path = os.path.join(path, "checkpoint", "model.safetensors")
        out[k] = model_identity(path, known.get(k))
    return out


def load_checkpoint(path, model, opt=None):
    """Restore weights (and optimizer, RNG) in place; -> the state dict saved with them."""
    path = next((p for p in (path, path + ".old") if os.path.exists(os.path.join(p, "state.json"))), path)
    if not os.path.exists(os.path.join(path, "state.json")):
        raise Error(f"no checkpoint in {path} to resume: drop --resume to start a new run")
    fix = f"restore it, or delete {path} to start the run over"
    weights, params = read_weights(os.path.join(path, "model.safetensors"), fix), dict(model.named_parameters())
    trainable = {k for k, p in params.items() if p.requires_grad}
    # every trainable weight, and nothing foreign (a checkpoint may also hold frozen ones: they are --init's)
    if not trainable <= set(weights) or any(k not in params or params[k].shape != t.shape for k, t in weights.items()):
        raise Error(f"checkpoint {path} does not match the model built from --init/--model-config and "
                    f"--trainable: use the run's flags")
    with torch.no_grad():
        for k, t in weights.items():
            params[k].copy_(t)
    with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
        state = json.load(f)
    if opt is not None:
        flat, st = read_weights(os.path.join(path, "optimizer.safetensors"), fix), {}
        for key, t in flat.items():
            i, name = key.split(".", 1)
            st.setdefault(int(i), {})[name] = t
        try:
            opt.load_state_dict({"state": st, "param_groups": state["param_groups"]})
        except ValueError as e:
            raise Error(f"checkpoint {path}: optimizer does not match --trainable ({e})") from None
    rng = read_weights(os.path.join(path, "rng.safetensors"), fix)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(list(rng["cuda"]))
    return state


def dist_info():
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def log_until(path, step):
    """JSONL log `path` cut to its records up to `step` (a resumed run writes the later ones again; a fresh run,
    step 0, starts it empty), opened for appending. A torn last line (no newline) is dropped."""
    old = open(path, encoding="utf-8").readlines() if step and os.path.exists(path) else []
    try:
        kept = [line for line in old if line.endswith("\n") and json.loads(line)["step"] <= step]
    except (ValueError, TypeError, KeyError) as e:
        raise Error(f"{path} is not a log this script wrote ({type(e).__name__}: {e}): move it away to resume "
                    "without the curve so far") from None
    cli.write_text(path, "".join(kept))
    return open(path, "a", encoding="utf-8")


def train(cfg, model, tok, batches, loss_fn=default_lm_loss, after_step=None):
    """Run optimizer steps until cfg.steps (or cfg.stop_at); -> the step reached. batches(step) -> this process's
    micro-batches; loss_fn(model, batch) -> (loss, {name: float}): the losses (and metrics) of all micro-batches on
    all processes sum to the step's (batch["n_labels_global"], batch["n_samples_global"]: the global counts). Under
    torchrun loss_fn gets the DDP wrapper: call it to run forward, reach other methods through .module.
    after_step(step, record) runs on rank 0 after each step's log line and checkpoint: evaluate or log more there."""
    rank, world = dist_info()
    device = next(model.parameters()).device
    set_trainable(model, cfg.trainable)
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(model)
    opt, step = build_optimizer(model, cfg), 0
    ckpt, log_path = os.path.join(cfg.out, "checkpoint"), os.path.join(cfg.out, "log.jsonl")
    global_batch = cfg.micro_batch * cfg.grad_accum * world
    state = load_checkpoint(ckpt, model, opt) if cfg.resume else {}
    inputs = input_identities(cfg, state.get("inputs")) if rank == 0 else {}  # rank 0 saves them; torchrun stops all
    if cfg.resume:
        if state["global_batch"] != global_batch:
            raise Error(f"the checkpoint's global batch is {state['global_batch']}, this run's {global_batch}: "
                        f"keep micro-batch x grad-accum x processes")
        step = state["step"]
        saved, now = state.get("config", {}), asdict(cfg)
        same = lambda a, b: a == b or all(isinstance(x, str) and os.path.exists(x) for x in (a, b)) and \
            os.path.realpath(a) == os.path.realpath(b)  # one folder, however it is spelt
        if changed := [k for k in now if k in saved and not same(saved[k], now[k]) and
                       k not in cfg.RESUME_MAY_CHANGE and not k.startswith("eval")]:
            raise Error(f"--resume: {ckpt} is a run with other settings ("
                        + ", ".join(f"--{k.replace('_', '-')} {saved[k]!r}, not {now[k]!r}" for k in changed)
                        + "): resume it with its own, or pass another --out for a new run")
        if changed := [k for k in inputs if inputs[k]["sha256"] != state.get("inputs", {}).get(k, inputs[k])["sha256"]]:
            raise Error(f"--resume: --{changed[0].replace('_', '-')} {getattr(cfg, changed[0])} holds other bytes than "
                        f"when the run began: resume with the same, or pass another --out for a new run")
    trainable = [p for p in model.parameters() if p.requires_grad]
    # (DDP warns about the grad strides of the [1, 1, C] class embedding: harmless, a copy per step)
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ddp = torch.nn.parallel.DistributedDataParallel(model, [device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    if rank == 0:
        os.makedirs(cfg.out, exist_ok=True)
        log = log_until(log_path, step)
    bar = tqdm(total=cfg.steps, initial=step, disable=rank != 0, dynamic_ncols=True, desc="posttrain")
    last, n_truncated = min(cfg.steps, cfg.stop_at or cfg.steps), 0
    stream = (batches(s) for s in range(step, last))
    if cfg.workers:  # forked processes build batches ahead, so a GPU does not wait on images (collate_fn gets a step)
        stream = iter(torch.utils.data.DataLoader(range(step, last), batch_size=None, collate_fn=batches,
                                                  num_workers=cfg.workers, pin_memory=device.type == "cuda",
                                                  prefetch_factor=4, multiprocessing_context="fork"))
    while step < last:
        t0 = time.perf_counter()
        factor = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor
        try:
            micro = next(stream)
        except Error as e:  # from a --workers process, its message ends in the worker's traceback: keep the last line
            last = str(e).strip().splitlines()[-1]
            raise Error(last.removeprefix(f"{Error.__module__}.{Error.__name__}: ")) from None
        counts = torch.tensor([[b["n_labels"], b["n_tokens"], b["truncated"], len(b["convs"])] for b in micro],
                              dtype=torch.float64).sum(0)
        if world > 1:
            dist.all_reduce(counts)
        total, metrics = 0.0, {}
        for a, b in enumerate(micro):
            b = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in b.items()}
            b.update(n_labels_global=max(1.0, counts[0].item()), n_samples_global=counts[3].item())
            with ddp.no_sync() if world > 1 and a < len(micro) - 1 else contextlib.nullcontext():
                with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                    loss, m = loss_fn(ddp, b)
                (loss * world).backward()  # DDP averages gradients over processes; the loss is a global sum
            total += loss.item()
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + float(v)
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        if not torch.isfinite(grad_norm):  # the same on every process; before the step, so no weight turns NaN
            raise Error(f"step {step + 1}: the gradient norm is {grad_norm.item()} (loss {total:.4g}): lower --lr in a "
                        "new run (another --out), or check the data")
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        sums = torch.tensor([total, *(metrics[k] for k in sorted(metrics))], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(sums)
        dt, n_truncated = time.perf_counter() - t0, n_truncated + int(counts[2])
        if rank == 0:
            rec = dict(step=step, loss=sums[0].item(), lr=cfg.lr * factor, grad_norm=grad_norm.item(),
                       samples_per_s=counts[3].item() / dt, tokens_per_s=counts[1].item() / dt,
                       label_tokens=int(counts[0]), truncated=int(counts[2]),
                       **{k: sums[i + 1].item() for i, k in enumerate(sorted(metrics))})
            log.write(json.dumps(rec) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{rec['loss']:.4f}", samples_s=f"{rec['samples_per_s']:.1f}")
            bar.update(1)
            if (cfg.save_every and step % cfg.save_every == 0) or step == last:
                save_checkpoint(ckpt, model, opt, dict(step=step, global_batch=global_batch, config=asdict(cfg),
                                                       inputs=inputs))
            if after_step is not None:
                after_step(step, rec)
    bar.close()
    if rank == 0:
        log.close()
        if n_truncated:
            print(f"warning: {n_truncated} conversations were cut to --max-len {cfg.max_len}", file=sys.stderr)
    return step


def check(cfg):
    """The settings no flag range covers; --out made and writable."""
    if cfg.image_size % 28 or cfg.min_lr_frac > 1:
        raise Error("--image-size must be a multiple of 28 (patches of 14, pixel shuffle by 2), --min-lr-frac <= 1")
    if min(cfg.steps, cfg.micro_batch, cfg.grad_accum, cfg.qa_turns, cfg.max_len) < 1 or cfg.warmup < 0:
        raise Error("--steps, --micro-batch, --grad-accum, --qa-turns and --max-len must be >= 1, --warmup >= 0")
    if min(cfg.p_transcribe, cfg.p_qa, cfg.p_reason) < 0 or cfg.p_transcribe + cfg.p_qa + cfg.p_reason <= 0 \
            or not 0 <= cfg.cot_frac <= 1:
        raise Error("--p-transcribe/--p-qa/--p-reason must be >= 0 with a positive sum, --cot-frac in [0, 1]")
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise Error(f"--out {cfg.out} is a file: pass a folder for the run (checkpoint, log, final model)")
    for name in ("teacher", "student", "init"):  # the run ends by writing its model into --out
        src = getattr(cfg, name, "")
        if src and os.path.isdir(src) and os.path.realpath(src) == os.path.realpath(cfg.out):
            raise Error(f"--out {cfg.out} is the --{name} folder, which the run would overwrite: pass another --out")
    cli.writable(cfg.out, f"--out {cfg.out}")
    if set(cfg.kinds.split(",")) - set(synth.KINDS):
        raise Error(f"--kinds {cfg.kinds}: choose from {','.join(synth.KINDS)}")
    if not cfg.data and cfg.seed_offset + cfg.steps * cfg.micro_batch * cfg.grad_accum * dist_info()[1] > 10**9:
        raise Error("synthetic training seeds must stay below 10**9 (eval sets use the seeds above): "
                    "lower --seed-offset")
    run_there = os.path.exists(os.path.join(cfg.out, "checkpoint"))
    if run_there and not cfg.resume:
        raise Error(f"{cfg.out} already holds a run: add --resume to continue it or choose another --out")
    model_there = os.path.exists(os.path.join(cfg.out, "config.json")) or \
        glob.glob(os.path.join(glob.escape(cfg.out), "model*.safetensors"))
    if model_there and not run_there:
        raise Error(f"--out {cfg.out} holds a model that is not this run's (config.json or weights, no checkpoint/), "
                    "which the run would overwrite: pass another --out, or delete that model")
    if cfg.image_root and not cfg.data:
        raise Error("--image-root is the folder of --data's image paths: pass --data too, or drop it")
    if cfg.data and (flag := next((k for k in SYNTHETIC_FLAGS if getattr(cfg, k) != getattr(type(cfg), k)), None)):
        raise Error(f"--{flag.replace('_', '-')} shapes the synthetic conversations, and --data's are the file's: "
                    "drop one of them")
    if getattr(cfg, "init", "tiny") != "tiny" and (cfg.model_config or cfg.tokenizer != TrainConfig.tokenizer):
        raise Error(f"--{'model-config' if cfg.model_config else 'tokenizer'} shapes a model built from scratch (--init "
                    f"tiny); --init {cfg.init} brings its own config and tokenizer: drop the flag")


def setup(cfg):
    """Process group under torchrun (nccl on GPUs, gloo on CPUs), threads, seeds; -> this process's device."""
    world, local = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    if msg := cli.check_device(cfg.device or "cpu"):
        raise Error(msg)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    torch.manual_seed(cfg.seed)
    return device


def leave_group():
    """Under torchrun, all ranks wait for rank 0's save and shut down together (an early one can fail the run)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def run(cfg):
    """Train from cfg.init; OUT/ ends as an InternVL2 checkpoint folder."""
    try:
        device = setup(cfg)
        check(cfg)
        model, tok, tok_dir = build_model(cfg, device)
        records = read_jsonl(cfg.data, cfg.image_root or os.path.dirname(cfg.data)) if cfg.data else None
        rank, world = dist_info()
        step = train(cfg, model, tok, lambda s: micro_batches(s, cfg, tok, model, records, rank, world))
        if rank == 0 and step >= cfg.steps:
            M.save_model(model, cfg.out, tokenizer_dir=tok_dir)
            print(f"saved {cfg.out} (InternVL2 layout; log in {os.path.join(cfg.out, 'log.jsonl')})", file=sys.stderr)
        leave_group()
    finally:
        if dist.is_initialized():  # an error: no barrier, a peer may never reach it
            dist.destroy_process_group()


def main(argv=None):
    sys.exit(cli.run_main("posttrain.py", lambda: run(parse_args(argv)), M.ModelLoadError, compress.CompressError))


if __name__ == "__main__":
    main()
