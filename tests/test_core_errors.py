"""Every guard rail raises with a message that says what to change."""

import warnings

import pytest
import torch
from torch import nn

import dynode as dn
from fields import ScalarDDE, leaky


def test_delay_not_multiple_of_dt_names_connection_and_dts():
    net = dn.Network()
    net.add_input("x", shape=(2,))
    net.add_population("V1", shape=(2,), tau=5.0)
    net.connect("x", "V1")
    net.connect("V1", "V1", nn.Linear(2, 2), delay=6.0)
    with pytest.raises(dn.DelayError, match=r"V1 -> V1.*6 ms.*dt = 4 ms.*6, 3, 2, 1\.5, 1.*ms"):
        dn.integrate(net, torch.ones(2), t_end=40.0, dt=4.0)


def test_custom_field_delay_checked_at_first_read():
    with pytest.raises(dn.DelayError, match=r"delay 1 ms read from 'r' is not an integer multiple of dt = 0.3 ms"):
        dn.integrate(ScalarDDE(), t_end=0.9, dt=0.3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(dt=0.0), r"dt must be a finite number > 0"),
    (dict(dt=-1.0), r"dt must be a finite number > 0"),
    (dict(dt=1.0, t_end=0.0), r"t_end \(0.0 ms\) must be greater than t0"),
    (dict(dt=0.3, t_end=1.0), r"not a whole number of steps of dt = 0.3 ms; use t_end = 0.9 or 1.2"),
    (dict(dt=1.0, solver="rk5"), r"unknown solver 'rk5'; known: euler, midpoint, heun, rk4"),
    (dict(dt=1.0, solver=dn.solvers.RK4), r"pass a solver instance"),
    (dict(dt=1.0, save_at=[3.0, 2.0]), r"strictly increasing"),
    (dict(dt=1.0, batch_size=0), r"batch_size must be a positive int"),
    (dict(), r"fixed-step solver: give dt"),
])
def test_bad_integrate_arguments(kwargs, match):
    kwargs = {"t_end": 10.0, **kwargs}
    with pytest.raises(dn.ConfigurationError, match=match):
        dn.integrate(leaky(), torch.ones(3), **kwargs)


def test_building_errors():
    net = dn.Network()
    net.add_input("img", shape=(3, 8, 8))
    with pytest.raises(dn.ConfigurationError, match=r"unknown activation 'rleu'; known: .*relu"):
        net.add_population("V1", shape=(4, 8, 8), tau=5.0, phi="rleu")
    with pytest.raises(dn.ConfigurationError, match=r"tau must be finite and > 0 ms, got -1"):
        net.add_population("V1", shape=(4, 8, 8), tau=-1.0)
    net.add_population("V1", shape=(4, 8, 8), tau=5.0)
    with pytest.raises(dn.ConfigurationError, match=r"already declared"):
        net.add_population("V1", shape=(4, 8, 8), tau=5.0)
    with pytest.raises(dn.ConfigurationError, match=r"delay must be finite and >= 0 ms, got -2"):
        net.connect("V1", "V1", nn.Conv2d(4, 4, 3, padding=1), delay=-2.0)
    with pytest.raises(dn.ShapeError, match=r"connection img -> V1: the operator maps \(3, 8, 8\) to "
                                           r"\(4, 4, 4\), but 'V1' has shape \(4, 8, 8\)"):
        net.connect("img", "V1", nn.Conv2d(3, 4, 3, stride=2, padding=1))
    with pytest.raises(dn.ShapeError, match=r"connection img -> V1: the operator cannot take"):
        net.connect("img", "V1", nn.Conv2d(5, 4, 3, padding=1))
    with pytest.raises(dn.ConfigurationError, match=r"'V9' is not a population"):
        net.connect("img", "V9", nn.Conv2d(3, 4, 3, padding=1))
    with pytest.raises(dn.ConfigurationError, match=r"names must be Python identifiers"):
        net.add_population("V 2", shape=(4,), tau=1.0)


def test_stimulus_errors():
    net = dn.Network()
    net.add_input("a", shape=(2,))
    net.add_input("b", shape=(2,))
    net.add_population("P", shape=(2,), tau=5.0)
    net.connect("a", "P")
    net.connect("b", "P")
    with pytest.raises(dn.ConfigurationError, match=r"one unnamed tensor but the field has 2 inputs \['a', 'b'\]"):
        dn.integrate(net, torch.ones(2), t_end=2.0, dt=1.0)
    with pytest.raises(dn.ConfigurationError, match=r"reads the inputs \['a', 'b'\] but no stimulus"):
        dn.integrate(net, None, t_end=2.0, dt=1.0)
    with pytest.raises(dn.ConfigurationError, match=r"missing \['b'\]"):
        dn.integrate(net, {"a": torch.ones(2)}, t_end=2.0, dt=1.0)
    with pytest.raises(dn.ShapeError, match=r"input 'a': the stimulus has shape \(4, 3\) but the input is declared"):
        dn.integrate(net, {"a": torch.ones(4, 3), "b": torch.ones(4, 2)}, t_end=2.0, dt=1.0)
    with pytest.raises(dn.ShapeError, match=r"batch 3 but the batch size is 4"):
        dn.integrate(net, {"a": torch.ones(4, 2), "b": torch.ones(3, 2)}, t_end=2.0, dt=1.0)
    ok = dn.integrate(net, {"a": torch.ones(4, 2), "b": torch.ones(2)}, t_end=2.0, dt=1.0)
    assert ok.states["P"].shape == (3, 4, 2)


def test_initial_state_errors():
    with pytest.raises(dn.ConfigurationError, match=r"unknown populations \['q'\]"):
        dn.integrate(leaky(), torch.ones(3), t_end=2.0, dt=1.0, initial_state={"q": torch.ones(3)})
    with pytest.raises(dn.ShapeError, match=r"initial_state\['r'\] has shape \(2,\)"):
        dn.integrate(leaky(), torch.ones(3), t_end=2.0, dt=1.0, initial_state={"r": torch.ones(2)})


def test_euler_warns_when_dt_exceeds_tau_but_allows_dt_equal_tau():
    with pytest.warns(dn.StabilityWarning, match=r"dt = 2 ms > tau = 1 ms for population 'r'"):
        dn.integrate(leaky(tau=1.0), torch.ones(3), t_end=4.0, dt=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dn.integrate(leaky(tau=1.0), torch.ones(3), t_end=4.0, dt=1.0)


def test_divergence_error_names_population_time_and_dt_over_tau():
    net = dn.Network()
    net.add_input("x", shape=(4,))
    net.add_population("E", shape=(4,), tau=5.0, phi="relu")
    net.connect("x", "E")
    w = nn.Linear(4, 4, bias=False)
    nn.init.constant_(w.weight, 1.0)  # gain 4: exponential blow-up
    net.connect("E", "E", w, delay=1.0)
    with pytest.raises(dn.DivergenceError, match=r"population 'E' exceeded \|r\| = 1e\+06 between "
                                                 r"t = \d+ ms and t = \d+ ms; dt/tau = 0.2") as info:
        dn.integrate(net, torch.ones(4), t_end=2000.0, dt=1.0, check_every=25)
    err = info.value
    assert err.population == "E" and err.dt_over_tau == pytest.approx(0.2)
    assert err.t_range[1] - err.t_range[0] == 25.0


class _NanAfterStart(dn.stimuli.Stimulus):
    """Finite at t0 (where the input is checked), NaN in one unit afterwards."""

    breakpoints = ()

    def __call__(self, t):
        return torch.tensor([1.0, float("nan") if t > 0 else 0.0, 0.0])

    def to(self, device=None, dtype=None):
        return self


def test_divergence_catches_nan_at_the_end():
    net = leaky(tau=5.0)
    with pytest.raises(dn.DivergenceError, match=r"'r' became non-finite between t = 0 ms and t = 10 ms"):
        dn.integrate(net, _NanAfterStart(), t_end=10.0, dt=1.0)
    with pytest.raises(dn.ConfigurationError, match=r"stimulus input 'x' has NaN or inf values at t = 0 ms"):
        dn.integrate(net, torch.tensor([1.0, float("nan"), 0.0]), t_end=10.0, dt=1.0)  # checked first


def test_stimulus_callable_must_declare_breakpoints():
    with pytest.raises(dn.ConfigurationError, match=r"subclass dynode.stimuli.Stimulus"):
        dn.integrate(leaky(), lambda t: torch.ones(3), t_end=2.0, dt=1.0)


def test_sequential_order_needs_a_network():
    with pytest.raises(dn.ConfigurationError, match=r"needs a dynode.Network"):
        dn.integrate(ScalarDDE(), t_end=2.0, dt=0.5, solver=dn.solvers.Euler(order="sequential"))
    with pytest.raises(dn.ConfigurationError, match=r"'simultaneous' or 'sequential'"):
        dn.solvers.Euler(order="parallel")


def test_magnitudes_flag_exactly_the_tensors_with_nan_or_inf():
    """The finiteness checks (weights, stimulus, initial state, divergence guard) read
    ``isfinite(max |x|)``: NaN must propagate through the max, -inf count as inf, an empty
    tensor count as finite, and tensors of different dtypes stack."""
    from dynode.guards import magnitudes

    def with_value(v, dtype=torch.float32):
        x = torch.linspace(-3.0, 2.0, 1000, dtype=dtype)
        x[517] = v
        return x

    tensors = [with_value(1.0), with_value(float("nan")), with_value(float("inf")),
               with_value(-float("inf")), torch.empty(0), with_value(float("nan"), torch.float16),
               with_value(-7.0, torch.float64), with_value(float("nan"), torch.bfloat16).reshape(10, 100)]
    m = magnitudes(tensors)
    assert torch.isfinite(m).tolist() == [True, False, False, False, True, False, True, False]
    assert m[0].item() == 3.0 and m[6].item() == 7.0 and m[4].item() == 0.0
