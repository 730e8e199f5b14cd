"""Tolerances, each named once.

Times are floats in ms. Two times are the same time when they differ by at most
``time_tol(t) = TIME_RTOL * max(1, |t|)`` ms: a time on the ``dt`` grid, a delay that is a
multiple of ``dt``, a save time at ``t_end``, a window edge, a breakpoint on a step, a read
of the history at the end of what has been solved.
"""

from __future__ import annotations

__all__ = ["TIME_RTOL", "time_tol"]

TIME_RTOL = 1e-9


def time_tol(t: float = 1.0) -> float:
    """The tolerance for comparing times near ``t`` (ms): ``TIME_RTOL * max(1, |t|)``."""
    return TIME_RTOL * max(1.0, abs(t))
