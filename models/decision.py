r"""Evidence accumulation: a decision population that integrates a readout's evidence, and the
decision as the first accumulator to reach a bound (``dynode.models.decision``).

For a network with a readout ``z(t) = W pool(r(t)) + b`` (``K`` classes, the trained
classifier's own :class:`~dynode.models.Readout`), :func:`add_accumulator` adds a population
``A`` of shape ``(K,)``, one accumulator per class, obeying (time in ms)

.. math::

    \tau_a \, dA_k = \big(e_k(t - d) - \lambda A_k\big)\,dt + \nu \sqrt{2 \tau_a}\, dW_k,
    \qquad e = \mathrm{softmax}(z) \ \text{or}\ e = \mathrm{relu}(z)

(``evidence="softmax"``: the classifier's probabilities, so the accumulators race with total
drift ``1 / tau_a`` per ms; ``"relu"``: the rectified logits). ``lambda`` is the leak
(``leak > 0``: the accumulator's leak relative to the evidence, ``1/lambda`` the asymptote of a
unit evidence), ``nu`` the noise (``noise``), ``d`` the readout's delay (``delay``). The decision
is the first time ``max_k A_k`` reaches the bound ``B`` (upward), the choice the class whose
accumulator got there:

.. math::

    T = \min\{t : \max_k A_k(t) \ge B\}, \qquad \hat y = \arg\max_k A_k(T).

It is dynode's one equation ``tau dr/dt = -r + Phi(u)`` with ``tau = tau_a / lambda``,
``Phi`` the identity, ``u = e / lambda`` and the population noise ``sigma = nu / sqrt(lambda)``
(``tau dr = (-r + Phi(u)) dt + sigma sqrt(2 tau) dW``, :mod:`dynode.brownian`): multiplied by
``lambda`` it is the line above. So any solver integrates it with the backbone, delays
included, and noise needs ``solver="euler"`` (Euler-Maruyama) or ``"heun"`` (stochastic Heun)
with ``seed=``.

Hand-computable case (noise 0, constant evidence ``e`` from ``A(0) = 0``):
``A(t) = (e / lambda) (1 - exp(-lambda t / tau_a))``, which reaches ``B`` at
``T = -(tau_a / lambda) ln(1 - lambda B / e)`` when ``lambda B < e`` (never otherwise; for a
small leak ``T -> tau_a B / e``). Without evidence the accumulator's stationary standard
deviation is ``nu / sqrt(lambda)``; for a leak small against ``1/t`` its variance grows as
``2 nu^2 t / tau_a``.

:func:`decide` runs a network with an accumulator until every sample has decided (or
``t_end``) and returns the reaction times (ms, NaN where no decision) and choices (-1 where
none); :func:`race` gives the decisions at several bounds from one run (each accumulator's
first crossing of each bound: the noise path and so the dynamics do not depend on the bound).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dynode.checks import check_delay, check_number
from dynode.errors import ConfigurationError
from dynode.events import Event
from dynode.integrate import integrate
from dynode.models.readout import Readout
from dynode.network import Network
from dynode.solution import Solution

__all__ = ["EVIDENCE", "Evidence", "add_accumulator", "accumulator_parameters", "set_accumulator_noise", "Decisions",
           "decide", "race"]

EVIDENCE = ("softmax", "relu")
"""What an accumulator integrates from the readout's logits ``z``: ``softmax(z)`` or ``relu(z)``."""


class Evidence(nn.Module):
    """The accumulators' drive ``u = e(z) / leak`` from a population's state ``r``:
    ``z = readout.linear(readout.features(r))`` (the readout's own parameters, shared: training
    the decision trains the classifier's readout) and ``e = softmax(z)`` or ``relu(z)``."""

    def __init__(self, readout: Readout, kind: str = "softmax", leak: float = 1.0):
        super().__init__()
        if kind not in EVIDENCE:
            raise ConfigurationError(f"evidence={kind!r}; use one of {', '.join(EVIDENCE)}")
        self.readout, self.kind, self.leak = readout, kind, float(leak)

    def logits(self, r: Tensor) -> Tensor:
        return self.readout.linear(self.readout.features(r))

    def forward(self, r: Tensor) -> Tensor:
        z = self.logits(r)
        e = torch.softmax(z, dim=-1) if self.kind == "softmax" else torch.relu(z)
        return e / self.leak

    def extra_repr(self) -> str:
        return f"evidence={self.kind!r}, leak={self.leak:g}"


def add_accumulator(net: Network, *, tau: float = 100.0, leak: float = 0.05, noise: float = 0.0,
                    evidence: str = "softmax", delay: float = 0.0, readout: Readout | None = None,
                    name: str = "decision") -> str:
    r"""Add an accumulator per class to ``net`` (see the module doc for the equations): a
    population ``name`` of shape ``(K,)`` integrating the evidence of ``readout`` (default the
    network's own, ``net.readout``, e.g. the trained classifier's) read ``delay`` ms late.

    ``tau`` (ms, > 0): ``tau_a``; ``leak`` (> 0): ``lambda``; ``noise`` (>= 0): ``nu``, in units
    of the accumulator (``Var A(t) ~ 2 nu^2 t / tau_a`` while the leak is negligible);
    ``evidence``: ``"softmax"`` or ``"relu"`` of the readout's logits. The population's role is
    ``"decision"`` (not one of ``net.areas()``). Returns ``name``. Every argument is checked
    before the network changes; a failure after that leaves it as it was."""
    what = "add_accumulator"
    if not isinstance(net, Network):
        raise ConfigurationError(f"{what}: net must be a dynode.Network, got {type(net).__name__}")
    ro = net.readout if readout is None else readout
    if not isinstance(ro, Readout):
        raise ConfigurationError(f"{what}: the accumulators integrate a readout's evidence: attach one with "
                                 "net.set_readout(dn.models.Readout(...)) or pass readout=")
    if ro.population not in net.populations:
        raise ConfigurationError(f"{what}: the readout reads {ro.population!r}, which is not a population of the "
                                 f"network ({list(net.populations)})")
    tau = check_number(tau, f"{what}: tau (ms)", positive=True)
    leak = check_number(leak, f"{what}: leak (lambda; 1/leak is the asymptote of a unit evidence)", positive=True)
    noise = check_number(noise, f"{what}: noise (nu, in units of the accumulator)")
    delay = check_delay(delay, f"{what}: delay")
    if evidence not in EVIDENCE:
        raise ConfigurationError(f"{what}: evidence={evidence!r}; use one of {', '.join(EVIDENCE)}")
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"{what}: name must be a non-empty string, got {name!r}")
    if name in net.populations or name in net.input_names():
        raise ConfigurationError(f"{what}: {name!r} is already a population or input of the network; "
                                 "pass another name=")
    with net.atomic():
        net.add_population(name, shape=(ro.num_classes,), tau=tau / leak, phi="identity",
                           noise=noise / math.sqrt(leak))
        net.populations[name].role = "decision"
        net.connect(ro.population, name, Evidence(ro, evidence, leak), delay=delay)
    return name


def accumulator_parameters(net: Network, name: str = "decision") -> dict:
    """``{tau, leak, noise, evidence}`` of the accumulator ``name`` (as :func:`add_accumulator` took them)."""
    pop = net.populations[name] if name in net.populations else None
    op = None if pop is None else next((m for m in pop.incoming.values() if isinstance(m, Evidence)), None)
    if op is None:
        raise ConfigurationError(f"{name!r} is not an accumulator of this network (add one with "
                                 "dn.models.add_accumulator)")
    sigma = pop.noise
    if isinstance(sigma, Tensor):
        raise ConfigurationError(f"accumulator {name!r}: its noise was set per unit; give one number")
    return {"tau": float(pop.tau) * op.leak, "leak": op.leak, "noise": float(sigma) * math.sqrt(op.leak),
            "evidence": op.kind}


def set_accumulator_noise(net: Network, noise: float, name: str = "decision") -> None:
    """Set the accumulator's noise ``nu`` (units of the accumulator, as :func:`add_accumulator`)."""
    leak = accumulator_parameters(net, name)["leak"]
    noise = check_number(noise, f"accumulator {name!r}: noise (nu)")
    net.populations[name].noise = noise / math.sqrt(leak)


def _check_bound(bound, what: str, *, learnable: bool = False) -> float | Tensor:
    """A bound: a finite number > 0, or (``learnable``) a one-element floating tensor > 0, which
    may require a gradient (the decision times are differentiable with respect to it)."""
    if learnable and isinstance(bound, Tensor):
        if bound.numel() != 1 or not bound.is_floating_point() or bound.is_meta:
            raise ConfigurationError(f"{what}: a bound tensor must hold one floating value, got {bound.dtype} of "
                                     f"shape {tuple(bound.shape)}")
        value = float(bound.detach())
        if not (math.isfinite(value) and value > 0):
            raise ConfigurationError(f"{what}: the bound must be finite and > 0 (the accumulators start at 0), "
                                     f"got {value!r}")
        return bound.reshape(())
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound) or not bound > 0:
        raise ConfigurationError(f"{what}: the bound must be a finite number > 0 (the accumulators start at 0), "
                                 f"got {bound!r}")
    return float(bound)


@dataclass
class Decisions:
    """The outcome of :func:`decide` / :func:`race`.

    rt : ``(batch,)`` float64 reaction times in ms from ``t0`` (NaN: no decision by ``t_end``);
        for :func:`race` ``(bounds, batch)``.
    choice : ``(batch,)`` int64, the class whose accumulator reached the bound (-1: none).
    state : ``(batch, K)`` the accumulators at the decision (at ``t_end`` without one), with
        the gradient of the run (for :func:`dynode.models.losses.decision_loss`); None for
        :func:`race`.
    times : the same reaction times as ``rt`` (float64, as ``sol.events``), differentiable.
    solution : the run.
    """

    rt: Tensor
    choice: Tensor
    state: Tensor | None
    times: Tensor
    solution: Solution


def _check_accumulator(net, name: str, who: str) -> None:
    if not isinstance(net, Network) or name not in net.populations:
        raise ConfigurationError(f"{who}: the network has no accumulator {name!r}; add one with "
                                 "dn.models.add_accumulator(net, ...)")
    accumulator_parameters(net, name)  # an accumulator, not any population


def _reaches(name: str, bound: float | Tensor, k: int | None = None) -> Event:
    """The event ``max_k A_k - bound`` (or ``A_k - bound`` for one class ``k``) rising through 0."""
    if k is None:
        return Event(lambda t, state: state[name].max(-1).values - bound, direction=+1, terminal=True)
    return Event(lambda t, state: state[name][:, k] - bound, direction=+1)


def _at_decision(net: Network, name: str, sol: Solution, t: Tensor, decided: Tensor) -> Tensor:
    """The accumulators at the decision, ``A(T)``: the held state, whose gradient is taken at
    a fixed decision time, plus ``dA/dt (T - T.detach())`` (zero in value): the total
    derivative ``dA(T)/dp = dA/dp + dA/dt dT/dp``, so that a loss on ``A(T)`` sees how the
    decision time moves (e.g. with a learnt bound). ``dA/dt = (e/leak - A) / tau`` from the
    held states, which are those at ``T`` when the evidence is read without delay (the
    default); with a delay the held state is returned as it is (the term needs the past)."""
    state = sol.final_state[name]
    pop = net.populations[name]
    (src, op), = pop.incoming.items()
    if pop.delays[src] != 0 or not t.requires_grad:
        return state
    slope = (op(sol.final_state[src]) - state) / pop.tau
    shift = torch.where(decided, t - t.detach(), torch.zeros_like(t)).to(state.dtype)
    return state + slope * shift.unsqueeze(-1)


def race(net: Network, stimulus, *, bounds: Sequence[float], t_end: float, dt: float, solver="euler",
         seed=None, initial_state=None, t0: float = 0.0, name: str = "decision") -> Decisions:
    """The decisions at every bound in ``bounds`` from one run (no termination): each
    accumulator's first upward crossing of each bound is an event (``integrate(...,
    events=)``); at a bound the decision is the earliest of them and its class. ``rt``,
    ``choice``, ``times``: ``(bounds, batch)``; ``state`` is None; the solution saves ``t_end``
    only."""
    if isinstance(bounds, (str, bytes)) or not isinstance(bounds, Sequence) or not bounds:
        raise ConfigurationError(f"race: bounds must be a non-empty list of numbers > 0, got {bounds!r}")
    bs = [_check_bound(b, "race") for b in bounds]
    _check_accumulator(net, name, "race")
    K = net.populations[name].shape[0]
    events = {f"{i}:{k}": _reaches(name, b, k) for i, b in enumerate(bs) for k in range(K)}
    sol = integrate(net, stimulus, t0=t0, t_end=t_end, dt=dt, solver=solver, seed=seed,
                    initial_state=initial_state, save_at=[t_end], events=events)
    times, choices = [], []
    for i in range(len(bs)):
        tk = torch.stack([sol.events[f"{i}:{k}"] for k in range(K)], -1)   # (B, K), NaN: never
        tmin, c = torch.where(torch.isnan(tk), torch.full_like(tk, math.inf), tk).min(-1)
        decided = torch.isfinite(tmin)
        times.append(torch.where(decided, tmin, torch.full_like(tmin, math.nan)) - t0)
        choices.append(torch.where(decided, c, torch.full_like(c, -1)))
    times_t = torch.stack(times)
    return Decisions(rt=times_t.detach().double(), choice=torch.stack(choices), state=None, times=times_t,
                     solution=sol)


def decide(net: Network, stimulus, *, bound: float | Tensor, t_end: float, dt: float, solver="euler", seed=None,
           initial_state=None, t0: float = 0.0, name: str = "decision", save_at=None) -> Decisions:
    """Run ``net`` (with an accumulator ``name``) under ``stimulus`` from ``t0`` to at most
    ``t_end`` (ms): a sample decides when ``max_k A_k`` first reaches ``bound`` (> 0; a number,
    or a one-element tensor that may be learnt: the times are differentiable in it), a
    terminal event (``integrate(..., events={"decision": Event(max_k A_k - bound, +1,
    terminal=True)})``: its state is held from then on, and the run ends when every sample has
    decided). Returns :class:`Decisions`: reaction times from ``t0`` (NaN where no decision by
    ``t_end``; ``times`` differentiable by the implicit function theorem), the choices, the
    accumulators at the decision (``state``: the held state, with the gradient of its value
    through the decision time added, see :func:`_at_decision`). ``save_at`` as in
    :func:`dynode.integrate`."""
    bound = _check_bound(bound, "decide", learnable=True)
    _check_accumulator(net, name, "decide")
    sol = integrate(net, stimulus, t0=t0, t_end=t_end, dt=dt, solver=solver, seed=seed,
                    initial_state=initial_state, save_at=save_at, events={"decision": _reaches(name, bound)})
    t = sol.events["decision"]
    decided = ~torch.isnan(t)
    state = _at_decision(net, name, sol, t, decided)
    choice = torch.where(decided, state.argmax(-1), torch.full_like(decided, -1, dtype=torch.int64))
    return Decisions(rt=(t - t0).detach().double(), choice=choice, state=state, times=t - t0, solution=sol)
