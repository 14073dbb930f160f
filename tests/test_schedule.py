import pytest
import torch

from diffinv.diffusion.schedule import VPSchedule, spaced_timesteps
from diffinv.errors import DiffinvError, UnknownNameError


def test_linear_schedule_values_match_guided_diffusion():
    s = VPSchedule.linear()
    assert s.num_steps == 1000
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    # Values quoted in methods.md section 1.1 (derived from the official schedule).
    assert s.alpha_bar[999].item() == pytest.approx(4.04e-5, rel=0.01)
    assert s.alpha_bar[666].item() == pytest.approx(0.0110, rel=0.01)
    assert s.alpha_bar[333].item() == pytest.approx(0.319, rel=0.01)


def test_cosine_schedule_follows_its_closed_form():
    s = VPSchedule.cosine(1000)
    def f(t):
        return (
            torch.cos(torch.tensor((t / 1000 + 0.008) / 1.008 * torch.pi / 2, dtype=torch.float64)) ** 2
        )
    for t in (0, 100, 500, 900):
        assert s.alpha_bar[t].item() == pytest.approx((f(t + 1) / f(0)).item(), rel=1e-6)


def test_posterior_coefficients_equal_gaussian_conditioning():
    """q(x_{t-1}|x_t,x0) from Bayes: precision 1/(1-ab_{t-1}) + a_t/b_t, mean by precision weighting."""
    s = VPSchedule.linear()
    for t in (1, 10, 500, 999):
        ab_prev, a, b = s.alpha_bar[t - 1], s.alphas[t], s.betas[t]
        var = 1 / (1 / (1 - ab_prev) + a / b)
        assert s.posterior_variance[t].item() == pytest.approx(var.item(), rel=1e-10)
        assert s.posterior_mean_coef1[t].item() == pytest.approx(
            (var * ab_prev.sqrt() / (1 - ab_prev)).item(), rel=1e-10
        )
        assert s.posterior_mean_coef2[t].item() == pytest.approx(
            (var * a.sqrt() / b).item(), rel=1e-10
        )


def test_respacing_keeps_alpha_bar_at_kept_steps():
    s = VPSchedule.linear()
    keep = spaced_timesteps(1000, 50)
    r = s.respace(keep)
    assert r.num_steps == 50
    assert torch.equal(r.timesteps, torch.tensor(sorted(keep)))
    assert torch.allclose(r.alpha_bar, s.alpha_bar[sorted(keep)], rtol=1e-12)


def test_spacings():
    assert spaced_timesteps(1000, 3, "leading") == [666, 333, 0]  # DMPlug's R(z) grid
    u = spaced_timesteps(1000, 10, "uniform")
    assert u[0] == 999 and u[-1] == 0 and len(u) == 10 and u == sorted(u, reverse=True)
    assert spaced_timesteps(1000, 4, "trailing") == [999, 749, 499, 249]
    # DiffPIR's quad grid: 999 - int(sqrt(linspace(0, T^2, N))), its last entry moved to 0
    q = spaced_timesteps(1000, 100, "quad")
    assert q[:4] == [999, 899, 857, 825] and q[-3:] == [10, 5, 0] and len(q) == 100
    assert spaced_timesteps(1000, 3, "quad") == [999, 292, 0]
    with pytest.raises(DiffinvError):
        spaced_timesteps(1000, 0)
    with pytest.raises(UnknownNameError, match="leading"):
        spaced_timesteps(1000, 5, "sideways")


def test_bad_schedules_are_refused():
    with pytest.raises(DiffinvError):
        VPSchedule(torch.tensor([0.1, 1.5]))
    with pytest.raises(UnknownNameError, match="cosine"):
        VPSchedule.from_name("quadratic")
