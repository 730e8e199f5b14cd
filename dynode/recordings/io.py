"""Recordings from files and back: :func:`load_recordings` (a Dataset, NetCDF, zarr or the
long CSV format, checked by :func:`~dynode.recordings.layout.validate_recordings`, time in
ms), :func:`read_csv` and :func:`write_csv`.

Files: NetCDF (``.nc``; NetCDF3 through scipy, NetCDF4 through h5netcdf or netCDF4 when
installed), zarr (a ``.zarr`` folder) and CSV in long format (:func:`read_csv`; columns
``area, experiment, contrast, duration, isi, onset, time_ms, value`` and optionally
``electrode``; ``time_s`` instead of ``time_ms`` is converted, while ``duration``, ``isi`` and
``onset`` are always ms; the units in a header comment
``# units: uV`` or the ``units=`` argument). A time coordinate in s or us (its ``units``
attribute, or ``time_units=``) is converted to ms by the factors of :data:`TIME_UNITS`.
Loading reads numbers and strings only: nothing a file names is imported or called.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr

from dynode.errors import ConfigurationError
from dynode.recordings.layout import CONDITION_COORDS, FORMAT_VERSION, _error, validate_recordings

__all__ = ["CSV_COLUMNS", "TIME_UNITS", "load_recordings", "read_csv", "write_csv"]

CSV_COLUMNS = ("area", "experiment", "contrast", "duration", "isi", "onset", "time_ms", "value")
"""The columns of the long CSV format (plus an optional ``electrode``)."""
TIME_UNITS = {"ms": 1.0, "milliseconds": 1.0, "s": 1000.0, "seconds": 1000.0, "sec": 1000.0,
              "us": 1e-3, "microseconds": 1e-3}
"""Time units that are converted to ms (the factor); any other is refused."""


def load_recordings(source, *, units: str | Mapping[str, str] | None = None, time_units: str | None = None,
                    source_name: str | None = None) -> xr.Dataset:
    """Recordings (the layout of :mod:`dynode.recordings.layout`) from a Dataset, a NetCDF
    file (``.nc``), a zarr store (``.zarr``) or a long CSV (``.csv``), checked by
    :func:`validate_recordings`; time in ms.

    units : the data's units where the file gives none (a CSV without a ``# units:`` line, a
        variable without a ``units`` attribute): one string, or ``{area: units}``. A file's own
        units that differ are an error.
    time_units : the unit of a ``time`` coordinate that carries no ``units`` attribute
        (``"ms"`` or ``"s"``); converted to ms.
    source_name : stored as the ``source`` attribute when the recordings have none (default:
        the file name).

    Returns a new Dataset (the input is not modified), loaded into memory.
    """
    if isinstance(source, xr.Dataset):
        ds = source.copy(deep=True)
        name = source_name
    elif isinstance(source, (str, Path)):
        path = Path(source)
        name = source_name or path.name
        if not path.exists():
            raise ConfigurationError(f"recordings: no file or folder {str(path)!r}")
        suffix = path.suffix.lower()
        if suffix == ".csv":
            ds = read_csv(path, units=units)
        elif suffix in (".nc", ".nc4", ".netcdf", ".cdf"):
            ds = _read_netcdf(path)
        elif suffix == ".zarr" or (path / "zarr.json").exists() or (path / ".zgroup").exists():
            ds = xr.open_zarr(path, consolidated=None).load()
        else:
            raise ConfigurationError(f"recordings: cannot tell the format of {str(path)!r} from its name; give a "
                                     ".nc (NetCDF), .zarr (zarr store) or .csv (long table) file")
    else:
        raise ConfigurationError(f"recordings: expected an xarray.Dataset or a path (.nc, .zarr, .csv), got "
                                 f"{type(source).__name__}")
    ds = _apply_units(ds, units)
    ds = _time_in_ms(ds, time_units)
    if name and "source" not in ds.attrs:
        ds.attrs["source"] = str(name)
    ds.attrs.setdefault("dynode_recordings", FORMAT_VERSION)
    return validate_recordings(ds)


def _read_netcdf(path: Path) -> xr.Dataset:
    import importlib.util

    engines = [e for e, mod in (("h5netcdf", "h5netcdf"), ("netcdf4", "netCDF4"), ("scipy", "scipy"))
               if importlib.util.find_spec(mod) is not None]
    if not engines:
        raise ConfigurationError("recordings: reading NetCDF needs scipy (NetCDF3), h5netcdf or netCDF4 "
                                 "(NetCDF4); install one, or save the recordings as zarr or CSV")
    with open(path, "rb") as f:
        magic = f.read(4)
    hdf5 = magic[:4] == b"\x89HDF"
    usable = [e for e in engines if not (hdf5 and e == "scipy")]
    if not usable:
        raise ConfigurationError(f"recordings: {str(path)!r} is NetCDF4 (HDF5), which scipy cannot read; "
                                 "install h5netcdf (pip install h5netcdf) or save it as NetCDF3 or zarr")
    with xr.open_dataset(path, engine=usable[0]) as ds:
        return ds.load()


def _apply_units(ds: xr.Dataset, units) -> xr.Dataset:
    if units is None:
        return ds
    for name, var in ds.data_vars.items():
        want = units if isinstance(units, str) else units.get(str(name))
        if want is None:
            continue
        have = var.attrs.get("units")
        if have not in (None, "") and str(have) != str(want):
            raise _error(f"area {name!r} is stored in {have!r} but units={want!r} was given; drop the units "
                         "argument or convert the data", "units")
        var.attrs["units"] = str(want)
    return ds


def _time_in_ms(ds: xr.Dataset, time_units: str | None) -> xr.Dataset:
    if "time" not in ds.coords:
        raise _error("no 'time' coordinate; give the sample times (ms) as coordinate 'time'", "time")
    unit = ds["time"].attrs.get("units", time_units)
    if unit is None:
        raise _error("the time coordinate has no 'units' attribute; set ds['time'].attrs['units'] = 'ms' "
                     "(or 's', converted) or pass time_units=", "time.units")
    key = str(unit).strip().lower()
    if key not in TIME_UNITS:
        raise _error(f"time is in {unit!r}; give it in ms (or s, us: converted) with attrs units='ms'", "time.units")
    if np.issubdtype(ds["time"].dtype, np.datetime64) or np.issubdtype(ds["time"].dtype, np.timedelta64):
        raise _error("time is a date or a timedelta; store it as float ms from the epoch start", "time")
    t = np.asarray(ds["time"].values, dtype=np.float64) * TIME_UNITS[key]
    ds = ds.assign_coords(time=("time", t, {"units": "ms", "long_name": "time", "standard_name": "time"}))
    return ds


def read_csv(path_or_text, *, units: str | Mapping[str, str] | None = None) -> xr.Dataset:
    """Recordings from the long CSV format: a header line with :data:`CSV_COLUMNS` (any
    order; ``time_s`` instead of ``time_ms`` is converted to ms; an optional ``electrode``
    column), one row per sample. Lines starting with ``#`` are comments; ``# units: uV``
    gives every area's units, ``# units: V1=uV, V2=uV`` per area, ``# source: ...`` the
    source. Values are parsed as numbers and strings only. Conditions are the distinct
    ``(experiment, contrast, duration, isi, onset)`` tuples in the order they first appear;
    every (area, electrode, condition) must have a sample at every time (else an error).

    ``path_or_text``: a path, or the CSV text itself (a ``str`` containing a newline)."""
    if isinstance(path_or_text, str) and "\n" in path_or_text:
        text = path_or_text
    else:
        text = Path(path_or_text).read_text(encoding="utf-8")
    header_units, source, lines = None, None, []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            body = stripped[1:].strip()
            key, _, value = body.partition(":")
            if key.strip().lower() == "units" and value.strip():
                header_units = _parse_units(value.strip())
            elif key.strip().lower() == "source" and value.strip():
                source = value.strip()
            continue
        if stripped:
            lines.append(line)
    if not lines:
        raise _error("the CSV has no header line and no rows", "columns")
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    cols = [c.strip() for c in (reader.fieldnames or [])]
    time_col = "time_ms" if "time_ms" in cols else "time_s" if "time_s" in cols else None
    need = [c for c in CSV_COLUMNS if c != "time_ms"]
    missing = [c for c in need if c not in cols] + ([] if time_col else ["time_ms"])
    if missing:
        raise _error(f"the CSV lacks the column(s) {missing}; its columns are {cols}, the format's are "
                     f"{list(CSV_COLUMNS)} (+ electrode)", *missing)
    scale = 1000.0 if time_col == "time_s" else 1.0
    has_el = "electrode" in cols
    rows = []
    for n, row in enumerate(reader, start=2):
        row = {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k is not None}
        try:
            cond = (row["experiment"], float(row["contrast"]), float(row["duration"]), float(row["isi"]),
                    float(row["onset"]))
            t = float(row[time_col]) * scale
            value = float(row["value"]) if row["value"] not in ("", "NA", "nan", "NaN") else math.nan
        except (TypeError, ValueError) as exc:
            raise _error(f"CSV data line {n}: {exc}; every column but area and experiment must be a number",
                         "value") from None
        rows.append((row["area"], row["electrode"] if has_el else None, cond, t, value))
    times = np.unique(np.asarray([r[3] for r in rows]))
    conds = list(dict.fromkeys(r[2] for r in rows))
    areas = list(dict.fromkeys(r[0] for r in rows))
    electrodes = list(dict.fromkeys(r[1] for r in rows)) if has_el else [None]
    t_index = {t: i for i, t in enumerate(times)}
    c_index = {c: i for i, c in enumerate(conds)}
    e_index = {e: i for i, e in enumerate(electrodes)}
    data = {a: np.full((len(electrodes), len(conds), len(times)), np.nan) for a in areas}
    filled = {a: np.zeros(data[a].shape, dtype=bool) for a in areas}
    for a, e, c, t, v in rows:
        key = (e_index[e], c_index[c], t_index[t])
        if filled[a][key]:
            raise _error(f"the CSV has two samples of area {a!r} at {c}, time {t:g} ms", "time_ms")
        data[a][key], filled[a][key] = v, True
    for a in areas:
        if not filled[a].all():
            e, c, t = (int(i) for i in np.argwhere(~filled[a])[0])
            raise _error(f"area {a!r} has no sample at time {times[t]:g} ms of condition {conds[c]}"
                         f"{'' if not has_el else f', electrode {electrodes[e]}'}: every area needs every "
                         "condition at every time (the same time grid)", "time_ms")
    given = header_units
    if units is not None:
        if header_units is not None and header_units != units:
            raise _error(f"the CSV says units {header_units!r} but units={units!r} was given; drop one", "units")
        given = units
    if given is None:
        raise _error("the CSV gives no units; add a comment line '# units: uV' (or per area "
                     "'# units: V1=uV, V2=uV') or pass units=", "units")
    unit_of = {a: given if isinstance(given, str) else given.get(a) for a in areas}
    absent = [a for a, u in unit_of.items() if not u]
    if absent:
        raise _error(f"no units for areas {absent}; name them in '# units:' or units=", "units")
    coords = {"time": ("time", times, {"units": "ms", "long_name": "time", "standard_name": "time"})}
    for i, c in enumerate(CONDITION_COORDS):
        coords[c] = ("condition", np.asarray([cc[i] for cc in conds], dtype=str if i == 0 else np.float64))
    if has_el:
        coords["electrode"] = ("electrode", np.asarray(electrodes, dtype=str))
    dims = ("electrode", "condition", "time") if has_el else ("condition", "time")
    ds = xr.Dataset({a: (dims, data[a] if has_el else data[a][0],
                         {"units": unit_of[a], "long_name": f"recorded response of {a}"}) for a in areas},
                    coords=coords, attrs={"dynode_recordings": FORMAT_VERSION})
    if source is not None:
        ds.attrs["source"] = source
    return ds


def _parse_units(text: str) -> str | dict[str, str]:
    if "=" not in text:
        return text
    out = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        if not k.strip() or not v.strip():
            raise _error(f"cannot read the units line {text!r}; write '# units: uV' or '# units: V1=uV, V2=uV'",
                         "units")
        out[k.strip()] = v.strip()
    return out


def write_csv(ds: xr.Dataset, path) -> Path:
    """Write recordings in the long CSV format (:func:`read_csv` reads it back): ``# units:``
    and ``# source:`` comment lines, then one row per sample."""
    ds = validate_recordings(ds)
    path = Path(path)
    areas = list(ds.data_vars)
    units = {a: str(ds[a].attrs["units"]) for a in areas}
    unit_line = next(iter(units.values())) if len(set(units.values())) == 1 else ", ".join(
        f"{a}={u}" for a, u in units.items())
    has_el = "electrode" in ds.dims
    with path.open("w", newline="", encoding="utf-8") as f:
        f.write(f"# units: {unit_line}\n")
        if "source" in ds.attrs:
            f.write(f"# source: {ds.attrs['source']}\n")
        w = csv.writer(f)
        w.writerow(list(CSV_COLUMNS) + (["electrode"] if has_el else []))
        t = ds["time"].values
        for a in areas:
            var = ds[a].transpose(*(("electrode",) if has_el else ()), "condition", "time")
            els = list(ds["electrode"].values) if has_el else [None]
            for ei, e in enumerate(els):
                block = var.values[ei] if has_el else var.values
                for ci in range(ds.sizes["condition"]):
                    cond = [str(ds["experiment"].values[ci])] + [repr(float(ds[c].values[ci]))
                                                                  for c in CONDITION_COORDS[1:]]
                    for ti in range(len(t)):
                        w.writerow([a] + cond + [repr(float(t[ti])), repr(float(block[ci, ti]))]
                                   + ([str(e)] if has_el else []))
    return path
