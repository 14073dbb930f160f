"""Loading priors by name or path, with integrity checks.

* An embedded name (``"mnist32"``, ``"fashion32"``): ``diffinv/priors/NAME.safetensors`` + ``NAME.json``
  shipped in the package.
* A path to ``X.safetensors`` with its ``X.json`` beside it (what ``export_prior`` writes).
* A path to a training checkpoint ``checkpoint.pt`` (its EMA weights), loaded with
  ``weights_only=True``.

The JSON's ``sha256`` must match the weights file; the weights must match the network the JSON
describes exactly (``strict=True``). Any mismatch raises :class:`IntegrityError` naming the problem.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

from diffinv.assets import sha256_file
from diffinv.diffusion.prior import DiffusionPrior
from diffinv.diffusion.schedule import VPSchedule
from diffinv.diffusion.unet import UNet
from diffinv.errors import DiffinvError, IntegrityError, UnknownNameError

REQUIRED_KEYS = ("unet", "schedule", "T", "variance", "image_shape")


def embedded_dir() -> Path:
    return Path(str(resources.files("diffinv") / "priors"))


def available_priors() -> list[str]:
    """Names of the priors shipped in the package."""
    d = embedded_dir()
    return sorted(p.stem for p in d.glob("*.safetensors") if p.with_suffix(".json").is_file())


def _build(
    meta: dict,
    weights: dict[str, torch.Tensor],
    source: str,
    sha: str | None,
    device: str | torch.device,
) -> DiffusionPrior:
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise IntegrityError(f"{source}: config lacks {', '.join(missing)}")
    try:
        net = UNet(**meta["unet"])
    except TypeError as e:
        raise IntegrityError(f"{source}: bad network config: {e}") from e
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()
        raise IntegrityError(
            f"{source}: weights do not match the configured network: {' '.join(first[:3])[:400]}"
        ) from e
    net.eval().requires_grad_(False).to(device)
    schedule = VPSchedule.from_name(meta["schedule"], int(meta["T"]))
    return DiffusionPrior(
        net,
        schedule,
        image_shape=meta["image_shape"],
        variance=meta["variance"],
        name=meta.get("name", Path(source).stem),
        sha256=sha,
        domain=meta.get("domain"),
    )


def _load_safetensors(path: Path, device: str | torch.device) -> DiffusionPrior:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg_path = path.with_suffix(".json")
    if not cfg_path.is_file():
        raise DiffinvError(f"{path} has no config {cfg_path.name} beside it")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise IntegrityError(f"{cfg_path} is not valid JSON: {e}") from e
    sha = sha256_file(path)
    if meta.get("sha256") and meta["sha256"] != sha:
        raise IntegrityError(
            f"{path} has SHA-256 {sha[:12]}..., but its config expects "
            f"{meta['sha256'][:12]}... (truncated or replaced weights?)"
        )
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise IntegrityError(f"{path} is not a readable safetensors file: {e}") from e
    return _build(meta, weights, str(path), sha, device)


def _load_training_checkpoint(path: Path, device: str | torch.device) -> DiffusionPrior:
    from diffinv.learn.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    try:
        cfg = json.loads(state["config"])
        c, h, w = (int(v) for v in state["image_shape"])
        weights = state["ema"]["model"]
    except (KeyError, TypeError, ValueError) as e:
        raise IntegrityError(f"{path} is not a diffinv training checkpoint ({e})") from e
    meta = {
        "unet": dict(cfg["unet"], in_channels=c, image_size=h),
        "schedule": cfg["schedule"],
        "T": cfg["T"],
        "variance": "fixed_small",
        "image_shape": [c, h, w],
        "name": f"{cfg['dataset']}@{state['step']}",
        "domain": cfg["dataset"],
    }
    return _build(meta, weights, str(path), sha256_file(path), device)


def load_prior(name_or_path: str | Path, device: str | torch.device = "cpu") -> DiffusionPrior:
    """A :class:`DiffusionPrior` from an embedded name or a file path (see module docstring)."""
    name = str(name_or_path)
    known = available_priors()
    if name in known:
        return _load_safetensors(embedded_dir() / f"{name}.safetensors", device)
    path = Path(name)
    if path.is_file():
        if path.suffix == ".safetensors":
            return _load_safetensors(path, device)
        if path.suffix in (".pt", ".pth", ".ckpt"):
            return _load_training_checkpoint(path, device)
        raise DiffinvError(f"{path}: unknown prior file type (expected .safetensors or .pt)")
    if path.suffix or "/" in name:
        raise DiffinvError(f"prior file {path} does not exist")
    raise UnknownNameError("prior", name, known)
