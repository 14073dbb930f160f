"""Image galleries for "restore" tables: what the numbers of a table look like.

``diffinv bench TASK.toml --gallery K`` recomputes images ``0 .. K-1`` of every cell (or of the
cells ``--only`` selects) exactly as the table's rows were computed (same measurement of image
``i``, same per-image solver generator: :func:`diffinv.bench.kinds.restore.restore_batch`), and
draws one PNG per (task, prior): a row per image, the columns ``truth | y | one per method``, each
restoration captioned with its PSNR. Where methods estimate a kernel (``trace["kernel"]``), a
second PNG, ``TASK_kernels.png``, shows the true kernel (kernel-blur families) beside each
estimate, captioned with the kernel MSE. Nothing is added to the run's rows.

Because a solver's randomness is per image, the restorations are those the table scored, up to
float rounding, and that rounding depends on the batch *size*: a batched network call takes other
kernel paths for 1, 3 or 10 images. Over 1000 guided steps the difference grows: DPS on box
inpainting gave 17.23, 16.68 and 17.62 dB for the same image solved alone, in a batch of 3 and in
one of 10 (the table's row: 17.62; which other images share the batch did not matter). So each
image is recomputed in a batch of the size its row was computed in (filled up with other images
of the cell; the run's ``batch_size`` where there is no row), which reproduces the row. The
gallery checks it: where the run has a row for (cell, image) with the current identities, it
compares the recomputed PSNR with the row's and writes the largest difference into
``NAME_gallery.md``; a difference above ``tolerance_db`` (0.25 dB) is an error, since the picture
would then not show what the table measured. The cost: a cell of 1000-step DPS recomputes 10
images to draw 3.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffinv.bench.errors import BenchConfigError, BenchRecordError
from diffinv.bench.jobs import RunContext
from diffinv.bench.plan import Plan, load_plan, run_device, select_cells
from diffinv.bench.spec import Cell

TILE_SCALE = 3
HEADER_PX = 14
CAPTION_PX = 12


@dataclass
class Gallery:
    """What :func:`make_gallery` wrote and how the recomputed PSNRs agreed with the table's rows."""

    images: list[Path]
    markdown: Path
    compared: int = 0
    max_abs_diff_db: float = 0.0
    columns: dict[str, list[str]] = field(default_factory=dict)  # image file name -> labels


def file_slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "task"


def _tile(img: Any, size: int) -> Any:
    """A (C, h, w) tensor in [-1, 1] -> a PIL RGB tile of ``size`` x ``size`` (nearest)."""
    from PIL import Image

    from diffinv.data.images import to_uint8

    im = Image.fromarray(to_uint8(img.detach().float().cpu().clamp(-1, 1))).convert("RGB")
    return im.resize((size, size), Image.Resampling.NEAREST)


def draw_panel(columns: Sequence[Any], labels: Sequence[str],
               captions: Sequence[Sequence[str] | None], path: Path, title: str) -> Path:
    """Rows of images side by side, a label above each column and a caption under each tile.

    ``columns[j]`` is a (N, C, h, w) batch; tiles are enlarged (nearest) to the largest size
    times ``TILE_SCALE``; ``captions[j]`` is None or N strings.
    """
    from PIL import Image, ImageDraw, ImageFont

    n = columns[0].shape[0]
    size = max(c.shape[-1] for c in columns) * TILE_SCALE
    font = ImageFont.load_default()
    pad = 4
    width = max(size, 8 * max(len(s) for s in labels) + pad) + pad
    row_h = size + CAPTION_PX + pad
    canvas = Image.new("RGB", (pad + width * len(columns), 2 * HEADER_PX + pad + n * row_h), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 1), title, fill="black", font=font)
    for j, (col, label) in enumerate(zip(columns, labels, strict=True)):
        x0 = pad + j * width
        draw.text((x0, HEADER_PX + 1), label, fill="black", font=font)
        for i in range(n):
            y0 = 2 * HEADER_PX + pad + i * row_h
            canvas.paste(_tile(col[i], size), (x0, y0))
            if captions[j] is not None:
                draw.text((x0, y0 + size + 1), captions[j][i], fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def _groups(cells: Sequence[Cell]) -> dict[tuple[str, ...], list[Cell]]:
    """Cells grouped by everything but the method (task, prior), in file order."""
    out: dict[tuple[str, ...], list[Cell]] = {}
    for c in cells:
        out.setdefault(tuple(e.label for a, e in c if a != "method"), []).append(c)
    return out


def row_psnr_by_key(plan: Plan) -> dict[str, tuple[float, int]]:
    """unit key -> (PSNR, size of the batch it was computed in) of the run's rows (their own and
    reused ones)."""
    from diffinv.bench.runner import read_all_rows

    rows, _, _ = read_all_rows(plan)
    return {str(r.get("key")): (float(r["metrics"]["psnr"]), int(r.get("batch") or plan.batch_size))
            for r in rows if "psnr" in r.get("metrics", {})}


def restore_plan(task_path: str | os.PathLike[str], purpose: str, n_images: Any, minimum: int,
                 wanted: str) -> Plan:
    """Load a task file for an option that recomputes restorations (``--gallery``, ``--fid``):
    it must be a "restore" run and ``n_images`` an int >= ``minimum`` (``wanted`` says so)."""
    from diffinv.checks import check_output_folder

    plan = load_plan(task_path)
    if plan.kind.name != "restore":
        raise BenchConfigError(f"{purpose}: {plan.task.path} is a {plan.kind.name!r} run, "
                               "not 'restore'")
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < minimum:
        flag = purpose.split()[0]
        raise BenchConfigError(f"{flag} takes {wanted}; got {n_images!r}")
    check_output_folder(plan.out_dir, replace=False)
    return plan


def restore_context(plan: Plan, cells: Sequence[Cell]) -> tuple[RunContext, Any]:
    """The run context and resolved identities with which ``diffinv bench`` computed the rows of
    ``cells`` (one process, PSNR only), for recomputing them; every cell is rehearsed first."""
    from diffinv.bench.kinds import restore
    from diffinv.bench.runner import resolve_all

    ctx = RunContext(name=plan.name, kind=plan.kind.name, seed=plan.seed,
                     device=run_device(plan.device, os.environ), options=dict(plan.options),
                     metrics=["psnr"], shard=(0, 1))
    restore.validate(ctx, cells)
    resolved = resolve_all(plan, ctx)
    restore.rehearse(ctx, cells)
    return ctx, resolved


def _recompute(ctx: RunContext, cell: Cell, sizes: Sequence[int]) -> tuple[Any, ...]:
    """Images ``0 .. len(sizes)-1`` of ``cell``, image i solved in a batch of ``sizes[i]`` images
    (itself, the other gallery images of that size, then the cell's next images as filler).

    Returns (truth, the measurement as a picture, the restorations, the solver's kernel estimates
    or None, the true kernels or None), CPU tensors in image order.
    """
    import torch

    from diffinv.bench.kinds import restore
    from diffinv.physics.measurement import png_view

    k = len(sizes)
    x: list[Any] = [None] * k
    y: list[Any] = [None] * k
    x_hat: list[Any] = [None] * k
    k_hat: list[Any] = [None] * k
    k_true: list[Any] = [None] * k
    for size in sorted(set(sizes)):
        mine = [i for i in range(k) if sizes[i] == size]
        filler = [j for j in range(cell.target) if j not in mine][: max(0, size - len(mine))]
        batch = restore.restore_batch(ctx, cell, mine + filler)
        shown = png_view(batch.measurement.y)
        est = batch.result.trace.get("kernel")
        true = restore.true_kernels(batch)
        for pos, i in enumerate(mine):
            x[i] = batch.x[pos].cpu()
            y[i] = shown[pos].cpu()
            x_hat[i] = batch.result.x[pos].detach().cpu()
            k_hat[i] = None if est is None else est[pos].detach().float().cpu()
            k_true[i] = None if true is None else true[pos].float()

    def stacked(v: list[Any]) -> Any:
        return None if any(t is None for t in v) else torch.stack(v)

    return torch.stack(x), torch.stack(y), torch.stack(x_hat), stacked(k_hat), stacked(k_true)


def kernel_picture(k: Any) -> Any:
    """(N, h, w) kernels -> (N, 1, h, w) pictures in [-1, 1], each scaled to its own maximum
    (black 0, white the largest entry)."""
    k = k.float().clamp_min(0)
    k = k / k.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return (k * 2 - 1)[:, None]


def _pad_to(k: Any, size: int) -> Any:
    import torch.nn.functional as F

    h, w = k.shape[-2:]
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(k, (left, size - w - left, top, size - h - top), value=-1.0)


def make_gallery(task_path: str | os.PathLike[str], n_images: int = 4, *,
                 only: Sequence[str] | None = None, progress: bool = True,
                 tolerance_db: float = 0.25) -> Gallery:
    """Draw the gallery of a "restore" task file (see the module docstring)."""
    from tqdm import tqdm

    from diffinv.metrics import psnr

    plan = restore_plan(task_path, "--gallery draws restorations", n_images, 1,
                        "a positive number of images")
    cells = select_cells(plan.cells, only)
    k = min([n_images] + [c.target for c in cells])
    ctx, resolved = restore_context(plan, cells)
    table = row_psnr_by_key(plan)

    out_dir = plan.out_dir / f"{plan.name}_gallery"
    images: list[Path] = []
    gallery = Gallery(images=images, markdown=plan.out_dir / f"{plan.name}_gallery.md")
    todo = [(g, c) for g, cs in _groups(cells).items() for c in cs]
    done: dict[tuple[str, ...], list[tuple[str, Any, list[float]]]] = {}
    truth: dict[tuple[str, ...], tuple[Any, Any]] = {}
    kernels: dict[tuple[str, ...], list[tuple[str, Any, Any]]] = {}
    for group, cell in tqdm(todo, desc="gallery", disable=not progress, file=sys.stderr):
        ident = plan.cell_identity(cell, resolved)
        rows = [table.get(plan.unit_key(cell, i, ident)) for i in range(k)]
        sizes = [plan.batch_size if r is None else r[1] for r in rows]
        x, y, x_hat, k_hat, k_true = _recompute(ctx, cell, sizes)
        values = [float(v) for v in psnr(x_hat, x)]
        for i, v in enumerate(values):
            if rows[i] is None:
                continue
            row = rows[i][0]
            diff = abs(v - row)
            if diff > tolerance_db:
                raise BenchRecordError(
                    f"{'/'.join(cell.labels)} image {i}: the gallery's PSNR {v:.3f} dB differs from "
                    f"the table's row {row:.3f} dB by more than {tolerance_db} dB; the table was "
                    "computed by other code or settings: rerun the table first")
            gallery.compared += 1
            gallery.max_abs_diff_db = max(gallery.max_abs_diff_db, diff)
        truth.setdefault(group, (x, y))
        done.setdefault(group, []).append((cell["method"].label, x_hat, values))
        if k_hat is not None:
            kernels.setdefault(group, []).append((cell["method"].label, k_hat, k_true))

    for group, results in done.items():
        x, y = truth[group]
        labels = ["truth", "y"] + [m for m, _, _ in results]
        columns = [x, y] + [r for _, r, _ in results]
        captions: list[Sequence[str] | None] = [None, None] + [
            [f"{v:.1f} dB" for v in vals] for _, _, vals in results]
        name = file_slug("_".join(group)) + ".png"
        title = " / ".join(group) + f"  ({plan.options.get('dataset')} images 0..{k - 1})"
        images.append(draw_panel(columns, labels, captions, out_dir / name, title))
        gallery.columns[name] = labels
        if group in kernels:
            images.append(_kernel_panel(kernels[group], group, title, out_dir, gallery))
    _write_markdown(plan, gallery, k, only)
    return gallery


def _kernel_panel(found: Sequence[tuple[str, Any, Any]], group: tuple[str, ...], title: str,
                  out_dir: Path, gallery: Gallery) -> Path:
    """``TASK_kernels.png``: the true kernels (where the family has them) beside each method's
    estimate, every kernel scaled to its own maximum; captions give the kernel MSE
    (:func:`diffinv.metrics.kernels.kernel_mse`)."""
    from diffinv.metrics.kernels import kernel_mse

    true = next((t for _, _, t in found if t is not None), None)
    size = max([k.shape[-1] for _, k, _ in found] + ([true.shape[-1]] if true is not None else []))
    labels, columns, captions = [], [], []
    if true is not None:
        labels.append("true kernel")
        columns.append(_pad_to(kernel_picture(true), size))
        captions.append(None)
    for label, k_hat, _ in found:
        labels.append(label)
        columns.append(_pad_to(kernel_picture(k_hat), size))
        captions.append(None if true is None else
                        [f"{float(v):.1e}" for v in kernel_mse(k_hat, true)])
    name = file_slug("_".join(group)) + "_kernels.png"
    gallery.columns[name] = labels
    return draw_panel(columns, labels, captions, out_dir / name,
                      title.replace("  (", " kernels  (", 1))


def _write_markdown(plan: Plan, gallery: Gallery, k: int, only: Sequence[str] | None) -> None:
    from diffinv.bench.runner import reproduce_command

    cmd = f"{reproduce_command(plan.task.path)} --gallery {k}" + "".join(
        f" --only {shlex.quote(s)}" for s in only or ())
    check = (f"The recomputed PSNRs of {gallery.compared} (cell, image) pairs that the table "
             f"also has differ from its rows by at most {gallery.max_abs_diff_db:.2g} dB."
             if gallery.compared else "The table has no rows for these images yet: nothing to "
             "compare the recomputed PSNRs with.")
    lines = [f"# {plan.title}: gallery", "",
             f"- Command: {cmd}",
             f"- Images 0..{k - 1} of {plan.options.get('dataset')}, seed {plan.seed}: the same "
             "measurements and per-image solver randomness as the table's rows.",
             f"- {check}", ""]
    base = gallery.markdown.parent
    for p in gallery.images:
        rel = p.relative_to(base).as_posix()
        lines += [f"## {p.stem}", "", f"Columns: {' | '.join(gallery.columns[p.name])}", "",
                  f"![{p.stem}]({rel})", ""]
    gallery.markdown.write_text("\n".join(lines))
