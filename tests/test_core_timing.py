"""Exact delays, sequential sweeps, batching and save times."""

import pytest
import torch
from torch import nn

import dynode as dn
from dynode.stimuli import Pulse


def chain(delay: float, tau: float = 4.0) -> dn.Network:
    net = dn.Network()
    net.add_input("x", shape=(2,))
    net.add_population("A", shape=(2,), tau=tau)
    net.add_population("B", shape=(2,), tau=tau)
    net.connect("x", "A")
    net.connect("A", "B", delay=delay)
    return net


def first_nonzero(sol, name):
    active = sol.states[name].abs().amax(dim=tuple(range(1, sol.states[name].dim()))) > 0
    return sol.ts[active.nonzero()[0, 0]].item()


@pytest.mark.parametrize("solver", ["euler", "heun", "midpoint", "rk4"])
@pytest.mark.parametrize("delay", [1.0, 3.0, 7.5])
def test_pulse_reaches_b_exactly_delay_later(solver, delay):
    """B's response starts exactly ``delay`` ms after it does through a zero-delay connection."""
    stim = Pulse(onset=5.0, duration=10.0, value=torch.ones(2))
    delayed = dn.integrate(chain(delay), stim, t_end=40.0, dt=0.5, solver=solver)
    direct = dn.integrate(chain(0.0), stim, t_end=40.0, dt=0.5, solver=solver)
    # the step [5, 5.5] is the first to see the pulse (the one ending at 5 sees its left limit)
    assert first_nonzero(delayed, "A") == first_nonzero(direct, "A") == 5.5
    assert first_nonzero(delayed, "B") - first_nonzero(direct, "B") == delay


def test_input_delay_is_evaluated_at_t_minus_delay():
    net = dn.Network()
    net.add_input("x", shape=(1,))
    net.add_population("A", shape=(1,), tau=1.0)
    net.connect("x", "A", delay=2.5)
    sol = dn.integrate(net, Pulse(4.0, 1.0, torch.ones(1)), t_end=12.0, dt=0.5)
    assert first_nonzero(sol, "A") == 4.0 + 2.5 + 0.5


def test_sequential_order_crosses_zero_delay_chain_in_one_step():
    net = dn.Network()
    net.add_input("x", shape=(2,))
    for name in ("A", "B", "C"):
        net.add_population(name, shape=(2,), tau=1.0)
    # declared out of order on purpose: the sweep follows the connections, not declaration
    net.connect("B", "C")
    net.connect("A", "B")
    net.connect("x", "A")
    x = torch.tensor([1.0, 2.0])
    seq = dn.integrate(net, x, t_end=1.0, dt=1.0, solver=dn.solvers.Euler(order="sequential"))
    sim = dn.integrate(net, x, t_end=1.0, dt=1.0)
    assert net.update_order() == ("A", "B", "C")
    torch.testing.assert_close(seq.states["C"][-1, 0], x)  # dt == tau: r = Phi(u) in one sweep
    assert sim.states["C"][-1].abs().max() == 0 and sim.states["B"][-1].abs().max() == 0
    torch.testing.assert_close(sim.states["A"][-1, 0], x)


def test_sequential_respects_delays():
    net = chain(delay=2.0, tau=1.0)
    sol = dn.integrate(net, torch.ones(2), t_end=6.0, dt=1.0, solver=dn.solvers.Euler(order="sequential"))
    assert first_nonzero(sol, "A") == 1.0
    assert first_nonzero(sol, "B") == 3.0  # B(t_{n+1}) reads A(t_{n+1} - 2): 2 ms after A


def test_batch_equals_per_sample():
    torch.manual_seed(1)
    net = dn.Network()
    net.add_input("img", shape=(2, 8, 8))
    net.add_population("V1", shape=(4, 4, 4), tau=5.0, phi="relu", bias=True)
    net.add_population("V2", shape=(6, 2, 2), tau=5.0, phi="tanh")
    net.connect("img", "V1", nn.Conv2d(2, 4, 3, stride=2, padding=1))
    net.connect("V1", "V1", nn.Conv2d(4, 4, 3, padding=1), delay=2.0)
    net.connect("V1", "V2", nn.Conv2d(4, 6, 3, stride=2, padding=1), delay=1.0)
    imgs = torch.randn(3, 2, 8, 8)
    both = dn.integrate(net, imgs, t_end=10.0, dt=1.0, solver="rk4")
    for i in range(3):
        one = dn.integrate(net, imgs[i:i + 1], t_end=10.0, dt=1.0, solver="rk4")
        for name in ("V1", "V2"):
            torch.testing.assert_close(both.states[name][:, i], one.states[name][:, 0], atol=1e-6, rtol=1e-5)


def test_unbatched_stimulus_is_shared_and_batch_size_applies():
    net = chain(1.0)
    sol = dn.integrate(net, torch.ones(2), t_end=4.0, dt=1.0, batch_size=5)
    assert sol.states["A"].shape == (5, 5, 2)
    assert torch.equal(sol.states["A"][:, 0], sol.states["A"][:, 4])


def test_save_at_grid_and_every():
    net = chain(1.0)
    sol = dn.integrate(net, torch.ones(2), t_end=10.0, dt=0.5, save_at=2.0)
    assert sol.ts.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    full = dn.integrate(net, torch.ones(2), t_end=10.0, dt=0.5)
    assert len(full.ts) == 21 and full.ts.dtype == torch.float64
    torch.testing.assert_close(sol.states["B"], full.states["B"][::4])
    last = dn.integrate(net, torch.ones(2), t_end=10.0, dt=0.5, save_at=[10.0])
    torch.testing.assert_close(last.states["A"][0], full.final_state["A"])
    assert last.stats.steps == 20 and last.stats.nfe == 20 and last.stats.rejected == 0
    assert last.stats.status == dn.Status.SUCCESS


def test_dt_and_half_dt_give_comparable_trajectories_on_one_ms_grid():
    net = chain(2.0)
    stim = Pulse(2.0, 6.0, torch.ones(2))
    a = dn.integrate(net, stim, t_end=20.0, dt=1.0, solver="rk4", save_at=1.0)
    b = dn.integrate(net, stim, t_end=20.0, dt=0.5, solver="rk4", save_at=1.0)
    assert torch.equal(a.ts, b.ts)
    torch.testing.assert_close(a.states["B"], b.states["B"], atol=0.02, rtol=0)


def test_initial_state_override_and_continuation():
    net = chain(1.0)
    x = torch.ones(2)
    full = dn.integrate(net, x, t_end=10.0, dt=0.5)
    first = dn.integrate(net, x, t_end=5.0, dt=0.5)
    # without delays crossing the cut the continuation is exact; here B reads A 1 ms back,
    # so the continuation (constant history) differs only in B's first ms
    second = dn.integrate(net, x, t0=5.0, t_end=10.0, dt=0.5, initial_state=first.final_state)
    torch.testing.assert_close(second.states["A"], full.states["A"][10:])


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4"])
def test_continuing_a_solution_is_exact_with_delays(solver):
    torch.manual_seed(0)
    net = dn.Network()
    net.add_input("x", shape=(3,))
    net.add_population("A", shape=(3,), tau=3.0, phi="tanh")
    net.add_population("B", shape=(3,), tau=2.0, phi="tanh")
    net.connect("x", "A", nn.Linear(3, 3))
    net.connect("A", "A", nn.Linear(3, 3), delay=2.0)
    net.connect("A", "B", nn.Linear(3, 3), delay=1.5)
    stim = Pulse(1.0, 6.0, torch.ones(3))
    with torch.no_grad():
        full = dn.integrate(net, stim, t_end=12.0, dt=0.5, solver=solver)
        first = dn.integrate(net, stim, t_end=5.0, dt=0.5, solver=solver)
        second = dn.integrate(net, stim, t0=5.0, t_end=12.0, dt=0.5, solver=solver, initial_state=first)
        restart = dn.integrate(net, stim, t0=5.0, t_end=12.0, dt=0.5, solver=solver,
                               initial_state=first.final_state)
    for name in ("A", "B"):
        torch.testing.assert_close(second.states[name], full.states[name][10:], atol=1e-6, rtol=1e-6)
    assert full.states["B"][10:].abs().max() > 0.05
    assert not torch.allclose(restart.states["B"], full.states["B"][10:], atol=1e-4)  # constant history


def test_continuation_errors():
    net = chain(1.0)
    first = dn.integrate(net, torch.ones(2), t_end=4.0, dt=0.5)
    with pytest.raises(dn.DelayError, match=r"made with dt = 0.5 ms at dt = 0.25 ms"):
        dn.integrate(net, torch.ones(2), t0=4.0, t_end=8.0, dt=0.25, initial_state=first)
    with pytest.raises(dn.ConfigurationError, match=r"kept no derivatives"):
        dn.integrate(net, torch.ones(2), t0=4.0, t_end=8.0, dt=0.5, solver="rk4", initial_state=first)
