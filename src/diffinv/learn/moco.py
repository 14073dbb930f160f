r"""MoCo training of the CL-DPS likelihood encoder (``diffinv train-likelihood``).

For a batch of clean training images ``x_i`` (methods.md 6.2, with its row-alignment bug fixed):

* query ``q_i = f_q(y_i)``, ``y_i`` a random blind measurement of ``x_i``
  (:func:`diffinv.learn.measurements.random_measurements`: motion, Gaussian, rotation or zoom
  blur of random strength plus Gaussian noise);
* ``J`` positive keys ``k_ij = f_k(sqrt(a_ij) x_i + sqrt(1 - a_ij) e_ij)``, ``a_ij ~ U(0, 1)`` (or
  ``U(key_abar_min, 1)``): the same image diffused to random noise levels, through the momentum
  encoder ``f_k`` (no gradient);
* negatives: the queue ``Q`` (K keys of earlier batches, other images).

The loss is InfoNCE (Oord et al. 2018; MoCo, He et al. 2020, eq. 1) with one row per positive::

    L = (1 / (B J)) sum_{i, j} -log  exp(q_i . k_ij / tau) / (exp(q_i . k_ij / tau)
                                                            + sum_{n} exp(q_i . Q_n / tau))

so row ``(i, j)`` holds query ``i``'s positive ``j`` and query ``i``'s own negatives (the snapshot
tiled the negatives batch-major while its positives were sample-major, pairing positive rows with
other queries' negatives: :func:`info_nce` builds both blocks indexed by ``i``), plus, with the
intensity head, ``lambda ||h(f_q-features(y_i)) - avgpool(x_i)||^2`` (the snapshot's colour head
regressed the pooled *measurement*; ours regresses the pooled clean image, which is what makes it
a consistency term between ``y`` and ``x``). After the SGD step on ``f_q``:
``f_k <- m f_k + (1 - m) f_q`` and the ``B J`` new keys replace the oldest of the queue.

Defaults are the snapshot's (tau 0.07, K 4096, m 0.999, dim 128, SGD lr 0.03, momentum 0.9,
weight decay 1e-4, linear warm-up then cosine), with ``J = 4`` positives instead of 10 and
batch 128 instead of 256 for the CPU. The queue starts as random unit vectors (MoCo's official
initialisation). Determinism and resumption follow :mod:`diffinv.learn.trainer`: batch ``k`` is
drawn from ``image_seed(seed, k)`` alone, the checkpoint holds both encoders, the optimiser and
the queue. Under ``torchrun`` each rank takes its rows of the global batch, DDP averages the
query encoder's gradients and the keys of all ranks are gathered before they enter the queue.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from diffinv.errors import DiffinvError
from diffinv.learn.checkpoint import load_checkpoint, save_atomic
from diffinv.learn.encoder import ContrastiveEncoder, EncoderConfig, save_encoder
from diffinv.learn.measurements import FAMILIES, parse_families, random_measurements
from diffinv.learn.trainer import _agreed, _Dist, pick_device, stop_requests
from diffinv.seeding import image_generators, image_seed

CHECKPOINT = "checkpoint.pt"


@dataclass
class LikelihoodConfig:
    dataset: str = "fashion32"
    out: str = "runs/likelihood-fashion32"
    families: tuple[str, ...] = FAMILIES
    steps: int = 4000
    batch: int = 128
    positives: int = 4
    queue: int = 4096
    momentum: float = 0.999
    tau: float = 0.07
    lr: float = 0.03
    sgd_momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup: int = 200
    intensity_weight: float = 1.0
    sigma_max: float = 0.05
    key_abar_min: float = 0.0  # positives' noise level a ~ U(key_abar_min, 1) (snapshot: 0)
    seed: int = 0
    ckpt_every: int = 100
    log_every: int = 10
    encoder: dict = field(default_factory=lambda: {"width": 32, "blocks": [1, 1, 1], "dim": 128,
                                                   "intensity_head": True})

    def validate(self) -> None:
        parse_families(self.families)
        if min(self.steps, self.batch, self.positives, self.queue) < 1:
            raise DiffinvError("steps, batch, positives and queue must be >= 1")
        if not 0 <= self.momentum < 1 or self.tau <= 0 or self.lr <= 0:
            raise DiffinvError("need 0 <= momentum < 1, tau > 0 and lr > 0")
        if not 0 <= self.key_abar_min < 1:
            raise DiffinvError(f"key_abar_min must lie in [0, 1), got {self.key_abar_min}")

    def encoder_config(self, channels: int, size: int) -> EncoderConfig:
        e = dict(self.encoder)
        return EncoderConfig(in_channels=channels, image_size=size, width=int(e["width"]),
                             blocks=tuple(int(b) for b in e["blocks"]), dim=int(e["dim"]),
                             intensity_head=bool(e["intensity_head"]))


def learning_rate(cfg: LikelihoodConfig, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to 0 at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def info_nce(q: Tensor, k_pos: Tensor, queue: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """``(loss, logits)`` of InfoNCE with ``J`` positives per query.

    ``q`` (B, d), ``k_pos`` (B, J, d), ``queue`` (K, d), all unit vectors. ``logits`` is
    (B, J, 1 + K): row ``(i, j)`` is ``[q_i . k_ij, q_i . Q_1, ..., q_i . Q_K] / tau``; the loss is
    the cross-entropy with target 0 averaged over the ``B J`` rows."""
    pos = torch.einsum("bd,bjd->bj", q, k_pos)                     # (B, J)
    neg = q @ queue.T                                               # (B, K), query i's own
    B, J = pos.shape
    logits = torch.cat([pos[..., None], neg[:, None, :].expand(B, J, neg.shape[1])], -1) / tau
    target = torch.zeros(B * J, dtype=torch.long, device=q.device)
    return F.cross_entropy(logits.reshape(B * J, -1), target), logits


def draw_batch(n_data: int, cfg: LikelihoodConfig, step: int) -> tuple[Tensor, list, Tensor, Tensor]:
    """Step ``step``'s global batch from (seed, step) alone: image indices, per-sample generators
    (measurements), noise levels ``a`` (B, J) and key noise (B, J, ...) are drawn later from them."""
    g = torch.Generator().manual_seed(image_seed(cfg.seed, step))
    idx = torch.randint(n_data, (cfg.batch,), generator=g)
    gens = image_generators(image_seed(cfg.seed, step), range(cfg.batch))
    a = cfg.key_abar_min + (1 - cfg.key_abar_min) * torch.rand(cfg.batch, cfg.positives, generator=g)
    return idx, gens, a, g  # type: ignore[return-value]


@torch.no_grad()
def momentum_update(key: nn.Module, query: nn.Module, m: float) -> None:
    """``f_k <- m f_k + (1 - m) f_q`` (parameters; buffers copied)."""
    for pk, pq in zip(key.parameters(), query.parameters(), strict=True):
        pk.lerp_(pq.detach(), 1 - m)
    for bk, bq in zip(key.buffers(), query.buffers(), strict=True):
        bk.copy_(bq)


def _gather(t: Tensor, ddp: _Dist) -> Tensor:
    if not ddp.active:
        return t
    parts = [torch.empty_like(t) for _ in range(ddp.world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def train_likelihood(cfg: LikelihoodConfig, *, data: Tensor | None = None, device: str | None = None,
                     progress: bool = True, max_steps_this_run: int | None = None) -> Path:
    """Train (or resume) the encoder; returns the checkpoint path. ``data`` overrides the data
    set (tests)."""
    from tqdm.auto import tqdm

    cfg.validate()
    fams = parse_families(cfg.families)
    ddp = _Dist()
    dev = pick_device(device)
    if data is None:
        from diffinv.data import load_split

        data = load_split(cfg.dataset, "train").images
    if cfg.batch % ddp.world:
        raise DiffinvError(f"global batch {cfg.batch} is not divisible by {ddp.world} ranks")
    local = cfg.batch // ddp.world
    C, H = int(data.shape[1]), int(data.shape[-1])
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    torch.manual_seed(cfg.seed)
    query = ContrastiveEncoder(cfg.encoder_config(C, H)).to(dev)
    key = ContrastiveEncoder(cfg.encoder_config(C, H)).to(dev)
    key.load_state_dict(query.state_dict())
    key.requires_grad_(False)
    opt = torch.optim.SGD(query.parameters(), lr=cfg.lr, momentum=cfg.sgd_momentum,
                          weight_decay=cfg.weight_decay)
    gq = torch.Generator().manual_seed(image_seed(cfg.seed, -1))
    queue = F.normalize(torch.randn(cfg.queue, query.config.dim, generator=gq), dim=1).to(dev)
    ptr, step, seconds = 0, 0, 0.0
    if ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, map_location=dev)
        saved = json.loads(state["config"])
        for k in ("encoder", "dataset", "queue", "positives", "batch"):
            if saved[k] != json.loads(json.dumps(asdict(cfg)))[k]:
                raise DiffinvError(f"{ckpt_path} was trained with another {k} ({saved[k]!r}); "
                                   "use another --out folder")
        query.load_state_dict(state["query"])
        key.load_state_dict(state["key"])
        opt.load_state_dict(state["opt"])
        queue, ptr, step = state["queue"].to(dev), int(state["ptr"]), int(state["step"])
        seconds = float(state.get("seconds", 0.0))
    net: nn.Module = query
    if ddp.active:
        net = nn.parallel.DistributedDataParallel(
            query, device_ids=[dev.index] if dev.type == "cuda" else None)
    log_path = out / "train_log.jsonl"
    if ddp.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        with open(log_path, "a") as f:
            f.write(json.dumps({"event": "start", "step": step, "time": time.time(),
                                "config": asdict(cfg)}) + "\n")
    end = cfg.steps if max_steps_this_run is None else min(cfg.steps, step + max_steps_this_run)
    bar = tqdm(total=cfg.steps, initial=step, disable=not (progress and ddp.main),
               desc=f"train-likelihood {cfg.dataset}")
    hist: dict[str, list[float]] = {"loss": [], "nce": [], "intensity": [], "acc": []}
    t_last = time.time()

    def checkpoint() -> None:
        if ddp.main:
            save_atomic({"query": query.state_dict(), "key": key.state_dict(),
                         "opt": opt.state_dict(), "queue": queue.cpu(), "ptr": ptr, "step": step,
                         "seconds": seconds, "config": json.dumps(asdict(cfg)),
                         "image_shape": torch.tensor([C, H, H])}, ckpt_path)

    with stop_requests() as stop:
        while step < end:
            t0 = time.time()
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step)
            idx, gens, a, g = draw_batch(len(data), cfg, step)
            sl = slice(ddp.rank * local, (ddp.rank + 1) * local)
            x = data[idx[sl]]
            y, _ = random_measurements(x, fams, gens[sl], cfg.sigma_max)
            noise = torch.randn((cfg.batch, cfg.positives, *x.shape[1:]), generator=g)[sl]
            ab = a[sl].reshape(local, cfg.positives, 1, 1, 1)
            xk = (ab.sqrt() * x[:, None] + (1 - ab).sqrt() * noise).reshape(-1, *x.shape[1:])
            x, y, xk = x.to(dev), y.to(dev), xk.to(dev)
            with torch.no_grad():
                k = key(xk).reshape(local, cfg.positives, -1)
            q, feats = net(y, return_features=True)
            nce, logits = info_nce(q, k, queue, cfg.tau)
            loss = nce
            inten = torch.zeros(())
            if query.intensity_net is not None and cfg.intensity_weight > 0:
                inten = (query.intensity(feats) - F.avg_pool2d(x, query.config.pool)).pow(2).mean()
                loss = loss + cfg.intensity_weight * inten
            if not torch.isfinite(loss):
                checkpoint()
                raise DiffinvError(f"loss became {loss.item()} at step {step}; last good state "
                                   f"is in {ckpt_path}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            momentum_update(key, query, cfg.momentum)
            new = _gather(k.reshape(-1, k.shape[-1]), ddp)
            n = min(new.shape[0], cfg.queue)
            pos = (torch.arange(n, device=dev) + ptr) % cfg.queue
            queue[pos] = new[:n]
            ptr = int((ptr + n) % cfg.queue)
            step += 1
            seconds += time.time() - t0
            hist["loss"].append(loss.item())
            hist["nce"].append(nce.item())
            hist["intensity"].append(float(inten.detach()))
            hist["acc"].append(float((logits.argmax(-1) == 0).float().mean()))
            bar.update(1)
            if step % cfg.log_every == 0 or step == end:
                now = time.time()
                rec = {k_: sum(v) / len(v) for k_, v in hist.items() if v}
                bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['acc']:.2f}")
                if ddp.main:
                    with open(log_path, "a") as f:
                        f.write(json.dumps({"step": step, **rec, "lr": learning_rate(cfg, step - 1),
                                            "s_per_step": (now - t_last) / cfg.log_every,
                                            "time": now}) + "\n")
                t_last = now
                hist = {k_: [] for k_ in hist}
            stop_now = _agreed(stop["stop"], ddp, dev)
            if step % cfg.ckpt_every == 0 or step == end or stop_now:
                checkpoint()
            if stop_now:
                bar.write(f"stopped by a signal at step {step}; checkpoint written: {ckpt_path}")
                break
    bar.close()
    if ddp.active:
        dist.barrier()
    return ckpt_path


def load_trained(ckpt: str | Path) -> tuple[ContrastiveEncoder, ContrastiveEncoder, dict]:
    """``(query, key, state)`` from a training checkpoint."""
    state = load_checkpoint(ckpt)
    cfg = LikelihoodConfig(**{k: v for k, v in json.loads(state["config"]).items()})
    C, H, _ = (int(v) for v in state["image_shape"])
    nets = []
    for part in ("query", "key"):
        net = ContrastiveEncoder(cfg.encoder_config(C, H))
        net.load_state_dict(state[part])
        nets.append(net.eval().requires_grad_(False))
    return nets[0], nets[1], state


@torch.no_grad()
def retrieval_accuracy(query: ContrastiveEncoder, key: ContrastiveEncoder, images: Tensor,
                       families: tuple[str, ...], seed: int = 0, sigma_max: float = 0.05,
                       batch: int = 250) -> dict[str, float]:
    """Top-1 retrieval: for each image ``i`` of ``images`` (N), measure it with a random family
    (:func:`random_measurements`, image ``i``'s generator from ``seed``) and ask whether
    ``argmax_j f_q(y_i) . f_k(x_j)`` over the N clean images is ``i``. Returns the overall
    accuracy and one per family (``"acc"``, ``"acc_motion"``, ...), and the chance level 1/N."""
    N = images.shape[0]
    gens = image_generators(seed, range(N))
    ys, fams = [], []
    for s in range(0, N, batch):
        y, f = random_measurements(images[s:s + batch], families, gens[s:s + batch], sigma_max)
        ys.append(y)
        fams += f
    y = torch.cat(ys)
    fq = torch.cat([query(y[s:s + batch]) for s in range(0, N, batch)])
    fk = torch.cat([key(images[s:s + batch]) for s in range(0, N, batch)])
    hit = ((fq @ fk.T).argmax(1) == torch.arange(N)).float()
    out = {"acc": float(hit.mean()), "chance": 1.0 / N, "n": N}
    for fam in families:
        sel = torch.tensor([f == fam for f in fams])
        if sel.any():
            out[f"acc_{fam}"] = float(hit[sel].mean())
    return out


def export_likelihood(ckpt: str | Path, path: str | Path, *, valid: Tensor | None = None,
                      command: str = "", prior: str = "") -> Path:
    """Write the shipped file (both encoders, safetensors) and its card: command, steps, wall
    time, machine, and the retrieval accuracy on ``valid`` (validation images) when given."""
    query, key, state = load_trained(ckpt)
    cfg = asdict(LikelihoodConfig(**json.loads(state["config"])))  # defaults for newer fields
    card = {"prior": prior or cfg["dataset"], "trained_on": f"{cfg['dataset']}:train",
            "families": list(cfg["families"]), "steps": int(state["step"]),
            "wall_time_s": round(float(state.get("seconds", 0.0)), 1),
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "command": command, "training": {k: cfg[k] for k in (
                "batch", "positives", "queue", "momentum", "tau", "lr", "weight_decay",
                "warmup", "intensity_weight", "sigma_max", "key_abar_min", "seed")}}
    if valid is not None:
        card["retrieval_valid"] = retrieval_accuracy(query, key, valid, tuple(cfg["families"]))
    return save_encoder(query, key, path, card)
