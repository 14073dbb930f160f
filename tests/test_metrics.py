"""PSNR / SSIM against scikit-image, FID's Fréchet distance against closed forms, the metric
registry, the perceptual-network building blocks and bad-input errors.

Network-free except where marked ``assets``; see test_metrics_reference.py for the ports checked
against the original packages.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import skimage.data
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import diffinv.metrics as M
from diffinv.errors import (
    DiffinvError,
    IntegrityError,
    MissingAssetError,
    NonFiniteError,
    ShapeError,
    UnknownNameError,
)
from diffinv.metrics import fid as F
from diffinv.metrics.frame import MetricArgumentError
from diffinv.metrics.perceptual import BlurPool, unit_normalize
from diffinv.metrics.ssim import ssim_map

torch.set_num_threads(1)


def _frame01(x: torch.Tensor) -> np.ndarray:
    """The [0, 1] frame computed independently of diffinv: clip((x + 1) / 2, 0, 1)."""
    return np.clip((x.double().numpy() + 1.0) / 2.0, 0.0, 1.0)


def _sk_ssim(x: torch.Tensor, ref: torch.Tensor) -> np.ndarray:
    """skimage SSIM with the Wang et al. settings, image by image, on the clipped [0, 1] frame."""
    out = []
    for a, b in zip(_frame01(x), _frame01(ref), strict=True):
        kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
        if a.shape[0] == 1:
            out.append(structural_similarity(b[0], a[0], **kw))
        else:
            out.append(structural_similarity(b, a, channel_axis=0, **kw))
    return np.array(out)


def _sk_psnr(x: torch.Tensor, ref: torch.Tensor) -> np.ndarray:
    return np.array([peak_signal_noise_ratio(b, a, data_range=1.0)
                     for a, b in zip(_frame01(x), _frame01(ref), strict=True)])


def _rand(*shape: int, g: torch.Generator) -> torch.Tensor:
    """Uniform images in [-1, 1]."""
    return torch.rand(*shape, generator=g) * 2 - 1


def _structured_pairs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Natural images (gray and RGB) with noise, blur and a shift; plus random images."""
    g = torch.Generator().manual_seed(0)
    cam = torch.from_numpy(skimage.data.camera()[100:164, 200:264] / 255.0).float()
    cam = (cam * 2 - 1)[None, None]
    ast = torch.from_numpy(skimage.data.astronaut()[60:108, 180:228] / 255.0).float()
    ast = (ast.permute(2, 0, 1) * 2 - 1)[None]
    blur = torch.nn.functional.avg_pool2d(cam, 3, 1, 1, count_include_pad=False)
    pairs = [
        (cam + 0.1 * torch.randn(cam.shape, generator=g), cam),
        (blur, cam),
        (cam.roll(1, -1), cam),
        (ast + 0.2 * torch.randn(ast.shape, generator=g), ast),
        (ast.flip(-1), ast),
        (_rand(3, 1, 32, 32, g=g), _rand(3, 1, 32, 32, g=g)),
        (_rand(2, 3, 32, 32, g=g), _rand(2, 3, 32, 32, g=g)),
        # values outside [-1, 1] are clipped by both sides of the comparison
        (1.3 * torch.randn(2, 1, 24, 20, generator=g), _rand(2, 1, 24, 20, g=g)),
    ]
    return pairs


@pytest.mark.parametrize("k", range(8))
def test_ssim_matches_skimage(k):
    x, ref = _structured_pairs()[k]
    np.testing.assert_allclose(M.ssim(x, ref).double().numpy(), _sk_ssim(x, ref), atol=1e-4)
    # and in float64 to round-off
    np.testing.assert_allclose(M.ssim(x.double(), ref.double()).numpy(),
                               _sk_ssim(x.double(), ref.double()), atol=1e-12)


@pytest.mark.parametrize("k", range(8))
def test_psnr_matches_skimage(k):
    x, ref = _structured_pairs()[k]
    np.testing.assert_allclose(M.psnr(x.double(), ref.double()).numpy(),
                               _sk_psnr(x.double(), ref.double()), rtol=1e-12)
    np.testing.assert_allclose(M.psnr(x, ref).double().numpy(), _sk_psnr(x, ref), atol=1e-4)


def test_psnr_closed_form_and_data_range():
    ref = torch.full((2, 1, 8, 8), -1.0)
    x = ref.clone()
    x[0] += 0.2  # +0.1 on the [0, 1] frame everywhere: MSE 0.01 -> 20 dB
    torch.testing.assert_close(M.psnr(x, ref)[0], torch.tensor(20.0))
    assert torch.isinf(M.psnr(x, ref)[1])  # identical image
    expected = torch.tensor(float(20 + 20 * np.log10(2)))
    torch.testing.assert_close(M.psnr(x, ref, data_range=2.0)[0], expected)
    torch.testing.assert_close(M.mse(x, ref), torch.tensor([0.01, 0.0]))


def test_ssim_identity_and_symmetry():
    g = torch.Generator().manual_seed(1)
    x, y = _rand(2, 3, 16, 16, g=g), _rand(2, 3, 16, 16, g=g)
    torch.testing.assert_close(M.ssim(x, x), torch.ones(2))
    torch.testing.assert_close(M.ssim(x, y), M.ssim(y, x))
    assert ssim_map(x, y).shape == (2, 3, 6, 6)


@pytest.mark.parametrize("name", ["psnr", "ssim", "mse"])
def test_batching_does_not_change_per_image_values(name):
    g = torch.Generator().manual_seed(2)
    x, y = _rand(5, 1, 32, 32, g=g), _rand(5, 1, 32, 32, g=g)
    metric = M.get_metric(name)
    whole = metric(x, y)
    assert whole.shape == (5,)
    one_by_one = torch.cat([metric(x[i:i + 1], y[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(whole, one_by_one, rtol=0, atol=0)


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("fn", [M.psnr, M.ssim, M.mse])
def test_bad_input_errors(fn):
    x = torch.zeros(2, 1, 16, 16)
    with pytest.raises(ShapeError, match="B, C, H, W"):
        fn(x[0], x[0])
    with pytest.raises(ShapeError, match="2 images but ref has 3"):
        fn(x, torch.zeros(3, 1, 16, 16))
    with pytest.raises(ShapeError, match="same"):
        fn(x, torch.zeros(2, 3, 16, 16))
    bad = x.clone()
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN"):
        fn(bad, x)
    with pytest.raises(NonFiniteError, match="ref"):
        fn(x, bad)
    with pytest.raises(ShapeError, match="no images"):
        fn(x[:0], x[:0])


def test_ssim_too_small_and_psnr_bad_range():
    with pytest.raises(ShapeError, match="at least 11x11"):
        M.ssim(torch.zeros(1, 1, 10, 32), torch.zeros(1, 1, 10, 32))
    with pytest.raises(MetricArgumentError, match="data_range"):
        M.psnr(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), data_range=0)


# ------------------------------------------------------------------------------------- registry
def test_registry_lookup_and_unknown_name():
    for name in ("psnr", "ssim", "st-lpips", "lpips-alex", "digit-acc", "digit-agree",
                 "digit-conf", "mse"):
        assert M.get_metric(name).name == name
    assert M.get_metric("psnr").higher_is_better and not M.get_metric("st-lpips").higher_is_better
    with pytest.raises(UnknownNameError, match="known: .*psnr.*ssim.*st-lpips"):
        M.get_metric("lpips")
    with pytest.raises(DiffinvError, match="set metric"):
        M.get_metric("fid")


def test_digit_acc_needs_labels():
    x = torch.zeros(2, 1, 32, 32)
    with pytest.raises(MetricArgumentError, match="labels"):
        M.get_metric("digit-acc")(x, x)


def test_lpips_alex_without_files_says_how(monkeypatch):
    monkeypatch.delenv("DIFFINV_LPIPS_ALEX_BACKBONE", raising=False)
    with pytest.raises(MissingAssetError, match="DIFFINV_LPIPS_ALEX_BACKBONE"):
        M.lpips_alex(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32))


# ---------------------------------------------------------------------------- Fréchet distance
def _random_spd(d: int, rng: np.random.Generator, cond: float = 50.0) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (q * np.geomspace(1.0, 1.0 / cond, d)) @ q.T


def test_frechet_commuting_closed_form():
    """Same eigenvectors: FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    rng = np.random.default_rng(3)
    d = 40
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.0, 2.0, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = F.frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_2d_non_commuting_closed_form():
    """For 2x2 SPD S1, S2: Tr (S1 S2)^{1/2} = sqrt(tr(S1 S2) + 2 sqrt(det(S1 S2)))."""
    rng = np.random.default_rng(4)
    for _ in range(20):
        s1, s2 = _random_spd(2, rng, 10.0) * 2.0, _random_spd(2, rng, 30.0)
        mu1, mu2 = rng.normal(size=2), rng.normal(size=2)
        p = s1 @ s2
        tr_sqrt = np.sqrt(np.trace(p) + 2 * np.sqrt(np.linalg.det(p)))
        expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
        assert F.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_frechet_1d_and_identity_and_scipy():
    assert F.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1)
    rng = np.random.default_rng(5)
    s1, s2 = _random_spd(64, rng), _random_spd(64, rng)
    mu = rng.normal(size=64)
    assert F.frechet_distance(mu, s1, mu, s1) == pytest.approx(0.0, abs=1e-9)
    ref = np.trace(s1) + np.trace(s2) - 2 * np.real(np.trace(scipy.linalg.sqrtm(s1 @ s2)))
    assert F.frechet_distance(mu, s1, mu, s2) == pytest.approx(ref, rel=1e-8)


def test_fid_from_features_uses_unbiased_gaussian_fit():
    """Samples whose sample mean and covariance are exactly (mu, S): FID is the closed form."""
    rng = np.random.default_rng(6)
    d, n = 5, 50

    def exact_samples(mu, s):
        z = rng.normal(size=(n, d))
        z -= z.mean(0)
        z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False)).T)  # sample cov = I
        return mu + z @ np.linalg.cholesky(s).T

    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    f1, f2 = exact_samples(mu1, (q * a) @ q.T), exact_samples(mu2, (q * b) @ q.T)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert F.fid_from_features(f1, torch.from_numpy(f2)) == pytest.approx(expected, rel=1e-8)
    assert F.fid_from_features(f1, f1) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("n1,n2", [(7, 12), (12, 40), (40, 50)])
def test_fid_from_features_low_rank_route_equals_covariance_route(n1, n2):
    """N < D uses the nuclear-norm identity; it agrees with the D x D eigen route (whose clipped
    null-space eigenvalues leave ~1e-8 relative round-off when a covariance is singular)."""
    rng = np.random.default_rng(n1)
    d = 30
    f1 = rng.normal(size=(n1, d)) @ rng.normal(size=(d, d))
    f2 = rng.normal(size=(n2, d)) + 0.5
    via_stats = F.frechet_distance(*F.feature_statistics(f1), *F.feature_statistics(f2))
    assert F.fid_from_features(f1, f2) == pytest.approx(via_stats, rel=1e-7)


def test_fid_from_features_singular_closed_forms():
    """N < D (singular covariances): a shift gives |c|^2; scaling by 2 gives |mu|^2 + Tr S."""
    rng = np.random.default_rng(8)
    f = rng.normal(size=(9, 50)) * rng.uniform(0.1, 3, 50) + rng.normal(size=50)
    c = rng.normal(size=50)
    assert F.fid_from_features(f, f + c) == pytest.approx(c @ c, rel=1e-10)
    mu, s = F.feature_statistics(f)
    assert F.fid_from_features(f, 2 * f) == pytest.approx(mu @ mu + np.trace(s), rel=1e-10)
    assert F.fid_from_features(f, f) == pytest.approx(0.0, abs=1e-10 * np.trace(s))


def test_fid_bad_input():
    with pytest.raises(ShapeError, match="at least 2"):
        F.fid_from_features(np.zeros((1, 4)), np.zeros((3, 4)))
    with pytest.raises(ShapeError, match="dimensions differ"):
        F.fid_from_features(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ShapeError, match="feature matrix"):
        F.fid_from_features(np.zeros(4), np.zeros((3, 4)))
    with pytest.raises(NonFiniteError):
        F.fid_from_features(np.full((3, 4), np.nan), np.zeros((3, 4)))
    with pytest.raises(ShapeError, match="inconsistent"):
        F.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_inception_input_scaling():
    """Gray -> RGB, bilinear to 299, then u * 255/128 - 1 (the TF graph's input range)."""
    x = torch.tensor([-1.0, 1.0, 0.0]).view(3, 1, 1, 1).expand(3, 1, 32, 32)
    z = F.inception_input(x)
    assert z.shape == (3, 3, 299, 299)
    torch.testing.assert_close(z[:, :, 0, 0], torch.tensor([-1.0, 0.9921875, 255 / 256 - 1])
                               .view(3, 1).expand(3, 3))
    ramp = torch.linspace(-1, 1, 32).view(1, 1, 1, 32).expand(1, 1, 32, 32)
    expect = torch.nn.functional.interpolate((ramp + 1) / 2, size=(299, 299), mode="bilinear",
                                             align_corners=False) * 255 / 128 - 1
    torch.testing.assert_close(F.inception_input(ramp)[:, :1], expect)


def test_reference_statistics_cache(tmp_path, monkeypatch):
    """The .npz cache is reused for the same images and recomputed for others."""
    calls = []

    def fake_features(images, batch_size=50, progress=False, device=None):
        calls.append(images.shape[0])
        g = torch.Generator().manual_seed(int(images.sum().item() * 1000) % 2**31)
        return torch.randn(images.shape[0], 8, generator=g)

    monkeypatch.setattr(F, "inception_features", fake_features)
    imgs = torch.rand(4, 1, 8, 8) * 2 - 1
    path = tmp_path / "ref" / "stats.npz"
    s1 = F.reference_statistics(imgs, cache=path)
    assert path.is_file() and calls == [4]
    s2 = F.reference_statistics(imgs, cache=path)
    assert calls == [4]  # served from the cache
    np.testing.assert_array_equal(s1["mu"], s2["mu"])
    np.testing.assert_array_equal(s1["sigma"], s2["sigma"])
    assert s2["n"] == 4 and s2["fingerprint"] == F.images_fingerprint(imgs)
    F.reference_statistics(imgs.flip(-1), cache=path)
    assert calls == [4, 4]  # other images (same N): recomputed and rewritten
    assert F.load_statistics(path)["fingerprint"] == F.images_fingerprint(imgs.flip(-1))
    F.reference_statistics(imgs[:3], cache=path)
    assert calls == [4, 4, 3]
    assert F.load_statistics(path)["n"] == 3
    # fid against cached statistics
    d = F.fid_score(imgs, F.load_statistics(path))
    assert d >= 0.0
    (tmp_path / "junk.npz").write_bytes(b"not an npz")
    with pytest.raises(IntegrityError):
        F.load_statistics(tmp_path / "junk.npz")
    with pytest.raises(MissingAssetError):
        F.load_statistics(tmp_path / "absent.npz")


# --------------------------------------------------------------------- perceptual building blocks
def test_blurpool_binomial_and_constant_preserving():
    bp = BlurPool(2)
    binomial = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    torch.testing.assert_close(bp.filt[0, 0], binomial)
    y = bp(torch.full((1, 2, 9, 9), 0.7))
    assert y.shape == (1, 2, 6, 6)  # reflection pad 2, 3x3 kernel, stride 2
    torch.testing.assert_close(y, torch.full_like(y, 0.7))


def test_unit_normalize():
    f = torch.randn(2, 5, 3, 3)
    n = unit_normalize(f).square().sum(1)
    torch.testing.assert_close(n, torch.ones_like(n), rtol=1e-5, atol=1e-5)
