r"""The delayed normalisation (DN) model and its fit to population time courses.

The model (Zhou et al. 2018; Groen et al. 2022) maps a stimulus time course ``s(t)`` (the
contrast envelope) to a response, every time in **ms**:

.. math::

    h_1(t) &= \Gamma_2(t - \delta;\ \tau_1) - w\, \Gamma_2(t - \delta;\ 1.5\,\tau_1),
    \qquad \Gamma_2(t; \tau) = \frac{t}{\tau^2} e^{-t/\tau}\ (t \ge 0),\ 0\ (t < 0)\\
    L(t) &= (s * h_1)(t) \qquad\text{(linear response; the shift } \delta
    \text{ delays the input)}\\
    P(t) &= (L * h_2)(t), \qquad h_2(t) = \frac{1}{\tau_2} e^{-t/\tau_2}\ (t \ge 0)
    \qquad\text{(normalisation pool)}\\
    r(t) &= \text{scale}\ \frac{|L(t)|^n}{\sigma^n + |P(t)|^n}

Both gamma kernels and the exponential have unit area. The convolutions are discrete on the
uniform time grid ``t_k = t_0 + k\,dt``, exact for an input held constant over each step
(zero-order hold, ``x(t) = x_k`` on ``[t_k, t_{k+1})``, 0 before ``t_0``):

.. math:: (x * h)(t_k) = \sum_{j \ge 0} w_j\, x_{k-1-j}, \qquad
          w_j = \int_{j\,dt}^{(j+1)\,dt} h(u)\, du = H((j+1)\,dt) - H(j\,dt)

with the kernel's integral ``H``: :math:`H_{\Gamma}(u) = 1 - e^{-u'/\tau}(1 + u'/\tau)`,
:math:`u' = \max(u - \delta, 0)` for the shifted gammas, :math:`H_2(u) = 1 - e^{-u/\tau_2}`.
So the weights sum to 1 over an unbounded grid whatever ``dt`` (a constant input gives the
same steady state at every resolution), the shift need not be a multiple of ``dt`` and the response is
differentiable in every parameter. The sums are computed with an FFT.

Parameters and the REFERENCE start values and bounds, converted from s to ms
(:data:`DN_START`, :data:`DN_BOUNDS`): ``tau1`` 5 ms (1 - 1000), ``weight`` 0 (0 - 1: our bound,
the reference gives none),
``tau2`` 70 ms (10 - 2000), ``n`` 1.5 (1 - 5), ``sigma`` 0.15 (0 - 1), ``shift`` 60 ms
(0 - 100), ``scale`` 2 (positive). The fit (:func:`fit_dn`) optimises unconstrained variables
``z``: a bounded parameter is ``lo + (hi - lo) sigmoid(z)``, ``scale`` is ``softplus(z)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from dynode.errors import AnalysisWarning, ConfigurationError, user_stacklevel

__all__ = ["DN_PARAMS", "DN_START", "DN_BOUNDS", "dn_model", "fit_dn", "DNFit", "pulse_envelope",
           "BOUND_TOL"]

DN_PARAMS = ("tau1", "weight", "tau2", "n", "sigma", "shift", "scale")
DN_START = {"tau1": 5.0, "weight": 0.0, "tau2": 70.0, "n": 1.5, "sigma": 0.15, "shift": 60.0,
            "scale": 2.0}
"""Start values (ms for the times) from Groen et al. (2022)."""
DN_BOUNDS = {"tau1": (1.0, 1000.0), "weight": (0.0, 1.0), "tau2": (10.0, 2000.0), "n": (1.0, 5.0),
             "sigma": (0.0, 1.0), "shift": (0.0, 100.0), "scale": (0.0, math.inf)}
"""Bounds (ms for the times); ``scale`` is only required to be positive."""
BOUND_TOL = 1e-3
"""A fitted parameter within this fraction of its range from a bound is *on* the bound."""


def pulse_envelope(t, *, contrast: float = 1.0, duration: float, isi: float | None = None) -> np.ndarray:
    r"""The stimulus time course of a Groen condition on the grid ``t`` (ms from the onset):
    ``contrast`` times a pulse on ``[0, duration)``, plus a second pulse on
    ``[duration + isi, 2 duration + isi)`` when ``isi`` is given (the repetition experiment)."""
    t = np.asarray(t, dtype=np.float64)
    s = (t >= 0) & (t < duration)
    if isi is not None:
        s |= (t >= duration + isi) & (t < 2 * duration + isi)
    return float(contrast) * s.astype(np.float64)


def _grid_step(t: Tensor) -> float:
    if t.dim() != 1 or t.numel() < 2:
        raise ConfigurationError(f"t must be a 1-D time grid (ms) with at least 2 points, got shape "
                                 f"{tuple(t.shape)}")
    d = torch.diff(t.double())
    dt = float(d.mean())
    if not dt > 0 or float((d - dt).abs().max()) > 1e-6 * max(dt, 1.0):
        raise ConfigurationError("t must be uniformly spaced and increasing (the DN model convolves on "
                                 "the time grid); resample the time course first")
    return dt


def _gamma2_integral(u: Tensor, tau: Tensor) -> Tensor:
    """``int_0^u t / tau^2 exp(-t / tau) dt = 1 - exp(-u / tau) (1 + u / tau)`` (0 for u <= 0)."""
    x = u.clamp_min(0.0) / tau
    return 1.0 - torch.exp(-x) * (1.0 + x)


def _bin_weights(integral, edges: Tensor) -> Tensor:
    """``w_j = H(edges[j + 1]) - H(edges[j])``: the kernel's mass in each step."""
    h = integral(edges)
    return h[..., 1:] - h[..., :-1]


def _causal_conv(x: Tensor, w: Tensor) -> Tensor:
    """``y_k = sum_j w_j x_{k-1-j}`` along the last axis (FFT, zero padding)."""
    n = x.shape[-1]
    m = 1 << (2 * n - 1).bit_length()
    y = torch.fft.irfft(torch.fft.rfft(x, m) * torch.fft.rfft(w, m), m)[..., : n - 1]
    return torch.nn.functional.pad(y, (1, 0))


def _as_params(params: Mapping, like: Tensor) -> dict[str, Tensor]:
    missing = [k for k in DN_PARAMS if k not in params]
    unknown = [k for k in params if k not in DN_PARAMS]
    if missing or unknown:
        raise ConfigurationError(f"DN parameters: missing {missing}, unknown {unknown}; give exactly "
                                 f"{list(DN_PARAMS)}")
    return {k: torch.as_tensor(params[k], dtype=like.dtype, device=like.device) for k in DN_PARAMS}


def dn_model(stimulus, t, params: Mapping) -> Tensor:
    """The DN response (module docstring) to ``stimulus`` ``(..., T)`` on the grid ``t`` ``(T,)`` ms.

    ``params``: ``tau1, weight, tau2, n, sigma, shift, scale`` (numbers or tensors that
    broadcast against the leading dims of ``stimulus`` plus a trailing 1, e.g. shape
    ``(B, 1)`` for one parameter set per row). Returns a tensor ``(..., T)`` (float64 unless
    ``stimulus`` is a floating tensor of another dtype).
    """
    if isinstance(stimulus, Tensor):
        s = stimulus if stimulus.is_floating_point() else stimulus.double()
    else:
        s = torch.tensor(np.asarray(stimulus, dtype=np.float64))
    t = (t.to(dtype=s.dtype, device=s.device) if isinstance(t, Tensor)
         else torch.tensor(np.asarray(t, dtype=np.float64), dtype=s.dtype, device=s.device))
    dt = _grid_step(t)
    if s.shape[-1] != t.numel():
        raise ConfigurationError(f"stimulus has {s.shape[-1]} time points but t has {t.numel()}")
    p = _as_params(params, s)
    edges = torch.arange(t.numel() + 1, dtype=s.dtype, device=s.device) * dt
    w1 = (_bin_weights(lambda u: _gamma2_integral(u - p["shift"], p["tau1"]), edges)
          - p["weight"] * _bin_weights(lambda u: _gamma2_integral(u - p["shift"], 1.5 * p["tau1"]), edges))
    w2 = _bin_weights(lambda u: 1.0 - torch.exp(-u / p["tau2"]), edges)
    lin = _causal_conv(s, w1)
    pool = _causal_conv(lin, w2)
    n = p["n"]
    num = lin.abs().clamp_min(1e-30) ** n
    den = p["sigma"].clamp_min(1e-30) ** n + pool.abs().clamp_min(1e-30) ** n
    return p["scale"] * num / den


# -- fitting --------------------------------------------------------------------------------
def _to_z(name: str, value: float) -> float:
    lo, hi = DN_BOUNDS[name]
    if math.isinf(hi):
        v = max(float(value), 1e-6)
        return v + math.log(-math.expm1(-v))  # softplus^-1
    frac = (float(value) - lo) / (hi - lo)
    frac = min(max(frac, 0.01), 0.99)  # start inside: on a bound the gradient vanishes
    return math.log(frac / (1 - frac))


def _from_z(name: str, z: Tensor) -> Tensor:
    lo, hi = DN_BOUNDS[name]
    if math.isinf(hi):
        return torch.nn.functional.softplus(z)
    return lo + (hi - lo) * torch.sigmoid(z)


@dataclass(frozen=True)
class DNFit:
    """Result of :func:`fit_dn`: ``params`` (floats, ms for times), ``r2`` (coefficient of
    determination over every fitted point), ``prediction`` (the model on the data's grid,
    numpy, the data's shape), ``loss`` (final mean squared error), ``on_bounds`` (the fitted
    parameters within :data:`BOUND_TOL` of their range from a bound, with the bound: a fit that
    presses against its bounds is not a description of the data, whatever its ``r2``).
    ``good``: ``r2`` may be read as the fit's quality (no parameter on a bound)."""

    params: dict[str, float]
    r2: float
    prediction: np.ndarray
    loss: float
    on_bounds: dict[str, float] = field(default_factory=dict)

    @property
    def good(self) -> bool:
        return not self.on_bounds and math.isfinite(self.r2)


def fit_dn(stimulus, response, t, *, start: Mapping | None = None, fixed: Mapping | None = None,
           restarts: Sequence[Mapping] = ({}, {"weight": 0.3}), adam_steps: int = 200,
           lr: float = 0.01, lbfgs_steps: int = 300) -> DNFit:
    """Least-squares fit of :func:`dn_model` to ``response`` ``(..., T)`` driven by ``stimulus``
    (same shape, or broadcastable) on the grid ``t`` (ms): one parameter set for every row
    (e.g. every condition of one population, as Groen et al. fit each area).

    Minimises the mean squared error (relative to the data's mean square) with Adam
    (``adam_steps`` at ``lr``) then L-BFGS (``lbfgs_steps``, strong-Wolfe line search) over the
    unconstrained variables of the module docstring, so the parameters stay inside
    :data:`DN_BOUNDS` (a start on a bound is moved 1 % of the range inside, where the sigmoid
    still has a gradient). The loss has local minima (notably ``weight`` stuck at 0), so the
    fit is repeated from ``start`` (default :data:`DN_START`) updated by each entry of
    ``restarts``, and the lowest loss wins. ``fixed`` holds parameters that are not fitted.
    ``R^2 = 1 - sum (y - yhat)^2 / sum (y - mean y)^2`` over every point. Free parameters
    that end on a bound are listed in ``DNFit.on_bounds`` (and warned,
    :class:`~dynode.errors.AnalysisWarning`).
    """
    y = torch.tensor(np.asarray(response, dtype=np.float64))  # copies: inputs may be read-only views
    s = torch.tensor(np.asarray(stimulus, dtype=np.float64))
    tt = torch.tensor(np.asarray(t, dtype=np.float64))
    if not torch.isfinite(y).all():
        raise ConfigurationError("the response holds NaN or inf; cut the time course to finite values")
    fixed = dict(fixed or {})
    start = {**DN_START, **dict(start or {})}
    bad = [k for k in list(start) + list(fixed) if k not in DN_PARAMS]
    if bad:
        raise ConfigurationError(f"unknown DN parameters {bad}; known: {list(DN_PARAMS)}")
    for k, v in {**start, **fixed}.items():
        lo, hi = DN_BOUNDS[k]
        if not lo <= float(v) <= hi:
            raise ConfigurationError(f"DN parameter {k}={v} is outside its bounds [{lo}, {hi}]")
    free = [k for k in DN_PARAMS if k not in fixed]
    norm = float(y.square().mean().clamp_min(1e-30))  # the loss is relative to the data's power
    best = None
    for extra in restarts or ({},):
        begin = {**start, **{k: v for k, v in dict(extra).items() if k not in fixed}}
        z = _optimise(s, y, tt, begin, fixed, free, norm, adam_steps, lr, lbfgs_steps)
        with torch.no_grad():
            p = _params_of(z, fixed, free)
            pred = dn_model(s, tt, p).expand_as(y)
            res = float((y - pred).square().sum())
        if best is None or res < best[0] or not math.isfinite(best[0]):
            best = (res, p, pred)
    res, p, pred = best
    tot = float((y - y.mean()).square().sum())
    r2 = 1.0 - res / tot if tot > 0 else float("nan")
    params = {k: float(p[k]) for k in DN_PARAMS}
    on_bounds = _on_bounds(params, free)
    if on_bounds:
        warnings.warn(f"DN fit: parameters on their bounds {on_bounds} (R^2 {r2:.3f} does not make this a "
                      "description of the data: the model wants values outside its bounds, or does not "
                      "use these terms)", AnalysisWarning, stacklevel=user_stacklevel())
    return DNFit(params=params, r2=r2, prediction=pred.numpy(), loss=res / y.numel(),
                 on_bounds=on_bounds)


def _on_bounds(params: Mapping[str, float], free: Sequence[str]) -> dict[str, float]:
    """``{name: bound}`` for the fitted parameters within :data:`BOUND_TOL` of a bound (for
    ``scale``, whose range is unbounded above, within ``BOUND_TOL`` of 0)."""
    out = {}
    for k in free:
        lo, hi = DN_BOUNDS[k]
        span = (hi - lo) if math.isfinite(hi) else 1.0
        if params[k] - lo <= BOUND_TOL * span:
            out[k] = lo
        elif math.isfinite(hi) and hi - params[k] <= BOUND_TOL * span:
            out[k] = hi
    return out


def _params_of(z: Tensor, fixed: Mapping, free: Sequence[str]) -> dict[str, Tensor]:
    out = {k: torch.as_tensor(float(v), dtype=torch.float64) for k, v in fixed.items()}
    out.update({k: _from_z(k, z[i]) for i, k in enumerate(free)})
    return out


def _optimise(s, y, t, start, fixed, free, norm, adam_steps, lr, lbfgs_steps) -> Tensor:
    """Adam then L-BFGS from ``start``; returns the unconstrained variables."""
    z = torch.tensor([_to_z(k, start[k]) for k in free], dtype=torch.float64, requires_grad=True)
    if not free:
        return z

    def closure() -> Tensor:  # one evaluation and gradient, for whichever optimiser ``opt`` is
        opt.zero_grad()
        loss = (dn_model(s, t, _params_of(z, fixed, free)) - y).square().mean() / norm
        loss.backward()
        return loss

    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(adam_steps):
        opt.step(closure)
    if lbfgs_steps > 0:
        opt = torch.optim.LBFGS([z], lr=1.0, max_iter=lbfgs_steps, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-12, tolerance_change=1e-15)
        opt.step(closure)
    return z.detach()
