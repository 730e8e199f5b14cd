"""Reading an archive: :func:`open_archive` (checked, lazy), the check of every lazy read, and
the accessors (populations, conditions, time windows, population time courses).

A tree from :func:`open_archive` reads lazily; a read that hits a damaged chunk raises
:class:`~dynode.errors.ArchiveCorruptError` naming the population, variable and steps.
"""

from __future__ import annotations

import itertools
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from xarray.backends.common import BackendArray

from dynode.archive.layout import _archive_attrs, _root_meta
from dynode.archive.lease import LEASE_ATTR, lease_state
from dynode.archive.verify import VerifyReport, _chunk_faults, _damages, _scan
from dynode.errors import (ArchiveCorruptError, ArchiveError, ArchiveLockedError, ConfigurationError,
                           user_stacklevel)

class IncompleteArchiveWarning(UserWarning):
    """The archive's run did not complete (status ``incomplete`` or ``failed: ...``)."""



class _CheckedArray(BackendArray):
    """A lazily read array of an archive (xarray's zarr wrapper inside). A read that fails on
    a damaged chunk raises :class:`~dynode.errors.ArchiveCorruptError` naming the group,
    variable and steps (found by checking the chunks that the read touched); every other
    error passes unchanged. A read that succeeds costs one extra call."""

    __slots__ = ("_inner", "_path", "_group", "_name", "shape", "dtype")

    def __init__(self, inner, path: Path, group: str, name: str):
        self._inner, self._path, self._group, self._name = inner, path, group, name
        self.shape, self.dtype = inner.shape, inner.dtype

    def get_array(self):
        return self._inner.get_array()

    def __getitem__(self, key):
        try:
            return self._inner[key]
        except Exception as exc:
            self._raise_if_damaged(key, exc)
            raise

    async def async_getitem(self, key):
        try:
            return await self._inner.async_getitem(key)
        except Exception as exc:
            self._raise_if_damaged(key, exc)
            raise

    def _raise_if_damaged(self, key, exc: Exception) -> None:
        """Raise :class:`ArchiveCorruptError` (from ``exc``) when a chunk that ``key`` touches
        is damaged; return when none is."""
        import zarr

        arr = self._inner.get_array()
        parts = tuple(getattr(key, "tuple", ()))
        parts += (slice(None),) * (len(arr.shape) - len(parts))
        touched = []
        for part, size, chunk in zip(parts, arr.shape, arr.chunks):
            idx = np.arange(size)[part] if isinstance(part, slice) else np.asarray(part).ravel() % size
            touched.append(sorted(set((idx // chunk).tolist())))
        folder = self._path / ("" if self._group == "/" else self._group) / self._name
        grid = list(itertools.product(*touched))
        # a missing chunk reads as the fill value, without an error: only what failed is named
        faults = [f for f in _chunk_faults(arr, folder, grid, read=True) if f[1] != "chunk file missing"]
        if not faults:
            return
        dims = arr.metadata.dimension_names or ()
        steps = arr.shape[0] if dims and dims[0] == "time" else 0
        try:
            times = np.asarray(zarr.open_array(self._path / "time", mode="r")[:], dtype=np.float64)
        except Exception:  # the time axis is damaged too: the steps are named without times
            times = None
        found = [(self._group, self._name, coords[0] if steps else None, why) for coords, why in faults]
        damaged = _damages(found, {(self._group, self._name): arr.chunks[0]}, steps, times)
        report = VerifyReport(str(self._path), steps, len(grid), True, True, tuple(damaged))
        what = self._name if self._group == "/" else f"{self._name} of population {self._group!r}"
        raise ArchiveCorruptError(
            f"archive {str(self._path)!r}: reading {what} hit damaged data on disk:\n  "
            + "\n  ".join(map(str, damaged)) + "\nThat data cannot be repaired in place: re-run the "
            "simulation (dynode.archive.archive_config(tree) is its configuration) or read around "
            "it (tree.isel(time=...)); dynode.archive.verify_archive(path) lists every damaged chunk "
            "of the archive, and open_archive(path, verify=True) checks them all before use",
            report=report) from exc


def _check_reads(tree: xr.DataTree, path: Path) -> None:
    """Put a :class:`_CheckedArray` under every lazily read variable of ``tree`` (xarray's
    lazy arrays hold the backend array in ``.array``; views made later share it)."""
    from xarray.backends.zarr import ZarrArrayWrapper
    from xarray.core.indexing import ExplicitlyIndexed

    for node in tree.subtree:
        group = node.path.strip("/") or "/"
        for name, var in node.to_dataset(inherit=False).variables.items():
            holder = var._data
            while isinstance(holder, ExplicitlyIndexed) and hasattr(holder, "array"):
                if isinstance(holder.array, ZarrArrayWrapper):
                    holder.array = _CheckedArray(holder.array, path, group, str(name))
                    break
                holder = holder.array


def open_archive(path, *, trim: bool = True, verify: bool = False) -> xr.DataTree:
    """Open an archive lazily as an ``xarray.DataTree`` (nothing is read until used).

    The store must hold what the archive declares and every chunk of the committed steps
    must exist (a cheap check of the files); with ``verify`` every chunk is also read and
    checksummed (:func:`verify_archive`). Damage raises
    :class:`~dynode.errors.ArchiveCorruptError`, and so does a later lazy read that hits a
    chunk failing its checksum (naming the population, variable and steps); plain
    ``xarray.open_datatree(path, engine="zarr")`` still opens a damaged store (missing chunks
    read as NaN). An archive whose run did not complete gives an
    :class:`IncompleteArchiveWarning` that says whether a live run is still writing it; with
    ``trim`` (default) steps past the last committed block (``steps_written``) are cut off.
    """
    path = Path(path)
    meta = _root_meta(path)
    attrs = _archive_attrs(path)
    lease = lease_state(attrs)
    live = lease is not None and not lease.dead and lease.problem is None
    untrusted = lease is not None and not lease.dead and lease.problem is not None
    consolidated = bool(meta.get("consolidated_metadata"))
    report = _scan(path, attrs, read=verify)  # before xarray reads the (consolidated) metadata
    if not report.ok:
        raise ArchiveCorruptError(str(report) + "\n(plain xarray.open_datatree(path, engine='zarr') "
                                  "may open it anyway: missing chunks read as NaN)", report=report)
    try:
        tree = xr.open_datatree(path, engine="zarr", consolidated=consolidated)
    except ValueError as exc:
        if live:
            raise ArchiveLockedError(f"archive {str(path)!r} is being written by {lease.describe()} "
                                     f"and does not open right now ({exc}): the run is cutting its "
                                     "arrays after a failure; open it again in a moment",
                                     pid=lease.pid, host=lease.host, heartbeat_age=lease.age) from exc
        if attrs.get("status") == "complete":
            raise
        how = ("dynode.archive.repair_archive(path, force=True) (its 'writer' lease cannot be "
               f"trusted: {lease.problem})" if untrusted else "dynode.archive.repair_archive(path)")
        raise ArchiveError(f"the incomplete archive {str(path)!r} does not open ({exc}); the run was "
                           f"killed while cutting its arrays after a failure: {how} cuts every "
                           "array back to the last committed block") from exc
    _check_reads(tree, path)
    status = tree.attrs.get("status", "unknown")
    n = int(attrs.get("steps_written", tree.sizes.get("time", 0)))
    if status != "complete":
        if live:
            who = f"being written by {lease.describe()}; it holds {n} committed time steps so far"
        elif untrusted:
            who = (f"its {LEASE_ATTR!r} lease cannot be trusted ({lease.problem}), so whether a run "
                   f"still writes it is unknown; it holds {n} committed time steps (if no run "
                   "does, dynode.archive.repair_archive(path, force=True) breaks the lease and "
                   "cuts the arrays on disk to them)")
        elif lease is not None:
            who = (f"its writer, {lease.describe()}, is gone; it holds {n} committed time steps "
                   "(dynode.archive.repair_archive(path) cuts the arrays on disk to them)")
        else:
            who = f"it holds {n} committed time steps"
        warnings.warn(f"archive {str(path)!r}: status {status!r}, {who}", IncompleteArchiveWarning,
                      stacklevel=user_stacklevel())
        if trim and tree.sizes.get("time", 0) > n:
            tree = tree.isel(time=slice(0, n))
    return tree



def archive_config(tree: xr.DataTree) -> dict:
    """The run's full configuration (model, solver, dt, record, stimulus) as a dict."""
    return json.loads(tree.attrs["config"])


def populations(tree: xr.DataTree) -> list[str]:
    """Names of the recorded populations (the groups holding ``rate``)."""
    present = [name for name, node in tree.children.items() if "rate" in node.data_vars]
    order = tree.attrs.get("populations")
    if isinstance(order, str):
        order = json.loads(order)
    if order:  # the recording order (zarr lists groups alphabetically)
        return [n for n in order if n in present] + [n for n in present if n not in order]
    return present


def select_conditions(tree: xr.DataTree, **conditions) -> xr.DataTree:
    """The samples whose condition coordinates match, e.g. ``contrast=0.5`` or
    ``contrast=[0.25, 0.5]`` (a list means any of its values)."""
    root = tree.to_dataset()
    mask = np.ones(root.sizes["sample"], dtype=bool)
    for name, value in conditions.items():
        if name not in root.coords or root[name].dims != ("sample",):
            known = [c for c in root.coords if root[c].dims == ("sample",) and c != "sample"]
            raise ConfigurationError(f"unknown condition {name!r}; the archive's conditions are {known}")
        values = np.asarray(root[name].values)
        wanted = value if isinstance(value, (list, tuple, set, np.ndarray)) else [value]
        mask &= np.isin(values.astype(object) if values.dtype.kind == "T" else values, list(wanted))
    if not mask.any():
        raise ConfigurationError(f"no sample matches {conditions}")
    return tree.isel(sample=np.flatnonzero(mask))


def time_window(tree: xr.DataTree, start: float | None = None, stop: float | None = None) -> xr.DataTree:
    """The steps with ``start <= time <= stop`` (ms, both ends included)."""
    return tree.sel(time=slice(start, stop))


def _rate(tree: xr.DataTree, population: str) -> xr.DataArray:
    """The (lazy) stored ``rate`` of ``population``; a ConfigurationError naming the recorded ones."""
    if population not in tree.children or "rate" not in tree[population].data_vars:
        raise ConfigurationError(f"no population {population!r} in the archive; recorded: "
                                 f"{populations(tree)}")
    return tree[population].to_dataset()["rate"]


def population_time_course(tree: xr.DataTree, population: str, *, statistic: str = "mean",
                           block_steps: int | None = None) -> xr.DataArray:
    """The population's ``(time, sample)`` time course: its rate averaged over units
    (``statistic="mean"``) or their standard deviation (``"std"``).

    Reads the archive block by block along time, so memory stays bounded. A population
    recorded with ``reduce="mean"`` / ``"mean_std"`` returns the stored course.
    """
    rate = _rate(tree, population)
    if statistic not in ("mean", "std"):
        raise ConfigurationError(f"statistic must be 'mean' or 'std', got {statistic!r}")
    red = rate.attrs.get("reduction")
    if red == statistic:
        out = rate.load()
    elif red == "mean_std":
        out = rate.sel(statistic=statistic).load()
    elif red is not None:
        raise ConfigurationError(f"population {population!r} was recorded with reduce={red!r}; its "
                                 f"{statistic} over units cannot be computed from that")
    else:
        units = [d for d in rate.dims if d not in ("time", "sample")]
        step = block_steps or int(rate.encoding.get("chunks", (64,))[0] or 64)
        parts = []
        for i in range(0, rate.sizes["time"], step):
            part = rate.isel(time=slice(i, i + step)).astype(np.float64)
            parts.append(part.mean(units) if statistic == "mean" else part.std(units))
        out = xr.concat(parts, dim="time").astype(rate.dtype)
    out.attrs = {"units": rate.attrs.get("units", "1"),
                 "long_name": f"{statistic} rate of {population} over units"}
    out.name = population
    return out


def population_time_courses(tree: xr.DataTree, names: Sequence[str] | None = None, *,
                 statistic: str = "mean") -> xr.Dataset:
    """:func:`population_time_course` of several populations (default all) as one Dataset."""
    names = populations(tree) if names is None else list(names)
    return xr.Dataset({n: population_time_course(tree, n, statistic=statistic) for n in names})
