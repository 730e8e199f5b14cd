"""Configs and continuations that used to be accepted silently (issue 13)."""

import pydantic
import pytest
import torch

import dynode as dn
from dynode.config import load_config, run_config
from dynode.errors import ConfigurationError
from dynode.train import TrainingConfig


def test_a_key_given_twice_is_an_error_naming_it_and_its_lines(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  name: dyrcnn\ntraining: {epochs: 2}\nmodel:\n  name: cordsnet\n")
    with pytest.raises(ConfigurationError, match=r"key 'model' appears twice \(lines 1 and 4\); keep one"):
        load_config(p)
    p.write_text("training: {epochs: 2, epochs: 3}\n")
    with pytest.raises(ConfigurationError, match="key 'epochs' appears twice"):
        load_config(p)


@pytest.mark.parametrize("data", [{"dt": float("inf")}, {"solver": {"kind": "dopri5", "rtol": float("inf")}},
                                  {"training": {"lr": float("inf")}}, {"experiment": {"dt": float("nan")}}])
def test_inf_and_nan_are_refused(data):
    with pytest.raises(pydantic.ValidationError, match="finite number"):
        run_config(data)


def test_training_config_refuses_inf():
    with pytest.raises(pydantic.ValidationError, match="finite number"):
        TrainingConfig(lr=float("inf"))


def test_a_continuation_starts_where_the_solution_ended():
    net = dn.Network()
    net.add_population("A", shape=(2,), tau=5.0, phi="tanh")
    net.connect("A", "A", torch.nn.Linear(2, 2), delay=2.0)
    sol = dn.integrate(net, None, t_end=10.0, dt=1.0, batch_size=1)
    with pytest.raises(ConfigurationError, match=r"ends at t = 10 ms, but t0 = 50 ms.*pass t0=10"):
        dn.integrate(net, None, t0=50.0, t_end=60.0, dt=1.0, initial_state=sol)
    # the right t0 continues; a restart from the last state is still possible at any t0
    dn.integrate(net, None, t0=10.0, t_end=12.0, dt=1.0, initial_state=sol)
    dn.integrate(net, None, t0=50.0, t_end=52.0, dt=1.0, initial_state=sol.final_state)


def test_the_cli_builds_the_model_after_seeding(tmp_path):
    from dynode.config import model_and_data  # what every run command builds with (the CLI imports it there)

    cfg = run_config({"model": {"name": "dyrcnn", "options": {"depth": 2, "width": 0.25, "steps": 2,
                                                               "phi": "relu"}},
                      "data": {"n_train": 8, "n_test": 8}, "training": {"seed": 3}})
    a, _, _ = model_and_data(cfg)
    torch.rand(5)  # whatever ran before
    b, _, _ = model_and_data(cfg)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k


def conv_area():
    net = dn.Network()
    net.add_input("x", shape=(16, 16, 16))
    net.add_population("A", shape=(16, 16, 16), tau=5.0, phi="relu")
    net.connect("x", "A", torch.nn.Identity())
    return net


def test_a_trajectory_that_cannot_fit_is_refused_before_the_first_step():
    # the issue's case: batch 4000 x (16, 16, 16), 500 steps, every step kept: ~31 GiB
    net = conv_area()
    x = torch.zeros(4000, 16, 16, 16)
    with pytest.raises(ConfigurationError, match=r"keeping 501 saved states of 62.5 MiB each \(batch 4000\) "
                                                  r"needs 30.6 GiB but 24 GiB are available on cpu \(the memory_limit given\).*save_at=.*dn.simulate.*memory_limit=math.inf"):
        dn.integrate(net, x, t_end=500.0, dt=1.0, memory_limit=24 * 1024 ** 3)
    # the default budget is the memory available now: this machine has far less than 31 GiB free
    from dynode.integrate import available_memory

    if available_memory(torch.device("cpu")) < 30 * 1024 ** 3:
        with pytest.raises(ConfigurationError, match="GiB are available on cpu; "):
            dn.integrate(net, x, t_end=500.0, dt=1.0)


def test_the_memory_check_counts_what_is_kept_and_can_be_turned_off():
    import math

    net = conv_area()
    x = torch.zeros(2, 16, 16, 16)
    per = 2 * 16 ** 3 * 4
    dn.integrate(net, x, t_end=9.0, dt=1.0, memory_limit=10 * per)            # 10 states fit
    with pytest.raises(ConfigurationError, match="keeping 10 saved states"):
        dn.integrate(net, x, t_end=9.0, dt=1.0, memory_limit=10 * per - 1)
    dn.integrate(net, x, t_end=9.0, dt=1.0, save_at=[0.0, 9.0], memory_limit=2 * per)  # save_at counts
    dn.integrate(net, x, t_end=9.0, dt=1.0, memory_limit=math.inf)
    with pytest.raises(ConfigurationError, match="memory_limit must be a positive number"):
        dn.integrate(net, x, t_end=9.0, dt=1.0, memory_limit=-1)


def test_a_phi_that_changes_the_shape_is_an_error_at_build_time():
    from dynode.errors import ShapeError

    net = dn.Network()
    with pytest.raises(ShapeError, match=r"population 'V1': phi maps shape \(4, 8, 8\) to \(4, 4, 4\)"):
        net.add_population("V1", shape=(4, 8, 8), tau=5.0, phi=torch.nn.AvgPool2d(2))
    with pytest.raises(ShapeError, match=r"phi maps shape \(3,\) to \(1,\)"):
        net.add_population("A", shape=(3,), tau=5.0, phi=lambda u: u.sum(-1, keepdim=True))
    net.add_population("B", shape=(3,), tau=5.0, phi=lambda u: torch.tanh(u))  # per unit: fine


def test_a_zero_delay_cycle_under_sequential_euler_warns():
    from dynode.errors import StabilityWarning
    from dynode.solvers import Euler

    def net(first):
        n = dn.Network()
        n.add_input("x", shape=(2,))
        names = ["A", "B"] if first == "A" else ["B", "A"]
        for p in names:
            n.add_population(p, shape=(2,), tau=5.0, phi="tanh")
        n.add_population("C", shape=(2,), tau=5.0, phi="tanh")
        n.connect("x", "A", torch.nn.Identity())
        n.connect("A", "B", torch.nn.Identity())
        n.connect("B", "A", torch.nn.Identity())   # A <-> B without delay: a cycle
        n.connect("B", "C", torch.nn.Identity())   # C is downstream, not on it
        return n

    assert net("A").zero_delay_cycles() == ("A", "B") and net("B").zero_delay_cycles() == ("B", "A")
    x = torch.ones(1, 2)
    runs = []
    for first in ("A", "B"):
        with pytest.warns(StabilityWarning, match=r"populations \[.*\] form a cycle of zero-delay connections"):
            runs.append(dn.integrate(net(first), x, t_end=5.0, dt=1.0, solver=Euler(order="sequential")))
    # the warning is about a real effect: the two declaration orders give different results
    assert not torch.allclose(runs[0].final_state["C"], runs[1].final_state["C"])
    # a delay on the loop removes the cycle (and the warning)
    n = dn.Network()
    n.add_input("x", shape=(2,))
    n.add_population("A", shape=(2,), tau=5.0, phi="tanh")
    n.add_population("B", shape=(2,), tau=5.0, phi="tanh")
    n.connect("x", "A", torch.nn.Identity())
    n.connect("A", "B", torch.nn.Identity())
    n.connect("B", "A", torch.nn.Identity(), delay=1.0)
    assert n.zero_delay_cycles() == ()
