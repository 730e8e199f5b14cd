"""Fixed-step explicit Runge-Kutta solvers on the grid ``t_n = t0 + n dt``: each is its
:class:`~dynode.solvers.tableau.Tableau` (``c``, ``a``, ``b``, ``order``, ``stability_limit``)
on :class:`FixedStepSolver`'s loop, which takes steps of ``h = dt``.

Delayed values come from :class:`dynode.History` (grid reads, Hermite interpolation at
off-grid stages). Every delay must be an integer multiple of ``dt``; this is checked for
every connection before the first step.

Jumps. Where the field jumps on the grid (a stimulus breakpoint ``b``, or ``b + d`` for an
input read with delay ``d``), the step ending there evaluates its ``c = 1`` stage with the
input's left limit, and the history's interval ending there gets the left-limit slope (see
:mod:`dynode.history.grid`), so every method keeps its order (measured in
``tests/test_order_jumps.py``). A breakpoint *between* grid points is inside a step: that
step integrates a discontinuous field and is first-order accurate whatever the method; the
solver warns (:class:`dynode.errors.AccuracyWarning`) with the ``dt`` values that fit.

Dense output: each step's own interpolant (:meth:`FixedStepSolver._interpolant`) serves
``save_at`` times between grid points (computed as the step is taken, nothing kept) and,
with ``integrate(..., dense=True)``, :meth:`dynode.Solution.evaluate` at any time.
:class:`Euler` has its own step for a :class:`dynode.Network`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.utils.checkpoint
from torch import Tensor

from dynode.brownian import BrownianPath
from dynode.events import Tracker
from dynode.errors import AccuracyWarning, ConfigurationError, DelayError, StabilityWarning, user_stacklevel
from dynode.guards import Guard
from dynode.network import Network
from dynode.history import History, HistoryTail, compatible_dts, delay_steps, field_delays, hermite
from dynode.problem import Problem
from dynode.solution import Output, Solution, noise_refusal
from dynode.solver import Solver
from dynode.solvers.tableau import Tableau
from dynode.tolerances import GRID_LEFT, TIME_RTOL, time_tol

__all__ = ["FixedStepSolver", "Euler", "Midpoint", "Heun", "RK4"]


def _grid_steps(t0: float, t_end: float, dt: float) -> int:
    n = delay_steps(t_end - t0, dt)
    if n is None:
        n_lo = math.floor((t_end - t0) / dt)
        raise ConfigurationError(
            f"t_end - t0 = {t_end - t0:g} ms is not a whole number of steps of dt = {dt:g} ms; "
            f"use t_end = {t0 + n_lo * dt:g} or {t0 + (n_lo + 1) * dt:g} ms, or a dt that divides "
            f"{t_end - t0:g} ms")
    return n


class FixedStepSolver(Solver):
    """Base of the fixed-step methods: the :class:`Tableau` (with its ``stability_limit``) is
    a class attribute, the loop is here."""

    tableau: ClassVar[Tableau]
    grid: ClassVar[bool] = True
    fresh_states: ClassVar[bool] = True
    dense_output: ClassVar[bool] = True
    continues: ClassVar[bool] = True
    stochastic: ClassVar[bool] = False  # integrates noise in the dynamics (Euler-Maruyama, stochastic Heun)
    locates_events: ClassVar[bool] = True  # integrate(..., events=...): located on _interpolant

    @property
    def convergence_order(self) -> int:
        return self.tableau.order

    @property
    def stages(self) -> int:
        return self.tableau.stages

    @property
    def needs_derivatives(self) -> bool:
        """Off-grid stages read delayed values by Hermite interpolation, which needs dr/dt."""
        return any(ci not in (0.0, 1.0) for ci in self.tableau.c)

    # -- checks --------------------------------------------------------------------------
    def _check(self, problem: Problem, dt) -> float:
        if dt is None:
            raise ConfigurationError(f"{type(self).__name__} is a fixed-step solver: give dt (ms)")
        dt = float(dt)
        if not (dt > 0 and math.isfinite(dt)):
            raise ConfigurationError(f"dt must be a finite number > 0 ms, got {dt}")
        field = problem.field
        learnt = getattr(field, "delay_bounds", dict)()  # learnt delays: any value >= dt
        short = [(label, lo) for label, (lo, _) in learnt.items() if lo < dt * (1 - TIME_RTOL)]
        if short:
            label, lo = short[0]
            raise DelayError(f"connection {label}: the learnt delay's lower bound {lo:g} ms is below dt = "
                             f"{dt:g} ms (a read would fall in the step being computed); raise delay_bounds "
                             f"to lo >= {dt:g} or reduce dt")
        delays = {k: v for k, v in field.delays().items() if k not in learnt}
        bad = [(label, d) for label, (_, d) in delays.items() if d > 0 and delay_steps(d, dt) is None]
        if bad:
            label, d = bad[0]
            dts = ", ".join(f"{x:g}" for x in compatible_dts([x for _, x in delays.values()]))
            raise DelayError(
                f"connection {label}: delay {d:g} ms is not an integer multiple of dt = {dt:g} ms; "
                f"dt values that fit every delay: {dts} ms (or use an adaptive solver)")
        taus = field.time_constants()
        for name, tau in taus.items():
            self._warn(name, tau, dt)
        for name, (lo, _) in getattr(field, "tau_bounds", dict)().items():
            if lo < taus[name]:
                self._warn(name, lo, dt, " (the lower bound of its learnt tau: raise tau_bounds)")
        return dt

    def _warn(self, name: str, tau: float, dt: float, which: str = "") -> None:
        limit = self.tableau.stability_limit
        if dt / tau > limit:
            warnings.warn(f"{type(self).__name__}: dt/tau = {dt / tau:.3g} for population {name!r} "
                          f"(dt = {dt:g} ms, tau = {tau:g} ms{which}) exceeds the method's stability limit "
                          f"{limit:.3g}; reduce dt", StabilityWarning, stacklevel=user_stacklevel())

    # -- the loop --------------------------------------------------------------------------
    def solve(self, problem: Problem, dt, *, observer=None) -> Solution:
        """Integrate ``problem`` with step ``dt`` (ms); ``observer``: see :meth:`Solver.solve`
        (with one, memory does not grow with the number of steps)."""
        dt = self._check(problem, dt)
        t0, field = problem.t0, problem.field
        n_steps = _grid_steps(t0, problem.t_end, dt)
        if problem.dense and problem.checkpoint:
            raise ConfigurationError("dense=True keeps every step's interpolant, checkpoint= recomputes "
                                     "the steps during backward: use one or the other")
        max_delay = float(field.max_delay())
        jumps = self._jump_steps(problem, dt, n_steps)
        history = History(problem.y0, t0=t0, dt=dt, max_delay=max_delay,
                          derivatives=self.needs_derivatives, inputs=problem.inputs, tail=problem.tail)
        guard = Guard(problem.max_abs, field.time_constants(), dt)
        noise = self._noise(problem, dt) if problem.noise else None
        step = self._stepper(problem, dt, history, store=max_delay > 0, jumps=jumps, noise=noise)
        # (k_1, k_s), for the interpolant; a noisy step's is linear (the path between grid points is
        # a Brownian bridge, which no polynomial through the stages represents)
        last = step.last if self.convergence_order > 1 and noise is None else None
        out = Output(problem, observer, snap=True, noise_ok=self.stochastic)
        y = problem.y0
        out.start(y)
        # events (dynode.events): located on the step's interpolant, on the device; None: the loop as before
        tracker = Tracker(problem.events, t0, y) if problem.events else None

        def run(a: int, b: int, y: dict[str, Tensor], snapshot=None, put=None):
            """Steps a..b-1 from state y; returns the state at b and the saves that ``put``
            (default: collect them; a streaming ``put`` holds no segment in memory and an
            error loses no computed state) did not take."""
            if snapshot is not None:
                history.restore(snapshot)
            kept: list = []
            put = put or (lambda t, state: kept.append((t, state)))
            for n in range(a, b):
                y_new = step(n, t0 + n * dt, y)
                if tracker is None:
                    out.step(t0 + n * dt, t0 + (n + 1) * dt, y_new,
                             lambda: self._interpolant(dt, y, y_new, last), put)
                else:  # the interpolant of the computed step; the saves after an event hold its state
                    piece = (lambda: self._interpolant(dt, y, y_raw, last))
                    y_raw = y_new
                    y_new = tracker.step(t0 + n * dt, dt, y, y_raw, piece)
                    out.step(t0 + n * dt, t0 + (n + 1) * dt, y_new, piece, tracker.put(put))
                y = y_new
            return y, kept

        seg = self._segment_length(problem.checkpoint, n_steps)
        if seg is None:  # check the activity every check_every steps
            seg, wrap = problem.check_every, None
        else:  # gradient checkpointing: keep segment boundaries, recompute inside
            wrap = torch.utils.checkpoint.checkpoint
        for a in range(0, n_steps, seg):
            b = min(a + seg, n_steps)
            if wrap is None:
                y, kept = run(a, b, y, put=out.emit)
            else:
                y, kept = wrap(run, a, b, y, history.snapshot(a), use_reentrant=False)
            for t_save, state in kept:
                out.emit(t_save, state)
            guard.check(y, t0 + a * dt, t0 + b * dt)
            if tracker is not None and tracker.all_stopped() and b < n_steps:
                # every sample's terminal event fired: the rest of the run repeats the held states
                out.fill(t0 + b * dt, problem.t_end, [t0 + m * dt for m in range(b + 1, n_steps + 1)], y)
                return out.solution(y, nfe=b * self.stages, steps=b, accepted=b, rejected=0,
                                    t_final=t0 + b * dt, events=tracker.times())
        if max_delay > 0:
            history.store(n_steps, y)  # the final state completes the past of a continuation
            tail = history.tail(n_steps)
        else:
            tail = HistoryTail(dt, (dict(y),), None, dict(y))
        return out.solution(y, nfe=n_steps * self.stages, steps=n_steps, accepted=n_steps,
                            rejected=0, t_final=problem.t_end, tail=tail,
                            events=None if tracker is None else tracker.times())

    def _noise(self, problem: Problem, dt: float):
        """``noise(n) -> {population: g dW_n}``, the noise term of step ``n`` (``dW_n`` over
        ``[t_n, t_{n+1}]`` from a :class:`dynode.brownian.BrownianPath`, in the state's dtype)."""
        if not self.stochastic:
            raise ConfigurationError(noise_refusal(type(self).__name__, problem.noise))
        n0 = delay_steps(problem.t0, dt)
        if n0 is None:
            k = math.floor(problem.t0 / dt)
            raise ConfigurationError(
                f"noise: t0 = {problem.t0:g} ms is not a whole number of steps dt = {dt:g} ms from 0 ms, where "
                f"the Brownian paths are anchored; use t0 = {k * dt:g} or {(k + 1) * dt:g} ms, or a dt that "
                f"divides {problem.t0:g} ms")
        y0 = problem.y0
        path = BrownianPath(problem.seeds, {p: tuple(y0[p].shape[1:]) for p in problem.noise}, dt,
                            next(iter(y0.values())).dtype)
        scale = {p: g.to(device=y0[p].device, dtype=y0[p].dtype) if isinstance(g, Tensor) else float(g)
                 for p, g in problem.noise.items()}

        def noise(n: int) -> dict[str, Tensor]:
            dw = path.increment(n0 + n)
            return {p: (dw[p] * g).to(y0[p].dtype) for p, g in scale.items()}
        return noise

    def _jump_steps(self, problem: Problem, dt: float, n_steps: int) -> frozenset[int]:
        """Grid steps ``m`` (``1 <= m <= n_steps``) where the field may jump: ``b + d`` for every
        stimulus breakpoint ``b`` and ``d`` = 0 or a delay. Warns about breakpoints between grid
        points (the step across them is first-order accurate)."""
        t0, t_end = problem.t0, problem.t_end
        lags = {0.0, *field_delays(problem.field)}
        out: set[int] = set()
        off: list[float] = []
        for b in problem.breakpoints:
            k = delay_steps(b - t0, dt)
            for d in lags:
                if not (t0 < b + d < t_end + time_tol(t_end)):
                    continue
                kd = delay_steps(d, dt)
                if k is None:
                    off.append(b)
                elif kd is not None and 0 < k + kd <= n_steps:  # (kd None: a max_delay no connection uses)
                    out.add(k + kd)
        off = sorted(set(off))
        if off and self.convergence_order > 1:
            fits = compatible_dts([b - t0 for b in off if b > t0] + [d for d in lags if d > 0])
            warnings.warn(
                f"{type(self).__name__}: the stimulus jumps at t = {', '.join(f'{b:g}' for b in off[:5])} ms, "
                f"between the grid points t0 + n*dt (t0 = {t0:g}, dt = {dt:g} ms); a step across a jump "
                f"is first-order accurate, so the run is not order {self.convergence_order}. Use a dt "
                f"that puts the jumps on the grid (e.g. {', '.join(f'{x:g}' for x in fits[:4])} ms) "
                "or an adaptive solver, which steps onto breakpoints", AccuracyWarning, stacklevel=user_stacklevel())
        return frozenset(out)

    def _interpolant(self, h: float, y0: dict[str, Tensor], y1: dict[str, Tensor], last):
        """The step's dense output ``r(t_n + theta h) = sum_i w_i(theta) T_i``: ``([T_i], w)``.

        Linear for first-order methods (Euler); the quadratic through ``r_n, k_1, r_{n+1}``
        when the method has no stage at the step's end (Midpoint); else cubic Hermite on
        ``r_n, k_1, r_{n+1}`` and the last stage ``k_s`` (at ``t_{n+1}^-``; Heun: order 3,
        RK4: order 4)."""
        if last is None:  # a first-order method
            return (y0, y1), lambda th: (1.0 - th, th)
        k1, ks = last
        if self.tableau.c[-1] != 1.0:
            return (y0, y1, k1), lambda th: (1.0 - th * th, th * th, h * th * (1.0 - th))
        return (y0, y1, k1, ks), lambda th: hermite(th, h)

    @staticmethod
    def _segment_length(checkpoint, n_steps: int) -> int | None:
        if not checkpoint or not torch.is_grad_enabled():
            return None  # no checkpointing asked, or no graph to save memory on
        if checkpoint is True:
            return max(1, round(math.sqrt(n_steps)))
        return int(checkpoint)

    def _noisy_stepper(self, problem: Problem, h: float, history: History, store: bool, noise):
        r"""``step(n, t, y) -> y_next`` with the noise term ``G_n = g dW_n`` (``noise(n)``):

        * one stage (Euler-Maruyama): ``y_{n+1} = y_n + h f(t_n, y_n) + G_n``;
        * two (stochastic Heun): ``ỹ = y_n + h f(t_n, y_n) + G_n``,
          ``y_{n+1} = y_n + h/2 (f(t_n, y_n) + f(t_{n+1}, ỹ)) + G_n``.

        Strong order 1 both, for additive noise (Euler-Maruyama: 0.5 for general noise); weak
        order 1 (Euler-Maruyama) and 2 (Heun, additive noise). The delayed past stores the noisy
        states."""
        f, inputs, t0 = problem.field, problem.inputs, problem.t0
        heun, half = self.stages == 2, 0.5 * h

        def plus(x: Tensor, g: Tensor | None) -> Tensor:
            return x if g is None else x.add_(g)

        def step(n: int, t: float, y: dict[str, Tensor]) -> dict[str, Tensor]:
            if store:
                history.store(n, y)
            g = noise(n)
            history.at(n, 0.0, t, y)
            k1 = f(t, y, history, inputs(t))
            pred = {p: plus(torch.add(y[p], k1[p], alpha=h), g.get(p)) for p in y}
            if not heun:
                return pred
            t1 = t0 + (n + GRID_LEFT) * h  # the end stage sees the stimulus' left limit, as in RK
            history.at(n, 1.0, t1, pred)
            k2 = f(t1, pred, history, inputs(t1))
            return {p: plus(torch.add(y[p], k1[p] + k2[p], alpha=half), g.get(p)) for p in y}

        step.last = []  # type: ignore[attr-defined]
        return step

    def _stepper(self, problem: Problem, h: float, history: History, store: bool, jumps: frozenset[int],
                 noise=None):
        """Return ``step(n, t, y) -> y_next`` for the generic explicit RK method (with ``noise``:
        :meth:`_noisy_stepper`).

        ``step.last`` holds ``(k_1, k_s)`` of the latest step (for the dense output).
        ``jumps``: grid steps where the field jumps; the step ending there gives the history
        the left-limit slope (the last stage if it sits at ``c = 1``, else the quadratic's)."""
        if noise is not None:
            return self._noisy_stepper(problem, h, history, store, noise)
        f, inputs, t0 = problem.field, problem.inputs, problem.t0
        c = self.tableau.c
        rows = [tuple((j, h * aij) for j, aij in enumerate(row) if aij) for row in self.tableau.a]
        final = tuple((j, h * bj) for j, bj in enumerate(self.tableau.b) if bj)
        derivs = self.needs_derivatives

        def combine(y: dict[str, Tensor], ks: list, terms) -> dict[str, Tensor]:
            (j0, w0), *rest = terms
            out = {}
            for name, yv in y.items():
                acc = torch.add(yv, ks[j0][name], alpha=w0)
                for j, w in rest:
                    acc = acc.add_(ks[j][name], alpha=w)
                out[name] = acc
            return out

        # A stage at the end of the step (c = 1) sees the stimulus' left limit there: the step
        # lies before a jump at its end (a pulse starting at t_{n+1} acts from step n+1 on).
        c_eval = tuple(GRID_LEFT if ci == 1.0 else ci for ci in c)
        ends = c[-1] == 1.0
        jumps = jumps if (store and derivs) else frozenset()
        last: list = []

        def step(n: int, t: float, y: dict[str, Tensor]) -> dict[str, Tensor]:
            if store and not derivs:
                history.store(n, y)
            ks: list = []
            for i, ci in enumerate(c):
                yi = y if i == 0 else combine(y, ks, rows[i])
                ti = t0 + (n + c_eval[i]) * h
                history.at(n, ci, ti, yi)
                k = f(ti, yi, history, inputs(ti))
                if i == 0 and store and derivs:
                    history.store(n, y, k)
                ks.append(k)
            y_new = combine(y, ks, final)
            if n + 1 in jumps:
                history.store_left(n + 1, ks[-1] if ends else
                                   {p: (y_new[p] - y[p]).mul_(2.0 / h).sub_(ks[0][p]) for p in y})
            last[:] = (ks[0], ks[-1])
            return y_new

        step.last = last  # type: ignore[attr-defined]
        return step


@dataclass(frozen=True)
class Euler(FixedStepSolver):
    """Forward Euler, ``r_{n+1} = r_n + dt * f(t_n, r_n)`` (order 1).

    For a :class:`dynode.Network` this is exactly ``r <- lerp(r, Phi(u), dt/tau)`` =
    ``r + dt/tau * (-r + Phi(u))``. With ``order="sequential"`` the populations are updated
    one after the other in topological order of their zero-delay connections, each seeing
    the already-updated upstream state, so a zero-delay feed-forward chain is crossed within
    one step ("engineering time").
    A connection with delay ``d`` then reads its source at ``t_{n+1} - d``, exactly ``d``
    after what a zero-delay connection reads (inputs are read at ``t_n - d``).
    ``dt == tau`` gives the discrete-time RNN ``r_{n+1} = Phi(u_n)``.

    With noise (``add_population(..., noise=sigma)``) it is Euler-Maruyama,
    ``r_{n+1} = lerp(r_n, Phi(u_n), dt/tau) + g dW_n`` (see :mod:`dynode.brownian`; a sequential
    sweep adds each population's noise before the next one reads it).
    """

    order: Literal["simultaneous", "sequential"] = "simultaneous"

    name: ClassVar[str] = "euler"
    stochastic: ClassVar[bool] = True
    tableau: ClassVar[Tableau] = Tableau(c=(0.0,), a=((),), b=(1.0,), order=1, stability_limit=2.0)

    def __post_init__(self):
        if self.order not in ("simultaneous", "sequential"):
            raise ConfigurationError(f"Euler order must be 'simultaneous' or 'sequential', got {self.order!r}")

    def _warn(self, name: str, tau: float, dt: float, which: str = "") -> None:
        if dt > tau * (1 + TIME_RTOL):
            warnings.warn(f"Euler: dt = {dt:g} ms > tau = {tau:g} ms{which} for population {name!r} "
                          f"(dt/tau = {dt / tau:.3g}); the update overshoots (unstable beyond 2). "
                          "dt == tau is the discrete-time RNN case; otherwise reduce dt",
                          StabilityWarning, stacklevel=user_stacklevel())

    def _stepper(self, problem: Problem, h: float, history: History, store: bool, jumps: frozenset[int],
                 noise=None):
        field, inputs = problem.field, problem.inputs
        if not isinstance(field, Network):
            if self.order == "sequential":
                raise ConfigurationError("Euler(order='sequential') needs a dynode.Network (it sweeps "
                                         "the network's populations); a custom VectorField only "
                                         "supports order='simultaneous'")
            return super()._stepper(problem, h, history, store, jumps, noise)
        pops = field.populations

        # under autocast the drive comes in bf16/fp16 and is cast to the state's dtype (float32,
        # or the low-precision state dtype of dynode.problem, where the cast is a no-op)
        if any(torch.is_autocast_enabled(d) for d in ("cpu", "cuda")):
            def lerp(r: Tensor, target: Tensor, w) -> Tensor:
                return torch.lerp(r, target.to(r.dtype), w)
        else:
            lerp = torch.lerp  # r + w (target - r)

        def take(r: Tensor, target: Tensor, w) -> Tensor:  # lerp(r, target, 1) == target exactly
            return target if target.dtype == r.dtype else target.to(r.dtype)

        def update(name: str):
            """``(name, dt / tau, lerp or take)``; ``dt / tau`` is a tensor for per-unit taus."""
            tau = pops[name].tau
            if isinstance(tau, Tensor):
                y0 = problem.y0[name]
                return name, (h / tau).to(device=y0.device, dtype=y0.dtype), lerp
            # dt == tau (the discrete-time RNN case, r_{n+1} = Phi(u_n)): no lerp and no zero
            # gradient into r_n. Identity Phi may return an input tensor itself, so it keeps lerp.
            exact = h / tau == 1.0 and not isinstance(pops[name].phi, torch.nn.Identity)
            return name, h / tau, take if exact else lerp

        drive = field.drive
        if self.order == "sequential":
            cyclic = field.zero_delay_cycles()
            if cyclic:
                warnings.warn(f"Euler(order='sequential'): populations {list(cyclic)} form a cycle of "
                              "zero-delay connections, so the sweep order inside a step (here the "
                              "declaration order) changes the result; give a connection of the cycle "
                              "a delay of at least dt, or use order='simultaneous'",
                              StabilityWarning, stacklevel=user_stacklevel())
            plans = {p.name: p for p in field.plan()}
            sweep = [(update(name), plans[name]) for name in field.update_order()]
            if noise is not None:
                def noisy_sweep(n: int, t: float, y: dict[str, Tensor]) -> dict[str, Tensor]:
                    if store:
                        history.store(n, y)
                    history.at(n, 1.0, t, y)
                    x, g = inputs(t), noise(n)
                    r = dict(y)
                    for (name, w, lerp), plan in sweep:
                        r[name] = _plus(lerp(y[name], plan.drive(r, history, x), w), g.get(name))
                    return r
                return noisy_sweep

            def step(n: int, t: float, y: dict[str, Tensor]) -> dict[str, Tensor]:
                if store:
                    history.store(n, y)
                # stage fraction 1: a delayed read sees t_{n+1} - d (see the class docstring)
                history.at(n, 1.0, t, y)
                x = inputs(t)
                r = dict(y)
                for (name, w, lerp), plan in sweep:
                    r[name] = lerp(y[name], plan.drive(r, history, x), w)  # Phi(u) from the swept r
                return r
            return step

        populations = [update(name) for name in pops]
        if noise is not None:  # Euler-Maruyama
            def noisy_step(n: int, t: float, r: dict[str, Tensor]) -> dict[str, Tensor]:
                if store:
                    history.store(n, r)
                history.at(n, 0.0, t, r)
                phi_u, g = drive(t, r, history, inputs(t)), noise(n)
                return {p: _plus(lerp(r[p], phi_u[p], w), g.get(p)) for p, w, lerp in populations}
            return noisy_step

        def step(n: int, t: float, r: dict[str, Tensor]) -> dict[str, Tensor]:
            if store:
                history.store(n, r)
            history.at(n, 0.0, t, r)
            phi_u = drive(t, r, history, inputs(t))  # Phi(u_p(t_n)) per population
            return {p: lerp(r[p], phi_u[p], dt_over_tau) for p, dt_over_tau, lerp in populations}
        return step


def _plus(x: Tensor, g: Tensor | None) -> Tensor:
    """``x + g`` (a new tensor: ``x`` may be ``Phi(u)`` itself), or ``x`` without noise."""
    return x if g is None else x + g


@dataclass(frozen=True)
class Midpoint(FixedStepSolver):
    """Explicit midpoint rule (order 2): ``r_{n+1} = r_n + dt f(t_n + dt/2, r_n + dt/2 f_n)``."""

    name: ClassVar[str] = "midpoint"
    tableau: ClassVar[Tableau] = Tableau(c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0), order=2,
                                         stability_limit=2.0)


@dataclass(frozen=True)
class Heun(FixedStepSolver):
    """Heun's method / explicit trapezoid (order 2): Euler predictor, trapezoidal corrector.

    With noise it is the stochastic Heun method (strong order 1 and weak order 2 for additive
    noise; :meth:`FixedStepSolver._noisy_stepper`)."""

    name: ClassVar[str] = "heun"
    stochastic: ClassVar[bool] = True
    tableau: ClassVar[Tableau] = Tableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), order=2,
                                         stability_limit=2.0)


@dataclass(frozen=True)
class RK4(FixedStepSolver):
    """The classic fourth-order Runge-Kutta method (order 4, also on delay equations)."""

    name: ClassVar[str] = "rk4"
    tableau: ClassVar[Tableau] = Tableau(c=(0.0, 0.5, 0.5, 1.0), a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
                                         b=(1 / 6, 1 / 3, 1 / 3, 1 / 6), order=4, stability_limit=2.785)
