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

from dynode.activations import get_activation
from dynode.checks import check_delay, check_flag, check_number, check_tau
from dynode.errors import ConfigurationError
from dynode.integrate import require_memory
from dynode.models.normalization import _check_area, _component_name

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
        if isinstance(sign, bool) or sign not in (1, -1):
            raise ConfigurationError(f"SignedConv sign must be +1 or -1, got {sign!r}")
        for key, v in (("c_in", c_in), ("c_out", c_out), ("groups", groups)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigurationError(f"SignedConv {key} must be an int >= 1, got {v!r}")
        if kernel_size is not None and (isinstance(kernel_size, bool) or not isinstance(kernel_size, int)
                                        or kernel_size < 1 or kernel_size % 2 == 0):
            raise ConfigurationError(f"SignedConv kernel_size must be an odd int >= 1 (or None: linear), "
                                     f"got {kernel_size!r}")
        if c_in % groups or c_out % groups:
            raise ConfigurationError(f"SignedConv: groups={groups} must divide {c_in} and {c_out}")
        gain = check_number(gain, "SignedConv gain")
        self.c_in, self.c_out, self.kernel_size, self.sign, self.groups = c_in, c_out, kernel_size, sign, groups
        k = kernel_size or 1
        shape = (c_out, c_in // groups, k, k) if kernel_size is not None else (c_out, c_in)
        fan_in = (c_in // groups) * k * k
        require_memory(math.prod(shape) * torch.get_default_dtype().itemsize, "cpu",
                       f"SignedConv {c_in} -> {c_out} (weight {shape})", "use fewer channels")
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


def _kernel(shape: tuple[int, ...], kernel_size: int | None, what: str) -> int | None:
    """The operators' kernel: ``kernel_size`` (default 3) for ``(C, H, W)`` populations, ``None``
    (a linear map) for flat ones, which take no kernel_size."""
    if len(shape) == 1:
        if kernel_size is not None:
            raise ConfigurationError(f"{what}: a flat population {shape} is joined by linear maps; "
                                     f"kernel_size={kernel_size!r} does not apply (leave it out)")
        return None
    if len(shape) != 3:
        raise ConfigurationError(f"{what}: E/I operators join (C, H, W) or flat (F,) populations, got {shape}")
    return 3 if kernel_size is None else kernel_size


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


def add_inhibition(net, area: str, *, channels: int | None = None, ratio: float | None = None,
                   tau: float | None = None, kernel_size: int | None = None, delay_ei: float = 0.0,
                   delay_ie: float = 0.0, inhibitory_recurrence: bool = True, delay_ii: float | None = None,
                   gain: float = 0.5, phi: str | nn.Module = "relu", name: str | None = None) -> str:
    """Add an inhibitory population ``name`` (default ``f"{area}_inh"``) to ``area`` (see the
    module doc): ``channels`` (or ``ratio`` times the area's, at least 1; default ratio 0.25)
    at the area's resolution, time constant ``tau`` (default the area's), ``E -> I`` (delay
    ``delay_ei``), ``I -> E`` (``delay_ie``) and, with ``inhibitory_recurrence``, ``I -> I``
    (``delay_ii``, default 0; refused without the recurrence, which would not read it),
    all through :class:`SignedConv` of ``kernel_size`` (default 3; flat populations: linear
    maps, no kernel_size) with Dale's signs. Returns ``name``.

    Every argument is checked (and every operator built) before the network changes, and a
    failure after that leaves it as it was (:meth:`Network.atomic`)."""
    pop = _check_area(net, area, "add_inhibition", "inhibition from the rates cannot enter u")
    what = f"add_inhibition({area!r})"
    shape = pop.shape
    k = _kernel(shape, kernel_size, what)
    if channels is not None and ratio is not None:
        raise ConfigurationError(f"{what}: give channels or ratio, not both (channels={channels!r} would "
                                 f"leave ratio={ratio!r} unread)")
    if not check_flag(inhibitory_recurrence, f"{what}: inhibitory_recurrence") and delay_ii is not None:
        raise ConfigurationError(f"{what}: delay_ii={delay_ii!r} is the delay of the I -> I recurrence, which "
                                 "inhibitory_recurrence=False leaves out; drop one of them")
    if channels is None:
        ratio = 0.25 if ratio is None else ratio
        ratio = check_number(ratio, f"{what}: ratio (inhibitory / excitatory channels)", positive=True)
        channels = max(1, int(round(shape[0] * ratio)))
    elif isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ConfigurationError(f"{what}: channels must be an int >= 1, got {channels!r}")
    tau = pop.tau_min() if tau is None else tau
    name = _component_name(net, area, name, "inh", what)
    i_shape = (channels, *shape[1:])
    try:
        check_tau(tau, i_shape, f"the inhibitory population {name!r}")
        delays = {key: check_delay(d, key) for key, d in
                  (("delay_ei", delay_ei), ("delay_ie", delay_ie),
                   ("delay_ii", 0.0 if delay_ii is None else delay_ii))}
        phi = get_activation(phi)
        c = shape[0]
        ei = SignedConv(c, channels, k, sign=1, gain=gain)
        ie = SignedConv(channels, c, k, sign=-1, gain=gain)
        ii = SignedConv(channels, channels, k, sign=-1, gain=gain) if inhibitory_recurrence else None
    except ConfigurationError as exc:
        raise type(exc)(f"{what}: {exc}") from None
    with net.atomic():
        net.add_population(name, shape=i_shape, tau=tau, phi=phi)
        net.populations[name].role = "inhibitory"
        net.connect(area, name, ei, delay=delays["delay_ei"])
        net.connect(name, area, ie, delay=delays["delay_ie"])
        if ii is not None:
            net.connect(name, name, ii, delay=delays["delay_ii"])
    return name


def dale_signs(net) -> dict[str, int]:
    """``{connection label: sign}`` of every sign-constrained connection of ``net``."""
    return {c.label: c.op.sign for c in net.connections if isinstance(c.op, SignedConv)}

