"""What every report shares: grouping rows by skill / source, figures, atomic files.

Stage reports (failures, Δ, rewrite, filter), the audit, evaluation and benchmarks group
their rows the same way and draw in one style:

    summary = grouped(rows, summarise)            # {"overall": ..., "by_source": ..., "by_skill": ...}
    fig, axes = figure(1, 2, width=11, height=4)  # matplotlib's object API on an Agg canvas
    save_png(fig, stage_dir / "failures.png")     # atomic, like every report file
    write_json(stage_dir / "failures.json", summary)

Figures never touch pyplot's global state (no current figure, no backend switch), so
plotting is safe inside Ray workers and tests running side by side.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pipeline.core.lazy import lazy
from pipeline.core.shards import atomic_write_bytes, atomic_write_json
from pipeline.core.skills import UNKNOWN

mpl_agg = lazy("matplotlib.backends.backend_agg")
mpl_figure = lazy("matplotlib.figure")

GROUP_KEYS = ("source", "skill")
COLORS = {"main": "#4C72B0", "bad": "#C44E52", "good": "#55A868", "muted": "#8C8C8C"}


def group_by(rows: Iterable[dict[str, Any]], key: str) -> dict[str, list[dict[str, Any]]]:
    """Rows by the value of ``key`` (a missing or empty value is ``"unknown"``), by name."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r.get(key) or UNKNOWN, []).append(r)
    return dict(sorted(groups.items()))


def grouped(
    rows: list[dict[str, Any]],
    summarise: Callable[[list[dict[str, Any]]], dict[str, Any]],
    keys: Iterable[str] = GROUP_KEYS,
) -> dict[str, Any]:
    """``summarise`` over all rows (``overall``) and per group (``by_<key>``)."""
    out: dict[str, Any] = {"overall": summarise(rows)}
    for key in keys:
        out[f"by_{key}"] = {name: summarise(rs) for name, rs in group_by(rows, key).items()}
    return out


def write_json(path: Path, obj: Any) -> None:
    """A report as indented, key-sorted JSON, written atomically."""
    atomic_write_json(Path(path), obj)


def write_text(path: Path, text: str) -> None:
    atomic_write_bytes(Path(path), text.encode("utf-8"))


def figure(rows: int = 1, cols: int = 1, *, width: float = 6.0, height: float = 3.6):
    """A Figure on an Agg canvas and its axes (a list, row-major), off pyplot."""
    fig = mpl_figure.Figure(figsize=(width, height), dpi=100)
    mpl_agg.FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(rows * cols)]
    return fig, axes


def png_bytes(fig, dpi: int = 100) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_png(fig, path: Path, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG, atomically; returns the path."""
    atomic_write_bytes(Path(path), png_bytes(fig, dpi))
    return Path(path)
