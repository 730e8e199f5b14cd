"""One call from the three Groen et al. (2022) experiment archives (contrast, duration,
repetition) to per-population numbers and figures: :func:`analyze`, :func:`summarize`.

Every course is the population mean per condition, aligned to the stimulus onset, with the
mean over the baseline window (default -50 to 0 ms, the end of the 100 ms pre-stimulus period,
after the network has settled from its initial state) subtracted. Summed responses run from
the onset to the end of the epoch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from dynode.analysis import metrics as M
from dynode.analysis.courses import all_time_courses, as_tree, conditions
from dynode.analysis.dn import DNFit, fit_dn
from dynode.errors import ConfigurationError

__all__ = ["experiment_kind", "Analysis", "analyze", "summarize"]

KINDS = ("contrast", "duration", "repetition")
_BY = {"contrast": "contrast", "duration": "duration", "repetition": "isi"}


def experiment_kind(source) -> str:
    """Which Groen experiment an archive holds, from its conditions: two pulses ->
    ``"repetition"``; several contrasts -> ``"contrast"``; several durations -> ``"duration"``."""
    labels = conditions(as_tree(source))
    varies = {k for k, v in labels.items() if len(np.unique(v)) > 1}
    if "n_pulses" in labels and np.any(labels["n_pulses"] == 2):
        return "repetition"
    if "contrast" in varies:
        return "contrast"
    if "duration" in varies:
        return "duration"
    raise ConfigurationError(f"cannot tell the experiment of this archive from its conditions "
                             f"{sorted(labels)}; record a dynode.stimuli.groen2022 protocol (its "
                             "contrast / duration / isi / n_pulses labels) or pass it by keyword")


def _single(values, name: str) -> float:
    u = np.unique(np.asarray(values))
    if len(u) != 1:
        raise ConfigurationError(f"expected one {name} in the archive, got {u.tolist()}")
    return float(u[0])


@dataclass
class Analysis:
    """The results of :func:`analyze`; xarray Datasets hold one variable per population.

    courses : ``{kind: Dataset (condition, time)}`` baseline-corrected, time from onset (ms).
    summed : ``{kind: Dataset (condition)}`` summed responses from the onset (ms units).
    ratios : summation ratios along ``duration`` (T), or None.
    recovery : ISI recovery along ``isi``, or None.
    peaks : time to peak (ms) along ``contrast`` (or ``duration`` without a contrast archive).
    """

    courses: dict[str, xr.Dataset]
    summed: dict[str, xr.Dataset]
    populations: list[str]
    ratios: xr.Dataset | None = None
    windows: dict[str, float] = field(default_factory=dict)
    recovery: xr.Dataset | None = None
    peaks: xr.Dataset | None = None
    asymptote: dict[str, float] = field(default_factory=dict)
    contrast_fits: dict[str, M.HyperbolicRatioFit | None] = field(default_factory=dict)
    dn_fits: dict[str, DNFit] = field(default_factory=dict)

    def summary(self) -> dict[str, dict]:
        """Per-population numbers (plain floats; dict keys are condition values)."""
        out = {}
        for pop in self.populations:
            d: dict = {}
            if self.ratios is not None:
                r = self.ratios[pop]
                d["summation_ratio"] = {float(T): float(v) for T, v in zip(r["duration"].values, r.values)}
                d["summation_ratio_mean"] = float(np.nanmean(r.values))
            if pop in self.windows:
                d["summation_window_ms"] = self.windows[pop]
            if self.recovery is not None:
                r = self.recovery[pop]
                d["isi_recovery"] = {float(i): float(v) for i, v in zip(r["isi"].values, r.values)}
            if self.peaks is not None:
                p = self.peaks[pop]
                dim = p.dims[0]
                d[f"time_to_peak_ms_by_{dim}"] = {float(c): float(v) for c, v in zip(p[dim].values, p.values)}
                d["peak_latency_ms"] = float(p.isel({dim: -1}))
            if pop in self.asymptote:
                d["asymptote_to_peak"] = self.asymptote[pop]
            if pop in self.contrast_fits:
                fit = self.contrast_fits[pop]
                d["c50"] = float("nan") if fit is None else fit.c50
                d["c50_fit_r2"] = float("nan") if fit is None else fit.r2
            if pop in self.dn_fits:
                d["dn"] = {**self.dn_fits[pop].params, "r2": self.dn_fits[pop].r2}
            out[pop] = d
        return out

    def figures(self, outdir) -> dict[str, Path]:
        """Write every figure the results allow into ``outdir``; ``{name: path}``."""
        from dynode.analysis import figures as F

        outdir = Path(outdir)
        paths = {}
        for kind, ds in self.courses.items():
            paths[f"time_courses_{kind}"] = F.plot_time_courses(
                ds, outdir / f"time_courses_{kind}.png", dim=_BY[kind], title=f"{kind} experiment")
        if "duration" in self.summed:
            paths["summation"] = F.plot_summation(self.summed["duration"], outdir / "summation.png")
        if self.recovery is not None:
            paths["recovery"] = F.plot_recovery(self.recovery, outdir / "recovery.png")
        if "contrast" in self.summed:
            paths["contrast_response"] = F.plot_contrast_response(
                self.summed["contrast"], outdir / "contrast_response.png", fits=self.contrast_fits)
        return paths


def _classify(archives, named: dict) -> dict[str, xr.DataTree]:
    trees = {k: as_tree(v) for k, v in named.items() if v is not None}
    for a in archives:
        tree = as_tree(a)
        kind = experiment_kind(tree)
        if kind in trees:
            raise ConfigurationError(f"two archives of the {kind!r} experiment; give one of each")
        trees[kind] = tree
    if not trees:
        raise ConfigurationError("give at least one archive (contrast, duration or repetition experiment)")
    return trees


def analyze(*archives, contrast=None, duration=None, repetition=None, populations=None,
            baseline: tuple[float, float] | None = (-50.0, 0.0), window: float = 300.0,
            dn: bool = False, dn_options: Mapping | None = None) -> Analysis:
    """Analyse the Groen experiments' archives (DataTrees, SimulationResults or paths).

    Positional ``archives`` are sorted by :func:`experiment_kind`; or name them by keyword.
    Any subset works; a metric whose experiment is missing is left out (ISI recovery needs the
    duration archive too, for the single pulse of the repetition's pulse length).
    ``window``: the ISI recovery window (ms). ``dn``: also fit the delayed normalisation model
    to each population's duration series from the onset on (t >= 0; a few seconds per
    population; ``dn_options`` are keyword arguments of :func:`~dynode.analysis.fit_dn`).
    """
    if dn_options is not None and not dn:
        raise ConfigurationError("dn_options is only used with dn=True")
    trees = _classify(archives, {"contrast": contrast, "duration": duration, "repetition": repetition})
    courses = {k: all_time_courses(t, _BY[k], populations=populations, baseline=baseline)
               for k, t in trees.items()}
    pops = list(next(iter(courses.values())).data_vars)
    for k, ds in courses.items():
        missing = [p for p in pops if p not in ds]
        if missing:
            raise ConfigurationError(f"the {k} archive lacks populations {missing}; pass populations=")
    summed = {k: xr.Dataset({p: M.summed_response(ds[p], 0.0) for p in pops}) for k, ds in courses.items()}
    res = Analysis(courses=courses, summed=summed, populations=pops)
    if "duration" in courses:
        dur = courses["duration"]
        res.ratios = xr.Dataset({p: M.summation_ratios(dur[p], start=0.0) for p in pops})
        res.windows = {p: float(M.summation_window(dur[p])) for p in pops}
    if "repetition" in courses and "duration" in courses:
        d_pulse = _single(conditions(trees["repetition"])["duration"], "pulse duration")
        dur = courses["duration"]
        if np.isclose(dur["duration"].values, d_pulse).any():
            res.recovery = xr.Dataset({p: M.isi_recovery(courses["repetition"][p],
                                                         dur[p].sel(duration=d_pulse, method="nearest"),
                                                         duration=d_pulse, window=window) for p in pops})
        else:
            warnings.warn(f"no single {d_pulse:g} ms pulse in the duration archive (durations "
                          f"{dur['duration'].values.tolist()}); ISI recovery left out", RuntimeWarning,
                          stacklevel=2)
    long_kind = "contrast" if "contrast" in courses else "duration" if "duration" in courses else None
    if long_kind is not None:
        ds = courses[long_kind]
        res.peaks = xr.Dataset({p: M.time_to_peak(ds[p], 0.0) for p in pops})
        if long_kind == "contrast":
            offset = _single(conditions(trees["contrast"])["duration"], "contrast pulse duration")
            longest = ds.isel(contrast=-1)
        else:
            offset = float(ds["duration"].values.max())
            longest = ds.sel(duration=offset)
        res.asymptote = {p: float(M.asymptote_to_peak(longest[p], offset)) for p in pops}
    if "contrast" in summed:
        for p in pops:
            try:
                res.contrast_fits[p] = M.fit_hyperbolic_ratio(summed["contrast"][p]["contrast"].values,
                                                              summed["contrast"][p].values)
            except ConfigurationError as exc:
                warnings.warn(f"population {p}: no c50 ({exc})", RuntimeWarning, stacklevel=2)
                res.contrast_fits[p] = None
    if dn:
        if "duration" not in courses:
            raise ConfigurationError("dn=True fits the duration series; give the duration archive")
        dur = courses["duration"].sel(time=slice(0.0, None))  # from the onset: the model is 0 before
        c = _single(conditions(trees["duration"])["contrast"], "contrast")
        t = dur["time"].values
        stim = np.stack([c * ((t >= 0) & (t < T)) for T in dur["duration"].values]).astype(np.float64)
        res.dn_fits = {p: fit_dn(stim, dur[p].transpose("duration", "time").values, t, **dict(dn_options or {}))
                       for p in pops}
    return res


def summarize(*archives, contrast=None, duration=None, repetition=None, **kwargs) -> dict[str, dict]:
    """:func:`analyze` the archives and return :meth:`Analysis.summary`: per population the
    summation ratios (and their mean), summation window, ISI recovery, time to peak per
    contrast and the peak latency at the highest contrast, asymptote-to-peak ratio, c50."""
    return analyze(*archives, contrast=contrast, duration=duration, repetition=repetition,
                   **kwargs).summary()
