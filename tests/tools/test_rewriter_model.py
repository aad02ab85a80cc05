"""tools/rewriter_model.py: the SmolLM2 checkpoint build (``make rewriter-model``).

The real build runs once per session through the ``rewriter_model`` fixture; these tests
check what makes it safe to rerun: a built folder is recognised by its hashes and left
alone, an edited one is not taken for a build, and a folder in the way is refused.
"""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from tools import rewriter_model as rm


@pytest.mark.slow
def test_built_model_is_recognised_and_loadable(rewriter_model):
    build = json.loads((rewriter_model / rm.BUILD_FILE).read_text())
    assert build["source"]["gguf_sha256"] == rm.GGUF_SHA256
    assert rm.is_built(rewriter_model)
    tok = AutoTokenizer.from_pretrained(rewriter_model)
    assert tok.chat_template  # the rewriter is driven through its chat template


@pytest.mark.slow
def test_second_build_changes_nothing(rewriter_model, capsys):
    before = {p: p.stat().st_mtime_ns for p in rewriter_model.rglob("*") if p.is_file()}
    assert rm.main(["--out", str(rewriter_model), "--no-install"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    after = {p: p.stat().st_mtime_ns for p in rewriter_model.rglob("*") if p.is_file()}
    assert after == before


def _fake_build(folder):
    """A small folder with a BUILD.json written by the tool's own writer (real hashes)."""
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "weights.bin").write_bytes(b"\x00" * 64)
    rm.write_build(folder, rm.DIST_VERSION)
    return folder


def test_edited_folder_is_not_a_build(tmp_path):
    folder = _fake_build(tmp_path / "model")
    assert rm.is_built(folder)
    (folder / "weights.bin").write_bytes(b"\x01" * 64)  # same size, other bytes
    assert not rm.is_built(folder)


def test_folder_of_another_gguf_is_not_a_build(tmp_path):
    folder = _fake_build(tmp_path / "model")
    build = json.loads((folder / rm.BUILD_FILE).read_text())
    build["source"]["gguf_sha256"] = "0" * 64
    (folder / rm.BUILD_FILE).write_text(json.dumps(build))
    assert not rm.is_built(folder)


def test_refuses_a_folder_in_the_way(tmp_path, capsys):
    folder = _fake_build(tmp_path / "model")
    (folder / "weights.bin").write_bytes(b"")  # a truncated build
    assert rm.main(["--out", str(folder), "--no-install"]) == rm.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--force" in err
    assert (folder / "config.json").exists()  # nothing deleted


def test_refuses_a_file_as_out(tmp_path, capsys):
    target = tmp_path / "model"
    target.write_text("not a folder")
    assert rm.main(["--out", str(target), "--no-install"]) == rm.EXIT_USAGE
    assert "not a folder" in capsys.readouterr().err
