"""Every example config works end to end from a fresh folder: ``dynode train`` -> ``dynode
simulate`` (the config's own horizon) -> ``dynode experiment`` (the Groen experiments and their
analysis) without diverging, and ``dynode convergence`` where the config has that section.

Quick overrides only (the same model, solver and stability settings): one epoch on a few
images (a written stand-in for CIFAR-100 where the config names it), one test image for the
experiments with a shorter settling period, the CPU, and the zoo's models at a quarter of their
channels at most (the CIFAR ones were at full width, the generated-task ones at half). Sweep specs (``grid:``) are run by
``dynode sweep`` and are not run configs; a model given by a factory without a readout is not
trained (simulate and convergence only).
"""

from pathlib import Path

import pytest
import yaml

from dynode.cli import main

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "examples" / "configs").glob("*.yaml"))


def _is_sweep(cfg: dict) -> bool:
    return "grid" in cfg or "points" in cfg


SWEEP_BASES = {(p.parent / c["base"]).resolve() for p in CONFIGS
               for c in [yaml.safe_load(p.read_text()) or {}] if _is_sweep(c) and "base" in c}


def _is_run_config(path: Path) -> bool:
    """A config of a whole run: not a sweep spec, nor the base config a sweep spec names, nor a
    fit config (`dynode fit`; checked below)."""
    cfg = yaml.safe_load(path.read_text()) or {}
    return not _is_sweep(cfg) and "fit" not in cfg and path.resolve() not in SWEEP_BASES


@pytest.mark.parametrize("path", [p for p in CONFIGS if "fit" in (yaml.safe_load(p.read_text()) or {})],
                         ids=lambda p: p.stem)
def test_example_fit_config_validates(path):
    """A fit config (`dynode fit CONFIG`) is a valid FitConfig (its run needs recordings that
    examples/fit_recovery.py makes: tests/test_fit.py runs the command on small ones)."""
    from dynode.fit import FitConfig

    cfg = FitConfig.load(path)
    assert cfg.fit.params


def quick(cfg: dict, tmp: Path) -> dict:
    """``cfg`` with the quick overrides (see the module docstring)."""
    cfg = dict(cfg)
    cfg["output"] = str(tmp / "out")
    data = dict(cfg.get("data", {}))
    if data.get("name", "generated") == "generated":
        data.update(n_train=32, n_test=8)
    elif data["name"] == "cifar100":
        from test_datasets import write_cifar100

        write_cifar100(tmp / "data", n=16)
        data["root"] = str(tmp / "data")
    cfg["data"] = data
    if "name" in cfg.get("model", {}):  # a zoo model (not a spec file, not a factory)
        # at most a quarter of the channels: the same architecture, dynamics and stability
        # settings at 1/16 (CIFAR, full width) or 1/4 (generated task, half width) of the
        # convolutions' cost (the experiments' 1 ms steps take minutes per config otherwise)
        options = dict(cfg["model"].get("options", {}))
        options["width"] = min(float(options.get("width", 1.0)), 0.25)
        cfg["model"] = dict(cfg["model"], options=options)
    training = dict(cfg.get("training", {}))
    training.update(epochs=1, device="cpu", batch_size=min(training.get("batch_size", 16), 16))
    cfg["training"] = training
    exp = dict(cfg.get("experiment", {}))
    exp.update(n_images=1, settle_max=400.0)
    cfg["experiment"] = exp
    if "stimulus" in cfg:
        cfg["stimulus"] = dict(cfg["stimulus"], n_images=1)
    model = dict(cfg.get("model", {}))
    model.pop("weights", None)  # a fresh folder: train first
    cfg["model"] = model
    return cfg


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in CONFIGS if _is_run_config(p)], ids=lambda p: p.stem)
def test_example_config_end_to_end(path, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # PYTHONPATH=.: examples.custom_field
    cfg = quick(yaml.safe_load(path.read_text()), tmp_path)
    out = Path(cfg["output"])
    trainable = "factory" not in cfg["model"]
    file = tmp_path / "run.yaml"
    file.write_text(yaml.safe_dump(cfg))
    if trainable:
        code, text, err = run(capsys, "train", file)
        assert code == 0, err
        assert (out / "last.pt").is_file()
        cfg["model"]["weights"] = str(out / "last.pt")
        file.write_text(yaml.safe_dump(cfg))
    # simulate: the config's own horizon (every example says how long)
    assert cfg.get("t_end") or cfg.get("stimulus", {}).get("kind") == "groen2022", f"{path.name}: no t_end"
    code, text, err = run(capsys, "simulate", file)
    assert code == 0, err
    import xarray as xr

    tree = xr.open_datatree(out / "simulation.zarr", engine="zarr")
    assert tree.attrs["status"] == "complete" and float(tree["time"].values[-1]) == float(cfg["t_end"])
    assert float(cfg["t_end"]) >= 100.0, "simulate a meaningful horizon (>= 100 ms)"
    if trainable:
        code, text, err = run(capsys, "experiment", file)
        assert code == 0, err
        assert "Diverg" not in err and "sum. ratio" in text
        for kind in ("contrast", "duration", "repetition"):
            exp = xr.open_datatree(out / "experiments" / f"groen2022-{kind}.zarr", engine="zarr")
            assert exp.attrs["status"] == "complete"
        assert (out / "figures" / "recovery.png").is_file()
    if "convergence" in cfg:
        code, text, err = run(capsys, "convergence", file)
        assert code == 0, err
        assert (out / "convergence.nc").is_file()
