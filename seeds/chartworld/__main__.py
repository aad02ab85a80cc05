"""python -m seeds.chartworld --out DIR --n 1000 --seed 0 [--split test] [world options]"""

from __future__ import annotations

import argparse
import json

from seeds.chartworld.spec import CHART_KINDS, LABEL_SETS, WorldConfig
from seeds.chartworld.writer import write_seed_set


def main(argv: list[str] | None = None) -> None:
    d = WorldConfig()
    p = argparse.ArgumentParser(prog="python -m seeds.chartworld",
                                description="Write a chart-world seed set (ChartQA Parquet layout).")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0, help="index of the first example")
    p.add_argument("--split", default="test")
    p.add_argument("--kinds", default=",".join(d.kinds), help=f"comma list of {CHART_KINDS}")
    p.add_argument("--min-items", type=int, default=d.min_items)
    p.add_argument("--max-items", type=int, default=d.max_items)
    p.add_argument("--min-value", type=int, default=d.min_value)
    p.add_argument("--max-value", type=int, default=d.max_value)
    p.add_argument("--label-set", default=d.label_set, choices=sorted(LABEL_SETS))
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--no-value-labels", action="store_true")
    p.add_argument("--skill-weights", default=None,
                   help='JSON object, e.g. \'{"retrieval": 2, "arithmetic": 0.2}\'')
    a = p.parse_args(argv)
    cfg = WorldConfig(
        kinds=[k.strip() for k in a.kinds.split(",") if k.strip()],
        min_items=a.min_items, max_items=a.max_items, min_value=a.min_value,
        max_value=a.max_value, label_set=a.label_set, width=a.width, height=a.height,
        value_labels=not a.no_value_labels,
        skill_weights=json.loads(a.skill_weights) if a.skill_weights else None,
    )
    path = write_seed_set(a.out, cfg, a.n, seed=a.seed, split=a.split, start=a.start)
    print(path)


if __name__ == "__main__":
    main()
