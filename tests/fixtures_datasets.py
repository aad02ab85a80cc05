"""Builders of small seed datasets in the real Hub layouts, and broken variants of them.

Column names and feature types follow the published ``dataset_info`` of each dataset
(HuggingFaceM4/ChartQA, lmms-lab/ChartQA, lmms-lab/DocVQA's DocVQA and InfographicVQA
configs, HuggingFaceM4/the_cauldron, AI4Math/MathVista, lmms-lab/ai2d). Images are small
generated bar charts, so every fixture is built in milliseconds and carries distinct pixels.

Records are plain dicts (images as ``{"bytes", "path"}`` structs) so a test can break one
field before turning the list into a ``datasets.Dataset`` with :func:`to_dataset` and
writing it in an on-disk layout (:func:`write_hub_parquet`, :func:`write_saved`,
:func:`write_jsonl`).
"""

from __future__ import annotations

import io
import json
import random
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value
from PIL import Image as PILImage

# ---------------------------------------------------------------------------------------
# Images


def chart_image(seed: int, size: tuple[int, int] = (48, 32)) -> PILImage.Image:
    """A small bar chart: distinct pixels per seed (so distinct prompt ids)."""
    rng = random.Random(seed)
    w, h = size
    img = PILImage.new("RGB", size, (255, 255, 255))
    px = img.load()
    bars = 4
    for b in range(bars):
        height = rng.randint(2, h - 2)
        colour = (rng.randint(0, 200), rng.randint(0, 200), rng.randint(0, 200))
        for x in range(b * w // bars + 1, (b + 1) * w // bars - 1):
            for y in range(h - height, h):
                px[x, y] = colour
    return img


def encode(img: PILImage.Image, fmt: str = "PNG", **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def image_struct(data: bytes) -> dict[str, Any]:
    return {"bytes": data, "path": None}


def corrupt_bytes() -> bytes:
    """A PNG signature followed by garbage: recognised as PNG, fails to decode."""
    return b"\x89PNG\r\n\x1a\n" + b"\x00garbage-not-a-png-chunk" * 4


def truncated_png(seed: int = 0) -> bytes:
    data = encode(chart_image(seed, (64, 64)))
    return data[: len(data) // 2]


def solid_png(width: int, height: int, colour: tuple[int, int, int] = (30, 120, 200)) -> bytes:
    """A large solid-colour PNG: 40 MP compresses to ~130 kB, decodes in ~0.5 s."""
    return encode(PILImage.new("RGB", (width, height), colour))


def solid_jpeg(width: int, height: int, colour: tuple[int, int, int] = (30, 120, 200)) -> bytes:
    return encode(PILImage.new("RGB", (width, height), colour), "JPEG", quality=95)


def cmyk_jpeg(colour: tuple[int, int, int, int] = (0, 255, 255, 0)) -> bytes:
    """A CMYK JPEG (default: pure red in CMYK)."""
    return encode(PILImage.new("CMYK", (32, 24), colour), "JPEG", quality=95)


def gray16_png(value: int = 32768, size: tuple[int, int] = (32, 24)) -> bytes:
    """A 16-bit greyscale PNG (opens as mode I;16) at one level."""
    arr = np.full((size[1], size[0]), value, dtype=np.uint16)
    return encode(PILImage.fromarray(arr))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with one tiny IDAT: no memory needed to
    build, and Pillow judges the size at open time (decompression-bomb check)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


# ---------------------------------------------------------------------------------------
# Features as published on the Hub

CHARTQA_M4_FEATURES = Features({
    "image": Image(),
    "query": Value("string"),
    "label": List(Value("string")),
    "human_or_machine": ClassLabel(names=["human", "machine"]),
})
CHARTQA_LMMS_FEATURES = Features({
    "type": Value("string"),
    "question": Value("string"),
    "answer": Value("string"),
    "image": Image(),
})
CHARTWORLD_FEATURES = Features({
    "type": Value("string"),
    "question": Value("string"),
    "answer": Value("string"),
    "image": Image(),
    "skill": Value("string"),
    "chart_kind": Value("string"),
})
DOCVQA_FEATURES = Features({
    "questionId": Value("string"),
    "question": Value("string"),
    "question_types": List(Value("string")),
    "image": Image(),
    "docId": Value("int64"),
    "ucsf_document_id": Value("string"),
    "ucsf_document_page_no": Value("string"),
    "answers": List(Value("string")),
    "data_split": Value("string"),
})
INFOVQA_FEATURES = Features({
    "questionId": Value("string"),
    "question": Value("string"),
    "answers": List(Value("string")),
    "answer_type": List(Value("string")),
    "image": Image(),
    "image_url": Value("string"),
    "operation/reasoning": List(Value("string")),
    "ocr": Value("string"),
    "data_split": Value("string"),
})
CAULDRON_FEATURES = Features({
    "images": List(Image()),
    "texts": List({
        "user": Value("string"),
        "assistant": Value("string"),
        "source": Value("string"),
    }),
})
MATHVISTA_FEATURES = Features({
    "pid": Value("string"),
    "question": Value("string"),
    "image": Value("string"),
    "decoded_image": Image(),
    "choices": List(Value("string")),
    "unit": Value("string"),
    "precision": Value("float64"),
    "answer": Value("string"),
    "question_type": Value("string"),
    "answer_type": Value("string"),
    "metadata": {
        "category": Value("string"),
        "context": Value("string"),
        "grade": Value("string"),
        "img_height": Value("int64"),
        "img_width": Value("int64"),
        "language": Value("string"),
        "skills": List(Value("string")),
        "source": Value("string"),
        "split": Value("string"),
        "task": Value("string"),
    },
    "query": Value("string"),
})
AI2D_FEATURES = Features({
    "question": Value("string"),
    "options": List(Value("string")),
    "answer": Value("string"),
    "image": Image(),
})
GENERIC_FEATURES = Features({
    "uid": Value("string"),
    "img": Image(),
    "prompt": Value("string"),
    "gold": Value("string"),
    "opts": List(Value("string")),
    "category": Value("string"),
})


# ---------------------------------------------------------------------------------------
# Records per layout (seed offsets keep images distinct across layouts)


def _png(seed: int) -> dict[str, Any]:
    return image_struct(encode(chart_image(seed)))


def chartqa_m4_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    return [{"image": _png(seed + i), "query": f"What is the value of bar {i}?",
             "label": [str(10 + i)], "human_or_machine": i % 2} for i in range(n)]


def chartqa_lmms_records(n: int, seed: int = 100) -> list[dict[str, Any]]:
    return [{"type": "human_test" if i % 2 else "augmented_test",
             "question": f"How many bars exceed {i}?", "answer": str(i % 4),
             "image": _png(seed + i)} for i in range(n)]


def chartworld_records(n: int, seed: int = 200) -> list[dict[str, Any]]:
    skills = ["value_lookup", "comparison", "trend"]
    return [{"type": "synthetic", "question": f"Which bar is tallest in chart {i}?",
             "answer": "ABCD"[i % 4], "image": _png(seed + i), "skill": skills[i % 3],
             "chart_kind": "bar"} for i in range(n)]


def docvqa_records(n: int, seed: int = 300) -> list[dict[str, Any]]:
    return [{"questionId": str(5000 + i), "question": f"What is the date on page {i}?",
             "question_types": ["layout"], "image": _png(seed + i), "docId": 90 + i,
             "ucsf_document_id": f"doc{i:04d}", "ucsf_document_page_no": "1",
             "answers": [f"{i} May 1999", f"May {i}, 1999"], "data_split": "val"}
            for i in range(n)]


def infographicvqa_records(n: int, seed: int = 400) -> list[dict[str, Any]]:
    return [{"questionId": str(7000 + i), "question": f"What percentage is shown in {i}?",
             "answers": [f"{10 * i}%"], "answer_type": ["single span"],
             "image": _png(seed + i), "image_url": f"https://example.invalid/{i}.png",
             "operation/reasoning": ["counting"], "ocr": json.dumps({"words": ["x"] * 50}),
             "data_split": "val"} for i in range(n)]


def cauldron_records(n: int, seed: int = 500, turns: int = 2) -> list[dict[str, Any]]:
    return [{"images": [_png(seed + i)],
             "texts": [{"user": f"Question {t} about image {i}?\nAnswer briefly.",
                        "assistant": f"Answer: {chr(ord('A') + t)}", "source": "ai2d"}
                       for t in range(turns)]} for i in range(n)]


def mathvista_records(n: int, seed: int = 600) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        multi = i % 2 == 0
        out.append({
            "pid": str(i + 1), "question": f"What is the angle at vertex {i}?",
            "image": f"images/{i + 1}.jpg", "decoded_image": _png(seed + i),
            "choices": ["30°", "45°", "60°", "90°"] if multi else None,
            "unit": None, "precision": None if multi else 1.0,
            "answer": "45°" if multi else str(1.5 + i),
            "question_type": "multi_choice" if multi else "free_form",
            "answer_type": "text" if multi else "float",
            "metadata": {"category": "math-targeted-vqa", "context": "geometry diagram",
                         "grade": "high school", "img_height": 32, "img_width": 48,
                         "language": "english", "skills": ["geometry reasoning"],
                         "source": "Geometry3K", "split": "testmini",
                         "task": "geometry problem solving"},
            "query": f"Hint: ... Question: What is the angle at vertex {i}?",
        })
    return out


def ai2d_records(n: int, seed: int = 700) -> list[dict[str, Any]]:
    return [{"question": f"Which stage comes after stage {i}?",
             "options": ["egg", "larva", "pupa", "adult"], "answer": str(i % 4),
             "image": _png(seed + i)} for i in range(n)]


def generic_records(n: int, seed: int = 800) -> list[dict[str, Any]]:
    return [{"uid": f"g{i}", "img": _png(seed + i), "prompt": f"Read the label of bar {i}.",
             "gold": f"label{i}", "opts": [f"label{i}", "other"],
             "category": "ocr"} for i in range(n)]


# format name -> (records builder, features, Hub config folder or None, split)
LAYOUTS: dict[str, tuple[Any, Features, str | None, str]] = {
    "chartqa_m4": (chartqa_m4_records, CHARTQA_M4_FEATURES, None, "train"),
    "chartqa_lmms": (chartqa_lmms_records, CHARTQA_LMMS_FEATURES, None, "test"),
    "chartworld": (chartworld_records, CHARTWORLD_FEATURES, None, "train"),
    "docvqa": (docvqa_records, DOCVQA_FEATURES, "DocVQA", "validation"),
    "infographicvqa": (infographicvqa_records, INFOVQA_FEATURES, "InfographicVQA",
                       "validation"),
    "cauldron": (cauldron_records, CAULDRON_FEATURES, "ai2d", "train"),
    "mathvista": (mathvista_records, MATHVISTA_FEATURES, None, "testmini"),
    "ai2d": (ai2d_records, AI2D_FEATURES, None, "test"),
    "generic": (generic_records, GENERIC_FEATURES, None, "train"),
}


def to_dataset(records: list[dict[str, Any]], features: Features) -> Dataset:
    columns = {name: [r[name] for r in records] for name in features}
    return Dataset.from_dict(columns, features=features)


# ---------------------------------------------------------------------------------------
# On-disk layouts


def write_hub_parquet(ds: Dataset, root: Path, split: str, config: str | None = None,
                      num_files: int = 1, rows_per_group: int | None = None) -> Path:
    """The layout of a downloaded Hub repo: ``<config or data>/<split>-0000k-of-0000n.parquet``.

    ``rows_per_group`` forces small Parquet row groups so multi-group reads are exercised.
    """
    folder = Path(root) / (config or "data")
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(num_files):
        part = ds.shard(num_shards=num_files, index=k, contiguous=True)
        path = folder / f"{split}-{k:05d}-of-{num_files:05d}.parquet"
        kwargs = {"batch_size": rows_per_group} if rows_per_group else {}
        part.to_parquet(str(path), **kwargs)
    return Path(root)


def write_hub_readme(root: Path, config: str, splits: list[str]) -> None:
    """A dataset card declaring one config's data files, as lmms-lab/DocVQA's does."""
    lines = ["---", "configs:", f"- config_name: {config}", "  data_files:"]
    for split in splits:
        lines += [f"  - split: {split}", f"    path: {config}/{split}-*"]
    lines += ["---", ""]
    (Path(root) / "README.md").write_text("\n".join(lines))


def write_saved(ds: Dataset, root: Path, split: str) -> Path:
    DatasetDict({split: ds}).save_to_disk(str(root))
    return Path(root)


def write_jsonl(records: list[dict[str, Any]], root: Path, image_key: str = "image",
                name: str = "data.jsonl", raw_lines: list[str] | None = None) -> Path:
    """A JSONL file with images saved beside it under ``images/`` (paths relative to the
    JSONL). An image value that is ``bytes`` or an image struct is written to a file;
    a ``str`` is kept as given (to point at missing files); ``raw_lines`` are appended
    verbatim (for invalid JSON)."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, rec in enumerate(records):
        rec = dict(rec)
        value = rec.get(image_key)
        if isinstance(value, dict):
            value = value["bytes"]
        if isinstance(value, bytes):
            rel = f"images/{i:05d}.img"
            (root / rel).write_bytes(value)
            rec[image_key] = rel
        lines.append(json.dumps(rec))
    lines += list(raw_lines or [])
    path = root / name
    path.write_text("\n".join(lines) + "\n")
    return path
