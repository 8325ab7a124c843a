"""
Evaluate an InternVL2-style model (optionally with compressed visual tokens) on DocVQA, ChartQA,
InfoVQA, TextVQA and OCRBench with InternVL2's official protocol and metrics.

    python evaluate.py --task docvqa                       # shipped synthetic set, checkpoints/tiny
    python evaluate.py --task chartqa --model checkpoints/internvl2-2b --device cuda \
        --data "/data/ChartQA Dataset/test" --batch-size 8
    python evaluate.py --task textvqa --method pool --ratio 0.5     # a training-free baseline (baselines.py):
                                    # pool, select, fastv, divprune, random, tiles, visionzip, pdrop
    python evaluate.py --task docvqa --method random --ratio 0.5 --seed 1   # report the mean of seeds 0, 1 and 2
    python evaluate.py --task docvqa --model runs/distill-select0.5   # a distilled student: no extra flag
    python evaluate.py --task docvqa --model runs/distill-selectauto --ratio 0.3   # a student for every ratio
    python evaluate.py --task docvqa --model runs/distill-selectauto --budget auto --ratio 0.3   # tokens by content:
                                    # the rarity threshold that kept 0.3 of the tokens on its training images
    python evaluate.py --task docvqa --data /data/docvqa/test_v1.0.json  # no answers: submission
    python evaluate.py --model /path/to/InternVL2-2B --image page.png --question "What is the total?"  # one question
    torchrun --nproc_per_node 8 evaluate.py --task docvqa --model /models/InternVL2-8B --data /data/docvqa
                                    # a shard of the questions per process, each resuming on its own; rank 0 scores
    python -m pytest tests/test_evaluate.py -q

From Python: evaluate(model, tokenizer, task, **settings) -> the scores dict; model and tokenizer None: load_model's,
loaded only if a question is left to answer. Predictions go to results/<model>/<task>[_<set>][_<method><ratio>]
[_<setting><value>].jsonl (a --data set, and each answer-changing flag given, in the name; random: _seed<s>) as they
are produced, scores to the .json beside it; rerunning the same run (the key on the file's first line) resumes it,
and a file there of another run is refused (--out names another).
Metrics (metrics.py) copy InternVL's eval scripts, quirks included (metrics-and-formats.md, section 3).
"""
import hashlib, json, os, re, resource, sys, time
from dataclasses import asdict, dataclass
from typing import Callable

import cli
from cli import Error, write_json, write_text
from metrics import HME, anls, ocrbench_hit, relaxed_accuracy, vqa_accuracy

HERE = os.path.dirname(os.path.abspath(__file__))  # defaults (shipped sets, embedded model) live beside this file
HELDOUT_SETS = os.path.join(HERE, 'data', 'eval-heldout')  # the five tasks drawn in the held-out family, a folder each
SELECT_OPTIONS = ('skip_thumbnail', 'rank_projected')  # compress.SELECT_OPTIONS, copied: flags parse before torch loads
# compress.py's methods and baselines.py's
METHODS = ['none', 'pool', 'select', 'fastv', 'divprune', 'random', 'tiles', 'visionzip', 'pdrop']

@dataclass
class EvalConfig:
    task: str = ''  # docvqa | chartqa | infovqa | textvqa | ocrbench (or --image and --question)
    model: str = os.path.join(HERE, 'checkpoints', 'tiny')  # checkpoint folder
    data: str = None  # annotation file or folder (default: data/eval/<task>/)
    images: str = None  # image root (default: the annotation file's folder)
    max_num: int = None  # max dynamic tiles (default: per-task protocol; 12 with --image)
    max_new_tokens: int = None  # default: per-task protocol; 128 with --image
    limit: int = None  # first N questions only
    batch_size: int = 1  # questions per generate call
    out: str = None  # predictions jsonl (default: results/<model>/<task>[_<set>][_<method><ratio>]...jsonl)
    device: str = None  # cpu | cuda (default: cuda if available)
    dtype: str = None  # float32 | bfloat16 | float16 (default: bfloat16 on cuda, the official setting; float32 on cpu)
    method: str = 'none'  # training-free compression (baselines.py's docstring); none for a distilled student
    ratio: float = None  # share of visual tokens kept by --method (default 1), or by a student of a range of ratios
                         # (default: the ratio it was saved at)
    budget: str = 'fixed'  # fixed | auto: with a student of distill.py --budget auto, tokens above the rarity
                           # threshold that kept --ratio of its training images' tokens (the mean; per image it varies).
                           # The flag decides, not the budget the student was saved with
    fastv_layer: int = 2  # FastV prunes before this decoder layer (K)
    seed: int = None  # with --method random: the subsets' seed (default 0; report the mean over 0, 1, 2)
    skip_thumbnail: bool = False  # with --method select: rank a many-tile image's thumbnail below its tiles
    rank_projected: bool = False  # with --method select: count near-duplicates among mlp1's outputs, not the ViT's
    cot: bool = False  # no short-answer suffix on reasoning questions (a CoT model reasons first; >= 256 new tokens)
    threads: int = None  # CPU threads (default: all)
    image: str = None  # instead of --task: one image to ask --question about (the answer is printed)
    question: str = None  # with --image

def parse_args(argv=None):
    cfg = cli.parse(EvalConfig, argv, 'evaluate.py', __doc__, choices=dict(
        task=sorted(TASKS), method=METHODS, dtype=['float32', 'bfloat16', 'float16'], budget=['fixed', 'auto']),
        max_num=(0, cli.MAX_TILES), max_new_tokens=1, limit=1, batch_size=1, threads=0, fastv_layer=1, ratio=(0, 1),
        seed=0)
    if (cfg.image is None) != (cfg.question is None):
        raise Error("--image and --question go together: pass both, or neither and --task")
    if cfg.image is not None and cfg.task:
        raise Error("--task or --image and --question: pass one")
    if not cfg.task and cfg.image is None:
        raise Error("the following arguments are required: --task, or --image and --question "
                    "(see python evaluate.py --help)")
    if cfg.image is not None:
        unused = [k for k in ('data', 'images', 'limit', 'out') if getattr(cfg, k) is not None]
        unused += ['batch_size'] * (cfg.batch_size != 1) + ['cot'] * cfg.cot
        if unused:
            raise Error(f"--{unused[0].replace('_', '-')} is for a --task run; drop it with --image")
        if cfg.method == 'tiles':
            raise Error("--method tiles is a budget over a task's images; use it with --task")
        if not os.path.isfile(cfg.image):
            raise Error(f"cannot read image {cfg.image}: no such file; pass the path of an image")
        if IMG_CONTEXT in cfg.question:
            raise Error(f"the question contains {IMG_CONTEXT}, the token that marks image features: remove it")
    for k in SELECT_OPTIONS:
        if getattr(cfg, k) and cfg.method != 'select':
            raise Error(f"--{k.replace('_', '-')} is an option of --method select; add --method select or drop it")
    if cfg.fastv_layer != EvalConfig.fastv_layer and cfg.method != 'fastv':
        raise Error("--fastv-layer is an option of --method fastv; add --method fastv or drop it")
    if cfg.seed is not None and cfg.method != 'random':
        raise Error("--seed is an option of --method random; add --method random or drop it")
    if cfg.budget == 'auto' and cfg.method != 'none':
        raise Error("--budget auto is for a student of distill.py --budget auto; drop --method")
    return cfg

# ----------------------------------------------------------------------------- readers

def _rows(path, envelope):
    """(index, record, get) per item; get(key) fails with a message naming the file and item."""
    try:
        with open(path, encoding='utf-8') as f:
            data = [json.loads(line) for line in f if line.strip()] if path.endswith('.jsonl') else json.load(f)
    except (OSError, ValueError) as e:
        raise Error(f"{path}: cannot read annotation ({e}); pass --data with a valid file")
    if envelope:  # RRC / TextVQA files: {"dataset_name": ..., "data": [...]}
        if not isinstance(data, dict) or not isinstance(data.get('data'), list):
            raise Error(f"{path}: expected a JSON object with a 'data' list; "
                            f"is this the right annotation file for the task?")
        data = data['data']
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise Error(f"{path}: expected a list of JSON objects; is this the right file?")
    for i, r in enumerate(data):
        def get(key, i=i, r=r):
            if key not in r:
                raise Error(f"{path}: item {i} has no '{key}' (keys: {sorted(r)}); "
                                f"fix the item or use the original annotation file")
            return r[key]
        yield i, r, get

def _answers(a, path, i):
    a = [a] if isinstance(a, (str, int, float)) else a  # OCRBench/ChartQA: a bare string
    if a is not None and (not isinstance(a, list) or not a or not all(isinstance(x, (str, int, float)) for x in a)):
        raise Error(f"{path}: item {i} has malformed answers {a!r}; expected a non-empty list of strings")
    return None if a is None else [str(x) for x in a]

def _image(images, rels, path, i):  # the first candidate under --images that exists; the error names the first
    for rel in rels:
        p = os.path.abspath(os.path.join(images, str(rel)))
        if os.path.isfile(p):
            return p
    raise Error(f"{path}: item {i}: image {os.path.join(images, str(rels[0]))} not found; "
                    f"pass --images DIR (the folder the annotation's image paths are relative to)")

def _item(qid, image, question, answers, **extra):
    return dict(qid=qid, image=image, question=str(question), answers=answers, extra=extra)

def read_docvqa(path, images, image_key='image'):
    """RRC envelope {"data": [{questionId, question, image, answers}]}; no answers on test."""
    out = []
    for i, r, get in _rows(path, envelope=True):
        img = get(image_key)
        out.append(_item(get('questionId'), _image(images, [img, f'infographicsvqa_images/{img}'], path, i),
                         get('question'), _answers(r.get('answers'), path, i),
                         reasoning=bool(r.get('reasoning') or r.get('operation/reasoning'))))
    return out

def read_infovqa(path, images):  # same envelope, the image under image_local_name
    return read_docvqa(path, images, 'image_local_name')

def read_chartqa(path, images):
    """Raw ChartQA: a folder with test_human.json + test_augmented.json (images under png/), or one
    such json, or InternVL's jsonl {image, question, answer}. The split comes from the file name."""
    if os.path.isdir(path):
        files = [os.path.join(path, f'test_{s}.json') for s in ('human', 'augmented')]
        if not all(map(os.path.isfile, files)):
            raise Error(f"{path}: needs test_human.json and test_augmented.json; "
                            f"pass --data with the ChartQA test folder or one of its files")
        return read_chartqa(files[0], images) + read_chartqa(files[1], images)
    stem = os.path.splitext(os.path.basename(path))[0]
    split = 'human' if 'human' in stem else 'augmented' if 'augmented' in stem else stem
    out = []
    for i, r, get in _rows(path, envelope=False):
        img, q, a = (get('imgname'), get('query'), get('label')) if 'imgname' in r else \
            (get('image'), get('question'), get('answer'))
        image = _image(images, [f'png/{img}', img, f'test/png/{img}'], path, i)
        out.append(_item(f"{split}_{r.get('question_id', i)}", image, q, _answers(a, path, i), split=split,
                         reasoning=bool(r.get('reasoning'))))
    return out

def read_textvqa(path, images):
    """Envelope with 10 answers per question; image <image_id>.jpg under train_images/."""
    out = []
    for i, r, get in _rows(path, envelope=True):
        cands = [f'{d}{get("image_id")}.{ext}' for d in ('train_images/', '') for ext in ('jpg', 'png')]
        answers = _answers(get('answers'), path, i)
        if answers is not None and len(answers) != 10:
            # the accuracy is a mean over the 10 leave-one-out subsets: with fewer answers 1.0 is out of reach
            raise Error(f"{path}: item {i} has {len(answers)} answer(s); TextVQA's accuracy needs the 10 human "
                        f"answers per question: use the original annotation file")
        out.append(_item(get('question_id'), _image(images, cands, path, i), get('question'), answers,
                         reasoning=bool(r.get('reasoning'))))
    return out

def read_ocrbench(path, images):
    """A list of {image_path, question, answers, type, dataset_name}."""
    out = []
    for i, r, get in _rows(path, envelope=False):
        cat = r.get('type', r.get('question_type')) or get('type')
        out.append(_item(r.get('id', i), _image(images, [get('image_path')], path, i), get('question'),
                         _answers(get('answers'), path, i), category=cat, reasoning=bool(r.get('reasoning')),
                         dataset=r.get('dataset', r.get('dataset_name', ''))))
    return out

# ----------------------------------------------------------------------------- protocol

PROMPT = 'Answer the question using a single word or phrase.'
KIE_SUFFIX = ' Answer this question using the text in the image directly.'  # OCRBench's key-information questions

@dataclass
class Task:
    metric: str
    read: Callable
    files: tuple          # real annotation names, looked up under data/eval/<task>/
    max_num: int          # dynamic tiles (+ thumbnail)
    max_new_tokens: int
    suffix: str = ' ' + PROMPT  # InternVL repo: a space; VLMEvalKit (OCRBench): a newline

TASKS = {
    'docvqa': Task('anls', read_docvqa, ('val_v1.0.json', 'test_v1.0.json'), 18, 100),
    'chartqa': Task('relaxed_accuracy', read_chartqa, ('test', 'test_human.json'), 12, 100),
    'infovqa': Task('anls', read_infovqa, ('infographicsVQA_val_v1.0_withQT.json',
                                           'infographicsVQA_test_v1.0.json'), 24, 100),
    'textvqa': Task('vqa_accuracy', read_textvqa, ('TextVQA_0.5.1_val.json',), 6, 10),
    'ocrbench': Task('ocrbench', read_ocrbench, ('OCRBench.json', 'ocrbench.json'), 24, 1024,
                     '\n' + PROMPT),  # 1024 is VLMEvalKit's value; generation stops at <|im_end|>
}
OCR_GROUPS = {'Text Recognition': ('Regular Text Recognition', 'Irregular Text Recognition',
              'Artistic Text Recognition', 'Handwriting Recognition', 'Digit String Recognition',
              'Non-Semantic Text Recognition'), 'HMER': HME}

def find_annotation(task, data):
    if os.path.isfile(data) or (task == 'chartqa' and os.path.isdir(data)
                                and os.path.isfile(os.path.join(data, 'test_human.json'))):
        return data
    if not os.path.isdir(data):
        raise Error(f"--data {data} does not exist; pass the annotation file or its folder")
    for name in TASKS[task].files:
        if os.path.exists(os.path.join(data, name)):
            return find_annotation(task, os.path.join(data, name))
    found = [f for f in sorted(os.listdir(data)) if f.endswith('.json') and f != 'reasoning.json']
    if len(found) == 1:  # e.g. a renamed OCRBench json
        return os.path.join(data, found[0])
    raise Error(f"no annotation file in {data} (looked for {', '.join(TASKS[task].files)}); pass --data FILE")

COT_ANSWER = 'Answer: '  # a chain-of-thought answer ends "<rationale>\nAnswer: <final answer>" (posttrain.COT_SEP)
COT_MIN_TOKENS = 256  # a rationale before the answer needs room

def final_answer(prediction):
    """What is scored: the text after the last 'Answer: ' of a chain of thought, else the whole answer."""
    return prediction.rsplit(COT_ANSWER, 1)[-1].strip() if COT_ANSWER in prediction else prediction

def item_score(metric, pred, it):
    a, ex = it['answers'], it['extra']
    if metric == 'ocrbench':  # the MultimodalOCR script keys formulas on the source dataset
        return ocrbench_hit(pred, a, 'HME100k' if ex['dataset'] == 'HME100k' else ex['category'])
    return dict(anls=anls, relaxed_accuracy=relaxed_accuracy, vqa_accuracy=vqa_accuracy)[metric](pred, a)

def score_items(task, items, preds):
    """The main set's score and sub-scores as papers report them; reasoning-flagged items (a shipped reasoning.json's
    too, kept out of the main score) also get a score of their own."""
    every = [item_score(task.metric, final_answer(p), it) for p, it in zip(preds, items)]
    mean = lambda xs: 100 * sum(xs) / len(xs)
    flagged = [x for x, it in zip(every, items) if it['extra'].get('reasoning')]
    s, items = zip(*[(x, it) for x, it in zip(every, items) if not it['extra'].get('reasoning_file')])
    res = dict(score=mean(s), n=len(s), sub_scores={})
    if task.metric == 'relaxed_accuracy':  # papers report the mean of the two splits
        for sp in sorted({it['extra']['split'] for it in items}):
            res['sub_scores'][sp] = mean([x for x, it in zip(s, items) if it['extra']['split'] == sp])
        res['score'] = sum(res['sub_scores'].values()) / len(res['sub_scores'])
    if task.metric == 'ocrbench':  # a count of hits out of 1000
        cats = {}
        for x, it in zip(s, items):
            cats[it['extra']['category']] = cats.get(it['extra']['category'], 0) + x
        groups = {g: sum(cats.get(c, 0) for c in cs) for g, cs in OCR_GROUPS.items()}
        res.update(score=sum(s), sub_scores={**cats, **groups})
    if flagged:  # OCRBench too: percent correct, not a count
        res['reasoning'] = dict(score=mean(flagged), n=len(flagged))
    return res

# ----------------------------------------------------------------------------- generation

def load_done(path, repair=True):
    """(header or None, qid -> prediction record) of an earlier (maybe killed) run's --out; the header holds the run
    key. repair: also cut a line a kill left half-written from the file (a reader beside the writer only skips it)."""
    if not os.path.exists(path):
        return None, {}
    with open(path, 'rb') as f:
        data = f.read()
    if data and not data.endswith(b'\n'):  # killed mid-write: drop the cut line, redo that question
        data = data[:data.rfind(b'\n') + 1]
        if repair:
            os.truncate(path, len(data))
    try:
        lines = [json.loads(line) for line in data.decode('utf-8').splitlines()]
        head = lines.pop(0) if lines and isinstance(lines[0], dict) and 'run' in lines[0] else None
        return head, {str(r['qid']): r for r in lines}
    except (ValueError, KeyError, TypeError) as e:
        raise Error(f"{path}: not a predictions file ({e}); delete it or pass another --out")

MODEL_FILES = ('config.json', 'model.safetensors.index.json', 'tokenizer.model', 'tokenizer.json', 'vocab.json',
               'merges.txt', 'tokenizer_config.json', 'added_tokens.json', 'special_tokens_map.json')

def hash_file(h, path):
    with open(path, 'rb') as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h

def sha256_files(paths):
    h = hashlib.sha256()
    for p in paths:
        h.update(os.path.basename(p).encode() + b'\0')
        hash_file(h, p)
    return h.hexdigest()

def stamp(path):
    """[size, mtime, ctime, inode]: a file rewritten or replaced changes one of them."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

def model_identity(folder, known=None):
    """{sha256 of every byte of the config, weights (two trainings share headers and sizes) and tokenizer, files:
    [real path, *stamp] each}; of a file alone where `folder` is one (a weights or data file). 16 GB take a minute to
    hash: `known` (the file's) is reused while the stamps hold."""
    if os.path.isfile(folder):
        folder, names = os.path.dirname(folder), [os.path.basename(folder)]
    else:
        names = sorted(n for n in os.listdir(folder) if n in MODEL_FILES or re.fullmatch(r'model.*\.safetensors', n))
    files = {n: [os.path.realpath(os.path.join(folder, n)), *stamp(os.path.join(folder, n))] for n in names}
    if known and known.get('files') == files:
        return known
    return dict(sha256=sha256_files([os.path.join(folder, n) for n in names]), files=files)

def image_identity(paths, known=None):
    """{path: [*stamp, sha256]} of each distinct image; a digest in `known` is reused while its stamps hold."""
    known, files = known or {}, {}
    for p in dict.fromkeys(paths):
        try:
            now = stamp(p)
            files[p] = known[p] if known.get(p, [])[:4] == now else now + [hash_file(hashlib.sha256(), p).hexdigest()]
        except OSError as e:
            raise Error(f"{p}: cannot read image ({e}); replace the file or remove its questions from the annotation")
    return files

def object_identity(model, tokenizer):
    """sha256 of a model in memory: its tensors (names, dtypes, shapes, bytes), config, what baselines.apply attaches
    (compressor, the LLM's before_layer hook: type and settings) and the tokenizer's vocabulary; ~30 s for 16 GB. An
    untrained select draws random weights its output ignores: each such object is a new run."""
    import torch
    # type and plain public attributes (FastV: ratio, layer; pdrop: schedule; select: window, switches; random: seed)
    def settings(o):
        attrs = {k: v for k, v in getattr(o, '__dict__', {}).items()
                 if not k.startswith('_') and k != 'training' and isinstance(v, (bool, int, float, str, tuple))}
        return None if o is None else [type(o).__name__, attrs]
    h = hashlib.sha256(json.dumps([asdict(model.config), settings(model.compressor),
                                   settings(model.language_model.before_layer), settings(tokenizer),
                                   getattr(tokenizer, 'special', None)], sort_keys=True, default=str).encode())
    if hasattr(tokenizer, 'sp'):
        h.update(tokenizer.sp.serialized_model_proto())
    elif hasattr(tokenizer, 'ranks'):  # tokenizer.BPETokenizer: its vocabulary and merges in rank order
        h.update(json.dumps([tokenizer.vocab, sorted(tokenizer.ranks, key=tokenizer.ranks.get)],
                            ensure_ascii=False).encode())
    for name, t in model.state_dict().items():  # detached tensors
        h.update(f'\0{name} {t.dtype} {tuple(t.shape)}\0'.encode())
        h.update(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()

def _all_or_none_answered(items, path):
    """Submission mode is for a file whose questions all lack answers; a few missing is a broken file."""
    missing = [it for it in items if it['answers'] is None]
    if 0 < len(missing) < len(items):
        raise Error(f"{path}: question {missing[0]['qid']} has no answers, unlike {len(items) - len(missing)} of the "
                    f"{len(items)}: give every question its answers (validation) or none (a test file, for "
                    f"submission)")

IMG_CONTEXT = '<IMG_CONTEXT>'  # model.IMG_CONTEXT: the token each image feature replaces
EVAL_PROTOCOL = 2  # in the run key: bump it with every change here that alters an answer (prompt, reader, decoding)

def method_defaults(cfg):
    """A method's ratio left unset keeps all tokens; random's seed is 0."""
    cfg.seed = (cfg.seed or 0) if cfg.method == 'random' else cfg.seed
    cfg.ratio = 1.0 if cfg.ratio is None and cfg.method != 'none' else cfg.ratio

def question_files(task, data):
    """(the files a run's data_sha256 covers, the set's reasoning.json or None): the annotation (ChartQA: its two
    splits), then reasoning.json where the set has one (the shipped sets keep multi-fact questions there, in the
    same format: scored apart)."""
    ann = find_annotation(task, data)
    files = [ann] if os.path.isfile(ann) else [os.path.join(ann, f'test_{s}.json') for s in ('human', 'augmented')]
    rfile = os.path.join(data if os.path.isdir(data) else os.path.dirname(data), 'reasoning.json')
    rfile = rfile if os.path.isfile(rfile) and os.path.abspath(rfile) != os.path.abspath(ann) else None
    return files + [rfile] * (rfile is not None), rfile

def read_questions(task, data, images=None):
    """(annotation, its questions, the files they come from, reasoning.json's questions) of the set in `data`, read
    and checked as a run reads them: every question answered or none, reasoning.json answered as the annotation is."""
    ann = find_annotation(task, data)
    every = TASKS[task].read(ann, images or (ann if os.path.isdir(ann) else os.path.dirname(ann)))
    _all_or_none_answered(every, ann)
    if not every:
        raise Error(f"{ann}: no questions in the annotation; pass --data with a non-empty file")
    (files, rfile), reasoning = question_files(task, data), []
    if rfile:
        reasoning = TASKS[task].read(rfile, images or os.path.dirname(rfile))
        _all_or_none_answered(reasoning, rfile)
        if reasoning and (reasoning[0]['answers'] is None) != (every[0]['answers'] is None):  # else goes unscored
            raise Error(f"{rfile} {'lacks' if reasoning[0]['answers'] is None else 'has'} answers and {ann} does "
                        f"not: a set's reasoning.json is answered as its annotation is; fix it or move it away")
        for it in reasoning:
            it['extra'].update(reasoning=True, reasoning_file=True)
    return ann, every, files, reasoning

def prepare(cfg, model=None, tokenizer=None):
    """-> (task, annotation, items, predictions path, header). The header's run key, which a predictions file must
    hold to be resumed, covers EVAL_PROTOCOL, the model's bytes, the question files, every image's bytes (--limit may
    change) and every setting that changes an answer; not batch size, device index, threads, --limit, process count."""
    task = TASKS[cfg.task]
    method_defaults(cfg)
    data = cfg.data or os.path.join(HERE, 'data', 'eval', cfg.task)
    ann, every, files, reasoning = read_questions(cfg.task, data, cfg.images)
    items, every = every[:cfg.limit] + reasoning[:cfg.limit], every + reasoning
    if len({str(it['qid']) for it in items}) < len(items):
        raise Error(f"{ann}: question ids are not unique; resuming needs unique ids")
    bad = next((it for it in items if IMG_CONTEXT in it['question']), None)
    if bad:  # refused, not escaped: the tokenizer reads it as the special token wherever it stands
        raise Error(f"{ann}: question {bad['qid']} contains {IMG_CONTEXT}, the token that marks image features: "
                        f"remove it from the question")
    if os.path.isfile(cfg.model):
        raise Error(f"--model {cfg.model} is a file: pass the checkpoint folder (config.json, model*.safetensors, "
                        f"tokenizer files)")
    if not os.path.isdir(cfg.model):
        raise Error(f"model folder {cfg.model} not found; build or download one, or pass --model PATH")
    where = os.path.realpath(ann).split(os.sep)[-3:]  # a set not the shipped one: a file of its own
    tag = '_' + re.sub(r'[^\w.-]+', '-', '-'.join(os.path.splitext(p)[0] for p in where)) if cfg.data else ''
    tag += f"_{cfg.method}{cfg.ratio:g}" if cfg.method != 'none' else f"_r{cfg.ratio:g}" if cfg.ratio else ''
    tag += '_auto' if cfg.budget == 'auto' else ''
    tag += ''.join('_' + k.replace('_', '-') for k in SELECT_OPTIONS if getattr(cfg, k))
    tag += f'_seed{cfg.seed}' if cfg.method == 'random' else ''  # each seed its own file
    # and each other setting given that changes an answer: another run, another file
    tag += ''.join(f'_{k.replace("_", "-")}{v}' for k, v in (('max_num', cfg.max_num), ('max_new_tokens',
                   cfg.max_new_tokens), ('dtype', cfg.dtype)) if v is not None) + ('_cot' if cfg.cot else '')
    out = cfg.out or os.path.join('results', os.path.basename(os.path.normpath(cfg.model)), f'{cfg.task}{tag}.jsonl')
    if os.path.isdir(out):
        raise Error(f"--out {out} is a folder: pass a file in it, e.g. {os.path.join(out, 'predictions.jsonl')}")
    if not out.endswith('.jsonl'):  # the scores go to <out without .jsonl>.json: a .json --out would be overwritten
        raise Error(f"--out {out}: the predictions file must end in .jsonl (the scores go beside it, in .json)")
    cli.writable(os.path.dirname(out), f"--out {out}")
    inputs = {os.path.realpath(f) for f in files} | {os.path.realpath(os.path.join(cfg.model, f)) for f in MODEL_FILES}
    if clash := next((f for f in (out, out[:-6] + '.json', out[:-6] + '_submission.json')
                      if os.path.realpath(f) in inputs), None):
        raise Error(f"--out {out} would write {clash}, an input of this run (the questions or the model): "
                    f"pass another --out")
    settle(cfg)
    cfg.max_num = cfg.max_num or task.max_num
    old, _ = load_done(out, repair=False)
    images = image_identity([it['image'] for it in every], old and old.get('images'))
    model_id = dict(sha256=object_identity(model, tokenizer)) if model is not None else \
        model_identity(cfg.model, old and old.get('model'))
    key = dict(protocol=EVAL_PROTOCOL, task=cfg.task, model_sha256=model_id['sha256'], data_sha256=sha256_files(files),
               images_sha256=hashlib.sha256(' '.join(images[it['image']][4] for it in every).encode()).hexdigest(),
               method=cfg.method, max_num=cfg.max_num, max_new_tokens=max_new_tokens(cfg, task), cot=cfg.cot,
               prompt=task.suffix, dtype=cfg.dtype, device=cfg.device.split(':')[0])
    key.update({'max_new_tokens_reasoning': max_new_tokens(cfg, task, True)} if cfg.cot else {})  # their own batches
    key.update({'ratio': cfg.ratio} if cfg.ratio is not None else {})
    key.update({'budget': cfg.budget} if cfg.budget != 'fixed' else {})
    key.update({'fastv_layer': cfg.fastv_layer} if cfg.method == 'fastv' else {})
    key.update({'seed': cfg.seed} if cfg.method == 'random' else {})
    key.update({k: getattr(cfg, k) for k in SELECT_OPTIONS} if cfg.method == 'select' else {})
    return task, ann, items, out, json.loads(json.dumps(dict(run=key, model=model_id, images=images)))

def resume(path, head, write=True, replace=True):
    """The records of `path` if its header holds head's run key, else none (another run's predictions start afresh,
    with a note naming the first setting that differs). write: make the file hold `head` and those records. replace
    False (the default --out, which models of one folder name share, and runs on other images under one annotation):
    only predictions of the same run by older code, or by the same model folder before new weights, start afresh."""
    old, recs = load_done(path, repair=write)
    a, b = (old or {}).get('run', {}), head['run']
    if recs and a != b:
        k = next((k for k in sorted({*a, *b}) if a.get(k) != b.get(k)), None)
        why = f"{k} {str(a.get(k))[:16]} there, {str(b.get(k))[:16]} now" if old else 'it has no run key'
        folder = lambda h: {os.path.dirname(f[0]) for f in h.get('model', {}).get('files', {}).values()}
        older = not old or a.get('protocol') != b['protocol']  # older code's predictions: replaced
        other_model = old and folder(old) != folder(head)  # another folder of the same name
        if other_model:
            why = f"the model in {', '.join(sorted(folder(old))) or 'memory'}"
        if not replace and not older and (other_model or any(a.get(k) != b.get(k) for k in a.keys() & b.keys()
                                                             if k != 'model_sha256')):
            raise Error(f"{path} holds the predictions of another run ({why}): pass --out for this one, or delete "
                        f"{path} to replace them")
        if write:
            print(f"evaluate.py: {path} holds the predictions of another run ({why}): starting it afresh",
                  file=sys.stderr)
        recs = {}
    if write and old != head:
        write_text(path, ''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in [head, *recs.values()]))
    return recs

def settle(cfg):
    """cfg's device (cuda if there is one) and dtype (bfloat16 on cuda, the official setting; float32 on a CPU)."""
    import torch
    cfg.device = cfg.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if msg := cli.check_device(cfg.device):
        raise Error(msg)
    cfg.dtype = cfg.dtype or ('bfloat16' if cfg.device.startswith('cuda') else 'float32')

def load_model(cfg):
    """The model in folder cfg.model, compressed by cfg.method; its tokenizer is tokenizer.load_tokenizer(cfg.model)."""
    import torch, model as M, baselines, compress
    settle(cfg)
    try:
        model = M.load_model(cfg.model, device=cfg.device, dtype=getattr(torch, cfg.dtype),
                             build_compressor=baselines.build)
        record = model.config.compressor or {}
        if (cfg.max_new_tokens or 0) > model.config.llm.max_position_embeddings:  # a coarse bound (without the
            # prompt): the KV cache is allocated up front, and a huge one would fail deep inside torch
            raise Error(f"--max-new-tokens {cfg.max_new_tokens}: more than the LLM's "
                        f"{model.config.llm.max_position_embeddings} positions; pass fewer")
        if cfg.method != 'none' and model.compressor is not None:
            shown = {k: v for k, v in record.items() if k != 'thresholds'}  # a table of 19 pairs says nothing here
            raise Error(f"{cfg.model} is already compressed ({shown}); drop --method")
        if cfg.method not in ('none', 'tiles'):  # tiles changes the inputs (generate), not the model
            baselines.apply(model, method=cfg.method, ratio=cfg.ratio, fastv_layer=cfg.fastv_layer, seed=cfg.seed,
                           **{k: getattr(cfg, k) for k in SELECT_OPTIONS})
        elif cfg.method == 'none' and (cfg.ratio is not None or cfg.budget == 'auto' or 'ratio_range' in record):
            if model.compressor is None:
                raise Error(f"{cfg.model} is not compressed: " + ("--ratio needs --method, e.g. --method select"
                            if cfg.budget == 'fixed' else "--budget auto needs a student of distill.py --budget auto"))
            # always: a student saved by content (its record says "budget": "auto") runs as --budget asks
            compress.set_budget(model, cfg.ratio or record['ratio'], auto=cfg.budget == 'auto')
    except (M.ModelLoadError, compress.CompressError) as e:
        raise Error(str(e))
    return model

def load_tokenizer(cfg):
    """tokenizer.load_tokenizer(cfg.model), its error one line."""
    import model as M, tokenizer
    try:
        return tokenizer.load_tokenizer(cfg.model)
    except M.ModelLoadError as e:
        raise Error(str(e))

def ask(cfg):
    """The answer to cfg.question about cfg.image, by the model of load_model(cfg), tiled as InternVL's chat()."""
    import torch, model as M
    method_defaults(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, tok = load_model(cfg), load_tokenizer(cfg)
    try:
        pixels = M.load_image(cfg.image, cfg.max_num or 12, model.config.force_image_size)
    except ValueError as e:
        raise Error(str(e))
    return model.chat(tok, pixels.to(cfg.device, getattr(torch, cfg.dtype)), cfg.question, cfg.max_new_tokens or 128)

STATS = ('visual_tokens', 'prefill_s', 'decode_tokens', 'decode_s')

def peak_memory(device):
    """(MB, what was measured): this process's peak so far; the resident set on a CPU (ru_maxrss is KiB)."""
    if device.startswith('cuda'):
        import torch
        return round(torch.cuda.max_memory_allocated() / 2**20, 1), 'cuda max_memory_allocated'
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), 'cpu peak RSS'

def prefill_flops(llm, n, visual=0, schedule=None):
    """FLOPs (2 per multiply-add) of the LLM's decoder layers on an n-token prompt with `visual` image tokens: 2n x
    the projection and gated-MLP weights, plus causal attention 2 x 2 x hidden x n(n+1)/2 (scores, values). schedule
    {K: share kept} (FastV's, pdrop's): each layer sees the prompt without the image tokens dropped before it."""
    d = getattr(llm, 'head_dim', None) or llm.hidden_size // llm.num_attention_heads  # Qwen3 sets its own
    h, q, kv = llm.hidden_size, llm.num_attention_heads * d, llm.num_key_value_heads * d
    layer = lambda n: 2 * n * (2 * h * q + 2 * h * kv + 3 * h * llm.intermediate_size) + 2 * q * n * (n + 1)
    if not schedule:
        return llm.num_hidden_layers * layer(n)
    import baselines
    return sum(layer(n - visual + v) for v in baselines.image_tokens_per_layer(visual, schedule, llm.num_hidden_layers))

def generate(model, tok, cfg, task, todo, out_path):
    """Greedy answers appended to out_path, flushed per batch, each with its share of the batch's stats (resume re-sums
    them), its prompt's length and LLM prefill FLOPs, and the process's peak memory so far; with FastV or pdrop the mean
    of the image tokens its LLM layers see, with tiles the max_num it got."""
    import torch, model as M, baselines
    from PIL import Image
    from tqdm import tqdm
    schedule, layers = getattr(model.language_model.before_layer, 'stages', None), model.config.llm.num_hidden_layers
    size = model.config.force_image_size
    reasons = lambda it: cfg.cot and bool(it['extra'].get('reasoning'))  # asked to reason first, then answer
    groups = [[it for it in todo if not reasons(it)], [it for it in todo if reasons(it)]]  # apart: their token limits
    batches = [g[b:b + cfg.batch_size] for g in groups for b in range(0, len(g), cfg.batch_size)]
    with open(out_path, 'a', encoding='utf-8') as f:
        for batch in tqdm(batches, desc=cfg.task, unit='batch'):
            pixels, max_nums = [], []
            for it in batch:
                try:
                    max_num = cfg.max_num
                    if cfg.method == 'tiles':  # fewer tiles: the most whose count fits ratio x max_num's
                        with Image.open(it['image']) as im:  # the header: its size
                            max_num = baselines.budget_max_num(*im.size, cfg.max_num, cfg.ratio, M.find_grid, size)
                    pv = M.load_image(it['image'], max_num=max_num, image_size=size)
                except (ValueError, OSError, Image.DecompressionBombError) as e:
                    raise Error(f"{e if it['image'] in str(e) else it['image'] + ': ' + str(e)}; "
                                f"replace the file or remove question {it['qid']} from the annotation")
                pixels.append(pv.to(cfg.device, getattr(torch, cfg.dtype)))
                max_nums.append(max_num)
            stats = {}
            cot = reasons(batch[0])
            questions = [it['question'] + ('' if cot else task.suffix) for it in batch]
            answers = model.batch_chat(tok, pixels, questions, max_new_tokens=max_new_tokens(cfg, task, cot),
                                       min_new_tokens=1, stats=stats)  # min_new_tokens=1 as InternVL's eval
            peak_mb, peak_kind = peak_memory(cfg.device)
            for it, a, q, visual, max_num in zip(batch, answers, questions, stats['image_tokens'], max_nums):
                n = len(tok.encode(M.chat_prompt(q, visual, model.config.template)))
                rec = dict(qid=it['qid'], answer=a, **{k: stats.get(k, 0) / len(batch) for k in STATS}, image_tokens=visual,
                           prompt_tokens=n, prefill_flops=prefill_flops(model.config.llm, n, visual, schedule),
                           peak_mb=peak_mb, peak_kind=peak_kind)
                if schedule:  # FastV, pdrop: the image tokens the LLM's layers see, on average
                    per_layer = baselines.image_tokens_per_layer(visual, schedule, layers)
                    rec['visual_tokens_layer_mean'] = sum(per_layer) / layers
                if cfg.method == 'tiles':
                    rec['max_num'] = max_num
                f.write(json.dumps(rec, ensure_ascii=False) + '\n')
            f.flush()

def spread(values):
    """min, 10th percentile, median, 90th percentile and max of the visual tokens per question's image."""
    v = sorted(values)
    return {name: v[min(len(v) - 1, int(q * len(v)))] for name, q in
            (('min', 0), ('p10', 0.1), ('median', 0.5), ('p90', 0.9), ('max', 1))}

def max_new_tokens(cfg, task, cot=False):
    n = cfg.max_new_tokens or task.max_new_tokens
    return max(n, COT_MIN_TOKENS) if cot and not cfg.max_new_tokens else n

def evaluate(model, tokenizer, task, /, rank=0, world=1, **settings):
    """Answer `task`'s questions and score them -> the scores dict, also written to <out>.json. model, tokenizer: None
    for load_model's. settings: EvalConfig's fields. Under torchrun (world > 1) each process answers every world-th
    question into its own shard file, which resumes on its own; rank 0 merges the shards into `out` and scores."""
    cfg = EvalConfig(**dict(settings, task=task))
    task, ann, items, out, head = prepare(cfg, model, tokenizer)
    done = resume(out, head, write=rank == 0, replace=cfg.out is not None)
    mine, todo = out, [it for it in items if str(it['qid']) not in done]
    if world > 1:
        import torch, torch.distributed as dist
        if cfg.device == 'cuda':
            cfg.device = f"cuda:{os.environ.get('LOCAL_RANK', rank)}"
        cfg.threads = cfg.threads or max(1, (os.cpu_count() or 1) // int(os.environ.get('LOCAL_WORLD_SIZE', world)))
        shards = [os.path.splitext(out)[0] + f'.rank{r}of{world}.jsonl' for r in range(world)]
        mine = shards[rank]  # its key holds the shard: a run with other processes does not resume it
        part = resume(mine, dict(head, run=dict(head['run'], shard=[rank, world])))
        todo = [it for it in todo[rank::world] if str(it['qid']) not in part]
    t0 = time.time()
    if todo:
        import torch
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if model is None:
            model, tokenizer = load_model(cfg), load_tokenizer(cfg)
        generate(model, tokenizer, cfg, task, todo, mine)
    generated = len(todo)
    if world > 1:
        n = torch.tensor([generated])
        dist.all_reduce(n)  # waits for every shard to be complete
        if rank != 0:
            return None
        generated = int(n)
        done.update({q: rec for p in shards for q, rec in load_done(p)[1].items()})
        write_text(out, ''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in [head, *done.values()]))
        for p in shards:
            os.remove(p)
    done = load_done(out)[1]
    recs, base = [done[str(it['qid'])] for it in items], os.path.splitext(out)[0]
    tot = {k: sum(r.get(k, 0) for r in recs) for k in STATS}
    peaks = [(r['peak_mb'], r['peak_kind']) for r in recs if 'peak_mb' in r]  # older files: this process's
    mem = max(peaks) if peaks else peak_memory(cfg.device)
    res = dict(task=cfg.task, metric=task.metric, model=cfg.model, data=ann, method=cfg.method,
               ratio=cfg.ratio, budget=cfg.budget, max_num=cfg.max_num, device=cfg.device, dtype=cfg.dtype,
               max_new_tokens=max_new_tokens(cfg, task), cot=cfg.cot, n=len(items), new_predictions=generated,
               predictions=out, wall_s=round(time.time() - t0, 2),
               visual_tokens_per_image=round(tot['visual_tokens'] / len(recs), 1),
               visual_tokens_spread=spread([r['image_tokens'] for r in recs]) if all('image_tokens' in r for r in recs)
               else None,  # older files: unknown
               visual_tokens_layer_mean=round(sum(r['visual_tokens_layer_mean'] for r in recs) / len(recs), 1)
               if all('visual_tokens_layer_mean' in r for r in recs) else None,  # FastV, pdrop: over the LLM's layers
               prefill_ms_per_image=round(1000 * tot['prefill_s'] / len(recs), 2),
               decode_tokens_per_s=round(tot['decode_tokens'] / tot['decode_s'], 2) if tot['decode_s'] else None,
               llm_prefill_gflops=round(sum(r['prefill_flops'] for r in recs) / len(recs) / 1e9, 4)
               if all('prefill_flops' in r for r in recs) else None,  # older files: unknown
               peak_memory_mb=round(mem[0], 1), peak_memory_kind=mem[1])
    if all(it['answers'] is not None for it in items):
        res.update(score_items(task, items, [r['answer'] for r in recs]))
    else:  # test split: the answers live on the RRC server
        res.update(score=None, submission=base + '_submission.json')
        write_json(res['submission'], [dict(questionId=it['qid'], answer=final_answer(r['answer']))  # as scored
                                       for it, r in zip(items, recs) if not it['extra'].get('reasoning_file')])
    write_json(base + '.json', res)
    score = f"submission {res['submission']}" if res['score'] is None else f"ocrbench {res['score']}/{res['n']}" \
        if task.metric == 'ocrbench' else f"{task.metric} {res['score']:.2f}"
    if res.get('reasoning'):
        score += f" (reasoning {res['reasoning']['score']:.2f} on {res['reasoning']['n']})"
    tps = '-' if res['decode_tokens_per_s'] is None else f"{res['decode_tokens_per_s']:.1f}"
    mean = res['visual_tokens_layer_mean']
    per_layer = '' if mean is None else f" ({mean:.0f} per LLM layer)"
    print(f"{cfg.task}: {score} | n={res['n']}, {generated} generated | {res['visual_tokens_per_image']:.0f} "
          f"visual tok/img{per_layer} | prefill {res['prefill_ms_per_image']:.1f} ms/img | decode {tps} tok/s | "
          f"peak {mem[0]:.0f} MB {mem[1]} -> {base}.json")
    return res

def run(cfg, rank=0, world=1):
    """evaluate() of the command line's config: the model loaded from its folder if a question is left to answer."""
    return evaluate(None, None, cfg.task, rank, world, **asdict(cfg))

def main(argv=None):
    rank, world = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))  # torchrun's

    def go():
        cfg = parse_args(argv)
        if cfg.image is not None:  # before any process group: one question is one process's
            if world > 1:
                raise Error("--image answers one question in one process: run it without torchrun")
            return print(ask(cfg))
        if world > 1:  # gloo on GPUs too: the processes only wait for each other, their answers stay apart
            import datetime, torch.distributed as dist
            dist.init_process_group('gloo', timeout=datetime.timedelta(days=1))
        run(cfg, rank, world)
        if world > 1:
            dist.barrier()  # rank 0 has scored: the others leave no sooner (an early leaver can abort the group)
    try:
        return cli.run_main('evaluate.py', go)
    except KeyboardInterrupt:
        print("evaluate.py: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        if world > 1:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()

if __name__ == '__main__':
    sys.exit(main())
