"""Observation models (dynode.observe) and Record(observe=[...]): BOLD's impulse response and
rest, the Mazzoni LFP proxy with its 6 ms delay on a hand-computable E/I network, electrode
patches, the drive against the hand-computed u, the archive round trip, and the errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import dynode as dn
from dynode import observe as ob
from dynode.errors import ConfigurationError
from dynode.models import SignedConv

W_IN, W_IE, W_EI, D_IE = 2.0, 0.5, 1.0, 2.0  # x -> E, I -| E (delay D_IE ms), E -> I


def ei_net(inhibition: bool = True) -> dn.Network:
    """E (1 unit) driven by the input (weight 2); with ``inhibition`` an inhibitory I, E -> I
    (weight 1, no delay) and I -| E (weight 0.5, delay 2 ms): u_E = 2 x(t) - 0.5 r_I(t - 2)."""
    net = dn.Network()
    net.add_input("x", shape=(1,))
    net.add_population("E", shape=(1,), tau=4.0, phi="relu")
    lin = nn.Linear(1, 1, bias=False)
    lin.weight.data.fill_(W_IN)
    net.connect("x", "E", lin)
    if inhibition:
        net.add_population("I", shape=(1,), tau=2.0, phi="relu")
        net.populations["I"].role = "inhibitory"
        ie, ei = SignedConv(1, 1, None, sign=-1), SignedConv(1, 1, None, sign=1)
        ie.weight.data.fill_(W_IE)
        ei.weight.data.fill_(W_EI)
        net.connect("I", "E", ie, delay=D_IE)
        net.connect("E", "I", ei)
    return net.double()


def run(net, observe, *, t_end=20.0, store=None, solver="euler", **record):
    stim = dn.stimuli.Pulse(5.0, math.inf, {"x": torch.ones(1, 1, dtype=torch.float64)})
    return dn.simulate(net, stim, t_end=t_end, dt=1.0, solver=solver, store=store,
                       record=dn.Record(observe=observe, dtype="float64", **record))


# -- BOLD -----------------------------------------------------------------------------------------
def test_bold_impulse_response_peaks_after_4_to_6_s_with_an_undershoot():
    dt = 50.0
    z = torch.zeros(600, dtype=torch.float64)  # 30 s
    z[1:3] = 1.0  # a 100 ms input at t = 0
    y = ob.bold(z, dt)
    peak = int(y.argmax()) * dt
    assert 4000.0 <= peak <= 6000.0
    assert float(y.max()) > 0
    after = y[int(peak / dt):]
    assert float(after.min()) < -0.03 * float(y.max())  # post-stimulus undershoot
    assert float(y[-1]).__abs__() < 0.1 * float(-after.min())  # back towards rest at 30 s


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bold_rest_is_exact_for_zero_input(dtype):
    y = ob.BOLD()(torch.zeros(300, 3, dtype=dtype), 100.0)  # 30 s
    assert torch.equal(y, torch.zeros_like(y))


def test_bold_is_differentiable_and_linear_for_small_inputs():
    z = torch.zeros(200, dtype=torch.float64)
    z[1:3] = 1e-3
    g = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    y = ob.bold(g * z, 20.0)
    y.sum().backward()
    assert g.grad is not None and g.grad > 0
    y2 = ob.bold(2 * z, 20.0)
    assert torch.allclose(y2, 2 * y.detach(), rtol=1e-2, atol=1e-12)


# -- LFP and electrodes ----------------------------------------------------------------------------
def test_mazzoni_lfp_on_time_courses_is_exact():
    exc = torch.arange(10, dtype=torch.float64).reshape(10, 1, 1)
    inh = -torch.ones(10, 1, 1, dtype=torch.float64)
    lfp = ob.mazzoni_lfp(exc, inh, 2.0)  # delay 6 ms = 3 samples
    want = [0, 0, 0, 0, 1, 2, 3, 4, 5, 6]
    assert lfp[:, 0].tolist() == pytest.approx([w - 1.65 for w in want])
    with pytest.raises(ConfigurationError, match="not a multiple"):
        ob.mazzoni_lfp(exc, inh, 4.0)


def test_electrode_weights_gaussian_patch():
    w = ob.electrode_weights((2, 5, 4), (0.5, 0.3), 0.1, dtype=torch.float64)
    assert w.shape == (2, 5, 4)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(w[0], w[1])
    y = (torch.arange(5, dtype=torch.float64) + 0.5) / 5
    x = (torch.arange(4, dtype=torch.float64) + 0.5) / 4
    g = torch.exp(-((y[:, None] - 0.5) ** 2 + (x[None, :] - 0.3) ** 2) / (2 * 0.1 ** 2))
    assert torch.allclose(w[0], g / (2 * g.sum()), rtol=1e-12)
    assert int(w[0].argmax()) == 2 * 4 + 1  # row 2 (y = 0.5), column 1 (x = 0.375, nearest 0.3)
    tiny = ob.electrode_weights((1, 3, 3), (0.0, 1.0), 1e-6)  # far from every unit: still sums to 1
    assert float(tiny.sum()) == pytest.approx(1.0) and float(tiny[0, 0, 2]) == pytest.approx(1.0)
    for center in [(1.2, 0.5), (0.5, -0.1)]:
        with pytest.raises(ConfigurationError, match="outside the map"):
            ob.Electrode(center, 0.1)
    with pytest.raises(ConfigurationError, match="sigma"):
        ob.Electrode((0.5, 0.5), 0.0)
    with pytest.raises(ConfigurationError, match=r"\(C, H, W\)"):
        ob.electrode_weights((3, 4), (0.5, 0.5), 0.1)


# -- drive and LFP in a recording run ----------------------------------------------------------------
def test_drive_and_lfp_are_the_hand_computed_values():
    res = run(ei_net(), ["rate", "drive", "lfp"])
    e, i = res.tree["E"].to_dataset(), res.tree["I"].to_dataset()
    t = e["time"].values
    r_i = i["rate"].values[:, 0, 0]
    x = (t >= 5.0).astype(float)
    r_i_lag = np.array([r_i[max(k - int(D_IE), 0)] for k in range(len(t))])
    exc, inh = W_IN * x, -W_IE * r_i_lag
    np.testing.assert_allclose(e["drive_exc"].values[:, 0, 0], exc, rtol=0, atol=1e-15)
    np.testing.assert_allclose(e["drive_inh"].values[:, 0, 0], inh, rtol=0, atol=1e-15)
    np.testing.assert_allclose(e["drive"].values[:, 0, 0], exc + inh, rtol=0, atol=1e-15)
    # the drive is the solver's u: Euler's r(t + dt) = r + dt/tau (relu(u) - r)
    r_e = e["rate"].values[:, 0, 0]
    np.testing.assert_allclose(r_e[1:], r_e[:-1] + (np.maximum(exc + inh, 0)[:-1] - r_e[:-1]) / 4.0, atol=1e-15)
    # Mazzoni: |exc(t - 6 ms)| - 1.65 |inh(t)|, exc held at its first value before t0
    exc_lag = np.array([exc[max(k - 6, 0)] for k in range(len(t))])
    np.testing.assert_allclose(e["lfp"].values[:, 0], np.abs(exc_lag) - 1.65 * np.abs(inh), rtol=0, atol=1e-15)
    assert e["lfp"].values[10, 0] == pytest.approx(-1.65 * W_IE * r_i_lag[10])  # t = 10: input not yet seen
    assert e["lfp"].values[11, 0] == pytest.approx(2.0 - 1.65 * W_IE * r_i_lag[11])
    assert e["lfp"].attrs["proxy"] == "mazzoni" and e["lfp"].attrs["units"] == "a.u."
    # I has an E/I split too (E -> I excitatory); its own drive is u_I = r_E(t)
    np.testing.assert_allclose(i["drive"].values[:, 0, 0], W_EI * r_e, atol=1e-15)


def test_broadband_lfp_without_an_ei_split():
    res = run(ei_net(inhibition=False), ["rate", "lfp", "drive"])
    e = res.tree["E"].to_dataset()
    x = (e["time"].values >= 5.0).astype(float)
    np.testing.assert_allclose(e["lfp"].values[:, 0], W_IN * x, atol=1e-15)
    assert e["lfp"].attrs["proxy"] == "broadband"
    assert "drive_exc" not in e  # no E/I split: u only


def test_archive_round_trip_with_units_and_long_names(tmp_path):
    net = dn.Network()
    net.add_input("img", shape=(1, 6, 6))
    net.add_population("V1", shape=(2, 6, 6), tau=5.0, phi="relu")
    net.connect("img", "V1", nn.Conv2d(1, 2, 3, padding=1))
    net.connect("V1", "V1", nn.Conv2d(2, 2, 3, padding=1), delay=2.0)
    torch.manual_seed(0)
    stim = dn.stimuli.Pulse(0.0, 30.0, {"img": torch.rand(3, 1, 6, 6)})
    rec = dn.Record(observe=["rate", "drive", "lfp", "bold"], reduce="mean", every=2.0,
                    electrodes={"V1": ob.Electrode((0.25, 0.75), 0.2)})
    res = dn.simulate(net, stim, t_end=60.0, dt=1.0, solver="rk4", record=rec, store=tmp_path / "a.zarr",
                      chunk_steps=7)
    mem = dn.simulate(net, stim, t_end=60.0, dt=1.0, solver="rk4", record=rec)
    tree = dn.open_archive(tmp_path / "a.zarr")
    v1 = tree["V1"].to_dataset()
    for var, units in [("rate", "a.u."), ("drive", "a.u."), ("lfp", "a.u."), ("bold", "%")]:
        assert v1[var].dims == ("time", "sample")
        assert v1[var].attrs["units"] == units and "V1" in v1[var].attrs["long_name"]
        assert np.isfinite(v1[var].values).all()
        np.testing.assert_array_equal(v1[var].values, mem.tree["V1"].to_dataset()[var].values)
    assert v1["bold"].attrs["param_tau"] == 2.0 and v1["lfp"].attrs["proxy"] == "broadband"
    assert v1["lfp"].attrs["electrode_center_yx"] == [0.25, 0.75]
    assert v1["bold"].values[0].tolist() == [0.0, 0.0, 0.0]  # rest at the first recorded time
    assert (v1["bold"].values[-1] != 0).all()  # moving off rest (60 ms: the balloon model's initial dip)
    dn.archive.verify_archive(tmp_path / "a.zarr")
    # the default archive is unchanged: rate only
    plain = dn.simulate(net, stim, t_end=10.0, dt=1.0, record=dn.Record(reduce="mean"))
    assert list(plain.tree["V1"].to_dataset().data_vars) == ["rate"]


# -- errors before the first step ----------------------------------------------------------------------
@pytest.mark.parametrize("record, match", [
    (dict(observe=["rate", "spikes"]), "unknown observation"),
    (dict(observe=["lfp"]), "must include 'rate'"),
    (dict(observe=["rate", "rate"]), "twice"),
    (dict(observe=["rate"], electrodes={"E": ob.Electrode((0.5, 0.5), 0.1)}), "neither"),
    (dict(observe=["rate", ob.LFP(proxy="mazzoni")]), "excitatory/inhibitory split"),
    (dict(observe=["rate", ob.Drive(parts=True)]), "excitatory/inhibitory split"),
    (dict(observe=["rate", "lfp"], electrodes={"E": ob.Electrode((0.5, 0.5), 0.1)}), r"\(C, H, W\)"),
    # re-evaluated currents (a sequential sweep: not the recorded state) read the recorded states only
    (dict(observe=["rate", "drive"], start=3.0, solver=dn.solvers.Euler(order="sequential")), "must start at t0"),
    (dict(observe=["rate", "lfp"], every=4.0), "not multiples of the record interval"),
])
def test_bad_observations_fail_before_the_first_step(record, match):
    net = ei_net(inhibition=not any(isinstance(o, (ob.LFP, ob.Drive)) for o in record["observe"]))
    calls = []
    for m in net.modules():  # no operator may run: every error comes before the first step
        m.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ConfigurationError, match=match):
        run(net, **record)
    assert not calls


def test_electrode_centre_outside_the_map_and_custom_field_errors():
    with pytest.raises(ConfigurationError, match="outside the map"):
        dn.Record(observe=["rate", "bold"], electrodes={"V1": {"center": (0.5, 1.5), "sigma": 0.1}})
    with pytest.raises(ConfigurationError, match="custom vector field"):
        dn.Record(observe=["rate", "drive"]).plan({"a": (1,)}, field=nn.Module())
    dn.Record(observe=["rate", "drive"]).plan({"a": (1,)})  # without a field: shapes only


def test_record_config_observe_and_electrodes():
    import pydantic

    from dynode.config import RecordConfig

    rec = RecordConfig(observe=["rate", "lfp", "bold"],
                       electrodes={"V1": {"center": [0.5, 0.25], "sigma": 0.1}}).build()
    assert [o.name for o in rec.observe] == ["rate", "lfp", "bold"]
    assert rec.electrodes == {"V1": ob.Electrode((0.5, 0.25), 0.1)}
    assert [o.name for o in RecordConfig().build().observe] == ["rate"]
    with pytest.raises(pydantic.ValidationError, match="must include 'rate'"):
        RecordConfig(observe=["lfp"])
    with pytest.raises(pydantic.ValidationError, match="outside the map"):
        RecordConfig(observe=["rate", "bold"], electrodes={"V1": {"center": [0.5, 2.0], "sigma": 0.1}})
    with pytest.raises(pydantic.ValidationError):
        RecordConfig(observe=["rate", "spikes"])


def test_an_interrupted_run_keeps_its_observations(tmp_path):
    net = ei_net(inhibition=False)  # r_E -> 2 after the onset at 5 ms: over max_abs = 1
    stim = dn.stimuli.Pulse(5.0, math.inf, {"x": torch.ones(1, 1, dtype=torch.float64)})
    with pytest.raises(dn.DivergenceError):
        dn.simulate(net, stim, t_end=200.0, dt=1.0, store=tmp_path / "a.zarr", chunk_steps=4, max_abs=1.0,
                    check_every=5, record=dn.Record(observe=["rate", "lfp", "bold"], dtype="float64"))
    with pytest.warns(dn.archive.IncompleteArchiveWarning):
        e = dn.open_archive(tmp_path / "a.zarr")["E"].to_dataset()
    n = e.sizes["time"]
    assert 4 <= n < 201 and e["lfp"].shape == (n, 1) and e["bold"].shape == (n, 1)
    assert np.isfinite(e["lfp"].values).all() and np.isfinite(e["bold"].values).all()


# -- the solver's own currents (CurrentsCapture) against re-evaluated ones (DriveReader) -------------
def _counted(net) -> list:
    """Counts of calls of E's incoming operators (every evaluation of u_E)."""
    calls = []
    for src in ("x", "I"):
        net.populations["E"].incoming[src].register_forward_hook(lambda *a, s=src: calls.append(s))
    return calls


@pytest.mark.parametrize("solver, noise", [("euler", 0.0), ("heun", 0.0), ("rk4", 0.0), ("euler", 0.05)])
def test_captured_currents_equal_reevaluated_ones_bit_for_bit(monkeypatch, solver, noise):
    import sys

    sim = sys.modules["dynode.simulate"]  # the module (dn.simulate is the function)
    observe = ["rate", "drive", "lfp", "bold"]
    net = ei_net()
    net.populations["E"].noise = noise  # Euler-Maruyama: the recorded (noisy) state is stage 1's
    calls = _counted(net)
    torch.manual_seed(1)
    captured = run(net, observe, solver=solver, every=2.0)
    n_captured = len(calls)
    assert sim.captures_currents(sim.get_solver(solver), net)
    monkeypatch.setattr(sim, "captures_currents", lambda *a: False)
    torch.manual_seed(1)
    reread = run(net, observe, solver=solver, every=2.0)
    stages = {"euler": 1, "heun": 2, "rk4": 4}[solver]
    assert n_captured == 2 * (20 * stages + 1)  # the solver's evaluations + the final time's, nothing more
    assert len(calls) - n_captured == n_captured + 2 * 10  # re-evaluation: one more per recorded time
    for pop in ("E", "I"):
        a, b = captured.tree[pop].to_dataset(), reread.tree[pop].to_dataset()
        assert sorted(a.data_vars) == sorted(b.data_vars)
        for var in a.data_vars:
            np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=f"{pop}/{var}")
    assert "drive_inh" in captured.tree["E"] and "lfp" in captured.tree["I"]
    assert captured.tree["E"]["drive"].values[-1, 0, 0] != 0  # the final time's (extra) evaluation
    # the rates are those of a run that records rates only: capturing does not change the dynamics
    torch.manual_seed(1)
    plain = run(net, ["rate"], solver=solver, every=2.0)
    np.testing.assert_array_equal(plain.tree["E"]["rate"].values, captured.tree["E"]["rate"].values)


def test_captured_currents_need_no_record_grid_for_the_delays():
    """The solver's own evaluation reads its own history: a recording that starts late, or every
    3 ms with a 2 ms delay, records the same values as the full run (which re-evaluation refuses)."""
    full = run(ei_net(), ["rate", "drive", "lfp"]).tree["E"].to_dataset()
    late = run(ei_net(), ["rate", "drive", "lfp"], start=3.0).tree["E"].to_dataset()
    every3 = run(ei_net(), ["rate", "drive", "lfp"], every=3.0, t_end=21.0).tree["E"].to_dataset()
    full21 = run(ei_net(), ["rate", "drive", "lfp"], t_end=21.0).tree["E"].to_dataset()
    for var in ("drive", "drive_exc", "drive_inh"):
        np.testing.assert_array_equal(late[var].values, full[var].values[3:])
        np.testing.assert_array_equal(every3[var].values, full21[var].values[::3])
    np.testing.assert_array_equal(every3["lfp"].values, full21["lfp"].values[::3])  # 6 ms = 2 samples of 3 ms


def test_recorded_bold_is_bold_of_the_recorded_mean_rate():
    e = run(ei_net(), ["rate", "bold"], t_end=40.0, every=2.0).tree["E"].to_dataset()
    z = torch.as_tensor(e["rate"].values[:, :, 0])
    np.testing.assert_allclose(e["bold"].values, ob.bold(z, 2.0).numpy(), rtol=1e-12, atol=1e-18)
    assert e["bold"].values[0, 0] == 0.0 and e["bold"].values[-1, 0] != 0.0
