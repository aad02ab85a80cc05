"""A model's identity for the sample store: what its files hold, not where they are.

    identity = model_identity(cfg.models.teacher, memo_dir=store.root)

For a local model folder it is the sha256 over every file's relative name and content hash
(weights, config, tokenizer, chat template, processor config: anything in the folder but
hidden files), plus the backend settings that change what is sampled (engine, dtype,
device kind, image pixel caps, context cap). The same weights copied elsewhere keep their
identity; one changed byte in a weight file gives a new one.

Hashing a large checkpoint takes a while (about 1 GB/s), so each file's hash is memoised by
(absolute path, size, mtime) in ``fingerprints.json`` beside the store; a rewritten file
changes size or mtime and is hashed again. A model that is not a local folder (a Hub id,
an OpenAI-compatible server) can only be identified by its name and revision.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pipeline.core.config import EngineConfig
from pipeline.core.lazy import lazy
from pipeline.core.shards import atomic_write_json, file_sha256

torch = lazy("torch")

MEMO = "fingerprints.json"


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def folder_hash(folder: Path, memo_dir: Path | None = None) -> str:
    """The sha256 over ``folder``'s files (relative name + content hash), memoised."""
    memo_path = None if memo_dir is None else Path(memo_dir) / MEMO
    memo: dict[str, str] = {}
    if memo_path is not None and memo_path.is_file():
        try:
            memo = json.loads(memo_path.read_text())
        except (OSError, ValueError):
            memo = {}  # a broken memo only costs re-hashing
    changed = False
    h = hashlib.sha256()
    for path in _files(folder):
        st = path.stat()
        tag = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        digest = memo.get(tag)
        if digest is None:
            digest = file_sha256(path)
            memo[tag] = digest
            changed = True
        h.update(f"{path.relative_to(folder).as_posix()}\0{digest}\n".encode())
    if changed and memo_path is not None:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(memo_path, memo)
    return h.hexdigest()


def model_identity(cfg: EngineConfig, memo_dir: str | os.PathLike | None = None) -> str:
    """The store's key for the model ``cfg`` loads (see the module doc)."""
    if cfg.engine == "openai":
        content = f"openai:{cfg.base_url}:{cfg.model}"
        device = "remote"
    else:
        folder = Path(cfg.model).expanduser()
        content = folder_hash(folder, None if memo_dir is None else Path(memo_dir)) \
            if folder.is_dir() else f"name:{cfg.model}"
        device = cfg.device if cfg.device != "auto" else (
            "cuda" if torch.cuda.is_available() else "cpu")
    settings = {"engine": cfg.engine, "dtype": cfg.dtype, "device": device,
                "max_pixels": cfg.max_pixels, "min_pixels": cfg.min_pixels,
                "max_model_len": cfg.max_model_len}
    return hashlib.sha256(
        f"{content}\n{json.dumps(settings, sort_keys=True)}".encode()).hexdigest()
