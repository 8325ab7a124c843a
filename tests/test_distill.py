"""distill.py: the loss against a direct computation, only V_c and A_s learn, going on from a student
whose LLM learns (the teacher's stays put), exact resume, DDP (2 CPU processes) = 1 process, a student
folder evaluate.py runs, one-line errors.

    python -m pytest tests/test_distill.py -q      (CPU, a random tiny teacher in the released layout)
"""
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import compress as C
import distill as D
import model as M
import posttrain as P
from data import synth
from tokenizer import load_tokenizer
from conftest import run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_args(teacher_dir, out, *extra):
    return ["--teacher", teacher_dir, "--out", out, "--steps", "4", "--micro-batch", "2", "--max-num", "2",
            "--save-every", "2", "--warmup", "1", "--threads", "1", "--fastv-layer", "1", "--eval-task", "", *extra]


def run(*argv, procs=1):
    """distill.py's command line: in this process, or under torchrun with `procs` processes."""
    if procs == 1:
        return run_main(D.main, *argv)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
                           os.path.join(ROOT, "distill.py"), *argv], capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.mark.parametrize("with_rationale,method", [(0, "select"), (1, "select"), (3, "select"), (0, "pool")])
def test_loss_equals_two_separate_forward_passes(teacher_dir, with_rationale, method):
    """Shared ViT + logits at the answers only = two full, independent forward passes and a textbook KL;
    an answer with a rationale is learnt by CE alone (the teacher never wrote rationales)."""
    teacher, tok = M.load_model(teacher_dir), load_tokenizer(teacher_dir)
    student = C.make_student(teacher, method, 0.5)
    with torch.no_grad():
        for p in student.compressor.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg = D.parse_args(train_args(teacher_dir, "unused"))
    convs = [P.conversation_at(i, cfg) for i in range(3)]
    if with_rationale:
        cot = replace(cfg, p_transcribe=0, p_qa=0, p_reason=1, cot_frac=1)
        cots = (c for c in (P.conversation_at(i, cot) for i in range(50)) if D.has_rationale(c))
        for i in (1, 0, 2)[:with_rationale]:  # the middle one, or all three: then no teacher forward at all
            convs[i] = next(cots)
    batch = D.pair_collate(teacher)(convs, tok, student, cfg)
    n = batch["n_labels"]
    T, lam = 2.0, 0.3
    loss, m = D.make_loss(teacher, T, lam)(student, dict(batch, n_labels_global=n))
    full = P.collate(convs, tok, teacher, cfg)  # every conversation, with the teacher's image tokens
    with torch.no_grad():
        t = teacher(full["pixel_values"], full["input_ids"], full["attention_mask"])
        s = student(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    rows = (batch["labels"][:, 1:] != -100).nonzero()[:, 0]  # each answer token's conversation
    t = t[:, :-1][full["labels"][:, 1:] != -100]
    s = s[:, :-1][batch["labels"][:, 1:] != -100]
    p, q = (t / T).softmax(-1), (s / T).softmax(-1)
    kl = (p * (p.log() - q.log())).sum(-1) * T * T
    ce = F.cross_entropy(s, batch["labels"][:, 1:][batch["labels"][:, 1:] != -100], reduction="none")
    own = torch.tensor([D.has_rationale(c) for c in convs])[rows]
    assert len(t) == len(s) == n and own.sum() == sum((batch["labels"][i] != -100).sum() for i in (1, 0, 2)[:with_rationale])
    assert len(batch.get("teacher_ids", [])) == 3 - with_rationale  # the teacher reads only what it has targets for
    want = kl[~own].sum() + lam * ce[~own].sum() + ce[own].sum()
    assert loss.item() == pytest.approx((want / n).item(), rel=1e-4)
    assert m["kl"] == pytest.approx((kl[~own].sum() / n).item(), rel=1e-4)
    assert m["ce"] == pytest.approx((ce.sum() / n).item(), rel=1e-4)


def test_only_compressor_and_projector_learn_and_the_student_evaluates(teacher_dir, tmp_path):
    out = str(tmp_path / "student")
    r = run(*train_args(teacher_dir, out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.load(open(os.path.join(out, "config.json")))["compressor"] == {"method": "select", "ratio": 0.5}
    before, after = load_file(os.path.join(teacher_dir, "model.safetensors")), load_file(os.path.join(out, "model.safetensors"))
    fresh = C.build(M.load_model(out, build_compressor=C.build).config).state_dict()
    assert set(after) == set(before) | {"compressor." + k for k in fresh}
    for k in before:
        same = torch.equal(before[k].float(), after[k].float())
        assert same != k.startswith("mlp1."), k  # the ViT and LLM are the teacher's, A_s moved
    assert not torch.equal(after["compressor.fc2.weight"].float(), fresh["fc2.weight"])  # V_c learnt
    ckpt = load_file(os.path.join(out, "checkpoint", "model.safetensors"))
    assert all(k.startswith(("mlp1.", "compressor.")) for k in ckpt)  # checkpoints skip the frozen parts
    log = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    assert len(log) == 4 and all({"kl", "ce", "agree"} <= set(x) for x in log)
    tokens = []
    for name, folder in (("student", out), ("teacher", teacher_dir)):  # evaluate.py loads the student as it is
        r = run_main(D.E.main, "--task", "docvqa", "--model", folder, "--limit", "2", "--max-new-tokens", "3",
                     "--out", tmp_path / f"{name}.jsonl")
        assert r.returncode == 0, r.stderr[-2000:]
        tokens.append(json.load(open(tmp_path / f"{name}.json"))["visual_tokens_per_image"])
    assert tokens[0] == tokens[1] / 2
    rows = D.compare(D.parse_args(train_args(teacher_dir, out, "--eval-task", "docvqa", "--eval-limit", "1")), out)
    flops = {r["name"].split()[0]: r["llm_prefill_gflops"] for r in rows}  # the student's prompts are pool's
    assert flops["FCoT"] == flops["pool"] < flops["FastV"] < flops["teacher"]
    table = open(os.path.join(out, "results.md")).read()
    assert "| LLM prefill FLOPs vs teacher |" in table and table.splitlines()[2].startswith("| teacher | ") \
        and " | 1.00x | " in table.splitlines()[2], table
    assert "| anls, held-out family | % of teacher |" in table.splitlines()[0]  # each row on the held-out pages too
    for r in rows:
        assert r["heldout"]["data"].startswith(os.path.join(ROOT, "data", "eval-heldout", "docvqa")), r["heldout"]["data"]
        line = next(ln for ln in table.splitlines() if ln.startswith(f"| {r['name']} |"))
        share = 100 * r["heldout"]["score"] / max(rows[0]["heldout"]["score"], 1e-9)
        assert line.endswith(f"| {r['heldout']['score']:.1f} | {share:.1f}% |"), line
        assert r["data"] != r["heldout"]["data"]


def test_going_on_from_a_student_whose_llm_learns(teacher_dir, tmp_path):
    """--student starts from that folder's V_c and A_s; with llm trainable the student's LLM is a copy that
    learns while the teacher's (the KL's targets) stays put; the ViT is the teacher's throughout."""
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    assert run(*train_args(teacher_dir, first)).returncode == 0
    cfg = D.parse_args(train_args(teacher_dir, "unused", "--student", first))
    teacher, tok = M.load_model(teacher_dir), load_tokenizer(teacher_dir)
    student = D.start_student(cfg, teacher, "cpu", torch.float32, own_llm=True)
    saved = load_file(os.path.join(first, "model.safetensors"))
    assert torch.equal(student.compressor.fc1.weight, saved["compressor.fc1.weight"].float())
    assert student.vision_model is teacher.vision_model and student.language_model is not teacher.language_model
    llm_before = {k: v.clone() for k, v in teacher.language_model.state_dict().items()}
    convs = [P.conversation_at(i, cfg) for i in range(2)]
    batch = D.pair_collate(teacher)(convs, tok, student, cfg)
    loss, _ = D.make_loss(teacher, 1.0, 0.5)(student, dict(batch, n_labels_global=batch["n_labels"]))
    loss.backward()
    with torch.no_grad():
        for p in student.language_model.parameters():
            p -= 0.1 * p.grad
    assert all(torch.equal(v, teacher.language_model.state_dict()[k]) for k, v in llm_before.items())
    assert not torch.equal(student.language_model.output.weight, teacher.language_model.output.weight)

    r = run(*train_args(teacher_dir, second, "--student", first, "--trainable", "compressor,projector,llm", "--steps", "2"))
    assert r.returncode == 0, r.stderr[-2000:]
    t, s = load_file(os.path.join(teacher_dir, "model.safetensors")), load_file(os.path.join(second, "model.safetensors"))
    assert all(torch.equal(t[k], s[k]) for k in t if k.startswith("vision_model."))
    assert any(not torch.equal(t[k].float(), s[k].float()) for k in t if k.startswith("language_model."))
    cfg = D.parse_args(train_args(teacher_dir, "unused", "--student", second))
    again = D.start_student(cfg, teacher, "cpu", torch.float32, own_llm=False)  # its own LLM, not the teacher's
    assert all(torch.equal(v, s["language_model." + k].float()) for k, v in again.language_model.state_dict().items())
    cfg = D.parse_args(train_args(teacher_dir, "unused", "--student", first, "--skip-thumbnail"))
    on = D.start_student(cfg, teacher, "cpu", torch.float32, own_llm=False)  # the option, for a student without it
    assert on.compressor.skip_thumbnail and on.config.compressor["skip_thumbnail"] and not cfg.eval_limit
    assert not on.compressor.rank_projected
    M.save_model(on, str(tmp_path / "on"))  # a student with one option gets the other: both stay on
    cfg = D.parse_args(train_args(teacher_dir, "unused", "--student", str(tmp_path / "on"), "--rank-projected"))
    both = D.start_student(cfg, teacher, "cpu", torch.float32, own_llm=False)
    assert both.config.compressor == {"method": "select", "ratio": 0.5, "skip_thumbnail": True, "rank_projected": True}
    assert both.compressor.skip_thumbnail and both.compressor.rank_projected
    r = run(*train_args(teacher_dir, str(tmp_path / "x"), "--student", first, "--ratio", "0.25"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr[-2000:]
    assert "pass its --compressor and --ratio" in r.stderr


def test_resume_is_exact(teacher_dir, tmp_path):
    straight, cut = str(tmp_path / "straight"), str(tmp_path / "cut")
    assert run(*train_args(teacher_dir, straight)).returncode == 0
    assert run(*train_args(teacher_dir, cut, "--stop-at", "2")).returncode == 0
    r = run(*train_args(teacher_dir, cut, "--resume"))
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = load_file(os.path.join(straight, "model.safetensors")), load_file(os.path.join(cut, "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_two_processes_equal_one(teacher_dir, tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    r = run(*train_args(teacher_dir, one, "--steps", "2"))
    assert r.returncode == 0, r.stderr[-2000:]
    r = run(*train_args(teacher_dir, two, "--steps", "2", "--micro-batch", "1"), procs=2)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_file(os.path.join(one, "model.safetensors")), load_file(os.path.join(two, "model.safetensors"))
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-2  # bf16 on disk: one ulp
    la, lb = ([json.loads(line)["loss"] for line in open(os.path.join(d, "log.jsonl"))] for d in (one, two))
    assert la == pytest.approx(lb, abs=1e-5)


@pytest.mark.parametrize("flags, words", [
    (["--ratio", "0.3"], "invalid ratio 0.3"),
    (["--compressor", "tome"], "unknown compressor 'tome'"),
    (["--eval-task", "mmmu"], "--eval-task mmmu"),
    (["--eval-task", "docvqa", "--eval-heldout", "/nonexistent"], "--eval-heldout /nonexistent has no docvqa/ set"),
    (["--eval-task", "docvqa", "--eval-data", "x.json", "--eval-heldout", "/x"], "drop --eval-heldout"),
    (["--fastv-layer", "5"], "FastV layer K=5"),
    (["--teacher", "/nonexistent"], "/nonexistent does not exist"),
    (["--trainable", "vision,projector"], "distillation trains compressor, projector and, optionally, llm"),
    (["--compressor", "pool", "--skip-thumbnail"], "skip_thumbnail is an option of select"),
    (["--compressor", "pool", "--rank-projected"], "rank_projected is an option of select"),
    (["--budget", "auto", "--compressor", "pool"], "--budget auto is select's"),
    (["--budget", "auto", "--ratio-range", "0.5"], "--ratio-range 0.5: give two shares"),
    (["--budget", "auto", "--ratio-range", "0.6,1"], "need 0 < LO <= ratio <= HI <= 1"),
    (["--budget", "some"], "--budget"),
    (["--ratio-range", "0.25,1"], "are --budget auto's"),
    (["--budget", "auto", "--trainable", "compressor,projector"], "this student's A_s is V_c's own"),
    (["--budget", "auto", "--ratio-range", "0.96,1", "--ratio", "0.97"], "pass a lower LO"),
    (["--budget", "auto", "--ratio", "0.125", "--eval-task", "docvqa"], "calibrated for mean shares 0.15 to 0.95"),
])
def test_bad_input_is_one_line(teacher_dir, tmp_path, flags, words):
    r = run(*train_args(teacher_dir, str(tmp_path / "x")), *flags)  # the last of a repeated flag wins
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, lines[-20:]
    assert lines[0].startswith("distill.py: error:") and words in lines[0], lines[0]


def test_bad_inputs_that_need_a_folder_are_one_line(teacher_dir, tmp_path):
    """A teacher passed as --student, and a comparison set without answers: refused before any training."""
    test_set = tmp_path / "test" / "test_v1.0.json"
    test_set.parent.mkdir()
    synth.make_sample("doc", 0)["image"].save(tmp_path / "test" / "d.png")
    test_set.write_text(json.dumps(dict(dataset_name="docvqa", dataset_split="test", data=[
        dict(questionId=1, question="What is the title?", image="d.png", docId=0)])))
    for flags, words in ((["--student", teacher_dir], "has no compressor"),
                         (["--eval-task", "docvqa", "--eval-data", str(test_set)], "has questions without answers")):
        r = run(*train_args(teacher_dir, str(tmp_path / "x")), *flags)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and words in lines[0], (flags, r.stderr[-2000:])
    assert not os.path.exists(tmp_path / "x" / "model.safetensors")


# ----------------------------------------------------------------------------- one student for every ratio

def test_the_pool_row_is_kept_where_its_windows_tile_the_grid():
    assert D.pool_fits(0.5, 2) and D.pool_fits(0.25, 16) and D.pool_fits(1 / 3, 3)
    assert not D.pool_fits(0.2, 16) and not D.pool_fits(0.3, 16) and not D.pool_fits(1.0, 16)


def test_ratio_draw_is_in_range_log_uniform_and_a_function_of_the_batch():
    convs = [[{"conversations": [{"from": "human", "value": f"q{i}"}]}] for i in range(2000)]
    draws = [D.draw_ratio(c, 0.125, 1) for c in convs]
    assert all(0.125 <= r <= 1 for r in draws) and draws == [D.draw_ratio(c, 0.125, 1) for c in convs]
    halves = [sum(lo <= r < 2 * lo for r in draws) for lo in (0.125, 0.25, 0.5)]  # each halving about a third
    assert all(560 < h < 780 for h in halves), halves


def test_a_ranged_student_batch_keeps_the_drawn_share_and_its_loss_runs(teacher_dir):
    """pair_collate with a range: the student's prompt holds round(r x n) tokens per tile for the batch's drawn r,
    the teacher's all of them; the loss passes the tiles, so the student keeps exactly what its prompt holds."""
    teacher, tok = M.load_model(teacher_dir), load_tokenizer(teacher_dir)
    student = C.make_student(teacher, "select", 0.5, ratio_range=(0.25, 1))
    cfg = D.parse_args(train_args(teacher_dir, "unused", "--budget", "auto", "--ratio-range", "0.25,1"))
    per_tile = teacher.num_image_token
    seen = set()
    for first in range(0, 12, 3):
        convs = [P.conversation_at(i, cfg) for i in range(first, first + 3)]
        batch = D.pair_collate(teacher, (0.25, 1))(convs, tok, student, cfg)
        want = max(1, round(D.draw_ratio(convs, 0.25, 1) * per_tile))
        n_img = int((batch["input_ids"] == student.img_context_token_id).sum())
        assert n_img == sum(batch["num_tiles"]) * want
        assert int((batch["teacher_ids"] == teacher.img_context_token_id).sum()) == sum(batch["num_tiles"]) * per_tile
        loss, _ = D.make_loss(teacher, 1.0, 0.5)(student, dict(batch, n_labels_global=batch["n_labels"]))
        assert torch.isfinite(loss)
        seen.add(want)
    assert len(seen) > 1  # the share changes from batch to batch


def test_budget_auto_trains_calibrates_and_evaluates(teacher_dir, tmp_path):
    """--budget auto: one student with a range and thresholds calibrated on training images; evaluate.py runs it at
    any ratio in the range and by content, and refuses a ratio outside it or a fixed student at another ratio."""
    out = str(tmp_path / "any")
    r = run(*train_args(teacher_dir, out, "--budget", "auto", "--calibration-images", "6"))
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.load(open(os.path.join(out, "config.json")))["compressor"]
    assert record["ratio_range"] == [0.125, 1.0] and record["ratio"] == 0.5 and "budget" not in record
    assert record["gated"]  # its own A_s learnt inside V_c; the model's mlp1 stays the teacher's
    got, teacher = (load_file(os.path.join(d, "model.safetensors")) for d in (out, teacher_dir))
    assert all(torch.equal(got[k], t) for k, t in teacher.items() if k.startswith("mlp1."))
    assert not torch.equal(got["compressor.projector.1.weight"], teacher["mlp1.1.weight"])
    shares = [s for s, _ in record["thresholds"]]
    assert shares == [s for s in C.THRESHOLD_SHARES if s > 0.125]
    assert all(a >= b for (_, a), (_, b) in zip(record["thresholds"], record["thresholds"][1:]))  # falls with the share

    def evaluate(*flags, folder=out):
        name = "_".join((os.path.basename(folder),) + flags)
        r = run_main(D.E.main, "--task", "docvqa", "--model", folder, "--limit", "3", "--max-new-tokens", "2",
                   "--max-num", "2", "--out", tmp_path / f"{name}.jsonl", *flags)
        return r, (json.load(open(tmp_path / f"{name}.json")) if r.returncode == 0 else None)
    full = evaluate(folder=teacher_dir)[1]["visual_tokens_per_image"]
    for ratio in ("0.25", "0.75"):
        r, res = evaluate("--ratio", ratio)
        assert r.returncode == 0, r.stderr[-2000:]
        assert res["visual_tokens_per_image"] == pytest.approx(float(ratio) * full, abs=0.1)  # rounded to 0.1
    r, res = evaluate("--budget", "auto", "--ratio", "0.5")
    assert r.returncode == 0, r.stderr[-2000:]
    assert res["visual_tokens_per_image"] != pytest.approx(0.5 * full, abs=0.1)  # by content: not what 0.5 keeps
    saved = str(tmp_path / "saved")  # a record saved by content ("budget": "auto") runs as --budget asks: fixed
    M.save_model(C.set_budget(M.load_model(out, build_compressor=C.build), 0.5, auto=True), saved, tokenizer_dir=out)
    assert json.load(open(os.path.join(saved, "config.json")))["compressor"]["budget"] == "auto"
    for flags in ((), ("--ratio", "0.5")):
        r2, fixed_run = evaluate(*flags, folder=saved)
        assert r2.returncode == 0, r2.stderr[-2000:]
        assert fixed_run["visual_tokens_per_image"] == pytest.approx(0.5 * full, abs=0.1), flags
    spread = res["visual_tokens_spread"]
    assert spread["min"] <= res["visual_tokens_per_image"] <= spread["max"] <= full
    recs = [json.loads(line) for line in open(tmp_path / "any_--budget_auto_--ratio_0.5.jsonl")][1:]
    assert sum(x["image_tokens"] for x in recs) / len(recs) == pytest.approx(res["visual_tokens_per_image"], abs=0.1)
    fixed = str(tmp_path / "fixed")
    assert run(*train_args(teacher_dir, fixed, "--steps", "1")).returncode == 0
    for flags, folder, words in ((("--ratio", "0.05"), out, "outside the range"),
                                 (("--ratio", "0.25"), fixed, "keeps 0.5 of the tokens only"),
                                 (("--budget", "auto"), fixed, "keeps 0.5 of the tokens only"),
                                 (("--ratio", "0.5"), teacher_dir, "is not compressed"),
                                 (("--budget", "auto"), teacher_dir, "needs a student of distill.py --budget auto"),
                                 (("--budget", "auto", "--method", "pool", "--ratio", "0.5"), out, "drop --method")):
        r, _ = evaluate(*flags, folder=folder)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and words in lines[0], (flags, r.stderr[-2000:])


@pytest.mark.parametrize("more, row", [([], "FCoT stage I (select 0.5)"),
                                       (["--trainable", "compressor,projector,llm"], "FCoT stage I+II (select 0.5)")])
def test_the_comparison_names_the_stage_it_trained(teacher_dir, tmp_path, monkeypatch, more, row):
    """A run whose LLM learns too (stage II, --student's usual run) is stage I+II in its table, not stage I."""
    ran = dict(score=50.0, metric="anls", visual_tokens_per_image=16.0, llm_prefill_gflops=1.0)
    monkeypatch.setattr(D.E, "load_model", lambda cfg: type("Model", (), {"num_image_token": 16})())
    monkeypatch.setattr(D, "load_tokenizer", lambda folder: None)
    monkeypatch.setattr(D.E, "evaluate", lambda model, tok, task, /, **settings: dict(ran, out=settings["out"]))
    cfg = D.parse_args(train_args(teacher_dir, str(tmp_path), *more, "--eval-task", "docvqa", "--eval-heldout", ""))
    D.compare(cfg, str(tmp_path))
    rows = [line.split(" | ")[0][2:] for line in open(tmp_path / "results.md").read().splitlines()[2:]]
    assert rows[-1] == row and rows[0] == "teacher"
