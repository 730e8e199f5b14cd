r"""The layout of recordings (format version :data:`FORMAT_VERSION`), its check
(:func:`validate_recordings`), recordings built from arrays (:func:`make_recordings`) and the
pairing of model populations with recorded areas (:func:`match_areas`).

Recordings are an :class:`xarray.Dataset`:

* dimensions ``condition`` and ``time`` (plus an optional ``electrode``);
* coordinate ``time``: float, **ms**, uniform step, ``attrs["units"] = "ms"`` (a time base in
  ``s`` or ``us`` is converted to ms when its ``units`` say so, by
  :func:`dynode.recordings.io.load_recordings`; one without ``units`` or with another unit is
  refused). Groen et al.'s ECoG is sampled at 512 Hz (a step of 1.953125 ms);
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

Every problem is a :class:`RecordingsError` (a :class:`~dynode.errors.MissingConditionsError`)
before any computation, naming the field and what to change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from dynode.errors import ConfigurationError, MissingConditionsError
from dynode.stimuli import EXPERIMENTS
from dynode.tolerances import TIME_RTOL

__all__ = ["FORMAT_VERSION", "CONDITION_COORDS", "RecordingsError", "validate_recordings", "make_recordings",
           "match_areas"]

FORMAT_VERSION = 1
"""The layout's version, stored as the root attribute ``dynode_recordings``."""
CONDITION_COORDS = ("experiment", "contrast", "duration", "isi", "onset")
"""The coordinates every recording carries along ``condition``."""
_STEP_RTOL = 1e-6


class RecordingsError(MissingConditionsError):
    """Recordings that do not follow the layout (:mod:`dynode.recordings`); ``missing`` names
    the fields at fault."""


def _error(message: str, *fields: str) -> RecordingsError:
    return RecordingsError(f"recordings: {message}", missing=list(fields))


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
    if not dt > 0 or np.abs(step - dt).max() > _STEP_RTOL * max(dt, 1.0) + TIME_RTOL:
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
