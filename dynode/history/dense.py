r"""Dense history for the method of steps, and breakpoint propagation.

An adaptive delay solver advances step by step; every accepted step ``[t_n, t_n + h]``
keeps its start state ``y_n`` and stage derivatives ``k_i`` (references to the tensors the
step produced: no copy, no ``torch.cat``), so that the method's continuous extension

.. math:: y(t_n + \theta h) = y_n + h \textstyle\sum_i B_i(\theta)\, k_i, \qquad 0 \le \theta \le 1,

answers delayed reads ``r(t - d)`` anywhere in the past. Because every step is at most the
smallest positive delay long, ``t - d`` always lies in an accepted step (or before ``t0``,
where the history is the constant initial state): no extrapolation is ever needed.
:func:`propagate_breakpoints` gives the times where the steps must end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from dynode.history.base import Inputs, Piecewise
from dynode.tolerances import time_tol

__all__ = ["DenseHistory", "field_delays", "history_span", "propagate_breakpoints"]


def field_delays(field) -> tuple[float, ...]:
    """The distinct positive delays of a field: ``field.delays()`` (a learnt delay: its value now)
    plus ``field.max_delay()`` unless that is only the upper bound of a learnt delay."""
    ds = {float(d) for _, d in field.delays().values() if d > 0}
    md = float(field.max_delay())
    if md > 0 and md not in {hi for _, hi in getattr(field, "delay_bounds", dict)().values()}:
        ds.add(md)
    out: list[float] = []
    for d in sorted(ds):
        if not out or d - out[-1] > time_tol(d):
            out.append(d)
    return tuple(out)


def history_span(field, delays: Sequence[float]) -> float:
    """How far back (ms) the history must reach: the field's ``max_delay()``, or the longest of
    ``delays`` (from :func:`field_delays`) if that is longer."""
    return max(float(field.max_delay()), max(delays, default=0.0))


def propagate_breakpoints(t0: float, t_end: float, stimulus_breakpoints: Sequence[float],
                          delays: Sequence[float], levels: int) -> tuple[list[float], list[bool]]:
    """Forced step ends in ``(t0, t_end]`` and whether the vector field may jump there.

    A delay equation is not smooth at ``t0`` (the constant history meets the solution) nor
    where the stimulus jumps; each non-smoothness reappears ``d`` later, one derivative
    smoother, for every delay ``d``. ``levels``: how many delays to add (the adaptive
    solvers: ``order + 1``, after which the solution is smooth enough for the method).

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
    for base, target in (([t0], smooth), (list(stimulus_breakpoints), jump)):
        frontier = {key(b): b for b in base}
        for b in base:
            if t0 + tol < b < t_end - tol:
                target[key(b)] = b
        for _ in range(levels):
            nxt: dict[int, float] = {}
            for b in frontier.values():
                for d in delays:
                    x = b + d
                    if x < t_end - tol:
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


class DenseHistory(Piecewise):
    """Accepted steps and their interpolant, for dynode's adaptive solvers.

    ``weights``: ``theta -> (B_1(theta), ..., B_s(theta))``, the method's dense-output
    weights; ``slopes``: their derivatives ``B_i'(theta)`` (for learnt delays); the other
    parameters are :class:`~dynode.history.base.Piecewise`'s.
    """

    def __init__(self, initial_state: Mapping[str, Tensor], *, t0: float, max_delay: float,
                 weights: Callable[[float], Sequence[float]], inputs: Inputs | None = None,
                 slopes: Callable[[float], Sequence[float]] | None = None):
        super().__init__(initial_state, t0=t0, max_delay=max_delay, inputs=inputs)
        self._index = {n: i for i, n in enumerate(initial_state)}
        self._weights, self._slopes = weights, slopes

    def append(self, t: float, h: float, end: float, y: list[Tensor], ks: list[list[Tensor]],
               y_end: list[Tensor]) -> None:
        """Record an accepted step ``[t, end]`` (``h = end - t``) with its stages ``ks[i][pop]``."""
        self._push(t, end, (t, h, y, ks, y_end), dict(zip(self._index, y_end)))

    def _read(self, step: tuple, tq: float, name: str) -> Tensor:
        t, h, y, ks, y_end = step
        i = self._index[name]
        theta = (tq - t) / h
        if theta >= 1.0:
            return y_end[i]
        out = None
        for wi, k in zip(self._weights(theta), ks):
            if wi:
                out = torch.add(y[i], k[i], alpha=h * wi) if out is None else out.add_(k[i], alpha=h * wi)
        return y[i] if out is None else out

    def _slope(self, step: tuple, tq: float, name: str) -> Tensor:
        """``dy/dt = sum_i B_i'(theta) k_i`` inside ``step``."""
        if self._slopes is None:
            return super()._slope(step, tq, name)
        t, h, _, ks, _ = step
        i = self._index[name]
        out = None
        for wi, k in zip(self._slopes(min((tq - t) / h, 1.0)), ks):
            if wi:
                out = k[i] * wi if out is None else out.add_(k[i], alpha=wi)
        return out
