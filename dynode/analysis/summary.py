"""One call from the three Groen et al. (2022) experiment archives (contrast, duration,
repetition) to per-population numbers, flags and figures: :func:`analyze`, :func:`summarize`,
:func:`format_summary`.

Every course is the population mean per condition, aligned to the stimulus onset (the
``onset`` condition, or the archive's ``onset_ms`` attribute), with the mean over the baseline
window (default -100 to 0 ms, Groen's baseline) subtracted. The metrics follow Groen's
definitions (:mod:`dynode.analysis.metrics`): summed responses over 0-1 s after onset, time to
peak and half-rise latency inside the 500 ms contrast stimulus, c50 as the half-peak contrast,
ISI recovery in 300 ms windows, asymptote/peak from a smoothed course at 0.5 s, the DN model
fitted jointly to every condition.

What is not a result is said, not printed as a number: a metric that is undefined is ``None``
in the summary with the reason in its ``flags`` (and an
:class:`~dynode.errors.UndefinedMetricWarning`); a number that should not be read as it
stands (a drifting baseline, a response below baseline, a Naka-Rushton c50 outside the tested
contrasts, DN parameters on their bounds, a recovery window cut by the end of the epoch) is
kept with a flag (and an :class:`~dynode.errors.AnalysisWarning`).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from dynode.analysis import metrics as M
from dynode.analysis.courses import align_to_onset, all_time_courses, as_tree, conditions
from dynode.analysis.dn import DNFit, fit_dn, pulse_envelope
from dynode.errors import (AnalysisWarning, BaselineDriftWarning, ConfigurationError, MissingConditionsError,
                           UndefinedMetricWarning, user_stacklevel)
from dynode.analysis import figures as F
from dynode.stimuli import EXPERIMENTS
from dynode.tolerances import TIME_RTOL

__all__ = ["experiment_kind", "Analysis", "analyze", "analyze_courses", "summarize", "format_summary", "flags_in_tables",
           "BASELINE", "DRIFT_TOL", "NEEDS"]

KINDS = tuple(EXPERIMENTS)  # the registry (dynode.stimuli.EXPERIMENTS) in its order
GROEN_ANALYSIS = tuple(k for k, e in EXPERIMENTS.items() if e.analysis == "groen2022")
"""The kinds this module analyses (the others, e.g. ``reaction_time``, have their own analysis)."""
_BY = {k: e.by for k, e in EXPERIMENTS.items()}
NEEDS = {k: e.needs for k, e in EXPERIMENTS.items()}
"""The conditions (archive coordinates along ``sample``) each experiment's analysis reads."""
BASELINE = (-100.0, 0.0)
"""Groen's baseline window (ms from onset)."""
DRIFT_TOL = 0.01
"""A baseline that changes by more than this fraction of the peak over the baseline window
(least-squares slope times the window length) is flagged as drifting."""

PLAUSIBLE = {"summation_ratio": (0.0, 1.5), "isi_recovery": (0.0, 1.5)}
"""Ranges outside which a ratio is flagged as implausible rather than reported: a summation
ratio R(2T) / 2R(T) below 0 needs a response below baseline, above 1.5 a strongly supra-additive
response; an ISI recovery below 0 or far above 1 means the second pulse's response is not a
recovered copy of the first (a near-silent single pulse, or a response that builds up)."""


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
    raise MissingConditionsError(
        f"cannot tell the Groen experiment of this archive from its conditions {sorted(labels)}: it needs "
        "several 'contrast' values (contrast experiment), several 'duration' values (duration experiment) or "
        "'n_pulses' = 2 with 'isi' (repetition experiment); record a dynode.stimuli.groen2022 protocol or pass "
        "the archive by keyword", missing=["contrast", "duration", "isi"])


def _single(values, name: str) -> float:
    u = np.unique(np.asarray(values))
    if len(u) != 1:
        raise ConfigurationError(f"expected one {name} in the archive, got {u.tolist()}")
    return float(u[0])


def _num(x) -> float | None:
    """A plain float, ``None`` for NaN (JSON has no NaN)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _along(da: xr.DataArray, dim: str) -> dict[float, float | None]:
    """``{condition: value}`` of a metric along ``dim`` (plain floats, ``None`` for NaN)."""
    return {float(c): _num(v) for c, v in zip(da[dim].values, da.values)}


@dataclass
class Analysis:
    """The results of :func:`analyze`; xarray Datasets hold one variable per population, in the
    archive's population order (the hierarchy).

    courses : ``{kind: Dataset (condition, time)}`` baseline-corrected, time from onset (ms).
    summed : ``{kind: Dataset (condition)}`` summed responses over ``sum_window`` (ms x units).
    ratios : summation ratios R(T2) / ((T2/T) R(T)) along ``duration`` (T; ``attrs["T2"]``), or None.
    recovery : ISI recovery along ``isi``, or None.
    latency : ``{"time_to_peak": Dataset, "half_rise": Dataset}`` along ``contrast`` (ms).
    peaks : peak response per contrast inside the stimulus window.
    sustained_reference : the asymptote/peak of a response without transient (see summary()).
    c50 : Groen's half-peak c50 per population (NaN when undefined).
    flags : ``{population: {key: reason}}`` for every value that is not a plain result.
    not_computed : ``{metric: what is missing}``.
    """

    courses: dict[str, xr.Dataset]
    summed: dict[str, xr.Dataset]
    populations: list[str]
    ratios: xr.Dataset | None = None
    windows: dict[str, float] = field(default_factory=dict)
    recovery: xr.Dataset | None = None
    latency: dict[str, xr.Dataset] = field(default_factory=dict)
    peaks: xr.Dataset | None = None
    c50: dict[str, float] = field(default_factory=dict)
    asymptote: dict[str, float] = field(default_factory=dict)
    contrast_fits: dict[str, M.HyperbolicRatioFit | None] = field(default_factory=dict)
    dn_fits: dict[str, DNFit] = field(default_factory=dict)
    baseline_to_peak: dict[str, float] = field(default_factory=dict)
    drift_to_peak: dict[str, float] = field(default_factory=dict)
    sustained_reference: dict[str, float] = field(default_factory=dict)
    flags: dict[str, dict[str, str]] = field(default_factory=dict)
    not_computed: dict[str, str] = field(default_factory=dict)

    def flag(self, pop: str, key: str, reason: str, category=AnalysisWarning) -> None:
        """Record ``reason`` for ``key`` of ``pop`` and warn it, pointing at the user's call
        (:func:`~dynode.errors.user_stacklevel`). The warning carries ``flag = (pop, key)``: the
        printed tables show it (:func:`flags_in_tables` keeps the command line from printing
        it twice)."""
        self.flags.setdefault(pop, {})[key] = reason
        warning = category(f"{pop}: {key}: {reason}")
        warning.flag = (pop, key)
        warnings.warn(warning, stacklevel=user_stacklevel())

    def summary(self) -> dict[str, dict]:
        """Per-population numbers, JSON-serialisable (plain floats, ``None`` where undefined;
        condition-keyed dicts have float keys, which JSON writes as strings). Keys (each only
        when its experiment was given):

        * ``baseline_to_peak``: |mean baseline| / |raw peak| (the raw peak is the baseline plus
          the largest baseline-corrected response), the worst experiment;
        * ``baseline_drift_to_peak``: |change over the baseline window| / peak (flagged above
          :data:`DRIFT_TOL`);
        * ``summed_response``: ``{T: R(T)}`` over 0-1 s after onset (ms x the rate's units);
        * ``summation_ratio``: ``{T: R(T2) / ((T2/T) R(T))}``, with ``summation_pair``
          ``{T: T2}`` (T2 the duration nearest 2T); ``summation_window_ms``: FWHM of the
          response to the shortest pulse;
        * ``isi_recovery``: ``{isi: recovery}`` (1 = full);
        * ``time_to_peak_ms``, ``half_rise_ms``: ``{contrast: ms}`` inside the stimulus window;
          ``peak_response``: ``{contrast: peak}``;
        * ``c50``: Groen's half-peak contrast; ``c50_naka_rushton``, ``c50_naka_rushton_r2``:
          the hyperbolic-ratio fit to the peaks (an extra; flagged when it extrapolates);
        * ``asymptote_to_peak``: smoothed value at 0.5 s / smoothed peak (Groen's measure);
          ``asymptote_to_peak_no_transient``: the same measure of a sustained box response with
          the population's half-rise latency (Groen's smoothing window reaches past the
          offset, so no transient reads about 0.5-0.85, not 1; flagged when the value is within
          5 % of this reference);
        * ``dn``: the joint DN fit's parameters (ms), ``r2``, ``on_bounds`` ``{name: bound}``
          and ``good`` (False when a parameter is on a bound: read no ``r2`` then);
        * ``flags``: ``{key: reason}`` for values that are undefined (``None``) or not to be
          read as results; a key is a metric name, with ``[condition]`` for one condition;
        * ``not_computed``: ``{metric: what is missing}``.
        """
        out = {}
        for pop in self.populations:
            d: dict = {}
            if pop in self.baseline_to_peak:
                d["baseline_to_peak"] = _num(self.baseline_to_peak[pop])
                d["baseline_drift_to_peak"] = _num(self.drift_to_peak[pop])
            if "duration" in self.summed:
                d["summed_response"] = _along(self.summed["duration"][pop], "duration")
            if self.ratios is not None:
                r = self.ratios[pop]
                d["summation_ratio"] = _along(r, "duration")
                d["summation_pair"] = {float(T): float(T2) for T, T2 in zip(r["duration"].values, r.attrs["T2"])}
            if pop in self.windows:
                d["summation_window_ms"] = _num(self.windows[pop])
            if self.recovery is not None:
                d["isi_recovery"] = _along(self.recovery[pop], "isi")
            for key, name in (("time_to_peak_ms", "time_to_peak"), ("half_rise_ms", "half_rise")):
                if name in self.latency:
                    d[key] = _along(self.latency[name][pop], "contrast")
            if self.peaks is not None:
                d["peak_response"] = _along(self.peaks[pop], "contrast")
            if pop in self.c50:
                d["c50"] = _num(self.c50[pop])
            if pop in self.contrast_fits:
                fit = self.contrast_fits[pop]
                d["c50_naka_rushton"] = None if fit is None else _num(fit.c50)
                d["c50_naka_rushton_r2"] = None if fit is None else _num(fit.r2)
            if pop in self.asymptote:
                d["asymptote_to_peak"] = _num(self.asymptote[pop])
            if pop in self.sustained_reference:
                d["asymptote_to_peak_no_transient"] = _num(self.sustained_reference[pop])
            if pop in self.dn_fits:
                f = self.dn_fits[pop]
                d["dn"] = {**f.params, "r2": _num(f.r2), "on_bounds": dict(f.on_bounds), "good": f.good}
            d["flags"] = dict(self.flags.get(pop, {}))
            d["not_computed"] = dict(self.not_computed)
            out[pop] = d
        return out

    def figures(self, outdir) -> dict[str, Path]:
        """Write every figure the results allow into ``outdir``; ``{name: path}``."""

        outdir = Path(outdir)
        paths = {}
        for kind, ds in self.courses.items():
            paths[f"time_courses_{kind}"] = F.plot_time_courses(
                ds, outdir / f"time_courses_{kind}.png", dim=_BY[kind], title=f"{kind} experiment")
        if "duration" in self.summed:
            paths["summation"] = F.plot_summation(self.summed["duration"], outdir / "summation.png")
        if self.recovery is not None:
            paths["recovery"] = F.plot_recovery(self.recovery, outdir / "recovery.png")
        if self.peaks is not None:
            paths["contrast_response"] = F.plot_contrast_response(
                self.peaks, outdir / "contrast_response.png", fits=self.contrast_fits, c50=self.c50)
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
    return {k: trees[k] for k in KINDS if k in trees}


def _raw_courses(kind: str, tree: xr.DataTree, populations) -> xr.Dataset:
    """The population courses of one experiment, aligned to the onset, baseline not removed;
    a :class:`MissingConditionsError` naming what the archive lacks."""
    labels = conditions(tree)
    missing = [c for c in NEEDS[kind] if c not in labels]
    onset = tree.attrs.get("onset_ms")
    if "onset" not in labels and onset is None:
        missing.append("onset")
    if missing:
        raise MissingConditionsError(
            f"the {kind} archive lacks the condition(s) {missing} that its analysis needs (it has "
            f"{sorted(labels)}{'' if onset is None else ', onset_ms attribute'}); record it with "
            f"dynode.experiments.groen2022_experiments or a dynode.stimuli.groen2022({kind!r}) protocol",
            missing=missing)
    ds = all_time_courses(tree, _BY[kind], populations=populations, align="onset" in labels)
    return ds if "onset" in labels else xr.Dataset({p: align_to_onset(ds[p], float(onset)) for p in ds.data_vars})


def _baseline(res: Analysis, kind: str, raw: xr.Dataset, window, stop: float, drift_tol: float) -> xr.Dataset:
    """Subtract the baseline; record its level and drift relative to the peak per population."""
    lo, hi = window
    out = {}
    for pop in raw.data_vars:
        da = raw[pop]
        t = da["time"].values
        mask = (t >= lo - TIME_RTOL) & (t < hi - TIME_RTOL)
        # a sampled recording (512 Hz) may start within one step after the window's start
        if t[0] >= lo + M.time_step(da) - TIME_RTOL or mask.sum() < 2:
            raise ConfigurationError(f"the baseline window [{lo:g}, {hi:g}) ms is not inside the {kind} archive's "
                                     f"epoch ({t[0]:g} to {t[-1]:g} ms from onset); pass a baseline= window inside "
                                     "it or record a longer pre-stimulus period (a later onset)")
        base = da.isel(time=np.flatnonzero(mask))
        level = base.mean("time")
        y = base.transpose(..., "time").values.astype(np.float64)
        tb = t[mask] - t[mask].mean()
        slope = (y - y.mean(-1, keepdims=True)) @ tb / (tb @ tb)  # least squares, per condition
        change = float(np.abs(slope).max() * (hi - lo))
        corrected = da - level
        corrected.attrs = dict(da.attrs, baseline_ms=[lo, hi])
        corrected.name = pop
        after = corrected.sel(time=slice(0.0, stop))
        peak = float(after.max())
        b = float(level.mean())  # the conditions share the pre-onset input
        ratio_b = abs(b) / abs(b + peak) if b + peak != 0 else math.inf
        drift = change / peak if peak > 0 else math.inf
        res.baseline_to_peak[pop] = max(res.baseline_to_peak.get(pop, 0.0), ratio_b)
        res.drift_to_peak[pop] = max(res.drift_to_peak.get(pop, 0.0), drift)
        if drift > drift_tol:
            res.flag(pop, "baseline_drift_to_peak",
                     f"the {kind} baseline changes by {change:.3g} ({drift:.1%} of the peak) over [{lo:g}, "
                     f"{hi:g}) ms, more than {drift_tol:.0%}: the network has not settled, so the responses "
                     "carry the drift; start the stimulus later (a longer settling period)", BaselineDriftWarning)
        dim = _BY[kind]
        sums = M.summed_response(after, 0.0, stop)
        bad = [float(v) for v, s, m in zip(after[dim].values, np.atleast_1d(sums.values),
                                           np.atleast_1d(after.max("time").values)) if not (s > 0 and m > 0)]
        if bad:
            res.flag(pop, f"response[{kind}]",
                     f"the response is below the baseline (summed response or peak <= 0) at {dim} {bad}: "
                     "metrics of these conditions are not responses to the stimulus")
        out[pop] = corrected
    return xr.Dataset(out)


def _undefined(res: Analysis, pop: str, key: str, da: xr.DataArray) -> None:
    """Flag a metric's per-condition undefined reasons (the metric's own warnings are
    silenced by the caller: one warning per flag)."""
    for where, why in (da.attrs.get("undefined") or {}).items():
        res.flag(pop, f"{key}[{where.split('=', 1)[-1]}]", why, UndefinedMetricWarning)


def analyze(*archives, contrast=None, duration=None, repetition=None, populations=None,
            baseline: tuple[float, float] = BASELINE, sum_window: tuple[float, float] = M.SUM_WINDOW,
            window: float = M.ISI_WINDOW, smooth_ms: float = M.SMOOTH_MS, drift_tol: float = DRIFT_TOL,
            dn: bool = False, dn_options: Mapping | None = None) -> Analysis:
    """Analyse the Groen experiments' archives (DataTrees, SimulationResults or paths).

    Positional ``archives`` are sorted by :func:`experiment_kind`; or name them by keyword.
    Any subset works; a metric whose experiment is missing is left out and named in
    ``not_computed`` (ISI recovery needs the duration archive too, for the single pulse of the
    repetition's pulse length). An archive that lacks a condition its analysis reads is a
    :class:`~dynode.errors.MissingConditionsError` naming it.

    The archives become courses per condition (:func:`_raw_courses`), which
    :func:`analyze_courses` analyses: the one code path of the metrics, which recordings take
    too (:func:`dynode.recordings.analyze_recordings`). Its docstring lists the options.
    """
    if dn_options is not None and not dn:
        raise ConfigurationError("dn_options is only used with dn=True")
    trees = _classify(archives, {"contrast": contrast, "duration": duration, "repetition": repetition})
    raw = {k: _raw_courses(k, t, populations) for k, t in trees.items()}
    fixed = {k: {c: v for c, v in conditions(t).items() if c in NEEDS[k] and c != _BY[k]} for k, t in trees.items()}
    return analyze_courses(raw, fixed, baseline=baseline, sum_window=sum_window, window=window,
                           smooth_ms=smooth_ms, drift_tol=drift_tol, dn=dn, dn_options=dn_options)


def analyze_courses(courses: Mapping[str, xr.Dataset], fixed: Mapping[str, Mapping], *,
                    baseline: tuple[float, float] = BASELINE, sum_window: tuple[float, float] = M.SUM_WINDOW,
                    window: float = M.ISI_WINDOW, smooth_ms: float = M.SMOOTH_MS, drift_tol: float = DRIFT_TOL,
                    dn: bool = False, dn_options: Mapping | None = None) -> Analysis:
    """The Groen metrics of courses per condition, from archives (:func:`analyze`) or
    recordings (:func:`dynode.recordings.analyze_recordings`) alike.

    ``courses``: ``{kind: Dataset}`` for kinds of :data:`~dynode.stimuli.EXPERIMENTS`, one
    variable per population or area with dims ``(by, time)`` (``by`` the experiment's
    condition: ``contrast``, ``duration`` or ``isi``), time in ms from the stimulus onset,
    baseline not yet removed. ``fixed``: ``{kind: {condition: value(s)}}``, the conditions
    that are one value per experiment (the contrast experiment's pulse ``duration``, the
    repetition's pulse ``duration``, ...), checked to be one value where a metric reads them.

    ``baseline``: the window (ms from onset) whose mean is subtracted and whose drift is
    checked against ``drift_tol`` x the peak. ``sum_window``: summed responses (Groen: 0-1 s).
    ``window``: the ISI recovery window (ms). ``smooth_ms``: the moving average before the
    asymptote/peak ratio. ``dn``: also fit the delayed normalisation model to each
    population, jointly to every condition of every experiment (shared parameters, as
    Groen fit each electrode), from the onset on (a few seconds per population;
    ``dn_options`` are keyword arguments of :func:`~dynode.analysis.fit_dn`).
    """
    if dn_options is not None and not dn:
        raise ConfigurationError("dn_options is only used with dn=True")
    other = {k: EXPERIMENTS[k].analysis for k in courses if k in KINDS and k not in GROEN_ANALYSIS}
    if other:
        raise ConfigurationError(f"courses: {', '.join(other)} is not analysed by the Groen metrics (its analysis: "
                                 f"{', '.join(sorted(set(other.values())))}, e.g. "
                                 "dynode.analysis.analyze_reaction_times); give courses of " f"{list(GROEN_ANALYSIS)}")
    unknown = [k for k in courses if k not in KINDS]
    if unknown or not courses:
        raise ConfigurationError(f"courses: give a Dataset for some of the experiments {list(GROEN_ANALYSIS)}, got "
                                 f"{list(courses)}")
    raw = {k: courses[k] for k in KINDS if k in courses}
    fixed = {k: dict(fixed.get(k, {})) for k in raw}
    for k, ds in raw.items():
        if _BY[k] not in ds.dims:
            raise MissingConditionsError(f"the {k} courses have no {_BY[k]!r} dimension (dims {list(ds.dims)})",
                                         missing=[_BY[k]])
    pops = list(next(iter(raw.values())).data_vars)
    for k, ds in raw.items():
        missing = [p for p in pops if p not in ds]
        if missing:
            raise ConfigurationError(f"the {k} archive lacks populations {missing}; pass populations=")
    res = Analysis(courses={}, summed={}, populations=pops)
    start, stop = sum_window
    for k, ds in raw.items():
        res.courses[k] = _baseline(res, k, ds, baseline, stop, drift_tol)
        end = float(ds["time"].values[-1]) + M.time_step(ds[pops[0]])
        if end < stop - TIME_RTOL:
            for p in pops:
                res.flag(p, f"summed_response[{k}]", f"the {k} epoch ends {end:g} ms after onset, before the end "
                         f"of the {start:g}-{stop:g} ms summation window: sums are cut short")
        res.summed[k] = xr.Dataset({p: M.summed_response(res.courses[k][p], start, stop) for p in pops})
    courses = res.courses
    if "duration" in courses:
        _durations(res, courses["duration"], start, stop)
    else:
        res.not_computed["summation_ratio"] = "the duration experiment"
    if "repetition" in courses and "duration" in courses:
        _recovery(res, fixed, courses, window)
    else:
        res.not_computed["isi_recovery"] = "the repetition and the duration experiments"
    if "contrast" in courses:
        _contrast(res, courses["contrast"], _single(_fixed(fixed, "contrast", "duration"), "contrast pulse "
                                                                                            "duration"))
    else:
        res.not_computed["time_to_peak, c50"] = "the contrast experiment"
    _asymptote(res, fixed, courses, smooth_ms)
    if dn:
        _dn(res, fixed, courses, dict(dn_options or {}))
    return res


def _fixed(fixed: Mapping[str, Mapping], kind: str, name: str):
    """The value(s) of the condition ``name`` of experiment ``kind``; an error naming it when absent."""
    if name not in fixed.get(kind, {}):
        raise MissingConditionsError(f"the {kind} experiment does not say its {name}; record it as a condition",
                                     missing=[name])
    return fixed[kind][name]


def _durations(res: Analysis, dur: xr.Dataset, start: float, stop: float) -> None:
    ratios = {}
    for p in res.populations:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 of a silent pulse: flagged below
            r = M.summation_ratios(dur[p], start=start, stop=stop)
        R = res.summed["duration"][p]
        for T, v in zip(r["duration"].values, r.values):
            lo, hi = PLAUSIBLE["summation_ratio"]
            if not (R.sel(duration=T) > 0):
                res.flag(p, f"summation_ratio[{T:g}]", f"no response above baseline to the {T:g} ms pulse "
                         "(summed response <= 0): the ratio is not a summation ratio")
            elif not (lo < v <= hi):
                res.flag(p, f"summation_ratio[{T:g}]", f"implausible summation ratio {v:.3g} for {T:g} ms (outside "
                         f"({lo:g}, {hi:g}]): the response to the doubled pulse is "
                         f"{'below baseline' if v <= lo else 'far above twice the single one'}")
        ratios[p] = r
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AnalysisWarning)  # flagged below, with the population
            res.windows[p] = float(M.summation_window(dur[p]))
        if not math.isfinite(res.windows[p]):
            res.flag(p, "summation_window_ms", "the response to the shortest pulse does not fall below half its "
                     "peak on both sides", UndefinedMetricWarning)
    res.ratios = xr.Dataset(ratios)


def _recovery(res: Analysis, fixed, courses, window: float) -> None:
    d_pulse = _single(_fixed(fixed, "repetition", "duration"), "pulse duration")
    dur = courses["duration"]
    if not np.isclose(dur["duration"].values, d_pulse).any():
        raise MissingConditionsError(f"ISI recovery needs a single {d_pulse:g} ms pulse in the duration archive, "
                                     f"which has durations {dur['duration'].values.tolist()}; run the duration "
                                     "experiment with the repetition's pulse length", missing=[f"duration={d_pulse:g}"])
    single = dur.sel(duration=d_pulse, method="nearest")
    out = {}
    for p in res.populations:
        if not float(M.summed_response(single[p], 0.0, window)) > 0:  # the denominator of every recovery
            isis = courses["repetition"]["isi"].values
            out[p] = xr.DataArray(np.full(len(isis), np.nan), dims=("isi",), coords={"isi": isis},
                                  name="isi_recovery")
            res.flag(p, "isi_recovery", f"no response above baseline to the single {d_pulse:g} ms pulse (summed "
                     f"response over {window:g} ms <= 0): recovery relative to it is undefined",
                     UndefinedMetricWarning)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AnalysisWarning)  # re-flagged per population below
            r = M.isi_recovery(courses["repetition"][p], single[p], duration=d_pulse, window=window)
        for isi, w in r.attrs["second_window_ms"].items():
            if w < window - TIME_RTOL:
                res.flag(p, f"isi_recovery[{isi:g}]", f"the second {window:g} ms window is cut to {w:g} ms by the "
                         "end of the epoch (Groen's convention), so the recovery is underestimated")
        lo, hi = PLAUSIBLE["isi_recovery"]
        for isi, v in zip(r["isi"].values, r.values):
            if np.isfinite(v) and not (lo <= v <= hi):
                res.flag(p, f"isi_recovery[{isi:g}]", f"implausible recovery {v:.3g} at ISI {isi:g} ms (outside "
                         f"[{lo:g}, {hi:g}]): the second pulse's response is not a recovered copy of the first "
                         "(a single pulse that barely responds, or a response that builds up or goes below baseline)")
        out[p] = r
    res.recovery = xr.Dataset(out)


def _contrast(res: Analysis, con: xr.Dataset, on: float) -> None:
    ttp, hr, peaks = {}, {}, {}
    for p in res.populations:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AnalysisWarning)  # flagged below, one warning per flag
            ttp[p] = M.time_to_peak(con[p], 0.0, on)
            hr[p] = M.half_rise_latency(con[p], 0.0, on)
            peaks[p] = M.peak_response(con[p], 0.0, on)
            c = M.c50(peaks[p].expand_dims(population=[p]))  # a DataArray keeps the reason in its attrs
        _undefined(res, p, "time_to_peak_ms", ttp[p])
        _undefined(res, p, "half_rise_ms", hr[p])
        res.c50[p] = float(c[0])
        for why in c.attrs["undefined"].values():
            res.flag(p, "c50", why, UndefinedMetricWarning)
        cs, ys = peaks[p]["contrast"].values, peaks[p].values
        if (cs > 0).sum() >= 3 and np.all(np.isfinite(ys)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AnalysisWarning)  # re-flagged with the population below
                fit = M.fit_hyperbolic_ratio(cs, ys)
            res.contrast_fits[p] = fit
            if fit.extrapolates:
                res.flag(p, "c50_naka_rushton", f"the Naka-Rushton fit's c50 = {fit.c50:.3g} lies outside the tested "
                         f"contrasts [{cs[cs > 0].min():g}, {cs.max():g}] (an extrapolation, not a result)")
    res.latency = {"time_to_peak": xr.Dataset(ttp), "half_rise": xr.Dataset(hr)}
    res.peaks = xr.Dataset(peaks)


def _asymptote(res: Analysis, fixed, courses, smooth_ms: float, at: float = 500.0) -> None:
    """Asymptote/peak of the full-contrast 500 ms stimulus (contrast experiment), else of the
    longest pulse of the duration experiment if it lasts at least ``at`` ms."""
    if "contrast" in courses and _single(_fixed(fixed, "contrast", "duration"), "duration") >= at:
        ds = courses["contrast"]
        long = ds.sel(contrast=ds["contrast"].values.max())
    elif "duration" in courses and courses["duration"]["duration"].values.max() >= at:
        ds = courses["duration"]
        long = ds.sel(duration=ds["duration"].values.max())
    else:
        res.not_computed["asymptote_to_peak"] = f"a stimulus of at least {at:g} ms (contrast experiment)"
        return
    for p in res.populations:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AnalysisWarning)  # flagged below, with the population
            v = M.asymptote_to_peak(long[p], at, width=smooth_ms)
        res.asymptote[p] = v
        if not math.isfinite(v):
            res.flag(p, "asymptote_to_peak", "no response above the baseline", UndefinedMetricWarning)
            continue
        # Groen's smoothing window around 0.5 s reaches past the stimulus offset, so even a
        # response without any transient reads below 1: the same measure of a sustained box
        # response with this population's half-rise latency is the no-transient reference
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AnalysisWarning)
            lat = M.half_rise_latency(long[p], 0.0, at)
        if math.isfinite(lat):
            t = long[p]["time"].values
            box = long[p].copy(data=((t >= lat) & (t < at + lat)).astype(np.float64))
            ref = M.asymptote_to_peak(box, at, width=smooth_ms)
            res.sustained_reference[p] = ref
            if v >= 0.95 * ref:
                res.flag(p, "asymptote_to_peak", f"no transient: {v:.2f} is what a sustained response without "
                         f"any transient gives at this latency ({lat:.0f} ms) under Groen's {smooth_ms:g} ms "
                         f"smoothing ({ref:.2f})")


def _dn(res: Analysis, fixed, courses, options: dict) -> None:
    """One DN fit per population to the rows of every experiment together (t >= 0): the
    stimulus of each row is its condition's contrast envelope (:func:`pulse_envelope`)."""
    stims, rows = [], {p: [] for p in res.populations}
    grids = [ds.sel(time=slice(0.0, None))["time"].values for ds in courses.values()]
    n = min(len(g) for g in grids)
    t = grids[0][:n]
    if not all(np.allclose(g[:n], t) for g in grids):
        raise ConfigurationError("the joint DN fit needs every archive on the same time grid (same dt); run the "
                                 "experiments with one dt")
    for kind, ds in courses.items():
        dim = _BY[kind]
        const = {k: _single(_fixed(fixed, kind, k), k) for k in ("contrast", "duration") if k != dim}
        part = ds.sel(time=slice(0.0, None)).isel(time=slice(0, n))
        for v in part[dim].values:
            cond = {**const, dim: float(v)}
            stims.append(pulse_envelope(t, contrast=cond["contrast"], duration=cond["duration"], isi=cond.get("isi")))
            for p in res.populations:
                rows[p].append(part[p].sel({dim: v}).values)
    s = np.stack(stims)
    for p in res.populations:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AnalysisWarning)  # flagged below, with the population
            fit = fit_dn(s, np.stack(rows[p]), t, **options)
        res.dn_fits[p] = fit
        if fit.on_bounds:
            res.flag(p, "dn", f"parameters on their bounds {fit.on_bounds}: the R^2 {fit.r2:.3f} does not make "
                     "this a description of the data")


def summarize(*archives, contrast=None, duration=None, repetition=None, **kwargs) -> dict[str, dict]:
    """:func:`analyze` the archives and return :meth:`Analysis.summary` (its docstring lists
    the keys)."""
    return analyze(*archives, contrast=contrast, duration=duration, repetition=repetition,
                   **kwargs).summary()


# -- the printed table ----------------------------------------------------------------------------
@contextlib.contextmanager
def flags_in_tables() -> Iterator[None]:
    """Inside the block, the warnings of :meth:`Analysis.flag` (those carrying ``flag``) are not
    printed: for code that prints the tables, which show every flag (:func:`format_summary`: a
    footnote on the flagged value, or the line naming flags on values outside the table), so
    that the command line says each once. Every other warning is printed as usual, when it
    happens."""
    with warnings.catch_warnings():
        show = warnings.showwarning

        def _show(message, category, filename, lineno, file=None, line=None):
            if getattr(message, "flag", None) is None:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = _show
        yield


def _in_table(key: str, isis: Sequence[float], latency_contrasts: Sequence[float], with_dn: bool) -> bool:
    """Whether :func:`format_summary` shows the flag ``key`` (on a value, or as a note)."""
    if key.startswith(("summation_ratio[", "response[", "summed_response[", "summation_window")):
        return True
    conds = {"isi_recovery": isis, "time_to_peak_ms": latency_contrasts, "half_rise_ms": latency_contrasts}
    if any(key == f"{k}[{c:g}]" for k, cs in conds.items() for c in cs):
        return True
    return key in ("asymptote_to_peak", "c50", "baseline_to_peak", "baseline_drift_to_peak") or (key == "dn"
                                                                                                  and with_dn)


def _cell(d: dict, key: str, cond=None, fmt: str = ".2f", notes: dict | None = None) -> str:
    """A value as text: ``-`` when absent, ``n/a`` when undefined, ``*k`` after a flagged one
    (``k`` numbers the footnote in ``notes``)."""
    v = d.get(key)
    if cond is not None:
        v = None if v is None else v.get(cond, v.get(str(cond)))
    fkey = key if cond is None else f"{key}[{cond:g}]"
    why = d.get("flags", {}).get(fkey)
    if v is None and why is None and key not in d:
        return "-"
    text = "n/a" if v is None else format(v, fmt)
    if why is not None and notes is not None:
        text += f"*{notes.setdefault(why, len(notes) + 1)}"
    return text


def format_summary(summary: Mapping[str, Mapping], *, short: float = 33.0,
                   latency_contrasts: Sequence[float] = (1.0, 0.25)) -> str:
    """A plain-text table of :meth:`Analysis.summary`, one row per area in the summary's order
    (the archive's population order: the hierarchy). Columns: the summation ratio's range over
    duration pairs with T >= ``short`` ms (min..max) and each pair below the table, the
    sustained/peak ratio, the summation window (FWHM of the response to the shortest pulse, ms), ISI recovery at each ISI, time to peak and half-rise latency at
    ``latency_contrasts``, Groen's c50, baseline/peak, and the joint DN fit's R^2 when there is
    one (flagged when parameters are on their bounds). A value with a flag is followed by
    ``*k`` and footnote ``k`` says why (an area whose baseline drifts is marked on its name);
    ``n/a`` is a metric that is undefined (its reason in a footnote), ``-`` one that was not
    computed. Flags on values outside the table that change its reading (a response below
    baseline, sums cut by a short epoch) follow as notes; the other flags on values outside
    the table (the Naka-Rushton extra's c50, latencies at other contrasts) are named in one
    last line, their reasons in the summary's ``flags``."""
    notes: dict[str, int] = {}
    rows = []
    head = ["area", "sum. ratio", "sust/peak", "win"]
    isis = sorted({float(k) for d in summary.values() for k in (d.get("isi_recovery") or {})})
    head += [f"ISI {i:g}" for i in isis]
    head += [f"ttp c={c:g}" for c in latency_contrasts]
    head += [f"t50 c={c:g}" for c in latency_contrasts]
    head += ["c50", "base/peak"]
    with_dn = any("dn" in d for d in summary.values())
    if with_dn:
        head.append("DN R2")
    for pop, d in summary.items():
        ratios = {float(k): v for k, v in (d.get("summation_ratio") or {}).items()}
        keep = [v for T, v in ratios.items() if T >= short and v is not None]
        flagged = any(f"summation_ratio[{T:g}]" in d.get("flags", {}) for T in ratios if T >= short)
        if keep:
            rng = f"{min(keep):.2f}..{max(keep):.2f}"
            if flagged:
                why = "; ".join(w for k, w in d["flags"].items() if k.startswith("summation_ratio["))
                rng += f"*{notes.setdefault(why, len(notes) + 1)}"
        else:
            rng = "-"
        drift = d.get("flags", {}).get("baseline_drift_to_peak")
        name = pop if drift is None else f"{pop}*{notes.setdefault(drift, len(notes) + 1)}"
        row = [name, rng, _cell(d, "asymptote_to_peak", notes=notes),
               _cell(d, "summation_window_ms", fmt=".0f", notes=notes)]
        row += [_cell(d, "isi_recovery", i, notes=notes) for i in isis]
        row += [_cell(d, "time_to_peak_ms", c, ".0f", notes) for c in latency_contrasts]
        row += [_cell(d, "half_rise_ms", c, ".0f", notes) for c in latency_contrasts]
        row += [_cell(d, "c50", fmt=".3g", notes=notes), _cell(d, "baseline_to_peak", fmt=".1%", notes=notes)]
        if with_dn:
            dn = d.get("dn")
            r2 = "-" if dn is None else "n/a" if dn["r2"] is None else f"{dn['r2']:.3f}"
            why = d.get("flags", {}).get("dn")
            row.append(r2 if why is None else f"{r2}*{notes.setdefault(why, len(notes) + 1)}")
        rows.append(row)
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]

    def line(r: list[str]) -> str:  # the area left-aligned, numbers right-aligned
        return "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths)))

    out = [line(head)] + [line(r) for r in rows]
    pairs = {}
    for pop, d in summary.items():
        pr = d.get("summation_pair") or {}
        for T, v in (d.get("summation_ratio") or {}).items():
            T2 = pr.get(T, pr.get(str(T)))
            pairs.setdefault(f"{float(T):g}->{float(T2):g}", []).append(_cell(d, "summation_ratio", float(T),
                                                                               notes=notes))
    if pairs:
        w = [max(7, len(pop)) for pop in summary]
        out.append("summation ratio R(2T) / 2R(T) per duration pair:")
        out.append(f"  {'T->2T ms':>10}  " + "  ".join(pop.rjust(n) for pop, n in zip(summary, w)))
        out += [f"  {k:>10}  " + "  ".join(c.rjust(n) for c, n in zip(v, w)) for k, v in pairs.items()]
    out.append("ttp: time to peak, t50: half-rise latency (ms from onset) at contrast c; sust/peak at 0.5 s; "
               "win: summation window (ms, width at half maximum of the response to the shortest pulse); "
               "c50: contrast at half the full-contrast peak; base/peak: baseline over the raw peak")
    for why, n in notes.items():
        out.append(f"*{n} {why}")
    for pop, d in summary.items():  # flags on values outside the table that still change its reading
        for key, why in d.get("flags", {}).items():
            if key.startswith(("response[", "summed_response[", "summation_window")) and why not in notes:
                out.append(f"note ({pop} {key}): {why}")
    others: dict[str, list[str]] = {}
    for pop, d in summary.items():
        for key in d.get("flags", {}):
            if not _in_table(key, isis, latency_contrasts, with_dn):
                others.setdefault(key, []).append(pop)
    if others:
        out.append("also flagged, values not in this table (reasons in the summary's flags): "
                   + ", ".join(f"{k} ({', '.join(pops)})" for k, pops in others.items()))
    return "\n".join(out)
