r"""The history of the fixed-step solvers: past states on the grid, read by integer index.

Fixed-step solvers advance on the grid ``t_n = t0 + n * dt``. Every population's state
``r_n`` (and, for solvers with off-grid stages, its derivative ``f_n = dr/dt(t_n)``) is kept
in a preallocated ring of ``K + 1`` slots, ``K = ceil(max_delay / dt)``. A slot holds a
*reference* to the step's tensor, so recording costs no copy and autograd sees the same
graph as a hand-written loop.

A delay ``d = k * dt`` (``k`` an integer, checked) read at the stage time
``t_n + c * dt`` (``0 <= c <= 1``) is the point ``theta = c`` of the grid interval
``[t_{n-k}, t_{n-k+1}]``:

* ``c == 0`` or ``c == 1``: the grid value ``r_{n-k}`` or ``r_{n-k+1}``, read by integer index;
* ``0 < c < 1``: cubic Hermite interpolation of ``(r, f)`` at both ends,

  .. math:: r(\theta) = h_{00} r_{j} + h_{01} r_{j+1} + \Delta t\,(h_{10} f_{j} + h_{11} f_{j+1}),

  with :math:`h_{00} = 2\theta^3 - 3\theta^2 + 1`, :math:`h_{10} = \theta^3 - 2\theta^2 + \theta`,
  :math:`h_{01} = -2\theta^3 + 3\theta^2`, :math:`h_{11} = \theta^3 - \theta^2`. Its error is
  :math:`O(\Delta t^4)`, so RK4 keeps order 4 on a delay equation.

One-sided slopes. ``f_j`` is the derivative at the *start* of step ``j`` (its first stage:
the right limit at ``t_j``). Where the vector field jumps at a grid point ``t_m`` (a stimulus
onset or offset ``b``, or ``b + d`` for an input read with delay ``d``), ``dr/dt`` has a left
and a right limit, and the interval ``[t_{m-1}, t_m]`` must end on the *left* limit: the
solver gives it with :meth:`History.store_left` (RK4: its last stage, evaluated at
``t_m^-``; Midpoint: the slope ``2 (r_m - r_{m-1}) / \Delta t - f_{m-1}`` of the quadratic
through ``r_{m-1}, f_{m-1}, r_m``, error :math:`O(\Delta t^3)`). No extra evaluation of the
field is made, and nothing changes at grid points where nothing jumps. Reading the interval
before a jump with the right-limit slope costs an :math:`O(\Delta t)` error there and turns
RK4 into a second-order method on every delayed network with a stimulus onset.

For ``t < t0`` the history is the initial state (constant history). Inputs (stimulus
populations) read with a delay are evaluated at ``t - d`` directly.

Learnt delays (:meth:`History.lag_at`) take any real value ``d >= dt``: the read point
``s = n + c - d / dt`` lies in the interval ``[t_j, t_{j+1}]``, ``j = ceil(s) - 1``,
``theta = s - j`` in ``(0, 1]`` (so ``theta = 1`` reads the grid value ``r_{j+1}`` and its
left slope), read with the Hermite cubic above where derivatives are kept, else linearly
(Euler, Heun: ``r_j + theta (r_{j+1} - r_j)``, error :math:`O(\Delta t^2)`); the slope for
the gradient with respect to ``d`` is that interpolant's derivative.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

from dynode.errors import ConfigurationError, DelayError
from dynode.history.base import Inputs, check_delay, lag_input, with_slope
from dynode.tolerances import TIME_RTOL, time_tol

__all__ = ["History", "HistoryTail", "delay_steps", "compatible_dts", "hermite"]


def delay_steps(delay: float, dt: float) -> int | None:
    """``k`` with ``delay == k * dt`` (to 1e-9 relative), or ``None`` if there is none."""
    k = round(delay / dt)
    if abs(k * dt - delay) <= time_tol(delay):
        return int(k)
    return None


def compatible_dts(delays, limit: int = 6) -> list[float]:
    """The largest step sizes (ms) of which every delay in ``delays`` is an integer multiple."""
    pos = [Fraction(d).limit_denominator(10_000) for d in delays if d > 0]
    if not pos:
        return []
    den = math.lcm(*[p.denominator for p in pos])
    g = Fraction(math.gcd(*[int(p * den) for p in pos]), den)  # the gcd of the delays
    out = []
    for m in range(1, 1000):
        cand = g / m
        if (cand * 1000).denominator in (1, 2, 4, 5, 8, 10, 16, 20, 25, 40, 50, 100, 200, 250, 500, 1000):
            out.append(float(cand))
        if len(out) >= limit:
            break
    return out


def hermite(theta: float, dt: float) -> tuple[float, float, float, float]:
    """Cubic Hermite weights of ``(r_j, r_{j+1}, f_j, f_{j+1})`` at ``theta`` (see the module)."""
    t2, t3 = theta * theta, theta * theta * theta
    return (2 * t3 - 3 * t2 + 1, -2 * t3 + 3 * t2, dt * (t3 - 2 * t2 + theta), dt * (t3 - t2))


@dataclass(frozen=True)
class HistoryTail:
    """The last grid states of a fixed-step run, to continue it with its delayed past intact.

    ``states`` / ``derivatives`` run oldest to newest; the newest state is the run's final
    state. ``before`` is the constant history before the oldest stored state (the run's own
    initial state). Every tensor is a reference (no copy).
    """

    dt: float
    states: tuple[dict[str, Tensor], ...]
    derivatives: tuple[dict[str, Tensor], ...] | None
    before: dict[str, Tensor]
    left: tuple[tuple[int, dict[str, Tensor]], ...] = ()  # (index into states, dr/dt left limit)

    def detach(self) -> "HistoryTail":
        """The same tail cut from the autograd graph (truncated back-propagation)."""
        det = lambda d: {k: v.detach() for k, v in d.items()}  # noqa: E731
        return HistoryTail(self.dt, tuple(det(s) for s in self.states),
                           None if self.derivatives is None else tuple(det(f) for f in self.derivatives),
                           det(self.before), tuple((i, det(f)) for i, f in self.left))


class History:
    """Ring buffers of past states on the grid ``t0 + n * dt``; read with :meth:`lag`.

    Parameters
    ----------
    initial_state : the state at ``t0``; also the constant history before ``t0``.
    t0, dt : the grid (ms).
    max_delay : the longest delay that will be read (ms); sizes the rings.
    derivatives : keep ``dr/dt`` per step as well (needed for stages off the grid).
    inputs : ``t -> {input_name: tensor}``, for inputs read with a delay.
    tail : the end of an earlier run (:class:`HistoryTail`) whose past continues here
        (instead of the constant history); its newest state must be ``initial_state``.
    """

    def __init__(self, initial_state: Mapping[str, Tensor], *, t0: float, dt: float,
                 max_delay: float, derivatives: bool,
                 inputs: Inputs | None = None, tail: HistoryTail | None = None):
        self.t0, self.dt = float(t0), float(dt)
        self._y0 = dict(initial_state)
        k_max = 0
        if max_delay > 0:
            k_max = delay_steps(max_delay, dt)
            if k_max is None:
                k_max = math.ceil(max_delay / dt - TIME_RTOL)
        self.size = k_max + 1
        self.max_delay = float(max_delay)
        self._derivatives = derivatives
        self._y: dict[str, list] = {name: [None] * self.size for name in self._y0}
        self._f: dict[str, list] = {name: [None] * self.size for name in self._y0} if derivatives else {}
        self._left: dict[int, Mapping[str, Tensor]] = {}  # grid step -> left-limit dr/dt (jumps only)
        self._steps: dict[float, int] = {}
        self._checked_values: set[float] = set()  # learnt delays already checked
        self._inputs = inputs
        self._weights: dict[float, tuple[float, float, float, float]] = {}
        self._cache: dict[tuple, Tensor] = {}
        # the stage being evaluated: grid step n, stage fraction c, its time and state
        self.n, self.c, self.t = 0, 0.0, self.t0
        self._state: Mapping[str, Tensor] = self._y0
        # grid steps n >= oldest are in the rings; before that the history is constant
        # (self._before: the initial state, or the start of a continued run)
        self._oldest = 0
        self._before = self._y0
        if tail is not None:
            self._load_tail(tail)

    def _load_tail(self, tail: HistoryTail) -> None:
        if abs(tail.dt - self.dt) > TIME_RTOL * self.dt:
            raise DelayError(f"cannot continue a run made with dt = {tail.dt:g} ms at dt = {self.dt:g} ms: "
                             "the delayed history lives on the old grid; use the same dt")
        m = min(len(tail.states), self.size)
        if self._derivatives and m > 1 and tail.derivatives is None:
            raise ConfigurationError(
                "this solver reads the delayed history between grid points (Hermite interpolation "
                "needs dr/dt), but the run being continued kept no derivatives (it used Euler or "
                "Heun); continue it with the same solver, or with Euler/Heun")
        missing = [n for n in self._y0 if n not in tail.states[-1]]
        if missing:
            raise ConfigurationError(f"the run being continued has no populations {missing}")
        first = len(tail.states) - m
        for i in range(m):
            n = i - (m - 1)  # the newest stored state is step 0 of this run
            slot = n % self.size
            for name, ring in self._y.items():
                ring[slot] = tail.states[first + i][name]
            if self._derivatives and n < 0:
                for name, ring in self._f.items():
                    ring[slot] = tail.derivatives[first + i][name]
        if self._derivatives:
            self._left = {i - first - (m - 1): f for i, f in tail.left if i >= first}
        self._oldest = -(m - 1)
        self._before = {k: v for k, v in tail.before.items() if k in self._y0}

    def tail(self, n_end: int) -> HistoryTail:
        """The stored past at the end of a run of ``n_end`` steps (newest = step ``n_end``)."""
        oldest = max(self._oldest, n_end - self.size + 1)
        ns = range(oldest, n_end + 1)
        states = tuple({k: ring[n % self.size] for k, ring in self._y.items()} for n in ns)
        derivs = (tuple({k: ring[n % self.size] for k, ring in self._f.items()} if n < n_end else {}
                        for n in ns) if self._derivatives else None)  # dr/dt at n_end: not computed
        left = tuple((n - oldest, f) for n, f in sorted(self._left.items()) if oldest <= n <= n_end)
        return HistoryTail(self.dt, states, derivs, dict(self._before), left)

    # -- written by the solver -------------------------------------------------------
    def store(self, n: int, state: Mapping[str, Tensor], derivative: Mapping[str, Tensor] | None = None) -> None:
        """Record ``r_n`` (and ``f_n`` when derivatives are kept) in slot ``n mod size``.

        ``derivative=None`` records a final state whose ``dr/dt`` was not computed."""
        slot = n % self.size
        for name, ring in self._y.items():
            ring[slot] = state[name]
        if self._derivatives:
            for name, ring in self._f.items():
                ring[slot] = None if derivative is None else derivative[name]

    def store_left(self, n: int, derivative: Mapping[str, Tensor]) -> None:
        """Record the left limit of ``dr/dt`` at grid step ``n`` (a point where the field
        jumps): the interval ``[t_{n-1}, t_n]`` ends on this slope instead of ``f_n``."""
        self._left[n] = derivative
        for old in [m for m in self._left if m <= n - self.size]:
            del self._left[old]

    def at(self, n: int, c: float, t: float, state: Mapping[str, Tensor]) -> None:
        """Set the stage being evaluated: time ``t = t0 + (n + c) dt`` with state ``state``."""
        if n != self.n:
            self._cache.clear()
        self.n, self.c, self.t, self._state = n, c, t, state

    def snapshot(self, next_step: int) -> tuple[dict[str, list], dict[str, list], dict]:
        """The ring contents (references), to restore when a segment is recomputed.

        ``next_step``: the step the segment starts with; its slot is stored before it is read,
        so the stale state there is left out (a checkpoint boundary then keeps
        ``max_delay / dt`` past states per population, not one more)."""
        drop = next_step % self.size

        def keep(ring: list) -> list:
            return [None if i == drop else v for i, v in enumerate(ring)]
        return ({k: keep(v) for k, v in self._y.items()}, {k: keep(v) for k, v in self._f.items()},
                dict(self._left))

    def restore(self, snapshot: tuple[dict[str, list], dict[str, list], dict]) -> None:
        ys, fs, left = snapshot
        self._y = {k: list(v) for k, v in ys.items()}
        self._f = {k: list(v) for k, v in fs.items()}
        self._left = dict(left)
        self._cache.clear()

    # -- read by vector fields -------------------------------------------------------
    def reads_initial(self, delay: float) -> bool:
        """Whether a read with ``delay`` at the current stage falls on the initial state
        (``t - delay <= t0``), from the grid position ``(n + c) dt`` alone (no device sync)."""
        return (self.n + self.c) * self.dt <= delay + time_tol(delay)

    def lag(self, name: str, delay: float) -> Tensor:
        """The population (or input) ``name`` at time ``t - delay`` (ms)."""
        ring = self._y.get(name)
        if ring is None:
            return lag_input(self._inputs, self.t - delay, name, self._y)
        k = self._steps.get(delay)
        if k is None:
            k = self._resolve(name, delay)
        if k == 0:
            return self._state[name]
        j = self.n - k
        c = self.c
        if c == 0.0:
            return ring[j % self.size] if j >= self._oldest else self._before[name]
        if c == 1.0:
            return ring[(j + 1) % self.size] if j + 1 >= self._oldest else self._before[name]
        if j < self._oldest:  # the interval lies in the constant history before the rings
            return self._before[name]
        key = (name, j, c)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        w = self._weights.get(c)
        if w is None:
            w = self._weights[c] = hermite(c, self.dt)
        fr = self._f[name]
        a, b = j % self.size, (j + 1) % self.size
        left = self._left.get(j + 1) if self._left else None
        fb = fr[b] if left is None else left[name]
        out = (ring[a] * w[0]).add_(ring[b], alpha=w[1]).add_(fr[a], alpha=w[2]).add_(fb, alpha=w[3])
        self._cache[key] = out
        return out

    def lag_at(self, name: str, delay: Tensor, value: float) -> Tensor:
        """``name`` at ``t - delay`` for a learnt delay of value ``value`` ms (any real value in
        ``[dt, max_delay]``), differentiable in ``delay`` (see the module doc and
        :meth:`~dynode.history.base.HistoryReader.lag_at`)."""
        ring = self._y.get(name)
        if ring is None:
            raise DelayError(f"history.lag_at({name!r}): learnt delays read populations only")
        key = (name, value, self.c)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self._continuous(name, ring, value)
        out, slope = hit
        return with_slope(out, delay, value, slope)

    def _continuous(self, name: str, ring: list, value: float) -> tuple[Tensor, Callable[[], Tensor | None]]:
        """``r(t - value)`` on the interpolant and a function giving ``r'(t - value)`` (computed
        only when a gradient asks for it; ``None`` in the constant history)."""
        if value not in self._checked_values:
            check_delay(name, value, self.max_delay)
            if value < self.dt * (1 - TIME_RTOL):
                raise DelayError(f"history.lag_at({name!r}, {value:g}): a learnt delay read on the grid must "
                                 f"be >= dt = {self.dt:g} ms (it would read the step being computed); "
                                 "raise the lower delay bound (delay_bounds) or reduce dt")
            self._checked_values.add(value)
        k = delay_steps(value, self.dt)  # on the grid: the same read point as a fixed delay's
        s = self.n + self.c - (k if k is not None else value / self.dt)
        j = math.ceil(s - TIME_RTOL) - 1
        theta = min(s - j, 1.0)
        on_point = theta >= 1.0 - TIME_RTOL
        if j < self._oldest:  # the interval lies in (or ends) the constant history before the rings
            return (ring[(j + 1) % self.size] if on_point and j + 1 >= self._oldest
                    else self._before[name]), lambda: None
        a, b = j % self.size, (j + 1) % self.size
        r_a, r_b = ring[a], ring[b]
        dt = self.dt
        if not self._derivatives:
            if on_point:
                return r_b, functools.cache(lambda: (r_b - r_a).div_(dt))
            r_dot = (r_b - r_a).div_(dt)  # needed for the value as well
            return torch.add(r_a, r_dot, alpha=theta * dt), lambda: r_dot
        fr = self._f[name]
        left = self._left.get(j + 1) if self._left else None
        f_a, f_b = fr[a], (fr[b] if left is None else left[name])
        t2 = theta * theta

        @functools.cache  # RK stages with the same c share it
        def slope() -> Tensor:
            return ((r_a - r_b) * ((6 * t2 - 6 * theta) / dt)).add_(f_a, alpha=3 * t2 - 4 * theta + 1).add_(
                f_b, alpha=3 * t2 - 2 * theta)
        if on_point:
            return r_b, slope
        w = self._weights.get(theta) or hermite(theta, dt)
        return (r_a * w[0]).add_(r_b, alpha=w[1]).add_(f_a, alpha=w[2]).add_(f_b, alpha=w[3]), slope

    def _resolve(self, name: str, delay: float) -> int:
        check_delay(name, delay, self.max_delay)
        k = delay_steps(delay, self.dt)
        if k is None:
            dts = ", ".join(f"{d:g}" for d in compatible_dts([delay]))
            raise DelayError(
                f"the delay {delay:g} ms read from {name!r} is not an integer multiple of "
                f"dt = {self.dt:g} ms; use a dt that divides it (e.g. {dts} ms) or an adaptive solver")
        self._steps[delay] = k
        return k
