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
when its ``result.json`` exists: re-running resumes (done points are not recomputed, a killed
training continues from its checkpoint), a failed point is reported and does not stop the
others (``--keep-going``). The summary collects every point: ``sweep_summary.csv``,
``sweep_summary.nc`` (an xarray Dataset with one dimension per swept key for a grid) and
``sweep_summary.png`` (the metric per point). Snakemake is an optional extra:
``pip install -e ".[sweep]"``.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dynode.errors import ConfigurationError
from dynode import analysis
from dynode.config import (RunConfig, UniqueKeyLoader, first_images, load_config, model_and_data,
                           run_config)
from dynode.errors import describe_validation_error
from dynode.train import Trainer
from dynode.experiments import groen2022_experiments

__all__ = ["SweepConfig", "load_sweep", "expand", "check_key", "write_points", "run_sweep", "collect",
           "run_point"]

INSTALL_HINT = 'dynode sweep runs its points with Snakemake: pip install "snakemake>=8" (or pip install -e ".[sweep]")'


class SweepConfig(BaseModel):
    """A sweep: ``base`` run config, ``grid`` or ``points`` of dotted-key overrides, ``steps``."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

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
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} does not exist")
    data = yaml.load(path.read_text(), Loader=UniqueKeyLoader) or {}
    try:
        sweep = SweepConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigurationError(f"{path}: {describe_validation_error(exc)}") from None
    if isinstance(sweep.base, str):
        base_path = (path.parent / sweep.base)
        if not base_path.is_file():
            raise FileNotFoundError(f"{path}: base config {base_path} does not exist")
        base = yaml.load(base_path.read_text(), Loader=UniqueKeyLoader) or {}
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
            run_config(cfg)
        except ValidationError as exc:
            raise ConfigurationError(f"sweep point {pid} {over}: {describe_validation_error(exc)}") from None
        points.append({"id": pid, "overrides": over, "config": cfg})
    return points


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
    ``{"out", "points", "failed", "returncode"}``."""
    import importlib.util

    sweep, base, out = load_sweep(path)
    points = expand(sweep, base)
    if not collect_only and importlib.util.find_spec("snakemake") is None:
        raise ConfigurationError(INSTALL_HINT)
    out.mkdir(parents=True, exist_ok=True)
    write_points(points, out, list(sweep.steps))
    (out / "sweep.json").write_text(json.dumps({"keys": sweep.keys, "grid": sweep.grid is not None,
                                                "metric": sweep.metric,
                                                "points": [p["id"] for p in points]}, indent=1))
    rc = 0
    if not collect_only:
        _write_if_changed(out / "Snakefile", _snakefile(points, out, Path.cwd()))
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(out / "Snakefile"), "--directory", str(out),
               "--cores", str(cores), "--keep-going", "--rerun-incomplete", "--nolock",
               "--rerun-triggers", "mtime", *(["--dry-run"] if dry_run else []), *(snakemake_args or [])]
        print("running: " + " ".join(shlex.quote(c) for c in cmd), flush=True)
        rc = subprocess.call(cmd)
        if dry_run:
            return {"out": out, "points": points, "failed": [], "returncode": rc}
    summary = collect(out)
    failed = [r["point"] for r in summary["rows"] if r["status"] != "done"]
    for pid in failed:
        print(f"point {pid} did not finish: see {out / 'points' / pid / 'log.txt'}", file=sys.stderr)
    return {"out": out, "points": points, "failed": failed, "returncode": rc, **summary}


def _flat(prefix: str, x, into: dict) -> None:
    if isinstance(x, dict):
        for k, v in x.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, into)
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        into[prefix] = float(x)


def run_point(point_dir) -> dict:
    """Run one point (``python -m dynode.sweep point DIR``): train (resuming a killed run),
    then the experiments and their analysis if asked; writes ``result.json`` last."""
    d = Path(point_dir)
    meta = json.loads((d / "point.json").read_text())
    cfg_path = d / "config.yaml"
    cfg = load_config(cfg_path)
    net, train_data, test = model_and_data(cfg)
    trainer = Trainer(net, cfg.training, log=d / "train.jsonl", checkpoint_dir=d)
    if (d / "last.pt").is_file():  # a killed point continues where it stopped
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
        ex = c.experiment
        paths = groen2022_experiments(net, first_images(test, ex.n_images), d / "experiments", dt=ex.dt,
                                      solver=ex.solver.build(), kinds=ex.protocols, record=ex.record.build(),
                                      overwrite=True, background=ex.background, onset=ex.onset,
                                      settle_max=ex.settle_max)
        summary = analysis.analyze(*paths.values()).summary()
        _flat("analysis", summary, metrics)
    result = {"point": meta["id"], "overrides": meta["overrides"], "metrics": metrics}
    tmp = d / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, d / "result.json")
    return result


def collect(out) -> dict:
    """``sweep_summary.csv``, ``sweep_summary.nc`` and ``sweep_summary.png`` from the points'
    ``result.json`` (a point without one is ``failed`` if its log exists, else ``pending``)."""
    import numpy as np
    import pandas as pd
    import xarray as xr

    out = Path(out)
    info = json.loads((out / "sweep.json").read_text())
    keys, rows = info["keys"], []
    for pid in info["points"]:
        d = out / "points" / pid
        meta = json.loads((d / "point.json").read_text())
        row = {"point": pid, **{k: meta["overrides"].get(k) for k in keys}}
        if (d / "result.json").is_file():
            row.update(status="done", **json.loads((d / "result.json").read_text())["metrics"])
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
    """A netCDF-friendly coordinate value (bools and None become strings)."""
    if v is None or isinstance(v, bool) or isinstance(v, (list, dict)):
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
