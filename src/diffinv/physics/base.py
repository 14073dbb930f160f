"""The forward-operator contract.

An :class:`Operator` maps a batch of images ``x`` of shape ``(B, C, H, W)`` to a measurement
``A(x; theta)``. ``theta`` are the operator's *per-image parameters* (a mask, a blur kernel, an
angle...), passed as keyword tensors whose leading dimension is ``B`` (one parameter set per image)
or ``1`` (shared). Fixed settings (kernel size, scale factor...) are constructor arguments.

* ``A.linear`` -- whether ``A`` is linear in ``x``; linear operators implement
  ``A.adjoint(y, **theta)`` with ``<A x, y> = <x, A^T y>``.
* ``A.has_svd`` -- whether ``A.svd(in_shape, **theta)`` returns fast factors
  ``A = U diag(s) V^T`` (see :mod:`diffinv.physics.svd`).
* ``A.param_names`` -- the per-image parameters ``forward`` accepts;
  ``A.draw_params(generators, image_shape)`` draws them, one set per image, from per-image
  ``torch.Generator`` objects (:mod:`diffinv.seeding`), so that a batch gives the same parameters as
  its images drawn one by one.
* ``A.blind`` -- for a blind family the drawn parameters are the hidden truth: a solver receives the
  operator (and the law the parameters were drawn from, in ``A.config()``) but not the parameters.

Everything is differentiable in ``x`` and in the parameters.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from diffinv.checks import check_image
from diffinv.errors import DiffinvError, ShapeError

Shape = tuple[int, ...]


class OperatorTraits:
    """The attributes of the operator contract (module docstring), with their defaults: shared by
    :class:`Operator` and the clip operators (:class:`diffinv.video.operators.ClipOperator`,
    deliberately not an ``Operator``)."""

    #: one-line description (shown by ``diffinv measure --list``)
    description: str = ""
    linear: bool = False
    has_svd: bool = False
    blind: bool = False
    #: names of the per-image (per-clip) parameters ``forward`` accepts
    param_names: tuple[str, ...] = ()
    #: parameters ``forward`` cannot do without (no fixed default)
    required_params: tuple[str, ...] = ()
    #: whether measurements are images in [-1, 1] (False: e.g. Fourier magnitudes)
    image_like: bool = True


class Operator(OperatorTraits, nn.Module):
    """Base class of every forward operator ``y = A(x; theta)`` (see the module docstring)."""

    #: dimensions of one image's value of each parameter; a parameter is given with a leading
    #: batch dimension (B or 1) or without it (one value shared by the batch)
    param_ndim: dict[str, int] = {"kernel": 2, "mask": 3, "theta": 0, "std": 0, "z": 0,
                                  "kernels": 3, "latent": 3}

    # ---------------------------------------------------------------- to be implemented
    def apply(self, x: Tensor, **params: Tensor) -> Tensor:
        """Compute ``A(x; params)`` on validated inputs."""
        raise NotImplementedError

    def out_shape(self, in_shape: Sequence[int]) -> Shape:
        """Shape of ``A(x)`` for ``x`` of shape ``in_shape`` ``(B, C, H, W)``; same by default."""
        return tuple(int(s) for s in in_shape)

    def in_shape(self, out_shape: Sequence[int]) -> Shape:
        """Shape of ``x`` that gives a measurement of shape ``out_shape`` (linear operators)."""
        return tuple(int(s) for s in out_shape)

    def draw_params(self, generators: Sequence[torch.Generator], image_shape: Sequence[int],
                    *, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        """Draw one parameter set per generator for images of shape ``image_shape = (C, H, W)``.

        Operators without random parameters return ``{}``.
        """
        return {}

    def config(self) -> dict[str, Any]:
        """The constructor arguments (public settings) that rebuild this operator."""
        return constructor_config(self)

    # ---------------------------------------------------------------- public API
    def forward(self, x: Tensor, **params: Tensor) -> Tensor:
        """``A(x; params)``; checks ``x`` (shape, finiteness) and the parameter names."""
        check_image(x, "x")
        self.out_shape(x.shape)  # raises ShapeError when x does not fit
        params = self._check_params(params, x.shape[0])
        return self.apply(x, **params)

    def adjoint(self, y: Tensor, **params: Tensor) -> Tensor:
        """``A^T y`` for a linear operator."""
        if not self.linear:
            raise DiffinvError(f"{type(self).__name__} is not linear: it has no adjoint")
        y = self.check_measurement(y)
        params = self._check_params(params, y.shape[0])
        return self.apply_adjoint(y, **params)

    def apply_adjoint(self, y: Tensor, **params: Tensor) -> Tensor:
        """``A^T y`` on validated inputs; by default the exact vector-Jacobian product.

        For a linear map ``A`` the VJP of ``x -> A x`` at any point with cotangent ``y`` is exactly
        ``A^T y``. The graph is kept (``create_graph``) when gradients are on, so the adjoint is
        itself differentiable in ``y`` and in the parameters.
        """
        return vjp_adjoint(self.apply, self.in_shape(y.shape), y, params)

    def svd(self, in_shape: Sequence[int], **params: Tensor):
        """Fast SVD factors of ``A`` for images of shape ``in_shape`` (SVD-capable operators)."""
        raise DiffinvError(f"{type(self).__name__} has no SVD")

    def check_measurement(self, y: Tensor, name: str = "y") -> Tensor:
        """Check that ``y`` is a finite batch whose shape some input of this operator produces."""
        check_image(y, name)
        want = self.out_shape(self.in_shape(y.shape))
        if tuple(y.shape) != want:
            raise ShapeError(f"{name} of shape {tuple(y.shape)} does not fit {type(self).__name__}"
                             f" (it produces {want})")
        return y

    # ---------------------------------------------------------------- helpers
    def _check_params(self, params: dict[str, Any], batch: int) -> dict[str, Any]:
        return check_params(
            self, params, batch, self.param_ndim.get,
            missing_hint=(" (a blind family: draw them with draw_params or estimate them)"
                          if self.blind else ""))

    def extra_repr(self) -> str:
        return settings_repr(self.config(), hide=(Tensor,))


# ------------------------------------------------------------------ shared with clip operators
# (diffinv.video.operators.ClipOperator: the same contract on clips, deliberately not an Operator)
def constructor_config(op: Any) -> dict[str, Any]:
    """The attributes of ``op`` named as its constructor's arguments (an operator's ``config``)."""
    sig = inspect.signature(type(op).__init__)
    return {k: getattr(op, k) for k in sig.parameters if k != "self" and hasattr(op, k)}


def settings_repr(config: dict[str, Any], *, hide: tuple[type, ...]) -> str:
    """``k=v, ...`` of the settings in ``config`` that are not instances of ``hide``."""
    return ", ".join(f"{k}={v!r}" for k, v in config.items() if not isinstance(v, hide))


def vjp_adjoint(apply: Callable[..., Tensor], in_shape: Sequence[int], y: Tensor,
                params: dict[str, Any]) -> Tensor:
    """``A^T y`` of a linear ``apply`` (inputs of shape ``in_shape``) as the exact
    vector-Jacobian product; the graph is kept when gradients are on and ``y`` or a parameter
    needs them."""
    keep = torch.is_grad_enabled() and (
        y.requires_grad or any(isinstance(p, Tensor) and p.requires_grad
                               for p in params.values()))
    with torch.enable_grad():
        x0 = torch.zeros(in_shape, dtype=y.dtype, device=y.device, requires_grad=True)
        out = apply(x0, **params)
        (g,) = torch.autograd.grad(out, x0, grad_outputs=y, create_graph=keep)
    return g


def check_params(op: Any, params: dict[str, Any], batch: int,
                 ndim_of: Callable[[str], int | None], *, missing_hint: str = "",
                 shared: str = "shared", each: str = "per image",
                 batch_size: str = "the batch size", need_batch_dim: bool = False
                 ) -> dict[str, Tensor]:
    """``params`` checked against ``op.param_names`` / ``op.required_params`` (``missing_hint``
    ends the error of a missing one) and as tensors: ``ndim_of(name)`` dimensions of one item's
    value (None: any), given as is (``shared``) or with a leading dimension (``each``) of 1 or
    ``batch`` (``batch_size`` in errors; ``need_batch_dim``: a 0-d value is refused), finite.
    Values that are None are dropped; numbers become tensors of the default dtype."""
    name = type(op).__name__
    unknown = sorted(set(params) - set(op.param_names))
    if unknown:
        raise DiffinvError(f"{name} got unknown parameter(s) {unknown}; "
                           f"it takes {list(op.param_names) or 'none'}")
    missing = [k for k in op.required_params if params.get(k) is None]
    if missing:
        raise DiffinvError(f"{name} needs parameter(s) {missing}{missing_hint}")
    out = {}
    for k, v in params.items():
        if v is None:
            continue
        if not isinstance(v, Tensor):
            v = torch.as_tensor(v, dtype=torch.get_default_dtype())
        nd = ndim_of(k)
        if nd is not None:
            if v.ndim == nd:
                v = v.unsqueeze(0)
            if v.ndim != nd + 1:
                raise ShapeError(f"parameter {k!r} must have {nd} ({shared}) or {nd + 1} "
                                 f"({each}) dimensions; got shape {tuple(v.shape)}")
        if (v.ndim == 0 and need_batch_dim) or (v.ndim >= 1 and v.shape[0] not in (1, batch)):
            raise ShapeError(f"parameter {k!r} has leading size "
                             f"{v.shape[0] if v.ndim else 'none'}; expected 1 or "
                             f"{batch_size} {batch}")
        if not torch.isfinite(v).all():
            raise DiffinvError(f"parameter {k!r} contains NaN/Inf")
        out[k] = v
    return out


def per_image(value: Tensor | float, batch: int, *, like: Tensor) -> Tensor:
    """Broadcast a scalar, ``(1,)`` or ``(B,)`` parameter to a ``(B,)`` tensor like ``like``."""
    v = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if v.ndim == 0:
        v = v.expand(1)
    v = v.reshape(v.shape[0], -1)
    if v.shape[1] != 1:
        raise ShapeError(f"expected one scalar per image, got shape {tuple(v.shape)}")
    return v[:, 0].expand(batch)


def check_positive(value: float, name: str, *, allow_zero: bool = False) -> float:
    """A finite, positive (or non-negative) float; otherwise a DiffinvError naming it."""
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise DiffinvError(f"{name} must be a number, got {value!r}") from e
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise DiffinvError(f"{name} must be finite and {bound}, got {value!r}")
    return v


def check_int(value: int, name: str, *, minimum: int = 1) -> int:
    """An integer ``>= minimum``; otherwise a DiffinvError naming it."""
    try:  # int() of a list, NaN or an infinity raises: refused like any other non-integer
        ok = not isinstance(value, bool) and int(value) == value and int(value) >= minimum
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise DiffinvError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
