"""Diffusion core: VP schedules, the prior (eps, Tweedie x0, score, DDPM/DDIM steps), networks, zoo."""

from diffinv.diffusion.adm import ADMUNet
from diffinv.diffusion.prior import DiffusionPrior
from diffinv.diffusion.schedule import VPSchedule, spaced_timesteps
from diffinv.diffusion.unet import UNet
from diffinv.diffusion.zoo import available_priors, load_prior

__all__ = [
    "ADMUNet",
    "DiffusionPrior",
    "UNet",
    "VPSchedule",
    "available_priors",
    "load_prior",
    "spaced_timesteps",
]
