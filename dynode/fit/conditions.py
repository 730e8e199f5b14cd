r"""The recorded conditions as stimuli: which areas and experiments of the recordings are
fitted, their time courses, and each experiment's conditions rebuilt as one stimulus batch.

The recordings (the layout of :mod:`dynode.recordings`: an
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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from dynode.errors import ConfigurationError
from dynode.network import Network
from dynode.recordings import match_areas, validate_recordings
from dynode.recordings.analysis import area_course
from dynode.stimuli import EXPERIMENTS
from dynode.stimuli import envelopes as E
from dynode.stimuli.protocols import Protocol


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
    mean over the electrodes (:func:`dynode.recordings.analysis.area_course`, as in
    :func:`dynode.recordings.recording_courses`)."""
    out = {}
    for v in areas:
        y = np.asarray(area_course(ds, v).values, dtype=np.float64)
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
