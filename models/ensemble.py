r"""Ensembles: ``M`` parameter sets of one small rate network integrated as one network.

:func:`stack` turns members that share a structure (populations, inputs, connections, delays,
activations) but not their parameters (weights, biases, ``tau``) into one
:class:`~dynode.Network` whose populations carry the ensemble as a leading dimension
(``(M, *shape)``) and whose connections are batched matrix products

.. math:: y_{b,m} = W_m\, x_{b,m} + c_m ,

so that member ``m`` obeys exactly its own equation
``tau_m dr_m/dt = -r_m + Phi(u_m)``. One ``integrate`` of the stack replaces a loop of ``M``
runs: 0.25x the time for 8 members and 0.23x for 64 in ``benchmarks/bench_ensemble.py``
(64 + 64 units, 200 Euler steps, one CPU thread). The inputs are shared by every member; member ``m``
of a state is ``state[:, m]``, of a saved trajectory ``states[name][:, :, m]``.

Operators: ``nn.Linear`` and ``nn.Identity`` (what small rate networks use); activations: those
that act per unit. Anything else -- and members whose activations or operators differ in more
than their weights (e.g. softplus ``beta``) -- is refused with the population or connection
named, rather than run with member 0's configuration.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dynode.activations import RectifiedPower, Supralinear
from dynode.errors import ConfigurationError
from dynode.integrate import require_memory
from dynode.network import Network

__all__ = ["EnsembleLinear", "stack"]


class EnsembleLinear(nn.Module):
    """``y[b, m] = W[m] x[b, m] + c[m]`` for ``M`` members: ``(B, M, in) -> (B, M, out)``; an
    input without the member dimension ``(B, in)`` is shared by every member."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())  # (M, out, in)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())  # (M, out)

    def forward(self, x: Tensor) -> Tensor:
        y = (torch.einsum("moi,bi->bmo", self.weight, x) if x.dim() == 2
             else torch.einsum("moi,bmi->bmo", self.weight, x))
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        m, o, i = self.weight.shape
        return f"members={m}, in_features={i}, out_features={o}, bias={self.bias is not None}"


def _stack_op(ops: Sequence[nn.Module], shared_input: bool) -> nn.Module:
    """One module doing every member's operator (checked by :func:`_check_stackable`)."""
    first = ops[0]
    if type(first) is nn.Identity:
        if shared_input:  # (B, n) -> (B, M, n): every member sees the input
            return _Broadcast(len(ops))
        return nn.Identity()
    bias = torch.stack([op.bias for op in ops]) if first.bias is not None else None
    return EnsembleLinear(torch.stack([op.weight for op in ops]), bias)


def _check_stackable(ops: Sequence[nn.Module], label: str) -> None:
    """Refuse operators that :func:`_stack_op` cannot turn into one module doing each member's:
    other types than ``nn.Identity`` / ``nn.Linear`` (exactly: a subclass may override
    ``forward``), linear maps of other shapes or with extra parameters, buffers, submodules or
    hooks, or any other attribute that differs from member 0's."""
    kinds = {type(op) for op in ops}
    if kinds == {nn.Identity}:
        _same_config(ops, f"connection {label}: the operator")
        return
    if kinds != {nn.Linear}:
        names = sorted(k.__name__ for k in kinds)
        raise ConfigurationError(f"ensemble: connection {label} uses {names}; stack() supports nn.Linear "
                                 "and nn.Identity operators (run other members in a loop)")
    first = ops[0]
    for i, op in enumerate(ops):
        extra = sorted({n for n, _ in op.named_parameters()} - {"weight", "bias"}
                       | {n for n, _ in op.named_buffers()})
        if extra:
            raise ConfigurationError(f"ensemble: connection {label}: member {i}'s linear map holds "
                                     f"{extra} besides weight and bias (a parametrization or weight norm?); "
                                     "stack() stacks plain nn.Linear maps only")
        if op.weight.shape != first.weight.shape or (op.bias is None) != (first.bias is None):
            raise ConfigurationError(f"ensemble: connection {label} has linear maps of different shapes "
                                     "across members; members must share their structure")
    _same_config(ops, f"connection {label}: the linear map", stacked=("weight", "bias"))


class _Broadcast(nn.Module):
    """``(B, *s) -> (B, M, *s)``: an input shared by ``M`` members."""

    def __init__(self, members: int):
        super().__init__()
        self.members = members

    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(1).expand(x.shape[0], self.members, *x.shape[1:])


# Phi modules that act on each unit alone, so that one module applied to the stacked (B, M, *shape)
# state is each member's Phi (exact types: a subclass may override forward)
_PER_UNIT = (nn.ReLU, nn.Identity, nn.Tanh, nn.Softplus, nn.Sigmoid, Supralinear, RectifiedPower,
             nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardtanh, nn.ReLU6,
             nn.Hardsigmoid, nn.Hardswish, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.Softshrink,
             nn.Hardshrink, nn.Threshold)
_TORCH_INTERNALS = frozenset(nn.Module().__dict__)  # training, _parameters, _buffers, the hooks, ...


def _config(module: nn.Module, stacked: Sequence[str] = ()) -> dict[str, object]:
    """Everything that defines ``module`` besides the stacked tensors, by dotted path: each
    submodule's type and training flag, its own attributes (constructor arguments such as
    ``beta``, ``negative_slope``, ``n``) and its parameters and buffers (values)."""
    out: dict[str, object] = {}
    for path, m in module.named_modules():
        at = f"{path}." if path else ""
        out[f"{at}type"] = type(m)
        out[f"{at}training"] = m.training
        for key, value in vars(m).items():
            if key not in _TORCH_INTERNALS and not isinstance(value, (nn.Module, Tensor)):
                out[at + key] = value
        for key, t in (*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)):
            if t is not None and not (m is module and key in stacked):
                out[at + key] = t
    return out


def _same(a, b) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and bool(torch.equal(a.detach().cpu(), b.detach().cpu())))
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):  # == without one truth value (an array): identity
        return a is b


def _same_config(modules: Sequence[nn.Module], what: str, *, stacked: Sequence[str] = (),
                 per_unit: bool = False) -> None:
    """Refuse ``modules`` (one per member) unless one of them can stand for all: the same
    :func:`_config` (apart from ``stacked`` tensors), no hooks, and (``per_unit``, for ``Phi``)
    built of per-unit activations only."""
    first = modules[0]
    for i, module in enumerate(modules):
        for path, m in module.named_modules():
            hooked = [k for k in _TORCH_INTERNALS if "hook" in k and isinstance(getattr(m, k, None), dict)
                      and getattr(m, k)]
            if hooked:
                raise ConfigurationError(f"ensemble: {what} of member {i} has hooks ({', '.join(sorted(hooked))} "
                                         f"on {path or 'the module'}); stack() cannot carry them: remove them")
            if per_unit and not (type(m) in _PER_UNIT or type(m) is nn.Sequential):
                raise ConfigurationError(
                    f"ensemble: {what} is (or contains) {type(m).__name__}, which stack() cannot tell "
                    "acts on each unit alone (applied to the stacked (batch, members, ...) state it could "
                    "mix members); use a per-unit activation (relu, tanh, softplus, supralinear, ...) "
                    "or run the members in a loop")
    want = _config(first, stacked)
    for i, module in enumerate(modules[1:], 1):
        have = _config(module, stacked)
        for key in sorted(set(want) | set(have)):
            a, b = want.get(key, "<absent>"), have.get(key, "<absent>")
            if not _same(a, b):
                show = (lambda v: f"tensor{tuple(v.shape)}" if isinstance(v, Tensor) else repr(v))
                raise ConfigurationError(
                    f"ensemble: {what} of member {i} differs from member 0's in {key} ({show(b)} vs "
                    f"{show(a)}); stack() runs every member with one such module, so members must share "
                    "it (only weights, biases and tau may differ) -- run differing members in a loop")


def _check_stack_memory(first: Network, ops: dict[str, list[nn.Module]], members: int,
                        device: torch.device, dtype: torch.dtype) -> None:
    """Refuse a stack whose new tensors would not fit: the stacked weights (stacked, then copied
    into their parameters), biases and per-unit taus, each ``members`` times a member's."""
    itemsize = dtype.itemsize
    weights = sum(p.numel() for group in ops.values() for p in group[0].parameters())
    units = sum(math.prod(p.shape) * (1 + (p.bias is not None)) for p in first.populations.values())
    need = members * (2 * weights + 2 * units) * itemsize
    require_memory(need, device, f"ensemble.stack of {members} members (their stacked weights, biases and taus)",
                   "stack fewer members at a time")


def stack(members: Sequence[Network]) -> Network:
    """One :class:`~dynode.Network` integrating every member at once (see the module doc).

    The members must have the same inputs, populations (names, shapes, roles, bias kinds),
    connections, delays, run protocol and training mode, and the same configuration of every
    module that is not stacked: each population's ``Phi`` (its type and every attribute, e.g.
    softplus ``beta``, leaky relu ``negative_slope``, supralinear ``n``/``k``, any parameter or
    buffer it holds, its training flag) and the linear maps' other attributes; weights, biases
    and ``tau`` may differ. ``Phi`` must act per unit (relu, tanh, softplus, the power laws,
    ...: one module then serves every member); modules with hooks are refused. Anything else is
    a :class:`~dynode.errors.ConfigurationError` naming the population or connection and what
    differs, raised before anything is built. Populations get shape ``(M, *shape)``, ``tau`` a
    tensor when the members' taus differ; the stack has the members' device, dtype, training
    mode and protocol (not their readouts). The members are not changed.
    """
    try:
        members = list(members)
    except TypeError:
        raise ConfigurationError(f"ensemble.stack needs a list of dynode.Network members, got "
                                 f"{type(members).__name__}") from None
    if len(members) < 2 or not all(isinstance(m, Network) for m in members):
        raise ConfigurationError("ensemble.stack needs a list of at least two dynode.Network members")
    first = members[0]
    signature = _structure(first)
    for i, m in enumerate(members[1:], 1):
        for part, have in _structure(m).items():
            want = signature[part]
            if have != want:
                which = next((f": {h!r} vs {w!r}" for h, w in zip(have, want) if h != w), "") \
                    if isinstance(have, tuple) and len(have) == len(want) else f": {have!r} vs {want!r}"
                raise ConfigurationError(
                    f"ensemble: member {i} does not have member 0's structure: its {part} differ{which} "
                    "(inputs, populations (names, shapes, roles, activation types, bias kinds), "
                    "connections, delays, protocol and training mode must agree)")
    M = len(members)
    learnt = first.delay_bounds()
    if learnt:
        raise ConfigurationError(f"ensemble: connection {next(iter(learnt))} has a learnt delay; a stacked "
                                 "connection has one delay for every member, so stack() takes fixed delays "
                                 "only (rebuild the members with their learnt delays fixed)")
    device, dtype = _placement(members)
    for name, pop in first.populations.items():
        if pop.combine is not None:
            raise ConfigurationError(f"ensemble: population {name!r} has a custom combine; stack() "
                                     "supports summed inputs")
        _same_config([m.populations[name].phi for m in members], f"population {name!r}: Phi", per_unit=True)
    ops = {c.label: [m.populations[c.dst].incoming[c.src] for m in members] for c in first.connections}
    for label, group in ops.items():
        _check_stackable(group, label)
    _check_stack_memory(first, ops, M, device, dtype)

    net = Network()
    for name, shape in first.input_shapes().items():
        net.add_input(name, shape)
    for name, pop in first.populations.items():
        taus = [m.populations[name].tau for m in members]
        if all(not isinstance(t, Tensor) for t in taus) and len(set(taus)) == 1:
            tau = taus[0]
        else:
            tau = torch.stack([torch.as_tensor(t.detach() if isinstance(t, Tensor) else t,
                                               dtype=torch.float32).expand(pop.shape) for t in taus])
        net.add_population(name, (M, *pop.shape), tau=tau, phi=copy.deepcopy(pop.phi),
                           bias="unit" if pop.bias is not None else False,
                           learn_tau=pop.tau_bounds is not None, tau_bounds=pop.tau_bounds)
        net.populations[name].role = pop.role
    net.to(device=device, dtype=dtype)
    for name, pop in first.populations.items():
        stacked = net.populations[name]
        with torch.no_grad():
            if pop.bias is not None:
                stacked.bias.copy_(torch.stack([m.populations[name].bias.detach().expand(pop.shape)
                                                for m in members]))
            if pop.tau_bounds is not None:  # each member's own raw value: the same taus exactly
                stacked.learnt_tau.raw.copy_(torch.stack([m.populations[name].learnt_tau.raw.detach().expand(
                    pop.shape) for m in members]))
    for c in first.connections:
        net.connect(c.src, c.dst, _stack_op(ops[c.label], c.src in first.input_shapes()),
                    delay=c.delay, skip_initial=c.skip_initial)
    net.protocol = first.protocol
    return net.train(first.training)


def _structure(net: Network) -> dict[str, object]:
    """What every member must share, by part (each a tuple of one entry per item, or a value)."""
    return {
        "inputs": tuple(net.input_shapes().items()),
        "populations": tuple((n, p.shape, p.u_shape, p.role, type(p.phi).__name__, p.bias is not None,
                              p.combine is None) for n, p in net.populations.items()),
        "populations' learnt tau bounds": tuple((n, p.tau_bounds) for n, p in net.populations.items()),
        "connections": tuple((c.src, c.dst, c.delay, c.skip_initial) for c in net.connections),
        "protocol": net.protocol,
        "training mode": net.training,
    }


def _placement(members: Sequence[Network]) -> tuple[torch.device, torch.dtype]:
    """The members' one device and floating dtype (of every parameter and buffer, tau included)."""
    seen = {(t.device, t.dtype) for m in members for t in (*m.parameters(), *m.buffers())
            if t.is_floating_point()}
    if len(seen) > 1:
        raise ConfigurationError(f"ensemble: the members' tensors live on different devices or have different "
                                 f"dtypes {sorted(str(s) for s in seen)}; move every member to one "
                                 "(member.to(device, dtype)) before stacking")
    return next(iter(seen), (torch.device("cpu"), torch.get_default_dtype()))
