"""Solver configurations as data: one pydantic model per registered solver class, generated
from it (:data:`dynode.solver.SOLVERS`, filled by :mod:`dynode.solvers`): a registered solver
has its config, its ``kind`` and, if fixed-step, its name in :data:`FIXED_STEP`.

Solvers are a discriminated union on ``kind``; each config takes exactly the options its
solver takes (a typo or an option of another solver is a validation error) and
``build()`` returns the solver object::

    cfg = dn.config.solver_config({"kind": "dopri5", "rtol": 1e-6})
    solver = cfg.build()                      # dn.solvers.Dopri5(rtol=1e-6)
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model, model_validator

from dynode.solver import SOLVERS, Solver
from dynode.solvers import FixedStepSolver


class FrozenConfig(BaseModel):
    """Base of every dynode config: frozen, unknown keys refused, no inf/nan."""

    # inf and nan are no number of ms, tolerance or rate: float fields refuse them (dt_max: inf = no cap)
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class _SolverConfig(FrozenConfig):
    """A solver's options as data. The solver class is the one place of every option's type,
    default and rule: a value it refuses is this config's validation error."""

    solver: ClassVar[type[Solver]]

    @model_validator(mode="after")
    def _solver_accepts(self):
        self.build()  # raises ConfigurationError (a ValueError): reported by pydantic with the path
        return self

    def build(self) -> Solver:
        """The solver object (options left at None are not passed)."""
        return self.solver(**{k: v for k, v in self.model_dump(exclude={"kind"}).items() if v is not None})


def _config(cls: type[Solver]) -> type[_SolverConfig]:
    """The config of solver class ``cls``: ``kind = cls.name`` and its constructor's options with
    their types and defaults (an option whose default is None is optional; one whose default
    is inf, e.g. ``dt_max``, admits inf)."""
    fields: dict[str, Any] = {"kind": (Literal[cls.name], cls.name)}
    for name, (typ, default) in cls.options().items():
        if default is None:
            typ = Optional[typ]
        elif isinstance(default, float) and math.isinf(default):
            typ = Annotated[typ, Field(allow_inf_nan=True)]
        fields[name] = (typ, default)
    model = create_model(f"{cls.__name__}Config", __base__=_SolverConfig, __module__=__name__,
                         __doc__=f"Options of :class:`dynode.solvers.{cls.__name__}` (see its docstring).",
                         **fields)
    model.solver = cls
    return model


CONFIGS: dict[str, type[_SolverConfig]] = {name: _config(cls) for name, cls in SOLVERS.items()}
"""The config of every registered solver by ``kind``, in registration order; each is also a
module attribute named after its class (``EulerConfig``, ..., ``TorchODEConfig``)."""
globals().update({model.__name__: model for model in CONFIGS.values()})
FIXED_STEP = tuple(name for name, cls in SOLVERS.items() if issubclass(cls, FixedStepSolver))
"""The fixed-step solvers' names (``"euler"``, ...): what training and a dt study take."""

SolverConfig = Annotated[Union[tuple(CONFIGS.values())], Field(discriminator="kind")]
"""A solver configuration: one of the ``*Config`` models, chosen by ``kind``."""
FixedSolverConfig = Annotated[Union[tuple(CONFIGS[name] for name in FIXED_STEP)], Field(discriminator="kind")]
"""A fixed-step solver configuration (the solvers a dt study compares)."""

__all__ = ["FrozenConfig", "SolverConfig", "FixedSolverConfig", "solver_config", "CONFIGS", "FIXED_STEP",
           *(model.__name__ for model in CONFIGS.values())]

_SOLVER_ADAPTER: TypeAdapter = TypeAdapter(SolverConfig, config=ConfigDict(title="SolverConfig"))


def solver_config(data: Any) -> Any:
    """Validate a dict (e.g. from ``yaml.safe_load``) or a name into a solver config.

    A bare string is shorthand for ``{"kind": name}``. Raises ``pydantic.ValidationError``
    for an unknown ``kind``, a misspelt or foreign option, or a value out of range.
    """
    if isinstance(data, str):
        data = {"kind": data}
    return _SOLVER_ADAPTER.validate_python(data)
