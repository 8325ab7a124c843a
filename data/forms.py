"""
Scores by question form: which of the generator's questions a model answers, in each task's own
metric, from the predictions evaluate.py wrote for the shipped sets. A diagnostic for the embedded
teacher: a task's score hides that it answers one form of question and not another.

    python evaluate.py --task chartqa --out runs/eval/chartqa.jsonl     # ... one file per task
    python -m data.forms runs/eval                                      # prints a markdown table
"""
import argparse
import json
import os
import re
import sys

import evaluate as E

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


def by_form(task, predictions, data=None):
    """{form: (n, mean score in %)} over the main set's questions that have a prediction."""
    t = E.TASKS[task]
    data = data or os.path.join(E.HERE, "data", "eval", task)
    path = E.find_annotation(task, data)
    items = t.read(path, data if os.path.isdir(data) else os.path.dirname(path))
    preds = {q: r["answer"] for q, r in E.load_done(str(predictions), repair=False)[1].items()}  # after the run's key
    scores = {}
    for it in items:
        if str(it["qid"]) in preds:
            x = E.item_score(t.metric, E.final_answer(preds[str(it["qid"])]), it)
            scores.setdefault(form_of(task, it["question"]), []).append(float(x))
    return {f: (len(xs), 100 * sum(xs) / len(xs)) for f, xs in scores.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="holds <task>.jsonl predictions from evaluate.py --out")
    args = p.parse_args(argv)
    print("| task | question form | n | score |\n|---|---|---|---|")
    found = False
    for task in E.TASKS:
        f = os.path.join(args.folder, task + ".jsonl")
        if os.path.isfile(f):
            found = True
            for form, (n, s) in by_form(task, f).items():
                print(f"| {task} | {form} | {n} | {s:.1f} |")
    if not found:
        sys.exit(f"data/forms.py: error: no <task>.jsonl in {args.folder}; write them with evaluate.py --out")


if __name__ == "__main__":
    main()
