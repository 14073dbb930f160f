"""FastEM: the HQS/PnP M-step inside PiGDM recovers a hidden kernel; its pieces; batching, seeds,
bad input.

Recovery (tests/blind_problem.py: the image prior all but knows the 16x16 image): 20 steps with
the shipped ``kernel_dncnn9`` denoiser bring the kernel MSE from the delta start's (> 1e-2) to
< 1e-3 (observed 2e-6 and 1.6e-4).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from blind_problem import blind_measurement, kernel_mse, oracle_prior
from diffinv.errors import DiffinvError, IntegrityError, UnknownNameError
from diffinv.learn.kernel_denoiser import denoiser_dir, load_kernel_denoiser
from diffinv.physics import measure
from diffinv.physics.blur import blur
from diffinv.seeding import image_generators
from diffinv.solvers import make_solver
from diffinv.solvers._blind import KernelDivergedError, delta_kernel
from diffinv.solvers.fastem import kernel_data_step, recentre


@pytest.mark.parametrize("family,which", [("blind-motion-blur", 0), ("blind-gaussian-blur", 1)])
def test_recovers_the_kernel(family, which):
    prior, x = oracle_prior(which)
    m = blind_measurement(x, family, first=which)
    r = make_solver("fastem", steps=20)(m.y, m.public(), prior, seed=0)
    k = r.trace["kernel"]
    assert k.shape == (1, 9, 9) and (k >= 0).all()
    assert torch.allclose(k.sum((1, 2)), torch.ones(1), atol=1e-5)
    start = kernel_mse(delta_kernel(1, 9), m)
    err = kernel_mse(k, m)
    assert err < 1e-3 and err < 0.1 * start, (err, start)
    assert (r.x - x).abs().mean() < 0.03
    assert r.nfe == 20 and r.trace["backward_nfe"] == 19  # no guidance at the last step (r = 0)


def test_data_step_is_the_least_squares_kernel():
    """Noiseless y = k * u: with alpha -> 0 the data step returns k (u has a flat spectrum)."""
    g = torch.Generator().manual_seed(1)
    u = torch.rand(2, 1, 16, 16, generator=g)
    k = torch.rand(2, 9, 9, generator=g)
    k = k / k.sum((1, 2), keepdim=True)
    y = blur(u, k, "circular")
    out = kernel_data_step(y, u, delta_kernel(2, 9), 1e-9)
    assert torch.allclose(out, k, atol=1e-4)
    # alpha -> infinity keeps the previous kernel z
    z = delta_kernel(2, 9)
    assert torch.allclose(kernel_data_step(y, u, z, 1e9), z, atol=1e-5)


def test_recentre_moves_the_centre_of_mass_to_the_anchor():
    k = torch.zeros(1, 9, 9)
    k[0, 2, 6], k[0, 3, 7] = 0.5, 0.5  # centre of mass (2.5, 6.5)
    c = recentre(k)
    grid = torch.arange(9.0)
    assert torch.allclose(c.sum(), torch.tensor(1.0))
    assert torch.allclose((c[0].sum(1) * grid).sum(), torch.tensor(4.0), atol=1e-5)
    assert torch.allclose((c[0].sum(0) * grid).sum(), torch.tensor(4.0), atol=1e-5)
    assert torch.allclose(recentre(delta_kernel(1, 9)), delta_kernel(1, 9))


def test_batch_equals_one_by_one_and_seeds():
    prior, x = oracle_prior()
    m = blind_measurement(x)
    solve = make_solver("fastem", steps=20)
    both = solve(m.y, m.public(), prior, seed=3)
    for i in range(2):
        one = solve(m.y[i:i + 1], m.public(), prior, seed=image_generators(3, [i]))
        assert torch.allclose(one.x, both.x[i:i + 1], atol=1e-5)
        assert torch.allclose(one.trace["kernel"], both.trace["kernel"][i:i + 1], atol=1e-5)
    again = solve(m.y, m.public(), prior, seed=3)
    assert torch.equal(again.x, both.x) and torch.equal(again.trace["kernel"],
                                                        both.trace["kernel"])
    other = solve(m.y, m.public(), prior, seed=4)
    assert not torch.allclose(other.x, both.x)


def test_bad_input(tmp_path):
    prior, x = oracle_prior()
    solve = make_solver("fastem", steps=3)
    known = measure(x, "motion-blur", "gaussian:0.02", seed=0)
    with pytest.raises(DiffinvError, match="not blind"):
        solve(known.y, known.public(), prior)
    zero = blind_measurement(x, boundary="zero")
    with pytest.raises(DiffinvError, match="circular"):
        solve(zero.y, zero.public(), prior)
    m7 = blind_measurement(x, size=7)
    with pytest.raises(DiffinvError, match=r"9x9 kernels but the blind family's kernel is 7x7"):
        solve(m7.y, m7.public(), prior)
    with pytest.raises(UnknownNameError, match="kernel_dncnn9"):
        load_kernel_denoiser("kernel_dncnn5")
    bad = tmp_path / "d.safetensors"
    shutil.copy(denoiser_dir() / "kernel_dncnn9.safetensors", bad)
    card = json.loads((denoiser_dir() / "kernel_dncnn9.json").read_text())
    (tmp_path / "d.json").write_text(json.dumps(dict(card, sha256="0" * 64)))
    with pytest.raises(IntegrityError, match="SHA-256"):
        load_kernel_denoiser(bad)
    with pytest.raises(DiffinvError, match="lam"):
        make_solver("fastem", lam=-1)


def test_a_non_finite_kernel_stops_with_a_clear_error():
    prior, x = oracle_prior()
    m = blind_measurement(x)
    den = load_kernel_denoiser()

    def nan_for_second(k, s):
        out = den(k, s).clone()
        out[1] = float("nan")
        return out

    nan_for_second.size = 9
    with pytest.raises(KernelDivergedError, match=r"image\(s\) \[1\]") as e:
        make_solver("fastem", steps=5, denoiser=nan_for_second)(m.y, m.public(), prior)
    assert e.value.step == 0 and torch.isfinite(e.value.last_kernel).all()


def test_kernel_denoiser_trainer_refuses_an_existing_export_before_training(tmp_path, capsys,
                                                                             monkeypatch):
    """``python -m diffinv.learn.kernel_denoiser --export DIR`` never replaces DIR/NAME.* unasked:
    refused (exit 1, one line) before any training step, the files unchanged."""
    import diffinv.learn.kernel_denoiser as kd

    def trained(*args, **kwargs):
        raise AssertionError("trained before checking --export")

    monkeypatch.setattr(kd, "train", trained)
    (tmp_path / "kernel_dncnn9.json").write_text("a user's card\n")
    code = kd.main(["--out", str(tmp_path / "run"), "--export", str(tmp_path),
                    "--name", "kernel_dncnn9"])
    err = capsys.readouterr().err
    assert code == 1 and "kernel_dncnn9.json exists" in err and "--overwrite" in err, err
    assert (tmp_path / "kernel_dncnn9.json").read_text() == "a user's card\n"
    assert not (tmp_path / "run").exists()
