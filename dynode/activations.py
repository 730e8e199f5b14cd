"""Activation functions ``Phi`` of the rate equation ``tau dr/dt = -r + Phi(u)``.

Every activation is an ``nn.Module`` so that it is resolved once, when the network is built;
the step loop never looks anything up by name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dynode.errors import ConfigurationError

__all__ = ["Supralinear", "RectifiedPower", "get_activation", "ACTIVATIONS"]


class Supralinear(nn.Module):
    """``Phi(x) = k * sign(x) * |x|^n`` (odd-symmetric power law, e.g. n = 1.8, k = 0.8)."""

    def __init__(self, n: float = 1.8, k: float = 0.8):
        super().__init__()
        if n <= 0 or k <= 0:
            raise ConfigurationError(f"supralinear needs n > 0 and k > 0, got n={n}, k={k}")
        self.n, self.k = float(n), float(k)

    def forward(self, x: Tensor) -> Tensor:
        return self.k * torch.sign(x) * x.abs().pow(self.n)

    def extra_repr(self) -> str:
        return f"n={self.n}, k={self.k}"


class RectifiedPower(nn.Module):
    """``Phi(x) = k * relu(x)^n`` (the rectified power law of the stabilised supralinear network)."""

    def __init__(self, n: float = 2.0, k: float = 1.0):
        super().__init__()
        if n <= 0 or k <= 0:
            raise ConfigurationError(f"rectified_power needs n > 0 and k > 0, got n={n}, k={k}")
        self.n, self.k = float(n), float(k)

    def forward(self, x: Tensor) -> Tensor:
        return self.k * torch.relu(x).pow(self.n)

    def extra_repr(self) -> str:
        return f"n={self.n}, k={self.k}"


ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU,
    "identity": nn.Identity,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
    "supralinear": Supralinear,
    "rectified_power": RectifiedPower,
}


def get_activation(phi: str | tuple | nn.Module | Callable[[Tensor], Tensor], **params) -> nn.Module:
    """Resolve ``phi`` (a name from :data:`ACTIVATIONS`, a ``(name, {params})`` pair, a module or
    a callable) to a module.

    Parameters (``n``, ``k`` for the power laws) are passed as keyword arguments, or in the
    pair form, which also works inside a population pipeline:
    ``pipeline=["sum", ("supralinear", {"n": 1.8, "k": 0.8})]``.
    """
    if isinstance(phi, nn.Module):
        if params:
            raise ConfigurationError(f"activation parameters {sorted(params)} given with a module; "
                                     "configure the module itself instead")
        return phi
    if isinstance(phi, tuple) and len(phi) == 2 and isinstance(phi[0], str) and isinstance(phi[1], dict):
        if params:
            raise ConfigurationError(f"activation {phi[0]!r}: give its parameters either in the tuple "
                                     "or as keywords, not both")
        return get_activation(phi[0], **phi[1])
    if isinstance(phi, str):
        try:
            factory = ACTIVATIONS[phi]
        except KeyError:
            raise ConfigurationError(
                f"unknown activation {phi!r}; known: {', '.join(sorted(ACTIVATIONS))} "
                "(or pass an nn.Module)") from None
        try:
            return factory(**params)
        except TypeError as exc:
            raise ConfigurationError(f"activation {phi!r} does not take {sorted(params)}: {exc}") from None
    if callable(phi):
        if params:
            raise ConfigurationError("activation parameters given with a callable")
        return Lambda(phi)
    raise ConfigurationError(f"phi must be a name, an nn.Module or a callable, got {type(phi).__name__}")


class Lambda(nn.Module):
    def __init__(self, fn: Callable[[Tensor], Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))
