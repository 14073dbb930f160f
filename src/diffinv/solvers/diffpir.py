r"""DiffPIR: denoising diffusion models for plug-and-play image restoration (Zhu, Zhang, Liang, Cao,
Wen, Timofte, Van Gool; CVPRW 2023), as the official code (``main_ddpir_*.py``, read for this
port) runs it.

Half-quadratic splitting of ``min_x ||y - A(x)||^2 / (2 sigma_n^2) + P(x)`` along the reverse
diffusion: at each timestep ``t`` (rows ``t_N > ... > t_1``, ``t_prev`` the next one)::

    x0      = x0_hat(x_t)                                            (denoiser step, paper eq. 12)
    x0_hat' = argmin_x ||y - A x||^2 + rho_t ||x - x0||^2,   rho_t = lambda sigma_n^2 / sigma_t^2
                                                                      (data step, eq. 13)
    eps_hat = (x_t - sqrt(abar_t) x0_hat') / sqrt(1 - abar_t)
    x_{t_prev} = sqrt(abar_prev) x0_hat' + sqrt(1 - abar_prev) (sqrt(1 - zeta) eps_hat
                                                                 + sqrt(zeta) z)    (eq. 14-15)

with ``sigma_t = sqrt(1 - abar_t) / sqrt(abar_t)`` (the noise level of ``x_t`` seen as a noisy
image) and ``z ~ N(0, I)`` from each image's generator. ``zeta`` blends the deterministic DDIM
direction (0) with fresh noise (1).

* **Data step.** Linear operators with an SVD: the exact minimiser through the SVD,
  ``V^T x0_hat' = (s U^T y + rho (V^T x0)[:m]) / (s^2 + rho)`` on the observed coefficients and
  ``(V^T x0)`` on the null space (the official code's FFT solution for circular blur and SR, and
  its mask formula for inpainting, are this formula for those operators). Other operators
  (nonlinear ones): ``grad_steps`` gradient steps ``x <- x - grad_x (1/2)||y - A(x)||^2 / (4 rho)``
  from ``x0`` (official: one step, ``x0 - grad ||y - A(x0)|| * ||y - A(x0)|| / rho`` on [0, 1]
  images, which is this step in our [-1, 1] units).
* **Units.** The official code measures ``sigma_n`` on [0, 1] images, floored at 0.001: here
  ``sigma_n = max(sigma_y / 2, 0.001)`` from the Gaussian noise model's ``sigma_y`` ([-1, 1]
  units). The analytic data step is unit-free (both terms scale alike).
* **Timesteps.** ``spacing="quad"`` (official ``skip_type``): ``t = T - 1 - floor(sqrt(linspace(0,
  T^2, steps)))``, dense near the clean end. The output is the last row's ``x0_hat'``.
* **Defaults** (official configs): ``steps = 100``, ``lam = 1``, ``zeta = 0.1`` (deblurring;
  super-resolution uses ``zeta = 0.25``; inpainting ``steps = 20``, ``zeta = 1``); the ``tuned32``
  preset holds the values chosen on fashion32 validation images.

Deviations: the official run starts from ``x_T = sqrt(abar_T / abar_{t_y}) y + noise`` (at
``abar_T ~ 4e-5`` a 0.6% trace of ``y``); here ``x_T ~ N(0, I)`` as every sampler of the
interleaving loop. The official last step computes ``x0`` at ``t = 0`` and returns the previous
step's iterate; here the last row's ``x0_hat'`` is returned (same NFE, ``steps``). The official
switch to plain sampling once ``sigma_t`` falls below the measurement noise (``i < T -
noise_model_t``) never triggers at 100 steps and is not implemented.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffinv.errors import DiffinvError
from diffinv.seeding import randn
from diffinv.solvers._common import gaussian_sigma, has_fast_svd, operator_svd
from diffinv.solvers.base import register_solver
from diffinv.solvers.interleave import Context, Interleaved, Step

#: floor of the official code's sigma_n ([0, 1] units)
SIGMA_FLOOR = 0.001


def svd_data_step(x0: Tensor, y: Tensor, svd, rho: float) -> Tensor:
    """``argmin_x ||y - A x||^2 + rho ||x - x0||^2`` through the SVD ``A = U diag(s) V^T``."""
    s = svd.singulars().to(x0)
    c = svd.vt(x0)
    m = svd.m
    observed = (s * svd.ut(y) + rho * c[:, :m]) / (s * s + rho)
    return svd.v(torch.cat([observed, c[:, m:]], dim=1))


def gradient_data_step(x0: Tensor, y: Tensor, forward, rho: float, steps: int) -> Tensor:
    """``steps`` gradient steps ``x <- x - grad (1/2)||y - A(x)||^2 / (4 rho)`` from ``x0`` (per
    image: each image's residual only moves its own ``x``)."""
    x = x0.detach()
    for _ in range(steps):
        x = x.requires_grad_(True)
        with torch.enable_grad():
            loss = 0.5 * (y - forward(x)).pow(2).sum()
            (g,) = torch.autograd.grad(loss, x)
        x = (x - g / (4.0 * rho)).detach()
    return x


@register_solver("diffpir")
class DiffPIR(Interleaved):
    """HQS plug-and-play along the reverse diffusion (see the module docstring)."""

    summary = ("DiffPIR: denoiser step + closed-form (SVD) or gradient data step per timestep, "
               "100 steps (any operator; Gaussian noise)")
    requires = ()
    default_steps = 100
    default_sampler = "ddim"

    def __init__(self, lam: float = 1.0, zeta: float = 0.1, steps: int = 100,
                 spacing: str = "quad", grad_steps: int = 1):
        super().__init__(steps, "ddim", 0.0, spacing)
        if not lam > 0:
            raise DiffinvError(f"lam must be > 0, got {lam}")
        if not 0.0 <= zeta <= 1.0:
            raise DiffinvError(f"zeta must lie in [0, 1], got {zeta}")
        if isinstance(grad_steps, bool) or int(grad_steps) != grad_steps or grad_steps < 1:
            raise DiffinvError(f"grad_steps must be an integer >= 1, got {grad_steps!r}")
        self.lam, self.zeta, self.grad_steps = float(lam), float(zeta), int(grad_steps)

    def prepare(self, ctx: Context) -> None:
        has_svd = has_fast_svd(ctx.problem.operator)
        ctx.data["svd"] = operator_svd(ctx.problem, ctx.y) if has_svd else None
        ctx.data["sigma_n"] = max(gaussian_sigma(self, ctx.problem.noise) / 2.0, SIGMA_FLOOR)
        ctx.data["log_data_step"] = "svd" if has_svd else f"gradient x{self.grad_steps}"

    def rho(self, ctx: Context, abar: float) -> float:
        """``rho_t = lam sigma_n^2 / sigma_t^2``, ``sigma_t^2 = (1 - abar_t) / abar_t``."""
        return self.lam * ctx.data["sigma_n"] ** 2 * abar / (1.0 - abar)

    def data_step(self, ctx: Context, x0: Tensor, abar: float) -> Tensor:
        rho = self.rho(ctx, abar)
        if ctx.data["svd"] is not None:
            return svd_data_step(x0, ctx.y, ctx.data["svd"], rho)
        p = ctx.problem
        return gradient_data_step(x0, ctx.y, lambda x: p.operator(x, **p.params), rho,
                                  self.grad_steps)

    def guide(self, ctx: Context, step: Step) -> Tensor:
        x0 = self.data_step(ctx, step.x0.detach(), step.abar)
        if step.t_prev < 0:
            return x0
        a, ap = step.abar, step.abar_prev
        eps_hat = (step.x_t.detach() - a ** 0.5 * x0) / (1.0 - a) ** 0.5
        x_prev = ap ** 0.5 * x0 + ((1.0 - self.zeta) * (1.0 - ap)) ** 0.5 * eps_hat
        if self.zeta > 0:
            z = randn(tuple(x0.shape[1:]), step.generators, device=x0.device, dtype=x0.dtype)
            x_prev = x_prev + (self.zeta * (1.0 - ap)) ** 0.5 * z
        return x_prev
