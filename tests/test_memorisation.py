"""The memorisation rate (diffinv.metrics.memorisation) and the prior-quality kind's ``memorised``:
copies are memorised, points on a line give ratios computed by hand, chunking changes nothing,
bad input is refused, and the kind measures against the training images the prior's card names."""

from __future__ import annotations

import json
import math

import pytest
import torch

from diffinv.errors import DiffinvError, NonFiniteError, ShapeError
from diffinv.metrics.frame import MetricArgumentError
from diffinv.metrics.memorisation import (
    MEMORISATION_THRESHOLD,
    memorisation_rate,
    nearest_neighbour_ratios,
)


def _flat(values: list[float]) -> torch.Tensor:
    """Constant 1x2x2 images, one per value (d = 4): L2 distances are 2 |a - b| in [-1, 1] units."""
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()


def _brute_force(samples: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d(1st) / d(2nd) and argmin from the whole distance matrix at once (torch.cdist)."""
    u = lambda x: ((x.double() + 1) / 2).clamp(0, 1).reshape(len(x), -1)  # noqa: E731
    d, j = torch.cdist(u(samples), u(train)).sort(dim=1)
    return d[:, 0] / d[:, 1], j[:, 0]


# (a) ------------------------------------------------------------------------------ copies
def test_copies_of_training_images_are_memorised_with_ratio_zero():
    g = torch.Generator().manual_seed(0)
    train = torch.rand(50, 1, 4, 4, generator=g) * 2 - 1
    train[7] = train[3]  # a duplicated training image: d(1st) = d(2nd) = 0 for its copy
    idx = torch.tensor([3, 7, 0, 49, 12])
    m = memorisation_rate(train[idx].clone(), train)
    assert m.rate == 1.0 and m.threshold == MEMORISATION_THRESHOLD == 1 / 3
    assert torch.equal(m.ratios, torch.zeros(5, dtype=torch.float64))  # exactly 0, not 0/0
    assert m.nearest[2:].tolist() == [0, 49, 12] and m.nearest[0].item() in (3, 7)


# (b) ------------------------------------------------------------------- points on a line
def test_samples_between_training_images_are_not_memorised_ratios_by_hand():
    train = _flat([-1.0, -0.5, 0.5, 1.0])
    # 0.0: nearest -0.5 and 0.5, both 0.5 away -> 1;  0.25: 0.25 to 0.5, 0.75 to -0.5 -> 1/3
    # exactly (not memorised: the rule is strict);  -0.2: 0.3 to -0.5, 0.7 to 0.5 -> 3/7
    m = memorisation_rate(_flat([0.0, 0.25, -0.2]), train)
    assert m.ratios[0].item() == 1.0
    assert m.ratios[1].item() == 1 / 3  # 0.125 / 0.375 in the [0, 1] frame: exact in binary
    assert m.ratios[2].item() == pytest.approx(3 / 7, rel=1e-6)
    assert m.rate == 0.0
    assert m.nearest[1:].tolist() == [2, 1]


def test_the_second_nearest_is_the_second_closest_not_the_next_in_line():
    # 0.4: distances 1.4, 0.9, 0.1, 0.6 to -1, -0.5, 0.5, 1 -> 0.1 / 0.6 = 1/6 (memorised);
    # 0.9: 0.1 to 1, 0.4 to 0.5 -> 1/4 (memorised); 0.7: 0.2 to 0.5, 0.3 to 1 -> 2/3 (not)
    m = memorisation_rate(_flat([0.4, 0.9, 0.7]), _flat([-1.0, -0.5, 0.5, 1.0]))
    assert m.ratios.tolist() == pytest.approx([1 / 6, 1 / 4, 2 / 3], rel=1e-6)
    assert m.rate == pytest.approx(2 / 3)
    assert memorisation_rate(_flat([0.4, 0.9, 0.7]), _flat([-1.0, -0.5, 0.5, 1.0]),
                             threshold=0.2).rate == pytest.approx(1 / 3)


# (c) ------------------------------------------------------------------------- chunking
@pytest.mark.parametrize("sample_chunk,train_chunk", [(1, 1), (2, 3), (7, 64), (5, 299),
                                                       (64, 300), (1000, 1000)])
def test_chunked_equals_unchunked_exactly(sample_chunk, train_chunk):
    g = torch.Generator().manual_seed(1)
    train = torch.rand(300, 1, 6, 6, generator=g) * 2 - 1
    samples = torch.cat([torch.rand(37, 1, 6, 6, generator=g) * 2 - 1,
                         train[[5, 299, 150]] + 0.05 * torch.randn(3, 1, 6, 6, generator=g)])
    whole, near = nearest_neighbour_ratios(samples, train, sample_chunk=len(samples),
                                           train_chunk=len(train))
    r, j = nearest_neighbour_ratios(samples, train, sample_chunk=sample_chunk,
                                    train_chunk=train_chunk)
    assert torch.equal(r, whole) and torch.equal(j, near)
    want, want_j = _brute_force(samples, train)
    assert torch.allclose(whole, want, rtol=1e-9, atol=0) and torch.equal(near, want_j)
    assert near[-3:].tolist() == [5, 299, 150]  # the first and last training images are seen


# (d) --------------------------------------------------------------------------- errors
def test_bad_input_is_refused_clearly():
    x, t = torch.zeros(3, 1, 4, 4), torch.rand(5, 1, 4, 4)
    with pytest.raises(ShapeError, match=r"\(B, C, H, W\)"):
        memorisation_rate(x[0], t)
    with pytest.raises(ShapeError, match="C, H, W must match"):
        memorisation_rate(x, torch.rand(5, 1, 4, 5))
    with pytest.raises(ShapeError, match="at least 2 training images"):
        memorisation_rate(x, t[:1])
    with pytest.raises(ShapeError, match="no images"):
        memorisation_rate(x[:0], t)
    bad = t.clone()
    bad[4, 0, 3, 3] = math.nan
    with pytest.raises(NonFiniteError, match="train contains NaN"):
        memorisation_rate(x, bad, train_chunk=2)
    with pytest.raises(NonFiniteError, match="samples"):
        memorisation_rate(bad, t)
    for tau in (0, 1, 1.0, -0.1, 1.5, math.nan, True, "1/3"):
        with pytest.raises(MetricArgumentError, match=r"threshold must be a number in \(0, 1\)"):
            memorisation_rate(x, t, threshold=tau)
    with pytest.raises(DiffinvError, match="train_chunk"):
        memorisation_rate(x, t, train_chunk=0)


# (e) ------------------------------------------------------ the prior-quality kind
def _have_assets() -> bool:
    from diffinv.assets import MissingAssetError, locate

    try:
        for name in ("mnist", "mnist-classifier"):
            locate(name)
        return True
    except MissingAssetError:
        return False


@pytest.fixture(scope="module")
def flow_on_five(tmp_path_factory):
    """A one-step flow prior 'trained' on the first 5 images (train_images = 5) of mnist32."""
    from diffinv.learn.trainer import TrainConfig, export_prior, train_prior

    d = tmp_path_factory.mktemp("mem")
    cfg = TrainConfig(out=str(d / "run"), dataset="mnist32", steps=1, batch=2, ckpt_every=1,
                      log_every=1, warmup=1, objective="flow", train_images=5,
                      unet=dict(base_channels=8, channel_mults=[1, 2], num_res_blocks=1,
                                attention_resolutions=[]))
    data = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return export_prior(train_prior(cfg, data=data, progress=False), d / "export", "mnist32")


def test_exported_cards_record_the_training_subset(flow_on_five):
    card = json.loads(flow_on_five.with_suffix(".json").read_text())
    assert card["train_images"] == 5 and card["trained_on"] == "mnist32:train[:5]"


def test_training_set_comes_from_the_card_or_is_the_whole_split(flow_on_five, tmp_path):
    from diffinv import load_prior
    from diffinv.bench.kinds.prior_quality import training_set
    from diffinv.bench.spec import Entry

    def entry(path):
        return Entry.parse("prior", {"name": "p", "path": str(path)})

    prior = load_prior(flow_on_five)
    assert training_set(prior, entry(flow_on_five)) == ("mnist32", 5)
    card = json.loads(flow_on_five.with_suffix(".json").read_text())
    for drop, want in ((("train_images",), ("mnist32", 5)),  # from trained_on's [:5]
                       (("train_images", "trained_on"), ("mnist32", None))):  # not recorded
        old = tmp_path / "_".join(drop)
        old.mkdir()
        (old / "mnist32.safetensors").write_bytes(flow_on_five.read_bytes())
        (old / "mnist32.json").write_text(json.dumps({k: v for k, v in card.items()
                                                      if k not in drop}))
        p = load_prior(old / "mnist32.safetensors")
        assert training_set(p, entry(old / "mnist32.safetensors")) == want
    embedded = Entry.parse("prior", "fashion32")  # trained_on "fashion32:train", no N: unknown
    assert training_set(load_prior("fashion32"), embedded) == ("fashion32", None)


@pytest.mark.assets
@pytest.mark.skipif(not _have_assets(), reason="needs `make assets` (MNIST, its classifier)")
def test_prior_quality_computes_memorised_against_the_cards_training_images(
        tmp_path, flow_on_five, monkeypatch):
    monkeypatch.setenv("DIFFINV_CACHE", str(tmp_path / "cache"))
    # FID is not what this test checks (test_bench_prior_quality.py does): 4 cheap features
    # instead of Inception's 2,048 keep it to a few seconds
    monkeypatch.setattr("diffinv.metrics.fid.inception_features",
                        lambda x, *a, **k: x.reshape(len(x), 4, -1).mean(-1).float())
    from safetensors.torch import load_file

    from diffinv import load_prior
    from diffinv.bench import run_benchmark
    from diffinv.bench.kinds.prior_quality import draw_samples
    from diffinv.bench.records import read_records
    from diffinv.data import load_split

    task = tmp_path / "task.toml"
    body = f"""
priors = [{{name = "flow5", path = "{flow_on_five}"}}]
samplers = [{{name = "euler", steps = 2}}]
METRICS
[run]
name = "NAME"
kind = "prior-quality"
output = "out"
n_samples = 3
chunk = 2
threads = 1
"""
    # an old task file (no metrics list, or one without memorised): rows as before
    task.write_text(body.replace("METRICS", "").replace("NAME", "old"))
    run_benchmark(task, progress=False)
    old = read_records(tmp_path / "out" / "old.jsonl")[0][0]
    assert set(old["metrics"]) == {"fid", "fid-floor", "conf>0.9", "samples"}
    assert set(old["extra"]) == {"sample_cache"}

    task.write_text(body.replace("METRICS", 'metrics = ["fid", "memorised", "samples"]')
                    .replace("NAME", "mem"))
    run_benchmark(task, progress=False)
    row = read_records(tmp_path / "out" / "mem.jsonl")[0][0]
    x = draw_samples(load_prior(flow_on_five), 3, 0, {"method": "euler", "steps": 2}, chunk=2,
                     progress=False)
    train = load_split("mnist32", "train").images[:5]
    want = memorisation_rate(x, train)
    assert row["metrics"]["memorised"] == want.rate
    assert row["metrics"]["fid"] == old["metrics"]["fid"]
    assert row["extra"]["memorised_against"] == "mnist32:train[:5]"
    assert row["extra"]["memorised_threshold"] == 1 / 3
    cached = load_file(row["extra"]["memorisation_cache"])
    assert torch.allclose(cached["ratios"], want.ratios, rtol=1e-6)  # against images 0..4 only
    assert torch.equal(cached["nearest"], want.nearest)
