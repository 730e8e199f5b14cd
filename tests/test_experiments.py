"""Experiments: settling on the background, Groen epochs, archive attributes."""

import json
import math

import pytest
import torch

import dynode as dn
from dynode.errors import BaselineDriftWarning, ConfigurationError
from dynode.experiments import groen2022_experiments, settle


def leaky(tau=50.0, delay=4.0, gain=0.5):
    """tau dr/dt = -r + x + gain * r(t - delay): steady state r* = x / (1 - gain)."""
    net = dn.Network()
    net.add_input("x", shape=(2,))
    net.add_population("A", shape=(2,), tau=tau, phi="identity")
    net.connect("x", "A", torch.nn.Identity())
    rec = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        rec.weight.copy_(gain * torch.eye(2))
    net.connect("A", "A", rec, delay=delay)
    return net.double()


def test_settle_reaches_the_analytic_steady_state_and_stops_when_steady():
    x = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    s = settle(leaky(), x, dt=1.0, rtol=1e-4, atol=1e-9)
    assert s.steady and s.time < 3000.0 and s.time % 100.0 == 0.0
    torch.testing.assert_close(s.state["A"], x / 0.5, rtol=1e-3, atol=0)
    # the effective time constant is tau / (1 - gain) = 100 ms: 1e-4 relative change per
    # 100 ms is reached after about ln(1e4 (e - 1)) ~ 10 windows, not after one
    assert s.time >= 800.0
    assert s.drift["A"] <= 1e-4 * s.level["A"] + 1e-9


def test_settle_warns_with_the_measured_drift_when_not_steady():
    x = torch.ones(1, 2, dtype=torch.float64)
    with pytest.warns(BaselineDriftWarning, match=r"within 200 ms: population 'A' still changes by .* % of its level"):
        s = settle(leaky(), x, dt=1.0, max_time=200.0)
    assert not s.steady and s.time == 200.0
    attrs = json.loads(json.dumps(s.attrs()))
    assert attrs["settle_steady"] is False and attrs["settle_drift"]["A"] > 0


def test_settle_rejects_a_window_that_is_not_whole_steps():
    with pytest.raises(ConfigurationError, match="whole number of steps"):
        settle(leaky(), torch.ones(1, 2, dtype=torch.float64), dt=0.3, window=100.0)
    with pytest.raises(ConfigurationError, match="max_time must be a positive number"):
        settle(leaky(), torch.ones(1, 2, dtype=torch.float64), dt=1.0, max_time=math.inf)


def slow_net():
    """A conv area with a slow (tau 200 ms) recurrent loop and a bias: its rest state is far
    from the zero initial state, so an unsettled baseline drifts."""
    torch.manual_seed(0)
    net = dn.Network()
    net.add_input("image", shape=(3, 8, 8))
    net.add_population("V1", shape=(4, 4, 4), tau=200.0, phi="relu", bias=True)
    net.connect("image", "V1", torch.nn.Conv2d(3, 4, 3, stride=2, padding=1))
    with torch.no_grad():
        net.populations["V1"].bias.fill_(1.0)
    return net


def test_groen_experiments_start_settled_with_a_flat_baseline_and_run_to_1200_ms(tmp_path):
    images = torch.rand(1, 3, 8, 8)
    net = slow_net()
    paths = groen2022_experiments(net, images, tmp_path, dt=2.0, kinds=["contrast"])
    tree = dn.open_archive(paths["contrast"])
    assert tree.attrs["settle_steady"] is True and tree.attrs["settle_ms"] >= 1000.0
    t = tree["time"].values
    assert t[-1] >= 100.0 + 1200.0 - 2.0          # onset 100 ms, epoch to 1.2 s after it
    v1 = tree["V1"]["rate"].values                 # (time, sample) means
    base = v1[(t >= 0.0) & (t < 100.0)]
    peak = abs(v1).max()
    assert abs(base.max(0) - base.min(0)).max() < 1e-3 * peak

    # without settling the same baseline drifts by a large fraction of the peak
    paths = groen2022_experiments(net, images, tmp_path / "raw", dt=2.0, kinds=["contrast"], settle_max=None)
    tree = dn.open_archive(paths["contrast"])
    v1 = tree["V1"]["rate"].values
    base = v1[(t >= 0.0) & (t < 100.0)]
    assert abs(base.max(0) - base.min(0)).max() > 0.1 * abs(v1).max()
    assert "settle_ms" not in tree.attrs


def test_mean_background_is_each_images_mean_luminance():
    images = torch.rand(2, 3, 8, 8)
    p = dn.stimuli.groen2022("contrast", images, background="mean")
    blank = p(0.0)
    torch.testing.assert_close(blank, images.mean(dim=(2, 3), keepdim=True).expand_as(images).repeat(5, 1, 1, 1))
    # lower contrast keeps the mean luminance
    torch.testing.assert_close(p(150.0).mean(dim=(2, 3)), blank.mean(dim=(2, 3)))


def test_recovery_after_offset_of_a_leaky_area_is_analytic():
    # tau dr/dt = -r + x: after the offset r decays as exp(-t / tau) from its value at the offset
    net = dn.Network()
    net.add_input("image", shape=(3, 8, 8))
    net.add_population("V1", shape=(4, 4, 4), tau=20.0, phi="relu")
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(0.05)
    net.connect("image", "V1", conv)
    net = net.double()
    res = dn.experiments.recovery_after_offset(net, torch.ones(1, 3, 8, 8, dtype=torch.float64), dt=1.0,
                                               onset=100.0, duration=200.0, t_end=600.0, tail=50.0,
                                               background="blank")  # the default, "mean", is this image
    v1 = res["V1"]
    # peak at the offset (300 ms); the tail's largest deviation is at 550 ms, 250 Euler steps of
    # decay later: (1 - dt / tau)^250
    assert v1["final"] == pytest.approx(v1["peak"] * (1.0 - 1.0 / 20.0) ** 250, rel=1e-6)
    assert v1["final_to_peak"] < 1e-4
    with pytest.raises(ConfigurationError, match="leaves no 50.0 ms after the offset"):
        dn.experiments.recovery_after_offset(net, torch.ones(1, 3, 8, 8, dtype=torch.float64), dt=1.0,
                                             onset=100.0, duration=500.0, t_end=620.0, tail=50.0)
