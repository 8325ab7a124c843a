"""Fixtures every test file shares: one CPU thread, a script's main() run in this process, a random tiny teacher
saved in the released layout, and a sentencepiece tokenizer trained here."""
import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import types
import warnings

import numpy as np
import pytest
import torch

import model as M
from tokenizer import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = os.path.join(ROOT, "data", "tokenizer")


@pytest.fixture(autouse=True, scope="module")
def one_thread():  # tiny models gain nothing from threads, and 2 threads on a busy 2-core machine crawl
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_main(main, *argv, cwd=ROOT, timeout=600):
    """(returncode, stdout, stderr) of a script's main(argv) run in this process from `cwd`, as its command line runs
    it. A subprocess costs an interpreter's and torch's start, about 6 s on a 2-core CPU; tests/test_bad_inputs.py
    and the torchrun tests run the scripts as commands. What a run sets for its process (cwd, threads, the random
    generators' seeds, warning filters) is put back, so that no later test depends on it; a run past `timeout`
    seconds fails the test, as a subprocess's timeout would."""
    here, threads, out, err = os.getcwd(), torch.get_num_threads(), io.StringIO(), io.StringIO()
    torch_rng, python_rng, numpy_rng = torch.get_rng_state(), random.getstate(), np.random.get_state()

    def too_long(*_):
        raise TimeoutError(f"{getattr(main, '__module__', main)}.main ran past {timeout} s")

    alarm = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(timeout)  # a forked worker does not inherit it
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            code = main([str(a) for a in argv]) or 0
    except SystemExit as e:  # argparse's refusals, and scripts that end in sys.exit
        code = e.code or 0
        if not isinstance(code, int):  # sys.exit("message"): Python prints the message and exits with 1
            err.write(f"{code}\n")
            code = 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, alarm)
        os.chdir(here)
        torch.set_num_threads(threads)
        torch.set_rng_state(torch_rng)
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
    """A random tiny InternVL2 (56 px tiles, 2x2 tokens each, 2 decoder layers) in the released layout, bf16,
    its weights at a trained model's scale so that outputs depend on inputs."""
    tok = load_tokenizer(TOK)
    torch.manual_seed(0)
    model = M.InternVLChat(M.tiny_config(tok.vocab_size, 56))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 1.5 / p.shape[-1] ** 0.5)
    path = str(tmp_path_factory.mktemp("teacher"))
    M.save_model(model.to(torch.bfloat16), path, tokenizer_dir=TOK)
    return path


@pytest.fixture
def triton_interpreter():
    """run(code): the code in a fresh Python with TRITON_INTERPRET=1 (set before triton is imported), where
    Triton kernels run on the CPU; it must print "ok"."""
    pytest.importorskip("triton", reason="triton is in requirements-test.txt")

    def run(code):
        env = dict(os.environ, TRITON_INTERPRET="1")
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
    return run


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A sentencepiece tokenizer trained here, with InternLM2's chat tokens and InternVL's added tokens."""
    spm = pytest.importorskip("sentencepiece")
    d = tmp_path_factory.mktemp("tok")
    text = ["The total is 42.", "Answer the question using a single word or phrase.", "What is the date?",
            M.SYSTEM_MESSAGE, "invoice number A7-203 dated 12/05"] * 50
    (d / "corpus.txt").write_text("\n".join(text), encoding="utf-8")
    chat = ["<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>", "<|im_end|>", "<|im_start|>"]
    spm.SentencePieceTrainer.train(input=str(d / "corpus.txt"), model_prefix=str(d / "tokenizer"), vocab_size=400,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0, num_threads=1,
                                   user_defined_symbols=chat, bos_id=1, eos_id=2, unk_id=0, pad_id=-1)
    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    n = sp.get_piece_size()
    added = {s: n + i for i, s in enumerate(["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"])}
    (d / "added_tokens.json").write_text(json.dumps(added))
    decoder = {str(sp.piece_to_id(s)): {"content": s, "special": True} for s in chat}
    (d / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder, "add_bos_token": True}))
    return str(d)
