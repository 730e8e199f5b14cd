"""dynode sweep: expansion, errors before running, and a real Snakemake run that resumes."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr
import yaml

from dynode.cli import main
from dynode.errors import ConfigurationError
from dynode.sweep import expand, load_sweep

BASE = {"model": {"name": "dyrcnn", "options": {"depth": 2, "width": 0.125, "steps": 3}},
        "data": {"name": "generated", "n_train": 16, "n_test": 8, "size": 8},
        "training": {"epochs": 1, "batch_size": 8}}


def _sweep(tmp_path, **body) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", "output": "out", **body}))
    return path


def test_grid_expands_to_one_config_per_point(tmp_path):
    sweep, base, out = load_sweep(_sweep(tmp_path, grid={"model.options.recurrence_type": ["full", "self"],
                                                          "training.seed": [0, 1, 2]}))
    points = expand(sweep, base)
    assert [p["id"] for p in points] == [f"p{i:03d}" for i in range(6)]
    assert points[4]["config"]["model"]["options"] == {"depth": 2, "width": 0.125, "steps": 3,
                                                       "recurrence_type": "self"}
    assert points[4]["config"]["training"]["seed"] == 1
    assert out == tmp_path / "out"


@pytest.mark.parametrize("body, match", [
    ({"grid": {"training.sead": [0, 1]}}, "'sead' is not a key of training"),
    ({"grid": {"modle.name": ["dyrcnn"]}}, "'modle' is not a key of the run config"),
    ({"grid": {"model.options.recurence_type": ["full"]}}, "dyrcnn() has no option 'recurence_type'"),
    ({"grid": {}}, "grid is empty"),
    ({"grid": {"training.seed": []}}, "have no values"),
    ({"points": []}, "points is empty"),
    ({"grid": {"training.seed": [0]}, "points": [{"training.seed": 1}]}, "exactly one"),
    ({"grid": {"training.epochs": [0]}}, "sweep point p000"),
    ({"grid": {"training.seed.x": [0]}}, "is a value, not a section"),
])
def test_bad_sweeps_are_errors_before_anything_runs(tmp_path, capsys, body, match):
    path = _sweep(tmp_path, **body)
    assert main(["sweep", str(path)]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_snakemake_says_how_to_install(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "snakemake" else real(name, *a))
    assert main(["sweep", str(_sweep(tmp_path, grid={"training.seed": [0]}))]) == 2
    assert 'pip install "snakemake>=8"' in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("snakemake") is None, reason="needs snakemake (the sweep extra)")
def test_real_sweep_resumes_after_a_kill(tmp_path, monkeypatch, capfd):
    """2 x 2 sweep with Snakemake: killed after the first point, re-run: the finished point is
    not recomputed, the others run, the summary has all four points."""
    path = _sweep(tmp_path, grid={"model.options.recurrence_type": ["full", "self"], "training.seed": [0, 1]})
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dynode.cli", "sweep", str(path), "--cores", "1"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    results = lambda: sorted(out.glob("points/*/result.json"))  # noqa: E731
    logs = lambda: list(out.glob("points/*/log.txt"))  # noqa: E731
    deadline = time.time() + 120
    # kill once the first point is done and Snakemake has moved on to the second (so it has
    # recorded the first as complete; a job killed before that is rerun as incomplete)
    while not (results() and len(logs()) >= 2) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = results()
    assert len(first) >= 1, "no point finished before the kill"
    assert len(first) < 4
    mtimes = {p: p.stat().st_mtime_ns for p in first}
    ckpt_mtimes = {p.parent / "last.pt": (p.parent / "last.pt").stat().st_mtime_ns for p in first}
    monkeypatch.chdir(tmp_path)  # the second run in this process (one interpreter start less)
    code = main(["sweep", str(path), "--cores", "2"])
    out_text, err_text = capfd.readouterr()
    assert code == 0, out_text[-3000:] + err_text[-3000:]
    assert len(results()) == 4
    for p, m in mtimes.items():  # finished points were not recomputed
        assert p.stat().st_mtime_ns == m
    for p, m in ckpt_mtimes.items():
        assert p.stat().st_mtime_ns == m
    with open(out / "sweep_summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}
    assert {(r["model.options.recurrence_type"], r["training.seed"]) for r in rows} == \
        {("full", "0"), ("full", "1"), ("self", "0"), ("self", "1")}
    assert all(0.0 <= float(r["val_acc"]) <= 1.0 for r in rows)
    ds = xr.open_dataset(out / "sweep_summary.nc")
    assert dict(ds["val_acc"].sizes) == {"model.options.recurrence_type": 2, "training.seed": 2}
    assert (out / "sweep_summary.png").stat().st_size > 5000
    meta = json.loads((out / "points" / "p000" / "result.json").read_text())
    assert meta["overrides"] == {"model.options.recurrence_type": "full", "training.seed": 0}


@pytest.mark.slow
def test_failed_point_is_reported_and_others_finish(tmp_path, monkeypatch, capfd):
    """A point that fails (here: an option the builder rejects at build time) is reported; the
    other point still finishes and the summary marks the failure."""
    pytest.importorskip("snakemake")
    path = _sweep(tmp_path, points=[{"model.options.recurrence_type": "full"},
                                    {"model.options.recurrence_type": "no_such_type"}])
    monkeypatch.chdir(tmp_path)  # dynode sweep in this process: Snakemake and the points are processes
    assert main(["sweep", str(path), "--cores", "2"]) == 1
    assert "point p001 did not finish" in capfd.readouterr().err
    with open(tmp_path / "out" / "sweep_summary.csv") as fh:
        rows = {r["point"]: r for r in csv.DictReader(fh)}
    assert rows["p000"]["status"] == "done" and rows["p001"]["status"] == "failed"
    assert "unknown recurrence type" in (tmp_path / "out" / "points" / "p001" / "log.txt").read_text()


def test_expand_rejects_a_spec_model_option(tmp_path):
    base = {"model": {"spec": "m.yaml"}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "grid": {"model.options.depth": [2]}}))
    sweep, b, _ = load_sweep(tmp_path / "s.yaml")
    with pytest.raises(ConfigurationError, match="spec file, which has no options"):
        expand(sweep, b)


# -- issue 22 item 5: dry run, quiet Snakemake, printed paths, the summary figure ----------------
def _snapshot(root: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.mark.skipif(importlib.util.find_spec("snakemake") is None, reason="needs snakemake (the sweep extra)")
def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capfd, monkeypatch):
    """--dry-run: one 'would run' line per point with a normalised path (the sweep's output is
    given through '..'), no 'did not finish', no summary, nothing in the output folder; a point
    already done is shown as kept, and Snakemake's own dry run (quiet) agrees."""
    import dynode.sweep.run as run_mod
    from test_sweep_safety import fake_snakemake

    (tmp_path / "cfg").mkdir()
    path = _sweep(tmp_path / "cfg", grid={"model.options.recurrence_type": ["full", "self"]})
    path.write_text(path.read_text().replace("output: out", "output: ../runs/s"))
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out, err = capfd.readouterr()
    assert not (tmp_path / "runs").exists()
    plan = [ln for ln in out.splitlines() if ln.startswith("  ")]
    assert [ln.split()[:3] for ln in plan] == [["would", "run", "p000"], ["would", "run", "p001"]]
    assert plan[1].endswith("-> runs/s/points/p001") and "recurrence_type=self" in plan[1]
    assert ".." not in out + err and "did not finish" not in out + err
    assert "Snakemake's own dry run of this plan: no error" in out
    assert "SNAKEMAKE" not in out + err and "Building DAG" not in out + err  # its banner and chatter: quiet
    # the first point done (a stand-in Snakemake finishes every point; p001's result removed again)
    monkeypatch.setattr(run_mod, "_snakemake", fake_snakemake([]))
    assert main(["sweep", str(path)]) == 0
    (tmp_path / "runs" / "s" / "points" / "p001" / "result.json").unlink()
    scratch = []  # Snakemake's dry run (once is enough above) sees a stand-in result of p000 only
    monkeypatch.setattr(run_mod, "_snakemake", lambda cmd, d, owner: scratch.append(
        sorted(p.parent.name for p in d.glob("points/*/result.json"))) or 0)
    capfd.readouterr()
    before = _snapshot(tmp_path / "runs")
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out, err = capfd.readouterr()
    assert _snapshot(tmp_path / "runs") == before and scratch == [["p000"]]
    plan = [ln.split()[:3] for ln in out.splitlines() if ln.startswith("  ")]
    assert plan == [["done,", "kept", "p000"], ["would", "run", "p001"]]
    assert "would run 1 of 2 points" in out


def test_snakemake_is_quiet_unless_verbose_and_its_errors_print(tmp_path, capfd, monkeypatch):
    """Snakemake's output (here a stand-in printing a banner) goes to <output>/snakemake.log and
    not to the terminal; its error lines print when it fails (without the chatter), all of it
    with verbose=True; the quiet options reach Snakemake."""
    import dynode.sweep.run as run_mod
    from dynode.sweep import run_sweep

    path = _sweep(tmp_path, grid={"training.seed": [0]})
    monkeypatch.chdir(tmp_path)
    seen = []
    script = ("import sys; print('SNAKEMAKE\\n=========\\nBuilding DAG of jobs...'); "
              "print('WorkflowError: something broke', file=sys.stderr); sys.exit(int(sys.argv[1]))")
    real = run_mod._snakemake_cmd

    def cmd(out, workdir, cores, dry_run, verbose, args):
        seen.append(run_mod.QUIET[0] in real(out, workdir, cores, dry_run, verbose, args))
        return [sys.executable, "-c", script, "1" if "fail" in (args or []) else "0"]

    monkeypatch.setattr(run_mod, "_snakemake_cmd", cmd)
    run_sweep(path)
    out, err = capfd.readouterr()
    assert "SNAKEMAKE" not in out + err and "WorkflowError" not in out + err
    assert "WorkflowError: something broke" in (tmp_path / "out" / "snakemake.log").read_text()
    assert "point p000 did not finish" in err and ".." not in err
    run_sweep(path, snakemake_args=["fail"])
    out, err = capfd.readouterr()
    assert "Snakemake exited with status 1:\nSNAKEMAKE\n=========\nWorkflowError: something broke" in err
    assert "Building DAG" not in out + err and "SNAKEMAKE" not in out
    run_sweep(path, verbose=True)
    out, err = capfd.readouterr()
    assert "SNAKEMAKE" in out and "WorkflowError" in err
    assert seen == [True, True, False]


def _figure_lines(monkeypatch, df, keys):
    import matplotlib.pyplot as plt

    from dynode.sweep.collect import plot_summary

    figs = []
    monkeypatch.setattr(plt, "close", figs.append)
    assert plot_summary(df, keys, "val_acc", Path(monkeypatch.tmp) / "f.png") is not None
    return [ln for ln in figs[0].axes[0].get_lines()]


@pytest.mark.parametrize("x, joined", [(["full", "self", "depthpointwise"], False), ([0.001, 0.003, 0.01], True)])
def test_summary_figure_joins_numeric_values_only(tmp_path, monkeypatch, x, joined):
    """Recurrence types are categories: their points are markers, never joined by a line (two
    seeds side by side, not on top of each other); a numeric key (lr) is drawn as a line."""
    import pandas as pd

    monkeypatch.tmp = tmp_path
    rows = [{"point": f"p{i}{s}", "k": v, "training.seed": s, "status": "done", "val_acc": 0.5 + 0.1 * i + 0.01 * s}
            for i, v in enumerate(x) for s in (0, 1)]
    lines = _figure_lines(monkeypatch, pd.DataFrame(rows), ["k", "training.seed"])
    assert len(lines) == 2 and all(len(ln.get_xdata()) == 3 for ln in lines)
    assert all((ln.get_linestyle() not in ("None", "", " ")) == joined for ln in lines)
    xs = [list(ln.get_xdata()) for ln in lines]
    if joined:
        assert xs[0] == xs[1] == x
    else:  # each category's two seeds apart, both near the category's tick
        assert all(abs(a - b) > 0.1 and abs(a - i) < 0.5 and abs(b - i) < 0.5 for i, (a, b) in enumerate(zip(*xs)))
