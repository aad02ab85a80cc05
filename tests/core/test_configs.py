"""Every shipped config loads and validates (a typo in configs/ fails here, not on a GPU node)."""

from pathlib import Path

import pytest

from pipeline.core.config import load_config
from stages import REGISTRY
from trainer.opd import load_config as load_opd

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_is_valid(path):
    if path.name.startswith("opd"):
        load_opd(str(path), [])
        return
    cfg = load_config(path)
    assert cfg.models is not None and cfg.ingest.sources
    for stage in REGISTRY:  # the checks run_stages makes before any stage starts
        if stage.enabled(cfg):
            stage.check(cfg)
