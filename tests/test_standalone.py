"""model.py, compress.py, merge.py, baselines.py and tokenizer.py can be copied into another project, as the README
promises: the first three import nothing of this repository, baselines.py only compress.py, tokenizer.py only model.py,
and each one, copied into an empty folder (compress.py beside model.py, whose extension point it plugs into;
baselines.py beside both; tokenizer.py beside model.py and a tokenizer), imports and runs there in a fresh Python.

    python -m pytest tests/test_standalone.py -q
"""
import ast
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")} | {"data", "tests"}  # this repository's modules
ALLOWED = {"model.py": {"torch", "numpy", "PIL", "safetensors"},
           "compress.py": {"torch", "triton"},  # triton: optional (the pool kernel), imported under try/except
           "merge.py": {"torch", "safetensors"}}


def imported(file):
    """The top-level names of every module the file imports, at any depth (functions too); '.' for a relative one."""
    names = set()
    for node in ast.walk(ast.parse(open(os.path.join(ROOT, file), encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add("." if node.level else node.module.split(".")[0])
    return names - set(sys.stdlib_module_names)


@pytest.mark.parametrize("file", sorted(ALLOWED))
def test_imports_only_torch_and_its_kin(file):
    names = imported(file)
    assert not names & (OURS | {"."}), f"{file} imports {names & (OURS | {'.'})} from this repository"
    assert names <= ALLOWED[file], f"{file} needs {names - ALLOWED[file]} besides {ALLOWED[file]}"


def test_baselines_need_only_compress_and_torch():
    names = imported("baselines.py")
    assert names <= {"compress", "torch"}, f"baselines.py imports {names - {'compress', 'torch'}}"


def test_tokenizer_needs_only_model_and_sentencepiece():
    names = imported("tokenizer.py")
    assert names <= {"model", "sentencepiece"}, f"tokenizer.py imports {names - {'model', 'sentencepiece'}}"


RUN = {  # what each copy must do in its empty folder
    "model.py": "import torch, model as M\n"
                "m = M.InternVLChat(M.tiny_config()).eval()\n"
                "m.img_context_token_id = 5\n"
                "ids = torch.tensor([[1] + [5] * m.num_image_token + [7]])\n"
                "assert m(torch.randn(1, 3, 56, 56), ids).shape == (1, ids.shape[1], 512)\n",
    "compress.py": "import torch, model as M, compress as C\n"
                   "t = M.InternVLChat(M.tiny_config()).eval()\n"
                   "t.img_context_token_id = 5\n"
                   "s = C.make_student(t, 'select', 0.5)\n"
                   "ids = torch.tensor([[1] + [5] * 2 * s.num_image_token + [7]])\n"
                   "assert s.num_image_token == 2 and s(torch.randn(2, 3, 56, 56), ids).shape == (1, 6, 512)\n",
    "baselines.py": "import torch, model as M, baselines as B\n"
                    "t = M.InternVLChat(M.tiny_config()).eval()\n"
                    "t.img_context_token_id = 5\n"
                    "s = B.apply(t, 'divprune', 0.5)\n"
                    "ids = torch.tensor([[1] + [5] * 2 * s.num_image_token + [7]])\n"
                    "assert s.num_image_token == 2 and s(torch.randn(2, 3, 56, 56), ids).shape == (1, 6, 512)\n",
    "merge.py": "import merge\nassert callable(merge.merge)\n",
    "tokenizer.py": "import tokenizer\nassert tokenizer.word_regex().findall('Total: 42') == ['Total', ':', ' ', '4', '2']\n"
                    "tok = tokenizer.load_tokenizer('tok')\n"  # model.py's added-token reader, in the copy
                    "assert tok.decode(tok.encode('<img>The total?</img>'), skip_special_tokens=False) == '<s><img>The total?</img>'\n",
}


@pytest.mark.parametrize("file", sorted(RUN))
def test_copied_alone_it_runs(file, tmp_path):
    needs = {"compress.py": {"model.py"}, "baselines.py": {"model.py", "compress.py"}, "tokenizer.py": {"model.py"}}
    for f in {file} | needs.get(file, set()):
        shutil.copy(os.path.join(ROOT, f), tmp_path)
    if file == "tokenizer.py":
        shutil.copytree(os.path.join(ROOT, "data", "tokenizer"), tmp_path / "tok")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the copy's folder: the working directory
    r = subprocess.run([sys.executable, "-c", f"import sys; assert sys.path[0] == ''\n{RUN[file]}print('ok')"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
