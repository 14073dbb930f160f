"""Data-fidelity energies a guided sampler descends (residual norm, noise-model NLL)."""

from diffinv.guidance.energies import (
    Energy,
    NoiseNLL,
    ResidualNorm,
    make_energy,
    tweedie_gradient,
)

__all__ = ["Energy", "NoiseNLL", "ResidualNorm", "make_energy", "tweedie_gradient"]
