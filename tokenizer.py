"""
The tokenizers of InternVL's checkpoints, from scratch: InternLM2's sentencepiece (the slow tokenizer, as InternVL's
evaluation uses it) and Qwen2's byte-level BPE (InternVL2-1B, InternVL2.5, 3 and 3.5), the latter tested against
`tokenizers` and transformers' Qwen2TokenizerFast. It needs model.py (the image tokens, the checkpoint's added
tokens); model.py does not need it: chat() takes any object with encode, decode and token_to_id.

    tok = load_tokenizer("/path/to/InternVL2-2B")
    ids = tok.encode("<|im_start|>user\nWhat is the total?<|im_end|>")
    python -m pytest tests/test_tokenizer.py -q
"""
import functools
import itertools
import json
import math
import os
import re
import unicodedata

from model import IMG_CONTEXT, IMG_END, IMG_START, ModelLoadError, added_tokens, read_json


class _Tokenizer:
    """What the two share: special (added token -> id), add_bos, vocab_size, token_to_id, and encode, which splits
    the added tokens out of the text first, longest first, and maps them to their own ids."""

    def _set_special(self, special, bos_id, add_bos):
        self.special, self.id_to_special = special, {i: s for s, i in special.items()}
        self.bos_id, self.add_bos = bos_id, bool(add_bos) and bos_id is not None
        longest_first = "|".join(map(re.escape, sorted(special, key=len, reverse=True)))
        self._split = re.compile(f"({longest_first or '(?!)'})")  # (?!): no added tokens, nothing to split out

    def token_to_id(self, token):
        return self.special[token]

    def encode(self, text, bos=None):
        if bos and self.bos_id is None:
            raise ValueError("this tokenizer has no BOS token (as Qwen2): encode with bos=False")
        ids = [self.bos_id] if (self.add_bos if bos is None else bos) else []
        for i, chunk in enumerate(self._split.split(text)):
            if i % 2:
                ids.append(self.special[chunk])
            elif chunk:
                ids.extend(self._encode(chunk))
        return ids


class Tokenizer(_Tokenizer):
    """InternLM2Tokenizer: sentencepiece encodes the text between the added tokens."""

    def __init__(self, folder):
        import sentencepiece as spm
        try:
            self.sp = spm.SentencePieceProcessor(model_file=os.path.join(folder, "tokenizer.model"))
        except (RuntimeError, OSError) as e:
            raise ModelLoadError(f"cannot read {os.path.join(folder, 'tokenizer.model')} ({str(e).strip()}): corrupt or "
                                 "truncated; copy it again from the checkpoint") from None
        base = (self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        add_bos = read_json(os.path.join(folder, "tokenizer_config.json"), {}).get("add_bos_token", True)
        bos = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        self._set_special({self.sp.id_to_piece(i): i for i in base if i >= 0} | added_tokens(folder), bos, add_bos)
        self.vocab_size = max(self.sp.get_piece_size(), max(self.id_to_special) + 1)
        self._encode = self.sp.encode

    def decode(self, ids, skip_special_tokens=True):
        """Sentencepiece decodes each run of text ids between the special tokens."""
        ids = [i for i in ids if i < self.vocab_size]  # a model's vocab can be padded past its tokenizer's
        text = ""
        for special, run in itertools.groupby(ids, lambda i: i in self.id_to_special):
            if not special:
                text += self.sp.decode(list(run))
            elif not skip_special_tokens:
                text += "".join(self.id_to_special[i] for i in run)
        # InternLM2Tokenizer.convert_tokens_to_string always applies transformers' clean-up
        for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                     (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
            text = text.replace(a, b)
        return text


# Qwen2's pre-tokenizer in the Oniguruma syntax of the `tokenizers` library; word_regex() is its Python translation
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                 r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")


def bytes_to_unicode():
    """GPT-2's map of the 256 bytes to printable characters: printable latin-1 bytes stay, the others become 256+n."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    return {b: chr(b) for b in keep} | {b: chr(256 + n) for n, b in enumerate(b for b in range(256) if b not in keep)}


@functools.cache
def unicode_classes():
    r"""Regex class bodies (code-point ranges, no brackets) for \p{L}, \p{N} and \s, which Python's re lacks or
    defines otherwise: categories L* and N* of unicodedata, and for Oniguruma's Unicode \s Z* plus \t \n \v \f \r
    and U+0085 (Python's \s also matches U+001C..U+001F)."""
    cat = "".join("Z" if c in "\t\n\v\f\r\x85" else unicodedata.category(c)[0] for c in map(chr, range(0x110000)))
    return tuple("".join(f"{re.escape(chr(m.start()))}-{re.escape(chr(m.end() - 1))}"
                         for m in re.finditer(k + "+", cat)) for k in "LNZ")


@functools.cache
def word_regex():
    """QWEN2_PATTERN in Python's re, class by class. (?i:...) folds case as Oniguruma does: 'ſ' matches 's'."""
    L, N, S = unicode_classes()
    return re.compile(rf"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n{L}{N}]?[{L}]+|[{N}]| ?[^{S}{L}{N}]+[\r\n]*|[{S}]*[\r\n]+"
                      rf"|[{S}]+(?![^{S}])|[{S}]+")


class BPETokenizer(_Tokenizer):
    """Qwen2's byte-level BPE (Qwen2, 2.5 and 3: InternVL2-1B, InternVL2.5, 3, 3.5), in the spirit of minGPT's
    bpe.py. The text between added tokens is NFC-normalised, cut into words by Qwen2's pre-tokenizer regex, and each
    word's UTF-8 bytes, spelled as printable characters (GPT-2's bytes_to_unicode), are merged pairwise, lowest merge
    rank first, into vocab entries. Reads tokenizer.json, or vocab.json + merges.txt."""

    def __init__(self, folder):
        path = functools.partial(os.path.join, folder)
        config, tj = read_json(path("tokenizer_config.json"), {}), read_json(path("tokenizer.json"))
        if tj is not None:
            qwen2 = json.dumps(QWEN2_PATTERN) in json.dumps(tj.get("pre_tokenizer"))
            if (tj.get("model") or {}).get("type") != "BPE" or not qwen2:
                raise ModelLoadError(f"{path('tokenizer.json')} is not a byte-level BPE with Qwen2's pre-tokenizer, "
                                     "the only kind supported besides sentencepiece")
            vocab, merges = tj["model"].get("vocab"), tj["model"].get("merges")
            if not isinstance(vocab, dict) or not isinstance(merges, list):
                raise ModelLoadError(f"{path('tokenizer.json')} has no model.vocab map or model.merges list: "
                                     "restore it from the checkpoint")
            self.nfc = (tj.get("normalizer") or {}).get("type") == "NFC"
        else:  # the slow Qwen2Tokenizer's files; it always NFC-normalises
            vocab, self.nfc = read_json(path("vocab.json")), True
            with open(path("merges.txt"), encoding="utf-8") as f:
                merges = [m for m in f.read().splitlines() if m and not m.startswith("#version")]
        self.vocab = vocab
        self.ranks = {tuple(m.split(" ") if isinstance(m, str) else m): r for r, m in enumerate(merges)}
        special, bos = added_tokens(folder), config.get("bos_token")  # Qwen2 has no BOS
        bos = bos["content"] if isinstance(bos, dict) else bos
        self._set_special(special, special.get(bos), config.get("add_bos_token", False))
        self.skipped = set(added_tokens(folder, special_only=True).values())  # decode keeps the other added tokens
        self.id_to_token = {i: s for s, i in vocab.items()} | self.id_to_special
        self.vocab_size = max(self.id_to_token) + 1
        self.byte_char = bytes_to_unicode()
        self.char_byte = {c: b for b, c in self.byte_char.items()}
        self._bpe = functools.lru_cache(maxsize=1 << 16)(self._bpe)

    def _bpe(self, word):
        """The ids of one pre-tokenized word: merge the lowest-ranked adjacent pair everywhere until none is left."""
        parts = [self.byte_char[b] for b in word.encode("utf-8")]
        while len(parts) > 1:
            pair = min(zip(parts, parts[1:]), key=lambda p: self.ranks.get(p, math.inf))
            if pair not in self.ranks:
                break
            i = 0
            while i < len(parts) - 1:  # left to right, as `tokenizers`: "aaa" -> "aa" "a"
                if (parts[i], parts[i + 1]) == pair:
                    parts[i:i + 2] = [parts[i] + parts[i + 1]]
                i += 1
        return [self.vocab[p] for p in parts]

    def _encode(self, text):
        words = word_regex().findall(unicodedata.normalize("NFC", text) if self.nfc else text)
        return [i for word in words for i in self._bpe(word)]

    def decode(self, ids, skip_special_tokens=True):
        """As the `tokenizers` ByteLevel decoder: a token spelled in byte-level characters gives those bytes, any other
        token its UTF-8 (the two agree for "<img>" and such); invalid UTF-8 becomes U+FFFD. Unknown ids are skipped."""
        data = bytearray()
        for i in map(int, ids):
            token = self.id_to_token.get(i)  # None past vocab_size: a model's vocab can be padded past its tokenizer's
            if token is None or (skip_special_tokens and i in self.skipped):
                continue
            data += bytes(map(self.char_byte.get, token)) if all(c in self.char_byte for c in token) else token.encode()
        return data.decode("utf-8", errors="replace")


def load_tokenizer(path):
    """The tokenizer of a checkpoint folder: sentencepiece (tokenizer.model) or byte-level BPE (tokenizer.json, or
    vocab.json + merges.txt), with the added tokens of tokenizer.json, tokenizer_config.json and added_tokens.json."""
    if not os.path.isdir(path):
        raise ModelLoadError(f"tokenizer folder {path} {'is a file' if os.path.isfile(path) else 'does not exist'}: "
                             "pass a checkpoint folder")
    has = lambda *names: all(os.path.exists(os.path.join(path, n)) for n in names)
    if has("tokenizer.model"):
        tok = Tokenizer(path)
    elif has("tokenizer.json") or has("vocab.json", "merges.txt"):
        tok = BPETokenizer(path)
    else:
        raise ModelLoadError(f"no tokenizer.model, tokenizer.json or vocab.json + merges.txt in {path}: copy the "
                             "checkpoint's tokenizer files there")
    for needed in (IMG_START, IMG_END, IMG_CONTEXT, "<|im_start|>", "<|im_end|>"):
        if needed not in tok.special:
            raise ModelLoadError(f"tokenizer in {path} lacks the special token {needed}: add it to added_tokens.json")
    return tok
