"""``diffinv solve CLIP_MEASUREMENT``: restore a saved clip measurement.

Not a sub-command of its own: :mod:`diffinv.cli.solve` hands a clip measurement here
(:func:`is_clip_record`). ``--solver dmplug-video`` runs the video solver; any other solver runs
frame by frame (:class:`diffinv.video.perframe.FrameByFrame`: a per-frame clip operator only,
``--frame-seeds shared`` for the same noise in every frame). The output folder, written all or
nothing (:func:`diffinv.fileio.atomic_folder`, the ``--overwrite`` rules of every result folder):

* ``result.safetensors``: ``x``, the restored clips ``(B, T, C, H, W)``;
* ``frames/result_000.png`` ... (frame ``t`` of every clip side by side) and ``result.gif``;
* ``side_by_side.gif``: per clip a row truth | measurement | result (the truth where the record
  holds it; a smaller measurement enlarged, nearest), with a bar under each frame showing its
  position in the clip;
* ``metrics.json``: solver, parameters, prior and its SHA-256, seed, NFE, seconds; with the truth
  per-frame PSNR and SSIM (``psnr[b][t]``) and their means over frames (``psnr_mean[b]``); the
  warping error of the result per clip (``warping_error``) and of the truth (``warping_error_truth``,
  the floor of the warp's interpolation), under the record's exact flow where it holds one,
  otherwise under the flow OpenCV DIS estimates on the truth clip (``warping_error_flow`` says
  which); the solver's picks (ES-WMV iteration, oracle) where it has them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from diffinv.errors import DiffinvError


def is_clip_record(path: str | os.PathLike) -> bool:
    """Whether folder ``path`` holds a clip measurement (its ``spec.json`` says so)."""
    from diffinv.video.measurement import FORMAT, SPEC_FILE

    try:
        spec = json.loads((Path(path) / SPEC_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(spec, dict) and spec.get("format") == FORMAT


def _per_frame(metric: Any, x, truth) -> list[list[float]]:
    B, T = x.shape[:2]
    v = metric(x.reshape(B * T, *x.shape[2:]), truth.reshape(B * T, *truth.shape[2:]))
    return v.detach().double().cpu().reshape(B, T).tolist()


def warping_errors(x, truth, flow, valid) -> tuple[list[float] | None, list[float] | None, str]:
    """``(WE of x per clip, WE of the truth per clip, which flow)``: the exact ``flow`` where
    given, else the flow estimated on ``truth`` (OpenCV DIS); ``(None, None, why)`` when neither
    can be had."""
    from diffinv.video.flow import estimate_flow
    from diffinv.video.metrics import warping_error

    if flow is not None:
        how = "exact (the clip generator's, kept with the hidden truth)"
    elif truth is not None:
        try:
            flow, valid = estimate_flow(truth)
        except DiffinvError as e:
            return None, None, f"unavailable: {e}"
        how = "estimated on the truth clip (OpenCV DIS, forward-backward occlusion mask)"
    else:
        return None, None, "unavailable: the record holds no truth clip"
    we = warping_error(x, flow, valid).double().reshape(-1).tolist()
    floor = (warping_error(truth, flow, valid).double().reshape(-1).tolist()
             if truth is not None else None)
    return we, floor, how


def _listed(v: Any) -> Any:
    import torch

    return v.detach().cpu().tolist() if isinstance(v, torch.Tensor) else v


def run_clip(args: argparse.Namespace) -> int:
    import inspect

    import torch
    from safetensors.torch import save_file

    from diffinv import load_prior
    from diffinv.checks import check_device, check_output_folder
    from diffinv.cli.measure import parse_settings
    from diffinv.fileio import atomic_folder
    from diffinv.physics.measurement import png_view
    from diffinv.solvers.base import check_reserved
    from diffinv.solvers.presets import auto_preset, preset_params
    from diffinv.video.io import save_clip_views, save_gif, side_by_side
    from diffinv.video.measurement import load_clip_measurement
    from diffinv.video.perframe import VIDEO_SOLVER, frame_operator_name, make_clip_solver

    out = check_output_folder(args.output, overwrite=args.overwrite, inputs=[args.measurement])
    check_device(args.device, "--device")
    m = load_clip_measurement(args.measurement)
    if args.blind:
        raise DiffinvError("--blind: no clip solver estimates operator parameters")
    settings = parse_settings(args.param)
    check_reserved(settings)
    if args.early_stop:
        settings["early_stop"] = args.early_stop
    prior_name = args.prior or m.domain
    op = m.make_operator()
    video = args.solver == VIDEO_SOLVER
    if video:
        if args.preset not in ("auto", "none"):
            raise DiffinvError(f"--preset {args.preset}: presets hold the image solvers' tuned "
                               f"settings; {VIDEO_SOLVER} has none (give -p KEY=VALUE)")
        preset = None
    else:
        preset = (auto_preset(prior_name) if args.preset == "auto"
                  else None if args.preset == "none" else args.preset)
    solver = make_clip_solver(args.solver, operator=op, preset=preset,
                              frame_seeds=args.frame_seeds, **settings)
    solver.progress = not args.no_progress
    prior = load_prior(prior_name, device=args.device, precision=args.precision)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    truth = m.x
    pub = m.public()
    pub.params = {k: v.to(dev) for k, v in m.params.items()}
    evaluation = ({"truth": truth.to(dev)} if truth is not None and "truth" in
                  inspect.signature(solver.__call__).parameters else {})
    result = solver(m.y.to(dev), pub, prior, seed=args.seed, **evaluation)
    x = result.x.detach().cpu()
    B, T = x.shape[:2]
    inner = frame_operator_name(op)
    preset_part = preset_params(preset, args.solver, inner) if preset else {}
    info: dict[str, Any] = {
        "solver": args.solver, "per_frame": not video,
        "frame_seeds": None if video else solver.frame_seeds, "preset": preset,
        "params": {**preset_part, **settings}, "prior": prior.name, "prior_sha256": prior.sha256,
        "precision": prior.precision, "seed": args.seed, "clips": B, "frames": T,
        "operator": m.operator, "noise": m.noise, "nfe": result.nfe,
        "backward_nfe": _listed(result.trace.get("backward_nfe")), "seconds": result.seconds,
        "peak_memory_mb": (torch.cuda.max_memory_allocated(dev) / 2 ** 20
                           if dev.type == "cuda" else None)}
    if truth is not None:
        from diffinv.metrics import get_metric

        for name in ("psnr", "ssim"):
            per = _per_frame(get_metric(name), x, truth)
            info[name] = per
            info[f"{name}_mean"] = [sum(r) / len(r) for r in per]
    we, floor, how = warping_errors(x, truth, m.flow, m.valid)
    if we is None:
        print(f"diffinv solve: warning: no warping error: {how}", file=sys.stderr)
    info.update(warping_error=we, warping_error_truth=floor, warping_error_flow=how)
    for key in ("picked_iteration", "stop_iteration", "iterations_run", "oracle_psnr",
                "oracle_iteration", "variant"):
        if key in result.trace:  # the oracle is the best-PSNR iterate: never the output
            info[key] = _listed(result.trace[key])
    scale = max(1, 128 // max(x.shape[-2:]))
    with atomic_folder(out, overwrite=args.overwrite, inputs=[args.measurement]) as tmp:
        save_file({"x": x.contiguous()}, tmp / "result.safetensors")
        save_clip_views(x.clamp(-1, 1), tmp, "result", m.fps, scale)
        image_like = bool(getattr(op, "image_like", True))
        y = m.y.detach().float().cpu()
        y_view = png_view(y.reshape(B * T, *y.shape[2:]), image_like).reshape(B, T, *y.shape[2:])
        columns = ([truth.clamp(-1, 1)] if truth is not None else []) \
            + ([y_view] if y_view.shape[1] == T else []) + [x.clamp(-1, 1)]
        save_gif(side_by_side(columns), tmp / "side_by_side.gif", m.fps, scale, bar=True)
        (tmp / "metrics.json").write_text(json.dumps(info, indent=2) + "\n")
    summary = {k: info[k] for k in ("nfe", "seconds")}
    for k in ("psnr_mean", "ssim_mean", "warping_error"):
        if info.get(k) is not None:
            summary[k] = sum(info[k]) / len(info[k])
    print(f"wrote {out}: {json.dumps(summary)}")
    return 0
