"""Cortex-like components (dynode.models.normalization / adaptation / ei): each equation on an
analytic case, the phenomena of Groen et al. (2022) on a hand-set single area, and the zoo
options that build them."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

import dynode as dn
from dynode.models.normalization import Divide, Pool, add_normalization, add_pool_population
from dynode.stimuli import Modulated
from dynode.stimuli import envelopes as env


def _solve(net, stimulus, t_end, dt, solver="rk4"):
    with torch.no_grad():
        return dn.integrate(net, stimulus, t_end=t_end, dt=dt, solver=solver)


def _flat_area(tau=10.0, phi="relu", channels=1, **phi_params):
    net = dn.Network()
    net.add_input("x", shape=(channels,))
    net.add_population("A", shape=(channels,), tau=tau, phi=phi, **phi_params)
    net.connect("x", "A")
    return net


# -- the pool ----------------------------------------------------------------------------
def test_pool_measures_activity_of_either_sign():
    r = torch.tensor([[-1.0, 3.0]])
    torch.testing.assert_close(Pool((2,), "channel")(r), torch.tensor([[2.0]]))  # mean |r|, no cancelling
    torch.testing.assert_close(Pool((2,), "unit", magnitude=False)(r), r)  # linear (subtractive adaptation)


@pytest.mark.parametrize("pool, out", [("unit", (4, 3, 3)), ("channel", (1, 3, 3)),
                                       ("space", (4, 1, 1)), ("both", (1, 1, 1))])
def test_pool_operator_is_the_stated_weighted_mean(f64, pool, out):
    r = torch.rand(2, 4, 3, 3)
    p = Pool((4, 3, 3), pool, weight=2.0)
    y = p(r)
    assert y.shape == (2, *out)
    ref = {"unit": 2 * r, "channel": 2 * r.mean(1, keepdim=True), "space": 2 * r.mean((2, 3), keepdim=True),
           "both": 2 * r.mean((1, 2, 3), keepdim=True)}[pool]
    torch.testing.assert_close(y, ref)
    with torch.no_grad():  # weights stay nonnegative whatever the optimizer does to v
        p.weight.fill_(-3.0)
    assert bool((p.weights() >= 0).all())
    w_old = 2.0 if pool in ("unit", "space") else 2.0 / 4
    torch.testing.assert_close(p(r), ref * 3.0 / w_old)


def test_pool_errors():
    with pytest.raises(dn.ConfigurationError, match="unknown pool 'chanel'"):
        Pool((4, 3, 3), "chanel")
    with pytest.raises(dn.ConfigurationError, match="no spatial dims"):
        Pool((4,), "space")
    with pytest.raises(dn.ConfigurationError, match="weight must be finite and >= 0"):
        Pool((4,), "unit", weight=-1.0)


def test_pool_population_relaxes_as_one_minus_exp_after_its_delay(f64):
    """A follows its input exactly one step late (Euler with dt == tau): r_A = c for t >= dt.
    The pool then obeys tau_g dg/dt = -g + c from t = delay + dt on:
    g(t) = c (1 - exp(-(t - delay - dt) / tau_g)), and g = 0 exactly before."""
    dt, tau_g, delay, c = 0.05, 20.0, 4.0, 0.7
    net = _flat_area(tau=dt, channels=3)
    add_pool_population(net, "A", "G", tau=tau_g, delay=delay, pool="channel", weight=1.0,
                        learn_weight=False)
    sol = _solve(net, torch.full((1, 3), c), t_end=80.0, dt=dt, solver="euler")
    ts, g = sol.ts, sol.states["G"][:, 0, 0]
    t_on = delay + dt
    assert float(g[ts <= t_on + 1e-9].abs().max()) == 0.0
    after = ts > t_on
    ref = c * (1 - torch.exp(-(ts[after] - t_on) / tau_g))
    # Euler's global error on a decaying exponential: <= c * dt / (2 tau_g) * (t / tau_g) e^{-t/tau_g} <~ 1e-3
    torch.testing.assert_close(g[after], ref, atol=1e-3, rtol=0)


# -- divisive normalization ---------------------------------------------------------------
@pytest.mark.parametrize("pool, sigma", [("channel", 1.0), ("unit", 0.3)])
def test_normalized_steady_state_in_closed_form(f64, pool, sigma):
    """relu, identity input, constant drive D >= 0: g* = P r*, r* = D / (sigma + g*).
    With a per-unit pool of weight w: w r^2 + sigma r - D = 0. With a channel pool over equal
    drives D: the same with w = 1 (the mean)."""
    D = torch.tensor([[0.2, 1.0, 3.0]]) if pool == "unit" else torch.full((1, 3), 2.0)
    w = 1.5 if pool == "unit" else 1.0
    net = _flat_area(tau=5.0, channels=3)
    g_name = add_normalization(net, "A", tau=20.0, delay=2.0, pool=pool, sigma=sigma, weight=w)
    assert g_name == "A_norm" and isinstance(net.populations["A"].combine, Divide)
    assert float(net.populations["A"].combine.sigma.detach()) == pytest.approx(sigma)
    sol = _solve(net, D, t_end=600.0, dt=0.5)
    r, g = sol.final_state["A"], sol.final_state["A_norm"]
    r_star = (-sigma + torch.sqrt(sigma ** 2 + 4 * w * D)) / (2 * w)
    torch.testing.assert_close(r, r_star, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(g, w * r_star if pool == "unit" else r_star.mean(1, keepdim=True),
                               rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(r, D / (sigma + g), rtol=1e-6, atol=1e-9)


def test_before_the_pool_arrives_the_drive_is_divided_by_sigma(f64):
    net = _flat_area(tau=1.0)
    add_normalization(net, "A", tau=30.0, delay=10.0, sigma=0.5, learn_sigma=False)
    assert "populations.A.combine.s" not in dict(net.named_parameters())
    assert "populations.A.combine.s" in dict(net.named_buffers())
    sol = _solve(net, torch.full((1, 1), 2.0), t_end=10.0, dt=1.0, solver="euler")
    # Euler with dt == tau: r_{n+1} = D / sigma while g is still 0 (it sees r(t - 10) = 0 + ...)
    torch.testing.assert_close(sol.states["A"][1:, 0, 0], torch.full((10,), 4.0))


def test_sigma_and_pool_weights_are_learnt_and_stay_positive(f64):
    net = _flat_area(channels=2)
    add_normalization(net, "A", tau=10.0, delay=1.0)
    names = {n for n, _ in net.named_parameters()}
    assert {"populations.A.combine.s", "populations.A_norm.incoming.A.weight"} <= names
    opt = torch.optim.SGD(net.parameters(), lr=50.0)
    for _ in range(3):
        opt.zero_grad()
        sol = dn.integrate(net, torch.tensor([[1.0, 2.0]]), t_end=20.0, dt=1.0)
        sol.final_state["A"].sum().backward()
        opt.step()
    comb, pool = net.populations["A"].combine, net.populations["A_norm"].incoming["A"]
    assert float(comb.sigma.detach()) > 0 and bool((pool.weights() >= 0).all())
    assert float(comb.sigma.detach()) != pytest.approx(1.0)  # it moved


def test_normalization_wraps_an_existing_combine_and_later_connections_join_the_drive(f64):
    net = _flat_area(tau=5.0)
    net.add_input("y", shape=(1,))
    add_normalization(net, "A", tau=10.0, delay=0.0, sigma=1.0, learn_weight=False, weight=0.0)
    net.connect("y", "A")  # joins D: u = (x + y) / (sigma + 0)
    sol = _solve(net, {"x": torch.full((1, 1), 1.0), "y": torch.full((1, 1), 2.0)}, t_end=200.0, dt=1.0)
    assert float(sol.final_state["A"]) == pytest.approx(3.0, rel=1e-9)


def test_normalization_errors_name_the_fix():
    net = _flat_area()
    with pytest.raises(dn.ConfigurationError, match=r"add_normalization\('B'\): no such population"):
        add_normalization(net, "B")
    with pytest.raises(dn.ConfigurationError, match="sigma .* must be finite and > 0"):
        add_normalization(net, "A", sigma=0.0)
    net = dn.Network()
    net.add_input("x", shape=(4, 8, 8))
    net.add_population("P", shape=(4, 4, 4), tau=5.0, pipeline=["relu", nn.MaxPool2d(2)])
    net.connect("x", "P", nn.Identity())
    with pytest.raises(dn.ConfigurationError, match="a pipeline reshapes them"):
        add_normalization(net, "P")


# -- the phenomena on one hand-set area with normalization ----------------------------------
def _normalized_area():
    net = _flat_area(tau=10.0)
    add_normalization(net, "A", tau=50.0, delay=10.0, sigma=0.1, learn_sigma=False, learn_weight=False)
    return net


def _responses(net, envelope, t_end, dt=1.0):
    sol = _solve(net, Modulated(torch.ones(1, 1), envelope, background="blank"), t_end=t_end, dt=dt)
    return sol.ts, sol.states["A"][:, :, 0]


def test_normalization_gives_a_transient_and_faster_peaks_at_high_contrast(f64):
    net = _normalized_area()
    ts, r = _responses(net, env.pulse(100.0, 500.0, [0.0625, 0.25, 1.0]), t_end=700.0)
    on = (ts >= 100) & (ts < 600)
    peak = r[on].max(0).values
    sustained = r[(ts >= 580) & (ts < 600)].mean(0)
    assert bool((sustained < 0.5 * peak).all())  # transient then sustained
    t_peak = ts[on][r[on].argmax(0)] - 100
    # latency shortens with contrast (about 18, 14, 12 ms on the 1 ms grid)
    assert float(t_peak[0]) > float(t_peak[1]) > float(t_peak[2]) and float(t_peak[0] - t_peak[2]) >= 4.0
    assert float(r[ts < 100].abs().max()) == 0.0  # no input, no bias: zero baseline
    assert float(r[-1].abs().max()) < 1e-3 * float(peak.max())  # back to baseline after offset


def test_normalization_gives_subadditive_temporal_summation(f64):
    net = _normalized_area()
    durations = [17.0, 33.0, 67.0, 133.0, 267.0]
    ts, r = _responses(net, env.pulse(100.0, durations), t_end=800.0)
    R = r.sum(0)
    ratio = R[1:] / (2 * R[:-1])
    assert bool((ratio < 0.9).all()), ratio


def test_normalization_gives_repetition_suppression_that_recovers_with_isi(f64):
    net = _normalized_area()
    isis = [17.0, 67.0, 267.0, 533.0]
    ts, r2 = _responses(net, env.two_pulses(100.0, 133.0, isis), t_end=1200.0)
    _, r1 = _responses(net, env.pulse(100.0, 133.0), t_end=1200.0)
    first = ((ts >= 100) & (ts < 400))
    rec = []
    for j, isi in enumerate(isis):
        on2 = 100.0 + 133.0 + isi
        w = (ts >= on2) & (ts < on2 + 300)
        rec.append(float((r2[w, j] - r1[w, 0]).sum() / r1[first, 0].sum()))
    assert rec[0] < 0.8
    assert all(b > a for a, b in zip(rec, rec[1:])), rec
    assert rec[-1] > 0.95


# -- zoo -----------------------------------------------------------------------------------
def test_dyrcnn_with_normalization_and_no_bias(f64):
    net = dn.models.dyrcnn(depth=4, width=0.25, input_shape=(3, 16, 16), num_classes=4, phi="relu",
                           bias=False, normalization={"tau": 30, "delay": 4})
    for area in ("V1", "V2", "V4", "IT"):
        pop = net.populations[area]
        assert isinstance(pop.combine, Divide) and pop.combine.source == f"{area}_norm"
        assert net.populations[f"{area}_norm"].shape == (1, *pop.shape[1:])
        assert net.populations[f"{area}_norm"].tau == 30.0
        assert net.populations[f"{area}_norm"].delays[area] == 4.0
    assert not any(isinstance(m, nn.Conv2d) and m.bias is not None for m in net.modules())
    sol = _solve(net, torch.zeros(2, 3, 16, 16), t_end=40.0, dt=2.0, solver="euler")
    assert all(float(v.abs().max()) == 0.0 for v in sol.final_state.values())  # blank in, zero out
    sol = _solve(net, torch.rand(2, 3, 16, 16), t_end=40.0, dt=2.0, solver="euler")
    assert float(sol.final_state["IT_norm"].min()) >= 0 and float(sol.final_state["V1_norm"].max()) > 0
    # the published defaults are unchanged
    plain = dn.models.dyrcnn(depth=4, width=0.25, input_shape=(3, 16, 16), num_classes=4)
    assert set(plain.populations) == {"V1", "V2", "V4", "IT"}
    assert plain.populations["V1"].incoming["image"].bias is not None
    assert plain.populations["V2"].incoming["V1"].bias is not None


@pytest.mark.parametrize("option, match", [
    ({"tau": 30, "dela": 4}, r"unknown normalization options \['dela'\]"),
    ("chanel", "unknown pool 'chanel'"),
    (3, "normalization must be None/False"),
    ({"sigma": -1.0}, r"dyrcnn: normalization=.*sigma"),
])
def test_dyrcnn_normalization_option_errors(option, match):
    with pytest.raises(dn.ConfigurationError, match=match):
        dn.models.dyrcnn(depth=2, width=0.25, input_shape=(3, 16, 16), num_classes=4, normalization=option)


# -- combine is part of the population's definition -------------------------------------------
class _Product(dn.models.Combine):
    def forward(self, terms):
        out = None
        for v in terms.values():
            out = v if out is None else out * v
        return out


class _Flatten(dn.models.Combine):
    def forward(self, terms):
        return sum(terms.values()).flatten(1)


def _two_inputs():
    net = dn.Network()
    net.add_input("x", shape=(2,))
    net.add_input("y", shape=(2,))
    net.add_population("A", shape=(2,), tau=1.0, phi="identity")
    net.connect("x", "A")
    net.connect("y", "A")
    return net


def test_set_combine_after_the_plan_is_built_takes_effect(f64):
    net = _two_inputs()
    inputs = {"x": torch.tensor([[2.0, 3.0]]), "y": torch.tensor([[5.0, 7.0]])}
    sol = _solve(net, inputs, t_end=1.0, dt=1.0, solver="euler")  # builds the plan
    torch.testing.assert_close(sol.final_state["A"], torch.tensor([[7.0, 10.0]]))
    net.set_combine("A", _Product())
    sol = _solve(net, inputs, t_end=1.0, dt=1.0, solver="euler")
    torch.testing.assert_close(sol.final_state["A"], torch.tensor([[10.0, 21.0]]))
    net.set_combine("A", None)  # back to the sum
    sol = _solve(net, inputs, t_end=1.0, dt=1.0, solver="euler")
    torch.testing.assert_close(sol.final_state["A"], torch.tensor([[7.0, 10.0]]))


def test_assigning_combine_directly_raises_instead_of_being_ignored():
    net = _two_inputs()
    net.plan()
    with pytest.raises(dn.ConfigurationError, match=r"'A'.*use net.set_combine\(name, combine\)"):
        net.populations["A"].combine = _Product()
    assert net.populations["A"].combine is None


def test_a_custom_combine_is_shape_checked():
    net = _two_inputs()
    with pytest.raises(dn.ShapeError, match=r"set_combine\('A'\): the combine of 'A' maps its inputs .* "
                                            r"to \(2, 1\), but u must have shape \(2,\)"):
        net.set_combine("A", _Expand())
    with pytest.raises(dn.ConfigurationError, match="combine must be an nn.Module"):
        net.set_combine("A", lambda terms: terms["x"])
    with pytest.raises(dn.ConfigurationError, match=r"set_combine\('B'\): no such population"):
        net.set_combine("B", _Product())
    # at add_population: checked when the inputs arrive
    net = dn.Network()
    net.add_input("x", shape=(2, 3, 3))
    net.add_population("A", shape=(2, 3, 3), tau=1.0, combine=_Flatten())
    with pytest.raises(dn.ShapeError, match=r"connection x -> A: the combine of 'A' maps .* to \(18,\)"):
        net.connect("x", "A")


class _Expand(dn.models.Combine):
    def forward(self, terms):
        return sum(terms.values()).unsqueeze(-1)


# -- slow adaptation ----------------------------------------------------------------------------
def _adapting_area(kind, weight=1.0, tau_a=150.0, channels=3):
    net = _flat_area(tau=10.0, channels=channels)
    name = dn.models.add_adaptation(net, "A", kind=kind, tau=tau_a, weight=weight, learn_weight=False)
    assert name == "A_adapt" and net.populations[name].tau == tau_a
    return net


@pytest.mark.parametrize("kind", ["subtractive", "divisive"])
def test_adaptation_steady_state_in_closed_form(f64, kind):
    """relu, constant drive D > 0, per-unit pool of weight w: subtractive r* = D / (1 + w),
    divisive r* = (sqrt(1 + 4 w D) - 1) / (2 w); a* = w r*."""
    w, D = 0.8, torch.tensor([[0.5, 1.0, 4.0]])
    net = _adapting_area(kind, weight=w, tau_a=100.0)
    sol = _solve(net, D, t_end=1600.0, dt=2.0)
    r_star = D / (1 + w) if kind == "subtractive" else (torch.sqrt(1 + 4 * w * D) - 1) / (2 * w)
    torch.testing.assert_close(sol.final_state["A"], r_star, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(sol.final_state["A_adapt"], w * r_star, rtol=1e-6, atol=1e-9)


def test_subtractive_adaptation_is_linear_and_relaxes_on_its_time_constant(f64):
    """Identity Phi, tau -> dt (r = D - a): tau_a da/dt = -a + w (D - a), so
    a(t) = w D / (1 + w) (1 - exp(-(1 + w) t / tau_a)): the slow time constant tau_a / (1 + w)."""
    dt, tau_a, w, D = 0.05, 100.0, 0.5, 2.0
    net = dn.Network()
    net.add_input("x", shape=(1,))
    net.add_population("A", shape=(1,), tau=dt, phi="identity")
    net.connect("x", "A")
    dn.models.add_adaptation(net, "A", kind="subtractive", tau=tau_a, weight=w, learn_weight=False)
    sol = _solve(net, torch.full((1, 1), D), t_end=300.0, dt=dt, solver="euler")
    ts, a = sol.ts, sol.states["A_adapt"][:, 0, 0]
    ref = w * D / (1 + w) * (1 - torch.exp(-(1 + w) * ts / tau_a))
    torch.testing.assert_close(a[ts > 1], ref[ts > 1], atol=2e-3, rtol=0)  # Euler, one-step lag of r


@pytest.mark.parametrize("kind", ["subtractive", "divisive"])
def test_adaptation_gives_transient_summation_and_repetition_suppression(f64, kind):
    net = _adapting_area(kind, weight=2.0, channels=1)
    ts, r = _responses(net, env.pulse(100.0, 500.0, 1.0), t_end=700.0)
    on = (ts >= 100) & (ts < 600)
    peak, sustained = float(r[on].max()), float(r[(ts >= 580) & (ts < 600)].mean())
    assert sustained < 0.8 * peak
    ts, r = _responses(net, env.pulse(100.0, [67.0, 133.0, 267.0]), t_end=1200.0)
    R = r.sum(0)
    assert bool((R[1:] / (2 * R[:-1]) < 0.95).all())
    ts, r2 = _responses(net, env.two_pulses(100.0, 133.0, [17.0, 533.0]), t_end=1500.0)
    _, r1 = _responses(net, env.pulse(100.0, 133.0), t_end=1500.0)
    first = (ts >= 100) & (ts < 400)
    rec = []
    for j, isi in enumerate([17.0, 533.0]):
        on2 = 233.0 + isi
        win = (ts >= on2) & (ts < on2 + 300)
        rec.append(float((r2[win, j] - r1[win, 0]).sum() / r1[first, 0].sum()))
    assert rec[0] < 0.9 and rec[1] > rec[0] + 0.05


def test_adaptation_errors():
    net = _flat_area()
    with pytest.raises(dn.ConfigurationError, match="unknown kind 'subtract'"):
        dn.models.add_adaptation(net, "A", kind="subtract")
    with pytest.raises(dn.ConfigurationError, match=r"unknown adaptation options \['taus'\]"):
        dn.models.dyrcnn(depth=2, width=0.25, input_shape=(3, 16, 16), num_classes=4, adaptation={"taus": 100})


def test_dyrcnn_with_normalization_and_adaptation_stacks_both(f64):
    net = dn.models.dyrcnn(depth=2, width=0.25, input_shape=(3, 16, 16), num_classes=4, phi="relu",
                           bias=False, normalization="space", adaptation={"kind": "subtractive", "tau": 120})
    assert dn.models.normalization.modulators(net, "V1") == [("V1_adapt", "subtractive adaptation"),
                                                            ("V1_norm", "divisive")]
    assert net.populations["V1_norm"].shape == (9, 1, 1)
    sol = _solve(net, torch.rand(1, 3, 16, 16), t_end=20.0, dt=2.0, solver="euler")
    assert all(bool(torch.isfinite(v).all()) for v in sol.final_state.values())


# -- excitatory / inhibitory split ---------------------------------------------------------------
def _set(op, value):
    with torch.no_grad():
        op.weight.fill_(value)


def test_ei_pair_steady_state_in_closed_form(f64):
    """One E and one I unit, relu, no W_II: r_I = w_IE r_E, r_E = D / (1 - w_EE + w_EI w_IE)."""
    w_ee, w_ei, w_ie, D = 0.5, 1.0, 2.0, 3.0
    net = _flat_area(tau=10.0)
    net.connect("A", "A", dn.models.signed_recurrence("full", 1, flat=True), delay=2.0)
    name = dn.models.add_inhibition(net, "A", channels=1, tau=5.0, delay_ie=1.0, inhibitory_recurrence=False)
    pops = net.populations
    _set(pops["A"].incoming["A"], w_ee)
    _set(pops[name].incoming["A"], w_ie)
    _set(pops["A"].incoming[name], -w_ei)  # the sign lives in the operator: |-1| = 1
    assert pops["A"].incoming[name].effective_weight().item() == -w_ei
    assert pops[name].tau == 5.0 and pops["A"].delays[name] == 1.0
    sol = _solve(net, torch.full((1, 1), D), t_end=600.0, dt=0.5)
    r_e = D / (1 - w_ee + w_ei * w_ie)
    assert float(sol.final_state["A"]) == pytest.approx(r_e, rel=1e-8)
    assert float(sol.final_state[name]) == pytest.approx(w_ie * r_e, rel=1e-8)


def test_slower_inhibition_gives_a_transient(f64):
    net = _flat_area(tau=10.0)
    name = dn.models.add_inhibition(net, "A", channels=1, tau=40.0, delay_ie=5.0, inhibitory_recurrence=False)
    _set(net.populations[name].incoming["A"], 2.0)
    _set(net.populations["A"].incoming[name], 1.0)
    ts, r = _responses(net, env.pulse(100.0, 500.0, 1.0), t_end=700.0)
    on = (ts >= 100) & (ts < 600)
    assert float(r[(ts >= 580) & (ts < 600)].mean()) < 0.6 * float(r[on].max())
    assert float(r[-1].max()) < 0.05 * float(r[on].max())


def test_dales_law_holds_after_optimizer_steps():
    torch.manual_seed(0)
    net = dn.models.dyrcnn(depth=2, width=0.25, input_shape=(3, 8, 8), num_classes=3, phi="relu", steps=5,
                           bias=False, ei={"tau": 4.0, "delay_ie": 2.0})
    signs = dn.models.dale_signs(net)
    assert signs == {"V1 -> V1": 1, "IT -> IT": 1, "V1 -> V1_inh": 1, "V1_inh -> V1": -1,
                     "V1_inh -> V1_inh": -1, "IT -> IT_inh": 1, "IT_inh -> IT": -1, "IT_inh -> IT_inh": -1}
    model = dn.models.Classifier(net)
    opt = torch.optim.Adam(net.parameters(), lr=0.3)
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 3, (8,))
    for _ in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    ops = {c.label: c.op for c in net.connections if isinstance(c.op, dn.models.SignedConv)}
    flipped = 0
    for label, op in ops.items():
        w = op.effective_weight()
        assert bool((w >= 0).all()) if signs[label] > 0 else bool((w <= 0).all()), label
        flipped += int((op.weight < 0).sum())
    assert flipped > 0  # the raw parameters did cross zero: the constraint, not luck, kept the signs


def test_signed_operators_scale_linearly_with_their_weight_and_report_their_radius(f64):
    op = dn.models.signed_recurrence("pointwise", 4)
    x = torch.rand(2, 4, 3, 3)
    y = op(x)
    with torch.no_grad():
        op.weight.mul_(0.5)
    torch.testing.assert_close(op(x), 0.5 * y)
    m = op.effective_weight().view(4, 4)
    rho = torch.linalg.eigvals(m).abs().max().item()
    assert dn.models.spectral_radius(op, (4, 3, 3), iters=500) == pytest.approx(rho, rel=1e-3)


def test_ei_errors():
    with pytest.raises(dn.ConfigurationError, match="supports types .* got 'depthpointwise'"):
        dn.models.dyrcnn(depth=2, width=0.25, recurrence_type="depthpointwise", ei=True)
    with pytest.raises(dn.ConfigurationError, match=r"unknown ei options \['tua'\]"):
        dn.models.dyrcnn(depth=2, width=0.25, ei={"tua": 3.0})
    with pytest.raises(dn.ConfigurationError, match="ei takes None/False, True or a dict"):
        dn.models.dyrcnn(depth=2, width=0.25, ei="yes")
    with pytest.raises(dn.ConfigurationError, match="sign must be"):
        dn.models.SignedConv(2, 2, sign=0)
    net = dn.models.dyrcnn(depth=2, width=0.25, recurrence_type="depthpointwise",
                           ei={"dale_recurrence": False})
    assert "V1_inh" in net.populations and not isinstance(net.populations["V1"].incoming["V1"],
                                                         dn.models.SignedConv)


def test_summary_and_stability_report_show_the_loops_as_what_they_are():
    net = dn.models.dyrcnn(depth=2, width=0.25, input_shape=(3, 16, 16), num_classes=4, phi="relu", bias=False,
                           ei={"tau": 8.0, "delay_ie": 2.0}, normalization={"tau": 30, "delay": 4},
                           adaptation={"kind": "subtractive", "tau": 120})
    rows = {r.name: r for r in dn.models.stability_report(net, dt=2.0)}
    assert rows["V1"].loops == (
        "V1 <- V1_adapt (subtractive adaptation, tau 120 ms, delay 0 ms, pool unit)",
        "V1 <- V1_norm (divisive, tau 30 ms, delay 4 ms, pool channel, sigma 1)",
        "V1 <- V1_inh (inhibitory, tau 8 ms, delay 2 ms, 2 channels; V1_inh <- V1 @ 0 ms)")
    assert rows["V1_norm"].loops == () and rows["V1_norm"].spectral_radius is None
    assert net.areas() == ("V1", "IT")
    assert {n: p.role for n, p in net.populations.items() if n.startswith("V1")} == {
        "V1": "area", "V1_inh": "inhibitory", "V1_norm": "normalization", "V1_adapt": "adaptation"}
    # nonnegative weights scaled by fan-in: the inhibitory self loop has rho ~ gain 0.5, not ~sqrt(fan_in)
    assert 0.2 < rows["IT_inh"].spectral_radius <= 0.55
    text = dn.models.summary(net, file=io.StringIO())
    assert "loops:\n  V1 <- V1_adapt (subtractive adaptation, tau 120 ms" in text
    assert "  IT <- IT_norm (divisive, tau 30 ms, delay 4 ms, pool channel, sigma 1)" in text


# -- the stabilized supralinear network (Rubin et al. 2015) ----------------------------------------
def _supralinear_area(normalized: bool):
    net = dn.Network()
    net.add_input("x", shape=(1,))
    net.add_population("A", shape=(1,), tau=10.0, phi="supralinear", n=1.8, k=0.8)
    net.connect("x", "A")
    lin = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.2)
    net.connect("A", "A", lin, delay=2.0)
    if normalized:
        dn.models.add_normalization(net, "A", tau=20.0, delay=2.0, pool="unit")
    return net


def test_normalization_stabilizes_a_supralinear_area_that_otherwise_explodes(f64):
    """k |x + w r|^1.8 with w = 1.2 has no fixed point: without normalization r blows up in
    finite time; divided by (sigma + g) it stays bounded at every contrast and returns to 0."""
    stim = Modulated(torch.ones(1, 1), env.pulse(100.0, 1000.0, [0.25, 1.0, 4.0]), background="blank")
    with pytest.raises(dn.DivergenceError, match="'A'"):
        _solve(_supralinear_area(False), stim, t_end=400.0, dt=2.0, solver="euler")
    sol = _solve(_supralinear_area(True), stim, t_end=3500.0, dt=2.0, solver="euler")
    r = sol.states["A"][:, :, 0]
    assert bool(torch.isfinite(r).all()) and float(r.abs().max()) < 100.0  # transient peak ~21 at contrast 4
    on = (sol.ts >= 100) & (sol.ts < 1100)
    peaks = r[on].max(0).values
    assert bool((peaks[1:] > peaks[:-1]).all()) and float(peaks[0]) > 0.05  # graded with contrast
    assert float(r[-1].abs().max()) < 1e-9  # back to the (zero) baseline after offset


@pytest.mark.slow
def test_supralinear_dyrcnn_with_normalization_trains_and_stays_stable_for_3_5_s():
    """The paper's activation (n 1.8, k 0.8) with delayed normalization, trained like the demo
    (generated task, BPTT over 20 ms), then run for 3.5 s: image on 100-1100 ms, then off."""
    from dynode.stimuli.generated import generated_task
    from dynode.train import Trainer, TrainingConfig

    torch.manual_seed(0)
    task = generated_task(600, 96, size=16, seed=0)
    train = (task.normalize(task.x_train), task.y_train)
    test = (task.normalize(task.x_test), task.y_test)
    net = dn.models.dyrcnn(depth=4, input_shape=task.image_shape, num_classes=task.num_classes, width=0.25,
                           steps=10, phi="supralinear", bias=False, normalization={"tau": 30.0, "delay": 4.0})
    cfg = TrainingConfig(epochs=3, batch_size=32, lr=3e-3, grad_clip=1.0, energy_weight=2e-4, seed=0)
    history = Trainer(net, cfg).fit(train, test).history
    losses = [h["train_loss"] for h in history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    net.eval()
    stim = Modulated(test[0][:4], env.pulse(100.0, 1000.0), background="blank")
    sol = _solve(net, stim, t_end=3500.0, dt=2.0, solver="euler")  # raises DivergenceError if it blows up
    for name in ("V1", "V2", "V4", "IT"):
        r = sol.states[name].flatten(2).abs().amax(2)  # (time, batch)
        on = r[(sol.ts > 100) & (sol.ts <= 1100)]
        assert bool(torch.isfinite(r).all()) and float(on.max()) < 100.0, name
        assert float(on.max()) > 1e-3, name  # it responds
        late_on = r[(sol.ts > 900) & (sol.ts <= 1100)]  # settled, not drifting
        assert float((late_on.max(0).values - late_on.min(0).values).max()) < 0.05 * float(on.max()), name
        assert float(r[sol.ts >= 2000].max()) < 1e-6 * float(on.max()), name  # back to baseline


def test_cordsnet_takes_the_components_and_the_feed_forward_models_reject_them_clearly():
    net = dn.models.cordsnet(width=0.125, input_shape=(3, 16, 16), num_classes=4, bias=False,
                             normalization="channel", adaptation="divisive", ei={"tau": 5.0})
    assert {"A1_norm", "A1_adapt", "A1_inh", "A8_norm"} <= set(net.populations)
    assert net.populations["A1"].bias is None and net.populations["A1"].incoming["image"].bias is None
    assert not isinstance(net.populations["A1"].incoming["A1"], dn.models.SignedConv)
    with pytest.raises(dn.ConfigurationError, match="cordsnet: ei has no dale_recurrence option"):
        dn.models.cordsnet(width=0.125, ei={"dale_recurrence": True})
    with pytest.raises(dn.ConfigurationError, match=r"alexnet_like does not support \['normalization'\]: "
                                                    "it is a feed-forward baseline"):
        dn.models.alexnet_like(normalization={"tau": 30})
    with pytest.raises(dn.ConfigurationError, match=r"cornet_rt does not support \['adaptation', 'bias'\]"):
        dn.models.cornet_rt(adaptation=True, bias=False)
    with pytest.raises(dn.ConfigurationError, match=r"alexnet_like: unknown options \['norm'\]"):
        dn.models.alexnet_like(norm=True)
    assert "conv1" in dn.models.alexnet_like(bias=True, normalization=None, ei=False).populations


def test_connections_added_after_normalization_join_the_drive_with_the_automatic_adapter():
    net = dn.Network()
    net.add_input("x", shape=(3, 8, 8))
    net.add_population("A", shape=(4, 8, 8), tau=5.0)
    net.add_population("B", shape=(6, 4, 4), tau=5.0)
    net.connect("x", "A", nn.Conv2d(3, 4, 3, padding=1))
    add_normalization(net, "A", pool="channel")
    net.connect("B", "A", delay=2.0)  # feedback into a normalized area: resize + 1x1 projection
    assert isinstance(net.populations["A"].incoming["B"], dn.models.Adapter)
    net.add_input("y", shape=(1, 8, 8))
    with pytest.raises(dn.ShapeError, match=r"connection y -> A: the operator maps \(1, 8, 8\) to \(1, 8, 8\), "
                                            r"but 'A' has shape \(4, 8, 8\)"):
        net.connect("y", "A", nn.Identity())  # would otherwise broadcast silently into the drive


def test_pool_neighborhood_is_a_local_spatial_average(f64):
    r = torch.zeros(1, 2, 5, 5)
    r[0, 0, 2, 2] = 9.0  # one active unit in channel 0
    p = Pool((2, 5, 5), "channel", weight=2.0, neighborhood=3)  # w_c = 1: the channel sum
    y = p(r)[0, 0].detach()
    assert float(y[2, 2]) == pytest.approx(1.0) and float(y[1, 1]) == pytest.approx(1.0)  # 9 / 9
    assert float(y[0, 0]) == 0.0 and float(y.sum()) == pytest.approx(9.0)  # a 3x3 surround, no leak
    edge = torch.ones(1, 2, 5, 5)
    torch.testing.assert_close(p(edge), torch.full((1, 1, 5, 5), 2.0))  # padding left out of the mean
    with pytest.raises(dn.ConfigurationError, match="neighborhood averages a .* pool='unit' or 'channel'"):
        Pool((2, 5, 5), "space", neighborhood=3)
    with pytest.raises(dn.ConfigurationError, match="neighborhood must be an odd int"):
        Pool((2, 5, 5), "channel", neighborhood=2)
