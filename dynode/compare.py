"""``dynode compare``: the paper's Figure 3 in silico -- several trained models side by side.

Each *variant* is a set of ``model.options`` overrides of one base :class:`~dynode.config.RunConfig`
(by default the demo's: the generated task and a four-area ``dyrcnn``). For every variant
:func:`run_workflow` trains the model, runs the Groen et al. (2022) experiments and
analyses them into ``OUT/<variant>/`` (the demo is this workflow on one config); then one table (``comparison.csv``, ``comparison.md``,
printed) and one figure (``comparison.png``: a row per variant, a column per area with the
responses to the six durations, and a last column with ISI recovery) put them side by side.

With recordings (``recordings=``, ``dynode compare --recordings FILE``) the variants are also
compared with the data (:func:`dynode.recordings.compare_recordings`), ranked by the score
(``recordings.csv``, ``recordings.md``, ``recordings.json``, printed) and drawn beside them
(``recordings_<area>.png``: the recorded courses and each variant's after its fitted gain and
latency shift).

The default variants are the paper's recurrence types (full, self, depthpointwise,
pointdepthwise), each with delayed divisive normalization, with it and learnt time constants
(does learning tau make a recurrence type more cortex-like?), and without normalization.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from dynode import analysis
from dynode.analysis.style import hierarchy_order, pyplot, style
from dynode.config import first_images
from dynode.errors import ConfigurationError
from dynode.experiments import recovery_after_offset
from dynode.recordings import (MAX_SHIFT, SCORE, Comparison, analyze_recordings, compare_recordings,
                               load_recordings, match_areas)
from dynode.train import Trainer

__all__ = ["COMPARED_RECURRENCE", "default_variants", "run_workflow", "run_comparison", "comparison_rows",
           "format_comparison", "plot_comparison", "rank_by_recordings", "format_ranking", "plot_model_and_data"]

COMPARED_RECURRENCE = ("full", "self", "depthpointwise", "pointdepthwise")
"""The recurrence types of the paper's comparison."""


def default_variants(recurrence_types: Sequence[str] = COMPARED_RECURRENCE,
                     normalization: Mapping | None = None, *, learnt_tau: bool = True) -> dict[str, dict]:
    """``{label: model option overrides}``: each recurrence type with delayed divisive
    normalization (``"<type>+norm"``; ``normalization``: its options, default the demo's: a
    channel pool with tau 100 ms, delay 4 ms, gain 30), the same with every area's time
    constant learnt (``"<type>+norm+tau"``, ``train_tau``; ``learnt_tau=False`` leaves it out)
    and without normalization (``"<type>"``)."""
    norm = dict(normalization) if normalization else {"tau": 100.0, "delay": 4.0, "pool": "channel", "weight": 30.0}
    out = {}
    for rt in recurrence_types:
        out[f"{rt}+norm"] = {"recurrence_type": rt, "normalization": norm}
        if learnt_tau:
            out[f"{rt}+norm+tau"] = {"recurrence_type": rt, "normalization": norm, "train_tau": True}
        out[rt] = {"recurrence_type": rt, "normalization": None}
    return out


def run_workflow(cfg, out, *, overwrite: bool = False, resume: bool = False, log=print,
                 figures: bool = True) -> dict:
    """Train ``cfg.model`` on ``cfg.data`` (an earlier training in ``out/train/last.pt`` is
    continued with ``resume``, started over with ``overwrite``, and refused otherwise), run the Groen 2022 experiments of ``cfg.experiment`` into
    ``out/experiments`` and analyse them. Returns accuracy, timings, paths, the analysis
    summary (:meth:`dynode.analysis.Analysis.summary`) and the :class:`~dynode.analysis.Analysis`
    itself (key ``analysis``)."""

    out = Path(out)
    if overwrite and resume:
        raise ConfigurationError("overwrite=True starts over and resume=True continues; give one")
    last = out / "train" / "last.pt"
    if last.exists() and not (overwrite or resume):
        raise ConfigurationError(f"{str(last)!r} holds an earlier training; pass resume=True to continue it "
                                 "or overwrite=True to start over, or choose another output folder")
    t_start = time.perf_counter()
    torch.manual_seed(cfg.training.seed)  # before building: same config, same initial weights
    train, test, shape, n_classes = cfg.data.load(cfg.training.batch_size)
    net = cfg.model.build(input_shape=shape, num_classes=n_classes)
    n_params = sum(p.numel() for p in net.parameters())
    log(f"{cfg.model.name}({', '.join(f'{k}={v}' for k, v in cfg.model.options.items())}): {n_params} "
        f"parameters; {len(train[0]) if isinstance(train, tuple) else '?'} training images {tuple(shape)}, "
        f"{n_classes} classes")

    tcfg = cfg.training
    # off a terminal the workflow's own line per epoch (log) is the only one
    trainer = Trainer(net, tcfg, log=out / "train" / "train.jsonl", checkpoint_dir=out / "train",
                      progress=sys.stderr.isatty())
    if last.exists() and resume:
        trainer.resume(last)
        log(f"resuming training from {last} (epoch {trainer.epoch})")
    for _ in range(trainer.epoch, tcfg.epochs):
        trainer.config = tcfg.model_copy(update={"epochs": trainer.epoch + 1})
        trainer.fit(train, test)
        row = trainer.result.history[-1]
        log(f"  epoch {row['epoch']}/{tcfg.epochs}: loss {row['train_loss']:.3f}, train acc "
            f"{row['train_acc']:.3f}, test acc {row['val_acc']:.3f} ({row['time_s']:.0f} s)")
    trainer.config = tcfg
    t_train = time.perf_counter() - t_start
    history = trainer.result.history
    acc = history[-1].get("val_acc", float("nan")) if history else float("nan")
    log(f"test accuracy {acc:.3f} (chance {1 / n_classes:.3f}); training took {t_train:.0f} s")

    net.eval()
    ex = cfg.experiment
    paths = ex.run(net, test, out / "experiments", overwrite=True)
    # a 3.5 s run (500 ms stimulus): activity must come back to rest after the offset
    back = recovery_after_offset(net, first_images(test, 1), dt=ex.dt, solver=ex.solver.build(),
                                 background=ex.background, t_end=3500.0)
    t_exp = time.perf_counter() - t_start - t_train
    log(f"experiments: {', '.join(str(p) for p in paths.values())} ({t_exp:.0f} s)")
    log("3.5 s run, 500 ms stimulus: activity over the last 100 ms, relative to the peak: "
        + ", ".join(f"{a} {v['final_to_peak']:.1e}" for a, v in back.items()))

    res = analysis.analyze(*paths.values())
    figs = res.figures(out / "figures") if figures else {}
    return {"accuracy": acc, "chance": 1 / n_classes, "parameters": n_params, "train_seconds": t_train,
            "experiment_seconds": t_exp, "archives": {k: str(v) for k, v in paths.items()},
            "figures": {k: str(v) for k, v in figs.items()}, "summary": res.summary(),
            "recovery_after_offset": back, "analysis": res,
            "network": net}


def _variant_config(base, label: str, overrides: Mapping):
    if not isinstance(overrides, Mapping):
        raise ConfigurationError(f"compare variant {label!r}: give a mapping of model options, got "
                                 f"{type(overrides).__name__}")
    model = base.model.model_copy(update={"options": {**base.model.options, **overrides}})
    return base.model_copy(update={"model": model})


def run_comparison(base, out, variants: Mapping[str, Mapping] | None = None, *, overwrite: bool = False,
                   resume: bool = False, log=print, recordings=None, areas: Mapping[str, str] | None = None,
                   max_shift: float = MAX_SHIFT, offset: bool = False) -> dict:
    """Run :func:`run_workflow` for each of ``variants`` (``{label: model option
    overrides}``; default :func:`default_variants`) on the base config ``base`` into
    ``out/<label>``, then write the table and the figure. A variant trained by an earlier run is
    continued with ``resume`` (a finished one is not retrained), started over with
    ``overwrite``, and refused otherwise, before anything trains. Returns ``{"results": {label:
    workflow result}, "table": path, "figure": path, "seconds": s}``. The analysis flags are
    marked in the printed table (and named after it), not also Python warnings
    (:func:`~dynode.analysis.flags_in_tables`); other warnings are shown.

    ``recordings`` (a Dataset or a file, :func:`dynode.recordings.load_recordings`): also rank
    the variants by their score against the data (:func:`rank_by_recordings`; ``areas``,
    ``max_shift``, ``offset`` as in :func:`dynode.recordings.compare_recordings`); the
    recordings and the area mapping are checked before anything trains, and the result gets
    the key ``"recordings"``."""

    variants = dict(variants) if variants is not None else default_variants(
        normalization=base.model.options.get("normalization"))
    if not variants:
        raise ConfigurationError("compare: give at least one variant")
    bad = [v for v in variants if not v or "/" in v or v.startswith(".")]
    if bad:
        raise ConfigurationError(f"compare: variant labels become folder names; {bad} cannot")
    configs = {label: _variant_config(base, label, ov) for label, ov in variants.items()}
    data = load_recordings(recordings) if recordings is not None else None
    for label, cfg in configs.items():  # every variant's model builds before anything trains
        try:
            net = cfg.model.model_copy(update={"weights": None}).build()
        except ConfigurationError as exc:
            raise ConfigurationError(f"compare variant {label!r}: {exc}") from None
        if data is not None:
            try:
                match_areas(list(net.populations), list(data.data_vars), areas)
            except ConfigurationError as exc:
                raise ConfigurationError(f"compare variant {label!r}: {exc}") from None
    out = Path(out)
    found = [str(p) for p in (out / label / "train" / "last.pt" for label in configs) if p.exists()]
    if found and not (overwrite or resume):
        raise ConfigurationError(f"{', '.join(found)} from an earlier comparison exist; pass resume=True to "
                                 "continue or overwrite=True to start over, or choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = {}
    for i, (label, cfg) in enumerate(configs.items()):
        log(f"\n[{i + 1}/{len(configs)}] {label}")
        try:
            with analysis.flags_in_tables():  # the table marks them; the line after it names the rest
                results[label] = run_workflow(cfg, out / label, overwrite=overwrite, resume=resume,
                                              log=lambda m: log("  " + m),
                                              figures=False)
        except ConfigurationError as exc:
            raise ConfigurationError(f"compare variant {label!r}: {exc}") from None
    rows = comparison_rows(results)
    table = out / "comparison.csv"
    with table.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    text = format_comparison(rows)
    (out / "comparison.md").write_text(text + "\n")
    figure = plot_comparison(results, out / "comparison.png")
    log("\n" + text)
    others = sorted({k for r in results.values() for d in r["summary"].values() for k in d.get("flags", {})
                     if k.split("[")[0] not in _TABLE_KEYS})
    if others:
        log(f"also flagged, values not in this table (reasons in comparison.json): {', '.join(others)}")
    log(f"\ntable: {table}, {out / 'comparison.md'}; figure: {figure}")
    seconds = time.perf_counter() - t0
    summary = {label: {"accuracy": r["accuracy"], "summary": r["summary"], "options": dict(configs[label].model.options)}
               for label, r in results.items()}
    (out / "comparison.json").write_text(json.dumps(summary, indent=2, default=str))
    ranked = None
    if data is not None:
        with analysis.flags_in_tables():
            ranked = rank_by_recordings({label: r["analysis"] for label, r in results.items()}, data, out,
                                        areas=areas, max_shift=max_shift, offset=offset)
        log("\n" + ranked["text"])
        log(f"\nranking: {ranked['table']}; figures: {', '.join(str(p) for p in ranked['figures'].values())}")
        seconds = time.perf_counter() - t0
    return {"results": results, "table": table, "figure": figure, "seconds": seconds, "recordings": ranked}


def _get(d: Mapping, key: str, cond: float | None = None):
    v = d.get(key)
    if cond is not None and isinstance(v, Mapping):
        v = v.get(cond, v.get(str(cond)))
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


_TABLE_KEYS = ("summation_ratio", "asymptote_to_peak", "isi_recovery", "time_to_peak_ms", "c50",
               "baseline_to_peak", "baseline_drift_to_peak")
"""Summary keys whose flags mark a row of the table (an extra such as the Naka-Rushton fit does not)."""


def comparison_rows(results: Mapping[str, Mapping]) -> list[dict]:
    """One row per (variant, area): accuracy and the Groen metrics (``None`` where undefined;
    a flagged value is kept, and ``flags`` lists the flagged keys among the table's)."""
    rows = []
    for label, res in results.items():
        for area, d in res["summary"].items():
            ratios = [v for T, v in (d.get("summation_ratio") or {}).items() if float(T) >= 33.0 and v is not None]
            rec = d.get("isi_recovery") or {}
            isis = sorted(float(k) for k in rec)
            row = {"variant": label, "area": area, "accuracy": res["accuracy"],
                   "summation_ratio_min": min(ratios) if ratios else None,
                   "summation_ratio_max": max(ratios) if ratios else None}
            for key, cond, name in (("asymptote_to_peak", None, "sustained_to_peak"),
                                    ("isi_recovery", isis[0] if isis else None, "isi_recovery_shortest"),
                                    ("isi_recovery", isis[-1] if isis else None, "isi_recovery_longest"),
                                    ("time_to_peak_ms", 1.0, "time_to_peak_c1_ms"),
                                    ("time_to_peak_ms", 0.25, "time_to_peak_c025_ms"),
                                    ("c50", None, "c50"), ("baseline_to_peak", None, "baseline_to_peak")):
                row[name] = None if key == "isi_recovery" and cond is None else _get(d, key, cond)
            row["flags"] = "; ".join(sorted(k for k in d.get("flags", {}) if k.split("[")[0] in _TABLE_KEYS))
            rows.append(row)
    return rows


def format_comparison(rows: Sequence[Mapping]) -> str:
    """The comparison as a markdown table (undefined values ``n/a``; ``*`` marks an area whose
    numbers carry analysis flags, listed in ``comparison.csv``)."""
    cols = [("variant", "variant", "s"), ("area", "area", "s"), ("accuracy", "acc", ".2f"),
            ("summation_ratio_min", "sum ratio min", ".2f"), ("summation_ratio_max", "sum ratio max", ".2f"),
            ("sustained_to_peak", "sust/peak", ".2f"), ("isi_recovery_shortest", "ISI rec. short", ".2f"),
            ("isi_recovery_longest", "ISI rec. long", ".2f"), ("time_to_peak_c1_ms", "ttp c=1 ms", ".0f"),
            ("time_to_peak_c025_ms", "ttp c=0.25 ms", ".0f"), ("c50", "c50", ".3g"),
            ("baseline_to_peak", "base/peak", ".1%")]
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |",
             "| " + " | ".join("---" if f == "s" else "---:" for _, _, f in cols) + " |"]
    for r in rows:
        cells = []
        for key, _, fmt in cols:
            v = r.get(key)
            text = "n/a" if v is None else (str(v) if fmt == "s" else format(v, fmt))
            if key == "area" and r.get("flags"):
                text += "*"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("* the area has analysis flags (see comparison.csv, column flags)")
    return "\n".join(lines)


def plot_comparison(results: Mapping[str, Mapping], path) -> Path:
    """One figure: a row per variant, a column per area with the baseline-corrected responses
    to the six stimulus durations, and a last column with ISI recovery per area (areas in the
    network's order, in the style of :mod:`dynode.analysis.style`)."""
    import matplotlib

    with style():
        plt = pyplot()
        labels = list(results)
        first = next(iter(results.values()))
        durations = first["analysis"].courses.get("duration")
        areas = hierarchy_order(first["summary"], list(durations.data_vars) if durations is not None else None)
        n_rows, n_cols = len(labels), len(areas) + 1
        fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.6 * n_cols, 1.9 * n_rows + 0.6), squeeze=False,
                                 sharex="col", constrained_layout=True)
        cmap = plt.get_cmap("viridis")
        recs = [r["analysis"].recovery for r in results.values() if r["analysis"].recovery is not None]
        low = min([0.0] + [float(rec[a].min()) for rec in recs for a in rec.data_vars]) - 0.05
        for i, label in enumerate(labels):
            res = results[label]["analysis"]
            ds = res.courses.get("duration")
            for j, area in enumerate(areas):
                ax = axes[i, j]
                if ds is not None and area in ds:
                    da = ds[area]
                    dim = [d for d in da.dims if d != "time"][0]
                    vals = da[dim].values
                    peak = float(abs(da).max()) or 1.0
                    for k, v in enumerate(vals):
                        ax.plot(da["time"].values, da.sel({dim: v}).values / peak,
                                color=cmap(k / max(1, len(vals) - 1)), lw=1.0, label=f"{v:g} ms")
                ax.axhline(0.0, color="0.7", lw=0.5)
                ax.set_xlim(-100, 1000)
                if i == 0:
                    ax.set_title(area)
                if j == 0:
                    acc = results[label]["accuracy"]
                    ax.set_ylabel(f"{label}\n(acc {acc:.2f})\nrate / peak rate")
                if i == n_rows - 1:
                    ax.set_xlabel("time from onset (ms)")
            ax = axes[i, -1]
            rec = res.recovery
            if rec is not None:
                for j, area in enumerate(areas):
                    if area in rec:
                        ax.plot(rec[area]["isi"].values, rec[area].values, "o-", ms=3, lw=1.0, label=area,
                                color=plt.get_cmap("tab10")(j))
                ax.set_xscale("log")
                isis = rec["isi"].values
                ax.set_xticks(isis[::2], [f"{v:g}" for v in isis[::2]])
                ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
                ax.set_ylim(low, 1.05)  # one scale for every model: a flat line reads as flat
                ax.axhline(1.0, color="0.7", lw=0.5, ls="--")
            if i == 0:
                ax.set_title("ISI recovery")
                ax.legend(title="area")
            ax.set_ylabel("recovery (1 = full)")
            if i == n_rows - 1:
                ax.set_xlabel("inter-stimulus interval (ms)")
        handles, names = axes[0, 0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, names, title="duration", loc="outside right upper")
        fig.suptitle("Responses to stimuli of six durations (Groen et al. 2022 protocol), per model and area")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        plt.close(fig)
        return path


# -- ranking by recordings ---------------------------------------------------------------------
def rank_by_recordings(models: Mapping[str, object], recordings, out=None, *, areas: Mapping[str, str] | None = None,
                       max_shift: float = MAX_SHIFT, offset: bool = False, figures: bool = True) -> dict:
    """Compare every model (``{label: Analysis or archives}``) with ``recordings``
    (:func:`dynode.recordings.compare_recordings`, the recordings analysed once) and rank them
    by the score, highest first (an undefined score last). With ``out``: write
    ``recordings.csv`` (one row per variant and area: rank, score, fitted shift and gain,
    pooled correlation and normalised error), ``recordings.md`` (the ranking),
    ``recordings.json`` (every comparison, :meth:`~dynode.recordings.Comparison.to_dict`) and,
    with ``figures``, one figure per recorded area (:func:`plot_model_and_data`).

    Returns ``{"ranking": [(label, score)], "comparisons": {label: Comparison}, "text": the
    printed ranking, "table": path or None, "figures": {area: path}}``."""
    if not models:
        raise ConfigurationError("rank_by_recordings: give at least one model")
    data = analyze_recordings(recordings) if not isinstance(recordings, analysis.Analysis) else recordings
    comps = {label: compare_recordings(m, data, areas=areas, max_shift=max_shift, offset=offset)
             for label, m in models.items()}
    order = sorted(comps, key=lambda k: (not math.isfinite(comps[k].score), -comps[k].score
                                         if math.isfinite(comps[k].score) else 0.0))
    ranking = [(label, comps[label].score) for label in order]
    text = format_ranking({label: comps[label] for label in order})
    table, figs = None, {}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        table = out / "recordings.csv"
        with table.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["rank", "variant", "score", "area", "population", "shift_ms", "gain", "offset", "correlation",
                        "normalised_error"])
            for i, label in enumerate(order, start=1):
                c = comps[label]
                for a in c.fit["area"].values:
                    fa = c.fit.sel(area=a)
                    w.writerow([i, label, _csv_num(c.score), str(a), str(fa["population"].values)]
                               + [_csv_num(fa[k]) for k in ("shift_ms", "gain", "offset", "correlation",
                                                             "normalised_error")])
        (out / "recordings.md").write_text(text + "\n")
        (out / "recordings.json").write_text(json.dumps({label: comps[label].to_dict() for label in order},
                                                        indent=2))
        if figures:
            recorded = list(dict.fromkeys(a for c in comps.values() for a in c.fit["area"].values))
            figs = {str(a): plot_model_and_data({label: comps[label] for label in order}, str(a),
                                                out / f"recordings_{a}.png") for a in recorded}
    return {"ranking": ranking, "comparisons": comps, "text": text, "table": table, "figures": figs}


def _csv_num(x) -> str:
    x = float(x)
    return repr(x) if math.isfinite(x) else ""


def format_ranking(comparisons: Mapping[str, Comparison]) -> str:
    """The variants in the given order (ranked) as a markdown table: score, and per area the
    fitted latency shift (ms), gain and shift-corrected correlation; ``n/a`` where undefined,
    ``*`` where flagged (the reasons in ``recordings.json``)."""
    areas = list(dict.fromkeys(str(a) for c in comparisons.values() for a in c.fit["area"].values))
    head = ["rank", "variant", "score"] + [f"{a} {k}" for a in areas for k in ("shift ms", "gain", "r")]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---:", "---"] + ["---:"] * (len(head) - 2)) + " |"]

    def cell(v, fmt, flagged=False):
        v = float(v)
        return ("n/a" if not math.isfinite(v) else format(v, fmt)) + ("*" if flagged else "")

    for i, (label, c) in enumerate(comparisons.items(), start=1):
        row = [str(i), label, cell(c.score, ".3f", "score" in c.flags)]
        for a in areas:
            if a not in c.fit["area"].values:
                row += ["-", "-", "-"]
                continue
            f = c.fit.sel(area=a)
            row += [cell(f["shift_ms"], "+.1f", f"{a}/shift_ms" in c.flags or f"{a}/fit" in c.flags),
                    cell(f["gain"], ".3g", f"{a}/fit" in c.flags), cell(f["correlation"], ".3f")]
        lines.append("| " + " | ".join(row) + " |")
    lines.append(SCORE[0].upper() + SCORE[1:] + "; shift: latency added to the model (+: the data come later); "
                 "gain: least-squares scale from model to data units; r: shift-corrected correlation over every "
                 "experiment. * flagged (reasons in recordings.json)")
    return "\n".join(lines)


def plot_model_and_data(comparisons: Mapping[str, Comparison], area: str, path) -> Path:
    """One figure for one recorded ``area``: a row per experiment, a column per variant; in
    each panel the recorded courses (solid) and the variant's (dashed) after its fitted gain
    and latency shift, one colour per condition; the panel title gives the shift, the gain and
    the correlation."""
    with style():
        plt = pyplot()
        labels = [k for k, c in comparisons.items() if area in c.fit["area"].values]
        if not labels:
            raise ConfigurationError(f"no comparison holds the recorded area {area!r}")
        kinds = list(dict.fromkeys(k for label in labels for k in comparisons[label].data))
        fig, axes = plt.subplots(len(kinds), len(labels), figsize=(3.0 * len(labels) + 1.2, 2.2 * len(kinds) + 0.6),
                                 squeeze=False, sharex=True, constrained_layout=True)
        cmap = plt.get_cmap("viridis")
        for j, label in enumerate(labels):
            c = comparisons[label]
            f = c.fit.sel(area=area)
            for i, kind in enumerate(kinds):
                ax = axes[i, j]
                if kind in c.data and area in c.data[kind]:
                    d, m = c.data[kind][area], c.model[kind][area]
                    dim = d.dims[0]
                    vals = d[dim].values
                    for k, v in enumerate(vals):
                        col = cmap(k / max(1, len(vals) - 1))
                        ax.plot(d["time"].values, d.sel({dim: v}).values, color=col, lw=1.2,
                                label=f"{dim} {v:g}")
                        ax.plot(m["time"].values, m.sel({dim: v}).values, color=col, lw=1.0, ls="--")
                    r = float(c.courses["correlation"].sel(area=area, experiment=kind))
                    rtext = "n/a" if not math.isfinite(r) else f"{r:.2f}"
                    ax.set_title(f"{label}: {kind}\nshift {float(f['shift_ms']):+.0f} ms, gain "
                                 f"{float(f['gain']):.3g}, r {rtext}", fontsize="small")
                    if j == len(labels) - 1:
                        ax.legend(fontsize="x-small", loc="upper right")
                ax.axhline(0.0, color="0.7", lw=0.5)
                if j == 0:
                    unit = ""
                    if kind in c.data and area in c.data[kind]:
                        unit = c.data[kind][area].attrs.get("units", "")
                    ax.set_ylabel(f"{area} ({unit})" if unit else area)
                if i == len(kinds) - 1:
                    ax.set_xlabel("time from onset (ms)")
        fig.suptitle(f"{area}: recorded (solid) and model after fitted gain and latency shift (dashed)")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        plt.close(fig)
        return path
