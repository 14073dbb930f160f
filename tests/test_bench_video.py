"""The "video-restore" job kind (issue 39, item 6) on the tiny task file tests/fixtures/
video_tiny.toml (2 fashion32 validation clips of 3 frames, 2 iterations, the embedded prior): rows
per clip, the do-nothing and WE-floor rows checked against a direct computation, resume without
duplicated rows, shards, and bad grids refused before any row."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from diffinv.bench import BenchConfigError, run_benchmark
from diffinv.bench.records import read_records
from diffinv.errors import MissingAssetError

TINY = Path(__file__).parent / "fixtures" / "video_tiny.toml"
IDENTITY, FLOOR = "A^+ y per frame", "ground truth (WE floor)"

pytestmark = pytest.mark.assets


@pytest.fixture(scope="module", autouse=True)
def _assets():
    try:
        from diffinv import load_prior
        from diffinv.data import load_split

        load_split("fashion32", "valid")
        load_prior("fashion32")
    except MissingAssetError as e:
        pytest.skip(f"fashion32 (data or prior) is not installed: {e}")


def _copy(tmp: Path, text: str | None = None) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    p = tmp / TINY.name
    if text is None:
        shutil.copy(TINY, p)
    else:
        p.write_text(text)
    return p


def _rows(folder: Path) -> list[dict]:
    rows = []
    for f in sorted(folder.glob("video_tiny*.jsonl")):
        rows += read_records(f)[0]
    return rows


def _by(rows: list[dict]) -> dict[tuple[str, int], dict]:
    return {(r["cell"]["method"]["label"], r["index"]): r for r in rows}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("video-bench")
    out = run_benchmark(_copy(d), progress=False)
    return d, out


def test_tiny_task_file_runs_end_to_end_with_rows_per_clip(full_run):
    d, out = full_run
    assert out.written == 10 and out.skipped == 0  # 5 methods x 2 clips
    rows = _rows(d)
    assert len(rows) == 10 and len({r["key"] for r in rows}) == 10
    for r in rows:
        assert r["kind"] == "video-restore" and r["index"] in (0, 1)
        assert set(r["metrics"]) == {"psnr", "ssim", "we"}
        assert len(r["extra"]["psnr_frames"]) == 3 and r["extra"]["frames"] == 3
        assert r["metrics"]["psnr"] == pytest.approx(sum(r["extra"]["psnr_frames"]) / 3)
        assert r["identity"] == {"dataset": "fashion32-video:valid", "frames": 3, "clip_seed": 0}
    md = (d / "video_tiny.md").read_text()
    for label in (IDENTITY, FLOOR, "DMPlug per frame", "DPS per frame, shared noise",
                  "DMPlug video"):
        assert f"| {label} |" in md
    assert "| we |" in md and "s/clip" in md
    by = _by(rows)
    assert by[("DMPlug video", 0)]["nfe"] == 2 * 3 and by[("DMPlug per frame", 1)]["nfe"] == 6


def test_identity_and_we_floor_rows_match_a_direct_computation(full_run):
    from diffinv.metrics import psnr
    from diffinv.video import get_clips, measure_clip, warping_error

    d, _ = full_run
    by = _by(_rows(d))
    cs = get_clips("fashion32-video:valid:0-1", frames=3)
    m = measure_clip(cs.clips, "video-sr4", "gaussian:0.01", 0, cs.indices)
    op = m.make_operator()
    nearest = op.adjoint(m.y, **m.params) * 16  # A^+ of 4x4 average pooling
    B, T = cs.clips.shape[:2]
    p = psnr(nearest.reshape(B * T, 1, 32, 32), cs.clips.reshape(B * T, 1, 32, 32)).reshape(B, T)
    we_y = warping_error(nearest, cs.flows, cs.valid)
    floor = warping_error(cs.clips, cs.flows, cs.valid)
    for b in range(B):
        row = by[(IDENTITY, b)]
        assert row["metrics"]["psnr"] == pytest.approx(float(p[b].double().mean()), abs=1e-3)
        assert row["metrics"]["we"] == pytest.approx(float(we_y[b]), rel=1e-4)
        assert row["nfe"] == 0
        f = by[(FLOOR, b)]
        assert math.isinf(f["metrics"]["psnr"]) and f["metrics"]["ssim"] == pytest.approx(1.0)
        assert f["metrics"]["we"] == pytest.approx(float(floor[b]), rel=1e-6)
        assert 0 < f["metrics"]["we"] < row["metrics"]["we"]


def test_resume_skips_done_clips_and_recomputes_lost_ones_identically(full_run, tmp_path):
    d, _ = full_run
    again = run_benchmark(d / TINY.name, progress=False)
    assert again.written == 0 and again.skipped == 10
    assert len(_rows(d)) == 10
    # an interrupted run: keep 5 of the 10 rows (one cell half done) and a line cut by the kill,
    # resume, get the same 10 rows back
    part = tmp_path / "part"
    task = _copy(part)
    lines = (d / "video_tiny.jsonl").read_text().splitlines(keepends=True)
    (part / "video_tiny.jsonl").write_text("".join(lines[:5]) + lines[5][:40])
    out = run_benchmark(task, progress=False)
    assert out.written == 5 and out.skipped == 5
    rows = _rows(part)
    assert len(rows) == 10 and len({r["key"] for r in rows}) == 10
    ref = {r["key"]: r["metrics"] for r in _rows(d)}
    for r in rows:
        for k, v in r["metrics"].items():
            assert v == pytest.approx(ref[r["key"]][k], rel=1e-4, abs=1e-6), (r["cell"], k)


def test_shards_split_the_clips_and_merge_into_one_table(full_run, tmp_path):
    d, _ = full_run
    task = _copy(tmp_path)
    only = [f"method={IDENTITY}", f"method={FLOOR}"]
    a = run_benchmark(task, shard="0/2", only=only, progress=False)
    b = run_benchmark(task, shard="1/2", only=only, progress=False)
    assert a.written == 2 and b.written == 2
    assert {r["index"] for r in read_records(tmp_path / "video_tiny.part0of2.jsonl")[0]} == {0}
    ref = {r["key"]: r["metrics"] for r in _rows(d)}
    rows = _rows(tmp_path)
    assert len(rows) == 4
    for r in rows:
        assert r["metrics"]["we"] == pytest.approx(ref[r["key"]]["we"], rel=1e-6)
    assert f"| {IDENTITY} |" in (tmp_path / "video_tiny.md").read_text()


@pytest.mark.parametrize("edit, fragment", [
    (lambda s: s.replace('operator = "video-sr4"', 'operator = "temporal-blur", width = 3'),
     "couples the frames"),
    (lambda s: s.replace('"fashion32-video:valid"', '"fashion32:valid"'), "clip data set"),
    (lambda s: s.replace('{name = "truth", label', '{name = "truth", iterations = 3, label'),
     "takes no parameters"),
    (lambda s: s.replace("frames = 3", "frames = 1"), "frames"),
    (lambda s: s.replace('"psnr", "ssim", "we"', '"psnr", "warp"'), "warp"),
    (lambda s: s.replace('operator = "video-sr4"', 'operator = "temporal-blur", width = 7'),
     "circular temporal PSF"),
], ids=["per-frame-on-temporal", "image-data-set", "truth-params", "one-frame", "metric",
        "psf-wider-than-clip"])
def test_bad_grids_refused_before_any_row(tmp_path, monkeypatch, edit, fragment):
    import dataclasses

    from diffinv.bench import jobs
    from diffinv.bench.catalog import get_job_kind

    def no_unit(ctx, cell, indices):  # refused before any unit is computed, not during one
        pytest.fail(f"a unit of {cell.labels} was computed")

    kind = get_job_kind("video-restore")
    monkeypatch.setitem(jobs._KINDS, "video-restore", dataclasses.replace(kind, run=no_unit))
    task = _copy(tmp_path, edit(TINY.read_text()))
    with pytest.raises(Exception) as e:  # noqa: PT011 -- BenchConfigError or UnknownNameError
        run_benchmark(task, progress=False)
    assert fragment in str(e.value)
    assert not list(tmp_path.glob("video_tiny*.jsonl"))
    assert isinstance(e.value, BenchConfigError | KeyError | ValueError)


def test_rows_record_what_makes_them_reproducible(full_run):
    d, _ = full_run
    r = _by(_rows(d))[("DPS per frame, shared noise", 1)]
    assert r["cell"]["method"]["params"]["frame_seeds"] == "shared"
    assert r["cell"]["task"]["params"] == {"operator": "video-sr4", "noise": "gaussian:0.01"}
    assert r["cell"]["prior"]["resolved"]["sha256"]
    assert json.dumps(r)  # plain JSON
    assert torch.isfinite(torch.tensor(r["metrics"]["psnr"]))
