"""A network's evaluation plan: what :meth:`Network.drive <dynode.network.Network.drive>` runs.

:func:`build_plan` resolves every connection once into a :class:`Term` (its operator, its delay and
where it reads: :class:`Read`), and every population into a :class:`PopulationPlan`
``Phi(combine(terms) + bias)``, so that the step loop does no lookups by string beyond reading
its state and input dicts. :func:`sweep_order` gives the order of a sequential sweep
(``Euler(order="sequential")``) and the populations on zero-delay cycles.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor, nn

from dynode.population import Bounded, Connection, Population

__all__ = ["Read", "Term", "PopulationPlan", "build_plan", "sweep_order"]


class Read(Enum):
    """Where a connection's operator reads its source."""

    STATE = "r_src(t)"          # a population, no delay: the current state
    INPUT = "I(t)"              # an input, no delay: the stimulus now
    LAG = "r_src(t - d)"        # a population or input read with delay d from the history
    LEARNT = "r_src(t - d), d learnt"  # a population read with a learnt delay (differentiable in d)


@dataclass(frozen=True, eq=False, slots=True)
class Term:
    """One incoming connection as evaluated: ``op(source read as `read`)`` (``skip_initial``:
    see :meth:`dynode.network.Network.connect`; ``learnt``: the delay of a :attr:`Read.LEARNT`)."""

    src: str
    op: nn.Module
    read: Read
    delay: float
    skip_initial: bool
    learnt: Bounded | None = None


_STATE, _INPUT, _LAG = Read.STATE, Read.INPUT, Read.LAG


@dataclass(frozen=True, eq=False, slots=True)
class PopulationPlan:
    """A population as evaluated: ``Phi(combine({c: op_c(...)}) + bias)`` (sum by default)."""

    name: str
    terms: tuple[Term, ...]
    combine: nn.Module | None
    bias: Tensor | None
    phi: nn.Module

    def drive(self, state: Mapping[str, Tensor], history, inputs: Mapping[str, Tensor]) -> Tensor:
        """``Phi(u)`` with ``u = combine(terms) + bias``."""
        combine, u, parts = self.combine, None, {}
        for term in self.terms:  # each term read in place (this is the hot loop)
            if term.skip_initial and history.reads_initial(term.delay):
                continue
            read = term.read
            x = (state[term.src] if read is _STATE else inputs[term.src] if read is _INPUT
                 else history.lag(term.src, term.delay) if read is _LAG else term.learnt.lag(history, term.src))
            y = term.op(x)
            if combine is None:
                u = y if u is None else u + y
            else:
                parts[term.src] = y
        if combine is not None:
            u = combine(parts)
        elif u is None:
            u = torch.zeros_like(state[self.name])
        if self.bias is not None:
            u = u + self.bias
        return self.phi(u)


def _term(c: Connection, from_input: bool) -> Term:
    if c.learnt is not None:
        return Term(c.src, c.op, Read.LEARNT, c.delay, c.skip_initial, c.learnt)
    read = Read.LAG if c.delay > 0 else Read.INPUT if from_input else Read.STATE
    return Term(c.src, c.op, read, c.delay, c.skip_initial)


def build_plan(populations: Mapping[str, Population], connections: Sequence[Connection],
               inputs: Collection[str]) -> tuple[PopulationPlan, ...]:
    """One :class:`PopulationPlan` per population, in declaration order; a connection from one of
    ``inputs`` without delay reads :attr:`Read.INPUT`."""
    return tuple(PopulationPlan(name, tuple(_term(c, c.src in inputs) for c in connections if c.dst == name),
                                pop.combine, pop.bias, pop.phi)
                 for name, pop in populations.items())


def sweep_order(names: Sequence[str], connections: Sequence[Connection]
                ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``names`` in topological order of their zero-delay connections (declaration order breaks
    ties and cycles), and those on cycles of zero-delay connections (self-connections aside)."""
    deps = {n: {c.src for c in connections if c.dst == n and c.delay == 0 and c.src in names and c.src != n}
            for n in names}
    order: list[str] = []
    while len(order) < len(names):
        ready = [n for n in names if n not in order and deps[n] <= set(order)]
        order.append(ready[0] if ready else next(n for n in names if n not in order))
    return tuple(order), tuple(n for n in order if n in _upstream(n, deps))


def _upstream(name: str, deps: dict[str, set[str]]) -> set[str]:
    """Every population that reaches ``name`` through ``deps`` (``name`` itself if on a cycle)."""
    seen: set[str] = set()
    todo = list(deps[name])
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(deps[n])
    return seen
