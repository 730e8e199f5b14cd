r"""The fit's problem: the simulation of the recorded conditions, the observation of each area
and the loss (:class:`_Problem`); :func:`simulate_recordings`, the same simulation as model
data.

The observation of area ``a`` for condition ``c`` is by default the
mean rate over the area's units, times a gain plus an offset,

.. math:: \hat y_{a,c}(t) = g_a\, \bar r_{a,c}(t) + o_a ,

(``gain:a`` and ``offset:a`` are fitted when named in ``params``; otherwise ``g_a = 1``,
``o_a = 0``). Other observations (:mod:`dynode.observe`, computed by its functions on the
states saved on the solver's grid, then read at the recorded times by linear interpolation):
``"bold"`` (:func:`dynode.observe.bold`, Balloon-Windkessel, of the mean rate), ``"drive"``
(the mean synaptic drive ``u`` of the area's units) and ``"lfp"`` (the Mazzoni et al. 2015
proxy where the area has an E/I split, else the broadband one); ``drive`` and ``lfp`` re-read
the delayed inputs from the saved states, so the connections into the observed areas need
fixed delays that are multiples of ``dt`` (:meth:`dynode.observe.DriveReader.check`). Areas are
matched by name, or ``areas={population: recorded area}``
(:func:`dynode.recordings.match_areas`); an area with an ``electrode`` dimension is fitted
as the mean over its electrodes. The loss is the mean squared error per area normalised by the recording's
variance, averaged over areas,

.. math:: \mathcal L = \frac{1}{|A|}\sum_a \frac{\sum_{c,t} (\hat y_{a,c}(t) - y_{a,c}(t))^2}
          {\sum_{c,t} (y_{a,c}(t) - \bar y_a)^2} = \frac{1}{|A|}\sum_a (1 - R^2_a),

so each area weighs the same whatever its units, and ``1 - loss`` is the mean ``R^2``.

"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from dynode.errors import ConfigurationError
from dynode.fit.conditions import _area_map, _Batch, _courses, _default_images, _experiments, _merge, _protocol
from dynode.fit.params import _Param
from dynode.integrate import integrate
from dynode.network import Network
from dynode.observe import (BOLD, LFP, Drive, DriveReader, Observation, PopulationObserver, Rate, as_observation,
                            ei_split, lfp_proxy)
from dynode.recordings import load_recordings, validate_recordings
from dynode.recordings.align import gain_offset
from dynode.solver_config import FIXED_STEP
from dynode.tolerances import TIME_RTOL

__all__ = ["simulate_recordings"]


class _Observation(nn.Module):
    """``y_a = g_a rbar_a + o_a`` with ``g_a = gain_scale_a * gain_a``, ``o_a = offset_scale_a *
    offset_a`` (scales set by least squares at a restart's first iteration; see :mod:`dynode.fit.engine`)."""

    def __init__(self, areas: Sequence[str], gains: Sequence[str], offsets: Sequence[str], dtype):
        super().__init__()
        self.areas, self.fit_gain, self.fit_offset = list(areas), list(gains), list(offsets)
        self.gain = nn.ParameterDict({a: nn.Parameter(torch.ones((), dtype=dtype)) for a in gains})
        self.offset = nn.ParameterDict({a: nn.Parameter(torch.zeros((), dtype=dtype)) for a in offsets})
        self.register_buffer("gain_scale", torch.ones(len(areas), dtype=dtype))
        self.register_buffer("offset_scale", torch.ones(len(areas), dtype=dtype))

    def values(self, area: str) -> tuple[Tensor | float, Tensor | float]:
        i = self.areas.index(area)
        g = self.gain_scale[i] * self.gain[area] if area in self.gain else 1.0
        o = self.offset_scale[i] * self.offset[area] if area in self.offset else 0.0
        return g, o

    def forward(self, area: str, rate: Tensor) -> Tensor:
        g, o = self.values(area)
        return g * rate + o

    @torch.no_grad()
    def least_squares(self, area: str, rate: Tensor, y: Tensor) -> None:
        """Start the fitted gain and offset at their least-squares values for ``rate``
        (:func:`dynode.recordings.align.gain_offset`, on the tensors); one not fitted keeps its
        fixed value (gain 1, offset 0). With the gain fixed at 1, or a ``rate`` without variance
        (whose gain stays 1), the offset starts at ``mean(y - rate)``."""
        i = self.areas.index(area)
        m, yy = rate.reshape(-1), y.reshape(-1)
        fg, fo = area in self.gain, area in self.offset
        g, o = 1.0, float((yy - m).mean())
        if fg:
            g_ls, o_ls = gain_offset(yy, m, fo)
            if math.isfinite(g_ls):
                g, o = g_ls, o_ls
            self.gain_scale[i] = g if math.isfinite(g) and g != 0 else 1.0
            self.gain[area].fill_(1.0)
        if fo:
            scale = float(yy.std()) or 1.0
            self.offset_scale[i] = scale
            self.offset[area].fill_(o / scale)


def _identity(x: Tensor) -> Tensor:
    return x


def _observation(observe) -> Observation:
    """The observation model of ``observe`` (a name or a :mod:`dynode.observe` object)."""
    obs = as_observation(observe)
    if isinstance(obs, Drive) and obs.parts is True:
        raise ConfigurationError("observe: Drive(parts=True) gives three variables; a fit compares one course per "
                                 "area: give 'drive' (u)")
    return obs


def _check_observation(net: Network, obs: Observation, pops: Sequence[str], t_end: float, dt: float) -> None:
    """Before anything runs: the currents that ``drive``/``lfp`` read can be computed on the
    saved grid (:meth:`dynode.observe.DriveReader.check`: no learnt delay into the observed
    populations, delays multiples of ``dt``), and a Mazzoni LFP has the E/I split it needs."""
    if not obs.needs_currents:
        return
    pops = list(dict.fromkeys(pops))
    mazzoni = [p for p in pops if isinstance(obs, LFP) and lfp_proxy(obs, ei_split(net, p)) == "mazzoni"]
    lacking = [p for p in mazzoni if ei_split(net, p) is None]
    if lacking:
        raise ConfigurationError(f"observe: the Mazzoni LFP proxy needs the excitatory/inhibitory split of {lacking}'s "
                                 "inputs, which the network lacks; use LFP(proxy='broadband') or add inhibition")
    grid = [k * dt for k in range(round(t_end / dt) + 1)]
    DriveReader.check(net, pops, grid, 0.0, None, [obs.delay] if mazzoni else [])


class _Problem:
    """The simulation of the recorded conditions and the loss (this module's doc)."""

    def __init__(self, net: Network, params: list[_Param], obs: _Observation, areas: dict[str, str],
                 batches: list[_Batch], y: dict[str, Tensor], times: np.ndarray, t_end: float, solver: str,
                 dt: float, observation: Observation, input: str):
        self.net, self.params, self.obs, self.areas = net, params, obs, areas
        self.batches, self.y, self.t_end, self.solver, self.dt = batches, y, t_end, solver, dt
        self.observation = observation
        self.inverse = torch.as_tensor(np.argsort(np.concatenate([b.index for b in batches])))
        self.sst = {a: (v - v.mean()).square().sum() for a, v in y.items()}
        self.input = input
        if isinstance(observation, Rate):  # the states at the recorded times (the solver's interpolant)
            self.save_at, self.interp = torch.as_tensor(times, dtype=torch.float64), None
        else:  # computed on the solver's grid, then read at the recorded times (linear interpolation)
            self.save_at = dt
            k = np.minimum(np.floor(times / dt + TIME_RTOL).astype(np.int64), round(t_end / dt) - 1)
            self.interp = (torch.as_tensor(k), torch.as_tensor(times / dt - k, dtype=y[next(iter(y))].dtype))

    def tensors(self) -> list[Tensor]:
        return [t for p in self.params for t in p.tensors] + list(self.obs.parameters())

    def simulate(self) -> dict[str, Tensor]:
        """The model's course per area before gain and offset, ``(condition, time)`` in the
        recordings' order: the observation of the area at the recorded times."""
        parts: dict[str, list[Tensor]] = {a: [] for a in self.areas}
        for b in self.batches:
            sol = integrate(self.net, b.stimulus, t_end=self.t_end, dt=self.dt, solver=self.solver,
                            save_at=self.save_at)
            currents = self._currents(sol, b.stimulus) if self.observation.needs_currents else {}
            for a, pop in self.areas.items():
                if pop in currents:
                    z = currents[pop]
                else:
                    s = sol.states[pop]
                    z = s.reshape(s.shape[0], s.shape[1], -1).mean(-1)  # (time, batch)
                    if isinstance(self.observation, BOLD):
                        z = self.observation(z, self.dt)
                if self.interp is not None:
                    k, w = self.interp
                    z = z[k] * (1 - w)[:, None] + z[k + 1] * w[:, None]
                parts[a].append(z.transpose(0, 1))
        return {a: torch.cat(v)[self.inverse] for a, v in parts.items()}

    def _currents(self, sol, stimulus) -> dict[str, Tensor]:
        """``drive`` (the mean of ``u`` over the area's units) or ``lfp`` of every fitted
        population on the saved grid, ``(time, batch)``, by :class:`dynode.observe.DriveReader`
        and :class:`dynode.observe.PopulationObserver` (the recording's code) on the saved states."""
        pops = list(dict.fromkeys(self.areas.values()))
        states = sol.states

        def inputs(t: float) -> Mapping[str, Tensor]:
            v = stimulus(t)
            return v if isinstance(v, Mapping) else {self.input: v}

        reader = DriveReader(self.net, pops, {k: v[0] for k, v in states.items()}, 0.0, self.dt, inputs, False)
        observers = {p: PopulationObserver(p, self.net.populations[p].shape, [self.observation],
                                           ei_split(self.net, p), None, _identity, self.dt) for p in pops}
        out: dict[str, list[Tensor]] = {p: [] for p in pops}
        for n, t in enumerate(sol.ts.tolist()):
            cur = reader(t, {k: v[n] for k, v in states.items()})
            for p in pops:
                val = observers[p](t, states[p][n], cur[p])[0]
                out[p].append(val.reshape(val.shape[0], -1).mean(-1))
        return {p: torch.stack(v) for p, v in out.items()}

    def loss(self, rates: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """``mean_a SSE_a / SST_a`` and ``R^2_a = 1 - SSE_a / SST_a``."""
        terms, r2 = [], {}
        for a in self.areas:
            e = (self.obs(a, rates[a]) - self.y[a]).square().sum() / self.sst[a]
            terms.append(e)
            r2[a] = 1.0 - float(e.detach())
        return torch.stack(terms).mean(), r2


def _problem(model: Network, ds: xr.Dataset, amap: dict[str, str], exps: dict[str, np.ndarray],
             plist: list[_Param], gains, offsets, obs_model: Observation, solver: str, dt: float, images,
             background, input, fitting: bool = True) -> tuple[_Problem, xr.Dataset, Tensor]:
    """The simulation of the conditions of ``exps`` (on the recordings' time base) and the
    loss against ``ds``; also the recordings cut to those conditions and the images."""
    dtype = next((p.dtype for p in model.parameters()), torch.get_default_dtype())
    keep = np.sort(np.concatenate(list(exps.values())))
    sub = ds.isel(condition=keep)  # the fitted conditions, in the recordings' order
    exps = {e: np.searchsorted(keep, idx) for e, idx in exps.items()}
    y = {a: torch.as_tensor(v, dtype=dtype) for a, v in _courses(sub, amap, fitting).items()}
    # the time base: simulation time s = t - t_first, on the grid k dt up to t_end
    t = np.asarray(sub["time"].values, dtype=np.float64)
    t_first = float(t[0])
    t_end = math.ceil((t[-1] - t_first) / dt - TIME_RTOL) * dt
    if images is None:
        images = _default_images(model, input)
    images = torch.as_tensor(images, dtype=dtype)
    _check_observation(model, obs_model, list(amap.values()), t_end, dt)
    fed = input if input is not None else (model.input_names() or ("",))[0]
    protos = [_protocol(sub, e, idx, t_first, t_end, images, background, input) for e, idx in exps.items()]
    batches = [_Batch(_merge(protos), np.concatenate(list(exps.values())))]
    obs = _Observation(list(amap), gains, offsets, dtype)
    return (_Problem(model, plist, obs, amap, batches, y, t - t_first, t_end, solver, float(dt), obs_model, fed),
            sub, images)


def simulate_recordings(model: Network, template, *, areas=None, experiments: Sequence[str] | None = None,
                        observe: str = "rate", solver: str = "euler", dt: float = 1.0, images=None,
                        background="blank", input: str | None = None, units: str = "a.u.") -> xr.Dataset:
    """What ``model`` shows under the conditions of ``template`` (recordings, or a Dataset in
    their layout whose values are ignored): the observation (gain 1, offset 0) of each area
    on the template's time base, as recordings (the layout of :mod:`dynode.recordings`) in
    ``units``. The stimuli and simulation are :func:`fit`'s: model data for parameter
    recovery."""
    if not isinstance(model, Network):
        raise ConfigurationError(f"model must be a dynode.Network, got {type(model).__name__}")
    if solver not in FIXED_STEP:
        raise ConfigurationError(f"solver={solver!r}: give a fixed-step solver ({list(FIXED_STEP)})")
    ds = load_recordings(template)
    amap = _area_map(ds, model, areas)
    exps = _experiments(ds, experiments)
    prob, sub, _ = _problem(model, ds, amap, exps, [], [], [], _observation(observe), solver, dt, images,
                            background, input, fitting=False)
    with torch.no_grad():
        courses = prob.simulate()
    out = sub.copy()
    for a in amap:
        out[a] = (("condition", "time"), courses[a].double().cpu().numpy(),
                  {"units": units, "long_name": f"{amap[a]} of the model ({prob.observation.name})"})
    return validate_recordings(out)
