"""Core issue rows: dynode's fixed-step loop vs a hand-written loop, torchdiffeq and torchode.

* conv4: the compute-bound 4-layer conv field (36/64/121/256 channels, 3x3, full 3x3
  recurrence delayed 6 ms, batch 32, 3x32x32, dt 2 ms, tau 5 ms, 20 steps).
* rate4: the overhead-bound field (4 populations x 64 units, linear chain + self
  recurrence delayed 2 ms, batch 16, dt 0.5 ms, tau 5 ms, 1000 steps).

Every contender saves the state of every population at every step (what ``integrate``
does by default) and, for forward+backward, back-propagates ``sum of the last
population's trajectory``. Forward rows run under ``torch.no_grad``.
"""

from __future__ import annotations

import torch

import dynode as dn
from harness import Benchmark
from nets import conv4_network, rate_network


def _ops(net: dn.Network):
    """(name, ff_op, ff_src, rec_op, rec_delay, tau) per population, in order."""
    out = []
    for name, pop in net.populations.items():
        (ff_src, ff), (rec_src, rec) = list(pop.incoming.items())
        assert rec_src == name
        out.append((name, ff, ff_src, rec, pop.delays[rec_src], pop.tau))
    return out


def hand_loop(net: dn.Network, x: torch.Tensor, steps: int, dt: float):
    """A careful hand-written loop: r <- lerp(r, relu(u), dt/tau) (= r + dt/tau (-r + relu(u))),
    delays by list index, every state kept."""
    layers = _ops(net)
    b = x.shape[0]
    rs = [x.new_zeros(b, *net.populations[n].shape) for n, *_ in layers]  # on x's device
    k = [round(d / dt) for *_, d, _ in layers]
    past = [[r] for r in rs]  # every state, for delayed reads
    saved = [list(rs)]
    for n in range(steps):
        new = []
        src = x
        for i, (name, ff, _, rec, d, tau) in enumerate(layers):
            lagged = past[i][max(n - k[i], 0)] if k[i] > 0 else rs[i]
            u = ff(src) + rec(lagged)
            r = torch.lerp(rs[i], torch.relu(u), dt / tau)
            new.append(r)
            src = rs[i]  # zero-delay feed-forward reads the current (pre-step) state
        rs = new
        for i in range(len(rs)):
            past[i].append(rs[i])
        saved.append(rs)
    return [torch.stack([s[i] for s in saved]) for i in range(len(layers))]


def _field_fn(net: dn.Network, x: torch.Tensor, names):
    """Adapter for generic ODE libraries: dynode's no-delay field as f(t, tuple_of_states)."""
    inputs = {net.input_names()[0]: x}

    def f(t, ys):
        state = dict(zip(names, ys))
        d = net(float(t), state, None, inputs)
        return tuple(d[n] for n in names)
    return f


def torchdiffeq_run(net, x, steps, dt):
    from torchdiffeq import odeint

    names = list(net.populations)
    y0 = tuple(net.init_state(x.shape[0]).values())
    ts = torch.arange(steps + 1, dtype=torch.float32) * dt
    return odeint(_field_fn(net, x, names), y0, ts, method="euler")


def torchode_run(net, x, steps, dt):
    import torchode as to

    names = list(net.populations)
    shapes = [net.populations[n].shape for n in names]
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    b = x.shape[0]
    f = _field_fn(net, x, names)

    def flat_f(t, y):
        parts = torch.split(y, sizes, dim=1)
        ys = tuple(p.reshape(b, *s) for p, s in zip(parts, shapes))
        return torch.cat([d.reshape(b, -1) for d in f(t[0], ys)], dim=1)

    term = to.ODETerm(flat_f)
    solver = to.AutoDiffAdjoint(to.Euler(term=term), to.FixedStepController())
    t_eval = (torch.arange(steps + 1, dtype=torch.float32) * dt).expand(b, -1)
    y0 = torch.zeros(b, sum(sizes))
    sol = solver.solve(to.InitialValueProblem(y0=y0, t_eval=t_eval), dt0=torch.full((b,), dt))
    return sol.ys


def _contenders(make_net, x, steps, dt, backward: bool, libraries: bool):
    net = make_net()
    t_end = steps * dt

    def wrap(fn, last):
        if backward:
            def run():
                out = fn()
                last(out).sum().backward()
        else:
            def run():
                with torch.no_grad():
                    fn()
        return run

    c = {
        "hand-written loop": wrap(lambda: hand_loop(net, x, steps, dt), lambda o: o[-1]),
        "dynode Euler": wrap(lambda: dn.integrate(net, x, t_end=t_end, dt=dt), lambda s: s.states[list(s.states)[-1]]),
    }
    if libraries:
        c["torchdiffeq euler"] = wrap(lambda: torchdiffeq_run(net, x, steps, dt), lambda o: o[-1])
        c["torchode Euler"] = wrap(lambda: torchode_run(net, x, steps, dt), lambda o: o)
    return c


def conv_setup(rec_delay: float, backward: bool, libraries: bool):
    def setup(quick: bool):
        batch, steps = (8, 5) if quick else (32, 20)
        torch.manual_seed(0)
        x = torch.randn(batch, 3, 32, 32)
        return _contenders(lambda: conv4_network(rec_delay=rec_delay), x, steps, 2.0, backward, libraries)
    return setup


def rate_setup(rec_delay: float, backward: bool, libraries: bool):
    def setup(quick: bool):
        steps = 100 if quick else 1000
        torch.manual_seed(0)
        x = torch.randn(16, 64)
        return _contenders(lambda: rate_network(rec_delay=rec_delay), x, steps, 0.5, backward, libraries)
    return setup


def learnt_setup(solver: str, dt: float, steps: int):
    """The conv4 delayed field with its taus and delays fixed (baseline) and learnt, fwd+bwd."""
    def setup(quick: bool):
        batch, n = (8, max(2, steps // 4)) if quick else (32, steps)
        torch.manual_seed(0)
        x = torch.randn(batch, 3, 32, 32)
        out = {}
        for label, learn in (("dynode fixed tau, delays", False), ("dynode learnt tau, delays", True)):
            net = conv4_network(rec_delay=6.0, learn=learn)

            def run(net=net):
                sol = dn.integrate(net, x, t_end=n * dt, dt=dt, solver=solver)
                sol.states["IT"].sum().backward()
            out[label] = run
        return out
    return setup


BENCHMARKS = [
    Benchmark("conv4 delayed, forward", conv_setup(6.0, False, False), {"dynode Euler": 1.05},
              note="compute-bound; batch 32, 20 steps"),
    Benchmark("conv4 delayed, fwd+bwd", conv_setup(6.0, True, False), {"dynode Euler": 1.05}),
    Benchmark("rate4 delayed, forward", rate_setup(2.0, False, False), {"dynode Euler": 1.3},
              note="overhead-bound; batch 16, 1000 steps"),
    Benchmark("rate4 delayed, fwd+bwd", rate_setup(2.0, True, False), {"dynode Euler": 1.3}),
    Benchmark("conv4 no delay, forward", conv_setup(0.0, False, True), {"dynode Euler": 1.05}),
    Benchmark("conv4 no delay, fwd+bwd", conv_setup(0.0, True, True), {"dynode Euler": 1.05}),
    Benchmark("rate4 no delay, forward", rate_setup(0.0, False, True), {"dynode Euler": 1.3}),
    Benchmark("rate4 no delay, fwd+bwd", rate_setup(0.0, True, True), {"dynode Euler": 1.3}),
    Benchmark("conv4 learnt, Euler fwd+bwd", learnt_setup("euler", 2.0, 20), {"dynode learnt tau, delays": 1.10},
              note="recurrent delays 6 ms on the grid; batch 32, 20 steps"),
    Benchmark("conv4 learnt, RK4 fwd+bwd", learnt_setup("rk4", 1.0, 20), {"dynode learnt tau, delays": 1.10},
              note="dt 1 ms: Hermite reads at the half steps"),
]
