"""Loading priors by name or path, with integrity checks.

* An embedded name (``"mnist32"``, ``"fashion32"``): ``diffinv/priors/NAME.safetensors`` + ``NAME.json``
  shipped in the package.
* A path to ``X.safetensors`` with its ``X.json`` beside it (what ``export_prior`` writes).
* A path to a training checkpoint ``checkpoint.pt`` (its EMA weights), loaded with
  ``weights_only=True``.
* A path to an official guided-diffusion ("ADM") checkpoint, e.g. ``ffhq_10m.pt``: a plain
  pickled ``state_dict`` of tensors, read with ``torch.load(weights_only=True)`` only (anything
  that needs arbitrary unpickling is refused). Its configuration comes from ``config=`` (a preset
  name from :data:`~diffinv.diffusion.adm.ADM_PRESETS` such as ``"adm-ffhq256"``, a JSON path or a
  dict) or from ``X.json`` beside ``X.pt``. A config is an ``"adm"`` dict of
  :class:`~diffinv.diffusion.adm.ADMUNet` arguments (or a ``"preset"`` name) plus optional
  ``schedule``, ``T``, ``variance``, ``image_shape``, ``name``, ``domain``, ``sha256``. An
  ``X.json`` that is not such a config (no ``adm`` dict, no ``preset``) is not read as one.

The JSON's ``sha256`` (or the ``sha256=`` argument) must match the weights file; the weights must
match the network the config describes exactly (``strict=True``). Any mismatch raises
:class:`IntegrityError` naming the problem.

* A diffusers folder (a ``UNet2DModel`` saved with ``save_pretrained``, with its scheduler config):
  :mod:`diffinv.diffusion.diffusers_folder` (optional extra ``diffinv[diffusers]``).

Flow-matching priors load through the same paths and come back as
:class:`~diffinv.flow.prior.FlowPrior`: a safetensors file whose card says ``"objective": "flow"``
(network + ``source.*`` tensors), a ``train-prior --objective flow`` checkpoint, and a diffusers
folder whose scheduler is ``FlowMatchEulerDiscreteScheduler``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

from diffinv.assets import sha256_file
from diffinv.checks import check_device
from diffinv.diffusion.adm import ADM_PRESETS, ADMUNet
from diffinv.diffusion.prior import DiffusionPrior
from diffinv.diffusion.schedule import VPSchedule
from diffinv.diffusion.unet import UNet
from diffinv.errors import DiffinvError, IntegrityError, UnknownNameError
from diffinv.fileio import load_tensors_only

REQUIRED_KEYS = ("schedule", "T", "variance", "image_shape")
ADM_MARKERS = ("time_embed.0.weight", "input_blocks.0.0.weight")


def embedded_dir() -> Path:
    return Path(str(resources.files("diffinv") / "priors"))


def _is_prior_card(card: Path) -> bool:
    """A card beside weights that ``load_prior`` loads: not an autoencoder shipped beside a
    latent prior (``"kind": "autoencoder-kl"``, the first stage, loaded through its prior)."""
    if not card.is_file():
        return False
    try:
        return json.loads(card.read_text()).get("kind") != "autoencoder-kl"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return True  # listed; load_prior then reports what is wrong with it


def available_priors() -> list[str]:
    """Names of the priors shipped in the package (autoencoders shipped beside a latent prior
    are not priors and are not listed)."""
    d = embedded_dir()
    return sorted(p.stem for p in d.glob("*.safetensors") if _is_prior_card(p.with_suffix(".json")))


def _build(
    meta: dict,
    weights: dict[str, torch.Tensor],
    source: str,
    sha: str | None,
    device: str | torch.device,
) -> DiffusionPrior:
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if "unet" not in meta and "adm" not in meta:
        missing.insert(0, "unet (or adm)")
    if missing:
        raise IntegrityError(f"{source}: config lacks {', '.join(missing)}")
    try:  # built on the meta device: no memory or init cost before the layout is checked
        with torch.device("meta"):
            net = ADMUNet(**meta["adm"]) if "adm" in meta else UNet(**meta["unet"])
    except (TypeError, ValueError) as e:
        raise IntegrityError(f"{source}: bad network config: {e}") from e
    problem = _state_dict_mismatch(net, weights)
    if problem:
        raise IntegrityError(f"{source}: weights do not match the configured network: {problem}")
    net = net.to_empty(device="cpu")  # every entry is then overwritten by the strict load
    net.load_state_dict(weights, strict=True)
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


def _state_dict_mismatch(net: torch.nn.Module, weights: dict[str, torch.Tensor]) -> str:
    """'' if ``weights`` has exactly the network's keys and shapes, else what differs."""
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in weights.items()}
    parts = []
    lacking = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]
    shapes = [
        f"{k} {have[k]} in file vs {want[k]} in config"
        for k in want
        if have.get(k, want[k]) != want[k]
    ]
    for label, items in (("missing", lacking), ("unexpected", extra), ("shape mismatch", shapes)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
    return "; ".join(parts)


def _load_safetensors(
    path: Path, device: str | torch.device, pinned: str | None = None
) -> DiffusionPrior:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg_path = path.with_suffix(".json")
    if not cfg_path.is_file():
        raise DiffinvError(f"{path} has no config {cfg_path.name} beside it")
    try:
        meta = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{cfg_path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise IntegrityError(f"{cfg_path} does not hold a JSON object (the prior's config: "
                             "network, schedule, image shape), but a "
                             f"{type(meta).__name__}")
    sha = sha256_file(path)
    if meta.get("sha256") and meta["sha256"] != sha:
        raise IntegrityError(
            f"{path} has SHA-256 {sha[:12]}..., but its config expects "
            f"{meta['sha256'][:12]}... (truncated or replaced weights?)"
        )
    if pinned and pinned.lower() != sha:
        raise IntegrityError(
            f"{path} has SHA-256 {sha[:12]}..., but {pinned[:12]}... was pinned "
            "(truncated or replaced weights?)"
        )
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise IntegrityError(f"{path} is not a readable safetensors file: {e}") from e
    if meta.get("objective") == "flow":  # a flow-matching prior (diffinv.flow)
        from diffinv.flow.training import build_flow_prior

        return build_flow_prior(meta, weights, str(path), sha, device)
    prior = _build(meta, weights, str(path), sha, device)
    if "latent" in meta:  # a latent diffusion with its autoencoder beside it (diffinv.latent)
        from diffinv.latent.training import wrap_latent

        return wrap_latent(prior, meta, path, device)
    return prior


def _from_training_state(
    state: dict, path: Path, sha: str, device: str | torch.device
) -> DiffusionPrior:
    try:
        flow = json.loads(state["config"]).get("objective") == "flow"
    except (KeyError, TypeError, ValueError, AttributeError):
        flow = False  # not a readable config: the eps path below reports it
    if flow:
        from diffinv.flow.training import flow_prior_from_training_state

        return flow_prior_from_training_state(state, str(path), sha, device)
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
    return _build(meta, weights, str(path), sha, device)


def adm_config(config: str | Path | dict) -> dict:
    """A full ADM prior config from a preset name, a JSON file or a dict (see module docstring).

    Missing diffusion fields default to the official ones: linear schedule, T = 1000,
    learned-range variance, image shape (C, image_size, image_size).
    """
    if isinstance(config, dict):
        meta = dict(config)
    elif str(config) in ADM_PRESETS:
        meta = dict(ADM_PRESETS[str(config)])
    elif Path(config).suffix == ".json" or Path(config).is_file():
        cfg_path = Path(config)
        if not cfg_path.is_file():
            raise DiffinvError(f"ADM config file {cfg_path} does not exist")
        try:
            meta = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise IntegrityError(f"{cfg_path} is not valid JSON: {e}") from e
        if not isinstance(meta, dict):
            raise IntegrityError(f"{cfg_path} does not hold a JSON object")
    else:
        raise UnknownNameError("ADM preset", str(config), list(ADM_PRESETS))
    if "preset" in meta:
        preset = str(meta.pop("preset"))
        if preset not in ADM_PRESETS:
            raise UnknownNameError("ADM preset", preset, list(ADM_PRESETS))
        meta = {**ADM_PRESETS[preset], **meta}
    if not isinstance(meta.get("adm"), dict):
        raise IntegrityError(
            "an ADM config needs an 'adm' dict of network options or a 'preset' name "
            f"(presets: {', '.join(sorted(ADM_PRESETS))})"
        )
    adm = meta["adm"]
    try:
        c, size = int(adm.get("in_channels", 3)), int(adm.get("image_size", 256))
    except (TypeError, ValueError):
        raise IntegrityError(f"an ADM config's 'in_channels' and 'image_size' must be integers, "
                             f"got {adm.get('in_channels')!r} and {adm.get('image_size')!r}") from None
    meta.setdefault("schedule", "linear")
    meta.setdefault("T", 1000)
    meta.setdefault("variance", "learned_range" if adm.get("learn_sigma", True) else "fixed_small")
    meta.setdefault("image_shape", [c, size, size])
    return meta


def _read_pt(path: Path) -> dict:
    """``torch.load(weights_only=True)``: anything needing arbitrary unpickling is refused."""
    obj = load_tensors_only(path)
    if not isinstance(obj, dict):
        raise IntegrityError(f"{path} holds a {type(obj).__name__}, not a dict")
    return obj


def _is_adm_state(obj: dict) -> bool:
    return all(k in obj for k in ADM_MARKERS)


def _load_adm(
    obj: dict, path: Path, meta: dict, sha: str, device: str | torch.device
) -> DiffusionPrior:
    bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise IntegrityError(
            f"{path} is not a plain state_dict of tensors (entry {bad[0]!r} holds a "
            f"{type(obj[bad[0]]).__name__}); official ADM checkpoints are flat tensor dicts"
        )
    meta = dict(meta)
    meta.setdefault("name", path.stem)
    meta.setdefault("domain", meta["name"])
    return _build(meta, obj, str(path), sha, device)


def _adm_sidecar(path: Path) -> dict | None:
    """``X.json`` beside ``X.pt`` as an ADM config, if it is one (a JSON object with an ``adm``
    dict or a ``preset``); an unrelated file of that name (run notes, another tool's config) is
    not read as one."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        meta = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(meta, dict) or not (isinstance(meta.get("adm"), dict) or "preset" in meta):
        return None
    return adm_config(meta)


def _load_pt(
    path: Path, config: str | Path | dict | None, sha256: str | None, device: str | torch.device
) -> DiffusionPrior:
    """A ``.pt`` file: an ADM checkpoint (with a config) or a diffinv training checkpoint."""
    sidecar = path.with_suffix(".json")
    meta = adm_config(config) if config is not None else _adm_sidecar(path)
    sha = sha256_file(path)
    pinned = sha256 or (meta or {}).get("sha256")
    if pinned and pinned.lower() != sha:
        raise IntegrityError(
            f"{path} has SHA-256 {sha[:12]}..., but {pinned[:12]}... was pinned "
            "(truncated or replaced weights?)"
        )
    obj = _read_pt(path)
    if meta is not None:
        return _load_adm(obj, path, meta, sha, device)
    if _is_adm_state(obj):
        beside = (f" (the {sidecar.name} beside it is not one: no 'adm' dict or 'preset')"
                  if sidecar.is_file() else "")
        raise DiffinvError(
            f"{path} looks like a guided-diffusion (ADM) checkpoint but has no config{beside}: "
            f"pass config=PRESET (one of {', '.join(sorted(ADM_PRESETS))}), a JSON file or a "
            f"dict, or put an ADM config {sidecar.name} beside it"
        )
    return _from_training_state(obj, path, sha, device)


def load_prior(
    name_or_path: str | Path,
    device: str | torch.device = "cpu",
    *,
    config: str | Path | dict | None = None,
    sha256: str | None = None,
    precision: str = "fp32",
) -> DiffusionPrior:
    """A :class:`DiffusionPrior` (or a :class:`~diffinv.flow.prior.FlowPrior` for a flow
    card, checkpoint or diffusers flow folder) from an embedded name or a file path (see module
    docstring).

    ``config`` (ADM ``.pt`` files only) names a preset, a JSON file or a dict; ``sha256`` pins
    the weights file's SHA-256; ``precision`` is the network arithmetic ("fp32" or "bf16", see
    :meth:`DiffusionPrior.set_precision`).
    """
    check_device(device, "device")
    return _load(name_or_path, device, config, sha256).set_precision(precision)


def _load(name_or_path: str | Path, device: str | torch.device,
          config: str | Path | dict | None, sha256: str | None) -> DiffusionPrior:
    name = str(name_or_path)
    known = available_priors()
    path = Path(name)
    if config is not None and not (path.is_file() and path.suffix in (".pt", ".pth", ".ckpt")):
        raise DiffinvError(f"config= applies to ADM .pt checkpoints only, not to {name!r}")
    if name in known:
        return _load_safetensors(embedded_dir() / f"{name}.safetensors", device, sha256)
    if path.is_dir():
        from diffinv.diffusion.diffusers_folder import is_diffusers_folder, load_diffusers_prior
        from diffinv.latent.diffusers import is_latent_folder, load_latent_diffusers

        if is_latent_folder(path):
            return load_latent_diffusers(path, device, sha256)
        if is_diffusers_folder(path):
            return load_diffusers_prior(path, device, sha256)
        raise DiffinvError(f"{path} is a folder but not a diffusers UNet folder (config.json, or "
                           "unet/config.json with scheduler/scheduler_config.json)")
    if path.is_file():
        if path.suffix == ".safetensors":
            return _load_safetensors(path, device, sha256)
        if path.suffix in (".pt", ".pth", ".ckpt"):
            return _load_pt(path, config, sha256, device)
        raise DiffinvError(f"{path}: unknown prior file type (expected .safetensors or .pt)")
    if path.suffix or "/" in name:
        raise DiffinvError(f"prior file {path} does not exist")
    raise UnknownNameError("prior", name, known)
