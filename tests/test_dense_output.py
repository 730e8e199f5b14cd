"""Dense output: Solution.evaluate(t) and save_at between grid points, from each solver's
own interpolant, one-sided at stimulus jumps."""

import math

import pytest
import torch

import dynode as dn
from dynode.stimuli import Pulse
from fields import leaky
from test_order_jumps import loop_network

FIXED = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}
ADAPTIVE = [dn.solvers.Dopri5(rtol=1e-9, atol=1e-11), dn.solvers.Tsit5(rtol=1e-9, atol=1e-11),
            dn.solvers.Bosh3(rtol=1e-9, atol=1e-11)]


def leaky_pulse_exact(t: torch.Tensor, tau=5.0, onset=8.0, off=24.0) -> torch.Tensor:
    """tau r' = -r + 1 on [onset, off), r = 0 before: the analytic solution."""
    on = torch.clamp(t - onset, min=0.0)
    r = 1 - torch.exp(-on / tau)
    r_off = 1 - math.exp(-(off - onset) / tau)
    return torch.where(t < off, r, r_off * torch.exp(-(t - off) / tau))


OFF_GRID = torch.tensor([0.3, 7.999, 8.2, 13.7, 23.9999, 24.4, 31.1], dtype=torch.float64)


@pytest.mark.parametrize("solver,order", FIXED.items())
def test_fixed_step_interpolant_has_the_method_order(f64, solver, order):
    """Between grid points, the step's interpolant (linear / quadratic / Hermite on k_1, k_s)
    converges with the method's order, and it is one-sided at the pulse's jumps."""
    stim = Pulse(onset=8.0, duration=16.0, value=torch.ones(1))
    errs = []
    for dt in (0.25, 0.125):
        sol = dn.integrate(leaky(units=1), stim, t_end=32.0, dt=dt, solver=solver, dense=True)
        got = sol.evaluate(OFF_GRID)["r"][:, 0, 0]
        errs.append(float((got - leaky_pulse_exact(OFF_GRID)).abs().max()))
        # before the onset the state is exactly 0: the interval ending at the jump uses the
        # left-limit slope (a right-limit slope would bend it upwards)
        assert sol.evaluate(7.999)["r"].abs().max().item() == 0.0
    observed = math.log2(errs[0] / errs[1])
    assert observed > order - 0.2, (errs, observed)


@pytest.mark.parametrize("solver", ["midpoint", "rk4", "euler"])
def test_save_at_off_grid_equals_evaluate(f64, solver):
    net, stim = loop_network(), Pulse(onset=8.0, duration=16.0, value=torch.tensor([1.0, -0.5]))
    times = [0.0, 0.25, 3.7, 8.0, 11.5, 47.9, 48.0]
    saved = dn.integrate(net, stim, t_end=48.0, dt=1.0, solver=solver, save_at=times)
    assert saved.ts.tolist() == times
    assert saved.dense is None  # nothing kept for save_at
    full = dn.integrate(net, stim, t_end=48.0, dt=1.0, solver=solver, dense=True)
    for name in ("A", "B"):
        torch.testing.assert_close(saved.states[name], full.evaluate(times)[name], rtol=0, atol=1e-14)
    # on the grid the interpolant returns the grid state itself
    i = int(torch.nonzero(full.ts == 11.0))
    torch.testing.assert_close(full.evaluate(11.0)["A"], full.states["A"][i], rtol=0, atol=0)


def test_off_grid_save_at_rk4_is_fourth_order_on_delayed_loop(f64):
    stim = Pulse(onset=8.0, duration=16.0, value=torch.tensor([1.0, -0.5]))
    times = [0.3 + 1.7 * k for k in range(28)]
    ref = dn.integrate(loop_network(), stim, t_end=48.0, solver=dn.solvers.Dopri5(rtol=1e-12, atol=1e-14),
                       save_at=times)
    errs = []
    for dt in (0.5, 0.25):
        sol = dn.integrate(loop_network(), stim, t_end=48.0, dt=dt, solver="rk4", save_at=times)
        errs.append(float((sol.states["B"] - ref.states["B"]).abs().max()))
    assert math.log2(errs[0] / errs[1]) > 3.8, errs


@pytest.mark.parametrize("solver", ADAPTIVE, ids=lambda s: s.name)
def test_adaptive_evaluate_matches_save_at_and_is_one_sided(f64, solver):
    stim = Pulse(onset=8.0, duration=16.0, value=torch.ones(1))
    sol = dn.integrate(leaky(units=1), stim, t_end=32.0, solver=solver, dense=True)
    got = sol.evaluate(OFF_GRID)["r"][:, 0, 0]
    torch.testing.assert_close(got, leaky_pulse_exact(OFF_GRID), rtol=0, atol=1e-7)
    assert sol.evaluate(7.999)["r"].abs().max().item() == 0.0
    saved = dn.integrate(leaky(units=1), stim, t_end=32.0, solver=solver, save_at=OFF_GRID)
    torch.testing.assert_close(saved.states["r"][:, 0, 0], got, rtol=0, atol=1e-14)


def test_evaluate_bad_input_names_the_interval(f64):
    stim = Pulse(onset=8.0, duration=16.0, value=torch.ones(1))
    sol = dn.integrate(leaky(units=1), stim, t_end=32.0, dt=1.0, solver="rk4", dense=True)
    with pytest.raises(dn.ConfigurationError, match=r"t = 40 ms\): outside the run \[0, 32\] ms"):
        sol.evaluate(40.0)
    with pytest.raises(dn.ConfigurationError, match=r"outside the run \[0, 32\] ms"):
        sol.evaluate([1.0, -0.5])
    with pytest.raises(dn.ConfigurationError, match="finite"):
        sol.evaluate(math.nan)
    plain = dn.integrate(leaky(units=1), stim, t_end=32.0, dt=1.0, solver="rk4")
    with pytest.raises(dn.ConfigurationError, match=r"saved on \[0, 32\] ms\) kept no dense output: "
                                                   r"integrate with dense=True"):
        plain.at(3.5)
    with pytest.raises(dn.ConfigurationError, match="dense must be True or False"):
        dn.integrate(leaky(units=1), stim, t_end=32.0, dt=1.0, dense="yes")
    with pytest.raises(dn.ConfigurationError, match="dense=True is implemented for dynode's own solvers"):
        dn.integrate(leaky(units=1), stim, t_end=32.0, solver=dn.solvers.TorchDiffEq("dopri5"), dense=True)
    with pytest.raises(dn.ConfigurationError, match="dense=True keeps every step"):
        with torch.enable_grad():
            dn.integrate(leaky(units=1), stim, t_end=32.0, dt=1.0, dense=True, checkpoint=4)


def test_dense_keeps_steps_only_when_asked(f64):
    """Memory: the default run keeps no interpolant; dense=True keeps one piece per step."""
    stim = Pulse(onset=8.0, duration=16.0, value=torch.ones(1))
    assert dn.integrate(leaky(units=1), stim, t_end=32.0, dt=0.5, solver="rk4").dense is None
    sol = dn.integrate(leaky(units=1), stim, t_end=32.0, dt=0.5, solver="rk4", dense=True)
    assert len(sol.dense) == 64
