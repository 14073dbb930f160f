r"""Data-fidelity energies ``E(x0) -> (B,)`` that a guided sampler descends.

An energy is evaluated on an estimate ``x0`` of the clean image (usually the Tweedie estimate
``x0_hat(x_t)``, kept in the autograd graph) and returns one value per image, so that
``grad_{x_t} sum_b E_b`` is, image by image, the gradient of that image's own energy.

* :class:`ResidualNorm`: ``E_b = ||y_b - A(x0_b)||_2``, the **unsquared** Euclidean norm per image
  (DPS, Chung et al. 2023, official code ``condition_methods.py``; the paper's
  ``zeta_i = zeta' / ||y - A(x0_hat)||`` times the gradient of the squared norm equals
  ``2 zeta'`` times the gradient of this norm).
* :class:`NoiseNLL`: ``E_b = -log p(y_b | A(x0_b))`` of the measurement's noise model
  (:meth:`diffinv.physics.NoiseModel.nll`: Gaussian, Poisson, speckle, or the robust L1 surrogate
  for impulse noise), for the noise-matched DPS variant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from diffinv.errors import DiffinvError


class Energy:
    """``E(x0) -> (B,)``: a per-image data-fidelity energy for a fixed measurement ``y``."""

    name: str = ""

    def __init__(self, y: Tensor, operator: Any, params: Mapping[str, Tensor] | None = None):
        self.y = y
        self.operator = operator
        self.params = dict(params or {})

    def forward_model(self, x0: Tensor) -> Tensor:
        """``A(x0; params)``."""
        return self.operator(x0, **self.params)

    def __call__(self, x0: Tensor) -> Tensor:
        raise NotImplementedError


class ResidualNorm(Energy):
    r"""``E_b = ||y_b - A(x0_b)||_2`` (not squared, per image)."""

    name = "l2-norm"

    def __call__(self, x0: Tensor) -> Tensor:
        r = (self.y - self.forward_model(x0)).flatten(1)
        # sqrt(sum r^2) with a tiny floor inside the root keeps the gradient finite at r = 0
        return (r.pow(2).sum(1) + torch.finfo(r.dtype).tiny).sqrt()


class NoiseNLL(Energy):
    r"""``E_b = nll(y_b, A(x0_b))`` of the measurement's noise model (per image)."""

    name = "nll"

    def __init__(self, y: Tensor, operator: Any, params: Mapping[str, Tensor] | None,
                 noise: Any):
        super().__init__(y, operator, params)
        if not callable(getattr(noise, "nll", None)):
            raise DiffinvError(f"noise model {noise!r} has no nll(y, Ax)")
        self.noise = noise

    def __call__(self, x0: Tensor) -> Tensor:
        return self.noise.nll(self.y, self.forward_model(x0))


def make_energy(kind: str, y: Tensor, operator: Any, params: Mapping[str, Tensor] | None,
                noise: Any = None) -> Energy:
    """``"l2-norm"`` -> :class:`ResidualNorm`; ``"nll"`` -> :class:`NoiseNLL`."""
    if kind == ResidualNorm.name:
        return ResidualNorm(y, operator, params)
    if kind == NoiseNLL.name:
        return NoiseNLL(y, operator, params, noise)
    from diffinv.errors import UnknownNameError

    raise UnknownNameError("data-fidelity energy", kind, [ResidualNorm.name, NoiseNLL.name])


def tweedie_gradient(energy: Energy, x_t: Tensor, x0: Tensor) -> tuple[Tensor, Tensor]:
    r"""``(grad_{x_t} sum_b E_b(x0_hat(x_t)), E)``: back-propagation through ``A``, the clamp of the
    Tweedie estimate and the network. ``x0`` must have been computed from ``x_t`` (which requires
    grad) inside the autograd graph."""
    if not x_t.requires_grad:
        raise DiffinvError("tweedie_gradient needs x_t with requires_grad=True")
    e = energy(x0)
    (g,) = torch.autograd.grad(e.sum(), x_t)
    return g, e.detach()
