"""torchdiffeq and torchode adapters: agreement with dynode's Dopri5 on an ODE and on a
delayed network, the scalar DDE, breakpoints, statistics, options and failures."""

import math
import pathlib
import sys

import pytest
import torch

import dynode as dn
from dynode.solvers import Dopri5, Status, TorchDiffEq, TorchODE
from fields import ScalarDDE, leaky

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from nets import rate_network  # noqa: E402

TOL = dict(rtol=1e-7, atol=1e-9)


def _three():
    return [Dopri5(**TOL), TorchDiffEq("dopri5", **TOL), TorchODE("dopri5", **TOL)]


@pytest.mark.parametrize("rec_delay", [0.0, 2.0])
def test_three_solvers_agree(f64, rec_delay):
    net = rate_network(n_pop=3, units=16, rec_delay=rec_delay)
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    grid = [2.0 * i for i in range(11)]
    outs = []
    for solver in _three():
        with torch.no_grad():
            sol = dn.integrate(net, x, t_end=20.0, solver=solver, save_at=grid)
        assert sol.ts.tolist() == grid
        s = sol.stats
        assert s.nfe > 0 and s.accepted > 0 and s.steps == s.accepted + s.rejected
        outs.append(sol.states)
    scale = max(float(v.abs().max()) for v in outs[0].values())
    assert scale > 0.05  # the network is not trivially at rest
    for other in outs[1:]:
        for name, ref in outs[0].items():
            assert float((other[name] - ref).abs().max()) < 1e-5 * max(1.0, scale)


@pytest.mark.parametrize("solver", [TorchDiffEq("dopri5", rtol=1e-8, atol=1e-10),
                                    TorchODE("dopri5", rtol=1e-8, atol=1e-10),
                                    TorchODE("tsit5", rtol=1e-8, atol=1e-10, controller="pid")])
def test_backends_scalar_dde(solver):
    sol = dn.integrate(ScalarDDE(), t_end=2.0, solver=solver, save_at=[1.0, 2.0],
                       initial_state={"r": torch.ones(1, 1, dtype=torch.float64)})
    r = sol.states["r"][:, 0, 0]
    assert abs(float(r[0]) - (-1 + 2 / math.e)) < 1e-6
    assert abs(float(r[1]) - (1 + 2 / math.e ** 2 - 4 / math.e)) < 1e-6


@pytest.mark.parametrize("solver", [TorchDiffEq("dopri5", rtol=1e-9, atol=1e-11),
                                    TorchODE("dopri5", rtol=1e-9, atol=1e-11),
                                    TorchODE("dopri5", rtol=1e-9, atol=1e-11, per_sample=True)])
def test_backends_hit_pulse_breakpoints(f64, solver):
    tau, on, off = 5.0, 2.3, 5.4
    amp = torch.tensor([[1.0, 2.0, -0.5], [0.5, 0.0, 3.0]])
    stim = dn.stimuli.Pulse(onset=on, duration=off - on, value=amp)
    grid = [0.5 * i for i in range(21)]
    sol = dn.integrate(leaky(tau), stim, t_end=10.0, solver=solver, save_at=grid)

    def exact(t):
        if t < on:
            return 0.0
        if t <= off:
            return 1 - math.exp(-(t - on) / tau)
        return (1 - math.exp(-(off - on) / tau)) * math.exp(-(t - off) / tau)
    ref = torch.tensor([exact(t) for t in grid])[:, None, None] * amp
    assert float((sol.states["r"] - ref).abs().max()) < 1e-7
    ends = dn.integrate(leaky(tau), stim, t_end=10.0, solver=solver).ts.tolist()
    assert ends == [0.0, on, off, 10.0]  # save_at=None: t0 and the segment ends


def test_per_sample_result_does_not_depend_on_the_batch(f64):
    """Per-sample control: a quiet sample does not force the loud one's steps, and each
    sample is solved as if alone."""
    tau = 5.0
    x = torch.tensor([[1e-3, 1e-3, 1e-3], [5.0, -3.0, 2.0]])
    stim = dn.stimuli.Pulse(onset=1.0, duration=2.0, value=x)
    solo = dn.integrate(leaky(tau), dn.stimuli.Pulse(onset=1.0, duration=2.0, value=x[1:]), t_end=6.0,
                        solver=TorchODE(per_sample=True, rtol=1e-6, atol=1e-9), save_at=[6.0])
    both = dn.integrate(leaky(tau), stim, t_end=6.0, solver=TorchODE(per_sample=True, rtol=1e-6, atol=1e-9),
                        save_at=[6.0])
    assert torch.allclose(both.states["r"][:, 1], solo.states["r"][:, 0], rtol=0, atol=1e-12)


def test_options_are_checked():
    with pytest.raises(dn.ConfigurationError, match="jump_t"):
        TorchDiffEq("dopri5", jump_t=[1.0])
    with pytest.raises(dn.ConfigurationError, match="step_size"):
        TorchDiffEq("rk4")
    with pytest.raises(dn.ConfigurationError, match="does not take"):
        TorchDiffEq("rk4", step_size=0.5, first_step=0.1)
    with pytest.raises(dn.ConfigurationError, match="unknown method"):
        TorchODE("rk45")
    with pytest.raises(dn.ConfigurationError, match="controller"):
        TorchODE(controller="pi")
    with pytest.raises(dn.ConfigurationError, match="without delays"):
        dn.integrate(rate_network(n_pop=1, units=4), torch.ones(1, 4), t_end=4.0,
                     solver=TorchODE(per_sample=True))
    with pytest.raises(dn.ConfigurationError, match="Network"):
        dn.integrate(ScalarDDE(delay=0.0), t_end=1.0, solver=TorchODE(per_sample=True))


def test_fixed_grid_torchdiffeq_rk4(f64):
    sol = dn.integrate(leaky(5.0), torch.ones(1, 3), t_end=4.0, solver=TorchDiffEq("rk4", step_size=0.25))
    assert abs(float(sol.final_state["r"][0, 0]) - (1 - math.exp(-4.0 / 5.0))) < 1e-7
    assert sol.stats.steps == 16 and sol.stats.accepted == 16 and sol.stats.rejected == 0


@pytest.mark.parametrize("solver", [TorchDiffEq("dopri5", rtol=1e-10, atol=1e-12, max_num_steps=3),
                                    TorchODE("dopri5", rtol=1e-10, atol=1e-12, max_steps=3)])
def test_backend_max_steps_raise_solver_error(solver):
    with pytest.raises(dn.SolverError, match="segment starting at t = 0 ms") as err:
        dn.integrate(ScalarDDE(), t_end=2.0, solver=solver)
    assert err.value.status == Status.REACHED_MAX_STEPS


def test_per_sample_steps_pay_off_on_staggered_transients(f64):
    """Samples whose fast phases happen at different times: per-sample control needs far
    fewer iterations than one shared step size, at the same accuracy."""
    from bench_solvers import StaggeredBumps

    net = leaky(tau=5.0, units=2)
    stim = StaggeredBumps([10.0, 20.0, 30.0, 40.0], 0.5, 2)
    ref = dn.integrate(net, stim, t_end=50.0, solver=Dopri5(rtol=1e-10, atol=1e-12, dt_max=0.5), save_at=[50.0])
    runs = {}
    for per_sample in (False, True):
        sol = dn.integrate(net, stim, t_end=50.0, save_at=[50.0],
                           solver=TorchODE(rtol=1e-7, atol=1e-9, dt_max=2.0, per_sample=per_sample))
        assert float((sol.states["r"] - ref.states["r"]).abs().max()) < 1e-5
        runs[per_sample] = sol.stats.steps
    assert runs[True] < 0.6 * runs[False]


def _exploding() -> dn.Network:
    """tau r' = -r + 3 r(t - 1): grows about 1.8x per ms, past |r| = 1e6 well before 40 ms."""
    net = dn.Network()
    net.add_input("x", shape=(2,))
    net.add_population("E", shape=(2,), tau=1.0, phi="identity")
    net.connect("x", "E")
    gain = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        gain.weight.copy_(3.0 * torch.eye(2))
    net.connect("E", "E", gain, delay=1.0)
    return net.double().requires_grad_(False)


@pytest.mark.parametrize("solver", [dn.solvers.Dopri5(), TorchDiffEq("dopri5"), TorchDiffEq("rk4", step_size=0.25),
                                    TorchODE("tsit5")], ids=["dopri5", "tde-dopri5", "tde-rk4", "tode-tsit5"])
def test_every_solver_applies_the_divergence_guard(f64, solver):
    with pytest.raises(dn.DivergenceError, match=r"population 'E' exceeded \|r\| = 1e\+06") as err:
        dn.integrate(_exploding(), torch.ones(1, 2), t_end=40.0, solver=solver)
    assert err.value.population == "E" and err.value.t_range[1] <= 40.0
    # max_abs=None switches the blow-up check off (NaN/inf still raise): the run completes
    sol = dn.integrate(_exploding(), torch.ones(1, 2), t_end=10.0, solver=solver, max_abs=None)
    assert float(sol.final_state["E"].abs().max()) > 100


@pytest.mark.parametrize("make,match", [
    (lambda: TorchDiffEq("dopri5", rtol=math.inf), "rtol must be a finite number > 0, got inf"),
    (lambda: TorchDiffEq("dopri5", atol=0.0), "atol must be a finite number > 0"),
    (lambda: TorchDiffEq("dopri5", max_num_steps=0), "max_num_steps must be a positive int, got 0"),
    (lambda: TorchDiffEq("dopri5", first_step=-1.0), "first_step must be a finite step > 0 ms"),
    (lambda: TorchDiffEq("dopri5", min_step=math.nan), "min_step must be a finite step >= 0 ms"),
    (lambda: TorchDiffEq("dopri5", safety=2.0), r"safety must be a factor in \(0, 1\]"),
    (lambda: TorchDiffEq("rk4", step_size=0.0), "step_size must be a finite step > 0 ms"),
    (lambda: TorchODE(rtol=math.inf), "rtol must be a finite number > 0"),
    (lambda: TorchODE(dt_min=-1.0), "dt_min must be a finite step >= 0 ms, got -1.0"),
    (lambda: TorchODE(max_steps=0), "max_steps must be a positive int, got 0"),
    (lambda: TorchODE(max_steps=True), "max_steps must be a positive int"),
    (lambda: TorchODE(dt_min=1.0, dt_max=0.5), "need dt_min < dt_max"),
])
def test_backend_options_are_rejected_at_construction(make, match):
    with pytest.raises(dn.ConfigurationError, match=match):
        make()
