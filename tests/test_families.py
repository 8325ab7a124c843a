"""Each supported checkpoint family end to end, on a tiny random model in a folder laid out as the released ones:
`evaluate.py --image --question`, `evaluate.py --task docvqa --limit 2` and `distill.py --teacher DIR --steps 2` run, and the
student distill.py writes loads with its teacher's tokenizer. The byte-level BPE is trained here by `tokenizers`.
    python -m pytest tests/test_families.py"""
import json
import os

import pytest
import torch
from PIL import Image

import compress as C
import distill as D
import evaluate as E
import model as M
from tokenizer import QWEN2_PATTERN, BPETokenizer, load_tokenizer
from conftest import run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"]
FAMILIES = {  # name -> (LLM architecture, its config fields, template, tokenizer, layout)
    "InternVL2-1B": ("Qwen2ForCausalLM", dict(tie_word_embeddings=True), "Hermes-2", "bpe", "original"),
    "InternVL2.5-1B": ("Qwen2ForCausalLM", dict(rms_norm_eps=1e-6), "internvl2_5", "bpe", "original"),
    "InternVL3.5-1B": ("Qwen3ForCausalLM", dict(head_dim=32, qk_norm=True, rms_norm_eps=1e-6, tie_word_embeddings=True),
                       "internvl2_5", "bpe", "original"),
    "InternVL3-9B": ("InternLM3ForCausalLM", dict(rope_scaling={"rope_type": "dynamic", "factor": 6.0}),
                     "internvl2_5", "sentencepiece", "original"),
    "InternVL3-1B-hf": ("Qwen2ForCausalLM", dict(tie_word_embeddings=True), "internvl2_5", "bpe", "hf"),
}


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    """A Qwen2-style tokenizer.json (NFC, Qwen2's split regex, byte level) of 400 tokens + the chat/image tokens."""
    tk_ = pytest.importorskip("tokenizers")
    tk = tk_.Tokenizer(tk_.models.BPE())
    tk.normalizer = tk_.normalizers.NFC()
    tk.pre_tokenizer = tk_.pre_tokenizers.Sequence([
        tk_.pre_tokenizers.Split(tk_.Regex(QWEN2_PATTERN), "isolated"),
        tk_.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = tk_.decoders.ByteLevel()
    corpus = ["What is the total? Answer the question using a single word or phrase.", "INVOICE No. 1234 dated 12/05",
              M.SYSTEM_MESSAGE, M.TEMPLATES["internvl2_5"][0], "The quick brown fox jumps over the lazy dog."] * 20
    tk.train_from_iterator(corpus, tk_.trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=tk_.pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tk.add_special_tokens([tk_.AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    d = tmp_path_factory.mktemp("bpe")
    tk.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": None, "eos_token": "<|im_end|>",
                                                         "tokenizer_class": "Qwen2Tokenizer"}))
    return str(d)


def family_folder(path, family, tok_dir):
    """A random tiny model of `family` saved with its tokenizer; an -hf folder keeps only transformers' fields."""
    arch, fields, template, _, layout = FAMILIES[family]
    tok = load_tokenizer(tok_dir)
    cfg = M.tiny_config(tok.vocab_size, image_size=56)
    cfg.template, cfg.llm.architecture, cfg.llm.qkv_bias = template, arch, arch == "Qwen2ForCausalLM"
    for k, v in fields.items():
        setattr(cfg.llm, k, v)
    torch.manual_seed(0)
    model = M.InternVLChat(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 1.5 / p.shape[-1] ** 0.5)
    model.img_context_token_id = tok.token_to_id(M.IMG_CONTEXT)
    M.save_model(model.to(torch.bfloat16), path, tokenizer_dir=tok_dir, layout=layout)
    if layout == "hf":
        saved = json.load(open(os.path.join(path, "config.json")))
        for k in ("template", "min_dynamic_patch", "max_dynamic_patch", "use_thumbnail"):
            del saved[k]
        json.dump(saved, open(os.path.join(path, "config.json"), "w"))
    return path


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_end_to_end(tmp_path, family, bpe_dir):
    tok_dir = bpe_dir if FAMILIES[family][3] == "bpe" else os.path.join(ROOT, "data", "tokenizer")
    folder = family_folder(str(tmp_path / family), family, tok_dir)
    model, tok = M.load_model(folder), load_tokenizer(folder)
    assert model.config.template == FAMILIES[family][2] and model.config.llm.architecture == FAMILIES[family][0]
    assert isinstance(tok, BPETokenizer) == (FAMILIES[family][3] == "bpe")
    Image.new("RGB", (112, 56), "white").save(tmp_path / "page.png")
    r = run_main(E.main, "--model", folder, "--image", tmp_path / "page.png", "--question", "What is the total?",
                 "--max-new-tokens", "4", "--device", "cpu", "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    out = str(tmp_path / "docvqa.jsonl")
    r = run_main(E.main, "--task", "docvqa", "--model", folder, "--limit", "2", "--max-new-tokens", "3", "--out", out,
                 "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert json.load(open(out[:-1]))["n"] >= 2
    student = str(tmp_path / "student")
    r = run_main(D.main, "--teacher", folder, "--out", student, "--steps", "2", "--micro-batch", "2", "--max-num", "2",
                 "--warmup", "1", "--threads", "1", "--fastv-layer", "1", "--eval-task", "")
    assert r.returncode == 0, r.stderr
    s = M.load_model(student, build_compressor=C.build)
    assert s.compressor is not None and s.config.template == FAMILIES[family][2]
    r = run_main(E.main, "--model", student, "--image", tmp_path / "page.png", "--question", "What is the total?",
                 "--max-new-tokens", "4", "--device", "cpu")
    assert r.returncode == 0, r.stderr  # the student answers one question too
    assert load_tokenizer(student).special == tok.special
