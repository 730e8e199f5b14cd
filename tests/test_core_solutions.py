"""Analytic solutions and convergence orders of the fixed-step solvers."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dynode as dn
from fields import ScalarDDE, leaky

R1 = -1 + 2 / math.e
R2 = 1 + 2 / math.e**2 - 4 / math.e
SOLVERS = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


def dde_error(solver: str, dt: float) -> float:
    sol = dn.integrate(ScalarDDE(), t_end=2.0, dt=dt, solver=solver, save_at=[1.0, 2.0])
    r = sol.states["r"][:, 0, 0]
    return max(abs(r[0].item() - R1), abs(r[1].item() - R2))


@pytest.mark.parametrize("solver,order", SOLVERS.items())
def test_scalar_dde_converges_with_the_method_order(f64, solver, order):
    dts = [1 / 8, 1 / 16, 1 / 32]
    errs = [dde_error(solver, dt) for dt in dts]
    observed = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert all(abs(o - order) < 0.3 for o in observed), (solver, errs, observed)
    assert errs[-1] < {1: 2e-2, 2: 5e-4, 4: 2e-8}[order]


def test_rk4_dde_values(f64):
    sol = dn.integrate(ScalarDDE(), t_end=2.0, dt=1 / 64, solver=dn.solvers.RK4())
    assert sol.ts[-1].item() == 2.0
    i1 = int(torch.nonzero(sol.ts == 1.0))
    assert sol.states["r"][i1, 0, 0].item() == pytest.approx(R1, abs=1e-9)
    assert sol.states["r"][-1, 0, 0].item() == pytest.approx(R2, abs=1e-9)


@pytest.mark.parametrize("solver", ["rk4", "heun", "midpoint"])
def test_leaky_integrator_step_input(f64, solver):
    tau, amp = 5.0, torch.tensor([0.5, 1.0, 2.0])
    sol = dn.integrate(leaky(tau), amp, t_end=40.0, dt=0.25, solver=solver)
    exact = amp * (1 - torch.exp(-sol.ts / tau))[:, None]
    tol = 1e-7 if solver == "rk4" else 1e-3
    torch.testing.assert_close(sol.states["r"][:, 0, :], exact, atol=tol, rtol=0)


@settings(max_examples=25, deadline=None)
@given(tau=st.floats(0.5, 50.0), amp=st.floats(-3.0, 3.0), n=st.integers(1, 60),
       ratio=st.sampled_from([0.05, 0.1, 0.25, 0.5, 1.0]))
def test_euler_is_exactly_the_lerp_recursion(tau, amp, n, ratio):
    """Euler on tau r' = -r + I gives r_n = I (1 - (1 - dt/tau)^n) exactly (up to rounding)."""
    torch.set_default_dtype(torch.float64)
    try:
        dt = ratio * tau
        sol = dn.integrate(leaky(tau, units=1), torch.tensor([amp]), t_end=n * dt, dt=dt)
        k = torch.arange(n + 1, dtype=torch.float64)
        exact = amp * (1 - (1 - dt / tau) ** k)
        torch.testing.assert_close(sol.states["r"][:, 0, 0], exact, atol=1e-12 * (1 + abs(amp)), rtol=1e-10)
    finally:
        torch.set_default_dtype(torch.float32)


@settings(max_examples=15, deadline=None)
@given(tau=st.floats(1.0, 20.0), amp=st.floats(-2.0, 2.0))
def test_rk4_matches_exponential_for_any_tau(tau, amp):
    torch.set_default_dtype(torch.float64)
    try:
        dt = tau / 20
        sol = dn.integrate(leaky(tau, units=1), torch.tensor([amp]), t_end=100 * dt, dt=dt, solver="rk4")
        exact = amp * (1 - torch.exp(-sol.ts / tau))
        torch.testing.assert_close(sol.states["r"][:, 0, 0], exact, atol=1e-7 * (1 + abs(amp)), rtol=0)
    finally:
        torch.set_default_dtype(torch.float32)


def test_gradients_match_finite_differences(f64):
    """integrate is differentiable end to end (BPTT through delays and RK4 stages)."""
    torch.manual_seed(0)
    net = dn.Network()
    net.add_input("x", shape=(3,))
    net.add_population("A", shape=(3,), tau=2.0, phi="tanh")
    net.add_population("B", shape=(2,), tau=3.0, phi="softplus")
    net.connect("x", "A", torch.nn.Linear(3, 3))
    net.connect("A", "B", torch.nn.Linear(3, 2), delay=1.0)
    net.connect("B", "A", torch.nn.Linear(2, 3), delay=2.0)
    net.double()

    def f(x):
        sol = dn.integrate(net, x, t_end=6.0, dt=0.5, solver="rk4")
        return sol.states["B"].sum(0)

    x = torch.randn(2, 3, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("solver", ["euler", "rk4"])
@pytest.mark.parametrize("checkpoint", [True, 3, 7])
def test_checkpointed_bptt_gives_the_same_gradients(solver, checkpoint):
    torch.manual_seed(0)
    net = dn.Network()
    net.add_input("x", shape=(4,))
    net.add_population("A", shape=(4,), tau=2.0, phi="tanh")
    net.add_population("B", shape=(3,), tau=3.0)
    net.connect("x", "A", torch.nn.Linear(4, 4))
    net.connect("A", "A", torch.nn.Linear(4, 4), delay=1.5)
    net.connect("A", "B", torch.nn.Linear(4, 3), delay=0.5)
    x = torch.randn(2, 4)

    def grads(**kw):
        net.zero_grad()
        sol = dn.integrate(net, x, t_end=12.0, dt=0.5, solver=solver, save_at=[6.0, 9.0, 12.0], **kw)
        (sol.states["B"] ** 2).sum().backward()
        return sol.states["B"].detach(), [p.grad.clone() for p in net.parameters()]

    ref_states, ref = grads()
    states, got = grads(checkpoint=checkpoint)
    torch.testing.assert_close(states, ref_states, rtol=0, atol=0)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)


def test_checkpoint_argument_is_validated():
    with pytest.raises(dn.ConfigurationError, match=r"checkpoint must be None, True"):
        dn.integrate(leaky(), torch.ones(3), t_end=2.0, dt=1.0, checkpoint=0)
