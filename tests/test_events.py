"""Events (issue 25, item 2): per-sample zero crossings of ``g(t, state)`` located on the solver's
interpolant, per-sample termination, event times differentiable by the implicit function theorem.

The reference is a linear relaxation ``tau dr/dt = -r + w x``: ``r(t) = w x (1 - exp(-t / tau))``
crosses ``0.5`` at ``t* = -tau ln(1 - 0.5 / (w x))`` (``tau ln 2`` for ``w x = 1``), never when
``w x <= 0.5``. Everything in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import dynode as dn
from dynode.errors import ConfigurationError
from dynode.events import Event

# float(event time) of a differentiable result: the warning is about autograd, not the value
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad:UserWarning")
TAU = 10.0
DRIVES = (1.0, 0.8, 0.3)  # w x per sample: crossing at tau ln 2, tau ln 2.5, never


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def relaxation(tau: float = TAU, delay: float = 0.0, learn: bool = False) -> dn.Network:
    net = dn.Network()
    net.add_input("x", shape=(1,))
    net.add_population("r", shape=(1,), tau=tau, phi="identity", learn_tau=learn)
    lin = nn.Linear(1, 1, bias=False)
    nn.init.constant_(lin.weight, 1.0)
    net.connect("x", "r", lin, delay=delay)
    return net.to(torch.float64)


def exact(drive: float, tau: float = TAU, delay: float = 0.0) -> float:
    return delay - tau * math.log(1 - 0.5 / drive) if drive > 0.5 else math.nan


def half(t, state):
    return state["r"][:, 0] - 0.5


def inputs() -> dict:
    return {"x": torch.tensor(DRIVES).unsqueeze(1)}


def test_located_at_tau_ln2_to_the_solvers_accuracy():
    net = relaxation()
    want = torch.tensor([exact(d) for d in DRIVES])
    rk4 = dn.integrate(net, inputs(), t_end=20.0, dt=1.0, solver="rk4", events={"half": half}).events["half"].detach()
    assert rk4.dtype == torch.float64 and rk4.shape == (3,)
    assert abs(float(rk4[0]) - TAU * math.log(2)) < 1e-6  # measured 4.4e-7 ms
    assert abs(float(rk4[1]) - float(want[1])) < 1e-5  # a later, shallower crossing: 3.9e-6 ms
    assert math.isnan(float(rk4[2]))  # never crosses
    dopri = dn.integrate(net, inputs(), t_end=20.0, solver=dn.solvers.Dopri5(rtol=1e-8, atol=1e-10),
                         events={"half": half}).events["half"].detach()
    assert (dopri[:2] - want[:2]).abs().max() < 1e-7 and math.isnan(float(dopri[2]))  # measured 1.2e-8
    # Euler: the linear interpolant of a first-order method: the error halves with dt
    errs = [abs(float(dn.integrate(net, inputs(), t_end=20.0, dt=dt, events={"half": half}).events["half"].detach()[0])
                - TAU * math.log(2)) for dt in (1.0, 0.5)]
    assert 0.2 < errs[0] < 0.5 and 1.8 < errs[0] / errs[1] < 2.2  # measured 0.340, ratio 2.0


@pytest.mark.parametrize("solver", ["heun", "midpoint", "tsit5", "bosh3"])
def test_every_solver_locates(solver):
    net = relaxation()
    adaptive = solver in ("tsit5", "bosh3")
    sol = dn.integrate(net, inputs(), t_end=20.0, dt=None if adaptive else 0.5, solver=solver,
                       events={"half": half})
    want = torch.tensor([exact(d) for d in DRIVES[:2]])
    assert (sol.events["half"][:2] - want).abs().max() < 5e-3
    assert math.isnan(float(sol.events["half"][2]))


def test_direction_filter():
    net = relaxation()
    falling = lambda t, s: 0.5 - s["r"][:, 0]  # noqa: E731  (falls through 0 as r rises)
    sol = dn.integrate(net, inputs(), t_end=20.0, dt=1.0, solver="rk4", events={
        "down": Event(falling, direction=-1), "up": Event(falling, direction=+1), "any": falling})
    assert torch.isnan(sol.events["up"]).all()
    assert torch.equal(sol.events["down"][:2], sol.events["any"][:2])
    assert abs(float(sol.events["down"][0]) - TAU * math.log(2)) < 1e-6


def test_time_dependent_g_gets_per_sample_times():
    net = relaxation()
    # a collapsing bound 0.8 - t/100 meets r(t) = 1 - exp(-t/10) where the two are equal
    sol = dn.integrate(net, inputs(), t_end=20.0, dt=0.5, solver="rk4",
                       events={"bound": lambda t, s: s["r"][:, 0] - (0.8 - t / 100)})
    t = float(sol.events["bound"][0])
    assert abs((1 - math.exp(-t / TAU)) - (0.8 - t / 100)) < 1e-7


def test_terminal_events_hold_the_state_and_end_early():
    net = relaxation()
    free = dn.integrate(net, inputs(), t_end=20.0, dt=1.0, solver="rk4", save_at=0.25)
    sol = dn.integrate(net, inputs(), t_end=20.0, dt=1.0, solver="rk4", save_at=0.25,
                       events={"half": half}, terminate="half")
    t_star = sol.events["half"].detach()
    assert torch.equal(sol.ts, free.ts) and sol.stats.t_final == 20.0  # sample 2 never stops
    r = sol["r"][:, :, 0]
    for b in range(2):
        after, before = sol.ts > t_star[b], sol.ts <= t_star[b]
        assert torch.allclose(r[after, b], torch.tensor(0.5), atol=1e-7)  # held at the event's state
        assert torch.equal(r[after, b], r[after, b][:1].expand(int(after.sum())))  # no further change
        assert torch.equal(r[before, b], free["r"][before, b, 0])  # unchanged before its event
    assert torch.equal(r[:, 2], free["r"][:, 2, 0])  # the sample that never fires runs freely
    # every sample stops: the run ends at the first check after the last event (check_every steps)
    two = {"x": torch.tensor([[1.0], [0.8]])}
    short = dn.integrate(net, two, t_end=100.0, dt=1.0, solver="rk4", check_every=5,
                         events={"half": Event(half, terminal=True)})
    assert short.stats.t_final == 10.0 and short.stats.steps == 10  # events at 6.9 and 9.8 ms
    assert len(short.ts) == 101 and torch.allclose(short["r"][-1, :, 0], torch.tensor(0.5), atol=1e-6)
    assert torch.equal(short.events["half"], dn.integrate(net, two, t_end=100.0, dt=1.0, solver="rk4",
                                                          events={"half": half}).events["half"])
    adaptive = dn.integrate(net, two, t_end=100.0, solver="dopri5", save_at=[5.0, 50.0, 100.0], check_every=1,
                            events={"half": half}, terminate=True)
    assert adaptive.stats.t_final < 20.0 and len(adaptive.ts) == 3
    assert torch.allclose(adaptive["r"][1:, :, 0], torch.tensor(0.5), atol=1e-6)


def cascade(delay: float) -> dn.Network:
    """x -> a -> r, equal taus, the second connection delayed by ``delay`` (zero history)."""
    net = dn.Network()
    net.add_input("x", shape=(1,))
    net.add_population("a", shape=(1,), tau=TAU, phi="identity")
    net.add_population("r", shape=(1,), tau=TAU, phi="identity")
    net.connect("x", "a")
    net.connect("a", "r", delay=delay)
    return net.to(torch.float64)


def cascade_time(drive: float, delay: float) -> float:
    """r(t) = drive (1 - (1 + s/tau) exp(-s/tau)), s = t - delay: where it reaches 0.5 (bisection)."""
    lo, hi = 0.0, 200.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if drive * (1 - (1 + mid / TAU) * math.exp(-mid / TAU)) < 0.5 else (lo, mid)
    return delay + 0.5 * (lo + hi)


def test_events_with_a_delay():
    d = 3.0
    net = cascade(d)
    want = torch.tensor([cascade_time(x, d) for x in DRIVES[:2]])
    for solver, dt in (("rk4", 0.5), ("dopri5", None)):
        sol = dn.integrate(net, inputs(), t_end=30.0, dt=dt, solver=solver, events={"half": half},
                           terminate="half", save_at=1.0)
        assert (sol.events["half"][:2] - want).abs().max() < 1e-5
        assert math.isnan(float(sol.events["half"][2]))
        assert torch.allclose(sol["r"][-1, :2, 0], torch.tensor(0.5), atol=1e-6)
        held = sol["a"][-1, :2, 0]  # every population of a stopped sample is held, not only r
        assert (held < 1 - 1e-3).all() and torch.equal(sol["a"][-3, :2, 0], held)


def test_noisy_solvers_locate_on_the_linear_interpolant():
    net = relaxation()
    net.populations["r"].noise = 0.01
    sol = dn.integrate(net, inputs(), t_end=20.0, dt=0.5, solver="heun", seed=3, events={"half": half})
    t = sol.events["half"].detach()
    assert (t[:2] - torch.tensor([exact(d) for d in DRIVES[:2]])).abs().max() < 1.0
    r = sol["r"][:, :2, 0]
    for b in range(2):  # the located time lies in the step where the saved rows cross 0.5
        n = int(torch.nonzero(r[:, b] >= 0.5)[0])
        assert float(sol.ts[n - 1]) < float(t[b]) <= float(sol.ts[n])


def _event_time(net, solver="rk4", dt=1.0):
    return dn.integrate(net, inputs(), t_end=20.0, dt=dt, solver=solver, events={"half": half}).events["half"][:2]


# adaptive: the gradient at the steps taken (the controller's choice of steps is not differentiated,
# finite differences see it): agreement to the FD's own noise
@pytest.mark.parametrize("solver,dt,rel", [("rk4", 1.0, 1e-6), ("dopri5", None, 1e-4)])
def test_event_time_gradient_matches_finite_differences(solver, dt, rel):
    net = relaxation(learn=True)
    params = dict(net.named_parameters())  # the input weight and the learnt tau's raw parameter
    assert set(params) == {"populations.r.incoming.x.weight", "populations.r.learnt_tau.raw"}
    t = _event_time(net, solver, dt)
    grads = torch.autograd.grad(t.sum(), list(params.values()))
    eps = 1e-6
    for (name, p), g in zip(params.items(), grads):
        with torch.no_grad():
            p += eps
            up = _event_time(net, solver, dt).sum()
            p -= 2 * eps
            down = _event_time(net, solver, dt).sum()
            p += eps
        fd = float(up - down) / (2 * eps)
        assert abs(float(g) - fd) < rel * max(1.0, abs(fd)), name  # measured 4e-11 (rk4), 4e-6 (dopri5)
    # and the analytic d t*/dw = -tau (0.5 / (w^2 x)) / (1 - 0.5 / (w x)) summed over the two samples
    analytic = sum(-TAU * (0.5 / x) / (1 - 0.5 / x) for x in DRIVES[:2])
    assert abs(float(grads[0]) - analytic) < 5e-3  # the discrete solution's: 1.4e-3 off at dt 1 ms


def test_bad_input_is_refused_before_the_first_step():
    net = relaxation()
    run = lambda **kw: dn.integrate(net, inputs(), t_end=10.0, dt=1.0, solver="rk4", **kw)  # noqa: E731
    with pytest.raises(ConfigurationError, match="shape"):
        run(events={"e": lambda t, s: s["r"] - 0.5})  # (batch, 1), not (batch,)
    with pytest.raises(ConfigurationError, match="NaN"):
        run(events={"e": lambda t, s: s["r"][:, 0] * math.nan})
    with pytest.raises(ConfigurationError, match="returned float"):
        run(events={"e": lambda t, s: 0.5})
    with pytest.raises(ConfigurationError, match="unknown events"):
        run(events={"e": half}, terminate="decision")
    with pytest.raises(ConfigurationError, match="no events"):
        run(terminate="decision")
    with pytest.raises(ConfigurationError, match="checkpoint"):
        run(events={"e": half}, checkpoint=2)
    with pytest.raises(ConfigurationError, match="dense"):
        run(events={"e": half}, terminate=True, dense=True)
    with pytest.raises(ConfigurationError, match="direction"):
        Event(half, direction=2)
    with pytest.raises(ConfigurationError, match="TorchDiffEq"):
        dn.integrate(net, inputs(), t_end=10.0, solver="torchdiffeq", events={"e": half})
