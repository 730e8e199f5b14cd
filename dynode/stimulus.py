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

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Union

import torch
from torch import Tensor

from dynode.errors import ConfigurationError

__all__ = ["Stimulus", "Constant", "Pulse", "Sum", "as_stimulus", "merge_conditions", "StimulusValue"]

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
        return Sum(self, other)


def _move(value: StimulusValue, device, dtype) -> StimulusValue:
    def mv(x: Tensor) -> Tensor:
        return x.to(device=device, dtype=dtype if (dtype is not None and x.is_floating_point()) else None)
    return _map(value, mv)


class Constant(Stimulus):
    """``I(t) = value`` for all ``t`` (no breakpoints)."""

    def __init__(self, value, *, conditions: Mapping[str, Sequence] | None = None):
        self.value = _as_value(value, "Constant value")
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
        new = copy.copy(self)
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


def merge_conditions(parts: Sequence[Mapping[str, Sequence]], batch: int | None = None) -> dict[str, list]:
    """Merge per-sample condition labels; a key given twice must carry the same labels."""
    out: dict[str, list] = {}
    for cond in parts:
        for k, v in cond.items():
            v = list(v)
            if k in out and out[k] != v:
                raise ConfigurationError(f"condition {k!r} is given twice with different labels")
            out[k] = v
    if batch is not None:
        bad = {k: len(v) for k, v in out.items() if len(v) != batch}
        if bad:
            raise ConfigurationError(f"condition labels must have one entry per sample (batch "
                                     f"{batch}); lengths: {bad}")
    return out


class Sum(Stimulus):
    """``I(t) = sum_i I_i(t)``; breakpoints are the union of the parts' breakpoints.

    The result is memoised on the identity of the parts' outputs: while every part returns
    its cached tensor (constant pieces), the sum is not recomputed.
    """

    def __init__(self, *parts: Stimulus, conditions: Mapping[str, Sequence] | None = None):
        if len(parts) < 2:
            raise ConfigurationError("Sum needs at least two stimuli")
        for p in parts:
            if not isinstance(p, Stimulus):
                raise ConfigurationError(f"Sum parts must be Stimulus objects, got {type(p).__name__}")
        self.parts = tuple(parts)
        self.breakpoints = tuple(sorted({b for p in parts for b in p.breakpoints}))
        self.conditions = merge_conditions([p.conditions for p in parts] + [conditions or {}])
        self._last_ids: tuple | None = None
        self._last: StimulusValue | None = None
        self._keep: list = []

    def __call__(self, t: float) -> StimulusValue:
        values = [p(t) for p in self.parts]
        ids = tuple(id(v) for v in values)
        if ids == self._last_ids:
            return self._last
        if len({isinstance(v, Mapping) for v in values}) > 1:
            raise ConfigurationError("Sum: parts return a mix of tensors and dicts; give every "
                                     "part the same input= (or none)")
        if isinstance(values[0], Mapping):
            out: dict[str, Tensor] = {}
            for v in values:
                for k, x in v.items():
                    out[k] = x if k not in out else out[k] + x
            result: StimulusValue = out
        else:
            result = values[0]
            for v in values[1:]:
                result = result + v
        self._last_ids, self._last = ids, result
        # keep the parts' outputs alive so that their ids cannot be reused by new tensors
        self._keep = values
        return result

    def to(self, device=None, dtype=None) -> "Sum":
        return Sum(*(p.to(device, dtype) for p in self.parts), conditions=self.conditions)

    def __repr__(self) -> str:
        return "Sum(" + ", ".join(repr(p) for p in self.parts) + ")"
