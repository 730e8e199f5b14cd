"""Parameter recovery with dn.fit: recordings made by Groen et al.'s delayed-normalisation (DN)
model equations (:func:`dynode.analysis.dn.dn_model`, their start values, the Groen 2022
conditions, 512 Hz) are fitted by a dynode network with the DN model's structure
(:func:`dynode.fit.dn_network`) started from other values; the figure shows data and fit per
area and experiment.

    python examples/fit_recovery.py --out runs/fit_recovery          # the three experiments, V1 and V2
    python examples/fit_recovery.py --out /tmp/fr --quick            # two areas, fewer conditions
    dynode fit examples/configs/fit_dn.yaml                          # the same fit from a config

Writes ``recordings.nc`` (the DN data in the layout of :mod:`dynode.recordings`), ``fit.json``
and ``fit.png`` to ``--out``. The second area (V2) has a later onset (shift 80 ms) and a
slower normalisation pool (tau2 120 ms), as the summation windows lengthen up the hierarchy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dynode.analysis.dn import DN_START, dn_model, pulse_envelope
from dynode.fit import dn_network, fit, plot_fit
from dynode.recordings import make_recordings
from dynode.stimuli import GROEN2022

AREAS = {"V1": DN_START, "V2": {**DN_START, "shift": 80.0, "tau2": 120.0}}
"""The DN parameters (ms) that make each area's recordings."""


def groen_conditions(quick: bool = False) -> list[dict]:
    """The Groen 2022 conditions (onset at 0 ms); ``quick``: two of each series."""
    g = GROEN2022
    pick = (lambda xs: (xs[1], xs[-2])) if quick else (lambda xs: xs)
    return ([dict(experiment="contrast", contrast=c, duration=g["contrast"]["duration"], isi=0.0, onset=0.0)
             for c in pick(g["contrast"]["contrasts"])]
            + [dict(experiment="duration", contrast=1.0, duration=d, isi=0.0, onset=0.0)
               for d in pick(g["duration"]["durations"])]
            + [dict(experiment="repetition", contrast=1.0, duration=g["repetition"]["duration"], isi=i, onset=0.0)
               for i in pick(g["repetition"]["isis"])])


def dn_recordings(areas=AREAS, *, quick: bool = False, rate_hz: float = 512.0):
    """Recordings of the DN model: epochs -100 to 1200 ms around the onset at ``rate_hz``."""
    stop = 700.0 if quick else GROEN2022["epoch_ms"] - GROEN2022["baseline_ms"]
    t = np.arange(-GROEN2022["baseline_ms"], stop, 1000.0 / rate_hz)
    conds = groen_conditions(quick)
    stim = np.stack([pulse_envelope(t, contrast=c["contrast"], duration=c["duration"],
                                    isi=c["isi"] if c["experiment"] == "repetition" else None) for c in conds])
    data = {a: dn_model(stim, t, p).numpy() for a, p in areas.items()}
    return make_recordings(data, t, conds, units="a.u.", source="dynode.analysis.dn.dn_model (Groen et al. 2022)")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/fit_recovery")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--quick", action="store_true", help="fewer conditions and a shorter epoch")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = dn_recordings(quick=args.quick)
    ds.to_netcdf(out / "recordings.nc", engine="scipy")
    net = dn_network(list(AREAS), tau1=8.0, shift=45.0, tau2=120.0, sigma=0.3)  # not the DN start values
    t0 = time.perf_counter()
    result = fit(net, ds, params=["tau", "delay", "sigma", "gain", "offset"], steps=args.steps, log_every=5)
    print(result.summary())
    print(f"fitted in {time.perf_counter() - t0:.1f} s")
    for a, p in AREAS.items():
        print(f"{a}: DN shift {p['shift']:g} ms -> fitted delay {result.params[f'delay:{a}_l1->{a}_l2']:.1f} ms; "
              f"DN tau1 {p['tau1']:g} ms -> fitted {result.params[f'tau:{a}_l1']:.2f} / "
              f"{result.params[f'tau:{a}_l2']:.2f} ms; DN tau2 {p['tau2']:g} ms -> fitted pool tau "
              f"{result.params[f'tau:{a}_pool']:.1f} ms; R^2 {result.r2[a]:.3f}")
    (out / "fit.json").write_text(json.dumps(result.to_dict(), indent=1))
    plot_fit(result, ds, out / "fit.png", title="DN model data (grey) and the dynode fit (colour)")
    print(f"figure: {out / 'fit.png'}")
    return result.to_dict()


if __name__ == "__main__":
    main()
