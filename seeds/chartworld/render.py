"""Draw a ``Chart`` as a PNG with Pillow alone (no matplotlib: its output varies by version
and backend, and determinism is the point: same chart + style seed -> same bytes).

Layout choice that keeps the toy world learnable by tiny models: items sit in fixed slots
of width ``width / max_items`` (32 px for the default 160 px / 5 items, which is exactly one
Qwen-VL merged token of 16 px patches x 2), so a bar, its value label and its category
label always fall in the same token column.
"""

from __future__ import annotations

import io
import math
import random
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from seeds.chartworld.spec import Chart, WorldConfig

# Distinct, saturated colours that stay distinct on white and from each other.
PALETTE: list[tuple[int, int, int]] = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (23, 190, 207), (188, 189, 34), (127, 127, 127),
]
INK = (20, 20, 20)
GRID = (215, 215, 215)
TITLE_H = 18  # pixels reserved for the title line
XLABEL_H = 16  # pixels reserved under the plot for category labels


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
    fn(draw, chart, cfg, rng)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _title(draw: ImageDraw.ImageDraw, chart: Chart, cfg: WorldConfig, x: float | None = None) -> None:
    f = _font(cfg.font_size + 1)
    if x is None:
        draw.text((cfg.width / 2, TITLE_H / 2 + 1), chart.title, fill=INK, font=f, anchor="mm")
    else:
        draw.text((x, TITLE_H / 2 + 1), chart.title, fill=INK, font=f, anchor="lm")


def _slots(chart: Chart, cfg: WorldConfig) -> list[float]:
    """x centre of each item: fixed-width slots, the group centred to a whole slot."""
    slot = cfg.width / cfg.max_items
    offset = (cfg.max_items - len(chart.values)) // 2
    return [(offset + i + 0.5) * slot for i in range(len(chart.values))]


def _plot_box(cfg: WorldConfig) -> tuple[float, float]:
    """(top, bottom) of the plotting band; room above the top for a value label."""
    top = TITLE_H + cfg.font_size + 4
    bottom = cfg.height - XLABEL_H - 2
    return top, bottom


def _y_of(value: int, cfg: WorldConfig) -> float:
    top, bottom = _plot_box(cfg)
    return bottom - (value / cfg.max_value) * (bottom - top)


def _value_grid(draw: ImageDraw.ImageDraw, cfg: WorldConfig) -> None:
    """Without value labels a reader needs a scale: a light grid line per value step."""
    f = _font(max(8, cfg.font_size - 3))
    step = max(1, math.ceil(cfg.max_value / 10))
    for v in range(0, cfg.max_value + 1, step):
        y = _y_of(v, cfg)
        draw.line([(10, y), (cfg.width - 1, y)], fill=GRID)
        draw.text((1, y), str(v), fill=INK, font=f, anchor="lm")


def _bar(draw, chart: Chart, cfg: WorldConfig, rng: random.Random) -> None:
    _title(draw, chart, cfg)
    if not cfg.value_labels:
        _value_grid(draw, cfg)
    color = rng.choice(PALETTE)
    f = _font(cfg.font_size)
    _, bottom = _plot_box(cfg)
    half = cfg.width / cfg.max_items * 0.3
    for x, label, value in zip(_slots(chart, cfg), chart.labels, chart.values):
        y = _y_of(value, cfg)
        if value > 0:
            draw.rectangle([x - half, y, x + half, bottom], fill=color)
        if cfg.value_labels:
            draw.text((x, y - 2), str(value), fill=INK, font=f, anchor="mb")
        draw.text((x, bottom + 2 + XLABEL_H / 2), label, fill=INK, font=f, anchor="mm")
    draw.line([(0, bottom), (cfg.width, bottom)], fill=INK)


def _line(draw, chart: Chart, cfg: WorldConfig, rng: random.Random) -> None:
    _title(draw, chart, cfg)
    if not cfg.value_labels:
        _value_grid(draw, cfg)
    color = rng.choice(PALETTE)
    f = _font(cfg.font_size)
    _, bottom = _plot_box(cfg)
    points = [(x, _y_of(v, cfg)) for x, v in zip(_slots(chart, cfg), chart.values)]
    draw.line([(0, bottom), (cfg.width, bottom)], fill=INK)
    draw.line(points, fill=color, width=2)
    for (x, y), label, value in zip(points, chart.labels, chart.values):
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        if cfg.value_labels:
            draw.text((x, y - 4), str(value), fill=INK, font=f, anchor="mb")
        draw.text((x, bottom + 2 + XLABEL_H / 2), label, fill=INK, font=f, anchor="mm")


def _pie(draw, chart: Chart, cfg: WorldConfig, rng: random.Random) -> None:
    """A pie on the left, a legend (swatch, label, value) on the right, one entry a row."""
    _title(draw, chart, cfg)
    colors = rng.sample(PALETTE, len(chart.values))
    d = min(cfg.height - TITLE_H - 6, int(cfg.width * 0.55))
    x0, y0 = 3, TITLE_H + (cfg.height - TITLE_H - d) // 2
    total = sum(chart.values)
    angle = -90.0  # start at twelve o'clock, clockwise, as most pie charts do
    for value, color in zip(chart.values, colors):
        if value <= 0:
            continue
        sweep = 360.0 * value / total
        draw.pieslice([x0, y0, x0 + d, y0 + d], angle, angle + sweep, fill=color)
        angle += sweep
    f = _font(cfg.font_size)
    lx = x0 + d + 6
    row = (cfg.height - TITLE_H) / cfg.max_items
    for i, (label, value, color) in enumerate(zip(chart.labels, chart.values, colors)):
        cy = TITLE_H + (i + 0.5) * row
        draw.rectangle([lx, cy - 4, lx + 8, cy + 4], fill=color)
        text = f"{label} {value}" if cfg.value_labels else label
        draw.text((lx + 12, cy), text, fill=INK, font=f, anchor="lm")


def _table(draw, chart: Chart, cfg: WorldConfig, rng: random.Random) -> None:
    """A ruled two-column table: header row, then label | value rows."""
    _title(draw, chart, cfg)
    f = _font(cfg.font_size)
    n_rows = len(chart.values) + 1
    row = (cfg.height - TITLE_H - 2) / max(n_rows, cfg.max_items + 1)
    left, right, mid = 4, cfg.width - 4, cfg.width // 2
    top = TITLE_H + 1
    header_fill = rng.choice(PALETTE)
    draw.rectangle([left, top, right, top + row], fill=tuple(c // 2 + 128 for c in header_fill))
    cells = [("Item", "Value")] + [(lab, str(v)) for lab, v in zip(chart.labels, chart.values)]
    for i, (a, b) in enumerate(cells):
        cy = top + (i + 0.5) * row
        draw.text(((left + mid) / 2, cy), a, fill=INK, font=f, anchor="mm")
        draw.text(((mid + right) / 2, cy), b, fill=INK, font=f, anchor="mm")
    bottom = top + n_rows * row
    for i in range(n_rows + 1):
        y = top + i * row
        draw.line([(left, y), (right, y)], fill=INK)
    for x in (left, mid, right):
        draw.line([(x, top), (x, bottom)], fill=INK)


def _document(draw, chart: Chart, cfg: WorldConfig, rng: random.Random) -> None:
    """A memo-like page: left-aligned title with a rule, then one "label: value" line each."""
    paper = rng.choice([(255, 255, 255), (250, 246, 232), (240, 244, 250)])
    draw.rectangle([0, 0, cfg.width - 1, cfg.height - 1], fill=paper, outline=GRID)
    _title(draw, chart, cfg, x=6)
    draw.line([(6, TITLE_H + 1), (cfg.width - 6, TITLE_H + 1)], fill=INK)
    f = _font(cfg.font_size)
    row = (cfg.height - TITLE_H - 4) / cfg.max_items
    for i, (label, value) in enumerate(zip(chart.labels, chart.values)):
        cy = TITLE_H + 3 + (i + 0.5) * row
        draw.text((10, cy), f"{label}: {value}", fill=INK, font=f, anchor="lm")
