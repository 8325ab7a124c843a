"""
The metrics of InternVL2's evaluation, copied from the scripts that produced its numbers, quirks included
(metrics-and-formats.md, section 3): ANLS (DocVQA, InfoVQA), relaxed accuracy (ChartQA), VQA accuracy with
EvalAI's answer processor (TextVQA), OCRBench's substring hit; and a paired bootstrap interval for the difference
of two systems' scores. Standard library only (the bootstrap: numpy too): copy it alone.

    python -m pytest tests/test_metrics.py -q
"""
import re


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


def paired_bootstrap(a, b, rounds=10000, seed=0, weights=None, strata=None):
    """-> (mean difference, low, high): mean(a - b) over the questions and its 95% percentile bootstrap interval, the
    questions resampled with replacement `rounds` times (numpy's default_rng(seed)). a, b: two systems' per-question
    scores, same questions, same order. weights: per question, for a weighted mean. strata: a label per question; each
    label's questions are resampled among themselves, so every resample keeps each label's count (and, with weights
    equal within a label, its share of the mean)."""
    import numpy as np  # here: the metrics above need only the standard library
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    w = np.ones(len(d)) if weights is None else np.asarray(weights, dtype=np.float64)
    labels = np.zeros(len(d)) if strata is None else np.asarray(strata)
    if d.ndim != 1 or not len(d) or not len(a) == len(b) == len(w) == len(labels) or rounds < 1:
        raise ValueError(f"paired_bootstrap: a, b (and weights, strata) need the same non-zero length and rounds >= 1, "
                         f"got {len(a)}, {len(b)}, {len(w)}, {len(labels)} and {rounds}")
    rng, groups = np.random.default_rng(seed), [np.flatnonzero(labels == s) for s in np.unique(labels)]
    stats, chunk = [], max(1, 2**22 // len(d))  # rounds a chunk at a time: chunk x questions indices in memory
    for start in range(0, rounds, chunk):
        idx = np.concatenate([g[rng.integers(0, len(g), (min(chunk, rounds - start), len(g)))] for g in groups], axis=1)
        stats.append((w[idx] * d[idx]).sum(1) / w[idx].sum(1))
    low, high = np.percentile(np.concatenate(stats), [2.5, 97.5])
    return float((w * d).sum() / w.sum()), float(low), float(high)
