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

Options beyond the snapshot (all off by default, so a run without them is the one above):

* **crops** (``crop = S``; CL-DPS trains on patches and averages its critic over overlapping
  patches at inference, methods.md 6.2-6.3): the measurement is made on the whole image (rotation
  and zoom blur depend on the position in the frame), then the query is the ``S x S`` window of
  ``y_i`` at a position drawn uniformly per sample, and the positives are the same window of
  ``x_i`` diffused. The encoder's input size is ``S``; :class:`~diffinv.guidance.contrastive.
  ContrastiveEnergy` tiles a larger image with it;
* **hard negatives** (``hard_negatives``; *our extension, not in the paper or the snapshot*): per
  query, extra negative keys that enter only that query's denominator (they are not enqueued):
  ``"y"``, the query's own measurement window through the key encoder, and ``"reblur"``, the same
  window of another random blind measurement of the same clean image, and ``"mix"``, the same
  window of ``(1 - a) x_i + a x_{i-1}`` (a little of the batch's previous image, ``a ~ U(0.05,
  0.5)``): a negative close to the truth, so that the critic must resolve detail finer than what
  tells one image from another (InfoNCE against other images alone is satisfied once the image is
  identified, and its critic is then flat around the truth); each diffused to its own
  random level ``a ~ U(key_abar_min, 1)`` like the positives, so the noise level tells nothing.
  With the momentum encoder alone ``f_k(y)`` tends to score above ``f_k(x)`` for the query ``y``
  (the key of the measurement looks most like the measurement), which makes the guidance pull
  the sample towards "looks like y"; these negatives train the critic to rank the clean image
  above blurred copies of it. Row ``(i, j)`` of the loss becomes
  ``-log exp(q_i.k_ij/tau) / (exp(q_i.k_ij/tau) + sum_h exp(q_i.h_ih/tau) + sum_n exp(q_i.Q_n/tau))``.
  With ``hard_noise = "matched"`` the hard keys of row ``(i, j)`` are diffused with that positive's
  level and noise (they differ from it by content alone). Two things make the "y" negative
  learnable: the query-side predictor (``encoder["predictor"]``; with ``f_k`` a momentum copy of
  ``f_q`` and no predictor, ``q_i . f_k(y_i) ~ 1``, the largest possible logit) and putting the
  hard keys through the key encoder in the same call as the positives (its head's BatchNorm uses
  batch statistics in training, which would otherwise tell the two sets apart);
* **a trained key tower** (``key_tower = "trained"``; *our extension*): MoCo's key encoder is a
  momentum copy of the query encoder, so one network embeds both the measurement (query side)
  and the candidate image (key side). Then ``f_k(y) ~ f_q(y)`` and the measurement's own key
  scores near the largest possible logit for its query: the "y scores above the truth" fixed point,
  which hard negatives fight against the main loss (the loss wants ``f(y) ~ f(x)`` on one side and
  ``f(y)`` far from ``f(x)`` on the other, from one set of weights). With a trained key tower the
  two sides are two networks, as in two-tower contrastive models of two modalities (CLIP, Radford
  et al. 2021; ALBEF's momentum queues, Li et al. 2021): ``g`` reads measurements, ``h`` reads
  (diffused) clean images and is trained by the same loss through the positives, the hard
  negatives and the other queries' positives in the batch (in-batch negatives, SimCLR); the queue
  holds keys of ``h``'s momentum copy ``h_m <- m h_m + (1 - m) h`` (MoCo's consistent dictionary),
  and ``h_m`` is the key encoder that is exported and guides the sampler. Costs one backward pass
  through ``h`` on ``B J (1 + H)`` windows per step;
* **periodic validation** (``val_every``): the top-1 retrieval accuracy of
  :func:`retrieval_accuracy` on validation images (patch-averaged for a crop encoder), and how
  often the truth's key beats the measurement's own key (``x_beats_y``, clean keys), appended to
  the log; with ``val_abars`` also ``x_beats_y@a``, both keys diffused to level ``a`` with the same
  noise (:func:`retrieval_accuracy`): the critic can rank the truth first at high key noise and
  the measurement first on clean keys, which ``x_beats_y`` alone does not show;
* **bf16** (``precision = "bf16"``): the encoders' forward passes under CPU/CUDA bfloat16 autocast.

Defaults are the snapshot's (tau 0.07, K 4096, m 0.999, dim 128, SGD lr 0.03, momentum 0.9,
weight decay 1e-4, linear warm-up then cosine), with ``J = 4`` positives instead of 10 and
batch 128 instead of 256 for the CPU. The queue starts as random unit vectors (MoCo's official
initialisation). Determinism and resumption follow :mod:`diffinv.learn.trainer`: batch ``k`` is
drawn from ``image_seed(seed, k)`` alone, the checkpoint holds both encoders, the optimiser and
the queue. Under ``torchrun`` each rank takes its rows of the global batch, DDP averages the
query encoder's gradients and the keys of all ranks are gathered before they enter the queue.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from diffinv.checks import check_count
from diffinv.errors import DiffinvError
from diffinv.learn.checkpoint import load_checkpoint, save_atomic
from diffinv.learn.encoder import ContrastiveEncoder, EncoderConfig, save_encoder
from diffinv.learn.measurements import FAMILIES, parse_families, random_measurements
from diffinv.learn.trainer import (
    _agreed,
    _Dist,
    check_numbers,
    check_run_folder,
    diverged,
    finite_state,
    pick_device,
    stop_requests,
)
from diffinv.seeding import image_generators, image_seed

CHECKPOINT = "checkpoint.pt"
#: kinds of per-query hard negative keys (our extension; module docstring)
HARD_NEGATIVES = ("y", "reblur", "mix")
#: range of the weight a of the other image in a "mix" hard negative (1 - a) x + a x'
MIX_RANGE = (0.05, 0.5)
#: how the key encoder is made: MoCo's momentum copy of the query encoder, or trained (ours)
KEY_TOWERS = ("momentum", "trained")


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
    crop: int = 0  # train on S x S windows (0: the whole image)
    hard_negatives: tuple[str, ...] = ()  # our extension: "y", "reblur", "mix" (module doc)
    hard_noise: str = "own"  # hard keys diffused at their own level, or "matched" to each positive
    key_tower: str = "momentum"  # or "trained": a key encoder of its own (our extension; module doc)
    precision: str = "fp32"  # or "bf16" (autocast of the encoders' forward passes)
    val_every: int = 0  # validation retrieval every this many steps (0: never)
    val_images: int = 500
    val_stride: int = 8  # patch stride of a crop encoder's validation retrieval
    val_abars: tuple[float, ...] = ()  # also x_beats_y with both keys diffused to these levels
    keep_every: int = 0  # also keep checkpoint_step{N}.pt every this many steps (0: never)
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
        check_numbers(self, positive=("tau", "lr"), fraction=("momentum", "sgd_momentum"),
                      non_negative=("weight_decay", "intensity_weight", "sigma_max"))
        if self.crop < 0 or (self.crop and self.crop % 4):
            raise DiffinvError(f"crop must be 0 (whole image) or a multiple of 4, got {self.crop}")
        bad = [h for h in self.hard_negatives if h not in HARD_NEGATIVES]
        if bad or len(set(self.hard_negatives)) != len(self.hard_negatives):
            raise DiffinvError(f"hard_negatives must be distinct names among {HARD_NEGATIVES}, got "
                               f"{list(self.hard_negatives)}")
        if self.key_tower not in KEY_TOWERS:
            raise DiffinvError(f"key_tower must be one of {KEY_TOWERS}, got {self.key_tower!r}")
        if self.hard_noise not in ("own", "matched"):
            raise DiffinvError(f"hard_noise must be own or matched, got {self.hard_noise!r}")
        if self.precision not in ("fp32", "bf16"):
            raise DiffinvError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.val_every < 0 or self.val_images < 2 or self.val_stride < 1:
            raise DiffinvError("need val_every >= 0, val_images >= 2 and val_stride >= 1")
        if not all(0 < a <= 1 for a in self.val_abars):
            raise DiffinvError(f"val_abars must lie in (0, 1], got {list(self.val_abars)}")

    def encoder_config(self, channels: int, size: int) -> EncoderConfig:
        """The encoder for images of ``size``: its input is the crop when training on crops."""
        e = dict(self.encoder)
        if self.crop:
            if self.crop > size:
                raise DiffinvError(f"crop {self.crop} exceeds the {size}-px images")
            size = self.crop
        return EncoderConfig(in_channels=channels, image_size=size, width=int(e["width"]),
                             predictor=bool(e.get("predictor", False)),
                             blocks=tuple(int(b) for b in e["blocks"]), dim=int(e["dim"]),
                             intensity_head=bool(e["intensity_head"]))


_DEFAULTS = json.loads(json.dumps(asdict(LikelihoodConfig())))  # for checkpoints of older versions


def learning_rate(cfg: LikelihoodConfig, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to 0 at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def info_nce(q: Tensor, k_pos: Tensor, queue: Tensor, tau: float,
             hard: Tensor | None = None, in_batch: bool = False) -> tuple[Tensor, Tensor]:
    """``(loss, logits)`` of InfoNCE with ``J`` positives per query.

    ``q`` (B, d), ``k_pos`` (B, J, d), ``queue`` (K, d), all unit vectors; ``hard`` (B, H, d),
    optional: query ``i``'s own hard negative keys (our extension, module docstring), or
    (B, J, H, d): one set per positive (row). ``logits`` is (B, J, 1 + H + K): row ``(i, j)`` is
    ``[q_i . k_ij, q_i . h_i(j)1, ..., q_i . h_i(j)H, q_i . Q_1, ..., q_i . Q_K] / tau``; the loss
    is the cross-entropy with target 0 averaged over the ``B J`` rows.

    With ``in_batch`` the ``B J`` positive keys of the *other* queries are negatives too (columns
    after the hard ones, ``-inf`` where the key belongs to query ``i`` itself, so query ``i``'s
    other positives never count against it): with a trained key encoder these are the negatives
    that carry its gradient (SimCLR's in-batch negatives, Chen et al. 2020)."""
    pos = torch.einsum("bd,bjd->bj", q, k_pos)                     # (B, J)
    neg = q @ queue.T                                               # (B, K), query i's own
    B, J = pos.shape
    parts = [pos[..., None]]
    if hard is not None and hard.ndim == 3:
        parts.append(torch.einsum("bd,bhd->bh", q, hard)[:, None].expand(B, J, hard.shape[1]))
    elif hard is not None:
        parts.append(torch.einsum("bd,bjhd->bjh", q, hard))
    if in_batch:
        inb = q @ k_pos.reshape(B * J, -1).T                            # (B, B J)
        owner = torch.arange(B, device=q.device).repeat_interleave(J)
        inb = inb.masked_fill(owner[None, :] == torch.arange(B, device=q.device)[:, None],
                              float("-inf"))
        parts.append(inb[:, None, :].expand(B, J, B * J))
    parts.append(neg[:, None, :].expand(B, J, neg.shape[1]))
    logits = torch.cat(parts, -1) / tau
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


def draw_crops(cfg: LikelihoodConfig, g: torch.Generator, size: int) -> Tensor:
    """(B, 2) top-left corners ``(row, col)`` of the step's crop windows, uniform over the
    ``size - crop + 1`` positions per axis, drawn from the step's generator ``g`` (so a step's crops
    depend on (seed, step) alone); zeros without crops."""
    if not cfg.crop:
        return torch.zeros(cfg.batch, 2, dtype=torch.long)
    return torch.randint(size - cfg.crop + 1, (cfg.batch, 2), generator=g)


def crop_windows(u: Tensor, corners: Tensor, size: int) -> Tensor:
    """``u[i, :, r_i:r_i+size, c_i:c_i+size]`` for each image ``i`` (a (B, C, size, size) copy)."""
    if size == u.shape[-1] and size == u.shape[-2]:
        return u
    return torch.stack([u[i, :, r:r + size, c:c + size]
                        for i, (r, c) in enumerate(corners.tolist())])


def hard_negative_inputs(cfg: LikelihoodConfig, g: torch.Generator, step: int, x: Tensor,
                         y: Tensor, corners: Tensor, families: tuple[str, ...],
                         rows: slice = slice(None), pos_a: Tensor | None = None,
                         pos_noise: Tensor | None = None) -> Tensor:
    """(B, H, C, S, S): the key-encoder inputs of the hard negatives (``cfg.hard_negatives``,
    in that order) of the step's B queries, each window diffused to its own ``a ~
    U(key_abar_min, 1)``: ``"y"``, the query's measurement window; ``"reblur"``, the same window of
    another random measurement of ``x_i`` (per-sample generators of a stream derived from (seed,
    step)). ``x`` and ``y`` are the whole images (b, C, H, W) of rows ``rows`` of the global
    batch (all of it without DDP); the draws are made for the whole batch, after the step's others.

    With ``cfg.hard_noise == "matched"``: (B, J, H, C, S, S), each window diffused with the level
    ``pos_a`` (B, J) and the very noise ``pos_noise`` (B, J, C, S, S) of each positive, so that a
    positive and its hard negatives differ by their content alone, ``sqrt(a) (x - y)`` (no draws).
    """
    S = cfg.crop or x.shape[-1]
    B, H = x.shape[0], len(cfg.hard_negatives)
    matched = cfg.hard_noise == "matched"
    if matched:
        if pos_a is None or pos_noise is None:
            raise DiffinvError("matched hard negatives need the positives' levels and noise")
    else:
        a = (cfg.key_abar_min + (1 - cfg.key_abar_min)
             * torch.rand(cfg.batch, H, generator=g))[rows]
        noise = torch.randn((cfg.batch, H, x.shape[1], S, S), generator=g)[rows]
    out = []
    for name in cfg.hard_negatives:
        if name == "y":
            src = y
        elif name == "mix":  # the clean image with a little of another one: (1 - a) x + a x'
            gm = torch.Generator().manual_seed(image_seed(image_seed(cfg.seed, step), -5))
            lo, hi = MIX_RANGE
            w = (lo + (hi - lo) * torch.rand(cfg.batch, generator=gm))[rows]
            w = w.to(x.dtype).reshape(-1, 1, 1, 1)
            src = (1 - w) * x + w * x.roll(1, 0)
        else:  # "reblur": another blind measurement of the same clean image
            gens = image_generators(image_seed(image_seed(cfg.seed, step), -2),
                                    range(cfg.batch))[rows]
            src, _ = random_measurements(x, families, gens, cfg.sigma_max)
        out.append(crop_windows(src, corners, S))
    win = torch.stack(out, 1)                                          # (B, H, C, S, S)
    if matched:
        ab = pos_a.reshape(B, -1, 1, 1, 1, 1)                          # (B, J, 1, 1, 1, 1)
        return ab.sqrt() * win[:, None] + (1 - ab).sqrt() * pos_noise[:, :, None]
    ab = a.reshape(B, H, 1, 1, 1)
    return ab.sqrt() * win + (1 - ab).sqrt() * noise


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
                     progress: bool = True, max_steps_this_run: int | None = None,
                     valid: Tensor | None = None) -> Path:
    """Train (or resume) the encoder; returns the checkpoint path. ``data`` overrides the data
    set (tests); ``valid`` are the validation images of ``val_every`` (default: the data set's
    validation split when ``val_every`` > 0)."""
    from tqdm.auto import tqdm

    cfg.validate()
    fams = parse_families(cfg.families)
    if max_steps_this_run is not None:
        check_count(max_steps_this_run, "max_steps_this_run")
    ddp = _Dist()
    dev = pick_device(device)
    resume = check_run_folder(cfg.out, "train-likelihood", ("query", "key", "opt", "queue", "step"),
                              ("encoder", "dataset"), map_location=dev)
    if data is None:
        from diffinv.data import load_split

        data = load_split(cfg.dataset, "train").images
        if cfg.val_every and valid is None:
            valid = load_split(cfg.dataset, "valid").images[:cfg.val_images]
    if cfg.batch % ddp.world:
        raise DiffinvError(f"global batch {cfg.batch} is not divisible by {ddp.world} ranks")
    local = cfg.batch // ddp.world
    C, H = int(data.shape[1]), int(data.shape[-1])
    S = cfg.crop or H
    cfg.encoder_config(C, H)  # a crop larger than the images is refused here
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    torch.manual_seed(cfg.seed)
    query = ContrastiveEncoder(cfg.encoder_config(C, H)).to(dev)
    trained_keys = cfg.key_tower == "trained"
    if trained_keys and ddp.active:
        raise DiffinvError("--key-tower trained does not run under torchrun yet; use one process "
                           "with --threads N")
    # the trained key tower (our extension) starts from its own draw, not a copy of the query's
    key_online = None
    if trained_keys:
        torch.manual_seed(image_seed(cfg.seed, -4))
        key_online = ContrastiveEncoder(cfg.encoder_config(C, H)).to(dev)
    key = ContrastiveEncoder(cfg.encoder_config(C, H)).to(dev)
    key_source = key_online if key_online is not None else query  # what the momentum copy tracks
    key.load_state_dict(key_source.state_dict())
    key.requires_grad_(False)
    params = [*query.parameters(), *(key_online.parameters() if key_online is not None else ())]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.sgd_momentum,
                          weight_decay=cfg.weight_decay)
    gq = torch.Generator().manual_seed(image_seed(cfg.seed, -1))
    queue = F.normalize(torch.randn(cfg.queue, query.config.dim, generator=gq), dim=1).to(dev)
    ptr, step, seconds, saved_step = 0, 0, 0.0, None
    if resume is not None:
        state, resume = resume, None
        saved = json.loads(state["config"])
        for k in ("encoder", "dataset", "queue", "positives", "batch", "crop", "hard_negatives",
                  "hard_noise", "key_tower"):
            if saved.get(k, _DEFAULTS[k]) != json.loads(json.dumps(asdict(cfg)))[k]:
                raise DiffinvError(f"{ckpt_path} was trained with another {k} ({saved[k]!r}); "
                                   "use another --out folder")
        query.load_state_dict(state["query"])
        key.load_state_dict(state["key"])
        if key_online is not None:
            key_online.load_state_dict(state["key_online"])
        opt.load_state_dict(state["opt"])
        queue, ptr, step = state["queue"].to(dev), int(state["ptr"]), int(state["step"])
        seconds, saved_step = float(state.get("seconds", 0.0)), step
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
    def autocast() -> Any:
        if cfg.precision == "bf16":
            return torch.autocast(dev.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def validate_now() -> None:
        if not (ddp.main and cfg.val_every and valid is not None):
            return
        query.eval()
        key.eval()
        try:
            rec = retrieval_accuracy(query, key, valid[:cfg.val_images].to(dev), fams,
                                     seed=cfg.seed, sigma_max=cfg.sigma_max, stride=cfg.val_stride,
                                     key_abars=cfg.val_abars)
        finally:
            query.train()
            key.train()
        with open(log_path, "a") as f:
            f.write(json.dumps({"event": "val", "step": step, **rec, "time": time.time()}) + "\n")
        bar.write(f"step {step}: validation retrieval {rec['acc']:.3f}, x beats y "
                  f"{rec['x_beats_y']:.3f}")

    end = cfg.steps if max_steps_this_run is None else min(cfg.steps, step + max_steps_this_run)
    bar = tqdm(total=cfg.steps, initial=step, disable=not (progress and ddp.main),
               desc=f"train-likelihood {cfg.dataset}")
    hist: dict[str, list[float]] = {"loss": [], "nce": [], "intensity": [], "acc": [],
                                    "pos_beats_hard": []}
    t_last = time.time()

    def checkpoint() -> None:
        nonlocal saved_step
        if not finite_state(query, key, queue, key_source):
            raise diverged(step, ckpt_path, saved_step)
        if ddp.main:
            state = {"query": query.state_dict(), "key": key.state_dict(),
                     "opt": opt.state_dict(), "queue": queue.cpu(), "ptr": ptr, "step": step,
                     "seconds": seconds, "config": json.dumps(asdict(cfg)),
                     "image_shape": torch.tensor([C, H, H]),
                     **({"key_online": key_source.state_dict()} if trained_keys else {})}
            save_atomic(state, ckpt_path)
            if cfg.keep_every and step % cfg.keep_every == 0:  # for curves over the steps
                save_atomic(state, out / f"checkpoint_step{step}.pt")
        saved_step = step

    with stop_requests() as stop:
        while step < end:
            t0 = time.time()
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step)
            idx, gens, a, g = draw_batch(len(data), cfg, step)
            sl = slice(ddp.rank * local, (ddp.rank + 1) * local)
            x_full = data[idx[sl]]
            y_full, _ = random_measurements(x_full, fams, gens[sl], cfg.sigma_max)
            win = (C, S, S)
            noise = torch.randn((cfg.batch, cfg.positives, *win), generator=g)[sl]
            corners = draw_crops(cfg, g, H)[sl]
            x, y = crop_windows(x_full, corners, S), crop_windows(y_full, corners, S)
            ab = a[sl].reshape(local, cfg.positives, 1, 1, 1)
            xk = (ab.sqrt() * x[:, None] + (1 - ab).sqrt() * noise).reshape(-1, *win)
            hk = None
            if cfg.hard_negatives:
                hk = hard_negative_inputs(cfg, g, step, x_full, y_full, corners, fams, sl,
                                          a[sl], noise)
                hk = hk.reshape(-1, *win).to(dev)
            x, y, xk = x.to(dev), y.to(dev), xk.to(dev)
            # positives and hard negatives in one call: the key encoder's head normalises with
            # batch statistics in training, which must not differ between the two
            kin = xk if hk is None else torch.cat([xk, hk])
            with torch.set_grad_enabled(trained_keys), autocast():
                kk = (key_source if trained_keys else key)(kin).float()
            k = kk[:xk.shape[0]].reshape(local, cfg.positives, -1)
            hshape = ((local, cfg.positives, len(cfg.hard_negatives), -1)
                      if cfg.hard_noise == "matched" else (local, len(cfg.hard_negatives), -1))
            hard = None if hk is None else kk[xk.shape[0]:].reshape(hshape)
            k_queue = k
            if trained_keys:  # the queue holds the momentum tower's keys (MoCo's consistency)
                with torch.no_grad(), autocast():
                    k_queue = key(xk).float().reshape(local, cfg.positives, -1)
            with autocast():
                q, feats = net(y, return_features=True, query=True)
            q = q.float()
            nce, logits = info_nce(q, k, queue, cfg.tau, hard, in_batch=trained_keys)
            loss = nce
            inten = torch.zeros(())
            if query.intensity_net is not None and cfg.intensity_weight > 0:
                with autocast():
                    pred = query.intensity(feats)
                inten = (pred.float() - F.avg_pool2d(x, query.config.pool)).pow(2).mean()
                loss = loss + cfg.intensity_weight * inten
            if not torch.isfinite(loss):
                checkpoint()
                raise DiffinvError(f"loss became {loss.item()} at step {step}; last good state "
                                   f"is in {ckpt_path}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            momentum_update(key, key_source, cfg.momentum)
            new = _gather(k_queue.reshape(-1, k.shape[-1]).detach(), ddp)
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
            if hard is not None:  # rows whose positive beats every hard negative
                nh = len(cfg.hard_negatives)
                beats = (logits[..., :1] > logits[..., 1:1 + nh]).all(-1)
                hist["pos_beats_hard"].append(float(beats.float().mean()))
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
            if cfg.val_every and (step % cfg.val_every == 0 or step == cfg.steps):
                validate_now()
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
    cfg = config_from_json(state["config"])
    C, H, _ = (int(v) for v in state["image_shape"])
    nets = []
    for part in ("query", "key"):
        net = ContrastiveEncoder(cfg.encoder_config(C, H))
        net.load_state_dict(state[part])
        nets.append(net.eval().requires_grad_(False))
    return nets[0], nets[1], state


def config_from_json(text: str) -> LikelihoodConfig:
    """The run's configuration from its JSON (lists back to tuples)."""
    raw = json.loads(text)
    for k in ("families", "hard_negatives", "val_abars"):
        if k in raw:
            raw[k] = tuple(raw[k])
    return LikelihoodConfig(**raw)


@torch.no_grad()
def patch_embeddings(enc: ContrastiveEncoder, u: Tensor, stride: int, batch: int = 250,
                     query: bool = False) -> Tensor:
    """(N, P * d): the encoder's embeddings of the ``P`` overlapping windows (its input size, at
    ``stride``) of each image, concatenated and scaled by ``1/sqrt(P)``, so that the dot product
    of two rows is the patch-averaged critic ``(1/P) sum_p <f(u_p), f(v_p)>`` that guidance uses
    (``P = 1`` for an encoder of the images' size)."""
    from diffinv.guidance.contrastive import to_patches

    S = enc.config.image_size
    out = []
    for s in range(0, u.shape[0], batch):
        up = to_patches(u[s:s + batch], S, stride)                  # (b, P, C, S, S)
        b, P = up.shape[:2]
        out.append(enc(up.reshape(b * P, *up.shape[2:]), query=query).reshape(b, -1) / P ** 0.5)
    return torch.cat(out)


@torch.no_grad()
def retrieval_accuracy(query: ContrastiveEncoder, key: ContrastiveEncoder, images: Tensor,
                       families: tuple[str, ...], seed: int = 0, sigma_max: float = 0.05,
                       batch: int = 250, stride: int = 8,
                       key_abars: tuple[float, ...] = ()) -> dict[str, float]:
    """Top-1 retrieval: for each image ``i`` of ``images`` (N), measure it with a random family
    (:func:`random_measurements`, image ``i``'s generator from ``seed``) and ask whether
    ``argmax_j s(y_i, x_j)`` over the N clean images is ``i``, with ``s`` the critic
    ``<f_q(y), f_k(x)>`` (averaged over the overlapping windows at ``stride`` for an encoder
    trained on crops: :func:`patch_embeddings`). Returns the overall accuracy and one per family
    (``"acc"``, ``"acc_motion"``, ...), the chance level 1/N, and ``"x_beats_y"``: the fraction of
    images whose truth scores above the measurement itself, ``s(y_i, x_i) > s(y_i, y_i)`` (below
    one half, guidance by ``s`` pulls towards "looks like y").

    ``x_beats_y`` compares clean keys (``abar = 1``, what guidance on the Tweedie estimate sees),
    while training diffuses keys to ``a ~ U(key_abar_min, 1)``. For each level ``a`` of
    ``key_abars`` the record also holds ``"x_beats_y@a"``: the same comparison with both keys
    diffused to ``a`` with the *same* noise, ``sqrt(a) x_i + sqrt(1 - a) e_i`` against
    ``sqrt(a) y_i + sqrt(1 - a) e_i`` (``e_i`` from image ``i``'s generator of a stream derived from
    ``seed``), so the two differ by content alone, as the matched hard negatives of training."""
    N = images.shape[0]
    gens = image_generators(seed, range(N))
    ys, fams = [], []
    for s in range(0, N, batch):
        y, f = random_measurements(images[s:s + batch].cpu(), families, gens[s:s + batch],
                                   sigma_max)
        ys.append(y)
        fams += f
    y = torch.cat(ys).to(images.device)
    fq = patch_embeddings(query, y, stride, batch, query=True)
    fk = patch_embeddings(key, images, stride, batch)
    fy = patch_embeddings(key, y, stride, batch)
    scores = fq @ fk.T
    hit = (scores.argmax(1) == torch.arange(N, device=scores.device)).float().cpu()
    beats = (scores.diagonal() > (fq * fy).sum(1)).float()
    out = {"acc": float(hit.mean()), "chance": 1.0 / N, "n": N, "x_beats_y": float(beats.mean())}
    if key_abars:
        egens = image_generators(image_seed(seed, -3), range(N))
        e = torch.stack([torch.randn(images.shape[1:], generator=g_) for g_ in egens])
        e = e.to(images.device, images.dtype)
        for a in key_abars:
            ka = patch_embeddings(key, a ** 0.5 * images + (1 - a) ** 0.5 * e, stride, batch)
            ya = patch_embeddings(key, a ** 0.5 * y + (1 - a) ** 0.5 * e, stride, batch)
            out[f"x_beats_y@{a:g}"] = float(((fq * ka).sum(1) > (fq * ya).sum(1)).float().mean())
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
    cfg = asdict(config_from_json(state["config"]))  # defaults for newer fields
    card = {"prior": prior or cfg["dataset"], "trained_on": f"{cfg['dataset']}:train",
            "families": list(cfg["families"]), "steps": int(state["step"]),
            "wall_time_s": round(float(state.get("seconds", 0.0)), 1),
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "command": command, "training": {k: cfg[k] for k in (
                "batch", "positives", "queue", "momentum", "tau", "lr", "weight_decay",
                "warmup", "intensity_weight", "sigma_max", "key_abar_min", "crop",
                "hard_negatives", "hard_noise", "key_tower", "precision", "seed")}}
    if valid is not None:
        card["retrieval_valid"] = retrieval_accuracy(query, key, valid, tuple(cfg["families"]))
    return save_encoder(query, key, path, card)
