"""Tolerances, each named once.

Times are floats in ms. Two times are the same time when they differ by at most
``time_tol(t) = TIME_RTOL * max(1, |t|)`` ms: a time on the ``dt`` grid, a delay that is a
multiple of ``dt``, a save time at ``t_end``, a window edge, a breakpoint on a step, a read
of the history at the end of what has been solved.
"""

from __future__ import annotations

import math

__all__ = ["TIME_RTOL", "time_tol", "GRID_LEFT", "LEFT_ULPS", "left_limit"]

TIME_RTOL = 1e-9


def time_tol(t: float = 1.0) -> float:
    """The tolerance for comparing times near ``t`` (ms): ``TIME_RTOL * max(1, |t|)``."""
    return TIME_RTOL * max(1.0, abs(t))


# The left limit at the end of a step: where a stage at ``c = 1`` is evaluated, so that an
# input that jumps at the step's end still has its value from before the jump. Two values,
# because the two kinds of solver take it differently (one value for both would move the
# time of every fixed-step ``c = 1`` stage, and change results for inputs that vary in time):
# * a fixed-step solver evaluates *every* ``c = 1`` stage at the step fraction ``GRID_LEFT``,
#   ``t0 + (n + GRID_LEFT) dt``: a relative offset of the step, as its grid times are;
# * an adaptive solver only where its step ends on a jump, at ``left_limit(t_n, t_{n+1})``:
#   ``LEFT_ULPS`` ulp before the end, the nearest time that is reliably before it.
GRID_LEFT = 1.0 - TIME_RTOL
LEFT_ULPS = 16


def left_limit(a: float, b: float) -> float:
    """A time just inside the step ``[a, b]`` before ``b`` (an adaptive step ending on a jump):
    ``b`` less ``LEFT_ULPS`` ulp, but never before the step's midpoint."""
    return max(b - LEFT_ULPS * math.ulp(max(abs(b), 1.0)), 0.5 * (a + b))
