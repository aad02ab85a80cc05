"""The sample store: every completion drawn, keyed by what determines it, shared by runs.

    store = SampleStore(cache_dir)
    teacher = store.model(model_identity(cfg.models.teacher, store.root), label="teacher")
    got = teacher.get(request_keys_and_indices, sampling)   # {(request_key, index): Stored}
    teacher.put([...])                                      # one new, hash-named file

A completion is fixed by four things, and its key is the hash of exactly those:

* the model's identity (:func:`pipeline.sampling.fingerprint.model_identity`: a hash of its
  weight, config and tokenizer files plus the backend settings that change outputs, never
  its path);
* the rendered request (:func:`request_key`: the chat messages and each image's bytes);
* the sampling settings (:func:`sampling_key`: temperature, top_p, max_tokens, base seed);
* the sample's index, with its seed (:func:`sample_seed`, derived from the base seed, the
  request key and the index, so sample j of a prompt is the same whatever batch, round or
  run drew it: a cached and a fresh run give identical rows, and an adaptive run extends
  what is cached, drawing 5..8 when 1..4 are there).

Layout under the cache folder: ``parts/<model id[:16]>/<sha256>.parquet``. Every write is
a new file named by the sha256 of its bytes, written to a temp name and renamed, so two
writers never touch the same file and nothing either writes is lost. A reader checks the
hash against the name: a corrupt or truncated file is ignored with a warning, never
returned. Reads are per model (only the folders of the models a run uses are loaded).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.config import SamplingConfig
from pipeline.core.images import image_bytes
from pipeline.core.shards import file_sha256
from pipeline.engines.base import Request

log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    ("key", pa.string()),  # sha256 of model | request | sampling | index
    ("model", pa.string()),  # model identity
    ("request", pa.string()),  # request_key
    ("sampling", pa.string()),  # sampling_key
    ("index", pa.int32()),  # the sample's index (0-based) for this prompt
    ("seed", pa.int64()),  # the seed it was drawn with
    ("text", pa.string()),
    ("token_ids", pa.list_(pa.int32())),
    ("finish_reason", pa.string()),
    ("label", pa.string()),  # what the model was called when drawn (a path): stats only
    ("created", pa.float64()),  # unix time of the write
])
PARTS = "parts"
TEMP = "tmp"


def _sha(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        h.update(len(b).to_bytes(8, "little"))  # length-prefixed: no ambiguity at the seams
        h.update(b)
    return h.hexdigest()


def _image_digest(image: Any) -> str:
    """The sha256 of an image as the engine gets it: encoded bytes, or a PIL image's
    pixels with its mode and size."""
    if hasattr(image, "tobytes") and hasattr(image, "mode"):
        return _sha(f"{image.mode}:{image.size}", image.tobytes())
    data = image_bytes(image)
    return _sha(b"" if data is None else data)


def request_key(request: Request) -> str:
    """The rendered request's identity: its messages (canonical JSON) and image bytes.
    The request's ``id`` only names it in errors, so it is left out."""
    messages = json.dumps(request.messages, sort_keys=True, ensure_ascii=False)
    return _sha("request", messages, *(_image_digest(im) for im in request.images))


def sampling_key(sampling: SamplingConfig) -> str:
    """What of the sampling settings changes a completion (the instruction is part of the
    rendered request already)."""
    return _sha("sampling", json.dumps({"temperature": float(sampling.temperature),
                                        "top_p": float(sampling.top_p),
                                        "max_tokens": int(sampling.max_tokens),
                                        "seed": int(sampling.seed)}, sort_keys=True))


def sample_seed(base_seed: int, request: str, index: int) -> int:
    """The seed of sample ``index`` of a request: from the run's base seed, the request's
    key and the index only, so it does not depend on the batch, the round or the model.

    A request's seeds are consecutive (its own offset + index) on purpose: vLLM draws an
    ``n=k`` request with seed s as k children seeded s, s+1, ..., so samples i..i+k-1 go
    to the engine as one request (prefill and image processing once) instead of k."""
    words = [int(request[i : i + 8], 16) for i in range(0, 32, 8)]
    offset = np.random.SeedSequence([int(base_seed), *words]).generate_state(1)[0]
    return int(offset & 0x3FFFFFFF) + int(index)  # + index stays below 2**31


def sample_key(model: str, request: str, sampling: str, index: int) -> str:
    return _sha("sample", model, request, sampling, str(int(index)))


@dataclass(frozen=True)
class Stored:
    """One stored completion."""

    index: int
    seed: int
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None


@dataclass
class PartInfo:
    path: Path
    model: str  # the folder: model id prefix
    rows: int
    bytes: int
    ok: bool
    labels: tuple[str, ...] = ()
    created: float = 0.0


class SampleStore:
    """The store under one cache folder (see the module doc). Safe to share between
    processes: writers only add new files; readers see each other's files on refresh."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        self._loaded: dict[str, set[str]] = {}  # model folder -> file names read
        self._rows: dict[str, dict[str, Stored]] = {}  # model folder -> key -> sample
        self._bad: set[Path] = set()  # warned about once

    # --- reading ---------------------------------------------------------------------

    def _folder(self, model: str) -> Path:
        return self.root / PARTS / model[:16]

    def _read_part(self, path: Path) -> pa.Table | None:
        """A part's rows, or None (with one warning) when its bytes do not match its name."""
        try:
            ok = file_sha256(path) == path.stem
            table = pq.read_table(path) if ok else None
        except OSError as e:
            ok, table = False, None
            reason = f"unreadable ({e})"
        except (pa.ArrowException, ValueError) as e:
            ok, table = False, None
            reason = f"not Parquet ({e})"
        else:
            reason = "its content does not match its hash (corrupt or partial)"
        if not ok or table is None:
            if path not in self._bad:
                self._bad.add(path)
                log.warning("sample store: ignoring %s: %s", path, reason)
            return None
        return table

    def refresh(self, model: str) -> None:
        """Load the parts of ``model``'s folder not read yet (other writers' new files)."""
        folder = self._folder(model)
        seen = self._loaded.setdefault(model[:16], set())
        rows = self._rows.setdefault(model[:16], {})
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("*.parquet")):
            if path.name in seen:
                continue
            table = self._read_part(path)
            if table is None:
                continue
            seen.add(path.name)
            d = table.to_pydict()
            for i in range(table.num_rows):
                rows[d["key"][i]] = Stored(int(d["index"][i]), int(d["seed"][i]), d["text"][i],
                                           tuple(d["token_ids"][i] or ()), d["finish_reason"][i])

    def get(self, model: str, keys: Iterable[str]) -> dict[str, Stored]:
        self.refresh(model)
        rows = self._rows.get(model[:16], {})
        return {k: rows[k] for k in keys if k in rows}

    # --- writing ---------------------------------------------------------------------

    def put(self, model: str, rows: Sequence[dict[str, Any]]) -> Path | None:
        """Write ``rows`` (SCHEMA's columns but ``model``/``created``) as one new part."""
        if not rows:
            return None
        now = time.time()
        cols = {name: [r[name] for r in rows] for name in SCHEMA.names if name not in ("model", "created")}
        cols["model"] = [model] * len(rows)
        cols["created"] = [now] * len(rows)
        table = pa.table({name: cols[name] for name in SCHEMA.names}, schema=SCHEMA)
        tmp_dir = self.root / TEMP
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{os.getpid()}-", suffix=".parquet.tmp", dir=tmp_dir)
        os.close(fd)
        try:
            pq.write_table(table, tmp, compression="zstd")
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            digest = file_sha256(Path(tmp))
            folder = self._folder(model)
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / f"{digest}.parquet"
            os.replace(tmp, final)  # same bytes, same name: a replay is harmless
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        # What we wrote is known: remember it without reading it back.
        self._loaded.setdefault(model[:16], set()).add(final.name)
        mine = self._rows.setdefault(model[:16], {})
        for r in rows:
            mine[r["key"]] = Stored(int(r["index"]), int(r["seed"]), r["text"],
                                    tuple(r["token_ids"]), r["finish_reason"])
        return final

    def model(self, identity: str, label: str = "") -> ModelSamples:
        return ModelSamples(self, identity, label)

    # --- maintenance -----------------------------------------------------------------

    def parts(self) -> list[PartInfo]:
        """Every part file, checked (ok: its hash matches), with its row count and labels."""
        out = []
        for path in sorted((self.root / PARTS).glob("*/*.parquet")):
            size = path.stat().st_size
            table = self._read_part(path)
            if table is None:
                out.append(PartInfo(path, path.parent.name, 0, size, False,
                                    created=path.stat().st_mtime))
                continue
            labels = tuple(sorted(set(table.column("label").to_pylist()) - {None, ""}))
            created = max(table.column("created").to_pylist() or [path.stat().st_mtime])
            out.append(PartInfo(path, path.parent.name, table.num_rows, size, True, labels, created))
        return out

    def stats(self) -> dict[str, Any]:
        """Files, rows and bytes in all and per model folder; bad files; temp leftovers."""
        models: dict[str, dict[str, Any]] = {}
        parts = self.parts()
        for p in parts:
            m = models.setdefault(p.model, {"files": 0, "samples": 0, "bytes": 0, "labels": set(),
                                            "newest": 0.0})
            m["files"] += 1
            m["samples"] += p.rows
            m["bytes"] += p.bytes
            m["labels"].update(p.labels)
            m["newest"] = max(m["newest"], p.created)
        temps = list((self.root / TEMP).glob("*.tmp")) if (self.root / TEMP).is_dir() else []
        return {
            "root": str(self.root),
            "files": len(parts),
            "samples": sum(p.rows for p in parts),
            "bytes": sum(p.bytes for p in parts),
            "corrupt_files": [str(p.path) for p in parts if not p.ok],
            "temp_files": len(temps),
            "models": {k: {**v, "labels": sorted(v["labels"])} for k, v in sorted(models.items())},
        }

    def prune(self, *, older_than_days: float | None = None, model: str | None = None,
              max_bytes: int | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Remove corrupt parts and temp leftovers older than an hour, then the parts that
        match: older than ``older_than_days``, of model folder ``model`` (an id prefix),
        and, oldest first, whatever keeps the store over ``max_bytes``."""
        now = time.time()
        doomed: list[PartInfo] = []
        keep: list[PartInfo] = []
        for p in self.parts():
            old = older_than_days is not None and now - p.created > older_than_days * 86400
            mine = model is not None and p.model.startswith(model[:16])
            (doomed if (not p.ok or old or mine) else keep).append(p)
        if max_bytes is not None:
            keep.sort(key=lambda p: p.created)
            total = sum(p.bytes for p in keep)
            while keep and total > max_bytes:
                p = keep.pop(0)
                total -= p.bytes
                doomed.append(p)
        temps = [t for t in (self.root / TEMP).glob("*.tmp")
                 if now - t.stat().st_mtime > 3600] if (self.root / TEMP).is_dir() else []
        if not dry_run:
            for p in doomed:
                p.path.unlink(missing_ok=True)
            for t in temps:
                t.unlink(missing_ok=True)
            for folder in {p.path.parent for p in doomed}:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            self._loaded.clear()
            self._rows.clear()
        return {"files_removed": len(doomed), "samples_removed": sum(p.rows for p in doomed),
                "bytes_removed": sum(p.bytes for p in doomed), "temp_removed": len(temps),
                "dry_run": dry_run}


@dataclass
class ModelSamples:
    """The store seen from one model: look up and add its samples by (request, index)."""

    store: SampleStore
    identity: str
    label: str = ""

    def get(self, wanted: Sequence[tuple[str, int]], sampling: SamplingConfig
            ) -> dict[tuple[str, int], Stored]:
        skey = sampling_key(sampling)
        keys = {sample_key(self.identity, r, skey, j): (r, j) for r, j in wanted}
        return {keys[k]: s for k, s in self.store.get(self.identity, keys).items()}

    def put(self, drawn: Sequence[tuple[str, int, int, str, Sequence[int], str | None]],
            sampling: SamplingConfig) -> Path | None:
        """Add ``(request_key, index, seed, text, token_ids, finish_reason)`` samples."""
        skey = sampling_key(sampling)
        return self.store.put(self.identity, [
            {"key": sample_key(self.identity, r, skey, j), "request": r, "sampling": skey,
             "index": j, "seed": seed, "text": text, "token_ids": [int(t) for t in ids],
             "finish_reason": finish, "label": self.label}
            for r, j, seed, text, ids, finish in drawn])
