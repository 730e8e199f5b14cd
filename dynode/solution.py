"""The result of a solve, and the one output path every solver writes it through."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from dynode.errors import ConfigurationError
from dynode.stats import SolverStats, Status
from dynode.tolerances import time_tol

if TYPE_CHECKING:  # pragma: no cover
    from dynode.history import HistoryTail
    from dynode.problem import Problem

__all__ = ["Solution", "Output", "DenseOutput"]


def _weighted(terms: Sequence[Mapping[str, Tensor]], w: Sequence[float]) -> dict[str, Tensor]:
    """``sum_i w_i T_i`` for every population (fresh tensors; zero weights skipped)."""
    out = {}
    for name in terms[0]:
        acc = None
        for wi, term in zip(w, terms):
            if wi:
                acc = term[name] * wi if acc is None else acc.add(term[name], alpha=wi)
        out[name] = terms[0][name] * 0.0 if acc is None else acc
    return out


def noise_refusal(solver: str, noisy) -> str:
    """The message that refuses noise in the dynamics to ``solver``."""
    return (f"{solver} cannot integrate noise in the dynamics (noisy populations: {sorted(noisy)}); use "
            "solver='euler' (Euler-Maruyama) or solver='heun' (stochastic Heun, strong order 1 for additive "
            "noise), or set the populations' noise to 0")


class DenseOutput:
    r"""A solve's continuous output: the solver's own interpolant on every step.

    Step ``[t_a, t_a + h]`` is stored as tensors ``T_i`` (states, stage derivatives: references,
    no copy) and weights ``w_i(theta)``, and

    .. math:: r(t_a + \theta h) = \textstyle\sum_i w_i(\theta)\, T_i, \qquad 0 \le \theta \le 1 .

    Each step uses only its own data (its stages see the stimulus' one-sided values), so the
    interpolant is one-sided at stimulus jumps. Kept only when asked: see ``dense`` in
    :func:`dynode.integrate` for its memory.
    """

    def __init__(self, t0: float, t_end: float):
        self.t0, self.t_end = float(t0), float(t_end)
        self._pieces: list[tuple[float, float, tuple, Callable[[float], Sequence[float]]]] = []

    def add(self, t: float, h: float, terms: Sequence[Mapping[str, Tensor]],
            weights: Callable[[float], Sequence[float]]) -> None:
        """Append the step ``[t, t + h]`` (steps are added in time order)."""
        self._pieces.append((float(t), float(h), tuple(terms), weights))

    def __len__(self) -> int:
        return len(self._pieces)

    def __call__(self, t: float) -> dict[str, Tensor]:
        """The state at time ``t`` (ms), ``{population: (batch, *shape)}``."""
        t = float(t)
        tol = time_tol(self.t_end)
        if not (self.t0 - tol <= t <= self.t_end + tol):
            raise ConfigurationError(f"evaluate(t = {t:g} ms): outside the run [{self.t0:g}, "
                                     f"{self.t_end:g}] ms; the dense output covers only that interval")
        j = max(bisect.bisect_right(self._pieces, t, key=lambda piece: piece[0]) - 1, 0)
        ta, h, terms, weights = self._pieces[j]
        theta = min(max((t - ta) / h, 0.0), 1.0)
        return _weighted(terms, weights(theta))


@dataclass(frozen=True)
class Solution:
    """Saved trajectory of one solve.

    ts : save times in ms, 1-D float64.
    states : ``{population: tensor of shape (len(ts), batch, *shape)}``.
    stats : :class:`dynode.SolverStats`, the solve's counts, status and the time reached.
    final_state : the state at ``t_end`` (``{population: (batch, *shape)}``).
    tail : the delayed past at ``t_end`` (fixed-step solvers): pass the solution itself as
        ``initial_state`` to continue the run exactly, delays included.
    dense : the solver's interpolant over the whole run (:class:`DenseOutput`), kept only
        with ``integrate(..., dense=True)``; read it with :meth:`evaluate`.
    seeds : a noisy run's per-sample Brownian path keys (int64, ``(batch,)``; ``None`` without
        noise): ``integrate(..., seed=sol.seeds)`` replays the run, ``seed=sol.seeds[i:i+1]``
        sample ``i`` alone (see :mod:`dynode.brownian`); a continuation reuses them.
    events : ``{name: (batch,) float64}``, each sample's event time in ms (its first zero
        crossing of ``g``, located on the solver's interpolant; NaN where none fired) with
        ``integrate(..., events=...)``; differentiable (implicit function theorem, see
        :mod:`dynode.events`). A run that ended early because every sample's terminal event
        fired has ``stats.t_final < t_end`` (its saves after that repeat the held states).
    """

    ts: Tensor
    states: dict[str, Tensor]
    stats: SolverStats
    final_state: dict[str, Tensor]
    tail: HistoryTail | None = None
    dense: DenseOutput | None = None
    seeds: Tensor | None = None
    events: dict[str, Tensor] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Tensor:
        return self.states[name]

    def evaluate(self, t) -> dict[str, Tensor]:
        """The state at time(s) ``t`` (ms) from the solver's own interpolant (dense output).

        ``t`` a number: ``{population: (batch, *shape)}``; a sequence or 1-D tensor of times:
        ``{population: (len(t), batch, *shape)}``. Needs ``integrate(..., dense=True)``; a time
        outside ``[t0, t_end]`` is an error.
        """
        if self.dense is None:
            span = f"[{float(self.ts[0]):g}, {float(self.ts[-1]):g}] ms" if len(self.ts) else "the run"
            raise ConfigurationError(
                f"this Solution (saved on {span}) kept no dense output: integrate with dense=True to "
                "evaluate it at any time, or pass the times as save_at")
        if isinstance(t, Tensor):
            t = t.tolist()
        if isinstance(t, (int, float)):
            if not math.isfinite(float(t)):
                raise ConfigurationError(f"evaluate(t = {t}): t must be a finite time in ms")
            return self.dense(float(t))
        times = [float(x) for x in t]
        if not times:
            raise ConfigurationError("evaluate: give at least one time (ms)")
        values = [self.evaluate(x) for x in times]
        return {k: torch.stack([v[k] for v in values]) for k in values[0]}

    at = evaluate

    def to_xarray(self):
        """The saved trajectory as an ``xarray.Dataset``: one variable per population, dims
        ``(time, sample, <population>_channel, <population>_y, <population>_x)`` (the archives'
        unit dims, prefixed with the population since populations differ in size; ``channel``
        and ``x`` for 2-D, ``channel`` for vectors), time in ms (CF ``units``/``long_name``
        attributes). The values are detached copies on the CPU (plotting needs no ``.detach()``);
        a streamed run (no saved states) is an error."""
        import xarray as xr  # only here: the core does not need xarray otherwise

        if not self.states:
            raise ConfigurationError("this Solution holds no saved states (a streamed run): nothing to put "
                                     "in a Dataset; read the archive it streamed to")
        dims = {1: ("channel",), 2: ("channel", "x"), 3: ("channel", "y", "x"), 4: ("channel", "z", "y", "x")}
        data = {}
        for name, v in self.states.items():
            unit_dims = tuple(f"{name}_{d}" for d in dims.get(v.dim() - 2, tuple(f"dim_{i}" for i in range(v.dim() - 2))))
            arr = v.detach().to("cpu", torch.float64 if v.dtype == torch.float64 else torch.float32).numpy()
            data[name] = (("time", "sample", *unit_dims), arr,
                          {"units": "a.u.", "long_name": f"rate of population {name}"})
        times = self.ts.detach().to("cpu", torch.float64).numpy()
        return xr.Dataset(data, coords={"time": ("time", times, {"units": "ms", "long_name": "time"})},
                          attrs={"solver_status": self.stats.status.name, "nfe": int(self.stats.nfe)})

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self.states.items())
        return (f"Solution(ts=[{float(self.ts[0]):g} .. {float(self.ts[-1]):g}] ms ({len(self.ts)} points), "
                f"states={{{shapes}}}, nfe={self.stats.nfe}, status={self.stats.status.name})")


class Output:
    r"""Where every solver puts its results: saved states, dense output, the :class:`Solution`.

    ``save_at=None`` saves ``t0`` and the end of every step; otherwise every time ``t_s`` of
    ``save_at`` once, from the step ``[t, t + h]`` that reaches it (to 1e-9 relative): the
    step's end state if ``t_s`` is its end, else the step's interpolant (:class:`DenseOutput`)
    at ``theta = (t_s - t) / h``. ``snap``: a save at a step's end is reported at the step's
    own time (a grid solver's exact ``t0 + n dt``).

    With an ``observer(t, state)`` each saved state is handed on at once and not kept
    (streaming: memory stays flat, ``Solution.states`` is empty).

    Every solver makes its ``Output`` before the first step, so a noisy problem is refused here
    unless the solver says it integrates the noise (``noise_ok``: Euler-Maruyama, stochastic Heun).
    """

    def __init__(self, problem: Problem, observer=None, *, snap: bool = False, noise_ok: bool = False):
        noisy = getattr(problem, "noise", None)
        if noisy and not noise_ok:
            raise ConfigurationError(noise_refusal("this solver", noisy))
        self.t0, self.names, self.save_at = problem.t0, problem.names, problem.save_at
        self.observer, self.snap = observer, snap
        self.seeds = problem.seeds
        self.dense = DenseOutput(problem.t0, problem.t_end) if problem.dense else None
        self.times: list[float] = []
        self._kept: list[Mapping[str, Tensor]] = []

    def emit(self, t: float, state: Mapping[str, Tensor]) -> None:
        """Save ``state`` at time ``t`` (ms)."""
        self.times.append(t)
        if self.observer is not None:
            self.observer(t, state)
        else:
            self._kept.append(state)

    def _upto(self, t: float) -> int:
        """How many save times are ``<= t`` (to 1e-9 relative)."""
        return bisect.bisect_right(self.save_at, t + time_tol(t))

    def between(self, t: float, t_new: float) -> Sequence[float]:
        """The save times in ``(t, t_new]`` (none when every step end is saved)."""
        return () if self.save_at is None else self.save_at[self._upto(t):self._upto(t_new)]

    def start(self, y0: Mapping[str, Tensor]) -> None:
        """The saves at ``t0``."""
        for ts in ((self.t0,) if self.save_at is None else self.save_at[:self._upto(self.t0)]):
            self.emit(self.t0 if self.snap else ts, y0)

    def step(self, t: float, t_new: float, y_new: Mapping[str, Tensor],
             interpolant: Callable[[], tuple[Sequence[Mapping[str, Tensor]], Callable]], put=None) -> None:
        """The step ``[t, t_new]`` is done: save what falls in it (``put(t, state)``, default
        :meth:`emit`) and keep its interpolant ``() -> ([T_i], theta -> [w_i])`` for ``dense``."""
        put = self.emit if put is None else put
        h, piece = t_new - t, None
        if self.dense is not None:
            piece = interpolant()
            self.dense.add(t, h, *piece)
        if self.save_at is None:
            put(t_new, y_new)
            return
        end = t_new - time_tol(t_new)
        for ts in self.between(t, t_new):
            if ts >= end:
                put(t_new if self.snap else ts, y_new)
            else:
                piece = piece or interpolant()
                put(ts, _weighted(piece[0], piece[1]((ts - t) / h)))

    def solution(self, final_state: dict[str, Tensor], *, nfe: int, steps: int, accepted: int,
                 rejected: int, t_final: float, tail: HistoryTail | None = None,
                 events: dict[str, Tensor] | None = None) -> Solution:
        """The :class:`Solution` of a successful solve."""
        stats = SolverStats(nfe=nfe, steps=steps, accepted=accepted, rejected=rejected,
                            status=Status.SUCCESS, t_final=t_final)
        ts = torch.tensor(self.times, dtype=torch.float64)
        states = {} if self.observer is not None else {
            n: torch.stack([st[n] for st in self._kept]) for n in self.names}
        return Solution(ts=ts, states=states, stats=stats, final_state=final_state, tail=tail, dense=self.dense,
                        seeds=self.seeds, events=dict(events or {}))

    def fill(self, t: float, t_end: float, grid: Sequence[float] | None, state: Mapping[str, Tensor]) -> None:
        """A run that stopped at ``t`` (every sample's terminal event fired) saves its held
        ``state`` at the save times left in ``(t, t_end]`` (``grid``: the step ends a full run
        would have saved when every step end is saved; None for an adaptive run, which then
        saves nothing more)."""
        times = self.between(t, t_end) if self.save_at is not None else (grid or ())
        for ts in times:
            self.emit(ts, state)
