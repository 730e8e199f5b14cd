"""The examples run and say what they claim."""

import importlib.util
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_delayed_network_example_prints_and_plots(tmp_path, capsys):
    out = tmp_path / "traj.png"
    load("delayed_network").main(["--out", str(out)])
    text = capsys.readouterr().out
    assert out.stat().st_size > 10_000
    # the peaks follow the hierarchy and its delays
    peaks = {line.split(":")[0]: float(line.split(" at ")[1].split(" ms")[0])
             for line in text.splitlines() if line.startswith("V") and "peak" in line}
    assert peaks["V1"] < peaks["V2"] < peaks["V4"]


def test_wilson_cowan_example_oscillates(capsys):
    load("wilson_cowan").main()
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("loop delay")]
    assert len(lines) == 2
    for line in lines:
        peaks = [int(p) for p in line.split("[")[1].split("]")[0].split(",")]
        assert all(p >= 3 for p in peaks), line


def test_compare_solvers_example_orders_the_errors(tmp_path):
    errors = load("compare_solvers").main(["--out", str(tmp_path / "c.png")])
    assert errors["rk4"] < errors["heun"] < errors["euler"]
    assert errors["dopri5"] < 1e-2 and (tmp_path / "c.png").exists()


def test_plot_archive_example_reads_with_plain_xarray(tmp_path):
    import torch

    import dynode as dn
    from dynode.stimuli import groen2022

    net = dn.models.dyrcnn(depth=2, input_shape=(1, 8, 8), num_classes=3, width=0.25, phi="relu")
    proto = groen2022("duration", torch.rand(1, 1, 8, 8))
    dn.simulate(net, proto, t_end=proto.t_end, dt=2.0, record=dn.Record(reduce="mean"),
                store=tmp_path / "a.zarr")
    out = load("plot_archive").main([str(tmp_path / "a.zarr"), "--out", str(tmp_path / "p.png")])
    assert pathlib.Path(out).stat().st_size > 5000


@pytest.mark.parametrize("reduce", [None, "mean", "std", "mean_std"])
def test_plot_archive_plots_the_right_statistic_for_every_reduce(tmp_path, reduce):
    """The plotted line is the population mean (the std for reduce="std"), in the network's
    order (V1 before V2, not alphabetical), with a labelled y axis in the archive's units."""
    import numpy as np
    import torch
    import xarray as xr

    import dynode as dn

    net = dn.Network()
    net.add_input("x", shape=(4,))
    net.add_population("V2", shape=(4,), tau=5.0)  # declared first: V2 is the lower area here
    net.add_population("V1", shape=(4,), tau=5.0)
    net.connect("x", "V2", torch.nn.Linear(4, 4))
    net.connect("V2", "V1", torch.nn.Linear(4, 4))
    dn.simulate(net, dn.stimuli.Constant({"x": torch.rand(2, 4) + 1.0}), t_end=20.0, dt=1.0,
                record=dn.Record(reduce=reduce), store=tmp_path / "a.zarr")
    mod = load("plot_archive")
    tree = xr.open_datatree(tmp_path / "a.zarr", engine="zarr")
    import matplotlib.pyplot as plt

    captured = {}
    savefig = plt.Figure.savefig

    def keep(fig, *args, **kwargs):
        captured["fig"] = fig
        return savefig(fig, *args, **kwargs)

    plt.Figure.savefig = keep
    try:
        mod.main([str(tmp_path / "a.zarr"), "--out", str(tmp_path / "p.png")])
    finally:
        plt.Figure.savefig = savefig
    axes = captured["fig"].axes
    assert [ax.get_title() for ax in axes] == ["V2", "V1"]
    for ax, name in zip(axes, ["V2", "V1"]):
        assert ax.get_ylabel().endswith("(a.u.)") and ("std" in ax.get_ylabel()) == (reduce == "std")
        y = ax.lines[0].get_ydata()
        rate = tree[name]["rate"]
        want = (rate.sel(statistic="mean") if reduce == "mean_std" else
                rate if reduce in ("mean", "std") else rate.mean("channel")).mean("sample").values
        np.testing.assert_allclose(y, want, rtol=1e-6)


@pytest.mark.parametrize("name", ["train_generated", "cifar100_dyrcnn", "experiment_groen", "convergence",
                                  "compare_cifar100"])
def test_example_configs_validate(name):
    from dynode.config import load_config

    cfg = load_config(EXAMPLES / "configs" / f"{name}.yaml")
    assert cfg.model.name == "dyrcnn"
    if name == "compare_cifar100":  # every variant's model builds (CIFAR-100 shapes, no data needed)
        from dynode.compare import _variant_config

        for label, overrides in cfg.compare.variants.items():
            net = _variant_config(cfg, label, overrides).model.build(input_shape=(3, 32, 32), num_classes=100)
            assert ("V1_norm" in net.populations) == label.endswith("+norm")


RUN_AS_SCRIPTS = ("custom_field",)
"""Examples without a main(argv) of their own: run as ``python examples/<name>.py``."""


@pytest.mark.parametrize("name", RUN_AS_SCRIPTS)
def test_example_runs_as_a_script(name, capsys):
    import runpy

    runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__main__")
    assert capsys.readouterr().out.strip()


def test_every_example_script_runs_in_this_file():
    import re

    tested = set(re.findall(r'load\("(\w+)"\)', pathlib.Path(__file__).read_text())) | set(RUN_AS_SCRIPTS)
    assert {p.stem for p in EXAMPLES.glob("*.py")} - tested == set()


@pytest.mark.slow
def test_fit_recovery_example_fits_and_draws(tmp_path, capsys):
    """examples/fit_recovery.py on its quick settings, one iteration: DN-model recordings at 512 Hz,
    the fit's report and its figure (tests/test_fit.py asserts the recovery itself)."""
    res = load("fit_recovery").main(["--out", str(tmp_path), "--quick", "--steps", "1"])
    assert {"params", "r2"} <= set(res) and all(0.0 < r <= 1.0 for r in res["r2"].values())
    assert (tmp_path / "fit.png").stat().st_size > 10_000
    assert "R^2" in capsys.readouterr().out


@pytest.mark.slow
def test_reaction_time_example_runs_on_a_checkpoint(tmp_path, capsys):
    """examples/reaction_time.py --quick on the quick demo model's weights (untrained here): the
    table with its flags listed once, no Python warning lines, and the figure."""
    import warnings

    import torch

    from dynode.config import model_and_data
    from dynode.demo import demo_config

    net, _, _ = model_and_data(demo_config(quick=True))
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        load("reaction_time").main(["--quick", "--checkpoint", str(tmp_path / "weights.pt"), "--out",
                                    str(tmp_path / "rt.png"), "--images", "1", "--trials", "1"])
    assert [str(w.message) for w in shown if "reaction" in str(w.message) or "bound=" in str(w.message)] == []
    assert "reaction times (median ms" in capsys.readouterr().out
    assert (tmp_path / "rt.png").stat().st_size > 10_000
