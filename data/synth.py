"""Deterministic synthetic text-rich images for FCoT-VL: documents, tables/receipts, charts,
infographics and scene signs, each with word/char boxes, a transcription, extractive QA and
multi-fact reasoning QA (with a step-by-step rationale).

Commands (from the repo root, venv active):
  python data/synth.py --kind doc --seed 7 --out /tmp/doc.png   # render one sample, print its metadata
  python data/synth.py --bench                                   # single-threaded images/s per kind
  python data/build.py                                           # regenerate data/eval + data/tokenizer

From code:
  from data.synth import Config, make_sample, KINDS
  s = make_sample("table", seed=123)          # dict: image (PIL), words, chars, transcription, qa, reasoning
The wide families (Config(family="train" or "heldout")) are data/wide.py's: its make_sample draws them.
Seeds: training uses seeds in [0, 10**9); the shipped eval sets use seeds >= 10**9 (data/build.py).
Same (kind, seed, Config) -> identical pixels/metadata (same Pillow version -> identical PNG bytes).
Only Pillow's built-in scalable font is used unless Config.truetype=True (then fonts under
/usr/share/fonts are mixed in; never for the shipped eval sets, which must not depend on the machine).
"""
import argparse, glob, json, random, sys, time
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

KINDS = ("doc", "table", "chart", "info", "scene")


@dataclass
class Config:
    min_side: int = 224          # canvas sides are drawn from [min_side, max_side] (grown if content needs it)
    max_side: int = 448
    font_px: tuple = (20, 28)    # body font size; built-in font cap height ~0.7*size -> 14-20 px, about one 14 px patch per glyph
    title_px: tuple = (26, 32)
    big_px: tuple = (30, 38)     # infographic numbers / sign text
    min_items: int = 3           # fields per doc, rows per table, bars per chart, panels per infographic
    max_items: int = 6
    noise: float = 0.5           # 0 = clean; scales speckle density and scene background texture
    truetype: bool = False       # also use system TrueType fonts (not machine-independent)
    family: str = "shipped"      # "shipped": the layouts below; "train" / "heldout": data/wide.py's (wide.make_sample)
    fonts: tuple = ()            # font files to draw in instead (None: the built-in font); set by data/wide.py
    glyph_vary: float = 0.0      # training family only: share of images whose glyphs are reshaped (wide.vary_glyphs)
    more_fonts: bool = False     # training family only: also draw in wide.MORE_FONTS
    synonyms: bool = False       # training family only: also ask in wide.SYNONYM_PHRASES
    arrangements: bool = False   # training family only: also draw wide.ARRANGEMENTS' layouts
    legends: bool = False        # training family only: two-series legends also in the bars' other order, or a column
    series_order: bool = False   # training family only: each pair of series names in either order and colour


# ---------------------------------------------------------------- vocabularies (short, readable values)
FIRST = ["Anna", "Ben", "Carla", "David", "Elena", "Frank", "Grace", "Hugo", "Irene", "Jack", "Lena", "Marco", "Nina", "Omar", "Paula", "Sam"]
LAST = ["Lopez", "Smith", "Chen", "Novak", "Berg", "Kim", "Rossi", "Patel", "Weber", "Silva", "Young", "Moore"]
COMPANY = ["Acme Corp", "Nova Labs", "Blue Leaf", "Zenith Co", "Orbit Ltd", "Delta Foods", "Polar Inc", "Redwood"]
CITY = ["Boston", "Denver", "Austin", "Dallas", "Oakland", "Seattle", "Miami", "Tampa", "Salem", "Reno"]
DOC_TITLES = ["INVOICE", "PURCHASE ORDER", "SHIPPING FORM", "MEMO", "REPORT", "APPLICATION", "STATEMENT"]
STORES = ["FRESH MART", "CITY CAFE", "GREEN GROCER", "CORNER SHOP", "SUN BAKERY", "BOOK NOOK"]
ITEMS = ["Coffee", "Bagel", "Milk", "Eggs", "Bread", "Apples", "Tea", "Juice", "Rice", "Pasta", "Cheese", "Soap", "Butter", "Pens"]
CHART_TITLES = ["Sales by year", "Visitors", "Revenue", "Units sold", "Rainfall (mm)", "Users (thousands)", "Exports"]
REGIONS = ["North", "South", "East", "West", "Central"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
INFO_TITLES = ["Internet Use", "Survey Results", "Travel Habits", "Energy Mix", "Reading Trends", "Food Facts"]
CAPTIONS = ["use mobile", "shop online", "work remotely", "own a car", "read daily", "cycle", "use email",
            "stream music", "play games", "eat out", "recycle", "use trains"]
PLACES = ["Oakdale", "Riverton", "Hillview", "Lakeside", "Fairfax", "Milton", "Ashford", "Brookton"]
STREETS = ["MAIN ST", "OAK AVE", "PARK RD", "ELM ST", "HIGH ST", "LAKE DR", "MILL LN"]
SHOPS = ["CITY BAKERY", "PIZZA HUT", "BOOK STORE", "FLOWERS", "PHARMACY", "HOTEL", "GARAGE"]
UP = "ABCDEFGHJKLMNPRSTUVWXYZ"

TEXT_FIELDS = [  # (label written, how the question names it, value maker)
    ("Invoice No", "invoice number", lambda r: f"{r.choice(UP)}{r.randint(1, 9)}-{r.randint(100, 999)}"),
    ("Order ID", "order ID", lambda r: f"PO-{r.randint(1000, 9999)}"),
    ("Date", "date", lambda r: f"{r.randint(1, 28):02d}/{r.randint(1, 12):02d}/{r.randint(2015, 2024)}"),
    ("Due Date", "due date", lambda r: f"{r.randint(1, 28):02d}/{r.randint(1, 12):02d}/{r.randint(2015, 2024)}"),
    ("Name", "name", lambda r: f"{r.choice(FIRST)} {r.choice(LAST)}"),
    ("Company", "company name", lambda r: r.choice(COMPANY)),
    ("City", "city", lambda r: r.choice(CITY)),
    ("Phone", "phone number", lambda r: f"555-{r.randint(1000, 9999)}"),
    ("Account", "account number", lambda r: str(r.randint(100000, 999999))),
    ("Ref", "reference code", lambda r: f"{r.choice(UP)}{r.choice(UP)}{r.randint(10, 99)}"),
]
MONEY_FIELDS = [("Subtotal", "subtotal"), ("Tax", "tax"), ("Shipping", "shipping cost"), ("Discount", "discount"), ("Deposit", "deposit")]
COUNT_FIELDS = [("Pages", "number of pages"), ("Copies", "number of copies"), ("Boxes", "number of boxes"), ("Pallets", "number of pallets")]


# ---------------------------------------------------------------- fonts and drawing
_FONTS, _BBOX = {}, {}


def _ttf_paths():
    return sorted(glob.glob("/usr/share/fonts/**/*.ttf", recursive=True))


def get_font(size, path=None):
    """Built-in font (path None) or a TrueType file; BASIC layout so raqm presence cannot change output."""
    key = (path, size)
    if key not in _FONTS:
        f = ImageFont.load_default(size=size) if path is None else ImageFont.truetype(path, size)
        _FONTS[key] = f.font_variant(layout_engine=ImageFont.Layout.BASIC)
        _FONTS[key].src = path  # cached forever, so id(font) is a safe glyph-box cache key
    return _FONTS[key]


def _pick_font(rng, cfg, size):
    if cfg.fonts:
        return get_font(size, rng.choice(cfg.fonts))
    paths = _ttf_paths() if cfg.truetype else []
    return get_font(size, rng.choice([None] + paths) if paths else None)


class Canvas:
    """An RGB image plus a record of every text run drawn (char boxes, word boxes)."""

    def __init__(self, w, h, bg):
        self.img = Image.new("RGB", (w, h), bg)
        self.draw = ImageDraw.Draw(self.img)
        self.runs = []

    @staticmethod
    def width(s, font):
        return int(round(sum(font.getlength(c) for c in s)))

    def text(self, x, y, s, font, fill, align="left", stroke=0):
        """Draw s char by char (positions = cumulative advances, so boxes are exact); return run box."""
        x = int(x - (self.width(s, font) if align == "right" else self.width(s, font) // 2 if align == "center" else 0))
        y, acc, chars = int(y), 0.0, []
        for ch in s:
            cx = x + int(round(acc))
            acc += font.getlength(ch)
            if ch == " ":
                chars.append(None)
                continue
            self.draw.text((cx, y), ch, font=font, fill=fill, stroke_width=stroke, stroke_fill=fill)
            k = (id(font), ch, stroke)
            if k not in _BBOX:
                _BBOX[k] = font.getbbox(ch, stroke_width=stroke)
            b = _BBOX[k]
            chars.append({"char": ch, "box": [cx + b[0], y + b[1], cx + b[2], y + b[3]]})
        words, cur = [], []
        for c in chars + [None]:
            if c is None:
                if cur:
                    words.append({"text": "".join(d["char"] for d in cur), "box": _union([d["box"] for d in cur])})
                cur = []
            else:
                cur.append(c)
        box = _union([w["box"] for w in words])
        self.runs.append({"text": s, "box": box, "words": words, "chars": [c for c in chars if c]})
        return box


def _union(boxes):
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


def _dark(rng):
    return tuple(rng.randint(0, 70) for _ in range(3))


def _light(rng):
    return tuple(rng.randint(225, 255) for _ in range(3))


def _vivid(rng):  # mid/dark saturated colour that white text reads well on
    c = [rng.randint(20, 90), rng.randint(20, 90), rng.randint(20, 90)]
    c[rng.randrange(3)] = rng.randint(120, 190)
    return tuple(c)


def _side(rng, cfg, need):
    return max(need, rng.randint(cfg.min_side, cfg.max_side))


def _fmt(v, dec):
    return f"{v / 10 ** dec:.{dec}f}" if dec else str(v)


def _reason(q, facts, op, answer, dec=0, unit=""):
    """facts: [(name, value as int in units of 10**-dec)] read from the image; rationale cites each, then the step."""
    v = [f"{_fmt(x, dec)}{unit}" for _, x in facts]
    steps = [f"The {n} is {s}." for (n, _), s in zip(facts, v)]
    steps.append({"sum": f"{v[0]} + {v[1]} = {answer}.", "difference": f"{v[0]} - {v[1]} = {answer}."}.get(op, f"So the answer is {answer}."))
    return {"question": q, "answer": answer, "rationale": " ".join(steps), "op": op, "unit": unit,
            "facts": [{"name": n, "value": _fmt(x, dec)} for n, x in facts]}


def _pair_reasoning(rng, named, dec, what, cmp_q, unit=""):
    """One question over two (label, value) facts: sum, difference (larger - smaller) or comparison.
    what(label) names the fact in prose; cmp_q is a template for 'which of {} and {} is larger'."""
    (na, a), (nb, b) = rng.sample(named, 2)
    if a < b:
        (na, a), (nb, b) = (nb, b), (na, a)
    facts = [(what(na), a), (what(nb), b)]
    op = rng.choice(["sum", "difference", "comparison"] if a != b else ["sum"])
    if op == "sum":
        return _reason(f"What is the {facts[0][0]} plus the {facts[1][0]}?", facts, op, _fmt(a + b, dec) + unit, dec, unit)
    if op == "difference":
        return _reason(f"How much larger is the {facts[0][0]} than the {facts[1][0]}?", facts, op, _fmt(a - b, dec) + unit, dec, unit)
    if rng.random() < 0.5:
        na, nb, facts = nb, na, facts[::-1]
    return _reason(cmp_q.format(na, nb), facts, "comparison", na if facts[0][1] > facts[1][1] else nb, dec, unit)


# ---------------------------------------------------------------- kinds: each returns (canvas, qa, reasoning)
def _doc(rng, cfg):
    f = _pick_font(rng, cfg, rng.randint(*cfg.font_px))
    ft = _pick_font(rng, cfg, rng.randint(*cfg.title_px))
    n = rng.randint(max(cfg.min_items, 2), cfg.max_items)
    numeric, dec = (MONEY_FIELDS, 2) if rng.random() < 0.6 else (COUNT_FIELDS, 0)
    nums = [(lab, q, rng.randint(100, 99999) if dec else rng.randint(1, 250)) for lab, q in rng.sample(numeric, 2)]
    texts = [(lab, q, mk(rng)) for lab, q, mk in rng.sample(TEXT_FIELDS, n - 2)]
    fields = [(lab, q, _fmt(v, dec)) for lab, q, v in nums] + texts
    rng.shuffle(fields)
    title, two_col, lh = rng.choice(DOC_TITLES), rng.random() < 0.5, int(f.size * rng.uniform(1.5, 2.1))
    kw = max(Canvas.width(lab + ":", f) for lab, _, _ in fields) + 12
    vw = max(Canvas.width(v, f) for _, _, v in fields)
    m = rng.randint(14, 28)
    W = _side(rng, cfg, 2 * m + max(kw + vw + (4 if two_col else 0), Canvas.width(title, ft)))
    H = _side(rng, cfg, 2 * m + ft.size + 14 + lh * n)
    cv = Canvas(W, H, _light(rng))
    ink = _dark(rng)
    x0, y = m + rng.randint(0, max(0, W - 2 * m - kw - vw) // 3), m + rng.randint(0, (H - 2 * m - ft.size - 14 - lh * n) // 2)
    centred = rng.random() < 0.5
    cv.text(W // 2 if centred else m, y, title, ft, ink, "center" if centred else "left", stroke=rng.randint(0, 1))
    y += ft.size + 6
    cv.draw.line([(m // 2, y), (W - m // 2, y)], fill=ink, width=1)
    y += 8
    for lab, _, v in fields:
        if two_col:
            cv.text(x0, y, lab + ":", f, ink)
            cv.text(x0 + kw, y, v, f, ink)
        else:
            cv.text(x0, y, f"{lab}: {v}", f, ink)
        y += lh
    qa = [{"question": f"What is the {q}?", "answer": v, "type": "form"} for _, q, v in fields]
    qa.append({"question": "What is the title of the document?", "answer": title, "type": "layout"})
    qname = {lab: q for lab, q, _ in nums}
    r = _pair_reasoning(rng, [(lab, v) for lab, _, v in nums], dec, qname.get, "Which is larger, the {} or the {}?")
    return cv, qa, [r]


def _table(rng, cfg):
    f = _pick_font(rng, cfg, rng.randint(*cfg.font_px))
    ft = _pick_font(rng, cfg, rng.randint(*cfg.title_px))
    n = rng.randint(cfg.min_items, cfg.max_items)
    items = rng.sample(ITEMS, n)
    qty = [rng.randint(1, 9) for _ in items]
    amt = [q * rng.randint(50, 1500) for q in qty]  # cents; amount = qty * unit price
    rows = [(it, str(q), _fmt(a, 2)) for it, q, a in zip(items, qty, amt)]
    store, total = rng.choice(STORES), _fmt(sum(amt), 2)
    head = ("Item", "Qty", "Amount")
    cw = [max(Canvas.width(r[i], f) for r in rows + [head, ("TOTAL", "", total)]) + 14 for i in range(3)]
    lh, m, grid = int(f.size * rng.uniform(1.5, 1.9)), rng.randint(12, 26), rng.random() < 0.5
    W = _side(rng, cfg, 2 * m + max(sum(cw), Canvas.width(store, ft)))
    H = _side(rng, cfg, 2 * m + ft.size + 10 + lh * (n + 2))
    cv, ink = Canvas(W, H, _light(rng)), _dark(rng)
    cv.text(W // 2, m, store, ft, ink, "center", stroke=rng.randint(0, 1))
    x0 = (W - sum(cw)) // 2
    y = m + ft.size + 10 + rng.randint(0, (H - 2 * m - ft.size - 10 - lh * (n + 2)) // 2)
    xs = [x0, x0 + cw[0], x0 + cw[0] + cw[1]]
    for k, row in enumerate([head] + rows + [("TOTAL", "", total)]):
        for i, s in enumerate(row):
            if s:  # numbers right-aligned in their column, names left-aligned
                cv.text(xs[i] + 4 if i == 0 else xs[i] + cw[i] - 4, y + 3, s, f, ink, "left" if i == 0 else "right")
        if grid or k in (0, n):
            cv.draw.line([(x0, y + lh - 1), (x0 + sum(cw), y + lh - 1)], fill=ink, width=1)
        y += lh
    qa = [{"question": f"What is the amount for {it}?", "answer": a, "type": "table/list"} for it, _, a in rows]
    qa += [{"question": f"What is the quantity of {it}?", "answer": q, "type": "table/list"} for it, q, _ in rows[:2]]
    qa += [{"question": "What is the total?", "answer": total, "type": "table/list"},
           {"question": "What is the name of the store?", "answer": store, "type": "layout"}]
    reas = [_pair_reasoning(rng, list(zip(items, amt)), 2, lambda it: f"amount for {it}", "Which costs more in total, {} or {}?")]
    i, j = rng.sample(range(n), 2)
    reas.append(_reason(f"What is the total quantity of {items[i]} and {items[j]}?",
                        [(f"quantity of {items[i]}", qty[i]), (f"quantity of {items[j]}", qty[j])], "sum", str(qty[i] + qty[j])))
    return cv, qa, reas


def _chart(rng, cfg):
    f = _pick_font(rng, cfg, rng.randint(*cfg.font_px))
    ft = _pick_font(rng, cfg, rng.randint(cfg.font_px[1], cfg.title_px[1]))
    n = rng.randint(cfg.min_items, cfg.max_items)
    kind = rng.choice(["years", "months", "regions"]) if n <= 5 else rng.choice(["years", "months"])
    start = rng.randint(0, 12 - n) if kind == "months" else rng.randint(2010, 2017)
    if kind == "years":
        cats = [str(start + i) for i in range(n)]
    else:
        cats = MONTHS[start:start + n] if kind == "months" else rng.sample(REGIONS, n)
    dec = 1 if rng.random() < 0.3 else 0
    vals = [rng.randint(5, 95) * (10 ** dec) + (rng.randint(0, 9) if dec else 0) for _ in cats]
    labels, title, bar = [_fmt(v, dec) for v in vals], rng.choice(CHART_TITLES), rng.random() < 0.6
    while f.size > cfg.font_px[0] and Canvas.width("100", f) + 28 + n * (max(Canvas.width(s, f) for s in cats + labels) + 10) > cfg.max_side:
        f = get_font(f.size - 1, f.src)  # many bars: shrink the font rather than grow the canvas
    slot = max(Canvas.width(s, f) for s in cats + labels) + 10
    left, m = Canvas.width("100", f) + 16, 12
    W = _side(rng, cfg, left + m + slot * n)
    H = _side(rng, cfg, 2 * m + ft.size + 2 * f.size + 150)
    cv, ink, col = Canvas(W, H, _light(rng)), _dark(rng), _vivid(rng)
    cv.text(W // 2, m, title, ft, ink, "center")
    top, bottom = m + ft.size + f.size + 14, H - m - f.size - 8
    scale, slot = (bottom - top) / (100 * 10 ** dec), (W - left - m) // n
    cv.draw.line([(left, top - 4), (left, bottom), (W - m, bottom)], fill=ink, width=1)
    for t in range(0, 101, 25):  # y ticks
        ty = bottom - int(t * 10 ** dec * scale)
        cv.draw.line([(left + 1, ty), (W - m, ty)], fill=(215, 215, 215))
        cv.text(left - 6, ty - f.size * 0.6, str(t), f, ink, "right")
    pts = []
    for i, (c, v, s) in enumerate(zip(cats, vals, labels)):
        cx, vy = left + slot * i + slot // 2, bottom - int(v * scale)
        if bar:
            cv.draw.rectangle([cx - slot * 3 // 10, vy, cx + slot * 3 // 10, bottom - 1], fill=col)
        pts.append((cx, vy))
        cv.text(cx, bottom + 5, c, f, ink, "center")
    if not bar:
        cv.draw.line(pts, fill=col, width=2)
        for p in pts:
            cv.draw.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=col)
    for (cx, vy), s in zip(pts, labels):  # value labels last, on a background patch so lines never cross them
        w = Canvas.width(s, f)
        if not bar:
            cv.draw.rectangle([cx - w // 2 - 2, vy - f.size - 4, cx + w - w // 2 + 1, vy - 6 + f.size * 0.3], fill=cv.img.getpixel((0, 0)))
        cv.text(cx, vy - f.size - 6, s, f, ink, "center")
    qa = [{"question": f"What is the value for {c}?", "answer": s, "type": "figure/diagram"} for c, s in zip(cats, labels)]
    qa += [{"question": f"Which {kind[:-1]} has a value of {s}?", "answer": c, "type": "figure/diagram"}
           for c, s in zip(cats, labels) if labels.count(s) == 1][:1]
    hi, lo = vals.index(max(vals)), vals.index(min(vals))
    reas = [_pair_reasoning(rng, list(zip(cats, vals)), dec, lambda c: f"value for {c}", "Which is higher, {} or {}?")]
    if vals.count(max(vals)) == 1 and vals.count(min(vals)) == 1:
        reas.append(_reason("What is the difference between the highest and the lowest value?",
                            [(f"highest value ({cats[hi]})", vals[hi]), (f"lowest value ({cats[lo]})", vals[lo])],
                            "difference", _fmt(vals[hi] - vals[lo], dec), dec))
    return cv, qa, reas


def _info(rng, cfg):
    f = _pick_font(rng, cfg, rng.randint(*cfg.font_px))
    fb = _pick_font(rng, cfg, rng.randint(*cfg.big_px))
    ft = _pick_font(rng, cfg, rng.randint(*cfg.title_px))
    n = rng.randint(max(cfg.min_items, 3), min(cfg.max_items, 6))
    cols = 2 if n == 4 else min(n, 3)
    rows = (n + cols - 1) // cols
    caps, vals = rng.sample(CAPTIONS, n), rng.sample(range(5, 96), n)
    nums, title = [f"{v}%" for v in vals], f"{rng.choice(INFO_TITLES)} {rng.randint(2015, 2024)}"
    pw = max(max(Canvas.width(c, f) for c in caps), Canvas.width("100%", fb)) + 16
    if cols == 3 and 3 * pw + 60 > cfg.max_side:  # too wide: fall back to two columns
        cols, rows = 2, (n + 1) // 2
    ph, m, gap = fb.size + f.size + 30, rng.randint(10, 20), rng.randint(6, 12)
    W = _side(rng, cfg, 2 * m + max(cols * pw + (cols - 1) * gap, Canvas.width(title, ft)))
    H = _side(rng, cfg, 2 * m + ft.size + 12 + rows * (ph + gap))
    cv = Canvas(W, H, _light(rng) if rng.random() < 0.7 else (rng.randint(20, 50),) * 3)
    tcol = _dark(rng) if sum(cv.img.getpixel((0, 0))) > 300 else (245, 245, 245)
    cv.text(W // 2, m, title, ft, tcol, "center", stroke=rng.randint(0, 1))
    pw, y0 = (W - 2 * m - (cols - 1) * gap) // cols, m + ft.size + 12
    need, ph = ph, min((H - y0 - m) // rows - gap, ph + 60)  # panels grow to use the canvas, up to +60 px
    y0 += rng.randint(0, (H - y0 - m) - rows * (ph + gap))
    for k, (c, s) in enumerate(zip(caps, nums)):
        x, y = m + (k % cols) * (pw + gap), y0 + (k // cols) * (ph + gap)
        cv.draw.rectangle([x, y, x + pw, y + ph], fill=_vivid(rng))
        ty = y + 8 + (ph - need) // 2  # text block centred vertically in the panel
        cv.text(x + pw // 2, ty, s, fb, (250, 250, 250), "center")
        cv.text(x + pw // 2, ty + 6 + fb.size, c, f, (250, 250, 250), "center")
    qa = [{"question": f"What percentage {c}?", "answer": s, "type": "figure"} for c, s in zip(caps, nums)]
    qa.append({"question": "What is the title of the infographic?", "answer": title, "type": "text"})
    r = _pair_reasoning(rng, list(zip(caps, vals)), 0, lambda c: f"share who {c}", "Which share is larger, {} or {}?", "%")
    return cv, qa, [r]


def _scene(rng, cfg):
    W, H = rng.randint(cfg.min_side + 32, cfg.max_side), rng.randint(cfg.min_side, cfg.max_side)
    nrng = np.random.default_rng(rng.getrandbits(63))
    a, b = np.array(_light(rng) if rng.random() < 0.5 else _vivid(rng), float), np.array(_vivid(rng), float)
    t = np.linspace(0, 1, H)[:, None, None]
    bg = a * (1 - t) + b * t + np.zeros((1, W, 1))
    if cfg.noise > 0:  # low-frequency texture: cheap to compress, still breaks flat backgrounds
        small = nrng.normal(0, 18 * cfg.noise, (H // 24 + 2, W // 24 + 2, 3))
        bg += np.asarray(Image.fromarray(np.uint8(np.clip(small + 128, 0, 255))).resize((W, H), Image.BILINEAR), float) - 128
    cv = Canvas(W, H, 0)
    cv.img.paste(Image.fromarray(np.uint8(np.clip(bg, 0, 255))))
    cv.draw = ImageDraw.Draw(cv.img)
    for _ in range(rng.randint(1, 3)):  # background blocks ("buildings")
        x, y = rng.randint(0, W - 40), rng.randint(H // 3, H - 30)
        cv.draw.rectangle([x, y, x + rng.randint(30, 120), H], fill=tuple(rng.randint(60, 160) for _ in range(3)))
    f = _pick_font(rng, cfg, rng.randint(cfg.font_px[0] + 2, cfg.title_px[0]))
    places = rng.sample(PLACES, rng.randint(2, 3))
    dist = rng.sample(range(2, 99), len(places))
    pw = max(Canvas.width(p, f) for p in places) + Canvas.width("99", f) + 40
    ph = len(places) * int(f.size * 1.5) + 14
    occupied, qa = [], []

    def place(w, h):  # random spot not overlapping earlier signs
        for _ in range(30):
            x, y = rng.randint(4, max(4, W - w - 4)), rng.randint(4, max(4, H - h - 4))
            if all(x + w + 6 < o[0] or o[2] + 6 < x or y + h + 6 < o[1] or o[3] + 6 < y for o in occupied):
                occupied.append((x, y, x + w, y + h))
                return x, y
        return None

    x, y = place(pw, ph)
    cv.draw.rounded_rectangle([x, y, x + pw, y + ph], 6, fill=(0, 105, 60), outline=(240, 240, 240), width=2)
    for k, (p, d) in enumerate(zip(places, dist)):
        yy = y + 8 + k * int(f.size * 1.5)
        cv.text(x + 10, yy, p, f, (245, 245, 245))
        cv.text(x + pw - 10, yy, str(d), f, (245, 245, 245), "right")
        qa.append({"question": f"How far is {p} according to the green sign?", "answer": str(d), "type": "sign"})
    sign = rng.choice(["street", "stop", "shop", "speed"])
    fb = _pick_font(rng, cfg, rng.randint(*cfg.big_px))
    txt = {"street": rng.choice(STREETS), "stop": "STOP", "shop": rng.choice(SHOPS), "speed": str(rng.choice(range(15, 80, 5)))}[sign]
    fill, ink = {"street": ((20, 60, 150), (245, 245, 245)), "stop": ((190, 20, 30), (250, 250, 250)),
                 "shop": (_light(rng), _dark(rng)), "speed": ((245, 245, 245), (10, 10, 10))}[sign]
    sw, sh = Canvas.width(txt, fb) + 24, fb.size + 18 + (f.size + 6 if sign == "speed" else 0)
    spot = place(max(sw, Canvas.width("SPEED LIMIT", f) + 16), sh)
    if spot:
        x, y = spot
        w = max(sw, Canvas.width("SPEED LIMIT", f) + 16) if sign == "speed" else sw
        cv.draw.rounded_rectangle([x, y, x + w, y + sh], 5, fill=fill, outline=ink, width=2)
        if sign == "speed":
            cv.text(x + w // 2, y + 6, "SPEED LIMIT", f, ink, "center")
        cv.text(x + w // 2, y + sh - fb.size - 8, txt, fb, ink, "center", stroke=1 if sign != "shop" else 0)
        q = {"street": "What is the name of the street?", "stop": "What does the red sign say?",
             "shop": "What is written on the shop sign?", "speed": "What is the speed limit?"}[sign]
        qa.append({"question": q, "answer": txt, "type": "sign"})
    named = list(zip(places, dist))
    r = _pair_reasoning(rng, named, 0, lambda p: f"distance to {p}", "Which place is farther, {} or {}?")
    return cv, qa, [r]


# ---------------------------------------------------------------- assembly
def _speckle(img, rng, amount):
    """Sparse dust specks: 'mild noise' that keeps PNGs small (dense noise would triple file sizes)."""
    d = ImageDraw.Draw(img)
    W, H = img.size
    for _ in range(int(amount * W * H / 2500)):
        x, y, g = rng.randrange(W), rng.randrange(H), rng.randint(90, 200)
        d.point((x, y), fill=(g, g, g))


def _transcribe(runs):
    """Group runs into lines by vertical centre (top-to-bottom), then left-to-right within a line.
    Also returns, for each character of the text, the index of its glyph in the sample's chars
    (-1 for spaces and newlines): where to look to read it."""
    start, n = {}, 0
    for r in runs:
        start[id(r)], n = n, n + len(r["chars"])
    lines = []
    for r in sorted(runs, key=lambda r: ((r["box"][1] + r["box"][3]) / 2, r["box"][0])):
        yc, h = (r["box"][1] + r["box"][3]) / 2, r["box"][3] - r["box"][1]
        if lines and abs(yc - lines[-1][0]) <= 0.4 * min(h, lines[-1][1]):
            lines[-1][2].append(r)
        else:
            lines.append((yc, h, [r]))
    text, index = [], []
    for L in lines:
        for j, r in enumerate(sorted(L[2], key=lambda r: r["box"][0])):
            if j:
                text.append(" ")
                index.append(-1)
            k = start[id(r)]
            for ch in r["text"]:
                text.append(ch)
                index.append(-1 if ch == " " else k)
                k += ch != " "
        text.append("\n")
        index.append(-1)
    return "".join(text[:-1]), index[:-1]


DRAW = {"doc": _doc, "table": _table, "chart": _chart, "info": _info, "scene": _scene}


def check_kind(kind):
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")


def make_sample(kind, seed, cfg=None):
    """Render one sample of the shipped family; deterministic in (kind, seed, cfg). data/wide.py's make_sample
    draws every family, this one included."""
    check_kind(kind)
    cfg = cfg or Config()
    if cfg.family != "shipped":
        raise ValueError(f"family {cfg.family!r} is data/wide.py's: draw it with data.wide.make_sample")
    rng = random.Random(f"{kind}:{seed}")  # str seeds hash with sha512: stable across runs and machines
    cv, qa, reas = DRAW[kind](rng, cfg)
    return finish(kind, seed, cv, qa, reas, rng, cfg)


def finish(kind, seed, cv, qa, reas, rng, cfg):
    """A drawn canvas as a sample: specks (from rng, which drew it), the transcription and the boxes."""
    if cfg.noise > 0:
        _speckle(cv.img, rng, cfg.noise)
    text, char_index = _transcribe(cv.runs)
    words, chars, image = [w for r in cv.runs for w in r["words"]], [c for r in cv.runs for c in r["chars"]], cv.img
    return {"kind": kind, "seed": seed, "image": image, "width": image.width, "height": image.height,
            "words": words, "chars": chars, "transcription": text, "char_index": char_index, "qa": qa, "reasoning": reas}


def meta(sample):
    """JSON-serialisable metadata (everything but the image)."""
    return {k: v for k, v in sample.items() if k != "image"}


def bench(n=100, cfg=None):
    out = {}
    for kind in KINDS:
        t = time.perf_counter()
        for s in range(n):
            make_sample(kind, s, cfg)
        out[kind] = n / (time.perf_counter() - t)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", default="doc")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="")
    ap.add_argument("--truetype", action="store_true")
    ap.add_argument("--noise", type=float, default=Config.noise)
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--n", type=int, default=100, help="images per kind for --bench")
    a = ap.parse_args(argv)
    if a.kind not in KINDS:
        sys.exit(f"error: --kind must be one of {', '.join(KINDS)}")
    if a.n < 1 or a.noise < 0:
        sys.exit("error: --n must be >= 1 and --noise >= 0")
    cfg = Config(noise=a.noise, truetype=a.truetype)
    if a.bench:
        r = bench(a.n, cfg)
        for k, v in r.items():
            print(f"{k:6s} {v:7.1f} images/s")
        print(f"mean   {len(r) / sum(1 / v for v in r.values()):7.1f} images/s (single thread)")
        return
    s = make_sample(a.kind, a.seed, cfg)
    if a.out:
        s["image"].save(a.out)
    m = meta(s)
    print(json.dumps({k: m[k] for k in ("kind", "seed", "width", "height", "transcription", "qa", "reasoning")}, indent=1))
    print(f"{len(m['words'])} words, {len(m['chars'])} chars")


if __name__ == "__main__":
    main()
