"""dynode.network: the typed evaluation plan, drive = Phi(u), the run protocol."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dynode as dn
from dynode.network import PopulationPlan, Read


def _net() -> dn.Network:
    net = dn.Network()
    net.add_input("x", shape=(3,))
    net.add_population("A", shape=(3,), tau=4.0, phi="relu", bias=True)
    net.add_population("B", shape=(3,), tau=2.0, phi="identity")
    net.connect("x", "A")
    net.connect("B", "A", nn.Linear(3, 3, bias=False), delay=2.0)
    net.connect("A", "B", nn.Linear(3, 3, bias=False))
    net.connect("x", "B", delay=1.0, skip_initial=True)
    return net


def test_plan_is_typed_and_names_where_each_term_reads():
    net = _net()
    plan = net.plan()
    assert all(isinstance(p, PopulationPlan) for p in plan)
    assert [p.name for p in plan] == ["A", "B"]
    reads = {(p.name, t.src): (t.read, t.delay, t.skip_initial) for p in plan for t in p.terms}
    assert reads == {("A", "x"): (Read.INPUT, 0.0, False), ("A", "B"): (Read.LAG, 2.0, False),
                     ("B", "A"): (Read.STATE, 0.0, False), ("B", "x"): (Read.LAG, 1.0, True)}
    assert net.plan() is plan  # built once
    net.add_population("C", shape=(3,), tau=1.0)
    assert [p.name for p in net.plan()] == ["A", "B", "C"]  # rebuilt after a change


def test_update_order_and_cycles_follow_a_later_connection():
    net = _net()
    assert net.update_order() == ("A", "B") and net.zero_delay_cycles() == ()
    net.add_population("C", shape=(3,), tau=1.0)
    net.connect("C", "A")  # A now waits for C
    assert net.update_order() == ("C", "A", "B") and net.zero_delay_cycles() == ()
    net.connect("B", "C")  # C -> A -> B -> C without delay (declaration order breaks the cycle)
    assert net.zero_delay_cycles() == ("A", "B", "C")


class _Lags:
    """A history that returns a fixed tensor per (source, delay) and sits past t0."""

    def __init__(self, values):
        self.values = values

    def lag(self, name, delay):
        return self.values[(name, delay)]

    elapsed = 100.0  # ms since t0: past every delay, no read falls on the initial state

    def reads_initial(self, delay):
        return self.elapsed <= delay


def test_drive_is_phi_of_the_summed_delayed_terms_plus_bias():
    torch.manual_seed(0)
    net = _net()
    with torch.no_grad():
        net.populations["A"].bias.fill_(-0.1)
    x, a, b = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    b_lag, x_lag = torch.randn(2, 3), torch.randn(2, 3)
    hist = _Lags({("B", 2.0): b_lag, ("x", 1.0): x_lag})
    out = net.drive(0.0, {"A": a, "B": b}, hist, {"x": x})
    w_ba = net.populations["A"].incoming["B"].weight
    w_ab = net.populations["B"].incoming["A"].weight
    torch.testing.assert_close(out["A"], torch.relu(x + b_lag @ w_ba.T - 0.1))
    torch.testing.assert_close(out["B"], a @ w_ab.T + x_lag)
    assert list(out) == ["A", "B"]  # every population, in declaration order
    # forward is (Phi(u) - r) / tau
    f = net(0.0, {"A": a, "B": b}, hist, {"x": x})
    torch.testing.assert_close(f["A"], (out["A"] - a) / 4.0)


def test_skip_initial_term_is_absent_while_it_reads_the_initial_state():
    net = _net()
    x = torch.ones(1, 3)
    zeros = {"A": torch.zeros(1, 3), "B": torch.zeros(1, 3)}
    hist = _Lags({("B", 2.0): torch.zeros(1, 3), ("x", 1.0): 5 * torch.ones(1, 3)})
    hist.elapsed = 0.0  # t - 1 ms <= t0: the x -> B term is skipped, not op(x(t - 1))
    assert torch.equal(net.drive(0.0, zeros, hist, {"x": x})["B"], torch.zeros(1, 3))
    hist.elapsed = 2.0
    assert torch.equal(net.drive(0.0, zeros, hist, {"x": x})["B"], 5 * torch.ones(1, 3))


def test_euler_step_is_lerp_of_the_state_towards_phi_u():
    """One Euler step: r1 = r0 + dt/tau (Phi(u(r0)) - r0), exactly (float64)."""
    torch.manual_seed(1)
    net = dn.Network()
    net.add_input("x", shape=(4,))
    net.add_population("A", shape=(4,), tau=5.0, phi="tanh")
    net.connect("x", "A")
    net.connect("A", "A", nn.Linear(4, 4, bias=False))
    net.double()
    r0 = torch.randn(3, 4, dtype=torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64)
    sol = dn.integrate(net, x, t_end=1.0, dt=1.0, initial_state={"A": r0})
    w = net.populations["A"].incoming["A"].weight
    phi_u = torch.tanh(x + r0 @ w.T)
    assert torch.equal(sol.states["A"][-1], torch.lerp(r0, phi_u, 1.0 / 5.0))


def test_run_protocol_is_frozen_validated_and_converted_from_a_dict():
    net = dn.Network()
    assert net.protocol == dn.RunProtocol()
    net.protocol = {"dt": 2, "t_end": 40, "steps": 20}
    assert net.protocol == dn.RunProtocol(dt=2.0, t_end=40.0, steps=20)
    assert isinstance(net.protocol.dt, float)
    with pytest.raises(dn.ConfigurationError, match="unknown keys.*'onset'"):
        net.protocol = {"onset": 5.0}
    with pytest.raises(dn.ConfigurationError, match="RunProtocol.dt"):
        dn.RunProtocol(dt=0.0)
    with pytest.raises(dn.ConfigurationError, match="must be a dynode.RunProtocol"):
        net.protocol = 3
    with pytest.raises(AttributeError):
        net.protocol.dt = 1.0  # frozen


def test_trainer_and_classifier_read_the_protocol_stimulus_window():
    net = dn.models.cordsnet(num_classes=3, width=1 / 16, input_shape=(3, 16, 16),
                             spontaneous_steps=2, stimulus_steps=4, after_steps=2)
    p = net.protocol
    clf = dn.models.Classifier(net)
    assert (clf.onset, clf.duration) == (p.stimulus_onset, p.stimulus_duration)
    trainer = dn.train.Trainer(net, dn.train.TrainingConfig(epochs=1))
    assert (trainer.onset, trainer.duration) == (p.stimulus_onset, p.stimulus_duration)
    mine = dn.train.Trainer(net, dn.train.TrainingConfig(epochs=1, stimulus_onset=0.0))
    assert (mine.onset, mine.duration) == (0.0, None)  # the config's choice wins


def test_the_architecture_doc_shows_the_euler_step_as_it_is():
    from pathlib import Path
    import re

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "ARCHITECTURE.md").read_text()
    excerpt = re.search(r"```python\n(def step\(n: int.*?)```", doc, re.S).group(1)
    source = (root / "solvers" / "fixed.py").read_text()
    indented = "\n".join(("        " + line) if line else "" for line in excerpt.splitlines())
    assert indented in source
