r"""A discrepancy-principle safeguard for blind kernel estimates (our extension, issue 42).

A blind deblurring method returns an image and a kernel, :math:`(\hat x, \hat k)`. With Gaussian
noise of known level :math:`\sigma`, a pair that explains :math:`y = k * x + \sigma\varepsilon`
leaves a residual of about the noise (Morozov's discrepancy principle: Morozov 1966; see e.g.
Engl, Hanke & Neubauer, *Regularization of Inverse Problems*, 1996, sec. 4.3):

.. math::

    r = \frac{\lVert y - \hat k * \hat x \rVert_2}{\sigma \sqrt{m}} \approx 1,

:math:`m` the number of measured values. ``discrepancy = tau`` (a solver option of every blind
solver that estimates a kernel, e.g. ``make_solver("fastem", discrepancy=1.75)``) checks each image
of the batch after the solve: where :math:`r > \tau` the estimate does not explain its own
measurement at the known noise level, and the image is returned as the measurement itself
(:math:`\hat x = y`, :math:`\hat k = \delta`): the answer "no blur", which needs no estimate. On
the near-delta kernels of issue 42 (diffraction, small Gaussians) the failures of FastEM and
Pan-L0 are kernel estimates wider than the truth, whose deconvolution the prior cannot follow
(ringing, clipped at [-1, 1]): on validation images they leave :math:`r` of about 2 to 4 while the
estimates that improve on y leave 1.05 to 1.6 (``benchmarks/blind_discrepancy_valid.md``).

This is not in any of the papers: an option, off by default, named in each table row that uses
it. The kernel model is the one the solver fitted (the circular or padded convolution of the
blind family; on rotation and zoom blur the convolution model of the kernel baselines). The
trace keeps the rejected estimates: ``trace["discrepancy"]`` (B,) the ratios :math:`r`,
``trace["fallback"]`` (B,) which images were replaced, ``trace["kernel_before_fallback"]``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from diffinv.errors import DiffinvError


def check_tau(tau: Any, solver: str) -> float:
    """``tau`` as a float > 1 (a residual below the noise cannot be asked for)."""
    if isinstance(tau, bool) or not isinstance(tau, int | float) or not math.isfinite(tau) \
            or tau <= 1:
        raise DiffinvError(f"solver {solver!r}: discrepancy must be a number > 1 (the residual "
                           f"in units of the noise level sigma that rejects an estimate); got "
                           f"{tau!r}")
    return float(tau)


def discrepancy_ratios(y: Tensor, x: Tensor, kernel: Tensor, blur: Any, sigma: float) -> Tensor:
    """:math:`\\lVert y - k * x \\rVert / (\\sigma \\sqrt{m})` per image (B,)."""
    fit = blur.apply(x, kernel=kernel) - y
    return fit.flatten(1).pow(2).mean(1).sqrt() / sigma


def apply_fallback(solver: Any, y: Tensor, physics: Any, x: Tensor, trace: dict[str, Any],
                   tau: float) -> tuple[Tensor, dict[str, Any]]:
    """Replace the images whose estimate leaves a residual above ``tau`` sigma by ``y`` (and
    their kernel by a delta); record the ratios and the replaced images in the trace."""
    from diffinv.physics.noise import GaussianNoise
    from diffinv.solvers._blind import blind_problem, delta_kernel

    name = getattr(solver, "name", type(solver).__name__)
    if not getattr(physics, "blind", False):
        raise DiffinvError(f"solver {name!r}: discrepancy checks a blind kernel estimate; this "
                           "measurement is not blind")
    kernel = trace.get("kernel")
    if not isinstance(kernel, Tensor) or kernel.ndim != 3:
        raise DiffinvError(f"solver {name!r} returned no kernel estimate (B, k, k) to check")
    bp = blind_problem(solver, y, physics)
    noise = bp.noise
    if not isinstance(noise, GaussianNoise) or noise.sigma <= 0:
        raise DiffinvError(f"solver {name!r}: discrepancy needs Gaussian noise of a known level "
                           f"sigma > 0; the measurement's noise is {physics.noise!r}")
    if tuple(x.shape) != tuple(y.shape):
        raise DiffinvError(f"solver {name!r}: discrepancy falls back to y, which needs y of the "
                           f"image's shape; got y {tuple(y.shape)}, x {tuple(x.shape)}")
    k = kernel.to(device=x.device, dtype=x.dtype)
    with torch.no_grad():
        ratio = discrepancy_ratios(y, x, k, bp.blur, float(noise.sigma))
    reject = ratio > tau
    out = dict(trace)
    out["discrepancy"] = ratio.detach().cpu()
    out["fallback"] = reject.detach().cpu()
    out["kernel_before_fallback"] = kernel
    if bool(reject.any()):
        delta = delta_kernel(k.shape[0], k.shape[-1], device=k.device, dtype=k.dtype)
        x = torch.where(reject[:, None, None, None], y.to(x.dtype), x)
        out["kernel"] = torch.where(reject[:, None, None], delta, k).to(kernel.dtype)
    return x, out
