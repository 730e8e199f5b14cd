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

Operators: ``nn.Linear`` and ``nn.Identity`` (what small rate networks use); anything else
is refused with the connection named.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dynode.errors import ConfigurationError
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


def _stack_op(ops: Sequence[nn.Module], label: str, shared_input: bool) -> nn.Module:
    first = ops[0]
    if all(isinstance(op, nn.Identity) for op in ops):
        if shared_input:  # (B, n) -> (B, M, n): every member sees the input
            return _Broadcast(len(ops))
        return nn.Identity()
    if all(type(op) is nn.Linear for op in ops):
        if any(op.weight.shape != first.weight.shape or (op.bias is None) != (first.bias is None) for op in ops):
            raise ConfigurationError(f"ensemble: connection {label} has linear maps of different shapes "
                                     "across members; members must share their structure")
        bias = torch.stack([op.bias for op in ops]) if first.bias is not None else None
        return EnsembleLinear(torch.stack([op.weight for op in ops]), bias)
    kinds = sorted({type(op).__name__ for op in ops})
    raise ConfigurationError(f"ensemble: connection {label} uses {kinds}; stack() supports nn.Linear "
                             "and nn.Identity operators (run other members in a loop)")


class _Broadcast(nn.Module):
    """``(B, *s) -> (B, M, *s)``: an input shared by ``M`` members."""

    def __init__(self, members: int):
        super().__init__()
        self.members = members

    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(1).expand(x.shape[0], self.members, *x.shape[1:])


def stack(members: Sequence[Network]) -> Network:
    """One :class:`~dynode.Network` integrating every member at once (see the module doc).

    The members must have the same inputs, populations (names, shapes, activation types,
    bias kinds), connections and delays; weights, biases and ``tau`` may differ. Populations
    get shape ``(M, *shape)``, ``tau`` a tensor when the members' taus differ.
    """
    members = list(members)
    if len(members) < 2 or not all(isinstance(m, Network) for m in members):
        raise ConfigurationError("ensemble.stack needs a list of at least two dynode.Network members")
    first = members[0]
    signature = _structure(first)
    for i, m in enumerate(members[1:], 1):
        if _structure(m) != signature:
            raise ConfigurationError(f"ensemble: member {i} does not have member 0's structure (inputs, "
                                     "populations, shapes, activations, connections and delays must agree)")
    M = len(members)
    net = Network()
    for name, shape in first.input_shapes().items():
        net.add_input(name, shape)
    for name, pop in first.populations.items():
        if pop.combine is not None:
            raise ConfigurationError(f"ensemble: population {name!r} has a custom combine; stack() "
                                     "supports summed inputs")
        taus = [m.populations[name].tau for m in members]
        if all(not isinstance(t, Tensor) for t in taus) and len(set(taus)) == 1:
            tau = taus[0]
        else:
            tau = torch.stack([torch.as_tensor(t, dtype=torch.float32).expand(pop.shape) for t in taus])
        net.add_population(name, (M, *pop.shape), tau=tau, phi=pop.phi, bias="unit" if pop.bias is not None else False)
        net.populations[name].role = pop.role
        if pop.bias is not None:
            with torch.no_grad():
                net.populations[name].bias.copy_(torch.stack(
                    [m.populations[name].bias.detach().expand(pop.shape) for m in members]))
    for c in first.connections:
        ops = [m.populations[c.dst].incoming[c.src] for m in members]
        op = _stack_op(ops, c.label, c.src in first.input_shapes())
        net.connect(c.src, c.dst, op, delay=c.delay, skip_initial=c.skip_initial)
    return net


def _structure(net: Network) -> tuple:
    pops = tuple((n, p.shape, type(p.phi).__name__, p.bias is not None, p.combine is None)
                 for n, p in net.populations.items())
    conns = tuple((c.src, c.dst, c.delay, c.skip_initial) for c in net.connections)
    return tuple(net.input_shapes().items()), pops, conns
