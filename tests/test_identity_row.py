"""The do-nothing row ("identity" solver): the benchmark runner scores the measurement itself (or
A^+ y where sizes differ) on the very measurements every other method of the run receives."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import diffinv
import diffinv.data
from diffinv.bench import run_benchmark
from diffinv.bench.records import read_records
from diffinv.data import ImageSet
from diffinv.errors import DiffinvError
from diffinv.metrics import psnr
from diffinv.physics import make_operator, measure
from diffinv.solvers import make_solver

SHA = "1d" * 32


class _Prior(SimpleNamespace):
    image_shape = (1, 32, 32)
    nfe = 0

    def reset_nfe(self) -> None:
        self.nfe = 0


def _split(dataset: str, split: str) -> ImageSet:
    g = torch.Generator().manual_seed(5)
    x = torch.rand((6, 1, 32, 32), generator=g) * 2 - 1
    return ImageSet("fashion32", split, x, torch.arange(6) % 10)


@pytest.fixture
def fakes(monkeypatch):
    monkeypatch.setattr(diffinv.data, "load_split", _split)
    monkeypatch.setattr(diffinv, "load_prior", lambda name, device="cpu", precision="fp32":
                        _Prior(sha256=SHA, domain="fashion32", name=name, precision=precision))


def _task(tmp_path, tasks):
    def value(d):
        return "{" + ", ".join(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}"
                               for k, v in d.items()) + "}"
    (tmp_path / "t.toml").write_text(
        'methods = [{name = "identity", label = "measurement as the estimate (y)"}]\n'
        f"tasks = [{', '.join(value(t) for t in tasks)}]\n"
        'priors = ["fake32"]\nmetrics = ["psnr"]\n[run]\nname = "r"\nseed = 4\n'
        'dataset = "fashion32:test"\nn_images = 5\nbatch_size = 2\noutput = "out"\n')
    return tmp_path / "t.toml"


def test_the_runner_scores_the_measurement_itself(tmp_path, fakes):
    tasks = [{"name": "blind-gauss", "operator": "blind-gaussian-blur", "noise": "gaussian:0.02"},
             {"name": "blind-rot", "operator": "blind-rotation-blur", "noise": "gaussian:0.02"}]
    out = run_benchmark(_task(tmp_path, tasks), progress=False)
    assert out.written == 10
    images = _split("fashion32", "test").images
    for r in read_records(tmp_path / "out" / "r.jsonl")[0]:
        i, op = r["index"], r["cell"]["task"]["params"]["operator"]
        m = measure(images[i:i + 1], make_operator(op), "gaussian:0.02", 4, [i])
        assert r["metrics"]["psnr"] == pytest.approx(float(psnr(m.y, images[i:i + 1])), abs=1e-4)
        assert r["nfe"] == 0


def test_a_smaller_measurement_is_mapped_back_by_the_pseudo_inverse(tmp_path, fakes):
    tasks = [{"name": "sr4", "operator": "sr-avgpool", "factor": 4, "noise": "gaussian:0.02"}]
    run_benchmark(_task(tmp_path, tasks), progress=False)
    images = _split("fashion32", "test").images
    for r in read_records(tmp_path / "out" / "r.jsonl")[0]:
        i = r["index"]
        m = measure(images[i:i + 1], make_operator("sr-avgpool", factor=4), "gaussian:0.02", 4, [i])
        up = m.y.repeat_interleave(4, -1).repeat_interleave(4, -2)  # A^+ of 4x4 averaging
        assert r["metrics"]["psnr"] == pytest.approx(float(psnr(up, images[i:i + 1])), abs=1e-3)


def test_a_blind_measurement_of_another_shape_is_refused():
    solver = make_solver("identity")
    y = torch.zeros(1, 1, 8, 8)
    with pytest.raises(DiffinvError, match="blind"):
        solver(y, SimpleNamespace(blind=True, operator="x"), _Prior(name="p"))
