"""The solver protocol: what every solver declares, and solvers by name.

A solver is a :class:`Solver` whose ``solve(problem, dt, *, observer=None)`` returns a
:class:`dynode.Solution`. What it offers is declared on the class (never probed):

* ``adaptive``: it chooses its steps by error control; ``dt`` is an optional first step;
* ``grid``: its steps end on ``t0 + n dt`` (it needs ``dt``; a save there gets the grid time);
* ``fresh_states``: the states it hands to an observer are new tensors that it never
  modifies afterwards (a recorder may keep them by reference instead of copying);
* ``dense_output``: it keeps its interpolant for ``integrate(..., dense=True)``;
* ``continues``: it continues a :class:`dynode.Solution` with its delayed past (``tail``)
  and recomputes checkpointed segments (``checkpoint=``).

:mod:`dynode.solvers` registers its solvers here (:func:`register`), so that
:func:`dynode.integrate` resolves names without depending on the solvers package.
"""

from __future__ import annotations

import abc
import importlib
import inspect
import math
from collections.abc import Callable
from typing import Any, ClassVar

from dynode.errors import ConfigurationError
from dynode.problem import Problem
from dynode.solution import Solution

__all__ = ["Solver", "SOLVERS", "register", "get_solver", "check_options", "RTOL", "ATOL"]

RTOL, ATOL = 1e-6, 1e-8  # the default tolerances of every adaptive solver and backend

_FINITE_STEP = (lambda v: 0 < v < math.inf, "a finite step > 0 ms")
_MIN_STEP = (lambda v: 0 <= v < math.inf, "a finite step >= 0 ms")
_MAX_STEP = (lambda v: 0 < v, "a step > 0 ms (inf for no cap)")
_COUNT = (lambda v: isinstance(v, int) and v >= 1, "a positive int")
# option -> (test, what it must be): every solver's options are checked here, at construction
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "rtol": (lambda v: 0 < v < math.inf, "a finite number > 0"),
    "atol": (lambda v: 0 < v < math.inf, "a finite number > 0 (a small absolute floor such as 1e-9)"),
    "step_size": _FINITE_STEP, "first_step": _FINITE_STEP, "min_step": _MIN_STEP, "dt_min": _MIN_STEP,
    "max_step": _MAX_STEP, "dt_max": _MAX_STEP, "max_steps": _COUNT, "max_num_steps": _COUNT,
    "n_dense": (lambda v: isinstance(v, int) and v >= 3, "an int >= 3"),
    "safety": (lambda v: 0 < v <= 1, "a factor in (0, 1]"),
    "factor_min": (lambda v: 0 < v < 1, "a shrink factor in (0, 1)"),
    "dfactor": (lambda v: 0 < v < 1, "a shrink factor in (0, 1)"),
    "factor_max": (lambda v: 1 < v, "a growth factor > 1"),
    "ifactor": (lambda v: 1 < v < math.inf, "a finite growth factor > 1"),
}


def check_options(who: str, **values: Any) -> None:
    """A :class:`ConfigurationError` naming ``who`` and the option for the first value (not
    None) that breaks its rule in :data:`RULES` (a bool is never a number)."""
    for key, value in values.items():
        test, what = RULES[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not test(value)):
            raise ConfigurationError(f"{who}: {key} must be {what}, got {value!r}")


class Solver(abc.ABC):
    """Base of every solver; see the module for the capability flags."""

    name: ClassVar[str]
    adaptive: ClassVar[bool] = False
    grid: ClassVar[bool] = False
    fresh_states: ClassVar[bool] = False
    dense_output: ClassVar[bool] = False
    continues: ClassVar[bool] = False
    extra_options: ClassVar[dict[str, Any]] = {}  # the types of a ``**options`` constructor argument

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__.lower()

    @abc.abstractmethod
    def solve(self, problem: Problem, dt: float | None = None, *, observer=None) -> Solution:
        """Integrate ``problem``; ``observer(t, state)``, if given, receives every saved state
        as it is produced and the returned ``Solution.states`` is then empty."""

    @classmethod
    def options(cls) -> dict[str, tuple[Any, Any]]:
        """``{option: (type, default)}``: the constructor's arguments (what a config may set)."""
        out: dict[str, tuple[Any, Any]] = {}
        for p in inspect.signature(cls, eval_str=True).parameters.values():
            if p.kind is p.VAR_KEYWORD:
                out.update({k: (t, None) for k, t in cls.extra_options.items()})
            else:
                out[p.name] = (p.annotation, p.default)
        return out


SOLVERS: dict[str, type[Solver]] = {}


def register(*classes: type[Solver]) -> None:
    """Make solver classes available by their ``name`` (e.g. ``integrate(..., solver="rk4")``)."""
    for cls in classes:
        SOLVERS[cls.name] = cls


def get_solver(solver: str | Solver) -> Solver:
    """A solver object from a name (``"euler"``, ``"rk4"``, ...) or a solver object."""
    if isinstance(solver, str):
        if not SOLVERS:  # dynode.solvers registers the built-in solvers when imported (import dynode
            importlib.import_module("dynode.solvers")  # does); a program that imported only the core
        try:
            return SOLVERS[solver.lower()]()
        except KeyError:
            raise ConfigurationError(f"unknown solver {solver!r}; known: {', '.join(SOLVERS)} "
                                     "(or pass a solver object, e.g. dn.solvers.RK4())") from None
    if isinstance(solver, type):
        raise ConfigurationError(f"pass a solver instance, e.g. {solver.__name__}(), not the class")
    if isinstance(solver, Solver):
        return solver
    raise ConfigurationError(f"solver must be a name or a dynode.solvers.Solver (a subclass declares what "
                             f"it offers: adaptive, grid, ...), got {type(solver).__name__}")
