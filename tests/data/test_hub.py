"""Pushing a dataset folder: the REAL huggingface_hub client against a local Hub stand-in.

No network here, so `tests/hub_standin.py` (a local HTTP server, named as a stand-in)
answers the endpoints the client calls. The client runs its plain LFS path (xet disabled):
the stand-in does not speak the xet protocol.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import httpx2
import huggingface_hub
import huggingface_hub.constants
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects
from PIL import Image

from pipeline.core.schema import hf_features, make_prompt_row, rows_to_table
from pipeline.core.shards import file_sha256
from pipeline.data import hub
from pipeline.data.card import render_card
from pipeline.data.hub import PushError, PushRefusedError, push_dataset_folder
from tests.hub_standin import HubStandIn, real_client_for_standin  # noqa: F401 (fixture)

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("real_client_for_standin")]

REPO = Path(__file__).resolve().parents[2]
TOKEN = "hf_standinSECRETtoken0123456789abcdef"
REPO_ID = "me/deltaprompts-demo"
LFS_SUFFIXES = (".parquet", ".png")


@pytest.fixture
def standin():
    with HubStandIn(expected_token=TOKEN, hold_timeout_s=20) as s:
        yield s


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (10 + seed, 7), (seed * 50 % 256, 90, 30)).save(buf, format="PNG")
    return buf.getvalue()


STAGE_FIELDS = [pa.field("delta", pa.float64()), pa.field("template", pa.string())]


def make_dataset_folder(root: Path, shards: dict[str, int] | None = None) -> Path:
    """An assembled dataset folder as `assemble` writes it, plus leftover resume state."""
    shards = shards or {"train": 2, "validation": 1}
    folder = root / "dataset"
    (folder / "data").mkdir(parents=True)
    k = 0
    for split, n_shards in shards.items():
        for i in range(n_shards):
            rows = []
            for _ in range(3):
                row = make_prompt_row(
                    source="chartqa", question=f"Q{k}?", image_bytes=_png(k % 7), answers=["1"]
                )
                row.update(delta=0.2, template="seed")
                rows.append(row)
                k += 1
            table = rows_to_table(rows, STAGE_FIELDS)
            pq.write_table(table, folder / "data" / f"{split}-{i:05d}-of-{n_shards:05d}.parquet")
    (folder / "assets").mkdir()
    (folder / "assets" / "delta_histogram.png").write_bytes(_png(3))
    card = render_card(
        {
            "teacher": "teacher-tiny",
            "student": "student-tiny",
            "split_rows": {s: 3 * n for s, n in shards.items()},
            "features": hf_features(table.schema),
            "stage_counts": [
                {"stage": "filter", "rows_in": 20, "rows_out": 9, "skipped": {"zero delta": 11}}
            ],
            "sources": [{"name": "chartqa", "license": "gpl-3.0"}],
            "delta_histogram": "assets/delta_histogram.png",
            "repo_id": REPO_ID,
        }
    )
    (folder / "README.md").write_text(card, encoding="utf-8")
    # State an interrupted large-folder upload leaves behind: must never be pushed as data.
    state = folder / ".cache" / "huggingface" / "upload" / "data"
    state.mkdir(parents=True)
    (state / "train-00000-of-00002.parquet.metadata").write_text("1700000000.0\nabc\n")
    (folder / ".cache" / "huggingface" / ".gitignore").write_text("*\n")
    return folder


def local_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(folder).parts
    }


def lfs_oids(folder: Path) -> set[str]:
    import hashlib

    return {
        hashlib.sha256(b).hexdigest()
        for p, b in local_files(folder).items()
        if p.endswith(LFS_SUFFIXES)
    }


def collapsed(seq: list[str]) -> list[str]:
    """Endpoint sequence with LFS transfers merged and repeats collapsed (uploads run in
    parallel threads, so their interleaving is not fixed)."""
    out: list[str] = []
    for name in seq:
        name = "lfs_transfer" if name in ("lfs_upload", "lfs_verify") else name
        if not out or out[-1] != name:
            out.append(name)
    return out


def push(folder: Path, standin: HubStandIn, **kw):
    kw.setdefault("token", TOKEN)
    kw.setdefault("retry_base_wait_s", 0.05)
    return push_dataset_folder(folder, REPO_ID, endpoint=standin.endpoint, **kw)


# --------------------------------------------------------------------------- happy path


def test_push_sends_the_expected_requests_and_files_arrive_intact(tmp_path, standin):
    folder = make_dataset_folder(tmp_path)
    report = push(folder, standin, private=True, commit_message="first push")

    assert collapsed(standin.sequence()) == [
        "create_repo",
        "validate_yaml",  # README.md front matter, checked before hashing ...
        "preupload",  # ... then which files are LFS,
        "lfs_batch",  # which LFS objects the Hub lacks,
        "lfs_transfer",  # the objects themselves (PUT + verify),
        "commit",  # and one commit naming them all
    ]
    assert standin.count("unknown") == 0
    assert standin.count("lfs_upload") == len(lfs_oids(folder)) == 4
    assert all(c.authorized for c in standin.calls if c.endpoint != "lfs_upload")

    sent = standin.files(REPO_ID)
    assert sent == local_files(folder)  # byte-identical, nothing extra
    assert not any(".cache" in p for p in sent), "upload resume state was pushed as data"
    assert [f.path for f in report.files] == sorted(sent)
    assert report.excluded == [
        ".cache/huggingface/.gitignore",
        ".cache/huggingface/upload/data/train-00000-of-00002.parquet.metadata",
    ]
    (commit,) = standin.commits(REPO_ID)
    assert report.commit_oid == commit.oid and commit.message == "first push"
    assert standin.repos[("dataset", REPO_ID)].private is True
    assert report.attempts == 1


def test_listing_matches_what_huggingface_hub_would_upload(tmp_path):
    folder = make_dataset_folder(tmp_path)
    (folder / "sub" / ".git").mkdir(parents=True)
    (folder / "sub" / ".git" / "HEAD").write_text("ref: x\n")
    files, excluded = hub.list_push_files(folder)
    everything = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    theirs = list(
        filter_repo_objects(
            everything, ignore_patterns=hub.IGNORE_PATTERNS + DEFAULT_IGNORE_PATTERNS
        )
    )
    assert [f.path for f in files] == theirs
    assert sorted(excluded + theirs) == everything
    assert "sub/.git/HEAD" in excluded


def test_pushing_again_sends_only_what_changed(tmp_path, standin):
    folder = make_dataset_folder(tmp_path)
    push(folder, standin)
    standin.clear_calls()
    (folder / "data" / "validation-00000-of-00001.parquet").write_bytes(b"PAR1 changed")
    report = push(folder, standin)
    assert standin.count("lfs_upload") == 1  # only the changed shard
    assert standin.commits(REPO_ID)[-1].changed == ["data/validation-00000-of-00001.parquet"]
    assert standin.files(REPO_ID) == local_files(folder)
    assert report.commit_oid == standin.commits(REPO_ID)[-1].oid


# --------------------------------------------------------------------------- dry run


def test_dry_run_lists_files_and_target_and_makes_no_request(tmp_path, standin):
    folder = make_dataset_folder(tmp_path)
    report = push_dataset_folder(
        folder, REPO_ID, dry_run=True, endpoint=standin.endpoint, revision="main"
    )
    assert standin.calls == []
    expected = {p: len(b) for p, b in local_files(folder).items()}
    assert {f.path: f.size for f in report.files} == expected
    assert report.total_bytes == sum(expected.values())
    assert report.target == f"{standin.endpoint}/datasets/{REPO_ID}@main"
    assert report.commit_oid is None and report.attempts == 0
    assert report.token_source is None  # none anywhere, and a dry run does not need one
    text = report.summary()
    assert text.startswith("DRY RUN") and report.target in text
    assert all(path in text for path in expected)
    assert ".cache" not in "\n".join(line for line in text.splitlines() if "left out" not in line)


# --------------------------------------------------------------------------- resume


def test_resume_after_a_failed_commit_uploads_nothing_twice(tmp_path, standin):
    folder = make_dataset_folder(tmp_path)
    standin.fail("commit", times=1, status=503)
    with pytest.raises(PushError, match="re-run the same command to resume"):
        push(folder, standin, max_attempts=1)
    assert len(standin.lfs_store) == 4 and standin.count("commit", 503) == 1
    assert standin.commits(REPO_ID) == []

    standin.clear_calls()
    push(folder, standin)
    assert standin.count("lfs_batch") == 1 and standin.count("lfs_upload") == 0  # all there
    assert standin.files(REPO_ID) == local_files(folder)


def test_resume_after_the_pushing_process_is_killed_mid_upload(tmp_path, standin):
    folder = make_dataset_folder(tmp_path)
    standin.hold("lfs_upload", after=1)  # one object gets through, the rest hang
    env = {
        **os.environ,
        "HF_TOKEN": TOKEN,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys; from pipeline.data.hub import push_dataset_folder as p; "
                "p(sys.argv[1], sys.argv[2], endpoint=sys.argv[3])"
            ),
            str(folder),
            REPO_ID,
            standin.endpoint,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        reached = standin.wait_until(
            lambda s: len(s.lfs_store) == 1 and s.held("lfs_upload") >= 1, timeout=60
        )
        assert reached, "the child never got to the upload: " + (
            child.poll() is not None and child.stdout.read().decode() or ""
        )
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        standin.release()
    # Requests the child had sent before it died can still be dispatched after the kill
    # (their bytes sit in the server's sockets); let every one finish before looking at
    # what the server stored, or one stored late looks "missing" (CI saw this race).
    settled = standin.wait_until(
        lambda s: all(c.status is not None and c.status != "held" for c in s.calls), timeout=30
    )
    assert settled, "requests of the killed client were still in flight"
    time.sleep(0.5)  # a request read after the last status change is recorded by now
    assert all(c.status is not None and c.status != "held" for c in standin.calls)
    uploaded_before = set(standin.lfs_store)
    assert 1 <= len(uploaded_before) < len(lfs_oids(folder))  # really interrupted mid-upload
    assert standin.commits(REPO_ID) == []

    standin.clear_calls()
    push(folder, standin)
    put = {c.path.rsplit("/", 1)[1] for c in standin.calls if c.endpoint == "lfs_upload"}
    assert put == lfs_oids(folder) - uploaded_before  # only what was missing
    assert standin.files(REPO_ID) == local_files(folder)
    assert len(standin.commits(REPO_ID)) == 1


def test_default_streamed_upload_path_with_regular_files(tmp_path, monkeypatch):
    """huggingface_hub 2.x with hf_xet (what users run) streams through its upload pipeline.
    The stand-in speaks no xet, so only regular (non-LFS) files can take that path here."""
    pytest.importorskip("hf_xet")
    pytest.importorskip("huggingface_hub._upload_pipeline")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", False)
    folder = tmp_path / "textual"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.jsonl").write_text('{"question": "Q?"}\n' * 50)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# card\n")
    with HubStandIn(expected_token=TOKEN, lfs_extensions=()) as s:
        s.fail("commit", times=1, status=412)  # not retried inside the client: by us
        report = push(folder, s)
        assert collapsed(s.sequence()) == [
            "create_repo",
            "validate_yaml",
            "preupload",
            "commit",
            "create_repo",
            "validate_yaml",
            "preupload",
            "commit",
        ]
        assert s.count("commit", 412) == 1 and report.attempts == 2
        assert s.count("unknown") == 0
        assert s.files(REPO_ID) == local_files(folder)


# --------------------------------------------------------------------------- retries


def test_412_and_429_are_retried_and_the_push_completes(tmp_path, standin, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(hub, "time", SimpleNamespace(sleep=waits.append))
    folder = make_dataset_folder(tmp_path)
    standin.fail("commit", times=1, status=412)  # someone else committed meanwhile
    standin.fail("commit", times=1, status=429, retry_after=0)  # then: rate limited
    standin.fail("preupload", times=1, status=429, retry_after=0)  # retried inside the client

    report = push(folder, standin, retry_base_wait_s=0.25)

    assert standin.count("commit", 412) == 1 and standin.count("commit", 429) == 1
    assert standin.count("commit", 200) == 1
    assert standin.count("preupload", 429) == 1
    assert report.attempts == 3
    assert waits == [0.25, 0.0]  # backoff after the 412; the server's Retry-After: 0 after the 429
    assert standin.count("lfs_upload") == 4  # retries resumed, nothing was sent twice
    assert standin.files(REPO_ID) == local_files(folder)


def test_a_connection_dropped_mid_upload_is_retried(tmp_path, standin):
    folder = make_dataset_folder(tmp_path)
    standin.drop("lfs_upload", times=1)
    push(folder, standin)
    assert standin.count("lfs_upload", "dropped") == 1
    assert standin.count("lfs_upload", 200) == 4
    assert standin.files(REPO_ID) == local_files(folder)


def test_a_permanent_error_fails_at_once(tmp_path, standin):
    folder = make_dataset_folder(tmp_path)
    standin.fail("commit", times=5, status=403)
    with pytest.raises(PushError, match="after 1 attempt") as err:
        push(folder, standin)
    assert "resume" not in str(err.value)
    assert standin.count("commit") == 1


def test_retries_stop_after_max_attempts(tmp_path, standin):
    folder = make_dataset_folder(tmp_path)
    standin.fail("create_repo", times=10, status=503)
    with pytest.raises(PushError, match="after 3 attempt"):
        push(folder, standin, max_attempts=3)
    assert standin.count("create_repo", 503) == 3


# --------------------------------------------------------------------------- the token


def test_token_is_used_but_never_printed_or_logged(tmp_path, standin, caplog, capfd):
    folder = make_dataset_folder(tmp_path)
    standin.fail("commit", times=1, status=429, retry_after=0)  # exercise the warning path
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("huggingface_hub").setLevel(logging.DEBUG)
        try:
            report = push(folder, standin)
            print(report.summary())
            print(repr(report))
            standin.fail("create_repo", times=1, status=400)
            with pytest.raises(PushError) as err:
                push(folder, standin)
            print("".join(traceback.format_exception(err.value)))
        finally:
            logging.getLogger("huggingface_hub").setLevel(logging.NOTSET)
    out, errs = capfd.readouterr()
    assert any(c.authorized for c in standin.calls)  # the token was really sent
    assert caplog.records, "expected log records to check"
    assert report.token_source == "argument"
    for text in (caplog.text, out, errs, repr(report), report.summary(), str(err.value)):
        assert TOKEN not in text


def test_token_from_the_environment(tmp_path, standin, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    report = push_dataset_folder(make_dataset_folder(tmp_path), REPO_ID, endpoint=standin.endpoint)
    assert report.token_source == "HF_TOKEN" and report.commit_oid
    assert all(c.authorized for c in standin.calls if c.endpoint != "lfs_upload")


def test_token_from_the_login_file(tmp_path, standin, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(token_file))
    report = push_dataset_folder(make_dataset_folder(tmp_path), REPO_ID, endpoint=standin.endpoint)
    assert report.token_source == "login" and report.commit_oid


def test_no_token_is_a_clear_error_before_any_request(tmp_path, standin):
    with pytest.raises(PushError, match="no Hugging Face token"):
        push_dataset_folder(make_dataset_folder(tmp_path), REPO_ID, endpoint=standin.endpoint)
    assert standin.calls == []


# --------------------------------------------------------------------------- bad input


def test_bad_input_fails_before_any_request(tmp_path, standin):
    good = make_dataset_folder(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    only_state = tmp_path / "only_state" / ".cache" / "huggingface"
    only_state.mkdir(parents=True)
    (only_state / "x").write_text("x")
    cases = [
        (tmp_path / "missing", REPO_ID, "not found"),
        (empty, REPO_ID, "nothing to push"),
        (tmp_path / "only_state", REPO_ID, "nothing to push"),
        (good, "no-namespace", "namespace/name"),
        (good, "a/b/c", "namespace/name"),
    ]
    for folder, repo_id, message in cases:
        with pytest.raises(PushError, match=message):
            push_dataset_folder(folder, repo_id, token=TOKEN, endpoint=standin.endpoint)
    (good / "README.md").write_text("---\nlicense: [unclosed\n---\n# card\n")
    with pytest.raises(PushError, match="not valid YAML"):
        push_dataset_folder(good, REPO_ID, token=TOKEN, endpoint=standin.endpoint, dry_run=True)
    assert standin.calls == []


def test_offline_mode_is_a_clear_error_before_any_request(tmp_path, standin, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    folder = make_dataset_folder(tmp_path)
    with pytest.raises(PushError, match="HF_HUB_OFFLINE"):
        push(folder, standin)
    assert push(folder, standin, dry_run=True).files  # a dry run still works
    assert standin.calls == []


def test_missing_card_is_a_warning(tmp_path, standin):
    folder = make_dataset_folder(tmp_path)
    (folder / "README.md").unlink()
    report = push_dataset_folder(folder, REPO_ID, dry_run=True, endpoint=standin.endpoint)
    assert report.warnings == ["no README.md: the dataset will have no card"]


def test_failure_kind_reads_status_retry_after_and_network_errors():
    request = httpx2.Request("POST", "http://x/api/commit")
    rate_limited = huggingface_hub.errors.HfHubHTTPError(
        "429", response=httpx2.Response(429, headers={"Retry-After": "7"}, request=request)
    )
    wrapped = RuntimeError("Error while uploading 'a.parquet' to the Hub.")
    wrapped.__cause__ = rate_limited
    assert hub.failure_kind(wrapped) == (429, 7.0)
    assert hub.failure_kind(httpx2.RemoteProtocolError("gone", request=request)) == (
        "network",
        None,
    )
    assert hub.failure_kind(ValueError("bad card")) == (None, None)


def test_push_refuses_files_that_differ_from_the_recorded_hashes(tmp_path, standin):
    folder = make_dataset_folder(tmp_path)
    recorded = {p: file_sha256(folder / p) for p in local_files(folder)}
    train = folder / "data" / "train-00000-of-00002.parquet"
    good = train.read_bytes()
    cases = {
        "differs from what the assemble stage wrote": lambda: train.write_bytes(good[:652]),
        "was not written by the assemble stage": lambda: (folder / "notes.txt").write_text("x"),
        "is missing": lambda: train.unlink(),
    }
    for message, spoil in cases.items():
        spoil()
        for dry_run in (True, False):
            with pytest.raises(PushRefusedError, match=message):
                push(folder, standin, dry_run=dry_run, expected_files=recorded)
        (folder / "notes.txt").unlink(missing_ok=True)
        train.write_bytes(good)
    assert standin.calls == []  # nothing was sent, not even a repo created
    report = push(folder, standin, expected_files=recorded)
    assert report.commit_oid and set(standin.files(REPO_ID)) >= set(recorded)
