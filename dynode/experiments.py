"""In-silico experiments: run a model through stimulus protocols into labelled archives.

A protocol (e.g. :func:`dynode.stimuli.groen2022`) is one labelled batch of conditions with
exact onsets, durations and gaps in ms; :func:`run_protocol` simulates the model through it
without gradients and streams the trajectories to a zarr archive whose ``sample`` dimension
carries the condition coordinates (``contrast``, ``duration``, ``isi``, ``image``).
:func:`groen2022_experiments` runs the time-course experiments registered in
:data:`dynode.stimuli.EXPERIMENTS` (the three of Groen et al. (2022));
:func:`reaction_time_experiment` the ``reaction_time`` kind: a speeded classification read out
by accumulators on the model's readout (:mod:`dynode.models.decision`), reaction times and
choices per trial into their own archive.

``background`` is the screen around the images everywhere here, as in :mod:`dynode.stimuli`
(:func:`~dynode.stimuli.resolve_background`; default :data:`~dynode.stimuli.BACKGROUND`,
``"mean"``); :func:`settle` takes the same spec with the ``images`` it surrounds.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from dynode.archive import ARCHIVE_FORMAT, prepare_path
from dynode.errors import BaselineDriftWarning, ConfigurationError, ShapeError, user_stacklevel
from dynode.field import VectorField
from dynode.record import Record
from dynode.simulate import SimulationResult, simulate
from dynode.integrate import integrate
from dynode.network import Network
from dynode.models.decision import add_accumulator, race, set_accumulator_noise
from dynode.solver import Solver, get_solver
from dynode.stimuli import BACKGROUND, EXPERIMENTS, REACTION_TIME, Constant, Modulated, envelopes, present
from dynode.stimuli.compose import BACKGROUNDS
from dynode.tolerances import TIME_RTOL

__all__ = ["run_protocol", "groen2022_experiments", "settle", "Settled", "recovery_after_offset", "GROEN_KINDS",
           "TIME_COURSE_KINDS", "reaction_time_experiment"]

GROEN_KINDS = tuple(EXPERIMENTS)  # every registered experiment kind (dynode.stimuli.EXPERIMENTS)
TIME_COURSE_KINDS = tuple(k for k, e in EXPERIMENTS.items() if e.analysis == "groen2022")
"""The kinds :func:`groen2022_experiments` runs (recorded time courses; Groen et al. 2022); the
``reaction_time`` kind runs in :func:`reaction_time_experiment`."""
_SETTLE_WINDOW = 100.0  # ms: settle's default window, as groen2022_experiments uses it
_MAX_STEPS = 10 ** 7  # steps in a settling window or an epoch (dt = 1e-5 ms for 100 ms: a mistake)


# -- argument checks: every public function refuses bad arguments before the first evaluation --------
def _number(who: str, name: str, value, *, zero: bool = False, unit: str = " of ms") -> float:
    """``value`` as a float: a real number (not a bool), finite and > 0 (>= 0 with ``zero``);
    else a :class:`ConfigurationError` naming ``who``'s argument and the accepted range."""
    if isinstance(value, Tensor) and value.numel() == 1 and value.dtype.is_floating_point:
        value = value.item()
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or not (value >= 0 if zero else value > 0)):
        rule = f"a finite number >= 0{unit}" if zero else f"a positive number{unit} (finite, > 0)"
        raise ConfigurationError(f"{who}: {name} must be {rule}, got {value!r}")
    return float(value)


def _whole_steps(who: str, name: str, span: float, dt: float) -> None:
    """``span`` (ms) is a whole number of steps of ``dt``, at most :data:`_MAX_STEPS` of them
    (their save times are listed before the run)."""
    n = round(span / dt)
    if n < 1 or abs(n * dt - span) > TIME_RTOL * span:
        raise ConfigurationError(f"{who}: {name}={span:g} ms is not a whole number of steps of dt={dt:g} ms; "
                                 "choose a dt that divides it")
    if n > _MAX_STEPS:
        raise ConfigurationError(f"{who}: {name}={span:g} ms is {n:.3g} steps of dt={dt:g} ms, more than "
                                 f"{_MAX_STEPS:.0e}; choose dt >= {span / _MAX_STEPS:g} ms")


def _check_field(who: str, network) -> None:
    if not isinstance(network, VectorField):
        raise ConfigurationError(f"{who}: network must be a dynode.VectorField (e.g. a dn.Network), got "
                                 f"{type(network).__name__}")


def _check_stimulus_value(who: str, network, background) -> None:
    """``background`` held constant by :func:`settle`: a tensor (one input) or ``{input: tensor}``
    whose shapes fit a :class:`Network`'s inputs (``(batch, *shape)`` or ``shape``)."""
    if not isinstance(background, (Tensor, Mapping)):
        raise ConfigurationError(f"{who}: background must be a tensor (batch, *input_shape) or a dict "
                                 f"{{input: tensor}}, got {type(background).__name__}")
    if not isinstance(network, Network):
        return  # a custom field declares no input shapes: integrate checks what it can
    shapes = network.input_shapes()
    values = dict(background) if isinstance(background, Mapping) else (
        {next(iter(shapes)): background} if len(shapes) == 1 else {})
    for name, v in values.items():
        shape = shapes.get(name)
        if shape is not None and isinstance(v, Tensor) and tuple(shape) not in (tuple(v.shape), tuple(v.shape[1:])):
            raise ShapeError(f"{who}: background has shape {tuple(v.shape)} for the input {name!r}; expected "
                             f"(batch, *{tuple(shape)}) or {tuple(shape)}")


def _check_images(who: str, network, images, background) -> None:
    """``images`` ``(N, *shape)``, N >= 1, real-valued, fitting a :class:`Network`'s one input;
    the screen around them, ``background``: one of :data:`BACKGROUNDS`, a finite number, or a
    finite tensor that broadcasts to one image's shape."""
    if not isinstance(images, Tensor) or images.dim() < 2 or images.shape[0] < 1 or images.dtype.is_complex \
            or images.dtype == torch.bool:
        got = f"shape {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ConfigurationError(f"{who}: images must be a real tensor (N, *shape) with N >= 1, e.g. (N, C, H, W), "
                                 f"got {got}")
    if isinstance(network, Network):
        shapes = network.input_shapes()
        if len(shapes) != 1:
            raise ConfigurationError(f"{who}: the images feed the network's one input, but it has the inputs "
                                     f"{list(shapes)}")
        (name, shape), = shapes.items()
        if tuple(images.shape[1:]) != tuple(shape):
            raise ShapeError(f"{who}: images have shape {tuple(images.shape)}; the network's input {name!r} "
                             f"takes (N, *{tuple(shape)})")
    sample = (1, *images.shape[1:])
    accepted = (f"one of {list(BACKGROUNDS)}, a finite number, or a tensor that broadcasts to one image "
                f"{tuple(images.shape[1:])} (e.g. (), ({images.shape[1]}, 1, 1) or {tuple(images.shape[1:])})")
    if isinstance(background, str):
        if background not in BACKGROUNDS:
            raise ConfigurationError(f"{who}: background must be {accepted}, got {background!r}")
    elif isinstance(background, Tensor):
        try:
            fits = tuple(torch.broadcast_shapes(background.shape, sample)) == sample
        except RuntimeError:
            fits = False
        if not fits:
            raise ShapeError(f"{who}: background has shape {tuple(background.shape)}, expected {accepted}")
        if background.dtype.is_complex or not bool(torch.isfinite(background).all()):
            raise ConfigurationError(f"{who}: background has NaN, inf or complex values; give {accepted}")
    elif isinstance(background, bool) or not isinstance(background, numbers.Real) or not math.isfinite(background):
        raise ConfigurationError(f"{who}: background must be {accepted}, got {background!r}")


def _check_flag(who: str, name: str, value, *, none: bool = False) -> None:
    if not (isinstance(value, bool) or (none and value is None)):
        raise ConfigurationError(f"{who}: {name} must be True or False{' or None' if none else ''}, got {value!r}")


def _check_settle(who: str, network, background, images, *, dt, solver, window, max_time, rtol, atol
                  ) -> tuple[float, Solver, float, float, float, float]:
    """:func:`settle`'s arguments, checked before anything runs: ``(dt, solver, window,
    max_time, rtol, atol)`` as used."""
    _check_field(who, network)
    dt = _number(who, "dt", dt)
    window, max_time = _number(who, "window", window), _number(who, "max_time", max_time)
    if window > max_time:
        raise ConfigurationError(f"{who}: max_time={max_time:g} ms is shorter than one window of {window:g} ms; "
                                 "raise max_time or shorten the window")
    rtol = _number(who, "rtol", rtol, zero=True, unit=" (relative drift per window)")
    atol = _number(who, "atol", atol, unit=" (the absolute drift floor, e.g. 1e-6)")
    _whole_steps(who, "window", window, dt)  # the drift is read on the grid i * dt
    if images is None:
        if isinstance(background, str):
            raise ConfigurationError(f"{who}: background {background!r} is the screen around images: pass "
                                     "images=(N, *shape), or give background as a tensor (batch, *input_shape)")
        _check_stimulus_value(who, network, background)
    else:
        _check_images(who, network, images, background)
    return dt, get_solver(solver), window, max_time, rtol, atol


@dataclass(frozen=True)
class Settled:
    """The outcome of :func:`settle`.

    state : ``{population: (batch, *shape)}`` at the end of settling (the steady state).
    time : ms of settling it took (a multiple of ``window``).
    drift : per population, ``|m(T) - m(T - window)|`` of the population mean rate ``m`` over
        the last window (the rate's own units).
    level : per population, ``max |m|`` over the last window.
    steady : every population met ``drift <= rtol * level + atol``.
    """

    state: dict[str, Tensor]
    time: float
    drift: dict[str, float] = field(default_factory=dict)
    level: dict[str, float] = field(default_factory=dict)
    steady: bool = True

    def attrs(self) -> dict:
        """JSON attributes for an archive."""
        return {"settle_ms": self.time, "settle_steady": self.steady,
                "settle_drift": {k: self.drift[k] for k in sorted(self.drift)},
                "settle_level": {k: self.level[k] for k in sorted(self.level)}}


def settle(network, background=BACKGROUND, *, images: Tensor | None = None, dt: float, solver="euler",
           window: float = 100.0, max_time: float = 3000.0, rtol: float = 1e-3, atol: float = 1e-6) -> Settled:
    r"""Run ``network`` on a constant ``background`` until its activity is steady.

    From the network's initial state, integrate in windows of ``window`` ms (continuing
    exactly, delayed past included) until every population's mean rate ``m(t)`` changes by
    at most ``rtol * max|m| + atol`` over the last window, or ``max_time`` ms have passed;
    then warn (:class:`~dynode.errors.BaselineDriftWarning`) with the drift measured. Start an
    experiment from ``settled.state``: a steady state is its own constant history, so a
    baseline recorded from it is flat, whatever the network's slow loops.

    ``background``: the screen held constant. With ``images`` (``(N, *shape)``, the batch
    that is settled, e.g. a protocol's ``images``) it is the screen around them, as everywhere
    (:func:`~dynode.stimuli.resolve_background`: ``"mean"`` by default, ``"blank"``, ``"grey"``,
    a number or a tensor broadcasting to one image), exactly the value a protocol with these
    images shows while its envelope is 0. Without ``images`` it is the stimulus value itself:
    a tensor ``(batch, *input_shape)`` or ``{input: tensor}`` (a network with several inputs).

    Every argument is checked before the first evaluation (a :class:`ConfigurationError`, or a
    :class:`~dynode.errors.ShapeError` for a background that does not fit the network's input,
    naming the argument and what it accepts): ``dt``, ``window`` and ``max_time`` finite > 0 ms
    with ``window`` a whole number of steps and ``window <= max_time``; ``rtol`` finite >= 0;
    ``atol`` finite > 0; a known solver.
    """

    dt, solver, window, max_time, rtol, atol = _check_settle(
        "settle", network, background, images, dt=dt, solver=solver, window=window, max_time=max_time,
        rtol=rtol, atol=atol)
    stim = Constant(background) if images is None else Modulated(images, envelopes.constant(0.0),
                                                                  background=background)
    saves = [i * dt for i in range(round(window / dt) + 1)]
    previous, t, steady = None, 0.0, False  # the loop runs at least once (window <= max_time)
    with torch.no_grad():
        while t < max_time and not steady:
            sol = integrate(network, stim, t0=t, t_end=t + window, dt=dt, solver=solver,
                            initial_state=previous, save_at=[t + s for s in saves])
            previous, t = sol, t + window
            means = {p: x.flatten(2).mean(-1).double() if x.dim() > 2 else x.double()
                     for p, x in sol.states.items()}                    # (time, batch)
            drift = {p: float((m[-1] - m[0]).abs().max()) for p, m in means.items()}
            level = {p: float(m.abs().max()) for p, m in means.items()}
            steady = all(drift[p] <= rtol * level[p] + atol for p in means)
    if not steady:
        worst = max(drift, key=lambda p: drift[p] / (level[p] + atol))
        warnings.warn(f"the network did not settle on the background within {max_time:g} ms: population "
                      f"{worst!r} still changes by {drift[worst]:.3g} ({100 * drift[worst] / max(level[worst], atol):.2g} "
                      f"% of its level {level[worst]:.3g}) over the last {window:g} ms; a baseline "
                      "read from it drifts (raise max_time, or check the network's stability with "
                      "dn.models.summary(net))", BaselineDriftWarning, stacklevel=user_stacklevel())
    return Settled(state={p: x.clone() for p, x in previous.final_state.items()}, time=t, drift=drift,
                   level=level, steady=steady)


def run_protocol(network, protocol, *, dt: float, solver="euler", record: Record | None = None,
                 store=None, overwrite: bool = False, progress: bool | None = None,
                 t_end: float | None = None, attrs: dict | None = None, initial_state=None
                 ) -> SimulationResult:
    """Simulate ``network`` through ``protocol`` (a labelled stimulus with ``t_end``) and record it.

    ``record`` defaults to the mean over units of every population at every step (the
    population time course that stands in for an ECoG broadband signal). ``initial_state``:
    e.g. :func:`settle`'s state on the protocol's background.
    """
    t_end = t_end if t_end is not None else getattr(protocol, "t_end", None)
    if t_end is None:
        raise ConfigurationError("the protocol has no t_end; pass t_end= (ms)")
    if attrs is not None and not isinstance(attrs, Mapping):
        raise ConfigurationError(f"run_protocol: attrs must be a dict of extra archive attributes or None, got "
                                 f"{type(attrs).__name__}")
    record = record if record is not None else Record(reduce="mean")
    meta = {"experiment": getattr(protocol, "name", type(protocol).__name__),
            "onset_ms": getattr(protocol, "onset", None), **(attrs or {})}
    with torch.no_grad():
        return simulate(network, protocol, t_end=float(t_end), dt=dt, solver=solver, record=record,
                        store=store, overwrite=overwrite, progress=progress, attrs=meta,
                        initial_state=initial_state)


def groen2022_experiments(network, images: Tensor, out_dir, *, dt: float, solver="euler",
                          kinds: Sequence[str] = TIME_COURSE_KINDS, record: Record | None = None,
                          overwrite: bool = False, progress: bool | None = None,
                          background=BACKGROUND, onset: float = 100.0, settle_max: float | None = 3000.0
                          ) -> dict[str, Path]:
    """Run the ``kinds`` of :data:`dynode.stimuli.EXPERIMENTS` (those of Groen et al. (2022):
    contrast, duration, repetition) on ``images`` (``(N, C, H, W)``, already normalised as the
    network expects) and write one archive per kind, ``out_dir/<label>.zarr``
    (``groen2022-<kind>.zarr``). Returns ``{kind: path}``.

    ``background``: the screen between stimuli in the units the network is fed (default
    ``"mean"``: each image's mean luminance, so that a contrast change keeps the mean; see
    :func:`dynode.stimuli.resolve_background`). ``settle_max`` (ms): before each experiment the
    network runs on the background alone until steady (:func:`settle`, warning with the drift
    it measured if it is not steady after this long); the experiment starts from that state,
    so its baseline (the ``onset`` ms before the stimulus, default 100) is flat. ``None``
    starts from the network's initial state instead. Epochs end 1.2 s after the onset.
    Use a ``dt`` that divides the durations (1 ms) for exact pulse lengths.

    ``record`` defaults to the population mean; unless it names populations, a
    :class:`~dynode.Network`'s areas are recorded (``net.areas()``: not the normalization pools,
    adaptation or inhibitory populations that components add).

    Every argument is checked before anything runs or is written (``out_dir`` is created with
    the first archive): the images against the network's input, the ``background`` (one of
    :data:`BACKGROUNDS`, a number, or a tensor that broadcasts to one image; else a
    :class:`~dynode.errors.ShapeError` / :class:`ConfigurationError` with the shape given and
    the shapes accepted), ``kinds``, ``dt`` (finite > 0; a fixed-step solver's dt divides the
    epoch and the settling window), ``onset`` and ``settle_max`` (finite > 0 ms), the record
    against the network, and every archive path (an existing one needs ``overwrite=True``)."""

    who = "groen2022_experiments"
    _check_field(who, network)
    if record is not None and not isinstance(record, Record):
        raise ConfigurationError(f"{who}: record must be a dynode.Record or None, got {type(record).__name__}")
    record = record if record is not None else Record(reduce="mean")
    if record.populations is None and isinstance(network, Network):
        record = replace(record, populations=list(network.areas()))
    if isinstance(kinds, (str, bytes)) or not isinstance(kinds, Sequence) or not kinds:
        raise ConfigurationError(f"{who}: kinds must be a non-empty list of experiments from {list(GROEN_KINDS)}, "
                                 f"e.g. kinds=['contrast'], got {kinds!r}")
    unknown = [k for k in kinds if k not in GROEN_KINDS]
    if unknown:
        raise ConfigurationError(f"unknown Groen 2022 experiments {unknown}; choose from {list(TIME_COURSE_KINDS)}")
    other = [k for k in kinds if k not in TIME_COURSE_KINDS]
    if other:
        raise ConfigurationError(f"{who}: {other} is not a time-course experiment (it needs a decision readout): "
                                 "run it with dynode.experiments.reaction_time_experiment; kinds here: "
                                 f"{list(TIME_COURSE_KINDS)}")
    if len(set(kinds)) != len(kinds):
        raise ConfigurationError(f"{who}: kinds {list(kinds)} names an experiment twice (each writes one archive)")
    dt, solver = _number(who, "dt", dt), get_solver(solver)
    onset = _number(who, "onset", onset, unit=" of ms (the baseline before the stimulus)")
    if settle_max is not None:
        settle_max = _number(who, "settle_max", settle_max, unit=" of ms (or None: no settling)")
    _check_flag(who, "overwrite", overwrite)
    _check_flag(who, "progress", progress, none=True)
    _check_images(who, network, images, background)
    if not isinstance(out_dir, (str, os.PathLike)):
        raise ConfigurationError(f"{who}: out_dir must be a folder path (str or pathlib.Path), got "
                                 f"{type(out_dir).__name__}")
    paths = {kind: prepare_path(Path(out_dir) / f"{EXPERIMENTS[kind].label}.zarr", overwrite) for kind in kinds}
    protocols = {kind: EXPERIMENTS[kind].protocol(images, background=background, onset=onset) for kind in kinds}
    t_end = next(iter(protocols.values())).t_end  # the same epoch for every kind
    if solver.grid:
        _whole_steps(who, "the epoch (onset + 1200 ms)", t_end, dt)
    record.times(0.0, t_end, dt, solver.grid)
    record.plan({n: tuple(v.shape[1:]) for n, v in network.init_state(1, device="meta").items()})
    if settle_max is not None:  # settle checks the rest before its first step; these are named here
        if settle_max < _SETTLE_WINDOW:
            raise ConfigurationError(f"{who}: settle_max={settle_max:g} ms is shorter than one settling window "
                                     f"({_SETTLE_WINDOW:g} ms); give settle_max >= {_SETTLE_WINDOW:g} or None")
        _whole_steps(who, "the settling window", _SETTLE_WINDOW, dt)
    for kind, protocol in protocols.items():
        state, extra = None, {}
        if settle_max is not None:
            settled = settle(network, background, images=protocol.images, dt=dt, solver=solver,
                             max_time=settle_max)
            state, extra = settled.state, settled.attrs()
        run_protocol(network, protocol, dt=dt, solver=solver, record=record, store=paths[kind],
                     overwrite=overwrite, progress=progress, initial_state=state, attrs=extra)
    return paths


def recovery_after_offset(network, images: Tensor, *, dt: float, solver="euler", onset: float = 100.0,
                          duration: float = 500.0, t_end: float = 3500.0, background=BACKGROUND,
                          tail: float = 100.0) -> dict[str, dict[str, float]]:
    r"""Does activity return to its rest state after a stimulus? A long run (default 3.5 s) from
    the settled state: ``images`` shown at full contrast from ``onset`` for ``duration`` ms,
    then the ``background`` (the screen, default ``"mean"``, as everywhere) until ``t_end``.

    Returns per area (a :class:`~dynode.Network`'s ``areas()``, else every population) of the
    population mean rate ``m(t)`` (mean over units and images): ``peak`` ``max |m - m_0|``
    (``m_0`` the rest level before the onset), ``final`` ``max |m - m_0|`` over the last ``tail``
    ms, and ``final_to_peak`` their ratio (``nan`` when there is no response).
    """

    who = "recovery_after_offset"
    _check_field(who, network)
    dt, solver = _number(who, "dt", dt), get_solver(solver)
    onset = _number(who, "onset", onset, unit=" of ms (the rest level is read before it)")
    duration, tail = _number(who, "duration", duration), _number(who, "tail", tail)
    t_end = _number(who, "t_end", t_end)
    if not onset + duration + tail <= t_end:
        raise ConfigurationError(f"{who}: t_end={t_end} ms leaves no {tail} ms after the "
                                 f"offset at {onset + duration} ms")
    if solver.grid:
        _whole_steps(who, "t_end", t_end, dt)
    _check_images(who, network, images, background)
    protocol = present(images, onset=onset, duration=duration, background=background, t_end=t_end)
    settled = settle(network, background, images=protocol.images, dt=dt, solver=solver)  # checks first
    every = max(1, round(10.0 / dt)) * dt
    saves = [i * every for i in range(math.floor(t_end / every + TIME_RTOL) + 1)]
    if saves[-1] < t_end - TIME_RTOL * t_end:
        saves.append(t_end)  # the tail always holds a save
    with torch.no_grad():
        sol = integrate(network, protocol, t_end=t_end, dt=dt, solver=solver, initial_state=settled.state,
                        save_at=saves)
    names = network.areas() if isinstance(network, Network) else tuple(sol.states)
    t = sol.ts.numpy()
    out = {}
    for name in names:
        x = sol.states[name]
        m = x.flatten(2).mean(-1).mean(-1).double() if x.dim() > 2 else x.double().mean(-1)
        rest = float(m[t < onset].mean())
        dev = (m - rest).abs()
        peak, final = float(dev.max()), float(dev[t >= t_end - tail].max())
        out[name] = {"peak": peak, "final": final, "final_to_peak": final / peak if peak > 0 else math.nan}
    return out


def _levels(who: str, name: str, values, *, zero: bool) -> list[float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ConfigurationError(f"{who}: {name} must be a non-empty list of numbers, got {values!r}")
    out = [_number(who, name, v, zero=zero, unit="") for v in values]
    if len(set(out)) != len(out):
        raise ConfigurationError(f"{who}: {name} {out} repeats a value")
    return out


def _reaction_time_store(store, overwrite: bool) -> Path:
    """Check the reaction-time archive's path before any work: a new path in a writable folder,
    or with ``overwrite`` an earlier reaction-time archive (nothing else is deleted)."""
    if not isinstance(store, (str, os.PathLike)):
        raise ConfigurationError(f"reaction_time_experiment: store must be a path (str or pathlib.Path) or None, got "
                                 f"{type(store).__name__}")
    path = Path(store)
    if not (path.exists() or path.is_symlink()):
        return prepare_path(path, overwrite)
    if not overwrite:
        raise ConfigurationError(f"store {str(path)!r} already exists; pass overwrite=True to replace it, or choose "
                                 "another path")
    meta = path / "zarr.json"
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {}) if meta.is_file() and not path.is_symlink() else {}
    except (OSError, ValueError):
        attrs = {}
    if "dynode_reaction_times" not in attrs:
        raise ConfigurationError(f"store {str(path)!r} is not a reaction-time archive (no 'dynode_reaction_times' "
                                 "attribute); refusing to delete it even with overwrite=True")
    return path


def reaction_time_experiment(network, images: Tensor, labels, store=None, *, dt: float, solver="euler",
                             contrasts: Sequence[float] = REACTION_TIME["contrasts"],
                             noises: Sequence[float] = REACTION_TIME["noises"],
                             bounds: Sequence[float] = REACTION_TIME["bounds"], trials: int = 8,
                             deadline: float = REACTION_TIME["epoch_ms"], tau: float = 100.0, leak: float = 0.05,
                             evidence: str = "softmax", delay: float = 0.0, background=BACKGROUND,
                             settle_max: float | None = 3000.0, seed: int = 0, overwrite: bool = False
                             ) -> xr.Dataset:
    r"""The reaction-time experiment (``EXPERIMENTS["reaction_time"]``): a speeded
    classification of ``images`` (``(N, *shape)``, with their class ``labels``) by ``network``'s
    readout through an accumulator per class (:func:`dynode.models.add_accumulator`:
    ``tau_a dA_k = (e_k - leak A_k) dt + nu sqrt(2 tau_a) dW_k``, ``e = evidence(readout)``), the
    decision the first accumulator to reach a bound. The backbone is not changed (a copy gets
    the accumulators; their readout is the network's trained one).

    Each image is shown at each of ``contrasts`` from the onset (``t = 0``) until the
    ``deadline`` (ms); the backbone starts from its settled state on the ``background``
    (:func:`settle`, up to ``settle_max`` ms; ``None``: its initial state) and the accumulators
    from 0 at the onset. Per accumulator noise ``nu`` in ``noises`` one run (``trials`` noisy
    repeats of every contrast x image; one repeat for ``nu = 0``, which is deterministic),
    the decisions at every bound in ``bounds`` read from it (:func:`dynode.models.decision.race`:
    the dynamics do not depend on the bound). The sample of ``(contrast, image, trial)`` sees
    the Brownian path of key ``(seed + noise index, sample)``: reruns are bit-identical.

    Returns (and with ``store``, a path, writes as a zarr archive that
    :func:`dynode.analysis.analyze_reaction_times` reads) a Dataset with ``rt`` (ms from the
    onset, NaN: no decision by the deadline) and ``choice`` (-1: none), dims ``(noise,
    bound, sample)``, and the sample coordinates ``contrast``, ``image``, ``trial``, ``label``.

    Checked before anything runs: ``dt`` (> 0; a fixed-step solver's ``dt`` divides the
    deadline), a solver that integrates noise when a noise level is > 0 (Euler-Maruyama
    ``"euler"`` or stochastic Heun ``"heun"``), levels (contrasts >= 0, noises >= 0, bounds > 0,
    no repeats), ``trials`` >= 1, one label per image, the network's readout, the accumulator's
    parameters and the store (an existing one needs ``overwrite=True``)."""
    who = "reaction_time_experiment"
    exp = EXPERIMENTS["reaction_time"]
    if not isinstance(network, Network) or network.readout is None:
        raise ConfigurationError(f"{who}: network must be a dynode.Network with a readout (the trained classifier "
                                 "whose evidence the accumulators integrate)")
    dt, solver = _number(who, "dt", dt), get_solver(solver)
    deadline = _number(who, "deadline", deadline, unit=" of ms (after the onset)")
    cs = _levels(who, "contrasts", contrasts, zero=True)
    nus = _levels(who, "noises", noises, zero=True)
    bs = _levels(who, "bounds", bounds, zero=False)
    if isinstance(trials, bool) or not isinstance(trials, numbers.Integral) or trials < 1:
        raise ConfigurationError(f"{who}: trials must be an integer >= 1, got {trials!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ConfigurationError(f"{who}: seed must be an integer >= 0, got {seed!r}")
    if any(nu > 0 for nu in nus) and not getattr(solver, "stochastic", False):
        raise ConfigurationError(f"{who}: the noise levels {[nu for nu in nus if nu > 0]} need a solver that "
                                 f"integrates noise: 'euler' (Euler-Maruyama) or 'heun' (stochastic Heun), not "
                                 f"{type(solver).__name__}")
    if solver.grid:
        _whole_steps(who, "deadline", deadline, dt)
    if settle_max is not None:
        settle_max = _number(who, "settle_max", settle_max, unit=" of ms (or None: no settling)")
        _whole_steps(who, "the settling window", _SETTLE_WINDOW, dt)
    _check_flag(who, "overwrite", overwrite)
    _check_images(who, network, images, background)
    labels = torch.as_tensor(labels).flatten()
    if labels.shape[0] != images.shape[0] or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ConfigurationError(f"{who}: labels must be one integer class per image ({images.shape[0]}), got "
                                 f"{labels.dtype} of shape {tuple(labels.shape)}")
    k = network.readout.num_classes
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise ConfigurationError(f"{who}: labels must be classes of the readout, 0 .. {k - 1}, got "
                                 f"{sorted(set(labels.tolist()))}")
    decider = copy.deepcopy(network)  # the backbone and its readout as trained; the copy gets the accumulators
    name = add_accumulator(decider, tau=tau, leak=leak, noise=0.0, evidence=evidence, delay=delay,
                           name="decision")
    path = None if store is None else _reaction_time_store(store, overwrite)
    n = images.shape[0]
    settled = None
    if settle_max is not None:
        settled = settle(network, background, images=images, dt=dt, solver=solver, max_time=settle_max)
    out_rt, out_choice = [], []
    for i, nu in enumerate(nus):
        reps = trials if nu > 0 else 1
        batch = images.repeat(reps, *([1] * (images.dim() - 1)))  # trial-major: sample t * n + j
        protocol = exp.build(batch, contrasts=cs, onset=0.0, t_end=deadline, background=background, input=None)
        which = torch.arange(protocol.batch_size) % n              # the image of every sample
        state = {} if settled is None else {p: x[which] for p, x in settled.state.items()}
        state = {**decider.init_state(protocol.batch_size, device=images.device), **state}
        state[name] = torch.zeros_like(state[name])
        set_accumulator_noise(decider, nu, name)
        with torch.no_grad():
            d = race(decider, protocol, bounds=bs, t_end=deadline, dt=dt, solver=solver,
                     seed=seed + i if nu > 0 else None, initial_state=state, name=name)
        rt = np.full((len(bs), len(cs) * n * trials), np.nan)
        choice = np.full(rt.shape, -1, dtype=np.int64)
        run = np.arange(protocol.batch_size)  # sample c (reps n) + t n + j of this run
        pos = (run // (reps * n)) * (trials * n) + run % (reps * n)
        rt[:, pos] = d.rt.cpu().numpy()
        choice[:, pos] = d.choice.cpu().numpy()
        out_rt.append(rt)
        out_choice.append(choice)
    # samples: condition-major over (contrast, trial, image); a noiseless run fills trial 0 only
    contrast = np.repeat(cs, n * trials)
    trial = np.tile(np.repeat(np.arange(trials), n), len(cs))
    image = np.tile(np.arange(n), len(cs) * trials)
    rt, choice = np.stack(out_rt), np.stack(out_choice)
    ran = np.stack([np.broadcast_to((trial < (trials if nu > 0 else 1))[None], (len(bs), rt.shape[-1]))
                    for nu in nus])
    ds = xr.Dataset(
        {"rt": (("noise", "bound", "sample"), rt, {"units": "ms", "long_name": "reaction time from the onset",
                                                    "missing": "NaN: no decision by the deadline"}),
         "choice": (("noise", "bound", "sample"), choice, {"missing": "-1: no decision"}),
         "ran": (("noise", "bound", "sample"), ran, {"long_name": "the trial was run (a noiseless condition "
                                                                  "runs one trial)"})},
        coords={"noise": ("noise", nus, {"long_name": "accumulator noise nu"}),
                "bound": ("bound", bs, {"long_name": "decision bound B"}),
                "contrast": ("sample", contrast), "image": ("sample", image), "trial": ("sample", trial),
                "label": ("sample", labels.cpu().numpy()[image])},
        attrs={"dynode_reaction_times": ARCHIVE_FORMAT, "experiment": exp.label,
               "kind": exp.name, "deadline_ms": deadline, "onset_ms": 0.0, "dt": dt, "solver": type(solver).__name__,
               "num_classes": k, "tau_ms": float(tau), "leak": float(leak), "evidence": evidence,
               "delay_ms": float(delay), "seed": int(seed), "trials": int(trials),
               "settle_ms": None if settled is None else settled.time,
               "equation": "tau dA_k = (e_k - leak A_k) dt + noise sqrt(2 tau) dW_k; decision: max_k A_k >= bound"})
    if path is not None:
        tmp = path.with_name(path.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    return ds
