"""Structural similarity (Wang, Bovik, Sheikh, Simoncelli 2004), per image, on the [0, 1] frame.

Settings (those of Wang et al., and of ``skimage.metrics.structural_similarity`` called with
``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1``):

* local statistics are weighted by a Gaussian window w of std sigma = 1.5 truncated at radius
  r = int(3.5 * sigma + 0.5) = 5 px (an 11 x 11 window, normalised to sum 1);
* with mu_u = w * u, sigma_u^2 = w * u^2 - mu_u^2 and sigma_uv = w * (u v) - mu_u mu_v
  (population moments, no N / (N - 1) correction), the SSIM map is

      S = (2 mu_u mu_v + C1)(2 sigma_uv + C2) / ((mu_u^2 + mu_v^2 + C1)(sigma_u^2 + sigma_v^2 + C2))

  with C1 = (K1 R)^2, C2 = (K2 R)^2, K1 = 0.01, K2 = 0.03, R = 1;
* the score of a channel is the mean of S over the pixels at least r px from the border (skimage
  crops that strip to avoid edge effects; since the window radius is also r, those pixels are
  exactly the 'valid' positions of the window, so no boundary padding is ever involved);
* the score of a multi-channel image is the mean of its channel scores.

Images must be at least 11 x 11. Computed in float64 (float32 on devices without float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffinv.metrics.frame import check_pair, to_unit

SIGMA = 1.5
TRUNCATE = 3.5
K1, K2 = 0.01, 0.03
RADIUS = int(TRUNCATE * SIGMA + 0.5)
WINDOW = 2 * RADIUS + 1


def gaussian_window_1d(sigma: float = SIGMA, radius: int = RADIUS,
                       dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian taps exp(-k^2 / (2 sigma^2)), k = -radius..radius."""
    k = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (k / sigma) ** 2)
    return (g / g.sum()).to(dtype)


def _filter_valid(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filtering of (B, C, H, W) at the valid window positions only."""
    c = z.shape[1]
    kh = g.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    kw = g.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    return F.conv2d(F.conv2d(z, kh, groups=c), kw, groups=c)


def ssim_map(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """SSIM map at the valid window positions: (B, C, H - 10, W - 10), on the [0, 1] frame."""
    check_pair(x, ref, min_size=WINDOW)
    dtype = torch.float32 if x.device.type == "mps" else torch.float64
    u, v = to_unit(x).to(dtype), to_unit(ref).to(dtype)
    g = gaussian_window_1d(dtype=dtype).to(x.device)
    # One filtering pass over the five moment images.
    stacked = torch.cat([u, v, u * u, v * v, u * v], dim=1)
    m = _filter_valid(stacked, g)
    mu_u, mu_v, uu, vv, uv = m.chunk(5, dim=1)
    var_u = uu - mu_u * mu_u
    var_v = vv - mu_v * mu_v
    cov = uv - mu_u * mu_v
    c1, c2 = K1**2, K2**2  # data range R = 1 on the [0, 1] frame
    num = (2 * mu_u * mu_v + c1) * (2 * cov + c2)
    den = (mu_u * mu_u + mu_v * mu_v + c1) * (var_u + var_v + c2)
    return num / den


def ssim(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of ``x`` against ``ref`` ((B, C, H, W) in [-1, 1]); shape (B,).

    Mean over channels and valid positions of :func:`ssim_map`; 1 for identical images.
    """
    s = ssim_map(x, ref)
    return s.flatten(1).mean(dim=1).to(x.dtype)
