"""Exceptions and warnings raised by dynode.

Every error names what to change: the population or connection, the time in ms and the
parameter (``dt``, ``tau``, ``delay``, a tolerance) that fixes it.
"""

from __future__ import annotations

__all__ = [
    "DynodeError",
    "ConfigurationError",
    "ShapeError",
    "DelayError",
    "DivergenceError",
    "SolverError",
    "StabilityWarning",
    "BaselineDriftWarning",
]


class DynodeError(Exception):
    """Base class of every error dynode raises on purpose."""


class ConfigurationError(DynodeError, ValueError):
    """A model, stimulus or solver option that cannot work (raised before any step runs)."""


class ShapeError(ConfigurationError):
    """A connection, stimulus or initial state whose shape does not fit its population."""


class DelayError(ConfigurationError):
    """A transmission delay that the chosen time grid cannot represent exactly."""


class DivergenceError(DynodeError, RuntimeError):
    """Activity became non-finite or exceeded the blow-up threshold during integration.

    Attributes
    ----------
    population : the first population found diverging.
    t_range : ``(t_last_ok, t_detected)`` in ms: the divergence happened in this window.
    dt_over_tau : ``dt / tau`` of that population (``None`` if the field has no tau).
    """

    def __init__(self, message: str, *, population: str, t_range: tuple[float, float],
                 dt_over_tau: float | None):
        super().__init__(message)
        self.population = population
        self.t_range = t_range
        self.dt_over_tau = dt_over_tau


class SolverError(DynodeError, RuntimeError):
    """An adaptive solve that could not finish (step size underflow, too many steps, NaN).

    Carries the solver ``status``, the time ``t`` reached (ms), the population with the
    largest error estimate and advice on what to change.
    """

    def __init__(self, message: str, *, status: int, t: float, population: str | None = None):
        super().__init__(message)
        self.status = status
        self.t = t
        self.population = population


class StabilityWarning(UserWarning):
    """A configuration that runs but is probably not what was meant (e.g. Euler with dt > tau)."""


class BaselineDriftWarning(UserWarning):
    """The network's activity before a stimulus is not steady: a baseline read from it drifts."""
