"""Write benchmarks/operators.md: a panel per operator and the time of A and A^T at batch 64.

python benchmarks/tools/operators_report.py [--threads 1] [--repeats 20]

For every registered operator (the bkse network needs a user's weights and is skipped), on the
first 4 held-out test images of MNIST and Fashion-MNIST (32x32 frame): a PNG with the rows
x | A(x) | A(x) + n (n: Gaussian, sigma 0.05 in [-1, 1] units; seed 0, per-image streams of the
images' test indices), 8 images per row (4 MNIST, then 4 Fashion-MNIST). Timings: median wall time
of A and of its adjoint on a batch of 64 test images (1x32x32, float32, CPU), after a warm-up.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from diffinv.data import load_split
from diffinv.data.images import make_grid, save_image
from diffinv.physics import (
    gaussian_kernel,
    list_operators,
    make_operator,
    measure,
    motion_kernel,
)
from diffinv.physics.measurement import png_view
from diffinv.seeding import image_generators

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "benchmarks" / "operators"
PAGE = ROOT / "benchmarks" / "operators.md"
NOISE = "gaussian:0.05"
SKIP = {"bkse-blur": "needs a user's GOPRO_wVAE.pth (not available offline)"}


#: extra settings shown as their own rows: (registry name, settings, label, description)
VARIANTS = [("sr-avgpool", {"factor": 2}, "sr-avgpool x2", "super-resolution x2, average pooling"),
            ("sr-bicubic", {"factor": 2}, "sr-bicubic x2", "super-resolution x2, bicubic")]


def build(name: str, settings: dict):
    if name == "blur":  # a given kernel: a 5x5 Gaussian (std 1) with reflect boundaries
        return make_operator("blur", kernel=gaussian_kernel(5, 1.0), boundary="reflect")
    return make_operator(name, **settings)


def rows_to_make() -> list[tuple[str, dict, str, str]]:
    out = []
    for name, desc in list_operators():
        out.append((name, {}, name, desc))
        out += [v for v in VARIANTS if v[0] == name]
    return out


def for_display(t: torch.Tensor, image_like: bool, size: int = 32) -> torch.Tensor:
    """Tiles in [-1, 1] at ``size``: images clipped, low resolution upsampled (nearest); other
    measurements (phase retrieval) as ``y.png`` shows them, resized (antialiased bilinear)."""
    t = png_view(t, image_like)
    if not image_like:
        return F.interpolate(t, size=(size, size), mode="bilinear", antialias=True)
    if t.shape[-1] != size:
        t = F.interpolate(t, size=(size, size), mode="nearest")
    return t


def timed(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1000 * statistics.median(ts)


def kernel_panel(path: Path) -> None:
    """Motion kernels of our generator: 9x9 (benchmark size) and 61x61 (DPS size), intensity 0.5."""
    tiles = []
    for size in (9, 61):
        for g in image_generators(0, range(8)):
            k = motion_kernel(size, 0.5, g).float()
            k = F.interpolate((k / k.max())[None, None], size=(61, 61), mode="nearest")[0]
            tiles.append(2 * k - 1)
    save_image(make_grid(torch.stack(tiles), ncol=8, value=1.0), path, scale=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    sets = {name: load_split(name, "test").images for name in ("mnist32", "fashion32")}
    x4 = {name: imgs[:4] for name, imgs in sets.items()}
    x64 = sets["fashion32"][:64]
    rows = []
    for name, settings, label, desc in rows_to_make():
        desc = desc.replace("|", "\\|")
        if name in SKIP:
            rows.append(f"| `{label}` | {desc} | - | - | - | skipped: {SKIP[name]} |")
            continue
        op = build(name, settings)
        cols = {"x": [], "A(x)": [], "y": []}
        for ds, x in x4.items():
            m = measure(x, op, NOISE, seed=0, indices=[0, 1, 2, 3], domain=ds)
            params = m.params or m.true_params
            with torch.no_grad():
                ax = op(x, **params)
            cols["x"].append(x)
            cols["A(x)"].append(ax)
            cols["y"].append(m.y)
        tiles = torch.cat([for_display(torch.cat(c), op.image_like or k == "x")
                           for k, c in cols.items()])
        png = OUT / f"{label.replace(' ', '-')}.png"
        save_image(make_grid(tiles, ncol=8, value=1.0), png, scale=2)
        p64 = op.draw_params(image_generators(0, range(64)), x64.shape[1:])
        with torch.no_grad():
            t_fwd = timed(lambda op=op, p=p64: op(x64, **p), args.repeats)
            y64 = op(x64, **p64)
            t_adj = (timed(lambda op=op, p=p64, y=y64: op.adjoint(y, **p), args.repeats)
                     if op.linear else None)
        adj = f"{t_adj:.2f}" if t_adj is not None else "n/a (nonlinear)"
        kind = "SVD" if op.has_svd else ("linear" if op.linear else "nonlinear")
        shape = "x".join(str(v) for v in op.out_shape(x64.shape)[1:])
        rows.append(f"| `{label}` | {desc} | {kind}, y {shape} | {t_fwd:.2f} | {adj} | "
                    f"![{label}](operators/{png.name}) |")
        print(f"{label:22s} A {t_fwd:8.2f} ms   A^T {adj}")
    kernel_panel(OUT / "motion-kernels.png")
    page = f"""# Forward operators at 32x32

Made by `python benchmarks/tools/operators_report.py --threads {args.threads} --repeats \
{args.repeats}`
(diffinv `physics/`; `diffinv measure --list` lists the operators and noise models).

Each panel shows, for the first 4 held-out **test** images of MNIST (left four columns) and of
Fashion-MNIST (right four), the rows **x | A(x) | y = A(x) + n** with n Gaussian of sigma 0.05
([-1, 1] units), seed 0 (image i's operator parameters and noise come from its own seeded streams:
motion kernels, masks, blind parameters are drawn per image). Default settings are the 32x32
conventions of `shared/DESIGN.md`. Low-resolution measurements are shown enlarged (nearest);
phase-retrieval magnitudes are shown as log(1 + |y|), min-max scaled and resized from 48x48.
For blind families the panel shows the hidden true parameters at work.

Timings: median of {args.repeats} calls after a warm-up, batch of 64 Fashion-MNIST test images
(64x1x32x32, float32), CPU, torch {torch.__version__}, {args.threads} thread(s), on a shared
{platform.machine()} machine (other jobs were running: treat them as orders of magnitude). The
adjoints of the warps and of non-circular blurs (`blur` here uses reflect boundaries) are exact
vector-Jacobian products (autograd), the others explicit (FFT, transposed matrices, masks).
Operators named `blind-*` draw hidden per-image parameters; `sr-* x2` rows are the x2 settings.

| operator | what | kind, y shape | A (ms) | A^T (ms) | x / A(x) / y |
|---|---|---|---|---|---|
{chr(10).join(rows)}

## Motion kernels

Our random-trajectory generator (`diffinv.physics.kernels`) at intensity 0.5: eight 9x9 kernels
(the benchmark size, top row) and eight 61x61 kernels (DPS's size, bottom row), each scaled to its
maximum and enlarged to the same tile size.

![motion kernels](operators/motion-kernels.png)
"""
    PAGE.write_text(page)
    print("wrote", PAGE)


if __name__ == "__main__":
    main()
