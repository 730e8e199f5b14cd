"""Adaptive embedded Runge-Kutta solvers that understand delays: Dopri5, Tsit5, Bosh3.

Each is its :class:`~dynode.solvers.tableau.Tableau`, an FSAL pair (the last stage is
``f(t_{n+1}, y_{n+1})`` and starts the next step) with error weights ``b_err`` and dense
output, on :class:`AdaptiveSolver`'s loop. The step is accepted when the scaled RMS of the
error estimate ``e`` is ``<= 1`` (see
:mod:`dynode.solvers.controllers`); each method's continuous extension (weights
``B_i(theta)``, :mod:`dynode.history.dense`) serves ``save_at`` and delayed reads:

* Dopri5 (Dormand-Prince 5(4)): Hairer's 4th-order dense output (uses ``k_7``);
* Tsit5 (Tsitouras 5(4), 2011): the paper's 4th-order interpolant;
* Bosh3 (Bogacki-Shampine 3(2)): cubic Hermite on ``(y_n, k_1, y_{n+1}, k_4)`` (order 3).

Delays (method of steps, :mod:`dynode.history.dense`): the step is capped at the smallest
positive delay and ends exactly on the propagated breakpoints
(:func:`~dynode.history.propagate_breakpoints`, ``order + 1`` levels); after a step that
ends on a stimulus jump the next step recomputes its first stage (FSAL is not reused across
a jump).

Cost: time bookkeeping is host-side; the only device-to-host read per step is the error
norm (one tensor of per-population norms, which also carries each population's peak
``|r|`` for the divergence check ``max_abs``: no extra synchronisation). Stage combinations
are in-place ``torch._foreach_*`` ops over the populations (one autograd node per term).

``save_at=None`` saves ``t0`` and the end of every accepted step; otherwise the dense output
gives the state at each requested time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field as dc_field
from typing import ClassVar, Literal

import numpy as np
import torch
from numpy.polynomial import polynomial as npoly
from torch import Tensor

from dynode.errors import ConfigurationError, SolverError
from dynode.events import Tracker
from dynode.guards import Guard
from dynode.problem import Problem
from dynode.solution import Output, Solution
from dynode.solver import ATOL, RTOL, Solver, check_options
from dynode.solvers.controllers import get_controller, initial_step
from dynode.solvers.tableau import Tableau, dense_rows, polymul
from dynode.history import DenseHistory, field_delays, history_span, propagate_breakpoints
from dynode.tolerances import left_limit, time_tol
from dynode.stats import Status

__all__ = ["Tableau", "AdaptiveSolver", "Dopri5", "Tsit5", "Bosh3"]


def _dopri5() -> Tableau:
    c = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
    a = ((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
         (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
         (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
         (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84))
    b = a[-1] + (0.0,)
    # the embedded 4th-order solution: the alternative weights of the DP5 pair (also used by
    # torchdiffeq and torchode); on the benchmark networks it gives ~10 % fewer steps than the
    # original 5179/57600 ... weights at an equal or smaller global error
    b_hat = (1951 / 21600, 0.0, 22642 / 50085, 451 / 720, -12231 / 42400, 649 / 6300, 1 / 60)
    d = (-12715105075 / 11282082432, 0.0, 87487479700 / 32700410799, -10690763975 / 1880347072,
         701980252875 / 199316789632, -1453857185 / 822651844, 69997945 / 29380423)
    # y(theta) - y0 = theta b + theta(1-theta)(e1 - b) + theta^2(1-theta)(2b - e1 - e7)
    #                 + theta^2 (1-theta)^2 d       (Hairer's continuous extension, order 4)
    th, one_m = np.array([0.0, 1.0]), np.array([1.0, -1.0])
    p1, p2 = th, polymul(th, one_m)
    p3 = polymul(th, th, one_m)
    p4 = polymul(p3, one_m)
    B = []
    for i in range(7):
        e1, e7 = float(i == 0), float(i == 6)
        term = npoly.polyadd(npoly.polyadd(b[i] * p1, (e1 - b[i]) * p2),
                             npoly.polyadd((2 * b[i] - e1 - e7) * p3, d[i] * p4))
        B.append(term)
    e = tuple(bi - bh for bi, bh in zip(b, b_hat))
    return Tableau(c, a, b, order=5, b_err=e, error_order=4, dense=dense_rows(B))


def _tsit5() -> Tableau:
    c = (0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0)
    a = ((), (0.161,), (-0.008480655492356989, 0.335480655492357),
         (2.897153057105493, -6.359448489975075, 4.3622954328695815),
         (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
         (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401,
          -0.028269050394068383),
         (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
          2.324710524099774))
    b = a[-1] + (0.0,)
    e = (0.001780011052226, 0.000816434459657, -0.007880878010262, 0.144711007173263,
         -0.582357165452555, 0.458082105929187, -1 / 66)
    P = lambda *cs: np.array(cs, dtype=float)  # noqa: E731  (low -> high)
    th2 = P(0, 0, 1)
    B = [polymul(P(0, -1.0530884977290216), P(-1.3299890189751412, 1),
                  P(0.7139816917074209, -1.4364028541716351, 1)),
         polymul(0.1017 * th2, P(1.2949852507374631, -2.1966568338249754, 1)),
         polymul(2.490627285651252793 * th2, P(1.57803468208092486, -2.38535645472061657, 1)),
         polymul(-16.54810288924490272 * th2, P(-1.21712927295533244, 1), P(-0.61620406037800089, 1)),
         polymul(47.37952196281928122 * th2, P(-1.203071208372362603, 1), P(-0.658047292653547382, 1)),
         polymul(-34.87065786149660974 * th2, P(-1.2, 1), P(-0.666666666666666667, 1)),
         polymul(2.5 * th2, P(-1, 1), P(-0.6, 1))]
    return Tableau(c, a, b, order=5, b_err=e, error_order=4, dense=dense_rows(B))


def _bosh3() -> Tableau:
    c = (0.0, 0.5, 0.75, 1.0)
    a = ((), (0.5,), (0.0, 0.75), (2 / 9, 1 / 3, 4 / 9))
    b = (2 / 9, 1 / 3, 4 / 9, 0.0)
    b_hat = (7 / 24, 1 / 4, 1 / 3, 1 / 8)
    # cubic Hermite: y(theta) - y0 = h01 (y1 - y0) + h (h10 k1 + h11 k4)
    h01, h10, h11 = np.array([0, 0, 3.0, -2.0]), np.array([0, 1.0, -2.0, 1.0]), np.array([0, 0, -1.0, 1.0])
    B = [b[i] * h01 + (h10 if i == 0 else 0) + (h11 if i == 3 else 0) for i in range(4)]
    e = tuple(bi - bh for bi, bh in zip(b, b_hat))
    return Tableau(c, a, b, order=3, b_err=e, error_order=2, dense=dense_rows(B))


DOPRI5, TSIT5, BOSH3 = _dopri5(), _tsit5(), _bosh3()


def _combine(y: list[Tensor] | None, ks: list[list[Tensor]], terms: Sequence[tuple[int, float]],
             h: float) -> list[Tensor]:
    """``y + h sum_j w_j k_j`` for every population, ``h sum_j w_j k_j`` if ``y`` is None
    (fresh tensors; ``y`` and ``ks`` untouched)."""
    if not terms:
        return list(y)
    (j0, w0), *rest = terms
    out = torch._foreach_mul(ks[j0], h * w0) if y is None else torch._foreach_add(y, ks[j0], alpha=h * w0)
    for j, w in rest:
        torch._foreach_add_(out, ks[j], alpha=h * w)
    return out


@dataclass(frozen=True)
class AdaptiveSolver(Solver):
    """Base of the embedded RK solvers; the loop lives here, the :class:`Tableau` (an FSAL pair
    with dense output) in the subclass.

    Parameters
    ----------
    rtol, atol : relative and absolute tolerance of the local error (``atol > 0``).
    controller : ``"integral"`` or ``"pi"`` step-size controller.
    dt_min : the smallest step (ms) before giving up with ``REACHED_DT_MIN``.
    dt_max : the largest step (ms); also capped at the smallest positive delay.
    max_steps : attempted steps before giving up with ``REACHED_MAX_STEPS``.
    safety, factor_min, factor_max : controller safety factor and step-ratio limits.
    """

    rtol: float = RTOL
    atol: float = ATOL
    controller: Literal["integral", "pi"] = "integral"
    dt_min: float = 1e-10
    dt_max: float = math.inf
    max_steps: int = 100_000
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 10.0

    tableau: ClassVar[Tableau]
    adaptive: ClassVar[bool] = True
    dense_output: ClassVar[bool] = True
    locates_events: ClassVar[bool] = True  # integrate(..., events=...): on the continuous extension
    _ctrl: object = dc_field(init=False, repr=False, compare=False)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "tableau" in cls.__dict__ and not (cls.tableau.fsal and cls.tableau.b_err and cls.tableau.dense):
            raise ConfigurationError(f"{cls.__name__}: an adaptive tableau is an FSAL pair with b_err and dense")

    @property
    def convergence_order(self) -> int:
        return self.tableau.order

    def __post_init__(self):
        check_options(type(self).__name__, rtol=self.rtol, atol=self.atol, dt_min=self.dt_min,
                      dt_max=self.dt_max, max_steps=self.max_steps)
        if not self.dt_max > self.dt_min:
            raise ConfigurationError(f"{type(self).__name__}: need dt_min < dt_max, got "
                                     f"dt_min={self.dt_min}, dt_max={self.dt_max}")
        object.__setattr__(self, "_ctrl", get_controller(self.controller, safety=self.safety,
                                                         factor_min=self.factor_min,
                                                         factor_max=self.factor_max))

    def solve(self, problem: Problem, dt=None, *, observer=None) -> Solution:
        """Integrate ``problem`` adaptively; ``dt``: the first step (ms; ``None``: Hairer's
        heuristic), ``observer`` as in :meth:`Solver.solve`. Raises :class:`dynode.SolverError`
        when the step falls below ``dt_min``, after ``max_steps`` attempts, or on non-finite
        values."""
        return _Run(self, problem, observer).solve(dt)


class _Run:
    """One adaptive solve: its loop state, one :meth:`attempt` and one :meth:`accept` at a time."""

    def __init__(self, solver: AdaptiveSolver, problem: Problem, observer):
        self.solver, self.tab = solver, solver.tableau
        self.field, self.inputs, self.names = problem.field, problem.inputs, list(problem.names)
        self.t_end = problem.t_end
        delays = field_delays(self.field)
        max_delay = history_span(self.field, delays)
        self.keep = max_delay > 0
        self.dt_max = min(solver.dt_max, delays[0]) if delays else solver.dt_max
        self.stops, self.jumps = propagate_breakpoints(problem.t0, problem.t_end, problem.breakpoints,
                                                       delays, self.tab.order + 1)
        self.history = DenseHistory(problem.y0, t0=problem.t0, max_delay=max_delay,
                                    weights=self.tab.weights, inputs=problem.inputs,
                                    slopes=self.tab.slopes)
        self.taus = self.field.time_constants()
        self.guard = Guard(problem.max_abs, self.taus, None)
        self.ctrl = solver._ctrl.start(self.tab.error_order)
        self.sizes = [problem.y0[n].numel() for n in self.names]
        self.a_rows = [tuple((j, aij) for j, aij in enumerate(row) if aij) for row in self.tab.a]
        self.e_terms = tuple((j, ej) for j, ej in enumerate(self.tab.b_err) if ej)
        self.out = Output(problem, observer)
        self.out.start(problem.y0)
        self.tracker = Tracker(problem.events, problem.t0, problem.y0) if problem.events else None
        self.check_every = problem.check_every
        self.t, self.y = problem.t0, [problem.y0[n] for n in self.names]
        self.nfe = self.steps = self.accepted = self.rejected = 0
        self.norms: list[float] = []  # the last attempt's per-population ||e / scale||_2

    def f(self, t: float, y: list[Tensor]) -> list[Tensor]:
        """``dr/dt`` at ``(t, y)``, per population in ``names`` order."""
        self.nfe += 1
        state = dict(zip(self.names, y))
        self.history.at(t, state)
        out = self.field(t, state, self.history, self.inputs(t))
        return [out[n] for n in self.names]

    def fail(self, status: Status, h: float) -> SolverError:
        """The :class:`SolverError` of a failed solve: status, time, worst population, advice."""
        solver, t = self.solver, self.t
        rms = [v / math.sqrt(n) for v, n in zip(self.norms, self.sizes)]
        worst = None
        if rms:  # NaN counts as the largest error
            worst = max(zip(rms, self.names), key=lambda en: math.inf if math.isnan(en[0]) else en[0])[1]
        tau = self.taus.get(worst)
        who = f"; population {worst!r} has the largest error estimate" if worst else ""
        who += f" (tau = {tau:g} ms)" if tau else ""
        name = type(solver).__name__
        if status == Status.REACHED_DT_MIN:
            msg = (f"{name}: the step size fell below dt_min = {solver.dt_min:g} ms at t = {t:g} ms "
                   f"(h = {h:.3g} ms){who}. The solution is probably stiff, discontinuous or blowing up "
                   "there: check tau and the weights, declare input jumps in the stimulus' breakpoints, "
                   "loosen rtol/atol or lower dt_min")
        elif status == Status.REACHED_MAX_STEPS:
            msg = (f"{name}: max_steps = {solver.max_steps} steps reached at t = {t:g} ms (of t_end = "
                   f"{self.t_end:g} ms, last h = {h:.3g} ms){who}. Raise max_steps, loosen rtol/atol, or "
                   "check tau (a small tau forces small steps: consider a fixed-step solver with dt < tau)")
        else:
            msg = (f"{name}: non-finite values (NaN/inf) at t = {t:g} ms{who}, even with steps down to "
                   f"{h:.3g} ms. Check the activation, weights and inputs for overflow, and tau (too small "
                   "a tau makes the field explode)")
        return SolverError(msg, status=int(status), t=t, population=worst)

    def attempt(self, k1: list[Tensor], h: float, t_left: float) -> tuple[list, list, float, list[float]]:
        """One step of size ``h`` from ``(t, y)``: ``(stages, y_new, err, peaks)``; ``err`` is the
        scaled RMS error over every element, ``peaks`` the populations' ``max |y_new|``.
        The last stage (``c = 1``) is evaluated at ``t_left`` (the left limit before a jump)."""
        t, y, c = self.t, self.y, self.tab.c
        ks, y_new = [k1], y
        for i in range(1, len(c)):
            yi = _combine(y, ks, self.a_rows[i], h)
            ks.append(self.f(t_left if c[i] == 1.0 else t + c[i] * h, yi))
            y_new = yi
        with torch.no_grad():  # the error norm (no graph): the one host read of the step
            err = _combine(None, ks, self.e_terms, h)
            sc = torch._foreach_maximum(torch._foreach_abs(y), torch._foreach_abs(y_new))
            torch._foreach_mul_(sc, self.solver.rtol)
            torch._foreach_add_(sc, self.solver.atol)
            torch._foreach_div_(err, sc)
            if self.tracker is not None and self.tracker.held is not None:  # stopped samples: no error
                live = self.tracker.alive.to(err[0].dtype)
                err = [e * live.view(-1, *([1] * (e.dim() - 1))) for e in err]
            # per-population error norms and peaks |y_new| (divergence check) in one read
            read = torch.stack([*torch._foreach_norm(err), *torch._foreach_norm(y_new, ord=math.inf)]).tolist()
        n_pop = len(self.names)
        self.norms, peaks = read[:n_pop], read[n_pop:]
        err_total = math.sqrt(sum(v * v for v in self.norms) / sum(self.sizes))
        return ks, y_new, err_total, peaks

    def accept(self, h: float, t_new: float, ks: list, y_new: list[Tensor], peaks: list[float]) -> None:
        """Take the step ``[t, t_new]``: history, saves and dense output, divergence check."""
        t, y, names, weights = self.t, self.y, self.names, self.tab.weights
        if self.keep:
            self.history.append(t, h, t_new, y, ks, y_new)
        state = dict(zip(names, y_new))
        piece = (lambda: ([dict(zip(names, v)) for v in (y, *ks)],
                          lambda th: [1.0, *(h * w for w in weights(th))]))
        if self.tracker is None:
            self.out.step(t, t_new, state, piece)
        else:  # located on the continuous extension; a stopped sample's saves hold its event state
            state = self.tracker.step(t, h, dict(zip(names, y)), state, piece)
            self.out.step(t, t_new, state, piece, self.tracker.put(self.out.emit))
            y_new = [state[n] for n in names]
        if not all(p <= self.guard.max_abs for p in peaks):
            self.guard.check(state, t, t_new)  # raises DivergenceError
        self.t, self.y = t_new, y_new

    def first_step(self, k1: list[Tensor], dt) -> float:
        """``dt`` if given, else Hairer's heuristic (capped at ``dt_max`` and the first stop)."""
        if dt is None:
            h = initial_step(self.f, self.t, self.y, k1, rtol=self.solver.rtol, atol=self.solver.atol,
                             order=self.tab.order, h_max=min(self.dt_max, 0.5 * (self.stops[0] - self.t)))
            if not math.isfinite(h):
                raise self.fail(Status.NON_FINITE, 0.0)
        else:
            h = float(dt)
            if not (h > 0 and math.isfinite(h)):
                raise ConfigurationError(f"dt (the first step of an adaptive solver) must be > 0 ms, got {dt}")
        return min(h, self.dt_max)

    def solve(self, dt) -> Solution:
        """Attempt steps until ``t_end``: a step ends on the next stop if it would pass it; an
        accepted step grows ``h`` by the controller's factor, a rejected one shrinks it."""
        solver, stops = self.solver, self.stops
        k1 = self.f(self.t, self.y)
        h_want = self.first_step(k1, dt)
        stop_i = 0
        while True:
            t, stop = self.t, stops[stop_i]
            clipped = t + h_want >= stop - time_tol(stop)
            h, t_new = (stop - t, stop) if clipped else (h_want, t + h_want)
            jump_end = clipped and self.jumps[stop_i]
            t_left = left_limit(t, t_new) if jump_end else t_new
            ks, y_new, err, peaks = self.attempt(k1, h, t_left)
            self.steps += 1
            if err <= 1.0:  # NaN compares False: rejected
                self.accepted += 1
                factor = self.ctrl.accept(err)
                self.accept(h, t_new, ks, y_new, peaks)
                if (self.tracker is not None and self.accepted % self.check_every == 0
                        and self.tracker.all_stopped()):
                    self.out.fill(self.t, self.t_end, None, dict(zip(self.names, self.y)))
                    break
                if clipped:
                    if stop_i == len(stops) - 1:
                        break
                    stop_i += 1
                    h_want = max(h * factor, h_want) if factor >= 1.0 else h * factor
                else:
                    h_want = h * factor
                k1 = self.f(t_new, y_new) if jump_end else ks[-1]
            else:
                self.rejected += 1
                h_want = h * self.ctrl.reject(err)
                if not math.isfinite(err) and h_want < solver.dt_min:
                    raise self.fail(Status.NON_FINITE, h)
            h_want = min(h_want, self.dt_max)
            if h_want < solver.dt_min:
                raise self.fail(Status.REACHED_DT_MIN, h_want)
            if self.steps >= solver.max_steps:
                raise self.fail(Status.REACHED_MAX_STEPS, h)
        events = None
        if self.tracker is not None:
            self.tracker.all_stopped()  # raises if some g became NaN
            events = self.tracker.times()
        return self.out.solution(dict(zip(self.names, self.y)), nfe=self.nfe, steps=self.steps,
                                 accepted=self.accepted, rejected=self.rejected, t_final=self.t, events=events)


@dataclass(frozen=True)
class Dopri5(AdaptiveSolver):
    """Dormand-Prince 5(4), FSAL, 4th-order dense output: dynode's default adaptive solver."""

    name: ClassVar[str] = "dopri5"
    tableau: ClassVar[Tableau] = DOPRI5


@dataclass(frozen=True)
class Tsit5(AdaptiveSolver):
    """Tsitouras 5(4), FSAL, 4th-order dense output (often ~10 % fewer steps than Dopri5)."""

    name: ClassVar[str] = "tsit5"
    tableau: ClassVar[Tableau] = TSIT5


@dataclass(frozen=True)
class Bosh3(AdaptiveSolver):
    """Bogacki-Shampine 3(2), FSAL, cubic Hermite dense output: cheap at loose tolerances."""

    name: ClassVar[str] = "bosh3"
    tableau: ClassVar[Tableau] = BOSH3
