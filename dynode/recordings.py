r"""Recorded data in: the layout of recordings, their loaders, the Groen metrics on them and
the model-data comparison.

The layout (format version :data:`FORMAT_VERSION`)
--------------------------------------------------
Recordings are an :class:`xarray.Dataset`:

* dimensions ``condition`` and ``time`` (plus an optional ``electrode``);
* coordinate ``time``: float, **ms**, uniform step, ``attrs["units"] = "ms"`` (a time base in
  ``s`` or ``us`` is converted to ms when its ``units`` say so; one without ``units`` or with
  another unit is refused). Groen et al.'s ECoG is sampled at 512 Hz (a step of 1.953125 ms);
* coordinates along ``condition``:

  ========== ================================================================================
  experiment the kind, one of :data:`dynode.stimuli.EXPERIMENTS` (``"contrast"``,
             ``"duration"``, ``"repetition"``)
  contrast   the stimulus contrast, a fraction in [0, 1]
  duration   the duration of one pulse (ms)
  isi        the gap between two pulses (ms); 0 for a single pulse
  onset      the stimulus onset on the time axis (ms): the same for every condition of one
             experiment
  ========== ================================================================================

* one data variable per recorded area (``"V1"``, ``"V2"``, ``"V3"``, ``"hV4"``, ...), dims
  ``(condition, time)`` or ``(electrode, condition, time)``, attrs ``units`` (``"uV"``,
  ``"%"``, ``"a.u."``, the same for every area) and ``long_name``; no NaN samples;
* root attrs: ``dynode_recordings`` (the format version), optional ``source`` and
  ``sampling_rate_hz`` (checked against the time step when given, set when not), ``areas``
  (the areas' order, comma-separated: set on validation, restored on loading).

Model populations are matched to recorded areas by name or by a mapping
``areas={"V1": "V1", "V4": "hV4"}`` (model population -> recorded area).

Files: NetCDF (``.nc``; NetCDF3 through scipy, NetCDF4 through h5netcdf or netCDF4 when
installed), zarr (a ``.zarr`` folder) and CSV in long format (:func:`read_csv`; columns
``area, experiment, contrast, duration, isi, onset, time_ms, value`` and optionally
``electrode``; ``time_s`` instead of ``time_ms`` is converted, while ``duration``, ``isi`` and
``onset`` are always ms; the units in a header comment
``# units: uV`` or the ``units=`` argument). Loading reads numbers and strings only: nothing a
file names is imported or called.

Every problem is a :class:`~dynode.errors.DynodeError` before any computation, naming the
field and what to change (:func:`validate_recordings`).
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from dynode.analysis.summary import Analysis, analyze, analyze_courses
from dynode.errors import (AnalysisWarning, ConfigurationError, MissingConditionsError, UndefinedMetricWarning,
                           user_stacklevel)
from dynode.stimuli import EXPERIMENTS

__all__ = ["FORMAT_VERSION", "CONDITION_COORDS", "CSV_COLUMNS", "TIME_UNITS", "load_recordings",
           "validate_recordings", "read_csv", "write_csv", "make_recordings", "recording_courses",
           "match_areas", "analyze_recordings", "RecordingsError", "Comparison", "compare_recordings",
           "format_comparison", "MAX_SHIFT", "WINDOW", "SCORE", "METRICS"]

FORMAT_VERSION = 1
"""The layout's version, stored as the root attribute ``dynode_recordings``."""
CONDITION_COORDS = ("experiment", "contrast", "duration", "isi", "onset")
"""The coordinates every recording carries along ``condition``."""
CSV_COLUMNS = ("area", "experiment", "contrast", "duration", "isi", "onset", "time_ms", "value")
"""The columns of the long CSV format (plus an optional ``electrode``)."""
TIME_UNITS = {"ms": 1.0, "milliseconds": 1.0, "s": 1000.0, "seconds": 1000.0, "sec": 1000.0,
              "us": 1e-3, "microseconds": 1e-3}
"""Time units that are converted to ms (the factor); any other is refused."""
_STEP_RTOL = 1e-6


class RecordingsError(MissingConditionsError):
    """Recordings that do not follow the layout (:mod:`dynode.recordings`); ``missing`` names
    the fields at fault."""


def _error(message: str, *fields: str) -> RecordingsError:
    return RecordingsError(f"recordings: {message}", missing=list(fields))


# -- loading --------------------------------------------------------------------------------
def load_recordings(source, *, units: str | Mapping[str, str] | None = None, time_units: str | None = None,
                    source_name: str | None = None) -> xr.Dataset:
    """Recordings (module docstring) from a Dataset, a NetCDF file (``.nc``), a zarr store
    (``.zarr``) or a long CSV (``.csv``), checked by :func:`validate_recordings`; time in ms.

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


# -- validation -----------------------------------------------------------------------------
def validate_recordings(ds: xr.Dataset, *, areas: Sequence[str] | None = None,
                        experiments: Sequence[str] | None = None, units: str | None = None) -> xr.Dataset:
    """Check ``ds`` against the layout (module docstring) and return it (time in ms, the
    ``sampling_rate_hz`` attribute set).

    areas : recorded areas that must be present. experiments : experiment kinds that must be
    present. units : the unit every area must be in.

    Raises :class:`RecordingsError` (a :class:`~dynode.errors.MissingConditionsError`, so a
    :class:`~dynode.errors.ConfigurationError`) naming the field and what to change: a missing
    dimension or coordinate, an unknown experiment, a condition coordinate that varies inside
    an experiment where it must not (the onset), a time base that is not uniform or not in ms,
    NaN or infinite samples, an area without units or areas in different units, missing areas
    or experiments.
    """
    if not isinstance(ds, xr.Dataset):
        raise ConfigurationError(f"recordings: expected an xarray.Dataset, got {type(ds).__name__}")
    for dim in ("condition", "time"):
        if dim not in ds.dims:
            raise _error(f"no {dim!r} dimension (dims are {list(ds.dims)}); the layout is "
                         "(condition, time) or (electrode, condition, time) per area", dim)
    if "time" not in ds.coords:
        raise _error("no 'time' coordinate; give the sample times (ms) as coordinate 'time'", "time")
    unit = ds["time"].attrs.get("units")
    if unit is None or str(unit).strip().lower() not in ("ms", "milliseconds"):
        raise _error(f"time must be in ms with attrs units='ms' (got units={unit!r}); load the data with "
                     "dynode.recordings.load_recordings, which converts s to ms", "time.units")
    t = np.asarray(ds["time"].values, dtype=np.float64)
    if t.size < 2 or not np.isfinite(t).all():
        raise _error("the time coordinate needs at least 2 finite values (ms)", "time")
    step = np.diff(t)
    dt = float(step.mean())
    if not dt > 0 or np.abs(step - dt).max() > _STEP_RTOL * max(dt, 1.0) + 1e-9:
        raise _error(f"the time base is not uniform (steps from {step.min():.6g} to {step.max():.6g} ms); "
                     "resample every condition onto one uniform grid (e.g. ds.interp(time=...))", "time")
    rate = 1000.0 / dt
    given = ds.attrs.get("sampling_rate_hz")
    if given is not None and abs(float(given) - rate) > 1e-6 * rate:
        raise _error(f"sampling_rate_hz = {given} but the time step is {dt:.6g} ms ({rate:.6g} Hz); correct the "
                     "attribute or the time coordinate (in ms)", "sampling_rate_hz")
    missing = [c for c in CONDITION_COORDS if c not in ds.coords]
    if missing:
        raise _error(f"the condition coordinates {missing} are missing; every condition needs experiment, "
                     "contrast, duration (ms), isi (ms, 0 for one pulse) and onset (ms on the time axis)", *missing)
    for c in CONDITION_COORDS:
        if ds[c].dims != ("condition",):
            raise _error(f"coordinate {c!r} must lie along 'condition', has dims {ds[c].dims}", c)
    kinds = [str(k) for k in ds["experiment"].values]
    unknown = sorted(set(kinds) - set(EXPERIMENTS))
    if unknown:
        raise _error(f"unknown experiment(s) {unknown}; the kinds are {list(EXPERIMENTS)}", "experiment")
    numbers = {}
    for c in CONDITION_COORDS[1:]:
        try:
            v = np.asarray(ds[c].values, dtype=np.float64)
        except (TypeError, ValueError):
            raise _error(f"coordinate {c!r} must be numbers, got {ds[c].dtype}", c) from None
        if not np.isfinite(v).all():
            raise _error(f"coordinate {c!r} holds NaN or inf; give every condition its {c}", c)
        numbers[c] = v
    if ((numbers["contrast"] < 0) | (numbers["contrast"] > 1)).any():
        raise _error("contrast must be a fraction in [0, 1] (not percent); divide by 100", "contrast")
    if (numbers["duration"] <= 0).any() or (numbers["isi"] < 0).any():
        raise _error("duration must be > 0 ms and isi >= 0 ms", "duration", "isi")
    for kind in sorted(set(kinds)):
        sel = np.asarray(kinds) == kind
        onsets = np.unique(numbers["onset"][sel])
        if len(onsets) != 1:
            raise _error(f"the {kind} conditions have different onsets {onsets.tolist()} ms; shift their time "
                         "courses so that every condition of one experiment has the same onset", "onset")
        if not (t[0] <= onsets[0] <= t[-1]):
            raise _error(f"the {kind} onset {onsets[0]:g} ms is outside the time axis [{t[0]:g}, {t[-1]:g}] ms; "
                         "give onset on the time axis (ms)", "onset")
    if not ds.data_vars:
        raise _error("no data variables; give one variable per recorded area", "areas")
    seen_units = {}
    for name, var in ds.data_vars.items():
        dims = set(var.dims)
        if dims not in ({"condition", "time"}, {"electrode", "condition", "time"}):
            raise _error(f"area {name!r} has dims {var.dims}; expected (condition, time) or "
                         "(electrode, condition, time)", str(name))
        if not np.issubdtype(var.dtype, np.number):
            raise _error(f"area {name!r} holds {var.dtype}, not numbers", str(name))
        u = var.attrs.get("units")
        if u in (None, ""):
            raise _error(f"area {name!r} has no 'units' attribute; set it (e.g. 'uV', '%', 'a.u.') or pass "
                         "units= to load_recordings", f"{name}.units")
        seen_units[str(name)] = str(u)
        values = np.asarray(var.values, dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            first = _where(var, bad)
            raise _error(f"area {name!r} has {int(bad.sum())} NaN or infinite samples (first at {first}); "
                         "interpolate or drop those conditions/electrodes before loading", str(name))
        var.attrs.setdefault("long_name", f"recorded response of {name}")
    if len(set(seen_units.values())) > 1:
        raise _error(f"the areas are in different units {seen_units}; convert them to one unit", "units")
    if units is not None:
        wrong = {a: u for a, u in seen_units.items() if u != units}
        if wrong:
            raise _error(f"areas {wrong} are not in {units!r}; convert them", "units")
    if areas is not None:
        absent = [a for a in areas if a not in ds.data_vars]
        if absent:
            raise _error(f"areas {absent} are not recorded; the recorded areas are {list(ds.data_vars)} (map "
                         "model populations to them with areas={population: area})", *absent)
    if experiments is not None:
        absent = [k for k in experiments if k not in kinds]
        if absent:
            raise _error(f"the experiment(s) {absent} are not recorded (recorded: {sorted(set(kinds))})", *absent)
    order = ds.attrs.get("areas")  # zarr and NetCDF readers may sort the variables: keep the recorded order
    if isinstance(order, str) and set(order.split(",")) == set(map(str, ds.data_vars)):
        ds = ds[order.split(",")]
    ds.attrs["areas"] = ",".join(map(str, ds.data_vars))
    ds.attrs["sampling_rate_hz"] = rate
    ds.attrs.setdefault("dynode_recordings", FORMAT_VERSION)
    return ds


def _where(var: xr.DataArray, bad: np.ndarray) -> str:
    idx = tuple(np.argwhere(bad)[0])
    parts = []
    for dim, i in zip(var.dims, idx):
        if dim == "time":
            parts.append(f"time={float(var['time'].values[i]):g} ms")
        elif dim == "condition":
            parts.append(f"condition {i} ({var['experiment'].values[i]}, contrast="
                         f"{float(var['contrast'].values[i]):g}, duration={float(var['duration'].values[i]):g}, "
                         f"isi={float(var['isi'].values[i]):g})" if "experiment" in var.coords else f"condition {i}")
        else:
            parts.append(f"{dim} {i}")
    return ", ".join(parts)


# -- building and CSV -----------------------------------------------------------------------
def make_recordings(data: Mapping[str, np.ndarray], time, conditions: Sequence[Mapping], *, units: str,
                    source: str | None = None, electrodes: Sequence | None = None,
                    long_names: Mapping[str, str] | None = None) -> xr.Dataset:
    """Recordings in the layout from arrays: ``data`` ``{area: (condition, time)}`` (or
    ``(electrode, condition, time)`` with ``electrodes``), ``time`` in ms, one mapping per
    condition with ``experiment, contrast, duration, isi, onset`` (``isi`` defaults to 0).
    Validated."""
    t = np.asarray(time, dtype=np.float64)
    coords = {"time": ("time", t, {"units": "ms", "long_name": "time", "standard_name": "time"})}
    for c in CONDITION_COORDS:
        vals = [cond.get(c, 0.0 if c == "isi" else None) for cond in conditions]
        if any(v is None for v in vals):
            raise _error(f"every condition needs {c!r}", c)
        coords[c] = ("condition", np.asarray(vals, dtype=object if c == "experiment" else np.float64).astype(
            str if c == "experiment" else np.float64))
    if electrodes is not None:
        coords["electrode"] = ("electrode", np.asarray(list(electrodes)))
    dims = ("condition", "time") if electrodes is None else ("electrode", "condition", "time")
    names = dict(long_names or {})
    variables = {a: (dims, np.asarray(v, dtype=np.float64),
                     {"units": units, "long_name": names.get(a, f"recorded response of {a}")})
                 for a, v in data.items()}
    attrs = {"dynode_recordings": FORMAT_VERSION}
    if source is not None:
        attrs["source"] = source
    return validate_recordings(xr.Dataset(variables, coords=coords, attrs=attrs))


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


# -- recordings as analysis courses ---------------------------------------------------------
def recording_courses(ds: xr.Dataset, *, areas: Sequence[str] | None = None,
                      electrode: str | int | None = None) -> tuple[dict[str, xr.Dataset], dict[str, dict]]:
    """The recordings as the analysis' courses: ``({kind: Dataset (by, time)}, {kind: fixed
    conditions})`` for every recorded experiment, in :data:`~dynode.stimuli.EXPERIMENTS`
    order. ``by`` is the experiment's condition dimension (``contrast``, ``duration``,
    ``isi``), sorted; time is from the onset (ms); no baseline is removed (the analysis does
    that, as for an archive). ``fixed`` holds the conditions that are one value per
    experiment (``contrast`` and ``duration``, minus ``by``).

    With an ``electrode`` dimension the course of an area is the mean over its electrodes
    (the counterpart of a model population's mean over units), or one electrode's with
    ``electrode=`` (its label). ``areas``: which areas (default every one)."""
    ds = validate_recordings(ds)
    names = list(ds.data_vars) if areas is None else list(areas)
    validate_recordings(ds, areas=names)
    kinds = np.asarray([str(k) for k in ds["experiment"].values])
    courses, fixed = {}, {}
    for kind, exp in EXPERIMENTS.items():
        idx = np.flatnonzero(kinds == kind)
        if not idx.size:
            continue
        part = ds.isel(condition=idx)
        by = exp.by
        values = np.asarray(part[by].values, dtype=np.float64)
        if len(np.unique(values)) != len(values):
            raise _error(f"the {kind} experiment has several conditions with the same {by} "
                         f"{sorted(values.tolist())}; average repeated trials into one condition per {by}", by)
        fixed[kind] = {}
        for c in exp.needs:
            if c == by:
                continue
            u = np.unique(np.asarray(part[c].values, dtype=np.float64))
            if len(u) != 1:
                raise _error(f"the {kind} experiment varies {c} ({u.tolist()}) as well as {by}; its analysis "
                             f"reads one {c} per experiment: split the conditions or label them as another "
                             "experiment", c)
            fixed[kind][c] = float(u[0])
        onset = float(part["onset"].values[0])
        t_axis = np.asarray(part["time"].values, dtype=np.float64)
        dt = float(np.diff(t_axis).mean())
        k = (onset - t_axis[0]) / dt
        if abs(k - round(k)) > 1e-6 * max(1.0, abs(k)):
            raise _error(f"the {kind} onset {onset:g} ms falls between samples (step {dt:.6g} ms from "
                         f"{t_axis[0]:g} ms); the analysis reads times from the onset on the sample grid: "
                         "give the time axis a sample at the onset (e.g. time = (k - k_onset) / rate)", "onset")
        order = np.argsort(values)
        out = {}
        for a in names:
            var = part[a]
            if "electrode" in var.dims:
                if electrode is None:
                    var = var.mean("electrode")
                else:
                    labels = [str(e) for e in part["electrode"].values]
                    if str(electrode) not in labels:
                        raise _error(f"no electrode {electrode!r}; the electrodes are {labels}", "electrode")
                    var = var.isel(electrode=labels.index(str(electrode)))
            elif electrode is not None:
                raise _error(f"electrode={electrode!r} was given but area {a!r} has no electrode dimension",
                             "electrode")
            y = np.asarray(var.transpose("condition", "time").values, dtype=np.float64)[order]
            t = np.asarray(part["time"].values, dtype=np.float64) - onset
            out[a] = xr.DataArray(
                y, dims=(by, "time"),
                coords={by: (by, values[order], {"long_name": f"stimulus condition: {by}"}),
                        "time": ("time", t, {"units": "ms", "long_name": "time from stimulus onset",
                                             "standard_name": "time"})},
                name=a, attrs={"units": str(ds[a].attrs["units"]), "long_name": str(ds[a].attrs["long_name"]),
                               "onset_ms": onset})
        courses[kind] = xr.Dataset(out)
    return courses, fixed


def match_areas(populations: Sequence[str], recorded: Sequence[str],
                areas: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{model population: recorded area}``: ``areas`` checked against both sides, or by
    default every population that has a recorded area of the same name. An error names the
    populations and areas that do not match, and what to pass."""
    populations, recorded = list(populations), list(recorded)
    if areas is None:
        pairs = {p: p for p in populations if p in recorded}
        if not pairs:
            raise _error(f"no model population {populations} has a recorded area of the same name {recorded}; "
                         "pass areas={population: recorded area}, e.g. areas={'V4': 'hV4'}", "areas")
        return pairs
    if not isinstance(areas, Mapping) or not areas:
        raise ConfigurationError("areas must be a non-empty mapping {model population: recorded area}")
    no_pop = [p for p in areas if p not in populations]
    no_area = [a for a in areas.values() if a not in recorded]
    if no_pop or no_area:
        raise _error(f"areas={dict(areas)}: "
                     + "; ".join(x for x in (f"the model has no population {no_pop} (it has {populations})" if no_pop
                                             else "",
                                             f"the recordings have no area {no_area} (they have {recorded})"
                                             if no_area else "") if x), "areas")
    return {str(p): str(a) for p, a in areas.items()}


def analyze_recordings(recordings, *, areas: Sequence[str] | None = None, electrode: str | int | None = None,
                       **options) -> Analysis:
    """The Groen metrics of recordings (a Dataset in the layout or a file for
    :func:`load_recordings`): :func:`recording_courses` then
    :func:`dynode.analysis.analyze_courses`, the code path that analyses model archives
    (:func:`dynode.analysis.analyze`), so the same courses give the same numbers. ``options``
    are those of :func:`~dynode.analysis.analyze_courses` (``baseline``, ``sum_window``,
    ``window``, ``smooth_ms``, ``drift_tol``, ``dn``, ``dn_options``); flags and undefined
    metrics as there. The populations of the result are the recorded areas."""
    ds = load_recordings(recordings)
    courses, fixed = recording_courses(ds, areas=areas, electrode=electrode)
    return analyze_courses(courses, fixed, **options)


# -- the model-data comparison --------------------------------------------------------------
MAX_SHIFT = 100.0
"""Default bound (ms) of the fitted latency shift: ``|s| <= MAX_SHIFT``."""
WINDOW = (0.0, 1000.0)
"""Default window (ms from onset) of the time-course comparison: Groen's summation window."""
SCORE = ("score = mean over the compared (area, experiment) cells of the shift-corrected Pearson correlation "
         "r between the recorded course and the model's course, every condition of the experiment "
         "concatenated over the window; range -1..1 (1: the same shape up to the fitted gain and latency "
         "shift); undefined cells are left out and flagged")
"""How :attr:`Comparison.score` is built (printed with it)."""
METRICS = ("summation_ratio", "summation_window_ms", "isi_recovery", "time_to_peak_ms", "half_rise_ms", "c50",
           "asymptote_to_peak")
"""The Groen metrics whose model - data differences a :class:`Comparison` reports."""


@dataclass
class Comparison:
    r"""A model compared with recordings (:func:`compare_recordings`), per recorded area.

    For each pair ``population -> area`` one latency shift ``s`` (ms), gain ``g`` and, with
    ``offset=True``, offset ``o`` are fitted jointly to every condition of every compared
    experiment over the window: the model course ``m`` (baseline-corrected, time from onset)
    is read at ``t - s`` on the recording's grid (linear interpolation; a positive ``s``
    delays the model: the recorded response comes later) and
    ``(g, o) = argmin sum (d - g m(t - s) - o)^2`` (least squares), ``s`` by grid search over
    the recording's samples within ``|s| <= max_shift`` refined by a parabola through the
    three best errors. A shift on the bound is flagged.

    fit : Dataset along ``area``: ``population``, ``shift_ms``, ``gain``, ``offset``,
        ``correlation`` and ``normalised_error`` pooled over the experiments.
    courses : Dataset ``(area, experiment)``: ``correlation`` (shift-corrected),
        ``correlation_unshifted`` (``s = 0``, gain refitted) and ``normalised_error``
        :math:`\lVert d - g m_s - o \rVert^2 / \lVert d \rVert^2` (0: identical; 1: no better
        than the baseline, a flat zero; the fit is pooled, so one experiment may exceed 1).
    metrics : Dataset ``(area, metric)``: ``model``, ``data``, ``difference`` (model - data)
        of the Groen metrics (:data:`METRICS`; one per condition, e.g.
        ``isi_recovery[133]``); latencies are not shift-corrected (the shift is beside them).
    score : :data:`SCORE`; ``score_cells`` how many cells it averages.
    model, data : the compared courses ``{experiment: Dataset (by, time)}`` by recorded area
        on the recording's grid over the window: the fitted model ``g m(t - s) + o`` and the data.
    flags : ``{"<area>/<what>": reason}`` for undefined or flagged values (NaN in the Datasets).
    """

    areas: dict[str, str]
    fit: xr.Dataset
    courses: xr.Dataset
    metrics: xr.Dataset
    score: float
    score_cells: int
    model: dict[str, xr.Dataset]
    data: dict[str, xr.Dataset]
    flags: dict[str, str] = field(default_factory=dict)
    max_shift: float = MAX_SHIFT
    window: tuple[float, float] = WINDOW

    def to_dict(self) -> dict:
        """Plain numbers (``None`` where undefined), JSON-serialisable."""
        def num(x):
            x = float(x)
            return x if math.isfinite(x) else None

        out = {"score": num(self.score), "score_cells": self.score_cells, "score_definition": SCORE,
               "max_shift_ms": self.max_shift, "window_ms": list(self.window), "areas": dict(self.areas),
               "fit": {}, "courses": {}, "metrics": {}, "flags": dict(self.flags)}
        for a in self.fit["area"].values:
            a = str(a)
            out["fit"][a] = {k: num(self.fit[k].sel(area=a)) for k in self.fit.data_vars if k != "population"}
            out["courses"][a] = {str(e): {k: num(self.courses[k].sel(area=a, experiment=e))
                                          for k in self.courses.data_vars}
                                 for e in self.courses["experiment"].values}
            out["metrics"][a] = {str(m): {k: num(self.metrics[k].sel(area=a, metric=m)) for k in self.metrics.data_vars}
                                 for m in self.metrics["metric"].values}
        return out

    def __str__(self) -> str:
        return format_comparison(self)


def _analysis_of(x, what: str, **kwargs) -> Analysis:
    if isinstance(x, Analysis):
        return x
    if what == "recordings":
        return analyze_recordings(x, **kwargs)
    if isinstance(x, Mapping):
        return analyze(**x)
    if isinstance(x, (list, tuple)):
        return analyze(*x)
    return analyze(x)


def compare_recordings(model, recordings, *, areas: Mapping[str, str] | None = None,
                       max_shift: float = MAX_SHIFT, offset: bool = False,
                       window: tuple[float, float] = WINDOW, electrode: str | int | None = None) -> Comparison:
    """Compare a model with recordings, per area and metric (:class:`Comparison`).

    model : an :class:`~dynode.analysis.Analysis` of the model's experiment archives, or the
        archives (a path, a list of paths, or ``{kind: archive}``) for
        :func:`~dynode.analysis.analyze`.
    recordings : a Dataset in the layout, a file (:func:`load_recordings`), or their
        :func:`analyze_recordings` (reused across models).
    areas : ``{model population: recorded area}`` (:func:`match_areas`; default the same names).
    max_shift : the bound (ms) of the fitted latency shift. offset : fit an offset besides the
        gain. window : ``(start, stop)`` ms from onset of the time-course comparison.

    Every recorded condition of a compared experiment must have been run on the model (a
    :class:`~dynode.errors.MissingConditionsError` names those that were not); the model's
    other conditions and experiments are not compared.
    """
    if not (isinstance(max_shift, (int, float)) and max_shift >= 0 and math.isfinite(max_shift)):
        raise ConfigurationError(f"max_shift must be a finite number of ms >= 0, got {max_shift!r}")
    lo, hi = (float(w) for w in window)
    if not hi > lo:
        raise ConfigurationError(f"window must be (start, stop) ms with stop > start, got {window!r}")
    data = _analysis_of(recordings, "recordings", electrode=electrode)
    mod = _analysis_of(model, "model")
    pairs = match_areas(mod.populations, data.populations, areas)
    kinds = [k for k in data.courses if k in mod.courses]
    if not kinds:
        raise MissingConditionsError(f"the recordings hold the experiments {list(data.courses)} and the model "
                                     f"{list(mod.courses)}: none in common; run the recorded experiments on the "
                                     "model", missing=list(data.courses))
    for k in kinds:  # every recorded condition was run on the model
        by = EXPERIMENTS[k].by
        have = mod.courses[k][by].values
        absent = [float(v) for v in data.courses[k][by].values if not np.isclose(have, v).any()]
        if absent:
            raise MissingConditionsError(f"the model's {k} experiment was not run at {by} {absent} (it has "
                                         f"{have.tolist()}), which the recordings hold; run those conditions or "
                                         f"drop them from the recordings", missing=[f"{k}:{by}={v:g}" for v in absent])
    flags: dict[str, str] = {}
    fits, cells, fitted_model, kept_data = {}, {}, {k: {} for k in kinds}, {k: {} for k in kinds}
    for pop, area in pairs.items():
        ys, ms, t_data = [], [], {}
        for k in kinds:
            d = data.courses[k][area]
            by = EXPERIMENTS[k].by
            t = d["time"].values
            keep = (t >= lo - 1e-9) & (t < hi - 1e-9)
            if keep.sum() < 3:
                raise ConfigurationError(f"the window [{lo:g}, {hi:g}) ms holds {int(keep.sum())} samples of the "
                                         f"recorded {k} courses ({t[0]:g} to {t[-1]:g} ms); widen it")
            t_data[k] = t[keep]
            m = mod.courses[k][pop]
            rows = [m.sel({by: v}, method="nearest") for v in d[by].values]
            ys.append(np.asarray(d.transpose(by, "time").values, dtype=np.float64)[:, keep])
            ms.append((np.asarray(m["time"].values, dtype=np.float64),
                       np.stack([np.asarray(r.values, dtype=np.float64) for r in rows])))
        step = float(np.diff(t_data[kinds[0]]).mean())
        res = _fit_shift(ys, ms, [t_data[k] for k in kinds], step, float(max_shift), offset)
        s, g, o = res["shift"], res["gain"], res["offset"]
        if res.get("undefined"):
            flags[f"{area}/fit"] = res["undefined"]
        elif max_shift > 0 and abs(abs(s) - max_shift) <= 0.5 * step:
            flags[f"{area}/shift_ms"] = (f"the fitted shift {s:+.1f} ms is on the bound +-{max_shift:g} ms: the "
                                         "latencies may differ more; raise max_shift")
        pred = _predict(ms, [t_data[k] for k in kinds], s, g, o)
        pred0 = _predict(ms, [t_data[k] for k in kinds], 0.0, *res["at_zero"])
        all_y = np.concatenate([y.ravel() for y in ys])
        all_p = np.concatenate([p.ravel() for p in pred])
        r_all, why = _corr(all_y, all_p)
        fits[area] = {"population": pop, "shift_ms": s, "gain": g, "offset": o, "correlation": r_all,
                      "normalised_error": _ne(all_y, all_p)}
        for i, k in enumerate(kinds):
            r, why = _corr(ys[i].ravel(), pred[i].ravel())
            if why:
                flags[f"{area}/{k}/correlation"] = why
            r0, _ = _corr(ys[i].ravel(), pred0[i].ravel())
            ne = _ne(ys[i].ravel(), pred[i].ravel())
            if not math.isfinite(ne):
                flags[f"{area}/{k}/normalised_error"] = "the recorded course is zero everywhere in the window"
            cells[(area, k)] = {"correlation": r, "correlation_unshifted": r0, "normalised_error": ne}
            by = EXPERIMENTS[k].by
            coords = {by: data.courses[k][by].values, "time": ("time", t_data[k], {"units": "ms"})}
            fitted_model[k][area] = xr.DataArray(pred[i], dims=(by, "time"), coords=coords, name=area,
                                                 attrs={"units": data.courses[k][area].attrs.get("units", ""),
                                                        "long_name": f"model {pop}: gain x course(t - shift)"})
            kept_data[k][area] = xr.DataArray(ys[i], dims=(by, "time"), coords=coords, name=area,
                                              attrs=dict(data.courses[k][area].attrs))
    area_names = list(fits)
    fit_ds = xr.Dataset({key: ("area", [fits[a][key] for a in area_names]) for key in fits[area_names[0]]},
                        coords={"area": area_names})
    fit_ds["shift_ms"].attrs = {"units": "ms", "long_name": "latency shift added to the model (+: data later)"}
    course_ds = xr.Dataset({key: (("area", "experiment"), [[cells[(a, k)][key] for k in kinds] for a in area_names])
                            for key in ("correlation", "correlation_unshifted", "normalised_error")},
                           coords={"area": area_names, "experiment": kinds})
    metric_ds = _metric_differences(mod, data, pairs, flags)
    for key, why in flags.items():  # the metrics' flags were warned by their analyses
        if not key.endswith(("/model", "/data")):
            warning = (UndefinedMetricWarning if "undefined" in why or "no gain" in why or "constant" in why
                       or "zero everywhere" in why else AnalysisWarning)(f"{key}: {why}")
            warning.flag = tuple(key.split("/", 1))
            warnings.warn(warning, stacklevel=user_stacklevel())
    vals = course_ds["correlation"].values.ravel()
    ok = vals[np.isfinite(vals)]
    score = float(ok.mean()) if ok.size else math.nan
    if not ok.size:
        flags["score"] = "no (area, experiment) cell has a defined correlation"
        warning = UndefinedMetricWarning(f"score: {flags['score']}")
        warning.flag = ("score", "score")
        warnings.warn(warning, stacklevel=user_stacklevel())
    return Comparison(areas=pairs, fit=fit_ds, courses=course_ds, metrics=metric_ds, score=score,
                      score_cells=int(ok.size), model={k: xr.Dataset(v) for k, v in fitted_model.items()},
                      data={k: xr.Dataset(v) for k, v in kept_data.items()}, flags=flags,
                      max_shift=float(max_shift), window=(lo, hi))


def _shifted(ms, ts, s: float) -> list[np.ndarray]:
    """The model rows of every experiment read at ``t - s`` (linear interpolation; outside the
    model's epoch its first/last value)."""
    return [np.stack([np.interp(t - s, tm, row) for row in rows]) for (tm, rows), t in zip(ms, ts)]


def _gain(y: np.ndarray, x: np.ndarray, offset: bool) -> tuple[float, float]:
    if offset:
        xm, ym = x.mean(), y.mean()
        vx = float(((x - xm) ** 2).sum())
        if vx <= 0:
            return math.nan, math.nan
        g = float(((x - xm) * (y - ym)).sum() / vx)
        return g, float(ym - g * xm)
    xx = float(x @ x)
    return (float(x @ y) / xx, 0.0) if xx > 0 else (math.nan, math.nan)


def _sse(ys, ms, ts, s, offset) -> tuple[float, float, float]:
    x = np.concatenate([m.ravel() for m in _shifted(ms, ts, s)])
    y = np.concatenate([v.ravel() for v in ys])
    g, o = _gain(y, x, offset)
    if not math.isfinite(g):
        return math.inf, g, o
    return float(((y - g * x - o) ** 2).sum()), g, o


def _fit_shift(ys, ms, ts, step, max_shift, offset) -> dict:
    """Grid search of the shift on the recording's samples, then a parabola through the best
    three errors (kept only if it lowers the error)."""
    n = int(math.floor(max_shift / step + 1e-9))
    grid = np.arange(-n, n + 1) * step
    errs = [_sse(ys, ms, ts, float(s), offset) for s in grid]
    e = np.asarray([x[0] for x in errs])
    zero = _sse(ys, ms, ts, 0.0, offset)
    if not np.isfinite(e).any():
        return {"shift": math.nan, "gain": math.nan, "offset": math.nan, "at_zero": (math.nan, math.nan),
                "undefined": "the model's course is zero everywhere in the window: no gain can be fitted"}
    i = int(np.argmin(e))
    best = (float(grid[i]),) + errs[i]
    if 0 < i < len(grid) - 1 and all(np.isfinite(e[i - 1:i + 2])):
        a, b, c = e[i - 1], e[i], e[i + 1]
        den = a - 2 * b + c
        if den > 0:
            s = float(grid[i] + 0.5 * step * (a - c) / den)
            cand = _sse(ys, ms, ts, s, offset)
            if cand[0] < best[1]:
                best = (s,) + cand
    s, err, g, o = best
    return {"shift": s, "gain": g, "offset": o, "at_zero": (zero[1], zero[2])}


def _predict(ms, ts, s, g, o) -> list[np.ndarray]:
    if not math.isfinite(s):
        return [np.full((len(rows), len(t)), math.nan) for (_, rows), t in zip(ms, ts)]
    return [g * m + o for m in _shifted(ms, ts, s)]


def _corr(y: np.ndarray, x: np.ndarray) -> tuple[float, str | None]:
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return math.nan, "the fitted model course is undefined (no gain)"
    sy, sx = float(y.std()), float(x.std())
    if sy == 0:
        return math.nan, "the recorded course is constant in the window"
    if sx == 0:
        return math.nan, "the model's course is constant in the window"
    return float(np.corrcoef(y, x)[0, 1]), None


def _ne(y: np.ndarray, p: np.ndarray) -> float:
    yy = float(y @ y)
    if yy <= 0 or not np.isfinite(p).all():
        return math.nan
    return float(((y - p) ** 2).sum() / yy)


def _metric_values(summary: Mapping) -> dict[str, tuple[float | None, str | None]]:
    """``{metric[condition]: (value or None, flag reason or None)}`` of one summary row."""
    flags = summary.get("flags", {})
    out = {}
    for key in METRICS:
        v = summary.get(key)
        if key not in summary:
            continue
        if isinstance(v, Mapping):
            for cond, x in v.items():
                name = f"{key}[{float(cond):g}]"
                out[name] = (x, flags.get(name))
        else:
            out[key] = (v, flags.get(key))
    return out


def _metric_differences(mod: Analysis, data: Analysis, pairs: Mapping[str, str], flags: dict) -> xr.Dataset:
    ms, ds = mod.summary(), data.summary()
    names: list[str] = []
    table = {}
    for pop, area in pairs.items():
        mv, dv = _metric_values(ms[pop]), _metric_values(ds[area])
        for name in dv:
            if name not in mv:
                continue
            if name not in names:
                names.append(name)
            (m, mwhy), (d, dwhy) = mv[name], dv[name]
            m = math.nan if m is None else float(m)
            d = math.nan if d is None else float(d)
            table[(area, name)] = (m, d, m - d)
            for side, why, v in (("model", mwhy, m), ("data", dwhy, d)):
                if why is not None or not math.isfinite(v):
                    flags[f"{area}/{name}/{side}"] = why or "undefined"
    areas = list(pairs.values())
    nan3 = (math.nan, math.nan, math.nan)
    return xr.Dataset({key: (("area", "metric"), [[table.get((a, n), nan3)[i] for n in names] for a in areas])
                       for i, key in enumerate(("model", "data", "difference"))},
                      coords={"area": areas, "metric": names})


def format_comparison(cmp: Comparison) -> str:
    """:class:`Comparison` as plain-text tables: the score and its definition; per area and
    experiment the shift-corrected and unshifted correlation, the normalised error, the fitted
    gain and latency shift; then the metric differences. ``n/a`` marks an undefined value and
    ``*`` a flagged one (the reasons follow)."""
    def cell(v, fmt, key=None):
        flagged = key is not None and any(k == key or k.startswith(key + "/") for k in cmp.flags)
        text = "n/a" if not math.isfinite(float(v)) else format(float(v), fmt)
        return text + ("*" if flagged else "")

    score = "n/a" if not math.isfinite(cmp.score) else f"{cmp.score:.3f}"
    out = [f"score {score} over {cmp.score_cells} (area, experiment) cells", f"  ({SCORE})"]
    head = ["area", "model", "experiment", "r", "r unshifted", "norm. error", "gain", "shift ms"]
    rows = []
    for a in cmp.fit["area"].values:
        a = str(a)
        f = cmp.fit.sel(area=a)
        for e in cmp.courses["experiment"].values:
            c = cmp.courses.sel(area=a, experiment=e)
            rows.append([a, str(f["population"].values), str(e), cell(c["correlation"], ".3f", f"{a}/{e}/correlation"),
                         cell(c["correlation_unshifted"], ".3f"),
                         cell(c["normalised_error"], ".3f", f"{a}/{e}/normalised_error"),
                         cell(f["gain"], ".3g", f"{a}/fit"), cell(f["shift_ms"], "+.1f", f"{a}/shift_ms")])
        rows.append([a, str(f["population"].values), "all", cell(f["correlation"], ".3f"), "",
                     cell(f["normalised_error"], ".3f"), "", ""])
    out += _columns(head, rows)
    if cmp.metrics.sizes.get("metric", 0):
        out.append("Groen metrics, model - data (latencies not shift-corrected):")
        head = ["area", "metric", "model", "data", "difference"]
        rows = []
        for a in cmp.metrics["area"].values:
            for m in cmp.metrics["metric"].values:
                v = cmp.metrics.sel(area=a, metric=m)
                if not (math.isfinite(float(v["model"])) or math.isfinite(float(v["data"]))):
                    continue
                rows.append([str(a), str(m), cell(v["model"], ".3g", f"{a}/{m}/model"),
                             cell(v["data"], ".3g", f"{a}/{m}/data"), cell(v["difference"], "+.3g")])
        out += _columns(head, rows)
    if cmp.flags:
        out.append("flags (n/a: undefined; *: read with care):")
        out += [f"  {k}: {why}" for k, why in cmp.flags.items()]
    return "\n".join(out)


def _columns(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(x.ljust(w) if i < 3 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [fmt(head)] + [fmt(r) for r in rows]
