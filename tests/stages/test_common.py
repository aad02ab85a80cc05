"""Engine placement: the GPUs one model worker asks for (stages/common.py)."""

from __future__ import annotations

import torch

from pipeline.core.config import EngineConfig
from stages.common import engine_resources


def _engine(**kw) -> EngineConfig:
    return EngineConfig(**{"model": "org/m", **kw})


def test_gpus_per_worker_follow_the_engines():
    # vLLM: tensor_parallel_size GPUs; engines of one worker share them (the largest).
    res = engine_resources(_engine(engine="vllm", tensor_parallel_size=4),
                           _engine(engine="vllm", tensor_parallel_size=2))
    assert (res.cpus, res.gpus) == (1.0, 4.0)
    assert engine_resources(_engine(engine="transformers")).gpus == 1.0
    # On the CPU, or an OpenAI-compatible server: no GPU at all.
    assert engine_resources(_engine(engine="vllm", device="cpu", tensor_parallel_size=2)).gpus == 0.0
    assert engine_resources(_engine(engine="openai", base_url="http://x/v1")).gpus == 0.0
    assert engine_resources(None).gpus == 0.0


def test_device_auto_wants_gpus_only_where_there_are_some_but_cuda_insists():
    auto = engine_resources(_engine(engine="vllm", tensor_parallel_size=2))
    # Without CUDA here the cluster decides (the executor drops the GPUs on a cluster
    # without any); with CUDA on the driver they are required.
    assert auto.gpus == 2.0 and auto.gpus_if_available == (not torch.cuda.is_available())
    cuda = engine_resources(_engine(engine="transformers", device="cuda"))
    assert cuda.gpus == 1.0 and not cuda.gpus_if_available
