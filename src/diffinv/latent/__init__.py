"""Latent diffusion priors: the :class:`LatentPrior` contract (encode, decode, a diffusion on
latents), a small KL autoencoder for 32x32 images with its training loop, and users' diffusers
latent folders. The latent solvers (resample, psld, latent-dps, latentdem) live in
:mod:`diffinv.solvers`."""

from diffinv.latent.prior import LATENT, LatentPrior, has_capability, require_latent

__all__ = ["LATENT", "LatentPrior", "has_capability", "require_latent"]
