"""Loading training prompts by Hub id: `trainer.data.load_prompts("user/name")` against a
local Hub stand-in, with the REAL huggingface_hub + datasets clients.

No network here, so `tests/hub_standin.py` (a local HTTP server, named as a stand-in)
holds the repo: the dataset is pushed to it with `push_dataset_folder`, exactly as a user
would publish it, then read back by id. huggingface_hub and datasets read HF_ENDPOINT and
the offline switches at import time (and tests/conftest.py turns the Hub off), so the load
runs in a child process with its own environment and a fresh cache, and prints JSON.

The child refuses every host name but the stand-in's (a test guard on `getaddrinfo`) and
reports the ones it was asked for: nothing can leave the machine, and a test can see what
the loader tried to reach outside the Hub endpoint (the dataset viewer, whose answers
`datasets` treats as optional).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.schema import PROMPT_COLUMNS, hf_features, make_prompt_row, rows_to_table
from pipeline.data.card import render_card
from pipeline.data.hub import push_dataset_folder
from tests.engine_fixtures import image_bytes, make_image
from tests.hub_standin import READS, HubStandIn, real_client_for_standin  # noqa: F401 (fixture)

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("real_client_for_standin")]

REPO = Path(__file__).resolve().parents[2]
TOKEN = "hf_standinREADtoken0123456789abcdef"
REPO_ID = "me/deltaprompts-load"
STAGE_FIELDS = [pa.field("delta", pa.float64())]
CHILD_TIMEOUT_S = 120  # the whole load, imports included; each request is bounded below too

# Runs in the child: guard the network, load by id, print the rows (bytes as base64) as JSON.
CHILD = r"""
import base64, json, socket, sys

outside = []
_getaddrinfo = socket.getaddrinfo

def _stand_in_only(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else str(host)
    if name not in ("127.0.0.1", "localhost", "::1"):
        outside.append(name)
        raise socket.gaierror(socket.EAI_NONAME, f"test guard: {name} is not the stand-in")
    return _getaddrinfo(host, *args, **kwargs)

socket.getaddrinfo = _stand_in_only

from trainer.data import load_prompts

def plain(v):
    if isinstance(v, (bytes, bytearray)):
        return {"base64": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v

try:
    ds = load_prompts(sys.argv[1], split=sys.argv[2])
except Exception as e:
    print(json.dumps({"error_type": type(e).__name__, "error": str(e), "outside": outside}))
else:
    print(json.dumps({
        "rows": [plain(r) for r in ds],
        "image_feature": repr(ds.features["image"]),
        "outside": outside,
    }))
"""


@pytest.fixture
def standin():
    with HubStandIn(expected_token=TOKEN, hold_timeout_s=20) as s:
        yield s


def prompt_rows(split: str, n: int, first: int) -> list[dict]:
    """Canonical prompt rows with real PNG charts, distinct per row, plus a stage column."""
    rows = []
    for i in range(first, first + n):
        row = make_prompt_row(
            source="chartqa",
            question=f"What is the value of bar {i}?",
            image_bytes=image_bytes(make_image(i, (48 + i, 40))),
            answers=[str(i), f"{i}.0"],
            choices=["a", "b"] if i % 2 else None,
            split="train" if i % 3 else "val",
            skill="max" if i % 2 else None,
            meta={"row": i, "for": split},
        )
        row["delta"] = 0.1 * i
        rows.append(row)
    return rows


def assembled_folder(root: Path, shards: dict[str, list[list[dict]]]) -> Path:
    """The Hub layout `assemble` writes (data/<split>-XXXXX-of-YYYYY.parquet + a card)."""
    folder = root / "dataset"
    (folder / "data").mkdir(parents=True)
    split_bytes: dict[str, int] = {}
    for split, parts in shards.items():
        for i, rows in enumerate(parts):
            table = rows_to_table(rows, STAGE_FIELDS)
            name = f"{split}-{i:05d}-of-{len(parts):05d}.parquet"
            pq.write_table(table, folder / "data" / name, compression="zstd")
            split_bytes[split] = split_bytes.get(split, 0) + table.nbytes
    card = render_card(
        {
            "teacher": "teacher-tiny",
            "student": "student-tiny",
            "split_rows": {s: sum(len(p) for p in parts) for s, parts in shards.items()},
            "split_bytes": split_bytes,
            "features": hf_features(table.schema),
            "stage_counts": [{"stage": "filter", "rows_in": 9, "rows_out": 7}],
            "sources": [{"name": "chartqa", "license": "gpl-3.0"}],
            "repo_id": REPO_ID,
        }
    )
    (folder / "README.md").write_text(card, encoding="utf-8")
    return folder


def load_by_id(tmp_path: Path, standin: HubStandIn, repo_id: str, split: str = "train", token=None):
    """load_prompts(repo_id, split) in a child pointed at the stand-in; its JSON answer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(
        HF_ENDPOINT=standin.endpoint,
        HF_HUB_OFFLINE="0",
        HF_DATASETS_OFFLINE="0",
        HF_HUB_DISABLE_XET="1",
        HF_HOME=str(tmp_path / "hf"),  # fresh cache: every byte comes from the stand-in
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        HF_HUB_ETAG_TIMEOUT="20",  # HEAD requests
        HF_HUB_DOWNLOAD_TIMEOUT="20",  # file downloads
        # datasets pings s3.amazonaws.com (Hugging Face's bucket) to count downloads: off.
        HF_UPDATE_DOWNLOAD_COUNTS="0",
    )
    if token:
        env["HF_TOKEN"] = token
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, repo_id, split],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def as_loaded(row: dict) -> dict:
    """A pushed row as the child prints it: canonical columns, image bytes in base64."""
    out = {k: row[k] for k in (*PROMPT_COLUMNS, "delta")}
    out["image"] = {
        "bytes": {"base64": base64.b64encode(row["image"]["bytes"]).decode()},
        "path": row["image"]["path"],
    }
    return out


def only_known_reads(standin: HubStandIn) -> None:
    assert standin.count("unknown") == 0, [c.path for c in standin.calls if c.endpoint == "unknown"]
    assert {c.endpoint for c in standin.calls} <= READS
    assert all(isinstance(c.status, int) for c in standin.calls)  # none held, dropped or hung


# --------------------------------------------------------------------------- tests


def test_load_prompts_reads_a_pushed_dataset_by_hub_id(tmp_path, standin):
    train = [prompt_rows("train", 3, 0), prompt_rows("train", 2, 3)]  # two shards, in order
    validation = [prompt_rows("validation", 2, 5)]
    folder = assembled_folder(tmp_path, {"train": train, "validation": validation})
    report = push_dataset_folder(folder, REPO_ID, token=TOKEN, endpoint=standin.endpoint)
    standin.clear_calls()

    got = load_by_id(tmp_path, standin, REPO_ID, "train")

    assert "error" not in got, got
    pushed = [r for shard in train for r in shard]
    assert [r["question"] for r in got["rows"]] == [r["question"] for r in pushed]
    assert got["rows"] == [as_loaded(r) for r in pushed]  # every column, image bytes included
    assert got["image_feature"] == repr(datasets.Image(decode=False))  # raw, for skips
    # Read anonymously (the repo is public), from the pushed commit, through known endpoints.
    only_known_reads(standin)
    assert not any(c.authorized for c in standin.calls)
    downloads = [c.path for c in standin.calls if c.endpoint == "resolve" and c.method == "GET"]
    for name in ("train-00000-of-00002.parquet", "train-00001-of-00002.parquet"):
        assert f"/datasets/{REPO_ID}/resolve/{report.commit_oid}/data/{name}" in downloads
    # Nothing outside the stand-in but the dataset viewer, which datasets may ask for.
    assert all(h.startswith("datasets-server.") for h in got["outside"]), got["outside"]

    missing = load_by_id(tmp_path, standin, REPO_ID, "test")  # a split the dataset lacks
    assert missing["error_type"] == "DataError", missing
    assert REPO_ID in missing["error"] and "test" in missing["error"]


def test_a_hub_id_at_a_commit_reads_that_commit(tmp_path, standin):
    first, second = prompt_rows("train", 2, 0), prompt_rows("train", 3, 10)
    pushed = push_dataset_folder(assembled_folder(tmp_path / "v1", {"train": [first]}), REPO_ID,
                                 token=TOKEN, endpoint=standin.endpoint)
    push_dataset_folder(assembled_folder(tmp_path / "v2", {"train": [second]}), REPO_ID,
                        token=TOKEN, endpoint=standin.endpoint)
    standin.clear_calls()

    latest = load_by_id(tmp_path, standin, REPO_ID)
    pinned = load_by_id(tmp_path, standin, f"{REPO_ID}@{pushed.commit_oid}")
    assert latest["rows"] == [as_loaded(r) for r in second]
    assert pinned["rows"] == [as_loaded(r) for r in first]
    only_known_reads(standin)


def test_an_unknown_hub_id_is_a_clear_file_not_found(tmp_path, standin):
    got = load_by_id(tmp_path, standin, "me/no-such-dataset")

    assert got["error_type"] == "DataError"
    assert "'me/no-such-dataset'" in got["error"] and "Hub" in got["error"]
    only_known_reads(standin)
    assert standin.count("resolve", 404) >= 1  # it was asked for, and not found
    assert all(h.startswith("datasets-server.") for h in got["outside"]), got["outside"]


def test_a_private_dataset_needs_the_token(tmp_path, standin):
    rows = prompt_rows("train", 2, 0)
    folder = assembled_folder(tmp_path, {"train": [rows]})
    push_dataset_folder(folder, REPO_ID, token=TOKEN, endpoint=standin.endpoint, private=True)
    standin.clear_calls()

    refused = load_by_id(tmp_path, standin, REPO_ID)
    assert refused["error_type"] == "DataError" and repr(REPO_ID) in refused["error"]
    assert standin.count("resolve", 200) == 0  # not one byte of it without the token

    standin.clear_calls()
    got = load_by_id(tmp_path, standin, REPO_ID, token=TOKEN)  # HF_TOKEN, as a user sets it
    assert "error" not in got, got
    assert got["rows"] == [as_loaded(r) for r in rows]
    only_known_reads(standin)
    assert all(c.authorized for c in standin.calls if c.endpoint != "agent_harnesses")


def test_the_standin_read_endpoints_answer_the_real_client(tmp_path, standin):
    """The stand-in's read side on its own, through the client's public API (in-process):
    listings, file metadata, whole and ranged downloads, and the Hub's not-found errors."""
    from huggingface_hub import HfApi, HfFileSystem, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError
    from huggingface_hub.hf_api import RepoFile, RepoFolder

    folder = assembled_folder(tmp_path, {"train": [prompt_rows("train", 2, 0)]})
    report = push_dataset_folder(folder, REPO_ID, token=TOKEN, endpoint=standin.endpoint)
    local = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.*")}
    parquet = "data/train-00000-of-00001.parquet"
    api = HfApi(endpoint=standin.endpoint, token=False)  # anonymous: the repo is public
    standin.clear_calls()

    tree = list(api.list_repo_tree(REPO_ID, repo_type="dataset", recursive=True))
    assert {e.path for e in tree if isinstance(e, RepoFolder)} == {"data"}
    files = {e.path: e for e in tree if isinstance(e, RepoFile)}
    assert {p: f.size for p, f in files.items()} == {p: len(b) for p, b in local.items()}
    assert files["README.md"].lfs is None
    assert files[parquet].lfs.sha256 == hashlib.sha256(local[parquet]).hexdigest()
    top = api.list_repo_tree(REPO_ID, repo_type="dataset", revision=report.commit_oid)
    assert sorted(e.path for e in top) == ["README.md", "data"]
    info = api.dataset_info(REPO_ID, revision=report.commit_oid, files_metadata=True)
    assert info.sha == report.commit_oid
    assert {s.rfilename: s.size for s in info.siblings} == {p: len(b) for p, b in local.items()}
    found = api.get_paths_info(REPO_ID, ["README.md", "data", "nope.txt"], repo_type="dataset")
    assert [(type(e).__name__, e.path) for e in found] == [
        ("RepoFile", "README.md"),
        ("RepoFolder", "data"),
    ]

    path = hf_hub_download(
        REPO_ID,
        parquet,
        repo_type="dataset",
        endpoint=standin.endpoint,
        token=False,
        cache_dir=tmp_path / "cache",
    )
    assert Path(path).read_bytes() == local[parquet]
    fs = HfFileSystem(endpoint=standin.endpoint, token=False, skip_instance_cache=True)
    with fs.open(f"datasets/{REPO_ID}/{parquet}", "rb", block_size=8) as f:
        f.seek(4)
        assert f.read(8) == local[parquet][4:12]
    assert standin.count("resolve", 206) >= 1  # a ranged read, answered as one

    with pytest.raises(EntryNotFoundError):
        hf_hub_download(
            REPO_ID,
            "nope.txt",
            repo_type="dataset",
            endpoint=standin.endpoint,
            token=False,
            cache_dir=tmp_path / "cache",
        )
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info(REPO_ID, revision="no-such-branch")
    assert standin.count("unknown") == 0
