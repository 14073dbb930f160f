"""``diffinv measure`` / ``diffinv solve`` on clips (issue 39, item 5): a GIF, a folder of frames
and a clip data set measured with clip operators, restored by dmplug-video and by image solvers
frame by frame (a few iterations of the tiny prior); bad clips refused in one line with nothing
left behind; and the per-frame machinery (diffinv.video.perframe) against dmplug-video's Base."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffinv.cli import main
from diffinv.errors import DiffinvError, MissingAssetError

T = 3  # frames of the test clips


def _frame(t: int, size: int = 32) -> np.ndarray:
    a = np.zeros((size, size), np.uint8)
    a[8 + 2 * t:20 + 2 * t, 9 + t:21 + t] = 200
    a[14 + 2 * t:16 + 2 * t, 12:18] = 90
    return a


def _gif(path: Path, n: int = T) -> Path:
    ims = [Image.fromarray(_frame(t)) for t in range(n)]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=100, loop=0)
    return path


def _folder(path: Path, names: list[str]) -> Path:
    path.mkdir()
    for t, name in enumerate(names):
        Image.fromarray(_frame(t)).save(path / name)
    return path


def _gif_frames(path: Path) -> int:
    with Image.open(path) as im:
        return im.n_frames


def _nothing_written(parent: Path, name: str) -> bool:
    return not (parent / name).exists() and not list(parent.glob(f".{name}.*"))


def _has_cv2() -> bool:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


def _check_outputs(out: Path, B: int, frames: int) -> dict:
    x = load_file(out / "result.safetensors")["x"]
    assert tuple(x.shape) == (B, frames, 1, 32, 32)
    assert sorted(p.name for p in (out / "frames").iterdir()) == [
        f"result_{t:03d}.png" for t in range(frames)]
    assert _gif_frames(out / "result.gif") >= 1
    assert _gif_frames(out / "side_by_side.gif") == frames
    assert (out / ".diffinv-output.json").is_file()
    info = json.loads((out / "metrics.json").read_text())
    assert len(info["psnr"]) == B and all(len(r) == frames for r in info["psnr"])
    assert len(info["ssim"]) == B and len(info["psnr_mean"]) == B
    assert info["psnr_mean"][0] == pytest.approx(sum(info["psnr"][0]) / frames)
    return info


# ------------------------------------------------------------------ round trips
def test_gif_round_trip_with_dmplug_video(tmp_path, tiny_prior, capsys):
    gif = _gif(tmp_path / "clip.gif")
    m, r = tmp_path / "m", tmp_path / "r"
    assert main(["measure", str(gif), "--op", "video-sr4", "--noise", "gaussian:0.01",
                 "--seed", "2", "-o", str(m)]) == 0
    assert "1 clip(s) of 3 frames" in capsys.readouterr().out
    spec = json.loads((m / "spec.json").read_text())
    assert spec["format"] == "diffinv-clip-measurement" and spec["fps"] == pytest.approx(10.0)
    truth = load_file(m / "truth.safetensors")["x"]
    want = torch.from_numpy(np.stack([_frame(t) for t in range(T)]).astype(np.float32)) / 127.5 - 1
    assert torch.allclose(truth[0, :, 0], want, atol=1e-6)  # the GIF's frames, in order

    assert main(["solve", str(m), "--solver", "dmplug-video", "--prior", str(tiny_prior),
                 "-p", "iterations=2", "-p", "pixel=false", "-o", str(r), "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    info = _check_outputs(r, 1, T)
    assert info["solver"] == "dmplug-video" and info["per_frame"] is False
    assert info["nfe"] == 2 * 3 and info["frames"] == T
    if _has_cv2():  # no flow in a GIF: WE under the flow estimated on the truth
        assert len(info["warping_error"]) == 1 and info["warping_error"][0] >= 0
        assert info["warping_error_flow"].startswith("estimated")
        assert info["warping_error_truth"][0] <= info["warping_error"][0] + 1e-9
    else:
        assert info["warping_error"] is None and "unavailable" in info["warping_error_flow"]


def test_folder_round_trip_with_dmplug_frame_by_frame(tmp_path, tiny_prior, capsys):
    # names sort with their digits as numbers: frame_2 before frame_10
    clip = _folder(tmp_path / "frames", ["frame_1.png", "frame_2.png", "frame_10.png"])
    (clip / "notes.txt").write_text("not a frame")
    m, r = tmp_path / "m", tmp_path / "r"
    assert main(["measure", str(clip), "--op", "frames:inpaint-random", "-p", "p=0.5",
                 "--noise", "gaussian:0.05", "-o", str(m)]) == 0
    truth = load_file(m / "truth.safetensors")["x"]
    assert tuple(truth.shape) == (1, T, 1, 32, 32)
    for t in range(T):
        assert torch.allclose(truth[0, t, 0], torch.from_numpy(_frame(t)).float() / 127.5 - 1)
    assert main(["solve", str(m), "--solver", "dmplug", "--prior", str(tiny_prior),
                 "-p", "iterations=2", "-o", str(r), "--no-progress"]) == 0
    info = _check_outputs(r, 1, T)
    assert info["per_frame"] is True and info["frame_seeds"] == "independent"
    assert info["nfe"] == 2 * 3  # all frames in each batched network call
    assert np.array(info["picked_iteration"]).shape == (1, T)  # a pick per frame
    capsys.readouterr()


@pytest.mark.assets
def test_clip_data_set_keeps_the_exact_flow_for_the_warping_error(tmp_path, tiny_prior, capsys):
    try:
        from diffinv.data import load_split

        load_split("fashion32", "valid")
    except MissingAssetError as e:
        pytest.skip(f"fashion32 is not installed: {e}")
    m, r = tmp_path / "m", tmp_path / "r"
    assert main(["measure", "--dataset", "fashion32-video:valid:0-1", "--frames", str(T),
                 "--op", "video-sr4", "--noise", "gaussian:0.01", "-o", str(m)]) == 0
    assert "exact flow" in capsys.readouterr().out
    assert main(["solve", str(m), "--solver", "identity", "--prior", str(tiny_prior),
                 "-o", str(r)]) == 0
    info = _check_outputs(r, 2, T)
    assert info["warping_error_flow"].startswith("exact") and len(info["warping_error"]) == 2
    from diffinv.video import get_clips, warping_error

    cs = get_clips("fashion32-video:valid:0-1", frames=T)
    floor = warping_error(cs.clips, cs.flows, cs.valid).tolist()
    assert info["warping_error_truth"] == pytest.approx(floor, rel=1e-5)
    assert info["nfe"] == 0


def test_overwrite_rules_apply_to_clip_results(tmp_path, tiny_prior, capsys):
    m, r = tmp_path / "m", tmp_path / "r"
    assert main(["measure", str(_gif(tmp_path / "c.gif")), "--op", "video-sr4", "-o", str(m)]) == 0
    argv = ["solve", str(m), "--solver", "identity", "--prior", str(tiny_prior), "-o", str(r)]
    assert main(argv) == 0
    assert main(argv) == 1 and "not empty" in capsys.readouterr().err
    (r / "mine.txt").write_text("a file of mine")
    assert main([*argv, "--overwrite"]) == 1 and "mine.txt" in capsys.readouterr().err
    (r / "mine.txt").unlink()
    assert main([*argv, "--overwrite"]) == 0
    assert main(["measure", str(tmp_path / "c.gif"), "--op", "video-sr4", "-o", str(m)]) == 1
    assert main(["solve", str(m), "--solver", "identity", "--prior", str(tiny_prior),
                 "-o", str(m), "--overwrite"]) == 1  # never its own input
    assert "input" in capsys.readouterr().err


def test_list_shows_clip_operators_in_their_own_section(capsys):
    assert main(["measure", "--list"]) == 0
    out = capsys.readouterr().out
    ops, clips, noise = (out.index("operators:"), out.index("clip operators"),
                         out.index("noise models:"))
    assert ops < clips < noise
    section = out[clips:noise]
    for name in ("video-sr4", "temporal-blur", "frames:<image operator>"):
        assert name in section
    assert "video-sr4" not in out[:clips]


# ------------------------------------------------------------------ refusals
def _bad_folder_mixed(tmp_path: Path) -> Path:
    d = _folder(tmp_path / "clip", ["a.png"])
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(d / "b.png")
    return d


def _bad_folder_one(tmp_path: Path) -> Path:
    return _folder(tmp_path / "clip", ["a.png"])


def _bad_folder_unreadable(tmp_path: Path) -> Path:
    d = _folder(tmp_path / "clip", ["a.png", "b.png"])
    (d / "c.png").write_bytes(b"\x89PNG not really")
    return d


def _bad_folder_empty(tmp_path: Path) -> Path:
    d = tmp_path / "clip"
    d.mkdir()
    (d / "readme.txt").write_text("no frames here")
    return d


def _bad_gif_one(tmp_path: Path) -> Path:
    return _gif(tmp_path / "clip.gif", 1)


def _bad_gif_truncated(tmp_path: Path) -> Path:
    p = _gif(tmp_path / "clip.gif")
    p.write_bytes(p.read_bytes()[:40])
    return p


def _bad_mp4(tmp_path: Path) -> Path:
    p = tmp_path / "clip.mp4"
    p.write_bytes(b"\x00" * 64)
    return p


@pytest.mark.parametrize("make, fragment", [
    (_bad_folder_mixed, "differ in size"),
    (_bad_folder_one, "1 frame"),
    (_bad_folder_unreadable, "cannot read image"),
    (_bad_folder_empty, "no image files"),
    (_bad_gif_one, "1 frame"),
    (_bad_gif_truncated, "cannot read clip"),
    (_bad_mp4, "imageio-ffmpeg"),
], ids=["mixed-sizes", "one-frame", "unreadable", "no-images", "one-frame-gif", "truncated-gif",
        "mp4-without-ffmpeg"])
def test_bad_clips_refused_in_one_line_leaving_nothing(tmp_path, capsys, monkeypatch, make,
                                                       fragment):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if not installed
    clip = make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["measure", str(clip), "--op", "video-sr4", "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert fragment in err and err.startswith("diffinv measure: error:")
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert _nothing_written(tmp_path, "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_bad_requests_refused_before_any_work(tmp_path, tiny_prior, capsys):
    clip = _gif(tmp_path / "c.gif")
    cases = [
        (["measure", str(clip), "--op", "gaussian-blur", "-o", "o"], "frames:gaussian-blur"),
        (["measure", str(clip), str(clip), "--op", "video-sr4", "-o", "o"], "one clip"),
        (["measure", "--dataset", "fashion32:test:0", "--op", "video-sr4", "-o", "o"],
         "fashion32-video"),
        (["measure", str(tmp_path / "c.png"), "--op", "video-sr4", "-o", "o"], "does not exist"),
    ]
    for argv, fragment in cases:
        argv = [a if a != "o" else str(tmp_path / "o") for a in argv]
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert fragment in err and len(err.strip().splitlines()) == 1, err
        assert _nothing_written(tmp_path, "o")
    mt = tmp_path / "mt"
    assert main(["measure", str(clip), "--op", "temporal-blur", "-p", "width=3", "-o",
                 str(mt)]) == 0
    solve = ["solve", str(mt), "--prior", str(tiny_prior), "-o", str(tmp_path / "r")]
    for extra, fragment in [(["--solver", "dps"], "couples the frames"),
                            (["--solver", "dmplug-video", "--frame-seeds", "shared"],
                             "frame_seeds"),
                            (["--solver", "dmplug-video", "--preset", "tuned32"], "presets"),
                            (["--solver", "nope"], "dmplug-video"),
                            (["--solver", "dmplug-video", "--blind"], "blind")]:
        assert main([*solve, *extra]) == 1, extra
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err, err
        assert _nothing_written(tmp_path, "r")
    # the identity row of a temporal operator is y itself
    assert main([*solve, "--solver", "identity"]) == 0
    x = load_file(tmp_path / "r" / "result.safetensors")["x"]
    y = load_file(mt / "measurement.safetensors")["y"]
    assert torch.equal(x, y)


# ------------------------------------------------------------------ the library pieces
def test_video_files_read_through_imageio_ffmpeg(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from diffinv.video.io import read_clip

    frames = [np.repeat(_frame(t)[..., None], 3, axis=2) for t in range(4)]

    def read_frames(path, pix_fmt="rgb24"):
        assert pix_fmt == "rgb24"
        yield {"size": (32, 32), "fps": 25.0, "duration": 0.16}
        for f in frames:
            yield f.tobytes()

    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", SimpleNamespace(read_frames=read_frames))
    p = tmp_path / "c.mp4"
    p.write_bytes(b"")
    x, fps = read_clip(p, frames=3)
    assert tuple(x.shape) == (3, 1, 32, 32) and fps == 25.0
    assert torch.allclose(x[2, 0], torch.from_numpy(_frame(2)).float() / 127.5 - 1, atol=1e-6)
    x16, _ = read_clip(p, size=16, channels=3)
    assert tuple(x16.shape) == (4, 3, 16, 16)


@pytest.fixture(scope="module")
def gaussian_prior():
    """The exact eps network of 8x8 Gaussian data (as tests/test_video_dmplug.py)."""
    from conftest import GaussianEps
    from diffinv.diffusion.prior import DiffusionPrior
    from diffinv.diffusion.schedule import VPSchedule

    S = 8
    g = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(S, dtype=torch.float64),
                            torch.arange(S, dtype=torch.float64), indexing="ij")
    mu = (1.2 * torch.exp(-((xs - 3.5) ** 2 + (ys - 3.5) ** 2) / 6) - 0.6).flatten()
    a = torch.randn(S * S, 6, generator=g, dtype=torch.float64) * 0.15
    sigma = a @ a.T + 0.02 * torch.eye(S * S, dtype=torch.float64)
    schedule = VPSchedule.linear()
    return DiffusionPrior(GaussianEps(mu, sigma, (1, S, S), schedule), schedule,
                          image_shape=(1, S, S))


def _clips8():
    from diffinv.video import similarity_clip

    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    blob = (1.6 * torch.exp(-((xs - 3.5) ** 2 + (ys - 3.5) ** 2) / 5) - 0.8)[None]
    return torch.stack([similarity_clip(blob, 3, drift=(2.0, 0.0)).frames,
                        similarity_clip(blob, 3, drift=(0.0, -2.0)).frames]).float()


def test_dmplug_frame_by_frame_equals_dmplug_video_base(gaussian_prior):
    from diffinv.seeding import batch_generators
    from diffinv.video.dmplug import DMPlugVideo
    from diffinv.video.measurement import measure_clip
    from diffinv.video.perframe import make_clip_solver

    m = measure_clip(_clips8(), "frames:inpaint-random", "gaussian:0.05", 4, settings={"p": 0.5})
    op = m.make_operator()
    per_frame = make_clip_solver("dmplug", operator=op, iterations=5)(m.y, m.public(),
                                                                       gaussian_prior, seed=7)
    base = DMPlugVideo(iterations=5, semantic=False, pixel=False)(m.y, m.public(),
                                                                  gaussian_prior, seed=7)
    assert per_frame.x.shape == m.x.shape
    assert torch.allclose(per_frame.x, base.x, atol=1e-5)
    # clip b alone, given its generator, gives what it gave in the batch
    alone = dataclasses.replace(m.public(), y=m.y[1:], params={k: v[1:] for k, v in
                                                                 m.params.items()})
    one = make_clip_solver("dmplug", operator=op, iterations=5)(
        alone.y, alone, gaussian_prior, seed=[batch_generators(7, 2)[1]])
    assert torch.allclose(one.x[0], per_frame.x[1], atol=1e-5)


def test_shared_frame_seeds_give_every_frame_the_same_stream(gaussian_prior):
    from diffinv.video.measurement import measure_clip
    from diffinv.video.perframe import frame_seed_generators, make_clip_solver

    gens = frame_seed_generators(3, 2, 4, "shared")
    draws = torch.stack([torch.randn(5, generator=g) for g in gens]).reshape(2, 4, 5)
    assert torch.equal(draws[0, 0], draws[0, 3]) and not torch.equal(draws[0, 0], draws[1, 0])
    ind = torch.stack([torch.randn(5, generator=g) for g in frame_seed_generators(3, 2, 4)])
    assert not torch.equal(ind[0], ind[1])
    assert torch.equal(ind[0], draws[0, 0])  # frame 0's stream either way
    # the same clip in every frame, no noise: shared-noise DPS gives the same frame T times
    still = _clips8()[:1, :1].expand(1, 3, 1, 8, 8).contiguous()
    m = measure_clip(still, "video-sr4", "none", 0, settings={"factor": 2})
    r = make_clip_solver("dps", operator=m.make_operator(), steps=3, scale=0.3,
                         frame_seeds="shared")(m.y, m.public(), gaussian_prior, seed=1)
    assert torch.allclose(r.x[0, 0], r.x[0, 2], atol=1e-6)
    r2 = make_clip_solver("dps", operator=m.make_operator(), steps=3, scale=0.3)(
        m.y, m.public(), gaussian_prior, seed=1)
    assert not torch.allclose(r2.x[0, 0], r2.x[0, 2], atol=1e-3)


def test_per_frame_solver_refuses_what_it_cannot_solve(gaussian_prior):
    from diffinv.video.measurement import measure_clip
    from diffinv.video.perframe import FrameByFrame, make_clip_solver

    m = measure_clip(_clips8(), "frames:sr-avgpool", "gaussian:0.05", 0, settings={"factor": 2})
    solver = make_clip_solver("ddrm", operator=m.make_operator(), steps=3)
    with pytest.raises(DiffinvError, match="hidden truth"):
        solver(m.y, m, gaussian_prior)
    with pytest.raises(DiffinvError, match="clip measurement"):
        solver(m.y, m.make_operator(), gaussian_prior)
    mt = measure_clip(_clips8(), "temporal-blur", "gaussian:0.05", 0, settings={"width": 3})
    with pytest.raises(DiffinvError, match="couples the frames"):
        make_clip_solver("ddrm", operator=mt.make_operator())
    with pytest.raises(DiffinvError, match="frame_seeds"):
        FrameByFrame(solver.solver, "sometimes")
