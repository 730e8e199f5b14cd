"""Safe by default (issue 20), network side: building a network, its components and ensembles
either does what was asked or raises a :class:`dynode.DynodeError` naming what to change --
before the network changes (a failed call leaves it exactly as it was, so the corrected call
then succeeds), before a large allocation, and never by dropping an option or running an
ensemble member with another member's configuration.
"""

from __future__ import annotations

import importlib
import math
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import dynode as dn
from dynode.activations import get_activation
from dynode.errors import ConfigurationError, DynodeError
from dynode.models import add_adaptation, add_inhibition, add_normalization, ensemble

SWEEP = settings(max_examples=40, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
NAN, INF = math.nan, math.inf


def structure(net: dn.Network) -> tuple:
    """Everything building can change: inputs, populations (shape, role, the very phi and
    combine modules, incoming operators and delays), connections, state_dict keys and plan."""
    plan = tuple((p.name, tuple((t.src, id(t.op), t.read, t.delay, t.skip_initial) for t in p.terms),
                  id(p.combine), id(p.bias), id(p.phi)) for p in net.plan())
    pops = tuple((n, p.shape, p.u_shape, p.role, id(p.phi), id(p.combine),
                  tuple((s, id(op)) for s, op in p.incoming.items()), tuple(p.delays.items()))
                 for n, p in net.populations.items())
    conns = tuple((c.src, c.dst, c.delay, id(c.op), c.skip_initial) for c in net.connections)
    return tuple(net.input_shapes().items()), pops, conns, tuple(net.state_dict()), plan


def conv_net() -> dn.Network:
    net = dn.Network()
    net.add_input("x", shape=(2, 4, 4))
    net.add_population("V1", shape=(4, 4, 4), tau=5.0, phi="relu")
    net.connect("x", "V1", nn.Conv2d(2, 4, 3, padding=1))
    net.connect("V1", "V1", nn.Conv2d(4, 4, 3, padding=1), delay=2.0)
    return net


def flat_net() -> dn.Network:
    net = dn.Network()
    net.add_input("x", shape=(3,))
    net.add_population("r", shape=(4,), tau=5.0, phi="relu")
    net.connect("x", "r", nn.Linear(3, 4))
    return net


def refused_unchanged(net: dn.Network, call, match: str | None = None) -> DynodeError:
    """``call()`` raises a DynodeError (matching ``match``) and ``net`` is as it was."""
    before = structure(net)
    with pytest.raises(DynodeError, match=match) as info:
        call()
    assert structure(net) == before, f"the network changed before refusing: {info.value}"
    return info.value


# -- 1. no option is dropped ---------------------------------------------------------------------
@pytest.mark.parametrize("phi, params, takes", [
    ("identity", {"slope": 0.5, "learn_rate": True}, r"takes no parameters"),  # (noise= is add_population's own)
    ("tanh", {"slope": 0.5}, r"takes no parameters"),
    ("sigmoid", {"gain": 2.0}, r"takes no parameters"),
    ("relu", {"inplace": True}, r"takes no parameters; inplace: an in-place Phi would overwrite u"),
    ("softplus", {"n": 2.0}, r"takes only \['beta', 'threshold'\]"),
    ("supralinear", {"beta": 2.0}, r"takes only \['n', 'k'\]"),
])
def test_an_activation_given_parameters_it_does_not_take_is_refused(phi, params, takes):
    net = flat_net()
    err = refused_unchanged(net, lambda: net.add_population("p", (4,), tau=5.0, phi=phi, **params),
                            match=rf"population 'p': activation '{phi}' does not take")
    assert str(sorted(params)) in str(err) and re.search(takes, str(err)), str(err)
    with pytest.raises(ConfigurationError, match="does not take"):  # the pair form, as in pipelines
        get_activation((phi, params))
    refused_unchanged(net, lambda: net.add_population("p", (4,), tau=5.0, pipeline=["sum", (phi, params)]),
                      match=rf"pipeline stage 0: activation '{phi}' does not take")


@pytest.mark.parametrize("stage", [torch.ones(3), nn.ReLU, ("relu", 3), None])
def test_a_pipeline_stage_that_is_not_a_stage_is_refused(stage):
    net = flat_net()
    refused_unchanged(net, lambda: net.add_population("p", (4,), tau=5.0, pipeline=[stage]),
                      match="population 'p': pipeline stage 0")


def test_the_parameters_an_activation_takes_still_reach_it():
    net = flat_net()
    net.add_population("p", (4,), tau=5.0, phi="softplus", beta=20.0)
    net.add_population("q", (4,), tau=5.0, pipeline=["sum", ("supralinear", {"n": 2.0, "k": 0.5})])
    assert net.populations["p"].phi.beta == 20.0
    assert (net.populations["q"].phi.n, net.populations["q"].phi.k) == (2.0, 0.5)


@pytest.mark.parametrize("phi, params, match", [
    ("supralinear", {"n": NAN}, "finite n > 0"),
    ("rectified_power", {"k": "1"}, "finite n > 0 and k > 0, got k='1'"),
    ("softplus", {"beta": 0.0}, "finite beta > 0"),
    ("softplus", {"threshold": INF}, "finite threshold"),
    (nn.ReLU, {}, "the class ReLU, not an activation; pass an instance"),
    (torch.tanh, {"x": 1}, r"parameters \['x'\] given with a callable"),
    (nn.Tanh(), {"x": 1}, r"parameters \['x'\] given with a module \(Tanh\)"),
    (nn.ReLU(inplace=True), {}, "works in place"),
])
def test_activation_values_and_forms_that_cannot_work_are_refused(phi, params, match):
    net = flat_net()
    refused_unchanged(net, lambda: net.add_population("p", (4,), tau=5.0, phi=phi, **params), match=match)


def test_a_tau_that_would_be_silently_frozen_is_refused():
    net = flat_net()
    tau = nn.Parameter(torch.full((4,), 5.0))
    refused_unchanged(net, lambda: net.add_population("p", (4,), tau=tau), match="tau requires a gradient")


def test_a_kernel_size_that_a_flat_population_would_ignore_is_refused():
    net = flat_net()
    refused_unchanged(net, lambda: add_inhibition(net, "r", kernel_size=5), match="kernel_size=5 does not apply")
    assert add_inhibition(net, "r") == "r_inh"


@pytest.mark.parametrize("kwargs, match", [
    ({"channels": 2, "ratio": 0.5}, "give channels or ratio, not both"),
    ({"inhibitory_recurrence": False, "delay_ii": 2.0}, "inhibitory_recurrence=False leaves out"),
])
def test_inhibition_options_that_nothing_would_read_are_refused(kwargs, match):
    net = conv_net()
    refused_unchanged(net, lambda: add_inhibition(net, "V1", **kwargs), match=match)


def test_skip_initial_must_be_a_bool():
    net = flat_net()
    refused_unchanged(net, lambda: net.connect("r", "r", delay=1.0, skip_initial="no"), match="skip_initial")


# -- 2. components check everything before they change the network -------------------------------
COMPONENT_CASES = [
    (add_normalization, "V1", {"sigma": 0.0}, "sigma"),
    (add_normalization, "V1", {"delay": -1}, "delay must be finite and >= 0"),
    (add_normalization, "V1", {"tau": 0.0}, "tau must be finite and > 0"),
    (add_normalization, "V1", {"pool": "rows"}, "unknown pool 'rows'"),
    (add_normalization, "V1", {"weight": -1.0}, "pool weight"),
    (add_normalization, "V1", {"neighborhood": 2}, "neighborhood must be an odd int"),
    (add_normalization, "V1", {"learn_sigma": "no"}, "learn_sigma must be True or False"),
    (add_normalization, "V1", {"name": "a b"}, "Python identifiers"),
    (add_normalization, "V1", {"name": "x"}, "already declared in this network; pass name="),
    (add_adaptation, "V1", {"kind": "multiplicative"}, "unknown kind"),
    (add_adaptation, "V1", {"tau": NAN}, "tau must be finite"),
    (add_adaptation, "V1", {"delay": -1.0}, "delay must be finite"),
    (add_adaptation, "V1", {"learn_weight": 1}, "learn_weight must be True or False"),
    (add_inhibition, "V1", {"channels": 2.5}, "channels must be an int >= 1"),
    (add_inhibition, "V1", {"ratio": 0.0}, "ratio"),
    (add_inhibition, "V1", {"gain": -1.0}, r"gain must be finite and >= 0"),
    (add_normalization, "V1", {"sigma": "1"}, r"sigma .*must be finite and > 0 \(a number\), got '1'"),
    (add_normalization, "V1", {"weight": "w"}, r"pool weight must be finite and >= 0 \(a number\), got 'w'"),
    (add_inhibition, "V1", {"phi": "rleu"}, "unknown activation 'rleu'"),
    (add_inhibition, "V1", {"delay_ii": -1.0}, "delay_ii: delay must be finite"),
    (add_inhibition, "V1", {"kernel_size": 4}, "kernel_size must be an odd int"),
    (add_inhibition, "V1", {"tau": -1.0}, "tau must be finite and > 0"),
    (add_inhibition, "V1", {"inhibitory_recurrence": "yes"}, "inhibitory_recurrence must be True or False"),
]


@pytest.mark.parametrize("add, area, bad, match", COMPONENT_CASES,
                         ids=[f"{a.__name__}-{sorted(b)[0]}" for a, _, b, _ in COMPONENT_CASES])
def test_a_refused_component_leaves_the_network_as_it_was_and_the_corrected_call_works(add, area, bad, match):
    net = conv_net()
    err = refused_unchanged(net, lambda: add(net, area, **bad), match=match)
    assert area in str(err), f"the error does not name the area: {err}"
    name = add(net, area)  # the corrected call: no 'already declared'
    assert name in net.populations
    dn.integrate(net, torch.ones(2, 4, 4), t_end=4.0, dt=1.0)


@pytest.mark.parametrize("add", [add_normalization, add_adaptation, add_inhibition])
def test_a_failure_midway_is_rolled_back(add, monkeypatch):
    """Whatever fails after the checks (here the last step, connecting back to the area), the
    network is put back: no pool population, no connection, the area's old combine and plan."""
    net = conv_net()
    real = dn.Network.connect

    def connect(self, src, dst, *args, **kwargs):
        if dst == "V1" and src != "V1":
            raise dn.ShapeError("injected failure")
        return real(self, src, dst, *args, **kwargs)

    monkeypatch.setattr(dn.Network, "connect", connect)
    refused_unchanged(net, lambda: add(net, "V1"), match="injected failure")
    monkeypatch.undo()
    add(net, "V1")


def test_atomic_puts_back_inputs_populations_connections_combines_and_the_plan():
    net = conv_net()
    before = structure(net)
    with pytest.raises(RuntimeError, match="stop"):
        with net.atomic():
            net.add_input("y", (4,))
            net.add_population("V2", (4, 4, 4), tau=3.0, bias="unit")
            net.connect("V1", "V2", delay=1.0)
            net.connect("V2", "V1", delay=1.0)
            net.set_combine("V1", dn.models.Subtract("V2"))
            raise RuntimeError("stop")
    assert structure(net) == before
    net.add_population("V2", (4, 4, 4), tau=3.0)  # the names are free again
    net.connect("V2", "V1", delay=1.0)


# -- 3. ensembles refuse members whose non-stacked modules differ ----------------------------------
def member(phi, seed: int = 0, op=None) -> dn.Network:
    torch.manual_seed(seed)
    net = dn.Network()
    net.add_input("x", (4,))
    net.add_population("r", (4,), tau=5.0 + seed, phi=phi, bias="unit")
    net.connect("x", "r", nn.Linear(4, 4) if op is None else op)
    net.connect("r", "r", nn.Linear(4, 4, bias=False), delay=1.0)
    return net


@pytest.mark.parametrize("a, b, key", [
    (nn.Softplus(beta=1), nn.Softplus(beta=20), "beta"),
    (nn.Softplus(threshold=20), nn.Softplus(threshold=5), "threshold"),
    (nn.LeakyReLU(0.01), nn.LeakyReLU(0.2), "negative_slope"),
    (dn.models.Supralinear(1.8, 0.8), dn.models.Supralinear(2.0, 0.8), r"\bn\b"),
    (nn.Sequential(nn.Tanh(), nn.Softplus(beta=1)), nn.Sequential(nn.Tanh(), nn.Softplus(beta=2)), "1.beta"),
    (nn.ELU(alpha=1.0), nn.ELU(alpha=0.5), "alpha"),
    (nn.Tanh(), nn.Tanh().eval(), "training"),
])
def test_stack_refuses_members_whose_activations_differ_in_their_configuration(a, b, key):
    members = [member(a, 0), member(b, 1)]
    before = [structure(m) for m in members]
    match = rf"population 'r': Phi of member 1 differs from member 0's in .*{key}"
    with pytest.raises(ConfigurationError, match=match):
        ensemble.stack(members)
    assert [structure(m) for m in members] == before


def test_stack_runs_members_that_share_a_configured_activation_with_it():
    members = [member(nn.Softplus(beta=20), s) for s in range(2)]
    big = ensemble.stack(members)
    assert big.populations["r"].phi.beta == 20 and big.populations["r"].phi is not members[0].populations["r"].phi
    stim = torch.randn(2, 4)
    sol = dn.integrate(big, stim, t_end=5.0, dt=1.0)
    for m, net in enumerate(members):
        own = dn.integrate(net, stim, t_end=5.0, dt=1.0)
        torch.testing.assert_close(sol.states["r"][:, :, m], own.states["r"])


class Double(nn.Identity):
    def forward(self, x):
        return 2 * x


def _hooked_linear():
    op = nn.Linear(4, 4)
    op.register_forward_hook(lambda module, args, out: 2 * out)
    return op


@pytest.mark.parametrize("make, match", [
    (lambda s: member(nn.Softmax(dim=-1), s), "Softmax, which stack.. cannot tell acts on each unit"),
    (lambda s: member(torch.tanh, s), "Lambda, which stack.. cannot tell"),
    (lambda s: member("relu", s, op=Double()), r"connection x -> r uses \['Double'\]"),
    (lambda s: member("relu", s, op=_hooked_linear() if s else nn.Linear(4, 4)), "has hooks"),
    (lambda s: member("relu", s).to(torch.float64 if s else torch.float32), "have different dtypes"),
])
def test_stack_refuses_what_one_module_cannot_do_for_every_member(make, match):
    with pytest.raises(ConfigurationError, match=match):
        ensemble.stack([make(0), make(1)])


# -- 4. memory is checked before a large allocation ------------------------------------------------
@pytest.fixture
def one_mib(monkeypatch):
    """1 MiB of memory 'available' (dynode.integrate.require_memory reads available_memory)."""
    monkeypatch.setattr(importlib.import_module("dynode.integrate"), "available_memory", lambda device: 1 << 20)


@pytest.mark.parametrize("kwargs, what", [
    ({"bias": "unit"}, "per-unit bias"),
    ({"tau": torch.full((1000, 1000), 5.0)}, "tau of shape"),
])
def test_add_population_checks_its_per_unit_tensors_against_the_memory(one_mib, kwargs, what):
    net = flat_net()
    kwargs = {"tau": 5.0, **kwargs}
    err = refused_unchanged(net, lambda: net.add_population("big", (1000, 1000), **kwargs),
                            match=rf"population 'big'.*{what}")
    assert "GiB" in str(err) and "available on cpu" in str(err)
    net.add_population("big", (1000, 1000), tau=5.0)  # nothing per unit: nothing allocated


def test_the_shape_probe_checks_the_memory_before_trying_zeros(one_mib):
    seen = []

    def phi(u):
        seen.append(u.device.type)
        return u * float(u.abs().max())  # runs on real tensors only (not on the meta device)

    net = flat_net()
    refused_unchanged(net, lambda: net.add_population("big", (1000, 1000), tau=5.0, phi=phi),
                      match=r"population 'big': phi.*does not run on the meta device")
    assert seen == ["meta"], f"the probe ran on real zeros: {seen}"


def test_huge_per_unit_tensors_are_refused_before_they_are_allocated():
    net = flat_net()
    refused_unchanged(net, lambda: net.add_population("V1", (10 ** 6, 10 ** 6), tau=5.0, bias="unit"),
                      match=r"population 'V1'.*needs \d+ GiB")
    refused_unchanged(net, lambda: add_inhibition(net, "r", channels=10 ** 7), match=r"add_inhibition\('r'\).*GiB")


def test_stack_checks_the_memory_of_its_stacked_tensors(one_mib):
    def big(seed):
        net = dn.Network()
        net.add_input("x", (300,))
        net.add_population("r", (300,), tau=5.0)
        net.connect("x", "r", nn.Linear(300, 300))
        return net

    with pytest.raises(ConfigurationError, match=r"ensemble.stack of 2 members .* GiB"):
        ensemble.stack([big(0), big(1)])


# -- the sweep: one or two bad arguments, refused before the network changes -------------------------
def draw_bad(table: dict):
    """Good values for every argument, then one or two of them replaced by bad ones (each bad
    value is refused whatever the other arguments are)."""
    @st.composite
    def draw(draw_):
        kw = {k: draw_(st.sampled_from(good)) for k, (good, _) in table.items()}
        for key in draw_(st.lists(st.sampled_from(sorted(table)), min_size=1, max_size=2, unique=True)):
            kw[key] = draw_(st.sampled_from(table[key][1]))
        return kw
    return draw()


POPULATION = {
    "name": (["p"], ["r", "x", "", "a b", 3, None]),
    "shape": ([(4,), (2, 2)], [(), (0,), (-1,), "4", (2.5,), None, (10 ** 7, 10 ** 7)]),
    "tau": ([5.0, torch.full((4,), 5.0)], [0.0, -1.0, NAN, INF, "5", True, None, torch.tensor([5.0, 0.0]),
                                           torch.full((3,), 5.0), nn.Parameter(torch.ones(1)),
                                           torch.ones(1, device="meta")]),
    "phi": (["relu", "identity", "tanh", "softplus", None, nn.Tanh(), torch.tanh],
            ["rleu", 3, nn.ReLU, nn.ReLU(inplace=True), nn.Linear(4, 2), ("relu", 3)]),
    "bias": ([False, True, "unit"], ["units", 1, 0.0, "True"]),
    "params": ([{}], [{"slope": 0.5}, {"slope": 0.5, "learn_rate": True}, {"inplace": True}, {"beta": 0.0},
                      {"n": 2.0}]),
}


@SWEEP
@given(draw_bad(POPULATION))
def test_add_population_sweep(kwargs):
    net = flat_net()
    params = kwargs.pop("params")
    refused_unchanged(net, lambda: net.add_population(**kwargs, **params))


COMPONENTS = {
    add_normalization: {
        "tau": ([30.0], [0.0, NAN, "30", None, True]),
        "delay": ([4.0, 0.0], [-1.0, INF, "4", None]),
        "pool": (["channel", "unit", "both"], ["rows", None, 3]),
        "sigma": ([1.0], [0.0, -1.0, NAN, "1"]),
        "weight": ([1.0], [-1.0, INF, "w"]),
        "learn_sigma": ([True, False], ["no", 1, None]),
        "neighborhood": ([None], [2, 0, 3.0, "3"]),
        "name": ([None, "V1_pool"], ["V1", "x", "", "a.b", 7]),
    },
    add_adaptation: {
        "kind": (["subtractive", "divisive"], ["multiplicative", None]),
        "tau": ([150.0], [-5.0, INF, "150"]),
        "delay": ([0.0, 2.0], [-2.0, NAN]),
        "weight": ([1.0], [NAN, -0.5]),
        "learn_weight": ([True], ["True", 0]),
        "pool": (["unit", "space", "channel"], ["everything", ""]),
        "name": ([None], ["V1", "1a"]),
    },
    add_inhibition: {
        "channels": ([None], [0, -1, 2.5, "2", True, 10 ** 9]),
        "ratio": ([None, 0.5], [0.0, NAN, "0.25"]),
        "tau": ([None, 4.0], [0.0, NAN, "4"]),
        "kernel_size": ([None, 1, 3], [2, 0, 3.0, True]),
        "delay_ei": ([0.0, 1.0], [-1.0, INF, "1"]),
        "delay_ie": ([0.0], [-1.0, NAN]),
        "inhibitory_recurrence": ([True], ["yes", None]),
        "delay_ii": ([None, 1.0], [-1.0, NAN]),
        "gain": ([0.5], [-1.0, NAN, INF, "0.5"]),
        "phi": (["relu", nn.Softplus()], ["rleu", nn.ReLU(inplace=True), 3]),
        "name": ([None], ["V1", "x y"]),
    },
}


@settings(SWEEP, max_examples=120)  # three builders, ~40 examples each
@given(st.sampled_from(sorted(COMPONENTS, key=lambda f: f.__name__)).flatmap(
    lambda add: st.tuples(st.just(add), draw_bad(COMPONENTS[add]))))
def test_component_sweep(case):
    add, kwargs = case
    net = conv_net()
    err = refused_unchanged(net, lambda: add(net, "V1", **kwargs))
    assert "V1" in str(err), f"the error does not name the area: {err}"


MEMBER = {  # member 1's differences from member 0 (relu, float32, plain linear maps)
    "phi": (["relu"], [nn.Softplus(beta=3.0), nn.Softmax(-1), torch.tanh, nn.ReLU().eval(), nn.LeakyReLU(0.3)]),
    "op": ([None], [nn.Sequential(nn.Linear(4, 4)), Double(), _hooked_linear()]),
    "dtype": ([torch.float32], [torch.float64]),
    "extra": ([None], ["population", "bias"]),
}


@SWEEP
@given(draw_bad(MEMBER))
def test_stack_sweep(kwargs):
    """Member 1 differs from member 0 in one or two ways: stack refuses, naming it, and leaves
    the members unchanged (none of these can be run as one module)."""
    good = member("relu", 0)
    bad = member(kwargs["phi"], 1, op=kwargs["op"]).to(kwargs["dtype"])
    if kwargs["extra"] == "population":
        bad.add_population("q", (2,), tau=3.0)
    elif kwargs["extra"] == "bias":
        bad.populations["r"].bias = None
    members = [good, bad]
    before = [structure(m) for m in members]
    with pytest.raises(ConfigurationError, match="ensemble: ") as info:
        ensemble.stack(members)
    assert "member" in str(info.value) or "connection" in str(info.value)
    assert [structure(m) for m in members] == before
