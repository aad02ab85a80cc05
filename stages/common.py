"""What the model-using stages share: engine placement, a lazily built engine, the sample
store seen from each model."""

from __future__ import annotations

from pipeline.core.config import EngineConfig, RunConfig, cache_dir_of
from pipeline.core.lazy import lazy
from pipeline.engines import Engine, build_engine
from pipeline.runner.stage import Resources
from pipeline.sampling.fingerprint import model_identity
from pipeline.sampling.store import ModelSamples, SampleStore

torch = lazy("torch")


def engine_resources(*engine_cfgs: EngineConfig | None) -> Resources:
    """The GPUs one worker of a model stage asks for: a vLLM engine's
    ``tensor_parallel_size`` (engines of one worker share its GPUs, so the largest), 1 for
    a transformers engine; none when every engine runs on the CPU (``device: cpu``) or is
    an OpenAI-compatible server (no local accelerator).

    ``device: auto`` wants GPUs where there are some: on this machine, or on the Ray
    cluster the run joins (the driver itself may have none), so the executor drops the
    request only when the cluster has no GPU at all. CPU stages never call this: their
    workers reserve no GPU.
    """
    local = [c for c in engine_cfgs if c is not None and c.engine != "openai"]
    on_gpu = [c for c in local if c.device != "cpu"]
    if not on_gpu:
        return Resources(cpus=1.0, gpus=0.0)
    gpus = max(c.tensor_parallel_size if c.engine == "vllm" else 1 for c in on_gpu)
    explicit = any(c.device.startswith("cuda") for c in on_gpu)
    return Resources(cpus=1.0, gpus=float(gpus),
                     gpus_if_available=not explicit and not torch.cuda.is_available())


class LazyEngine:
    """An engine built on first use: a stage that may not need a model (the student in
    delta, when mine already sampled every row) does not pay minutes to load it."""

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self._engine: Engine | None = None

    def get(self) -> Engine:
        if self._engine is None:
            self._engine = build_engine(self.cfg)
        return self._engine

    def sample(self, requests, *args, **kw):
        return self.get().sample(requests, *args, **kw)

    def sample_many(self, calls):
        return self.get().sample_many(calls)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


def sample_stores(cfg: RunConfig, *roles: str) -> dict[str, ModelSamples]:
    """The sample store (run.cache_dir) seen from each named model ("teacher", "student"),
    keyed by the role; empty when run.sample_store is off."""
    root = cache_dir_of(cfg.run)
    if root is None:
        return {}
    store = SampleStore(root)
    out = {}
    for role in roles:
        ecfg: EngineConfig | None = getattr(cfg.models, role)
        if ecfg is not None:
            out[role] = store.model(model_identity(ecfg, store.root), label=ecfg.model)
    return out
