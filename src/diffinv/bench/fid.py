"""FID of the restorations of a "restore" table: ``diffinv bench TASK.toml --fid N``.

FID is a property of a set of images, not of one image, so it is not a column of the per-image
rows. ``--fid N`` recomputes images ``0 .. N-1`` of every cell (or of the cells ``--only``
selects) exactly as the table's rows are computed (:func:`diffinv.bench.kinds.restore.
restore_batch`: the same measurement of image ``i``, the same per-image solver generator), in
batches of the run's ``batch_size`` (or ``--batch-size``), and keeps the 2048-d Inception pool
features of each restoration (:mod:`diffinv.metrics.fid`). N may exceed the table's
``n_images``: FID wants many images (1,000 here; at small N it is strongly biased upwards).

For each cell it reports

* ``FID``: restorations of images 0..N-1 against the true images 0..N-1 (the protocol of DDRM and
  DAVI: the ground-truth set of the same split as reference);
* ``floor``: the first N images of the *training* split against the same reference: what a
  method whose outputs were perfect samples of the data distribution (but not of the right
  images) scores at this N; it shows how much of a small-N FID is bias;
* the mean PSNR over the same N images and the solver's seconds/image, as a check that the
  recomputed restorations are those of the table (its first rows are images 0..n_images-1).

Resumable and shardable: the features of each batch are saved as
``NAME_fid/features/<cell>/<first>-<last>.npz`` (the cell's directory name carries a digest of
its identity, so a changed method recomputes) as soon as the batch is done; a rerun computes only
the missing batches. ``--shard I/K`` computes batches ``j`` with ``j % K == I``. The report
``NAME_fid.md`` / ``NAME_fid.json`` lists every selected cell, with the FID of the cells whose N
features are all present and the count done for the others. The features are not results to
commit (8 KB per image); the report is.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffinv.bench.errors import BenchConfigError
from diffinv.bench.gallery import file_slug, restore_context, restore_plan
from diffinv.bench.plan import Plan, parse_shard, select_cells
from diffinv.bench.spec import Cell, digest

FEATURES_DIR = "features"


@dataclass
class FidCell:
    """One line of the FID report."""

    labels: tuple[str, ...]
    done: int
    target: int
    fid: float | None = None
    psnr: float | None = None
    seconds_per_image: float | None = None


@dataclass
class FidReport:
    """What :func:`make_fid` wrote."""

    markdown: Path
    json: Path
    n_images: int
    floor: float | None
    cells: list[FidCell] = field(default_factory=list)


def batches(n_images: int, batch_size: int) -> list[list[int]]:
    """Image indices 0..n-1 in consecutive batches of ``batch_size`` (the last may be short)."""
    return [list(range(s, min(s + batch_size, n_images))) for s in range(0, n_images, batch_size)]


def _batch_file(folder: Path, indices: Sequence[int]) -> Path:
    return folder / f"{indices[0]:05d}-{indices[-1]:05d}.npz"


def _save(path: Path, **arrays: Any) -> None:
    """Write atomically (a killed run leaves no half-written batch)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _gather(folder: Path, chunks: Sequence[Sequence[int]]) -> dict[str, np.ndarray] | None:
    """The concatenated arrays of every chunk, or None while one is missing."""
    parts = []
    for idx in chunks:
        p = _batch_file(folder, idx)
        if not p.is_file():
            return None
        parts.append(_load(p))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _count_done(folder: Path, chunks: Sequence[Sequence[int]]) -> int:
    return sum(len(idx) for idx in chunks if _batch_file(folder, idx).is_file())


def _first_images(plan: Plan, split: str | None, n: int) -> Any:
    """Images 0..n-1 of the run's dataset (or of another ``split`` of it), in [-1, 1]; refuses an
    ``n`` the split does not have."""
    from diffinv.data import load_split

    name, _, own = str(plan.options.get("dataset", "")).partition(":")
    data = load_split(name, split or own)
    if n > len(data):
        raise BenchConfigError(f"--fid {n} asks for more images than {name}:{split or own} has "
                               f"({len(data)})")
    return data.images[:n]


def _reference_features(plan: Plan, root: Path, split: str | None, n: int, batch: int,
                        shard: tuple[int, int], device: Any) -> dict[str, np.ndarray] | None:
    """Inception features of images 0..n-1 of the run's split (``split=None``) or of ``split``."""
    from diffinv.metrics.fid import inception_features

    name, _, own = str(plan.options.get("dataset", "")).partition(":")
    folder = root / FEATURES_DIR / file_slug(f"data-{name}-{split or own}")
    chunks = batches(n, batch)
    mine = [idx for j, idx in enumerate(chunks)
            if j % shard[1] == shard[0] and not _batch_file(folder, idx).is_file()]
    if mine:
        images = _first_images(plan, split, n)  # loaded once, not per batch
        for idx in mine:
            feats = inception_features(images[idx[0]:idx[-1] + 1], device=device)
            _save(_batch_file(folder, idx), features=feats.numpy())
    return _gather(folder, chunks)


def make_fid(task_path: str | os.PathLike[str], n_images: int, *,
             only: Sequence[str] | None = None, shard: str | None = None,
             batch_size: int | None = None, progress: bool = True) -> FidReport:
    """Compute (or resume) the FID report of a "restore" task file (see the module docstring)."""
    from tqdm import tqdm

    from diffinv.bench.kinds import restore
    from diffinv.metrics import psnr
    from diffinv.metrics.fid import fid_from_features, inception_features

    plan = restore_plan(task_path, "--fid scores restorations", n_images, 2,
                        "a number of images >= 2")
    part = parse_shard(shard) if shard else (0, 1)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise BenchConfigError(f"bad batch size {batch_size!r}: expected an integer >= 1")
    batch = int(batch_size or plan.batch_size)
    cells = select_cells(plan.cells, only)
    ctx, resolved = restore_context(plan, cells)
    _first_images(plan, None, n_images)  # enough images? (before any work)
    root = plan.out_dir / f"{plan.name}_fid"
    chunks = batches(n_images, batch)

    todo: list[tuple[Cell, Path, list[int]]] = []
    folders: dict[tuple[str, ...], Path] = {}
    for cell in cells:
        ident = plan.cell_identity(cell, resolved)
        key = digest({"cell": plan.cell_key(cell), "identity": ident, "batch": batch}, 10)
        folder = root / FEATURES_DIR / file_slug("_".join(cell.labels) + "-" + key)
        folders[tuple(cell.labels)] = folder
        for j, idx in enumerate(chunks):
            if j % part[1] == part[0] and not _batch_file(folder, idx).is_file():
                todo.append((cell, folder, idx))

    for cell, folder, idx in tqdm(todo, desc="fid batches", disable=not progress,
                                  file=sys.stderr):
        out = restore.restore_batch(ctx, cell, idx)
        x_hat = out.result.x.detach()
        feats = inception_features(x_hat, device=x_hat.device)
        _save(_batch_file(folder, idx), features=feats.numpy(),
              psnr=psnr(x_hat, out.x).detach().cpu().double().numpy(),
              seconds=np.full(len(idx), float(out.result.seconds) / len(idx)))

    ref = _reference_features(plan, root, None, n_images, batch, part, ctx.device)
    floor_feats = _reference_features(plan, root, "train", n_images, batch, part, ctx.device)
    floor = (fid_from_features(floor_feats["features"], ref["features"])
             if ref is not None and floor_feats is not None else None)
    report = FidReport(plan.out_dir / f"{plan.name}_fid.md", plan.out_dir / f"{plan.name}_fid.json",
                       n_images, floor)
    for cell in cells:
        folder = folders[tuple(cell.labels)]
        got = _gather(folder, chunks)
        line = FidCell(tuple(cell.labels), _count_done(folder, chunks), n_images)
        if got is not None and ref is not None:
            line.fid = fid_from_features(got["features"], ref["features"])
            line.psnr = float(np.mean(got["psnr"]))
            line.seconds_per_image = float(np.mean(got["seconds"]))
        report.cells.append(line)
    _write(plan, report, only, batch, cells[0].axes, str(ctx.device))
    return report


def _fmt(v: float | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def _write(plan: Plan, report: FidReport, only: Sequence[str] | None, batch: int,
           axes: Sequence[str], device: str) -> None:
    from diffinv.bench.machine import describe_machine, machine_info
    from diffinv.bench.runner import reproduce_command

    n = report.n_images
    cmd = f"{reproduce_command(plan.task.path)} --fid {n}" + "".join(
        f" --only {shlex.quote(s)}" for s in only or ())
    if batch != plan.batch_size:
        cmd += f" --batch-size {batch}"
    dataset = plan.options.get("dataset")
    lines = [
        f"# {plan.title}: FID on {n} images", "",
        f"- Command: {cmd} (resumable; `--shard I/K` splits the batches)",
        f"- Machine: {describe_machine(machine_info(device))}",
        f"- Images 0..{n - 1} of {dataset}, seed {plan.seed}, batches of {batch}: the same "
        "measurements and per-image solver randomness as the table's rows.",
        f"- FID: the restorations against the true images 0..{n - 1} (Inception-v3 pool "
        "features, diffinv.metrics.fid). floor: the first "
        f"{n} training images against the same reference = "
        f"{_fmt(report.floor, '.2f')} (what perfect samples of the data distribution score at this "
        "N; FID at small N is biased upwards, compare cells at equal N only).",
        "- PSNR and s/image: mean over the same images (the solver's own time).", "",
        "| " + " | ".join(axes) + " | FID | N | PSNR | s/image |",
        "|" + "---|" * len(axes) + "--:|--:|--:|--:|",
    ]
    for c in report.cells:
        count = f"{c.done}" if c.done == c.target else f"{c.done}/{c.target}*"
        lines.append("| " + " | ".join(c.labels) + f" | {_fmt(c.fid, '.2f')} | {count} | "
                     f"{_fmt(c.psnr, '.2f')} | {_fmt(c.seconds_per_image, '.3g')} |")
    if any(c.done < c.target for c in report.cells):
        lines += ["", "\\* incomplete: FID needs all N restorations (rerun the command)."]
    report.markdown.write_text("\n".join(lines) + "\n")
    report.json.write_text(json.dumps({
        "command": cmd, "n_images": n, "dataset": dataset, "seed": plan.seed, "batch": batch,
        "floor": report.floor,
        "cells": [{"labels": list(c.labels), "done": c.done, "fid": c.fid, "psnr": c.psnr,
                   "seconds_per_image": c.seconds_per_image} for c in report.cells]}, indent=1))
