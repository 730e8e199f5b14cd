"""Learnt time constants and delays (issue 23): bounds, exact values, gradients against finite
differences, solvers, specs, ensembles, the stability report, and bad input."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import dynode as dn
from dynode.errors import ConfigurationError, DelayError, StabilityWarning
from dynode.models.ensemble import stack
from dynode.plan import Read
from dynode.solvers import Dopri5
from dynode.spec import build_network, network_spec

X = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
STIM = dn.stimuli.Pulse(2.0, 20.0, {"x": X})


def _net(learn_tau=False, learn_delay=False, delay=6.0, dtype=torch.float64, delay_bounds=(2.0, 12.0)):
    """x -> a -(delay)-> b -(4 ms)-> a: a delayed loop with a stimulus pulse."""
    torch.manual_seed(0)
    net = dn.Network()
    net.add_input("x", (2,))
    net.add_population("a", (2,), tau=5.0, phi="tanh", learn_tau=learn_tau)
    net.add_population("b", (2,), tau=7.0, phi="tanh", learn_tau=learn_tau,
                       tau_bounds=(2.0, 20.0) if learn_tau else None)
    net.connect("x", "a", nn.Linear(2, 2))
    net.connect("a", "b", nn.Linear(2, 2), delay=delay, learn_delay=learn_delay,
                delay_bounds=delay_bounds if learn_delay else None)
    net.connect("b", "a", nn.Linear(2, 2), delay=4.0)
    return net.to(dtype)


def _loss(net, solver, dt, t_end=40.0):
    sol = dn.integrate(net, STIM, t_end=t_end, dt=dt, solver=solver, save_at=1.0)
    return sum((s ** 2).sum() for s in sol.states.values())


def _raw(net, key):
    return dict(net.named_parameters())[key]


def _fd(net, p, solver, dt, eps=1e-6):
    with torch.no_grad():
        p.add_(eps)
        hi = float(_loss(net, solver, dt))
        p.sub_(2 * eps)
        lo = float(_loss(net, solver, dt))
        p.add_(eps)
    return (hi - lo) / (2 * eps)


TAU_A, TAU_B, DELAY = ("populations.a.learnt_tau.raw", "populations.b.learnt_tau.raw",
                       "populations.b.learnt_delays.a.raw")


# -- the parametrisation ---------------------------------------------------------------------
def test_learnt_tau_is_a_parameter_inside_its_bounds():
    net = dn.Network()
    net.add_input("x", (3, 4, 4))
    net.add_population("a", (3, 4, 4), tau=5.0, learn_tau=True)
    net.add_population("b", (3, 4, 4), tau=torch.tensor([4.0, 8.0, 16.0]).view(3, 1, 1), learn_tau=True,
                       tau_bounds=(2.0, 40.0))
    a, b = net.populations["a"], net.populations["b"]
    assert a.tau_bounds == (2.5, 10.0)  # the default: (tau / 2, 2 tau)
    assert a.tau_min() == pytest.approx(5.0, rel=1e-6)
    assert b.tau.detach().flatten().tolist() == pytest.approx([4.0, 8.0, 16.0], rel=1e-6)
    assert a.tau.requires_grad and tuple(b.learnt_tau.raw.shape) == (3, 1, 1)
    assert {k for k in net.state_dict() if "tau" in k} == {"populations.a.learnt_tau.raw",
                                                             "populations.b.learnt_tau.raw"}
    assert sum(p.numel() for p in net.parameters()) == 1 + 3
    with torch.no_grad():
        a.learnt_tau.raw.fill_(1e4)
        b.learnt_tau.raw.fill_(-1e4)
    assert a.tau_min() == pytest.approx(10.0) and a.tau_min() <= 10.0
    assert b.tau_min() == pytest.approx(2.0) and b.tau_min() >= 2.0
    assert a.tau_min() == pytest.approx(10.0)  # the float follows the parameter (no stale cache)


def test_fixed_networks_have_no_new_parameters_or_keys():
    net = _net()
    assert not any("learnt" in k for k in net.state_dict())
    assert net.tau_bounds() == {} and net.delay_bounds() == {}
    assert [t.read for p in net.plan() for t in p.terms] == [Read.INPUT, Read.LAG, Read.LAG]


def test_a_learnt_delay_on_the_grid_gives_the_fixed_delay_run():
    """Exactly with the default bounds (the start value is the midpoint of the log range: raw =
    0); to float32 rounding of ``raw`` (the delay 6 - 2e-8 ms) with other bounds."""
    for solver in ("euler", "rk4"):
        fixed = dn.integrate(_net(), STIM, t_end=30.0, dt=0.5, solver=solver).states
        exact = dn.integrate(_net(learn_delay=True, delay_bounds=None), STIM, t_end=30.0, dt=0.5, solver=solver).states
        near = dn.integrate(_net(learn_delay=True), STIM, t_end=30.0, dt=0.5, solver=solver).states
        for name in fixed:
            assert torch.equal(fixed[name], exact[name].detach()), (solver, name)
            assert torch.allclose(fixed[name], near[name].detach(), rtol=0, atol=1e-8), (solver, name)


def test_a_learnt_delay_between_grid_points_is_read_to_the_method_order():
    """RK4 with a learnt delay of 6.25 ms at dt 0.5 (off the grid: Hermite reads) against an
    adaptive solve of the fixed delay 6.25: the error falls about 16x when dt halves."""
    with torch.no_grad():
        ref = dn.integrate(_net(delay=6.25), STIM, t_end=30.0, solver=Dopri5(rtol=1e-11, atol=1e-13),
                           save_at=[30.0]).final_state["b"]
        errs = [float((dn.integrate(_net(learn_delay=True, delay=6.25), STIM, t_end=30.0, dt=dt,
                                    solver="rk4").final_state["b"] - ref).abs().max()) for dt in (0.5, 0.25)]
    assert errs[0] < 1e-4
    assert errs[0] / errs[1] > 6  # measured ~10 (order 4 but for the derivative kinks at the pulse edges)


# -- gradients ---------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["euler", "heun", "midpoint", "rk4"])
def test_fixed_step_gradients_equal_finite_differences(solver):
    """d loss / d raw for both taus and the delay (6.3 ms at dt 0.5: off the grid, so no read
    falls on a kink of the interpolant) against central differences, float64."""
    net = _net(learn_tau=True, learn_delay=True, delay=6.3)
    keys = (TAU_A, TAU_B, DELAY)
    grads = torch.autograd.grad(_loss(net, solver, 0.5), [_raw(net, k) for k in keys])
    for key, g in zip(keys, grads):
        assert float(g) == pytest.approx(_fd(net, _raw(net, key), solver, 0.5), rel=1e-6, abs=1e-9), key
        assert abs(float(g)) > 1e-3, key  # a gradient that matters


def test_adaptive_gradients_match_finite_differences_and_the_fixed_step_limit():
    solver = Dopri5(rtol=1e-10, atol=1e-12)
    net = _net(learn_tau=True, learn_delay=True, delay=6.33)
    loss = _loss(net, solver, None, t_end=25.0)
    g_tau, g_delay = torch.autograd.grad(loss, [_raw(net, TAU_A), _raw(net, DELAY)])
    with torch.no_grad():
        p = _raw(net, TAU_A)
        p.add_(1e-5)
        hi = float(_loss(net, solver, None, t_end=25.0))
        p.sub_(2e-5)
        lo = float(_loss(net, solver, None, t_end=25.0))
    assert float(g_tau) == pytest.approx((hi - lo) / 2e-5, rel=1e-5)
    # A delay's gradient converges to the same value under every solver, at first order in the
    # step near the stimulus' jumps (the breakpoints b + d stay put inside one solve): measured
    # dopri5 (1e-10) 0.11813, rk4 dt 0.05 / 0.02 / 0.01: 0.11872 / 0.11884 / 0.11897, bosh3 0.11895
    fine = _net(learn_tau=True, learn_delay=True, delay=6.33)
    ref = float(torch.autograd.grad(_loss(fine, "rk4", 0.02, t_end=25.0), _raw(fine, DELAY))[0])
    assert float(g_delay) == pytest.approx(ref, rel=1e-2)
    assert abs(float(g_delay)) > 0.05


def test_learning_moves_tau_and_delay_toward_a_target():
    """Fit the learnt quantities of a copy to a target run with other values (Adam, 30 steps):
    the loss falls 10x and tau/delay move toward the target's."""
    target = _net(delay=8.0)
    with torch.no_grad():
        target.populations["a"].tau = 7.0
        want = dn.integrate(target, STIM, t_end=40.0, dt=0.5, solver="rk4").states["b"]
    net = _net(learn_tau=True, learn_delay=True, delay=6.0)
    net.load_state_dict(target.state_dict(), strict=False)
    opt = torch.optim.Adam([p for k, p in net.named_parameters() if "raw" in k], lr=0.1)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = ((dn.integrate(net, STIM, t_end=40.0, dt=0.5, solver="rk4").states["b"] - want) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10
    assert abs(net.populations["a"].tau_min() - 7.0) < abs(5.0 - 7.0) / 2
    assert abs(net.delays()["a -> b"][1] - 8.0) < abs(6.0 - 8.0) / 2


# -- where they are carried --------------------------------------------------------------------
def test_spec_round_trip_keeps_learnt_values_and_bounds():
    net = _net(learn_tau=True, learn_delay=True, dtype=torch.float32)
    with torch.no_grad():
        for k, p in net.named_parameters():
            if "raw" in k:
                p.add_(0.4)
    spec = network_spec(net)
    pop_a = next(p for p in spec.populations if p.name == "a")
    conn = next(c for c in spec.connections if c.src == "a")
    assert pop_a.learn_tau and pop_a.tau_bounds == (2.5, 10.0)
    assert conn.learn_delay and conn.delay_bounds == (2.0, 12.0) and conn.delay == pytest.approx(net.delays()["a -> b"][1])
    rebuilt = build_network(spec)
    assert rebuilt.populations["a"].tau_min() == pytest.approx(net.populations["a"].tau_min(), rel=1e-5)
    rebuilt.load_state_dict(net.state_dict())
    assert rebuilt.delays() == net.delays()
    assert rebuilt.populations["b"].tau_min() == net.populations["b"].tau_min()


def test_ensemble_stacks_learnt_taus_member_by_member():
    members = []
    for seed in range(3):
        m = _net(learn_tau=True, dtype=torch.float32)
        with torch.no_grad():
            for k, p in m.named_parameters():
                if "raw" in k:
                    p.add_(0.3 * (seed - 1))
        members.append(m)
    st = stack(members)
    assert st.tau_bounds() == members[0].tau_bounds()
    x = {"x": X.float()}
    out = dn.integrate(st, x, t_end=20.0, dt=0.5).final_state["b"]
    for i, m in enumerate(members):
        assert torch.allclose(out[:, i], dn.integrate(m, x, t_end=20.0, dt=0.5).final_state["b"], atol=1e-6)
    with pytest.raises(ConfigurationError, match="learnt delay"):
        stack([_net(learn_delay=True), _net(learn_delay=True)])


def test_stability_report_names_the_learnt_quantities():
    text = dn.models.summary(_net(learn_tau=True, learn_delay=True), dt=0.5, file=open("/dev/null", "w"))
    assert "a: tau in [2.5, 10] ms" in text and "b: delay from a in [2, 12] ms" in text


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(tau_bounds=(1.0, 10.0)), "pass learn_tau=True"),
    (dict(learn_tau=True, tau_bounds=(0.0, 10.0)), r"tau_bounds\[0\] must be finite and > 0"),
    (dict(learn_tau=True, tau_bounds=(10.0, 2.0)), "needs lo < hi"),
    (dict(learn_tau=True, tau_bounds=(6.0, 10.0)), "outside tau_bounds"),
    (dict(learn_tau=True, tau_bounds=(1.0, math.inf)), r"tau_bounds\[1\] must be finite"),
    (dict(learn_tau=True, tau_bounds=5.0), "must be a pair"),
    (dict(learn_tau="yes"), "learn_tau must be True or False"),
])
def test_bad_tau_options_are_refused_naming_the_population(kwargs, match):
    net = dn.Network()
    with pytest.raises(ConfigurationError, match=match) as err:
        net.add_population("V1", (2,), tau=5.0, **kwargs)
    assert "population 'V1'" in str(err.value)


@pytest.mark.parametrize("src, kwargs, match", [
    ("a", dict(delay=4.0, delay_bounds=(1.0, 8.0)), "pass learn_delay=True"),
    ("x", dict(delay=4.0, learn_delay=True), "no gradient with respect to the delay"),
    ("a", dict(delay=0.0, learn_delay=True), "must start > 0"),
    ("a", dict(delay=4.0, learn_delay=True, skip_initial=True), "skip_initial"),
    ("a", dict(delay=4.0, learn_delay=True, delay_bounds=(5.0, 8.0)), "outside delay_bounds"),
])
def test_bad_delay_options_are_refused_naming_the_connection(src, kwargs, match):
    net = dn.Network()
    net.add_input("x", (2,))
    net.add_population("a", (2,), tau=5.0)
    net.add_population("b", (2,), tau=5.0)
    with pytest.raises(ConfigurationError, match=match) as err:
        net.connect(src, "b", **kwargs)
    assert f"connect('{src}', 'b')" in str(err.value)
    assert "b" not in net.populations["b"].incoming or src != "a"


def test_solvers_refuse_what_they_cannot_do_before_the_first_step():
    net = _net(learn_delay=True)  # bounds (2, 12)
    with pytest.raises(DelayError, match=r"a -> b: the learnt delay's lower bound 2 ms is below dt = 4"):
        dn.integrate(net, STIM, t_end=8.0, dt=4.0)
    pytest.importorskip("torchdiffeq")
    with pytest.raises(ConfigurationError, match="cannot read learnt delays.*a -> b"):
        dn.integrate(net, STIM, t_end=8.0, solver="torchdiffeq")


def test_a_tau_bound_beyond_the_stability_limit_is_warned():
    def net(bounds):
        n = dn.Network()
        n.add_input("x", (2,))
        n.add_population("a", (2,), tau=5.0, learn_tau=True, tau_bounds=bounds)
        n.connect("x", "a")
        return n
    with pytest.warns(StabilityWarning, match=r"dt = 2 ms > tau = 1 ms \(the lower bound of its learnt tau"):
        dn.integrate(net((1.0, 10.0)), {"x": X.float()}, t_end=4.0, dt=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StabilityWarning)
        dn.integrate(net((2.0, 10.0)), {"x": X.float()}, t_end=4.0, dt=2.0)


def test_training_learns_tau_and_the_checkpoint_rebuilds_it(tmp_path):
    """dn.train on the generated task: the learnt tau and delay move, the checkpoint's spec and
    weights give them back exactly in a new network (resume reads the same state_dict)."""
    from dynode.models import Readout
    from dynode.stimuli import generated_task
    from dynode.train import train

    task = generated_task(64, 16, size=8, seed=0)
    torch.manual_seed(0)
    net = dn.Network()
    net.add_input("image", task.image_shape)
    net.add_population("V1", (8, 4, 4), tau=6.0, learn_tau=True)
    net.add_population("IT", (8, 2, 2), tau=6.0, learn_tau=True)
    net.connect("image", "V1", nn.Conv2d(1, 8, 3, stride=2, padding=1))
    net.connect("V1", "IT", nn.Conv2d(8, 8, 3, stride=2, padding=1), delay=4.0, learn_delay=True)
    net.set_readout(Readout("IT", (8, 2, 2), task.num_classes))
    net.protocol = dn.RunProtocol(dt=2.0, t_end=20.0)
    before = (net.populations["V1"].tau_min(), net.delays()["V1 -> IT"][1])
    cfg = {"epochs": 1, "batch_size": 16, "lr": 0.05, "seed": 0}
    train(net, task, cfg, checkpoint_dir=tmp_path, progress=False)
    after = (net.populations["V1"].tau_min(), net.delays()["V1 -> IT"][1])
    assert after[0] != before[0] and after[1] != before[1]
    loaded = dn.load_model(tmp_path / "last.pt")
    assert loaded.tau_bounds() == net.tau_bounds() and loaded.delay_bounds() == net.delay_bounds()
    assert loaded.populations["V1"].tau_min() == after[0] and loaded.delays() == net.delays()


def test_dyrcnn_train_tau_learns_each_areas_tau_from_the_timing():
    from dynode.models import dyrcnn

    net = dyrcnn(timing="cortex", train_tau=True, width=0.25, input_shape=(1, 16, 16), num_classes=3,
                 steps=10, dt=4.0)
    areas = ("V1", "V2", "V4", "IT")
    assert {a: net.populations[a].tau_min() for a in areas} == pytest.approx(
        {"V1": 10.0, "V2": 15.0, "V4": 20.0, "IT": 30.0}, rel=1e-6)
    assert net.tau_bounds() == {"V1": (5.0, 20.0), "V2": (7.5, 30.0), "V4": (10.0, 40.0), "IT": (15.0, 60.0)}
    fixed = dyrcnn(timing="cortex", width=0.25, input_shape=(1, 16, 16), num_classes=3, steps=10, dt=4.0)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in fixed.parameters()) + 4


def test_time_lr_is_the_learnt_taus_own_learning_rate():
    """training.time_lr: the raw parameters of learnt taus and delays form their own optimizer
    group (no weight decay); the weights keep lr. A network without learnt times keeps one group."""
    from dynode.models import dyrcnn
    from dynode.train import Trainer, TrainingConfig

    net = dyrcnn(timing="cortex", train_tau=True, width=0.25, input_shape=(1, 16, 16), num_classes=3,
                 steps=40, dt=4.0)
    tr = Trainer(net, TrainingConfig(lr=1e-3, time_lr=0.05, weight_decay=1e-4), progress=False)
    weights, times = tr.optimizer.param_groups
    assert (weights["lr"], weights["weight_decay"], times["lr"], times["weight_decay"]) == (1e-3, 1e-4, 0.05, 0.0)
    assert {id(p) for p in times["params"]} == {id(net.populations[a].learnt_tau.raw) for a in net.areas()}
    plain = dyrcnn(timing="cortex", width=0.25, input_shape=(1, 16, 16), num_classes=3, steps=40, dt=4.0)
    assert len(Trainer(plain, TrainingConfig(time_lr=0.05), progress=False).optimizer.param_groups) == 1


def test_resume_with_learnt_taus_continues_the_same_run(tmp_path):
    """Two optimizer groups survive a checkpoint: an interrupted run resumed into a network
    rebuilt from the checkpoint's spec (parameters registered in the spec's order) ends where
    the straight run ends."""
    from dynode.models import dyrcnn
    from dynode.stimuli import generated_task
    from dynode.train import Trainer, TrainingConfig

    task = generated_task(64, 16, size=16, seed=1)

    def net():
        torch.manual_seed(0)
        return dyrcnn(depth=2, timing=None, tau=(6.0, 8.0), train_tau=True, width=0.25,
                      input_shape=task.image_shape, num_classes=task.num_classes, steps=6)
    cfg = TrainingConfig(epochs=2, batch_size=32, lr=3e-3, time_lr=0.05, seed=2)
    straight = Trainer(net(), cfg, progress=False)
    straight.fit(task)
    first = Trainer(net(), cfg, checkpoint_dir=tmp_path, progress=False)
    first.fit(task, until=1)
    second = Trainer(dn.load_model(tmp_path / "last.pt", eval=False), cfg, checkpoint_dir=tmp_path, progress=False)
    second.resume(tmp_path / "last.pt").fit(task)
    for (k, a), (_, b) in zip(sorted(straight.network.state_dict().items()),
                              sorted(second.network.state_dict().items())):
        assert torch.equal(a, b), k
    assert straight.network.populations["V1"].tau_min() != 6.0
