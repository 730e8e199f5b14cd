r"""Metrics of population time courses, as Groen et al. (2022) define them, on xarray data with
a ``time`` dimension in ms (any other dimensions are kept: one value per condition /
population).

Every function works on a uniform time grid ``t_k`` with step ``dt``; the time origin is
whatever the course uses (the stimulus onset after :func:`~dynode.analysis.time_courses`
with alignment). Responses are taken as they are: subtract a baseline first
(``time_courses(..., baseline=...)``).

The definitions follow Groen's analysis code (irisgroen/temporalECoG): summed responses over
0-1 s after onset (:data:`SUM_WINDOW`), the time to peak inside the stimulus window plus a
half-rise latency, c50 as the contrast at which the peak reaches half the full-contrast peak
(:func:`c50`; the Naka-Rushton fit is an extra), ISI recovery from summed responses in a
300 ms window, the asymptote/peak ratio from a smoothed course (:data:`SMOOTH_MS`).

A metric that is not defined for a response (a peak time on a plateau, a c50 below the
tested contrasts, ...) is NaN, with an :class:`~dynode.errors.UndefinedMetricWarning` saying
why; the reasons are also in the result's ``attrs["undefined"]`` (``{condition: reason}``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from dynode.errors import AnalysisWarning, ConfigurationError, UndefinedMetricWarning, user_stacklevel
from dynode.tolerances import TIME_RTOL

__all__ = ["summed_response", "summation_ratios", "summation_ratio", "isi_recovery", "time_to_peak",
           "half_rise_latency", "peak_response", "asymptote_to_peak", "smooth", "fwhm", "summation_window",
           "hyperbolic_ratio", "fit_hyperbolic_ratio", "HyperbolicRatioFit", "c50", "time_step",
           "SUM_WINDOW", "ISI_WINDOW", "SMOOTH_MS", "PLATEAU"]

SUM_WINDOW = (0.0, 1000.0)
"""Groen's window for summed responses: 0 to 1 s after the stimulus onset (ms)."""
ISI_WINDOW = 300.0
"""Groen's ISI recovery window (ms) after each pulse onset."""
SMOOTH_MS = 291.0
"""Width (ms) of the moving average before the asymptote/peak ratio: Groen's
``smooth(x, 150)`` at their 512 Hz sample rate (MATLAB shortens an even span by one sample:
149 samples = 291 ms)."""
PLATEAU = 0.05
"""A response whose value stays within this fraction of its maximum from the maximum to the
end of the window has no defined time to peak (a plateau: the argmax is float noise)."""


def time_step(course: xr.DataArray) -> float:
    """The grid step ``dt`` (ms) of ``course``; an error if the grid is not uniform."""
    if "time" not in course.dims:
        raise ConfigurationError(f"expected a time course with a 'time' dimension, got dims {course.dims}")
    t = np.asarray(course["time"].values, dtype=np.float64)
    if len(t) < 2:
        raise ConfigurationError("a time course needs at least 2 time points")
    d = np.diff(t)
    dt = float(d.mean())
    if not dt > 0 or np.abs(d - dt).max() > 1e-6 * dt:
        raise ConfigurationError("time must be uniformly spaced and increasing (ms); resample the course")
    return dt


def _window(course: xr.DataArray, start: float | None, stop: float | None) -> xr.DataArray:
    """The time points with ``start <= t < stop`` (open ends when None), of a course on a
    uniform grid (:func:`time_step` checks it first)."""
    time_step(course)
    t = course["time"].values
    mask = np.ones(len(t), dtype=bool)
    if start is not None:
        mask &= t >= start - TIME_RTOL
    if stop is not None:
        mask &= t < stop - TIME_RTOL
    if not mask.any():
        raise ConfigurationError(f"the window [{start}, {stop}) ms holds no time point; the course spans "
                                 f"[{t.min():g}, {t.max():g}] ms")
    return course.isel(time=np.flatnonzero(mask))


def _named(out: xr.DataArray, name: str, attrs: dict) -> xr.DataArray | float:
    """``out`` named ``name`` with ``attrs`` (replacing its own); a float when it is 0-dim."""
    if out.ndim == 0:
        return float(out)
    out.attrs, out.name = attrs, name
    return out


Value = float | tuple[float, str]


def _label(coords: dict, index: tuple) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, (int, float, np.number)) else f"{k}={v}"
                     for k, v in zip(coords, (coords[k][i] for k, i in zip(coords, index))))


def _no_peak(y: np.ndarray) -> str | None:
    if not np.isfinite(y).all():
        return "the course holds NaN or inf"
    if not y.max() > 0:
        return "no response above the baseline (the maximum is <= 0)"
    return None


def _over_time(course: xr.DataArray, fn: Callable[[np.ndarray, np.ndarray], Value], name: str,
               attrs: dict, *, peak: bool = True) -> xr.DataArray | float:
    """Apply ``fn(t, y)`` to every time course; a float for a single course.

    ``fn`` returns a value or ``(nan, reason)``: each reason is collected into
    ``attrs["undefined"]`` (``{condition: reason}``) and warned as an
    :class:`~dynode.errors.UndefinedMetricWarning`. With ``peak`` (the default), a course
    without a peak above 0 (or with NaN/inf, see :func:`_no_peak`) is ``(nan, reason)``
    without calling ``fn``."""
    t = np.asarray(course["time"].values, dtype=np.float64)
    moved = course.transpose(..., "time")
    data = np.asarray(moved.values, dtype=np.float64)
    lead = data.shape[:-1]
    dims = moved.dims[:-1]
    index_coords = {d: (moved[d].values if d in moved.coords else np.arange(n)) for d, n in zip(dims, lead)}
    out = np.empty(lead)
    undefined = {}
    for idx in np.ndindex(*lead):
        why = _no_peak(data[idx]) if peak else None
        v = (math.nan, why) if why else fn(t, data[idx])
        if isinstance(v, tuple):
            v, why = v
            undefined[_label(index_coords, idx) or (course.name or "course")] = why
        out[idx] = v
    for where, why in undefined.items():
        warnings.warn(f"{name} of {course.name or 'the course'} ({where}) is undefined: {why}",
                      UndefinedMetricWarning, stacklevel=user_stacklevel())
    if out.ndim == 0:
        return float(out)
    coords = {k: v for k, v in moved.coords.items() if "time" not in v.dims}
    return xr.DataArray(out, dims=dims, coords=coords, name=name, attrs={**attrs, "undefined": undefined})


def summed_response(course: xr.DataArray, start: float | None = None, stop: float | None = None):
    r"""The summed response :math:`R = \sum_{start \le t_k < stop} r(t_k)\, dt` (ms; the
    rectangle rule for :math:`\int r\,dt`), by default over the whole epoch."""
    dt = time_step(course)
    part = _window(course, start, stop)
    out = part.sum("time") * dt
    u = str(course.attrs.get("units", "1"))
    return _named(out, "summed_response", {"units": "ms" if u in ("", "1") else f"ms {u}",
                                           "long_name": "summed response"})


def _pairs(durations: np.ndarray, rtol: float) -> list[tuple[float, float]]:
    """(T, T2) with T2 the duration nearest to 2T, when within ``rtol`` of it."""
    out = []
    for T in durations:
        cand = durations[durations > T]
        if len(cand):
            T2 = cand[np.argmin(np.abs(cand - 2 * T))]
            if abs(T2 / (2 * T) - 1) <= rtol:
                out.append((float(T), float(T2)))
    return out


def summation_ratios(course: xr.DataArray, dim: str = "duration", *, rtol: float = 0.05,
                     start: float | None = None, stop: float | None = None) -> xr.DataArray:
    r"""Temporal summation ratios :math:`R(T_2) / ((T_2 / T) R(T))` for every duration ``T``
    whose double :math:`T_2 \approx 2T` (within ``rtol``) was also run; the result is indexed
    by ``T`` along ``dim``.

    ``R`` is :func:`summed_response` over ``[start, stop)`` (default the epoch). For
    :math:`T_2 = 2T` this is :math:`R(2T) / (2 R(T))`: 1 for a linear system, below 1 for
    sub-additive summation. Scaling by the actual duration ratio keeps a linear system at 1
    when the durations are rounded (Groen's 17, 33, 67 ... ms are 1, 2, 4 ... video frames).
    """
    if dim not in course.dims:
        raise ConfigurationError(f"the course has no {dim!r} dimension (dims {course.dims})")
    R = summed_response(course, start, stop)
    durations = np.asarray(course[dim].values, dtype=np.float64)
    pairs = _pairs(np.unique(durations), rtol)
    if not pairs:
        raise ConfigurationError(f"no pair of durations T, 2T (within rtol={rtol}) among "
                                 f"{durations.tolist()}")
    parts = [R.sel({dim: T2}) / ((T2 / T) * R.sel({dim: T})) for T, T2 in pairs]
    out = xr.concat([p.drop_vars(dim, errors="ignore") for p in parts], dim=dim)
    out = out.assign_coords({dim: [T for T, _ in pairs]})
    return _named(out, "summation_ratio", {"units": "1", "long_name": "summation ratio R(2T) / (2 R(T))",
                                           "T2": [T2 for _, T2 in pairs]})


def summation_ratio(course: xr.DataArray, T: float, dim: str = "duration", *, rtol: float = 0.05,
                    start: float | None = None, stop: float | None = None):
    """:func:`summation_ratios` for one duration ``T`` (a float for a single population)."""
    ratios = summation_ratios(course, dim, rtol=rtol, start=start, stop=stop)
    if not np.isclose(ratios[dim].values, T).any():
        raise ConfigurationError(f"no doubled duration for T={T} ms; pairs exist for T in "
                                 f"{ratios[dim].values.tolist()}")
    out = ratios.sel({dim: T}, method="nearest")
    return float(out) if out.ndim == 0 else out.drop_vars(dim)


def isi_recovery(two_pulse: xr.DataArray, single: xr.DataArray, *, duration: float = 133.0,
                 window: float = ISI_WINDOW, onset: float = 0.0, dim: str = "isi") -> xr.DataArray:
    r"""Recovery from adaptation for each inter-stimulus interval (``dim``, ms), as Groen's
    ``tde_computeISIrecovery`` (``metric="sum"``) computes it:

    .. math:: \rho(\mathrm{isi}) = \frac{\sum_{t \in W_2} \left[r_2(t) - r_1(t)\right]}
              {\sum_{t \in W_1} r_1(t)}

    with ``r_2`` the two-pulse response, ``r_1`` the response to a single pulse of
    ``duration`` ms at ``onset`` (subtracting it removes what the first pulse alone still
    contributes in the second window), ``W_1 = [onset, onset + w)``, ``W_2 = [t_2, t_2 + w)``,
    the second onset ``t_2 = onset + duration + isi`` and ``w = window``. When ``W_2`` runs
    past the end of the course only ``W_2`` is shortened (Groen's convention: the denominator
    keeps the full window, so a cut window gives less than 1 even for a linear system); the
    cut is warned (:class:`~dynode.errors.AnalysisWarning`) and recorded in
    ``attrs["second_window_ms"]``. Groen estimate ``r_1`` from the first pulse of the
    longest-ISI trials (the recordings have no clean single-pulse tail); in silico the single
    pulse itself is run. A linear time-invariant system gives 1 for uncut windows;
    adaptation gives less. ``two_pulse`` ``(isi, ..., time)`` and ``single`` ``(..., time)``
    must share their time grid.
    """
    if dim not in two_pulse.dims:
        raise ConfigurationError(f"the two-pulse course has no {dim!r} dimension (dims {two_pulse.dims})")
    dt = time_step(two_pulse)
    t = two_pulse["time"].values
    if time_step(single) != dt or not np.isin(np.round(t / dt), np.round(single["time"].values / dt)).all():
        raise ConfigurationError("the single-pulse and two-pulse courses must share their time grid "
                                 "(same dt and epoch); run both experiments with the same dt and t_end")
    single = single.sel(time=t, method="nearest").assign_coords(time=t)
    t_end = float(t[-1]) + dt
    if onset + window > t_end + TIME_RTOL:
        raise ConfigurationError(f"the first recovery window [{onset:g}, {onset + window:g}) ms runs past the "
                                 f"end of the course ({t_end:g} ms); record a longer epoch or pass a shorter "
                                 "window")
    den = summed_response(single, onset, onset + window)
    out, second = [], {}
    for isi in two_pulse[dim].values:
        t2 = onset + duration + float(isi)
        w = min(window, t_end - t2)
        if w < dt:
            raise ConfigurationError(f"the second pulse at {dim}={isi:g} ms starts at {t2:g} ms, at or after "
                                     f"the end of the course ({t_end:g} ms); record a longer epoch")
        if w < window - TIME_RTOL:
            warnings.warn(f"{dim}={isi:g} ms: the second recovery window is cut to {w:g} of {window:g} ms by "
                          f"the end of the epoch ({t_end:g} ms), so the recovery is underestimated (Groen's "
                          f"convention); record an epoch to at least {t2 + window:g} ms after the onset",
                          AnalysisWarning, stacklevel=user_stacklevel())
        second[float(isi)] = float(w)
        num = summed_response(two_pulse.sel({dim: isi}) - single, t2, t2 + w)
        out.append(num / den)
    res = xr.concat([xr.DataArray(o) if np.ndim(o) == 0 else o for o in out], dim=dim)
    res = res.assign_coords({dim: two_pulse[dim].values})
    return _named(res, "isi_recovery", {"units": "1", "long_name": "recovery of the second pulse's response",
                                        "window_ms": window, "duration_ms": duration, "second_window_ms": second})


def _parabolic(t: np.ndarray, y: np.ndarray, i: int) -> tuple[float, float]:
    """Vertex of the parabola through the samples around ``i``: (time, value)."""
    if 0 < i < len(y) - 1:
        y0, y1, y2 = y[i - 1], y[i], y[i + 1]
        den = y0 - 2 * y1 + y2
        if den < 0:
            delta = 0.5 * (y0 - y2) / den
            dt = t[1] - t[0]
            return t[i] + delta * dt, y1 - 0.25 * (y0 - y2) * delta
    return t[i], y[i]


def _peak_time(t: np.ndarray, y: np.ndarray, plateau: float) -> Value:
    i = int(np.argmax(y))
    if i == len(y) - 1:
        return math.nan, "the response still rises at the end of the window (no peak inside it)"
    if i == 0:
        return math.nan, "the maximum is at the start of the window (no rise to a peak inside it)"
    if y[i:].min() >= (1.0 - plateau) * y[i]:
        return math.nan, (f"plateau: the response stays within {plateau:.0%} of its maximum from the maximum "
                          "to the end of the window, so the time of the maximum is not defined (read the "
                          "half-rise latency)")
    return _parabolic(t, y, i)[0]


def time_to_peak(course: xr.DataArray, start: float | None = 0.0, stop: float | None = None, *,
                 plateau: float = PLATEAU):
    r"""The time (ms from the time origin, the onset of an aligned course) of the maximum of the
    response to the stimulus: over ``[start, stop)``, which should be the stimulus window
    (onset to offset, e.g. ``stop=500`` for Groen's 500 ms contrast stimuli) so that an offset
    response is not taken for the peak. Refined to below the grid step by the vertex of the
    parabola through the largest sample and its two neighbours: with samples
    :math:`y_{-1}, y_0, y_1`,
    :math:`t^* = t_0 + \frac{dt}{2} \frac{y_{-1} - y_1}{y_{-1} - 2 y_0 + y_1}`.

    Undefined (NaN and an :class:`~dynode.errors.UndefinedMetricWarning`) when the maximum is
    not above 0 (the baseline), lies on the window's first or last sample, or sits on a
    plateau: :math:`\min_{t \ge t^*} r(t) \ge (1 - \text{plateau})\, r(t^*)`."""
    part = _window(course, start, stop)
    return _over_time(part, lambda t, y: _peak_time(t, y, plateau), "time_to_peak",
                      {"units": "ms", "long_name": "time to peak"})


def _half_rise(t: np.ndarray, y: np.ndarray, fraction: float) -> Value:
    level = fraction * y.max()
    if y[0] >= level:
        return math.nan, f"the response is already at {fraction:.0%} of its peak at the start of the window"
    k = int(np.argmax(y >= level))  # first sample at or above the level; y[k - 1] < level
    return float(t[k - 1] + (level - y[k - 1]) / (y[k] - y[k - 1]) * (t[k] - t[k - 1]))


def half_rise_latency(course: xr.DataArray, start: float | None = 0.0, stop: float | None = None, *,
                      fraction: float = 0.5):
    r"""The first time (ms) at which the response reaches ``fraction`` (default half) of its
    maximum over ``[start, stop)``: the first upward crossing of
    :math:`f \max_t r(t)`, placed by linear interpolation between the samples around it. The
    robust companion of :func:`time_to_peak` (defined on a plateau too). Undefined (NaN and
    an :class:`~dynode.errors.UndefinedMetricWarning`) when the maximum is not above 0 or the
    response starts the window at or above the level."""
    if not 0 < fraction < 1:
        raise ConfigurationError(f"fraction must be in (0, 1), got {fraction}")
    part = _window(course, start, stop)
    return _over_time(part, lambda t, y: _half_rise(t, y, fraction), "half_rise_latency",
                      {"units": "ms", "long_name": f"time to {fraction:.0%} of the peak"})


def peak_response(course: xr.DataArray, start: float | None = 0.0, stop: float | None = None):
    """The maximum of the response over ``[start, stop)`` (the response's units)."""
    out = _window(course, start, stop).max("time")
    return _named(out, "peak_response", {"units": course.attrs.get("units", "1"), "long_name": "peak response"})


def smooth(course: xr.DataArray, width: float = SMOOTH_MS) -> xr.DataArray:
    r"""Centred moving average over ``width`` ms along time, as MATLAB's ``smooth(y, span)``:
    ``span = round(width / dt)`` samples, made odd by dropping one sample when even
    (:math:`\bar y_k = \frac{1}{2h+1} \sum_{j=-h}^{h} y_{k+j}` with :math:`h = (span-1)/2`),
    the window shrunk symmetrically near the ends (:math:`h_k = \min(h, k, K-1-k)`)."""
    dt = time_step(course)
    span = int(round(width / dt))
    span -= 1 - span % 2
    if span < 1:
        raise ConfigurationError(f"the smoothing width {width:g} ms is below the time step {dt:g} ms")
    moved = course.transpose(..., "time")
    y = np.asarray(moved.values, dtype=np.float64)
    K = y.shape[-1]
    c = np.concatenate([np.zeros(y.shape[:-1] + (1,)), np.cumsum(y, axis=-1)], axis=-1)
    k = np.arange(K)
    h = np.minimum((span - 1) // 2, np.minimum(k, K - 1 - k))
    out = (c[..., k + h + 1] - c[..., k - h]) / (2 * h + 1)
    return moved.copy(data=out).transpose(*course.dims)


def asymptote_to_peak(course: xr.DataArray, at: float = 500.0, *, width: float = SMOOTH_MS,
                      start: float = 50.0, stop: float = SUM_WINDOW[1]):
    r"""Asymptote-to-peak (sustained/transient) ratio of the response to a long stimulus, as in
    Groen's figure code: cut the course to ``start < t < stop`` (50-1000 ms after onset),
    smooth it (:func:`smooth`, ``width`` ms, default :data:`SMOOTH_MS`), and divide its value
    at ``t = at`` (0.5 s after onset: the offset of the 500 ms contrast stimuli) by its
    maximum: :math:`\bar r(at) / \max_t \bar r(t)`. 1 without transient; lower with a
    transient overshoot followed by adaptation. Undefined (NaN) when the maximum is not above
    0."""
    dt = time_step(course)
    t = course["time"].values
    part = course.isel(time=np.flatnonzero((t > start + TIME_RTOL) & (t < stop - TIME_RTOL)))
    tp = part["time"].values
    if not len(tp) or not tp[0] <= at <= tp[-1]:
        raise ConfigurationError(f"the asymptote time {at:g} ms is not inside the window ({start:g}, {stop:g}) "
                                 f"ms of the course (which spans [{t.min():g}, {t.max():g}] ms)")
    if not np.isclose((at - tp[0]) / dt, round((at - tp[0]) / dt), atol=1e-6):
        raise ConfigurationError(f"the asymptote time {at:g} ms is not on the time grid (dt {dt:g} ms)")
    sm = smooth(part, width)
    fn = lambda tt, y: float(y[int(round((at - tt[0]) / dt))] / y.max())  # noqa: E731
    return _over_time(sm, fn, "asymptote_to_peak", {"units": "1", "long_name": "asymptote-to-peak ratio",
                                                    "smoothing_ms": width, "at_ms": at})


def _fwhm(t: np.ndarray, y: np.ndarray) -> Value:
    i = int(np.argmax(y))
    half = 0.5 * y[i]
    left = np.flatnonzero(y[: i + 1] < half)
    right = np.flatnonzero(y[i:] < half)
    if not len(left) or not len(right):
        return math.nan, "the response does not fall below half its peak on both sides of it"
    a = left[-1]  # y[a] < half <= y[a + 1]
    t_left = t[a] + (half - y[a]) / (y[a + 1] - y[a]) * (t[a + 1] - t[a])
    b = i + right[0]  # y[b - 1] >= half > y[b]
    t_right = t[b - 1] + (y[b - 1] - half) / (y[b - 1] - y[b]) * (t[b] - t[b - 1])
    return float(t_right - t_left)


def fwhm(course: xr.DataArray, start: float | None = None, stop: float | None = None):
    """Full width at half maximum (ms): the time between the last upward and the first downward
    crossing of half the peak value around the peak, each crossing placed by linear
    interpolation between samples. The response is measured from 0 (subtract a baseline
    first); NaN when it does not fall below half its peak on both sides."""
    part = _window(course, start, stop)
    return _over_time(part, _fwhm, "fwhm", {"units": "ms", "long_name": "full width at half maximum"})


def summation_window(course: xr.DataArray, dim: str = "duration"):
    """The summation window (ms): :func:`fwhm` of the response to the shortest pulse along ``dim``."""
    if dim not in course.dims:
        raise ConfigurationError(f"the course has no {dim!r} dimension (dims {course.dims})")
    shortest = course[dim].values.min()
    return fwhm(course.sel({dim: shortest}))


# -- contrast response ----------------------------------------------------------------------
def hyperbolic_ratio(c, rmax: float, c50: float, n: float):
    r"""Naka-Rushton / hyperbolic ratio function :math:`R(c) = R_{max} \frac{c^n}{c^n + c_{50}^n}`."""
    c = np.asarray(c, dtype=np.float64)
    return rmax * c**n / (c**n + c50**n)


@dataclass(frozen=True)
class HyperbolicRatioFit:
    """Fitted :func:`hyperbolic_ratio`: ``rmax``, ``c50``, ``n``, the fit's ``r2``, and
    ``extrapolates``: the fitted ``c50`` lies outside the tested contrasts (not a result)."""

    rmax: float
    c50: float
    n: float
    r2: float
    extrapolates: bool = False

    def __call__(self, c):
        return hyperbolic_ratio(c, self.rmax, self.c50, self.n)


def fit_hyperbolic_ratio(contrasts, responses, *, steps: int = 100) -> HyperbolicRatioFit:
    r"""Least-squares fit of :func:`hyperbolic_ratio` to ``responses`` at ``contrasts`` (a fit,
    not an interpolation).

    First a grid search: for every ``c50`` on a log grid from 1/100 of the lowest to 100 times
    the highest contrast and every ``n`` in [0.25, 8], the best ``rmax`` is linear least
    squares, :math:`R_{max} = \sum_i y_i g_i / \sum_i g_i^2` with
    :math:`g_i = c_i^n / (c_i^n + c_{50}^n)`. Then L-BFGS (strong-Wolfe) refines the best grid
    point over ``rmax``, :math:`c_{50} = e^{a}` and :math:`n = 0.1 + \mathrm{softplus}(b)`.
    A ``c50`` outside the tested contrasts is an extrapolation (``extrapolates`` and an
    :class:`~dynode.errors.AnalysisWarning`). Needs at least 3 contrasts > 0. This is an
    extra: Groen's c50 is :func:`c50` (the half-peak contrast, interpolated).
    """
    c = np.asarray(contrasts, dtype=np.float64).ravel()
    y = np.asarray(responses, dtype=np.float64).ravel()
    if c.shape != y.shape:
        raise ConfigurationError(f"{len(c)} contrasts but {len(y)} responses")
    if (c > 0).sum() < 3 or np.any(c < 0) or not np.all(np.isfinite(y)):
        raise ConfigurationError("fitting a contrast response needs >= 3 contrasts > 0, none negative, and "
                                 "finite responses")
    cpos = c[c > 0]
    c50s = np.geomspace(cpos.min() / 100, c.max() * 100, 121)
    ns = np.geomspace(0.25, 8.0, 41)
    cn = c[None, None, :] ** ns[None, :, None]
    g = cn / (cn + c50s[:, None, None] ** ns[None, :, None])  # (c50, n, contrast)
    gg = (g * g).sum(-1)
    rmax = np.where(gg > 0, (g * y).sum(-1) / np.where(gg > 0, gg, 1.0), 0.0)
    sse = ((rmax[..., None] * g - y) ** 2).sum(-1)
    i, j = np.unravel_index(np.argmin(sse), sse.shape)
    z = torch.tensor([rmax[i, j], math.log(c50s[i]), math.log(math.expm1(max(ns[j] - 0.1, 1e-6)))],
                     dtype=torch.float64, requires_grad=True)
    ct, yt = torch.tensor(c), torch.tensor(y)
    norm = float(np.mean(y**2)) or 1.0
    sp = torch.nn.functional.softplus

    def loss_fn():
        n = 0.1 + sp(z[2])
        cnt = ct.clamp_min(1e-300) ** n
        return ((z[0] * cnt / (cnt + torch.exp(z[1] * n)) - yt) ** 2).mean() / norm

    opt = torch.optim.LBFGS([z], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-14, tolerance_change=1e-16)

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    start = z.detach().clone()
    opt.step(closure)
    with torch.no_grad():
        final = float(loss_fn())
    # the refinement made it worse: keep the grid point
    z = start if not math.isfinite(final) or final > sse[i, j] / len(y) / norm else z.detach()
    rmax_, c50_, n = float(z[0]), float(torch.exp(z[1])), float(0.1 + sp(z[2]))
    pred = hyperbolic_ratio(c, rmax_, c50_, n)
    tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - pred) ** 2).sum()) / tot if tot > 0 else float("nan")
    extrapolates = not cpos.min() <= c50_ <= c.max()
    if extrapolates:
        warnings.warn(f"fitted c50 = {c50_:.3g} lies outside the tested contrasts [{cpos.min():g}, "
                      f"{c.max():g}] (an extrapolation)", AnalysisWarning, stacklevel=user_stacklevel())
    return HyperbolicRatioFit(rmax=rmax_, c50=c50_, n=n, r2=r2, extrapolates=extrapolates)


def _half_peak_contrast(c: np.ndarray, p: np.ndarray) -> Value:
    if not np.all(np.isfinite(p)):
        return math.nan, "a peak response is NaN or inf"
    target = 0.5 * p[-1]
    if not p[-1] > 0:
        return math.nan, f"no response above the baseline at the highest contrast {c[-1]:g}"
    k = int(np.argmax(p >= target))
    if k == 0:
        return math.nan, (f"the peak at the lowest tested contrast {c[0]:g} already reaches half the peak at "
                          f"contrast {c[-1]:g}: c50 lies below the tested range (test lower contrasts)")
    lo, hi = (np.log(c[k - 1]), np.log(c[k])) if c[k - 1] > 0 else (c[k - 1], c[k])
    x = lo + (target - p[k - 1]) / (p[k] - p[k - 1]) * (hi - lo)
    return float(np.exp(x) if c[k - 1] > 0 else x)


def c50(peaks: xr.DataArray, dim: str = "contrast"):
    r"""Groen's c50: the contrast at which the peak response reaches half the peak at the
    highest tested contrast (full contrast, 1, in Groen's experiment), interpolated between the
    tested contrasts: with contrasts :math:`c_0 < \dots < c_K`, peaks :math:`p_k` and
    :math:`p^* = p_K / 2`, the first :math:`k` with :math:`p_k \ge p^*` and
    :math:`\log c_{50} = \log c_{k-1} + \frac{p^* - p_{k-1}}{p_k - p_{k-1}} (\log c_k - \log c_{k-1})`
    (linear in log contrast, as the contrasts are log-spaced; linear in contrast from a
    contrast 0). Not a fit, so it never extrapolates: NaN and an
    :class:`~dynode.errors.UndefinedMetricWarning` when the lowest contrast already reaches
    half (c50 below the tested range) or the highest contrast gives no response.

    ``peaks``: the peak responses along ``dim`` (e.g. :func:`peak_response` over the stimulus
    window of a baseline-corrected contrast series); other dims give one c50 each.
    """
    if dim not in peaks.dims:
        raise ConfigurationError(f"c50 needs peak responses along {dim!r}, got dims {peaks.dims}; take the peak "
                                 "over time first (peak_response)")
    peaks = peaks.sortby(dim)
    c = np.asarray(peaks[dim].values, dtype=np.float64)
    if len(c) < 2 or np.any(c < 0):
        raise ConfigurationError(f"c50 needs at least 2 contrasts >= 0 along {dim!r}, got {c.tolist()}")
    course = peaks.rename({dim: "time"})  # reuse the per-row machinery along the contrast axis
    return _over_time(course, lambda _t, p: _half_peak_contrast(c, p), "c50",
                      {"units": "1", "long_name": "contrast at half the full-contrast peak"}, peak=False)
