r"""The history protocol (:class:`HistoryReader`) and what its implementations share."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor

from dynode.errors import ConfigurationError, DelayError
from dynode.tolerances import TIME_RTOL, time_tol

__all__ = ["HistoryReader", "Piecewise", "check_delay", "lag_input", "with_slope"]

Inputs = Callable[[float], Mapping[str, Tensor]]


class HistoryReader(Protocol):
    """What a vector field may read: ``lag``, and the stage time ``t`` and start ``t0`` (ms)."""

    t0: float
    t: float

    def lag(self, name: str, delay: float) -> Tensor:
        """Population (or input) ``name`` at ``t - delay`` (ms)."""

    def reads_initial(self, delay: float) -> bool:
        """Whether a read with ``delay`` at the current stage falls on the initial state
        (``t - delay <= t0``), known without a device sync; histories that cannot tell raise
        :class:`~dynode.errors.ConfigurationError` (connections with ``skip_initial=True``)."""

    def lag_at(self, name: str, delay: Tensor, value: float) -> Tensor:
        """Population ``name`` at ``t - delay`` for a learnt ``delay`` (a tensor whose value is
        the float ``value`` ms): the history's interpolant at ``t - value``, plus
        ``(value - delay) * r'(t - value)``, zero in value, which makes the read differentiable
        in ``delay`` with the interpolant's own slope (:func:`with_slope`)."""


def check_delay(name: str, delay: float, max_delay: float) -> None:
    """A :class:`DelayError` unless ``0 <= delay <= max_delay`` (to 1e-9 relative)."""
    if not (delay >= 0 and math.isfinite(delay)):
        raise DelayError(f"history.lag({name!r}, {delay}): delays must be finite and >= 0 ms")
    if delay > max_delay * (1 + TIME_RTOL):
        raise DelayError(f"history.lag({name!r}, {delay:g}): the delay exceeds the field's max_delay() = "
                         f"{max_delay:g} ms; make max_delay() return at least {delay:g}")


def with_slope(out: Tensor, delay: Tensor, value: float, slope) -> Tensor:
    """``out + (value - delay) * slope()``: the read ``r(t - value)`` made differentiable in
    ``delay`` (``d r(t - d) / dd = -r'(t - d)``); ``out`` itself where no gradient is wanted
    (``slope()`` is then not computed) or the slope is ``None`` (a constant history)."""
    if not (delay.requires_grad and torch.is_grad_enabled()):
        return out
    r_dot = slope()
    return out if r_dot is None else out + (value - delay) * r_dot


def lag_input(inputs: Inputs | None, t: float, name: str, populations) -> Tensor:
    """Input ``name`` evaluated at time ``t`` (a delayed read of a stimulus input), or a
    ``KeyError`` naming the populations and inputs there are."""
    values = None if inputs is None else inputs(t)
    if values is not None and name in values:
        return values[name]
    known = "" if values is None else f", inputs: {sorted(values)}"
    raise KeyError(f"history.lag({name!r}): no population or input of that name; "
                   f"populations: {sorted(populations)}{known}")


_DONE = object()  # Piecewise._locate: the read falls on the newest solved state


class Piecewise:
    """The past of a solver that advances in contiguous pieces ``[a, b]`` of any length
    (method of steps); subclasses read inside one piece (:meth:`_read`). :meth:`lag` resolves
    every read in one place: to the initial state (``t - d <= t0``), the newest solved state,
    a piece's interpolant, or the one error for a read past the solved range or older than
    ``max_delay``.

    ``initial_state``: the state at ``t0`` and the constant history before it; ``max_delay``:
    the longest delay read (ms), older pieces are dropped; ``inputs``: ``t -> {input: tensor}``.
    """

    def __init__(self, initial_state: Mapping[str, Tensor], *, t0: float, max_delay: float,
                 inputs: Inputs | None = None):
        self.t0, self.max_delay = float(t0), float(max_delay)
        self._y0 = dict(initial_state)
        self._inputs = inputs
        self._starts: list[float] = []
        self._pieces: list[Any] = []
        self._lo = 0  # pieces before _lo are dropped
        self._done, self._y_done = self.t0, self._y0  # the newest solved time and its state
        self._checked: set[float] = set()
        self._cache: dict[tuple[str, float], Tensor] = {}
        self.t = self.t0
        self._state: Mapping[str, Tensor] = self._y0

    def reads_initial(self, delay: float) -> bool:
        """Refused: ``skip_initial`` connections are defined on a fixed-step grid (where the
        skipped read ends exactly at a step)."""
        raise ConfigurationError("connections with skip_initial=True need a fixed-step solver "
                                 "(a dynode.History on the grid)")

    # -- written by the solver -------------------------------------------------------
    def at(self, t: float, state: Mapping[str, Tensor]) -> None:
        """Set the stage being evaluated: time ``t`` (ms) and its state."""
        self.t, self._state = t, state
        if self._cache:
            self._cache.clear()

    def _push(self, a: float, b: float, piece: Any, y_end: Mapping[str, Tensor]) -> None:
        """Record the solved piece ``[a, b]`` and drop pieces older than ``max_delay``."""
        self._starts.append(a)
        self._pieces.append(piece)
        self._done, self._y_done = b, y_end
        horizon = b - self.max_delay - time_tol(b) - (b - a)
        starts, pieces, lo = self._starts, self._pieces, self._lo
        while lo < len(pieces) - 1 and starts[lo + 1] < horizon:
            pieces[lo] = None  # drop the tensors now
            lo += 1
        if lo > 512:
            del pieces[:lo], starts[:lo]
            lo = 0
        self._lo = lo

    def _read(self, piece: Any, t: float, name: str) -> Tensor:
        """Population ``name`` at time ``t`` inside ``piece``."""
        raise NotImplementedError

    def _slope(self, piece: Any, t: float, name: str) -> Tensor:
        """``d r_name / dt`` at time ``t`` inside ``piece`` (for learnt delays)."""
        raise ConfigurationError(f"{type(self).__name__} cannot read learnt delays (no slope of its "
                                 "interpolant); use a dynode solver")

    # -- read by vector fields -------------------------------------------------------
    def lag(self, name: str, delay: float) -> Tensor:
        """The population (or input) ``name`` at time ``t - delay`` (ms)."""
        if name not in self._y0:
            return lag_input(self._inputs, self.t - delay, name, self._y0)
        if delay == 0:
            return self._state[name]
        key = (name, delay)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if delay not in self._checked:
            check_delay(name, delay, self.max_delay)
            self._checked.add(delay)
        where = self._locate(name, delay)
        out = (self._y0[name] if where is None else self._y_done[name] if where is _DONE
               else self._read(where, self.t - delay, name))
        self._cache[key] = out
        return out

    def lag_at(self, name: str, delay: Tensor, value: float) -> Tensor:
        """See :meth:`HistoryReader.lag_at`; the slope is the piece's (:meth:`_slope`), zero in
        the constant history before ``t0``."""
        if name not in self._y0:
            raise DelayError(f"history.lag_at({name!r}): learnt delays read populations only")
        out = self.lag(name, value)

        def slope():
            where = self._locate(name, value)
            if where is None:
                return None
            return self._slope(self._pieces[-1] if where is _DONE else where, self.t - value, name)
        return with_slope(out, delay, value, slope)

    def _locate(self, name: str, delay: float):
        """Where ``t - delay`` lies: ``None`` (the constant history up to ``t0``), ``_DONE`` (the
        newest solved time) or the piece holding it."""
        tq = self.t - delay
        done = self._done
        if tq <= self.t0 + time_tol(self.t0):
            return None
        if tq >= done - time_tol(done):
            if tq > done + time_tol(done):
                raise DelayError(
                    f"history.lag({name!r}, {delay:g}) at t = {self.t:g} ms reads t - delay = {tq:g} ms, "
                    f"beyond the solution accepted so far ({done:g} ms): the delay is shorter than "
                    "the step. Declare every delay in the field's delays() (or max_delay() if it "
                    "is the only one) so that the solver caps its steps at the smallest delay")
            return _DONE
        j = bisect.bisect_right(self._starts, tq, self._lo) - 1
        return self._pieces[max(j, self._lo)]
