"""cli.py: a config dataclass's flags (help from the comments, a subclass's defaults, switches, lists, skipped
fields, choices, ranges), one-line errors with exit code 2, atomic writes; and every command a script's docstring
gives parses with that script's flags.

    python -m pytest tests/test_cli.py -q
"""
import importlib
import json
import os
import shlex
from dataclasses import dataclass

import pytest

import cli


@dataclass
class Base:
    steps: int = 3  # optimizer steps
    lr: float = 0.5  # peak learning rate
    name: str = "a"  # run name
    fast: bool = False  # go fast
    sizes: tuple = (1, 2)  # sizes to try


@dataclass
class Child(Base):
    lr: float = 0.25  # the child's learning rate
    extra: int = 0  # the child's own


def test_a_flag_per_field():
    cfg = cli.parse(Child, ["--steps", "4", "--fast", "--sizes", "5", "6", "7", "--extra", "1"], "x.py", "doc")
    assert cfg == Child(steps=4, lr=0.25, name="a", fast=True, sizes=[5, 6, 7], extra=1)
    assert cli.parse(Child, [], "x.py", "doc") == Child()  # the subclass's defaults


def test_help_is_the_fields_comment(capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse(Child, ["--help"], "x.py", "The first paragraph.\n\nThe rest.")
    out = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0 and "The first paragraph." in out and "The rest" not in out
    assert "the child's learning rate (default: 0.25)" in out and "optimizer steps (default: 3)" in out
    assert "--fast go fast" in out


@pytest.mark.parametrize("argv, words", [
    (["--steps", "x"], "argument --steps: invalid int value: 'x'"),
    (["--nope"], "unrecognized arguments: --nope"),
    (["--name", "c"], "argument --name: invalid choice: 'c'"),
    (["--steps", "0"], "--steps 0: must be >= 1"),
    (["--lr", "2"], "--lr 2: must be > 0 and <= 1"),
    (["--lr", "nan"], "--lr nan: must be > 0 and <= 1"),
    (["--extra", "1"], "unrecognized arguments: --extra 1"),  # skipped
])
def test_bad_flags_raise_one_line(argv, words):
    with pytest.raises(cli.Error) as e:
        cli.parse(Child, argv, "x.py", "doc", skip=("extra",), choices=dict(name=["a", "b"]), steps=1, lr=(0, 1))
    assert words in str(e.value) and "(see python x.py --help)" in str(e.value) and "\n" not in str(e.value)


def test_run_main_prints_one_line_and_returns_2(capsys):
    class Foreign(Exception):
        pass

    def fail(error):
        raise error("no such folder: pass another")
    assert cli.run_main("x.py", lambda: fail(cli.Error)) == 2
    assert cli.run_main("x.py", lambda: fail(Foreign), Foreign) == 2
    assert capsys.readouterr().err == "x.py: error: no such folder: pass another\n" * 2
    assert cli.run_main("x.py", lambda: None) == 0
    with pytest.raises(ValueError):  # a bug is a traceback, not an input error
        cli.run_main("x.py", lambda: fail(ValueError))


def test_bare_parser_exits_2(capsys):
    p = cli.Parser(prog="x.py")
    p.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--n", "x"])
    assert e.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_out_of_range():
    cfg = Base(steps=-1, lr=0.5, sizes=(1, 0))
    assert cli.out_of_range(cfg, lr=(0, 1)) is None
    assert cli.out_of_range(cfg, lr=(0, 1), steps=0) == "--steps -1: must be >= 0"
    assert cli.out_of_range(cfg, sizes=1) == "--sizes 0: must be >= 1"
    for inf in (float("inf"), float("-inf")):  # a bound with no top still takes no infinity: it trains NaN weights
        assert cli.out_of_range(Base(lr=inf), lr=(0, float("inf"))) == f"--lr {inf:g}: must be finite and > 0"
    assert cli.out_of_range(Base(lr=float("inf")), lr=0) == "--lr inf: must be finite and >= 0"
    assert cli.out_of_range(Base(lr=float("nan")), lr=0) == "--lr nan: must be >= 0"
    assert cli.out_of_range(Base(steps=-10**400), steps=0) == f"--steps {-10**400}: must be >= 0"  # too big for a float
    assert cli.out_of_range(Base(steps=10**400), steps=0) is None and cli.out_of_range(Base(steps=-5), steps=0) == \
        "--steps -5: must be >= 0"


def test_writes_are_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "r.json")
    cli.write_json(path, {"a": 1})
    assert json.load(open(path)) == {"a": 1} and os.listdir(tmp_path) == ["r.json"]

    def killed(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", killed)  # killed before the rename: the old file stays whole
    with pytest.raises(KeyboardInterrupt):
        cli.write_json(path, {"a": 2})
    assert json.load(open(path)) == {"a": 1}


def test_check_device():
    assert cli.check_device("cpu") is None
    assert "not a device torch knows" in cli.check_device("tpu")


def test_writable(tmp_path):
    cli.writable(str(tmp_path / "a" / "b"), "--out x")
    assert os.listdir(tmp_path / "a" / "b") == []  # made, and the probe gone
    (tmp_path / "f").write_text("x")
    with pytest.raises(cli.Error, match=r"^--out x: cannot write there \(.*\); pass --out in a writable folder$"):
        cli.writable(str(tmp_path / "f" / "sub"), "--out x")  # a file where a folder should be


SCRIPTS = ("teacher", "distill", "evaluate", "posttrain", "results", "bench")


def docstring_commands(doc, script):
    """Each `python SCRIPT ...` or `torchrun ... SCRIPT ...` command in a docstring, its continuation lines joined
    and its comments dropped -> the arguments after the script."""
    out, cur = [], None
    for line in doc.splitlines():
        code = line.split(" #")[0].strip()
        if cur is None and not (code.startswith(("python ", "torchrun ")) and script in shlex.split(code)):
            continue
        cur = (cur or "") + " " + code.rstrip("\\")
        if not code.endswith("\\"):
            argv, cur = shlex.split(cur), None
            out.append(argv[argv.index(script) + 1:])
    return out


@pytest.mark.parametrize("name", SCRIPTS)
def test_docstring_commands_parse(name, tmp_path, monkeypatch):
    """A reader copies these: each must name only flags the script has, with valid values (the image a one-question
    command names is made here; a missing model or data is found when the run starts, not when its flags parse)."""
    module = importlib.import_module(name)
    commands = docstring_commands(module.__doc__, name + ".py")
    assert len(commands) >= 2, name  # the extraction found them
    from PIL import Image
    Image.new("RGB", (8, 8)).save(tmp_path / "page.png")
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        module.parse_args(argv)
