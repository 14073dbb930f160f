r"""Source distributions of flow-matching priors.

Every source is a fixed map of a *standard-normal seed* ``z ~ N(0, I_d)`` (image-shaped,
``d = C H W``) to a source sample ``x_0``, so a seed, a DMPlug variable and a training draw are all
the same kind of object and batching never changes a per-image draw:

* ``"gaussian"``: the full Gaussian, ``x_0 = z`` (covariance ``I_d``);
* ``"pca"``: a restricted Gaussian on the top-k principal subspace of the training images,
  ``x_0 = mu + U_k diag(s) U_k^T z``. ``U_k^T z ~ N(0, I_k)`` exactly (``U_k`` has orthonormal
  columns), so ``x_0 ~ N(mu, U_k diag(s^2) U_k^T)``: rank k, every sample in the affine subspace
  ``mu + span(U_k)``;
* ``"random"``: the same with ``U_k`` a random orthonormal k-frame (QR of a Gaussian matrix drawn
  from ``seed``), the control of the PCA source.

Options of the restricted sources: ``mean`` ``"zero"`` (``mu = 0``) or ``"data"`` (the training
images' mean); ``scale`` ``"unit"`` (``s = 1``: N(0, I) restricted to the subspace, "whitened") or
``"data"`` (the data's own standard deviation along each direction: ``sqrt`` of the PCA
eigenvalues, or of the variance of the projections on a random direction).

A source is an ``nn.Module`` whose tensors (``mean`` (C, H, W), ``basis`` (d, k), ``scales`` (k,))
are saved with the prior (the ``source.*`` entries of its safetensors file) and whose
:meth:`Source.card` (kind, k, options, what it was fitted on) goes into the prior's JSON card.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from diffinv.errors import DiffinvError, IntegrityError, UnknownNameError

SOURCE_KINDS = ("gaussian", "pca", "random")
MEANS = ("zero", "data")
SCALES = ("unit", "data")
#: prefix of the source's tensors in a prior's safetensors file
PREFIX = "source."


class Source(nn.Module):
    """A (possibly degenerate) Gaussian source ``x_0 = mu + B z`` of image-shaped seeds ``z``."""

    kind = "gaussian"

    def __init__(self, image_shape: Sequence[int]):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.dim = math.prod(self.image_shape)

    def from_seed(self, z: Tensor) -> Tensor:
        """The source sample of the standard-normal seed ``z`` (B, C, H, W)."""
        return z

    def sample(self, generators: Sequence[torch.Generator], device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> Tensor:
        """One source sample per generator (the seed drawn on the CPU, as everywhere)."""
        from diffinv.seeding import randn

        return self.from_seed(randn(self.image_shape, generators, device=device, dtype=dtype))

    def covariance(self) -> Tensor:
        """The (d, d) covariance of the source (float64)."""
        return torch.eye(self.dim, dtype=torch.float64)

    def mean_image(self) -> Tensor:
        return torch.zeros(self.image_shape)

    def card(self) -> dict[str, Any]:
        return {"kind": "gaussian", "dim": self.dim}

    def tensors(self) -> dict[str, Tensor]:
        """What is saved beside the network (nothing for the full Gaussian)."""
        return {}


class SubspaceSource(Source):
    """``x_0 = mu + U diag(s) U^T z``: a Gaussian restricted to a k-dimensional subspace."""

    def __init__(self, image_shape: Sequence[int], mean: Tensor, basis: Tensor, scales: Tensor,
                 *, kind: str = "pca", options: dict[str, Any] | None = None):
        super().__init__(image_shape)
        if kind not in ("pca", "random"):
            raise UnknownNameError("restricted source kind", kind, ["pca", "random"])
        basis = torch.as_tensor(basis, dtype=torch.float32)
        if basis.ndim != 2 or basis.shape[0] != self.dim or not 1 <= basis.shape[1] <= self.dim:
            raise IntegrityError(f"source basis of shape {tuple(basis.shape)} does not fit images "
                                 f"{self.image_shape} (want ({self.dim}, k), 1 <= k <= {self.dim})")
        k = basis.shape[1]
        scales = torch.as_tensor(scales, dtype=torch.float32).reshape(-1)
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(self.image_shape)
        if scales.numel() != k:
            raise IntegrityError(f"source has {scales.numel()} scales for a {k}-dim basis")
        for name, v in (("mean", mean), ("basis", basis), ("scales", scales)):
            if not torch.isfinite(v).all():
                raise IntegrityError(f"source {name} holds NaN/Inf values")
        gram = basis.double().T @ basis.double()
        if (gram - torch.eye(k, dtype=torch.float64)).abs().max() > 1e-4:
            raise IntegrityError("source basis columns are not orthonormal")
        self.kind = kind
        self.k = k
        self.options = dict(options or {})
        self.register_buffer("mean", mean)
        self.register_buffer("basis", basis)
        self.register_buffer("scales", scales)

    def from_seed(self, z: Tensor) -> Tensor:
        flat = z.reshape(z.shape[0], -1)
        basis = self.basis.to(device=z.device, dtype=z.dtype)
        coeff = (flat @ basis) * self.scales.to(device=z.device, dtype=z.dtype)
        x = (coeff @ basis.T).reshape(z.shape)
        return x + self.mean.to(device=z.device, dtype=z.dtype)

    def project(self, x: Tensor) -> Tensor:
        """The orthogonal projection of ``x`` onto the affine subspace ``mu + span(U)``."""
        mu = self.mean.to(device=x.device, dtype=x.dtype)
        basis = self.basis.to(device=x.device, dtype=x.dtype)
        flat = (x - mu).reshape(x.shape[0], -1)
        return ((flat @ basis) @ basis.T).reshape(x.shape) + mu

    def covariance(self) -> Tensor:
        u = self.basis.double()
        return u @ torch.diag(self.scales.double() ** 2) @ u.T

    def mean_image(self) -> Tensor:
        return self.mean.clone()

    def card(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim, "k": self.k, **self.options}

    def tensors(self) -> dict[str, Tensor]:
        return {f"{PREFIX}mean": self.mean.contiguous(), f"{PREFIX}basis": self.basis.contiguous(),
                f"{PREFIX}scales": self.scales.contiguous()}


# ------------------------------------------------------------------------------------ fitting
def _check_options(kind: str, k: Any, mean: str, scale: str, dim: int) -> int:
    if kind not in SOURCE_KINDS:
        raise UnknownNameError("flow source", kind, SOURCE_KINDS)
    if kind == "gaussian":
        return dim
    if mean not in MEANS:
        raise UnknownNameError("source mean", mean, MEANS)
    if scale not in SCALES:
        raise UnknownNameError("source scale", scale, SCALES)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= dim:
        raise DiffinvError(f"a {kind} source needs a subspace dimension k in 1..{dim} (the image "
                           f"dimension), got {k!r}")
    return k


def _moments(data: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """(mean (d,), covariance (d, d)) of the images, float64, accumulated in chunks."""
    n = data.shape[0]
    flat = data.reshape(n, -1)
    mu = torch.zeros(flat.shape[1], dtype=torch.float64)
    for i in range(0, n, chunk):
        mu += flat[i:i + chunk].double().sum(0)
    mu /= n
    cov = torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float64)
    for i in range(0, n, chunk):
        c = flat[i:i + chunk].double() - mu
        cov += c.T @ c
    return mu, cov / max(n - 1, 1)


def _fix_signs(u: Tensor) -> Tensor:
    """Each column with its largest-magnitude entry positive (eigenvectors are defined up to sign)."""
    idx = u.abs().argmax(0)
    sign = torch.sign(u[idx, torch.arange(u.shape[1])])
    sign[sign == 0] = 1
    return u * sign


def fit_source(kind: str, data: Tensor | None, *, k: int | None = None, mean: str = "zero",
               scale: str = "unit", seed: int = 0, image_shape: Sequence[int] | None = None,
               fitted_on: str | None = None) -> Source:
    """A source of ``kind`` (module docstring) fitted on ``data`` (N, C, H, W) in [-1, 1].

    ``"pca"`` needs ``k <= N - 1`` (directions beyond the data's rank are not principal
    directions). ``"random"`` draws its frame from ``seed`` alone; ``data`` is read only for
    ``mean="data"`` or ``scale="data"``. ``fitted_on`` is recorded in the card.
    """
    shape = tuple(image_shape) if image_shape is not None else tuple(data.shape[1:])
    dim = math.prod(shape)
    k = _check_options(kind, k, mean, scale, dim)
    if kind == "gaussian":
        return Source(shape)
    needs_data = kind == "pca" or mean == "data" or scale == "data"
    if needs_data:
        if data is None or data.ndim != 4 or tuple(data.shape[1:]) != shape:
            raise DiffinvError(f"fitting a {kind} source (mean={mean}, scale={scale}) needs the "
                               f"training images of shape (N, {', '.join(map(str, shape))})")
        mu, cov = _moments(data)
    if kind == "pca":
        n = data.shape[0]
        if k > n - 1:
            raise DiffinvError(f"a pca source of k = {k} directions needs at least k + 1 = "
                               f"{k + 1} training images (the centred data have rank <= N - 1 = "
                               f"{n - 1})")
        evals, evecs = torch.linalg.eigh(cov)
        order = torch.argsort(evals, descending=True)[:k]
        basis = _fix_signs(evecs[:, order])
        spread = evals[order].clamp_min(0).sqrt()
    else:
        g = torch.Generator().manual_seed(int(seed))
        q, r = torch.linalg.qr(torch.randn(dim, k, generator=g, dtype=torch.float64))
        basis = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0,
                                                        torch.ones(k, dtype=torch.float64))
        spread = (torch.einsum("dk,de,ek->k", basis, cov, basis).clamp_min(0).sqrt()
                  if scale == "data" else None)
    scales = spread if scale == "data" else torch.ones(k, dtype=torch.float64)
    if scale == "data" and bool((scales <= 1e-8).any()):
        raise DiffinvError(f"the data have no spread along some of the {k} {kind} directions "
                           "(scale='data' would give a lower-rank source): lower k or use "
                           "scale='unit'")
    mvec = mu.reshape(shape) if mean == "data" else torch.zeros(shape, dtype=torch.float64)
    options: dict[str, Any] = {"mean": mean, "scale": scale}
    if kind == "random":
        options["seed"] = int(seed)
    if fitted_on:
        options["fitted_on"] = fitted_on
    return SubspaceSource(shape, mvec.float(), basis.float(), scales.float(), kind=kind,
                          options=options)


def source_from_card(card: dict[str, Any], tensors: dict[str, Tensor],
                     image_shape: Sequence[int]) -> Source:
    """The source a prior's card and its ``source.*`` tensors describe (what :meth:`Source.card`
    and :meth:`Source.tensors` wrote)."""
    if not isinstance(card, dict) or card.get("kind") not in SOURCE_KINDS:
        raise IntegrityError(f"the prior's source card {card!r} names no known source kind "
                             f"({', '.join(SOURCE_KINDS)})")
    kind = card["kind"]
    if kind == "gaussian":
        if tensors:
            raise IntegrityError(f"a full Gaussian source stores no tensors, but the file holds "
                                 f"{sorted(tensors)}")
        return Source(image_shape)
    want = {f"{PREFIX}{n}" for n in ("mean", "basis", "scales")}
    if set(tensors) != want:
        raise IntegrityError(f"a {kind} source needs the tensors {sorted(want)}, the file holds "
                             f"{sorted(tensors)}")
    src = SubspaceSource(image_shape, tensors[f"{PREFIX}mean"], tensors[f"{PREFIX}basis"],
                         tensors[f"{PREFIX}scales"], kind=kind,
                         options={k: v for k, v in card.items() if k not in ("kind", "dim", "k")})
    if card.get("k") is not None and int(card["k"]) != src.k:
        raise IntegrityError(f"the card says k = {card['k']}, the stored basis has {src.k} columns")
    return src
