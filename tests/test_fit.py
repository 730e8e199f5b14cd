"""dn.fit (issue 24 items 3-4): parameter recovery from model data (a) and from Groen's DN
model equations (b), exact resume, divergence, restarts, bad input before any computation, and
the config / command-line path. Small settings (short epochs, a few conditions, float64);
the full 30-condition fit is benchmarks/bench_fit.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import dynode as dn
import importlib

F = importlib.import_module("dynode.fit")  # the package: `dn.fit` (and `import dynode.fit as F`) is the function
from dynode.fit import problem as fit_problem  # where the fit calls integrate
from dynode.fit.conditions import _merge, _protocol
from dynode.fit.engine import _Fitter
from dynode.fit.params import _resolve
from dynode.cli import build_parser
from dynode.analysis.dn import DN_START, dn_model, pulse_envelope
from dynode.errors import CheckpointError, ConfigurationError
from dynode.models import add_normalization
from dynode.observe import LFP
from dynode.recordings import make_recordings

ONSET = 20.0


def _template(t_stop: float, step: float = 2.0, onset: float = ONSET, contrasts=(0.25, 0.5, 1.0),
              durations=(17.0, 67.0), isis=()):
    """Recordings of the layout (values ignored) for the given Groen-like conditions."""
    conds = ([dict(experiment="contrast", contrast=c, duration=100.0, isi=0.0, onset=onset) for c in contrasts]
             + [dict(experiment="duration", contrast=1.0, duration=d, isi=0.0, onset=onset) for d in durations]
             + [dict(experiment="repetition", contrast=1.0, duration=50.0, isi=i, onset=onset) for i in isis])
    t = np.arange(0.0, t_stop, step)
    return make_recordings({"V1": np.zeros((len(conds), t.size)), "V2": np.zeros((len(conds), t.size))}, t, conds,
                           units="a.u.")


def _chain(tau1=10.0, tau2=20.0, delay=12.0, weight=2.0):
    """x -> V1 (normalised: pool tau 40 ms, delay 4 ms, strength ``weight``) -(delay)-> V2."""
    net = dn.Network()
    net.add_input("x", (1,))
    net.add_population("V1", (1,), tau=tau1, learn_tau=True, tau_bounds=(2.0, 50.0))
    net.add_population("V2", (1,), tau=tau2, learn_tau=True, tau_bounds=(4.0, 80.0))
    net.connect("x", "V1")
    add_normalization(net, "V1", tau=40.0, delay=4.0, pool="unit", weight=weight, learn_sigma=False, sigma=1.0)
    net.connect("V1", "V2", delay=delay, learn_delay=True, delay_bounds=(2.0, 40.0))
    return net.to(torch.float64)


TRUTH = dict(tau1=10.0, tau2=20.0, delay=12.0, weight=2.0)


@pytest.fixture(scope="module")
def chain_data():
    return F.simulate_recordings(_chain(**TRUTH), _template(150.0))


# -- (a) recovery of a dynode model's time constants, delay and normalisation -----------------
def test_recovers_time_constants_delay_and_normalisation(chain_data):
    net = _chain(tau1=6.0, tau2=30.0, delay=18.0, weight=1.0)  # another starting point
    res = F.fit(net, chain_data, params=["tau", "delay", "weight:V1->V1_norm"], steps=15, progress=False)
    p = res.params
    assert p["tau:V1"] == pytest.approx(TRUTH["tau1"], rel=0.10)
    assert p["tau:V2"] == pytest.approx(TRUTH["tau2"], rel=0.10)
    assert abs(p["delay:V1->V2"] - TRUTH["delay"]) <= 1.0  # one step (dt = 1 ms)
    assert p["weight:V1->V1_norm"] == pytest.approx(TRUTH["weight"], rel=0.10)
    assert min(res.r2.values()) >= 0.95
    assert res.units["tau:V1"] == "ms" and res.status == "converged"  # loss below 1e-12
    # the best values are in the model now, and the prediction is the data's layout
    assert net.populations["V1"].tau_min() == pytest.approx(p["tau:V1"])
    assert res.prediction["V2"].shape == chain_data["V2"].shape
    assert "tau:V1" in res.summary() and "R^2" in res.summary()


# -- (b) Groen's DN model equations fitted by a dynode network --------------------------------
def _dn_recordings():
    """dn_model with Groen's start values at 512 Hz on a subset of Groen's conditions (epoch
    -100 to 360 ms around the onset)."""
    t = np.arange(-100.0, 360.0, 1000.0 / 512.0)
    conds = ([dict(experiment="contrast", contrast=c, duration=500.0, isi=0.0, onset=0.0) for c in (0.125, 1.0)]
             + [dict(experiment="duration", contrast=1.0, duration=d, isi=0.0, onset=0.0) for d in (33.0, 133.0)]
             + [dict(experiment="repetition", contrast=1.0, duration=133.0, isi=67.0, onset=0.0)])
    stim = np.stack([pulse_envelope(t, contrast=c["contrast"], duration=c["duration"],
                                    isi=c["isi"] if c["experiment"] == "repetition" else None) for c in conds])
    return make_recordings({"V1": dn_model(stim, t, DN_START).numpy()}, t, conds, units="a.u.")


def test_dn_model_data_are_fitted_by_a_dynode_network():
    ds = _dn_recordings()
    net = F.dn_network(["V1"], tau1=7.0, shift=50.0, tau2=110.0, sigma=0.25)  # not the DN values
    res = F.fit(net, ds, params=["tau", "delay", "sigma", "gain", "offset"], steps=4, progress=False)
    assert 1 - res.history[0][0] < 0.9  # R^2 at the start (gain and offset by least squares)
    assert res.r2["V1"] >= 0.9, res.summary()


# -- checkpoints, resume, restarts, divergence --------------------------------------------------
def _tiny(loop: bool = False):
    """x -> V1 -(5 ms, learnt)-> V2 (a recurrent V2 -> V2 weight, 0 at the start, with ``loop``)."""
    net = dn.Network()
    net.add_input("x", (1,))
    net.add_population("V1", (1,), tau=6.0, learn_tau=True, tau_bounds=(2.0, 40.0))
    net.add_population("V2", (1,), tau=6.0, learn_tau=True, tau_bounds=(2.0, 40.0))
    net.connect("x", "V1")
    net.connect("V1", "V2", nn.Linear(1, 1, bias=False), delay=5.0, learn_delay=True, delay_bounds=(2.0, 20.0))
    if loop:
        net.connect("V2", "V2", nn.Linear(1, 1, bias=False), delay=1.0)
    with torch.no_grad():
        net.populations["V2"].incoming["V1"].weight.fill_(1.0)
        if loop:
            net.populations["V2"].incoming["V2"].weight.fill_(0.0)
    return net.to(torch.float64)


@pytest.fixture(scope="module")
def tiny_data():
    net = _tiny()
    with torch.no_grad():
        net.populations["V1"].learnt_tau.raw.fill_(0.7)
        net.populations["V2"].learnt_delays["V1"].raw.fill_(0.5)
    return F.simulate_recordings(net, _template(60.0, contrasts=(0.5, 1.0), durations=(17.0,)))


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_resume_continues_exactly(tiny_data, tmp_path, monkeypatch, optimizer):
    kw = dict(params=["tau", "delay:V1->V2", "gain"], optimizer=optimizer, steps=4, restarts=2, progress=False,
              tol=1e-12)
    full = F.fit(_tiny(), tiny_data, **kw)
    calls = {"n": 0}
    step = _Fitter._step

    def interrupted(self, opt):
        calls["n"] += 1
        if calls["n"] == 7:  # restart 1, iteration 3
            raise KeyboardInterrupt
        return step(self, opt)

    monkeypatch.setattr(_Fitter, "_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        F.fit(_tiny(), tiny_data, checkpoint_dir=tmp_path, **kw)
    monkeypatch.setattr(_Fitter, "_step", step)
    with pytest.raises(ConfigurationError, match="resume"):  # an existing checkpoint is not overwritten silently
        F.fit(_tiny(), tiny_data, checkpoint_dir=tmp_path, **kw)
    again = F.fit(_tiny(), tiny_data, checkpoint_dir=tmp_path, resume=True, **kw)
    assert again.history == full.history
    assert again.params == full.params
    assert len(full.spread["tau:V1"]["values"]) == 2 and full.spread["tau:V1"]["sd"] >= 0
    with pytest.raises(CheckpointError, match="lr"):  # a checkpoint of another fit is refused, naming why
        F.fit(_tiny(), tiny_data, checkpoint_dir=tmp_path, resume=True, **{**kw, "lr": 0.5})


def test_a_diverging_fit_stops_with_its_last_good_state_saved(tmp_path):
    truth = _tiny(loop=True)
    with torch.no_grad():
        truth.populations["V2"].incoming["V2"].weight.fill_(0.5)  # data with a positive loop: the fit raises it
    tiny_data = F.simulate_recordings(truth, _template(60.0, contrasts=(1.0,), durations=()))
    net = _tiny(loop=True)
    with pytest.warns(F.FitDivergenceWarning, match="iteration"):  # the loop's gain jumps to ~100: blow-up
        res = F.fit(net, tiny_data, params=["weight:V2->V2", "tau:V2"], optimizer="adam", lr=100.0, steps=20,
                    checkpoint_dir=tmp_path, progress=False)
    assert res.status == "diverged" and "last good state" in res.message
    assert all(math.isfinite(v) for v in res.history[0])
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["status"] == "diverged"
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    # the last good state: the start values
    assert float(net.populations["V2"].incoming["V2"].weight.detach()) == pytest.approx(0.0)
    with pytest.raises(ConfigurationError, match="diverged"):
        F.fit(_tiny(loop=True), tiny_data, params=["weight:V2->V2", "tau:V2"], optimizer="adam", lr=100.0,
              steps=20, checkpoint_dir=tmp_path, resume=True, progress=False)
    start = _tiny(loop=True)
    with torch.no_grad():
        start.populations["V2"].incoming["V2"].weight.fill_(100.0)  # diverges at its start values
    with pytest.warns(F.FitDivergenceWarning, match="no iteration finished"):
        res = F.fit(start, tiny_data, params=["tau:V2"], steps=5, progress=False)
    assert res.status == "diverged" and res.prediction is None and res.iterations == 0


# -- bad input: clear errors before anything is simulated ---------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(params=["tau:V3"]), "no population 'V3'"),
    (dict(params=["speed:V1"]), "unknown kind"),
    (dict(params=["delay:V2->V1"]), "no connection"),
    (dict(params=["delay:x->V1"]), "fixed"),
    (dict(params=["tau:V1_norm"]), "fixed"),
    (dict(params=["sigma:V1"]), "semi-saturation"),
    (dict(params=["gain:V7"]), "not a fitted area"),
    (dict(params=["tau"], areas={"V1": "V9"}), "no area"),
    (dict(params=["tau"], experiments=["repetition"]), "repetition"),
    (dict(params=["tau"], experiments=["flicker"]), "unknown"),
    (dict(params=["tau"], observe="lfp"), "learnt delays"),
    (dict(params=["tau"], observe=LFP(proxy="mazzoni")), "excitatory/inhibitory split"),
    (dict(params=["tau"], solver="dopri5"), "fixed-step"),
    (dict(params=[]), "non-empty"),
])
def test_bad_input_is_refused_before_any_computation(chain_data, monkeypatch, kwargs, match):
    monkeypatch.setattr(fit_problem, "integrate", lambda *a, **k: pytest.fail("simulated before refusing"))
    with pytest.raises(ConfigurationError, match=match):
        F.fit(_chain(), chain_data, progress=False, **kwargs)


def test_recordings_without_a_model_area_or_with_nan_are_refused(chain_data, monkeypatch):
    monkeypatch.setattr(fit_problem, "integrate", lambda *a, **k: pytest.fail("simulated before refusing"))
    other = chain_data.rename({"V1": "LO1", "V2": "TO"})
    with pytest.raises(ConfigurationError, match="areas"):
        F.fit(_chain(), other, params=["tau"], progress=False)
    bad = chain_data.copy(deep=True)
    bad["V1"][0, 3] = np.nan
    with pytest.raises(ConfigurationError, match="NaN"):
        F.fit(_chain(), bad, params=["tau"], progress=False)


# -- config and command line ----------------------------------------------------------------------
def test_fit_config_runs_and_writes_its_outputs(tiny_data, tmp_path, capsys, monkeypatch):
    from dynode.spec import network_spec, save_spec

    monkeypatch.chdir(tmp_path)  # relative paths are from the working directory
    save_spec(network_spec(_tiny()), tmp_path / "model.yaml")
    tiny_data.to_netcdf(tmp_path / "rec.nc", engine="scipy")
    (tmp_path / "fit.yaml").write_text(
        "model: {spec: model.yaml}\nrecordings: rec.nc\n"
        "fit: {params: [tau, gain], steps: 2, log_every: 1}\n")
    args = build_parser().parse_args(["fit", str(tmp_path / "fit.yaml"), "--out", str(tmp_path / "out")])
    assert F.fit_command(args) == 0
    out = capsys.readouterr().out
    assert "iteration 1/2" in out and "R^2" in out
    saved = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert set(saved["params"]) == {"tau:V1", "tau:V2", "gain:V1", "gain:V2"}
    assert (tmp_path / "out" / "fit.png").stat().st_size > 10_000
    assert (tmp_path / "out" / "prediction.nc").is_file()
    (tmp_path / "typo.yaml").write_text("model: {spec: model.yaml}\nrecordings: rec.nc\n"
                                        "fit: {params: [tau], stpes: 3}\n")
    with pytest.raises(ConfigurationError, match="stpes"):
        F.FitConfig.load(tmp_path / "typo.yaml")


def test_example_fit_config_is_valid():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[1] / "examples" / "configs").glob("fit_*.yaml")):
        cfg = F.FitConfig.load(path)
        assert cfg.fit.params


def test_bold_observation_is_dynode_observe_bold_of_the_mean_rate():
    """observe="bold": dynode.observe.bold of the area's mean rate on the solver's grid, read at
    the recorded times (here every other grid point)."""
    from dynode.observe import bold

    net = _tiny()
    template = _template(60.0, contrasts=(1.0,), durations=())
    got = F.simulate_recordings(net, template, observe="bold")
    with torch.no_grad():
        rate = dn.integrate(net, _merge([_protocol(template, "contrast", np.array([0]), 0.0, 58.0,
                                                   torch.ones(1, 1, dtype=torch.float64), "blank", None)]),
                            t_end=58.0, dt=1.0).states["V2"][:, :, 0]
        want = bold(rate, 1.0)[::2, 0]
    assert np.allclose(got["V2"].values[0], want.numpy(), rtol=1e-10, atol=1e-14)
    assert float(want.abs().max()) > 0


def test_parameter_names_expand_to_what_the_model_has():
    from dynode.models import add_adaptation

    net = _chain()
    add_adaptation(net, "V2", tau=100.0, weight=0.5)
    names = lambda ps: [p.name for p in _resolve(net, ps, ["V1", "V2"])[0]]  # noqa: E731
    assert names(["norm:V1"]) == ["weight:V1->V1_norm"]  # sigma fixed here (learn_sigma=False)
    assert names(["adapt:V2"]) == ["weight:V2->V2_adapt"]
    assert names(["tau", "delay"]) == ["tau:V1", "tau:V2", "delay:V1->V2"]
    assert names(["tau:V1", "tau"]) == ["tau:V1", "tau:V2"]  # each once
    assert _resolve(net, ["gain", "offset:V2"], ["V1", "V2"])[1:] == (["V1", "V2"], ["V2"])
    weights = _resolve(net, ["weights"], ["V1"])[0]
    assert sum(t.numel() for p in weights for t in p.tensors) == sum(p.numel() for p in net.parameters())
    with pytest.raises(ConfigurationError, match="no learnable parameter of kind 'sigma'"):
        _resolve(net, ["sigma"], ["V1"])


def test_drive_and_lfp_observations_come_from_dynode_observe():
    """observe="drive": the mean synaptic drive u of the area (dynode.observe's reader on the
    saved grid); here u_V2(t) = 2 r_V1(t - 4 ms). "lfp" without an E/I split: the broadband
    proxy sum |op_c(.)| = |u| here. A learnt delay into the observed area is refused first."""
    def build(tau):
        net = dn.Network()
        net.add_input("x", (1,))
        net.add_population("V1", (1,), tau=tau, learn_tau=True, tau_bounds=(2.0, 20.0))
        net.add_population("V2", (1,), tau=5.0)
        net.connect("x", "V1")
        net.connect("V1", "V2", nn.Linear(1, 1, bias=False), delay=4.0)
        with torch.no_grad():
            net.populations["V2"].incoming["V1"].weight.fill_(2.0)
        return net.to(torch.float64)

    net = build(5.0)
    template = _template(60.0, contrasts=(0.5, 1.0), durations=())
    rate = F.simulate_recordings(net, template)["V1"].values
    drive = F.simulate_recordings(net, template, observe="drive")["V2"].values
    assert np.allclose(drive[:, 2:], 2 * rate[:, :-2], rtol=1e-10, atol=1e-12)  # 4 ms = 2 samples
    lfp = F.simulate_recordings(net, template, observe="lfp")["V2"].values
    assert np.allclose(lfp, np.abs(drive), rtol=1e-10, atol=1e-12)
    data = F.simulate_recordings(net, template, observe="drive")
    res = F.fit(build(8.0), data, params=["tau:V1"], areas=["V2"], observe="drive", steps=3, progress=False)
    assert abs(res.params["tau:V1"] - 5.0) < 0.5 and res.r2["V2"] > 0.999  # the gradient flows through u
    with pytest.raises(ConfigurationError, match="learnt delays"):
        F.fit(_tiny(), data, params=["tau"], observe="drive", progress=False)
