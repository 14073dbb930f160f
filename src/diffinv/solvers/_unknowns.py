"""Unknown operator parameters optimised jointly with the image by the blind optimisation methods
(blind DMPlug, blind RED-diff), one set per image:

* blind Gaussian and motion blur: a free kernel ``k_i = softmax(w_i)`` reshaped to
  ``size x size`` (the operator's kernel size unless ``kernel_size`` is given), logits
  ``w_i ~ N(0, I)`` from image ``i``'s generator (official DMPlug ``bid.py``), applied with the
  operator's boundary rule; its learning rate ``kernel_lr``;
* blind rotation / zoom blur: ``theta_i = lo + (hi - lo) sigmoid(u_i)`` (``z_i`` likewise), with
  ``(lo, hi)`` the family's public range, ``u_i = 0`` at the start (the middle of the range); its
  learning rate ``param_lr``.

Non-blind problems use :class:`OperatorUnknowns` with no leaves and the known parameters in
``fixed``. Each image's leaves enter only its own loss, so an elementwise optimiser (Adam) gives
the same per-image result in a batch as alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from diffinv.errors import DiffinvError, ShapeError
from diffinv.seeding import randn


@dataclass
class OperatorUnknowns:
    """Per-image leaf tensors optimised with the image unknown (DMPlug's seed ``z``, RED-diff's
    mean ``mu``) and how they give the operator's parameters."""

    leaves: dict[str, Tensor] = field(default_factory=dict)
    lrs: dict[str, float] = field(default_factory=dict)
    transform: Callable[[dict[str, Tensor]], dict[str, Tensor]] = lambda leaves: {}
    apply: Callable[..., Tensor] | None = None
    #: known per-image operator parameters (non-blind: masks, kernels, ...)
    fixed: dict[str, Tensor] = field(default_factory=dict)
    #: the boundary rule of a blind kernel family's convolution (``None``: no kernel unknown)
    boundary: str | None = None

    def estimates(self) -> dict[str, Tensor]:
        return self.transform(self.leaves)

    def forward(self, x: Tensor, est: dict[str, Tensor]) -> Tensor:
        assert self.apply is not None
        return self.apply(x, est, self.fixed)

    def _fixed_of(self, index: Tensor | slice, op: Any) -> dict[str, Tensor]:
        fixed = {}
        for k, v in self.fixed.items():
            nd = op.param_ndim.get(k)
            per_image = v.ndim >= 1 and (v.ndim == nd + 1 if nd is not None else True)
            fixed[k] = v[index] if per_image and v.shape[0] > 1 else v
        return fixed

    def select(self, i: int, op: Any) -> OperatorUnknowns:
        """Image ``i``'s share (fresh leaves, its own fixed parameters): image-by-image solving."""
        return OperatorUnknowns({k: v[i:i + 1].detach().clone().requires_grad_() for k, v in
                          self.leaves.items()}, self.lrs, self.transform, self.apply,
                         self._fixed_of(slice(i, i + 1), op), self.boundary)

    def subset(self, index: Tensor, op: Any) -> OperatorUnknowns:
        """The share of images ``index`` (1-D long tensor) with the leaves *indexed*, not copied:
        gradients of the subset's loss reach the full leaves (zero for the other images)."""
        return OperatorUnknowns({k: v[index] for k, v in self.leaves.items()}, self.lrs, self.transform,
                         self.apply, self._fixed_of(index, op), self.boundary)


def _range_param(name: str, lo: float, hi: float) -> Callable[[dict[str, Tensor]], dict]:
    def transform(leaves: dict[str, Tensor]) -> dict[str, Tensor]:
        return {name: lo + (hi - lo) * torch.sigmoid(leaves[f"{name}_logit"])}

    return transform


def blind_unknowns(op: Any, generators: Sequence[torch.Generator], image_shape: Sequence[int],
                   kernel_size: int | None, kernel_lr: float, param_lr: float,
                   device: torch.device, dtype: torch.dtype, *, solver: str = "blind DMPlug"
                   ) -> OperatorUnknowns:
    """The unknown operator parameters of a blind family, per image (see the module docstring)."""
    from diffinv.physics.blur import GaussianBlur, MotionBlur, blur
    from diffinv.physics.kernel_families import FamilyBlur
    from diffinv.physics.warps import RotationBlur, ZoomBlur

    B = len(generators)
    H, W = (int(s) for s in image_shape[-2:])
    if isinstance(op, GaussianBlur | MotionBlur | FamilyBlur):
        k = op.size if kernel_size is None else kernel_size
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise DiffinvError(f"kernel_size must be an integer >= 1, got {kernel_size!r}")
        k = int(k)
        if k > min(H, W):
            raise ShapeError(f"a {k}x{k} kernel does not fit {H}x{W} images")
        logits = randn((k * k,), generators, device=device, dtype=dtype).requires_grad_()
        boundary = op.boundary

        def kernel(leaves: dict[str, Tensor]) -> dict[str, Tensor]:
            return {"kernel": F.softmax(leaves["kernel_logits"], dim=1).reshape(-1, k, k)}

        return OperatorUnknowns({"kernel_logits": logits}, {"kernel_logits": kernel_lr}, kernel,
                                lambda x, est, fixed: blur(x, est["kernel"], boundary),
                                boundary=boundary)
    if kernel_size is not None:
        raise DiffinvError(f"kernel_size applies to blind kernel families, not to "
                           f"{type(op).__name__}")
    if isinstance(op, RotationBlur | ZoomBlur):
        name, (lo, hi) = (("theta", op.theta_range) if isinstance(op, RotationBlur)
                          else ("z", op.z_range))
        u = torch.zeros(B, dtype=dtype, device=device, requires_grad=True)
        return OperatorUnknowns({f"{name}_logit": u}, {f"{name}_logit": param_lr},
                         _range_param(name, float(lo), float(hi)),
                         lambda x, est, fixed: op(x, **est))
    raise DiffinvError(f"{solver} estimates blind Gaussian/motion blur kernels and blind "
                       f"rotation/zoom parameters; it cannot estimate those of "
                       f"{type(op).__name__}")


def _adam_moments(optimizer: torch.optim.Optimizer, leaf: Tensor) -> list[Tensor]:
    """The optimiser's per-element state tensors of ``leaf`` (Adam: both moment estimates)."""
    state = optimizer.state.get(leaf, {})
    return [v for v in state.values() if torch.is_tensor(v) and v.shape == leaf.shape]


def check_recentrable(unknowns: OperatorUnknowns) -> None:
    """Raise unless :func:`recentre_kernels` applies: a kernel unknown with a circular boundary."""
    if "kernel_logits" not in unknowns.leaves:
        raise DiffinvError("kernel re-centring needs a blind Gaussian or motion blur family (no "
                           "kernel is estimated here); set recentre=false")
    if unknowns.boundary != "circular":
        raise DiffinvError(f"kernel re-centring is exact for a circular boundary only; this "
                           f"family's boundary is {unknowns.boundary!r} (set recentre=false)")


def recentre_kernels(unknowns: OperatorUnknowns, image: Tensor,
                     optimizer: torch.optim.Optimizer) -> Tensor:
    r"""Remove the translation ambiguity of blind deconvolution during a joint optimisation.

    ``k * x`` is unchanged when the kernel moves by ``s`` and the image by ``-s``, so a joint fit
    can drift both: the kernel towards an edge of its support (where the softmax cannot hold it
    whole) and the image off the truth by whole pixels. Per image, the kernel's centre of mass is
    moved to its anchor by the whole-pixel shift ``s`` of
    :func:`~diffinv.solvers._blind.centre_shifts` (a circular roll of its ``k x k`` logits, which
    the softmax turns into a roll of the kernel) and ``image`` (the optimised image leaf itself,
    e.g. RED-diff's ``mu``, changed in place) is rolled by ``-s``; the optimiser's moment estimates
    move with their parameters. With a circular boundary ``roll(k, s) * roll(x, -s) = k * x``,
    exactly but for the kernel mass the roll wraps around the ``k x k`` support (the far side's
    tail, small when the kernel has drifted towards the other side); the classical methods
    re-centre their kernels the same way (Pan-L0's ``adjust_psf_center``, FastEM). Returns the
    shifts applied, ``(B, 2)`` long.
    """
    from diffinv.solvers._blind import centre_shifts

    check_recentrable(unknowns)
    logits = unknowns.leaves["kernel_logits"]
    B, kk = logits.shape
    k = math.isqrt(kk)
    with torch.no_grad():
        shifts = centre_shifts(unknowns.estimates()["kernel"])
        for b, (dy, dx) in enumerate(shifts):
            if dy == 0 and dx == 0:
                continue
            for t in (logits, *_adam_moments(optimizer, logits)):
                t[b] = torch.roll(t[b].reshape(k, k), (dy, dx), (0, 1)).reshape(kk)
            for t in (image, *_adam_moments(optimizer, image)):
                t[b] = torch.roll(t[b], (-dy, -dx), (-2, -1))
    return torch.tensor(shifts, dtype=torch.long).reshape(B, 2)
