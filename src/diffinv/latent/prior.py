r"""A latent diffusion prior: an autoencoder (encode / decode) and a diffusion prior on its latents.

**Contract** (DESIGN.md, "Growing the contracts"). A :class:`LatentPrior` has

* :attr:`LatentPrior.image_shape`: the pixel images ``(C, H, W)`` it models (what a measurement
  is checked against), :attr:`LatentPrior.latent_shape`: its latents ``(c, h, w)``;
* :meth:`LatentPrior.encode` ``x -> z`` and :meth:`LatentPrior.decode` ``z -> x`` (differentiable;
  ``z`` already multiplied by the autoencoder's ``scale_factor``, as Stable Diffusion's 0.18215,
  so that the latent diffusion sees roughly unit-variance latents). ``encode`` returns the *mean*
  of a KL encoder's posterior (deterministic: a solver's result depends on its seed only);
* :attr:`LatentPrior.latent`: a :class:`~diffinv.diffusion.prior.DiffusionPrior` on the latents
  (eps, Tweedie ``x0`` *without* a clamp: latents are not in [-1, 1], the schedule, DDIM steps);
* :meth:`LatentPrior.sample`: images, i.e. decoded latent samples clamped to [-1, 1].

The named capability is ``"latent"`` (:data:`LATENT`, in :attr:`LatentPrior.capabilities`). Latent
solvers (resample, psld, latent-dps, latentdem) call :func:`require_latent`, which refuses a
pixel-space diffusion prior or a flow prior by name. Conversely what a pixel-space solver would use
(eps, x0 at an integer timestep on images, ancestral steps, a schedule on images) raises
:class:`~diffinv.flow.prior.MissingCapabilityError` naming the latent solvers: DPS on a latent
prior fails at its first call, with the reason, not with a shape error deep inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from diffinv.checks import check_count, check_image
from diffinv.diffusion.prior import DiffusionPrior
from diffinv.errors import ShapeError
from diffinv.flow.prior import MissingCapabilityError, NoPixelDiffusion

LATENT = "latent"
LATENT_SOLVERS = "resample, psld, latent-dps, latentdem"


class Autoencoder(Protocol):
    """What a :class:`LatentPrior` needs of its autoencoder (ours or a diffusers wrapper)."""

    image_shape: tuple[int, int, int]
    latent_shape: tuple[int, int, int]

    def encode(self, x: Tensor) -> Tensor: ...  # the posterior mean, unscaled

    def decode(self, z: Tensor) -> Tensor: ...  # unscaled latents -> images


class LatentPrior(NoPixelDiffusion, nn.Module):
    """An autoencoder + a :class:`DiffusionPrior` on its (scaled) latents (module docstring)."""

    kind = "latent"
    capabilities = (LATENT,)

    def __init__(self, autoencoder: nn.Module, latent: DiffusionPrior, *,
                 scale_factor: float = 1.0, name: str = "custom-latent",
                 sha256: str | None = None, domain: str | None = None,
                 info: dict[str, Any] | None = None):
        super().__init__()
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.latent = latent
        self.image_shape = tuple(int(s) for s in autoencoder.image_shape)
        self.latent_shape = tuple(int(s) for s in autoencoder.latent_shape)
        if tuple(latent.image_shape) != self.latent_shape:
            raise ShapeError(f"the latent diffusion models {latent.image_shape} tensors but the "
                             f"autoencoder's latents are {self.latent_shape}")
        if latent.clip_denoised:
            latent.clip_denoised = False  # a latent Tweedie estimate is never clamped to [-1, 1]
        if not (isinstance(scale_factor, int | float) and scale_factor > 0):
            raise ValueError(f"scale_factor must be a number > 0, got {scale_factor!r}")
        self.scale_factor = float(scale_factor)
        self.name, self.sha256, self.domain = name, sha256, domain or name
        self.info = dict(info or {})

    # -- bookkeeping --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.latent.device

    @property
    def network(self) -> nn.Module:
        """The autoencoder: the network that runs at the image resolution (what memory estimates
        such as :func:`~diffinv.resources.sample_bytes` read; the latent network is
        ``latent.network``)."""
        return self.autoencoder

    @property
    def nfe(self) -> int:
        """Latent-network evaluations since :meth:`reset_nfe` (decoder calls are not counted)."""
        return self.latent.nfe

    def reset_nfe(self) -> None:
        self.latent.reset_nfe()

    @property
    def precision(self) -> str:
        return self.latent.precision

    def set_precision(self, precision: str) -> LatentPrior:
        self.latent.set_precision(precision)
        return self

    def card(self) -> dict[str, Any]:
        return {"kind": "latent", "name": self.name, "sha256": self.sha256,
                "image_shape": list(self.image_shape), "latent_shape": list(self.latent_shape),
                "scale_factor": self.scale_factor, **self.info}

    def check_input(self, x: Tensor, name: str = "x") -> Tensor:
        c, h, w = self.image_shape
        return check_image(x, name, channels=c, size=(h, w), finite=False)

    def _check(self, x: Tensor, shape: tuple[int, ...], what: str, name: str) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4 or tuple(x.shape[1:]) != shape:
            want = "x".join(str(s) for s in shape)
            raise ShapeError(f"{name} of shape {tuple(x.shape)} is not a batch of {want} {what} "
                             f"(C x H x W) of latent prior {self.name!r}"
                             + (f": resize or crop the images to {want}" if what == "images"
                                else ""))

    # -- the autoencoder ----------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] -> scaled latents (B, c, h, w) (the posterior mean)."""
        self._check(x, self.image_shape, "images", "x")
        return self.autoencoder.encode(x) * self.scale_factor

    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents -> images (not clamped, so that gradients pass everywhere)."""
        self._check(z, self.latent_shape, "latents", "z")
        return self.autoencoder.decode(z / self.scale_factor)

    # -- sampling -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, seed: int | Sequence[torch.Generator] = 0, method: str = "ddim",
               steps: int | None = 50, eta: float = 0.0, **kw: Any) -> Tensor:
        """``n`` images: latent samples (:meth:`DiffusionPrior.sample`), decoded, clamped."""
        check_count(n, "n")
        z = self.latent.sample(n, seed=seed, method=method, steps=steps, eta=eta, **kw)
        return self.decode(z).clamp(-1, 1)

    # -- what a latent prior does not have ----------------------------------------------------
    def _missing(self, what: str) -> MissingCapabilityError:
        return MissingCapabilityError(
            f"prior {self.name!r} is a latent diffusion prior: it has no {what} on images (its "
            f"diffusion runs on {'x'.join(map(str, self.latent_shape))} latents); this solver "
            f"needs a pixel-space diffusion prior. Solvers that run on latent priors: "
            f"{LATENT_SOLVERS}")

    def denoise(self, *args: Any, **kw: Any) -> Any:
        raise self._missing("denoised estimate")

    def seed_map(self, *args: Any, **kw: Any) -> Any:
        raise self._missing("seed -> image map")


def has_capability(prior: Any, capability: str) -> bool:
    return capability in tuple(getattr(prior, "capabilities", ()) or ())


def require_latent(solver: str, prior: Any) -> LatentPrior:
    """``prior`` if it has the ``"latent"`` capability; otherwise :class:`MissingCapabilityError`
    naming the solver, the prior and what it is."""
    if has_capability(prior, LATENT):
        return prior
    kind = getattr(prior, "kind", None) or (
        "pixel-space diffusion" if isinstance(prior, DiffusionPrior) else type(prior).__name__)
    name = getattr(prior, "name", "?")
    raise MissingCapabilityError(
        f"solver {solver!r} needs a latent prior (capability {LATENT!r}: an encoder, a decoder "
        f"and a diffusion on latents); prior {name!r} is a {kind} prior without it. Load a latent "
        f"prior (a diffusers folder with vae/ and unet/, or a latent export of "
        f"train-autoencoder + train-prior), or use a pixel-space solver such as dps")
