"""Seed adapters on fixture datasets in the real layouts: rows, ids, skips and errors.

The datasets are built by tests/fixtures_datasets.py with the published column names and
feature types, written as a downloaded Hub repo (Parquet), a save_to_disk folder or a
JSONL file + image folder, and read back through seeds.adapters exactly as ingest does.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from datasets import Features, Value, load_dataset
from PIL import Image

import tests.fixtures_datasets as fx
from pipeline.core.config import SourceConfig
from pipeline.core.errors import SourceError
from pipeline.core.images import normalize_image
from pipeline.core.schema import prompt_id, prompt_schema, rows_to_table
from seeds.adapters import Skip, count_source_rows, iter_source_rows

MAX_PIXELS = 4096  # fixture charts are 48x32 = 1536 px: untouched by the cap


def collect(src: SourceConfig, start: int = 0, stop: int | None = None):
    rows, skips = [], []
    for item in iter_source_rows(src, start, stop):
        (skips if isinstance(item, Skip) else rows).append(item)
    return rows, skips


def expected_id(image, question: str, max_pixels: int = MAX_PIXELS) -> str:
    return prompt_id(normalize_image(image, max_pixels), question)


def source_for(fmt: str, path: Path, **kw) -> SourceConfig:
    _, _, config, split = fx.LAYOUTS[fmt]
    kw.setdefault("config_name", config)
    kw.setdefault("split", split)
    kw.setdefault("max_pixels", MAX_PIXELS)
    return SourceConfig(format=fmt, path=str(path), **kw)


# What each layout's record must turn into: list of (image, question, answers, choices,
# skill, meta subset) — one entry per expected row.
def expected_rows(fmt: str, rec: dict) -> list[tuple]:
    if fmt == "chartqa_m4":
        return [(rec["image"], rec["query"], rec["label"], [], None,
                 {"human_or_machine": ["human", "machine"][rec["human_or_machine"]]})]
    if fmt == "chartqa_lmms":
        return [(rec["image"], rec["question"], [rec["answer"]], [], None,
                 {"type": rec["type"]})]
    if fmt == "chartworld":
        return [(rec["image"], rec["question"], [rec["answer"]], [], rec["skill"],
                 {"type": rec["type"], "chart_kind": rec["chart_kind"]})]
    if fmt == "docvqa":
        return [(rec["image"], rec["question"], rec["answers"], [], None,
                 {"questionId": rec["questionId"], "docId": rec["docId"]})]
    if fmt == "infographicvqa":
        return [(rec["image"], rec["question"], rec["answers"], [], None,
                 {"questionId": rec["questionId"],
                  "operation/reasoning": rec["operation/reasoning"]})]
    if fmt == "cauldron":
        return [(rec["images"][0], t["user"], [t["assistant"]], [], None,
                 {"turn": k, "cauldron_source": t["source"]})
                for k, t in enumerate(rec["texts"])]
    if fmt == "mathvista":
        return [(rec["decoded_image"], rec["question"], [rec["answer"]],
                 rec["choices"] or [], None,
                 {"pid": rec["pid"], "precision": rec["precision"],
                  "metadata": rec["metadata"]})]
    if fmt == "ai2d":
        idx = int(rec["answer"])
        return [(rec["image"], rec["question"], [rec["options"][idx]], rec["options"], None,
                 {"answer_index": idx})]
    if fmt == "generic":
        return [(rec["img"], rec["prompt"], [rec["gold"]], rec["opts"], rec["category"],
                 {"source_id": rec["uid"]})]
    raise AssertionError(fmt)


GENERIC_COLUMNS = {"image": "img", "question": "prompt", "answers": "gold",
                   "choices": "opts", "skill": "category", "id": "uid"}


def write_layout(fmt: str, records: list[dict], root: Path, layout: str) -> Path:
    _, features, config, split = fx.LAYOUTS[fmt]
    ds = fx.to_dataset(records, features)
    if layout == "hub_parquet":
        return fx.write_hub_parquet(ds, root, split, config, num_files=2, rows_per_group=2)
    if layout == "save_to_disk":
        return fx.write_saved(ds, root, split)
    raise AssertionError(layout)


def check_rows(fmt: str, src: SourceConfig, records: list[dict], rows: list[dict]) -> None:
    want = [w for rec in records for w in expected_rows(fmt, rec)]
    assert len(rows) == len(want)
    for row, (image, question, answers, choices, skill, meta_subset) in zip(rows, want):
        assert row["id"] == expected_id(image, question)
        assert row["question"] == question.strip()
        assert row["answers"] == answers
        assert row["choices"] == choices
        assert row["skill"] == skill
        assert row["source"] == src.label and row["split"] == src.split
        meta = json.loads(row["meta"])
        for key, value in meta_subset.items():
            assert meta[key] == value, key
        assert isinstance(meta["source_index"], int)
        stored = Image.open(io.BytesIO(row["image"]["bytes"]))
        assert stored.format == "PNG" and stored.mode == "RGB"


@pytest.mark.parametrize("layout", ["hub_parquet", "save_to_disk"])
@pytest.mark.parametrize("fmt", sorted(fx.LAYOUTS))
def test_each_layout_ingests_every_record(fmt, layout, tmp_path):
    records = fx.LAYOUTS[fmt][0](5)
    root = write_layout(fmt, records, tmp_path / fmt, layout)
    kw = {"columns": GENERIC_COLUMNS} if fmt == "generic" else {}
    src = source_for(fmt, root, **kw)
    assert count_source_rows(src) == 5
    rows, skips = collect(src)
    assert skips == []
    check_rows(fmt, src, records, rows)
    # Rows are canonical: they fit the shared Arrow schema.
    assert rows_to_table(rows).schema.equals(prompt_schema(), check_metadata=False)


def test_infographicvqa_meta_leaves_out_the_ocr_blob(tmp_path):
    root = write_layout("infographicvqa", fx.infographicvqa_records(2), tmp_path, "hub_parquet")
    rows, _ = collect(source_for("infographicvqa", root))
    assert all("ocr" not in json.loads(r["meta"]) for r in rows)
    # ...unless asked for by name.
    rows, _ = collect(source_for("infographicvqa", root, meta_columns=["ocr"]))
    assert all("ocr" in json.loads(r["meta"]) for r in rows)


@pytest.mark.parametrize("fmt", ["chartqa_lmms", "docvqa", "ai2d", "generic"])
def test_jsonl_with_image_folder(fmt, tmp_path):
    records = fx.LAYOUTS[fmt][0](4)
    image_key = "img" if fmt == "generic" else "image"
    path = fx.write_jsonl(records, tmp_path / "src", image_key=image_key)
    kw = {"columns": GENERIC_COLUMNS} if fmt == "generic" else {}
    # Run from elsewhere: image paths must resolve against the JSONL's folder, not the cwd.
    src = SourceConfig(format=fmt, path=str(path), split="train", max_pixels=MAX_PIXELS, **kw)
    rows, skips = collect(src)
    assert skips == []
    check_rows(fmt, src, records, rows)


def test_jsonl_folder_picks_the_split_file(tmp_path):
    fx.write_jsonl(fx.chartqa_lmms_records(3), tmp_path, name="train.jsonl")
    fx.write_jsonl(fx.chartqa_lmms_records(2, seed=900), tmp_path, name="test.jsonl")
    src = SourceConfig(format="chartqa_lmms", path=str(tmp_path), split="test")
    assert count_source_rows(src) == 2


def test_hub_id_goes_through_load_dataset(tmp_path, monkeypatch):
    # No network here: the hub id is a local copy of a Hub repo (README configs + Parquet
    # in the published folder names), which `datasets.load_dataset` reads through the same
    # call and data-files resolution as a cached Hub download.

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    records = fx.docvqa_records(3)
    ds = fx.to_dataset(records, fx.DOCVQA_FEATURES)
    repo = tmp_path / "repo"
    fx.write_hub_parquet(ds, repo, "validation", "DocVQA")
    fx.write_hub_readme(repo, "DocVQA", ["validation"])
    src = SourceConfig(format="docvqa", hub_id=str(repo), config_name="DocVQA",
                       split="validation", name="lmms-lab/DocVQA", max_pixels=MAX_PIXELS)
    assert count_source_rows(src) == 3
    rows, skips = collect(src)
    assert skips == []
    check_rows("docvqa", src, records, rows)
    assert (tmp_path / "cache").is_dir()  # the Arrow cache went where we pointed it


def test_uncached_hub_id_offline_is_a_clear_source_error(tmp_path):
    # HF_HUB_OFFLINE is read when huggingface_hub is imported: use a fresh interpreter with
    # an empty cache, so nothing can be found and nothing is fetched.
    code = (
        "from seeds.adapters import count_source_rows, SourceError\n"
        "from pipeline.core.config import SourceConfig\n"
        "try:\n"
        "    count_source_rows(SourceConfig(format='chartqa_m4',"
        " hub_id='HuggingFaceM4/ChartQA'))\n"
        "except SourceError as e:\n"
        "    print('SOURCE_ERROR', e)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    assert "SOURCE_ERROR" in out.stdout, out.stderr[-2000:]
    assert "HuggingFaceM4/ChartQA" in out.stdout and "HF_HUB_OFFLINE" in out.stdout


def test_shards_by_index_range_cover_the_source_exactly(tmp_path):
    records = fx.chartqa_lmms_records(23)
    ds = fx.to_dataset(records, fx.CHARTQA_LMMS_FEATURES)
    fx.write_hub_parquet(ds, tmp_path, "test", num_files=3, rows_per_group=4)
    src = source_for("chartqa_lmms", tmp_path)
    n = count_source_rows(src)
    assert n == 23
    full, _ = collect(src)
    pieces = [collect(src, a, b)[0] for a, b in ((0, 7), (7, 15), (15, None))]
    assert [r["id"] for p in pieces for r in p] == [r["id"] for r in full]
    assert [json.loads(r["meta"])["source_index"] for r in full] == list(range(23))
    assert collect(src, 23, None) == ([], [])
    with pytest.raises(ValueError):
        list(iter_source_rows(src, 5, 2))


def test_sampling_is_seeded_and_limit_applies_after_it(tmp_path):
    ds = fx.to_dataset(fx.chartqa_lmms_records(30), fx.CHARTQA_LMMS_FEATURES)
    fx.write_hub_parquet(ds, tmp_path, "test", rows_per_group=8)
    full = [r["id"] for r in collect(source_for("chartqa_lmms", tmp_path))[0]]

    def ids(**kw):
        src = source_for("chartqa_lmms", tmp_path, **kw)
        got = [r["id"] for r in collect(src)[0]]
        assert len(got) == count_source_rows(src)
        return got

    a = ids(sample=8, seed=1)
    assert len(a) == 8 and len(set(a)) == 8 and set(a) <= set(full)
    assert ids(sample=8, seed=1) == a  # same seed, same subset (every shard agrees)
    assert ids(sample=8, seed=2) != a
    assert [full.index(i) for i in a] == sorted(full.index(i) for i in a)  # source order
    assert ids(sample=8, seed=1, limit=3) == a[:3]
    assert ids(limit=4) == full[:4]
    assert ids(sample=100) == full  # asking for more than there is: everything
    assert ids(limit=0) == []


def test_malformed_rows_are_counted_skips_and_valid_rows_survive(tmp_path):
    records = fx.chartqa_lmms_records(10)
    good = [dict(r) for r in records]
    records[1]["image"] = fx.image_struct(fx.corrupt_bytes())
    records[2]["question"] = ""
    records[3]["question"] = "   \n"
    records[4]["image"] = fx.image_struct(fx.truncated_png(4))
    records[5]["image"] = None
    records[6]["image"] = fx.image_struct(b"")  # a 0-byte image
    records[7]["answer"] = ""
    records[8]["answer"] = None
    ds = fx.to_dataset(records, fx.CHARTQA_LMMS_FEATURES)
    fx.write_hub_parquet(ds, tmp_path, "test")
    rows, skips = collect(source_for("chartqa_lmms", tmp_path))
    assert Counter(s.reason for s in skips) == {
        "corrupt_image": 3, "empty_question": 2, "missing_image": 1, "empty_answer": 2}
    assert {s.index for s in skips} == {1, 2, 3, 4, 5, 6, 7, 8}
    assert next(s for s in skips if s.index == 6).detail == "empty file"
    assert "cannot decode" in next(s for s in skips if s.index == 1).detail
    # Nothing valid is lost: records 0 and 9, with the ids of the untouched originals.
    assert [r["id"] for r in rows] == [
        expected_id(good[i]["image"], good[i]["question"]) for i in (0, 9)]


def test_missing_column_is_a_source_error_naming_it(tmp_path):
    records = fx.chartqa_lmms_records(3)
    features = Features({k: v for k, v in fx.CHARTQA_LMMS_FEATURES.items() if k != "answer"})
    ds = fx.to_dataset(records, features)
    fx.write_hub_parquet(ds, tmp_path, "test")
    src = source_for("chartqa_lmms", tmp_path)
    for call in (lambda: count_source_rows(src), lambda: list(iter_source_rows(src))):
        with pytest.raises(SourceError) as err:
            call()
        msg = str(err.value)
        assert "'answer'" in msg and "missing" in msg
        assert "columns present" in msg and "'question'" in msg and "'type'" in msg
        assert src.label in msg


def test_wrong_layout_for_the_data_is_a_source_error(tmp_path):
    # A ChartQA (M4) folder read as if it were DocVQA.
    ds = fx.to_dataset(fx.chartqa_m4_records(2), fx.CHARTQA_M4_FEATURES)
    fx.write_hub_parquet(ds, tmp_path, "train")
    with pytest.raises(SourceError, match=r"missing column\(s\) \['question', 'answers'\]"):
        count_source_rows(SourceConfig(format="docvqa", path=str(tmp_path)))
    with pytest.raises(SourceError, match="'nope'"):
        count_source_rows(SourceConfig(format="generic", path=str(tmp_path),
                                       columns={"image": "image", "question": "nope"}))
    with pytest.raises(SourceError, match="'extra'"):
        count_source_rows(SourceConfig(format="chartqa_m4", path=str(tmp_path),
                                       meta_columns=["extra"]))


def test_wrong_types_in_jsonl(tmp_path):
    recs = fx.docvqa_records(8)
    good = [dict(r) for r in recs]
    recs[1]["question"] = 42  # int question
    recs[2]["answers"] = "a plain string"  # str instead of list: kept as one answer
    recs[3]["answers"] = [{"text": "x"}]  # a struct where text is expected
    recs[4]["image"] = b""  # written as a 0-byte file
    recs[5]["image"] = "images/does-not-exist.png"
    recs[6]["answers"] = 7  # a number is a readable answer
    path = fx.write_jsonl(recs, tmp_path, raw_lines=["{not json", "[1, 2]"])
    src = SourceConfig(format="docvqa", path=str(path), max_pixels=MAX_PIXELS)
    assert count_source_rows(src) == 10
    rows, skips = collect(src)
    by_index = {s.index: s for s in skips}
    assert {i: s.reason for i, s in by_index.items()} == {
        1: "bad_type", 3: "bad_type", 4: "corrupt_image", 5: "missing_image",
        8: "bad_record", 9: "bad_record"}
    assert "int" in by_index[1].detail and by_index[4].detail == "empty file"
    assert "line 9" in by_index[8].detail and "line 10" in by_index[9].detail
    got = {json.loads(r["meta"])["source_index"]: r for r in rows}
    assert sorted(got) == [0, 2, 6, 7]
    assert got[2]["answers"] == ["a plain string"]
    assert got[6]["answers"] == ["7"]
    for i in (0, 7):
        assert got[i]["id"] == expected_id(good[i]["image"], good[i]["question"])


def test_image_paths_stay_inside_the_source_folder(tmp_path):
    recs = fx.chartqa_lmms_records(6)
    outside = tmp_path / "outside.png"
    outside.write_bytes(recs[0]["image"]["bytes"] if isinstance(recs[0]["image"], dict)
                        else recs[0]["image"])
    recs[1]["image"] = "../outside.png"
    recs[2]["image"] = str(outside)
    recs[3]["image"] = "/etc/passwd"  # refused before it is opened, not as a corrupt image
    recs[4]["image"] = "images/link.png"
    path = fx.write_jsonl(recs, tmp_path / "src")
    (tmp_path / "src" / "images" / "link.png").symlink_to(outside)
    src = SourceConfig(format="chartqa_lmms", path=str(path), split="train",
                       max_pixels=MAX_PIXELS)
    rows, skips = collect(src)
    assert {s.index: s.reason for s in skips} == {i: "image_outside_source" for i in (1, 2, 3, 4)}
    assert all("allow_outside" in s.detail for s in skips)
    assert "'/etc/passwd'" in next(s.detail for s in skips if s.index == 3)
    assert sorted(json.loads(r["meta"])["source_index"] for r in rows) == [0, 5]

    # Opened explicitly: the same records are read wherever they point.
    rows, skips = collect(dataclasses.replace(src, allow_outside=True))
    assert {s.index: s.reason for s in skips} == {3: "corrupt_image"}
    assert len(rows) == 5


def test_int_question_column_in_parquet_skips_each_row(tmp_path):
    records = fx.chartqa_lmms_records(3)
    for i, r in enumerate(records):
        r["question"] = i
    features = Features(dict(fx.CHARTQA_LMMS_FEATURES, question=Value("int64")))
    fx.write_hub_parquet(fx.to_dataset(records, features), tmp_path, "test")
    rows, skips = collect(source_for("chartqa_lmms", tmp_path))
    assert rows == [] and [s.reason for s in skips] == ["bad_type"] * 3


def test_docvqa_answers_as_string_column(tmp_path):
    records = fx.docvqa_records(2)
    for r in records:
        r["answers"] = r["answers"][0]
    features = Features(dict(fx.DOCVQA_FEATURES, answers=Value("string")))
    fx.write_hub_parquet(fx.to_dataset(records, features), tmp_path, "validation", "DocVQA")
    rows, skips = collect(source_for("docvqa", tmp_path))
    assert skips == [] and [r["answers"] for r in rows] == [[r["answers"]] for r in records]


@pytest.fixture(scope="module")
def big_png() -> bytes:
    return fx.solid_png(8000, 5000)


def test_odd_images_in_a_dataset(tmp_path, big_png):
    records = fx.chartqa_lmms_records(4)
    records[0]["image"] = fx.image_struct(big_png)  # 40 MP
    records[1]["image"] = fx.image_struct(fx.cmyk_jpeg())
    records[2]["image"] = fx.image_struct(fx.gray16_png(32768))
    fx.write_hub_parquet(fx.to_dataset(records, fx.CHARTQA_LMMS_FEATURES), tmp_path, "test")

    rows, skips = collect(source_for("chartqa_lmms", tmp_path, max_pixels=10_000))
    assert skips == [] and len(rows) == 4
    images = [Image.open(io.BytesIO(r["image"]["bytes"])) for r in rows]
    assert all(im.mode == "RGB" and im.width * im.height <= 10_000 for im in images)
    assert images[0].getpixel((5, 5)) == (30, 120, 200)
    assert images[1].getpixel((5, 5))[0] > 240  # CMYK red stays red
    assert images[2].getpixel((5, 5)) == (128, 128, 128)  # 16-bit mid-grey stays mid-grey

    rows, skips = collect(source_for("chartqa_lmms", tmp_path, max_pixels=10_000,
                                     max_decode_pixels=30_000_000))
    assert len(rows) == 3 and [(s.reason, s.index) for s in skips] == [("image_too_large", 0)]


def test_cauldron_turns_multi_image_and_empty_turns(tmp_path):
    records = fx.cauldron_records(4, turns=3)
    records[1]["images"].append(fx._png(999))  # two images
    records[2]["texts"][1]["assistant"] = ""
    records[3]["texts"] = []
    ds = fx.to_dataset(records, fx.CAULDRON_FEATURES)
    fx.write_hub_parquet(ds, tmp_path, "train", "ai2d")

    rows, skips = collect(source_for("cauldron", tmp_path))
    reasons = Counter((s.reason, s.index) for s in skips)
    assert reasons == {("multi_image", 1): 3, ("empty_answer", 2): 1, ("empty_question", 3): 1}
    # 9 candidate turns + 1 record without turns = 5 rows + 5 skips: all accounted for.
    assert [(json.loads(r["meta"])["source_index"], json.loads(r["meta"])["turn"])
            for r in rows] == [(0, 0), (0, 1), (0, 2), (2, 0), (2, 2)]
    for r in rows:
        meta = json.loads(r["meta"])
        rec = records[meta["source_index"]]
        assert r["question"] == rec["texts"][meta["turn"]]["user"].strip()
        assert r["id"] == expected_id(rec["images"][0], r["question"])


def test_cauldron_multi_image_first_policy(tmp_path):
    records = fx.cauldron_records(2, turns=2)
    first = records[1]["images"][0]
    records[1]["images"].append(fx._png(998))
    fx.write_hub_parquet(fx.to_dataset(records, fx.CAULDRON_FEATURES), tmp_path, "train",
                         "ai2d")
    rows, skips = collect(source_for("cauldron", tmp_path, multi_image="first"))
    assert skips == [] and len(rows) == 4
    r = rows[2]
    assert r["id"] == expected_id(first, records[1]["texts"][0]["user"])
    assert json.loads(r["meta"])["images"] == 2
    assert r["answers"] == ["Answer: A"]  # raw assistant text, prefix kept


def test_mathvista_falls_back_to_the_image_path(tmp_path):
    records = fx.mathvista_records(3)
    (tmp_path / "images").mkdir()
    kept = records[1]["decoded_image"]
    (tmp_path / records[1]["image"]).write_bytes(kept["bytes"])
    records[1]["decoded_image"] = None
    records[2]["decoded_image"] = None  # and its file does not exist either
    fx.write_hub_parquet(fx.to_dataset(records, fx.MATHVISTA_FEATURES), tmp_path, "testmini")
    rows, skips = collect(source_for("mathvista", tmp_path))
    assert [(s.reason, s.index) for s in skips] == [("missing_image", 2)]
    assert rows[1]["id"] == expected_id(kept, records[1]["question"])
    assert rows[1]["choices"] == [] and rows[1]["answers"] == [records[1]["answer"]]
    assert json.loads(rows[0]["meta"])["question_type"] == "multi_choice"


def test_mathvista_without_any_image_column(tmp_path):
    records = fx.mathvista_records(2)
    features = Features({k: v for k, v in fx.MATHVISTA_FEATURES.items()
                         if k not in ("image", "decoded_image")})
    fx.write_hub_parquet(fx.to_dataset(records, features), tmp_path, "testmini")
    with pytest.raises(SourceError, match="decoded_image or image"):
        count_source_rows(source_for("mathvista", tmp_path))


def test_ai2d_bad_answer_index(tmp_path):
    records = fx.ai2d_records(4)
    records[1]["answer"] = "7"
    records[2]["answer"] = "B"
    fx.write_hub_parquet(fx.to_dataset(records, fx.AI2D_FEATURES), tmp_path, "test")
    rows, skips = collect(source_for("ai2d", tmp_path))
    assert [(s.reason, s.index) for s in skips] == [("bad_answer", 1), ("bad_answer", 2)]
    assert [json.loads(r["meta"])["answer_letter"] for r in rows] == ["A", "D"]


def test_split_selection_in_a_parquet_folder(tmp_path):
    train = fx.to_dataset(fx.chartqa_m4_records(3), fx.CHARTQA_M4_FEATURES)
    test = fx.to_dataset(fx.chartqa_m4_records(2, seed=50), fx.CHARTQA_M4_FEATURES)
    fx.write_hub_parquet(train, tmp_path, "train")
    fx.write_hub_parquet(test, tmp_path, "test")
    assert count_source_rows(source_for("chartqa_m4", tmp_path, split="test")) == 2
    assert count_source_rows(source_for("chartqa_m4", tmp_path, split="train")) == 3
    with pytest.raises(SourceError, match=r"no split 'val' under .*; splits are \['test', 'train'\]"):
        count_source_rows(source_for("chartqa_m4", tmp_path, split="val"))
    with pytest.raises(SourceError, match="config 'ChartQA' has no folder"):
        count_source_rows(source_for("chartqa_m4", tmp_path, config_name="ChartQA"))
    # A user's own file without split names is the one split, whatever it is called.
    own = tmp_path / "own"
    own.mkdir()
    train.to_parquet(str(own / "charts.parquet"))
    assert count_source_rows(source_for("chartqa_m4", own, split="anything")) == 3
    assert count_source_rows(source_for("chartqa_m4", own / "charts.parquet")) == 3


def test_save_to_disk_missing_split(tmp_path):
    fx.write_saved(fx.to_dataset(fx.ai2d_records(2), fx.AI2D_FEATURES), tmp_path, "test")
    with pytest.raises(SourceError, match=r"no split 'train'; splits are \['test'\]"):
        count_source_rows(SourceConfig(format="ai2d", path=str(tmp_path), split="train"))


def test_missing_path_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        count_source_rows(SourceConfig(format="ai2d", path=str(tmp_path / "nope")))


def test_rows_survive_the_parquet_round_trip_with_decoded_images(tmp_path):
    ds = fx.to_dataset(fx.ai2d_records(3), fx.AI2D_FEATURES)
    fx.write_hub_parquet(ds, tmp_path / "src", "test")
    rows, _ = collect(source_for("ai2d", tmp_path / "src"))

    out = tmp_path / "rows.parquet"
    pq.write_table(rows_to_table(rows), out)
    back = load_dataset("parquet", data_files=str(out), split="train",
                        cache_dir=str(tmp_path / "cache"))
    assert back[0]["image"].size == (48, 32)  # decoded as an Image feature
    assert back["id"] == [r["id"] for r in rows]


def test_duplicate_prompts_share_an_id(tmp_path):
    records = fx.chartqa_lmms_records(2)
    records.append(dict(records[0], type="other"))  # same image + question, other meta
    fx.write_hub_parquet(fx.to_dataset(records, fx.CHARTQA_LMMS_FEATURES), tmp_path, "test")
    rows, _ = collect(source_for("chartqa_lmms", tmp_path))
    assert rows[0]["id"] == rows[2]["id"] != rows[1]["id"]


def test_images_are_capped_by_the_source_max_pixels(tmp_path):
    fx.write_hub_parquet(fx.to_dataset(fx.ai2d_records(2), fx.AI2D_FEATURES), tmp_path, "test")
    rows, _ = collect(source_for("ai2d", tmp_path, max_pixels=600))
    for r in rows:
        w, h = Image.open(io.BytesIO(r["image"]["bytes"])).size
        assert w * h <= 600 and abs(w / h - 1.5) < 0.1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"format": "ai2d"}, "exactly one of hub_id and path"),
        ({"format": "ai2d", "path": "x", "hub_id": "y"}, "exactly one of hub_id and path"),
        ({"format": "chartqa", "path": "x"}, "unknown format"),
        ({"format": "ai2d", "path": "x", "columns": {"image": "img"}}, "only used by"),
        ({"format": "generic", "path": "x", "columns": {"picture": "img"}}, "unknown keys"),
        ({"format": "ai2d", "path": "x", "limit": -1}, "limit must be >= 0"),
        ({"format": "cauldron", "path": "x", "multi_image": "all"}, "multi_image"),
    ],
)
def test_source_config_validation(kwargs, match):
    with pytest.raises(SourceError, match=match):
        SourceConfig(**kwargs)


def test_source_label():
    assert SourceConfig(format="docvqa", hub_id="lmms-lab/DocVQA",
                        config_name="DocVQA").label == "lmms-lab/DocVQA:DocVQA"
    assert SourceConfig(format="ai2d", path="/data/ai2d/").label == "ai2d"
    assert SourceConfig(format="ai2d", path="/data/ai2d", name="mine").label == "mine"
