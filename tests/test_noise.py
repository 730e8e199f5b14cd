"""Noise in the dynamics (issue 25, item 1): ``tau dr = (-r + Phi(u)) dt + sigma sqrt(2 tau) dW``.

The Brownian paths (``dynode.brownian``): reproducible, batch-independent, the same at ``dt`` and
``dt/2``, continued exactly. Euler-Maruyama and stochastic Heun: the Ornstein-Uhlenbeck
stationary variance, strong and weak orders measured on one path refined across ``dt``.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import nn

import dynode as dn
from dynode.brownian import BrownianPath, mix, mix_int, sample_keys
from dynode.errors import ConfigurationError


def noisy(net: dn.Network, name: str, sigma) -> None:
    net.populations[name].noise = sigma


def elementwise_net(units: int = 6, sigma: float = 0.3, delay: float = 2.0) -> dn.Network:
    """Per-unit maps only (bit-identical whatever the batch): x <- input, y <- x, x <- y delayed."""
    net = dn.Network()
    net.add_input("I", (units,))
    net.add_population("x", (units,), tau=5.0, phi="tanh")
    net.add_population("y", (units,), tau=8.0, phi="relu")
    net.connect("I", "x")
    net.connect("x", "y")
    net.connect("y", "x", delay=delay)
    noisy(net, "x", sigma)
    noisy(net, "y", torch.tensor([sigma / 2] * units))
    return net


def slope(dts, errs) -> float:
    """Least-squares slope of log(err) against log(dt)."""
    x = torch.log(torch.tensor(dts, dtype=torch.float64))
    y = torch.log(torch.tensor(errs, dtype=torch.float64))
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


# -- the path ------------------------------------------------------------------------------
def test_hash_matches_its_reference():
    values = [0, 1, 2, 12345, (1 << 63) - 1, -1, -(1 << 63), 0x9E3779B97F4A7C15 - (1 << 64)]
    got = mix(torch.tensor(values, dtype=torch.int64)).tolist()
    want = [mix_int(v) for v in values]
    assert [g & ((1 << 64) - 1) for g in got] == want


def test_path_is_the_same_at_dt_and_dt_over_2(f64):
    keys = sample_keys(7, 3)
    shapes = {"a": (5,), "b": (2, 3)}
    coarse = BrownianPath(keys, shapes, 1.0, torch.float64)
    fine = BrownianPath(keys, shapes, 0.25, torch.float64)
    two = BrownianPath(keys, shapes, 2.0, torch.float64)
    for name in shapes:
        w1 = torch.stack([coarse.increment(n)[name] for n in range(8)]).cumsum(0)
        w4 = torch.stack([fine.increment(n)[name] for n in range(32)]).cumsum(0)[3::4]
        w2 = torch.stack([two.increment(n)[name] for n in range(4)]).cumsum(0)
        assert (w1 - w4).abs().max() < 1e-13
        assert (w2 - w1[1::2]).abs().max() < 1e-13
    # a jump back (a checkpointed segment recomputed) gives the same increment
    assert torch.equal(fine.increment(5)["a"], BrownianPath(keys, shapes, 0.25, torch.float64).increment(5)["a"])
    # increments of one step: mean 0, variance dt, uncorrelated in time
    many = BrownianPath(sample_keys(1, 200), {"u": (500,)}, 0.125, torch.float64)
    d = torch.stack([many.increment(n)["u"] for n in range(40)]) / math.sqrt(0.125)
    assert abs(float(d.mean())) < 0.01 and abs(float(d.var()) - 1) < 0.01
    assert abs(float((d[1:] * d[:-1]).mean())) < 0.01


# -- Ornstein-Uhlenbeck -----------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_ou_stationary_variance(f64, solver):
    """dr = -r/tau dt + sigma sqrt(2/tau) dW: Var r = sigma^2 (analytic). The linear maps the
    methods make of it (a = dt/tau, g^2 dt = 2 a sigma^2) have the stationary variances
    sigma^2 / (1 - a/2) (Euler-Maruyama: r' = (1 - a) r + G) and 2 a sigma^2 (1 - a/2)^2 / (1 - q^2)
    (Heun: r' = q r + (1 - a/2) G, q = 1 - a + a^2/2); both are checked, the second to the
    sampling error (2048 units x 16 samples x 8 times 2.5 tau apart: 0.3 %). Measured Var/sigma^2:
    1.0096 (Euler-Maruyama, dt/tau = 0.025; its map: 1.0127) and 0.9963 (Heun, dt/tau = 0.05; its
    map: 0.9994)."""
    tau, sigma, units, batch = 10.0, 0.5, 2048, 16
    dt = 0.25 if solver == "euler" else 0.5
    net = dn.Network()
    net.add_population("r", (units,), tau=tau, phi="identity")
    noisy(net, "r", sigma)
    net.to(torch.float64)
    times = [50.0 + 25.0 * i for i in range(8)]  # after 5 tau, 2.5 tau apart
    sol = dn.integrate(net, None, t_end=times[-1], dt=dt, solver=solver, seed=11, batch_size=batch,
                       save_at=times)
    var = float(sol["r"].var())
    a = dt / tau
    if solver == "euler":
        exact = sigma ** 2 / (1 - a / 2)
    else:
        q = 1 - a + a * a / 2
        exact = sigma ** 2 * 2 * a * (1 - a / 2) ** 2 / (1 - q * q)
    assert abs(var / sigma ** 2 - 1) < 0.02  # within 2 % of the analytic sigma^2
    assert abs(var / exact - 1) < 0.01  # the discrete map's own variance (N_eff ~ 2.6e5: 0.3 %)


# -- orders, on one Brownian path refined across dt -----------------------------------------
def test_strong_order_on_one_path(f64):
    """Euler-Maruyama and stochastic Heun on a delayed nonlinear network with additive noise:
    the RMS error at t = 10 ms against Heun at dt = 1/32 on the same path falls like dt^1
    (measured least-squares slopes: Euler-Maruyama 1.07, stochastic Heun 1.03)."""
    torch.manual_seed(0)
    net = dn.Network()
    net.add_input("I", (40,))
    net.add_population("x", (40,), tau=5.0, phi="tanh")
    net.add_population("y", (40,), tau=8.0, phi="tanh")
    net.connect("I", "x")
    net.connect("x", "y", nn.Linear(40, 40))
    net.connect("y", "x", nn.Linear(40, 40), delay=2.0)
    noisy(net, "x", 0.3)
    noisy(net, "y", 0.2)
    net.to(torch.float64)
    stim = torch.randn(8, 40)

    def final(dt: float, solver: str) -> dict:
        with torch.no_grad():
            return dn.integrate(net, stim, t_end=10.0, dt=dt, solver=solver, seed=5, save_at=[10.0]).final_state

    ref = final(1 / 32, "heun")
    dts = [2.0, 1.0, 0.5, 0.25]
    for solver in ("euler", "heun"):
        errs = []
        for dt in dts:
            y = final(dt, solver)
            errs.append(math.sqrt(sum(float(((y[k] - ref[k]) ** 2).mean()) for k in y)))
        assert 0.85 < slope(dts, errs) < 1.25, (solver, errs)


def test_weak_order_of_the_mean(f64):
    """E[r(T)] of tau dr = (-r + tanh(1)) dt + sigma sqrt(2 tau) dW over 32768 paths, against Heun at
    dt = 1/16 on the same paths: weak order 1 (Euler-Maruyama, measured slopes 1.02-1.03 over seeds
    1-3) and 2 (stochastic Heun, additive noise: 2.25, 2.00, 2.09; the sampling error of the
    differences is what spreads them)."""
    units = 32768
    net = dn.Network()
    net.add_input("I", (units,))
    net.add_population("r", (units,), tau=10.0, phi="tanh")
    net.connect("I", "r")
    noisy(net, "r", 0.5)
    net.to(torch.float64)

    def mean(dt: float, solver: str) -> float:
        sol = dn.integrate(net, torch.ones(units), t_end=20.0, dt=dt, solver=solver, seed=1, save_at=[20.0])
        return float(sol.final_state["r"].mean())

    ref = mean(1 / 16, "heun")
    dts = [4.0, 2.0, 1.0, 0.5]
    em = [abs(mean(dt, "euler") - ref) for dt in dts]
    heun = [abs(mean(dt, "heun") - ref) for dt in dts]
    assert 0.85 < slope(dts, em) < 1.25, em
    assert 1.7 < slope(dts, heun) < 2.6, heun


# -- reproducibility -------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_reruns_samples_and_continuations_are_bit_identical(f64, solver):
    net = elementwise_net().to(torch.float64)
    stim = torch.randn(5, 6, generator=torch.Generator().manual_seed(2))
    kw = dict(dt=0.25, solver=solver)
    whole = dn.integrate(net, stim, t_end=6.0, seed=42, **kw)
    again = dn.integrate(net, stim, t_end=6.0, seed=42, **kw)
    other = dn.integrate(net, stim, t_end=6.0, seed=43, **kw)
    for name in ("x", "y"):
        assert torch.equal(whole[name], again[name])
        assert not torch.allclose(whole[name][-1], other[name][-1])
    # sample 3 alone, by its key, sees the same path and gives the same bits
    alone = dn.integrate(net, stim[3:4], t_end=6.0, seed=whole.seeds[3:4], **kw)
    for name in ("x", "y"):
        assert torch.equal(alone[name][:, 0], whole[name][:, 3])
    # a run split at 2.25 ms (inside a base interval of the path) continues exactly
    first = dn.integrate(net, stim, t_end=2.25, seed=42, **kw)
    rest = dn.integrate(net, stim, t0=2.25, t_end=6.0, initial_state=first, **kw)  # reuses first.seeds
    assert torch.equal(rest.seeds, whole.seeds)
    for name in ("x", "y"):
        assert torch.equal(rest.final_state[name], whole.final_state[name])
        assert torch.equal(rest[name][-1], whole[name][-1])


def test_seed_none_is_drawn_and_recorded():
    net = elementwise_net()
    torch.manual_seed(3)
    sol = dn.integrate(net, torch.ones(2, 6), t_end=4.0, dt=0.5)
    assert sol.seeds is not None and sol.seeds.shape == (2,)
    replay = dn.integrate(net, torch.ones(2, 6), t_end=4.0, dt=0.5, seed=sol.seeds)
    assert torch.equal(replay["x"], sol["x"])
    torch.manual_seed(3)  # torch's global seed fixes the drawn seed too
    assert torch.equal(dn.integrate(net, torch.ones(2, 6), t_end=4.0, dt=0.5)["x"], sol["x"])
    assert dn.integrate(elementwise_net(sigma=0.0), torch.ones(2, 6), t_end=1.0, dt=0.5).seeds is None


def test_sequential_euler_and_checkpointed_gradients(f64):
    net = elementwise_net().to(torch.float64)
    stim = torch.randn(3, 6, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    seq = dn.integrate(net, stim, t_end=4.0, dt=0.5, seed=1, solver=dn.solvers.Euler(order="sequential"))
    plain = dn.integrate(net, stim, t_end=4.0, dt=0.5, seed=1)
    assert seq["x"].shape == plain["x"].shape and not torch.equal(seq["y"], plain["y"])
    grads = []
    for checkpoint in (None, 3):
        sol = dn.integrate(net, stim, t_end=4.0, dt=0.25, seed=1, solver="heun", checkpoint=checkpoint)
        grads.append(torch.autograd.grad(sol["y"].sum(), stim)[0])
    assert torch.equal(grads[0], grads[1])  # the recomputed segments see the same noise


def test_noise_with_a_delay_reads_the_noisy_past(f64):
    """x has noise, y reads x with a delay of 1 ms and no noise of its own: y's trajectory follows
    the noisy x (it differs between seeds), while a run without noise is deterministic."""
    net = dn.Network()
    net.add_population("x", (4,), tau=5.0, phi="identity")
    net.add_population("y", (4,), tau=5.0, phi="identity")
    net.connect("x", "y", delay=1.0)
    noisy(net, "x", 1.0)
    net.to(torch.float64)
    a = dn.integrate(net, None, t_end=5.0, dt=0.5, seed=1)
    b = dn.integrate(net, None, t_end=5.0, dt=0.5, seed=2)
    assert not torch.allclose(a["y"][-1], b["y"][-1])
    # exact Euler on y: y_{n+1} = y_n + a (x_{n-2} - y_n), a = dt/tau, from the saved noisy x
    x, y = a["x"], a["y"]
    for n in range(2, 10):
        assert torch.allclose(y[n + 1], torch.lerp(y[n], x[n - 2], 0.1), atol=1e-14)


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [-0.1, float("nan"), float("inf"), True, "multiplicative", "0.1",
                                   lambda r: r, torch.tensor([-1.0]), torch.tensor([float("nan")]),
                                   torch.ones(5), torch.tensor([1])])
def test_bad_sigma_is_refused(sigma):
    net = dn.Network()
    net.add_population("x", (4,), tau=5.0)
    with pytest.raises(ConfigurationError, match="noise"):
        net.populations["x"].noise = sigma


@pytest.mark.parametrize("solver", ["rk4", "midpoint", "dopri5", "bosh3", "torchdiffeq", "torchode"])
def test_solvers_that_cannot_integrate_noise_refuse_it(solver):
    net = elementwise_net()
    with pytest.raises(ConfigurationError, match="cannot integrate noise.*'euler'.*'heun'"):
        dn.integrate(net, torch.ones(1, 6), t_end=2.0, dt=0.5, solver=solver, seed=0)


def test_bad_seed_and_grid_are_refused():
    net = elementwise_net()
    quiet = elementwise_net(sigma=0.0)
    with pytest.raises(ConfigurationError, match="no population of the field is noisy"):
        dn.integrate(quiet, torch.ones(1, 6), t_end=1.0, dt=0.5, seed=0)
    with pytest.raises(ConfigurationError, match="2 per-sample keys but the batch has 3"):
        dn.integrate(net, torch.ones(3, 6), t_end=1.0, dt=0.5, seed=torch.tensor([1, 2]))
    for seed in (1.5, True, "s", torch.tensor([[1]])):
        with pytest.raises(ConfigurationError, match="seed"):
            dn.integrate(net, torch.ones(1, 6), t_end=1.0, dt=0.5, seed=seed)
    with pytest.raises(ConfigurationError, match="t0 = 0.3 ms is not a whole number of steps"):
        dn.integrate(net, torch.ones(1, 6), t0=0.3, t_end=1.3, dt=0.5, seed=0)


def test_population_noise_option_and_spec():
    net = elementwise_net()
    assert net.populations["x"].noise == 0.3 and "noise=0.3" in repr(net.populations["x"])
    assert net.populations["y"].diffusion().shape == (6,)
    spec = dn.spec.network_spec(net)
    again = dn.spec.build_network(spec)
    assert again.populations["x"].noise == 0.3
    assert torch.equal(again.populations["y"].noise, net.populations["y"].noise)
    net.populations["x"].noise = 0.0
    assert net.populations["x"].diffusion() is None


@pytest.mark.skipif("noise" not in inspect.signature(dn.Network.add_population).parameters,
                    reason="add_population(noise=) needs the dynode/network.py diff of issue 25")
def test_add_population_noise():
    net = dn.Network()
    net.add_population("x", (3,), tau=4.0, noise=0.2)
    assert net.populations["x"].noise == 0.2
    with pytest.raises(ConfigurationError, match="noise"):
        net.add_population("z", (3,), tau=4.0, noise=-1.0)


def test_memory_check_counts_the_brownian_path():
    net = elementwise_net()
    with pytest.raises(ConfigurationError, match="for the noise's Brownian path"):
        dn.integrate(net, torch.ones(1, 6), t_end=1.0, dt=0.125, seed=0, memory_limit=100)


def test_whole_root_and_depth_first_walk_give_the_same_bits(f64):
    """The path does not depend on how it is made: all leaves of a root at once (small states)
    or one by one (large ones), nor on the batch around a sample (odd unit counts: the elementwise
    kernels' vectorised body and tail)."""
    keys = sample_keys(9, 5)
    shapes = {"a": (1001,), "b": (3,)}
    for dtype in (torch.float32, torch.float64):
        whole = BrownianPath(keys, shapes, 0.25, dtype)
        walk = BrownianPath(keys, shapes, 0.25, dtype, block_bytes=0)
        alone = BrownianPath(keys[3:4], shapes, 0.25, dtype, block_bytes=0)
        assert whole._whole and not walk._whole
        for n in [0, 1, 2, 7, 40, 41, 3, 4]:  # in order, then jumps
            w, d, a = whole.increment(n), walk.increment(n), alone.increment(n)
            for name in shapes:
                assert torch.equal(w[name], d[name])
                assert torch.equal(a[name][0], d[name][3])
