"""The vector-field protocol.

A vector field is any ``nn.Module`` that gives ``dr/dt`` for every population::

    forward(t, state, history, inputs) -> {name: dr_name/dt}

* ``t`` is the time in ms (a Python float), ``state`` the rates ``r(t)`` (dict of batch-first
  tensors), ``inputs`` the stimulus at ``t`` (dict), and ``history.lag(name, delay)`` the
  value of a population (or input) at ``t - delay``.
* ``init_state`` gives the state at ``t0``; for ``t < t0`` the history is that state
  (constant history).
* ``max_delay`` (ms) sizes the history buffers.

Example: a Wilson-Cowan excitatory/inhibitory pair with a delayed inhibitory loop::

    class WilsonCowan(dn.VectorField):
        def __init__(self, tau_e=10.0, tau_i=5.0, delay=4.0):
            super().__init__()
            self.tau_e, self.tau_i, self.delay = tau_e, tau_i, delay

        def init_state(self, batch_size, *, device=None, dtype=None):
            z = torch.zeros(batch_size, 1, device=device, dtype=dtype)
            return {"E": z, "I": z.clone()}

        def max_delay(self):
            return self.delay

        def forward(self, t, state, history, inputs):
            E, I = state["E"], state["I"]
            I_late = history.lag("I", self.delay)
            E_late = history.lag("E", self.delay)
            dE = (-E + torch.sigmoid(12 * E - 10 * I_late + inputs["drive"] - 2)) / self.tau_e
            dI = (-I + torch.sigmoid(10 * E_late - 2 * I - 3.5)) / self.tau_i
            return {"E": dE, "I": dI}
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
