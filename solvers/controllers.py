r"""Step-size control for the embedded Runge-Kutta solvers (host-side floats only).

After a step of size ``h`` the solver measures the scaled error (RMS over every element)
of its error estimate ``e`` (:mod:`dynode.solvers.adaptive`)

.. math:: \mathrm{err} = \sqrt{\tfrac{1}{N}\textstyle\sum_m \big(e_m / (\mathrm{atol} +
          \mathrm{rtol}\max(|y_{n,m}|, |y_{n+1,m}|))\big)^2},

accepts the step when ``err <= 1`` and rescales ``h`` by a factor clipped to
``[factor_min, factor_max]`` (``<= 1`` right after a rejection): :class:`IntegralController`
or :class:`PIController`. :func:`initial_step` is the first-step heuristic of Hairer,
Norsett & Wanner (II.4).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from dynode.errors import ConfigurationError
from dynode.solver import check_options

__all__ = ["IntegralController", "PIController", "get_controller", "initial_step", "scaled_rms"]


class _State:
    """Per-solve controller state: call :meth:`accept` or :meth:`reject` after each step."""

    def __init__(self, ctrl: _Controller, k: int):
        self.ctrl, self.k = ctrl, float(k)
        self.prev = 1.0
        self.after_reject = False

    def accept(self, err: float) -> float:
        c, k = self.ctrl, self.k
        fac = c.factor_max if err == 0.0 else c.safety * err ** (-c.alpha / k) * self.prev ** (c.beta / k)
        hi = 1.0 if self.after_reject else c.factor_max
        self.after_reject = False
        self.prev = max(err, 1e-4)
        return min(hi, max(c.factor_min, fac))

    def reject(self, err: float) -> float:
        c = self.ctrl
        self.after_reject = True
        if not math.isfinite(err):
            return c.factor_min
        return min(1.0, max(c.factor_min, c.safety * err ** (-1.0 / self.k)))


@dataclass(frozen=True)
class _Controller:
    """What both controllers share: the safety factor, the step-ratio limits, the PI gains
    ``alpha``, ``beta`` (the integral controller is the PI law with ``alpha = 1, beta = 0``).
    ``q`` below is the order of the embedded error estimate."""

    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 10.0
    alpha: ClassVar[float] = 1.0
    beta: ClassVar[float] = 0.0

    def __post_init__(self):
        check_options(type(self).__name__, safety=self.safety, factor_min=self.factor_min,
                      factor_max=self.factor_max)
        if not (self.alpha > 0 and self.beta >= 0):
            raise ConfigurationError(f"PI gains must be alpha > 0, beta >= 0, got {self.alpha}, {self.beta}")

    def start(self, error_order: int) -> _State:
        return _State(self, error_order + 1)


@dataclass(frozen=True)
class IntegralController(_Controller):
    """``h <- h * clip(safety * err^(-1/(q+1)), factor_min, factor_max)``."""


@dataclass(frozen=True)
class PIController(_Controller):
    """``h <- h * clip(safety * err_n^(-alpha/(q+1)) * err_{n-1}^(beta/(q+1)), ...)`` (Gustafsson),
    which damps the step-size oscillation of the integral controller on mildly stiff problems."""

    alpha: float = 0.7
    beta: float = 0.4


def get_controller(kind: str, *, safety: float, factor_min: float, factor_max: float):
    """``"integral"`` or ``"pi"`` -> controller object (resolved once per solver, not per step)."""
    if kind == "integral":
        return IntegralController(safety, factor_min, factor_max)
    if kind == "pi":
        return PIController(safety, factor_min, factor_max)
    raise ConfigurationError(f"controller must be 'integral' or 'pi', got {kind!r}")


def scaled_rms(xs: list[Tensor], scale: list[Tensor]) -> Tensor:
    """Per-tensor ``||x / scale||_2`` stacked (stays on the device)."""
    return torch.stack(torch._foreach_norm(torch._foreach_div(xs, scale)))


def initial_step(f: Callable[[float, list[Tensor]], list[Tensor]], t0: float, y0: list[Tensor],
                 f0: list[Tensor], *, rtol: float, atol: float, order: int, h_max: float) -> float:
    r"""Hairer's first-step guess (one extra evaluation of ``f``, two host reads).

    ``d0 = ||y0||, d1 = ||f0||`` (scaled RMS), ``h0 = 0.01 d0 / d1``; one Euler step of ``h0``
    gives ``d2 = ||f(t0+h0, y1) - f0|| / h0``; ``h1 = (0.01 / max(d1, d2))^{1/(p+1)}``;
    the result is ``min(100 h0, h1, h_max)``.
    """
    with torch.no_grad():  # no graph: y0, f0 and the extra evaluation stay out of autograd
        sc = torch._foreach_add(torch._foreach_mul(torch._foreach_abs(y0), rtol), atol)
        n = sum(y.numel() for y in y0)
        d0s, d1s = torch.stack([scaled_rms(y0, sc), scaled_rms(f0, sc)]).square().sum(1).tolist()
        d0, d1 = math.sqrt(d0s / n), math.sqrt(d1s / n)
        if not (math.isfinite(d0) and math.isfinite(d1)):
            return math.nan
        h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
        h0 = min(h0, h_max)
        f1 = f(t0 + h0, torch._foreach_add(y0, f0, alpha=h0))
        diff = torch._foreach_sub(f1, f0)
        d2 = math.sqrt(float(scaled_rms(diff, sc).square().sum()) / n) / h0
        if not math.isfinite(d2):
            return h0
        m = max(d1, d2)
        h1 = max(1e-6, h0 * 1e-3) if m <= 1e-15 else (0.01 / m) ** (1.0 / (order + 1))
        return min(100 * h0, h1, h_max)
