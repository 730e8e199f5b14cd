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
def test_real_sweep_resumes_after_a_kill(tmp_path):
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
    done = subprocess.run([sys.executable, "-m", "dynode.cli", "sweep", str(path), "--cores", "2"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
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
def test_failed_point_is_reported_and_others_finish(tmp_path):
    """A point that fails (here: an option the builder rejects at build time) is reported; the
    other point still finishes and the summary marks the failure."""
    pytest.importorskip("snakemake")
    path = _sweep(tmp_path, points=[{"model.options.recurrence_type": "full"},
                                    {"model.options.recurrence_type": "no_such_type"}])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "dynode.cli", "sweep", str(path), "--cores", "2"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "point p001 did not finish" in done.stderr
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
