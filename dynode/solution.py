"""The result of :func:`dynode.integrate`."""

from __future__ import annotations

from dataclasses import dataclass

from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from dynode.history import HistoryTail
    from dynode.solvers.stats import SolverStats

__all__ = ["Solution"]


@dataclass(frozen=True)
class Solution:
    """Saved trajectory of one solve.

    ts : save times in ms, 1-D float64.
    states : ``{population: tensor of shape (len(ts), batch, *shape)}``.
    stats : :class:`dynode.solvers.SolverStats` (nfe, steps, accepted, rejected, status).
    final_state : the state at ``t_end`` (``{population: (batch, *shape)}``).
    tail : the delayed past at ``t_end`` (fixed-step solvers): pass the solution itself as
        ``initial_state`` to continue the run exactly, delays included.
    """

    ts: Tensor
    states: dict[str, Tensor]
    stats: "SolverStats"
    final_state: dict[str, Tensor]
    tail: "HistoryTail | None" = None

    def __getitem__(self, name: str) -> Tensor:
        return self.states[name]

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self.states.items())
        return (f"Solution(ts=[{float(self.ts[0]):g} .. {float(self.ts[-1]):g}] ms ({len(self.ts)} points), "
                f"states={{{shapes}}}, nfe={self.stats.nfe}, status={self.stats.status.name})")
