"""A diffusion prior: a noise-prediction network with its VP schedule.

Notation (0-based timesteps t = 0..T-1, ``abar_t`` from :mod:`diffinv.diffusion.schedule`):

* eps:      ``eps_theta(x_t, t)``
* Tweedie:  ``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``, clamped to [-1, 1]
            (``clip_denoised=True`` of guided-diffusion); with a clamp the result is the posterior
            mean E[x_0 | x_t] only up to the clamp.
* score:    ``grad log p_t(x_t) = -eps / sqrt(1 - abar_t)``
* DDPM ancestral step (Ho et al. eq. 11 / guided-diffusion p_sample):
            ``x_{t-1} = c1_t x0_hat + c2_t x_t + sigma_t z`` (no noise at t = 0), with
            ``sigma_t^2 = beta~_t`` ("fixed_small"), ``beta_t`` ("fixed_large") or the learned
            range ``exp(f log beta_t + (1 - f) log beta~_t)``, ``f = (v + 1)/2`` (Nichol & Dhariwal eq. 15).
* DDIM step (Song et al. 2021, eq. 12) from t to s < t (s = -1 means abar_s = 1):
            ``eps' = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)``,
            ``sigma = eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s)``,
            ``x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps' + sigma z``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from diffinv.checks import check_count, check_image
from diffinv.diffusion.schedule import VPSchedule, spaced_timesteps
from diffinv.errors import DiffinvError, NonFiniteError, ShapeError, UnknownNameError
from diffinv.resources import check_memory, sample_bytes
from diffinv.seeding import batch_generators, randn

VARIANCES = ("fixed_small", "fixed_large", "learned_range")
#: network arithmetic: "fp32" (the tensors' own dtype) or "bf16" (bfloat16 autocast of the network
#: call; the output is cast back, so everything outside the network keeps its dtype)
PRECISIONS = ("fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bfloat16 arithmetic in hardware (oneDNN's AVX512-BF16/AMX check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


@functools.cache
def _warn_emulated_bf16() -> None:
    """Say once per process that bf16 on this CPU is emulated, hence slower than fp32."""
    if not cpu_has_native_bf16():
        warnings.warn("precision 'bf16' on a CPU without native bfloat16 (no AVX512-BF16/AMX; "
                      f"torch reports {torch.backends.cpu.get_cpu_capability()}): the arithmetic "
                      "is emulated and runs many times slower than 'fp32' (training on an AVX2 EPYC: "
                      "1.2 vs 28 images/s); use 'fp32' here", RuntimeWarning, stacklevel=3)


def autocast(precision: str, device: torch.device):
    """The autocast context of ``precision``: bfloat16 for "bf16", a no-op for "fp32".

    bf16 on a CPU without native bfloat16 warns once (see :func:`cpu_has_native_bf16`).
    """
    if precision == "bf16" and device.type == "cpu":
        _warn_emulated_bf16()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


class NetworkPrior(nn.Module):
    """What a network prior keeps track of, diffusion (:class:`DiffusionPrior`) or flow
    (:class:`diffinv.flow.FlowPrior`): its ``network``'s device, the ``image_shape`` it works on,
    the network precision and the count of network evaluations (subclasses set ``network``,
    ``image_shape`` and ``_nfe``)."""

    network: nn.Module
    image_shape: tuple[int, ...]
    _nfe: int

    @property
    def device(self) -> torch.device:
        p = next(self.network.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def nfe(self) -> int:
        """Network evaluations since the last :meth:`reset_nfe` (one per batched call)."""
        return self._nfe

    def reset_nfe(self) -> None:
        self._nfe = 0

    def set_precision(self, precision: str) -> NetworkPrior:
        """Run the network in ``precision`` ("fp32" or "bf16"); returns self.

        "bf16" wraps each network call in bfloat16 autocast (convolutions and matrix products in
        bfloat16, 8 significand bits) and casts the output back to the input's dtype; on a CPU with
        AVX512-BF16 DPS and DMPlug took 0.64-0.78x the fp32 time (``benchmarks/precision.md``);
        on a CPU without native bfloat16 (AVX2 only) it is emulated and many times slower.
        Gradients still flow (DPS, DMPlug); eps differs from fp32 by a few bf16 roundings
        (``tests/test_unet_zoo.py`` bounds it by 2^-5 relative), so results differ slightly from
        "fp32": benchmark rows record the precision.
        """
        if precision not in PRECISIONS:
            raise UnknownNameError("precision", precision, PRECISIONS)
        self.precision = precision
        return self

    def check_input(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        c, h, w = self.image_shape
        return check_image(x, name, channels=c, size=(h, w), finite=False)


class DiffusionPrior(NetworkPrior):
    """``prior.eps``, ``prior.x0`` (Tweedie, clamped), ``prior.score`` and the sampler steps."""

    def __init__(
        self,
        network: nn.Module,
        schedule: VPSchedule | None = None,
        *,
        image_shape: Sequence[int] = (1, 32, 32),
        variance: str = "fixed_small",
        clip_denoised: bool = True,
        name: str = "custom",
        sha256: str | None = None,
        domain: str | None = None,
        precision: str = "fp32",
    ):
        super().__init__()
        if variance not in VARIANCES:
            raise UnknownNameError("variance type", variance, VARIANCES)
        self.set_precision(precision)
        self.network = network
        self.schedule = schedule or VPSchedule.linear()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.variance = variance
        self.clip_denoised = clip_denoised
        self.name, self.sha256, self.domain = name, sha256, domain or name
        self._nfe = 0

    # -- bookkeeping (device, nfe, set_precision, check_input: NetworkPrior) ------------------
    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_steps

    def _check_shape(self, x_t: torch.Tensor, name: str = "x_t") -> None:
        """Refuse a batch whose images are not of the prior's (C, H, W): the network would run on
        them (a UNet takes any size) and return an eps of an image it never learned."""
        if not isinstance(x_t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x_t).__name__}")
        if tuple(x_t.shape[1:]) != self.image_shape or x_t.ndim != 4:
            got = "x".join(str(s) for s in x_t.shape[1:]) if x_t.ndim == 4 else \
                f"of shape {tuple(x_t.shape)}"
            want = "x".join(str(s) for s in self.image_shape)
            raise ShapeError(f"{name} is a batch of {got} images, but prior {self.name!r} works "
                             f"on {want} images (C x H x W): resize or crop them to {want}")

    def _t(self, t: torch.Tensor | int, batch: int) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.long).reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise DiffinvError(f"got {t.numel()} timesteps for a batch of {batch}")
        if (t < 0).any() or (t >= self.num_timesteps).any():
            raise DiffinvError(f"timesteps must lie in 0..{self.num_timesteps - 1}")
        return t

    def _coef(self, table: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.schedule.at(table, t, x.ndim, x.device, x.dtype)

    # -- network outputs ----------------------------------------------------------------------
    def net_out(
        self, x_t: torch.Tensor, t: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(eps, v): v is the learned-range interpolation output, or None for C-channel networks."""
        self._check_shape(x_t)
        t = self._t(t, x_t.shape[0])
        if not torch.isfinite(x_t).all():
            raise NonFiniteError(f"x_t holds NaN/Inf values at timestep {t[0].item()}")
        with autocast(self.precision, x_t.device):
            out = self.network(x_t, self.schedule.timesteps[t].to(x_t.device))
        out = out.to(x_t.dtype)
        self._nfe += 1
        c = x_t.shape[1]
        if out.shape[1] == 2 * c:
            return out[:, :c], out[:, c:]
        if self.variance == "learned_range":
            raise DiffinvError("learned_range variance needs a network with 2C output channels")
        return out, None

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        return self.net_out(x_t, t)[0]

    def x0_from_eps(
        self, x_t: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor, clip: bool | None = None
    ) -> torch.Tensor:
        t = self._t(t, x_t.shape[0])
        ab = self._coef(self.schedule.alpha_bar, t, x_t)
        x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
        clip = self.clip_denoised if clip is None else clip
        return x0.clamp(-1, 1) if clip else x0

    def eps_from_x0(
        self, x_t: torch.Tensor, t: torch.Tensor | int, x0: torch.Tensor
    ) -> torch.Tensor:
        t = self._t(t, x_t.shape[0])
        ab = self._coef(self.schedule.alpha_bar, t, x_t)
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    def x0(
        self, x_t: torch.Tensor, t: torch.Tensor | int, clip: bool | None = None
    ) -> torch.Tensor:
        """Tweedie estimate of x_0 (clamped to [-1, 1] unless ``clip=False``)."""
        return self.x0_from_eps(x_t, t, self.eps(x_t, t), clip)

    def score(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        t = self._t(t, x_t.shape[0])
        return -self.eps(x_t, t) / (1 - self._coef(self.schedule.alpha_bar, t, x_t)).sqrt()

    def q_sample(
        self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor
    ) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) with the given standard-normal ``noise``."""
        t = self._t(t, x0.shape[0])
        ab = self._coef(self.schedule.alpha_bar, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    # -- steps --------------------------------------------------------------------------------
    def posterior_mean(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int
    ) -> torch.Tensor:
        t = self._t(t, x_t.shape[0])
        s = self.schedule
        return (
            self._coef(s.posterior_mean_coef1, t, x_t) * x0
            + self._coef(s.posterior_mean_coef2, t, x_t) * x_t
        )

    def posterior_log_variance(
        self, x_t: torch.Tensor, t: torch.Tensor | int, v: torch.Tensor | None = None
    ) -> torch.Tensor:
        t = self._t(t, x_t.shape[0])
        s = self.schedule
        small = self._coef(s.posterior_log_variance_clipped, t, x_t)
        if self.variance == "fixed_small":
            return small
        large = self._coef(torch.cat([s.posterior_variance[1:2], s.betas[1:]]).log(), t, x_t)
        if self.variance == "fixed_large":
            return large
        if v is None:
            raise DiffinvError("learned_range variance needs the network's v output")
        frac = (v + 1) / 2
        return frac * self._coef(s.betas.log(), t, x_t) + (1 - frac) * small

    def ddpm_step(
        self, x_t: torch.Tensor, t: int, noise: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step from row ``t`` of the schedule -> (x_{t-1}, x0_hat)."""
        eps, v = self.net_out(x_t, t)
        x0 = self.x0_from_eps(x_t, t, eps)
        mean = self.posterior_mean(x0, x_t, t)
        if t == 0:
            return mean, x0
        if noise is None:
            raise DiffinvError("ddpm_step needs noise for t > 0")
        logvar = self.posterior_log_variance(x_t, t, v)
        return mean + (0.5 * logvar).exp() * noise, x0

    def ddim_step(
        self,
        x_t: torch.Tensor,
        t: int,
        t_prev: int,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step between rows ``t`` and ``t_prev`` (-1: the clean end) -> (x_prev, x0_hat)."""
        x0 = self.x0(x_t, t)
        return self.ddim_update(x_t, t, t_prev, x0, eta, noise), x0

    def ddim_update(
        self,
        x_t: torch.Tensor,
        t: int,
        t_prev: int,
        x0: torch.Tensor,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The DDIM update given an x0 estimate (so guidance can modify x0 before the step)."""
        eps = self.eps_from_x0(x_t, t, x0)
        ab = self._coef(self.schedule.alpha_bar, self._t(t, x_t.shape[0]), x_t)
        if t_prev < 0:
            ab_prev = torch.ones_like(ab)
        else:
            ab_prev = self._coef(self.schedule.alpha_bar, self._t(t_prev, x_t.shape[0]), x_t)
        sigma = eta * ((1 - ab_prev) / (1 - ab)).sqrt() * (1 - ab / ab_prev).sqrt()
        out = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp_min(0).sqrt() * eps
        if eta > 0 and t_prev >= 0:
            if noise is None:
                raise DiffinvError("ddim_update with eta > 0 needs noise")
            out = out + sigma * noise
        return out

    # -- sampling -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        seed: int | Sequence[torch.Generator] = 0,
        method: str = "ddpm",
        steps: int | None = None,
        eta: float = 0.0,
        spacing: str = "uniform",
        progress: bool = False,
        callback: Callable[[int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Unconditional samples (n, C, H, W). Per-image generators make batching irrelevant.

        ``method="ddpm"`` runs ancestral steps on the (respaced, if ``steps`` < T) schedule;
        ``method="ddim"`` runs DDIM steps with ``eta`` on ``steps`` spaced timesteps.
        ``n`` and ``steps`` (default T) are integers >= 1, ``eta`` lies in [0, 1]. All ``n``
        images are drawn at once: a batch whose estimated memory
        (:func:`~diffinv.resources.sample_bytes`) exceeds what the device has available raises
        :class:`~diffinv.errors.ResourceError` before anything is allocated.
        """
        from tqdm.auto import tqdm

        T = self.num_timesteps
        steps = T if steps is None else steps
        self._check_sampling(n, method, steps, eta)
        gens = batch_generators(seed, n)
        dev = self.device
        x = randn(self.image_shape, gens, device=dev)
        if method == "ddpm":
            prior = self if steps == T else self.respaced(spaced_timesteps(T, steps, spacing))
            rows = list(range(prior.num_timesteps - 1, -1, -1))
            for i in tqdm(rows, disable=not progress, desc="ddpm"):
                z = randn(self.image_shape, gens, device=dev) if i > 0 else None
                x, _ = prior.ddpm_step(x, i, z)
                if callback:
                    callback(i, x)
            self._nfe += prior._nfe if prior is not self else 0
            return x
        if method == "ddim":
            ts = spaced_timesteps(T, steps, spacing)
            for i, t in enumerate(tqdm(ts, disable=not progress, desc="ddim")):
                t_prev = ts[i + 1] if i + 1 < len(ts) else -1
                z = randn(self.image_shape, gens, device=dev) if eta > 0 and t_prev >= 0 else None
                x, _ = self.ddim_step(x, t, t_prev, eta, z)
                if callback:
                    callback(t, x)
            return x
        raise UnknownNameError("sampling method", method, ["ddpm", "ddim"])

    def _check_sampling(self, n: int, method: str, steps: int, eta: float) -> None:
        """Refuse bad :meth:`sample` arguments before drawing anything."""
        check_count(n, "n")
        check_memory(sample_bytes(self, n), f"sampling {n} images at once", device=self.device,
                     hint="sample in batches (diffinv sample --batch) of fewer images")
        check_count(steps, "steps")
        if steps > self.num_timesteps:
            raise DiffinvError(f"steps must lie in 1..{self.num_timesteps}, got {steps}")
        if method not in ("ddpm", "ddim"):
            raise UnknownNameError("sampling method", method, ["ddpm", "ddim"])
        if isinstance(eta, bool) or not isinstance(eta, int | float) or not 0 <= eta <= 1:
            raise DiffinvError(f"eta must lie in [0, 1], got {eta!r}")

    def respaced(self, timesteps: Sequence[int]) -> DiffusionPrior:
        """The same network on a respaced schedule (rows map to the original timesteps)."""
        p = DiffusionPrior(
            self.network,
            self.schedule.respace(timesteps),
            image_shape=self.image_shape,
            variance=self.variance,
            clip_denoised=self.clip_denoised,
            name=self.name,
            sha256=self.sha256,
            domain=self.domain,
            precision=self.precision,
        )
        return p
