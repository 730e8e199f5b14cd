"""Parameter sweeps on Snakemake: a base run config plus a grid (or list) of overrides.

A sweep file::

    base: base.yaml                 # a run config (path relative to this file) or a mapping
    output: sweeps/recurrence       # default: beside the sweep file, <its name>-out
    grid:                           # every combination (or `points:` a list of override mappings)
      model.options.recurrence_type: [full, self]
      training.seed: [0, 1]
    steps: [train]                  # per point: train, then optionally experiment (+ analysis)

expands into one run folder per point, ``<output>/points/pNNN/`` holding its full
``config.yaml``; Snakemake runs the points (locally with ``--cores N``, on a cluster with its
executor plugins: ``dynode sweep SWEEP.yaml -- --executor slurm --jobs 50``). A point is done
when its ``result.json`` exists and was computed with the point's config: re-running resumes
(done points are not recomputed, a killed training continues from its checkpoint), a failed
point is reported and does not stop the others (``--keep-going``). The summary collects every
point: ``sweep_summary.csv``, ``sweep_summary.nc`` (an xarray Dataset with one dimension per
swept key for a grid) and ``sweep_summary.png`` (the metric per point). Snakemake is an
optional extra: ``pip install -e ".[sweep]"``.

Safety of the output folder (checked before anything in it is changed):

* **One sweep at a time.** While ``dynode sweep`` runs (also ``--dry-run`` and ``--collect``)
  it owns the folder through ``<output>/sweep.owner.json`` (created atomically with
  ``O_CREAT | O_EXCL``; JSON: pid, host, start time, sweep file, grid, and the pid of its
  Snakemake), removed again when it ends, by an error too. A second sweep into the folder is a
  :class:`SweepLockedError` naming that owner (CLI exit 2). An owner that is provably gone (same
  host, and neither it nor its Snakemake runs any more: killed, crashed, rebooted) is taken over
  with a note on stderr. An owner on another host cannot be checked from here: once sure that
  sweep has ended, delete ``sweep.owner.json`` by hand.
* **One sweep per folder.** ``sweep.json`` records the sweep's steps and, per point, the
  sha256 fingerprint of its whole resolved config (:func:`point_fingerprint`). Running the same
  sweep again resumes it; a sweep whose points, configs or steps differ (another grid, an edited
  base config), a folder written by an older dynode (no fingerprints) and a non-empty folder
  that is not a sweep's are refused (:class:`~dynode.errors.ConfigurationError` naming what
  differs): give the new sweep its own ``output:`` folder, or move the old one aside. There is
  no option to mix two sweeps in one folder, by design.
* **No result of another config.** A point's checkpoints hold its resolved config, and resuming
  refuses a ``last.pt`` of another one (:meth:`dynode.train.Trainer.resume`, naming the keys
  that differ); ``result.json`` holds the fingerprint, and one of another config is not
  counted as done (``stale`` in the summary) nor overwritten: the point refuses to run until
  its folder is moved aside. Nothing is deleted to restart a point.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from dynode import analysis
from dynode.archive import LEASE_ATTR, lease_state, boot_id as _boot_id, proc_stat as _proc_stat
from dynode.config import RunConfig, load_config, model_and_data, run_config, run_record
from dynode.datafile import load_yaml, read_text
from dynode.errors import ConfigurationError, DynodeError, describe_validation_error
from dynode.solver_config import FrozenConfig
from dynode.train import Trainer, config_diff, run_fingerprint

__all__ = ["SweepConfig", "SweepLockedError", "load_sweep", "expand", "check_key", "write_points", "run_sweep",
           "collect", "run_point", "point_record", "point_fingerprint", "acquire_folder", "release_folder",
           "OWNER_FILE"]

OWNER_FILE = "sweep.owner.json"
"""The file in a sweep's output folder that names the ``dynode sweep`` owning it (JSON)."""


class SweepLockedError(DynodeError):
    """Another ``dynode sweep`` owns the output folder (``sweep.owner.json``).

    Attributes
    ----------
    owner : the owner file's content (pid, host, started, sweep_file, sweep, ...).
    """

    def __init__(self, message: str, *, owner: dict):
        super().__init__(message)
        self.owner = owner

INSTALL_HINT = 'dynode sweep runs its points with Snakemake: pip install "snakemake>=8" (or pip install -e ".[sweep]")'


class SweepConfig(FrozenConfig):
    """A sweep: ``base`` run config, ``grid`` or ``points`` of dotted-key overrides, ``steps``."""

    base: str | dict[str, Any] = Field(default_factory=dict)
    output: str | None = None
    grid: dict[str, list[Any]] | None = None
    points: list[dict[str, Any]] | None = None
    steps: list[Literal["train", "experiment"]] = Field(default_factory=lambda: ["train"])
    metric: str = Field("val_acc", description="the metric the summary figure plots")

    @model_validator(mode="after")
    def _one_kind(self):
        if (self.grid is None) == (self.points is None):
            raise ValueError("give grid (every combination) or points (a list of overrides), exactly one")
        if self.grid is not None:
            if not self.grid:
                raise ValueError("grid is empty: give at least one key with a list of values")
            empty = [k for k, v in self.grid.items() if not v]
            if empty:
                raise ValueError(f"grid keys {empty} have no values (an empty grid runs nothing)")
        elif not self.points:
            raise ValueError("points is empty: give at least one mapping of overrides")
        if not self.steps or self.steps[0] != "train":
            raise ValueError("steps start with train (experiment then uses its weights)")
        return self

    @property
    def keys(self) -> list[str]:
        if self.grid is not None:
            return list(self.grid)
        return list(dict.fromkeys(k for p in self.points for k in p))


def load_sweep(path) -> tuple[SweepConfig, dict, Path]:
    """``(sweep, base config dict, output folder)`` from a sweep file; every key and every
    point's config is checked (:func:`expand`) before anything runs."""
    path = Path(path)
    data = load_yaml(read_text(path, "sweep file"), str(path)) or {}
    try:
        sweep = SweepConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigurationError(f"{path}: {describe_validation_error(exc)}") from None
    if isinstance(sweep.base, str):
        base_path = (path.parent / sweep.base)
        if not base_path.is_file() and not base_path.is_dir():
            raise FileNotFoundError(f"{path}: base config {base_path} does not exist")
        base = load_yaml(read_text(base_path, "base config"), str(base_path)) or {}
        if not isinstance(base, dict):
            raise ConfigurationError(f"{base_path}: the top level must be a mapping of sections (model, data, ...), "
                                     f"not a {type(base).__name__}")
    else:
        base = dict(sweep.base)
    out = Path(sweep.output) if sweep.output else path.parent / f"{path.stem}-out"
    if not out.is_absolute() and sweep.output:
        out = path.parent / out
    return sweep, base, out


def check_key(key: str, base: dict | None = None) -> None:
    """A dotted key must name a run-config field (``training.seed``), or an option of the
    model's builder (``model.options.recurrence_type``)."""
    parts = key.split(".")
    model: Any = RunConfig
    for i, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            where = ".".join(parts[:i]) or "the run config"
            known = sorted(fields) if fields else []
            raise ConfigurationError(f"sweep key {key!r}: {part!r} is not a key of {where}"
                                     f"{f' (keys: {known})' if known else ''}")
        if ".".join(parts[:i + 1]) == "model.options":
            if i + 1 != len(parts) - 1:
                raise ConfigurationError(f"sweep key {key!r}: model.options takes one option name (model.options.NAME)")
            cfg = run_config({"model": (base or {}).get("model", {})}).model
            builder = cfg.builder()
            if builder is None:
                raise ConfigurationError(f"sweep key {key!r}: the base model is a spec file, which has no options")
            params = inspect.signature(builder).parameters
            if parts[-1] not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
                raise ConfigurationError(f"sweep key {key!r}: {cfg.label}() has no option {parts[-1]!r}; it takes "
                                         f"{list(params)}")
            return
        ann = fields[part].annotation
        model = _model_class(ann)
        if model is None and i < len(parts) - 1:
            raise ConfigurationError(f"sweep key {key!r}: {'.'.join(parts[:i + 1])} is a value, not a section")


def _model_class(ann):
    import typing

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in typing.get_args(ann):
        m = _model_class(arg)
        if m is not None:
            return m
    return None


def _set(d: dict, key: str, value) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        if not isinstance(d.get(p), dict):
            d[p] = {}
        d = d[p]
    d[parts[-1]] = value


def expand(sweep: SweepConfig, base: dict) -> list[dict]:
    """The points: ``[{"id", "overrides", "config"}]``, each config validated."""

    for key in sweep.keys:
        check_key(key, base)
    if sweep.grid is not None:
        keys = list(sweep.grid)
        combos = [dict(zip(keys, vals)) for vals in itertools.product(*sweep.grid.values())]
    else:
        combos = [dict(p) for p in sweep.points]
    points = []
    for i, over in enumerate(combos):
        cfg = copy.deepcopy(base)
        for k, v in over.items():
            _set(cfg, k, v)
        pid = f"p{i:03d}"
        try:
            resolved = run_config(cfg)
        except ValidationError as exc:
            raise ConfigurationError(f"sweep point {pid} {over}: {describe_validation_error(exc)}") from None
        points.append({"id": pid, "overrides": over, "config": cfg, "fingerprint": point_fingerprint(resolved)})
    return points


def point_record(cfg: RunConfig) -> dict:
    """A point's whole resolved config as JSON data (:func:`dynode.config.run_record`: without
    ``output``, where the point's folder lies does not change its results): what its
    checkpoints record."""
    return run_record(cfg)


def point_fingerprint(cfg: RunConfig) -> str:
    """sha256 of the canonical JSON of :func:`point_record`: the identity of a point's results."""
    return run_fingerprint(point_record(cfg))


# -- owning the output folder ----------------------------------------------------------------
_OWNED: set[str] = set()  # tokens of the folders this process owns now


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _proc_id(pid: int) -> dict:
    stat = _proc_stat(pid)
    return {"pid": pid, "pid_start": None if stat is None else stat[1]}


def _read_owner(path: Path, *, wait_s: float = 1.0) -> dict | None:
    """The owner file's content; None when there is none. A file just created by another
    sweep may be empty for an instant: it is read again for up to ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            owner = json.loads(text)
            if (isinstance(owner, dict) and isinstance(owner.get("pid"), int) and owner["pid"] > 0
                    and isinstance(owner.get("host"), str)):
                return owner
        except ValueError:
            pass  # being written: read again below, then judge it
        if time.monotonic() >= deadline:
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                return None
            if not text.strip() and age > 10 * wait_s:  # created, then killed before it was written
                return {"pid": -1, "host": socket.gethostname(), "token": None, "empty": True}
            raise SweepLockedError(f"{path} does not name a sweep (not JSON with a pid and a host); if no dynode "
                                   "sweep runs into this folder, delete it and run again", owner={})
        time.sleep(0.05)


def _gone(owner: dict) -> bool:
    """The owner is provably not running: on this host, and neither its process nor its
    Snakemake is alive (a pid now used by a later process counts as gone)."""
    if owner.get("empty"):
        return True
    if owner.get("host") != socket.gethostname():
        return False
    if owner.get("pid") == os.getpid():
        return owner.get("token") not in _OWNED
    procs = [owner] + ([owner["child"]] if isinstance(owner.get("child"), dict) else [])
    for proc in procs:
        try:
            lease = {"pid": int(proc["pid"]), "host": owner["host"], "boot_id": owner.get("boot_id"),
                     "pid_start": proc.get("pid_start"), "heartbeat": time.time()}
        except (KeyError, TypeError, ValueError):
            return False  # cannot tell
        state = lease_state({LEASE_ATTR: lease})
        if state is not None and not state.dead:
            return False
    return True


def _describe_owner(owner: dict) -> str:
    what = owner.get("sweep")
    return (f"pid {owner.get('pid')} on host {owner.get('host')!r}, started {owner.get('started', '?')} "
            f"(sweep file {owner.get('sweep_file', '?')}{f', {_short(what)}' if what else ''})")


def _short(x, limit: int = 200) -> str:
    text = json.dumps(x, separators=(",", ":"), default=str) if not isinstance(x, str) else x
    return text if len(text) <= limit else text[:limit] + "..."


def acquire_folder(out: Path, sweep_file, what: dict | None = None) -> dict:
    """Own ``out`` for this process: create ``out/sweep.owner.json`` atomically (``O_CREAT |
    O_EXCL``) holding pid, host, start time, ``sweep_file`` and ``what`` (the grid or points).
    Returns the owner record (give it to :func:`release_folder`). A live owner is a
    :class:`SweepLockedError` naming it; a gone one (see module docstring) is taken over."""
    path = Path(out) / OWNER_FILE
    me = {**_proc_id(os.getpid()), "host": socket.gethostname(), "boot_id": _boot_id(),
          "token": uuid.uuid4().hex, "started": _now(), "sweep_file": str(Path(sweep_file).resolve()),
          "sweep": what, "child": None}
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _read_owner(path)
            if held is None:
                continue  # released meanwhile
            if not _gone(held):
                raise _busy(out, held, sweep_file)
            _break(path, held)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(me, indent=1))
        _OWNED.add(me["token"])
        return me
    raise SweepLockedError(f"could not take sweep folder {out}: other sweeps keep taking it; run one sweep "
                           "into a folder at a time", owner={})


def _busy(out: Path, held: dict, sweep_file) -> SweepLockedError:
    path = Path(out) / OWNER_FILE
    return SweepLockedError(
        f"sweep folder {out} is in use by {_describe_owner(held)}; refusing to run {sweep_file} there (nothing "
        "was changed): wait for that sweep to end, or give this one another `output:` folder; if that sweep is "
        f"no longer running (e.g. it ran on another host), delete {path} and run again", owner=held)


def _token(path: Path) -> str | None:
    """The token in an owner file, None if it has none (empty, being written, not JSON)."""
    try:
        got = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    return got.get("token") if isinstance(got, dict) else None


def _break(path: Path, held: dict) -> None:
    """Take a gone owner's file away (renamed first, so that a sweep that took it meanwhile
    gets it back)."""
    aside = path.with_name(f"{path.name}.{uuid.uuid4().hex}.gone")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if _token(aside) != held.get("token"):  # another sweep's new file: put it back
        try:
            os.link(aside, path)
        finally:
            aside.unlink()
        return
    aside.unlink()
    print(f"dynode sweep: {path.parent}: taking over from a sweep that is no longer running "
          f"({_describe_owner(held)})", file=sys.stderr, flush=True)


def _update_owner(out: Path, owner: dict) -> None:
    """Rewrite the owner file (same owner, e.g. with its Snakemake's pid) atomically."""
    path = Path(out) / OWNER_FILE
    if _token(path) != owner["token"]:
        print(f"dynode sweep: {path} no longer names this sweep (removed or replaced by hand); left as it is",
              file=sys.stderr, flush=True)
        return
    tmp = path.with_name(f"{path.name}.{owner['token']}.tmp")
    tmp.write_text(json.dumps(owner, indent=1))
    os.replace(tmp, path)


def release_folder(out: Path, owner: dict) -> None:
    """Give ``out`` up: remove the owner file if it is still ``owner``'s."""
    _OWNED.discard(owner["token"])
    path = Path(out) / OWNER_FILE
    if _token(path) == owner["token"]:
        path.unlink()
    else:
        print(f"dynode sweep: {path} no longer names this sweep (removed or replaced by hand); left as it is",
              file=sys.stderr, flush=True)


# -- one sweep per folder --------------------------------------------------------------------
def _definition(sweep: SweepConfig) -> dict:
    return {"grid": sweep.grid} if sweep.grid is not None else {"points": sweep.points}


def _check_folder(out: Path, path: Path, sweep: SweepConfig, points: list[dict]) -> None:
    """Refuse an output folder that holds anything but this sweep (module docstring)."""
    info_path = out / "sweep.json"
    if not info_path.is_file():
        others = sorted(p.name for p in out.iterdir() if not p.name.startswith(OWNER_FILE)) if out.is_dir() else []
        if others:
            raise ConfigurationError(f"output folder {out} is not empty ({', '.join(others[:5])}"
                                     f"{', ...' if len(others) > 5 else ''}) and holds no sweep.json: it is not a "
                                     f"sweep's folder; give the sweep a folder of its own (`output:` in {path})")
        return
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{info_path} does not read as JSON ({exc}); move {out} aside, or give the sweep "
                                 f"another `output:` folder") from None
    old = info.get("fingerprints") if isinstance(info, dict) else None
    if not isinstance(old, dict):
        raise ConfigurationError(f"output folder {out} holds a sweep written by an older dynode, which did not "
                                 "record its points' configs, so its results cannot be shown to belong to this "
                                 f"sweep; move {out} aside (or give {path} another `output:` folder) and run again")
    new = {p["id"]: p["fingerprint"] for p in points}
    steps = list(sweep.steps)
    if old == new and info.get("steps") == steps:
        return
    what = []
    if info.get("steps") != steps:
        what.append(f"steps {info.get('steps')} -> {steps}")
    added, gone = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    if added or gone:
        what.append(f"{len(old)} -> {len(new)} points")
    changed = [p for p in points if p["id"] in old and old[p["id"]] != p["fingerprint"]]
    if changed:
        first = changed[0]
        try:
            before = point_record(load_config(out / "points" / first["id"] / "config.yaml"))
            diff = config_diff(before, point_record(run_config(first["config"])))
        except (DynodeError, OSError):
            diff = []
        what.append(f"{len(changed)} point(s) have another config (first {first['id']}"
                    f"{': ' + '; '.join(diff[:3]) if diff else ''})")
    raise ConfigurationError(
        f"output folder {out} holds another sweep (sweep file {info.get('sweep_file', '?')}, "
        f"{_short(info.get('definition', '?'))}) than {path} ({_short(_definition(sweep))}): {', '.join(what)}; "
        "a folder holds one sweep, so nothing was changed: give this sweep its own `output:` folder, or move "
        f"{out} aside to run it there")


def _write_if_changed(path: Path, text: str) -> None:
    """Keep the file (and its mtime, which Snakemake compares) when the content is the same."""
    if path.is_file() and path.read_text() == text:
        return
    path.write_text(text)


def write_points(points: list[dict], out: Path, steps: list[str]) -> None:
    for p in points:
        d = out / "points" / p["id"]
        d.mkdir(parents=True, exist_ok=True)
        cfg = dict(p["config"])
        cfg["output"] = str(d.resolve())
        _write_if_changed(d / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
        _write_if_changed(d / "point.json", json.dumps({"id": p["id"], "overrides": p["overrides"],
                                                       "steps": steps}, indent=1))


def _snakefile(points: list[dict], out: Path, cwd: Path) -> str:
    cmd = (f"cd {shlex.quote(str(cwd))} && {shlex.quote(sys.executable)} -m dynode.sweep point "
           f"{shlex.quote(str(out.resolve()))}/points/{{wildcards.p}} > {shlex.quote(str(out.resolve()))}/{{log}} 2>&1")
    cmd = cmd.replace("{", "{{").replace("}", "}}").replace("{{wildcards.p}}", "{wildcards.p}") \
        .replace("{{log}}", "{log}")
    ids = [p["id"] for p in points]
    return f'''# generated by `dynode sweep`; do not edit (it is rewritten on every run)
POINTS = {ids!r}

rule all:
    input: expand("points/{{p}}/result.json", p=POINTS)

rule point:
    input: "points/{{p}}/config.yaml"
    output: "points/{{p}}/result.json"
    log: "points/{{p}}/log.txt"
    threads: 1
    shell: {cmd!r}
'''


def run_sweep(path, *, cores: int = 1, snakemake_args: list[str] | None = None, dry_run: bool = False,
              collect_only: bool = False) -> dict:
    """Expand, write and run the sweep in ``path`` with Snakemake; then collect. Returns
    ``{"out", "points", "failed", "returncode"}``. Everything is checked before the output
    folder is changed: the sweep file, every point's config, that no other sweep runs into the
    folder (:class:`SweepLockedError`) and that the folder holds no other sweep (module
    docstring); the folder is owned until this returns or raises."""
    import importlib.util

    sweep, base, out = load_sweep(path)
    points = expand(sweep, base)
    if not collect_only and importlib.util.find_spec("snakemake") is None:
        raise ConfigurationError(INSTALL_HINT)
    held = _read_owner(out / OWNER_FILE)
    if held is not None and not _gone(held):  # the common refusal, before anything is created
        raise _busy(out, held, path)
    _check_folder(out, Path(path), sweep, points)
    out.mkdir(parents=True, exist_ok=True)
    owner = acquire_folder(out, path, _definition(sweep))
    try:
        _check_folder(out, Path(path), sweep, points)  # again: another sweep may have run meanwhile
        return _run_owned(Path(path), sweep, points, out, owner, cores=cores, snakemake_args=snakemake_args,
                          dry_run=dry_run, collect_only=collect_only)
    finally:
        release_folder(out, owner)


def _run_owned(path: Path, sweep: SweepConfig, points: list[dict], out: Path, owner: dict, *, cores: int,
               snakemake_args: list[str] | None, dry_run: bool, collect_only: bool) -> dict:
    # sweep.json first: it claims the folder for this sweep before any point is written
    (out / "sweep.json").write_text(json.dumps({
        "keys": sweep.keys, "grid": sweep.grid is not None, "metric": sweep.metric,
        "points": [p["id"] for p in points], "steps": list(sweep.steps),
        "fingerprints": {p["id"]: p["fingerprint"] for p in points},
        "sweep_file": str(path.resolve()), "definition": _definition(sweep)}, indent=1))
    write_points(points, out, list(sweep.steps))
    rc = 0
    if not collect_only:
        _write_if_changed(out / "Snakefile", _snakefile(points, out, Path.cwd()))
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(out / "Snakefile"), "--directory", str(out),
               "--cores", str(cores), "--keep-going", "--rerun-incomplete", "--nolock",
               "--rerun-triggers", "mtime", *(["--dry-run"] if dry_run else []), *(snakemake_args or [])]
        print("running: " + " ".join(shlex.quote(c) for c in cmd), flush=True)
        rc = _snakemake(cmd, out, owner)
        if dry_run:
            return {"out": out, "points": points, "failed": [], "returncode": rc}
    summary = collect(out)
    failed = [r["point"] for r in summary["rows"] if r["status"] != "done"]
    for r in summary["rows"]:
        if r["status"] == "stale":
            print(f"point {r['point']}: its result.json was computed with another config, so it is not counted; "
                  f"move {out / 'points' / r['point']} aside and run the sweep again to recompute it",
                  file=sys.stderr)
        elif r["status"] != "done":
            print(f"point {r['point']} did not finish: see {out / 'points' / r['point'] / 'log.txt'}",
                  file=sys.stderr)
    return {"out": out, "points": points, "failed": failed, "returncode": rc, **summary}


def _snakemake(cmd: list[str], out: Path, owner: dict) -> int:
    """Run Snakemake; its pid goes into the owner file (a sweep whose ``dynode sweep`` was killed
    while its Snakemake runs on is not gone)."""
    proc = subprocess.Popen(cmd)
    try:
        owner["child"] = _proc_id(proc.pid)
        _update_owner(out, owner)
        return proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def _flat(prefix: str, x, into: dict) -> None:
    if isinstance(x, dict):
        for k, v in x.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, into)
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        into[prefix] = float(x)


def run_point(point_dir) -> dict:
    """Run one point (``python -m dynode.sweep point DIR``): train (resuming a killed run),
    then the experiments and their analysis if asked; writes ``result.json`` last, with the
    fingerprint of the point's config (:func:`point_fingerprint`). A ``result.json`` or
    ``last.pt`` already there that was made with another config is a
    :class:`~dynode.errors.ConfigurationError` before anything runs or is overwritten (move
    the folder aside to recompute the point)."""
    d = Path(point_dir)
    meta = json.loads((d / "point.json").read_text())
    cfg_path = d / "config.yaml"
    cfg = load_config(cfg_path)
    record = point_record(cfg)
    fingerprint = run_fingerprint(record)
    if (d / "result.json").is_file() and _result_fingerprint(d / "result.json") != fingerprint:
        raise ConfigurationError(f"{d / 'result.json'} was computed with another config than {cfg_path} (its "
                                 f"fingerprint differs); refusing to overwrite it: move {d} aside and run the sweep "
                                 "again to recompute this point")
    net, train_data, test = model_and_data(cfg)
    trainer = Trainer(net, cfg.training, log=d / "train.jsonl", checkpoint_dir=d, run_config=record)
    if (d / "last.pt").is_file():  # a killed point continues where it stopped (the same config only)
        trainer.resume(d / "last.pt")
    trainer.fit(train_data, test)
    (d / "config.json").write_text(cfg.model_dump_json(indent=2))
    rows = [json.loads(line) for line in (d / "train.jsonl").read_text().splitlines() if line.strip()]
    metrics: dict[str, float] = {}
    _flat("", rows[-1] if rows else {}, metrics)
    if "experiment" in meta["steps"]:
        cfg = yaml.safe_load(cfg_path.read_text())
        cfg.setdefault("model", {})["weights"] = str((d / "last.pt").resolve())
        exp_cfg = d / "experiment.yaml"
        exp_cfg.write_text(yaml.safe_dump(cfg, sort_keys=False))

        c = load_config(exp_cfg)
        _, test, shape, n_classes = c.data.load(c.training.batch_size)
        net = c.model.build(input_shape=shape, num_classes=n_classes)
        paths = c.experiment.run(net, test, d / "experiments", overwrite=True)
        summary = analysis.analyze(*paths.values()).summary()
        _flat("analysis", summary, metrics)
    result = {"point": meta["id"], "overrides": meta["overrides"], "fingerprint": fingerprint,
              "metrics": metrics}
    tmp = d / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, d / "result.json")
    return result


def _result_fingerprint(path: Path) -> str | None:
    try:
        got = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return got.get("fingerprint") if isinstance(got, dict) else None


def collect(out) -> dict:
    """``sweep_summary.csv``, ``sweep_summary.nc`` and ``sweep_summary.png`` from the points'
    ``result.json`` (a point without one is ``failed`` if its log exists, else ``pending``; one
    whose fingerprint is not the point's in ``sweep.json`` is ``stale``, its metrics left out)."""
    import numpy as np
    import pandas as pd
    import xarray as xr

    out = Path(out)
    info = json.loads((out / "sweep.json").read_text())
    keys, rows = info["keys"], []
    fingerprints = info.get("fingerprints") or {}
    for pid in info["points"]:
        d = out / "points" / pid
        meta = json.loads((d / "point.json").read_text())
        row = {"point": pid, **{k: meta["overrides"].get(k) for k in keys}}
        if (d / "result.json").is_file():
            result = json.loads((d / "result.json").read_text())
            if fingerprints.get(pid) is not None and result.get("fingerprint") == fingerprints[pid]:
                row.update(status="done", **result["metrics"])
            else:
                row["status"] = "stale"
        else:
            row["status"] = "failed" if (d / "log.txt").is_file() else "pending"
        rows.append(row)
    df = pd.DataFrame(rows)
    df.to_csv(out / "sweep_summary.csv", index=False)
    metrics = [c for c in df.columns if c not in ["point", "status", *keys]]
    coords = {k: [_coord(v) for v in df[k]] for k in keys}
    if info["grid"]:
        levels = {k: list(dict.fromkeys(coords[k])) for k in keys}
        shape = tuple(len(v) for v in levels.values())
        data = {m: np.full(shape, np.nan) for m in metrics}
        status = np.full(shape, "pending", dtype=object)
        for i, row in df.iterrows():
            idx = tuple(levels[k].index(coords[k][i]) for k in keys)
            status[idx] = row["status"]
            for m in metrics:
                data[m][idx] = float(row[m]) if pd.notna(row[m]) else np.nan
        ds = xr.Dataset({m: (keys, v) for m, v in data.items()} | {"status": (keys, status.astype(str))},
                        coords=levels)
    else:
        ds = xr.Dataset({m: ("point", df[m].astype(float).to_numpy()) for m in metrics}
                        | {"status": ("point", df["status"].astype(str).to_numpy())},
                        coords={"point": df["point"].to_list(), **{k: ("point", v) for k, v in coords.items()}})
    ds.attrs.update(swept_keys=json.dumps(keys), metric=info["metric"])
    ds.to_netcdf(out / "sweep_summary.nc")
    png = plot_summary(df, keys, info["metric"], out / "sweep_summary.png")
    return {"rows": rows, "csv": out / "sweep_summary.csv", "dataset": out / "sweep_summary.nc", "figure": png}


def _coord(v):
    """A netCDF-friendly coordinate value (bools, None, containers and integers beyond int64
    become strings)."""
    if v is None or isinstance(v, (bool, list, dict)) or (isinstance(v, int) and not -2**63 <= v < 2**63):
        return str(v)
    return v


_UNITS = {"acc": "fraction correct", "loss": "cross-entropy", "time_s": "s", "lr": "learning rate"}
_MS_WORDS = ("tau", "delay", "dt", "t_end", "onset", "duration", "idle", "reaction_time")


def _label(key: str) -> str:
    last = key.split(".")[-1]
    if any(w == last or last.endswith("_" + w) or last.startswith(w + "_") for w in _MS_WORDS):
        return f"{key} (ms)"
    return key


def plot_summary(df, keys: list[str], metric: str, path) -> Path | None:
    """The metric of every point against the first swept key, one line per value of the
    others; failed points are left out (and named in the title)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if metric not in df.columns:
        return None
    x_key, rest = keys[0], keys[1:]
    xs = list(dict.fromkeys(_coord(v) for v in df[x_key]))
    numeric = all(isinstance(v, (int, float)) for v in xs)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    groups = df.groupby([df[k].map(_coord) for k in rest], sort=False) if rest else [((), df)]
    for label, g in groups:
        g = g[g["status"] == "done"]
        if g.empty:
            continue
        label = label if isinstance(label, tuple) else (label,)
        pos = [(v if numeric else xs.index(v)) for v in g[x_key].map(_coord)]
        order = sorted(range(len(pos)), key=lambda i: pos[i])
        ax.plot([pos[i] for i in order], [g[metric].iloc[i] for i in order], "o-",
                label=", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(rest, label)) or None)
    if not numeric:
        ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_xlabel(_label(x_key))
    unit = next((u for k, u in _UNITS.items() if metric.endswith(k)), None)
    ax.set_ylabel(f"{metric} ({unit})" if unit else metric)
    failed = df.loc[df["status"] != "done", "point"].tolist()
    ax.set_title(f"sweep: {metric} per point" + (f" (not finished: {', '.join(failed)})" if failed else ""),
                 fontsize=10)
    if rest:
        ax.legend(title=", ".join(k.split(".")[-1] for k in rest), fontsize=8, title_fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


if __name__ == "__main__":  # python -m dynode.sweep point DIR (what the Snakefile runs)
    if len(sys.argv) != 3 or sys.argv[1] != "point":
        print("usage: python -m dynode.sweep point POINT_DIR", file=sys.stderr)
        raise SystemExit(2)
    run_point(sys.argv[2])
