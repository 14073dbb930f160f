"""Solvers: one module per method, all with the call ``solver(y, physics, prior, seed=...) -> Result``."""

from diffinv.solvers.base import Result, Solver, list_solvers, make_solver, register_solver

__all__ = ["Result", "Solver", "list_solvers", "make_solver", "register_solver"]
