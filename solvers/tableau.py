r"""The Butcher tableau: one explicit Runge-Kutta method as data, fixed-step or adaptive.

A method with tableau ``(c, A, b)`` takes a step of size ``h`` from ``(t_n, y_n)`` as

.. math:: k_i = f\big(t_n + c_i h,\; y_n + h \textstyle\sum_{j<i} a_{ij} k_j\big), \qquad
          y_{n+1} = y_n + h \textstyle\sum_i b_i k_i ;

an embedded pair adds the error estimate ``e = h sum_i (b_i - \hat b_i) k_i`` (``b_err``),
and a continuous extension the dense output ``y(t_n + theta h) = y_n + h sum_i B_i(theta) k_i``
(``dense``). A solver class holds its tableau (``tableau: ClassVar[Tableau]``,
:mod:`dynode.solvers.fixed`, :mod:`dynode.solvers.adaptive`); the loops read nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.polynomial import polynomial as npoly

from dynode.errors import ConfigurationError

__all__ = ["Tableau", "dense_rows", "polymul"]


@dataclass(frozen=True)
class Tableau:
    """An explicit Runge-Kutta method.

    ``c``: the nodes; ``a``: the rows of the strictly lower-triangular matrix (row ``i`` has
    ``i`` entries); ``b``: the weights; ``order``: the order of ``y_{n+1}``.
    ``stability_limit``: the largest stable ``h lambda`` on the negative real axis (``dt/tau``
    of a leaky population; None: not stated). ``b_err``: ``b - b_hat`` of an embedded pair and
    ``error_order`` the order of the embedded solution ``b_hat``. ``dense[i]``: the
    coefficients of ``theta^1 .. theta^D`` of ``B_i(theta)``.
    """

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    stability_limit: float | None = None
    b_err: tuple[float, ...] | None = None
    error_order: int | None = None
    dense: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self):
        s = len(self.c)
        if ([len(row) for row in self.a] != list(range(s)) or (self.b_err is None) != (self.error_order is None)
                or any(v is not None and len(v) != s for v in (self.b, self.b_err, self.dense))):
            raise ConfigurationError(
                f"a Tableau of {s} stages needs {s} weights b, rows a of 0..{s - 1} entries, b_err and "
                "dense of one entry per stage (or None), and error_order exactly when b_err is given")

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def fsal(self) -> bool:
        """First same as last: the last stage is ``f(t_{n+1}, y_{n+1})`` and starts the next step."""
        return self.c[-1] == 1.0 and self.b[-1] == 0 and tuple(self.a[-1]) == tuple(self.b[:-1])

    def weights(self, theta: float) -> list[float]:
        """``[B_1(theta), ..., B_s(theta)]`` of the dense output (Horner, host floats)."""
        out = []
        for coeffs in self.dense:
            acc = 0.0
            for p in reversed(coeffs):
                acc = (acc + p) * theta
            out.append(acc)
        return out


    def slopes(self, theta: float) -> list[float]:
        """``[B_1'(theta), ..., B_s'(theta)]``: ``dy/dt = sum_i B_i'(theta) k_i`` on the step."""
        out = []
        for coeffs in self.dense:
            acc = 0.0
            for p, c in reversed(list(enumerate(coeffs, start=1))):
                acc = acc * theta + p * c
            out.append(acc)
        return out


def dense_rows(B: list) -> tuple[tuple[float, ...], ...]:
    """Per-stage polynomials ``B_i`` (numpy, low -> high, zero constant term) -> ``Tableau.dense``."""
    deg = max(len(p) for p in B) - 1
    rows = []
    for p in B:
        p = np.concatenate([np.asarray(p, dtype=float), np.zeros(deg + 1 - len(p))])
        assert abs(p[0]) < 1e-14
        rows.append(tuple(float(x) for x in p[1:]))
    return tuple(rows)


def polymul(*ps) -> np.ndarray:
    """The product of numpy polynomials (low -> high)."""
    out = np.array([1.0])
    for p in ps:
        out = npoly.polymul(out, p)
    return out
