"""``diffinv sample``: unconditional samples from a prior, saved as a PNG grid.

The output is what it always was: ``-o`` a PNG grid of the ``N`` samples (rows of
``round(sqrt(N))``, 2 px white gaps, enlarged twice) and ``--tensor`` a safetensors file holding
``samples`` (N, C, H, W) float32. Since issue 36 both are *streamed*: each batch of ``--batch``
samples is written to the files as soon as it is drawn (:mod:`diffinv.streams`: the same pixels and
the same tensor bytes as before, the PNG differently compressed), so the memory used is one batch
plus one grid row, whatever ``N``, and ``N`` is bounded by the disk. Before anything is drawn the
batch's memory is checked against what the device has available and the tensor file's size
against the free disk (:mod:`diffinv.resources`). The files are written beside their targets
under temporary names and renamed into place at the end: an interrupted or failed run leaves
nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from diffinv.cli import positive_int

HELP = "draw unconditional samples from a prior (DDPM or DDIM) and save a PNG grid"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help=HELP, description=HELP + ".")
    p.add_argument("--prior", default="fashion32", help="embedded prior name or weights path")
    p.add_argument("-n", type=positive_int, default=64, help="number of samples")
    p.add_argument("-o", "--output", default="samples.png", help="PNG grid to write")
    p.add_argument("--method", choices=["ddpm", "ddim", "euler", "heun", "dopri5"], default=None,
                   help="diffusion priors: ddim (default; --eta 0: deterministic) or ddpm "
                   "ancestral sampling; flow priors: euler (default), heun or dopri5 (adaptive, "
                   "needs torchdiffeq) ODE solvers")
    p.add_argument("--steps", type=positive_int, default=100, help="sampler steps (ddpm: respaced)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    p.add_argument(
        "--seed", type=int, default=0, help="run seed; image i uses a seed derived from it"
    )
    p.add_argument("--batch", type=positive_int, default=64, help="images per network call")
    p.add_argument("--tensor", default=None, metavar="FILE.safetensors",
                   help="also save the exact samples as safetensors (not the -o file)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace -o / --tensor if they exist (refused otherwise)")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1 ...")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="network arithmetic: bf16 = bfloat16 autocast, faster on CPUs with AVX512-BF16 "
                   "(see benchmarks/precision.md), slightly different numbers")
    p.set_defaults(func=run)


def check_outputs(output: str, tensor: str | None, overwrite: bool = False) -> None:
    """``-o`` a writable ``.png``; ``--tensor`` a writable ``.safetensors`` that is not ``-o``;
    an existing file only with ``overwrite``."""
    from diffinv.checks import check_output_file
    from diffinv.errors import DiffinvError

    check_output_file(output, (".png",), overwrite=overwrite)
    if tensor:
        t, o = Path(tensor), Path(output)
        if t.resolve() == o.resolve() or (t.exists() and o.exists() and os.path.samefile(t, o)):
            raise DiffinvError(f"--tensor {tensor} and -o {output} are the same file; the PNG grid "
                               "and the safetensors samples need two files")
        check_output_file(tensor, (".safetensors",), overwrite=overwrite)


def _temporary(target: Path) -> tuple[Path, object]:
    """A new file beside ``target`` to write it under a temporary name: (its path, open file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    return Path(name), os.fdopen(fd, "wb")


def run(args: argparse.Namespace) -> int:
    from diffinv.checks import check_device
    from diffinv.diffusion.zoo import load_prior
    from diffinv.resources import check_disk, check_memory, format_bytes, sample_bytes
    from diffinv.seeding import image_generators
    from diffinv.streams import GridPNGStream, TensorStream

    check_outputs(args.output, args.tensor, args.overwrite)
    check_device(args.device, "--device")
    prior = load_prior(args.prior, device=args.device, precision=args.precision)
    shape = tuple(prior.image_shape)
    batch = min(args.batch, args.n)
    ncol = int(max(1, round(args.n**0.5)))
    if args.tensor:
        check_disk(TensorStream.file_bytes(args.n, shape), args.tensor,
                   f"--tensor with {args.n} samples of {'x'.join(map(str, shape))}")
    need = sample_bytes(prior, batch)
    check_memory(need, f"sampling {batch} images per batch (--batch, about "
                 f"{format_bytes(need / batch)} each)", device=prior.device,
                 hint="give a smaller --batch")
    check_memory(GridPNGStream.memory_bytes(shape, ncol, scale=2),
                 f"a grid row of {ncol} samples", hint="the PNG grid of so many samples is too "
                 "wide; sample fewer (-n)")
    targets = [Path(args.output)] + ([Path(args.tensor)] if args.tensor else [])
    temps: list[Path] = []
    files = []
    try:
        for target in targets:
            path, f = _temporary(target)
            temps.append(path)
            files.append(f)
        grid = GridPNGStream(files[0], args.n, shape, ncol=ncol, scale=2)
        tens = TensorStream(files[1], "samples", args.n, shape) if args.tensor else None
        for start in range(0, args.n, batch):
            idx = range(start, min(args.n, start + batch))
            x = prior.sample(len(idx), seed=image_generators(args.seed, idx),
                             **_sampler(prior, args), progress=True).cpu()
            grid.write(x)
            if tens is not None:
                tens.write(x)
            for f in files:
                f.flush()
        grid.close()
        if tens is not None:
            tens.close()
        for f in files:
            f.close()
        mask = os.umask(0)
        os.umask(mask)
        for path, target in zip(temps, targets, strict=True):
            path.chmod(0o666 & ~mask)
            os.replace(path, target)
    except BaseException:
        for f in files:
            f.close()
        for path in temps:
            path.unlink(missing_ok=True)
        raise
    print(f"wrote {args.output} ({args.n} samples, prior {prior.name} sha256 "
          f"{str(prior.sha256)[:12]})")
    if args.tensor:
        print(f"wrote {args.tensor}")
    return 0


def _sampler(prior: object, args: argparse.Namespace) -> dict:
    """The sampler settings for ``prior``: a flow prior takes an ODE method and a step count, a
    diffusion prior ddpm/ddim with eta (a method of the other kind is refused by name)."""
    from diffinv.errors import DiffinvError

    flow = getattr(prior, "kind", "") == "flow"
    methods = ("euler", "heun", "dopri5") if flow else ("ddpm", "ddim")
    method = args.method or methods[0 if flow else 1]
    if method not in methods:
        raise DiffinvError(f"--method {method} does not apply to a "
                           f"{'flow' if flow else 'diffusion'} prior (use {', '.join(methods)})")
    if flow:
        return {"method": method, "steps": args.steps}
    return {"method": method, "steps": args.steps, "eta": args.eta}
