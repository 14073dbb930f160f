"""Measurement models: forward operators, noise models and measurement records.

* operators (:class:`Operator`): ``make_operator(name, **settings)``, ``list_operators()``;
* noise models: ``make_noise("gaussian:0.05")``, ``list_noise_models()``;
* measurements: ``measure(x, op, noise, seed)``, ``save_measurement``, ``load_measurement``.
"""

from diffinv.physics.base import Operator
from diffinv.physics.blur import Blur, FourierBlurSVD, GaussianBlur, MotionBlur, blur
from diffinv.physics.inpaint import BoxInpaint, Identity, RandomInpaint
from diffinv.physics.kernels import check_kernel, gaussian_kernel, motion_kernel, motion_kernels
from diffinv.physics.measurement import Measurement, load_measurement, measure, save_measurement
from diffinv.physics.noise import (
    ESWMV_LEVELS,
    GaussianNoise,
    ImpulseNoiseL1Surrogate,
    NoiseModel,
    NoNoise,
    PoissonNoise,
    SpeckleNoise,
    eswmv_noise,
    list_noise_models,
    make_noise,
)
from diffinv.physics.nonlinear import NonlinearBlur
from diffinv.physics.phase import PhaseRetrieval
from diffinv.physics.registry import OPERATORS, list_operators, make_operator
from diffinv.physics.resize import AvgPoolSR, BicubicSR
from diffinv.physics.svd import SVD, DiagonalSVD
from diffinv.physics.warps import RotationBlur, ZoomBlur

__all__ = [
    "ESWMV_LEVELS", "OPERATORS", "SVD", "AvgPoolSR", "BicubicSR", "Blur", "BoxInpaint",
    "DiagonalSVD", "FourierBlurSVD", "GaussianBlur", "GaussianNoise", "Identity",
    "ImpulseNoiseL1Surrogate", "Measurement", "MotionBlur", "NoNoise", "NoiseModel",
    "NonlinearBlur", "Operator", "PhaseRetrieval", "PoissonNoise", "RandomInpaint", "RotationBlur",
    "SpeckleNoise", "ZoomBlur", "blur", "check_kernel", "eswmv_noise", "gaussian_kernel",
    "list_noise_models", "list_operators", "load_measurement", "make_noise", "make_operator",
    "measure", "motion_kernel", "motion_kernels", "save_measurement",
]
