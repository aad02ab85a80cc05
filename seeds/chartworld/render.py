"""Draw a ``Chart`` as a PNG with Pillow alone (no matplotlib: its output varies by version
and backend, and determinism is the point: same chart + style seed -> same bytes).

Layout rule that keeps the toy world learnable by tiny models trained from scratch on a
CPU: the image is a grid of 32x32 *tokens* (one Qwen-VL language-model token = 2x2
vision patches of 16 px), and each item's label and value share one token, each glyph
centred in its own 16x16 patch:

    +-------+-------+
    | label | value |     e.g. "C" | "5"
    +-------+-------+
    | (swatch / bar / blank)  |
    +-------+-------+

So "the value of C" is one content lookup (find the token showing C, read the digit
beside it), and a glyph always sits at the same offset inside its patch, so the digits
are linearly separable from the first step. What we measured before settling on this:
with labels and values in different tokens at free positions, a 4.7M teacher had
learned the number of items but read no glyph after 500 steps (loss plateau at ~0.9),
though the digits were linearly decodable from its vision tokens at initialisation.

Per kind, item k sits in token (row, column):
bar / line / table: (last row / last row / 1, k) -- one token column per item;
pie legend and document: row-major in a two-column block right of the pie / on the page.
"""

from __future__ import annotations

import io
import math
import random
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from seeds.chartworld.spec import PATCH, TOKEN, Chart, WorldConfig, capacity, item_token

# Distinct, saturated colours that stay distinct on white and from each other.
PALETTE: list[tuple[int, int, int]] = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (23, 190, 207), (188, 189, 34), (127, 127, 127),
]
INK = (20, 20, 20)
GRID = (215, 215, 215)
@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    # Pillow's embedded font: identical glyphs on every machine with this Pillow version,
    # unlike system fonts.
    return ImageFont.load_default(size=size)


def render_png(chart: Chart, cfg: WorldConfig, style_seed: int) -> bytes:
    """Render ``chart`` to PNG bytes; ``style_seed`` picks colours only (never data)."""
    rng = random.Random(style_seed)
    img = Image.new("RGB", (cfg.width, cfg.height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    drawer = {"bar": _bar, "line": _line, "pie": _pie, "table": _table, "document": _document}
    try:
        fn = drawer[chart.kind]
    except KeyError:
        raise ValueError(f"unknown chart kind {chart.kind!r}") from None
    if len(chart.values) > capacity(chart.kind, cfg.width, cfg.height):
        raise ValueError(f"{len(chart.values)} items do not fit a {cfg.width}x{cfg.height} {chart.kind}")
    fn(draw, chart, cfg, rng)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


# --- helpers -----------------------------------------------------------------------------
def _text(draw, x: float, y: float, s: str, cfg: WorldConfig, size: int | None = None) -> None:
    draw.text((x, y), s, fill=INK, font=_font(size or cfg.font_size), anchor="mm")


def _pair(draw, row: int, col: int, label: str, value: int, cfg: WorldConfig) -> None:
    """An item's label and value in token (row, col): top-left and top-right patches."""
    x, y = col * TOKEN, row * TOKEN + PATCH / 2
    _text(draw, x + PATCH / 2, y, label, cfg)
    if cfg.value_labels:
        _text(draw, x + PATCH * 1.5, y, str(value), cfg)


def _title(draw, chart: Chart, cfg: WorldConfig, left: bool = False) -> None:
    """Title in token row 0 (its top patch row): centred, or left-aligned on documents."""
    f = _font(cfg.font_size + 1)
    if left:
        draw.text((PATCH / 2, PATCH / 2 + 1), chart.title, fill=INK, font=f, anchor="lm")
    else:
        draw.text((cfg.width / 2, PATCH / 2 + 1), chart.title, fill=INK, font=f, anchor="mm")


def _axis(cfg: WorldConfig) -> tuple[float, float]:
    """(top, bottom) pixels of the plotting band: token rows 1 .. last-1."""
    return TOKEN, (cfg.height // TOKEN - 1) * TOKEN


def _y_of(value: int, cfg: WorldConfig) -> float:
    top, bottom = _axis(cfg)
    return bottom - (value / cfg.max_value) * (bottom - top - 4)


def _value_grid(draw, cfg: WorldConfig) -> None:
    """Without value labels a reader needs a scale: a light grid line per value step."""
    f = _font(max(8, cfg.font_size - 3))
    step = max(1, math.ceil(cfg.max_value / 8))
    for v in range(0, cfg.max_value + 1, step):
        y = _y_of(v, cfg)
        draw.line([(0, y), (cfg.width - 1, y)], fill=GRID)
        draw.text((cfg.width - 1, y), str(v), fill=INK, font=f, anchor="rm")


# --- chart kinds -------------------------------------------------------------------------
def _bar(draw, chart: Chart, cfg: WorldConfig, rng: random.Random) -> None:
    """Bars in token columns; each bar's "label value" tick sits under it, in the last row."""
    _title(draw, chart, cfg)
    if not cfg.value_labels:
        _value_grid(draw, cfg)
    color = rng.choice(PALETTE)
    _, bottom = _axis(cfg)
    for k, (label, value) in enumerate(zip(chart.labels, chart.values)):
        row, col = item_token("bar", k, cfg.width, cfg.height)
        x0 = col * TOKEN
        if value > 0:
            draw.rectangle([x0 + 6, _y_of(value, cfg), x0 + TOKEN - 7, bottom - 1], fill=color)
        _pair(draw, row, col, label, value, cfg)
    draw.line([(0, bottom), (cfg.width, bottom)], fill=INK)


def _line(draw, chart: Chart, cfg: WorldConfig, rng: random.Random) -> None:
    _title(draw, chart, cfg)
    if not cfg.value_labels:
        _value_grid(draw, cfg)
    color = rng.choice(PALETTE)
    _, bottom = _axis(cfg)
    cells = [item_token("line", k, cfg.width, cfg.height) for k in range(len(chart.values))]
    points = [(col * TOKEN + TOKEN / 2, _y_of(v, cfg)) for (_, col), v in zip(cells, chart.values)]
    draw.line([(0, bottom), (cfg.width, bottom)], fill=INK)
    draw.line(points, fill=color, width=2)
    for (row, col), (x, y), label, value in zip(cells, points, chart.labels, chart.values):
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        _pair(draw, row, col, label, value, cfg)


def _pie(draw, chart: Chart, cfg: WorldConfig, rng: random.Random) -> None:
    """A pie on the left; a legend of two token columns on the right, row-major, each entry
    "label value" over its colour swatch."""
    _title(draw, chart, cfg)
    colors = rng.sample(PALETTE, len(chart.values))
    legend_col = cfg.width // TOKEN - 2
    d = min(cfg.height - TOKEN - 4, legend_col * TOKEN - 6)
    x0, y0 = 2, TOKEN + (cfg.height - TOKEN - d) // 2
    total = sum(chart.values)
    angle = -90.0  # start at twelve o'clock, clockwise, as most pie charts do
    for value, color in zip(chart.values, colors):
        if value <= 0:
            continue
        sweep = 360.0 * value / total
        draw.pieslice([x0, y0, x0 + d, y0 + d], angle, angle + sweep, fill=color)
        angle += sweep
    for k, (label, value, color) in enumerate(zip(chart.labels, chart.values, colors)):
        row, col = item_token("pie", k, cfg.width, cfg.height)
        _pair(draw, row, col, label, value, cfg)
        sx, sy = col * TOKEN + PATCH / 2, row * TOKEN + PATCH * 1.5
        draw.rectangle([sx - 5, sy - 4, sx + 5 + PATCH, sy + 3], fill=color)


def _table(draw, chart: Chart, cfg: WorldConfig, rng: random.Random) -> None:
    """A ruled one-row table: a header cell per item (its label, top patch row) and its
    value right beside it; items in token columns, the header shaded."""
    _title(draw, chart, cfg)
    n = len(chart.values)
    header = rng.choice(PALETTE)
    shade = tuple(c // 3 + 170 for c in header)
    top, bottom, right = TOKEN, 2 * TOKEN, n * TOKEN
    draw.rectangle([0, top, right - 1, top + PATCH], fill=shade)
    for k, (label, value) in enumerate(zip(chart.labels, chart.values)):
        _pair(draw, *item_token("table", k, cfg.width, cfg.height), label, value, cfg)
    draw.rectangle([0, top, right - 1, bottom - 1], outline=INK)
    for k in range(1, n):
        draw.line([(k * TOKEN, top), (k * TOKEN, bottom - 1)], fill=INK)
    draw.line([(0, top + PATCH), (right - 1, top + PATCH)], fill=GRID)


def _document(draw, chart: Chart, cfg: WorldConfig, rng: random.Random) -> None:
    """A memo-like page: left-aligned title over a rule, then "label value" entries,
    row-major in two token columns per line of entries."""
    paper = rng.choice([(255, 255, 255), (250, 246, 232), (240, 244, 250)])
    draw.rectangle([0, 0, cfg.width - 1, cfg.height - 1], fill=paper, outline=GRID)
    _title(draw, chart, cfg, left=True)
    draw.line([(4, PATCH + 3), (cfg.width - 4, PATCH + 3)], fill=INK)
    for k, (label, value) in enumerate(zip(chart.labels, chart.values)):
        row, col = item_token("document", k, cfg.width, cfg.height)
        _pair(draw, row, col, label, value, cfg)
        y = row * TOKEN + PATCH + 4
        draw.line([(col * TOKEN + 3, y), (col * TOKEN + TOKEN - 3, y)], fill=GRID)
