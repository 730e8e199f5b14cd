"""Trajectory archives: the xarray/zarr layout, streamed writing, reading and export.

Layout (a ``xarray.DataTree``; on disk a zarr v3 store, one zarr group per node)::

    /                      root: coords time (ms), sample (+ condition coords on sample)
        stimulus           (time, sample, input): mean of each stimulus input over its units
        attrs              dynode_archive, status, run_id, created, config (JSON), solver,
                           dt, t0, t_end, solver_stats (JSON), steps_written, *_version
    /<population>          one group per recorded population
        rate               (time, sample, channel, y, x) -- fewer dims for vector populations,
                           (time, sample) after reduce="mean"/"std",
                           (time, sample, statistic) after reduce="mean_std"
        coords             time, sample, condition coords, channel, y, x (kept unit indices)

Every variable carries CF-style ``units`` / ``long_name`` attributes; time is float ms.

Streaming protocol (crash safety): the store is created when the first state arrives, with
the whole time axis allocated (every recording time is known before the run) and written
into the ``time`` coordinates, status ``incomplete`` and ``steps_written = 0``. Each block of
``chunk_steps`` steps then writes whole new chunks of the data arrays (zarr's local store
writes every file atomically) and commits ``steps_written``. Array shapes never change while
the run goes, so a killed run leaves a store that plain
``xarray.open_datatree(path, engine="zarr")`` opens, with every committed block; the steps
after ``steps_written`` read as NaN (the fill value), and :func:`open_archive` cuts them off.
A run that ends with an exception or Ctrl-C writes what it computed, cuts the arrays to it
and sets ``status = "failed: <reason>"``. Metadata is consolidated once, when the run ends.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from dynode.errors import ConfigurationError, DynodeError

__all__ = [
    "ARCHIVE_FORMAT", "IncompleteArchiveWarning", "Layout", "GroupSpec", "Block",
    "ZarrArchiveWriter", "MemoryArchiveWriter", "open_archive", "archive_config", "repair_archive",
    "select_conditions", "time_window", "population_time_course", "time_courses", "to_brainscore",
]

ARCHIVE_FORMAT = 1  # root attribute ``dynode_archive``: version of this layout
TIME_ATTRS = {"units": "ms", "long_name": "time", "standard_name": "time"}
SAMPLE_ATTRS = {"units": "1", "long_name": "sample index in the batch"}
RESERVED = frozenset({"time", "sample", "rate", "stimulus", "input", "statistic", "channel", "x",
                      "y", "z", "feature"})
COMPRESSIONS = ("lz4", "zstd", None)


class IncompleteArchiveWarning(UserWarning):
    """The archive's run did not complete (status ``incomplete`` or ``failed: ...``)."""


# -- layout ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupSpec:
    """One population's group: the stored per-sample ``dims``, their ``coords``, ``rate`` attrs."""

    name: str
    dims: tuple[str, ...]
    coords: dict[str, np.ndarray]
    attrs: dict
    dtype: np.dtype


@dataclass(frozen=True)
class Layout:
    """Everything that does not change along time: sample labels, groups, inputs, root attrs."""

    batch: int
    conditions: dict[str, np.ndarray]
    groups: tuple[GroupSpec, ...]
    inputs: tuple[str, ...]
    stimulus_dtype: np.dtype
    attrs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Block:
    """``times`` (k,) float64 ms; ``rates`` {population: (k, batch, *dims)}; ``stimulus``
    (k, batch, n_inputs) or None."""

    times: np.ndarray
    rates: dict[str, np.ndarray]
    stimulus: np.ndarray | None

    def __len__(self) -> int:
        return len(self.times)


def condition_coords(conditions: Mapping[str, Sequence], batch: int) -> dict[str, np.ndarray]:
    """Validate stimulus condition labels: one value per sample, numbers, bools or strings."""
    out = {}
    for name, values in (conditions or {}).items():
        if not isinstance(name, str) or not name.isidentifier() or name in RESERVED:
            raise ConfigurationError(f"stimulus condition {name!r}: condition names must be identifiers "
                                     f"other than {sorted(RESERVED)}")
        arr = np.asarray(values.tolist() if hasattr(values, "tolist") else list(values))
        if arr.ndim != 1 or len(arr) != batch:
            raise ConfigurationError(f"stimulus condition {name!r} has {arr.shape} values; give one "
                                     f"value per sample (batch {batch})")
        if arr.dtype.kind in "US" or (arr.dtype.kind == "O" and all(isinstance(v, str) for v in arr)):
            arr = np.array([str(v) for v in arr], dtype=object)  # stored as zarr variable-length utf8
        elif arr.dtype.kind not in "biuf":
            raise ConfigurationError(f"stimulus condition {name!r}: values must be numbers, bools or "
                                     f"strings (one type), got dtype {arr.dtype}")
        out[name] = arr
    return out


def _sample_coords(layout: Layout) -> dict:
    coords = {"sample": ("sample", np.arange(layout.batch, dtype=np.int64), SAMPLE_ATTRS)}
    for name, values in layout.conditions.items():
        coords[name] = ("sample", values, {"long_name": f"stimulus condition: {name}"})
    return coords


def block_datasets(layout: Layout, block: Block) -> dict[str, xr.Dataset]:
    """The block as one Dataset per group (``"/"`` and one per population)."""
    base = {"time": ("time", np.asarray(block.times, dtype=np.float64), TIME_ATTRS),
            **_sample_coords(layout)}
    root_vars = {}
    root_coords = dict(base)
    if layout.inputs:
        root_coords["input"] = ("input", np.array(list(layout.inputs), dtype=object),
                                {"long_name": "stimulus input"})
        root_vars["stimulus"] = (("time", "sample", "input"), block.stimulus,
                                 {"units": "1", "long_name": "stimulus input, mean over its units"})
    out = {"/": xr.Dataset(root_vars, coords=root_coords, attrs=layout.attrs)}
    for g in layout.groups:
        coords = dict(base)
        for d, v in g.coords.items():
            coords[d] = (d, v, {"units": "1", "long_name": _DIM_NAMES.get(d, d)})
        out[g.name] = xr.Dataset({"rate": (("time", "sample") + g.dims, block.rates[g.name], g.attrs)},
                                 coords=coords)
    return out


_DIM_NAMES = {"channel": "channel index", "x": "x position (column index)",
              "y": "y position (row index)", "z": "z position", "statistic": "statistic over units",
              "feature": "reduced feature index"}


def _codecs(compression):
    from zarr.codecs import BloscCodec, ZstdCodec

    if compression == "lz4":
        return [BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle")]
    if compression == "zstd":
        return [ZstdCodec(level=3)]
    return None


def _zarr_config():
    import zarr

    # skip zarr's per-chunk "is everything the fill value?" scan: it costs more than the write
    return zarr.config.set({"array.write_empty_chunks": True})


def _shrink(arr, n: int) -> None:
    """Set the time length of a zarr array to ``n`` by a metadata write only (no scan over
    the chunk keys past ``n``, which could be many; data there is ignored by readers)."""
    from zarr.core.sync import sync

    sync(arr.async_array.resize((n,) + arr.shape[1:], delete_outside_chunks=False))


# -- writers --------------------------------------------------------------------------------
def prepare_path(path, overwrite: bool) -> Path:
    """Refuse to touch an existing path unless ``overwrite``; only a zarr store is removed."""
    if not isinstance(path, (str, Path)):
        raise ConfigurationError(f"store must be a path (str or pathlib.Path) to a zarr directory, got "
                                 f"{type(path).__name__}")
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise ConfigurationError(f"store {str(path)!r} already exists; pass overwrite=True to "
                                     "replace it, or choose another path")
        if path.is_dir() and not (path / "zarr.json").exists() and any(path.iterdir()):
            raise ConfigurationError(f"store {str(path)!r} is a non-empty directory that is not a zarr "
                                     "store; refusing to delete it even with overwrite=True")
    return path


class ZarrArchiveWriter:
    """Streams blocks into a zarr v3 store following the protocol in the module docstring.

    ``times``: every recording time of the run (ms). The time axis is allocated for all of
    them when the store is created, so array shapes never change while the run goes.
    """

    def __init__(self, path, layout: Layout, times, *, chunk_steps: int, compression="lz4",
                 overwrite: bool = False):
        if compression not in COMPRESSIONS:
            raise ConfigurationError(f"compression must be one of {list(COMPRESSIONS)}, got {compression!r}")
        self.path = prepare_path(path, overwrite)
        self.overwrite = overwrite
        self.layout = layout
        self.times = np.asarray(times, dtype=np.float64)
        self.chunk_steps = int(chunk_steps)
        self.compression = compression
        self.steps_written = 0
        self._root = None
        self._arrays: list[tuple[str, str, object]] = []  # (group, variable, zarr array)

    def write(self, block: Block) -> None:
        """Create the store on the first call; write ``block`` at the next free steps."""
        if self._root is None:
            self._create()
        with _zarr_config():
            self._write(block)

    def _create(self) -> None:
        import zarr

        if self.path.exists() or self.path.is_symlink():
            prepare_path(self.path, self.overwrite)  # re-check right before deleting
            if self.path.is_dir() and not self.path.is_symlink():
                shutil.rmtree(self.path)
            else:
                self.path.unlink()
        lay = self.layout
        empty = Block(np.zeros(0), {g.name: np.zeros((0, lay.batch) + tuple(len(v) for v in g.coords.values()),
                                                     dtype=g.dtype) for g in lay.groups},
                      np.zeros((0, lay.batch, len(lay.inputs)), dtype=lay.stimulus_dtype))
        attrs = dict(lay.attrs, status="incomplete", steps_written=0)
        dsets = block_datasets(Layout(**{**lay.__dict__, "attrs": attrs}), empty)
        k, n = self.chunk_steps, len(self.times)
        with _zarr_config():
            for i, (group, ds) in enumerate(dsets.items()):
                enc = {}
                for name, var in ds.variables.items():
                    if var.dims and var.dims[0] == "time":
                        if name == "time":  # written once, below
                            enc[name] = {"chunks": (max(1, min(n, max(k, 2 ** 16))),)}
                        else:
                            enc[name] = {"chunks": (k,) + var.shape[1:],
                                         "compressors": _codecs(self.compression)}
                ds.to_zarr(self.path, group=None if group == "/" else group,
                           mode="w-" if i == 0 else "a", consolidated=False, encoding=enc,
                           zarr_format=3)
            root = zarr.open_group(self.path, mode="r+", use_consolidated=False)
            for group in dsets:
                node = root if group == "/" else root[group]
                for name, arr in node.arrays():
                    dims = arr.metadata.dimension_names or ()
                    if dims and dims[0] == "time":
                        self._arrays.append((group, name, arr))
            # allocate the whole time axis now: shapes stay fixed while the run writes
            for _, name, arr in self._arrays:
                arr.resize((n,) + arr.shape[1:])
                if name == "time":
                    arr[:] = self.times
        self._root = root

    def _write(self, block: Block) -> None:
        n0, k = self.steps_written, len(block)
        if k == 0:
            return
        n1 = n0 + k
        want = self.times[n0:n1]
        if len(want) != k or not np.allclose(block.times, want, rtol=1e-12, atol=1e-9):
            raise DynodeError(f"the solver saved states at {block.times[:3].tolist()}... ms but the "
                              f"archive expects {want[:3].tolist()}... (steps {n0}..{n1 - 1} of "
                              f"{len(self.times)}); the solver did not honour save_at")
        for group, name, arr in self._arrays:  # whole new chunks, each written atomically
            if name == "rate":
                arr[n0:n1] = block.rates[group]
            elif name == "stimulus":
                arr[n0:n1] = block.stimulus
        self._root.attrs.update({"steps_written": n1})  # commit
        self.steps_written = n1

    def finish(self, status: str, attrs: Mapping | None = None) -> None:
        """Set the final ``status`` (and extra root attrs); an unfinished run's arrays are cut
        to the steps written; then consolidate the metadata."""
        import zarr

        if self._root is None:
            return
        if self.steps_written < len(self.times):
            if status == "complete":
                raise DynodeError(f"the run ended after {self.steps_written} of {len(self.times)} "
                                  "recording times; the solver did not deliver every save time")
            for _, _, arr in self._arrays:
                _shrink(arr, self.steps_written)
        self._root.attrs.update({**dict(attrs or {}), "status": status})
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
            zarr.consolidate_metadata(str(self.path))

    def result(self) -> xr.DataTree | None:
        if self._root is None:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IncompleteArchiveWarning)
            return open_archive(self.path)


class MemoryArchiveWriter:
    """Same interface as :class:`ZarrArchiveWriter`, keeping the blocks in memory."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.blocks: list[Block] = []
        self.steps_written = 0
        self.status = "incomplete"
        self.attrs: dict = {}

    def write(self, block: Block) -> None:
        self.blocks.append(Block(block.times.copy(), {k: v.copy() for k, v in block.rates.items()},
                                 None if block.stimulus is None else block.stimulus.copy()))
        self.steps_written += len(block)

    def finish(self, status: str, attrs: Mapping | None = None) -> None:
        self.status, self.attrs = status, dict(attrs or {})

    def result(self) -> xr.DataTree | None:
        if not self.blocks:
            return None
        b = self.blocks
        merged = Block(np.concatenate([x.times for x in b]),
                       {g.name: np.concatenate([x.rates[g.name] for x in b]) for g in self.layout.groups},
                       None if b[0].stimulus is None else np.concatenate([x.stimulus for x in b]))
        attrs = {**self.layout.attrs, **self.attrs, "status": self.status,
                 "steps_written": self.steps_written}
        dsets = block_datasets(Layout(**{**self.layout.__dict__, "attrs": attrs}), merged)
        return xr.DataTree.from_dict(dsets)


# -- reading --------------------------------------------------------------------------------
def _root_meta(path: Path) -> dict:
    meta_file = path / "zarr.json"
    if not meta_file.is_file():
        raise DynodeError(f"{str(path)!r} is not a zarr v3 store (no zarr.json); was it written by "
                          "dynode.simulate(store=...)?")
    return json.loads(meta_file.read_text())


def open_archive(path, *, trim: bool = True) -> xr.DataTree:
    """Open an archive lazily as an ``xarray.DataTree`` (nothing is read until used).

    An archive whose run did not complete gives an :class:`IncompleteArchiveWarning`; with
    ``trim`` (default) steps past the last committed block (``steps_written``) are cut off.
    Plain ``xarray.open_datatree(path, engine="zarr")`` opens the same store without dynode.
    """
    path = Path(path)
    meta = _root_meta(path)
    attrs = meta.get("attributes", {})
    if "dynode_archive" not in attrs:
        raise DynodeError(f"{str(path)!r} is a zarr store but not a dynode archive (no "
                          "'dynode_archive' attribute)")
    consolidated = bool(meta.get("consolidated_metadata"))
    try:
        tree = xr.open_datatree(path, engine="zarr", consolidated=consolidated)
    except ValueError as exc:
        if attrs.get("status") == "complete":
            raise
        raise DynodeError(f"the incomplete archive {str(path)!r} does not open ({exc}); the run was "
                          "killed while creating the store or while cutting its arrays after a "
                          "failure: dynode.archive.repair_archive(path) cuts every array back to the "
                          "last committed block") from exc
    status = tree.attrs.get("status", "unknown")
    if status != "complete":
        n = int(tree.attrs.get("steps_written", tree.sizes.get("time", 0)))
        warnings.warn(f"archive {str(path)!r}: status {status!r}; it holds {n} committed time steps",
                      IncompleteArchiveWarning, stacklevel=2)
        if trim and tree.sizes.get("time", 0) > n:
            tree = tree.isel(time=slice(0, n))
    return tree


def repair_archive(path) -> int:
    """Cut every time-indexed array of an interrupted archive back to ``steps_written`` (the
    last committed block): the NaN tail of a killed run goes, and a store whose arrays
    disagree in length opens with plain xarray again. Returns that step count."""
    import zarr

    path = Path(path)
    attrs = _root_meta(path).get("attributes", {})
    if attrs.get("status") == "complete":
        return int(attrs.get("steps_written", 0))
    n = int(attrs.get("steps_written", 0))
    root = zarr.open_group(path, mode="r+", use_consolidated=False)
    nodes = [root] + [g for _, g in root.groups()]
    for node in nodes:
        for _, arr in node.arrays():
            dims = arr.metadata.dimension_names or ()
            if dims and dims[0] == "time" and arr.shape[0] != n:
                _shrink(arr, n)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
        zarr.consolidate_metadata(str(path))
    return n


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


def population_time_course(tree: xr.DataTree, population: str, *, statistic: str = "mean",
                           block_steps: int | None = None) -> xr.DataArray:
    """The population's ``(time, sample)`` time course: its rate averaged over units
    (``statistic="mean"``) or their standard deviation (``"std"``).

    Reads the archive block by block along time, so memory stays bounded. A population
    recorded with ``reduce="mean"`` / ``"mean_std"`` returns the stored course.
    """
    if population not in tree.children or "rate" not in tree[population].data_vars:
        raise ConfigurationError(f"no population {population!r} in the archive; recorded: "
                                 f"{populations(tree)}")
    if statistic not in ("mean", "std"):
        raise ConfigurationError(f"statistic must be 'mean' or 'std', got {statistic!r}")
    rate = tree[population].to_dataset()["rate"]
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


def time_courses(tree: xr.DataTree, names: Sequence[str] | None = None, *,
                 statistic: str = "mean") -> xr.Dataset:
    """:func:`population_time_course` of several populations (default all) as one Dataset."""
    names = populations(tree) if names is None else list(names)
    return xr.Dataset({n: population_time_course(tree, n, statistic=statistic) for n in names})


def to_brainscore(tree: xr.DataTree, population: str, bin_edges: Sequence[float], path=None, *,
                  format: str | None = None) -> xr.DataArray:
    """A Brain-Score-style assembly ``(presentation, neuroid, time_bin)`` of one population.

    Bin ``j`` holds the mean rate over the recorded times ``t`` with
    ``bin_edges[j] <= t < bin_edges[j + 1]`` (ms), with coordinates ``time_bin_start`` /
    ``time_bin_end``. Neuroid coordinates: ``neuroid_id`` (``"<layer>.<channel>.<y>.<x>"``),
    ``layer``, ``channel``, ``channel_x``, ``channel_y``; presentations carry ``stimulus_id``,
    ``sample`` and the condition coordinates. With ``path`` the assembly is also written, as
    netCDF (``.nc``, default) or zarr (``.zarr``, or ``format="zarr"``).
    """
    if population not in tree.children or "rate" not in tree[population].data_vars:
        raise ConfigurationError(f"no population {population!r} in the archive; recorded: "
                                 f"{populations(tree)}")
    rate = tree[population].to_dataset()["rate"]
    if rate.attrs.get("reduction") is not None:
        raise ConfigurationError(f"population {population!r} was recorded with reduce="
                                 f"{rate.attrs['reduction']!r}; an assembly needs unit-level recordings")
    edges = np.asarray(bin_edges, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ConfigurationError("bin_edges must be at least two strictly increasing times (ms)")
    times = rate["time"].values
    unit_dims = [d for d in rate.dims if d not in ("time", "sample")]
    n_units = int(np.prod([rate.sizes[d] for d in unit_dims])) if unit_dims else 1
    data = np.empty((rate.sizes["sample"], n_units, len(edges) - 1), dtype=np.float32)
    for j, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        idx = np.flatnonzero((times >= lo) & (times < hi))
        if not len(idx):
            raise ConfigurationError(f"time bin [{lo:g}, {hi:g}) ms holds no recorded time; recorded "
                                     f"times span [{times.min():g}, {times.max():g}] ms")
        mean = rate.isel(time=idx).astype(np.float64).mean("time")
        data[:, :, j] = mean.transpose("sample", *unit_dims).values.reshape(rate.sizes["sample"], -1)
    grids = np.meshgrid(*[rate[d].values if d in rate.coords else np.arange(rate.sizes[d])
                          for d in unit_dims], indexing="ij")
    flat = {d: g.ravel() for d, g in zip(unit_dims, grids)}
    zeros = np.zeros(n_units, dtype=np.int64)
    channel, cy, cx = flat.get("channel", zeros), flat.get("y", zeros), flat.get("x", zeros)
    neuroid_id = np.array([f"{population}.{c}.{y}.{x}" for c, y, x in zip(channel, cy, cx)], dtype=object)
    root = tree.to_dataset()
    pres = {"sample": ("presentation", root["sample"].values),
            "stimulus_id": ("presentation", np.array([f"sample{i}" for i in root["sample"].values],
                                                    dtype=object))}
    for name, coord in root.coords.items():
        if coord.dims == ("sample",) and name != "sample":
            vals = coord.values
            pres[name] = ("presentation", vals.astype(object) if vals.dtype.kind == "T" else vals)
    assembly = xr.DataArray(
        data, dims=("presentation", "neuroid", "time_bin"),
        coords={**pres,
                "neuroid_id": ("neuroid", neuroid_id),
                "layer": ("neuroid", np.array([population] * n_units, dtype=object)),
                "channel": ("neuroid", channel), "channel_x": ("neuroid", cx),
                "channel_y": ("neuroid", cy),
                "time_bin_start": ("time_bin", edges[:-1], {"units": "ms"}),
                "time_bin_end": ("time_bin", edges[1:], {"units": "ms"})},
        name=f"{population}_activations",
        attrs={"units": rate.attrs.get("units", "1"),
               "long_name": f"mean rate of {population} per time bin",
               "source": "dynode archive", "run_id": tree.attrs.get("run_id", "")})
    if path is not None:
        fmt = format or ("zarr" if str(path).endswith(".zarr") else "netcdf")
        if fmt == "netcdf":
            assembly.to_netcdf(path)
        elif fmt == "zarr":
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
                assembly.to_dataset().to_zarr(path, mode="w-", consolidated=True, zarr_format=3)
        else:
            raise ConfigurationError(f"format must be 'netcdf' or 'zarr', got {format!r}")
    return assembly
