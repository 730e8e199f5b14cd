"""The parts a :class:`~dynode.network.Network` is built of: a :class:`Population` (its shape,
``tau``, ``Phi``, bias, combine and incoming operators) and a :class:`Connection` (``src -> dst``
through an operator, with a delay). Both are made by the network's builder methods
(``add_population``, ``connect``), which check them against the rest of the network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dynode.checks import check_bias, check_tau, output_shape
from dynode.errors import ConfigurationError, ShapeError
from dynode.integrate import require_memory

__all__ = ["Population", "Connection"]

_FLOAT_BYTES = 4  # a population's tau and bias are float32 when built


@dataclass(frozen=True)
class Connection:
    """A connection ``src -> dst`` through ``op`` with transmission delay ``delay`` (ms)."""

    src: str
    dst: str
    delay: float
    op: nn.Module
    skip_initial: bool = False

    @property
    def label(self) -> str:
        return f"{self.src} -> {self.dst}"


class Population(nn.Module):
    """One population: its shape, ``tau`` (ms), activation ``phi``, bias and combine module.

    The incoming operators live in ``self.incoming`` (keyed by source name), so
    ``state_dict`` keys read ``populations.V1.incoming.image.weight``.

    ``combine`` is part of the population's definition: give it to
    :meth:`Network.add_population` or replace it with :meth:`Network.set_combine` (which
    checks the shapes and rebuilds the evaluation plan). Assigning ``pop.combine = ...``
    directly raises, since the network's plan would not see it.
    """

    def __init__(self, name: str, shape: tuple[int, ...], tau: float | Tensor, phi: nn.Module,
                 bias: bool | str, combine: nn.Module | None):
        super().__init__()
        self.name, self.shape = name, shape
        # what the population is: "area" (a layer of the model), or an auxiliary population added
        # by a component of dynode.models ("normalization", "adaptation", "inhibitory")
        self.role = "area"
        self.phi = phi
        self.combine = combine
        self._combine_locked = True  # from now on only Network.set_combine replaces it
        self.incoming = nn.ModuleDict()
        self.delays: dict[str, float] = {}
        self.u_shape: tuple[int, ...] | None = shape  # shape of u; None: learnt from the first input
        what = f"population {name!r}"
        if isinstance(tau, Tensor):  # a float32 copy (and the checks' temporaries) where tau lives
            require_memory(tau.numel() * (_FLOAT_BYTES + 1), tau.device, f"{what}: its tau of shape "
                           f"{tuple(tau.shape)}", "give tau as a number, or per channel (C, 1, 1)")
        check_tau(tau, shape, what)
        check_bias(bias, what)
        if isinstance(tau, Tensor):
            self.register_buffer("tau", tau.detach().to(dtype=torch.float32, copy=True))
        else:
            self.tau = float(tau)
        if bias is True or bias == "channel":
            self.bias = nn.Parameter(torch.zeros((shape[0],) + (1,) * (len(shape) - 1)))
        elif bias == "unit":
            require_memory(math.prod(shape) * torch.get_default_dtype().itemsize, "cpu",
                           f"{what}: its per-unit bias (shape {shape})",
                           "make the population smaller, or use bias='channel' or False")
            self.bias = nn.Parameter(torch.zeros(shape))
        else:
            self.bias = None

    def __setattr__(self, name: str, value) -> None:
        if name == "combine" and self.__dict__.get("_combine_locked", False):
            raise ConfigurationError(
                f"population {self.name!r}: assigning .combine directly would not reach the network's "
                "evaluation plan; use net.set_combine(name, combine) (it checks the shapes) or pass "
                "combine= to add_population")
        super().__setattr__(name, value)

    def _replace_combine(self, combine: nn.Module | None) -> None:
        super().__setattr__("combine", combine)  # for Network.set_combine: past the guard above

    def learn_u_shape(self, u_shape: tuple[int, ...], what: str) -> tuple[int, ...]:
        """Set the shape of ``u`` of a pipeline population from its first input, once the
        pipeline is seen to map it to the population's shape."""
        after = output_shape(self.phi, u_shape, f"population {self.name!r} pipeline")
        if after != self.shape:
            raise ShapeError(f"{what} gives {u_shape}, which {self.name!r}'s pipeline maps to {after}, "
                             f"not to its shape {self.shape}")
        self.u_shape = u_shape
        return u_shape

    def tau_min(self) -> float:
        return float(self.tau.min()) if isinstance(self.tau, Tensor) else self.tau

    def extra_repr(self) -> str:
        tau = f"tensor{tuple(self.tau.shape)}" if isinstance(self.tau, Tensor) else f"{self.tau:g}"
        return f"shape={self.shape}, tau={tau} ms"
