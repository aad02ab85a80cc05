"""Final answers: extraction from raw model output, a canonical form, and matching.

Δ compares *answers*, not texts, so everything here decides which two outputs count as
"the same answer". The rules are deliberately explicit and listed here; tests hold one
case per rule (tests/test_answers.py).

Extraction (:func:`extract_answer`), first rule that applies wins
------------------------------------------------------------------
1. Reasoning blocks. Everything up to the *last* closing ``</think>`` (also ``</thinking>``,
   ``</reasoning>``, ``</thought>`` and Kimi's ``◁/think▷``) is dropped. A lone closing tag
   is enough (chat templates often prefill the opening tag). An opening tag with no closing
   tag means the reasoning was cut off: **no answer** (None).
2. ``<answer>…</answer>``: the last tagged block; its content goes through rules 3-5 and is
   used verbatim when they find nothing. An unclosed ``<answer>`` takes the rest of the
   text, unless the output was truncated (then the answer may be partial: None).
3. ``\\boxed{…}`` / ``\\fbox{…}`` with nested braces: the last *balanced* one wins (an
   unbalanced box was cut off and is ignored).
4. An answer line: the last "Answer: X" / "Final answer: X" (markdown bold allowed around
   the label or the value; a full-width colon too). An empty line after the label takes the
   next non-empty line, as does a "### Final Answer" heading. The value is then searched for
   a box or an "answer is" phrase once more ("Answer: The answer is 5" -> "5").
5. An "answer is" phrase: the last "the (final|correct|…) answer/option/choice is X"; X runs
   to the end of the sentence (a period followed by a space or the end, so "3.5" survives) or
   to "because"/"since"/"as".
6. Multiple choice (only when ``choices`` is given): the last "(B)" / "option B" / "choice B"
   naming a letter within range.
7. A short bare answer: the whole (post-reasoning) text when it is one line of at most
   ``BARE_MAX_WORDS`` words and ``BARE_MAX_CHARS`` characters and not a refusal.
Otherwise None. With ``truncated=True`` (the engine stopped on the token limit) rules 6-7
are skipped: a short fragment of a cut-off output is not an answer.

Normalisation (:func:`normalize_answer`), applied in this order
---------------------------------------------------------------
* Unicode NFKC, control characters removed, markup unwrapped: markdown bold/code,
  ``$…$``, ``\\(…\\)``, ``\\boxed{}``, ``\\text{}``, ``\\mathrm{}``, ``\\%``, ``\\$``, ``\\,``;
  ``\\frac{a}{b}`` becomes "a/b"; leftover braces (LaTeX grouping) go. Surrounding quotes
  and brackets and trailing punctuation go.
* Multiple choice (``choices`` given): "(B)", "B.", "b", "B) 45", "Option B" -> "B" when the
  letter is within range; the text of an option (compared in normal form, numbers by value)
  -> its letter. Options may carry their own "A." prefix. Anything else falls through.
* Yes/no: "yes"/"no"/"true"/"false" alone or followed by punctuation ("Yes, it did.") ->
  "yes"/"no". "Yes it did" without punctuation stays text.
* Numbers: an optional approximation word ("about", "approximately", "~", …), currency
  symbol or code, sign (ASCII or Unicode minus), digits with comma thousands separators
  (groups of exactly three), a decimal part, an optional percent sign or word, and up to
  three unit words ("kg", "°C", "million", "people"). The canonical form is the decimal
  value with no exponent, trailing zeros or separators: "1,234.0 kg" -> "1234",
  "$0.50" -> "0.5", "-3.20" -> "-3.2". A comma not in groups of three ("3,5") is not a
  number (it is European-decimal or a list: we do not guess). Number words zero-twenty and
  tens ("three people") count as numbers.
* **Percent rule**: the percent sign (or "percent"/"per cent"/"pct") is dropped and the
  number kept as written: "45%" == "45" == "45 percent", but "0.45" stays 0.45. Charts
  quote percentages as plain numbers on their axis, and ChartQA's gold is "45" for a bar
  labelled 45%; a fraction is a different number and we do not guess its scale.
* Scale words ("million", "k", "bn", …) are *units* and dropped like units ("3.5 million"
  -> "3.5"): chart answers quote the number in the axis' unit.
* Text: lower case, whitespace collapsed, articles (a, an, the) removed, leading and
  trailing punctuation stripped; a text that then reads as a number or yes/no is classed
  as one (":00" -> "0"), so normalising a normal form changes nothing. A normal form
  never ends with punctuation and starts with punctuation only as a number's minus sign,
  which keeps sentinel classes like "[no answer]" (pipeline/core/divergence.py) collision-free.
* With choices, a lone in-range letter left after stripping ("B#") is that option.

Matching (:func:`answers_match`)
--------------------------------
* ``relaxed`` (ChartQA): both sides normalised; numbers match within 5% relative to the
  gold, except a gold of 0 (exact) and a gold that is a 4-digit year between
  ``YEAR_RANGE`` written without separators or decimals (exact: 2019 vs 2020 is wrong,
  not 0.05% off). Text matches when the normal forms are equal.
* ``anls`` (DocVQA): ANLS with threshold 0.5 on lower-cased, whitespace-collapsed strings:
  a match when the normalised Levenshtein distance is below 0.5
  (:func:`anls_score` gives the graded score).
* ``exact``: normal forms equal (no numeric tolerance).
A list of golds matches when any gold does; a None prediction never matches.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Literal

MatchMode = Literal["relaxed", "anls", "exact"]

BARE_MAX_WORDS = 8
BARE_MAX_CHARS = 64
RELAXED_TOLERANCE = 0.05
ANLS_THRESHOLD = 0.5
YEAR_RANGE = (1800, 2100)  # inclusive; years outside are compared like any number

# ---------------------------------------------------------------------------- extraction

_REASON_TAGS = r"(?:think|thinking|reasoning|thought)"
_REASON_CLOSE = re.compile(rf"(?:</{_REASON_TAGS}\s*>|◁/think▷)", re.IGNORECASE)
_REASON_OPEN = re.compile(rf"(?:<{_REASON_TAGS}\s*>|◁think▷)", re.IGNORECASE)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
# "Answer:" / "**Final Answer:**" / "Final answer**:" ... the value runs to the line end.
_ANSWER_LINE = re.compile(
    r"(?<![A-Za-z])(?:final\s+)?answer\s*(?:\*\*|__)?\s*[:：]\s*(?:\*\*|__)?[ \t]*([^\n]*)",
    re.IGNORECASE,
)
_FINAL_HEADING = re.compile(
    r"^\s*#+\s*(?:\*\*)?\s*final\s+answer\s*(?:\*\*)?\s*:?\s*$", re.IGNORECASE | re.MULTILINE
)
_ANSWER_IS = re.compile(
    r"(?<![A-Za-z])answer\s+(?:is|would\s+be|should\s+be|must\s+be|=)\s*:?\s*([^\n]*)"
    r"|(?<![A-Za-z])(?:correct|right|best|final)\s+(?:option|choice)\s+(?:is|would\s+be)\s*:?\s*([^\n]*)",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(
    r"\.(?=\s|$)|[;!?](?=\s|$)|\s+(?:because|since|as|which|so)\b|,\s+(?:because|since|as|which|so)\b",
    re.IGNORECASE,
)
_MC_MENTION = re.compile(
    r"(?:\(([A-Za-z])\)|\b(?:option|choice)\s+\(?([A-Za-z])\b\)?)", re.IGNORECASE
)
_REFUSAL = re.compile(
    r"^\W*(?:i'?m\s+sorry|sorry|i\s+(?:cannot|can't|can\s*not|am\s+unable|'m\s+unable|am\s+not\s+able)"
    r"|unable\s+to|as\s+an\s+ai|i\s+do\s+not\s+know|i\s+don't\s+know|it\s+is\s+not\s+possible"
    r"|it's\s+not\s+possible|there\s+is\s+no\s+way)",
    re.IGNORECASE,
)


def extract_answer(
    text: str | None, choices: Sequence[str] | None = None, *, truncated: bool = False
) -> str | None:
    """The final answer in a model output, or None when it gives none (rules: module doc).

    ``truncated``: the engine stopped on the token limit (``finish_reason == "length"``);
    only explicit answer markers are trusted then.
    """
    if text is None:
        return None
    body = _strip_reasoning(text)
    if body is None:
        return None
    body = body.strip()
    if not body:
        return None

    tagged = _ANSWER_TAG.findall(body)
    if tagged:
        inner = tagged[-1].strip()
        return (_from_markers(inner) or _clean_value(inner)) if inner else None
    open_tag = list(_ANSWER_OPEN.finditer(body))
    if open_tag:
        if truncated:
            return None
        inner = body[open_tag[-1].end() :].strip()
        return (_from_markers(inner) or _clean_value(inner)) if inner else None

    found = _from_markers(body)
    if found:
        return found
    if truncated:
        return None
    if choices:
        letter = _mc_mention(body, len(choices))
        if letter:
            return letter
    return _bare(body)


def _strip_reasoning(text: str) -> str | None:
    closes = list(_REASON_CLOSE.finditer(text))
    if closes:
        return text[closes[-1].end() :]
    if _REASON_OPEN.search(text):
        return None  # reasoning opened and never closed: cut off by the token limit
    return text


def _from_markers(body: str) -> str | None:
    """Rules 3-5: a box, an answer line, an 'answer is' phrase (last of each kind)."""
    box = last_boxed(body)
    if box:
        return box
    heading = list(_FINAL_HEADING.finditer(body))
    lines = list(_ANSWER_LINE.finditer(body))
    # A "### Final Answer" heading after the last "Answer:" line wins: take its next line.
    if heading and (not lines or heading[-1].start() > lines[-1].start()):
        nxt = _next_nonempty_line(body, heading[-1].end())
        if nxt:
            return _from_markers(nxt) or _clean_value(nxt)
    for m in reversed(lines):
        value = m.group(1).strip()
        if not _clean_value(value):
            value = _next_nonempty_line(body, m.end()) or ""
        value = value.strip()
        if _clean_value(value):
            inner = _answer_is(value)
            return inner or _clean_value(_cut_sentence(value, keep_short=True))
    return _answer_is(body)


def _answer_is(body: str) -> str | None:
    hits = list(_ANSWER_IS.finditer(body))
    for m in reversed(hits):
        value = (m.group(1) if m.group(1) is not None else m.group(2)) or ""
        value = _clean_value(_cut_sentence(value))
        if value:
            return value
    return None


def _cut_sentence(value: str, keep_short: bool = False) -> str:
    """Up to the end of the sentence; an "Answer:" line of a few words is kept whole."""
    value = value.strip()
    if keep_short and len(value.split()) <= 3:
        return value
    m = _SENTENCE_END.search(value)
    return value[: m.start()] if m else value


def _next_nonempty_line(body: str, pos: int) -> str | None:
    for line in body[pos:].split("\n"):
        if line.strip():
            return line.strip()
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last balanced ``\\boxed{...}`` (nested braces allowed), or None."""
    best: str | None = None
    for m in _BOX_START.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            content = text[m.end() : i - 1].strip()
            if content:
                best = content
    return best


def _mc_mention(body: str, n_choices: int) -> str | None:
    last_line = [ln for ln in body.strip().split("\n") if ln.strip()][-1]
    for m in reversed(list(_MC_MENTION.finditer(last_line))):
        letter = (m.group(1) or m.group(2)).upper()
        if ord(letter) - 65 < n_choices:
            return letter
    return None


def _bare(body: str) -> str | None:
    text = body.strip()
    if "\n" in text or len(text) > BARE_MAX_CHARS or len(text.split()) > BARE_MAX_WORDS:
        return None
    if _REFUSAL.search(text):
        return None
    return _clean_value(text)


def _clean_value(value: str) -> str | None:
    """Trim markdown emphasis and trailing sentence punctuation; None when nothing is left."""
    v = value.strip()
    v = re.sub(r"^(?:\*\*|__|\*|`)+|(?:\*\*|__|\*|`)+$", "", v).strip()
    v = re.sub(r"[.;,!]+$", "", v).strip()
    v = re.sub(r"^(?:\*\*|__|\*|`)+|(?:\*\*|__|\*|`)+$", "", v).strip()
    return v or None


# ------------------------------------------------------------------------- normalisation

_ARTICLES = re.compile(r"\b(?:a|an|the)\b", re.IGNORECASE)
# Characters stripped from both ends of a text answer (ASCII + common Unicode punctuation).
_EDGE_PUNCT = "\"'`.,;:!?()[]{}<>*_-–—“”‘’«»「」『』…/\\|#~"
_LATEX_WRAPPERS = re.compile(
    r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname|boxed|fbox)\s*\{"
)
_APPROX = r"(?:about|approximately|approx\.?|around|roughly|nearly|almost|circa|ca\.|~|≈)"
_CURRENCY = r"(?:[$€£¥₹₩]|usd|us\$|eur|gbp|jpy|inr|rs\.?)"
_NUMBER_RE = re.compile(
    rf"""^(?:{_APPROX}\s*)?
    (?P<cur1>{_CURRENCY})?\s*
    (?P<sign>[-+\u2212])?\s*
    (?P<cur2>{_CURRENCY})?\s*
    (?P<num>\d{{1,3}}(?:,\d{{3}})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)
    \s*(?P<pct>%|percent\b|per\s*cent\b|pct\b)?
    (?P<unit>(?:\s*[^\s\d]+){{0,3}})
    \s*$""",
    re.VERBOSE | re.IGNORECASE,
)
_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
} | {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_YES = {"yes", "true"}
_NO = {"no", "false"}
_CANONICAL_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")


def normalize_answer(ans: str, choices: Sequence[str] | None = None) -> str:
    """Canonical form of an extracted answer (rules: module doc). Never raises on text."""
    if not isinstance(ans, str):
        raise TypeError(f"normalize_answer expects a str, got {type(ans).__name__}")
    s = _unwrap_markup(ans)
    if choices:
        letter = _choice_letter(s, choices)
        if letter:
            return letter
    free = _normalize_free(s)
    # A lone in-range letter left after stripping ("B#" -> "b") is that option, so that
    # normalising a normal form again gives the same class.
    # (ASCII only: 'ß'.upper() is 'SS', and no option is lettered outside A-Z.)
    if choices and len(free) == 1 and free.isascii() and free.isalpha() and ord(free.upper()) - 65 < len(choices):
        return free.upper()
    return free


def _normalize_free(s: str) -> str:
    """Normalisation without choices: yes/no, number, or text."""
    yn = _yes_no(s)
    if yn:
        return yn
    num = _number(s)
    if num is not None:
        return num
    text = _normalize_text(s)
    # Stripping may expose a number or yes/no (":00" -> "00"): classify once more, so
    # normalising a normal form again gives the same class.
    num = _number(text)
    return _yes_no(text) or (num if num is not None else text)


def _unwrap_markup(ans: str) -> str:
    s = unicodedata.normalize("NFKC", ans)
    s = "".join(ch for ch in s if unicodedata.category(ch) != "Cc" or ch in "\n\t")
    s = s.replace("\\%", "%").replace("\\$", "$").replace("\\,", "").replace("\\!", "")
    s = (
        s.replace("\\left", "")
        .replace("\\right", "")
        .replace("^\\circ", "°")
        .replace("^{\\circ}", "°")
    )
    s = re.sub(r"\\d?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"\1/\2", s)
    # Unwrap \text{...}-style commands (innermost first, so nesting unwraps fully).
    for _ in range(8):
        m = _LATEX_WRAPPERS.search(s)
        if not m:
            break
        depth, i = 1, m.end()
        while i < len(s) and depth:
            depth += {"{": 1, "}": -1}.get(s[i], 0)
            i += 1
        inner = s[m.end() : i - 1] if depth == 0 else s[m.end() :]
        s = s[: m.start()] + inner + s[i:]
    s = re.sub(r"\\\(|\\\)|\\\[|\\\]", " ", s)
    s = s.replace("$$", " ")
    # A $...$ pair is math; a lone $ is currency and stays.
    if s.count("$") >= 2 and re.fullmatch(r"\s*\$[^$]*\$\s*", s):
        s = s.strip().strip("$")
    s = re.sub(r"\*\*|__|`", "", s)
    s = s.replace("{", "").replace("}", "")  # what is left of braces is LaTeX grouping
    s = " ".join(s.split())
    return s.strip().strip("\"'“”‘’«»").rstrip(".,;:!?").strip()


def _yes_no(s: str) -> str | None:
    m = re.fullmatch(r"(yes|no|true|false)(?:\s*[,.!;:].*)?", s.strip(), re.IGNORECASE | re.DOTALL)
    if not m:
        return None
    word = m.group(1).lower()
    return "yes" if word in _YES else "no"


def _number(s: str) -> str | None:
    s = s.strip()
    first, _, rest = s.partition(" ")
    if first.lower() in _NUMBER_WORDS:
        s = f"{_NUMBER_WORDS[first.lower()]} {rest}".strip()
    m = _NUMBER_RE.match(s)
    if not m:
        return None
    unit = m.group("unit") or ""
    # Unit words must not smuggle in another answer ("5 or 6", "3 - 4"): letters/symbols only.
    if any(
        tok in {"-", "–", "to", "or", "and", "/", "x", "×", "+"} for tok in unit.lower().split()
    ):
        return None
    try:
        value = Decimal(m.group("num").replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the regex only admits valid decimals
        return None
    if m.group("sign") in ("-", "\u2212"):
        value = -value
    return canonical_number(value)


def canonical_number(value: Decimal | float) -> str:
    """Decimal string of a number: no exponent, no trailing zeros, no "-0"."""
    d = Decimal(str(value)) if not isinstance(value, Decimal) else value
    if d == 0:
        return "0"
    text = format(d.normalize(), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _normalize_text(s: str) -> str:
    t = s.lower()
    t = _ARTICLES.sub(" ", t)
    t = " ".join(t.split())
    return t.strip(_EDGE_PUNCT + " ").strip()


_LETTER_ONLY = re.compile(r"^[\(\[]?([A-Za-z])[\)\]]?$")
_LETTER_LABELLED = re.compile(
    r"^(?:option|choice|answer)\s*[:]?\s*[\(\[]?([A-Za-z])[\)\]]?(?:$|[\s.:)])", re.IGNORECASE
)
_LETTER_BRACKETED = re.compile(r"^[\(\[]([A-Za-z])[\)\]]")
_LETTER_PREFIX = re.compile(r"^([A-Za-z])[.:)]\s")


def _choice_letter(s: str, choices: Sequence[str]) -> str | None:
    n = len(choices)

    def in_range(letter: str) -> str | None:
        up = letter.upper()
        return up if 0 <= ord(up) - 65 < n else None

    for pat in (_LETTER_ONLY, _LETTER_LABELLED, _LETTER_BRACKETED, _LETTER_PREFIX):
        m = pat.match(s)
        if m and in_range(m.group(1)):
            return in_range(m.group(1))
    # The option's text, compared in normal form (numbers by value).
    target = _normalize_free(s)
    hits = [i for i, c in enumerate(choices) if _normalize_free(_option_text(c, i)) == target]
    if len(hits) == 1:
        return chr(65 + hits[0])
    return None


def _option_text(choice: str, index: int) -> str:
    """An option without its own "A." / "(A)" prefix (when the prefix is its own letter)."""
    c = _unwrap_markup(str(choice))
    m = re.match(r"^[\(\[]?([A-Za-z])[\)\].:]\s*", c)
    if m and m.group(1).upper() == chr(65 + index) and len(c) > m.end():
        return c[m.end() :]
    return c


# ------------------------------------------------------------------------------ matching


def answers_match(
    pred: str | None,
    gold: str | Sequence[str],
    mode: MatchMode = "relaxed",
    choices: Sequence[str] | None = None,
) -> bool:
    """Whether a predicted answer matches the gold (or any of a list of golds)."""
    if pred is None:
        return False
    golds = [gold] if isinstance(gold, str) else list(gold)
    if mode == "anls":
        return anls_score(pred, golds) > 0.0
    if mode not in ("relaxed", "exact"):
        raise ValueError(f"unknown match mode {mode!r}: use 'relaxed', 'anls' or 'exact'")
    p = normalize_answer(pred, choices)
    for g_raw in golds:
        g = normalize_answer(g_raw, choices)
        if mode == "exact":
            if p == g:
                return True
            continue
        pn, gn = _as_decimal(p), _as_decimal(g)
        if pn is not None and gn is not None:
            if gn == 0 or _is_year(g_raw):
                if pn == gn:
                    return True
            elif abs(pn - gn) <= Decimal(str(RELAXED_TOLERANCE)) * abs(gn):
                return True
        elif p == g:
            return True
    return False


def _as_decimal(normal: str) -> Decimal | None:
    return Decimal(normal) if _CANONICAL_NUMBER.match(normal) else None


def _is_year(raw: str) -> bool:
    """A 4-digit integer in YEAR_RANGE written without separators or decimals."""
    s = raw.strip().rstrip(".")
    return bool(re.fullmatch(r"\d{4}", s)) and YEAR_RANGE[0] <= int(s) <= YEAR_RANGE[1]


def anls_score(
    pred: str | None, gold: str | Sequence[str], threshold: float = ANLS_THRESHOLD
) -> float:
    """ANLS of one prediction: max over golds of 1 - NL, or 0 when NL >= threshold.

    NL is the Levenshtein distance divided by the longer string's length, on lower-cased,
    whitespace-collapsed strings (the DocVQA protocol; no further normalisation).
    """
    if pred is None:
        return 0.0
    golds = [gold] if isinstance(gold, str) else list(gold)
    p = " ".join(pred.lower().split())
    best = 0.0
    for g_raw in golds:
        g = " ".join(g_raw.lower().split())
        longest = max(len(p), len(g))
        nl = 0.0 if longest == 0 else levenshtein(p, g) / longest
        if nl < threshold:
            best = max(best, 1.0 - nl)
    return best


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute; cost 1 each)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]
