"""The dynode command line: configs, errors (one line, status 2), inspect, and the demo."""

import json
import subprocess
import sys

import warnings

import pytest

from dynode.cli import main

TINY = """
output: {out}
model:
  name: dyrcnn
  options: {{depth: 2, width: 0.25, steps: 3, phi: relu}}
data:
  name: generated
  n_train: 32
  n_test: 16
  size: 16
training:
  epochs: 1
  batch_size: 16
stimulus: {{kind: pulse, n_images: 2, onset: 0.0, duration: 4.0}}
dt: 2.0
t_end: 12.0
convergence:
  dts: [2.0, 1.0]
  solvers: [euler, rk4]
  t_end: 8.0
"""


def write(tmp_path, text, name="run.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("text,expected", [
    ("trainig: {epochs: 2}\n", "trainig: unknown key (not an option here; check the spelling)"),
    ("training: {epochs: two}\n", "training.epochs: Input should be a valid integer"),
    ("training: {lr: -1}\n", "training.lr: Input should be greater than 0"),
    ("solver: {kind: rk4, rtol: 1.0e-3}\n", "solver.rk4.rtol: unknown key"),
    ("data: {name: cifar10}\n", "needs data.root"),
    ("model: {name: dyrcnn, options: {depht: 4}}\n", "dyrcnn() takes no option(s) ['depht']"),
    ("training: [1, 2\n", "not valid YAML at line"),
])
def test_config_errors_are_one_line_with_status_2(tmp_path, capsys, text, expected):
    cfg = write(tmp_path, text)
    code, out, err = run(capsys, "config", "check", str(cfg))
    if "depht" in text:  # model options are checked when the model is built
        code, out, err = run(capsys, "train", str(cfg), "--out", str(tmp_path / "o"))
    assert code == 2
    assert expected in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_file_and_bad_arguments(tmp_path, capsys):
    code, _, err = run(capsys, "config", "check", str(tmp_path / "nope.yaml"))
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "train")
    assert code == 2 and "the following arguments are required: config" in err
    code, _, err = run(capsys, "frobnicate")
    assert code == 2 and "invalid choice: 'frobnicate'" in err
    code, _, err = run(capsys, "inspect", str(tmp_path / "none.zarr"))
    assert code == 2 and "no archive at" in err


def test_config_schema_and_check(tmp_path, capsys):
    code, out, _ = run(capsys, "config", "schema")
    schema = json.loads(out)
    assert code == 0 and {"model", "data", "training", "solver", "record", "experiment"} <= set(schema["properties"])
    cfg = write(tmp_path, TINY.format(out=tmp_path / "o"))
    code, out, _ = run(capsys, "config", "check", str(cfg))
    assert code == 0 and "valid" in out


def test_train_then_simulate_then_inspect(tmp_path, capsys):
    out_dir = tmp_path / "o"
    cfg = write(tmp_path, TINY.format(out=out_dir))
    code, out, err = run(capsys, "train", str(cfg))
    assert code == 0, err
    assert (out_dir / "last.pt").exists()
    rows = [json.loads(line) for line in (out_dir / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and 0.0 <= rows[0]["train_acc"] <= 1.0
    code, out, err = run(capsys, "simulate", str(cfg))
    assert code == 0, err
    archive = out_dir / "simulation.zarr"
    assert "complete" in out and archive.exists()
    code, out, err = run(capsys, "inspect", str(archive))
    assert code == 0, err
    assert "status complete" in out and "V1: rate" in out and "0 .. 12 ms" in out
    code, _, err = run(capsys, "simulate", str(cfg))  # refuses to overwrite
    assert code == 2 and "exists" in err


def test_convergence_command(tmp_path, capsys):
    out_dir = tmp_path / "c"
    cfg = write(tmp_path, TINY.format(out=out_dir))
    code, out, err = run(capsys, "convergence", str(cfg))
    assert code == 0, err
    assert (out_dir / "convergence.png").stat().st_size > 5000 and (out_dir / "convergence.nc").exists()
    # a population typo is caught before anything runs
    bad = write(tmp_path, TINY.format(out=tmp_path / "c2").replace("convergence:\n", "convergence:\n  population: V9\n"))
    code, _, err = run(capsys, "convergence", str(bad))
    assert code == 2 and "no population 'V9'" in err and not (tmp_path / "c2" / "convergence.nc").exists()


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    """The README's first command, with small settings: archives and figures that open."""
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "dynode.cli", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the analysis flags are the table's footnotes, not also Python warnings (issue 22)
    assert "Warning" not in proc.stderr, proc.stderr[-2000:]
    assert "test accuracy" in proc.stdout and "sum. ratio" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["summary"]) == {"V1", "V2", "V4", "IT"}
    import xarray as xr

    for kind in ("contrast", "duration", "repetition"):
        tree = xr.open_datatree(out / "experiments" / f"groen2022-{kind}.zarr", engine="zarr")
        # 100 ms baseline + 1200 ms after the onset at dt 2, from the settled state; areas only
        assert tree.attrs["status"] == "complete" and tree["IT"]["rate"].sizes["time"] == 651
        assert tree.attrs["settle_steady"] is True
        assert set(tree.children) == {"V1", "V2", "V4", "IT"}
    for png in summary["figures"].values():
        with open(png, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    v1 = summary["summary"]["V1"]
    ratios = [v for v in v1["summation_ratio"].values() if v is not None]
    assert ratios and all(0.0 < v < 2.0 for v in ratios)
    assert v1["half_rise_ms"]["1.0"] > 0


@pytest.mark.parametrize("kind", ["cifar10", "imagefolder"])
def test_train_on_real_on_disk_formats(tmp_path, capsys, kind):
    from test_datasets import write_cifar10, write_folder

    root = tmp_path / "data"
    if kind == "cifar10":
        write_cifar10(root, n=16)
        data = f"data: {{name: cifar10, root: {root}}}"
    else:
        for split in ("train", "val"):
            write_folder(root / "imagenette2-160" / split, size=32)
        data = f"data: {{name: imagefolder, root: {root / 'imagenette2-160'}}}"
    cfg = write(tmp_path, f"""
output: {tmp_path / 'o'}
model:
  name: dyrcnn
  options: {{depth: 2, width: 0.25, steps: 2, phi: relu}}
{data}
training: {{epochs: 1, batch_size: 4}}
""")
    code, out, err = run(capsys, "train", str(cfg))
    assert code == 0, err
    assert "trained dyrcnn for 1 epochs" in out


def test_missing_dataset_is_one_line(tmp_path, capsys):
    cfg = write(tmp_path, f"data: {{name: cifar100, root: {tmp_path / 'nothing'}}}\n")
    code, _, err = run(capsys, "train", str(cfg), "--out", str(tmp_path / "o"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cifar" in err.lower()


@pytest.mark.slow
def test_experiment_command_runs_the_reaction_time_experiment(tmp_path, capsys):
    """`dynode experiment` with protocols [reaction_time]: the archive, its RT/accuracy table and
    the speed-accuracy figure (issue 25); `dynode analyze` of that archive prints the same table."""
    out_dir = tmp_path / "rt"
    cfg = write(tmp_path, TINY.format(out=out_dir) + "experiment: {protocols: [reaction_time], dt: 3.0, "
                "settle_max: null, reaction_time: {n_images: 2, contrasts: [0.25, 1.0], noises: [0.1], "
                "bounds: [0.5, 1.0], trials: 2, deadline: 210.0}}\n")
    with warnings.catch_warnings(record=True) as shown:  # what would be printed as warning lines
        warnings.simplefilter("always")
        code, out, err = run(capsys, "experiment", str(cfg))
    assert [str(w.message) for w in shown] == []  # the CLI's table carries the flags instead
    assert "undecided by the deadline" in out  # each flag once, in the table's notes
    assert code == 0, err
    archive = out_dir / "experiments" / "speeded-reaction_time.zarr"
    assert archive.exists(), sorted(p.name for p in (out_dir / "experiments").iterdir())
    assert "reaction times (median ms" in out and (out_dir / "figures" / "reaction_time.png").stat().st_size > 10_000
    code, again, err = run(capsys, "analyze", str(archive), "--out", str(tmp_path / "figs"))
    assert code == 0, err
    assert "reaction times (median ms" in again and (tmp_path / "figs" / "reaction_time.png").exists()


def test_experiment_command_writes_archives_and_figures(tmp_path, capsys):
    out_dir = tmp_path / "e"
    cfg = write(tmp_path, TINY.format(out=out_dir) + "experiment: {protocols: [duration, repetition], "
                "n_images: 1, dt: 2.0, onset: 150.0}\n")
    code, out, err = run(capsys, "experiment", str(cfg))
    assert code == 0, err
    assert (out_dir / "experiments" / "groen2022-duration.zarr").exists()
    assert "sum. ratio" in out and (out_dir / "figures" / "recovery.png").exists()
    code, out, err = run(capsys, "analyze", str(out_dir / "experiments" / "groen2022-duration.zarr"))
    assert code == 0, err
