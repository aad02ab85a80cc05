"""Engines: one sampling + scoring interface (see ``base``) and ``build_engine``.

Each backend imports its engine library (torch, vLLM, httpx clients) lazily, so importing
``pipeline.engines`` costs nothing and config code and the CLI stay light.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging

from pipeline.core.config import EngineConfig
from pipeline.engines.base import (
    Completion,
    Engine,
    Request,
    RequestError,
    SampleParams,
    SampleResult,
)
from pipeline.engines.openai_engine import OpenAIEngine
from pipeline.engines.transformers_engine import TransformersEngine
from pipeline.engines.vllm_engine import VLLMEngine

log = logging.getLogger(__name__)

__all__ = [
    "Completion",
    "Engine",
    "EngineConfig",
    "Request",
    "RequestError",
    "SampleParams",
    "SampleResult",
    "build_engine",
]


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def build_engine(cfg: EngineConfig) -> Engine:
    """The engine named by ``cfg.engine``, with ``cfg.model`` loaded."""
    if not cfg.model:
        raise ValueError("EngineConfig.model is required (a local path or Hub id)")
    if cfg.engine == "transformers":
        return TransformersEngine(cfg)
    if cfg.engine == "vllm":
        if not vllm_available():
            # Same requests, same outputs contract: a machine without vLLM still runs.
            log.warning("vLLM is not installed; running %s with the transformers engine", cfg.model)
            return build_engine(dataclasses.replace(cfg, engine="transformers"))
        return VLLMEngine(cfg)
    if cfg.engine == "openai":
        return OpenAIEngine(cfg)
    raise ValueError(f"unknown engine {cfg.engine!r}: expected vllm, transformers or openai")
