"""Temporal envelopes and composed stimuli: exact onsets/offsets, breakpoints, caching."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import dynode as dn
from dynode.errors import ConfigurationError, ShapeError
from dynode.stimuli import Modulated, Succession, Sum, envelopes as E


def before(t: float) -> float:
    return math.nextafter(t, -math.inf)


def value(env, t):
    return env(t).tolist()


# ----------------------------------------------------------------------------- envelopes
def test_pulse_on_exactly_at_onset_off_exactly_at_offset():
    e = E.pulse(10.0, 5.0, amplitude=2.0, baseline=0.5)
    assert e.breakpoints == e.jumps == (10.0, 15.0) and e.kinks == ()
    assert value(e, before(10.0)) == [0.5]
    assert value(e, 10.0) == [2.0]
    assert value(e, before(15.0)) == [2.0]
    assert value(e, 15.0) == [0.5]


def test_per_sample_pulses_make_a_condition_batch():
    e = E.pulse([0.0, 10.0], [5.0, 20.0], amplitude=[1.0, 3.0])
    assert e.batch_size == 2
    assert e.breakpoints == (0.0, 5.0, 10.0, 30.0)
    assert value(e, 0.0) == [1.0, 0.0]
    assert value(e, 5.0) == [0.0, 0.0]
    assert value(e, 10.0) == [0.0, 3.0]
    assert value(e, before(30.0)) == [0.0, 3.0]
    assert value(e, 30.0) == [0.0, 0.0]


def test_pulse_train_and_two_pulses():
    e = E.pulse_train(5.0, 2.0, 3, period=10.0)
    assert e.breakpoints == (5.0, 7.0, 15.0, 17.0, 25.0, 27.0)
    assert E.pulse_train(5.0, 2.0, 3, gap=8.0).breakpoints == e.breakpoints
    two = E.two_pulses(100.0, 133.0, isi=[17.0, 533.0])
    assert two.breakpoints == (100.0, 233.0, 250.0, 383.0, 766.0, 899.0)
    assert value(two, 249.0) == [0.0, 0.0]
    assert value(two, 250.0) == [1.0, 0.0]
    assert value(two, 766.0) == [0.0, 1.0]
    # adjacent pulses (gap 0) fuse: the shared edge is no discontinuity
    assert E.pulse_train(0.0, 5.0, 2, gap=0.0).breakpoints == (0.0, 10.0)


def test_ramp_lists_its_kinks_and_is_continuous():
    e = E.ramp(10.0, 20.0, v0=1.0, v1=3.0)
    assert e.breakpoints == e.kinks == (10.0, 20.0) and e.jumps == ()
    assert value(e, 10.0) == pytest.approx([1.0])
    assert value(e, before(10.0)) == [1.0]
    assert value(e, 15.0) == pytest.approx([2.0])
    assert value(e, 17.5) == pytest.approx([2.5])
    assert value(e, 20.0) == pytest.approx([3.0])
    assert value(e, 100.0) == [3.0]
    # far from zero, evaluation stays exact (value at piece start + slope * (t - start))
    far = E.ramp(1e6, 1e6 + 10.0)
    assert value(far, 1e6 + 2.5) == pytest.approx([0.25], abs=1e-7)


def test_pattern_maps_bits_to_bins():
    e = E.pattern("1011", bin_ms=10.0, onset=5.0, amplitude=0.5)
    assert e.breakpoints == (5.0, 15.0, 25.0, 45.0)
    assert [value(e, t)[0] for t in (0.0, 5.0, 14.9, 15.0, 24.9, 25.0, 35.0, 44.9, 45.0)] == \
        [0.0, 0.5, 0.5, 0.0, 0.0, 0.5, 0.5, 0.5, 0.0]
    with pytest.raises(ConfigurationError, match="'0' and '1'"):
        E.pattern("10x1", 10.0)


def test_sum_scaling_stack_shift_sequence():
    s = E.pulse(0.0, 10.0) + E.pulse(5.0, 10.0)
    assert s.breakpoints == (0.0, 5.0, 10.0, 15.0)
    assert value(s, 7.0) == [2.0] and value(s, 12.0) == [1.0]
    # a sum whose parts cancel at a knot lists no breakpoint there
    assert (E.pulse(0.0, 10.0) + E.pulse(10.0, 10.0)).breakpoints == (0.0, 20.0)
    assert value(E.pulse(0.0, 10.0) * [0.5, 2.0], 1.0) == [0.5, 2.0]
    assert E.pulse(0.0, 10.0).shift(7.0).breakpoints == (7.0, 17.0)
    st_ = E.stack([E.pulse(0.0, 10.0), E.ramp(0.0, 10.0)])
    assert st_.batch_size == 2 and st_.jumps == (0.0, 10.0) and st_.kinks == ()
    assert value(st_, 5.0) == pytest.approx([1.0, 0.5])
    seq = E.sequence([E.ramp(0.0, 50.0), E.constant(1.0), E.ramp(0.0, 50.0, 1.0, 0.0)], [50.0, 100.0, 50.0])
    assert seq.breakpoints == seq.kinks == (0.0, 50.0, 150.0, 200.0)
    assert value(seq, 25.0) == pytest.approx([0.5])
    assert value(seq, 100.0) == pytest.approx([1.0])
    assert value(seq, 175.0) == pytest.approx([0.5])
    assert value(seq, 300.0) == [0.0]


def test_invalid_envelopes_are_rejected():
    with pytest.raises(ConfigurationError, match="duration must be > 0"):
        E.pulse(0.0, 0.0)
    with pytest.raises(ConfigurationError, match="different lengths"):
        E.pulse([0.0, 1.0], [1.0, 2.0, 3.0])
    with pytest.raises(ConfigurationError, match="exactly one of period"):
        E.pulse_train(0.0, 1.0, 3)
    with pytest.raises(ConfigurationError, match="overlap"):
        E.pulse_train(0.0, 5.0, 3, period=4.0)
    with pytest.raises(ConfigurationError, match="stop must be > start"):
        E.ramp(5.0, 5.0)


pulses = st.lists(st.tuples(st.integers(0, 60), st.integers(1, 20), st.sampled_from([0.0, 0.5, 1.0, 2.0])),
                  min_size=1, max_size=5)


@settings(max_examples=60, deadline=None)
@given(st.lists(pulses, min_size=1, max_size=3))
def test_breakpoints_are_exactly_the_discontinuities(spec):
    """Sums of random integer-ms pulses (per sample): the breakpoints equal the times at which
    a brute-force scan on a 0.25 ms grid sees the value change, and nothing else."""
    per_sample = []
    for sample in spec:
        env = E.constant(0.0)
        for on, du, amp in sample:
            env = env + E.pulse(float(on), float(du), amp)
        per_sample.append(env)
    env = E.stack(per_sample)
    grid = np.arange(-2.0, 90.0, 0.25)
    vals = np.stack([env(t).numpy() for t in grid])
    changes = {float(grid[i]) for i in range(1, len(grid)) if not np.array_equal(vals[i], vals[i - 1])}
    assert set(env.breakpoints) == changes
    assert env.kinks == ()
    for b in env.breakpoints:  # right-continuous: the value at b is the new one
        assert not torch.equal(env(before(b)), env(b))


# ----------------------------------------------------------------------------- stimuli
def test_modulated_contrast_around_background_and_cached():
    img = torch.linspace(0.0, 1.0, 12).reshape(1, 3, 2, 2)
    env = E.pulse(10.0, 20.0, amplitude=[1.0, 0.5])
    s = Modulated(img, env, background="grey", conditions={"contrast": [1.0, 0.5]})
    assert s.breakpoints == (10.0, 30.0) and s.batch_size == 2
    assert torch.equal(s(before(10.0)), torch.full((2, 3, 2, 2), 0.5))
    on = s(10.0)
    torch.testing.assert_close(on[0], img[0])
    torch.testing.assert_close(on[1], 0.5 + 0.5 * (img[0] - 0.5))
    assert s(20.0) is on  # constant piece: the cached tensor, no recomputation
    assert s(before(30.0)) is on
    assert torch.equal(s(30.0), torch.full((2, 3, 2, 2), 0.5))
    assert s(0.0) is s(30.0)  # equal levels share one tensor
    mean_bg = Modulated(img, E.pulse(0.0, 1.0), background="mean")
    torch.testing.assert_close(mean_bg(5.0), img.mean(dim=(2, 3), keepdim=True).expand(1, 3, 2, 2))


def test_modulated_ramp_and_named_input():
    img = torch.ones(2, 3)
    s = Modulated(img, E.ramp(0.0, 10.0), background="blank", input="x")
    assert s.breakpoints == (0.0, 10.0)
    torch.testing.assert_close(s(2.5)["x"], torch.full((2, 3), 0.25))
    with pytest.raises(ShapeError, match="3 images but the envelope has batch 2"):
        Modulated(torch.ones(3, 4), E.pulse([0.0, 1.0], 1.0))
    with pytest.raises(ConfigurationError, match="one entry per sample"):
        Modulated(img, E.pulse(0.0, 1.0), conditions={"c": [1, 2, 3]})


def test_sum_and_succession_of_stimuli():
    a = Modulated(torch.ones(1, 2), E.pulse(0.0, 10.0), background="blank")
    b = Modulated(2 * torch.ones(1, 2), E.pulse(5.0, 10.0), background="blank")
    s = a + b
    assert isinstance(s, Sum) and s.breakpoints == (0.0, 5.0, 10.0, 15.0)
    assert s(7.0).tolist() == [[3.0, 3.0]]
    assert s(7.0) is s(8.0)  # memoised while the parts return cached tensors
    seq = Succession([a, b], [20.0, 20.0], start=100.0)
    # a sees local time t - 100, b sees t - 120
    assert seq.breakpoints == (100.0, 110.0, 120.0, 125.0, 135.0)
    assert seq(before(100.0)).tolist() == [[0.0, 0.0]]
    assert seq(100.0).tolist() == [[1.0, 1.0]]
    assert seq(110.0).tolist() == [[0.0, 0.0]]
    assert seq(125.0).tolist() == [[2.0, 2.0]]
    assert seq(135.0).tolist() == [[0.0, 0.0]]


def test_to_moves_and_casts():
    s = Modulated(torch.ones(2, 3), E.pulse(0.0, 5.0), background="blank").to(dtype=torch.float64)
    assert s(1.0).dtype == torch.float64 and s.envelope(1.0).dtype == torch.float64


def test_network_sees_the_pulse_exactly_at_onset():
    """Integrated through dn.integrate: the first step that sees the pulse starts at its onset,
    the first one that no longer sees it starts at its offset (Euler, dt = 1 ms)."""
    net = dn.Network()
    net.add_input("x", shape=(1,))
    net.add_population("A", shape=(1,), tau=5.0, phi="identity")
    net.connect("x", "A", nn.Identity())
    img = torch.ones(2, 1)
    stim = Modulated(img, E.pulse([10.0, 20.0], [5.0, 7.0]), background="blank")
    sol = dn.integrate(net, stim, t_end=40.0, dt=1.0)
    r = sol.states["A"][:, :, 0]
    ts = sol.ts.tolist()
    rising = [ts[int((r[:, b] > 0).nonzero()[0])] for b in range(2)]
    peak = [ts[int(r[:, b].argmax())] for b in range(2)]
    assert rising == [11.0, 21.0]  # the step starting at 10 (20) is the first to see the pulse
    assert peak == [15.0, 27.0]  # and the one starting at 15 (27) the first to miss it


def scan(env, lo=-5.0, hi=120.0, step=0.25, d=0.1):
    """Brute-force oracle (all knots here lie on the 0.25 ms grid): at each grid time, a jump
    if the value differs from the value just before; a kink if it does not but the slopes on
    the two sides (finite differences over ``d`` ms) differ."""
    def f(t):
        return env.values(np.array([t]))[0]

    jumps, kinks = set(), set()
    for t in np.arange(lo, hi, step):
        t = float(t)
        if np.max(np.abs(f(t) - f(t - 1e-7))) > 1e-5:
            jumps.add(t)
        elif np.max(np.abs((f(t + d) - f(t)) - (f(t - d) - f(t - 2 * d)))) > 1e-9:
            kinks.add(t)
    return jumps, kinks


@pytest.mark.parametrize("env", [
    E.pulse(10.0, 5.0),
    E.pulse_train(3.0, 4.0, 4, period=11.0, amplitude=[1.0, 2.0]),
    E.two_pulses(20.0, 13.0, isi=[7.0, 21.0]),
    E.ramp(10.0, 30.0, 0.2, 1.0),
    E.ramp([0.0, 5.0], [40.0, 25.0], 1.0, 0.0),
    E.pattern("1101001", 6.0, onset=2.0),
    E.ramp(0.0, 20.0) + E.pulse(10.0, 30.0),
    E.sequence([E.ramp(0.0, 10.0), E.pattern("101", 5.0), E.ramp(0.0, 10.0, 1.0, 0.0)], [10.0, 15.0, 10.0]),
    E.stack([E.pulse(0.0, 8.0), E.ramp(4.0, 12.0)]).shift(3.0),
    E.constant([0.5, 1.0]),
], ids=["pulse", "train", "two_pulses", "ramp", "ramps", "pattern", "ramp+pulse", "sequence",
        "stack-shift", "constant"])
def test_every_builder_lists_exactly_its_jumps_and_kinks(env):
    jumps, kinks = scan(env)
    assert set(env.jumps) == jumps
    assert set(env.kinks) == kinks
    assert env.breakpoints == tuple(sorted(jumps | kinks))


def test_step_never_switches_off():
    e = E.step([2.0, 4.0], amplitude=3.0)
    assert e.breakpoints == (2.0, 4.0)
    assert value(e, before(2.0)) == [0.0, 0.0] and value(e, 2.0) == [3.0, 0.0] and value(e, 1e12) == [3.0, 3.0]


def test_uint8_images_are_scaled_like_to_tensor():
    x = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    s = Modulated(x, E.pulse(0.0, 1.0), background="blank")
    torch.testing.assert_close(s(0.5), torch.tensor([[0.0, 0.2, 1.0]]))


def test_sum_of_stimuli_for_two_named_inputs():
    a = Modulated(torch.ones(2, 3), E.pulse(0.0, 5.0), background="blank", input="left")
    b = Modulated(torch.ones(2, 4), E.pulse(2.0, 5.0), background="blank", input="right")
    s = Sum(a, b)
    v = s(3.0)
    assert set(v) == {"left", "right"} and v["left"].shape == (2, 3) and v["right"].shape == (2, 4)
    assert s.breakpoints == (0.0, 2.0, 5.0, 7.0)
    with pytest.raises(ConfigurationError, match="mix of tensors and dicts"):
        Sum(a, Modulated(torch.ones(2, 3), E.pulse(0.0, 5.0), background="blank"))(1.0)
