"""A sweep's output folder is safe by default (issue 20): one ``dynode sweep`` at a time owns
it (``sweep.owner.json``), it holds one sweep (a different grid is refused), and no point counts
or resumes results made with another config (fingerprints in ``sweep.json``, ``result.json``
and the checkpoints).

Most tests replace Snakemake by a stand-in (``fake_snakemake``) that writes each point's
``result.json`` as a finished point would, so they check the folder logic in milliseconds; the
ones marked slow run the real thing.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

import dynode.sweep.run as sweep_mod  # where run_sweep calls _snakemake
from dynode.cli import main
from dynode.config import load_config, model_and_data
from dynode.errors import CheckpointError, ConfigurationError, DynodeError
from dynode.sweep import (OWNER_FILE, SweepLockedError, acquire_folder, collect, load_sweep, expand,
                          point_record, release_folder, run_point, run_sweep, write_points)
from dynode.train import Trainer
from test_bad_input import SWEEP, snapshot

BASE = {"model": {"name": "dyrcnn", "options": {"depth": 2, "width": 0.125, "steps": 2}},
        "data": {"name": "generated", "n_train": 8, "n_test": 8, "size": 8},
        "training": {"epochs": 1, "batch_size": 8}}
HAS_SNAKEMAKE = importlib.util.find_spec("snakemake") is not None


def _sweep(root: Path, name: str = "sweep.yaml", **body) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "base.yaml").write_text(yaml.safe_dump(BASE))
    path = root / name
    path.write_text(yaml.safe_dump({"base": "base.yaml", "output": "out", **body}))
    return path


def fake_snakemake(calls: list):
    """Snakemake's stand-in: every point finishes at once with val_acc 0.5 and the fingerprint
    that ``dynode sweep`` recorded for it (as ``run_point`` writes it)."""

    def run(cmd, out, owner):
        calls.append(out)
        info = json.loads((out / "sweep.json").read_text())
        for pid, fp in info["fingerprints"].items():
            meta = json.loads((out / "points" / pid / "point.json").read_text())
            (out / "points" / pid / "result.json").write_text(json.dumps(
                {"point": pid, "overrides": meta["overrides"], "fingerprint": fp, "metrics": {"val_acc": 0.5}}))
        return 0

    return run


@pytest.fixture
def snake(monkeypatch):
    calls: list = []
    monkeypatch.setattr(sweep_mod, "_snakemake", fake_snakemake(calls), raising=False)
    return calls


def _owner_file(out: Path, pid: int, host: str | None = None, **extra) -> dict:
    owner = {"pid": pid, "host": host or socket.gethostname(), "started": "2030-01-02T03:04:05Z",
             "sweep_file": "/elsewhere/other-sweep.yaml", "sweep": {"grid": {"training.seed": [7, 8]}},
             "token": "t0", **extra}
    out.mkdir(parents=True, exist_ok=True)
    (out / OWNER_FILE).write_text(json.dumps(owner))
    return owner


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# -- finding 1: one sweep at a time owns the folder ------------------------------------------
def test_a_second_sweep_into_a_running_sweeps_folder_is_refused_naming_the_owner(tmp_path, snake, capsys):
    """A live owner (another process on this host) makes ``dynode sweep`` exit 2 before it
    changes anything, naming the owner's pid, host, start time and sweep file."""
    path = _sweep(tmp_path, grid={"training.seed": [0, 1]})
    out = tmp_path / "out"
    owner = subprocess.Popen(["sleep", "60"])
    try:
        _owner_file(out, owner.pid)
        before = snapshot(tmp_path)
        assert main(["sweep", str(path)]) == 2
        assert main(["sweep", str(path), "--dry-run"]) == 2
        assert main(["sweep", str(path), "--collect"]) == 2
        err = capsys.readouterr().err
        assert snapshot(tmp_path) == before  # nothing written, not even the owner file
        assert not snake
        line = err.splitlines()[0]
        for part in (f"pid {owner.pid}", repr(socket.gethostname()), "2030-01-02T03:04:05Z",
                     "/elsewhere/other-sweep.yaml", "training.seed", f"delete {out / OWNER_FILE}"):
            assert part in line, (part, line)
    finally:
        owner.kill()
        owner.wait()


def test_the_owner_file_is_json_held_while_running_and_released_after(tmp_path, snake):
    """While a sweep runs the folder's owner file names it (JSON); a second sweep then is a
    SweepLockedError; the file is gone when the sweep returns."""
    path = _sweep(tmp_path, grid={"training.seed": [0, 1]})
    out = tmp_path / "out"
    seen = {}

    def inner(cmd, out_, owner):
        seen["owner"] = json.loads((out_ / OWNER_FILE).read_text())
        with pytest.raises(SweepLockedError, match=f"pid {os.getpid()}") as exc:
            run_sweep(_sweep(tmp_path, "other.yaml", grid={"training.seed": [5]}))
        seen["error"] = exc.value
        return fake_snakemake(snake)(cmd, out_, owner)

    sweep_mod._snakemake = inner
    res = run_sweep(path)
    assert res["failed"] == [] and len(snake) == 1
    owner = seen["owner"]
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    assert owner["sweep_file"] == str(path.resolve()) and owner["sweep"] == {"grid": {"training.seed": [0, 1]}}
    assert owner["started"].endswith("Z")
    assert seen["error"].owner["token"] == owner["token"]
    assert not (out / OWNER_FILE).exists()


def test_the_owner_file_is_created_exclusively(tmp_path):
    """Two owners in one process: the second create fails (O_EXCL), the first still holds it."""
    out = tmp_path / "out"
    out.mkdir()
    first = acquire_folder(out, tmp_path / "a.yaml")
    try:
        with pytest.raises(SweepLockedError, match="a.yaml"):
            acquire_folder(out, tmp_path / "b.yaml")
        assert json.loads((out / OWNER_FILE).read_text())["token"] == first["token"]
    finally:
        release_folder(out, first)
    assert not (out / OWNER_FILE).exists()
    release_folder(out, acquire_folder(out, tmp_path / "b.yaml"))  # free again


@pytest.mark.parametrize("error", [RuntimeError("snakemake broke"), KeyboardInterrupt()])
def test_the_folder_is_released_when_the_sweep_fails(tmp_path, snake, error):
    path = _sweep(tmp_path, grid={"training.seed": [0]})

    def broken(cmd, out, owner):
        raise error

    sweep_mod._snakemake = broken
    with pytest.raises(type(error)):
        run_sweep(path)
    assert not (tmp_path / "out" / OWNER_FILE).exists()
    sweep_mod._snakemake = fake_snakemake(snake)
    assert run_sweep(path)["failed"] == []


def test_a_dead_owner_on_this_host_is_taken_over(tmp_path, snake, capsys):
    """An owner whose process (and Snakemake) is gone, as a kill -9 leaves it, is stale: the
    next sweep says so and takes the folder."""
    path = _sweep(tmp_path, grid={"training.seed": [0, 1]})
    assert main(["sweep", str(path)]) == 0
    _owner_file(tmp_path / "out", _dead_pid(), child={"pid": _dead_pid(), "pid_start": None})
    assert main(["sweep", str(path)]) == 0
    err = capsys.readouterr().err
    assert "taking over from a sweep that is no longer running" in err
    assert len(snake) == 2
    assert not (tmp_path / "out" / OWNER_FILE).exists()


def test_an_owner_whose_snakemake_still_runs_is_not_stale(tmp_path, snake, capsys):
    """`dynode sweep` killed while its Snakemake runs on: the folder is still in use."""
    path = _sweep(tmp_path, grid={"training.seed": [0]})
    child = subprocess.Popen(["sleep", "60"])
    try:
        _owner_file(tmp_path / "out", _dead_pid(), child={"pid": child.pid, "pid_start": None})
        assert main(["sweep", str(path)]) == 2
        assert "is in use by" in capsys.readouterr().err
    finally:
        child.kill()
        child.wait()


def test_an_owner_on_another_host_is_refused_until_its_file_is_deleted(tmp_path, snake, capsys):
    path = _sweep(tmp_path, grid={"training.seed": [0]})
    out = tmp_path / "out"
    _owner_file(out, _dead_pid(), host="node-17.cluster.example")
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert "node-17.cluster.example" in err and f"delete {out / OWNER_FILE}" in err
    (out / OWNER_FILE).unlink()  # the documented way, once that sweep is known to be gone
    assert main(["sweep", str(path)]) == 0


def test_an_unreadable_owner_file_is_refused(tmp_path, snake, capsys):
    path = _sweep(tmp_path, grid={"training.seed": [0]})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / OWNER_FILE).write_text("{not json")
    assert main(["sweep", str(path)]) == 2
    assert "does not name a sweep" in capsys.readouterr().err


# -- finding 1: one sweep per folder ---------------------------------------------------------
def test_a_different_grid_into_a_finished_sweeps_folder_is_refused(tmp_path, snake, capsys):
    """The issue's case: sweep A finishes, sweep B (another grid, same output) used to run too
    and replace A's summary; now B exits 2 naming both grids and the differing value, and A's
    folder is untouched."""
    a = _sweep(tmp_path, "a.yaml", grid={"training.seed": [0, 1]})
    b = _sweep(tmp_path, "b.yaml", grid={"training.seed": [2, 3]})
    assert main(["sweep", str(a)]) == 0
    before = snapshot(tmp_path)
    for argv in (["sweep", str(b)], ["sweep", str(b), "--collect"], ["sweep", str(b), "--dry-run"]):
        assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert snapshot(tmp_path) == before
    assert len(snake) == 1
    assert str(a.resolve()) in err and "[0,1]" in err and "[2,3]" in err
    assert "training.seed: 0 -> 2" in err and "own `output:` folder" in err
    with open(tmp_path / "out" / "sweep_summary.csv") as fh:
        assert [r["training.seed"] for r in csv.DictReader(fh)] == ["0", "1"]


@pytest.mark.parametrize("change, what", [
    ({"grid": {"training.seed": [0, 1, 2]}}, "2 -> 3 points"),
    ({"grid": {"training.seed": [0, 1]}, "steps": ["train", "experiment"]}, "steps ['train'] -> ['train', 'experiment']"),
    ({"points": [{"training.seed": 0}, {"training.seed": 1, "training.lr": 0.01}]}, "training.lr: 0.001 -> 0.01"),
])
def test_any_other_sweep_is_refused_and_the_same_sweep_resumes(tmp_path, snake, capsys, change, what):
    path = _sweep(tmp_path, grid={"training.seed": [0, 1]})
    assert main(["sweep", str(path)]) == 0
    cfg = tmp_path / "out" / "points" / "p000" / "config.yaml"
    mtime = cfg.stat().st_mtime_ns
    assert main(["sweep", str(path)]) == 0  # the same sweep again: resumes, configs kept as they are
    assert cfg.stat().st_mtime_ns == mtime and len(snake) == 2
    other = _sweep(tmp_path, "other.yaml", **change)
    assert main(["sweep", str(other)]) == 2
    assert what in capsys.readouterr().err


def test_an_edited_base_config_is_another_sweep(tmp_path, snake, capsys):
    path = _sweep(tmp_path, grid={"training.seed": [0, 1]})
    assert main(["sweep", str(path)]) == 0
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**BASE, "training": {"epochs": 2, "batch_size": 8}}))
    assert main(["sweep", str(path)]) == 2
    assert "2 point(s) have another config (first p000: training.epochs: 1 -> 2)" in capsys.readouterr().err


@pytest.mark.parametrize("content, match", [
    ({"notes.txt": "mine"}, "is not empty (notes.txt) and holds no sweep.json"),
    ({"sweep.json": json.dumps({"keys": ["training.seed"], "grid": True, "metric": "val_acc",
                                "points": ["p000"]})}, "written by an older dynode"),
    ({"sweep.json": "{"}, "does not read as JSON"),
])
def test_a_folder_that_is_not_this_sweeps_is_refused(tmp_path, snake, capsys, content, match):
    path = _sweep(tmp_path, grid={"training.seed": [0]})
    (tmp_path / "out").mkdir()
    for name, text in content.items():
        (tmp_path / "out" / name).write_text(text)
    before = snapshot(tmp_path)
    assert main(["sweep", str(path)]) == 2
    assert match in capsys.readouterr().err
    assert snapshot(tmp_path) == before and not snake


# -- finding 2: no results of another config -------------------------------------------------
def _point(tmp_path, **grid) -> tuple[Path, Path]:
    path = _sweep(tmp_path, grid=grid or {"training.seed": [0]})
    sweep, base, out = load_sweep(path)
    out.mkdir()
    write_points(expand(sweep, base), out, ["train"])
    return path, out / "points" / "p000"


def test_a_point_does_not_resume_a_checkpoint_of_another_config(tmp_path):
    """A point trained, then its config changed in a key outside ``training`` (the issue: the
    old check compared only the training settings): resuming refuses, naming the key, and
    neither the checkpoint nor a result is written."""
    _, d = _point(tmp_path)
    run_point(d)
    (d / "result.json").unlink()  # as Snakemake does before it reruns a point
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    cfg["model"]["options"]["steps"] = 3
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    ckpt = (d / "last.pt").stat().st_mtime_ns
    with pytest.raises(CheckpointError, match=r"model\.options\.steps: 2 -> 3.*move it aside"):
        run_point(d)
    assert (d / "last.pt").stat().st_mtime_ns == ckpt
    assert not (d / "result.json").exists()


def test_a_points_result_of_another_config_is_not_overwritten_nor_counted(tmp_path, snake, capsys):
    path = _sweep(tmp_path, grid={"training.seed": [0, 1]})
    out = tmp_path / "out"
    assert main(["sweep", str(path)]) == 0
    res = out / "points" / "p001" / "result.json"
    stale = json.loads(res.read_text())
    stale["fingerprint"] = "0" * 64  # computed with another config
    res.write_text(json.dumps(stale))
    with pytest.raises(ConfigurationError, match=f"computed with another config.*move {out / 'points' / 'p001'} aside"):
        run_point(out / "points" / "p001")
    assert json.loads(res.read_text()) == stale
    summary = collect(out)
    assert [r["status"] for r in summary["rows"]] == ["done", "stale"]
    assert math.isnan(summary["rows"][1].get("val_acc", math.nan))
    del stale["fingerprint"]  # a result.json of an older dynode: not shown to be this config's
    res.write_text(json.dumps(stale))
    assert [r["status"] for r in collect(out)["rows"]] == ["done", "stale"]
    sweep_mod._snakemake = lambda cmd, out_, owner: 0  # Snakemake sees result.json and runs nothing
    assert main(["sweep", str(path)]) == 1
    assert "point p001: its result.json was computed with another config" in capsys.readouterr().err


def test_trainer_resume_compares_the_whole_run_config(tmp_path):
    cfg = load_config(_point(tmp_path)[1] / "config.yaml")
    net, _, _ = model_and_data(cfg)
    run = point_record(cfg)
    Trainer(net, cfg.training, progress=False, run_config=run).save(tmp_path / "a.pt")
    Trainer(net, cfg.training, progress=False).save(tmp_path / "plain.pt")
    Trainer(net, cfg.training, progress=False, run_config=run).resume(tmp_path / "a.pt")
    Trainer(net, cfg.training, progress=False).resume(tmp_path / "a.pt")  # a plain trainer: as before
    other = {**run, "data": {**run["data"], "n_test": 16}}
    with pytest.raises(CheckpointError, match=r"another run config .*data\.n_test: 8 -> 16"):
        Trainer(net, cfg.training, progress=False, run_config=other).resume(tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match="does not record the run config"):
        Trainer(net, cfg.training, progress=False, run_config=run).resume(tmp_path / "plain.pt")


# -- bad sweep files -------------------------------------------------------------------------
GOOD = {"base": "base.yaml", "output": "out",
        "grid": {"training.seed": [0, 1], "model.options.recurrence_type": ["full"]}}
BAD_KEYS = st.sampled_from(["training.sead", "", "model", "model.options", "model.options.a.b", "training.seed.x",
                            "modle.name", "model.options.recurence_type", ".", "training..seed"])
BAD_VALUES = st.sampled_from([[], "full", 3, None, [None], ["abc"], [-1], [1.5], [math.nan], [math.inf],
                              [{"a": 1}], [[1, 2]], [True], [10**30]])
VALUE_KEYS = st.sampled_from(["training.seed", "training.epochs", "training.lr", "model.options.recurrence_type",
                              "data.size", "dt"])
TOP = st.sampled_from([{"grid": None}, {"grid": []}, {"grid": {"training.seed": {"a": 1}}},
                       {"points": [{"training.seed": "x"}]}, {"steps": []}, {"steps": ["experiment"]},
                       {"steps": ["fly"]}, {"metric": 3}, {"output": 5}, {"base": 3}, {"base": ["a"]},
                       {"base": "missing.yaml"}, {"base": "."}, {"gird": {"training.seed": [0]}},
                       {"grid": [1, 2]}])


@st.composite
def bad_sweeps(draw):
    body = json.loads(json.dumps(GOOD))
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["key", "value", "top", "whole"]))
        if kind == "key":
            body["grid"] = {**(body.get("grid") or {}), draw(BAD_KEYS): [1]}
        elif kind == "value":
            body["grid"] = {**(body.get("grid") or {}), draw(VALUE_KEYS): draw(BAD_VALUES)}
        elif kind == "top":
            body.update(draw(TOP))
        else:
            return draw(st.sampled_from([[1, 2], "text", 3, None]))
    return body


_N = iter(range(10**6))


@SWEEP
@given(body=bad_sweeps())
def test_bad_sweep_files_are_refused_before_any_point_runs(tmp_path_factory, monkeypatch, body):
    """Whatever the sweep file says: either a DynodeError (a missing file: FileNotFoundError,
    as everywhere in dynode) before Snakemake starts and with no file written, or a sweep
    that runs; nothing is written outside its output folder either way."""
    root = tmp_path_factory.mktemp(f"bad{next(_N)}")
    (root / "base.yaml").write_text(yaml.safe_dump(BASE))
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(body))
    calls: list = []
    monkeypatch.setattr(sweep_mod, "_snakemake", fake_snakemake(calls), raising=False)
    before = snapshot(root)
    try:
        res = run_sweep(path)
    except (DynodeError, FileNotFoundError) as exc:
        assert str(exc) and not calls
        assert snapshot(root) == before
        return
    assert len(calls) == 1 and res["failed"] == []
    after = {k: v for k, v in snapshot(root).items() if not (k == "out" or k.startswith("out/"))}
    assert after == before


# -- the real thing --------------------------------------------------------------------------
def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "dynode.cli", "sweep", *args]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _here(capfd, path) -> tuple[int, str, str]:
    """``dynode sweep PATH`` in the test's process (one interpreter start less than ``_cli``;
    Snakemake and the points are still processes), from the sweep's folder."""
    code = main(["sweep", str(path)])
    out, err = capfd.readouterr()
    return code, out, err


def _wait_for(cond, proc, timeout=120.0):
    deadline = time.time() + timeout
    while not cond() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert cond(), "timed out"


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SNAKEMAKE, reason="needs snakemake (the sweep extra)")
def test_real_sweeps_into_one_folder(tmp_path, monkeypatch, capfd):
    """Snakemake for real: a sweep into a folder that a running sweep owns exits 2 naming it;
    after the first finishes, another grid is refused and the same sweep resumes without
    recomputing."""
    a = _sweep(tmp_path, "a.yaml", grid={"training.seed": [0]})
    b = _sweep(tmp_path, "b.yaml", grid={"training.seed": [1]})
    out = tmp_path / "out"
    first = subprocess.Popen(_cli(str(a)), cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(lambda: (out / OWNER_FILE).is_file(), first)
        monkeypatch.chdir(tmp_path)
        code, _, err = _here(capfd, b)
        assert code == 2, err
        assert f"pid {first.pid}" in err and "a.yaml" in err
        stdout, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0, stdout[-2000:] + stderr[-2000:]
    assert "1/1 points done" in stdout and not (out / OWNER_FILE).exists()
    result = out / "points" / "p000" / "result.json"
    mtime = result.stat().st_mtime_ns
    code, _, err = _here(capfd, b)
    assert code == 2 and "training.seed: 0 -> 1" in err
    code, _, err = _here(capfd, a)
    assert code == 0, err[-2000:]
    assert result.stat().st_mtime_ns == mtime


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SNAKEMAKE, reason="needs snakemake (the sweep extra)")
def test_real_sweep_killed_hard_is_taken_over(tmp_path, monkeypatch, capfd):
    """kill -9 of `dynode sweep` and its Snakemake leaves the owner file; the next run sees
    it is stale, takes over and finishes."""
    path = _sweep(tmp_path, grid={"training.seed": [0]})
    out = tmp_path / "out"
    proc = subprocess.Popen(_cli(str(path)), cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    owned = lambda: (out / OWNER_FILE).is_file() and '"child": {' in (out / OWNER_FILE).read_text()  # noqa: E731
    try:
        _wait_for(owned, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(0.5)  # the killed processes are reaped
    assert (out / OWNER_FILE).is_file()
    monkeypatch.chdir(tmp_path)
    code, out_text, err = _here(capfd, path)
    assert code == 0, out_text[-2000:] + err[-2000:]
    assert "taking over from a sweep that is no longer running" in err
    assert not (out / OWNER_FILE).exists()
