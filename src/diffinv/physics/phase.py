r"""Fourier phase retrieval: the magnitude of the centred, unitary 2-D DFT of the zero-padded image.

As in DPS: pad ``p = \lfloor (\text{oversample}/8)\, H \rfloor`` zeros on every side (``oversample =
2`` gives 8 px at 32x32, 64 px at 256x256: the padded frame is 1.5x the image, a linear
oversampling of 1.5, not 2), then

.. math:: y = \big|\mathrm{fftshift}\,F_\mathrm{unitary}(\mathrm{pad}(x))\big|.

The image is used in its ``[-1, 1]`` range, as DPS does. ``y`` is invariant to a global sign flip,
to circular shifts within the padded frame and to the point reflection ``x(-p)``: the classical
trivial ambiguities of phase retrieval.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from diffinv.errors import ShapeError
from diffinv.physics.base import Operator, check_positive


class PhaseRetrieval(Operator):
    """``y = |fftshift(FFT_ortho(zero-pad(x)))|`` (nonlinear)."""

    description = "Fourier phase retrieval |FFT| of the zero-padded image (oversample 2, DPS)"
    linear = False
    image_like = False

    def __init__(self, oversample: float = 2.0):
        super().__init__()
        self.oversample = check_positive(oversample, "oversample", allow_zero=True)

    def pad_for(self, n: int) -> int:
        return int(self.oversample / 8.0 * n)

    def out_shape(self, in_shape):
        B, C, H, W = (int(v) for v in in_shape)
        return (B, C, H + 2 * self.pad_for(H), W + 2 * self.pad_for(W))

    def in_shape(self, out_shape):
        B, C, Ho, Wo = (int(v) for v in out_shape)
        H = next((h for h in range(1, Ho + 1) if h + 2 * self.pad_for(h) == Ho), None)
        W = next((w for w in range(1, Wo + 1) if w + 2 * self.pad_for(w) == Wo), None)
        if H is None or W is None:
            raise ShapeError(f"no image size gives a {Ho}x{Wo} phase-retrieval measurement")
        return (B, C, H, W)

    def apply(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        ph, pw = self.pad_for(H), self.pad_for(W)
        xp = F.pad(x, (pw, pw, ph, ph))
        return torch.fft.fftshift(torch.fft.fft2(xp, norm="ortho"), dim=(-2, -1)).abs()
