"""Job kind "prior-quality": FID of a prior's samples, its floor, and digit-classifier confidence.

Grid axes: ``priors`` (names or ``{name, path}`` tables, identified by their weights' SHA-256) and
``samplers`` (diffusion priors: ``{name = "ddim", steps = 100, eta = 0.0}`` or ``"ddpm"``; flow
priors: ``{name = "euler", steps = 50}``, ``"heun"`` or ``{name = "dopri5", rtol = 1e-4, atol =
1e-4}``, the ODE solvers of :meth:`diffinv.flow.FlowPrior.sample`). One unit is one whole
evaluation (``evaluations`` = 1 per cell):

1. draw ``n_samples`` samples, sample i from the generator ``image_seed(seed, i)``; they are
   cached in chunks under ``$DIFFINV_CACHE/prior-quality/`` so an interrupted evaluation resumes
   where it stopped;
2. ``fid``: FID of the samples against the reference split's images 0..N-1 (DESIGN.md: gray
   repeated to 3 channels, bilinear resize to 299, the pinned TF Inception network);
3. ``fid-floor``: FID of the training split's images 0..N-1 against the same reference: what a
   perfect prior would score at this N (FID at small N is biased upwards);
4. ``conf>0.9`` (MNIST-domain priors only; NaN otherwise): fraction of samples the ``ccexam``
   classifier assigns a class with probability > 0.9;
5. ``memorised`` (only when the task lists it; not in the default metrics): the share of the
   samples whose nearest training image is closer than a third of the distance to the second
   nearest (L2 in pixel space; :mod:`diffinv.metrics.memorisation`, the rule of Yoon et al. 2023
   and Gu et al. 2023), against the images the prior was trained on: the first N images of the
   train split of the data set its card names, N being the card's ``train_images`` (else the
   ``[:N]`` of its ``trained_on``). A card that records neither (the embedded priors, exports
   made before the trainers recorded N) is measured against the whole train split, and the row's
   ``extra`` says so (``memorised_against``). The per-sample ratios and nearest indices are kept
   beside the cached samples.

NFE is per sample (the sampler's network calls), and seconds are the sampling time of the whole
evaluation (a resumed evaluation counts only what it sampled).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffinv.bench.errors import BenchConfigError
from diffinv.bench.jobs import RunContext, UnitResult, register_job_kind
from diffinv.bench.kinds.common import (
    AXIS_HELP,
    THREADS_HELP,
    cached_prior,
    prior_source,
    resolve_identity,
)
from diffinv.bench.spec import Cell, Entry
from diffinv.errors import UnknownNameError

#: what a task file gets when it lists no metrics (``memorised`` must be asked for by name)
DEFAULT_METRICS = ("fid", "fid-floor", "conf>0.9", "samples")
METRICS = DEFAULT_METRICS + ("memorised",)
#: a card's ``trained_on``: "DATASET:train", or "DATASET:train[:N]" for the first N images
TRAINED_ON = re.compile(r"(?P<dataset>[\w-]+):train(?:\[:(?P<n>\d+)\])?")
#: samplers of diffusion priors (DDIM/DDPM) and of flow priors (ODE solvers)
DIFFUSION_SAMPLERS = ("ddim", "ddpm")
FLOW_SAMPLERS = ("euler", "heun", "dopri5")
SAMPLERS = DIFFUSION_SAMPLERS + FLOW_SAMPLERS


def _number(entry: Entry, key: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise BenchConfigError(f"sampler {entry.label!r}: {key} must be a number in [{low:g}, "
                               f"{high:g}]; got {value!r}")
    return float(value)


def _sampler(entry: Entry) -> dict[str, Any]:
    """The keyword arguments of ``prior.sample`` for a sampler entry (checked)."""
    if entry.name not in SAMPLERS:
        raise UnknownNameError("sampler", entry.name, list(SAMPLERS))
    params = dict(entry.params)
    if entry.name in DIFFUSION_SAMPLERS:
        allowed = {"steps", "eta"}
    else:
        allowed = {"rtol", "atol"} if entry.name == "dopri5" else {"steps"}
    bad = set(params) - allowed
    if bad:
        raise BenchConfigError(f"sampler {entry.label!r}: unknown key(s) {sorted(bad)} (a "
                               f"{entry.name} sampler takes {sorted(allowed)})")
    out: dict[str, Any] = {"method": entry.name}
    if "steps" in allowed:
        steps = params.get("steps", 100 if entry.name in DIFFUSION_SAMPLERS else 50)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise BenchConfigError(f"sampler {entry.label!r}: steps must be an integer >= 1; got "
                                   f"{steps!r}")
        out["steps"] = steps
    if entry.name in DIFFUSION_SAMPLERS:
        out["eta"] = _number(entry, "eta", params.get("eta", 0.0), 0.0, 1.0)
    if entry.name == "dopri5":
        for key in ("rtol", "atol"):
            out[key] = _number(entry, key, params.get(key, 1e-4), 1e-12, 1.0)
    return out


def _check_pairing(sampler: dict[str, Any], prior: Any, sampler_label: str,
                   prior_label: str) -> None:
    """A flow prior takes an ODE solver, a diffusion prior DDIM/DDPM; anything else is refused."""
    flow = getattr(prior, "kind", "") == "flow"
    want = FLOW_SAMPLERS if flow else DIFFUSION_SAMPLERS
    if sampler["method"] not in want:
        raise BenchConfigError(f"sampler {sampler_label!r} ({sampler['method']}) cannot sample "
                               f"the {'flow' if flow else 'diffusion'} prior {prior_label!r}; "
                               f"use one of {list(want)}")


def validate(ctx: RunContext, cells: Sequence[Cell]) -> None:
    from diffinv.data import SPLITS

    for m in ctx.metrics:
        if m not in METRICS:
            raise UnknownNameError("prior-quality metric", m, list(METRICS))
    n = ctx.options["n_samples"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise BenchConfigError(f"[run] n_samples must be an integer >= 2; got {n!r}")
    for key in ("reference", "floor"):
        if ctx.options[key] not in SPLITS:
            raise UnknownNameError("split", ctx.options[key], list(SPLITS))
    for key, least in (("chunk", 1), ("threads", 0)):
        v = ctx.options[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise BenchConfigError(f"[run] {key} must be an integer >= {least}; got {v!r}")
    for cell in cells:
        _sampler(cell["sampler"])
        prior_source(cell["prior"])


def rehearse(ctx: RunContext, cells: Sequence[Cell]) -> None:
    """What needs the loaded prior, before the first row: the sampler's steps against the prior's
    schedule, and ``n_samples`` against the reference and floor splits of the prior's domain."""
    from diffinv.data import load_split

    for cell in cells:
        prior = cached_prior(ctx, cell["prior"])
        sampler = _sampler(cell["sampler"])
        _check_pairing(sampler, prior, cell["sampler"].label, cell["prior"].label)
        diffusion = prior.latent if getattr(prior, "kind", "") == "latent" else prior
        most = (int(diffusion.num_timesteps) if sampler["method"] in DIFFUSION_SAMPLERS
                else sampler.get("steps", 0))
        if sampler.get("steps", 0) > most:
            raise BenchConfigError(f"sampler {cell['sampler'].label!r}: steps must lie in "
                                   f"1..{most} for prior {cell['prior'].label!r}; got "
                                   f"{sampler['steps']}")
        n = int(ctx.options["n_samples"])
        for key in ("reference", "floor"):
            have = len(load_split(prior.domain, ctx.options[key]))
            if have < n:
                raise BenchConfigError(f"n_samples {n} exceeds the {have} images of the "
                                       f"{ctx.options[key]} split of {prior.domain}")
        if "memorised" in ctx.metrics:
            _training_images(ctx, prior, cell["prior"])


def training_set(prior: Any, entry: Entry) -> tuple[str, int | None]:
    """``(data set, N)``: the prior was trained on the first N images of the data set's train
    split (N = 0: all of them), as its card records it: ``train_images``, else the ``[:N]`` of
    ``trained_on``. N is None where the card records neither. The card is the JSON file beside a
    ``.safetensors`` prior (or an embedded one's), and what a loaded flow or latent prior keeps of
    it (``prior.info``); the data set is the one ``trained_on`` names, else the prior's domain."""
    from diffinv.diffusion.zoo import available_priors, embedded_dir

    src = prior_source(entry)
    side = (embedded_dir() / f"{src}.json" if src in available_priors()
            else Path(src).with_suffix(".json") if Path(src).suffix == ".safetensors" else None)
    card: dict[str, Any] = {}
    if side is not None and side.is_file():
        loaded = json.loads(side.read_text())
        card = loaded if isinstance(loaded, dict) else {}
    card = {**card, **(getattr(prior, "info", None) or {})}
    match = TRAINED_ON.fullmatch(str(card.get("trained_on", "")))
    dataset = match["dataset"] if match else prior.domain
    n = card.get("train_images")
    if n is None and match and match["n"]:
        n = int(match["n"])
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise BenchConfigError(f"prior {entry.label!r}: its card's train_images must be an "
                               f"integer >= 0; got {n!r}")
    return dataset, n


def _training_images(ctx: RunContext, prior: Any, entry: Entry) -> tuple[Any, str]:
    """The images ``memorised`` compares the samples with, and a line saying which they are."""
    from diffinv.data import load_split

    dataset, n = training_set(prior, entry)
    split = ctx.cached(f"data:{dataset}:train", lambda: load_split(dataset, "train"))
    if n is not None and n > len(split):
        raise BenchConfigError(f"prior {entry.label!r} was trained on {n} images of {dataset}, but "
                               f"its train split has {len(split)}")
    if n:
        return split.images[:n], f"{dataset}:train[:{n}]"
    return split.images, (f"{dataset}:train (all {len(split)} images"
                          + ("" if n == 0 else ": the prior's card does not record train_images")
                          + ")")


def _memorised(ctx: RunContext, prior: Any, entry: Entry, x: Any, cache: Path
               ) -> tuple[float, dict[str, Any]]:
    """The ``memorised`` rate of samples ``x``, with the row's notes; the per-sample ratios and
    nearest training indices are cached beside the samples (they do not depend on the threshold)."""
    from safetensors.torch import load_file, save_file

    from diffinv.metrics.memorisation import MEMORISATION_THRESHOLD, memorisation_rate

    train, against = _training_images(ctx, prior, entry)
    tag = re.sub(r"[^\w.-]", "_", against.split(" ")[0])
    path = cache / f"memorisation_{len(x)}_{tag}.safetensors"
    if path.is_file():
        ratios = load_file(str(path))["ratios"]
    else:
        m = memorisation_rate(x, train, MEMORISATION_THRESHOLD)
        ratios = m.ratios
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({"ratios": m.ratios.contiguous(), "nearest": m.nearest.contiguous()}, str(tmp),
                  metadata={"against": against})
        os.replace(tmp, path)
    rate = float((ratios < MEMORISATION_THRESHOLD).double().mean())
    return rate, {"memorised_against": against, "memorised_threshold": MEMORISATION_THRESHOLD,
                  "memorisation_cache": str(path)}


def _cache_root() -> Path:
    return Path(os.environ.get("DIFFINV_CACHE", Path.home() / ".cache" / "diffinv")) / "prior-quality"


def reference_cache_dir() -> Path:
    """Where the reference and floor statistics (and tools' reference features) are cached."""
    return _cache_root() / "reference"


def _cache_dir(sha: str, sampler: dict[str, Any], seed: int) -> Path:
    tag = hashlib.sha256(json.dumps([sha, sampler, seed], sort_keys=True).encode()).hexdigest()[:16]
    return _cache_root() / tag


def draw_samples(prior: Any, n: int, seed: int, sampler: dict[str, Any], chunk: int,
                 cache: Path | None = None, progress: bool = True) -> Any:
    """n samples (sample i from ``image_seed(seed, i)``), resumable through ``cache`` chunks."""
    return _draw(prior, n, seed, sampler, chunk, cache, progress)[0]


def _draw(prior: Any, n: int, seed: int, sampler: dict[str, Any], chunk: int,
          cache: Path | None, progress: bool) -> tuple[Any, float | None]:
    """The samples and the network evaluations each sample cost (None when unknown).

    A chunk's batched network calls are each one evaluation per sample of the chunk; the count is
    stored in the chunk file's metadata so a fully cached evaluation still reports it.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from diffinv.seeding import image_generators

    parts, nfe = [], None
    for start in tqdm(range(0, n, chunk), desc="samples", disable=not progress):
        idx = list(range(start, min(n, start + chunk)))
        path = cache / f"chunk_{start:06d}_{len(idx)}.safetensors" if cache else None
        if path is not None and path.is_file():
            with safe_open(str(path), framework="pt") as f:
                parts.append(f.get_tensor("x"))
                stored = (f.metadata() or {}).get("nfe_per_sample")
            if nfe is None and stored is not None:
                nfe = float(stored)
            continue
        before = prior.nfe
        x = prior.sample(len(idx), seed=image_generators(seed, idx), **sampler).cpu()
        nfe = float(prior.nfe - before)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            save_file({"x": x.contiguous()}, str(tmp), metadata={"nfe_per_sample": str(int(nfe))})
            os.replace(tmp, path)
        parts.append(x)
    return torch.cat(parts), nfe


def _sample_features(x: Any, cache: Path) -> Any:
    """The Inception features of the samples ``x``, kept beside the cached samples
    (``features.safetensors``, with the samples' fingerprint): a rerun does not recompute them,
    and tools can re-use them (KID with intervals: ``benchmarks/tools/prior_kid.py``)."""
    from diffinv.metrics.fid import cached_features

    return cached_features(x, cache / "features.safetensors", progress=True)


def run(ctx: RunContext, cell: Cell, indices: Sequence[int]) -> list[UnitResult]:
    import time

    import torch

    from diffinv.data import load_split
    from diffinv.metrics.digits import confident_fraction
    from diffinv.metrics.fid import feature_statistics, frechet_distance, reference_statistics

    if ctx.options["threads"]:
        ctx.cached("threads", lambda: torch.set_num_threads(ctx.options["threads"]))
    prior = cached_prior(ctx, cell["prior"])
    sampler = _sampler(cell["sampler"])
    _check_pairing(sampler, prior, cell["sampler"].label, cell["prior"].label)
    n = int(ctx.options["n_samples"])
    domain = prior.domain
    ref = load_split(domain, ctx.options["reference"]).images[:n]
    floor = load_split(domain, ctx.options["floor"]).images[:n]
    if len(ref) < n or len(floor) < n:
        raise BenchConfigError(f"n_samples {n} exceeds the reference or floor split of {domain}")
    cache = _cache_dir(str(prior.sha256), sampler, ctx.seed)
    stats_dir = reference_cache_dir()
    out = []
    for _ in indices:
        t0 = time.perf_counter()
        x, nfe = _draw(prior, n, ctx.seed, sampler, int(ctx.options["chunk"]), cache, True)
        seconds = time.perf_counter() - t0
        ref_stats = reference_statistics(ref, stats_dir / f"{domain}-{ctx.options['reference']}-{n}.npz",
                                         progress=True)
        floor_stats = reference_statistics(floor, stats_dir / f"{domain}-{ctx.options['floor']}-{n}.npz",
                                           progress=True)
        mu, sigma = feature_statistics(_sample_features(x, cache))
        fid = frechet_distance(mu, sigma, ref_stats["mu"], ref_stats["sigma"])
        fid_floor = frechet_distance(floor_stats["mu"], floor_stats["sigma"], ref_stats["mu"],
                                     ref_stats["sigma"])
        conf = confident_fraction(x) if domain.startswith("mnist") else math.nan
        metrics = {"fid": fid, "fid-floor": fid_floor, "conf>0.9": conf, "samples": float(n)}
        extra: dict[str, Any] = {"sample_cache": str(cache)}
        if "memorised" in ctx.metrics:  # only when asked: rows of other runs stay as they were
            metrics["memorised"], notes = _memorised(ctx, prior, cell["prior"], x, cache)
            extra.update(notes)
        out.append(UnitResult(metrics=metrics, nfe=nfe, seconds=seconds, extra=extra))
    return out


register_job_kind(
    "prior-quality", run,
    axes=["prior", "sampler"], replicate="evaluation", target_key="evaluations", default_target=1,
    options={"n_samples": 2000, "reference": "test", "floor": "train", "chunk": 250, "threads": 0},
    identity=("n_samples", "reference", "floor"),
    metrics=DEFAULT_METRICS, statistic="mean", validate=validate, resolve=resolve_identity,
    rehearse=rehearse,
    description="FID of a prior's samples against held-out images, with the train-vs-test floor",
    help={"prior": AXIS_HELP["prior"],
          "sampler": " or ".join(f'"{s}"' for s in SAMPLERS)
                     + ", or a table with name, steps (default 100) and eta (default 0)",
          "evaluations": "evaluations per cell (one is one whole FID evaluation)",
          "n_samples": "samples drawn per evaluation (sample i from the seed of (seed, i))",
          "reference": "the split the samples are compared with (its images 0 .. n_samples - 1)",
          "floor": "the split compared with the reference to give the FID floor",
          "chunk": "samples per cached chunk (an interrupted evaluation resumes from the cache)",
          "threads": THREADS_HELP,
          "metrics": f"any of {', '.join(METRICS)} (memorised: the share of samples whose nearest "
                     "training image is < 1/3 as far as the second nearest);"},
)
