r"""diffusers folders trained with flow matching: a ``UNet2DModel`` with a
``FlowMatchEulerDiscreteScheduler`` config, loaded as a :class:`~diffinv.flow.prior.FlowPrior`
through :func:`diffinv.load_prior` (optional extra ``diffinv[diffusers]``).

**Conversion.** diffusers trains ``x_sigma = (1 - sigma) x_data + sigma noise`` (noise at
``sigma = 1``), calls the network with the timestep ``sigma * num_train_timesteps`` and regresses
``noise - x_data`` (``FlowMatchEulerDiscreteScheduler.step``: ``x_next = x + (sigma_next - sigma)
out``). In our convention (:mod:`diffinv.flow.prior`: ``t = 1 - sigma``, ``x_0`` the source =
the noise, ``x_1`` the data) that is ``t = 1 - sigma`` and ``v = x_1 - x_0 = -out``;
:class:`DiffusersVelocity` does both, so an Euler step of ours on the times ``1 - sigma_i`` is
diffusers' step (``tests/test_flow.py`` checks it step for step). The source is the full Gaussian.

**Scheduler settings.** ``num_train_timesteps`` scales the network's time input. ``shift`` (static
shifting) becomes the prior's sampling grid (:func:`~diffinv.flow.prior.time_grid`); the other
grid settings (``use_dynamic_shifting``, Karras/exponential/beta sigmas, ``shift_terminal``,
``stochastic_sampling``) only choose where a diffusers pipeline steps, not what the network means:
they are recorded in the prior's card and diffinv's samplers use their own grid.
``invert_sigmas=True`` (the network sees ``1 - sigma``: another convention) is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffinv.errors import DiffinvError
from diffinv.flow.prior import FlowPrior
from diffinv.flow.source import Source

#: settings that choose the sampling grid only (recorded, not used)
GRID_ONLY = ("use_dynamic_shifting", "base_shift", "max_shift", "base_image_seq_len",
             "max_image_seq_len", "shift_terminal", "use_karras_sigmas", "use_exponential_sigmas",
             "use_beta_sigmas", "time_shift_type", "stochastic_sampling")


class DiffusersVelocity(nn.Module):
    """A diffusers flow-matching ``UNet2DModel`` as our velocity network ``(x_t, t) -> v`` with
    ``t`` in [0, 1] (module docstring)."""

    def __init__(self, unet: nn.Module, num_train_timesteps: int):
        super().__init__()
        self.unet, self.T = unet, int(num_train_timesteps)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        sigma = 1 - t.to(x.device, torch.float32)
        return -self.unet(x, sigma * self.T).sample


def load_diffusers_flow_prior(folder: Path, unet_dir: Path, config: dict[str, Any],
                              sched_cfg: dict[str, Any], device: str | torch.device,
                              sha256: str | None) -> FlowPrior:
    from diffinv.diffusion.diffusers_folder import (
        WEIGHTS,
        checked_sha256,
        diffusers_class,
        load_pretrained,
        sample_hw,
    )

    if sched_cfg.get("invert_sigmas"):
        raise DiffinvError("diffusers FlowMatchEulerDiscreteScheduler invert_sigmas=true (the "
                           "network sees 1 - sigma) is not supported")
    T = sched_cfg.get("num_train_timesteps", 1000)
    shift = sched_cfg.get("shift", 1.0)
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise DiffinvError(f"diffusers num_train_timesteps must be an integer >= 1, got {T!r}")
    if isinstance(shift, bool) or not isinstance(shift, int | float) or not shift > 0:
        raise DiffinvError(f"diffusers shift must be a number > 0, got {shift!r}")
    sha = checked_sha256(unet_dir / WEIGHTS, sha256)
    diffusers_class("UNet2DModel")  # a missing package is said before the checks below
    c_in, c_out = int(config.get("in_channels", 3)), int(config.get("out_channels", 3))
    if c_out != c_in:
        raise DiffinvError(f"the UNet maps {c_in} to {c_out} channels; a flow prior's velocity "
                           "needs out_channels = in_channels")
    unet = load_pretrained("UNet2DModel", unet_dir, "UNet")
    shape = (c_in, *sample_hw(config))
    info = {"scheduler": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": T,
            "converted_from": "diffusers sigma = 1 - t, output = -v",
            **{k: sched_cfg[k] for k in GRID_ONLY if k in sched_cfg}}
    prior = FlowPrior(DiffusersVelocity(unet.eval().requires_grad_(False), T), Source(shape),
                      image_shape=shape, time_scale=1.0, shift=float(shift), name=folder.name,
                      sha256=sha, domain=folder.name, info=info)
    return prior.to(device)
