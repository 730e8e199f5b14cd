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


def test_divergence_is_recorded_and_bad_delays_raise_before_running(f64):
    """An unstable Euler step is inf (reason in attrs); a dt that cannot represent a delay is
    an error naming the dts, the connection and dts that fit, raised before any solve."""
    net = dn.Network()
    net.add_input("x", shape=(1,))
    net.add_population("r", shape=(1,), tau=1.0, phi="identity")
    net.connect("x", "r")
    net.connect("r", "r", delay=3.0)
    with pytest.raises(dn.DelayError, match=r"dts 2 ms cannot represent every delay \(connection r -> r: "
                                            r"3 ms is not a multiple of dt = 2 ms\); use dts that divide the "
                                            r"delays, e.g. 3, 1.5, 1"):
        dn.convergence(net, torch.ones(1, 1), t_end=6.0, dts=[2.0, 1.0], solvers=[Euler()], grid=2.0,
                       reference=_Exploding())
    ds = dn.convergence(net, torch.ones(1, 1), t_end=6.0, dts=[1.0], solvers=[Euler()])
    assert np.isfinite(ds["max_abs_error"].values).all() and ds.attrs["failures"] == ""
    with pytest.warns(dn.StabilityWarning, match="dt/tau = 3"):
        unstable = dn.convergence(leaky(tau=1.0), torch.ones(1, 3), t_end=300.0, dts=[3.0],
                                  solvers=["euler"], grid=3.0)
    assert np.isinf(unstable["max_abs_error"].values).all() and "euler" in unstable.attrs["failures"]


class _Exploding(dn.solvers.Solver):
    """A 'solver' that fails the test if the study runs anything."""

    adaptive = True

    def solve(self, *a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("convergence ran a solve before checking the dts")


def test_grid_must_fit():
    with pytest.raises(dn.ConfigurationError, match="grid"):
        dn.convergence(leaky(), torch.ones(1, 3), t_end=10.0, dts=[1.0, 0.3])


def test_variables_have_units_and_long_names(study):
    for name in ("max_abs_error", "rel_l2_error", "observed_order", "order", "dt", "tau", "dt_over_tau"):
        assert study[name].attrs["units"] and study[name].attrs["long_name"], name
    assert study["dt"].attrs["units"] == "ms" and study["dt_over_tau"].attrs["units"] == "1"


@pytest.fixture(scope="module")
def labelled():
    """Euler simultaneous vs sequential and RK4 on a delayed loop under a pulse, tolerance 1e-3."""
    from test_order_jumps import loop_network
    from dynode.stimuli import Pulse

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        stim = Pulse(onset=8.0, duration=16.0, value=torch.tensor([1.0, -0.5]))
        return dn.convergence(loop_network(), stim, t_end=48.0, dts=[4.0, 2.0, 1.0, 0.5],
                              solvers={"simultaneous": Euler(), "sequential": Euler(order="sequential"),
                                       "rk4": RK4()}, tolerance=1e-3)
    finally:
        torch.set_default_dtype(old)


def test_labelled_solvers_and_largest_dt_within_tolerance(labelled):
    ds = labelled
    assert list(ds["solver"].values) == ["simultaneous", "sequential", "rk4"]
    assert "sequential: Euler(order='sequential')" in ds.attrs["solvers"]
    # the two Euler variants are different computations
    assert not np.allclose(ds["max_abs_error"].sel(solver="simultaneous"), ds["max_abs_error"].sel(solver="sequential"))
    err = ds["max_abs_error"].sel(solver="rk4").max("population").values  # dts 4, 2, 1, 0.5
    ok = err <= 1e-3
    assert not ok[0] and ok[1:].all(), err  # RK4: 2 ms is the largest dt within 1e-3
    assert float(ds["largest_dt_all"].sel(solver="rk4")) == 2.0
    assert ds["largest_dt_over_tau"].sel(solver="rk4").values.tolist() == [0.4, 0.4]
    assert np.isnan(ds["largest_dt_all"].sel(solver="simultaneous"))  # Euler: never within 1e-3 here
    assert ds["largest_dt"].attrs["units"] == "ms"
    lines = ds.attrs["answer"].splitlines()
    assert lines[2] == "rk4: dt <= 2 ms keeps max |r - r_ref| <= 0.001 (dt/tau = A: 0.4, B: 0.4)"
    assert lines[0].startswith("simultaneous: no dt tested keeps max |r - r_ref| <= 0.001 (down to dt = 0.5 ms)")


def test_plot_names_populations_and_draws_the_tolerance(labelled, tmp_path):
    path = tmp_path / "conv.png"
    fig = dn.plot_convergence(labelled, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["population 'A' (tau = 5 ms)", "population 'B' (tau = 5 ms)"]
    ax = axes[0]
    assert ax.get_xlabel() == "dt / tau" and ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.8", "0.4", "0.2", "0.1"]
    assert ax.get_ylabel() == "max |r - r_ref| (a.u.)"
    assert any(line.get_label() == "tolerance 0.001" and set(line.get_ydata()) == {1e-3} for line in ax.lines)
    assert any(getattr(c, "get_xlabel", lambda: "")() == "dt (ms)" for c in ax.child_axes)
    one = dn.plot_convergence(labelled, population="B")
    assert [a.get_title() for a in one.axes if a.get_title()] == ["population 'B' (tau = 5 ms)"]
    with pytest.raises(dn.ConfigurationError, match=r"population 'C' is not in the study; it has \['A', 'B'\]"):
        dn.plot_convergence(labelled, population="C")


def test_solver_list_errors():
    with pytest.raises(dn.ConfigurationError, match=r"solvers share the labels \['euler'\]; label them"):
        dn.convergence(leaky(), torch.ones(1, 3), t_end=4.0, dts=[1.0], solvers=[Euler(), "euler"])
    with pytest.raises(dn.ConfigurationError, match="Dopri5 chooses its own steps"):
        dn.convergence(leaky(), torch.ones(1, 3), t_end=4.0, dts=[1.0], solvers=[Dopri5()])
    with pytest.raises(dn.ConfigurationError, match="tolerance must be a finite error > 0"):
        dn.convergence(leaky(), torch.ones(1, 3), t_end=4.0, dts=[1.0], tolerance=math.inf)


def test_api_and_cli_share_the_reference():
    from dynode.config import ConvergenceConfig
    from dynode.convergence import _default_reference

    assert ConvergenceConfig().reference.build() == _default_reference() == Dopri5(rtol=1e-8, atol=1e-10)


def test_cli_states_the_largest_dt(tmp_path, capsys):
    from dynode.cli import main

    cfg = tmp_path / "conv.yaml"
    cfg.write_text(f"""
output: {tmp_path / "out"}
model:
  name: dyrcnn
  options: {{depth: 2, width: 0.25, steps: 3, phi: relu}}
data: {{name: generated, n_train: 8, n_test: 8, size: 16}}
stimulus: {{kind: pulse, n_images: 1, onset: 2.0, duration: 4.0}}
convergence:
  dts: [2.0, 1.0]
  solvers: {{simultaneous: {{kind: euler}}, sequential: {{kind: euler, order: sequential}}, rk4: {{kind: rk4}}}}
  t_end: 8.0
  tolerance: 0.5
""")
    assert main(["convergence", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "rk4: dt <= 2 ms keeps max |r - r_ref| <= 0.5" in out
    ds = __import__("xarray").open_dataset(tmp_path / "out" / "convergence.nc")
    assert list(ds["solver"].values) == ["simultaneous", "sequential", "rk4"] and ds.attrs["tolerance"] == 0.5
