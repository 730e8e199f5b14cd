"""Biological timing of dyrcnn (issue 23): the ``timing="cortex"`` preset builds the documented
delays and time constants, the input delay holds the first area exactly at rest until the image
arrives (in training's pulse and in the experiments' stimuli on a blank screen), and bad timing
options are refused by name."""

from __future__ import annotations

import math

import pytest
import torch

import dynode as dn
from dynode.models import zoo
from dynode.stimuli import Modulated, envelopes

AREAS = ("V1", "V2", "V4", "IT")


def _tiny(**options):
    opts = dict(depth=4, width=0.125, input_shape=(1, 8, 8), num_classes=3, bias=False, phi="relu",
                steps=60, dt=2.0)
    return zoo.dyrcnn(**{**opts, **options})


def _first_response(sol) -> dict[str, float]:
    """The first saved time at which each area is not exactly 0 (None: never)."""
    out = {}
    for a in AREAS:
        active = sol.states[a].abs().flatten(1).amax(1) > 0
        out[a] = float(sol.ts[active.nonzero()[0, 0]]) if active.any() else None
    return out


def test_cortex_preset_builds_the_documented_delays_and_taus():
    net = _tiny(timing="cortex", feedback=True)
    t = zoo.CORTICAL_TIMING
    assert zoo.TIMINGS["cortex"] is t
    assert {a: net.populations[a].tau_min() for a in AREAS} == dict(zip(AREAS, t["tau"]))
    delays = {label: d for label, (_, d) in net.delays().items()}
    assert delays["image -> V1"] == t["input_delay"] == 48.0
    assert [delays[k] for k in ("V1 -> V2", "V2 -> V4", "V4 -> IT")] == list(t["feedforward_delay"])
    assert [delays[k] for k in ("V1 -> V4", "V2 -> IT")] == list(t["skip_delay"])
    assert [delays[k] for k in ("V4 -> V1", "IT -> V2")] == list(t["feedback_delay"])
    assert all(delays[f"{a} -> {a}"] == 6.0 for a in AREAS)  # the recurrence is not part of the timing
    # time constants grow up the hierarchy; every delay is a multiple of 4 ms (any step 1, 2, 4)
    assert list(t["tau"]) == sorted(t["tau"]) and t["tau"][0] < t["tau"][-1]
    assert all(d % 4 == 0 for d in delays.values() if d != 6.0)
    # the image is a pulse from 0, so that the delayed read sees a blank screen before it
    assert (net.protocol.stimulus_onset, net.protocol.stimulus_duration) == (0.0, None)  # shown for good


def test_explicit_options_override_the_preset_and_defaults_are_unchanged():
    net = _tiny(timing="cortex", tau=7.0, feedforward_delay=(4.0, 8.0, 2.0))
    assert {net.populations[a].tau_min() for a in AREAS} == {7.0}
    delays = {label: d for label, (_, d) in net.delays().items()}
    assert delays["image -> V1"] == 48.0 and delays["V2 -> V4"] == 8.0 and delays["V1 -> V4"] == 32.0
    plain = _tiny(feedback=True)
    delays = {c.label: c.delay for c in plain.connections}
    assert delays["image -> V1"] == 0.0 and delays["V1 -> V2"] == 0.0 and delays["V1 -> V4"] == 0.0
    assert delays["IT -> V2"] == 30.0 and {plain.populations[a].tau_min() for a in AREAS} == {5.0}
    assert plain.protocol.stimulus_onset is None
    # a skip defaults to the delay into its target, as before
    per = _tiny(feedforward_delay=(2.0, 4.0, 6.0))
    assert {c.label: c.delay for c in per.connections}["V2 -> IT"] == 6.0


def test_reaction_window_follows_from_the_latencies():
    net = _tiny(timing="cortex", readout_at="mean", steps=80)
    t = zoo.CORTICAL_TIMING
    start = t["input_delay"] + sum(t["feedforward_delay"]) + t["tau"][-1]
    assert net.readout.window == (start, 160.0) == (122.0, 160.0)
    with pytest.raises(dn.ConfigurationError, match="reaction window starts at 122 ms.*more steps"):
        _tiny(timing="cortex", readout_at="mean", steps=50)


def test_input_delay_holds_each_area_at_rest_until_the_image_arrives():
    net = _tiny(timing="cortex")
    p = net.protocol
    torch.manual_seed(0)
    x = torch.rand(2, 1, 8, 8)
    stim = dn.stimuli.Pulse(p.stimulus_onset, math.inf, x)
    with torch.no_grad():
        sol = dn.integrate(net, stim, t_end=p.t_end, dt=p.dt, solver="euler")
    # the image reaches V1 at 48, V2 at 60, V4 at 80 and IT at 92 ms; under Euler an area is
    # first nonzero one step (2 ms) after its input is, per area on the way: V1 48 + 2,
    # V2 50 + 12 + 2, V4 50 + 32 + 2 (the skip spans V2 in the same time), IT 64 + 32 + 2
    first = _first_response(sol)
    assert first == {"V1": 50.0, "V2": 64.0, "V4": 84.0, "IT": 98.0}
    # the onset moves by exactly the input delay
    with torch.no_grad():
        late = dn.integrate(_tiny(timing="cortex", input_delay=60.0), stim, t_end=p.t_end, dt=p.dt)
    assert _first_response(late)["V1"] == first["V1"] + 12.0


def test_input_delay_reads_the_blank_screen_before_an_experiment_onset():
    """An experiment run from rest on the blank screen: the delayed image read before the
    onset (and before t0) is the background, so V1 starts exactly input_delay after the onset."""
    net = _tiny(timing="cortex", steps=100)
    torch.manual_seed(1)
    images = torch.rand(2, 1, 8, 8)
    stim = Modulated(images, envelopes.pulse(30.0, 100.0), background="blank")
    with torch.no_grad():
        sol = dn.integrate(net, stim, t0=0.0, t_end=160.0, dt=1.0, solver="euler")
    assert _first_response(sol)["V1"] == 30.0 + 48.0 + 1.0


@pytest.mark.parametrize("options, match", [
    ({"tau": (10.0, 15.0)}, r"tau takes one number \(ms\) or 4 \(one per area"),
    ({"tau": (10.0, 0.0, 20.0, 30.0)}, "tau must be > 0"),
    ({"tau": float("nan")}, "tau must be > 0 and finite"),
    ({"input_delay": -4.0}, "input_delay must be >= 0"),
    ({"input_delay": True}, "input_delay must be >= 0"),
    ({"feedforward_delay": (12.0, 20.0)}, r"feedforward_delay takes one number \(ms\) or 3"),
    ({"feedforward_delay": "10"}, "feedforward_delay"),
    ({"skip_delay": (1.0, 2.0, 3.0)}, r"skip_delay takes one number \(ms\) or 2"),
    ({"feedback_delay": (-1.0, 2.0)}, "feedback_delay must be >= 0"),
    ({"timing": "monkey"}, r"timing='monkey'; known: \['cortex'\]"),
    ({"timing": "cortex", "depth": 2}, "use depth=4"),
])
def test_bad_timing_is_refused_by_name(options, match):
    with pytest.raises(dn.ConfigurationError, match=match):
        _tiny(**options)


def test_a_delay_off_the_step_grid_is_refused_before_the_first_step():
    net = _tiny(timing="cortex")
    with pytest.raises(dn.DynodeError, match="48"):
        dn.integrate(net, torch.rand(1, 1, 8, 8), t_end=20.0, dt=5.0, solver="euler")


def test_the_demo_model_runs_on_cortical_time():
    """The demo's model takes the cortex timing; every delay is a whole number of its training
    step and of its experiments' step, and IT's reaction window lies inside the training run."""
    from dynode.demo import DEMO_MODEL, demo_config

    for cfg in (demo_config(), demo_config(quick=True), demo_config(small=True)):
        net = cfg.model.build(input_shape=(1, 16, 16), num_classes=6)
        p, ex = net.protocol, cfg.experiment
        assert cfg.model.options["timing"] == DEMO_MODEL["timing"] == "cortex"
        for label, (_, d) in net.delays().items():
            assert d % p.dt == 0 and d % ex.dt == 0, label
        t = zoo.CORTICAL_TIMING
        arrival = t["input_delay"] + sum(t["feedforward_delay"])  # the image's first effect in IT
        assert net.readout.at == "mean" and arrival < net.readout.window[0] < net.readout.window[1] == p.t_end


@pytest.mark.slow
def test_quick_demo_has_cortical_latencies(tmp_path):
    """The quick demo (one epoch on 96 images) measured by Groen's definitions: V1 rises to
    half its peak 40-80 ms after onset, later areas later; peaks inside Groen's 50-1000 ms
    window, earlier at full contrast; summation windows widen up the hierarchy; the baseline
    is zero. (The README's table is the full demo's.)"""
    import warnings

    from dynode.compare import run_workflow
    from dynode.demo import demo_config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_workflow(demo_config(quick=True), tmp_path, log=lambda m: None, figures=False)
    s = res["summary"]
    t50 = [s[a]["half_rise_ms"][1.0] for a in AREAS]
    assert 40.0 <= t50[0] <= 80.0 and t50 == sorted(t50) and t50[-1] > t50[0] + 30.0
    for a in AREAS:
        ttp = s[a]["time_to_peak_ms"]
        assert all(v is not None and 50.0 <= v <= 1000.0 for v in ttp.values()), (a, ttp)
        assert ttp[0.0625] > ttp[1.0] + 5.0, (a, ttp)  # the full demo: by 30 ms or more
        assert s[a]["baseline_to_peak"] < 1e-6
    windows = [s[a]["summation_window_ms"] for a in AREAS]
    assert windows == sorted(windows) and windows[-1] > windows[0]
