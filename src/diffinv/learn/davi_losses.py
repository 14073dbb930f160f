r"""DAVI's training losses (Lee et al., ECCV 2024; official ``cm/gaussian_diffusion.py``).

Notation: ``x_hat = I_phi(x_a, a)`` a generator sample, ``t ~ U{0, .., t_ikl - 1}``,
``x_t = sqrt(abar_t) x_hat + sqrt(1 - abar_t) n`` with ``abar`` from the **KL schedule**, and
``D(x_t, t) = (x_t - sqrt(1 - abar_t) eps(x_t, t)) / sqrt(abar_t)`` a network's (unclamped) Tweedie
denoiser, for the frozen teacher ``eps_theta`` (the prior) and the implicit score ``eps_psi``.

* **Integral KL** (the generator's objective, Diff-Instruct style):
  ``L_IKL = mean( w(t) sg(D_psi - D_theta) x_hat )`` with the "SNR" weight
  ``w(t) = sqrt(abar_t) / sqrt(1 - abar_t)``; its gradient is ``w(t) (D_psi - D_theta) dx_hat/dphi``
  (divided by the number of elements, the ``mean``). Since ``D_psi - D_theta = (1 - abar)/sqrt(abar)
  (s_psi - s_theta)``, it is the score-difference gradient of ``KL(q_phi,t || p_theta,t)``
  integrated over ``t`` with weight ``sqrt(1 - abar_t)``.
* **Implicit score** (``s_psi``'s objective): denoising score matching on generator samples,
  ``L_psi = mean( (n - eps_psi(x_t, t))^2 )`` with the same ``t`` law (the official "MSE" term;
  the VLB term of a learned variance is absent because the prior predicts eps only).
* **Measurement consistency**: ``L_con = mean( (y - A x_hat)^2 )``; for inpainting the official
  code compares the zero-filled ``A^T y`` with ``A^T A x_hat`` over the whole frame.
* **Clean-image term** (official ``gt_consistency``, weight ``reg_coeff``):
  ``L_gt = mean( (x0 - x_hat)^2 )``; inpainting ``0.1 mean((x0 - x_hat)^2) + mean((A x0 - A x_hat)^2)``.

**The KL schedule** (choice, see methods.md 5.7): the teacher was trained on the linear schedule,
so ``kl_schedule="linear"`` (the default) forward-noises ``x_hat``, converts eps to ``D`` and weights
with the teacher's own ``abar``: the only choice under which ``D_theta`` is the teacher's denoiser of
``x_t``. ``kl_schedule="i2sb"`` reproduces the official code, which uses the i2sb ``abar`` there
(for example ``abar_399`` = 0.539 instead of 0.195), so the teacher sees ``x_t`` at a noise level it
was not trained for.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import UnknownNameError
from diffinv.learn.davi_ppb import INPAINT_OPERATORS, i2sb_betas

KL_SCHEDULES = ("linear", "i2sb")


def kl_schedule(name: str, teacher_schedule: VPSchedule) -> VPSchedule:
    """The schedule of the KL branch: the teacher's ("linear") or the official "i2sb" one."""
    if name == "linear":
        return teacher_schedule
    if name == "i2sb":
        return VPSchedule(i2sb_betas(teacher_schedule.num_steps), kind="i2sb")
    raise UnknownNameError("DAVI KL schedule", name, KL_SCHEDULES)


def snr_weight(schedule: VPSchedule, t: Tensor, like: Tensor) -> Tensor:
    """``w(t) = sqrt(abar_t) / sqrt(1 - abar_t)`` shaped (B, 1, 1, 1) (computed in float64)."""
    ab = schedule.alpha_bar
    return schedule.at(ab.sqrt() / (1 - ab).sqrt(), t, like.ndim, like.device, like.dtype)


def q_sample(schedule: VPSchedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``."""
    ab = schedule.at(schedule.alpha_bar, t, x0.ndim, x0.device, x0.dtype)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def eps_of(net: nn.Module, x_t: Tensor, t: Tensor) -> Tensor:
    """The network's eps output (its first C channels)."""
    return net(x_t, t.to(x_t.device))[:, : x_t.shape[1]]


def denoise(net: nn.Module, schedule: VPSchedule, x_t: Tensor, t: Tensor) -> Tensor:
    """Unclamped Tweedie ``(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (official: no clip)."""
    ab = schedule.at(schedule.alpha_bar, t, x_t.ndim, x_t.device, x_t.dtype)
    return (x_t - (1 - ab).sqrt() * eps_of(net, x_t, t)) / ab.sqrt()


def ikl_loss(x_hat: Tensor, d_student: Tensor, d_teacher: Tensor, weight: Tensor) -> Tensor:
    """``mean( w sg(D_psi - D_theta) x_hat )``: its gradient in ``x_hat`` is ``w (D_psi - D_theta)/N``."""
    return (weight * (d_student - d_teacher).detach() * x_hat).mean()


def dsm_loss(student: nn.Module, schedule: VPSchedule, x_hat: Tensor, t: Tensor,
             noise: Tensor) -> Tensor:
    """``mean( (n - eps_psi(x_t, t))^2 )`` on detached generator samples."""
    x_t = q_sample(schedule, x_hat.detach(), t, noise)
    return (eps_of(student, x_t, t).float() - noise).pow(2).mean()


def consistency_loss(op_name: str, operator: Any, x_hat: Tensor, y: Tensor,
                     params: dict[str, Tensor]) -> Tensor:
    """``mean( (y - A x_hat)^2 )`` (inpainting: ``A^T y`` against ``A^T A x_hat``)."""
    ax = operator(x_hat, **params)
    if op_name in INPAINT_OPERATORS:
        return (operator.adjoint(y, **params) - operator.adjoint(ax, **params)).pow(2).mean()
    return (y - ax).pow(2).mean()


def gt_loss(op_name: str, operator: Any, x_hat: Tensor, x0: Tensor,
            params: dict[str, Tensor]) -> Tensor:
    """The official clean-image regression term (see the module docstring)."""
    if op_name in INPAINT_OPERATORS:
        return (0.1 * (x0 - x_hat).pow(2).mean()
                + (operator(x0, **params) - operator(x_hat, **params)).pow(2).mean())
    return (x0 - x_hat).pow(2).mean()
