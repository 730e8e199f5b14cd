"""dynode.history: the grid ring buffer, the piecewise histories, and their one error type."""

import pytest
import torch

import dynode as dn
from dynode.history import (DenseHistory, History, SegmentHistory, compatible_dts, delay_steps,
                            propagate_breakpoints)
from fields import ScalarDDE


def test_dn_history_is_the_grid_history():
    assert dn.History is History


def test_ring_buffer_wraps_around_exactly():
    """max_delay = 3 dt keeps 4 slots; after 10 steps every lag k <= 3 is the exact stored
    tensor of step n - k (a reference, not a copy), and lag 0 is the stage's own state."""
    h = History({"r": torch.zeros(1)}, t0=0.0, dt=0.5, max_delay=1.5, derivatives=False)
    states = [{"r": torch.tensor([float(n) + 0.25])} for n in range(10)]
    for n, y in enumerate(states):
        h.store(n, y)
    assert h.size == 4
    h.at(9, 0.0, 4.5, states[9])
    for k in range(4):
        assert h.lag("r", 0.5 * k) is states[9 - k]["r"]


def test_grid_reads_before_the_oldest_state_are_the_initial_state():
    y0 = {"r": torch.tensor([7.0])}
    h = History(y0, t0=0.0, dt=1.0, max_delay=3.0, derivatives=False)
    h.store(0, y0)
    h.store(1, {"r": torch.tensor([8.0])})
    h.at(1, 0.0, 1.0, {"r": torch.tensor([8.0])})
    assert h.lag("r", 3.0) is y0["r"]


def test_history_hermite_is_exact_for_cubics(f64):
    """Hermite interpolation reproduces a cubic from values and slopes at the grid points."""
    p = lambda t: 0.3 * t**3 - t**2 + 2 * t - 1  # noqa: E731
    dp = lambda t: 0.9 * t**2 - 2 * t + 2  # noqa: E731
    dt = 0.5
    h = dn.History({"r": torch.tensor([p(0.0)])}, t0=0.0, dt=dt, max_delay=1.0, derivatives=True)
    for n in range(4):
        h.store(n, {"r": torch.tensor([p(n * dt)])}, {"r": torch.tensor([dp(n * dt)])})
    for c in (0.25, 0.5, 0.8):
        h.at(3, c, (3 + c) * dt, {"r": torch.tensor([0.0])})
        for delay in (0.5, 1.0):
            assert h.lag("r", delay).item() == pytest.approx(p((3 + c) * dt - delay), abs=1e-12)
    h.at(3, 0.0, 3 * dt, {})
    assert h.lag("r", 1.0).item() == pytest.approx(p(0.5))


def test_constant_history_before_t0(f64):
    """Before t0 the history is the initial state: r' = -r(t-1)/tau gives r = 1 - t on [0, 1]."""

    class Lagged(ScalarDDE):
        def forward(self, t, state, history, inputs):
            return {"r": -history.lag("r", self.delay) / self.tau}

    sol = dn.integrate(Lagged(), t_end=1.0, dt=0.125, solver="rk4", t0=0.0)
    torch.testing.assert_close(sol.states["r"][:, 0, 0], 1 - sol.ts, atol=1e-12, rtol=0)


def _piecewise(kind: str, max_delay: float = 2.0):
    """A dense or segment history holding r(t) = 1 + 2 t solved on [0, 1]."""
    y0 = {"r": torch.tensor([1.0])}
    if kind == "dense":  # one stage, B_1(theta) = theta: y(t + theta h) = y + theta h k
        h = DenseHistory(y0, t0=0.0, max_delay=max_delay, weights=lambda th: [th])
        h.append(0.0, 1.0, 1.0, [y0["r"]], [[torch.tensor([2.0])]], [torch.tensor([3.0])])
    else:  # four points on the line
        h = SegmentHistory(y0, lambda point, name: point, t0=0.0, max_delay=max_delay)
        pts = torch.tensor([[1.0], [5 / 3], [7 / 3], [3.0]])
        h.append(0.0, 1.0, pts, {"r": pts[-1]})
    return h


@pytest.mark.parametrize("kind", ["dense", "segment"])
def test_piecewise_reads(f64, kind):
    h = _piecewise(kind)
    h.at(1.5, {"r": torch.tensor([4.0])})
    assert h.lag("r", 1.0).item() == pytest.approx(2.0, abs=1e-12)  # inside the piece
    assert h.lag("r", 0.5).item() == 3.0                               # the newest solved state
    assert h.lag("r", 2.0).item() == 1.0                               # before t0: the initial state
    assert h.lag("r", 0.0).item() == 4.0                               # the stage's own state


@pytest.mark.parametrize("kind", ["dense", "segment"])
def test_a_read_past_the_solved_range_is_one_delay_error(kind):
    h = _piecewise(kind)
    h.at(3.0, {"r": torch.tensor([0.0])})
    with pytest.raises(dn.DelayError, match=r"reads t - delay = 2.5 ms, beyond the solution accepted so far "
                                            r"\(1 ms\).*delays\(\)"):
        h.lag("r", 0.5)


@pytest.mark.parametrize("kind", ["grid", "dense", "segment"])
def test_a_delay_beyond_max_delay_is_the_same_error_everywhere(kind):
    if kind == "grid":
        h = History({"r": torch.zeros(1)}, t0=0.0, dt=0.5, max_delay=1.0, derivatives=False)
        h.store(0, {"r": torch.zeros(1)})
        h.at(0, 0.0, 0.0, {"r": torch.zeros(1)})
    else:
        h = _piecewise(kind, max_delay=1.0)
        h.at(1.0, {"r": torch.zeros(1)})
    with pytest.raises(dn.DelayError, match=r"exceeds the field's max_delay\(\) = 1 ms; make max_delay\(\) "
                                            r"return at least 1.5"):
        h.lag("r", 1.5)
    with pytest.raises(dn.DelayError, match="finite and >= 0"):
        h.lag("r", -1.0)


@pytest.mark.parametrize("kind", ["grid", "dense", "segment"])
def test_an_unknown_name_lists_the_populations(kind):
    h = (History({"r": torch.zeros(1)}, t0=0.0, dt=1.0, max_delay=1.0, derivatives=False)
         if kind == "grid" else _piecewise(kind))
    with pytest.raises(KeyError, match=r"no population or input of that name; populations: \['r'\]"):
        h.lag("x", 1.0)


def test_delay_steps_and_compatible_dts():
    assert delay_steps(6.0, 2.0) == 3 and delay_steps(0.3, 0.1) == 3 and delay_steps(1.0, 0.3) is None
    assert compatible_dts([6.0, 4.0])[:3] == [2.0, 1.0, 0.5]


def test_breakpoints_propagate_by_the_delays():
    """t0 propagates as smooth points, a stimulus jump b as jumps b + d, b + 2d; t_end ends the list."""
    stops, jumps = propagate_breakpoints(0.0, 10.0, [2.0], [3.0], levels=2)
    assert stops == [2.0, 3.0, 5.0, 6.0, 8.0, 10.0]
    assert jumps == [True, False, True, False, True, False]
