"""The "restore" job kind wired to the real physics and metrics, with a stand-in solver registry,
prior and data split (the real ones are other issues' work; these are monkeypatched in).

The stand-in solvers are deterministic functions of (y, the public measurement, the per-image
generators): "adjoint" returns gain * A^T y plus 0.01 N(0, I) drawn from the per-image generator,
"measured" returns y plus the same draw. They assert that they never receive the hidden truth.
A ``batch_shift`` parameter adds batch_shift * (batch size) to the result: the stand-in for a
solver whose float rounding depends on the batch size and is amplified over many steps (DPS).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import diffinv
import diffinv.data
import diffinv.solvers
from diffinv.bench import BenchConfigError, run_benchmark
from diffinv.bench.errors import BenchRecordError
from diffinv.bench.kinds.restore import derived_seed
from diffinv.bench.records import read_records
from diffinv.data import ImageSet
from diffinv.errors import DiffinvError, UnknownNameError
from diffinv.metrics import psnr, ssim
from diffinv.physics import Measurement, make_operator, measure
from diffinv.seeding import image_generators, randn

SHA = "5e" * 32
SEEN: dict[tuple[str, str, int], torch.Tensor] = {}


def fake_solver_registry(name: str, **params):
    if name not in ("adjoint", "measured"):
        raise UnknownNameError("solver", name, ["adjoint", "measured"])
    gain = float(params.get("gain", 1.0))
    batch_shift = float(params.get("batch_shift", 0.0))

    def solve(y, physics, prior, seed):
        assert isinstance(physics, Measurement) and physics.x is None and not physics.true_params
        assert prior.sha256 == SHA
        for j, i in enumerate(physics.indices):
            SEEN[(name + str(gain), physics.operator, i)] = y[j].clone()
        z = 0.01 * randn(y.shape[1:], seed)
        base = gain * physics.make_operator().adjoint(y, **physics.params) if name == "adjoint" else y
        x = base + z + batch_shift * y.shape[0]
        trace = {}
        if params.get("delta_kernel"):  # a blind solver's kernel estimate: a 5x5 delta
            trace["kernel"] = torch.zeros(y.shape[0], 5, 5)
            trace["kernel"][:, 2, 2] = 1
        return SimpleNamespace(x=x, nfe=7, seconds=0.25 * y.shape[0], trace=trace)

    return solve


def fake_split(dataset: str, split: str) -> ImageSet:
    g = torch.Generator().manual_seed(123)
    x = torch.rand((9, 1, 32, 32), generator=g) * 2 - 1
    return ImageSet("fashion32", split, x, torch.arange(9) % 10)


@pytest.fixture
def fakes(monkeypatch):
    monkeypatch.setattr(diffinv.solvers, "make_solver", fake_solver_registry, raising=False)
    monkeypatch.setattr(diffinv.data, "load_split", fake_split)
    monkeypatch.setattr(diffinv, "load_prior", lambda name, device="cpu", precision="fp32":
                        SimpleNamespace(sha256=SHA, domain="fashion32", name=name,
                                        precision=precision))
    SEEN.clear()


TASKS = [{"name": "deblur", "operator": "gaussian-blur", "noise": "gaussian:0.05"},
         {"name": "inpaint", "operator": "inpaint-random", "noise": "gaussian:0.05"}]
METHODS = ["adjoint", {"name": "adjoint", "gain": 0.5, "label": "half"}, "measured"]


def write_task(d: Path, methods=tuple(METHODS), tasks=tuple(TASKS), metrics=("psnr", "ssim"),
               **run) -> Path:
    d.mkdir(parents=True, exist_ok=True)

    def value(v):
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {json.dumps(x)}" for k, x in v.items()) + "}"
        return json.dumps(v)

    lines = [f"methods = [{', '.join(value(m) for m in methods)}]",
             f"tasks = [{', '.join(value(t) for t in tasks)}]",
             'priors = ["fake32"]', f"metrics = {json.dumps(list(metrics))}", "[run]"]
    table = {"name": "r", "seed": 3, "dataset": "fashion32:test", "n_images": 5,
             "batch_size": 3, "output": "out", **run}
    lines += [f"{k} = {json.dumps(v)}" for k, v in table.items() if v is not None]
    (d / "task.toml").write_text("\n".join(lines) + "\n")
    return d / "task.toml"


def test_rows_equal_a_one_image_recomputation(tmp_path, fakes):
    out = run_benchmark(write_task(tmp_path), progress=False)
    assert out.written == 3 * 2 * 5
    rows = read_records(tmp_path / "out" / "r.jsonl")[0]
    images = fake_split("fashion32", "test").images
    for r in rows:
        i = r["index"]
        method, task = r["cell"]["method"], r["cell"]["task"]
        params = dict(task["params"])
        op, noise = params.pop("operator"), params.pop("noise")
        x = images[i:i + 1]
        m = measure(x, make_operator(op, **params), noise, 3, [i])  # image i alone
        solve = fake_solver_registry(method["name"], **method.get("params", {}))
        res = solve(m.y, m.public(), SimpleNamespace(sha256=SHA),
                    image_generators(derived_seed(3, "solver"), [i]))
        # float32 batch-vs-single differences only (~1e-7 relative per pixel)
        assert r["metrics"]["psnr"] == pytest.approx(float(psnr(res.x, x)), abs=1e-4)
        assert r["metrics"]["ssim"] == pytest.approx(float(ssim(res.x, x)), abs=1e-5)
        assert (r["nfe"], r["seconds"]) == (7.0, 0.25)
        assert r["cell"]["prior"]["resolved"] == {"sha256": SHA}
    # every method saw the same measurement of each image
    for op in ("gaussian-blur", "inpaint-random"):
        for i in range(5):
            ys = [v for (_, o, j), v in SEEN.items() if (o, j) == (op, i)]
            assert len(ys) == 3 and all(torch.equal(ys[0], y) for y in ys[1:])
    md = (tmp_path / "out" / "r.md").read_text()
    assert f"Prior fake32: sha256 {SHA}" in md and "dataset fashion32:test" in md
    assert "| adjoint | deblur | fake32 |" in md and "| half | inpaint | fake32 |" in md


@pytest.mark.parametrize("change, err, match", [
    ({"methods": ["dps9"]}, UnknownNameError, "unknown solver 'dps9'"),
    ({"tasks": [{"name": "warp", "noise": "gaussian:0.05"}]}, UnknownNameError,
     "unknown operator 'warp'"),
    ({"tasks": [{"name": "gaussian-blur"}]}, BenchConfigError, "needs a 'noise' spec"),
    ({"tasks": [{"name": "gaussian-blur", "noise": "purple:3"}]}, DiffinvError, "purple"),
    ({"tasks": [{"name": "gaussian-blur", "noise": "none", "sigma": 2}]}, DiffinvError,
     "does not take"),
    ({"metrics": ["psnr", "sharpness"]}, UnknownNameError, "unknown metric 'sharpness'"),
    ({"dataset": None}, BenchConfigError, "dataset is required"),
    ({"dataset": "fashion32"}, BenchConfigError, "expected DATASET:SPLIT"),
    ({"dataset": "cifar:test"}, UnknownNameError, "unknown data set 'cifar'"),
    ({"n_images": 10}, BenchConfigError, "exceeds the 9 images"),
])
def test_bad_restore_tasks_fail_clearly_and_write_nothing(tmp_path, fakes, change, err, match):
    with pytest.raises(err, match=match):
        run_benchmark(write_task(tmp_path, **change), progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_solver_registry_is_a_clear_error(tmp_path, fakes, monkeypatch):
    monkeypatch.delattr(diffinv.solvers, "make_solver", raising=False)
    with pytest.raises(DiffinvError, match="needs diffinv.solvers.make_solver"):
        run_benchmark(write_task(tmp_path), progress=False)
    assert not (tmp_path / "out").exists()


def use_fake_preset(monkeypatch) -> None:
    """``make_solver`` applies presets over the fake registry; preset ``fake`` sets the adjoint
    solver's gain to 0.5 for every operator."""
    from diffinv.solvers import presets

    def with_presets(name, *, preset=None, operator=None, **params):
        if preset is not None:
            params = {**presets.preset_params(preset, name, operator), **params}
        return fake_solver_registry(name, **params)

    monkeypatch.setattr(diffinv.solvers, "make_solver", with_presets)
    monkeypatch.setitem(presets.PRESETS, "fake", {"adjoint": {"*": {"gain": 0.5}}})


def test_the_header_names_settings_a_task_file_adds_to_a_preset(tmp_path, fakes, monkeypatch):
    """A method entry with a preset and its own setting: the header line shows both, so two
    methods sharing a preset but not the setting (DAPS-1K / DAPS-4K) are told apart."""
    use_fake_preset(monkeypatch)
    methods = [{"name": "adjoint", "preset": "fake", "label": "plain"},
               {"name": "adjoint", "preset": "fake", "gain": 0.25, "label": "set"}]
    run_benchmark(write_task(tmp_path, methods=methods), progress=False)
    header = [ln for ln in (tmp_path / "out" / "r.md").read_text().splitlines()
              if ln.startswith("- Method ")]
    assert header == ["- Method plain: params {'gain': 0.5} preset fake",
                      "- Method set: params {'gain': 0.5} preset fake (task file: gain 0.25)"]


def test_a_preset_method_is_identified_by_what_it_sets_for_the_cells_operator(tmp_path, fakes,
                                                                             monkeypatch):
    """``preset = NAME`` in a method entry: the solver gets the preset's values for the task's
    operator, the rows record those values, and retuning the preset recomputes exactly the cells
    whose operator's values changed."""
    from diffinv.solvers import presets

    use_fake_preset(monkeypatch)
    methods = [{"name": "adjoint", "gain": 0.5, "label": "half"},
               {"name": "adjoint", "preset": "fake", "label": "preset"}]
    task = write_task(tmp_path, methods=methods)
    assert run_benchmark(task, progress=False).written == 20
    rows = read_records(tmp_path / "out" / "r.jsonl")[0]
    by = {(r["cell"]["method"]["label"], r["cell"]["task"]["label"], r["index"]): r for r in rows}
    for t in ("deblur", "inpaint"):
        for i in range(5):  # the preset's gain 0.5 is what the solver got
            assert by[("preset", t, i)]["metrics"] == by[("half", t, i)]["metrics"]
            assert by[("preset", t, i)]["cell"]["method"]["resolved"] == {
                "preset": "fake", "params": {"gain": 0.5}}
            assert by[("half", t, i)]["cell"]["method"]["resolved"] == {}
    assert run_benchmark(task, progress=False).written == 0  # unchanged: every row reused
    # an entry for another operator leaves the deblurring cells alone
    monkeypatch.setitem(presets.PRESETS, "fake", {"adjoint": {"*": {"gain": 0.5},
                                                              "inpaint-random": {"gain": 0.25}}})
    assert run_benchmark(task, progress=False).written == 5
    rows = read_records(tmp_path / "out" / "r.jsonl")[0]
    new = [r for r in rows if r["cell"]["method"]["resolved"].get("params") == {"gain": 0.25}]
    assert {r["cell"]["task"]["label"] for r in new} == {"inpaint"} and len(new) == 5
    assert all(r["metrics"] != by[("preset", "inpaint", r["index"])]["metrics"] for r in new)
    # the report header names which cells each of the preset's parameter sets was used in
    header = [ln for ln in (tmp_path / "out" / "r.md").read_text().splitlines()
              if ln.startswith("- Method preset:")]
    assert header == ["- Method preset: params {'gain': 0.5} preset fake (in: deblur)",
                      "- Method preset: params {'gain': 0.25} preset fake (in: inpaint)"]
    # retuning "*" changes deblurring only: inpainting's own entry still wins there
    monkeypatch.setitem(presets.PRESETS, "fake", {"adjoint": {"*": {"gain": 0.25},
                                                              "inpaint-random": {"gain": 0.25}}})
    assert run_benchmark(task, progress=False).written == 5


def test_gallery_redraws_the_tables_restorations_and_checks_them(tmp_path, fakes):
    """``--gallery K``: images 0..K-1 of each cell recomputed as the rows were (their PSNRs agree
    with the table's), one PNG per task with truth | y | each method, and no rows written."""
    from PIL import Image

    from diffinv.bench.gallery import TILE_SCALE, make_gallery

    task = write_task(tmp_path)
    run_benchmark(task, progress=False)
    rows_before = (tmp_path / "out" / "r.jsonl").read_text()
    g = make_gallery(task, 2, progress=False)
    assert [p.name for p in g.images] == ["deblur-fake32.png", "inpaint-fake32.png"]
    assert g.compared == 3 * 2 * 2 and g.max_abs_diff_db < 1e-4
    assert g.columns["deblur-fake32.png"] == ["truth", "y", "adjoint", "half", "measured"]
    im = Image.open(g.images[0])
    assert im.width > 5 * 32 * TILE_SCALE and im.height > 2 * 32 * TILE_SCALE
    md = g.markdown.read_text()
    assert "--gallery 2" in md and "12 (cell, image) pairs" in md
    assert "![deblur-fake32](r_gallery/deblur-fake32.png)" in md
    assert (tmp_path / "out" / "r.jsonl").read_text() == rows_before
    # a table whose rows the gallery cannot reproduce is an error, not a misleading picture
    lines = rows_before.splitlines()
    row = json.loads(lines[0])
    row["metrics"]["psnr"] += 1.0
    (tmp_path / "out" / "r.jsonl").write_text("\n".join([json.dumps(row)] + lines[1:]) + "\n")
    with pytest.raises(BenchRecordError, match="differs from the table's row"):
        make_gallery(task, 2, progress=False)


def test_gallery_recomputes_each_image_in_a_batch_of_its_rows_size(tmp_path, fakes, monkeypatch):
    """A solver whose result depends on the batch size (as 1000-step DPS's rounding does) is
    redrawn in batches of the sizes its rows were computed in: 3 for images 0-2, 2 for 3-4 (batch
    size 3, 5 images), so the gallery agrees with every row; drawing the 4 images as one batch of
    4, as the gallery once did, is off by 0.05 x (4 - 3) per pixel and caught."""
    from diffinv.bench import gallery
    from diffinv.bench.gallery import make_gallery

    task = write_task(tmp_path, methods=[{"name": "adjoint", "batch_shift": 0.05}], tasks=TASKS[:1])
    run_benchmark(task, progress=False)
    g = make_gallery(task, 4, progress=False)
    assert g.compared == 4 and g.max_abs_diff_db < 1e-4

    def one_batch(ctx, cell, sizes):
        return original(ctx, cell, [len(sizes)] * len(sizes))

    original = gallery._recompute
    monkeypatch.setattr(gallery, "_recompute", one_batch)
    with pytest.raises(BenchRecordError, match="differs from the table's row"):
        make_gallery(task, 4, progress=False)


def test_gallery_without_rows_and_bad_requests(tmp_path, fakes):
    from diffinv.bench.gallery import make_gallery

    task = write_task(tmp_path)
    g = make_gallery(task, 1, only=["task=deblur"], progress=False)
    assert g.compared == 0 and len(g.images) == 1 and "nothing to compare" in g.markdown.read_text()
    assert not (tmp_path / "out" / "r.jsonl").exists()
    for bad in (0, -2, True):
        with pytest.raises(BenchConfigError, match="positive number of images"):
            make_gallery(task, bad, progress=False)


def test_true_operator_reference_gets_the_hidden_parameters(tmp_path, fakes):
    """A method with ``true_operator = true`` is given the blind family's hidden parameters (a
    labelled reference, e.g. DPS given the true kernel); without it the solver sees none."""
    tasks = [{"name": "blind-gauss", "operator": "blind-gaussian-blur", "noise": "gaussian:0.05"}]
    methods = [{"name": "adjoint", "true_operator": True, "label": "adjoint (true kernel)"}]
    run_benchmark(write_task(tmp_path, methods=methods, tasks=tasks), progress=False)
    rows = read_records(tmp_path / "out" / "r.jsonl")[0]
    images = fake_split("fashion32", "test").images
    for r in rows:
        i = r["index"]
        m = measure(images[i:i + 1], make_operator("blind-gaussian-blur"), "gaussian:0.05", 3, [i])
        x_ref = m.make_operator().adjoint(m.y, **m.true_params) + 0.01 * randn(
            m.y.shape[1:], image_generators(derived_seed(3, "solver"), [i]))
        assert r["metrics"]["psnr"] == pytest.approx(float(psnr(x_ref, images[i:i + 1])), abs=1e-4)
    with pytest.raises(DiffinvError):  # the same solver without the reference flag: no std
        run_benchmark(write_task(tmp_path / "b", methods=["adjoint"], tasks=tasks), progress=False)


def test_kernel_error_column_compares_the_estimate_with_the_hidden_kernel(tmp_path, fakes):
    from diffinv.metrics.kernels import kernel_mse

    tasks = [{"name": "blind-gauss", "operator": "blind-gaussian-blur", "noise": "gaussian:0.05"}]
    methods = [{"name": "measured", "delta_kernel": True, "label": "delta"}, "measured"]
    run_benchmark(write_task(tmp_path, methods=methods, tasks=tasks,
                             metrics=("psnr", "kernel-mse")), progress=False)
    rows = read_records(tmp_path / "out" / "r.jsonl")[0]
    images = fake_split("fashion32", "test").images
    delta = torch.zeros(1, 5, 5)
    delta[0, 2, 2] = 1
    for r in rows:
        i = r["index"]
        if r["cell"]["method"]["label"] != "delta":
            assert r["metrics"]["kernel-mse"] != r["metrics"]["kernel-mse"]  # NaN: no estimate
            continue
        m = measure(images[i:i + 1], make_operator("blind-gaussian-blur"), "gaussian:0.05", 3, [i])
        true = m.make_operator()._kernel(images[i:i + 1], m.true_params)
        assert r["metrics"]["kernel-mse"] == pytest.approx(float(kernel_mse(delta, true)), rel=1e-6)


def test_residual_is_the_data_misfit_under_the_true_operator(tmp_path, fakes):
    """``residual`` = ||y - A(x_hat)|| / sqrt(m) with A the true operator: on denoising, the
    "measured" stand-in (x_hat = y + 0.01 z) scores 0.01 ||z|| / sqrt(m) ~ 0.01 (sd 0.01 /
    sqrt(2 m)); on a blind blur the hidden kernel is the one applied."""
    tasks = [{"name": "denoise", "operator": "identity", "noise": "gaussian:0.05"},
             {"name": "blind-gauss", "operator": "blind-gaussian-blur", "noise": "gaussian:0.05"}]
    run_benchmark(write_task(tmp_path, methods=["measured"], tasks=tasks,
                             metrics=("psnr", "residual")), progress=False)
    rows = read_records(tmp_path / "out" / "r.jsonl")[0]
    images = fake_split("fashion32", "test").images
    assert len(rows) == 10
    for r in rows:
        i, task = r["index"], r["cell"]["task"]["params"]["operator"]
        x = images[i:i + 1]
        m = measure(x, make_operator(task), "gaussian:0.05", 3, [i])
        x_hat = m.y + 0.01 * randn(m.y.shape[1:], image_generators(derived_seed(3, "solver"), [i]))
        op = m.make_operator()
        want = (m.y - op.forward(x_hat, **m.params, **m.true_params)).norm() / m.y.numel() ** 0.5
        assert r["metrics"]["residual"] == pytest.approx(float(want), rel=1e-4)
        if task == "identity":
            assert abs(r["metrics"]["residual"] - 0.01) < 5 * 0.01 / (2 * 1024) ** 0.5
        else:  # the public copy's kernel would be wrong: the hidden one is used
            assert m.true_params


def test_gallery_draws_estimated_kernels_beside_the_true_ones(tmp_path, fakes):
    """A method with ``trace["kernel"]`` on a kernel-blur family adds TASK_kernels.png: the true
    kernel column, then each estimating method's, captioned with the kernel MSE of the table."""
    from PIL import Image

    from diffinv.bench.gallery import kernel_picture, make_gallery

    tasks = [{"name": "blind-gauss", "operator": "blind-gaussian-blur", "noise": "gaussian:0.05"}]
    methods = [{"name": "measured", "delta_kernel": True, "label": "delta"}, "measured"]
    task = write_task(tmp_path, methods=methods, tasks=tasks, metrics=("psnr", "kernel-mse"))
    run_benchmark(task, progress=False)
    g = make_gallery(task, 2, progress=False)
    assert [p.name for p in g.images] == ["blind-gauss-fake32.png",
                                          "blind-gauss-fake32_kernels.png"]
    assert g.columns["blind-gauss-fake32_kernels.png"] == ["true kernel", "delta"]
    im = Image.open(g.images[1])
    assert im.height > 2 * 9 * 3
    assert "blind-gauss-fake32_kernels.png" in g.markdown.read_text()
    k = torch.zeros(1, 3, 3)
    k[0, 1, 1], k[0, 0, 0] = 0.5, 0.25
    pic = kernel_picture(k)
    assert pic.shape == (1, 1, 3, 3) and pic.max() == 1 and pic[0, 0, 0, 0] == 0 and pic.min() == -1


def _fake_features(images, batch_size=50, progress=False, device=None):
    """A cheap stand-in for the Inception features: a fixed random projection to 8 dims."""
    g = torch.Generator().manual_seed(5)
    proj = torch.randn(images[0].numel(), 8, generator=g)
    return images.detach().float().cpu().flatten(1) @ proj


def _split_aware(dataset: str, split: str) -> ImageSet:
    g = torch.Generator().manual_seed({"test": 123, "train": 7}.get(split, 9))
    x = torch.rand((9, 1, 32, 32), generator=g) * 2 - 1
    return ImageSet("fashion32", split, x, torch.arange(9) % 10)


@pytest.fixture
def fid_fakes(fakes, monkeypatch):
    import diffinv.metrics.fid as fid_module

    monkeypatch.setattr(fid_module, "inception_features", _fake_features)
    monkeypatch.setattr(diffinv.data, "load_split", _split_aware)


def test_fid_scores_the_recomputed_restorations_against_the_truth(tmp_path, fid_fakes,
                                                                   monkeypatch):
    """``--fid N``: each cell's FID is that of its restorations of images 0..N-1 (recomputed as
    the rows are: same y, same per-image generators) against the true images 0..N-1; the floor is
    the train split's first N images against the same truth; PSNR is the rows' mean; a rerun
    computes nothing, and two shards give what one run gives. N may exceed n_images."""
    from diffinv.bench import fid as bench_fid
    from diffinv.bench.kinds import restore
    from diffinv.metrics.fid import fid_from_features

    task = write_task(tmp_path, tasks=TASKS[:1], n_images=6)
    run_benchmark(task, progress=False)
    rows = [json.loads(s) for s in (tmp_path / "out" / "r.jsonl").read_text().splitlines()]
    rep = bench_fid.make_fid(task, 6, progress=False)
    truth = _split_aware("fashion32", "test").images[:6]
    y = measure(truth, make_operator("gaussian-blur"), "gaussian:0.05", 3, list(range(6)))
    by_label = {c.labels[0]: c for c in rep.cells}
    for label, params in (("adjoint", {}), ("half", {"gain": 0.5})):
        gens = image_generators(derived_seed(3, "solver"), list(range(6)))
        x_hat = fake_solver_registry("adjoint", **params)(y.y, y.public(), SimpleNamespace(
            sha256=SHA), gens).x
        want = fid_from_features(_fake_features(x_hat), _fake_features(truth))
        assert by_label[label].fid == pytest.approx(want, rel=1e-6)
        mean_row = sum(r["metrics"]["psnr"] for r in rows if r["cell"]["method"]["label"] == label) / 6
        assert by_label[label].psnr == pytest.approx(mean_row, abs=1e-4)
    train = _split_aware("fashion32", "train").images[:6]
    assert rep.floor == pytest.approx(fid_from_features(_fake_features(train),
                                                        _fake_features(truth)), rel=1e-6)
    md = rep.markdown.read_text()
    assert "--fid 6" in md and "| adjoint | deblur | fake32 |" in md
    assert json.loads(rep.json.read_text())["n_images"] == 6
    assert (tmp_path / "out" / "r.jsonl").read_text().count("\n") == len(rows)  # no rows added

    calls = []
    original = restore.restore_batch
    monkeypatch.setattr(restore, "restore_batch", lambda *a: calls.append(a) or original(*a))
    again = bench_fid.make_fid(task, 6, progress=False)
    assert calls == [] and [c.fid for c in again.cells] == [c.fid for c in rep.cells]

    other = tmp_path / "sharded"
    task2 = write_task(other, tasks=TASKS[:1], n_images=6)
    first = bench_fid.make_fid(task2, 8, shard="0/2", progress=False)  # batches 0-2, 6-7
    assert [c.fid for c in first.cells] == [None] * 3 and first.cells[0].done == 5
    assert "5/8*" in first.markdown.read_text()
    both = bench_fid.make_fid(task2, 8, shard="1/2", progress=False)
    single = bench_fid.make_fid(write_task(tmp_path / "one", tasks=TASKS[:1], n_images=6), 8,
                                progress=False)
    assert [c.fid for c in both.cells] == pytest.approx([c.fid for c in single.cells], rel=1e-6)


def test_fid_bad_requests_fail_before_any_work(tmp_path, fid_fakes):
    from diffinv.bench.fid import make_fid

    task = write_task(tmp_path, tasks=TASKS[:1])
    for bad in (1, 0, True):
        with pytest.raises(BenchConfigError, match="number of images >= 2"):
            make_fid(task, bad, progress=False)
    with pytest.raises(BenchConfigError, match="asks for more images than fashion32:test has"):
        make_fid(task, 10, progress=False)
    assert not (tmp_path / "out").exists()
