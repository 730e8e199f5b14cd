"""Solver statistics and status codes, returned (never printed) with every solution."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass

__all__ = ["Status", "SolverStats"]


class Status(enum.IntEnum):
    """Why a solve ended. ``SUCCESS`` is 0; every other value comes with a ``SolverError``."""

    SUCCESS = 0
    REACHED_DT_MIN = 1
    REACHED_MAX_STEPS = 2
    NON_FINITE = 3
    DIVERGED = 4

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True)
class SolverStats:
    """Counts of one solve.

    nfe : vector-field evaluations; steps : steps attempted; accepted / rejected : adaptive
    step outcomes (a fixed-step solver accepts every step); status : :class:`Status`;
    t_final : the time reached (ms).
    """

    nfe: int
    steps: int
    accepted: int
    rejected: int
    status: Status
    t_final: float

    def as_dict(self) -> dict:
        d = asdict(self)
        d["status"] = self.status.name.lower()
        return d
