"""Reaction times of the demo model: a speeded classification read out by accumulators.

The demo's trained dyrcnn (``dynode demo``, or ``dynode train`` of its config) gets one
accumulator per class on its trained readout (``dn.models.add_accumulator``: ``tau_a dA_k =
(softmax_k(readout(IT)) - leak A_k) dt + nu sqrt(2 tau_a) dW_k``); the decision is the first
accumulator to reach the bound ``B``. The reaction-time experiment
(``dynode.experiments.reaction_time_experiment``, the ``reaction_time`` kind of
``dynode.stimuli.EXPERIMENTS``) shows each test image at five contrasts until a deadline, for
four noise levels and five bounds, and the analysis gives median RT, RT quantiles and
accuracy per condition (undecided trials flagged, never a fake number)::

    dynode demo --out demo                      # trains the model (about 4 min on one core)
    python examples/reaction_time.py --checkpoint demo/train/last.pt --out reaction_time.png

The same runs from a run config: ``experiment: {protocols: [reaction_time], dt: 4.0,
background: blank, reaction_time: {n_images: 24, trials: 8}}`` with ``model.weights`` the
checkpoint, then ``dynode experiment CONFIG``. Measured (docs/figures/reaction_time.png; the
demo model at test accuracy 0.96, noise 0.1): median RT falls with contrast (bound 1: 254 ms
at contrast 0.0625, 210 ms at 1) while accuracy rises (0.91 to 0.99); raising the bound from
0.5 to 3 slows the responses (163 to 613 ms at contrast 0.0625) and makes them more accurate
(0.59 to 0.97).
"""

from __future__ import annotations

import argparse

from dynode.analysis import analyze_reaction_times, flags_in_tables, format_reaction_times, plot_reaction_times
from dynode.config import first_labelled, model_and_data, run_config
from dynode.demo import demo_config
from dynode.experiments import reaction_time_experiment


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="the demo's trained weights (OUT/train/last.pt)")
    ap.add_argument("--out", default="reaction_time.png", help="the figure (PNG)")
    ap.add_argument("--archive", default=None, help="also write the trials to this zarr archive")
    ap.add_argument("--images", type=int, default=24, help="test images (default 24)")
    ap.add_argument("--trials", type=int, default=8, help="noisy repeats per image and contrast (default 8)")
    ap.add_argument("--quick", action="store_true", help="the quick demo's model (dynode demo --quick), two "
                    "noise levels and two bounds (a smoke test)")
    args = ap.parse_args(argv)
    data = demo_config(quick=args.quick).model_dump(mode="json")
    data["model"]["weights"] = args.checkpoint
    net, _, test = model_and_data(run_config(data))
    images, labels = first_labelled(test, args.images)
    # dt 4 ms: the model's own step (every delay is a multiple of it); the images are normalised
    # to the training set's mean, so 0 is the mean-grey screen
    small = dict(noises=[0.0, 0.1], bounds=[0.5, 1.0], deadline=400.0) if args.quick else {}
    ds = reaction_time_experiment(net, images, labels, args.archive, dt=4.0, trials=args.trials,
                                  background="blank", overwrite=True, **small)
    with flags_in_tables():  # the table lists every flagged value once: no Python warning lines
        res = analyze_reaction_times(ds)
    print(format_reaction_times(res))
    print(f"figure: {plot_reaction_times(res, args.out)}")
    return res


if __name__ == "__main__":
    main()
