"""``dynode fit CONFIG``: the config file (:class:`FitConfig`: :class:`FitModel`,
:class:`FitSettings`, the recordings and the output folder), :func:`run_fit_config` and the
command :func:`fit_command`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from dynode.checkpoint import load_weights
from dynode.datafile import load_yaml, read_text
from dynode.errors import ConfigurationError, describe_validation_error
from dynode.fit.engine import fit
from dynode.fit.networks import dn_network
from dynode.fit.plot import plot_fit
from dynode.fit.result import FitResult
from dynode.network import Network
from dynode.recordings import load_recordings
from dynode.solver_config import FrozenConfig
from dynode.spec import build_network, load_spec, ModelSpec

__all__ = ["FitConfig", "FitModel", "FitSettings", "run_fit_config", "fit_command"]


class FitModel(FrozenConfig):
    """The model a config fits: ``builder: dn_network`` with its ``options``
    (:func:`dn_network`), or ``spec``: a model spec file (YAML/JSON, :func:`dynode.spec.load_spec`)
    or the spec inline; ``weights``: a checkpoint or state_dict loaded into it;
    ``allow_imports``: the spec names code outside dynode's vocabulary (trusted)."""

    builder: Literal["dn_network"] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    spec: str | dict[str, Any] | None = None
    weights: str | None = None
    allow_imports: bool = False

    @model_validator(mode="after")
    def _one_source(self):
        if (self.builder is None) == (self.spec is None):
            raise ValueError("give exactly one of builder (dn_network) and spec (a file or an inline spec)")
        if self.options and self.builder is None:
            raise ValueError("options go to the builder; a spec carries its own values")
        return self

    def build(self, base: Path) -> Network:
        if self.builder == "dn_network":
            try:
                net = dn_network(**self.options)
            except TypeError as exc:
                raise ConfigurationError(f"model.options: {exc} (dn_network takes areas, tau1, shift, tau2, sigma, "
                                         "n, tau and their bounds)") from None
        elif isinstance(self.spec, str):
            net = build_network(load_spec(_path(base, self.spec), trust_code=self.allow_imports),
                                trust_code=self.allow_imports)
        else:
            spec = ModelSpec.from_data(self.spec, "model.spec")
            net = build_network(spec, trust_code=self.allow_imports)
        if self.weights is not None:
            load_weights(net, _path(base, self.weights))
        return net


class FitSettings(FrozenConfig):
    """The arguments of :func:`fit` (same names and meaning)."""

    params: list[str] = Field(min_length=1)
    areas: list[str] | dict[str, str] | None = None
    experiments: list[str] | None = None
    observe: str = "rate"
    solver: str = "euler"
    dt: float = Field(1.0, gt=0)
    optimizer: Literal["adam", "lbfgs"] = "lbfgs"
    steps: int = Field(100, ge=1)
    lr: float | None = Field(None, gt=0)
    restarts: int = Field(1, ge=1)
    seed: int = 0
    tol: float = Field(1e-4, gt=0)
    patience: int = Field(10, ge=1)
    background: Literal["blank", "grey", "gray", "mean"] | float = "blank"
    log_every: int = Field(10, ge=1)


class FitConfig(FrozenConfig):
    """A ``dynode fit`` config (YAML): ``model`` (:class:`FitModel`), ``recordings`` (a file for
    :func:`dynode.recordings.load_recordings`),
    ``fit`` (:class:`FitSettings`) and ``output`` (the folder of ``last.pt``, ``fit.json``,
    ``prediction.nc`` and ``fit.png``). Relative paths are from the working directory, as in
    run configs."""

    model: FitModel
    recordings: str
    fit: FitSettings
    output: str = "runs/fit"

    @classmethod
    def load(cls, path) -> "FitConfig":
        p = Path(path)
        if not p.is_file():
            raise ConfigurationError(f"no fit config at {p}")
        data = load_yaml(read_text(p, "fit config"), str(p))
        if not isinstance(data, dict):
            raise ConfigurationError(f"{p}: a fit config is a mapping with model, recordings, fit (and output)")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigurationError(f"{p}: {describe_validation_error(exc)}") from None


def _path(base: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else base / p


def run_fit_config(path, out_dir=None, *, resume: bool = False, overwrite: bool = False,
                   progress: bool = True) -> FitResult:
    """``dynode fit CONFIG``: read the config, build the model, fit it (checkpoints in
    ``out_dir``, default the config's ``output``) and write ``fit.json`` (the result),
    ``prediction.nc`` (the fitted courses, NetCDF3) and ``fit.png`` (data and fit per area)
    there (not the last two when the model diverged at its start values). Returns the :class:`FitResult`."""
    cfg = FitConfig.load(path)
    base = Path.cwd()
    out = Path(out_dir if out_dir is not None else cfg.output)
    net = cfg.model.build(base)
    recordings = load_recordings(_path(base, cfg.recordings))
    s = cfg.fit
    result = fit(net, recordings, params=s.params, observe=s.observe, areas=s.areas, experiments=s.experiments,
                 solver=s.solver, dt=s.dt, optimizer=s.optimizer, steps=s.steps, lr=s.lr, restarts=s.restarts,
                 seed=s.seed, tol=s.tol, patience=s.patience, background=s.background, checkpoint_dir=out,
                 resume=resume, overwrite=overwrite, progress=progress, log_every=s.log_every)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fit.json").write_text(json.dumps({"config": cfg.model_dump(mode="json"), **result.to_dict()}, indent=1))
    if result.prediction is not None:
        result.prediction.to_netcdf(out / "prediction.nc", engine="scipy")
        plot_fit(result, recordings, out / "fit.png", title=f"dynode fit {Path(path).name}")
    return result


def fit_command(args) -> int:
    """Run ``dynode fit``; prints the summary. Exit status 0, or 1 when the fit diverged."""
    result = run_fit_config(args.config, args.out, resume=args.resume, overwrite=args.overwrite,
                            progress=not args.quiet)
    print(result.summary())
    return 1 if result.status == "diverged" else 0
