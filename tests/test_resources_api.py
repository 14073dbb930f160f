"""Issue 36, resource bounds and the Python API: requests beyond the machine's memory are refused
before anything is allocated (``prior.sample``, ``diffinv sample``, ``diffinv measure``),
``diffinv sample`` streams its batches to disk, ``--threads`` is capped at the cores, and the
Python entry points refuse (or convert, for dtypes) what they cannot run on with one clear error.

A memory test never allocates the amount it asks for: the function that would allocate first is
replaced by one that fails the test, so the refusal must come before it."""

from __future__ import annotations

import collections
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffinv import load_prior
from diffinv.cli import main
from diffinv.errors import DiffinvError, ShapeError, UnknownNameError
from diffinv.physics import measure
from diffinv.solvers import make_solver


@pytest.fixture(scope="module")
def prior():
    return load_prior("fashion32")


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def no_allocation(*_, **__):
    raise AssertionError("the allocation started before the resource check")


def pretend_available(monkeypatch, nbytes: int) -> None:
    monkeypatch.setattr("diffinv.resources.available_memory", lambda device=None: nbytes)


def pretend_disk_free(monkeypatch, nbytes: int) -> None:
    """Make every file system look ``nbytes`` free, so a test of another check does not depend on
    the disk of the machine it runs on."""
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr("diffinv.resources.shutil.disk_usage",
                        lambda _path: usage(2 * nbytes, nbytes, nbytes))


def image(x: float = -0.5, n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.full((n, 1, size, size), x) + 0.1 * torch.linspace(-1, 1, size).view(1, 1, 1, -1)


# ------------------------------------------------------------------- 1. memory and threads
def test_prior_sample_of_a_billion_images_is_refused_before_allocating(prior, monkeypatch):
    monkeypatch.setattr("diffinv.diffusion.prior.batch_generators", no_allocation)
    with pytest.raises(DiffinvError, match=r"sampling 1000000000 images at once needs about "
                                           r"[\d.]+ PiB of memory, but this machine has .* available"):
        prior.sample(10**9, steps=1)


def test_prior_sample_refuses_a_batch_beyond_available_memory(prior, monkeypatch):
    pretend_available(monkeypatch, 2**20)  # 1 MiB; a 32x32 sample needs about 2 MiB
    with pytest.raises(DiffinvError, match=r"sampling 4 images at once needs about 8 MiB of "
                                           r"memory, but this machine has 1 MiB available"):
        prior.sample(4, steps=1, method="ddim")


def test_cli_sample_refuses_a_batch_beyond_memory_and_writes_nothing(tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.setattr("diffinv.seeding.image_generators", no_allocation)
    pretend_disk_free(monkeypatch, 2**50)  # 1 PiB: the disk check passes on any machine
    pretend_available(monkeypatch, 2**30)  # 1 GiB: the batch of 10^7 images needs far more
    monkeypatch.chdir(tmp_path)
    code = main(["sample", "-n", "10000000", "--batch", "10000000", "-o", "s.png",
                 "--tensor", "s.safetensors"])
    err = capsys.readouterr().err
    assert code == 1 and "needs about" in err and "--batch" in err, err
    assert len(err.strip().splitlines()) == 1
    assert files_under(tmp_path) == set()


def test_cli_sample_refuses_a_tensor_beyond_the_disk(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("diffinv.seeding.image_generators", no_allocation)
    pretend_disk_free(monkeypatch, 2**30)  # 1 GiB free; the tensor of 10^12 samples needs ~4 PiB
    code = main(["sample", "-n", str(10**12), "-o", str(tmp_path / "s.png"),
                 "--tensor", str(tmp_path / "s.safetensors")])
    err = capsys.readouterr().err
    assert code == 1 and "of disk" in err and "free" in err, err
    assert files_under(tmp_path) == set()


def test_cli_sample_streams_each_batch_to_disk_before_drawing_the_next(tmp_path, monkeypatch):
    from diffinv.diffusion.prior import DiffusionPrior

    on_disk: list[int] = []
    real = DiffusionPrior.sample

    def spy(self, n, **kw):
        # the bytes already in the (partial) output files when a batch is drawn
        on_disk.append(sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()))
        return real(self, n, **kw)

    monkeypatch.setattr(DiffusionPrior, "sample", spy)
    code = main(["sample", "-n", "5", "--batch", "2", "--steps", "1",
                 "-o", str(tmp_path / "s.png"), "--tensor", str(tmp_path / "s.safetensors")])
    assert code == 0 and len(on_disk) == 3
    # before the third batch, the first four samples (4 x 32 x 32 float32) are written
    assert on_disk[2] >= 4 * 32 * 32 * 4, on_disk
    assert files_under(tmp_path) == {"s.png", "s.safetensors"}


def test_cli_sample_keeps_its_output_format(tmp_path, prior):
    """The streamed PNG grid has the pixels of ``make_grid`` + ``save_image`` and the tensor file
    the bytes of ``safetensors.torch.save_file``, as before streaming."""
    from safetensors.torch import save_file

    from diffinv.data.images import make_grid, save_image
    from diffinv.seeding import image_generators

    code = main(["sample", "-n", "7", "--batch", "3", "--steps", "2", "--seed", "4",
                 "-o", str(tmp_path / "s.png"), "--tensor", str(tmp_path / "s.safetensors")])
    assert code == 0
    x = torch.cat([prior.sample(len(r), seed=image_generators(4, r), method="ddim", steps=2)
                   for r in (range(0, 3), range(3, 6), range(6, 7))])
    save_image(make_grid(x, ncol=3), tmp_path / "old.png", scale=2)
    save_file({"samples": x.contiguous()}, str(tmp_path / "old.safetensors"))
    with Image.open(tmp_path / "s.png") as new, Image.open(tmp_path / "old.png") as old:
        assert new.mode == old.mode and new.size == old.size
        assert new.tobytes() == old.tobytes()
    assert (tmp_path / "s.safetensors").read_bytes() == (tmp_path / "old.safetensors").read_bytes()


@pytest.mark.parametrize("n, channels, ncol", [(7, 3, 3), (1, 1, 1), (10, 1, 4), (5, 4, 2)])
def test_the_streamed_grid_has_the_pixels_of_make_grid(tmp_path, n, channels, ncol):
    from diffinv.data.images import make_grid, save_image
    from diffinv.streams import GridPNGStream

    x = torch.rand(n, channels, 5, 6, generator=torch.Generator().manual_seed(n)) * 2.2 - 1.1
    with open(tmp_path / "new.png", "wb") as f:
        grid = GridPNGStream(f, n, (channels, 5, 6), ncol=ncol, scale=2)
        for part in x.split(3):
            grid.write(part)
        grid.close()
    save_image(make_grid(x, ncol=ncol), tmp_path / "old.png", scale=2)
    with Image.open(tmp_path / "new.png") as new, Image.open(tmp_path / "old.png") as old:
        assert (new.mode, new.size) == (old.mode, old.size)
        assert new.tobytes() == old.tobytes()


def test_cli_measure_refuses_an_image_resized_beyond_memory(tmp_path, monkeypatch, capsys):
    Image.new("L", (8, 8), 128).save(tmp_path / "a.png")
    monkeypatch.setattr("diffinv.data.images.read_image", no_allocation)
    code = main(["measure", str(tmp_path / "a.png"), "--size", "60000", "--op", "gaussian-blur",
                 "-o", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 1 and "60000x60000" in err and "needs about" in err, err
    assert files_under(tmp_path) == {"a.png"}


def test_measure_refuses_a_batch_beyond_available_memory(tmp_path, monkeypatch):
    pretend_available(monkeypatch, 100_000)
    with pytest.raises(DiffinvError, match=r"measuring 2 images .*rotation-blur.* needs about "
                                           r".* but this machine has 97.7 KiB available"):
        measure(image(), "rotation-blur", "gaussian:0.05", 0)


def test_cli_measure_refuses_a_data_set_beyond_available_memory(tmp_path, monkeypatch, capsys):
    pretend_available(monkeypatch, 100_000)
    code = main(["measure", "--dataset", "fashion32:test:0-3", "--op", "zoom-blur",
                 "-o", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 1 and "measuring 4 images" in err and "needs about" in err, err
    assert files_under(tmp_path) == set()


def test_threads_beyond_the_cores_are_capped_with_a_warning(tmp_path, monkeypatch, capsys):
    import os

    monkeypatch.chdir(tmp_path)
    before = torch.get_num_threads()
    try:
        code = main(["solve", "no-such-measurement", "-o", "out", "--threads", "10000"])
        err = capsys.readouterr().err
        cores = os.cpu_count()
        assert f"warning: --threads 10000 exceeds the {cores} CPU core" in err, err
        assert torch.get_num_threads() == min(10000, cores)
        assert code == 1
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- 2. sample's output paths
@pytest.mark.parametrize("tensor, message", [
    ("s.png", "the same file"),
    ("s.pt", "must end in .safetensors"),
])
def test_sample_refuses_a_bad_tensor_path_and_writes_nothing(tmp_path, monkeypatch, capsys,
                                                             tensor, message):
    monkeypatch.chdir(tmp_path)
    code = main(["sample", "-n", "1", "--steps", "1", "-o", "s.png", "--tensor", tensor])
    err = capsys.readouterr().err
    assert code == 1 and message in err, err
    assert files_under(tmp_path) == set()


# --------------------------------------------------------------------------- 3. Python API
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_measure_converts_other_float_dtypes_to_float32_and_solvers_run(prior, dtype):
    m = measure(image().to(dtype), "gaussian-blur", "gaussian:0.05", 0)
    assert m.y.dtype == m.x.dtype == torch.float32
    ref = measure(image().to(dtype).float(), "gaussian-blur", "gaussian:0.05", 0)
    assert torch.equal(m.y, ref.y)
    res = make_solver("ddrm", steps=2)(m.y, m.public(), prior, seed=0)
    assert res.x.dtype == torch.float32 and torch.isfinite(res.x).all()


def test_solvers_convert_a_float64_measurement_to_float32(prior):
    m = measure(image(), "gaussian-blur", "gaussian:0.05", 0)
    for name in ("ddrm", "dps"):
        res = make_solver(name, steps=2)(m.y.double(), m.public(), prior, seed=0)
        assert res.x.dtype == torch.float32 and torch.isfinite(res.x).all()


def test_an_empty_batch_is_refused(prior):
    with pytest.raises(ShapeError, match="no images"):
        measure(torch.zeros(0, 1, 32, 32), "gaussian-blur", "gaussian:0.05", 0)
    m = measure(image(), "gaussian-blur", "gaussian:0.05", 0)
    with pytest.raises(ShapeError, match="no images"):
        make_solver("ddrm", steps=2)(m.y[:0], m.public(), prior, seed=0)


@pytest.mark.parametrize("seed", ["abc", 1.5, True, None])
def test_a_seed_that_is_not_an_integer_is_refused_everywhere(prior, seed):
    m = measure(image(), "gaussian-blur", "gaussian:0.05", 0)
    message = f"seed must be an integer.*got {seed!r}"
    with pytest.raises(DiffinvError, match=message):
        measure(image(), "gaussian-blur", "gaussian:0.05", seed)
    with pytest.raises(DiffinvError, match=message):
        make_solver("ddrm", steps=2)(m.y, m.public(), prior, seed=seed)
    with pytest.raises(DiffinvError, match=message):
        prior.sample(1, steps=1, seed=seed)


def test_a_numpy_integer_seed_is_an_integer(prior):
    import numpy as np

    a = measure(image(), "gaussian-blur", "gaussian:0.05", np.int64(3))
    b = measure(image(), "gaussian-blur", "gaussian:0.05", 3)
    assert a.seed == 3 and type(a.seed) is int and torch.equal(a.y, b.y)


@pytest.mark.parametrize("device", ["meta", "xla", "ipu"])
def test_devices_diffinv_cannot_run_on_are_refused(tmp_path, capsys, device):
    with pytest.raises(DiffinvError, match=f"diffinv runs on cpu, cuda or mps.*not {device!r}"):
        load_prior("fashion32", device=device)
    code = main(["sample", "-n", "1", "--steps", "1", "--device", device,
                 "-o", str(tmp_path / "s.png")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "cpu, cuda or mps" in err, err
    assert files_under(tmp_path) == set()


@pytest.mark.parametrize("method", ["eps", "x0", "score"])
def test_the_prior_refuses_an_input_of_another_size(prior, method):
    with pytest.raises(ShapeError, match=r"1x64x64.*fashion32.*1x32x32"):
        getattr(prior, method)(torch.zeros(1, 1, 64, 64), 5)
    with pytest.raises(ShapeError, match=r"3x32x32.*1x32x32"):
        getattr(prior, method)(torch.zeros(1, 3, 32, 32), 5)


def test_make_solver_refuses_an_unknown_operator_name():
    with pytest.raises(UnknownNameError, match="unknown operator 'foo'; known: .*gaussian-blur"):
        make_solver("dps", operator="foo")
    with pytest.raises(UnknownNameError, match="unknown operator 'foo'"):
        make_solver("dps", preset="tuned32", operator="foo")
    assert make_solver("dps", preset="tuned32", operator="gaussian-blur") is not None


@pytest.mark.parametrize("sigma", [math.nan, -0.1, math.inf, "0.05"])
def test_measurement_to_unit_range_refuses_a_bad_sigma(sigma):
    from diffinv.interop.deepinv import measurement_to_unit_range
    from diffinv.physics import make_operator

    m = measure(image(), "gaussian-blur", "gaussian:0.05", 0)
    with pytest.raises(DiffinvError, match="sigma must be a finite number >= 0"):
        measurement_to_unit_range(m.y, make_operator("gaussian-blur"), m.params, sigma)
