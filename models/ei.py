r"""Excitatory/inhibitory split with Dale's law: an inhibitory population per area.

The area itself is the excitatory population ``E`` (its name, inputs, outputs and readout are
unchanged); :func:`add_inhibition` adds an inhibitory population ``I`` with its own time
constant and the local E/I loop:

.. math::

    \tau_E \frac{dr_E}{dt} = -r_E + \Phi_E\big(D_E + W_{EE} r_E(t - d_{EE}) - W_{EI}\, r_I(t - d_{IE})\big)

    \tau_I \frac{dr_I}{dt} = -r_I + \Phi_I\big(W_{IE}\, r_E(t - d_{EI}) - W_{II}\, r_I(t - d_{II})\big)

with every ``W`` elementwise **nonnegative** (``W = |V|`` of a raw parameter ``V``, applied
with its sign in the operator, :class:`SignedConv`), so Dale's law holds after any optimizer
step: E units only excite, I units only inhibit, within the area's local circuit. (Projections
between areas are the network's own operators and are not sign-constrained; with
``Phi = relu`` rates are nonnegative, so E stays excitatory.) The dyrcnn option
``ei={...}`` also makes ``W_EE`` nonnegative (``dale_recurrence``).

Initialisation: ``|N(0, 1)|`` scaled to the mean ``gain / fan_in``, so that every row of a
nonnegative operator sums to about ``gain`` and its spectral radius (the Perron root, at most
the largest row sum) is about ``gain`` whatever the width (default 0.5 for the E/I loop, the
recurrence's ``gain`` for ``W_EE``). With a relu ``Phi`` an inhibition-stabilised steady state for a constant drive
``D >= 0`` (one E and one I unit, no ``W_II``) is ``r_I = w_{IE} r_E`` and
``r_E = D / (1 - w_{EE} + w_{EI} w_{IE})`` while ``w_{EE} < 1 + w_{EI} w_{IE}``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynode.errors import ConfigurationError
from dynode.models.normalization import _check_area

__all__ = ["SignedConv", "add_inhibition", "signed_recurrence", "dale_signs"]


class SignedConv(nn.Module):
    """``y = sign * (|V| * x)``: a ``k x k`` convolution (``(C, H, W)`` populations, ``groups``
    allowed) or a linear map (flat ``(F,)`` populations, ``kernel_size=None``) whose effective
    weights all have the sign ``sign`` (``+1`` excitatory, ``-1`` inhibitory), whatever value
    the raw ``weight`` takes. Scaling ``weight`` by a positive factor scales the map by it (the
    trainer's spectral-radius projection stays exact)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int | None = 3, *, sign: int = 1,
                 groups: int = 1, gain: float = 0.5):
        super().__init__()
        if sign not in (1, -1):
            raise ConfigurationError(f"SignedConv sign must be +1 or -1, got {sign!r}")
        if kernel_size is not None and (kernel_size < 1 or kernel_size % 2 == 0):
            raise ConfigurationError(f"SignedConv kernel_size must be odd and >= 1, got {kernel_size}")
        if c_in % groups or c_out % groups:
            raise ConfigurationError(f"SignedConv: groups={groups} must divide {c_in} and {c_out}")
        self.c_in, self.c_out, self.kernel_size, self.sign, self.groups = c_in, c_out, kernel_size, sign, groups
        k = kernel_size or 1
        shape = (c_out, c_in // groups, k, k) if kernel_size is not None else (c_out, c_in)
        fan_in = (c_in // groups) * k * k
        w = torch.empty(shape)
        with torch.no_grad():  # |N(0, 1)| scaled to mean gain / fan_in: every row sums to ~gain
            w.normal_().abs_().mul_(float(gain) / (fan_in * math.sqrt(2 / math.pi)))
        self.weight = nn.Parameter(w)

    def effective_weight(self) -> Tensor:
        """The signed weights ``sign * |V|`` the operator applies."""
        return self.weight.abs() if self.sign > 0 else -self.weight.abs()

    def forward(self, x: Tensor) -> Tensor:
        w = self.effective_weight()
        if self.kernel_size is None:
            return F.linear(x, w)
        return F.conv2d(x, w, padding=self.kernel_size // 2, groups=self.groups)

    def extra_repr(self) -> str:
        kind = "excitatory" if self.sign > 0 else "inhibitory"
        k = "linear" if self.kernel_size is None else f"kernel_size={self.kernel_size}"
        return f"{self.c_in} -> {self.c_out}, {k}, groups={self.groups}, {kind}"


def _kernel(shape: tuple[int, ...], kernel_size: int, what: str) -> int | None:
    if len(shape) == 1:
        return None
    if len(shape) != 3:
        raise ConfigurationError(f"{what}: E/I operators join (C, H, W) or flat (F,) populations, got {shape}")
    return kernel_size


def signed_recurrence(type: str, channels: int, kernel_size: int = 3, *, sign: int = 1,
                      gain: float = 0.1, flat: bool = False) -> SignedConv:
    """A sign-constrained recurrence of ``type`` ``"full"``, ``"depthwise"``, ``"pointwise"`` or
    ``"self"`` (see :mod:`dynode.models.recurrence`); ``flat``: a linear map on ``(F,)``."""
    if flat:
        if type not in ("full", "self"):
            raise ConfigurationError(f"a sign-constrained recurrence on a flat population is 'full'; got {type!r}")
        return SignedConv(channels, channels, None, sign=sign, gain=gain)
    spec = {"full": (kernel_size, 1), "depthwise": (kernel_size, channels), "pointwise": (1, 1),
            "self": (1, channels)}
    if type not in spec:
        raise ConfigurationError(f"Dale's law for the recurrence supports types {sorted(spec)}, got "
                                 f"{type!r}; use one of them or pass dale_recurrence=False")
    k, groups = spec[type]
    return SignedConv(channels, channels, k, sign=sign, groups=groups, gain=gain)


def add_inhibition(net, area: str, *, channels: int | None = None, ratio: float = 0.25,
                   tau: float | None = None, kernel_size: int = 3, delay_ei: float = 0.0,
                   delay_ie: float = 0.0, inhibitory_recurrence: bool = True, delay_ii: float = 0.0,
                   gain: float = 0.5, phi: str | nn.Module = "relu", name: str | None = None) -> str:
    """Add an inhibitory population ``name`` (default ``f"{area}_inh"``) to ``area`` (see the
    module doc): ``channels`` (default ``ratio`` times the area's, at least 1) at the area's
    resolution, time constant ``tau`` (default the area's), ``E -> I`` (delay ``delay_ei``),
    ``I -> E`` (``delay_ie``) and, with ``inhibitory_recurrence``, ``I -> I`` (``delay_ii``),
    all through :class:`SignedConv` of ``kernel_size`` with Dale's signs. Returns ``name``."""
    pop = _check_area(net, area, "add_inhibition", "inhibition from the rates cannot enter u")
    what = f"add_inhibition({area!r})"
    shape = pop.shape
    k = _kernel(shape, kernel_size, what)
    if channels is None:
        if not (0 < ratio and math.isfinite(ratio)):
            raise ConfigurationError(f"{what}: ratio (inhibitory / excitatory channels) must be > 0, got {ratio}")
        channels = max(1, int(round(shape[0] * ratio)))
    channels = int(channels)
    if channels < 1:
        raise ConfigurationError(f"{what}: channels must be >= 1, got {channels}")
    tau = pop.tau_min() if tau is None else tau
    name = name or f"{area}_inh"
    net.add_population(name, shape=(channels, *shape[1:]), tau=tau, phi=phi)
    net.populations[name].role = "inhibitory"
    c = shape[0]
    net.connect(area, name, SignedConv(c, channels, k, sign=1, gain=gain), delay=delay_ei)
    net.connect(name, area, SignedConv(channels, c, k, sign=-1, gain=gain), delay=delay_ie)
    if inhibitory_recurrence:
        net.connect(name, name, SignedConv(channels, channels, k, sign=-1, gain=gain), delay=delay_ii)
    return name


def dale_signs(net) -> dict[str, int]:
    """``{connection label: sign}`` of every sign-constrained connection of ``net``."""
    return {c.label: c.op.sign for c in net.connections if isinstance(c.op, SignedConv)}

