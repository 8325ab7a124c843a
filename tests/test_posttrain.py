"""posttrain.py: conversation tokens and labels, overfitting, frozen parts, exact resume, DDP (2 CPU
processes) = 1 process, the InternVL JSONL reader and its errors, a final folder that loads and chats.

    python -m pytest tests/test_posttrain.py -q      (CPU, tiny model at 56 px)
"""
import json, os, random, shutil, subprocess, sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import cli  # noqa: E402
import model as M  # noqa: E402
import posttrain as P  # noqa: E402
from data import synth  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402
from conftest import run_main  # noqa: E402

TINY = ["--init", "tiny", "--image-size", "56", "--max-num", "2", "--warmup", "2", "--lr", "3e-3", "--threads", "1"]


def cfg_of(*argv):
    return P.parse_args([*TINY, *argv])


@pytest.fixture(scope="module")
def tiny():
    model, tok, _ = P.build_model(cfg_of(), torch.device("cpu"))
    return model, tok


def label_runs(labels):
    """Maximal runs of label tokens, as lists of ids."""
    runs, cur = [], []
    for t in labels + [-100]:
        if t != -100:
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    return runs


@pytest.mark.parametrize("task", ["transcribe", "qa", "cot", "direct"])
def test_tokens_labels_and_image_tokens(tiny, task):
    model, tok = tiny
    mix = {"transcribe": ("1", "0", "0", "0"), "qa": ("0", "1", "0", "0"), "cot": ("0", "0", "1", "1"),
           "direct": ("0", "0", "1", "0")}[task]
    cfg = cfg_of("--p-transcribe", mix[0], "--p-qa", mix[1], "--p-reason", mix[2], "--cot-frac", mix[3], "--qa-turns", "3")
    end = tok.token_to_id(M.STOP_TOKEN)
    for seed in range(4):
        conv = P.make_conversation(synth.make_sample(synth.KINDS[seed], seed), random.Random(seed), cfg)
        turns = conv["conversations"]
        qs, answers = [t["value"] for t in turns[0::2]], [t["value"] for t in turns[1::2]]
        b = P.collate([conv], tok, model, cfg)
        ids, labels = b["input_ids"][0].tolist(), b["labels"][0].tolist()
        # every answer (+ <|im_end|>) is labelled, encoded on its own, and decodes back to the text
        runs = label_runs(labels)
        assert runs == [tok.encode(a, bos=False) + [end] for a in answers]
        assert [tok.decode(r) for r in runs] == answers and b["n_labels"] == sum(map(len, runs))
        # the prompt before the first answer is exactly chat_prompt's encoding
        n_img = b["pixel_values"].shape[0] * model.num_image_token
        first = labels.index(next(t for t in labels if t != -100))
        assert ids[:first] == tok.encode(M.chat_prompt(qs[0], n_img, model.config.template))
        assert ids.count(model.img_context_token_id) == n_img and b["num_tiles"] == [b["pixel_values"].shape[0]]
        # later turns: chat_prompt's history text
        for q0, a0, q1 in zip(qs, answers, qs[1:]):
            assert M.chat_prompt(q1, None, history=[(q0, a0)]) == M.chat_prompt(q0, None) + a0 + M.STOP_TOKEN + P.next_turn_text(q1, "internlm2-chat")
        if task == "qa":
            assert all(q.endswith(P.SHORT) for q in qs) and qs[0].startswith("<image>\n")
        if task == "cot":
            r = conv["sample"]["reasoning"]
            assert len(answers) == 1 and answers[0].rsplit(P.COT_SEP, 1)[1] in [x["answer"] for x in r]
        if task == "transcribe":
            assert answers == [conv["sample"]["transcription"]]
    logits = model(b["pixel_values"], b["input_ids"], b["attention_mask"])  # the batch is what forward takes
    assert logits.shape[:2] == b["input_ids"].shape


def test_padding_and_truncation(tiny):
    model, tok = tiny
    cfg = cfg_of()
    b = P.collate([P.conversation_at(i, cfg) for i in range(3)], tok, model, cfg)
    mask, labels = b["attention_mask"], b["labels"]
    assert (labels[mask == 0] == -100).all() and b["pixel_values"].shape[0] == sum(b["num_tiles"])
    # tiles handed over from an earlier collate (distill.py's second branch) give the same batch
    again = P.collate(b["convs"], tok, model, cfg, pixels=b["pixel_values"].split(b["num_tiles"]))
    assert all(torch.equal(again[k], b[k]) for k in ("input_ids", "labels", "attention_mask", "pixel_values"))
    L = int(mask.sum(1).min())
    short = P.collate([P.conversation_at(0, cfg)], tok, model, cfg_of("--max-len", str(L - 3)))
    assert short["truncated"] == 1 and short["input_ids"].shape[1] == L - 3
    with pytest.raises(cli.Error, match="--max-len"):
        P.collate([P.conversation_at(0, cfg)], tok, model, cfg_of("--max-len", "10"))


def test_overfit_one_batch(tmp_path):
    cfg = cfg_of("--steps", "20", "--out", str(tmp_path), "--save-every", "0", "--micro-batch", "2")
    model, tok, _ = P.build_model(cfg, torch.device("cpu"))
    batch = P.collate([P.conversation_at(i, cfg) for i in range(2)], tok, model, cfg)
    assert P.train(cfg, model, tok, lambda step: [batch]) == 20
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "log.jsonl")]
    assert len(losses) == 20 and losses[-1] < 0.5 * losses[0]


def test_a_non_finite_loss_stops_before_the_weights_change(tmp_path):
    cfg = cfg_of("--steps", "4", "--out", str(tmp_path), "--save-every", "1", "--micro-batch", "1")
    model, tok, _ = P.build_model(cfg, torch.device("cpu"))
    batch = P.collate([P.conversation_at(0, cfg)], tok, model, cfg)
    at = []  # the step being taken

    def loss_fn(m, b):  # the loss turns NaN at the third step
        loss, rec = P.default_lm_loss(m, b)
        return loss * (float("nan") if at[-1] == 2 else 1.0), rec
    with pytest.raises(cli.Error, match="step 3: the gradient norm is nan"):
        P.train(cfg, model, tok, lambda step: at.append(step) or [batch], loss_fn)
    saved = load_file(tmp_path / "checkpoint" / "model.safetensors")  # step 2's, and the weights are still those
    assert saved and all(torch.isfinite(v).all() and torch.equal(v, model.state_dict()[k]) for k, v in saved.items())


def test_projector_only_leaves_vit_and_llm_bitwise(tmp_path):
    cfg = cfg_of("--steps", "2", "--out", str(tmp_path), "--trainable", "projector", "--micro-batch", "1")
    model, tok, _ = P.build_model(cfg, torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    P.train(cfg, model, tok, lambda step: [P.collate([P.conversation_at(step, cfg)], tok, model, cfg)])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) != k.startswith("mlp1."), k
    with pytest.raises(cli.Error, match="selects no parameter"):
        P.set_trainable(model, "compressor")
    # the checkpoint holds the projector alone, and a resume takes it (or one that also holds frozen weights)
    ckpt = tmp_path / "checkpoint" / "model.safetensors"
    assert set(load_file(ckpt)) == {k for k in before if k.startswith("mlp1.")}
    fresh, _, _ = P.build_model(cfg, torch.device("cpu"))
    P.set_trainable(fresh, "projector")
    P.load_checkpoint(str(tmp_path / "checkpoint"), fresh)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())
    P.save_file({k: p.detach().contiguous() for k, p in model.named_parameters()}, str(ckpt))  # all of them
    P.load_checkpoint(str(tmp_path / "checkpoint"), fresh)
    P.save_file({"mlp1.9.weight": torch.zeros(1)}, str(ckpt))
    with pytest.raises(cli.Error, match="does not match"):
        P.load_checkpoint(str(tmp_path / "checkpoint"), fresh)


def test_grad_checkpointing_gives_the_same_gradients():
    cfg = cfg_of()
    model, tok, _ = P.build_model(cfg, torch.device("cpu"))
    b = dict(P.collate([P.conversation_at(i, cfg) for i in range(2)], tok, model, cfg), n_labels_global=1.0)
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            P.enable_grad_checkpointing(model)
        model.zero_grad()
        P.default_lm_loss(model, b)[0].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, c, atol=1e-6) for a, c in zip(*grads))


def test_lr_schedule():
    cfg = cfg_of("--steps", "100", "--warmup", "10", "--min-lr-frac", "0.1")
    f = [P.lr_at(s, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1 and f[10] == 1 and f[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(f[9:], f[10:]))


def run(*argv):
    r = run_main(P.main, *TINY, *argv)
    assert r.returncode == 0, r.stderr[-2000:]


def test_resume_is_exact_and_final_folder_chats(tmp_path):
    common = ["--steps", "6", "--save-every", "3", "--micro-batch", "2"]
    straight, cut = str(tmp_path / "straight"), str(tmp_path / "cut")
    run(*common, "--out", straight)
    run(*common, "--out", cut, "--stop-at", "3")  # leaves like a preempted job, with the step-3 checkpoint
    assert not os.path.exists(os.path.join(cut, "model.safetensors"))
    assert json.load(open(os.path.join(cut, "checkpoint", "state.json")))["step"] == 3
    with pytest.raises(cli.Error, match="--resume"):  # will not overwrite a run by accident
        P.check(cfg_of(*common, "--out", cut))
    run(*common, "--out", cut, "--resume", "--workers", "2")  # batches built ahead in 2 forked processes: the same
    a, b = load_file(os.path.join(straight, "model.safetensors")), load_file(os.path.join(cut, "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = lambda d: [json.loads(line)["loss"] for line in open(os.path.join(d, "log.jsonl"))]
    assert log(straight) == log(cut) and len(log(cut)) == 6
    # the final folder is an InternVL2 checkpoint
    model, tok = M.load_model(cut), load_tokenizer(cut)
    last = load_file(os.path.join(cut, "checkpoint", "model.safetensors"))  # the weights of step 6, our names
    assert all(torch.equal(p, last[k]) for k, p in model.named_parameters())
    image = synth.make_sample("doc", 1)["image"]
    answer = model.chat(tok, M.load_image(image, max_num=2, image_size=56), "What is the title?", max_new_tokens=8)
    assert isinstance(answer, str)


def test_ddp_two_processes_equal_one(tmp_path):
    steps = ["--steps", "3", "--save-every", "0", "--lr", "1e-3"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    run(*steps, "--micro-batch", "2", "--out", one)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        os.path.join(ROOT, "posttrain.py"), *TINY, *steps,
                        "--micro-batch", "1", "--out", two], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_file(os.path.join(one, "model.safetensors")), load_file(os.path.join(two, "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    la, lb = ([json.loads(line) for line in open(os.path.join(d, "log.jsonl"))] for d in (one, two))
    assert [x["label_tokens"] for x in la] == [x["label_tokens"] for x in lb]
    assert [x["loss"] for x in la] == pytest.approx([x["loss"] for x in lb], abs=1e-5)


def write_fixture(tmp_path, lines):
    (tmp_path / "img").mkdir(exist_ok=True)
    for i in range(2):
        synth.make_sample("table", i)["image"].save(tmp_path / "img" / f"{i}.png")
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else (x if isinstance(x, str) else json.dumps(x)).encode()
                                for x in lines) + b"\n")
    return str(path)


def test_internvl_jsonl(tmp_path, tiny):
    model, tok = tiny
    good = [{"image": "0.png", "conversations": [{"from": "human", "value": "<image>\nWhat is the total?"},
                                                 {"from": "gpt", "value": "12.50"}]},
            {"image": "1.png", "conversations": [{"from": "human", "value": "<image>\nRead it."}, {"from": "gpt", "value": "A B"},
                                                 {"from": "human", "value": "And the store?"}, {"from": "gpt", "value": "CITY CAFE"}]}]
    path = write_fixture(tmp_path, good)
    records = P.read_jsonl(path, str(tmp_path / "img"))
    cfg = cfg_of("--data", path)
    convs = [P.conversation_at(i, cfg, records) for i in range(4)]  # two epochs, each a permutation
    assert sorted(c["line"] for c in convs[:2]) == [1, 2] and sorted(c["line"] for c in convs[2:]) == [1, 2]
    b = P.collate(convs[:2], tok, model, cfg)
    assert sorted(tok.decode(r) for row in b["labels"].tolist() for r in label_runs(row)) == ["12.50", "A B", "CITY CAFE"]

    for lines, message in ((good[:1] + ["{not json"], "train.jsonl line 2 is not valid JSON"),
                           ([dict(good[0], image="missing.png")], "train.jsonl line 1: image"),
                           ([{"image": "0.png", "conversations": [{"from": "gpt", "value": "x"}]}], "must alternate"),
                           ([dict(good[0], conversations=[good[0]["conversations"][0], {"from": "gpt", "value": "a <IMG_CONTEXT>"}])],
                            "train.jsonl line 1 contains <IMG_CONTEXT>"),
                           ([json.dumps(good[0]).replace("12.50", "Caf\\u00e9"), b'{"caf\xe9": 1}'],
                            "train.jsonl line 2 is not UTF-8 text"),  # Latin-1 bytes
                           ([dict(good[0], conversations=[good[0]["conversations"][0], {"from": "gpt", "value": "x\ud800"}])],
                            "train.jsonl line 1 holds an unpaired surrogate escape")):  # as json writes one
        path = write_fixture(tmp_path, lines)
        r = run_main(P.main, *TINY, "--data", path, "--image-root", tmp_path / "img", "--out", tmp_path / "o")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


def test_resume_refuses_changed_data_a_broken_checkpoint_and_a_foreign_log(tmp_path, tiny):
    line = {"image": "0.png", "conversations": [{"from": "human", "value": "<image>\nWhat is the total?"},
                                                {"from": "gpt", "value": "12.50"}]}
    path = write_fixture(tmp_path, [line])
    argv = [*TINY, "--data", path, "--image-root", str(tmp_path / "img"), "--out", str(tmp_path / "o"), "--steps", "2",
            "--micro-batch", "1", "--save-every", "1"]

    def main(*more):
        r = run_main(P.main, *argv, *more)
        return r.returncode, r.stderr
    assert main("--stop-at", "1")[0] == 0
    write_fixture(tmp_path, [dict(line, conversations=[line["conversations"][0], {"from": "gpt", "value": "99.00"}])])
    code, err = main("--resume")  # the same path, other bytes: another run's data
    assert code == 2 and err.count("\n") == 1 and "--data " + path + " holds other bytes" in err, err
    write_fixture(tmp_path, [line])  # the run's own data again: it goes on
    weights = tmp_path / "o" / "checkpoint" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:100])  # a checkpoint cut short: one line, not a safetensors traceback
    code, err = main("--resume")
    assert code == 2 and err.count("\n") == 1 and "model.safetensors is not a readable safetensors file" in err, err
    weights.write_bytes(good)
    log = tmp_path / "o" / "log.jsonl"
    log.write_text("not json\n" + log.read_text())  # not this script's log: refused, and kept as it is
    assert main("--resume")[0] == 2 and log.read_text().startswith("not json\n")
    log.write_text(log.read_text().split("\n", 1)[1])
    assert main("--resume")[0] == 0
    assert json.load(open(tmp_path / "o" / "checkpoint" / "state.json"))["step"] == 2
    assert [json.loads(line)["step"] for line in open(log)] == [1, 2]


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_image_is_one_line_from_a_worker_too(tmp_path, workers):
    path = write_fixture(tmp_path, [{"image": "0.png", "conversations": [{"from": "human", "value": "<image>\nQ?"},
                                                                         {"from": "gpt", "value": "A"}]}])
    (tmp_path / "img" / "0.png").write_text("not an image")
    r = run_main(P.main, *TINY, "--data", path, "--image-root", tmp_path / "img", "--out", tmp_path / "o", "--steps",
                 "1", "--micro-batch", "1", "--workers", workers)
    err = [line for line in r.stderr.splitlines() if "error" in line]  # beside tqdm's bar
    assert r.returncode == 2 and len(err) == 1 and err[0].endswith("replace the file or drop its line"), err
    assert err[0].split("posttrain.py: error: ")[1].startswith("cannot read image"), err


def test_input_identities_are_of_the_files_the_run_reads(tmp_path):
    """A glyph stage's run folder (teacher.py --vision-from) is its checkpoint's weights; a stamp change rehashes."""
    weights = tmp_path / "glyphs" / "checkpoint" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"one")
    cfg = SimpleNamespace(vision_from=str(tmp_path / "glyphs"), init="tiny", data="")
    first = P.input_identities(cfg)
    assert set(first) == {"vision_from"} and P.input_identities(cfg, first) == first
    weights.write_bytes(b"two")
    assert P.input_identities(cfg, first)["vision_from"]["sha256"] != first["vision_from"]["sha256"]


def test_bad_flags_exit_2(tmp_path, teacher_dir):
    for argv in (["--trainable", "nope"], ["--steps", "0"], ["--init", str(tmp_path / "missing")], ["--kinds", "doc,x"],
                 ["--no-such-flag"]):
        r = run_main(P.main, *TINY, "--out", tmp_path / "o", *argv)
        err = r.stderr
        assert r.returncode == 2 and err.startswith("posttrain.py: error:") and err.count("\n") == 1, err
    model = shutil.copytree(teacher_dir, tmp_path / "model")
    before = (model / "model.safetensors").read_bytes()
    for argv, words in ((["--out", str(model)], "holds a model that is not this run's"),  # kept, not trained over
                        (["--image-root", str(tmp_path)], "pass --data too"),
                        (["--data", str(tmp_path / "c.jsonl"), "--kinds", "doc"], "--kinds shapes the synthetic"),
                        (["--data", str(tmp_path / "c.jsonl"), "--qa-turns", "3"], "--qa-turns shapes the synthetic"),
                        (["--init", teacher_dir, "--model-config", str(tmp_path / "mc.json")], "--model-config shapes"),
                        (["--p-qa", "nan"], "--p-qa nan: must be >= 0"), (["--p-reason", "inf"], "must be finite")):
        r = run_main(P.main, *TINY, "--out", tmp_path / "o", *argv)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and words in r.stderr, r.stderr
    assert (model / "model.safetensors").read_bytes() == before


def test_resume_refuses_a_changed_model_config(tmp_path):
    """--model-config is read by the bytes it held when the run began, as --data is."""
    (tmp_path / "mc.json").write_text(json.dumps({"llm": {"rope_theta": 10000}}))
    argv = [*TINY, "--model-config", str(tmp_path / "mc.json"), "--steps", "2", "--stop-at", "1", "--micro-batch", "1",
            "--out", str(tmp_path / "o")]
    assert run_main(P.main, *argv).returncode == 0
    (tmp_path / "mc.json").write_text(json.dumps({"llm": {"rope_theta": 50}}))
    r = run_main(P.main, *argv, "--resume")
    assert r.returncode == 2 and "--model-config " + str(tmp_path / "mc.json") + " holds other bytes" in r.stderr, r.stderr
