r"""DAVI's Perturbed Posterior Bridge (PPB) and its one-step generator (Lee et al., ECCV 2024).

**Bridge schedule** (an I2SB bridge, Liu et al. 2023, built from the "i2sb" betas
``beta_t = (linspace(sqrt(1e-4), sqrt(0.02), T))_t^2``). The bridge uses the symmetric copy
``beta' = [beta_0 .. beta_{T/2-1}, beta_{T/2-1} .. beta_0]`` and

* ``sigma_f(a)^2 = sum_{s <= a} beta'_s`` (forward std), ``sigma_b(a)^2 = sum_{s >= a} beta'_s``;
* ``mu_x0(a) = sigma_b^2 / (sigma_f^2 + sigma_b^2)``, ``mu_x1(a) = sigma_f^2 / (sigma_f^2 + sigma_b^2)``
  (the Gaussian-product coefficients: ``mu_x0 + mu_x1 = 1``).

**PPB sample** between the clean image ``x0`` and the measurement ``y'`` brought to image shape:
``x_a = mu_x0(a) x0 + mu_x1(a) y' + (1 - abar_a) h eps`` with ``abar`` the cumulative product of
the (non-symmetric) i2sb betas and ``h`` = ``perturb_h``. The perturbation's **std** is
``(1 - abar_a) h`` (not its square root), as in the official ``q_sample_i2sb``.

**Generator** (``I_phi``): ``x_hat = tanh(x_a - sigma_f(a) net(x_a, a))``, where ``net`` has the
prior's UNet architecture and is initialised from its weights. Inference uses ``a = T - 1``:
``mu_x0 ~ 4.6e-5``, ``mu_x1 ~ 1``, ``sigma_f ~ 1.481``, ``1 - abar ~ 0.9999`` [methods.md 5.3], and
the official evaluation bridges ``y'`` with itself, so ``x_in = y' + (1 - abar_{T-1}) h eps``.

``y'`` (:func:`lift_measurement`) for the tasks DAVI trains on: blur (and the identity) -> ``y``;
SR -> ``y`` resized to the image (``"bilinear"``: the official torchvision bilinear resize; or
``"pinv"``: the pseudo-inverse ``A^+ y = s^2 A^T y`` of ``s x s`` average pooling, i.e.
nearest-neighbour replication, since ``A A^T = s^{-2} I``); inpainting -> the zero-filled
``A^T y = m * y``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffinv.errors import DiffinvError, UnknownNameError

#: how ``y`` becomes an image-shaped ``y'`` for super-resolution
LIFTS = ("bilinear", "pinv")
#: operators whose ``y'`` is ``y`` itself (the output has the image's shape and content)
SAME_SHAPE = ("gaussian-blur", "blur", "motion-blur", "identity")
SR_OPERATORS = ("sr-avgpool", "sr-bicubic")
INPAINT_OPERATORS = ("inpaint-box", "inpaint-random")


def i2sb_betas(T: int = 1000) -> Tensor:
    """The "i2sb" betas: squares of a linear ramp from sqrt(1e-4) to sqrt(0.02) (scaled by 1000/T)."""
    scale = 1000.0 / T
    return torch.linspace((scale * 1e-4) ** 0.5, (scale * 0.02) ** 0.5, T,
                          dtype=torch.float64) ** 2


class PPBSchedule:
    """The bridge tables of the module docstring, float64, indexed by ``a`` in ``0..T-1``."""

    def __init__(self, T: int = 1000):
        if T < 2 or T % 2:
            raise DiffinvError(f"the PPB schedule needs an even T >= 2, got {T}")
        self.T = int(T)
        betas = i2sb_betas(T)
        half = betas[: T // 2]
        self.betas = betas
        self.bridge_betas = torch.cat([half, half.flip(0)])
        var_f = torch.cumsum(self.bridge_betas, 0)
        var_b = torch.cumsum(self.bridge_betas.flip(0), 0).flip(0)
        self.sigma_f = var_f.sqrt()
        self.sigma_b = var_b.sqrt()
        self.mu_x0 = var_b / (var_f + var_b)
        self.mu_x1 = var_f / (var_f + var_b)
        self.alpha_bar = torch.cumprod(1.0 - betas, 0)

    def at(self, table: Tensor, a: Tensor, like: Tensor) -> Tensor:
        """``table[a]`` shaped (B, 1, 1, 1) like ``like``."""
        a = torch.as_tensor(a, dtype=torch.long).reshape(-1).cpu()
        return table[a].reshape(-1, *([1] * (like.ndim - 1))).to(like.device, like.dtype)

    def perturb_std(self, a: Tensor, h: float, like: Tensor) -> Tensor:
        """``(1 - abar_a) h``: the std of the PPB perturbation."""
        return self.at(1.0 - self.alpha_bar, a, like) * float(h)

    def sample(self, x0: Tensor, y_img: Tensor, a: Tensor, h: float, eps: Tensor) -> Tensor:
        """``x_a = mu_x0(a) x0 + mu_x1(a) y' + (1 - abar_a) h eps``."""
        return (self.at(self.mu_x0, a, x0) * x0 + self.at(self.mu_x1, a, x0) * y_img
                + self.perturb_std(a, h, x0) * eps)

    def draw_a(self, batch: int, generator: torch.Generator) -> Tensor:
        """Training bridge times: ``floor(T Beta(3, 1) - 0.5)`` (truncated towards 0, skewed to
        ``T - 1``). ``Beta(3, 1)`` is drawn as ``U^(1/3)`` (its inverse CDF)."""
        u = torch.rand(batch, generator=generator, dtype=torch.float64)
        return (self.T * u.pow(1.0 / 3.0) - 0.5).to(torch.long).clamp(0, self.T - 1)


class OneStepGenerator(nn.Module):
    """``I_phi(x_a, a) = tanh(x_a - sigma_f(a) net(x_a, a)[:, :C])``."""

    def __init__(self, net: nn.Module, schedule: PPBSchedule | None = None):
        super().__init__()
        self.net = net
        self.schedule = schedule or PPBSchedule()

    def forward(self, x_a: Tensor, a: Tensor) -> Tensor:
        a = torch.as_tensor(a, dtype=torch.long, device=x_a.device).reshape(-1)
        if a.numel() == 1:
            a = a.expand(x_a.shape[0])
        out = self.net(x_a, a)[:, : x_a.shape[1]]
        return torch.tanh(x_a - self.schedule.at(self.schedule.sigma_f, a, x_a) * out)


def lift_measurement(op_name: str, operator: Any, y: Tensor, params: dict[str, Tensor],
                     image_shape: tuple[int, ...], lift: str = "bilinear") -> Tensor:
    """``y'``: the measurement brought to the image's shape (see the module docstring)."""
    if lift not in LIFTS:
        raise UnknownNameError("DAVI measurement lift", lift, LIFTS)
    if op_name in SAME_SHAPE:
        return y
    if op_name in INPAINT_OPERATORS:
        return operator.adjoint(y, **params)
    if op_name in SR_OPERATORS:
        H, W = (int(v) for v in image_shape[-2:])
        if lift == "bilinear":
            return F.interpolate(y, size=(H, W), mode="bilinear", align_corners=False,
                                 antialias=True)
        if op_name != "sr-avgpool":
            raise DiffinvError("lift 'pinv' is the pseudo-inverse of average pooling; use "
                               f"'bilinear' for {op_name!r}")
        s = H // y.shape[-2]
        return s * s * operator.adjoint(y, **params)
    raise DiffinvError(f"DAVI has no image-shaped y' for operator {op_name!r}; it handles "
                       f"{', '.join(SAME_SHAPE + SR_OPERATORS + INPAINT_OPERATORS)}")
