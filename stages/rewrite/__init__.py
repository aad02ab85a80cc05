"""Stage 3, rewrite: new prompts aimed at the student's failures (stage.py says how)."""

from stages.rewrite.stage import RewriteStage

__all__ = ["RewriteStage"]
