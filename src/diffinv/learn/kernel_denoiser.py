r"""A plug-and-play blur-kernel denoiser for FastEM's M-step (a small DnCNN), its training and
its shipped weights.

**Network** (the FastEM code's ``net_kernel(in_nc=2, out_nc=1, nb=5, nc=32)``, a DnCNN of Zhang
et al. 2017 taking the noise level as a second input map, written here from scratch): five 3x3
convolutions ``2 -> 32 -> 32 -> 32 -> 32 -> 1`` with ReLUs between them, residual output

.. math:: D(k, \sigma) = k - f_\theta\big([\,n k,\; n \sigma\,]\big) / n,

where ``n = size^2`` rescales a kernel (whose entries average ``1/n``) to order one. (No batch
normalisation: the official DnCNN variant may use it; with it, eval mode would make the output
depend on training-set statistics only, as here.)

**Training** (``python -m diffinv.learn.kernel_denoiser``): kernels ``k`` of the ``kernels9``
train split (:mod:`diffinv.data.kernels`), ``k_noisy = k + sigma z`` with ``sigma ~ U(0,
sigma_max)`` per kernel, loss ``||D(k_noisy, sigma) - k||^2`` averaged, Adam. The batch of step
``s`` is drawn from ``image_seed(seed, s)``: a resumed run replays the same batches. Exported as
``src/diffinv/denoisers/NAME.safetensors`` with a JSON card (command, steps, wall time, machine,
SHA-256); :func:`load_kernel_denoiser` refuses a file whose weights or kernel size do not match.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor, nn

from diffinv.errors import DiffinvError, IntegrityError, ShapeError, UnknownNameError
from diffinv.seeding import image_seed

DEFAULT_NAME = "kernel_dncnn9"


class KernelDnCNN(nn.Module):
    """``D(k, sigma) = k - f([n k, n sigma]) / n`` for ``(B, 1, s, s)`` kernels (see module)."""

    def __init__(self, size: int = 9, channels: int = 32, layers: int = 5):
        super().__init__()
        if layers < 2:
            raise DiffinvError(f"a DnCNN needs at least 2 layers, got {layers}")
        self.size, self.channels, self.layers = int(size), int(channels), int(layers)
        mods: list[nn.Module] = [nn.Conv2d(2, channels, 3, padding=1), nn.ReLU()]
        for _ in range(layers - 2):
            mods += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
        mods.append(nn.Conv2d(channels, 1, 3, padding=1))
        self.body = nn.Sequential(*mods)

    def config(self) -> dict:
        return {"size": self.size, "channels": self.channels, "layers": self.layers}

    def forward(self, k: Tensor, sigma: Tensor | float) -> Tensor:
        if k.ndim != 4 or k.shape[1] != 1 or tuple(k.shape[-2:]) != (self.size, self.size):
            raise ShapeError(f"the kernel denoiser takes (B, 1, {self.size}, {self.size}) kernels;"
                             f" got {tuple(k.shape)}")
        n = float(self.size * self.size)
        s = torch.as_tensor(sigma, dtype=k.dtype, device=k.device).reshape(-1, 1, 1, 1)
        smap = (n * s).expand(k.shape[0], 1, *k.shape[-2:])
        return k - self.body(torch.cat([n * k, smap], dim=1)) / n


def denoiser_dir() -> Path:
    return Path(str(resources.files("diffinv") / "denoisers"))


def load_kernel_denoiser(name_or_path: str | Path = DEFAULT_NAME, *, size: int | None = None,
                         device: str | torch.device = "cpu") -> KernelDnCNN:
    """A shipped denoiser by name (``kernel_dncnn9``) or a ``.safetensors`` path with its card
    beside it; ``size`` (the blind family's kernel size) must match the card's."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from diffinv.assets import sha256_file

    p = Path(name_or_path)
    if p.suffix != ".safetensors":
        known = sorted(q.stem for q in denoiser_dir().glob("*.safetensors"))
        if str(name_or_path) not in known:
            raise UnknownNameError("kernel denoiser", str(name_or_path), known)
        p = denoiser_dir() / f"{name_or_path}.safetensors"
    card_path = p.with_suffix(".json")
    if not p.is_file() or not card_path.is_file():
        raise DiffinvError(f"{p} or its card {card_path.name} is missing")
    card = json.loads(card_path.read_text())
    sha = sha256_file(p)
    if card.get("sha256") and card["sha256"] != sha:
        raise IntegrityError(f"{p} has SHA-256 {sha[:12]}..., its card expects "
                             f"{card['sha256'][:12]}...")
    net = KernelDnCNN(**card["network"])
    if size is not None and int(size) != net.size:
        raise DiffinvError(f"the kernel denoiser {p.stem!r} was trained on {net.size}x{net.size} "
                           f"kernels but the blind family's kernel is {size}x{size}")
    try:
        weights = load_file(str(p))
        net.load_state_dict(weights, strict=True)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise IntegrityError(f"{p} does not hold the weights its card describes: {e}") from e
    return net.eval().requires_grad_(False).to(device)


def _batch(kernels: Tensor, batch: int, sigma_max: float, seed: int, step: int
           ) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(image_seed(seed, step))
    idx = torch.randint(kernels.shape[0], (batch,), generator=g)
    sigma = sigma_max * torch.rand(batch, generator=g)
    noise = torch.randn((batch, *kernels.shape[1:]), generator=g)
    clean = kernels[idx]
    return clean + sigma[:, None, None, None] * noise, sigma, clean


def train(out: Path, *, steps: int, batch: int, lr: float, sigma_max: float, seed: int,
          dataset: str, log_every: int = 100, ckpt_every: int = 500) -> Path:
    """Train (or resume from ``out/checkpoint.pt``) and return the checkpoint path."""
    from diffinv.data import load_split
    from diffinv.data.kernels import KERNEL_SETS, image_to_kernel
    from diffinv.learn.checkpoint import load_checkpoint, save_atomic

    size = KERNEL_SETS[dataset][0]
    kernels = image_to_kernel(load_split(dataset, "train").images, size)[:, None]
    valid = image_to_kernel(load_split(dataset, "valid").images, size)[:, None][:512]
    torch.manual_seed(seed)
    net = KernelDnCNN(size)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    step, wall = 0, 0.0
    if ckpt.is_file():
        state = load_checkpoint(ckpt)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, wall = int(state["step"]), float(state["wall"])
    t0 = time.time()
    gv = torch.Generator().manual_seed(image_seed(seed + 1, 0))
    sv = sigma_max * torch.rand(valid.shape[0], generator=gv)
    noisy_v = valid + sv[:, None, None, None] * torch.randn(valid.shape, generator=gv)
    while step < steps:
        noisy, sigma, clean = _batch(kernels, batch, sigma_max, seed, step)
        loss = (net(noisy, sigma) - clean).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % log_every == 0 or step == steps:
            with torch.no_grad():
                vl = (net(noisy_v, sv) - valid).pow(2).mean().item()
                v_in = (noisy_v - valid).pow(2).mean().item()
            with open(out / "train_log.jsonl", "a") as log:
                log.write(json.dumps({"step": step, "loss": loss.item(), "valid_mse": vl,
                                      "valid_noisy_mse": v_in, "time": time.time()}) + "\n")
        if step % ckpt_every == 0 or step == steps:
            save_atomic({"model": net.state_dict(), "opt": opt.state_dict(), "step": step,
                         "wall": wall + time.time() - t0,
                         "config": {"size": size, "dataset": dataset, "batch": batch, "lr": lr,
                                    "sigma_max": sigma_max, "seed": seed, "steps": steps}}, ckpt)
    return ckpt


def export(ckpt: Path, out_dir: Path, name: str, command: str) -> Path:
    """Write ``NAME.safetensors`` and the card ``NAME.json``."""
    from safetensors.torch import save_file

    from diffinv.assets import sha256_file
    from diffinv.learn.checkpoint import load_checkpoint
    from diffinv.machine import cpu_model

    state = load_checkpoint(ckpt)
    cfg = state["config"]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in state["model"].items()}, str(path))
    card = {
        "name": name, "network": KernelDnCNN(cfg["size"]).config(),
        "trained_on": f"{cfg['dataset']}:train", "noise": f"sigma ~ U(0, {cfg['sigma_max']})",
        "steps": int(state["step"]), "batch": cfg["batch"], "lr": cfg["lr"], "seed": cfg["seed"],
        "wall_seconds": round(float(state["wall"]), 1), "command": command,
        "machine": cpu_model(), "torch": torch.__version__,
        "sha256": sha256_file(path),
    }
    (out_dir / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m diffinv.learn.kernel_denoiser``: train (or resume) and optionally export. Bad
    options and an ``--export`` that exists (without ``--overwrite``) are refused before
    training, with one line on stderr and exit code 1; ``--threads`` is capped at the cores."""
    from diffinv.cli import positive_float, positive_int
    from diffinv.errors import DiffinvError
    from diffinv.learn.checkpoint import check_export
    from diffinv.resources import cap_threads

    p = argparse.ArgumentParser(description="train the FastEM kernel denoiser (DnCNN)")
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, train_log.jsonl)")
    p.add_argument("--dataset", default="kernels9")
    p.add_argument("--steps", type=positive_int, default=4000)
    p.add_argument("--batch", type=positive_int, default=128)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--sigma-max", type=positive_float, default=0.06)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=1, help="at most the machine's cores")
    p.add_argument("--export", metavar="DIR", default=None)
    p.add_argument("--name", default=DEFAULT_NAME)
    p.add_argument("--overwrite", action="store_true",
                   help="replace the --export files if they exist (refused otherwise)")
    a = p.parse_args(argv)
    try:
        if a.export:
            check_export(a.export, a.name, overwrite=a.overwrite)
    except DiffinvError as e:
        print(f"kernel_denoiser: error: {e}", file=sys.stderr)
        return 1
    torch.set_num_threads(cap_threads(a.threads)[0])
    ckpt = train(Path(a.out), steps=a.steps, batch=a.batch, lr=a.lr, sigma_max=a.sigma_max,
                 seed=a.seed, dataset=a.dataset)
    if a.export:
        cmd = "python -m diffinv.learn.kernel_denoiser " + " ".join(argv or sys.argv[1:])
        print(export(ckpt, Path(a.export), a.name, cmd))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
