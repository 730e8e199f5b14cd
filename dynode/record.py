r"""What a recording run keeps: :class:`Record`.

A :class:`Record` names the populations to keep, the recording times and how each saved state
is turned into what is stored:

* **times**: ``t_k = start + k * every`` for ``t_k <= stop`` (ms). ``every=None`` keeps every
  solver step. With a fixed-step solver every recording time must lie on the solver's grid
  ``t0 + n * dt``, so ``every`` must be a multiple of ``dt``.
* **selection** (``select``): integer indices per unit dimension (``"channel"``, ``"y"``,
  ``"x"``, ...); the kept indices become the dimension's coordinate in the archive.
* **reduction** (``reduce``) over all (selected) units of a sample:
  ``"mean"`` :math:`\bar r(t) = \frac1N \sum_i r_i(t)` (the population time course that stands
  in for an ECoG signal), ``"std"`` :math:`\sqrt{\frac1N \sum_i (r_i - \bar r)^2}`
  (population standard deviation, no Bessel correction), ``"mean_std"`` (both, along a
  ``statistic`` dimension), or a callable ``f(x: (batch, *shape)) -> (batch, *out)``.
* **dtype**: the storage dtype (``"float32"`` keeps float32 runs bit-exact).
* **observations** (``observe``): what each population's group stores, by name: ``"rate"``
  (always; the default ``["rate"]`` keeps archives as they were), ``"drive"`` (the synaptic
  drive ``u`` and, where the network knows the sign, ``drive_exc``/``drive_inh``), ``"lfp"``
  (an LFP/ECoG proxy) and ``"bold"`` (Balloon-Windkessel BOLD), or their objects of
  :mod:`dynode.observe` with parameters. ``select`` and ``reduce`` shape the unit-resolved
  ``rate`` and ``drive``; ``lfp`` and ``bold`` see the whole population through its electrode
  (``electrodes={population: Electrode(center, sigma)}``, a Gaussian patch; uniform weights
  without one). They are computed while the run goes, causally, at the recording times; with a
  fixed-step solver (Euler, Heun, Midpoint, RK4, and their noisy forms) ``drive`` and ``lfp`` are
  the currents the solver itself computed at those times (no extra evaluation), elsewhere they
  are re-evaluated on the recorded states (:mod:`dynode.observe`).

Unit dimensions are named by the population's number of per-sample dimensions: 1 ``channel``;
2 ``channel, x``; 3 ``channel, y, x``; 4 ``channel, z, y, x``; more ``channel, dim_1, ...``.

:meth:`Record.plan` resolves a record against a field's populations (one :class:`RecordPlan`
each) and :func:`archive_layout` turns the plans into the archive's
:class:`~dynode.archive.Layout`: ``dynode.simulate`` hands both to the archive's writers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dynode.archive.layout import RATE_UNITS, GroupSpec, Layout, VariableSpec
from dynode.errors import ConfigurationError, ShapeError
from dynode.history import History, delay_steps
from dynode.network import Network
from dynode.observe import (BOLD, LFP, BoldBank, CurrentsCapture, Drive, DriveReader, Electrode, Observation,
                            ObservationRun, PopulationObserver, Rate, as_observation, ei_split, lfp_proxy,
                            observation_attrs, observed_variables)
from dynode.tolerances import TIME_RTOL

__all__ = ["Record", "RecordPlan", "archive_layout", "unit_dims", "REDUCTIONS", "STORAGE_DTYPES"]

REDUCTIONS = ("mean", "std", "mean_std")
STORAGE_DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}


_UNIT_DIMS = {1: ("channel",), 2: ("channel", "x"), 3: ("channel", "y", "x"), 4: ("channel", "z", "y", "x")}


def unit_dims(ndim: int) -> tuple[str, ...]:
    """Names of a population's per-sample dimensions (see the module docstring)."""
    return _UNIT_DIMS.get(ndim) or ("channel",) + tuple(f"dim_{i}" for i in range(1, ndim))


def _dtype_name(dtype) -> str:
    name = (dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
            if isinstance(dtype, torch.dtype) else np.dtype(dtype).name)
    if name not in STORAGE_DTYPES:
        raise ConfigurationError(f"Record(dtype={dtype!r}): the storage dtype must be one of "
                                 f"{list(STORAGE_DTYPES)}")
    return name


def _indices(spec, size: int, what: str) -> tuple[int, ...]:
    """Resolve an int / slice / range / sequence of ints against a dimension of ``size``; None
    when it keeps every index in order (no selection)."""
    if isinstance(spec, slice):
        out = tuple(range(size)[spec])
    elif isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        out = (int(spec),)
    elif isinstance(spec, (range, Sequence, np.ndarray, Tensor)) and not isinstance(spec, str):
        seq = spec.tolist() if isinstance(spec, (np.ndarray, Tensor)) else list(spec)
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in seq):
            raise ConfigurationError(f"{what}: indices must be integers, got {spec!r}")
        out = tuple(int(i) for i in seq)
    else:
        raise ConfigurationError(f"{what}: give an int, a slice, a range or a sequence of ints, "
                                 f"got {type(spec).__name__}")
    if not out:
        raise ConfigurationError(f"{what}: the selection {spec!r} keeps no unit")
    bad = [i for i in out if not -size <= i < size]
    if bad:
        raise ConfigurationError(f"{what}: indices {bad} are out of range for a dimension of size {size}")
    out = tuple(i % size for i in out)
    if len(set(out)) != len(out):
        raise ConfigurationError(f"{what}: the selection {spec!r} repeats indices")
    return None if out == tuple(range(size)) else out


@dataclass(frozen=True)
class RecordPlan:
    """How one population's saved state becomes its stored ``rate`` (resolved once).

    ``index``: per unit dimension, the kept indices (``None``: all). ``dims``/``coords``:
    the stored per-sample dimensions and their coordinates (after selection / reduction).
    """

    name: str
    shape: tuple[int, ...]
    unit_dims: tuple[str, ...]
    index: tuple[tuple[int, ...] | None, ...]
    reduce: str | Callable | None
    dtype: torch.dtype
    observe: tuple[Observation, ...] = (Rate(),)
    electrode: Electrode | None = None
    classes: tuple[str, ...] | None = None  # the E/I classes of its connections (observe.ei_split)

    def selected_coords(self) -> dict[str, np.ndarray]:
        return {d: np.arange(n) if idx is None else np.asarray(idx, dtype=np.int64)
                for d, n, idx in zip(self.unit_dims, self.shape, self.index)}

    def transform(self, x: Tensor) -> Tensor:
        """``(batch, *shape)`` state -> ``(batch, *stored)`` values (not yet in storage dtype)."""
        for dim, idx in enumerate(self.index, start=1):
            if idx is None:
                continue
            lo = idx[0]
            if idx == tuple(range(lo, lo + len(idx))):
                x = x.narrow(dim, lo, len(idx))
            else:
                x = x.index_select(dim, torch.as_tensor(idx, device=x.device))
        red = self.reduce
        if red is None:
            return x
        units = tuple(range(1, x.dim()))
        if red == "mean":
            return x.mean(dim=units) if units else x
        if red == "std":
            return x.std(dim=units, correction=0) if units else torch.zeros_like(x)
        if red == "mean_std":
            std, mean = torch.std_mean(x, dim=units, correction=0)
            return torch.stack((mean, std), dim=1)
        out = red(x)
        if not isinstance(out, Tensor) or out.dim() < 1 or out.shape[0] != x.shape[0]:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ShapeError(f"population {self.name!r}: Record(reduce={_fn_name(red)}) must return a "
                             f"tensor (batch, ...) with batch {x.shape[0]}, got {got}")
        return out

    def stored_dims(self, out_shape: tuple[int, ...]) -> tuple[str, ...]:
        """Names of the stored per-sample dims, given the per-sample shape ``transform`` gives."""
        red = self.reduce
        if red is None:
            return self.unit_dims
        if red in ("mean", "std"):
            return ()
        if red == "mean_std":
            return ("statistic",)
        if len(out_shape) == 1:
            return ("feature",)
        return tuple(f"feature_{i}" for i in range(len(out_shape)))

    def group(self, out_shape: tuple[int, ...]) -> GroupSpec:
        """The population's group in the archive: stored dims and coordinates, ``rate`` attrs."""
        dims = self.stored_dims(out_shape)
        if self.reduce is None:
            coords = self.selected_coords()
        elif self.reduce == "mean_std":
            coords = {"statistic": np.array(["mean", "std"], dtype=object)}
        else:
            coords = {d: np.arange(n) for d, n in zip(dims, out_shape)}
        desc = self.describe()
        red, sel = desc["reduce"], desc["select"]
        what = "firing rate" if red is None else f"{red} of the firing rate over units"
        attrs = {"units": RATE_UNITS, "long_name": f"{what} of population {self.name}"}
        if red is not None:
            attrs["reduction"] = red
        if sel:
            attrs["selection"] = json.dumps(sel)
        variables = []
        for var, o in observed_variables(self.observe, self.classes):
            v_attrs = observation_attrs(self.name, var, o, self.classes)
            if isinstance(o, Drive):
                v_attrs["long_name"] = v_attrs["long_name"].replace(" of population",
                                                                    "" if red is None else f" ({red} over units) of population")
                if red is not None:
                    v_attrs["reduction"] = red
                if sel:
                    v_attrs["selection"] = json.dumps(sel)
            elif self.electrode is not None:
                v_attrs["electrode_center_yx"] = list(self.electrode.center)
                v_attrs["electrode_sigma"] = self.electrode.sigma
            variables.append(VariableSpec(var, dims if isinstance(o, Drive) else (), v_attrs))
        return GroupSpec(self.name, dims, coords, attrs, np.dtype(desc["dtype"]), tuple(variables))

    def describe(self) -> dict:
        return {"population": self.name, "shape": list(self.shape),
                "select": {d: list(i) for d, i in zip(self.unit_dims, self.index) if i is not None},
                "reduce": None if self.reduce is None else
                self.reduce if isinstance(self.reduce, str) else _fn_name(self.reduce),
                "dtype": str(self.dtype).removeprefix("torch."),
                "observe": [{"name": o.name, **o.params()} for o in self.observe],
                "electrode": None if self.electrode is None else
                {"center": list(self.electrode.center), "sigma": self.electrode.sigma}}


def archive_layout(plans: Sequence[RecordPlan], out_shapes: Sequence[tuple[int, ...]], batch: int,
                   conditions: Mapping[str, np.ndarray], input_names: tuple[str, ...],
                   stimulus_dtype: torch.dtype, attrs: dict) -> Layout:
    """The archive layout of a run recording ``plans``: ``out_shapes`` are the per-sample shapes
    their ``transform`` gives, ``conditions`` the sample labels
    (:func:`dynode.archive.layout.condition_coords`), ``attrs`` the root attributes."""
    return Layout(batch=batch, conditions=conditions,
                  groups=tuple(p.group(s) for p, s in zip(plans, out_shapes)), inputs=input_names,
                  stimulus_dtype=np.dtype(str(stimulus_dtype).removeprefix("torch.")), attrs=attrs)


def _fn_name(fn) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


@dataclass(frozen=True)
class Record:
    """What a :func:`dynode.simulate` run records. See the module docstring for the maths.

    populations : names to record (default: all, in the field's order).
    reduce : None, ``"mean"``, ``"std"``, ``"mean_std"`` or a callable
        ``(batch, *shape) -> (batch, *out)``, applied after ``select``.
    every : recording interval in ms (default: every solver step).
    start, stop : recording window in ms (default: the whole run, both ends included).
    select : unit selection, ``{dim: indices}`` for every recorded population (dims
        ``"channel"``, ``"y"``, ``"x"``, ...) or ``{population: {dim: indices}}``; indices are
        an int, a slice, a range or a sequence of ints.
    dtype : storage dtype, ``"float16"``, ``"float32"`` (default) or ``"float64"``.
    observe : the observations stored per population (see the module docstring and
        :mod:`dynode.observe`): names ``"rate"``, ``"drive"``, ``"lfp"``, ``"bold"`` or
        observation objects; must include ``"rate"``; default ``["rate"]``.
    electrodes : ``{population: Electrode(center=(y, x), sigma)}`` (or a mapping with those
        keys): the patch of a ``(C, H, W)`` population that its ``lfp`` and ``bold`` see.
    """

    populations: Sequence[str] | str | None = None
    reduce: str | Callable | None = None
    every: float | None = None
    start: float | None = None
    stop: float | None = None
    select: Mapping | None = None
    dtype: str = "float32"
    observe: Sequence[str | Observation] = ("rate",)
    electrodes: Mapping[str, Electrode | Mapping] | None = None

    def __post_init__(self):
        pops = self.populations
        if isinstance(pops, str):
            pops = (pops,)
        if pops is not None:
            pops = tuple(pops) if isinstance(pops, Iterable) else ()
            if not pops or not all(isinstance(p, str) for p in pops):
                raise ConfigurationError(f"Record(populations={self.populations!r}): give population "
                                         "names (or None for all)")
            if len(set(pops)) != len(pops):
                raise ConfigurationError(f"Record(populations={self.populations!r}) repeats a name")
        object.__setattr__(self, "populations", pops)
        red = self.reduce
        if red is not None and not callable(red) and red not in REDUCTIONS:
            raise ConfigurationError(f"Record(reduce={red!r}): give None, one of {list(REDUCTIONS)} "
                                     "or a callable (batch, *shape) -> (batch, *out)")
        for name in ("every", "start", "stop"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigurationError(f"Record({name}={v!r}) must be a finite number of ms")
            object.__setattr__(self, name, float(v))
        if self.every is not None and not self.every > 0:
            raise ConfigurationError(f"Record(every={self.every}) must be > 0 ms")
        if self.start is not None and self.stop is not None and self.stop < self.start:
            raise ConfigurationError(f"Record(start={self.start}, stop={self.stop}): stop must not "
                                     "be before start")
        object.__setattr__(self, "dtype", _dtype_name(self.dtype))
        if self.select is not None and not isinstance(self.select, Mapping):
            raise ConfigurationError(f"Record(select=...) must be a mapping {{dim: indices}} or "
                                     f"{{population: {{dim: indices}}}}, got {type(self.select).__name__}")
        self._check_observe()

    def _check_observe(self) -> None:
        obs = self.observe
        if isinstance(obs, (str, Observation)) or not isinstance(obs, Iterable):
            raise ConfigurationError(f"Record(observe={obs!r}) must be a list of observations, e.g. "
                                     "['rate', 'lfp']")
        obs = tuple(as_observation(o) for o in obs)
        names = [o.name for o in obs]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"Record(observe={names}) names an observation twice")
        if "rate" not in names:
            raise ConfigurationError(f"Record(observe={names}) must include 'rate' (every population group of "
                                     "an archive holds its rate; reduce='mean' keeps it small)")
        object.__setattr__(self, "observe", obs)
        el = self.electrodes
        if el is None:
            return
        if not isinstance(el, Mapping) or not all(isinstance(k, str) for k in el):
            raise ConfigurationError("Record(electrodes=...) must map population names to "
                                     "dynode.observe.Electrode(center=(y, x), sigma)")
        out = {}
        for pop, e in el.items():
            if isinstance(e, Mapping):
                unknown = sorted(set(e) - {"center", "sigma"})
                if unknown or "center" not in e or "sigma" not in e:
                    raise ConfigurationError(f"Record(electrodes={{{pop!r}: ...}}): give center=(y, x) and sigma"
                                             + (f", not {unknown}" if unknown else ""))
                e = Electrode(tuple(e["center"]), e["sigma"])
            elif not isinstance(e, Electrode):
                raise ConfigurationError(f"Record(electrodes={{{pop!r}: {e!r}}}): give a dynode.observe.Electrode")
            out[pop] = e
        if not any(isinstance(o, (LFP, BOLD)) for o in obs):
            raise ConfigurationError(f"Record(electrodes=...) shapes what 'lfp' and 'bold' see, but observe={names} "
                                     "has neither; add one of them or drop electrodes")
        object.__setattr__(self, "electrodes", out)

    @property
    def storage_dtype(self) -> torch.dtype:
        return STORAGE_DTYPES[self.dtype]

    # -- times -------------------------------------------------------------------------
    def times(self, t0: float, t_end: float, dt: float | None, on_grid: bool) -> tuple[float, ...]:
        """The recording times (ms) in ``[start, stop]`` of a run over ``[t0, t_end]``.

        ``on_grid``: the solver steps on ``t0 + n dt`` (fixed step), so every time must be a
        grid point; the times are then computed as ``t0 + n * dt``, exactly the solver's.
        """
        if not (math.isfinite(t0) and math.isfinite(t_end)):
            raise ConfigurationError(f"t0 and t_end must be finite (ms), got t0={t0}, t_end={t_end}")
        if dt is not None and not (math.isfinite(dt) and dt > 0):  # before the grid blames start or every
            raise ConfigurationError(f"dt must be a finite number > 0 ms, got {dt}")
        start = t0 if self.start is None else self.start
        stop = t_end if self.stop is None else self.stop
        if start < t0 - TIME_RTOL or stop > t_end + TIME_RTOL:
            raise ConfigurationError(f"Record window [start, stop] = [{start:g}, {stop:g}] ms must lie "
                                     f"within the run [t0, t_end] = [{t0:g}, {t_end:g}] ms")
        if on_grid:
            if dt is None:
                raise ConfigurationError("a fixed-step solver needs dt (ms)")
            k0 = delay_steps(start - t0, dt)
            if k0 is None:
                raise ConfigurationError(
                    f"Record(start={start:g}) is not on the solver's grid t0 + n*dt (t0 = {t0:g}, "
                    f"dt = {dt:g} ms); use start = {t0 + math.ceil((start - t0) / dt) * dt:g} ms")
            m = 1 if self.every is None else delay_steps(self.every, dt)
            if not m:  # None (off the grid) or 0 (every < dt)
                lo = max(1, math.floor(self.every / dt))
                raise ConfigurationError(
                    f"Record(every={self.every:g}) is not a multiple of dt = {dt:g} ms; a "
                    f"fixed-step solver only has states on its grid: use every = {lo * dt:g} or "
                    f"{(lo + 1) * dt:g} ms, or an adaptive solver")
            k_stop = math.floor((stop - t0) / dt * (1 + TIME_RTOL) + TIME_RTOL)
            return tuple(t0 + k * dt for k in range(k0, k_stop + 1, m))
        if self.every is None:
            raise ConfigurationError("this solver has no fixed step grid: give Record(every=...) "
                                     "(the recording interval in ms)")
        n = math.floor((stop - start) / self.every * (1 + TIME_RTOL) + TIME_RTOL)
        return tuple(min(start + k * self.every, t_end) for k in range(n + 1))

    # -- populations ---------------------------------------------------------------------
    def plan(self, shapes: Mapping[str, tuple[int, ...]], field=None) -> list[RecordPlan]:
        """Resolve populations, selections and observations against the field's per-sample
        ``shapes``; ``field``: the vector field, against which the observations of its currents
        (``drive``, ``lfp``) are checked and resolved (None: shapes and selections only)."""
        names = self.populations if self.populations is not None else tuple(shapes)
        unknown = [n for n in names if n not in shapes]
        if unknown:
            raise ConfigurationError(f"Record(populations=...): unknown populations {unknown}; the "
                                     f"field's populations are {list(shapes)}")
        electrodes = self.electrodes or {}
        not_rec = [p for p in electrodes if p not in names]
        if not_rec:
            raise ConfigurationError(f"Record(electrodes=...) places electrodes on {not_rec}, which are not "
                                     f"recorded (populations={list(names)})")
        per_pop = self._selection_by_population(shapes, names)
        plans = []
        for name in names:
            shape = tuple(int(s) for s in shapes[name])
            dims = unit_dims(len(shape))
            sel = per_pop.get(name, {})
            bad = [d for d in sel if d not in dims]
            if bad:
                raise ConfigurationError(f"Record(select=...): population {name!r} has the unit "
                                         f"dimensions {list(dims)}, not {bad}")
            index = tuple(None if d not in sel else
                          _indices(sel[d], n, f"Record(select=...) {name!r} dimension {d!r}")
                          for d, n in zip(dims, shape))
            electrode = electrodes.get(name)
            if electrode is not None and len(shape) != 3:
                raise ConfigurationError(f"Record(electrodes={{{name!r}: ...}}): an electrode sees a (C, H, W) map, "
                                         f"but population {name!r} has shape {shape}")
            plans.append(RecordPlan(name, shape, dims, index, self.reduce, self.storage_dtype, self.observe,
                                    electrode, self._classes(field, name, shape)))
        return plans

    def _classes(self, field, name: str, shape: tuple[int, ...]) -> tuple[str, ...] | None:
        """The E/I classes of ``name``'s connections, after checking that its observations can be
        made on ``field``."""
        currents = [o.name for o in self.observe if o.needs_currents]
        if not currents or field is None:  # no field: shapes and selections only (simulate passes it)
            return None
        if not isinstance(field, Network):
            raise ConfigurationError(f"Record(observe={currents}) needs the currents of a dynode.Network; "
                                     f"{type(field).__name__} is a custom vector field: observe 'rate' and 'bold'")
        u_shape = field.populations[name].u_shape
        if u_shape is not None and tuple(u_shape) != shape:
            raise ConfigurationError(f"Record(observe=['drive']): population {name!r} has a drive u of shape "
                                     f"{tuple(u_shape)} and a rate of shape {shape}; record 'rate' only")
        classes = ei_split(field, name)
        if classes is None:
            for o in self.observe:
                if isinstance(o, Drive) and o.parts is True or isinstance(o, LFP) and o.proxy == "mazzoni":
                    raise ConfigurationError(
                        f"Record(observe=[{o!r}]) needs the excitatory/inhibitory split of population {name!r}'s "
                        "inputs, which the network lacks (no inhibitory connection into it: add one with "
                        "dynode.models.add_inhibition, or use LFP(proxy='broadband') / Drive(parts=None))")
        return classes

    def observation_run(self, field, plans: Sequence[RecordPlan], times: Sequence[float], t0: float,
                        y0: Mapping[str, Tensor], inputs, tail, copy: bool,
                        make_history: Callable[[], History] | None = None) -> ObservationRun | None:
        """What computes the observations beyond the rates at each recorded time (None: only
        rates), checked against the recording ``times`` before the run: a ConfigurationError
        names what to change. ``copy``: the solver may reuse its state tensors.

        ``make_history``: the run's solver evaluates its first stage at every recorded time and
        state (the fixed-step methods; ``dynode.simulate`` decides): the currents are captured
        from its own evaluation (:class:`~dynode.observe.CurrentsCapture`, installed on the
        network by the caller; ``make_history()`` builds the history the solver starts with);
        None: they are re-evaluated on the recorded states (:class:`~dynode.observe.DriveReader`,
        which needs every delay to be a multiple of the record interval)."""
        if all(isinstance(o, Rate) for o in self.observe):
            return None
        current = [p.name for p in plans if any(o.needs_currents for o in p.observe)]
        lfp_delays = [o.delay for p in plans for o in p.observe
                      if isinstance(o, LFP) and lfp_proxy(o, p.classes) == "mazzoni"]
        interval = times[1] - times[0] if len(times) > 1 else 1.0
        reader = capture = None
        if current and make_history is None:
            interval = DriveReader.check(field, current, times, t0, tail, lfp_delays)
            reader = DriveReader(field, current, y0, t0, interval, inputs, copy)
        elif current:
            if lfp_delays:  # the Mazzoni proxy's delay is counted in recorded samples
                interval = DriveReader.check_interval(current, times, lfp_delays)
            capture = CurrentsCapture(field, current, inputs, make_history)
        observers = []
        for p in plans:
            weights = None if p.electrode is None else p.electrode.weights(p.shape)
            observers.append(PopulationObserver(p.name, p.shape, p.observe, p.classes, weights, p.transform,
                                                interval, bold_signal=True))
        bold = next((o for o in self.observe if isinstance(o, BOLD)), None)
        state_dtype = next(iter(y0.values())).dtype
        bank = None if bold is None else BoldBank(bold, np.dtype(str(state_dtype).removeprefix("torch.")))
        return ObservationRun(reader, observers, capture, bank)

    def _selection_by_population(self, shapes, names) -> dict[str, Mapping]:
        sel = self.select
        if not sel:
            return {}
        keys = list(sel)
        if all(k in shapes for k in keys):
            not_rec = [k for k in keys if k not in names]
            if not_rec:
                raise ConfigurationError(f"Record(select=...) selects units of {not_rec}, which are not "
                                         f"recorded (populations={list(names)})")
            for k in keys:
                if not isinstance(sel[k], Mapping):
                    raise ConfigurationError(f"Record(select={{{k!r}: ...}}) must map dimension names "
                                             "to indices, e.g. {'channel': [0, 1]}")
            return {k: dict(sel[k]) for k in keys}
        if any(k in shapes for k in keys):
            raise ConfigurationError(f"Record(select={keys}) mixes population names and dimension "
                                     "names; use either {dim: indices} or {population: {dim: indices}}")
        return {n: dict(sel) for n in names}

