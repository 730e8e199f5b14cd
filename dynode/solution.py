"""The result of :func:`dynode.integrate`."""

from __future__ import annotations

from dataclasses import dataclass

from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from dynode.history import HistoryTail
    from dynode.solvers.stats import SolverStats

__all__ = ["Solution", "Saver"]


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


class Saver:
    """Where a solver puts its saved states: kept for :class:`Solution` or, with an
    ``observer(t, state)``, handed on at once and not kept (streaming; memory stays flat)."""

    def __init__(self, observer=None):
        self.observer = observer
        self.times: list[float] = []
        self._kept: list[dict[str, Tensor]] = []

    def __call__(self, t: float, state: dict[str, Tensor]) -> None:
        self.times.append(t)
        if self.observer is not None:
            self.observer(t, state)
        else:
            self._kept.append(state)

    def ts(self) -> Tensor:
        """The save times (ms), 1-D float64."""
        import torch

        return torch.tensor(self.times, dtype=torch.float64)

    def states(self, names) -> dict[str, Tensor]:
        """``{name: (len(ts), batch, *shape)}``; empty when the states were streamed."""
        import torch

        if self.observer is not None:
            return {}
        return {n: torch.stack([st[n] for st in self._kept]) for n in names}
