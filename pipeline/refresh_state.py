"""A refresh folder's state (`refresh.json`) and its one-line summaries, without torch:
`deltaprompts refresh` writes it (pipeline/refresh.py), `deltaprompts status` reads it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.core.errors import RunError

STATE = "refresh.json"
ROUND = "round-{:02d}"


def read_state(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise RunError(f"{path} is unreadable; rerun with --recompute to start this refresh "
                       "over, or choose another refresh.name") from None


def round_line(rec: dict[str, Any]) -> str:
    s = rec.get("samples", {})
    held = rec.get("heldout")
    acc = f", held-out {held['overall']:.3f}" if held else ""
    return (f"round {rec['round']}: zero-delta {rec['zero_delta_fraction']:.3f} of {rec['pool']}, "
            f"kept {rec['kept']}{acc}; teacher drawn {s.get('teacher_drawn', 0)} served "
            f"{s.get('teacher_served', 0)}, student drawn {s.get('student_drawn', 0)} served "
            f"{s.get('student_served', 0)}")
