r"""torchdiffeq and torchode behind dynode's solver interface.

Both libraries integrate ``dy/dt = g(t, y)`` for one flat tensor ``y``. The adapters

* flatten the state dict to one row ``(1, batch * features)`` (the whole batch shares one
  step size, as in dynode's own solvers) or, for torchode with ``per_sample=True``, to
  ``(batch, features)``, and restore the dict (views, no copy) before every call of the
  vector field;
* integrate **segment by segment** (:func:`segments`, method of steps). A segment that ends
  on a stimulus jump sees the input's left limit at its end, and the next segment starts its
  stages afresh;
* answer delayed reads from the segments already solved, each kept on ``n_dense + 1``
  points (:class:`~dynode.history.SegmentHistory`);
* return the same :class:`~dynode.solvers.SolverStats` (``nfe`` counted by the adapter,
  steps from the library).

``save_at=None`` saves ``t0`` and every segment end (for an ODE without breakpoints: ``t0``
and ``t_end``); pass ``save_at`` for a trajectory.

The libraries read time as a tensor: every evaluation converts it to a Python float to ask
the stimulus for its value (one host read per evaluation on a GPU).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from dynode.errors import ConfigurationError, SolverError
from dynode.guards import Guard, magnitudes
from dynode.problem import Problem
from dynode.network import Network
from dynode.solution import Output, Solution
from dynode.solver import ATOL, RTOL, Solver, check_options
from dynode.history import SegmentHistory, field_delays, history_span, propagate_breakpoints
from dynode.stats import Status
from dynode.tolerances import TIME_RTOL, left_limit, time_tol

__all__ = ["TorchDiffEq", "TorchODE", "segments"]

_TDE_ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
_TDE_FIXED = ("euler", "midpoint", "heun2", "heun3", "rk4")
_TDE_ADAPTIVE_OPTIONS: dict[str, type] = {**dict.fromkeys(("first_step", "min_step", "max_step", "safety",
                                                             "ifactor", "dfactor"), float),
                                          "max_num_steps": int}
_TDE_FIXED_OPTIONS: dict[str, type] = {"step_size": float}
_TODE_METHODS = ("dopri5", "tsit5", "heun")
_TDEMethod = Literal[_TDE_ADAPTIVE + _TDE_FIXED]  # type: ignore[valid-type]
_TODEMethod = Literal[_TODE_METHODS]  # type: ignore[valid-type]
_BREAKPOINT_LEVELS = 6  # propagate t0 and the stimulus jumps by up to 6 delays


def segments(problem: Problem) -> list[tuple[float, float, bool]]:
    """``[(a, b, b_is_jump)]`` covering ``[t0, t_end]``: the propagated breakpoints
    (:func:`~dynode.history.propagate_breakpoints`) are segment ends, and for a delayed field
    no segment is longer than the smallest positive delay."""
    delays = field_delays(problem.field)
    stops, jumps = propagate_breakpoints(problem.t0, problem.t_end, problem.breakpoints, delays,
                                         _BREAKPOINT_LEVELS)
    out = []
    a = problem.t0
    d_min = delays[0] if delays else math.inf
    for b, jump in zip(stops, jumps):
        n = max(1, math.ceil((b - a) / d_min - TIME_RTOL))
        for m in range(n):
            lo = a + (b - a) * m / n
            hi = b if m == n - 1 else a + (b - a) * (m + 1) / n
            out.append((lo, hi, jump and m == n - 1))
        a = b
    return out


class _Flat:
    """State dict <-> ``(rows, features)``; ``rows`` is the batch or 1 (whole batch in a row)."""

    def __init__(self, y0: Mapping[str, Tensor], per_row: bool):
        self.batch = next(iter(y0.values())).shape[0]
        self.rows = self.batch if per_row else 1
        self.slots: dict[str, tuple[slice, tuple[int, ...]]] = {}  # population -> its columns, its shape
        start = 0
        for name, value in y0.items():
            shape = tuple(value.shape[1:])
            self.slots[name] = (slice(start, start + math.prod(shape)), shape)
            start += math.prod(shape)

    def flatten(self, state: Mapping[str, Tensor]) -> Tensor:
        parts = [state[n].reshape(self.batch, -1) for n in self.slots]
        return (parts[0] if len(parts) == 1 else torch.cat(parts, 1)).reshape(self.rows, -1)

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        rows = flat.reshape(self.batch, -1)
        return {n: rows[:, cols].reshape(self.batch, *shape) for n, (cols, shape) in self.slots.items()}

    def column(self, flat: Tensor, name: str) -> Tensor:
        cols, shape = self.slots[name]
        return flat.reshape(self.batch, -1)[:, cols].reshape(self.batch, *shape)


def _grid(a: float, b: float, n_dense: int | None, saves) -> tuple[list[float], list[int]]:
    """Times to request in segment ``[a, b]`` (its ends, the dense points of a delayed field,
    the saves; merged to time_tol) and the indices of the dense points among them."""
    tol = time_tol(b)
    pts = [a + (b - a) * m / n_dense for m in range(1, n_dense)] if n_dense else []
    merged: list[float] = []
    for x in sorted({a, b, *pts, *saves}):  # a save within tol of a or b merges with it
        if not merged or x - merged[-1] > tol:
            merged.append(x)
    merged[-1] = b
    return merged, [_nearest(merged, x) for x in [a, *pts, b]] if n_dense else []


def _nearest(times: list[float], x: float) -> int:
    i = bisect.bisect_left(times, x)
    return i if i == 0 or (i < len(times) and times[i] - x < x - times[i - 1]) else i - 1


class _Backend(Solver):
    """The segment loop shared by both adapters; subclasses solve one segment."""

    n_dense: int
    per_row: bool = False

    def _solve_segment(self, rhs, y: Tensor, times: Tensor, a: float, counts: dict,
                       first_step: float | None) -> Tensor:
        """Solve the segment starting at ``a``; return the states at ``times``, shape
        ``(len(times), rows, feat)``."""
        raise NotImplementedError

    def solve(self, problem: Problem, dt=None, *, observer=None) -> Solution:
        """Integrate ``problem`` segment by segment; ``dt``, if given, is the first step (ms)."""
        field, inputs = problem.field, problem.inputs
        if problem.events:
            raise ConfigurationError(f"{type(self).__name__} does not locate events (its steps are taken inside "
                                     "torchdiffeq/torchode); use a dynode solver (euler, heun, rk4, dopri5, "
                                     "tsit5, bosh3) for events=")
        learnt = getattr(field, "delay_bounds", dict)()
        if learnt:
            raise ConfigurationError(
                f"{type(self).__name__} cannot read learnt delays (connection {next(iter(learnt))}): its "
                "solution is known on points only, without the slope a learnt delay's gradient needs; "
                "use a dynode solver (euler, heun, rk4, dopri5, tsit5, bosh3)")
        delays = field_delays(field)
        if self.per_row:
            if not isinstance(field, Network):
                raise ConfigurationError(
                    f"{type(self).__name__}(per_sample=True) needs a dynode.Network: the samples are at "
                    "different times, and a custom VectorField's forward takes one float t")
            if delays:
                raise ConfigurationError(f"{type(self).__name__}(per_sample=True) handles fields without "
                                         "delays only; use per_sample=False for a delayed field")
        flat = _Flat(problem.y0, self.per_row)
        history = SegmentHistory(problem.y0, flat.column, t0=problem.t0, max_delay=history_span(field, delays),
                                 inputs=inputs)
        counts = {"nfe": 0, "steps": 0, "accepted": 0, "rejected": 0}
        first = None if dt is None else float(dt)
        out = Output(problem, observer)
        out.start(problem.y0)
        y = flat.flatten(problem.y0)
        guard = Guard(problem.max_abs, field.time_constants(), None)
        tdtype = torch.float64 if y.dtype == torch.float64 else torch.float32
        for a, b, jump in segments(problem):
            b_left = left_limit(a, b) if jump else b
            rhs = _rhs(field, inputs, history, flat, counts, b_left)
            times, dense_idx = _grid(a, b, self._points(a, b) if delays else None, out.between(a, b))
            ys = self._solve_segment(rhs, y, torch.tensor(times, dtype=tdtype, device=y.device), a, counts,
                                     None if first is None else min(first, b - a))
            y = ys[-1]
            y_end = flat.unflatten(y)
            out.step(a, b, y_end, lambda: ([flat.unflatten(v) for v in ys],  # the state at each time
                                           lambda th: [float(i == _nearest(times, a + th * (b - a)))
                                                       for i in range(len(times))]))
            guard.check(y_end, a, b)  # NaN/inf or |r| > max_abs, as dynode's own solvers
            if delays:
                history.append(a, b, ys if len(times) == len(dense_idx) else ys[dense_idx], y_end)
        return out.solution(flat.unflatten(y), t_final=problem.t_end, **counts)

    def _points(self, a: float, b: float) -> int:
        """Intervals per segment on which the history is kept (``n_dense``)."""
        return self.n_dense


def _rhs(field, inputs, history, flat: _Flat, counts: dict, b_left: float):
    """``g(t, y)`` for the libraries. ``t`` is one time, or one per row (``per_sample``): the
    field runs at the first row's time and every sample reads the inputs at its own time;
    no time is later than ``b_left`` (the left limit at a segment that ends on a jump)."""
    def rhs(t: Tensor, yflat: Tensor) -> Tensor:
        counts["nfe"] += 1
        ts = [min(x, b_left) for x in t.detach().reshape(-1).tolist()]
        tf = ts[0]
        state = flat.unflatten(yflat)
        history.at(tf, state)
        x_in = inputs(tf) if len(ts) == 1 or all(x == tf for x in ts) else _per_sample_inputs(inputs, ts)
        deriv = field(tf, state, history, x_in)
        rhs.last = (_seen(tf, rhs.last), state, deriv)  # references only: read by _where on failure
        return flat.flatten(deriv).reshape(yflat.shape)
    rhs.last = None
    return rhs


def _per_sample_inputs(inputs, ts: list[float]) -> dict[str, Tensor]:
    """Sample ``i``'s inputs at its own time ``ts[i]`` (one call per distinct time)."""
    by_t = {x: inputs(x) for x in set(ts)}
    return {k: torch.stack([by_t[x][k][i] for i, x in enumerate(ts)]) for k in by_t[ts[0]]}


def _seen(t: float, last) -> float | None:
    """The time of an evaluation, or of the last one with a finite time (a failing torchode
    step evaluates at t = nan)."""
    return t if math.isfinite(t) else (None if last is None else last[0])


def _where(last) -> tuple[str | None, float | None, str]:
    """Where a failed backend solve went wrong, from its last evaluation ``(t, state, dr/dt)``:
    the first population whose rate or derivative is non-finite, else the largest rate."""
    if last is None:
        return None, None, ""
    t, state, deriv = last
    at = "in this segment" if t is None else f"at t = {t:g} ms"
    names = list(state)
    peaks = magnitudes([*state.values(), *(deriv[n] for n in names)]).tolist()  # one read, on failure only
    rates, slopes = dict(zip(names, peaks[:len(names)])), dict(zip(names, peaks[len(names):]))
    for name in names:
        if not math.isfinite(rates[name]):
            return name, t, f"population {name!r} became non-finite {at}"
    for name in names:
        if not math.isfinite(slopes[name]):
            return name, t, (f"the field's dr/dt of population {name!r} is non-finite {at} "
                             "(rates finite: the activation or an operator produced NaN/inf)")
    name = max(names, key=rates.get)
    return name, t, f"largest rate: population {name!r}, |r| = {rates[name]:.3g} {at}"


def _check_options(who: str, rtol, atol, **options) -> None:
    """:func:`~dynode.solver.check_options`, and rtol/atol are required (it skips None, an
    option not given)."""
    if rtol is None or atol is None:
        raise ConfigurationError(f"{who}: rtol and atol are required numbers, got rtol={rtol!r}, "
                                 f"atol={atol!r}")
    check_options(who, rtol=rtol, atol=atol, **options)


def _fail(solver: str, status: Status, t: float, detail: str, last) -> SolverError:
    """The :class:`SolverError` of the segment starting at ``t``: the library's ``detail``,
    where it went wrong (:func:`_where` on the last evaluation ``last``) and advice."""
    advice = {Status.REACHED_MAX_STEPS: "raise the step limit, loosen rtol/atol or check tau",
              Status.REACHED_DT_MIN: "loosen rtol/atol, lower the minimal step, or check tau and the "
                                     "stimulus breakpoints",
              Status.NON_FINITE: "check weights, activation and tau for overflow"}[status]
    population, t_last, where = _where(last)
    where = f" ({where})" if where else ""
    return SolverError(f"{solver}: {detail} in the segment starting at t = {t:g} ms{where}; {advice}",
                       status=int(status), t=t if t_last is None else t_last, population=population)


@dataclass(frozen=True, init=False)
class TorchDiffEq(_Backend):
    """``torchdiffeq.odeint`` on a dynode field.

    ``method``: an adaptive torchdiffeq method (``dopri5``, ``dopri8``, ``bosh3``,
    ``fehlberg2``, ``adaptive_heun``) or a fixed-grid one (``euler``, ``midpoint``, ``heun2``,
    ``heun3``, ``rk4``, which need ``step_size``). ``options``: torchdiffeq's own options
    (adaptive: first_step, min_step, max_step, safety, ifactor, dfactor, max_num_steps; fixed:
    step_size); anything else is rejected, ``jump_t`` / ``step_t`` too: the breakpoints become
    segment ends instead. ``n_dense``: history intervals per segment.
    """

    method: str
    rtol: float
    atol: float
    options: tuple
    n_dense: int

    name: ClassVar[str] = "torchdiffeq"
    extra_options: ClassVar[dict[str, type]] = {**_TDE_ADAPTIVE_OPTIONS, **_TDE_FIXED_OPTIONS}

    def __init__(self, method: _TDEMethod = "dopri5", rtol: float = RTOL, atol: float = ATOL, *,
                 n_dense: int = 16, **options):
        if method not in _TDE_ADAPTIVE + _TDE_FIXED:
            raise ConfigurationError(f"TorchDiffEq: unknown method {method!r}; use one of "
                                     f"{', '.join(_TDE_ADAPTIVE + _TDE_FIXED)}")
        allowed = _TDE_ADAPTIVE_OPTIONS if method in _TDE_ADAPTIVE else _TDE_FIXED_OPTIONS
        bad = [k for k in options if k not in allowed]
        if bad:
            raise ConfigurationError(f"TorchDiffEq({method!r}) does not take {bad}; its options are "
                                     f"{list(allowed)} (breakpoints become segment ends, not jump_t)")
        if method in _TDE_FIXED and "step_size" not in options:
            raise ConfigurationError(f"TorchDiffEq({method!r}) is fixed-step: give step_size=... (ms)")
        _check_options(f"TorchDiffEq({method!r})", rtol, atol, n_dense=n_dense, **options)
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "rtol", float(rtol))
        object.__setattr__(self, "atol", float(atol))
        object.__setattr__(self, "options", tuple(sorted(options.items())))
        object.__setattr__(self, "n_dense", n_dense)

    @property
    def adaptive(self) -> bool:  # type: ignore[override]
        return self.method in _TDE_ADAPTIVE

    @property
    def grid(self) -> bool:  # type: ignore[override]
        return not self.adaptive

    def _points(self, a: float, b: float) -> int:
        """A fixed-grid method keeps the history on its own steps when at least 3 fit the
        segment exactly: torchdiffeq interpolates between its steps linearly (second order),
        so off-step history points would cap RK4 at order 2."""
        if not self.adaptive:
            n = (b - a) / dict(self.options)["step_size"]
            k = round(n)
            if k >= 3 and abs(n - k) < time_tol(n):
                return k
        return self.n_dense

    def _solve_segment(self, rhs, y, times, a, counts, first_step):
        from torchdiffeq import odeint

        class Func:
            def __call__(self, t, yy):
                return rhs(t, yy)

            def callback_step(self, t0, y0, dt):
                counts["steps"] += 1

        class AdaptiveFunc(Func):
            def callback_accept_step(self, t0, y0, dt):
                counts["accepted"] += 1

            def callback_reject_step(self, t0, y0, dt):
                counts["rejected"] += 1

        opts = dict(self.options)
        if first_step is not None and self.adaptive and "first_step" not in opts:
            opts["first_step"] = first_step
        func = AdaptiveFunc() if self.adaptive else Func()  # a fixed-grid method warns of accept/reject
        try:
            ys = odeint(func, y, times, rtol=self.rtol, atol=self.atol, method=self.method, options=opts)
        except AssertionError as exc:
            msg = str(exc)
            status = (Status.REACHED_MAX_STEPS if "max_num_steps" in msg else
                      Status.NON_FINITE if "nan" in msg.lower() or "inf" in msg.lower() else
                      Status.REACHED_DT_MIN)
            raise _fail("TorchDiffEq", status, a, f"torchdiffeq stopped ({msg})", rhs.last) from exc
        if not self.adaptive:
            counts["accepted"] = counts["steps"]
        return ys  # non-finite values: the divergence guard names the population


@dataclass(frozen=True)
class TorchODE(_Backend):
    """``torchode`` on a dynode field.

    ``method``: ``dopri5``, ``tsit5`` or ``heun``; ``controller``: ``"integral"`` or
    ``"pid"`` (PI gains 0.2/0.5, torchode's default); ``max_steps``, ``dt_min``, ``dt_max``.

    ``per_sample=False`` (default) integrates the whole batch as one problem (one step size,
    like dynode's solvers). ``per_sample=True`` gives every sample its own step size and
    error control: it pays off when the samples' hard phases happen at different times
    (e.g. different stimulus onsets or contrasts that drive some samples into fast
    transients while others rest), because a shared step is the smallest any sample needs
    at each moment, whereas per-sample stepping costs the largest per-sample step count; a
    sample's result then also no longer depends on the rest of the batch. It does not pay
    off for similar samples (every sample is still evaluated at every iteration) and costs
    one host read of the per-sample times per evaluation to look up the stimulus. Measured
    (``benchmarks/bench_solvers.py``, 8 samples each driven by a narrow bump 10 ms after the
    previous one): 96 loop iterations per-sample vs 240 with a shared step, same accuracy.
    (Like every adaptive stepper it can step over a narrow feature that no stage sees:
    declare jumps as stimulus breakpoints, or cap ``dt_max``.) It needs
    a :class:`dynode.Network` (whose ``forward`` reads time only through its inputs) without
    delays.
    """

    method: _TODEMethod = "dopri5"
    rtol: float = RTOL
    atol: float = ATOL
    _: KW_ONLY
    controller: Literal["integral", "pid"] = "integral"
    per_sample: bool = False
    max_steps: int | None = None
    dt_min: float | None = None
    dt_max: float | None = None
    n_dense: int = 16

    name: ClassVar[str] = "torchode"
    adaptive: ClassVar[bool] = True

    def __post_init__(self):
        method, controller, dt_min, dt_max = self.method, self.controller, self.dt_min, self.dt_max
        if method not in _TODE_METHODS:
            raise ConfigurationError(f"TorchODE: unknown method {method!r}; use one of {_TODE_METHODS}")
        if controller not in ("integral", "pid"):
            raise ConfigurationError(f"TorchODE: controller must be 'integral' or 'pid', got {controller!r}")
        _check_options("TorchODE", self.rtol, self.atol, max_steps=self.max_steps, dt_min=dt_min,
                       dt_max=dt_max, n_dense=self.n_dense)
        if dt_min is not None and dt_max is not None and not dt_max > dt_min:
            raise ConfigurationError(f"TorchODE: need dt_min < dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        object.__setattr__(self, "rtol", float(self.rtol))
        object.__setattr__(self, "atol", float(self.atol))
        object.__setattr__(self, "per_sample", bool(self.per_sample))

    @property
    def per_row(self) -> bool:  # type: ignore[override]
        return self.per_sample

    def _solve_segment(self, rhs, y, times, a, counts, first_step):
        import torchode as to

        term = to.ODETerm(rhs, with_stats=False)
        method = {"dopri5": to.Dopri5, "tsit5": to.Tsit5, "heun": to.Heun}[self.method](term=term)
        kw = dict(term=term, dt_min=self.dt_min, dt_max=self.dt_max)
        if self.controller == "integral":
            ctrl = to.IntegralController(atol=self.atol, rtol=self.rtol, **kw)
        else:
            ctrl = to.PIDController(atol=self.atol, rtol=self.rtol, pcoeff=0.2, icoeff=0.5, dcoeff=0.0, **kw)
        solver = to.AutoDiffAdjoint(method, ctrl, max_steps=self.max_steps)
        rows = y.shape[0]
        t_eval = times.expand(rows, -1)
        dt0 = None if first_step is None else torch.full((rows,), first_step, dtype=times.dtype,
                                                         device=times.device)
        sol = solver.solve(to.InitialValueProblem(y, t_eval[:, 0], t_eval[:, -1], t_eval), dt0=dt0)
        code = max(sol.status.tolist())  # 0: success, the other codes are positive
        if code:
            st = {2: Status.REACHED_DT_MIN, 3: Status.REACHED_MAX_STEPS}.get(code, Status.NON_FINITE)
            raise _fail("TorchODE", st, a, f"torchode status {to.status_codes.Status(code).name}", rhs.last)
        n_steps = int(sol.stats["n_steps"].max())
        n_acc = int(sol.stats["n_accepted"].max())
        counts["steps"] += n_steps
        counts["accepted"] += n_acc
        counts["rejected"] += n_steps - n_acc
        return sol.ys.transpose(0, 1)  # (times, rows, feat)
