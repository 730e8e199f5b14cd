"""The model-data comparison per recorded area and metric (:class:`Comparison`,
:func:`compare_recordings`) and its one summary score (:data:`SCORE`), as plain-text tables
(:func:`format_comparison`). The fitted latency shift and gain are
:mod:`dynode.recordings.align`'s."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from dynode.analysis.summary import Analysis, analyze
from dynode.errors import (AnalysisWarning, ConfigurationError, MissingConditionsError, UndefinedMetricWarning,
                           user_stacklevel)
from dynode.recordings.align import _fit_shift, _predict
from dynode.recordings.analysis import analyze_recordings
from dynode.recordings.layout import match_areas
from dynode.stimuli import EXPERIMENTS
from dynode.tolerances import TIME_RTOL

__all__ = ["MAX_SHIFT", "WINDOW", "SCORE", "METRICS", "Comparison", "compare_recordings", "format_comparison"]

MAX_SHIFT = 100.0
"""Default bound (ms) of the fitted latency shift: ``|s| <= MAX_SHIFT``."""
WINDOW = (0.0, 1000.0)
"""Default window (ms from onset) of the time-course comparison: Groen's summation window."""
SCORE = ("score = mean over the compared (area, experiment) cells of the shift-corrected Pearson correlation "
         "r between the recorded course and the model's course, every condition of the experiment "
         "concatenated over the window; range -1..1 (1: the same shape up to the fitted gain and latency "
         "shift); undefined cells are left out and flagged")
"""How :attr:`Comparison.score` is built (printed with it)."""
METRICS = ("summation_ratio", "summation_window_ms", "isi_recovery", "time_to_peak_ms", "half_rise_ms", "c50",
           "asymptote_to_peak")
"""The Groen metrics whose model - data differences a :class:`Comparison` reports."""


@dataclass
class Comparison:
    r"""A model compared with recordings (:func:`compare_recordings`), per recorded area.

    For each pair ``population -> area`` one latency shift ``s`` (ms), gain ``g`` and, with
    ``offset=True``, offset ``o`` are fitted jointly to every condition of every compared
    experiment over the window: the model course ``m`` (baseline-corrected, time from onset)
    is read at ``t - s`` on the recording's grid (linear interpolation; a positive ``s``
    delays the model: the recorded response comes later) and
    ``(g, o) = argmin sum (d - g m(t - s) - o)^2`` (least squares), ``s`` by grid search over
    the recording's samples within ``|s| <= max_shift`` refined by a parabola through the
    three best errors. A shift on the bound is flagged.

    fit : Dataset along ``area``: ``population``, ``shift_ms``, ``gain``, ``offset``,
        ``correlation`` and ``normalised_error`` pooled over the experiments.
    courses : Dataset ``(area, experiment)``: ``correlation`` (shift-corrected),
        ``correlation_unshifted`` (``s = 0``, gain refitted) and ``normalised_error``
        :math:`\lVert d - g m_s - o \rVert^2 / \lVert d \rVert^2` (0: identical; 1: no better
        than the baseline, a flat zero; the fit is pooled, so one experiment may exceed 1).
    metrics : Dataset ``(area, metric)``: ``model``, ``data``, ``difference`` (model - data)
        of the Groen metrics (:data:`METRICS`; one per condition, e.g.
        ``isi_recovery[133]``); latencies are not shift-corrected (the shift is beside them).
    score : :data:`SCORE`; ``score_cells`` how many cells it averages.
    model, data : the compared courses ``{experiment: Dataset (by, time)}`` by recorded area
        on the recording's grid over the window: the fitted model ``g m(t - s) + o`` and the data.
    flags : ``{"<area>/<what>": reason}`` for undefined or flagged values (NaN in the Datasets).
    """

    areas: dict[str, str]
    fit: xr.Dataset
    courses: xr.Dataset
    metrics: xr.Dataset
    score: float
    score_cells: int
    model: dict[str, xr.Dataset]
    data: dict[str, xr.Dataset]
    flags: dict[str, str] = field(default_factory=dict)
    max_shift: float = MAX_SHIFT
    window: tuple[float, float] = WINDOW

    def to_dict(self) -> dict:
        """Plain numbers (``None`` where undefined), JSON-serialisable."""
        def num(x):
            x = float(x)
            return x if math.isfinite(x) else None

        out = {"score": num(self.score), "score_cells": self.score_cells, "score_definition": SCORE,
               "max_shift_ms": self.max_shift, "window_ms": list(self.window), "areas": dict(self.areas),
               "fit": {}, "courses": {}, "metrics": {}, "flags": dict(self.flags)}
        for a in self.fit["area"].values:
            a = str(a)
            out["fit"][a] = {k: num(self.fit[k].sel(area=a)) for k in self.fit.data_vars if k != "population"}
            out["courses"][a] = {str(e): {k: num(self.courses[k].sel(area=a, experiment=e))
                                          for k in self.courses.data_vars}
                                 for e in self.courses["experiment"].values}
            out["metrics"][a] = {str(m): {k: num(self.metrics[k].sel(area=a, metric=m)) for k in self.metrics.data_vars}
                                 for m in self.metrics["metric"].values}
        return out

    def __str__(self) -> str:
        return format_comparison(self)


def _analysis_of(x, what: str, **kwargs) -> Analysis:
    if isinstance(x, Analysis):
        return x
    if what == "recordings":
        return analyze_recordings(x, **kwargs)
    if isinstance(x, Mapping):
        return analyze(**x)
    if isinstance(x, (list, tuple)):
        return analyze(*x)
    return analyze(x)


def compare_recordings(model, recordings, *, areas: Mapping[str, str] | None = None,
                       max_shift: float = MAX_SHIFT, offset: bool = False,
                       window: tuple[float, float] = WINDOW, electrode: str | int | None = None) -> Comparison:
    """Compare a model with recordings, per area and metric (:class:`Comparison`).

    model : an :class:`~dynode.analysis.Analysis` of the model's experiment archives, or the
        archives (a path, a list of paths, or ``{kind: archive}``) for
        :func:`~dynode.analysis.analyze`.
    recordings : a Dataset in the layout, a file (:func:`load_recordings`), or their
        :func:`analyze_recordings` (reused across models).
    areas : ``{model population: recorded area}`` (:func:`match_areas`; default the same names).
    max_shift : the bound (ms) of the fitted latency shift. offset : fit an offset besides the
        gain. window : ``(start, stop)`` ms from onset of the time-course comparison.

    Every recorded condition of a compared experiment must have been run on the model (a
    :class:`~dynode.errors.MissingConditionsError` names those that were not); the model's
    other conditions and experiments are not compared.
    """
    if not (isinstance(max_shift, (int, float)) and max_shift >= 0 and math.isfinite(max_shift)):
        raise ConfigurationError(f"max_shift must be a finite number of ms >= 0, got {max_shift!r}")
    lo, hi = (float(w) for w in window)
    if not hi > lo:
        raise ConfigurationError(f"window must be (start, stop) ms with stop > start, got {window!r}")
    data = _analysis_of(recordings, "recordings", electrode=electrode)
    mod = _analysis_of(model, "model")
    pairs = match_areas(mod.populations, data.populations, areas)
    kinds = [k for k in data.courses if k in mod.courses]
    if not kinds:
        raise MissingConditionsError(f"the recordings hold the experiments {list(data.courses)} and the model "
                                     f"{list(mod.courses)}: none in common; run the recorded experiments on the "
                                     "model", missing=list(data.courses))
    for k in kinds:  # every recorded condition was run on the model
        by = EXPERIMENTS[k].by
        have = mod.courses[k][by].values
        absent = [float(v) for v in data.courses[k][by].values if not np.isclose(have, v).any()]
        if absent:
            raise MissingConditionsError(f"the model's {k} experiment was not run at {by} {absent} (it has "
                                         f"{have.tolist()}), which the recordings hold; run those conditions or "
                                         f"drop them from the recordings", missing=[f"{k}:{by}={v:g}" for v in absent])
    flags: dict[str, str] = {}
    fits, cells, fitted_model, kept_data = {}, {}, {k: {} for k in kinds}, {k: {} for k in kinds}
    for pop, area in pairs.items():
        ys, ms, t_data = [], [], {}
        for k in kinds:
            d = data.courses[k][area]
            by = EXPERIMENTS[k].by
            t = d["time"].values
            keep = (t >= lo - TIME_RTOL) & (t < hi - TIME_RTOL)  # as the analysis' windows
            if keep.sum() < 3:
                raise ConfigurationError(f"the window [{lo:g}, {hi:g}) ms holds {int(keep.sum())} samples of the "
                                         f"recorded {k} courses ({t[0]:g} to {t[-1]:g} ms); widen it")
            t_data[k] = t[keep]
            m = mod.courses[k][pop]
            rows = [m.sel({by: v}, method="nearest") for v in d[by].values]
            ys.append(np.asarray(d.transpose(by, "time").values, dtype=np.float64)[:, keep])
            ms.append((np.asarray(m["time"].values, dtype=np.float64),
                       np.stack([np.asarray(r.values, dtype=np.float64) for r in rows])))
        step = float(np.diff(t_data[kinds[0]]).mean())
        res = _fit_shift(ys, ms, [t_data[k] for k in kinds], step, float(max_shift), offset)
        s, g, o = res["shift"], res["gain"], res["offset"]
        if res.get("undefined"):
            flags[f"{area}/fit"] = res["undefined"]
        elif max_shift > 0 and abs(abs(s) - max_shift) <= 0.5 * step:
            flags[f"{area}/shift_ms"] = (f"the fitted shift {s:+.1f} ms is on the bound +-{max_shift:g} ms: the "
                                         "latencies may differ more; raise max_shift")
        pred = _predict(ms, [t_data[k] for k in kinds], s, g, o)
        pred0 = _predict(ms, [t_data[k] for k in kinds], 0.0, *res["at_zero"])
        all_y = np.concatenate([y.ravel() for y in ys])
        all_p = np.concatenate([p.ravel() for p in pred])
        r_all, why = _corr(all_y, all_p)
        fits[area] = {"population": pop, "shift_ms": s, "gain": g, "offset": o, "correlation": r_all,
                      "normalised_error": _ne(all_y, all_p)}
        for i, k in enumerate(kinds):
            r, why = _corr(ys[i].ravel(), pred[i].ravel())
            if why:
                flags[f"{area}/{k}/correlation"] = why
            r0, _ = _corr(ys[i].ravel(), pred0[i].ravel())
            ne = _ne(ys[i].ravel(), pred[i].ravel())
            if not math.isfinite(ne):
                flags[f"{area}/{k}/normalised_error"] = "the recorded course is zero everywhere in the window"
            cells[(area, k)] = {"correlation": r, "correlation_unshifted": r0, "normalised_error": ne}
            by = EXPERIMENTS[k].by
            coords = {by: data.courses[k][by].values, "time": ("time", t_data[k], {"units": "ms"})}
            fitted_model[k][area] = xr.DataArray(pred[i], dims=(by, "time"), coords=coords, name=area,
                                                 attrs={"units": data.courses[k][area].attrs.get("units", ""),
                                                        "long_name": f"model {pop}: gain x course(t - shift)"})
            kept_data[k][area] = xr.DataArray(ys[i], dims=(by, "time"), coords=coords, name=area,
                                              attrs=dict(data.courses[k][area].attrs))
    area_names = list(fits)
    fit_ds = xr.Dataset({key: ("area", [fits[a][key] for a in area_names]) for key in fits[area_names[0]]},
                        coords={"area": area_names})
    fit_ds["shift_ms"].attrs = {"units": "ms", "long_name": "latency shift added to the model (+: data later)"}
    course_ds = xr.Dataset({key: (("area", "experiment"), [[cells[(a, k)][key] for k in kinds] for a in area_names])
                            for key in ("correlation", "correlation_unshifted", "normalised_error")},
                           coords={"area": area_names, "experiment": kinds})
    metric_ds = _metric_differences(mod, data, pairs, flags)
    for key, why in flags.items():  # the metrics' flags were warned by their analyses
        if not key.endswith(("/model", "/data")):
            warning = (UndefinedMetricWarning if "undefined" in why or "no gain" in why or "constant" in why
                       or "zero everywhere" in why else AnalysisWarning)(f"{key}: {why}")
            warning.flag = tuple(key.split("/", 1))
            warnings.warn(warning, stacklevel=user_stacklevel())
    vals = course_ds["correlation"].values.ravel()
    ok = vals[np.isfinite(vals)]
    score = float(ok.mean()) if ok.size else math.nan
    if not ok.size:
        flags["score"] = "no (area, experiment) cell has a defined correlation"
        warning = UndefinedMetricWarning(f"score: {flags['score']}")
        warning.flag = ("score", "score")
        warnings.warn(warning, stacklevel=user_stacklevel())
    return Comparison(areas=pairs, fit=fit_ds, courses=course_ds, metrics=metric_ds, score=score,
                      score_cells=int(ok.size), model={k: xr.Dataset(v) for k, v in fitted_model.items()},
                      data={k: xr.Dataset(v) for k, v in kept_data.items()}, flags=flags,
                      max_shift=float(max_shift), window=(lo, hi))


def _corr(y: np.ndarray, x: np.ndarray) -> tuple[float, str | None]:
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return math.nan, "the fitted model course is undefined (no gain)"
    sy, sx = float(y.std()), float(x.std())
    if sy == 0:
        return math.nan, "the recorded course is constant in the window"
    if sx == 0:
        return math.nan, "the model's course is constant in the window"
    return float(np.corrcoef(y, x)[0, 1]), None


def _ne(y: np.ndarray, p: np.ndarray) -> float:
    yy = float(y @ y)
    if yy <= 0 or not np.isfinite(p).all():
        return math.nan
    return float(((y - p) ** 2).sum() / yy)


def _metric_values(summary: Mapping) -> dict[str, tuple[float | None, str | None]]:
    """``{metric[condition]: (value or None, flag reason or None)}`` of one summary row."""
    flags = summary.get("flags", {})
    out = {}
    for key in METRICS:
        v = summary.get(key)
        if key not in summary:
            continue
        if isinstance(v, Mapping):
            for cond, x in v.items():
                name = f"{key}[{float(cond):g}]"
                out[name] = (x, flags.get(name))
        else:
            out[key] = (v, flags.get(key))
    return out


def _metric_differences(mod: Analysis, data: Analysis, pairs: Mapping[str, str], flags: dict) -> xr.Dataset:
    ms, ds = mod.summary(), data.summary()
    names: list[str] = []
    table = {}
    for pop, area in pairs.items():
        mv, dv = _metric_values(ms[pop]), _metric_values(ds[area])
        for name in dv:
            if name not in mv:
                continue
            if name not in names:
                names.append(name)
            (m, mwhy), (d, dwhy) = mv[name], dv[name]
            m = math.nan if m is None else float(m)
            d = math.nan if d is None else float(d)
            table[(area, name)] = (m, d, m - d)
            for side, why, v in (("model", mwhy, m), ("data", dwhy, d)):
                if why is not None or not math.isfinite(v):
                    flags[f"{area}/{name}/{side}"] = why or "undefined"
    areas = list(pairs.values())
    nan3 = (math.nan, math.nan, math.nan)
    return xr.Dataset({key: (("area", "metric"), [[table.get((a, n), nan3)[i] for n in names] for a in areas])
                       for i, key in enumerate(("model", "data", "difference"))},
                      coords={"area": areas, "metric": names})


def format_comparison(cmp: Comparison) -> str:
    """:class:`Comparison` as plain-text tables: the score and its definition; per area and
    experiment the shift-corrected and unshifted correlation, the normalised error, the fitted
    gain and latency shift; then the metric differences. ``n/a`` marks an undefined value and
    ``*`` a flagged one (the reasons follow)."""
    def cell(v, fmt, key=None):
        flagged = key is not None and any(k == key or k.startswith(key + "/") for k in cmp.flags)
        text = "n/a" if not math.isfinite(float(v)) else format(float(v), fmt)
        return text + ("*" if flagged else "")

    score = "n/a" if not math.isfinite(cmp.score) else f"{cmp.score:.3f}"
    out = [f"score {score} over {cmp.score_cells} (area, experiment) cells", f"  ({SCORE})"]
    head = ["area", "model", "experiment", "r", "r unshifted", "norm. error", "gain", "shift ms"]
    rows = []
    for a in cmp.fit["area"].values:
        a = str(a)
        f = cmp.fit.sel(area=a)
        for e in cmp.courses["experiment"].values:
            c = cmp.courses.sel(area=a, experiment=e)
            rows.append([a, str(f["population"].values), str(e), cell(c["correlation"], ".3f", f"{a}/{e}/correlation"),
                         cell(c["correlation_unshifted"], ".3f"),
                         cell(c["normalised_error"], ".3f", f"{a}/{e}/normalised_error"),
                         cell(f["gain"], ".3g", f"{a}/fit"), cell(f["shift_ms"], "+.1f", f"{a}/shift_ms")])
        rows.append([a, str(f["population"].values), "all", cell(f["correlation"], ".3f"), "",
                     cell(f["normalised_error"], ".3f"), "", ""])
    out += _columns(head, rows)
    if cmp.metrics.sizes.get("metric", 0):
        out.append("Groen metrics, model - data (latencies not shift-corrected):")
        head = ["area", "metric", "model", "data", "difference"]
        rows = []
        for a in cmp.metrics["area"].values:
            for m in cmp.metrics["metric"].values:
                v = cmp.metrics.sel(area=a, metric=m)
                if not (math.isfinite(float(v["model"])) or math.isfinite(float(v["data"]))):
                    continue
                rows.append([str(a), str(m), cell(v["model"], ".3g", f"{a}/{m}/model"),
                             cell(v["data"], ".3g", f"{a}/{m}/data"), cell(v["difference"], "+.3g")])
        out += _columns(head, rows)
    if cmp.flags:
        out.append("flags (n/a: undefined; *: read with care):")
        out += [f"  {k}: {why}" for k, why in cmp.flags.items()]
    return "\n".join(out)


def _columns(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(x.ljust(w) if i < 3 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [fmt(head)] + [fmt(r) for r in rows]
