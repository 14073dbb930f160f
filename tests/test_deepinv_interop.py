"""deepinv interop (skipped without deepinv, which needs torchvision: run in an environment with
``pip install 'diffinv[deepinv]'``): deepinv physics work as diffinv operators (forward, adjoint,
SVD) and give the same restorations as diffinv's own operators; diffinv operators work as deepinv
physics; the prior as a deepinv denoiser is exactly Tweedie's formula at the matching timestep."""

from __future__ import annotations

import pytest
import torch

dinv = pytest.importorskip("deepinv")

from diffinv import load_prior  # noqa: E402
from diffinv.errors import DiffinvError  # noqa: E402
from diffinv.interop.deepinv import (  # noqa: E402
    as_deepinv_denoiser,
    from_deepinv,
    measurement_to_unit_range,
    to_deepinv,
)
from diffinv.physics import make_operator, measure, save_measurement  # noqa: E402
from diffinv.solvers import make_solver  # noqa: E402

SHAPE = (1, 1, 8, 8)


def _mask(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, 1, 8, 8, generator=g) < 0.5).float()


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double() * b.double()).sum()


def test_deepinv_physics_is_a_linear_operator_with_its_adjoint():
    g = torch.Generator().manual_seed(1)
    kernel = dinv.physics.functional.blur.gaussian_blur(sigma=(1.0, 1.0))
    blur = dinv.physics.BlurFFT(img_size=SHAPE[1:], filter=kernel)
    op = from_deepinv(blur)
    assert op.linear and not op.has_svd  # complex mask: adjoint only
    x, y = torch.randn(2, *SHAPE[1:], generator=g), torch.randn(2, *SHAPE[1:], generator=g)
    torch.testing.assert_close(op(x), blur.A(x))
    assert abs(_inner(op(x), y) - _inner(x, op.adjoint(y))) < 1e-5 * x.numel()
    with pytest.raises(DiffinvError, match="no SVD"):
        op.svd(x.shape)


def test_deepinv_inpainting_gives_an_exact_svd():
    g = torch.Generator().manual_seed(2)
    phys = dinv.physics.Inpainting(img_size=SHAPE[1:], mask=_mask()[0])
    op = from_deepinv(phys)
    assert op.linear and op.has_svd
    x, y = torch.randn(3, *SHAPE[1:], generator=g), torch.randn(3, *SHAPE[1:], generator=g)
    svd = op.svd(x.shape)
    torch.testing.assert_close(svd.forward(x), phys.A(x))
    torch.testing.assert_close(svd.adjoint(y), phys.A_adjoint(y))
    torch.testing.assert_close(svd.v(svd.vt(x)), x)
    torch.testing.assert_close(svd.u(svd.ut(y)), y)


def test_negative_singular_values_fold_their_sign_into_u():
    g = torch.Generator().manual_seed(3)
    d = torch.randn(1, *SHAPE[1:], generator=g)
    phys = dinv.physics.DecomposablePhysics(mask=d, img_size=SHAPE[1:])
    svd = from_deepinv(phys).svd(SHAPE)
    x = torch.randn(*SHAPE, generator=g)
    assert (svd.singulars() >= 0).all()
    torch.testing.assert_close(svd.forward(x), d * x)


@pytest.fixture(scope="module")
def prior():
    return load_prior("fashion32")


def test_ddrm_on_deepinv_inpainting_equals_ddrm_on_ours(prior):
    """The same mask as a deepinv physics and as diffinv's operator: the same restoration."""
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    mask = (torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(5)) < 0.3).float()
    ours = make_operator("inpaint-random", p=0.7)
    theirs = dinv.physics.Inpainting(img_size=(1, 32, 32), mask=mask[0])
    m_ours = measure(x, ours, "gaussian:0.05", seed=0, params={"mask": mask})
    m_theirs = measure(x, theirs, "gaussian:0.05", seed=0)
    torch.testing.assert_close(m_ours.y, m_theirs.y)
    assert m_theirs.operator == "custom:DeepinvOperator"
    solver = make_solver("ddrm", steps=10)
    a = solver(m_ours.y, m_ours.public(), prior, seed=7).x
    b = solver(m_theirs.y, m_theirs.public(), prior, seed=7).x
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_a_measurement_with_a_deepinv_physics_is_not_saved(tmp_path):
    x = torch.zeros(1, *SHAPE[1:])
    m = measure(x, dinv.physics.Inpainting(img_size=SHAPE[1:], mask=_mask()[0]), "gaussian:0.1",
                seed=0)
    with pytest.raises(DiffinvError, match="cannot be saved"):
        save_measurement(m, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_measure_rejects_other_objects():
    with pytest.raises(DiffinvError, match="deepinv Physics"):
        measure(torch.zeros(1, *SHAPE[1:]), object(), "gaussian:0.1", seed=0)
    with pytest.raises(DiffinvError, match="expected a deepinv Physics"):
        from_deepinv(torch.nn.Identity())


@pytest.mark.parametrize("name, kwargs", [
    ("sr-avgpool", {"factor": 2}),
    ("gaussian-blur", {}),
    ("inpaint-random", {}),
    ("nonlinear-blur", {}),
])
def test_diffinv_operator_as_deepinv_physics(name, kwargs):
    g = torch.Generator().manual_seed(6)
    op = make_operator(name, **kwargs)
    shape = (1, 1, 16, 16)
    x = torch.rand(*shape, generator=g) * 2 - 1
    params = measure(x, op, "gaussian:0.0", seed=1).params
    phys = to_deepinv(op, params, image_shape=shape, noise_sigma=0.025)
    torch.testing.assert_close(phys.A(x), op(x, **params), atol=1e-5, rtol=0)
    assert phys.noise_model.sigma.item() == pytest.approx(0.025)
    if op.linear:
        y = torch.randn(op.out_shape(shape), generator=g)
        torch.testing.assert_close(phys.A_adjoint(y), op.adjoint(y, **params), atol=1e-5, rtol=0)
        assert isinstance(phys, dinv.physics.DecomposablePhysics)  # all three have a fast SVD
        # deepinv's own pseudo-inverse from our factors inverts A on its range
        torch.testing.assert_close(phys.A(phys.A_dagger(phys.A(x))), phys.A(x), atol=1e-4, rtol=0)
        # and the round trip back gives the same operator
        back = from_deepinv(phys)
        torch.testing.assert_close(back(x), op(x, **params), atol=1e-5, rtol=0)


def test_measurement_to_unit_range_is_the_measurement_of_the_unit_range_image():
    g = torch.Generator().manual_seed(8)
    op = make_operator("inpaint-random")
    x = torch.rand(2, 1, 8, 8, generator=g) * 2 - 1
    m = measure(x, op, "gaussian:0.0", seed=2)
    y01, s01 = measurement_to_unit_range(m.y, op, m.params, 0.05)
    torch.testing.assert_close(y01, op((x + 1) / 2, **m.params))
    assert s01 == pytest.approx(0.025)


def test_prior_as_deepinv_denoiser_is_tweedie_at_the_matching_timestep(prior):
    g = torch.Generator().manual_seed(9)
    x0 = torch.rand(2, 1, 32, 32, generator=g) * 2 - 1
    den = as_deepinv_denoiser(prior)
    assert isinstance(den, dinv.models.Denoiser)
    for t in (50, 400, 900):
        ab = prior.schedule.alpha_bar[t]
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn(x0.shape, generator=g)
        sigma01 = float(((1 - ab) / ab).sqrt()) / 2
        u = (xt / ab.sqrt() + 1) / 2  # the [0, 1]-unit image with noise sigma01
        got = den(u, sigma01)
        want = (prior.x0(xt, t).clamp(-1, 1) + 1) / 2
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
