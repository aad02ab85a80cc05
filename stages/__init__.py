"""Stage registry: number -> stage class. Modules are imported lazily, so `status` or a
config error never pays for importing torch, vLLM or Ray."""

from __future__ import annotations

import importlib

from pipeline.stage import Stage

STAGES: dict[int, str] = {
    1: "stages.ingest:IngestStage",
    2: "stages.mine:MineStage",
    3: "stages.rewrite:RewriteStage",
    4: "stages.delta:DeltaStage",
    5: "stages.filter:FilterStage",
    6: "stages.assemble:AssembleStage",
}


def load_stage(number: int) -> Stage:
    if number not in STAGES:
        raise KeyError(f"no stage {number}; stages are {sorted(STAGES)}")
    module, _, cls = STAGES[number].partition(":")
    return getattr(importlib.import_module(module), cls)()


def all_stages() -> dict[str, Stage]:
    """Every stage, by name (used to find upstream folders)."""
    out = {}
    for n in STAGES:
        try:
            st = load_stage(n)
        except ModuleNotFoundError:
            continue  # a stage not built yet in this checkout
        out[st.name] = st
    return out
