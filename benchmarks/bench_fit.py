"""The fit target of issue 24: fitting one area's time constants, delay and normalisation to the
three Groen experiments converges within 5 minutes on a quiet 2-core machine.

The data: Groen et al.'s DN model equations (:func:`dynode.analysis.dn.dn_model`, their start
values :data:`~dynode.analysis.dn.DN_START`) for every condition of the three experiments
(5 contrasts, 6 durations, 6 intervals: 17 conditions), epochs -100 to 1200 ms at 512 Hz
(``examples/fit_recovery.py``). The model: :func:`dynode.fit.dn_network` for V1, started away
from those values (tau1 8 ms, shift 45 ms, tau2 120 ms, sigma 0.3); fitted: its 4 time
constants, the delay, sigma, gain and offset (Euler, dt 1 ms, L-BFGS, default tol/patience).

Prints the progress lines, then iterations, wall time, status, R^2 and the recovered values
against the DN values. An end-to-end target (one run, minutes), not a side-by-side row, so
``BENCHMARKS`` is empty and ``run.py`` skips it; run it directly::

    OMP_NUM_THREADS=1 python benchmarks/bench_fit.py [--steps 100] [--quick]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))

from fit_recovery import dn_recordings  # noqa: E402

from dynode.analysis.dn import DN_START  # noqa: E402
from dynode.fit import dn_network, fit  # noqa: E402

BENCHMARKS: list = []
TARGET_S = 300.0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="fewer conditions and a shorter epoch")
    args = ap.parse_args(argv)
    ds = dn_recordings({"V1": DN_START}, quick=args.quick)
    print(f"{ds.sizes['condition']} conditions x {ds.sizes['time']} samples at {ds.attrs['sampling_rate_hz']:g} Hz; "
          f"torch threads {torch.get_num_threads()}", flush=True)
    net = dn_network(["V1"], tau1=8.0, shift=45.0, tau2=120.0, sigma=0.3)
    t0 = time.perf_counter()
    res = fit(net, ds, params=["tau", "delay", "sigma", "gain", "offset"], steps=args.steps, log_every=5)
    wall = time.perf_counter() - t0
    print(res.summary())
    p = res.params
    print(f"iterations {res.iterations}, wall {wall:.1f} s ({wall / max(res.iterations, 1):.2f} s/iteration), "
          f"status {res.status}; target: converged within {TARGET_S:.0f} s -> "
          f"{'met' if res.status == 'converged' and wall <= TARGET_S else 'NOT met'}")
    print(f"recovered: shift {DN_START['shift']:g} -> delay {p['delay:V1_l1->V1_l2']:.2f} ms; "
          f"tau1 {DN_START['tau1']:g} "
          f"-> {p['tau:V1_l1']:.2f} / {p['tau:V1_l2']:.2f} ms; tau2 {DN_START['tau2']:g} -> pool tau "
          f"{p['tau:V1_pool']:.1f} ms; output tau {p['tau:V1']:.2f} ms; sigma {p['sigma:V1']:.3f}; "
          f"R^2 {res.r2['V1']:.4f}")
    return {"wall_s": wall, **res.to_dict()}


if __name__ == "__main__":
    main()
