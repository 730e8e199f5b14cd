"""Run configuration as pydantic v2 models: frozen, ``extra="forbid"``, loaded from YAML/dicts.

One model per concern (model, data, stimulus, record, training, convergence, ...), composed
into :class:`RunConfig`. The solver configs are generated from the solver classes in
:mod:`dynode.solver_config` (re-exported here; an example there).
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import torch
from typing import Annotated, Any, Literal

from dynode.checkpoint import load_weights
from dynode.datafile import read_config
from dynode.errors import ConfigurationError
from dynode.solver_config import *  # noqa: F403 (re-exported: every generated solver config)
from dynode.solver_config import (CONFIGS, FIXED_STEP, EulerConfig, Dopri5Config, FixedSolverConfig, FrozenConfig,
                                  SolverConfig, solver_config)
from pydantic import (Field, PositiveFloat, PositiveInt, model_validator)
from dynode import models
from dynode.convergence import REFERENCE_ATOL, REFERENCE_RTOL
from dynode.field import VectorField
from dynode.record import Record
from dynode.spec import build_network, import_object, load_spec
from dynode.experiments import TIME_COURSE_KINDS, groen2022_experiments, reaction_time_experiment
from dynode.models.decision import EVIDENCE
from dynode.stimuli import BACKGROUND, EXPERIMENTS, REACTION_TIME, Constant, Pulse, groen2022
from dynode.stimuli.datasets import dataset, in_memory
from dynode.stimuli.generated import DEFAULT_CLASSES, generated_task
from dynode.train import TrainingConfig

__all__ = ["SolverConfig", "solver_config", *(model.__name__ for model in CONFIGS.values())]


class ModelConfig(FrozenConfig):
    """The model, given one of three ways:

    * ``name``: a zoo model (``dyrcnn``, ``cornet_rt``, ``cordsnet``, ``alexnet_like``) and the
      keyword ``options`` of its builder (see ``dynode.models``);
    * ``spec``: a model spec file (YAML/JSON, see :mod:`dynode.spec`) holding the whole network;
    * ``factory``: the import path ``"package.module:function"`` of a function returning a
      :class:`dynode.Network` or any :class:`dynode.VectorField`, called with ``options``.

    ``allow_imports``: a config is data, so nothing it names is imported unless it says so.
    ``factory``, and a ``spec`` whose operators are import paths outside ``torch.nn`` and
    dynode, need ``allow_imports: true`` here (or ``--allow-imports`` on the command line):
    the line is that code runs only where the config's author or the user who runs it chose
    it. The module comes from the installed packages or ``PYTHONPATH``; the current folder is
    not searched (``PYTHONPATH=. dynode ...`` for a module next to the config).

    ``input_shape`` and ``num_classes`` default to the data's (for builders that take them).
    ``weights``: a checkpoint (from ``dynode train``) or state_dict file to load.
    """

    name: Literal["dyrcnn", "cornet_rt", "cordsnet", "alexnet_like"] = "dyrcnn"
    spec: str | None = None
    factory: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = None
    allow_imports: bool = False

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("name", "spec", "factory") if k in self.model_fields_set
                 and getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of model.name (zoo), model.spec (a spec file) or model.factory "
                             f"(an import path), not {given}")
        if self.spec is not None and self.options:
            raise ValueError("model.options apply to a zoo name or a factory; a spec file holds the whole model")
        if self.factory is not None and self.factory.count(":") != 1:
            raise ValueError(f"model.factory {self.factory!r}: write it as 'package.module:function'")
        return self

    @property
    def label(self) -> str:
        """What the model is, for messages: the zoo name, the spec file or the factory."""
        return self.spec or self.factory or self.name

    def builder(self):
        """The zoo builder or the imported factory (``None`` for a spec file)."""
        if self.spec is not None:
            return None
        if self.factory is not None:
            if not self.allow_imports:
                raise ConfigurationError(
                    f"model.factory {self.factory!r} is code to import and run, and a config is data: nothing "
                    "it names is imported unless it opts in; if you trust this config, add "
                    "'allow_imports: true' to its model section, or pass --allow-imports")
            fn = import_object(self.factory, "model.factory")
            if not callable(fn):
                raise ConfigurationError(f"model.factory {self.factory!r} is not callable")
            return fn
        return getattr(models, self.name)

    def build(self, *, input_shape=None, num_classes=None):
        builder = self.builder()
        if builder is None:
            net = build_network(load_spec(self.spec, trust_code=self.allow_imports))
            shapes = list(net.input_shapes().values())
            if input_shape is not None and len(shapes) == 1 and shapes[0] != tuple(input_shape):
                raise ConfigurationError(f"model.spec {self.spec}: the model takes inputs of shape "
                                         f"{shapes[0]} but the data has {tuple(input_shape)}")
            ro = net.readout
            if num_classes is not None and ro is not None and getattr(ro, "num_classes", num_classes) != num_classes:
                raise ConfigurationError(f"model.spec {self.spec}: the readout has {ro.num_classes} classes but "
                                         f"the data has {num_classes}")
        else:
            try:
                params = inspect.signature(builder).parameters
            except (TypeError, ValueError):  # a builtin without a signature: pass the options as they are
                params = {}
            open_kw = not params or any(p.kind == p.VAR_KEYWORD for p in params.values())
            unknown = [k for k in self.options if k not in params]
            if unknown and not open_kw:
                raise ConfigurationError(f"model.options: {self.label}() takes no option(s) {unknown}; "
                                         f"it takes {list(params)}")
            opts = dict(self.options)
            if input_shape is not None and "input_shape" in params:
                opts.setdefault("input_shape", tuple(input_shape))
            if num_classes is not None and "num_classes" in params:
                opts.setdefault("num_classes", int(num_classes))
            try:
                net = builder(**opts)
            except TypeError as exc:  # options that do not fit the builder's signature
                raise ConfigurationError(f"model: {self.label}() with options {sorted(opts)}: {exc}") from None
            if not isinstance(net, VectorField):
                raise ConfigurationError(f"model.factory {self.label} returned {type(net).__name__}; it must "
                                         "return a dynode.Network or another dynode.VectorField")
        if self.weights:
            load_weights(net, self.weights)  # a checkpoint or state_dict that fits, else CheckpointError
        return net


class DataConfig(FrozenConfig):
    """Image data: the generated task (no files, the default) or a torchvision data set in ``root``."""

    name: Literal["generated", "cifar10", "cifar100", "mnist", "imagenette", "imagefolder"] = "generated"
    root: str | None = None
    n_train: PositiveInt = 1200
    n_test: PositiveInt = 300
    size: PositiveInt = 16
    channels: Literal[1, 3] = 1
    classes: list[str] | None = None
    seed: int = Field(0, ge=0, le=2**63 - 1)
    augment: bool | None = None

    @model_validator(mode="after")
    def _fits(self):
        if self.name == "generated":
            if self.root is not None:
                raise ValueError("the generated task reads no files: remove data.root")
        elif self.root is None:
            raise ValueError(f"data.name={self.name!r} needs data.root (the folder holding the data set)")
        elif given := [k for k in ("n_train", "n_test", "size", "channels", "classes") if k in self.model_fields_set]:
            raise ValueError(f"{given} only apply to the generated task, not {self.name!r}")
        return self

    def load(self, batch_size: int = 64):
        """``(train, test, image_shape, num_classes)``: ``(images, labels)`` tensor pairs for the
        generated task; for the data sets, loaders of ``batch_size`` (in-memory for CIFAR and
        MNIST, a torchvision ``DataLoader`` for image folders), training split shuffled and
        augmented unless ``augment`` says otherwise."""
        if self.name == "generated":
            if self.augment:
                raise ConfigurationError("data.augment: the generated task has its nuisance variation "
                                         "built in; augmentation applies to the image data sets")
            task = generated_task(self.n_train, self.n_test, size=self.size, channels=self.channels,
                                  classes=tuple(self.classes) if self.classes else DEFAULT_CLASSES,
                                  seed=self.seed)
            train = (task.normalize(task.x_train), task.y_train)
            test = (task.normalize(task.x_test), task.y_test)
            return train, test, task.image_shape, task.num_classes

        name = self.name
        if name in ("cifar10", "cifar100", "mnist"):
            train = in_memory(name, self.root, "train", batch_size=batch_size, augment=self.augment, seed=self.seed)
            test = in_memory(name, self.root, "test", batch_size=batch_size, shuffle=False, augment=False)
            return train, test, tuple(train.images.shape[1:]), int(train.labels.max()) + 1
        tr = dataset(name, self.root, "train", augment=self.augment)
        te = dataset(name, self.root, "val", augment=False)  # image folders: train/ and val/
        g = torch.Generator().manual_seed(self.seed)
        train = torch.utils.data.DataLoader(tr, batch_size=batch_size, shuffle=True, generator=g, num_workers=2)
        test = torch.utils.data.DataLoader(te, batch_size=batch_size, shuffle=False, num_workers=2)
        return train, test, tuple(tr[0][0].shape), len(tr.classes)


def model_and_data(cfg: "RunConfig"):
    """``(model, train data, test data)`` of a run config: the data first (it fixes the input
    shape and the classes), then the model, built right after seeding with
    ``training.seed`` (same config, same initial weights)."""
    train, test, shape, n_classes = cfg.data.load(cfg.training.batch_size)
    torch.manual_seed(cfg.training.seed)
    net = cfg.model.build(input_shape=shape, num_classes=n_classes)
    return net, train, test


def first_images(data, n: int):
    """The first ``n`` images of a split returned by :meth:`DataConfig.load`."""
    if isinstance(data, tuple):
        return data[0][:n]
    got, total = [], 0
    for x, _ in data:
        got.append(x)
        total += len(x)
        if total >= n:
            break
    return torch.cat(got)[:n]


class ElectrodeConfig(FrozenConfig):
    """A recording contact on a ``(C, H, W)`` population (:class:`dynode.observe.Electrode`): a
    Gaussian patch at ``center`` ``[y, x]`` (unit coordinates, in ``[0, 1]``) of standard deviation
    ``sigma`` (unit coordinates)."""

    center: tuple[float, float]
    sigma: PositiveFloat


class RecordConfig(FrozenConfig):
    """What to record (see :class:`dynode.Record`); the default is the population time course.
    ``observe``: the observations stored per population (:mod:`dynode.observe`; must include
    ``rate``); ``electrodes``: ``{population: {center: [y, x], sigma: s}}``, the patch its ``lfp``
    and ``bold`` see."""

    populations: list[str] | None = None
    reduce: Literal["mean", "std", "mean_std"] | None = "mean"
    every: PositiveFloat | None = None
    start: float | None = None
    stop: float | None = None
    dtype: Literal["float16", "float32", "float64"] = "float32"
    observe: list[Literal["rate", "drive", "lfp", "bold"]] = Field(default_factory=lambda: ["rate"])
    electrodes: dict[str, ElectrodeConfig] | None = None

    @model_validator(mode="after")
    def _builds(self):
        self.build()  # the Record's own checks (rate observed, electrodes with lfp/bold, ...) at load time
        return self

    def build(self):
        return Record(**self.model_dump())


ExperimentKind = Literal[tuple(EXPERIMENTS)]
"""The name of a registered experiment (:data:`dynode.stimuli.EXPERIMENTS`)."""


class StimulusConfig(FrozenConfig):
    """A stimulus for ``dynode simulate``: test images of the data shown as a pulse (or constantly),
    or one of the Groen 2022 protocols."""

    kind: Literal["pulse", "constant", "groen2022"] = "pulse"
    n_images: PositiveInt = 4
    onset: Annotated[float, Field(ge=0)] = 0.0
    duration: PositiveFloat | None = None
    contrast: Annotated[float, Field(ge=0)] = 1.0
    protocol: ExperimentKind | None = None

    @model_validator(mode="after")
    def _fits(self):
        if self.kind == "groen2022" and self.protocol is None:
            raise ValueError(f"stimulus.kind='groen2022' needs stimulus.protocol: one of {', '.join(EXPERIMENTS)}")
        if self.kind == "groen2022" and EXPERIMENTS[self.protocol].study != "groen2022":
            raise ValueError(f"stimulus.protocol {self.protocol!r} is not one of Groen's: one of "
                             f"{', '.join(k for k, e in EXPERIMENTS.items() if e.study == 'groen2022')}")
        if self.kind != "groen2022" and self.protocol is not None:
            raise ValueError("stimulus.protocol only applies to kind='groen2022'")
        if self.kind == "constant" and (self.duration is not None or self.onset):
            raise ValueError("a constant stimulus takes no onset or duration; use kind='pulse'")
        return self

    def build(self, images, input_name: str):
        images = images[: self.n_images] * self.contrast
        if self.kind == "groen2022":
            return groen2022(self.protocol, images)
        if self.kind == "constant":
            return Constant({input_name: images})
        return Pulse(self.onset, self.duration if self.duration is not None else math.inf, {input_name: images})


def first_labelled(data, n: int):
    """The first ``n`` images of a split of :meth:`DataConfig.load` and their labels."""
    if isinstance(data, tuple):
        return data[0][:n], data[1][:n]
    xs, ys, total = [], [], 0
    for x, y in data:
        xs.append(x)
        ys.append(y)
        total += len(x)
        if total >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


class ReactionTimeConfig(FrozenConfig):
    """The reaction-time experiment's settings (:func:`dynode.experiments.reaction_time_experiment`):
    the accumulators added to the trained model (``tau_a dA_k = (e_k - leak A_k) dt + noise
    sqrt(2 tau_a) dW_k``, :mod:`dynode.models.decision`) and the conditions."""

    n_images: PositiveInt = Field(24, description="test images classified (each at every contrast)")
    contrasts: list[Annotated[float, Field(ge=0)]] = Field(default_factory=lambda: list(REACTION_TIME["contrasts"]))
    noises: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: list(REACTION_TIME["noises"]), description="accumulator noise levels nu")
    bounds: list[PositiveFloat] = Field(default_factory=lambda: list(REACTION_TIME["bounds"]))
    trials: PositiveInt = Field(8, description="noisy repeats of every contrast x image (one without noise)")
    deadline: PositiveFloat = Field(REACTION_TIME["epoch_ms"], description="ms after the onset; no decision "
                                    "by then: none")
    tau: PositiveFloat = Field(100.0, description="tau_a (ms)")
    leak: PositiveFloat = 0.05
    evidence: Literal[EVIDENCE] = "softmax"
    delay: Annotated[float, Field(ge=0)] = 0.0
    seed: Annotated[int, Field(ge=0)] = 0


class ExperimentConfig(FrozenConfig):
    """The in-silico experiments of :data:`dynode.stimuli.EXPERIMENTS` run on a (trained)
    model: :meth:`run`. The default ``protocols`` are those of Groen et al. (2022);
    ``reaction_time`` (a speeded classification through accumulators on the model's readout)
    takes its settings from ``reaction_time`` (defaults when absent)."""

    protocols: list[ExperimentKind] = Field(default_factory=lambda: list(TIME_COURSE_KINDS))
    n_images: PositiveInt = 4
    dt: PositiveFloat = 2.0
    solver: SolverConfig = Field(default_factory=EulerConfig)
    record: RecordConfig = Field(default_factory=RecordConfig)
    background: Literal["mean", "blank", "grey"] = Field(
        BACKGROUND, description="the screen between stimuli in the units the model is fed: 'mean' (each "
        "image's mean luminance), 'blank' (0) or 'grey' (0.5, for raw images in [0, 1])")
    onset: PositiveFloat = Field(100.0, description="stimulus onset (ms) after the settled start: the "
                                 "baseline")
    settle_max: PositiveFloat | None = Field(
        3000.0, description="ms the network may run on the background alone to reach a steady baseline "
        "before each experiment (warns with the measured drift if not steady); null: no settling")
    reaction_time: ReactionTimeConfig | None = Field(
        None, description="the reaction-time experiment's settings (with 'reaction_time' in protocols)")

    @model_validator(mode="after")
    def _reaction_time_used(self):
        if self.reaction_time is not None and "reaction_time" not in self.protocols:
            raise ValueError("experiment.reaction_time sets the reaction-time experiment, which is not in "
                             f"experiment.protocols {self.protocols}: add 'reaction_time' to the protocols or "
                             "drop the section")
        return self

    def paths(self, out_dir) -> list[Path]:
        """The archives :meth:`run` writes into ``out_dir``."""
        return [Path(out_dir) / f"{EXPERIMENTS[k].label}.zarr" for k in self.protocols]

    def run(self, network, data, out_dir, *, overwrite: bool = False, progress: bool | None = None
            ) -> dict[str, Path]:
        """Run these experiments on ``data`` (a split of :meth:`DataConfig.load`) into
        ``out_dir``; ``{kind: archive path}`` in the order of ``protocols``. The time-course
        kinds (:func:`dynode.experiments.groen2022_experiments`) on its first ``n_images``; the
        reaction-time experiment (:func:`dynode.experiments.reaction_time_experiment`) on the
        first ``reaction_time.n_images`` and their labels."""
        courses = [k for k in self.protocols if k in TIME_COURSE_KINDS]
        paths = {}
        if courses:
            paths.update(groen2022_experiments(
                network, first_images(data, self.n_images), out_dir, dt=self.dt, solver=self.solver.build(),
                kinds=courses, record=self.record.build(), overwrite=overwrite, progress=progress,
                background=self.background, onset=self.onset, settle_max=self.settle_max))
        if "reaction_time" in self.protocols:
            rt = self.reaction_time or ReactionTimeConfig()
            images, labels = first_labelled(data, rt.n_images)
            path = Path(out_dir) / f"{EXPERIMENTS['reaction_time'].label}.zarr"
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            reaction_time_experiment(
                network, images, labels, path, dt=self.dt, solver=self.solver.build(), contrasts=rt.contrasts,
                noises=rt.noises, bounds=rt.bounds, trials=rt.trials, deadline=rt.deadline, tau=rt.tau,
                leak=rt.leak, evidence=rt.evidence, delay=rt.delay, background=self.background,
                settle_max=self.settle_max, seed=rt.seed, overwrite=overwrite)
            paths["reaction_time"] = path
        return {k: paths[k] for k in self.protocols}


class ConvergenceConfig(FrozenConfig):
    """The dt/tau study: errors of ``solvers`` at ``dts`` against a tight reference.

    ``solvers``: names, or ``{label: solver config}`` to compare variants (e.g.
    ``{simultaneous: {kind: euler}, sequential: {kind: euler, order: sequential}}``).
    ``reference``: default ``Dopri5(rtol=1e-8, atol=1e-10)``, as ``dn.convergence``.
    ``tolerance``: the acceptable max |r - r_ref| (rate units): the study then states per
    solver the largest dt within it. ``population``: plot only this population.
    """

    dts: list[PositiveFloat] = Field(default_factory=lambda: [2.0, 1.0, 0.5, 0.25])
    solvers: list[Literal[FIXED_STEP]] | dict[str, FixedSolverConfig] = Field(
        default_factory=lambda: ["euler", "rk4"])
    t_end: PositiveFloat = 40.0
    reference: SolverConfig = Field(default_factory=lambda: Dopri5Config(rtol=REFERENCE_RTOL, atol=REFERENCE_ATOL))
    tolerance: PositiveFloat | None = None
    population: str | None = None

    def build_solvers(self):
        """Names, or ``{label: solver object}``, for :func:`dynode.convergence`."""
        if isinstance(self.solvers, dict):
            return {label: cfg.build() for label, cfg in self.solvers.items()}
        return list(self.solvers)


class CompareConfig(FrozenConfig):
    """``dynode compare``: model variants side by side (see :mod:`dynode.compare`)."""

    variants: dict[str, dict[str, Any]] | None = Field(
        None, description="{label: model.options overrides}; null: the recurrence types full, self, "
        "depthpointwise and pointdepthwise, each with and without normalization")


class RunConfig(FrozenConfig):
    """Everything one ``dynode`` command needs, one section per concern."""

    output: str = "dynode-out"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    solver: SolverConfig = Field(default_factory=EulerConfig)
    dt: PositiveFloat | None = None
    t_end: PositiveFloat | None = None
    stimulus: StimulusConfig = Field(default_factory=StimulusConfig)
    record: RecordConfig = Field(default_factory=RecordConfig)
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    convergence: ConvergenceConfig = Field(default_factory=ConvergenceConfig)
    compare: CompareConfig = Field(default_factory=CompareConfig)


def load_config(path, *, allow_imports: bool = False) -> RunConfig:
    """Read a YAML file into a :class:`RunConfig` (safe YAML, bounded, every key checked; see
    :func:`dynode.datafile.read_config`); see :func:`config_from`."""
    return config_from(read_config(path), allow_imports=allow_imports)


def config_from(data: dict, *, allow_imports: bool = False) -> RunConfig:
    """The :class:`RunConfig` of a config file's data. ``allow_imports``: as the CLI's
    ``--allow-imports``, set ``model.allow_imports`` (the model may import the code its
    factory or spec names)."""
    cfg = run_config(data)
    if allow_imports and not cfg.model.allow_imports:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"allow_imports": True})})
    return cfg


def run_record(cfg: RunConfig) -> dict:
    """A run's whole resolved config as JSON data, less what does not change its results (where
    its outputs go, and whether imports were allowed by the file or by --allow-imports): what
    its checkpoints record, so that a resume under another config is refused."""
    return cfg.model_dump(mode="json", exclude={"output": True, "model": {"allow_imports"},
                                                "training": {"logger"}})


def run_config(data: Any) -> RunConfig:
    return RunConfig.model_validate(data)


def run_config_schema() -> dict:
    """The JSON schema of :class:`RunConfig` (what ``dynode config schema`` prints): strict JSON,
    so an infinite default (``dt_max``: no cap) is written as the string ``"inf"``, which the
    config accepts as well."""

    def strict(x):
        if isinstance(x, float) and not math.isfinite(x):
            return "inf" if x > 0 else "-inf" if x < 0 else "nan"
        if isinstance(x, dict):
            return {k: strict(v) for k, v in x.items()}
        if isinstance(x, list):
            return [strict(v) for v in x]
        return x

    return strict(RunConfig.model_json_schema())
