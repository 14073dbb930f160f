r"""Users' diffusers latent-diffusion folders as :class:`~diffinv.latent.prior.LatentPrior`.

Layout (what ``LDMPipeline``-style ``save_pretrained`` writes; optional extra
``pip install diffinv[diffusers]``)::

    FOLDER/vae/config.json                          (_class_name AutoencoderKL)
    FOLDER/vae/diffusion_pytorch_model.safetensors
    FOLDER/unet/config.json + diffusion_pytorch_model.safetensors   (UNet2DModel on latents)
    FOLDER/scheduler/scheduler_config.json

The UNet and its scheduler load through :func:`diffinv.diffusion.diffusers_folder.
load_diffusers_prior` (the same scheduler checks and prediction conversion; the Tweedie clamp is
turned off: latents are not in [-1, 1]). The VAE's ``scaling_factor`` (diffusers' default
0.18215) is the prior's ``scale_factor``: ``encode(x) = scaling_factor * mean(q(z | x))``,
``decode(z) = D(z / scaling_factor)``. Only safetensors are read (a ``.bin`` is a pickle: refused);
a ``shift_factor`` (SD3/Flux VAEs) and VAE classes other than ``AutoencoderKL`` are refused by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffinv.diffusion.diffusers_folder import (
    PICKLED,
    WEIGHTS,
    load_pretrained,
    read_json_object,
    sample_hw,
)
from diffinv.errors import DiffinvError


def is_latent_folder(path: Path) -> bool:
    return path.is_dir() and (path / "vae" / "config.json").is_file()


class DiffusersVAE(nn.Module):
    """A diffusers ``AutoencoderKL`` behind the :class:`~diffinv.latent.prior.Autoencoder`
    protocol (unscaled latents; the posterior mean)."""

    def __init__(self, vae: nn.Module, image_shape: tuple[int, int, int],
                 latent_shape: tuple[int, int, int]):
        super().__init__()
        self.vae, self.image_shape, self.latent_shape = vae, image_shape, latent_shape

    def encode(self, x: Tensor) -> Tensor:
        return self.vae.encode(x).latent_dist.mean

    def decode(self, z: Tensor) -> Tensor:
        return self.vae.decode(z).sample


def load_latent_diffusers(folder: str | Path, device: str | torch.device = "cpu",
                          sha256: str | None = None) -> Any:
    from diffinv.diffusion.diffusers_folder import load_diffusers_prior
    from diffinv.diffusion.prior import DiffusionPrior
    from diffinv.latent.prior import LatentPrior

    folder = Path(folder)
    vae_dir = folder / "vae"
    cfg = read_json_object(vae_dir / "config.json")  # a readable JSON object, or IntegrityError
    cls = cfg.get("_class_name")
    if cls != "AutoencoderKL":
        raise DiffinvError(f"{vae_dir} holds a {cls}; diffinv loads latent folders whose vae is "
                           "an AutoencoderKL")
    if cfg.get("shift_factor"):
        raise DiffinvError(f"{vae_dir}: shift_factor {cfg['shift_factor']} (SD3/Flux VAEs) is not "
                           "supported; diffinv scales latents by scaling_factor only")
    if not (vae_dir / WEIGHTS).is_file():
        if (vae_dir / PICKLED).is_file():
            raise DiffinvError(f"{vae_dir} holds {PICKLED}, a pickle, which diffinv does not "
                               f"load; convert it to {WEIGHTS} from a trusted environment")
        raise DiffinvError(f"{vae_dir} has no {WEIGHTS}")
    if not (folder / "unet" / "config.json").is_file():
        raise DiffinvError(f"{folder} has a vae/ but no unet/ folder (the latent diffusion)")
    latent = load_diffusers_prior(folder, device, sha256)  # the unet/ + scheduler/
    if not isinstance(latent, DiffusionPrior):
        raise DiffinvError(f"{folder}: the latent model must be a VP diffusion (DDPM/DDIM "
                           "scheduler); latent flow matching is not supported")
    vae = load_pretrained("AutoencoderKL", vae_dir, "AutoencoderKL")
    h, w = sample_hw(cfg)
    f = 2 ** (len(cfg.get("block_out_channels", [64])) - 1)
    image_shape = (int(cfg.get("in_channels", 3)), h, w)
    latent_shape = (int(cfg.get("latent_channels", 4)), h // f, w // f)
    ae = DiffusersVAE(vae.eval(), image_shape, latent_shape).to(device)
    return LatentPrior(ae, latent, scale_factor=float(cfg.get("scaling_factor", 0.18215)),
                       name=folder.name, sha256=latent.sha256, domain=folder.name,
                       info={"format": "diffusers"})
