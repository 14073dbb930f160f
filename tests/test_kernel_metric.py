"""Kernel error after centring (blind deconvolution's shift ambiguity)."""

from __future__ import annotations

import pytest
import torch

from diffinv.errors import ShapeError
from diffinv.metrics.kernels import kernel_mse
from diffinv.physics.kernels import gaussian_kernel, motion_kernels
from diffinv.seeding import image_generators


def test_a_shifted_kernel_has_zero_error_and_another_does_not():
    k = motion_kernels(image_generators(0, [0, 1]), 9, 0.5).double()
    shifted = torch.roll(torch.nn.functional.pad(k, (2, 2, 2, 2)), (1, -2), (1, 2))
    assert torch.allclose(kernel_mse(shifted, k), torch.zeros(2, dtype=torch.float64), atol=1e-20)
    assert (kernel_mse(k.flip(0), k) > 1e-4).all()  # the other image's kernel


def test_value_of_a_delta_against_a_box():
    delta = torch.zeros(1, 3, 3, dtype=torch.float64)
    delta[0, 1, 1] = 1
    box = torch.full((1, 3, 3), 1 / 9, dtype=torch.float64)
    # canvas 7x7: at the centre (1 - 1/9)^2, eight pixels (1/9)^2, the rest 0
    expected = ((8 / 9) ** 2 + 8 / 81) / 49
    assert kernel_mse(delta, box).item() == pytest.approx(expected, rel=1e-12)


def test_unnormalised_estimates_are_normalised_and_shapes_checked():
    k = gaussian_kernel(9, torch.tensor([1.0, 2.0])).double()
    assert torch.allclose(kernel_mse(3 * k, k), torch.zeros(2, dtype=torch.float64), atol=1e-20)
    with pytest.raises(ShapeError):
        kernel_mse(k[0], k)
