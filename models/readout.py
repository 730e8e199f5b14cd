r"""Readouts: a linear decoder on one population, applied at chosen times, part of the model.

For a population's saved trajectory ``r(t_i)`` of shape ``(T, B, C, H, W)``:

* ``at="last"``:  ``logits = W pool(r(t_T)) + b``                     -> ``(B, K)``
* ``at="mean"``:  ``logits = W pool(mean_{t_i in window} r(t_i)) + b`` -> ``(B, K)``
* ``at="every"``: ``logits_i = W pool(r(t_i)) + b`` for every ``t_i``  -> ``(T, B, K)``
  (optionally restricted to the window), for losses over a time window.

``pool`` is global average pooling over space (``"avg"``) or flattening (``"flatten"``).
Attach it with ``net.set_readout(readout)``: its parameters then belong to the network
(``net.parameters()``, ``state_dict`` under ``readout.``) and ``net.decode(solution)`` applies
it to the rows the solution saved. :class:`Classifier` wraps integrate + decode as
``model(images) -> logits`` and decodes the states *after* ``t0`` only: one row per step for
``"every"`` (``(steps, B, K)``, the toolbox's shape: ``dyrcnn_published()`` gives 20 rows for
its 20 steps), and ``"mean"`` never averages the initial state. The state at ``t0`` is given,
not a response: no input has reached it, so its logits are the same for every image (the bias
alone for the zero state). The trainer (:mod:`dynode.train`) reads the same rows.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

import torch
from torch import Tensor, nn

from dynode.errors import ConfigurationError, ShapeError
from dynode.integrate import integrate
from dynode.stimulus import Pulse
from dynode.tolerances import TIME_RTOL

__all__ = ["Readout", "Classifier"]


class Readout(nn.Module):
    """Linear decoder of population ``population`` (per-sample ``shape``) into ``num_classes``.

    ``window=(t_start, t_end)`` in ms (inclusive) selects the times for ``"mean"`` (required)
    and ``"every"`` (optional).
    """

    def __init__(self, population: str, shape: Sequence[int], num_classes: int, *,
                 at: Literal["last", "mean", "every"] = "last", window: tuple[float, float] | None = None,
                 pool: Literal["avg", "flatten"] = "avg", bias: bool = True):
        super().__init__()
        if at not in ("last", "mean", "every"):
            raise ConfigurationError(f"readout at={at!r}; use 'last', 'mean' or 'every'")
        if at == "mean" and window is None:
            raise ConfigurationError("readout at='mean' needs window=(t_start, t_end) in ms")
        if at == "last" and window is not None:
            raise ConfigurationError("readout at='last' takes no window; use at='mean' or 'every'")
        if pool not in ("avg", "flatten"):
            raise ConfigurationError(f"readout pool={pool!r}; use 'avg' or 'flatten'")
        self.population, self.shape = population, tuple(int(s) for s in shape)
        self.at, self.pool = at, pool
        self.window = None if window is None else (float(window[0]), float(window[1]))
        if pool == "avg" and len(self.shape) >= 2:
            features = self.shape[0]
        else:
            features = 1
            for s in self.shape:
                features *= s
        self.linear = nn.Linear(features, int(num_classes), bias=bias)

    @property
    def num_classes(self) -> int:
        return self.linear.out_features

    def features(self, r: Tensor) -> Tensor:
        """Pooled features of ``r`` of shape ``(..., *shape)`` -> ``(..., features)``."""
        n = len(self.shape)
        if self.pool == "avg" and n >= 2:
            return r.mean(dim=tuple(range(r.dim() - n + 1, r.dim())))
        return r.flatten(r.dim() - n)

    def _window_index(self, ts: Tensor) -> list[int]:
        t0, t1 = self.window
        idx = [i for i, t in enumerate(ts.tolist()) if t0 - TIME_RTOL <= t <= t1 + TIME_RTOL]
        if not idx:
            raise ConfigurationError(f"readout window [{t0:g}, {t1:g}] ms holds no saved time "
                                     f"(saved: {ts[0].item():g} .. {ts[-1].item():g} ms)")
        return idx

    def forward(self, trajectory: Tensor, ts: Tensor | None = None) -> Tensor:
        """Logits from ``trajectory`` ``(T, B, *shape)`` saved at ``ts`` (ms)."""
        if tuple(trajectory.shape[2:]) != self.shape:
            raise ShapeError(f"readout of {self.population!r}: expected a trajectory (T, B, *{self.shape}), "
                             f"got {tuple(trajectory.shape)}")
        if self.at == "last":
            return self.linear(self.features(trajectory[-1]))
        if ts is None:
            raise ConfigurationError(f"readout at={self.at!r} needs the save times ts")
        if self.at == "mean":
            idx = self._window_index(ts)
            sel = trajectory[idx[0]:idx[-1] + 1] if idx == list(range(idx[0], idx[-1] + 1)) else trajectory[idx]
            return self.linear(self.features(sel.mean(0)))
        sel = trajectory if self.window is None else trajectory[self._window_index(ts)]
        return self.linear(self.features(sel))

    def extra_repr(self) -> str:
        w = "" if self.window is None else f", window={self.window}"
        return f"population={self.population!r}, at={self.at!r}{w}, pool={self.pool!r}"


class Classifier(nn.Module):
    """``model(images) -> logits``: integrate ``network`` under the image and decode.

    The image is constant, or a pulse when ``network.protocol`` has ``stimulus_onset`` and
    ``stimulus_duration`` (ms).

    ``dt``, ``t_end``, ``solver`` default to ``network.protocol`` (set by the zoo); the image
    feeds the network's only input (or ``input_name``). Gradients flow (training works).
    """

    def __init__(self, network, *, dt: float | None = None, t_end: float | None = None,
                 solver=None, input_name: str | None = None):
        super().__init__()
        proto = network.protocol
        self.network = network
        self.dt = float(dt) if dt is not None else proto.dt
        self.t_end = float(t_end) if t_end is not None else proto.t_end
        self.solver = solver if solver is not None else proto.solver
        if self.dt is None or self.t_end is None:
            raise ConfigurationError("Classifier needs dt and t_end (ms): pass them or set network.protocol")
        names = network.input_names()
        if input_name is None:
            if len(names) != 1:
                raise ConfigurationError(f"the network has inputs {list(names)}; pass input_name=")
            input_name = names[0]
        self.input_name = input_name
        # the image as a pulse when the protocol has a stimulus window (e.g. CordsNet)
        self.speed = None  # set by dynode.models.prepare_for_speed
        self.onset = proto.stimulus_onset
        self.duration = proto.stimulus_duration
        if network.readout is None:
            raise ConfigurationError("the network has no readout; attach one with network.set_readout(...)")

    def forward(self, images: Tensor) -> Tensor:
        """Logits: ``(B, K)`` for a readout at ``"last"`` or ``"mean"``, ``(steps, B, K)`` for
        ``"every"`` (the states at ``t0 + k dt``, ``k = 1 .. steps``; not the initial state)."""
        ro = self.network.readout
        save_at = (self.t_end,) if ro.at == "last" else None
        speed = self.speed
        if speed is not None and speed.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        stimulus = {self.input_name: images}
        if self.onset is not None:
            stimulus = Pulse(self.onset, self.duration if self.duration is not None else math.inf, stimulus)
        initial = None
        if speed is not None and speed.state_dtype is not None:
            initial = self.network.init_state(images.shape[0], device=images.device, dtype=speed.state_dtype)
        with (speed.autocast_context() if speed is not None else contextlib.nullcontext()):
            sol = integrate(self.network, stimulus, t_end=self.t_end, dt=self.dt,
                            solver=self.solver, save_at=save_at, initial_state=initial)
            if ro.at != "last":  # the responses: the saved states after the initial one at t0
                sol = replace(sol, ts=sol.ts[1:], states={ro.population: sol.states[ro.population][1:]})
            logits = self.network.decode(sol)
        return logits if speed is None or speed.autocast is None else logits.float()
