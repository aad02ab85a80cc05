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

from tests.engine_fixtures import *  # noqa: E402,F401,F403
