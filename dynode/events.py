r"""Events: per-sample zero crossings of ``g(t, state)``, located on the solver's own interpolant.

``integrate(..., events={"decision": g})`` watches ``g(t, state) -> (batch,)`` on every step
``[t_n, t_{n+1}]``. A sample's event fires at its first sign change of ``g`` (``direction``
``+1``: ``g_n < 0 <= g_{n+1}``, rising; ``-1``: ``g_n > 0 >= g_{n+1}``, falling; ``0``: either),
and its time ``t*`` is the root of

.. math:: G(\theta) = g\big(t_n + \theta h,\; \textstyle\sum_i w_i(\theta) T_i\big) = 0,
   \qquad 0 \le \theta \le 1,

on the step's own interpolant (the dense output of the solver: linear for Euler and the noisy
methods, quadratic for Midpoint, cubic Hermite for Heun/RK4, the continuous extension of
Dopri5/Tsit5/Bosh3), found per sample by :data:`ITERATIONS` Illinois (modified regula-falsi)
iterations inside the bracket ``[0, 1]``. So the located time is as accurate as the interpolant
(order 1 for Euler, 4 for RK4 and Dopri5, up to the iteration's own convergence).

Per-step cost, on the device, no host read: one evaluation of ``g`` for the detection and
``ITERATIONS`` for the location, each on the interpolated populations that ``g`` reads only
(the state handed to ``g`` interpolates a population when it is looked up). ``g`` receives
``t`` as a tensor of shape ``(batch,)`` (ms, the state's dtype, at least float32: the samples
are located at different times) and must compute each sample from that sample's state alone.

Termination: a sample whose terminal event fired is frozen from ``t*`` on: its state is the
interpolant's state at ``t*`` at every later save and step (its history keeps that state), and
its other events stop. The solver reads whether every sample has stopped once per
``check_every`` steps (the divergence guard's cadence) and then ends the run.

Gradients (implicit function theorem): at the located root ``G(t*, p) = 0``, so

.. math:: \frac{dt^*}{dp} = -\frac{\partial G / \partial p}{dG/dt}, \qquad
   \frac{dG}{dt} = \partial_t g + \nabla_r g \cdot \dot r_{\text{interp}}(t^*),

with ``dr/dt`` the interpolant's own slope (the exact derivative of the located time of the
discrete solution). :meth:`Tracker.times` returns ``t* - (G - G.detach()) / (dG/dt)``: the
value ``t*``, the gradient above (``G`` keeps the graph through the interpolated state and
``g``'s own parameters). No gradient guarantee for the noisy solvers (the linear interpolant
of a Brownian path), nor through the state held after a terminal event (its value is
differentiable at fixed ``t*``, without the ``dr/dt dt*/dp`` term).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dynode.errors import ConfigurationError

__all__ = ["Event", "Tracker", "as_events", "check_events", "ITERATIONS"]

ITERATIONS = 6  # Illinois iterations per step: the bracket [0, 1] of theta shrinks superlinearly


@dataclass(frozen=True)
class Event:
    """A zero crossing of ``fn(t, state) -> (batch,)`` (``t``: ms, a ``(batch,)`` tensor; ``state``:
    ``{population: (batch, *shape)}``).

    direction : ``+1`` fires when ``fn`` rises through 0, ``-1`` when it falls, ``0`` either way.
    terminal : the sample stops (its state is held from the event on) when it fires.
    """

    fn: Callable[[Tensor, Mapping[str, Tensor]], Tensor]
    direction: int = 0
    terminal: bool = False

    def __post_init__(self):
        if not callable(self.fn):
            raise ConfigurationError(f"Event: fn must be a callable g(t, state) -> (batch,) tensor, got "
                                     f"{type(self.fn).__name__}")
        if isinstance(self.direction, bool) or self.direction not in (-1, 0, 1):
            raise ConfigurationError(f"Event: direction must be +1 (rising), -1 (falling) or 0 (either), got "
                                     f"{self.direction!r}")
        if not isinstance(self.terminal, bool):
            raise ConfigurationError(f"Event: terminal must be True or False, got {self.terminal!r}")


def as_events(events, terminate=None) -> dict[str, Event] | None:
    """``{name: Event}`` from ``integrate``'s ``events`` (``{name: g or Event}``; a plain callable is
    ``Event(g)``: either direction, not terminal) and ``terminate`` (None, True for every event, a
    name or a sequence of names: those events become terminal too). None without events."""
    if events is None:
        if terminate is not None and terminate is not False:
            raise ConfigurationError(f"terminate={terminate!r} names events, but no events= were given")
        return None
    if not isinstance(events, Mapping):
        raise ConfigurationError(f"events must be a dict {{name: g(t, state) or dynode.Event}}, got "
                                 f"{type(events).__name__}")
    if not events:
        raise ConfigurationError("events is empty; give at least one {name: g} or leave events out")
    out: dict[str, Event] = {}
    for name, ev in events.items():
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"event names must be non-empty strings, got {name!r}")
        if not isinstance(ev, Event):
            if not callable(ev):
                raise ConfigurationError(f"event {name!r} must be a callable g(t, state) -> (batch,) or a "
                                         f"dynode.Event, got {type(ev).__name__}")
            ev = Event(ev)
        out[name] = ev
    if terminate is None or terminate is False:
        return out
    if terminate is True:
        names: Sequence[str] = list(out)
    elif isinstance(terminate, str):
        names = [terminate]
    elif isinstance(terminate, (list, tuple, set, frozenset)):
        names = list(terminate)
    else:
        raise ConfigurationError(f"terminate must be None, True (every event), an event name or a list of "
                                 f"names, got {type(terminate).__name__}")
    unknown = [n for n in names if n not in out]
    if unknown:
        raise ConfigurationError(f"terminate names unknown events {unknown}; the events are {list(out)}")
    return {n: Event(ev.fn, ev.direction, True) if n in names else ev for n, ev in out.items()}


def check_events(events: Mapping[str, Event], t0: float, y0: Mapping[str, Tensor]) -> None:
    """Before the first step: every ``g(t0, y0)`` is a floating tensor of shape ``(batch,)`` on the
    state's device, finite (one host read for all of them)."""
    first = next(iter(y0.values()))
    batch = first.shape[0]
    t = torch.full((batch,), t0, dtype=torch.promote_types(first.dtype, torch.float32), device=first.device)
    values = []
    with torch.no_grad():
        for name, ev in events.items():
            try:
                g = ev.fn(t, y0)
            except ConfigurationError:
                raise
            except Exception as exc:  # the user's function failed on the initial state: say which
                raise ConfigurationError(f"event {name!r}: g(t, state) failed on the initial state "
                                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                         "g gets t as a (batch,) tensor of ms and state as {population: "
                                         "(batch, *shape)}") from exc
            if not isinstance(g, Tensor):
                raise ConfigurationError(f"event {name!r}: g(t, state) returned {type(g).__name__}; it must "
                                         f"return a tensor of shape ({batch},), one value per sample")
            if tuple(g.shape) != (batch,):
                raise ConfigurationError(f"event {name!r}: g(t, state) returned shape {tuple(g.shape)}; it must "
                                         f"return shape ({batch},), one value per sample (e.g. reduce the "
                                         "population with .flatten(1).mean(1))")
            if not g.is_floating_point():
                raise ConfigurationError(f"event {name!r}: g(t, state) returned {g.dtype}; it must return "
                                         "floating values whose zero crossing is the event")
            if g.device != first.device:
                raise ConfigurationError(f"event {name!r}: g(t, state) returned a tensor on {g.device}, the "
                                         f"state is on {first.device}")
            values.append(g)
    bad = (~torch.isfinite(torch.stack([v.to(t.dtype) for v in values]))).any(1).tolist()
    for name, b in zip(events, bad):
        if b:
            raise ConfigurationError(f"event {name!r}: g(t0, initial state) has NaN or inf values; g must be "
                                     "finite (its zero crossing is the event)")


class _Interpolated(Mapping):
    """The state at per-sample fractions ``theta`` of a step, ``sum_i w_i(theta) T_i``, interpolated
    only for the populations that are looked up (``g`` usually reads one)."""

    def __init__(self, terms: Sequence[Mapping[str, Tensor]], weights: Sequence, names: Sequence[str]):
        self.terms, self.weights, self.names = terms, weights, names
        self._cache: dict[str, Tensor] = {}

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._cache:
            if name not in self.names:
                raise KeyError(name)
            acc = None
            for w, term in zip(self.weights, self.terms):
                x = term[name]
                if isinstance(w, Tensor):
                    w = w.view(-1, *([1] * (x.dim() - 1)))
                elif w == 0:
                    continue
                acc = x * w if acc is None else acc + x * w
            self._cache[name] = acc
        return self._cache[name]

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def _mask(m: Tensor, x: Tensor) -> Tensor:
    return m.view(-1, *([1] * (x.dim() - 1)))


class Tracker:
    """One solve's events: detection and location per step, the per-sample times, termination.

    A solver calls :meth:`step` after every (accepted) step with the step's interpolant, routes
    its saves inside the step through :meth:`put`, and calls :meth:`all_stopped` once per
    ``check_every`` steps. Everything per step stays on the device."""

    def __init__(self, events: Mapping[str, Event], t0: float, y0: Mapping[str, Tensor]):
        self.events = dict(events)
        self.names = tuple(y0)
        first = next(iter(y0.values()))
        # times, theta and g at least in float32 (a bfloat16 state would resolve t = 100 ms to 0.5 ms)
        self.batch, self.dtype, self.device = first.shape[0], torch.promote_types(first.dtype, torch.float32), first.device
        self.terminal = any(ev.terminal for ev in self.events.values())
        kw = dict(dtype=self.dtype, device=self.device)
        self.g_old = {n: ev.fn(self._t(t0), y0).to(self.dtype) for n, ev in self.events.items()}
        self.t_star = {n: torch.full((self.batch,), math.nan, dtype=torch.float64, device=self.device)
                       for n in self.events}
        self.fired = {n: torch.zeros(self.batch, dtype=torch.bool, device=self.device) for n in self.events}
        self.g_star: dict[str, Tensor] = {n: torch.zeros(self.batch, **kw) for n in self.events}
        self.g_dot: dict[str, Tensor] = {n: torch.ones(self.batch, **kw) for n in self.events}
        self.nan = torch.zeros((), dtype=torch.bool, device=self.device)
        self.alive = torch.ones(self.batch, dtype=torch.bool, device=self.device)
        self.t_hold = torch.full((self.batch,), math.inf, dtype=torch.float64, device=self.device)
        self.held: dict[str, Tensor] | None = None

    def _t(self, t) -> Tensor:
        if isinstance(t, Tensor):
            return t
        return torch.full((self.batch,), float(t), dtype=self.dtype, device=self.device)

    def _g(self, ev: Event, t, terms, weights) -> Tensor:
        return ev.fn(t, _Interpolated(terms, weights, self.names)).to(self.dtype)

    def _locate(self, ev: Event, t: float, h: float, terms, weights: Callable, ga: Tensor, gb: Tensor) -> Tensor:
        """Per-sample ``theta`` in [0, 1] with ``G(theta) = 0``, from the bracket ``G(0) = ga``,
        ``G(1) = gb`` (Illinois: regula falsi, halving the kept end's value when the same end
        is kept twice). Samples without a sign change get a meaningless theta (masked later)."""
        a = torch.zeros(self.batch, dtype=self.dtype, device=self.device)
        b = torch.ones_like(a)
        with torch.no_grad():
            for _ in range(ITERATIONS):
                c = b - gb * (b - a) / (gb - ga)  # the secant's zero (0/0 where g vanishes at both ends)
                c = c.nan_to_num_(nan=1.0).clamp_(0.0, 1.0)
                gc = self._g(ev, t + c * h, terms, weights(c))
                flip = gc * gb < 0
                a, ga = torch.where(flip, b, a), torch.where(flip, gb, 0.5 * ga)
                b, gb = c, gc
        return b

    def step(self, t: float, h: float, y: Mapping[str, Tensor], y_new: dict[str, Tensor],
             interpolant: Callable[[], tuple[Sequence[Mapping[str, Tensor]], Callable]]) -> dict[str, Tensor]:
        """The step ``[t, t + h]`` from ``y`` to ``y_new`` is done: detect and locate the crossings,
        freeze the samples whose terminal event fired; returns the state to continue from
        (``y_new`` with the frozen samples held)."""
        t_new = t + h
        terms, weights = interpolant()
        grad = torch.is_grad_enabled()
        crossing: dict[str, tuple[Tensor, Tensor]] = {}
        tn = self._t(t_new)
        for name, ev in self.events.items():
            with torch.no_grad():
                ga, gb = self.g_old[name], ev.fn(tn, y_new).to(self.dtype)
                rise, fall = (ga < 0) & (gb >= 0), (ga > 0) & (gb <= 0)
                cross = rise if ev.direction > 0 else fall if ev.direction < 0 else rise | fall
                cross = cross & self.alive & ~self.fired[name]
                self.nan = self.nan | torch.isnan(gb).any()
                theta = self._locate(ev, t, h, terms, weights, ga, gb)
            crossing[name] = (cross, theta)
            self.g_old[name] = gb
        if self.terminal:  # the earliest terminal crossing of each sample stops it
            inf = torch.full((self.batch,), math.inf, dtype=self.dtype, device=self.device)
            first = inf
            for name, (cross, theta) in crossing.items():
                if self.events[name].terminal:
                    first = torch.minimum(first, torch.where(cross, theta, inf))
            stop = torch.isfinite(first)
            crossing = {n: (c & (th <= first), th) for n, (c, th) in crossing.items()}
        for name, (cross, theta) in crossing.items():
            t_star = t + theta.double() * h
            self.t_star[name] = torch.where(cross, t_star, self.t_star[name])
            self.fired[name] = self.fired[name] | cross
            if grad:
                self._keep_gradient(name, t, h, terms, weights, cross, theta)
        if not self.terminal:
            return y_new
        # the state at the end of the step: a sample stopping in it takes the interpolant at its
        # event; one stopped before holds its state, which is the interpolant at theta = 0 (its step
        # starts from the held state: weights (1, 0, ...) give it bit for bit), so one where per population
        dead = stop | ~self.alive
        theta_hold = torch.where(stop, first, torch.zeros_like(first))
        at_hold = _Interpolated(terms, weights(theta_hold), self.names)
        self.t_hold = torch.where(stop, t + theta_hold.double() * h, self.t_hold)
        self.alive = self.alive & ~stop
        self.held = {p: torch.where(_mask(dead, v), at_hold[p].to(v.dtype), v) for p, v in y_new.items()}
        return self.held

    def _keep_gradient(self, name: str, t: float, h: float, terms, weights, cross: Tensor, theta: Tensor) -> None:
        """``G(t*)`` with its graph (through the interpolated state and ``g``) and ``dG/dt`` at
        ``t*`` (autograd in ``theta`` on detached terms), kept for the samples crossing now."""
        ev = self.events[name]
        theta = theta.detach()
        g_star = self._g(ev, t + theta * h, terms, weights(theta))
        if not g_star.requires_grad:  # nothing to differentiate (no parameter reaches g)
            return
        th = theta.clone().requires_grad_(True)
        with torch.enable_grad():
            detached = [{p: v.detach() for p, v in term.items()} for term in terms]
            g_th = self._g(ev, t + th * h, detached, weights(th))
            (dg,) = torch.autograd.grad(g_th.sum(), th)
        self.g_star[name] = torch.where(cross, g_star, self.g_star[name])
        self.g_dot[name] = torch.where(cross, dg / h, self.g_dot[name])

    def put(self, put: Callable[[float, dict[str, Tensor]], None]) -> Callable[[float, dict[str, Tensor]], None]:
        """``put`` for the saves of the step just taken: a frozen sample's saves at times after its
        event are its held state (the state :meth:`step` returned)."""
        if not self.terminal or self.held is None:
            return put

        def held_put(ts: float, state: dict[str, Tensor]) -> None:
            after = self.t_hold < ts
            put(ts, {p: torch.where(_mask(after, v), self.held[p], v) for p, v in state.items()})
        return held_put

    def all_stopped(self) -> bool:
        """One host read: whether every sample has stopped (a terminal event fired); raises if
        some ``g`` became NaN since the start."""
        stopped, nan = torch.stack([~self.alive.any(), self.nan]).tolist()
        if nan:
            raise ConfigurationError(f"an event function ({', '.join(self.events)}) returned NaN during the run; "
                                     "g must be finite for its zero crossing to be located")
        return bool(stopped) and self.terminal

    def times(self) -> dict[str, Tensor]:
        """``{name: (batch,) float64}``: each sample's event time (ms), NaN where none fired;
        differentiable by the implicit function theorem (see the module)."""
        out = {}
        for name, t_star in self.t_star.items():
            g = self.g_star[name]
            if g.requires_grad:
                correction = -(g - g.detach()) / self.g_dot[name]
                t_star = t_star + correction.to(torch.float64)
            out[name] = t_star
        return out
