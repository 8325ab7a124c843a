"""The wide families: each kind of synth.py drawn in many fonts, layouts, colours and renderings, and
asked in many phrasings, split into a training family and a held-out family.

    python data/wide.py --kind chart --family heldout --seed 3 --out /tmp/chart.png   # one sample
    python data/build.py --heldout-family    # writes data/eval-heldout/ (the held-out family's sets)

From code: make_sample(kind, seed, Config(family=F)) here draws every family: "train" and "heldout" here, "shipped"
through synth.make_sample.

What the held-out family never shares with training (a seed range alone is not a held-out split):
- fonts: the DejaVu families (training: Pillow's built-in font and eight others, data/fonts/);
- layouts: forms in two side-by-side columns and with right-aligned labels; receipts with the unit price
  before the quantity; horizontal grouped bars; infographics in full-width bands and caption-first cells;
- phrasings: every question also carries `reworded`, a phrasing no training question uses, and build.py writes
  each held-out DocVQA question in a second and a third such phrasing (reworded2 and reworded3, FRESH_PHRASES and
  FRESH3_PHRASES).
The held-out family also draws each two-series chart's pair of names in either order, from a stream of its own, so
that its sets do not reward a reader that finds a series by its name's usual place ("2022" before "2023"); unlike
--series-order it leaves the colours, the accent on the first bar.
Both families draw every layout's answers at every position (a test checks it), and the training family
also draws synth.py's own layouts in its fonts, stacked bars and legends placed right or below (MORE_LAYOUTS),
and, with Config(glyph_vary=S) (teacher.py --glyph-vary), a share S of its images with reshaped glyphs (vary_glyphs),
and, with Config(more_fonts=True) (teacher.py --more-fonts), eleven more faces (MORE_FONTS), and, with
Config(synonyms=True) (teacher.py --synonyms), more phrasings with other key words (SYNONYM_PHRASES), and, with
Config(arrangements=True) (teacher.py --arrangements), four more chart and infographic layouts (ARRANGEMENTS), and,
with Config(legends=True) (teacher.py --legends), two-series legends in the other order from the bars' or in a
column, so that a series is found by its colour, not by its place in the legend, and, with
Config(series_order=True) (teacher.py --series-order), each pair of series names drawn in either order and either
colour, so that a name does not tell the first bar from the second either.
"""
import argparse, io, json, math, random, re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from data import synth as S
from data.synth import Canvas, _fmt, _pair_reasoning, _reason

FONT_DIR = Path(__file__).resolve().parent / "fonts"
FONTS = {"train": [None, "LiberationSans-Regular.ttf", "LiberationSans-Bold.ttf", "LiberationSerif-Regular.ttf",
                   "LiberationSansNarrow-Regular.ttf", "LiberationMono-Regular.ttf", "Caladea-Regular.ttf",
                   "Roboto-Regular.ttf", "RobotoCondensed-Regular.ttf", "OpenSans-Regular.ttf"],
         "heldout": ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf"]}
FAMILIES = tuple(FONTS)
MORE_FONTS = ["Lato-Regular.ttf", "Lato-Bold.ttf", "texgyreheros-regular.otf", "texgyreheros-bold.otf",  # more training
              "texgyretermes-regular.otf", "texgyrepagella-regular.otf", "texgyrebonum-regular.otf",  # faces, added on
              "texgyreschola-regular.otf", "texgyrecursor-regular.otf", "texgyrecursor-bold.otf",  # 2026-12-07 and drawn
              "texgyreadventor-regular.otf"]  # only with Config(more_fonts=True): earlier draws stay as they were
LAYOUTS = {  # per kind: the training family's layouts, then the held-out family's own
    "doc": {"train": ["inline", "columns", "leaders", "grid", "above", "shipped"], "heldout": ["twocol", "rightlabel"]},
    "table": {"train": ["iqa", "qia", "iqpa", "ia", "shipped"], "heldout": ["ipqa"]},
    "chart": {"train": ["vbar", "hbar", "vgroup", "line", "shipped"], "heldout": ["hgroup"]},
    "info": {"train": ["panels", "beside", "icons", "progress", "shipped"], "heldout": ["bands", "capfirst"]},
    "scene": {"train": ["shipped"], "heldout": []},
}
MORE_LAYOUTS = {"chart": ["vstack"]}  # training layouts added on 2026-12-06, drawn by the training family only (with
# its legend placements), so that the held-out family's sets stay as drawn: more ways to bind a series to its colour
ARRANGEMENTS = {"chart": ["hstack", "mirror"], "info": ["stack", "sidecap"]}  # training layouts added on 2026-12-07,
# drawn only with Config(arrangements=True): the held-out layouts' parts in other arrangements (horizontal bars with
# two series, stacked or mirrored; a caption before its number, above it in one column or beside it in a grid)
HELDOUT_SHARE = 0.5  # of held-out samples drawn in a held-out layout; the rest in training layouts (new fonts, phrasings)

PHRASES = {  # per question form: training phrasings, then the held-out ones (`reworded`)
    "field": (["What is the {q}?", "What is the {q} on this document?", "Which {q} is given?", "Give the {q}.",
               "What {q} is written on the form?"], ["Could you read out the {q}?", "The {q} is what?", "Find the {q}."]),
    "title": (["What is the title of the document?", "What is the heading of this page?"],
              ["What does the page's title say?"]),
    "amount": (["What is the amount for {i}?", "How much was charged for {i}?", "What is the line total for {i}?"],
               ["What did the {i} cost in all?"]),
    "qty": (["What is the quantity of {i}?", "How many {i} were bought?", "What quantity of {i} is listed?"],
            ["What count is shown for {i}?"]),
    "price": (["What is the unit price of {i}?", "What does one {i} cost?", "What is the price each for {i}?"],
              ["At what price per unit was {i} sold?"]),
    "money": (["What is the {q}?", "How much is the {q}?", "What is the {q} on the receipt?"], ["State the {q}."]),
    "store": (["What is the name of the store?", "Which store issued this receipt?"], ["Who issued the receipt?"]),
    "value": (["What is the value for {c}?", "What value does {c} have?", "How much is shown for {c}?"],
              ["Read the value of {c}."]),
    "series": (["What is the {s} value for {c}?", "What value does {s} have in {c}?"], ["In {c}, what is {s}?"]),
    "which": (["Which {k} has a value of {v}?", "Which {k} shows {v}?"], ["For which {k} is the value {v}?"]),
    "percent": (["What percentage {c}?", "What share {c}?", "How many percent {c}?"], ["Which percentage {c}?"]),
    "info_title": (["What is the title of the infographic?", "What is the infographic's heading?"],
                   ["What does the infographic's title say?"]),
    "total": (["What is the total?", "What is the total amount?"], ["How much was paid in all?"]),
    "distance": (["How far is {p} according to the green sign?", "What distance does the green sign give for {p}?"],
                 ["On the green sign, how far away is {p}?"]),
    "street": (["What is the name of the street?", "Which street does the sign name?"], ["What street is this?"]),
    "stop": (["What does the red sign say?", "What is written on the red sign?"], ["Read the red sign."]),
    "shop": (["What is written on the shop sign?", "What does the shop sign say?"], ["Which shop is this?"]),
    "speed": (["What is the speed limit?", "What speed limit is posted?"], ["How fast may one drive here?"]),
}
MORE_PHRASES = {  # training phrasings added on 2026-12-06 (widen_phrasings: their own stream, so that the images
    # and the held-out sets stay as drawn before them); each at least 2 word edits from every held-out phrasing
    "field": ["Tell me the {q}.", "What does the form give as the {q}?", "What {q} appears on this page?",
              "Please give the {q}.", "What is the {q} shown here?", "Which {q} does the form list?",
              "What is the {q} according to the document?", "What is the {q} on the page?"],
    "title": ["What is the document titled?", "What is written at the top of the page?",
              "Give the title of this document.", "What's the title?", "Tell me the document's title."],
    "amount": ["What amount is listed for {i}?", "What is charged for {i}?", "What was paid for {i}?",
               "Give the amount for {i}.", "{i}: what is the amount?"],
    "qty": ["How many units of {i} are listed?", "Give the quantity for {i}.", "What is the number of {i}?",
            "{i}: what quantity?"],
    "price": ["How much is one {i}?", "What is the per-unit price of {i}?", "Give the unit price for {i}.",
              "What does {i} cost per unit?"],
    "money": ["What {q} is shown?", "What {q} does the receipt show?", "Tell me the {q}."],
    "store": ["What store is this receipt from?", "Give the store's name.", "What is the shop on the receipt?"],
    "value": ["What number does {c} show?", "Tell me the value at {c}.", "What is {c}'s value?", "What is shown for {c}?"],
    "series": ["What is {c}'s {s} value?", "Give the {s} value of {c}.", "What is the value of {s} for {c}?"],
    "which": ["What {k} has the value {v}?", "Name the {k} with a value of {v}.", "Which {k} is {v}?"],
    "percent": ["What percent {c}?", "Give the percentage who {c}.", "What share of people {c}?"],
    "info_title": ["What is the infographic titled?", "Give the title of the infographic.",
                   "What heading does the infographic have?"],
    "total": ["What is the grand total?", "Give the total.", "How much is the total?", "What does it total?"],
    "distance": ["Give the distance to {p} on the green sign.", "What is the distance to {p}?"],
    "street": ["What street does the sign show?", "Give the street name."],
    "stop": ["Tell me what the red sign says."],
    "shop": ["Tell me the shop sign's text."],
    "speed": ["What speed does the sign allow?", "Give the speed limit."],
}
SYNONYM_PHRASES = {  # training phrasings added on 2026-12-07, drawn only with Config(synonyms=True) (teacher.py
    # --synonyms; earlier draws stay as they were): each form asked with other key words and frames, so that a question
    # is told by more than one word ("count", "seller", "each"); each 2+ word edits from every held-out phrasing
    "field": ["Can you tell me the {q}?", "Show me the {q}.", "Which {q} does this page give?", "What's the {q} here?",
              "What is entered as the {q}?", "What is listed under {q}?", "What is printed next to {q}?",
              "Please report the {q}.", "{q}: what is it?", "What does the document state as the {q}?",
              "Which {q} is filled in?", "What {q} does it show?"],
    "title": ["What is this document called?", "Give the document's heading.", "What does the heading read?",
              "Tell me the title.", "What title does the page have?", "Name the document's title.",
              "What is the name of this document?", "What does the top of the page say?"],
    "amount": ["What is the total for {i}?", "How much was spent on {i}?", "What was the charge for {i}?",
               "What is the line amount of {i}?", "Give the total paid for {i}.", "What does the {i} line total?",
               "Tell me the amount charged for {i}.", "What is the sum for {i}?", "How much did {i} cost altogether?",
               "What do the {i} add up to?"],
    "qty": ["How many {i} are there?", "What is the count of {i}?", "What number of {i} was bought?",
            "How many {i} did the customer buy?", "Give the count for {i}.", "Tell me how many {i} were bought.",
            "How many of {i} are on the receipt?", "{i}: how many?", "What is the number of units for {i}?",
            "How many {i} were purchased?"],
    "price": ["What is the price of a single {i}?", "What does each {i} cost?", "How much does a single {i} cost?",
              "What is {i}'s unit price?", "What was charged per {i}?", "What is the cost per unit of {i}?",
              "How much for one {i}?", "Tell me the unit cost of {i}.", "What is the rate for one {i}?",
              "What is the price per piece of {i}?"],
    "money": ["What {q} was paid?", "What is the amount of the {q}?", "Give the {q} amount.", "How much was the {q}?",
              "Tell me the {q} amount.", "What is the {q} amount on the receipt?", "Read the {q} off the receipt.",
              "What was the {q}?"],
    "store": ["Who is the seller on this receipt?", "Which business is this receipt from?", "What is the merchant's name?",
              "Name the shop.", "Which company is the receipt from?", "Whose receipt is this?", "Where was this bought?",
              "What name is at the top of the receipt?", "What shop sold these items?", "Who sold these items?"],
    "value": ["What value is shown for {c}?", "How high is {c}?", "What is the figure for {c}?",
              "What does the chart give for {c}?", "Give the number for {c}.", "What number is given for {c}?",
              "Tell me {c}'s number.", "What does {c} reach?", "What is the reading for {c}?"],
    "series": ["For {c}, what is the {s} value?", "What {s} value is shown for {c}?", "How much is {s} in {c}?",
               "Give {c}'s value for {s}.", "What does {s} reach in {c}?", "Tell me the {s} figure for {c}.",
               "What number does {s} show for {c}?"],
    "which": ["Which {k} reaches {v}?", "What {k} is at {v}?", "Name the {k} whose value is {v}.", "Which {k} has {v}?",
              "Tell me which {k} has the value {v}.", "Which {k} corresponds to {v}?", "What {k} shows {v}?"],
    "percent": ["What is the percentage who {c}?", "How many people {c}, in percent?", "What proportion {c}?",
                "Give the share who {c}.", "Tell me what percentage {c}.", "What is the share of people who {c}?",
                "How large a share {c}?"],
    "info_title": ["What is the name of the infographic?", "Tell me the infographic's title.",
                   "What is this infographic called?", "What title does the infographic carry?",
                   "Name the infographic's title."],
    "total": ["What is the final total?", "How much was the bill?", "What was paid in total?", "What is the total due?",
              "What is the receipt's total?", "Tell me the total amount.", "How much does the receipt total?",
              "What is the sum at the bottom?"],
    "distance": ["How far away is {p}?", "How far to {p}?", "Tell me the distance to {p}.",
                 "According to the green sign, how far is {p}?", "What is the distance given for {p}?"],
    "street": ["What street is named on the sign?", "Which street is this sign for?", "Tell me the street name.",
               "What road is named here?", "Name the street."],
    "stop": ["What is printed on the red sign?", "What text does the red sign show?", "Give the red sign's text.",
             "What does the red sign tell drivers?"],
    "shop": ["What is the shop's name on the sign?", "What name does the shop sign show?", "Give the text of the shop sign.",
             "What shop is shown on the sign?", "Name the shop on the sign."],
    "speed": ["What is the maximum speed?", "How fast can you go here?", "What is the posted limit?",
              "What speed is allowed here?", "Tell me the speed limit."],
}
FRESH_PHRASES = {  # a second held-out phrasing (`reworded2`), written with MORE_PHRASES and never trained on, each at
    # least 3 word edits from every training phrasing: the check of a choice (more training phrasings) made because
    # the first held-out phrasing read poorly
    "field": ["I need the {q} from this page.", "Look up the {q} for me.", "What value sits beside the {q} label?"],
    "title": ["Which heading does this document carry?"], "amount": ["How much does the {i} line come to?"],
    "qty": ["In what quantity was {i} bought?"], "price": ["How is {i} priced per item?"],
    "money": ["What figure is given as the {q}?"], "store": ["What business printed this receipt?"],
    "value": ["Which figure belongs to {c}?"], "series": ["What does {c} show for {s}?"],
    "which": ["{v} is the value of which {k}?"], "percent": ["What portion {c}, in percent?"],
    "info_title": ["Which heading is at the top of the infographic?"], "total": ["What does the receipt come to?"],
    "distance": ["The green sign puts {p} how far off?"], "street": ["What is this street called?"],
    "stop": ["Which word is on the red sign?"], "shop": ["Which business does the sign name?"],
    "speed": ["Up to what speed may cars go?"],
}
FRESH3_PHRASES = {  # a third held-out rewording (`reworded3`), written on 2026-12-07, after SYNONYM_PHRASES, by a
    # helper who saw the phrasings and no model's answers: the check of a choice (SYNONYM_PHRASES) made on the first two
    # rewordings' misses. Each 3+ word edits from every training phrasing of its form ("What's" read as "What is": five
    # that were closer are dropped), 2+ from every other held-out one
    "field": ["What does it say for {q}?", "Can you find the {q} for me?", "Which {q} is on this form?"],
    "title": ["Can you read me the title of this document?", "What's the big heading at the top?"],
    "amount": ["How much did I pay for the {i} altogether?", "What's the total cost of the {i}?"],
    "qty": ["How many {i} did I get?", "I'd like to know how many {i} were bought."],
    "price": ["How much does {i} cost per item?"],
    "money": ["How much does the {q} come to?"],
    "store": ["What's the store called?", "Which shop did I buy these from?"],
    "value": ["What's the number for {c} on the chart?", "Which number goes with {c}?"],
    "series": ["Looking at {c}, what's the {s} figure?", "Can you give me the {s} number for {c}?"],
    "which": ["Which {k} comes in at {v}?", "Find me the {k} that has {v}."],
    "percent": ["Can you tell me what percent {c}?"],
    "info_title": ["Which title does this infographic have?"],
    "total": ["What did everything come to?"],
    "distance": ["How far do I have to go to reach {p}?", "What distance to {p} is shown on the green sign?"],
    "street": ["Which street am I on?", "What does the street sign say?"],
    "stop": ["Can you read the red sign for me?", "What does it say on the red sign?"],
    "shop": ["What's the name of this shop?", "What does the sign over the shop say?"],
    "speed": ["How fast am I allowed to drive here?", "What's the speed limit on this road?"],
}
SHIPPED_FORMS = [  # synth.py's own questions -> (form, slot): so its layouts are asked in every phrasing too
    (r"What is the title of the document\?", "title", None), (r"What is the name of the store\?", "store", None),
    (r"What is the title of the infographic\?", "info_title", None), (r"What is the total\?", "total", None),
    (r"What is the amount for (.+)\?", "amount", "i"), (r"What is the quantity of (.+)\?", "qty", "i"),
    (r"What is the value for (.+)\?", "value", "c"), (r"What percentage (.+)\?", "percent", "c"),
    (r"How far is (.+) according to the green sign\?", "distance", "p"), (r"What is the name of the street\?", "street", None),
    (r"What does the red sign say\?", "stop", None), (r"What is written on the shop sign\?", "shop", None),
    (r"What is the speed limit\?", "speed", None), (r"What is the (.+)\?", "field", "q"),
]
LABELS = {  # more ways to print a form's labels
    "invoice number": ["Invoice No", "Invoice #", "Invoice Number"], "order ID": ["Order ID", "Order No", "PO Number"],
    "date": ["Date", "Issued", "Date of issue"], "due date": ["Due Date", "Payment due", "Due"],
    "name": ["Name", "Customer", "Full name"], "company name": ["Company", "Firm", "Organisation"],
    "city": ["City", "Town", "Location"], "phone number": ["Phone", "Tel", "Telephone"],
    "account number": ["Account", "Account No", "Acct #"], "reference code": ["Ref", "Reference", "Ref code"],
}
HEADERS = {"Item": ["Item", "Description", "Product"], "Qty": ["Qty", "Quantity", "Units"],
           "Price": ["Price", "Unit Price", "Each"], "Amount": ["Amount", "Line Total", "Sum"]}
SERIES = [("2022", "2023"), ("Men", "Women"), ("Online", "In store"), ("Plan", "Actual"), ("Day", "Night")]
PRODUCTS = ["Tea", "Rice", "Wool", "Steel", "Corn", "Coal", "Wine", "Salt"]
FOOTERS = ["Thank you!", "Page 1 of 1", "Signed: ________", "Keep this copy", "Questions? Call 555-0100"]


# ---------------------------------------------------------------- style: font, colours, rendering
class Style:
    """One sample's look: a font file at a cap height, paper and ink colours, and the post-render damage."""

    def __init__(self, rng, cfg, name_turns=None):
        family, train = cfg.family, cfg.family == "train"
        self.rng, self.family = rng, family
        self.legends, self.series_order = cfg.legends and train, cfg.series_order and train  # opt-ins: training only
        self.font_path = rng.choice(FONTS[family] + (MORE_FONTS if cfg.more_fonts and train else []))
        self.dark = rng.random() < 0.15
        self.paper = (rng.randint(20, 45),) * 3 if self.dark else rng.choice(
            [(255, 255, 255), S._light(rng), (rng.randint(235, 250), rng.randint(228, 242), rng.randint(205, 225))])
        self.ink = (rng.randint(215, 250),) * 3 if self.dark else S._dark(rng)
        self.accent = S._vivid(rng)
        self.name_turns = name_turns  # the held-out family's stream that turns a pair of series names (make_sample)

    def font_file(self):
        return None if self.font_path is None else str(FONT_DIR / self.font_path)

    def font(self, cap):
        """The sample's font at a cap height of `cap` px (cap ranges match synth.Config's text heights)."""
        ratio = 0.70 if self.font_path is None else _cap_ratio(self.font_path)
        return S.get_font(max(8, round(cap / ratio)), self.font_file())

    def body(self):
        return self.font(self.rng.uniform(14, 19))

    def title(self):
        return self.font(self.rng.uniform(19, 23))

    def big(self):
        return self.font(self.rng.uniform(21, 27))


_CAP = {}


def _cap_ratio(path):
    if path not in _CAP:
        b = ImageFont.truetype(str(FONT_DIR / path), 100).getbbox("H")
        _CAP[path] = (b[3] - b[1]) / 100
    return _CAP[path]


def ask(rng, form, pos, key=None, **slots):
    """A question in a training phrasing, its held-out rewording, where its answer sits (pos = (i, n)), and the
    printed text that names it (key: a label, a category, a caption), for teacher.py's pointers."""
    train, held = PHRASES[form]
    return dict(question=rng.choice(train).format(**slots), reworded=rng.choice(held).format(**slots), form=form,
                pos=pos, key=key)


def damage(img, rng, paper):
    """Small rotation, blur, JPEG and noise, each on some images. Returns (image, angle in degrees)."""
    angle = rng.uniform(-1.5, 1.5) if rng.random() < 0.4 else 0.0
    if angle:
        img = img.rotate(angle, resample=Image.BICUBIC, fillcolor=paper)
    if rng.random() < 0.25:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    if rng.random() < 0.25:  # dense dust: per-pixel Gaussian noise would make the shipped PNGs 20x larger
        S._speckle(img, rng, rng.uniform(2, 6))
    if rng.random() < 0.3:
        b = io.BytesIO()
        img.save(b, "JPEG", quality=rng.randint(45, 90))
        img = Image.open(b).convert("RGB")
    return img, angle


def vary_glyphs(img, rng, share, style, items):
    """On `share` of the images, new glyph shapes from the same fonts: wider or narrower (x 0.8 to 1.25), slanted
    (a shear of up to 12 degrees either way) and bolder (the ink grown by a pixel), each on some of them. The boxes
    of `items` follow. More faces than the font files hold, to test whether breadth in faces carries to unseen ones."""
    if rng.random() >= share:
        return img
    sx = rng.uniform(0.8, 1.25) if rng.random() < 0.7 else 1.0
    k = rng.uniform(-0.21, 0.21) if rng.random() < 0.5 else 0.0
    if sx != 1.0 or k:  # x' = sx * x + k * y + c, y' = y; c keeps x' >= 0
        w, h = img.size
        c = -k * h if k < 0 else 0.0
        img = img.transform((math.ceil(sx * w + abs(k) * h), h), Image.AFFINE, (1 / sx, -k / sx, -c / sx, 0, 1, 0),
                            resample=Image.BICUBIC, fillcolor=style.paper)
        for item in items:
            x0, y0, x1, y1 = item["box"]
            xs = [sx * x + k * y + c for x in (x0, x1) for y in (y0, y1)]
            item["box"] = [max(0, math.floor(min(xs))), y0, min(img.width, math.ceil(max(xs))), y1]
    if rng.random() < 0.3:  # ink is the darker colour on light paper, the lighter on dark
        img = img.filter(ImageFilter.MaxFilter(3) if style.dark else ImageFilter.MinFilter(3))
    return img


def rotate_box(box, angle, w, h):
    """Where a box lands after Image.rotate(angle) about the image centre: its corners' bounding box."""
    t = math.radians(angle)
    c, s, cx, cy = math.cos(t), math.sin(t), w / 2, h / 2
    pts = [((x - cx) * c + (y - cy) * s + cx, -(x - cx) * s + (y - cy) * c + cy) for x in box[::2] for y in box[1::2]]
    return [min(p[0] for p in pts), min(p[1] for p in pts), max(p[0] for p in pts), max(p[1] for p in pts)]


# ---------------------------------------------------------------- documents (forms)
def _form_fields(rng):
    n = rng.randint(3, 7)
    numeric, dec = (S.MONEY_FIELDS, 2) if rng.random() < 0.6 else (S.COUNT_FIELDS, 0)
    nums = [(lab, q, rng.randint(100, 99999) if dec else rng.randint(1, 250)) for lab, q in rng.sample(numeric, 2)]
    texts = [(rng.choice(LABELS[q]), q, mk(rng)) for _, q, mk in rng.sample(S.TEXT_FIELDS, n - 2)]
    fields = [(lab, q, _fmt(v, dec)) for lab, q, v in nums] + texts
    rng.shuffle(fields)
    return fields, nums, dec


def _doc(rng, st, layout):
    f, ft = st.body(), st.title()
    fields, nums, dec = _form_fields(rng)
    title = rng.choice(S.DOC_TITLES)
    lh, m = int(f.size * rng.uniform(1.5, 2.0)), rng.randint(16, 28)
    kw = max(Canvas.width(lab + ":", f) for lab, _, _ in fields)
    vw = max(Canvas.width(v, f) for _, _, v in fields)
    n, band = len(fields), rng.random() < 0.3
    shown = str.upper if layout == "above" else str  # the label as printed
    rows = (n + 1) // 2 if layout in ("twocol", "above") else n
    colw = {"inline": kw + vw + 12, "columns": kw + vw + 24, "leaders": kw + vw + 60, "grid": kw + vw + 36,
            "above": 2 * max(kw, vw) + 30, "twocol": 2 * (kw + vw) + 50, "rightlabel": kw + vw + 24}[layout]
    lh = lh + f.size if layout == "above" else lh
    W = S._side(rng, S.Config(), 2 * m + max(colw, Canvas.width(title, ft) + 20))
    H = S._side(rng, S.Config(), 2 * m + ft.size + 30 + lh * rows * 4 // 3 + f.size * 2)
    cv = Canvas(W, H, st.paper)
    if rng.random() < 0.35:  # page frame
        cv.draw.rectangle([m // 3, m // 3, W - m // 3, H - m // 3], outline=st.ink, width=rng.randint(1, 3))
    y = m
    if band:  # header band: the title in paper colour on the accent
        cv.draw.rectangle([0, 0, W, ft.size + 2 * m // 2 + 10], fill=st.accent)
        cv.text(W // 2, m // 2 + 4, title, ft, (250, 250, 250), "center")
        y = ft.size + m + 14
    else:
        align = rng.choice(["left", "center", "right"])
        cv.text({"left": m, "center": W // 2, "right": W - m}[align], y, title, ft, st.ink, align, stroke=rng.randint(0, 1))
        y += ft.size + 8
        cv.draw.line([(m // 2, y), (W - m // 2, y)], fill=st.ink, width=1)
        y += 10
    x0 = m + rng.randint(0, max(0, W - 2 * m - colw) // 3)
    shade = tuple(max(0, c - 18) if not st.dark else c + 25 for c in st.paper)
    for k, (lab, _, v) in enumerate(fields):
        if layout == "inline":
            cv.text(x0, y, f"{lab}: {v}", f, st.ink)
        elif layout == "columns":
            cv.text(x0, y, lab + ":", f, st.ink)
            cv.text(x0 + kw + 24, y, v, f, st.ink)
        elif layout == "leaders":  # label, a row of dots, the value flush right
            cv.text(x0, y, lab, f, st.ink)
            dots_from, dots_to = x0 + Canvas.width(lab, f) + 6, W - m - Canvas.width(v, f) - 6
            for x in range(dots_from, dots_to, 6):
                cv.draw.point((x, y + int(f.size * 0.8)), fill=st.ink)
            cv.text(W - m, y, v, f, st.ink, "right")
        elif layout == "grid":  # bordered label | value cells, label cells shaded
            x1, x2 = x0 + kw + 14, x0 + kw + vw + 36
            if rng.random() < 0.6 or k == 0:
                cv.draw.rectangle([x0 - 4, y - 4, x1, y + lh - 6], fill=shade)
            cv.draw.rectangle([x0 - 4, y - 4, x2, y + lh - 6], outline=st.ink)
            cv.draw.line([(x1, y - 4), (x1, y + lh - 6)], fill=st.ink)
            cv.text(x0 + 2, y + 2, lab, f, st.ink)
            cv.text(x1 + 8, y + 2, v, f, st.ink)
        elif layout == "above":  # a small label above its value, two fields to a row
            col, row = k % 2, k // 2
            fs = st.font(max(10, f.size * 0.5))
            x, yy = x0 + col * (max(kw, vw) + 30), y + row * lh
            cv.text(x, yy, shown(lab), fs, st.ink)
            cv.text(x, yy + fs.size + 4, v, f, st.ink)
        elif layout == "twocol":  # two side-by-side columns of "Label: value"
            col, row = k % 2, k // 2
            cv.text(x0 + col * (kw + vw + 50), y + row * lh, f"{lab}: {v}", f, st.ink)
        else:  # rightlabel: labels flush right against a gutter, values flush left after it
            cv.text(x0 + kw, y, lab + ":", f, st.ink, "right")
            cv.text(x0 + kw + 14, y, v, f, st.ink)
        if layout not in ("above", "twocol"):  # those two place their rows from y, two fields to a row
            y += lh + (lh // 3 if rng.random() < 0.15 else 0)  # an uneven gap now and then: no fixed pitch
    if layout in ("above", "twocol"):
        y += rows * lh
    if rng.random() < 0.5 and y + 2 * f.size < H - m:  # a footer: more text that answers nothing
        right, footer = rng.random() < 0.5, rng.choice(FOOTERS)
        if Canvas.width(footer, f) <= W - 2 * m:  # never cut off at the page's edge
            cv.text(W - m if right else m, H - m - f.size, footer, f, st.ink, "right" if right else "left")
    qa = [dict(ask(rng, "field", (k, n), shown(lab), q=q), answer=v, type="form") for k, (lab, q, v) in enumerate(fields)]
    qa.append(dict(ask(rng, "title", (0, 1)), answer=title, type="layout"))
    qname = {lab: q for lab, q, _ in nums}
    r = _pair_reasoning(rng, [(lab, v) for lab, _, v in nums], dec, qname.get, "Which is larger, the {} or the {}?")
    return cv, qa, [r]


# ---------------------------------------------------------------- tables (receipts)
COLUMNS = {"iqa": ("Item", "Qty", "Amount"), "qia": ("Qty", "Item", "Amount"), "iqpa": ("Item", "Qty", "Price", "Amount"),
           "ia": ("Item", "Amount"), "ipqa": ("Item", "Price", "Qty", "Amount")}


def _table(rng, st, layout):
    f, ft = st.body(), st.title()
    cols = COLUMNS[layout]
    n = rng.randint(3, 6)
    items = rng.sample(S.ITEMS, n)
    qty = [rng.randint(1, 9) for _ in items]
    price = [rng.randint(50, 1500) for _ in items]
    amt = [q * p for q, p in zip(qty, price)]
    cell = {"Item": items, "Qty": [str(q) for q in qty], "Price": [_fmt(p, 2) for p in price], "Amount": [_fmt(a, 2) for a in amt]}
    head = [rng.choice(HEADERS[c]) for c in cols]
    sub = sum(amt)
    tax = round(sub * rng.choice([0.05, 0.08, 0.1])) if rng.random() < 0.5 else 0
    foot = ([("Subtotal", _fmt(sub, 2)), ("Tax", _fmt(tax, 2))] if tax else []) + [("TOTAL", _fmt(sub + tax, 2))]
    rows = [[cell[c][i] for c in cols] for i in range(n)]
    cw = [max(Canvas.width(r[i], f) for r in rows + [head]) + 16 for i in range(len(cols))]
    cw[-1] = max(cw[-1], max(Canvas.width(v, f) for _, v in foot) + 16)
    cw[0] = max(cw[0], max(Canvas.width(k, f) for k, _ in foot) + 16)
    store = rng.choice(S.STORES)
    lh, m, lines = int(f.size * rng.uniform(1.5, 1.9)), rng.randint(14, 26), rng.choice(["grid", "head", "shaded", "none"])
    W = S._side(rng, S.Config(), 2 * m + max(sum(cw), Canvas.width(store, ft)))
    H = S._side(rng, S.Config(), 2 * m + ft.size + 14 + lh * (n + 1 + len(foot)) + 8)
    cv = Canvas(W, H, st.paper)
    centred = rng.random() < 0.7
    cv.text(W // 2 if centred else m, m, store, ft, st.ink, "center" if centred else "left", stroke=rng.randint(0, 1))
    x0 = (W - sum(cw)) // 2
    xs = [x0 + sum(cw[:i]) for i in range(len(cols))]
    y = m + ft.size + 14 + rng.randint(0, max(0, (H - 2 * m - ft.size - 14 - lh * (n + 1 + len(foot))) // 2))
    shade = tuple(max(0, c - 16) if not st.dark else c + 22 for c in st.paper)
    for k, row in enumerate([head] + rows):
        if lines == "shaded" and k % 2 == 1:
            cv.draw.rectangle([x0, y, x0 + sum(cw), y + lh - 2], fill=shade)
        for i, s in enumerate(row):  # names left-aligned, numbers right-aligned in their column
            left = cols[i] == "Item"
            cv.text(xs[i] + 5 if left else xs[i] + cw[i] - 5, y + 3, s, f, st.ink, "left" if left else "right")
        if lines == "grid" or k == 0 and lines != "none":
            cv.draw.line([(x0, y + lh - 1), (x0 + sum(cw), y + lh - 1)], fill=st.ink)
        y += lh
    cv.draw.line([(x0, y + 2), (x0 + sum(cw), y + 2)], fill=st.ink)
    y += 6
    for k, v in foot:
        cv.text(xs[0] + 5, y + 3, k, f, st.ink)
        cv.text(xs[-1] + cw[-1] - 5, y + 3, v, f, st.ink, "right")
        y += lh
    qa = [dict(ask(rng, "amount", (i, n), it, i=it), answer=cell["Amount"][i], type="table/list") for i, it in enumerate(items)]
    qa += [dict(ask(rng, "qty", (i, n), items[i], i=items[i]), answer=cell["Qty"][i], type="table/list")
           for i in rng.sample(range(n), 2) if "Qty" in cols]
    qa += [dict(ask(rng, "price", (i, n), items[i], i=items[i]), answer=cell["Price"][i], type="table/list")
           for i in rng.sample(range(n), 2) if "Price" in cols]
    qa += [dict(ask(rng, "money", (j, len(foot)), k, q=k.lower()), answer=v, type="table/list") for j, (k, v) in enumerate(foot)]
    qa.append(dict(ask(rng, "store", (0, 1)), answer=store, type="layout"))
    reas = [_pair_reasoning(rng, list(zip(items, amt)), 2, lambda it: f"amount for {it}", "Which costs more in total, {} or {}?")]
    return cv, qa, reas


# ---------------------------------------------------------------- charts
def _chart(rng, st, layout):
    f, ft = st.font(rng.uniform(13, 17)), st.title()
    horizontal = layout in ("hbar", "hgroup", "hstack", "mirror")
    series = 2 if layout in ("vgroup", "hgroup", "vstack", "hstack", "mirror") else 1
    stacked = layout in ("vstack", "hstack")  # each value labelled inside its segment: from 30, so a segment holds it
    legend = rng.choice(["left", "right", "bottom"]) if series > 1 and st.family == "train" else "left"
    swap = column = False  # with Config(legends=True) only: draws without it stay as they were
    if st.legends and series > 1 and layout != "mirror":
        swap, column = rng.random() < 0.5, rng.random() < 0.4
    turn_names = turn_colours = False  # with Config(series_order=True) only
    if st.series_order and series > 1:
        turn_names, turn_colours = rng.random() < 0.5, rng.random() < 0.5
    elif st.name_turns and series > 1:  # the held-out family: a set must not reward reading a name by its usual place
        turn_names = st.name_turns.random() < 0.5
    n = rng.randint(3, 5 if series == 2 else 6)
    kind = rng.choice(["years", "months", "regions", "products"])
    if kind == "years":
        start = [rng.randint(2005, 2016) for _ in range(n)][0]  # only the first is used; n are drawn, as the sets were
        cats = [str(start + i) for i in range(n)]
    elif kind == "months":
        s0 = rng.randint(0, 12 - n)
        cats = S.MONTHS[s0:s0 + n]
    else:
        cats = rng.sample(S.REGIONS if kind == "regions" and n <= 5 else PRODUCTS, n)
    kname = {"years": "year", "months": "month", "regions": "region" if n <= 5 else "product", "products": "product"}[kind]
    names = rng.choice(SERIES) if series == 2 else ("",)
    names = names[::-1] if turn_names else names  # turned: "2023" first, so a name does not give its bar's place
    dec = 1 if rng.random() < 0.25 else 0
    vals = [[rng.randint(30 if stacked else 5, 95) * 10 ** dec + (rng.randint(0, 9) if dec else 0) for _ in cats]
            for _ in names]
    labels = [[_fmt(v, dec) for v in vs] for vs in vals]
    colours = [st.accent, tuple(255 - c // 2 for c in st.accent[::-1])][:series]
    colours = colours[::-1] if turn_colours else colours  # nor the accent colour the first series
    place = rng.choice(["end", "inside"]) if layout != "line" else "end"
    title = rng.choice(S.CHART_TITLES)
    cw = max(Canvas.width(c, f) for c in cats)
    lw = max(Canvas.width(s, f) for row in labels for s in row)
    m = 14
    heading = max(Canvas.width(title, ft), sum(f.size + Canvas.width(s, f) + 20 for s in names) + 20)  # title, legend
    if layout == "mirror":  # a butterfly chart: the categories in a middle column, one series to each side
        W = S._side(rng, S.Config(), 2 * m + max(2 * (160 + lw + 8) + cw + 24, heading))
        H = S._side(rng, S.Config(), 2 * m + ft.size + 30 + n * (f.size + 16) + f.size + 10)
    elif horizontal:
        room = 200
        if stacked:  # two values on one bar of at least room - 6 px for the axis' 200: each segment holds its label
            room = max([420] + [math.ceil((Canvas.width(labels[s][i], f) + 9) * 200 * 10 ** dec / vals[s][i]) + 6
                                for s in range(series) for i in range(n)])
        W = S._side(rng, S.Config(), 2 * m + max(cw + 12 + room + lw, heading))
        H = S._side(rng, S.Config(), 2 * m + ft.size + 30 + n * (1 if stacked else series) * (f.size + 8) + n * 8
                    + (f.size + 10) * (series > 1) + (f.size + 4) * column)
    else:
        per_bar = (lw + 8) * 5 // 4 if stacked else series * (lw + 8) * 5 // 4  # grouped: as drawn before vstack
        W = S._side(rng, S.Config(), 2 * m + 48 + max(n * max(cw + 10, per_bar), heading))
        H = S._side(rng, S.Config(), 2 * m + ft.size + 3 * f.size + (270 if stacked else 170) + (f.size + 10) * (series > 1)
                    + (f.size + 4) * column)
    cv = Canvas(W, H, st.paper)
    centred = rng.random() < 0.6
    cv.text(W // 2 if centred else m, m, title, ft, st.ink, "center" if centred else "left")
    y_top, y_end = m + ft.size + 10, H - m
    if layout == "mirror":  # each series named above its own side, not by a legend
        cv.text(W // 2 - cw // 2 - 14, y_top, names[0], f, st.ink, "right")
        cv.text(W // 2 + cw // 2 + 14, y_top, names[1], f, st.ink)
        y_top += f.size + 10
    elif series > 1:  # legend: a colour swatch and each series' name, in a row (or a column) above the plot or below it
        keys = list(zip(names, colours))[::-1 if swap else 1]  # swapped: the legend's order is not the bars'
        step = {name: f.size + Canvas.width(name, f) + 20 for name in names}  # swatch, name and gap
        row = max(step.values()) - 20 if column else sum(step.values()) - 20
        tall = (f.size + 4) * (len(keys) if column else 1) - 4  # the legend's height
        if legend == "left":  # one draw, as before placed legends: the held-out family's charts regenerate as shipped
            x = m + rng.randint(0, 20)
        elif legend == "right":
            x = W - m - row - rng.randint(0, 20)
        else:
            x = (W - row) // 2
        y = H - m - tall if legend == "bottom" else y_top
        for name, col in keys:
            cv.draw.rectangle([x, y + 3, x + f.size - 4, y + f.size - 1], fill=col)
            cv.text(x + f.size + 2, y, name, f, st.ink)
            if column:
                y += f.size + 4
            else:
                x += step[name]
        if legend == "bottom":
            y_end -= tall + 10
        else:
            y_top += tall + 10
    if layout == "mirror":
        bars = _mirror_plot(cv, st, f, cats, vals, dec, m, cw, lw, y_top, y_end)
    elif horizontal:
        bars = _horizontal_plot(cv, st, f, cats, vals, dec, stacked, m, cw, lw, y_top, y_end)
    else:
        bars = _vertical_plot(rng, cv, st, f, cats, vals, dec, stacked, m, y_top, y_end)
    if layout == "line":
        pts = [((b[0] + b[2]) / 2, b[1]) for _, _, b in bars]
        cv.draw.line(pts, fill=colours[0], width=2)
        for p in pts:
            cv.draw.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=colours[0])
    else:
        for s, i, b in bars:
            cv.draw.rectangle(b, fill=colours[s])
    on_bar = [(250, 250, 250) if sum(c) < 420 else (20, 20, 20) for c in colours]  # readable on its bar
    for s, i, b in bars:  # value labels last, so nothing is drawn over them
        txt, w = labels[s][i], Canvas.width(labels[s][i], f)
        if horizontal:
            inside = (place == "inside" or stacked) and b[2] - b[0] > w + 8
            if layout == "mirror" and s == 0:  # the left side's bars grow leftwards: their labels mirror
                x, align = (b[0] + 4, "left") if inside else (b[0] - 4, "right")
            else:
                x, align = (b[2] - 4, "right") if inside else (b[2] + 4, "left")
            cv.text(x, (b[1] + b[3]) / 2 - f.size * 0.6, txt, f, on_bar[s] if inside else st.ink, align)
        else:
            inside = (place == "inside" or stacked) and b[3] - b[1] > f.size + 8 and b[2] - b[0] > w
            y = b[1] + 3 if inside else b[1] - f.size - 6
            if layout == "line":
                cv.draw.rectangle([(b[0] + b[2]) / 2 - w / 2 - 2, y - 1, (b[0] + b[2]) / 2 + w / 2 + 2, y + f.size], fill=st.paper)
            cv.text((b[0] + b[2]) / 2, y, txt, f, on_bar[s] if inside else st.ink, "center")
    qa = []
    for s in range(series):
        for i, c in enumerate(cats):
            q = ask(rng, "series", (i, n), c, s=names[s], c=c) if series > 1 else ask(rng, "value", (i, n), c, c=c)
            qa.append(dict(q, answer=labels[s][i], type="figure/diagram"))
    flat = [s for row in labels for s in row]
    unique = [i for i in range(n) if flat.count(labels[0][i]) == 1]
    if unique:  # any position: no shortcut through the leftmost category
        i = rng.choice(unique)
        qa.append(dict(ask(rng, "which", (i, n), labels[0][i], k=kname, v=labels[0][i]), answer=cats[i], type="figure/diagram"))
    reas = [_pair_reasoning(rng, list(zip(cats, vals[0])), dec, lambda c: f"value for {c}", "Which is higher, {} or {}?")]
    return cv, qa, reas


# A chart's plot area, one function per orientation: each draws its axis and category labels and returns
# (series, category, box) for every value; vals[s][i] is series s's value for category i (times 10**dec).
def _mirror_plot(cv, st, f, cats, vals, dec, m, cw, lw, y_top, y_end):
    """A butterfly chart: the categories in a middle column, series 0 growing leftwards and series 1 rightwards."""
    n, W, bars = len(cats), cv.img.width, []
    mid, half, top = W // 2, cw // 2 + 10, y_top + 4
    slot = (y_end - top) / n
    scale = (mid - half - m - lw - 8) / (100 * 10 ** dec)  # the longest bar leaves room for its label
    th = min(slot - 8, f.size + 12)  # a bar's thickness: tall images leave space between the rows
    for i, c in enumerate(cats):
        y0 = top + slot * i + (slot - th) / 2
        cv.text(mid, y0 + th / 2 - f.size * 0.7, c, f, st.ink, "center")
        bars.append((0, i, [mid - half - vals[0][i] * scale, y0, mid - half - 1, y0 + th]))
        bars.append((1, i, [mid + half + 1, y0, mid + half + 1 + vals[1][i] * scale, y0 + th]))
    return bars


def _horizontal_plot(cv, st, f, cats, vals, dec, stacked, m, cw, lw, y_top, y_end):
    """Bars growing rightwards from an axis after the category labels: grouped (one row per series) or stacked."""
    n, series, W, bars = len(cats), len(vals), cv.img.width, []
    left, right, top, bottom = m + cw + 10, W - m - lw - 8, y_top + 4, y_end
    slot = (bottom - top) / n
    scale = (right - left) / ((200 if stacked else 100) * 10 ** dec)
    cv.draw.line([(left, top), (left, bottom)], fill=st.ink)
    th = (slot - 6) / (1 if stacked else series)
    for i, c in enumerate(cats):
        y0 = top + slot * i + 3
        cv.text(left - 6, y0 + slot / 2 - f.size * 0.7, c, f, st.ink, "right")
        x = left + 1
        for s in range(series):
            yb = y0 if stacked else y0 + s * th
            box = [x, yb, x + vals[s][i] * scale, yb + th - 2]
            bars.append((s, i, box))
            x = box[2] if stacked else x  # stacked: the next segment starts where this one ends
    return bars


def _vertical_plot(rng, cv, st, f, cats, vals, dec, stacked, m, y_top, y_end):
    """Columns over the category labels, with a tick axis (0 to 100, or 200 for two stacked values) left or right."""
    n, series, W, bars = len(cats), len(vals), cv.img.width, []
    grid = (215, 215, 215) if not st.dark else (70, 70, 70)
    left, right, top, bottom = m + 34, W - m, y_top + f.size + 10, y_end - f.size - 8
    axis_right = rng.random() < 0.3
    if axis_right:  # the tick labels go right of the plot
        left, right = m + 8, right - 30
    slot, span = (right - left) / n, 200 if stacked else 100
    scale = (bottom - top) / (span * 10 ** dec)
    ax = right if axis_right else left
    for t in range(0, span + 1, span // 4):
        ty = bottom - t * 10 ** dec * scale
        if rng.random() < 0.8:
            cv.draw.line([(left + 1, ty), (right, ty)], fill=grid)
        cv.text(ax + (4 if axis_right else -4), ty - f.size * 0.6, str(t), st.font(10), st.ink, "left" if axis_right else "right")
    cv.draw.line([(left, bottom), (right, bottom)], fill=st.ink)
    bw = slot * 0.8 / (1 if stacked else series)  # at least a value label wide (_chart sizes W for it): labels never touch
    for i, c in enumerate(cats):
        cx = left + slot * i + slot / 2
        cv.text(cx, bottom + 5, c, f, st.ink, "center")
        base = bottom
        for s in range(series):
            x0 = cx - bw / 2 if stacked else cx - series * bw / 2 + s * bw
            y0 = base - vals[s][i] * scale
            bars.append((s, i, [x0 + 1, y0, x0 + bw - 1, base - 1]))
            base = y0 if stacked else base
    return bars


# ---------------------------------------------------------------- infographics
def _info(rng, st, layout):
    f, fb, ft = st.body(), st.big(), st.title()
    n = rng.randint(3, 6)
    caps, vals = rng.sample(S.CAPTIONS, n), rng.sample(range(5, 96), n)
    nums, title = [f"{v}%" for v in vals], f"{rng.choice(S.INFO_TITLES)} {rng.randint(2015, 2024)}"
    capw, numw = max(Canvas.width(c, f) for c in caps), Canvas.width("100%", fb)
    m = rng.randint(12, 22)
    if layout in ("beside", "progress", "bands", "stack"):  # one cell a row
        cols = 1
    else:  # a grid: capfirst's 2 columns, sidecap's at most 2 (a caption and its number share a cell's line)
        cols = 2 if n == 4 or layout == "capfirst" else min(n, 3 if layout != "sidecap" else 2)
    rows = (n + cols - 1) // cols
    cellw = {"panels": max(capw, numw) + 20, "icons": max(capw, numw) + 20, "capfirst": max(capw, numw) + 24,
             "beside": fb.size + numw + capw + 40, "progress": capw + 160 + numw, "bands": numw + capw + 60,
             "stack": max(capw, numw) + 30, "sidecap": capw + numw + 40}[layout]
    cellh = {"beside": fb.size + 12, "progress": f.size + 16, "bands": fb.size + 22, "stack": f.size + fb.size + 18,
             "sidecap": fb.size + 14}.get(layout, fb.size + f.size + 34)
    if cols == 3 and 3 * cellw + 40 > 448:
        cols, rows = 2, (n + 1) // 2
    gap = rng.randint(6, 12)
    W = S._side(rng, S.Config(), 2 * m + max(cols * cellw + (cols - 1) * gap, Canvas.width(title, ft) + 10))
    H = S._side(rng, S.Config(), 2 * m + ft.size + 14 + rows * (cellh + gap))
    cv = Canvas(W, H, st.paper)
    cv.text(W // 2, m, title, ft, st.ink, "center", stroke=rng.randint(0, 1))
    y0 = m + ft.size + 14
    cellw = (W - 2 * m - (cols - 1) * gap) // cols
    y0 += rng.randint(0, max(0, (H - y0 - m) - rows * (cellh + gap)))
    white = (250, 250, 250)
    for k, (c, s) in enumerate(zip(caps, nums)):
        x, y = m + (k % cols) * (cellw + gap), y0 + (k // cols) * (cellh + gap)
        col = S._vivid(rng)
        if layout in ("panels", "shipped"):
            cv.draw.rectangle([x, y, x + cellw, y + cellh], fill=col)
            cv.text(x + cellw // 2, y + 8, s, fb, white, "center")
            cv.text(x + cellw // 2, y + 14 + fb.size, c, f, white, "center")
        elif layout == "icons":  # a round icon, the number beside it, the caption below
            r = fb.size // 2
            cv.draw.ellipse([x + 4, y + 6, x + 4 + 2 * r, y + 6 + 2 * r], fill=col)
            cv.text(x + 12 + 2 * r, y + 6, s, fb, st.ink)
            cv.text(x + 4, y + 14 + fb.size, c, f, st.ink)
        elif layout == "beside":  # a square bullet, the number, then its caption on the same line
            cv.draw.rectangle([x, y + 6, x + fb.size - 8, y + fb.size - 2], fill=col)
            cv.text(x + fb.size, y, s, fb, col if not st.dark else white)
            cv.text(x + fb.size + numw + 16, y + (fb.size - f.size) // 2 + 2, c, f, st.ink)
        elif layout == "progress":  # caption, a bar filled to the share, the number after it
            cv.text(x, y, c, f, st.ink)
            bx, bw = x + capw + 12, cellw - capw - numw - 24
            cv.draw.rectangle([bx, y + 3, bx + bw, y + f.size], outline=st.ink)
            cv.draw.rectangle([bx + 1, y + 4, bx + 1 + int((bw - 2) * vals[k] / 100), y + f.size - 1], fill=col)
            cv.text(bx + bw + 8, y, s, f, st.ink)
        elif layout == "bands":  # full-width coloured bands: the number at the left, the caption after it
            cv.draw.rectangle([0, y, W, y + cellh], fill=col)
            cv.text(m + 6, y + 10, s, fb, white)
            cv.text(m + numw + 30, y + 10 + (fb.size - f.size) // 2, c, f, white)
        elif layout == "stack":  # a coloured rule, the caption, and its number below it, in one column
            cv.draw.rectangle([x, y + 2, x + 5, y + cellh - 4], fill=col)
            cv.text(x + 14, y + 2, c, f, st.ink)
            cv.text(x + 14, y + 8 + f.size, s, fb, col if not st.dark else white)
        elif layout == "sidecap":  # the caption, its number at the cell's right end, a coloured rule under both
            cv.text(x, y + (fb.size - f.size) // 2 + 2, c, f, st.ink)
            cv.text(x + cellw - 16, y, s, fb, col if not st.dark else white, "right")  # 16 px: apart from the next cell
            cv.draw.rectangle([x, y + cellh - 5, x + cellw - 16, y + cellh - 3], fill=col)
        else:  # capfirst: a bordered cell, the caption above the number
            cv.draw.rectangle([x, y, x + cellw, y + cellh], outline=col, width=3)
            cv.text(x + cellw // 2, y + 8, c, f, st.ink, "center")
            cv.text(x + cellw // 2, y + 14 + f.size, s, fb, col if not st.dark else white, "center")
    qa = [dict(ask(rng, "percent", (k, n), c, c=c), answer=s, type="figure") for k, (c, s) in enumerate(zip(caps, nums))]
    qa.append(dict(ask(rng, "info_title", (0, 1)), answer=title, type="text"))
    r = _pair_reasoning(rng, list(zip(caps, vals)), 0, lambda c: f"share who {c}", "Which share is larger, {} or {}?", "%")
    return cv, qa, [r]


# ---------------------------------------------------------------- phrasings drawn after the sample
def training_phrasings(form, synonyms=False):
    """A form's training phrasings: the first ones and MORE_PHRASES, and with `synonyms` SYNONYM_PHRASES."""
    return PHRASES[form][0] + MORE_PHRASES[form] + (SYNONYM_PHRASES[form] if synonyms else [])


def heldout_phrasings(form):
    """A form's held-out phrasings: `reworded`'s, `reworded2`'s and `reworded3`'s."""
    return PHRASES[form][1] + FRESH_PHRASES[form] + FRESH3_PHRASES[form]


def slots_of(form, question):
    """The slots (a label, an item, a category...) a question was phrased with, read back from its text: the
    phrasings below are drawn after the sample, so that the shipped held-out sets stay byte for byte the same."""
    for phrase in sorted(training_phrasings(form), key=len, reverse=True):  # "What is the {q}?" last
        if (slots := phrased(phrase, question)) is not None:
            return slots
    raise ValueError(f"{question!r} is in no training phrasing of {form!r}")


def phrased(phrase, question):
    """The slots if `question` is `phrase` filled in, else None."""
    pattern = re.escape(phrase)
    for name in re.findall(r"{(\w+)}", phrase):
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>.+)", 1)
    m = re.fullmatch(pattern, question)
    return m.groupdict() if m and phrase.format(**m.groupdict()) == question else None


def widen_phrasings(rng, qa, synonyms=False):
    """The training family's questions in any of its phrasings, the older and MORE_PHRASES alike (and, with
    `synonyms`, SYNONYM_PHRASES)."""
    return [dict(q, question=rng.choice(training_phrasings(q["form"], synonyms)).format(
        **slots_of(q["form"], q["question"]))) for q in qa]


def reworded2(q):
    """A question of the held-out family in its second held-out phrasing, chosen by its own text (no rng)."""
    return _reword(q, FRESH_PHRASES, q["question"] + "\n" + q["reworded"])


def reworded3(q):
    """The same in its third held-out phrasing, chosen by its answer too: a form with one question text (the store,
    the title) is asked in each of its phrasings."""
    return _reword(q, FRESH3_PHRASES, "third\n" + q["question"] + "\n" + q["reworded"] + "\n" + q["answer"])


def _reword(q, phrasings, seed):
    pick = random.Random(seed).choice(phrasings[q["form"]])
    return pick.format(**slots_of(q["form"], q["question"]))


# ---------------------------------------------------------------- assembly
def rephrase(rng, qa):
    """One of synth.py's questions in a random training phrasing of its form, with its held-out rewording.
    Its key (for teacher.py) is the slot where the printed text is the slot itself (a category, an item)."""
    for pattern, form, slot in SHIPPED_FORMS:
        m = re.fullmatch(pattern, qa["question"])
        if m:
            slots = {slot: m.group(1)} if slot else {}
            return dict(qa, **ask(rng, form, None, m.group(1) if slot in ("c", "i", "p") else None, **slots))
    raise ValueError(f"no phrasing form for {qa['question']!r}")


DRAW = {"doc": _doc, "table": _table, "chart": _chart, "info": _info}


def training_layouts(kind, arrangements=False):
    """Every layout the training family draws for a kind (with `arrangements`, ARRANGEMENTS too)."""
    return LAYOUTS[kind]["train"] + MORE_LAYOUTS.get(kind, []) + (ARRANGEMENTS.get(kind, []) if arrangements else [])


def choose_layout(rng, kind, family, arrangements=False):
    own = LAYOUTS[kind][family]
    if family == "heldout" and own and rng.random() < HELDOUT_SHARE:
        return rng.choice(own)
    return rng.choice(training_layouts(kind, arrangements) if family == "train" else LAYOUTS[kind]["train"])


def draw(kind, rng, cfg, name_turns=None):
    """(canvas, qa, reasoning, style, layout) of one sample of cfg's wide family; make_sample finishes it."""
    st = Style(rng, cfg, name_turns)
    layout = choose_layout(rng, kind, cfg.family, arrangements=cfg.arrangements)
    if layout == "shipped":  # synth.py's own layout in this family's fonts, with its own phrasings
        cv, qa, reas = S.DRAW[kind](rng, S.Config(fonts=(st.font_file(),)))
        qa = [rephrase(rng, q) for q in qa if not q["question"].startswith("Which ")]  # its leftmost-bar shortcut
    else:
        cv, qa, reas = DRAW[kind](rng, st, layout)
    return cv, qa, reas, st, layout


def make_sample(kind, seed, cfg=None):
    """One sample of cfg's family, deterministic in (kind, seed, cfg): the shipped family's from synth.py, the
    wide families' drawn here, with their phrasings, glyphs and damage (rotation, blur, JPEG, noise)."""
    cfg = cfg or S.Config()
    if cfg.family == "shipped":
        return S.make_sample(kind, seed, cfg)
    S.check_kind(kind)
    rng = random.Random(f"{cfg.family}:{kind}:{seed}")
    # the held-out family's series-name order comes from its own stream, so every other draw is unchanged
    names = random.Random(f"names:{kind}:{seed}") if cfg.family == "heldout" else None
    cv, qa, reas, st, layout = draw(kind, rng, cfg, names)
    if cfg.family == "train":  # its added phrasings, from their own stream: the images stay as drawn before them
        qa = widen_phrasings(random.Random(f"phrasing:{kind}:{seed}"), qa, cfg.synonyms)
    s = S.finish(kind, seed, cv, qa, reas, rng, cfg)
    boxes = s["words"] + s["chars"]
    if cfg.family == "train" and cfg.glyph_vary > 0:  # its own stream: the images stay as drawn otherwise
        s["image"] = vary_glyphs(s["image"], random.Random(f"glyphs:{kind}:{seed}"), cfg.glyph_vary, st, boxes)
    image, angle = damage(s["image"], rng, st.paper)
    for item in boxes if angle else []:  # the boxes follow the rotation
        b = rotate_box(item["box"], angle, image.width, image.height)
        item["box"] = [max(0, round(b[0])), max(0, round(b[1])), min(image.width, round(b[2])), min(image.height, round(b[3]))]
    return dict(s, image=image, width=image.width, height=image.height, family=cfg.family, layout=layout,
                font=st.font_path or "built-in")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", default="doc", choices=S.KINDS)
    ap.add_argument("--family", default="train", choices=FAMILIES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    s = make_sample(a.kind, a.seed, S.Config(family=a.family))
    if a.out:
        s["image"].save(a.out)
    print(json.dumps({k: s[k] for k in ("kind", "seed", "layout", "font", "transcription", "qa")}, indent=1))


if __name__ == "__main__":
    main()
