"""Issue 3 rows: accuracy per cost of Euler / RK4 / Dopri5, and dynode Dopri5 vs the libraries.

(a) ``conv4 accuracy``: the 4-layer conv field with 6 ms recurrent delays (batch 1,
    3x32x32, tau 5 ms, 24 ms). Error = max over populations, time (2 ms grid), units of
    ``|r - r_ref|`` divided by ``max |r_ref|``; reference Dopri5(rtol=1e-7, atol=1e-9).
    Each contender's value is the number of vector-field evaluations (nfe) it needs for a
    relative error of 1e-3 (log-log interpolation of its sweep; Euler extrapolated with
    slope 1). The sweep and the error at which Dopri5 becomes cheaper than Euler are printed
    (stderr) when the row runs.
(e) ``conv4 pulse accuracy``: the same field with a smooth ``phi`` (softplus) under
    ``Pulse(onset=4, duration=12)`` (the image is shown from 4 to 16 ms: jumps on the grid,
    with 6 ms delays), Euler, Heun, RK4 (dt 2 .. 0.25 ms), Dopri5 and Tsit5 (rtol 1e-1 ..
    1e-5): nfe for a relative error of 1e-3, and the sweep (error against nfe) printed. The
    case issue 10 was about: before the one-sided history RK4 was second order here. (With
    relu, units crossing zero make ``dr/dt`` non-smooth and RK4 measures about order 2 with
    or without the pulse: ``python bench_solvers.py --pulse --relu``.)
(b) ``rate ODE dopri5``: ``rate_network(rec_delay=0)`` (4 x 64 units, batch 32, 50 ms,
    float32, no grad), Dopri5 at rtol 1e-6 / atol 1e-8 in dynode, torchdiffeq and torchode,
    saving only the end state. Target: dynode at least as fast as each library.
(c) ``rate DDE dopri5``: the same with 2 ms recurrent delays (the libraries integrate
    segment by segment through dynode's adapters). Informational.
(d) ``staggered bumps``: 8 samples of a leaky population (tau 5 ms, 8 units), sample ``i``
    driven by a narrow Gaussian bump centred at ``10 + 10 i`` ms (100 ms, rtol 1e-6,
    dt_max 2 ms): where torchode's per-sample step sizes pay off. Informational.

Run: ``python benchmarks/run.py solvers --repeats 3 --threads 1`` (on the shared 2-core
machine, two threads made the libraries' BLAS-backed stage sums 10-30x slower while dynode's
small foreach ops were unaffected), or ``python benchmarks/bench_solvers.py`` for the
accuracy sweep only.
"""

from __future__ import annotations

import functools
import math
import sys

import torch

import dynode as dn
from dynode.solvers import RK4, Dopri5, Euler, Heun, TorchDiffEq, TorchODE, Tsit5
from dynode.stimuli import Pulse
from harness import Benchmark
from nets import conv4_network, rate_network

TARGET_ERROR = 1e-3


# -- (a) accuracy per cost ------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def accuracy_sweep(quick: bool = False, pulse: bool = False,
                   relu: bool = False) -> dict[str, list[tuple[float, int, float]]]:
    """``{solver: [(setting, nfe, relative max error)]}`` on the delayed conv4 field, under a
    constant image (relu) or (``pulse``) the image shown from 4 to 16 ms (softplus unless ``relu``)."""
    net = conv4_network(phi="softplus" if pulse and not relu else "relu")
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t_end, grid = (12.0, 2.0) if quick else (24.0, 2.0)
    stim = Pulse(onset=4.0, duration=12.0, value=x) if pulse else x
    with torch.no_grad():
        ref = dn.integrate(net, stim, t_end=t_end, solver=Dopri5(rtol=1e-7, atol=1e-9), save_at=grid)
    scale = max(float(v.abs().max()) for v in ref.states.values())
    adaptive = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
    runs = {"euler": [(Euler(), d) for d in (2.0, 1.0, 0.5, 0.25)],
            "rk4": [(RK4(), d) for d in (2.0, 1.0, 0.5)],
            "dopri5": [(Dopri5(rtol=r, atol=r * 1e-2), r) for r in adaptive]}
    if pulse:
        runs = {"euler": runs["euler"], "heun": [(Heun(), d) for d in (2.0, 1.0, 0.5, 0.25)],
                "rk4": [(RK4(), d) for d in (2.0, 1.0, 0.5, 0.25)], "dopri5": runs["dopri5"],
                "tsit5": [(Tsit5(rtol=r, atol=r * 1e-2), r) for r in adaptive]}
    if quick:
        runs = {k: v[:3] for k, v in runs.items()}
    out: dict[str, list[tuple[float, int, float]]] = {}
    for name, items in runs.items():
        rows = []
        for solver, setting in items:
            dt = None if solver.adaptive else setting
            with torch.no_grad():
                sol = dn.integrate(net, stim, t_end=t_end, solver=solver, dt=dt, save_at=grid)
            err = max(float((sol.states[k] - ref.states[k]).abs().max()) for k in ref.states) / scale
            rows.append((setting, sol.stats.nfe, err))
        out[name] = rows
    return out


def nfe_at(rows: list[tuple[float, int, float]], error: float, slope: float | None = None) -> float:
    """nfe needed for ``error``: log-log interpolation between sweep points; outside the
    sweep, extrapolation with ``nfe ~ error^(-1/slope)`` if ``slope`` is given, else the
    nearest end (an adaptive solver cannot get cheaper than its loosest run)."""
    pts = sorted((e, n) for _, n, e in rows if e > 0 and math.isfinite(e))
    le = math.log(error)
    for (e0, n0), (e1, n1) in zip(pts, pts[1:]):
        if e0 <= error <= e1:
            w = (le - math.log(e0)) / (math.log(e1) - math.log(e0))
            return math.exp(math.log(n0) + w * (math.log(n1) - math.log(n0)))
    (e_lo, n_lo), (e_hi, n_hi) = pts[0], pts[-1]
    if slope is None:
        return float(n_lo if error < e_lo else n_hi)
    e_ref, n_ref = (e_lo, n_lo) if error < e_lo else (e_hi, n_hi)
    return n_ref * (e_ref / error) ** (1.0 / slope)


def crossover(sweep) -> float:
    """The largest relative error at which Dopri5 needs no more evaluations than Euler."""
    errs = [10 ** (-k / 20) for k in range(20, 121)]  # 1e-1 .. 1e-6
    for e in errs:
        if nfe_at(sweep["dopri5"], e) <= nfe_at(sweep["euler"], e, slope=1.0):
            return e
    return math.nan


def observed_order(rows) -> str:
    """Observed orders between consecutive fixed steps (error ratio over dt ratio, log-log)."""
    return " / ".join(f"{math.log(e0 / e1) / math.log(s0 / s1):.2f}"
                      for (s0, _, e0), (s1, _, e1) in zip(rows, rows[1:]) if e0 > 0 and e1 > 0)


def format_sweep(sweep) -> str:
    lines = ["| solver | dt (ms) / rtol | nfe | rel. max error |", "| --- | ---: | ---: | ---: |"]
    for name, rows in sweep.items():
        for setting, nfe, err in rows:
            lines.append(f"| {name} | {setting:g} | {nfe} | {err:.3g} |")
    fixed = [k for k in sweep if k in ("euler", "heun", "rk4")]
    lines.append("\nobserved orders: " + "; ".join(f"{k} {observed_order(sweep[k])}" for k in fixed))
    lines.append(f"\nDopri5 needs no more evaluations than Euler for relative errors below "
                 f"{crossover(sweep):.3g}; nfe at {TARGET_ERROR:g}: " +
                 ", ".join(f"{k} {nfe_at(v, TARGET_ERROR, 1.0 if k == 'euler' else None):.0f}"
                           for k, v in sweep.items()))
    return "\n".join(lines)


def _setup_accuracy(quick: bool, pulse: bool = False):
    sweep = accuracy_sweep(quick, pulse)
    print(format_sweep(sweep), file=sys.stderr)
    return {name: (lambda rows=rows, name=name: nfe_at(rows, TARGET_ERROR, 1.0 if name == "euler" else None))
            for name, rows in sweep.items()}


# -- (b), (c) dynode Dopri5 vs the libraries ------------------------------------------------------
def _setup_libs(rec_delay: float, lib: str):
    def setup(quick: bool):
        net = rate_network(rec_delay=rec_delay)
        x = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
        t_end = 20.0 if quick else 50.0
        tol = dict(rtol=1e-6, atol=1e-8)
        other = TorchDiffEq("dopri5", **tol) if lib == "torchdiffeq" else TorchODE("dopri5", **tol)

        def run(solver):
            def go():
                with torch.no_grad():
                    return dn.integrate(net, x, t_end=t_end, solver=solver, save_at=[t_end])
            return go
        return {f"{lib} dopri5": run(other), "dynode Dopri5": run(Dopri5(**tol))}
    return setup


class StaggeredBumps(dn.stimuli.Stimulus):
    """Sample ``i``: ``5 exp(-((t - c_i) / width)^2)`` on every unit (smooth: no breakpoints)."""

    breakpoints = ()

    def __init__(self, centres, width: float, units: int):
        self.centres = torch.as_tensor(centres, dtype=torch.get_default_dtype())[:, None]
        self.width, self.units = width, units

    def __call__(self, t: float):
        return (5 * torch.exp(-((t - self.centres) / self.width) ** 2)).expand(-1, self.units)

    def to(self, device=None, dtype=None):
        new = StaggeredBumps([], self.width, self.units)
        new.centres = self.centres.to(device=device, dtype=dtype)
        return new


def _setup_per_sample(quick: bool):
    n = 4 if quick else 8
    net = dn.Network()
    net.add_input("x", shape=(8,))
    net.add_population("r", shape=(8,), tau=5.0, phi="identity")
    net.connect("x", "r")
    stim = StaggeredBumps([10.0 + 10 * i for i in range(n)], 0.5, 8)
    tol = dict(rtol=1e-6, atol=1e-8, dt_max=2.0)
    t_end = 10.0 * (n + 2)

    def run(solver):
        def go():
            with torch.no_grad():
                return dn.integrate(net, stim, t_end=t_end, solver=solver, save_at=[t_end])
        return go
    return {"torchode joint": run(TorchODE(**tol)), "torchode per_sample": run(TorchODE(per_sample=True, **tol)),
            "dynode Dopri5": run(Dopri5(**tol))}


BENCHMARKS = [
    Benchmark("conv4 accuracy: nfe for 1e-3 rel. error", _setup_accuracy, metric="value",
              target={"dopri5": 1.0},
              note="value = evaluations needed for a relative max error of 1e-3; first = Euler"),
    Benchmark("conv4 pulse accuracy: nfe for 1e-3 rel. error", functools.partial(_setup_accuracy, pulse=True),
              metric="value", target={"rk4": 1.0},
              note="softplus, image shown 4-16 ms, 6 ms delays; value = evaluations for a relative max error of 1e-3"),
    Benchmark("rate ODE dopri5 vs torchdiffeq", _setup_libs(0.0, "torchdiffeq"),
              target={"dynode Dopri5": 1.0}, note="rtol 1e-6, atol 1e-8, batch 32, 50 ms"),
    Benchmark("rate ODE dopri5 vs torchode", _setup_libs(0.0, "torchode"),
              target={"dynode Dopri5": 1.0}, note="rtol 1e-6, atol 1e-8, batch 32, 50 ms"),
    Benchmark("rate DDE dopri5 vs torchode", _setup_libs(2.0, "torchode"),
              note="2 ms delays: libraries go segment by segment (informational)"),
    Benchmark("staggered bumps: per-sample steps", _setup_per_sample,
              note="8 samples, bump i at 10 + 10 i ms (informational)"),
]


if __name__ == "__main__":
    print(format_sweep(accuracy_sweep("--quick" in sys.argv, "--pulse" in sys.argv, "--relu" in sys.argv)))
