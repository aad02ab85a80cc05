"""The one loader: Parquet file / glob / folder, save_to_disk folders, splits, Hub ids."""

from __future__ import annotations

from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from pipeline.core.errors import DataError
from pipeline.core.schema import make_prompt_row, rows_to_table
from pipeline.data.loader import locate, read_dataset, read_table
from pipeline.sampling.prompts import requests_from_table
from tests.engine_fixtures import image_bytes, make_image


def _table(n: int):
    return rows_to_table([make_prompt_row(source="s", question=f"Q{i}?",
                                          image_bytes=image_bytes(make_image(i, (16, 16))))
                          for i in range(n)])


def test_parquet_folder_glob_file_and_limit(tmp_path: Path) -> None:
    table = _table(3)
    (tmp_path / "data").mkdir()
    pq.write_table(table.slice(0, 2), tmp_path / "data" / "a.parquet")
    pq.write_table(table.slice(2), tmp_path / "data" / "b.parquet")
    pq.write_table(table, tmp_path / "data" / ".a.parquet.123.tmp.parquet")  # a hidden leftover
    assert read_table(tmp_path / "data").num_rows == 3
    assert read_table(str(tmp_path / "data" / "[ab].parquet")).num_rows == 3
    assert read_table(tmp_path / "data" / "a.parquet").num_rows == 2
    assert read_table(tmp_path / "data", limit=1).column("id").to_pylist() == table.column("id").to_pylist()[:1]
    with pytest.raises(DataError, match="no files match"):
        read_table(str(tmp_path / "nothing-*.parquet"))
    with pytest.raises(DataError, match="does not exist"):
        read_table(tmp_path / "missing" / "folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no Parquet"):
        read_table(tmp_path / "empty")


def test_hub_layout_folder_reads_only_the_asked_split(tmp_path: Path) -> None:
    table = _table(3)
    data = tmp_path / "ds" / "data"
    data.mkdir(parents=True)
    pq.write_table(table.slice(0, 2), data / "train-00000-of-00001.parquet")
    pq.write_table(table.slice(2), data / "validation-00000-of-00001.parquet")
    assert read_table(tmp_path / "ds", split="train").num_rows == 2
    assert read_table(tmp_path / "ds", split="validation").num_rows == 1
    assert read_table(tmp_path / "ds").num_rows == 3  # no split: every file
    assert len(read_dataset(tmp_path / "ds", split="train")) == 2
    with pytest.raises(DataError, match=r"no split 'test'.*\['train', 'validation'\]"):
        read_table(tmp_path / "ds", split="test")


def test_saved_dataset_dict_fills_missing_columns(tmp_path: Path) -> None:
    img = image_bytes(make_image(0, (16, 16)))
    feats = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": img, "path": None}] * 2,
                                     "question": ["a?", "b?"]}, features=feats)
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "saved"))
    table = read_table(tmp_path / "saved")
    assert table.num_rows == 3
    assert set(table.column("split").to_pylist()) == {"train", "test"}
    assert table.column("source").to_pylist() == ["unknown"] * 3
    assert table.column("choices").to_pylist() == [[]] * 3
    assert len(set(table.column("id").to_pylist())) == 2  # same image + question -> same id
    assert requests_from_table(table)[0].images == [img]
    assert read_table(tmp_path / "saved", split="test").num_rows == 1
    assert read_dataset(tmp_path / "saved", split="train")[0]["image"]["bytes"] == img  # undecoded
    with pytest.raises(DataError, match="no split 'dev'"):
        read_dataset(tmp_path / "saved", split="dev")


def test_what_a_location_is() -> None:
    assert locate("user/name@v1.0").kind == "hub"
    assert (locate("user/name@v1.0").repo_id, locate("user/name@v1.0").revision) == ("user/name", "v1.0")
    with pytest.raises(DataError, match="does not exist"):
        locate("./not/here")


def test_a_file_that_is_not_data_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not a .parquet or .jsonl"):
        read_table(tmp_path / "notes.txt")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not readable as Parquet"):
        read_table(tmp_path / "bad.parquet")
    pq.write_table(rows_to_table([]).drop_columns(["question"]), tmp_path / "noq.parquet")
    with pytest.raises(DataError, match="no 'question' column"):
        read_table(tmp_path / "noq.parquet")
