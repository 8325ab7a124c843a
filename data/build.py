"""Build the shipped evaluation sets (real benchmark file layouts) and the sentencepiece tokenizer.

Commands (from the repo root, venv active):
  python data/build.py                    # everything: data/eval/** + data/eval/SHA256SUMS + data/tokenizer/*
  python data/build.py --eval             # only the eval sets
  python data/build.py --tokenizer        # only the tokenizer (--vocab-size 1000 by default)
  python data/build.py --check            # verify data/eval/ and data/eval-heldout/ against their SHA256SUMS
  python data/build.py --heldout runs/heldout/docvqa   # 128 more DocVQA-format pages, not shipped (README)
  python data/build.py --heldout-family   # data/eval-heldout/**: the held-out family's sets (data/wide.py)
  python data/build.py --train-family runs/eval-train   # the same sets in the training family, unseen seeds, not
                                          # shipped: a score there and not held out is a generalisation gap
  cd data/eval && sha256sum -c SHA256SUMS # the same with coreutils (which passes extra files)

Output is byte-identical on re-run with the same Pillow/zlib/sentencepiece versions (pinned in the venv).

Seeds: training code must draw sample seeds from [0, 10**9). The eval sets use seeds
EVAL_SEED + 10**6 * task_index + i (>= 10**9, task order as in TASKS). The tokenizer corpus uses train
seeds [0, --corpus-per-kind).

data/eval-heldout/ holds the same tasks drawn in the held-out family (fonts, layouts and phrasings never
trained on: data/wide.py), seeds from HELDOUT_FAMILY_SEED, plus the DocVQA pages' questions again,
each question in a held-out phrasing (docvqa/val_reworded.json), in a second one, written on 2026-12-06 beside
the training family's added phrasings and never trained on (docvqa/val_reworded2.json), and in a third, written on
2026-12-07 after the synonym phrasings by a helper who saw no model's answers (docvqa/val_reworded3.json).

Layout under data/eval/ (paths inside each json are relative to the task folder, as in the real sets):
  docvqa/val_v1.0.json                  DocVQA RRC envelope; images documents/<ucsf_id>_<page>.png
  infovqa/infographicsVQA_val_v1.0_withQT.json   images infographicsvqa_images/<name>.png
  chartqa/test/test_human.json, test/test_augmented.json   images test/png/<imgname>
  textvqa/TextVQA_0.5.1_val.json        images train_images/<image_id>.jpg (JPEG, as the real loaders expect)
  ocrbench/OCRBench.json                images via image_path (images/<name>.png)
  <task>/reasoning.json                 multi-fact questions, same format as the task file plus "rationale"
  <task>/samples.jsonl                  one line per image: path + words/chars boxes, transcription, qa, reasoning
All extractive questions go to the main file; reasoning questions only to reasoning.json, so they can be
reported separately. OCRBench "dataset"/"dataset_name" are synth-* labels (never "HME100k").

Tokenizer (data/tokenizer/, InternVL2 folder layout): sentencepiece BPE, byte_fallback, split_digits,
identity normalisation, no whitespace collapsing, add_dummy_prefix=False (so encode/decode round-trips and
"\\n" becomes the byte piece <0x0A>). Ids: 0 <unk>, 1 <s>, 2 </s>, 3..8 the six chat tokens (user-defined
pieces), no pad piece; the nine InternVL tokens (<img> ... </box>) are NOT in the sp model: they are added
tokens at ids vocab_size+0..8 (added_tokens.json) that the loader must split out before calling sentencepiece.
"""
import argparse, hashlib, io, json, os, random, re, shutil, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from data import wide  # noqa: E402
from data.synth import Config, KINDS, meta  # noqa: E402
from data.wide import make_sample  # noqa: E402
from evaluate import KIE_SUFFIX, PROMPT as EVAL_PROMPT  # noqa: E402
from model import SYSTEM_MESSAGE  # noqa: E402

EVAL_DIR, TOK_DIR = ROOT / "data" / "eval", ROOT / "data" / "tokenizer"
HELDOUT_DIR = ROOT / "data" / "eval-heldout"
EVAL_SEED = 10 ** 9
HELDOUT_SEED = 1_500_000_000  # --heldout: far from every shipped set's seeds
HELDOUT_FAMILY_SEED = 2 * 10 ** 9  # --heldout-family
TRAIN_FAMILY_SEED = 25 * 10 ** 8  # --train-family
TASKS = ("docvqa", "chartqa", "infovqa", "textvqa", "ocrbench")
SYSTEM, PROMPT = SYSTEM_MESSAGE, EVAL_PROMPT  # in the tokenizer corpus: every prompt carries them, keep them short
CROP_QUESTION = "what is written in the image?"  # OCRBench's text-recognition question
CHAT_TOKENS = ["<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>", "<|im_end|>", "<|im_start|>"]
IMG_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
EVAL_CFG = Config()  # built-in font only (truetype=False): machine-independent
HELDOUT_CFG = Config(family="heldout")  # its fonts ship in data/fonts
FAMILY_SETS = {"heldout": dict(seed=HELDOUT_FAMILY_SEED, cfg=HELDOUT_CFG),  # build_eval's settings per family
               "train": dict(seed=TRAIN_FAMILY_SEED, cfg=Config(family="train"))}


def write_bytes(path, data):
    """Atomic write: tmp file in the same folder, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path, obj):
    write_bytes(path, json.dumps(obj, ensure_ascii=False).encode())


def write_jsonl(path, rows):
    write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())


def save_image(path, img, fmt="PNG"):
    b = io.BytesIO()
    if fmt == "PNG":
        img.save(b, "PNG", optimize=True)
    else:  # 4:4:4 keeps small text sharp
        img.save(b, "JPEG", quality=90, subsampling=0)
    write_bytes(path, b.getvalue())


def samples(task, kinds, n, seed=EVAL_SEED, cfg=EVAL_CFG):
    """n samples for a task, cycling through kinds; seeds are the documented eval range."""
    base = seed + 10 ** 6 * TASKS.index(task)
    for i in range(n):
        yield i, make_sample(kinds[i % len(kinds)], base + i, cfg)


def pick(rng, qa, k):
    return rng.sample(qa, min(k, len(qa)))


def sidecar(rel, s):
    return {"image": rel, **meta(s)}


# ---------------------------------------------------------------- one writer per benchmark
def build_docvqa(out, n=64, q_per=4, seed=EVAL_SEED, cfg=EVAL_CFG):
    """A held-out family's set also gets val_reworded.json, val_reworded2.json and val_reworded3.json: the same
    questions in its three held-out phrasings (data/wide.py)."""
    rng, data, reas, side = random.Random("docvqa"), [], [], []
    for i, s in samples("docvqa", ["doc", "table"], n, seed, cfg):
        ucsf, page = f"syn{i:04d}", "1"
        rel = f"documents/{ucsf}_{page}.png"
        save_image(out / rel, s["image"])
        side.append(sidecar(rel, s))
        common = {"image": rel, "docId": i, "ucsf_document_id": ucsf, "ucsf_document_page_no": page}
        for q in pick(rng, s["qa"], q_per):
            data.append({"questionId": 100000 + len(data), "question": q["question"], "question_types": [q["type"]],
                         **common, "answers": [q["answer"]], "data_split": "val", "reworded": q.get("reworded"),
                         "reworded2": wide.reworded2(q) if "reworded" in q else None,
                         "reworded3": wide.reworded3(q) if "reworded" in q else None})
        for q in s["reasoning"][:1]:
            reas.append({"questionId": 900000 + len(reas), "question": q["question"], "question_types": ["reasoning"],
                         **common, "answers": [q["answer"]], "data_split": "val", "rationale": q["rationale"]})
    env = {"dataset_name": "docvqa", "dataset_split": "val", "dataset_version": "1.0"}
    plain = [{k: v for k, v in d.items() if not k.startswith("reworded")} for d in data]  # the real format
    if cfg.family != "shipped":
        for field in ("reworded", "reworded2", "reworded3"):
            write_json(out / f"val_{field}.json", {**env, "data": [dict(p, question=d[field]) for p, d in zip(plain, data)]})
    write_json(out / "val_v1.0.json", {**env, "data": plain})
    write_json(out / "reasoning.json", {**env, "data": reas})
    write_jsonl(out / "samples.jsonl", side)


INFO_OPS = {"sum": ["arithmetic"], "difference": ["arithmetic"], "comparison": ["sorting"]}


def build_infovqa(out, n=60, q_per=4, seed=EVAL_SEED, cfg=EVAL_CFG):
    rng, data, reas, side = random.Random("infovqa"), [], [], []
    for i, s in samples("infovqa", ["info"], n, seed, cfg):
        name = f"{50000 + i}.png"
        save_image(out / "infographicsvqa_images" / name, s["image"])
        side.append(sidecar("infographicsvqa_images/" + name, s))
        for q in pick(rng, s["qa"], q_per):
            data.append({"questionId": 200000 + len(data), "question": q["question"], "image_local_name": name,
                         "answers": [q["answer"]], "data_split": "val", "answer_type": ["single span"],
                         "evidence": ["text" if q["type"] == "text" else "figure"], "operation/reasoning": []})
        for q in s["reasoning"]:
            reas.append({"questionId": 920000 + len(reas), "question": q["question"], "image_local_name": name,
                         "answers": [q["answer"]], "data_split": "val",
                         "answer_type": ["single span" if q["op"] == "comparison" else "non-extractive"],
                         "evidence": ["figure"], "operation/reasoning": INFO_OPS[q["op"]], "rationale": q["rationale"]})
    env = {"dataset_name": "infographicsvqa", "dataset_split": "val", "dataset_version": "1.0"}
    write_json(out / "infographicsVQA_val_v1.0_withQT.json", {**env, "data": data})
    write_json(out / "reasoning.json", {**env, "data": reas})
    write_jsonl(out / "samples.jsonl", side)


def build_chartqa(out, n=64, q_per=4, seed=EVAL_SEED, cfg=EVAL_CFG):
    rng, splits, reas, side = random.Random("chartqa"), {"human": [], "augmented": []}, [], []
    for i, s in samples("chartqa", ["chart"], n, seed, cfg):
        name = f"syn_{i:05d}.png"
        save_image(out / "test" / "png" / name, s["image"])
        side.append(sidecar("test/png/" + name, s))
        split = splits["augmented" if i % 2 == 0 else "human"]  # alternate images between the two files
        split += [{"imgname": name, "query": q["question"], "label": q["answer"]} for q in pick(rng, s["qa"], q_per)]
        reas += [{"imgname": name, "query": q["question"], "label": q["answer"], "rationale": q["rationale"]} for q in s["reasoning"]]
    for k, v in splits.items():
        write_json(out / "test" / f"test_{k}.json", v)
    write_json(out / "reasoning.json", reas)
    write_jsonl(out / "samples.jsonl", side)


def human_answers(a):
    """10 'annotator' answers: mostly exact, a few case variants (all equal after VQA normalisation)."""
    return [a] * 7 + [a.lower()] * 2 + [a.title()]


def textvqa_item(q, iid, s, qid):
    return {"question": q["question"], "question_id": qid, "image_id": iid, "image_classes": ["Street sign", "Traffic sign"],
            "flickr_original_url": "", "flickr_300k_url": "", "image_width": s["width"], "image_height": s["height"],
            "answers": human_answers(q["answer"]), "question_tokens": re.findall(r"[a-z0-9']+", q["question"].lower()),
            "set_name": "val"}


def build_textvqa(out, n=84, q_per=3, seed=EVAL_SEED, cfg=EVAL_CFG):
    rng, data, reas, side = random.Random("textvqa"), [], [], []
    for i, s in samples("textvqa", ["scene"], n, seed, cfg):
        iid = hashlib.sha256(f"textvqa{i}".encode()).hexdigest()[:16]  # real ids are 16 hex chars
        save_image(out / "train_images" / f"{iid}.jpg", s["image"], "JPEG")
        side.append(sidecar(f"train_images/{iid}.jpg", s))
        data += [textvqa_item(q, iid, s, 300000 + len(data) + j) for j, q in enumerate(pick(rng, s["qa"], q_per))]
        reas += [{**textvqa_item(q, iid, s, 930000 + len(reas)), "rationale": q["rationale"]} for q in s["reasoning"]]
    env = {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1"}
    write_json(out / "TextVQA_0.5.1_val.json", {**env, "data": data})
    write_json(out / "reasoning.json", {**env, "data": reas})
    write_jsonl(out / "samples.jsonl", side)


def crop_run(s, rng, pad=4):
    """(word, box, its chars): one word, padded, that no other character touches: a Regular Text
    Recognition image (and a training one for teacher.py)."""
    W, H = s["width"], s["height"]
    for w in rng.sample(s["words"], len(s["words"])):
        b = [max(0, w["box"][0] - pad), max(0, w["box"][1] - pad), min(W, w["box"][2] + pad), min(H, w["box"][3] + pad)]
        inside = [c for c in s["chars"] if c["box"][0] < b[2] and c["box"][2] > b[0] and c["box"][1] < b[3] and c["box"][3] > b[1]]
        if len(w["text"]) >= 3 and len(inside) == len(w["text"]):
            return w["text"], b, inside
    return None


OCRB_TYPES = [  # (type, dataset label, kinds, questions per image)
    ("Regular Text Recognition", "synth-words", ["doc", "table", "scene", "info"], 1),
    ("Doc-oriented VQA", "synth-docs", ["doc", "chart", "info"], 2),
    ("Key Information Extraction", "synth-receipts", ["table", "doc"], 2),
    ("Scene Text-centric VQA", "synth-scenes", ["scene"], 2),
]


def build_ocrbench(out, per_type=60, seed=EVAL_SEED, cfg=EVAL_CFG):
    rng, items, reas, side, j = random.Random("ocrbench"), [], [], [], 0
    for typ, ds, kinds, q_per in OCRB_TYPES:
        got = 0
        while got < per_type:
            s = make_sample(kinds[j % len(kinds)], seed + 10 ** 6 * TASKS.index("ocrbench") + j, cfg)
            name, j = f"images/{j:05d}.png", j + 1
            if typ == "Regular Text Recognition":
                r = crop_run(s, rng)
                if r is None:
                    continue
                qs = [{"question": CROP_QUESTION, "answer": r[0]}]
                save_image(out / name, s["image"].crop(r[1]))
                side.append({"image": name, "kind": s["kind"], "seed": s["seed"], "crop_of_word": r[0]})
            else:
                qs = [dict(q, question=q["question"] + (KIE_SUFFIX if typ.startswith("Key") else "")) for q in pick(rng, s["qa"], q_per)]
                save_image(out / name, s["image"])
                side.append(sidecar(name, s))
                reas += [{"id": 90000 + len(reas), "dataset_name": ds, "dataset": ds, "image_path": name, "question": q["question"],
                          "answers": [q["answer"]], "type": "Reasoning", "rationale": q["rationale"]} for q in s["reasoning"][:1]]
            qs = qs[:per_type - got]
            items += [{"id": len(items) + k, "dataset_name": ds, "dataset": ds, "image_path": name, "question": q["question"],
                       "answers": [q["answer"]], "type": typ} for k, q in enumerate(qs)]
            got += len(qs)
    write_json(out / "OCRBench.json", items)
    write_json(out / "reasoning.json", reas)
    write_jsonl(out / "samples.jsonl", side)


def sha256sums(d):
    files = sorted(p for p in Path(d).rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    return "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(d).as_posix()}\n" for p in files)


def build_eval(root=EVAL_DIR, family=None):
    """Every task's set into root: the shipped family's, or data/wide.py's family "heldout" or "train"."""
    tmp, old = root.with_name(root.name + ".tmp"), root.with_name(root.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    kw = FAMILY_SETS[family] if family else {}
    for t in TASKS:
        globals()["build_" + t](tmp / t, **kw)
        print(f"built {t}")
    write_bytes(tmp / "SHA256SUMS", sha256sums(tmp).encode())
    shutil.rmtree(old, ignore_errors=True)  # swap folders so a crash never leaves a half-written set
    if root.exists():
        os.replace(root, old)
    os.replace(tmp, root)
    shutil.rmtree(old, ignore_errors=True)


def check_eval(root=EVAL_DIR):
    """The files of `root` that differ from its SHA256SUMS: changed, missing or extra (none: the set is as built)."""
    digests = lambda sums: dict(reversed(line.split("  ", 1)) for line in sums.splitlines() if "  " in line)
    want, have = digests((root / "SHA256SUMS").read_text()), digests(sha256sums(root))
    return sorted(f for f in {*want, *have} if want.get(f) != have.get(f))


# ---------------------------------------------------------------- tokenizer
def corpus(per_kind):
    """Sentences from training-seed samples plus the fixed chat text, repeated so BPE merges it into a
    few pieces (system message -> 8 pieces at vocab 1000; 50 repeats left it at 48)."""
    lines = [SYSTEM, PROMPT, "system", "user", "assistant", CROP_QUESTION, KIE_SUFFIX.strip()] * 1000
    for kind in KINDS:
        for seed in range(per_kind):
            s = make_sample(kind, seed)
            lines += s["transcription"].split("\n")
            for q in s["qa"] + s["reasoning"]:
                lines += [q["question"], q["answer"]] + ([q["rationale"]] if "rationale" in q else [])
    return lines


def train_sp(lines, vocab_size):
    import sentencepiece as spm
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf,  # no file paths end up in the model proto
        model_type="bpe", vocab_size=vocab_size, byte_fallback=True, split_digits=True, character_coverage=1.0,
        user_defined_symbols=CHAT_TOKENS, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        num_threads=1, input_sentence_size=0, shuffle_input_sentence=False, minloglevel=2)
    return buf.getvalue()


def tokenizer_files(model_bytes):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    V = sp.get_piece_size()
    added = {t: V + i for i, t in enumerate(IMG_TOKENS)}
    spec = {"special": True, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False}
    dec = {str(i): {"content": sp.id_to_piece(i), **spec} for i in (0, 1, 2)}
    dec.update({str(sp.piece_to_id(t)): {"content": t, **spec} for t in CHAT_TOKENS})
    dec.update({str(i): {"content": t, **spec} for t, i in added.items()})
    extra = CHAT_TOKENS[::-1] + IMG_TOKENS  # InternVL2 order: <|im_start|> first
    cfg = {"added_tokens_decoder": dec, "additional_special_tokens": extra, "bos_token": "<s>", "eos_token": "</s>",
           "unk_token": "<unk>", "pad_token": "</s>", "add_bos_token": True, "add_eos_token": False,
           "clean_up_tokenization_spaces": False, "model_max_length": 4096, "tokenizer_class": "InternLM2Tokenizer"}
    stm = {"additional_special_tokens": extra, "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}
    dump = lambda o: (json.dumps(o, ensure_ascii=False, indent=2) + "\n").encode()
    return {"tokenizer.model": model_bytes, "added_tokens.json": dump(added), "tokenizer_config.json": dump(cfg),
            "special_tokens_map.json": dump(stm)}


def build_tokenizer(vocab_size, per_kind):
    lines = corpus(per_kind)
    a = train_sp(lines, vocab_size)
    if train_sp(lines, vocab_size) != a:  # determinism guard: two trainings must give the same bytes
        sys.exit("error: sentencepiece training is not deterministic here")
    for name, data in tokenizer_files(a).items():
        write_bytes(TOK_DIR / name, data)
    print(f"tokenizer: {len(a)} bytes, sp vocab {vocab_size} + {len(IMG_TOKENS)} added -> {TOK_DIR}")


def main(argv=None):
    ap = argparse.ArgumentParser(description="build data/eval and data/tokenizer")
    ap.add_argument("--eval", action="store_true", help="only the eval sets")
    ap.add_argument("--tokenizer", action="store_true", help="only the tokenizer")
    ap.add_argument("--check", action="store_true", help="verify data/eval/SHA256SUMS")
    ap.add_argument("--vocab-size", type=int, default=1000)
    ap.add_argument("--corpus-per-kind", type=int, default=400)
    ap.add_argument("--heldout", metavar="DIR", help="only a held-out DocVQA-format set in DIR (128 pages, 512 "
                    "questions, seeds from HELDOUT_SEED; not shipped): to check a choice made on the shipped sets")
    ap.add_argument("--heldout-family", action="store_true", help="only data/eval-heldout (the held-out family's sets)")
    ap.add_argument("--train-family", metavar="DIR", help="only the same sets in the training family into DIR (seeds "
                    "from TRAIN_FAMILY_SEED, never trained on; not shipped): to tell underfitting from a family's gap")
    a = ap.parse_args(argv)

    def refuse(message):
        print(f"build.py: error: {message}", file=sys.stderr)
        sys.exit(2)

    def own_folder(flag, path, *markers):
        """The folder a --train-family or --heldout build may write: never a shipped set, nor one holding other files
        (an earlier build of the same flag, even a killed one, left one of `markers`)."""
        root = Path(path).resolve()
        if any(root == d or d in root.parents for d in (EVAL_DIR, HELDOUT_DIR)) or \
                root.is_dir() and any(root.iterdir()) and not any((root / m).exists() for m in markers):
            refuse(f"{flag} {path} holds other files, which the build would replace; pass a new folder (or one an "
                   f"earlier {flag} wrote)")
        return root

    modes = [flag for flag, on in (("--check", a.check), ("--heldout", a.heldout), ("--heldout-family", a.heldout_family),
                                   ("--train-family", a.train_family), ("--eval/--tokenizer", a.eval or a.tokenizer)) if on]
    if len(modes) > 1:  # each is its own build: taking the first would build when asked to check
        refuse(f"{modes[0]} and {modes[1]} are separate jobs: pass one of them per command")
    try:
        if a.heldout_family:
            return build_eval(HELDOUT_DIR, family="heldout")
        if a.train_family:
            return build_eval(own_folder("--train-family", a.train_family, "SHA256SUMS"), family="train")
        if a.heldout:
            return build_docvqa(own_folder("--heldout", a.heldout, "val_v1.0.json", "documents"), n=128, seed=HELDOUT_SEED)
    except OSError as e:  # a read-only or full place: one line, no traceback
        refuse(f"cannot write {e.filename}: {e.strerror}; pass a folder you can write to")
    if a.vocab_size < 300 or a.corpus_per_kind < 1:
        refuse("--vocab-size must be >= 300 (256 byte pieces + specials) and --corpus-per-kind >= 1")
    if a.check:
        for d in (EVAL_DIR, HELDOUT_DIR):
            if not (d / "SHA256SUMS").exists():
                refuse(f"{d} has no SHA256SUMS: restore the folder (git checkout -- {os.path.relpath(d, ROOT)})")
            if bad := check_eval(d):
                more = f" and {len(bad) - 5} more" if bad[5:] else ""
                print(f"SHA256SUMS MISMATCH in {d}: {', '.join(bad[:5])}{more} differ; restore them (git checkout -- "
                      f"{os.path.relpath(d, ROOT)}) or rebuild: python data/build.py", file=sys.stderr)
                sys.exit(1)
        print("SHA256SUMS ok")
        sys.exit(0)
    both = not (a.eval or a.tokenizer)
    if a.eval or both:
        build_eval()
    if a.tokenizer or both:
        try:
            build_tokenizer(a.vocab_size, a.corpus_per_kind)
        except RuntimeError as e:  # sentencepiece: e.g. a vocabulary larger than the corpus allows
            refuse(f"sentencepiece could not train a vocabulary of {a.vocab_size} ({str(e).strip().splitlines()[-1]}); "
                   "lower --vocab-size or raise --corpus-per-kind")


if __name__ == "__main__":
    main()
