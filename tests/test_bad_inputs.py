"""Issue 25: no silent wrong result, and one line for every bad input. Each refused input exits with code 2
and one line on stderr (no traceback) that names the problem and the fix; the others give the right result:
predictions of another model or other settings are not reused, a killed merge leaves the old folder as it
was, a 16-bit page reads as its 8-bit self, and torchrun's shards score as one process does.

    python -m pytest tests/test_bad_inputs.py -q
"""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import bench
import cli
import distill as D
import evaluate as E
import merge
import model as M
import posttrain as P
import results as R
import teacher
from test_evaluate import docvqa_fixture, dump, predicted, rrc
from tokenizer import load_tokenizer
from test_merge import make, read
from conftest import run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = os.path.join(ROOT, "data", "tokenizer")
FAST = ["--max-num", "2", "--max-new-tokens", "4", "--device", "cpu"]


def readonly(tmp_path):
    """A folder this process cannot create files in (root ignores permissions: a path under /sys then)."""
    if os.geteuid() == 0:
        return "/sys/fcot-readonly"
    os.makedirs(tmp_path / "ro")
    os.chmod(tmp_path / "ro", 0o555)
    return str(tmp_path / "ro" / "sub")


def one_line(err, prog, *words):
    """stderr holds one error line (besides tqdm's progress bar), with the words; no traceback."""
    lines = [line for line in err.splitlines() if line.strip() and not re.match(r"\w+: +\d+%\|", line)]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: ") and all(w in lines[0] for w in words), lines[0]


def random_model(path, seed):
    """A random tiny InternVL2 (56 px tiles) whose answers depend on its weights, as conftest's teacher."""
    torch.manual_seed(seed)
    model = M.InternVLChat(M.tiny_config(load_tokenizer(TOK).vocab_size, 56))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 1.5 / p.shape[-1] ** 0.5)
    M.save_model(model, str(path), tokenizer_dir=TOK)
    return str(path)


def broken(teacher_dir, tmp_path, how):
    """A copy of the teacher's folder, broken one way."""
    d = shutil.copytree(teacher_dir, tmp_path / how)
    if how == "no-weight-map":
        dump(str(d / "model.safetensors.index.json"), {"metadata": {"total_size": 1}})
    elif how == "missing-shard":
        os.rename(d / "model.safetensors", d / "model-00001-of-00002.safetensors")
        with safe_open(str(d / "model-00001-of-00002.safetensors"), "pt") as f:  # half the keys in a shard that is not there
            shards = {k: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, k in enumerate(f.keys())}
        dump(str(d / "model.safetensors.index.json"), {"weight_map": shards})
    elif how == "bin-only":
        os.remove(d / "model.safetensors")
        (d / "pytorch_model.bin").write_bytes(b"not loaded")
    return str(d)


# ----------------------------------------------------------------------------------------------- evaluate.py

def question_file(tmp_path, how):
    """A DocVQA folder of 2 questions, broken one way."""
    root = str(tmp_path / how)
    path = docvqa_fixture(root, n=2)
    data = json.load(open(path))
    if how == "img-context":
        data["data"][1]["question"] = "What is <IMG_CONTEXT> here?"
    elif how == "partial-answers":
        del data["data"][1]["answers"]
    json.dump(data, open(path, "w"))
    return root


EVAL_CASES = {  # name: (argv, words of the one line); {t}: tmp_path, {teacher}: the teacher's folder
    "limit -1": (["--limit", "-1"], ["--limit -1: must be >= 1"]),
    "max-num -3": (["--max-num", "-3"], ["--max-num -3: must be >= 1"]),
    "max-num 65": (["--max-num", "65"], ["--max-num 65: must be >= 1 and <= 64"]),  # the grid search is cubic
    "batch-size 0": (["--batch-size", "0"], ["--batch-size 0: must be >= 1"]),
    "batch-size -1": (["--batch-size", "-1"], ["--batch-size -1"]),
    "max-new-tokens -5": (["--max-new-tokens", "-5"], ["--max-new-tokens -5: must be >= 1"]),
    "threads -1": (["--threads", "-1"], ["--threads -1: must be >= 0"]),
    "ratio 0": (["--method", "pool", "--ratio", "0"], ["--ratio 0: must be > 0 and <= 1"]),
    "device tpu": (["--device", "tpu"], ["--device tpu", "pass cpu or cuda"]),
    "device cuda": (["--device", "cuda"], ["--device cuda", "pass --device cpu"]),
    "out is a folder": (["--out", "{t}"], ["is a folder", "pass a file in it"]),
    "out ends in .json": (["--out", "{t}/r.json"], ["must end in .jsonl", "the scores go beside it"]),
    "fastv-layer without fastv": (["--method", "pool", "--ratio", "0.25", "--fastv-layer", "3"],
                                  ["--fastv-layer is an option of --method fastv"]),
    "out read-only": (["--out", "{ro}/r.jsonl"], ["cannot write there", "writable folder"]),
    "model is a file": (["--model", "{teacher}/config.json"], ["is a file", "pass the checkpoint folder"]),
    "index without weight_map": (["--model", "{no-weight-map}"], ["has no weight_map", "restore it"]),
    "missing shard": (["--model", "{missing-shard}"], ["model-00002-of-00002.safetensors", "is missing",
                                                       "download or copy it there"]),
    ".bin only": (["--model", "{bin-only}"], ["pickle", "not loaded", "safetensors.torch.save_file", "torch.load"]),
    "<IMG_CONTEXT> in a question": (["--data", "{img-context}"], ["question 101 contains <IMG_CONTEXT>", "remove it"]),
    "partial answers": (["--data", "{partial-answers}"], ["question 101 has no answers, unlike 1 of the 2",
                                                           "every question its answers"]),
}


@pytest.mark.parametrize("case", list(EVAL_CASES))
def test_evaluate_refuses_in_one_line(case, teacher_dir, tmp_path):
    argv, words = EVAL_CASES[case]
    if case == "device cuda" and torch.cuda.is_available():
        pytest.skip("this torch has CUDA")
    paths = dict(t=str(tmp_path), teacher=teacher_dir, ro=readonly(tmp_path) if "ro}" in " ".join(argv) else "")
    for how in ("no-weight-map", "missing-shard", "bin-only"):
        if "{" + how + "}" in " ".join(argv):
            paths[how] = broken(teacher_dir, tmp_path, how)
    for how in ("img-context", "partial-answers"):
        if "{" + how + "}" in " ".join(argv):
            paths[how] = question_file(tmp_path, how)
    argv = [a.format(**paths) for a in argv]
    base = ["--task", "docvqa", "--model", teacher_dir, "--data", docvqa_fixture(str(tmp_path / "ok"), n=2),
            "--out", str(tmp_path / "out" / "r.jsonl"), *FAST]
    r = run_main(E.main, *base, *argv)  # the last of a repeated flag wins
    assert r.returncode == 2
    one_line(r.stderr, "evaluate.py", *words)


def test_decompression_bomb_is_one_line(teacher_dir, tmp_path, monkeypatch):
    # a 14000 x 14000 page is 196M pixels, over PIL's 2 x 89M limit; the same check on a small page, a small limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    r = run_main(E.main, "--task", "docvqa", "--model", teacher_dir, "--data", docvqa_fixture(str(tmp_path), n=1),
                 "--out", str(tmp_path / "r.jsonl"), *FAST)
    one_line(r.stderr, "evaluate.py", "doc0_1.png", "decompression bomb", "MAX_IMAGE_PIXELS",
             "remove question 100")
    assert r.returncode == 2


def test_a_16_bit_page_reads_as_its_8_bit_self(tmp_path):
    rng = np.random.default_rng(0)
    page = rng.integers(0, 256, (60, 90), dtype=np.uint8)
    page[20:40] = 255  # paper
    Image.fromarray(page, "L").save(tmp_path / "8.png")
    Image.fromarray(page.astype(np.uint16) * 257).save(tmp_path / "16.png")  # 255 -> 65535
    assert Image.open(tmp_path / "16.png").mode in ("I;16", "I")
    a, b = M.load_image(str(tmp_path / "8.png"), max_num=2, image_size=56), M.load_image(str(tmp_path / "16.png"), 2, 56)
    assert a.shape == b.shape and (a - b).abs().max() < 1e-5  # the same bytes after scaling: exactly equal
    assert M.load_image(Image.open(tmp_path / "16.png"), 2, 56).equal(b)


def test_submission_only_when_no_question_has_answers(tmp_path):
    root = str(tmp_path / "test")
    items = E.read_docvqa(docvqa_fixture(root, n=2, answers=False), root)
    E._all_or_none_answered(items, "test")  # none: a test file, for submission
    items[0]["answers"] = ["x"]
    with pytest.raises(cli.Error, match="question 101 has no answers"):
        E._all_or_none_answered(items, "test")


# ---------------------------------------------------------------------------------- resume: the same run only

def test_two_models_in_folders_of_the_same_name(tmp_path, monkeypatch, capsys):
    """The default predictions path is results/<folder name>/<task>.jsonl: a second model of that name, or the same
    model with other settings, is refused there, not written over the first; the same folder with new weights (trained
    again) is evaluated anew."""
    a, b = random_model(tmp_path / "a" / "tiny", 1), random_model(tmp_path / "b" / "tiny", 2)
    data = docvqa_fixture(str(tmp_path / "docvqa"), n=4)
    monkeypatch.chdir(tmp_path)
    run = lambda model, *extra: E.run(E.parse_args(["--task", "docvqa", "--model", model, "--data", data, *FAST, *extra]))
    answers = lambda res: {q: r["answer"] for q, r in predicted(res["predictions"]).items()}
    first = run(a)
    answers_a = answers(first)
    with pytest.raises(cli.Error, match=f"another run \\(the model in {re.escape(a)}\\): pass --out"):
        run(b)
    assert answers(first) == answers_a  # kept
    alone = run(b, "--out", str(tmp_path / "b.jsonl"))
    assert answers(alone) != answers_a
    assert run(a)["new_predictions"] == 0  # the same run resumes
    assert run(a, "--max-new-tokens", "1")["predictions"] != first["predictions"]  # another setting: its own file
    random_model(tmp_path / "a" / "tiny", 2)  # a trained again: b's weights in a's folder
    again = run(a)
    assert again["new_predictions"] == 4 and "model_sha256" in capsys.readouterr().err  # the note names what differs
    assert answers(again) == answers(alone) and again["score"] == alone["score"]


def test_older_predictions_without_a_key_are_not_reused(tmp_path, capsys):
    data = docvqa_fixture(str(tmp_path / "docvqa"), n=2)
    dump(str(tmp_path / "r.jsonl"), [dict(qid=100, answer="value 0"), dict(qid=101, answer="value 1")])
    res = E.run(E.parse_args(["--task", "docvqa", "--data", data, "--out", str(tmp_path / "r.jsonl"), *FAST]))
    assert res["new_predictions"] == 2 and "it has no run key" in capsys.readouterr().err


def test_other_images_under_the_same_names_start_afresh(tmp_path, capsys):
    """The images are in the key: other bytes under the same names (--data or --images) are a new run; the same
    bytes, even touched, resume."""
    a = str(tmp_path / "a")
    ann = docvqa_fixture(a, n=4)
    b = shutil.copytree(a, tmp_path / "b")
    Image.new("RGB", (64, 48), "black").save(b / "documents" / "doc1_1.png")
    out = ["--out", str(tmp_path / "r.jsonl"), *FAST]
    run = lambda *argv: E.run(E.parse_args(["--task", "docvqa", *argv, *out]))
    assert run("--data", a)["new_predictions"] == 4
    assert run("--data", str(b))["new_predictions"] == 4 and "images_sha256" in capsys.readouterr().err
    assert run("--data", ann)["new_predictions"] == 4  # the same annotation file, a's images again
    assert run("--data", ann, "--images", str(b))["new_predictions"] == 4  # the same annotation, b's images
    os.utime(b / "documents" / "doc0_1.png")  # touched, not changed: rehashed, the same digest
    assert run("--data", ann, "--images", str(b))["new_predictions"] == 0


def test_image_digests_are_reused_while_their_stamps_hold(tmp_path):
    docvqa_fixture(str(tmp_path), n=2)
    paths = [str(tmp_path / "documents" / f"doc{i}_1.png") for i in (0, 1, 0)]
    files = E.image_identity(paths)
    assert list(files) == paths[:2]  # each distinct file once
    fake = {p: [*s[:4], "f" * 64] for p, s in files.items()}
    assert E.image_identity(paths, fake) == fake  # unchanged stamps: not read again
    Image.new("RGB", (64, 48), "black").save(paths[0])
    again = E.image_identity(paths, fake)
    assert again[paths[0]][4] not in ("f" * 64, files[paths[0]][4]) and again[paths[1]] == fake[paths[1]]


def test_a_model_object_keys_the_run_on_itself(tmp_path, capsys):
    """evaluate() on a model object keys the run on its weights, config and what baselines.apply attached, not on
    the settings that name it: the same model (object or reloaded) resumes, a compressed or changed one does not."""
    import baselines as B, compress as C
    data = docvqa_fixture(str(tmp_path / "docvqa"), n=2)
    load = lambda: M.load_model(os.path.join(ROOT, "checkpoints", "tiny"), build_compressor=C.build)
    tok = load_tokenizer(os.path.join(ROOT, "checkpoints", "tiny"))
    run = lambda m: E.evaluate(m, tok, "docvqa", data=data, out=str(tmp_path / "r.jsonl"), **dict(
        max_num=2, max_new_tokens=4, device="cpu"))["new_predictions"]
    m = load()
    assert run(m) == 2 and run(m) == 0 and run(load()) == 0  # the same object, the same bytes reloaded: resumed
    assert run(B.apply(load(), "pool", 0.5)) == 2 and "model_sha256" in capsys.readouterr().err
    assert run(B.apply(load(), "fastv", 0.5, fastv_layer=1)) == 2
    assert run(B.apply(load(), "fastv", 0.25, fastv_layer=1)) == 2  # FastV's ratio is in the key
    assert run(B.apply(load(), "fastv", 0.25, fastv_layer=1)) == 0
    with torch.no_grad():
        m.mlp1[-1].bias.add_(1)  # other weights in the same object
    assert run(m) == 2


def test_a_new_protocol_starts_afresh(tmp_path, monkeypatch):
    """EVAL_PROTOCOL is in the key: predictions made before a change that alters answers are not resumed."""
    data = docvqa_fixture(str(tmp_path / "docvqa"), n=2)
    run = lambda: E.run(E.parse_args(["--task", "docvqa", "--data", data, "--out", str(tmp_path / "r.jsonl"), *FAST]))
    assert run()["new_predictions"] == 2 and run()["new_predictions"] == 0
    monkeypatch.setattr(E, "EVAL_PROTOCOL", E.EVAL_PROTOCOL + 1)
    assert run()["new_predictions"] == 2


def test_torchrun_shards_score_as_one_process(tmp_path):
    """2 gloo processes: each answers every other question into its own file, rank 0 merges and scores."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    flags = ["--task", "docvqa", "--max-num", "6", "--device", "cpu"]  # the shipped teacher, 6 tiles: a score > 0
    ev, torchrun = os.path.join(ROOT, "evaluate.py"), [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                       "--nproc_per_node", "2"]
    one = subprocess.run([sys.executable, ev, *flags, "--limit", "5", "--out", str(tmp_path / "one.jsonl")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    for limit, new in (("3", 6), ("5", 4)):  # 3 + 3 reasoning questions, then 2 + 2 more: the rest resumes
        two = subprocess.run([*torchrun, ev, *flags, "--limit", limit, "--out", str(tmp_path / "two.jsonl")],
                             capture_output=True, text=True, env=env, timeout=300)
        assert two.returncode == 0, two.stderr[-3000:]
        assert json.load(open(tmp_path / "two.json"))["new_predictions"] == new
    a, b = json.load(open(tmp_path / "one.json")), json.load(open(tmp_path / "two.json"))
    assert a["score"] > 0 and (a["score"], a["reasoning"], a["n"]) == (b["score"], b["reasoning"], b["n"])
    answers = lambda p: {q: r["answer"] for q, r in predicted(p).items()}
    assert answers(tmp_path / "one.jsonl") == answers(tmp_path / "two.jsonl")
    assert sorted(os.listdir(tmp_path)) == ["one.json", "one.jsonl", "two.json", "two.jsonl"]  # shards merged, gone


# ------------------------------------------------------------------------------------------------- merge.py

def test_a_failed_merge_leaves_the_old_folder_as_it_was(tmp_path, monkeypatch):
    a, b, c = (make(tmp_path / k, s, max_shard_bytes=300_000) for k, s in (("a", 0), ("b", 1), ("c", 2)))
    out = str(tmp_path / "out")
    merge.merge([a, b], out)
    before = {f: read(os.path.join(out, f)) for f in os.listdir(out)}
    assert len([f for f in before if f.endswith(".safetensors")]) > 2
    real, calls = merge.save_file, []

    def save_then_die(*args, **kw):  # dies between two output shards, as a kill would
        if calls:
            raise KeyboardInterrupt
        calls.append(real(*args, **kw))
    monkeypatch.setattr(merge, "save_file", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        merge.merge([a, c], out)
    assert {f: read(os.path.join(out, f)) for f in os.listdir(out)} == before
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "c", "out"]
    monkeypatch.setattr(merge, "save_file", real)
    merge.merge([a, c], out)  # and a finished one replaces it whole
    assert {f: read(os.path.join(out, f)) for f in os.listdir(out)} != before
    assert sorted(os.listdir(out)) == sorted(before)


def test_merge_refuses_to_replace_a_folder_that_is_no_checkpoint(tmp_path):
    a, b = make(tmp_path / "a", 0), make(tmp_path / "b", 1)
    os.makedirs(tmp_path / "home" / "notes")
    with pytest.raises(merge.MergeError, match="is a folder holding more than a checkpoint, and a merge replaces it whole"):
        merge.merge([a, b], str(tmp_path / "home"))
    assert os.listdir(tmp_path / "home") == ["notes"]


# ------------------------------------------------------------------------------- the other scripts' flags

def exits_2(main, argv):
    r = run_main(main, *argv)
    assert r.returncode == 2, r.stderr
    return r.stderr


@pytest.mark.parametrize("argv, words", [
    (["--threads", "-1"], "--threads -1: must be >= 0"),
    (["--lr", "-1"], "--lr -1: must be > 0"),
    (["--micro-batch", "0"], "--micro-batch"),
    (["--max-num", "65"], "--max-num 65: must be >= 0 and <= 64"),
    (["--device", "tpu"], "--device tpu"),
    (["--out", "{file}"], "is a file: pass a folder"),
    (["--out", "{ro}"], "cannot write there"),
])
def test_posttrain_flags(tmp_path, argv, words):
    (tmp_path / "file").write_text("x")
    argv = [a.format(file=tmp_path / "file", ro=readonly(tmp_path) if a == "{ro}" else "") for a in argv]
    err = exits_2(P.main, ["--steps", "1", "--out", str(tmp_path / "o"), *argv])
    one_line(err, "posttrain.py", words)


@pytest.mark.parametrize("argv, words", [
    (["--temperature", "0"], "--temperature 0: must be > 0"),
    (["--ratio", "0"], "--ratio 0: must be > 0 and <= 1"),  # before the teacher loads, in the flag's own words
    (["--ratio", "1.2"], "--ratio 1.2: must be > 0 and <= 1"),
    (["--eval-batch-size", "0"], "--eval-batch-size 0"),
    (["--threads", "-1"], "--threads -1"),
    (["--device", "tpu"], "--device tpu"),
    (["--out", "{file}"], "is a file: pass a folder"),
    (["--out", "{ro}"], "cannot write there"),
])
def test_distill_flags(tmp_path, teacher_dir, argv, words):
    (tmp_path / "file").write_text("x")
    argv = [a.format(file=tmp_path / "file", ro=readonly(tmp_path) if a == "{ro}" else "") for a in argv]
    err = exits_2(D.main, ["--teacher", teacher_dir, "--steps", "1", "--out", str(tmp_path / "o"), *argv])
    one_line(err, "distill.py", words)


@pytest.mark.parametrize("main, prog, argv, words", [
    (R.main, "results.py", ["--batch-size", "0"], "--batch-size 0: must be >= 1"),
    (R.main, "results.py", ["--ratios", "0.5", "-1"], "--ratios -1"),
    (R.main, "results.py", ["--jobs", "0"], "--jobs 0"),
    (R.main, "results.py", ["--distill-lr", "nan"], "--distill-lr nan"),
    (R.main, "results.py", ["--ratios", "0.5", "0.3"], "--ratios: invalid ratio 0.3"),  # before 0.5's training
    (bench.main, "bench.py", ["--tiles", "1", "0"], "--tiles 0: must be >= 1"),
    (bench.main, "bench.py", ["--steps", "-1"], "--steps -1"),
    (bench.main, "bench.py", ["--device", "tpu"], "--device tpu"),
    (merge.main, "merge.py", ["a", "b", "--weights", "1", "-1", "--out", "o"], "negative"),
    (bench.main, "bench.py", ["--dtype", "int8"], "invalid choice: 'int8'"),
    (bench.main, "bench.py", ["--ratios", "0.3"], "--ratios 0.3: invalid ratio"),
    (bench.main, "bench.py", ["--json", ROOT], "is a folder: pass a file"),
    (bench.main, "bench.py", ["--json", "/sys/fcot-readonly/b.json"], "cannot write there"),  # before the timings
    (teacher.main, "teacher.py", ["--stage", "read", "--data", "pairs.jsonl"], "unrecognized arguments: --data"),
    (teacher.main, "teacher.py", ["--stage", "glyphs", "--init", "checkpoints/tiny"], "--init is the read stage's"),
])
def test_other_scripts_flags(main, prog, argv, words):
    one_line(exits_2(main, argv), prog, words)


def test_a_resumed_run_keeps_its_settings(tmp_path):
    """--resume continues the run in --out, not another one: what it learns may not change, how it runs may."""
    base = ["--image-size", "56", "--max-num", "2", "--steps", "4", "--stop-at", "2", "--micro-batch", "1",
            "--threads", "1", "--lr", "3e-4", "--out", str(tmp_path / "run")]
    assert run_main(P.main, *base).returncode == 0
    err = exits_2(P.main, base + ["--resume", "--lr", "1e-3", "--seed-offset", "7"])
    one_line(err, "posttrain.py", "--resume", "--lr 0.0003, not 0.001", "--seed-offset 0, not 7", "another --out")
    r = run_main(P.main, *base, "--resume", "--save-every", "1", "--threads", "2",  # how it runs may change, and
                 "--tokenizer", os.path.join(TOK, "..", "tokenizer"))  # how a path is spelt: the same run
    assert r.returncode == 0, r.stderr


def test_a_run_never_writes_over_the_model_it_starts_from(teacher_dir, tmp_path):
    teacher = shutil.copytree(teacher_dir, tmp_path / "teacher")
    err = exits_2(D.main, ["--teacher", str(teacher), "--out", str(teacher), "--steps", "1"])
    one_line(err, "distill.py", "is the --teacher folder", "pass another --out")
    err = exits_2(D.main, ["--teacher", teacher_dir, "--student", str(teacher), "--out", str(teacher) + "/.",
                           "--steps", "1"])
    one_line(err, "distill.py", "is the --student folder")


def test_a_compressor_record_without_its_ratio_is_one_line(teacher_dir, tmp_path):
    import compress as C
    config = M.load_model(teacher_dir).config
    for record in ({"method": "select"}, {"method": "pool", "ratio": "0.25"}, {"method": "select", "ratio": 0}):
        config.compressor = record
        with pytest.raises(C.CompressError, match="needs a ratio in"):
            C.build(config)


def test_a_select_record_takes_its_own_keys_and_booleans(teacher_dir):
    """A misspelt or string-valued option of a select student is refused, not read as off (or as on: "false")."""
    import compress as C
    config = M.load_model(teacher_dir).config
    for record, words in (({"method": "select", "ratio": 0.5, "rank_projectd": True}, "['rank_projectd'], which select"),
                          ({"method": "select", "ratio": 0.5, "rank_projected": "false"}, "rank_projected: 'false', not"),
                          ("select", "compressor is 'select': a record such as")):
        config.compressor = record
        with pytest.raises(C.CompressError, match=re.escape(words)):
            C.build(config)
    config.compressor = {"method": "select", "ratio": 0.5, "rank_projected": True}
    assert C.build(config).rank_projected


def test_build_never_writes_over_a_shipped_set(tmp_path):
    shipped = os.path.join(ROOT, "data", "eval", "docvqa")
    before = {f: os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(shipped) for f in fs}
    build = lambda *argv: subprocess.run([sys.executable, os.path.join(ROOT, "data", "build.py"), *argv],
                                         capture_output=True, text=True, cwd=ROOT)
    r = build("--heldout", shipped)
    assert r.returncode == 2
    one_line(r.stderr, "build.py", f"--heldout {shipped} holds other files", "pass a new folder")
    assert {f: os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(shipped) for f in fs} == before
    r = build("--vocab-size", "200")
    assert r.returncode == 2
    one_line(r.stderr, "build.py", "--vocab-size must be >= 300")


@pytest.mark.parametrize("how, words", [
    ("hidden_size '256'", "hidden_size is '256', not a number"),
    ("llm_config null", "no vision_config/llm_config"),
    ("IMG_CONTEXT past the embedding", "past the"),
    ("corrupt tokenizer.model", "corrupt or truncated"),
    ("config.json not UTF-8", "config.json is not valid JSON"),
    ("config.json a list", "config.json holds a JSON list, not an object"),
    ("added_tokens.json a list", "added_tokens.json holds a JSON list, not an object"),
    ("added token id a string", "has id '1000', not an integer"),
])
def test_odd_checkpoint_folders_are_one_line(teacher_dir, tmp_path, how, words):
    d = shutil.copytree(teacher_dir, tmp_path / "odd")
    cfg = json.load(open(d / "config.json"))
    if how.startswith("hidden_size"):
        cfg["llm_config"]["hidden_size"] = "256"
    elif how.startswith("llm_config"):
        cfg["llm_config"] = None
    elif how.startswith("IMG_CONTEXT"):
        added = json.load(open(d / "added_tokens.json"))
        added[M.IMG_CONTEXT] = cfg["llm_config"]["vocab_size"] + 10
        json.dump(added, open(d / "added_tokens.json", "w"))
    elif how.startswith("added token id"):
        json.dump({"<img>": "1000"}, open(d / "added_tokens.json", "w"))
    elif how.startswith("corrupt"):
        (d / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    json.dump(cfg, open(d / "config.json", "w"))
    if how.endswith("UTF-8"):
        (d / "config.json").write_bytes(b'{"note": "\xff"}')
    elif how.endswith("a list"):
        (d / how.split()[0]).write_text("[]")
    with pytest.raises(M.ModelLoadError, match=re.escape(words)):
        M.load_model(str(d))
        load_tokenizer(str(d))


@pytest.mark.parametrize("how", ["not UTF-8", "a list"])
def test_merge_reads_odd_json_in_one_line(teacher_dir, tmp_path, how):
    a, b = (shutil.copytree(teacher_dir, tmp_path / n) for n in "ab")
    (b / "config.json").write_bytes(b'{"note": "\xff"}' if how == "not UTF-8" else b"[]")
    err = exits_2(merge.main, [str(a), str(b), "--out", str(tmp_path / "m")])
    one_line(err, "merge.py", "config.json", "restore it from the original checkpoint")
