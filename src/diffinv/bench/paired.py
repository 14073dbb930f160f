"""Paired per-image differences between two labels of one axis of a restore run (same images,
same measurements, same solver seeds): the statistics of ``benchmarks/tools/paired_difference.py``
and of the docs' ``{{ paired ... }}`` figures (:mod:`diffinv.docs_figures`). A combined axis,
``method+prior``, compares rows that differ in both (labels ``"PnP-Flow @ n500-full"``).

Rows are matched by their other axes' labels and the image index, so the interval is that of the
paired difference. Where a cell was re-run under new settings with the same labels, the newest
row of each image counts (:func:`latest_rows`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from diffinv.bench.stats import mean_interval

#: {(other axes' (axis, label) pairs): {metric: [b - a per matched image]}}
Diffs = dict[tuple, dict[str, list[float]]]


#: joins the labels of a combined axis (``--axis method+prior``): ``"DPS @ fashion32"``
JOINT = " @ "


def axis_parts(axis: str | None) -> tuple[str, ...]:
    """The axes of ``axis``: one name, or several joined by ``+`` (``method+prior``): rows are then
    compared across both at once, e.g. one solver on one prior against another on another."""
    return tuple(axis.split("+")) if axis else ()


def axis_label(row: dict, axis: str) -> str | None:
    """The row's label on ``axis`` (a combined axis: its parts' labels joined by `` @ ``), or
    None where the row lacks one of its parts."""
    cell = row["cell"]
    parts = axis_parts(axis)
    if not all(a in cell for a in parts):
        return None
    return JOINT.join(cell[a]["label"] for a in parts)


def cell_labels(row: dict, without: str | None = None) -> tuple[tuple[str, str], ...]:
    """The row's (axis, label) pairs, sorted, leaving out axis ``without`` (every part of a
    combined axis)."""
    skip = axis_parts(without)
    return tuple(sorted((k, v["label"]) for k, v in row["cell"].items() if k not in skip))


def latest_rows(rows: list[dict]) -> list[dict]:
    """One row per (cell labels, image index): the most recently finished. A cell re-run under new
    settings with the same labels (a retuned method, say) leaves its earlier rows in the files;
    only the newest of each image counts."""
    newest: dict[tuple, dict] = {}
    for r in rows:
        key = (cell_labels(r), r["index"])
        if key not in newest or str(r.get("finished", "")) >= str(newest[key].get("finished", "")):
            newest[key] = r
    return list(newest.values())


def paired(rows: list[dict], axis: str, a: str, b: str) -> Diffs:
    """{(other axes' labels): {metric: [b - a per matched image]}}."""
    side: dict[str, dict[tuple, dict]] = {a: {}, b: {}}
    for r in rows:
        label = axis_label(r, axis)
        if label not in side:
            continue
        rest = cell_labels(r, axis)
        side[label][(rest, r["index"])] = r["metrics"]
    out: Diffs = defaultdict(lambda: defaultdict(list))
    for key, ma in side[a].items():
        mb = side[b].get(key)
        if mb is None:
            continue
        for metric, va in ma.items():
            if metric in mb:
                out[key[0]][metric].append(mb[metric] - va)
    return out


def best_other(rows: list[dict], axis: str, b: str, metric: str,
               exclude: Sequence[str] = ()) -> dict[tuple, str]:
    """Per cell (other axes' labels): the label other than ``b`` with the highest mean ``metric``
    among those with at least as many images as ``b`` in that cell."""
    values: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        rest = cell_labels(r, axis)
        label = axis_label(r, axis)
        if label is not None and metric in r["metrics"]:
            values[rest][label].append(r["metrics"][metric])
    out = {}
    for rest, by_label in values.items():
        n_b = len(by_label.get(b, []))
        means = {lab: sum(v) / len(v) for lab, v in by_label.items()
                 if lab != b and lab not in exclude and n_b and len(v) >= n_b}
        if means:
            out[rest] = max(means, key=lambda lab: means[lab])
    return out


def paired_with_best(rows: list[dict], axis: str, b: str, metric: str,
                     exclude: Sequence[str] = ()) -> tuple[Diffs, dict[tuple, str]]:
    """``paired`` against each cell's best other label (see :func:`best_other`)."""
    best = best_other(rows, axis, b, metric, exclude)
    out = {}
    for rest, label in best.items():
        d = paired(rows, axis, label, b)
        if rest in d:
            out[rest] = d[rest]
    return out, best


def psnr_verdict(diffs: Sequence[float]) -> str:
    """``above`` / ``below`` when the 95% interval of the paired PSNR difference excludes 0,
    else ``level``."""
    if len(diffs) < 2:
        return ""
    st = mean_interval(list(diffs))
    return "above" if st.low > 0 else "below" if st.high < 0 else "level"


def format_mean_diff(values: Sequence[float], digits: int = 4) -> str:
    """``+0.6865 ± 0.5769``: the signed mean difference and the half-width of its 95% Student-t
    interval (the mean alone for one image), as the paired tables print it."""
    st = mean_interval(list(values))
    if len(values) > 1:
        return f"{st.center:+.{digits}f} ± {(st.high - st.low) / 2:.{digits}f}"
    return f"{st.center:+.{digits}f}"


def format_max_abs(values: Sequence[float]) -> str:
    """``13.44``: the largest absolute difference, as the paired tables print it."""
    return f"{max(abs(x) for x in values):.4g}"
