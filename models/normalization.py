r"""Delayed divisive normalization: a pool population per area that divides the area's drive.

For an area ``A`` with rates ``r`` (shape ``(C, *S)``, ``S`` the spatial dims) and summed
drive ``D(t) = sum_c op_c(r_src(c)(t - d_c))`` (or the area's own combine), normalization
adds a **pool population** ``g`` with its own time constant and a delayed input,

.. math::

    \tau_g \frac{dg}{dt} = -g + P\,|r(t - d_g)|, \qquad
    u = \frac{D(t)}{\sigma + g(t)}, \qquad
    \tau \frac{dr}{dt} = -r + \Phi(u + b),

with ``P`` a pooling operator with nonnegative weights (:class:`Pool`) applied to the
magnitude of the rates (``|r| = r`` for nonnegative rates, e.g. with relu; with the
odd-symmetric supralinear ``Phi`` the pool measures activity of either sign, so that
positive and negative rates cannot cancel in it):

==========  ==============================================  ==============
``pool``    ``(P r)``                                       shape of ``g``
==========  ==============================================  ==============
``unit``    ``w_c |r_{c,x}|``                               ``(C, *S)``
``channel`` ``sum_c w_c |r_{c,x}|`` (per position)          ``(1, *S)``
``space``   ``w_c mean_x |r_{c,x}|`` (per channel)          ``(C, 1, ..)``
``both``    ``sum_c w_c mean_x |r_{c,x}|``                  ``(1, 1, ..)``
==========  ==============================================  ==============

``neighborhood=k`` (``unit`` and ``channel`` pools of ``(C, H, W)`` areas) also averages the
pooled map over the ``k x k`` neighbourhood of each position (stride 1, the padding left out
of the average), a local spatial surround as in Heeger's normalization.

``w_c = |v_c|`` (so any optimizer step keeps them nonnegative), initialised to ``weight / C``
for the pools over channels (``weight`` times the mean rate) and to ``weight`` otherwise.
The semi-saturation ``sigma = softplus(s) > 0`` is learnt (initialised to ``sigma``, default 1;
``learn_sigma=False`` fixes it); together with the learnt ``w`` and the input weights it sets
the scale, so no per-area constant has to be tuned by hand. Pooling ``|r|`` with nonnegative
weights keeps ``g >= 0`` (the pool population's ``Phi`` is the identity) and hence the divisor
``>= sigma`` for any ``Phi``.

At a steady state with constant drive ``D``: ``g* = P |r*|``, ``r* = Phi(D / (sigma + g*) + b)``.
Before the first delayed rate reaches the pool (``g = 0``), ``u = D / sigma``; a step in ``D``
therefore gives a transient (the pool catches up after ``d_g`` and ``~tau_g``), responses that
sum subadditively in time, suppression of a second pulse that recovers as ``g`` decays, and
(with an expansive ``Phi``) a faster rise at high contrast -- the delayed normalization (DN)
model of Zhou et al. (2019) / Groen et al. (2022) as a population of the network.

:func:`add_normalization` builds it on any :class:`dynode.Network`; the same pool and the
:class:`Divide` / :class:`Subtract` combines also give slow adaptation
(:mod:`dynode.models.adaptation`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynode.checks import check_delay, check_flag, check_number, check_tau
from dynode.errors import ConfigurationError
from dynode.pipeline import Combine, sums_term

__all__ = ["POOLS", "Pool", "Divide", "Subtract", "pool_shape", "add_normalization", "modulators"]

POOLS = ("unit", "channel", "space", "both")


def pool_shape(shape: Sequence[int], pool: str) -> tuple[int, ...]:
    """Per-sample shape of ``P r`` for a population of ``shape`` ``(C, *S)``."""
    shape = tuple(int(s) for s in shape)
    if pool not in POOLS:
        raise ConfigurationError(f"unknown pool {pool!r}; known: {', '.join(POOLS)}")
    if pool in ("space", "both") and len(shape) < 2:
        raise ConfigurationError(f"pool={pool!r} averages over space, but the population has shape "
                                 f"{shape} (no spatial dims); use pool='unit' or 'channel'")
    c, space = shape[0], shape[1:]
    return {"unit": shape, "channel": (1, *space), "space": (c, *(1,) * len(space)),
            "both": (1, *(1,) * len(space))}[pool]


def _softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class Pool(nn.Module):
    """The pooling operator ``P`` (see the module doc) with nonnegative weights ``w_c = |v_c|``
    (``learn=False`` keeps them fixed, a buffer), of ``|r|`` (``magnitude=True``, for
    normalization pools) or of ``r`` itself (linear, for subtractive adaptation)."""

    def __init__(self, shape: Sequence[int], pool: str = "channel", weight: float = 1.0,
                 learn: bool = True, magnitude: bool = True, neighborhood: int | None = None):
        super().__init__()
        self.shape, self.pool, self.magnitude = tuple(int(s) for s in shape), pool, bool(magnitude)
        self.out_shape = pool_shape(self.shape, pool)
        if neighborhood is not None:
            if pool not in ("unit", "channel") or len(self.shape) != 3:
                raise ConfigurationError(f"neighborhood averages a (C, H, W) map over space: it needs "
                                         f"pool='unit' or 'channel' on a (C, H, W) population, got "
                                         f"pool={pool!r} on {self.shape}")
            if not (isinstance(neighborhood, int) and neighborhood >= 1 and neighborhood % 2 == 1):
                raise ConfigurationError(f"neighborhood must be an odd int >= 1 (pixels), got {neighborhood!r}")
        self.neighborhood = neighborhood
        weight = check_number(weight, "pool weight")
        c = self.shape[0]
        init = weight / c if pool in ("channel", "both") else weight
        w = torch.full((c,) + (1,) * (len(self.shape) - 1), init)
        if learn:
            self.weight = nn.Parameter(w)
        else:
            self.register_buffer("weight", w)
        self._space = tuple(range(2, len(self.shape) + 1))

    def weights(self) -> Tensor:
        """The effective nonnegative weights ``w_c`` (shape ``(C, 1, ..)``)."""
        return self.weight.abs()

    def forward(self, r: Tensor) -> Tensor:
        w = self.weight.abs()
        if self.magnitude:
            r = r.abs()
        if self.pool in ("unit", "channel"):
            if self.pool == "unit":
                y = r * w
            elif r.dim() == 4:  # a 1x1 convolution: one pass, no (B, C, H, W) temporary
                y = F.conv2d(r, w.view(1, -1, 1, 1))
            else:
                y = (r * w).sum(1, keepdim=True)
            k = self.neighborhood
            return y if k is None else F.avg_pool2d(y, k, 1, k // 2, count_include_pad=False)
        m = r.mean(self._space, keepdim=True)
        return m * w if self.pool == "space" else (m * w).sum(1, keepdim=True)

    def extra_repr(self) -> str:
        of = "|r|" if self.magnitude else "r"
        hood = "" if self.neighborhood is None else f", neighborhood={self.neighborhood}"
        return f"pool={self.pool!r} of {of}{hood}, {self.shape} -> {self.out_shape}"


class _Modulated(Combine):
    """A combine that takes one source (``source``) out of the terms and lets ``inner`` (the sum
    when ``None``) combine the rest into the drive ``D``."""

    kind = ""

    def __init__(self, source: str, inner: nn.Module | None):
        super().__init__()
        self.source = source
        self.inner = inner

    def _drive(self, terms: Mapping[str, Tensor]) -> tuple[Tensor | None, Tensor | None]:
        source = self.source
        if self.inner is not None:
            rest = {k: v for k, v in terms.items() if k != source}
            return (self.inner(rest) if rest else None), terms.get(source)
        d = m = None
        for k, v in terms.items():
            if k == source:
                m = v
            else:
                d = v if d is None else d + v
        return d, m

    def sums(self, source: str) -> bool:
        """A drive term (any but ``source``) is added as is when ``inner`` adds it (``None``:
        the sum)."""
        return source != self.source and sums_term(self.inner, source)

    def modulators(self) -> list[tuple[str, str]]:
        """``(source, kind)`` of this combine and of the combines inside it, outermost first."""
        inner = self.inner.modulators() if isinstance(self.inner, _Modulated) else []
        return [(self.source, self.kind)] + inner


class Divide(_Modulated):
    r"""``u = D / (sigma + g)`` with ``g = terms[source]`` (``>= 0``, e.g. a normalization pool)
    and ``D`` the other terms combined by ``inner`` (their sum by default).

    ``sigma = softplus(s)``, initialised to ``sigma``; learnt unless ``learn_sigma=False``.
    ``g`` is absent (0) while a ``skip_initial`` connection skips it. ``kind`` labels the
    loop in :meth:`dynode.Network.summary` (``"divisive"``, ``"divisive adaptation"``).
    """

    def __init__(self, source: str, sigma: float = 1.0, *, learn_sigma: bool = True,
                 inner: nn.Module | None = None, kind: str = "divisive"):
        super().__init__(source, inner)
        sigma = check_number(sigma, "sigma (the semi-saturation)", positive=True)
        s = torch.tensor(_softplus_inverse(sigma))
        if learn_sigma:
            self.s = nn.Parameter(s)
        else:
            self.register_buffer("s", s)
        self.kind = kind

    @property
    def sigma(self) -> Tensor:
        return F.softplus(self.s)

    def forward(self, terms: Mapping[str, Tensor]) -> Tensor:
        d, g = self._drive(terms)
        if d is None:
            return torch.zeros((), device=self.s.device, dtype=self.s.dtype)
        sigma = F.softplus(self.s)
        return d / sigma if g is None else d / (sigma + g)

    def extra_repr(self) -> str:
        return f"u = D / (sigma + {self.source}), sigma={float(self.sigma.detach()):.4g}"


class Subtract(_Modulated):
    """``u = D - a`` with ``a = terms[source]`` (e.g. an adaptation current) and ``D`` the other
    terms combined by ``inner`` (their sum by default)."""

    def __init__(self, source: str, *, inner: nn.Module | None = None, kind: str = "subtractive"):
        super().__init__(source, inner)
        self.kind = kind

    def forward(self, terms: Mapping[str, Tensor]) -> Tensor:
        d, a = self._drive(terms)
        if d is None:
            return -a if a is not None else torch.zeros(())
        return d if a is None else d - a

    def extra_repr(self) -> str:
        return f"u = D - {self.source}"


def modulators(net, name: str) -> list[tuple[str, str]]:
    """``(source, kind)`` of every normalization / adaptation loop acting on population
    ``name`` through its combine (empty for a plain sum)."""
    comb = net.populations[name].combine
    return comb.modulators() if isinstance(comb, _Modulated) else []


def _check_area(net, area: str, what: str, acts_on_u: str):
    """The population ``area`` of ``net`` that component ``what`` is added to; an error when
    there is none, or when its pipeline reshapes the rates so that ``u`` has another shape
    (``acts_on_u``: why the component then cannot act on ``u``)."""
    if area not in net.populations:
        raise ConfigurationError(f"{what}({area!r}): no such population (populations: "
                                 f"{list(net.populations)})")
    pop = net.populations[area]
    if pop.u_shape is not None and pop.u_shape != pop.shape:
        raise ConfigurationError(f"{what}({area!r}): u has shape {pop.u_shape} but the rates {pop.shape} "
                                 f"(a pipeline reshapes them); {acts_on_u}")
    return pop


def _component_name(net, area: str, name: str | None, suffix: str, what: str) -> str:
    """The new population's name (default ``f"{area}_{suffix}"``), refused before anything is
    added when it is not an identifier or already declared."""
    name = f"{area}_{suffix}" if name is None else name
    try:
        net._check_new_name(name)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{what}: {exc}; pass name= another name") from None
    return name


def add_pool_population(net, area: str, name: str, *, tau: float, delay: float, pool: str,
                        weight: float, learn_weight: bool, magnitude: bool = True,
                        role: str = "normalization", neighborhood: int | None = None) -> None:
    """Add the population ``tau_g dg/dt = -g + P |r_area(t - delay)|`` (``magnitude=False``:
    ``P r_area``) of shape :func:`pool_shape` and its connection from ``area``; its ``role``
    marks it as auxiliary (``net.areas()`` leaves it out). Every argument is checked before the
    network changes, and a failure after that leaves it as it was (:meth:`Network.atomic`)."""
    what = f"pool population {name!r} of {area!r}"
    if area not in net.populations:
        raise ConfigurationError(f"{what}: no such population {area!r} (populations: {list(net.populations)})")
    net._check_new_name(name)
    shape = net.populations[area].shape
    op = Pool(shape, pool, weight, check_flag(learn_weight, f"{what}: learn_weight"),
              check_flag(magnitude, f"{what}: magnitude"), neighborhood)
    check_tau(tau, op.out_shape, what)
    delay = check_delay(delay, what)
    with net.atomic():
        net.add_population(name, shape=op.out_shape, tau=tau, phi="identity")
        net.populations[name].role = role
        net.connect(area, name, op, delay=delay)


def add_normalization(net, area: str, *, tau: float = 30.0, delay: float = 4.0, pool: str = "channel",
                      sigma: float = 1.0, learn_sigma: bool = True, weight: float = 1.0,
                      learn_weight: bool = True, neighborhood: int | None = None,
                      name: str | None = None) -> str:
    r"""Add delayed divisive normalization to population ``area`` of ``net`` (see the module doc):

    a pool population ``name`` (default ``f"{area}_norm"``) with ``tau_g = tau`` ms driven by
    ``P |r_area(t - delay)|`` (``pool``: ``"channel"``, ``"space"``, ``"both"`` or
    ``"unit"``; weights initialised to ``weight`` times the mean; ``neighborhood``: a local
    ``k x k`` spatial average on top, see :class:`Pool`), and ``area``'s combine
    replaced by ``u = D / (sigma + g)`` (wrapping the area's own combine, if any, as ``D``).
    Returns the pool population's name. Call it after the area's other connections or before;
    connections added later join ``D``.

    Every argument is checked before the network changes (a :class:`ConfigurationError` naming
    it), and a failure after that leaves the network as it was (:meth:`Network.atomic`), so
    the corrected call then succeeds.
    """
    what = f"add_normalization({area!r})"
    pop = _check_area(net, area, "add_normalization", "the pool of the rates cannot divide u -- "
                      "normalise inside the pipeline instead")
    name = _component_name(net, area, name, "norm", what)
    try:
        divide = Divide(name, sigma, learn_sigma=check_flag(learn_sigma, "learn_sigma"), inner=pop.combine)
        Pool(pop.shape, pool, weight, check_flag(learn_weight, "learn_weight"), True, neighborhood)
        check_tau(tau, pool_shape(pop.shape, pool), "the pool population")
        check_delay(delay, "the pool's input")
    except ConfigurationError as exc:
        raise type(exc)(f"{what}: {exc}") from None
    with net.atomic():
        add_pool_population(net, area, name, tau=tau, delay=delay, pool=pool, weight=weight,
                            learn_weight=learn_weight, neighborhood=neighborhood)
        net.set_combine(area, divide)
        net.connect(name, area, nn.Identity())
    return name
