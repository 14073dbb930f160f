r"""Convolution blur ``y = k * x``, per channel, with a chosen boundary.

The convolution (true convolution, not cross-correlation) with a ``(k_h, k_w)`` kernel anchored at
``(c_h, c_w) = (k_h // 2, k_w // 2)`` is

.. math:: y[i, j] = \sum_{a, b} k[a, b]\; x[i + c_h - a,\; j + c_w - b],

where ``x`` outside the image is given by the boundary rule:

* ``"zero"``: 0 (``scipy.ndimage.convolve(mode="constant")``);
* ``"reflect"``: mirror about the edge pixel, ``d c b | a b c d | c b a``
  (``torch`` ``ReflectionPad``, as in DPS; ``scipy.ndimage`` calls it ``"mirror"``);
* ``"replicate"``: the edge pixel repeated (``scipy.ndimage`` ``"nearest"``);
* ``"circular"``: periodic (``scipy.ndimage`` ``"wrap"``); computed by FFT,
  ``y = F^{-1}(\hat k \cdot F x)``, and diagonalised exactly by the real Fourier basis, which gives
  the SVD (:class:`FourierBlurSVD`). The benchmarks use circular boundaries.

For odd kernel sizes this equals ``scipy.ndimage.convolve`` with the matching mode. The adjoint is
the correlation with the same kernel: ``conj(\hat k)`` in the circular case, the exact
vector-Jacobian product of the (linear) padded convolution otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from diffinv.errors import DiffinvError, ShapeError
from diffinv.physics.base import Operator, check_int, check_positive, per_image
from diffinv.physics.kernels import check_kernel, gaussian_kernel, motion_kernels
from diffinv.physics.svd import SVD, RealFourier

BOUNDARIES = ("zero", "reflect", "replicate", "circular")
_TORCH_PAD = {"reflect": "reflect", "replicate": "replicate"}


def check_boundary(boundary: str) -> str:
    if boundary not in BOUNDARIES:
        raise DiffinvError(f"unknown boundary {boundary!r}; known: {', '.join(BOUNDARIES)}")
    return boundary


def _batched_kernel(kernel: Tensor, x: Tensor) -> Tensor:
    k = kernel.to(dtype=x.dtype, device=x.device)
    if k.ndim == 2:
        k = k[None]
    if k.ndim != 3 or k.shape[0] not in (1, x.shape[0]):
        raise ShapeError(f"kernel must be (kh, kw) or (B, kh, kw) with B = {x.shape[0]}; "
                         f"got {tuple(kernel.shape)}")
    return k


def conv_padded(x: Tensor, kernel: Tensor, boundary: str) -> Tensor:
    """Convolution with ``"zero"``, ``"reflect"`` or ``"replicate"`` boundaries (pad + conv2d)."""
    B, C, H, W = x.shape
    k = _batched_kernel(kernel, x)
    kh, kw = k.shape[-2:]
    ch, cw = kh // 2, kw // 2
    pad = (kw - 1 - cw, cw, kh - 1 - ch, ch)
    if boundary == "reflect" and (max(pad[:2]) >= W or max(pad[2:]) >= H):
        raise ShapeError(f"a {kh}x{kw} kernel is too large for reflect padding of a {H}x{W} image")
    xp = F.pad(x, pad) if boundary == "zero" else F.pad(x, pad, mode=_TORCH_PAD[boundary])
    w = k.flip(-2, -1)[:, None]  # cross-correlation with the flipped kernel = convolution
    if k.shape[0] == 1:
        return F.conv2d(xp, w.expand(C, 1, kh, kw), groups=C)
    out = F.conv2d(xp.reshape(1, B * C, *xp.shape[-2:]),
                   w.expand(B, C, kh, kw).reshape(B * C, 1, kh, kw), groups=B * C)
    return out.reshape(B, C, H, W)


def kernel_spectrum(kernel: Tensor, h: int, w: int) -> Tensor:
    """``rfft2`` of the kernel placed periodically, anchor at (0, 0): ``(Bk, 1, h, w//2+1)``."""
    k = kernel if kernel.ndim == 3 else kernel[None]
    kh, kw = k.shape[-2:]
    if kh > h or kw > w:
        raise ShapeError(f"a {kh}x{kw} kernel does not fit a {h}x{w} image for circular blur")
    kp = F.pad(k, (0, w - kw, 0, h - kh))
    kp = torch.roll(kp, shifts=(-(kh // 2), -(kw // 2)), dims=(-2, -1))
    return torch.fft.rfft2(kp)[:, None]


def conv_circular(x: Tensor, kernel: Tensor, *, adjoint: bool = False) -> Tensor:
    """Periodic convolution by FFT (``adjoint=True``: correlation, the ``conj`` spectrum)."""
    H, W = x.shape[-2:]
    K = kernel_spectrum(_batched_kernel(kernel, x), H, W)
    if adjoint:
        K = K.conj()
    return torch.fft.irfft2(K * torch.fft.rfft2(x), s=(H, W))


def blur(x: Tensor, kernel: Tensor, boundary: str = "circular") -> Tensor:
    """``k * x`` per channel; ``kernel`` is ``(kh, kw)`` or ``(B, kh, kw)``."""
    if boundary == "circular":
        return conv_circular(x, kernel)
    return conv_padded(x, kernel, check_boundary(boundary))


class FourierBlurSVD(SVD):
    r"""Exact real SVD of a circular blur.

    In the real Fourier basis ``T`` (:class:`~diffinv.physics.svd.RealFourier`) the blur acts on a
    conjugate pair ``(a, b) = \sqrt2 (\mathrm{Re}, \mathrm{Im}) X(w)`` as
    ``|\hat k(w)| R(\varphi_w)`` (a rotation by the phase of ``\hat k(w)`` times its modulus) and on
    a self-conjugate frequency as the real number ``\hat k(w)``. Hence ``V^T = T``,
    ``s = |\hat k|`` and ``U = T^{-1} R(\varphi)`` (``R = \mathrm{sign}\,\hat k`` on
    self-conjugate frequencies).
    """

    def __init__(self, in_shape: Sequence[int], kernel: Tensor):
        super().__init__(in_shape, in_shape)
        C, H, W = self.in_shape
        self.rf = RealFourier(H, W).to_device(kernel.device)
        K = kernel_spectrum(kernel if kernel.ndim == 3 else kernel[None], H, W)
        K = K.reshape(K.shape[0], -1)
        Kp, Ks = K[:, self.rf.pair], K[:, self.rf.selfc].real
        mag = Kp.abs()
        nz = mag > 0
        safe = torch.where(nz, mag, torch.ones_like(mag))
        self.cos = torch.where(nz, Kp.real / safe, torch.ones_like(mag))[:, None]
        self.sin = torch.where(nz, Kp.imag / safe, torch.zeros_like(mag))[:, None]
        self.sign = torch.where(Ks < 0, -torch.ones_like(Ks), torch.ones_like(Ks))[:, None]
        s = torch.cat([mag, Ks.abs(), mag], dim=1)
        self._s = s.repeat(1, C)

    def singulars(self) -> Tensor:
        return self._s

    def vt(self, x: Tensor) -> Tensor:
        return self.rf.forward(x).reshape(x.shape[0], -1)

    def v(self, c: Tensor) -> Tensor:
        C, H, W = self.in_shape
        return self.rf.inverse(c.reshape(c.shape[0], C, H * W))

    def _rotate(self, c: Tensor, sign: float) -> Tensor:
        P, S = self.rf.P, self.rf.S
        a, s, b = c[..., :P], c[..., P:P + S], c[..., P + S:]
        sn = sign * self.sin
        return torch.cat([self.cos * a - sn * b, self.sign * s, sn * a + self.cos * b], dim=-1)

    def ut(self, y: Tensor) -> Tensor:
        return self._rotate(self.rf.forward(y), -1.0).reshape(y.shape[0], self.m)

    def u(self, c: Tensor) -> Tensor:
        C, H, W = self.in_shape
        return self.rf.inverse(self._rotate(c.reshape(c.shape[0], C, H * W), 1.0))


class Blur(Operator):
    """Convolution with a given kernel (fixed at construction, or a per-image ``kernel`` parameter).

    ``kernel``: ``(kh, kw)``, non-negative, summing to 1; ``boundary`` one of ``BOUNDARIES``.
    """

    description = "convolution with a given kernel (zero, reflect, replicate or circular boundary)"
    linear = True
    param_names = ("kernel",)

    def __init__(self, kernel: Tensor | None = None, boundary: str = "circular"):
        super().__init__()
        self.boundary = check_boundary(boundary)
        if kernel is not None:
            kernel = check_kernel(torch.as_tensor(kernel, dtype=torch.float32), "kernel")
            if kernel.ndim != 2:
                raise ShapeError("a fixed kernel must be (kh, kw); pass per-image kernels to "
                                 "forward")
        self.register_buffer("kernel", kernel)

    @property
    def has_svd(self) -> bool:  # type: ignore[override]
        return self.boundary == "circular"

    def _kernel(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        k = params.get("kernel")
        if k is None:
            k = self.kernel
        if k is None:
            raise DiffinvError(f"{type(self).__name__} needs a kernel: give one to the constructor "
                               "or pass kernel=... (per image)")
        return _batched_kernel(k, x)

    def apply(self, x: Tensor, **params: Tensor) -> Tensor:
        return blur(x, self._kernel(x, params), self.boundary)

    def apply_adjoint(self, y: Tensor, **params: Tensor) -> Tensor:
        if self.boundary == "circular":
            return conv_circular(y, self._kernel(y, params), adjoint=True)
        return super().apply_adjoint(y, **params)

    def svd(self, in_shape: Sequence[int], **params: Tensor) -> FourierBlurSVD:
        """Exact SVD factors for images of shape ``in_shape = (B, C, H, W)`` (circular only)."""
        if self.boundary != "circular":
            raise DiffinvError(f"only circular blur has a fast SVD (boundary is {self.boundary!r})")
        in_shape = tuple(int(s) for s in in_shape)
        if len(in_shape) != 4:
            raise ShapeError(f"in_shape must be (B, C, H, W); got {in_shape}")
        params = self._check_params(params, in_shape[0])
        src = next((p for p in params.values() if isinstance(p, Tensor)), self.kernel)
        dtype = src.dtype if src is not None and src.is_floating_point() else torch.float32
        ref = torch.empty(in_shape[0], 0, 0, 0, dtype=dtype,
                          device=src.device if src is not None else "cpu")
        return FourierBlurSVD(in_shape, self._kernel(ref, params))


class GaussianBlur(Blur):
    """Isotropic Gaussian blur (``size x size``, ``std`` px); blind family: ``std ~ U(std_range)``.

    Non-blind: the kernel is fixed. Blind: ``forward(x, std=(B,))`` builds each image's kernel from
    its ``std`` (differentiably), and ``draw_params`` draws ``std`` uniformly in ``std_range``
    (our choice, centred on the default 1.5 px at 32x32: ``(1.0, 2.0)``).
    """

    description = "Gaussian blur (size x size kernel, std px)"

    def __init__(self, size: int = 9, std: float = 1.5, boundary: str = "circular",
                 blind: bool = False, std_range: tuple[float, float] = (1.0, 2.0)):
        self.size = check_int(size, "kernel size")
        self.std = check_positive(std, "Gaussian std")
        lo, hi = (check_positive(v, "std_range") for v in std_range)
        if lo > hi:
            raise DiffinvError(f"std_range must be (low, high) with low <= high, got {std_range}")
        self.std_range = (lo, hi)
        super().__init__(None if blind else gaussian_kernel(self.size, self.std), boundary)
        self.blind = bool(blind)
        if self.blind:
            self.param_names = ("std",)
            self.required_params = ("std",)
            self.description = "blind Gaussian blur: std ~ U(std_range) per image"
        else:
            self.param_names = ()

    def config(self) -> dict:
        return {"size": self.size, "std": self.std, "boundary": self.boundary,
                "blind": self.blind, "std_range": list(self.std_range)}

    def _kernel(self, x, params):
        if not self.blind:
            return super()._kernel(x, params)
        std = per_image(params["std"], x.shape[0], like=torch.empty(0, dtype=x.dtype,
                                                                   device=x.device))
        if (std <= 0).any():
            raise DiffinvError("Gaussian std must be > 0")
        return gaussian_kernel(self.size, std)

    def draw_params(self, generators, image_shape, *, device="cpu", dtype=torch.float32):
        if not self.blind:
            return {}
        lo, hi = self.std_range
        u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
        return {"std": (lo + (hi - lo) * u).to(dtype=dtype, device=device)}


class MotionBlur(Blur):
    """Motion blur with a random-trajectory kernel per image (:func:`~.kernels.motion_kernel`).

    ``forward(x, kernel=(B, size, size))``; ``draw_params`` draws the kernels. Non-blind: the
    kernels are public (given to the solver); blind: they are the hidden truth.
    """

    description = "motion blur, random-trajectory kernel per image (size, intensity)"
    required_params = ("kernel",)

    def __init__(self, size: int = 9, intensity: float = 0.5, boundary: str = "circular",
                 blind: bool = False):
        super().__init__(None, boundary)
        self.size = check_int(size, "kernel size")
        self.intensity = check_positive(intensity, "motion intensity", allow_zero=True)
        if self.intensity > 1:
            raise DiffinvError(f"motion intensity must be in [0, 1], got {intensity}")
        self.blind = bool(blind)
        if self.blind:
            self.description = "blind motion blur: random-trajectory kernel per image, hidden"

    def config(self) -> dict:
        return {"size": self.size, "intensity": self.intensity, "boundary": self.boundary,
                "blind": self.blind}

    def draw_params(self, generators, image_shape, *, device="cpu", dtype=torch.float32):
        return {"kernel": motion_kernels(generators, self.size, self.intensity, dtype=dtype,
                                         device=device)}
