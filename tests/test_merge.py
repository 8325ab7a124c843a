"""merge.py on tiny random InternVL2 checkpoints: the fp32 weighted average, sharding, weight
normalisation, self-merge, and every refused input.   python -m pytest tests/test_merge.py -q"""
import json
import os
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import merge
from conftest import run_main
import model as M
from tokenizer import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = os.path.join(ROOT, "data", "tokenizer")
SHARD_BYTES = 300_000  # the tiny fp32 model is ~1.5 MB: several shards


def make(path, seed, dtype=torch.float32, max_shard_bytes=2**40):
    torch.manual_seed(seed)
    model = M.InternVLChat(M.tiny_config(load_tokenizer(TOK).vocab_size))  # the tokenizer's ids fit its embedding
    with torch.no_grad():
        for p in model.parameters():  # every tensor differs between seeds, norm weights included
            p.add_(0.1 * torch.randn_like(p))
    M.save_model(model.to(dtype), str(path), max_shard_bytes=max_shard_bytes, tokenizer_dir=TOK)
    return str(path)


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    return {"a": make(d / "a", 0), "b": make(d / "b", 1), "a_sh": make(d / "a_sh", 0, max_shard_bytes=SHARD_BYTES),
            "a16": make(d / "a16", 0, torch.bfloat16), "b16": make(d / "b16", 1, torch.bfloat16),
            "c16": make(d / "c16", 2, torch.bfloat16)}


def tensors(path):
    """All tensors of a checkpoint folder, whatever its sharding."""
    files = [f for f in sorted(os.listdir(path)) if f.endswith(".safetensors")]
    return {k: v for f in files for k, v in load_file(os.path.join(path, f)).items()}


def read(path):
    with open(path, "rb") as f:
        return f.read()


def copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def edit_config(path, **changes):
    cfg = json.load(open(os.path.join(path, "config.json")))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        d = cfg
        for p in parents:
            d = d[p]
        d[leaf] = value
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"))


# ----------------------------------------------------------------------------------------------

def test_bf16_weighted_average_in_fp32(ck, tmp_path):
    out = str(tmp_path / "out")
    merge.merge([ck["a16"], ck["b16"], ck["c16"]], out, weights=[0.2, 0.3, 0.5])
    a, b, c, m = tensors(ck["a16"]), tensors(ck["b16"]), tensors(ck["c16"]), tensors(out)
    assert m.keys() == a.keys()
    naive_differs = False
    for k in m:
        assert m[k].dtype == torch.bfloat16, k
        expected = (0.2 * a[k].float() + 0.3 * b[k].float() + 0.5 * c[k].float()).to(torch.bfloat16)
        assert torch.equal(m[k], expected), k
        naive = 0.2 * a[k] + 0.3 * b[k] + 0.5 * c[k]  # the same sum in bf16: rounds differently
        naive_differs |= not torch.equal(m[k], naive)
    assert naive_differs, "the test data cannot tell an fp32 sum from a bf16 one"
    k = "language_model.model.tok_embeddings.weight"  # spot check against hand arithmetic
    x = 0.2 * a[k][3, 5].item() + 0.3 * b[k][3, 5].item() + 0.5 * c[k][3, 5].item()
    assert abs(m[k][3, 5].item() - x) <= abs(x) * 2**-8
    with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    for name in ("config.json", "tokenizer.model", "tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"):
        assert read(os.path.join(out, name)) == read(os.path.join(ck["a16"], name)), name
    model = M.load_model(out, dtype=torch.bfloat16)
    assert model.img_context_token_id is not None
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_sharded_output_like_first_input(ck, tmp_path):
    out = str(tmp_path / "out")
    merge.merge([ck["a_sh"], ck["b"]], out)  # the second input is one file: the sharding follows the first
    index = json.load(open(os.path.join(ck["a_sh"], merge.INDEX)))
    names = sorted(set(index["weight_map"].values()))
    assert len(names) >= 3 and names[0] == f"model-00001-of-{len(names):05d}.safetensors"
    assert json.load(open(os.path.join(out, merge.INDEX))) == index
    assert sorted(f for f in os.listdir(out) if f.endswith(".safetensors")) == names
    for name in names:
        with safe_open(os.path.join(out, name), "pt") as f, safe_open(os.path.join(ck["a_sh"], name), "pt") as g:
            assert sorted(f.keys()) == sorted(g.keys()) and f.metadata() == {"format": "pt"}
    merged, a, b = (M.load_model(p).state_dict() for p in (out, ck["a_sh"], ck["b"]))
    for k in merged:
        torch.testing.assert_close(merged[k], 0.5 * a[k] + 0.5 * b[k], rtol=0, atol=0)


def test_weights_are_normalised(ck, tmp_path):
    merge.merge([ck["a"], ck["b"]], str(tmp_path / "x"), weights=[2, 6])
    merge.merge([ck["a"], ck["b"]], str(tmp_path / "y"), weights=[0.25, 0.75])
    assert read(tmp_path / "x" / "model.safetensors") == read(tmp_path / "y" / "model.safetensors")
    merge.merge([ck["a"], ck["b"]], str(tmp_path / "z"), weights=[3, 0])  # 1 and 0, not 3 and 0
    a, z = tensors(ck["a"]), tensors(str(tmp_path / "z"))
    assert all(torch.equal(z[k], a[k]) for k in a)


@pytest.mark.parametrize("name", ["a", "a16", "a_sh"])
def test_merge_with_itself_is_identity(ck, tmp_path, name):
    out = str(tmp_path / "out")
    merge.merge([ck[name], ck[name]], out)
    files = sorted(f for f in os.listdir(ck[name]) if f.startswith("model"))
    assert sorted(f for f in os.listdir(out) if f.startswith("model")) == files
    for f in files:
        assert read(os.path.join(out, f)) == read(os.path.join(ck[name], f)), f


def test_every_tokenizer_file_goes_with_the_soup(ck, tmp_path):
    """A BPE checkpoint (Qwen2's tokenizer.json, vocab.json, merges.txt) keeps its tokenizer: merge.py copies what
    model.save_model does (its own list: merge.py imports nothing from this repo)."""
    assert merge.TOKENIZER_FILES == M.TOKENIZER_FILES
    a, b = copy(ck["a"], tmp_path / "a"), copy(ck["b"], tmp_path / "b")
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        open(os.path.join(a, name), "w").write(name)
    merge.merge([a, b], str(tmp_path / "out"))
    assert all(read(os.path.join(tmp_path, "out", f)) == read(os.path.join(a, f))
               for f in M.TOKENIZER_FILES if os.path.exists(os.path.join(a, f)))
    assert os.path.exists(tmp_path / "out" / "merges.txt")


def test_ignored_config_fields_and_stale_files(ck, tmp_path):
    b = copy(ck["b"], tmp_path / "b")
    edit_config(b, _name_or_path="/elsewhere/b", transformers_version="9.9", llm_config__torch_dtype="float16")
    out = str(tmp_path / "out")
    os.makedirs(out)
    for stale in ("model-00001-of-00002.safetensors", merge.INDEX, "model.safetensors.tmp"):
        open(os.path.join(out, stale), "w").write("old run")
    merge.merge([ck["a"], b], out)
    assert sorted(os.listdir(out)) == sorted(os.listdir(ck["a"]))
    M.load_model(out)


def test_integer_tensors_are_copied_or_refused(tmp_path):
    def ckpt(name, ids):
        os.makedirs(tmp_path / name)
        json.dump({"compressor": {"method": "conv", "ratio": 0.5}}, open(tmp_path / name / "config.json", "w"))
        save_file({"ids": ids, "w": torch.full((3,), float(len(name)))}, str(tmp_path / name / "model.safetensors"))
        return str(tmp_path / name)
    a, b, c = ckpt("a", torch.arange(4)), ckpt("bb", torch.arange(4)), ckpt("ccc", torch.arange(4) + 1)
    merge.merge([a, b], str(tmp_path / "out"))
    m = tensors(str(tmp_path / "out"))
    assert torch.equal(m["ids"], torch.arange(4)) and torch.equal(m["w"], torch.full((3,), 1.5))
    with pytest.raises(merge.MergeError, match="integer tensor ids differs"):
        merge.merge([a, c], str(tmp_path / "out2"))


# ----------------------------------------------------------------------------------------------
# Refused inputs: each names the problem, and nothing is written.

def drop_and_add_keys(path):
    t = load_file(os.path.join(path, "model.safetensors"))
    del t["mlp1.0.weight"], t["mlp1.0.bias"]
    t["extra.weight"] = torch.zeros(2)
    save_file(t, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def reshape_key(path):
    t = load_file(os.path.join(path, "model.safetensors"))
    t["mlp1.1.weight"] = t["mlp1.1.weight"][:32].contiguous()
    save_file(t, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def truncate(path):
    data = read(os.path.join(path, "model.safetensors"))
    open(os.path.join(path, "model.safetensors"), "wb").write(data[: len(data) // 2])


def drop_shard(path):
    os.remove(os.path.join(path, sorted(f for f in os.listdir(path) if f.startswith("model-"))[1]))


def strip_compressor(path):
    cfg = json.load(open(os.path.join(path, "config.json")))
    del cfg["compressor"]
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"))


BROKEN = {  # name: (which checkpoint to copy, how to break the copy, what the message must say)
    "missing folder": ("a", lambda p: shutil.rmtree(p), r"folder .*/b does not exist"),
    "missing config": ("a", lambda p: os.remove(os.path.join(p, "config.json")), r"no config\.json in"),
    "bad config json": ("a", lambda p: open(os.path.join(p, "config.json"), "w").write("{"), r"config\.json is not valid JSON"),
    "missing weights": ("a", lambda p: os.remove(os.path.join(p, "model.safetensors")), r"no model\.safetensors or"),
    "corrupt weights": ("a", lambda p: open(os.path.join(p, "model.safetensors"), "wb").write(b"junk" * 9),
                        r"cannot read .*model\.safetensors.*corrupt"),
    "truncated weights": ("a", truncate, r"cannot read .*model\.safetensors.*corrupt"),
    "missing shard": ("a_sh", drop_shard, r"shard model-00002-of-\d{5}\.safetensors listed in .* is missing"),
    "key sets": ("a", drop_and_add_keys, r"key sets differ: .*/b lacks 2 of .*'s keys \(mlp1\.0\.bias, mlp1\.0\.weight\) "
                                         r"and has 1 others \(extra\.weight\)"),
    "shape": ("a", reshape_key, r"shape mismatch for mlp1\.1\.weight: \(64, 128\) in .* vs \(32, 128\) in .*/b"),
    "dtype": ("a16", None, r"dtype mismatch for .*: F32 in .* vs BF16 in .*/b"),
    "compressor value": ("a", lambda p: edit_config(p, compressor={"method": "conv", "ratio": 0.25}),
                         r'config\.json differs in compressor\.ratio: 0\.5 in .* but 0\.25 in .*/b'),
    "compressor absent": ("a", strip_compressor,
                          r'differs in compressor: \{"method": "conv", "ratio": 0\.5\} in .* but absent in'),
    "architecture": ("a", lambda p: edit_config(p, llm_config__num_hidden_layers=3),
                     r"config\.json differs in llm_config\.num_hidden_layers: 2 in .* but 3 in"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_refused_inputs(ck, tmp_path, case):
    src, breaks, message = BROKEN[case]
    a = copy(ck[src], tmp_path / "a")
    edit_config(a, compressor={"method": "conv", "ratio": 0.5})
    b = copy(a, tmp_path / "b")
    if case == "dtype":
        a, b = copy(ck["a"], tmp_path / "a32"), copy(ck["a16"], tmp_path / "b16")
        message = message.replace("/b", "/b16")
    else:
        breaks(b)
    with pytest.raises(merge.MergeError, match=message) as e:
        merge.merge([a, b], str(tmp_path / "out"))
    assert "\n" not in str(e.value)
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("args, message", [
    (dict(inputs=1), r"got 1 input checkpoint\(s\): pass at least two"),
    (dict(weights=[1.0]), r"--weights has 1 values for 2 inputs"),
    (dict(weights=[1, 2, 3]), r"--weights has 3 values for 2 inputs"),
    (dict(weights=[1, -0.5]), r"negative"),
    (dict(weights=[1, float("nan")]), r"non-finite"),
    (dict(weights=[0, 0]), r"--weights sum to 0"),
    (dict(weights=[1e308, 1e308]), r"--weights sum to inf: scale them down"),
    (dict(out="/"), r"--out .* is the input"),
    (dict(out="/."), r"--out .* is the input"),
])
def test_refused_arguments(ck, tmp_path, args, message):
    inputs = [ck["a"], ck["b"]][: args.get("inputs", 2)]
    out = ck["a"] + args["out"] if "out" in args else str(tmp_path / "out")  # the input, spelled otherwise
    with pytest.raises(merge.MergeError, match=message):
        merge.merge(inputs, out, args.get("weights"))
    assert not os.path.exists(tmp_path / "out")


def test_out_holding_more_than_a_checkpoint_is_kept(ck, tmp_path):
    """Only an empty folder or a checkpoint's files alone are replaced: a project folder that happens to hold a
    config.json or a models/ folder is not."""
    for extra in ("notes.txt", "models/keep.txt", "model_card.txt", "model.safetensors.sha256"):
        out = tmp_path / extra.replace("/", "_")
        (out / extra).parent.mkdir(parents=True)
        (out / extra).write_text("mine")
        (out / "config.json").write_text("{}")
        with pytest.raises(merge.MergeError, match="a folder holding more than a checkpoint"):
            merge.merge([ck["a"], ck["b"]], str(out))
        assert (out / extra).read_text() == "mine"
    (tmp_path / "file").write_text("mine")
    with pytest.raises(merge.MergeError, match="exists and is a file"):
        merge.merge([ck["a"], ck["b"]], str(tmp_path / "file"))
    merge.merge([ck["a"], ck["b"]], str(tmp_path / "again"))
    merge.merge([ck["a"], ck["b"]], str(tmp_path / "again"), [1, 3])  # a merge's own folder is replaced
    a, b, m = tensors(ck["a"]), tensors(ck["b"]), tensors(str(tmp_path / "again"))
    assert all(torch.equal(m[k], 0.25 * a[k] + 0.75 * b[k]) for k in a)


def test_cli(ck, tmp_path):
    run = lambda *args: run_main(merge.main, *args)
    r = run(ck["a"], ck["b"], "--weights", "1", "3", "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    a, b, m = tensors(ck["a"]), tensors(ck["b"]), tensors(str(tmp_path / "out"))
    assert all(torch.equal(m[k], 0.25 * a[k] + 0.75 * b[k]) for k in a)
    r = run(ck["a"], ck["a16"], "--out", str(tmp_path / "out2"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("merge.py: error: dtype mismatch for ")
    assert not os.path.exists(tmp_path / "out2")
    for bad in (["--weights", "abc"], ["--weights"], [], ["--oops"]):  # argparse's own errors: one line too, no usage
        r = run(ck["a"], ck["b"], *bad, *(["--out", str(tmp_path / "out3")] if bad else []))
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("merge.py: error: "), (bad, r.stderr)
    assert "invalid float value: 'abc'" in run(ck["a"], ck["b"], "--weights", "abc", "--out", "o").stderr
    assert not os.path.exists(tmp_path / "out3")
