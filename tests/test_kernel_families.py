"""Kernel families for the kernels users meet (issue 42): laws, validity, measured properties."""

from __future__ import annotations

import math

import pytest
import torch

from diffinv.errors import DiffinvError, UnknownNameError
from diffinv.physics import gaussian_kernel, make_operator, measure
from diffinv.physics.kernel_families import FAMILIES, WIDE_FAMILIES, FamilyBlur, make_family
from diffinv.physics.kernels import (
    airy_kernel,
    disk_kernel,
    integrated_gaussian_kernel,
    motion_kernel,
)
from diffinv.seeding import image_generators

OPERATORS = {"motion-wide": "blind-motion-blur-wide", "gaussian-wide": "blind-gaussian-blur-wide",
             "gaussian-anisotropic": "blind-anisotropic-gaussian-blur", "airy": "blind-airy-blur",
             "disk": "blind-defocus-blur"}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_every_wide_family_is_registered_as_a_blind_operator():
    assert set(WIDE_FAMILIES) == set(OPERATORS) and set(WIDE_FAMILIES) <= set(FAMILIES)
    for fam, name in OPERATORS.items():
        op = make_operator(name)
        assert isinstance(op, FamilyBlur) and op.blind and op.family.name == fam
        assert op.required_params == ("kernel",) and op.config()["size"] == 9


@pytest.mark.parametrize("family", WIDE_FAMILIES)
@pytest.mark.parametrize("size", [3, 9, 11])
def test_kernels_are_psfs_of_the_stated_size(family, size):
    fam = make_family(family)
    for seed in range(25):
        k = fam.draw(size, _gen(seed))
        assert k.shape == (size, size) and k.dtype == torch.float64
        assert torch.isfinite(k).all() and (k >= 0).all()
        assert abs(k.sum().item() - 1) < 1e-12


@pytest.mark.parametrize("family", WIDE_FAMILIES)
def test_kernels_are_reproducible_from_the_seed(family):
    fam = make_family(family)
    a = [fam.draw(9, _gen(s)) for s in range(6)]
    b = [fam.draw(9, _gen(s)) for s in range(6)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    for i in range(6):  # different seeds, different kernels
        assert all(not torch.equal(a[i], a[j]) for j in range(i + 1, 6))


@pytest.mark.parametrize("family", WIDE_FAMILIES)
def test_operator_draws_are_batch_independent_and_seeded(family):
    op = make_operator(OPERATORS[family])
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    batch = op.draw_params(image_generators(5, [10, 11, 12]), (1, 16, 16))["kernel"]
    assert batch.shape == (3, 9, 9)
    y = op(x, kernel=batch)
    for i in range(3):
        alone = op.draw_params(image_generators(5, [10 + i]), (1, 16, 16))["kernel"]
        assert torch.equal(batch[i:i + 1], alone)
        torch.testing.assert_close(op(x[i:i + 1], kernel=alone), y[i:i + 1])
    other = op.draw_params(image_generators(6, [10, 11, 12]), (1, 16, 16))["kernel"]
    assert not torch.equal(batch, other)


@pytest.mark.parametrize("name,settings,match", [
    ("blind-motion-blur-wide", {"intensity_range": (0.5, 1.5)}, "intensity_range"),
    ("blind-motion-blur-wide", {"length_range": (-0.1, 0.5)}, "length_range"),
    ("blind-motion-blur-wide", {"length_range": (0.5, 1.2)}, "length_range"),
    ("blind-motion-blur-wide", {"width_range": (0.3, 0.2)}, "low <= high"),
    ("blind-gaussian-blur-wide", {"std_range": (0.0, 1.0)}, "std_range"),
    ("blind-gaussian-blur-wide", {"std_range": (0.5, math.inf)}, "std_range"),
    ("blind-anisotropic-gaussian-blur", {"ratio_range": (0.5, 1.2)}, "ratio_range"),
    ("blind-anisotropic-gaussian-blur", {"ratio_range": (0.0, 0.5)}, "ratio_range"),
    ("blind-airy-blur", {"radius_range": (math.nan, 1.0)}, "radius_range"),
    ("blind-airy-blur", {"radius_range": (1.0,)}, "pair"),
    ("blind-defocus-blur", {"radius_range": "big"}, "pair"),
    ("blind-defocus-blur", {"radius_range": (-1.0, 2.0)}, "radius_range"),
    ("blind-defocus-blur", {"size": 0}, "kernel size"),
])
def test_out_of_range_parameters_are_refused(name, settings, match):
    with pytest.raises(DiffinvError, match=match):
        make_operator(name, **settings)


def test_bad_kernel_arguments_are_refused():
    g = _gen(0)
    for call, match in [(lambda: airy_kernel(9, 0.0), "Airy radius"),
                        (lambda: disk_kernel(9, -1.0), "disk radius"),
                        (lambda: integrated_gaussian_kernel(9, 1.0, 0.0), "minor-axis std"),
                        (lambda: integrated_gaussian_kernel(9, 1.0, angle=math.nan), "angle"),
                        (lambda: motion_kernel(9, 0.5, g, length=-1.0), "path length"),
                        (lambda: motion_kernel(9, 0.5, g, width=-0.1), "pen width")]:
        with pytest.raises(DiffinvError, match=match):
            call()
    with pytest.raises(UnknownNameError):
        make_family("zernike")
    with pytest.raises(DiffinvError, match="does not take"):
        make_family("airy", std_range=(1, 2))


def test_operators_rebuild_from_their_config():
    op = make_operator("blind-airy-blur", radius_range=(1, 2), size=7)
    cfg = {k: v for k, v in op.config().items() if k != "blind"}
    assert cfg["radius_range"] == [1.0, 2.0]
    again = make_operator("blind-airy-blur", **cfg)
    assert again.config() == op.config()
    gens = image_generators(0, [0])
    assert torch.equal(op.draw_params(gens, (1, 16, 16))["kernel"],
                       again.draw_params(image_generators(0, [0]), (1, 16, 16))["kernel"])


# ---------------------------------------------------------------- measured properties
def _sheppard(std: float, terms: int = 6) -> float:
    """E[round(X)^2] for X ~ N(0, std^2): the second moment of the pixel-integrated Gaussian on an
    infinite grid, by the Fourier series of the rounding error (Sheppard's correction plus its
    exponentially small remainder)."""
    return std ** 2 + 1 / 12 + sum((-1) ** m * math.exp(-2 * math.pi ** 2 * m * m * std ** 2)
                                   * (4 * std ** 2 + 1 / (math.pi ** 2 * m * m))
                                   for m in range(1, terms + 1))


@pytest.mark.parametrize("std", [0.3, 0.5, 1.0, 2.0])
def test_integrated_gaussian_second_moment_is_exact(std):
    k = integrated_gaussian_kernel(41, std)  # window +-20 px: truncation below 1e-20
    t = torch.arange(41, dtype=torch.float64) - 20
    mx = (k.sum(0) * t ** 2).sum().item()
    my = (k.sum(1) * t ** 2).sum().item()
    want = _sheppard(std)
    # the pixel integrals are exact to ~1e-13 (composite Gauss-Legendre)
    assert abs(mx - want) < 1e-8 and abs(my - want) < 1e-8
    # the discretisation's own effect: |moment - std^2| is at most 1/12 + the first correction
    assert abs(mx - std ** 2) <= 1 / 12 + math.exp(-2 * math.pi ** 2 * std ** 2) * (
        4 * std ** 2 + 1 / math.pi ** 2)
    if std == 0.3:  # sampling at pixel centres instead misses most of a sub-pixel width
        sampled = gaussian_kernel(41, std, dtype=torch.float64)
        assert (sampled.sum(0) * t ** 2).sum().item() < 0.1 * std ** 2


def test_anisotropic_gaussian_covariance_and_axes():
    s1, s2, a = 2.0, 0.8, math.pi / 6
    k = integrated_gaussian_kernel(41, s1, s2, a)
    t = torch.arange(41, dtype=torch.float64) - 20
    y, x = torch.meshgrid(t, t, indexing="ij")  # rows are y, columns are x
    cov = torch.tensor([[(k * x * x).sum(), (k * x * y).sum()],
                        [(k * x * y).sum(), (k * y * y).sum()]])
    R = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]],
                     dtype=torch.float64)
    # pixel integration adds the box's 1/12 per axis; the remainder ~ exp(-2 pi^2 0.8^2) * 3
    want = R @ torch.diag(torch.tensor([s1 ** 2, s2 ** 2], dtype=torch.float64)) @ R.T
    want = want + torch.eye(2, dtype=torch.float64) / 12
    assert (cov - want).abs().max() < 3 * math.exp(-2 * math.pi ** 2 * s2 ** 2)


def _drawn_params_ok(family: str, p: dict) -> bool:
    if family == "motion-wide":
        return 0 <= p["intensity"] <= 1 and 0 <= p["length"] <= 1 and 0.2 <= p["width"] <= 0.5
    if family == "gaussian-wide":
        return 0.3 <= p["std"] <= 2.5
    if family == "gaussian-anisotropic":
        return (0.3 <= p["std"] <= 2.5 and 0.2 <= p["std_minor"] / p["std"] <= 1
                and 0 <= p["angle"] < math.pi)
    return 0.5 <= p["radius"] <= (2.5 if family == "airy" else 4.0)


@pytest.mark.parametrize("family", WIDE_FAMILIES)
def test_draws_are_the_kernel_at_the_drawn_parameters(family):
    fam = make_family(family)
    for seed in range(8):
        g = _gen(seed)
        p = fam.draw_params(g)
        assert _drawn_params_ok(family, p)
        if family == "motion-wide":  # the path is drawn next from the same generator
            want = motion_kernel(9, p["intensity"], g, length=8 * p["length"], width=p["width"])
        else:
            want = fam.kernel(9, **p)
        assert torch.equal(fam.draw(9, _gen(seed)), want)


def test_wide_gaussian_std_is_log_uniform():
    fam = make_family("gaussian-wide")
    n = 2000
    stds = torch.tensor([fam.draw_params(_gen(s))["std"] for s in range(n)], dtype=torch.float64)
    assert stds.min() >= 0.3 and stds.max() <= 2.5
    u = torch.log(stds / 0.3) / math.log(2.5 / 0.3)  # U(0, 1) if log-uniform
    assert abs(u.mean().item() - 0.5) < 4 / math.sqrt(12 * n)
    assert abs((u < 0.25).double().mean().item() - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)


def _radial_profile(k: torch.Tensor) -> list[tuple[float, float]]:
    """(distance, mean value) of the pixels at each distinct distance from the anchor."""
    n = k.shape[-1]
    a = torch.arange(n) - n // 2
    d2 = a[:, None] ** 2 + a[None, :] ** 2
    return [(math.sqrt(v), k[d2 == v].mean().item()) for v in sorted(set(d2.flatten().tolist()))]


@pytest.mark.parametrize("r0", [2.0, 2.5])
def test_airy_kernel_has_a_ring(r0):
    prof = _radial_profile(airy_kernel(9, r0))
    dark = min(v for r, v in prof if 0.8 * r0 <= r <= 1.2 * r0)
    bright = max(v for r, v in prof if 1.3 * r0 <= r <= 1.6 * r0)  # first ring at 1.34 r0
    assert dark < 0.8 * bright  # not monotonic: dark ring, then a bright one
    values = [v for _, v in prof]
    assert values[0] == max(values)


@pytest.mark.parametrize("R", [1.3, 2.3, 3.0, 3.7])
def test_disk_kernel_is_flat_inside_and_empty_outside(R):
    k = disk_kernel(9, R)
    t = torch.arange(9, dtype=torch.float64) - 4
    y, x = torch.meshgrid(t, t, indexing="ij")
    far = torch.sqrt((x.abs() + 0.5) ** 2 + (y.abs() + 0.5) ** 2)  # farthest point of a pixel
    near = torch.sqrt((x.abs() - 0.5).clamp_min(0) ** 2 + (y.abs() - 0.5).clamp_min(0) ** 2)
    inside, outside = k[far <= R], k[near >= R]
    assert inside.numel() >= 1 and outside.numel() >= 20
    # every pixel inside holds 1 / (pi R^2): the edge pixels' areas are right to well within
    # 1 / (31 R) of the disk's (midpoint rule on 31 x 31 points); 0.5% here
    torch.testing.assert_close(inside, torch.full_like(inside, 1 / (math.pi * R * R)),
                               rtol=0.005, atol=0)
    assert (outside == 0).all()


def test_near_point_motion_kernels_are_compact():
    g = _gen(0)
    point = motion_kernel(9, 0.7, g, length=0.0, width=0.2)
    assert point.max() > 0.9 and point[4, 4] == point.max()
    near = make_family("motion-wide", length_range=(0.0, 1 / 8))  # paths up to 1 px
    peaks = torch.stack([near.draw(9, _gen(s)).max() for s in range(100)])
    assert (peaks > 0.3).all()


@pytest.mark.parametrize("length", [3.0, 10.0])
def test_motion_path_length_is_honoured(length):
    w = 0.3
    k = motion_kernel(21, 0.0, _gen(3), length=length, width=w)  # intensity 0: a straight line
    t = torch.arange(21, dtype=torch.float64) - 10
    y, x = torch.meshgrid(t, t, indexing="ij")
    mx, my = (k * x).sum(), (k * y).sum()
    cov = torch.tensor([[(k * (x - mx) ** 2).sum(), (k * (x - mx) * (y - my)).sum()],
                        [(k * (x - mx) * (y - my)).sum(), (k * (y - my) ** 2).sum()]])
    major = torch.linalg.eigvalsh(cov)[-1].item()
    # a uniform segment (L^2 / 12) widened by the pen (w^2) and the pixel (1 / 12)
    assert major == pytest.approx(length ** 2 / 12 + w ** 2 + 1 / 12, rel=0.05)


def test_blind_kernel_solvers_accept_the_wide_families():
    from diffinv.solvers._blind import BLIND_FAMILIES, blind_problem

    x = torch.rand(1, 1, 16, 16, generator=_gen(0)) * 2 - 1
    for name in OPERATORS.values():
        assert name in BLIND_FAMILIES
        m = measure(x, name, "gaussian:0.02", seed=0)
        bp = blind_problem(type("S", (), {"name": "s"})(), m.y, m)
        assert bp.kernel_size == 9 and bp.convolution_model and bp.boundary == "circular"
