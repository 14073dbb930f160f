r"""How well an autoencoder reproduces images: the ceiling of every latent solver.

A latent solver returns ``D(z)`` for some latent ``z``, so on an image ``x`` it cannot do better
than the best decodable approximation of ``x``. The encoder's round trip ``D(E(x))`` (``E`` the
posterior mean) is the practical stand-in for that best approximation (LDM's reconstruction
metric, Rombach et al. 2022, Table 8): its PSNR on test images is the *reconstruction ceiling*
written in a latent prior's card. A latent row well above it would mean a metric or data error;
a row close to it means the solver is limited by the autoencoder, not by the prior or the data.

:func:`autoencoder_from_checkpoint` reads the EMA (or raw) weights of a ``train-autoencoder`` run
folder's ``checkpoint.pt``, so the same numbers can be tracked during training (a validation
curve) without exporting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from diffinv.checks import check_image
from diffinv.errors import IntegrityError
from diffinv.metrics import psnr, ssim


class RoundTrip(Protocol):
    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, z: Tensor) -> Tensor: ...


@torch.no_grad()
def reconstruct(model: RoundTrip, images: Tensor, batch: int = 256) -> Tensor:
    """``clamp(D(E(x)), -1, 1)`` for every image of ``images`` ((N, C, H, W) in [-1, 1]), in
    batches of ``batch`` on the model's device; returned on the images' device."""
    check_image(images, "images")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    dev = next(iter(model.parameters())).device if hasattr(model, "parameters") else images.device
    out = [model.decode(model.encode(images[i:i + batch].to(dev))).clamp(-1, 1).to(images.device)
           for i in range(0, len(images), batch)]
    return torch.cat(out)


def reconstruction_scores(model: RoundTrip, images: Tensor, batch: int = 256
                          ) -> dict[str, Tensor]:
    """Per-image ``psnr`` (dB) and ``ssim`` of the round trip against the images."""
    rec = reconstruct(model, images, batch)
    return {"psnr": psnr(rec, images), "ssim": ssim(rec, images)}


def autoencoder_from_checkpoint(path: str | Path, use_ema: bool = True
                                ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(the :class:`~diffinv.latent.autoencoder.KLAutoencoder` of a ``train-autoencoder``
    checkpoint with its EMA or raw weights, {"step", "config"}); foreign files raise
    :class:`~diffinv.errors.IntegrityError`."""
    from diffinv.latent.autoencoder import KLAutoencoder
    from diffinv.learn.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    try:
        cfg = json.loads(state["config"])
        c, h, _ = (int(v) for v in state["image_shape"])
        model = KLAutoencoder(**dict(cfg["autoencoder"], in_channels=c, image_size=h))
        model.load_state_dict(state["ema"]["model"] if use_ema else state["model"], strict=True)
        step = int(state["step"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise IntegrityError(f"{path} is not a train-autoencoder checkpoint ({e})") from e
    return model.eval(), {"step": step, "config": cfg}
