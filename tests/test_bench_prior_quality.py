"""The "prior-quality" job kind: a tiny prior, a handful of samples, checked against a direct
computation of the same FID, floor and classifier confidence; sample chunks make it resumable."""

from __future__ import annotations

import pytest
import torch

from diffinv.assets import MissingAssetError, locate
from diffinv.bench import run_benchmark
from diffinv.bench.kinds.prior_quality import _draw, draw_samples
from diffinv.bench.records import read_records
from diffinv.errors import UnknownNameError


def _have(*names: str) -> bool:
    try:
        for n in names:
            locate(n)
        return True
    except MissingAssetError:
        return False


pytestmark = [pytest.mark.assets,
              pytest.mark.skipif(not _have("mnist", "fid-inception", "mnist-classifier"),
                                 reason="needs `make assets` (MNIST, FID Inception, classifier)")]


@pytest.fixture(scope="module")
def toy_prior(tmp_path_factory):
    from conftest import make_tiny_prior

    # named mnist32 so that its domain, hence its reference split, is MNIST's
    return make_tiny_prior(tmp_path_factory.mktemp("pq"), name="mnist32")


def _task(tmp_path, prior_path, n=3) -> object:
    p = tmp_path / "task.toml"
    p.write_text(f"""
priors = [{{name = "toy", path = "{prior_path}"}}]
samplers = [{{name = "ddim", steps = 2}}]
[run]
name = "pq"
kind = "prior-quality"
output = "out"
n_samples = {n}
chunk = 2
threads = 1
""")
    return p


def test_prior_quality_matches_a_direct_computation(tmp_path, toy_prior, monkeypatch):
    monkeypatch.setenv("DIFFINV_CACHE", str(tmp_path / "cache"))
    from diffinv import load_prior
    from diffinv.data import load_split
    from diffinv.metrics.digits import confident_fraction
    from diffinv.metrics.fid import fid_from_features, inception_features

    run_benchmark(_task(tmp_path, toy_prior), progress=False)
    rows = read_records(tmp_path / "out" / "pq.jsonl")[0]
    assert len(rows) == 1
    m = rows[0]["metrics"]
    prior = load_prior(toy_prior)
    x = draw_samples(prior, 3, 0, {"method": "ddim", "steps": 2, "eta": 0.0}, chunk=3, progress=False)
    ref = load_split("mnist32", "test").images[:3]
    floor = load_split("mnist32", "train").images[:3]
    f_ref = inception_features(ref)
    assert m["fid"] == pytest.approx(fid_from_features(inception_features(x), f_ref), rel=1e-4)
    assert m["fid-floor"] == pytest.approx(fid_from_features(inception_features(floor), f_ref), rel=1e-4)
    assert m["conf>0.9"] == pytest.approx(confident_fraction(x))
    assert m["samples"] == 3
    assert rows[0]["cell"]["prior"]["resolved"]["sha256"] == prior.sha256
    assert rows[0]["nfe"] == 2  # per sample: the 2 DDIM steps, whatever the chunking


def test_samples_resume_from_cached_chunks(tmp_path, toy_prior):
    from diffinv import load_prior

    prior = load_prior(toy_prior)
    s = {"method": "ddim", "steps": 2, "eta": 0.0}
    first = draw_samples(prior, 5, 7, s, chunk=2, cache=tmp_path / "c", progress=False)
    chunks = sorted((tmp_path / "c").iterdir())
    assert len(chunks) == 3
    chunks[-1].unlink()  # as if killed before the last chunk
    prior.reset_nfe()
    again = draw_samples(prior, 5, 7, s, chunk=2, cache=tmp_path / "c", progress=False)
    assert torch.equal(first, again)
    assert prior.nfe == 2  # only the missing chunk was sampled (2 DDIM steps)
    prior.reset_nfe()
    cached, nfe = _draw(prior, 5, 7, s, 2, tmp_path / "c", False)
    assert prior.nfe == 0 and nfe == 2 and torch.equal(cached, first)  # read from the chunks
    alone = draw_samples(prior, 5, 7, s, chunk=5, progress=False)
    assert torch.allclose(first, alone, atol=1e-6)  # chunking does not change a sample


def test_bad_sampler_and_metric_names(tmp_path, toy_prior):
    p = _task(tmp_path, toy_prior)
    p.write_text(p.read_text().replace('name = "ddim"', 'name = "rk4"'))
    with pytest.raises(UnknownNameError, match="ddim"):
        run_benchmark(p, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def toy_flow_prior(tmp_path_factory):
    """A one-step flow prior on 32x32 images, exported under the name mnist32 (its domain)."""
    from diffinv.learn.trainer import TrainConfig, export_prior, train_prior

    d = tmp_path_factory.mktemp("pqflow")
    cfg = TrainConfig(out=str(d / "run"), steps=1, batch=2, ckpt_every=1, log_every=1, warmup=1,
                      objective="flow", source={"kind": "gaussian"},
                      unet=dict(base_channels=8, channel_mults=[1, 2], num_res_blocks=1,
                                attention_resolutions=[]))
    data = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ckpt = train_prior(cfg, data=data, progress=False)
    return export_prior(ckpt, d / "export", "mnist32")


def test_a_flow_prior_is_sampled_by_its_ode_solver_and_refuses_ddim(tmp_path, toy_flow_prior,
                                                                    monkeypatch):
    monkeypatch.setenv("DIFFINV_CACHE", str(tmp_path / "cache"))
    from diffinv import load_prior

    p = _task(tmp_path, toy_flow_prior, n=2)
    p.write_text(p.read_text().replace('{name = "ddim", steps = 2}', '{name = "heun", steps = 2}'))
    run_benchmark(p, progress=False)
    rows = read_records(tmp_path / "out" / "pq.jsonl")[0]
    assert len(rows) == 1 and rows[0]["nfe"] == 4  # Heun: two velocity calls per step
    prior = load_prior(toy_flow_prior)
    want = draw_samples(prior, 2, 0, {"method": "heun", "steps": 2}, chunk=2, progress=False)
    cached = draw_samples(prior, 2, 0, {"method": "heun", "steps": 2}, chunk=2,
                          cache=tmp_path / "c", progress=False)
    assert torch.allclose(want, cached)
    p.write_text(p.read_text().replace('{name = "heun", steps = 2}', '{name = "ddim", steps = 2}')
                 .replace('name = "pq"', 'name = "pq2"'))
    from diffinv.bench.errors import BenchConfigError

    with pytest.raises(BenchConfigError, match="cannot sample the flow prior"):
        run_benchmark(p, progress=False)
    assert not (tmp_path / "out" / "pq2.jsonl").exists()
    p.write_text(p.read_text().replace('{name = "ddim", steps = 2}',
                                       '{name = "heun", steps = 2, eta = 0.5}'))
    with pytest.raises(BenchConfigError, match="unknown key"):
        run_benchmark(p, progress=False)


def test_sample_features_are_kept_beside_the_samples_and_tied_to_them(tmp_path, monkeypatch):
    import diffinv.metrics.fid as fid
    from diffinv.bench.kinds.prior_quality import _sample_features

    calls = []
    monkeypatch.setattr(fid, "inception_features",
                        lambda x, progress=False: calls.append(len(x)) or x.flatten(1)[:, :4].clone())
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    first = _sample_features(x, tmp_path)
    assert (tmp_path / "features.safetensors").is_file() and calls == [3]
    again = _sample_features(x, tmp_path)  # the same samples: read back, not recomputed
    assert calls == [3] and torch.equal(first, again)
    other = _sample_features(x.flip(0), tmp_path)  # other samples: recomputed, never mixed up
    assert calls == [3, 3] and torch.equal(other, x.flip(0).flatten(1)[:, :4])
