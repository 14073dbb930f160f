r"""RED-diff: variational diffusion sampling as regularisation by denoising (Mardani, Song, Kautz,
Vahdat; ICLR 2024), as the official code (NVlabs RED-diff ``algos/reddiff.py``, read for this port)
runs it, and its blind extension.

The posterior is approximated by a point mass at ``mu`` (``sigma_x0 = 0``), fitted by Adam over the
reverse timesteps ``t_N > ... > t_1`` (one network call each, no back-propagation through the
network). At each ``t``, with ``eps ~ N(0, I)`` from each image's generator::

    x_t  = sqrt(abar_t) mu + sqrt(1 - abar_t) eps
    L_i  = w_t mean_i( sg[eps_theta(x_t, t) - eps] * mu )  +  v mean_i( (y - A(mu))^2 ) / 2
    w_t  = lam * sqrt(1 - abar_t) / sqrt(abar_t)                ("linear" weighting, paper eq. 11)
    mu  <- Adam step on sum_i L_i                               (lr 0.1, betas (0.9, 0.99))

``sg`` stops the gradient: the regulariser's gradient is ``w_t (eps_theta - eps) / n``, the score
mismatch of the noised mean (paper eq. 9: the SNR-weighted denoising score matching loss whose
gradient needs no Jacobian of the network). ``mean_i`` is the mean over image ``i``'s entries
(pixels; measurement entries for the data term). Other weightings of the official code:
``"sqrt"``, ``"square"``, ``"log"`` (``log(1 + 1/snr)``), ``"trunc_linear"`` (``min(1/snr, 1)``),
``"power2over3"``, ``"const"``.

``mu`` starts at ``A^+ y`` (official ``H_pinv``): through the SVD where the operator has one;
``y`` itself where the measurement has the image's shape (blur, nonlinear deblurring, the blind
families); ``A^T y`` for other linear operators. Timesteps: ``steps`` (default 1000, the paper's)
spaced by ``T // steps`` from 0 (official ``get_timesteps``), run from the noisiest. The output is
``mu`` clamped to [-1, 1].

Defaults (official ``_configs/algo/reddiff.yaml``): ``lam = 0.25`` (``grad_term_weight``),
``obs_weight = 1``, ``lr = 0.1``, linear weighting; the official sample scripts also use
``lr = 0.5`` with 100 steps. The ``tuned32`` preset holds the values chosen on validation images.

**Batch independence.** The official loss is a mean over the whole batch; here it is the sum over
images of each image's mean, so each image's gradient depends only on its own ``mu_i`` and Adam
(elementwise) gives the same result in a batch as alone (the official batch mean scales every
gradient by 1/B, which Adam undoes up to its epsilon).

**Blind RED-diff** (``blind=True``, the blind families): no official code exists (reference notes,
section 7.4). Our choice: the operator's unknown parameters are optimised jointly with ``mu`` by the
same Adam on the same loss, parametrised as blind DMPlug's (:mod:`diffinv.solvers._unknowns`: a
softmax kernel with random logits from each image's generator, ``kernel_lr = 0.1``; a range-
bounded angle / zoom factor, ``param_lr = 0.1``); no kernel prior or sparsity term. The estimates
are in ``trace["kernel"]`` (B, k, k) or ``trace["theta"]`` / ``trace["z"]`` (B,).
``recentre=True`` (kernel families with a circular boundary) adds, after every Adam step, the
classical re-centring of blind deconvolution (:func:`diffinv.solvers._unknowns.recentre_kernels`:
each kernel's centre of mass moved to its anchor by a whole-pixel roll, ``mu`` rolled the other way,
which leaves ``k * mu`` unchanged); without it the joint fit can drift kernel and image by whole
pixels (the translation ambiguity), which costs PSNR although the kernel's shape is right. Off by
default (the plain joint extension); the ``tuned32`` preset holds the choice made on validation
images. The shifts applied are counted in ``trace["recentre_shifts"]`` (B,).

Trace: ``"loss_obs"`` and ``"loss_reg"`` (steps, B) per-image terms, ``"timesteps"``; blind: the
estimates. A non-finite ``mu`` stops the run with
:class:`~diffinv.solvers._common.SolverDivergedError` holding the last finite ``mu``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from diffinv.errors import DiffinvError, UnknownNameError
from diffinv.seeding import randn
from diffinv.solvers._blind import BLIND_OPTION_NEEDS
from diffinv.solvers._common import check_finite, has_fast_svd, operator_svd, progress, unpack
from diffinv.solvers._unknowns import OperatorUnknowns, blind_unknowns, check_recentrable, recentre_kernels
from diffinv.solvers.base import Solver, register_solver

WEIGHTINGS = ("linear", "sqrt", "square", "log", "trunc_linear", "power2over3", "const")
#: singular values at or below this are treated as zero in the initial A^+ y (the truncation of the
#: DDRM / RED-diff blur SVD, ``ZERO = 3e-2``): an exact inverse of a blur amplifies the noise
PINV_EPS = 3e-2


def red_diff_timesteps(T: int, steps: int) -> list[int]:
    """Official ``get_timesteps``: ``range(0, T, T // steps)``, returned noisiest first."""
    if not 1 <= steps <= T:
        raise DiffinvError(f"steps must lie in 1..{T}, got {steps}")
    return list(range(0, T, T // steps))[::-1]


def denoiser_weight(abar: float, lam: float, weighting: str) -> float:
    """``w_t`` from ``1/snr = sqrt(1 - abar) / sqrt(abar)`` (official ``denoise_term_weight``)."""
    inv = math.sqrt(1.0 - abar) / math.sqrt(abar)
    f = {"linear": inv, "sqrt": math.sqrt(inv), "square": inv * inv, "log": math.log(inv + 1.0),
         "trunc_linear": min(inv, 1.0), "power2over3": inv ** (2.0 / 3.0), "const": 1.0}
    if weighting not in f:
        raise UnknownNameError("RED-diff weighting", weighting, WEIGHTINGS)
    return lam * f[weighting]


def red_diff_loss(mu: Tensor, eps_pred: Tensor, eps: Tensor, residual: Tensor, w: float,
                  obs_weight: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image ``(total, regulariser, data)`` terms of the RED-diff loss (see the docstring):
    the regulariser ``w mean((sg[eps_pred - eps]) mu)``, the data ``v mean(residual^2) / 2``."""
    reg = w * ((eps_pred - eps).detach() * mu).flatten(1).mean(1)
    obs = obs_weight * residual.pow(2).flatten(1).mean(1) / 2.0
    return reg + obs, reg, obs


def initial_mean(y: Tensor, problem: Any) -> Tensor:
    """``A^+ y`` (SVD), else ``y`` when it has the image's shape, else ``A^T y`` (linear)."""
    op = problem.operator
    if has_fast_svd(op):
        return operator_svd(problem, y).pinv(y, PINV_EPS)
    if tuple(y.shape[1:]) == tuple(problem.image_shape[1:]):
        return y.clone()
    if getattr(op, "linear", False) and callable(getattr(op, "adjoint", None)):
        return op.adjoint(y, **problem.params)
    raise DiffinvError(f"RED-diff starts from A^+ y: operator {type(op).__name__} has no SVD or "
                       "adjoint and its measurement is not image-shaped")


@register_solver("red-diff")
class REDDiff(Solver):
    """Adam on the variational mean with the SNR-weighted denoiser regulariser."""
    estimates_kernel = True  # trace["kernel"]; takes the discrepancy option (blind runs)

    summary = ("RED-diff: variational mean fitted by Adam, SNR-weighted denoiser regulariser, "
               "1000 steps (any operator; blind=true: blind blur families)")
    requires = ()
    needs = BLIND_OPTION_NEEDS

    def __init__(self, steps: int = 1000, lr: float = 0.1, lam: float = 0.25,
                 obs_weight: float = 1.0, weighting: str = "linear", blind: bool = False,
                 kernel_size: int | None = None, kernel_lr: float = 0.1, param_lr: float = 0.1,
                 recentre: bool = False):
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise DiffinvError(f"steps must be an integer >= 1, got {steps!r}")
        for name, v in (("lr", lr), ("kernel_lr", kernel_lr), ("param_lr", param_lr)):
            if not v > 0:
                raise DiffinvError(f"{name} must be > 0, got {v}")
        for name, v in (("lam", lam), ("obs_weight", obs_weight)):
            if not v >= 0:
                raise DiffinvError(f"{name} must be >= 0, got {v}")
        if weighting not in WEIGHTINGS:
            raise UnknownNameError("RED-diff weighting", weighting, WEIGHTINGS)
        self.steps, self.lr, self.lam = int(steps), float(lr), float(lam)
        self.obs_weight, self.weighting, self.blind = float(obs_weight), weighting, bool(blind)
        self.kernel_size, self.kernel_lr, self.param_lr = kernel_size, float(kernel_lr), float(param_lr)
        if kernel_size is not None and not self.blind:
            raise DiffinvError("kernel_size applies to blind RED-diff (blind=true) only")
        if not isinstance(recentre, bool):
            raise DiffinvError(f"recentre must be true or false, got {recentre!r}")
        if recentre and not self.blind:
            raise DiffinvError("recentre applies to blind RED-diff (blind=true) only")
        self.recentre = recentre
        self.progress = False

    def _problem(self, y: Tensor, physics: Any, prior: Any,
                 generators: Sequence[torch.Generator]) -> tuple[Tensor, OperatorUnknowns, str]:
        """(initial mu, the operator unknowns, a note on the forward model)."""
        if not self.blind:
            problem = unpack(self, y, physics, prior)
            mu = initial_mean(y, problem)
            op = problem.operator
            return mu, OperatorUnknowns(apply=lambda x, est, fixed: op(x, **fixed),
                                        fixed=problem.params), type(op).__name__
        from diffinv.solvers._blind import unpack_blind

        bp = unpack_blind(self, y, physics, prior)
        unknowns = blind_unknowns(bp.operator, generators, bp.image_shape, self.kernel_size,
                                  self.kernel_lr, self.param_lr, y.device, y.dtype,
                                  solver="blind RED-diff")
        return y.clone(), unknowns, f"{bp.family} (its own parametrisation)"

    def solve(self, y: Tensor, physics: Any, prior: Any,
              generators: Sequence[torch.Generator]) -> tuple[Tensor, dict[str, Any]]:
        mu0, unknowns, model = self._problem(y, physics, prior, generators)
        mu = mu0.detach().clone().requires_grad_(True)
        groups = [{"params": [mu], "lr": self.lr}]
        groups += [{"params": [leaf], "lr": unknowns.lrs[k]} for k, leaf in unknowns.leaves.items()]
        opt = torch.optim.Adam(groups, betas=(0.9, 0.99), weight_decay=0.0)
        abar = prior.schedule.alpha_bar
        ts = red_diff_timesteps(prior.num_timesteps, self.steps)
        shape = tuple(mu.shape[1:])
        reg_log, obs_log = [], []
        if self.recentre:  # before the first network call
            check_recentrable(unknowns)
            trace_shifts = torch.zeros(mu.shape[0], dtype=torch.long)
        trace: dict[str, Any] = {"timesteps": ts, "weighting": self.weighting,
                                 "forward_model": model}
        last = mu.detach().clone()
        for i, t in enumerate(progress(ts, self.progress, self.name, len(ts))):
            a = float(abar[t])
            eps = randn(shape, generators, device=mu.device, dtype=mu.dtype)
            x_t = a ** 0.5 * mu.detach() + (1.0 - a) ** 0.5 * eps
            with torch.no_grad():
                eps_pred = prior.eps(x_t, t)
            est = unknowns.estimates()
            residual = y - unknowns.forward(mu, est)
            total, reg, obs = red_diff_loss(mu, eps_pred, eps, residual,
                                            denoiser_weight(a, self.lam, self.weighting),
                                            self.obs_weight)
            opt.zero_grad(set_to_none=True)
            total.sum().backward()
            opt.step()
            if self.recentre:
                trace_shifts += recentre_kernels(unknowns, mu, opt).ne(0).any(1).long()
            reg_log.append(reg.detach())
            obs_log.append(obs.detach())
            check_finite(self.name, mu.detach(), last, i, t, trace)
            for leaf in unknowns.leaves.values():
                check_finite(self.name, leaf.detach(), last, i, t, trace)
            last = mu.detach().clone()
        trace["loss_reg"] = torch.stack(reg_log).cpu()
        trace["loss_obs"] = torch.stack(obs_log).cpu()
        if self.recentre:
            trace["recentre_shifts"] = trace_shifts
        trace.update({k: v.detach() for k, v in unknowns.estimates().items()})
        return mu.detach().clamp(-1.0, 1.0), trace
