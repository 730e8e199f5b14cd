"""Solvers: interchangeable integrators, by name or object.

Fixed step: :class:`Euler` (default), :class:`Midpoint`, :class:`Heun`, :class:`RK4`.
Adaptive, delay-aware: :class:`Dopri5`, :class:`Tsit5`, :class:`Bosh3`.
Backends: :class:`TorchDiffEq`, :class:`TorchODE`.
"""

from __future__ import annotations

from dynode.errors import ConfigurationError
from dynode.solvers.fixed import RK4, Euler, FixedStepSolver, Heun, Midpoint
from dynode.solvers.stats import SolverStats, Status
from dynode.solvers.adaptive import AdaptiveSolver, Bosh3, Dopri5, Tsit5
from dynode.solvers.controllers import IntegralController, PIController
from dynode.solvers.backends import TorchDiffEq, TorchODE

__all__ = ["Euler", "Midpoint", "Heun", "RK4", "FixedStepSolver", "SolverStats", "Status",
           "SOLVERS", "get_solver", "AdaptiveSolver", "Dopri5", "Tsit5", "Bosh3",
           "IntegralController", "PIController", "TorchDiffEq", "TorchODE"]

SOLVERS: dict[str, type] = {"euler": Euler, "midpoint": Midpoint, "heun": Heun, "rk4": RK4}
SOLVERS.update({"dopri5": Dopri5, "tsit5": Tsit5, "bosh3": Bosh3, "torchdiffeq": TorchDiffEq,
                "torchode": TorchODE})


def get_solver(solver) -> object:
    """A solver object from a name (``"euler"``, ``"rk4"``, ...) or a solver object."""
    if isinstance(solver, str):
        try:
            return SOLVERS[solver.lower()]()
        except KeyError:
            raise ConfigurationError(f"unknown solver {solver!r}; known: {', '.join(SOLVERS)} "
                                     "(or pass a solver object, e.g. dn.solvers.RK4())") from None
    if isinstance(solver, type):
        raise ConfigurationError(f"pass a solver instance, e.g. {solver.__name__}(), not the class")
    if hasattr(solver, "solve"):
        return solver
    raise ConfigurationError(f"solver must be a name or a solver object, got {type(solver).__name__}")
