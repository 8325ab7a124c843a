"""
Scores by question form: which of the generator's questions a model answers, in each task's own
metric, from the predictions evaluate.py wrote. A diagnostic for the embedded teacher: a task's score
hides that it answers one form of question and not another, or reads one layout and not another.

    python evaluate.py --task chartqa --out runs/eval/chartqa.jsonl     # ... one file per task
    python -m data.forms runs/eval                                      # prints a markdown table
    python evaluate.py --task chartqa --data data/eval-heldout/chartqa --out runs/preds-heldout/chartqa.jsonl
    python -m data.forms runs/preds-heldout --data data/eval-heldout --by-layout   # data/wide.py's forms, per layout

The shipped sets' forms are told apart by question pattern (FORMS); a data/wide.py family's set names each
question's form and layout in its samples.jsonl, which is read instead (OCRBench's word crops have none).
Predictions of other questions than --data's are refused: their ids would score against the wrong answers.
"""
import json
import os
import re
import sys

import cli
import evaluate as E
from data import wide

SHIPPED = os.path.join(E.HERE, "data", "eval")

FORMS = [  # (task, form, question pattern): the question templates of data/synth.py, most specific first
    ("docvqa", "title", r"What is the title of the document\?"),
    ("docvqa", "amount for an item", r"What is the amount for .+\?"),
    ("docvqa", "quantity of an item", r"What is the quantity of .+\?"),
    ("docvqa", "total / store", r"What is the (total|name of the store)\?"),
    ("docvqa", "form field", r"What is the .+\?"),
    ("chartqa", "value for a category", r"What is the value for .+\?"),
    ("chartqa", "category with a value", r"Which \w+ has a value of .+\?"),
    ("infovqa", "title", r"What is the title of the infographic\?"),
    ("infovqa", "percentage for a caption", r"What percentage .+\?"),
    ("textvqa", "distance on a sign", r"How far is .+\?"),
    ("textvqa", "other sign text", r".+"),
    ("ocrbench", "word crop", r"what is written in the image\?"),
    ("ocrbench", "chart / infographic value", r"What (is the value for|percentage) .+\?.*"),
    ("ocrbench", "other questions", r".+"),
]


def form_of(task, question):
    return next((f for t, f, pat in FORMS if t == task and re.fullmatch(pat, question, re.S)), "unmatched")


def sidecar_forms(folder):
    """(image path, question) -> (layout, form) from a wide family's samples.jsonl in folder; {} for the shipped
    sets. A question's reworded phrasings map there too."""
    path, found = os.path.join(folder, "samples.jsonl"), {}
    if os.path.isfile(path):
        with open(path) as f:
            for s in map(json.loads, f):
                image = os.path.abspath(os.path.join(folder, s["image"]))
                for q in (q for q in s.get("qa", []) if "form" in q):
                    again = (wide.reworded2(q), wide.reworded3(q)) if "reworded" in q else ()
                    texts = (q["question"], q.get("reworded"), *again)
                    found.update({(image, text): (s["layout"], q["form"]) for text in texts})
    return found


def by_form(task, predictions, data=None, by_layout=False):
    """{form: (n, mean score in %)} over the main set's questions (not reasoning.json's) that have a prediction;
    by_layout: keyed "layout: form" where the set's samples.jsonl names them."""
    t = E.TASKS[task]
    data = str(data or os.path.join(SHIPPED, task))
    path = E.find_annotation(task, data)
    folder = data if os.path.isdir(data) else os.path.dirname(path)
    header, done = E.load_done(str(predictions), repair=False)
    if header and header["run"]["data_sha256"] != E.sha256_files(E.question_files(task, data)[0]):
        raise cli.Error(f"{predictions} answers other questions than {data}'s; pass --data with the sets it was made on")
    items, wide = t.read(path, folder), sidecar_forms(folder)
    preds, scores = {q: r["answer"] for q, r in done.items()}, {}
    for it in items:
        if str(it["qid"]) in preds:
            x = E.item_score(t.metric, E.final_answer(preds[str(it["qid"])]), it)
            question = it["question"].removesuffix(E.KIE_SUFFIX)  # OCRBench's key-information prompt
            layout, form = wide.get((os.path.abspath(it["image"]), question), ("", form_of(task, it["question"])))
            scores.setdefault(f"{layout}: {form}" if by_layout and layout else form, []).append(float(x))
    return {f: (len(xs), 100 * sum(xs) / len(xs)) for f, xs in sorted(scores.items())}


def main(argv=None):
    p = cli.Parser(prog="data/forms.py", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="holds <task>.jsonl predictions from evaluate.py --out")
    p.add_argument("--data", default=SHIPPED, help="the sets they answer, a folder per task (default: the shipped sets)")
    p.add_argument("--by-layout", action="store_true", help="a row per layout and form (a data/wide.py family's sets)")
    args = p.parse_args(argv)
    found = [t for t in E.TASKS if os.path.isfile(os.path.join(args.folder, t + ".jsonl"))]
    if not found:
        raise cli.Error(f"no <task>.jsonl in {args.folder}; write them with evaluate.py --out")
    rows = [f"| {t} | {form} | {n} | {s:.1f} |" for t in found for form, (n, s) in
            by_form(t, os.path.join(args.folder, t + ".jsonl"), os.path.join(args.data, t), args.by_layout).items()]
    print("| task | question form | n | score |\n|---|---|---|---|\n" + "\n".join(rows))


if __name__ == "__main__":
    sys.exit(cli.run_main("data/forms.py", main))
