"""dynode.models.ensemble: M members integrated as one stacked network, exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dynode as dn
from dynode.models import ensemble


def _member(seed: int, tau_e: float = 10.0) -> dn.Network:
    g = torch.Generator().manual_seed(seed)
    net = dn.Network()
    net.add_input("x", (5,))
    net.add_population("E", (6,), tau=tau_e, phi="relu", bias="unit")
    net.add_population("I", (4,), tau=5.0, phi="tanh")
    ops = [("x", "E", nn.Linear(5, 6), 0.0), ("E", "I", nn.Linear(6, 4, bias=False), 2.0),
           ("I", "E", nn.Linear(4, 6, bias=False), 2.0), ("E", "E", nn.Linear(6, 6, bias=False), 1.0)]
    for src, dst, op, d in ops:
        with torch.no_grad():
            for p in op.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.4)
        net.connect(src, dst, op, delay=d)
    with torch.no_grad():
        net.populations["E"].bias.copy_(torch.randn(6, generator=g) * 0.1)
    return net.double()


@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_stacked_members_match_their_own_runs(solver):
    members = [_member(i, tau_e=8.0 + i) for i in range(3)]
    big = ensemble.stack(members).double()
    x = torch.rand(2, 5, dtype=torch.float64)
    stim = dn.stimuli.Pulse(5.0, 20.0, {"x": x})
    sol = dn.integrate(big, stim, t_end=40.0, dt=1.0, solver=solver)
    assert sol.states["E"].shape == (41, 2, 3, 6)
    for m, net in enumerate(members):
        own = dn.integrate(net, stim, t_end=40.0, dt=1.0, solver=solver)
        for pop in ("E", "I"):
            torch.testing.assert_close(sol.states[pop][:, :, m], own.states[pop], rtol=1e-12, atol=1e-12)


def test_stack_refuses_what_it_cannot_stack():
    a, b = _member(0), _member(1)
    b.add_population("extra", (2,), tau=1.0)
    with pytest.raises(dn.ConfigurationError, match="member 1 does not have member 0's structure"):
        ensemble.stack([a, b])
    with pytest.raises(dn.ConfigurationError, match="at least two"):
        ensemble.stack([a])
    c1, c2 = (dn.Network() for _ in range(2))
    for c in (c1, c2):
        c.add_input("x", (1, 4, 4))
        c.add_population("A", (2, 4, 4), tau=1.0)
        c.connect("x", "A", nn.Conv2d(1, 2, 3, padding=1))
    with pytest.raises(dn.ConfigurationError, match=r"connection x -> A uses \['Conv2d'\]"):
        ensemble.stack([c1, c2])
