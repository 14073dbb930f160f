"""``diffinv solve MEASUREMENT_DIR --solver dps [--prior fashion32] -o out/``: restore a saved
measurement with a solver and a prior; writes the result (PNG + safetensors), a panel
(truth | y | result), metrics JSON (PSNR/SSIM when the record holds the truth), NFE, seconds and
peak memory. Nothing is written unless the solver succeeds (the folder is built aside and renamed).
A clip measurement is solved by :mod:`diffinv.cli.solve_clip` (dmplug-video, or an image solver
frame by frame).
"""

from __future__ import annotations

import argparse
import json

from diffinv.cli import add_threads_option

HELP = "restore a saved measurement with a solver and a diffusion prior"


def _preset_line(solver: str, preset: str = "tuned32") -> str:
    """What ``preset`` changes for ``solver`` ('' if nothing), e.g. ``steps=100, eta=1.0``."""
    from diffinv.solvers.presets import preset_table

    table = preset_table(preset, solver)
    parts = [", ".join(f"{k}={v}" for k, v in table.pop("*", {}).items())]
    parts += [f"{op}: " + ", ".join(f"{k}={v}" for k, v in values.items())
              for op, values in table.items()]
    parts = [p for p in parts if p]
    return f"{preset}: {'; '.join(parts)}" if parts else ""


def _epilog() -> str:
    from diffinv.solvers import list_solvers

    lines = ["solvers (and what they need from the operator). A summary gives the paper's "
             "settings (--preset none); a 'tuned32:' line what the tuned32 preset, the default "
             "for the embedded priors, changes (for all operators, then per operator):"]
    for name, summary, req in list_solvers():
        need = ", ".join(req) if req else "any known operator"
        lines.append(f"  {name:<10} [{need}] {summary}")
        preset = _preset_line(name)
        if preset:
            lines.append(f"  {'':<10} {preset}")
    lines.append("linear+SVD operators: identity, sr-avgpool, inpaint-random, inpaint-box, and "
                 "blur / gaussian-blur / motion-blur with circular boundary")
    lines.append("a known operator: one that is not blind (the record holds its parameters)")
    lines.append("clip measurements (diffinv measure CLIP --op video-sr4 ...): --solver "
                 "dmplug-video (DMPlug on the whole clip: -p semantic=, pixel=, pixel_weight=, "
                 "iterations=, ...), or any solver above frame by frame (per-frame clip operators "
                 "only; --frame-seeds shared: the same noise in every frame); writes the clip "
                 "(safetensors, PNG frames, GIF), side_by_side.gif and metrics.json with per-frame "
                 "PSNR/SSIM and the warping error")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("solve", help=HELP, description=HELP + ".", epilog=_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("measurement", metavar="MEASUREMENT_DIR", help="folder from `diffinv measure` "
                   "(an image or a clip measurement)")
    p.add_argument("--solver", default="dps", help="solver name (default dps)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="solver hyper-parameter, e.g. -p steps=100 -p scale=0.5 (repeatable)")
    p.add_argument("--preset", default="auto", help="hyper-parameters tuned per operator "
                   "(diffinv.solvers.presets): auto = tuned32 for the embedded priors, none "
                   "for a checkpoint of yours; none = the papers' defaults; -p overrides it")
    p.add_argument("--blind", action="store_true", help="estimate the unknown operator "
                   "parameters of a blind family jointly (dmplug, red-diff)")
    p.add_argument("--early-stop", choices=["none", "wmv"], default=None,
                   help="early-stopping rule of iterative solvers (dmplug): wmv = ES-WMV; "
                   "W and P with -p window=... -p patience=...")
    p.add_argument("--prior", default=None, help="prior name or file (default: the "
                   "measurement's domain)")
    p.add_argument("--seed", type=int, default=0, help="solver seed")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="network arithmetic: bf16 = bfloat16 autocast, faster on CPUs with AVX512-BF16 "
                   "(see benchmarks/precision.md), slightly different numbers")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1 ...")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output folder that diffinv wrote (its files are "
                   "deleted when the new result is complete); a folder holding other files, "
                   "the working folder and the input are never replaced")
    p.add_argument("--frame-seeds", choices=["independent", "shared"], default=None,
                   help="clip measurements, image solvers run frame by frame: each frame its own "
                   "random stream (independent, the default) or every frame of a clip the same "
                   "(shared: the shared-noise baseline)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file

    from diffinv import load_prior
    from diffinv.checks import check_device, check_output_folder
    from diffinv.cli.measure import parse_settings
    from diffinv.cli.solve_clip import is_clip_record, run_clip
    from diffinv.data.images import make_grid, save_image, save_panel
    from diffinv.errors import DiffinvError
    from diffinv.fileio import atomic_folder
    from diffinv.physics import load_measurement
    from diffinv.physics.measurement import png_view
    from diffinv.solvers import make_solver
    from diffinv.solvers.base import check_reserved
    from diffinv.solvers.presets import auto_preset, preset_params

    if is_clip_record(args.measurement):
        return run_clip(args)
    if args.solver == "dmplug-video":
        raise DiffinvError(f"dmplug-video restores clips; {args.measurement} is not a clip "
                           "measurement (make one with diffinv measure CLIP --op video-sr4 ...)")
    if args.frame_seeds is not None:
        raise DiffinvError("--frame-seeds is for clip measurements (solvers run frame by frame)")
    out = check_output_folder(args.output, overwrite=args.overwrite, inputs=[args.measurement])
    check_device(args.device, "--device")
    m = load_measurement(args.measurement)
    truth = m.x
    settings = parse_settings(args.param)
    check_reserved(settings)
    if args.blind:
        settings["blind"] = True
    if args.early_stop:
        settings["early_stop"] = args.early_stop
    prior_name = args.prior or m.domain
    preset = (auto_preset(prior_name) if args.preset == "auto"
              else None if args.preset == "none" else args.preset)
    solver = make_solver(args.solver, preset=preset, operator=m.operator, **settings)
    solver.progress = not args.no_progress
    prior = load_prior(prior_name, device=args.device, precision=args.precision)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    y = m.y.to(dev)
    pub = m.public()
    pub.params = {k: v.to(dev) for k, v in m.params.items()}
    import inspect

    # a solver that records per-iteration quality takes the truth for evaluation only (DMPlug)
    evaluation = ({"truth": truth.to(dev)} if truth is not None and "truth" in
                  inspect.signature(solver.__call__).parameters else {})
    result = solver(y, pub, prior, seed=args.seed, **evaluation)
    x = result.x.cpu()
    preset_part = preset_params(preset, args.solver, m.operator) if preset else {}
    info = {"solver": args.solver, "preset": preset, "params": {**preset_part, **settings},
            "prior": prior.name,
            "prior_sha256": prior.sha256, "precision": prior.precision, "seed": args.seed, "nfe": result.nfe,
            "backward_nfe": result.trace.get("backward_nfe"), "seconds": result.seconds,
            "peak_memory_mb": (torch.cuda.max_memory_allocated(dev) / 2 ** 20
                               if dev.type == "cuda" else None)}
    if truth is not None:
        from diffinv.metrics import get_metric

        for name in ("psnr", "ssim"):
            info[name] = [float(v) for v in get_metric(name)(x, truth)]
    with atomic_folder(out, overwrite=args.overwrite, inputs=[args.measurement]) as tmp:
        estimates = {f"estimate.{k}": result.trace[k].detach().cpu().contiguous()
                     for k in ("kernel", "theta", "z")  # blind solvers' operator estimates
                     if isinstance(result.trace.get(k), torch.Tensor)}
        save_file({"x": x.contiguous(), **estimates}, tmp / "result.safetensors")
        scale = max(1, 128 // x.shape[-1])
        save_image(make_grid(x.clamp(-1, 1), ncol=min(8, len(x))), tmp / "result.png", scale)
        # truth | y | result; a low-resolution or non-image y is shown enlarged (png_view)
        columns = ([truth.clamp(-1, 1)] if truth is not None else []) + [png_view(m.y),
                                                                           x.clamp(-1, 1)]
        save_panel(columns, tmp / "panel.png", scale=scale)
        if "variance" in result.trace and "loss" in result.trace:  # an iterative solver's curves
            from diffinv.solvers.early_stopping import plot_trace

            for i in range(min(len(x), 8)):
                plot_trace(result.trace, tmp / f"trace_{i}.png", image=i)
            for key in ("picked_iteration", "stop_iteration", "oracle_psnr", "oracle_iteration"):
                if key in result.trace:  # the oracle is the best-PSNR iterate: not the output
                    cast = int if key.endswith("iteration") else float
                    info[key] = [cast(v) for v in result.trace[key]]
        (tmp / "metrics.json").write_text(json.dumps(info, indent=2) + "\n")
    summary = {k: info[k] for k in ("nfe", "seconds") if k in info}
    for k in ("psnr", "ssim"):
        if k in info:
            summary[k] = sum(info[k]) / len(info[k])
    print(f"wrote {out}: {json.dumps(summary)}")
    return 0
