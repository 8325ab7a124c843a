"""results.py: the whole pipeline (stage I, three stage-II runs, merge, every row on two tasks) on a random
tiny teacher with 2-step runs; every row and task in the JSON, token counts r x the teacher's, random's row the mean
of its seeds', the merge is the average of the CoT runs, the plot opens, a rerun is a no-op, --table-only, resume of a
cut run, one-line errors; and, on hand-made evaluation folders, the gains' paired intervals.

    OMP_NUM_THREADS=1 python -m pytest tests/test_results.py -q      (CPU, about a minute)
"""
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import results as R

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATIOS, TASKS = (0.5, 0.25), ("docvqa", "ocrbench")
BASELINES = ("pool", "fastv", "select", "divprune", "random-seed0", "random-seed1", "random-seed2", "tiles", "visionzip",
             "pdrop")
TRAINED = ("stage1", "stage2-a", "stage2-b", "stage2-c", "merged")
ANY = [f"any-r{r:g}" for r in RATIOS] + ["auto-s0.5"]  # the one student for every ratio, and its budget by content
KEYS = ["teacher"] + [f"{k}-r{r:g}" for r in RATIOS for k in BASELINES + TRAINED] + ANY  # every evaluated row
TABLE = ["teacher"] + [f"{k}-r{r:g}" for r in RATIOS for k in BASELINES[:4] + ("random",) + BASELINES[7:] + TRAINED] \
    + ANY


def args(teacher_dir, out, *extra):
    return ["--teacher", teacher_dir, "--out", out, "--ratios", *map(str, RATIOS), "--tasks", *TASKS,
            "--distill-steps", "2", "--any-steps", "2", "--stage2-steps", "2", "--cot-steps", "2", "--micro-batch", "1", "--warmup", "1",
            "--max-num", "2", "--limit", "2", "--max-new-tokens", "4", "--batch-size", "2", "--threads", "1",
            "--fastv-layer", "1", "--device", "cpu", "--any-ratios", *map(str, RATIOS), "--auto-shares", "0.5", *extra]


def run(*argv):
    t = time.time()
    p = subprocess.run([sys.executable, os.path.join(ROOT, "results.py"), *argv], capture_output=True, text=True,
                       cwd=ROOT, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return p, time.time() - t


@pytest.fixture(scope="module")
def first(teacher_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("results"))
    p, dt = run(*args(teacher_dir, out, "--jobs", "2"))  # the later runs, one job, must find nothing to redo
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out, p, dt


def snapshot(out):
    """path -> mtime of every file the pipeline made, but the outputs rebuilt on each run."""
    return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs
            if f not in ("results.md", "results.json", "score_vs_tokens.png", "score_vs_tokens_heldout.png")}


def test_every_row_and_task(first):
    out, p, _ = first
    res = json.load(open(os.path.join(out, "results.json")))
    keys = KEYS
    assert sorted(res["rows"]) == sorted(keys + [f"random-r{r:g}" for r in RATIOS])
    for k in keys:
        row = res["rows"][k]
        assert row["complete"] and sorted(row["scores"]) == sorted(TASKS), k
        assert all(isinstance(s, (int, float)) for s in row["scores"].values())
        assert row["reasoning"] is not None and row["average"] is not None
        assert 0 < row["flops_vs_teacher"] <= 1 and row["memory_vs_teacher"] > 0  # compression never adds LLM FLOPs
        assert all(row["eval"][t]["n"] == 2 for t in TASKS)  # --limit reached evaluate.py
        held = row["heldout"]  # and every row on the held-out family's sets, its reworded DocVQA beside them
        assert held["complete"] and sorted(held["scores"]) == sorted(TASKS + ("docvqa-reworded",)), k
        assert held["average"] is not None and all(e["n"] == 2 for e in held["eval"].values())
        for name, e in held["eval"].items():
            want = os.path.join(ROOT, "data", "eval-heldout", *name.split("-reworded")[:1])
            assert e["data"].startswith(want) and e["data"].endswith("val_reworded.json") == name.endswith("reworded")
    assert res["rows"]["teacher"]["flops_vs_teacher"] == res["rows"]["teacher"]["memory_vs_teacher"] == 1.0
    assert all(res["rows"][f"pool-r{r:g}"]["flops_vs_teacher"] < 1 for r in RATIOS)
    for k in keys:  # the runs that learnt rationales, and the merge that holds them, are asked for them
        settings = json.load(open(os.path.join(out, "eval", k, "docvqa.inputs.json")))["settings"]
        assert settings["cot"] == (k.startswith(("stage2-a", "stage2-c", "merged"))), k
        assert settings.get("seed") == (int(k[11]) if k.startswith("random-seed") else None), k
    assert res["table"] == TABLE  # every row, in order; stage2_best names the better run the merge averages, its bar
    for r in RATIOS:
        best, runs = res["stage2_best"][f"{r:g}"], [f"stage2-{k}-r{r:g}" for k in "ac"]
        assert best in runs and res["rows"][best]["average"] == max(res["rows"][k]["average"] for k in runs)
    md = open(os.path.join(out, "results.md")).read()
    assert len([ln for ln in md.splitlines() if ln.startswith("| ")]) == 2 * (1 + len(TABLE))  # shipped, held-out
    assert md.count("| row (held-out family) |") == 1
    for col in (*TASKS, "avg", "held-out avg", "reasoning", "visual tokens / image", "per LLM layer", "LLM prefill FLOPs vs teacher",
                "peak memory vs teacher"):
        assert col in md.splitlines()[0]
    rows_per_ratio = 2 * len(RATIOS)  # in the shipped table and the held-out one
    assert md.count("| random (mean of seeds 0, 1, 2) |") == md.count("| PyramidDrop |") == rows_per_ratio
    assert md.count("| stage I+II (a) |") == md.count("| stage I+II (b) |") == md.count("| stage I+II (c) |") == rows_per_ratio
    assert md.count("vs stage I: avg") == 3 * len(RATIOS) and md.count("merge vs the better run it averages") == len(RATIOS)
    assert md.splitlines()[0] in p.stdout  # the table is printed
    for r in RATIOS:  # the gains' point estimates are the table's differences (their intervals: test_gains_* below)
        for g in res["gains"][f"{r:g}"].values():
            assert g["diff"] == pytest.approx(res["rows"][g["a"]]["average"] - res["rows"][g["b"]]["average"])
            held = [res["rows"][g[k]]["heldout"]["average"] for k in "ab"]
            assert g["heldout"]["diff"] == pytest.approx(held[0] - held[1])  # the same two rows, held out
    assert md.count(f"averaged over the {len(TASKS)} tasks") == md.count("; held-out family: ") == 3 * len(RATIOS)
    assert md.count("of the teacher's score with") == 2 * len(TASKS)  # the budget by content vs the teacher, twice


def test_visual_tokens_are_ratio_times_teacher(first):
    out, _, _ = first
    rows = json.load(open(os.path.join(out, "results.json")))["rows"]
    for t in TASKS:
        full = rows["teacher"]["eval"][t]["visual_tokens_per_image"]
        assert 4 <= full <= 3 * 4  # per image: 1 tile, or 2 tiles + a thumbnail; 2x2 tokens each
        for r in RATIOS:
            for k in ("pool", "select", "divprune", "random-seed1", "visionzip", *TRAINED, "any"):
                assert rows[f"{k}-r{r:g}"]["eval"][t]["visual_tokens_per_image"] == pytest.approx(r * full), (k, r)
            assert rows[f"tiles-r{r:g}"]["eval"][t]["visual_tokens_per_image"] <= full  # what its fewer tiles made
            for k in ("fastv", "pdrop"):  # inside the LLM: its input keeps every token
                assert rows[f"{k}-r{r:g}"]["eval"][t]["visual_tokens_per_image"] == full
    for r in RATIOS:
        teacher = rows["teacher"]["visual_tokens"]
        for k in ("fastv", "pdrop"):  # K = 1 of 2 layers (pdrop: its 3 stages on one layer): n, then r n
            per_layer = rows[f"{k}-r{r:g}"]["visual_tokens_layer_mean"]  # evaluate.py's: to 0.1 a task
            assert per_layer == pytest.approx((1 + r) / 2 * teacher, abs=0.05)
        assert rows[f"stage1-r{r:g}"]["visual_tokens"] == pytest.approx(r * teacher)
        assert rows[f"stage1-r{r:g}"]["visual_tokens_layer_mean"] is None


def test_random_reports_the_mean_of_its_seeds(first):
    out, _, _ = first
    rows = json.load(open(os.path.join(out, "results.json")))["rows"]
    for r in RATIOS:
        seeds = [rows[f"random-seed{s}-r{r:g}"] for s in (0, 1, 2)]
        mean = rows[f"random-r{r:g}"]
        assert mean["seeds"] == [x["key"] for x in seeds] and mean["complete"]
        for t in TASKS:
            assert mean["scores"][t] == pytest.approx(sum(x["scores"][t] for x in seeds) / 3)
        assert mean["average"] == pytest.approx(sum(x["average"] for x in seeds) / 3)
        assert mean["flops_vs_teacher"] == pytest.approx(sum(x["flops_vs_teacher"] for x in seeds) / 3)
        assert mean["heldout"]["average"] == pytest.approx(sum(x["heldout"]["average"] for x in seeds) / 3)


def test_merged_is_the_average_of_the_cot_runs(first):
    out, _, _ = first
    for r in RATIOS:
        d = os.path.join(out, f"r{r:g}")
        a, c, m = (load_file(os.path.join(d, x, "model.safetensors")) for x in ("stage2-a", "stage2-c", "merged"))
        assert sorted(a) == sorted(c) == sorted(m) and any("compressor" in k for k in m)
        assert any(not torch.equal(a[k], c[k]) for k in a)  # two different runs, or the test proves nothing
        for k in m:
            want = ((a[k].float() + c[k].float()) / 2).to(a[k].dtype)
            torch.testing.assert_close(m[k], want, rtol=0, atol=1e-6, msg=k)
        assert json.load(open(os.path.join(d, "merged", "config.json")))["compressor"]["ratio"] == r


@pytest.mark.parametrize("png", ["score_vs_tokens.png", "score_vs_tokens_heldout.png"])
def test_plot(first, png):
    out, _, _ = first
    img = Image.open(os.path.join(out, png))
    assert img.format == "PNG" and img.size == R.PLOT_SIZE
    colours = {c for _, c in img.convert("RGB").getcolors(1 << 20)}
    assert all(c in colours for c in R.FAMILIES.values())


def test_rerun_is_a_noop(first, teacher_dir):
    out, p1, dt1 = first
    before, md = snapshot(out), open(os.path.join(out, "results.md")).read()
    p, dt = run(*args(teacher_dir, out))
    assert p.returncode == 0, p.stderr[-3000:]
    assert snapshot(out) == before  # no training, merge or evaluation touched a file
    assert "== evaluate" not in p.stdout and p.stdout.count("skipped") == 4 * len(RATIOS) + 1
    assert open(os.path.join(out, "results.md")).read() == md
    assert dt < dt1 / 3, (dt, dt1)


def test_table_only(first, teacher_dir):
    out, _, _ = first
    md = open(os.path.join(out, "results.md")).read()
    for f in ("results.md", "results.json", "score_vs_tokens.png", "score_vs_tokens_heldout.png"):
        os.remove(os.path.join(out, f))
    p, _ = run("--table-only", "--out", out, "--ratios", *map(str, RATIOS), "--tasks", *TASKS,  # K, limit: recorded
               "--any-ratios", *map(str, RATIOS), "--auto-shares", "0.5")
    assert p.returncode == 0, p.stderr[-3000:]
    assert open(os.path.join(out, "results.md")).read() == md and "FastV (K=1)" in md
    res = json.load(open(os.path.join(out, "results.json")))
    assert res["config"]["limit"] == 2 and res["config"]["distill_steps"] is None  # a flag that only trains: unused
    assert res["trained_with"]["r0.5/stage1"]["steps"] == 2  # what stage I was trained with, from its record
    assert all(Image.open(os.path.join(out, f)).size == R.PLOT_SIZE
               for f in ("score_vs_tokens.png", "score_vs_tokens_heldout.png"))


def test_other_flags_are_refused_not_reused(first, teacher_dir):
    """A finished student made with other settings is not reported as this run's, nor a table under flags its
    evaluations were not made with; a --quick run has a folder of its own."""
    out, _, _ = first
    p, _ = run(*args(teacher_dir, out, "--distill-steps", "3"))
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert "stage I 0.5: " in p.stderr and "was made with steps 2, not 3; delete it" in p.stderr
    p, _ = run("--table-only", "--out", out, "--ratios", *map(str, RATIOS), "--tasks", *TASKS, "--fastv-layer", "3",
               "--any-ratios", *map(str, RATIOS), "--auto-shares", "0.5")
    assert p.returncode == 2 and "--table-only --fastv-layer 3: the evaluations in" in p.stderr
    assert "were made with 1; drop the flag" in p.stderr
    assert R.parse_args(["--quick"]).out == os.path.abspath("runs/results-quick")


def test_a_moved_run_is_the_same_run(first, teacher_dir, tmp_path):
    """Records compare settings and the bytes of the inputs, not paths or file times: a copy elsewhere (new inodes and
    times, as a move across disks or a fresh checkout gives) has nothing to redo."""
    out, _, _ = first
    moved = shutil.copytree(out, tmp_path / "moved", copy_function=shutil.copy)
    p, _ = run(*args(teacher_dir, str(moved)))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "== evaluate" not in p.stdout and p.stdout.count("skipped") == 4 * len(RATIOS) + 1


def test_a_record_of_an_older_results_py_is_refused_in_one_line(teacher_dir, tmp_path):
    out = tmp_path / "stage1"
    os.makedirs(out)
    for f in ("config.json", "model.safetensors"):
        (out / f).write_text("{}")
    json.dump(dict(settings={}, inputs=[[["model.safetensors", 1, 2.0]]]), open(str(out) + ".inputs.json", "w"))
    with pytest.raises(R.cli.Error, match="stage I 0.5: .* no record of the settings it was made with"):
        R.recorded("stage I 0.5", str(out), {}, {"teacher": teacher_dir})


def test_a_rebuilt_set_is_another_evaluation(tmp_path):
    ann = annotations(str(tmp_path))["docvqa"]
    before = R.data_identity("docvqa", ann)
    assert R.data_identity("docvqa", ann, before) == before
    json.dump(dict(data=[]), open(ann, "w"))
    assert R.data_identity("docvqa", ann, before)["sha256"] != before["sha256"]


def test_cut_run_resumes(first, teacher_dir):
    """A stage-II run killed after its checkpoint, before its final save: --resume; that row is evaluated again only
    if its weights came out other than they were."""
    out, _, _ = first
    folder = os.path.join(out, "r0.5", "stage2-b")
    scores = json.load(open(os.path.join(out, "results.json")))["rows"]["stage2-b-r0.5"]["scores"]
    os.remove(os.path.join(folder, "config.json"))
    p, _ = run(*args(teacher_dir, out))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "stage2-b', micro_batch=1" in p.stdout and "resume=True" in p.stdout
    evaluated = [ln for ln in p.stdout.splitlines() if ln.startswith("== evaluate")]
    assert evaluated in ([], ["== evaluate stage2-b-r0.5"])  # none where the resumed run wrote the same bytes
    assert json.load(open(os.path.join(out, "results.json")))["rows"]["stage2-b-r0.5"]["scores"] == scores


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_failing_step_is_one_line(teacher_dir, tmp_path, jobs):
    p, _ = run(*args(teacher_dir, str(tmp_path / "bad"), "--distill-args=--no-such-flag", "--jobs", jobs))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("results.py: error: ")]
    assert len(errors) == len(RATIOS if jobs == "2" else RATIOS[:1]), errors  # side by side, each ratio's own line
    assert all(ln.startswith("results.py: error: stage I 0.") and "failed (exit 2)" in ln for ln in errors)
    assert p.stderr.strip().splitlines()[-1] in errors
    assert not os.path.exists(tmp_path / "bad" / "eval")  # nothing evaluated after a failed pipeline


# ----------------------------------------------------------------------------- gains, on hand-made eval folders

GAIN_TASKS = ("docvqa", "chartqa", "ocrbench")
QUALITY = {"teacher": 0.9, "pool": 0.3, "select": 0.35, "divprune": 0.95, "random-seed0": 0.5, "random-seed1": 0.45,
           "random-seed2": 0.55, "stage1": 0.5, "stage2-a": 0.6, "merged": 0.8}  # chance of a right answer
# per task: (answer, a wrong answer, one partly right or right by the metric's leniency)
ANSWERS = {"docvqa": ("abcd", "zzzz", "abcx"), "chartqa": ("10", "50", "10.3"), "ocrbench": ("stop", "go", "a stop")}


def annotations(root):
    """Small annotation files of three tasks (chartqa: 3 human and 5 augmented questions, unequal splits) -> {task:
    the path evaluate.py's reader takes}."""
    Image.new("RGB", (8, 8)).save(os.path.join(root, "img.png"))
    doc = dict(data=[dict(questionId=i, question=f"q{i}", image="img.png", answers=["abcd"]) for i in range(12)])
    json.dump(doc, open(os.path.join(root, "docvqa.json"), "w"))
    for split, n in (("human", 3), ("augmented", 5)):
        json.dump([dict(imgname="img.png", query=f"{split} {i}", label="10") for i in range(n)],
                  open(os.path.join(root, f"test_{split}.json"), "w"))
    json.dump([dict(image_path="img.png", question=f"q{i}", answers=["stop"], type="Regular Text Recognition",
                    dataset_name="IIIT5K") for i in range(10)], open(os.path.join(root, "ocrbench.json"), "w"))
    return dict(docvqa=os.path.join(root, "docvqa.json"), chartqa=root, ocrbench=os.path.join(root, "ocrbench.json"))


def eval_folder(out, key, task, ann, ratio, family=""):
    """eval/<key>/<family><task>.jsonl and .json as evaluate.py writes them, the answers drawn by the row's quality."""
    import random
    import evaluate as E
    items = E.TASKS[task].read(ann, ann if os.path.isdir(ann) else os.path.dirname(ann))
    rng, task_file = random.Random(key + family + task), family + task
    right, wrong, near = ANSWERS[task]
    preds = [rng.choice([right, near]) if rng.random() < QUALITY[key.rsplit("-r", 1)[0]] else wrong for _ in items]
    os.makedirs(d := os.path.join(out, "eval", key), exist_ok=True)
    with open(os.path.join(d, task_file + ".jsonl"), "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in [dict(run={}), *[dict(qid=it["qid"], answer=a)
                                                                    for it, a in zip(items, preds)]])
    scores = E.score_items(E.TASKS[task], items, preds)
    json.dump(dict(task=task, metric=E.TASKS[task].metric, data=ann, visual_tokens_per_image=16 * ratio,
                   visual_tokens_layer_mean=None, llm_prefill_gflops=ratio, peak_memory_mb=100.0, **scores),
              open(os.path.join(d, task_file + ".json"), "w"))


@pytest.fixture(scope="module")
def gains_run(tmp_path_factory):
    """Rows at ratio 0.5 (divprune, the best by score, lacks two tasks; stage2-b, stage2-c none) and none at 0.25;
    the teacher, stage I and select on the held-out family's sets too."""
    out = str(tmp_path_factory.mktemp("gains"))
    anns = annotations(str(tmp_path_factory.mktemp("ann")))
    for key in QUALITY:
        for t in GAIN_TASKS[:1] if key == "divprune" else GAIN_TASKS:
            eval_folder(out, key if key == "teacher" else f"{key}-r0.5", t, anns[t], 1.0 if key == "teacher" else 0.5)
    for key, t in ((k, t) for k in ("stage1", "select") for t in GAIN_TASKS):
        eval_folder(out, f"{key}-r0.5", t, anns[t], 0.5, R.HELDOUT)
    for t in GAIN_TASKS:
        eval_folder(out, "teacher", t, anns[t], 1.0, R.HELDOUT)
    argv = ["--table-only", "--out", out, "--ratios", "0.5", "0.25", "--tasks", *GAIN_TASKS]
    R.run(R.parse_args(argv))
    return out, R.parse_args(argv), json.load(open(os.path.join(out, "results.json")))


def test_table_only_without_heldout_evaluations_is_one_line(tmp_path):
    """An --out evaluated before the held-out family (or with --heldout ''): --table-only says so, no blank table."""
    eval_folder(str(tmp_path), "teacher", "docvqa", annotations(str(tmp_path))["docvqa"], 1.0)
    argv = ["--table-only", "--out", str(tmp_path), "--tasks", "docvqa"]
    with pytest.raises(R.cli.Error, match="no held-out evaluation in .*--heldout ''"):
        R.run(R.parse_args(argv))
    with pytest.raises(R.cli.Error, match="no held-out evaluation"):  # a half-made folder is none either
        R.run(R.parse_args(argv + ["--heldout", os.path.join(ROOT, "data", "eval-heldout")]))


def test_table_without_the_heldout_family(gains_run):
    out, _, _ = gains_run
    cfg = R.parse_args(["--table-only", "--out", out, "--ratios", "0.5", "0.25", "--tasks", *GAIN_TASKS, "--heldout", ""])
    R.run(cfg)
    md = open(os.path.join(out, "results.md")).read()
    assert "held-out" not in md.split("\n")[0] and "row (held-out family)" not in md
    R.run(R.parse_args(["--table-only", "--out", out, "--ratios", "0.5", "0.25", "--tasks", *GAIN_TASKS]))


def test_question_scores_are_the_headline_scores(gains_run):
    out, cfg, res = gains_run
    for key, row in res["rows"].items():
        for t, e in row["eval"].items():
            qs = R.question_scores(cfg, key, t)
            splits = {s for s, _ in qs.values()}
            mean = sum(sum(x for s, x in qs.values() if s == sp) / sum(s == sp for s, _ in qs.values())
                       for sp in splits) / len(splits)  # chartqa: the mean of its splits' means
            assert len(qs) == e["n"] and mean == pytest.approx(e["score"] * (100 / e["n"] if t == "ocrbench" else 1))
            assert splits == ({"human", "augmented"} if t == "chartqa" else {t}), (key, t)
    seeds = [R.question_scores(cfg, f"random-seed{s}-r0.5", "docvqa") for s in R.SEEDS]
    for q, (_, x) in R.question_scores(cfg, "random-r0.5", "docvqa").items():  # random: the mean of its seeds'
        assert x == pytest.approx(sum(s[q][1] for s in seeds) / 3)
    assert R.question_scores(cfg, "divprune-r0.5", "chartqa") is None  # not evaluated: no pairs, no gain
    assert R.paired_scores(cfg, "stage1-r0.5", "divprune-r0.5", "ocrbench") is None
    assert R.gain(cfg, "stage1-r0.5", "divprune-r0.5") is None


def test_gains_pick_and_intervals(gains_run):
    out, cfg, res = gains_run
    rows, g = res["rows"], res["gains"]["0.5"]
    top, free = g["trained_vs_training_free"], g["stage1_vs_select"]
    trained = ["stage1-r0.5", "stage2-a-r0.5", "merged-r0.5"]  # divprune lacks tasks: not the strongest baseline
    assert top["a"] == max(trained, key=lambda k: rows[k]["average"])
    assert top["b"] == max(["pool-r0.5", "select-r0.5", "random-r0.5"], key=lambda k: rows[k]["average"])
    assert (top["a"], top["b"], free["a"], free["b"]) == ("merged-r0.5", "random-r0.5", "stage1-r0.5", "select-r0.5")
    for x in (top, free):  # every task counts equally: the difference of the avg column; per task, of the scores
        a, b = rows[x["a"]], rows[x["b"]]
        assert x["diff"] == pytest.approx(a["average"] - b["average"]) and x["low"] < x["diff"] < x["high"]
        assert x["n"] == 12 + 8 + 10
        for t, y in x["tasks"].items():
            unit = 100 / a["eval"][t]["n"] if t == "ocrbench" else 1
            assert y["diff"] == pytest.approx((a["scores"][t] - b["scores"][t]) * unit) and y["low"] <= y["high"]
        assert x["high"] - x["low"] < min(y["high"] - y["low"] for y in x["tasks"].values())  # pooling narrows
    assert res["gains"]["0.25"] == dict(trained_vs_training_free=None, stage1_vs_select=None, one_student_vs_stage1=None)
    assert g["one_student_vs_stage1"] is None  # no any-r0.5 evaluation here
    same = R.gain(cfg, "pool-r0.5", "pool-r0.5")
    assert (same["diff"], same["low"], same["high"]) == (0, 0, 0)
    md = open(os.path.join(out, "results.md")).read()
    name = lambda k: rows[k]["family"] + (" (mean of seeds 0, 1, 2)" if k.startswith("random") else "")
    assert (f"- ratio 0.5: {name(top['a'])} vs {name(top['b'])} (best trained vs strongest training-free row, by "
            f"avg): {top['diff']:+.1f} points (95% CI {top['low']:+.1f}..{top['high']:+.1f}) averaged over the 3 tasks"
            in md)
    assert f"- ratio 0.5: stage I vs untrained select: {free['diff']:+.1f} points" in md
    held = free["heldout"]  # the same pair on the held-out family's questions, drawn apart from the shipped ones
    assert held["diff"] == pytest.approx(rows["stage1-r0.5"]["heldout"]["average"] - rows["select-r0.5"]["heldout"]["average"])
    assert held["diff"] != free["diff"] and held["n"] == x["n"] and held["low"] < held["diff"] < held["high"]
    assert f"held-out family: {held['diff']:+.1f} ({held['low']:+.1f}..{held['high']:+.1f})" in md
    assert top["heldout"] is None and md.count("; held-out family: - (not every") == 1  # merged, random: not evaluated there
    assert md.count("- ratio 0.25: ") == 1 + 3 and md.count(": - (not every task evaluated for both rows)") == 5


@pytest.mark.parametrize("flags, message", [
    (["--any-ratios", "0.05"], "--any-ratios must lie in 0.125..1"),
    (["--auto-shares", "0.1"], "--auto-shares: --budget auto at 0.1: thresholds are calibrated for mean shares 0.15 to 0.95"),
])
def test_ratios_the_one_student_cannot_run_are_refused_before_training(flags, message):
    with pytest.raises(R.cli.Error, match=message):
        R.parse_args(["--table-only", *flags])


@pytest.mark.parametrize("stage2_args, synthetic", [("", True), ("--data cot.jsonl --image-root /data", False),
                                                     ("--data=cot.jsonl", False), ("--dat cot.jsonl", False)])
def test_stage2_passes_its_synthetic_mix_only_without_data(stage2_args, synthetic, monkeypatch, tmp_path):
    """STAGE2's seeds and mixes shape synthetic conversations; distill.py refuses them with --data, so a user's
    conversation file (the docstring's GPU command) gets the runs without them, and each run's settings parse."""
    import distill as D, posttrain as P
    calls = []
    monkeypatch.setattr(R, "train", lambda cfg, what, out, flags, **settings: calls.append((flags, settings)))
    monkeypatch.setattr(R, "recorded", lambda *a: True)  # no merge or evaluation here
    cfg = R.parse_args(["--out", str(tmp_path), f"--stage2-args={stage2_args}"])  # '=': a value may be one --flag
    R.ratio_pipeline(cfg, 0.5)
    stage2 = [(f, s) for f, s in calls if "student" in s]
    assert len(stage2) == len(R.STAGE2)
    for flags, settings in stage2:
        assert ("seed_offset" in settings) == synthetic
        run = D.parse_args(shlex.split(flags), **{k: v for k, v in settings.items() if k not in ("out", "resume")})
        P.check(replace(run, out=str(tmp_path / "o")))  # would raise: --seed-offset shapes the synthetic conversations
