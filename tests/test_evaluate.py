"""evaluate.py: annotation readers on tiny fixtures in the real formats, CLI errors, an end-to-end resume run,
evaluate() on a model in memory, the LLM's prefill FLOPs (the metrics: tests/test_metrics.py).

    python -m pytest tests/test_evaluate.py -q
"""
import json, os, shutil, subprocess, sys
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import evaluate as E
from conftest import run_main

approx = pytest.approx

# ----------------------------------------------------------------------------- readers

def png(path, size=(64, 48)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new('RGB', size, 'white').save(path)

def dump(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        if path.endswith('.jsonl'):
            f.write(''.join(json.dumps(o) + '\n' for o in obj))
        else:
            json.dump(obj, f)
    return str(path)

def rrc(items, name='docvqa'):
    return dict(dataset_name=name, dataset_split='val', dataset_version='1.0', data=items)

def docvqa_fixture(root, n=8, answers=True):
    items = []
    for i in range(n):
        png(os.path.join(root, 'documents', f'doc{i % 4}_1.png'))
        it = dict(questionId=100 + i, question=f'What is field {i}?', question_types=['form'],
                  image=f'documents/doc{i % 4}_1.png', docId=i % 4, ucsf_document_id=f'doc{i % 4}',
                  ucsf_document_page_no='1', data_split='val')
        if answers:
            it['answers'] = [f'value {i}', f'v{i}']
        items.append(it)
    return dump(os.path.join(root, 'val_v1.0.json' if answers else 'test_v1.0.json'), rrc(items))

def test_read_docvqa(tmp_path):
    path = docvqa_fixture(str(tmp_path), n=3)
    items = E.read_docvqa(path, str(tmp_path))
    assert [it['qid'] for it in items] == [100, 101, 102]
    assert items[0]['answers'] == ['value 0', 'v0'] and items[0]['question'] == 'What is field 0?'
    assert items[1]['image'] == str(tmp_path / 'documents' / 'doc1_1.png') and os.path.isabs(items[1]['image'])
    test = E.read_docvqa(docvqa_fixture(str(tmp_path), n=2, answers=False), str(tmp_path))
    assert test[0]['answers'] is None

def test_read_infovqa(tmp_path):
    png(str(tmp_path / 'infographicsvqa_images' / '10002.jpeg'))
    png(str(tmp_path / '10003.jpeg'))
    path = dump(str(tmp_path / 'infographicsVQA_val_v1.0_withQT.json'), rrc([
        dict(questionId=65718, question='How many?', image_local_name='10002.jpeg', answers=['3'],
             answer_type=['single span'], evidence=['figure'], **{'operation/reasoning': ['counting']}),
        dict(questionId=65719, question='Which?', image_local_name='10003.jpeg', answers=['red'],
             answer_type=['single span'], evidence=['text'], **{'operation/reasoning': []})], 'infographicVQA'))
    a, b = E.read_infovqa(path, str(tmp_path))
    assert a['image'].endswith('infographicsvqa_images/10002.jpeg') and b['image'].endswith('/10003.jpeg')
    assert a['extra']['reasoning'] and not b['extra']['reasoning']

def chartqa_fixture(root):
    for split, labels in (('human', ['12', 'Yes']), ('augmented', ['0.5', '40%'])):
        dump(os.path.join(root, f'test_{split}.json'),
             [dict(imgname=f'{split}{i}.png', query=f'q{i}?', label=l) for i, l in enumerate(labels)])
        for i in range(2):
            png(os.path.join(root, 'png', f'{split}{i}.png'))
    return root

def test_read_chartqa(tmp_path):
    root = chartqa_fixture(str(tmp_path / 'test'))
    items = E.read_chartqa(root, root)
    assert [it['qid'] for it in items] == ['human_0', 'human_1', 'augmented_0', 'augmented_1']
    assert items[3]['answers'] == ['40%'] and items[3]['extra']['split'] == 'augmented'
    assert items[0]['image'] == os.path.join(root, 'png', 'human0.png')
    assert len(E.read_chartqa(os.path.join(root, 'test_human.json'), root)) == 2  # one split file
    jl = dump(str(tmp_path / 'test' / 'test_augmented.jsonl'),  # InternVL jsonl variant
              [dict(image='png/augmented1.png', question='q?', answer='7', question_id=5)])
    (it,) = E.read_chartqa(jl, root)
    assert it['qid'] == 'augmented_5' and it['answers'] == ['7'] and it['question'] == 'q?'

def test_read_textvqa(tmp_path):
    png(str(tmp_path / 'train_images' / 'abc.jpg'))
    png(str(tmp_path / 'train_images' / 'def.png'))  # png accepted when the jpg is missing
    items = [dict(question='what?', question_id=34602 + i, image_id=iid, image_classes=['Car'],
                  flickr_original_url='', flickr_300k_url='', image_width=64, image_height=48,
                  answers=['nous'] * 10, question_tokens=['what'], set_name='val')
             for i, iid in enumerate(['abc', 'def'])]
    path = dump(str(tmp_path / 'TextVQA_0.5.1_val.json'),
                dict(dataset_type='val', dataset_name='textvqa', dataset_version='0.5.1', data=items))
    a, b = E.read_textvqa(path, str(tmp_path))
    assert a['image'].endswith('train_images/abc.jpg') and b['image'].endswith('train_images/def.png')
    assert a['qid'] == 34602 and len(a['answers']) == 10
    for answers in ('nous', ['nous'], ['nous'] * 9):  # the right answer would score 0, 0 and 0.9: refused
        items[1]['answers'] = answers
        dump(path, dict(dataset_type='val', dataset_name='textvqa', dataset_version='0.5.1', data=items))
        with pytest.raises(E.Error, match=r"item 1 has \d+ answer\(s\); TextVQA's accuracy needs the 10"):
            E.read_textvqa(path, str(tmp_path))

def ocrbench_fixture(root):
    rows = [('Regular Text Recognition', 'IIIT5K', 'STOP', 'stop'),
            ('Scene Text-centric VQA', 'textVQA', ['cafe', 'café'], 'a cafe'),
            ('Handwritten Mathematical Expression Recognition', 'HME100k', 'x^{2}+1', 'x ^ { 2 } + 1'),
            ('Key Information Extraction', 'FUNSD', '12/03', 'nope')]
    items = []
    for i, (cat, ds, ans, _) in enumerate(rows):
        png(os.path.join(root, 'OCRBench_Images', ds, f'{i}.jpg'))
        items.append(dict(dataset_name=ds, id=i, image_path=f'OCRBench_Images/{ds}/{i}.jpg',
                          question='what is written?', answers=ans, type=cat))
    return dump(os.path.join(root, 'OCRBench.json'), items), [r[3] for r in rows]

def test_read_ocrbench(tmp_path):
    path, _ = ocrbench_fixture(str(tmp_path))
    items = E.read_ocrbench(path, str(tmp_path))
    assert items[0]['answers'] == ['STOP'] and items[1]['answers'] == ['cafe', 'café']
    assert items[2]['extra'] == dict(category='Handwritten Mathematical Expression Recognition',
                                     dataset='HME100k', reasoning=False)

def test_find_annotation_by_real_names(tmp_path):
    docvqa_fixture(str(tmp_path / 'docvqa'), n=1)
    assert E.find_annotation('docvqa', str(tmp_path / 'docvqa')).endswith('val_v1.0.json')
    chartqa_fixture(str(tmp_path / 'chartqa' / 'test'))
    assert E.find_annotation('chartqa', str(tmp_path / 'chartqa')) == str(tmp_path / 'chartqa' / 'test')
    dump(str(tmp_path / 'ocr' / 'my_ocrbench.json'), [])
    assert E.find_annotation('ocrbench', str(tmp_path / 'ocr')).endswith('my_ocrbench.json')

# ----------------------------------------------------------------------------- CLI

def cli(*args, cwd=ROOT):
    """evaluate.py's command line, in this process (tests/test_bad_inputs.py runs it as a command)."""
    return run_main(E.main, *args, cwd=cwd)

def assert_clean_error(r, *words, progress=False):
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert 'Traceback' not in r.stderr and (progress or len(lines) == 1), r.stderr  # progress: tqdm's bar
    assert lines[-1].startswith('evaluate.py: error: ') and all(w in lines[-1] for w in words), lines[-1]

def test_cli_bad_inputs(tmp_path):
    t = str(tmp_path)
    assert_clean_error(cli('--task', 'mmmu'), 'invalid choice')
    assert_clean_error(cli('--task', 'docvqa', '--data', t + '/nope.json'), 'nope.json', '--data')
    dump(t + '/bad/val_v1.0.json', dict(data='oops'))
    assert_clean_error(cli('--task', 'docvqa', '--data', t + '/bad'), "'data' list")
    open(t + '/bad/broken.json', 'w').write('{"data": [')
    assert_clean_error(cli('--task', 'docvqa', '--data', t + '/bad/broken.json'), 'broken.json')
    png(t + '/bad/x.png')
    dump(t + '/bad/items.json', rrc([dict(questionId=1, image='x.png', answers=['a'])]))
    assert_clean_error(cli('--task', 'docvqa', '--data', t + '/bad/items.json'), "item 0", "'question'")
    dump(t + '/bad/img.json', rrc([dict(questionId=1, question='q', image='documents/x.png', answers=['a'])]))
    assert_clean_error(cli('--task', 'docvqa', '--data', t + '/bad/img.json'), 'x.png', '--images')
    docvqa_fixture(t + '/ok', n=1)
    assert_clean_error(cli('--task', 'docvqa', '--data', t + '/ok', '--model', t + '/nomodel'),
                       'nomodel', '--model')
    r = cli('--task', 'docvqa', '--data', t + '/ok', '--out', t + '/default.jsonl', cwd=t)  # the shipped teacher
    assert r.returncode == 0 and json.load(open(t + '/default.json'))['model'].endswith('checkpoints/tiny'), r.stderr
    os.makedirs(t + '/m')
    assert_clean_error(cli('--task', 'docvqa', '--data', t + '/ok', '--model', t + '/m'), 'config.json')
    assert_clean_error(cli('--task', 'docvqa', '--limit', '1', '--max-new-tokens', '1000000000'),
                       "--max-new-tokens 1000000000: more than the LLM's")
    assert_clean_error(cli('--task', 'docvqa', '--method', 'tome'), "invalid choice: 'tome'")
    assert_clean_error(cli('--task', 'docvqa', '--method', 'fastv', '--skip-thumbnail'), '--method select')
    assert_clean_error(cli('--task', 'docvqa', '--rank-projected'), '--rank-projected is an option of --method select')
    assert_clean_error(cli('--task', 'docvqa', '--method', 'pool', '--seed', '1'),
                       '--seed is an option of --method random')
    assert_clean_error(cli('--task', 'docvqa', '--method', 'random', '--seed', '-1'), '--seed -1: must be >= 0')
    dump(t + '/bad/null.json', rrc([dict(questionId=1, question='q', image='x.png', answers=[None])]))
    assert_clean_error(cli('--task', 'docvqa', '--data', t + '/bad/null.json'), 'malformed answers [None]')
    # --out whose scores file (.json beside it) would overwrite this run's questions or its model's files
    ann = json.load(open(t + '/ok/val_v1.0.json'))
    assert_clean_error(cli('--task', 'docvqa', '--data', t + '/ok', '--out', t + '/ok/val_v1.0.jsonl'), 'would write',
                       'val_v1.0.json')
    shutil.copytree(os.path.join(ROOT, 'checkpoints', 'tiny'), t + '/tiny')
    config = open(t + '/tiny/config.json').read()
    assert_clean_error(cli('--task', 'docvqa', '--data', t + '/ok', '--model', t + '/tiny', '--out',
                           t + '/tiny/config.jsonl'), 'would write', 'config.json')
    assert json.load(open(t + '/ok/val_v1.0.json')) == ann and open(t + '/tiny/config.json').read() == config
    # an answered set with an unanswered reasoning.json would go to submission mode, its answers never scored
    items = ann['data']
    dump(t + '/ok/reasoning.json', rrc([{k: v for k, v in items[0].items() if k != 'answers'}]))
    assert_clean_error(cli('--task', 'docvqa', '--data', t + '/ok'), 'reasoning.json lacks answers')
    import baselines, compress
    assert E.SELECT_OPTIONS == compress.SELECT_OPTIONS  # every option select has is a flag here, checked before torch loads
    assert set(E.METHODS) == {'none', *compress.COMPRESSORS, *baselines.TRAINING_FREE}  # every method compress.py and baselines.py have

def prefilled(out, items, answers, *argv):
    """Predictions as the run of `argv` writes them: its key first (E.prepare), then a record per item."""
    head = E.prepare(E.parse_args([*argv, '--out', out]))[4]
    dump(out, [head] + [dict(qid=it['qid'], answer=a, visual_tokens=256, prefill_s=0.5, decode_tokens=4, decode_s=0.1,
                             peak_mb=5000.0 + i, peak_kind='cpu peak RSS')
                        for i, (it, a) in enumerate(zip(items, answers))])

def test_scoring_from_finished_predictions(tmp_path):
    # every qid already predicted: scoring runs without loading any model
    t = str(tmp_path)
    root = chartqa_fixture(t + '/chartqa/test')
    argv = ['--task', 'chartqa', '--data', t + '/chartqa']
    prefilled(t + '/c.jsonl', E.read_chartqa(root, root), ['12.5', 'no', '0.5', '0.4'], *argv)
    assert cli(*argv, '--out', t + '/c.jsonl').returncode == 0
    res = json.load(open(t + '/c.json'))
    assert res['sub_scores'] == dict(human=50.0, augmented=100.0) and res['score'] == 75.0
    assert res['visual_tokens_per_image'] == 256 and res['prefill_ms_per_image'] == 500
    assert res['decode_tokens_per_s'] == approx(40) and res['peak_memory_kind'] == 'cpu peak RSS'
    assert res['peak_memory_mb'] == 5003.0  # the generating processes' peak, not this one's (no model loaded)

    path, preds = ocrbench_fixture(t + '/ocr')
    argv = ['--task', 'ocrbench', '--data', t + '/ocr']
    prefilled(t + '/o.jsonl', E.read_ocrbench(path, t + '/ocr'), preds, *argv)
    r = cli(*argv, '--out', t + '/o.jsonl')
    res = json.load(open(t + '/o.json'))
    assert res['score'] == 3 and res['sub_scores']['HMER'] == 1 and res['sub_scores']['Text Recognition'] == 1
    assert res['sub_scores']['Key Information Extraction'] == 0 and 'ocrbench 3/4 ' in r.stdout

    test = docvqa_fixture(t + '/dtest', n=2, answers=False)
    prefilled(t + '/d.jsonl', E.read_docvqa(test, t + '/dtest'), ['a', 'b'], '--task', 'docvqa', '--data', test)
    assert cli('--task', 'docvqa', '--data', test, '--out', t + '/d.jsonl').returncode == 0
    assert json.load(open(t + '/d_submission.json')) == [dict(questionId=100, answer='a'),
                                                        dict(questionId=101, answer='b')]
    prefilled(t + '/d.jsonl', E.read_docvqa(test, t + '/dtest'), ['a', 'b is 229.74.\nAnswer: 229.74'], '--task',
              'docvqa', '--data', test)  # a chain of thought: its final answer is submitted, as it would be scored
    assert cli('--task', 'docvqa', '--data', test, '--out', t + '/d.jsonl').returncode == 0
    assert json.load(open(t + '/d_submission.json'))[1] == dict(questionId=101, answer='229.74')
    assert json.load(open(t + '/d.json'))['score'] is None
    data = json.load(open(test))  # ids that are not numbers go to the submission as they are
    for it in data['data']:
        it['questionId'] = f"q{it['questionId']}"
    dump(test, data)
    prefilled(t + '/s.jsonl', E.read_docvqa(test, t + '/dtest'), ['a', 'b'], '--task', 'docvqa', '--data', test)
    assert cli('--task', 'docvqa', '--data', test, '--out', t + '/s.jsonl').returncode == 0
    assert json.load(open(t + '/s_submission.json')) == [dict(questionId='q100', answer='a'),
                                                        dict(questionId='q101', answer='b')]

@pytest.mark.parametrize('task', sorted(E.TASKS))
def test_shipped_sets_with_oracle_answers(tmp_path, task):
    # the shipped synthetic sets parse, and their own first answers score full marks
    folder = os.path.join(ROOT, 'data', 'eval', task)
    if not os.path.isdir(folder):
        pytest.skip('data/eval not built')
    ann = E.find_annotation(task, folder)
    items = E.TASKS[task].read(ann, ann if os.path.isdir(ann) else os.path.dirname(ann))[:10]
    items += E.TASKS[task].read(os.path.join(folder, 'reasoning.json'), folder)[:10]
    prefilled(str(tmp_path / 'p.jsonl'), items, [it['answers'][0] for it in items], '--task', task, '--limit', '10')
    r = cli('--task', task, '--limit', '10', '--out', str(tmp_path / 'p.jsonl'))
    res = json.load(open(tmp_path / 'p.json'))
    assert res['n'] == 10 and res['new_predictions'] == 0 and res['reasoning'] == dict(score=100, n=10), r.stderr
    assert res['score'] == (10 if task == 'ocrbench' else 100)

def test_corrupt_predictions_file(tmp_path):
    docvqa_fixture(str(tmp_path), n=1)
    open(tmp_path / 'p.jsonl', 'w').write('not json\n')
    assert_clean_error(cli('--task', 'docvqa', '--data', str(tmp_path), '--out', str(tmp_path / 'p.jsonl')),
                       'p.jsonl', '--out')

# ----------------------------------------------------------------------------- end to end

def toy_tokenizer(path):
    """A sentencepiece model + added tokens in the InternLM2 layout, when data/tokenizer/ is absent."""
    import random, sentencepiece as spm
    rng = random.Random(0)
    words = 'what is the total date name value field answer question page form invoice number of'.split()
    corpus = os.path.join(path, 'corpus.txt')
    with open(corpus, 'w') as f:
        f.write('\n'.join(' '.join(rng.choice(words) for _ in range(8)) + f' {i}?' for i in range(300)))
    spm.SentencePieceTrainer.train(input=corpus, model_prefix=os.path.join(path, 'tokenizer'), vocab_size=120,
                                   model_type='bpe', user_defined_symbols=['<|im_start|>', '<|im_end|>'],
                                   hard_vocab_limit=False, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(path, 'tokenizer.model'))
    added = {t: sp.piece_to_id(t) for t in ('<|im_start|>', '<|im_end|>')}
    added.update({t: len(sp) + i for i, t in enumerate(['<img>', '</img>', '<IMG_CONTEXT>', '<quad>', '</quad>'])})
    dump(os.path.join(path, 'added_tokens.json'), added)
    dump(os.path.join(path, 'tokenizer_config.json'), dict(add_bos_token=True, add_eos_token=False))
    os.remove(corpus)
    os.remove(os.path.join(path, 'tokenizer.vocab'))


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory):
    import torch
    import model as M
    from tokenizer import load_tokenizer
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp('tiny'))
    tok_dir = os.path.join(ROOT, 'data', 'tokenizer')
    if not os.path.isfile(os.path.join(tok_dir, 'tokenizer.model')):
        tok_dir = str(tmp_path_factory.mktemp('tok'))
        toy_tokenizer(tok_dir)
    vocab = load_tokenizer(tok_dir).vocab_size  # every generated id decodes
    M.save_model(M.InternVLChat(M.tiny_config(vocab_size=vocab)), path, tokenizer_dir=tok_dir)
    return path

def predicted(path):
    """qid -> record of a predictions file (its first line is the run's key)."""
    return E.load_done(path, repair=False)[1]

def test_end_to_end_resume(tmp_path, tiny_model):
    t = str(tmp_path)
    docvqa_fixture(t + '/docvqa', n=8)
    args = ['--task', 'docvqa', '--model', tiny_model, '--data', t + '/docvqa', '--out', t + '/r.jsonl',
            '--max-num', '2', '--max-new-tokens', '4', '--batch-size', '2', '--device', 'cpu']
    r = cli(*args, '--limit', '4')
    assert r.returncode == 0, r.stderr
    assert len(predicted(t + '/r.jsonl')) == 4
    with open(t + '/r.jsonl', 'a') as f:
        f.write('{"qid": 10')  # a kill mid-write leaves a cut line: ignored, redone
    r = cli(*args, '--limit', '8')
    assert r.returncode == 0, r.stderr
    res = json.load(open(t + '/r.json'))
    assert res['n'] == 8 and res['new_predictions'] == 4 and 0 <= res['score'] <= 100
    assert sorted(r['qid'] for r in predicted(t + '/r.jsonl').values()) == list(range(100, 108))
    assert res['visual_tokens_per_image'] > 0 and res['decode_tokens_per_s'] > 0
    assert 'docvqa: anls' in r.stdout.strip().splitlines()[-1]

def test_killed_run_resumes(tmp_path, tiny_model):
    """SIGKILL a real run once some predictions are on disk; the rerun finishes only the rest."""
    import signal, subprocess, sys, time
    t = str(tmp_path)
    docvqa_fixture(t + '/docvqa', n=24)
    args = [sys.executable, os.path.join(ROOT, 'evaluate.py'), '--task', 'docvqa', '--model', tiny_model,
            '--data', t + '/docvqa', '--out', t + '/r.jsonl', '--max-num', '2', '--max-new-tokens', '4',
            '--device', 'cpu']
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(t + '/r.jsonl') and len(predicted(t + '/r.jsonl')) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(predicted(t + '/r.jsonl'))
    assert 3 <= done_before < 24, 'the run must be killed halfway'
    r = cli(*args[2:])  # the rerun, in this process
    assert r.returncode == 0, r.stderr
    res = json.load(open(t + '/r.json'))
    assert res['n'] == 24 and res['new_predictions'] == 24 - done_before
    assert sorted(r['qid'] for r in predicted(t + '/r.jsonl').values()) == list(range(100, 124))

def test_bad_image_file(tmp_path, tiny_model):
    t = str(tmp_path)
    docvqa_fixture(t + '/d', n=1)
    open(t + '/d/documents/doc0_1.png', 'w').write('not a png')
    r = run_main(E.main, '--task', 'docvqa', '--model', tiny_model, '--data', t + '/d', '--out', t + '/r.jsonl',
                 '--device', 'cpu')
    err = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and err.startswith('evaluate.py: error: ') and 'doc0_1.png' in err and 'cannot read image' in err

def test_final_answer_of_a_chain_of_thought():
    assert E.final_answer('12 + 30 = 42\nAnswer: 42') == '42'
    assert E.final_answer('Answer: a\nso the\nAnswer: b ') == 'b'
    assert E.final_answer('42') == '42' and E.final_answer('') == ''
    item = dict(answers=['42'], extra={})
    assert E.item_score('anls', E.final_answer('30 + 12\nAnswer: 42'), item) == 1.0

def test_evaluate_a_model_in_memory(tmp_path, tiny_model):
    """evaluate(model, tokenizer, task, ...) on a loaded model = the command line on its folder; the same model resumes."""
    from tokenizer import load_tokenizer
    t = str(tmp_path)
    docvqa_fixture(t + '/docvqa', n=4)
    settings = dict(model=tiny_model, data=t + '/docvqa', max_num=2, max_new_tokens=4, batch_size=2, device='cpu')
    r = cli('--task', 'docvqa', *[f"--{k.replace('_', '-')}={v}" for k, v in settings.items()], '--out', t + '/cli.jsonl')
    assert r.returncode == 0, r.stderr
    model = E.load_model(E.EvalConfig('docvqa', **settings))
    res = E.evaluate(model, load_tokenizer(tiny_model), 'docvqa', **settings, out=t + '/fn.jsonl')
    assert res == json.load(open(t + '/fn.json')) and res['new_predictions'] == res['n'] == 4
    answers = lambda p: {q: r['answer'] for q, r in predicted(p).items()}
    assert answers(t + '/fn.jsonl') == answers(t + '/cli.jsonl')
    assert res['score'] == json.load(open(t + '/cli.json'))['score']
    again = lambda m: E.evaluate(m, load_tokenizer(tiny_model), 'docvqa', **settings, out=t + '/fn.jsonl')
    assert again(model)['new_predictions'] == 0  # the same object: resumed
    assert again(E.load_model(E.EvalConfig('docvqa', **settings)))['new_predictions'] == 0  # the same bytes reloaded
    # keyed on the object, not on its folder's files: the command line's run on the folder starts afresh
    assert E.evaluate(None, None, 'docvqa', **settings, out=t + '/fn.jsonl')['new_predictions'] == 4

def test_prefill_flops():
    """Counted by hand for one layer: q, k, v, o projections, the gated MLP, causal scores and values."""
    import model as M
    llm = M.LLMConfig(hidden_size=8, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, intermediate_size=12)
    n = 5
    proj = n * (8 * 8 + 8 * 4 + 8 * 4 + 8 * 8)  # multiply-adds: kv heads of 8 / 4 = 2 dims each, 2 kv heads
    mlp = n * 3 * 8 * 12
    attn = 2 * sum(range(1, n + 1)) * 8  # each query sees itself and the positions before it: scores, then values
    assert E.prefill_flops(llm, n) == 3 * 2 * (proj + mlp + attn)
    fastv = E.prefill_flops(llm, n, visual=4, schedule={1: 0.5})  # layers 1 and 2 see 5 - 4 + 2 tokens
    assert fastv == E.prefill_flops(llm, n) // 3 + 2 * E.prefill_flops(llm, 3) // 3
    pdrop = E.prefill_flops(llm, n, visual=4, schedule={1: 0.5, 2: 0.25})  # layer 1 sees 5 - 4 + 2, layer 2 5 - 4 + 1
    assert pdrop == (E.prefill_flops(llm, n) + E.prefill_flops(llm, 3) + E.prefill_flops(llm, 2)) // 3

def test_random_seed_is_in_the_run_key_and_the_file_name(tmp_path, monkeypatch):
    docvqa_fixture(str(tmp_path), n=1)
    monkeypatch.chdir(tmp_path)  # the default --out, results/..., is relative
    key = lambda *argv: E.prepare(E.parse_args(['--task', 'docvqa', '--data', str(tmp_path), *argv]))[3:]
    (out0, head0), (out1, head1) = key('--method', 'random', '--ratio', '0.5'), key('--method', 'random', '--seed', '1')
    assert head0['run']['seed'] == 0 and head1['run']['seed'] == 1  # no --seed: seed 0
    assert out0.endswith('val_v1.0_random0.5_seed0.jsonl') and out1.endswith('val_v1.0_random1_seed1.jsonl')
    assert {**head0['run'], 'seed': 1, 'ratio': 1.0} == head1['run']  # the seed and the ratio, nothing else
    assert 'seed' not in key('--method', 'pool', '--ratio', '0.5')[1]['run']

def test_tiles_and_pdrop_end_to_end(tmp_path, tiny_model):
    """tiles gives each image the max_num baselines.budget_max_num picks (the tiles made: its visual tokens); pdrop
    (here one stage: the tiny LLM has 2 layers) records the image tokens its LLM layers see on average."""
    import baselines, model as M
    t = str(tmp_path)
    docvqa_fixture(t + '/docvqa', n=2)
    png(t + '/docvqa/documents/doc1_1.png', size=(400, 100))  # 4 x 1 tiles + a thumbnail at --max-num 6
    settings = dict(model=tiny_model, data=t + '/docvqa', max_num=6, max_new_tokens=2, device='cpu', ratio=0.75)
    res = E.evaluate(None, None, 'docvqa', **settings, method='tiles', out=t + '/tiles.jsonl')
    recs = predicted(t + '/tiles.jsonl')
    for qid, (w, h) in ((100, (64, 48)), (101, (400, 100))):
        want = baselines.budget_max_num(w, h, 6, 0.75, M.find_grid, 56)
        assert recs[str(qid)]['max_num'] == want and recs[str(qid)]['visual_tokens'] == 4 * baselines.tile_count(
            w, h, want, M.find_grid, 56)
    assert recs['101']['max_num'] == 2 and res['visual_tokens_layer_mean'] is None  # 2 x 1 + 1 tiles of 4 tokens
    res = E.evaluate(None, None, 'docvqa', **settings, method='pdrop', out=t + '/pdrop.jsonl')
    recs = predicted(t + '/pdrop.jsonl')
    full = [4 * baselines.tile_count(w, h, 6, M.find_grid, 56) for w, h in ((64, 48), (400, 100))]
    assert full == [28, 20] and [r['visual_tokens'] for r in recs.values()] == full  # the LLM's input keeps them all
    assert [r['visual_tokens_layer_mean'] for r in recs.values()] == [(28 + 21) / 2, (20 + 15) / 2]  # layers 0, 1
    assert res['visual_tokens_layer_mean'] == (24.5 + 17.5) / 2

@pytest.mark.parametrize('args,words', [
    (['--model', 'MISSING', '--image', 'x.png', '--question', 'hi'], 'checkpoint folder MISSING does not exist'),
    (['--image', 'x.png', '--question', 'what <IMG_CONTEXT> is'], 'contains <IMG_CONTEXT>'),
    (['--image', 'x.png', '--question', 'hi', '--max-num', '0'], 'must be >= 1'),
    (['--image', 'x.png', '--question', 'hi', '--max-new-tokens', '0'], 'must be >= 1'),
    (['--image', 'x.png', '--question', 'hi', '--max-num', 'abc'], 'invalid int value'),
    (['--image', 'absent.png', '--question', 'hi'], 'cannot read image absent.png'),
    (['--image', 'config.json', '--question', 'hi'], 'cannot read image'),
    (['--image', 'x.png', '--question', 'hi', '--dtype', 'int8'], 'invalid choice'),
    (['--image', 'x.png', '--question', 'hi', '--device', 'tpu'], 'pass cpu or cuda'),
    (['--image', 'x.png'], '--image and --question go together'),
    (['--question', 'hi'], '--image and --question go together'),
    (['--image', 'x.png', '--question', 'hi', '--task', 'docvqa'], 'pass one'),
    (['--image', 'x.png', '--question', 'hi', '--cot'], '--cot is for a --task run'),
    (['--image', 'x.png', '--question', 'hi', '--limit', '3'], '--limit is for a --task run'),
    (['--image', 'x.png', '--question', 'hi', '--method', 'tiles'], 'use it with --task'),
    (['--image', 'x.png', '--question', 'hi', '--ratio', '0.5'], '--ratio needs --method'),
])
def test_one_question_errors_are_one_line(tmp_path, args, words):
    png(str(tmp_path / 'x.png'))
    open(tmp_path / 'config.json', 'w').write('{}')
    args = [str(tmp_path / a) if a in ('MISSING', 'x.png', 'config.json') else a for a in args]
    assert_clean_error(cli(*args), words.replace('MISSING', str(tmp_path / 'MISSING')))

@pytest.mark.parametrize('method', [['--method', 'none'], ['--method', 'pool', '--ratio', '0.5'],
                                    ['--method', 'select', '--ratio', '0.5'], ['--method', 'fastv']])
def test_one_question_is_answered(tmp_path, method):
    """One line out, exit 0; a method without --ratio keeps every token, as with --task."""
    png(str(tmp_path / 'x.png'))
    r = cli('--image', str(tmp_path / 'x.png'), '--question', 'What is the total?', *method,
            '--max-new-tokens', '4', '--device', 'cpu', '--threads', '1')
    assert r.returncode == 0 and r.stdout.count('\n') == 1, r.stderr[-2000:]  # the answer (a blank page's may be empty)

def test_the_default_out_keeps_runs_apart(tmp_path, monkeypatch):
    """Runs on other sets or with other settings default to files of their own under results/<model>/; a file
    there of another run is refused, not written over. Predictions of older code, or of the same folder's model
    before new weights, start afresh."""
    t = str(tmp_path)
    monkeypatch.chdir(tmp_path)  # the default --out, results/..., is relative
    a, b = docvqa_fixture(t + '/a', n=2), docvqa_fixture(t + '/b', n=3)
    out = lambda *argv: E.prepare(E.parse_args(['--task', 'docvqa', *argv]))[3]
    outs = [out(), out('--data', t + '/a'), out('--data', b), out('--data', t + '/a', '--cot'),
            out('--data', t + '/a', '--max-num', '2'), out('--data', t + '/a', '--max-new-tokens', '7')]
    assert len(set(outs)) == len(outs) and outs[0] == os.path.join('results', 'tiny', 'docvqa.jsonl')
    assert outs[1] == os.path.join('results', 'tiny', 'docvqa_tmp0-a-val_v1.0.jsonl'.replace('tmp0', os.path.basename(t)))
    prefilled(outs[1], E.read_docvqa(a, t + '/a'), ['value 0', 'value 1'], '--task', 'docvqa', '--data', t + '/a')
    assert cli('--task', 'docvqa', '--data', t + '/a', cwd=t).returncode == 0  # its own run: resumed and scored
    head, _ = E.load_done(outs[1], repair=False)
    for k, v in (('model_sha256', 'retrained'), ('protocol', 0)):  # new weights in the folder; older code
        assert E.resume(outs[1], dict(head, run=dict(head['run'], **{k: v})), write=False, replace=False) == {}
    newer = dict(head, run=dict(head['run'], added_later=1))  # a key older code did not write: older code
    assert E.resume(outs[1], newer, write=False, replace=False) == {}
    with pytest.raises(E.Error, match='max_new_tokens 100 there, 7 now.*pass --out'):
        E.resume(outs[1], dict(head, run=dict(head['run'], max_new_tokens=7)), write=False, replace=False)
    assert E.resume(outs[1], dict(head, run=dict(head['run'], max_new_tokens=7)), write=False) == {}  # --out given
    assert len(predicted(outs[1])) == 2

def test_reasoning_questions_are_batched_apart_with_their_own_token_limit(tmp_path, tiny_model, monkeypatch):
    """--cot: the main questions are asked directly with the task's token limit and the reasoning ones with
    COT_MIN_TOKENS, whatever the batch size; a batch never mixes the two."""
    import model as M
    t = str(tmp_path)
    items = E.read_docvqa(docvqa_fixture(t + '/d', n=3), t + '/d')
    dump(t + '/d/reasoning.json', rrc([dict(questionId=900 + i, question=f'Why {i}?', answers=['x'],
                                            image=f'documents/doc{i}_1.png') for i in range(2)]))
    seen, real = [], M.InternVLChat.batch_chat

    def batch_chat(self, tok, pixels, questions, max_new_tokens, **kw):
        seen.append(([q.endswith(E.TASKS['docvqa'].suffix) for q in questions], max_new_tokens))
        return real(self, tok, pixels, questions, max_new_tokens=2, **kw)  # short: this is about the batches

    monkeypatch.setattr(M.InternVLChat, 'batch_chat', batch_chat)
    res = E.evaluate(None, None, 'docvqa', model=tiny_model, data=t + '/d', max_num=1, batch_size=2, cot=True,
                     device='cpu', out=t + '/o.jsonl')
    assert res['n'] == len(items) == 3 and res['reasoning']['n'] == 2
    limit = E.TASKS['docvqa'].max_new_tokens
    assert sorted(seen) == sorted([([True, True], limit), ([True], limit), ([False, False], E.COT_MIN_TOKENS)])
    assert E.load_done(t + '/o.jsonl')[0]['run']['max_new_tokens_reasoning'] == E.COT_MIN_TOKENS
