"""Analysis metrics on synthetic time courses with known answers."""

import math

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from dynode import analysis as A
from dynode.errors import ConfigurationError


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
def test_isi_recovery_of_a_linear_system_is_one(tau):
    t = np.arange(-100.0, 900.0, 1.0)  # Groen epoch: the longest isi's window is cut at 900 ms
    isis = [17.0, 33.0, 67.0, 133.0, 267.0, 533.0]
    single = leaky(pulses(t, [(0.0, 133.0)]), 1.0, tau)
    two = leaky(np.stack([pulses(t, [(0.0, 133.0), (133.0 + g, 133.0)]) for g in isis]), 1.0, tau)
    rec = A.isi_recovery(course(two, t, isi=isis), course(single, t), duration=133.0, window=300.0)
    assert rec["isi"].values.tolist() == isis
    np.testing.assert_allclose(rec.values, 1.0, atol=1e-9)


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
    assert math.isnan(A.fwhm(course(np.clip(t - 50, 0, 1), t)))


def test_asymptote_to_peak():
    t = np.arange(-100.0, 900.0, 1.0)
    tc = np.clip(t, 0, None)
    y = np.where((t >= 0) & (t < 500), 0.5 + 0.5 * np.exp(-tc / 20.0), 0.0)
    assert A.asymptote_to_peak(course(y, t), 500.0) == pytest.approx(0.5, rel=1e-6)
    flat = np.where((t >= 0) & (t < 500), 2.0, 0.0)
    assert A.asymptote_to_peak(course(flat, t), 500.0) == pytest.approx(1.0)


@pytest.mark.parametrize("rmax,c50,n", [(3.0, 0.2, 2.0), (1.0, 0.08, 1.3), (0.4, 0.6, 3.5), (-2.0, 0.3, 1.0)])
def test_c50_of_a_hyperbolic_ratio(rmax, c50, n):
    c = np.array([0.0625, 0.125, 0.25, 0.5, 1.0])
    fit = A.fit_hyperbolic_ratio(c, A.hyperbolic_ratio(c, rmax, c50, n))
    assert fit.c50 == pytest.approx(c50, rel=1e-4)
    assert fit.n == pytest.approx(n, rel=1e-3) and fit.rmax == pytest.approx(rmax, rel=1e-3)
    assert fit.r2 > 0.999999
    responses = xr.DataArray(A.hyperbolic_ratio(c, rmax, c50, n), dims=("contrast",), coords={"contrast": c})
    assert A.c50(responses) == pytest.approx(c50, rel=1e-4)


def test_c50_errors_and_extrapolation_warning():
    c = np.array([0.1, 0.2, 0.4, 0.8])
    with pytest.warns(RuntimeWarning, match="outside the tested contrasts"):
        A.fit_hyperbolic_ratio(c, c * 2.0)  # linear: c50 runs off to large values
    with pytest.raises(ConfigurationError, match=">= 3 contrasts"):
        A.fit_hyperbolic_ratio([0.0, 0.5], [0.0, 1.0])
    with pytest.raises(ConfigurationError, match="1-D response"):
        A.c50(xr.DataArray(np.ones((4, 2)), dims=("contrast", "time"), coords={"contrast": c}))


def test_metrics_need_a_uniform_time_grid():
    bad = xr.DataArray([0.0, 1.0, 0.0], dims=("time",), coords={"time": [0.0, 1.0, 3.0]})
    with pytest.raises(ConfigurationError, match="uniformly spaced"):
        A.summed_response(bad)
    with pytest.raises(ConfigurationError, match="holds no time point"):
        A.summed_response(course(np.ones(10), np.arange(10.0)), 20.0, 30.0)
