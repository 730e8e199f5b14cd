r"""The parts a :class:`~dynode.network.Network` is built of: a :class:`Population` (its shape,
``tau``, ``Phi``, bias, combine and incoming operators), a :class:`Connection` (``src -> dst``
through an operator, with a delay) and :class:`Bounded`, a learnt time constant or delay. They
are made by the network's builder methods (``add_population``, ``connect``), which check them
against the rest of the network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dynode.brownian import check_noise
from dynode.checks import check_bias, check_bounds, check_tau, output_shape
from dynode.errors import ConfigurationError, ShapeError
from dynode.integrate import require_memory

__all__ = ["Population", "Connection", "Bounded"]

_FLOAT_BYTES = 4  # a population's tau and bias are float32 when built
_EDGE = 1e-6  # a value on a bound starts this fraction of the log range inside it


class Bounded(nn.Module):
    r"""A positive quantity (ms) learnt inside ``[lo, hi]``: a time constant or a delay.

    .. math:: x = lo \, (hi / lo)^{\sigma(\rho)}, \qquad \sigma(\rho) = 1 / (1 + e^{-\rho})

    with ``rho`` the parameter (``raw``, of the value's shape). ``x`` never leaves the bounds,
    and a step in ``rho`` changes ``x`` by a factor whatever its scale; the default bounds
    ``(x0 / 2, 2 x0)`` start at ``rho = 0``. A value on a bound starts just inside it
    (``1e-6`` of the log range). ``bounds`` and the value are checked by
    :func:`dynode.checks.check_bounds`.
    """

    def __init__(self, value: float | Tensor, bounds: tuple[float, float] | None, what: str, option: str):
        super().__init__()
        self.lo, self.hi = check_bounds(bounds, value, what, option)
        frac = torch.log(torch.as_tensor(value, dtype=torch.float64) / self.lo) / math.log(self.hi / self.lo)
        self.raw = nn.Parameter(torch.logit(frac.clamp(_EDGE, 1 - _EDGE)).to(torch.float32))
        self._seen: tuple = ()

    def forward(self) -> Tensor:
        """The learnt value ``x`` (a tensor of ``raw``'s shape, in the autograd graph)."""
        return self.lo * torch.exp(torch.sigmoid(self.raw) * math.log(self.hi / self.lo))

    def value(self) -> float:
        """``x`` as a float (its smallest entry), read once per change of ``raw`` (no per-step
        device sync: the read is redone only when the optimizer or a load changes ``raw``)."""
        raw = self.raw
        key = (raw._version, raw.data_ptr(), raw.dtype)
        if self._seen[:1] != (key,):
            with torch.no_grad():
                self._seen = (key, float(self.forward().min()))
        return self._seen[1]

    def lag(self, history, src: str) -> Tensor:
        """``r_src(t - x)`` from ``history``, differentiable in ``x`` (see ``History.lag_at``)."""
        return history.lag_at(src, self.forward(), self.value())

    def extra_repr(self) -> str:
        return f"bounds=({self.lo:g}, {self.hi:g}) ms, shape={tuple(self.raw.shape)}"


@dataclass(frozen=True)
class Connection:
    """A connection ``src -> dst`` through ``op`` with transmission delay ``delay`` (ms);
    ``learnt``: the delay is learnt (``delay`` is then its value when built)."""

    src: str
    dst: str
    delay: float
    op: nn.Module
    skip_initial: bool = False
    learnt: Bounded | None = None

    def current_delay(self) -> float:
        """The delay now (ms): ``delay``, or the learnt one's value."""
        return self.delay if self.learnt is None else self.learnt.value()

    @property
    def label(self) -> str:
        return f"{self.src} -> {self.dst}"


class Population(nn.Module):
    """One population: its shape, ``tau`` (ms), activation ``phi``, bias and combine module.

    The incoming operators live in ``self.incoming`` (keyed by source name), so
    ``state_dict`` keys read ``populations.V1.incoming.image.weight``; learnt delays in
    ``self.learnt_delays`` (``populations.V2.learnt_delays.V1.raw``), a learnt ``tau`` in
    ``self.learnt_tau`` (``populations.V1.learnt_tau.raw``; ``pop.tau`` is then its value, a
    tensor in the autograd graph).

    ``noise``: ``sigma`` of the additive noise (a number >= 0, or a tensor per channel or unit;
    0: none), ``tau dr = (-r + Phi(u)) dt + sigma sqrt(2 tau) dW`` (see :mod:`dynode.brownian`):
    ``sigma`` is the stationary standard deviation of a linearly relaxing rate. Set it with
    ``add_population(..., noise=sigma)`` or ``pop.noise = sigma`` (checked either way).

    ``combine`` is part of the population's definition: give it to
    :meth:`Network.add_population` or replace it with :meth:`Network.set_combine` (which
    checks the shapes and rebuilds the evaluation plan). Assigning ``pop.combine = ...``
    directly raises, since the network's plan would not see it.
    """

    def __init__(self, name: str, shape: tuple[int, ...], tau: float | Tensor, phi: nn.Module,
                 bias: bool | str, combine: nn.Module | None, learn_tau: bool = False,
                 tau_bounds: tuple[float, float] | None = None, noise: float | Tensor = 0.0):
        super().__init__()
        self.name, self.shape = name, shape
        # what the population is: "area" (a layer of the model), or an auxiliary population added
        # by a component of dynode.models ("normalization", "adaptation", "inhibitory")
        self.role = "area"
        self.phi = phi
        self.combine = combine
        self._combine_locked = True  # from now on only Network.set_combine replaces it
        self.incoming = nn.ModuleDict()
        self.learnt_delays = nn.ModuleDict()
        self.delays: dict[str, float] = {}
        self.u_shape: tuple[int, ...] | None = shape  # shape of u; None: learnt from the first input
        what = f"population {name!r}"
        if isinstance(tau, Tensor):  # a float32 copy (and the checks' temporaries) where tau lives
            require_memory(tau.numel() * (_FLOAT_BYTES + 1), tau.device, f"{what}: its tau of shape "
                           f"{tuple(tau.shape)}", "give tau as a number, or per channel (C, 1, 1)")
        check_tau(tau, shape, what)
        check_bias(bias, what)
        if learn_tau:
            self.learnt_tau = Bounded(tau, tau_bounds, what, "tau_bounds")
        elif tau_bounds is not None:
            raise ConfigurationError(f"{what}: tau_bounds bound a learnt tau; pass learn_tau=True too "
                                     "(or drop tau_bounds)")
        elif isinstance(tau, Tensor):
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
        self.noise = noise

    @property
    def noise(self) -> float | Tensor:
        """``sigma`` of the additive noise (a float, or a float32 tensor buffer ``noise_sigma``)."""
        return self.__dict__["_buffers"].get("noise_sigma", self.__dict__.get("_noise", 0.0))

    @noise.setter
    def noise(self, sigma: float | Tensor) -> None:
        sigma = check_noise(sigma, self.shape, f"population {self.name!r}")
        if isinstance(sigma, Tensor) and not bool(sigma.any()):
            sigma = 0.0  # all zero: no noise (as the number 0)
        buffers = self.__dict__["_buffers"]
        if isinstance(sigma, Tensor):
            ref = next((t for t in (*self.parameters(), *self.buffers()) if t.is_floating_point()), None)
            self.register_buffer("noise_sigma", sigma if ref is None else sigma.to(ref.device, ref.dtype))
            self.__dict__["_noise"] = None
        else:
            buffers.pop("noise_sigma", None)
            self.__dict__["_noise"] = sigma

    def diffusion(self) -> float | Tensor | None:
        r"""``g = sigma sqrt(2 / tau)`` (ms^-1/2), the coefficient of ``dW`` in ``dr = f dt + g dW``;
        ``None`` without noise. A tensor where ``sigma`` or ``tau`` is one (a learnt ``tau``: in
        its autograd graph)."""
        sigma, tau = self.noise, self.tau
        if not isinstance(sigma, Tensor) and sigma == 0.0:
            return None
        if isinstance(tau, Tensor):  # a buffer or a learnt tau: on the module's device and dtype
            return sigma * torch.sqrt(2.0 / tau)
        return sigma * math.sqrt(2.0 / tau)

    def __getattr__(self, name: str):
        if name == "tau":  # a learnt tau: its value now
            learnt = self.__dict__["_modules"].get("learnt_tau")
            if learnt is not None:
                return learnt()
        return super().__getattr__(name)

    @property
    def tau_bounds(self) -> tuple[float, float] | None:
        """``(lo, hi)`` ms of a learnt tau; ``None`` for a fixed one."""
        learnt = self._modules.get("learnt_tau")
        return None if learnt is None else (learnt.lo, learnt.hi)

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

    def delay_of(self, src: str) -> float:
        """The delay (ms) of the connection from ``src`` now (a learnt one: its value)."""
        learnt = self.learnt_delays._modules.get(src)
        return self.delays[src] if learnt is None else learnt.value()

    def tau_min(self) -> float:
        learnt = self._modules.get("learnt_tau")
        if learnt is not None:
            return learnt.value()
        return float(self.tau.min()) if isinstance(self.tau, Tensor) else self.tau

    def extra_repr(self) -> str:
        noise = self.noise
        noise = ("" if not isinstance(noise, Tensor) and noise == 0.0 else
                 f", noise={f'tensor{tuple(noise.shape)}' if isinstance(noise, Tensor) else f'{noise:g}'}")
        if "learnt_tau" in self._modules:
            return f"shape={self.shape}, tau learnt{noise}"
        tau = f"tensor{tuple(self.tau.shape)}" if isinstance(self.tau, Tensor) else f"{self.tau:g}"
        return f"shape={self.shape}, tau={tau} ms{noise}"
