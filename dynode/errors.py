"""Exceptions and warnings raised by dynode.

Every error names what to change: the population or connection, the time in ms and the
parameter (``dt``, ``tau``, ``delay``, a tolerance) that fixes it.
"""

from __future__ import annotations

import sys

__all__ = [
    "DynodeError",
    "ConfigurationError",
    "ShapeError",
    "DelayError",
    "DivergenceError",
    "SolverError",
    "StabilityWarning",
    "ArchiveError",
    "ArchiveLockedError",
    "ArchiveCorruptError",
    "CheckpointError",
    "AccuracyWarning",
    "BaselineDriftWarning",
    "MissingConditionsError",
    "AnalysisWarning",
    "UndefinedMetricWarning",
    "user_stacklevel",
]

def _is_dynode(frame) -> bool:
    """Whether ``frame`` runs dynode's own code: a module of the ``dynode`` package, by name
    (its subpackages ``dynode.solvers``, ``dynode.models``, ``dynode.stimuli`` live in other
    folders of the source tree)."""
    name = frame.f_globals.get("__name__") or ""
    return name == "dynode" or name.startswith("dynode.")


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes :func:`warnings.warn`, called in the same function as this,
    point at the first caller outside the dynode package: the line of the user's script,
    notebook cell or test that called dynode, however deep inside dynode the warning arises.

    Usage: ``warnings.warn(message, SomeWarning, stacklevel=user_stacklevel())``. When every
    frame is dynode's, the outermost frame. A user's own code that dynode calls back (a custom
    vector field) is outside the package, so a warning raised below it points at that code's
    line."""
    frame = sys._getframe(1)  # the function that calls warnings.warn: stacklevel 1
    level = 1
    while frame.f_back is not None and _is_dynode(frame):
        frame = frame.f_back
        level += 1
    return level


class DynodeError(Exception):
    """Base class of every error dynode raises on purpose."""


class ConfigurationError(DynodeError, ValueError):
    """A model, stimulus or solver option that cannot work (raised before any step runs)."""


class ShapeError(ConfigurationError):
    """A connection, stimulus or initial state whose shape does not fit its population."""


class DelayError(ConfigurationError):
    """A delay that the run cannot read as declared: not a multiple of a fixed-step ``dt`` (or of
    the ``dt`` of the run being continued), negative, beyond ``max_delay()``, or shorter than an
    adaptive step."""


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


class AccuracyWarning(UserWarning):
    """A run that is correct but less accurate than the method's order promises (e.g. a
    stimulus jump between the grid points of a fixed-step solver: first order there)."""


class BaselineDriftWarning(UserWarning):
    """The network's activity before a stimulus is not steady: a baseline read from it drifts."""


class MissingConditionsError(ConfigurationError):
    """An analysis needs stimulus conditions (or an experiment) that the archive does not hold.

    Attributes
    ----------
    missing : the names of the missing conditions or experiments.
    """

    def __init__(self, message: str, *, missing: list[str]):
        super().__init__(message)
        self.missing = list(missing)


class AnalysisWarning(UserWarning):
    """An analysis number that is computed but should not be read as a result as it stands: a
    baseline that drifts, a response below its baseline, a fit that extrapolates or has
    parameters on their bounds, a window cut by the end of the epoch."""


class UndefinedMetricWarning(AnalysisWarning):
    """A metric that is not defined for this response (a peak time on a plateau, a c50 below
    the lowest tested contrast, ...): the analysis returns NaN (``None`` in a summary) and
    says why, instead of a number."""


class CheckpointError(ConfigurationError):
    """A file given as a checkpoint or as weights that is not one this run can use: not a torch
    file, truncated, holding objects other than tensors and plain data (refused, never
    unpickled), a plain state_dict where a training checkpoint is needed, or weights of
    another architecture."""


class ArchiveError(DynodeError):
    """An archive that cannot be written, read, repaired or replaced as asked (a store that
    dynode did not write, values that its storage dtype cannot hold, ...)."""


class ArchiveLockedError(ArchiveError):
    """The archive is being written by a run that holds its lease (``writer`` root attribute).

    Attributes
    ----------
    pid, host : the writing process and its host.
    heartbeat_age : seconds since the writer last refreshed its lease.
    """

    def __init__(self, message: str, *, pid: int, host: str, heartbeat_age: float):
        super().__init__(message)
        self.pid, self.host, self.heartbeat_age = pid, host, heartbeat_age


class ArchiveCorruptError(ArchiveError):
    """Committed data of an archive is missing or fails its checksum.

    Attributes
    ----------
    report : the :class:`dynode.archive.VerifyReport` naming each damaged population, variable
        and step range.
    """

    def __init__(self, message: str, *, report):
        super().__init__(message)
        self.report = report


def describe_validation_error(err) -> str:
    """One line per problem: ``section.field: reason`` (pydantic's messages, with paths)."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"] if not (isinstance(x, str) and x.endswith("Config")))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not an option here; check the spelling)"
        lines.append(f"{loc or '<top>'}: {msg}")
    return "; ".join(lines)
