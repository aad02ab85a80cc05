"""Shared fixtures: tiny real models (tests/engine_fixtures.py) and small thread counts.

Two cores are shared by everything a test starts (Ray workers, vLLM, torch), so each
process is kept to its share instead of oversubscribing the machine.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Ray's token authentication, on from the start: Ray reads the mode once per process, a
# local ray.init() turns it on for the rest of the process anyway, and the multi-node
# cluster of tests/runner/test_cluster.py runs with it (tools/ray_cluster.py).
os.environ.setdefault("RAY_AUTH_MODE", "token")

import pytest  # noqa: E402

from tests.engine_fixtures import *  # noqa: E402,F401,F403


@pytest.fixture(autouse=True)
def _private_sample_store(tmp_path_factory, monkeypatch):
    """Each test gets its own empty sample store (run.cache_dir's default), so no test is
    served samples another test drew and nothing is written under the user's ~/.cache."""
    monkeypatch.setenv("DELTAPROMPTS_CACHE_DIR", str(tmp_path_factory.mktemp("sample-store")))
