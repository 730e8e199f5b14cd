"""The delayed normalisation model: analytic limits, differentiability, and recovery by the fit."""

import math

import numpy as np
import pytest
import torch

from dynode import analysis as A
from dynode.errors import ConfigurationError


def params(**kw):
    return {**A.DN_START, **kw}


def test_linear_part_is_the_shifted_gamma_step_response():
    """n = 1, weight 0, a tiny input (pool << sigma): r = scale / (sigma + |pool|) * L with
    L(t) = 1 - exp(-t'/tau1) (1 + t'/tau1), t' = t - shift (the step response of the
    unit-area gamma of order 2), exact on the grid; the shift need not be on the grid."""
    dt, eps = 0.5, 1e-9
    t = np.arange(0.0, 300.0, dt)
    s = eps * (t >= 0)
    p = params(tau1=8.0, weight=0.0, n=1.0, sigma=1.0, shift=23.37, scale=2.0)
    r = A.dn_model(s, t, p).numpy()
    tp = np.clip(t - 23.37, 0, None)
    want = 2.0 * eps * (1 - np.exp(-tp / 8.0) * (1 + tp / 8.0))
    np.testing.assert_allclose(r, want, rtol=1e-8, atol=1e-20)
    assert np.all(r[t < 23.37 - dt] < 1e-12 * eps)  # nothing before the latency


def test_saturating_normalisation_of_a_long_step():
    """weight 0, sigma -> 0: at steady state L and the pool are both 1, so r -> scale, at any dt."""
    t = np.arange(0.0, 3000.0, 5.0)
    r = A.dn_model((t >= 0).astype(float), t, params(sigma=1e-6, tau2=50.0, n=2.0, scale=3.0)).numpy()
    assert r[-1] == pytest.approx(3.0, rel=1e-9)
    assert r.max() > 3.0 * 1.2  # the transient overshoots before the pool catches up


def test_batched_parameters_and_gradients():
    t = torch.arange(0.0, 400.0, 2.0, dtype=torch.float64)
    s = (t >= 50).double().expand(3, -1)
    tau1 = torch.tensor([[4.0], [8.0], [16.0]], dtype=torch.float64, requires_grad=True)
    shift = torch.tensor(31.3, dtype=torch.float64, requires_grad=True)
    r = A.dn_model(s, t, params(tau1=tau1, shift=shift))
    assert r.shape == (3, t.numel())
    single = A.dn_model(s[1], t, params(tau1=8.0, shift=31.3))
    torch.testing.assert_close(r[1].detach(), single)
    r.sum().backward()
    assert torch.isfinite(tau1.grad).all() and torch.isfinite(shift.grad) and shift.grad != 0


def test_dn_model_errors():
    t = np.arange(0.0, 10.0, 1.0)
    with pytest.raises(ConfigurationError, match="missing"):
        A.dn_model(np.ones(10), t, {"tau1": 5.0})
    with pytest.raises(ConfigurationError, match="uniformly spaced"):
        A.dn_model(np.ones(3), [0.0, 1.0, 3.0], params())
    with pytest.raises(ConfigurationError, match="time points"):
        A.dn_model(np.ones(4), t, params())
    with pytest.raises(ConfigurationError, match="outside its bounds"):
        A.fit_dn(np.ones(10), np.ones(10), t, start={"n": 7.0})


def test_fit_recovers_known_parameters():
    """Groen's durations and two low contrasts, one parameter set: recovered within 10 %."""
    t = np.arange(-100.0, 900.0, 2.0)
    rows = [((t >= 0) & (t < d)).astype(float) for d in (17, 33, 67, 133, 267, 533)]
    rows += [c * ((t >= 0) & (t < 500)) for c in (0.0625, 0.25)]
    s = np.stack(rows)
    true = dict(tau1=4.0, weight=0.5, tau2=60.0, n=1.6, sigma=0.2, shift=70.0, scale=3.0)
    y = A.dn_model(s, t, true).numpy()
    fit = A.fit_dn(s, y, t)
    assert fit.r2 > 0.99
    for k, v in true.items():
        assert fit.params[k] == pytest.approx(v, rel=0.1), k
    assert fit.prediction.shape == y.shape
    # a fixed parameter stays where it is put
    fixed = A.fit_dn(s[:3], y[:3], t, fixed={"shift": 70.0}, restarts=({},), adam_steps=50, lbfgs_steps=50)
    assert fixed.params["shift"] == 70.0 and fixed.r2 > 0.9
