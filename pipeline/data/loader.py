"""The one loader: a path, a glob, a ``save_to_disk`` folder, a folder of shards or a Hub id.

    loc = locate("runs/demo/06-assemble/dataset", split="train")   # what is it, which files
    table = read_table("data/heldout", limit=100)                   # pyarrow, canonical columns
    ds = read_dataset("me/deltaprompts@v1", split="train")          # datasets.Dataset

Where a prompt set comes from is decided in one place (:func:`locate`), in this order:

* a glob (``runs/x/05-filter/*.parquet``) or one ``.parquet`` file: those files;
* a ``.jsonl`` file: that file (seed sources only);
* a folder written by ``datasets`` ``save_to_disk`` (a ``DatasetDict`` too: ``split``
  picks the split, none reads all);
* a folder of Parquet files, read recursively (hidden files skipped): the files of
  ``split`` when the folder names splits (the Hub layout ``data/<split>-00000-of-00002.parquet``,
  ``<split>.parquet`` or a ``<split>/`` folder), otherwise every file; a folder of JSONL
  files likewise;
* otherwise a Hugging Face Hub dataset id; ``user/name@REV`` pins a branch, tag or commit.

Readers then give a pyarrow table (:func:`read_table`: the audit, evaluation), a
``datasets.Dataset`` (:func:`read_dataset`: the trainer), or the location itself to the
seed sources, which read records by row group (seeds/sources.py).
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.errors import DataError
from pipeline.core.images import image_bytes
from pipeline.core.lazy import lazy
from pipeline.core.schema import prompt_id
from pipeline.core.skills import UNKNOWN

datasets = lazy("datasets")

Kind = Literal["parquet", "jsonl", "saved", "hub"]
SAVED_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")
# Stems that mark a file as belonging to a split (Hub naming: `train-00000-of-00003`,
# `testmini-...`): tells a split-less folder from one where the asked split is absent.
_SPLIT_STEM = re.compile(r"^(train|test|testmini|val|valid|validation|dev)([-_.]|$)")
_HUB_SHARD = re.compile(r"^(?P<split>\w+)-\d{5}-of-\d{5}$")


@dataclass(frozen=True)
class Location:
    """Where a prompt set is, once resolved."""

    kind: Kind
    description: str
    files: tuple[Path, ...] = ()  # parquet / jsonl
    path: Path | None = None  # saved folder; the folder the files were found in
    repo_id: str | None = None  # hub
    revision: str | None = None


def is_glob(source: str) -> bool:
    return any(ch in source for ch in "*?[")


def locate(source: str | Path, split: str | None = None, config_name: str | None = None) -> Location:
    """Resolve ``source`` (see the module doc); DataError when a local path holds nothing.

    ``split`` None takes every file / split; ``config_name`` picks a subfolder of a
    downloaded multi-config Hub repo (``DocVQA/``, ``InfographicVQA/``).
    """
    text = str(source)
    if not text:
        raise DataError("no data given (a dataset folder, a Parquet file or glob, or a Hub id)")
    if is_glob(text):
        files = tuple(Path(f) for f in sorted(glob.glob(text, recursive=True)))
        if not files:
            raise DataError(f"no files match {text!r}")
        return Location("parquet", f"{len(files)} file(s) matching {text}", files)
    root = Path(text).expanduser()
    if root.is_file():
        suffix = root.suffix.lower()
        if suffix == ".parquet":
            return Location("parquet", str(root), (root,), root.parent)
        if suffix in (".jsonl", ".ndjson"):
            return Location("jsonl", str(root), (root,), root.parent)
        raise DataError(f"{root} is not a .parquet or .jsonl file; give a Parquet file, glob, "
                        "dataset folder or Hub id")
    if root.is_dir():
        return _locate_folder(root, split, config_name)
    if text.startswith((".", "/", "~")) or text.partition("@")[0].count("/") > 1:
        raise DataError(f"{text!r} does not exist (and is not a Hub id of the form user/name)")
    repo_id, _, revision = text.partition("@")
    return Location("hub", f"Hub dataset {text}", repo_id=repo_id, revision=revision or None)


def _locate_folder(root: Path, split: str | None, config_name: str | None) -> Location:
    if any((root / m).is_file() for m in SAVED_MARKERS):
        return Location("saved", f"save_to_disk folder {root}", path=root)
    data_root = root
    if config_name and config_name != "default":
        data_root = root / config_name
        if not data_root.is_dir():
            folders = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise DataError(f"config {config_name!r} has no folder under {str(root)!r}; "
                            f"folders: {folders}")
    for kind, pattern in (("parquet", "*.parquet"), ("jsonl", "*.jsonl")):
        files = sorted(p for p in data_root.rglob(pattern)
                       if not any(part.startswith(".") for part in p.relative_to(data_root).parts))
        if files:
            chosen = split_files(files, data_root, split)
            return Location(kind, f"{len(chosen)} {kind} file(s) under {data_root}",  # type: ignore[arg-type]
                            tuple(chosen), data_root)
    raise DataError(f"{root} holds no Parquet files, JSONL file or save_to_disk dataset")


def split_files(files: list[Path], root: Path, split: str | None) -> list[Path]:
    """The files of ``split``: ``<split>-*`` / ``<split>_*`` / ``<split>.*`` names or a
    ``<split>/`` folder. A folder whose files name no split at all is one split (all of
    them); so is ``split`` None."""
    if split is None:
        return files

    def rel_parts(f: Path) -> tuple[str, ...]:
        return f.relative_to(root).parts

    def is_split(f: Path) -> bool:
        stem = f.stem
        return (stem == split or stem.startswith((split + "-", split + "_"))
                or split in rel_parts(f)[:-1])

    chosen = [f for f in files if is_split(f)]
    if chosen:
        return chosen
    named = [f for f in files if _SPLIT_STEM.match(f.stem) or _HUB_SHARD.match(f.stem)
             or any(_SPLIT_STEM.fullmatch(p) for p in rel_parts(f)[:-1])]
    if not named:
        return files
    splits = sorted({_split_name(f, root) for f in named})
    raise DataError(f"no split {split!r} under {str(root)!r}; splits are {splits}")


def _split_name(f: Path, root: Path) -> str:
    if m := _HUB_SHARD.match(f.stem):
        return m["split"]
    for part in f.relative_to(root).parts[:-1]:
        if _SPLIT_STEM.fullmatch(part):
            return part
    return re.split(r"[-_.]", f.stem)[0]


# --------------------------------------------------------------------------------- readers


def open_saved(path: Path, split: str | None):
    """A ``save_to_disk`` folder as a Dataset (a DatasetDict's ``split``, or every split
    concatenated with a ``split`` column when ``split`` is None)."""
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - any failure here means "not a readable dataset"
        raise DataError(f"cannot load save_to_disk folder {path}: {type(e).__name__}: {e}") from e
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            parts = []
            for name, d in ds.items():
                if "split" not in d.column_names:
                    d = d.add_column("split", [name] * len(d))
                parts.append(d)
            return datasets.concatenate_datasets(parts)
        if split not in ds:
            raise DataError(f"{path}: no split {split!r}; splits are {sorted(ds)}")
        return ds[split]
    return ds


def open_hub(loc: Location, split: str | None, config_name: str | None = None):
    """A Hub dataset (the local cache honours ``HF_HUB_OFFLINE``)."""
    try:
        return datasets.load_dataset(loc.repo_id, config_name, split=split or "train",
                                     revision=loc.revision)
    except ValueError as e:  # e.g. an unknown split: datasets names the ones there are
        raise DataError(f"{loc.repo_id}: {e}") from e
    except Exception as e:  # noqa: BLE001 - datasets raises many types; all mean "cannot read it"
        raise DataError(
            f"{loc.repo_id!r} is not a local path and could not be loaded from the Hub "
            f"({type(e).__name__}: {e}). Without network (HF_HUB_OFFLINE=1) only datasets "
            f"already in the local cache load; a downloaded copy can be given as a path."
        ) from e


def read_dataset(source: str | Path, split: str = "train"):
    """The prompts at ``source`` as a ``datasets.Dataset``; images stay ``{bytes, path}``
    (undecoded), so a corrupt image is a row to skip, not an error while indexing."""
    loc = locate(source, split)
    if loc.kind == "parquet":
        # The shards carry the `huggingface` schema metadata, so `image` reads as Image.
        ds = datasets.Dataset.from_parquet([str(f) for f in loc.files])
    elif loc.kind == "saved":
        ds = open_saved(loc.path, split)
    elif loc.kind == "hub":
        ds = open_hub(loc, split)
    else:
        raise DataError(f"{source}: JSONL is read as a seed source (ingest), not as prompts")
    if isinstance(ds.features.get("image"), datasets.Image):
        ds = ds.cast_column("image", datasets.Image(decode=False))
    return ds


def read_table(source: str | Path, split: str | None = None, limit: int | None = None) -> pa.Table:
    """Prompt rows at ``source`` as one pyarrow table (every split when ``split`` is None).

    Missing optional columns are filled: ``id`` (computed as ingest does), ``source`` and
    ``skill`` ("unknown"), ``choices`` and ``answers`` (empty).
    """
    loc = locate(source, split)
    if loc.kind == "parquet":
        try:
            table = pa.concat_tables([pq.read_table(f) for f in loc.files], promote_options="default")
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{source}: not readable as Parquet ({e})") from e
    elif loc.kind == "saved":
        table = open_saved(loc.path, split).with_format("arrow")[:]
    elif loc.kind == "hub":
        table = open_hub(loc, split).with_format("arrow")[:]
    else:
        raise DataError(f"{source}: JSONL is read as a seed source (ingest), not as prompts")
    if limit is not None:
        table = table.slice(0, limit)
    return fill_optional_columns(table, str(source))


def fill_optional_columns(table: pa.Table, where: str = "the data") -> pa.Table:
    if "question" not in table.column_names:
        raise DataError(f"{where} has no 'question' column; columns: {table.column_names}")
    n = table.num_rows
    if "id" not in table.column_names:
        images = table.column("image").to_pylist() if "image" in table.column_names else [None] * n
        ids = [prompt_id(image_bytes(im), q or "")
               for im, q in zip(images, table.column("question").to_pylist())]
        table = table.append_column("id", pa.array(ids, pa.string()))
    for name in ("source", "skill"):
        if name not in table.column_names:
            table = table.append_column(name, pa.array([UNKNOWN] * n, pa.string()))
    for name in ("choices", "answers"):
        if name not in table.column_names:
            table = table.append_column(name, pa.array([[] for _ in range(n)], pa.list_(pa.string())))
    return table
