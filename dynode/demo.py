"""``dynode demo``: the whole workflow on the embedded default, in a few minutes on a CPU.

1. the generated image task (Gabors at four orientations, checkerboards, 1/f noise; no files);
2. a small four-area ``dyrcnn`` (V1-V2-V4-IT, delays 6 ms recurrent) trained by BPTT;
3. the three experiments of Groen et al. (2022) (contrast, duration, repetition) on test
   images, streamed to zarr archives;
4. the analysis (summation ratios, ISI recovery, peak latencies, c50) and its figures.

Everything lands in the output folder: ``train/`` (log, checkpoint), ``experiments/``
(archives), ``figures/`` (PNG) and ``summary.json``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

__all__ = ["run_demo", "format_summary", "demo_settings"]


def demo_settings(quick: bool = False, epochs: int | None = None, seed: int = 0) -> dict:
    """The demo's settings (``quick``: a smoke test of the same pipeline in seconds)."""
    return dict(
        n_train=96 if quick else 1200, n_test=48 if quick else 300, size=16,
        width=0.25 if quick else 0.5, steps=5 if quick else 10,
        epochs=epochs if epochs is not None else (1 if quick else 4), batch_size=32, lr=1e-3,
        n_images=1 if quick else 3, dt=2.0 if quick else 1.0, onset=200.0,
        kinds=("contrast", "duration", "repetition"), seed=seed,
    )


def _fmt(x, spec=".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def format_summary(summary: dict) -> str:
    """A plain-text table of the per-population numbers of :func:`dynode.analysis.summarize`."""
    lines = [f"{'area':<6} {'sum. ratio':>10} {'window ms':>9} {'ISI recovery (short..long)':>27} "
             f"{'peak ms':>8} {'asym/peak':>9} {'c50':>6}"]
    for pop, d in summary.items():
        rec = d.get("isi_recovery") or {}
        rec_s = " ".join(_fmt(rec[k]) for k in sorted(rec)) if rec else "-"
        lines.append(f"{pop:<6} {_fmt(d.get('summation_ratio_mean')):>10} "
                     f"{_fmt(d.get('summation_window_ms'), '.0f'):>9} {rec_s:>27} "
                     f"{_fmt(d.get('peak_latency_ms'), '.0f'):>8} {_fmt(d.get('asymptote_to_peak')):>9} "
                     f"{_fmt(d.get('c50')):>6}")
    return "\n".join(lines)


def run_demo(out: Path, *, quick: bool = False, epochs: int | None = None, seed: int = 0,
             overwrite: bool = False, log=print) -> dict:
    """Run the demo into ``out``; returns a dict with the accuracy, timings and the summary."""
    import dynode as dn
    from dynode import analysis
    from dynode.experiments import groen2022_experiments
    from dynode.stimuli.generated import generated_task
    from dynode.train import Trainer, TrainingConfig

    s = demo_settings(quick, epochs, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    torch.manual_seed(seed)

    task = generated_task(s["n_train"], s["n_test"], size=s["size"], seed=seed)
    train = (task.normalize(task.x_train), task.y_train)
    test = (task.normalize(task.x_test), task.y_test)
    net = dn.models.dyrcnn(depth=4, input_shape=task.image_shape, num_classes=task.num_classes,
                           width=s["width"], steps=s["steps"], phi="relu")
    n_params = sum(p.numel() for p in net.parameters())
    log(f"dynode demo: {task.num_classes}-class generated task ({', '.join(task.classes)}), "
        f"{s['n_train']} training images {task.image_shape}; dyrcnn(depth=4) with {n_params} parameters, "
        f"dt {net.protocol['dt']:g} ms, {s['steps']} steps")

    # rho(W_rec) <= 0.8 after every step: trained on 20 ms, the network must stay stable for
    # the experiments' 1.1 s (unconstrained, the recurrent gains grow past 1 and rates explode)
    cfg = TrainingConfig(epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"], grad_clip=1.0,
                         energy_weight=2e-4, max_spectral_radius=0.8, seed=seed)
    trainer = Trainer(net, cfg, log=out / "train" / "train.jsonl", checkpoint_dir=out / "train")
    if (out / "train" / "last.pt").exists() and not overwrite:
        trainer.resume(out / "train" / "last.pt")
        log(f"resuming training from {out / 'train' / 'last.pt'} (epoch {trainer.epoch})")
    for _ in range(trainer.epoch, cfg.epochs):
        trainer.config = cfg.model_copy(update={"epochs": trainer.epoch + 1})
        trainer.fit(train, test)
        row = trainer.result.history[-1]
        log(f"  epoch {row['epoch']}/{cfg.epochs}: loss {row['train_loss']:.3f}, train acc "
            f"{row['train_acc']:.3f}, test acc {row['val_acc']:.3f} ({row['time_s']:.0f} s)")
    trainer.config = cfg
    t_train = time.perf_counter() - t_start
    acc = trainer.result.final.get("val_acc", float("nan"))
    log(f"test accuracy {acc:.3f} (chance {1 / task.num_classes:.3f}); training took {t_train:.0f} s")

    net.eval()
    images = test[0][: s["n_images"]]
    # onset 200 ms: 100 ms to settle from the initial state, then the 100 ms baseline
    paths = groen2022_experiments(net, images, out / "experiments", dt=s["dt"], kinds=s["kinds"],
                                  overwrite=True, onset=s["onset"])
    t_exp = time.perf_counter() - t_start - t_train
    log(f"experiments: {', '.join(str(p) for p in paths.values())} ({t_exp:.0f} s)")

    res = analysis.analyze(*paths.values())
    figures = res.figures(out / "figures")
    summary = res.summary()
    log("\nGroen et al. (2022) in silico, per area:")
    log(format_summary(summary))
    log(f"\nfigures: {', '.join(str(p) for p in figures.values())}")
    total = time.perf_counter() - t_start
    result = {"accuracy": acc, "chance": 1 / task.num_classes, "train_seconds": t_train,
              "experiment_seconds": t_exp, "total_seconds": total, "settings": s,
              "archives": {k: str(v) for k, v in paths.items()},
              "figures": {k: str(v) for k, v in figures.items()}, "summary": summary}
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=str))
    log(f"summary: {out / 'summary.json'}; total {total:.0f} s")
    return result
