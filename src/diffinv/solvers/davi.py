r"""DAVI: amortised one-step posterior sampling (Lee, Park, Kong, Kim; ECCV 2024).

A generator ``I_phi`` trained per task by ``diffinv train-davi`` (:mod:`diffinv.learn.davi_trainer`)
maps the perturbed measurement to a posterior sample in **one network call** (official
``eval_util.py``)::

    y'   = lift(y)                         (blur: y; SR: bilinear resize or A^+ y; inpainting: A^T y)
    x_in = mu_x0(a) y' + mu_x1(a) y' + (1 - abar_a) h eps = y' + (1 - abar_a) h eps,   a = T - 1
    x    = tanh(x_in - sigma_f(a) net_phi(x_in, a))                (sigma_f(999) = 1.481)

with ``eps`` drawn from each image's own generator (a seed reproduces a run; batching changes
nothing), ``h`` = the card's ``perturb_h`` (0.1). The generator (EMA weights) is a safetensors file
with a JSON card; the shipped ones lie in ``diffinv/generators/``, found by (prior, operator). A
generator is tied to what it was trained for: its prior's weights (SHA-256), the operator and its
settings, the image shape; any mismatch is refused naming both sides. A noise level other than the
card's is accepted with a warning (the generator was trained for one sigma).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffinv.errors import DiffinvError, IntegrityError, MissingAssetError
from diffinv.learn.davi_ppb import OneStepGenerator, PPBSchedule, lift_measurement
from diffinv.seeding import randn
from diffinv.solvers._common import check_finite, unpack
from diffinv.solvers.base import Result, Solver, register_solver


def generators_dir() -> Path:
    """The folder of the shipped DAVI generators (``davi-PRIOR-OPERATOR.safetensors`` + card)."""
    return Path(str(resources.files("diffinv") / "generators"))


def shipped_generators() -> list[dict[str, Any]]:
    """The cards of the shipped generators (with their ``path``)."""
    out = []
    for card in sorted(generators_dir().glob("davi-*.json")):
        meta = json.loads(card.read_text())
        if card.with_suffix(".safetensors").is_file():
            out.append({**meta, "path": str(card.with_suffix(".safetensors"))})
    return out


def _generator_file(path: Path) -> Path:
    """The weights file a user named: the file itself, the weights beside a card ``.json``, or
    the one generator in a folder (what ``diffinv train-davi --export DIR`` writes)."""
    if path.is_dir():
        found = sorted(p for p in path.glob("*.safetensors") if p.with_suffix(".json").is_file())
        if len(found) != 1:
            names = ", ".join(p.name for p in found)
            raise DiffinvError(f"{path} is a folder that holds {len(found)} DAVI generators"
                               + (f" ({names}): name one of them" if found else
                                  " (NAME.safetensors with its card NAME.json)"))
        return found[0]
    if path.suffix == ".json" and path.is_file():
        return path.with_suffix(".safetensors")
    return path


def read_card(path: str | Path) -> dict[str, Any]:
    """The card beside a generator file, with its SHA-256 checked. ``path`` is the weights file
    (``NAME.safetensors``), its card (``NAME.json``) or a folder holding one generator."""
    from diffinv.assets import sha256_file

    named = Path(path)
    path = _generator_file(named)
    card_path = path.with_suffix(".json")
    if not path.exists():
        raise MissingAssetError(f"DAVI generator {path} does not exist"
                           + (f" (the card {named} names no weights beside it)"
                              if path != named else ""))
    if not path.is_file():
        raise DiffinvError(f"DAVI generator {path} is not a file")
    if not card_path.is_file():
        raise DiffinvError(f"DAVI generator {path} has no card {card_path.name} beside it (the "
                           "JSON that `diffinv train-davi --export` writes with the weights)")
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{card_path} is not valid JSON: {e}") from e
    if not isinstance(card, dict):
        raise IntegrityError(f"{card_path} does not hold a JSON object (a DAVI generator card)")
    if card.get("method") != "davi":
        raise IntegrityError(f"{card_path} is not a DAVI generator card")
    lacking = [k for k in ("task", "operator_config", "image_shape") if k not in card]
    if lacking:
        raise IntegrityError(f"{card_path} lacks {', '.join(map(repr, lacking))} (a DAVI "
                             "generator card names the task it was trained for)")
    sha = sha256_file(path)
    if card.get("sha256") and card["sha256"] != sha:
        raise IntegrityError(f"{path} has SHA-256 {sha[:12]}..., but its card expects "
                             f"{card['sha256'][:12]}... (truncated or replaced weights?)")
    return {**card, "path": str(path)}


def _norm(cfg: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(cfg))


def check_match(card: dict[str, Any], op_name: str, op_config: dict[str, Any], prior: Any,
                image_shape: Sequence[int]) -> None:
    """Refuse a generator trained for another task, operator setting, prior or image size."""
    who = f"DAVI generator {Path(card['path']).name}"
    shape = list(int(v) for v in image_shape)
    if card["task"] != op_name:
        raise DiffinvError(f"{who} was trained for operator {card['task']!r} but the measurement "
                           f"is {op_name!r}; train one with `diffinv train-davi`")
    if _norm(card["operator_config"]) != _norm(op_config):
        raise DiffinvError(f"{who} was trained for {card['task']} with settings "
                           f"{card['operator_config']}, but the measurement's are {op_config}")
    if list(card["image_shape"]) != shape:
        raise DiffinvError(f"{who} was trained on images {card['image_shape']} but the "
                           f"measurement's images are {shape}")
    sha = getattr(prior, "sha256", None)
    if card.get("prior_sha256") and sha and card["prior_sha256"] != sha:
        raise DiffinvError(f"{who} was trained with prior {card['prior']!r} (weights "
                           f"{card['prior_sha256'][:12]}...), but the prior given is "
                           f"{getattr(prior, 'name', '?')!r} ({sha[:12]}...)")
    if not sha and card.get("prior") != getattr(prior, "name", None):
        raise DiffinvError(f"{who} was trained with prior {card['prior']!r}, but the prior given "
                           f"is {getattr(prior, 'name', '?')!r}")


def find_generator(prior: Any, op_name: str) -> dict[str, Any]:
    """The shipped generator card for (prior, operator), or an error listing the shipped ones."""
    cards = shipped_generators()
    for c in cards:
        if c["task"] == op_name and (c.get("prior_sha256") == getattr(prior, "sha256", None)
                                     or c.get("prior") == getattr(prior, "name", None)):
            return read_card(c["path"])
    have = ", ".join(f"{c['prior']}/{c['task']}" for c in cards) or "none"
    raise DiffinvError(f"no DAVI generator is shipped for prior {getattr(prior, 'name', '?')!r} "
                       f"and operator {op_name!r} (shipped: {have}); train one with "
                       f"`diffinv train-davi --task ... --export DIR` and pass "
                       f"-p generator=DIR/davi-....safetensors")


@register_solver("davi")
class DAVI(Solver):
    """One network call per batch with the task's trained generator."""

    summary = ("DAVI: amortised one-step sampler trained per task (diffinv train-davi); "
               "shipped for fashion32")
    requires = ("linear",)
    needs = ("a DAVI generator trained for the prior and the operator with its settings "
             "(shipped: fashion32 with gaussian-blur, inpaint-box, sr-avgpool)",)

    def __init__(self, generator: str | None = None, perturb_h: float | None = None,
                 lift: str | None = None):
        if generator is not None:  # a wrong file is refused before anything runs
            generator = read_card(generator)["path"]
        self.generator, self.perturb_h, self.lift = generator, perturb_h, lift
        self._cache: dict[tuple, OneStepGenerator] = {}

    def _network(self, card: dict[str, Any], prior: Any) -> OneStepGenerator:
        import copy

        from safetensors.torch import load_file

        key = (card["path"], card.get("sha256"), id(prior.network), str(prior.device))
        if key not in self._cache:
            net = copy.deepcopy(prior.network)
            try:
                net.load_state_dict(load_file(card["path"]), strict=True)
            except RuntimeError as e:
                raise IntegrityError(f"DAVI generator {card['path']} does not fit the prior "
                                     f"{prior.name!r}'s network: {e}") from e
            gen = OneStepGenerator(net, PPBSchedule(int(card.get("ppb", {}).get("T", 1000))))
            self._cache = {key: gen.eval().requires_grad_(False).to(prior.device)}
        return self._cache[key]

    def solve(self, y: Tensor, physics: Any, prior: Any,
              generators: Sequence[torch.Generator]) -> tuple[Tensor, dict[str, Any]]:
        problem = unpack(self, y, physics, prior)
        op_name = problem.op_name
        card = read_card(self.generator) if self.generator else find_generator(prior, op_name)
        check_match(card, op_name, problem.operator.config(), prior, problem.image_shape[1:])
        noise = problem.noise
        if getattr(noise, "spec", lambda: "")() != card.get("noise"):
            warnings.warn(f"DAVI generator {Path(card['path']).name} was trained for noise "
                          f"{card.get('noise')}; the measurement has {noise.spec()}",
                          RuntimeWarning, stacklevel=2)
        gen = self._network(card, prior)
        h = float(self.perturb_h if self.perturb_h is not None else card.get("perturb_h", 0.1))
        lift = self.lift or card.get("lift", "bilinear")
        shape = problem.image_shape[1:]
        with torch.no_grad():
            y_img = lift_measurement(op_name, problem.operator, y, problem.params, shape, lift)
            eps = randn(shape, generators, device=y.device, dtype=y.dtype)
            a = torch.full((y.shape[0],), gen.schedule.T - 1, dtype=torch.long)
            x_in = gen.schedule.sample(y_img, y_img, a, h, eps)
            x = gen(x_in, a)
        check_finite(self.name, x, x_in, 0, int(a[0]))
        return x, {"generator": Path(card["path"]).name, "generator_sha256": card.get("sha256"),
                   "generator_nfe": 1, "backward_nfe": 0, "perturb_h": h, "lift": lift}

    def __call__(self, y: Tensor, physics: Any, prior: Any,
                 seed: int | Sequence[torch.Generator] = 0) -> Result:
        res = super().__call__(y, physics, prior, seed)
        res.nfe += int(res.trace["generator_nfe"])  # the generator is not the prior's network
        return res
