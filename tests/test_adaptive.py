"""Adaptive delay-aware solvers: analytic DDE and piecewise-exponential solutions, dense
output, breakpoints, statistics and failures."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dynode as dn
from dynode.solvers import Bosh3, Dopri5, Status, Tsit5
from fields import ScalarDDE, leaky

R1 = -1 + 2 / math.e
R2 = 1 + 2 / math.e ** 2 - 4 / math.e


def _dde(solver, **kw):
    return dn.integrate(ScalarDDE(), t_end=2.0, solver=solver,
                        initial_state={"r": torch.ones(1, 1, dtype=torch.float64)}, **kw)


@pytest.mark.parametrize("cls", [Dopri5, Tsit5])
def test_scalar_dde_to_1e6(cls):
    sol = _dde(cls(rtol=1e-8, atol=1e-10), save_at=[0.0, 0.5, 1.0, 1.5, 2.0])
    r = sol.states["r"][:, 0, 0]
    assert sol.ts.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert abs(float(r[0]) - 1.0) == 0.0
    assert abs(float(r[1]) - (-1 + 2 * math.exp(-0.5))) < 1e-6  # dense output inside a step
    assert abs(float(r[2]) - R1) < 1e-6
    assert abs(float(r[4]) - R2) < 1e-6
    s = sol.stats
    assert s.status == Status.SUCCESS and s.t_final == 2.0
    assert s.accepted > 0 and s.steps == s.accepted + s.rejected
    assert s.nfe >= 6 * s.steps  # 6 new stages per attempted step (FSAL)


def test_too_large_first_step_is_rejected_and_counted():
    sol = _dde(Dopri5(rtol=1e-8, atol=1e-10), dt=1.0)
    assert sol.stats.rejected >= 1
    assert abs(float(sol.final_state["r"]) - R2) < 1e-6


def test_bosh3_scalar_dde():
    sol = _dde(Bosh3(rtol=1e-7, atol=1e-9))
    assert abs(float(sol.final_state["r"]) - R2) < 1e-5


@pytest.mark.parametrize("cls", [Dopri5, Tsit5, Bosh3])
def test_breakpoints_are_step_ends(cls):
    """t0 + k * delay are forced step ends: with save_at=None they appear exactly in ts."""
    sol = _dde(cls(rtol=1e-5, atol=1e-8))
    ts = sol.ts.tolist()
    assert ts[0] == 0.0 and 1.0 in ts and ts[-1] == 2.0
    assert all(b > a for a, b in zip(ts, ts[1:]))
    assert max(b - a for a, b in zip(ts, ts[1:])) <= 1.0 + 1e-12  # capped at the delay


def test_dense_output_matches_first_interval_everywhere():
    ts = [i / 20 for i in range(21)]
    sol = _dde(Dopri5(rtol=1e-9, atol=1e-12), save_at=ts)
    exact = torch.tensor([-1 + 2 * math.exp(-t) for t in ts], dtype=torch.float64)
    assert float((sol.states["r"][:, 0, 0] - exact).abs().max()) < 1e-8


def _pulse_exact(t, tau, on, off, amp):
    if t < on:
        return 0.0
    if t <= off:
        return amp * (1 - math.exp(-(t - on) / tau))
    return amp * (1 - math.exp(-(off - on) / tau)) * math.exp(-(t - off) / tau)


@pytest.mark.parametrize("cls,rtol,tol", [(Dopri5, 1e-8, 1e-7), (Tsit5, 1e-8, 1e-7), (Bosh3, 1e-7, 1e-5)])
def test_pulse_matches_piecewise_exponential(f64, cls, rtol, tol):
    tau, on, dur = 5.0, 2.3, 3.1
    amp = torch.tensor([[1.0, 2.0, -0.5]])
    stim = dn.stimuli.Pulse(onset=on, duration=dur, value=amp)
    grid = [0.1 * i for i in range(101)]
    sol = dn.integrate(leaky(tau), stim, t_end=10.0, solver=cls(rtol=rtol, atol=1e-10), save_at=grid)
    exact = torch.tensor([[_pulse_exact(t, tau, on, on + dur, 1.0)] for t in grid]) * amp
    assert float((sol.states["r"][:, 0, :] - exact).abs().max()) < tol
    ends = dn.integrate(leaky(tau), stim, t_end=10.0, solver=cls(rtol=rtol, atol=1e-10)).ts.tolist()
    assert on in ends and on + dur in ends  # hit, not stepped over


def test_delayed_input_jump_propagates(f64):
    """A pulse read through a 1.5 ms delay jumps at onset + 1.5: a propagated breakpoint."""
    tau, on, dur, d = 4.0, 1.0, 2.0, 1.5
    net = dn.Network()
    net.add_input("x", shape=(1,))
    net.add_population("r", shape=(1,), tau=tau, phi="identity")
    net.connect("x", "r", delay=d)
    stim = dn.stimuli.Pulse(onset=on, duration=dur, value=torch.ones(1, 1))
    grid = [0.25 * i for i in range(33)]
    sol = dn.integrate(net, stim, t_end=8.0, solver=Dopri5(rtol=1e-9, atol=1e-11), save_at=grid)
    exact = torch.tensor([_pulse_exact(t, tau, on + d, on + dur + d, 1.0) for t in grid])
    assert float((sol.states["r"][:, 0, 0] - exact).abs().max()) < 1e-7
    sol = dn.integrate(net, stim, t_end=8.0, solver=Dopri5(rtol=1e-6, atol=1e-9))
    assert {on + d, on + dur + d} <= set(sol.ts.tolist())


def test_observer_streams_and_float32_runs():
    seen = []
    sol = dn.integrate(ScalarDDE(), t_end=2.0, solver=Dopri5(rtol=1e-5, atol=1e-7), save_at=0.5)
    assert sol.states["r"].dtype == torch.float32
    from dynode.problem import make_problem

    p = make_problem(ScalarDDE(), None, t0=0.0, t_end=2.0, save_at=0.5, initial_state=None,
                     batch_size=2, max_abs=1e6, check_every=50)
    out = Dopri5(rtol=1e-5, atol=1e-7).solve(p, None, observer=lambda t, s: seen.append((t, s["r"].clone())))
    assert out.states == {} and [t for t, _ in seen] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert abs(float(seen[-1][1][0, 0]) - R2) < 1e-4
    assert torch.allclose(sol.states["r"][:, 0].double(), torch.stack([v[0] for _, v in seen]).double(), atol=1e-6)


def test_gradient_through_dopri5_matches_finite_difference(f64):
    tau = torch.tensor(1.0, requires_grad=True)

    class Field(ScalarDDE):
        def forward(self, t, state, history, inputs):
            return {"r": (-state["r"] - history.lag("r", 1.0)) / tau}

    sol = dn.integrate(Field(), t_end=2.0, solver=Dopri5(rtol=1e-10, atol=1e-12))
    (g,) = torch.autograd.grad(sol.final_state["r"].sum(), tau)

    def value(x):
        class F(ScalarDDE):
            def forward(self, t, state, history, inputs):
                return {"r": (-state["r"] - history.lag("r", 1.0)) / x}
        with torch.no_grad():
            return float(dn.integrate(F(), t_end=2.0, solver=Dopri5(rtol=1e-11, atol=1e-13)).final_state["r"])

    eps = 1e-5
    fd = (value(1.0 + eps) - value(1.0 - eps)) / (2 * eps)
    assert abs(float(g) - fd) < 1e-5


# -- failures ---------------------------------------------------------------------------------
def test_dt_min_failure_message():
    with pytest.raises(dn.SolverError) as err:
        dn.integrate(leaky(tau=0.01), torch.ones(1, 3), t_end=5.0, solver=Dopri5(rtol=1e-9, dt_min=0.5))
    e = err.value
    assert e.status == Status.REACHED_DT_MIN and e.population == "r" and 0.0 <= e.t < 5.0
    assert "dt_min = 0.5 ms" in str(e) and "'r'" in str(e) and "tau" in str(e)


def test_max_steps_failure_message():
    with pytest.raises(dn.SolverError) as err:
        dn.integrate(ScalarDDE(), t_end=2.0, solver=Dopri5(rtol=1e-10, atol=1e-12, max_steps=5))
    e = err.value
    assert e.status == Status.REACHED_MAX_STEPS and 0.0 < e.t < 2.0
    assert "max_steps = 5" in str(e) and "Raise max_steps" in str(e)


def test_non_finite_failure_message():
    class Breaks(ScalarDDE):
        def forward(self, t, state, history, inputs):
            r = -state["r"]
            return {"r": r * math.nan if t > 0.5 else r}

    with pytest.raises(dn.SolverError) as err:
        dn.integrate(Breaks(), t_end=2.0, solver=Dopri5())
    e = err.value
    assert e.status == Status.NON_FINITE and e.population == "r"
    assert 0.3 < e.t <= 0.5 + 1e-9 and "non-finite" in str(e)


def test_undeclared_short_delay_is_an_error():
    class Sneaky(ScalarDDE):
        def forward(self, t, state, history, inputs):
            return {"r": -state["r"] - history.lag("r", 1.0) + 0 * history.lag("r", 0.01)}

    with pytest.raises(dn.DelayError, match="delays\\(\\)"):
        dn.integrate(Sneaky(), t_end=3.0, solver=Dopri5())


def test_bad_options_are_rejected():
    with pytest.raises(dn.ConfigurationError, match="atol"):
        Dopri5(atol=0.0)
    with pytest.raises(dn.ConfigurationError, match="controller"):
        Dopri5(controller="pid")
    with pytest.raises(dn.ConfigurationError, match="first step"):
        dn.integrate(ScalarDDE(), t_end=1.0, solver=Dopri5(), dt=-1.0)


# -- dense output is exact on polynomials of its degree -----------------------------------------
class PolyField(dn.VectorField):
    """dr/dt = p'(t), r(0) = p(0): the solution is the polynomial p itself."""

    def __init__(self, coeffs):
        super().__init__()
        self.coeffs = coeffs

    def init_state(self, b, *, device=None, dtype=None):
        return {"r": torch.full((b, 1), self.coeffs[0], device=device, dtype=dtype)}

    def forward(self, t, state, history, inputs):
        d = sum(i * c * t ** (i - 1) for i, c in enumerate(self.coeffs) if i)
        return {"r": torch.full_like(state["r"], d)}


@settings(max_examples=15, deadline=None)
@given(coeffs=st.lists(st.floats(-2, 2), min_size=4, max_size=4),
       cls=st.sampled_from([Dopri5, Tsit5, Bosh3]),
       # a save time within dynode.tolerances.time_tol(t0) of t0 *is* t0 (the initial state): keep
       # the drawn times either at t0 or clearly after it
       times=st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 3.0)), min_size=1, max_size=6, unique=True))
def test_dense_output_exact_on_cubics(coeffs, cls, times):
    times = sorted(times)
    sol = dn.integrate(PolyField(coeffs), t_end=3.0, save_at=times, dt=0.7,
                       solver=cls(rtol=1e-3, atol=1e-3),
                       initial_state={"r": torch.full((1, 1), coeffs[0], dtype=torch.float64)})
    exact = torch.tensor([sum(c * t ** i for i, c in enumerate(coeffs)) for t in times], dtype=torch.float64)
    assert float((sol.states["r"][:, 0, 0] - exact).abs().max()) < 1e-9


def test_blow_up_raises_divergence_error():
    class Explodes(ScalarDDE):
        def forward(self, t, state, history, inputs):
            return {"r": state["r"] / 0.1}  # r = e^(10 t): exceeds max_abs = 1e3 near t = 0.69

    with pytest.raises(dn.DivergenceError, match="'r' exceeded") as err:
        dn.integrate(Explodes(delay=0.0), t_end=5.0, solver=Dopri5(), max_abs=1e3)
    lo, hi = err.value.t_range
    assert lo < math.log(1e3) / 10 <= hi + 1e-9 and hi < 1.5
