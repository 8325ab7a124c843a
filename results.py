"""
The FCoT-VL results table. For each ratio: stage I (distill.py), three stage-II runs that go on from the
stage-I student with its LLM learning too (distill.py --student): (a) and (c) with chain-of-thought, 30% and
20% of the conversations reasoning questions answered as rationale + final answer, learnt by CE alone, the
rest distilled from the teacher; (b), the run without it, distilled on the teacher's answers alone. Then the
average of the two chain-of-thought runs (merge.py), and every row on every task (evaluate.py): teacher; the
training-free baselines (baselines.py) pool, FastV, untrained select, DivPrune, random (the mean of seeds 0, 1 and 2,
each a row of results.json), fewer tiles, VisionZip, PyramidDrop; stage I, stage I+II (a), (b) and (c), and
stage I+II+merge. Beside them, select's one student for every ratio (distill.py --budget auto, --any-steps) at
--any-ratios, and with its budget by content at the thresholds calibrated for --auto-shares: the
accuracy-against-tokens curve of score_vs_tokens.png. Every row is evaluated twice: on the shipped sets and on the
held-out family's (--heldout, data/eval-heldout: fonts, layouts and phrasings the teacher never trained on).

    python results.py --jobs 2 --threads 1     # embedded teacher, ratios 0.5 0.25, all five tasks (2-core CPU: about 115 min)
    python results.py --quick --threads 1      # smoke run into runs/results-quick: 4 steps, 4 tiles, 4 questions a task
    python results.py --table-only             # table, JSON and plot again from OUT/eval/, no training
    python results.py --teacher /models/InternVL2-2B --device cuda --micro-batch 2 --distill-steps 2000 --distill-lr 1e-4 \
        --stage2-steps 2000 --cot-steps 2000 --stage2-lr 2e-5 --distill-args "--data pairs.jsonl --image-root /data" \
        --stage2-args "--data cot.jsonl --image-root /data --grad-checkpointing"
    python -m pytest tests/test_results.py -q

Each step is a function call (distill.run, merge.merge, evaluate.evaluate) in a child process;
--distill-args and --stage2-args are parsed by distill.py and win over results.py's settings but for a
run's folder and shape (--out, --micro-batch, --warmup, --max-num, --threads, --device, --resume).

Under --out (runs/results): r<ratio>/{stage1,stage2-a,stage2-b,stage2-c,merged}/, any/, eval/<row>/<task>.jsonl and .json
(the held-out family's: heldout-<task>, and heldout-docvqa-reworded), results.md, results.json, score_vs_tokens.png and
score_vs_tokens_heldout.png. Each step records its settings and inputs beside its folder (<folder>.inputs.json): a
finished model made from the same is skipped, one made from others is refused (delete it to redo the step), one with
only checkpoint/ gets --resume; an evaluation whose settings, weights and data have not changed is skipped: after a
kill, the same command continues. --table-only takes the evaluations' own settings (FastV's K, --limit, ...) from
those records, and refuses others. Runs (a), (c) and the merge are asked with the CoT prompt (only the final answer
is scored), the others with the direct one. Columns: visual tokens per image (fewer tiles: those its tiles made);
per LLM layer, where FastV and PyramidDrop drop them inside the LLM: its layers' mean; the LLM's prefill FLOPs (counted,
not timed: at the tiny model's size wall-clock prefill is the ViT's and noise; mean of per-task ratios) and
peak memory (each row's evaluations run in one process) relative to the teacher;
each task's score in its unit (OCRBench: hits); avg, the mean over tasks with OCRBench as percent;
reasoning, the mean over tasks of the reasoning questions' score; held-out avg, avg on the held-out family, whose
scores per task follow in a second table. Under them, per ratio: what training adds,
the best trained row minus the strongest training-free row (each by avg, of the rows with every task evaluated), and
stage I minus untrained select, and the one student minus the stage-I student of the ratio, in points averaged over
the tasks with a 95% bootstrap interval, paired over the main set's questions (results.json also has each task's),
on the shipped sets and, for the same two rows, the held-out family's; then, for each budget by content, each task's
score and visual tokens as shares of the teacher's, on both.
"""
import collections, functools, glob, hashlib, json, math, multiprocessing, os, shlex, sys, time
from dataclasses import asdict, dataclass, replace

import cli
import evaluate as E
import metrics

HERE = os.path.dirname(os.path.abspath(__file__))
TASKS = ("docvqa", "chartqa", "infovqa", "textvqa", "ocrbench")
HELDOUT = "heldout-"  # an evaluation on the held-out family's set is named heldout-<task>
PLOT_SIZE = (900, 520)


@dataclass
class Config:
    teacher: str = os.path.join(HERE, "checkpoints", "tiny")  # the uncompressed model's folder
    out: str = "runs/results"  # everything goes here
    ratios: tuple = (0.5, 0.25)  # shares of visual tokens kept
    tasks: tuple = TASKS  # evaluation tasks
    heldout: str = E.HELDOUT_SETS  # the held-out family's sets: every row on them too ('': not)
    compressor: str = "select"  # V_c: select | pool
    distill_steps: int = 300  # stage I steps
    distill_lr: float = 1e-3  # stage I lr (V_c and A_s)
    stage2_steps: int = 300  # steps of stage-II run (b)
    cot_steps: int = 1000  # steps of stage-II runs (a) and (c): rationales take longer to learn than answers (README)
    stage2_lr: float = 5e-4  # stage II lr of V_c and A_s
    stage2_lr_llm: float = 1.5e-4  # stage II lr of the LLM (5e-4 lost 4 DocVQA points of a select student at 0.5)
    micro_batch: int = 8  # conversations per training step
    warmup: int = 20  # warmup steps of each run
    max_num: int = 0  # tiles in training and evaluation (0: the model's / the task protocol's)
    distill_args: str = ""  # more distill.py flags for stage I, e.g. "--data pairs.jsonl --grad-checkpointing"
    stage2_args: str = ""  # more distill.py flags for the stage-II runs
    fastv_layer: int = 2  # K of the FastV baseline
    any_steps: int = 600  # steps of the one student for every ratio: the two per-ratio stage-I students' together
    any_ratios: tuple = (0.125, 0.25, 0.3, 0.5, 0.75, 1.0)  # the one student for every ratio, evaluated at these
    auto_shares: tuple = (0.2, 0.3, 0.4, 0.5)  # and with the budget by content, at thresholds calibrated to these
    limit: int = 0  # first N questions per task (0: all)
    max_new_tokens: int = 0  # answer length in evaluation (0: the task protocol's)
    batch_size: int = 8  # evaluation batch size
    threads: int = 0  # CPU threads per process (0: each script's default)
    jobs: int = 1  # ratios trained, and rows evaluated, side by side (a 2-core CPU does most as --jobs 2 --threads 1)
    device: str = ""  # cpu | cuda ('': cuda if available)
    quick: bool = False  # smoke preset (flags left at their default): 4 steps, micro-batch 2, 4 tiles, --limit 4,
                         # --out runs/results-quick
    table_only: bool = False  # only rebuild table, JSON and plot from OUT/eval/


QUICK = dict(distill_steps=4, any_steps=4, stage2_steps=4, cot_steps=4, micro_batch=2, warmup=1, max_num=4, limit=4,
             out="runs/results-quick")  # a folder of its own: its students are not the real run's
# the stage-II runs: their samples apart from stage I's (seed offset 5e8) and from each other's. cot: the mix holds
# reasoning questions answered with a rationale, so the run is asked with the CoT prompt; merge: averaged into the final
# model. (a) and (c) are two such mixes; (b) keeps distillation's own, the comparison without CoT (an average with it
# answers as (b) does: README)
STAGE2 = {"a": dict(seed_offset=610_000_000, cot=True, merge=True, mix=dict(p_transcribe=0.3, p_qa=0.4, p_reason=0.3,
                                                                            cot_frac=1.0)),
          "b": dict(seed_offset=700_000_000, cot=False, merge=False, mix={}),
          "c": dict(seed_offset=620_000_000, cot=True, merge=True, mix=dict(p_transcribe=0.35, p_qa=0.45, p_reason=0.2,
                                                                            cot_frac=1.0))}
MERGED = [k for k, s in STAGE2.items() if s["merge"]]
# the training-free baselines: evaluate.py's --method -> the row's family (random: a row per seed, reported as the mean)
BASELINES = {"pool": "pool", "fastv": "FastV", "select": "untrained select", "divprune": "DivPrune", "random": "random",
             "tiles": "fewer tiles", "visionzip": "VisionZip", "pdrop": "PyramidDrop"}
SEEDS = (0, 1, 2)
ANY, AUTO = "one student, every ratio", "budget by content"
FAMILIES = {"teacher": (0, 0, 0), "pool": (31, 119, 180), "FastV": (255, 127, 14), "untrained select": (127, 127, 127),
            "DivPrune": (188, 189, 34), "random": (23, 190, 207), "fewer tiles": (174, 199, 232),
            "VisionZip": (255, 187, 120), "PyramidDrop": (152, 223, 138), "stage I": (44, 160, 44),
            "stage I+II (a)": (214, 39, 40), "stage I+II (b)": (140, 86, 75), "stage I+II (c)": (227, 119, 194),
            "stage I+II+merge": (148, 103, 189), ANY: (0, 100, 0), AUTO: (0, 0, 128)}


def parse_args(argv=None):
    pos = (0, float("inf"))  # the numbers reach distill.py and evaluate.py late, after hours of training: checked now
    cfg = cli.parse(Config, argv, "results.py", __doc__, ratios=(0, 1), any_ratios=(0, 1), auto_shares=(0, 1),
                    distill_steps=1, any_steps=1, stage2_steps=1, cot_steps=1,
                    micro_batch=1, warmup=0, max_num=(-1, cli.MAX_TILES), fastv_layer=1, limit=0, max_new_tokens=0,
                    batch_size=1, threads=0,
                    jobs=1, distill_lr=pos, stage2_lr=pos, stage2_lr_llm=pos)
    for k, v in QUICK.items() if cfg.quick else ():
        setattr(cfg, k, v if getattr(cfg, k) == getattr(Config, k) else getattr(cfg, k))
    if set(cfg.tasks) - set(TASKS):
        raise cli.Error(f"--tasks: choose from {' '.join(TASKS)}")
    import distill, compress, model  # the ratios, the one student's range, the calibrated shares: checked now
    try:
        teacher_config = model.config_from_dict(model.read_json(os.path.join(cfg.teacher, "config.json"))) \
            if finished(cfg.teacher) else None
    except model.ModelLoadError as e:
        raise cli.Error(f"--teacher {cfg.teacher}: {e}") from None
    side = compress.token_grid(teacher_config) if teacher_config else 16  # InternVL2's 448 px tiles
    for r in cfg.ratios:  # a ratio the students cannot keep fails now, not after the other ratios' training
        try:
            compress.window_for(r, side, side)
        except compress.CompressError as e:
            raise cli.Error(f"--ratios: {e}") from None
    lo, hi = distill.ratio_range(distill.DistillConfig())
    if not all(lo <= r <= hi for r in cfg.any_ratios):
        raise cli.Error(f"--any-ratios must lie in {lo:g}..{hi:g}, the one student's range")
    shares = compress.calibrated_shares(lo)
    for share in cfg.auto_shares:
        try:
            compress.check_calibrated(share, shares)
        except compress.CompressError as e:
            raise cli.Error(f"--auto-shares: {e}") from None
    if cfg.heldout and (missing := [d for _, d in sets(cfg).values() if d and not os.path.exists(d)]):
        raise cli.Error(f"--heldout {cfg.heldout} lacks {missing[0]}; python data/build.py --heldout-family writes "
                        "the held-out sets, or pass --heldout '' to evaluate on the shipped sets only")
    cfg.out, cfg.teacher = os.path.abspath(cfg.out), os.path.abspath(cfg.teacher)
    cfg.heldout = cfg.heldout and os.path.abspath(cfg.heldout)
    return cfg


def finished(folder):
    return os.path.isfile(os.path.join(folder, "config.json")) and bool(glob.glob(os.path.join(folder, "model*.safetensors")))


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def fork(fn, what):
    """fn() in a forked child -> its pid. The child's exit code is fn's return value (None: 0), a SystemExit's
    code, 2 after printing a cli.Error as one line, or 1 after printing another exception as one line starting with
    `what`."""
    if (pid := os.fork()) == 0:
        rc = 1
        try:
            rc = cli.run_main("results.py", fn)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except Exception as e:
            sys.stderr.write(f"{what}: {type(e).__name__}: {e}\n")  # one write: siblings' lines stay whole
        finally:
            sys.stdout.flush(), sys.stderr.flush(), os._exit(rc)
    return pid


def child(fn, threads):
    import torch
    torch.set_num_threads(threads or torch.get_num_threads())
    sys.exit(fn() or 0)


def step(what, fn, threads=0, fresh=False, detail=""):
    """fn() in a child process, its output streamed: forked (the parent only imports torch, never computes: a child's
    peak memory, evaluate's, is its own), or with `fresh` a new interpreter (CUDA does not survive a fork). A failure
    stops all with one line."""
    print(f"\n== {what}" + (f": {detail}" if detail else ""), flush=True)
    if fresh:
        p = multiprocessing.get_context("spawn").Process(target=child, args=(fn, threads))
        p.start()
        p.join()
        rc = p.exitcode
    else:
        rc = os.waitstatus_to_exitcode(os.waitpid(fork(functools.partial(child, fn, threads), what), 0)[1])
    if rc:
        raise cli.Error(f"{what} failed (exit {rc}); fix it and rerun the same command to continue")


def run_distill(settings, flags):
    """distill.py's run of `settings` (DistillConfig fields) and the user's flags, which win over them but for the
    run's folder and its shape (out, micro_batch, warmup, max_num, threads, device, resume)."""
    import distill as D
    shape = ("out", "micro_batch", "warmup", "max_num", "threads", "device", "resume")
    fixed, defaults = ({k: v for k, v in settings.items() if (k in shape) == want} for want in (True, False))
    return cli.run_main("distill.py", lambda: D.run(replace(D.parse_args(shlex.split(flags), **defaults), **fixed)),
                        D.M.ModelLoadError, D.C.CompressError)


def known_inputs(record):
    """A record's inputs ({name: identity}), whose digests are reused while their files' stamps hold; {} for no record,
    or one of an older results.py."""
    return record["inputs"] if isinstance(record, dict) and isinstance(record.get("inputs"), dict) else {}


def identities(folders, known):
    """{name: evaluate.model_identity of folder} (sha256 of config, weights and tokenizer), `known`'s reused."""
    return {k: E.model_identity(d, known.get(k)) for k, d in folders.items()}


def same(old, new):
    """Whether two records (settings, and inputs with their sha256) say the same thing was made: paths and stamps
    aside, so a moved folder or a fresh checkout of the same bytes is the same step."""
    key = lambda r: [r["settings"], {k: v["sha256"] for k, v in r["inputs"].items()}]
    try:
        return key(old) == key(new)
    except (KeyError, TypeError, AttributeError):  # no record, or one of an older results.py
        return False


def differences(old, new):
    """What differs between two records, in words."""
    if not known_inputs(old):
        return "no record of the settings it was made with (an older results.py kept none)"
    a, b = old.get("settings", {}), new["settings"]
    words = [f"{k} {a.get(k)!r}, not {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    words += [f"another {k}'s weights" for k in sorted(set(old["inputs"]) | set(new["inputs"]))
              if (old["inputs"].get(k) or {}).get("sha256") != (new["inputs"].get(k) or {}).get("sha256")]
    return ", ".join(words)


def recorded(what, out, settings, inputs):
    """Whether the step that makes folder `out` from `settings` (JSON) and `inputs` ({name: model folder}) is done.
    out + '.inputs.json' records what a step started with; a finished folder, or a checkpoint, made from anything
    else is refused, not reused."""
    side = out + ".inputs.json"
    old = load(side) if os.path.isfile(side) else None
    new = dict(settings=json.loads(json.dumps(settings)), inputs=identities(inputs, known_inputs(old)))
    started = finished(out) or os.path.isdir(os.path.join(out, "checkpoint"))
    if started and not same(old, new) and (old is not None or finished(out)):
        raise cli.Error(f"{what}: {out} was made with {differences(old, new)}; delete it to redo the step (and the "
                        "steps that go on from it), or pass another --out")
    if old != new:  # new stamps of the same bytes are kept, so the digests are not computed again
        os.makedirs(os.path.dirname(side), exist_ok=True)
        cli.write_text(side, json.dumps(new))
    return finished(out)


def train(cfg, what, out, flags, **settings):
    settings.update(out=out, micro_batch=cfg.micro_batch, warmup=cfg.warmup, max_num=cfg.max_num, threads=cfg.threads,
                    **({"device": cfg.device} if cfg.device else {}))
    # not what the student learns: where it goes, how it runs, FastV's K (distill.py's comparison, off here); the
    # teacher and student folders are compared by content, not by path
    aside = ("out", "teacher", "student", "threads", "device", "fastv_layer")
    if recorded(what, out, dict({k: v for k, v in settings.items() if k not in aside}, flags=flags),
                {k: settings[k] for k in ("teacher", "student") if k in settings}):
        return print(f"== {what}: done in {out}, skipped")
    settings["resume"] = os.path.isdir(os.path.join(out, "checkpoint"))  # distill.py refuses another run's checkpoint
    shown = ", ".join(f"{k}={v!r}" for k, v in settings.items())
    step(what, functools.partial(run_distill, settings, flags), cfg.threads, not on_cpu(cfg),
         f"distill.py with {shown}" + (f" and {flags}" if flags else ""))


def on_cpu(cfg):
    import torch
    return (cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu"


def side_by_side(fns, jobs):
    """Call each fn in a forked child, at most `jobs` at a time (jobs 1: in order, in this process). A
    failing child has printed its one line; the others finish, no new one starts, and this exits with its code."""
    if jobs <= 1:
        return [fn() for fn in fns]
    todo, running, failed = list(fns), set(), 0
    while running or (todo and not failed):
        while todo and not failed and len(running) < jobs:
            running.add(fork(todo.pop(0), "results.py: error"))
        pid, status = os.wait()
        running.discard(pid)
        failed = failed or os.waitstatus_to_exitcode(status)
    if failed:
        sys.exit(failed)


def run_pipeline(cfg):
    ranged = [functools.partial(any_pipeline, cfg)] if cfg.compressor == "select" else []  # select's alone
    side_by_side([functools.partial(ratio_pipeline, cfg, r) for r in cfg.ratios] + ranged, cfg.jobs)


def any_pipeline(cfg):
    """One stage-I student for every ratio (distill.py --budget auto), as long as each per-ratio one trains."""
    train(cfg, "stage I, one student for every ratio", os.path.join(cfg.out, "any"), cfg.distill_args,
          teacher=cfg.teacher, ratio=0.5, budget="auto", compressor=cfg.compressor, eval_task="",
          fastv_layer=cfg.fastv_layer, steps=cfg.any_steps, lr=cfg.distill_lr, trainable="compressor")  # its own A_s


def ratio_pipeline(cfg, r):
    d = os.path.join(cfg.out, f"r{r:g}")
    shared = dict(teacher=cfg.teacher, ratio=r, compressor=cfg.compressor, eval_task="", fastv_layer=cfg.fastv_layer)
    train(cfg, f"stage I {r:g}", os.path.join(d, "stage1"), cfg.distill_args, **shared, steps=cfg.distill_steps,
          lr=cfg.distill_lr)
    import distill as D  # its own parser reads --stage2-args as the runs will (--data=F, an abbreviated --dat F)
    from_file = bool(D.parse_args(shlex.split(cfg.stage2_args)).data)
    for k, s in STAGE2.items():
        # a run's mix and seeds shape synthetic conversations; with --data the file's are used (distill.py refuses both)
        synthetic = {} if from_file else dict(seed_offset=s["seed_offset"], **s["mix"])
        train(cfg, f"stage II-{k} {r:g}", os.path.join(d, f"stage2-{k}"), cfg.stage2_args, **shared,
              student=os.path.join(d, "stage1"), trainable="compressor,projector,llm",
              steps=cfg.cot_steps if s["cot"] else cfg.stage2_steps, lr=cfg.stage2_lr, lr_llm=cfg.stage2_lr_llm,
              **synthetic)
    merged, parts = os.path.join(d, "merged"), [os.path.join(d, f"stage2-{k}") for k in MERGED]
    if not recorded(f"merge {r:g}", merged, {}, {f"stage2-{k}": p for k, p in zip(MERGED, parts)}):
        import merge
        step(f"merge {r:g}: {' + '.join(f'stage2-{k}' for k in MERGED)} -> {merged}",
             functools.partial(merge.merge, parts, merged), fresh=not on_cpu(cfg))


Row = collections.namedtuple("Row", "key family ratio model method cot seed budget", defaults=(False, None, None))


def rows(cfg):
    """Every evaluated row: its key, family, ratio (a budget by content: the mean share its threshold was calibrated
    for), model folder, evaluate.py's method, whether it is asked with the CoT prompt, random's seed, and the one
    student's budget (fixed or auto)."""
    out = [Row("teacher", "teacher", 1.0, cfg.teacher, "none")]
    for r in cfg.ratios:
        d = os.path.join(cfg.out, f"r{r:g}")
        for method, family in BASELINES.items():
            out += [Row(f"random-seed{s}-r{r:g}", family, r, cfg.teacher, method, seed=s) for s in SEEDS] \
                if method == "random" else [Row(f"{method}-r{r:g}", family, r, cfg.teacher, method)]
        out += [Row(f"stage1-r{r:g}", "stage I", r, os.path.join(d, "stage1"), "none"),
                *[Row(f"stage2-{k}-r{r:g}", f"stage I+II ({k})", r, os.path.join(d, f"stage2-{k}"), "none", s["cot"])
                  for k, s in STAGE2.items()],
                Row(f"merged-r{r:g}", "stage I+II+merge", r, os.path.join(d, "merged"), "none",
                    any(STAGE2[k]["cot"] for k in MERGED))]
    if cfg.compressor == "select":  # the one student for every ratio: select's ranking does not depend on it
        any_dir = os.path.join(cfg.out, "any")
        out += [Row(f"any-r{r:g}", ANY, r, any_dir, "none", budget="fixed") for r in cfg.any_ratios]
        out += [Row(f"auto-s{s:g}", AUTO, s, any_dir, "none", budget="auto") for s in cfg.auto_shares]
    return out


def sets(cfg):
    """{name: (task, annotation)} of a row's evaluations: each task's shipped set (evaluate.py's default), then its
    held-out family set, heldout-<task>, and the held-out DocVQA pages with reworded questions."""
    out = {t: (t, None) for t in cfg.tasks}
    if cfg.heldout:
        out.update({HELDOUT + t: (t, os.path.join(cfg.heldout, t)) for t in cfg.tasks})
        if "docvqa" in cfg.tasks:
            out[HELDOUT + "docvqa-reworded"] = ("docvqa", os.path.join(cfg.heldout, "docvqa", "val_reworded.json"))
    return out


def table_keys(cfg):
    """The table's rows: every evaluated row, but random's seeds are one row, random-r<ratio>, their mean."""
    keys = [f"random-r{row.ratio:g}" if row.seed is not None else row.key for row in rows(cfg)]
    return list(dict.fromkeys(keys))


def data_identity(task, data, known=None):
    """{sha256 of every file beside a set's annotation (its folder's, or the file's folder's), files: their stamps
    and digests}: a rebuilt set, or new images, is another evaluation. `known`'s digests are reused while stamps hold."""
    root = data if data and os.path.isdir(data) else os.path.dirname(data) if data else os.path.join(HERE, "data",
                                                                                                     "eval", task)
    files = E.image_identity(sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs),
                             (known or {}).get("files"))
    listing = sorted((os.path.relpath(p, root), v[-1]) for p, v in files.items())
    return dict(sha256=hashlib.sha256(json.dumps(listing).encode()).hexdigest(), files=files)


WHERE = ("out", "model", "data")  # an evaluation's paths: what they hold is compared instead (inputs)


def compared(settings):
    """An evaluation's settings as its record compares them: without its paths."""
    return {k: v for k, v in settings.items() if k not in WHERE}


def eval_settings(cfg):
    """(row key, model folder, set name, evaluate.py's settings) of every row's every set."""
    for key, _, r, folder, method, cot, seed, budget in rows(cfg):
        for set_name, (task, data) in sets(cfg).items():
            yield key, folder, set_name, dict(
                task=task, **({"data": data} if data else {}), model=folder, method=method,
                ratio=r if method != "none" or budget else None, **({"budget": budget} if budget else {}),
                **({"fastv_layer": cfg.fastv_layer} if method == "fastv" else {}), batch_size=cfg.batch_size,
                out=os.path.join(cfg.out, "eval", key, set_name + ".jsonl"), cot=cot,
                **{k: getattr(cfg, k) for k in ("limit", "max_num", "max_new_tokens", "device") if getattr(cfg, k)},
                **({"seed": seed} if seed is not None else {}))


def evaluate_rows(cfg):
    """A row's sets in one child process (--jobs of them at a time). A set is skipped when its .json exists and its
    settings, model and data (sha256, cached by stamps) are those its .inputs.json records; otherwise evaluate.py
    resumes its predictions where its run key allows (it starts a file of another model, data or settings afresh)."""
    import torch, model, compress  # once, in the parent: only imports happen before the forks
    todo, models, data = {}, {}, {}  # row key -> the settings of its sets to evaluate; identities, each made once
    for key, folder, set_name, settings in eval_settings(cfg):
        edir = os.path.join(cfg.out, "eval", key)
        side = os.path.join(edir, set_name + ".inputs.json")
        old = load(side) if os.path.isfile(side) else None
        known = known_inputs(old)
        if folder not in models:  # a 16 GB teacher is read once, not once per row and set
            models[folder] = E.model_identity(folder, known.get("model"))
        if set_name not in data:
            data[set_name] = data_identity(settings["task"], settings.get("data"), known.get("data"))
        new = json.loads(json.dumps(dict(settings=compared(settings),
                                         inputs=dict(model=models[folder], data=data[set_name]))))
        done = same(old, new) and os.path.isfile(os.path.join(edir, set_name + ".json"))
        if not done and os.path.exists(os.path.join(edir, set_name + ".json")):
            os.remove(os.path.join(edir, set_name + ".json"))
        if old != new:  # new stamps of the same bytes are kept, so the digests are not computed again
            os.makedirs(edir, exist_ok=True)
            cli.write_text(side, json.dumps(new))
        if not done:
            todo.setdefault(key, []).append(settings)
    side_by_side([functools.partial(step, f"evaluate {key}", functools.partial(evaluate_row, sets_), cfg.threads,
                                    fresh=not on_cpu(cfg)) for key, sets_ in todo.items()], cfg.jobs)


def evaluate_row(todo):
    """One row's evaluations (`todo`: each set's EvalConfig fields): the row's model, loaded once."""
    def run():
        first = E.EvalConfig(**todo[0])
        model, tok = E.load_model(first), E.load_tokenizer(first)
        for settings in todo:
            E.evaluate(model, tok, settings["task"], **settings)
    return cli.run_main("evaluate.py", run)


def mean(xs):
    return sum(xs) / len(xs) if xs else None


def figures(cfg, ev):
    """A row's figures from its evaluations `ev` ({set: evaluate.py's summary}) on one family's sets: scores of
    each, the rest of the tasks' own sets (the held-out family's reworded DocVQA is a score beside them)."""
    main = [ev[t] for t in cfg.tasks if t in ev]
    per_layer = [e.get("visual_tokens_layer_mean") for e in main]  # FastV, PyramidDrop: inside the LLM
    return dict(eval=ev, complete=len(main) == len(cfg.tasks), scores={t: e["score"] for t, e in ev.items()},
                average=mean([e["score"] * (100 / e["n"] if e["metric"] == "ocrbench" else 1) for e in main]),
                reasoning=mean([e["reasoning"]["score"] for e in main if e.get("reasoning")]),
                visual_tokens=mean([e["visual_tokens_per_image"] for e in main]),
                visual_tokens_layer_mean=None if None in per_layer else mean(per_layer),
                visual_tokens_spread={t: e.get("visual_tokens_spread") for t, e in ev.items()})


def seed_mean(seeds, more=()):
    """random's figures: each the mean of its seeds' (None where one lacks it); scores, of the sets all have."""
    out = dict(eval={}, complete=all(x["complete"] for x in seeds),
               scores={t: mean([x["scores"][t] for x in seeds]) for t in seeds[0]["scores"]
                       if all(t in x["scores"] for x in seeds)})
    out.update({k: None if None in (v := [x[k] for x in seeds]) else mean(v) for k in
                ("average", "reasoning", "visual_tokens", "visual_tokens_layer_mean", *more)})
    return out


def summarise(cfg):
    """-> ({key: row}, the table's row keys, {ratio: the merged stage-II run with the best average}). A row's figures
    are on the shipped sets; under "heldout", the same on the held-out family's (its reworded DocVQA beside them, out
    of the average)."""
    res = {}
    for key, fam, r, folder, method, _, seed, _ in rows(cfg):
        done = {n: load(p) for n in sets(cfg) if os.path.isfile(p := os.path.join(cfg.out, "eval", key, n + ".json"))}
        held = {n[len(HELDOUT):]: e for n, e in done.items() if n.startswith(HELDOUT)}
        res[key] = dict(key=key, family=fam, ratio=r, model=folder, method=method, seed=seed,
                        **figures(cfg, {t: done[t] for t in cfg.tasks if t in done}),
                        heldout=figures(cfg, held) if cfg.heldout else None)
    t, peak = res["teacher"]["eval"], lambda ev: max(e["peak_memory_mb"] for e in ev.values())
    for x in res.values():
        x["flops_vs_teacher"] = mean([e["llm_prefill_gflops"] / t[k]["llm_prefill_gflops"]
                                      for k, e in x["eval"].items() if k in t and t[k]["llm_prefill_gflops"]])
        x["memory_vs_teacher"] = peak(x["eval"]) / peak(t) if x["eval"] and t else None
    for r in cfg.ratios:  # random's reported row
        seeds = [res[f"random-seed{s}-r{r:g}"] for s in SEEDS]
        row = dict(key=f"random-r{r:g}", family="random", ratio=r, model=cfg.teacher, method="random",
                   seeds=[x["key"] for x in seeds], **seed_mean(seeds, ("flops_vs_teacher", "memory_vs_teacher")),
                   heldout=seed_mean([x["heldout"] for x in seeds]) if cfg.heldout else None)
        res[row["key"]] = row
    best = {r: max([f"stage2-{k}-r{r:g}" for k in MERGED], key=lambda k: -1 if res[k]["average"] is None else res[k]["average"])
            for r in cfg.ratios}  # what the merge must at least match
    return res, table_keys(cfg), best


@functools.lru_cache(maxsize=None)
def main_items(task, ann, n):
    """evaluate.prepare's main set of annotation `ann`: its first n questions (--limit cuts from the front; a shipped
    reasoning.json's questions come after them and are scored apart)."""
    return E.TASKS[task].read(ann, ann if os.path.isdir(ann) else os.path.dirname(ann))[:n]


def question_scores(cfg, key, task, prefix=""):
    """{qid: (stratum, score)} of row `key`'s main-set questions on `task` (prefix HELDOUT: its held-out family set),
    each as evaluate.score_items scores it, in points (0..100; an OCRBench hit is 100): the task's score is their mean,
    chartqa's the mean of its splits' means (its stratum: the split; the other tasks': the task). random-r<ratio>: the
    mean of its seeds'. None if the row lacks the evaluation, or its annotation or predictions are gone."""
    if key.startswith("random-r"):
        seeds = [question_scores(cfg, f"random-seed{s}-{key[7:]}", task, prefix) for s in SEEDS]
        return None if None in seeds else {q: (s, sum(x[q][1] for x in seeds) / len(seeds))
                                           for q, (s, _) in seeds[0].items() if all(q in x for x in seeds)}
    base = os.path.join(cfg.out, "eval", key, prefix + task)
    if not os.path.isfile(base + ".json") or (e := load(base + ".json")).get("score") is None:
        return None
    try:
        items, done = main_items(task, e["data"], e["n"]), E.load_done(base + ".jsonl", repair=False)[1]
    except cli.Error:
        return None
    if any(str(it["qid"]) not in done for it in items):
        return None
    score = lambda it: 100 * E.item_score(E.TASKS[task].metric, E.final_answer(done[str(it["qid"])]["answer"]), it)
    return {str(it["qid"]): (it["extra"].get("split", task), score(it)) for it in items}


def paired_scores(cfg, a, b, task, prefix=""):
    """(strata, a's scores, b's scores) over the main-set questions of `task` that both rows answered, in one order;
    None if either lacks the evaluation."""
    sa, sb = question_scores(cfg, a, task, prefix), question_scores(cfg, b, task, prefix)
    qs = [q for q in sa or () if q in (sb or ())]
    return ([sa[q][0] for q in qs], [sa[q][1] for q in qs], [sb[q][1] for q in qs]) if qs else None


def gain(cfg, a, b, prefix=""):
    """Row a minus row b in points, paired over questions, with 95% bootstrap intervals (metrics.paired_bootstrap):
    averaged over the tasks and per task, on the shipped sets (prefix '') or the held-out family's (HELDOUT); None
    unless both rows have every task's evaluation there."""
    def ci(sa, sb, w, strata):
        diff, low, high = metrics.paired_bootstrap(sa, sb, weights=w, strata=strata)
        return dict(diff=diff, low=low, high=high, n=len(sa))
    per, pooled = {}, ([], [], [], [])  # every task's questions: a's and b's scores, weights, strata
    for t in cfg.tasks:
        if (p := paired_scores(cfg, a, b, t, prefix)) is None:
            return None
        strata, sa, sb = p
        # a question weighs 1 / (its task's strata x its stratum's questions): the weighted mean of a task's questions
        # is its score (chartqa's: the mean of its two splits'), and each task's questions weigh 1 together, so pooled
        # every task counts equally whatever its size, as in the avg column. Questions are resampled within their
        # task and split (the strata), so each task keeps its weight in every resample.
        count = collections.Counter(strata)
        w = [1 / (len(count) * count[s]) for s in strata]
        per[t] = ci(sa, sb, w, strata)
        for acc, xs in zip(pooled, (sa, sb, w, [f"{t}/{s}" for s in strata])):
            acc += xs
    return dict(a=a, b=b, **ci(*pooled), tasks=per)


def gains(cfg, res):
    """{ratio: the best trained row vs the strongest training-free row (each by avg on the shipped sets, of the rows
    with every task evaluated), stage I vs untrained select, and the one student vs stage I}: gain()'s, None where a
    row lacks an evaluation; each with the same two rows' gain on the held-out family's sets under "heldout" (the
    rows are picked on the shipped sets: no gain there, none held out)."""
    out = {}
    for r in cfg.ratios:
        top = lambda keys: max((k for k in keys if res[k]["complete"]), key=lambda k: res[k]["average"], default=None)
        trained = top([f"stage1-r{r:g}", *[f"stage2-{k}-r{r:g}" for k in STAGE2], f"merged-r{r:g}"])
        free = top([k for k in table_keys(cfg) if res[k]["family"] in BASELINES.values() and res[k]["ratio"] == r])
        out[f"{r:g}"] = dict(trained_vs_training_free=gain(cfg, trained, free) if trained and free else None,
                             stage1_vs_select=gain(cfg, f"stage1-r{r:g}", f"select-r{r:g}"),
                             one_student_vs_stage1=gain(cfg, f"any-r{r:g}", f"stage1-r{r:g}")
                             if f"any-r{r:g}" in res else None)
        for g in out[f"{r:g}"].values():
            if g is not None and cfg.heldout:
                g["heldout"] = gain(cfg, g["a"], g["b"], HELDOUT)
    return out


def name(cfg, x):
    return x["family"] + (f" (K={cfg.fastv_layer})" if x["family"] == "FastV" else
                          f" (mean of seeds {', '.join(map(str, SEEDS))})" if x["family"] == "random" else "")


def fmt(x, f="{:.1f}"):
    return "-" if x is None else f.format(x)


def markdown(cfg, res, table, best, gain_of):
    head = ["row", "ratio", "visual tokens / image", "per LLM layer", "LLM prefill FLOPs vs teacher",
            "peak memory vs teacher", *cfg.tasks, "avg", *["held-out avg"] * bool(cfg.heldout), "reasoning"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for x in map(res.get, table):
        per_layer = "" if x["method"] not in ("fastv", "pdrop") else fmt(x["visual_tokens_layer_mean"], "{:.0f}")
        cells = [name(cfg, x), f"{x['ratio']:g}", fmt(x["visual_tokens"], "{:.0f}"), per_layer,
                 fmt(x["flops_vs_teacher"], "{:.2f}x"), fmt(x["memory_vs_teacher"], "{:.2f}x"),
                 *[fmt(x["scores"].get(t)) for t in cfg.tasks], fmt(x["average"]),
                 *([fmt(x["heldout"]["average"])] if cfg.heldout else []), fmt(x["reasoning"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if cfg.heldout:  # the same rows on the held-out family's sets: fonts, layouts and phrasings never trained on
        held = [n[len(HELDOUT):] for n in sets(cfg) if n.startswith(HELDOUT)]
        head = ["row (held-out family)", "ratio", *held, "avg"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for x in map(res.get, table):
            lines.append("| " + " | ".join([name(cfg, x), f"{x['ratio']:g}", *[fmt(x["heldout"]["scores"].get(t))
                                                                               for t in held],
                                            fmt(x["heldout"]["average"])]) + " |")
        lines.append("")
    d = lambda a, b, k: fmt(None if a[k] is None or b[k] is None else a[k] - b[k], "{:+.1f}")
    vs = lambda a, b, name: f"{name}: avg {d(a, b, 'average')}, reasoning {d(a, b, 'reasoning')}"
    for r in cfg.ratios:
        s1, mg, top = res[f"stage1-r{r:g}"], res[f"merged-r{r:g}"], res[best[r]]
        parts = [vs(res[f"stage2-{k}-r{r:g}"], s1, f"stage I+II ({k}) vs stage I") for k in STAGE2]
        parts.append(vs(mg, top, f"merge vs the better run it averages ({best[r].split('-')[1]})"))
        lines.append(f"- ratio {r:g}: " + "; ".join(parts))
    for r in cfg.ratios:
        for what, g in zip(("best trained vs strongest training-free row, by avg", "stage I vs untrained select",
                            "one student for every ratio vs the stage-I student of this ratio"),
                           gain_of[f"{r:g}"].values()):
            if g is None:
                lines.append(f"- ratio {r:g}: {what}: - (not every task evaluated for both rows)")
                continue
            pair = f"{name(cfg, res[g['a']])} vs {name(cfg, res[g['b']])}"
            h = g.get("heldout")
            lines.append(f"- ratio {r:g}: {pair}{'' if pair == what else f' ({what})'}: {g['diff']:+.1f} points "
                         f"(95% CI {g['low']:+.1f}..{g['high']:+.1f}) averaged over the {len(cfg.tasks)} tasks"
                         + (f"; held-out family: {h['diff']:+.1f} ({h['low']:+.1f}..{h['high']:+.1f})" if h else
                            "; held-out family: - (not every task evaluated for both rows)" if cfg.heldout else ""))
    share = lambda a, b: "-" if not b else f"{100 * a / b:.1f}%"
    for where, get in (("", lambda x: x), (" (held-out family)", lambda x: x["heldout"]))[:1 + bool(cfg.heldout)]:
        teacher = get(res["teacher"])
        for k in (k for k in table if res[k]["family"] == AUTO and get(res[k])["complete"] and teacher["complete"]):
            x = get(res[k])
            kept = [100 * x["eval"][t]["visual_tokens_per_image"] / teacher["eval"][t]["visual_tokens_per_image"]
                    for t in cfg.tasks]
            lines.append(f"- {AUTO}{where}, threshold for a mean share of {res[k]['ratio']:g} on the training images: "
                         + ", ".join(f"{t} {share(x['scores'][t], teacher['scores'][t])} of the teacher's score "
                                     f"with {n:.0f}% of its visual tokens" for t, n in zip(cfg.tasks, kept)))
    return "\n".join(lines) + "\n"


def plot(cfg, res, table, path, heldout=False):
    """Average score against visual tokens per image (FastV, PyramidDrop: per LLM layer), a colour per family, on the
    shipped sets or the held-out family's; PIL only."""
    from PIL import Image, ImageDraw, ImageFont
    (W, H), font = PLOT_SIZE, ImageFont.load_default()
    L, R, T, B = 80, W - 230, 40, H - 70
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    tokens = lambda x: x["visual_tokens"] if x["visual_tokens_layer_mean"] is None else x["visual_tokens_layer_mean"]
    on = (lambda k: res[k]["heldout"]) if heldout else (lambda k: res[k])
    pts = {f: sorted((tokens(on(k)), on(k)["average"]) for k in table
                     if res[k]["family"] == f and on(k)["average"] is not None) for f in FAMILIES}

    def axis(hi):  # a round upper bound and its ticks, steps of 1, 2 or 5 x 10^k
        mag = 10 ** math.floor(math.log10(max(hi, 1.0) / 5))
        s = next(s * mag for s in (1, 2, 5, 10) if max(hi, 1.0) / (s * mag) <= 6)
        return s * math.ceil(max(hi, 1.0) / s), [i * s for i in range(math.ceil(max(hi, 1.0) / s) + 1)]
    (xmax, xt), (ymax, yt) = (axis(max((v[i] for p in pts.values() for v in p), default=1)) for i in (0, 1))
    sx, sy = (lambda x: L + (R - L) * x / xmax), (lambda y: B - (B - T) * y / ymax)
    d.line([(L, T), (L, B), (R, B)], fill="black")
    for x in xt:
        d.line([(sx(x), B), (sx(x), B + 5)], fill="black")
        d.text((sx(x), B + 8), f"{x:g}", fill="black", font=font, anchor="ma")
    for y in yt:
        d.line([(L - 5, sy(y)), (L if y == 0 else R, sy(y))], fill="black" if y == 0 else (225, 225, 225))
        d.text((L - 8, sy(y)), f"{y:g}", fill="black", font=font, anchor="rm")
    d.text(((L + R) / 2, H - 30), "visual tokens per image (FastV, PyramidDrop: the mean over LLM layers)",
           fill="black", font=font, anchor="ma")
    d.text(((L + R) / 2, 12), f"average score vs visual tokens ({', '.join(cfg.tasks)}"
           + (", held-out family)" if heldout else ")"), fill="black", font=font, anchor="ma")
    label = Image.new("RGB", (240, 14), "white")
    ImageDraw.Draw(label).text((120, 7), "average score over tasks", fill="black", font=font, anchor="mm")
    img.paste(label.rotate(90, expand=True), (12, (T + B) // 2 - 120))
    for i, (f, colour) in enumerate(FAMILIES.items()):
        p = [(sx(x), sy(y)) for x, y in pts[f]]
        d.line(p, fill=colour, width=2) if len(p) > 1 else None
        for x, y in p:
            d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        d.rectangle([R + 20, T + 20 * i, R + 34, T + 20 * i + 12], fill=colour)
        d.text((R + 42, T + 20 * i + 6), f, fill="black", font=font, anchor="lm")
    img.save(path + ".tmp", format="PNG")
    os.replace(path + ".tmp", path)


EVAL_FLAGS = ("limit", "max_num", "max_new_tokens", "batch_size", "device", "fastv_layer")  # evaluate.py's settings


TRAINING = ("distill_steps", "distill_lr", "stage2_steps", "cot_steps", "stage2_lr", "stage2_lr_llm", "micro_batch",
            "warmup", "distill_args", "stage2_args", "any_steps")  # flags that only train: --table-only uses none


def trained_with(cfg):
    """{run folder under OUT: the settings its training step recorded (<folder>.inputs.json)}: what the rows are."""
    sides = glob.glob(os.path.join(cfg.out, "*.inputs.json")) + glob.glob(os.path.join(cfg.out, "r*", "*.inputs.json"))
    return {os.path.relpath(side[:-len(".inputs.json")], cfg.out): load(side)["settings"] for side in sorted(sides)}


def recorded_settings(cfg):
    """--table-only: the evaluation flags left at their default take the values the evaluations were made with (the
    table names FastV's K, results.json the limit); a flag given otherwise, or rows evaluated with mixed settings, are
    refused."""
    def every(cfg):
        return {(key, name): compared(settings) for key, _, name, settings in eval_settings(cfg)}
    old = {}
    for (key, name), now in every(cfg).items():
        side = os.path.join(cfg.out, "eval", key, name + ".inputs.json")
        if os.path.isfile(side):  # an older results.py kept paths, and FastV's K on every row: not compared
            old[key, name] = {k: v for k, v in compared(load(side)["settings"]).items()
                              if k != "fastv_layer" or now["method"] == "fastv"}
    first = {}
    for rec in old.values():
        first.update({k: rec.get(k, getattr(Config, k)) for k in EVAL_FLAGS
                      if k != "fastv_layer" or (rec["method"] == "fastv" and k not in first)})
    for k, v in first.items():
        if getattr(cfg, k) not in (getattr(Config, k), v):
            raise cli.Error(f"--table-only --{k.replace('_', '-')} {getattr(cfg, k)}: the evaluations in {cfg.out}/eval "
                            f"were made with {v!r}; drop the flag, or run without --table-only to evaluate again")
        setattr(cfg, k, v)
    now = every(cfg)
    for (key, name), rec in old.items():
        if rec != now[key, name]:
            differ = ", ".join(f"{k} {rec.get(k)!r}" for k in sorted(set(rec) | set(now[key, name]))
                               if rec.get(k) != now[key, name].get(k))
            raise cli.Error(f"--table-only: eval/{key}/{name} was evaluated with {differ}, unlike the other rows; "
                            "run without --table-only to evaluate it again")


def run(cfg):
    t0 = time.time()
    if not cfg.table_only:
        if not finished(cfg.teacher):
            raise cli.Error(f"--teacher {cfg.teacher} holds no model (config.json + model*.safetensors)")
        run_pipeline(cfg)
        evaluate_rows(cfg)
    else:
        recorded_settings(cfg)
    if not os.path.isdir(os.path.join(cfg.out, "eval", "teacher")):
        raise cli.Error(f"no teacher evaluation in {cfg.out}/eval: run without --table-only first")
    if cfg.heldout and not glob.glob(os.path.join(cfg.out, "eval", "teacher", HELDOUT + "*.json")):
        raise cli.Error(f"no held-out evaluation in {cfg.out}/eval: run without --table-only first, or pass --heldout ''")
    res, table, best = summarise(cfg)
    gain_of = gains(cfg, res)
    md = markdown(cfg, res, table, best, gain_of)
    cli.write_text(os.path.join(cfg.out, "results.md"), md)
    config = asdict(cfg) | ({k: None for k in TRAINING} if cfg.table_only else {})  # not this call's flags: the runs'
    cli.write_json(os.path.join(cfg.out, "results.json"), dict(
        config=config, trained_with=trained_with(cfg), table=table, stage2_best={f"{r:g}": k for r, k in best.items()},
        gains=gain_of, rows=res))
    plot(cfg, res, table, os.path.join(cfg.out, "score_vs_tokens.png"))
    if cfg.heldout:
        plot(cfg, res, table, os.path.join(cfg.out, "score_vs_tokens_heldout.png"), heldout=True)
    print("\n" + md + f"\n-> {cfg.out}/results.md, results.json, score_vs_tokens*.png ({time.time() - t0:.0f} s)")


def main(argv=None):
    sys.exit(cli.run_main("results.py", lambda: run(parse_args(argv))))


if __name__ == "__main__":
    main()
