r"""The fitted parameters of :func:`dynode.fit.fit`, by name: each name resolved against the
model (:func:`_resolve`) into the leaf tensors that are optimised, the value that is reported
and how a restart moves it.

**What is fitted** (``params``, by name; a kind alone, e.g. ``"tau"``, means every such
parameter the model has):

* ``tau:P``: the learnt time constant of population ``P`` (ms;
  ``add_population(..., learn_tau=True, tau_bounds=...)``);
* ``delay:A->B``: the learnt delay of connection ``A -> B`` (ms;
  ``connect(..., learn_delay=True, delay_bounds=...)``);
* ``sigma:P``: the semi-saturation of ``P``'s divisive combine
  (:class:`dynode.models.normalization.Divide` with ``learn_sigma``);
* ``weight:A->B``: the parameters of connection ``A -> B``'s operator (of a normalisation or
  adaptation pool: its weights ``|w|``, the loop's strength);
* ``bias:P``: the bias of ``P``;
* ``norm:P`` / ``adapt:P``: every learnable part of ``P``'s normalisation / adaptation loop
  (its ``sigma``; the pool population's learnt ``tau``, its input weights and learnt delays);
* ``gain:a`` / ``offset:a``: the observation gain / offset of recorded area ``a``;
* ``weights``: every parameter of the network (``weights:<state_dict name>``, reported as the
  raw tensors, taus and delays included).

A name the model does not have, a fixed ``tau`` or delay named for fitting, recordings that
lack the conditions an experiment needs, NaN samples, areas the model does not have: each is
a :class:`~dynode.errors.ConfigurationError` before anything is simulated.


A restart ``k > 0`` starts from a random point: learnt times (:class:`dynode.population.Bounded`,
``x = lo (hi/lo)^sigmoid(raw)``) uniform in the middle 70 % of their log range
(``sigmoid(raw) ~ U(0.15, 0.85)``), a semi-saturation and every other parameter multiplied by
``exp(0.3 z)``, ``z ~ N(0, 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dynode.errors import ConfigurationError
from dynode.models.normalization import Divide, Pool, _Modulated
from dynode.network import Network
from dynode.population import Bounded

__all__ = ["PARAM_KINDS"]

PARAM_KINDS = ("tau", "delay", "sigma", "weight", "bias", "norm", "adapt", "gain", "offset", "weights")
"""The kinds of fitted parameters (``kind:target``; see this module's doc)."""


@dataclass
class _Param:
    """One named fitted parameter: the leaf tensors optimised, the value reported and how a
    restart moves it."""

    name: str
    unit: str
    tensors: list[Tensor]
    read: Callable[[], Tensor]
    perturb: Callable[[torch.Generator], None] | None


def _scalar_or_list(x: Tensor) -> float | list:
    x = x.detach().double().cpu()
    return float(x) if x.numel() == 1 else x.flatten().tolist()


def _bounded_param(name: str, b: Bounded) -> _Param:
    def perturb(gen: torch.Generator, b=b) -> None:
        frac = 0.15 + 0.7 * torch.rand(b.raw.shape, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            b.raw.copy_(torch.logit(frac).to(b.raw.dtype))
    return _Param(name, "ms", [b.raw], b.forward, perturb)


def _scale_perturb(tensors: Sequence[Tensor]) -> Callable[[torch.Generator], None]:
    def perturb(gen: torch.Generator) -> None:
        with torch.no_grad():
            for t in tensors:
                z = torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)
                t.mul_(torch.exp(0.3 * z))
    return perturb


def _sigma_param(name: str, d: Divide) -> _Param:
    def perturb(gen: torch.Generator, d=d) -> None:
        z = float(torch.randn((), generator=gen, dtype=torch.float64))
        with torch.no_grad():
            sigma = float(d.sigma) * math.exp(0.3 * z)
            d.s.fill_(sigma + math.log(-math.expm1(-sigma)))  # softplus^-1
    return _Param(name, "1", [d.s], lambda d=d: d.sigma, perturb)


def _op_param(name: str, op: nn.Module) -> _Param:
    tensors = [p for p in op.parameters()]
    if isinstance(op, Pool):
        read = op.weights
    elif len(tensors) == 1:
        read = lambda t=tensors[0]: t  # noqa: E731
    else:
        read = lambda ts=tensors: torch.cat([t.reshape(-1) for t in ts])  # noqa: E731
    return _Param(name, "1", tensors, read, _scale_perturb(tensors))


def _divisive(net: Network, pop: str, kinds: tuple[str, ...]) -> list[Divide | _Modulated]:
    comb = net.populations[pop].combine
    out = []
    while isinstance(comb, _Modulated):
        if comb.kind in kinds:
            out.append(comb)
        comb = comb.inner
    return out


def _connection(net: Network, label: str, what: str):
    src, sep, dst = label.partition("->")
    src, dst = src.strip(), dst.strip()
    for c in net.connections:
        if sep and c.src == src and c.dst == dst:
            return c
    known = ", ".join(f"{c.src}->{c.dst}" for c in net.connections)
    raise ConfigurationError(f"{what}: the model has no connection {label!r} (give 'SOURCE->TARGET'; its "
                             f"connections: {known})")


def _population(net: Network, name: str, what: str) -> None:
    if name not in net.populations:
        raise ConfigurationError(f"{what}: the model has no population {name!r} (populations: "
                                 f"{list(net.populations)})")


def _tau(net: Network, pop: str, what: str) -> _Param:
    _population(net, pop, what)
    b = net.populations[pop]._modules.get("learnt_tau")
    if b is None:
        raise ConfigurationError(f"{what}: the time constant of {pop!r} is fixed; build the population with "
                                 "learn_tau=True (and tau_bounds=(lo, hi) ms) to fit it")
    return _bounded_param(f"tau:{pop}", b)


def _delay(net: Network, label: str, what: str) -> _Param:
    c = _connection(net, label, what)
    if c.learnt is None:
        raise ConfigurationError(f"{what}: the delay of {c.src}->{c.dst} is fixed ({c.delay:g} ms); connect with "
                                 "learn_delay=True (and delay_bounds=(lo, hi) ms) to fit it")
    return _bounded_param(f"delay:{c.src}->{c.dst}", c.learnt)


def _sigma(net: Network, pop: str, what: str) -> _Param:
    _population(net, pop, what)
    found = [d for d in _divisive(net, pop, ("divisive",)) if isinstance(d.s, nn.Parameter)]
    if not found:
        raise ConfigurationError(f"{what}: {pop!r} has no learnable semi-saturation (no divisive normalisation "
                                 "in its combine, or learn_sigma=False); add dynode.models.add_normalization")
    return _sigma_param(f"sigma:{pop}", found[0])


def _weight(net: Network, label: str, what: str) -> _Param:
    c = _connection(net, label, what)
    if not any(True for _ in c.op.parameters()):
        raise ConfigurationError(f"{what}: the operator of {c.src}->{c.dst} ({type(c.op).__name__}) has no "
                                 "parameters (or they are fixed, e.g. learn_weight=False)")
    return _op_param(f"weight:{c.src}->{c.dst}", c.op)


def _component(net: Network, pop: str, what: str, kinds: tuple[str, ...], label: str) -> list[_Param]:
    """Every learnable part of ``pop``'s normalisation or adaptation loop(s)."""
    _population(net, pop, what)
    loops = _divisive(net, pop, kinds)
    out: list[_Param] = []
    for loop in loops:
        if isinstance(loop, Divide) and isinstance(loop.s, nn.Parameter):
            out.append(_sigma_param(f"sigma:{pop}", loop))
        g = net.populations[loop.source]
        b = g._modules.get("learnt_tau")
        if b is not None:
            out.append(_bounded_param(f"tau:{loop.source}", b))
        for c in net.connections:
            if c.dst == loop.source:
                if c.learnt is not None:
                    out.append(_bounded_param(f"delay:{c.src}->{c.dst}", c.learnt))
                if any(True for _ in c.op.parameters()):
                    out.append(_op_param(f"weight:{c.src}->{c.dst}", c.op))
    if not out:
        raise ConfigurationError(f"{what}: {pop!r} has no {label} with learnable parts (add one with "
                                 f"dynode.models.add_{'normalization' if label == 'normalisation' else 'adaptation'}, "
                                 "with learnable weights or sigma)")
    return out


def _all_of(net: Network, kind: str) -> list[str]:
    if kind == "tau":
        return [f"tau:{p}" for p, pop in net.populations.items() if "learnt_tau" in pop._modules]
    if kind == "delay":
        return [f"delay:{c.src}->{c.dst}" for c in net.connections if c.learnt is not None]
    if kind == "sigma":
        return [f"sigma:{p}" for p in net.populations
                if any(isinstance(d.s, nn.Parameter) for d in _divisive(net, p, ("divisive",)))]
    if kind == "bias":
        return [f"bias:{p}" for p, pop in net.populations.items() if pop.bias is not None]
    if kind == "weight":
        return [f"weight:{c.src}->{c.dst}" for c in net.connections if any(True for _ in c.op.parameters())]
    if kind == "norm":
        return [f"norm:{p}" for p in net.populations if _divisive(net, p, ("divisive",))]
    if kind == "adapt":
        return [f"adapt:{p}" for p in net.populations
                if _divisive(net, p, ("divisive adaptation", "subtractive adaptation"))]
    raise AssertionError(kind)


def _resolve(net: Network, names: Sequence[str], areas: Sequence[str]) -> tuple[list[_Param], list[str],
                                                                                 list[str]]:
    """``(network parameters, areas with a fitted gain, areas with a fitted offset)`` of the
    names in ``params``; every name checked against the model before anything runs."""
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise ConfigurationError(f"params must be a non-empty list of parameter names (e.g. ['tau:V1', "
                                 f"'delay:V1->V2', 'gain']); kinds: {', '.join(PARAM_KINDS)}; got {names!r}")
    out: dict[str, _Param] = {}
    gains: list[str] = []
    offsets: list[str] = []

    def add(p: _Param) -> None:
        out.setdefault(p.name, p)

    for raw in names:
        if not isinstance(raw, str):
            raise ConfigurationError(f"params: names are strings such as 'tau:V1', got {raw!r}")
        kind, sep, target = raw.partition(":")
        kind, target = kind.strip(), target.strip()
        what = f"params: {raw!r}"
        if kind not in PARAM_KINDS:
            raise ConfigurationError(f"{what}: unknown kind {kind!r}; kinds: {', '.join(PARAM_KINDS)} "
                                     "(e.g. 'tau:V1', 'delay:V1->V2', 'gain:V1')")
        if kind == "weights":
            if sep:
                raise ConfigurationError(f"{what}: 'weights' fits every network parameter and takes no target; "
                                         "name one connection's weights with 'weight:A->B'")
            for n, p in net.named_parameters():
                add(_Param(f"weights:{n}", "1", [p], lambda p=p: p, _scale_perturb([p])))
            continue
        if kind in ("gain", "offset"):
            targets = [target] if sep else list(areas)
            for a in targets:
                if a not in areas:
                    raise ConfigurationError(f"{what}: {a!r} is not a fitted area (areas: {list(areas)})")
                (gains if kind == "gain" else offsets).append(a)
            continue
        if not sep:
            found = _all_of(net, kind)
            if not found:
                raise ConfigurationError(f"{what}: the model has no learnable parameter of kind {kind!r} (for "
                                         "times: build with learn_tau=True / learn_delay=True)")
            targets = [f.partition(":")[2] for f in found]
        else:
            targets = [target]
        for t in targets:
            if kind == "tau":
                add(_tau(net, t, what))
            elif kind == "delay":
                add(_delay(net, t, what))
            elif kind == "sigma":
                add(_sigma(net, t, what))
            elif kind == "weight":
                add(_weight(net, t, what))
            elif kind == "bias":
                _population(net, t, what)
                b = net.populations[t].bias
                if b is None:
                    raise ConfigurationError(f"{what}: {t!r} has no bias (add_population(..., bias=True))")
                add(_Param(f"bias:{t}", "1", [b], lambda b=b: b, _scale_perturb([b])))
            elif kind == "norm":
                for p in _component(net, t, what, ("divisive",), "normalisation"):
                    add(p)
            elif kind == "adapt":
                for p in _component(net, t, what, ("divisive adaptation", "subtractive adaptation"), "adaptation"):
                    add(p)
    seen: set[int] = set()
    for p in out.values():  # a tensor fitted under two names is one tensor: keep it once
        p.tensors = [t for t in p.tensors if id(t) not in seen and not seen.add(id(t))]
    return list(out.values()), list(dict.fromkeys(gains)), list(dict.fromkeys(offsets))
