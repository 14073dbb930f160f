r"""Training the first stage (``diffinv train-autoencoder``) and assembling a latent prior.

:func:`train_autoencoder` reuses :mod:`diffinv.learn.trainer`'s machinery: the run-folder check
(:func:`~diffinv.learn.trainer.check_run_folder`), its learning-rate law (warm-up, constant or
cosine; :func:`~diffinv.learn.trainer.learning_rate` reads the same fields), AdamW, gradient
clipping, :class:`~diffinv.learn.ema.EMA`, atomic checkpoints (``checkpoint.pt``, resumed from),
the JSON-lines log, signal-safe stops and the divergence guard. Step ``k``'s batch (image indices
and posterior noise) comes from ``image_seed(seed, k)`` alone, so a resumed run replays the batches
of an uninterrupted one. Single process (the autoencoder is small; no DDP).

The latent diffusion is then an ordinary ``train_prior`` run on the scaled latents
(:func:`encode_dataset`: ``scale_factor * mu(x)`` of every training image, 8x8x4 by default) and
:func:`export_latent_prior` writes it as ``NAME.safetensors`` + ``NAME.json`` whose ``"latent"``
entry names the autoencoder export beside it (with its SHA-256 and ``scale_factor``):
``load_prior(NAME.safetensors)`` returns a :class:`~diffinv.latent.prior.LatentPrior`.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffinv.checks import check_count
from diffinv.errors import DiffinvError, IntegrityError
from diffinv.latent.autoencoder import KLAutoencoder, autoencoder_loss, latent_scale
from diffinv.learn.checkpoint import check_export_name, load_checkpoint, save_atomic
from diffinv.learn.ema import EMA
from diffinv.learn.trainer import (
    CHECKPOINT,
    OptimConfig,
    append_log,
    check_loss,
    check_numbers,
    check_run_folder,
    check_train_images,
    diverged,
    end_of_step,
    finite_state,
    learning_rate,
    optimiser_step,
    pick_device,
    resume,
    start_log,
    stop_requests,
)
from diffinv.seeding import image_seed

TRAINER = "train-autoencoder"


@dataclass
class AutoencoderConfig(OptimConfig):
    # OptimConfig's fields come first; these defaults replace its own
    out: str = "runs/ae-fashion32"
    steps: int = 20_000
    lr: float = 4.5e-4
    lr_schedule: str = "cosine"
    seed: int = 0
    ckpt_every: int = 250
    log_every: int = 25
    kl_weight: float = 1e-6
    recon: str = "l1"
    train_images: int = 0
    #: images encoded at each checkpoint to measure the latent scale (``scale_factor``)
    scale_images: int = 512
    autoencoder: dict = field(default_factory=lambda: dict(
        latent_channels=4, base_channels=32, channel_mults=[1, 2, 2], blocks=1))

    def validate(self) -> None:
        for name in ("steps", "batch", "ckpt_every", "log_every", "scale_images"):
            check_count(getattr(self, name), name)
        check_numbers(self, positive=("lr",), non_negative=("weight_decay", "grad_clip",
                                                            "kl_weight", "warmup"),
                      fraction=("ema_decay",))
        self.check_schedule()
        if self.recon not in ("l1", "mse"):
            raise DiffinvError(f"recon must be 'l1' or 'mse', got {self.recon!r}")
        check_train_images(self.train_images)


def draw_ae_batch(n_data: int, batch: int, latent_shape: tuple[int, ...], seed: int, step: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``step``'s (image indices, posterior noise), from (seed, step) alone."""
    g = torch.Generator().manual_seed(image_seed(seed, step))
    idx = torch.randint(n_data, (batch,), generator=g)
    return idx, torch.randn((batch, *latent_shape), generator=g)


def train_autoencoder(cfg: AutoencoderConfig, *, data: torch.Tensor | None = None,
                      device: str | None = None, progress: bool = True,
                      max_steps_this_run: int | None = None) -> Path:
    """Train (or resume) the KL autoencoder; returns the checkpoint path (``data`` (N, C, H, W)
    in [-1, 1] overrides ``cfg.dataset``)."""
    from tqdm.auto import tqdm

    cfg.validate()
    if max_steps_this_run is not None:
        check_count(max_steps_this_run, "max_steps_this_run")
    dev = pick_device(device)
    state = check_run_folder(cfg.out, TRAINER, ("model", "opt", "ema", "step", "scale_factor"),
                             ("autoencoder", "dataset", "kl_weight"), map_location=dev)
    if data is None:
        from diffinv.data import load_split

        data = load_split(cfg.dataset, "train").images
    if cfg.train_images:
        if cfg.train_images > len(data):
            raise DiffinvError(f"train_images {cfg.train_images} exceeds the {len(data)} images")
        data = data[:cfg.train_images]
    image_shape = tuple(int(s) for s in data.shape[1:])
    torch.manual_seed(cfg.seed)
    try:
        model = KLAutoencoder(in_channels=image_shape[0], image_size=image_shape[-1],
                              **cfg.autoencoder).to(dev)
    except (TypeError, ValueError) as e:
        raise DiffinvError(f"bad autoencoder config {cfg.autoencoder}: {e}") from e
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema_decay)
    step, saved_step = 0, None
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    if state is not None:
        saved = json.loads(state["config"])
        if any(saved.get(k) != getattr(cfg, k) for k in ("autoencoder", "dataset", "kl_weight",
                                                           "recon", "train_images")):
            raise DiffinvError(f"{ckpt_path} was trained with another autoencoder/loss/data set; "
                               "use another --out folder")
        step = saved_step = resume(state, model, opt, ema)
        del state
    data_dev = data.to(dev)
    log_path = start_log(out, cfg, step)
    end = cfg.steps if max_steps_this_run is None else min(cfg.steps, step + max_steps_this_run)
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc=f"ae {cfg.dataset}")
    parts: list[dict[str, float]] = []
    t_last, n_last = time.time(), step

    def checkpoint() -> None:
        nonlocal saved_step
        if not finite_state(model, ema.model):
            raise diverged(step, ckpt_path, saved_step)
        scale = latent_scale(ema.model, data_dev[:cfg.scale_images])
        save_atomic({"model": model.state_dict(), "opt": opt.state_dict(),
                     "ema": ema.state_dict(), "step": step, "config": json.dumps(asdict(cfg)),
                     "image_shape": torch.tensor(image_shape), "scale_factor": scale}, ckpt_path)
        saved_step = step

    with stop_requests() as stop:
        while step < end:
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step)
            idx, noise = draw_ae_batch(len(data), cfg.batch, model.latent_shape, cfg.seed, step)
            loss, part = autoencoder_loss(model, data_dev[idx.to(dev)], noise.to(dev),
                                          kl_weight=cfg.kl_weight, recon=cfg.recon)
            check_loss(loss, step, checkpoint, None)
            optimiser_step(loss, model, opt, ema, cfg.grad_clip)
            step += 1
            parts.append({"loss": loss.item(), **part})
            bar.update(1)
            if step % cfg.log_every == 0 or step == end:
                now = time.time()
                mean = {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}
                ips = (step - n_last) * cfg.batch / max(now - t_last, 1e-9)
                bar.set_postfix(rec=f"{mean['rec']:.4f}", img_s=f"{ips:.0f}")
                append_log(log_path, {"step": step, **mean, "lr": learning_rate(cfg, step - 1),
                                      "images_per_s": ips, "time": now})
                parts, t_last, n_last = [], now, step
            if end_of_step(step, end, cfg.ckpt_every, stop["stop"], checkpoint, bar, ckpt_path):
                break
    bar.close()
    return ckpt_path


# ------------------------------------------------------------------------------- files
def trained_on(dataset: str, train_images: int) -> dict[str, Any]:
    """A card's ``trained_on`` (``"DATASET:train"``, ``"DATASET:train[:N]"`` for the first N
    images) and ``train_images`` (N; 0: all), as :func:`diffinv.learn.trainer.export_prior` writes
    them; a latent run's ``DATASET@latent:SHA12`` label (:func:`latent_training_data`) names
    DATASET (the card's ``latent`` entry names the autoencoder)."""
    n = int(train_images or 0)
    return {"trained_on": f"{dataset.split('@latent:')[0]}:train" + (f"[:{n}]" if n else ""),
            "train_images": n}


def export_autoencoder(ckpt: str | Path, out_dir: str | Path, name: str, *,
                       use_ema: bool = True) -> Path:
    """``NAME.safetensors`` (EMA weights) + ``NAME.json`` (config, ``scale_factor``, SHA-256)."""
    from safetensors.torch import save_file

    from diffinv.assets import sha256_file

    check_export_name(name)
    state = load_checkpoint(ckpt)
    try:
        cfg = json.loads(state["config"])
        weights = state["ema"]["model"] if use_ema else state["model"]
        c, h, w = (int(v) for v in state["image_shape"])
        scale = float(state["scale_factor"])
    except (KeyError, TypeError, ValueError) as e:
        raise IntegrityError(f"{ckpt} is not a {TRAINER} checkpoint ({e})") from e
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    meta = {"name": name, "kind": "autoencoder-kl",
            "autoencoder": dict(cfg["autoencoder"], in_channels=c, image_size=h),
            "image_shape": [c, h, w], "scale_factor": scale, "kl_weight": cfg["kl_weight"],
            "recon": cfg["recon"], **trained_on(cfg["dataset"], cfg.get("train_images", 0)),
            "steps": int(state["step"]), "weights": "ema" if use_ema else "raw",
            "sha256": sha256_file(path), "torch": torch.__version__}
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=2))
    return path


def load_autoencoder(path: str | Path, device: str | torch.device = "cpu",
                     sha256: str | None = None) -> tuple[KLAutoencoder, dict[str, Any]]:
    """(the autoencoder, its card) from an :func:`export_autoencoder` file, SHA-256 checked."""
    from safetensors.torch import load_file

    from diffinv.assets import sha256_file

    path = Path(path)
    card_path = path.with_suffix(".json")
    if not path.is_file() or not card_path.is_file():
        raise DiffinvError(f"autoencoder {path} (with {card_path.name} beside it) not found")
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{card_path} is not valid JSON: {e}") from e
    sha = sha256_file(path)
    for want in (card.get("sha256"), sha256):
        if want and want.lower() != sha:
            raise IntegrityError(f"{path} has SHA-256 {sha[:12]}..., but {want[:12]}... was "
                                 "expected (truncated or replaced weights?)")
    try:
        model = KLAutoencoder(**card["autoencoder"])
        model.load_state_dict(load_file(str(path)), strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise IntegrityError(f"{path}: weights do not match the autoencoder config: {e}") from e
    return model.to(device).eval(), card


@torch.no_grad()
def encode_dataset(model: KLAutoencoder, data: torch.Tensor, scale_factor: float,
                   batch: int = 256) -> torch.Tensor:
    """``scale_factor * mu(x)`` for every image of ``data`` (the latent diffusion's data)."""
    dev = next(model.parameters()).device
    return torch.cat([model.encode(data[i:i + batch].to(dev)).cpu()
                      for i in range(0, len(data), batch)]) * scale_factor


def export_latent_prior(ckpt: str | Path, autoencoder: str | Path, out_dir: str | Path,
                        name: str) -> Path:
    """The latent diffusion of ``ckpt`` (a ``train_prior`` run on :func:`encode_dataset`'s
    latents) as ``NAME.safetensors`` + ``NAME.json``, with the autoencoder export copied beside it
    as ``NAME-autoencoder.safetensors`` (+ card) and named in the card's ``"latent"`` entry."""
    from diffinv.learn.trainer import export_prior

    check_export_name(name)
    _, ae_card = load_autoencoder(autoencoder)
    try:
        cfg = json.loads(load_checkpoint(ckpt)["config"])
        data = trained_on(cfg["dataset"], cfg.get("train_images", 0))
    except (KeyError, TypeError, ValueError) as e:
        raise IntegrityError(f"{ckpt} is not a train_prior checkpoint ({e})") from e
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ae_name = f"{name}-autoencoder"
    src = Path(autoencoder)
    if src.resolve() != (out_dir / f"{ae_name}.safetensors").resolve():
        shutil.copyfile(src, out_dir / f"{ae_name}.safetensors")
        shutil.copyfile(src.with_suffix(".json"), out_dir / f"{ae_name}.json")
    extra = {"latent": {"autoencoder": f"{ae_name}.safetensors",
                        "autoencoder_sha256": ae_card["sha256"],
                        "scale_factor": ae_card["scale_factor"],
                        "image_shape": ae_card["image_shape"]},
             "domain": ae_card.get("trained_on", name).split(":")[0], **data}
    return export_prior(ckpt, out_dir, name, extra=extra)


def wrap_latent(latent: Any, meta: dict[str, Any], path: Path,
                device: str | torch.device) -> Any:
    """The :class:`~diffinv.latent.prior.LatentPrior` of a latent export: ``latent`` is the
    diffusion on latents that the zoo built from ``path``; ``meta["latent"]`` names the
    autoencoder file beside it."""
    from diffinv.latent.prior import LatentPrior

    info = meta["latent"]
    if not isinstance(info, dict) or "autoencoder" not in info:
        raise IntegrityError(f"{path.with_suffix('.json')}: its 'latent' entry names no "
                             "autoencoder")
    ae_path = path.parent / str(info["autoencoder"])
    if ae_path.name != str(info["autoencoder"]):
        raise IntegrityError(f"{path}: the autoencoder must be a file beside it, got "
                             f"{info['autoencoder']!r}")
    ae, card = load_autoencoder(ae_path, device, info.get("autoencoder_sha256"))
    return LatentPrior(ae, latent, scale_factor=float(info.get("scale_factor",
                                                              card["scale_factor"])),
                       name=latent.name, sha256=latent.sha256, domain=latent.domain,
                       info={"autoencoder": ae_path.name})


def latent_training_data(autoencoder: str | Path, dataset: str, objective: str = "eps",
                         train_images: int = 0) -> tuple[str, torch.Tensor]:
    """(the run's data-set label, the scaled latents of ``dataset``'s train split: the first
    ``train_images`` only, when > 0) for ``train-prior --latent``. The label
    ``DATASET@latent:SHA12`` names the autoencoder, so a run folder of another autoencoder (or of
    pixels) is not resumed."""
    from diffinv.data import load_split

    if objective != "eps":
        raise DiffinvError("--latent trains an eps-prediction latent diffusion; latent flow "
                           "matching is not supported")
    ae, card = load_autoencoder(autoencoder)
    data = load_split(dataset, "train").images
    if train_images:  # train_prior keeps the first N: encode only those
        data = data[:train_images]
    if tuple(data.shape[1:]) != tuple(ae.image_shape):
        raise DiffinvError(f"autoencoder {autoencoder} models {ae.image_shape} images, the "
                           f"{dataset} train split holds {tuple(data.shape[1:])} images")
    return f"{dataset}@latent:{card['sha256'][:12]}", encode_dataset(ae, data,
                                                                     card["scale_factor"])
