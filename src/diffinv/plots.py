"""Plots people would rather look at than read (matplotlib, Agg backend, PNG files)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over at most ``window`` values (same length as the input)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, *,
                xlabel: str = "step", ylabel: str = "", title: str = "", logy: bool = False,
                markers: Mapping[str, float] | None = None) -> Path:
    """Line plot of named (x, y) curves; ``markers`` draws labelled vertical lines (e.g. a stop)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for name, (x, y) in curves.items():
        ax.plot(x, y, label=name, linewidth=1.2)
    for name, xv in (markers or {}).items():
        ax.axvline(xv, color="k", linestyle="--", linewidth=0.8)
        ax.annotate(name, (xv, 0.95), xycoords=("data", "axes fraction"), fontsize=8, ha="left")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
