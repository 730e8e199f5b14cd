"""The command line is consistent: one meaning of --overwrite (replace outputs) and --resume
(continue training), refusal by default everywhere, CLI words in CLI errors, nothing created
when a command fails, help texts that state the code's defaults, the whole config in
``inspect``, strict JSON from ``config schema``, progress counted in solver steps and a plain
line per training epoch off a terminal."""

import json
import re

import pytest

from dynode.cli import build_parser, main

TINY = """
output: {out}
model:
  name: dyrcnn
  options: {{depth: 2, width: 0.25, steps: 3, phi: relu}}
data: {{name: generated, n_train: 32, n_test: 16, size: 16}}
training: {{epochs: 1, batch_size: 16}}
stimulus: {{kind: pulse, n_images: 2, onset: 0.0, duration: 4.0}}
dt: 2.0
t_end: 12.0
convergence: {{dts: [2.0, 1.0], solvers: [euler], t_end: 4.0}}
experiment: {{protocols: [duration], n_images: 1, dt: 2.0, settle_max: null}}
"""


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cfg(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text(TINY.format(out=tmp_path / "o"))
    return p


def _subparsers():
    ap = build_parser()
    sub = next(a for a in ap._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices


# -- --overwrite / --resume ------------------------------------------------------------------
def test_train_refuses_resumes_and_overwrites(tmp_path, cfg, capsys):
    out = tmp_path / "o"
    code, _, err = run(capsys, "train", cfg, "--resume")
    assert code == 2 and "--resume: no" in err and not out.exists()
    code, _, err = run(capsys, "train", cfg)
    assert code == 0, err
    assert "epoch 1/1: train_loss=" in err  # a plain line per epoch, stderr is not a terminal here
    first = (out / "last.pt").stat().st_mtime_ns
    code, _, err = run(capsys, "train", cfg)  # refuses by default, before any work
    assert code == 2 and "--overwrite" in err and "--resume" in err and "overwrite=True" not in err
    assert (out / "last.pt").stat().st_mtime_ns == first
    code, out_text, err = run(capsys, "train", cfg, "--resume")
    assert code == 0, err
    assert "resuming from" in out_text
    code, out_text, err = run(capsys, "train", cfg, "--overwrite")
    assert code == 0 and "resuming" not in out_text
    assert (out / "last.pt").stat().st_mtime_ns != first
    code, _, err = run(capsys, "train", cfg, "--overwrite", "--resume")
    assert code == 2 and "give one" in err


@pytest.mark.parametrize("command,outputs", [
    ("simulate", ["simulation.zarr"]),
    ("convergence", ["convergence.nc", "convergence.png"]),
    ("experiment", ["experiments/groen2022-duration.zarr"]),
])
def test_existing_outputs_are_refused_unless_overwrite(tmp_path, cfg, capsys, command, outputs):
    out = tmp_path / "o"
    for rel in outputs:  # a placeholder: refused before anything runs, and left alone
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("earlier")
    code, _, err = run(capsys, command, cfg)
    assert code == 2 and "already exist" in err and "--overwrite" in err and "overwrite=True" not in err
    assert all((out / rel).read_text() == "earlier" for rel in outputs)


def test_convergence_overwrites_only_with_the_flag(tmp_path, cfg, capsys):
    code, _, err = run(capsys, "convergence", cfg)
    assert code == 0, err
    nc = tmp_path / "o" / "convergence.nc"
    before = nc.stat().st_mtime_ns
    code, _, err = run(capsys, "convergence", cfg)
    assert code == 2 and "--overwrite" in err and nc.stat().st_mtime_ns == before
    code, _, err = run(capsys, "convergence", cfg, "--overwrite")
    assert code == 0, err
    assert nc.stat().st_mtime_ns != before


def test_demo_and_compare_refuse_an_earlier_run(tmp_path, capsys):
    (tmp_path / "d" / "train").mkdir(parents=True)
    (tmp_path / "d" / "train" / "last.pt").write_bytes(b"x")
    code, _, err = run(capsys, "demo", "--quick", "--out", tmp_path / "d")
    assert code == 2 and "--overwrite" in err and "--resume" in err
    (tmp_path / "c" / "full" / "train").mkdir(parents=True)
    (tmp_path / "c" / "full" / "train" / "last.pt").write_bytes(b"x")
    code, _, err = run(capsys, "compare", "--quick", "--variants", "full", "--out", tmp_path / "c")
    assert code == 2 and "--overwrite" in err and "--resume" in err


def test_every_overwrite_flag_means_replace():
    for name, p in _subparsers().items():
        for a in p._actions:
            if "--overwrite" in a.option_strings:
                assert "replace" in a.help, (name, a.help)
            if "--resume" in a.option_strings:
                assert "continue" in a.help, (name, a.help)


def test_library_words_become_flags(monkeypatch, capsys):
    """A library error that reaches the CLI names the flag, not the keyword argument."""
    import dynode.cli as cli
    from dynode.errors import ConfigurationError

    def boom(args):
        raise ConfigurationError("store 'x.zarr' already exists; pass overwrite=True to replace it")

    monkeypatch.setitem(cli.COMMANDS, "inspect", boom)
    code, _, err = run(capsys, "inspect", "x.zarr")
    assert code == 2 and "pass --overwrite to replace it" in err


# -- nothing created on failure --------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "simulate", "experiment", "convergence"])
def test_a_failing_command_creates_no_output_folder(tmp_path, capsys, command):
    p = tmp_path / "bad.yaml"
    p.write_text(TINY.format(out=tmp_path / "o").replace("phi: relu", "phi: relu, depht: 2"))
    code, _, err = run(capsys, command, p)
    assert code == 2 and "depht" in err
    assert not (tmp_path / "o").exists()


def test_simulate_needs_a_duration(tmp_path, capsys):
    p = tmp_path / "run.yaml"
    p.write_text(TINY.format(out=tmp_path / "o").replace("t_end: 12.0\n", ""))
    code, _, err = run(capsys, "simulate", p)
    assert code == 2 and "t_end" in err and not (tmp_path / "o").exists()


# -- help texts ------------------------------------------------------------------------------
def test_help_defaults_are_the_code_defaults():
    from dynode.demo import demo_config

    parsers = _subparsers()
    for name, p in parsers.items():
        for a in p._actions:
            shown = re.search(r"\(default:? ([^;)]+)", a.help or "")
            if a.default not in (None, False, "==SUPPRESS==") and a.option_strings:
                assert shown, f"dynode {name} {a.option_strings[0]}: say its default ({a.default!r}) in the help"
            if shown and a.default not in (None, False):
                assert shown.group(1).strip() == str(a.default), (name, a.option_strings, a.help)
    epochs = next(a for a in parsers["demo"]._actions if "--epochs" in a.option_strings).help
    assert f"default {demo_config().training.epochs}; quick {demo_config(quick=True).training.epochs}" in epochs
    small = demo_config(small=True)
    text = next(a for a in parsers["compare"]._actions if a.dest == "config").help
    assert f"{small.data.n_train} training images" in text and f"{small.training.epochs} epochs" in text
    assert f"width {small.model.options['width']}" in text or "half width" in text
    assert small.model.options["width"] == demo_config().model.options["width"] / 2


# -- inspect, schema -------------------------------------------------------------------------
def test_inspect_shows_the_whole_config(tmp_path, capsys):
    import torch

    import dynode as dn
    from dynode.archive import archive_config

    net = dn.models.dyrcnn(depth=4, input_shape=(1, 8, 8), num_classes=3, width=0.25)
    dn.simulate(net, dn.stimuli.Constant({"image": torch.rand(1, 1, 8, 8)}), t_end=4.0, dt=2.0,
                record=dn.Record(reduce="mean"), store=tmp_path / "a.zarr")
    code, out, err = run(capsys, "inspect", tmp_path / "a.zarr")
    assert code == 0, err
    text = out.split("config:\n", 1)[1]
    assert json.loads(text) == archive_config(dn.open_archive(tmp_path / "a.zarr"))
    assert len(text) > 400


def test_config_schema_is_strict_json(capsys):
    def no_constants(c):
        raise AssertionError(f"{c} is not JSON")

    code, out, _ = run(capsys, "config", "schema")
    schema = json.loads(out, parse_constant=no_constants)
    assert code == 0 and "Infinity" not in out
    from dynode.config import solver_config

    dt_max = schema["$defs"]["Dopri5Config"]["properties"]["dt_max"]["default"]
    assert solver_config({"kind": "dopri5", "dt_max": dt_max}).dt_max == float("inf")


# -- progress ----------------------------------------------------------------------------------
@pytest.mark.parametrize("solver,every,unit", [("euler", 4.0, "step"), ("dopri5", 2.0, "ms")])
def test_progress_counts_solver_steps(monkeypatch, solver, every, unit):
    import torch

    import importlib

    import dynode as dn

    sim = importlib.import_module("dynode.simulate")  # the module (dn.simulate is the function)

    seen = {}
    close = sim._Progress.close

    def spy(self):
        seen.update(n=self.bar.n, total=self.bar.total, unit=self.bar.unit)
        close(self)

    monkeypatch.setattr(sim._Progress, "close", spy)
    net = dn.Network()
    net.add_input("x", shape=(2,))
    net.add_population("r", shape=(2,), tau=5.0)
    net.connect("x", "r")
    dn.simulate(net, dn.stimuli.Constant({"x": torch.ones(1, 2)}), t_end=40.0, dt=0.5, solver=solver,
                record=dn.Record(every=every), progress=True)
    assert seen["unit"] == unit
    assert seen["n"] == seen["total"] == (80 if unit == "step" else 40.0)
