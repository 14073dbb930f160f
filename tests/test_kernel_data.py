"""The kernels9 data set: kernel <-> image maps, seeded splits, and its loaders."""

from __future__ import annotations

import pytest
import torch

from diffinv.data import load_split
from diffinv.data.kernels import draw_kernel, image_to_kernel, kernel_to_image
from diffinv.errors import DiffinvError, ShapeError
from diffinv.physics import gaussian_kernel


def test_image_to_kernel_inverts_kernel_to_image():
    g = torch.Generator().manual_seed(0)
    k = torch.rand(3, 9, 9, generator=g) ** 4
    k = k / k.sum((1, 2), keepdim=True)
    img = kernel_to_image(k, 12)
    assert img.shape == (3, 1, 12, 12)
    assert img.amin() >= -1 and torch.allclose(img.flatten(1).amax(1), torch.ones(3))
    assert (img[:, :, 0] == -1).all() and (img[:, :, 10:] == -1).all()  # background outside
    assert torch.allclose(image_to_kernel(img, 9), k, atol=1e-6)


def test_image_to_kernel_is_a_psf_for_any_canvas():
    c = torch.randn(2, 1, 12, 12) * 3
    k = image_to_kernel(c.clamp(-1, 1), 9)
    assert (k >= 0).all() and torch.allclose(k.sum((1, 2)), torch.ones(2))
    empty = image_to_kernel(-torch.ones(1, 1, 12, 12), 9)
    assert torch.allclose(empty, torch.full((1, 9, 9), 1 / 81))


def test_splits_are_seeded_and_drawn_from_the_families():
    v = load_split("kernels9", "valid")
    assert v.images.shape == (2000, 1, 12, 12) and v.labels[:4].tolist() == [0, 1, 0, 1]
    k0, kind0 = draw_kernel(0, 1, 9)
    assert kind0 == 0 and torch.allclose(image_to_kernel(v.images[:1], 9)[0], k0.float(),
                                         atol=1e-6)
    k1, kind1 = draw_kernel(1, 1, 9)
    stds = torch.linspace(1, 2, 1001, dtype=torch.float64)
    err = (gaussian_kernel(9, stds) - k1).abs().amax((1, 2))
    assert kind1 == 1 and err.min() < 1e-4  # a Gaussian kernel with std in [1, 2]
    assert not torch.equal(draw_kernel(0, 0, 9)[0], k0)  # train and valid differ
    assert torch.equal(load_split("kernels9", "valid").images, v.images)


def test_bad_inputs():
    with pytest.raises(ShapeError, match="does not fit"):
        kernel_to_image(torch.ones(1, 13, 13) / 169, 12)
    with pytest.raises(ShapeError):
        image_to_kernel(torch.zeros(1, 2, 12, 12), 9)
    with pytest.raises(DiffinvError, match="kernels9"):
        load_split("kernels7", "train")


def test_wide_split_cycles_through_the_families():
    from diffinv.data.kernels import KERNEL_MIX, KINDS
    from diffinv.physics.kernel_families import make_family
    from diffinv.seeding import image_seed

    v = load_split("kernels9-wide", "valid")
    assert v.images.shape == (2000, 1, 12, 12)
    mix = KERNEL_MIX["kernels9-wide"]
    assert mix == ("motion", "gaussian", "motion-wide", "gaussian-wide", "gaussian-anisotropic",
                   "airy", "disk", "motion-wide")  # as documented; today's families included
    assert torch.bincount(v.labels).tolist() == [250, 250, 500, 250, 250, 250, 250]
    assert v.labels[:8].tolist() == [KINDS.index(f) for f in mix]
    assert v.labels.tolist() == [KINDS.index(mix[j % 8]) for j in range(2000)]
    for j in (2, 5, 6, 9):  # kernel j = family mix[j % 8] drawn from the split's stream
        g = torch.Generator().manual_seed(image_seed(1, j))
        want = make_family(mix[j % 8]).draw(9, g)
        assert torch.allclose(image_to_kernel(v.images[j:j + 1], 9)[0], want.float(), atol=1e-6)
    assert torch.equal(draw_kernel(3, 1, 9, mix)[0], draw_kernel(3, 1, 9, mix)[0])
    assert all(not torch.equal(draw_kernel(j, 0, 9, mix)[0], draw_kernel(j, 1, 9, mix)[0])
               for j in range(8))  # train and valid differ
    # kernels9 is unchanged: its default cycle is (motion, gaussian)
    assert torch.equal(draw_kernel(4, 1, 9)[0], draw_kernel(4, 1, 9, ("motion", "gaussian"))[0])
    with pytest.raises(DiffinvError, match="unknown kernel family"):
        draw_kernel(0, 1, 9, ("zernike",))
