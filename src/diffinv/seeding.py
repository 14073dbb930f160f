"""Per-image randomness.

Every random draw a solver, sampler or operator makes for image ``i`` of a run comes from a
``torch.Generator`` seeded by ``image_seed(run_seed, i)``.  Draws are made on the CPU and moved to
the target device, so a run is reproducible across devices and batching never changes the random
numbers of an image: image ``i`` gets the same draws whether it is processed alone or inside a
batch. (The arithmetic on them still rounds differently for other batch sizes; a long stochastic
solver such as DPS can amplify that: see ``diffinv.bench.gallery``.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import torch


def image_seed(run_seed: int, index: int) -> int:
    """A 63-bit seed derived from ``(run_seed, index)`` by SHA-256 (stable across platforms)."""
    digest = hashlib.sha256(f"diffinv:{int(run_seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def image_generators(run_seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image index."""
    gens = []
    for i in indices:
        g = torch.Generator(device="cpu")
        g.manual_seed(image_seed(run_seed, i))
        gens.append(g)
    return gens


def check_seed(seed: object, name: str = "seed") -> int:
    """``seed`` as an int: Python and numpy integers pass; bools, floats (even 3.0), strings and
    anything else raise :class:`~diffinv.errors.DiffinvError` (the one rule of ``measure``, the
    solvers and ``prior.sample``)."""
    import operator

    from diffinv.errors import DiffinvError

    if not isinstance(seed, bool | float | str | bytes):
        try:
            return operator.index(seed)  # type: ignore[arg-type]
        except TypeError:
            pass
    raise DiffinvError(f"{name} must be an integer, got {seed!r}")


def batch_generators(
    seed: int | Sequence[torch.Generator], batch: int, start: int = 0
) -> list[torch.Generator]:
    """Normalise a seed or a list of generators to ``batch`` per-image generators.

    An int seed gives the generators of image indices ``start .. start + batch - 1``; anything
    else must be a sequence of exactly ``batch`` ``torch.Generator`` (other seeds: see
    :func:`check_seed`).
    """
    from diffinv.errors import DiffinvError, ShapeError

    if isinstance(seed, Iterable) and not isinstance(seed, str | bytes | torch.Tensor):
        gens = list(seed)
        bad = [g for g in gens if not isinstance(g, torch.Generator)]
        if bad:
            raise DiffinvError(f"seed must be an integer or one torch.Generator per image, got a "
                               f"{type(seed).__name__} holding {bad[0]!r}")
        if len(gens) != batch:
            raise ShapeError(f"got {len(gens)} generators for a batch of {batch}")
        return gens
    return image_generators(check_seed(seed), range(start, start + batch))


def _stacked(draw, shape_per_image: Sequence[int], generators: Sequence[torch.Generator],
             device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    draws = [draw(tuple(shape_per_image), generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(draws).to(device=device, dtype=dtype)


def randn(shape_per_image: Sequence[int], generators: Sequence[torch.Generator], *,
          device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Stack one standard-normal draw of ``shape_per_image`` per generator -> (B, *shape)."""
    return _stacked(torch.randn, shape_per_image, generators, device, dtype)


def rand(shape_per_image: Sequence[int], generators: Sequence[torch.Generator], *,
         device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Stack one uniform [0, 1) draw per generator -> (B, *shape)."""
    return _stacked(torch.rand, shape_per_image, generators, device, dtype)
