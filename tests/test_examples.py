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
