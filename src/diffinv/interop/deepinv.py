r"""deepinv interop: deepinv physics as diffinv operators, and the other way round; a diffinv prior
as a deepinv denoiser.

deepinv (``pip install 'diffinv[deepinv]'``; it needs torchvision, so it lives best in an
environment of its own) is imported only when one of these functions is called.

**Units.** deepinv's images live in ``[0, 1]``, diffinv's in ``[-1, 1]``: ``u = (x + 1) / 2``. A
linear operator has no units, so the wrappers pass tensors through unchanged; what changes is the
data one feeds them. :func:`measurement_to_unit_range` turns a diffinv measurement of a linear
operator, ``y = A x + n``, into the one deepinv's samplers expect, ``A u + n / 2 = (y + A 1) / 2``,
with the noise standard deviation halved.

* :class:`DeepinvOperator` (``from_deepinv(physics)``): a deepinv ``Physics`` used wherever a diffinv
  operator is expected (``measure``, every solver). ``A(x) = physics.A(x)`` (deepinv's noise model
  is not used: diffinv's noise spec makes the noise); linear physics give their ``A_adjoint``; a
  ``DecomposablePhysics`` with real singular values (``mask``) and a measurement of the image's size
  gives diffinv's SVD ``A = U diag(s) V^T`` from its ``U``, ``U_adjoint``, ``V``, ``V_adjoint``
  (negative ``mask`` entries fold their sign into ``U``). Complex masks and half-spectrum
  coefficients (deepinv's ``BlurFFT``) give no SVD here: such an operator is linear with an
  adjoint, which DPS-like solvers need, but the SVD solvers (DDRM, PiGDM, ...) refuse it with the
  usual message.
* :func:`to_deepinv`: a diffinv operator (with its per-image parameters) as a deepinv physics:
  ``DecomposablePhysics`` when it has a fast SVD (coefficients ``V^T x`` as a ``(B, n)`` tensor,
  ``mask = [s, 0]``), ``LinearPhysics`` when linear, ``Physics`` otherwise.
* :func:`as_deepinv_denoiser`: a diffinv prior as a deepinv ``Denoiser`` ``(u, sigma) -> u0``: for
  ``u = u0 + sigma n`` in ``[0, 1]`` units, ``x = 2 u - 1`` is ``x0 + 2 sigma n``, the
  variance-exploding view of the VP prior: with ``s = 2 sigma`` and the timestep ``t`` whose
  ``sqrt((1 - abar_t) / abar_t)`` is nearest to ``s``,
  ``x0 = x - s eps_theta(x / sqrt(1 + s^2), t)`` (Tweedie, clamped to ``[-1, 1]``), returned as
  ``(x0 + 1) / 2``. deepinv's own ``DiffUNet`` does the same with the nearest timestep.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from diffinv.errors import DiffinvError, ShapeError
from diffinv.physics.base import Operator
from diffinv.physics.svd import SVD

INSTALL_HINT = ("deepinv is not installed: pip install 'diffinv[deepinv]' (deepinv needs "
                "torchvision; a separate virtual environment keeps diffinv's core free of it)")


def require_deepinv() -> Any:
    """Import deepinv or raise a :class:`DiffinvError` that says how to install it."""
    try:
        import deepinv
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DiffinvError(f"{INSTALL_HINT} ({e})") from e
    return deepinv


def is_deepinv_physics(obj: Any) -> bool:
    """Whether ``obj`` is a deepinv ``Physics`` (checked without importing deepinv)."""
    return any(c.__module__.split(".")[0] == "deepinv" and c.__name__ == "Physics"
               for c in type(obj).__mro__)


# --------------------------------------------------------------------------- deepinv -> diffinv
class DeepinvSVD(SVD):
    """diffinv's SVD factors read from a deepinv ``DecomposablePhysics`` (see the module doc)."""

    def __init__(self, physics: Any, in_shape: Sequence[int], out_shape: Sequence[int]):
        super().__init__(in_shape, out_shape)
        self.physics = physics
        ref = physics.mask if isinstance(physics.mask, Tensor) else torch.tensor(0.0)
        with torch.no_grad():
            coef = physics.V_adjoint(torch.zeros(1, *self.in_shape, dtype=ref.dtype,
                                                 device=ref.device))
        self.coef_shape = tuple(coef.shape[1:])
        if math.prod(self.coef_shape) != self.n or self.m != self.n:
            raise DiffinvError(
                f"{type(physics).__name__}: diffinv reads the SVD of a DecomposablePhysics whose "
                f"coefficients and measurement have the image's size ({self.n}); got "
                f"{math.prod(self.coef_shape)} coefficients and a measurement of {self.m}")
        d = torch.as_tensor(physics.mask).to(coef) * torch.ones_like(coef)
        self.sign = torch.where(d < 0, -torch.ones_like(d), torch.ones_like(d))
        self.s = d.abs().reshape(d.shape[0], -1)

    def singulars(self) -> Tensor:
        return self.s

    def _coefs(self, c: Tensor) -> Tensor:
        return c.reshape(c.shape[0], *self.coef_shape)

    def vt(self, x: Tensor) -> Tensor:
        return self.physics.V_adjoint(x).reshape(x.shape[0], -1)

    def v(self, c: Tensor) -> Tensor:
        return self.physics.V(self._coefs(c)).reshape(c.shape[0], *self.in_shape)

    def ut(self, y: Tensor) -> Tensor:
        return (self.sign.to(y) * self.physics.U_adjoint(y)).reshape(y.shape[0], -1)

    def u(self, c: Tensor) -> Tensor:
        return self.physics.U(self.sign.to(c) * self._coefs(c))


def _device_of(module: Any) -> torch.device:
    """Where a module's tensors live (its first buffer or parameter; CPU if it has none)."""
    for t in (*module.buffers(), *module.parameters()):
        return t.device
    return torch.device("cpu")


def _svd_fits(physics: Any) -> bool:
    """Whether a DecomposablePhysics gives diffinv's real SVD: a real ``mask`` and, where its
    ``img_size`` is known, coefficients and measurement of the image's size (deepinv's ``BlurFFT``
    keeps half a complex spectrum as a real tensor: not an orthogonal basis of the image space)."""
    if torch.is_complex(torch.as_tensor(physics.mask)):
        return False
    size = getattr(physics, "img_size", None)
    if size is None:
        return True  # checked when the SVD is asked for
    x = torch.zeros(1, *size, device=_device_of(physics))
    with torch.no_grad():
        coef, y = physics.V_adjoint(x), physics.A(x)
    return (not torch.is_complex(coef)) and coef.numel() == x.numel() == y.numel()


class DeepinvOperator(Operator):
    """A deepinv ``Physics`` as a diffinv :class:`~diffinv.physics.base.Operator` (module doc)."""

    description = "a deepinv Physics (its A; diffinv's noise spec makes the noise)"
    registry_name = None  # not in diffinv's registry: such a measurement is not saved to disk

    def __init__(self, physics: Any):
        dinv = require_deepinv()
        if not isinstance(physics, dinv.physics.Physics):
            raise DiffinvError(f"expected a deepinv Physics, got {type(physics).__name__}")
        super().__init__()
        self.physics = physics
        self.linear = isinstance(physics, dinv.physics.LinearPhysics)
        self.has_svd = (isinstance(physics, dinv.physics.DecomposablePhysics)
                        and _svd_fits(physics))
        self._out_of: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._in_of: dict[tuple[int, ...], tuple[int, ...]] = {}

    def config(self) -> dict[str, Any]:
        return {"physics": type(self.physics).__name__}

    def extra_repr(self) -> str:
        return f"physics={type(self.physics).__name__}, linear={self.linear}, svd={self.has_svd}"

    def _probe(self, image: tuple[int, ...]) -> tuple[int, ...]:
        if image not in self._out_of:
            with torch.no_grad():
                out = self.physics.A(torch.zeros(1, *image, device=_device_of(self.physics)))
            self._out_of[image] = tuple(out.shape[1:])
            self._in_of.setdefault(tuple(out.shape[1:]), image)
        return self._out_of[image]

    def out_shape(self, in_shape: Sequence[int]) -> tuple[int, ...]:
        b, *image = (int(s) for s in in_shape)
        return (b, *self._probe(tuple(image)))

    def in_shape(self, out_shape: Sequence[int]) -> tuple[int, ...]:
        b, *meas = (int(s) for s in out_shape)
        meas_t = tuple(meas)
        if meas_t not in self._in_of:
            if not self.linear:
                raise ShapeError(f"{type(self.physics).__name__}: the image shape that gives a "
                                 f"measurement of shape {meas_t} is unknown (apply the operator "
                                 "to an image first)")
            with torch.no_grad():
                x = self.physics.A_adjoint(torch.zeros(1, *meas_t,
                                                       device=_device_of(self.physics)))
            self._in_of[meas_t] = tuple(x.shape[1:])
        return (b, *self._in_of[meas_t])

    def apply(self, x: Tensor, **params: Tensor) -> Tensor:
        return self.physics.A(x)

    def apply_adjoint(self, y: Tensor, **params: Tensor) -> Tensor:
        return self.physics.A_adjoint(y)

    def svd(self, in_shape: Sequence[int], **params: Tensor) -> DeepinvSVD:
        if not self.has_svd:
            return super().svd(in_shape, **params)
        return DeepinvSVD(self.physics, in_shape, self.out_shape(in_shape))


def from_deepinv(physics: Any) -> DeepinvOperator:
    """Wrap a deepinv ``Physics`` as a diffinv operator (see :class:`DeepinvOperator`)."""
    return DeepinvOperator(physics)


# --------------------------------------------------------------------------- diffinv -> deepinv
def to_deepinv(operator: Operator, params: dict[str, Tensor] | None = None, *,
               image_shape: Sequence[int], noise_sigma: float = 0.0,
               device: torch.device | str = "cpu") -> Any:
    """A diffinv operator with fixed per-image ``params`` as a deepinv physics.

    ``image_shape``: ``(B, C, H, W)`` of the images (the SVD needs it); ``noise_sigma``: the
    standard deviation of deepinv's ``GaussianNoise`` model attached to it, in the units of the data
    deepinv will see (``sigma / 2`` for measurements from :func:`measurement_to_unit_range`).
    deepinv's SVD samplers (DDRM) take one ``mask`` for the batch: with per-image parameters, make
    one physics per image.
    """
    from diffinv.solvers._common import has_fast_svd

    dinv = require_deepinv()
    params = dict(params or {})
    noise = dinv.physics.GaussianNoise(sigma=float(noise_sigma))

    def forward(x: Tensor, **_: Any) -> Tensor:
        return operator(x, **params)

    if has_fast_svd(operator):
        svd = operator.svd(tuple(image_shape), **params).to(device=device)
        m = svd.m
        mask = svd.add_zeros(svd.singulars().to(device))
        return dinv.physics.DecomposablePhysics(
            U=lambda c, **_: svd.u(c[:, :m]),
            U_adjoint=lambda y, **_: svd.add_zeros(svd.ut(y)),
            V=lambda c, **_: svd.v(c),
            V_adjoint=lambda x, **_: svd.vt(x),
            mask=mask, img_size=tuple(image_shape[1:]), noise_model=noise, device=device)
    if operator.linear:
        return dinv.physics.LinearPhysics(
            A=forward, A_adjoint=lambda y, **_: operator.adjoint(y, **params),
            img_size=tuple(image_shape[1:]), noise_model=noise, device=device)
    return dinv.physics.Physics(A=forward, noise_model=noise)


def measurement_to_unit_range(y: Tensor, operator: Operator, params: dict[str, Tensor],
                              sigma: float) -> tuple[Tensor, float]:
    """``(y + A 1) / 2`` and ``sigma / 2``: a diffinv measurement of a *linear* operator as deepinv
    sees it (images in ``[0, 1]``): ``A u + n / 2`` with ``u = (x + 1) / 2``. ``sigma``, the
    noise level of ``y``, must be a finite number >= 0."""
    if (isinstance(sigma, bool) or not isinstance(sigma, numbers.Real)
            or not math.isfinite(sigma) or sigma < 0):
        raise DiffinvError(f"sigma must be a finite number >= 0 (the noise level of y), "
                           f"got {sigma!r}")
    if not operator.linear:
        raise DiffinvError("only a linear operator's measurement can be moved to [0, 1] units")
    ones = torch.ones(operator.in_shape(y.shape), dtype=y.dtype, device=y.device)
    with torch.no_grad():
        return (y + operator(ones, **params)) / 2, float(sigma) / 2


# --------------------------------------------------------------------------- prior -> denoiser
_DENOISER_CLASS: type | None = None


def _denoiser_class() -> type:
    global _DENOISER_CLASS
    if _DENOISER_CLASS is None:
        dinv = require_deepinv()

        class DiffinvPriorDenoiser(dinv.models.Denoiser):
            """A diffinv diffusion prior as a deepinv denoiser ``(u, sigma) -> u0`` in [0, 1]
            units (see :mod:`diffinv.interop.deepinv`)."""

            def __init__(self, prior: Any):
                from diffinv.solvers.daps import VEDenoiser

                super().__init__(device=prior.device)
                self.prior = prior
                self.ve = VEDenoiser(prior)  # the VE view DAPS uses; its sigma table built once

            def forward(self, x: Tensor, sigma: Any, *args: Any, **kwargs: Any) -> Tensor:
                s = self._handle_sigma(sigma, batch_size=x.shape[0], ndim=x.ndim,
                                       device=x.device, dtype=x.dtype)
                s = torch.as_tensor(s, dtype=x.dtype, device=x.device).reshape(-1)
                return (self.ve.per_image(2 * x - 1, 2 * s).clamp(-1.0, 1.0) + 1) / 2

        _DENOISER_CLASS = DiffinvPriorDenoiser
    return _DENOISER_CLASS


def as_deepinv_denoiser(prior: Any) -> Any:
    """A diffinv prior as a deepinv ``Denoiser`` (module doc); its NFE counter keeps counting."""
    return _denoiser_class()(prior)
