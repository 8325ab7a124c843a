"""
The command-line plumbing posttrain.py, distill.py, evaluate.py, results.py, teacher.py and bench.py share: a
flag per field of a config dataclass, one-line errors with exit code 2, atomic JSON writes. (compress.py and
merge.py keep their own few lines of it, so that each can be copied alone.)

    python -m pytest tests/test_cli.py -q
"""
import argparse, dataclasses, inspect, json, math, os, re, sys


MAX_TILES = 64  # --max-num's bound (InternVL evaluates with up to 40): its tile-grid search grows as its cube


class Error(Exception):
    """Bad input (a flag, a path, a data line): main() prints it as one line and exits with code 2."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit code 2 (argparse prints its usage first); with raises, an Error
    for main() to print (parse() makes such a parser: a caller in Python can catch it)."""
    raises = False

    def error(self, message):
        if self.raises:
            raise Error(f"{message} (see python {self.prog} --help)")
        print(f"{self.prog}: error: {message} (see python {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def parse(cls, argv, prog, doc, skip=(), choices=None, defaults=None, **bounds):
    """-> cls(...) from the command line: a flag per field of dataclass `cls` but those in `skip` (--micro-batch for
    micro_batch), the field's default its default (or defaults[field]), the comment after the field its help. A bool
    field is a switch, a tuple takes one or more values. choices: {field: its values}; `bounds` as out_of_range's. A
    bad flag raises Error."""
    p = Parser(prog=prog, description=doc.strip().split("\n\n")[0])
    p.raises = True
    notes = {}
    for c in reversed(cls.__mro__[:-1]):  # a subclass's comments win
        notes.update(re.findall(r"^    (\w+): .*?  # (.+)$", inspect.getsource(c), re.M))
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        note = notes.get(f.name, "").replace("%", "%%")
        kw = dict(action="store_true") if f.type is bool else \
            dict(nargs="+", type=type(f.default[0]), default=f.default) if isinstance(f.default, tuple) else \
            dict(type=f.type, default=f.default, help=note if f.default is None else f"{note} (default: {f.default!r})".lstrip())
        if f.name in (choices or {}):
            kw["choices"] = choices[f.name]
        p.add_argument("--" + f.name.replace("_", "-"), **dict(dict(help=note), **kw))
    p.set_defaults(**defaults or {})
    cfg = cls(**vars(p.parse_args(argv)))
    if msg := out_of_range(cfg, **bounds):
        p.error(msg)
    return cfg


def out_of_range(args, **bounds):
    """'--flag V: must be ...' for the first flag outside its bound, else None. A bound is LOW (value >= LOW) or
    (LOW, HIGH) (LOW < value <= HIGH: for an int flag (-1, HIGH) reads >= 0); a flag left unset (None) is skipped,
    a list is checked value by value."""
    for k, b in bounds.items():
        v = getattr(args, k)
        for x in v if isinstance(v, (list, tuple)) else [] if v is None else [v]:
            infinite = isinstance(x, float) and math.isinf(x)  # not math.isinf(x): an int of 400 digits overflows it
            if infinite or not (b[0] < x <= b[1] if isinstance(b, tuple) else x >= b):  # NaN fails both
                want = f">= {b:g}" if not isinstance(b, tuple) else (
                    f">= {b[0] + 1}" if isinstance(x, int) and isinstance(b[0], int) else f"> {b[0]:g}") + (
                    f" and <= {b[1]:g}" if b[1] != float("inf") else "")
                shown = f"{x:g}" if isinstance(x, float) or abs(x) < 10**300 else str(x)  # :g makes an int a float
                return f"--{k.replace('_', '-')} {shown}: must be {'finite and ' if infinite else ''}{want}"
    return None


def check_device(name):
    """None if torch can run on device `name`, else one line saying what is wrong and what to pass instead."""
    import torch
    try:
        d = torch.device(name)
    except (RuntimeError, TypeError):
        return f"--device {name}: not a device torch knows; pass cpu or cuda (cuda:N for one GPU)"
    if d.type == "cuda" and (not torch.cuda.is_available() or (d.index or 0) >= torch.cuda.device_count()):
        why = "this torch has no CUDA" if torch.version.cuda is None else f"{torch.cuda.device_count()} GPUs visible"
        return f"--device {name}: {why}; pass --device cpu, or install a CUDA build of torch"
    return None


def writable(folder, flag):
    """Make `folder` and check this process can create a file in it, else an Error that names `flag` ("--out X")."""
    try:
        os.makedirs(folder or ".", exist_ok=True)
        probe = os.path.join(folder or ".", f".writable.{os.getpid()}")  # its own name: torchrun's processes probe side by side
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise Error(f"{flag}: cannot write there ({e.strerror or e}); pass {flag.split()[0]} in a writable folder") from None


def run_main(prog, fn, *errors):
    """fn() -> its exit code (None: 0); an Error, or one of `errors` (model.py's and compress.py's own), is one line
    on stderr and exit code 2."""
    try:
        return fn() or 0
    except (Error, *errors) as e:
        sys.stderr.write(f"{prog}: error: {e}\n")  # one write, newline included: processes writing side by side
        sys.stderr.flush()                          # (results.py's) cannot split each other's lines
        return 2


def write_text(path, text):
    """Atomic: a kill leaves the old file or the new one, never half a file."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=1, ensure_ascii=False))
