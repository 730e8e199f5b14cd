r"""Metrics of population time courses (Groen et al. 2022), on xarray data with a ``time``
dimension in ms (any other dimensions are kept: one value per condition / population).

Every function works on a uniform time grid ``t_k`` with step ``dt``; the time origin is
whatever the course uses (the stimulus onset after :func:`~dynode.analysis.time_courses`
with alignment). Responses are taken as they are: subtract a baseline first
(``time_courses(..., baseline=...)``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from dynode.errors import ConfigurationError

__all__ = ["summed_response", "summation_ratios", "summation_ratio", "isi_recovery", "time_to_peak",
           "asymptote_to_peak", "fwhm", "summation_window", "hyperbolic_ratio", "fit_hyperbolic_ratio",
           "HyperbolicRatioFit", "c50", "time_step"]


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
    """The time points with ``start <= t < stop`` (open ends when None)."""
    t = course["time"].values
    mask = np.ones(len(t), dtype=bool)
    if start is not None:
        mask &= t >= start - 1e-9
    if stop is not None:
        mask &= t < stop - 1e-9
    if not mask.any():
        raise ConfigurationError(f"the window [{start}, {stop}) ms holds no time point; the course spans "
                                 f"[{t.min():g}, {t.max():g}] ms")
    return course.isel(time=np.flatnonzero(mask))


def _over_time(course: xr.DataArray, fn: Callable[[np.ndarray, np.ndarray], float], name: str,
               attrs: dict) -> xr.DataArray | float:
    """Apply ``fn(t, y)`` to every time course; a float for a single course."""
    t = np.asarray(course["time"].values, dtype=np.float64)
    moved = course.transpose(..., "time")
    data = np.asarray(moved.values, dtype=np.float64)
    flat = data.reshape(-1, data.shape[-1])
    out = np.array([fn(t, row) for row in flat]).reshape(data.shape[:-1])
    if out.ndim == 0:
        return float(out)
    coords = {k: v for k, v in moved.coords.items() if "time" not in v.dims}
    return xr.DataArray(out, dims=moved.dims[:-1], coords=coords, name=name, attrs=attrs)


def summed_response(course: xr.DataArray, start: float | None = None, stop: float | None = None):
    r"""The summed response :math:`R = \sum_{start \le t_k < stop} r(t_k)\, dt` (ms; the
    rectangle rule for :math:`\int r\,dt`), by default over the whole epoch."""
    dt = time_step(course)
    part = _window(course, start, stop)
    out = part.sum("time") * dt
    if out.ndim == 0:
        return float(out)
    out.attrs = {"units": "ms", "long_name": "summed response"}
    out.name = "summed_response"
    return out


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
    out.attrs = {"units": "1", "long_name": "summation ratio R(2T) / (2 R(T))",
                 "T2": [T2 for _, T2 in pairs]}
    out.name = "summation_ratio"
    return out


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
                 window: float = 300.0, onset: float = 0.0, dim: str = "isi") -> xr.DataArray:
    r"""Recovery from adaptation for each inter-stimulus interval (``dim``, ms):

    .. math:: \rho(\mathrm{isi}) = \frac{\sum_{t \in W_2} \left[r_2(t) - r_1(t)\right]}
              {\sum_{t \in W_1} r_1(t)}

    with ``r_2`` the two-pulse response, ``r_1`` the response to a single pulse of
    ``duration`` ms at ``onset`` (its tail is what the first pulse alone still contributes),
    ``W_1 = [onset, onset + w)`` and ``W_2 = [t_2, t_2 + w)`` with the second onset
    ``t_2 = onset + duration + isi``, ``w = window`` cut where ``W_2`` would run past the end of
    the course (the same ``w`` in both windows). A linear time-invariant system gives 1;
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
    out = []
    for isi in two_pulse[dim].values:
        t2 = onset + duration + float(isi)
        w = min(window, t_end - t2)
        if w < dt:
            raise ConfigurationError(f"the second pulse at isi={isi} ms starts at {t2:g} ms, after the end "
                                     f"of the course ({t_end:g} ms)")
        second = two_pulse.sel({dim: isi}) - single
        num = summed_response(second, t2, t2 + w)
        den = summed_response(single, onset, onset + w)
        out.append(num / den)
    res = xr.concat([xr.DataArray(o) if np.ndim(o) == 0 else o for o in out], dim=dim)
    res = res.assign_coords({dim: two_pulse[dim].values})
    res.attrs = {"units": "1", "long_name": "recovery of the second pulse's response",
                 "window_ms": window, "duration_ms": duration}
    res.name = "isi_recovery"
    return res


def _peak_index(y: np.ndarray) -> int:
    if not np.isfinite(y).any():
        return -1
    return int(np.nanargmax(y))


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


def time_to_peak(course: xr.DataArray, start: float | None = 0.0, stop: float | None = None):
    r"""The time of the maximum over ``[start, stop)`` (ms from the time origin, the onset of an
    aligned course), refined to below the grid step by the vertex of the parabola through the
    largest sample and its two neighbours: with samples :math:`y_{-1}, y_0, y_1`,
    :math:`t^* = t_0 + \frac{dt}{2} \frac{y_{-1} - y_1}{y_{-1} - 2 y_0 + y_1}`."""
    time_step(course)
    part = _window(course, start, stop)

    def fn(t, y):
        i = _peak_index(y)
        return float("nan") if i < 0 else _parabolic(t, y, i)[0]

    return _over_time(part, fn, "time_to_peak", {"units": "ms", "long_name": "time to peak"})


def asymptote_to_peak(course: xr.DataArray, offset: float, *, window: float = 100.0,
                      start: float | None = 0.0):
    r"""Asymptote-to-peak ratio of the response to a long stimulus that ends at ``offset`` ms:
    the mean over the last ``window`` ms of the stimulus, ``[offset - window, offset)``, divided
    by the maximum over ``[start, offset)``. 1 without transient; lower with a transient
    overshoot followed by adaptation."""
    time_step(course)
    asym = _window(course, offset - window, offset).mean("time")
    peak = _window(course, start, offset).max("time")
    out = asym / peak
    if out.ndim == 0:
        return float(out)
    out.attrs = {"units": "1", "long_name": "asymptote-to-peak ratio"}
    out.name = "asymptote_to_peak"
    return out


def _fwhm(t: np.ndarray, y: np.ndarray) -> float:
    i = _peak_index(y)
    if i < 0 or not y[i] > 0:
        return float("nan")
    half = 0.5 * y[i]
    left = np.flatnonzero(y[: i + 1] < half)
    right = np.flatnonzero(y[i:] < half)
    if not len(left) or not len(right):
        return float("nan")  # the response does not fall below half its peak on both sides
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
    time_step(course)
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
    """Fitted :func:`hyperbolic_ratio`: ``rmax``, ``c50``, ``n`` and the fit's ``r2``."""

    rmax: float
    c50: float
    n: float
    r2: float

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
    A ``c50`` outside the tested contrasts is an extrapolation (a warning). Needs at least 3
    contrasts > 0.
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
        if not math.isfinite(float(loss_fn())) or float(loss_fn()) > sse[i, j] / len(y) / norm:
            z.copy_(start)  # the refinement made it worse: keep the grid point
    z = z.detach()
    rmax_, c50_, n = float(z[0]), float(torch.exp(z[1])), float(0.1 + sp(z[2]))
    pred = hyperbolic_ratio(c, rmax_, c50_, n)
    tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - pred) ** 2).sum()) / tot if tot > 0 else float("nan")
    if not cpos.min() <= c50_ <= c.max():
        warnings.warn(f"fitted c50 = {c50_:.3g} lies outside the tested contrasts [{cpos.min():g}, "
                      f"{c.max():g}] (an extrapolation)", RuntimeWarning, stacklevel=2)
    return HyperbolicRatioFit(rmax=rmax_, c50=c50_, n=n, r2=r2)


def c50(responses: xr.DataArray, dim: str = "contrast") -> float:
    """``c50`` of :func:`fit_hyperbolic_ratio` to ``responses`` along ``dim`` (one number per
    call: give a 1-D DataArray, e.g. :func:`summed_response` of a contrast series)."""
    if responses.dims != (dim,):
        raise ConfigurationError(f"c50 needs a 1-D response along {dim!r}, got dims {responses.dims}; "
                                 "sum over time first (summed_response) and select one population")
    return fit_hyperbolic_ratio(responses[dim].values, responses.values).c50
