"""
Average checkpoints of one model (a "model soup"): every tensor becomes the weighted mean of the inputs'
tensors, summed in fp32 and saved in the source dtype. Tensors are streamed one at a time, so merging
8B checkpoints needs about one output shard of memory. The output is an ordinary InternVL2 checkpoint
folder, sharded like the first input, with its config.json and tokenizer files. It is written beside --out
(OUT.merge-tmp), then swapped in: an earlier checkpoint in --out is replaced whole, never mixed with the new
one, even when the merge is killed part-way.

    python merge.py runs/sft-a runs/sft-b --out runs/soup
    python merge.py runs/sft-a runs/sft-b runs/sft-c --weights 2 1 1 --out runs/soup3   # 0.5, 0.25, 0.25
    python -m pytest tests/test_merge.py -q

In Python:  merge(["runs/sft-a", "runs/sft-b"], "runs/soup", weights=[0.7, 0.3])

The inputs must have the same keys, shapes, dtypes and config.json (architecture and "compressor"
alike); anything else is refused with one line that says what differs and what to do.
This file imports only the standard library, torch and safetensors: copy it into your project as it is.
"""
import argparse
import contextlib
import json
import math
import os
import shutil
import sys

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

INDEX, SINGLE = "model.safetensors.index.json", "model.safetensors"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "added_tokens.json", "special_tokens_map.json")  # model.TOKENIZER_FILES: merge.py stands alone
# config.json must be equal across inputs at every depth, except these fields: they say where or how a
# file was written, not what its weights mean (the dtype is compared tensor by tensor instead)
IGNORED_FIELDS = {"_name_or_path", "_commit_hash", "transformers_version", "torch_dtype", "dtype"}
ABSENT = object()


class MergeError(Exception):
    """Inputs that cannot be merged; the one-line message says what is wrong and how to fix it."""


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
        raise MergeError(f"{path} is not valid JSON ({e}): restore it from the original checkpoint") from None
    if not isinstance(data, dict):  # config.json and the index are objects
        raise MergeError(f"{path} holds a JSON {type(data).__name__}, not an object: restore it from the original "
                         "checkpoint")
    return data


def open_checkpoint(path, stack):
    """(config, index or None, {file: open safetensors handle}, {key: file}) of a checkpoint folder."""
    if not os.path.isdir(path):
        raise MergeError(f"checkpoint folder {path} does not exist: pass folders holding config.json and model*.safetensors")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise MergeError(f"no config.json in {path}: pass a checkpoint folder (config.json + model*.safetensors)")
    config = read_json(os.path.join(path, "config.json"))
    index = read_json(os.path.join(path, INDEX)) if os.path.isfile(os.path.join(path, INDEX)) else None
    if index is None and not os.path.isfile(os.path.join(path, SINGLE)):
        raise MergeError(f"no {SINGLE} or {INDEX} in {path}: save the checkpoint's weights there")
    if index is not None and not isinstance(index.get("weight_map"), dict):
        raise MergeError(f"{INDEX} in {path} has no weight_map: restore it from the original checkpoint")
    handles, where = {}, {}
    for name in sorted(set(index["weight_map"].values())) if index else [SINGLE]:
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise MergeError(f"shard {name} listed in {INDEX} is missing from {path}: copy it there")
        try:
            handles[name] = stack.enter_context(safe_open(file, framework="pt", device="cpu"))
        except (SafetensorError, OSError) as e:
            raise MergeError(f"cannot read {file}: {e} (corrupt or truncated: copy or download it again)") from None
        where.update(dict.fromkeys(handles[name].keys(), name))
    if index is not None and where != index["weight_map"]:
        raise MergeError(f"{INDEX} in {path} does not list the keys its shards hold: rewrite the index")
    return config, index, handles, where


def config_diff(a, b, prefix=""):
    """(dotted field, value in a, value in b) of the first difference between two configs, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            d = None if k in IGNORED_FIELDS else config_diff(a.get(k, ABSENT), b.get(k, ABSENT), f"{prefix}{k}.")
            if d:
                return d
        return None
    return None if a == b else (prefix[:-1] or "config.json", a, b)


def show(v, n=60):
    s = "absent" if v is ABSENT else json.dumps(v)
    return s if len(s) <= n else s[:n] + "..."


def few(keys, n=3):
    return " (" + ", ".join(keys[:n]) + (", ..." if len(keys) > n else "") + ")" if keys else ""


def average(sources, key, weights):
    """sum_i w_i * tensor_i in fp32, cast back to the source dtype; one input tensor is read at a time."""
    first = sources[0].get_tensor(key)
    if not first.is_floating_point():  # integer/bool tensors (ids, counters) have no mean: they must agree
        if any(not torch.equal(f.get_tensor(key), first) for f in sources[1:]):
            raise MergeError(f"integer tensor {key} differs between the inputs: it cannot be averaged, make it equal")
        return first
    dtype, acc = first.dtype, first.float() * weights[0]
    del first
    for f, w in zip(sources[1:], weights[1:]):
        acc += f.get_tensor(key).float() * w
    return acc.to(dtype)


def holds_only_a_checkpoint(folder):
    """True for a folder that is empty or holds a checkpoint's files alone (a previous or killed merge's): only such
    a folder may be replaced whole."""
    if not os.path.isdir(folder):
        return False
    ours = lambda n: n in ("config.json", INDEX, *TOKENIZER_FILES) or \
        (n.startswith("model") and n.endswith((".safetensors", ".safetensors.tmp")))  # .tmp: a killed save's
    return all(ours(n) and os.path.isfile(os.path.join(folder, n)) for n in os.listdir(folder))


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)


def merge(inputs: list[str], out: str, weights: list[float] | None = None):
    """Write the weighted average of the checkpoint folders `inputs` to the folder `out`. weights: one
    per input, normalised to sum 1 (default: equal). Raises MergeError; all checks but the one on integer
    tensors' values (rare) read only headers and come before anything is written."""
    if len(inputs) < 2:
        raise MergeError(f"got {len(inputs)} input checkpoint(s): pass at least two folders to merge")
    weights = [1.0] * len(inputs) if weights is None else [float(w) for w in weights]
    if len(weights) != len(inputs):
        raise MergeError(f"--weights has {len(weights)} values for {len(inputs)} inputs: give one weight per input, in order")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise MergeError(f"--weights {' '.join(map(str, weights))} has a negative or non-finite value: use weights >= 0")
    total = sum(weights)
    if total <= 0:
        raise MergeError("--weights sum to 0: give at least one input a positive weight")
    if not math.isfinite(total):  # 1e308 twice: each weight would become w / inf = 0, and so would every tensor
        raise MergeError(f"--weights sum to {total}: scale them down (only their ratios matter)")
    weights = [w / total for w in weights]
    for path in inputs:
        if os.path.realpath(path) == os.path.realpath(out):
            raise MergeError(f"--out {out} is the input {path}: write the merge to a new folder")
    out = os.path.normpath(out)
    if os.path.exists(out) and not holds_only_a_checkpoint(out):
        what = "a file" if os.path.isfile(out) else "a folder holding more than a checkpoint"
        raise MergeError(f"--out {out} exists and is {what}, and a merge replaces it whole: pass a new folder")
    with contextlib.ExitStack() as stack:
        ckpts = [open_checkpoint(p, stack) for p in inputs]
        (config, index, handles, where), a = ckpts[0], inputs[0]
        for path, (cfg, _, hs, wh) in zip(inputs[1:], ckpts[1:]):
            diff = config_diff(config, cfg)
            if diff:
                raise MergeError(f"config.json differs in {diff[0]}: {show(diff[1])} in {a} but {show(diff[2])} in {path}: "
                                 "merge only checkpoints of the same architecture and compressor config")
            missing, extra = sorted(set(where) - set(wh)), sorted(set(wh) - set(where))
            if missing or extra:
                raise MergeError(f"key sets differ: {path} lacks {len(missing)} of {a}'s keys{few(missing)} and has "
                                 f"{len(extra)} others{few(extra)}: merge only checkpoints of the same model")
            for key, name in where.items():  # header metadata only: no tensor is read yet
                s, t = handles[name].get_slice(key), hs[wh[key]].get_slice(key)
                if s.get_shape() != t.get_shape():
                    raise MergeError(f"shape mismatch for {key}: {tuple(s.get_shape())} in {a} vs {tuple(t.get_shape())} "
                                     f"in {path}: merge only checkpoints of the same architecture")
                if s.get_dtype() != t.get_dtype():
                    raise MergeError(f"dtype mismatch for {key}: {s.get_dtype()} in {a} vs {t.get_dtype()} in {path}: "
                                     "save all inputs in one dtype first")
        tmp, old = out + ".merge-tmp", out + ".merge-old"  # beside --out: the renames stay on one file system
        shutil.rmtree(tmp, ignore_errors=True)  # a killed merge's
        os.makedirs(tmp)
        try:
            for name, f in handles.items():  # only this output shard is held in memory
                shard = {key: average([hs[wh[key]] for _, _, hs, wh in ckpts], key, weights) for key in f.keys()}
                save_file(shard, os.path.join(tmp, name), metadata={"format": "pt"})
                print(f"wrote {os.path.join(out, name)} ({len(shard)} tensors)")
                shard = None  # before the next one is built, or two shards would be alive at once
            # the index of the first input fits: same keys, shapes and dtypes
            for name, obj in {"config.json": config, **({INDEX: index} if index is not None else {})}.items():
                write_json(os.path.join(tmp, name), obj)
            for name in TOKENIZER_FILES:
                if os.path.isfile(os.path.join(a, name)):
                    shutil.copyfile(os.path.join(a, name), os.path.join(tmp, name))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    # the swap: a reader finds the old folder or the new one (or, between the two renames, none), never a mix
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(out):
        os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit code 2, as every refused input here (argparse prints its usage too)
        self.exit(2, f"{self.prog}: error: {message} (see python {self.prog} --help)\n")


def main(argv=None):
    parser = Parser(prog="merge.py", description="Weighted average of checkpoints of one model "
                                     "(same keys, shapes, dtypes and config.json), in fp32, saved in the source dtype.")
    parser.add_argument("inputs", nargs="+", help="checkpoint folders; the first gives the sharding, config and tokenizer")
    parser.add_argument("--weights", nargs="+", type=float, help="one per input, normalised to sum to 1 "
                        "(so 2 1 1 means 0.5 0.25 0.25); not negative (default: equal, 1/n each)")
    parser.add_argument("--out", required=True, help="output folder (created; must not be one of the inputs)")
    args = parser.parse_args(argv)
    try:
        merge(args.inputs, args.out, args.weights)
    except (MergeError, OSError) as e:
        hint = ": check the paths, permissions and free disk space" if isinstance(e, OSError) else ""
        print(f"merge.py: error: {e}{hint}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
