"""Custom models in every command: `model:` as a factory import path or a spec file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import xarray as xr
import yaml

import dynode as dn
from dynode.cli import main
from dynode.config import run_config

REPO = Path(__file__).resolve().parents[1]
DATA = {"name": "generated", "n_train": 8, "n_test": 4, "size": 8}


def _config(tmp_path, model: dict, **extra) -> Path:
    if "factory" in model:  # a factory is code: the config opts in (tests/test_safe_by_default.py: without)
        model = {**model, "allow_imports": True}
    cfg = {"output": str(tmp_path / "out"), "model": model, "data": DATA,
           "stimulus": {"kind": "pulse", "n_images": 2, "onset": 0.0, "duration": 10.0},
           "record": {"reduce": "mean"}, "dt": 1.0, "t_end": 20.0,
           "convergence": {"dts": [1.0, 0.5], "solvers": ["euler", "rk4"], "t_end": 12.0}, **extra}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _check_outputs(out: Path, populations):
    tree = dn.open_archive(out / "simulation.zarr")
    assert tree.attrs["status"] == "complete"
    assert list(dn.archive.populations(tree)) == list(populations)
    ds = xr.open_dataset(out / "convergence.nc")
    assert ds.sizes["dt"] == 2
    assert (out / "convergence.png").stat().st_size > 1000


def test_import_path_factory_runs_simulate_and_convergence(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # PYTHONPATH=. from the repository root, as the README says
    cfg = _config(tmp_path, {"factory": "examples.custom_field:build", "options": {"delay": 2.0}})
    assert main(["simulate", str(cfg)]) == 0
    assert main(["convergence", str(cfg)]) == 0
    _check_outputs(tmp_path / "out", ["E", "I"])
    tree = dn.open_archive(tmp_path / "out" / "simulation.zarr")
    assert dn.archive.archive_config(tree)["model"]["type"] == "WilsonCowanSheet"


def test_spec_file_runs_simulate_and_convergence(tmp_path):
    torch.manual_seed(0)
    net = dn.models.dyrcnn(depth=2, width=0.125, input_shape=(1, 8, 8), num_classes=6, steps=5, phi="relu")
    spec_path = dn.spec.save_spec(dn.spec.network_spec(net), tmp_path / "model.yaml")
    cfg = _config(tmp_path, {"spec": str(spec_path)})
    assert main(["simulate", str(cfg)]) == 0
    assert main(["convergence", str(cfg)]) == 0
    _check_outputs(tmp_path / "out", ["V1", "IT"])
    tree = dn.open_archive(tmp_path / "out" / "simulation.zarr")
    stored = dn.archive.archive_config(tree)["model"]["spec"]
    assert dn.spec.ModelSpec.from_data(stored) == dn.spec.load_spec(spec_path)


@pytest.mark.parametrize("model, match", [
    ({"factory": "no_such_module:build"}, "cannot import module 'no_such_module'"),
    ({"factory": "examples.custom_field:nothing"}, "has no 'nothing'"),
    ({"factory": "examples.custom_field"}, "package.module:function"),
    ({"name": "dyrcnn", "factory": "examples.custom_field:build"}, "give one of"),
    ({"spec": "model.yaml", "options": {"depth": 2}}, "a spec file holds the whole model"),
    ({"factory": "examples.custom_field:WilsonCowanSheet", "options": {"sise": 4}}, "takes no option"),
])
def test_bad_model_sources_fail_before_running(tmp_path, monkeypatch, capsys, model, match):
    monkeypatch.syspath_prepend(str(REPO))
    cfg = _config(tmp_path, model)
    assert main(["simulate", str(cfg)]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "out" / "simulation.zarr").exists()


def test_factory_must_return_a_vector_field(tmp_path, capsys):
    cfg = _config(tmp_path, {"factory": "pathlib:Path"})
    with pytest.raises(dn.ConfigurationError, match="must return a dynode.Network or another"):
        run_config(yaml.safe_load(cfg.read_text())).model.build()
    assert main(["simulate", str(cfg)]) == 2
    assert "pathlib:Path returned" in capsys.readouterr().err
