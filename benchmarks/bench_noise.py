"""Noise in the dynamics (issue 25): a noisy run against the same run without noise.

* conv4 (the compute-bound 4-layer conv field of ``bench_core``: batch 32, 3x32x32, dt 2 ms,
  tau 5 ms, 20 steps, recurrence delayed 6 ms), every population noisy (sigma 0.1), Euler
  (Euler-Maruyama) and Heun (stochastic Heun), forward under ``torch.no_grad``.
* rate4 (the overhead-bound field: 4 x 64 units, batch 16, dt 0.5 ms, 1000 steps): the noise's
  per-step kernel launches against a small state.

What the rows report (no target; issue 25 asks for the numbers): a noisy step draws one normal
per state element (amortised over the Brownian tree: ``2^j`` steps cost ``2^j - 1`` bridges and
one root) and adds ``g dW`` to the state. ``noise dW only`` times the Brownian increments alone
(the path, no network) for the same state and steps; ``torch.randn, same count`` the same number
of normals from torch's stateful generator (which is neither batch-independent nor consistent
across ``dt``): their ratio is the price of the counter-based path.
"""

from __future__ import annotations

import math

import torch

import dynode as dn
from dynode.brownian import BrownianPath, sample_keys
from harness import Benchmark
from nets import conv4_network, rate_network


def _setup(make_net, x, steps: int, dt: float, solver: str):
    quiet, loud = make_net(), make_net()
    for pop in loud.populations.values():
        pop.noise = 0.1
    t_end = steps * dt
    shapes = {n: p.shape for n, p in loud.populations.items()}
    batch = x.shape[0]

    def run(net, seed):
        def go():
            with torch.no_grad():
                dn.integrate(net, x, t_end=t_end, dt=dt, solver=solver, seed=seed)
        return go

    def path_only():
        path = BrownianPath(sample_keys(0, batch), shapes, dt, torch.float32)
        for n in range(steps):
            path.increment(n)

    numel = batch * sum(math.prod(s) for s in shapes.values())

    def randn_only():
        for _ in range(steps):
            torch.randn(numel)

    return {f"dynode {solver}, no noise": run(quiet, None), f"dynode {solver}, noise": run(loud, 0),
            "noise dW only": path_only, "torch.randn, same count": randn_only}


def conv_setup(solver: str):
    def setup(quick: bool):
        batch, steps = (8, 5) if quick else (32, 20)
        torch.manual_seed(0)
        x = torch.randn(batch, 3, 32, 32)
        return _setup(lambda: conv4_network(rec_delay=6.0), x, steps, 2.0, solver)
    return setup


def rate_setup(solver: str):
    def setup(quick: bool):
        steps = 100 if quick else 1000
        torch.manual_seed(0)
        return _setup(lambda: rate_network(rec_delay=2.0), torch.randn(16, 64), steps, 0.5, solver)
    return setup


BENCHMARKS = [
    Benchmark("conv4 noise, Euler-Maruyama fwd", conv_setup("euler"),
              note="sigma 0.1 on every population; batch 32, 20 steps"),
    Benchmark("conv4 noise, stochastic Heun fwd", conv_setup("heun")),
    Benchmark("rate4 noise, Euler-Maruyama fwd", rate_setup("euler"), {},
              note="overhead-bound: reported, no target"),
]
