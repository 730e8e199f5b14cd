"""``dynode demo``: the whole workflow on the embedded default, in a few minutes on a CPU.

1. the generated image task (Gabors at four orientations, checkerboards, 1/f noise; no files);
2. a small four-area ``dyrcnn`` (V1-V2-V4-IT) on cortical time (``timing="cortex"``: the
   retina and thalamus delay the image by 48 ms, each feed-forward stage adds 12-20 ms, time
   constants 10-30 ms up the hierarchy) with delayed divisive normalization in every area and
   no biases, trained by BPTT over 160 ms, read out over IT's reaction window;
3. the three experiments of Groen et al. (2022) (contrast, duration, repetition) on test
   images around their mean luminance, each started from the network's settled state on
   that background and run to 1.2 s after the onset, streamed to zarr archives;
4. the analysis by Groen's definitions (summation per duration pair, sustained/peak, ISI
   recovery, time to peak and half-rise latency per contrast, half-peak c50) and figures.

Everything lands in the output folder: ``train/`` (log, checkpoint), ``experiments/``
(archives), ``figures/`` (PNG) and ``summary.json``. The workflow itself is
:func:`~dynode.compare.run_workflow` on a :class:`~dynode.config.RunConfig` (:func:`demo_config`),
which ``dynode compare`` runs once per model variant.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from dynode.analysis import flags_in_tables, format_summary
from dynode.compare import run_workflow
from dynode.config import run_config
from dynode.errors import ConfigurationError

__all__ = ["run_demo", "run_workflow", "demo_config", "DEMO_MODEL", "QUICK_NOTE"]

DEMO_MODEL = dict(depth=4, width=0.5, timing="cortex", dt=4.0, steps=40, recurrence_delay=4.0,
                  readout_at="mean", phi="relu", bias=False,
                  normalization={"tau": 100.0, "delay": 4.0, "pool": "channel", "weight": 30.0})
"""The demo's model: ``dyrcnn`` options (see :func:`dynode.models.dyrcnn`). Its timing is the
cortex's (``timing="cortex"``, :data:`~dynode.models.zoo.CORTICAL_TIMING`: the image reaches V1
after 48 ms of retina and thalamus, V2 at 60, V4 at 80, IT at 92 ms; time constants 10, 15,
20, 30 ms up the hierarchy). Training runs 160 ms (40 steps of 4 ms; every delay, the
recurrence's 4 ms included, is a multiple of the training and the experiments' steps) and
reads IT averaged over its reaction window, from 122 ms (the image's arrival in IT plus IT's
time constant) to the end. Each area is
divided by a pool of its own mean rate over channels (``tau`` 100 ms, read 4 ms late), with a
pool gain (``weight`` 30 times the mean rate, learnt from there) large enough that at full
contrast the pool, not the semi-saturation, sets the sustained response: the pool gives the
transients, the subadditive summation, the repetition suppression that recovers over hundreds
of ms, and the shorter latency at high contrast. Without biases the blank screen is a
zero-activity rest state. (Measured: a gain of 100 or 300 trains to onset-only responses
with activity that lingers for seconds after the stimulus in V4/IT; 30 does not.)"""


def demo_config(quick: bool = False, epochs: int | None = None, seed: int = 0, *, small: bool = False):
    """The demo as a :class:`~dynode.config.RunConfig` (``quick``: the same pipeline in seconds;
    ``small``: half the channels and training images, three epochs and two test images, the
    default of ``dynode compare``, which trains twelve such models)."""

    model = dict(DEMO_MODEL, width=0.25 if quick or small else DEMO_MODEL["width"])
    return run_config({
        "output": "dynode-demo",
        "model": {"name": "dyrcnn", "options": model},
        "data": {"name": "generated", "n_train": 96 if quick else 600 if small else 1200,
                 "n_test": 48 if quick else 300, "size": 16, "seed": seed},
        # lr 2e-3: four epochs of the 160 ms runs reach 0.98 test accuracy (1e-3: 0.87);
        # rho(W_rec) <= 0.8 after every step: trained on 160 ms, the network must stay stable
        # over the experiments' 1.3 s epochs and the settling before them
        "training": {"epochs": (1 if quick else 3 if small else 4) if epochs is None else epochs, "batch_size": 32,
                     "lr": 2e-3, "grad_clip": 1.0, "energy_weight": 2e-4, "max_spectral_radius": 0.8,
                     # compare's '+tau' variants learn each area's tau: Adam steps of 0.05 on its raw
                     # parameter (about 2 % of the log range from tau/2 to 2 tau) let it move in 3 epochs
                     "time_lr": 0.05, "seed": seed},
        "experiment": {"n_images": 1 if quick else 2 if small else 3, "dt": 2.0 if quick else 1.0,
                       # the images are normalised to the training set's mean: 0 is its mean-grey screen
                       "record": {"reduce": "mean"}, "background": "blank", "onset": 100.0,
                       "settle_max": 400.0 if quick else 3000.0},
    })


QUICK_NOTE = ("--quick trains 1 epoch of 96 images, too little to learn the task (test accuracy near chance, "
              "1/6): its numbers and figures show the layout of the results, not a trained model's dynamics; "
              "leave out --quick for those")
"""What ``--quick`` says first. Measured (2-core machine under load, one thread): 1 epoch of 96
images ends at 0.17-0.42 test accuracy whatever the learning rate or batch (1e-2, 2e-3; 16,
32); 4 times as many images (training ~4 times as long, most of a quick demo) 0.35-0.54; the
full demo's 4 epochs of 1200 reach 0.96."""


def demo_outputs(out) -> list[Path]:
    """What a demo writes into ``out`` that a new demo would replace."""
    out = Path(out)
    return [out / "train" / "last.pt", out / "experiments", out / "figures", out / "summary.json"]


def run_demo(out: Path, *, quick: bool = False, epochs: int | None = None, seed: int = 0,
             overwrite: bool = False, resume: bool = False, log=print) -> dict:
    """Run the demo into ``out``; returns a dict with the accuracy, timings and the summary.
    An earlier demo's outputs in ``out`` are replaced with ``overwrite``, its training
    continued with ``resume``; otherwise they are refused before anything runs. The analysis
    flags are the printed table's footnotes, not also Python warnings
    (:func:`~dynode.analysis.flags_in_tables`); other warnings are shown."""

    cfg = demo_config(quick, epochs, seed)
    out = Path(out)
    found = [str(p) for p in demo_outputs(out) if p.exists()]
    if found and not (overwrite or resume):
        raise ConfigurationError(f"{', '.join(found)} from an earlier demo exist; pass overwrite=True to "
                                 "replace them or resume=True to continue, or choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    log(f"dynode demo: the generated task, dyrcnn with divisive normalization, trained for "
        f"{cfg.training.epochs} epoch(s); then the Groen et al. (2022) experiments at dt "
        f"{cfg.experiment.dt:g} ms")
    if quick:
        log(QUICK_NOTE)
    with flags_in_tables():  # the table below shows them
        result = run_workflow(cfg, out, overwrite=overwrite, resume=resume, log=log)
    log("\nGroen et al. (2022) in silico, per area:")
    log(format_summary(result["summary"]))
    log(f"\nfigures: {', '.join(result['figures'].values())}")
    result["total_seconds"] = time.perf_counter() - t_start
    result["settings"] = json.loads(cfg.model_dump_json())
    saved = {k: v for k, v in result.items() if k not in ("analysis", "network")}
    (out / "summary.json").write_text(json.dumps(saved, indent=2, default=str))
    log(f"summary: {out / 'summary.json'}; total {result['total_seconds']:.0f} s")
    return result
