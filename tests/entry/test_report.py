"""`deltaprompts report`: the run's HTML page, checked in a real headless Chromium.

The run is made by the real runner and the real stages 1-5 on a small chart world; only
the models are the shared scripted FAKE engine (tests/fakes.py), so every answer, and so
every Δ, is known: the student gets arithmetic wrong (three different answers), the
teacher answers everything right. Rewrite stays off, as in the demo.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.cli import main as cli
from pipeline.core.config import config_from_dict
from pipeline.report import write_report
from pipeline.runner.run import run_stages
from pipeline.runner.stage import StageRegistry
from seeds.chartworld.spec import WorldConfig
from seeds.chartworld.writer import write_seed_set
from stages.delta import DeltaStage
from stages.filter import FilterStage
from stages.ingest import IngestStage
from stages.mine import MineStage
from stages.rewrite.stage import RewriteStage
from tests.fakes import ScriptedEngine
from tools.compare_runs import stage_table

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _engines(golds: dict[str, tuple[str, str]]):
    """Scripted student and teacher: id -> (gold, skill) decides every answer."""

    def student(request, k):
        gold, skill = golds[request.id]
        return f"Answer: {['7', '8', '9'][k % 3]}" if skill == "arithmetic" else f"Answer: {gold}"

    def teacher(request, k):
        return f"Answer: {golds[request.id][0]}"

    return ScriptedEngine(student), ScriptedEngine(teacher)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    write_seed_set(root / "cw", WorldConfig(), 40, seed=5, split="test")
    cfg = config_from_dict({
        "run": {"name": "rep", "root": str(root / "runs"), "shard_size": 10},
        "execution": {"backend": "local"},
        "models": {"teacher": {"model": "scripted/teacher"}, "student": {"model": "scripted/student"}},
        "ingest": {"sources": [{"name": "cw", "format": "chartworld", "path": str(root / "cw"),
                                "split": "test"}]},
        "sampling": {"n": 6, "instruction": ""},
        "delta": {"adaptive": False, "bootstrap": 20},
    })
    golds: dict[str, tuple[str, str]] = {}

    class ScriptedMine(MineStage):  # the real stage, FAKE models
        def setup(self, cfg):
            return SimpleNamespace(student=_engines(golds)[0], stores={}, close=lambda: None)

    class ScriptedDelta(DeltaStage):
        def setup(self, cfg):
            return SimpleNamespace(teacher=_engines(golds)[1], student=None, stores={}, close=lambda: None)

    registry = StageRegistry([IngestStage, ScriptedMine, RewriteStage, ScriptedDelta, FilterStage])
    run_stages(cfg, [1], registry, progress=False)
    for row in stage_table(cfg.run_dir / "01-ingest").select(["id", "answers", "skill"]).to_pylist():
        golds[row["id"]] = (row["answers"][0], row["skill"])
    run_stages(cfg, [2, 3, 4, 5], registry, progress=False)
    return cfg.run_dir, registry, golds


def test_the_page_holds_the_stages_the_histogram_and_why_a_prompt_is_high_delta(run):
    run_dir, registry, golds = run
    path = write_report(run_dir, registry, sample=30)
    assert path == run_dir / "report.html"
    html = path.read_text()
    for stage in ("01-ingest", "02-mine", "04-delta", "05-filter"):
        assert f"<td>{stage}</td>" in html
    assert re.search(r"<td>03-rewrite</td>\s*<td class=\"status-disabled\">disabled", html)
    assert 'id="delta-hist" alt="histogram of Δ" src="data:image/png;base64,' in html
    n_arith = sum(skill == "arithmetic" for _, skill in golds.values())
    assert n_arith > 0
    # every card: image, question, gold, both answer distributions
    cards = html.split('<div class="prompt"')[1:]
    assert 0 < len(cards) <= 30
    kept = [c for c in cards if 'data-kept="kept"' in c]
    assert kept and all('data-skill="arithmetic"' in c for c in kept)  # only arithmetic has a gap
    first = cards[0]
    assert 'src="data:image/jpeg;base64,' in first and "gold: <b>" in first
    # the student's three wrong answers, two each, beside the teacher's one right answer
    counts = re.findall(r'<td class="num">(\d+)</td>', first)
    assert counts == ["6", "2", "2", "2"]
    assert "http://" not in html and "https://" not in html  # nothing fetched from the network


def test_the_report_command_and_status_say_disabled(run, capsys):
    run_dir, _, _ = run
    assert cli(["report", "--run", str(run_dir), "--sample", "10"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {run_dir / 'report.html'}"
    assert cli(["status", "--run", str(run_dir)]) == 0
    assert re.search(r"03-rewrite\s+disabled", capsys.readouterr().out)


def _chromium(url: str, user_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={user_dir}", *extra, url],
        capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install "
                    "chromium); the report's browser check needs it")
def test_the_page_renders_in_chromium_with_its_images(run, tmp_path):
    run_dir, registry, _ = run
    path = write_report(run_dir, registry, sample=30)
    url = path.resolve().as_uri()
    dom = _chromium(url, tmp_path / "profile", "--dump-dom").stdout
    assert '<table id="stages">' in dom and "<td>01-ingest</td>" in dom
    decoded = int(re.search(r'data-images-decoded="(\d+)"', dom).group(1))  # set by the page's script
    assert decoded >= 2  # the histogram and at least one prompt image decoded in the browser
    assert re.search(r'id="shown"[^>]*>(\d+) of \1 shown<', dom)  # the filter script ran
    # a filter in the link hides every card it does not match
    dropped = _chromium(url + "#kept=dropped", tmp_path / "profile", "--dump-dom").stdout
    shown = re.search(r'id="shown"[^>]*>(\d+) of (\d+) shown<', dropped)
    assert 0 < int(shown.group(1)) < int(shown.group(2))
    assert 'data-kept="kept" style="display: none;"' in dropped

    shot = tmp_path / "report.png"
    _chromium(url, tmp_path / "profile", "--window-size=1280,2000", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
