"""CL-DPS with crop-trained encoders (issue 37): patch-wise critic averaging, the spatial-map energy,
hard negatives (our extension) and seeded crop sampling."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffinv.errors import DiffinvError, UnknownNameError
from diffinv.guidance.contrastive import ContrastiveEnergy
from diffinv.learn.encoder import load_encoder
from diffinv.learn.measurements import parse_families, random_measurements
from diffinv.learn.moco import (
    LikelihoodConfig,
    crop_windows,
    draw_batch,
    draw_crops,
    export_likelihood,
    hard_negative_inputs,
    info_nce,
    load_trained,
    train_likelihood,
)
from diffinv.seeding import image_generators, image_seed

TINY = {"width": 8, "blocks": [1, 1, 1], "dim": 16, "intensity_head": True}


class LinearEncoder(nn.Module):
    """A synthetic encoder: the embedding is the window itself, ``f(u) = vec(u)``, and so is the
    feature map. The patch-averaged critic then has a closed form (see the test)."""

    def __init__(self, size: int):
        super().__init__()
        self.config = SimpleNamespace(image_size=size, in_channels=1, pool=4)
        self.intensity_net = None

    def features(self, u):
        return u

    def forward(self, u, return_features=False, query=False):
        e = u.flatten(1)
        return (e, u) if return_features else e


def coverage(size: int, patch: int, stride: int) -> torch.Tensor:
    """How many windows cover each position along one axis (by counting, not by unfolding)."""
    starts = range(0, size - patch + 1, stride)
    return torch.tensor([sum(s <= r < s + patch for s in starts) for r in range(size)],
                        dtype=torch.float64)


def _img(seed, n=2, size=32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, size, size, generator=g, dtype=torch.float64) * 2 - 1)


@pytest.mark.parametrize("stride", [4, 8, 16])
def test_patch_averaged_critic_has_the_closed_form_of_a_linear_encoder(stride):
    """With f(u) = vec(u), E(u) = -(1/(P tau)) sum_p <y_p, u_p>
    = -(1/(P tau)) sum_{r,c} n(r) n(c) y[r, c] u[r, c], n(r) the windows covering row r."""
    enc, tau = LinearEncoder(16), 0.1
    y, u = _img(0), _img(1)
    n = coverage(32, 16, stride)
    n_win = int(n.sum() / 16) ** 2  # windows per image
    assert n_win == ((32 - 16) // stride + 1) ** 2
    e = ContrastiveEnergy(y, enc, enc, tau, stride=stride)
    w = n[:, None] * n[None, :]
    closed = -(w * y * u).flatten(1).sum(1) / (n_win * tau)
    assert torch.allclose(e(u), closed, rtol=1e-10)
    ur = u.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(e(ur).sum(), ur)
    assert torch.allclose(g, -(w * y) / (n_win * tau), rtol=1e-10)  # the gradient's closed form


def test_spatial_energy_is_the_mean_cosine_of_the_feature_maps():
    enc, tau = LinearEncoder(16), 0.5
    y, u = _img(2), _img(3)
    e = ContrastiveEnergy(y, enc, enc, tau, stride=8, kind="spatial")
    want = torch.zeros(2, dtype=torch.float64)
    for r in (0, 8, 16):
        for c in (0, 8, 16):
            yp, up = y[..., r:r + 16, c:c + 16].flatten(1), u[..., r:r + 16, c:c + 16].flatten(1)
            want += F.cosine_similarity(yp, up, dim=1)
    assert torch.allclose(e(u), -want / 9 / tau, rtol=1e-10)
    # the projection energy of the same (unnormalised) encoder is not the cosine
    assert not torch.allclose(ContrastiveEnergy(y, enc, enc, tau, stride=8)(u), e(u))
    with pytest.raises(UnknownNameError, match="pixels"):
        ContrastiveEnergy(y, enc, enc, tau, kind="pixels")


# ------------------------------------------------------------------------- hard negatives
def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def test_hard_negatives_enter_their_own_querys_denominator():
    B, J, H, K, d, tau = 3, 2, 2, 5, 8, 0.2
    q, k, Q, h = _unit(B, d, seed=1), _unit(B, J, d, seed=2), _unit(K, d, seed=3), _unit(B, H, d, seed=4)
    loss, logits = info_nce(q, k, Q, tau, hard=h)
    assert logits.shape == (B, J, 1 + H + K)
    want = 0.0
    for i in range(B):
        for j in range(J):
            pos = torch.exp(q[i] @ k[i, j] / tau)
            den = pos + torch.exp(h[i] @ q[i] / tau).sum() + torch.exp(Q @ q[i] / tau).sum()
            want += -torch.log(pos / den)
    assert loss.item() == pytest.approx(want.item() / (B * J), rel=1e-10)
    plain, _ = info_nce(q, k, Q, tau)
    assert loss > plain  # more terms in every denominator
    # a hard negative equal to the positive (y's key = x's key): every row loses >= log 2
    same, _ = info_nce(q, k[:, :1], Q, tau, hard=k[:, :1])
    assert same.item() >= torch.log(torch.tensor(2.0)).item() + 1e-9
    # a hard negative far from the query costs (almost) nothing
    far, _ = info_nce(q, k, Q, tau, hard=-q[:, None, :])
    assert far.item() == pytest.approx(plain.item(), rel=1e-3)


def test_hard_negative_inputs_are_the_diffused_windows_of_y_and_of_a_reblurred_x():
    cfg = LikelihoodConfig(batch=4, positives=2, crop=16, hard_negatives=("y", "reblur"),
                           key_abar_min=0.3, seed=2)
    fams = parse_families("motion,gaussian,rotation,zoom")
    x = _img(4, n=4).float()
    _, gens, _, g = draw_batch(10, cfg, 5)
    y, _ = random_measurements(x, fams, gens)
    corners = draw_crops(cfg, g, 32)
    state = g.get_state()
    hk = hard_negative_inputs(cfg, g, 5, x, y, corners, fams)
    assert hk.shape == (4, 2, 1, 16, 16)
    g.set_state(state)  # the same draws, made by hand
    a = 0.3 + 0.7 * torch.rand(4, 2, generator=g)
    noise = torch.randn(4, 2, 1, 16, 16, generator=g)
    y_win = crop_windows(y, corners, 16)
    want_y = a[:, 0, None, None, None].sqrt() * y_win + (1 - a[:, 0, None, None, None]).sqrt() * noise[:, 0]
    assert torch.allclose(hk[:, 0], want_y, atol=1e-6)
    r, c = corners[1].tolist()
    assert torch.equal(y_win[1], y[1, :, r:r + 16, c:c + 16])
    x2, _ = random_measurements(x, fams, image_generators(image_seed(image_seed(2, 5), -2), range(4)))
    want_r = (a[:, 1, None, None, None].sqrt() * crop_windows(x2, corners, 16)
              + (1 - a[:, 1, None, None, None]).sqrt() * noise[:, 1])
    assert torch.allclose(hk[:, 1], want_r, atol=1e-6)
    assert not torch.allclose(x2, y, atol=1e-3)  # another measurement than the query's


# ---------------------------------------------------------------------------------- crops
def test_crop_windows_are_seeded_and_uniform_over_every_position():
    cfg = LikelihoodConfig(batch=64, crop=16, seed=7)
    c1 = draw_crops(cfg, draw_batch(100, cfg, 3)[3], 32)
    c2 = draw_crops(cfg, draw_batch(100, cfg, 3)[3], 32)
    c3 = draw_crops(cfg, draw_batch(100, cfg, 4)[3], 32)
    assert torch.equal(c1, c2) and not torch.equal(c1, c3)
    seen = torch.cat([draw_crops(cfg, draw_batch(100, cfg, s)[3], 32) for s in range(20)])
    assert seen.min() == 0 and seen.max() == 16  # both ends of the 17 positions per axis
    assert set(seen[:, 0].tolist()) == set(range(17))
    assert torch.equal(draw_crops(LikelihoodConfig(batch=5), torch.Generator(), 32),
                       torch.zeros(5, 2, dtype=torch.long))  # no crops: the whole image


def _cfg(out, **kw):
    base = {"steps": 4, "batch": 4, "positives": 2, "queue": 12, "warmup": 1, "ckpt_every": 2,
            "log_every": 1, "encoder": dict(TINY), "crop": 16, "hard_negatives": ("y", "reblur")}
    return LikelihoodConfig(out=str(out), **{**base, **kw})


def _data(n=16, seed=0):
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_crop_training_with_hard_negatives_resumes_bit_for_bit_and_logs_validation(tmp_path):
    data, valid = _data(), _data(6, seed=9)
    train_likelihood(_cfg(tmp_path / "a", val_every=2, val_images=6), data=data, valid=valid,
                     progress=False)
    train_likelihood(_cfg(tmp_path / "b"), data=data, progress=False, max_steps_this_run=2)
    train_likelihood(_cfg(tmp_path / "b"), data=data, progress=False)
    qa, ka, sa = load_trained(tmp_path / "a" / "checkpoint.pt")
    qb, kb, sb = load_trained(tmp_path / "b" / "checkpoint.pt")
    assert qa.config.image_size == 16 and int(sa["step"]) == 4
    for pa, pb in zip(qa.state_dict().values(), qb.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    import json

    log = [json.loads(s) for s in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    val = [r for r in log if r.get("event") == "val"]
    assert [r["step"] for r in val] == [2, 4] and all(0 <= r["x_beats_y"] <= 1 for r in val)
    assert all("pos_beats_hard" in r for r in log if "loss" in r)
    other = _cfg(tmp_path / "a", steps=6)
    other.crop = 8
    with pytest.raises(DiffinvError, match="another crop"):
        train_likelihood(other, data=data, progress=False)


@pytest.fixture(scope="module")
def toy_prior(tmp_path_factory):
    from conftest import make_tiny_prior
    from diffinv import load_prior

    return load_prior(str(make_tiny_prior(tmp_path_factory.mktemp("p"), name="toy")))


def test_a_crop_encoder_guides_cl_dps_on_the_whole_image(tmp_path, toy_prior):
    train_likelihood(_cfg(tmp_path / "run"), data=_data(), progress=False)
    path = export_likelihood(tmp_path / "run" / "checkpoint.pt", tmp_path / "enc.safetensors",
                             command="test", prior="toy")
    q, _, card = load_encoder(path)
    assert q.config.image_size == 16 and card["training"]["crop"] == 16
    assert card["training"]["hard_negatives"] == ["y", "reblur"]
    from diffinv.physics import make_operator, measure
    from diffinv.solvers import make_solver

    shape = tuple(toy_prior.image_shape)
    x = _data(2, seed=1)[..., :shape[-2], :shape[-1]]
    m = measure(x, make_operator("blind-gaussian-blur"), "gaussian:0.02", seed=0)
    for energy in ("projection", "spatial"):
        solver = make_solver("cl-dps", encoder=str(path), steps=4, stride=8, energy=energy)
        res = solver(m.y, m.public(), toy_prior, seed=0)
        assert res.x.shape == x.shape and torch.isfinite(res.x).all()
    with pytest.raises(DiffinvError, match="cannot be tiled"):
        make_solver("cl-dps", encoder=str(path), steps=2, stride=5)(m.y, m.public(), toy_prior)


def test_bf16_training_runs_and_keeps_fp32_weights(tmp_path):
    import json

    train_likelihood(_cfg(tmp_path / "h", steps=2, precision="bf16"), data=_data(), progress=False)
    q, _, _ = load_trained(tmp_path / "h" / "checkpoint.pt")
    assert all(p.dtype == torch.float32 for p in q.parameters())
    log = [json.loads(s) for s in (tmp_path / "h" / "train_log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log if "loss" in r)
    with pytest.raises(DiffinvError, match="precision"):
        _cfg(tmp_path / "x", precision="fp8").validate()


def test_without_a_predictor_a_measurements_own_key_is_unbeatable_and_with_one_it_is_not(tmp_path):
    """With f_k = f_q (a momentum copy at rest), q . f_k(y) = |f(y)|^2 = 1 for the query's own y:
    the "y" hard negative would always win. The query-only predictor breaks the symmetry."""
    from diffinv.learn.encoder import ContrastiveEncoder, EncoderConfig, save_encoder

    torch.manual_seed(0)
    y = _img(5, n=6).float()[..., :16, :16]
    for predictor in (False, True):
        q = ContrastiveEncoder(EncoderConfig(image_size=16, width=8, dim=16,
                                             predictor=predictor)).eval()
        k = ContrastiveEncoder(EncoderConfig(image_size=16, width=8, dim=16,
                                             predictor=predictor)).eval()
        k.load_state_dict(q.state_dict())
        own = (q(y, query=True) * k(y)).sum(1)
        if predictor:
            assert (own < 0.99).all()
            assert torch.allclose(q(y), k(y)) and not torch.allclose(q(y, query=True), k(y))
        else:
            assert torch.allclose(own, torch.ones(6), atol=1e-5)
    path = save_encoder(q, k, tmp_path / "pred.safetensors", {"prior": "toy"})
    q2, k2, _ = load_encoder(path)
    assert q2.predictor is not None and torch.equal(q2(y, query=True), q(y, query=True))



def test_matched_hard_negatives_differ_from_their_positive_by_content_alone():
    cfg = LikelihoodConfig(batch=3, positives=2, crop=16, hard_negatives=("y",), hard_noise="matched")
    fams = parse_families("gaussian,rotation")
    x = _img(6, n=3).float()
    _, gens, a, g = draw_batch(10, cfg, 1)
    y, _ = random_measurements(x, fams, gens)
    noise = torch.randn(3, 2, 1, 16, 16, generator=g)
    corners = draw_crops(cfg, g, 32)
    state = g.get_state()
    hk = hard_negative_inputs(cfg, g, 1, x, y, corners, fams, slice(None), a, noise)
    assert torch.equal(g.get_state(), state)  # no draws
    assert hk.shape == (3, 2, 1, 1, 16, 16)
    ab = a.reshape(3, 2, 1, 1, 1)
    xk = ab.sqrt() * crop_windows(x, corners, 16)[:, None] + (1 - ab).sqrt() * noise
    want = ab.sqrt() * (crop_windows(x, corners, 16) - crop_windows(y, corners, 16))[:, None]
    assert torch.allclose(xk - hk[:, :, 0], want, atol=1e-6)
    # per-row hard keys in the loss: row (i, j) sees its own
    q, k, Q = _unit(3, 8, seed=1), _unit(3, 2, 8, seed=2), _unit(4, 8, seed=3)
    h = _unit(3, 2, 1, 8, seed=4)
    loss, logits = info_nce(q, k, Q, 0.5, hard=h)
    assert logits.shape == (3, 2, 6)
    assert torch.allclose(logits[:, :, 1], torch.einsum("bd,bjd->bj", q, h[:, :, 0]) / 0.5)
    want_loss = torch.stack([-torch.log_softmax(logits[i, j], 0)[0] for i in range(3)
                             for j in range(2)]).mean()
    assert loss.item() == pytest.approx(want_loss.item(), rel=1e-10)


def test_matched_training_runs_and_resumes(tmp_path):
    train_likelihood(_cfg(tmp_path / "m", hard_noise="matched"), data=_data(), progress=False,
                     max_steps_this_run=2)
    train_likelihood(_cfg(tmp_path / "m", hard_noise="matched"), data=_data(), progress=False)
    with pytest.raises(DiffinvError, match="another hard_noise"):
        train_likelihood(_cfg(tmp_path / "m", steps=6), data=_data(), progress=False)


def test_hard_negatives_share_the_positives_batch_statistics(tmp_path, monkeypatch):
    """The key encoder's head uses batch statistics in training: positives and hard negatives go
    through it in one call, so a hard key cannot be told apart by its batch's statistics."""
    from diffinv.learn.encoder import ContrastiveEncoder

    sizes = []
    forward = ContrastiveEncoder.forward

    def spy(self, u, *args, **kw):
        sizes.append((u.shape[0], torch.is_grad_enabled()))
        return forward(self, u, *args, **kw)

    monkeypatch.setattr(ContrastiveEncoder, "forward", spy)
    train_likelihood(_cfg(tmp_path / "s", steps=1, hard_noise="matched"), data=_data(),
                     progress=False)
    B, J, H = 4, 2, 2
    assert sorted(sizes) == sorted([(B, True), (B * J + B * J * H, False)])


class _RecordingEncoder(nn.Module):
    """A crop encoder that remembers its inputs; its embedding is a fixed random projection."""

    def __init__(self, size: int = 16):
        super().__init__()
        self.config = SimpleNamespace(image_size=size, in_channels=1, pool=4)
        self.proj = torch.randn(size * size, 8, generator=torch.Generator().manual_seed(3))
        self.seen: list[torch.Tensor] = []

    def forward(self, u, query=False):
        self.seen.append(u.clone())
        return F.normalize(u.flatten(1) @ self.proj, dim=1)


def test_validation_compares_the_keys_of_x_and_y_at_matched_noise_levels(tmp_path):
    """x_beats_y uses clean keys; x_beats_y@a diffuses both keys to level a with the same noise,
    so the key inputs of the truth and of the measurement differ by sqrt(a) (x - y) alone."""
    from diffinv.learn.moco import retrieval_accuracy

    x, fams = _data(6, seed=4), parse_families("gaussian,motion")
    q, k = _RecordingEncoder(), _RecordingEncoder()
    rec = retrieval_accuracy(q, k, x, fams, seed=1, stride=8, key_abars=(1.0, 0.5))
    assert set(rec) >= {"x_beats_y", "x_beats_y@1", "x_beats_y@0.5"}
    assert rec["x_beats_y@1"] == rec["x_beats_y"]
    y, _ = random_measurements(x, fams, image_generators(1, range(6)), 0.05)
    from diffinv.guidance.contrastive import to_patches

    def patches(u):
        return to_patches(u, 16, 8).reshape(-1, 1, 16, 16)

    clean_x, clean_y, x1, y1, xa, ya = k.seen
    assert torch.allclose(clean_x, patches(x)) and torch.allclose(clean_y, patches(y), atol=1e-6)
    assert torch.allclose(xa - ya, 0.5 ** 0.5 * (clean_x - clean_y), atol=1e-5)
    assert not torch.allclose(xa, 0.5 ** 0.5 * clean_x, atol=1e-2)  # noise was added
    assert rec == retrieval_accuracy(q, k, x, fams, seed=1, stride=8, key_abars=(1.0, 0.5))
    # training logs them
    import json

    train_likelihood(_cfg(tmp_path / "v", steps=2, val_every=2, val_images=6, val_abars=(0.5,)),
                     data=_data(), valid=_data(6, seed=9), progress=False)
    log = [json.loads(s) for s in (tmp_path / "v" / "train_log.jsonl").read_text().splitlines()]
    val = [r for r in log if r.get("event") == "val"]
    assert len(val) == 1 and 0 <= val[0]["x_beats_y@0.5"] <= 1
    with pytest.raises(DiffinvError, match="val_abars"):
        _cfg(tmp_path / "w", val_abars=(0.0,)).validate()


def test_in_batch_negatives_are_the_other_queries_positives_and_never_ones_own():
    B, J, K, d, tau = 3, 2, 4, 8, 0.3
    q, k, Q = _unit(B, d, seed=5), _unit(B, J, d, seed=6), _unit(K, d, seed=7)
    h = _unit(B, 1, d, seed=8)
    loss, logits = info_nce(q, k, Q, tau, hard=h, in_batch=True)
    assert logits.shape == (B, J, 1 + 1 + B * J + K)
    want = 0.0
    for i in range(B):
        others = torch.stack([k[m, n] for m in range(B) for n in range(J) if m != i])
        for j in range(J):
            pos = torch.exp(q[i] @ k[i, j] / tau)
            den = (pos + torch.exp(h[i] @ q[i] / tau).sum() + torch.exp(others @ q[i] / tau).sum()
                   + torch.exp(Q @ q[i] / tau).sum())
            want += -torch.log(pos / den)
    assert loss.item() == pytest.approx(want.item() / (B * J), rel=1e-10)
    # query i's own positives are masked out of its in-batch block
    own = logits[:, :, 2:2 + B * J].reshape(B, J, B, J)
    for i in range(B):
        assert torch.isinf(own[i, :, i]).all() and torch.isfinite(own[i, :, [m for m in range(B)
                                                                               if m != i]]).all()


def test_a_trained_key_tower_learns_resumes_and_its_momentum_copy_fills_the_queue(tmp_path):
    """``key_tower="trained"``: the key encoder gets gradients of its own (its weights move while
    the query's do too), the exported key is the momentum copy of that tower (not of the query),
    the queue holds that copy's keys, and an interrupted run resumes bit for bit."""
    from diffinv.learn.checkpoint import load_checkpoint

    data = _data()
    kw = {"key_tower": "trained", "momentum": 0.5}
    train_likelihood(_cfg(tmp_path / "a", steps=1, **kw), data=data, progress=False)
    s1 = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    assert "key_online" in s1
    train_likelihood(_cfg(tmp_path / "a", **kw), data=data, progress=False, max_steps_this_run=1)
    s2 = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    moved = [not torch.equal(v, s2["key_online"][n]) for n, v in s1["key_online"].items()
             if "running" not in n and "num_batches" not in n]
    assert any(moved)  # the key tower's weights are trained (not only its BN statistics)
    for name, k2 in s2["key"].items():  # h_m <- m h_m + (1 - m) h after step 2
        if k2.is_floating_point() and "running" not in name:
            want = 0.5 * s1["key"][name] + 0.5 * s2["key_online"][name]
            assert torch.allclose(k2, want, atol=1e-6), name
    assert not all(torch.allclose(a, b) for a, b in zip(s2["key"].values(), s2["query"].values(),
                                                        strict=True))
    train_likelihood(_cfg(tmp_path / "a", **kw), data=data, progress=False)
    train_likelihood(_cfg(tmp_path / "b", **kw), data=data, progress=False)
    sa = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    sb = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    for part in ("query", "key", "key_online"):
        for a, b in zip(sa[part].values(), sb[part].values(), strict=True):
            assert torch.equal(a, b), part
    assert torch.equal(sa["queue"], sb["queue"])
    with pytest.raises(DiffinvError, match="another key_tower"):
        train_likelihood(_cfg(tmp_path / "a", steps=6), data=data, progress=False)
    with pytest.raises(DiffinvError, match="key_tower must be one of"):
        train_likelihood(_cfg(tmp_path / "c", key_tower="shared"), data=data, progress=False)


def test_a_trained_key_tower_guides_cl_dps_and_refuses_the_spatial_energy(tmp_path, toy_prior):
    train_likelihood(_cfg(tmp_path / "run", key_tower="trained"), data=_data(), progress=False)
    path = export_likelihood(tmp_path / "run" / "checkpoint.pt", tmp_path / "enc.safetensors",
                             command="test", prior="toy")
    _, _, card = load_encoder(path)
    assert card["training"]["key_tower"] == "trained"
    from diffinv.physics import make_operator, measure
    from diffinv.solvers import make_solver

    shape = tuple(toy_prior.image_shape)
    x = _data(2, seed=1)[..., :shape[-2], :shape[-1]]
    m = measure(x, make_operator("blind-gaussian-blur"), "gaussian:0.02", seed=0)
    res = make_solver("cl-dps", encoder=str(path), steps=4, stride=8)(m.y, m.public(), toy_prior,
                                                                      seed=0)
    assert res.x.shape == x.shape and torch.isfinite(res.x).all()
    with pytest.raises(DiffinvError, match="feature maps"):
        make_solver("cl-dps", encoder=str(path), steps=2, energy="spatial")(m.y, m.public(),
                                                                            toy_prior)


def test_mix_hard_negatives_are_the_image_with_a_little_of_the_previous_one():
    """``"mix"``: the window of ``(1 - a) x_i + a x_{i-1}``, ``a ~ U(0.05, 0.5)`` from a stream of
    (seed, step), diffused with each positive's level and noise when matched."""
    from diffinv.learn.moco import MIX_RANGE

    cfg = LikelihoodConfig(batch=4, positives=2, crop=16, hard_negatives=("mix",),
                           hard_noise="matched", seed=3)
    fams = parse_families("motion")
    x = _img(7, n=4).float()
    _, gens, a, g = draw_batch(10, cfg, 2)
    y, _ = random_measurements(x, fams, gens)
    corners = draw_crops(cfg, g, 32)
    noise = torch.randn(4, 2, 1, 16, 16, generator=g)
    hk = hard_negative_inputs(cfg, g, 2, x, y, corners, fams, pos_a=a, pos_noise=noise)
    assert hk.shape == (4, 2, 1, 1, 16, 16)
    gm = torch.Generator().manual_seed(image_seed(image_seed(3, 2), -5))
    w = MIX_RANGE[0] + (MIX_RANGE[1] - MIX_RANGE[0]) * torch.rand(4, generator=gm)
    assert ((w >= 0.05) & (w <= 0.5)).all()
    mixed = (1 - w.reshape(4, 1, 1, 1)) * x + w.reshape(4, 1, 1, 1) * x[[3, 0, 1, 2]]
    win = crop_windows(mixed, corners, 16)
    for j in range(2):
        aj = a[:, j].reshape(4, 1, 1, 1)
        want = aj.sqrt() * win + (1 - aj).sqrt() * noise[:, j]
        assert torch.allclose(hk[:, j, 0], want, atol=1e-6)
    with pytest.raises(DiffinvError, match="hard_negatives must be distinct names"):
        LikelihoodConfig(hard_negatives=("mix", "mixup")).validate()


def test_a_shipped_encoder_is_found_by_name_and_a_file_of_that_name_wins(tmp_path, monkeypatch):
    from diffinv.guidance import contrastive

    train_likelihood(_cfg(tmp_path / "run"), data=_data(), progress=False)
    path = export_likelihood(tmp_path / "run" / "checkpoint.pt", tmp_path / "enc.safetensors",
                             command="test", prior="toy")
    monkeypatch.setattr(contrastive, "embedded_encoders", lambda: {"toy-crop16": path})
    prior = SimpleNamespace(name="toy", image_shape=(1, 32, 32))
    q, _, card = contrastive.load_likelihood("toy-crop16", prior)
    assert q.config.image_size == 16 and card["command"] == "test"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy-crop16").write_bytes(b"not an encoder")
    with pytest.raises(DiffinvError):  # the file in the working folder is read, and refused
        contrastive.load_likelihood("toy-crop16", prior)
