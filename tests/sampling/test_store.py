"""The sample store on its own: keys, hash-checked parts, concurrent writers, stats/prune,
and the model fingerprint (content, not path)."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import shutil
from pathlib import Path

import pytest

from pipeline.cli import main as cli
from pipeline.core.config import EngineConfig, SamplingConfig
from pipeline.engines.base import Request
from pipeline.sampling.fingerprint import model_identity
from pipeline.sampling.prompts import user_message
from pipeline.sampling.store import SampleStore, request_key, sample_seed
from tests.engine_fixtures import image_bytes, make_image

SAMPLING = SamplingConfig(n=4, max_tokens=16)
MODEL = "a" * 64
REPO = Path(__file__).resolve().parents[2]


def _request(q: str = "What is the value?", seed: int = 0) -> Request:
    return Request(user_message(q), [image_bytes(make_image(seed, (32, 32)))], id="x")


def _samples(rkey: str, indices, tag: str = "t"):
    return [(rkey, j, sample_seed(0, rkey, j), f"{tag}-{j}", [j, j + 1], "stop") for j in indices]


def test_request_key_is_content_not_name():
    a, b = _request(), _request()
    b.id = "another name"
    assert request_key(a) == request_key(b)
    assert request_key(a) != request_key(_request("What is the total?"))
    assert request_key(a) != request_key(_request(seed=1))  # other image bytes
    # the seed of sample j depends on the request and the index only
    k = request_key(a)
    assert sample_seed(0, k, 3) == sample_seed(0, k, 3) != sample_seed(0, k, 4)
    assert sample_seed(0, k, 3) != sample_seed(1, k, 3)


def test_put_then_get_in_a_fresh_store(tmp_path):
    rkey = request_key(_request())
    SampleStore(tmp_path).model(MODEL).put(_samples(rkey, range(4)), SAMPLING)
    fresh = SampleStore(tmp_path).model(MODEL)
    got = fresh.get([(rkey, j) for j in range(6)], SAMPLING)
    assert sorted(j for _, j in got) == [0, 1, 2, 3]
    assert got[(rkey, 2)].text == "t-2" and got[(rkey, 2)].token_ids == (2, 3)
    # other sampling settings or another model: nothing
    assert fresh.get([(rkey, 0)], SamplingConfig(n=4, max_tokens=16, temperature=1.0)) == {}
    assert SampleStore(tmp_path).model("b" * 64).get([(rkey, 0)], SAMPLING) == {}


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.chmod(0o644)
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # one flipped byte in the middle
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :])


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_a_corrupt_part_is_ignored_with_a_warning(tmp_path, caplog, how):
    rkey = request_key(_request())
    store = SampleStore(tmp_path).model(MODEL)
    bad = store.put(_samples(rkey, range(2)), SAMPLING)
    store.put(_samples(rkey, range(2, 4)), SAMPLING)
    _corrupt(bad, how)
    with caplog.at_level(logging.WARNING, logger="pipeline.sampling.store"):
        got = SampleStore(tmp_path).model(MODEL).get([(rkey, j) for j in range(4)], SAMPLING)
    assert sorted(j for _, j in got) == [2, 3]  # the good part only, never the bad one
    assert any(str(bad) in r.getMessage() and "ignoring" in r.getMessage() for r in caplog.records)
    stats = SampleStore(tmp_path).stats()
    assert stats["corrupt_files"] == [str(bad)] and stats["samples"] == 2
    # prune removes it, keeps the good one
    out = SampleStore(tmp_path).prune()
    assert out["files_removed"] == 1 and not bad.exists()
    assert SampleStore(tmp_path).stats()["files"] == 1


def _writer(root: str, tag: str, parts: int, go) -> None:
    store = SampleStore(root).model(MODEL, label=tag)
    go.wait(60)  # both processes write at the same time
    for p in range(parts):
        rkey = request_key(_request(f"{tag} question {p}"))
        store.put(_samples(rkey, range(4), tag), SAMPLING)


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), tag, 25, go)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = SampleStore(tmp_path)
    stats = store.stats()
    assert stats["files"] == 50 and stats["samples"] == 200 and not stats["corrupt_files"]
    view = store.model(MODEL)
    for tag in ("a", "b"):
        for p in range(25):
            rkey = request_key(_request(f"{tag} question {p}"))
            got = view.get([(rkey, j) for j in range(4)], SAMPLING)
            assert [got[(rkey, j)].text for j in range(4)] == [f"{tag}-{j}" for j in range(4)]
    assert stats["models"][MODEL[:16]]["labels"] == ["a", "b"]


def test_prune_by_model_and_size(tmp_path):
    store = SampleStore(tmp_path)
    rkey = request_key(_request())
    store.model(MODEL).put(_samples(rkey, range(4)), SAMPLING)
    store.model("b" * 64).put(_samples(rkey, range(4)), SAMPLING)
    assert store.prune(model="b" * 8, dry_run=True)["files_removed"] == 1
    assert store.stats()["files"] == 2  # a dry run removes nothing
    assert store.prune(model="b" * 8)["samples_removed"] == 4
    assert list(store.stats()["models"]) == [MODEL[:16]]
    assert store.prune(max_bytes=0)["files_removed"] == 1
    assert store.stats()["files"] == 0


def test_model_identity_is_content_not_path(tmp_path):
    src = REPO / "models" / "chartworld" / "student"
    copy = tmp_path / "elsewhere" / "student"
    shutil.copytree(src, copy)
    memo = tmp_path / "memo"
    ident = model_identity(EngineConfig(model=str(src), device="cpu"), memo)
    assert model_identity(EngineConfig(model=str(copy), device="cpu"), memo) == ident
    # the backend's settings are part of it
    assert model_identity(EngineConfig(model=str(copy), device="cpu", dtype="bfloat16"), memo) != ident
    # one changed byte in the weight file: another model, and its samples miss
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    changed = model_identity(EngineConfig(model=str(copy), device="cpu"), memo)
    assert changed != ident
    store = SampleStore(tmp_path / "store")
    rkey = request_key(_request())
    store.model(ident).put(_samples(rkey, range(4)), SAMPLING)
    assert len(store.model(ident).get([(rkey, 0)], SAMPLING)) == 1
    assert store.model(changed).get([(rkey, j) for j in range(4)], SAMPLING) == {}


def test_cache_command_shows_and_prunes(tmp_path, capsys):
    rkey = request_key(_request())
    bad = SampleStore(tmp_path).model(MODEL, label="models/x").put(_samples(rkey, range(3)), SAMPLING)
    SampleStore(tmp_path).model("b" * 64).put(_samples(rkey, range(2)), SAMPLING)
    assert cli(["cache", "stats", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "5 samples in 2 files" in out and f"model {MODEL[:16]}: 3 samples" in out and "models/x" in out
    _corrupt(bad, "flipped")
    assert cli(["cache", "stats", "--cache-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["corrupt_files"] == [str(bad)]
    assert cli(["cache", "prune", "--cache-dir", str(tmp_path), "--model", "bbbb", "--dry-run"]) == 0
    assert "would remove 2 files" in capsys.readouterr().out  # the corrupt one and model b's
    assert SampleStore(tmp_path).stats()["files"] == 2
    assert cli(["cache", "prune", "--cache-dir", str(tmp_path), "--older-than", "-1"]) == 2
    assert "--older-than" in capsys.readouterr().err
    assert cli(["cache", "stats", "--cache-dir", str(tmp_path / "nothing")]) == 2
