r"""Slow adaptation: a population per area that follows the area's own rate and feeds back
negatively, subtractively or divisively.

For an area with rates ``r`` and summed drive ``D`` (or the area's own combine), adaptation adds
a population ``a`` (default ``pool="unit"``: one adaptation variable per unit, weights per
channel, see :class:`dynode.models.normalization.Pool`):

.. math::

    \text{subtractive:}\quad \tau_a \frac{da}{dt} = -a + w\,r(t - d_a), \qquad u = D - a

    \text{divisive:}\quad \tau_a \frac{da}{dt} = -a + w\,|r(t - d_a)|, \qquad u = \frac{D}{1 + a}

then ``tau dr/dt = -r + Phi(u + b)``. ``w = |v| >= 0`` (per channel, learnt unless
``learn_weight=False``), ``tau_a`` typically 100-200 ms, slower than the area's ``tau``.
The ``1`` of the divisive form is not a free scale: ``w`` sets the gain of ``a`` relative to it.

Steady states for a constant drive ``D > 0`` and ``Phi = relu`` with ``pool="unit"``:
subtractive ``r* = D / (1 + w)``; divisive ``r* = (sqrt(1 + 4 w D) - 1) / (2 w)`` (the
positive root of ``w r^2 + r - D = 0``). After a step in ``D`` the rate overshoots (``a`` has
not caught up yet) and relaxes to ``r*`` on the slow time scale: a transient, subadditive
summation and repetition suppression that recovers with the interval as ``a`` decays.
"""

from __future__ import annotations

from torch import nn

from dynode.errors import ConfigurationError
from dynode.models.normalization import Divide, Subtract, _check_area, _component_name, add_pool_population

__all__ = ["ADAPTATION_KINDS", "add_adaptation"]

ADAPTATION_KINDS = ("subtractive", "divisive")


def add_adaptation(net, area: str, *, kind: str = "subtractive", tau: float = 150.0, delay: float = 0.0,
                   weight: float = 1.0, learn_weight: bool = True, pool: str = "unit",
                   name: str | None = None) -> str:
    """Add slow adaptation of ``kind`` (``"subtractive"`` or ``"divisive"``, see the module doc)
    to population ``area`` of ``net``: a population ``name`` (default ``f"{area}_adapt"``) with
    time constant ``tau`` ms driven by ``w r_area(t - delay)`` (pooled by ``pool``), and the
    area's combine wrapped so that ``u = D - a`` or ``u = D / (1 + a)``. Returns ``name``.
    Every argument is checked before the network changes, and a failure after that leaves it
    as it was (:meth:`Network.atomic`)."""
    pop = _check_area(net, area, "add_adaptation", "adaptation of the rates cannot act on u")
    what = f"add_adaptation({area!r})"
    if kind not in ADAPTATION_KINDS:
        raise ConfigurationError(f"{what}: unknown kind {kind!r}; known: {', '.join(ADAPTATION_KINDS)}")
    name = _component_name(net, area, name, "adapt", what)
    if kind == "subtractive":
        combine = Subtract(name, inner=pop.combine, kind="subtractive adaptation")
    else:
        combine = Divide(name, 1.0, learn_sigma=False, inner=pop.combine, kind="divisive adaptation")
    with net.atomic():  # add_pool_population checks its arguments before it adds anything
        try:
            add_pool_population(net, area, name, tau=tau, delay=delay, pool=pool, weight=weight,
                                learn_weight=learn_weight, magnitude=kind == "divisive", role="adaptation")
        except ConfigurationError as exc:
            raise type(exc)(f"{what}: {exc}") from None
        net.set_combine(area, combine)
        net.connect(name, area, nn.Identity())
    return name
