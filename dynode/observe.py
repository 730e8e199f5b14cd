r"""Observation models: what an electrode, a contact or a voxel sees of a population.

Each model is a small frozen object (stored in an archive by name, with its parameters in the
variable's attributes) and a plain, differentiable torch function on a time course, so that the
same equations serve a recording run (:class:`dynode.Record` ``observe=[...]``, computed causally
while the run goes) and a fit (called on the states of :func:`dynode.integrate`). Times are in
ms everywhere; literature parameters given in s are converted where they are used.

``"rate"`` (:class:`Rate`)
    the population's rate :math:`r_p(t)` (what dynode always recorded).
``"drive"`` (:class:`Drive`)
    its synaptic drive :math:`u_p(t) = \mathrm{combine}_p(\{op_c(r_{src(c)}(t - d_c))\}) + b_p`,
    the argument of :math:`\Phi_p`, evaluated on the recorded state (the ODE's definition), and,
    where the network knows the sign of its inputs, the excitatory and inhibitory parts
    :math:`u^E_p = \sum_{c \in E} op_c(\cdot)` and :math:`u^I_p = \sum_{c \in I} op_c(\cdot)`
    (variables ``drive_exc``, ``drive_inh``; with the default sum combine
    :math:`u = u^E + u^I + u^{other} + b`). A connection is **inhibitory** when its operator
    has ``sign == -1`` (:class:`dynode.models.SignedConv`) or its source is an inhibitory
    population (``role == "inhibitory"``, :func:`dynode.models.add_inhibition`); **excitatory**
    when its operator has ``sign == +1`` or its source is a stimulus input or an area (long-range
    cortical projections are glutamatergic); anything else (normalization and adaptation pools)
    is in neither part. A population has an **E/I split** when at least one incoming connection
    is inhibitory.
``"lfp"`` (:class:`LFP`)
    an LFP/ECoG proxy from the input currents, spatially weighted by the electrode
    (:class:`Electrode`, uniform weights without one). With an E/I split, the weighted-sum proxy of
    Mazzoni et al. 2015 (PLoS Comput Biol 11:e1004584, "WS" proxy; best of the proxies they
    compared, for pyramidal-cell currents):

    .. math:: \mathrm{LFP}(t) = \sum_i w_i |u^E_i(t - \tau)| - \alpha \sum_i w_i |u^I_i(t)|,
              \qquad \tau = 6\ \mathrm{ms},\ \alpha = 1.65,

    with their AMPA current mapped to the rate network's excitatory drive :math:`u^E` and their
    GABA current to its inhibitory drive :math:`u^I` (magnitudes, so the sign convention of
    :math:`u^I` does not matter); the spatial sum over cells becomes a weighted mean (weights
    summing to 1), so the value does not grow with the size of the map. Without an E/I split,
    the broadband proxy "sum of absolute input currents" (Mazzoni et al. 2015's :math:`|I|`
    proxy, without a delay): :math:`\sum_i w_i \sum_c |op_c(\cdot)_i|`. The archive attribute
    ``proxy`` says which one was used. Before the first recorded time a current is held at its
    first value (dynode's constant history).
``"bold"`` (:class:`BOLD`)
    the Balloon-Windkessel haemodynamic model (Friston et al. 2000, NeuroImage 12:466; Buxton et
    al. 1998), driven by the electrode-weighted mean rate :math:`z(t) = \sum_i w_i r_i(t)`, with
    the parameter values of Stephan et al. 2007 (NeuroImage 38:387; the priors SPM's DCM uses):

    .. math::

        \dot s = \epsilon z - \kappa s - \gamma (f - 1), \qquad \dot f = s, \qquad
        \tau_0 \dot v = f - v^{1/\alpha}, \qquad
        \tau_0 \dot q = f \frac{1 - (1 - E_0)^{1/f}}{E_0} - v^{1/\alpha} \frac{q}{v},

        y = 100\, V_0 \big(k_1 (1 - q) + k_2 (1 - q/v) + k_3 (1 - v)\big), \quad
        k_1 = 4.3\, \vartheta_0 E_0 T_E,\ k_2 = \varepsilon r_0 E_0 T_E,\ k_3 = 1 - \varepsilon,

    in percent signal change, time in s in the equations (each right-hand side is divided by
    1000 to advance in ms). Resting state ``s = 0, f = v = q = 1`` (``y = 0``), reached exactly
    for zero input. Integrated between recorded times with RK4 (``z`` linear between samples,
    sub-steps of at most ``max_step`` ms), so any record interval works.

How a recording run computes them (:class:`ObservationRun`, in ``dynode.simulate``'s stream): the
currents of ``drive`` and ``lfp`` are the solver's own where it evaluates the field at every
recorded time and state as its first stage (the fixed-step methods Euler with
``order="simultaneous"`` and Euler-Maruyama, Heun and stochastic Heun, Midpoint, RK4):
:class:`CurrentsCapture`, installed as the network's ``drive_hook`` for the run, keeps references
to the per-connection terms of that evaluation (no copies, no extra operator evaluation; the
final time, which no step evaluates, costs one). The recording therefore lags one recorded
time behind the solver. Elsewhere (adaptive solvers with interpolated save times,
``order="sequential"``, a custom vector field) :class:`DriveReader` re-evaluates them on the
recorded states (about one more field evaluation per recorded time, and every delay must be a
multiple of the record interval). Both give bit-identical archives where both apply (tested).
``bold`` of all recorded populations is one :class:`BoldBank` (numpy, float64) advanced in the
archive's writer thread, block by block, from the electrode-weighted mean rates.

An :class:`Electrode` is a Gaussian patch over a ``(C, H, W)`` map: the weight of unit
``(c, i, j)`` is :math:`\propto \exp(-((y_i - y_0)^2 + (x_j - x_0)^2) / 2\sigma^2)` with unit
coordinates :math:`y_i = (i + 1/2)/H`, :math:`x_j = (j + 1/2)/W` (the map spans ``[0, 1]^2``), the
same for every channel, normalised to sum 1: the population receptive field of the recorded
site.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import ClassVar, NamedTuple

import numpy as np
import torch
from torch import Tensor

from dynode.archive.layout import RATE_UNITS
from dynode.errors import ConfigurationError, DynodeError, ShapeError
from dynode.history import History, delay_steps
from dynode.network import Network
from dynode.plan import PopulationPlan, Read
from dynode.tolerances import time_tol

__all__ = ["OBSERVATIONS", "Observation", "Rate", "Drive", "LFP", "BOLD", "Electrode", "as_observation",
           "electrode_weights", "spatial_mean", "mazzoni_lfp", "broadband_lfp", "bold", "balloon_step",
           "BalloonState", "Currents", "ei_split", "population_currents", "DriveReader",
           "PopulationObserver", "ObservationRun", "CurrentsCapture", "BoldBank", "lfp_proxy", "observed_variables",
           "observation_attrs"]


# -- the electrode ----------------------------------------------------------------------------
def _check_center_sigma(center, sigma, what: str) -> tuple[tuple[float, float], float]:
    try:
        cy, cx = (float(c) for c in center)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{what}: center must be (y, x) in unit coordinates, got {center!r}") from None
    if not (0.0 <= cy <= 1.0 and 0.0 <= cx <= 1.0):
        raise ConfigurationError(f"{what}: center {(cy, cx)} lies outside the map; give (y, x) in [0, 1] "
                                 "(unit coordinates: (0, 0) the top-left corner, (1, 1) the bottom-right)")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (math.isfinite(sigma) and sigma > 0):
        raise ConfigurationError(f"{what}: sigma must be a finite number > 0 (unit coordinates), got {sigma!r}")
    return (cy, cx), float(sigma)


def electrode_weights(shape: Sequence[int], center: Sequence[float], sigma: float, *,
                      dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Weights of a Gaussian patch over a ``(C, H, W)`` map (see the module doc), summing to 1.

    ``center``: ``(y, x)`` in unit coordinates (``[0, 1]``); ``sigma``: the patch's standard
    deviation in unit coordinates."""
    (cy, cx), sigma = _check_center_sigma(center, sigma, "electrode_weights")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigurationError(f"electrode_weights: an electrode sees a (C, H, W) map, got shape {shape}")
    c, h, w = shape
    y = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    x = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    d2 = (y[:, None] - cy) ** 2 + (x[None, :] - cx) ** 2
    g = torch.exp(-(d2 - d2.min()) / (2 * sigma ** 2))  # the nearest unit weighs 1 before normalising
    g = (g / (g.sum() * c)).expand(c, h, w)
    return g.to(dtype=dtype, device=device).contiguous()


@dataclass(frozen=True)
class Electrode:
    """A recording contact: a Gaussian patch (``center`` ``(y, x)`` in unit coordinates, ``sigma``
    in unit coordinates) over a population's ``(C, H, W)`` map; :func:`electrode_weights`."""

    center: tuple[float, float]
    sigma: float

    def __post_init__(self):
        center, sigma = _check_center_sigma(self.center, self.sigma, "Electrode")
        object.__setattr__(self, "center", center)
        object.__setattr__(self, "sigma", sigma)

    def weights(self, shape: Sequence[int], *, dtype=torch.float32, device=None) -> Tensor:
        return electrode_weights(shape, self.center, self.sigma, dtype=dtype, device=device)


def spatial_mean(x: Tensor, weights: Tensor | None, ndim: int) -> Tensor:
    """``sum_i w_i x_i`` over the last ``ndim`` (unit) dimensions of ``x``; the plain mean when
    ``weights`` is None. (A matrix-vector product: one pass over ``x``, no product tensor.)"""
    if ndim == 0:
        return x
    lead = x.shape[:x.dim() - ndim]
    if weights is None:
        return x.mean(dim=tuple(range(len(lead), x.dim())))
    return torch.mv(x.reshape(-1, weights.numel()), weights.reshape(-1)).reshape(lead)


# -- LFP proxies ------------------------------------------------------------------------------
def _delay_samples(delay_ms: float, dt_ms: float, what: str) -> int:
    k = delay_steps(delay_ms, dt_ms)
    if k is None:
        raise ConfigurationError(f"{what}: the delay {delay_ms:g} ms is not a multiple of the sampling "
                                 f"interval {dt_ms:g} ms; sample every {delay_ms:g} ms or a divisor of it")
    return k


def mazzoni_lfp(exc: Tensor, inh: Tensor, dt_ms: float, *, delay_ms: float = 6.0, alpha: float = 1.65,
                weights: Tensor | None = None) -> Tensor:
    r"""Mazzoni et al. 2015's weighted-sum LFP proxy on time courses ``exc``, ``inh``
    (``(time, batch, *units)``, sampled every ``dt_ms``): ``sum_i w_i |exc_i(t - delay)| - alpha
    sum_i w_i |inh_i(t)|`` -> ``(time, batch)``; before the first sample ``exc`` is held at its
    first value. ``weights`` (shape ``units``): an electrode's, else the mean over units."""
    if exc.shape != inh.shape:
        raise ShapeError(f"mazzoni_lfp: exc {tuple(exc.shape)} and inh {tuple(inh.shape)} differ in shape")
    ndim = exc.dim() - 2
    k = _delay_samples(delay_ms, dt_ms, "mazzoni_lfp")
    e = spatial_mean(exc.abs(), weights, ndim)
    i = spatial_mean(inh.abs(), weights, ndim)
    if k:
        e = torch.cat([e[:1].expand(min(k, len(e)), *e.shape[1:]), e[:max(len(e) - k, 0)]])
    return e - alpha * i


def broadband_lfp(currents: Sequence[Tensor], *, weights: Tensor | None = None) -> Tensor:
    r"""The broadband proxy ``sum_i w_i sum_c |I_c,i(t)|`` of input currents ``currents`` (each
    ``(time, batch, *units)``, all of one shape) -> ``(time, batch)``; ``weights`` (shape
    ``units``): an electrode's, else the mean over units."""
    if not currents:
        raise ConfigurationError("broadband_lfp: give at least one input current")
    shape = currents[0].shape
    if any(c.shape != shape for c in currents):
        raise ShapeError(f"broadband_lfp: the currents differ in shape: {[tuple(c.shape) for c in currents]}")
    ndim = len(shape) - 2
    return sum(spatial_mean(c.abs(), weights, ndim) for c in currents)


# -- the Balloon-Windkessel model ---------------------------------------------------------------
class BalloonState(NamedTuple):
    """Vasodilatory signal ``s`` (1/s), inflow ``f``, volume ``v``, deoxyhaemoglobin ``q``
    (``f``, ``v``, ``q`` relative to rest)."""

    s: Tensor
    f: Tensor
    v: Tensor
    q: Tensor

    @classmethod
    def rest(cls, like: Tensor) -> BalloonState:
        """Rest (``s = 0``, ``f = v = q = 1``) shaped like ``like`` (a tensor or a numpy array)."""
        zero = torch.zeros_like(like) if isinstance(like, Tensor) else np.zeros_like(like)
        return cls(zero, zero + 1, zero + 1, zero + 1)


def _balloon_rates(p: BOLD, x: BalloonState, z: Tensor) -> BalloonState:
    """The right-hand sides per ms (the per-s equations of the module doc, divided by 1000); on
    torch tensors or numpy arrays alike."""
    s, f, v, q = x
    full_like = torch.full_like if isinstance(f, Tensor) else np.full_like
    c = full_like(f, 1.0 - p.E0)  # (1 - c^(1/f)) / (1 - c) is exactly 1 at f = 1 in any dtype
    v_out = v ** (1.0 / p.alpha)
    k = 1e-3 / p.tau
    return BalloonState(1e-3 * (p.efficacy * z - p.kappa * s - p.gamma * (f - 1.0)), 1e-3 * s,
                        k * (f - v_out), k * (f * (1.0 - c ** (1.0 / f)) / (1.0 - c) - v_out * q / v))


def balloon_step(p: BOLD, x: BalloonState, z0: Tensor, z1: Tensor, h_ms: float) -> BalloonState:
    """Advance the haemodynamic state by ``h_ms`` with the neural signal linear from ``z0`` to
    ``z1``: RK4 in sub-steps of at most ``p.max_step`` ms (torch tensors, differentiable, or
    numpy arrays: the recording's :class:`BoldBank`)."""
    n = max(1, math.ceil(h_ms / p.max_step - 1e-9))
    dt = h_ms / n
    for j in range(n):
        za, zm, zb = (z0 + (z1 - z0) * (j + c) / n for c in (0.0, 0.5, 1.0))
        k1 = _balloon_rates(p, x, za)
        k2 = _balloon_rates(p, BalloonState(*(a + 0.5 * dt * b for a, b in zip(x, k1))), zm)
        k3 = _balloon_rates(p, BalloonState(*(a + 0.5 * dt * b for a, b in zip(x, k2))), zm)
        k4 = _balloon_rates(p, BalloonState(*(a + dt * b for a, b in zip(x, k3))), zb)
        x = BalloonState(*(a + dt / 6.0 * (b1 + 2 * b2 + 2 * b3 + b4)
                           for a, b1, b2, b3, b4 in zip(x, k1, k2, k3, k4)))
    return x


def _balloon_signal(p: BOLD, x: BalloonState) -> Tensor:
    k1 = 4.3 * p.theta0 * p.E0 * p.TE
    k2 = p.epsilon * p.r0 * p.E0 * p.TE
    k3 = 1.0 - p.epsilon
    return 100.0 * p.V0 * (k1 * (1.0 - x.q) + k2 * (1.0 - x.q / x.v) + k3 * (1.0 - x.v))


def bold(signal: Tensor, dt_ms: float, model: BOLD | None = None, *,
         state: BalloonState | None = None) -> Tensor:
    """The BOLD signal (% change) of a neural ``signal`` ``(time, ...)`` sampled every ``dt_ms``
    (differentiable). The haemodynamics start at ``state`` (default: rest) at the first sample."""
    p = BOLD() if model is None else model
    if not (isinstance(dt_ms, (int, float)) and math.isfinite(dt_ms) and dt_ms > 0):
        raise ConfigurationError(f"bold: dt_ms must be a finite number > 0, got {dt_ms!r}")
    x = BalloonState.rest(signal[0]) if state is None else state
    out = [_balloon_signal(p, x)]
    for n in range(1, len(signal)):
        x = balloon_step(p, x, signal[n - 1], signal[n], float(dt_ms))
        out.append(_balloon_signal(p, x))
    return torch.stack(out)


# -- the observation objects ---------------------------------------------------------------------
@dataclass(frozen=True)
class Observation:
    """Base of the observation models: ``name`` (the archive variable), ``units``."""

    name: ClassVar[str] = ""
    units: ClassVar[str] = RATE_UNITS
    needs_currents: ClassVar[bool] = False

    def params(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Rate(Observation):
    """The population's rate ``r(t)`` (see the module doc)."""

    name: ClassVar[str] = "rate"


@dataclass(frozen=True)
class Drive(Observation):
    """The synaptic drive ``u(t)`` and, where the population has an E/I split, its excitatory and
    inhibitory parts (``drive_exc``, ``drive_inh``; see the module doc). ``parts``: None (default)
    stores them where the split exists; True requires it (an error before the run otherwise);
    False stores ``u`` only."""

    name: ClassVar[str] = "drive"
    needs_currents: ClassVar[bool] = True
    parts: bool | None = None

    def __post_init__(self):
        if self.parts not in (None, True, False):
            raise ConfigurationError(f"Drive(parts={self.parts!r}): give None, True or False")


_PROXIES = ("auto", "mazzoni", "broadband")


@dataclass(frozen=True)
class LFP(Observation):
    """An LFP/ECoG proxy (see the module doc). ``proxy``: ``"auto"`` (Mazzoni et al. 2015 where
    the population has an E/I split, the broadband proxy elsewhere), ``"mazzoni"`` (an error
    before the run where there is no split) or ``"broadband"``; ``delay`` (ms) and ``alpha``: the
    Mazzoni proxy's AMPA delay and GABA weight (their values: 6 ms, 1.65)."""

    name: ClassVar[str] = "lfp"
    needs_currents: ClassVar[bool] = True
    proxy: str = "auto"
    delay: float = 6.0
    alpha: float = 1.65

    def __post_init__(self):
        if self.proxy not in _PROXIES:
            raise ConfigurationError(f"LFP(proxy={self.proxy!r}): give one of {list(_PROXIES)}")
        for key in ("delay", "alpha"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise ConfigurationError(f"LFP({key}={v!r}) must be a finite number >= 0")
            object.__setattr__(self, key, float(v))

    def __call__(self, exc: Tensor, inh: Tensor, dt_ms: float, *, weights: Tensor | None = None) -> Tensor:
        """The Mazzoni proxy on time courses (:func:`mazzoni_lfp`)."""
        return mazzoni_lfp(exc, inh, dt_ms, delay_ms=self.delay, alpha=self.alpha, weights=weights)


@dataclass(frozen=True)
class BOLD(Observation):
    """The Balloon-Windkessel BOLD model (see the module doc). Parameters as published, in s:
    Stephan et al. 2007 (NeuroImage 38:387), the priors of SPM's DCM (``spm_fx_fmri``,
    ``spm_gx_fmri``): ``kappa`` 0.64 1/s (signal decay), ``gamma`` 0.32 1/s (autoregulation),
    ``tau`` 2 s (transit time), ``alpha`` 0.32 (Grubb's exponent), ``E0`` 0.4 (resting oxygen
    extraction), ``V0`` 0.04 (resting venous volume fraction), ``theta0`` 40.3 1/s (frequency
    offset at 1.5 T), ``r0`` 25 1/s (intravascular relaxation slope), ``TE`` 0.04 s (echo
    time), ``epsilon`` 1 (intra/extravascular signal ratio); ``efficacy`` (1/s per unit of the
    neural signal, Friston et al. 2000's neuronal efficacy) 1. ``max_step``: the largest RK4
    sub-step (ms)."""

    name: ClassVar[str] = "bold"
    units: ClassVar[str] = "%"
    kappa: float = 0.64
    gamma: float = 0.32
    tau: float = 2.0
    alpha: float = 0.32
    E0: float = 0.4
    V0: float = 0.04
    theta0: float = 40.3
    r0: float = 25.0
    TE: float = 0.04
    epsilon: float = 1.0
    efficacy: float = 1.0
    max_step: float = 50.0

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigurationError(f"BOLD({f.name}={v!r}) must be a finite number")
            object.__setattr__(self, f.name, float(v))
        positive = ("kappa", "gamma", "tau", "alpha", "V0", "theta0", "r0", "TE", "max_step")
        bad = [k for k in positive if not getattr(self, k) > 0]
        if bad or not 0 < self.E0 < 1 or self.epsilon < 0:
            raise ConfigurationError(f"BOLD: {bad or 'E0/epsilon'} out of range (positive numbers; 0 < E0 < 1, "
                                     "epsilon >= 0)")

    def __call__(self, signal: Tensor, dt_ms: float) -> Tensor:
        """:func:`bold` with these parameters."""
        return bold(signal, dt_ms, self)


OBSERVATIONS: dict[str, type[Observation]] = {c.name: c for c in (Rate, Drive, LFP, BOLD)}
"""The observation models by archive name."""

_LONG_NAMES = {"rate": "firing rate", "drive": "synaptic drive u (argument of Phi)",
               "drive_exc": "excitatory part of the synaptic drive u",
               "drive_inh": "inhibitory part of the synaptic drive u",
               "lfp": "LFP/ECoG proxy from input currents", "bold": "BOLD signal change (Balloon-Windkessel)"}


def as_observation(x) -> Observation:
    """An :class:`Observation` from itself or its name (``"rate"``, ``"drive"``, ``"lfp"``, ``"bold"``)."""
    if isinstance(x, Observation) and type(x) is not Observation:
        return x
    if isinstance(x, str) and x in OBSERVATIONS:
        return OBSERVATIONS[x]()
    raise ConfigurationError(f"unknown observation {x!r}; give one of {list(OBSERVATIONS)} or a "
                             "dynode.observe.Rate/Drive/LFP/BOLD object")


# -- currents of a network's population ----------------------------------------------------------
EXC, INH, OTHER = "excitatory", "inhibitory", "other"


def _term_class(net: Network, term) -> str:
    sign = getattr(term.op, "sign", None)
    src = net.populations[term.src] if term.src in net.populations else None
    if sign == -1 or (src is not None and src.role == "inhibitory"):
        return INH
    if sign == 1 or src is None or src.role == "area":  # a stimulus input or an area
        return EXC
    return OTHER


def ei_split(net, population: str) -> tuple[str, ...] | None:
    """The class (excitatory / inhibitory / other, see the module doc) of each incoming
    connection of ``population`` in plan order, or None when it has no E/I split (no
    inhibitory input) or ``net`` is not a :class:`~dynode.Network`."""
    if not isinstance(net, Network):
        return None
    plan = next(p for p in net.plan() if p.name == population)
    classes = tuple(_term_class(net, t) for t in plan.terms)
    return classes if INH in classes else None


class Currents(NamedTuple):
    """A population's input currents at one time: ``u`` (the drive), ``terms`` (each connection's
    ``op_c(...)``, None where skipped at the start), ``exc``/``inh`` (the E/I parts, None without
    a split)."""

    u: Tensor
    terms: tuple[Tensor | None, ...]
    exc: Tensor | None
    inh: Tensor | None


def population_currents(plan: PopulationPlan, classes: tuple[str, ...] | None, state: Mapping[str, Tensor],
                        history, inputs: Mapping[str, Tensor]) -> Currents:
    """:meth:`PopulationPlan.drive` keeping its parts: ``u = combine(terms) + bias`` (no ``Phi``),
    with the same reads and the same arithmetic in the same order, so ``plan.phi(u)`` is
    bit-identical to ``plan.drive(...)`` (:class:`CurrentsCapture` steps the run with it)."""
    ys: list[Tensor | None] = []
    parts: dict[str, Tensor] = {}
    u = None
    for term in plan.terms:
        if term.skip_initial and history.reads_initial(term.delay):
            ys.append(None)
            continue
        read = term.read
        x = (state[term.src] if read is Read.STATE else inputs[term.src] if read is Read.INPUT
             else history.lag(term.src, term.delay) if read is Read.LAG else term.learnt.lag(history, term.src))
        y = term.op(x)
        ys.append(y)
        if plan.combine is None:
            u = y if u is None else u + y
        else:
            parts[term.src] = y
    if plan.combine is not None:
        u = plan.combine(parts)
    elif u is None:
        u = torch.zeros_like(state[plan.name])
    if plan.bias is not None:
        u = u + plan.bias
    exc = inh = None
    if classes is not None:
        exc, inh = (_sum_like([y for y, c in zip(ys, classes) if y is not None and c == k], u) for k in (EXC, INH))
    return Currents(u, tuple(ys), exc, inh)


def _sum_like(ys: Sequence[Tensor], like: Tensor) -> Tensor:
    """``ys[0] + ys[1] + ...`` (a new tensor), zeros like ``like`` for none."""
    if not ys:
        return torch.zeros_like(like)
    if len(ys) == 1:
        return ys[0]  # a reference: nothing modifies an operator's output afterwards
    out = ys[0] + ys[1]
    for y in ys[2:]:
        out += y
    return out


class DriveReader:
    """The input currents of ``populations`` of ``net`` on states handed in at the times
    ``t0 + n * interval`` (each ``n`` in turn): the delayed reads come from a ring of the states
    handed in (:class:`dynode.history.History` on the record grid), so every delay must be a
    multiple of ``interval`` (:meth:`check`). ``copy``: keep copies of the states (a solver that
    reuses its state tensors)."""

    def __init__(self, net: Network, populations: Sequence[str], y0: Mapping[str, Tensor], t0: float,
                 interval: float, inputs: Callable[[float], Mapping[str, Tensor]], copy: bool):
        self.plans = [p for p in net.plan() if p.name in populations]
        self.classes = {p.name: ei_split(net, p.name) for p in self.plans}
        self.t0, self.interval, self.inputs, self.copy = float(t0), float(interval), inputs, copy
        max_delay = max((t.delay for p in self.plans for t in p.terms), default=0.0)
        self.history = History(y0, t0=t0, dt=interval, max_delay=max_delay, derivatives=False, inputs=inputs)

    @staticmethod
    def check(net, populations: Sequence[str], times: Sequence[float], t0: float, tail,
              lfp_delays: Sequence[float] = ()) -> float:
        """Before the run: the currents of ``populations`` (and LFP proxies with the delays
        ``lfp_delays``) can be computed on the record ``times``; returns the record interval. A
        ConfigurationError names what to change otherwise."""
        if not isinstance(net, Network):
            raise ConfigurationError(f"observing 'drive' or 'lfp' needs a dynode.Network (its currents); "
                                     f"{type(net).__name__} is a custom vector field: record 'rate' and 'bold'")
        plans = [p for p in net.plan() if p.name in populations]
        for p in plans:
            learnt = [t.src for t in p.terms if t.read is Read.LEARNT]
            if learnt:
                raise ConfigurationError(f"observing 'drive'/'lfp' of {p.name!r}: its connections from "
                                         f"{learnt} have learnt delays, which the recording cannot re-read "
                                         "exactly; record with a fixed-step solver (euler, heun, midpoint, "
                                         "rk4: their own currents are recorded), or 'rate' (and 'bold') only")
        term_delays = {t.delay for p in plans for t in p.terms if t.delay > 0}
        delays = sorted(term_delays | {d for d in lfp_delays if d > 0})
        interval = times[1] - times[0] if len(times) > 1 else 1.0
        if not delays:
            return interval
        who = ", ".join(populations)
        if term_delays and tail is not None:
            raise ConfigurationError(f"observing 'drive'/'lfp' of {who} (delayed inputs) in a continued run "
                                     "(initial_state with a history) needs a fixed-step solver (euler, heun, "
                                     "midpoint, rk4: their own currents are recorded); or record 'rate' only")
        if term_delays and abs(times[0] - t0) > time_tol(t0):
            raise ConfigurationError(f"observing 'drive'/'lfp' of {who} reads the recorded states at t - d "
                                     f"(delays {sorted(term_delays)} ms); the recording must start at t0 = "
                                     f"{t0:g} ms, not {times[0]:g} ms: drop Record(start=...), or record with a "
                                     "fixed-step solver (euler, heun, midpoint, rk4)")
        return DriveReader.check_interval(populations, times, delays)

    @staticmethod
    def check_interval(populations: Sequence[str], times: Sequence[float], delays: Sequence[float]) -> float:
        """The record ``times`` are uniform and every one of ``delays`` (ms, > 0) is a multiple of
        their interval (the recorded values are read at ``t - d``); returns the interval."""
        interval = times[1] - times[0] if len(times) > 1 else 1.0
        delays = sorted(d for d in delays if d > 0)
        if not delays:
            return interval
        who = ", ".join(populations)
        first = times[0]
        off_grid = [t for k, t in enumerate(times) if abs(t - (first + k * interval)) > time_tol(t) + time_tol(interval)]
        if off_grid:
            raise ConfigurationError(f"observing 'drive'/'lfp' of {who} needs a uniform record interval "
                                     f"({first:g} + k * {interval:g} ms), but {off_grid[0]:g} ms is off it; "
                                     "choose Record(every=...) and t_end so that t_end - start is a multiple of every")
        off = [d for d in delays if delay_steps(d, interval) is None]
        if off:
            step = math.gcd(*[round(d * 1000) for d in delays]) / 1000
            raise ConfigurationError(f"observing 'drive'/'lfp' of {who} reads the recorded values at t - d, "
                                     f"but the delays {off} ms are not multiples of the record interval "
                                     f"{interval:g} ms; record every {step:g} ms or a divisor of it")
        return interval

    def __call__(self, t: float, state: Mapping[str, Tensor]) -> dict[str, Currents]:
        n = round((t - self.t0) / self.interval)
        kept = {k: v.clone() for k, v in state.items()} if self.copy else state
        self.history.store(n, kept)
        self.history.at(n, 0.0, t, kept)
        x = self.inputs(t)
        return {p.name: population_currents(p, self.classes[p.name], kept, self.history, x) for p in self.plans}


# -- one population's observations in a recording stream ------------------------------------------
class PopulationObserver:
    """What one population's observations give at each recorded time, causally: ``drive``
    (and its parts) through ``transform`` (the record's selection and reduction), ``lfp`` with
    its delay ring, ``bold`` with its haemodynamic state carried from one recorded time to the
    next. :meth:`variables` names the outputs of :meth:`__call__`, in order.

    ``bold_signal=True`` (a recording run): for ``bold`` it gives the neural signal ``z(t)``
    (float64), which a :class:`BoldBank` turns into BOLD for all populations at once, off the
    solver's thread."""

    def __init__(self, name: str, shape: tuple[int, ...], observations: Sequence[Observation],
                 classes: tuple[str, ...] | None, weights: Tensor | None,
                 transform: Callable[[Tensor], Tensor], interval: float, *, bold_signal: bool = False):
        self.name, self.shape, self.classes, self.transform = name, tuple(shape), classes, transform
        self.obs = [o for o in observations if not isinstance(o, Rate)]
        self.weights = weights
        self.bold_signal = bold_signal
        self._lfp_delay = 0
        for o in self.obs:
            if isinstance(o, LFP) and lfp_proxy(o, self.classes) == "mazzoni":
                self._lfp_delay = _delay_samples(o.delay, interval, f"LFP of {name!r} (Mazzoni proxy)")
        self._lfp_ring: list[Tensor] = []
        self._bold: tuple[float, Tensor, BalloonState] | None = None

    def variables(self) -> list[tuple[str, Observation]]:
        return observed_variables(self.obs, self.classes)

    def _weights(self, like: Tensor) -> Tensor | None:
        w = self.weights
        if w is not None and (w.device != like.device or w.dtype != like.dtype):
            w = self.weights = w.to(device=like.device, dtype=like.dtype)
        return w

    def __call__(self, t: float, rate: Tensor, cur: Currents | None) -> list[Tensor]:
        out: list[Tensor] = []
        nd = len(self.shape)
        for o in self.obs:
            if isinstance(o, Drive):
                out.append(self.transform(cur.u))
                if _drive_parts(o, self.classes):
                    out += [self.transform(cur.exc), self.transform(cur.inh)]
            elif isinstance(o, LFP):
                w = self._weights(cur.u)
                if lfp_proxy(o, self.classes) == "mazzoni":
                    e = spatial_mean(cur.exc.abs(), w, nd)
                    ring = self._lfp_ring
                    if not ring:  # held at its first value before the first recorded time
                        ring += [e] * self._lfp_delay
                    ring.append(e)
                    out.append(ring.pop(0) - o.alpha * spatial_mean(cur.inh.abs(), w, nd))
                else:
                    out.append(sum((spatial_mean(y.abs(), w, nd) for y in cur.terms if y is not None),
                                   torch.zeros(rate.shape[0], dtype=rate.dtype, device=rate.device)))
            elif isinstance(o, BOLD):
                z = spatial_mean(rate, self._weights(rate), nd).to(torch.float64)
                if self.bold_signal:
                    out.append(z)
                    continue
                if self._bold is None:
                    x = BalloonState.rest(z)
                else:
                    t_prev, z_prev, x = self._bold
                    x = balloon_step(o, x, z_prev, z, t - t_prev)
                self._bold = (t, z, x)
                out.append(_balloon_signal(o, x).to(rate.dtype))
        return out


class BoldBank:
    """The Balloon-Windkessel state of every population a recording observes with ``bold``, one
    ``(population, batch)`` array per state variable, advanced on the host in float64 (numpy)
    over each written block, in time order: :meth:`__call__` maps the neural signals ``z``
    (``(time, batch)`` per population, float64, as :class:`PopulationObserver` gives them with
    ``bold_signal=True``) at ``times`` to BOLD (``(time, batch)`` each, ``out_dtype``). The same
    equations and integration as :func:`bold` (the first recorded time at rest), but one
    update for all populations and none on the solver's thread (the archive's writer thread
    calls it: no device sync, no work between the solver's steps)."""

    def __init__(self, model: BOLD, out_dtype: np.dtype):
        self.model, self.out_dtype = model, np.dtype(out_dtype)
        self._last: tuple[float, np.ndarray, BalloonState] | None = None

    def __call__(self, times: np.ndarray, zs: Sequence[np.ndarray]) -> list[np.ndarray]:
        z = np.stack(zs, axis=1)  # (time, population, batch)
        y = np.empty_like(z)
        p = self.model
        for i, t in enumerate(times.tolist()):
            if self._last is None:
                x = BalloonState.rest(z[i])
            else:
                t_prev, z_prev, x = self._last
                x = balloon_step(p, x, z_prev, z[i], t - t_prev)
            self._last = (t, z[i], x)
            y[i] = _balloon_signal(p, x)
        y = y.astype(self.out_dtype)
        return [y[:, j] for j in range(y.shape[1])]


class CurrentsCapture:
    """The input currents of ``populations`` as the solver computes them: installed as the
    network's :attr:`~dynode.Network.drive_hook` while a fixed-step run records, it evaluates the
    field as :meth:`PopulationPlan.drive` does (bit-identical ``Phi(u)``), except at the stage
    whose state is the recorded state :meth:`expect` announced, where it keeps the observed
    populations' currents (:func:`population_currents`: references to the solver's own tensors,
    no copies and no extra evaluation). Every fixed-step method evaluates its first stage at
    ``(t_n, r_n)``, the recorded time and state, after the recording saw ``r_n``: so the
    currents of a recorded time arrive one step later (:meth:`take`), and those of the final
    time, which no step evaluates, come from one extra evaluation on the solver's history
    (:meth:`final`).

    ``make_history``: the history the solver would start with (for a run without steps)."""

    def __init__(self, net: Network, populations: Sequence[str], inputs: Callable[[float], Mapping[str, Tensor]],
                 make_history: Callable[[], History]):
        self.plans = {p.name: p for p in net.plan() if p.name in populations}
        self.classes = {name: ei_split(net, name) for name in self.plans}
        self.names = tuple(self.plans)
        self.inputs, self.make_history = inputs, make_history
        self.history = None
        self._want: tuple[float, Mapping[str, Tensor]] | None = None
        self._got: tuple[float, Mapping[str, Tensor], dict[str, Currents]] | None = None

    def expect(self, t: float, state: Mapping[str, Tensor]) -> None:
        """The recorded state at ``t``: keep the currents of the stage that evaluates it."""
        if self._want is not None:
            raise DynodeError(f"internal: the currents at t = {self._want[0]:g} ms were never evaluated by the "
                              "solver (a solver whose first stage is not the recorded state must use "
                              "dynode.observe.DriveReader)")
        self._want = (t, state)

    def take(self) -> tuple[float, Mapping[str, Tensor], dict[str, Currents]] | None:
        """The latest recorded time, its state and its captured currents (once), or None."""
        got, self._got = self._got, None
        return got

    def __call__(self, t: float, state: Mapping[str, Tensor], history, inputs: Mapping[str, Tensor],
                 plan: Sequence[PopulationPlan]) -> dict[str, Tensor]:
        want = self._want
        if want is None or any(state[n] is not want[1][n] for n in self.names):
            return {p.name: p.drive(state, history, inputs) for p in plan}
        if abs(t - want[0]) > time_tol(t):
            raise DynodeError(f"internal: the recorded state of t = {want[0]:g} ms evaluated at t = {t:g} ms")
        self.history = history
        cur, out = {}, {}
        for p in plan:
            if p.name in self.plans:
                c = cur[p.name] = population_currents(p, self.classes[p.name], state, history, inputs)
                out[p.name] = p.phi(c.u)
            else:
                out[p.name] = p.drive(state, history, inputs)
        self._got, self._want = (want[0], want[1], cur), None
        return out

    def final(self) -> tuple[float, Mapping[str, Tensor], dict[str, Currents]] | None:
        """:meth:`take`, else the currents of the last announced state by one evaluation on the
        solver's history (the end of the run: no step evaluates it), or None."""
        got = self.take()
        if got is not None or self._want is None:
            return got
        t, state = self._want
        self._want = None
        history = self.history if self.history is not None else self.make_history()
        history.at(round((t - history.t0) / history.dt), 0.0, t, state)
        with torch.no_grad():
            x = self.inputs(t)
            return t, state, {n: population_currents(p, self.classes[n], state, history, x)
                              for n, p in self.plans.items()}


class ObservationRun:
    """A recording run's observations beyond the rates: at each recorded time ``t`` (in turn),
    the currents once, then every population's :class:`PopulationObserver`. ``keys``:
    ``(population, variable)`` of the outputs, in order.

    The currents come from ``reader`` (:class:`DriveReader`: re-evaluated on the recorded
    states; :meth:`__call__` gives the outputs of ``t`` at once) or ``capture``
    (:class:`CurrentsCapture`: the solver's own; ``lagged``: :meth:`push` gives those of the
    previous recorded time, :meth:`finish` those of the last). With ``bold`` (a
    :class:`BoldBank`) the ``bold`` outputs are the neural signals, turned into BOLD by
    :meth:`host_block` in the archive's writer thread (``host_keys``: their positions)."""

    def __init__(self, reader: DriveReader | None, observers: Sequence[PopulationObserver],
                 capture: CurrentsCapture | None = None, bold: BoldBank | None = None):
        if reader is not None and capture is not None:
            raise DynodeError("internal: currents from a DriveReader or a CurrentsCapture, not both")
        self.reader, self.capture, self.observers, self.bold = reader, capture, list(observers), bold
        self.keys = [(ob.name, var) for ob in self.observers for var, _ in ob.variables()]
        self.lagged = capture is not None
        self.host_keys = [i for i, (_, var) in enumerate(self.keys) if var == "bold"] if bold is not None else []

    def outputs(self, t: float, state: Mapping[str, Tensor], cur: Mapping[str, Currents]) -> list[Tensor]:
        out: list[Tensor] = []
        for ob in self.observers:
            out += ob(t, state[ob.name], cur.get(ob.name))
        return out

    def __call__(self, t: float, state: Mapping[str, Tensor]) -> list[Tensor]:
        if self.lagged:
            raise DynodeError("internal: a capturing ObservationRun gives its outputs through push()")
        return self.outputs(t, state, self.reader(t, state) if self.reader is not None else {})

    def push(self, t: float, state: Mapping[str, Tensor]):
        """The recorded state at ``t``; returns ``(t', state', outputs)`` of the previous recorded
        time (its currents captured meanwhile) or None."""
        got = self.capture.take()
        self.capture.expect(t, state)
        return None if got is None else (got[0], got[1], self.outputs(*got))

    def finish(self):
        """``(t, state, outputs)`` of the last recorded time (None if there is none pending)."""
        got = self.capture.final()
        return None if got is None else (got[0], got[1], self.outputs(*got))

    def host_block(self, times: np.ndarray, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The writer thread's part: the BOLD of ``arrays`` (the neural signals at ``host_keys``
        over a block's ``times``), in order."""
        return self.bold(times, arrays)


def _drive_parts(o: Drive, classes) -> bool:
    return o.parts is not False and classes is not None


def lfp_proxy(o: LFP, classes: tuple[str, ...] | None) -> str:
    """The proxy an :class:`LFP` uses for a population whose connections have ``classes``
    (:func:`ei_split`)."""
    return ("mazzoni" if classes is not None else "broadband") if o.proxy == "auto" else o.proxy


def observed_variables(observations: Sequence[Observation], classes) -> list[tuple[str, Observation]]:
    """``(variable, observation)`` of every archive variable that ``observations`` other than
    the rate give for a population whose connections have ``classes`` (:func:`ei_split`)."""
    out = []
    for o in observations:
        if isinstance(o, Rate):
            continue
        out.append((o.name, o))
        if isinstance(o, Drive) and _drive_parts(o, classes):
            out += [("drive_exc", o), ("drive_inh", o)]
    return out


def observation_attrs(population: str, var: str, o: Observation, classes) -> dict:
    """CF ``units``/``long_name`` of the archive variable ``var`` and the model's name and
    parameters (the LFP's proxy and its equation)."""
    attrs = {"units": o.units, "long_name": f"{_LONG_NAMES[var]} of population {population}",
             "observation": o.name, "model": type(o).__name__}
    if isinstance(o, LFP):
        proxy = lfp_proxy(o, classes)
        attrs["proxy"] = proxy
        attrs["proxy_equation"] = (
            f"sum_i w_i |u_exc_i(t - {o.delay:g} ms)| - {o.alpha:g} sum_i w_i |u_inh_i(t)| "
            "(Mazzoni et al. 2015, PLoS Comput Biol 11:e1004584)" if proxy == "mazzoni" else
            "sum_i w_i sum_c |I_c,i(t)| (sum of absolute input currents; no E/I split)")
        if proxy == "mazzoni":
            attrs.update(delay_ms=o.delay, alpha=o.alpha)
    elif isinstance(o, BOLD):
        attrs.update({f"param_{k}": v for k, v in o.params().items()})
        attrs["source"] = ("Balloon-Windkessel, Friston et al. 2000 NeuroImage 12:466; parameters "
                           "Stephan et al. 2007 NeuroImage 38:387 (in s; integrated in ms)")
        attrs["neural_signal"] = "electrode-weighted mean rate"
    elif isinstance(o, Drive) and var != "drive":
        attrs["connection_classes"] = list(classes)
    return attrs
