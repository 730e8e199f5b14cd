r"""Population time courses per stimulus condition, from archives or plain xarray data.

A population time course is the rate averaged over a population's units,
:math:`\bar r(t) = \frac1N \sum_i r_i(t)` (the stand-in for an ECoG broadband signal; read
block by block by :func:`dynode.archive.population_time_course`). :func:`time_courses`
then averages the samples that share the values of the conditions in ``by`` (e.g. the images
shown at one contrast), aligns time to the stimulus onset and subtracts a baseline:

.. math:: c_{k}(t) = \frac{1}{|S_k|} \sum_{s \in S_k} \bar r_s(t + t_{on})
          - \frac{1}{|B|} \sum_{t' \in B} \frac{1}{|S_k|} \sum_{s \in S_k} \bar r_s(t' + t_{on})

with ``S_k`` the samples of condition ``k``, ``t_on`` the onset and ``B`` the baseline window
(in the aligned time frame). Time stays in ms.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from dynode.errors import ConfigurationError
from dynode.archive import open_archive, population_time_course, populations as recorded

__all__ = ["as_tree", "conditions", "time_courses", "all_time_courses", "subtract_baseline",
           "align_to_onset"]

_NOT_GROUPED = ("image", "onset", "sample")


def as_tree(source) -> xr.DataTree:
    """An archive as a DataTree: a DataTree, a :class:`dynode.SimulationResult` or a path."""
    if isinstance(source, xr.DataTree):
        return source
    if hasattr(source, "tree") and isinstance(source.tree, xr.DataTree):
        return source.tree
    if isinstance(source, (str, Path)):

        return open_archive(source)
    raise ConfigurationError(f"expected an archive (xarray.DataTree, dynode.SimulationResult or a path "
                             f"to a zarr store), got {type(source).__name__}")


def conditions(tree: xr.DataTree) -> dict[str, np.ndarray]:
    """The archive's condition labels: ``{name: values per sample}``."""
    root = as_tree(tree).to_dataset()
    return {name: np.asarray(c.values) for name, c in root.coords.items()
            if c.dims == ("sample",) and name != "sample"}


def _default_by(labels: dict[str, np.ndarray]) -> list[str]:
    return [k for k, v in labels.items() if k not in _NOT_GROUPED and len(np.unique(v)) > 1]


def _group_mean(course: xr.DataArray, by: Sequence[str]) -> xr.DataArray:
    """Average ``course`` ``(time, sample)`` over samples sharing the values of ``by``:
    ``(*by, time)``, NaN where a combination of values was not run."""
    for name in by:
        if name not in course.coords or course[name].dims != ("sample",):
            known = [c for c in course.coords if course[c].dims == ("sample",) and c != "sample"]
            raise ConfigurationError(f"unknown condition {name!r}; the conditions are {known}")
    data = course.transpose("sample", "time").values.astype(np.float64)
    levels, index = [], []
    for name in by:
        values = np.asarray(course[name].values)
        uniq, inv = np.unique(values, return_inverse=True)
        levels.append(uniq)
        index.append(inv)
    shape = tuple(len(u) for u in levels)
    total = np.zeros(shape + (data.shape[1],))
    count = np.zeros(shape)
    for s in range(data.shape[0]):
        key = tuple(i[s] for i in index)
        total[key] += data[s]
        count[key] += 1
    with np.errstate(invalid="ignore"):
        mean = total / count[..., None]
    coords = {name: (name, u, {"long_name": f"stimulus condition: {name}"}) for name, u in zip(by, levels)}
    coords["time"] = course["time"]
    return xr.DataArray(mean, dims=tuple(by) + ("time",), coords=coords, name=course.name,
                        attrs=dict(course.attrs))


def align_to_onset(course: xr.DataArray, onset: float) -> xr.DataArray:
    """Shift time so that 0 is the stimulus onset (``onset`` ms on the original axis)."""
    out = course.assign_coords(time=course["time"].values - float(onset))
    out["time"].attrs = {"units": "ms", "long_name": "time from stimulus onset", "standard_name": "time"}
    out.attrs["onset_ms"] = float(onset)
    return out


def subtract_baseline(course: xr.DataArray, window: tuple[float, float]) -> xr.DataArray:
    """Subtract the mean over ``window[0] <= t < window[1]`` (ms) from every time course."""
    lo, hi = float(window[0]), float(window[1])
    t = course["time"].values
    mask = (t >= lo) & (t < hi)
    if not mask.any():
        raise ConfigurationError(f"baseline window [{lo:g}, {hi:g}) ms holds no time point; the course "
                                 f"spans [{t.min():g}, {t.max():g}] ms")
    base = course.isel(time=np.flatnonzero(mask)).mean("time")
    out = course - base
    out.attrs = dict(course.attrs, baseline_ms=[lo, hi])
    out.name = course.name
    return out


def time_courses(source, population: str, by: str | Sequence[str] | None = None, *,
                 align: bool | None = None, baseline: tuple[float, float] | None = None,
                 statistic: str = "mean") -> xr.DataArray:
    """The population's time course per condition: ``(*by, time)``, time in ms.

    source : an archive (DataTree, SimulationResult or path).
    by : the condition(s) whose samples are averaged together (e.g. ``"contrast"``); default:
        every condition that varies across samples except ``image`` and ``onset``; ``[]``
        keeps the ``sample`` dimension (with its condition coordinates).
    align : shift time so that 0 is the stimulus onset (the ``onset`` condition, which must
        then be one value); default: when the archive has an ``onset`` condition.
    baseline : ``(start, stop)`` ms (after alignment): subtract each course's mean there.
    statistic : ``"mean"`` over units (default) or ``"std"``.
    """

    tree = as_tree(source)
    course = population_time_course(tree, population, statistic=statistic)
    labels = conditions(tree)
    by = _default_by(labels) if by is None else [by] if isinstance(by, str) else list(by)
    out = _group_mean(course, by) if by else course.transpose("sample", "time").astype(np.float64)
    if align is None:
        align = "onset" in labels
    if align:
        if "onset" not in labels:
            raise ConfigurationError("align=True needs an 'onset' condition in the archive; pass align=False "
                                     "(or shift time with dynode.analysis.align_to_onset)")
        onsets = np.unique(labels["onset"])
        if len(onsets) != 1:
            raise ConfigurationError(f"the samples have different onsets {onsets.tolist()} ms; select one "
                                     "onset (dynode.archive.select_conditions) or pass align=False")
        out = align_to_onset(out, float(onsets[0]))
    if baseline is not None:
        out = subtract_baseline(out, baseline)
    out.name = population
    return out


def all_time_courses(source, by: str | Sequence[str] | None = None, *, populations: Sequence[str] | None = None,
                     align: bool | None = None, baseline: tuple[float, float] | None = None,
                     statistic: str = "mean") -> xr.Dataset:
    """:func:`time_courses` of several populations (default every recorded one) as a Dataset."""

    tree = as_tree(source)
    names = recorded(tree) if populations is None else list(populations)
    return xr.Dataset({n: time_courses(tree, n, by, align=align, baseline=baseline, statistic=statistic)
                       for n in names})
