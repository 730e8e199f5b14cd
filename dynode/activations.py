"""Activation functions ``Phi`` of the rate equation ``tau dr/dt = -r + Phi(u)``.

Every activation is an ``nn.Module`` so that it is resolved once, when the network is built;
the step loop never looks anything up by name.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor, nn

from dynode.errors import ConfigurationError

__all__ = ["Supralinear", "RectifiedPower", "get_activation", "activation_parameters", "ACTIVATIONS"]


def _power_law(name: str, n, k) -> tuple[float, float]:
    """``(n, k)`` as floats, both finite and > 0 (a NaN or a string is refused, not kept)."""
    for key, v in (("n", n), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (math.isfinite(v) and v > 0):
            raise ConfigurationError(f"{name} needs finite n > 0 and k > 0, got {key}={v!r}")
    return float(n), float(k)


class Supralinear(nn.Module):
    """``Phi(x) = k * sign(x) * |x|^n`` (odd-symmetric power law, e.g. n = 1.8, k = 0.8)."""

    def __init__(self, n: float = 1.8, k: float = 0.8):
        super().__init__()
        self.n, self.k = _power_law("supralinear", n, k)

    def forward(self, x: Tensor) -> Tensor:
        return self.k * torch.sign(x) * x.abs().pow(self.n)

    def extra_repr(self) -> str:
        return f"n={self.n}, k={self.k}"


class RectifiedPower(nn.Module):
    """``Phi(x) = k * relu(x)^n`` (the rectified power law of the stabilised supralinear network)."""

    def __init__(self, n: float = 2.0, k: float = 1.0):
        super().__init__()
        self.n, self.k = _power_law("rectified_power", n, k)

    def forward(self, x: Tensor) -> Tensor:
        return self.k * torch.relu(x).pow(self.n)

    def extra_repr(self) -> str:
        return f"n={self.n}, k={self.k}"


def _softplus(beta: float = 1.0, threshold: float = 20.0) -> nn.Softplus:
    """``nn.Softplus`` with ``beta`` finite and > 0 (``softplus(x) = log(1 + exp(beta x)) / beta``;
    0 divides by zero) and a finite ``threshold`` (linear above ``beta x > threshold``)."""
    for key, v, positive in (("beta", beta, True), ("threshold", threshold, False)):
        if (isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v)
                or (positive and v <= 0)):
            raise ConfigurationError(f"softplus needs a finite {key}{' > 0' if positive else ''}, got {v!r}")
    return nn.Softplus(float(beta), float(threshold))


# name -> factory; the factory's named keyword parameters are what the activation takes
# (see activation_parameters): nn.Identity, nn.Tanh, nn.Sigmoid take none, although their
# constructors accept (and drop) any argument; relu's ``inplace`` is not offered (an in-place
# Phi would overwrite u, which may be another population's state).
ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU,
    "identity": nn.Identity,
    "tanh": nn.Tanh,
    "softplus": _softplus,
    "sigmoid": nn.Sigmoid,
    "supralinear": Supralinear,
    "rectified_power": RectifiedPower,
}


_NOT_OFFERED = {"inplace": "an in-place Phi would overwrite u, which may be another population's state"}


def activation_parameters(name: str) -> tuple[str, ...]:
    """The keyword parameters the named activation takes: the named parameters of its factory in
    :data:`ACTIVATIONS` (``*args``/``**kwargs`` take nothing: ``nn.Identity`` accepts and drops
    any argument), less ``inplace``."""
    try:
        sig = inspect.signature(ACTIVATIONS[name])
    except (TypeError, ValueError):  # a factory without a signature: it takes nothing we can check
        return ()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p for p, v in sig.parameters.items() if v.kind in kinds and p not in _NOT_OFFERED)


def get_activation(phi: str | tuple | nn.Module | Callable[[Tensor], Tensor], **params) -> nn.Module:
    """Resolve ``phi`` (a name from :data:`ACTIVATIONS`, a ``(name, {params})`` pair, a module or
    a callable) to a module.

    Parameters (``n``, ``k`` for the power laws, ``beta``, ``threshold`` for softplus) are
    passed as keyword arguments, or in the pair form, which also works inside a population
    pipeline: ``pipeline=["sum", ("supralinear", {"n": 1.8, "k": 0.8})]``. A parameter the
    activation does not take (:func:`activation_parameters`; ``identity``, ``relu``, ``tanh``,
    ``sigmoid`` take none) is a :class:`~dynode.errors.ConfigurationError` naming it and what
    the activation takes: nothing given is dropped.
    """
    if isinstance(phi, nn.Module):
        if params:
            raise ConfigurationError(f"activation parameters {sorted(params)} given with a module "
                                     f"({type(phi).__name__}); configure the module itself instead")
        return phi
    if isinstance(phi, tuple) and len(phi) == 2 and isinstance(phi[0], str) and isinstance(phi[1], dict):
        if params:
            raise ConfigurationError(f"activation {phi[0]!r}: give its parameters either in the tuple "
                                     "or as keywords, not both")
        return get_activation(phi[0], **phi[1])
    if isinstance(phi, str):
        if phi not in ACTIVATIONS:
            raise ConfigurationError(
                f"unknown activation {phi!r}; known: {', '.join(sorted(ACTIVATIONS))} "
                "(or pass an nn.Module)")
        takes = activation_parameters(phi)
        unknown = sorted(set(params) - set(takes))
        if unknown:
            why = "".join(f"; {k}: {_NOT_OFFERED[k]}" for k in unknown if k in _NOT_OFFERED)
            offered = f"takes only {list(takes)}" if takes else "takes no parameters"
            raise ConfigurationError(f"activation {phi!r} does not take {unknown}: it {offered}{why} "
                                     "(remove them, or pass a configured nn.Module as phi)")
        try:
            return ACTIVATIONS[phi](**params)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigurationError):
                raise
            raise ConfigurationError(f"activation {phi!r} cannot take {params}: {exc}") from None
    if isinstance(phi, type):  # nn.ReLU rather than nn.ReLU(): calling it would build a module
        raise ConfigurationError(f"phi is the class {phi.__name__}, not an activation; pass an instance "
                                 f"({phi.__name__}(...)) or a name ({', '.join(sorted(ACTIVATIONS))})")
    if callable(phi):
        if params:
            raise ConfigurationError(f"activation parameters {sorted(params)} given with a callable "
                                     f"({getattr(phi, '__name__', type(phi).__name__)}); it takes none: "
                                     "bind them in the callable (functools.partial) instead")
        return Lambda(phi)
    raise ConfigurationError(f"phi must be a name, a (name, {{params}}) pair, an nn.Module or a callable, "
                             f"got {type(phi).__name__}")


class Lambda(nn.Module):
    """A callable ``fn(x) -> Tensor`` as a module (``Phi`` or a pipeline stage)."""

    def __init__(self, fn: Callable[[Tensor], Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))
