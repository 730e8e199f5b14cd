"""The Groen analysis end to end on synthetic archives with known answers: analytic responses
(gamma functions, DN-model responses) written as archives, read back by `analyze`."""

import json
import math

import numpy as np
import pytest
import xarray as xr
from scipy.special import lambertw

from dynode import analysis as A
from dynode.errors import (AnalysisWarning, BaselineDriftWarning, ConfigurationError, MissingConditionsError,
                           UndefinedMetricWarning)

CONTRASTS = (0.0625, 0.125, 0.25, 0.5, 1.0)
DURATIONS = (17.0, 33.0, 67.0, 133.0, 267.0, 533.0)
ISIS = (17.0, 33.0, 67.0, 133.0, 267.0, 533.0)
HIERARCHY = ("V1", "V2", "V4", "IT")  # not alphabetical: the archive's order must be kept


def labels(kind):
    """Per-sample conditions of one Groen experiment (one image per condition)."""
    if kind == "contrast":
        return {"contrast": np.array(CONTRASTS), "duration": np.full(5, 500.0)}
    if kind == "duration":
        return {"contrast": np.ones(6), "duration": np.array(DURATIONS)}
    return {"contrast": np.ones(6), "duration": np.full(6, 133.0), "isi": np.array(ISIS),
            "n_pulses": np.full(6, 2)}


def archive(kind, response, *, pops=HIERARCHY, onset=150.0, dt=1.0, after=1200.0, onset_label=True):
    """An archive as dynode writes it (population means, ``reduce="mean"``): ``response(pop,
    t, cond)`` gives a population's course on ``t`` (ms from onset) for the condition ``cond``."""
    lab = labels(kind)
    n = len(next(iter(lab.values())))
    t = np.arange(0.0, onset + after, dt)
    coords = {"time": ("time", t, {"units": "ms"}), "sample": np.arange(n)}
    coords.update({k: ("sample", v) for k, v in lab.items()})
    if onset_label:
        coords["onset"] = ("sample", np.full(n, onset))
    tree = xr.DataTree(xr.Dataset(coords=coords))
    sample = {k: v for k, v in coords.items() if k not in ("time", "sample")}  # as dynode writes them
    for p in pops:
        rate = np.stack([response(p, t - onset, {k: v[i] for k, v in lab.items()}) for i in range(n)], axis=1)
        tree[p] = xr.DataTree(xr.Dataset({"rate": (("time", "sample"), rate,
                                                    {"units": "spikes/s", "reduction": "mean"})}, coords=sample))
    tree.attrs = {"populations": list(pops), "onset_ms": onset, "dt": dt}
    return tree


def flags_warned():
    """The analysis warns each flag it records (an AnalysisWarning; a drifting baseline a
    BaselineDriftWarning): caught here and read from the record (``pytest.warns`` would re-emit
    every warning it does not match)."""
    return pytest.warns((AnalysisWarning, BaselineDriftWarning))


def warned(rec) -> set:
    """The flags ``(population, key)`` that a record of :func:`flags_warned` holds."""
    return {w.message.flag for w in rec}


def envelope(t, cond):
    return A.pulse_envelope(t, contrast=cond["contrast"], duration=cond["duration"], isi=cond.get("isi"))


# -- the joint DN fit -----------------------------------------------------------------------
TRUE = {"V1": dict(tau1=4.0, weight=0.5, tau2=60.0, n=1.6, sigma=0.2, shift=30.0, scale=3.0),
        "IT": dict(tau1=12.0, weight=0.2, tau2=120.0, n=2.2, sigma=0.1, shift=70.0, scale=1.5)}


def dn_response(pop, t, cond):
    return A.dn_model(envelope(t, cond), t, TRUE[pop]).numpy()


@pytest.fixture(scope="module")
def dn_archives():
    return {k: archive(k, dn_response, pops=("V1", "IT")) for k in ("contrast", "duration", "repetition")}


def test_joint_dn_fit_recovers_known_parameters_from_all_three_experiments(dn_archives):
    """DN-model responses to the 17 conditions of the three experiments: one fit per area with
    shared parameters recovers them (within 10 %), and none is on a bound."""
    with flags_warned() as rec:
        res = A.analyze(*dn_archives.values(), dn=True)
    # the contrast series saturates little: only the Naka-Rushton extra's c50 extrapolates
    assert {key for _, key in warned(rec)} == {"c50_naka_rushton"}
    for pop, true in TRUE.items():
        fit = res.dn_fits[pop]
        assert fit.prediction.shape == (17, 1200)  # 5 contrasts + 6 durations + 6 isis, t = 0 .. 1199 ms
        assert fit.r2 > 0.999 and fit.good and fit.on_bounds == {}
        for k, v in true.items():
            assert fit.params[k] == pytest.approx(v, rel=0.1), (pop, k)
    s = res.summary()
    d = s["IT"]["dn"]
    assert d["good"] is True and d["on_bounds"] == {} and "dn" not in s["IT"]["flags"]
    header, v1 = A.format_summary(s).splitlines()[:2]
    assert header.split()[-2:] == ["DN", "R2"] and v1.split()[-1] == f"{res.dn_fits['V1'].r2:.3f}"


def test_dn_responses_show_the_groen_phenomena(dn_archives):
    """The DN model's hallmarks through the Groen metrics: sub-additive summation, adaptation
    recovering with the ISI, a transient, latency shorter at high contrast, c50 inside the
    tested range."""
    with pytest.warns(AnalysisWarning):  # the Naka-Rushton extra may extrapolate; not asserted here
        s = A.summarize(*dn_archives.values())
    for pop in TRUE:
        d = s[pop]
        assert all(r < 0.9 for T, r in d["summation_ratio"].items() if T >= 33.0)
        rec = list(d["isi_recovery"].values())
        assert rec[0] < 0.9 and rec == sorted(rec)
        assert d["asymptote_to_peak"] < 0.8
        assert d["time_to_peak_ms"][1.0] < d["time_to_peak_ms"][0.25]
        assert d["half_rise_ms"][1.0] < d["half_rise_ms"][0.25]
        assert 0.0625 < d["c50"] < 1.0
        assert d["baseline_to_peak"] < 1e-12 and d["baseline_drift_to_peak"] < 1e-12
    json.dumps(s, allow_nan=False)


# -- latency, c50 and flags on analytic courses -------------------------------------------------
def gamma(t, tau, shift=0.0):
    x = np.clip(t - shift, 0, None) / tau
    return np.where(t > shift, x * np.exp(1 - x), 0.0)


def latency_response(pop, t, cond):
    """A gamma response whose time constant shortens with contrast (60 ms at 1/16 to 20 ms at 1),
    a peak of sqrt(contrast), a 10 ms longer delay per area; no offset response."""
    c = cond["contrast"]
    tau = 20.0 + 40.0 * (1 - c) / (1 - CONTRASTS[0])
    return math.sqrt(c) * gamma(t, tau, shift=10.0 * HIERARCHY.index(pop)) * (t < 500)


def test_latency_per_contrast_and_c50_from_an_archive():
    tree = archive("contrast", latency_response)
    with flags_warned() as rec:
        res = A.analyze(contrast=tree)
    assert warned(rec) == {(p, "c50_naka_rushton") for p in HIERARCHY}  # the extra extrapolates, nothing else
    s = res.summary()
    assert list(s) == list(HIERARCHY)
    x_half = float(-lambertw(-0.5 / math.e).real)  # gamma: x e^{1-x} = 1/2 on the rise
    for k, pop in enumerate(HIERARCHY):
        for c in CONTRASTS:
            tau = 20.0 + 40.0 * (1 - c) / (1 - CONTRASTS[0])
            assert s[pop]["time_to_peak_ms"][c] == pytest.approx(10.0 * k + tau, abs=0.05)
            assert s[pop]["half_rise_ms"][c] == pytest.approx(10.0 * k + tau * x_half, abs=0.05)
            assert s[pop]["peak_response"][c] == pytest.approx(math.sqrt(c), rel=1e-3)
        # peaks sqrt(c): half of 1 is reached at c = 1/4, a tested contrast
        assert s[pop]["c50"] == pytest.approx(0.25, rel=1e-3)
    text = A.format_summary(s)
    rows = text.splitlines()
    assert [r.split()[0] for r in rows[1:5]] == list(HIERARCHY)
    assert "ttp c=1" in rows[0] and "t50 c=0.25" in rows[0]
    assert A.format_summary(json.loads(json.dumps(s))) == text  # the same table from summary.json


def test_undefined_and_drifting_values_are_flagged_not_printed():
    """A plateau (no peak), a c50 below the tested range, a drifting baseline: None in the
    summary with the reason in its flags, a warning, and a footnote in the table."""
    def response(pop, t, cond):
        drift = 0.002 * np.clip(t + 150.0, 0, None) if pop == "IT" else 0.0  # IT still creeping up
        rise = np.minimum(1 - np.exp(-np.clip(t, 0, None) / 30.0), 1 - math.exp(-8.0)) * (t >= 0) * (t < 500)
        return drift + (0.9 + 0.1 * cond["contrast"]) * rise  # saturated: 0.9 at the lowest contrast

    tree = archive("contrast", response)
    with flags_warned() as rec:
        res = A.analyze(contrast=tree)
    kinds = {type(w.message) for w in rec.list}
    assert BaselineDriftWarning in kinds and UndefinedMetricWarning in kinds
    assert warned(rec) == {(p, k) for p, d in res.flags.items() for k in d}  # each flag warned
    s = res.summary()
    v1, it = s["V1"], s["IT"]
    assert v1["time_to_peak_ms"][1.0] is None and "plateau" in v1["flags"]["time_to_peak_ms[1]"]
    assert v1["half_rise_ms"][1.0] == pytest.approx(-30.0 * math.log(1 - 0.5 * (1 - math.exp(-8.0))), abs=0.05)
    assert v1["c50"] is None and "below the tested range" in v1["flags"]["c50"]
    assert "baseline_drift_to_peak" not in v1["flags"]
    # IT: slope 0.002 / ms over the 100 ms baseline = 0.2, relative to its peak
    assert "changes by 0.2 " in it["flags"]["baseline_drift_to_peak"] and it["baseline_drift_to_peak"] > 0.05
    text = A.format_summary(s)
    body = text.splitlines()
    it_row = next(r for r in body if r.startswith("IT"))
    assert it_row.split()[0].startswith("IT*")  # the whole row is marked
    assert "n/a*" in body[1]  # V1's time to peak: not a number, a footnote
    assert any("plateau" in line for line in body if line.startswith("*"))
    assert any("below the tested range" in line for line in body if line.startswith("*"))
    json.dumps(s, allow_nan=False)


def test_response_below_baseline_is_flagged():
    def response(pop, t, cond):
        sign = -1.0 if cond["contrast"] < 0.2 else 1.0  # low contrasts suppress the population
        return sign * cond["contrast"] * gamma(t, 40.0) * (t < 500)

    with flags_warned() as rec:
        s = A.summarize(contrast=archive("contrast", response, pops=("V1",)))
    assert ("V1", "response[contrast]") in warned(rec) and ("V1", "time_to_peak_ms[0.0625]") in warned(rec)
    assert "at contrast [0.0625, 0.125]" in s["V1"]["flags"]["response[contrast]"]
    assert s["V1"]["time_to_peak_ms"][0.0625] is None and s["V1"]["time_to_peak_ms"][1.0] == pytest.approx(40.0,
                                                                                                              abs=0.05)


def test_a_short_epoch_cuts_sums_and_the_last_recovery_window_and_says_so():
    """The old 0.9 s epoch: sums over 0-1 s and the 533 ms ISI's window (to 966 ms) are cut."""
    def response(pop, t, cond):
        return np.convolve(envelope(t, cond), np.exp(-np.arange(0, 200.0) / 20.0) / 20.0)[: len(t)]

    trees = {k: archive(k, response, pops=("V1",), after=900.0) for k in ("duration", "repetition")}
    with flags_warned() as rec:
        s = A.summarize(**trees)["V1"]
    assert any("before the end of the 0-1000 ms summation window" in str(w.message) for w in rec)
    assert "cut to 234 ms" in s["flags"]["isi_recovery[533]"]
    assert s["isi_recovery"][533.0] < 1.0 and s["isi_recovery"][267.0] == pytest.approx(1.0, abs=1e-9)
    assert "summed_response[duration]" in s["flags"]
    assert "*" in A.format_summary({"V1": s}).splitlines()[1]


# -- missing conditions ---------------------------------------------------------------------------
def test_missing_conditions_are_named():
    tree = archive("contrast", latency_response, pops=("V1",))
    no_duration = tree.to_dataset().drop_vars("duration")
    bad = xr.DataTree(no_duration)
    bad["V1"] = tree["V1"].copy()
    bad.attrs = dict(tree.attrs)
    with pytest.raises(MissingConditionsError, match=r"lacks the condition\(s\) \['duration'\]") as exc:
        A.analyze(contrast=bad)
    assert exc.value.missing == ["duration"]
    # no onset condition and no onset_ms attribute: nothing says where the stimulus starts
    no_onset = archive("duration", latency_response, pops=("V1",), onset_label=False)
    no_onset.attrs = {"populations": ["V1"]}
    with pytest.raises(MissingConditionsError, match="onset"):
        A.analyze(duration=no_onset)
    # the onset_ms attribute alone is enough
    with_attr = archive("duration", latency_response, pops=("V1",), onset_label=False)
    assert A.analyze(duration=with_attr).courses["duration"]["V1"]["time"].values[0] == -150.0
    # an archive of none of the experiments
    plain = xr.DataTree(xr.Dataset(coords={"time": np.arange(3.0), "sample": [0], "image": ("sample", [0])}))
    with pytest.raises(MissingConditionsError, match="cannot tell the Groen experiment"):
        A.analyze(plain)
    # ISI recovery needs the single pulse of the repetition's length
    dur = archive("duration", latency_response, pops=("V1",))
    short = dur.isel(sample=[0, 1, 2])  # 17, 33, 67 ms only
    with pytest.raises(MissingConditionsError, match="single 133 ms pulse"):
        A.analyze(duration=short, repetition=archive("repetition", latency_response, pops=("V1",)))
    with pytest.raises(ConfigurationError, match="baseline window"):
        A.analyze(duration=dur, baseline=(-500.0, -400.0))


def test_sustained_response_without_transient_is_flagged_by_the_asymptote_reference():
    """Groen's asymptote/peak smooths over 291 ms around 0.5 s, past the offset: a box response
    (no transient) at latency L reads (145 + L) / 291, not 1; the summary gives that reference
    and flags a value that does not fall below it, while a real transient passes."""
    def box(pop, t, cond):
        return cond["contrast"] * ((t >= 40.0) & (t < 540.0)).astype(float)

    with flags_warned() as rec:
        d = A.summarize(contrast=archive("contrast", box, pops=("V1",)))["V1"]
    assert any("no transient" in str(w.message) for w in rec)
    want = (540.0 - 355.0) / 291.0  # the smoothing window 355..645 ms holds the box up to 540 ms
    assert d["asymptote_to_peak"] == pytest.approx(want, abs=2e-3)
    assert d["asymptote_to_peak_no_transient"] == pytest.approx(want, abs=5e-3)
    assert "no transient" in d["flags"]["asymptote_to_peak"]

    def transient(pop, t, cond):
        return box(pop, t, cond) * (0.3 + 0.7 * np.exp(-np.clip(t - 40.0, 0, None) / 50.0))

    with flags_warned() as rec:
        d = A.summarize(contrast=archive("contrast", transient, pops=("V1",)))["V1"]
    assert warned(rec) == {("V1", "c50_naka_rushton")}  # a transient: no flag on the asymptote
    assert d["asymptote_to_peak"] < 0.5 * d["asymptote_to_peak_no_transient"]
    assert "asymptote_to_peak" not in d["flags"]
