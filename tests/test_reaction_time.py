"""Reaction times (issue 25 item 3): the accumulator readout (dynode.models.decision), the
reaction-time experiment and its analysis, and the speed-accuracy loss. Tiny networks: an
input of two 'pixels', a population that follows it, a readout that compares them."""

import math
import warnings

import numpy as np
import pytest
import torch

import dynode as dn
from dynode.analysis import analyze_reaction_times, is_reaction_time_archive, plot_reaction_times, trends
from dynode.errors import ConfigurationError, MissingConditionsError, UndefinedMetricWarning
from dynode.experiments import groen2022_experiments, reaction_time_experiment
from dynode.models import add_accumulator, decide, race
from dynode.models.losses import decision_loss


def tiny(gain=4.0, dtype=torch.float32, tau=5.0):
    """x (2,) -> h (2,), identity, tau 5 ms; readout z = gain [[1, -1], [-1, 1]] h: class 0 when
    pixel 0 is the brighter one."""
    net = dn.Network()
    net.add_input("x", shape=(2,))
    net.add_population("h", shape=(2,), tau=tau, phi="identity")
    net.connect("x", "h")
    ro = dn.models.Readout("h", (2,), 2)
    with torch.no_grad():
        ro.linear.weight.copy_(gain * torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
        ro.linear.bias.zero_()
    net.set_readout(ro)
    return net.to(dtype)


IMAGES = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # class 0, class 1; mean luminance 0.5 each
LABELS = torch.tensor([0, 1])


def test_constant_evidence_crosses_the_bound_at_the_analytic_time():
    """relu evidence e (readout weights 0, bias e): A(t) = (e / leak)(1 - exp(-leak t / tau_a)),
    at B when T = -(tau_a / leak) ln(1 - leak B / e); the class of the larger evidence decides."""
    net = tiny(dtype=torch.float64)
    with torch.no_grad():
        net.readout.linear.weight.zero_()
        net.readout.linear.bias.copy_(torch.tensor([0.5, 0.2], dtype=torch.float64))
    add_accumulator(net, tau=50.0, leak=0.2, evidence="relu")
    assert net.populations["decision"].role == "decision" and net.areas() == ("h",)
    d = decide(net, torch.zeros(3, 2, dtype=torch.float64), bound=1.0, t_end=300.0, dt=2.0, solver="rk4")
    T = -(50.0 / 0.2) * math.log(1 - 0.2 * 1.0 / 0.5)
    assert torch.allclose(d.rt, torch.full((3,), T, dtype=torch.float64), atol=1e-5)
    assert d.choice.tolist() == [0, 0, 0]
    assert torch.allclose(d.state.max(-1).values, torch.ones(3, dtype=torch.float64), atol=1e-6)  # held at B
    # a bound beyond the asymptote e / leak = 2.5 is never reached: NaN, not a number
    with torch.no_grad():
        r = race(net, torch.zeros(1, 2, dtype=torch.float64), bounds=[1.0, 3.0], t_end=150.0, dt=2.0, solver="rk4")
    assert abs(float(r.rt[0, 0]) - T) < 1e-5 and math.isnan(float(r.rt[1, 0])) and int(r.choice[1, 0]) == -1


def test_rt_falls_and_accuracy_rises_with_contrast_and_the_bound_trades_speed_for_accuracy(tmp_path):
    net = tiny()
    reaction_time_experiment(net, IMAGES, LABELS, tmp_path / "rt.zarr", dt=2.0, contrasts=[0.05, 0.2, 1.0],
                             noises=[0.0, 0.15], bounds=[0.2, 1.5], trials=40, deadline=200.0, tau=50.0,
                             leak=0.05, settle_max=None, seed=3)
    assert "decision" not in net.populations  # the backbone is not changed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # the noiseless skew (no spread): flagged
        res = analyze_reaction_times(tmp_path / "rt.zarr")
    t = res.table
    noisy = t.sel(noise=0.15)
    for b in (0.2, 1.5):  # faster and more accurate at higher contrast
        rt, acc = noisy.sel(bound=b)["median_rt"].values, noisy.sel(bound=b)["accuracy"].values
        assert rt[-1] < rt[0] and acc[-1] > acc[0] + 0.1, (rt, acc)
    assert np.all(np.diff(noisy.sel(bound=1.5)["median_rt"].values) < 0)
    # a higher bound: slower and more accurate (at the lowest contrast, where errors happen)
    low = noisy.sel(contrast=0.05)
    assert low.sel(bound=1.5)["median_rt"] > low.sel(bound=0.2)["median_rt"]
    assert low.sel(bound=1.5)["accuracy"] > low.sel(bound=0.2)["accuracy"] + 0.1
    # the noise makes reaction times vary, right-skewed; without it every trial is alike
    assert np.median(noisy["skew"].values) > 1.0, noisy["skew"].values  # (q90 - q50) / (q50 - q10)
    assert np.isnan(t.sel(noise=0.0)["skew"].values).all() and any("skew" in k for k in res.flags)
    tr = trends(res)
    assert tr["rt_vs_contrast"]["noise=0.15 bound=1.5"] == -1.0
    assert tr["rt_vs_bound"]["noise=0.15 contrast=0.05"] is None  # two bounds: no rank correlation
    assert plot_reaction_times(res, tmp_path / "rt.png").stat().st_size > 10_000


def test_archive_round_trip_and_undecided_conditions_are_flagged(tmp_path):
    net = tiny()
    path = tmp_path / "rt.zarr"
    ds = reaction_time_experiment(net, IMAGES, LABELS, path, dt=1.0, contrasts=[0.0, 1.0], noises=[0.0],
                                  bounds=[0.5, 30.0], trials=2, deadline=60.0, tau=50.0, leak=0.05, settle_max=None)
    assert is_reaction_time_archive(path) and not is_reaction_time_archive(tmp_path)
    back = dn.analysis.reaction_time._open(path)
    for v in ("rt", "choice"):
        np.testing.assert_array_equal(back[v].values, ds[v].values)
    assert back.attrs["deadline_ms"] == 60.0 and back.attrs["evidence"] == "softmax"
    with pytest.warns(UndefinedMetricWarning, match="no decision before the deadline"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "(?s).*skew: no spread", UndefinedMetricWarning)  # noiseless: flagged
        res = analyze_reaction_times(path)
    never = res.table.sel(bound=30.0)
    assert np.isnan(never["median_rt"].values).all() and np.isnan(never["accuracy"].values).all()
    assert (never["p_decided"].values == 0).all()
    summary = res.summary()
    assert summary["conditions"][1]["median_rt"] == {0.0: None, 1.0: None}
    # an existing archive needs overwrite; something else is never deleted
    with pytest.raises(ConfigurationError, match="already exists"):
        reaction_time_experiment(net, IMAGES, LABELS, path, dt=1.0, noises=[0.0], bounds=[0.5], deadline=60.0)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("keep")
    with pytest.raises(ConfigurationError, match="not a reaction-time archive"):
        reaction_time_experiment(net, IMAGES, LABELS, tmp_path / "other", dt=1.0, noises=[0.0], bounds=[0.5],
                                 deadline=60.0, overwrite=True, settle_max=None)
    with pytest.raises(MissingConditionsError):
        analyze_reaction_times(ds.drop_vars("label"))
    # the Groen analysis does not take it
    with pytest.raises(ConfigurationError, match="not analysed by the Groen metrics"):
        dn.analysis.analyze_courses({"reaction_time": ds}, {})


def test_a_censored_median_is_not_the_median_of_the_decided_trials():
    """Five trials, three undecided: the median lies after the deadline (unknown), q10 and q30
    are the decided trials'."""
    import xarray as xr

    rt = np.array([[[100.0, 120.0, np.nan, np.nan, np.nan]]])
    ds = xr.Dataset({"rt": (("noise", "bound", "sample"), rt),
                     "choice": (("noise", "bound", "sample"), np.array([[[0, 0, -1, -1, -1]]]))},
                    coords={"noise": [0.1], "bound": [1.0], "contrast": ("sample", [1.0] * 5),
                            "label": ("sample", [0] * 5), "image": ("sample", range(5)), "trial": ("sample", [0] * 5)},
                    attrs={"kind": "reaction_time", "num_classes": 2, "deadline_ms": 200.0})
    with pytest.warns(UndefinedMetricWarning, match="3 of 5 trials undecided"):
        res = analyze_reaction_times(ds)
    q = res.table["rt_quantile"].values[0, 0, 0]
    assert q[0] == 100.0 and q[1] == 120.0 and np.isnan(q[2:]).all()
    cell = res.table.isel(noise=0, bound=0, contrast=0)
    assert math.isnan(float(cell["median_rt"])) and float(cell["accuracy"]) == 1.0 and float(cell["p_decided"]) == 0.4


def test_the_speed_accuracy_loss_trades_speed_for_accuracy_through_a_learnt_bound():
    """decision_loss = CE(A(T), y) + c T with a learnt bound B: its gradient (through the event
    time T, implicit function theorem, and A(T)'s dependence on T) matches finite differences;
    a few SGD steps without a time cost raise the bound (slower, lower cross-entropy), with
    c = 0.02 per ms lower it (the mean RT falls)."""
    net = tiny(gain=1.0, dtype=torch.float64)
    add_accumulator(net, tau=30.0, leak=0.05)
    x = (0.5 + 0.3 * (IMAGES - 0.5)).double()

    def loss_at(b, cost):
        d = decide(net, x, bound=b, t_end=300.0, dt=0.5, solver="rk4", save_at=[300.0])
        return decision_loss(d.state, LABELS, d.times, cost_per_ms=cost, deadline=300.0), d

    B = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    loss, _ = loss_at(B, 0.02)
    (g,) = torch.autograd.grad(loss, B)
    h = 1e-4
    with torch.no_grad():
        fd = (loss_at(1.0 + h, 0.02)[0] - loss_at(1.0 - h, 0.02)[0]) / (2 * h)
    assert abs(float(g) - float(fd)) < 1e-6 * max(1.0, abs(float(fd)))
    for p in net.parameters():
        p.requires_grad_(False)
    ends = {}
    for cost in (0.0, 0.02):
        B = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.SGD([B], lr=0.2)
        rts, ces = [], []
        for _ in range(3):
            loss, d = loss_at(B, cost)
            rts.append(float(d.rt.mean()))
            ces.append(float(loss.detach()) - cost * rts[-1])
            opt.zero_grad()
            loss.backward()
            opt.step()
        ends[cost] = (float(B.detach()), rts, ces)
    bound, rts, ces = ends[0.0]
    assert bound > 1.05 and rts[-1] > rts[0] and ces[-1] < ces[0]  # accuracy first: slower, surer
    bound, rts, ces = ends[0.02]
    assert bound < 0.6 and rts[-1] < rts[0] - 10.0  # a cost per ms: faster


def test_bad_input_is_refused_before_anything_runs(tmp_path):
    net = tiny()
    with pytest.raises(ConfigurationError, match="bound must be a finite number > 0"):
        add_accumulator(net)
        decide(net, IMAGES, bound=0.0, t_end=10.0, dt=1.0)
    with pytest.raises(ConfigurationError, match="bound must be"):
        race(net, IMAGES, bounds=[1.0, -1.0], t_end=10.0, dt=1.0)
    bare = tiny()
    for kwargs, match in (({"leak": 0.0}, "leak"), ({"tau": -1.0}, "tau"), ({"noise": math.nan}, "noise"),
                          ({"evidence": "max"}, "evidence"), ({"name": "h"}, "already")):
        with pytest.raises(ConfigurationError, match=match):
            add_accumulator(bare, **kwargs)
        assert "decision" not in bare.populations
    no_readout = dn.Network()
    no_readout.add_input("x", shape=(2,))
    no_readout.add_population("h", shape=(2,), tau=5.0)
    no_readout.connect("x", "h")
    with pytest.raises(ConfigurationError, match="readout"):
        add_accumulator(no_readout)
    with pytest.raises(ConfigurationError, match="no accumulator"):
        decide(bare, IMAGES, bound=1.0, t_end=10.0, dt=1.0)
    common = dict(dt=1.0, deadline=20.0, settle_max=None)
    for kwargs, match in (({"noises": [0.1], "solver": "rk4"}, "integrates noise"),
                          ({"bounds": [0.0]}, "bounds must be"), ({"noises": [0.1, 0.1]}, "repeats"),
                          ({"trials": 0}, "trials"), ({"dt": 3.0}, "whole number of steps"),
                          ({"contrasts": [-0.5]}, "contrasts must be")):
        with pytest.raises(ConfigurationError, match=match):
            reaction_time_experiment(tiny(), IMAGES, LABELS, tmp_path / "x.zarr", **{**common, **kwargs})
    with pytest.raises(ConfigurationError, match="one integer class per image"):
        reaction_time_experiment(tiny(), IMAGES, torch.tensor([0.0, 1.0]), None, **common)
    with pytest.raises(ConfigurationError, match="classes of the readout"):
        reaction_time_experiment(tiny(), IMAGES, torch.tensor([0, 2]), None, **common)
    assert not (tmp_path / "x.zarr").exists()
    with pytest.raises(ConfigurationError, match="not a time-course experiment"):
        groen2022_experiments(tiny(), IMAGES, tmp_path, dt=1.0, kinds=["reaction_time"])
    with pytest.raises(ConfigurationError, match="cost_per_ms"):
        decision_loss(torch.zeros(2, 2), LABELS, torch.zeros(2), cost_per_ms=-1.0, deadline=10.0)


def test_the_run_config_runs_the_reaction_time_kind_only_when_asked():
    from dynode.config import ExperimentConfig
    from dynode.experiments import TIME_COURSE_KINDS

    assert ExperimentConfig().protocols == list(TIME_COURSE_KINDS) and "reaction_time" not in TIME_COURSE_KINDS
    cfg = ExperimentConfig(protocols=["contrast", "reaction_time"], reaction_time={"bounds": [1.0], "trials": 2})
    assert cfg.reaction_time.bounds == [1.0]
    assert [p.name for p in cfg.paths("out")] == ["groen2022-contrast.zarr", "speeded-reaction_time.zarr"]
    with pytest.raises(ValueError, match="not in experiment.protocols"):
        ExperimentConfig(reaction_time={"trials": 2})
    with pytest.raises(ValueError):
        ExperimentConfig(protocols=["reaction_time"], reaction_time={"bounds": [0.0]})


def test_a_terminal_decision_equals_the_race_at_its_bound_on_one_noise_path():
    """decide (terminal event: a sample's state held from its decision) and race (every
    accumulator's crossing, no termination) see the same Brownian path per sample (seed), so
    they give the same reaction times and choices."""
    net = tiny()
    add_accumulator(net, tau=30.0, leak=0.05, noise=0.2)
    x = (0.5 + 0.1 * (IMAGES - 0.5)).repeat(3, 1)
    with torch.no_grad():
        d = decide(net, x, bound=0.6, t_end=120.0, dt=1.0, seed=5, save_at=[120.0])
        r = race(net, x, bounds=[0.6], t_end=120.0, dt=1.0, seed=5)
    assert torch.isfinite(d.rt).all() and d.rt.std() > 1.0  # the noise makes them vary
    torch.testing.assert_close(d.rt, r.rt[0], rtol=0, atol=1e-4)
    assert torch.equal(d.choice, r.choice[0])
