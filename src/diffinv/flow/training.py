r"""Training and saving flow-matching priors (``diffinv train-prior --objective flow``).

Loss (conditional flow matching, independent coupling, sigma_min = 0; Lipman et al. 2023,
Liu et al. 2023 "rectified flow", Tong et al. 2024 "I-CFM")::

    L = E_{t ~ U(0,1), x_1 ~ data, z ~ N(0, I)} || v(x_t, t) - (x_1 - x_0) ||^2,
    x_0 = source(z),  x_t = (1 - t) x_0 + t x_1

(mean over pixels, as the eps loss). The global batch of step k (image indices, times, seeds) is
drawn from ``image_seed(seed, k)`` alone, so resuming and ``torchrun`` replay it exactly as the
eps trainer does (:mod:`diffinv.learn.trainer`, which runs this objective: EMA, checkpoints,
resume, DDP).

The source is fitted once at the start of a run (PCA of the training images, or a random frame)
and saved in the checkpoint; a resumed run restores it from there, never refits. An exported
prior holds the network's weights and the source's tensors (``source.mean``, ``source.basis``,
``source.scales``) in one safetensors file, and its JSON card says ``"objective": "flow"``, the
time convention and the source (kind, k, mean/scale options, what it was fitted on).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffinv.errors import DiffinvError, IntegrityError
from diffinv.flow.prior import CONVENTION, TIME_SCALE, FlowPrior
from diffinv.flow.source import PREFIX, SOURCE_KINDS, Source, fit_source, source_from_card
from diffinv.seeding import image_seed

OBJECTIVES = ("eps", "flow")
SOURCE_KEYS = ("kind", "k", "mean", "scale", "seed")


def check_source_config(source: Any) -> dict[str, Any]:
    """A ``TrainConfig.source`` dict: ``kind`` (gaussian | pca | random), ``k``, ``mean``,
    ``scale``, ``seed`` (the fitting itself checks the values against the data)."""
    if not isinstance(source, dict) or source.get("kind") not in SOURCE_KINDS:
        raise DiffinvError(f"source must be a dict with 'kind' one of {', '.join(SOURCE_KINDS)}, "
                           f"got {source!r}")
    extra = [k for k in source if k not in SOURCE_KEYS]
    if extra:
        raise DiffinvError(f"unknown source settings {extra} (known: {', '.join(SOURCE_KEYS)})")
    if source["kind"] != "gaussian" and source.get("k") is None:
        raise DiffinvError(f"a {source['kind']} source needs k (the subspace dimension)")
    return source


def draw_flow_batch(n_data: int, batch: int, image_shape: tuple[int, ...], seed: int,
                    step: int) -> tuple[Tensor, Tensor, Tensor]:
    """The global batch of step ``step``: (image indices, times t ~ U(0, 1), standard-normal
    seeds), from (seed, step) alone."""
    g = torch.Generator().manual_seed(image_seed(seed, step))
    idx = torch.randint(n_data, (batch,), generator=g)
    t = torch.rand(batch, generator=g)
    z = torch.randn((batch, *image_shape), generator=g)
    return idx, t, z


def flow_loss(model: nn.Module, source: Source, x1: Tensor, t: Tensor, z: Tensor,
              time_scale: float = TIME_SCALE) -> Tensor:
    """The CFM loss of one batch (module docstring); ``model(x_t, t * time_scale)`` -> v."""
    with torch.autocast(x1.device.type, enabled=False):  # the source map in full precision
        x0 = source.from_seed(z)
        tt = t.to(x1.device, x1.dtype).view(-1, *([1] * (x1.ndim - 1)))
        x_t = (1 - tt) * x0 + tt * x1
        target = x1 - x0
    return (model(x_t, t.to(x1.device) * time_scale).float() - target.float()).pow(2).mean()


class FlowObjective:
    """The flow objective of a training run: its source and the loss of a step."""

    def __init__(self, source: Source, time_scale: float = TIME_SCALE):
        self.source, self.time_scale = source, float(time_scale)

    @classmethod
    def start(cls, cfg: Any, data: Tensor, state: dict | None,
              device: torch.device) -> FlowObjective:
        """Fit the source on ``data`` (a new run) or restore it from ``state`` (a resumed one)."""
        spec = check_source_config(cfg.source)
        shape = tuple(data.shape[1:])
        if state is not None:
            try:
                card = json.loads(state["source"]["card"])
                tensors = {k: v for k, v in state["source"].items() if k != "card"}
            except (KeyError, TypeError, ValueError) as e:
                raise IntegrityError(f"the checkpoint of this flow run holds no source ({e})"
                                     ) from e
            source = source_from_card(card, tensors, shape)
        else:
            n = len(data)
            where = f"{cfg.dataset}:train" + (f"[:{n}]" if getattr(cfg, "train_images", 0) else "")
            source = fit_source(spec["kind"], data, k=spec.get("k"),
                                mean=spec.get("mean", "zero"), scale=spec.get("scale", "unit"),
                                seed=int(spec.get("seed", 0)), fitted_on=where)
        return cls(source.to(device))

    def loss(self, net: nn.Module, data: Tensor, n_data: int, batch: int, seed: int, step: int,
             rows: slice) -> Tensor:
        shape = tuple(data.shape[1:])
        idx, t, z = draw_flow_batch(n_data, batch, shape, seed, step)
        x1 = data[idx[rows].to(data.device)]
        return flow_loss(net, self.source, x1, t[rows], z[rows].to(data.device), self.time_scale)

    def state(self) -> dict[str, Any]:
        """What the checkpoint keeps of the source (its card as JSON, its tensors on the CPU)."""
        return {"card": json.dumps(self.source.card()),
                **{k: v.detach().cpu() for k, v in self.source.tensors().items()}}


# ------------------------------------------------------------------------- save and load
def flow_meta(cfg: dict, image_shape: list[int], source_card: dict, steps: int) -> dict:
    c, h, _ = image_shape
    return {
        "objective": "flow",
        "network": "UNet",
        "unet": dict(cfg["unet"], in_channels=c, image_size=h),
        "image_shape": list(image_shape),
        "prediction": "velocity",
        "convention": CONVENTION,
        "time_scale": TIME_SCALE,
        "source": source_card,
        "trained_on": f"{cfg['dataset']}:train"
                      + (f"[:{cfg['train_images']}]" if cfg.get("train_images") else ""),
        "train_images": int(cfg.get("train_images", 0)),  # the first N of the split; 0: all
        "steps": int(steps),
    }


def export_flow_prior(state: dict, out_dir: str | Path, name: str, *, use_ema: bool = True,
                      extra: dict | None = None) -> Path:
    """Write ``NAME.safetensors`` (network + ``source.*`` tensors) and its card ``NAME.json``."""
    from safetensors.torch import save_file

    from diffinv.assets import sha256_file

    cfg = json.loads(state["config"])
    weights = dict(state["ema"]["model"] if use_ema else state["model"])
    src = state["source"]
    tensors = {k: v for k, v in src.items() if k != "card"}
    clash = [k for k in weights if k.startswith(PREFIX)]
    if clash:
        raise DiffinvError(f"network weights {clash[:3]} clash with the source's prefix {PREFIX!r}")
    weights.update(tensors)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    meta = {"name": name, "domain": name,
            **flow_meta(cfg, [int(v) for v in state["image_shape"]], json.loads(src["card"]),
                        int(state["step"])),
            "batch": cfg["batch"], "lr": cfg["lr"], "ema_decay": cfg["ema_decay"],
            "weights": "ema" if use_ema else "raw", "sha256": sha256_file(path),
            "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            **(extra or {})}
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=2))
    return path


def build_flow_prior(meta: dict, weights: dict[str, Tensor], where: str, sha: str | None,
                     device: str | torch.device) -> FlowPrior:
    """A :class:`FlowPrior` from a flow card and the file's tensors (network + ``source.*``)."""
    from diffinv.diffusion.unet import UNet
    from diffinv.diffusion.zoo import _state_dict_mismatch

    missing = [k for k in ("unet", "image_shape", "source") if k not in meta]
    if missing:
        raise IntegrityError(f"{where}: flow prior card lacks {', '.join(missing)}")
    shape = tuple(int(s) for s in meta["image_shape"])
    src_t = {k: v for k, v in weights.items() if k.startswith(PREFIX)}
    net_t = {k: v for k, v in weights.items() if not k.startswith(PREFIX)}
    source = source_from_card(meta["source"], src_t, shape)
    try:
        with torch.device("meta"):
            net = UNet(**meta["unet"])
    except (TypeError, ValueError) as e:
        raise IntegrityError(f"{where}: bad network config: {e}") from e
    problem = _state_dict_mismatch(net, net_t)
    if problem:
        raise IntegrityError(f"{where}: weights do not match the configured network: {problem}")
    net = net.to_empty(device="cpu")
    net.load_state_dict(net_t, strict=True)
    net.eval().requires_grad_(False)
    info = {k: meta[k] for k in ("trained_on", "train_images", "steps") if k in meta}
    prior = FlowPrior(net, source, image_shape=shape,
                      time_scale=float(meta.get("time_scale", TIME_SCALE)),
                      name=meta.get("name", Path(where).stem), sha256=sha,
                      domain=meta.get("domain"), info=info)
    return prior.to(device)


def flow_prior_from_training_state(state: dict, where: str, sha: str,
                                   device: str | torch.device) -> FlowPrior:
    """The EMA flow prior of a ``train-prior --objective flow`` checkpoint."""
    try:
        cfg = json.loads(state["config"])
        shape = [int(v) for v in state["image_shape"]]
        weights = dict(state["ema"]["model"])
        src = state["source"]
        card = json.loads(src["card"])
    except (KeyError, TypeError, ValueError) as e:
        raise IntegrityError(f"{where} is not a flow training checkpoint ({e})") from e
    weights.update({k: v for k, v in src.items() if k != "card"})
    meta = dict(flow_meta(cfg, shape, card, int(state["step"])),
                name=f"{cfg['dataset']}-flow@{state['step']}", domain=cfg["dataset"])
    return build_flow_prior(meta, weights, where, sha, device)
