"""The vector-field protocol.

A vector field is any ``nn.Module`` that gives ``dr/dt`` for every population::

    forward(t, state, history, inputs) -> {name: dr_name/dt}

* ``t`` is the time in ms (a Python float), ``state`` the rates ``r(t)`` (dict of batch-first
  tensors), ``inputs`` the stimulus at ``t`` (dict), and ``history.lag(name, delay)`` the
  value of a population (or input) at ``t - delay``.
* ``init_state`` gives the state at ``t0``; for ``t < t0`` the history is that state
  (constant history).
* ``max_delay`` (ms) sizes the history buffers.

The other methods of :class:`VectorField` have defaults. A complete field (a Wilson-Cowan
E/I pair with a delayed loop) is ``examples/wilson_cowan.py``; one that configs and the CLI
can build is ``examples/custom_field.py``.
"""

from __future__ import annotations

from torch import Tensor, nn

from dynode.history import HistoryReader

__all__ = ["VectorField"]


class VectorField(nn.Module):
    """Base class (and documentation) of the vector-field protocol. See the module docstring."""

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> dict[str, Tensor]:
        """The state at ``t0`` (and the constant history before it)."""
        raise NotImplementedError(f"{type(self).__name__} must implement init_state()")

    def max_delay(self) -> float:
        """The longest delay (ms) that ``forward`` reads through ``history.lag``."""
        return 0.0

    def input_names(self) -> tuple[str, ...]:
        """Names of the stimulus inputs the field reads (``()`` if it takes none)."""
        return ()

    def time_constants(self) -> dict[str, float]:
        """``tau`` (ms) per population, for step-size warnings and error messages."""
        return {}

    def delays(self) -> dict[str, tuple[str, float]]:
        """Every delayed read, ``{label: (source_name, delay_ms)}``, checked before a run.

        A custom field may leave this empty: its delays are then checked at the first step.
        """
        return {}

    def forward(self, t: float, state: dict[str, Tensor], history: HistoryReader,
                inputs: dict[str, Tensor]) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")
