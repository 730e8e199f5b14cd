"""The dt/tau study: observed orders, dataset layout, failures and the plot helper."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import dynode as dn
from dynode.solvers import Dopri5, Euler, RK4
from fields import leaky


def smooth_net() -> dn.Network:
    """Two tanh populations, feed-forward plus a zero-delay loop: a smooth ODE."""
    torch.manual_seed(0)
    net = dn.Network()
    net.add_input("x", shape=(4,))
    net.add_population("A", shape=(4,), tau=5.0, phi="tanh")
    net.add_population("B", shape=(4,), tau=8.0, phi="tanh")
    net.connect("x", "A", nn.Linear(4, 4))
    net.connect("A", "B", nn.Linear(4, 4))
    net.connect("B", "A", nn.Linear(4, 4))
    return net


@pytest.fixture(scope="module")
def study():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        net = smooth_net()
        return dn.convergence(net, torch.ones(2, 4), t_end=20.0, dts=[1.0, 0.5, 0.25, 0.125],
                              solvers=["euler", RK4()], reference=Dopri5(rtol=1e-11, atol=1e-13))
    finally:
        torch.set_default_dtype(old)


def test_observed_orders(study):
    order = study["order"]
    assert order.sel(solver="euler").values == pytest.approx([1.0, 1.0], abs=0.15)
    assert order.sel(solver="rk4").values == pytest.approx([4.0, 4.0], abs=0.3)
    obs = study["observed_order"].sel(solver="rk4").values
    assert np.isnan(obs[0]).all() and np.all(np.abs(obs[1:] - 4.0) < 0.4)
    e = study["max_abs_error"]
    assert (e.sel(solver="rk4") < e.sel(solver="euler")).all()
    assert float(e.sel(solver="euler", dt=1.0).max()) > 1e-3  # errors are far above the reference


def test_dataset_layout(study):
    assert study["max_abs_error"].dims == ("solver", "dt", "population")
    assert list(study["solver"].values) == ["euler", "rk4"]
    assert list(study["population"].values) == ["A", "B"]
    assert study["dt"].values.tolist() == [1.0, 0.5, 0.25, 0.125]
    assert study["dt_over_tau"].sel(dt=0.5, population="B") == pytest.approx(0.5 / 8.0)
    assert study["tau"].values.tolist() == [5.0, 8.0]
    assert (study["rel_l2_error"] > 0).all() and (study["rel_l2_error"] < study["max_abs_error"] * 10).all()
    assert study.attrs["grid_ms"] == 1.0 and study.attrs["failures"] == ""


def test_plot_writes_png(study, tmp_path):
    path = tmp_path / "conv.png"
    fig = dn.plot_convergence(study, path, population="A")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_yscale() == "log"
    with pytest.raises(dn.ConfigurationError, match="metric"):
        dn.plot_convergence(study, metric="l1")


def test_failures_are_recorded_not_raised(f64):
    """A dt that does not fit the delay is NaN; an unstable Euler step is inf."""
    net = dn.Network()
    net.add_input("x", shape=(1,))
    net.add_population("r", shape=(1,), tau=1.0, phi="identity")
    net.connect("x", "r")
    net.connect("r", "r", delay=3.0)
    ds = dn.convergence(net, torch.ones(1, 1), t_end=6.0, dts=[2.0, 1.0], solvers=[Euler()], grid=2.0)
    assert math.isnan(ds["max_abs_error"].sel(dt=2.0).values.item()) and "delay" in ds.attrs["failures"]
    assert np.isfinite(ds["max_abs_error"].sel(dt=1.0).values.item())
    with pytest.warns(dn.StabilityWarning, match="dt/tau = 3"):
        unstable = dn.convergence(leaky(tau=1.0), torch.ones(1, 3), t_end=300.0, dts=[3.0],
                                  solvers=["euler"], grid=3.0)
    assert np.isinf(unstable["max_abs_error"].values).all() and "euler" in unstable.attrs["failures"]


def test_grid_must_fit():
    with pytest.raises(dn.ConfigurationError, match="grid"):
        dn.convergence(leaky(), torch.ones(1, 3), t_end=10.0, dts=[1.0, 0.3])
