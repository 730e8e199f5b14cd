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
# layer 1, the core
from dynode.field import VectorField
from dynode.history import History, HistoryReader
from dynode.network import Connection, Network, Population, RunProtocol
from dynode.solver import Solver
from dynode.stats import SolverStats, Status
from dynode.solution import Solution
from dynode.integrate import integrate
# layer 2, the building blocks
from dynode import models, solvers, stimuli  # noqa: E402
# layer 3, the workflow
from dynode import analysis, archive, config, errors, experiments, spec, train  # noqa: E402
from dynode.archive import open_archive
from dynode.checkpoint import load_model
from dynode.config import SolverConfig, solver_config
from dynode.analysis.figures import plot_convergence
from dynode.convergence import convergence
from dynode.record import Record
from dynode.simulate import SimulationResult, simulate
from dynode.version import __version__

__all__ = [
    "VectorField", "Network", "Population", "Connection", "RunProtocol", "History", "HistoryReader", "Solver",
    "integrate", "Solution",
    "SolverStats", "Status", "models", "solvers", "stimuli",
    "convergence", "plot_convergence", "config", "SolverConfig", "solver_config",
    "Record", "simulate", "SimulationResult", "open_archive", "archive", "analysis", "spec", "load_model",
    "DynodeError", "ConfigurationError", "ShapeError", "DelayError", "DivergenceError",
    "SolverError", "StabilityWarning", "AccuracyWarning", "errors", "experiments", "train", "__version__",
]
