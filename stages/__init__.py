"""The pipeline's stages, in order; the registry is built from their classes."""

from __future__ import annotations

from pipeline.runner.stage import StageRegistry
from stages.assemble import AssembleStage
from stages.delta import DeltaStage
from stages.filter import FilterStage
from stages.ingest import IngestStage
from stages.mine import MineStage
from stages.rewrite import RewriteStage

REGISTRY = StageRegistry([IngestStage, MineStage, RewriteStage, DeltaStage, FilterStage,
                          AssembleStage])
