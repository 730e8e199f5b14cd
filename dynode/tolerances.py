"""Tolerances, each named once.

Times are floats in ms. Two times are the same time when they differ by at most
``time_tol(t) = TIME_RTOL * max(1, |t|)`` ms: a time on the ``dt`` grid, a delay that is a
multiple of ``dt``, a save time at ``t_end``, a window edge, a breakpoint on a step, a read
of the history at the end of what has been solved.
"""

from __future__ import annotations

import math

__all__ = ["TIME_RTOL", "time_tol", "left_limit"]

TIME_RTOL = 1e-9


def time_tol(t: float = 1.0) -> float:
    """The tolerance for comparing times near ``t`` (ms): ``TIME_RTOL * max(1, |t|)``."""
    return TIME_RTOL * max(1.0, abs(t))


def left_limit(a: float, b: float) -> float:
    """A time just inside the step ``[a, b]`` before ``b``, where an input that jumps at ``b``
    still has its value from before the jump: ``b`` less 16 ulp, but never before the
    step's midpoint."""
    return max(b - 16 * math.ulp(max(abs(b), 1.0)), 0.5 * (a + b))
