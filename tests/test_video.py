"""Video foundations: clips with known motion and exact flow, clip operators, the warping error."""

from __future__ import annotations

import sys

import pytest
import torch

import diffinv.data
from diffinv.data import ImageSet, demo_images, get_images
from diffinv.errors import DiffinvError, NonFiniteError, ShapeError, UnknownNameError
from diffinv.video import (
    CLIP_OPERATORS,
    ClipChain,
    PerFrame,
    TemporalBlur,
    check_clip,
    clip_generator,
    estimate_flow,
    get_clips,
    make_clip,
    make_clip_operator,
    make_clips,
    similarity_clip,
    stack_frames,
    warp_clip,
    warping_error,
    warping_error_estimated,
)

SMOOTH = ["translate", "rotate", "zoom", "similarity"]
#: WE of a ground-truth clip of smooth sub-pixel motion under its exact flow: the error of the
#: bilinear warp of a frame that is itself a resampling (measured up to 4.3e-3 on fashion32 and
#: 1.4e-3 on mnist32 demo images, seeds 0 and 1); 5e-3 on the [0, 1] frame (0.5 x 1e-2)
SMOOTH_WE_TOL = 5e-3


@pytest.fixture(scope="module")
def images():
    return {ds: demo_images(ds) for ds in ("fashion32", "mnist32")}


def _rand_clip(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=dtype) * 2 - 1


# ------------------------------------------------------------------ data: exact flow
@pytest.mark.parametrize("kwargs", [dict(drift=(2.0, -4.0)),   # 1 px right, 2 px up per frame
                                    dict(angle=180.0),         # 90 degrees per frame
                                    dict(zoom=9.0),            # x3 per frame about the centre
                                    dict(drift=(2.0, 2.0), angle=180.0)])
def test_exact_flow_is_exact_for_grid_preserving_motions(kwargs):
    # consecutive frames related by a motion that maps pixel centres onto pixel centres: the
    # warp reads frame t + 1 exactly at its samples, so frame t is reproduced to rounding
    x = _rand_clip((1, 32, 32))
    c = similarity_clip(x, 3, **kwargs)
    warped = warp_clip(c.frames, c.flow)
    assert c.valid.sum() >= 2 * 16  # the check covers pixels
    err = ((warped - c.frames[:-1]) * c.valid).abs().max()
    assert err < 1e-9
    assert warping_error(c.frames, c.flow, c.valid) < 1e-18


@pytest.mark.parametrize("motion", SMOOTH)
@pytest.mark.parametrize("ds", ["fashion32", "mnist32"])
def test_exact_flow_warps_real_clips_within_interpolation_error(images, ds, motion):
    x, idx = images[ds]
    c = make_clips(x, idx, motion=motion, frames=8, seed=0)
    exact = warping_error(c.clips, c.flows, c.valid)
    assert exact.shape == (len(idx),)
    assert (exact <= SMOOTH_WE_TOL).all()
    # the flow carries the motion: it beats no motion on every clip, the reversed motion by 2x
    assert (exact < warping_error(c.clips, torch.zeros_like(c.flows), c.valid)).all()
    assert 2 * exact.mean() < warping_error(c.clips, -c.flows, c.valid).mean()
    # valid marks exactly the pixels whose correspondent stays in the frame
    pos = torch.stack(torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="xy"))
    q = pos + c.flows
    inside = ((q >= 0) & (q <= 31)).all(dim=2, keepdim=True)
    assert torch.equal(c.valid.bool(), inside)


@pytest.mark.parametrize("ds", ["fashion32", "mnist32"])
def test_bounce_is_moving_mnist_scaled_and_its_flow_exact(images, ds):
    x, idx = images[ds]
    c = make_clips(x, idx, motion="bounce", frames=16, seed=3)
    assert c.clips.shape == (8, 16, 1, 32, 32)
    assert (warping_error(c.clips, c.flows, c.valid) < 1e-20).all()
    for k, info in enumerate(c.motions):
        r0, c0, h, w = info["box"]
        patch = x[k, :, r0:r0 + h, c0:c0 + w]
        assert 1.0 <= torch.tensor(info["velocity"]).norm() <= 3.0
        for t, (py, px) in enumerate(info["positions"]):
            assert 0 <= py <= 32 - h and 0 <= px <= 32 - w
            frame = c.clips[k, t]
            assert torch.equal(frame[:, py:py + h, px:px + w], patch)
            rest = frame.clone()
            rest[:, py:py + h, px:px + w] = -1
            assert (rest == -1).all()
    # the object reaches a border and comes back (reflection) within 16 frames for most clips
    turned = sum(any((b[0] - a[0]) * (d[0] - c_[0]) < 0 or (b[1] - a[1]) * (d[1] - c_[1]) < 0
                     for a, b, c_, d in zip(m["positions"], m["positions"][1:],
                                            m["positions"][1:], m["positions"][2:], strict=False))
                 for m in c.motions)
    assert turned >= 4


def test_clips_are_seeded_per_clip_and_batch_independent(images):
    x, idx = images["mnist32"]
    for motion in ["similarity", "bounce"]:
        a = make_clips(x[[2, 5]], [2, 5], motion=motion, seed=7)
        b = make_clips(x[[5]], [5], motion=motion, seed=7)
        again = make_clips(x[[2, 5]], [2, 5], motion=motion, seed=7)
        other = make_clips(x[[2, 5]], [2, 5], motion=motion, seed=8)
        assert torch.equal(a.clips[1], b.clips[0]) and torch.equal(a.flows[1], b.flows[0])
        assert torch.equal(a.clips, again.clips) and a.motions == again.motions
        assert not torch.equal(a.clips, other.clips)
    # clip i's randomness comes from (seed, i) alone
    c1 = make_clip(x[0], "translate", clip_generator(7, 5))
    assert torch.equal(c1.frames, make_clips(x[[0]], [5], motion="translate", seed=7).clips[0])


def test_clip_specs_load_the_named_split(monkeypatch, images):
    x, idx = images["fashion32"]
    calls = []

    def fake_split(ds, split):
        calls.append((ds, split))
        return ImageSet(ds, split, x, torch.arange(len(x)) + 100)

    monkeypatch.setattr(diffinv.data, "load_split", fake_split)
    cs = get_clips("fashion32-video:valid:1-3,6", frames=12, seed=4)
    assert calls == [("fashion32", "valid")]
    assert cs.clips.shape == (4, 12, 1, 32, 32) and cs.flows.shape == (4, 11, 2, 32, 32)
    assert cs.valid.shape == (4, 11, 1, 32, 32) and cs.indices == [1, 2, 3, 6]
    assert cs.labels.tolist() == [101, 102, 103, 106] and cs.name == "fashion32-video"
    assert all(m["motion"] == "similarity" for m in cs.motions)
    assert torch.equal(cs[3].frames, make_clips(x[[6]], [6], frames=12, seed=4).clips[0])
    assert get_clips("mnist32-bounce:test:0").motions[0]["motion"] == "bounce"
    with pytest.raises(UnknownNameError, match="fashion32-video"):
        get_clips("fashion32-vidoe:test:0")
    with pytest.raises(DiffinvError, match="out of range"):
        get_clips("fashion32-video:test:8")
    with pytest.raises(DiffinvError, match="frames"):
        get_clips("fashion32-video:test:0", frames=1)
    with pytest.raises(DiffinvError, match="get_clips"):
        get_images("fashion32-video:test:0-3")


# ------------------------------------------------------------------ operators
def _all_clip_operators():
    names = list(CLIP_OPERATORS) + ["frames:gaussian-blur", "frames:sr-bicubic",
                                    "frames:rotation-blur", "frames:blind-zoom-blur"]
    ops = [(n, make_clip_operator(n)) for n in names]
    ops += [("frames:inpaint-box", make_clip_operator("frames:inpaint-box", box=8))]
    ops += [(f"temporal-{b}-w{w}", TemporalBlur(w, b))
            for b in ("circular", "replicate", "reflect", "zero") for w in (1, 4, 7)]
    ops += [("temporal-blur+motion-blur shared", make_clip_operator("temporal-blur+motion-blur",
                                                                    shared=True)),
            ("chain sr4 after temporal", ClipChain([TemporalBlur(3, "replicate"),
                                                    make_clip_operator("video-sr4")]))]
    return ops


@pytest.mark.parametrize("name,op", _all_clip_operators(), ids=lambda v: v if isinstance(v, str)
                         else "")
@pytest.mark.parametrize("batched", [False, True])
def test_clip_operators_are_linear_with_exact_adjoints(name, op, batched):
    op = op.double()
    shape = (3, 8, 2, 16, 16) if batched else (8, 2, 16, 16)
    x, x2 = _rand_clip(shape, 0), _rand_clip(shape, 1)
    gens = [clip_generator(0, i) for i in range(shape[0] if batched else 1)]
    p = op.draw_params(gens, shape[-4:], dtype=torch.float64)
    if not batched:
        p = {k: v[0] for k, v in p.items()}  # one clip's parameters, without the clip axis
    y = op(x, **p)
    assert y.ndim == x.ndim and y.shape[:-3] == x.shape[:-3]
    a, b = 0.7, -1.3
    torch.testing.assert_close(op(a * x + b * x2, **p), a * y + b * op(x2, **p),
                               rtol=1e-10, atol=1e-10)
    v = _rand_clip(y.shape, 2)
    lhs, rhs = (y * v).sum(), (x * op.adjoint(v, **p)).sum()
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))


def test_adjoint_float32_precision():
    for name in CLIP_OPERATORS:
        op = make_clip_operator(name)
        x = _rand_clip((2, 8, 1, 32, 32), dtype=torch.float32)
        p = op.draw_params([clip_generator(1, i) for i in range(2)], x.shape[1:])
        y = op(x, **p)
        v = _rand_clip(y.shape, 3, torch.float32)
        lhs, rhs = (y * v).sum(), (x * op.adjoint(v, **p)).sum()
        assert abs(lhs - rhs) <= 1e-5 * y.norm() * v.norm(), name


def test_temporal_blur_is_the_uniform_psf_along_time():
    x = _rand_clip((2, 9, 1, 4, 4))
    T, w = 9, 7
    y = TemporalBlur(w, "circular")(x)
    ref = torch.stack([sum(x[:, (s + k) % T] for k in range(-3, 4)) / w for s in range(T)], 1)
    torch.testing.assert_close(y, ref)
    yr = TemporalBlur(w, "replicate")(x)
    ref = torch.stack([sum(x[:, min(max(s + k, 0), T - 1)] for k in range(-3, 4)) / w
                       for s in range(T)], 1)
    torch.testing.assert_close(yr, ref)
    M = TemporalBlur(w, "circular").matrix(T)
    torch.testing.assert_close(M, M.T)  # symmetric circulant: A^T = A
    for b in ("circular", "replicate", "reflect"):  # a constant clip is preserved
        torch.testing.assert_close(TemporalBlur(w, b).matrix(T).sum(1), torch.ones(T,
                                                                                  dtype=M.dtype))
    const = torch.full((9, 1, 4, 4), 0.3, dtype=torch.float64)
    torch.testing.assert_close(TemporalBlur(w)(const), const)
    assert torch.equal(TemporalBlur(1)(x), x)


def test_per_frame_operators_act_frame_by_frame_and_draw_per_frame():
    x = _rand_clip((8, 1, 32, 32))
    op = make_clip_operator("video-inpaint-random")
    p = op.draw_params([clip_generator(0, 0)], x.shape)
    m = p["mask"][0]
    assert m.shape == (8, 1, 32, 32)
    assert all(abs(m[t].mean().item() - 0.5) < 1e-9 for t in range(8))  # 50% removed per frame
    assert not torch.equal(m[0], m[1])  # a mask per frame
    torch.testing.assert_close(op(x, mask=m), x * m)
    shared = make_clip_operator("video-inpaint-random", shared=True)
    ms = shared.draw_params([clip_generator(0, 0)], x.shape)["mask"][0]
    assert all(torch.equal(ms[0], ms[t]) for t in range(8))
    # parameters of a clip do not depend on the batch it is drawn in
    both = op.draw_params([clip_generator(0, 4), clip_generator(0, 9)], x.shape)["mask"]
    alone = op.draw_params([clip_generator(0, 9)], x.shape)["mask"]
    assert torch.equal(both[1], alone[0])
    sr = make_clip_operator("video-sr4")
    assert sr(x).shape == (8, 1, 8, 8)
    assert sr.adjoint(sr(x)).shape == x.shape
    # the composite: with a kernel shared over frames, temporal and spatial blur commute
    chain = make_clip_operator("temporal-blur+motion-blur", shared=True)
    k = chain.draw_params([clip_generator(0, 1)], x.shape)
    pf = make_clip_operator("video-motion-blur")
    torch.testing.assert_close(chain(x, **k), pf(TemporalBlur()(x), **k))


def test_bad_clips_and_parameters_are_refused():
    op = make_clip_operator("temporal-blur")
    with pytest.raises(ShapeError, match="at least 2"):
        op(_rand_clip((1, 1, 8, 8)))  # one frame: an image, not a clip
    with pytest.raises(ShapeError, match=r"\(T, C, H, W\)"):
        op(_rand_clip((1, 8, 8)))
    with pytest.raises(ShapeError, match="at least 7 frames"):
        op(_rand_clip((5, 1, 8, 8)))  # circular PSF wider than the clip
    assert TemporalBlur(7, "replicate")(_rand_clip((5, 1, 8, 8))).shape == (5, 1, 8, 8)
    bad = _rand_clip((8, 1, 8, 8))
    bad[3, 0, 2, 2] = float("nan")
    with pytest.raises(NonFiniteError):
        op(bad)
    with pytest.raises(TypeError):
        check_clip(torch.zeros(8, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ShapeError, match=r"frames\[2\] has shape"):
        stack_frames([torch.zeros(1, 32, 32), torch.zeros(1, 32, 32), torch.zeros(1, 16, 16)])
    assert stack_frames([torch.zeros(1, 8, 8)] * 3).shape == (3, 1, 8, 8)
    inp = make_clip_operator("video-inpaint-random")
    x = _rand_clip((8, 1, 8, 8))
    m = inp.draw_params([clip_generator(0, 0)], (7, 1, 8, 8))["mask"]
    with pytest.raises(ShapeError, match="per frame"):
        inp(x, mask=m)  # masks for 7 frames on an 8-frame clip
    m8 = inp.draw_params([clip_generator(0, 0)], x.shape)["mask"]
    with pytest.raises(ShapeError, match="does not fit"):
        inp.adjoint(_rand_clip((8, 1, 16, 16)), mask=m8)  # a measurement of another frame size
    with pytest.raises(ShapeError, match="not divisible"):
        make_clip_operator("video-sr4")(_rand_clip((8, 1, 30, 30)))
    with pytest.raises(UnknownNameError, match="temporal-blur"):
        make_clip_operator("temporal-blurr")
    with pytest.raises(UnknownNameError):
        make_clip_operator("frames:no-such-op")
    with pytest.raises(DiffinvError, match="does not take"):
        make_clip_operator("temporal-blur", sigma=2)
    with pytest.raises(DiffinvError, match="not linear"):
        make_clip_operator("frames:nonlinear-blur").adjoint(_rand_clip((8, 1, 32, 32)))
    with pytest.raises(DiffinvError, match="boundary"):
        TemporalBlur(7, "periodic")
    with pytest.raises(DiffinvError, match="image Operator"):
        PerFrame(TemporalBlur())


# ------------------------------------------------------------------ warping error
def test_warping_error_is_zero_for_truth_and_positive_for_flicker(images):
    x, idx = images["mnist32"]
    c = make_clips(x, idx, motion="bounce", frames=8, seed=0)
    assert (warping_error(c.clips, c.flows, c.valid) < 1e-20).all()
    assert warping_error(c.clips[0], c.flows[0], c.valid[0]).shape == ()
    g = torch.Generator().manual_seed(0)
    shuffled = c.clips[:, torch.tensor([3, 0, 6, 1, 7, 2, 5, 4])]
    assert (warping_error(shuffled, c.flows, c.valid) > 1e-3).all()
    for motion in ["bounce", *SMOOTH]:
        c = make_clips(x, idx, motion=motion, frames=8, seed=0)
        noisy = (c.clips + 0.3 * torch.randn(c.clips.shape, generator=g)).clamp(-1, 1)
        truth = warping_error(c.clips, c.flows, c.valid)
        flicker = warping_error(noisy, c.flows, c.valid)
        assert (flicker > 1e-2).all() and (flicker > 3 * truth).all(), motion
    # a pair with no valid pixel counts 0 (Lai et al.'s normaliser), and the mask is checked
    none = torch.zeros_like(c.valid)
    assert (warping_error(noisy, c.flows, none) == 0).all()
    with pytest.raises(ShapeError, match="does not fit"):
        warping_error(c.clips, c.flows[:, :-1], c.valid)
    with pytest.raises(ShapeError, match="in \\[0, 1\\]"):
        warping_error(c.clips, c.flows, 2 * c.valid)


def test_estimated_flow_warping_error(images):
    pytest.importorskip("cv2")
    x, idx = images["fashion32"]
    c = make_clips(x[:3], idx[:3], motion="translate", frames=6, seed=0)
    flow, valid = estimate_flow(c.clips)
    assert flow.shape == c.flows.shape and valid.shape == c.valid.shape
    fg = (c.clips[:, :-1] > -0.9) & valid.bool() & c.valid.bool()
    epe = (flow - c.flows).norm(dim=2, keepdim=True)[fg].mean()
    assert epe < 0.2  # px, on the object (flat background has no flow to find)
    truth = warping_error_estimated(c.clips, c.clips)
    assert (truth <= SMOOTH_WE_TOL).all()
    g = torch.Generator().manual_seed(1)
    noisy = (c.clips + 0.3 * torch.randn(c.clips.shape, generator=g)).clamp(-1, 1)
    assert (warping_error_estimated(noisy, c.clips, "farneback") > 3 * truth).all()
    with pytest.raises(ShapeError, match="same shape"):
        warping_error_estimated(noisy[:2], c.clips)


def test_estimated_flow_refuses_without_opencv(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 -> ImportError
    with pytest.raises(DiffinvError, match=r"diffinv\[video\]"):
        estimate_flow(_rand_clip((4, 1, 8, 8)))
