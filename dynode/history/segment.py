r"""History for solvers that return states on points only (the torchdiffeq/torchode adapters).

Each solved segment ``[a, b]`` is kept on ``n + 1`` equally spaced points
``x_m = a + m (b - a) / n`` (one flat tensor per point); a read at ``t`` in the segment uses
the cubic Lagrange polynomial through the four points around it,

.. math:: r(t) = \textstyle\sum_{m=0}^{3} \ell_m(x)\, r_{j_0 + m}, \qquad
          x = (t - a) n / (b - a) - j_0,

(error ``O(((b - a) / n)^4)``). dynode's own adaptive solvers use the method's continuous
extension instead, exact to the step's order at no extra cost (:mod:`dynode.history.dense`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from torch import Tensor

from dynode.history.base import Inputs, Piecewise

__all__ = ["SegmentHistory"]


def _lagrange4(x: float) -> tuple[float, float, float, float]:
    """Cubic Lagrange weights on nodes 0, 1, 2, 3 at ``x``."""
    return (-(x - 1) * (x - 2) * (x - 3) / 6, x * (x - 2) * (x - 3) / 2,
            -x * (x - 1) * (x - 3) / 2, x * (x - 1) * (x - 2) / 6)


class SegmentHistory(Piecewise):
    """Solved segments on ``n + 1`` points each, read by cubic Lagrange interpolation.

    ``column(point, name)``: population ``name`` (batch first) from one flat point; the other
    parameters are :class:`~dynode.history.base.Piecewise`'s.
    """

    def __init__(self, initial_state: Mapping[str, Tensor], column: Callable[[Tensor, str], Tensor], *,
                 t0: float, max_delay: float, inputs: Inputs | None = None):
        super().__init__(initial_state, t0=t0, max_delay=max_delay, inputs=inputs)
        self._column = column

    def append(self, a: float, b: float, points: Tensor, y_end: Mapping[str, Tensor]) -> None:
        """Record the segment ``[a, b]`` solved on ``points`` (shape ``(n + 1, rows, features)``)."""
        self._push(a, b, (a, (b - a) / (points.shape[0] - 1), points), y_end)

    def _read(self, piece: tuple[float, float, Tensor], tq: float, name: str) -> Tensor:
        a, dt, pts = piece
        x = (tq - a) / dt
        j0 = min(max(math.floor(x) - 1, 0), pts.shape[0] - 4)
        w = _lagrange4(x - j0)
        col = [self._column(pts[j0 + m], name) for m in range(4)]
        return (col[0] * w[0]).add_(col[1], alpha=w[1]).add_(col[2], alpha=w[2]).add_(col[3], alpha=w[3])
