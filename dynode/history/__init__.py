"""The delayed past of a run: ``history.lag(name, delay)`` is ``r_name(t - delay)``.

One protocol (:class:`HistoryReader`, what ``VectorField.forward`` receives) and one
implementation per kind of solver, side by side:

* :class:`History` (``dn.History``, :mod:`.grid`): the fixed-step solvers' ring buffers on
  the grid ``t0 + n dt``, integer index, Hermite interpolation at off-grid stages;
* :class:`DenseHistory` (:mod:`.dense`): the adaptive solvers' accepted steps read with the
  method's continuous extension (method of steps; :func:`propagate_breakpoints`);
* :class:`SegmentHistory` (:mod:`.segment`): the torchdiffeq/torchode adapters' solved
  segments on equally spaced points, cubic Lagrange.

Every fault of a read (a delay < 0 or beyond ``max_delay()``, a read past the solved range)
is a :class:`dynode.DelayError`. ``base`` holds what the three share (``Piecewise``,
``check_delay``, ``lag_input``); it is internal to this package.
"""

from dynode.history.base import HistoryReader
from dynode.history.dense import DenseHistory, field_delays, history_span, propagate_breakpoints
from dynode.history.grid import History, HistoryTail, compatible_dts, delay_steps, hermite
from dynode.history.segment import SegmentHistory

__all__ = ["HistoryReader", "History", "HistoryTail", "DenseHistory", "SegmentHistory", "delay_steps",
           "compatible_dts", "hermite", "field_delays", "history_span", "propagate_breakpoints"]
