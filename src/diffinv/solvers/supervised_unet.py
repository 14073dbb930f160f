r"""Supervised UNet, trained here: one forward pass ``\hat x = y + f_\theta(y)``.

Blind-deblurring papers compare with supervised deblurring networks (DeblurGANv2, MPRNet,
Stripformer). Their weights are for 256x256 colour photographs and cannot be had here, so this
solver stands for that family with a regression UNet we trained ourselves
(:mod:`diffinv.learn.deblur_net`, :mod:`diffinv.learn.deblur_trainer`, ``diffinv
train-deblur-net``) on blurred + noisy / sharp pairs of the fashion32 *train* split, the operator
drawn per sample from the four blind families with random parameters and Gaussian noise
``sigma ~ U(0, 0.05)``; L1 loss. It is **not** DeblurGANv2, MPRNet or Stripformer: name it
"supervised UNet, trained here". The shipped weights and their card (command, steps, wall time,
validation PSNR per family) are ``diffinv/restorers/deblur-unet-fashion32.{safetensors,json}``:
4,500 steps of batch 32 (144k pairs drawn from the 55,000 train images, about 2.6 passes), 68 min on one
shared CPU thread; PSNR on 256 fashion32 valid images at sigma 0.02 (measurement's own PSNR in
brackets): motion 24.8 (18.5), Gaussian 26.7 (18.4), rotation 27.3 (20.6), zoom 30.9 (16.8) dB.

It estimates no kernel (``trace["kernel"]`` is absent), ignores the diffusion prior (``nfe = 0``)
and draws nothing at random (``seed`` is accepted and unused). It accepts the four blind families
only (the measurements it was trained on), and only images of the size and channel count it was
trained at.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from diffinv.errors import DiffinvError, IntegrityError, MissingAssetError, ShapeError
from diffinv.solvers._blind import BLIND_NEEDS, blind_problem
from diffinv.solvers.base import Solver, register_solver

RESTORERS = Path(__file__).resolve().parent.parent / "restorers"


def weights_path(weights: str) -> Path:
    """``"fashion32"`` -> the shipped ``restorers/deblur-unet-fashion32.safetensors``; a path to a
    ``.safetensors`` file (its card ``.json`` beside it) is taken as is."""
    p = Path(weights)
    if p.suffix == ".safetensors":
        return p
    return RESTORERS / f"deblur-unet-{weights}.safetensors"


def read_deblur_card(weights: str | Path = "fashion32") -> tuple[Path, dict[str, Any]]:
    """The weights file and its card, checked to be a supervised deblurring network's (not, e.g.,
    a diffusion prior's config): a JSON object with the network's settings (``net``) and the
    image shape it was trained on. Reads no weights."""
    path = weights_path(str(weights))
    card_path = path.with_suffix(".json")
    if not path.is_file() or not card_path.is_file():
        known = sorted(p.stem.removeprefix("deblur-unet-") for p in RESTORERS.glob("*.safetensors"))
        raise MissingAssetError(f"no deblurring network {path} (with its card {card_path.name}); "
                                f"shipped: {known or 'none'}; train one with "
                                "`diffinv train-deblur-net --export DIR`")
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{card_path} is not valid JSON: {e}") from e
    lacking = ([] if not isinstance(card, dict) else
               [k for k, ok in (("net", isinstance(card.get("net"), dict)),
                                ("image_shape", isinstance(card.get("image_shape"), list)))
                if not ok])
    if not isinstance(card, dict) or lacking:
        looks = (" (it looks like a diffusion prior's config: a prior is given with --prior)"
                 if isinstance(card, dict) and ("unet" in card or "adm" in card) else "")
        what = "does not hold a JSON object" if not isinstance(card, dict) else \
            f"lacks {' and '.join(repr(k) for k in lacking)}"
        raise IntegrityError(f"{path} is not a supervised deblurring network: its card "
                             f"{card_path.name} {what}{looks}; train one with "
                             "`diffinv train-deblur-net --export DIR`")
    return path, card


def load_deblur_net(weights: str | Path = "fashion32") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network and its card (:func:`read_deblur_card`); checks the file's SHA-256 against
    the card."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from diffinv.assets import sha256_file
    from diffinv.learn.deblur_net import DeblurUNet

    path, card = read_deblur_card(weights)
    if card.get("sha256") and sha256_file(path) != card["sha256"]:
        raise IntegrityError(f"{path} does not match the SHA-256 of its card "
                             f"{path.with_suffix('.json')}")
    try:
        net = DeblurUNet(**card["net"])
    except (TypeError, ValueError) as e:
        raise IntegrityError(f"{path.with_suffix('.json')}: bad network settings 'net': {e}") from e
    try:
        net.load_state_dict(load_file(str(path)))
    except (SafetensorError, RuntimeError, OSError) as e:
        raise IntegrityError(f"{path} does not hold the network its card describes: {e}") from e
    return net.eval().requires_grad_(False), card


@register_solver("supervised-unet")
class SupervisedUNet(Solver):
    """Supervised UNet, trained here (a stand-in for DeblurGANv2 / MPRNet / Stripformer).

    ``weights``: ``"fashion32"`` (shipped) or a path to a ``.safetensors`` file with its card.
    """

    requires: ClassVar[tuple[str, ...]] = ()
    needs: ClassVar[tuple[str, ...]] = BLIND_NEEDS
    summary = ("supervised UNet, trained here on blind-blurred fashion32 train pairs (stands for "
               "DeblurGANv2/MPRNet/Stripformer; no diffusion prior, no kernel)")

    def __init__(self, weights: str = "fashion32"):
        self.weights = str(weights)
        read_deblur_card(self.weights)  # a wrong file is refused before anything runs
        self._net: torch.nn.Module | None = None
        self.card: dict[str, Any] = {}

    def network(self) -> torch.nn.Module:
        if self._net is None:
            self._net, self.card = load_deblur_net(self.weights)
        return self._net

    def solve(self, y: Tensor, physics: Any, prior: Any,
              generators: Sequence[torch.Generator]) -> tuple[Tensor, dict[str, Any]]:
        problem = blind_problem(self, y, physics)
        net = self.network()
        want = tuple(self.card["image_shape"])
        if tuple(y.shape[1:]) != want:
            raise ShapeError(f"the supervised UNet {self.weights!r} was trained on images {want} "
                             f"(C, H, W); this measurement has images {tuple(y.shape[1:])}")
        if problem.family not in self.card.get("families", [problem.family]):
            raise DiffinvError(f"the supervised UNet {self.weights!r} was not trained on "
                             f"{problem.family} (trained on {self.card['families']})")
        net = net.to(y.device)
        with torch.no_grad():
            x = net(y.float()).to(y.dtype).clamp(-1, 1)
        trace = {"family": problem.family, "network": "supervised UNet, trained here",
                 "weights": self.weights, "trained_on": self.card.get("trained_on"),
                 "train_steps": self.card.get("steps")}
        return x, trace
