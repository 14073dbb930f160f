r"""The contrastive likelihood encoder of CL-DPS: a compact ResNet for small images.

``f(u) = normalize(head(pool(body(u))))`` maps an image-shaped input ``u`` (a measurement ``y``
or a, possibly noisy, clean image ``x``) to a unit vector in R^d (d = 128). CL-DPS (Ye et al.
2026) trains it with MoCo (He et al. 2020) so that ``<f(y), f(x)>`` is large when ``y`` was
measured from ``x`` and small otherwise, which makes ``<f(y), f(x)>/tau`` a surrogate for
``log p(y | x)`` up to a constant (the InfoNCE critic; Oord et al. 2018, eq. 3-4).

Architecture (ours, sized for 32x32 on a CPU; the snapshot uses a wide_resnet50_2 on 64x64
patches of FFHQ, methods.md 6.2): a 3x3 stem, three stages of pre-activation residual blocks of
widths ``(w, 2w, 4w)`` with strides ``(1, 2, 2)``, GroupNorm inside the blocks, SiLU; global
average pooling and a two-layer MLP projection to ``dim`` with BatchNorm after each linear layer
(as the SimCLR and MoCo-v3 heads). The head's BatchNorms matter: without them the untrained
network maps every image to nearly the same direction (cosine 0.996 between images) and MoCo
collapses (the loss climbs to ``log(1 + K)``, every embedding equal). In training both encoders
use their own batch's statistics (queries: one measurement per image; keys: J noisy copies per
image), without MoCo's shuffling across devices, so a batch statistic could in principle leak
which key is positive; the check that none did is the retrieval accuracy of the card, computed in
evaluation mode (running statistics), where the encoder is a fixed per-image function and
batching never changes a result. The optional intensity head (the paper's colour-consistency
head, one channel here) is a 1x1-convolution MLP on the last feature map predicting the
4x4-average-pooled clean image from the measurement's features.

The network is saved with its configuration (:func:`save_encoder`, safetensors; the card is a
JSON file beside it) and loaded with :func:`load_encoder`, which refuses truncated or foreign
files and mismatched configurations with a message naming the problem.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffinv.errors import DiffinvError, IntegrityError, ShapeError

FORMAT = "diffinv-contrastive-encoder"


@dataclass
class EncoderConfig:
    """Shape of the encoder: input channels and size, stage width ``width`` (w), residual blocks
    per stage, embedding dimension, and whether the intensity head is present."""

    in_channels: int = 1
    image_size: int = 32
    width: int = 32
    blocks: tuple[int, ...] = (1, 1, 1)
    dim: int = 128
    intensity_head: bool = True
    pool: int = 4  # the intensity head predicts avgpool(x, pool)
    predictor: bool = False  # a query-only MLP after the projection (see ContrastiveEncoder)
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.in_channels < 1 or self.width < 1 or self.dim < 1 or not self.blocks:
            raise DiffinvError("encoder channels, width, dim and blocks must be positive")
        if self.image_size % 4 or self.image_size % self.pool:
            raise DiffinvError(f"encoder image_size {self.image_size} must be divisible by 4 and "
                               f"by the intensity pool {self.pool}")


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


class _Block(nn.Module):
    """Pre-activation residual block (He et al. 2016b): ``x' + conv(SiLU(GN(conv(SiLU(GN(x))))))``
    with ``x'`` the input or its strided 1x1 projection. The residual stream itself is never
    normalised, so its global average (the embedding's input) keeps each image's statistics: a
    normalisation right before the pooling would make the pooled features nearly constant."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.norm2 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.skip = (nn.Identity() if cin == cout and stride == 1 else
                     nn.Conv2d(cin, cout, 1, stride))

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class ContrastiveEncoder(nn.Module):
    """``f: (B, C, S, S) -> (B, dim)`` unit vectors; :meth:`intensity` gives the head's map."""

    def __init__(self, config: EncoderConfig | None = None):
        super().__init__()
        cfg = config or EncoderConfig()
        cfg.validate()
        self.config = cfg
        w = cfg.width
        self.stem = nn.Conv2d(cfg.in_channels, w, 3, 1, 1)
        layers: list[nn.Module] = []
        cin = w
        for i, n in enumerate(cfg.blocks):
            cout = w * 2 ** min(i, 2)
            for j in range(n):
                layers.append(_Block(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.body = nn.Sequential(*layers)
        self.feat_channels = cin
        self.head = nn.Sequential(nn.Linear(cin, cin), nn.BatchNorm1d(cin), nn.SiLU(),
                                  nn.Linear(cin, cfg.dim), nn.BatchNorm1d(cfg.dim, affine=False))
        self.intensity_net = (nn.Sequential(nn.Conv2d(cin, cin, 1), nn.SiLU(),
                                            nn.Conv2d(cin, cfg.in_channels, 1))
                              if cfg.intensity_head else None)
        # Query-side predictor (as MoCo v3 / BYOL): q = normalize(pred(head(...))). The key
        # encoder, a momentum copy, holds the same (unused) module. Without it f_q ~ f_k, so a
        # measurement's own key f_k(y) scores ~1 against its query f_q(y), above any clean image:
        # the predictor lets the query side map "blurred" towards "clean".
        self.predictor = (nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.BatchNorm1d(cfg.dim),
                                        nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
                          if cfg.predictor else None)

    def check_input(self, u: Tensor) -> None:
        c, s = self.config.in_channels, self.config.image_size
        if u.ndim != 4 or u.shape[1] != c or u.shape[-2:] != (s, s):
            raise ShapeError(f"the encoder takes ({c}, {s}, {s}) inputs, got {tuple(u.shape[1:])}")

    def features(self, u: Tensor) -> Tensor:
        """The last feature map (B, 4w, S/4, S/4)."""
        self.check_input(u)
        return self.body(self.stem(u))

    def embed(self, feats: Tensor, query: bool = False) -> Tensor:
        h = self.head(feats.mean((-2, -1)))
        if query and self.predictor is not None:
            h = self.predictor(h)
        return F.normalize(h, dim=1)

    def forward(self, u: Tensor, return_features: bool = False,
                query: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``f(u)`` (B, dim); with ``return_features`` also the last feature map. ``query=True``
        (the measurement side) applies the predictor when the encoder has one."""
        feats = self.features(u)
        e = self.embed(feats, query)
        return (e, feats) if return_features else e

    def intensity(self, feats: Tensor) -> Tensor:
        """The intensity head's prediction of ``avgpool(x, pool)`` (B, C, S/pool, S/pool), in
        [-1, 1]."""
        if self.intensity_net is None:
            raise DiffinvError("this encoder was built without the intensity head")
        h = torch.tanh(self.intensity_net(feats))
        size = self.config.image_size // self.config.pool
        return F.adaptive_avg_pool2d(h, size) if h.shape[-1] != size else h


def _config_dict(cfg: EncoderConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["blocks"] = list(cfg.blocks)
    return d


def save_encoder(query: ContrastiveEncoder, key: ContrastiveEncoder, path: str | Path,
                 card: dict[str, Any]) -> Path:
    """Write both encoders (``query.*`` reads measurements, ``key.*`` reads images) to
    ``path`` (safetensors, the configuration in its metadata) and the card to ``path.json``."""
    from safetensors.torch import save_file

    from diffinv.assets import sha256_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"query.{k}": v.detach().contiguous().cpu() for k, v in query.state_dict().items()}
    tensors.update({f"key.{k}": v.detach().contiguous().cpu() for k, v in key.state_dict().items()})
    meta = {"format": FORMAT, "config": json.dumps(_config_dict(query.config))}
    save_file(tensors, str(path), metadata=meta)
    full = {"format": FORMAT, "config": _config_dict(query.config), **card,
            "sha256": sha256_file(path)}
    path.with_suffix(".json").write_text(json.dumps(full, indent=2) + "\n")
    return path


def load_encoder(path: str | Path, device: str | torch.device = "cpu"
                 ) -> tuple[ContrastiveEncoder, ContrastiveEncoder, dict[str, Any]]:
    """``(query encoder, key encoder, card)`` from a file written by :func:`save_encoder`.

    A missing, truncated or foreign file raises :class:`IntegrityError` naming it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DiffinvError(f"no contrastive encoder at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 -- safe_open API
    except Exception as e:  # noqa: BLE001 -- truncated / not safetensors
        raise IntegrityError(f"{path} is not a readable safetensors file ({type(e).__name__}: "
                             f"{e}); re-export it with `diffinv train-likelihood --export`") from e
    if meta.get("format") != FORMAT:
        raise IntegrityError(f"{path} is not a diffinv contrastive encoder (format "
                             f"{meta.get('format')!r}, expected {FORMAT!r})")
    raw = json.loads(meta["config"])
    raw["blocks"] = tuple(raw["blocks"])
    cfg = EncoderConfig(**raw)
    nets = []
    for part in ("query", "key"):
        net = ContrastiveEncoder(EncoderConfig(**{**asdict(cfg), "blocks": cfg.blocks}))
        sd = {k[len(part) + 1:]: v for k, v in tensors.items() if k.startswith(part + ".")}
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise IntegrityError(f"{path}: the {part} encoder's weights do not match its "
                                 f"configuration: {e}") from e
        nets.append(net.to(device).eval().requires_grad_(False))
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.is_file() else {"config": raw}
    return nets[0], nets[1], card
