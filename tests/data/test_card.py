"""The dataset card: valid front matter, the real counts, every column, loadable by datasets."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.core.schema import (
    PROMPT_COLUMNS,
    hf_features,
    make_prompt_row,
    prompt_schema,
    rows_to_table,
)
from pipeline.data.card import CardInfo, dataset_license, public_text, render_card, size_category

STAGE_FIELDS = [
    pa.field("delta", pa.float64()),
    pa.field("teacher_answers", pa.list_(pa.string())),
    pa.field("template", pa.string()),
    pa.field("rewriter", pa.string()),
    pa.field("n_samples", pa.int64()),
]
STAGE_DOCS = {"n_samples": "Samples drawn per model for this prompt."}


def front_matter(card: str) -> dict:
    assert card.startswith("---\n"), "card must open with YAML front matter"
    end = card.index("\n---\n", 4)
    meta = yaml.safe_load(card[4:end])
    assert isinstance(meta, dict)
    return meta


def table_rows(card: str, heading: str) -> list[list[str]]:
    """Cells of the Markdown table under `## heading` (header and rule rows dropped)."""
    section = card.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    # split on pipes not escaped with a backslash
    return [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in lines[2:]]


def base_info(**over) -> dict:
    info = {
        "teacher": "Qwen/Qwen3-VL-8B-Instruct",
        "student": "Qwen/Qwen3-VL-2B-Instruct",
        "split_rows": {"train": 1234, "validation": 137},
        "features": hf_features(prompt_schema(STAGE_FIELDS)),
        "stage_counts": [
            {
                "stage": "ingest",
                "rows_in": 5000,
                "rows_out": 4870,
                "skipped": {"corrupt image": 97, "empty question": 33},
            },
            {"stage": "mine", "rows_in": 4870, "rows_out": 4870},
            {"stage": "delta", "rows_in": 4870, "rows_out": 4870},
            {
                "stage": "filter",
                "rows_in": 4870,
                "rows_out": 1371,
                "skipped": {"zero delta": 3411, "duplicate": 88},
            },
        ],
        "sources": [
            {
                "name": "chartqa",
                "license": "gpl-3.0",
                "origin": "HuggingFaceM4/ChartQA",
                "rows": 900,
            },
            {"name": "docvqa", "license": "mit", "origin": "lmms-lab/DocVQA", "rows": 471},
        ],
        "column_docs": dict(STAGE_DOCS),
        "config": {"run": {"name": "demo"}, "delta": {"threshold": 0.05}},
        "repo_id": "me/deltaprompts-demo",
        "measured_prompts": 4870,
        "zero_delta_prompts": 3411,
        "delta_histogram": "assets/delta_histogram.png",
    }
    info.update(over)
    return info


def test_front_matter_parses_and_carries_the_hub_metadata():
    meta = front_matter(render_card(base_info()))
    assert meta["license"] == "other"  # the two sources differ
    assert meta["task_categories"] == ["visual-question-answering"]
    assert {"distillation", "vlm", "deltaprompts"} <= set(meta["tags"])
    assert meta["size_categories"] == ["1K<n<10K"]  # 1234 + 137 rows
    (config,) = meta["configs"]
    assert config["config_name"] == "default"
    assert config["data_files"] == [
        {"split": "train", "path": "data/train-*"},
        {"split": "validation", "path": "data/validation-*"},
    ]
    splits = {s["name"]: s["num_examples"] for s in meta["dataset_info"]["splits"]}
    assert splits == {"train": 1234, "validation": 137}
    feats = {f["name"]: f for f in meta["dataset_info"]["features"]}
    assert list(feats) == PROMPT_COLUMNS + [f.name for f in STAGE_FIELDS]
    assert feats["image"] == {"name": "image", "dtype": "image"}
    assert feats["answers"] == {"name": "answers", "list": "string"}
    assert feats["delta"] == {"name": "delta", "dtype": "float64"}  # arrow "double" renamed


def test_body_shows_the_counts_passed_in():
    card = render_card(base_info())
    rows = {r[0]: r for r in table_rows(card, "Counts per stage")}
    assert rows["ingest"][1:4] == ["5,000", "4,870", "130"]
    assert "corrupt image: 97" in rows["ingest"][4] and "empty question: 33" in rows["ingest"][4]
    assert rows["filter"][1:4] == ["4,870", "1,371", "3,499"]
    assert rows["mine"][4] == "none"
    assert "3,411 of 4,870 measured prompts" in card
    assert "zero-delta fraction 0.7004" in card  # 3411 / 4870
    assert "`train`: 1,234 rows" in card and "`validation`: 137 rows" in card
    assert "![Histogram of Δ over the measured prompts](assets/delta_histogram.png)" in card
    assert 'load_dataset("me/deltaprompts-demo")' in card


def test_every_column_is_listed_with_a_description():
    card = render_card(base_info())
    rows = table_rows(card, "Columns")
    names = [r[0].strip("`") for r in rows]
    assert names == PROMPT_COLUMNS + [f.name for f in STAGE_FIELDS]
    assert all(r[2] for r in rows), "every column needs a one-line description"
    docs = {r[0].strip("`"): r[2] for r in rows}
    assert docs["n_samples"] == STAGE_DOCS["n_samples"]
    assert "Lineage" in docs["parent_id"] and "Lineage" in docs["template"]
    types = {r[0].strip("`"): r[1] for r in rows}
    assert types["teacher_answers"] == "list<string>" and types["image"] == "image"


def test_docs_for_columns_not_in_the_dataset_are_ignored():
    card = render_card(base_info(column_docs={**STAGE_DOCS, "dropped_col": "Gone by now."}))
    assert "dropped_col" not in card and "Gone by now." not in card


def test_sources_and_licences_are_listed():
    card = render_card(base_info())
    rows = {r[0]: r for r in table_rows(card, "Sources and licences")}
    assert rows["chartqa"][1:] == ["HuggingFaceM4/ChartQA", "gpl-3.0", "900"]
    assert rows["docvqa"][1:] == ["lmms-lab/DocVQA", "mit", "471"]
    assert "different licences" in card


@pytest.mark.parametrize(
    ("sources", "explicit", "expected"),
    [
        (["cc-by-4.0", "cc-by-4.0"], None, "cc-by-4.0"),
        (["cc-by-4.0", "mit"], None, "other"),
        (["Some custom terms"], None, "other"),  # not a Hub licence id
        (["MIT"], None, "mit"),
        (["cc-by-4.0", "mit"], "cc-by-sa-4.0", "cc-by-sa-4.0"),
    ],
)
def test_dataset_licence(sources, explicit, expected):
    info = CardInfo.from_dict(
        base_info(
            sources=[{"name": f"s{i}", "license": lic} for i, lic in enumerate(sources)],
            license=explicit,
        )
    )
    assert dataset_license(info) == expected
    assert front_matter(render_card(info))["license"] == expected


def test_secrets_in_the_config_are_redacted():
    config = {
        "models": {"teacher": {"kind": "openai", "api_key": "sk-live-XYZ", "hf_token": "hf_ABC"}}
    }
    card = render_card(base_info(config=config))
    assert "sk-live-XYZ" not in card and "hf_ABC" not in card
    block = card.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(block)["models"]["teacher"] == {
        "kind": "openai",
        "api_key": "<redacted>",
        "hf_token": "<redacted>",
    }


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"features": {"id": {"_type": "Value", "dtype": "string"}}}, "prompt column"),
        ({"column_docs": {}}, "no description for column(s) ['n_samples']"),
        ({"delta_histogram": "/abs/hist.png"}, "relative path"),
        ({"delta_histogram": "../hist.png"}, "relative path"),
        ({"zero_delta_prompts": 5000}, "between 0 and measured_prompts"),
        ({"split_rows": {}}, "split_rows is empty"),
        ({"split_bytes": {"test": 10}}, "split_bytes['test'] must be an int >= 0 for a split in split_rows"),
        ({"split_bytes": {"train": -1}}, "split_bytes['train'] must be"),
        ({"sources": []}, "sources is empty"),
        ({"colour": "red"}, "unknown key"),
        ({"stage_counts": [{"stage": "x", "rows_in": 1}]}, "stage_counts item"),
    ],
)
def test_bad_card_info_gives_a_clear_error(over, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        render_card(base_info(**over))


def test_missing_required_key_is_named():
    info = base_info()
    del info["teacher"]
    with pytest.raises(ValueError, match=r"missing required key\(s\) \['teacher'\]"):
        render_card(info)


@pytest.mark.parametrize("over", [{"measured_prompts": None}, {"zero_delta_prompts": None}])
def test_zero_delta_fraction_missing_is_said_not_invented(over):
    card = render_card(base_info(**over))
    assert "zero-delta fraction was not measured" in card
    assert "zero-delta fraction 0" not in card


def test_size_categories():
    assert [size_category(n) for n in (0, 999, 1000, 9_999, 10_000, 2_000_000)] == [
        "n<1K",
        "n<1K",
        "1K<n<10K",
        "1K<n<10K",
        "10K<n<100K",
        "1M<n<10M",
    ]


@settings(max_examples=60, deadline=None)
@given(
    name=st.text(min_size=1, max_size=40),
    teacher=st.text(min_size=1, max_size=40).filter(lambda s: "`" not in s),
    reason=st.text(min_size=1, max_size=20),
)
def test_odd_names_cannot_break_front_matter_or_tables(name, teacher, reason):
    info = base_info(
        pretty_name=name,
        teacher=teacher,
        stage_counts=[{"stage": "ingest", "rows_in": 3, "rows_out": 1, "skipped": {reason: 2}}],
    )
    card = render_card(info)
    assert front_matter(card)["pretty_name"] == name
    for heading, width in (("Teacher and student", 2), ("Counts per stage", 5), ("Columns", 3)):
        assert all(len(r) == width for r in table_rows(card, heading)), heading


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8 + seed, 6), (seed * 40 % 256, 80, 160)).save(buf, format="PNG")
    return buf.getvalue()


def write_dataset_folder(folder: Path, split_rows: dict[str, int], card_rows: dict[str, int] | None = None) -> dict:
    """A small assembled folder: data/<split>-*.parquet, an image, and the card (which
    claims ``card_rows`` rows per split when given, to test that they are checked)."""
    (folder / "data").mkdir(parents=True)
    (folder / "assets").mkdir()
    (folder / "assets" / "delta_histogram.png").write_bytes(_png(9))
    k, split_bytes = 0, {}
    for split, n in split_rows.items():
        rows = []
        for _ in range(n):
            row = make_prompt_row(
                source="chartqa",
                question=f"What is bar {k}?",
                image_bytes=_png(k % 5),
                answers=[str(k)],
            )
            row.update(
                delta=0.1 + k / 100,
                teacher_answers=[str(k), "x"],
                template="seed",
                rewriter=None,
                n_samples=8,
            )
            rows.append(row)
            k += 1
        table = rows_to_table(rows, STAGE_FIELDS)
        pq.write_table(table, folder / "data" / f"{split}-00000-of-00001.parquet")
        split_bytes[split] = table.nbytes
    info = base_info(split_rows=card_rows or split_rows, split_bytes=split_bytes,
                     features=hf_features(table.schema))
    (folder / "README.md").write_text(render_card(info), encoding="utf-8")
    return info


def test_card_configs_load_the_folder_with_datasets(tmp_path):
    """`load_dataset(folder)` reads the card's configs + dataset_info: they must fit the files."""
    import datasets

    folder = tmp_path / "dataset"
    write_dataset_folder(folder, {"train": 5, "validation": 2})
    ds = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))
    assert {k: len(v) for k, v in ds.items()} == {"train": 5, "validation": 2}
    assert ds["train"].column_names == PROMPT_COLUMNS + [f.name for f in STAGE_FIELDS]
    assert isinstance(ds["train"].features["image"], datasets.Image)
    row = ds["validation"][0]
    assert row["image"].size == (8 + 5 % 5, 6) and row["question"] == "What is bar 5?"
    assert row["teacher_answers"] == ["5", "x"]
    # datasets keeps the card's split sizes (it drops them without num_bytes) and checks them.
    assert ds["train"].info.splits["validation"].num_examples == 2

    wrong = tmp_path / "wrong"
    write_dataset_folder(wrong, {"train": 5, "validation": 2}, card_rows={"train": 6, "validation": 2})
    with pytest.raises(datasets.exceptions.NonMatchingSplitsSizesError):
        datasets.load_dataset(str(wrong), cache_dir=str(tmp_path / "cache2"))


@pytest.mark.parametrize(
    ("value", "shown", "hidden"),
    [
        ("http://alice:s3cretTok@10.0.0.5:8000/v1", "http://<redacted>@10.0.0.5:8000/v1", "s3cretTok"),
        ("https://api.example.com/v1?api_key=abc123xyz&model=m",
         "https://api.example.com/v1?api_key=<redacted>&model=m", "abc123xyz"),
        ("https://host/v1?sig=qqq999&token=ttt888", "https://host/v1?sig=<redacted>&token=<redacted>", "ttt888"),
        ("use api_key=inline-KEY-42 here", "use api_key=<redacted> here", "inline-KEY-42"),
        ('password: "hunter2hunter2"', 'password: "<redacted>"', "hunter2"),
        ("hf_abcdefghijklmnopqrstuvwxyz012345", "<redacted>", "hf_abcdef"),
        ("sk-proj-ABCDEFGHIJKLMNOPQRSTUV", "<redacted>", "ABCDEFGHIJ"),
        ("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlMTI", "Bearer <redacted>", "eyJhbGci"),
        ("/home/alice/models/qwen-teacher", "qwen-teacher", "/home/alice"),
        ("~/data/charts.jsonl", "charts.jsonl", "~"),
        ("C:\\Users\\alice\\seeds", "seeds", "alice"),
    ],
)
def test_public_text_drops_credentials_and_local_paths(value, shown, hidden):
    out = public_text(value)
    assert out == shown and hidden not in out


def test_public_text_keeps_what_is_not_secret(tmp_path):
    for plain in ("Qwen/Qwen3-VL-8B-Instruct", "models/chartworld/teacher", "jsd",
                  "http://127.0.0.1:8000/v1", "Answer: <value>"):
        assert public_text(plain) == plain
    inside = tmp_path / "runs" / "demo" / "seeds"
    assert public_text(str(inside), base=tmp_path) == "runs/demo/seeds"


def test_card_config_is_redacted_by_value_and_paths_are_shortened():
    config = {
        "04-delta": {
            "models.teacher": {"engine": "openai", "model": "served-name",
                               "base_url": "https://bob:p4ssw0rdXYZ@gpu.example/v1",
                               "api_key_env": "OPENAI_API_KEY",
                               "extra_body": {"headers": "Authorization: Bearer abcdefgh12345678"}},
            "sampling": {"n": 8, "max_tokens": 512},
        },
        "01-ingest": {"ingest": {"sources": [{"path": "/srv/private/alice/charts"}]}},
    }
    card = render_card(base_info(config=config, teacher="/srv/private/alice/teacher",
                                 sources=[{"name": "s", "license": "mit",
                                           "origin": "/srv/private/alice/charts"}]))
    for leak in ("p4ssw0rdXYZ", "bob", "abcdefgh12345678", "/srv/private"):
        assert leak not in card
    block = yaml.safe_load(card.split("```yaml\n", 1)[1].split("```", 1)[0])
    teacher = block["04-delta"]["models.teacher"]
    assert teacher["base_url"] == "https://<redacted>@gpu.example/v1"
    assert teacher["api_key_env"] == "OPENAI_API_KEY"  # the name of a variable, not a secret
    assert block["04-delta"]["sampling"] == {"n": 8, "max_tokens": 512}  # not "secret-looking"
    assert block["01-ingest"]["ingest"]["sources"][0]["path"] == "charts"
    assert "| Teacher | `teacher` |" in card
