"""
Evaluate an InternVL2-style model (optionally with compressed visual tokens) on DocVQA, ChartQA,
InfoVQA, TextVQA and OCRBench with InternVL2's official protocol and metrics.

    python evaluate.py --task docvqa                       # shipped synthetic set, checkpoints/tiny
    python evaluate.py --task chartqa --model checkpoints/internvl2-2b --device cuda \
        --data "/data/ChartQA Dataset/test" --batch-size 8
    python evaluate.py --task textvqa --method pool --ratio 0.5     # training-free baselines: pool, select, fastv
    python evaluate.py --task docvqa --model runs/distill-select0.5   # a distilled student: no extra flag
    python evaluate.py --task docvqa --data /data/docvqa/test_v1.0.json  # no answers: submission
    torchrun --nproc_per_node 8 evaluate.py --task docvqa --model /models/InternVL2-8B --data /data/docvqa
                                    # a shard of the questions per process, each resuming on its own; rank 0 scores
    python -m pytest tests/test_evaluate.py -q

Predictions go to results/<model folder name>/<task>[_<method><ratio>].jsonl as they are produced;
rerunning the same run (the same model bytes, questions and settings: the key on the file's first line) with
the same --out skips finished questions; another run starts the file afresh. Scores go to the .json beside it.
Metrics copy InternVL's eval scripts (which produced the InternVL2 numbers), quirks included
(metrics-and-formats.md, section 3).
--limit N takes the first N questions of the annotation file (and of a shipped reasoning.json, whose
multi-fact questions are scored apart from the main score).
"""
import argparse, hashlib, json, os, re, resource, sys, time
from dataclasses import dataclass
from typing import Callable

# ----------------------------------------------------------------------------- metrics

def levenshtein(a, b):
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]

def anls(prediction, answers, threshold=0.5):
    """InfographicsVQA script: distance on normalised strings over the max RAW length."""
    norm = lambda s: ' '.join(s.strip().lower().split())
    values = []
    for a in [answers] if isinstance(answers, str) else answers:
        length = max(len(a.upper()), len(prediction.upper()))  # .upper() as in the script
        values.append(0.0 if length == 0 else levenshtein(norm(a), norm(prediction)) / length)
    score = 1 - min(values)
    return 0.0 if score < threshold else score  # NL exactly 0.5 keeps 0.5

def _to_float(text):
    try:
        return float(text.rstrip('%')) / 100.0 if text.endswith('%') else float(text)
    except ValueError:
        return None

def _relaxed_correct(target, prediction, max_relative_change=0.05):
    p, t = _to_float(prediction), _to_float(target)
    if p is not None and t:  # t == 0 (or non-numeric) falls back to the string match
        return abs(p - t) / abs(t) <= max_relative_change
    return prediction.lower() == target.lower()

def relaxed_accuracy(prediction, answers, gt_denominator=False):
    """ChartQA 5% tolerance, max over answers. InternVL calls relaxed_correctness(pred, ann)
    against a (target, prediction) signature, so the MODEL answer is the denominator; pass
    gt_denominator=True for lmms-eval / VLMEvalKit behaviour."""
    prediction = prediction.strip()
    answers = [answers] if isinstance(answers, str) else answers
    return float(max(_relaxed_correct(a, prediction) if gt_denominator
                     else _relaxed_correct(prediction, a) for a in answers))

# EvalAI answer processor (m4c_evaluator.py), tables and typos inherited verbatim for parity
_CONTRACTIONS = dict(kv.split(':') for kv in """aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't
couldn'tve:couldn't've couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've
hadn'tve:hadn't've hasnt:hasn't havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's howd:how'd howll:how'll
hows:how's Id've:I'd've I'dve:I'd've Im:I'm Ive:I've isnt:isn't itd:it'd itd've:it'd've it'dve:it'd've itll:it'll
let's:let's maam:ma'am mightnt:mightn't mightnt've:mightn't've mightn'tve:mightn't've mightve:might've mustnt:mustn't
mustve:must've neednt:needn't notve:not've oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at
'ow'sat:'ow's'at shant:shan't shed've:she'd've she'dve:she'd've she's:she's shouldve:should've shouldnt:shouldn't
shouldnt've:shouldn't've shouldn'tve:shouldn't've somebody'd:somebodyd somebodyd've:somebody'd've
somebody'dve:somebody'd've somebodyll:somebody'll somebodys:somebody's someoned:someone'd someoned've:someone'd've
someone'dve:someone'd've someonell:someone'll someones:someone's somethingd:something'd somethingd've:something'd've
something'dve:something'd've somethingll:something'll thats:that's thered:there'd thered've:there'd've
there'dve:there'd've therere:there're theres:there's theyd:they'd theyd've:they'd've they'dve:they'd've theyll:they'll
theyre:they're theyve:they've twas:'twas wasnt:wasn't wed've:we'd've we'dve:we'd've weve:we've werent:weren't
whatll:what'll whatre:what're whats:what's whatve:what've whens:when's whered:where'd wheres:where's whereve:where've
whod:who'd whod've:who'd've who'dve:who'd've wholl:who'll whos:who's whove:who've whyll:why'll whyre:why're whys:why's
wont:won't wouldve:would've wouldnt:wouldn't wouldnt've:wouldn't've wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll
y'allll:y'all'll yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd youd've:you'd've
you'dve:you'd've youll:you'll youre:you're youve:you've""".split())
_NUMBERS = dict(none='0', zero='0', one='1', two='2', three='3', four='4', five='5', six='6',
                seven='7', eight='8', nine='9', ten='10')
_PUNCT = [';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@',
          '`', ',', '?', '!']
_PERIOD_STRIP = re.compile(r'(?!<=\d)(\.)(?!\d)')  # typo'd lookbehind: "5." loses its period
_COMMA_STRIP = re.compile(r'(?<=\d)(\,)+(?=\d)')

def vqa_normalize(s):
    s = s.lower().replace(',', '').replace('?', '').replace("'s", " 's").strip()  # word_tokenize
    s = s.replace('\n', ' ').replace('\t', ' ').strip()
    out = s
    for p in _PUNCT:
        if p + ' ' in s or ' ' + p in s or _COMMA_STRIP.search(s) is not None:
            out = out.replace(p, '')
        else:
            out = out.replace(p, ' ')
    out = _PERIOD_STRIP.sub('', out, count=32)  # the original passes re.UNICODE (=32) as count
    words = [_NUMBERS.get(w, w) for w in out.lower().split()]
    return ' '.join(_CONTRACTIONS.get(w, w) for w in words if w not in ('a', 'an', 'the'))

def vqa_accuracy(prediction, answers):
    """Mean over the leave-one-out subsets of min(1, matches among the others / 3)."""
    gts, pred = [vqa_normalize(a) for a in answers], vqa_normalize(prediction)
    k = sum(g == pred for g in gts)
    return 0.0 if k == 0 else sum(min(1, (k - (g == pred)) / 3) for g in gts) / len(gts)

HME = ('HME100k', 'Handwritten Mathematical Expression Recognition')

def ocrbench_hit(prediction, answers, category):
    """VLMEvalKit OCRBench: any answer is a substring of the prediction."""
    if category in HME:  # formulas: drop spaces and newlines, keep case
        norm = lambda s: s.strip().replace('\n', ' ').replace(' ', '')
    else:
        norm = lambda s: s.lower().strip().replace('\n', ' ')
    p = norm(prediction)
    return int(any(norm(a) in p for a in ([answers] if isinstance(answers, str) else answers)))

# ----------------------------------------------------------------------------- readers

class EvalError(Exception):
    """Bad input: main() prints it as one line and exits with code 2."""

def _load(path):
    try:
        with open(path, encoding='utf-8') as f:
            if path.endswith('.jsonl'):
                return [json.loads(line) for line in f if line.strip()]
            return json.load(f)
    except (OSError, ValueError) as e:
        raise EvalError(f"{path}: cannot read annotation ({e}); pass --data with a valid file")

def _records(path, envelope):
    data = _load(path)
    if envelope:  # RRC / TextVQA files: {"dataset_name": ..., "data": [...]}
        if not isinstance(data, dict) or not isinstance(data.get('data'), list):
            raise EvalError(f"{path}: expected a JSON object with a 'data' list; "
                            f"is this the right annotation file for the task?")
        data = data['data']
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise EvalError(f"{path}: expected a list of JSON objects; is this the right file?")
    return data

def _rows(path, envelope):
    """(index, record, get) per item; get(key) fails with a message naming the file and item."""
    for i, r in enumerate(_records(path, envelope)):
        def get(key, i=i, r=r):
            if key not in r:
                raise EvalError(f"{path}: item {i} has no '{key}' (keys: {sorted(r)}); "
                                f"fix the item or use the original annotation file")
            return r[key]
        yield i, r, get

def _answers(a, path, i):
    a = [a] if isinstance(a, (str, int, float)) else a  # OCRBench/ChartQA: a bare string
    if a is not None and (not isinstance(a, list) or not a):
        raise EvalError(f"{path}: item {i} has malformed answers {a!r}; expected a non-empty list")
    return None if a is None else [str(x) for x in a]

def _image(images, rels, path, i):
    """First existing candidate under --images; the error names the first one."""
    for rel in rels:
        p = os.path.abspath(os.path.join(images, str(rel)))
        if os.path.isfile(p):
            return p
    raise EvalError(f"{path}: item {i}: image {os.path.join(images, str(rels[0]))} not found; "
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
            raise EvalError(f"{path}: needs test_human.json and test_augmented.json; "
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
        out.append(_item(get('question_id'), _image(images, cands, path, i), get('question'),
                         _answers(get('answers'), path, i), reasoning=bool(r.get('reasoning'))))
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
HERE = os.path.dirname(os.path.abspath(__file__))  # defaults (shipped sets, embedded model) live beside this file

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
        raise EvalError(f"--data {data} does not exist; pass the annotation file or its folder")
    for name in TASKS[task].files:
        if os.path.exists(os.path.join(data, name)):
            return find_annotation(task, os.path.join(data, name))
    found = [f for f in sorted(os.listdir(data)) if f.endswith('.json') and f != 'reasoning.json']
    if len(found) == 1:  # e.g. a renamed OCRBench json
        return os.path.join(data, found[0])
    raise EvalError(f"no annotation file in {data} (looked for {', '.join(TASKS[task].files)}); "
                    f"pass --data FILE")

COT_ANSWER = 'Answer: '  # a chain-of-thought answer ends "<rationale>\nAnswer: <final answer>" (posttrain.COT_SEP)

def final_answer(prediction):
    """What is scored: the text after the last 'Answer: ' of a chain of thought, else the whole answer."""
    return prediction.rsplit(COT_ANSWER, 1)[-1].strip() if COT_ANSWER in prediction else prediction

def item_score(metric, pred, it):
    a, ex = it['answers'], it['extra']
    if metric == 'ocrbench':  # the MultimodalOCR script keys formulas on the source dataset
        return ocrbench_hit(pred, a, 'HME100k' if ex['dataset'] == 'HME100k' else ex['category'])
    return dict(anls=anls, relaxed_accuracy=relaxed_accuracy, vqa_accuracy=vqa_accuracy)[metric](pred, a)

def score_items(task, items, preds):
    """The score and sub-scores the papers report, on the main set; reasoning-flagged items (incl.
    a shipped reasoning.json, which stays out of the main score) also get a score of their own."""
    every = [item_score(task.metric, final_answer(preds[str(it['qid'])]), it) for it in items]
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
    """(header or None, qid -> prediction record) of an earlier (maybe killed) run's --out. The header, the first
    line, holds the run's key; a file an older evaluate.py wrote has none. repair: cut a line cut by a kill from
    the file too (a reader beside the process that writes it only skips it)."""
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
        raise EvalError(f"{path}: not a predictions file ({e}); delete it or pass another --out")

MODEL_FILES = ('config.json', 'model.safetensors.index.json', 'tokenizer.model', 'tokenizer_config.json',
               'added_tokens.json', 'special_tokens_map.json')

def sha256_files(paths):
    h = hashlib.sha256()
    for p in paths:
        h.update(os.path.basename(p).encode() + b'\0')
        with open(p, 'rb') as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()

def model_identity(folder, known=None):
    """{sha256: of every file that decides the model's answers (config, weights, tokenizer), files: each one's
    [real path, size, mtime, ctime, inode]}. Every byte of the weights is hashed, not just the safetensors headers
    and sizes: two trainings of one architecture have the same headers and sizes. A 16 GB checkpoint takes about
    a minute to hash, so `known` (the identity the predictions file recorded) is reused while its files' stamps are
    unchanged: a file rewritten or replaced gets a new ctime or inode, a copied one a new path."""
    names = sorted(n for n in os.listdir(folder) if n in MODEL_FILES or re.fullmatch(r'model.*\.safetensors', n))
    files = {}
    for n in names:
        st = os.stat(os.path.join(folder, n))
        files[n] = [os.path.realpath(os.path.join(folder, n)), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    if known and known.get('files') == files:
        return known
    return dict(sha256=sha256_files([os.path.join(folder, n) for n in names]), files=files)

def check_device(name):
    """None if torch can run on device `name`, else one line saying what is wrong and what to pass instead."""
    import torch
    try:
        d = torch.device(name)
    except (RuntimeError, TypeError):
        return f"--device {name}: not a device torch knows; pass cpu or cuda (cuda:N for one GPU)"
    if d.type == 'cuda' and (not torch.cuda.is_available() or (d.index or 0) >= torch.cuda.device_count()):
        why = 'this torch has no CUDA' if torch.version.cuda is None else f'{torch.cuda.device_count()} GPUs visible'
        return f"--device {name}: {why}; pass --device cpu, or install a CUDA build of torch"
    return None

def _writable(path):
    if os.path.isdir(path):
        raise EvalError(f"--out {path} is a folder: pass a file in it, e.g. {os.path.join(path, 'predictions.jsonl')}")
    try:
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
        probe = f'{path}.{os.getpid()}.tmp'  # its own name: torchrun's processes probe side by side
        open(probe, 'w').close()
        os.remove(probe)
    except OSError as e:
        raise EvalError(f"--out {path}: cannot write there ({e.strerror or e}); pass --out in a writable folder")

def _all_or_none_answered(items, path):
    """Submission mode is for a file whose questions all lack answers; a few missing is a broken file."""
    missing = [it for it in items if it['answers'] is None]
    if 0 < len(missing) < len(items):
        raise EvalError(f"{path}: question {missing[0]['qid']} has no answers, unlike {len(items) - len(missing)} of the "
                        f"{len(items)}: give every question its answers (validation) or none (a test file, for submission)")

IMG_CONTEXT = '<IMG_CONTEXT>'  # model.IMG_CONTEXT: the token each image feature replaces

def prepare(args):
    """-> (task, annotation, items, predictions path, header): the questions, and the run's key that a predictions
    file must carry to be resumed: the model's bytes, the questions' file(s), and every setting that changes an
    answer. Batch size, device index, threads, --limit and the number of processes are not in it: they change the
    speed, or which questions are asked, not an answer (beyond float rounding between batch shapes)."""
    task = TASKS[args.task]
    data = args.data or os.path.join(HERE, 'data', 'eval', args.task)
    ann = find_annotation(args.task, data)
    every = task.read(ann, args.images or (ann if os.path.isdir(ann) else os.path.dirname(ann)))
    _all_or_none_answered(every, ann)
    items, files = every[:args.limit], [ann] if os.path.isfile(ann) else [
        os.path.join(ann, f'test_{s}.json') for s in ('human', 'augmented')]
    if not items:
        raise EvalError(f"{ann}: no questions in the annotation; pass --data with a non-empty file")
    # the shipped sets keep multi-fact questions in <task>/reasoning.json (same format): scored apart
    rfile = os.path.join(data if os.path.isdir(data) else os.path.dirname(data), 'reasoning.json')
    if os.path.isfile(rfile) and os.path.abspath(rfile) != os.path.abspath(ann):
        reasoning = task.read(rfile, args.images or os.path.dirname(rfile))
        _all_or_none_answered(reasoning, rfile)
        for it in reasoning[:args.limit]:
            it['extra'].update(reasoning=True, reasoning_file=True)
            items.append(it)
        files.append(rfile)
    if len({str(it['qid']) for it in items}) < len(items):
        raise EvalError(f"{ann}: question ids are not unique; resuming needs unique ids")
    bad = next((it for it in items if IMG_CONTEXT in it['question']), None)
    if bad:  # refused, not escaped: the tokenizer reads it as the special token wherever it stands
        raise EvalError(f"{ann}: question {bad['qid']} contains {IMG_CONTEXT}, the token that marks image features: "
                        f"remove it from the question")
    if os.path.isfile(args.model):
        raise EvalError(f"--model {args.model} is a file: pass the checkpoint folder (config.json, model*.safetensors, "
                        f"tokenizer.model)")
    if not os.path.isdir(args.model):
        raise EvalError(f"model folder {args.model} not found; build or download one, or pass --model PATH")
    tag = f"_{args.method}{args.ratio:g}" if args.method != 'none' else ''
    tag += ''.join('_' + k.replace('_', '-') for k in SELECT_OPTIONS if getattr(args, k))
    model_name = os.path.basename(os.path.normpath(args.model))
    out = args.out or os.path.join('results', model_name, f'{args.task}{tag}.jsonl')
    _writable(out)
    import torch
    args.device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if msg := check_device(args.device):
        raise EvalError(msg)
    args.dtype = args.dtype or ('bfloat16' if args.device.startswith('cuda') else 'float32')
    old, _ = load_done(out, repair=False)
    key = dict(task=args.task, model_sha256=None, data_sha256=sha256_files(files), method=args.method,
               max_num=args.max_num or task.max_num, max_new_tokens=args.max_new_tokens or task.max_new_tokens,
               cot=args.cot, prompt=task.suffix, dtype=args.dtype, device=args.device.split(':')[0])
    key.update({'ratio': args.ratio} if args.method != 'none' else {})
    key.update({'fastv_layer': args.fastv_layer} if args.method == 'fastv' else {})
    key.update({k: getattr(args, k) for k in SELECT_OPTIONS} if args.method == 'select' else {})
    model_id = model_identity(args.model, old and old.get('model'))
    key['model_sha256'] = model_id['sha256']
    return task, ann, items, out, json.loads(json.dumps(dict(run=key, model=model_id)))

def resume(path, head, write=True):
    """The records of `path` if its header holds head's run key, else none: another run's (or an older
    evaluate.py's) predictions start afresh, with a note naming the first setting that differs. write: make the
    file hold `head` and those records (atomically: a kill leaves the old file or the new one)."""
    old, recs = load_done(path, repair=write)
    if recs and (old or {}).get('run') != head['run']:
        a, b = (old or {}).get('run', {}), head['run']
        k = next((k for k in sorted({*a, *b}) if a.get(k) != b.get(k)), None)
        why = f"{k} {str(a.get(k))[:16]} there, {str(b.get(k))[:16]} now" if old else 'it has no run key'
        if write:
            print(f"evaluate.py: {path} holds the predictions of another run ({why}): starting it afresh", file=sys.stderr)
        recs = {}
    if write and old != head:
        write_text(path, ''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in [head, *recs.values()]))
    return recs

def shard_path(out, rank, world):
    return os.path.splitext(out)[0] + f'.rank{rank}of{world}.jsonl'

def load_model(args):
    import torch, model as M, compress
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model = M.load_model(args.model, device=args.device, dtype=getattr(torch, args.dtype),
                             build_compressor=compress.build)  # a distilled student's folder needs no flag
        tok = M.load_tokenizer(args.model)
        if args.method != 'none':
            if model.compressor is not None:
                raise EvalError(f"{args.model} is already compressed ({model.config.compressor}); drop --method")
            compress.apply(model, method=args.method, ratio=args.ratio, fastv_layer=args.fastv_layer,
                           **{k: getattr(args, k) for k in SELECT_OPTIONS})
    except (M.ModelLoadError, compress.CompressError) as e:
        raise EvalError(str(e))
    return M, model, tok

STATS = ('visual_tokens', 'prefill_s', 'decode_tokens', 'decode_s')

def peak_memory(device):
    """(MB, what was measured): this process's peak so far; the resident set on a CPU (ru_maxrss is KiB)."""
    if device and device.startswith('cuda'):
        import torch
        return round(torch.cuda.max_memory_allocated() / 2**20, 1), 'cuda max_memory_allocated'
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), 'cpu peak RSS'

def generate(args, task, todo, out_path):
    """Greedy answers appended to out_path, flushed per batch, each with its share of the batch's stats and
    the process's peak memory so far (a resumed run reports the peak of the processes that generated)."""
    M, model, tok = load_model(args)  # checks the folder before the slow torch import
    import torch
    from tqdm import tqdm
    os.makedirs(os.path.dirname(out_path) or '.', exist_ok=True)
    with open(out_path, 'a', encoding='utf-8') as f:
        for b in tqdm(range(0, len(todo), args.batch_size), desc=args.task, unit='batch'):
            batch, pixels = todo[b:b + args.batch_size], []
            for it in batch:
                try:
                    pv = M.load_image(it['image'], max_num=args.max_num or task.max_num,
                                      image_size=model.config.force_image_size)
                except (ValueError, OSError) as e:
                    raise EvalError(f"{e if it['image'] in str(e) else it['image'] + ': ' + str(e)}; "
                                    f"replace the file or remove question {it['qid']} from the annotation")
                pixels.append(pv.to(args.device, getattr(torch, args.dtype)))
            stats = {}
            cot = [args.cot and bool(it['extra'].get('reasoning')) for it in batch]  # reason first, then answer
            questions = [it['question'] + ('' if c else task.suffix) for it, c in zip(batch, cot)]
            answers = model.batch_chat(tok, pixels, questions,
                                       max_new_tokens=max_new_tokens(args, task, any(cot)),
                                       min_new_tokens=1, stats=stats)  # min_new_tokens=1 as InternVL's eval
            peak_mb, peak_kind = peak_memory(args.device)
            for it, a in zip(batch, answers):  # each item's share of the batch stats: resume re-sums
                rec = dict(qid=it['qid'], answer=a, **{k: stats.get(k, 0) / len(batch) for k in STATS},
                           peak_mb=peak_mb, peak_kind=peak_kind)
                f.write(json.dumps(rec, ensure_ascii=False) + '\n')
            f.flush()

COT_MIN_TOKENS = 256  # a rationale before the answer needs room

def max_new_tokens(args, task, cot=False):
    n = args.max_new_tokens or task.max_new_tokens
    return max(n, COT_MIN_TOKENS) if cot and not args.max_new_tokens else n

def write_text(path, text):
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
        f.write(text)
    os.replace(path + '.tmp', path)  # atomic: a kill never leaves half a results file

def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=1, ensure_ascii=False))

def run(args, rank=0, world=1):
    """Generate what `out` lacks and score. Under torchrun (world > 1) each process answers every world-th question
    into its own shard file, which resumes on its own; rank 0 merges the shards into `out` and scores."""
    task, ann, items, out, head = prepare(args)
    done = resume(out, head, write=rank == 0)
    mine, todo = out, [it for it in items if str(it['qid']) not in done]
    if world > 1:
        import torch, torch.distributed as dist
        if args.device == 'cuda':
            args.device = f"cuda:{os.environ.get('LOCAL_RANK', rank)}"
        args.threads = args.threads or max(1, (os.cpu_count() or 1) // int(os.environ.get('LOCAL_WORLD_SIZE', world)))
        mine = shard_path(out, rank, world)  # its key holds the shard: a run with other processes does not resume it
        part = resume(mine, dict(head, run=dict(head['run'], shard=[rank, world])))
        todo = [it for it in todo[rank::world] if str(it['qid']) not in part]
    t0 = time.time()
    if todo:
        generate(args, task, todo, mine)
    generated = len(todo)
    if world > 1:
        n = torch.tensor([generated])
        dist.all_reduce(n)  # waits for every shard to be complete
        if rank != 0:
            return None
        generated, shards = int(n), [shard_path(out, r, world) for r in range(world)]
        done.update({q: rec for p in shards for q, rec in load_done(p)[1].items()})
        write_text(out, ''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in [head, *done.values()]))
        for p in shards:
            os.remove(p)
    done = load_done(out)[1]
    recs = [done[str(it['qid'])] for it in items]
    tot = {k: sum(r.get(k, 0) for r in recs) for k in STATS}
    peaks = [(r['peak_mb'], r['peak_kind']) for r in recs if 'peak_mb' in r]  # older files: this process's
    mem = max(peaks) if peaks else peak_memory(args.device)
    res = dict(task=args.task, metric=task.metric, model=args.model, data=ann, method=args.method,
               ratio=args.ratio, max_num=args.max_num or task.max_num, device=args.device, dtype=args.dtype,
               max_new_tokens=max_new_tokens(args, task), cot=args.cot, n=len(items), new_predictions=generated,
               predictions=out, wall_s=round(time.time() - t0, 2),
               visual_tokens_per_image=round(tot['visual_tokens'] / len(recs), 1),
               prefill_ms_per_image=round(1000 * tot['prefill_s'] / len(recs), 2),
               decode_tokens_per_s=round(tot['decode_tokens'] / tot['decode_s'], 2) if tot['decode_s'] else None,
               peak_memory_mb=round(mem[0], 1), peak_memory_kind=mem[1])
    preds = {str(it['qid']): done[str(it['qid'])]['answer'] for it in items}
    if all(it['answers'] is not None for it in items):
        res.update(score_items(task, items, preds))
    else:  # test split: the answers live on the RRC server
        res.update(score=None, submission=os.path.splitext(out)[0] + '_submission.json')
        write_json(res['submission'], [dict(questionId=int(it['qid']), answer=preds[str(it['qid'])])
                                       for it in items if not it['extra'].get('reasoning_file')])
    write_json(os.path.splitext(out)[0] + '.json', res)
    score = f"submission {res['submission']}" if res['score'] is None else f"ocrbench {res['score']}/{res['n']}" \
        if task.metric == 'ocrbench' else f"{task.metric} {res['score']:.2f}"
    if res.get('reasoning'):
        score += f" (reasoning {res['reasoning']['score']:.2f} on {res['reasoning']['n']})"
    tps = '-' if res['decode_tokens_per_s'] is None else f"{res['decode_tokens_per_s']:.1f}"
    print(f"{args.task}: {score} | n={res['n']}, {generated} generated | {res['visual_tokens_per_image']:.0f} "
          f"visual tok/img | prefill {res['prefill_ms_per_image']:.1f} ms/img | decode {tps} tok/s | "
          f"peak {mem[0]:.0f} MB {mem[1]} -> {os.path.splitext(out)[0] + '.json'}")
    return res

SELECT_OPTIONS = ('skip_thumbnail', 'rank_projected')  # compress.SELECT_OPTIONS, named here so flags parse before torch loads

class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit code 2 (argparse prints its usage first); every script's flags."""
    def error(self, message):
        print(f"{self.prog}: error: {message} (see python {self.prog} --help)", file=sys.stderr)
        sys.exit(2)

def out_of_range(args, **bounds):
    """'--flag V: must be ...' for the first flag outside its bound, else None. A bound is LOW (value >= LOW) or
    (LOW, HIGH) (LOW < value <= HIGH); a flag left unset (None) is skipped, a list is checked value by value."""
    for k, b in bounds.items():
        v = getattr(args, k)
        for x in v if isinstance(v, (list, tuple)) else [] if v is None else [v]:
            if not (b[0] < x <= b[1] if isinstance(b, tuple) else x >= b):  # NaN fails both
                want = f">= {b:g}" if not isinstance(b, tuple) else f"> {b[0]:g}" + (
                    f" and <= {b[1]:g}" if b[1] != float('inf') else '')
                return f"--{k.replace('_', '-')} {x:g}: must be {want}"
    return None

class _Parser(Parser):
    def error(self, message):  # raised, so that main() prints it and a caller in Python can catch it
        raise EvalError(f"{message} (see python evaluate.py --help)")

def parse_args(argv=None):
    p = _Parser(prog='evaluate.py', description=__doc__.split('\n\n')[0].strip())
    p.add_argument('--task', required=True, choices=sorted(TASKS))
    p.add_argument('--model', default=os.path.join(HERE, 'checkpoints', 'tiny'))
    p.add_argument('--data', help='annotation file or folder (default: data/eval/<task>/)')
    p.add_argument('--images', help="image root (default: the annotation file's folder)")
    p.add_argument('--max-num', type=int, help='max dynamic tiles (default: per-task protocol)')
    p.add_argument('--max-new-tokens', type=int, help='default: per-task protocol')
    p.add_argument('--limit', type=int, help='first N questions only')
    p.add_argument('--batch-size', type=int, default=1)
    p.add_argument('--out', help='predictions jsonl (default: results/<model>/<task>[_<method><ratio>].jsonl)')
    p.add_argument('--device', help='cpu | cuda (default: cuda if available)')
    p.add_argument('--dtype', choices=['float32', 'bfloat16', 'float16'],
                   help='default: bfloat16 on cuda (the official setting), float32 on cpu')
    p.add_argument('--method', default='none', choices=['none', 'pool', 'select', 'fastv'],
                   help='training-free compression (compress.py); a distilled student needs none')
    p.add_argument('--ratio', type=float, default=1.0, help='share of visual tokens kept by --method')
    p.add_argument('--fastv-layer', type=int, default=2, help='FastV prunes before this decoder layer (K)')
    p.add_argument('--skip-thumbnail', action='store_true', help="with --method select: rank a many-tile image's "
                   'thumbnail below its tiles (compress.py)')
    p.add_argument('--rank-projected', action='store_true', help='with --method select: count near-duplicates '
                   "among mlp1's outputs, not the ViT's (compress.py)")
    p.add_argument('--cot', action='store_true', help='ask the reasoning questions without the short-answer suffix, '
                   'so a model trained on chains of thought reasons first (max_new_tokens >= 256); the final answer '
                   'is scored either way')
    p.add_argument('--threads', type=int, help='CPU threads (default: all)')
    args = p.parse_args(argv)
    if msg := out_of_range(args, max_num=1, max_new_tokens=1, limit=1, batch_size=1, threads=0, fastv_layer=1,
                           ratio=(0, 1)):
        p.error(msg)
    for k in SELECT_OPTIONS:
        if getattr(args, k) and args.method != 'select':
            p.error(f"--{k.replace('_', '-')} is an option of --method select; add --method select or drop it")
    return args

def main(argv=None):
    rank, world = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))  # torchrun's
    try:
        args = parse_args(argv)
        if world > 1:  # gloo on GPUs too: the processes only wait for each other, their answers stay apart
            import datetime, torch.distributed as dist
            dist.init_process_group('gloo', timeout=datetime.timedelta(days=1))
        run(args, rank, world)
        if world > 1:
            dist.barrier()  # rank 0 has scored: the others leave no sooner (an early leaver can abort the group)
    except EvalError as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("evaluate.py: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        if world > 1:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()
    return 0

if __name__ == '__main__':
    sys.exit(main())
