"""dynode.solvers.fixed and the solver protocol: capabilities, the one output path, the registry."""

import math

import pytest
import torch

import dynode as dn
from dynode.problem import make_problem
from dynode.solver import SOLVERS, Solver, get_solver, register
from dynode.solvers import RK4, Dopri5, Euler, Heun, Midpoint, TorchDiffEq, TorchODE
from fields import ScalarDDE, leaky


@pytest.mark.parametrize("solver,flags", [
    (Euler(), dict(adaptive=False, grid=True, fresh_states=True, dense_output=True, continues=True)),
    (RK4(), dict(adaptive=False, grid=True, fresh_states=True, dense_output=True, continues=True)),
    (Dopri5(), dict(adaptive=True, grid=False, fresh_states=False, dense_output=True, continues=False)),
    (TorchDiffEq("rk4", step_size=0.5), dict(adaptive=False, grid=True, dense_output=False, continues=False)),
    (TorchDiffEq("dopri5"), dict(adaptive=True, grid=False, dense_output=False, continues=False)),
    (TorchODE(), dict(adaptive=True, grid=False, dense_output=False, continues=False)),
])
def test_solvers_declare_what_they_offer(solver, flags):
    assert isinstance(solver, Solver)
    assert {k: getattr(solver, k) for k in flags} == flags


def test_every_solver_is_registered_by_name():
    assert set(SOLVERS) == {"euler", "midpoint", "heun", "rk4", "dopri5", "tsit5", "bosh3", "torchdiffeq",
                            "torchode"}
    assert type(get_solver("RK4")) is RK4


def test_an_object_that_is_no_solver_is_refused():
    class Duck:
        def solve(self, problem, dt, *, observer=None):  # pragma: no cover - never called
            raise AssertionError

    with pytest.raises(dn.ConfigurationError, match="dynode.solvers.Solver"):
        dn.integrate(leaky(), torch.ones(1, 3), t_end=1.0, dt=0.5, solver=Duck())
    with pytest.raises(dn.ConfigurationError, match="instance"):
        get_solver(RK4)


def test_a_registered_solver_is_found_by_name():
    class Twice(Solver):
        """RK4 at half the step: a custom solver declares its capabilities and registers."""

        grid = True

        def solve(self, problem, dt=None, *, observer=None):
            return RK4().solve(problem, dt / 2, observer=observer)

    register(Twice)
    try:
        sol = dn.integrate(leaky(), torch.ones(1, 3), t_end=2.0, dt=1.0, solver="twice")
        assert sol.stats.steps == 4 and Twice.name == "twice"
    finally:
        del SOLVERS["twice"]


def test_continuing_needs_a_solver_that_continues():
    net = leaky()
    first = dn.integrate(net, torch.ones(1, 3), t_end=2.0, dt=0.5)
    with pytest.raises(dn.ConfigurationError, match="fixed-step solvers, not TorchDiffEq"):
        dn.integrate(net, torch.ones(1, 3), t0=2.0, t_end=4.0, initial_state=first,
                     solver=TorchDiffEq("rk4", step_size=0.5))


def test_saves_on_and_between_grid_points(f64):
    """Grid times are reported at exactly t0 + n dt; times between come from the step's
    interpolant (Hermite for RK4, order 4: ~1e-6 here, 2e-7 on the grid)."""
    save = [0.0, 0.3, 1.0, 1.75, 2.0]
    sol = dn.integrate(leaky(5.0), torch.ones(1, 3), t_end=2.0, dt=0.5, solver="rk4", save_at=save)
    assert sol.ts.tolist() == save
    exact = 1 - torch.exp(-sol.ts / 5.0)
    err = (sol.states["r"][:, 0, 0] - exact).abs()
    assert float(err.max()) < 5e-6 and float(err[[0, 2, 4]].max()) < 1e-6
    streamed = []
    again = RK4().solve(sol_problem(save), 0.5, observer=lambda t, s: streamed.append((t, s["r"].clone())))
    assert again.states == {} and [t for t, _ in streamed] == save
    torch.testing.assert_close(torch.stack([s for _, s in streamed]), sol.states["r"])


def sol_problem(save):
    return make_problem(leaky(5.0), torch.ones(1, 3), t0=0.0, t_end=2.0, save_at=save, initial_state=None,
                        batch_size=None, max_abs=None, check_every=50)


@pytest.mark.parametrize("cls,stages", [(Euler, 1), (Midpoint, 2), (Heun, 2), (RK4, 4)])
def test_stats_count_every_stage(cls, stages):
    sol = dn.integrate(ScalarDDE(), t_end=2.0, dt=0.25, solver=cls())
    s = sol.stats
    assert (s.steps, s.accepted, s.rejected, s.nfe, s.t_final) == (8, 8, 0, 8 * stages, 2.0)
    assert s.status == dn.Status.SUCCESS and len(sol.ts) == 9


def test_checkpointed_saves_are_the_plain_run_saves(f64):
    """The checkpointed loop collects each segment's saves and hands them on after it."""
    kw = dict(t_end=3.0, dt=0.25, solver="rk4", save_at=[0.0, 0.6, 1.5, 3.0])
    x = torch.ones(1, 1, requires_grad=True)
    plain = dn.integrate(ScalarDDE(), **kw)
    with torch.enable_grad():
        ckpt = dn.integrate(ScalarDDE(), initial_state={"r": x}, checkpoint=3, **kw)
    assert ckpt.ts.tolist() == plain.ts.tolist()
    torch.testing.assert_close(ckpt.states["r"].detach(), plain.states["r"], atol=1e-12, rtol=0)
    assert math.isfinite(float(torch.autograd.grad(ckpt.states["r"].sum(), x)[0]))
