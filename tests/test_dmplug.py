"""DMPlug: the generator R(z), its gradients, the optimisation, batching, seeds and bad input.

The prior is the exact eps network of 2x2 Gaussian data (conftest), so R is cheap and exact.
"""

from __future__ import annotations

import pytest
import torch

from diffinv.diffusion.prior import DiffusionPrior
from diffinv.diffusion.schedule import spaced_timesteps
from diffinv.errors import DiffinvError, NonFiniteError, ShapeError
from diffinv.metrics.psnr import psnr
from diffinv.physics import Operator, measure
from diffinv.seeding import image_generators
from diffinv.solvers import make_solver
from diffinv.solvers.dmplug import DMPlug, reverse_process


class Recording(torch.nn.Module):
    """Wraps a network and records the timesteps it is called with."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x, t):
        self.calls.append(t.tolist())
        return self.net(x, t)


def make_prior(net, schedule) -> DiffusionPrior:
    return DiffusionPrior(net, schedule, image_shape=(1, 2, 2))


@pytest.fixture
def prior(gaussian_problem):
    _, _, schedule, net = gaussian_problem
    return make_prior(net, schedule)


@pytest.fixture
def truth(prior):
    return prior.sample(3, seed=1, method="ddim", steps=50)


def manual_ddim(net, schedule, z, ts):
    """DDIM (eta = 0) written out from the formulas of the DMPlug docstring."""
    ab = schedule.alpha_bar
    x = z
    for i, t in enumerate(ts):
        a = ab[t].item()
        a_prev = ab[ts[i + 1]].item() if i + 1 < len(ts) else 1.0
        eps = net(x, torch.full((x.shape[0],), t))
        x0 = ((x - (1 - a) ** 0.5 * eps) / a ** 0.5).clamp(-1, 1)
        eps2 = (x - a ** 0.5 * x0) / (1 - a) ** 0.5
        x = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps2
    return x.clamp(-1, 1)


@pytest.mark.parametrize("steps", [3, 5])
def test_generator_is_s_manual_ddim_steps(gaussian_problem, steps):
    _, _, schedule, net = gaussian_problem
    rec = Recording(net)
    prior = make_prior(rec, schedule)
    solver = DMPlug(steps=steps)
    ts = solver.timesteps(prior)
    if steps == 3:
        assert ts == [666, 333, 0]
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 1, 2, 2, generator=g, dtype=torch.float64) * 40  # float64: exact compare
    x = solver.generate(prior, z)
    assert [c[0] for c in rec.calls] == ts  # the seed enters labelled t = 666 for S = 3
    assert prior.nfe == steps
    assert torch.allclose(x, manual_ddim(net, schedule, z, ts), atol=1e-12)
    assert (prior.x0(z, ts[0], clip=False).abs() > 1).any()  # the clamps are exercised


def test_gradient_flows_to_z(gaussian_problem):
    """gradcheck of R in float64, with and without checkpointing."""
    _, _, schedule, net = gaussian_problem
    prior = make_prior(net, schedule)
    z = (0.5 * torch.randn(2, 1, 2, 2, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(3))).requires_grad_()
    ts = spaced_timesteps(1000, 3, "leading")
    x = reverse_process(prior, z, ts)
    assert (x.abs() < 0.99).all()  # away from the clamps, where R is smooth
    for ckpt in (False, True):
        assert torch.autograd.gradcheck(
            lambda v, c=ckpt: reverse_process(prior, v, ts, checkpoint=c), (z,))


def perturbed_unet(tiny_unet_config):
    from diffinv.diffusion.unet import UNet

    net = UNet(image_size=8, **tiny_unet_config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():  # the UNet zero-initialises some layers: make all of them act
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net.eval()


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of ``fn()``."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def test_checkpointing_gives_the_same_gradients_and_flat_memory(tiny_unet_config):
    from diffinv.diffusion.schedule import VPSchedule

    net = perturbed_unet(tiny_unet_config)
    prior = DiffusionPrior(net, VPSchedule.linear(), image_shape=(1, 8, 8))
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    target = torch.zeros(2, 1, 8, 8)
    grads = {}
    for ckpt in (False, True):
        zz = z.clone().requires_grad_()
        x = DMPlug(steps=3, checkpoint=ckpt).generate(prior, zz)
        (g,) = torch.autograd.grad((x - target).square().sum(), zz)
        grads[ckpt] = g
    assert grads[False].abs().max() > 0
    assert torch.allclose(grads[False], grads[True], rtol=1e-5, atol=1e-7)
    # kept activations grow with S without checkpointing; with it, only the input of each step
    # (one image) is kept
    mem = {(s, c): saved_bytes(lambda s=s, c=c: DMPlug(steps=s, checkpoint=c).generate(
        prior, z.clone().requires_grad_())) for s in (2, 6) for c in (False, True)}
    assert mem[(6, False)] > 2.5 * mem[(2, False)]
    assert mem[(6, True)] - mem[(2, True)] == 4 * z.numel() * z.element_size()
    assert mem[(6, True)] < mem[(2, False)] / 10


def test_fits_the_measurement(prior, truth):
    """Identity and inpainting on Gaussian data: the loss falls and A(R(z)) reaches y."""
    for op in ("identity", "inpaint-random"):
        m = measure(truth, op, "none", seed=0)
        solver = make_solver("dmplug", iterations=400, lr=0.1)
        r = solver(m.y, m.public(), prior, seed=0)
        loss = r.trace["loss"]
        assert loss.shape == (400, 3)
        assert (loss[-1] < 1e-3 * loss[0]).all()
        assert (loss[-50:].mean(0) < loss[:50].mean(0)).all()
        fit = m.make_operator()(r.x, **m.params)
        assert (fit - m.y).abs().max() < 0.02
        assert r.nfe == 3 * 400 and r.trace["backward_nfe"] == 3 * 400
    # L-BFGS (official lr 0.1) converges to the noiseless data
    m = measure(truth, "identity", "none", seed=0)
    r = make_solver("dmplug", iterations=15, optimizer="lbfgs")(m.y, m.public(), prior, seed=0)
    assert (r.x - truth).abs().max() < 1e-3


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_batch_equals_one_by_one(prior, truth, optimizer):
    m = measure(truth, "inpaint-random", "gaussian:0.05", seed=4)
    kw = dict(iterations=150 if optimizer == "adam" else 4, optimizer=optimizer, lr=0.05,
              early_stop="wmv", window=10, patience=20)
    batch = make_solver("dmplug", **kw)(m.y, m.public(), prior, seed=7, truth=truth)
    for i in range(3):
        mi = measure(truth[i:i + 1], "inpaint-random", "gaussian:0.05", seed=4, indices=[i])
        assert torch.equal(mi.y, m.y[i:i + 1])
        one = make_solver("dmplug", **kw)(mi.y, mi.public(), prior,
                                          seed=image_generators(7, [i]), truth=truth[i:i + 1])
        assert torch.allclose(batch.x[i], one.x[0], atol=1e-5)
        for key in ("picked_iteration", "stop_iteration", "iterations_run"):
            assert batch.trace[key][i] == one.trace[key][0]
        assert torch.allclose(batch.trace["oracle_psnr"][i], one.trace["oracle_psnr"][0], atol=1e-3)
        # an image's run ends at its stop: nothing is logged for it afterwards, however long
        # the rest of the batch runs
        n = int(one.trace["iterations_run"][0])
        for key in ("loss", "psnr"):
            assert torch.allclose(batch.trace[key][:n, i], one.trace[key][:n, 0], rtol=1e-4)
            assert torch.isnan(batch.trace[key][n:, i]).all()
    if optimizer == "adam":
        assert (batch.trace["stop_iteration"] >= 0).any()  # ES-WMV did stop some image


def test_seed_reproduces_bit_for_bit(prior, truth):
    m = measure(truth, "identity", "gaussian:0.05", seed=0)
    s = make_solver("dmplug", iterations=30)
    a, b = s(m.y, m.public(), prior, seed=3), s(m.y, m.public(), prior, seed=3)
    assert torch.equal(a.x, b.x) and torch.equal(a.trace["loss"], b.trace["loss"])
    c = s(m.y, m.public(), prior, seed=4)
    assert not torch.allclose(a.x, c.x)


def test_output_is_the_es_pick_and_the_truth_is_evaluation_only(prior, truth):
    m = measure(truth, "identity", "gaussian:0.2", seed=0)
    kw = dict(iterations=400, lr=0.05, early_stop="wmv", window=10, patience=30)
    with_truth = make_solver("dmplug", **kw)(m.y, m.public(), prior, seed=0, truth=truth)
    blind_to_truth = make_solver("dmplug", **kw)(m.y, m.public(), prior, seed=0)
    assert torch.equal(with_truth.x, blind_to_truth.x)
    tr = with_truth.trace
    assert "psnr" not in blind_to_truth.trace and "oracle_psnr" not in blind_to_truth.trace
    pick = tr["picked_iteration"]
    stopped = tr["stop_iteration"] >= 0
    assert stopped.sum() >= 2  # the stopped ones stopped P checks after their pick
    assert (tr["stop_iteration"][stopped] == pick[stopped] + 30).all()
    # the output is the iterate of the picked iteration: rerun without ES up to that iteration
    for i in range(3):
        p = int(pick[i])
        last = make_solver("dmplug", iterations=p + 1, lr=0.05)(m.y, m.public(), prior, seed=0)
        assert torch.equal(last.x[i], with_truth.x[i])
        assert last.trace["picked_iteration"][i] == p
    # PSNR per iteration; the oracle is its maximum, reported beside the output, not as it
    assert torch.allclose(tr["psnr"][pick, torch.arange(3)],
                          psnr(with_truth.x, truth).double(), atol=1e-4)
    # nothing is computed for an image after its stop: its PSNR column ends there
    ran = tr["iterations_run"]
    assert torch.equal(ran[stopped], tr["stop_iteration"][stopped] + 1)
    for i in range(3):
        assert torch.isfinite(tr["psnr"][:ran[i], i]).all() and torch.isnan(tr["psnr"][ran[i]:, i]).all()
    assert torch.equal(tr["oracle_psnr"], tr["psnr"].nan_to_num(float("-inf")).max(0).values)
    assert (tr["oracle_psnr"] >= tr["psnr"][pick, torch.arange(3)]).all()
    assert torch.isnan(tr["variance"][:9]).all()
    for i in range(3):
        assert torch.isfinite(tr["variance"][9:ran[i], i]).all()
        assert torch.isnan(tr["variance"][ran[i]:, i]).all()


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_candidate_rules_report_what_their_own_runs_would(prior, truth, optimizer):
    m = measure(truth, "identity", "gaussian:0.2", seed=0)
    kw = dict(iterations=300 if optimizer == "adam" else 30, lr=0.05 if optimizer == "adam" else 0.1,
              optimizer=optimizer)
    rules = [(10, 30), (20, 15), (5, 400)] if optimizer == "adam" else [(3, 5), (5, 10), (10, 30)]
    sweep = make_solver("dmplug", **kw, wmv_candidates=rules)(m.y, m.public(), prior, seed=0,
                                                              truth=truth)
    plain = make_solver("dmplug", **kw)(m.y, m.public(), prior, seed=0)
    assert torch.equal(sweep.x, plain.x)  # watching changes nothing
    stops = 0
    for w, p in rules:
        own = make_solver("dmplug", **kw, early_stop="wmv", window=w, patience=p)(
            m.y, m.public(), prior, seed=0, truth=truth)
        key = f"wmv_{w}_{p}"
        assert torch.equal(sweep.trace[f"{key}_picked_iteration"], own.trace["picked_iteration"])
        assert torch.equal(sweep.trace[f"{key}_stop_iteration"], own.trace["stop_iteration"])
        stopped = own.trace["stop_iteration"] >= 0
        assert torch.equal(sweep.trace[f"{key}_iterations_run"][stopped],
                           own.trace["stop_iteration"][stopped] + 1)
        assert torch.allclose(sweep.trace[f"{key}_psnr"], psnr(own.x, truth).double(), atol=1e-4)
        stops += int(stopped.sum())
        # row t of _pick_psnr: what the rule returns under a budget of t + 1 iterations
        at = sweep.trace[f"{key}_pick_psnr"]
        last = sweep.trace["iterations_run"] - 1  # each image's last row
        assert torch.allclose(at[last, torch.arange(3)], sweep.trace[f"{key}_psnr"])
        if optimizer == "adam":  # (an L-BFGS trace row is an evaluation, not an outer step)
            budget = kw["iterations"] // 2
            short = make_solver("dmplug", **{**kw, "iterations": budget}, early_stop="wmv",
                                window=w, patience=p)(m.y, m.public(), prior, seed=0, truth=truth)
            assert torch.allclose(at[budget - 1], psnr(short.x, truth).double(), atol=1e-4)
    assert stops >= 3  # some rules stopped early, some ran out of budget


def test_candidate_rules_are_validated():
    with pytest.raises(DiffinvError, match="window"):
        make_solver("dmplug", wmv_candidates=[(1, 10)])
    with pytest.raises(DiffinvError, match="pairs"):
        make_solver("dmplug", wmv_candidates=[(10, 10, 10)])
    with pytest.raises(DiffinvError, match="pairs"):
        make_solver("dmplug", wmv_candidates=5)


class NaNAfter(Operator):
    """Identity, except that the measurement of the images with ``poison = 1`` (a per-image
    parameter, so it follows the image when the solver runs a subset of the batch) is NaN from
    the ``k``-th call on."""

    linear = False
    param_names = ("poison",)
    param_ndim = {**Operator.param_ndim, "poison": 0}

    def __init__(self, k: int):
        super().__init__()
        self.k, self.calls = k, 0

    def apply(self, x, poison):
        out = x.clone()
        if self.calls >= self.k:
            out[poison > 0] = float("nan")
        self.calls += 1
        return out


class FakePhysics:
    def __init__(self, op, poison=(0.0, 1.0, 0.0)):
        self.op, self.params = op, {"poison": torch.tensor(poison)}

    def make_operator(self):
        return self.op


def test_nan_loss_stops_with_the_last_finite_iterate(prior, truth):
    m = measure(truth, "identity", "gaussian:0.05", seed=0)
    solver = make_solver("dmplug", iterations=40)
    with pytest.warns(RuntimeWarning, match=r"iteration 25 for image\(s\) \[1\]"):
        r = solver(m.y, FakePhysics(NaNAfter(25)), prior, seed=0)
    assert r.trace["nonfinite_iteration"].tolist() == [-1, 25, -1]
    assert r.trace["picked_iteration"].tolist() == [39, 24, 39]
    assert r.trace["iterations_run"].tolist() == [40, 26, 40]  # its run ends at the failure
    assert torch.isfinite(r.x).all()
    assert torch.isnan(r.trace["loss"][25:, 1]).all() and torch.isfinite(r.trace["loss"][:, 0]).all()
    full = solver(m.y, m.public(), prior, seed=0)
    short = make_solver("dmplug", iterations=25)(m.y, m.public(), prior, seed=0)
    assert torch.equal(r.x[1], short.x[1])  # image 1: its iterate at iteration 24
    assert torch.equal(r.x[[0, 2]], full.x[[0, 2]])  # the others are not affected
    with pytest.warns(RuntimeWarning), pytest.raises(NonFiniteError, match="never had a finite"):
        solver(m.y, FakePhysics(NaNAfter(0)), prior, seed=0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps"), (dict(steps=2.5), "steps"), (dict(iterations=0), "iterations"),
    (dict(lr=0.0), "lr"), (dict(lr=-1e-2), "lr"), (dict(lr=float("nan")), "lr"),
    (dict(kernel_lr=0), "kernel_lr"), (dict(param_lr=float("inf")), "param_lr"),
    (dict(window=1, early_stop="wmv"), "window"), (dict(patience=0), "patience"),
    (dict(kernel_size=0), "kernel_size"), (dict(optimizer="sgd"), "optimizer"),
    (dict(early_stop="loss"), "early-stopping"), (dict(loss="huber"), "loss"),
    (dict(optimizer="lbfgs", blind=True), "L-BFGS"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(DiffinvError, match=match):
        make_solver("dmplug", **kwargs)


def test_bad_problems_are_refused(prior, truth):
    m = measure(truth, "identity", "gaussian:0.05", seed=0)
    with pytest.raises(DiffinvError, match="exceed"):
        make_solver("dmplug", steps=1001)(m.y, m.public(), prior)
    with pytest.raises(DiffinvError, match="blind family"):
        make_solver("dmplug", blind=True)(m.y, m.public(), prior)
    with pytest.raises(DiffinvError, match="blind DMPlug only"):
        make_solver("dmplug", kernel_size=3)(m.y, m.public(), prior)
    with pytest.raises(ShapeError, match="truth"):
        make_solver("dmplug", iterations=2)(m.y, m.public(), prior, truth=truth[:2])
    with pytest.raises(NonFiniteError):
        make_solver("dmplug", iterations=2)(m.y * float("nan"), m.public(), prior)


def test_cli_solve_has_the_dmplug_options():
    from diffinv.cli import build_parser

    args = build_parser().parse_args(["solve", "m", "--solver", "dmplug", "--blind",
                                      "--early-stop", "wmv", "-o", "out"])
    assert args.blind and args.early_stop == "wmv"
