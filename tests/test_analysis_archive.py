"""Analysis on real archives: dynode.simulate of small networks under groen2022 protocols."""

import json

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import dynode as dn
from dynode import analysis as A
from dynode.errors import AnalysisWarning, ConfigurationError

PNG = b"\x89PNG\r\n\x1a\n"


def two_area_net(linear: bool, seed: int = 0) -> dn.Network:
    """image (1, 8, 8) -> V1 (3, 8, 8) -> V2 (3, 4, 4) with a 10 ms feed-forward delay and
    positive weights (images brighter than the grey background raise the rates); the
    nonlinear version adds rectification and delayed inhibitory feedback V2 -> V1."""
    torch.manual_seed(seed)
    net = dn.Network()
    net.add_input("image", shape=(1, 8, 8))
    phi = "identity" if linear else "relu"
    net.add_population("V1", shape=(3, 8, 8), tau=4.0, phi=phi)
    net.add_population("V2", shape=(3, 4, 4), tau=8.0, phi=phi)
    net.connect("image", "V1", nn.Conv2d(1, 3, 3, padding=1))
    net.connect("V1", "V2", nn.Conv2d(3, 3, 3, stride=2, padding=1), delay=10.0)
    with torch.no_grad():
        for name, w in net.named_parameters():
            if name.endswith("weight"):
                w.abs_()
    if not linear:
        feedback = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(3, 3, 1, bias=False))
        with torch.no_grad():
            feedback[1].weight.copy_(-0.5 * feedback[1].weight.abs())
        net.connect("V2", "V1", feedback, delay=20.0)
    return net


def run_all(net, images, dt=2.0, store=None, record=None):
    """The three experiments. The network starts at rest (r = 0); onset = 300 ms leaves it
    time to settle before the baseline window, whose drift would otherwise add a common term
    to every condition's summed response."""
    out = {}
    for kind in ("contrast", "duration", "repetition"):
        p = dn.stimuli.groen2022(kind, images=images, onset=300.0, background="grey")
        path = None if store is None else store / f"{kind}.zarr"
        out[kind] = dn.simulate(net, p, t_end=p.t_end, dt=dt, record=record or dn.Record(reduce="mean"),
                                store=path, progress=False)
    return out


@pytest.fixture(scope="module")
def images():
    return 0.5 + 0.5 * torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def linear_runs(images):
    # dt = 1 ms divides every Groen duration; on a 2 ms grid a 17 ms pulse lasts 9 steps (18 ms)
    return run_all(two_area_net(linear=True), images, dt=1.0)


def test_time_courses_average_images_align_and_subtract_the_baseline(tmp_path, images):
    net = two_area_net(linear=False)
    p = dn.stimuli.groen2022("contrast", images=images, background="grey")
    run = dn.simulate(net, p, t_end=p.t_end, dt=2.0, store=tmp_path / "c.zarr", progress=False)
    tree = dn.open_archive(tmp_path / "c.zarr")  # unit-level recording: the mean is taken here
    course = A.time_courses(tmp_path / "c.zarr", "V2", baseline=(-50.0, 0.0))
    assert course.dims == ("contrast", "time")
    np.testing.assert_array_equal(course["contrast"].values, [0.0625, 0.125, 0.25, 0.5, 1.0])
    t = course["time"].values
    assert t[0] == -100.0 and t[-1] == 1200.0 and course["time"].attrs["units"] == "ms"  # Groen's epoch
    assert course.attrs["onset_ms"] == 100.0
    # by hand: unit mean, then the mean of the two images per contrast, minus the baseline
    rate = tree["V2"]["rate"].values.astype(np.float64)  # (time, sample, c, y, x)
    per_sample = rate.reshape(rate.shape[0], rate.shape[1], -1).mean(-1)
    contrasts = tree["contrast"].values
    want = np.stack([per_sample[:, contrasts == c].mean(1) for c in course["contrast"].values])
    want -= want[:, (t >= -50) & (t < 0)].mean(1, keepdims=True)
    np.testing.assert_allclose(course.values, want, rtol=1e-5, atol=1e-7)
    # the same from the in-memory result and for every population
    ds = A.all_time_courses(run, baseline=(-50.0, 0.0))
    assert list(ds.data_vars) == ["V1", "V2"]
    np.testing.assert_allclose(ds["V2"].values, course.values, rtol=1e-5, atol=1e-7)
    # by=[] keeps the samples, align=False keeps the archive's clock
    raw = A.time_courses(run, "V1", by=[], align=False)
    assert raw.dims == ("sample", "time") and raw["time"].values[0] == 0.0 and "contrast" in raw.coords
    with pytest.raises(ConfigurationError, match="unknown condition"):
        A.time_courses(run, "V1", by="colour")


@pytest.mark.filterwarnings("ignore::dynode.errors.AnalysisWarning")  # a linear contrast response: no finite NR c50
def test_linear_network_sums_linearly_and_recovers_fully(linear_runs):
    """A linear network is a linear system in the contrast envelope: summation ratios and ISI
    recovery are 1 through the whole archive path (Groen's 1.2 s epoch: no window is cut)."""
    res = A.analyze(*linear_runs.values())
    summary = res.summary()
    assert list(summary) == ["V1", "V2"]
    for pop, d in summary.items():
        assert list(d["summation_ratio"]) == [17.0, 33.0, 67.0, 133.0, 267.0]
        assert list(d["summation_pair"].values()) == [33.0, 67.0, 133.0, 267.0, 533.0]
        np.testing.assert_allclose(list(d["summation_ratio"].values()), 1.0, atol=1e-3)
        np.testing.assert_allclose(list(d["isi_recovery"].values()), 1.0, atol=1e-3)
        # summed over 0-1 s: a linear response is proportional to the duration
        R = d["summed_response"]
        assert R[533.0] / R[17.0] == pytest.approx(533.0 / 17.0, rel=1e-3)
        assert d["summation_window_ms"] > 17.0
        # linear in contrast: the peak is proportional to it, so half the full-contrast peak is at 0.5
        assert d["c50"] == pytest.approx(0.5, rel=1e-3)
        # the grey background drives a steady baseline: its level over the raw peak, worst experiment
        ratios = []
        for run in linear_runs.values():
            raw = A.time_courses(run, pop)  # not baseline-corrected
            base = float(raw.sel(time=slice(-100.0, -1.0)).mean())
            ratios.append(base / float(raw.sel(time=slice(0.0, 999.0)).max()))
        assert d["baseline_to_peak"] == pytest.approx(max(ratios), rel=1e-9)
        assert d["baseline_drift_to_peak"] < 1e-6  # settled: onset 300 ms after a start from rest
        assert not any(k.startswith(("isi_recovery", "summation_ratio", "baseline")) for k in d["flags"])
    # V2 lags V1 by the 10 ms delay plus its slower integration
    assert summary["V2"]["half_rise_ms"][1.0] > summary["V1"]["half_rise_ms"][1.0] + 10.0
    json.dumps(summary, allow_nan=False)  # plain numbers: the CLI prints it as JSON


def test_dn_fit_of_an_archive(linear_runs):
    """The DN model fitted to a population's duration series: a linear cascade of two leaky
    stages with a 10 ms delay has no normalisation, so the fit matches it (R^2 near 1) only by
    pushing sigma to its upper bound (pool << sigma): flagged, not reported as a good fit."""
    with pytest.warns(AnalysisWarning) as rec:  # each flag is warned: the DN fit's, and "no transient"
        res = A.analyze(duration=linear_runs["duration"], populations=["V2"], dn=True,
                        dn_options=dict(restarts=({},), adam_steps=100, lbfgs_steps=100))
    assert any("parameters on their bounds" in str(w.message) for w in rec)
    summary = res.summary()["V2"]
    d = summary["dn"]
    assert set(d) == set(A.DN_PARAMS) | {"r2", "on_bounds", "good"}
    assert d["r2"] > 0.95 and d["on_bounds"]["sigma"] == 1.0 and d["good"] is False
    assert "parameters on their bounds" in summary["flags"]["dn"]
    text = A.format_summary(res.summary())
    r2, note = text.splitlines()[1].split()[-1].split("*")  # the R^2 is printed only with its footnote
    assert r2 == f"{d['r2']:.3f}" and f"*{note} parameters on their bounds" in text
    for k, (lo, hi) in A.DN_BOUNDS.items():
        assert lo <= d[k] <= hi, k
    assert res.dn_fits["V2"].prediction.shape == res.courses["duration"]["V2"].sel(time=slice(0, None)).shape
    with pytest.raises(ConfigurationError, match="dn=True"):
        A.analyze(duration=linear_runs["duration"], dn_options={"adam_steps": 1})


@pytest.mark.filterwarnings("ignore::dynode.errors.AnalysisWarning")
def test_summarize_a_nonlinear_network_from_stores_and_write_figures(tmp_path, images):
    runs = run_all(two_area_net(linear=False), images, store=tmp_path)
    paths = {k: tmp_path / f"{k}.zarr" for k in runs}
    assert {A.experiment_kind(p): k for k, p in paths.items()} == {k: k for k in paths}
    summary = A.summarize(duration=paths["duration"], repetition=paths["repetition"], contrast=paths["contrast"])
    for d in summary.values():
        assert set(d["isi_recovery"]) == {17.0, 33.0, 67.0, 133.0, 267.0, 533.0}
        assert set(d["time_to_peak_ms"]) == {0.0625, 0.125, 0.25, 0.5, 1.0}
        for key in ("summation_window_ms", "baseline_to_peak", "asymptote_to_peak"):
            assert d[key] is not None and np.isfinite(d[key]), key
        for c, v in d["half_rise_ms"].items():  # a number or a flag saying why not
            assert (v is not None and 0 < v < 500) or f"half_rise_ms[{c:g}]" in d["flags"]
    res = A.analyze(paths["contrast"], paths["duration"], paths["repetition"])
    assert res.summary() == summary
    text = A.format_summary(summary)
    assert text.splitlines()[0].split()[:3] == ["area", "sum.", "ratio"]
    assert [line.split()[0].split("*")[0] for line in text.splitlines()[1:3]] == ["V1", "V2"]
    figs = res.figures(tmp_path / "figs")
    assert set(figs) == {"time_courses_contrast", "time_courses_duration", "time_courses_repetition",
                         "summation", "recovery", "contrast_response"}
    for path in figs.values():
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000
    # any subset works; metrics of missing experiments are left out and named
    only = A.summarize(paths["contrast"])["V1"]
    assert "c50" in only and "summation_ratio" not in only and "isi_recovery" not in only
    assert only["not_computed"]["isi_recovery"] == "the repetition and the duration experiments"
    with pytest.raises(ConfigurationError, match="two archives"):
        A.analyze(paths["contrast"], paths["contrast"])


def test_figure_functions_on_plain_xarray(tmp_path):
    t = np.arange(-100.0, 900.0, 2.0)
    d = np.array([17.0, 33.0, 67.0])
    courses = xr.Dataset({"V1": (("duration", "time"), np.exp(-((t[None] - d[:, None]) / 30.0) ** 2)),
                          "IT": (("duration", "time"), np.zeros((3, len(t))))},
                         coords={"duration": d, "time": t})
    summed = xr.Dataset({"V1": ("duration", d ** 0.7)}, coords={"duration": d})
    rec = xr.DataArray([0.3, 0.6, 0.9], dims=("isi",), coords={"isi": [17.0, 67.0, 267.0]}, name="V1")
    c = np.array([0.1, 0.3, 1.0])
    resp = xr.Dataset({"V1": ("contrast", A.hyperbolic_ratio(c, 1.0, 0.3, 2.0))}, coords={"contrast": c})
    fit = A.fit_hyperbolic_ratio(c, resp["V1"].values)
    out = [A.plot_time_courses(courses, tmp_path / "a.png"),
           A.plot_summation(summed, tmp_path / "b.png"),
           A.plot_recovery(rec, tmp_path / "sub" / "c.png"),
           A.plot_contrast_response(resp, tmp_path / "d.png", fits={"V1": fit}, c50={"V1": float(A.c50(resp["V1"]))})]
    assert out[2] == tmp_path / "sub" / "c.png"
    for path in out:
        assert path.read_bytes()[:8] == PNG
    with pytest.raises(ConfigurationError, match="PNG"):
        A.plot_recovery(rec, tmp_path / "c.pdf")
