"""metrics.py: the metrics' edge cases (docs/metrics-and-formats.md 3.7 and the inherited quirks).

    python -m pytest tests/test_metrics.py -q
"""
import pytest

import metrics

approx = pytest.approx

# ----------------------------------------------------------------------------- ANLS

def test_anls_doc_cases():
    assert metrics.anls('0.28', ['0.28']) == 1
    assert metrics.anls('0.2', ['0.28']) == approx(0.75)  # 1 - 1/4
    assert metrics.anls('abc', ['xyz']) == 0
    assert metrics.anls('', ['abc']) == 0  # empty prediction
    assert metrics.anls('', ['']) == 1  # empty/empty: length 0 -> NL 0
    assert metrics.anls('  The   ANSWER ', ['the answer']) == 1  # case + whitespace insensitive

def test_anls_threshold_and_max():
    assert metrics.anls('ab', ['ax']) == 0.5  # NL exactly 0.5 is kept (standard ANLS gives 0)
    assert metrics.anls('abc', ['axy']) == 0  # 1 - 2/3 < 0.5
    assert metrics.anls('abcd', ['zzzz', 'abcx']) == approx(0.75)  # best answer wins
    assert metrics.anls('ab', ['ax'], threshold=0.6) == 0
    assert metrics.anls('0.2', '0.28') == approx(0.75)  # a bare string answer

def test_anls_raw_length_denominator():
    # distance on normalised strings (1) but denominator on the RAW lengths (7, not 4)
    assert metrics.anls('  0.2  ', ['0.28']) == approx(1 - 1 / 7)
    assert metrics.levenshtein('kitten', 'sitting') == 3
    assert metrics.levenshtein('', 'abc') == 3 and metrics.levenshtein('abc', 'abc') == 0

# ----------------------------------------------------------------------------- relaxed accuracy

def test_relaxed_doc_cases():
    assert metrics.relaxed_accuracy('10%', ['0.1']) == 1
    assert metrics.relaxed_accuracy('104', ['100']) == 1
    assert metrics.relaxed_accuracy('106', ['100']) == 0
    assert metrics.relaxed_accuracy('0', ['0.0']) == 0  # zero reference -> string path
    assert metrics.relaxed_accuracy('Yes', ['yes']) == 1
    assert metrics.relaxed_accuracy('1,000', ['1000']) == 0  # no comma stripping
    assert metrics.relaxed_accuracy('$5', ['5']) == 0  # no unit stripping
    assert metrics.relaxed_accuracy(' 42 \n', '42') == 1  # prediction stripped, bare-string answer
    assert metrics.relaxed_accuracy('7', ['3', '7.2']) == 1  # max over answers

def test_relaxed_swapped_denominator_quirk():
    # InternVL: |pred - gt| / |pred|; lmms-eval / VLMEvalKit: / |gt|
    assert metrics.relaxed_accuracy('105.2', ['100']) == 1  # 5.2 / 105.2 = 0.049
    assert metrics.relaxed_accuracy('105.2', ['100'], gt_denominator=True) == 0  # 0.052
    assert metrics.relaxed_accuracy('95.1', ['100']) == 0  # 4.9 / 95.1 = 0.0515
    assert metrics.relaxed_accuracy('95.1', ['100'], gt_denominator=True) == 1
    assert metrics.relaxed_accuracy('0', ['0']) == 1  # model answer 0 -> exact string match
    assert metrics.relaxed_accuracy('0.001', ['0']) == 0

# ----------------------------------------------------------------------------- VQA accuracy

@pytest.mark.parametrize('k,want', [(0, 0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1), (10, 1)])
def test_vqa_leave_one_out(k, want):
    assert metrics.vqa_accuracy('Two', ['2'] * k + ['other'] * (10 - k)) == approx(want)

@pytest.mark.parametrize('raw,norm', [
    ('the cat', 'cat'), ('A dog', 'dog'), ('an apple', 'apple'),  # articles
    ('Two', '2'), ('none', '0'), ('ten', '10'), ('eleven', 'eleven'),  # number words
    ('dont', "don't"), ('Isnt', "isn't"), ('yall', "y'all"), ('Im', 'im'),  # table keys are lowercase-matched
    ("John's", "john 's"), ('Yes?', 'yes'), ('1,000', '1000'),  # word_tokenize
    ('x-ray', 'x ray'), ('a - b', 'b'), ('(hi)', 'hi'), ('e.g.', 'eg'),  # punctuation
    ('3.5', '3.5'), ('5.', '5'),  # typo'd lookbehind: "5." loses its period
    ('.' * 33, '.'),  # re.UNICODE passed as count: only 32 periods go
    ('line\nbreak\there', 'line break here'),
])
def test_vqa_normalize(raw, norm):
    assert metrics.vqa_normalize(raw) == norm

def test_vqa_normalised_matching():
    assert metrics.vqa_accuracy('The Cat.', ['cat'] * 10) == 1
    assert metrics.vqa_accuracy('dont', ["don't"] * 2 + ['no'] * 8) == approx(0.6)

# ----------------------------------------------------------------------------- OCRBench

def test_ocrbench_hit():
    assert metrics.ocrbench_hit('the answer is STOP', ['stop'], 'Regular Text Recognition') == 1
    assert metrics.ocrbench_hit('go', ['stop', 'GO'], 'Scene Text-centric VQA') == 1
    assert metrics.ocrbench_hit('sto', 'stop', 'Doc-oriented VQA') == 0
    assert metrics.ocrbench_hit('two\nlines', ['TWO LINES'], 'Key Information Extraction') == 1
    hme = 'Handwritten Mathematical Expression Recognition'
    assert metrics.ocrbench_hit('x + y', ['x+y'], hme) == 1
    assert metrics.ocrbench_hit('x +\ny = z', ['x+y=z'], 'HME100k') == 1
    assert metrics.ocrbench_hit('X + y', ['x+y'], hme) == 0  # case kept for formulas

# ----------------------------------------------------------------------------- paired bootstrap

def slow_bootstrap(a, b, rounds, seed, weights, strata):
    """The interval by hand: an explicit loop over rounds and questions, Python's own generator, nearest-rank
    percentiles."""
    import random
    rng, by = random.Random(seed), {}
    for i, s in enumerate(strata):
        by.setdefault(s, []).append(i)
    stats = []
    for _ in range(rounds):
        picks = [rng.choice(qs) for qs in by.values() for _ in qs]
        stats.append(sum(weights[i] * (a[i] - b[i]) for i in picks) / sum(weights[i] for i in picks))
    stats.sort()
    return stats[int(0.025 * rounds)], stats[int(0.975 * rounds) - 1]

def test_bootstrap_exact_cases():
    import numpy as np
    b = np.random.default_rng(0).random(50)
    assert metrics.paired_bootstrap(b, b) == (0, 0, 0)  # identical systems
    assert metrics.paired_bootstrap(b + 0.25, b) == approx((0.25, 0.25, 0.25))  # a constant shift
    # d = 0, 1, 3: a resample's mean is 0 (all zeros) or 3 (all threes) each with chance 1/27 > 2.5%
    assert metrics.paired_bootstrap([0, 1, 3], [0, 0, 0]) == approx((4 / 3, 0, 3))
    assert metrics.paired_bootstrap([2, 2], [1, 3], weights=[3, 1]) == approx((0.5, -1, 1))  # weighted mean
    with pytest.raises(ValueError, match='same non-zero length'):
        metrics.paired_bootstrap([1, 2], [1])

def test_bootstrap_matches_a_slow_loop():
    import numpy as np
    g = np.random.default_rng(1)
    n = 40
    a, b = g.random(n).tolist(), (g.random(n) * 0.8).tolist()
    strata = ['x'] * 10 + ['y'] * 30  # each stratum weighs one half, whatever its size
    weights = [1 / 20] * 10 + [1 / 60] * 30
    mean, low, high = metrics.paired_bootstrap(a, b, rounds=4000, seed=3, weights=weights, strata=strata)
    want = sum(a[:10]) / 20 - sum(b[:10]) / 20 + sum(a[10:]) / 60 - sum(b[10:]) / 60
    assert mean == approx(want)
    slow_low, slow_high = slow_bootstrap(a, b, 4000, 3, weights, strata)
    tol = 0.08 * (high - low)  # Monte-Carlo error of a 2.5% quantile of 4000 draws: about 1% of the width
    assert low == approx(slow_low, abs=tol) and high == approx(slow_high, abs=tol)
    assert metrics.paired_bootstrap(a, b, rounds=4000, seed=3, weights=weights, strata=strata) == (mean, low, high)

def test_bootstrap_interval_shrinks_and_covers():
    import numpy as np
    g = np.random.default_rng(2)
    width = lambda n: (lambda m, lo, hi: hi - lo)(*metrics.paired_bootstrap(g.random(n), g.random(n), rounds=2000))
    assert width(1600) < width(100) / 2.5  # 1 / sqrt(n): a quarter
    hits = 0
    for seed in range(200):  # per-question differences with mean 0.3: the interval holds it about 95% of the time
        a = g.normal(0.3, 1, 40) + (b := g.normal(0, 1, 40))
        _, low, high = metrics.paired_bootstrap(a, b, rounds=1000, seed=seed)
        hits += low <= 0.3 <= high
    assert 0.86 <= hits / 200 <= 0.99
