"""Training loop for eps-prediction diffusion priors (``diffinv train-prior``) and, with
``objective="flow"``, flow-matching priors (the loss and source: :mod:`diffinv.flow.training`).

Objective (Ho et al. 2020, eq. 14, "simple" loss): ``E_{x0, t, eps} || eps - eps_theta(sqrt(abar_t) x0
+ sqrt(1 - abar_t) eps, t) ||^2`` with t uniform on 0..T-1.

Determinism and resumption: the global batch of step k (image indices, timesteps, noise) is drawn
from a generator seeded by ``image_seed(seed, k)``, so it depends only on (seed, k). A resumed run
therefore replays exactly the batches an uninterrupted run would have seen. Under ``torchrun``
with W ranks, rank r takes rows [r B/W, (r+1) B/W) of the same global batch; DDP's gradient
averaging then makes W ranks equivalent to one process with the full batch.

Optimiser AdamW, linear warm-up then constant (or cosine) learning rate, gradient clipping,
EMA of the weights, atomic checkpoints every ``ckpt_every`` steps, a JSON-lines log. The cosine
schedule may start late (``decay_start``): constant until then, cosine down to 10% at ``steps``,
the warm-up/stable/decay shape of Hu et al. 2024 (MiniCPM, sec. 4), which lets a run trained at a
constant rate be resumed into a short final decay without restarting it.

Precision: ``precision="bf16"`` runs the network's forward pass under bfloat16 autocast (weights,
optimiser state, EMA and the loss stay float32); on our 2-core AVX512-BF16 CPU the shipped
UNet trained at 92 instead of 60 images/s per run (the logs in ``training/state/``). Every start
or resume appends an ``{"event": "start", ...}`` line with the full configuration to the log, so
a run trained in phases (other lr, other precision) keeps its history.
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from diffinv.checks import check_count, check_device, check_output_folder
from diffinv.diffusion.prior import PRECISIONS, autocast
from diffinv.diffusion.schedule import VPSchedule
from diffinv.diffusion.unet import UNet, check_attention
from diffinv.errors import DiffinvError, NonFiniteError
from diffinv.learn.checkpoint import check_export_name, load_checkpoint, save_atomic
from diffinv.learn.ema import EMA
from diffinv.seeding import image_seed

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"


@dataclass
class OptimConfig:
    """The leading fields of the single-network trainers' configs (prior, autoencoder, deblurring
    UNet): data set, run folder and the AdamW/EMA settings that :func:`learning_rate` and the
    loops read. Subclasses override defaults in place and add their fields after these."""

    dataset: str = "fashion32"
    out: str = "runs/fashion32"
    steps: int = 10_000
    batch: int = 64
    lr: float = 6e-4
    lr_schedule: str = "constant"  # "constant" or "cosine" (to 10% at ``steps``)
    warmup: int = 200
    decay_start: int = 0  # cosine only: the step where the decay begins (constant before)
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0

    def check_optimiser(self, fraction: tuple[str, ...] = ("ema_decay",)) -> None:
        """Refuse non-positive steps, batch or lr, a negative warm-up, or a weight decay, gradient
        clip or ``fraction`` field out of its range (:func:`check_numbers`)."""
        if self.steps < 1 or self.batch < 1 or self.lr <= 0 or self.warmup < 0:
            raise DiffinvError("steps, batch and lr must be positive and warmup non-negative")
        check_numbers(self, positive=("lr",), non_negative=("weight_decay", "grad_clip"),
                      fraction=fraction)

    def check_schedule(self, show_steps: bool = False) -> None:
        """Refuse an ``lr_schedule`` other than constant or cosine and a ``decay_start`` outside
        [0, steps) (the message gives ``steps`` where ``show_steps``)."""
        if self.lr_schedule not in ("constant", "cosine"):
            raise DiffinvError(f"lr_schedule must be 'constant' or 'cosine', got "
                               f"{self.lr_schedule!r}")
        if not 0 <= self.decay_start < self.steps:
            bound = f" = [0, {self.steps})" if show_steps else ""
            raise DiffinvError(f"decay_start must lie in [0, steps){bound}, got {self.decay_start}")


def check_train_images(train_images: object) -> None:
    """Refuse a ``train_images`` count (the first N training images; 0: all) that is not an
    integer >= 0."""
    if isinstance(train_images, bool) or not isinstance(train_images, int) or train_images < 0:
        raise DiffinvError(f"train_images must be an integer >= 0, got {train_images!r}")


@dataclass
class TrainConfig(OptimConfig):
    seed: int = 0
    ckpt_every: int = 250
    log_every: int = 25
    schedule: str = "linear"
    T: int = 1000
    precision: str = "fp32"  # "fp32" or "bf16" (autocast of the forward pass)
    #: "eps" (noise prediction on the VP schedule) or "flow" (conditional flow matching,
    #: :mod:`diffinv.flow.training`; ``schedule`` and ``T`` are then unused)
    objective: str = "eps"
    #: flow only: the source, {"kind": "gaussian" | "pca" | "random", "k", "mean", "scale", "seed"}
    source: dict = field(default_factory=lambda: {"kind": "gaussian"})
    #: train on the first N images of the training split only (0: all of them)
    train_images: int = 0
    unet: dict = field(
        default_factory=lambda: dict(
            base_channels=32, channel_mults=[1, 2, 2], num_res_blocks=2, attention_resolutions=[8]
        )
    )

    def validate(self) -> None:
        self.check_optimiser()
        check_numbers(self.unet, fraction=("dropout",), where="unet ")
        mults = self.unet.get("channel_mults", [1, 2, 2])
        if not mults or any(isinstance(m, bool) or not isinstance(m, int) or m < 1
                            for m in mults):
            raise DiffinvError(f"unet channel_mults must be one or more integers >= 1, got {mults}")
        self.check_schedule(show_steps=True)
        if self.precision not in PRECISIONS:
            raise DiffinvError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.objective not in ("eps", "flow"):
            raise DiffinvError(f"objective must be 'eps' or 'flow', got {self.objective!r}")
        if self.objective == "flow":
            from diffinv.flow.training import check_source_config

            check_source_config(self.source)
        check_train_images(self.train_images)


def learning_rate(cfg: OptimConfig, step: int) -> float:
    """lr at ``step``: ``lr * w(step) * c(step)`` with the linear warm-up ``w = min(1, (step+1)/warmup)``
    and, for "cosine", ``c = 0.1 + 0.45 (1 + cos(pi f))``, ``f = clip((step - decay_start) /
    (steps - decay_start), 0, 1)`` (``c = 1`` for "constant")."""
    warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else 1.0
    if cfg.lr_schedule == "cosine":
        span = max(cfg.steps - cfg.decay_start, 1)
        frac = min(1.0, max(0.0, (step - cfg.decay_start) / span))
        return cfg.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
    return cfg.lr * warm


def draw_batch(
    n_data: int, batch: int, T: int, image_shape: tuple[int, ...], seed: int, step: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The global batch of step ``step``: (image indices, timesteps, noise), from (seed, step) alone."""
    g = torch.Generator().manual_seed(image_seed(seed, step))
    idx = torch.randint(n_data, (batch,), generator=g)
    t = torch.randint(T, (batch,), generator=g)
    noise = torch.randn((batch, *image_shape), generator=g)
    return idx, t, noise


def diffusion_loss(
    model: nn.Module, schedule: VPSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    ab = schedule.at(schedule.alpha_bar, t, x0.ndim, x0.device)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    return (model(x_t, t.to(x0.device)).float() - noise).pow(2).mean()


class _Dist:
    """Rank/world size from torchrun's environment; initialises the process group if needed."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.active = self.world > 1
        if self.active and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)

    @property
    def main(self) -> bool:
        return self.rank == 0


@contextmanager
def stop_requests():
    """While active, SIGTERM and SIGINT only set ``flag["stop"]``: the loop then checkpoints at
    the end of the current step and returns, so ``kill`` (or Ctrl-C) loses no finished step.
    Outside the main thread (where handlers cannot be installed) signals keep their default."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: object) -> None:
        flag["stop"] = True

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _agreed(flag: bool, ddp: _Dist, device: torch.device) -> bool:
    """A stop request seen by any rank stops every rank at the same step."""
    if not ddp.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def pick_device(device: str | None) -> torch.device:
    """``device`` (checked: :func:`~diffinv.checks.check_device`), or CUDA if present, or CPU."""
    if device:
        return check_device(device, "device")
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def check_numbers(cfg: object, *, positive: tuple[str, ...] = (),
                  non_negative: tuple[str, ...] = (), fraction: tuple[str, ...] = (),
                  where: str = "") -> None:
    """Refuse a field of ``cfg`` (a config dataclass or a dict) that is not a finite number in
    its range: ``positive`` > 0, ``non_negative`` >= 0, ``fraction`` in [0, 1) (a decay, a
    momentum, a dropout probability). Missing fields of a dict are skipped."""
    ranges = [(positive, "> 0", lambda v: v > 0), (non_negative, ">= 0", lambda v: v >= 0),
              (fraction, "in [0, 1)", lambda v: 0 <= v < 1)]
    for names, text, ok in ranges:
        for name in names:
            if isinstance(cfg, dict) and name not in cfg:
                continue
            value = cfg[name] if isinstance(cfg, dict) else getattr(cfg, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and ok(value)):
                raise DiffinvError(f"{where}{name} must be a finite number {text}, got {value!r}")


def check_run_folder(out: str | Path, trainer: str, state_keys: tuple[str, ...],
                     config_keys: tuple[str, ...],
                     map_location: str | torch.device = "cpu") -> dict | None:
    """Check run folder ``out`` of ``trainer`` (e.g. "train-prior") before any data loads.

    The folder must be creatable and writable (:func:`~diffinv.checks.check_output_folder`), and
    the files the run writes there (``checkpoint.pt``, ``config.json``, ``train_log.jsonl``)
    files if they exist. Returns the checkpoint a run resumes from (``None`` without one), after
    checking that ``trainer`` wrote it: a dict holding ``state_keys``, whose ``"config"`` is a
    JSON object holding ``config_keys``; anything else raises :class:`DiffinvError`.
    """
    out = check_output_folder(out, replace=False)
    for name in (CHECKPOINT, "config.json", LOG):
        if (out / name).exists() and not (out / name).is_file():
            raise DiffinvError(f"{out / name} is not a file; the run folder of {trainer} keeps "
                               f"its {name} there: use another --out folder")
    path = out / CHECKPOINT
    if not path.is_file():
        return None
    state = load_checkpoint(path, map_location=map_location)
    try:
        config = json.loads(state["config"])
    except (KeyError, TypeError, ValueError):
        config = None
    if (not isinstance(config, dict) or any(k not in state for k in state_keys)
            or any(k not in config for k in config_keys)):
        raise DiffinvError(f"{path} holds a checkpoint not from {trainer}; use another --out "
                           "folder (or move that file away)")
    return state


def finite_state(*parts: nn.Module | torch.Tensor) -> bool:
    """Whether every parameter and floating-point buffer of ``parts`` (modules or tensors) is
    finite, i.e. what a checkpoint would save holds no NaN/Inf."""
    tensors: list[torch.Tensor] = []
    for p in parts:
        tensors += [p] if isinstance(p, torch.Tensor) else [*p.parameters(), *p.buffers()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def diverged(step: int, ckpt_path: Path, saved_step: int | None) -> NonFiniteError:
    """The error of a run whose weights became non-finite at ``step`` (they are never saved);
    ``saved_step`` is the step of the checkpoint on disk (``None``: there is none)."""
    last = (f"the last good state is {ckpt_path} (step {saved_step})" if saved_step is not None
            else "no checkpoint was written")
    return NonFiniteError(f"training diverged: the weights became non-finite (NaN/Inf) at step "
                          f"{step} and were not saved (try a lower --lr); {last}")


# The steps the training loops share (train-prior, -autoencoder, -deblur-net, -davi).
def resume(state: dict, model: nn.Module, opt: torch.optim.Optimizer, ema: EMA) -> int:
    """Load a checkpoint's ``"model"``, ``"opt"`` and ``"ema"`` states; returns its step."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    ema.load_state_dict(state["ema"])
    return int(state["step"])


def append_log(log_path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` as one JSON line to the run's log."""
    with open(log_path, "a") as f:
        f.write(json.dumps(row) + "\n")


def start_log(out: Path, cfg: Any, step: int, **extra: Any) -> Path:
    """Create run folder ``out``, write its ``config.json`` (the dataclass ``cfg``) and append
    the ``{"event": "start"}`` line (``extra`` before the config) to its log; returns the log."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    append_log(out / LOG, {"event": "start", "step": step, "time": time.time(), **extra,
                           "config": asdict(cfg)})
    return out / LOG


def optimiser_step(loss: torch.Tensor, model: nn.Module, opt: torch.optim.Optimizer, ema: EMA,
                   grad_clip: float) -> None:
    """Back-propagate ``loss``, clip the gradient norm to ``grad_clip`` (0: no clipping), step
    ``opt`` and update the EMA of ``model``."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    ema.update(model)


def check_loss(loss: torch.Tensor, step: int, checkpoint: Callable[[], None],
               ckpt_path: Path | None) -> None:
    """A non-finite ``loss`` at ``step``: ``checkpoint()`` the state before it (which raises
    :func:`diverged` when the weights are to blame), then raise, naming ``ckpt_path`` if given."""
    if not torch.isfinite(loss):
        checkpoint()
        saved = (f"; the state before it is saved in {ckpt_path} (step {step})"
                 if ckpt_path is not None else "")
        raise NonFiniteError(f"loss became {loss.item()} at step {step}{saved}")


def end_of_step(step: int, end: int, ckpt_every: int, stop: bool,
                checkpoint: Callable[[], None], bar: Any, ckpt_path: Path) -> bool:
    """After a finished ``step``: ``checkpoint()`` every ``ckpt_every`` steps, at the run's
    ``end`` and on a ``stop`` request; returns ``stop`` (said on the progress ``bar``)."""
    if step % ckpt_every == 0 or step == end or stop:
        checkpoint()
    if stop:
        bar.write(f"stopped by a signal at step {step}; checkpoint written: {ckpt_path}")
    return stop


def train_prior(
    cfg: TrainConfig,
    *,
    data: torch.Tensor | None = None,
    device: str | None = None,
    progress: bool = True,
    max_steps_this_run: int | None = None,
) -> Path:
    """Train (or resume) a prior; returns the checkpoint path.

    ``data`` (N, C, H, W) in [-1, 1] overrides ``cfg.dataset`` (used by tests).
    ``max_steps_this_run`` stops early after that many steps (the checkpoint is written).
    """
    from tqdm.auto import tqdm

    cfg.validate()
    if max_steps_this_run is not None:
        check_count(max_steps_this_run, "max_steps_this_run")
    ddp = _Dist()
    dev = pick_device(device)
    state = check_run_folder(cfg.out, "train-prior", ("model", "opt", "ema", "step"),
                             ("unet", "schedule", "dataset"), map_location=dev)
    if data is None:
        from diffinv.data import load_split

        data = load_split(cfg.dataset, "train").images
    if cfg.train_images:
        if cfg.train_images > len(data):
            raise DiffinvError(f"train_images {cfg.train_images} exceeds the {len(data)} "
                               "training images")
        data = data[:cfg.train_images]
    if cfg.batch % ddp.world:
        raise DiffinvError(f"global batch {cfg.batch} is not divisible by {ddp.world} ranks")
    local = cfg.batch // ddp.world
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    schedule = VPSchedule.from_name(cfg.schedule, cfg.T)
    image_shape = tuple(data.shape[1:])
    unet_cfg = dict(cfg.unet, in_channels=image_shape[0], image_size=image_shape[-1])
    check_attention(image_shape[-1], unet_cfg.get("channel_mults", (1, 2, 2)),
                    unet_cfg.get("attention_resolutions", (8,)))
    torch.manual_seed(cfg.seed)  # initial weights
    model = UNet(**unet_cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema_decay)
    step, saved_step = 0, None
    flow = None
    if cfg.objective == "flow":
        from diffinv.flow.training import FlowObjective

        flow = FlowObjective.start(cfg, data, state, dev)
    if state is not None:
        saved = json.loads(state["config"])
        if (
            saved["unet"] != cfg.unet
            or saved["schedule"] != cfg.schedule
            or saved["dataset"] != cfg.dataset
            or saved.get("objective", "eps") != cfg.objective
            or saved.get("train_images", 0) != cfg.train_images
            or (cfg.objective == "flow" and saved.get("source") != cfg.source)
        ):
            raise DiffinvError(
                f"{ckpt_path} was trained with another network/schedule/data set; "
                "use another --out folder"
            )
        step = saved_step = resume(state, model, opt, ema)
        del state
    net: nn.Module = model
    if ddp.active:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    data_dev = data.to(dev)
    log_path = out / LOG
    if ddp.main:
        start_log(out, cfg, step)
    end = cfg.steps if max_steps_this_run is None else min(cfg.steps, step + max_steps_this_run)
    bar = tqdm(
        total=cfg.steps,
        initial=step,
        disable=not (progress and ddp.main),
        desc=f"train {cfg.dataset}",
    )
    t_last, n_last, losses = time.time(), step, []

    def checkpoint() -> None:
        nonlocal saved_step
        if not finite_state(model, ema.model):
            raise diverged(step, ckpt_path, saved_step)
        if ddp.main:
            save_atomic(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "ema": ema.state_dict(),
                    "step": step,
                    "config": json.dumps(asdict(cfg)),
                    "image_shape": torch.tensor(image_shape),
                    **({"source": flow.state()} if flow is not None else {}),
                },
                ckpt_path,
            )
        saved_step = step

    with stop_requests() as stop:
        while step < end:
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step)
            sl = slice(ddp.rank * local, (ddp.rank + 1) * local)
            if flow is not None:
                with autocast(cfg.precision, dev):
                    loss = flow.loss(net, data_dev, len(data), cfg.batch, cfg.seed, step, sl)
            else:
                idx, t, noise = draw_batch(len(data), cfg.batch, cfg.T, image_shape, cfg.seed,
                                           step)
                x0 = data_dev[idx[sl].to(dev)]
                with autocast(cfg.precision, dev):
                    loss = diffusion_loss(net, schedule, x0, t[sl], noise[sl].to(dev))
            check_loss(loss, step, checkpoint, ckpt_path)
            optimiser_step(loss, model, opt, ema, cfg.grad_clip)
            step += 1
            losses.append(loss.item())
            bar.update(1)
            if step % cfg.log_every == 0 or step == end:
                now = time.time()
                ips = (step - n_last) * cfg.batch / max(now - t_last, 1e-9)
                mean_loss = sum(losses) / len(losses)
                bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{ips:.0f}")
                if ddp.main:
                    append_log(log_path, {"step": step, "loss": mean_loss,
                                          "lr": learning_rate(cfg, step - 1),
                                          "images_per_s": ips, "time": now})
                t_last, n_last, losses = now, step, []
            if end_of_step(step, end, cfg.ckpt_every, _agreed(stop["stop"], ddp, dev),
                           checkpoint, bar, ckpt_path):
                break
    bar.close()
    if ddp.active:
        dist.barrier()
    return ckpt_path


def export_prior(
    ckpt: str | Path,
    out_dir: str | Path,
    name: str,
    *,
    use_ema: bool = True,
    extra: dict | None = None,
) -> Path:
    """Write ``NAME.safetensors`` (EMA weights by default) and ``NAME.json`` (its config)."""
    from safetensors.torch import save_file

    check_export_name(name)
    state = load_checkpoint(ckpt)
    cfg = json.loads(state["config"])
    if cfg.get("objective", "eps") == "flow":
        from diffinv.flow.training import export_flow_prior

        return export_flow_prior(state, out_dir, name, use_ema=use_ema, extra=extra)
    weights = state["ema"]["model"] if use_ema else state["model"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    from diffinv.assets import sha256_file

    c, h, w = (int(v) for v in state["image_shape"])
    meta = {
        "name": name,
        "domain": name,
        "network": "UNet",
        "unet": dict(cfg["unet"], in_channels=c, image_size=h),
        "image_shape": [c, h, w],
        "schedule": cfg["schedule"],
        "T": cfg["T"],
        "variance": "fixed_small",
        "prediction": "eps",
        "trained_on": f"{cfg['dataset']}:train"
                      + (f"[:{cfg['train_images']}]" if cfg.get("train_images") else ""),
        "train_images": int(cfg.get("train_images", 0)),  # the first N of the split; 0: all
        "steps": int(state["step"]),
        "batch": cfg["batch"],
        "lr": cfg["lr"],
        "ema_decay": cfg["ema_decay"],
        "weights": "ema" if use_ema else "raw",
        "sha256": sha256_file(path),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        **(extra or {}),
    }
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=2))
    return path
