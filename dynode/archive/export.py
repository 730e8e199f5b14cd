"""Export: a population as a Brain-Score-style assembly (netCDF or zarr)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from dynode.archive.layout import RATE_UNITS, SAMPLE_ATTRS, _codecs, _root_meta
from dynode.archive.reading import _rate
from dynode.errors import ConfigurationError

def to_brainscore(tree: xr.DataTree, population: str, bin_edges: Sequence[float], path=None, *,
                  format: str | None = None, overwrite: bool = False) -> xr.DataArray:
    """A Brain-Score-style assembly ``(presentation, neuroid, time_bin)`` of one population.

    Bin ``j`` holds the mean rate over the recorded times ``t`` with
    ``bin_edges[j] <= t < bin_edges[j + 1]`` (ms), with coordinates ``time_bin_start`` /
    ``time_bin_end``. Neuroid coordinates: ``neuroid_id`` (``"<layer>.<channel>.<y>.<x>"``),
    ``layer``, ``channel``, ``channel_x``, ``channel_y``; presentations carry ``stimulus_id``,
    ``sample`` and the condition coordinates. With ``path`` the assembly is also written, as
    netCDF (``.nc``, default) or zarr (``.zarr``, or ``format="zarr"``); an existing file is
    replaced only with ``overwrite=True`` (and only by its own kind: a netCDF file by netCDF, a
    zarr store that is not a dynode archive by zarr).
    """
    rate = _rate(tree, population)
    fmt = None if path is None else format or ("zarr" if str(path).endswith(".zarr") else "netcdf")
    if fmt is not None:
        _check_export_path(Path(path), fmt, overwrite)
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
    pres = {"sample": ("presentation", root["sample"].values, SAMPLE_ATTRS),
            "stimulus_id": ("presentation", np.array([f"sample{i}" for i in root["sample"].values],
                                                    dtype=object), {"long_name": "stimulus identifier"})}
    for name, coord in root.coords.items():
        if coord.dims == ("sample",) and name != "sample":
            vals = coord.values
            pres[name] = ("presentation", vals.astype(object) if vals.dtype.kind == "T" else vals,
                          dict(coord.attrs))
    assembly = xr.DataArray(
        data, dims=("presentation", "neuroid", "time_bin"),
        coords={**pres,
                "neuroid_id": ("neuroid", neuroid_id, {"long_name": "unit identifier: population.channel.y.x"}),
                "layer": ("neuroid", np.array([population] * n_units, dtype=object),
                          {"long_name": "population (model area)"}),
                "channel": ("neuroid", channel, {"units": "1", "long_name": "channel index"}),
                "channel_x": ("neuroid", cx, {"units": "1", "long_name": "x position (column index)"}),
                "channel_y": ("neuroid", cy, {"units": "1", "long_name": "y position (row index)"}),
                "time_bin_start": ("time_bin", edges[:-1], {"units": "ms", "long_name": "start of the time bin"}),
                "time_bin_end": ("time_bin", edges[1:], {"units": "ms", "long_name": "end of the time bin"})},
        name=f"{population}_activations",
        attrs={"units": rate.attrs.get("units", RATE_UNITS),
               "long_name": f"mean rate of {population} per time bin",
               "source": "dynode archive", "run_id": tree.attrs.get("run_id", "")})
    if fmt == "netcdf":
        assembly.to_netcdf(path, mode="w")
    elif fmt == "zarr":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
            ds = assembly.to_dataset()
            enc = {name: {"compressors": _codecs("zstd" if name == assembly.name else None)}
                   for name in ds.variables}  # checksummed, as every array dynode writes
            ds.to_zarr(path, mode="w" if overwrite else "w-", consolidated=True, zarr_format=3,
                       encoding=enc)
    return assembly


def _check_export_path(path: Path, fmt: str, overwrite: bool) -> None:
    """Before any work: the export format is known and an existing ``path`` is replaced only
    with ``overwrite`` and only when it is an export of the same kind."""
    if fmt not in ("netcdf", "zarr"):
        raise ConfigurationError(f"format must be 'netcdf' or 'zarr', got {fmt!r}")
    if not (path.exists() or path.is_symlink()):
        return
    if not overwrite:
        raise ConfigurationError(f"{str(path)!r} already exists; pass overwrite=True to replace it, or "
                                 "choose another path")
    if fmt == "netcdf" and not path.is_file():
        raise ConfigurationError(f"{str(path)!r} is not a file; refusing to replace it with a netCDF "
                                 "file even with overwrite=True")
    if fmt == "zarr":
        if not (path.is_dir() and (path / "zarr.json").is_file()):
            raise ConfigurationError(f"{str(path)!r} is not a zarr store; refusing to replace it even "
                                     "with overwrite=True")
        if "dynode_archive" in _root_meta(path).get("attributes", {}):
            raise ConfigurationError(f"{str(path)!r} is a dynode simulation archive; refusing to replace "
                                     "it with an assembly even with overwrite=True")
