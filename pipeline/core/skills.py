"""The skill taxonomy: the names failure reports, rewrites and evaluations group by.

A seed adapter or the chart world may name a skill; a prompt without one can be tagged by
an LLM (pipeline/sampling/skill_tags.py), which only ever answers with a name from here,
so failure reports stay grouped.
"""

from __future__ import annotations

SKILLS: dict[str, str] = {
    "retrieval": "read one value or label off the image",
    "extremum": "find the largest or smallest item",
    "comparison": "compare two items",
    "counting": "count items",
    "arithmetic": "compute a sum, difference or ratio of read values",
    "multihop": "chain several reads and steps",
    "text": "read text such as a title, heading or caption",
    "perception": "recognise objects, colours, shapes or positions",
    "other": "anything else",
}
UNKNOWN = "unknown"  # the group of rows that name no skill (or no source)
