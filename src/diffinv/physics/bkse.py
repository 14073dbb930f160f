r"""DPS's nonlinear blur: the bkse "KernelWizard" (Tran et al., CVPR 2021), for a user's weights.

DPS (methods.md 1.2) blurs with bkse's ``adaptKernel(x, k)`` using ``GOPRO_wVAE.pth`` and options
``generate_blur/default.yml``: ``x`` mapped to ``[0, 1]``, a latent ``k ~ 1.2 N(0, I)`` of shape
``(512, H/128, W/128)``, the output mapped back to ``[-1, 1]`` and clamped. DPS redraws ``k`` on
every call (a bug); here ``k`` is drawn once per image (``draw_params``, as DMPlug fixes it) and is
a public parameter. The weights are not available offline: this module rebuilds the network in our
own code, laid out so that the published state dict loads with ``strict=True``, and loads the file
with ``torch.load(weights_only=True)`` (no pickled code runs). Our default nonlinear operator is the
self-contained :class:`~diffinv.physics.nonlinear.NonlinearBlur`.

Network (GOPRO options: 3 image channels, ``nf = 64``, 10 front and 20 back residual blocks, a
512-channel latent; no normalisation layers, hence bias-free convolutions where bkse sets
``use_bias`` from the norm type):

* ``feature_extractor``: conv3 + LeakyReLU(0.1), two stride-2 conv3 + LeakyReLU, then residual
  blocks ``x + conv(relu(conv(x)))``; the image is at 1/4 resolution;
* ``adapter`` (the function G): a 5-level U-Net (4x4 stride-2 down-convolutions, widths
  ``nf, 2nf, 4nf, 8nf, 8nf``); the latent is concatenated at the bottleneck (1/128 resolution);
  each up path is ReLU, two 5x5 conv + ReLU, bilinear x2 upsampling (``align_corners=True``), and
  skip concatenation; the outermost level ends with ``tanh``;
* ``recon_trunk``: residual blocks, two conv + PixelShuffle(2) + LeakyReLU stages back to full
  resolution, conv + LeakyReLU, conv to the image channels; the output is added to the input;
* ``kernel_extractor`` (the function F, an encoder of (sharp, blurred) features to the latent's
  mean and log-variance) is built so the checkpoint loads; the operator does not use it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffinv.errors import IntegrityError, MissingAssetError, ShapeError
from diffinv.physics.base import Operator, check_positive

#: environment variable that may point to a user's ``GOPRO_wVAE.pth``
WEIGHTS_ENV = "DIFFINV_BKSE_WEIGHTS"


class _ResidualNoNorm(nn.Module):
    """``x + conv2(relu(conv1(x)))`` (3x3, biased)."""

    def __init__(self, nf: int):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class _ResidualReflect(nn.Module):
    """``x + conv(relu(conv(x)))`` with reflection padding and bias-free 3x3 convolutions."""

    def __init__(self, dim: int):
        super().__init__()
        # indices 2 and 6 are parameter-free placeholders where bkse puts its (disabled) norm
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False), nn.Identity(), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False), nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


class _DoubleConv(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.double_conv = nn.Sequential(nn.Conv2d(cin, cout, 5, padding=2), nn.ReLU(),
                                         nn.Conv2d(cout, cout, 5, padding=2), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.double_conv(x)


class _UNetLevel(nn.Module):
    """One U-Net level: ``down`` -> (inner levels | latent concatenation) -> ``up`` (+ skip)."""

    def __init__(self, outer: int, inner: int, cin: int | None = None,
                 inner_level: _UNetLevel | None = None, kind: str = "middle"):
        super().__init__()
        self.kind = kind
        cin = outer if cin is None else cin
        conv = nn.Conv2d(cin, inner, 4, 2, 1, bias=False)
        up = [nn.ReLU(), _DoubleConv(2 * inner, outer),
              nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)]
        if kind == "outermost":
            self.down = nn.Sequential(conv)
            up.append(nn.Tanh())
        elif kind == "innermost":
            self.down = nn.Sequential(nn.LeakyReLU(0.2), conv)
            up.append(nn.Identity())
        else:
            self.down = nn.Sequential(nn.LeakyReLU(0.2), conv, nn.Identity())
            up.append(nn.Identity())
        if inner_level is not None:
            self.submodule = inner_level
        self.up = nn.Sequential(*up)

    def forward(self, x: Tensor, latent: Tensor) -> Tensor:
        h = self.down(x)
        h = torch.cat([h, latent], 1) if self.kind == "innermost" else self.submodule(h, latent)
        h = self.up(h)
        return h if self.kind == "outermost" else torch.cat([h, x], 1)


class _Holder(nn.Module):
    """A module whose only child is ``model`` (the checkpoint's key prefix)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model


class KernelWizard(nn.Module):
    """The bkse blur network (see the module docstring); ``adapt(x01, latent)`` blurs ``x01``."""

    def __init__(self, channels: int = 3, nf: int = 64, front_blocks: int = 10,
                 back_blocks: int = 20, latent_dim: int = 512, extractor_blocks: int = 4):
        super().__init__()
        act = nn.LeakyReLU(0.1)
        self.feature_extractor = nn.Sequential(
            nn.Conv2d(channels, nf, 3, 1, 1), act, nn.Conv2d(nf, nf, 3, 2, 1), act,
            nn.Conv2d(nf, nf, 3, 2, 1), act, *[_ResidualNoNorm(nf) for _ in range(front_blocks)])
        # F: (sharp, blurred) features -> latent mean and log-variance
        out = 2 * latent_dim
        enc: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(2 * nf, nf, 7, bias=False),
                                nn.Identity(), nn.ReLU()]
        for i in range(5):
            enc += [nn.Conv2d(min(nf * 2 ** i, out), min(nf * 2 ** (i + 1), out), 3, 2, 1,
                              bias=False), nn.Identity(), nn.ReLU()]
        enc += [_ResidualReflect(out) for _ in range(extractor_blocks)]
        self.kernel_extractor = _Holder(nn.Sequential(*enc))
        self.latent_dim = latent_dim
        # G: U-Net with the latent at the bottleneck
        level = _UNetLevel(8 * nf, 8 * nf, kind="innermost")
        level = _UNetLevel(4 * nf, 8 * nf, inner_level=level)
        level = _UNetLevel(2 * nf, 4 * nf, inner_level=level)
        level = _UNetLevel(nf, 2 * nf, inner_level=level)
        self.adapter = _Holder(_UNetLevel(nf, nf, cin=nf, inner_level=level, kind="outermost"))
        self.recon_trunk = nn.Sequential(
            *[_ResidualNoNorm(nf) for _ in range(back_blocks)],
            nn.Conv2d(nf, 4 * nf, 3, 1, 1), nn.PixelShuffle(2), act,
            nn.Conv2d(nf, 4 * 64, 3, 1, 1), nn.PixelShuffle(2), act,
            nn.Conv2d(64, 64, 3, 1, 1), act, nn.Conv2d(64, channels, 3, 1, 1))

    def adapt(self, x01: Tensor, latent: Tensor) -> Tensor:
        """Blur ``x01`` (``[0, 1]`` images, sizes divisible by 128) with the latent kernel code."""
        h = self.adapter.model(self.feature_extractor(x01), latent)
        return self.recon_trunk(h) + x01

    def encode(self, sharp01: Tensor, blurred01: Tensor) -> tuple[Tensor, Tensor]:
        """The latent's mean and log-variance for a (sharp, blurred) pair."""
        h = torch.cat([self.feature_extractor(sharp01), self.feature_extractor(blurred01)], 1)
        h = self.kernel_extractor.model(h)
        return h[:, : self.latent_dim], h[:, self.latent_dim:]


def load_kernel_wizard(path: str | os.PathLike | None = None, *, device: str = "cpu",
                       **arch: int) -> KernelWizard:
    """Load a bkse ``GOPRO_wVAE.pth`` (a state dict) with ``weights_only=True`` and ``strict``.

    ``path`` defaults to ``$DIFFINV_BKSE_WEIGHTS``; ``arch`` overrides the GOPRO architecture.
    """
    path = path or os.environ.get(WEIGHTS_ENV)
    if not path or not Path(path).is_file():
        raise MissingAssetError(
            f"bkse weights not found ({path or 'no path given'}): they are not distributed with "
            f"diffinv; download GOPRO_wVAE.pth from the bkse project and pass its path "
            f"(weights=...) or set {WEIGHTS_ENV}")
    from diffinv.fileio import load_tensors_only

    state = load_tensors_only(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise IntegrityError(f"{path} does not hold a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    net = KernelWizard(**arch)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise IntegrityError(f"{path} does not match the bkse KernelWizard: {e}") from e
    return net.to(device).eval().requires_grad_(False)


class BkseBlur(Operator):
    """DPS's nonlinear blur with a user's bkse weights: ``y = clamp(2 G(x01, latent) - 1)``."""

    description = "bkse nonlinear blur (DPS) from a user's GOPRO_wVAE.pth (weights=PATH)"
    linear = False
    param_names = ("latent",)
    required_params = ("latent",)

    def __init__(self, weights: str | None = None, latent_scale: float = 1.2):
        super().__init__()
        self.net = load_kernel_wizard(weights)
        self.weights = str(weights or os.environ.get(WEIGHTS_ENV))
        self.latent_scale = check_positive(latent_scale, "latent scale")

    def config(self) -> dict:
        return {"weights": self.weights, "latent_scale": self.latent_scale}

    def out_shape(self, in_shape):
        B, C, H, W = (int(v) for v in in_shape)
        if H % 128 or W % 128:
            raise ShapeError(f"bkse needs image sizes divisible by 128; got {H}x{W}")
        return (B, C, H, W)

    def apply(self, x: Tensor, latent: Tensor) -> Tensor:
        out = self.net.adapt((x + 1) / 2, latent.to(dtype=x.dtype, device=x.device)
                             .expand(x.shape[0], -1, -1, -1))
        return (2 * out - 1).clamp(-1, 1)

    def draw_params(self, generators, image_shape, *, device="cpu", dtype=torch.float32):
        H, W = (int(v) for v in tuple(image_shape)[-2:])
        shape = (self.net.latent_dim, H // 128, W // 128)
        z = torch.stack([torch.randn(shape, generator=g) for g in generators])
        return {"latent": (self.latent_scale * z).to(dtype=dtype, device=device)}
