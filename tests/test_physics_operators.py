"""Forward operators: linearity, adjointness, SVDs, agreement with references, per-image params."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

from diffinv.errors import DiffinvError, NonFiniteError, ShapeError, UnknownNameError
from diffinv.physics import (
    AvgPoolSR,
    BicubicSR,
    Blur,
    GaussianBlur,
    MotionBlur,
    NonlinearBlur,
    PhaseRetrieval,
    RotationBlur,
    ZoomBlur,
    blur,
    gaussian_kernel,
    list_operators,
    make_operator,
    motion_kernel,
)
from diffinv.seeding import image_generators

LINEAR = ["identity", "gaussian-blur", "motion-blur", "sr-avgpool", "sr-bicubic",
          "inpaint-random", "inpaint-box", "rotation-blur", "zoom-blur", "blind-gaussian-blur",
          "blind-motion-blur", "blind-rotation-blur", "blind-zoom-blur"]
SVD_OPS = ["identity", "gaussian-blur", "motion-blur", "sr-avgpool", "inpaint-random",
           "inpaint-box", "blind-gaussian-blur", "blind-motion-blur"]


def _setup(name: str, shape=(3, 2, 32, 32), seed=0, dtype=torch.float64, **settings):
    op = make_operator(name, **settings).to(dtype)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=dtype) * 2 - 1
    params = op.draw_params(image_generators(seed, range(shape[0])), shape[1:], dtype=dtype)
    return op, x, params, g


def test_registry_lists_every_operator_and_rejects_unknown():
    names = [n for n, _ in list_operators()]
    assert set(LINEAR) <= set(names)
    assert {"nonlinear-blur", "phase-retrieval", "bkse-blur", "blur"} <= set(names)
    assert all(isinstance(d, str) and d and "\n" not in d for _, d in list_operators())
    with pytest.raises(UnknownNameError) as e:
        make_operator("motion-blurr")
    assert "motion-blur" in str(e.value) and "zoom-blur" in str(e.value)
    with pytest.raises(DiffinvError, match="does not take"):
        make_operator("gaussian-blur", sigma=2.0)


@pytest.mark.parametrize("name", LINEAR)
def test_linearity_and_adjoint(name):
    op, x, p, g = _setup(name)
    x2 = torch.rand(x.shape, generator=g, dtype=x.dtype) * 2 - 1
    a, b = 0.7, -1.3
    torch.testing.assert_close(op(a * x + b * x2, **p), a * op(x, **p) + b * op(x2, **p),
                               rtol=1e-10, atol=1e-10)
    y = torch.randn(op.out_shape(x.shape), generator=g, dtype=x.dtype)
    lhs = (op(x, **p) * y).sum()
    rhs = (x * op.adjoint(y, **p)).sum()
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))


@pytest.mark.parametrize("name", ["rotation-blur", "zoom-blur", "sr-bicubic", "gaussian-blur"])
def test_adjoint_float32_precision(name):
    op, x, p, g = _setup(name, dtype=torch.float32)
    y = torch.randn(op.out_shape(x.shape), generator=g)
    lhs, rhs = (op(x, **p) * y).sum(), (x * op.adjoint(y, **p)).sum()
    assert abs(lhs - rhs) <= 1e-5 * (op(x, **p).norm() * y.norm())


@pytest.mark.parametrize("name", SVD_OPS)
def test_svd_reproduces_forward_adjoint_and_is_orthogonal(name):
    op, x, p, g = _setup(name)
    s = op.svd(x.shape, **p).to(dtype=torch.float64)
    y = torch.randn(op.out_shape(x.shape), generator=g, dtype=x.dtype)
    torch.testing.assert_close(s.forward(x), op(x, **p), rtol=0, atol=1e-12)
    torch.testing.assert_close(s.adjoint(y), op.adjoint(y, **p), rtol=0, atol=1e-12)
    c = s.vt(x)
    assert c.shape == (x.shape[0], x[0].numel())
    torch.testing.assert_close(s.v(c), x, rtol=0, atol=1e-12)  # V V^T = I
    torch.testing.assert_close(c.norm(dim=1), x.flatten(1).norm(dim=1))  # V^T is an isometry
    d = torch.randn(c.shape, generator=g, dtype=x.dtype)
    torch.testing.assert_close((s.vt(x) * d).sum(), (x * s.v(d)).sum())  # v is vt's transpose
    cu = s.ut(y)
    torch.testing.assert_close(s.u(cu), y, rtol=0, atol=1e-12)
    torch.testing.assert_close(cu.norm(dim=1), y.flatten(1).norm(dim=1))
    assert (s.singulars() >= 0).all() and s.singulars().shape[-1] == y[0].numel()


def test_circular_blur_singular_values_are_fourier_magnitudes():
    k = gaussian_kernel(5, 1.2, dtype=torch.float64)
    H, W = 12, 10
    s = Blur(k).svd((1, 1, H, W)).singulars()[0]
    kpad = torch.zeros(H, W, dtype=torch.float64)
    kpad[:5, :5] = k
    expect = torch.fft.fft2(kpad).abs().flatten()
    torch.testing.assert_close(s.sort().values, expect.sort().values.to(s.dtype), atol=1e-6,
                               rtol=1e-6)


def test_avgpool_svd_singular_values_and_null_space():
    op = AvgPoolSR(factor=4)
    s = op.svd((2, 3, 16, 16))
    assert torch.allclose(s.singulars(), torch.full((1, 3 * 16), 0.25))
    x = torch.randn(2, 3, 16, 16)
    c = s.vt(x)
    c[:, s.m:] = 0  # keep only the observed directions: A^+ A x
    torch.testing.assert_close(s.v(c), op.adjoint(op(x)) * 16, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("boundary,mode", [("zero", "constant"), ("reflect", "mirror"),
                                           ("replicate", "nearest"), ("circular", "wrap")])
@pytest.mark.parametrize("ksize", [(5, 5), (3, 7)])
def test_blur_equals_scipy_convolve(boundary, mode, ksize):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 13, 11, generator=g, dtype=torch.float64)
    k = torch.rand(2, *ksize, generator=g, dtype=torch.float64)
    k = k / k.sum(dim=(1, 2), keepdim=True)
    y = blur(x, k, boundary)
    ref = np.stack([[ndi.convolve(x[i, c].numpy(), k[i].numpy(), mode=mode) for c in range(3)]
                    for i in range(2)])
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-12)


def test_even_kernel_circular_fft_equals_padded_convolution():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 1, 12, 12, generator=g, dtype=torch.float64)
    k = torch.rand(4, 6, generator=g, dtype=torch.float64)
    k /= k.sum()
    xp = torch.cat([x] * 3, -1)
    xp = torch.cat([xp] * 3, -2)  # periodic tiling: zero-padded blur of the middle tile
    ref = blur(xp, k, "zero")[..., 12:24, 12:24]
    torch.testing.assert_close(blur(x, k, "circular"), ref)


def test_gaussian_kernel_matches_scipy_gaussian_filter():
    delta = np.zeros((9, 9))
    delta[4, 4] = 1
    ref = ndi.gaussian_filter(delta, sigma=1.5, truncate=4 / 1.5, mode="constant")
    np.testing.assert_allclose(gaussian_kernel(9, 1.5, dtype=torch.float64).numpy(), ref,
                               atol=1e-12)


@pytest.mark.parametrize("intensity", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("size", [9, 16, 31])
def test_motion_kernels_are_normalised_and_reproducible(intensity, size):
    for g1, g2 in zip(image_generators(7, range(5)), image_generators(7, range(5)), strict=True):
        k = motion_kernel(size, intensity, g1)
        assert k.shape == (size, size)
        assert (k >= 0).all()
        assert abs(k.sum().item() - 1) < 1e-12
        assert torch.equal(k, motion_kernel(size, intensity, g2))
    ks = [motion_kernel(size, intensity, g) for g in image_generators(8, range(2))]
    assert not torch.equal(*ks)


def test_motion_kernel_spread_grows_with_intensity():
    def spread(k):  # root-mean-square distance of the kernel mass from its centroid
        t = torch.arange(k.shape[0], dtype=k.dtype)
        yy, xx = torch.meshgrid(t, t, indexing="ij")
        my, mx = (k * yy).sum(), (k * xx).sum()
        return ((k * ((yy - my) ** 2 + (xx - mx) ** 2)).sum()).sqrt().item()

    mean = [np.mean([spread(motion_kernel(31, i, g)) for g in image_generators(0, range(20))])
            for i in (0.0, 0.5, 1.0)]
    assert mean[0] < mean[1] < mean[2]
    # intensity 0 is a straight line of length 0.3 (k - 1) = 9 px: rms spread ~ 9 / sqrt(12)
    assert abs(mean[0] - 9 / 12 ** 0.5) < 0.6


def test_bad_kernels_are_rejected():
    with pytest.raises(DiffinvError, match="sum to 1"):
        Blur(torch.ones(3, 3))
    k = torch.full((3, 3), 1 / 9.0)
    k[0, 0], k[0, 1] = -0.1, 1 / 9.0 + 0.1
    with pytest.raises(DiffinvError, match="negative"):
        Blur(k)
    with pytest.raises(NonFiniteError):
        Blur(torch.full((3, 3), float("nan")))
    with pytest.raises(DiffinvError, match="boundary"):
        Blur(torch.full((3, 3), 1 / 9.0), boundary="periodic")
    with pytest.raises(ShapeError):
        blur(torch.zeros(1, 1, 4, 4), torch.full((7, 7), 1 / 49.0), "circular")


def test_bicubic_matches_torch_antialias_in_the_interior():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 64, 48, generator=g, dtype=torch.float64)
    for s in (2, 4):
        y = BicubicSR(s)(x)
        ref = F.interpolate(x, scale_factor=1 / s, mode="bicubic", antialias=True,
                            align_corners=False)
        m = 2  # output pixels whose 4s-wide support stays inside the image
        torch.testing.assert_close(y[..., m:-m, m:-m], ref[..., m:-m, m:-m], atol=1e-12, rtol=0)
        assert torch.allclose(BicubicSR(s)(torch.ones(1, 1, 16, 16, dtype=torch.float64)),
                              torch.ones(1, 1, 16 // s, 16 // s, dtype=torch.float64))


def test_avgpool_is_block_mean():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = AvgPoolSR(2)(x)
    assert torch.equal(y, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))


@pytest.mark.parametrize("op", [RotationBlur(theta=20.0), ZoomBlur(z=1.3), ZoomBlur(z=0.8)])
def test_warp_blur_of_constant_is_constant(op):
    x = torch.full((2, 3, 17, 20), 0.37, dtype=torch.float64)
    torch.testing.assert_close(op(x), x)


@pytest.mark.parametrize("op,params", [(RotationBlur(theta=0.0), {}),
                                       (ZoomBlur(z=1.0), {}),
                                       (RotationBlur(blind=True), {"theta": torch.zeros(2)}),
                                       (ZoomBlur(blind=True), {"z": torch.ones(2)})])
def test_warp_blur_identity_at_zero_angle_and_unit_zoom(op, params):
    x = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(op(x, **params), x, atol=1e-9, rtol=0)


def test_single_rotation_by_90_degrees_is_rot90():
    x = torch.rand(1, 1, 9, 9, dtype=torch.float64)
    y = RotationBlur(theta=90.0, n=1)(x)
    assert min((y - torch.rot90(x, k, dims=(-2, -1))).abs().max().item() for k in (1, 3)) < 1e-9


def test_single_zoom_of_a_ramp_halves_its_slope():
    H = W = 15
    yy, xx = torch.meshgrid(torch.arange(H.__float__()), torch.arange(W.__float__()),
                            indexing="ij")
    ramp = (0.1 * (xx - 7) - 0.05 * (yy - 7)).double()[None, None]
    torch.testing.assert_close(ZoomBlur(z=2.0, n=1)(ramp), ramp / 2)


def test_rotation_blur_is_not_a_convolution():
    # a delta at the centre is preserved but one off-centre is smeared along an arc
    op = RotationBlur(theta=30.0)
    x = torch.zeros(1, 1, 31, 31, dtype=torch.float64)
    x[..., 15, 15] = 1
    assert op(x)[..., 15, 15].item() > 0.99
    x2 = torch.zeros_like(x)
    x2[..., 15, 28] = 1
    assert op(x2).max().item() < 0.5


def test_nonlinear_blur_saturates():
    op = make_operator("nonlinear-blur")
    p = op.draw_params(image_generators(0, range(2)), (1, 32, 32), dtype=torch.float64)
    assert p["kernels"].shape == (2, 4, 9, 9)
    white = torch.ones(2, 1, 32, 32, dtype=torch.float64)
    bright = torch.full_like(white, 0.5)  # (0.5 + 1)/2 * 1.5 > 1: clipped to white too
    assert torch.equal(op(white, **p), torch.ones_like(white))
    assert torch.equal(op(bright, **p), torch.ones_like(white))
    black = -white
    torch.testing.assert_close(op(black, **p), black, atol=1e-12, rtol=0)
    x = (torch.rand(2, 1, 32, 32, dtype=torch.float64) * 2 - 1).requires_grad_()
    y = op(x, **p)
    (g,) = torch.autograd.grad(y.sum(), x)
    kx = op.blur(x, p["kernels"])
    sat = kx > NonlinearBlur.saturation_level(1.5)
    assert sat.any() and (~sat).any()
    assert (y[sat] == 1).all()  # saturated pixels carry no information
    assert torch.allclose(y[~sat], 2 * (1.5 * (kx[~sat] + 1) / 2) - 1)
    assert g.abs().sum() > 0


def test_nonlinear_blur_linear_part_is_a_position_dependent_mixture():
    op = NonlinearBlur(grid=2)
    k = torch.zeros(1, 4, 9, 9, dtype=torch.float64)
    k[0, :, 4, 4] = 1  # all deltas -> K = identity
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(op.blur(x, k), x)


def test_phase_retrieval_matches_dps_definition():
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64) * 2 - 1
    y = PhaseRetrieval(2.0)(x)
    assert y.shape == (2, 1, 48, 48)
    xp = F.pad(x, (8, 8, 8, 8))
    ref = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(xp, dim=(-2, -1)), norm="ortho"),
                             dim=(-2, -1)).abs()
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(PhaseRetrieval()(-x), y)  # trivial ambiguity: global sign
    assert torch.allclose(y.pow(2).sum(dim=(1, 2, 3)), x.pow(2).sum(dim=(1, 2, 3)))  # Parseval


ALL_RANDOM = ["motion-blur", "inpaint-random", "inpaint-box", "nonlinear-blur",
              "blind-gaussian-blur", "blind-motion-blur", "blind-rotation-blur", "blind-zoom-blur"]


@pytest.mark.parametrize("name", ALL_RANDOM)
def test_per_image_parameters_same_in_batch_and_alone(name):
    op = make_operator(name)
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    batch = op.draw_params(image_generators(5, [10, 11, 12]), (1, 32, 32))
    y = op(x, **batch)
    for i in range(3):
        alone = op.draw_params(image_generators(5, [10 + i]), (1, 32, 32))
        for k in batch:
            assert torch.equal(batch[k][i:i + 1], alone[k])
        torch.testing.assert_close(op(x[i:i + 1], **alone), y[i:i + 1], atol=1e-6, rtol=1e-6)
    again = op.draw_params(image_generators(5, [10, 11, 12]), (1, 32, 32))
    assert all(torch.equal(batch[k], again[k]) for k in batch)
    other = op.draw_params(image_generators(6, [10, 11, 12]), (1, 32, 32))
    assert any(not torch.equal(batch[k], other[k]) for k in batch)


def test_blind_parameter_laws():
    n = 400
    gens = image_generators(0, range(n))
    std = GaussianBlur(blind=True).draw_params(gens, (1, 8, 8))["std"]
    theta = RotationBlur(blind=True).draw_params(gens, (1, 8, 8))["theta"]
    z = ZoomBlur(blind=True).draw_params(gens, (1, 8, 8))["z"]
    for v, lo, hi in ((std, 1.0, 2.0), (theta, 5.0, 25.0), (z, 1.1, 1.4)):
        assert v.shape == (n,) and v.min() >= lo and v.max() <= hi
        se = (hi - lo) / 12 ** 0.5 / n ** 0.5  # uniform mean: standard error
        assert abs(v.mean().item() - (lo + hi) / 2) < 4 * se


GRAD_OPS = ["identity", "gaussian-blur", "motion-blur", "sr-avgpool", "sr-bicubic",
            "inpaint-random", "inpaint-box", "rotation-blur", "zoom-blur", "nonlinear-blur",
            "phase-retrieval"]


def _small(name):
    """Settings that fit 8x8 test images."""
    if "gaussian" in name or "motion" in name or "nonlinear" in name:
        return {"size": 3}
    return {"sr-avgpool": {"factor": 2}, "sr-bicubic": {"factor": 2},
            "inpaint-box": {"box": 3, "margin": 1}}.get(name, {})


@pytest.mark.parametrize("name", GRAD_OPS)
def test_gradcheck_in_x(name):
    op, x, p, _ = _setup(name, shape=(2, 1, 8, 8), **_small(name))
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: op(t, **p), (x,))


@pytest.mark.parametrize("name,key", [("blind-gaussian-blur", "std"),
                                      ("blind-motion-blur", "kernel"),
                                      ("blind-rotation-blur", "theta"),
                                      ("blind-zoom-blur", "z"),
                                      ("nonlinear-blur", "kernels")])
def test_gradcheck_in_blind_parameters(name, key):
    op, x, p, _ = _setup(name, shape=(2, 1, 8, 8), **_small(name))
    theta = p[key].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: op(x, **{**p, key: t}), (theta,))


@pytest.mark.parametrize("name", ["rotation-blur", "zoom-blur", "sr-bicubic", "blind-motion-blur"])
def test_adjoint_is_differentiable(name):
    op, x, p, g = _setup(name, shape=(1, 1, 8, 8), **_small(name))
    y = torch.randn(op.out_shape(x.shape), generator=g, dtype=x.dtype, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: op.adjoint(t, **p), (y,))


def test_shared_parameters_broadcast_over_the_batch():
    x = torch.rand(3, 2, 16, 16, dtype=torch.float64)
    k = gaussian_kernel(5, 1.0, dtype=torch.float64)
    op = MotionBlur(size=5)
    torch.testing.assert_close(op(x, kernel=k), op(x, kernel=k.expand(3, 5, 5)))
    torch.testing.assert_close(op(x, kernel=k), Blur(k).to(torch.float64)(x))
    rot = RotationBlur(blind=True)
    torch.testing.assert_close(rot(x, theta=torch.tensor(10.0)), RotationBlur(theta=10.0)(x))
    with pytest.raises(ShapeError, match="dimensions"):
        op(x, kernel=k[None, None])


def test_bad_inputs_raise_clear_errors():
    op = make_operator("sr-avgpool")
    with pytest.raises(ShapeError, match="divisible"):
        op(torch.zeros(1, 1, 30, 30))
    with pytest.raises(ShapeError):
        op.adjoint(torch.zeros(1, 1, 8))  # not (B, C, H, W)
    with pytest.raises(NonFiniteError):
        op(torch.full((1, 1, 32, 32), float("nan")))
    with pytest.raises(ShapeError):
        make_operator("phase-retrieval").check_measurement(torch.zeros(1, 1, 47, 47))
    with pytest.raises(DiffinvError, match="not linear"):
        make_operator("phase-retrieval").adjoint(torch.zeros(1, 1, 48, 48))
    blind = make_operator("blind-rotation-blur")
    with pytest.raises(DiffinvError, match="needs parameter"):
        blind(torch.zeros(1, 1, 8, 8))
    with pytest.raises(DiffinvError, match="unknown parameter"):
        make_operator("gaussian-blur")(torch.zeros(1, 1, 8, 8), theta=torch.ones(1))
    with pytest.raises(ShapeError, match="leading size"):
        blind(torch.zeros(2, 1, 8, 8), theta=torch.ones(3))
    inp = make_operator("inpaint-random")
    with pytest.raises(ShapeError, match="mask"):
        inp(torch.zeros(1, 1, 8, 8), mask=torch.ones(1, 1, 4, 4))
    with pytest.raises(DiffinvError, match="intensity"):
        MotionBlur(intensity=1.5)
    with pytest.raises(DiffinvError, match="p must be"):
        make_operator("inpaint-random", p=1.2)
    with pytest.raises(ShapeError, match="does not fit"):
        make_operator("inpaint-box").draw_params(image_generators(0, [0]), (1, 16, 16))
    with pytest.raises(DiffinvError, match="SVD"):
        make_operator("rotation-blur").svd((1, 1, 8, 8))
    with pytest.raises(DiffinvError, match="circular"):
        make_operator("gaussian-blur", boundary="reflect").svd((1, 1, 8, 8))


def test_operators_run_on_any_channel_count_and_size():
    for name in LINEAR + ["nonlinear-blur", "phase-retrieval"]:
        op, x, p, _ = _setup(name, shape=(2, 3, 24, 40), dtype=torch.float32)
        y = op(x, **p)
        assert y.shape == op.out_shape(x.shape) and torch.isfinite(y).all()
