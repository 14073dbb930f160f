r"""Training of the supervised blind-deblurring UNet (``diffinv train-deblur-net``).

**Data.** Pairs ``(y, x)`` made on the fly from a data set's *train* split: for each sample, one of
the four blind families (``blind-motion-blur``, ``blind-gaussian-blur``, ``blind-rotation-blur``,
``blind-zoom-blur``, registry defaults: 9x9 circular kernels, ``std ~ U(1, 2)``,
``theta ~ U(5, 25)`` deg, ``z ~ U(1.1, 1.4)``) drawn uniformly, its hidden parameters drawn by the
family's own ``draw_params`` from a per-sample generator, then Gaussian noise of standard deviation
``sigma ~ U(0, sigma_max)`` (``sigma_max = 0.05`` in [-1, 1] units):

.. math:: y = A_{f, \theta}(x) + \sigma n, \qquad n \sim N(0, I).

**Loss.** The mean absolute error ``E |f_\theta(y) - x|`` (L1: MPRNet's Charbonnier loss with a
vanishing epsilon, Stripformer's spatial loss; DeblurGANv2's perceptual and adversarial terms are
left out).

**Determinism and resumption.** Everything random in step ``k`` (image indices, families, noise
levels, per-sample generators for the operator parameters and the noise) comes from a generator
seeded by ``image_seed(seed, k)``: a resumed run replays exactly the batches an uninterrupted run
would have seen. Optimiser AdamW, linear warm-up then cosine decay to 10%
(:func:`diffinv.learn.trainer.learning_rate`), gradient clipping, EMA of the weights, atomic
checkpoints every ``ckpt_every`` steps and on SIGTERM/SIGINT, a JSON-lines log.

**Validation.** :func:`validate` measures the PSNR of the network's output on the first ``n``
images of the *valid* split, per family, with measurements made by
:func:`diffinv.physics.measure` (seed 0, Gaussian noise 0.02 by default), the same route as the
benchmarks.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from diffinv.checks import check_count
from diffinv.diffusion.prior import PRECISIONS, autocast
from diffinv.errors import DiffinvError
from diffinv.learn.checkpoint import check_export_name, load_checkpoint, save_atomic
from diffinv.learn.deblur_net import DeblurUNet
from diffinv.learn.ema import EMA
from diffinv.learn.trainer import (
    OptimConfig,
    append_log,
    check_loss,
    check_run_folder,
    diverged,
    end_of_step,
    finite_state,
    learning_rate,
    optimiser_step,
    resume,
    start_log,
    stop_requests,
)
from diffinv.seeding import image_seed

CHECKPOINT = "checkpoint.pt"
#: the default training families (those of the shipped deblurring UNet); any blind- operator works
BLIND_FAMILIES = ("blind-motion-blur", "blind-gaussian-blur", "blind-rotation-blur",
                  "blind-zoom-blur")


@dataclass
class DeblurTrainConfig(OptimConfig):
    # OptimConfig's fields come first; these defaults replace its own
    out: str = "runs/deblur-fashion32"
    steps: int = 8000
    batch: int = 32
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    sigma_max: float = 0.05
    families: list[str] = field(default_factory=lambda: list(BLIND_FAMILIES))
    seed: int = 0
    ckpt_every: int = 200
    log_every: int = 25
    precision: str = "fp32"
    net: dict = field(default_factory=lambda: dict(base=32, mults=[1, 2, 4], blocks=2))

    def validate(self) -> None:
        self.check_optimiser(fraction=("ema_decay", "sigma_max"))
        mults = self.net.get("mults", [1])  # absent keys take DeblurUNet's defaults
        ints = [self.net.get("base", 1), self.net.get("blocks", 1), *mults]
        if not mults or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in ints):
            raise DiffinvError(f"net base, mults (one or more) and blocks must be integers >= 1, "
                               f"got {self.net}")
        self.check_schedule()
        if self.precision not in PRECISIONS:
            raise DiffinvError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not self.families:
            raise DiffinvError("families must name at least one blind family")
        from diffinv.physics.registry import OPERATORS

        bad = [f for f in self.families if f not in OPERATORS or not f.startswith("blind-")]
        if bad:
            known = sorted(f for f in OPERATORS if f.startswith("blind-"))
            raise DiffinvError(f"not blind families: {bad}; known: {known} (default: "
                               f"{list(BLIND_FAMILIES)})")


def make_pairs(x: Tensor, ops: list[nn.Module], seed: int, step: int, sigma_max: float
               ) -> tuple[Tensor, dict[str, Tensor]]:
    """Blurred noisy versions of ``x`` (B, C, H, W) for step ``step``; see the module docstring.

    Returns ``(y, info)`` with ``info["family"]`` (B,) (index into ``ops``) and ``info["sigma"]``.
    """
    B = x.shape[0]
    g = torch.Generator().manual_seed(image_seed(seed, step) ^ 0x5A5A)
    fam = torch.randint(len(ops), (B,), generator=g)
    sigma = torch.rand(B, generator=g, dtype=torch.float64) * sigma_max
    seeds = torch.randint(0, 2 ** 62, (B, 2), generator=g).tolist()
    op_gens = [torch.Generator().manual_seed(int(s[0])) for s in seeds]
    noise_gens = [torch.Generator().manual_seed(int(s[1])) for s in seeds]
    y = torch.empty_like(x)
    with torch.no_grad():
        for f, op in enumerate(ops):
            sel = (fam == f).nonzero().flatten().tolist()
            if not sel:
                continue
            params = op.draw_params([op_gens[i] for i in sel], x.shape[1:], device=x.device,
                                    dtype=x.dtype)
            y[sel] = op(x[sel], **params)
        n = torch.stack([torch.randn(x.shape[1:], generator=ng) for ng in noise_gens])
        y = y + sigma.to(x.dtype).reshape(B, 1, 1, 1).to(x.device) * n.to(x)
    return y, {"family": fam, "sigma": sigma}


def _ops(families: list[str]) -> list[nn.Module]:
    from diffinv.physics.registry import make_operator

    return [make_operator(f) for f in families]


def train_deblur_net(cfg: DeblurTrainConfig, *, data: Tensor | None = None,
                     device: str | None = None, progress: bool = True,
                     max_steps_this_run: int | None = None) -> Path:
    """Train (or resume, when ``cfg.out`` holds a checkpoint) the network; returns the checkpoint.

    ``data`` (N, C, H, W) in [-1, 1] overrides ``cfg.dataset``'s train split (tests).
    """
    from tqdm.auto import tqdm

    from diffinv.learn.trainer import pick_device

    cfg.validate()
    if max_steps_this_run is not None:
        check_count(max_steps_this_run, "max_steps_this_run")
    dev = pick_device(device)
    state = check_run_folder(cfg.out, "train-deblur-net", ("model", "opt", "ema", "step"),
                             ("net", "dataset"), map_location=dev)
    if data is None:
        from diffinv.data import load_split

        data = load_split(cfg.dataset, "train").images
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    image_shape = tuple(int(s) for s in data.shape[1:])
    torch.manual_seed(cfg.seed)  # initial weights
    model = DeblurUNet(in_channels=image_shape[0], image_size=image_shape[-1], **cfg.net).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema_decay)
    step, wall, saved_step = 0, 0.0, None
    if state is not None:
        saved = json.loads(state["config"])
        same = ("net", "dataset", "families", "sigma_max", "seed", "batch")
        if any(saved.get(k) != asdict(cfg)[k] for k in same):
            raise DiffinvError(f"{ckpt_path} was trained with another network, data set, "
                               f"families, noise, seed or batch ({same}); use another --out")
        step, wall = resume(state, model, opt, ema), float(state.get("wall_s", 0.0))
        saved_step = step
        del state
    ops = [op.to(dev) for op in _ops(cfg.families)]
    data_dev = data.to(dev)
    log_path = start_log(out, cfg, step, threads=torch.get_num_threads())
    end = cfg.steps if max_steps_this_run is None else min(cfg.steps, step + max_steps_this_run)
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="train deblur-net")
    t_last, n_last, losses = time.time(), step, []
    t_run = time.time()

    def checkpoint() -> None:
        nonlocal saved_step
        if not finite_state(model, ema.model):
            raise diverged(step, ckpt_path, saved_step)
        save_atomic({"model": model.state_dict(), "opt": opt.state_dict(),
                     "ema": ema.state_dict(), "step": step, "config": json.dumps(asdict(cfg)),
                     "image_shape": torch.tensor(image_shape),
                     "wall_s": wall + time.time() - t_run}, ckpt_path)
        saved_step = step

    with stop_requests() as stop:
        while step < end:
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step)
            g = torch.Generator().manual_seed(image_seed(cfg.seed, step))
            idx = torch.randint(len(data_dev), (cfg.batch,), generator=g)
            x = data_dev[idx.to(dev)]
            y, _ = make_pairs(x, ops, cfg.seed, step, cfg.sigma_max)
            with autocast(cfg.precision, dev):
                pred = model(y)
            loss = (pred.float() - x).abs().mean()
            check_loss(loss, step, checkpoint, ckpt_path)
            optimiser_step(loss, model, opt, ema, cfg.grad_clip)
            step += 1
            losses.append(loss.item())
            bar.update(1)
            if step % cfg.log_every == 0 or step == end:
                now = time.time()
                sps = (now - t_last) / max(step - n_last, 1)
                mean = sum(losses) / len(losses)
                bar.set_postfix(l1=f"{mean:.4f}", s_step=f"{sps:.2f}")
                append_log(log_path, {"step": step, "l1": mean, "lr": learning_rate(cfg, step - 1),
                                      "s_per_step": sps, "time": now})
                t_last, n_last, losses = now, step, []
            if end_of_step(step, end, cfg.ckpt_every, stop["stop"], checkpoint, bar, ckpt_path):
                break
    bar.close()
    return ckpt_path


def psnr(x: Tensor, ref: Tensor) -> Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2), ``x`` clipped to [-1, 1]."""
    mse = (x.clamp(-1, 1) - ref).square().flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


@torch.no_grad()
def validate(model: nn.Module, dataset: str = "fashion32", n: int = 256, seed: int = 0,
             noise: str = "gaussian:0.02", families: tuple[str, ...] = BLIND_FAMILIES,
             batch: int = 64) -> dict[str, dict[str, float]]:
    """Per family: mean PSNR (dB) of the network's output and of ``y`` itself on the first ``n``
    images of ``dataset``'s *valid* split (measurements by :func:`diffinv.physics.measure`)."""
    from diffinv.data import load_split
    from diffinv.physics.measurement import measure

    x = load_split(dataset, "valid").images[:n]
    model.eval()
    res = {}
    for fam in families:
        out, inp = [], []
        for s in range(0, len(x), batch):
            xb = x[s:s + batch]
            m = measure(xb, fam, noise, seed, indices=list(range(s, s + len(xb))))
            out.append(psnr(model(m.y), xb))
            inp.append(psnr(m.y, xb))
        res[fam] = {"psnr": float(torch.cat(out).mean()), "psnr_y": float(torch.cat(inp).mean())}
    return res


def export_deblur_net(ckpt: str | Path, out_dir: str | Path, name: str, *, use_ema: bool = True,
                      validation_images: int = 256, extra: dict | None = None) -> Path:
    """Write ``NAME.safetensors`` (EMA weights) and the card ``NAME.json`` (config, steps, wall
    time, machine, sha256, validation PSNR per family)."""
    from safetensors.torch import save_file

    from diffinv.assets import sha256_file

    check_export_name(name)
    state = load_checkpoint(ckpt)
    cfg = json.loads(state["config"])
    c, h, w = (int(v) for v in state["image_shape"])
    weights = state["ema"]["model"] if use_ema else state["model"]
    model = DeblurUNet(in_channels=c, image_size=h, **cfg["net"])
    model.load_state_dict(weights)
    t0 = time.time()
    val = validate(model, cfg["dataset"], n=validation_images)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    card = {
        "name": name,
        "what": "supervised UNet for blind deblurring, trained here (a stand-in for "
                "DeblurGANv2 / MPRNet / Stripformer, whose weights are not available)",
        "network": "DeblurUNet",
        "net": dict(cfg["net"], in_channels=c, image_size=h),
        "image_shape": [c, h, w],
        "trained_on": f"{cfg['dataset']}:train",
        "families": cfg["families"],
        "noise": f"gaussian, sigma ~ U(0, {cfg['sigma_max']}) in [-1, 1] units",
        "loss": "L1",
        "steps": int(state["step"]),
        "planned_steps": cfg["steps"],
        "batch": cfg["batch"],
        "lr": cfg["lr"],
        "lr_schedule": cfg["lr_schedule"],
        "ema_decay": cfg["ema_decay"],
        "precision": cfg["precision"],
        "weights": "ema" if use_ema else "raw",
        "train_wall_s": round(float(state.get("wall_s", 0.0)), 1),
        "validation": {"split": f"{cfg['dataset']}:valid", "images": validation_images,
                       "seed": 0, "noise": "gaussian:0.02", "psnr_db": val,
                       "seconds": round(time.time() - t0, 1)},
        "sha256": sha256_file(path),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        **(extra or {}),
    }
    (out_dir / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    return path
