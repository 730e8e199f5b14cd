"""The stimulus protocol: deterministic functions of time in ms.

A stimulus is the value ``I(t)`` of the network's input populations. It is a pure function
of ``t`` (noise is frozen by a seed), so adaptive solvers may query any time in any order,
and it lists its ``breakpoints`` (onsets, offsets: every discontinuity, in ms) so that
solvers step onto them instead of over them.

``__call__(t)`` returns either one tensor (it feeds the network's only input) or a dict
``{input_name: tensor}``. Tensors are batch first: ``(batch, *input_shape)``; a tensor of
exactly ``input_shape`` is shared by every sample of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Union

import torch
from torch import Tensor

from dynode.errors import ConfigurationError

__all__ = ["Stimulus", "Constant", "Pulse", "as_stimulus", "StimulusValue"]

StimulusValue = Union[Tensor, dict[str, Tensor]]


def _map(value: StimulusValue, fn) -> StimulusValue:
    if isinstance(value, Mapping):
        return {k: fn(v) for k, v in value.items()}
    return fn(value)


def _as_value(value, what: str) -> StimulusValue:
    if isinstance(value, Mapping):
        return {str(k): _as_tensor(v, f"{what}[{k!r}]") for k, v in value.items()}
    return _as_tensor(value, what)


def _as_tensor(value, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(value, dtype=torch.get_default_dtype())
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigurationError(f"{what} must be a tensor (or a number / array), got "
                                 f"{type(value).__name__}: {exc}") from None


class Stimulus:
    """Base class of stimuli. Subclasses implement :meth:`__call__` and :meth:`to`.

    Attributes
    ----------
    breakpoints : sorted times (ms) at which the value jumps. Solvers end steps there.
    conditions : per-sample condition labels (e.g. ``{"contrast": [0.1, 0.5]}``) that
        recordings attach to the ``sample`` dimension. Empty by default.
    """

    breakpoints: tuple[float, ...] = ()
    conditions: dict[str, Sequence] = {}

    def __call__(self, t: float) -> StimulusValue:  # pragma: no cover - abstract
        raise NotImplementedError

    def to(self, device=None, dtype=None) -> "Stimulus":
        """Return a copy whose tensors live on ``device`` with floating ``dtype``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement to()")

    def __add__(self, other: "Stimulus") -> "Stimulus":
        """``a + b``: the stimuli summed (:class:`dynode.stimuli.Sum`)."""
        if not isinstance(other, Stimulus):
            return NotImplemented
        from dynode.stimuli.compose import Sum

        return Sum(self, other)


def _move(value: StimulusValue, device, dtype) -> StimulusValue:
    def mv(x: Tensor) -> Tensor:
        return x.to(device=device, dtype=dtype if (dtype is not None and x.is_floating_point()) else None)
    return _map(value, mv)


class Constant(Stimulus):
    """``I(t) = value`` for all ``t`` (no breakpoints)."""

    def __init__(self, value, *, conditions: Mapping[str, Sequence] | None = None):
        self.value = _as_value(value, "Constant value")
        self.breakpoints = ()
        self.conditions = dict(conditions or {})

    def __call__(self, t: float) -> StimulusValue:
        return self.value

    def to(self, device=None, dtype=None) -> "Constant":
        return Constant(_move(self.value, device, dtype), conditions=self.conditions)

    def __repr__(self) -> str:
        return f"Constant({_describe(self.value)})"


class Pulse(Stimulus):
    """``I(t) = value`` for ``onset <= t < onset + duration``, ``baseline`` otherwise.

    The pulse is right-continuous: on at exactly ``onset``, off at exactly
    ``onset + duration``. Times are in ms; ``duration=math.inf`` never switches off.
    """

    def __init__(self, onset: float, duration: float, value, baseline=0.0, *,
                 conditions: Mapping[str, Sequence] | None = None):
        onset, duration = float(onset), float(duration)
        if not math.isfinite(onset):
            raise ConfigurationError(f"Pulse onset must be finite, got {onset} ms")
        if not duration > 0:
            raise ConfigurationError(f"Pulse duration must be > 0 ms, got {duration} ms")
        self.onset, self.duration = onset, duration
        self.offset = onset + duration
        self.value = _as_value(value, "Pulse value")
        if isinstance(baseline, (int, float)):
            self.baseline = _map(self.value, lambda v: torch.full_like(v, float(baseline)))
        else:
            self.baseline = _as_value(baseline, "Pulse baseline")
        self.breakpoints = (onset,) if math.isinf(self.offset) else (onset, self.offset)
        self.conditions = dict(conditions or {})

    def __call__(self, t: float) -> StimulusValue:
        return self.value if self.onset <= t < self.offset else self.baseline

    def to(self, device=None, dtype=None) -> "Pulse":
        new = object.__new__(Pulse)
        new.__dict__.update(self.__dict__)
        new.value = _move(self.value, device, dtype)
        new.baseline = _move(self.baseline, device, dtype)
        return new

    def __repr__(self) -> str:
        return f"Pulse(onset={self.onset}, duration={self.duration}, value={_describe(self.value)})"


def _describe(value: StimulusValue) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {tuple(v.shape)}" for k, v in value.items()) + "}"
    return f"tensor{tuple(value.shape)}"


def as_stimulus(stimulus) -> Stimulus | None:
    """Accept a :class:`Stimulus`, a tensor or a dict of tensors (constant input), or None."""
    if stimulus is None or isinstance(stimulus, Stimulus):
        return stimulus
    if isinstance(stimulus, (Tensor, Mapping)):
        return Constant(stimulus)
    if callable(stimulus):
        raise ConfigurationError(
            "a plain callable is not a stimulus: subclass dynode.stimuli.Stimulus so that it "
            "declares its breakpoints (an empty tuple if it is smooth)")
    raise ConfigurationError(f"stimulus must be a dynode.stimuli.Stimulus, a tensor or a dict of "
                             f"tensors, got {type(stimulus).__name__}")
