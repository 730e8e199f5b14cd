"""The ``dynode`` command line: ``demo``, ``compare``, ``train``, ``simulate``, ``experiment``,
``convergence``, ``inspect``, ``analyze``, ``config`` and ``sweep``.

Every command that takes a CONFIG reads one YAML file (:class:`dynode.config.RunConfig`,
one section per concern; ``dynode config schema`` prints the JSON schema). A bad config or
argument prints one line, ``dynode <command>: error: <field path>: <reason>``, and exits
with status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


class _UsageError(Exception):
    """A bad argument or config: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2
        raise _UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    from dynode.version import __version__

    ap = _Parser(prog="dynode", description="Continuous-time recurrent networks of the visual system: "
                 "train, simulate, record and analyse.")
    ap.add_argument("--version", action="version", version=f"dynode {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    d = sub.add_parser("demo", help="train a small dyrcnn on the generated task, run the Groen 2022 "
                       "experiments, write archives and figures, print a summary")
    d.add_argument("--out", default="dynode-demo", help="output folder (default: dynode-demo)")
    d.add_argument("--quick", action="store_true", help="tiny settings (a smoke test in seconds)")
    d.add_argument("--epochs", type=int, default=None, help="training epochs (default 4; quick 1)")
    d.add_argument("--seed", type=int, default=0, help="seed of the data and the weights (default: 0)")
    d.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of an earlier demo in --out (training starts over)")
    d.add_argument("--resume", action="store_true",
                   help="continue an earlier demo's training in --out, then rerun the experiments")
    for name, text, outputs in (
            ("train", "train the configured model on the configured data", "OUT/last.pt, OUT/train.jsonl"),
            ("simulate", "simulate the model under the configured stimulus into an archive",
             "OUT/simulation.zarr"),
            ("experiment", "run the configured experiments (default: the Groen 2022 three; reaction_time) into archives and analyse them",
             "the archives in OUT/experiments"),
            ("convergence", "the dt/tau study: errors of cheap steps vs a tight reference",
             "OUT/convergence.nc, OUT/convergence.png")):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", help="YAML run configuration")
        p.add_argument("--out", default=None, help="output folder (default: the config's output)")
        p.add_argument("--overwrite", action="store_true", help=f"replace existing outputs ({outputs})")
        if name == "train":
            p.add_argument("--resume", action="store_true", help="continue the training saved in OUT/last.pt")
        _allow_imports(p)
    m = sub.add_parser("compare", help="train several model variants (recurrence types, with and without "
                       "normalization), run the Groen 2022 experiments on each, one table and one figure")
    m.add_argument("config", nargs="?", default=None,
                   help="YAML run configuration: the base model, data, training and experiment, and "
                   "compare.variants (default: the demo's model at half width, 600 training images, "
                   "3 epochs, and the twelve default variants)")
    m.add_argument("--out", default=None, help="output folder (default: dynode-compare, or the config's output)")
    m.add_argument("--quick", action="store_true", help="without CONFIG: the demo's tiny settings (a smoke test)")
    m.add_argument("--variants", default=None,
                   help="comma-separated labels to run out of the configured or default variants")
    m.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of an earlier comparison in --out (every variant retrains)")
    m.add_argument("--resume", action="store_true",
                   help="continue an earlier comparison in --out: finish each variant's training, rerun "
                   "its experiments")
    m.add_argument("--recordings", default=None, metavar="FILE",
                   help="recorded data (.nc, .zarr or .csv in dynode's recordings layout): rank the variants "
                   "by their score against it and draw model and data side by side (OUT/recordings.*)")
    m.add_argument("--areas", default=None, metavar="POP=AREA,...",
                   help="with --recordings: which recorded area each model population is compared with "
                   "(e.g. V1=V1,V4=hV4; default: the same names)")
    m.add_argument("--max-shift", type=float, default=None, metavar="MS",
                   help="with --recordings: the bound of the fitted latency shift (default 100 ms)")
    _allow_imports(m)
    i = sub.add_parser("inspect", help="describe an archive: status, populations, times, conditions")
    i.add_argument("archive")
    a = sub.add_parser("analyze", help="analyse archives: Groen 2022 metrics, flags and figures where the "
                                       "conditions are there; any archive's time courses")
    a.add_argument("archives", nargs="+", help="archives written by `dynode experiment` / `dynode demo`")
    a.add_argument("--out", default=None, help="folder for figures (default: beside the first archive)")
    c = sub.add_parser("config", help="configuration helpers")
    csub = c.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    csub.add_parser("schema", help="print the JSON schema of the run configuration")
    chk = csub.add_parser("check", help="validate a YAML run configuration")
    chk.add_argument("file")
    _allow_imports(chk)
    f = sub.add_parser("fit", help="fit time constants, delays, normalisation and observation gains of a "
                                   "model to recorded time courses (a fit config: model, recordings, fit)")
    f.add_argument("config", help="the fit config (YAML)")
    f.add_argument("--out", default=None, help="output folder (default: the config's output)")
    f.add_argument("--resume", action="store_true", help="continue the fit saved in OUT/last.pt")
    f.add_argument("--overwrite", action="store_true", help="replace the fit saved in OUT (start over)")
    f.add_argument("--quiet", action="store_true", help="no progress lines")
    w = sub.add_parser("sweep", help="run a grid of configs (one run folder per point) through Snakemake, "
                       "locally or on a cluster; collect a summary table and figure")
    w.add_argument("sweep", help="YAML sweep file: base (a run config), grid or points (dotted-key overrides), steps")
    w.add_argument("--cores", type=int, default=1, help="local cores for Snakemake (default 1)")
    w.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads (and Snakemake cores) per point (default: --cores divided among the points)")
    w.add_argument("--dry-run", action="store_true",
                   help="show what would run, one line per point (runs nothing, writes nothing)")
    w.add_argument("--verbose", action="store_true",
                   help="show Snakemake's own output (default: its errors only; OUTPUT/snakemake.log keeps it)")
    w.add_argument("--collect", action="store_true", help="only collect the summary of the points done so far")
    w.add_argument("snakemake_args", nargs=argparse.REMAINDER,
                   help="after --: Snakemake's own options, e.g. -- --executor slurm --jobs 50")
    for name in THREADED:
        sub.choices[name].add_argument("--threads", type=int, default=None, metavar="N", help=(
            "torch compute threads (default: DYNODE_THREADS, else OMP_NUM_THREADS, else the CPUs this process "
            "may run on); give each of several runs on one machine its share"))
    return ap


THREADED = ("demo", "compare", "train", "simulate", "experiment", "convergence", "analyze", "fit")
"""The commands that compute: each prints its thread count first (analyze: last; :mod:`dynode.threads`)."""


def _allow_imports(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-imports", action="store_true",
                   help="let the config's model import the code it names (model.factory, import paths in "
                   "model.spec); without it a config or spec is data and names no code to run")


def main(argv=None) -> int:
    import pydantic

    from dynode.errors import DynodeError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        threads = None
        if args.command in THREADED:
            from dynode.threads import use_threads

            threads = use_threads(args.threads).describe()
            if args.command != "analyze":  # analyze's output starts with its table: the line comes last
                print(threads, flush=True)
        code = COMMANDS[args.command](args)
        if args.command == "analyze":
            print(threads)
        return code
    except _UsageError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except pydantic.ValidationError as exc:
        from dynode.errors import describe_validation_error

        print(f"dynode {args.command}: error: {describe_validation_error(exc)}", file=sys.stderr)
        return 2
    except (DynodeError, OSError) as exc:  # OSError: a path that is missing, taken, a folder, read-only
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"dynode {args.command}: error: {_cli_wording(msg)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dynode {args.command}: interrupted", file=sys.stderr)
        return 130


def _cli_wording(msg: str) -> str:
    """A library message in the command line's words: its keyword arguments are flags here."""
    for api, flag in (("overwrite=True", "--overwrite"), ("resume=True", "--resume")):
        msg = msg.replace(api, flag)
    return msg


# -- commands ------------------------------------------------------------------------------
def _config_and_out(args):
    """The config of a run command and its output folder (not created here: a command creates it
    only once its inputs are valid)."""
    from dynode.config import load_config

    cfg = load_config(args.config, allow_imports=args.allow_imports)
    return cfg, Path(args.out or cfg.output)


def _refuse_existing(command: str, paths, args) -> None:
    """One meaning of ``--overwrite`` for every command: existing outputs are replaced only with
    it (``--resume``, where offered, continues them instead); checked before any work."""
    if args.overwrite or getattr(args, "resume", False):
        return
    found = [str(p) for p in paths if Path(p).exists() or Path(p).is_symlink()]
    if found:
        how = "--overwrite to replace" + (" or --resume to continue" if hasattr(args, "resume") else "")
        raise _UsageError(f"dynode {command}: error: {', '.join(found)} already exist{'s' if len(found) == 1 else ''}; "
                          f"pass {how} {'it' if len(found) == 1 else 'them'}, or choose another --out")


def _overwrite_and_resume(command: str, args) -> None:
    if getattr(args, "resume", False) and args.overwrite:
        raise _UsageError(f"dynode {command}: error: --overwrite starts over and --resume continues; give one")


def cmd_train(args) -> int:
    from dynode.config import model_and_data, run_record
    from dynode.train import Trainer

    _overwrite_and_resume("train", args)
    cfg, out = _config_and_out(args)
    if args.resume and not (out / "last.pt").is_file():
        raise _UsageError(f"dynode train: error: --resume: no {out / 'last.pt'} to continue; leave --resume out "
                          "to start a new training")
    _refuse_existing("train", [out / "last.pt"], args)
    net, train, test = model_and_data(cfg)
    trainer = Trainer(net, cfg.training, log=out / "train.jsonl", checkpoint_dir=out, run_config=run_record(cfg))
    if args.resume:
        trainer.resume(out / "last.pt")
        print(f"resuming from {out / 'last.pt'} at epoch {trainer.epoch}")
    result = trainer.fit(train, test)
    (out / "config.json").write_text(cfg.model_dump_json(indent=2))
    final = result.final
    print(f"trained {cfg.model.label} for {final.get('epoch')} epochs: train acc {final.get('train_acc', 0):.3f}, "
          f"test acc {final.get('val_acc', 0):.3f}; weights in {out / 'last.pt'}")
    return 0


def cmd_simulate(args) -> int:
    from dynode.simulate import simulate
    from dynode.config import first_images, model_and_data

    cfg, out = _config_and_out(args)
    _refuse_existing("simulate", [out / "simulation.zarr"], args)
    if cfg.t_end is None and cfg.stimulus.kind != "groen2022":
        raise _UsageError("dynode simulate: error: t_end: give the simulated time in ms (top-level t_end in the "
                          "config); only a groen2022 stimulus brings its own")
    net, _, test = model_and_data(cfg)
    stim = cfg.stimulus.build(first_images(test, cfg.stimulus.n_images), net.input_names()[0])
    dt = cfg.dt or getattr(getattr(net, "protocol", None), "dt", None)  # a custom field may have no protocol
    res = simulate(net, stim, t_end=cfg.t_end or stim.t_end, dt=dt, solver=cfg.solver.build(),
                   record=cfg.record.build(), store=out / "simulation.zarr", overwrite=args.overwrite)
    print(f"wrote {res.path} ({res.status}; {res.stats.steps} steps, {res.stats.nfe} evaluations)")
    return 0


def cmd_experiment(args) -> int:
    from dynode.config import model_and_data

    cfg, out = _config_and_out(args)
    _refuse_existing("experiment", cfg.experiment.paths(out / "experiments"), args)
    net, _, test = model_and_data(cfg)
    paths = cfg.experiment.run(net, test, out / "experiments", overwrite=args.overwrite)
    for path in paths.values():
        print(f"wrote {path}")
    _analyze(list(paths.values()), out / "figures")
    return 0


def cmd_convergence(args) -> int:
    from dynode.analysis import plot_convergence
    from dynode.convergence import convergence
    from dynode.config import first_images, model_and_data

    cfg, out = _config_and_out(args)
    _refuse_existing("convergence", [out / "convergence.nc", out / "convergence.png"], args)
    net, _, test = model_and_data(cfg)
    conv = cfg.convergence
    _check_population("convergence", conv.population, net.init_state(1))  # a Network's or any field's
    stim = cfg.stimulus.build(first_images(test, cfg.stimulus.n_images), net.input_names()[0])
    import torch

    with torch.no_grad():
        ds = convergence(net, stim, t_end=conv.t_end, dts=conv.dts, solvers=conv.build_solvers(),
                            reference=conv.reference.build(), tolerance=conv.tolerance)
    out.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(out / "convergence.nc")
    plot_convergence(ds, out / "convergence.png", population=conv.population)
    print(ds)
    if "answer" in ds.attrs:
        print(ds.attrs["answer"])
    print(f"wrote {out / 'convergence.nc'} and {out / 'convergence.png'}")
    return 0


def cmd_inspect(args) -> int:
    from dynode.archive import archive_config, open_archive, populations

    path = Path(args.archive)
    if not path.exists():
        raise FileNotFoundError(f"no archive at {path}")
    tree = open_archive(path)
    attrs = tree.attrs
    print(f"{path}: status {attrs.get('status')}, run {attrs.get('run_id')}, created {attrs.get('created')}")
    print(f"dynode {attrs.get('dynode_version', '?')}, solver {attrs.get('solver')}, dt {attrs.get('dt')} ms")
    times = tree.ds["time"].values if "time" in tree.ds.coords else []
    if len(times):
        print(f"time: {len(times)} points, {times[0]:g} .. {times[-1]:g} ms")
    for name in populations(tree):
        rate = tree[name]["rate"]
        dims = ", ".join(f"{d}={n}" for d, n in rate.sizes.items())
        print(f"  {name}: rate ({dims}) {rate.dtype}")
    coords = [c for c in tree.ds.coords if tree.ds[c].dims == ("sample",) and c != "sample"]
    for c in coords:
        vals = sorted(set(tree.ds[c].values.tolist()))
        shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in vals[:8])
        print(f"  condition {c}: {shown}{' ...' if len(vals) > 8 else ''}")
    config = archive_config(tree)
    if config:
        print("config:\n" + json.dumps(config, indent=2))
    return 0


def _analyze(paths, fig_dir: Path) -> dict:
    """Groen archives: the metrics table (flags as footnotes) and figures; a reaction-time archive:
    its RT/accuracy table and figure; any other archive:
    its per-population time courses (mean over units, per condition) as a figure."""
    from dynode import analysis
    from dynode.errors import MissingConditionsError

    groen, other, rts = [], [], []
    for p in paths:
        if analysis.is_reaction_time_archive(p):  # the reaction-time experiment: its own analysis
            rts.append(p)
            continue
        try:
            analysis.experiment_kind(p)
            groen.append(p)
        except MissingConditionsError:
            other.append(p)
    summary = {}
    if groen:
        with analysis.flags_in_tables():  # the table's footnotes show them: not also as Python warnings
            res = analysis.analyze(*groen)
        figures = res.figures(fig_dir)
        summary = res.summary()
        print(analysis.format_summary(summary))
        print("figures: " + ", ".join(str(p) for p in figures.values()))
    for p in rts:
        with analysis.flags_in_tables():  # the table marks undecided cells: not also as Python warnings
            res = analysis.analyze_reaction_times(p)
        print(analysis.format_reaction_times(res))
        print(f"figure: {analysis.plot_reaction_times(res, fig_dir / 'reaction_time.png')}")
        summary["reaction_time"] = res.summary()
    for p in other:
        ds = analysis.all_time_courses(p)
        dims = [d for d in ds[next(iter(ds.data_vars))].dims if d != "time"]
        png = analysis.plot_time_courses(ds, fig_dir / f"time_courses_{Path(p).stem}.png",
                                         dim=dims[0] if dims else None, title=Path(p).name)
        print(f"{p}: no Groen 2022 conditions (contrast / duration / isi), so no Groen metrics; time courses "
              f"of {', '.join(ds.data_vars)}{' per ' + dims[0] if dims else ''}: {png}")
    return summary


def cmd_analyze(args) -> int:
    paths = [Path(p) for p in args.archives]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"no archive at {p}")
    _analyze(paths, Path(args.out) if args.out else paths[0].parent / "figures")
    return 0


def _check_runnable(cfg) -> None:
    """Build once what the run commands build (the data, the seeded model with its weights, every
    record, the convergence population), so that ``config check`` catches what they would: a
    typo in model.options, a weights file that is missing or does not fit, a data root that is
    not there, a record selection the model does not have. (Every solver config has built its
    solver when the config was validated.)"""
    from dynode.config import model_and_data
    from dynode.errors import DynodeError

    net, _, _ = model_and_data(cfg)
    shapes = {name: tuple(v.shape[1:]) for name, v in net.init_state(1).items()}
    for section, record in (("record", cfg.record), ("experiment.record", cfg.experiment.record)):
        try:
            record.build().plan(shapes)
        except DynodeError as exc:
            raise _UsageError(f"dynode config: error: {section}: {str(exc).splitlines()[0]}") from None
    _check_population("config", cfg.convergence.population, shapes)


def _check_population(command: str, population, states) -> None:
    """``convergence.population``, if given, must be one of the model's populations (``states``' keys)."""
    if population is not None and population not in states:
        raise _UsageError(f"dynode {command}: error: convergence.population: no population "
                          f"{population!r} in the model; it has {list(states)}")


def cmd_config(args) -> int:
    if args.action == "check":  # the file is read and bounded before the configs (and torch) are imported
        from dynode.datafile import read_config

        data = read_config(args.file)
        from dynode.config import config_from

        cfg = config_from(data, allow_imports=args.allow_imports)
        _check_runnable(cfg)
        print(f"{args.file}: valid ({', '.join(f'{k}' for k in cfg.model_fields_set) or 'all defaults'})")
        return 0
    if args.action == "schema":
        from dynode.config import run_config_schema

        print(json.dumps(run_config_schema(), indent=2, allow_nan=False))
        return 0
    raise _UsageError("dynode config: error: give an action: schema or check FILE")


def cmd_compare(args) -> int:
    from dynode.compare import default_variants, run_comparison
    from dynode.demo import demo_config

    if args.config is not None:
        if args.quick:
            raise _UsageError("dynode compare: error: --quick applies without CONFIG only (the demo's "
                              "settings); put small settings in the config instead")
        cfg, out = _config_and_out(args)
    else:
        cfg = demo_config(quick=args.quick, small=not args.quick)
        out = Path(args.out or "dynode-compare")
        if args.quick:
            from dynode.demo import QUICK_NOTE

            print(QUICK_NOTE, flush=True)
    variants = (cfg.compare.variants if cfg.compare.variants is not None
                else default_variants(normalization=cfg.model.options.get("normalization")))
    if args.variants:
        wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in wanted if v not in variants]
        if unknown:
            raise _UsageError(f"dynode compare: error: unknown variants {unknown}; known: {list(variants)}")
        variants = {v: variants[v] for v in wanted}
    if args.recordings is None and (args.areas is not None or args.max_shift is not None):
        raise _UsageError("dynode compare: error: --areas and --max-shift apply with --recordings only")
    areas = None
    if args.areas is not None:
        areas = {}
        for part in (p.strip() for p in args.areas.split(",") if p.strip()):
            pop, eq, area = part.partition("=")
            if not eq or not pop.strip() or not area.strip():
                raise _UsageError(f"dynode compare: error: --areas: {part!r} is not POPULATION=AREA "
                                  "(e.g. --areas V1=V1,V4=hV4)")
            areas[pop.strip()] = area.strip()
    recordings = None
    if args.recordings is not None:  # checked before anything trains
        from dynode.recordings import load_recordings

        recordings = load_recordings(args.recordings)
    _overwrite_and_resume("compare", args)
    _refuse_existing("compare", [out / label / "train" / "last.pt" for label in variants], args)
    extra = {} if recordings is None else {"recordings": recordings, "areas": areas}
    if args.max_shift is not None:
        extra["max_shift"] = args.max_shift
    res = run_comparison(cfg, out, variants, overwrite=args.overwrite, resume=args.resume, **extra)
    print(f"compared {len(res['results'])} variants in {res['seconds']:.0f} s")
    if res.get("recordings") is not None:
        best, score = res["recordings"]["ranking"][0]
        print(f"closest to {args.recordings}: {best} (score {score:.3f})" if score == score
              else f"no variant has a defined score against {args.recordings}")
    return 0


def cmd_demo(args) -> int:
    from dynode.demo import demo_outputs, run_demo

    _overwrite_and_resume("demo", args)
    _refuse_existing("demo", demo_outputs(args.out), args)
    run_demo(Path(args.out), quick=args.quick, epochs=args.epochs, seed=args.seed, overwrite=args.overwrite,
             resume=args.resume)
    return 0


def cmd_fit(args) -> int:
    from dynode.fit import fit_command

    return fit_command(args)


def cmd_sweep(args) -> int:
    from dynode.sweep import run_sweep

    extra = list(args.snakemake_args or [])
    if extra[:1] not in ([], ["--"]):  # dynode's options after SWEEP: argparse's REMAINDER took them too
        cut = extra.index("--") if "--" in extra else len(extra)
        given, default = (vars(build_parser().parse_args(["sweep", *head, args.sweep])) for head in (extra[:cut], []))
        vars(args).update({k: v for k, v in given.items() if v != default[k]})
        extra = extra[cut:]
    extra = extra[1:] if extra[:1] == ["--"] else extra
    if args.cores < 1:
        raise _UsageError("dynode sweep: error: --cores must be >= 1")
    res = run_sweep(args.sweep, cores=args.cores, threads=args.threads, snakemake_args=extra, dry_run=args.dry_run,
                    collect_only=args.collect, verbose=args.verbose)
    if args.dry_run:
        return res["returncode"]
    done = len(res["points"]) - len(res["failed"])
    print(f"sweep: {done}/{len(res['points'])} points done; summary {res['csv']}, {res['dataset']}, "
          f"{res['figure']}")
    return 0 if not res["failed"] else 1


COMMANDS = {"demo": cmd_demo, "compare": cmd_compare, "train": cmd_train, "simulate": cmd_simulate, "experiment": cmd_experiment,
            "convergence": cmd_convergence, "inspect": cmd_inspect, "analyze": cmd_analyze, "config": cmd_config,
            "sweep": cmd_sweep, "fit": cmd_fit}


if __name__ == "__main__":
    sys.exit(main())
