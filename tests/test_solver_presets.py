"""Solver presets: per-operator tuned hyper-parameters layered under explicit ones."""

from __future__ import annotations

import pytest

from diffinv.errors import UnknownNameError
from diffinv.physics.registry import OPERATORS
from diffinv.solvers import make_solver
from diffinv.solvers.base import _REGISTRY
from diffinv.solvers.presets import PRESETS, auto_preset, preset_params, preset_table


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_entry_names_real_solvers_operators_and_parameters(preset):
    make_solver("dps")  # loads the built-in registry
    for solver, table in PRESETS[preset].items():
        assert solver in _REGISTRY, solver
        for op in table:
            assert op == "*" or op in OPERATORS, op
            # the constructor accepts every value (a misspelt key would be a TypeError -> error)
            made = make_solver(solver, preset=preset, operator=None if op == "*" else op)
            for key, value in preset_params(preset, solver, None if op == "*" else op).items():
                assert getattr(made, key) == value, (solver, op, key)


def test_operator_entries_override_the_star_part_and_explicit_values_override_both():
    assert preset_params("tuned32", "ddrm", "motion-blur") == {"steps": 100, "eta": 0.85}
    assert preset_params("tuned32", "ddrm", "inpaint-box") == {"steps": 100, "eta": 1.0}
    assert preset_params("tuned32", "ddrm", None) == {"steps": 100, "eta": 1.0}
    made = make_solver("ddrm", preset="tuned32", operator="motion-blur", eta=0.5)
    assert (made.steps, made.eta) == (100, 0.5)
    plain = make_solver("ddrm", operator="motion-blur")  # no preset: the paper's defaults
    assert (plain.steps, plain.eta) == (20, 0.85)
    pigdm = make_solver("pigdm", preset="tuned32", operator="inpaint-random")
    assert (pigdm.weighting, pigdm.scale) == ("score", 1.0)


def test_a_solver_or_operator_the_preset_does_not_name_keeps_its_defaults():
    assert preset_params("tuned32", "ilvr", "sr-avgpool") == {}
    assert preset_params("tuned32", "admm-pnp", "identity") == {}
    assert preset_table("tuned32", "ilvr") == {}


def test_an_unknown_preset_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="tuned32"):
        make_solver("ddrm", preset="tuned64", operator="sr-avgpool")


def test_auto_preset_is_tuned32_for_the_embedded_priors_only(tmp_path):
    assert auto_preset("fashion32") == auto_preset("mnist32") == "tuned32"
    assert auto_preset(str(tmp_path / "my_prior.safetensors")) is None


WIDE_FAMILIES = ("blind-motion-blur-wide", "blind-gaussian-blur-wide",
                 "blind-anisotropic-gaussian-blur", "blind-airy-blur", "blind-defocus-blur")


@pytest.mark.parametrize("operator", WIDE_FAMILIES)
def test_the_wide_kernel_families_get_the_tune_blind_wide_picks(operator):
    # benchmarks/tune_blind_wide_picks.md: one setting per solver on the five wide families
    assert preset_params("tuned32", "fastem", operator) == {
        "denoiser": "kernel_dncnn9-wide", "scale": 3.0, "beta": 156250.0}
    assert preset_params("tuned32", "pan-l0", operator) == {"lambda_tv": 3e-2, "gamma_px": 3e-4}
    made = make_solver("fastem", preset="tuned32", operator=operator)
    assert (made.denoiser, made.scale, made.beta, made.lam) == ("kernel_dncnn9-wide", 3.0,
                                                                156250.0, 0.03)
    pan = make_solver("pan-l0", preset="tuned32", operator=operator, lambda_tv=1e-2)
    assert (pan.lambda_tv, pan.gamma_px) == (1e-2, 3e-4)  # explicit values still win


@pytest.mark.parametrize("operator", ["blind-motion-blur", "blind-gaussian-blur"])
def test_the_old_blind_families_keep_fastem_and_pan_l0_defaults(operator):
    assert preset_params("tuned32", "fastem", operator) == {}
    assert preset_params("tuned32", "pan-l0", operator) == {}
