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
    """One GPU per worker when a local-model engine runs on CUDA; CPU otherwise.

    An OpenAI-compatible engine needs no local accelerator, so it never reserves one.
    """
    local = [c for c in engine_cfgs if c is not None and c.engine != "openai"]
    wants_gpu = any(c.device not in ("cpu",) for c in local) and torch.cuda.is_available()
    return Resources(cpus=1.0, gpus=1.0 if wants_gpu else 0.0)


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
