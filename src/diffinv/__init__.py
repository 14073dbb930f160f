"""diffinv: imaging inverse problems with diffusion-model priors.

Images are float tensors (B, C, H, W) in [-1, 1]. See the README for the contracts.
"""

from diffinv.errors import DiffinvError

__version__ = "0.1.0"

__all__ = ["DiffinvError", "__version__", "load_measurement", "load_prior"]


def load_prior(name_or_path: str, device: str = "cpu"):
    """Load a diffusion prior by embedded name (``"fashion32"``) or path; see :mod:`diffinv.diffusion.zoo`."""
    from diffinv.diffusion.zoo import load_prior as _load

    return _load(name_or_path, device=device)


def load_measurement(directory, *, truth: bool = True):
    """Read a measurement folder (``diffinv measure``); see :mod:`diffinv.physics.measurement`."""
    from diffinv.physics.measurement import load_measurement as _load

    return _load(directory, truth=truth)
