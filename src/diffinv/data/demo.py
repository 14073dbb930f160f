"""A few held-out test images bundled in the package, so the demo needs no data set installed.

``assets/demo/<dataset>/test_<index>.png`` are 32x32 frames of test-split images (MNIST test,
Fashion-MNIST t10k) written by ``benchmarks/tools/bundle_demo_images.py``.
"""

from __future__ import annotations

from importlib import resources

import torch

from diffinv.data.datasets import canonical_name
from diffinv.data.images import read_image
from diffinv.errors import DiffinvError


def demo_domains() -> list[str]:
    """The image domains (data sets) with bundled demo images."""
    root = resources.files("diffinv") / "assets" / "demo"
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def demo_images(dataset: str = "fashion32") -> tuple[torch.Tensor, list[int]]:
    """Bundled test images of ``dataset`` -> ((N, 1, 32, 32) in [-1, 1], test-split indices)."""
    name = canonical_name(dataset)
    if name not in demo_domains():
        raise DiffinvError(f"no demo images are bundled for {name!r} (bundled: "
                           f"{', '.join(demo_domains())})")
    folder = resources.files("diffinv") / "assets" / "demo" / name
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".png"))
    images = [read_image(str(p), channels=1) for p in files]
    indices = [int(p.name.split("_")[1].split(".")[0]) for p in files]
    return torch.cat(images), indices
