"""dmplug-video (diffinv.video.dmplug) and clip measurements (diffinv.video.measurement).

The prior is the exact eps network of 8x8 Gaussian data (conftest's GaussianEps), so R is cheap
and exact; clips are 3-4 frames and runs a few iterations.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from diffinv.diffusion.prior import DiffusionPrior
from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import (
    DiffinvError,
    IntegrityError,
    MissingAssetError,
    NonFiniteError,
    ShapeError,
    UnknownNameError,
)
from diffinv.physics import measure
from diffinv.seeding import batch_generators
from diffinv.solvers.dmplug import DMPlug
from diffinv.video import make_clip_operator, similarity_clip
from diffinv.video.dmplug import ClipSeeds, DMPlugVideo, FlowTracker, pixel_consistency
from diffinv.video.flow import estimate_flow, fb_consistent
from diffinv.video.measurement import (
    GIF_FILE,
    SPEC_FILE,
    TENSOR_FILE,
    load_clip_measurement,
    measure_clip,
    save_clip_measurement,
)
from diffinv.video.operators import frame_generators

S = 8  # frame size


@pytest.fixture(scope="module")
def prior():
    from conftest import GaussianEps

    g = torch.Generator().manual_seed(0)
    d = S * S
    ys, xs = torch.meshgrid(torch.arange(S, dtype=torch.float64),
                            torch.arange(S, dtype=torch.float64), indexing="ij")
    mu = (1.2 * torch.exp(-((xs - 3.5) ** 2 + (ys - 3.5) ** 2) / 6) - 0.6).flatten()
    a = torch.randn(d, 6, generator=g, dtype=torch.float64) * 0.15
    sigma = a @ a.T + 0.02 * torch.eye(d, dtype=torch.float64)
    schedule = VPSchedule.linear()
    return DiffusionPrior(GaussianEps(mu, sigma, (1, S, S), schedule), schedule,
                          image_shape=(1, S, S))


def blob(cx=3.5, cy=3.5, r=5.0):
    ys, xs = torch.meshgrid(torch.arange(S, dtype=torch.float32),
                            torch.arange(S, dtype=torch.float32), indexing="ij")
    return (1.6 * torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / r) - 0.8)[None]


def moving_clip(T=4, drift=(3.0, 0.0)):
    """A blob moving by whole pixels (drift over the clip / (T - 1) px per frame)."""
    return similarity_clip(blob(), T, drift=drift)


@pytest.fixture(scope="module")
def clips():
    a = moving_clip(4, (3.0, 0.0))
    b = moving_clip(4, (0.0, -3.0))
    return torch.stack([a.frames, b.frames]).float()


def sr_measurement(x, seed=1):
    return measure_clip(x, "frames:sr-avgpool", "gaussian:0.05", seed, settings={"factor": 2})


# ------------------------------------------------------------------ Base = per-frame DMPlug
@pytest.mark.parametrize("clip_index", [0, 1])
def test_base_equals_per_frame_dmplug(prior, clips, clip_index):
    m = measure_clip(clips, "frames:inpaint-random", "gaussian:0.05", 2, settings={"p": 0.5})
    solver = DMPlugVideo(iterations=6, semantic=False, pixel=False)
    assert solver.variant == "base"
    res = solver(m.y, m.public(), prior, seed=5)
    # DMPlug on the frames of clip b, seeded with the frame generators of that clip's generator
    b = clip_index
    frames = clips[b]
    pm = measure(frames, "inpaint-random", "none", 0, params={"mask": m.params["mask"][b]})
    pm = dataclasses.replace(pm.public(), y=m.y[b])
    gens = frame_generators(batch_generators(5, 2)[b], frames.shape[0])
    ref = DMPlug(iterations=6)(m.y[b], pm, prior, seed=gens)
    assert torch.allclose(res.x[b], ref.x, atol=1e-6, rtol=0)
    # the data term is DMPlug's per-image loss summed over the frames
    assert torch.allclose(res.trace["data"][:, b], ref.trace["loss"].sum(1), rtol=1e-5)
    assert res.nfe == 6 * 3 and res.trace["backward_nfe"] == 6 * 3


# ------------------------------------------------------------------ the seed parametrisation
def test_semantic_seeds_start_shared(prior, clips):
    gens = batch_generators(3, 2)
    s = ClipSeeds(gens, 4, (1, S, S), semantic=True, rank=None)
    z = s.seeds()
    assert torch.equal(z, s.leaves["shared"][:, None].expand_as(z))
    # the shared seed is the clip generator's draw after the T frame generators
    g = batch_generators(3, 2)[1]
    frame_generators(g, 4)
    assert torch.equal(s.leaves["shared"][1], torch.randn((1, S, S), generator=g))
    # so every frame's first iterate is the same image
    firsts = []
    DMPlugVideo(iterations=1, pixel=False)(sr_measurement(clips).y, sr_measurement(clips).public(),
                                           prior, seed=3,
                                           callback=lambda it, x: firsts.append(x.clone()))
    x0 = firsts[0]
    assert torch.equal(x0, x0[:, :1].expand_as(x0))


@pytest.mark.parametrize("rank", [1, 2])
def test_low_rank_residuals_have_rank_at_most_r(rank):
    T = 4
    s = ClipSeeds(batch_generators(0, 2), T, (1, S, S), semantic=True, rank=rank)
    assert torch.equal(s.seeds(), s.leaves["shared"][:, None].expand(2, T, 1, S, S))
    V = s.leaves["coef"].detach()
    assert torch.allclose(V.transpose(1, 2) @ V, torch.eye(rank).expand(2, rank, rank), atol=1e-6)
    opt = torch.optim.Adam(list(s.leaves.values()), lr=0.1)
    target = torch.randn(2, T, 1, S, S, generator=torch.Generator().manual_seed(1))
    for _ in range(5):
        opt.zero_grad()
        (s.seeds() - target).square().sum().backward()
        opt.step()
    E = s.residuals().detach().reshape(2, T, -1)
    for b in range(2):
        sv = torch.linalg.svdvals(E[b].double())  # moved (r non-zero values), no more than r
        assert (sv[:rank] > 1e-3).all() and (sv[rank:] < 1e-5 * sv[0]).all()
    n_full = ClipSeeds(batch_generators(0, 1), T, (1, S, S), semantic=True, rank=None)
    n_low = ClipSeeds(batch_generators(0, 1), T, (1, S, S), semantic=True, rank=rank)
    count = lambda s: sum(v.numel() for v in s.leaves.values())  # noqa: E731
    assert count(n_low) < count(n_full)


# ------------------------------------------------------------------ the pixel term
def test_pixel_term_zero_for_consistent_clip_positive_for_flicker():
    c = moving_clip(4, (3.0, 0.0))  # one whole pixel per frame: the warp is exact
    x, flow, valid = c.frames[None].float(), c.flow[None].float(), c.valid[None].float()
    assert valid.sum() > 0
    assert pixel_consistency(x, flow, valid).abs().max() < 1e-10
    flicker = x + torch.tensor([0.0, 0.3, -0.2, 0.25]).reshape(1, 4, 1, 1, 1)
    p = pixel_consistency(flicker, flow, valid)
    assert p.item() > 0.1
    # its gradient reduces it
    xf = flicker.clone().requires_grad_()
    (g,) = torch.autograd.grad(pixel_consistency(xf, flow, valid).sum(), xf)
    assert g.abs().sum() > 0
    assert pixel_consistency(flicker - 0.5 * g, flow, valid).item() < p.item()
    # a wrong flow does not score 0 on the consistent clip
    assert pixel_consistency(x, -flow, valid).item() > 1e-3


def test_flow_tracker_smooths_both_directions(clips):
    tr = FlowTracker(2, 4, (S, S), decay=0.75)
    a, b = clips, clips.flip(1)
    tr.update(a[1:], torch.tensor([1]))
    assert tr.updates.tolist() == [0, 1]
    tr.update(b, torch.tensor([0, 1]))
    fa, _ = estimate_flow(a[1])
    fb, _ = estimate_flow(b[1])
    want = 0.75 * fa + 0.25 * fb  # clip 1: EMA of its two estimates
    assert torch.allclose(tr.fw[1], want, atol=1e-6)
    assert torch.allclose(tr.fw[0], estimate_flow(b[0])[0], atol=1e-6)  # first estimate
    bw = 0.75 * estimate_flow(a[1].flip(0))[0].flip(0) + 0.25 * estimate_flow(b[1].flip(0))[0].flip(0)
    assert torch.allclose(tr.bw[1], bw, atol=1e-6)
    assert torch.equal(tr.valid[1], fb_consistent(tr.fw[1], tr.bw[1]))


def test_pixel_term_makes_the_output_more_consistent(prior, clips):
    m = measure_clip(clips, "frames:inpaint-random", "gaussian:0.05", 4, settings={"p": 0.7})
    kw = dict(iterations=40, semantic=False, lr=0.05, flow_every=5, pixel_start=0)
    base = DMPlugVideo(pixel=False, **kw)(m.y, m.public(), prior, seed=0)
    pix = DMPlugVideo(pixel=True, pixel_weight=10.0, **kw)(m.y, m.public(), prior, seed=0)
    f = pix.trace["flow"]
    assert torch.isfinite(f).all() and pix.trace["flow_updates"].tolist() == [8, 8]
    v = pix.trace["valid"]
    assert pixel_consistency(pix.x, f, v).sum() < pixel_consistency(base.x, f, v).sum()
    assert torch.isnan(base.trace["pixel_term"]).all()
    assert torch.isfinite(pix.trace["pixel_term"]).all()


# ------------------------------------------------------------------ seeds, batches
FULL = dict(iterations=8, semantic=True, pixel=True, pixel_weight=1.0, flow_every=3,
            pixel_start=2)


def test_reproducible_from_a_seed(prior, clips):
    m = sr_measurement(clips)
    a = DMPlugVideo(**FULL)(m.y, m.public(), prior, seed=7)
    b = DMPlugVideo(**FULL)(m.y, m.public(), prior, seed=7)
    c = DMPlugVideo(**FULL)(m.y, m.public(), prior, seed=8)
    assert torch.equal(a.x, b.x)
    assert torch.equal(a.trace["flow"], b.trace["flow"])
    assert not torch.allclose(a.x, c.x)


@pytest.mark.parametrize("options", [dict(FULL), dict(FULL, rank=2, early_stop="wmv",
                                                       window=5, patience=5, iterations=20)])
def test_batch_independence_across_clips(prior, clips, options):
    # with early stopping, clips stop apart and the per-clip masks are indexed to the running ones
    m = (sr_measurement(clips) if "early_stop" not in options else
         measure_clip(clips, "video-inpaint-random", "gaussian:0.05", 1))
    gens = batch_generators(11, 2)
    both = DMPlugVideo(**options)(m.y, m.public(), prior, seed=11)
    for b in range(2):
        one = DMPlugVideo(**options)(m.y[b], m.public().make_operator(), prior, seed=[gens[b]],
                                     params={k: v[b:b + 1] for k, v in m.params.items()})
        assert one.x.shape == clips[b].shape  # a single clip in, a single clip out
        assert torch.allclose(both.x[b], one.x, atol=1e-5, rtol=0)
        assert both.trace["picked_iteration"][b] == one.trace["picked_iteration"][0]
        assert both.trace["iterations_run"][b] == one.trace["iterations_run"][0]
    if options.get("early_stop") == "wmv":
        stops = both.trace["stop_iteration"].tolist()
        assert stops[0] != stops[1] and max(stops) >= 0, stops  # one stops, apart


def test_truth_is_for_evaluation_only(prior, clips):
    m = sr_measurement(clips)
    a = DMPlugVideo(**FULL)(m.y, m.public(), prior, seed=1, truth=clips)
    b = DMPlugVideo(**FULL)(m.y, m.public(), prior, seed=1)
    assert torch.equal(a.x, b.x)
    assert a.trace["psnr"].shape == (8, 2) and torch.isfinite(a.trace["oracle_psnr"]).all()


# ------------------------------------------------------------------ clip measurements
def test_clip_measurement_round_trip(tmp_path, clips):
    c = moving_clip(4, (3.0, 0.0))
    flow = torch.stack([c.flow, c.flow]).float()
    valid = torch.stack([c.valid, c.valid]).float()
    m = measure_clip(clips, "video-inpaint-random", "gaussian:0.05", 3, settings={"p": 0.5},
                     flow=flow, valid=valid, fps=4)
    out = save_clip_measurement(m, tmp_path / "m")
    names = sorted(p.name for p in out.iterdir())
    assert {SPEC_FILE, TENSOR_FILE, "truth.safetensors", GIF_FILE, "frames"} <= set(names)
    assert len(list((out / "frames").glob("y_*.png"))) == 4
    from PIL import Image

    with Image.open(out / GIF_FILE) as im:
        assert im.n_frames == 4
    back = load_clip_measurement(out)
    assert torch.equal(back.y, m.y) and torch.equal(back.x, m.x)
    assert torch.equal(back.params["mask"], m.params["mask"])
    assert torch.equal(back.flow, flow) and torch.equal(back.valid, valid)
    assert (back.operator, back.settings, back.noise, back.seed, back.fps, back.indices) == \
        ("video-inpaint-random", {"p": 0.5}, m.noise, 3, 4.0, [0, 1])
    pub = load_clip_measurement(out, truth=False)
    assert pub.x is None and not pub.has_truth
    # the record rebuilds the operator that made y
    op = back.make_operator()
    assert torch.allclose(op(back.x, **back.params), m.make_operator()(m.x, **m.params))
    # a saved folder is not replaced without overwrite; with it, it is
    with pytest.raises(DiffinvError):
        save_clip_measurement(m, out)
    save_clip_measurement(dataclasses.replace(m, seed=4), out, overwrite=True)
    assert load_clip_measurement(out).seed == 4


def test_clip_measurement_is_per_clip_and_seeded(clips):
    m = measure_clip(clips, "video-inpaint-random", "gaussian:0.05", 3)
    one = measure_clip(clips[1], "video-inpaint-random", "gaussian:0.05", 3, indices=[1])
    assert one.y.shape == (1, *clips.shape[1:])
    assert torch.equal(one.y[0], m.y[1]) and torch.equal(one.params["mask"][0], m.params["mask"][1])
    again = measure_clip(clips, "video-inpaint-random", "gaussian:0.05", 3)
    assert torch.equal(again.y, m.y)
    other = measure_clip(clips, "video-inpaint-random", "gaussian:0.05", 4)
    assert not torch.equal(other.y, m.y)


def test_saving_is_all_or_nothing(tmp_path, clips, monkeypatch):
    import diffinv.video.measurement as vm

    m = sr_measurement(clips)
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(DiffinvError):
        save_clip_measurement(m, user, overwrite=True)  # not written by diffinv: never replaced
    assert (user / "notes.txt").read_text() == "mine"

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(vm, "_write_views", boom)
    with pytest.raises(RuntimeError):
        save_clip_measurement(m, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["user"]


def test_bad_clip_measurements_refused(tmp_path, clips):
    with pytest.raises(UnknownNameError):
        measure_clip(clips, "no-such-op", "gaussian:0.05", 0)
    with pytest.raises(DiffinvError, match="frames:"):
        measure_clip(clips, measure, "gaussian:0.05", 0)
    with pytest.raises(DiffinvError, match="JSON"):
        measure_clip(clips, "frames:sr-avgpool", "none", 0, settings={"factor": torch.tensor(2)})
    with pytest.raises(DiffinvError, match="blind"):
        measure_clip(clips, "frames:blind-gaussian-blur", "none", 0)
    with pytest.raises(DiffinvError, match="integer"):
        measure_clip(clips, "video-sr4", "none", 1.5)
    with pytest.raises(DiffinvError):
        measure_clip(clips * 3, "video-sr4", "none", 0)  # not in [-1, 1]
    with pytest.raises(ShapeError):
        measure_clip(clips[0, 0], "video-sr4", "none", 0)  # an image is not a clip
    unsaved = measure_clip(clips, make_clip_operator("video-sr4", factor=2), "none", 0)
    with pytest.raises(DiffinvError, match="cannot be saved"):
        save_clip_measurement(unsaved, tmp_path / "u")
    # damaged records
    good = save_clip_measurement(sr_measurement(clips), tmp_path / "good")
    with pytest.raises(MissingAssetError):
        load_clip_measurement(tmp_path / "absent")
    spec = json.loads((good / SPEC_FILE).read_text())
    for key, value, match in (("y_shape", [2, 4, 1, 8, 8], "y of shape"),
                              ("settings", {"factor": 3}, "y was made from"),
                              ("operator", "nope", "cannot be rebuilt"),
                              ("fps", -1, "fps"), ("version", 9, "version")):
        bad = tmp_path / f"bad-{key}"
        bad.mkdir()
        for f in good.iterdir():
            if f.is_file():
                (bad / f.name).write_bytes(f.read_bytes())
        (bad / SPEC_FILE).write_text(json.dumps({**spec, key: value}))
        with pytest.raises(IntegrityError, match=match):
            load_clip_measurement(bad)
    (good / "truth.safetensors").unlink()
    with pytest.raises(MissingAssetError, match="truth=False"):
        load_clip_measurement(good)
    assert load_clip_measurement(good, truth=False).x is None


# ------------------------------------------------------------------ bad solver input
def test_bad_solver_input_refused(prior, clips):
    m = sr_measurement(clips)
    solver = DMPlugVideo(iterations=1)
    with pytest.raises(DiffinvError, match="hidden truth"):
        solver(m.y, m, prior)
    img = measure(clips[0], "sr-avgpool", "none", 0)
    with pytest.raises(DiffinvError, match="frames:"):
        solver(m.y, img.public(), prior)
    with pytest.raises(DiffinvError, match="prior"):
        solver(m.y, m.public(), "fashion32")
    with pytest.raises(ShapeError):
        solver(m.y[:, :, :, :3], m.public(), prior)  # not what the operator makes
    big = measure_clip(torch.zeros(1, 3, 1, 16, 16), "frames:sr-avgpool", "none", 0,
                       settings={"factor": 2})
    with pytest.raises(ShapeError, match="prior models"):
        solver(big.y, big.public(), prior)
    with pytest.raises(NonFiniteError):
        solver(m.y.clone().fill_(float("nan")), m.public(), prior)
    with pytest.raises(DiffinvError, match="exceeds"):
        DMPlugVideo(iterations=1, rank=5)(m.y, m.public(), prior)
    with pytest.raises(DiffinvError, match="params"):
        solver(m.y, m.public(), prior, params={})
    with pytest.raises(DiffinvError, match="integer"):
        solver(m.y, m.public(), prior, seed=1.5)
    with pytest.raises(ShapeError, match="truth"):
        solver(m.y, m.public(), prior, truth=clips[:, :3])
    for kwargs, match in ((dict(rank=2, semantic=False), "semantic=True"),
                          (dict(flow_ema=1.0), "flow_ema"), (dict(pixel_weight=-1), "pixel_weight"),
                          (dict(semantic="yes"), "true or false"), (dict(loss="l2"), "loss"),
                          (dict(iterations=0), "iterations"), (dict(flow_every=0), "flow_every"),
                          (dict(flow_method="raft"), "flow method"),
                          (dict(early_stop="x"), "early-stopping")):
        with pytest.raises(DiffinvError, match=match):
            DMPlugVideo(**kwargs)


def test_nonfinite_clip_stops_alone(prior, clips, monkeypatch):
    """A clip whose objective turns NaN stops with its last finite iterate; the other runs on."""
    import diffinv.video.dmplug as vd

    m = sr_measurement(clips)
    real = vd.reverse_process
    calls = [0]

    def poisoned(prior, z, ts, **kw):
        x = real(prior, z, ts, **kw)
        calls[0] += 1
        if calls[0] == 3 and x.shape[0] == 8:  # iteration 2: clip 0's frames become NaN
            x = torch.cat([torch.full_like(x[:4], float("nan")), x[4:]])
        return x

    monkeypatch.setattr(vd, "reverse_process", poisoned)
    with pytest.warns(RuntimeWarning, match="clip\\(s\\) \\[0\\]"):
        res = DMPlugVideo(iterations=5, pixel=False)(m.y, m.public(), prior, seed=0)
    assert res.trace["nonfinite_iteration"].tolist() == [2, -1]
    assert res.trace["iterations_run"].tolist() == [3, 5]
    assert torch.isfinite(res.x).all()
