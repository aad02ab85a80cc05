"""Question families over a ``Chart``: each returns a question, its exact answer, its skill
and a short worked reasoning, or ``None`` when it cannot be asked unambiguously (e.g.
"which is largest?" with a tie).

The reasoning is the toy teacher's ``<think>`` content: the facts the question needs, each
read off the chart by one lookup ("A 3 C 5", "max 9 min 2"), then the one computation
("3+5=8"). Giving a tiny model the intermediate values as tokens is what makes arithmetic
and multi-hop learnable in minutes of CPU; a student trained to answer directly lacks
exactly that. (A full left-to-right transcription of the chart first was tried and
dropped: addressing "the k-th item" by position was the slowest thing to learn.)

Every lookup's key is the token right before what it looks up: "C 5" (the value is
predicted *at* the label), "max 9 C" (the label at the value). With "C=5" or "max 9 at C"
the position that predicts must first fetch the key from the token before it, then match
it against the image: two hops, which the 4-layer toy teacher had not learned after 3000
steps (value_of 42%, argmax 12%: it answered with the largest value or a fixed letter).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from seeds.chartworld.spec import Chart

# How each kind names one item / its items, so questions read naturally per chart type.
ITEM_NOUN = {"bar": "bar", "line": "point", "pie": "legend entry", "table": "column",
             "document": "entry"}
ITEMS_NOUN = {"bar": "bars", "line": "points", "pie": "slices", "table": "columns",
              "document": "entries"}
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"]


@dataclass
class QA:
    question: str
    answer: str
    skill: str
    family: str
    reasoning: str  # worked steps (without the answer line)


def _qa(chart: Chart, question: str, answer: object, skill: str, family: str, steps: str) -> QA:
    return QA(question=question, answer=str(answer), skill=skill, family=family, reasoning=steps)


def _unique_arg(chart: Chart, pick: Callable[[list[int]], int]) -> int | None:
    """Index of the unique max/min value, or None on a tie."""
    target = pick(chart.values)
    idx = [i for i, v in enumerate(chart.values) if v == target]
    return idx[0] if len(idx) == 1 else None


# --- retrieval --------------------------------------------------------------------------
def value_of(chart: Chart, rng: random.Random) -> QA | None:
    i = rng.randrange(len(chart.labels))
    lab, v = chart.labels[i], chart.values[i]
    return _qa(chart, f"What is the value of {lab}?", v, "retrieval", "value_of", f"{lab} {v}")


# --- extremum ---------------------------------------------------------------------------
def argmax(chart: Chart, rng: random.Random) -> QA | None:
    i = _unique_arg(chart, max)
    if i is None:
        return None
    lab, v = chart.labels[i], chart.values[i]
    return _qa(chart, "Which label has the highest value?", lab, "extremum", "argmax",
               f"max {v} {lab}")


def argmin(chart: Chart, rng: random.Random) -> QA | None:
    i = _unique_arg(chart, min)
    if i is None:
        return None
    lab, v = chart.labels[i], chart.values[i]
    return _qa(chart, "Which label has the lowest value?", lab, "extremum", "argmin",
               f"min {v} {lab}")


# --- comparison -------------------------------------------------------------------------
def _distinct_pair(chart: Chart, rng: random.Random) -> tuple[int, int] | None:
    pairs = [(i, j) for i in range(len(chart.values)) for j in range(len(chart.values))
             if i != j and chart.values[i] != chart.values[j]]
    return rng.choice(pairs) if pairs else None


def larger_of_two(chart: Chart, rng: random.Random) -> QA | None:
    pair = _distinct_pair(chart, rng)
    if pair is None:
        return None
    (a, b), (va, vb) = [chart.labels[k] for k in pair], [chart.values[k] for k in pair]
    win = a if va > vb else b
    op = ">" if va > vb else "<"
    return _qa(chart, f"Which is larger, {a} or {b}?", win, "comparison", "larger_of_two",
               f"{a} {va} {b} {vb}. {va}{op}{vb}")


def is_greater(chart: Chart, rng: random.Random) -> QA | None:
    pair = _distinct_pair(chart, rng)
    if pair is None:
        return None
    (a, b), (va, vb) = [chart.labels[k] for k in pair], [chart.values[k] for k in pair]
    op = ">" if va > vb else "<"
    return _qa(chart, f"Is {a} greater than {b}?", "Yes" if va > vb else "No", "comparison",
               "is_greater", f"{a} {va} {b} {vb}. {va}{op}{vb}")


# --- counting ---------------------------------------------------------------------------
def count_items(chart: Chart, rng: random.Random) -> QA | None:
    n = len(chart.values)
    return _qa(chart, f"How many {ITEMS_NOUN[chart.kind]} are there?", n, "counting",
               "count_items", f"{n} items")


def count_above(chart: Chart, rng: random.Random) -> QA | None:
    lo, hi = min(chart.values), max(chart.values)
    if lo == hi:
        return None
    t = rng.randint(lo, hi - 1)  # a threshold with at least one value on each side
    above = [lab for lab, v in zip(chart.labels, chart.values) if v > t]
    return _qa(chart, f"How many values are greater than {t}?", len(above), "counting",
               "count_above", f"above {t}: {' '.join(above)}")


# --- arithmetic -------------------------------------------------------------------------
def _pair(chart: Chart, rng: random.Random) -> tuple[str, str, int, int]:
    i, j = rng.sample(range(len(chart.values)), 2)
    return chart.labels[i], chart.labels[j], chart.values[i], chart.values[j]


def sum_two(chart: Chart, rng: random.Random) -> QA | None:
    a, b, va, vb = _pair(chart, rng)
    return _qa(chart, f"What is the sum of {a} and {b}?", va + vb, "arithmetic", "sum_two",
               f"{a} {va} {b} {vb}. {va}+{vb}={va + vb}")


def diff_two(chart: Chart, rng: random.Random) -> QA | None:
    a, b, va, vb = _pair(chart, rng)
    hi, lo = max(va, vb), min(va, vb)
    return _qa(chart, f"What is the difference between {a} and {b}?", hi - lo, "arithmetic",
               "diff_two", f"{a} {va} {b} {vb}. {hi}-{lo}={hi - lo}")


def ratio_two(chart: Chart, rng: random.Random) -> QA | None:
    # Only pairs whose ratio is a whole number >= 2, so the exact answer stays short.
    pairs = [(i, j) for i in range(len(chart.values)) for j in range(len(chart.values))
             if i != j and chart.values[j] > 0 and chart.values[i] > chart.values[j]
             and chart.values[i] % chart.values[j] == 0]
    if not pairs:
        return None
    i, j = rng.choice(pairs)
    a, b, va, vb = chart.labels[i], chart.labels[j], chart.values[i], chart.values[j]
    return _qa(chart, f"What is the ratio of {a} to {b}?", va // vb, "arithmetic", "ratio_two",
               f"{a} {va} {b} {vb}. {va}/{vb}={va // vb}")


# --- multi-hop (find the extreme values, then compute) ----------------------------------
def max_minus_min(chart: Chart, rng: random.Random) -> QA | None:
    hi, lo = max(chart.values), min(chart.values)
    return _qa(chart, "What is the difference between the highest and the lowest value?",
               hi - lo, "multihop", "max_minus_min", f"max {hi} min {lo}. {hi}-{lo}={hi - lo}")


def max_plus_min(chart: Chart, rng: random.Random) -> QA | None:
    hi, lo = max(chart.values), min(chart.values)
    return _qa(chart, "What is the sum of the highest and the lowest value?", hi + lo,
               "multihop", "max_plus_min", f"max {hi} min {lo}. {hi}+{lo}={hi + lo}")


def max_minus_label(chart: Chart, rng: random.Random) -> QA | None:
    hi = max(chart.values)
    others = [i for i, v in enumerate(chart.values) if v < hi]
    if not others:
        return None
    i = rng.choice(others)
    lab, v = chart.labels[i], chart.values[i]
    return _qa(chart, f"How much higher is the highest value than {lab}?", hi - v, "multihop",
               "max_minus_label", f"max {hi}. {lab} {v}. {hi}-{v}={hi - v}")


# --- text (reading words off the image) -------------------------------------------------
def title(chart: Chart, rng: random.Random) -> QA | None:
    return _qa(chart, "What is the title?", chart.title, "text", "title", f"title {chart.title}")


def label_at(chart: Chart, rng: random.Random) -> QA | None:
    i = rng.choice([0, len(chart.labels) - 1]) if rng.random() < 0.5 else rng.randrange(len(chart.labels))
    ordinal = "last" if i == len(chart.labels) - 1 and rng.random() < 0.5 else ORDINALS[i]
    lab = chart.labels[i]
    return _qa(chart, f"What is the label of the {ordinal} {ITEM_NOUN[chart.kind]}?", lab, "text",
               "label_at", f"{ordinal} {lab}")


FAMILIES: dict[str, list[Callable[[Chart, random.Random], QA | None]]] = {
    "retrieval": [value_of],
    "extremum": [argmax, argmin],
    "comparison": [larger_of_two, is_greater],
    "counting": [count_items, count_above],
    "arithmetic": [sum_two, diff_two, ratio_two],
    "multihop": [max_minus_min, max_plus_min, max_minus_label],
    "text": [title, label_at],
}


def ask(chart: Chart, skill: str, rng: random.Random) -> QA | None:
    """One question of ``skill`` about ``chart``: families tried in random order."""
    families = list(FAMILIES[skill])
    rng.shuffle(families)
    for fam in families:
        qa = fam(chart, rng)
        if qa is not None:
            return qa
    return None


def recompute_answer(chart: Chart, qa: QA) -> str:
    """The answer derived again from the chart data and the question text alone.

    Independent of the family code above (it parses the question), so a test comparing
    the two catches a family that states a wrong answer.
    """
    q = qa.question
    labels = chart.labels
    vals = dict(zip(labels, chart.values))
    lab = "|".join(re.escape(x) for x in labels)
    hi, lo = max(chart.values), min(chart.values)
    m = re.fullmatch(rf"What is the value of ({lab})\?", q)
    if m:
        return str(vals[m[1]])
    if q == "Which label has the highest value?":
        return labels[chart.values.index(hi)]
    if q == "Which label has the lowest value?":
        return labels[chart.values.index(lo)]
    m = re.fullmatch(rf"Which is larger, ({lab}) or ({lab})\?", q)
    if m:
        return m[1] if vals[m[1]] > vals[m[2]] else m[2]
    m = re.fullmatch(rf"Is ({lab}) greater than ({lab})\?", q)
    if m:
        return "Yes" if vals[m[1]] > vals[m[2]] else "No"
    if re.fullmatch(r"How many [a-z ]+ are there\?", q) and "values" not in q:
        return str(len(labels))
    m = re.fullmatch(r"How many values are greater than (\d+)\?", q)
    if m:
        return str(sum(v > int(m[1]) for v in chart.values))
    m = re.fullmatch(rf"What is the sum of ({lab}) and ({lab})\?", q)
    if m:
        return str(vals[m[1]] + vals[m[2]])
    m = re.fullmatch(rf"What is the difference between ({lab}) and ({lab})\?", q)
    if m:
        return str(abs(vals[m[1]] - vals[m[2]]))
    m = re.fullmatch(rf"What is the ratio of ({lab}) to ({lab})\?", q)
    if m:
        return str(Fraction(vals[m[1]], vals[m[2]]))
    if q == "What is the difference between the highest and the lowest value?":
        return str(hi - lo)
    if q == "What is the sum of the highest and the lowest value?":
        return str(hi + lo)
    m = re.fullmatch(rf"How much higher is the highest value than ({lab})\?", q)
    if m:
        return str(hi - vals[m[1]])
    if q == "What is the title?":
        return chart.title
    m = re.fullmatch(r"What is the label of the (\w+) [a-z ]+\?", q)
    if m:
        return labels[-1] if m[1] == "last" else labels[ORDINALS.index(m[1])]
    raise ValueError(f"no rule recomputes {q!r}")
