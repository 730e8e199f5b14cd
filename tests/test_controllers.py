"""dynode.solvers.controllers: step-size factors after accepted and rejected steps."""

import math

import pytest
import torch

import dynode as dn
from dynode.solvers.controllers import IntegralController, PIController, get_controller, initial_step
from fields import leaky


def test_integral_accept_and_reject_on_a_known_error():
    """q = 4 (k = 5): factor = 0.9 err^(-1/5), clipped to [0.2, 10]; <= 1 right after a rejection."""
    c = IntegralController().start(4)
    assert c.accept(0.5) == pytest.approx(0.9 * 0.5 ** -0.2)
    assert c.accept(0.0) == 10.0                     # no error: the largest growth
    assert c.accept(1e-12) == 10.0                   # clipped at factor_max
    assert c.reject(4.0) == pytest.approx(0.9 * 4.0 ** -0.2)
    assert c.reject(1e9) == 0.2                      # clipped at factor_min
    assert c.reject(math.nan) == 0.2                 # non-finite: shrink as far as allowed
    assert c.accept(1e-6) == 1.0                     # no growth right after a rejection
    assert c.accept(1e-6) == 10.0


def test_pi_uses_the_previous_error():
    c = PIController().start(4)
    c.accept(0.5)
    assert c.accept(0.25) == pytest.approx(0.9 * 0.25 ** (-0.7 / 5) * 0.5 ** (0.4 / 5))


@pytest.mark.parametrize("kind", ["integral", "pi"])
def test_step_growth_stays_within_the_bounds(kind):
    c = get_controller(kind, safety=0.8, factor_min=0.3, factor_max=4.0).start(2)
    for err in [1e-12, 1e-3, 0.1, 0.5, 0.99, 0.2, 1e-8]:
        assert 0.3 <= c.accept(err) <= 4.0
    for err in [1.01, 3.0, 1e6]:
        assert 0.3 <= c.reject(err) <= 1.0


@pytest.mark.parametrize("kw,match", [({"safety": 1.5}, r"safety must be a factor in \(0, 1\]"),
                                      ({"factor_min": 1.0}, r"factor_min must be a shrink factor"),
                                      ({"factor_max": 0.5}, "factor_max must be a growth factor > 1")])
def test_bad_factors_name_the_option(kw, match):
    with pytest.raises(dn.ConfigurationError, match=match):
        IntegralController(**kw)
    with pytest.raises(dn.ConfigurationError, match=match):
        dn.solvers.Dopri5(**kw)
    with pytest.raises(dn.ConfigurationError, match="controller must be 'integral' or 'pi'"):
        get_controller("pid", safety=0.9, factor_min=0.2, factor_max=10.0)


def test_initial_step_is_finite_and_capped(f64):
    f = lambda t, y: [-v for v in y]  # noqa: E731
    y = [torch.ones(3)]
    h = initial_step(f, 0.0, y, f(0.0, y), rtol=1e-6, atol=1e-9, order=5, h_max=1.0)
    assert 0 < h <= 1.0
    assert initial_step(f, 0.0, y, f(0.0, y), rtol=1e-6, atol=1e-9, order=5, h_max=1e-4) <= 1e-4


def test_a_too_large_error_rejects_the_step_and_the_solve_still_converges(f64):
    """A first step far too large for rtol is rejected (counted) and the retry succeeds."""
    sol = dn.integrate(leaky(5.0), torch.ones(1, 3), t_end=10.0, dt=10.0,
                       solver=dn.solvers.Dopri5(rtol=1e-10, atol=1e-12))
    assert sol.stats.rejected >= 1 and sol.stats.accepted + sol.stats.rejected == sol.stats.steps
    assert float(sol.final_state["r"][0, 0]) == pytest.approx(1 - math.exp(-2.0), abs=1e-8)
