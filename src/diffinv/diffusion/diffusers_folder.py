r"""Priors from diffusers folders: a ``UNet2DModel`` saved with ``save_pretrained`` and its
scheduler's config (optional extra ``pip install diffinv[diffusers]``).

Accepted layouts:

* a pipeline folder: ``unet/config.json`` + ``unet/diffusion_pytorch_model.safetensors`` and
  ``scheduler/scheduler_config.json`` (what ``DDPMPipeline.save_pretrained`` writes);
* a model folder: ``config.json`` (``_class_name`` ``UNet2DModel``) + the safetensors weights, with
  ``scheduler_config.json`` beside them or not (then diffusers' ``DDPMScheduler`` defaults, with a
  warning).

Only safetensors weights are read (a ``.bin`` file is a pickle: it is refused, never unpickled).

**Scheduler class.** The scheduler config's ``_class_name`` is read first, and only the classes
whose config means the discrete-time VP schedule modelled here (T trained timesteps, betas,
``abar_t``, an eps / v / x0 network called with the integer timestep) are accepted
(:data:`SUPPORTED_SCHEDULERS`): ``DDPMScheduler``, ``DDIMScheduler``, their ``Parallel`` variants
(the same configs, batched sampling) and ``PNDMScheduler`` (the same schedule keys; it has no
``clip_sample``, so diffinv's clamp of the Tweedie estimate applies). Everything else is refused
by name: variance-exploding and EDM schedulers (``ScoreSdeVeScheduler``, ``EDMEulerScheduler``,
whose networks take sigmas), the other flow-matching schedulers (``FlowMatchHeunDiscreteScheduler``
...), the
``Euler*``/``DPMSolver*``/``UniPC``... family (continuous or remapped timesteps, flow sigmas,
Karras sigmas: what their configs mean depends on keys this loader does not model) and the
consistency schedulers (``LCMScheduler``, ``TCDScheduler``: boundary-condition networks). A config
without ``_class_name`` is refused too. Missing keys of an accepted class take diffusers' defaults,
which are the same for all of them (T = 1000, linear betas 1e-4..0.02, epsilon); betas that come
from those defaults are labelled ``"linear (defaulted)"`` in ``prior.schedule.kind``, never
``"trained"`` (which means ``trained_betas``).

**Flow matching.** A folder whose scheduler is ``FlowMatchEulerDiscreteScheduler`` loads as a
:class:`~diffinv.flow.prior.FlowPrior` (:mod:`diffinv.flow.diffusers`, where the time convention
is converted: diffusers' ``sigma = 1 - t``, network output ``noise - data = -v``).

**Schedule.** ``num_train_timesteps`` T; ``beta_schedule`` ``"linear"`` (``linspace(beta_start,
beta_end, T)``, as diffusers: no 1000/T rescaling), ``"scaled_linear"`` (``linspace(sqrt(beta_start),
sqrt(beta_end), T)^2``), ``"squaredcos_cap_v2"`` (the cosine schedule, betas capped at 0.999), or
``trained_betas``. ``clip_sample`` (with ``clip_sample_range`` 1) is our clamp of the Tweedie
estimate. Refused with the setting named: ``"sigmoid"`` betas, ``rescale_betas_zero_snr``
(``abar_T = 0`` has no VP noise level), ``thresholding`` (dynamic thresholding is not our clamp),
``variance_type`` ``"learned"`` (a raw variance output).

**Prediction.** The network's output is turned into the eps our prior works with
(:class:`PredictionToEps`): ``"epsilon"`` as is; ``"v_prediction"``: ``eps = sqrt(abar) v +
sqrt(1 - abar) x_t``; ``"sample"``: ``eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)``.
``variance_type`` ``"fixed_small"`` / ``"fixed_small_log"`` -> fixed_small, ``"fixed_large"`` /
``"fixed_large_log"`` -> fixed_large, ``"learned_range"`` -> learned_range (2C output channels,
the interpolation of Nichol & Dhariwal eq. 15, as diffusers' ``DDPMScheduler``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffinv.errors import DiffinvError, IntegrityError

WEIGHTS = "diffusion_pytorch_model.safetensors"
PICKLED = "diffusion_pytorch_model.bin"
INSTALL = "pip install 'diffinv[diffusers]' (or pip install diffusers)"
VARIANCE_MAP = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small",
                "fixed_large": "fixed_large", "fixed_large_log": "fixed_large",
                "learned_range": "learned_range"}
PREDICTIONS = ("epsilon", "v_prediction", "sample")
#: scheduler classes whose config means the VP schedule modelled here (module docstring)
SUPPORTED_SCHEDULERS = ("DDIMParallelScheduler", "DDIMScheduler", "DDPMParallelScheduler",
                        "DDPMScheduler", "PNDMScheduler")
#: flow-matching scheduler classes loaded as flow priors (:mod:`diffinv.flow.diffusers`)
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)
#: diffusers' DDPMScheduler defaults (used when a folder has no scheduler config)
DDPM_DEFAULTS = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 1e-4,
                 "beta_end": 0.02, "beta_schedule": "linear", "prediction_type": "epsilon",
                 "variance_type": "fixed_small", "clip_sample": True}


def is_diffusers_folder(path: Path) -> bool:
    """Whether ``path`` is a folder laid out as a diffusers UNet (pipeline or model folder)."""
    return path.is_dir() and ((path / "unet" / "config.json").is_file()
                              or (path / "config.json").is_file())


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; :class:`IntegrityError` for an unreadable file or non-object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise IntegrityError(f"{path} is not a readable JSON file: {e}") from e
    if not isinstance(data, dict):
        raise IntegrityError(f"{path} holds no JSON object")
    return data


def _locate(folder: Path) -> tuple[Path, dict[str, Any] | None]:
    """(the UNet folder, the scheduler config or None)."""
    unet_dir = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
    for cand in (folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json",
                 unet_dir / "scheduler_config.json"):
        if cand.is_file():
            return unet_dir, read_json_object(cand)
    return unet_dir, None


# Loading steps shared with the latent (diffinv.latent.diffusers) and flow (diffinv.flow.diffusers)
# folder loaders.
def diffusers_class(name: str) -> Any:
    """diffusers' class ``name`` (``UNet2DModel``, ``AutoencoderKL``); without the optional
    package, a :class:`DiffinvError` that says how to install it."""
    try:
        import diffusers

        return getattr(diffusers, name)
    except (ImportError, AttributeError) as e:
        raise DiffinvError(f"loading a diffusers folder needs the diffusers package: {INSTALL}"
                           ) from e


def load_pretrained(name: str, folder: Path, label: str) -> Any:
    """diffusers' ``name`` loaded from ``folder`` with ``from_pretrained`` (safetensors only); a
    folder it cannot load raises :class:`IntegrityError` naming the model as ``label``."""
    cls = diffusers_class(name)
    try:
        return cls.from_pretrained(str(folder), use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise IntegrityError(f"{folder}: the diffusers {label} could not be loaded: {e}") from e


def checked_sha256(weights: Path, sha256: str | None) -> str:
    """The SHA-256 of ``weights``, refused with :class:`IntegrityError` when it is not the
    pinned ``sha256`` (``None``: nothing pinned)."""
    from diffinv.assets import sha256_file

    sha = sha256_file(weights)
    if sha256 and sha256.lower() != sha:
        raise IntegrityError(f"{weights} has SHA-256 {sha[:12]}..., but {sha256[:12]}... was "
                             "pinned (truncated or replaced weights?)")
    return sha


def sample_hw(config: dict[str, Any]) -> tuple[int, int]:
    """(height, width) of a diffusers model config's ``sample_size``: one int or a pair
    (default 32)."""
    size = config.get("sample_size", 32)
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def diffusers_betas(cfg: dict[str, Any]) -> torch.Tensor:
    """The betas a diffusers scheduler config describes (float64; see the module docstring)."""
    import math

    T = int(cfg.get("num_train_timesteps", 1000))
    if cfg.get("trained_betas") is not None:
        return torch.as_tensor(cfg["trained_betas"], dtype=torch.float64)
    kind = cfg.get("beta_schedule", "linear")
    b0, b1 = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
    if kind == "linear":
        return torch.linspace(b0, b1, T, dtype=torch.float32).double()
    if kind == "scaled_linear":
        return (torch.linspace(b0 ** 0.5, b1 ** 0.5, T, dtype=torch.float32) ** 2).double()
    if kind == "squaredcos_cap_v2":
        def f(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)],
                            dtype=torch.float64)
    raise DiffinvError(f"diffusers scheduler beta_schedule {kind!r} is not supported (supported: "
                       "linear, scaled_linear, squaredcos_cap_v2, trained_betas)")


def check_scheduler(cfg: dict[str, Any]) -> None:
    """Refuse a scheduler class not in :data:`SUPPORTED_SCHEDULERS` and settings the VP prior
    cannot represent, naming the class or the setting."""
    cls = cfg.get("_class_name")
    supported = ", ".join(SUPPORTED_SCHEDULERS)
    if cls is None:
        raise DiffinvError("the diffusers scheduler config names no scheduler class (_class_name); "
                           "diffinv cannot tell what its settings mean. Supported: "
                           f"{supported} (add \"_class_name\": \"DDPMScheduler\" if it is one)")
    if cls not in SUPPORTED_SCHEDULERS:
        raise DiffinvError(f"diffusers scheduler {cls} is not supported: diffinv models "
                           "discrete-time VP (DDPM-family) schedules and flow matching with "
                           f"{', '.join(FLOW_SCHEDULERS)}; supported: {supported}, "
                           f"{', '.join(FLOW_SCHEDULERS)}")
    if cfg.get("rescale_betas_zero_snr"):
        raise DiffinvError("diffusers scheduler rescale_betas_zero_snr=true is not supported "
                           "(a zero terminal SNR has no VP noise level)")
    if cfg.get("thresholding"):
        raise DiffinvError("diffusers scheduler thresholding=true (dynamic thresholding) is not "
                           "supported; diffinv clamps the Tweedie estimate to [-1, 1] instead")
    pred = cfg.get("prediction_type", "epsilon")
    if pred not in PREDICTIONS:
        raise DiffinvError(f"diffusers prediction_type {pred!r} is not supported (supported: "
                           f"{', '.join(PREDICTIONS)})")
    var = cfg.get("variance_type", "fixed_small")
    if var not in VARIANCE_MAP:
        raise DiffinvError(f"diffusers variance_type {var!r} is not supported (supported: "
                           f"{', '.join(VARIANCE_MAP)})")
    if cfg.get("clip_sample", True) and float(cfg.get("clip_sample_range", 1.0)) != 1.0:
        raise DiffinvError("diffusers clip_sample_range other than 1 is not supported")


def betas_label(cfg: dict[str, Any]) -> str:
    """What ``prior.schedule.kind`` says of the betas of ``cfg``: ``"trained"`` for
    ``trained_betas``, the ``beta_schedule`` it names, or ``"linear (defaulted)"``."""
    if cfg.get("trained_betas") is not None:
        return "trained"
    if cfg.get("beta_schedule") is None:
        return f"{DDPM_DEFAULTS['beta_schedule']} (defaulted)"
    return str(cfg["beta_schedule"])


class PredictionToEps(nn.Module):
    """A diffusers ``UNet2DModel`` as an eps network ``(x_t, t) -> eps`` (+ variance channels)."""

    def __init__(self, unet: nn.Module, prediction: str, alpha_bar: torch.Tensor):
        super().__init__()
        self.unet, self.prediction = unet, prediction
        self.register_buffer("alpha_bar", alpha_bar.float(), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.unet(x, t).sample
        if self.prediction == "epsilon":
            return out
        c = x.shape[1]
        pred, rest = out[:, :c], out[:, c:]
        ab = self.alpha_bar.to(x.device)[t.long()].view(-1, 1, 1, 1).to(x.dtype)
        if self.prediction == "v_prediction":
            eps = ab.sqrt() * pred + (1 - ab).sqrt() * x
        else:  # "sample"
            eps = (x - ab.sqrt() * pred) / (1 - ab).sqrt()
        return torch.cat([eps, rest], dim=1)


def load_diffusers_prior(folder: str | Path, device: str | torch.device = "cpu",
                         sha256: str | None = None) -> Any:
    """A :class:`~diffinv.diffusion.prior.DiffusionPrior` from a diffusers folder."""
    from diffinv.diffusion.prior import DiffusionPrior
    from diffinv.diffusion.schedule import VPSchedule

    folder = Path(folder)
    unet_dir, sched_cfg = _locate(folder)
    config = read_json_object(unet_dir / "config.json")
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise DiffinvError(f"{unet_dir / 'config.json'} describes a {config.get('_class_name')}; "
                           "diffinv loads UNet2DModel folders (pixel-space diffusion)")
    weights = unet_dir / WEIGHTS
    if not weights.is_file():
        if (unet_dir / PICKLED).is_file():
            raise DiffinvError(f"{unet_dir} holds {PICKLED}, a pickle, which diffinv does not "
                               f"load; convert it to {WEIGHTS} (diffusers: "
                               "save_pretrained(..., safe_serialization=True)) from a trusted "
                               "environment")
        raise DiffinvError(f"{unet_dir} has no {WEIGHTS}")
    if sched_cfg is None:
        warnings.warn(f"{folder} has no scheduler config: using diffusers' DDPMScheduler "
                      "defaults (linear betas 1e-4..0.02, T = 1000, epsilon, fixed_small)",
                      RuntimeWarning, stacklevel=2)
        sched_cfg = dict(DDPM_DEFAULTS)
        sched_cfg.pop("beta_schedule")  # so that the betas are labelled defaulted
    if sched_cfg.get("_class_name") in FLOW_SCHEDULERS:
        from diffinv.flow.diffusers import load_diffusers_flow_prior

        return load_diffusers_flow_prior(folder, unet_dir, config, sched_cfg, device, sha256)
    check_scheduler(sched_cfg)
    sha = checked_sha256(weights, sha256)
    unet = load_pretrained("UNet2DModel", unet_dir, "UNet")
    schedule = VPSchedule(diffusers_betas(sched_cfg), kind=betas_label(sched_cfg))
    variance = VARIANCE_MAP[sched_cfg.get("variance_type", "fixed_small")]
    c_in, c_out = int(config.get("in_channels", 3)), int(config.get("out_channels", 3))
    if variance == "learned_range" and c_out != 2 * c_in:
        raise DiffinvError(f"variance_type learned_range needs out_channels = 2 x in_channels; "
                           f"the UNet has {c_in} -> {c_out}")
    if variance != "learned_range" and c_out != c_in:
        raise DiffinvError(f"the UNet maps {c_in} to {c_out} channels; a prior needs "
                           f"out_channels = in_channels (or twice it with learned_range)")
    h, w = sample_hw(config)
    net = PredictionToEps(unet.eval(), sched_cfg.get("prediction_type", "epsilon"),
                          schedule.alpha_bar)
    prior = DiffusionPrior(net, schedule, image_shape=(c_in, h, w), variance=variance,
                           clip_denoised=bool(sched_cfg.get("clip_sample", True)),
                           name=folder.name, sha256=sha, domain=folder.name)
    return prior.to(device)
