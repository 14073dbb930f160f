"""Flow-matching priors: velocity networks with a full or restricted Gaussian source, ODE samplers,
training (``train-prior --objective flow``) and diffusers ``FlowMatchEulerDiscreteScheduler``
folders. Convention and contract: :mod:`diffinv.flow.prior`."""

from diffinv.flow.prior import CONVENTION, FlowPrior, MissingCapabilityError, time_grid
from diffinv.flow.source import Source, SubspaceSource, fit_source

__all__ = ["CONVENTION", "FlowPrior", "MissingCapabilityError", "Source", "SubspaceSource",
           "fit_source", "time_grid"]
