"""Recordings as the analysis' courses (:func:`area_course`, :func:`recording_courses`) and
their Groen metrics (:func:`analyze_recordings`): the code path that analyses model archives
(:func:`dynode.analysis.analyze_courses`), so the same courses give the same numbers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from dynode.analysis.summary import Analysis, analyze_courses
from dynode.recordings.io import load_recordings
from dynode.recordings.layout import _error, validate_recordings
from dynode.stimuli import EXPERIMENTS

__all__ = ["area_course", "recording_courses", "analyze_recordings"]


def area_course(ds: xr.Dataset, area: str, electrode: str | int | None = None) -> xr.DataArray:
    """Recorded area ``area``'s course, dims ``(condition, time)``. With an ``electrode``
    dimension: the mean over the electrodes (the counterpart of a model population's mean over
    its units), or the electrode labelled ``electrode``; ``electrode`` for an area without that
    dimension is an error."""
    var = ds[area]
    if "electrode" in var.dims:
        if electrode is None:
            var = var.mean("electrode")
        else:
            labels = [str(e) for e in ds["electrode"].values]
            if str(electrode) not in labels:
                raise _error(f"no electrode {electrode!r}; the electrodes are {labels}", "electrode")
            var = var.isel(electrode=labels.index(str(electrode)))
    elif electrode is not None:
        raise _error(f"electrode={electrode!r} was given but area {area!r} has no electrode dimension", "electrode")
    return var.transpose("condition", "time")


def recording_courses(ds: xr.Dataset, *, areas: Sequence[str] | None = None,
                      electrode: str | int | None = None) -> tuple[dict[str, xr.Dataset], dict[str, dict]]:
    """The recordings as the analysis' courses: ``({kind: Dataset (by, time)}, {kind: fixed
    conditions})`` for every recorded experiment, in :data:`~dynode.stimuli.EXPERIMENTS`
    order. ``by`` is the experiment's condition dimension (``contrast``, ``duration``,
    ``isi``), sorted; time is from the onset (ms); no baseline is removed (the analysis does
    that, as for an archive). ``fixed`` holds the conditions that are one value per
    experiment (``contrast`` and ``duration``, minus ``by``).

    With an ``electrode`` dimension the course of an area is the mean over its electrodes
    (the counterpart of a model population's mean over units), or one electrode's with
    ``electrode=`` (its label). ``areas``: which areas (default every one)."""
    ds = validate_recordings(ds)
    names = list(ds.data_vars) if areas is None else list(areas)
    validate_recordings(ds, areas=names)
    kinds = np.asarray([str(k) for k in ds["experiment"].values])
    courses, fixed = {}, {}
    for kind, exp in EXPERIMENTS.items():
        idx = np.flatnonzero(kinds == kind)
        if not idx.size:
            continue
        part = ds.isel(condition=idx)
        by = exp.by
        values = np.asarray(part[by].values, dtype=np.float64)
        if len(np.unique(values)) != len(values):
            raise _error(f"the {kind} experiment has several conditions with the same {by} "
                         f"{sorted(values.tolist())}; average repeated trials into one condition per {by}", by)
        fixed[kind] = {}
        for c in exp.needs:
            if c == by:
                continue
            u = np.unique(np.asarray(part[c].values, dtype=np.float64))
            if len(u) != 1:
                raise _error(f"the {kind} experiment varies {c} ({u.tolist()}) as well as {by}; its analysis "
                             f"reads one {c} per experiment: split the conditions or label them as another "
                             "experiment", c)
            fixed[kind][c] = float(u[0])
        onset = float(part["onset"].values[0])
        t_axis = np.asarray(part["time"].values, dtype=np.float64)
        dt = float(np.diff(t_axis).mean())
        k = (onset - t_axis[0]) / dt
        if abs(k - round(k)) > 1e-6 * max(1.0, abs(k)):
            raise _error(f"the {kind} onset {onset:g} ms falls between samples (step {dt:.6g} ms from "
                         f"{t_axis[0]:g} ms); the analysis reads times from the onset on the sample grid: "
                         "give the time axis a sample at the onset (e.g. time = (k - k_onset) / rate)", "onset")
        order = np.argsort(values)
        out = {}
        for a in names:
            y = np.asarray(area_course(part, a, electrode).values, dtype=np.float64)[order]
            t = np.asarray(part["time"].values, dtype=np.float64) - onset
            out[a] = xr.DataArray(
                y, dims=(by, "time"),
                coords={by: (by, values[order], {"long_name": f"stimulus condition: {by}"}),
                        "time": ("time", t, {"units": "ms", "long_name": "time from stimulus onset",
                                             "standard_name": "time"})},
                name=a, attrs={"units": str(ds[a].attrs["units"]), "long_name": str(ds[a].attrs["long_name"]),
                               "onset_ms": onset})
        courses[kind] = xr.Dataset(out)
    return courses, fixed


def analyze_recordings(recordings, *, areas: Sequence[str] | None = None, electrode: str | int | None = None,
                       **options) -> Analysis:
    """The Groen metrics of recordings (a Dataset in the layout or a file for
    :func:`load_recordings`): :func:`recording_courses` then
    :func:`dynode.analysis.analyze_courses`, the code path that analyses model archives
    (:func:`dynode.analysis.analyze`), so the same courses give the same numbers. ``options``
    are those of :func:`~dynode.analysis.analyze_courses` (``baseline``, ``sum_window``,
    ``window``, ``smooth_ms``, ``drift_tol``, ``dn``, ``dn_options``); flags and undefined
    metrics as there. The populations of the result are the recorded areas."""
    ds = load_recordings(recordings)
    courses, fixed = recording_courses(ds, areas=areas, electrode=electrode)
    return analyze_courses(courses, fixed, **options)
