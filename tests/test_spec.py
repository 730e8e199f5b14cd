"""Networks as data (dynode.spec): zoo round trips, custom operators, errors, pickling, load_model."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import dynode as dn
from dynode.errors import ConfigurationError
from dynode.spec import ModelSpec, build_network, load_spec, network_spec, save_spec

ZOO = {
    "dyrcnn": lambda: dn.models.dyrcnn(depth=4, width=0.125, input_shape=(1, 16, 16), num_classes=5,
                                       feedback=True, steps=6),
    "dyrcnn_components": lambda: dn.models.dyrcnn(depth=2, width=0.125, input_shape=(1, 16, 16), num_classes=5,
                                                  normalization={"pool": "channel", "neighborhood": 3},
                                                  adaptation="divisive", ei=True, steps=6),
    "dyrcnn_localdepthwise": lambda: dn.models.dyrcnn(depth=2, width=0.125, input_shape=(1, 16, 16),
                                                      recurrence_type="localdepthwise", steps=6),
    "cornet_rt": lambda: dn.models.cornet_rt(num_classes=5, times=3, input_shape=(3, 32, 32), width=0.5),
    "cordsnet": lambda: dn.models.cordsnet(num_classes=5, input_shape=(3, 16, 16), width=0.0625,
                                           spontaneous_steps=2, stimulus_steps=3, after_steps=2,
                                           adaptation=True),
    "alexnet_like": lambda: dn.models.alexnet_like(num_classes=5, input_shape=(3, 16, 16), width=0.125),
    "dyrcnn_published": lambda: dn.models.dyrcnn_published("pointdepthwise", input_shape=(1, 16, 16),
                                                           num_classes=5, steps=6),
}


def _run(net, x):
    clf = dn.models.Classifier(net)
    with torch.no_grad():
        sol = dn.integrate(net, {"image": x}, t_end=clf.t_end, dt=clf.dt, solver=clf.solver)
    return sol


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_spec_round_trips_through_yaml_bit_identically(name, tmp_path):
    torch.manual_seed(0)
    net = ZOO[name]()
    spec = network_spec(net)
    path = save_spec(spec, tmp_path / "model.yaml")
    again = load_spec(path)
    assert again == spec
    rebuilt = build_network(again)
    assert sorted(rebuilt.state_dict()) == sorted(net.state_dict())
    rebuilt.load_state_dict(net.state_dict())
    assert network_spec(rebuilt) == spec  # the rebuilt network describes itself the same way
    assert rebuilt.protocol == net.protocol
    assert [(c.src, c.dst, c.delay, c.skip_initial) for c in rebuilt.connections] == \
        [(c.src, c.dst, c.delay, c.skip_initial) for c in net.connections]
    assert {n: p.role for n, p in rebuilt.populations.items()} == {n: p.role for n, p in net.populations.items()}
    x = torch.rand(2, *net.input_shapes()["image"])
    a, b = _run(net, x), _run(rebuilt, x)
    for pop in net.populations:
        assert torch.equal(a.states[pop], b.states[pop]), pop
    assert torch.equal(dn.models.Classifier(net)(x), dn.models.Classifier(rebuilt)(x))


def test_untrained_spec_keeps_the_recurrence_init():
    """A spec built without weights draws a recurrence with its own small init (gain), not a
    default Conv2d init: the factory's tag carries the recurrence type and gain."""
    net = dn.models.dyrcnn(depth=2, width=0.125, recurrence_options={"gain": 0.05})
    op = network_spec(net).connections[1].op
    assert op == {"kind": "recurrence", "type": "full", "channels": 4, "kernel_size": 3, "gain": 0.05}
    w = build_network(network_spec(net)).populations["V1"].incoming["V1"].weight
    assert abs(float(w.detach().std()) * (4 * 9) ** 0.5 - 0.05) < 0.03


class Scale(nn.Module):
    """A custom operator: ``y = a * x`` with a learnt ``a`` per channel."""

    def __init__(self, channels: int, init: float = 0.5):
        super().__init__()
        self.channels, self.init = channels, init
        self.a = nn.Parameter(torch.full((channels, 1, 1), init))

    def forward(self, x):
        return self.a * x

    def spec_kwargs(self):
        return {"channels": self.channels, "init": self.init}


class Opaque(nn.Module):
    def forward(self, x):
        return x


def _custom_net(op):
    net = dn.Network()
    net.add_input("image", (2, 4, 4))
    net.add_population("A", (2, 4, 4), tau=5.0, phi="tanh")
    net.connect("image", "A", op)
    return net


def test_custom_operator_by_import_path():
    net = _custom_net(Scale(2, 0.25))
    spec = network_spec(net)
    assert spec.connections[0].op == {"kind": f"{__name__}:Scale", "channels": 2, "init": 0.25}
    data = json.loads(spec.model_dump_json())
    with pytest.raises(ConfigurationError, match=f"'{__name__}:Scale' names a module outside .*trust_code=True"):
        build_network(data)  # a spec is data: the import path is honoured on the opt-in only
    rebuilt = build_network(data, trust_code=True)
    assert isinstance(rebuilt.populations["A"].incoming["image"], Scale)
    assert torch.equal(rebuilt.populations["A"].incoming["image"].a, net.populations["A"].incoming["image"].a)


def test_operator_outside_the_vocabulary_says_how_to_describe_it():
    with pytest.raises(ConfigurationError, match="spec_kwargs"):
        network_spec(_custom_net(Opaque()))


def _spec_dict():
    return network_spec(_custom_net(nn.Conv2d(2, 2, 3, padding=1))).model_dump(mode="json")


def test_hand_written_vocabulary_ops_build():
    d = _spec_dict()
    d["connections"].append({"src": "A", "dst": "A", "delay": 2.0,
                             "op": {"kind": "recurrence", "type": "depthpointwise", "channels": 2}})
    d["populations"].append({"name": "B", "shape": [4, 2, 2], "tau": 3.0, "phi": {"kind": "supralinear"}})
    d["connections"].append({"src": "A", "dst": "B", "delay": 1.0})  # op null: the automatic adapter
    net = build_network(d)
    assert type(net.populations["B"].incoming["A"]).__name__ == "Adapter"
    assert net.max_delay() == 2.0


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["connections"][0]["op"].update(kind="conv9d"), "unknown operator kind 'conv9d'"),
    (lambda d: d["connections"][0]["op"].update(kind="no_such_pkg.layers:Op"), "'no_such_pkg.layers:Op' names a module outside torch.nn"),
    (lambda d: d["connections"][0]["op"].update(kind="torch.nn:NoSuchLayer"), "has no 'NoSuchLayer'"),
    (lambda d: d["connections"][0]["op"].update(kernel=3), r"unknown arguments \['kernel'\]"),
    (lambda d: d.update(spec_version=99), "spec_version 99 was written by a newer dynode"),
    (lambda d: d["populations"][0].update(tua=5.0), "populations.0.tua"),
])
def test_bad_specs_are_clear_errors_before_building(edit, match):
    d = _spec_dict()
    edit(d)
    with pytest.raises(ConfigurationError, match=match):
        build_network(d)


def test_spec_file_errors(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("spec_version: 2\ninputs: {}\npopulations: []\n")
    with pytest.raises(ConfigurationError, match="newer dynode"):
        load_spec(p)
    with pytest.raises(FileNotFoundError):
        load_spec(tmp_path / "none.yaml")


def test_torch_save_and_deepcopy_of_a_network():
    """torch.save pickles with protocol 2, under which torch.memory_format cannot be pickled."""
    torch.manual_seed(0)
    net = ZOO["dyrcnn_components"]()
    net.memory_format = torch.channels_last
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    assert back.memory_format is torch.channels_last
    x = torch.rand(1, 1, 16, 16)
    assert torch.equal(dn.models.Classifier(back)(x), dn.models.Classifier(net)(x))


def test_checkpoint_reloads_with_load_model_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    net = dn.models.dyrcnn(depth=2, width=0.125, input_shape=(1, 8, 8), num_classes=3, steps=3,
                           normalization=True)
    x = torch.rand(6, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    dn.train.train(net, (x, y), {"epochs": 1, "batch_size": 3, "lr": 1e-2}, checkpoint_dir=tmp_path,
                   progress=False)
    net.eval()
    with torch.no_grad():
        logits = dn.models.Classifier(net)(x)
    torch.save({"x": x, "logits": logits}, tmp_path / "expect.pt")
    script = textwrap.dedent(f"""
        import torch, dynode as dn
        net = dn.load_model({str(tmp_path / 'last.pt')!r})
        e = torch.load({str(tmp_path / 'expect.pt')!r}, weights_only=True)
        with torch.no_grad():
            got = dn.models.Classifier(net)(e["x"])
        assert torch.equal(got, e["logits"]), (got - e["logits"]).abs().max()
        print("same logits")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "same logits" in out.stdout


def test_archive_stores_spec_and_weights_fingerprint(tmp_path):
    torch.manual_seed(0)
    net = dn.models.dyrcnn(depth=2, width=0.125, input_shape=(1, 8, 8), num_classes=3, steps=3,
                           normalization=True)  # its sigma is a 0-d parameter
    ckpt = tmp_path / "w.pt"
    torch.save({"model": net.state_dict()}, ckpt)
    res = dn.simulate(net, {"image": torch.rand(2, 1, 8, 8)}, t_end=6.0, dt=2.0, store=tmp_path / "a.zarr")
    with pytest.raises(ConfigurationError, match="stores the model's spec but not its weights"):
        dn.load_model(res.path)
    again = dn.load_model(res.path, weights=ckpt)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in again.state_dict().items())
    other = tmp_path / "other.pt"
    torch.save({"model": {k: v + 1 for k, v in net.state_dict().items()}}, other)
    with pytest.raises(ConfigurationError, match="fingerprints differ"):
        dn.load_model(res.path, weights=other)
    fresh = dn.load_model(res.path, weights=False)
    assert sorted(fresh.state_dict()) == sorted(net.state_dict())
