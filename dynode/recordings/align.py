r"""A model's course aligned to a recorded one: a latency shift ``s`` (ms), a gain ``g`` and
optionally an offset ``o``, fitted jointly by least squares over every condition of every
compared experiment,

.. math:: (s, g, o) = \arg\min \sum_{c,t} \big(d_c(t) - g\, m_c(t - s) - o\big)^2 ,

where ``m(t - s)`` is the model course read at ``t - s`` on the recording's grid (linear
interpolation; outside the model's epoch its first/last value). For a given ``s``, ``(g, o)``
is the linear least-squares solution (:func:`gain_offset`); ``s`` is found by grid search over the
recording's samples within ``|s| <= max_shift``, refined by a parabola through the three best
errors (:func:`_fit_shift`)."""

from __future__ import annotations

import math

import numpy as np

from dynode.tolerances import TIME_RTOL

__all__ = ["gain_offset"]


def _shifted(ms, ts, s: float) -> list[np.ndarray]:
    """The model rows of every experiment read at ``t - s`` (linear interpolation; outside the
    model's epoch its first/last value)."""
    return [np.stack([np.interp(t - s, tm, row) for row in rows]) for (tm, rows), t in zip(ms, ts)]


def gain_offset(y: np.ndarray, x: np.ndarray, offset: bool) -> tuple[float, float]:
    r"""The least-squares gain and offset of ``x`` to ``y`` (1-d numpy arrays or torch tensors):

    .. math:: (g, o) = \arg\min \sum_i (y_i - g x_i - o)^2 :\quad
              g = \frac{\sum (x_i - \bar x)(y_i - \bar y)}{\sum (x_i - \bar x)^2},\ o = \bar y - g \bar x ;

    without ``offset``, ``o = 0`` and ``g = x \cdot y / x \cdot x``. ``(nan, nan)`` when ``x``
    has no variance (with ``offset``) or is zero (without): no gain is defined."""
    if offset:
        xm, ym = x.mean(), y.mean()
        vx = float(((x - xm) ** 2).sum())
        if vx <= 0:
            return math.nan, math.nan
        g = float(((x - xm) * (y - ym)).sum() / vx)
        return g, float(ym - g * xm)
    xx = float(x @ x)
    return (float(x @ y) / xx, 0.0) if xx > 0 else (math.nan, math.nan)


def _sse(ys, ms, ts, s, offset) -> tuple[float, float, float]:
    x = np.concatenate([m.ravel() for m in _shifted(ms, ts, s)])
    y = np.concatenate([v.ravel() for v in ys])
    g, o = gain_offset(y, x, offset)
    if not math.isfinite(g):
        return math.inf, g, o
    return float(((y - g * x - o) ** 2).sum()), g, o


def _fit_shift(ys, ms, ts, step, max_shift, offset) -> dict:
    """Grid search of the shift on the recording's samples, then a parabola through the best
    three errors (kept only if it lowers the error)."""
    n = int(math.floor(max_shift / step + TIME_RTOL))
    grid = np.arange(-n, n + 1) * step
    errs = [_sse(ys, ms, ts, float(s), offset) for s in grid]
    e = np.asarray([x[0] for x in errs])
    zero = _sse(ys, ms, ts, 0.0, offset)
    if not np.isfinite(e).any():
        return {"shift": math.nan, "gain": math.nan, "offset": math.nan, "at_zero": (math.nan, math.nan),
                "undefined": "the model's course is zero everywhere in the window: no gain can be fitted"}
    i = int(np.argmin(e))
    best = (float(grid[i]),) + errs[i]
    if 0 < i < len(grid) - 1 and all(np.isfinite(e[i - 1:i + 2])):
        a, b, c = e[i - 1], e[i], e[i + 1]
        den = a - 2 * b + c
        if den > 0:
            s = float(grid[i] + 0.5 * step * (a - c) / den)
            cand = _sse(ys, ms, ts, s, offset)
            if cand[0] < best[1]:
                best = (s,) + cand
    s, err, g, o = best
    return {"shift": s, "gain": g, "offset": o, "at_zero": (zero[1], zero[2])}


def _predict(ms, ts, s, g, o) -> list[np.ndarray]:
    if not math.isfinite(s):
        return [np.full((len(rows), len(t)), math.nan) for (_, rows), t in zip(ms, ts)]
    return [g * m + o for m in _shifted(ms, ts, s)]
