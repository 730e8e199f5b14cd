"""Solvers: interchangeable integrators, by name or object.

Fixed step: :class:`Euler` (default), :class:`Midpoint`, :class:`Heun`, :class:`RK4`.
"""

from __future__ import annotations

from dynode.errors import ConfigurationError
from dynode.solvers.fixed import RK4, Euler, FixedStepSolver, Heun, Midpoint
from dynode.solvers.stats import SolverStats, Status

__all__ = ["Euler", "Midpoint", "Heun", "RK4", "FixedStepSolver", "SolverStats", "Status",
           "SOLVERS", "get_solver"]

SOLVERS: dict[str, type] = {"euler": Euler, "midpoint": Midpoint, "heun": Heun, "rk4": RK4}


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
