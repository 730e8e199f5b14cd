r"""Fitting a model's time constants, delays, normalisation and observation gains to recorded
time courses (issue 24): :func:`fit` (``dn.fit``), :class:`FitConfig` and
:func:`run_fit_config` (``dynode fit CONFIG``).

**What is simulated.** The recordings (the layout of :mod:`dynode.recordings`: an
``xarray.Dataset`` with dims ``condition`` and ``time`` (ms, uniform), the condition
coordinates ``experiment``, ``contrast``, ``duration`` (ms), ``isi`` (ms) and ``onset`` (ms, on
the recording's time axis), one variable per area) name their conditions; each experiment's
conditions are rebuilt by the experiment's own stimulus builder
(:data:`dynode.stimuli.EXPERIMENTS`, e.g. :func:`~dynode.stimuli.contrast_series` with the
recorded contrasts), so a fit sees exactly the stimuli of ``dynode experiment``. The model
starts from its initial state at the recording's first time (simulation time
``s = t - t_first``) and is integrated with a fixed-step solver (``dt`` ms); its states are
read at the recording's times (the solver's interpolant between grid points). The
experiments' batches are integrated as one batch when they share the epoch.

**What is compared.** The observation of area ``a`` for condition ``c`` is by default the
mean rate over the area's units, times a gain plus an offset,

.. math:: \hat y_{a,c}(t) = g_a\, \bar r_{a,c}(t) + o_a ,

(``gain:a`` and ``offset:a`` are fitted when named in ``params``; otherwise ``g_a = 1``,
``o_a = 0``). Other observations (:mod:`dynode.observe`, computed by its functions on the
states saved on the solver's grid, then read at the recorded times by linear interpolation):
``"bold"`` (:func:`dynode.observe.bold`, Balloon-Windkessel, of the mean rate), ``"drive"``
(the mean synaptic drive ``u`` of the area's units) and ``"lfp"`` (the Mazzoni et al. 2015
proxy where the area has an E/I split, else the broadband one); ``drive`` and ``lfp`` re-read
the delayed inputs from the saved states, so the connections into the observed areas need
fixed delays that are multiples of ``dt`` (:meth:`dynode.observe.DriveReader.check`). Areas are
matched by name, or ``areas={population: recorded area}``
(:func:`dynode.recordings.match_areas`); an area with an ``electrode`` dimension is fitted
as the mean over its electrodes. The loss is the mean squared error per area normalised by the recording's
variance, averaged over areas,

.. math:: \mathcal L = \frac{1}{|A|}\sum_a \frac{\sum_{c,t} (\hat y_{a,c}(t) - y_{a,c}(t))^2}
          {\sum_{c,t} (y_{a,c}(t) - \bar y_a)^2} = \frac{1}{|A|}\sum_a (1 - R^2_a),

so each area weighs the same whatever its units, and ``1 - loss`` is the mean ``R^2``.

**What is fitted** (``params``, by name; a kind alone, e.g. ``"tau"``, means every such
parameter the model has):

* ``tau:P``: the learnt time constant of population ``P`` (ms;
  ``add_population(..., learn_tau=True, tau_bounds=...)``);
* ``delay:A->B``: the learnt delay of connection ``A -> B`` (ms;
  ``connect(..., learn_delay=True, delay_bounds=...)``);
* ``sigma:P``: the semi-saturation of ``P``'s divisive combine
  (:class:`dynode.models.normalization.Divide` with ``learn_sigma``);
* ``weight:A->B``: the parameters of connection ``A -> B``'s operator (of a normalisation or
  adaptation pool: its weights ``|w|``, the loop's strength);
* ``bias:P``: the bias of ``P``;
* ``norm:P`` / ``adapt:P``: every learnable part of ``P``'s normalisation / adaptation loop
  (its ``sigma``; the pool population's learnt ``tau``, its input weights and learnt delays);
* ``gain:a`` / ``offset:a``: the observation gain / offset of recorded area ``a``;
* ``weights``: every parameter of the network (``weights:<state_dict name>``, reported as the
  raw tensors, taus and delays included).

A name the model does not have, a fixed ``tau`` or delay named for fitting, recordings that
lack the conditions an experiment needs, NaN samples, areas the model does not have: each is
a :class:`~dynode.errors.ConfigurationError` before anything is simulated.

**How.** L-BFGS (default; one step with a strong-Wolfe line search per iteration) or Adam
(``lr`` cosine-annealed to ``lr / 10``) on the parameters' unconstrained forms (learnt times
are :class:`dynode.population.Bounded`, so they stay inside their bounds; gains and offsets are
scaled by their least-squares values at the start of each restart, so a step is relative for
them). A restart stops after ``steps`` iterations or when the best loss of the last
``patience`` iterations improves on the best before by less than ``tol`` (relative), or when
the loss is below ``1e-12``: *converged*. Restart 0 starts from the model's values; restart ``k > 0`` from a random point
(seed ``seed + k``): learnt times uniform in the middle 70 % of their log range, other
parameters multiplied by ``exp(0.3 z)``. The lowest final loss wins; its values are loaded
into the model. The spread over restarts (mean, sd, every restart's value) is reported.

**Checkpoints.** With ``checkpoint_dir``, ``last.pt`` holds the fit after every iteration
(weights, observation, optimizer state, loss history, finished restarts, the run's config as
canonical JSON; read with ``weights_only=True``); ``resume=True`` continues it exactly (the
same iterations as an uninterrupted fit) and refuses a checkpoint of another fit, naming what
differs (:func:`dynode.train.state.config_diff`). A fit whose loss, gradient or parameters
become NaN or inf, or whose simulation diverges, stops: the last good state is put back into
the model and saved, and the result's ``status`` is ``"diverged"`` with the reason (also
warned).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
from pydantic import Field, ValidationError, model_validator
from torch import Tensor, nn

from dynode.analysis.style import pyplot, style
from dynode.checkpoint import load_checkpoint, load_state, load_weights
from dynode.datafile import load_yaml, read_text
from dynode.errors import (CheckpointError, ConfigurationError, DivergenceError, SolverError,
                           describe_validation_error, user_stacklevel)
from dynode.integrate import integrate
from dynode.models.normalization import Divide, Pool, _Modulated
from dynode.network import Network
from dynode.population import Bounded
from dynode.observe import (BOLD, LFP, Drive, DriveReader, Observation, PopulationObserver, Rate, as_observation,
                            ei_split, lfp_proxy)
from dynode.recordings import CONDITION_COORDS, load_recordings, match_areas, validate_recordings
from dynode.solver_config import FIXED_STEP, FrozenConfig
from dynode.spec import build_network, load_spec, ModelSpec, weights_fingerprint
from dynode.stimuli import EXPERIMENTS
from dynode.stimuli import envelopes as E
from dynode.stimuli.protocols import Protocol
from dynode.train.state import canonical_json, config_diff

__all__ = ["fit", "FitResult", "FitConfig", "FitModel", "FitSettings", "run_fit_config", "dn_network",
           "simulate_recordings", "plot_fit", "fit_command", "PARAM_KINDS", "OPTIMIZERS",
           "FitDivergenceWarning"]

PARAM_KINDS = ("tau", "delay", "sigma", "weight", "bias", "norm", "adapt", "gain", "offset", "weights")
"""The kinds of fitted parameters (``kind:target``; see the module doc)."""
CHECKPOINT_KIND = "dynode-fit"
OPTIMIZERS = ("adam", "lbfgs")
"""``"adam"`` (``lr`` cosine-annealed to ``lr / 10`` over ``steps``) or ``"lbfgs"`` (one
L-BFGS step with a strong-Wolfe line search of at most 8 evaluations per iteration, step
length ``lr``: 1 is its natural step)."""
EXACT = 1e-12
"""A loss (``mean_a (1 - R^2_a)``) below this is an exact fit: the fit has converged."""
DEFAULT_LR = {"adam": 0.05, "lbfgs": 1.0}
"""``lr`` when none is given."""


class _Diverged(Exception):
    """Internal: an evaluation whose simulation, loss or gradient is not finite."""


class FitDivergenceWarning(UserWarning):
    """A fit stopped because its loss, gradient, parameters or simulation became NaN/inf; the
    last good state was kept (and saved where the fit checkpoints)."""


# -- the parameters --------------------------------------------------------------------------
@dataclass
class _Param:
    """One named fitted parameter: the leaf tensors optimised, the value reported and how a
    restart moves it."""

    name: str
    unit: str
    tensors: list[Tensor]
    read: Callable[[], Tensor]
    perturb: Callable[[torch.Generator], None] | None


def _scalar_or_list(x: Tensor) -> float | list:
    x = x.detach().double().cpu()
    return float(x) if x.numel() == 1 else x.flatten().tolist()


def _bounded_param(name: str, b: Bounded) -> _Param:
    def perturb(gen: torch.Generator, b=b) -> None:
        frac = 0.15 + 0.7 * torch.rand(b.raw.shape, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            b.raw.copy_(torch.logit(frac).to(b.raw.dtype))
    return _Param(name, "ms", [b.raw], b.forward, perturb)


def _scale_perturb(tensors: Sequence[Tensor]) -> Callable[[torch.Generator], None]:
    def perturb(gen: torch.Generator) -> None:
        with torch.no_grad():
            for t in tensors:
                z = torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)
                t.mul_(torch.exp(0.3 * z))
    return perturb


def _sigma_param(name: str, d: Divide) -> _Param:
    def perturb(gen: torch.Generator, d=d) -> None:
        z = float(torch.randn((), generator=gen, dtype=torch.float64))
        with torch.no_grad():
            sigma = float(d.sigma) * math.exp(0.3 * z)
            d.s.fill_(sigma + math.log(-math.expm1(-sigma)))  # softplus^-1
    return _Param(name, "1", [d.s], lambda d=d: d.sigma, perturb)


def _op_param(name: str, op: nn.Module) -> _Param:
    tensors = [p for p in op.parameters()]
    if isinstance(op, Pool):
        read = op.weights
    elif len(tensors) == 1:
        read = lambda t=tensors[0]: t  # noqa: E731
    else:
        read = lambda ts=tensors: torch.cat([t.reshape(-1) for t in ts])  # noqa: E731
    return _Param(name, "1", tensors, read, _scale_perturb(tensors))


def _divisive(net: Network, pop: str, kinds: tuple[str, ...]) -> list[Divide | _Modulated]:
    comb = net.populations[pop].combine
    out = []
    while isinstance(comb, _Modulated):
        if comb.kind in kinds:
            out.append(comb)
        comb = comb.inner
    return out


def _connection(net: Network, label: str, what: str):
    src, sep, dst = label.partition("->")
    src, dst = src.strip(), dst.strip()
    for c in net.connections:
        if sep and c.src == src and c.dst == dst:
            return c
    known = ", ".join(f"{c.src}->{c.dst}" for c in net.connections)
    raise ConfigurationError(f"{what}: the model has no connection {label!r} (give 'SOURCE->TARGET'; its "
                             f"connections: {known})")


def _population(net: Network, name: str, what: str) -> None:
    if name not in net.populations:
        raise ConfigurationError(f"{what}: the model has no population {name!r} (populations: "
                                 f"{list(net.populations)})")


def _tau(net: Network, pop: str, what: str) -> _Param:
    _population(net, pop, what)
    b = net.populations[pop]._modules.get("learnt_tau")
    if b is None:
        raise ConfigurationError(f"{what}: the time constant of {pop!r} is fixed; build the population with "
                                 "learn_tau=True (and tau_bounds=(lo, hi) ms) to fit it")
    return _bounded_param(f"tau:{pop}", b)


def _delay(net: Network, label: str, what: str) -> _Param:
    c = _connection(net, label, what)
    if c.learnt is None:
        raise ConfigurationError(f"{what}: the delay of {c.src}->{c.dst} is fixed ({c.delay:g} ms); connect with "
                                 "learn_delay=True (and delay_bounds=(lo, hi) ms) to fit it")
    return _bounded_param(f"delay:{c.src}->{c.dst}", c.learnt)


def _sigma(net: Network, pop: str, what: str) -> _Param:
    _population(net, pop, what)
    found = [d for d in _divisive(net, pop, ("divisive",)) if isinstance(d.s, nn.Parameter)]
    if not found:
        raise ConfigurationError(f"{what}: {pop!r} has no learnable semi-saturation (no divisive normalisation "
                                 "in its combine, or learn_sigma=False); add dynode.models.add_normalization")
    return _sigma_param(f"sigma:{pop}", found[0])


def _weight(net: Network, label: str, what: str) -> _Param:
    c = _connection(net, label, what)
    if not any(True for _ in c.op.parameters()):
        raise ConfigurationError(f"{what}: the operator of {c.src}->{c.dst} ({type(c.op).__name__}) has no "
                                 "parameters (or they are fixed, e.g. learn_weight=False)")
    return _op_param(f"weight:{c.src}->{c.dst}", c.op)


def _component(net: Network, pop: str, what: str, kinds: tuple[str, ...], label: str) -> list[_Param]:
    """Every learnable part of ``pop``'s normalisation or adaptation loop(s)."""
    _population(net, pop, what)
    loops = _divisive(net, pop, kinds)
    out: list[_Param] = []
    for loop in loops:
        if isinstance(loop, Divide) and isinstance(loop.s, nn.Parameter):
            out.append(_sigma_param(f"sigma:{pop}", loop))
        g = net.populations[loop.source]
        b = g._modules.get("learnt_tau")
        if b is not None:
            out.append(_bounded_param(f"tau:{loop.source}", b))
        for c in net.connections:
            if c.dst == loop.source:
                if c.learnt is not None:
                    out.append(_bounded_param(f"delay:{c.src}->{c.dst}", c.learnt))
                if any(True for _ in c.op.parameters()):
                    out.append(_op_param(f"weight:{c.src}->{c.dst}", c.op))
    if not out:
        raise ConfigurationError(f"{what}: {pop!r} has no {label} with learnable parts (add one with "
                                 f"dynode.models.add_{'normalization' if label == 'normalisation' else 'adaptation'}, "
                                 "with learnable weights or sigma)")
    return out


def _all_of(net: Network, kind: str) -> list[str]:
    if kind == "tau":
        return [f"tau:{p}" for p, pop in net.populations.items() if "learnt_tau" in pop._modules]
    if kind == "delay":
        return [f"delay:{c.src}->{c.dst}" for c in net.connections if c.learnt is not None]
    if kind == "sigma":
        return [f"sigma:{p}" for p in net.populations
                if any(isinstance(d.s, nn.Parameter) for d in _divisive(net, p, ("divisive",)))]
    if kind == "bias":
        return [f"bias:{p}" for p, pop in net.populations.items() if pop.bias is not None]
    if kind == "weight":
        return [f"weight:{c.src}->{c.dst}" for c in net.connections if any(True for _ in c.op.parameters())]
    if kind == "norm":
        return [f"norm:{p}" for p in net.populations if _divisive(net, p, ("divisive",))]
    if kind == "adapt":
        return [f"adapt:{p}" for p in net.populations
                if _divisive(net, p, ("divisive adaptation", "subtractive adaptation"))]
    raise AssertionError(kind)


def _resolve(net: Network, names: Sequence[str], areas: Sequence[str]) -> tuple[list[_Param], list[str],
                                                                                 list[str]]:
    """``(network parameters, areas with a fitted gain, areas with a fitted offset)`` of the
    names in ``params``; every name checked against the model before anything runs."""
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise ConfigurationError(f"params must be a non-empty list of parameter names (e.g. ['tau:V1', "
                                 f"'delay:V1->V2', 'gain']); kinds: {', '.join(PARAM_KINDS)}; got {names!r}")
    out: dict[str, _Param] = {}
    gains: list[str] = []
    offsets: list[str] = []

    def add(p: _Param) -> None:
        out.setdefault(p.name, p)

    for raw in names:
        if not isinstance(raw, str):
            raise ConfigurationError(f"params: names are strings such as 'tau:V1', got {raw!r}")
        kind, sep, target = raw.partition(":")
        kind, target = kind.strip(), target.strip()
        what = f"params: {raw!r}"
        if kind not in PARAM_KINDS:
            raise ConfigurationError(f"{what}: unknown kind {kind!r}; kinds: {', '.join(PARAM_KINDS)} "
                                     "(e.g. 'tau:V1', 'delay:V1->V2', 'gain:V1')")
        if kind == "weights":
            if sep:
                raise ConfigurationError(f"{what}: 'weights' fits every network parameter and takes no target; "
                                         "name one connection's weights with 'weight:A->B'")
            for n, p in net.named_parameters():
                add(_Param(f"weights:{n}", "1", [p], lambda p=p: p, _scale_perturb([p])))
            continue
        if kind in ("gain", "offset"):
            targets = [target] if sep else list(areas)
            for a in targets:
                if a not in areas:
                    raise ConfigurationError(f"{what}: {a!r} is not a fitted area (areas: {list(areas)})")
                (gains if kind == "gain" else offsets).append(a)
            continue
        if not sep:
            found = _all_of(net, kind)
            if not found:
                raise ConfigurationError(f"{what}: the model has no learnable parameter of kind {kind!r} (for "
                                         "times: build with learn_tau=True / learn_delay=True)")
            targets = [f.partition(":")[2] for f in found]
        else:
            targets = [target]
        for t in targets:
            if kind == "tau":
                add(_tau(net, t, what))
            elif kind == "delay":
                add(_delay(net, t, what))
            elif kind == "sigma":
                add(_sigma(net, t, what))
            elif kind == "weight":
                add(_weight(net, t, what))
            elif kind == "bias":
                _population(net, t, what)
                b = net.populations[t].bias
                if b is None:
                    raise ConfigurationError(f"{what}: {t!r} has no bias (add_population(..., bias=True))")
                add(_Param(f"bias:{t}", "1", [b], lambda b=b: b, _scale_perturb([b])))
            elif kind == "norm":
                for p in _component(net, t, what, ("divisive",), "normalisation"):
                    add(p)
            elif kind == "adapt":
                for p in _component(net, t, what, ("divisive adaptation", "subtractive adaptation"), "adaptation"):
                    add(p)
    seen: set[int] = set()
    for p in out.values():  # a tensor fitted under two names is one tensor: keep it once
        p.tensors = [t for t in p.tensors if id(t) not in seen and not seen.add(id(t))]
    return list(out.values()), list(dict.fromkeys(gains)), list(dict.fromkeys(offsets))


class _Observation(nn.Module):
    """``y_a = g_a rbar_a + o_a`` with ``g_a = gain_scale_a * gain_a``, ``o_a = offset_scale_a *
    offset_a`` (scales set by least squares at a restart's first iteration; see the module doc)."""

    def __init__(self, areas: Sequence[str], gains: Sequence[str], offsets: Sequence[str], dtype):
        super().__init__()
        self.areas, self.fit_gain, self.fit_offset = list(areas), list(gains), list(offsets)
        self.gain = nn.ParameterDict({a: nn.Parameter(torch.ones((), dtype=dtype)) for a in gains})
        self.offset = nn.ParameterDict({a: nn.Parameter(torch.zeros((), dtype=dtype)) for a in offsets})
        self.register_buffer("gain_scale", torch.ones(len(areas), dtype=dtype))
        self.register_buffer("offset_scale", torch.ones(len(areas), dtype=dtype))

    def values(self, area: str) -> tuple[Tensor | float, Tensor | float]:
        i = self.areas.index(area)
        g = self.gain_scale[i] * self.gain[area] if area in self.gain else 1.0
        o = self.offset_scale[i] * self.offset[area] if area in self.offset else 0.0
        return g, o

    def forward(self, area: str, rate: Tensor) -> Tensor:
        g, o = self.values(area)
        return g * rate + o

    @torch.no_grad()
    def least_squares(self, area: str, rate: Tensor, y: Tensor) -> None:
        """Start gain and offset at their least-squares values for ``rate`` (a fitted one; the
        other at its fixed value)."""
        i = self.areas.index(area)
        m, yy = rate.reshape(-1), y.reshape(-1)
        fg, fo = area in self.gain, area in self.offset
        g, o = 1.0, 0.0
        if fg and fo:
            mc = m - m.mean()
            var = float(mc.square().sum())
            g = float((mc * (yy - yy.mean())).sum()) / var if var > 0 else 1.0
            o = float(yy.mean() - g * m.mean())
        elif fg:
            mm = float(m.square().sum())
            g = float((m * yy).sum()) / mm if mm > 0 else 1.0
        elif fo:
            o = float((yy - m).mean())
        if fg:
            self.gain_scale[i] = g if math.isfinite(g) and g != 0 else 1.0
            self.gain[area].fill_(1.0)
        if fo:
            scale = float(yy.std()) or 1.0
            self.offset_scale[i] = scale
            self.offset[area].fill_(o / scale)


# -- recordings and stimuli -----------------------------------------------------------------
@dataclass
class _Batch:
    """One integration: the stimulus and the recording's condition indices of its samples."""

    stimulus: Protocol
    index: np.ndarray


def _coord(ds: xr.Dataset, name: str, idx: np.ndarray) -> np.ndarray:
    return np.asarray(ds.coords[name].values)[idx]


def _area_map(ds: xr.Dataset, net: Network, areas) -> dict[str, str]:
    """``{recorded area: population}`` from :func:`dynode.recordings.match_areas` (``areas``: a
    list of names both sides share, or ``{population: recorded area}``)."""
    if isinstance(areas, str):
        areas = [areas]
    if areas is not None and not isinstance(areas, Mapping):
        areas = {a: a for a in areas}
    pairs = match_areas(list(net.populations), [str(v) for v in ds.data_vars], areas)
    return {rec: pop for pop, rec in pairs.items()}


def _courses(ds: xr.Dataset, areas: Mapping[str, str], check: bool = True) -> dict[str, np.ndarray]:
    """``{area: (condition, time)}`` of the fitted areas; with an ``electrode`` dimension the
    mean over the electrodes (the counterpart of a population's mean over its units, as in
    :func:`dynode.recordings.recording_courses`)."""
    out = {}
    for v in areas:
        da = ds[v]
        if "electrode" in da.dims:
            da = da.mean("electrode")
        y = np.asarray(da.transpose("condition", "time").values, dtype=np.float64)
        if check and not float(y.var()) > 0:
            raise ConfigurationError(f"recordings: {v!r} is constant; a time course without variance cannot be "
                                     "fitted (the loss divides by its variance)")
        out[v] = y
    return out


def _experiments(ds: xr.Dataset, experiments) -> dict[str, np.ndarray]:
    """``{experiment: condition indices}`` in the recordings' order (default every recorded
    experiment); each one must be recorded (:func:`dynode.recordings.validate_recordings`)."""
    labels = np.asarray(ds.coords["experiment"].values).astype(str)
    if experiments is None:
        experiments = list(dict.fromkeys(labels.tolist()))
    if isinstance(experiments, str):
        experiments = [experiments]
    unknown = [e for e in experiments if e not in EXPERIMENTS]
    if unknown:
        raise ConfigurationError(f"experiments: unknown {unknown}; known: {list(EXPERIMENTS)}")
    validate_recordings(ds, experiments=list(experiments))
    return {e: np.flatnonzero(labels == e) for e in experiments}


def _protocol(ds: xr.Dataset, name: str, idx: np.ndarray, t_first: float, t_end: float, images,
              background, input) -> Protocol:
    """Experiment ``name``'s stimulus for the recorded conditions ``idx``, built by its own
    builder; sample ``i`` is condition ``idx[i]``."""
    exp = EXPERIMENTS[name]
    onsets = np.unique(_coord(ds, "onset", idx).astype(np.float64))
    if onsets.size != 1:
        raise ConfigurationError(f"recordings: the conditions of experiment {name!r} have different onsets "
                                 f"{onsets.tolist()} ms; one onset per experiment (shift the time axes)")
    kwargs: dict[str, Any] = {}
    for key in exp.conditions:
        if key == exp.by + "s":  # the varying condition, in the recordings' order
            kwargs[key] = [float(v) for v in _coord(ds, exp.by, idx)]
        else:
            vals = np.unique(_coord(ds, key, idx).astype(np.float64))
            if vals.size != 1:
                raise ConfigurationError(f"recordings: experiment {name!r} varies {exp.by!r}; its {key!r} must be "
                                         f"one value, got {vals.tolist()}")
            kwargs[key] = float(vals[0])
    onset = float(onsets[0]) - t_first
    if onset < 0:
        raise ConfigurationError(f"recordings: experiment {name!r} has its onset {onsets[0]} ms before the first "
                                 f"recorded time {t_first} ms; the model starts at the first recorded time")
    # the protocol's own epoch reaches past its last offset (the recording may end before it)
    last = onset + 2 * float(np.max(_coord(ds, "duration", idx))) + float(np.max(_coord(ds, "isi", idx)))
    p = exp.build(images, **kwargs, onset=onset, t_end=max(t_end, last), background=background, input=input)
    if p.n_images != 1:
        raise ConfigurationError(f"images: give one image (a batch of 1), got {p.n_images}; the recordings hold "
                                 "one time course per condition")
    return p


def _merge(protos: Sequence[Protocol]) -> Protocol:
    """One batch of several experiments' protocols (same epoch)."""
    if len(protos) == 1:
        return protos[0]
    keys = set.intersection(*(set(p.conditions) for p in protos))
    conditions = {k: [v for p in protos for v in p.conditions[k]] for k in sorted(keys)}
    first = protos[0]
    return Protocol(torch.cat([p.images for p in protos]), E.stack([p.envelope for p in protos]), name="fit",
                    onset=min(p.onset for p in protos), t_end=first.t_end, n_images=1,
                    background=first.background_spec, input=first.input, conditions=conditions)


def _default_images(net: Network, input: str | None) -> Tensor:
    names = net.input_names()
    if input is None:
        if len(names) != 1:
            raise ConfigurationError(f"the model has inputs {list(names)}; name the one the stimulus feeds (input=)")
        input = names[0]
    elif input not in names:
        raise ConfigurationError(f"input={input!r} is not an input of the model ({list(names)})")
    return torch.ones((1, *net.input_shapes()[input]))


# -- the result -------------------------------------------------------------------------------
@dataclass
class FitResult:
    """What :func:`fit` found.

    params : the best restart's fitted values (floats, lists for per-unit tensors; ms for
        times), observation gains and offsets under ``gain:a`` / ``offset:a``.
    units : the unit of each entry of ``params``.
    spread : per parameter, over restarts that finished: ``mean``, ``sd`` (0 for one restart)
        and ``values`` (one per restart).
    loss : the best restart's final loss (``mean_a (1 - R^2_a)``); ``r2``: ``R^2`` per area.
    history : the loss at every iteration, one list per restart.
    restarts : per restart ``params``, ``loss``, ``r2``, ``iterations``, ``status``.
    best : the index of the best restart. ``status``: ``"converged"`` (every restart met the
        ``tol``/``patience`` rule), ``"max_steps"`` (one ran out of steps), ``"diverged"``
        (the fit stopped; ``message`` says where and why).
    prediction : the fitted observation in the recordings' layout (``xarray.Dataset``; None
        when the model diverged at its start values).
    seconds : wall time of this call; ``iterations``: iterations done over all restarts.
    """

    params: dict[str, Any]
    units: dict[str, str]
    spread: dict[str, dict]
    loss: float
    r2: dict[str, float]
    history: list[list[float]]
    restarts: list[dict]
    best: int
    status: str
    message: str
    prediction: xr.Dataset | None = field(repr=False, default=None)
    seconds: float = 0.0
    iterations: int = 0

    def summary(self) -> str:
        """The fitted values (mean +- sd over restarts), ``R^2`` per area and the status."""
        lines = [f"fit: {self.status} ({self.iterations} iterations, {self.seconds:.1f} s; {self.message})"]
        for k, v in self.params.items():
            s = self.spread.get(k, {})
            unit = "" if self.units.get(k) in ("1", None) else f" {self.units[k]}"
            if isinstance(v, float):
                sd = s.get("sd")
                extra = f" (restarts: mean {s['mean']:.4g}, sd {sd:.2g})" if s and len(s["values"]) > 1 else ""
                lines.append(f"  {k} = {v:.4g}{unit}{extra}")
            else:
                lines.append(f"  {k} = {np.array2string(np.asarray(v), precision=4)}{unit}")
        lines.append("  R^2: " + ", ".join(f"{a} {r:.3f}" for a, r in self.r2.items()))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON data (without the prediction)."""
        return {"params": self.params, "units": self.units, "spread": self.spread, "loss": self.loss,
                "r2": self.r2, "history": self.history, "restarts": self.restarts, "best": self.best,
                "status": self.status, "message": self.message, "seconds": self.seconds,
                "iterations": self.iterations}


# -- the fit ----------------------------------------------------------------------------------
def _identity(x: Tensor) -> Tensor:
    return x


def _observation(observe) -> Observation:
    """The observation model of ``observe`` (a name or a :mod:`dynode.observe` object)."""
    obs = as_observation(observe)
    if isinstance(obs, Drive) and obs.parts is True:
        raise ConfigurationError("observe: Drive(parts=True) gives three variables; a fit compares one course per "
                                 "area: give 'drive' (u)")
    return obs


def _check_observation(net: Network, obs: Observation, pops: Sequence[str], t_end: float, dt: float) -> None:
    """Before anything runs: the currents that ``drive``/``lfp`` read can be computed on the
    saved grid (:meth:`dynode.observe.DriveReader.check`: no learnt delay into the observed
    populations, delays multiples of ``dt``), and a Mazzoni LFP has the E/I split it needs."""
    if not obs.needs_currents:
        return
    pops = list(dict.fromkeys(pops))
    mazzoni = [p for p in pops if isinstance(obs, LFP) and lfp_proxy(obs, ei_split(net, p)) == "mazzoni"]
    lacking = [p for p in mazzoni if ei_split(net, p) is None]
    if lacking:
        raise ConfigurationError(f"observe: the Mazzoni LFP proxy needs the excitatory/inhibitory split of {lacking}'s "
                                 "inputs, which the network lacks; use LFP(proxy='broadband') or add inhibition")
    grid = [k * dt for k in range(round(t_end / dt) + 1)]
    DriveReader.check(net, pops, grid, 0.0, None, [obs.delay] if mazzoni else [])


class _Problem:
    """The simulation of the recorded conditions and the loss (module doc)."""

    def __init__(self, net: Network, params: list[_Param], obs: _Observation, areas: dict[str, str],
                 batches: list[_Batch], y: dict[str, Tensor], times: np.ndarray, t_end: float, solver: str,
                 dt: float, observation: Observation, input: str):
        self.net, self.params, self.obs, self.areas = net, params, obs, areas
        self.batches, self.y, self.t_end, self.solver, self.dt = batches, y, t_end, solver, dt
        self.observation = observation
        self.inverse = torch.as_tensor(np.argsort(np.concatenate([b.index for b in batches])))
        self.sst = {a: (v - v.mean()).square().sum() for a, v in y.items()}
        self.input = input
        if isinstance(observation, Rate):  # the states at the recorded times (the solver's interpolant)
            self.save_at, self.interp = torch.as_tensor(times, dtype=torch.float64), None
        else:  # computed on the solver's grid, then read at the recorded times (linear interpolation)
            self.save_at = dt
            k = np.minimum(np.floor(times / dt + 1e-9).astype(np.int64), round(t_end / dt) - 1)
            self.interp = (torch.as_tensor(k), torch.as_tensor(times / dt - k, dtype=y[next(iter(y))].dtype))

    def tensors(self) -> list[Tensor]:
        return [t for p in self.params for t in p.tensors] + list(self.obs.parameters())

    def simulate(self) -> dict[str, Tensor]:
        """The model's course per area before gain and offset, ``(condition, time)`` in the
        recordings' order: the observation of the area at the recorded times."""
        parts: dict[str, list[Tensor]] = {a: [] for a in self.areas}
        for b in self.batches:
            sol = integrate(self.net, b.stimulus, t_end=self.t_end, dt=self.dt, solver=self.solver,
                            save_at=self.save_at)
            currents = self._currents(sol, b.stimulus) if self.observation.needs_currents else {}
            for a, pop in self.areas.items():
                if pop in currents:
                    z = currents[pop]
                else:
                    s = sol.states[pop]
                    z = s.reshape(s.shape[0], s.shape[1], -1).mean(-1)  # (time, batch)
                    if isinstance(self.observation, BOLD):
                        z = self.observation(z, self.dt)
                if self.interp is not None:
                    k, w = self.interp
                    z = z[k] * (1 - w)[:, None] + z[k + 1] * w[:, None]
                parts[a].append(z.transpose(0, 1))
        return {a: torch.cat(v)[self.inverse] for a, v in parts.items()}

    def _currents(self, sol, stimulus) -> dict[str, Tensor]:
        """``drive`` (the mean of ``u`` over the area's units) or ``lfp`` of every fitted
        population on the saved grid, ``(time, batch)``, by :class:`dynode.observe.DriveReader`
        and :class:`dynode.observe.PopulationObserver` (the recording's code) on the saved states."""
        pops = list(dict.fromkeys(self.areas.values()))
        states = sol.states

        def inputs(t: float) -> Mapping[str, Tensor]:
            v = stimulus(t)
            return v if isinstance(v, Mapping) else {self.input: v}

        reader = DriveReader(self.net, pops, {k: v[0] for k, v in states.items()}, 0.0, self.dt, inputs, False)
        observers = {p: PopulationObserver(p, self.net.populations[p].shape, [self.observation],
                                           ei_split(self.net, p), None, _identity, self.dt) for p in pops}
        out: dict[str, list[Tensor]] = {p: [] for p in pops}
        for n, t in enumerate(sol.ts.tolist()):
            cur = reader(t, {k: v[n] for k, v in states.items()})
            for p in pops:
                val = observers[p](t, states[p][n], cur[p])[0]
                out[p].append(val.reshape(val.shape[0], -1).mean(-1))
        return {p: torch.stack(v) for p, v in out.items()}

    def loss(self, rates: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """``mean_a SSE_a / SST_a`` and ``R^2_a = 1 - SSE_a / SST_a``."""
        terms, r2 = [], {}
        for a in self.areas:
            e = (self.obs(a, rates[a]) - self.y[a]).square().sum() / self.sst[a]
            terms.append(e)
            r2[a] = 1.0 - float(e.detach())
        return torch.stack(terms).mean(), r2


def _problem(model: Network, ds: xr.Dataset, amap: dict[str, str], exps: dict[str, np.ndarray],
             plist: list[_Param], gains, offsets, obs_model: Observation, solver: str, dt: float, images,
             background, input, fitting: bool = True) -> tuple[_Problem, xr.Dataset, Tensor]:
    """The simulation of the conditions of ``exps`` (on the recordings' time base) and the
    loss against ``ds``; also the recordings cut to those conditions and the images."""
    dtype = next((p.dtype for p in model.parameters()), torch.get_default_dtype())
    keep = np.sort(np.concatenate(list(exps.values())))
    sub = ds.isel(condition=keep)  # the fitted conditions, in the recordings' order
    exps = {e: np.searchsorted(keep, idx) for e, idx in exps.items()}
    y = {a: torch.as_tensor(v, dtype=dtype) for a, v in _courses(sub, amap, fitting).items()}
    # the time base: simulation time s = t - t_first, on the grid k dt up to t_end
    t = np.asarray(sub["time"].values, dtype=np.float64)
    t_first = float(t[0])
    t_end = math.ceil((t[-1] - t_first) / dt - 1e-9) * dt
    if images is None:
        images = _default_images(model, input)
    images = torch.as_tensor(images, dtype=dtype)
    _check_observation(model, obs_model, list(amap.values()), t_end, dt)
    fed = input if input is not None else (model.input_names() or ("",))[0]
    protos = [_protocol(sub, e, idx, t_first, t_end, images, background, input) for e, idx in exps.items()]
    batches = [_Batch(_merge(protos), np.concatenate(list(exps.values())))]
    obs = _Observation(list(amap), gains, offsets, dtype)
    return (_Problem(model, plist, obs, amap, batches, y, t - t_first, t_end, solver, float(dt), obs_model, fed),
            sub, images)


def simulate_recordings(model: Network, template, *, areas=None, experiments: Sequence[str] | None = None,
                        observe: str = "rate", solver: str = "euler", dt: float = 1.0, images=None,
                        background="blank", input: str | None = None, units: str = "a.u.") -> xr.Dataset:
    """What ``model`` shows under the conditions of ``template`` (recordings, or a Dataset in
    their layout whose values are ignored): the observation (gain 1, offset 0) of each area
    on the template's time base, as recordings (the layout of :mod:`dynode.recordings`) in
    ``units``. The stimuli and simulation are :func:`fit`'s: model data for parameter
    recovery."""
    if not isinstance(model, Network):
        raise ConfigurationError(f"model must be a dynode.Network, got {type(model).__name__}")
    if solver not in FIXED_STEP:
        raise ConfigurationError(f"solver={solver!r}: give a fixed-step solver ({list(FIXED_STEP)})")
    ds = load_recordings(template)
    amap = _area_map(ds, model, areas)
    exps = _experiments(ds, experiments)
    prob, sub, _ = _problem(model, ds, amap, exps, [], [], [], _observation(observe), solver, dt, images,
                            background, input, fitting=False)
    with torch.no_grad():
        courses = prob.simulate()
    out = sub.copy()
    for a in amap:
        out[a] = (("condition", "time"), courses[a].double().cpu().numpy(),
                  {"units": units, "long_name": f"{amap[a]} of the model ({prob.observation.name})"})
    return validate_recordings(out)


def _snapshot(prob: _Problem) -> list[Tensor]:
    return [t.detach().clone() for t in prob.tensors()] + [b.clone() for b in prob.obs.buffers()]


def _restore(prob: _Problem, snap: Sequence[Tensor]) -> None:
    with torch.no_grad():
        for t, s in zip([*prob.tensors(), *prob.obs.buffers()], snap):
            t.copy_(s)


def _values(prob: _Problem) -> tuple[dict[str, Any], dict[str, str]]:
    vals, units = {}, {}
    with torch.no_grad():
        for p in prob.params:
            vals[p.name], units[p.name] = _scalar_or_list(p.read()), p.unit
        for a in prob.obs.fit_gain:
            vals[f"gain:{a}"], units[f"gain:{a}"] = _scalar_or_list(torch.as_tensor(prob.obs.values(a)[0])), "data/rate"
        for a in prob.obs.fit_offset:
            vals[f"offset:{a}"], units[f"offset:{a}"] = _scalar_or_list(torch.as_tensor(prob.obs.values(a)[1])), "data"
    return vals, units


def _spread(done: Sequence[dict]) -> dict[str, dict]:
    out = {}
    for k in done[0]["params"] if done else ():
        vals = [d["params"][k] for d in done if k in d["params"]]
        arr = np.asarray(vals, dtype=np.float64)
        mean, sd = arr.mean(0), (arr.std(0, ddof=1) if len(vals) > 1 else np.zeros_like(arr[0]))
        out[k] = {"mean": mean.tolist(), "sd": sd.tolist(), "values": vals}
    return out


def _converged(history: Sequence[float], tol: float, patience: int) -> bool:
    """The best loss of the last ``patience`` iterations improves on the best before them by
    less than ``tol`` (relative), or the loss is below :data:`EXACT` (nothing left to fit)."""
    if history and history[-1] <= EXACT:
        return True
    if len(history) <= patience:
        return False
    before, recent = min(history[:-patience]), min(history[-patience:])
    return before - recent <= tol * abs(before)


def _run_record(net: Network, ds: xr.Dataset, names, areas, experiments, observe: Observation, solver, dt,
                optimizer, steps, lr, restarts, seed, tol, patience, background, images: Tensor) -> dict:
    """What makes a fit this fit, as JSON data (resume refuses a checkpoint whose record differs)."""
    return {"kind": CHECKPOINT_KIND, "params": list(names), "areas": dict(areas), "experiments": list(experiments),
            "observe": {"name": observe.name, **observe.params()}, "solver": solver, "dt": dt, "optimizer": optimizer,
            "steps": steps,
            "lr": lr, "restarts": restarts, "seed": seed, "tol": tol, "patience": patience,
            "background": str(background), "images": _fingerprint([images.detach().double().cpu().numpy()]),
            "model": weights_fingerprint(net), "populations": list(net.populations),
            "recordings": _fingerprint([ds[v].values for v in areas] + [ds["time"].values]
                                       + [ds[c].values for c in CONDITION_COORDS])}


def _fingerprint(arrays: Sequence[np.ndarray]) -> str:
    """sha256 of the arrays' values (numbers as float64, anything else as text)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes() if np.issubdtype(a.dtype, np.number)
                 else str(a.tolist()).encode())
    return h.hexdigest()


def fit(model: Network, recordings, *, params: Sequence[str], observe: str = "rate", areas=None,
        experiments: Sequence[str] | None = None, solver: str = "euler", dt: float = 1.0,
        optimizer: str = "lbfgs", steps: int = 100, lr: float | None = None, restarts: int = 1, seed: int = 0,
        tol: float = 1e-4, patience: int = 10,
        images=None, background="blank", input: str | None = None, checkpoint_dir: str | Path | None = None,
        resume: bool = False, overwrite: bool = False, progress: bool = True, log_every: int = 10) -> FitResult:
    """Fit ``params`` of ``model`` so that its observed time courses match ``recordings``
    (see the module doc for the equations, the parameter names and the optimiser).

    model : a :class:`dynode.Network` whose fitted times are learnt (``learn_tau`` /
        ``learn_delay``); its values are the start of restart 0, and the best restart's values
        are loaded into it at the end.
    recordings : an ``xarray.Dataset`` in the :mod:`dynode.recordings` layout or a path
        (:func:`dynode.recordings.load_recordings`).
    params : parameter names (``tau:V1``, ``delay:V1->V2``, ``norm:V1``, ``gain``, ...).
    observe : ``"rate"`` (the area's mean rate), ``"bold"``, ``"drive"``, ``"lfp"`` or a
        :mod:`dynode.observe` object (module doc); gain and offset as named in ``params``.
    areas : a list of names that are both populations and recorded areas, or
        ``{population: recorded area}`` (:func:`dynode.recordings.match_areas`); default every
        population with a recorded area of its name.
    experiments : the experiments whose conditions are fitted (default every one recorded).
    solver, dt : a fixed-step solver by name and its step (ms).
    steps, lr, tol, patience : at most ``steps`` Adam iterations at ``lr`` per restart; the
        convergence rule of the module doc.
    restarts, seed : the number of starts (restart 0 from the model's values) and the seed
        of the others.
    images, background, input : what the stimulus shows (default a one-image batch of ones
        on a ``"blank"`` (0) screen, so the input is the contrast envelope itself), as in
        :func:`dynode.stimuli.groen2022`; ``input`` names the fed input of a multi-input model.
    checkpoint_dir, resume, overwrite : ``last.pt`` there after every iteration; ``resume``
        continues it exactly; an existing one is refused unless ``resume`` or ``overwrite``.
    progress, log_every : one line every ``log_every`` iterations (``progress=False``: silent).
    """
    t_start = time.perf_counter()
    if not isinstance(model, Network):
        raise ConfigurationError(f"model must be a dynode.Network, got {type(model).__name__}")
    if optimizer not in OPTIMIZERS:
        raise ConfigurationError(f"optimizer={optimizer!r}: give one of {list(OPTIMIZERS)}")
    if solver not in FIXED_STEP:
        raise ConfigurationError(f"solver={solver!r}: a fit integrates with a fixed-step solver ({list(FIXED_STEP)})")
    if lr is None:
        lr = DEFAULT_LR[optimizer] if optimizer in DEFAULT_LR else 1.0
    for name, v, lo in (("dt", dt, 0.0), ("lr", lr, 0.0), ("tol", tol, -1e-300)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not v > lo:
            raise ConfigurationError(f"{name} must be a finite number > {max(lo, 0)}, got {v!r}")
    for name, v in (("steps", steps), ("restarts", restarts), ("patience", patience), ("log_every", log_every)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigurationError(f"{name} must be an int >= 1, got {v!r}")
    if resume and overwrite:
        raise ConfigurationError("resume continues the checkpoint and overwrite starts over; give one")
    if (resume or overwrite) and checkpoint_dir is None:
        raise ConfigurationError("resume/overwrite need checkpoint_dir (where last.pt is)")
    obs_model = _observation(observe)
    ds = load_recordings(recordings)
    amap = _area_map(ds, model, areas)
    exps = _experiments(ds, experiments)
    plist, gains, offsets = _resolve(model, params, list(amap))
    prob, sub, images = _problem(model, ds, amap, exps, plist, gains, offsets, obs_model, solver, dt, images,
                                 background, input)
    record = _run_record(model, sub, params, amap, exps, obs_model, solver, dt, optimizer, steps, lr, restarts, seed,
                         tol,
                         patience, background, images)
    ckpt_path = None if checkpoint_dir is None else Path(checkpoint_dir) / "last.pt"
    if ckpt_path is not None and ckpt_path.exists() and not (resume or overwrite):
        raise ConfigurationError(f"{ckpt_path} exists (a fit's checkpoint); pass resume=True to continue it or "
                                 "overwrite=True to start over")
    if resume and not ckpt_path.is_file():
        raise ConfigurationError(f"resume: no checkpoint {ckpt_path} to continue; leave resume out to start a fit")
    return _Fitter(prob, record, ckpt_path, optimizer, steps, lr, restarts, seed, tol, patience, progress, log_every,
                   sub, t_start).run(resume)


class _Fitter:
    """The restart and iteration loops, checkpoints and divergence handling of :func:`fit`."""

    def __init__(self, prob: _Problem, record: dict, path: Path | None, optimizer: str, steps, lr, restarts, seed,
                 tol, patience, progress, log_every, data: xr.Dataset, t_start: float):
        self.prob, self.record, self.path, self.optimizer = prob, record, path, optimizer
        self.steps, self.lr, self.restarts, self.seed = steps, lr, restarts, seed
        self.tol, self.patience, self.progress, self.log_every = tol, patience, progress, log_every
        self.data, self.t_start = data, t_start
        self.start = _snapshot(prob)  # the model's values: restart 0 starts here
        self.frozen: list[tuple[Tensor, bool]] = []

    def _optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(self.prob.tensors(), lr=self.lr)
        return torch.optim.LBFGS(self.prob.tensors(), lr=self.lr, max_iter=1, max_eval=8, history_size=20,
                                 line_search_fn="strong_wolfe", tolerance_grad=0.0, tolerance_change=0.0)

    # checkpoints ---------------------------------------------------------------------------
    def _state(self, restart: int, history: list[float], opt, done: list[dict], status: str) -> dict:
        return {"kind": CHECKPOINT_KIND, "run_config": canonical_json(self.record), "restart": restart,
                "history": json.dumps(history), "done": json.dumps(done), "status": status,
                "model": self.prob.net.state_dict(), "observation": self.prob.obs.state_dict(),
                "optimizer": opt.state_dict()}

    def _save(self, state: dict) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def _load(self) -> dict:
        ckpt = load_checkpoint(self.path)
        if ckpt.get("kind") != CHECKPOINT_KIND:
            raise CheckpointError(f"{self.path} is not a fit checkpoint (dynode fit writes one with kind "
                                  f"{CHECKPOINT_KIND!r}); move it aside or pass overwrite=True")
        saved = json.loads(ckpt["run_config"])
        diff = config_diff(saved, self.record)
        if diff:
            raise CheckpointError(f"the checkpoint {self.path} is of another fit ({len(diff)} difference(s): "
                                  f"{'; '.join(diff[:4])}); resume with the same model, recordings and settings, "
                                  "or pass overwrite=True to start over")
        return ckpt

    # the loops -------------------------------------------------------------------------------
    def run(self, resume: bool) -> FitResult:
        prob = self.prob
        done: list[dict] = []
        history_all: list[list[float]] = []
        first, ckpt = 0, None
        if resume:
            ckpt = self._load()
            done = json.loads(ckpt["done"])
            history_all = [d["history"] for d in done]
            first = int(ckpt["restart"])
            if ckpt["status"] == "diverged":
                raise ConfigurationError(f"{self.path}: this fit diverged (its last good state is saved); change "
                                         "the settings (lr, bounds, dt) and start over with overwrite=True")
        fitted = {id(t) for t in prob.tensors()}
        self.frozen = [(p, p.requires_grad) for p in prob.net.parameters() if id(p) not in fitted]
        for p, _ in self.frozen:  # not fitted: no gradient computed for it
            p.requires_grad_(False)
        try:
            status, message = "converged", ""
            for r in range(first, self.restarts):
                res = self._restart(r, ckpt if r == first else None, done)
                history_all.append(res["history"])
                done.append(res)
                if res["status"] == "diverged":
                    status, message = "diverged", res["message"]
                    break
                if res["status"] == "max_steps":
                    status = "max_steps"
        finally:
            for p, flag in self.frozen:
                p.requires_grad_(flag)
        return self._result(done, history_all, status, message)

    def _restart(self, r: int, ckpt: dict | None, done: list[dict]) -> dict:
        prob = self.prob
        opt = self._optimizer()
        history: list[float] = json.loads(ckpt["history"]) if ckpt is not None else []
        if history:  # continue this restart where the checkpoint left it
            load_state(prob.net, ckpt["model"], self.path)
            prob.obs.load_state_dict(ckpt["observation"])
            opt.load_state_dict(ckpt["optimizer"])
        else:
            _restore(prob, self.start)
            if r > 0:
                gen = torch.Generator().manual_seed(self.seed + r)
                for p in prob.params:
                    if p.perturb is not None:
                        p.perturb(gen)
        status, message, last_good = "max_steps", "", None
        if not history:  # the observation starts at its least-squares gain and offset
            reason = self._least_squares()
        else:
            reason = None
        while reason is None and len(history) < self.steps:
            k = len(history)
            if self.optimizer == "adam":  # cosine from lr to lr / 10 over the steps (a function of k: resumes exactly)
                for g in opt.param_groups:
                    g["lr"] = self.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * k / self.steps)))
            before = (_snapshot(prob), copy.deepcopy(opt.state_dict()))
            reason = self._step(opt)
            if reason is not None:
                break
            last_good = before  # the values at which history[-1] was computed
            history.append(self._last_loss)
            if self.progress and (len(history) % self.log_every == 0 or len(history) == 1):
                vals, _ = _values(prob)
                shown = ", ".join(f"{n}={v:.4g}" for n, v in list(vals.items())[:6] if isinstance(v, float))
                print(f"fit restart {r + 1}/{self.restarts} iteration {len(history)}/{self.steps}: loss "
                      f"{self._last_loss:.5g} (mean R^2 {1 - self._last_loss:.4f}); {shown}", flush=True)
            if _converged(history, self.tol, self.patience):
                status = "converged"
                break
            self._save(self._state(r, history, opt, done, "running"))
        if reason is None:  # the values after the last step, evaluated once more
            try:
                with torch.no_grad():
                    loss, r2 = prob.loss(prob.simulate())
                if not math.isfinite(float(loss)):
                    reason = f"the loss is {float(loss)}"
            except (DivergenceError, SolverError) as exc:
                reason = f"the simulation diverged ({str(exc).splitlines()[0]})"
        if reason is not None:
            if last_good is not None:
                _restore(prob, last_good[0])
                opt.load_state_dict(last_good[1])
            status = "diverged"
            where = (f"the last good state (the values of iteration {len(history)}, loss {history[-1]:.4g}) is kept"
                     if last_good is not None else "no iteration finished")
            message = (f"restart {r}, iteration {len(history) + 1}: {reason}; {where}"
                       f"{' and saved in ' + str(self.path) if self.path else ''}; lower lr or narrow the bounds")
            warnings.warn(f"fit diverged: {message}", FitDivergenceWarning, stacklevel=user_stacklevel())
            self._save(self._state(r, history, opt, done, "diverged"))
            nan = float("nan")
            loss, r2 = (torch.tensor(history[-1]) if history else torch.tensor(nan)), {a: nan for a in prob.areas}
            if last_good is not None:
                with torch.no_grad():
                    loss, r2 = prob.loss(prob.simulate())
        vals, units = _values(prob)
        res = {"restart": r, "params": vals, "units": units, "loss": float(loss), "r2": r2, "history": history,
               "iterations": len(history), "status": status, "message": message,
               "state": [t.tolist() for t in _snapshot(prob)]}
        if status != "diverged":  # the next restart starts afresh from here
            self._save(self._state(r + 1, [], self._optimizer(), done + [res], "running"))
        if self.progress:
            print(f"fit restart {r + 1}/{self.restarts}: {status} after {len(history)} iterations, loss "
                  f"{float(loss):.5g}, R^2 " + ", ".join(f"{a} {v:.4f}" for a, v in r2.items()), flush=True)
        return res

    def _least_squares(self) -> str | None:
        """Start every fitted gain and offset at its least-squares value for the model as it
        is; the reason when that simulation diverges."""
        prob = self.prob
        try:
            with torch.no_grad():
                rates = prob.simulate()
        except (DivergenceError, SolverError) as exc:
            return f"the simulation diverged at the start values ({str(exc).splitlines()[0]})"
        for a in prob.areas:
            prob.obs.least_squares(a, rates[a], prob.y[a])
        return None

    def _evaluate(self, opt) -> Tensor:
        """Loss and gradient at the current values (raises :class:`_Diverged`)."""
        prob = self.prob
        opt.zero_grad(set_to_none=True)
        try:
            rates = prob.simulate()
        except (DivergenceError, SolverError) as exc:
            raise _Diverged(f"the simulation diverged ({str(exc).splitlines()[0]})") from None
        loss, _ = prob.loss(rates)
        if not torch.isfinite(loss):
            raise _Diverged(f"the loss is {float(loss)}")
        loss.backward()
        bad = [p.name for p in prob.params if any(t.grad is not None and not torch.isfinite(t.grad).all()
                                                  for t in p.tensors)]
        bad += [n for n, t in prob.obs.named_parameters() if t.grad is not None and not torch.isfinite(t.grad).all()]
        if bad:
            raise _Diverged(f"the gradient of {bad} is NaN/inf")
        return loss

    def _step(self, opt) -> str | None:
        """One iteration (Adam: one gradient step; L-BFGS: one step with its line search); the
        reason when it diverges (the caller puts the last good state back)."""
        prob = self.prob
        try:
            if self.optimizer == "adam":
                loss = self._evaluate(opt)
                opt.step()
            else:
                losses: list[Tensor] = []
                opt.step(lambda: losses.append(self._evaluate(opt)) or losses[-1])
                loss = losses[0]
        except _Diverged as exc:
            return str(exc)
        bad = [p.name for p in prob.params if not all(torch.isfinite(t).all() for t in p.tensors)]
        if bad:
            return f"the parameters {bad} became NaN/inf"
        self._last_loss = float(loss.detach())
        return None

    def _result(self, done: list[dict], history_all, status: str, message: str) -> FitResult:
        prob = self.prob
        finished = [d for d in done if d["status"] != "diverged"] or done
        best = min(finished, key=lambda d: d["loss"] if math.isfinite(d["loss"]) else math.inf)
        _restore(prob, [torch.as_tensor(v, dtype=t.dtype).reshape(t.shape)
                        for v, t in zip(best["state"], _snapshot(prob))])
        out = None
        if best["iterations"] or best["status"] != "diverged":  # else the start itself diverged: nothing to show
            with torch.no_grad():
                rates = prob.simulate()
                pred = {a: prob.obs(a, rates[a]).double().cpu().numpy() for a in prob.areas}
            ds = self.data
            out = xr.Dataset({a: (("condition", "time"), pred[a], dict(ds[a].attrs, long_name=f"fitted {a}"))
                              for a in prob.areas}, coords={k: v for k, v in ds.coords.items()
                                                            if set(v.dims) <= {"condition", "time"}})
        if not message:
            message = f"best of {len(done)} restart(s): restart {best['restart']}"
        restarts = [{k: d[k] for k in ("restart", "params", "loss", "r2", "iterations", "status", "message")}
                    for d in done]
        return FitResult(params=best["params"], units=best["units"], spread=_spread(finished), loss=best["loss"],
                         r2=best["r2"], history=history_all, restarts=restarts, best=int(best["restart"]),
                         status=status, message=message, prediction=out,
                         seconds=time.perf_counter() - self.t_start,
                         iterations=sum(d["iterations"] for d in done))


# -- a network with the structure of the DN model -----------------------------------------------
def dn_network(areas: Sequence[str] = ("V1",), *, tau1: float = 5.0, shift: float = 60.0, tau2: float = 70.0,
               sigma: float = 0.15, n: float = 1.5, tau: float = 2.0, tau1_bounds=(1.0, 100.0),
               shift_bounds=(2.0, 150.0), tau2_bounds=(5.0, 1000.0), tau_bounds=(1.0, 50.0),
               input: str = "x") -> Network:
    r"""A dynode network with the structure of the delayed normalisation model
    (:mod:`dynode.analysis.dn`; Zhou et al. 2019, Groen et al. 2022), one independent chain per
    area ``A`` fed by the scalar input ``input`` (the contrast envelope), every time learnt:

    .. math::

        \tau_1 \dot l_1 = -l_1 + s(t), \qquad \tau_1' \dot l_2 = -l_2 + l_1(t - \delta)
        \qquad \text{(a gamma-2 impulse response, delayed by } \delta\text{)}\\
        \tau_2 \dot g = -g + |l_2|, \qquad
        \tau \dot r = -r + \mathrm{relu}\!\Big(\frac{l_2}{\sigma + g}\Big)^{n}

    Populations ``{A}_l1``, ``{A}_l2`` (role ``"linear"``), ``{A}_pool`` (role
    ``"normalization"``) and the area ``A``; learnt: ``tau:{A}_l1``, ``tau:{A}_l2`` (start
    ``tau1``), ``delay:{A}_l1->{A}_l2`` (``shift``), ``tau:{A}_pool`` (``tau2``), ``sigma:A``
    (``sigma``) and ``tau:A`` (``tau``, the output's own time constant); ``n`` is fixed. Start
    values: Groen's DN start values (:data:`dynode.analysis.dn.DN_START`, ms). The DN model's
    ``sigma^n + |P|^n`` becomes ``(sigma + g)^n`` here and its ``scale`` the observation gain.
    Float64 (a fit asserts accuracies).
    """
    if isinstance(areas, str):
        areas = [areas]
    net = Network()
    net.add_input(input, (1,))
    for a in areas:
        with net.atomic():
            l1, l2, pool = f"{a}_l1", f"{a}_l2", f"{a}_pool"
            net.add_population(l1, (1,), tau=tau1, phi="identity", learn_tau=True, tau_bounds=tau1_bounds)
            net.add_population(l2, (1,), tau=tau1, phi="identity", learn_tau=True, tau_bounds=tau1_bounds)
            net.add_population(pool, (1,), tau=tau2, phi="identity", learn_tau=True, tau_bounds=tau2_bounds)
            net.add_population(a, (1,), tau=tau, phi="rectified_power", n=n, k=1.0, learn_tau=True,
                               tau_bounds=tau_bounds)
            net.populations[l1].role = net.populations[l2].role = "linear"
            net.populations[pool].role = "normalization"
            net.connect(input, l1)
            net.connect(l1, l2, delay=shift, learn_delay=True, delay_bounds=shift_bounds)
            net.connect(l2, pool, Pool((1,), "unit", 1.0, learn=False))
            net.connect(l2, a)
            net.set_combine(a, Divide(pool, sigma))
            net.connect(pool, a, nn.Identity())
    return net.to(torch.float64)


# -- figure -------------------------------------------------------------------------------------
def plot_fit(result: FitResult, recordings, path, *, title: str | None = None) -> Path:
    """Data (grey) and fit (colour) per area, one row per experiment (PNG)."""
    ds = load_recordings(recordings)
    pred = result.prediction
    if pred is None:
        raise ConfigurationError("plot_fit: the result holds no prediction")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigurationError(f"plot_fit writes a PNG; give a path ending in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    areas = list(pred.data_vars)
    kinds = list(dict.fromkeys(str(k) for k in pred["experiment"].values))
    plt = pyplot()
    with style():
        fig, axes = plt.subplots(len(kinds), len(areas), figsize=(3.8 * len(areas), 2.4 * len(kinds)),
                                 squeeze=False, layout="constrained")
        for j, a in enumerate(areas):
            data = ds[a].mean("electrode") if "electrode" in ds[a].dims else ds[a]
            for i, kind in enumerate(kinds):
                ax = axes[i][j]
                sel = np.flatnonzero(np.asarray(pred["experiment"].values).astype(str) == kind)
                cmap = plt.get_cmap("viridis")
                for m, c in enumerate(sel):
                    cond = pred.isel(condition=c)
                    match = np.flatnonzero((np.asarray(ds["experiment"].values).astype(str) == kind)
                                           & np.isclose(ds["contrast"].values, float(cond["contrast"]))
                                           & np.isclose(ds["duration"].values, float(cond["duration"]))
                                           & np.isclose(ds["isi"].values, float(cond["isi"])))
                    t = pred["time"].values
                    if match.size:
                        ax.plot(t, data.isel(condition=match[0]).values, color="0.6", lw=1.0)
                    ax.plot(t, cond[a].values, color=cmap(m / max(len(sel) - 1, 1)), lw=1.2)
                ax.set_title(f"{a} {kind} (R$^2$ {result.r2.get(a, float('nan')):.3f})", fontsize=9)
                ax.set_xlabel("time (ms)")
                ax.set_ylabel(str(ds[a].attrs.get("units", "")))
        if title:
            fig.suptitle(title)
        fig.savefig(path)
    plt.close(fig)
    return path


# -- configuration and command line -------------------------------------------------------------
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
