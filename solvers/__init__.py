"""Solvers: interchangeable integrators, by name or object.

Fixed step: :class:`Euler` (default), :class:`Midpoint`, :class:`Heun`, :class:`RK4`.
Adaptive, delay-aware: :class:`Dopri5`, :class:`Tsit5`, :class:`Bosh3`.
Backends: :class:`TorchDiffEq`, :class:`TorchODE`.
Every Runge-Kutta method is a :class:`Tableau` on a solver class; adding one is a class in
``fixed.py`` or ``adaptive.py`` (or a module) and its line in :func:`register` below.
"""

from __future__ import annotations

from dynode.solver import SOLVERS, Solver, get_solver, register
from dynode.stats import SolverStats, Status
from dynode.solvers.tableau import Tableau
from dynode.solvers.fixed import RK4, Euler, FixedStepSolver, Heun, Midpoint
from dynode.solvers.adaptive import AdaptiveSolver, Bosh3, Dopri5, Tsit5
from dynode.solvers.controllers import IntegralController, PIController
from dynode.solvers.backends import TorchDiffEq, TorchODE

__all__ = ["Solver", "Euler", "Midpoint", "Heun", "RK4", "FixedStepSolver", "SolverStats", "Status",
           "SOLVERS", "get_solver", "Tableau", "AdaptiveSolver", "Dopri5", "Tsit5", "Bosh3",
           "IntegralController", "PIController", "TorchDiffEq", "TorchODE"]

register(Euler, Midpoint, Heun, RK4, Dopri5, Tsit5, Bosh3, TorchDiffEq, TorchODE)
