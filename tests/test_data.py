"""Tests for data/: generator determinism and geometry, QA consistency, real-format writers, shipped
eval-set checksums, tokenizer files.   Run:  python -m pytest -q tests/test_data.py   (CPU, ~15 s)"""
import io, json, os, re, subprocess, sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from data import build, synth  # noqa: E402
from conftest import run_main  # noqa: E402

EVAL = ROOT / "data" / "eval"
TOK = ROOT / "data" / "tokenizer"
SEEDS = range(12)


def png(img):
    b = io.BytesIO()
    img.save(b, "PNG")
    return b.getvalue()


@pytest.mark.parametrize("kind", synth.KINDS)
def test_determinism(kind):
    a, b, c = synth.make_sample(kind, 5), synth.make_sample(kind, 5), synth.make_sample(kind, 6)
    assert png(a["image"]) == png(b["image"])
    assert json.dumps(synth.meta(a)) == json.dumps(synth.meta(b))
    assert png(a["image"]) != png(c["image"]) and synth.meta(a)["transcription"] != synth.meta(c)["transcription"]


@pytest.mark.parametrize("kind", synth.KINDS)
def test_boxes_inside_and_inked(kind):
    cfg = synth.Config(noise=0)  # no specks, so a blank box cannot pass by accident
    for seed in SEEDS:
        s = synth.make_sample(kind, seed, cfg)
        g = np.asarray(s["image"].convert("L")).astype(int)
        assert g.shape == (s["height"], s["width"])
        assert 224 <= min(s["width"], s["height"]) and max(s["width"], s["height"]) <= 448
        assert s["chars"] and s["words"]
        for c in s["chars"] + s["words"]:
            x0, y0, x1, y1 = c["box"]
            assert 0 <= x0 < x1 <= s["width"] and 0 <= y0 < y1 <= s["height"], (kind, seed, c)
            region = g[y0:y1, x0:x1]
            assert region.max() - region.min() >= 40, (kind, seed, c)  # ink differs from its background
        assert "".join(w["text"] for w in s["words"]) == "".join(c["char"] for c in s["chars"])
        assert sorted(s["transcription"].split()) == sorted(w["text"] for w in s["words"])


def test_cap_height_range():
    f = synth.get_font(synth.Config.font_px[0])
    b = f.getbbox("H")
    assert 9 <= b[3] - b[1] <= 18


@pytest.mark.parametrize("kind", synth.KINDS)
def test_extractive_answers_written(kind):
    for seed in SEEDS:
        s = synth.make_sample(kind, seed)
        assert s["qa"] and s["reasoning"]
        for q in s["qa"]:
            assert q["answer"] and q["answer"] in s["transcription"], (kind, seed, q)


def check_reasoning(r, transcription):
    vals = [float(f["value"]) for f in r["facts"]]
    for f in r["facts"]:
        assert f["value"] in transcription  # every fact is read off the image
        assert f"{f['value']}{r['unit']}" in r["rationale"]
    if r["op"] in ("sum", "difference"):
        got = float(r["answer"][: len(r["answer"]) - len(r["unit"])])
        want = vals[0] + vals[1] if r["op"] == "sum" else vals[0] - vals[1]
        assert abs(got - want) < 1e-6 and r["answer"] in r["rationale"], r
    else:
        bigger = r["facts"][int(np.argmax(vals))]["name"]
        assert r["answer"].lower() in bigger.lower() and r["answer"] in transcription, r


@pytest.mark.parametrize("kind", synth.KINDS)
def test_reasoning_consistent(kind):
    for seed in range(30):
        s = synth.make_sample(kind, seed)
        for r in s["reasoning"]:
            check_reasoning(r, s["transcription"])


def test_table_values_recomputed():
    for seed in range(30):
        s = synth.make_sample("table", seed)
        rows = {}
        for line in s["transcription"].split("\n"):
            m = re.fullmatch(r"(\w+) (\d+) (\d+\.\d\d)", line)
            if m:
                rows[m[1]] = (int(m[2]), float(m[3]))
        total = float(re.search(r"TOTAL (\d+\.\d\d)", s["transcription"])[1])
        assert abs(sum(a for _, a in rows.values()) - total) < 1e-6
        for r in s["reasoning"]:
            for f in r["facts"]:  # "amount for X" / "quantity of X" must match row X of the table
                item = f["name"].split()[-1]
                want = rows[item][1] if f["name"].startswith("amount") else rows[item][0]
                assert abs(float(f["value"]) - want) < 1e-6


def test_bad_cli_exits_nonzero():
    p = subprocess.run([sys.executable, str(ROOT / "data" / "synth.py"), "--kind", "nope"], capture_output=True, text=True)
    assert p.returncode != 0 and p.stderr.strip().count("\n") == 0 and "error" in p.stderr


# ---------------------------------------------------------------- writers (real-format shapes)
def keys(d, want):
    assert set(d) == set(want), set(d) ^ set(want)
    for k, t in want.items():
        assert isinstance(d[k], t), (k, type(d[k]))


DOC = {"questionId": int, "question": str, "question_types": list, "image": str, "docId": int,
       "ucsf_document_id": str, "ucsf_document_page_no": str, "answers": list, "data_split": str}
INFO = {"questionId": int, "question": str, "image_local_name": str, "answers": list, "data_split": str,
        "answer_type": list, "evidence": list, "operation/reasoning": list}
CHART = {"imgname": str, "query": str, "label": str}
TVQA = {"question": str, "question_id": int, "image_id": str, "image_classes": list, "flickr_original_url": str,
        "flickr_300k_url": str, "image_width": int, "image_height": int, "answers": list, "question_tokens": list, "set_name": str}
OCRB = {"id": int, "dataset_name": str, "dataset": str, "image_path": str, "question": str, "answers": list, "type": str}
R = {"rationale": str}


def check_task(d, task):
    """Check one task folder written by build.py: envelope, item keys/types, images exist."""
    j = lambda p: json.loads((d / p).read_text())
    if task == "docvqa":
        for f, extra in (("val_v1.0.json", {}), ("reasoning.json", R)):
            env = j(f)
            assert {k: env[k] for k in ("dataset_name", "dataset_split", "dataset_version")} == {"dataset_name": "docvqa", "dataset_split": "val", "dataset_version": "1.0"}
            for it in env["data"]:
                keys(it, {**DOC, **extra})
                assert (d / it["image"]).is_file() and it["image"].startswith("documents/") and all(isinstance(a, str) for a in it["answers"])
        return len(j("val_v1.0.json")["data"])
    if task == "infovqa":
        for f, extra in (("infographicsVQA_val_v1.0_withQT.json", {}), ("reasoning.json", R)):
            env = j(f)
            assert set(env) == {"dataset_name", "dataset_split", "dataset_version", "data"}
            for it in env["data"]:
                keys(it, {**INFO, **extra})
                assert (d / "infographicsvqa_images" / it["image_local_name"]).is_file()
        return len(j("infographicsVQA_val_v1.0_withQT.json")["data"])
    if task == "chartqa":
        n = 0
        for f, extra in (("test/test_human.json", {}), ("test/test_augmented.json", {}), ("reasoning.json", R)):
            for it in j(f):
                keys(it, {**CHART, **extra})
                assert (d / "test" / "png" / it["imgname"]).is_file()
            n += len(j(f)) if "test_" in f else 0
        return n
    if task == "textvqa":
        for f, extra in (("TextVQA_0.5.1_val.json", {}), ("reasoning.json", R)):
            env = j(f)
            assert {k: env[k] for k in ("dataset_type", "dataset_name", "dataset_version")} == {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1"}
            for it in env["data"]:
                keys(it, {**TVQA, **extra})
                assert len(it["answers"]) == 10 and it["answers"].count(it["answers"][0]) >= 7
                assert (d / "train_images" / f"{it['image_id']}.jpg").is_file()
        return len(j("TextVQA_0.5.1_val.json")["data"])
    if task == "ocrbench":
        for f, extra in (("OCRBench.json", {}), ("reasoning.json", R)):
            for it in j(f):
                keys(it, {**OCRB, **extra})
                assert (d / it["image_path"]).is_file()
        return len(j("OCRBench.json"))


@pytest.mark.parametrize("task", build.TASKS)
def test_writer_shapes_small(task, tmp_path):
    kw = {"per_type": 2} if task == "ocrbench" else {"n": 2}
    getattr(build, "build_" + task)(tmp_path, **kw)
    assert check_task(tmp_path, task) > 0
    for line in (tmp_path / "samples.jsonl").read_text().splitlines():
        m = json.loads(line)
        assert (tmp_path / m["image"]).is_file() and m["seed"] >= build.EVAL_SEED


def test_heldout_pages_are_new(tmp_path):
    """--heldout writes DocVQA-format pages from seeds no shipped set or training run draws."""
    build.build_docvqa(tmp_path, n=2, seed=build.HELDOUT_SEED)
    assert check_task(tmp_path, "docvqa") > 0
    seeds = {json.loads(l)["seed"] for l in (tmp_path / "samples.jsonl").read_text().splitlines()}
    shipped = {json.loads(l)["seed"] for t in build.TASKS for l in (EVAL / t / "samples.jsonl").read_text().splitlines()}
    assert min(seeds) == build.HELDOUT_SEED and not seeds & shipped
    assert (tmp_path / "documents" / "syn0000_1.png").read_bytes() != (EVAL / "docvqa/documents/syn0000_1.png").read_bytes()


@pytest.mark.parametrize("task", build.TASKS)
def test_shipped_sets(task):
    n = check_task(EVAL / task, task)
    assert 200 <= n <= 300
    for line in (EVAL / task / "samples.jsonl").read_text().splitlines():
        assert json.loads(line)["seed"] >= build.EVAL_SEED  # eval seeds never overlap training seeds


def test_shipped_checksums():
    sums = (EVAL / "SHA256SUMS").read_text()
    listed = {l.split("  ", 1)[1] for l in sums.splitlines()}
    on_disk = {p.relative_to(EVAL).as_posix() for p in EVAL.rglob("*") if p.is_file() and p.name != "SHA256SUMS"}
    assert listed == on_disk
    assert sums == build.sha256sums(EVAL)
    assert sum((EVAL / f).stat().st_size for f in on_disk) < 15e6


def test_shipped_chartqa_regenerates_identically(tmp_path):
    build.build_chartqa(tmp_path / "chartqa")
    shipped = (EVAL / "SHA256SUMS").read_text().splitlines(keepends=True)
    assert build.sha256sums(tmp_path) == "".join(l for l in shipped if l.split("  ", 1)[1].startswith("chartqa/"))


# ---------------------------------------------------------------- tokenizer
def test_tokenizer_files():
    import sentencepiece as spm
    model = (TOK / "tokenizer.model").read_bytes()
    assert len(model) < 100_000
    sp = spm.SentencePieceProcessor(model_proto=model)
    V = sp.get_piece_size()
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    added = json.loads((TOK / "added_tokens.json").read_text())
    assert list(added) == build.IMG_TOKENS and list(added.values()) == list(range(V, V + 9))
    for t in build.CHAT_TOKENS:
        assert len(sp.encode(t)) == 1 and sp.id_to_piece(sp.encode(t)[0]) == t
    assert len(sp.encode(build.SYSTEM)) <= 16 and sp.decode(sp.encode(build.SYSTEM)) == build.SYSTEM
    assert sp.encode("2024", out_type=str) == ["2", "0", "2", "4"]  # split_digits
    assert sp.decode(sp.encode("a\nb")) == "a\nb"  # byte fallback keeps newlines
    cfg = json.loads((TOK / "tokenizer_config.json").read_text())
    dec = cfg["added_tokens_decoder"]
    want = {0: "<unk>", 1: "<s>", 2: "</s>", **{sp.piece_to_id(t): t for t in build.CHAT_TOKENS}, **{v: k for k, v in added.items()}}
    assert {int(k): v["content"] for k, v in dec.items()} == want
    assert all(v["special"] and not v["lstrip"] and not v["rstrip"] and not v["normalized"] and not v["single_word"] for v in dec.values())
    for k, v in {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>", "add_bos_token": True,
                 "add_eos_token": False, "tokenizer_class": "InternLM2Tokenizer", "model_max_length": 4096}.items():
        assert cfg[k] == v, k
    stm = json.loads((TOK / "special_tokens_map.json").read_text())
    assert stm["bos_token"] == "<s>" and stm["eos_token"] == "</s>" and stm["pad_token"] == "</s>"


def test_tokenizer_training_deterministic():
    lines = build.corpus(3)
    a, b = build.train_sp(lines, 400), build.train_sp(lines, 400)
    assert a == b


@pytest.mark.parametrize("kind", synth.KINDS)
def test_char_index_points_at_each_transcribed_glyph(kind):
    """Every transcription character maps to its own glyph box; every glyph is transcribed once."""
    for seed in range(12):
        s = synth.make_sample(kind, seed)
        text, index = s["transcription"], s["char_index"]
        assert len(text) == len(index)
        assert all((i == -1) == (c in " \n") and (i == -1 or s["chars"][i]["char"] == c) for c, i in zip(text, index))
        assert sorted(i for i in index if i >= 0) == list(range(len(s["chars"])))


# ---------------------------------------------------------------- question forms (data/forms.py)
def test_question_forms_cover_the_shipped_sets(tmp_path):
    import evaluate as E
    from data import forms
    for task in E.TASKS:
        items = E.TASKS[task].read(E.find_annotation(task, str(EVAL / task)), str(EVAL / task))
        main = [it for it in items if not it["extra"].get("reasoning")]
        with open(tmp_path / f"{task}.jsonl", "w") as f:  # right on even qids, wrong on odd ones
            for k, it in enumerate(main):
                f.write(json.dumps({"qid": it["qid"], "answer": it["answers"][0] if k % 2 == 0 else "zzz"}) + "\n")
        got = forms.by_form(task, tmp_path / f"{task}.jsonl")
        assert "unmatched" not in got and sum(n for n, _ in got.values()) == len(main)
        hits = sum(n * s / 100 for n, s in got.values())
        assert abs(hits - (len(main) + 1) // 2) < 1e-6, task
    assert forms.form_of("chartqa", "What is the value for 2013?") == "value for a category"
    assert forms.form_of("docvqa", "What is the amount for Eggs?") == "amount for an item"
    assert forms.form_of("docvqa", "What is the invoice number?") == "form field"


def wide_layouts(task):
    from data import wide
    kinds = {"chartqa": ["chart"], "docvqa": ["doc", "table"], "ocrbench": list(wide.LAYOUTS)}[task]
    return [x for k in kinds for fam in wide.LAYOUTS[k].values() for x in fam]


def test_question_forms_of_the_heldout_family_come_from_its_samples(tmp_path):
    import evaluate as E
    from data import forms
    heldout = Path(E.HELDOUT_SETS)
    for task, data in (("chartqa", heldout / "chartqa"), ("docvqa", heldout / "docvqa" / "val_reworded.json"),
                       ("docvqa", heldout / "docvqa" / "val_reworded2.json"),
                       ("docvqa", heldout / "docvqa" / "val_reworded3.json"), ("ocrbench", heldout / "ocrbench")):
        items = E.TASKS[task].read(E.find_annotation(task, str(data)), str(data if data.is_dir() else data.parent))
        with open(tmp_path / f"{task}.jsonl", "w") as f:  # right on the first half of the questions only
            for k, it in enumerate(items):
                f.write(json.dumps({"qid": it["qid"], "answer": it["answers"][0] if k < len(items) // 2 else "zzz"}) + "\n")
        got = forms.by_form(task, tmp_path / f"{task}.jsonl", data, by_layout=True)
        assert sum(n for n, _ in got.values()) == len(items), task
        assert abs(sum(n * s / 100 for n, s in got.values()) - len(items) // 2) < 1e-6, task
        # every question found in samples.jsonl (OCRBench's key-information prompt too), but OCRBench's word crops
        assert [k for k in got if ": " not in k] == (["word crop"] if task == "ocrbench" else []), (task, sorted(got))
        assert {k.split(": ")[0] for k in got if ": " in k} <= set(wide_layouts(task)), task
    assert "hgroup: series" in forms.by_form("chartqa", tmp_path / "chartqa.jsonl", heldout / "chartqa", by_layout=True)
    assert "series" in forms.by_form("chartqa", tmp_path / "chartqa.jsonl", heldout / "chartqa")


def test_question_forms_refuse_in_one_line(tmp_path):
    (tmp_path / "chartqa.jsonl").write_text(json.dumps({"run": {"data_sha256": "another set's"}}) + "\n")
    for argv, words in (([str(tmp_path / "none")], "no <task>.jsonl"), ([str(tmp_path), "--data", str(tmp_path)], "does not exist"),
                        ([str(tmp_path)], "answers other questions than"), ([], "required: folder")):
        r = subprocess.run([sys.executable, "-m", "data.forms", *argv], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 2 and words in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


def test_heldout_into_a_read_only_place_is_one_line(tmp_path):
    place = "/sys/fcot-readonly" if os.geteuid() == 0 else str(tmp_path / "ro")  # root ignores permissions
    if os.geteuid():
        os.makedirs(place)
        os.chmod(place, 0o500)
    r = run_main(build.main, "--heldout", place + "/docvqa")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "cannot write" in err[0] and "Traceback" not in err[0], err


@pytest.mark.parametrize("argv", [["--check", "--heldout", "x"], ["--check", "--heldout-family"],
                                  ["--heldout-family", "--train-family", "x"], ["--eval", "--check"]])
def test_build_jobs_are_one_per_command(argv, monkeypatch):
    """Two jobs in one command are refused before either runs: taking the first would build when asked to check."""
    for job in ("build_eval", "build_docvqa", "build_tokenizer", "check_eval"):
        monkeypatch.setattr(build, job, lambda *a, **k: pytest.fail("a job ran"))
    r = run_main(build.main, *argv)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "separate jobs" in err[0], err


def test_check_names_the_files_that_differ(tmp_path, monkeypatch):
    """--check lists changed, missing and extra files (coreutils' sha256sum -c passes an extra one), and exits 1."""
    for name in ("a.json", "b/c.png", "d.txt"):
        (tmp_path / "set" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "set" / name).write_text(name)
    root = tmp_path / "set"
    (root / "SHA256SUMS").write_text(build.sha256sums(root))
    assert build.check_eval(root) == []
    for job in ("build_eval", "build_tokenizer"):  # a check that passes builds nothing
        monkeypatch.setattr(build, job, lambda *a, **k: pytest.fail("a job ran"))
    monkeypatch.setattr(build, "EVAL_DIR", root)
    monkeypatch.setattr(build, "HELDOUT_DIR", root)
    r = run_main(build.main, "--check")
    assert r.returncode == 0 and r.stdout.strip() == "SHA256SUMS ok", r.stderr
    (root / "a.json").write_text("changed")
    (root / "d.txt").unlink()
    (root / "b" / ".DS_Store").write_text("extra")
    assert build.check_eval(root) == ["a.json", "b/.DS_Store", "d.txt"]
    r = run_main(build.main, "--check")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(err) == 1 and "a.json, b/.DS_Store, d.txt differ" in err[0], err
