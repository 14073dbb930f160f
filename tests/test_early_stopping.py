"""ES-WMV on synthetic iterate sequences whose stop and pick are known exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffinv.errors import DiffinvError, NonFiniteError, ShapeError
from diffinv.solvers.early_stopping import WMVEarlyStopping, plot_trace


def converge_then_drift(n: int = 60, reach: int = 10, drift_from: int = 30) -> list[float]:
    """2^reach - 1, ..., 3, 1 (geometric convergence: the window variance falls by 4 per step),
    0 from ``reach`` until ``drift_from``, then 0.5, 1.0, 1.5, ... (overfitting)."""
    return [float(2 ** max(0, reach - t) - 1) if t < drift_from else 0.5 * (t - drift_from + 1)
            for t in range(n)]


def run(seq, window: int, patience: int, shape=(1, 1, 1, 1)):
    es = WMVEarlyStopping(window, patience)
    variances = []
    for v in seq:
        variances.append(es.update(torch.full(shape, v, dtype=torch.float64)).clone())
        if es.all_stopped:
            break
    return es, torch.stack(variances)


def reference(seq: np.ndarray, window: int, patience: int) -> tuple[int, int, list[float]]:
    """A direct transcription of the rule (ES_WMV.ipynb ``EarlyStop`` + ``myMetric``).

    ``seq``: (T, N) iterates of one image -> (best iteration, stop iteration or -1, VARs).
    """
    best, best_it, wait, stop, buf, vs = np.inf, -1, 0, -1, [], []
    for t, x in enumerate(seq):
        buf.append(x)
        if len(buf) > window:
            buf.pop(0)
        if len(buf) == window:
            mean = np.mean(buf, axis=0)
            var = float(np.mean([((b - mean) ** 2).sum() / b.size for b in buf]))
            vs.append(var)
            if stop < 0:
                if var < best:
                    best, best_it, wait = var, t, 0
                else:
                    wait += 1
                    if wait >= patience:
                        stop = t
    return best_it, stop, vs


def test_stop_and_pick_on_a_converge_then_drift_sequence():
    """Window 5: the first all-zero window ends at t = 14 (VAR = 0, the minimum); every later
    check fails to decrease it, so with P = 3 the stop is at 14 + 3 = 17 and the pick is x_14 = 0."""
    seq = converge_then_drift()
    es, var = run(seq, window=5, patience=3)
    assert (var[5:15, 0] < var[4:14, 0]).all() and var[14, 0] == 0  # strictly down to 0 at 14
    assert reference(np.array(seq)[:, None], 5, 3)[:2] == (14, 17)
    assert es.best_iteration.tolist() == [14]
    assert es.stop_iteration.tolist() == [17]
    assert es.pick(torch.full((1, 1, 1, 1), 99.0)).item() == 0.0
    # a larger patience runs into the drift: the minimum stays at 14, the stop at 14 + 20
    es, _ = run(seq, window=5, patience=20)
    assert es.best_iteration.tolist() == [14] and es.stop_iteration.tolist() == [34]


def test_variance_closed_form_on_an_arithmetic_progression():
    """For x_j = j d the window variance is d^2 (W^2 - 1) / 12 (population variance)."""
    d, W = 0.3, 7
    es, var = run([d * j for j in range(20)], window=W, patience=1000)
    expect = d * d * (W * W - 1) / 12
    var = var[:, 0]
    assert torch.isnan(var[: W - 1]).all()
    assert torch.allclose(var[W - 1:], torch.full((20 - W + 1,), expect, dtype=torch.float64),
                          rtol=1e-10)


def test_matches_a_direct_transcription_on_random_images():
    g = np.random.default_rng(0)
    T, W, P = 300, 10, 25
    # noisy convergence then drift, 3x4x4 images
    t = np.arange(T)[:, None]
    seq = np.exp(-t / 40) * g.normal(size=(T, 48)) * 0.3 + np.maximum(t - 150, 0) * 0.01 \
        * g.normal(size=(1, 48)) + 0.05 * g.normal(size=(T, 48))
    best, stop, vs = reference(seq, W, P)
    es = WMVEarlyStopping(W, P)
    got = []
    for x in seq:
        got.append(es.update(torch.tensor(x, dtype=torch.float64).reshape(1, 3, 4, 4)).item())
    assert stop > 0  # the sequence does stop, so the comparison is meaningful
    assert es.best_iteration.item() == best and es.stop_iteration.item() == stop
    assert np.allclose(got[W - 1:], vs, rtol=1e-12)
    np.testing.assert_allclose(es.pick(torch.zeros(1, 3, 4, 4)).flatten().numpy(),
                               seq[best], rtol=1e-6)


def test_images_stop_independently_and_picks_freeze():
    """Two images with different stops in one batch give what each gives alone, and an image's
    pick does not move after its stop even though its iterates keep coming."""
    a = converge_then_drift(80)
    b = converge_then_drift(80, reach=20, drift_from=40)
    es = WMVEarlyStopping(5, 3)
    for va, vb in zip(a, b, strict=True):
        es.update(torch.tensor([va, vb]).reshape(2, 1, 1, 1))
    alone_a, _ = run(a, 5, 3)
    alone_b, _ = run(b, 5, 3)
    assert es.best_iteration.tolist() == [alone_a.best_iteration.item(),
                                          alone_b.best_iteration.item()] == [14, 24]
    assert es.stop_iteration.tolist() == [17, 27]
    assert es.pick(torch.full((2, 1, 1, 1), 7.0)).flatten().tolist() == [0.0, 0.0]
    # VAR is still reported after the stop (for the plot)
    assert torch.isfinite(es.variance).all()


def test_inactive_images_keep_their_state_and_no_check_means_fallback():
    es = WMVEarlyStopping(3, 2)
    x = torch.tensor([1.0, 5.0]).reshape(2, 1, 1, 1)
    es.update(x)
    es.update(x + 1, active=torch.tensor([True, False]))
    es.update(x + 2, active=torch.tensor([True, False]))
    assert es.checked.tolist() == [True, False]
    fallback = torch.tensor([-1.0, -2.0]).reshape(2, 1, 1, 1)
    assert es.pick(fallback).flatten().tolist() == [3.0, -2.0]
    with pytest.raises(NonFiniteError):
        es.update(torch.tensor([float("nan"), 0.0]).reshape(2, 1, 1, 1))
    # a non-finite iterate of an inactive image is fine
    es.update(torch.tensor([float("nan"), 0.0]).reshape(2, 1, 1, 1),
              active=torch.tensor([False, True]))


@pytest.mark.parametrize("window, patience, match", [
    (1, 10, "window"), (0, 10, "window"), (2.5, 10, "window"), (True, 10, "window"),
    (10, 0, "patience"), (10, -3, "patience"), (10, "5", "patience")])
def test_bad_parameters(window, patience, match):
    with pytest.raises(DiffinvError, match=match):
        WMVEarlyStopping(window, patience)


def test_shape_change_is_refused():
    es = WMVEarlyStopping(3, 2)
    es.update(torch.zeros(2, 1, 2, 2))
    with pytest.raises(ShapeError):
        es.update(torch.zeros(3, 1, 2, 2))


def test_plot_marks_the_stop(tmp_path):
    n = 40
    trace = {"loss": torch.linspace(1, 0.01, n)[:, None].double(),
             "variance": torch.cat([torch.full((4,), float("nan")),
                                    torch.linspace(0.5, 0.1, n - 4)])[:, None].double(),
             "psnr": torch.linspace(10, 20, n)[:, None].double(),
             "picked_iteration": torch.tensor([20]), "stop_iteration": torch.tensor([30]),
             "oracle_iteration": torch.tensor([39])}
    paths = plot_trace(trace, tmp_path / "es.png")
    assert [p.name for p in paths] == ["es.png", "es_psnr.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
    with pytest.raises(DiffinvError):
        plot_trace({}, tmp_path / "none.png")
