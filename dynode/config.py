"""Configuration as pydantic v2 models: frozen, ``extra="forbid"``, loaded from YAML/dicts.

Solvers are a discriminated union on ``kind``; each config takes exactly the options its
solver takes (a typo or an option of another solver is a validation error) and
``build()`` returns the solver object::

    cfg = dn.config.solver_config({"kind": "dopri5", "rtol": 1e-6})
    solver = cfg.build()                      # dn.solvers.Dopri5(rtol=1e-6)
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, TypeAdapter, model_validator

__all__ = ["SolverConfig", "solver_config", "EulerConfig", "MidpointConfig", "HeunConfig",
           "RK4Config", "Dopri5Config", "Tsit5Config", "Bosh3Config", "TorchDiffEqConfig",
           "TorchODEConfig"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# -- fixed step ------------------------------------------------------------------------------
class EulerConfig(_Frozen):
    """Forward Euler; ``order="sequential"`` sweeps a Network's populations within a step."""

    kind: Literal["euler"] = "euler"
    order: Literal["simultaneous", "sequential"] = "simultaneous"

    def build(self):
        from dynode.solvers import Euler
        return Euler(order=self.order)


class MidpointConfig(_Frozen):
    kind: Literal["midpoint"] = "midpoint"

    def build(self):
        from dynode.solvers import Midpoint
        return Midpoint()


class HeunConfig(_Frozen):
    kind: Literal["heun"] = "heun"

    def build(self):
        from dynode.solvers import Heun
        return Heun()


class RK4Config(_Frozen):
    kind: Literal["rk4"] = "rk4"

    def build(self):
        from dynode.solvers import RK4
        return RK4()


# -- dynode's adaptive solvers ---------------------------------------------------------------
class _AdaptiveConfig(_Frozen):
    rtol: PositiveFloat = 1e-6
    atol: PositiveFloat = 1e-8
    controller: Literal["integral", "pi"] = "integral"
    dt_min: Annotated[float, Field(ge=0)] = 1e-10
    dt_max: PositiveFloat = math.inf
    max_steps: PositiveInt = 100_000
    safety: Annotated[float, Field(gt=0, le=1)] = 0.9
    factor_min: Annotated[float, Field(gt=0, lt=1)] = 0.2
    factor_max: Annotated[float, Field(gt=1)] = 10.0

    def _build(self, cls):
        return cls(**self.model_dump(exclude={"kind"}))


class Dopri5Config(_AdaptiveConfig):
    kind: Literal["dopri5"] = "dopri5"

    def build(self):
        from dynode.solvers import Dopri5
        return self._build(Dopri5)


class Tsit5Config(_AdaptiveConfig):
    kind: Literal["tsit5"] = "tsit5"

    def build(self):
        from dynode.solvers import Tsit5
        return self._build(Tsit5)


class Bosh3Config(_AdaptiveConfig):
    kind: Literal["bosh3"] = "bosh3"

    def build(self):
        from dynode.solvers import Bosh3
        return self._build(Bosh3)


# -- backends -------------------------------------------------------------------------------
class TorchDiffEqConfig(_Frozen):
    """torchdiffeq: adaptive methods take the step options, fixed-grid ones ``step_size``."""

    kind: Literal["torchdiffeq"] = "torchdiffeq"
    method: Literal["dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun",
                    "euler", "midpoint", "heun2", "heun3", "rk4"] = "dopri5"
    rtol: PositiveFloat = 1e-6
    atol: PositiveFloat = 1e-8
    n_dense: Annotated[int, Field(ge=3)] = 16
    first_step: PositiveFloat | None = None
    min_step: Annotated[float, Field(ge=0)] | None = None
    max_step: PositiveFloat | None = None
    safety: Annotated[float, Field(gt=0, le=1)] | None = None
    ifactor: Annotated[float, Field(gt=1)] | None = None
    dfactor: Annotated[float, Field(gt=0, lt=1)] | None = None
    max_num_steps: PositiveInt | None = None
    step_size: PositiveFloat | None = None

    @model_validator(mode="after")
    def _options_fit_method(self):
        from dynode.solvers.backends import _TDE_FIXED

        adaptive_opts = ("first_step", "min_step", "max_step", "safety", "ifactor", "dfactor",
                         "max_num_steps")
        if self.method in _TDE_FIXED:
            bad = [k for k in adaptive_opts if getattr(self, k) is not None]
            if bad:
                raise ValueError(f"torchdiffeq method {self.method!r} is fixed-step and does not take {bad}")
            if self.step_size is None:
                raise ValueError(f"torchdiffeq method {self.method!r} is fixed-step: give step_size")
        elif self.step_size is not None:
            raise ValueError(f"torchdiffeq method {self.method!r} is adaptive and does not take step_size")
        return self

    def build(self):
        from dynode.solvers import TorchDiffEq
        opts = {k: v for k, v in self.model_dump(exclude={"kind", "method", "rtol", "atol", "n_dense"}).items()
                if v is not None}
        return TorchDiffEq(self.method, self.rtol, self.atol, n_dense=self.n_dense, **opts)


class TorchODEConfig(_Frozen):
    kind: Literal["torchode"] = "torchode"
    method: Literal["dopri5", "tsit5", "heun"] = "dopri5"
    rtol: PositiveFloat = 1e-6
    atol: PositiveFloat = 1e-8
    controller: Literal["integral", "pid"] = "integral"
    per_sample: bool = False
    max_steps: PositiveInt | None = None
    dt_min: Annotated[float, Field(ge=0)] | None = None
    dt_max: PositiveFloat | None = None
    n_dense: Annotated[int, Field(ge=3)] = 16

    def build(self):
        from dynode.solvers import TorchODE
        return TorchODE(**self.model_dump(exclude={"kind"}))


SolverConfig = Annotated[
    Union[EulerConfig, MidpointConfig, HeunConfig, RK4Config, Dopri5Config, Tsit5Config,
          Bosh3Config, TorchDiffEqConfig, TorchODEConfig],
    Field(discriminator="kind"),
]
"""A solver configuration: one of the ``*Config`` models, chosen by ``kind``."""

_SOLVER_ADAPTER: TypeAdapter = TypeAdapter(SolverConfig)


def solver_config(data: Any) -> Any:
    """Validate a dict (e.g. from ``yaml.safe_load``) or a name into a solver config.

    A bare string is shorthand for ``{"kind": name}``. Raises ``pydantic.ValidationError``
    for an unknown ``kind``, a misspelt or foreign option, or a value out of range.
    """
    if isinstance(data, str):
        data = {"kind": data}
    return _SOLVER_ADAPTER.validate_python(data)
