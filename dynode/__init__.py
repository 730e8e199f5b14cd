"""dynode: recurrent networks of the visual system as continuous-time dynamical systems.

Every population obeys ``tau dr/dt = -r + Phi(u)`` with per-connection transmission delays;
networks are :class:`VectorField` modules integrated by interchangeable solvers
(:mod:`dynode.solvers`) under time-dependent stimuli (:mod:`dynode.stimuli`). Time is in ms.
"""

import importlib
import sys
import types

from dynode.version import __version__

# ``import dynode`` is light: the command line answers --help and refuses a bad config file
# before torch is imported. The first public name used (``dn.Network``, ``from dynode import
# integrate``, ...) imports every module below, in this order (layer 1, the core; 2, the
# building blocks, which register the solvers; 3, the workflow), as an eager import would.
_HOME = {
    **dict.fromkeys(["DynodeError", "ConfigurationError", "ShapeError", "DelayError", "DivergenceError",
                     "SolverError", "StabilityWarning", "AccuracyWarning"], "dynode.errors"),
    "VectorField": "dynode.field", "History": "dynode.history", "HistoryReader": "dynode.history",
    **dict.fromkeys(["Network", "Population", "Connection", "RunProtocol"], "dynode.network"),
    "Solver": "dynode.solver", "SolverStats": "dynode.stats", "Status": "dynode.stats",
    "Solution": "dynode.solution", "integrate": "dynode.integrate", "Event": "dynode.events",
    "models": None, "solvers": None, "stimuli": None,
    "analysis": None, "archive": None, "config": None, "errors": None, "experiments": None, "spec": None,
    "train": None, "open_archive": "dynode.archive", "load_model": "dynode.checkpoint",
    "SolverConfig": "dynode.config", "solver_config": "dynode.config", "plot_convergence": "dynode.analysis",
    "convergence": "dynode.convergence", "Record": "dynode.record", "simulate": "dynode.simulate",
    "SimulationResult": "dynode.simulate", "observe": None, "recordings": None, "fit": "dynode.fit",
    "FitResult": "dynode.fit",
}
__all__ = [*_HOME, "__version__"]  # the public names, grouped by layer in _HOME


_state = {"loaded": False, "loading": False}


def _load() -> None:
    """Import every module of :data:`_HOME` and bind the public names (once)."""
    _state["loading"] = True
    try:
        for home in dict.fromkeys(h or f"dynode.{n}" for n, h in _HOME.items()):
            importlib.import_module(home)
        # bound after every import: importing dynode.integrate sets dynode.integrate to the
        # module, the public name is the function
        for n, home in _HOME.items():
            value = importlib.import_module(f"dynode.{n}") if home is None else getattr(importlib.import_module(home), n)
            globals()[n] = value
        _state["loaded"] = True
    finally:
        _state["loading"] = False


class _Package(types.ModuleType):
    """``dynode`` itself: a public name (also one a submodule import bound first, such as the
    module ``dynode.integrate`` for the function ``dn.integrate``) loads the package first."""

    def __getattribute__(self, name: str):
        if name in _HOME and not _state["loaded"] and not _state["loading"]:
            _load()
        return super().__getattribute__(name)

    def __getattr__(self, name: str):
        raise AttributeError(f"module 'dynode' has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        return sorted(set(globals()) | set(_HOME))


sys.modules[__name__].__class__ = _Package
