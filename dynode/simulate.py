"""``simulate``: a recording run without gradients, streamed to an archive as it goes.

The solver hands every recorded state to an observer. The observer applies the
:class:`~dynode.record.Record` (selection, reduction, storage dtype) on the device and copies
the result into a preallocated host block of ``chunk_steps`` steps (pinned memory and
non-blocking copies on a GPU: no synchronisation per step). A full block goes to a background
writer thread while the solver fills the other block, so peak memory is two blocks whatever
``t_end`` is, and writing overlaps computing. See :mod:`dynode.archive` for the layout and the
crash-safety protocol.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import math
import platform
import queue
import sys
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from dynode.archive import (Block, GroupSpec, Layout, MemoryArchiveWriter, ZarrArchiveWriter,
                            condition_coords, prepare_path, ARCHIVE_FORMAT, COMPRESSIONS,
                            HEARTBEAT_S, LEASE_ATTR, RATE_UNITS)
from dynode.errors import ArchiveError, ConfigurationError, DynodeError
from dynode.integrate import check_state_memory
from dynode.problem import as_ms, make_problem
from dynode.record import PopulationPlan, Record
from dynode.solver import Solver, get_solver
from dynode.stimulus import as_stimulus
from dynode.archive import open_archive
from dynode.network import Network
from dynode.version import __version__
from dynode.spec import spec_record, weights_fingerprint

__all__ = ["simulate", "SimulationResult"]

_BLOCK_BYTES = 16 * 2 ** 20  # default block size (all recorded populations together)
_MAX_CHUNK_STEPS = 1024


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
    """The model as data: populations (shape, tau, phi, bias), inputs, connections (delays)."""

    if isinstance(field, Network):
        pops = []
        for name, pop in field.populations.items():
            pops.append({"name": name, "shape": list(pop.shape), "tau": _jsonable(pop.tau),
                         "phi": repr(pop.phi),
                         "bias": None if pop.bias is None else list(pop.bias.shape),
                         "combine": None if pop.combine is None else repr(pop.combine)})
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
            "parameters": sum(p.numel() for p in field.parameters())}


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


# -- the observer -------------------------------------------------------------------------
class _Streamer:
    """The solver's observer: fills host blocks, hands full ones to a writer thread.

    Two block buffers rotate between the solver (filling) and the writer (writing); the
    solver waits only if the writer is a whole block behind. Writer errors surface in the
    solver's thread at the next hand-off.

    ``hold``: the solver hands over fresh tensors that it never modifies afterwards (the
    fixed-step solvers), so on the CPU, when no dtype conversion is needed, the observer
    keeps references and the writer thread copies them into the block (off the solver's
    thread). Each held tensor's version counter is checked after the copy: a state
    modified in place in the meantime is an error, never silently wrong data.
    """

    def __init__(self, plans: list[PopulationPlan], inputs, input_names: tuple[str, ...],
                 chunk_steps: int | None, n_times: int, make_sink, progress, hold: bool = False):
        self.plans, self.inputs, self.input_names = plans, inputs, input_names
        self.chunk_steps, self.n_times = chunk_steps, n_times
        self.make_sink, self.progress = make_sink, progress
        self.hold = hold
        self.sink = None
        self._free: queue.Queue = queue.Queue()
        self._work: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._cur = None
        self._held: list[list] = []
        self._i = 0

    # called by the solver with every recorded state
    def __call__(self, t: float, state: dict[str, Tensor]) -> None:
        if self._cur is None:
            self._start(state)
        bufs, times, stim = self._cur
        i = self._i
        if self.hold:
            refs = [plan.transform(state[plan.name]) for plan in self.plans]
        else:
            for plan, buf in zip(self.plans, bufs):
                buf[i].copy_(plan.transform(state[plan.name]), non_blocking=True)
        if stim is not None:
            x = self.inputs(t)
            for j, name in enumerate(self.input_names):
                stim[i, :, j].copy_(_unit_mean(x[name], stim.shape[1]), non_blocking=True)
        times[i] = t
        if self.hold:  # commit the step only once everything above succeeded
            for held, v in zip(self._held, refs):
                held.append((v, v._version))
        self._i = i + 1
        if self._i == self.chunk_steps:
            self._hand_off()
        if self.progress is not None:
            self.progress.advance(t)

    def _start(self, state: dict[str, Tensor]) -> None:
        outs = [p.transform(state[p.name]) for p in self.plans]
        device = next(iter(state.values())).device
        batch = next(iter(state.values())).shape[0]
        dtype = self.plans[0].dtype if self.plans else torch.float32
        per_step = sum(o.numel() for o in outs) * dtype.itemsize + batch * len(self.input_names) * 4
        if self.chunk_steps is None:
            self.chunk_steps = max(1, min(self.n_times, _MAX_CHUNK_STEPS, _BLOCK_BYTES // max(per_step, 1)))
        k = self.chunk_steps
        pin = device.type == "cuda"
        self.hold = self.hold and device.type == "cpu" and all(o.dtype == dtype for o in outs)
        # a cast to a narrower storage dtype turns values beyond its range into inf: one check
        # per block (in the writer thread) catches that before the block is written
        self._narrow = dtype.itemsize < next(iter(state.values())).dtype.itemsize
        self._shapes = [tuple(o.shape[1:]) for o in outs]
        for _ in range(2):
            bufs = [torch.empty((k, *o.shape), dtype=dtype, pin_memory=pin) for o in outs]
            stim = (torch.empty((k, batch, len(self.input_names)), dtype=dtype, pin_memory=pin)
                    if self.input_names else None)
            self._free.put((bufs, np.empty(k, dtype=np.float64), stim))
        self._event = torch.cuda.Event if device.type == "cuda" else None
        self.sink = self.make_sink(batch, self._shapes, self.chunk_steps)
        self._thread = threading.Thread(target=self._write_loop, name="dynode-archive-writer",
                                        daemon=True)
        self._thread.start()
        self._cur = self._free.get()
        self._held = [[] for _ in self.plans]
        self._i = 0

    def _submit(self) -> None:
        event = None
        if self._event is not None:
            event = self._event()
            event.record()
        self._work.put((self._cur, self._i, event, self._held if self.hold else None))
        self._cur, self._i, self._held = None, 0, [[] for _ in self.plans]

    def _hand_off(self) -> None:
        if self._error is not None:
            raise self._error
        self._submit()
        while True:  # wait for a free block, but notice a failed writer
            try:
                self._cur = self._free.get(timeout=0.5)
                break
            except queue.Empty:
                if self._error is not None:
                    raise self._error from None
        if self._error is not None:
            raise self._error

    def _write_loop(self) -> None:
        while True:
            try:
                item = self._work.get(timeout=HEARTBEAT_S)
            except queue.Empty:  # the solver is busy: keep the archive's lease fresh
                if self._error is None and hasattr(self.sink, "heartbeat"):
                    try:
                        self.sink.heartbeat()
                    except BaseException as exc:  # surfaced in the solver's thread
                        self._error = exc
                continue
            if item is None:
                return
            (bufs, times, stim), n, event, held = item
            try:
                if self._error is None:
                    if event is not None:
                        event.synchronize()
                    if held is not None:
                        for plan, buf, refs in zip(self.plans, bufs, held):
                            if len(refs) != n:
                                raise DynodeError(f"internal: {len(refs)} held states for {n} steps")
                            torch.stack([v for v, _ in refs], out=buf[:n])
                            if any(v._version != ver for v, ver in refs):
                                raise DynodeError(
                                    f"population {plan.name!r}: the solver modified a saved state in "
                                    "place before it was written; a solver that declares "
                                    "fresh_states = True must hand the observer new tensors")
                    if self._narrow:
                        self._check_range(bufs, stim, n, times)
                    block = Block(times[:n].copy(), {p.name: b[:n].numpy() for p, b in zip(self.plans, bufs)},
                                  None if stim is None else stim[:n].numpy())
                    self.sink.write(block)
            except BaseException as exc:  # surfaced in the solver's thread
                self._error = exc
            finally:
                item = held = None  # drop the references to the solver's states
                self._free.put((bufs, times, stim))

    def _check_range(self, bufs, stim, n: int, times) -> None:
        """Refuse a block in which a value overflowed the storage dtype (became +-inf)."""
        for what, buf in [*((f"population {p.name!r}", b) for p, b in zip(self.plans, bufs)),
                          ("the stimulus", stim)]:
            if buf is None or not torch.isinf(buf[:n]).any():
                continue
            bad = torch.isinf(buf[:n]).flatten(1).any(dim=1).nonzero()[:, 0]
            name = str(buf.dtype).removeprefix("torch.")
            wider = "float32" if buf.dtype == torch.float16 else "float64"
            raise ArchiveError(
                f"{what}: values beyond the range of Record(dtype={name!r}) (|x| > "
                f"{torch.finfo(buf.dtype).max:g}) at t = {times[int(bad[0])]:g}..{times[int(bad[-1])]:g} ms "
                f"would be stored as inf; record with Record(dtype={wider!r})")

    def close(self) -> None:
        """Write the partial last block and wait for the writer; re-raise its error."""
        if self._thread is None:
            return
        if self._cur is not None and self._i > 0 and self._error is None:
            self._submit()
        self._work.put(None)
        self._thread.join()
        self._thread = None
        if self._error is not None:
            raise self._error


def _unit_mean(x: Tensor, batch: int) -> Tensor:
    if x.dim() == 0:
        return x.expand(batch)
    if x.shape[0] == batch:
        return x.reshape(batch, -1).mean(dim=1) if x.dim() > 1 else x
    return x.mean().expand(batch)  # an unbatched input shared by every sample


def _layout(plans, shapes, batch, conditions, input_names, stimulus_dtype, attrs) -> Layout:
    groups = []
    for plan, shape in zip(plans, shapes):
        dims = plan.stored_dims(shape)
        if plan.reduce is None:
            coords = plan.selected_coords()
        elif plan.reduce == "mean_std":
            coords = {"statistic": np.array(["mean", "std"], dtype=object)}
        else:
            coords = {d: np.arange(n) for d, n in zip(dims, shape)}
        red = plan.describe()["reduce"]
        what = "firing rate" if red is None else f"{red} of the firing rate over units"
        rate_attrs = {"units": RATE_UNITS, "long_name": f"{what} of population {plan.name}"}
        if red is not None:
            rate_attrs["reduction"] = red
        sel = plan.describe()["select"]
        if sel:
            rate_attrs["selection"] = json.dumps(sel)
        groups.append(GroupSpec(plan.name, dims, coords, rate_attrs,
                                np.dtype(str(plan.dtype).removeprefix("torch."))))
    return Layout(batch=batch, conditions=conditions, groups=tuple(groups), inputs=input_names,
                  stimulus_dtype=np.dtype(str(stimulus_dtype).removeprefix("torch.")), attrs=attrs)


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


# -- the entry point ----------------------------------------------------------------------
def simulate(field, stimulus=None, *, t_end: float, dt: float | None = None, solver="euler",
             record: Record | None = None, store=None, chunk_steps: int | None = None,
             overwrite: bool = False, progress: bool | None = None, t0: float = 0.0,
             initial_state=None, batch_size: int | None = None, max_abs: float | None = 1e6,
             check_every: int = 50, compression: str | None = "lz4", attrs: Mapping | None = None,
             memory_limit: float | None = None) -> SimulationResult:
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
    attrs : extra JSON-serialisable root attributes (e.g. an experiment name).
    memory_limit : bytes the working state (state, solver stages, delay ring) may take, checked
        before it is allocated (default: the free memory of the device; ``math.inf``: no check).

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
                           check_every=check_every,
                           check_state=lambda batch, device, dtype: check_state_memory(
                               field, solver_obj, dt, batch, device, dtype, memory_limit))
    shapes = {name: tuple(v.shape[1:]) for name, v in problem.y0.items()}
    plans = record.plan(shapes)
    conditions = condition_coords(getattr(stim, "conditions", None) or {}, problem.batch_size)
    input_names = tuple(problem.inputs(problem.t0)) if stim is not None else ()
    run_id = uuid.uuid4().hex
    config = {"model": model_config(field), "solver": describe_solver(solver_obj),
              "dt": None if dt is None else float(dt), "t0": float(t0), "t_end": float(t_end),
              "batch_size": problem.batch_size, "max_abs": max_abs, "check_every": check_every,
              "record": {"populations": [p.name for p in plans], "every": record.every,
                         "start": record.start, "stop": record.stop, "dtype": record.dtype,
                         "reduce": plans[0].describe()["reduce"] if plans else None,
                         "select": {p.name: p.describe()["select"] for p in plans}},
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
    stimulus_dtype = record.storage_dtype

    def make_sink(batch, out_shapes, k):
        layout = _layout(plans, out_shapes, batch, conditions, input_names, stimulus_dtype, root_attrs)
        if path is None:
            return MemoryArchiveWriter(layout)
        return ZarrArchiveWriter(path, layout, times, chunk_steps=k, compression=compression,
                                 overwrite=overwrite)

    bar = _progress_bar(progress, t0, t_end, dt, on_grid)
    hold = solver_obj.fresh_states
    streamer = _Streamer(plans, problem.inputs, input_names, chunk_steps, len(times), make_sink, bar,
                         hold=hold)
    try:
        with torch.no_grad():
            sol = get_solver(solver_obj).solve(problem, dt, observer=streamer)
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
