r"""CL-DPS (Ye et al., ICLR 2026): diffusion posterior sampling guided by a contrastive likelihood
surrogate, for blind problems, with no operator estimation.

An instance of the interleaving template (:mod:`diffinv.solvers.interleave`). After each
unconditional step from ``x_t`` (DDPM ancestral, DDIM, or DPM-Solver++(2M): the guidance is
sampler-agnostic, as the paper claims)::

    x_{t_prev} = x' - s * grad_{x_t} E(u),   u = x0_hat(x_t)  (input="x0")  or  u = x_t  (input="xt")

with ``E`` the encoder energy of :class:`diffinv.guidance.contrastive.ContrastiveEnergy`,
``E(u) = -<f_q(y), f_k(u)>/tau`` (patch-averaged; plus the optional intensity-head term). With
``input="x0"`` the gradient goes through the Tweedie estimate and the network, as DPS and the
snapshot's (commented) guidance; with ``input="xt"`` it goes through the key encoder only, which was
trained on exactly such diffused images (its positives are ``sqrt(a) x + sqrt(1 - a) e``), and
costs no backward pass through the diffusion network. The measurement operator is never built or
read: any image-shaped measurement works, blind or not.

Encoder: the one shipped for the prior (``diffinv/likelihoods/PRIOR.safetensors``, trained with
``diffinv train-likelihood``) or a file given as ``encoder=``; one trained for another prior, or
for images of other channels, is refused.

Defaults (chosen on fashion32 validation images, ``benchmarks/tune_cldps.md``): DDIM with 100
steps, ``s = 0.1``, intensity weight 30 (see :data:`DEFAULTS`). On validation the encoder input
``x_t`` was no better than ``x0_hat`` (10.3-11.8 dB against 10.0-12.3 without the intensity term)
and the intensity term added 1.5-2 dB. Deviations from the paper, whose final code was not available
(methods.md 6): our own compact ResNet encoder and MoCo set-up (:mod:`diffinv.learn.moco`), the
energy uses the 128-d projection by default (``energy="spatial"``: the flattened last feature maps,
as the snapshot's guidance used layer-4 features), and the step scale ``s`` is ours. An encoder
trained on crops (``diffinv train-likelihood --crop 16``) is applied to the overlapping windows of
the image at ``stride`` and its critic averaged over them (the paper's patch-wise inference);
``stride`` must tile the image (16-px windows on 32 px: 1, 2, 4, 8 or 16).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffinv.errors import DiffinvError, NonFiniteError, ShapeError, UnknownNameError
from diffinv.guidance.contrastive import ContrastiveEnergy, load_likelihood
from diffinv.solvers._common import Problem
from diffinv.solvers.base import register_solver
from diffinv.solvers.interleave import Context, Interleaved, Step

INPUTS = ("x0", "xt")

#: Defaults per sampler: steps and step scale ``s`` (a per-step scale: fewer steps need a larger
#: one). Chosen on fashion32 validation images (see the module docstring).
DEFAULTS: dict[str, dict[str, float]] = {
    "ddpm": {"steps": 1000, "scale": 0.01},
    "ddim": {"steps": 100, "scale": 0.1},
    "dpmpp2m": {"steps": 30, "scale": 0.3},
}
#: DDIM 100 steps, s = 0.1, intensity weight 30: the cheapest setting within the interval of the
#: best on validation (benchmarks/tune_cldps.md, 8 images per blind family: 13.8-14.3 dB; DDPM
#: 1000 steps 15.2-15.8 dB at 10x the time; DPM-Solver++(2M) 30 steps 12.5-13.4 dB; unguided 8.5).
DEFAULT_SAMPLER = "ddim"
DEFAULT_INTENSITY_WEIGHT = 30.0


@register_solver("cl-dps")
class CLDPS(Interleaved):
    """CL-DPS: DPS-style steps on a contrastive likelihood surrogate (no operator needed)."""

    summary = ("CL-DPS: guidance by a contrastive (MoCo) likelihood encoder; blind or not, never "
               "reads the operator (DPM-Solver++(2M), DDIM or DDPM)")
    requires = ()
    needs = ("y of the prior's image shape, blind or not: never reads the operator",)

    def __init__(self, scale: float | None = None, steps: int | None = None,
                 sampler: str | None = None, eta: float = 0.0, spacing: str | None = None,
                 encoder: str | Path | None = None, input: str = "x0",  # noqa: A002
                 tau: float | None = None, stride: int = 8,
                 intensity_weight: float = DEFAULT_INTENSITY_WEIGHT,
                 energy: str = "projection", progress: bool = False):
        sampler = sampler or DEFAULT_SAMPLER
        if sampler not in DEFAULTS:
            raise UnknownNameError("sampler", sampler, list(DEFAULTS))
        if spacing is None:  # DPM-Solver++ on log-SNR-uniform steps (see interleave.py)
            spacing = "logsnr" if sampler == "dpmpp2m" else "uniform"
        super().__init__(int(steps if steps is not None else DEFAULTS[sampler]["steps"]), sampler,
                         eta, spacing)
        if input not in INPUTS:
            raise UnknownNameError("CL-DPS encoder input", input, INPUTS)
        self.scale = float(scale if scale is not None else DEFAULTS[sampler]["scale"])
        if self.scale < 0:
            raise DiffinvError(f"scale must be >= 0, got {scale}")
        self.input = input
        self.needs_grad = input == "x0"
        from diffinv.guidance.contrastive import ENERGY_KINDS

        if energy not in ENERGY_KINDS:
            raise UnknownNameError("CL-DPS energy", energy, ENERGY_KINDS)
        self.encoder, self.tau, self.stride, self.energy = encoder, tau, stride, energy
        self.intensity_weight = float(intensity_weight)
        self.progress = progress

    def unpack(self, y: Tensor, physics: Any, prior: Any) -> Problem:
        """Only ``y`` is read: it must be an image of the prior's shape (the encoder compares
        ``y`` with images); the operator, its parameters and the noise model are not used."""
        if not isinstance(y, Tensor) or y.ndim != 4:
            raise ShapeError("y must be a batch of images (B, C, H, W)")
        if not torch.isfinite(y).all():
            raise NonFiniteError("the measurement y contains NaN/Inf")
        want = tuple(getattr(prior, "image_shape", y.shape[1:]))
        if tuple(y.shape[1:]) != want:
            raise ShapeError(f"CL-DPS reads measurements of the image's shape {want} (blur-type "
                             f"problems); got y of shape {tuple(y.shape[1:])}")
        return Problem(None, {}, None, (y.shape[0], *want))

    def prepare(self, ctx: Context) -> None:
        q, k, card = load_likelihood(self.encoder, ctx.prior, ctx.y.device)
        tau = self.tau if self.tau is not None else float(card.get("training", {}).get("tau", 0.07))
        if self.energy == "spatial" and card.get("training", {}).get("key_tower") == "trained":
            raise DiffinvError("energy='spatial' compares the query and key encoders' feature maps, "
                               "which only share a space when the key encoder is the query's "
                               "momentum copy; this encoder's key tower was trained on its own "
                               "(--key-tower trained): use energy='projection'")
        ctx.data["energy"] = ContrastiveEnergy(ctx.y, q, k.to(ctx.y.dtype), tau, self.stride,
                                               self.intensity_weight, self.energy)
        ctx.data["log_energy"] = []

    def guide(self, ctx: Context, step: Step) -> Tensor:
        energy: ContrastiveEnergy = ctx.data["energy"]
        if self.input == "x0":
            e = energy(step.x0)
            (g,) = torch.autograd.grad(e.sum(), step.x_t)
            ctx.backward_nfe += 1
        else:
            with torch.enable_grad():
                xt = step.x_t.detach().requires_grad_(True)
                e = energy(xt, step.abar)
                (g,) = torch.autograd.grad(e.sum(), xt)
        ctx.data["log_energy"].append(e.detach().cpu())
        return step.x_prev - self.scale * g
