"""``simulate``: a recording run without gradients, streamed to an archive as it goes.

The data flow: ``simulate`` checks the arguments and builds the problem, the
:class:`~dynode.record.Record` resolves what is kept (:meth:`~dynode.record.Record.plan`) and
the archive's layout (:func:`~dynode.record.archive_layout`), and the archive streams the
solver's states into a writer (:class:`~dynode.archive.stream.Streamer`,
:mod:`dynode.archive.writer`); see :mod:`dynode.archive` for the layout and the crash-safety
protocol. This module adds the run's configuration as JSON, the progress bar and the result."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import math
import platform
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from dynode.archive import (ARCHIVE_FORMAT, COMPRESSIONS, LEASE_ATTR, MemoryArchiveWriter, Streamer,
                            ZarrArchiveWriter, condition_coords, open_archive, prepare_path)
from dynode.archive.stream import ObservingMemoryWriter, ObservingZarrWriter
from dynode.errors import ConfigurationError, DynodeError
from dynode.history import History
from dynode.integrate import check_state_memory
from dynode.network import Network
from dynode.problem import as_ms, make_problem
from dynode.record import Record, archive_layout
from dynode.solver import Solver, get_solver
from dynode.solvers.fixed import RK4, Euler, Heun, Midpoint
from dynode.spec import spec_record, weights_fingerprint
from dynode.stimulus import as_stimulus
from dynode.version import __version__

__all__ = ["simulate", "SimulationResult"]


class SimulationResult:
    """What :func:`simulate` returns.

    tree : the recording as an ``xarray.DataTree`` (for a store: opened lazily on first
    access, nothing loaded until used; in memory otherwise). stats :
    :class:`dynode.solvers.SolverStats`. final_state : ``{population: (batch, *shape)}`` at
    ``t_end`` (to continue the run). path : the store, or None. run_id, status : as in the
    archive's root attributes.
    """

    def __init__(self, *, tree: xr.DataTree | None, stats, final_state: dict[str, Tensor],
                 path: Path | None, run_id: str, status: str):
        if tree is None and path is None:
            raise ValueError("SimulationResult needs a tree or a path")
        self._tree = tree
        self.stats, self.final_state = stats, final_state
        self.path, self.run_id, self.status = path, run_id, status

    @property
    def tree(self) -> xr.DataTree:
        if self._tree is None:
            self._tree = open_archive(self.path)
        return self._tree

    def __getitem__(self, population: str) -> xr.DataArray:
        return self.tree[population]["rate"]

    def __repr__(self) -> str:
        where = f"path={str(self.path)!r}" if self.path is not None else "in memory"
        return (f"SimulationResult({where}, run_id={self.run_id!r}, status={self.status!r}, "
                f"nfe={self.stats.nfe})")


# -- configuration as JSON ----------------------------------------------------------------
def _jsonable(x):
    """A JSON-safe rendering: numbers, strings, lists and dicts stay; tensors are summarised;
    anything else becomes its ``repr`` (never pickled)."""
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    if isinstance(x, enum.Enum):
        return x.name.lower()
    if isinstance(x, (np.integer, np.floating)):
        return _jsonable(x.item())
    if isinstance(x, Tensor):
        if x.numel() <= 16:
            return _jsonable(x.detach().cpu().tolist())
        xf = x.detach().float()
        return {"shape": list(x.shape), "min": float(xf.min()), "max": float(xf.max()),
                "mean": float(xf.mean())}
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in x]
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    return repr(x)


def _spec_entries(net) -> dict:
    """The network as a rebuildable spec (:mod:`dynode.spec`; ``spec_error`` says why there is
    none) and the fingerprint of its weights, so ``dn.load_model(archive, weights=...)`` can
    rebuild the recorded model and check that the weights are the ones it ran with."""
    rec = spec_record(net)
    return {"spec": json.loads(rec["spec"]) if rec["spec"] else None, "spec_error": rec["spec_error"],
            "weights_sha256": weights_fingerprint(net)}


def model_config(field) -> dict:
    """The model as data: populations (shape, tau, phi, bias), inputs, connections (delays); for
    a custom vector field its protocol's answers. Both with the rebuildable spec (a custom field:
    its import path and ``spec_kwargs()``) or why there is none, and the weights' fingerprint."""
    if isinstance(field, Network):
        pops = [{"name": name, "shape": list(pop.shape), "tau": _jsonable(pop.tau), "phi": repr(pop.phi),
                 "bias": None if pop.bias is None else list(pop.bias.shape),
                 "combine": None if pop.combine is None else repr(pop.combine)}
                for name, pop in field.populations.items()]
        conns = [{"src": c.src, "dst": c.dst, "delay": c.delay, "op": repr(c.op)}
                 for c in field.connections]
        return {"type": type(field).__qualname__,
                "inputs": {k: list(v) for k, v in field.input_shapes().items()},
                "populations": pops, "connections": conns,
                "parameters": sum(p.numel() for p in field.parameters()),
                **_spec_entries(field)}
    return {"type": type(field).__qualname__, "repr": repr(field),
            "inputs": list(field.input_names()),
            "time_constants": _jsonable(field.time_constants()),
            "delays": _jsonable(field.delays()), "max_delay": float(field.max_delay()),
            "parameters": sum(p.numel() for p in field.parameters()),
            **_spec_entries(field)}


def describe_solver(solver: Solver) -> dict:
    options = ({f.name: _jsonable(getattr(solver, f.name)) for f in dataclasses.fields(solver)}
               if dataclasses.is_dataclass(solver) else {})
    return {"name": solver.name,
            "class": f"{type(solver).__module__}.{type(solver).__qualname__}", "options": options,
            "adaptive": bool(solver.adaptive)}


def _versions() -> dict:
    import zarr

    return {"dynode_version": __version__, "torch_version": torch.__version__,
            "python_version": platform.python_version(), "numpy_version": np.__version__,
            "xarray_version": xr.__version__, "zarr_version": zarr.__version__}


# -- progress and failure -----------------------------------------------------------------
class _Progress:
    """A tqdm bar over the solver's work: steps for a fixed-step run (``(t - t0) / dt``, counted
    from the recorded times, so recording every k-th step still counts every step), simulated
    ms for an adaptive one; tqdm shows the rate and the time left."""

    def __init__(self, t0: float, t_end: float, dt: float | None):
        from tqdm.auto import tqdm

        self.t0, self.dt = t0, dt
        if dt is not None:
            self.bar = tqdm(total=round((t_end - t0) / dt), unit="step", desc="dynode.simulate", leave=False)
        else:
            self.bar = tqdm(total=t_end - t0, unit="ms", desc="dynode.simulate (simulated time)", leave=False,
                            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} ms [{elapsed}<{remaining}, {rate_fmt}]")
        self.done = 0.0

    def advance(self, t: float) -> None:
        now = round((t - self.t0) / self.dt) if self.dt is not None else t - self.t0
        if now > self.done:
            self.bar.update(now - self.done)
            self.done = now

    def close(self) -> None:
        self.bar.close()


def _progress_bar(progress, t0: float, t_end: float, dt: float | None, on_grid: bool):
    if progress is None:
        progress = sys.stderr is not None and sys.stderr.isatty()
    if not progress:
        return None
    return _Progress(float(t0), float(t_end), float(dt) if on_grid and dt else None)


def _failure(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "failed: KeyboardInterrupt (the run was interrupted)"
    return f"failed: {type(exc).__name__}: {exc}"


# -- where the solver's own currents can be recorded ----------------------------------------------
_FIRST_STAGE_AT_RECORDED_STATE = (Euler, Heun, Midpoint, RK4)


def captures_currents(solver: Solver, field) -> bool:
    """Whether a recording of ``drive``/``lfp`` can keep the currents that ``solver`` computes
    itself (:class:`dynode.observe.CurrentsCapture`): a fixed-step method that evaluates the
    field at every grid time and state as its first stage through :meth:`Network.drive` (Euler
    with ``order="simultaneous"`` (and Euler-Maruyama), Heun (and stochastic Heun), Midpoint,
    RK4) on a :class:`Network` whose ``drive``/``forward`` are its own. Elsewhere (adaptive
    solvers with interpolated save times, ``order="sequential"``, a custom vector field, a
    subclass) the recording re-evaluates them (:class:`dynode.observe.DriveReader`)."""
    return (type(solver) in _FIRST_STAGE_AT_RECORDED_STATE
            and getattr(solver, "order", "simultaneous") == "simultaneous"
            and isinstance(field, Network) and type(field).drive is Network.drive
            and type(field).forward is Network.forward)


# -- the entry point ----------------------------------------------------------------------
def simulate(field, stimulus=None, *, t_end: float, dt: float | None = None, solver="euler",
             record: Record | None = None, store=None, chunk_steps: int | None = None,
             overwrite: bool = False, progress: bool | None = None, t0: float = 0.0,
             initial_state=None, batch_size: int | None = None, max_abs: float | None = 1e6,
             check_every: int = 50, compression: str | None = "lz4", attrs: Mapping | None = None,
             memory_limit: float | None = None, seed=None, cache_chunks: bool = False) -> SimulationResult:
    """Run ``field`` under ``stimulus`` without gradients and record it (see :class:`Record`).

    Parameters (as :func:`dynode.integrate`, plus)
    ----------
    record : what to keep (default ``Record()``: every population at every step).
    store : a path for a zarr v3 archive written while the run goes; ``None`` keeps the
        recording in memory.
    chunk_steps : time steps per written block (= the zarr chunk along time); default: about
        16 MiB per block. Peak memory is two blocks.
    overwrite : replace an existing dynode archive (otherwise an existing path is an error);
        a file, a link, a foreign folder or zarr store, and an archive that a live run is
        writing are refused even then. The store's folder is checked to be writable before
        the first step.
    progress : a tqdm bar over the solver steps (simulated ms for adaptive solvers), with rate and
        time left; default only when stderr is a terminal.
    compression : ``"lz4"`` (fast, default), ``"zstd"`` (smaller) or None.
    cache_chunks : with ``store``: write the chunk files through the page cache and leave them
        there (faster to read the archive back at once) instead of past it (the default takes
        less CPU from the run; :class:`~dynode.archive.ZarrArchiveWriter`).
    attrs : extra JSON-serialisable root attributes (e.g. an experiment name).
    memory_limit : bytes the working state (state, solver stages, delay ring) may take, checked
        before it is allocated (default: the free memory of the device; ``math.inf``: no check).
    seed : fixes the Brownian paths of a noisy field, as in :func:`dynode.integrate`; the
        per-sample keys are recorded in the archive's config (``noise_seeds``) for a replay.

    Returns a :class:`SimulationResult`. On an exception or Ctrl-C the steps computed so far
    are written, the archive's ``status`` becomes ``"failed: <reason>"`` and the exception
    propagates.
    """
    record = Record() if record is None else record
    if not isinstance(record, Record):
        raise ConfigurationError(f"record must be a dynode.Record, got {type(record).__name__}")
    if chunk_steps is not None and (isinstance(chunk_steps, bool) or not isinstance(chunk_steps, int)
                                    or chunk_steps < 1):
        raise ConfigurationError(f"chunk_steps must be a positive int, got {chunk_steps!r}")
    if compression not in COMPRESSIONS:
        raise ConfigurationError(f"compression must be one of {list(COMPRESSIONS)}, got {compression!r}")
    if not isinstance(cache_chunks, bool):
        raise ConfigurationError(f"cache_chunks must be True or False, got {cache_chunks!r}")
    if cache_chunks and store is None:
        raise ConfigurationError("cache_chunks=True applies to the chunk files of a store; pass store=<path> "
                                 "or leave cache_chunks out")
    if attrs is not None and not isinstance(attrs, Mapping):
        raise ConfigurationError(f"attrs must be a dict of extra root attributes, got {type(attrs).__name__}")
    extra = dict(attrs or {})
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"attrs must be JSON-serialisable (numbers, strings, lists, dicts): "
                                 f"{exc}") from None
    path = None if store is None else prepare_path(store, overwrite)
    solver_obj = get_solver(solver)
    on_grid = solver_obj.grid
    t0, t_end = as_ms(t0, "t0"), as_ms(t_end, "t_end")
    dt = None if dt is None else as_ms(dt, "dt")
    times = record.times(t0, t_end, dt, on_grid)
    stim = as_stimulus(stimulus)
    problem = make_problem(field, stim, t0=t0, t_end=t_end, save_at=times,
                           initial_state=initial_state, batch_size=batch_size, max_abs=max_abs,
                           check_every=check_every, seed=seed,
                           check_state=lambda batch, device, dtype: check_state_memory(
                               field, solver_obj, dt, batch, device, dtype, memory_limit))
    shapes = {name: tuple(v.shape[1:]) for name, v in problem.y0.items()}
    plans = record.plan(shapes, field)
    make_history = None
    if captures_currents(solver_obj, field):
        def make_history() -> History:  # what the solver starts from (needed only for a run without steps)
            return History(problem.y0, t0=t0, dt=dt, max_delay=float(field.max_delay()), derivatives=False,
                           inputs=problem.inputs, tail=problem.tail)
    observations = record.observation_run(field, plans, times, t0, problem.y0, problem.inputs, problem.tail,
                                          copy=not solver_obj.fresh_states, make_history=make_history)
    capture = None if observations is None else observations.capture
    conditions = condition_coords(getattr(stim, "conditions", None) or {}, problem.batch_size)
    input_names = tuple(problem.inputs(problem.t0)) if stim is not None else ()
    run_id = uuid.uuid4().hex
    config = {"model": model_config(field), "solver": describe_solver(solver_obj),
              "dt": None if dt is None else float(dt), "t0": float(t0), "t_end": float(t_end),
              "batch_size": problem.batch_size, "max_abs": max_abs, "check_every": check_every,
              "noise_seeds": None if problem.seeds is None else problem.seeds.tolist(),
              "record": {"populations": [p.name for p in plans], "every": record.every,
                         "start": record.start, "stop": record.stop, "dtype": record.dtype,
                         "reduce": plans[0].describe()["reduce"] if plans else None,
                         "select": {p.name: p.describe()["select"] for p in plans},
                         **({} if observations is None else
                            {"observe": plans[0].describe()["observe"] if plans else [],
                             "electrodes": {p.name: p.describe()["electrode"] for p in plans
                                            if p.electrode is not None}})},
              "stimulus": None if stim is None else {
                  "type": type(stim).__qualname__, "repr": repr(stim),
                  "breakpoints": list(stim.breakpoints), "conditions": list(conditions),
                  "inputs": list(input_names)}}
    root_attrs = {"dynode_archive": ARCHIVE_FORMAT, "title": "dynode simulation", "run_id": run_id,
                  "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "solver": config["solver"]["name"], "populations": [p.name for p in plans],
                  **({} if dt is None else {"dt": float(dt)}), "t0": float(t0),
                  "t_end": float(t_end), "config": json.dumps(config), **_versions()}
    clash = sorted(set(extra) & (set(root_attrs) | {"status", "steps_written", "solver_stats",
                                                     LEASE_ATTR}))
    if clash:
        raise ConfigurationError(f"attrs {clash} would overwrite the archive's own attributes; rename them")
    root_attrs.update(extra)

    def make_sink(batch, out_shapes, k):
        layout = archive_layout(plans, out_shapes, batch, conditions, input_names, record.storage_dtype,
                                root_attrs)
        observing = any(g.variables for g in layout.groups)
        if observing:  # every observation has the per-sample shape its group declares
            rate_shape = dict(zip((p.name for p in plans), out_shapes))
            declared = {(g.name, v.name): rate_shape[g.name] if v.dims == g.dims else ()
                        for g in layout.groups for v in g.variables}
            for key, shape in zip(streamer.keys[len(plans):], out_shapes[len(plans):]):
                if tuple(shape) != declared[key]:
                    raise DynodeError(f"internal: observation {key[1]!r} of {key[0]!r} has per-sample shape "
                                      f"{tuple(shape)}, the archive declares {declared[key]}")
        if path is None:
            return (ObservingMemoryWriter if observing else MemoryArchiveWriter)(layout)
        return (ObservingZarrWriter if observing else ZarrArchiveWriter)(
            path, layout, times, chunk_steps=k, compression=compression, overwrite=overwrite,
            cache_chunks=cache_chunks)

    bar = _progress_bar(progress, t0, t_end, dt, on_grid)
    streamer = Streamer(plans, problem.inputs, input_names, chunk_steps, len(times), make_sink, bar,
                        hold=solver_obj.fresh_states, observations=observations)
    if capture is not None:
        if field.drive_hook is not None:
            raise ConfigurationError("this network is already being recorded by another dynode.simulate "
                                     "(its drive_hook is set); record one run of a network at a time")
        field.drive_hook = capture
    try:
        with torch.no_grad():
            try:
                sol = get_solver(solver_obj).solve(problem, dt, observer=streamer)
            finally:
                if capture is not None:
                    del field.drive_hook  # the class attribute (None) again
            streamer.close()
    except BaseException as exc:
        status = _failure(exc)
        try:
            streamer.close()
        except BaseException as write_exc:  # keep the original error; say what else failed
            exc.add_note(f"dynode.simulate: writing the last block also failed: {write_exc!r}")
        if streamer.sink is not None:
            try:
                streamer.sink.finish(status)
            except Exception as mark_exc:
                exc.add_note(f"dynode.simulate: could not mark the archive failed: {mark_exc!r}")
        raise
    finally:
        if bar is not None:
            bar.close()
    stats = sol.stats
    sink = streamer.sink
    if sink is None:
        raise DynodeError(f"{type(solver_obj).__name__}.solve never called the observer; simulate needs a "
                          "solver that hands every saved state to solve(..., observer=...)")
    sink.finish("complete", {"solver_stats": json.dumps(stats.as_dict())})
    return SimulationResult(tree=sink.result() if path is None else None, stats=stats,
                            final_state=sol.final_state, path=path, run_id=run_id, status="complete")
