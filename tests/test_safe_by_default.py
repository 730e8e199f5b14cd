"""Issue 20, part 1: no file runs code by default.

Every door a colleague's or a downloaded file opens -- a spec given to ``build_network``, a spec
file, a checkpoint, an archive, a run config's ``model.factory`` or ``model.spec``, a module
next to the file -- is tried with a payload that would create a marker file; the marker must not
appear, the refusal names the import path and the opt-in, and the opt-in works.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import dynode as dn
from dynode.cli import main
from dynode.errors import CheckpointError, ConfigurationError
from dynode.spec import build_network, load_spec, network_spec, save_spec
from test_spec import Scale  # a user's operator, described by its import path (spec_kwargs)

REPO = Path(__file__).resolve().parents[1]
SWEEP = settings(max_examples=40, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
OPT_IN = "trust_code=True"


def small_net(op: nn.Module | None = None) -> dn.Network:
    net = dn.Network()
    net.add_input("image", (2, 4, 4))
    net.add_population("A", (2, 4, 4), tau=5.0, phi="tanh")
    net.connect("image", "A", op if op is not None else nn.Conv2d(2, 2, 3, padding=1))
    return net


def spec_dict(**op) -> dict:
    d = network_spec(small_net()).model_dump(mode="json")
    if op:
        d["connections"][0]["op"] = op
    return d


def payloads(marker: Path) -> list[dict]:
    """Operators that would run a shell command or a Python statement creating ``marker``."""
    cmd = f"touch {marker}"
    return [{"kind": "os:system", "command": cmd},
            {"kind": "subprocess:Popen", "args": ["touch", str(marker)]},
            {"kind": "subprocess:run", "args": ["touch", str(marker)]},
            {"kind": "builtins:exec", "source": f"open({str(marker)!r}, 'w')"},
            {"kind": "function", "path": "os:system"},
            {"kind": "sequential", "modules": [{"kind": "identity"}, {"kind": "os:system", "command": cmd}]}]


@pytest.mark.parametrize("i", range(6))
def test_build_network_refuses_import_paths_without_running_them(tmp_path, i):
    marker = tmp_path / "PWNED"
    op = payloads(marker)[i]
    path = {0: "os:system", 1: "subprocess:Popen", 2: "subprocess:run", 3: "builtins:exec", 4: "os:system",
            5: "os:system"}[i]
    with pytest.raises(ConfigurationError, match=rf"'{path}' .*{OPT_IN}.*--allow-imports"):
        build_network(spec_dict(**op))
    time.sleep(0.05)  # a spawned process would have had time to create it
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["subprocess:Popen", "subprocess:run", "os:system"])
def test_load_spec_refuses_a_spec_file_naming_code(tmp_path, kind):
    marker = tmp_path / "PWNED"
    op = {"kind": kind, "args": ["touch", str(marker)]} if kind != "os:system" else \
        {"kind": kind, "command": f"touch {marker}"}
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(spec_dict(**op)))
    with pytest.raises(ConfigurationError, match=rf"{path}: .*{kind!r} names a module outside torch.nn"):
        load_spec(path)
    assert not marker.exists()


def _checkpoint_with(tmp_path, op) -> Path:
    net = small_net()
    d = network_spec(net).model_dump(mode="json")
    d["connections"][0]["op"] = op
    path = tmp_path / "ckpt.pt"
    torch.save({"model": net.state_dict(), "spec": json.dumps(d), "spec_error": ""}, path)
    return path


def test_load_model_refuses_a_checkpoint_whose_spec_names_code(tmp_path):
    marker = tmp_path / "PWNED"
    path = _checkpoint_with(tmp_path, {"kind": "os:system", "command": f"touch {marker}"})
    torch.load(path, weights_only=True)  # the file itself is plain data: weights_only lets it through
    with pytest.raises(ConfigurationError, match=rf"{path}: .*'os:system'.*load_model\(path, trust_code=True\)"):
        dn.load_model(path)
    assert not marker.exists()


def test_load_model_refuses_an_archive_whose_edited_spec_names_code(tmp_path):
    net = small_net()
    store = tmp_path / "run.zarr"
    dn.simulate(net, torch.rand(1, 2, 4, 4), t_end=4.0, dt=1.0, store=store,
                record=dn.Record(reduce="mean"), progress=False)
    meta_path = store / "zarr.json"
    meta = json.loads(meta_path.read_text())
    config = json.loads(meta["attributes"]["config"])
    marker = tmp_path / "PWNED"
    config["model"]["spec"]["connections"][0]["op"] = {"kind": "os:system", "command": f"touch {marker}"}
    meta["attributes"]["config"] = json.dumps(config)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigurationError, match="'os:system' names a module outside"):
        dn.load_model(store, weights=False)
    assert not marker.exists()


def _run_config(tmp_path, model: dict) -> Path:
    cfg = {"output": str(tmp_path / "out"), "model": model,
           "data": {"name": "generated", "n_train": 8, "n_test": 4, "size": 8},
           "stimulus": {"kind": "pulse", "n_images": 2, "onset": 0.0, "duration": 10.0},
           "dt": 1.0, "t_end": 10.0}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("command", [["config", "check"], ["simulate"], ["train"]])
def test_cli_refuses_a_config_factory_without_the_opt_in(tmp_path, capsys, command):
    marker = tmp_path / "PWNED"
    cfg = _run_config(tmp_path, {"factory": "os:system", "options": {"command": f"touch {marker}"}})
    assert main([*command, str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "model.factory 'os:system'" in err and "allow_imports: true" in err and "--allow-imports" in err
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_config_spec_naming_code(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    spec = tmp_path / "model.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(kind="os:system", command=f"touch {marker}")))
    cfg = _run_config(tmp_path, {"spec": str(spec)})
    assert main(["config", "check", str(cfg)]) == 2
    assert "'os:system' names a module outside" in capsys.readouterr().err
    assert not marker.exists()


def test_a_module_in_the_working_directory_is_never_imported(tmp_path, monkeypatch):
    marker = tmp_path / "PWNED"
    (tmp_path / "evil_mod.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nimport torch\nclass Op(torch.nn.Identity):\n    pass\n")
    spec = tmp_path / "model.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(kind="evil_mod:Op")))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    with pytest.raises(ConfigurationError, match="'evil_mod:Op' names a module outside"):
        build_network(yaml.safe_load(spec.read_text()))
    with pytest.raises(ConfigurationError):
        load_spec(spec)
    # even with the opt-in, the working directory is not added to the import path
    with pytest.raises(ConfigurationError, match="cannot import module 'evil_mod'.*PYTHONPATH=."):
        build_network(load_spec(spec, trust_code=True))
    assert "evil_mod" not in sys.modules
    assert not marker.exists()
    assert "" not in sys.path and str(tmp_path) not in sys.path


@pytest.mark.parametrize("kind", ["torch.nn:Module.__subclasses__", "dynode.spec:save_spec", "torch.nn:init.normal_",
                                  "dynode.checkpoint:torch.load", "torch.nn:functional.F.os.system"])
def test_only_module_classes_of_torch_nn_and_dynode_are_honoured_without_trust(kind):
    with pytest.raises(ConfigurationError, match="trust_code=True|has no"):
        build_network(spec_dict(kind=kind))


@pytest.mark.parametrize("path", ["os:system", "builtins:exec", "builtins:eval", "torch:load", "torch:save",
                                  "dynode.spec:save_spec", "torch.nn.functional:F.os.system"])
def test_function_kind_refuses_functions_that_are_not_tensor_operators(path):
    d = spec_dict()
    d["populations"][0]["phi"] = {"kind": "function", "path": path}
    with pytest.raises(ConfigurationError, match="trust_code=True"):
        build_network(d)


def test_the_vocabulary_torch_nn_classes_and_tensor_functions_need_no_opt_in():
    d = spec_dict(kind="torch.nn:Conv2d", in_channels=2, out_channels=2, kernel_size=3, padding=1)
    d["populations"][0]["phi"] = {"kind": "function", "path": "torch:tanh"}
    net = build_network(d)
    assert isinstance(net.populations["A"].incoming["image"], nn.Conv2d)
    x = torch.linspace(-2, 2, 32).reshape(1, 2, 4, 4)
    assert torch.equal(net.populations["A"].phi(x), torch.tanh(x))
    d["populations"][0]["phi"] = {"kind": "function", "path": "torch.nn.functional:softplus"}
    assert build_network(d) is not None


def test_the_opt_in_builds_a_users_operator_and_marks_a_loaded_spec(tmp_path):
    net = small_net(Scale(2, 0.25))
    spec = network_spec(net)  # a live network's classes: describing it needs no opt-in
    path = save_spec(spec, tmp_path / "model.json")
    with pytest.raises(ConfigurationError, match=f"'{Scale.__module__}:Scale' names a module outside"):
        load_spec(path)
    trusted = load_spec(path, trust_code=True)
    assert trusted.trusted and not spec.trusted
    assert "trusted" not in trusted.model_dump()  # never written
    rebuilt = build_network(trusted)
    assert isinstance(rebuilt.populations["A"].incoming["image"], Scale)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": net.state_dict(), "spec": spec.model_dump_json(), "spec_error": ""}, ckpt)
    with pytest.raises(ConfigurationError, match="trust_code=True"):
        dn.load_model(ckpt)
    loaded = dn.load_model(ckpt, trust_code=True)
    assert torch.equal(loaded.populations["A"].incoming["image"].a, net.populations["A"].incoming["image"].a)


def test_the_config_opt_in_and_the_cli_flag_run_a_factory(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO))  # the example is importable from PYTHONPATH, as documented
    model = {"factory": "examples.custom_field:build", "options": {"delay": 2.0}}
    cfg = _run_config(tmp_path, model)
    assert main(["config", "check", str(cfg)]) == 2
    assert "allow_imports: true" in capsys.readouterr().err
    assert main(["config", "check", str(cfg), "--allow-imports"]) == 0
    cfg = _run_config(tmp_path, {**model, "allow_imports": True})
    assert main(["config", "check", str(cfg)]) == 0


def test_truncated_spec_json_in_a_checkpoint_is_a_checkpoint_error(tmp_path):
    net = small_net()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": net.state_dict(), "spec": network_spec(net).model_dump_json()[:40], "spec_error": ""}, path)
    with pytest.raises(CheckpointError, match=f"the model spec stored in {path} is not valid JSON"):
        dn.load_model(path)


def test_a_spec_file_that_is_not_utf8_is_a_configuration_error(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_bytes(b"spec_version: 1\ninputs: {image: [1, 4, 4]}\n# \xff\xfe caf\xe9\n")
    with pytest.raises(ConfigurationError, match=r"not UTF-8 text \(byte \d+, line 3\)"):
        load_spec(path)


BOMB = "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
                 + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
                 + ["model: *a8"]) + "\n"


@pytest.mark.parametrize("where", ["config", "spec"])
def test_an_alias_bomb_is_refused_in_well_under_a_second(tmp_path, capsys, where):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    start = time.perf_counter()
    if where == "config":
        assert main(["config", "check", str(path)]) == 2
        assert "aliases" in capsys.readouterr().err
    else:
        with pytest.raises(ConfigurationError, match=r"YAML aliases \(\*name\) expand its 29 values to \d{9} "):
            load_spec(path)
    assert time.perf_counter() - start < 1.0


def test_a_recursive_alias_and_deep_nesting_are_refused(tmp_path):
    from dynode.datafile import load_yaml

    with pytest.raises(ConfigurationError, match="contains itself"):
        load_yaml("a: &a [1, *a]\n", "f.yaml")
    with pytest.raises(ConfigurationError, match="nested 70 levels deep"):
        load_yaml("[" * 70 + "]" * 70, "f.yaml")
    # a few shared sections are fine, and the result is the data
    assert load_yaml("s: &s {kind: rk4}\na: *s\nb: *s\n", "f.yaml") == {"s": {"kind": "rk4"}, "a": {"kind": "rk4"},
                                                                       "b": {"kind": "rk4"}}


_MODULES = st.sampled_from(["os", "subprocess", "shutil", "builtins", "pathlib", "importlib", "socket",
                            "ctypes", "pickle", "torch", "torch.hub", "numpy", "json", "evil_pkg.sub",
                            "torch.nn.functional", "dynode", "dynode.spec", "dynode.archive"])
_ATTRS = st.sampled_from(["system", "Popen", "run", "rmtree", "exec", "eval", "Path", "import_module",
                          "load", "save", "loads", "__import__", "socket", "CDLL", "relu", "tanh",
                          "build_network", "repair", "open_archive"])


@SWEEP
@given(module=_MODULES, attr=_ATTRS, as_function=st.booleans(), where=st.sampled_from(["op", "phi", "readout"]))
def test_no_import_path_outside_the_vocabulary_is_called_without_trust(module, attr, as_function, where):
    """Whatever module and name a file puts in a kind: a ConfigurationError naming the opt-in, or
    (for tensor functions of torch) a plain elementwise operator; never a call of anything else."""
    path = f"{module}:{attr}"
    op = {"kind": "function", "path": path} if as_function else {"kind": path, "x": 1}
    d = spec_dict()
    if where == "op":
        d["connections"][0]["op"] = op
    elif where == "phi":
        d["populations"][0]["phi"] = op
    else:
        d["readout"] = op
    before = set(sys.modules)
    tensor_fn = as_function and path in ("torch.nn.functional:relu", "torch.nn.functional:tanh",
                                         "torch:relu", "torch:tanh")
    if tensor_fn:  # an elementwise tensor operator: built, and it computes that function
        net = build_network(d)
        fn = getattr(torch.nn.functional if module.endswith("functional") else torch, attr)
        built = {"op": lambda: net.populations["A"].incoming["image"], "phi": lambda: net.populations["A"].phi,
                 "readout": lambda: net.readout}[where]()
        x = torch.linspace(-2, 2, 32).reshape(1, 2, 4, 4)
        assert torch.equal(built(x), fn(x))
        return
    with pytest.raises(ConfigurationError, match="trust_code=True|has no"):
        build_network(d)
    outside = {m for m in set(sys.modules) - before if not m.startswith(("torch", "dynode"))}
    assert not outside, f"building imported {outside}"


def test_a_spec_too_large_for_memory_is_refused_before_allocating(monkeypatch):
    d = {"inputs": {"x": [4]}, "populations": [{"name": "A", "shape": [200000], "tau": 5.0, "phi": {"kind": "relu"}}],
         "connections": [{"src": "A", "dst": "A", "delay": 1.0,
                          "op": {"kind": "linear", "in_features": 200000, "out_features": 200000}}]}
    start = time.perf_counter()
    with pytest.raises(ConfigurationError, match=r"the network of this spec \(40,000,200,000 weights.* needs 149 GiB "
                                                 r"but .* GiB are available on cpu; check the population shapes"):
        build_network(d)
    assert time.perf_counter() - start < 5.0  # counted on the meta device, nothing allocated
    d = spec_dict()  # a conv of 152 bytes, on a machine with 100 bytes free
    monkeypatch.setattr(sys.modules["dynode.integrate"], "available_memory",
                        lambda device: 100 if device.type == "cpu" else None)
    with pytest.raises(ConfigurationError, match=r"needs \S+ GiB but \S+ GiB are available on cpu"):
        build_network(d)


def test_dynode_train_resume_refuses_a_checkpoint_of_another_config(tmp_path, capsys):
    """`dynode train --resume` compares the whole resolved config (it compared the training
    settings only, so a changed model or data config resumed the old weights)."""
    cfg = {"output": str(tmp_path / "out"), "model": {"name": "dyrcnn", "options": {"depth": 2, "width": 0.125,
                                                                                   "steps": 2}},
           "data": {"name": "generated", "n_train": 8, "n_test": 4, "size": 8},
           "training": {"epochs": 1, "batch_size": 4}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    assert main(["train", str(path), "--resume", "--allow-imports"]) == 0  # same config: resumes (the flag is not part of it)
    cfg["data"]["seed"] = 1
    path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["train", str(path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "was made for another run config" in err and "data.seed" in err


def test_simulate_refuses_a_working_state_that_cannot_fit_before_anything_runs_or_is_written(tmp_path, monkeypatch):
    net = small_net()
    calls = []
    net.populations["A"].phi.register_forward_hook(lambda *a: calls.append(1))
    store = tmp_path / "run.zarr"
    with pytest.raises(ConfigurationError, match=r"the working state of batch 3 .* needs \S+ GiB but \S+ GiB are "
                                                 r"available on cpu \(the memory_limit given\); use a smaller batch"):
        dn.simulate(net, torch.rand(3, 2, 4, 4), t_end=4.0, dt=1.0, store=store, memory_limit=100, progress=False)
    assert not calls and not store.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(sys.modules["dynode.integrate"], "available_memory",
                        lambda device: 100 if device.type == "cpu" else None)  # the default budget: free memory
    with pytest.raises(ConfigurationError, match="the working state of batch 3"):
        dn.simulate(net, torch.rand(3, 2, 4, 4), t_end=4.0, dt=1.0, progress=False)
    res = dn.simulate(net, torch.rand(3, 2, 4, 4), t_end=4.0, dt=1.0, progress=False, memory_limit=math.inf)
    assert calls and res is not None
