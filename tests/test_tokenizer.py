"""tokenizer.py's BPETokenizer against `tokenizers` and transformers' Qwen2TokenizerFast on a tiny byte-level BPE trained
here with Qwen2's pipeline (NFC, the Qwen2 Split regex, ByteLevel without regex, ByteLevel decoder), and the
sentencepiece Tokenizer against sentencepiece itself with InternVL's added tokens split out.
    python -m pytest tests/test_tokenizer.py"""
import json
import os
import random
import re
import unicodedata

import pytest

import model as M
from tokenizer import QWEN2_PATTERN, BPETokenizer, load_tokenizer, unicode_classes, word_regex

pytest.importorskip("transformers")  # test-only dependencies (requirements-test.txt), `tokenizers` comes with it
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa
from transformers import Qwen2TokenizerFast  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>",
            "<|im"]  # a prefix of two others: the longest match wins
PLAIN_ADDED = "<tool_call>"  # an added token that is not special (as in Qwen2.5): decode keeps it
CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 12:45, don't you think? We'll see; they've gone.",
    "Le cœur a ses raisons que la raison ne connaît point. Ça va très bien, merci !",
    "Der Fußgängerübergang ist gesperrt. Schöne Grüße aus München.",
    "你好，世界！今天天气很好。我们一起去公园散步吧。人工智能助手。",
    "こんにちは、世界。カタカナとひらがなと漢字。",
    "안녕하세요 세계. 한국어 문장입니다.",
    "مرحبا بالعالم. السلام عليكم ورحمة الله.",
    "नमस्ते दुनिया। यह एक वाक्य है।",
    "Привет, мир! Как дела? Всё хорошо.",
    "def f(x):\n    return x ** 2  # square\n\nprint(f(3))\r\n",
    "Emoji 😀👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ and numbers 3.14159, 1,000,000 and ½ ① Ⅻ.",
]
HARD = [  # all NFC, so decode(encode(s)) == s
    "", " ", "   ", "a", "Hello world", "  leading and trailing  ", "end   ", "tabs\tand\t\ttabs\t", "\t \t",
    "line\r\nbreak\r\n\r\n", "\n", "\n\n\n", "a  \n  b", "x\n\n y", "\r", " \r\n ", "p\n \n\t\n\n q \n",
    "a\u2028b\u2029c", "nbsp\u00a0here", "ideo\u3000sp", "vt\x0bff\x0cx", "nel\x85x", "zw\u200bsp\ufeff", "mvs\u180ex",
    "ctl\x1c\x1d\x1e\x1fend", "\t\x1c\n \n\x1c\n x\t\t\x1cx \x1c \x1c", "\x00\x01\x7f",  # \x1c-\x1f: \s in Python only
    "DON'T it's I'M we'LL you'Re THEY'VE he'd 'S ''s", "'Twas it'SELF we'LLama you'REad I'Mok he'DX x'VEx",
    "don’t", "'ſ ſ'ſx x'Kx", "İstanbul ıi",
    "12345678901234567890", "3.14159 1,000,000 -42 +7e10", "x²³ ½ ① Ⅻ ٣٤٥ १२३ ４２",
    "你好，世界！今天天气很好。", "こんにちは、カタカナ、漢字", "안녕하세요", "مُحَمَّد مرحبا بالعالم!", "नमस्ते क्षत्रिय",
    "สวัสดีครับ", "שָׁלוֹם", "Привет, МИР!", "Ελληνικά ΣΊΣΥΦΟΣ", "😀👍🏽", "👨‍👩‍👧‍👦 family", "🇫🇷🇯🇵🇺🇸", "1️⃣ ❤️",
    "café naïve", "Z̷̢a̴l̸g̶o̵ text", "ﬁnance ﬂow ﬀ", "ＡＢＣ１２３", "∑∫√∞ ≠ ≤ →", "<<>> !!! ...",
    "https://example.com/a?b=c&d=e#f", '{"key": [1, 2.5, null]}',
    "a" * 2000, "9" * 2000, "漢" * 2000, "😀" * 500, " " * 2000, "x" + " " * 1000 + "y", "supercalifragilistic" * 100,
    "".join(random.Random(0).choice("abcdefghijklmnopqrstuvwxyzéß") for _ in range(2000)),
    "<|im_start|>system\n你是一个有用的助手。<|im_end|><|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nWhat?"
    "<|im_end|><|im_start|>assistant\n", "<|im_end|><|im_end|>", "text<|endoftext|>more", "<|endoftext|>",
    "<|im_start", "<IMG_CONTEXT", "<<img>>", " <img> ", "<tool_call>{}</tool_call>",
]
NOT_NFC = {  # s: decode(encode(s)), NFC applied between added tokens (the ">" of "<|im_end|>" keeps its U+0338)
    "e\u0301 and A\u030a": "é and Å", "a\u0300\u0316b": "\xe0\u0316b", "\u1100\u1161\u11a8": "각",
    "<|im_end|>\u0338": "<|im_end|>\u0338", "a>\u0338b": "a≯b"}
_rng = random.Random(1)
MIXED = [m for m in ("".join(_rng.choices([h for h in HARD if len(h) < 100], k=6)) for _ in range(300))
         if unicodedata.is_normalized("NFC", m)]
TEXTS = HARD + list(NOT_NFC) + MIXED


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Three checkpoint-like folders of one tokenizer: tokenizer.json with [a, b] merges, with "a b" merges, and
    vocab.json + merges.txt; each with a Qwen2-like tokenizer_config.json."""
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_PATTERN), "isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tk.train_from_iterator(CORPUS * 20 + HARD, trainer)  # merges for parts of the test strings
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    tk.add_tokens([AddedToken(PLAIN_ADDED, special=False, normalized=False)])
    tj = json.loads(tk.to_str())
    assert isinstance(tj["model"]["merges"][0], list)
    config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "errors": "replace",
              "clean_up_tokenization_spaces": False, "tokenizer_class": "Qwen2Tokenizer",
              "added_tokens_decoder": {str(t.pop("id")): t for t in json.loads(tk.to_str())["added_tokens"]}}
    dirs = {name: tmp_path_factory.mktemp(name) for name in ("pairs", "strings", "files")}
    for d in dirs.values():
        (d / "tokenizer_config.json").write_text(json.dumps(config))
    (dirs["pairs"] / "tokenizer.json").write_text(json.dumps(tj))
    (dirs["strings"] / "tokenizer.json").write_text(json.dumps(tj | {"model": tj["model"] | {
        "merges": [" ".join(m) for m in tj["model"]["merges"]]}}))
    (dirs["files"] / "vocab.json").write_text(json.dumps(tj["model"]["vocab"]))
    merges = [("#version:", "0.2")] + tj["model"]["merges"]
    (dirs["files"] / "merges.txt").write_text("".join(f"{a} {b}\n" for a, b in merges))
    return tk, dirs


@pytest.fixture(scope="module")
def tok(folders):
    return BPETokenizer(folders[1]["pairs"])


def test_attributes(folders, tok):
    tk, dirs = folders
    assert tok.bos_id is None and not tok.add_bos
    assert tok.vocab_size == tk.get_vocab_size(with_added_tokens=True) == 1000 + len(SPECIALS) + 1, "train more"
    assert tok.special == {s: tk.token_to_id(s) for s in SPECIALS + [PLAIN_ADDED]}
    assert tok.id_to_special[tok.token_to_id("<IMG_CONTEXT>")] == "<IMG_CONTEXT>"
    with pytest.raises(KeyError, match="hello"):
        tok.token_to_id("hello")
    with pytest.raises(ValueError, match="no BOS"):
        tok.encode("hi", bos=True)
    for name in dirs:  # load_tokenizer picks BPE for tokenizer.json or vocab.json + merges.txt
        assert isinstance(load_tokenizer(str(dirs[name])), BPETokenizer)


def test_unsupported_folders(folders, tmp_path):
    with pytest.raises(M.ModelLoadError, match="no tokenizer.model, tokenizer.json or vocab.json"):
        load_tokenizer(str(tmp_path))
    gpt2 = json.loads(folders[0].to_str()) | {"pre_tokenizer": {"type": "ByteLevel", "use_regex": True}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(gpt2))
    with pytest.raises(M.ModelLoadError, match="not a byte-level BPE with Qwen2's pre-tokenizer"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{")
    with pytest.raises(M.ModelLoadError, match="tokenizer.json is not valid JSON"):
        load_tokenizer(str(tmp_path))
    tj = json.loads(folders[0].to_str())
    tj["added_tokens"] = [t for t in tj["added_tokens"] if t["content"] != "<IMG_CONTEXT>"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj))  # and no tokenizer_config.json to list it
    with pytest.raises(M.ModelLoadError, match="lacks the special token <IMG_CONTEXT>"):
        load_tokenizer(str(tmp_path))
    tj = json.loads(folders[0].to_str())
    del tj["model"]["merges"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(M.ModelLoadError, match="no model.vocab map or model.merges list"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text(folders[0].to_str())
    for config, words in (({"added_tokens_decoder": []}, "not as the tokenizers library writes them"),
                          ({"added_tokens_decoder": {"5": {"special": True}}}, "KeyError: 'content'")):
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
        with pytest.raises(M.ModelLoadError, match=words):
            load_tokenizer(str(tmp_path))


@pytest.mark.parametrize("name", ["pairs", "strings", "files"])
def test_encode_matches_oracles(folders, tok, name):
    tk, dirs = folders
    mine, hf = BPETokenizer(dirs[name]), Qwen2TokenizerFast.from_pretrained(dirs[name])
    for s in TEXTS:
        ids = tk.encode(s, add_special_tokens=False).ids
        assert mine.encode(s) == tok.encode(s) == ids, s
        assert hf.encode(s, add_special_tokens=False) == hf.encode(s) == ids, s  # Qwen2 adds no BOS/EOS


def test_decode_roundtrip(folders, tok):
    tk, dirs = folders
    hf = Qwen2TokenizerFast.from_pretrained(dirs["pairs"])
    for s in TEXTS:
        ids = tok.encode(s)
        assert tok.decode(ids, False) == NOT_NFC.get(s, s) == hf.decode(ids, skip_special_tokens=False), s
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True) == tk.decode(ids), s
    assert tok.decode(tok.encode("<img>a<tool_call>b<|im_end|>")) == "a<tool_call>b"


def test_decode_any_ids(folders, tok):
    """Single byte tokens, ids that split a UTF-8 sequence, specials anywhere: as transformers decodes them."""
    tk, dirs = folders
    hf = Qwen2TokenizerFast.from_pretrained(dirs["pairs"])
    rng = random.Random(0)
    for ids in [[i] for i in range(tok.vocab_size)] + [rng.choices(range(tok.vocab_size), k=20) for _ in range(300)]:
        for skip in (True, False):
            assert tok.decode(ids, skip) == hf.decode(ids, skip_special_tokens=skip) == tk.decode(ids, skip), ids
    assert tok.decode([tok.vocab_size, 10**6] + tok.encode("ok")) == "ok"  # ids past the tokenizer are ignored


def test_pretokenizer_hard_strings():
    ref = pre_tokenizers.Split(Regex(QWEN2_PATTERN), "isolated")
    for s in TEXTS:
        assert word_regex().findall(s) == [w for w, _ in ref.pre_tokenize_str(s)], s


def test_classes_every_code_point():
    r"""Our \p{L}, \p{N}, \s and (?i:) hold the code points Oniguruma's do, except ones unassigned in this Python's
    Unicode (3.11: 14.0), which `tokenizers` may know (its Oniguruma has Unicode 16: Kawi, Garay, CJK Ext. H, ...)."""
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    text = "".join(chars)
    kept = bytearray(len(text))
    L, N, S = unicode_classes()
    for theirs, ours in [(r"\p{L}", f"[{L}]"), (r"\p{N}", f"[{N}]"), (r"\s", f"[{S}]"), ("(?i:[stmdrevl])",) * 2]:
        kept[:] = bytes(len(text))
        for _, (a, b) in pre_tokenizers.Split(Regex(theirs), "removed").pre_tokenize_str(text):
            kept[a:b] = b"\1" * (b - a)
        matched = {c for c, k in zip(chars, kept) if not k}
        diff = matched ^ set(re.findall(ours, text))
        assert all(unicodedata.category(c) == "Cn" for c in diff), (theirs, sorted(hex(ord(c)) for c in diff)[:20])
    assert re.findall(f"[{S}]", "\x1c\x1d\x1e\x1f \x85\u3000") == [" ", "\x85", "\u3000"]  # not Python's \s


def test_pretokenizer_every_code_point():
    """The whole translated pattern splits as Oniguruma's around each assigned code point: next to "a" a code point
    shows whether it is a letter, a digit or neither; next to "!" whether it is white space; after "'" and before
    "a" whether it folds to s, t, m or d."""
    ref = pre_tokenizers.Split(Regex(QWEN2_PATTERN), "isolated")
    chars = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) not in ("Cs", "Cn")]
    letters = [c for c in chars if unicodedata.category(c)[0] == "L"]
    for s in ("a".join(chars), "!".join(chars), "".join("'" + c + "a" for c in letters)):
        assert word_regex().findall(s) == [w for w, _ in ref.pre_tokenize_str(s)]


def test_tokenizer_splits_special_tokens(tokenizer_dir):
    import sentencepiece as spm
    tok = load_tokenizer(tokenizer_dir)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(tokenizer_dir, "tokenizer.model"))
    n = sp.get_piece_size()
    assert tok.token_to_id("<IMG_CONTEXT>") == n + 2 and tok.token_to_id("<img>") == n
    ids = tok.encode("<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nThe total?<|im_end|>")
    want = [1, sp.piece_to_id("<|im_start|>")] + sp.encode("user\n") + [n, n + 2, n + 2, n + 1] + sp.encode("\nThe total?") \
        + [sp.piece_to_id("<|im_end|>")]
    assert ids == want
    assert tok.decode(sp.encode("The total is 42") + [sp.piece_to_id("<|im_end|>")]) == "The total is 42"
    assert tok.decode(sp.encode("a .")) == "a."  # InternLM2Tokenizer's clean-up of spaces before punctuation
    text = "<|im_start|>user<img><IMG_CONTEXT></img>The total?<|im_end|>"  # this tokenizer turns newlines to spaces
    assert tok.decode(tok.encode(text), skip_special_tokens=False) == "<s>" + text
