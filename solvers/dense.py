r"""Dense history for the method of steps, and breakpoint propagation.

An adaptive delay solver advances step by step; every accepted step ``[t_n, t_n + h]``
keeps its start state ``y_n`` and stage derivatives ``k_i`` (references to the tensors the
step produced: no copy, no ``torch.cat``), so that the method's continuous extension

.. math:: y(t_n + \theta h) = y_n + h \textstyle\sum_i B_i(\theta)\, k_i, \qquad 0 \le \theta \le 1,

answers delayed reads ``r(t - d)`` anywhere in the past. Because every step is at most the
smallest positive delay long, ``t - d`` always lies in an accepted step (or before ``t0``,
where the history is the constant initial state): no extrapolation is ever needed.

Breakpoints. A delay equation is not smooth at ``t0`` (the constant history meets the
solution) nor where the stimulus jumps; each non-smoothness reappears ``d`` later, one
derivative smoother, for every delay ``d``. :func:`propagate_breakpoints` lists ``t_b + sum
of up to L delays`` (``L = order + 1``, after which the solution is smooth enough for the
method) so that the solver ends steps exactly there.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from dynode.errors import DelayError
from dynode.history import lag_input

__all__ = ["DenseHistory", "field_delays", "propagate_breakpoints", "time_tol"]


def time_tol(t: float) -> float:
    """Tolerance for comparing times in ms (relative 1e-10, at least 1e-10 ms)."""
    return 1e-10 * max(1.0, abs(t))


def field_delays(field) -> tuple[float, ...]:
    """The distinct positive delays of a field: ``field.delays()`` plus ``field.max_delay()``."""
    ds = {float(d) for _, d in field.delays().values() if d > 0}
    md = float(field.max_delay())
    if md > 0:
        ds.add(md)
    out: list[float] = []
    for d in sorted(ds):
        if not out or d - out[-1] > time_tol(d):
            out.append(d)
    return tuple(out)


def propagate_breakpoints(t0: float, t_end: float, stimulus_breakpoints: Sequence[float],
                          delays: Sequence[float], levels: int) -> tuple[list[float], list[bool]]:
    """Forced step ends in ``(t0, t_end]`` and whether the vector field may jump there.

    ``t0`` propagates as ``t0 + d_1 + ... + d_j`` (``j <= levels``): the solution is only
    less smooth there, the field is continuous. A stimulus breakpoint ``b`` and its images
    ``b + d_1 + ... + d_j`` are *jumps* (the input, or an input read with a delay, changes
    value): the solver evaluates the last stage of a step ending there with the left limit
    and restarts the stages after it. ``t_end`` is always the last entry.
    """
    tol = time_tol(t_end)
    key = lambda x: round(x / tol)  # noqa: E731
    smooth: dict[int, float] = {}
    jump: dict[int, float] = {}
    max_total = (t_end - t0) + tol
    for base, target in (([t0], smooth), (list(stimulus_breakpoints), jump)):
        frontier = {key(b): b for b in base}
        for b in base:
            if t0 + tol < b < t_end - tol:
                target[key(b)] = b
        for _ in range(levels if delays else 0):
            nxt: dict[int, float] = {}
            for b in frontier.values():
                for d in delays:
                    x = b + d
                    if x < t_end - tol and x - t0 <= max_total:
                        nxt.setdefault(key(x), x)
            for k, x in nxt.items():
                if x > t0 + tol:
                    target.setdefault(k, x)
            frontier = nxt
            if not frontier:
                break
    times = sorted({**smooth, **jump}.items(), key=lambda kv: kv[1])
    stops: list[float] = []
    is_jump: list[bool] = []
    for k, x in times:
        if stops and x - stops[-1] <= tol:
            is_jump[-1] = is_jump[-1] or k in jump
            continue
        stops.append(x)
        is_jump.append(k in jump)
    stops.append(float(t_end))
    is_jump.append(False)
    return stops, is_jump


class _Step:
    __slots__ = ("t", "h", "end", "y", "ks", "y_end")

    def __init__(self, t: float, h: float, end: float, y: list[Tensor], ks: list[list[Tensor]],
                 y_end: list[Tensor]):
        self.t, self.h, self.end, self.y, self.ks, self.y_end = t, h, end, y, ks, y_end


class DenseHistory:
    """Accepted steps and their interpolant; read with ``lag(name, delay)`` like :class:`dynode.History`.

    Parameters
    ----------
    initial_state : the state at ``t0``, also the constant history before ``t0``.
    t0 : start time (ms).
    max_delay : the longest delay read (ms); older steps are dropped.
    weights : ``theta -> (B_1(theta), ..., B_s(theta))``, the method's dense-output weights.
    inputs : ``t -> {input_name: tensor}`` for inputs read with a delay.
    """

    def __init__(self, initial_state: Mapping[str, Tensor], *, t0: float, max_delay: float,
                 weights: Callable[[float], Sequence[float]],
                 inputs: Callable[[float], Mapping[str, Tensor]] | None = None):
        self.t0 = float(t0)
        self.max_delay = float(max_delay)
        self._names = list(initial_state)
        self._index = {n: i for i, n in enumerate(self._names)}
        self._y0 = dict(initial_state)
        self._weights = weights
        self._inputs = inputs
        self._starts: list[float] = []
        self._steps: list[_Step] = []
        self._lo = 0
        self._t_done = self.t0
        self._y_done: list[Tensor] = [self._y0[n] for n in self._names]
        self._cache: dict[tuple[str, float], Tensor] = {}
        self.t = self.t0
        self._state: Mapping[str, Tensor] = self._y0

    # -- written by the solver -------------------------------------------------------
    def at(self, t: float, state: Mapping[str, Tensor]) -> None:
        """Set the stage being evaluated: time ``t`` (ms) and its state."""
        self.t, self._state = t, state
        if self._cache:
            self._cache.clear()

    def append(self, t: float, h: float, end: float, y: list[Tensor], ks: list[list[Tensor]],
               y_end: list[Tensor]) -> None:
        """Record an accepted step ``[t, end]`` (``h = end - t``) with its stages ``ks[i][pop]``."""
        self._starts.append(t)
        self._steps.append(_Step(t, h, end, y, ks, y_end))
        self._t_done, self._y_done = end, y_end
        horizon = end - self.max_delay - time_tol(end) - h
        steps, lo = self._steps, self._lo
        while lo < len(steps) - 1 and steps[lo].end < horizon:
            steps[lo] = None  # type: ignore[call-overload]  (drop the tensors now)
            lo += 1
        if lo > 512:
            del self._steps[:lo], self._starts[:lo]
            lo = 0
        self._lo = lo

    # -- read by vector fields -------------------------------------------------------
    def lag(self, name: str, delay: float) -> Tensor:
        """The population (or input) ``name`` at time ``t - delay`` (ms)."""
        i = self._index.get(name)
        if i is None:
            return self._lag_input(name, delay)
        if delay == 0:
            return self._state[name]
        key = (name, delay)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        out = self.value(i, self.t - delay, name, delay)
        self._cache[key] = out
        return out

    def value(self, i: int, tq: float, name: str, delay: float) -> Tensor:
        if tq <= self.t0 + time_tol(self.t0):
            return self._y0[name]
        done = self._t_done
        tol = time_tol(done)
        if tq >= done - tol:
            if tq > done + tol:
                raise DelayError(
                    f"history.lag({name!r}, {delay:g}) at t = {self.t:g} ms reads t - delay = {tq:g} ms, "
                    f"beyond the solution accepted so far ({done:g} ms): the delay is shorter than "
                    "the step. Declare every delay in the field's delays() (or max_delay() if it "
                    "is the only one) so that the solver caps its steps at the smallest delay")
            return self._y_done[i]
        j = bisect.bisect_right(self._starts, tq, self._lo) - 1
        if j < self._lo:
            raise DelayError(
                f"history.lag({name!r}, {delay:g}) at t = {self.t:g} ms reads further back than the "
                f"field's max_delay() = {self.max_delay:g} ms; make max_delay() return at least {delay:g}")
        s = self._steps[j]
        theta = (tq - s.t) / s.h
        if theta >= 1.0:
            return s.y_end[i]
        w = self._weights(theta)
        out = None
        for wi, k in zip(w, s.ks):
            if wi:
                out = torch.add(s.y[i], k[i], alpha=s.h * wi) if out is None else out.add_(k[i], alpha=s.h * wi)
        return s.y[i] if out is None else out

    def _lag_input(self, name: str, delay: float) -> Tensor:
        return lag_input(self._inputs, self.t - delay, name, self._names)

