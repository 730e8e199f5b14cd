"""One model, several solvers: how much of the response is the physics and how much the step?

Integrates the same dyrcnn under a 40 ms image pulse with Euler, Heun and RK4 at dt = 2 ms and
with adaptive Dopri5, prints the deviation of each from a tight reference, and plots IT's
population time course. Run::

    python examples/compare_solvers.py [--out compare_solvers.png]
"""

from __future__ import annotations

import argparse

import torch

import dynode as dn
from dynode.stimuli import Pulse


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="compare_solvers.png")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    net = dn.models.dyrcnn(depth=4, input_shape=(1, 16, 16), num_classes=6, width=0.25, phi="relu")
    stim = Pulse(0.0, 40.0, {"image": torch.randn(2, 1, 16, 16)})
    solvers = {"euler": dn.solvers.Euler(), "heun": dn.solvers.Heun(), "rk4": dn.solvers.RK4(),
               "dopri5": dn.solvers.Dopri5(rtol=1e-4, atol=1e-6)}
    with torch.no_grad():
        ref = dn.integrate(net, stim, t_end=60.0, solver=dn.solvers.Dopri5(rtol=1e-8, atol=1e-10), save_at=2.0)
        runs = {name: dn.integrate(net, stim, t_end=60.0, dt=2.0, solver=s, save_at=2.0) for name, s in solvers.items()}
    errors = {}
    for name, sol in runs.items():
        err = max((sol.states[p] - ref.states[p]).abs().max().item() for p in ref.states)
        errors[name] = err
        print(f"{name:>7}: {sol.stats.nfe:4d} evaluations, max |error| {err:.2e}")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, sol in runs.items():
            ax.plot(sol.ts, sol.states["IT"].mean(dim=(1, 2, 3, 4)), label=name)
        ax.plot(ref.ts, ref.states["IT"].mean(dim=(1, 2, 3, 4)), "k:", label="reference")
        ax.set(xlabel="time (ms)", ylabel="IT mean rate", title="one model, four solvers")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        print(f"wrote {args.out}")
    return errors


if __name__ == "__main__":
    main()
