"""Named sets of solver hyper-parameters tuned per operator (``make_solver(..., preset=...)``).

A solver's constructor defaults are its paper's (or official code's) settings. A preset replaces
some of them with values chosen on *validation* images for a given prior family, per forward
operator: ``preset_params(preset, solver, operator)`` merges the solver's ``"*"`` entry (every
operator) with the operator's own entry. Operators a preset does not name keep the ``"*"`` part
only; solvers it does not name keep their defaults. Explicit parameters always win over a preset.

``tuned32``: the embedded 32x32 priors (chosen on fashion32 validation images 0..7, seed 1, with
``diffinv bench benchmarks/tasks/tune_linear.toml``; every pick and its paired 95% interval is in
``benchmarks/tune_linear_picks.md``, made by ``benchmarks/tools/pick_tuned.py``). Where the two
noise levels tuned (sigma 0.05 and 0.01) preferred different values, the entry is the value that
was within the paired interval of the best at both levels or, if none was, the one that lost least
at its worse level (DMPS on random inpainting: lambda 10 is best at sigma 0.05 by 1.1 dB but loses
6.9 dB at sigma 0.01, so 3). The deviations from the papers:

* DPS: step scale zeta 1 on blur (nonlinear deblurring included) and box inpainting, 0.3 on
  random inpainting (the official configs: 0.3 for blur, 0.5 for inpainting; 0.3 for
  super-resolution is kept); the noise-matched DPS ("dps-nll") 1e-4 on nonlinear deblurring
  (``benchmarks/tune_nonlinear_picks.md``, from ``benchmarks/tasks/tune_nonlinear.toml``);
* MCG: step scale 0.3 on super-resolution, 1 on random inpainting, 0.1 on box inpainting; on
  blur, zeta 1 and the projection's pseudo-inverse truncated at singular values <= 0.3 instead of
  1e-3 (at 1e-3 the projection multiplies the noise of the Gaussian-blur modes with singular
  values in (1e-3, 1e-2], 17% of the 1,024 of ``make_operator("gaussian-blur").svd((1, 1, 32,
  32)).singulars()``, by 100-1000: 4.0 dB on Gaussian deblurring at every zeta; 13.9 / 20.3 /
  21.9 dB at 0.03 / 0.1 / 0.3, still below DPS's 22.6: the projection costs on noisy blur, and
  a truncation >= 1 would be DPS);
* DDRM: 100 steps instead of 20 (best mean on 6 of 7 tasks; e.g. random inpainting 21.5 vs
  19.4 dB), ``eta = 1`` instead of 0.85 except for motion blur;
* PiGDM: ``w = 3`` with the official weighting on blur and super-resolution, the ``"score"``
  weighting on inpainting (21.7 vs 14.6 dB on random inpainting with the paper's ``w = 1``);
* DMPS: ``lambda`` 3 (10 for super-resolution, 1 for motion blur) instead of the paper's 1 (the
  official configs use 1.75);
* ADMM-PnP: the denoiser-level schedule per operator (it has no paper default for 32x32);
* DiffPIR (``benchmarks/tune_new_solvers_picks.md``, from ``tune_new_solvers.toml``): zeta 1 on
  every task (official 0.1 deblurring, 0.25 super-resolution, 1 inpainting; e.g. +5.6 dB over 0.1
  on Gaussian deblurring), lambda 7 on box inpainting and motion blur (the official 1 elsewhere);
* DAPS-1K (same file): Langevin step 5e-5 (official: 1e-4 for Gaussian blur, super-resolution and
  random inpainting, 5e-5 for box inpainting and motion blur), 1e-4 on Gaussian blur, 1e-5 on box
  inpainting (tied with 5e-5 within 0.05 dB; SSIM chose), and the official 1e-5 on nonlinear
  deblurring (not tuned here).
RED-diff keeps the official lambda 0.25, Adam step 0.1 and 1,000 steps: best or within the paired
interval of the best on every task; 100 steps at step 0.5 lost 0.5-1.6 dB.
Blind RED-diff on the blind Gaussian and motion families (``benchmarks/tune_blind_reddiff_picks.md``,
from ``tune_blind_reddiff.toml``, sigma 0.02): kernel re-centring on (``recentre``), lambda 1 and
kernel step 0.01 instead of the plain extension's 0.25 / 0.1 / no re-centring: +3.3 [+1.9, +4.7] dB
on Gaussian blur, +2.6 [-1.3, +6.5] on motion blur (not distinguishable on 8 images; the pick on
both). The pick is inside the grid: kernel step 0.003 and lambda 2 lose 1.3 / 2.1 and 2.3 / 2.0 dB
(Gaussian / motion). On blind rotation / zoom blur
(``benchmarks/tune_blind_reddiff_rotzoom_picks.md``): lambda 1 and angle step 0.03 on rotation,
zoom-factor step 0.3 on zoom (both within the paired interval of the plain 0.25 / 0.1: +1.1
[-1.9, +4.2] and +0.01 [-0.07, +0.09] dB).
The wide kernel families (issue 42: ``blind-motion-blur-wide``, ``blind-gaussian-blur-wide``,
``blind-anisotropic-gaussian-blur``, ``blind-airy-blur``, ``blind-defocus-blur``;
``benchmarks/tune_blind_wide_picks.md``, from ``tune_blind_wide.toml``, sigma 0.02, the
measurements of ``blind_kernels_pilot``), one setting per solver on all five (the entries of the
old blind families are unchanged):

* FastEM: the kernel denoiser retrained on the wide families (``kernel_dncnn9-wide``), PiGDM
  guidance ``scale`` 3 and the M-step's ``beta`` x100 (156,250: the previous kernel weighs 100x
  more against the data, so the kernel moves less per step away from its delta start), ``lam`` 0.03
  kept. Best mean PSNR on four of the five families (on anisotropic Gaussian within the interval
  of the best, +0.6 [-2.1, +3.3] dB behind); +0.9 to +5.2 dB over the defaults with the same
  denoiser (e.g. Airy +5.2 [-0.4, +10.8]; not distinguishable on 8 images). ``beta`` x10 / x1000,
  ``scale`` 1 / 10 and ``lam`` 0.003 / 3 had lower means. Still not above the measurement y on
  average (-4.9 to +0.5 dB, none distinguishable): on some images whose true kernel is nearly a
  delta it estimates a wide kernel (image 5: 13-16 dB, y 33-41; given the true kernel the same
  image step gives 36-37 dB there);
* Pan-L0: final TV weight ``lambda_tv`` 3e-2 and kernel weight ``gamma_px`` 3e-4 (defaults 1e-2,
  1e-3): within the interval of the best on every wide family, +0.6 to +1.9 dB over the defaults
  on four, -1.6 on defocus (none distinguishable); it stays 1-8 dB below y (kernel estimates of
  near-delta blurs far too wide);
* BlindDPS: the kernel prior retrained on the wide families (``kernels9-wide``) with kernel
  guidance ``kernel_scale`` 0.1 (default 0.3; stage 8 of ``tune_blind_wide.toml``, four families,
  8 validation images): the best mean on compact motion, small Gaussian and Airy (+0.4 / +2.0 /
  +0.9 dB over 0.3, none distinguishable on 8 images; 1 lost 3-6 dB). On the old motion family
  0.3 stayed best with this prior (0.1: -1.6 dB), and the old families keep ``kernels9`` at the
  default 0.3 (on their test images ``kernels9-wide`` lost 1.5 +- 1.4 dB to it:
  ``benchmarks/blind_kernels_paired_blinddps_wide.md``). Only the three families tuned get this
  entry (anisotropic Gaussian and defocus were not in the stage).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffinv.errors import DiffinvError, UnknownNameError

ParamTable = Mapping[str, Mapping[str, Any]]  # operator name (or "*") -> parameters

_ADMM_WIDE = {"sigma_max": 1.0, "sigma_min": 0.1}
_ADMM_NARROW = {"sigma_max": 0.5, "sigma_min": 0.05}
# the blind families need blind=true anyway; the rest is the validation pick (module docstring)
_BLIND_RED_DIFF = {"blind": True, "recentre": True, "lam": 1.0, "kernel_lr": 0.01}
# the wide kernel families (issue 42; module docstring): one setting per solver on all five
_WIDE_FAMILIES = ("blind-motion-blur-wide", "blind-gaussian-blur-wide",
                  "blind-anisotropic-gaussian-blur", "blind-airy-blur", "blind-defocus-blur")
_FASTEM_WIDE = {"denoiser": "kernel_dncnn9-wide", "scale": 3.0, "beta": 156250.0}
_PAN_L0_WIDE = {"lambda_tv": 3e-2, "gamma_px": 3e-4}
_BLIND_DPS_WIDE = {"kernel_prior": "kernels9-wide", "kernel_scale": 0.1}
_BLIND_DPS_TUNED = ("blind-motion-blur-wide", "blind-gaussian-blur-wide", "blind-airy-blur")

PRESETS: dict[str, dict[str, ParamTable]] = {
    "tuned32": {
        "dps": {
            "sr-avgpool": {"scale": 0.3},
            "inpaint-random": {"scale": 0.3},
            "inpaint-box": {"scale": 1.0},
            "gaussian-blur": {"scale": 1.0},
            "motion-blur": {"scale": 1.0},
            "nonlinear-blur": {"scale": 1.0},
        },
        "dps-nll": {
            "nonlinear-blur": {"scale": 1e-4},
        },
        "mcg": {
            "sr-avgpool": {"scale": 0.3},
            "inpaint-random": {"scale": 1.0},
            "inpaint-box": {"scale": 0.1},
            "gaussian-blur": {"scale": 1.0, "pinv_eps": 0.3},
            "motion-blur": {"scale": 1.0, "pinv_eps": 0.3},
        },
        "ddrm": {
            "*": {"steps": 100, "eta": 1.0},
            "motion-blur": {"eta": 0.85},
        },
        "pigdm": {
            "*": {"eta": 1.0},
            "sr-avgpool": {"scale": 3.0},
            "gaussian-blur": {"scale": 3.0},
            "motion-blur": {"scale": 3.0},
            "inpaint-random": {"weighting": "score"},
            "inpaint-box": {"weighting": "score"},
        },
        "dmps": {
            "*": {"lam": 3.0},
            "sr-avgpool": {"lam": 10.0},
            "motion-blur": {"lam": 1.0},
        },
        "diffpir": {
            "*": {"zeta": 1.0},
            "inpaint-box": {"lam": 7.0},
            "motion-blur": {"lam": 7.0},
        },
        "daps": {
            "*": {"lr": 5e-5},
            "gaussian-blur": {"lr": 1e-4},
            "inpaint-box": {"lr": 1e-5},
            "nonlinear-blur": {"lr": 1e-5},
        },
        "red-diff": {
            "blind-motion-blur": _BLIND_RED_DIFF,
            "blind-gaussian-blur": _BLIND_RED_DIFF,
            "blind-rotation-blur": {"blind": True, "lam": 1.0, "param_lr": 0.03},
            "blind-zoom-blur": {"blind": True, "param_lr": 0.3},
        },
        "fastem": {op: _FASTEM_WIDE for op in _WIDE_FAMILIES},
        "pan-l0": {op: _PAN_L0_WIDE for op in _WIDE_FAMILIES},
        "blind-dps": {op: _BLIND_DPS_WIDE for op in _BLIND_DPS_TUNED},
        "admm-pnp": {
            "sr-avgpool": _ADMM_WIDE,
            "gaussian-blur": _ADMM_WIDE,
            "motion-blur": _ADMM_WIDE,
            "inpaint-random": _ADMM_NARROW,
            "inpaint-box": _ADMM_NARROW,
        },
    },
}


def auto_preset(prior: str) -> str | None:
    """``"tuned32"`` for the priors shipped in the package (named by their registry name), else
    ``None``: the presets were tuned with those priors, a user's checkpoint keeps the papers'
    defaults."""
    from diffinv.diffusion.zoo import available_priors

    return "tuned32" if str(prior) in available_priors() else None


def preset_table(preset: str, solver: str) -> dict[str, dict[str, Any]]:
    """The whole per-operator table of ``solver`` in ``preset`` (empty if the preset leaves the
    solver at its defaults); an unknown preset name lists the known ones."""
    if not isinstance(preset, str) or preset not in PRESETS:
        raise UnknownNameError("solver preset", str(preset), list(PRESETS))
    return {op: dict(values) for op, values in PRESETS[preset].get(solver, {}).items()}


def preset_params(preset: str, solver: str, operator: str | None) -> dict[str, Any]:
    """The parameters ``preset`` sets for ``solver`` on ``operator`` (``None``: the ``"*"`` part)."""
    table = preset_table(preset, solver)
    if operator is not None and not isinstance(operator, str):
        raise DiffinvError(f"solver preset {preset!r}: the operator must be a name, got "
                           f"{operator!r}")
    out = dict(table.get("*", {}))
    if operator is not None:
        out.update(table.get(operator, {}))
    return out
