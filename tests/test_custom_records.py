"""Custom vector fields recorded in archives and checkpoints (issue 22, item 4): the class's
import path and ``spec_kwargs()``, rebuilt by ``dn.load_model`` only with ``trust_code=True``."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import dynode as dn
from dynode.errors import ConfigurationError
from dynode.spec import build_field, field_spec, spec_record, weights_fingerprint
from dynode.stimuli import Pulse

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DRIVE = Pulse(onset=10.0, duration=40.0, value=torch.tensor([[1.5], [3.0]]))


@pytest.fixture
def wilson_cowan(monkeypatch):
    """``examples/wilson_cowan.py`` imported as a user would: its folder on the path."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module("wilson_cowan")


@pytest.fixture
def user_module(tmp_path, monkeypatch, request):
    """A module of the user's own (a fresh name per test), importable through sys.path."""
    name = f"user_fields_{request.node.name.replace('[', '_').replace(']', '').replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn
        import dynode as dn

        class Leaky(dn.VectorField):
            """tau dr/dt = -r + relu(W r(t - d) + x): one population with weights."""
            def __init__(self, n=3, tau=8.0, delay=2.0):
                super().__init__()
                self.n, self.tau, self.delay = n, tau, delay
                self.w = nn.Linear(n, n, bias=False)
            def spec_kwargs(self):
                return {"n": self.n, "tau": self.tau, "delay": self.delay}
            def init_state(self, batch_size, *, device=None, dtype=None):
                return {"r": torch.zeros(batch_size, self.n, device=device, dtype=dtype)}
            def max_delay(self):
                return self.delay
            def input_names(self):
                return ("x",)
            def time_constants(self):
                return {"r": self.tau}
            def forward(self, t, state, history, inputs):
                u = self.w(history.lag("r", self.delay)) + inputs["x"]
                return {"r": (-state["r"] + torch.relu(u)) / self.tau}

        class Forgetful(Leaky):
            """spec_kwargs() leaves out the delay: the record would rebuild another field."""
            def spec_kwargs(self):
                return {"n": self.n, "tau": self.tau}

        class Silent(Leaky):
            spec_kwargs = None
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module(name)
    yield mod
    sys.modules.pop(name, None)


def _model_section(path) -> dict:
    return json.loads(dn.open_archive(path).attrs["config"])["model"]


def test_the_wilson_cowan_archive_records_and_rebuilds_the_field(wilson_cowan, tmp_path):
    field = wilson_cowan.WilsonCowan(delay=4.0, w=(15.0, 11.0, 14.0, 2.5))
    store = tmp_path / "wc.zarr"
    run = dn.simulate(field, DRIVE, t_end=60.0, dt=0.5, solver="rk4", store=store)
    model = _model_section(store)
    assert model["spec_error"] == ""
    assert model["spec"] == {"kind": "wilson_cowan:WilsonCowan", "tau_e": 10.0, "tau_i": 5.0, "delay": 4.0,
                             "w": [15.0, 11.0, 14.0, 2.5]}
    # without the opt-in: refused, naming the import path and how to opt in
    with pytest.raises(ConfigurationError, match="custom vector field 'wilson_cowan:WilsonCowan'") as err:
        dn.load_model(store)
    assert "trust_code=True" in str(err.value) and "PYTHONPATH" in str(err.value)
    rebuilt = dn.load_model(store, trust_code=True)  # no parameters: the fingerprint matches, no weights=
    assert type(rebuilt) is wilson_cowan.WilsonCowan and rebuilt.spec_kwargs() == field.spec_kwargs()
    again = dn.simulate(rebuilt, DRIVE, t_end=60.0, dt=0.5, solver="rk4")
    assert torch.equal(again.final_state["E"], run.final_state["E"])
    assert torch.equal(torch.as_tensor(again["I"].values), torch.as_tensor(dn.open_archive(store)["I"]["rate"].values))


def test_a_new_process_rebuilds_it_with_pythonpath_and_trust_code(wilson_cowan, tmp_path):
    """As a user does it: another process, ``PYTHONPATH=examples``, the current folder elsewhere."""
    store = tmp_path / "wc.zarr"
    run = dn.simulate(wilson_cowan.WilsonCowan(delay=6.0), DRIVE, t_end=40.0, dt=0.5, solver="rk4", store=store)
    code = ("import dynode as dn; from dynode.stimuli import Pulse; import torch\n"
            f"net = dn.load_model({str(store)!r}, trust_code=True)\n"
            "drive = Pulse(onset=10.0, duration=40.0, value=torch.tensor([[1.5], [3.0]]))\n"
            "sol = dn.simulate(net, drive, t_end=40.0, dt=0.5, solver='rk4')\n"
            "print(type(net).__module__, type(net).__name__, repr(sol.final_state['E'].flatten().tolist()))\n")
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    module, cls, values = out.stdout.split(" ", 2)
    assert (module, cls) == ("wilson_cowan", "WilsonCowan")
    assert eval(values) == run.final_state["E"].flatten().tolist()


def test_untrusted_loading_imports_nothing(user_module, tmp_path):
    store = tmp_path / "leaky.zarr"
    field = user_module.Leaky()
    dn.simulate(field, {"x": torch.ones(2, 3)}, t_end=10.0, dt=1.0, store=store)
    sys.modules.pop(user_module.__name__)
    with pytest.raises(ConfigurationError, match=f"'{user_module.__name__}:Leaky'"):
        dn.load_model(store, weights=False)
    assert user_module.__name__ not in sys.modules  # refused before the module was imported


def test_weights_are_loaded_and_checked_against_the_fingerprint(user_module, tmp_path):
    torch.manual_seed(0)
    field = user_module.Leaky(n=3, tau=6.0, delay=3.0)
    store = tmp_path / "leaky.zarr"
    run = dn.simulate(field, {"x": torch.ones(2, 3)}, t_end=12.0, dt=1.0, store=store)
    with pytest.raises(ConfigurationError, match="weights="):  # random weights: the archive needs them
        dn.load_model(store, trust_code=True)
    torch.save(field.state_dict(), tmp_path / "w.pt")
    rebuilt = dn.load_model(store, weights=tmp_path / "w.pt", trust_code=True)
    assert (rebuilt.n, rebuilt.tau, rebuilt.delay) == (3, 6.0, 3.0)
    assert weights_fingerprint(rebuilt) == weights_fingerprint(field)
    again = dn.simulate(rebuilt, {"x": torch.ones(2, 3)}, t_end=12.0, dt=1.0)
    assert torch.equal(again.final_state["r"], run.final_state["r"])
    other = user_module.Leaky(n=3, tau=6.0, delay=3.0)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(ConfigurationError, match="fingerprints differ"):
        dn.load_model(store, weights=tmp_path / "other.pt", trust_code=True)
    # a checkpoint holds the record and the weights (as Trainer.save writes them)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": field.state_dict(), **spec_record(field)}, ckpt)
    with pytest.raises(ConfigurationError, match="trust_code=True"):
        dn.load_model(ckpt)
    assert weights_fingerprint(dn.load_model(ckpt, trust_code=True)) == weights_fingerprint(field)


def test_fields_that_cannot_be_recorded_say_why(user_module, tmp_path):
    def why(field) -> str:
        rec = spec_record(field)
        assert rec["spec"] == ""
        return rec["spec_error"]

    assert "spec_kwargs(self)" in why(user_module.Silent())
    assert "builds another field" in why(user_module.Forgetful(delay=5.0)) and "max_delay" in why(
        user_module.Forgetful(delay=5.0))

    class Local(user_module.Leaky):
        pass

    assert "inside a function" in why(Local())

    class Script(user_module.Leaky):
        pass

    Script.__module__, Script.__qualname__ = "__main__", "Script"
    assert "__main__" in why(Script()) and "PYTHONPATH" in why(Script())
    # the archive says it too, and load_model repeats the reason instead of "unknown reason"
    store = tmp_path / "silent.zarr"
    dn.simulate(user_module.Silent(), {"x": torch.ones(1, 3)}, t_end=4.0, dt=1.0, store=store)
    with pytest.raises(ConfigurationError, match=r"holds no model spec \(the custom vector field .*spec_kwargs"):
        dn.load_model(store, weights=False)


def test_field_spec_round_trip_and_dynode_classes_need_no_trust(user_module):
    field = user_module.Leaky(n=4, tau=5.0, delay=1.0)
    data = field_spec(field)
    assert data == {"kind": f"{user_module.__name__}:Leaky", "n": 4, "tau": 5.0, "delay": 1.0}
    with pytest.raises(ConfigurationError, match="trust_code=True"):
        build_field(data)
    built = build_field(data, trust_code=True)
    assert type(built) is user_module.Leaky and built.spec_kwargs() == field.spec_kwargs()
    # a Network is still recorded as a ModelSpec
    net = dn.Network()
    net.add_input("x", (2,))
    net.add_population("E", (2,), tau=5.0)
    net.connect("x", "E", torch.nn.Linear(2, 2))
    assert "populations" in json.loads(spec_record(net)["spec"])
