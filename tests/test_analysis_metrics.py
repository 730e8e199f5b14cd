"""Analysis metrics on synthetic time courses with known answers."""

import math

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import lambertw

from dynode import analysis as A
from dynode.errors import AnalysisWarning, ConfigurationError, UndefinedMetricWarning


def leaky(s: np.ndarray, dt: float, tau: float) -> np.ndarray:
    """Exact step response of ``tau dr/dt = -r + s`` for piecewise-constant ``s`` (gain 1):
    a linear time-invariant system."""
    a = math.exp(-dt / tau)
    r = np.zeros_like(s)
    for k in range(1, s.shape[-1]):
        r[..., k] = a * r[..., k - 1] + (1 - a) * s[..., k - 1]
    return r


def pulses(t, onsets_durations):
    s = np.zeros_like(t)
    for on, d in onsets_durations:
        s += ((t >= on) & (t < on + d)).astype(float)
    return s


def course(data, t, **dims):
    (name, values), = dims.items() if dims else ((None, None),)
    if name is None:
        return xr.DataArray(data, dims=("time",), coords={"time": t})
    return xr.DataArray(data, dims=(name, "time"), coords={name: values, "time": t})


T_GRID = np.arange(-100.0, 1500.0, 1.0)


@pytest.mark.parametrize("durations", [(20.0, 40.0, 80.0, 160.0, 320.0), (17.0, 33.0, 67.0, 133.0, 267.0, 533.0)])
def test_linear_system_sums_linearly(durations):
    s = np.stack([pulses(T_GRID, [(0.0, d)]) for d in durations])
    r = course(leaky(s, 1.0, 20.0), T_GRID, duration=list(durations))
    ratios = A.summation_ratios(r)
    # every T has its double (Groen's rounded durations within 5 %), all ratios 1
    assert ratios["duration"].values.tolist() == list(durations[:-1])
    np.testing.assert_allclose(ratios.values, 1.0, atol=1e-3)
    assert A.summation_ratio(r, durations[1]) == pytest.approx(1.0, abs=1e-3)
    # the summed response is the integral: the gain is 1, so R(T) = T
    np.testing.assert_allclose(A.summed_response(r).values, durations, rtol=1e-4)


@settings(max_examples=15, deadline=None)
@given(tau=st.floats(2.0, 40.0), T=st.floats(5.0, 150.0), dt=st.sampled_from([0.5, 1.0]))
def test_linear_summation_ratio_is_one_for_any_time_constant(tau, T, dt):
    T = round(T / dt) * dt  # pulses of a whole number of steps
    t = np.arange(-50.0, 300.0 + 2 * T + 12 * tau, dt)
    s = np.stack([pulses(t, [(0.0, T)]), pulses(t, [(0.0, 2 * T)])])
    r = course(leaky(s, dt, tau), t, duration=[T, 2 * T])
    assert A.summation_ratio(r, T) == pytest.approx(1.0, abs=1e-4)


def test_onset_transient_only_gives_ratio_one_half():
    """A response that ignores the duration (an onset transient) does not sum at all."""
    durations = [25.0, 50.0, 100.0]
    one = np.where(T_GRID >= 0, np.exp(-np.clip(T_GRID, 0, None) / 15.0), 0.0)
    r = course(np.stack([one] * 3), T_GRID, duration=durations)
    np.testing.assert_allclose(A.summation_ratios(r).values, 0.5, rtol=1e-12)


def test_compressive_system_is_subadditive():
    durations = [50.0, 100.0, 200.0]
    lin = leaky(np.stack([pulses(T_GRID, [(0.0, d)]) for d in durations]), 1.0, 20.0)
    adapted = lin * np.exp(-np.cumsum(lin, axis=-1) / 60.0)  # response fades with accumulated drive
    ratios = A.summation_ratios(course(adapted, T_GRID, duration=durations))
    assert np.all(ratios.values < 0.9) and np.all(ratios.values > 0)


def test_summation_ratio_needs_doubled_durations():
    r = course(np.ones((3, len(T_GRID))), T_GRID, duration=[10.0, 15.0, 25.0])
    with pytest.raises(ConfigurationError, match="no pair of durations"):
        A.summation_ratios(r)
    with pytest.raises(ConfigurationError, match="no 'duration' dimension"):
        A.summation_ratios(r.rename(duration="contrast"))


@pytest.mark.parametrize("tau", [20.0, 5.0])
def test_isi_recovery_of_a_linear_system_is_one(tau, recwarn):
    t = np.arange(-100.0, 1200.0, 1.0)  # Groen's epoch, -0.1 to 1.2 s: every window fits
    isis = [17.0, 33.0, 67.0, 133.0, 267.0, 533.0]
    single = leaky(pulses(t, [(0.0, 133.0)]), 1.0, tau)
    two = leaky(np.stack([pulses(t, [(0.0, 133.0), (133.0 + g, 133.0)]) for g in isis]), 1.0, tau)
    rec = A.isi_recovery(course(two, t, isi=isis), course(single, t), duration=133.0, window=300.0)
    assert rec["isi"].values.tolist() == isis
    np.testing.assert_allclose(rec.values, 1.0, atol=1e-9)
    assert set(rec.attrs["second_window_ms"].values()) == {300.0} and not recwarn.list


def test_isi_recovery_cuts_only_the_second_window():
    """Groen's convention: when the last ISI's window runs past the epoch, only the second
    window is shortened, so a linear system's recovery there is the fraction of the single
    pulse's summed response that falls in the shortened window."""
    tau = 20.0
    t = np.arange(-100.0, 900.0, 1.0)  # the old 0.9 s epoch: isi 533 starts at 666, window cut to 234
    isis = [133.0, 533.0]
    single = leaky(pulses(t, [(0.0, 133.0)]), 1.0, tau)
    two = leaky(np.stack([pulses(t, [(0.0, 133.0), (133.0 + g, 133.0)]) for g in isis]), 1.0, tau)
    with pytest.warns(AnalysisWarning, match="isi=533 ms: the second recovery window is cut to 234 of 300 ms"):
        rec = A.isi_recovery(course(two, t, isi=isis), course(single, t), duration=133.0, window=300.0)
    s = course(single, t)
    want = A.summed_response(s, 0.0, 234.0) / A.summed_response(s, 0.0, 300.0)
    assert 0.99 < want < 1.0  # the tail after 234 ms is small but not zero
    np.testing.assert_allclose(rec.values, [1.0, want], atol=1e-9)
    assert rec.attrs["second_window_ms"] == {133.0: 300.0, 533.0: 234.0}


def test_isi_recovery_of_a_halved_second_response():
    t = np.arange(-100.0, 1200.0, 0.5)
    isis = [50.0, 100.0]
    single = leaky(pulses(t, [(0.0, 100.0)]), 0.5, 30.0)
    shifted = [np.interp(t - (100.0 + g), t, single, left=0.0) for g in isis]
    two = np.stack([single + 0.5 * s for s in shifted])
    rec = A.isi_recovery(course(two, t, isi=isis), course(single, t), duration=100.0, window=200.0)
    np.testing.assert_allclose(rec.values, 0.5, rtol=1e-9)


def test_isi_recovery_rejects_other_grids():
    t = np.arange(0.0, 500.0, 1.0)
    two = course(np.zeros((1, len(t))), t, isi=[10.0])
    single = course(np.zeros(250), np.arange(0.0, 500.0, 2.0))
    with pytest.raises(ConfigurationError, match="share their time grid"):
        A.isi_recovery(two, single, duration=100.0)


@settings(max_examples=20, deadline=None)
@given(tau=st.floats(3.0, 60.0), dt=st.sampled_from([0.25, 0.5, 1.0]))
def test_time_to_peak_of_a_gamma_function(tau, dt):
    t = np.arange(-50.0, 600.0, dt)
    y = np.where(t > 0, np.clip(t, 0, None) / tau * np.exp(-np.clip(t, 0, None) / tau), 0.0)
    assert A.time_to_peak(course(y, t)) == pytest.approx(tau, abs=0.02 * dt + 0.01 * dt * 30 / tau)


def test_time_to_peak_is_sub_grid_and_per_condition():
    t = np.arange(0.0, 400.0, 1.0)
    centres = [100.3, 151.7, 200.0]
    y = np.stack([np.exp(-0.5 * ((t - c) / 12.0) ** 2) for c in centres])
    peaks = A.time_to_peak(course(y, t, contrast=[0.1, 0.5, 1.0]))
    assert peaks.dims == ("contrast",) and peaks.attrs["units"] == "ms"
    np.testing.assert_allclose(peaks.values, centres, atol=5e-3)
    # a window excludes the earlier peak
    assert A.time_to_peak(course(y[0] + 0.5 * y[2], t), start=150.0) == pytest.approx(200.0, abs=5e-3)


def gamma(t, tau, shift=0.0):
    """(t'/tau) exp(1 - t'/tau), t' = t - shift: peak 1 at t' = tau."""
    x = np.clip(t - shift, 0, None) / tau
    return np.where(t > shift, x * np.exp(1 - x), 0.0)


HALF_RISE_X = float(-lambertw(-0.5 / math.e, 0).real)  # x e^{1-x} = 1/2 on the rising side, x < 1


@settings(max_examples=20, deadline=None)
@given(tau=st.floats(5.0, 80.0), shift=st.floats(0.0, 60.0), dt=st.sampled_from([0.1, 0.5, 1.0]))
def test_half_rise_latency_of_a_gamma_function(tau, shift, dt):
    """The first time a gamma response reaches half its peak, in closed form:
    shift + tau x with x e^{1 - x} = 1/2, x = -W_0(-1 / (2e)) (Lambert W)."""
    t = np.arange(-100.0, 900.0, dt)
    y = course(3.0 * gamma(t, tau, shift), t)
    want = shift + tau * HALF_RISE_X
    # linear interpolation between samples: time error <= dt^2 |y''| / (8 y') = 0.29 dt^2 / tau there
    assert A.half_rise_latency(y, 0.0, 500.0) == pytest.approx(want, abs=0.3 * dt**2 / tau + 1e-9)
    assert A.time_to_peak(y, 0.0, 500.0) == pytest.approx(shift + tau, abs=0.02 * dt + 0.01 * dt * 30 / tau)


def test_half_rise_latency_on_a_plateau_where_time_to_peak_is_undefined():
    """A rise 1 - exp(-t/tau) that settles (flat, as a network's steady state in floating
    point, from 8 tau on) has no peak (its argmax is the first sample of the flat part, or float
    noise) but a half-rise time; per condition, with the reason recorded."""
    t = np.arange(-100.0, 1200.0, 0.5)
    top = 1 - math.exp(-8.0)
    rise = np.where((t >= 0) & (t < 500), np.minimum(1 - np.exp(-np.clip(t, 0, None) / 25.0), top), 0.0)
    both = course(np.stack([rise, gamma(t, 40.0)]), t, contrast=[0.25, 1.0])
    with pytest.warns(UndefinedMetricWarning, match=r"time_to_peak of the course \(contrast=0.25\).*plateau"):
        ttp = A.time_to_peak(both, 0.0, 500.0)
    assert math.isnan(ttp.sel(contrast=0.25)) and ttp.sel(contrast=1.0) == pytest.approx(40.0, abs=0.02)
    assert "plateau" in ttp.attrs["undefined"]["contrast=0.25"] and list(ttp.attrs["undefined"]) == ["contrast=0.25"]
    hr = A.half_rise_latency(both, 0.0, 500.0)
    np.testing.assert_allclose(hr.values, [-25.0 * math.log(1 - 0.5 * top), 40.0 * HALF_RISE_X], atol=0.01)
    assert hr.attrs["undefined"] == {}


def test_time_to_peak_inside_the_stimulus_window_ignores_an_offset_response():
    """A low-contrast response whose offset rebound (after 500 ms) is larger than its onset
    peak: over the stimulus window the peak is the onset response's."""
    t = np.arange(-100.0, 1200.0, 1.0)
    y = course(0.5 * gamma(t, 60.0) + gamma(t, 30.0, shift=500.0), t)
    assert A.time_to_peak(y, 0.0) == pytest.approx(530.0, abs=0.05)  # the whole epoch: the rebound
    assert A.time_to_peak(y, 0.0, 500.0) == pytest.approx(60.0, abs=0.05)


@pytest.mark.parametrize("y,why", [
    (lambda t: np.where(t >= 0, np.clip(t, 0, None) / 500.0, 0.0), "still rises at the end"),
    (lambda t: -gamma(t, 30.0), "no response above the baseline"),
    (lambda t: np.where(t >= 0, np.exp(-np.clip(t, 0, None) / 50.0), 0.0), "maximum is at the start"),
])
def test_time_to_peak_undefined_cases(y, why):
    t = np.arange(-100.0, 1200.0, 1.0)
    with pytest.warns(UndefinedMetricWarning, match=why):
        assert math.isnan(A.time_to_peak(course(y(t), t), 0.0, 500.0))


def test_half_rise_latency_undefined_cases():
    t = np.arange(-100.0, 1200.0, 1.0)
    with pytest.warns(UndefinedMetricWarning, match="already at 50% of its peak"):
        assert math.isnan(A.half_rise_latency(course(np.ones_like(t), t), 0.0, 500.0))
    with pytest.warns(UndefinedMetricWarning, match="no response above the baseline"):
        assert math.isnan(A.half_rise_latency(course(-gamma(t, 20.0), t)))
    with pytest.raises(ConfigurationError, match="fraction"):
        A.half_rise_latency(course(gamma(t, 20.0), t), fraction=1.0)


@pytest.mark.parametrize("sigma,dt", [(10.0, 0.5), (4.0, 0.1)])
def test_fwhm_of_a_gaussian(sigma, dt):
    t = np.arange(-100.0, 200.0, dt)
    y = 3.0 * np.exp(-0.5 * ((t - 37.0) / sigma) ** 2)
    assert A.fwhm(course(y, t)) == pytest.approx(2 * math.sqrt(2 * math.log(2)) * sigma, rel=1e-3)


def test_fwhm_of_a_triangle_is_exact_and_summation_window_uses_the_shortest_pulse():
    t = np.arange(0.0, 300.0, 1.0)
    tri = lambda c, w: np.clip(1 - np.abs(t - c) / w, 0, None)  # noqa: E731  FWHM = w (peak on the grid)
    r = course(np.stack([tri(100.0, 20.0), tri(150.0, 50.0)]), t, duration=[17.0, 33.0])
    np.testing.assert_allclose(A.fwhm(r).values, [20.0, 50.0], atol=1e-9)
    assert A.summation_window(r) == pytest.approx(20.0, abs=1e-9)
    # a response that never falls back below half its peak has no width
    with pytest.warns(UndefinedMetricWarning, match="does not fall below half its peak"):
        assert math.isnan(A.fwhm(course(np.clip(t - 50, 0, 1), t)))


def test_smooth_is_matlabs_moving_average():
    """span = round(width / dt), an even span drops one sample, the window shrinks at the ends."""
    y = course(np.array([1.0, 2.0, 3.0, 4.0, 10.0]), np.arange(5.0))
    np.testing.assert_allclose(A.smooth(y, 3.0).values, [1.0, 2.0, 3.0, 17.0 / 3.0, 10.0])
    np.testing.assert_allclose(A.smooth(y, 4.0).values, A.smooth(y, 3.0).values)  # span 4 -> 3
    t = np.arange(0.0, 50.0, 0.5)
    line = course(np.stack([2.0 * t + 1.0, -t]), t, contrast=[0.5, 1.0])
    xr.testing.assert_allclose(A.smooth(line, 10.0), line)  # a line is its own moving average
    with pytest.raises(ConfigurationError, match="below the time step"):
        A.smooth(line, 0.2)


@pytest.mark.parametrize("a,b,tau", [(0.5, 0.5, 40.0), (1.0, 3.0, 80.0)])
def test_asymptote_to_peak_of_a_decaying_transient(a, b, tau):
    """r = a + b exp(-t / tau) sustained past 0.5 s: Groen cuts to 50 < t < 1000 ms and smooths
    (149 samples at dt 1 ms): the smoothed maximum is the first sample (the edge window shrinks
    to it), the value at 500 ms is the mean of r over 355..645 ms."""
    t = np.arange(-100.0, 1200.0, 1.0)
    y = np.where(t >= 0, a + b * np.exp(-np.clip(t, 0, None) / tau), 0.0)
    got = A.asymptote_to_peak(course(y, t), 500.0, width=149.0)
    tw = np.arange(426.0, 575.0)  # 149 samples centred on 500
    want = (a + b * np.exp(-tw / tau).mean()) / (a + b * np.exp(-51.0 / tau))
    assert got == pytest.approx(want, rel=1e-12)
    # Groen's default width, 291 ms: 145 samples either side
    tw = np.arange(355.0, 646.0)
    want = (a + b * np.exp(-tw / tau).mean()) / (a + b * np.exp(-51.0 / tau))
    assert A.asymptote_to_peak(course(y, t), 500.0) == pytest.approx(want, rel=1e-12)
    flat = np.where(t >= 0, 2.0, 0.0)
    assert A.asymptote_to_peak(course(flat, t), 500.0) == pytest.approx(1.0)
    with pytest.warns(UndefinedMetricWarning, match="no response above the baseline"):
        assert math.isnan(A.asymptote_to_peak(course(-flat, t), 500.0))
    with pytest.raises(ConfigurationError, match="not inside the window"):
        A.asymptote_to_peak(course(y, t), 1100.0)


@pytest.mark.parametrize("rmax,c50,n", [(3.0, 0.2, 2.0), (1.0, 0.08, 1.3), (0.4, 0.6, 3.5), (-2.0, 0.3, 1.0)])
def test_naka_rushton_fit_of_a_hyperbolic_ratio(rmax, c50, n):
    c = np.array([0.0625, 0.125, 0.25, 0.5, 1.0])
    fit = A.fit_hyperbolic_ratio(c, A.hyperbolic_ratio(c, rmax, c50, n))
    assert fit.c50 == pytest.approx(c50, rel=1e-4) and not fit.extrapolates
    assert fit.n == pytest.approx(n, rel=1e-3) and fit.rmax == pytest.approx(rmax, rel=1e-3)
    assert fit.r2 > 0.999999


def test_naka_rushton_fit_errors_and_extrapolation_flag():
    c = np.array([0.1, 0.2, 0.4, 0.8])
    with pytest.warns(AnalysisWarning, match="outside the tested contrasts"):
        fit = A.fit_hyperbolic_ratio(c, c * 2.0)  # linear: c50 runs off to large values
    assert fit.extrapolates and fit.c50 > 0.8
    with pytest.raises(ConfigurationError, match=">= 3 contrasts"):
        A.fit_hyperbolic_ratio([0.0, 0.5], [0.0, 1.0])


C = np.array([0.0625, 0.125, 0.25, 0.5, 1.0])


def peaks_of(values, **dims):
    if not dims:
        return xr.DataArray(np.asarray(values, float), dims=("contrast",), coords={"contrast": C})
    (name, v), = dims.items()
    return xr.DataArray(np.asarray(values, float), dims=(name, "contrast"), coords={name: v, "contrast": C})


def test_groen_c50_is_the_half_peak_contrast_interpolated_in_log_contrast():
    # peaks linear in log2(c): p = 1 + log2(c) / 4 from 0 at c = 1/16 to 1 at c = 1; half at c = 1/4
    assert A.c50(peaks_of(1 + np.log2(C) / 4)) == pytest.approx(0.25, rel=1e-12)
    # a crossing between tested contrasts: half of 0.6 is 0.3, between 0.1 at c = 1/8 and 0.5 at 1/4
    p = [0.05, 0.1, 0.5, 0.55, 0.6]
    f = (0.3 - 0.1) / (0.5 - 0.1)
    assert A.c50(peaks_of(p)) == pytest.approx(math.exp(math.log(0.125) + f * math.log(2.0)), rel=1e-12)
    # the contrast of a tested value exactly at half, in any order of the coordinate
    q = peaks_of([0.1, 0.2, 1.0, 1.5, 2.0])
    assert A.c50(q.isel(contrast=[4, 0, 3, 1, 2])) == pytest.approx(0.25, rel=1e-12)
    # per population, and the hyperbolic ratio's own half-peak contrast when the tested values bracket it
    two = peaks_of(np.stack([1 + np.log2(C) / 4, [0.05, 0.1, 0.5, 0.55, 0.6]]), population=["V1", "IT"])
    np.testing.assert_allclose(A.c50(two).values, [0.25, A.c50(peaks_of(p))], rtol=1e-12)
    # a hyperbolic ratio (s = 0.3, n = 2) reaches half of R(1) at c*^2 = s^2 / (2 (1 + s^2) - 1),
    # which is not its semi-saturation constant; the interpolation between 1/8 and 1/4 finds it
    hr = A.hyperbolic_ratio(C, 1.0, 0.3, 2.0)
    exact = 0.3 * math.sqrt(1.0 / (2.0 * (1 + 0.3**2) - 1.0))  # c*^2 / (c*^2 + s^2) = 1 / (2 (1 + s^2))
    assert A.hyperbolic_ratio(exact, 1.0, 0.3, 2.0) == pytest.approx(0.5 * hr[-1], rel=1e-12)
    assert A.c50(peaks_of(hr)) == pytest.approx(exact, rel=0.05)  # interpolation between 1/8 and 1/4


def test_groen_c50_undefined_is_nan_with_the_reason():
    with pytest.warns(UndefinedMetricWarning, match="below the tested range"):
        assert math.isnan(A.c50(peaks_of([0.6, 0.7, 0.8, 0.9, 1.0])))  # already at 60 % at 1/16
    with pytest.warns(UndefinedMetricWarning, match="no response above the baseline at the highest contrast"):
        assert math.isnan(A.c50(peaks_of([0.0, 0.0, 0.1, 0.0, -0.1])))
    with pytest.raises(ConfigurationError, match="peak responses along 'contrast'"):
        A.c50(xr.DataArray(np.ones(4), dims=("duration",)))


def test_metrics_need_a_uniform_time_grid():
    bad = xr.DataArray([0.0, 1.0, 0.0], dims=("time",), coords={"time": [0.0, 1.0, 3.0]})
    with pytest.raises(ConfigurationError, match="uniformly spaced"):
        A.summed_response(bad)
    with pytest.raises(ConfigurationError, match="holds no time point"):
        A.summed_response(course(np.ones(10), np.arange(10.0)), 20.0, 30.0)
