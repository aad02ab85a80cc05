"""Jinja2 templates the pipeline renders: rewriting, skill tagging, the dataset card.

Data, not code: adding a rewrite strategy is adding a file under ``rewrite/<kind>/``.
"""

from pathlib import Path

TEMPLATE_ROOT = Path(__file__).resolve().parent
