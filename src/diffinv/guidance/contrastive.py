r"""CL-DPS's learned likelihood surrogate: an energy from a contrastive encoder.

With the query encoder ``f_q`` (reads measurements) and the key encoder ``f_k`` (reads images,
clean or diffused) trained by MoCo (:mod:`diffinv.learn.moco`), the InfoNCE critic gives
``log p(y | u) ~ <f_q(y), f_k(u)> / tau + const`` (Oord et al. 2018, eq. 3-4; CL-DPS, Ye et al.
2026). The energy a guided sampler descends is its negative,

.. math:: E(u) = -\frac{1}{P} \sum_{p=1}^{P} \langle f_q(y_p), f_k(u_p) \rangle / \tau
          \;+\; \lambda \, \frac{1}{n} \| h(y) - \sqrt{\bar\alpha}\, \mathrm{pool}(u) \|^2,

where ``u`` is the Tweedie estimate ``x0_hat(x_t)`` (``abar = 1``) or the iterate ``x_t`` itself
(its own ``abar``), and ``y_p``, ``u_p`` are the ``P`` overlapping ``S x S`` patches (stride ``s``)
of ``y`` and ``u`` when the image is larger than the encoder's input ``S`` (CL-DPS's patch-wise
inference; the snapshot used 128-px patches at stride 8 on 256-px images). ``P = 1`` when the
image is the encoder's size. The second term is optional (``lambda = 0`` by default): the intensity
head ``h`` predicts the ``pool x pool`` average of the clean image from ``y`` (the paper's colour
head, one channel), and ``sqrt(abar) pool(u)`` is that average's expectation under ``x_t``.
No operator and no operator estimate enter ``E``.

``kind="spatial"`` replaces the 128-d projections by the encoders' last feature maps, flattened
and L2-normalised, ``<F_q(y_p), F_k(u_p)> / tau`` (the official snapshot's guidance compared
flattened layer-4 feature maps with the projection head removed, methods.md 6.3; here the query
encoder reads ``y`` and the key encoder ``u``). An encoder trained on ``S x S`` crops
(``diffinv train-likelihood --crop S``) tiles a larger image: ``P`` windows at ``stride``, e.g.
9 windows of 16 px at stride 8 on a 32-px image; the stride is a setting of the energy
(CL-DPS's ``stride``), not of the encoder.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from diffinv.errors import DiffinvError, ShapeError
from diffinv.guidance.encoder import ContrastiveEncoder, load_encoder


def embedded_encoders() -> dict[str, Path]:
    """``{prior name: file}`` of the encoders shipped in the package."""
    d = Path(str(resources.files("diffinv") / "likelihoods"))
    return {p.stem: p for p in sorted(d.glob("*.safetensors"))} if d.is_dir() else {}


def load_likelihood(encoder: str | Path | None, prior: Any,
                    device: str | torch.device = "cpu"
                    ) -> tuple[ContrastiveEncoder, ContrastiveEncoder, dict[str, Any]]:
    """The encoders for ``prior``: ``encoder=None`` takes the one shipped for the prior's name,
    otherwise the name of a shipped encoder (:func:`embedded_encoders`, e.g. ``"fashion32-crop16"``)
    or a file path (an existing file wins over a shipped name). An encoder trained for another
    prior, or for other images (channels, size), is refused naming both."""
    name = str(getattr(prior, "name", ""))
    shipped = embedded_encoders()
    if isinstance(encoder, str) and not Path(encoder).exists() and encoder in shipped:
        encoder = shipped[encoder]
    if encoder is None:
        if name not in shipped:
            raise DiffinvError(
                f"no contrastive encoder is shipped for prior {name!r} (shipped: "
                f"{', '.join(shipped) or 'none'}); train one with `diffinv train-likelihood "
                f"--prior {name} --out RUN --export FILE` and pass encoder=FILE")
        encoder = shipped[name]
    q, k, card = load_encoder(encoder, device)
    trained_for = card.get("prior")
    if trained_for and name not in ("", "custom") and trained_for != name:
        raise DiffinvError(f"encoder {encoder} was trained for prior {trained_for!r}, not for "
                           f"{name!r}")
    c_img = tuple(getattr(prior, "image_shape", ()))[:1]
    if c_img and c_img[0] != q.config.in_channels:
        raise DiffinvError(f"encoder {encoder} reads {q.config.in_channels}-channel images; the "
                           f"prior {name!r} models {c_img[0]}-channel images")
    return q, k, card


#: what the critic compares: the projection heads' unit vectors, or the flattened feature maps
ENERGY_KINDS = ("projection", "spatial")


def patch_grid(size: int, patch: int, stride: int) -> int:
    """Number of patch positions along a side, refusing sizes the patches cannot tile exactly."""
    if size < patch or (size - patch) % stride:
        ok = ", ".join(str(patch + i * stride) for i in range(4))
        raise ShapeError(f"images of side {size} cannot be tiled by {patch}-px encoder patches at "
                         f"stride {stride}; accepted sides: {ok}, ...")
    return (size - patch) // stride + 1


def to_patches(u: Tensor, patch: int, stride: int) -> Tensor:
    """``(B, C, H, W) -> (B, P, C, patch, patch)``, overlapping patches in raster order."""
    B, C, H, W = u.shape
    patch_grid(H, patch, stride)
    patch_grid(W, patch, stride)
    if patch == H and patch == W:
        return u[:, None]
    cols = F.unfold(u, patch, stride=stride)                       # (B, C p p, P)
    return cols.transpose(1, 2).reshape(B, -1, C, patch, patch)


class ContrastiveEnergy:
    """``E(u) -> (B,)`` of the module docstring for a fixed measurement ``y``."""

    name = "contrastive"

    def __init__(self, y: Tensor, query: ContrastiveEncoder, key: ContrastiveEncoder, tau: float,
                 stride: int = 8, intensity_weight: float = 0.0, kind: str = "projection"):
        if kind not in ENERGY_KINDS:
            from diffinv.errors import UnknownNameError

            raise UnknownNameError("contrastive energy", kind, ENERGY_KINDS)
        self.kind = kind
        if tau <= 0:
            raise DiffinvError(f"tau must be > 0, got {tau}")
        if intensity_weight < 0:
            raise DiffinvError(f"intensity_weight must be >= 0, got {intensity_weight}")
        if intensity_weight > 0 and query.intensity_net is None:
            raise DiffinvError("intensity_weight > 0 needs an encoder with the intensity head")
        self.S = query.config.image_size
        self.stride = int(stride)
        if self.stride < 1:
            raise DiffinvError(f"patch stride must be >= 1, got {stride}")
        if y.ndim != 4 or y.shape[1] != query.config.in_channels:
            raise ShapeError(f"the encoder reads ({query.config.in_channels}, H, W) measurements, "
                             f"got y of shape {tuple(y.shape)}")
        self.key, self.tau, self.lam = key, float(tau), float(intensity_weight)
        yp = to_patches(y, self.S, self.stride)
        B, P = yp.shape[:2]
        with torch.no_grad():
            fy, feats = query(yp.reshape(B * P, *yp.shape[2:]), return_features=True, query=True)
            if kind == "spatial":
                fy = F.normalize(feats.flatten(1), dim=1)
            self.fy = fy.reshape(B, P, -1)
            self.target = (query.intensity(feats).reshape(B, P, *query.intensity(feats).shape[1:])
                           if self.lam > 0 else None)
        self.pool = query.config.pool

    def similarity(self, u: Tensor) -> Tensor:
        """``(1/P) sum_p <f_q(y_p), f_k(u_p)>`` per image (B,) (feature maps for "spatial")."""
        up = to_patches(u, self.S, self.stride)
        B, P = up.shape[:2]
        flat = up.reshape(B * P, *up.shape[2:])
        if self.kind == "spatial":
            fu = F.normalize(self.key.features(flat).flatten(1), dim=1).reshape(B, P, -1)
        else:
            fu = self.key(flat).reshape(B, P, -1)
        return (fu * self.fy).sum(-1).mean(1)

    def __call__(self, u: Tensor, abar: float = 1.0) -> Tensor:
        e = -self.similarity(u) / self.tau
        if self.lam > 0:
            up = to_patches(u, self.S, self.stride)
            B, P = up.shape[:2]
            pooled = F.avg_pool2d(up.reshape(B * P, *up.shape[2:]), self.pool)
            diff = self.target.reshape(B * P, *pooled.shape[1:]) * abar ** 0.5 - pooled
            e = e + self.lam * diff.pow(2).reshape(B, -1).mean(1)
        return e
