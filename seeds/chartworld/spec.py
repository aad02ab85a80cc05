"""What a chart-world chart *is*: its underlying data, and the knobs that shape a world.

A ``Chart`` is the ground truth every question is answered from (and every test
recomputes answers from); rendering it to pixels is render.py's job, asking about it is
questions.py's. ``WorldConfig`` holds the difficulty parameters, as plain typed fields so
the run config can embed it.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from typing import Literal

from pipeline.core.skills import SKILLS as TAXONOMY

ChartKind = Literal["bar", "line", "pie", "table", "document"]
CHART_KINDS: list[str] = ["bar", "line", "pie", "table", "document"]

# The skills a chart-world question can exercise: the taxonomy (pipeline/core/skills.py)
# but for what a chart of labelled marks cannot ask, in the taxonomy's order (which the
# generator's draws depend on).
SKILLS: list[str] = [s for s in TAXONOMY if s not in ("perception", "other")]

# Category label sets. Short strings: a label has to fit under a bar of a small image.
LABEL_SETS: dict[str, list[str]] = {
    "letters": list("ABCDEFGH"),
    "days": ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
    "months": ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug"],
    "fruits": ["Fig", "Kiwi", "Lime", "Pear", "Plum", "Date", "Apple", "Grape"],
}

# Titles: one word each, so "text" questions have a short exact answer.
TITLES: list[str] = [
    "Sales", "Votes", "Rain", "Clicks", "Orders", "Profit", "Visits", "Scores",
    "Energy", "Budget", "Trips", "Births",
]


# The token grid every chart is drawn on (render.py says why): an item's label and value
# share one 32x32 language-model token, each glyph centred in its own 16x16 patch.
PATCH = 16  # a vision patch: every short text is centred in one
TOKEN = 32  # a language-model token: 2x2 patches


def capacity(kind: str, width: int, height: int) -> int:
    """How many items a chart of ``kind`` can show at this size (one token each)."""
    cols, rows = width // TOKEN, height // TOKEN
    if kind in ("bar", "line"):  # title row, >= 1 plotting row, tick row
        return cols if rows >= 3 else 0
    if kind == "table":
        return cols
    if kind == "pie":  # the pie needs two columns beside the two-column legend
        return 2 * (rows - 1) if cols >= 4 else 0
    if kind == "document":
        return (cols // 2) * (rows - 1)
    raise ValueError(f"unknown chart kind {kind!r}")


def item_token(kind: str, k: int, width: int, height: int) -> tuple[int, int]:
    """(row, column) of the 32x32 token holding item ``k``'s label and value."""
    cols, rows = width // TOKEN, height // TOKEN
    if kind in ("bar", "line"):
        return rows - 1, k
    if kind == "table":
        return 1, k
    if kind == "pie":
        return 1 + k // 2, cols - 2 + k % 2
    if kind == "document":
        per_row = cols // 2
        return 1 + k // per_row, 2 * (k % per_row)
    raise ValueError(f"unknown chart kind {kind!r}")


@dataclass
class WorldConfig:
    """Difficulty knobs of a chart world (the defaults are the toy models' world)."""

    kinds: list[str] = field(default_factory=lambda: list(CHART_KINDS))
    min_items: int = 3  # bars / points / slices / rows per chart
    max_items: int = 5
    min_value: int = 1  # values are integers on this closed range ("coarse value grid")
    max_value: int = 9
    label_set: str = "letters"  # key of LABEL_SETS
    ordered_labels: bool = False  # True: labels in set order (A, B, C...); False: a random subset
    width: int = 160  # pixels; multiples of 32 (one Qwen-VL token) so nothing is resized
    height: int = 128  # and each item's label + value fill one token (see render.py)
    value_labels: bool = True  # print each value on/next to its mark (reading = OCR)
    font_size: int = 12
    # Relative weight of each skill when drawing a question; a skill absent here is never
    # asked. None = all skills equally.
    skill_weights: dict[str, float] | None = None

    def validate(self) -> None:
        bad = [k for k in self.kinds if k not in CHART_KINDS]
        if bad or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {CHART_KINDS}, got {self.kinds}")
        if self.label_set not in LABEL_SETS:
            raise ValueError(f"label_set {self.label_set!r} not in {sorted(LABEL_SETS)}")
        if not 2 <= self.min_items <= self.max_items <= len(LABEL_SETS[self.label_set]):
            raise ValueError(
                f"need 2 <= min_items <= max_items <= {len(LABEL_SETS[self.label_set])} "
                f"(size of label set {self.label_set!r}); got {self.min_items}..{self.max_items}"
            )
        if not 0 <= self.min_value < self.max_value:
            raise ValueError(f"need 0 <= min_value < max_value, got {self.min_value}..{self.max_value}")
        if self.width < 64 or self.height < 64 or self.width % 32 or self.height % 32:
            raise ValueError(f"image sides must be multiples of 32, at least 64; got {self.width}x{self.height}")
        for kind in self.kinds:
            room = capacity(kind, self.width, self.height)
            if self.max_items > room:
                raise ValueError(f"a {self.width}x{self.height} {kind} holds at most {room} items "
                                 f"(one 32x32 token each), max_items is {self.max_items}")
        weights = self.skill_weights or {}
        unknown = [s for s in weights if s not in SKILLS]
        if unknown:
            raise ValueError(f"unknown skills {unknown}; known: {SKILLS}")
        if self.skill_weights is not None and not any(w > 0 for w in weights.values()):
            raise ValueError("skill_weights gives every skill weight 0")


@dataclass
class Chart:
    """The data behind one image: what is drawn, and so what every answer derives from."""

    kind: str
    title: str
    labels: list[str]
    values: list[int]

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.values) or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be distinct and match values: {self.labels} {self.values}")

    def value_of(self, label: str) -> int:
        return self.values[self.labels.index(label)]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def as_table(self) -> str:
        """The data as a small text table (what a text-only rewriter is shown instead of
        the image): kind and title, then one ``label | value`` line per item, in order."""
        lines = [f"A {self.kind} chart titled {self.title!r}.", "label | value"]
        lines += [f"{label} | {value}" for label, value in zip(self.labels, self.values)]
        return "\n".join(lines)

    @classmethod
    def from_json(cls, text: str) -> Chart:
        return cls(**json.loads(text))


def sample_chart(cfg: WorldConfig, rng: random.Random) -> Chart:
    """Draw a chart's data from the world: kind, title, distinct labels, integer values."""
    kind = rng.choice(cfg.kinds)
    n = rng.randint(cfg.min_items, cfg.max_items)
    pool = LABEL_SETS[cfg.label_set]
    if cfg.ordered_labels:
        start = rng.randint(0, len(pool) - n)
        labels = pool[start:start + n]
    else:
        labels = rng.sample(pool, n)
    values = [rng.randint(cfg.min_value, cfg.max_value) for _ in range(n)]
    return Chart(kind=kind, title=rng.choice(TITLES), labels=labels, values=values)
