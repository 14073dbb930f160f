"""diffinv: imaging inverse problems with diffusion-model priors.

Images are float tensors (B, C, H, W) in [-1, 1]. See docs/guide.md (Contracts) for the contracts.
"""

from diffinv.errors import DiffinvError

__version__ = "0.1.0"

__all__ = ["DiffinvError", "__version__", "load_measurement", "load_prior"]


def load_prior(name_or_path: str, device: str = "cpu", **options):
    """Load a diffusion prior by embedded name (``"fashion32"``) or path; ``options``: ``config``
    (ADM checkpoints), ``sha256`` (pin), ``precision`` ("fp32" | "bf16"); see
    :func:`diffinv.diffusion.zoo.load_prior`."""
    from diffinv.diffusion.zoo import load_prior as _load

    return _load(name_or_path, device=device, **options)


def load_measurement(directory, *, truth: bool = True):
    """Read a measurement folder (``diffinv measure``); see :mod:`diffinv.physics.measurement`."""
    from diffinv.physics.measurement import load_measurement as _load

    return _load(directory, truth=truth)
