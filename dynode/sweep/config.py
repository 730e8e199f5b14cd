"""A sweep's definition: the sweep file, its expansion into points, and a point's identity.

:class:`SweepConfig` is the sweep file; :func:`expand` makes one point per combination of the
grid (or per entry of ``points``), each a validated run config with the fingerprint of its
whole resolved config (:func:`point_fingerprint`); :func:`write_points` writes their folders.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import json
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from dynode.config import RunConfig, run_config, run_record
from dynode.datafile import load_yaml, read_text
from dynode.errors import ConfigurationError, describe_validation_error
from dynode.solver_config import FrozenConfig
from dynode.train import run_fingerprint


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
        return list(self.grid) if self.grid is not None else list(dict.fromkeys(k for p in self.points for k in p))

    @property
    def definition(self) -> dict:
        """``{"grid": ...}`` or ``{"points": ...}``: what the owner file and ``sweep.json`` record."""
        return {"grid": self.grid} if self.grid is not None else {"points": self.points}


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
    # resolved: printed paths carry no "examples/configs/../../runs"; an absolute output stays as it is
    return sweep, base, (path.parent / (sweep.output or f"{path.stem}-out")).resolve()


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
        model = _model_class(fields[part].annotation)
        if model is None and i < len(parts) - 1:
            raise ConfigurationError(f"sweep key {key!r}: {'.'.join(parts[:i + 1])} is a value, not a section")


def _model_class(ann):
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    return next((m for m in map(_model_class, typing.get_args(ann)) if m is not None), None)


def _set(d: dict, key: str, value) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        if not isinstance(d.get(p), dict):
            d[p] = {}
        d = d[p]
    d[parts[-1]] = value


def expand(sweep: SweepConfig, base: dict) -> list[dict]:
    """The points: ``[{"id", "overrides", "config", "fingerprint"}]``, each config validated."""
    for key in sweep.keys:
        check_key(key, base)
    combos = ([dict(zip(sweep.grid, vals)) for vals in itertools.product(*sweep.grid.values())]
              if sweep.grid is not None else [dict(p) for p in sweep.points])
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


def _write_if_changed(path: Path, text: str) -> None:
    """Keep the file (and its mtime, which Snakemake compares) when the content is the same."""
    if not (path.is_file() and path.read_text() == text):
        path.write_text(text)


def write_points(points: list[dict], out: Path, steps: list[str]) -> None:
    """One folder per point, ``out/points/<id>/``: its ``config.yaml`` (with ``output`` set to
    the folder) and ``point.json`` (id, overrides, steps); unchanged files are not rewritten."""
    for p in points:
        d = out / "points" / p["id"]
        d.mkdir(parents=True, exist_ok=True)
        cfg = {**p["config"], "output": str(d.resolve())}
        _write_if_changed(d / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
        _write_if_changed(d / "point.json", json.dumps({"id": p["id"], "overrides": p["overrides"],
                                                       "steps": steps}, indent=1))
