"""dynode.history.dense: the adaptive solvers' history (accepted steps + continuous extension)."""

import math

import pytest
import torch

import dynode as dn
from dynode.history import DenseHistory, field_delays
from dynode.solvers.adaptive import BOSH3, DOPRI5, TSIT5
from fields import ScalarDDE


@pytest.mark.parametrize("tab", [DOPRI5, TSIT5, BOSH3])
def test_dense_weights_end_on_the_step_weights(tab):
    """B_i(0) = 0 and B_i(1) = b_i: the interpolant starts at y_n and ends on y_{n+1}."""
    assert tab.weights(0.0) == [0.0] * len(tab.c)
    assert tab.weights(1.0) == pytest.approx(list(tab.b), abs=1e-12)


def test_reads_use_the_step_of_the_read_time(f64):
    """Two steps with different slopes: a read resolves to the step that holds t - delay."""
    h = DenseHistory({"r": torch.tensor([0.0])}, t0=0.0, max_delay=5.0, weights=lambda th: [th])
    h.append(0.0, 1.0, 1.0, [torch.tensor([0.0])], [[torch.tensor([1.0])]], [torch.tensor([1.0])])
    h.append(1.0, 2.0, 3.0, [torch.tensor([1.0])], [[torch.tensor([-0.5])]], [torch.tensor([0.0])])
    h.at(4.0, {"r": torch.tensor([0.0])})
    assert h.lag("r", 3.5).item() == pytest.approx(0.5)   # t = 0.5, first step
    assert h.lag("r", 2.0).item() == pytest.approx(0.5)   # t = 2.0, second step: 1 - 0.5 * 1
    assert h.lag("r", 1.0).item() == 0.0                  # t = 3.0: the newest accepted state


def test_old_steps_are_dropped_and_reads_within_max_delay_stay_exact(f64):
    """A long run keeps only the steps within max_delay (memory stays bounded)."""
    h = DenseHistory({"r": torch.tensor([0.0])}, t0=0.0, max_delay=0.05, weights=lambda th: [th])
    one = torch.tensor([1.0])
    for n in range(2000):  # r(t) = t, steps of 0.01 ms
        t = n * 0.01
        h.append(t, 0.01, t + 0.01, [torch.tensor([t])], [[one]], [torch.tensor([t + 0.01])])
    assert len(h._pieces) - h._lo <= 8 and len(h._pieces) < 600
    h.at(20.0, {"r": torch.tensor([20.0])})
    assert h.lag("r", 0.045).item() == pytest.approx(20.0 - 0.045, abs=1e-9)


def test_field_delays_merge_delays_and_max_delay():
    class Two(ScalarDDE):
        def delays(self):
            return {"a": ("r", 1.0), "b": ("r", 1.0 + 1e-13), "c": ("r", 0.0)}

        def max_delay(self):
            return 3.0

    assert field_delays(Two()) == (1.0, 3.0)


def test_adaptive_dde_reads_its_dense_history_to_order(f64):
    """The scalar DDE solved through the dense history matches the method-of-steps solution."""
    sol = dn.integrate(ScalarDDE(), t_end=2.0, solver=dn.solvers.Dopri5(rtol=1e-9, atol=1e-12), save_at=[2.0])
    assert float(sol.states["r"][0, 0, 0]) == pytest.approx(1 + 2 / math.e**2 - 4 / math.e, abs=1e-8)
