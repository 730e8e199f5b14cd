"""Parameter sweeps on Snakemake: a base run config plus a grid (or list) of overrides.

A sweep file::

    base: base.yaml                 # a run config (path relative to this file) or a mapping
    output: sweeps/recurrence       # default: beside the sweep file, <its name>-out
    grid:                           # every combination (or `points:` a list of override mappings)
      model.options.recurrence_type: [full, self]
      training.seed: [0, 1]
    steps: [train]                  # per point: train, then optionally experiment (+ analysis)

expands into one run folder per point, ``<output>/points/pNNN/`` holding its full
``config.yaml``; Snakemake runs the points (locally with ``--cores N``, on a cluster with its
executor plugins: ``dynode sweep SWEEP.yaml -- --executor slurm --jobs 50``). A point is done
when its ``result.json`` exists and was computed with the point's config: re-running resumes
(done points are not recomputed, a killed training continues from its checkpoint), a failed
point is reported and does not stop the others (``--keep-going``). Snakemake's own output is
quiet (its errors still print; ``<output>/snakemake.log`` keeps it; ``--verbose`` shows it).
``--dry-run`` runs and writes nothing: it prints one line per point (would run, would resume,
done) after the same checks, and has Snakemake check the plan with its own dry run. The summary collects every
point: ``sweep_summary.csv``, ``sweep_summary.nc`` (an xarray Dataset with one dimension per
swept key for a grid) and ``sweep_summary.png`` (the metric per point). Snakemake is an
optional extra: ``pip install -e ".[sweep]"``.

Safety of the output folder (checked before anything in it is changed):

* **One sweep at a time.** While ``dynode sweep`` runs (also ``--collect``)
  it owns the folder through ``<output>/sweep.owner.json`` (created atomically with
  ``O_CREAT | O_EXCL``; JSON: pid, host, start time, sweep file, grid, and the pid of its
  Snakemake), removed again when it ends, by an error too. A second sweep into the folder is a
  :class:`SweepLockedError` naming that owner (CLI exit 2). An owner that is provably gone (same
  host, and neither it nor its Snakemake runs any more: killed, crashed, rebooted) is taken over
  with a note on stderr (a dry run only checks this). An owner on another host cannot be
  checked from here: once sure that sweep has ended, delete ``sweep.owner.json`` by hand.
* **One sweep per folder.** ``sweep.json`` records the sweep's steps and, per point, the
  sha256 fingerprint of its whole resolved config (:func:`point_fingerprint`). Running the same
  sweep again resumes it; a sweep whose points, configs or steps differ (another grid, an edited
  base config), a folder written by an older dynode (no fingerprints) and a non-empty folder
  that is not a sweep's are refused (:class:`~dynode.errors.ConfigurationError` naming what
  differs): give the new sweep its own ``output:`` folder, or move the old one aside. There is
  no option to mix two sweeps in one folder, by design.
* **No result of another config.** A point's checkpoints hold its resolved config, and resuming
  refuses a ``last.pt`` of another one (:meth:`dynode.train.Trainer.resume`, naming the keys
  that differ); ``result.json`` holds the fingerprint, and one of another config is not
  counted as done (``stale`` in the summary) nor overwritten: the point refuses to run until
  its folder is moved aside. Nothing is deleted to restart a point.
"""

from dynode.sweep.collect import collect
from dynode.sweep.config import SweepConfig, check_key, expand, load_sweep, point_fingerprint, point_record, write_points
from dynode.sweep.folder import OWNER_FILE, SweepLockedError, acquire_folder, release_folder
from dynode.sweep.run import run_point, run_sweep

__all__ = ["SweepConfig", "SweepLockedError", "load_sweep", "expand", "check_key", "write_points", "run_sweep",
           "collect", "run_point", "point_record", "point_fingerprint", "acquire_folder", "release_folder",
           "OWNER_FILE"]
