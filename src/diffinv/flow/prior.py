r"""A flow-matching prior: a velocity network, its source distribution and ODE samplers.

**Convention (ours, everywhere in diffinv).** Time ``t`` runs from 0 (source) to 1 (data):

.. math::

    x_t = (1 - t)\, x_0 + t\, x_1, \qquad x_0 \sim \text{source}, \; x_1 \sim \text{data},
    \qquad u_t = x_1 - x_0,

and the network learns ``v(x_t, t) = E[x_1 - x_0 | x_t]`` (conditional flow matching with the
independent coupling, "I-CFM" / rectified flow, sigma_min = 0). Samples solve
``dx/dt = v(x, t)`` from a source draw at ``t = 0`` to ``t = 1``. Our UNet is called with
``t * time_scale`` (``time_scale = 1000``: its sinusoidal embedding was made for integer
timesteps). diffusers' ``FlowMatchEulerDiscreteScheduler`` uses ``sigma = 1 - t`` (noise at
``sigma = 1``), calls the network with ``sigma * num_train_timesteps`` and has it predict
``noise - data = -v``; :mod:`diffinv.flow.diffusers` converts.

**What a solver gets** (DESIGN.md, "Growing the contracts"):

* :meth:`FlowPrior.denoise` ``(x_t, t)``: the denoised estimate ``x1_hat = x_t + (1 - t) v(x_t,
  t)`` (= ``E[x_1 | x_t]`` for the exact field), clamped to [-1, 1] like the diffusion prior's
  Tweedie estimate: the flow's "x0" of the diffusion contract (there x_0 is the clean image);
* :meth:`FlowPrior.seed_map` ``(z, steps)``: the deterministic map seed -> image of DMPlug, ``S``
  Euler steps on the uniform grid ``t_i = i / S`` (or the prior's shifted grid) from the source
  sample of the standard-normal seed ``z``; with ``clip`` each step goes through the clamped
  estimate: ``x_s = x_t + (s - t) (clamp(x1_hat) - x_t) / (1 - t)`` (exactly Euler without the
  clamp; the flow analogue of DDIM with ``clip_sample``, whose eta = 0 step is this step);
* :attr:`FlowPrior.source` (draws, its card), :meth:`FlowPrior.velocity`, :meth:`FlowPrior.sample`.

What a flow prior does not have (a VP schedule, eps, integer timesteps, ancestral steps) raises
:class:`MissingCapabilityError` naming it, so a diffusion-only solver (DPS, DDRM, ...) refuses a flow
prior by name instead of failing somewhere inside.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from diffinv.checks import check_count
from diffinv.diffusion.prior import NetworkPrior, autocast
from diffinv.errors import DiffinvError, NonFiniteError, ShapeError, UnknownNameError
from diffinv.flow.source import Source
from diffinv.seeding import batch_generators, randn

METHODS = ("euler", "heun", "dopri5")
TIME_SCALE = 1000.0
CONVENTION = ("t in [0, 1]: x_t = (1 - t) x_0 + t x_1, x_0 ~ source (t = 0), x_1 ~ data (t = 1); "
              "the network predicts v = x_1 - x_0, called with t * time_scale")
FLOW_SOLVERS = "dmplug, pnp-flow"


class MissingCapabilityError(DiffinvError):
    """A prior lacks what a solver asked of it (e.g. a flow prior has no VP schedule). Not an
    ``AttributeError``: ``nn.Module`` would swallow it into a message without the reason."""


def time_grid(steps: int, shift: float = 1.0) -> list[float]:
    """``steps + 1`` increasing times from 0 to 1: uniform in ``sigma = 1 - t``, then shifted as
    diffusers' flow schedulers do: ``sigma' = shift sigma / (1 + (shift - 1) sigma)``."""
    check_count(steps, "steps")
    out = []
    for i in range(steps + 1):
        sigma = 1 - i / steps
        sigma = shift * sigma / (1 + (shift - 1) * sigma)
        out.append(1.0 - sigma)
    out[0], out[-1] = 0.0, 1.0
    return out


class NoPixelDiffusion:
    """The pixel-space diffusion methods solvers call (``schedule``, ``eps``, ``x0``, DDIM/DDPM
    steps...), each refused with the class's ``_missing(what)`` error: for priors that are not a
    :class:`~diffinv.diffusion.prior.DiffusionPrior` (flow, latent), so a diffusion-only solver
    names what it lacks. ``_NOT_HERE`` overrides the description of a method."""

    _NOT_HERE: dict[str, str] = {}
    _WHAT = {"schedule": "noise schedule", "num_timesteps": "timesteps",
             "eps": "noise prediction eps", "net_out": "noise prediction eps",
             "x0": "Tweedie estimate", "ddim_update": "DDIM step", "ddpm_step": "ancestral step",
             "respaced": "respaced schedule"}

    def _missing(self, what: str) -> DiffinvError:
        raise NotImplementedError

    def _refuse(self, method: str) -> DiffinvError:
        return self._missing(self._NOT_HERE.get(method, self._WHAT[method]))

    @property
    def schedule(self) -> Any:
        raise self._refuse("schedule")

    @property
    def num_timesteps(self) -> int:
        raise self._refuse("num_timesteps")

    def eps(self, *args: Any, **kw: Any) -> Tensor:
        raise self._refuse("eps")

    def net_out(self, *args: Any, **kw: Any) -> Any:
        raise self._refuse("net_out")

    def x0(self, *args: Any, **kw: Any) -> Tensor:
        raise self._refuse("x0")

    def ddim_update(self, *args: Any, **kw: Any) -> Tensor:
        raise self._refuse("ddim_update")

    def ddpm_step(self, *args: Any, **kw: Any) -> Any:
        raise self._refuse("ddpm_step")

    def respaced(self, *args: Any, **kw: Any) -> Any:
        raise self._refuse("respaced")


class FlowPrior(NoPixelDiffusion, NetworkPrior):
    """A velocity network ``v(x_t, t)`` with its source (module docstring)."""

    kind = "flow"

    def __init__(self, network: nn.Module, source: Source | None = None, *,
                 image_shape: Sequence[int] = (1, 32, 32), time_scale: float = TIME_SCALE,
                 clip_denoised: bool = True, shift: float = 1.0, name: str = "custom-flow",
                 sha256: str | None = None, domain: str | None = None, precision: str = "fp32",
                 info: dict[str, Any] | None = None):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.network = network
        self.source = source if source is not None else Source(self.image_shape)
        if self.source.image_shape != self.image_shape:
            raise ShapeError(f"the source models images {self.source.image_shape}, the prior "
                             f"{self.image_shape}")
        if not shift > 0:
            raise DiffinvError(f"shift must be > 0, got {shift}")
        self.time_scale = float(time_scale)
        self.clip_denoised = bool(clip_denoised)
        self.shift = float(shift)
        self.name, self.sha256, self.domain = name, sha256, domain or name
        self.info = dict(info or {})
        self.set_precision(precision)
        self._nfe = 0

    # -- bookkeeping (device, nfe, set_precision, check_input: NetworkPrior) ------------------
    def card(self) -> dict[str, Any]:
        """What the prior is: kind, convention, source card (for tables and logs)."""
        return {"kind": "flow", "name": self.name, "sha256": self.sha256, "convention": CONVENTION,
                "time_scale": self.time_scale, "shift": self.shift,
                "source": self.source.card(), **self.info}

    def _check_shape(self, x: Tensor, name: str = "x_t") -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            want = "x".join(str(s) for s in self.image_shape)
            raise ShapeError(f"{name} of shape {tuple(x.shape)} is not a batch of {want} images "
                             f"(C x H x W), the images of flow prior {self.name!r}")

    def _t(self, t: Tensor | float, x: Tensor) -> Tensor:
        """``t`` as a (B,) tensor of flow times in [0, 1] on ``x``'s device."""
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(x.shape[0])
        if t.numel() != x.shape[0]:
            raise DiffinvError(f"got {t.numel()} times for a batch of {x.shape[0]}")
        if not bool(((t >= 0) & (t <= 1)).all()):
            raise DiffinvError("flow times must lie in [0, 1] (0: source, 1: data); a flow "
                               "prior has no integer diffusion timesteps")
        return t

    # -- the network ------------------------------------------------------------------------------
    def velocity(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        """``v(x_t, t)`` in our convention (module docstring)."""
        self._check_shape(x_t)
        tt = self._t(t, x_t)
        if not torch.isfinite(x_t).all():
            raise NonFiniteError(f"x_t holds NaN/Inf values at flow time {tt[0].item():.4f}")
        with autocast(self.precision, x_t.device):
            out = self.network(x_t, tt * self.time_scale)
        self._nfe += 1
        return out.to(x_t.dtype)

    def denoise(self, x_t: Tensor, t: Tensor | float, clip: bool | None = None,
                velocity: Tensor | None = None) -> Tensor:
        """``x1_hat = x_t + (1 - t) v(x_t, t)``, clamped to [-1, 1] unless ``clip=False``
        (``velocity``: an already computed ``v(x_t, t)``)."""
        tt = self._t(t, x_t).view(-1, 1, 1, 1).to(x_t.dtype)
        v = self.velocity(x_t, t) if velocity is None else velocity
        x1 = x_t + (1 - tt) * v
        clip = self.clip_denoised if clip is None else clip
        return x1.clamp(-1, 1) if clip else x1

    def interpolate(self, x0: Tensor, x1: Tensor, t: Tensor | float) -> Tensor:
        """``x_t = (1 - t) x_0 + t x_1``."""
        tt = self._t(t, x1).view(-1, 1, 1, 1).to(x1.dtype)
        return (1 - tt) * x0 + tt * x1

    # -- the deterministic map seed -> image (DMPlug) --------------------------------------------
    def seed_times(self, steps: int) -> list[float]:
        """The flow times of :meth:`seed_map`'s ``steps`` Euler steps (the prior's grid)."""
        return time_grid(steps, self.shift)

    def _clipped_euler(self, x: Tensor, t: float, s: float, clip: bool) -> Tensor:
        v = self.velocity(x, t)
        if not clip:
            return x + (s - t) * v
        x1 = self.denoise(x, t, clip=True, velocity=v)
        return x + (s - t) / (1 - t) * (x1 - x)

    def seed_map(self, z: Tensor, steps: int, *, clip: bool = True,
                 checkpoint: bool = False) -> Tensor:
        """``R(z)``: the source sample of the standard-normal seed ``z``, then ``steps`` Euler
        steps of the ODE (through the clamped estimate with ``clip``), clamped to [-1, 1].
        Differentiable in ``z``; ``checkpoint`` recomputes each step in the backward pass."""
        ts = self.seed_times(steps)
        x = self.source.from_seed(z)
        for t, s in zip(ts[:-1], ts[1:], strict=True):
            if checkpoint and torch.is_grad_enabled():
                x = _checkpoint(self._clipped_euler, x, t, s, clip, use_reentrant=False)
            else:
                x = self._clipped_euler(x, t, s, clip)
        return x.clamp(-1, 1)

    # -- ODE solvers --------------------------------------------------------------------------
    def integrate(self, x: Tensor, times: Sequence[float], method: str = "euler",
                  callback: Callable[[float, Tensor], None] | None = None) -> Tensor:
        """Solve ``dx/dt = v`` over the increasing ``times`` with Euler or Heun (no clamp)."""
        if method not in ("euler", "heun"):
            raise UnknownNameError("fixed-step ODE method", method, ["euler", "heun"])
        ts = [float(t) for t in times]
        if len(ts) < 2 or any(b <= a for a, b in zip(ts, ts[1:], strict=False)):
            raise DiffinvError(f"times must increase, got {ts}")
        for t, s in zip(ts[:-1], ts[1:], strict=True):
            h = s - t
            k1 = self.velocity(x, t)
            if method == "euler":
                x = x + h * k1
            else:
                k2 = self.velocity(x + h * k1, s)
                x = x + 0.5 * h * (k1 + k2)
            if callback:
                callback(s, x)
        return x

    def integrate_adaptive(self, x: Tensor, rtol: float = 1e-4, atol: float = 1e-4) -> Tensor:
        """dopri5 from t = 0 to 1 (torchdiffeq, optional: ``pip install 'diffinv[flow]'``),
        image by image: the adaptive step control would otherwise couple a batch's images."""
        try:
            from torchdiffeq import odeint
        except ImportError as e:
            raise DiffinvError("method 'dopri5' needs torchdiffeq: pip install 'diffinv[flow]' "
                               "(or pip install torchdiffeq); 'euler' and 'heun' need nothing"
                               ) from e
        span = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
        outs = []
        for i in range(x.shape[0]):
            def f(t: Tensor, y: Tensor) -> Tensor:
                return self.velocity(y, t.reshape(1))

            # step_t: a step ends exactly at t = 1, so no stage is evaluated beyond the data end
            outs.append(odeint(f, x[i:i + 1], span, rtol=rtol, atol=atol, method="dopri5",
                               options={"step_t": span[1:]})[-1])
        return torch.cat(outs)

    @torch.no_grad()
    def sample(self, n: int, *, seed: int | Sequence[torch.Generator] = 0,
               method: str = "euler", steps: int = 100, rtol: float = 1e-4, atol: float = 1e-4,
               progress: bool = False,
               callback: Callable[[float, Tensor], None] | None = None) -> Tensor:
        """``n`` samples: a source draw per image from its generator, the ODE to t = 1 with
        ``method`` (Euler or Heun on ``steps`` steps of the prior's grid, or adaptive dopri5 with
        ``rtol``/``atol``), clamped to [-1, 1]. Batching never changes a per-image result."""
        check_count(n, "n")
        if method not in METHODS:
            raise UnknownNameError("flow sampling method", method, METHODS)
        gens = batch_generators(seed, n)
        x = self.source.from_seed(randn(self.image_shape, gens, device=self.device))
        if method == "dopri5":
            x = self.integrate_adaptive(x, rtol, atol)
        else:
            x = self.integrate(x, time_grid(steps, self.shift), method, callback)
        return x.clamp(-1, 1)

    # -- what a flow prior does not have (the refusals: NoPixelDiffusion) -------------------------
    _NOT_HERE = {"num_timesteps": "integer timesteps",
                 "x0": "Tweedie estimate at an integer timestep (use denoise(x_t, t) with a flow "
                       "time t in [0, 1])"}

    def _missing(self, what: str) -> MissingCapabilityError:
        return MissingCapabilityError(
            f"prior {self.name!r} is a flow-matching prior: it has no {what} (a VP diffusion "
            f"prior's); this solver needs a diffusion prior. Solvers that run on flow priors: "
            f"{FLOW_SOLVERS}")
