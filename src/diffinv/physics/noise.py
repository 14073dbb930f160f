r"""Noise models ``y ~ p(y | A x)``: seeded sampling and the negative log-likelihood for guidance.

Every model has ``sample(Ax, generators) -> y`` (one ``torch.Generator`` per image, from
:mod:`diffinv.seeding`, so a batch gives the same noise as its images one by one) and
``nll(y, Ax) -> (B,)`` (per image, summed over pixels, differentiable in ``Ax``). Specs are strings
``"name:level"``: ``"gaussian:0.05"``, ``"poisson:25"``, ``"impulse:0.3"``, ``"speckle:0.2"``,
``"none"``.

Conventions (DESIGN.md): Gaussian ``sigma`` is in the images' ``[-1, 1]`` units. Poisson and speckle
act on ``[0, 1]`` intensities ``u = clamp((Ax + 1)/2, 0, 1)`` and their likelihoods are evaluated
there; ``y`` is returned in ``[-1, 1]`` units, ``y = 2 y_{01} - 1``, and is **not** clipped (so that
``nll`` is the law ``y`` was drawn from; the PNG view of a measurement is clipped). Impulse noise is
guided with a robust L1 surrogate, not its own likelihood.

:data:`ESWMV_LEVELS` and :func:`eswmv_noise` are the one place where the ES-WMV robustness-study
levels (methods.md 4.4, stated in ``[0, 1]`` units) are converted to these conventions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from diffinv.errors import DiffinvError, ShapeError, UnknownNameError
from diffinv.physics.base import check_positive


def _check_pair(y: Tensor, ax: Tensor) -> None:
    if y.shape != ax.shape:
        raise ShapeError(f"measurement y of shape {tuple(y.shape)} does not match A(x) of shape "
                         f"{tuple(ax.shape)}")


def _per_image(fn, ax: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
    if len(generators) != ax.shape[0]:
        raise DiffinvError(f"got {len(generators)} generators for a batch of {ax.shape[0]}")
    return torch.stack([fn(ax[i], g) for i, g in enumerate(generators)])


def _to_unit(ax: Tensor) -> Tensor:
    return ((ax + 1) / 2).clamp(0.0, 1.0)


class NoiseModel:
    """``y ~ p(. | Ax)``: ``sample`` draws, ``nll`` gives ``-log p(y | Ax)`` per image."""

    name: str = ""
    description: str = ""

    def sample(self, ax: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
        raise NotImplementedError

    def nll(self, y: Tensor, ax: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def level(self) -> float:
        return 0.0

    def spec(self) -> str:
        """The spec string that rebuilds this model."""
        return f"{self.name}:{self.level!r}" if self.name != "none" else "none"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec()!r})"


class NoNoise(NoiseModel):
    """``y = Ax``; ``nll = ||y - Ax||^2 / 2`` (least-squares surrogate: the law is a point mass)."""

    name = "none"
    description = "no noise (y = Ax); least-squares surrogate nll"

    def sample(self, ax, generators):
        return ax.clone()

    def nll(self, y, ax):
        _check_pair(y, ax)
        return 0.5 * (y - ax).pow(2).flatten(1).sum(1)


class GaussianNoise(NoiseModel):
    r"""``y = Ax + sigma eps``, ``eps ~ N(0, I)``, sigma in ``[-1, 1]`` units.

    ``nll = ||y - Ax||^2 / (2 sigma^2) + n log(sigma sqrt(2 pi))``; for ``sigma = 0`` (no noise) the
    least-squares surrogate ``||y - Ax||^2 / 2``.
    """

    name = "gaussian"
    description = "additive Gaussian, sigma in [-1,1] units"

    def __init__(self, sigma: float):
        self.sigma = check_positive(sigma, "Gaussian noise sigma", allow_zero=True)

    @property
    def level(self):
        return self.sigma

    def sample(self, ax, generators):
        def one(a, g):
            eps = torch.randn(a.shape, generator=g, dtype=torch.float32)
            return a + self.sigma * eps.to(device=a.device, dtype=a.dtype)
        return _per_image(one, ax, generators)

    def nll(self, y, ax):
        _check_pair(y, ax)
        r2 = (y - ax).pow(2).flatten(1).sum(1)
        if self.sigma == 0:
            return 0.5 * r2
        n = y[0].numel()
        return r2 / (2 * self.sigma ** 2) + n * math.log(self.sigma * math.sqrt(2 * math.pi))


class PoissonNoise(NoiseModel):
    r"""Shot noise on ``[0, 1]`` intensities: ``y_{01} = N / lambda``, ``N ~ Poisson(lambda u)``.

    ``lambda`` is the expected photon count of a white pixel (the ES-WMV convention
    ``x <- Poisson(lambda x)/lambda``; DPS's ``rate`` r corresponds to ``lambda = 255 r``).
    ``nll = sum(mu - N log mu + log N!)`` with ``mu = lambda max(u, 1e-6)``, ``N = lambda y_{01}``:
    the exact Poisson negative log-likelihood of the counts.
    """

    name = "poisson"
    description = "Poisson shot noise, rate lambda = counts at white, on [0,1] intensities"

    def __init__(self, rate: float):
        self.rate = check_positive(rate, "Poisson rate lambda")

    @property
    def level(self):
        return self.rate

    def sample(self, ax, generators):
        def one(a, g):
            lam = (self.rate * _to_unit(a)).to(device="cpu", dtype=torch.float64)
            counts = torch.poisson(lam, generator=g)
            return (2 * counts / self.rate - 1).to(device=a.device, dtype=a.dtype)
        return _per_image(one, ax, generators)

    def nll(self, y, ax):
        _check_pair(y, ax)
        counts = self.rate * (y + 1) / 2
        mu = self.rate * _to_unit(ax).clamp_min(1e-6)
        return (mu - counts * torch.log(mu) + torch.lgamma(counts + 1)).flatten(1).sum(1)


class ImpulseNoiseL1Surrogate(NoiseModel):
    r"""Salt-and-pepper noise, guided with a robust **L1 surrogate** (not its likelihood).

    Sampling: each value independently, with probability ``p``, is replaced by salt (+1) or pepper
    (-1) with equal odds (as ``skimage.util.random_noise(mode="s&p")``).

    The salt-and-pepper likelihood is a mixture of a point mass at ``Ax`` and two at ``+-1``:
    useless for gradient guidance. We use the Laplace surrogate
    ``nll = ||y - Ax||_1 / b + n log(2 b)`` with ``b = p`` (about the mean absolute residual,
    ``p E|+-1 - Ax|``, for images spread over ``[-1, 1]``; ``b = 1`` when ``p = 0``), which is
    robust to the outliers.
    """

    name = "impulse"
    description = "salt-and-pepper impulse noise, fraction p; guided by a robust L1 surrogate"

    def __init__(self, p: float):
        self.p = check_positive(p, "impulse fraction p", allow_zero=True)
        if self.p > 1:
            raise DiffinvError(f"impulse fraction p must be in [0, 1], got {p}")

    @property
    def level(self):
        return self.p

    def sample(self, ax, generators):
        def one(a, g):
            hit = torch.rand(a.shape, generator=g) < self.p
            salt = torch.rand(a.shape, generator=g) < 0.5
            value = (2 * salt.float() - 1).to(device=a.device, dtype=a.dtype)
            return torch.where(hit.to(a.device), value, a)
        return _per_image(one, ax, generators)

    def nll(self, y, ax):
        _check_pair(y, ax)
        b = self.p if self.p > 0 else 1.0
        n = y[0].numel()
        return (y - ax).abs().flatten(1).sum(1) / b + n * math.log(2 * b)


class SpeckleNoise(NoiseModel):
    r"""Multiplicative speckle on ``[0, 1]`` intensities: ``y_{01} = u + c u eps``, eps ~ N(0, 1).

    ``nll`` is the Gaussian law of ``y_{01}`` given ``u``:
    ``sum((y_{01} - u)^2 / (2 c^2 v^2) + log(c v sqrt(2 pi)))`` with ``v = max(u, 1e-3)``.
    """

    name = "speckle"
    description = "multiplicative speckle y = u + c u N(0,1) on [0,1] intensities"

    def __init__(self, c: float):
        self.c = check_positive(c, "speckle level c")

    @property
    def level(self):
        return self.c

    def sample(self, ax, generators):
        def one(a, g):
            u = _to_unit(a)
            eps = torch.randn(a.shape, generator=g).to(device=a.device, dtype=a.dtype)
            return 2 * (u + self.c * u * eps) - 1
        return _per_image(one, ax, generators)

    def nll(self, y, ax):
        _check_pair(y, ax)
        y01 = (y + 1) / 2
        v = _to_unit(ax).clamp_min(1e-3)
        s = self.c * v
        return ((y01 - _to_unit(ax)) ** 2 / (2 * s ** 2)
                + torch.log(s * math.sqrt(2 * math.pi))).flatten(1).sum(1)


NOISE_MODELS: dict[str, type[NoiseModel]] = {
    m.name: m for m in (NoNoise, GaussianNoise, PoissonNoise, ImpulseNoiseL1Surrogate,
                        SpeckleNoise)
}


def make_noise(spec: str | NoiseModel) -> NoiseModel:
    """Build a noise model from ``"name:level"`` (or ``"none"``); errors list the known names."""
    if isinstance(spec, NoiseModel):
        return spec
    if not isinstance(spec, str):
        raise DiffinvError(f"a noise spec must be a string like 'gaussian:0.05', got {spec!r}")
    name, _, level = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in NOISE_MODELS:
        raise UnknownNameError("noise model", name, list(NOISE_MODELS))
    cls = NOISE_MODELS[name]
    if cls is NoNoise:
        if level.strip() not in ("", "0", "0.0"):
            raise DiffinvError(f"noise 'none' takes no level, got {spec!r}")
        return NoNoise()
    if not level.strip():
        raise DiffinvError(f"noise {name!r} needs a level, e.g. '{name}:0.1'")
    try:
        value = float(level)
    except ValueError as e:
        raise DiffinvError(f"noise level {level!r} in {spec!r} is not a number") from e
    return cls(value)


def list_noise_models() -> list[tuple[str, str]]:
    """``[(spec pattern, one-line description)]`` of every noise model."""
    out = []
    for name, cls in NOISE_MODELS.items():
        pattern = {"none": "none", "gaussian": "gaussian:SIGMA", "poisson": "poisson:LAMBDA",
                   "impulse": "impulse:P", "speckle": "speckle:C"}[name]
        out.append((pattern, cls.description))
    return out


# ------------------------------------------------------------------ ES-WMV levels (methods.md 4.4)
#: ES-WMV robustness-study levels as stated there, in [0, 1] units (low/medium/high = ImageNet-C
#: style levels 2/3/4): Gaussian sigma, shot-noise lambda, speckle c, impulse fraction.
ESWMV_LEVELS: dict[str, dict[str, float]] = {
    "gaussian": {"low": 0.12, "medium": 0.18, "high": 0.26},
    "poisson": {"low": 25.0, "medium": 12.0, "high": 5.0},
    "speckle": {"low": 0.20, "medium": 0.35, "high": 0.45},
    "impulse": {"low": 0.30, "medium": 0.50, "high": 0.70},
}


def eswmv_noise(kind: str, level: str) -> str:
    """The noise spec, in our conventions, of an ES-WMV level (the single conversion point).

    Only Gaussian sigma changes: ``[0, 1]`` units to ``[-1, 1]`` units doubles it. Shot-noise
    ``lambda``, speckle ``c`` and the impulse fraction are defined on ``[0, 1]`` intensities, where
    our models evaluate them, so they carry over unchanged. (ES-WMV also clips the noisy image to
    ``[0, 1]``; our ``y`` is left unclipped so that ``nll`` is its exact law.)
    """
    if kind not in ESWMV_LEVELS:
        raise UnknownNameError("ES-WMV noise type", kind, list(ESWMV_LEVELS))
    if level not in ESWMV_LEVELS[kind]:
        raise UnknownNameError("ES-WMV level", level, list(ESWMV_LEVELS[kind]))
    value = ESWMV_LEVELS[kind][level]
    if kind == "gaussian":
        value = 2.0 * value
    return f"{kind}:{value!r}"
