r"""Training DAVI's one-step generator for one task (``diffinv train-davi``).

Lee, Park, Kong, Kim, "Diffusion Prior-Based Amortized Variational Inference for Noisy Inverse
Problems", ECCV 2024; official code github.com/mlvlab/DAVI (``cm/train_util.py``), summarised in
methods.md section 5. Three networks with the prior's architecture: the frozen teacher
``eps_theta`` (the prior), the generator ``I_phi`` and the implicit score ``eps_psi``, both
initialised from the teacher's weights. One iteration alternates (official ``run_step``):

* **phase A** (``student_step``): ``x_hat = I_phi(x_a, a)`` without gradient, then one AdamW step
  of ``eps_psi`` on the denoising loss of :func:`~diffinv.learn.davi_losses.dsm_loss`
  (and, with ``gan``, one step of the PatchGAN);
* **phase B** (``generator_step``): ``x_hat = I_phi(x_a, a)`` with gradient, one AdamW step of
  ``I_phi`` on ``L_IKL + weight_con L_con + reg_coeff L_gt (+ lambda_adv L_G)``, then the EMA.

Inputs: ``x0`` from the prior domain's **train** split; the measurement ``y = A x0 + sigma n`` is
synthesised on the fly (``sigma = 0.05`` in [-1, 1] units) with the ``physics`` operator of the
task at its DESIGN.md 32x32 defaults (circular boundaries): one fixed operator per task, except
``inpaint-box`` whose box is drawn **per sample** (the official code draws one box per run; a
per-sample box makes the generator usable on any box position, which ``diffinv measure`` draws
per image). ``x_a`` is the PPB sample of :mod:`diffinv.learn.davi_ppb` with ``a ~ Beta(3, 1)``.

Options for the official clean-image terms: ``bridge`` (PPB between ``x0`` and ``y'``; off: always
``a = T - 1`` with ``x0`` replaced by ``y'``, the inference input), ``reg_coeff`` (``L_gt``; 0 turns
it off), ``gan`` (PatchGAN with the adaptive weight). ``kl_schedule`` selects the KL branch's
schedule (:mod:`diffinv.learn.davi_losses`; default the teacher's linear one, "i2sb" = official).

Scaled to 32x32 and a CPU budget (deviations): batch 8 per step as the official FFHQ runs, but
only thousands of steps instead of 100 epochs of 49k images; EMA decay 0.999 every step (official
0.9999 every 5 steps, a 50k-step horizon longer than our runs); AdamW with weight decay 0 (the
official optimiser settings beyond the learning rates are not in methods.md); fp32.

Determinism and resumption as :mod:`diffinv.learn.trainer`: every random draw of step ``k``
comes from a generator seeded by ``image_seed(seed, k)`` (global batch), rank ``r`` of ``W`` takes
its slice, a resumed run replays the batches of an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffinv.checks import check_count
from diffinv.errors import DiffinvError, NonFiniteError, UnknownNameError
from diffinv.learn.checkpoint import check_export_name, load_checkpoint, save_atomic
from diffinv.learn.davi_losses import (
    KL_SCHEDULES,
    consistency_loss,
    denoise,
    dsm_loss,
    gt_loss,
    ikl_loss,
    kl_schedule,
    q_sample,
    snr_weight,
)
from diffinv.learn.davi_ppb import LIFTS, OneStepGenerator, PPBSchedule, lift_measurement
from diffinv.learn.ema import EMA
from diffinv.seeding import image_seed

CHECKPOINT = "checkpoint.pt"

#: CLI task name -> (physics operator, its settings)
TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "gaussian-blur": ("gaussian-blur", {}),
    "sr4": ("sr-avgpool", {"factor": 4}),
    "inpaint-box": ("inpaint-box", {}),
}
#: official FFHQ settings per task (training.sh): t_ikl, weight_con, reg_coeff
TASK_DEFAULTS: dict[str, dict[str, float]] = {
    "gaussian-blur": {"t_ikl": 400, "weight_con": 0.5, "reg_coeff": 0.25},
    "sr4": {"t_ikl": 1000, "weight_con": 0.1, "reg_coeff": 1.0},
    "inpaint-box": {"t_ikl": 1000, "weight_con": 0.5, "reg_coeff": 1.0},
}


@dataclass
class DaviConfig:
    prior: str = "fashion32"
    task: str = "gaussian-blur"
    out: str = "runs/davi"
    steps: int = 2000
    batch: int = 8
    lr: float = 1e-4  # generator
    s_lr: float = 1e-4  # implicit score
    d_lr: float = 1e-4  # discriminator
    ema_decay: float = 0.999
    t_ikl: int | None = None  # None: the task default
    weight_con: float | None = None
    reg_coeff: float | None = None
    perturb_h: float = 0.1
    sigma: float = 0.05
    kl_schedule: str = "linear"
    bridge: bool = True
    gan: bool = False
    lift: str = "bilinear"
    seed: int = 0
    ckpt_every: int = 100
    log_every: int = 10
    operator_settings: dict = field(default_factory=dict)

    def resolved(self) -> DaviConfig:
        """A copy with the task defaults filled in, validated."""
        if self.task not in TASKS:
            raise UnknownNameError("DAVI task", self.task, list(TASKS))
        c = copy.deepcopy(self)
        for k, v in TASK_DEFAULTS[self.task].items():
            if getattr(c, k) is None:
                setattr(c, k, type(v)(v) if k != "t_ikl" else int(v))
        if c.kl_schedule not in KL_SCHEDULES:
            raise UnknownNameError("DAVI KL schedule", c.kl_schedule, KL_SCHEDULES)
        if c.lift not in LIFTS:
            raise UnknownNameError("DAVI measurement lift", c.lift, LIFTS)
        if c.steps < 1 or c.batch < 1:
            raise DiffinvError("steps and batch must be positive")
        from diffinv.learn.trainer import check_numbers

        check_numbers(c, positive=("lr", "s_lr", "d_lr"), fraction=("ema_decay",),
                      non_negative=("weight_con", "reg_coeff", "perturb_h", "sigma"))
        if not 1 <= int(c.t_ikl) <= 1000:
            raise DiffinvError(f"t_ikl must lie in 1..T, got {c.t_ikl}")
        return c

    def operator(self) -> tuple[str, Any]:
        from diffinv.physics import make_operator

        name, fixed = TASKS[self.task]
        return name, make_operator(name, **{**fixed, **self.operator_settings})


@dataclass
class Batch:
    """Everything a step draws (global batch, already sliced for this rank)."""

    x0: Tensor
    y: Tensor
    y_img: Tensor
    params: dict[str, Tensor]
    a: tuple[Tensor, Tensor]  # phase A, phase B bridge times
    eps_h: tuple[Tensor, Tensor]
    t: tuple[Tensor, Tensor]
    noise: tuple[Tensor, Tensor]


class Davi:
    """The three networks, optimisers and EMA of a DAVI run, with its two alternating steps."""

    def __init__(self, cfg: DaviConfig, prior: Any, device: torch.device):
        self.cfg = cfg.resolved()
        self.device = device
        self.op_name, op = self.cfg.operator()
        self.operator = op.to(device)
        self.teacher = prior.network.to(device).eval().requires_grad_(False)
        self.teacher_schedule = prior.schedule
        self.kl = kl_schedule(self.cfg.kl_schedule, prior.schedule)
        self.ppb = PPBSchedule(prior.num_timesteps)
        self.image_shape = tuple(prior.image_shape)
        self.generator = OneStepGenerator(copy.deepcopy(self.teacher), self.ppb)
        self.student = copy.deepcopy(self.teacher)
        for m in (self.generator, self.student):
            m.train().requires_grad_(True)
        self.opt_g = torch.optim.AdamW(self.generator.parameters(), lr=self.cfg.lr, weight_decay=0.0)
        self.opt_s = torch.optim.AdamW(self.student.parameters(), lr=self.cfg.s_lr, weight_decay=0.0)
        self.ema = EMA(self.generator, self.cfg.ema_decay)
        self.disc = self.opt_d = None
        if self.cfg.gan:
            from diffinv.learn.davi_patchgan import PatchDiscriminator

            torch.manual_seed(self.cfg.seed)
            # official 3 layers (70 px receptive field, already wider than a 32x32 image);
            # fewer on smaller images, where 3 stride-2 layers leave no 4x4 patch
            size = min(self.image_shape[-2:])
            layers = max(1, min(3, size.bit_length() - 3))
            self.disc = PatchDiscriminator(self.image_shape[0], n_layers=layers).to(device)
            self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=self.cfg.d_lr,
                                           weight_decay=0.0)
        # what phase A/B call with gradients (DDP wrappers under torchrun)
        self.gen_train: nn.Module = self.generator
        self.student_train: nn.Module = self.student
        self.disc_train: nn.Module | None = self.disc

    # -- data -------------------------------------------------------------------------------
    def draw(self, data: Tensor, step: int, rows: slice | None = None) -> Batch:
        """The global batch of ``step`` from ``(seed, step)`` alone; ``rows`` selects this rank's."""
        cfg, B = self.cfg, self.cfg.batch
        g = torch.Generator().manual_seed(image_seed(cfg.seed, step))
        idx = torch.randint(len(data), (B,), generator=g)
        x0 = data[idx].float()
        sample_gens = [torch.Generator().manual_seed(int(s))
                       for s in torch.randint(2 ** 62, (B,), generator=g)]
        params = self.operator.draw_params(sample_gens, self.image_shape)
        with torch.no_grad():
            ax = self.operator(x0, **params)
        y = ax + cfg.sigma * torch.randn(ax.shape, generator=g)
        y_img = lift_measurement(self.op_name, self.operator, y, params, self.image_shape, cfg.lift)
        T = self.ppb.T

        def phase() -> tuple[Tensor, Tensor, Tensor, Tensor]:
            a = (self.ppb.draw_a(B, g) if cfg.bridge else torch.full((B,), T - 1, dtype=torch.long))
            eps_h = torch.randn(x0.shape, generator=g)
            t = torch.randint(int(cfg.t_ikl), (B,), generator=g)
            return a, eps_h, t, torch.randn(x0.shape, generator=g)

        pa, pb = phase(), phase()
        rows = rows or slice(0, B)
        dev = self.device

        def cut(v: Tensor) -> Tensor:
            return v[rows].to(dev)

        return Batch(cut(x0), cut(y), cut(y_img),
                     {k: (cut(v) if v.shape[0] == B else v.to(dev)) for k, v in params.items()},
                     (cut(pa[0]), cut(pb[0])), (cut(pa[1]), cut(pb[1])),
                     (cut(pa[2]), cut(pb[2])), (cut(pa[3]), cut(pb[3])))

    def bridge_input(self, b: Batch, phase: int) -> Tensor:
        """PPB sample ``x_a`` (bridge from ``x0``; without ``bridge``, ``y'`` with itself)."""
        start = b.x0 if self.cfg.bridge else b.y_img
        return self.ppb.sample(start, b.y_img, b.a[phase], self.cfg.perturb_h, b.eps_h[phase])

    # -- the two alternating steps ----------------------------------------------------------
    def student_step(self, b: Batch) -> dict[str, float]:
        """Phase A: one step of ``eps_psi`` (and of the discriminator); ``I_phi`` frozen."""
        with torch.no_grad():
            x_hat = self.generator(self.bridge_input(b, 0), b.a[0])
        loss = dsm_loss(self.student_train, self.kl, x_hat, b.t[0], b.noise[0])
        self.opt_s.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_s.step()
        out = {"dsm": loss.item()}
        if self.disc_train is not None:
            from diffinv.learn.davi_patchgan import discriminator_loss

            ld = discriminator_loss(self.disc_train, b.x0, x_hat)
            self.opt_d.zero_grad(set_to_none=True)
            ld.backward()
            self.opt_d.step()
            out["disc"] = ld.item()
        return out

    def generator_losses(self, b: Batch) -> tuple[Tensor, dict[str, float]]:
        """Phase B's objective ``L_IKL + weight_con L_con + reg_coeff L_gt (+ lambda L_G)``."""
        cfg = self.cfg
        x_hat = self.gen_train(self.bridge_input(b, 1), b.a[1])
        t = b.t[1]
        x_t = q_sample(self.kl, x_hat.detach(), t, b.noise[1])
        with torch.no_grad():
            d_teacher = denoise(self.teacher, self.kl, x_t, t)
            d_student = denoise(self.student, self.kl, x_t, t)
        l_ikl = ikl_loss(x_hat, d_student, d_teacher, snr_weight(self.kl, t, x_hat))
        l_con = consistency_loss(self.op_name, self.operator, x_hat, b.y, b.params)
        loss = l_ikl + cfg.weight_con * l_con
        logs = {"ikl": l_ikl.item(), "con": l_con.item()}
        l_gt = None
        if cfg.reg_coeff:
            l_gt = gt_loss(self.op_name, self.operator, x_hat, b.x0, b.params)
            loss = loss + cfg.reg_coeff * l_gt
            logs["gt"] = l_gt.item()
        if self.disc_train is not None:
            from diffinv.learn.davi_patchgan import adaptive_weight, generator_gan_loss, last_layer

            l_g = generator_gan_loss(self.disc_train, b.x0, x_hat)
            rec = l_gt if l_gt is not None else l_con
            lam = adaptive_weight(rec, l_g, last_layer(self.generator.net))
            loss = loss + lam * l_g
            logs.update(gan=l_g.item(), gan_weight=lam.item())
        logs["mse_x0"] = (x_hat.detach() - b.x0).pow(2).mean().item()
        return loss, logs

    def generator_step(self, b: Batch) -> dict[str, float]:
        """Phase B: one step of ``I_phi`` with ``eps_psi`` (and the teacher) frozen; EMA update."""
        if self.disc is not None:  # the discriminator is frozen in phase B
            self.disc.requires_grad_(False)
        try:
            loss, logs = self.generator_losses(b)
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
        finally:
            if self.disc is not None:
                self.disc.requires_grad_(True)
        self.opt_g.step()
        self.student.zero_grad(set_to_none=True)  # no stale gradients reach the next phase A
        self.ema.update(self.generator)
        logs["loss_g"] = loss.item()
        return logs

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        s = {"generator": self.generator.net.state_dict(), "student": self.student.state_dict(),
             "opt_g": self.opt_g.state_dict(), "opt_s": self.opt_s.state_dict(),
             "ema": {"model": self.ema.model.net.state_dict(), "updates": self.ema.updates,
                     "decay": self.ema.decay}}
        if self.disc is not None:
            s.update(disc=self.disc.state_dict(), opt_d=self.opt_d.state_dict())
        return s

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.generator.net.load_state_dict(s["generator"])
        self.student.load_state_dict(s["student"])
        self.opt_g.load_state_dict(s["opt_g"])
        self.opt_s.load_state_dict(s["opt_s"])
        self.ema.model.net.load_state_dict(s["ema"]["model"])
        self.ema.updates, self.ema.decay = int(s["ema"]["updates"]), float(s["ema"]["decay"])
        if self.disc is not None:
            if "disc" not in s:
                raise DiffinvError("the checkpoint was trained without --gan; use another --out")
            self.disc.load_state_dict(s["disc"])
            self.opt_d.load_state_dict(s["opt_d"])


#: config keys a resumed run must share with its checkpoint
_FIXED = ("prior", "task", "batch", "t_ikl", "weight_con", "reg_coeff", "perturb_h", "sigma",
          "kl_schedule", "bridge", "gan", "lift", "seed", "operator_settings")


def train_davi(cfg: DaviConfig, *, prior: Any = None, data: Tensor | None = None,
               device: str | None = None, progress: bool = True,
               max_steps_this_run: int | None = None) -> Path:
    """Train (or resume) a DAVI generator; returns the checkpoint path.

    ``prior`` (a :class:`~diffinv.diffusion.DiffusionPrior`) and ``data`` (N, C, H, W) in [-1, 1]
    override ``cfg.prior`` and its domain's train split (used by tests).
    """
    from tqdm.auto import tqdm

    from diffinv.learn.trainer import (
        LOG,
        _agreed,
        _Dist,
        append_log,
        check_run_folder,
        diverged,
        end_of_step,
        finite_state,
        pick_device,
        start_log,
        stop_requests,
    )

    cfg = cfg.resolved()
    if max_steps_this_run is not None:
        check_count(max_steps_this_run, "max_steps_this_run")
    ddp = _Dist()
    dev = pick_device(device)
    state = check_run_folder(cfg.out, "train-davi", ("davi", "step"), ("prior", "task"),
                             map_location=dev)
    if prior is None:
        from diffinv.diffusion.zoo import load_prior

        prior = load_prior(cfg.prior, device=dev)
    if data is None:
        from diffinv.data import load_split

        data = load_split(prior.domain, "train").images
    if cfg.batch % ddp.world:
        raise DiffinvError(f"global batch {cfg.batch} is not divisible by {ddp.world} ranks")
    local = cfg.batch // ddp.world
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    run = Davi(cfg, prior, dev)
    step, seconds, saved_step = 0, 0.0, None
    if state is not None:
        saved = json.loads(state["config"])
        diff = [k for k in _FIXED if saved.get(k) != asdict(run.cfg).get(k)]
        if diff or state.get("prior_sha256") != prior.sha256:
            raise DiffinvError(f"{ckpt_path} was trained with other settings "
                               f"({', '.join(diff) or 'prior weights'}); use another --out folder")
        run.load_state_dict(state["davi"])
        step, seconds = int(state["step"]), float(state.get("seconds", 0.0))
        saved_step = step
        del state
    if ddp.active:
        ids = [dev.index] if dev.type == "cuda" else None
        run.gen_train = nn.parallel.DistributedDataParallel(run.generator, device_ids=ids)
        run.student_train = nn.parallel.DistributedDataParallel(run.student, device_ids=ids)
        if run.disc is not None:
            run.disc = nn.SyncBatchNorm.convert_sync_batchnorm(run.disc)
            run.disc_train = nn.parallel.DistributedDataParallel(run.disc, device_ids=ids)
    log_path = out / LOG
    if ddp.main:
        start_log(out, run.cfg, step)
    end = cfg.steps if max_steps_this_run is None else min(cfg.steps, step + max_steps_this_run)
    bar = tqdm(total=cfg.steps, initial=step, disable=not (progress and ddp.main),
               desc=f"train-davi {cfg.task}")
    acc: dict[str, list[float]] = {}
    t_last = time.time()

    def checkpoint() -> None:
        nonlocal saved_step
        nets = [run.generator, run.student, run.ema.model]
        nets += [run.disc] if run.disc is not None else []
        if not finite_state(*nets):
            raise diverged(step, ckpt_path, saved_step)
        if ddp.main:
            save_atomic({"davi": run.state_dict(), "step": step, "seconds": seconds,
                         "config": json.dumps(asdict(run.cfg)), "prior_sha256": prior.sha256,
                         "prior_name": prior.name, "operator": run.op_name,
                         "operator_config": json.dumps(run.operator.config()),
                         "device": str(dev), "world_size": ddp.world,
                         "threads": torch.get_num_threads(),
                         "image_shape": torch.tensor(run.image_shape)}, ckpt_path)
        saved_step = step

    with stop_requests() as stop:
        while step < end:
            t0 = time.time()
            b = run.draw(data, step, slice(ddp.rank * local, (ddp.rank + 1) * local))
            logs = {**run.student_step(b), **run.generator_step(b)}
            if not all(v == v and abs(v) != float("inf") for v in logs.values()):
                checkpoint()  # raises when the weights are to blame: those are not saved
                raise NonFiniteError(f"a DAVI loss became non-finite at step {step}: {logs}; the "
                                     f"(finite) state is saved in {ckpt_path} (step {step})")
            step += 1
            seconds += time.time() - t0
            for k, v in logs.items():
                acc.setdefault(k, []).append(v)
            bar.update(1)
            if step % cfg.log_every == 0 or step == end:
                now = time.time()
                means = {k: sum(v) / len(v) for k, v in acc.items()}
                bar.set_postfix(con=f"{means['con']:.4f}", mse=f"{means['mse_x0']:.4f}")
                if ddp.main:
                    append_log(log_path, {"step": step, **means, "s_per_step":
                                          (now - t_last) / len(acc["con"]), "time": now})
                acc, t_last = {}, now
            if end_of_step(step, end, cfg.ckpt_every, _agreed(stop["stop"], ddp, dev),
                           checkpoint, bar, ckpt_path):
                break
    bar.close()
    if ddp.active:
        import torch.distributed as dist

        dist.barrier()
    return ckpt_path


def loss_summary(log_path: Path, window: int = 10) -> dict[str, Any]:
    """First and last ``window`` logged means of each loss (the card's loss-curve summary)."""
    rows = [r for r in map(json.loads, log_path.read_text().splitlines()) if "event" not in r]
    if not rows:
        return {}
    keys = [k for k in rows[0] if k not in ("step", "time", "s_per_step")]

    def mean(rs: list[dict], k: str) -> float:
        vals = [r[k] for r in rs if k in r]
        return sum(vals) / len(vals) if vals else float("nan")

    head, tail = rows[:window], rows[-window:]
    return {"log_every_rows": len(rows), "first_steps": [head[0]["step"], head[-1]["step"]],
            "last_steps": [tail[0]["step"], tail[-1]["step"]],
            "first": {k: mean(head, k) for k in keys}, "last": {k: mean(tail, k) for k in keys},
            "s_per_step_last": mean(tail, "s_per_step")}


def export_name(prior: str, task: str) -> str:
    """The default export name ``davi-PRIOR-OPERATOR`` of a run of ``task`` with ``prior``; a
    prior given as a file contributes its stem (``davi-toy-gaussian-blur`` for
    ``dir/toy.safetensors``), so the export stays in its folder."""
    if task not in TASKS:
        raise UnknownNameError("DAVI task", task, list(TASKS))
    stem = Path(prior).name.removesuffix(".safetensors")
    return f"davi-{stem}-{TASKS[task][0]}"


def export_davi(ckpt: str | Path, out_dir: str | Path, name: str | None = None, *,
                extra: dict | None = None) -> Path:
    """Write ``NAME.safetensors`` (the EMA generator's network) and ``NAME.json`` (its card);
    the default name is :func:`export_name`'s."""
    from safetensors.torch import save_file

    from diffinv.assets import sha256_file
    from diffinv.machine import machine_info

    if name is not None:
        check_export_name(name)
    ckpt = Path(ckpt)
    state = load_checkpoint(ckpt)
    cfg = json.loads(state["config"])
    name = check_export_name(name or export_name(cfg["prior"], cfg["task"]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.safetensors"
    weights = state["davi"]["ema"]["model"]
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    log = ckpt.parent / "train_log.jsonl"
    card = {
        "name": name, "method": "davi", "weights": "ema generator I_phi (its UNet)",
        "prior": state["prior_name"], "prior_sha256": state["prior_sha256"],
        "task": state["operator"], "operator_config": json.loads(state["operator_config"]),
        "noise": f"gaussian:{cfg['sigma']}", "image_shape": [int(v) for v in state["image_shape"]],
        "perturb_h": cfg["perturb_h"], "lift": cfg["lift"], "inference_a": 999,
        "ppb": {"betas": "i2sb", "symmetric": True, "T": 1000},
        "training": {k: cfg[k] for k in ("batch", "lr", "s_lr", "ema_decay", "t_ikl", "weight_con",
                                         "reg_coeff", "kl_schedule", "bridge", "gan", "seed")},
        "trained_on": "train split of the prior's domain",
        "steps": int(state["step"]), "wall_seconds": round(float(state.get("seconds", 0.0)), 1),
        "loss_summary": loss_summary(log) if log.is_file() else {},
        "sha256": sha256_file(path), "torch": torch.__version__,
        "machine": {**machine_info(str(state.get("device", "cpu"))),
                    "world_size": int(state.get("world_size", 1)),
                    "threads": int(state.get("threads", 1))},  # the training's torch threads
        **(extra or {}),
    }
    (out_dir / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    return path
