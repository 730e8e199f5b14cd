"""Argument checks shared by the network builder and the components of :mod:`dynode.models`.

Each ``check_*`` returns the value in its canonical form (or nothing) and raises a
:class:`~dynode.errors.ConfigurationError` (a :class:`~dynode.errors.ShapeError` for shapes) whose
message starts with ``what`` and names what to change. :func:`output_shape` and
:func:`combine_shape` find a module's per-sample output shape by a trial call, on the meta device
where the module allows it (:func:`trial_shape`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from dynode.errors import ConfigurationError, ShapeError
from dynode.integrate import require_memory

__all__ = ["check_tau", "check_bias", "check_delay", "check_bounds", "check_number", "check_flag", "as_shape",
           "output_shape", "combine_shape", "trial_shape"]


def check_tau(tau, shape: tuple[int, ...], what: str) -> None:
    """Refuse a ``tau`` that a population of ``shape`` cannot have: a number (not a bool) or a real
    tensor, finite and > 0 ms, broadcasting to ``shape``, not requiring a gradient (a tensor tau is
    a fixed buffer; ``learn_tau=True`` learns it). ``what`` names the population in the message."""
    if isinstance(tau, Tensor):
        if tau.is_meta or tau.dtype == torch.bool or tau.is_complex():
            raise ConfigurationError(f"{what}: tau must be a real tensor of ms with values, got "
                                     f"{tau.dtype} on {tau.device}")
        if tau.requires_grad:
            raise ConfigurationError(f"{what}: tau requires a gradient, but a tensor tau is a fixed buffer; "
                                     "pass tau.detach(), and learn_tau=True to learn it")
        try:
            torch.broadcast_shapes(tau.shape, shape)
        except RuntimeError:
            raise ShapeError(f"{what}: tau of shape {tuple(tau.shape)} does not broadcast to the "
                             f"population shape {shape}") from None
        if tau.numel() == 0 or not bool(torch.all(tau > 0)) or not bool(torch.all(torch.isfinite(tau))):
            raise ConfigurationError(f"{what}: tau must be finite and > 0 ms (every entry)")
        return
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
        raise ConfigurationError(f"{what}: tau must be a number of ms (or a tensor of them), got {tau!r}")
    if not (tau > 0 and math.isfinite(tau)):
        raise ConfigurationError(f"{what}: tau must be finite and > 0 ms, got {tau}")


def check_bias(bias, what: str) -> None:
    """A population's ``bias`` option: ``False``/``None``, ``True``/``"channel"`` or ``"unit"``."""
    if not (bias is None or isinstance(bias, bool) or (isinstance(bias, str) and bias in ("channel", "unit"))):
        raise ConfigurationError(f"{what}: bias must be False, True/'channel' or 'unit', got {bias!r}")


def check_delay(delay, what: str) -> float:
    """``delay`` as a float of ms: a number (or one-element tensor), finite and >= 0."""
    if isinstance(delay, bool) or not (isinstance(delay, numbers.Real)
                                       or (isinstance(delay, Tensor) and delay.numel() == 1
                                           and not delay.is_meta)):
        raise ConfigurationError(f"{what}: delay must be a number of ms, got {delay!r}")
    delay = float(delay)
    if not (delay >= 0 and math.isfinite(delay)):
        raise ConfigurationError(f"{what}: delay must be finite and >= 0 ms, got {delay}")
    return delay


def check_bounds(bounds, value, what: str, option: str) -> tuple[float, float]:
    """``bounds`` of a learnt quantity (``option``: the argument's name, e.g. ``"tau_bounds"``) as
    ``(lo, hi)`` floats, ``0 < lo < hi < inf``, with every entry of ``value`` (a number or a
    tensor, ms) inside ``[lo, hi]``; ``bounds=None``: the default ``(min / 2, 2 max)`` of the values."""
    vals = value.detach().flatten().tolist() if isinstance(value, Tensor) else [float(value)]
    if bounds is None:
        return min(vals) / 2, max(vals) * 2
    if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
        raise ConfigurationError(f"{what}: {option} must be a pair (lo, hi) of ms, got {bounds!r}")
    lo, hi = (check_number(b, f"{what}: {option}[{i}]", positive=True) for i, b in enumerate(bounds))
    if not lo < hi:
        raise ConfigurationError(f"{what}: {option} = ({lo:g}, {hi:g}) needs lo < hi")
    outside = [v for v in vals if not lo <= v <= hi]
    if outside:
        raise ConfigurationError(f"{what}: the initial value {outside[0]:g} ms lies outside {option} = "
                                 f"({lo:g}, {hi:g}); widen the bounds or start inside them")
    return lo, hi


def check_number(value, what: str, *, positive: bool = False) -> float:
    """``value`` as a float: a real number (not a bool or a string), finite and >= 0 (``positive``:
    > 0); else a ConfigurationError ``"<what> must be ..."``."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or value < 0 or (positive and value == 0)):
        raise ConfigurationError(f"{what} must be finite and {'> 0' if positive else '>= 0'} (a number), "
                                 f"got {value!r}")
    return float(value)


def check_flag(value, what: str) -> bool:
    """A bool option (a string such as ``"False"`` would be true): refused unless a bool."""
    if not isinstance(value, bool):
        raise ConfigurationError(f"{what} must be True or False, got {value!r}")
    return value


def as_shape(shape, what: str) -> tuple[int, ...]:
    """A per-sample shape (an int or a sequence of them) as a non-empty tuple of positive ints."""
    if isinstance(shape, int):
        shape = (shape,)
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{what}: shape must be a tuple of positive ints, got {shape!r}") from None
    if not out or any(s <= 0 for s in out):
        raise ConfigurationError(f"{what}: shape must be a non-empty tuple of positive ints, got {shape!r}")
    return out


def combine_shape(combine: nn.Module, shapes: Mapping[str, tuple[int, ...]], what: str
                  ) -> tuple[int, ...]:
    """Per-sample shape of ``combine({src: batch of shape})`` (see :func:`trial_shape`)."""
    return trial_shape(combine, lambda new: {s: new((1, *sh)) for s, sh in shapes.items()},
                       f"{what}: the combine", f"inputs of shapes {dict(shapes)}")


def output_shape(op: nn.Module, in_shape: tuple[int, ...], what: str) -> tuple[int, ...]:
    """Per-sample output shape of ``op`` on ``in_shape`` (see :func:`trial_shape`)."""
    return trial_shape(op, lambda new: new((1, *in_shape)), f"{what}: the operator",
                       f"an input of shape (batch, *{in_shape})")


def trial_shape(module: nn.Module, inputs, what: str, given: str) -> tuple[int, ...]:
    """Per-sample shape of ``module(inputs(new))`` for one sample: on the meta device (no FLOPs, no
    memory) when the module allows it, else on zeros of its parameters' device and dtype, once
    :func:`~dynode.integrate.require_memory` has seen that those zeros (and as much again for the
    output) fit."""
    numel: list[int] = []  # of each sample input, for the memory check of the fallback

    def meta(shape):
        numel.append(math.prod(shape))
        return torch.empty(shape, device="meta")

    try:
        with torch.no_grad():
            out = module(inputs(meta))
    except (NotImplementedError, RuntimeError, TypeError) as meta_error:
        p = next(module.parameters(), None)
        kw = dict(device=p.device, dtype=p.dtype) if p is not None and p.is_floating_point() else {}
        itemsize = kw.get("dtype", torch.get_default_dtype()).itemsize
        require_memory(2 * sum(numel) * itemsize, kw.get("device", "cpu"),
                       f"{what}: trying it on zeros of {given} (it does not run on the meta device)",
                       "make the population smaller, or make the module run on meta tensors")
        try:
            with torch.no_grad():
                out = module(inputs(lambda shape: torch.zeros(shape, **kw)))
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:
            raise ShapeError(f"{what} cannot take {given}: {exc}") from meta_error
    if not isinstance(out, Tensor):
        raise ShapeError(f"{what} must return a tensor, got {type(out).__name__}")
    return tuple(out.shape[1:])
