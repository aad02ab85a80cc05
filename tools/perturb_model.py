"""A perturbed copy of a model: the same architecture and files, its language model's
weights moved by a little Gaussian noise. A cheap "second student" (a new checkpoint of the
same model) for the sample store's tests and benchmark, where training another toy student
(`python -m tools.train_toys --only student_b`: 800 steps of a 3-layer model, where the
committed 2-layer student took 271 s) would cost more than the thing measured.

    python -m tools.perturb_model models/chartworld/student /tmp/student2 --scale 0.05
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def perturb(src: Path, dst: Path, scale: float = 0.05, seed: int = 0) -> Path:
    """Copy ``src`` to ``dst`` and add noise of ``scale`` x each float tensor's std to the
    language model's weights (the vision tower is left as it is)."""
    dst = Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    gen = torch.Generator().manual_seed(seed)
    for path in sorted(dst.glob("*.safetensors")):
        tensors = load_file(path)
        for name, t in tensors.items():
            if t.is_floating_point() and "visual" not in name and t.numel() > 1:
                noise = torch.randn(t.shape, generator=gen, dtype=torch.float32)
                tensors[name] = (t.float() + scale * t.float().std() * noise).to(t.dtype)
        save_file(tensors, path, metadata={"format": "pt"})
    return dst


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--scale", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(perturb(a.src, a.dst, a.scale, a.seed))


if __name__ == "__main__":
    main()
