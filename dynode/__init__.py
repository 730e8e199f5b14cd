"""dynode: recurrent networks of the visual system as continuous-time dynamical systems.

Every population obeys ``tau dr/dt = -r + Phi(u)`` with per-connection transmission delays;
networks are :class:`VectorField` modules integrated by interchangeable solvers
(:mod:`dynode.solvers`) under time-dependent stimuli (:mod:`dynode.stimuli`). Time is in ms.
"""

from dynode.errors import (
    ConfigurationError,
    DelayError,
    DivergenceError,
    DynodeError,
    ShapeError,
    SolverError,
    StabilityWarning,
    AccuracyWarning,
)
from dynode.field import VectorField
from dynode.history import History
from dynode.network import Connection, Network, Population, RunProtocol
from dynode.solution import Solution
from dynode import models, solvers, stimuli  # noqa: E402  (subpackages)
from dynode.integrate import integrate
from dynode.solvers import SolverStats, Status
from dynode.convergence import convergence, plot_convergence
from dynode import config  # noqa: E402  (pydantic configs)
from dynode.config import SolverConfig, solver_config
from dynode.record import Record
from dynode.simulate import SimulationResult, simulate
from dynode.archive import open_archive
from dynode import archive  # noqa: E402  (selection helpers, export)
from dynode import analysis  # noqa: E402  (time courses, metrics, DN fit, figures)
from dynode import spec  # noqa: E402  (networks as data: specs, load_model)
from dynode.checkpoint import load_model
from dynode import errors, experiments, train  # noqa: E402  (workflow modules the README uses)

from dynode.version import __version__

__all__ = [
    "VectorField", "Network", "Population", "Connection", "RunProtocol", "History", "integrate", "Solution",
    "SolverStats", "Status", "models", "solvers", "stimuli",
    "convergence", "plot_convergence", "config", "SolverConfig", "solver_config",
    "Record", "simulate", "SimulationResult", "open_archive", "archive", "analysis", "spec", "load_model",
    "DynodeError", "ConfigurationError", "ShapeError", "DelayError", "DivergenceError",
    "SolverError", "StabilityWarning", "AccuracyWarning", "errors", "experiments", "train", "__version__",
]
